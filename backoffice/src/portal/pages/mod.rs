//! The portal's page handlers, one module a part of the portal: thin, each passing the
//! session's account ID to the store.

pub mod clusters;
pub mod entitlements;
pub mod pairs;
pub mod servers;
pub mod signin;
pub mod tokens;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse};
use serde::Deserialize;

use super::cookies::redirect;
use super::errors::PortalError;
use super::layout;
use crate::error::AppError;

pub type PageResult = Result<HttpResponse, PortalError>;

/// Renders a page (see [`layout::html`]).
pub fn render<T: askama::Template>(req: &HttpRequest, status: StatusCode, page: &T) -> PageResult {
    Ok(layout::html(req, status, page)?)
}

/// The status a refusal is shown with.
pub fn status_of(e: &AppError) -> StatusCode {
    StatusCode::from_u16(e.code().http_status()).unwrap_or(StatusCode::BAD_REQUEST)
}

/// A form that carries nothing but its CSRF token.
#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    pub csrf: String,
}

pub fn server_url(id: &str) -> String {
    format!("/portal/servers/{id}")
}

pub async fn home() -> HttpResponse {
    redirect("/portal/servers")
}
