//! The pair API: what the other server of a failover pair calls (the pair's secret,
//! checked by the scope before anything runs, the body included). The main pushes its
//! changes and snapshots and takes the backup's back; either server tells the other it
//! left. Rights cross only as the back office's signed answers, verified on arrival.

use actix_web::{HttpResponse, get, post, put, web};
use http_kit::error_responses;
use http_kit::extract::{Json, read_body};
use http_kit::openapi::{ErrDoc, err, too_large, too_slow};
use shared::ErrorCode::*;

use super::SMALL_BODY_LIMIT;
use crate::domain::State;
use crate::error::ServiceError;
use crate::service::peer::{Ack, Batch, Detach, Detached, EVENTS_BODY_LIMIT, SNAPSHOT_BODY_LIMIT};
use crate::service::{Position, Service};

fn partner() -> [ErrDoc; 2] {
    [
        err(Unauthorized, "no pair token was sent"),
        err(
            Forbidden,
            "the pair token is not the pair's secret, or this server has none yet",
        ),
    ]
}

fn unverified() -> ErrDoc {
    err(
        UnverifiedRights,
        "the rights are not a capability answer of the back office that verifies for this \
         server's pair (or older than those held); nothing was changed",
    )
}

fn follower() -> [ErrDoc; 2] {
    [
        err(
            RoleConflict,
            "this server is not a backup, has taken over, or was removed from the pair",
        ),
        err(InternalError, "the change could not be made durable"),
    ]
}

error_responses!(PositionErrors = [partner()]);

/// Where this server's copy of the pool stands (history, sequence number) and what it
/// is doing; the main asks before it streams.
#[utoipa::path(
    tag = "pair",
    security(("pair_token" = [])),
    responses(
        (status = 200, description = "This server's position", body = Position),
        PositionErrors,
    )
)]
#[get("/position")]
pub async fn position(svc: web::Data<Service>) -> HttpResponse {
    HttpResponse::Ok().json(svc.position())
}

error_responses!(
    EventsErrors = [
        err(ValidationError, "the body is not a batch of changes"),
        too_large(EVENTS_BODY_LIMIT),
        too_slow(),
        partner(),
        follower(),
        err(
            OutOfSync,
            "the changes do not continue this backup's copy: send a snapshot"
        ),
        unverified(),
    ]
);

/// Backup: applies the main's changes in order, durably; an empty batch is the main's
/// heartbeat.
#[utoipa::path(
    tag = "pair",
    request_body(
        content = Vec<u8>,
        content_type = "application/octet-stream",
        description = "A batch of changes in the pair's binary form: a 40-byte header \
            (`LLS-PEV\\n`, format version, history, the main's sequence number), then the \
            changes as the journal's records (docs/design.md)"
    ),
    security(("pair_token" = [])),
    responses(
        (status = 200, description = "How far the backup holds the changes durably", body = Ack),
        EventsErrors,
    )
)]
#[post("/events")]
pub async fn events(
    svc: web::Data<Service>,
    body: web::Payload,
) -> Result<HttpResponse, actix_web::Error> {
    let body = read_body(body, EVENTS_BODY_LIMIT).await?.freeze();
    let Batch {
        history,
        main_seq,
        events,
    } = Batch::decode(body).map_err(|e| ServiceError::validation("body", e))?;
    let seq = svc.apply_replicated(history, events, main_seq).await?;
    Ok(HttpResponse::Ok().json(Ack { seq }))
}

error_responses!(
    SnapshotErrors = [
        err(
            ValidationError,
            "the body is not a state (rights as anything but the back office's token, say)"
        ),
        too_large(SNAPSHOT_BODY_LIMIT),
        too_slow(),
        partner(),
        follower(),
        unverified(),
    ]
);

/// Backup: replaces its copy with the main's whole state.
#[utoipa::path(
    tag = "pair",
    request_body(
        content = Object,
        description = "The main's whole state, in the servers' own form (both servers of a pair run the same version)"
    ),
    security(("pair_token" = [])),
    responses(
        (status = 200, description = "The backup holds the state durably", body = Ack),
        SnapshotErrors,
    )
)]
#[put("/snapshot")]
pub async fn snapshot(
    svc: web::Data<Service>,
    body: Json<State, SNAPSHOT_BODY_LIMIT>,
) -> Result<HttpResponse, ServiceError> {
    let seq = svc.install_snapshot(body.0).await?;
    Ok(HttpResponse::Ok().json(Ack { seq }))
}

error_responses!(HandbackErrors = [partner(), follower()]);

/// Backup: the returning main takes the pool back. The backup stops serving at once and
/// answers with its whole state once everything it did is durable.
#[utoipa::path(
    tag = "pair",
    security(("pair_token" = [])),
    responses(
        (
            status = 200,
            description = "The backup's whole state, in the servers' own form",
            body = Object
        ),
        HandbackErrors,
    )
)]
#[post("/handback")]
pub async fn handback(svc: web::Data<Service>) -> Result<HttpResponse, ServiceError> {
    Ok(HttpResponse::Ok().json(svc.hand_back().await?))
}

error_responses!(
    DetachErrors = [
        err(
            ValidationError,
            "`reason` is longer than 512 characters or not printable"
        ),
        too_large(SMALL_BODY_LIMIT),
        too_slow(),
        partner(),
        err(InternalError, "the change could not be made durable"),
    ]
);

/// The other server detached this one: a main dropped its backup, or a backup left.
#[utoipa::path(
    tag = "pair",
    request_body = Detach,
    security(("pair_token" = [])),
    responses(
        (status = 200, description = "Detached (durably)", body = Detached),
        DetachErrors,
    )
)]
#[post("/detach")]
pub async fn detach(
    svc: web::Data<Service>,
    body: Json<Detach, SMALL_BODY_LIMIT>,
) -> Result<HttpResponse, ServiceError> {
    let changed = svc.detached_by_partner(&body.0.reason).await?;
    Ok(HttpResponse::Ok().json(Detached {
        detached: true,
        changed,
    }))
}
