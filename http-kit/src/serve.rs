//! Serving hardened against slow and idle clients and against running out of file
//! descriptors.
//!
//! - A request's head must arrive within [`Limits::head_timeout`] (408 and closed after),
//!   its body within [`Limits::body_timeout`] once the head is in ([`body_deadline`]);
//!   an idle keep-alive connection is closed after [`Limits::keep_alive`].
//! - At most [`Limits::max_connections`] connections serve everything; the next
//!   [`Limits::reserve`] serve only what [`ConnectionGate`] calls priority (health,
//!   metrics, operators, the other server of a pair) and answer anything else
//!   `503 UNAVAILABLE` and close; beyond both, connections wait in the listen backlog.
//! - [`raise_nofile_limit`] raises the soft `RLIMIT_NOFILE` towards what the limits need,
//!   within the hard limit, so that the cap is reached before the descriptors run out.
//!
//! One gap is actix-web's: the head timeout covers the first request of a connection
//! only; later requests on a kept-alive connection are bounded by the keep-alive timeout
//! until their first byte, not after it. The connection cap bounds what such a client
//! can hold.

use std::any::Any;
use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use actix_http::{BoxedPayloadStream, Request};
use actix_service::IntoServiceFactory;
use actix_web::body::MessageBody;
use actix_web::dev::{AppConfig, Extensions, Payload, Response, ServiceFactory, ServiceRequest};
use actix_web::error::PayloadError;
use actix_web::http::ConnectionType;
use actix_web::http::header;
use actix_web::web::Bytes;
use actix_web::{HttpMessage, HttpResponse, HttpServer, ResponseError};
use futures_util::Stream;
use shared::ErrorCode;

use crate::error::ApiError;
use crate::middleware::{Before, before};

/// Descriptors kept for everything but client connections: the store's files, the
/// connections this process opens itself (back office, pair partner), logs.
pub const SPARE_FDS: u64 = 256;

/// How a server treats its clients' connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Time to receive a connection's first request head.
    pub head_timeout: Duration,
    /// Time to receive a request's body once its head is in (routes may allow more).
    pub body_timeout: Duration,
    /// An idle kept-alive connection is closed after this.
    pub keep_alive: Duration,
    /// Connections that serve every route.
    pub max_connections: usize,
    /// Connections beyond `max_connections` that serve priority routes only.
    pub reserve: usize,
    /// Worker threads (each its own single-threaded runtime).
    pub workers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            head_timeout: Duration::from_secs(5),
            body_timeout: Duration::from_secs(10),
            keep_alive: Duration::from_secs(15),
            max_connections: 10_000,
            reserve: 64,
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
        }
    }
}

impl Limits {
    /// The descriptors these limits need.
    pub fn fds_needed(&self) -> u64 {
        (self.max_connections + self.reserve) as u64 + SPARE_FDS
    }

    /// The most connections `nofile` descriptors allow for.
    pub fn max_connections_for(&self, nofile: u64) -> usize {
        nofile.saturating_sub(SPARE_FDS + self.reserve as u64) as usize
    }

    /// Applies the timeouts, the worker count and the connection cap to `server`, and
    /// counts its connections in `gate`.
    pub fn apply<F, I, S, B>(
        &self,
        server: HttpServer<F, I, S, B>,
        gate: &Arc<ConnectionGate>,
    ) -> HttpServer<F, I, S, B>
    where
        F: Fn() -> I + Send + Clone + 'static,
        I: IntoServiceFactory<S, Request>,
        S: ServiceFactory<Request, Config = AppConfig> + 'static,
        S::Error: Into<actix_web::Error> + 'static,
        S::InitError: fmt::Debug,
        S::Response: Into<Response<B>> + 'static,
        B: MessageBody + 'static,
    {
        let workers = self.workers.max(1);
        // actix-web caps connections per worker; the gate counts them all.
        let per_worker = (self.max_connections + self.reserve).div_ceil(workers);
        server
            .workers(workers)
            .tcp_nodelay(true)
            .client_request_timeout(self.head_timeout)
            .client_disconnect_timeout(Duration::from_secs(1))
            .tls_handshake_timeout(self.head_timeout)
            .keep_alive(self.keep_alive)
            .max_connections(per_worker.max(1))
            .shutdown_timeout(5)
            .on_connect(gate.on_connect())
    }
}

/// Raises the soft `RLIMIT_NOFILE` to `want` (within the hard limit) and returns the
/// soft limit now in force.
pub fn raise_nofile_limit(want: u64) -> io::Result<u64> {
    rlimit::increase_nofile_limit(want)
}

/// Counts open connections; those opened beyond the cap serve priority routes only.
pub struct ConnectionGate {
    open: AtomicUsize,
    max: usize,
    priority: fn(&str) -> bool,
}

impl fmt::Debug for ConnectionGate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionGate")
            .field("open", &self.open())
            .field("max", &self.max)
            .finish()
    }
}

