//! The request middleware: a tracing span per request, a latency observation and a
//! count by matched route (Prometheus), one log line per answer, and the contract's
//! error JSON for any error answer that was not one already (pages for people,
//! `text/html`, stay as they are).
//!
//! Log levels: a 2xx or 3xx answer at DEBUG, a refusal (4xx, and 5xx other than 500 —
//! a standby server's `NOT_SERVING`, a full queue's `UNAVAILABLE`) at INFO with its code
//! and message, a 500 at ERROR. Nothing a client causes is logged at WARN.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform, forward_ready};
use actix_web::http::{Method, StatusCode};
use futures_util::future::{LocalBoxFuture, Ready, ready};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use shared::{ErrorBody, ErrorCode};
use tracing::Instrument;

use crate::error::{Answered, code_for_status, respond};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: &'static str,
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: &'static str,
    pub route: String,
}

type HistogramFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 50 µs … ~1.6 s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

/// `http_requests_total{method,route,status}` and
/// `http_request_duration_seconds{method,route}`; `route` is the matched pattern (e.g.
/// `/api/v1/leases/{id}`) or `unmatched`.
#[derive(Debug, Clone)]
pub struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: HistogramFamily,
}

impl HttpMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Arc<HttpMetrics> {
        let m = HttpMetrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
        };
        registry.register(
            "http_requests",
            "HTTP requests answered, by route and status",
            m.requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to answer HTTP requests, by route",
            m.duration.clone(),
        );
        Arc::new(m)
    }

    pub fn observe(&self, method: &'static str, route: String, status: u16, secs: f64) {
        self.duration
            .get_or_create(&RouteLabels {
                method,
                route: route.clone(),
            })
            .observe(secs);
        self.requests
            .get_or_create(&RequestLabels {
                method,
                route,
                status,
            })
            .inc();
    }
}

/// The middleware; wrap the whole app with it (outermost, so that it sees every answer).
pub fn observe(metrics: Arc<HttpMetrics>) -> Observe {
    Observe { metrics }
}

#[derive(Clone)]
pub struct Observe {
    metrics: Arc<HttpMetrics>,
}

impl<S, B> Transform<S, ServiceRequest> for Observe
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Transform = ObserveService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, ()>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(ObserveService {
            service: Rc::new(service),
            metrics: self.metrics.clone(),
        }))
    }
}

pub struct ObserveService<S> {
    service: Rc<S>,
    metrics: Arc<HttpMetrics>,
}

fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

impl<S, B> Service<ServiceRequest> for ObserveService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        let start = Instant::now();
        let method = method_label(req.method());
        let span = tracing::info_span!(
            "request",
            method,
            path = %req.path(),
            route = tracing::field::Empty
        );
        let fut = self.service.call(req).instrument(span.clone());
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let res = fut.await?;
            let route = res
                .request()
                .match_pattern()
                .unwrap_or_else(|| "unmatched".to_owned());
            span.record("route", route.as_str());
            let status = res.status();
            let res = if status.as_u16() >= 400 {
                contract_error(res)
            } else {
                res.map_into_left_body()
            };
            let elapsed = start.elapsed();
            log_answer(&res, method, status, elapsed.as_micros() as u64);
            metrics.observe(method, route, status.as_u16(), elapsed.as_secs_f64());
            Ok(res)
        })
    }
}

/// An error answer as it is, if it is a contract error; else the contract's JSON for its
/// status, with the error's own text as the message.
fn contract_error<B: MessageBody + 'static>(
    res: ServiceResponse<B>,
) -> ServiceResponse<EitherBody<B>> {
    if res.response().extensions().get::<Answered>().is_some() {
        return res.map_into_left_body();
    }
    let status = res.status();
    let message = res
        .response()
        .error()
        .map(|e| e.to_string())
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| {
            status
                .canonical_reason()
                .unwrap_or("the request was refused")
                .to_owned()
        });
    let (req, _) = res.into_parts();
    let body = ErrorBody::new(code_for_status(status), message);
    ServiceResponse::new(req, respond(status, &body)).map_into_right_body()
}

fn log_answer<B>(res: &ServiceResponse<B>, method: &'static str, status: StatusCode, micros: u64) {
    let path = res.request().path();
    let status = status.as_u16();
    match res.response().extensions().get::<Answered>() {
        Some(a) if a.code == ErrorCode::InternalError => tracing::error!(
            method,
            path,
            status,
            code = %a.code,
            message = %a.message,
            micros,
            "request failed"
        ),
        Some(a) => tracing::info!(
            method,
            path,
            status,
            code = %a.code,
            message = %a.message,
            micros,
            "request refused"
        ),
        None => tracing::debug!(method, path, status, micros, "answered"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::{App, HttpResponse, test, web};

    #[actix_web::test]
    async fn every_answer_is_counted_by_route_and_errors_are_contract_json() {
        let mut registry = Registry::default();
        let metrics = HttpMetrics::register(&mut registry);
        let app = test::init_service(
            App::new()
                .wrap(observe(metrics))
                .route(
                    "/items/{id}",
                    web::get().to(|| async { HttpResponse::Ok().finish() }),
                )
                .route(
                    "/teapot",
                    web::get().to(|| async { HttpResponse::ImATeapot().body("short and stout") }),
                )
                .route(
                    "/page",
                    web::get().to(|| async {
                        HttpResponse::NotFound()
                            .content_type("text/html; charset=utf-8")
                            .body("<h1>Not here</h1>")
                    }),
                ),
        )
        .await;
        let res =
            test::call_service(&app, test::TestRequest::get().uri("/items/7").to_request()).await;
        assert_eq!(res.status(), 200);
        // A plain-text error from anywhere becomes the contract's JSON.
        let res =
            test::call_service(&app, test::TestRequest::get().uri("/teapot").to_request()).await;
        assert_eq!(res.status(), 418);
        let v: serde_json::Value = test::read_body_json(res).await;
        assert_eq!(v["code"], "VALIDATION_ERROR");
        let res =
            test::call_service(&app, test::TestRequest::get().uri("/nothing").to_request()).await;
        assert_eq!(res.status(), 404);
        let v: serde_json::Value = test::read_body_json(res).await;
        assert_eq!(v["code"], "NOT_FOUND");

        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(
                r#"http_requests_total{method="GET",route="/items/{id}",status="200"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"http_requests_total{method="GET",route="unmatched",status="404"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"http_request_duration_seconds_count{method="GET",route="/teapot"} 1"#),
            "{text}"
        );
    }
}
