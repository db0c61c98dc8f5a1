//! The HTTP API (actix-web): thin handlers over [`Service`], documented from their code
//! (utoipa; served at `GET /api/v1/openapi.json`), every error the contract's JSON.
//!
//! - client API ([`client`]): `/api/v1/leases`, `/api/v1/features`, `/api/v1/status`;
//! - operator API ([`admin`]): `/api/v1/admin/*`, `Authorization: Bearer <ADMIN_TOKEN>`
//!   (acts) or `<ADMIN_READONLY_TOKEN>` (reads: `GET` only), within `ADMIN_ACCESS`
//!   ([`crate::access`]);
//! - pair API ([`pair`]): `/api/v1/pair/*`, `Authorization: Bearer <the pair's secret>`
//!   (`PAIR_TOKEN`, or the back office's `pair_token` when unset);
//! - cluster API ([`cluster`]): `GET /api/v1/cluster` for anyone, `/api/v1/member/*`
//!   between the members of a three-member cluster (`PAIR_TOKEN`, required of a member);
//! - `/healthz`, `/metrics`, `/api/v1/openapi.json` ([`ops`]).
//!
//! The operator, pair and member scopes check their token before anything else runs, the body
//! included. Each handler's body limit is in its type (`Json<T, LIMIT>`), each scope's
//! body deadline in its middleware. Routes are registered only through
//! utoipa-actix-web's `service`, which takes each handler's path and method from the same
//! attribute as its documentation, so a route cannot exist undocumented; the router's
//! fallback answers from the document (404 for an unknown path, 405 for a method the
//! path does not take).

pub mod admin;
pub mod client;
pub mod cluster;
pub mod ops;
pub mod pair;

use std::sync::Arc;
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::web::{self, Bytes};
use actix_web::{App, HttpResponse, ResponseError};
use http_kit::auth::bearer;
use http_kit::error::ApiError;
use http_kit::middleware::{Before, before};
use http_kit::observe::{HttpMetrics, observe};
use http_kit::openapi::{RouteTable, fallback};
use http_kit::serve::{ConnectionGate, body_deadline};
use shared::{ErrorBody, ErrorCode};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_actix_web::{AppExt, UtoipaApp, scope};
use uuid::Uuid;

use crate::access::{Level, OperatorAccess};
use crate::error::ServiceError;
use crate::identity::{PairRefusal, PairToken};
use crate::service::Service;
use crate::stats::UsageStats;

/// Largest body of a checkout, an operator's request and a detach: the longest feature
/// (256 characters), version (64) and client ID (256) take under 2.5 KiB as JSON.
pub const SMALL_BODY_LIMIT: usize = 4096;

/// How long a pair request's body may take (a snapshot of a large pool over a slow
/// link); the main gives up on a snapshot after 60 s too.
pub const PAIR_BODY_TIMEOUT: Duration = Duration::from_secs(60);

