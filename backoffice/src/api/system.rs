//! What every service answers: health, metrics, this API's OpenAPI document, and the public
//! key that verifies capability responses.

use actix_web::{HttpResponse, get, web};
use serde::Serialize;
use utoipa::ToSchema;

use super::doc;
use crate::error::AppResult;
use crate::http::Metrics;
use crate::state::{State, run};

/// The API's OpenAPI document as served, generated once at start from the handlers.
#[derive(Debug)]
pub struct ApiDocument(pub String);

#[derive(Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    status: &'static str,
}

/// Up, with its database answering.
#[utoipa::path(
    tag = "system",
    responses((status = 200, description = "Up, and the database answers", body = Health), doc::Public)
)]
#[get("/healthz")]
pub async fn healthz(state: State) -> AppResult<web::Json<Health>> {
    run(&state, |c| {
        use diesel::connection::SimpleConnection;
        Ok(c.batch_execute("SELECT 1")?)
    })
    .await?;
    Ok(web::Json(Health { status: "ok" }))
}

/// Prometheus metrics (OpenMetrics text).
#[utoipa::path(
    tag = "system",
    responses((
        status = 200,
        description = "Requests by route and status, latency by route, capability outcomes",
        content_type = "application/openmetrics-text",
        body = String
    ), doc::Static)
)]
#[get("/metrics")]
pub async fn metrics(metrics: web::Data<Metrics>, state: State) -> HttpResponse {
    let open = i64::try_from(state.links.open_count()).unwrap_or(i64::MAX);
    metrics.links.set(open);
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(metrics.render())
}

/// This document.
#[utoipa::path(
    tag = "system",
    responses((status = 200, description = "The API's OpenAPI 3.1 document", body = serde_json::Value), doc::Static)
)]
#[get("/api/v1/openapi.json")]
pub async fn openapi(doc: web::Data<ApiDocument>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(doc.0.clone())
}

/// The public key that verifies capability responses (Ed25519, PEM).
#[utoipa::path(
    tag = "system",
    responses((
        status = 200,
        description = "The back office's public signing key; license servers verify with it",
        content_type = "application/x-pem-file",
        body = String,
        example = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA…\n-----END PUBLIC KEY-----\n"
    ), doc::Static)
)]
#[get("/api/v1/signing-key")]
pub async fn signing_key(state: State) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/x-pem-file")
        .body(state.public_pem.clone())
}
