//! The operator API (`ADMIN_TOKEN`, or `ADMIN_READONLY_TOKEN` for the `GET`s, within
//! `ADMIN_ACCESS`: checked by the scope before anything runs): who holds what,
//! force-release, the pair's membership, a poll of the back office now, and the usage
//! statistics.

use actix_web::{HttpRequest, HttpResponse, delete, get, post, put, web};
use http_kit::error_responses;
use http_kit::extract::{Json, client_ip, parse_json, read_body};
use http_kit::openapi::{ErrDoc, err, too_large, too_slow};
use serde::{Deserialize, Serialize};
use shared::ErrorCode::*;
use shared::lease::{FeatureInfo, LeaseInfo, PoolHolders};

use super::client::{not_durable, not_serving};
use super::{SMALL_BODY_LIMIT, lease_id};
use crate::error::ServiceError;
use crate::service::options::OptionsLoaded;
use crate::service::session::{OpenSession, OpenedSession, SessionHolder};
use crate::service::{Service, StatusView};
use crate::stats::{UsageStatistics, UsageStats};

/// A reading request's refusals.
fn operator() -> [ErrDoc; 2] {
    [
        err(
            Unauthorized,
            "no operator token was sent, or neither ADMIN_TOKEN nor ADMIN_READONLY_TOKEN",
        ),
        err(Forbidden, "the operator API is off (ADMIN_ACCESS=none)"),
    ]
}

/// An acting request's refusals.
fn acting() -> [ErrDoc; 3] {
    [
        err(
            Unauthorized,
            "no operator token was sent, or neither ADMIN_TOKEN nor ADMIN_READONLY_TOKEN",
        ),
        err(
            Forbidden,
            "the token reads only (ADMIN_READONLY_TOKEN, or any token under ADMIN_ACCESS=restricted), or the operator API is off (ADMIN_ACCESS=none)",
        ),
        session_held(),
    ]
}

fn session_held() -> ErrDoc {
    err(
        SessionHeld,
        "another operator holds the full administration session: acting needs its key (`X-Admin-Session`) until it is closed, lapses (ADMIN_SESSION_IDLE) or is taken over; the message says who holds it and until when",
    )
}

/// On a cluster, what acts is for the serving member.
fn member_not_serving() -> ErrDoc {
    err(
        NotServing,
        "a cluster member that does not serve: operators act, and keep their session, at the serving member (`serving_url`)",
    )
}

error_responses!(
    LeasesErrors = [
        operator(),
        err(NotFound, "no such feature is licensed on this server"),
    ]
);

/// The leases of a feature: who holds how many seats, since and until when.
#[utoipa::path(
    tag = "operator",
    params(("feature" = String, Path, description = "The feature's name")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The feature's leases", body = Vec<LeaseInfo>),
        LeasesErrors,
    )
)]
#[get("/features/{feature}/leases")]
pub async fn leases(
    svc: web::Data<Service>,
    feature: web::Path<String>,
) -> Result<HttpResponse, ServiceError> {
    Ok(HttpResponse::Ok().json(svc.leases_of(&feature)?))
}

error_responses!(UsageErrors = [operator()]);

/// Every feature's pool (count, in use, free, its rights one by one with their ends) and
/// who holds its seats (client, seats, since, until, granting server): the `lmstat -a`
/// view.
#[utoipa::path(
    tag = "operator",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The pools and their leases", body = Vec<PoolHolders>),
        UsageErrors,
    )
)]
#[get("/usage")]
pub async fn usage(svc: web::Data<Service>) -> HttpResponse {
    HttpResponse::Ok().json(svc.holders())
}

error_responses!(StatisticsErrors = [operator()]);

/// Usage statistics per feature and user (the checkout's `user`, else its `client_id`):
/// grants and renewals, first and last used, the most recent first; users not seen for
/// `USAGE_RECYCLE_AFTER` are dropped each day at 00:00 UTC. This server's own: each
/// member of a cluster keeps its own.
#[utoipa::path(
    tag = "operator",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The statistics", body = UsageStatistics),
        StatisticsErrors,
    )
)]
#[get("/statistics")]
pub async fn statistics(stats: web::Data<UsageStats>) -> HttpResponse {
    HttpResponse::Ok().json(stats.view())
}

/// `POST /api/v1/admin/reread` answer: the features before and after the poll.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Reread {
    /// The features before the poll.
    pub before: Vec<FeatureInfo>,
    /// The features once the back office's answer was taken.
    pub after: Vec<FeatureInfo>,
}

