//! The app in-process: its document against its routes, its bodies and units, an outside
//! validator's verdict on it, and the order of checks on guarded routes.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use actix_web::dev::{Service as _, ServiceResponse};
use actix_web::test::{self as atest, TestRequest};
use http_kit::observe::HttpMetrics;
use http_kit::openapi::RouteTable;
use http_kit::serve::ConnectionGate;
use serde_json::Value;
use shared::secret::Secret;

use super::*;
use crate::service::peer::Batch;
use crate::service::tests::service;

const ADMIN: &str = "the full admin token";
const READ_ONLY: &str = "the read-only admin token";
const PAIR: &str = "pair-token";

async fn test_app(
    dir: &std::path::Path,
) -> impl actix_web::dev::Service<
    actix_http::Request,
    Response = ServiceResponse<impl MessageBody>,
    Error = actix_web::Error,
> {
    let svc = service(dir, 3).await;
    svc.identity().pair_token().set(PAIR);
    let mut registry = prometheus_client::registry::Registry::default();
    let ctx = AppContext::new(
        svc,
        crate::access::OperatorAccess::new(
            &Secret::new(ADMIN),
            Some(&Secret::new(READ_ONLY)),
            crate::access::AdminAccess::Full,
        ),
        Arc::new(crate::stats::UsageStats::in_memory(Duration::from_secs(
            86_400,
        ))),
        HttpMetrics::register(&mut registry),
        ConnectionGate::new(100, is_priority),
        Duration::from_secs(10),
    );
    atest::init_service(app(ctx)).await
}

async fn document(
    app: &impl actix_web::dev::Service<
        actix_http::Request,
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
    >,
) -> Value {
    let req = TestRequest::get().uri("/api/v1/openapi.json").to_request();
    atest::call_and_read_body_json(app, req).await
}

/// A request for a documented operation, path parameters filled in, with the token its
/// scope needs and an (empty) JSON body where it takes one.
fn request(method: &Method, template: &str) -> TestRequest {
    let path = template
        .replace("{id}", &Uuid::new_v4().to_string())
        .replace("{feature}", "cad");
    let mut req = TestRequest::default().method(method.clone()).uri(&path);
    if path.starts_with("/api/v1/admin/") {
        req = req.insert_header(("authorization", format!("Bearer {ADMIN}")));
    } else if path.starts_with("/api/v1/pair/") || path.starts_with("/api/v1/member/") {
        req = req.insert_header(("authorization", format!("Bearer {PAIR}")));
    }
    if matches!(*method, Method::POST | Method::PUT) {
        req = req.set_json(serde_json::json!({}));
    }
    req
}

