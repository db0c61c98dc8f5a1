//! The contract's error codes and the JSON body every error is sent as.

use serde::{Deserialize, Serialize};

/// The error codes: each variant with its name on the wire and its HTTP status, written
/// once.
macro_rules! error_codes {
    ($($(#[$doc:meta])* $name:ident = $wire:literal, $status:literal;)+) => {
        /// Stable, machine-readable error codes (the contract in docs/design.md).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum ErrorCode {
            $($(#[$doc])* #[serde(rename = $wire)] $name,)+
            /// A code this version does not know (sent by a newer peer); never sent.
            #[serde(other)]
            Unknown,
        }

        impl ErrorCode {
            /// Every code a service sends (all but [`ErrorCode::Unknown`]).
            pub const SENT: &[ErrorCode] = &[$(ErrorCode::$name),+];

            /// The HTTP status that goes with the code.
            pub fn http_status(self) -> u16 {
                match self {
                    $(ErrorCode::$name => $status,)+
                    ErrorCode::Unknown => 500,
                }
            }

            pub fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$name => $wire,)+
                    ErrorCode::Unknown => "UNKNOWN",
                }
            }
        }
    };
}

error_codes! {
    ValidationError = "VALIDATION_ERROR", 400;
    Unauthorized = "UNAUTHORIZED", 401;
    Forbidden = "FORBIDDEN", 403;
    NotFound = "NOT_FOUND", 404;
    AlreadyExists = "ALREADY_EXISTS", 409;
    MainNotRegistered = "MAIN_NOT_REGISTERED", 409;
    HostidTypeMismatch = "HOSTID_TYPE_MISMATCH", 409;
    HostidInUse = "HOSTID_IN_USE", 409;
    RoleConflict = "ROLE_CONFLICT", 409;
    UnknownRightsId = "UNKNOWN_RIGHTS_ID", 400;
    InsufficientQuantity = "INSUFFICIENT_QUANTITY", 409;
    PairHasActiveRights = "PAIR_HAS_ACTIVE_RIGHTS", 409;
    /// The object is held by something else (mapped to servers, part of an entitlement,
    /// an account with servers) and cannot be changed or deleted that way; the message
    /// names what holds it.
    InUse = "IN_USE", 409;
    ClockSkew = "CLOCK_SKEW", 400;
    /// The server's options file keeps this client from the feature (an `EXCLUDE` rule
    /// names it, or `INCLUDE` rules exist and none names it); `options_line` says which.
    Excluded = "EXCLUDED", 403;
    /// The options file's `MAX` rule for this client's user, host or group would be
    /// exceeded; `options_line` says which.
    OverMax = "OVER_MAX", 409;
    /// The seats left are reserved for others by the options file's `RESERVE` rules;
    /// `options_line` names one of them.
    Reserved = "RESERVED", 409;
    /// Another operator holds the server's full administration session (on a cluster,
    /// the cluster's): acting needs its key until it is closed, lapses or is taken over;
    /// the message says who holds it, since when and when it lapses.
    SessionHeld = "SESSION_HELD", 409;
    ReplayedRequest = "REPLAYED_REQUEST", 409;
    NoLicenseAvailable = "NO_LICENSE_AVAILABLE", 409;
    FeatureExpired = "FEATURE_EXPIRED", 410;
    NotServing = "NOT_SERVING", 503;
    MaintenanceIntervalExpired = "MAINTENANCE_INTERVAL_EXPIRED", 503;
    /// The license server's rights are past their `serve_until`: it grants and renews
    /// nothing until the back office answers again.
    RightsExpired = "RIGHTS_EXPIRED", 503;
    /// The license server holds no valid binding of its key from the back office, so its
    /// grants could not be verified: it grants and renews nothing until it has one.
    ServerNotBound = "SERVER_NOT_BOUND", 503;
    /// Rights offered over the pair's channel are not a capability answer signed by the
    /// back office for this pair.
    UnverifiedRights = "UNVERIFIED_RIGHTS", 403;
    /// A pair member's copy does not continue from what was sent (replication).
    OutOfSync = "OUT_OF_SYNC", 409;
    /// Too many requests of this kind now: retry after `Retry-After` seconds.
    TooManyRequests = "TOO_MANY_REQUESTS", 429;
    Unavailable = "UNAVAILABLE", 503;
    InternalError = "INTERNAL_ERROR", 500;
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
    schema(example = json!({"code": "NO_LICENSE_AVAILABLE", "message": "no license of `cad` available: 7 seats of cad 1.0 asked, 5 of 10 free", "asked": 7, "free": 5, "count": 10, "next_free_at": 1767225600}))
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
    /// For `NO_LICENSE_AVAILABLE`: when the next seat frees at the latest (Unix time,
    /// seconds since 1970-01-01T00:00:00Z).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_free_at: Option<i64>,
    /// For `EXCLUDED`, `OVER_MAX` and `RESERVED`, and for an options file refused: the
    /// line of the license server's options file that decided (absent when the file as
    /// a whole is refused: too large, unreadable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<u32>, minimum = 1))]
    pub options_line: Option<std::num::NonZeroU32>,
    /// For `NO_LICENSE_AVAILABLE`: the seats the checkout asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asked: Option<u32>,
    /// For `NO_LICENSE_AVAILABLE`: the seats free now in the pool that came closest (the
    /// asked version, or of every version the one with the most free seats).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free: Option<u32>,
    /// For `NO_LICENSE_AVAILABLE`: the seats licensed now in that pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorBody {
            code,
            message: message.into(),
            field: None,
            serving_url: None,
            next_free_at: None,
            options_line: None,
            asked: None,
            free: None,
            count: None,
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
        for &code in ErrorCode::SENT {
            let s = serde_json::to_string(&code).unwrap();
            assert_eq!(s, format!("\"{}\"", code.as_str()));
            assert_eq!(serde_json::from_str::<ErrorCode>(&s).unwrap(), code);
            assert_ne!(code, ErrorCode::Unknown);
        }
    }
}
