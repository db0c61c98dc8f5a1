//! The contract's error JSON as an actix-web response.
//!
//! Every error either service sends is `{"code", "message"}` (plus `field`,
//! `serving_url`, `next_free_at` where they apply; see [`shared::ErrorBody`]). A service
//! keeps its own error type and answers with [`respond`]; code that has nothing better
//! uses [`ApiError`]. [`respond`] also leaves the code and message in the response's
//! extensions, where the request middleware ([`crate::observe`]) finds them to log the
//! answer in one line.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use shared::{ErrorBody, ErrorCode};

/// The code and message of an error answer, and the cause of a failure (for the log
/// only), left in the response's extensions for the log line.
#[derive(Debug, Clone)]
pub struct Answered {
    pub code: ErrorCode,
    pub message: String,
    pub cause: Option<String>,
}

/// The contract's error JSON with `status`.
pub fn respond(status: StatusCode, body: &ErrorBody) -> HttpResponse {
    let mut res = HttpResponse::build(status).json(body);
    res.extensions_mut().insert(Answered {
        code: body.code,
        message: body.message.clone(),
        cause: None,
    });
    res
}

/// Adds what went wrong underneath an error answer to its log line (logged at ERROR with
/// it; the client never sees it).
pub fn note_cause(res: &mut HttpResponse, cause: &str) {
    if let Some(answered) = res.extensions_mut().get_mut::<Answered>() {
        answered.cause = Some(cause.to_owned());
    }
}

/// The HTTP status of a code; [`ErrorCode::http_status`] is the contract's table.
pub fn status_of(code: ErrorCode) -> StatusCode {
    StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// A contract error with its status (the code's own unless overridden: 413 and 408 are
/// `VALIDATION_ERROR`s, 405 is `NOT_FOUND`), and `Retry-After` for 429 and 503.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    /// Boxed: the error travels in every handler's `Result`, the body's details are many.
    pub body: Box<ErrorBody>,
    /// Seconds, sent as `Retry-After`.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError::from(ErrorBody::new(code, message))
    }

    pub fn validation(field: &str, message: impl Into<String>) -> Self {
        ApiError::from(ErrorBody::new(ErrorCode::ValidationError, message).with_field(field))
    }

    /// 413: a body over `limit` bytes.
    pub fn too_large(limit: usize) -> Self {
        ApiError::validation("body", format!("the body is larger than {} bytes", limit))
            .with_status(StatusCode::PAYLOAD_TOO_LARGE)
    }

    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    pub fn code(&self) -> ErrorCode {
        self.body.code
    }
}

impl From<ErrorBody> for ApiError {
    fn from(body: ErrorBody) -> Self {
        ApiError {
            status: status_of(body.code),
            body: Box::new(body),
            retry_after: None,
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.body.fmt(f)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = respond(self.status, &self.body);
        if let Some(secs) = self.retry_after {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        res
    }
}

/// The code that goes with a status when an error was not raised as a contract error
/// (actix-web's own rejections, caught by [`crate::observe`]).
pub fn code_for_status(status: StatusCode) -> ErrorCode {
    match status.as_u16() {
        401 => ErrorCode::Unauthorized,
        403 => ErrorCode::Forbidden,
        404 | 405 => ErrorCode::NotFound,
        429 => ErrorCode::TooManyRequests,
        503 => ErrorCode::Unavailable,
        400..=499 => ErrorCode::ValidationError,
        _ => ErrorCode::InternalError,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::MessageBody;

    #[test]
    fn an_error_is_the_contract_json_with_its_status_and_retry_after() {
        let e = ApiError::new(ErrorCode::TooManyRequests, "slow down").with_retry_after(3);
        let res = e.error_response();
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(res.headers().get(header::RETRY_AFTER).unwrap(), "3");
        assert_eq!(
            res.headers().get(header::CONTENT_TYPE).unwrap(),
            "application/json"
        );
        let answered = res.extensions().get::<Answered>().cloned().unwrap();
        assert_eq!(answered.code, ErrorCode::TooManyRequests);
        assert_eq!(answered.cause, None);
        let body = res.into_body().try_into_bytes().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["code"], "TOO_MANY_REQUESTS");
        assert_eq!(v["message"], "slow down");
    }

    #[test]
    fn a_cause_reaches_the_log_line_and_never_the_body() {
        let mut res = ApiError::new(ErrorCode::Unavailable, "cannot store now").error_response();
        note_cause(&mut res, "disk full");
        let answered = res.extensions().get::<Answered>().cloned().unwrap();
        assert_eq!(answered.cause.as_deref(), Some("disk full"));
        let body = res.into_body().try_into_bytes().unwrap();
        assert!(!String::from_utf8_lossy(&body).contains("disk full"));
    }

    #[test]
    fn too_large_is_a_413_validation_error_on_the_body() {
        let e = ApiError::too_large(4096);
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(e.code(), ErrorCode::ValidationError);
        assert_eq!(e.body.field.as_deref(), Some("body"));
        assert!(e.body.message.contains("4096"));
    }
}