/// Whether an answer came from the router's fallback (no handler matched).
async fn from_fallback(res: ServiceResponse<impl MessageBody>) -> bool {
    let status = res.status();
    let bytes = atest::read_body(res).await;
    let body: Value = serde_json::from_slice(&bytes).unwrap_or_default();
    status == StatusCode::METHOD_NOT_ALLOWED
        || (status == StatusCode::NOT_FOUND
            && body["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("no endpoint")))
}

/// Routes are registered only through utoipa-actix-web's `service`, which takes the path
/// and method of each from the attribute that documents it: a route cannot exist
/// undocumented. This proves the rest: every documented operation reaches a handler,
/// no documented path answers a method the document does not list, and the contract's
/// paths are all there.
#[actix_web::test]
async fn every_route_is_documented_and_every_documented_route_exists() {
    let dir = tempfile::tempdir().unwrap();
    let app = test_app(dir.path()).await;
    let doc = document(&app).await;
    let table = RouteTable::from_document(&doc);
    let operations: Vec<(Method, String)> = table
        .operations()
        .map(|(m, p)| (m.clone(), p.to_owned()))
        .collect();
    assert!(operations.len() >= 17, "{operations:?}");
    for (method, path) in &operations {
        let res = app.call(request(method, path).to_request()).await.unwrap();
        assert!(
            !from_fallback(res).await,
            "{method} {path} is documented but no handler answers it"
        );
    }
    for path in doc["paths"].as_object().unwrap().keys() {
        for method in [
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::PATCH,
        ] {
            if operations.iter().any(|(m, p)| *m == method && p == path) {
                continue;
            }
            let res = app.call(request(&method, path).to_request()).await.unwrap();
            assert_eq!(
                res.status(),
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path} is answered but not documented"
            );
        }
    }
    for (method, path) in [
        ("GET", "/healthz"),
        ("GET", "/metrics"),
        ("GET", "/api/v1/openapi.json"),
        ("POST", "/api/v1/leases"),
        ("PUT", "/api/v1/leases/{id}"),
        ("DELETE", "/api/v1/leases/{id}"),
        ("GET", "/api/v1/features"),
        ("GET", "/api/v1/status"),
    ] {
        assert!(
            operations
                .iter()
                .any(|(m, p)| m.as_str() == method && p == path),
            "the contract's {method} {path} is not documented"
        );
    }
}

/// Every property whose name says it is a time.
fn is_time(name: &str) -> bool {
    name.ends_with("_at")
        || name.ends_with("_seen")
        || name.ends_with("_used")
        || name.ends_with("_heard")
        || matches!(name, "since" | "next_expiry" | "active_since")
}

#[actix_web::test]
async fn the_document_gives_every_body_a_schema_every_error_its_codes_and_every_time_its_unit() {
    let dir = tempfile::tempdir().unwrap();
    let app = test_app(dir.path()).await;
    let doc = document(&app).await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));

    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let what = format!("{method} {path}");
            let responses = op["responses"].as_object().unwrap();
            assert!(
                responses.keys().any(|s| s.starts_with('2')),
                "{what}: no success answer"
            );
            for (status, r) in responses {
                let content = &r["content"];
                if status == "204" {
                    assert!(content.is_null(), "{what}: a 204 with a body");
                    continue;
                }
                let media = content
                    .as_object()
                    .and_then(|c| c.values().next())
                    .unwrap_or_else(|| panic!("{what} {status}: no body"));
                assert!(!media["schema"].is_null(), "{what} {status}: no schema");
                if !status.starts_with('2') {
                    assert_eq!(
                        media["schema"]["$ref"], "#/components/schemas/ErrorBody",
                        "{what} {status}"
                    );
                    let examples = media["examples"].as_object().unwrap();
                    assert!(!examples.is_empty(), "{what} {status}: no codes");
                    for code in examples.keys() {
                        assert!(
                            r["description"].as_str().unwrap().contains(code.as_str()),
                            "{what} {status}: {code} is not described"
                        );
                    }
                }
            }
            if let Some(body) = op.get("requestBody") {
                // JSON, or the pair's binary batch of changes.
                let media = body["content"]
                    .as_object()
                    .and_then(|c| c.values().next())
                    .unwrap_or_else(|| panic!("{what}: request body without content"));
                assert!(
                    !media["schema"].is_null(),
                    "{what}: request body without schema"
                );
                assert!(
                    responses.contains_key("413") && responses.contains_key("400"),
                    "{what}: takes a body but lists no 400 and 413"
                );
            }
        }
    }

    // Every time, in every schema, is an int64 (Unix time, seconds).
    let mut times = 0;
    for (name, schema) in doc["components"]["schemas"].as_object().unwrap() {
        let Some(props) = schema["properties"].as_object() else {
            continue;
        };
        for (field, p) in props {
            if !is_time(field) {
                continue;
            }
            times += 1;
            assert_eq!(p["format"], "int64", "{name}.{field}");
            let description = p["description"]
                .as_str()
                .unwrap_or_default()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            assert!(
                description.contains("Unix time, seconds"),
                "{name}.{field}: the description names no unit: {description:?}"
            );
        }
    }
    assert!(times >= 15, "only {times} time fields found");
    // Examples on the bodies clients read.
    for name in [
        "Lease",
        "CheckoutRequest",
        "FeatureInfo",
        "ErrorBody",
        "LeaseInfo",
    ] {
        assert!(
            !doc["components"]["schemas"][name]["example"].is_null(),
            "{name} has no example"
        );
    }
}

/// The served document, as `openapi-spec-validator` (PyPI; `scripts/test` installs it)
/// sees it.
#[actix_web::test]
async fn an_outside_validator_accepts_the_document() {
    let dir = tempfile::tempdir().unwrap();
    let app = test_app(dir.path()).await;
    let req = TestRequest::get().uri("/api/v1/openapi.json").to_request();
    let body = atest::call_and_read_body(&app, req).await;
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, &body).unwrap();
    let out = std::process::Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(&file)
        .output()
        .expect("python3 runs (scripts/test installs openapi-spec-validator)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !text.contains("No module named"),
        "openapi-spec-validator is not installed; scripts/test installs it: {text}"
    );
    assert!(
        out.status.success(),
        "the validator refused the document:\n{text}"
    );
    assert!(text.contains("OK"), "{text}");
}

/// A body stream that notes whether anyone read it.
struct Watched(Arc<AtomicBool>);

impl futures_util::Stream for Watched {
    type Item = Result<Bytes, actix_web::error::PayloadError>;

    fn poll_next(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.store(true, Ordering::SeqCst);
        Poll::Ready(Some(Ok(Bytes::from_static(b"{\"history\": "))))
    }
}