error_responses!(
    RereadErrors = [
        acting(),
        member_not_serving(),
        err(
            Unavailable,
            "the back office gave no new rights: it is unreachable, refused the request or sent an answer that does not verify (the message says which)"
        ),
    ]
);

/// Polls the back office now (`lmreread`) and answers once its answer is verified and
/// taken, with the features before and after. A poll under way is let finish and
/// another is made; operators asking at once share one.
#[utoipa::path(
    tag = "operator",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The features before and after the poll", body = Reread),
        RereadErrors,
    )
)]
#[post("/reread")]
pub async fn reread(_: Acting, svc: web::Data<Service>) -> Result<HttpResponse, ServiceError> {
    let before = svc.features();
    svc.poll_now().await?;
    Ok(HttpResponse::Ok().json(Reread {
        before,
        after: svc.features(),
    }))
}

error_responses!(
    ReleaseErrors = [
        acting(),
        err(
            NotFound,
            "no such lease (expired, returned or never granted)"
        ),
        not_serving(),
        err(
            Unavailable,
            "this main is taking its backup's changes back; retry shortly"
        ),
        not_durable(),
    ]
);

/// Force-releases a lease: its seats are free at once; its client learns on its next
/// renewal (`NOT_FOUND`).
#[utoipa::path(
    tag = "operator",
    params(("id" = Uuid, Path, description = "The lease's ID")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The lease that was released", body = LeaseInfo),
        ReleaseErrors,
    )
)]
#[delete("/leases/{id}")]
pub async fn release(
    _: Acting,
    svc: web::Data<Service>,
    id: web::Path<String>,
) -> Result<HttpResponse, ServiceError> {
    let id = lease_id(&id)?;
    Ok(HttpResponse::Ok().json(svc.release(&id).await?))
}

error_responses!(
    DetachErrors = [
        acting(),
        member_not_serving(),
        err(RoleConflict, "this server is not part of a pair"),
        not_durable(),
    ]
);

/// Removes the backup from the pair, on the main or on the backup; the other server is
/// told, clients stop being handed the backup's URL.
#[utoipa::path(
    tag = "operator",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "This server's status after the change", body = StatusView),
        DetachErrors,
    )
)]
#[post("/pair/detach")]
pub async fn pair_detach(_: Acting, svc: web::Data<Service>) -> Result<HttpResponse, ServiceError> {
    svc.detach_by_operator().await?;
    Ok(HttpResponse::Ok().json(svc.status()))
}

/// `PUT /api/v1/admin/pair/backup` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetBackup {
    /// The backup's new URL, `http://` or `https://`, at most 512 characters.
    #[schema(example = "https://lls-backup-2.example:7070", max_length = 512)]
    pub url: String,
}

error_responses!(
    SetBackupErrors = [
        err(ValidationError, "`url` is not an http:// or https:// URL"),
        too_large(SMALL_BODY_LIMIT),
        too_slow(),
        acting(),
        member_not_serving(),
        err(RoleConflict, "this server is not a main"),
        not_durable(),
    ]
);

/// Gives the main a new address for its backup (and takes a dropped backup back);
/// clients learn it with their next lease answer.
#[utoipa::path(
    tag = "operator",
    request_body = SetBackup,
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "This server's status after the change", body = StatusView),
        SetBackupErrors,
    )
)]
#[put("/pair/backup")]
pub async fn pair_backup(
    _: Acting,
    svc: web::Data<Service>,
    body: Json<SetBackup, SMALL_BODY_LIMIT>,
) -> Result<HttpResponse, ServiceError> {
    let url = crate::settings::check_url(&body.0.url)
        .map_err(|why| ServiceError::validation("url", format!("the backup's URL {why}")))?;
    svc.set_backup(url).await?;
    Ok(HttpResponse::Ok().json(svc.status()))
}

error_responses!(
    ReloadOptionsErrors = [
        acting(),
        member_not_serving(),
        err(
            ValidationError,
            "no options file is set, or the file is refused (`options_line` names the line; the options in force are kept)"
        ),
        err(
            RoleConflict,
            "this server is a backup: it honours its main's options"
        ),
        not_durable(),
    ]
);

