//! Errors at the edge: [`AppError`] as the contract's JSON with its HTTP status (and
//! `Retry-After` when it says when to retry), extractor configurations whose rejections are
//! `VALIDATION_ERROR`s naming the part of the request, and the answers for paths and
//! methods that do not exist.

use actix_web::dev::ResourceDef;
use actix_web::http::{Method, StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use shared::{ErrorBody, ErrorCode};

use super::request::MAX_BODY;
use crate::error::AppError;

impl ResponseError for AppError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.code().http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        let mut r = HttpResponse::build(self.status_code());
        if let Some(s) = self.retry_after() {
            r.insert_header((header::RETRY_AFTER, s.to_string()));
        }
        r.json(self.body())
    }
}

pub fn json_config() -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(MAX_BODY)
        .error_handler(|err, _req| {
            let msg = match &err {
                actix_web::error::JsonPayloadError::OverflowKnownLength { .. }
                | actix_web::error::JsonPayloadError::Overflow { .. } => {
                    format!("the body is larger than {MAX_BODY} bytes")
                }
                actix_web::error::JsonPayloadError::ContentType => {
                    "send the body as application/json".to_owned()
                }
                other => format!("malformed JSON body: {other}"),
            };
            AppError::validation("body", msg).into()
        })
}

pub fn path_config() -> web::PathConfig {
    web::PathConfig::default()
        .error_handler(|err, _req| AppError::validation("path", err.to_string()).into())
}

pub fn query_config() -> web::QueryConfig {
    web::QueryConfig::default()
        .error_handler(|err, _req| AppError::validation("query", err.to_string()).into())
}

/// The paths and methods of the API, from its OpenAPI document: what tells a wrong method
/// (405) from a path that does not exist (404).
#[derive(Debug, Default)]
pub struct KnownRoutes(Vec<(ResourceDef, Vec<Method>)>);

impl KnownRoutes {
    pub fn new(routes: impl IntoIterator<Item = (String, Vec<Method>)>) -> KnownRoutes {
        KnownRoutes(
            routes
                .into_iter()
                .map(|(path, methods)| (ResourceDef::new(path), methods))
                .collect(),
        )
    }

    fn methods_of(&self, path: &str) -> Option<&[Method]> {
        self.0
            .iter()
            .find(|(def, _)| def.is_match(path))
            .map(|(_, m)| m.as_slice())
    }
}

/// A method the path does not have: 405 with `Allow`, as the contract's JSON.
#[derive(Debug)]
pub struct MethodNotAllowed {
    allowed: Vec<Method>,
    body: ErrorBody,
}

impl std::fmt::Display for MethodNotAllowed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.body.fmt(f)
    }
}

impl ResponseError for MethodNotAllowed {
    fn status_code(&self) -> StatusCode {
        StatusCode::METHOD_NOT_ALLOWED
    }

    fn error_response(&self) -> HttpResponse {
        let allow: Vec<&str> = self.allowed.iter().map(Method::as_str).collect();
        HttpResponse::MethodNotAllowed()
            .insert_header((header::ALLOW, allow.join(", ")))
            .json(&self.body)
    }
}

/// What answers a request no route took.
pub async fn fallback(
    req: HttpRequest,
    known: Option<web::Data<KnownRoutes>>,
) -> Result<HttpResponse, actix_web::Error> {
    if let Some(allowed) = known.as_ref().and_then(|k| k.methods_of(req.path())) {
        let body = ErrorBody::new(
            ErrorCode::ValidationError,
            format!(
                "{} is not allowed on {}; use {}",
                req.method(),
                req.path(),
                allowed
                    .iter()
                    .map(Method::as_str)
                    .collect::<Vec<_>>()
                    .join(" or ")
            ),
        );
        return Err(MethodNotAllowed {
            allowed: allowed.to_vec(),
            body,
        }
        .into());
    }
    Err(AppError::new(
        ErrorCode::NotFound,
        format!("no such endpoint: {} {}", req.method(), req.path()),
    )
    .into())
}
