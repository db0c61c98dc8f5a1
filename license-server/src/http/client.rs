//! The client API: check a license out, renew it, return it; the features on offer and
//! the server's status.

use actix_web::{HttpRequest, HttpResponse, delete, get, post, put, web};
use http_kit::auth::bearer;
use http_kit::error_responses;
use http_kit::extract::Json;
use http_kit::openapi::{ErrDoc, err, too_large, too_slow};
use shared::ErrorCode::*;
use shared::lease::{CheckoutRequest, FeatureInfo, Lease, QueuePlace};

use super::{SMALL_BODY_LIMIT, lease_id};
use crate::error::ServiceError;
use crate::service::queue::Checkout;
use crate::service::{Service, StatusView};
use crate::stats::UsageStats;

/// The answers of a server that does not serve now.
pub(super) fn busy() -> ErrDoc {
    err(
        Unavailable,
        "this main is taking its backup's changes back, or the server is at its connection \
         limit; retry shortly (`Retry-After`)",
    )
}

pub(super) fn not_serving() -> [ErrDoc; 2] {
    [
        err(
            NotServing,
            "this server stands by; `serving_url` names the server that serves",
        ),
        err(
            MaintenanceIntervalExpired,
            "this backup has served alone longer than FAILOVER_MAINTENANCE_INTERVAL",
        ),
    ]
}

pub(super) fn not_durable() -> ErrDoc {
    err(InternalError, "the change could not be made durable")
}

/// The answers of a server that may not grant now.
fn not_grantable() -> [ErrDoc; 2] {
    [
        err(
            RightsExpired,
            "the server's rights are past their `serve_until` and no newer answer of the back \
             office has arrived",
        ),
        err(
            ServerNotBound,
            "the server holds no valid binding of its key from the back office, so its grants \
             could not be verified",
        ),
    ]
}

fn token_errors() -> [ErrDoc; 2] {
    [
        err(Unauthorized, "no lease token was sent"),
        err(Forbidden, "the token is not this lease's"),
    ]
}

error_responses!(
    CheckoutErrors = [
        err(
            ValidationError,
            "the body is not JSON or a field is out of range (`field` names it), a borrow \
             is longer than the feature's line item allows (`borrow_secs`, naming the maximum), \
             or `queue_secs` is past this server's QUEUE_MAX_WAIT (or sent with a borrow, or \
             to a cluster member)"
        ),
        err(
            Forbidden,
            "a borrow (`borrow_secs`) of a feature whose line item is not borrowable"
        ),
        too_large(SMALL_BODY_LIMIT),
        too_slow(),
        err(NotFound, "no such feature is licensed on this server"),
        err(
            NoLicenseAvailable,
            "every seat is taken (`next_free_at` says when one frees at the latest); with \
             `queue_secs`: more seats than licensed, the line is full, or the client's wait \
             in line ended without a seat"
        ),
        err(FeatureExpired, "every right of the feature has expired"),
        err(
            Excluded,
            "the options file keeps this client's user or host from the feature (`options_line`)"
        ),
        err(
            OverMax,
            "the options file's MAX for this client's user, host or group would pass (`options_line`)"
        ),
        err(
            Reserved,
            "the seats left are reserved for others by the options file (`options_line`)"
        ),
        not_serving(),
        not_grantable(),
        busy(),
        not_durable(),
    ]
);

/// Checks seats of a feature out. The same client checking the same feature out again
/// while its lease lives gets that lease back, renewed, when it proves it holds it: the
/// `client_secret` the lease was granted with, or the lease's token as
/// `Authorization: Bearer`. A checkout that only names its client ID is another client's
/// and gets a lease of its own. With `borrow_secs`, a new borrowed lease for offline use
/// (see the field). Once the count is used up, seats of the line item's overdraft are
/// granted, marked `overdraft`. The answer carries `grant`, signed by this server's key,
/// and `binding`, the back office's binding of that key: verify them with the producer's
/// public key.
#[utoipa::path(
    tag = "client",
    request_body = CheckoutRequest,
    security((), ("lease_token" = [])),
    responses(
        (status = 201, description = "The lease, durable (and held by the backup when one is in sync), with its signed grant", body = Lease),
        (status = 202, description = "With `queue_secs`, no seat free: the client's place in line, durable (and on the backup). Repeat the checkout to pick the seat up", body = QueuePlace),
        CheckoutErrors,
    )
)]
#[post("/leases")]
pub async fn checkout(
    svc: web::Data<Service>,
    stats: web::Data<UsageStats>,
    body: Json<CheckoutRequest, SMALL_BODY_LIMIT>,
    req: HttpRequest,
) -> Result<HttpResponse, ServiceError> {
    Ok(match svc.checkout_or_queue(&body.0, bearer(&req)).await? {
        Checkout::Granted(lease) => {
            record(&stats, &lease);
            HttpResponse::Created().json(lease)
        }
        Checkout::Queued(place) => HttpResponse::Accepted().json(place),
    })
}

