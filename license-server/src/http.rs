//! The HTTP API (axum): thin handlers over [`Service`], contract errors as JSON for
//! everything (including extractor rejections, unknown routes and wrong methods).

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, MatchedPath, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use serde::de::DeserializeOwned;
use shared::lease::CheckoutRequest;
use shared::secret::Secret;
use tracing::Instrument;
use uuid::Uuid;

use crate::domain::State as PoolState;
use crate::error::ServiceError;
use crate::replication::{Ack, Batch, Detach, Peer, tell_partner};
use crate::service::Service;
use crate::store::Committed;

/// Largest request body accepted.
pub const BODY_LIMIT: usize = 16 * 1024;

pub const OPENAPI: &str = include_str!("../openapi.json");

#[derive(Clone)]
pub struct AppState {
    pub svc: Arc<Service>,
    pub admin_token: Arc<Secret>,
    /// What the other server of the pair authenticates with.
    pub pair_token: Arc<Secret>,
    /// To tell the other server of the pair about an operator's change.
    pub peer: Peer,
}

/// Largest body of the pair's own requests (a full snapshot of the pool).
pub const PAIR_BODY_LIMIT: usize = 256 << 20;

impl IntoResponse for ServiceError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, axum::Json(self.body())).into_response()
    }
}

/// JSON body extractor whose rejections are contract errors.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ServiceError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rej) => Err(json_rejection(rej)),
        }
    }
}

fn json_rejection(rej: JsonRejection) -> ServiceError {
    match rej {
        JsonRejection::MissingJsonContentType(_) => ServiceError::Validation {
            field: None,
            message: "send the body as JSON with `Content-Type: application/json`".into(),
        },
        JsonRejection::JsonDataError(e) => ServiceError::Validation {
            field: None,
            message: format!(
                "the body does not match the expected fields: {}",
                e.body_text()
            ),
        },
        JsonRejection::JsonSyntaxError(e) => ServiceError::Validation {
            field: None,
            message: format!("the body is not valid JSON: {}", e.body_text()),
        },
        JsonRejection::BytesRejection(e) => {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ServiceError::PayloadTooLarge(format!("the body is larger than {BODY_LIMIT} bytes"))
            } else {
                ServiceError::Validation {
                    field: None,
                    message: format!("the body could not be read: {}", e.body_text()),
                }
            }
        }
        other => ServiceError::Validation {
            field: None,
            message: other.body_text(),
        },
    }
}