impl ResponseError for ServiceError {
    fn status_code(&self) -> StatusCode {
        http_kit::error::status_of(self.code())
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = http_kit::respond(self.status_code(), &self.body());
        if let ServiceError::Unavailable(_) = self {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        res
    }
}

/// Routes served on the connections beyond `MAX_CONNECTIONS`: health, metrics, status,
/// operators and the other server of the pair.
pub fn is_priority(path: &str) -> bool {
    matches!(path, "/healthz" | "/metrics" | "/api/v1/status")
        || path.starts_with("/api/v1/admin/")
        || path.starts_with("/api/v1/pair/")
        || path.starts_with("/api/v1/member/")
        || path == "/api/v1/cluster"
}

/// What the app needs, cloned into each worker.
#[derive(Clone)]
pub struct AppContext {
    pub svc: Arc<Service>,
    /// The operator tokens and `ADMIN_ACCESS`.
    pub operators: OperatorAccess,
    /// Who used what (grants and renewals recorded by the client handlers).
    pub stats: Arc<UsageStats>,
    /// The pair's secret; on a cluster member, the members' (`PAIR_TOKEN`).
    pub pair: PairToken,
    pub metrics: Arc<HttpMetrics>,
    pub gate: Arc<ConnectionGate>,
    /// How long a client's or an operator's body may take.
    pub body_timeout: Duration,
}

impl AppContext {
    pub fn new(
        svc: Arc<Service>,
        operators: OperatorAccess,
        stats: Arc<UsageStats>,
        metrics: Arc<HttpMetrics>,
        gate: Arc<ConnectionGate>,
        body_timeout: Duration,
    ) -> AppContext {
        AppContext {
            pair: svc.identity().pair_token().clone(),
            svc,
            operators,
            stats,
            metrics,
            gate,
            body_timeout,
        }
    }
}

/// Middleware: an operator's request goes on only with an operator token that allows it
/// (`GET` reads, every other method acts), checked before anything else runs (the body is
/// not read). A missing or unknown token is 401 `UNAUTHORIZED`; a reading token (or
/// `ADMIN_ACCESS=restricted`) on a request that acts, and anything under
/// `ADMIN_ACCESS=none`, 403 `FORBIDDEN`. (Whether another operator holds the full
/// session is the operations' own check: [`admin::Acting`].) The request log shows each
/// refusal with its message at INFO (the client's error, not the server's).
fn require_operator(
    access: OperatorAccess,
) -> Before<impl Fn(&mut ServiceRequest) -> Option<HttpResponse> + 'static> {
    before(move |req| {
        let needs = if req.method() == Method::GET || req.method() == Method::HEAD {
            Level::Read
        } else {
            Level::Act
        };
        let refusal = access.authorize(bearer(req.request()), needs).err()?;
        let code = if refusal.unauthenticated() {
            ErrorCode::Unauthorized
        } else {
            ErrorCode::Forbidden
        };
        Some(ResponseError::error_response(&ApiError::new(
            code,
            refusal.message(),
        )))
    })
}

/// Middleware: the pair's requests go on only with the pair's secret, checked before
/// anything else runs (the body is not read). The secret may arrive at run time (from the
/// back office), so it is read at each request.
fn require_pair_secret(
    token: PairToken,
) -> Before<impl Fn(&mut ServiceRequest) -> Option<HttpResponse> + 'static> {
    before(move |req| {
        let refusal = token.check(bearer(req.request())).err()?;
        let e = match refusal {
            PairRefusal::Missing => ApiError::new(
                ErrorCode::Unauthorized,
                "pair endpoints need `Authorization: Bearer <the pair's secret>`",
            ),
            PairRefusal::Wrong => ApiError::new(
                ErrorCode::Forbidden,
                "the pair token is not this pair's secret (PAIR_TOKEN, the same on both servers, \
                 or the back office's when unset)",
            ),
            PairRefusal::NoneYet => ApiError::new(
                ErrorCode::Forbidden,
                "this server has no pair secret yet: PAIR_TOKEN is unset and the back office has \
                 not sent the pair's",
            ),
        };
        Some(ResponseError::error_response(&e))
    })
}

/// Middleware: the members' requests go on only with their secret (`PAIR_TOKEN`, which
/// a member must have), checked before anything else runs.
fn require_member_secret(
    token: PairToken,
) -> Before<impl Fn(&mut ServiceRequest) -> Option<HttpResponse> + 'static> {
    before(move |req| {
        let e = match token.check(bearer(req.request())).err()? {
            PairRefusal::Missing => ApiError::new(
                ErrorCode::Unauthorized,
                "cluster member endpoints need `Authorization: Bearer <PAIR_TOKEN>`",
            ),
            PairRefusal::Wrong => ApiError::new(
                ErrorCode::Forbidden,
                "the member token is not valid (PAIR_TOKEN must be the same on the three members)",
            ),
            PairRefusal::NoneYet => ApiError::new(
                ErrorCode::Forbidden,
                "this server is not a cluster member (a member has PAIR_TOKEN set)",
            ),
        };
        Some(ResponseError::error_response(&e))
    })
}

/// The OpenAPI document, as served.
pub struct Document(pub Bytes);

