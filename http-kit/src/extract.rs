//! Extractor configurations whose rejections are contract errors: a body that is not
//! JSON, does not match the expected fields, or is over the route's limit (413), a path
//! or query that does not parse; all `VALIDATION_ERROR`, none reaching a handler.
//!
//! [`Json`] carries its route's limit in its type, so that each handler says how large
//! its body may be (`Json<CheckoutRequest, 4096>`); for `web::Json`, register
//! [`json_config`] as app data (`App::app_data`) with the route's limit on the resource
//! or scope where it differs.

use std::net::IpAddr;

use actix_web::dev::Payload;
use actix_web::error::{JsonPayloadError, PayloadError};
use actix_web::http::StatusCode;
use actix_web::{FromRequest, HttpRequest, web};
use futures_util::StreamExt;
use futures_util::future::LocalBoxFuture;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON body of at most `LIMIT` bytes (`Content-Type: application/json`), refused with
/// the contract's errors: 413 over the limit, 400 when it is not JSON or not the
/// expected fields, 408 when it is too slow (see [`crate::serve::body_deadline`]).
#[derive(Debug)]
pub struct Json<T, const LIMIT: usize>(pub T);

impl<T: DeserializeOwned + 'static, const LIMIT: usize> FromRequest for Json<T, LIMIT> {
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let body = web::JsonBody::<T>::new(req, payload, None, true).limit(LIMIT);
        Box::pin(async move {
            body.await
                .map(Json)
                .map_err(|e| json_rejection(&e, LIMIT).into())
        })
    }
}

/// JSON bodies of at most `limit` bytes, `Content-Type: application/json` required.
pub fn json_config(limit: usize) -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(limit)
        .content_type_required(true)
        .error_handler(move |err, _req| json_rejection(&err, limit).into())
}

/// Bodies read as bytes or text (`web::Bytes`, `String`) of at most `limit` bytes.
pub fn payload_config(limit: usize) -> web::PayloadConfig {
    web::PayloadConfig::new(limit)
}

pub fn path_config() -> web::PathConfig {
    web::PathConfig::default().error_handler(|err, _req| {
        ApiError::validation("path", format!("the path does not parse: {err}")).into()
    })
}

pub fn query_config() -> web::QueryConfig {
    web::QueryConfig::default().error_handler(|err, _req| {
        ApiError::validation("query", format!("the query string does not parse: {err}")).into()
    })
}

/// The address the connection comes from (the peer's, not a header a client could set).
pub fn client_ip(req: &HttpRequest) -> Option<IpAddr> {
    req.peer_addr().map(|a| a.ip())
}

/// Reads a body of at most `limit` bytes by hand, for a handler that must look at the
/// request (its token, say) before it takes the body; refused as [`payload_rejection`]
/// says.
pub async fn read_body(mut payload: web::Payload, limit: usize) -> Result<web::BytesMut, ApiError> {
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| payload_rejection(&e, limit))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::too_large(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A JSON body read with [`read_body`], parsed; refused as [`json_rejection`] says.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| json_rejection(&JsonPayloadError::Deserialize(e), 0))
}

/// The contract error for a JSON body that was refused.
pub fn json_rejection(err: &JsonPayloadError, limit: usize) -> ApiError {
    match err {
        JsonPayloadError::OverflowKnownLength { .. } | JsonPayloadError::Overflow { .. } => {
            ApiError::too_large(limit)
        }
        JsonPayloadError::ContentType => ApiError::validation(
            "body",
            "send the body as JSON with `Content-Type: application/json`",
        ),
        JsonPayloadError::Deserialize(e) if e.is_data() => ApiError::validation(
            "body",
            format!("the body does not match the expected fields: {e}"),
        ),
        JsonPayloadError::Deserialize(e) => {
            ApiError::validation("body", format!("the body is not valid JSON: {e}"))
        }
        JsonPayloadError::Payload(e) => payload_rejection(e, limit),
        other => ApiError::validation("body", other.to_string()),
    }
}

/// The contract error for a body that could not be read: over the limit (413), too slow
/// ([`crate::serve::body_deadline`], 408), or cut short.
pub fn payload_rejection(err: &PayloadError, limit: usize) -> ApiError {
    match err {
        PayloadError::Overflow => ApiError::too_large(limit),
        PayloadError::Io(e) if e.kind() == std::io::ErrorKind::TimedOut => {
            ApiError::validation("body", e.to_string()).with_status(StatusCode::REQUEST_TIMEOUT)
        }
        other => ApiError::validation("body", format!("the body could not be read: {other}")),
    }
}
