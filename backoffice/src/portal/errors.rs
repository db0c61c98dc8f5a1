//! What can go wrong on a portal page. Each answers with an HTML page, or, for a missing or
//! expired session, a redirect to the sign-in page (which is no error worth a log line).

use actix_web::http::{StatusCode, header};
use actix_web::{HttpResponse, ResponseError};
use askama::Template;
use shared::ErrorCode;

use super::cookies::{SESSION_COOKIE, SIGNIN, removal};
use super::layout::Layout;
use crate::error::AppError;

#[derive(Debug)]
pub enum PortalError {
    /// Not signed in (or no longer): to the sign-in page, coming back to `next` after.
    SignIn {
        expired: bool,
        next: Option<String>,
    },
    NotFound,
    Forbidden(String),
    BadRequest(String),
    /// Anything else the back office refused or failed at, as its error says.
    App(AppError),
    /// A page that could not be drawn.
    Template(String),
}

impl std::fmt::Display for PortalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PortalError::SignIn { .. } => write!(f, "not signed in: sent to the sign-in page"),
            PortalError::NotFound => write!(f, "no such page"),
            PortalError::Forbidden(m) | PortalError::BadRequest(m) => write!(f, "{m}"),
            PortalError::App(e) => e.fmt(f),
            PortalError::Template(m) => write!(f, "cannot draw the page: {m}"),
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
            ErrorCode::Forbidden => PortalError::Forbidden(e.message().to_owned()),
            _ => PortalError::App(e),
        }
    }
}

impl From<askama::Error> for PortalError {
    fn from(e: askama::Error) -> Self {
        PortalError::Template(e.to_string())
    }
}

#[derive(Template)]
#[template(path = "error.html")]
pub struct ErrorPage {
    pub layout: Layout,
    pub heading: String,
    pub message: String,
}

fn sign_in_redirect(expired: bool, next: Option<&str>) -> HttpResponse {
    let mut q = Vec::new();
    if expired {
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
    if expired {
        r.cookie(removal(SESSION_COOKIE));
    }
    r.finish()
}

impl ResponseError for PortalError {
    fn status_code(&self) -> StatusCode {
        match self {
            PortalError::SignIn { .. } => StatusCode::SEE_OTHER,
            PortalError::NotFound => StatusCode::NOT_FOUND,
            PortalError::Forbidden(_) => StatusCode::FORBIDDEN,
            PortalError::BadRequest(_) => StatusCode::BAD_REQUEST,
            PortalError::App(e) => e.status_code(),
            PortalError::Template(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let (heading, message) = match self {
            PortalError::SignIn { expired, next } => {
                return sign_in_redirect(*expired, next.as_deref());
            }
            PortalError::NotFound => (
                "Not found",
                "There is no such page, or it belongs to something you cannot see.".to_owned(),
            ),
            PortalError::Forbidden(m) => ("Refused", m.clone()),
            PortalError::BadRequest(m) => ("That request was not understood", m.clone()),
            PortalError::App(e) if e.code() == ErrorCode::InternalError => (
                "Something went wrong",
                "The back office could not complete this; it logged the cause. Try again later."
                    .to_owned(),
            ),
            PortalError::App(e) if e.is_failure() => {
                ("Not available right now", format!("{}.", e.message()))
            }
            PortalError::App(e) => ("That did not work", e.message().to_owned()),
            PortalError::Template(_) => (
                "Something went wrong",
                "The back office could not draw this page; it logged the cause.".to_owned(),
            ),
        };
        let page = ErrorPage {
            layout: Layout::bare(heading),
            heading: heading.to_owned(),
            message,
        };
        let body = page
            .render()
            .unwrap_or_else(|_| format!("<!doctype html><title>{heading}</title><p>{heading}</p>"));
        let mut r = HttpResponse::build(self.status_code());
        r.content_type("text/html; charset=utf-8");
        if let PortalError::App(e) = self
            && let Some(s) = e.retry_after()
        {
            r.insert_header((header::RETRY_AFTER, s.to_string()));
        }
        r.body(body)
    }
}
