//! The back office at the HTTP edge, over the plumbing both services share (`http-kit`):
//! [`AppError`] answered as the contract's JSON, the request span (which handlers fill in
//! with who asked: `account`, `hostid`), and the metrics (http-kit's requests by route and
//! status, plus the capability requests' outcomes).

use actix_web::dev::ServiceRequest;
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use http_kit::ApiError;
use http_kit::observe::HttpMetrics;
use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use shared::ErrorCode;
use std::sync::Arc;
use tracing::Span;
use tracing::field::Empty;

use crate::error::AppError;

/// Largest request body accepted (the portal's forms have their own, smaller limit).
pub const MAX_BODY: usize = 64 * 1024;

/// Refusals logged at DEBUG: wrong passwords and throttling, which the throttle reports
/// once per burst at WARN.
pub const QUIET: &[ErrorCode] = &[ErrorCode::Unauthorized, ErrorCode::TooManyRequests];

impl AppError {
    /// The contract's answer: code, message, field, `Retry-After`.
    pub fn to_api_error(&self) -> ApiError {
        let mut e = ApiError::from(self.body().clone());
        e.retry_after = self.retry_after();
        e
    }
}

impl ResponseError for AppError {
    fn status_code(&self) -> StatusCode {
        http_kit::error::status_of(self.code())
    }

    /// The contract's answer, with the cause for the log line only.
    fn error_response(&self) -> HttpResponse {
        let mut res = self.to_api_error().error_response();
        if let Some(cause) = self.cause() {
            http_kit::error::note_cause(&mut res, cause);
        }
        res
    }
}

/// What http-kit's helpers refuse (a body over its limit, JSON that does not parse).
impl From<ApiError> for AppError {
    fn from(e: ApiError) -> Self {
        let mut out = AppError::from(*e.body);
        if let Some(secs) = e.retry_after {
            out = out.with_retry_after(secs);
        }
        out
    }
}

/// `request{method path id route account hostid}`: the span each request runs in, with
/// its storage work.
pub fn request_span(req: &ServiceRequest, id: u64) -> Span {
    tracing::info_span!(
        "request",
        method = %req.method(),
        path = %req.path(),
        id,
        route = Empty,
        account = Empty,
        hostid = Empty,
    )
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

/// Every metric of the back office (`backoffice_*`), rendered by `GET /metrics`.
pub struct Metrics {
    registry: Mutex<Registry>,
    /// Requests by route and status, latency by route (see `http_kit::observe`).
    pub http: Arc<HttpMetrics>,
    /// Capability requests by outcome (`ok` or the error code).
    pub capability: Family<OutcomeLabels, Counter>,
    /// Live links held open now (set when the metrics are read).
    pub links: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("backoffice");
        let http = HttpMetrics::register(&mut registry);
        let capability = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "capability_requests",
            "Capability requests by outcome (ok or error code)",
            capability.clone(),
        );
        let links = Gauge::default();
        registry.register("live_links", "Live links held open now", links.clone());
        Metrics {
            registry: Mutex::new(registry),
            http,
            capability,
            links,
        }
    }
}

impl Metrics {
    /// The OpenMetrics text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry.lock()).is_err() {
            out.clear();
        }
        out
    }

    pub fn capability_outcome(&self, outcome: &str) {
        self.capability
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_keeps_its_code_retry_after_and_cause_only_for_the_log() {
        let e = AppError::too_many_requests("slow down", 3).with_cause("pool full");
        let res = e.error_response();
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            res.headers()
                .get(actix_web::http::header::RETRY_AFTER)
                .unwrap(),
            "3"
        );
        let answered = res
            .extensions()
            .get::<http_kit::error::Answered>()
            .cloned()
            .unwrap();
        assert_eq!(answered.cause.as_deref(), Some("pool full"));
        let back = AppError::from(e.to_api_error());
        assert_eq!(back.code(), ErrorCode::TooManyRequests);
        assert_eq!(back.retry_after(), Some(3));
    }

    #[test]
    fn metrics_name_the_service_and_count_capability_outcomes() {
        let m = Metrics::default();
        m.capability_outcome("ok");
        m.http.observe("GET", "/healthz".into(), 200, 0.001);
        let text = m.render();
        assert!(
            text.contains(r#"backoffice_capability_requests_total{outcome="ok"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"backoffice_http_requests_total{method="GET",route="/healthz",status="200"} 1"#
            ),
            "{text}"
        );
    }
}
