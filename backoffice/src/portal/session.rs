//! Portal sessions in cookies, CSRF checks, flash messages, and the portal's error pages.

use std::future::Future;
use std::pin::Pin;

use actix_web::cookie::{Cookie, SameSite, time::Duration as CookieDuration};
use actix_web::http::{StatusCode, header};
use actix_web::{FromRequest, HttpRequest, HttpResponse, ResponseError, dev::Payload};
use askama::Template;
use base64::Engine;
use shared::ErrorCode;

use super::{Layout, SIGNIN};
use crate::api::{State, run};
use crate::error::AppError;
use crate::store::auth::{self, Principal};

pub const SESSION_COOKIE: &str = "portal_session";
pub const SIGNIN_COOKIE: &str = "portal_signin";
pub const FLASH_COOKIE: &str = "portal_flash";
pub const COOKIE_PATH: &str = "/portal";

/// Compares two secrets in time independent of where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && !a.is_empty()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The CSRF rule of every portal form: the hidden `csrf` field must equal the secret the
/// server holds for this browser (the session's token, or the sign-in cookie).
pub fn check_csrf(expected: &str, given: &str) -> Result<(), PortalError> {
    if same_secret(expected, given) {
        Ok(())
    } else {
        Err(PortalError::Forbidden(
            "This form was not sent from a page of this portal, or it is too old. Go back, \
             reload the page and try again."
                .to_owned(),
        ))
    }
}

/// Whether the request came over HTTPS (directly or through a proxy that says so), so that
/// cookies get the `Secure` flag there.
fn is_https(req: &HttpRequest) -> bool {
    req.connection_info().scheme() == "https"
}

/// A cookie for the portal's path: HttpOnly, SameSite=Strict, Secure over HTTPS.
pub fn cookie(
    req: &HttpRequest,
    name: &'static str,
    value: String,
    max_age: i64,
) -> Cookie<'static> {
    Cookie::build(name, value)
        .path(COOKIE_PATH)
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(is_https(req))
        .max_age(CookieDuration::seconds(max_age))
        .finish()
}

/// A cookie that deletes `name`.
pub fn removal(name: &'static str) -> Cookie<'static> {
    let mut c = Cookie::build(name, "")
        .path(COOKIE_PATH)
        .http_only(true)
        .same_site(SameSite::Strict)
        .finish();
    c.make_removal();
    c
}

/// A one-time message shown on the next page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flash {
    /// `ok` or `error`.
    pub kind: &'static str,
    pub text: String,
}

pub fn encode_flash(kind: &str, text: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{kind}\n{text}"))
}

pub fn decode_flash(value: &str) -> Option<Flash> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(value)
        .ok()?;
    let s = String::from_utf8(bytes).ok()?;
    let (kind, text) = s.split_once('\n')?;
    let kind = match kind {
        "ok" => "ok",
        "error" => "error",
        _ => return None,
    };
    Some(Flash {
        kind,
        text: text.chars().take(500).collect(),
    })
}

pub fn flash_of(req: &HttpRequest) -> Option<Flash> {
    req.cookie(FLASH_COOKIE)
        .and_then(|c| decode_flash(c.value()))
}

/// 303 See Other to `location` (Post/Redirect/Get), carrying a flash message.
pub fn redirect_with(req: &HttpRequest, location: &str, kind: &str, text: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, location.to_owned()))
        .cookie(cookie(req, FLASH_COOKIE, encode_flash(kind, text), 60))
        .finish()
}

pub fn redirect(location: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, location.to_owned()))
        .finish()
}

/// A signed-in account user of the portal. Every handler passes `account_id` to the store,
/// which filters by it: nothing of another account is reachable.
#[derive(Clone, Debug)]
pub struct PortalUser {
    pub user_id: String,
    pub account_id: String,
    pub email: String,
    pub csrf_token: String,
    pub token: String,
}

impl PortalUser {
    pub fn check_csrf(&self, given: &str) -> Result<(), PortalError> {
        check_csrf(&self.csrf_token, given)
    }
}

/// Only portal paths (no query, nothing odd) are followed after sign-in.
pub fn safe_next(next: &str) -> Option<&str> {
    let ok = next.starts_with("/portal/")
        && !next.contains("//")
        && next
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_'));
    ok.then_some(next)
}

impl FromRequest for PortalUser {
    type Error = PortalError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, PortalError>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let next = (req.method() == actix_web::http::Method::GET)
                .then(|| safe_next(req.path()).map(str::to_owned))
                .flatten();
            let Some(token) = req.cookie(SESSION_COOKIE).map(|c| c.value().to_owned()) else {
                return Err(PortalError::SignIn {
                    expired: false,
                    next,
                });
            };
            if token.is_empty() || token.len() > 512 {
                return Err(PortalError::SignIn {
                    expired: false,
                    next,
                });
            }
            let state = req
                .app_data::<State>()
                .cloned()
                .ok_or_else(|| PortalError::Internal("no state".into()))?;
            let t = token.clone();
            let info = match run(&state, move |c| auth::session(c, &t)).await {
                Ok(i) => i,
                Err(e) if e.code() == ErrorCode::Unauthorized => {
                    return Err(PortalError::SignIn {
                        expired: true,
                        next,
                    });
                }
                Err(e) => return Err(e.into()),
            };
            match info.principal {
                Principal::User {
                    user_id,
                    account_id,
                } => Ok(PortalUser {
                    user_id,
                    account_id,
                    email: info.email,
                    csrf_token: info.csrf_token,
                    token,
                }),
                Principal::Admin { .. } => Err(PortalError::SignIn {
                    expired: false,
                    next: None,
                }),
            }
        })
    }
}

