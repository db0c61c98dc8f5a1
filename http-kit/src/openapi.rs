//! The API documented from its code (utoipa): the error answers of an operation, and the
//! router's fallback, which answers from the document — `404 NOT_FOUND` for a path no
//! operation has, `405` (`NOT_FOUND`, with `Allow`) for a method the path does not take.
//!
//! An operation lists the error codes it can return with [`error_responses!`]:
//!
//! ```ignore
//! http_kit::error_responses!(pub CheckoutErrors = [
//!     http_kit::openapi::err(ErrorCode::NoLicenseAvailable, "every seat is taken"),
//!     http_kit::openapi::too_large(4096),
//! ]);
//! #[utoipa::path(responses((status = 201, body = Lease), CheckoutErrors))]
//! ```
//!
//! Each status becomes one response whose description names each code and when it is
//! sent, with one example per code; the body is the `ErrorBody` schema, which the
//! document must list among its components.

use std::collections::BTreeMap;
use std::sync::Arc;

use actix_web::dev::ResourceDef;
use actix_web::http::{Method, StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use shared::{ErrorBody, ErrorCode};
pub use utoipa;
use utoipa::openapi::example::ExampleBuilder;
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};

use crate::error::{ApiError, status_of};

/// One error answer an operation can give: its status, code, and when.
#[derive(Debug, Clone)]
pub struct ErrDoc {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub when: String,
}

/// `code` with its own status, sent `when`.
pub fn err(code: ErrorCode, when: impl Into<String>) -> ErrDoc {
    ErrDoc {
        status: status_of(code),
        code,
        when: when.into(),
    }
}

/// `code` with another status than its own (413 and 408 are `VALIDATION_ERROR`s).
pub fn err_with(status: StatusCode, code: ErrorCode, when: impl Into<String>) -> ErrDoc {
    ErrDoc {
        status,
        code,
        when: when.into(),
    }
}

/// 413 for a body over `limit` bytes.
pub fn too_large(limit: usize) -> ErrDoc {
    err_with(
        StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::ValidationError,
        format!("the body is larger than {limit} bytes"),
    )
}

/// 408 for a body that did not arrive in time.
pub fn too_slow() -> ErrDoc {
    err_with(
        StatusCode::REQUEST_TIMEOUT,
        ErrorCode::ValidationError,
        "the body did not arrive within the server's body timeout",
    )
}

/// One error answer or several, for [`error_responses!`].
pub trait ErrDocs {
    fn into_docs(self) -> Vec<ErrDoc>;
}

impl ErrDocs for ErrDoc {
    fn into_docs(self) -> Vec<ErrDoc> {
        vec![self]
    }
}

impl<const N: usize> ErrDocs for [ErrDoc; N] {
    fn into_docs(self) -> Vec<ErrDoc> {
        self.into()
    }
}

/// The responses of `docs`, one per status, for `IntoResponses`.
pub fn error_responses(docs: &[ErrDoc]) -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
    let mut by_status: BTreeMap<u16, Vec<&ErrDoc>> = BTreeMap::new();
    for d in docs {
        by_status.entry(d.status.as_u16()).or_default().push(d);
    }
    by_status
        .into_iter()
        .map(|(status, docs)| {
            let description = docs
                .iter()
                .map(|d| format!("`{}`: {}", d.code, d.when))
                .collect::<Vec<_>>()
                .join("; ");
            let examples = docs.iter().map(|d| {
                let body = ErrorBody::new(d.code, d.when.clone());
                let value = serde_json::to_value(&body).unwrap_or_default();
                (
                    d.code.as_str().to_owned(),
                    ExampleBuilder::new().value(Some(value)).build(),
                )
            });
            let content = ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .examples_from_iter(examples)
                .build();
            let response = ResponseBuilder::new()
                .description(description)
                .content("application/json", content)
                .build();
            (status.to_string(), RefOr::T(response))
        })
        .collect()
}

/// A type listing the error answers of an operation, for `responses(...)` in
/// `#[utoipa::path]`; each item is an [`ErrDoc`] or an array of them.
#[macro_export]
macro_rules! error_responses {
    ($vis:vis $name:ident = [$($doc:expr),+ $(,)?]) => {
        $vis struct $name;
        impl $crate::openapi::utoipa::IntoResponses for $name {
            fn responses() -> ::std::collections::BTreeMap<
                ::std::string::String,
                $crate::openapi::utoipa::openapi::RefOr<$crate::openapi::utoipa::openapi::Response>,
            > {
                let mut docs = ::std::vec::Vec::new();
                $(docs.extend($crate::openapi::ErrDocs::into_docs($doc));)+
                $crate::openapi::error_responses(&docs)
            }
        }
    };
}

