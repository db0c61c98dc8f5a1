//! The end-user portal: server-rendered pages under `/portal` for account users.
//!
//! Templates (askama, auto-escaped) live in `portal/templates`, the stylesheet in
//! `portal/static`. Handlers are thin: they take the signed-in user's account ID from the
//! session and pass it to the same store functions the account API uses, which filter by it.
//! Every POST form carries a CSRF token; every success answers with a redirect (PRG) and a
//! flash message. The routes are in `routes.rs`.

pub mod chart;
pub mod cookies;
pub mod errors;
pub mod layout;
pub mod pages;
pub mod session;
pub mod view;

use actix_web::http::header;
use actix_web::middleware::DefaultHeaders;
use actix_web::web;

use errors::PortalError;

/// `Content-Security-Policy` of every portal page: nothing but this origin, no framing,
/// no inline scripts or styles.
pub const CSP: &str = "default-src 'self'; img-src 'self' data:; form-action 'self'; \
                       frame-ancestors 'none'; base-uri 'none'; object-src 'none'";

/// The headers of every portal answer.
pub fn security_headers() -> DefaultHeaders {
    DefaultHeaders::new()
        .add((header::CONTENT_SECURITY_POLICY, CSP))
        .add((header::X_FRAME_OPTIONS, "DENY"))
        .add((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .add((header::REFERRER_POLICY, "same-origin"))
        // Pages hold account data and one-time secrets: never cached. (The stylesheet sets
        // its own long cache, which DefaultHeaders leaves alone.)
        .add((header::CACHE_CONTROL, "no-store"))
}

pub fn form_config() -> web::FormConfig {
    web::FormConfig::default()
        .limit(16 * 1024)
        .error_handler(|err, _req| {
            PortalError::BadRequest(format!("The form could not be read: {err}")).into()
        })
}

/// A portal path that does not exist.
pub async fn not_found() -> Result<actix_web::HttpResponse, PortalError> {
    Err(PortalError::NotFound)
}

pub fn query_config() -> web::QueryConfig {
    web::QueryConfig::default().error_handler(|err, _req| {
        PortalError::BadRequest(format!("The address could not be read: {err}")).into()
    })
}