/// What can go wrong on a portal page; each answers with an HTML page (or, for a missing
/// or expired session, a redirect to the sign-in page).
#[derive(Debug)]
pub enum PortalError {
    SignIn { expired: bool, next: Option<String> },
    NotFound,
    Forbidden(String),
    BadRequest(String),
    Status(StatusCode, String),
    Internal(String),
}

impl std::fmt::Display for PortalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PortalError::SignIn { .. } => write!(f, "sign in first"),
            PortalError::NotFound => write!(f, "not found"),
            PortalError::Forbidden(m) | PortalError::BadRequest(m) | PortalError::Status(_, m) => {
                write!(f, "{m}")
            }
            PortalError::Internal(m) => write!(f, "internal error: {m}"),
        }
    }
}

impl From<AppError> for PortalError {
    fn from(e: AppError) -> Self {
        match e.code() {
            ErrorCode::NotFound => PortalError::NotFound,
            ErrorCode::Unauthorized => PortalError::SignIn {
                expired: true,
                next: None,
            },
            ErrorCode::Forbidden => PortalError::Forbidden(e.0.message),
            ErrorCode::InternalError => PortalError::Internal(e.0.message),
            code => PortalError::Status(
                StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::BAD_REQUEST),
                e.0.message,
            ),
        }
    }
}

impl From<askama::Error> for PortalError {
    fn from(e: askama::Error) -> Self {
        tracing::error!(error = %e, "portal template");
        PortalError::Internal(e.to_string())
    }
}

#[derive(Template)]
#[template(path = "error.html")]
pub struct ErrorPage {
    pub layout: Layout,
    pub heading: String,
    pub message: String,
}

impl ResponseError for PortalError {
    fn status_code(&self) -> StatusCode {
        match self {
            PortalError::SignIn { .. } => StatusCode::SEE_OTHER,
            PortalError::NotFound => StatusCode::NOT_FOUND,
            PortalError::Forbidden(_) => StatusCode::FORBIDDEN,
            PortalError::BadRequest(_) => StatusCode::BAD_REQUEST,
            PortalError::Status(s, _) => *s,
            PortalError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let PortalError::SignIn { expired, next } = self {
            let mut q = Vec::new();
            if *expired {
                q.push("expired=1".to_owned());
            }
            if let Some(n) = next {
                q.push(format!("next={n}"));
            }
            let location = if q.is_empty() {
                SIGNIN.to_owned()
            } else {
                format!("{SIGNIN}?{}", q.join("&"))
            };
            let mut r = HttpResponse::SeeOther();
            r.insert_header((header::LOCATION, location));
            if *expired {
                r.cookie(removal(SESSION_COOKIE));
            }
            return r.finish();
        }
        let (heading, message) = match self {
            PortalError::NotFound => (
                "Not found",
                "There is no such page, or it belongs to something you cannot see.".to_owned(),
            ),
            PortalError::Forbidden(m) => ("Refused", m.clone()),
            PortalError::BadRequest(m) => ("That request was not understood", m.clone()),
            PortalError::Status(_, m) => ("That did not work", m.clone()),
            PortalError::Internal(_) => (
                "Something went wrong",
                "The back office could not complete this; it logged the cause. Try again later."
                    .to_owned(),
            ),
            PortalError::SignIn { .. } => ("Sign in", String::new()),
        };
        let page = ErrorPage {
            layout: Layout::bare(heading),
            heading: heading.to_owned(),
            message,
        };
        let body = page
            .render()
            .unwrap_or_else(|_| format!("<!doctype html><title>{heading}</title><p>{heading}</p>"));
        HttpResponse::build(self.status_code())
            .content_type("text/html; charset=utf-8")
            .body(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csrf_needs_the_exact_token() {
        assert!(check_csrf("abc123", "abc123").is_ok());
        assert!(matches!(
            check_csrf("abc123", ""),
            Err(PortalError::Forbidden(_))
        ));
        assert!(check_csrf("abc123", "abc124").is_err());
        assert!(check_csrf("abc123", "abc1234").is_err());
        // An empty expected secret never matches (no session, no sign-in cookie).
        assert!(check_csrf("", "").is_err());
    }

    #[test]
    fn flash_round_trips_and_rejects_junk() {
        let v = encode_flash("ok", "Pair registered; <b>ok</b>");
        assert_eq!(
            decode_flash(&v),
            Some(Flash {
                kind: "ok",
                text: "Pair registered; <b>ok</b>".into()
            })
        );
        assert_eq!(decode_flash(&encode_flash("evil", "x")), None);
        assert_eq!(decode_flash("%%%"), None);
    }

    #[test]
    fn only_portal_paths_are_followed() {
        assert_eq!(
            safe_next("/portal/servers/abc-1"),
            Some("/portal/servers/abc-1")
        );
        assert_eq!(safe_next("https://evil.example/"), None);
        assert_eq!(safe_next("/portal//evil.example"), None);
        assert_eq!(safe_next("/portal/x?y=1"), None);
        assert_eq!(safe_next("/api/v1/account"), None);
    }
}