#[derive(OpenApi)]
#[openapi(
    info(
        title = "license-server",
        description = "The local license server: floating licenses for clients (check out, renew, return), \
            the operator API and the failover pair's own API. Every time is Unix time in seconds \
            (seconds since 1970-01-01T00:00:00Z). Every error is `ErrorBody` JSON; any path no \
            operation has answers 404 `NOT_FOUND`, a method a path does not take 405 (`NOT_FOUND`, \
            with `Allow`). Bodies are JSON (`Content-Type: application/json`) and must arrive within \
            10 s of the request's head (60 s on the pair API), else 408.",
        license(name = "Apache-2.0")
    ),
    components(schemas(ErrorBody, ErrorCode)),
    modifiers(&Security),
    tags(
        (name = "client", description = "Client applications: leases and what the server offers"),
        (name = "operator", description = "Operators (`ADMIN_TOKEN` acts, `ADMIN_READONLY_TOKEN` reads)"),
        (name = "pair", description = "The other server of a failover pair (`PAIR_TOKEN`)"),
        (name = "cluster", description = "The other members of a three-member cluster (`PAIR_TOKEN`)"),
        (name = "service", description = "Health, metrics and this document"),
    )
)]
struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        for (name, what) in [
            (
                "lease_token",
                "The lease's `token`, from the checkout's answer",
            ),
            (
                "admin_token",
                "`ADMIN_TOKEN` (or `DATA_DIR/admin.token`): reads and acts; \
                 `ADMIN_READONLY_TOKEN`: reads (`GET`) only; `ADMIN_ACCESS=restricted`: \
                 reads only, `none`: nothing",
            ),
            (
                "pair_token",
                "The pair's secret: `PAIR_TOKEN`, the same on both servers, or the back \
                 office's `pair_token` when unset",
            ),
        ] {
            let mut http = Http::new(HttpAuthScheme::Bearer);
            http.description = Some(what.to_owned());
            components.add_security_scheme(name, SecurityScheme::Http(http));
        }
    }
}

fn routes<T>(app: UtoipaApp<T>, ctx: &AppContext) -> UtoipaApp<T>
where
    T: ServiceFactory<ServiceRequest, Config = (), Error = actix_web::Error, InitError = ()>,
{
    app.service(ops::healthz)
        .service(ops::metrics)
        .service(
            scope::scope("/api/v1/admin")
                .wrap(body_deadline(ctx.body_timeout))
                .wrap(require_operator(ctx.operators.clone()))
                .service(admin::leases)
                .service(admin::usage)
                .service(admin::statistics)
                .service(admin::reread)
                .service(admin::release)
                .service(admin::pair_detach)
                .service(admin::pair_backup)
                .service(admin::reload_options)
                .service(admin::open_session)
                .service(admin::session)
                .service(admin::close_session),
        )
        .service(
            scope::scope("/api/v1/pair")
                .wrap(body_deadline(PAIR_BODY_TIMEOUT))
                .wrap(require_pair_secret(ctx.pair.clone()))
                .service(pair::position)
                .service(pair::events)
                .service(pair::snapshot)
                .service(pair::handback)
                .service(pair::detach),
        )
        .service(
            scope::scope("/api/v1/member")
                .wrap(body_deadline(PAIR_BODY_TIMEOUT))
                .wrap(require_member_secret(ctx.pair.clone()))
                .service(cluster::member_hello)
                .service(cluster::raft_append)
                .service(cluster::raft_vote)
                .service(cluster::raft_snapshot),
        )
        .service(
            scope::scope("/api/v1")
                .wrap(body_deadline(ctx.body_timeout))
                .service(cluster::cluster)
                .service(ops::openapi)
                .service(client::status)
                .service(client::features)
                .service(client::checkout)
                .service(client::renew)
                .service(client::return_lease)
                .service(client::leave_queue),
        )
}

/// The app: the routes, their document, the fallback, the connection gate and the
/// request middleware (outermost, so that it sees every answer).
pub fn app(
    ctx: AppContext,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let (app, doc) = routes(
        App::new().into_utoipa_app().openapi(ApiDoc::openapi()),
        &ctx,
    )
    .split_for_parts();
    let doc = serde_json::to_value(&doc).unwrap_or_default();
    let table = Arc::new(RouteTable::from_document(&doc));
    app.app_data(web::Data::from(ctx.svc.clone()))
        .app_data(web::Data::from(ctx.stats.clone()))
        .app_data(web::Data::new(Document(Bytes::from(doc.to_string()))))
        .app_data(http_kit::extract::path_config())
        .app_data(http_kit::extract::query_config())
        .default_service(fallback(table))
        .wrap(ctx.gate.middleware())
        .wrap(observe(ctx.metrics.clone()))
}

/// A lease ID from the path; anything that is not one names no lease.
fn lease_id(raw: &str) -> Result<Uuid, ServiceError> {
    Uuid::parse_str(raw).map_err(|_| ServiceError::NotFound(format!("no lease `{raw}`")))
}

#[cfg(test)]
mod tests;