/// Held in a connection's extensions while it is open.
struct Slot {
    gate: Arc<ConnectionGate>,
    /// Opened beyond the cap: priority routes only.
    reserve: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.gate.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ConnectionGate {
    /// `max` connections serve everything; `priority(path)` says what the others serve.
    pub fn new(max: usize, priority: fn(&str) -> bool) -> Arc<ConnectionGate> {
        Arc::new(ConnectionGate {
            open: AtomicUsize::new(0),
            max,
            priority,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    fn on_connect(
        self: &Arc<Self>,
    ) -> impl Fn(&dyn Any, &mut Extensions) + Send + Sync + 'static + use<> {
        let gate = self.clone();
        move |_io, ext| {
            let n = gate.open.fetch_add(1, Ordering::Relaxed) + 1;
            ext.insert(Slot {
                gate: gate.clone(),
                reserve: n > gate.max,
            });
        }
    }

    /// The middleware: on a reserve connection, anything but a priority route is
    /// answered `503 UNAVAILABLE` (`Retry-After: 1`) and the connection closed.
    pub fn middleware(
        self: &Arc<Self>,
    ) -> Before<impl Fn(&mut ServiceRequest) -> Option<HttpResponse> + 'static + use<>> {
        let priority = self.priority;
        before(move |req| {
            let reserve = req.conn_data::<Slot>().is_some_and(|s| s.reserve);
            if !reserve || priority(req.path()) {
                return None;
            }
            let mut res = ApiError::new(
                ErrorCode::Unavailable,
                "the server is at its connection limit; retry shortly",
            )
            .with_retry_after(1)
            .error_response();
            res.head_mut().set_connection_type(ConnectionType::Close);
            Some(res)
        })
    }
}

/// Middleware: a request's body must arrive within `limit` of its head, else the read
/// fails (`408`, `VALIDATION_ERROR` on `body`; see [`crate::extract::payload_rejection`]).
pub fn body_deadline(
    limit: Duration,
) -> Before<impl Fn(&mut ServiceRequest) -> Option<HttpResponse> + 'static> {
    before(move |req| {
        if has_body(req) {
            let inner = req.take_payload();
            let stream: BoxedPayloadStream = Box::pin(Deadline {
                inner,
                sleep: Box::pin(tokio::time::sleep(limit)),
                limit,
                done: false,
            });
            req.set_payload(Payload::from(stream));
        }
        None
    })
}

fn has_body(req: &ServiceRequest) -> bool {
    let h = req.headers();
    h.contains_key(header::TRANSFER_ENCODING)
        || h.get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0")
}

struct Deadline {
    inner: Payload,
    sleep: Pin<Box<tokio::time::Sleep>>,
    limit: Duration,
    done: bool,
}

impl Stream for Deadline {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Poll::Ready(item) = Pin::new(&mut self.inner).poll_next(cx) {
            return Poll::Ready(item);
        }
        if self.sleep.as_mut().poll(cx).is_ready() {
            self.done = true;
            let msg = format!(
                "the body was not received within {} s of the request's head",
                self.limit.as_secs_f64()
            );
            return Poll::Ready(Some(Err(PayloadError::Io(io::Error::new(
                io::ErrorKind::TimedOut,
                msg,
            )))));
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::StatusCode;
    use actix_web::test as atest;
    use actix_web::{App, HttpResponse, web};

    #[test]
    fn limits_leave_descriptors_for_everything_else() {
        let l = Limits {
            max_connections: 1000,
            reserve: 10,
            ..Limits::default()
        };
        assert_eq!(l.fds_needed(), 1010 + SPARE_FDS);
        assert_eq!(l.max_connections_for(1010 + SPARE_FDS), 1000);
        assert_eq!(l.max_connections_for(10), 0);
        assert!(raise_nofile_limit(64).unwrap() >= 64);
    }

    #[actix_web::test]
    async fn a_body_slower_than_its_deadline_is_refused_with_408() {
        let app = atest::init_service(
            App::new()
                .app_data(crate::extract::json_config(1024))
                .wrap(body_deadline(Duration::from_millis(100)))
                .route(
                    "/echo",
                    web::post().to(|v: web::Json<serde_json::Value>| async move {
                        HttpResponse::Ok().json(v.into_inner())
                    }),
                ),
        )
        .await;
        // A body that never finishes: a stream that stays pending.
        let (_tx, rx) = tokio::sync::mpsc::unbounded_channel::<Result<Bytes, PayloadError>>();
        let stream = tokio_stream_from(rx);
        let (req, _) = atest::TestRequest::post()
            .uri("/echo")
            .insert_header((header::CONTENT_TYPE, "application/json"))
            .insert_header((header::CONTENT_LENGTH, "10"))
            .to_request()
            .replace_payload(Payload::from(stream));
        let res = atest::call_service(&app, req).await;
        assert_eq!(res.status(), StatusCode::REQUEST_TIMEOUT);
        let v: serde_json::Value = atest::read_body_json(res).await;
        assert_eq!(v["code"], "VALIDATION_ERROR");
        assert_eq!(v["field"], "body");

        let res = atest::call_service(
            &app,
            atest::TestRequest::post()
                .uri("/echo")
                .set_json(serde_json::json!({"a": 1}))
                .to_request(),
        )
        .await;
        assert_eq!(res.status(), 200);
    }

    fn tokio_stream_from(
        mut rx: tokio::sync::mpsc::UnboundedReceiver<Result<Bytes, PayloadError>>,
    ) -> BoxedPayloadStream {
        Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
    }
}