/// Reads the options file (`LICENSING_OPTIONS_FILE`) again and puts it in force, as
/// `SIGHUP` does; a bad file is refused with its line and the options in force stay.
#[utoipa::path(
    tag = "operator",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The options file now in force", body = OptionsLoaded),
        ReloadOptionsErrors,
    )
)]
#[post("/options/reload")]
pub async fn reload_options(
    _: Acting,
    svc: web::Data<Service>,
) -> Result<HttpResponse, ServiceError> {
    Ok(HttpResponse::Ok().json(svc.reload_options().await?))
}

/// The header that carries the full session's key on a request that acts.
pub const SESSION_HEADER: &str = "X-Admin-Session";

/// The session's own path (its operations check the key themselves: they are not [`Acting`]).
pub const SESSION_PATH: &str = "/api/v1/admin/session";

fn session_key(req: &HttpRequest) -> Option<&str> {
    req.headers()
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty())
}

error_responses!(
    OpenSessionErrors = [
        err(
            ValidationError,
            "the body is not an `OpenSession`, or the operator's name is empty, too long or has control characters"
        ),
        too_large(SMALL_BODY_LIMIT),
        too_slow(),
        acting(),
        member_not_serving(),
    ]
);

/// Opens the server's full administration session (on a cluster, the cluster's): one
/// operator at a time acts; its key goes in `X-Admin-Session` on each request that acts.
/// Refused with `SESSION_HELD` while another operator holds it, unless `take_over`.
/// Opening it again with its key keeps it.
#[utoipa::path(
    tag = "operator",
    request_body(content = Option<OpenSession>, description = "Optional: a name for the others to see, and whether to take the session over"),
    params(("X-Admin-Session" = Option<String>, Header, description = "The key of a session this operator holds")),
    security(("admin_token" = [])),
    responses(
        (status = 201, description = "The session, with its key (shown once)", body = OpenedSession),
        OpenSessionErrors,
    )
)]
#[post("/session")]
pub async fn open_session(
    svc: web::Data<Service>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, actix_web::Error> {
    // The body is optional: none opens a session with the defaults; anything else must
    // be an `OpenSession`.
    let body = read_body(payload, SMALL_BODY_LIMIT).await?;
    let open: OpenSession = if body.iter().all(u8::is_ascii_whitespace) {
        OpenSession::default()
    } else {
        parse_json(&body)?
    };
    let from = client_ip(&req).map_or_else(|| "an unknown address".to_owned(), |ip| ip.to_string());
    let opened = svc.open_session(open, session_key(&req), &from)?;
    Ok(HttpResponse::Created().json(opened))
}

error_responses!(SessionErrors = [operator(), member_not_serving()]);

/// Who holds the full administration session, if anyone (`null`): never its key.
#[utoipa::path(
    tag = "operator",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The session's holder, or null", body = Option<SessionHolder>),
        SessionErrors,
    )
)]
#[get("/session")]
pub async fn session(svc: web::Data<Service>) -> Result<HttpResponse, ServiceError> {
    Ok(HttpResponse::Ok().json(svc.session_holder()?))
}

error_responses!(CloseSessionErrors = [acting(), member_not_serving()]);

/// Closes the full administration session its key (`X-Admin-Session`) holds; with none
/// open, nothing to do.
#[utoipa::path(
    tag = "operator",
    params(("X-Admin-Session" = Option<String>, Header, description = "The session's key")),
    security(("admin_token" = [])),
    responses(
        (status = 204, description = "No session is open now"),
        CloseSessionErrors,
    )
)]
#[delete("/session")]
pub async fn close_session(
    svc: web::Data<Service>,
    req: HttpRequest,
) -> Result<HttpResponse, ServiceError> {
    svc.close_session(session_key(&req))?;
    Ok(HttpResponse::NoContent().finish())
}

/// An operation that acts: taken from an operator only while nobody else holds the full
/// session (its key in `X-Admin-Session` when one is open), else refused with
/// `SESSION_HELD`; on a cluster only at the serving member, which keeps the session
/// (`NOT_SERVING` elsewhere). First among an operation's arguments, so that it is
/// checked before the body is read.
pub struct Acting;

impl actix_web::FromRequest for Acting {
    type Error = ServiceError;
    type Future = std::future::Ready<Result<Acting, ServiceError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let checked = match req.app_data::<web::Data<Service>>() {
            Some(svc) => svc.check_session(session_key(req)).map(|()| Acting),
            None => Err(ServiceError::Internal("the service is not set up".into())),
        };
        std::future::ready(checked)
    }
}
