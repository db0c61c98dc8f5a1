//! The cluster API: what clients and operators read of a three-member cluster
//! (`GET /api/v1/cluster`), and what members call on each other (`/api/v1/member/*`) (`PAIR_TOKEN`, checked
//! by the scope before anything runs): the hello every heartbeat and raft's messages.
//! Every member request also names its sender and its clock; a sender that is not a
//! member of this cluster, or whose clock is more than an hour off, is refused.

use actix_web::{HttpRequest, HttpResponse, get, post, web};
use http_kit::error_responses;
use http_kit::extract::Json;
use http_kit::openapi::{ErrDoc, err, too_large, too_slow};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use shared::ErrorCode::*;

use super::SMALL_BODY_LIMIT;
use crate::cluster::network::{MEMBER_HEADER, TIME_HEADER};
use crate::cluster::{Cluster, ClusterView, Hello, NodeId, TypeConfig};
use crate::error::ServiceError;
use crate::service::Service;

/// Largest raft message: a batch of entries, or a snapshot chunk of 1 MiB as JSON.
pub const RAFT_BODY_LIMIT: usize = 8 << 20;

fn member_of(svc: &Service) -> Result<&Cluster, ServiceError> {
    svc.cluster().map(|c| &**c).ok_or_else(|| {
        ServiceError::RoleConflict(
            "this server is not a cluster member (CLUSTER_MEMBER_HOSTIDS is not set)".into(),
        )
    })
}

fn not_member() -> ErrDoc {
    err(
        RoleConflict,
        "this server is not a member of a cluster, or the sender is not one of its members",
    )
}

fn members() -> [ErrDoc; 4] {
    [
        err(Unauthorized, "no member token was sent"),
        err(Forbidden, "the member token is not PAIR_TOKEN"),
        not_member(),
        err(
            ClockSkew,
            "the sender's clock is more than an hour off this member's",
        ),
    ]
}

/// The sender of a member request, checked.
fn sender(c: &Cluster, req: &HttpRequest) -> Result<(), ServiceError> {
    let header = |name| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let hostid = header(MEMBER_HEADER).ok_or_else(|| {
        ServiceError::validation(MEMBER_HEADER, "member requests name their sender's hostid")
    })?;
    let time = header(TIME_HEADER).and_then(|t| t.parse::<i64>().ok());
    c.check_sender(&hostid, time)
}

error_responses!(ViewErrors = [not_member()]);

/// The cluster as this member sees it: its status, who leads and serves, every member's
/// URL for clients and whether it is up.
#[utoipa::path(
    tag = "client",
    responses(
        (status = 200, description = "The cluster", body = ClusterView),
        ViewErrors,
    )
)]
#[get("/cluster")]
pub async fn cluster(svc: web::Data<Service>) -> Result<HttpResponse, ServiceError> {
    Ok(HttpResponse::Ok().json(member_of(&svc)?.view()))
}

error_responses!(
    HelloErrors = [
        err(ValidationError, "the body is not a hello"),
        too_large(SMALL_BODY_LIMIT),
        too_slow(),
        err(Unauthorized, "no member token was sent"),
        err(Forbidden, "the member token is not PAIR_TOKEN"),
        not_member(),
    ]
);

/// A member's hello (every `CLUSTER_HEARTBEAT_INTERVAL`): answered with this member's,
/// after checking the sender is one of this cluster's members. A sender whose clock is
/// too far off gets the answer too, and refuses this member itself by name: it learns
/// from the answer whether this member holds a cluster log.
#[utoipa::path(
    tag = "cluster",
    request_body = Hello,
    security(("pair_token" = [])),
    responses(
        (status = 200, description = "This member's hello", body = Hello),
        HelloErrors,
    )
)]
#[post("/hello")]
pub async fn member_hello(
    svc: web::Data<Service>,
    body: Json<Hello, SMALL_BODY_LIMIT>,
) -> Result<HttpResponse, ServiceError> {
    Ok(HttpResponse::Ok().json(member_of(&svc)?.answer_hello(&body.0)?))
}

error_responses!(
    RaftErrors = [
        err(ValidationError, "the body is not a raft message"),
        too_large(RAFT_BODY_LIMIT),
        too_slow(),
        members(),
    ]
);

/// Raft: entries from the leader (or its heartbeat). The answer is openraft's result.
#[utoipa::path(
    tag = "cluster",
    request_body(content = Object, description = "openraft's AppendEntriesRequest (members run the same version)"),
    security(("pair_token" = [])),
    responses(
        (status = 200, description = "openraft's result: `{\"Ok\": …}` or `{\"Err\": …}`", body = Object),
        RaftErrors,
    )
)]
#[post("/raft/append")]
pub async fn raft_append(
    svc: web::Data<Service>,
    req: HttpRequest,
    body: Json<AppendEntriesRequest<TypeConfig>, RAFT_BODY_LIMIT>,
) -> Result<HttpResponse, ServiceError> {
    let c = member_of(&svc)?;
    sender(c, &req)?;
    Ok(HttpResponse::Ok().json(c.raft.append_entries(body.0).await))
}

/// Raft: a candidate asks for this member's vote.
#[utoipa::path(
    tag = "cluster",
    request_body(content = Object, description = "openraft's VoteRequest"),
    security(("pair_token" = [])),
    responses(
        (status = 200, description = "openraft's result: `{\"Ok\": …}` or `{\"Err\": …}`", body = Object),
        RaftErrors,
    )
)]
#[post("/raft/vote")]
pub async fn raft_vote(
    svc: web::Data<Service>,
    req: HttpRequest,
    body: Json<VoteRequest<NodeId>, RAFT_BODY_LIMIT>,
) -> Result<HttpResponse, ServiceError> {
    let c = member_of(&svc)?;
    sender(c, &req)?;
    Ok(HttpResponse::Ok().json(c.raft.vote(body.0).await))
}

/// Raft: a chunk of the leader's snapshot of the pool, for a member too far behind.
#[utoipa::path(
    tag = "cluster",
    request_body(content = Object, description = "openraft's InstallSnapshotRequest"),
    security(("pair_token" = [])),
    responses(
        (status = 200, description = "openraft's result: `{\"Ok\": …}` or `{\"Err\": …}`", body = Object),
        RaftErrors,
    )
)]
#[post("/raft/snapshot")]
pub async fn raft_snapshot(
    svc: web::Data<Service>,
    req: HttpRequest,
    body: Json<InstallSnapshotRequest<TypeConfig>, RAFT_BODY_LIMIT>,
) -> Result<HttpResponse, ServiceError> {
    let c = member_of(&svc)?;
    sender(c, &req)?;
    Ok(HttpResponse::Ok().json(c.raft.install_snapshot(body.0).await))
}
