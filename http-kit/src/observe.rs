//! The request middleware: a tracing span per request, a latency observation and a
//! count by matched route (Prometheus), one log line per answer, and the contract's
//! error JSON for any error answer that was not one already (pages for people,
//! `text/html`, stay as they are).
//!
//! Log levels: a 2xx or 3xx answer at DEBUG; a refusal (4xx, and 5xx other than 500 —
//! a standby server's `NOT_SERVING`, a full queue's `UNAVAILABLE`) at INFO with its code
//! and message, or at DEBUG for the codes a service calls quiet; a 500, or any answer
//! that carries the cause of a failure of ours (a failing disk), at ERROR with the cause.
//! Nothing a client causes is logged at WARN. The line is logged in the request's span,
//! which carries the method and the path (and whatever the handlers recorded in it).

use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform, forward_ready};
use actix_web::http::{Method, header};
use futures_util::future::{LocalBoxFuture, Ready, ready};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use shared::{ErrorBody, ErrorCode};
use tracing::{Instrument, Span};

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

/// The span every request runs in: `request{method path id route}` (`route` recorded once
/// the router matched). A service that wants more fields (who asked, say) gives its own
/// with [`Observe::span`].
pub fn request_span(req: &ServiceRequest, id: u64) -> Span {
    tracing::info_span!(
        "request",
        method = method_label(req.method()),
        path = %req.path(),
        id,
        route = tracing::field::Empty,
    )
}

/// The middleware; wrap the whole app with it (outermost, so that it sees every answer).
pub fn observe(metrics: Arc<HttpMetrics>) -> Observe {
    Observe {
        metrics,
        span: request_span,
        quiet: &[],
    }
}

/// See [`observe`].
#[derive(Clone)]
pub struct Observe {
    metrics: Arc<HttpMetrics>,
    span: fn(&ServiceRequest, u64) -> Span,
    quiet: &'static [ErrorCode],
}

impl Observe {
    /// Each request runs in the span `f` makes of it and its number (declare `route` empty
    /// in it to have the matched route recorded; handlers record what else it declares).
    pub fn span(mut self, f: fn(&ServiceRequest, u64) -> Span) -> Observe {
        self.span = f;
        self
    }

    /// Refusals with these codes are logged at DEBUG rather than INFO (e.g. wrong
    /// passwords, which a throttle reports once per burst anyway).
    pub fn quiet(mut self, codes: &'static [ErrorCode]) -> Observe {
        self.quiet = codes;
        self
    }
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
            observe: self.clone(),
        }))
    }
}

pub struct ObserveService<S> {
    service: Rc<S>,
    observe: Observe,
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

/// Numbers requests for their spans.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

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
        let span = (self.observe.span)(&req, NEXT_ID.fetch_add(1, Ordering::Relaxed));
        let fut = self.service.call(req).instrument(span.clone());
        let observe = self.observe.clone();
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
            span.in_scope(|| log_answer(&res, observe.quiet, elapsed.as_micros() as u64));
            observe
                .metrics
                .observe(method, route, status.as_u16(), elapsed.as_secs_f64());
            Ok(res)
        })
    }
}

/// Whether an answer is a page for people (HTML), which keeps its own error pages.
fn is_page<B>(res: &ServiceResponse<B>) -> bool {
    res.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html"))
}

