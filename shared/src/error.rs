//! The contract's error codes and the JSON body every error is sent as.

use serde::{Deserialize, Serialize};

/// Stable, machine-readable error codes (the contract in docs/design.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
    /// Too many requests of a kind (e.g. failed sign-ins): wait `Retry-After` seconds.
    TooManyRequests,
    Unavailable,
    InternalError,
    /// A code this version does not know (sent by a newer peer).
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
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

/// `{"code": "...", "message": "..."}` plus optional details.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
    /// The input field the error is about, for validation errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// For `NOT_SERVING`: the URL of the server that serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving_url: Option<String>,
    /// For `NO_LICENSE_AVAILABLE`: when the next seat frees (Unix time, seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(format = Int64, minimum = 0, example = 1798366799))]
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
            ErrorCode::HostidTypeMismatch,
            ErrorCode::NotServing,
            ErrorCode::MaintenanceIntervalExpired,
            ErrorCode::TooManyRequests,
        ] {
            let s = serde_json::to_string(&code).unwrap();
            assert_eq!(s, format!("\"{}\"", code.as_str()));
        }
        let unknown: ErrorCode = serde_json::from_str("\"SOMETHING_NEW\"").unwrap();
        assert_eq!(unknown, ErrorCode::Unknown);
    }
}
