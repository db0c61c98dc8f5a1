//! Every request runs in a span, `request{method path id}`, which handlers fill in with who
//! asked (`account`, `hostid`) and which goes with the request's storage work, so that what
//! the storage logs is logged with its request. When the request ends, one line says how:
//!
//! - a failure of ours (5xx) at ERROR, with its cause (which the client never sees);
//! - a refusal (4xx) at INFO with its code and message, once; refused sign-ins and
//!   throttling at DEBUG (the throttle reports each burst once at WARN);
//! - anything else, a signed-out portal page's redirect to sign-in included, at DEBUG.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::middleware::Next;
use tracing::Instrument;
use tracing::field::Empty;

use crate::error::AppError;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

pub async fn trace(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!(
        "request",
        method = %req.method(),
        path = %req.path(),
        id,
        account = Empty,
        hostid = Empty,
    );
    let start = Instant::now();
    let res = next.call(req).instrument(span.clone()).await;
    let elapsed_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
    span.in_scope(|| match &res {
        Ok(r) => outcome(r.status(), r.response().error(), elapsed_ms),
        Err(e) => outcome(e.as_response_error().status_code(), Some(e), elapsed_ms),
    });
    res
}

fn outcome(status: StatusCode, error: Option<&actix_web::Error>, elapsed_ms: u64) {
    let app = error.and_then(|e| e.as_error::<AppError>());
    let code = app.map_or("-", |e| e.code().as_str());
    let detail = match (app, error) {
        (Some(a), _) => a.message().to_owned(),
        (None, Some(e)) => e.to_string(),
        (None, None) => String::new(),
    };
    let status = status.as_u16();
    match status {
        500.. => {
            let cause = app.and_then(AppError::cause).unwrap_or(&detail);
            tracing::error!(status, code, cause, elapsed_ms, "request failed");
        }
        401 | 429 if error.is_some() => {
            tracing::debug!(status, code, detail, elapsed_ms, "request refused");
        }
        400..=499 if error.is_some() => {
            tracing::info!(status, code, detail, elapsed_ms, "request refused");
        }
        _ => tracing::debug!(status, elapsed_ms, "answered"),
    }
}