/// The paths and methods of a document, to answer what the router does not match.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<(ResourceDef, Vec<Method>)>,
}

const METHODS: [&str; 7] = ["get", "put", "post", "delete", "patch", "head", "options"];

impl RouteTable {
    /// From a document (as JSON): its `paths` and each path's operations.
    pub fn from_document(doc: &serde_json::Value) -> RouteTable {
        let routes = doc["paths"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(path, item)| {
                let methods = METHODS
                    .iter()
                    .filter(|m| item.get(**m).is_some())
                    .filter_map(|m| Method::from_bytes(m.to_ascii_uppercase().as_bytes()).ok())
                    .collect();
                (ResourceDef::new(path.as_str()), methods)
            })
            .collect();
        RouteTable { routes }
    }

    /// The methods documented for `path`, if any operation has it.
    pub fn methods(&self, path: &str) -> Option<&[Method]> {
        self.routes
            .iter()
            .find(|(def, _)| def.is_match(path))
            .map(|(_, m)| m.as_slice())
    }

    /// Every (method, path template) documented.
    pub fn operations(&self) -> impl Iterator<Item = (&Method, &str)> {
        self.routes
            .iter()
            .flat_map(|(def, ms)| ms.iter().map(move |m| (m, def.pattern().unwrap_or(""))))
    }

    /// The answer to a request the router did not match.
    pub fn fallback(&self, req: &HttpRequest) -> HttpResponse {
        match self.methods(req.path()) {
            Some(methods) => {
                let allow = methods
                    .iter()
                    .map(Method::as_str)
                    .collect::<Vec<_>>()
                    .join(", ");
                let mut res = ApiError::new(
                    ErrorCode::NotFound,
                    format!(
                        "{} is not allowed on {}; it takes {allow}",
                        req.method(),
                        req.path()
                    ),
                )
                .with_status(StatusCode::METHOD_NOT_ALLOWED)
                .error_response();
                if let Ok(v) = header::HeaderValue::from_str(&allow) {
                    res.headers_mut().insert(header::ALLOW, v);
                }
                res
            }
            None => ApiError::new(
                ErrorCode::NotFound,
                format!("no endpoint {} {}", req.method(), req.path()),
            )
            .error_response(),
        }
    }
}

/// The app's default service: [`RouteTable::fallback`].
pub fn fallback(table: Arc<RouteTable>) -> actix_web::Route {
    actix_web::web::to(move |req: HttpRequest| {
        let res = table.fallback(&req);
        async move { res }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn errors_are_grouped_by_status_with_an_example_per_code() {
        let r = error_responses(&[
            err(ErrorCode::NotServing, "a standby server"),
            err(ErrorCode::Unavailable, "taking changes back"),
            too_large(4096),
        ]);
        assert_eq!(r.keys().collect::<Vec<_>>(), ["413", "503"]);
        let v = serde_json::to_value(&r["503"]).unwrap();
        assert_eq!(
            v["description"],
            "`NOT_SERVING`: a standby server; `UNAVAILABLE`: taking changes back"
        );
        let ex = &v["content"]["application/json"]["examples"];
        assert_eq!(ex["NOT_SERVING"]["value"]["code"], "NOT_SERVING");
        assert_eq!(
            v["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/ErrorBody"
        );
    }

    #[test]
    fn the_fallback_tells_an_unknown_path_from_a_wrong_method() {
        let doc = serde_json::json!({"paths": {
            "/api/v1/leases/{id}": {"put": {}, "delete": {}},
            "/healthz": {"get": {}},
        }});
        let t = RouteTable::from_document(&doc);
        assert_eq!(t.operations().count(), 3);
        let res = t.fallback(
            &TestRequest::get()
                .uri("/api/v1/leases/abc")
                .to_http_request(),
        );
        assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(res.headers().get(header::ALLOW).unwrap(), "PUT, DELETE");
        let res = t.fallback(&TestRequest::get().uri("/api/v1/nothing").to_http_request());
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
    }
}
