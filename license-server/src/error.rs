//! The one error type of the license server, mapped to the contract's error codes (and,
//! at the HTTP edge in [`crate::http`], to the contract's error JSON).

use shared::{ErrorBody, ErrorCode};

use crate::options::RuleKind;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ServiceError {
    #[error("{message}")]
    Validation {
        field: Option<String>,
        message: String,
    },
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{message}")]
    NoLicense {
        message: String,
        next_free_at: Option<i64>,
        /// Seats asked for, seats free and seats licensed in the pool that came closest.
        asked: u32,
        free: u32,
        count: u32,
    },
    #[error("{0}")]
    FeatureExpired(String),
    #[error("this server is standing by; check licenses out from {serving_url}")]
    NotServing { serving_url: String },
    #[error("{0}")]
    MaintenanceExpired(String),
    /// The rights are past their `serve_until`.
    #[error("{0}")]
    RightsExpired(String),
    /// No valid binding of this server's key.
    #[error("{0}")]
    NotBound(String),
    /// The pair partner offered rights that do not verify for this pair.
    #[error("{0}")]
    UnverifiedRights(String),
    /// Replication: the copy does not continue from what was sent.
    #[error("{0}")]
    OutOfSync(String),
    /// Replication: the other server holds a role that contradicts the request.
    #[error("{0}")]
    RoleConflict(String),
    /// The options file refused a grant: which kind of rule, its line.
    #[error("{message}")]
    Rule {
        kind: RuleKind,
        line: u32,
        message: String,
    },
    /// An options file that cannot be put in force (at start or reload): its line.
    #[error("{message}")]
    BadOptions { line: u32, message: String },
    /// A cluster member's clock is too far from this one's.
    #[error("{0}")]
    ClockSkew(String),
    /// Another operator holds the full administration session.
    #[error("{0}")]
    SessionHeld(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl ServiceError {
    pub fn validation(field: &str, message: impl Into<String>) -> Self {
        ServiceError::Validation {
            field: Some(field.to_owned()),
            message: message.into(),
        }
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            ServiceError::Validation { .. } => ErrorCode::ValidationError,
            ServiceError::Unauthorized(_) => ErrorCode::Unauthorized,
            ServiceError::Forbidden(_) => ErrorCode::Forbidden,
            ServiceError::NotFound(_) => ErrorCode::NotFound,
            ServiceError::NoLicense { .. } => ErrorCode::NoLicenseAvailable,
            ServiceError::FeatureExpired(_) => ErrorCode::FeatureExpired,
            ServiceError::NotServing { .. } => ErrorCode::NotServing,
            ServiceError::MaintenanceExpired(_) => ErrorCode::MaintenanceIntervalExpired,
            ServiceError::RightsExpired(_) => ErrorCode::RightsExpired,
            ServiceError::NotBound(_) => ErrorCode::ServerNotBound,
            ServiceError::UnverifiedRights(_) => ErrorCode::UnverifiedRights,
            ServiceError::OutOfSync(_) => ErrorCode::OutOfSync,
            ServiceError::RoleConflict(_) => ErrorCode::RoleConflict,
            ServiceError::ClockSkew(_) => ErrorCode::ClockSkew,
            ServiceError::SessionHeld(_) => ErrorCode::SessionHeld,
            ServiceError::Rule { kind, .. } => match kind {
                RuleKind::Excluded => ErrorCode::Excluded,
                RuleKind::OverMax => ErrorCode::OverMax,
                RuleKind::Reserved => ErrorCode::Reserved,
            },
            ServiceError::BadOptions { .. } => ErrorCode::ValidationError,
            ServiceError::Unavailable(_) => ErrorCode::Unavailable,
            ServiceError::Internal(_) => ErrorCode::InternalError,
        }
    }

    pub fn body(&self) -> ErrorBody {
        let mut body = ErrorBody::new(self.code(), self.to_string());
        match self {
            ServiceError::Validation { field: Some(f), .. } => body.field = Some(f.clone()),
            ServiceError::NoLicense {
                next_free_at,
                asked,
                free,
                count,
                ..
            } => {
                body.next_free_at = *next_free_at;
                body.asked = Some(*asked);
                body.free = Some(*free);
                body.count = Some(*count);
            }
            ServiceError::NotServing { serving_url } => {
                body.serving_url = Some(serving_url.clone())
            }
            ServiceError::Rule { line, .. } | ServiceError::BadOptions { line, .. } => {
                body.options_line = std::num::NonZeroU32::new(*line)
            }
            _ => {}
        }
        body
    }
}

impl From<crate::store::StoreError> for ServiceError {
    fn from(e: crate::store::StoreError) -> Self {
        ServiceError::Internal(format!("the change could not be made durable: {e}"))
    }
}

impl From<crate::lease_key::Damaged> for ServiceError {
    fn from(e: crate::lease_key::Damaged) -> Self {
        ServiceError::Internal(e.to_string())
    }
}