fn lease_id(raw: &str) -> Result<Uuid, ServiceError> {
    Uuid::parse_str(raw).map_err(|_| ServiceError::NotFound(format!("no lease `{raw}`")))
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Checks the bearer token against `secret`: 401 without one (`missing` says which),
/// 403 with another (`wrong` says why).
fn require_token(
    headers: &HeaderMap,
    secret: &Secret,
    missing: &str,
    wrong: &str,
) -> Result<(), ServiceError> {
    match bearer(headers) {
        None => Err(ServiceError::Unauthorized(missing.to_owned())),
        Some(t) if constant_time_eq(t.as_bytes(), secret.expose().as_bytes()) => Ok(()),
        Some(_) => Err(ServiceError::Forbidden(wrong.to_owned())),
    }
}

fn require_admin(state: &AppState, headers: &HeaderMap) -> Result<(), ServiceError> {
    require_token(
        headers,
        &state.admin_token,
        "operator endpoints need `Authorization: Bearer <ADMIN_TOKEN>`",
        "the operator token is not valid",
    )
}

fn require_pair(state: &AppState, headers: &HeaderMap) -> Result<(), ServiceError> {
    require_token(
        headers,
        &state.pair_token,
        "pair endpoints need `Authorization: Bearer <PAIR_TOKEN>`",
        "the pair token is not valid (PAIR_TOKEN, or BACKOFFICE_TOKEN when unset, must be the same on both servers)",
    )
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

// ---- handlers ----

async fn checkout(
    State(s): State<AppState>,
    ApiJson(req): ApiJson<CheckoutRequest>,
) -> Result<Response, ServiceError> {
    let lease = s.svc.checkout(&req).await?;
    Ok((StatusCode::CREATED, axum::Json(lease)).into_response())
}

async fn renew(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ServiceError> {
    let id = lease_id(&id)?;
    let lease = s.svc.renew(&id, bearer(&headers)).await?;
    Ok(axum::Json(lease).into_response())
}

async fn return_lease(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ServiceError> {
    let id = lease_id(&id)?;
    s.svc.return_lease(&id, bearer(&headers)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn features(State(s): State<AppState>) -> Response {
    axum::Json(s.svc.features()).into_response()
}

async fn status(State(s): State<AppState>) -> Response {
    axum::Json(s.svc.status()).into_response()
}

async fn admin_leases(
    State(s): State<AppState>,
    Path(feature): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ServiceError> {
    require_admin(&s, &headers)?;
    Ok(axum::Json(s.svc.leases_of(&feature)?).into_response())
}

async fn admin_release(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ServiceError> {
    require_admin(&s, &headers)?;
    let id = lease_id(&id)?;
    Ok(axum::Json(s.svc.release(&id).await?).into_response())
}

// ---- the pair (server to server) ----

async fn pair_position(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ServiceError> {
    require_pair(&s, &headers)?;
    Ok(axum::Json(s.svc.position()).into_response())
}

async fn pair_events(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiJson(batch): ApiJson<Batch<Committed>>,
) -> Result<Response, ServiceError> {
    require_pair(&s, &headers)?;
    let seq = s
        .svc
        .apply_replicated(batch.history, batch.events, batch.main_seq)
        .await?;
    Ok(axum::Json(Ack { seq }).into_response())
}

async fn pair_snapshot(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiJson(state): ApiJson<PoolState>,
) -> Result<Response, ServiceError> {
    require_pair(&s, &headers)?;
    let seq = s.svc.install_snapshot(state).await?;
    Ok(axum::Json(Ack { seq }).into_response())
}

async fn pair_handback(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ServiceError> {
    require_pair(&s, &headers)?;
    Ok(axum::Json(s.svc.hand_back().await?).into_response())
}

/// The other server detached this one (a main dropped its backup, or a backup left).
async fn pair_detach(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiJson(d): ApiJson<Detach>,
) -> Result<Response, ServiceError> {
    require_pair(&s, &headers)?;
    let reason = match s.svc.cfg.role {
        shared::capability::Role::Backup => {
            format!("removed from the pair by the main: {}", d.reason)
        }
        _ => format!("the backup left the pair: {}", d.reason),
    };
    let changed = s.svc.detach(&reason).await?;
    Ok(axum::Json(serde_json::json!({"detached": true, "changed": changed})).into_response())
}

// ---- the pair (operators) ----

/// Removes the backup from the pair, from either side; the other server is told.
async fn admin_pair_detach(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ServiceError> {
    require_admin(&s, &headers)?;
    let svc = &s.svc;
    let (partner, reason) = match svc.cfg.role {
        shared::capability::Role::Main => (
            svc.backup_uri(),
            "the backup was removed by an operator of the main",
        ),
        shared::capability::Role::Backup => (
            svc.cfg.main_uri.clone(),
            "the backup was removed by an operator of the backup",
        ),
        shared::capability::Role::Standalone => {
            return Err(ServiceError::RoleConflict(
                "this server is not part of a pair".into(),
            ));
        }
    };
    svc.detach(reason).await?;
    tell_partner(&s.peer, partner.as_deref(), reason).await;
    Ok(axum::Json(svc.status()).into_response())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SetBackup {
    url: String,
}

/// A new address for the backup (main): clients learn it with their next lease answer.
async fn admin_pair_backup(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiJson(b): ApiJson<SetBackup>,
) -> Result<Response, ServiceError> {
    require_admin(&s, &headers)?;
    let url = b.url.trim().trim_end_matches('/').to_owned();
    if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() > 512 {
        return Err(ServiceError::validation(
            "url",
            "the backup's URL must be an http:// or https:// URL such as http://backup:7070",
        ));
    }
    s.svc.set_backup(url).await?;
    Ok(axum::Json(s.svc.status()).into_response())
}

async fn healthz() -> Response {
    axum::Json(serde_json::json!({"status": "ok"})).into_response()
}

async fn metrics(State(s): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        s.svc.render_metrics(),
    )
        .into_response()
}

async fn openapi() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        OPENAPI,
    )
        .into_response()
}

async fn not_found(req: Request) -> ServiceError {
    ServiceError::NotFound(format!("no endpoint {} {}", req.method(), req.uri().path()))
}

async fn method_not_allowed(req: Request) -> ServiceError {
    ServiceError::MethodNotAllowed(format!(
        "{} is not allowed on {}",
        req.method(),
        req.uri().path()
    ))
}

// ---- router ----

/// Every route: (methods, path). The OpenAPI test checks each is documented.
pub struct Routes {
    router: Router<AppState>,
    pub list: Vec<(&'static str, &'static str)>,
}

impl Routes {
    fn new() -> Self {
        Routes {
            router: Router::new(),
            list: Vec::new(),
        }
    }

    fn add(
        mut self,
        path: &'static str,
        methods: &[&'static str],
        route: MethodRouter<AppState>,
    ) -> Self {
        for m in methods {
            self.list.push((m, path));
        }
        self.router = self.router.route(path, route);
        self
    }
}

pub fn routes() -> Routes {
    use axum::routing::{delete, post, put};
    Routes::new()
        .add("/healthz", &["GET"], get(healthz))
        .add("/metrics", &["GET"], get(metrics))
        .add("/api/v1/openapi.json", &["GET"], get(openapi))
        .add("/api/v1/status", &["GET"], get(status))
        .add("/api/v1/features", &["GET"], get(features))
        .add("/api/v1/leases", &["POST"], post(checkout))
        .add(
            "/api/v1/leases/{id}",
            &["PUT", "DELETE"],
            put(renew).delete(return_lease),
        )
        .add(
            "/api/v1/admin/features/{feature}/leases",
            &["GET"],
            get(admin_leases),
        )
        .add(
            "/api/v1/admin/leases/{id}",
            &["DELETE"],
            delete(admin_release),
        )
        .add(
            "/api/v1/admin/pair/detach",
            &["POST"],
            post(admin_pair_detach),
        )
        .add(
            "/api/v1/admin/pair/backup",
            &["PUT"],
            put(admin_pair_backup),
        )
        .add("/api/v1/pair/position", &["GET"], get(pair_position))
        .add(
            "/api/v1/pair/events",
            &["POST"],
            post(pair_events).layer(DefaultBodyLimit::max(PAIR_BODY_LIMIT)),
        )
        .add(
            "/api/v1/pair/snapshot",
            &["PUT"],
            put(pair_snapshot).layer(DefaultBodyLimit::max(PAIR_BODY_LIMIT)),
        )
        .add("/api/v1/pair/handback", &["POST"], post(pair_handback))
        .add("/api/v1/pair/detach", &["POST"], post(pair_detach))
}

pub fn router(state: AppState) -> Router {
    let routes = routes();
    let known: Arc<[&'static str]> = routes.list.iter().map(|(_, p)| *p).collect();
    routes
        .router
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            (state.clone(), known),
            observe,
        ))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

fn method_str(m: &Method) -> &'static str {
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

/// A span per request (debug level) and the latency histogram by route.
async fn observe(
    State((state, known)): State<(AppState, Arc<[&'static str]>)>,
    req: Request,
    next: Next,
) -> Response {
    let start = Instant::now();
    let method = method_str(req.method());
    let route: &'static str = req
        .extensions()
        .get::<MatchedPath>()
        .and_then(|m| known.iter().copied().find(|k| *k == m.as_str()))
        .unwrap_or("unmatched");
    let span = tracing::debug_span!("request", method, route, path = %req.uri().path());
    let resp = next.run(req).instrument(span.clone()).await;
    let elapsed = start.elapsed();
    state
        .svc
        .metrics
        .observe(method, route, elapsed.as_secs_f64());
    span.in_scope(|| {
        tracing::debug!(
            status = resp.status().as_u16(),
            micros = elapsed.as_micros() as u64,
            "answered"
        );
    });
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_in_the_openapi_document() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("openapi.json parses");
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        let paths = doc["paths"].as_object().expect("paths");
        let routes = routes();
        assert!(routes.list.len() >= 10);
        for (method, path) in &routes.list {
            let item = paths
                .get(*path)
                .unwrap_or_else(|| panic!("{path} is not in openapi.json"));
            assert!(
                item.get(method.to_ascii_lowercase()).is_some(),
                "{method} {path} is not in openapi.json"
            );
        }
        // And nothing documented that the router does not have.
        for (path, item) in paths {
            for method in item.as_object().unwrap().keys() {
                if method == "parameters" {
                    continue;
                }
                assert!(
                    routes
                        .list
                        .iter()
                        .any(|(m, p)| p == path && m.eq_ignore_ascii_case(method)),
                    "openapi.json documents {method} {path}, which the router lacks"
                );
            }
        }
    }

    #[test]
    fn bearer_parsing() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), None);
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
