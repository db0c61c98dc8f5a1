//! Bearer tokens: reading `Authorization: Bearer …`, comparing in constant time, and a
//! middleware that refuses a scope's requests without the right token before anything
//! (an extractor, a body read, a handler) runs.

use actix_web::dev::ServiceRequest;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use sha2::{Digest, Sha256};
use shared::ErrorCode;
use shared::secret::Secret;
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::middleware::{Before, before};

/// Longest bearer token looked at; longer ones are treated as wrong.
pub const MAX_TOKEN: usize = 1024;

/// The token of `Authorization: Bearer <token>` (scheme case-insensitive), if any.
pub fn bearer(req: &HttpRequest) -> Option<&str> {
    bearer_of(req.headers().get(header::AUTHORIZATION)?.to_str().ok()?)
}

fn bearer_of(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Whether two secrets are equal, in time that depends on neither (both are hashed
/// first, so not even the length leaks).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    Sha256::digest(a).ct_eq(&Sha256::digest(b)).into()
}

/// What a bearer check says when it refuses.
#[derive(Debug, Clone)]
pub struct TokenCheck {
    expected: [u8; 32],
    /// 401: no token was sent.
    missing: String,
    /// 403: another token was sent.
    wrong: String,
}

impl TokenCheck {
    pub fn new(secret: &Secret, missing: impl Into<String>, wrong: impl Into<String>) -> Self {
        TokenCheck {
            expected: Sha256::digest(secret.expose().as_bytes()).into(),
            missing: missing.into(),
            wrong: wrong.into(),
        }
    }

    /// 401 `UNAUTHORIZED` without a token, 403 `FORBIDDEN` with another one.
    pub fn check(&self, req: &HttpRequest) -> Result<(), ApiError> {
        match bearer(req) {
            None => Err(ApiError::new(ErrorCode::Unauthorized, self.missing.clone())),
            Some(t)
                if t.len() <= MAX_TOKEN
                    && bool::from(Sha256::digest(t.as_bytes()).ct_eq(&self.expected)) =>
            {
                Ok(())
            }
            Some(_) => Err(ApiError::new(ErrorCode::Forbidden, self.wrong.clone())),
        }
    }
}

/// Middleware: a scope's requests go on only with the right bearer token; the others are
/// answered at once, their bodies unread (the connection is closed after the answer when
/// a body was sent).
pub fn require_bearer(
    check: TokenCheck,
) -> Before<impl Fn(&mut ServiceRequest) -> Option<HttpResponse> + 'static> {
    before(move |req| {
        check
            .check(req.request())
            .err()
            .map(|e| ResponseError::error_response(&e))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn bearer_tokens_are_read_from_the_authorization_header() {
        assert_eq!(bearer_of("Bearer abc"), Some("abc"));
        assert_eq!(bearer_of("bearer  abc "), Some("abc"));
        assert_eq!(bearer_of("Basic abc"), None);
        assert_eq!(bearer_of("Bearer "), None);
        assert_eq!(bearer_of("Bearer"), None);
        let req = TestRequest::default().to_http_request();
        assert_eq!(bearer(&req), None);
    }

    #[test]
    fn tokens_compare_equal_only_when_equal() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"", b"a"));
    }

    #[test]
    fn a_token_check_tells_missing_from_wrong() {
        let check = TokenCheck::new(&Secret::new("s3cret"), "send it", "not that one");
        let with = |v: Option<&str>| {
            let mut r = TestRequest::default();
            if let Some(v) = v {
                r = r.insert_header((header::AUTHORIZATION, v));
            }
            check.check(&r.to_http_request())
        };
        assert!(with(Some("Bearer s3cret")).is_ok());
        let e = with(None).unwrap_err();
        assert_eq!(
            (e.code(), e.body.message.as_str()),
            (ErrorCode::Unauthorized, "send it")
        );
        let e = with(Some("Bearer s3cre")).unwrap_err();
        assert_eq!(
            (e.code(), e.body.message.as_str()),
            (ErrorCode::Forbidden, "not that one")
        );
        let long = format!("Bearer {}", "x".repeat(MAX_TOKEN + 1));
        assert_eq!(with(Some(&long)).unwrap_err().code(), ErrorCode::Forbidden);
    }
}
