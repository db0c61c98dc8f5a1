//! What handlers read from a request besides their extractors: the bearer token, the
//! client's address, and a body read by hand (where authentication must come first).

use std::net::IpAddr;

use actix_web::{HttpRequest, web};

use crate::error::{AppError, AppResult};

/// Largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;

/// The bearer token of a request, if any.
pub fn bearer(req: &HttpRequest) -> Option<String> {
    let h = req.headers().get(actix_web::http::header::AUTHORIZATION)?;
    let s = h.to_str().ok()?;
    let t = s
        .strip_prefix("Bearer ")
        .or_else(|| s.strip_prefix("bearer "))?;
    let t = t.trim();
    (!t.is_empty() && t.len() <= 512).then(|| t.to_owned())
}

/// The address the connection comes from (not a header a client could set).
pub fn client_ip(req: &HttpRequest) -> Option<IpAddr> {
    req.peer_addr().map(|a| a.ip())
}

/// Reads a body of at most [`MAX_BODY`] bytes.
pub async fn read_body(mut payload: web::Payload) -> AppResult<web::BytesMut> {
    use futures_util::StreamExt;
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk
            .map_err(|e| AppError::validation("body", format!("cannot read the body: {e}")))?;
        if body.len() + chunk.len() > MAX_BODY {
            return Err(AppError::validation(
                "body",
                format!("the body is larger than {MAX_BODY} bytes"),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Parses a JSON body taken as bytes.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> AppResult<T> {
    serde_json::from_slice(body)
        .map_err(|e| AppError::validation("body", format!("malformed JSON body: {e}")))
}