error_responses!(
    LeaveErrors = [
        err(Unauthorized, "no token was sent"),
        err(Forbidden, "the token is not this place's"),
        err(
            NotFound,
            "no such place in line (granted a seat, its wait ended, left, or never queued)"
        ),
        not_serving(),
        busy(),
        not_durable(),
    ]
);

/// Leaves the line: the client no longer waits for a seat (those behind it move up).
#[utoipa::path(
    tag = "client",
    params(("id" = Uuid, Path, description = "The place's `queue_id`")),
    security(("lease_token" = [])),
    responses(
        (status = 204, description = "Left the line, durably"),
        LeaveErrors,
    )
)]
#[delete("/queue/{id}")]
pub async fn leave_queue(
    svc: web::Data<Service>,
    id: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ServiceError> {
    let id = lease_id(&id)?;
    svc.leave_queue(&id, bearer(&req)).await?;
    Ok(HttpResponse::NoContent().finish())
}

error_responses!(
    RenewErrors = [
        token_errors(),
        err(
            NotFound,
            "no such lease (expired, returned or never granted), or its feature is no longer licensed"
        ),
        err(
            FeatureExpired,
            "every right of the lease's feature has expired"
        ),
        not_serving(),
        not_grantable(),
        busy(),
        not_durable(),
    ]
);

/// Renews a lease: it lives another `LEASE_DURATION` from now (no longer than the
/// server's binding and rights may be served). The answer carries a new signed grant.
#[utoipa::path(
    tag = "client",
    params(("id" = Uuid, Path, description = "The lease's ID")),
    security(("lease_token" = [])),
    responses(
        (status = 200, description = "The lease, renewed and durable, with its signed grant", body = Lease),
        RenewErrors,
    )
)]
#[put("/leases/{id}")]
pub async fn renew(
    svc: web::Data<Service>,
    stats: web::Data<UsageStats>,
    id: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ServiceError> {
    let id = lease_id(&id)?;
    let lease = svc.renew(&id, bearer(&req)).await?;
    record(&stats, &lease);
    Ok(HttpResponse::Ok().json(lease))
}

error_responses!(
    ReturnErrors = [
        token_errors(),
        err(
            NotFound,
            "no such lease (expired, returned or never granted)"
        ),
        not_serving(),
        busy(),
        not_durable(),
    ]
);

/// Returns a lease: its seats are free at once.
#[utoipa::path(
    tag = "client",
    params(("id" = Uuid, Path, description = "The lease's ID")),
    security(("lease_token" = [])),
    responses(
        (status = 204, description = "Returned, durably"),
        ReturnErrors,
    )
)]
#[delete("/leases/{id}")]
pub async fn return_lease(
    svc: web::Data<Service>,
    id: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ServiceError> {
    let id = lease_id(&id)?;
    svc.return_lease(&id, bearer(&req)).await?;
    Ok(HttpResponse::NoContent().finish())
}

error_responses!(BusyErrors = [busy()]);

/// Every feature licensed here: seats licensed, in use and free, start and expiry.
#[utoipa::path(
    tag = "client",
    responses(
        (status = 200, description = "The features, by name and version", body = Vec<FeatureInfo>),
        BusyErrors,
    )
)]
#[get("/features")]
pub async fn features(svc: web::Data<Service>) -> HttpResponse {
    HttpResponse::Ok().json(svc.features())
}

/// This server's status: role, pair, back-office contact, rights, leases.
#[utoipa::path(
    tag = "client",
    responses((status = 200, description = "The status", body = StatusView))
)]
#[get("/status")]
pub async fn status(svc: web::Data<Service>) -> HttpResponse {
    HttpResponse::Ok().json(svc.status())
}

/// A grant or renewal in the usage statistics: its feature, its user (else its client).
fn record(stats: &UsageStats, lease: &Lease) {
    let user = lease.user.as_deref().unwrap_or(&lease.client_id);
    stats.record(&lease.feature, user, crate::cluster::now_ms() / 1000);
}
