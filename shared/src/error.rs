//! The contract's error codes and the JSON body every error is sent as.

use serde::{Deserialize, Serialize};

/// Stable, machine-readable error codes (the contract in docs/design.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    ValidationError,
    Unauthorized,
    Forbidden,
    NotFound,
    AlreadyExists,
    MainNotRegistered,
    HostidTypeMismatch,
    HostidInUse,
    RoleConflict,
    UnknownRightsId,
    InsufficientQuantity,
    PairHasActiveRights,
    ClockSkew,
    ReplayedRequest,
    NoLicenseAvailable,
    FeatureExpired,
    NotServing,
    MaintenanceIntervalExpired,
    /// A pair member's copy does not continue from what was sent (replication).
    OutOfSync,
    /// Too many requests of this kind now: retry after `Retry-After` seconds.
    TooManyRequests,
    Unavailable,
    InternalError,
    /// A code this version does not know (sent by a newer peer); never sent.
    #[serde(other)]
    Unknown,
}

/// On the wire a code is one of the strings [`ErrorCode::SENT`] names.
#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for ErrorCode {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(ErrorCode::SENT.iter().map(|c| c.as_str())))
            .description(Some(
                "The contract's error code; clients must accept codes they do not know",
            ))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for ErrorCode {}

impl ErrorCode {
    /// Every code a service sends (all but [`ErrorCode::Unknown`]).
    pub const SENT: [ErrorCode; 22] = {
        use ErrorCode::*;
        [
            ValidationError,
            Unauthorized,
            Forbidden,
            NotFound,
            AlreadyExists,
            MainNotRegistered,
            HostidTypeMismatch,
            HostidInUse,
            RoleConflict,
            UnknownRightsId,
            InsufficientQuantity,
            PairHasActiveRights,
            ClockSkew,
            ReplayedRequest,
            NoLicenseAvailable,
            FeatureExpired,
            NotServing,
            MaintenanceIntervalExpired,
            OutOfSync,
            TooManyRequests,
            Unavailable,
            InternalError,
        ]
    };

    /// The HTTP status that goes with the code.
    pub fn http_status(self) -> u16 {
        use ErrorCode::*;
        match self {
            ValidationError | UnknownRightsId => 400,
            Unauthorized => 401,
            Forbidden => 403,
            NotFound => 404,
            AlreadyExists | MainNotRegistered | HostidTypeMismatch | HostidInUse | RoleConflict
            | InsufficientQuantity | PairHasActiveRights | ReplayedRequest | NoLicenseAvailable
            | OutOfSync => 409,
            FeatureExpired => 410,
            ClockSkew => 400,
            TooManyRequests => 429,
            NotServing | MaintenanceIntervalExpired | Unavailable => 503,
            InternalError | Unknown => 500,
        }
    }

    pub fn as_str(self) -> &'static str {
        use ErrorCode::*;
        match self {
            ValidationError => "VALIDATION_ERROR",
            Unauthorized => "UNAUTHORIZED",
            Forbidden => "FORBIDDEN",
            NotFound => "NOT_FOUND",
            AlreadyExists => "ALREADY_EXISTS",
            MainNotRegistered => "MAIN_NOT_REGISTERED",
            HostidTypeMismatch => "HOSTID_TYPE_MISMATCH",
            HostidInUse => "HOSTID_IN_USE",
            RoleConflict => "ROLE_CONFLICT",
            UnknownRightsId => "UNKNOWN_RIGHTS_ID",
            InsufficientQuantity => "INSUFFICIENT_QUANTITY",
            PairHasActiveRights => "PAIR_HAS_ACTIVE_RIGHTS",
            ClockSkew => "CLOCK_SKEW",
            ReplayedRequest => "REPLAYED_REQUEST",
            NoLicenseAvailable => "NO_LICENSE_AVAILABLE",
            FeatureExpired => "FEATURE_EXPIRED",
            NotServing => "NOT_SERVING",
            MaintenanceIntervalExpired => "MAINTENANCE_INTERVAL_EXPIRED",
            OutOfSync => "OUT_OF_SYNC",
            TooManyRequests => "TOO_MANY_REQUESTS",
            Unavailable => "UNAVAILABLE",
            InternalError => "INTERNAL_ERROR",
            Unknown => "UNKNOWN",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `{"code": "...", "message": "..."}` plus optional details: every error either service
/// sends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(
    feature = "openapi",
    schema(example = json!({"code": "NO_LICENSE_AVAILABLE", "message": "no seat of `cad` is free: 3 of 3 in use", "next_free_at": 1767225600}))
)]
pub struct ErrorBody {
    pub code: ErrorCode,
    /// What went wrong and what to do, for a person.
    pub message: String,
    /// The input field the error is about, for validation errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// For `NOT_SERVING`: the URL of the server that serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving_url: Option<String>,
    /// For `NO_LICENSE_AVAILABLE`: when the next seat frees at the latest, in Unix
    /// seconds (seconds since 1970-01-01T00:00:00Z).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_free_at: Option<i64>,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorBody {
            code,
            message: message.into(),
            field: None,
            serving_url: None,
            next_free_at: None,
        }
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }
}

impl std::fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ErrorBody {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_serialise_as_the_contract_says() {
        let body = ErrorBody::new(ErrorCode::MainNotRegistered, "start the main first");
        let json = serde_json::to_value(&body).unwrap();
        assert_eq!(json["code"], "MAIN_NOT_REGISTERED");
        assert_eq!(json["message"], "start the main first");
        assert!(json.get("field").is_none());
        for code in [
            ErrorCode::ValidationError,
            ErrorCode::TooManyRequests,
            ErrorCode::HostidTypeMismatch,
            ErrorCode::NotServing,
            ErrorCode::MaintenanceIntervalExpired,
        ] {
            let s = serde_json::to_string(&code).unwrap();
            assert_eq!(s, format!("\"{}\"", code.as_str()));
        }
        let unknown: ErrorCode = serde_json::from_str("\"SOMETHING_NEW\"").unwrap();
        assert_eq!(unknown, ErrorCode::Unknown);
        // Every code but Unknown is sent, and reads back as itself.
        for code in ErrorCode::SENT {
            let s = serde_json::to_string(&code).unwrap();
            assert_eq!(serde_json::from_str::<ErrorCode>(&s).unwrap(), code);
            assert_ne!(code, ErrorCode::Unknown);
        }
    }
}
