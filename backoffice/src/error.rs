//! The back office's error type: a contract code and a message for the person who reads it,
//! plus what only the operator's log gets (the cause of a failure) and, for
//! `TOO_MANY_REQUESTS`, when to try again. One condition has one code on every route: a
//! database that cannot store (full disk, failing disk, read-only file) is `UNAVAILABLE`
//! with the same message wherever it happens. HTTP knows nothing of it here: `http` maps it to
//! a response at the edge.

use shared::{ErrorBody, ErrorCode};

use crate::domain::DomainError;

/// Boxed: errors are rare and `Result`s of it stay small.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppError(Box<Inner>);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Inner {
    body: ErrorBody,
    /// Seconds the client should wait (`Retry-After`).
    retry_after: Option<u64>,
    /// What went wrong underneath, for the log only.
    cause: Option<String>,
}

pub type AppResult<T> = Result<T, AppError>;

/// What a client is told when the database cannot store anything, on every route.
pub const STORAGE_FAILING: &str = "the back office cannot store anything right now (its \
     database storage is full or failing); nothing was changed. Try again later";

impl AppError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        AppError::from(ErrorBody::new(code, message))
    }

    pub fn validation(field: &str, message: impl Into<String>) -> Self {
        AppError::new(ErrorCode::ValidationError, message).with_field(field)
    }

    pub fn not_found(what: &str) -> Self {
        AppError::new(ErrorCode::NotFound, format!("{what} not found"))
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        AppError::new(ErrorCode::Unauthorized, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        AppError::new(ErrorCode::Forbidden, message)
    }

    /// `ALREADY_EXISTS` about `field`.
    pub fn already_exists(field: &str, message: impl Into<String>) -> Self {
        AppError::new(ErrorCode::AlreadyExists, message).with_field(field)
    }

    /// `TOO_MANY_REQUESTS`, to be tried again after `seconds`.
    pub fn too_many_requests(message: impl Into<String>, seconds: u64) -> Self {
        AppError::new(ErrorCode::TooManyRequests, message).with_retry_after(seconds)
    }

    /// To be tried again after `seconds` (at least one).
    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.0.retry_after = Some(seconds.max(1));
        self
    }

    /// A failure of ours; the client learns only that it was logged.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        AppError::new(
            ErrorCode::InternalError,
            "internal error; the back office logged the cause",
        )
        .with_cause(cause)
    }

    /// The database cannot store anything (see [`STORAGE_FAILING`]).
    pub fn storage_failing(cause: impl std::fmt::Display) -> Self {
        AppError::new(ErrorCode::Unavailable, STORAGE_FAILING).with_cause(cause)
    }

    /// The database cannot be reached or is too busy to answer in time.
    pub fn database_unreachable(cause: impl std::fmt::Display) -> Self {
        AppError::new(
            ErrorCode::Unavailable,
            "the database is not reachable right now; try again",
        )
        .with_cause(cause)
    }

    pub fn with_field(mut self, field: &str) -> Self {
        self.0.body.field = Some(field.to_owned());
        self
    }

    pub fn with_cause(mut self, cause: impl std::fmt::Display) -> Self {
        self.0.cause = Some(cause.to_string());
        self
    }

    pub fn code(&self) -> ErrorCode {
        self.0.body.code
    }

    pub fn message(&self) -> &str {
        &self.0.body.message
    }

    pub fn field(&self) -> Option<&str> {
        self.0.body.field.as_deref()
    }

    /// The contract JSON the client gets.
    pub fn body(&self) -> &ErrorBody {
        &self.0.body
    }

    pub fn retry_after(&self) -> Option<u64> {
        self.0.retry_after
    }

    /// What the log gets besides the message: the cause of a failure.
    pub fn cause(&self) -> Option<&str> {
        self.0.cause.as_deref()
    }

    /// A server-side failure (5xx): logged at ERROR with its cause.
    pub fn is_failure(&self) -> bool {
        self.code().http_status() >= 500
    }
}

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code(), self.message())?;
        if let Some(c) = self.cause() {
            write!(f, " ({c})")?;
        }
        Ok(())
    }
}

impl std::error::Error for AppError {}

impl From<DomainError> for AppError {
    fn from(e: DomainError) -> Self {
        let mut body = ErrorBody::new(e.code, e.message);
        body.field = e.field;
        AppError::from(body)
    }
}

impl From<ErrorBody> for AppError {
    fn from(body: ErrorBody) -> Self {
        AppError(Box::new(Inner {
            body,
            retry_after: None,
            cause: None,
        }))
    }
}

impl From<diesel::result::Error> for AppError {
    fn from(e: diesel::result::Error) -> Self {
        use diesel::result::{DatabaseErrorKind, Error};
        match &e {
            Error::NotFound => AppError::not_found("object"),
            Error::DatabaseError(DatabaseErrorKind::ClosedConnection, _) => {
                AppError::database_unreachable(&e)
            }
            Error::DatabaseError(_, info) => match classify(info.message()) {
                Some(Storage::Failing) => AppError::storage_failing(&e),
                Some(Storage::Busy) => AppError::database_unreachable(&e),
                None => AppError::internal(&e),
            },
            _ => AppError::internal(&e),
        }
    }
}

impl From<diesel::r2d2::PoolError> for AppError {
    fn from(e: diesel::r2d2::PoolError) -> Self {
        AppError::database_unreachable(e)
    }
}

/// What a database error message says about the storage underneath.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    /// It cannot store: full, failing, read-only.
    Failing,
    /// It is locked or busy beyond the wait.
    Busy,
}

/// Reads SQLite's and PostgreSQL's messages for conditions that are the storage's, not the
/// request's (diesel reports them all as `DatabaseErrorKind::Unknown`).
pub fn classify(message: &str) -> Option<Storage> {
    const FAILING: &[&str] = &[
        // SQLite: SQLITE_FULL, SQLITE_IOERR_*, SQLITE_READONLY.
        "database or disk is full",
        "disk I/O error",
        "attempt to write a readonly database",
        // PostgreSQL: disk_full (53100), io errors.
        "No space left on device",
        "could not extend file",
        "could not write",
    ];
    const BUSY: &[&str] = &["database is locked", "database table is locked"];
    if FAILING.iter().any(|m| message.contains(m)) {
        Some(Storage::Failing)
    } else if BUSY.iter().any(|m| message.contains(m)) {
        Some(Storage::Busy)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_conditions_have_one_code_and_message() {
        for m in [
            "database or disk is full",
            "disk I/O error",
            "could not extend file \"base/16384/2619\": No space left on device",
        ] {
            assert_eq!(classify(m), Some(Storage::Failing), "{m}");
        }
        assert_eq!(classify("database is locked"), Some(Storage::Busy));
        assert_eq!(classify("syntax error"), None);
        let e = AppError::storage_failing("database or disk is full");
        assert_eq!(e.code(), ErrorCode::Unavailable);
        assert_eq!(e.message(), STORAGE_FAILING);
        assert_eq!(e.cause(), Some("database or disk is full"));
        // The cause never reaches the client's body.
        assert!(
            !serde_json::to_string(e.body())
                .unwrap()
                .contains("disk is full")
        );
    }

    #[test]
    fn domain_refusals_keep_code_message_and_field() {
        let e: AppError = DomainError::validation("quantity", "too many").into();
        assert_eq!(e.code(), ErrorCode::ValidationError);
        assert_eq!(e.field(), Some("quantity"));
        assert_eq!(e.to_string(), "VALIDATION_ERROR: too many");
        let t = AppError::too_many_requests("slow down", 0);
        assert_eq!(t.retry_after(), Some(1));
    }
}
