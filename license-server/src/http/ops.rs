//! Liveness, Prometheus metrics and this API's OpenAPI document.

use actix_web::{HttpResponse, get, web};
use serde::Serialize;

use super::Document;
use crate::service::Service;

/// `GET /healthz` answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// Liveness: the process answers HTTP.
#[utoipa::path(
    tag = "service",
    responses((status = 200, description = "The server is up", body = Health))
)]
#[get("/healthz")]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Health { status: "ok" })
}

/// Prometheus metrics (`lls_*`): grants, renewals, returns, expirations, releases,
/// denials by code, capability polls by result, store commits, events and snapshots,
/// seats, pair replication, and requests and their latency by route.
#[utoipa::path(
    tag = "service",
    responses((
        status = 200,
        description = "OpenMetrics text",
        content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8",
        body = String
    ))
)]
#[get("/metrics")]
pub async fn metrics(svc: web::Data<Service>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(svc.render_metrics())
}

/// This document.
#[utoipa::path(
    tag = "service",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", body = Object))
)]
#[get("/openapi.json")]
pub async fn openapi(doc: web::Data<Document>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(doc.0.clone())
}