/// An error answer as it is, if it is a contract error or a page for people; else the
/// contract's JSON for its status, with the error's own text as the message.
fn contract_error<B: MessageBody + 'static>(
    res: ServiceResponse<B>,
) -> ServiceResponse<EitherBody<B>> {
    if res.response().extensions().get::<Answered>().is_some() || is_page(&res) {
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

/// The one line an answer is logged with, in the request's span (which names the method
/// and path): a failure of ours at ERROR with its cause, a refusal at INFO with its code
/// and message once (DEBUG for the `quiet` codes), anything else at DEBUG.
fn log_answer<B>(res: &ServiceResponse<B>, quiet: &[ErrorCode], micros: u64) {
    let status = res.status().as_u16();
    match res.response().extensions().get::<Answered>() {
        Some(a) if a.cause.is_some() || a.code == ErrorCode::InternalError => tracing::error!(
            status,
            code = %a.code,
            message = %a.message,
            cause = a.cause.as_deref().unwrap_or("-"),
            micros,
            "request failed"
        ),
        Some(a) if quiet.contains(&a.code) => tracing::debug!(
            status,
            code = %a.code,
            message = %a.message,
            micros,
            "request refused"
        ),
        Some(a) => tracing::info!(
            status,
            code = %a.code,
            message = %a.message,
            micros,
            "request refused"
        ),
        // A page for people: its error's own text.
        None if status >= 500 => {
            let cause = res.response().error().map(ToString::to_string);
            tracing::error!(
                status,
                cause = cause.as_deref().unwrap_or("-"),
                micros,
                "request failed"
            )
        }
        None if status >= 400 => {
            let message = res.response().error().map(ToString::to_string);
            tracing::info!(
                status,
                message = message.as_deref().unwrap_or("-"),
                micros,
                "request refused"
            )
        }
        None => tracing::debug!(status, micros, "answered"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::{App, HttpResponse, test, web};

    /// The tests that answer through `observe` run one at a time: tracing caches each log
    /// line's interest globally, and a test that met a line first on a thread with no
    /// subscriber could cache "never" for the line another test captures.
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    #[actix_web::test]
    async fn every_answer_is_counted_by_route_and_errors_are_contract_json() {
        let _one = ONE_AT_A_TIME.lock().await;
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
        // A page for people keeps its HTML.
        let res =
            test::call_service(&app, test::TestRequest::get().uri("/page").to_request()).await;
        assert_eq!(res.status(), 404);
        let body = test::read_body(res).await;
        assert_eq!(body, "<h1>Not here</h1>");

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

    /// What the log lines are written to in a test.
    #[derive(Clone, Default)]
    struct Lines(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn span_with_who(req: &ServiceRequest, id: u64) -> Span {
        tracing::info_span!("request", path = %req.path(), id, who = tracing::field::Empty)
    }

    #[actix_web::test]
    async fn each_answer_is_one_line_in_its_span_at_the_level_of_what_happened() {
        let _one = ONE_AT_A_TIME.lock().await;
        use crate::error::ApiError;
        use actix_web::ResponseError;
        let lines = Lines::default();
        let out = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || out.clone())
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        // Lines met before this subscriber existed had their interest cached without it.
        tracing::callsite::rebuild_interest_cache();
        let mut registry = Registry::default();
        let app = test::init_service(
            App::new()
                .wrap(
                    observe(HttpMetrics::register(&mut registry))
                        .span(span_with_who)
                        .quiet(&[ErrorCode::Unauthorized]),
                )
                .route(
                    "/fail",
                    web::get().to(|| async {
                        Span::current().record("who", "acme");
                        let mut res = ApiError::new(ErrorCode::Unavailable, "cannot store now")
                            .error_response();
                        crate::error::note_cause(&mut res, "disk full");
                        res
                    }),
                )
                .route(
                    "/refuse",
                    web::get().to(|| async {
                        Err::<HttpResponse, _>(ApiError::new(ErrorCode::Forbidden, "not yours"))
                    }),
                )
                .route(
                    "/quiet",
                    web::get().to(|| async {
                        Err::<HttpResponse, _>(ApiError::new(ErrorCode::Unauthorized, "who?"))
                    }),
                ),
        )
        .await;
        for path in ["/fail", "/refuse", "/quiet"] {
            test::call_service(&app, test::TestRequest::get().uri(path).to_request()).await;
        }
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        let line = |path: &str| {
            let found: Vec<&str> = text
                .lines()
                .filter(|l| l.contains(&format!("path={path}")))
                .collect();
            assert_eq!(found.len(), 1, "{text}");
            found[0].to_owned()
        };
        let fail = line("/fail");
        assert!(
            fail.contains("ERROR") && fail.contains("cause=\"disk full\""),
            "{fail}"
        );
        assert!(
            fail.contains("who=\"acme\"") || fail.contains("who=acme"),
            "{fail}"
        );
        let refuse = line("/refuse");
        assert!(
            refuse.contains(" INFO ") && refuse.contains("FORBIDDEN"),
            "{refuse}"
        );
        assert_eq!(refuse.matches("not yours").count(), 1, "{refuse}");
        let quiet = line("/quiet");
        assert!(quiet.contains("DEBUG"), "{quiet}");
    }
}
