//! Why a domain rule refuses: a contract code, a message for the person who asked, and the
//! input field it is about. No HTTP, no SQL: the service maps it to its own error type.

use shared::ErrorCode;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainError {
    pub code: ErrorCode,
    pub message: String,
    /// The input field the refusal is about, for validation errors.
    pub field: Option<String>,
}

impl DomainError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        DomainError {
            code,
            message: message.into(),
            field: None,
        }
    }

    /// `VALIDATION_ERROR` about `field`.
    pub fn validation(field: &str, message: impl Into<String>) -> Self {
        DomainError {
            field: Some(field.to_owned()),
            ..DomainError::new(ErrorCode::ValidationError, message)
        }
    }

    /// The same refusal, about `field`.
    pub fn with_field(mut self, field: &str) -> Self {
        self.field = Some(field.to_owned());
        self
    }

    pub fn code(&self) -> ErrorCode {
        self.code
    }
}

impl std::fmt::Display for DomainError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for DomainError {}