#[actix_web::test]
async fn guarded_routes_refuse_a_wrong_token_before_reading_the_body() {
    let dir = tempfile::tempdir().unwrap();
    let app = test_app(dir.path()).await;
    for (path, token, status) in [
        ("/api/v1/pair/events", None, StatusCode::UNAUTHORIZED),
        ("/api/v1/member/raft/append", None, StatusCode::UNAUTHORIZED),
        ("/api/v1/member/hello", Some("wrong"), StatusCode::FORBIDDEN),
        (
            "/api/v1/pair/snapshot",
            Some("wrong"),
            StatusCode::FORBIDDEN,
        ),
        (
            "/api/v1/admin/pair/backup",
            Some(PAIR),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "/api/v1/admin/pair/backup",
            Some(READ_ONLY),
            StatusCode::FORBIDDEN,
        ),
    ] {
        let read = Arc::new(AtomicBool::new(false));
        let stream: actix_http::BoxedPayloadStream = Box::pin(Watched(read.clone()));
        let mut req = TestRequest::default()
            .method(
                if path.ends_with("events") || path.starts_with("/api/v1/member/") {
                    Method::POST
                } else {
                    Method::PUT
                },
            )
            .uri(path)
            .insert_header(("content-type", "application/json"))
            .insert_header(("content-length", (250u64 << 20).to_string()));
        if let Some(t) = token {
            req = req.insert_header(("authorization", format!("Bearer {t}")));
        }
        let (req, _) = req
            .to_request()
            .replace_payload(actix_web::dev::Payload::from(stream));
        let res = app.call(req).await.unwrap();
        assert_eq!(res.status(), status, "{path}");
        assert!(!read.load(Ordering::SeqCst), "{path}: the body was read");
    }
}

#[actix_web::test]
async fn each_route_takes_bodies_up_to_its_own_largest_message() {
    let dir = tempfile::tempdir().unwrap();
    let app = test_app(dir.path()).await;
    // A checkout is small: 5 KiB is refused before it is parsed.
    let big = serde_json::json!({"feature": "x".repeat(5000), "client_id": "c"});
    let req = TestRequest::post()
        .uri("/api/v1/leases")
        .set_json(&big)
        .to_request();
    let res = app.call(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let v: Value = atest::read_body_json(res).await;
    assert_eq!(
        (v["code"].as_str(), v["field"].as_str()),
        (Some("VALIDATION_ERROR"), Some("body"))
    );
    // A batch of changes is large: 1 MiB reaches the service (which, standalone, takes
    // no changes from another server).
    let events = |body: Vec<u8>| {
        TestRequest::post()
            .uri("/api/v1/pair/events")
            .insert_header(("authorization", format!("Bearer {PAIR}")))
            .insert_header(("content-type", "application/octet-stream"))
            .set_payload(body)
            .to_request()
    };
    let mut padded = Batch::encode(Uuid::new_v4(), 1, []);
    padded.extend(std::iter::repeat_n(b'x', 1 << 20));
    let res = app.call(events(padded)).await.unwrap();
    assert_eq!(
        res.status(),
        StatusCode::BAD_REQUEST,
        "not records, not too large"
    );
    let v: Value = atest::read_body_json(res).await;
    assert!(v["message"].as_str().unwrap().contains("checksum"), "{v}");
    // The JSON of earlier versions is not a batch.
    let json = serde_json::json!({"history": Uuid::new_v4(), "main_seq": 1, "events": []});
    let res = app
        .call(events(json.to_string().into_bytes()))
        .await
        .unwrap();
    let v: Value = atest::read_body_json(res).await;
    assert_eq!(v["code"], "VALIDATION_ERROR", "{v}");
    assert!(v["message"].as_str().unwrap().contains("LLS-PEV"), "{v}");
    let res = app
        .call(events(Batch::encode(Uuid::new_v4(), 1, [])))
        .await
        .unwrap();
    let v: Value = atest::read_body_json(res).await;
    assert_eq!(v["code"], "ROLE_CONFLICT");
}

#[test]
fn health_metrics_status_operators_and_the_pair_are_priority_routes() {
    for p in [
        "/healthz",
        "/metrics",
        "/api/v1/status",
        "/api/v1/admin/leases/x",
        "/api/v1/pair/events",
        "/api/v1/member/raft/append",
        "/api/v1/cluster",
    ] {
        assert!(is_priority(p), "{p}");
    }
    for p in [
        "/api/v1/leases",
        "/api/v1/features",
        "/api/v1/openapi.json",
        "/api/v1/administrator",
    ] {
        assert!(!is_priority(p), "{p}");
    }
}
