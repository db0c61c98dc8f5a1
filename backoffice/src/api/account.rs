//! The account API: what an account user sees and does, only within its own account.

use actix_web::{HttpResponse, delete, get, post, web};
use serde::{Deserialize, Serialize};
use shared::HostId;
use utoipa::{IntoParams, ToSchema};

use super::auth::AccountUser;
use super::doc;
use super::producer::NewToken;
use crate::error::{AppError, AppResult};
use crate::state::{State, run};
use crate::store::catalog::{self, Account, Entitlement};
use crate::store::mappings::{self, Mapping};
use crate::store::registry::{self, ClusterView, PairView, ServerSummary, ServerView};
use crate::store::tokens::{self, DeviceToken, IssuedToken};
use crate::store::usage::{
    IntervalUsage, LineItemUsage, UsagePoint, entitlement_intervals, server_intervals,
    usage_history,
};

#[derive(Serialize, ToSchema)]
pub struct Me {
    pub user_id: String,
    pub account: Account,
}

/// The signed-in user and its account.
#[utoipa::path(
    tag = "account",
    security(("session" = [])),
    responses((status = 200, description = "The user and its account", body = Me), doc::UserRead)
)]
#[get("/api/v1/account")]
pub async fn me(user: AccountUser, state: State) -> AppResult<web::Json<Me>> {
    let id = user.account_id.clone();
    let account = run(&state, move |c| catalog::get_account(c, &id)).await?;
    Ok(web::Json(Me {
        user_id: user.user_id,
        account,
    }))
}

/// The account's license servers, with their pairs' status.
#[utoipa::path(
    tag = "account",
    operation_id = "list_own_servers",
    security(("session" = [])),
    responses((status = 200, description = "The account's servers, by hostid", body = Vec<ServerSummary>), doc::UserRead)
)]
#[get("/api/v1/account/servers")]
pub async fn list_servers(
    user: AccountUser,
    state: State,
) -> AppResult<web::Json<Vec<ServerSummary>>> {
    let t = state.server_timeout();
    let s = run(&state, move |c| {
        registry::list_servers(c, &user.account_id, shared::now_unix(), t)
    })
    .await?;
    Ok(web::Json(s))
}

/// One server: its pair, its rights, what it last reported.
#[utoipa::path(
    tag = "account",
    security(("session" = [])),
    params(("id" = String, Path, description = "Server ID")),
    responses((status = 200, description = "The server", body = ServerView), doc::UserReadOne)
)]
#[get("/api/v1/account/servers/{id}")]
pub async fn view_server(
    user: AccountUser,
    state: State,
    id: web::Path<String>,
) -> AppResult<web::Json<ServerView>> {
    let (id, t) = (id.into_inner(), state.server_timeout());
    let v = run(&state, move |c| {
        registry::view_server(c, &user.account_id, &id, shared::now_unix(), t)
    })
    .await?;
    Ok(web::Json(v))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    /// Seconds of history, 60 to 7,776,000 (90 days); one day when absent.
    #[param(minimum = 60, maximum = 7_776_000, example = 86400)]
    #[serde(default)]
    window: Option<i64>,
}

/// Usage samples of a server and its pair partner, oldest first.
#[utoipa::path(
    tag = "account",
    security(("session" = [])),
    params(("id" = String, Path, description = "Server ID"), UsageQuery),
    responses((status = 200, description = "Samples, oldest first", body = Vec<UsagePoint>), doc::UserReadOne)
)]
#[get("/api/v1/account/servers/{id}/usage")]
pub async fn usage(
    user: AccountUser,
    state: State,
    id: web::Path<String>,
    q: web::Query<UsageQuery>,
) -> AppResult<web::Json<Vec<UsagePoint>>> {
    let id = id.into_inner();
    let since = since(&q);
    let points = run(&state, move |c| {
        usage_history(c, &user.account_id, &id, since)
    })
    .await?;
    Ok(web::Json(points))
}

/// The usage report of a server and its pair partner: its closed intervals, newest
/// first, each added up over the servers that served parts of it.
#[utoipa::path(
    tag = "account",
    security(("session" = [])),
    params(("id" = String, Path, description = "Server ID"), UsageQuery),
    responses((status = 200, description = "Intervals, newest first", body = Vec<IntervalUsage>), doc::UserReadOne)
)]
#[get("/api/v1/account/servers/{id}/usage-intervals")]
pub async fn usage_intervals(
    user: AccountUser,
    state: State,
    id: web::Path<String>,
    q: web::Query<UsageQuery>,
) -> AppResult<web::Json<Vec<IntervalUsage>>> {
    let since = since(&q);
    let id = id.into_inner();
    let intervals = run(&state, move |c| {
        server_intervals(c, &user.account_id, &id, since)
    })
    .await?;
    Ok(web::Json(intervals))
}

/// The usage report of an entitlement: for each of its line items and each server it is
/// mapped to (with that server's pair partner), its features' closed intervals, newest
/// first.
#[utoipa::path(
    tag = "account",
    security(("session" = [])),
    params(("id" = String, Path, description = "Entitlement ID"), UsageQuery),
    responses((status = 200, description = "Per line item and server", body = Vec<LineItemUsage>), doc::UserReadOne)
)]
#[get("/api/v1/account/entitlements/{id}/usage")]
pub async fn entitlement_usage(
    user: AccountUser,
    state: State,
    id: web::Path<String>,
    q: web::Query<UsageQuery>,
) -> AppResult<web::Json<Vec<LineItemUsage>>> {
    let since = since(&q);
    let id = id.into_inner();
    let items = run(&state, move |c| {
        entitlement_intervals(c, &user.account_id, &id, since)
    })
    .await?;
    Ok(web::Json(items))
}

/// The start of the window a usage query asks for.
fn since(q: &UsageQuery) -> i64 {
    shared::now_unix() - q.window.unwrap_or(86_400).clamp(60, 90 * 86_400)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPair {
    #[schema(value_type = HostId)]
    main_hostid: String,
    #[schema(value_type = HostId)]
    backup_hostid: String,
}

/// Parses a hostid field into a validation error that names the field.
fn hostid(field: &str, value: &str) -> AppResult<HostId> {
    HostId::parse(value).map_err(|e| AppError::validation(field, e.to_string()))
}

/// Registers a failover pair by hand, before either server has started.
#[utoipa::path(
    tag = "account",
    security(("session" = [])),
    request_body = NewPair,
    responses((status = 201, description = "The pair, both members expected", body = PairView), doc::UserPair)
)]
#[post("/api/v1/account/pairs")]
pub async fn register_pair(
    user: AccountUser,
    state: State,
    body: web::Json<NewPair>,
) -> AppResult<HttpResponse> {
    let main = hostid("main_hostid", &body.main_hostid)?;
    let backup = hostid("backup_hostid", &body.backup_hostid)?;
    let account = user.account_id.clone();
    let p = run(&state, move |c| {
        registry::register_pair(c, &user.account_id, &main, &backup)
    })
    .await?;
    state.links.changed(&account);
    Ok(HttpResponse::Created().json(p))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewCluster {
    /// The three members' hostids, of one type; the first holds the cluster's rights.
    #[schema(value_type = Vec<HostId>, min_items = 3, max_items = 3)]
    hostids: Vec<String>,
}

/// Registers a three-member failover cluster by hand, before its members start (each
/// member's `CLUSTER_MEMBER_HOSTIDS` must then name the other two).
#[utoipa::path(
    tag = "account",
    security(("session" = [])),
    request_body = NewCluster,
    responses((status = 201, description = "The cluster, its members expected", body = ClusterView), doc::UserPair)
)]
#[post("/api/v1/account/clusters")]
pub async fn register_cluster(
    user: AccountUser,
    state: State,
    body: web::Json<NewCluster>,
) -> AppResult<HttpResponse> {
    if body.hostids.len() != 3 {
        return Err(AppError::validation(
            "hostids",
            format!(
                "a cluster has three members: name all three ({} named)",
                body.hostids.len()
            ),
        ));
    }
    let members = body
        .hostids
        .iter()
        .map(|h| hostid("hostids", h))
        .collect::<AppResult<Vec<_>>>()?;
    let account = user.account_id.clone();
    let v = run(&state, move |c| {
        registry::register_cluster(c, &user.account_id, &members)
    })
    .await?;
    state.links.changed(&account);
    Ok(HttpResponse::Created().json(v))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemberReplacement {
    /// The member that leaves the cluster.
    #[schema(value_type = HostId)]
    out_hostid: String,
    /// The server that takes its place (not registered yet).
    #[schema(value_type = HostId)]
    new_hostid: String,
}

/// Replaces a cluster's member: the leaving member gets none of the cluster's rights again;
/// the members that stay are refused until their `CLUSTER_MEMBER_HOSTIDS` name the new one.
#[utoipa::path(
    tag = "account",
    security(("session" = [])),
    params(("id" = String, Path, description = "Cluster ID")),
    request_body = MemberReplacement,
    responses((status = 200, description = "The cluster, the new member expected", body = ClusterView), doc::UserReplaceMember)
)]
#[post("/api/v1/account/clusters/{id}/replace-member")]
pub async fn replace_member(
    user: AccountUser,
    state: State,
    id: web::Path<String>,
    body: web::Json<MemberReplacement>,
) -> AppResult<web::Json<ClusterView>> {
    let out = hostid("out_hostid", &body.out_hostid)?;
    let new = hostid("new_hostid", &body.new_hostid)?;
    let account = user.account_id.clone();
    let id = id.into_inner();
    let v = run(&state, move |c| {
        registry::replace_member(c, &user.account_id, &id, &out, &new)
    })
    .await?;
    state.links.changed(&account);
    Ok(web::Json(v))
}

/// Takes a pair's backup out of the pair; refused while the pair's seats are in use.
#[utoipa::path(
    tag = "account",
    security(("session" = [])),
    params(("id" = String, Path, description = "Pair ID")),
    responses((status = 204, description = "Removed"), doc::UserRemoveBackup)
)]
#[delete("/api/v1/account/pairs/{id}/backup")]
pub async fn remove_backup(
    user: AccountUser,
    state: State,
    id: web::Path<String>,
) -> AppResult<HttpResponse> {
    let (id, t) = (id.into_inner(), state.server_timeout());
    let account = user.account_id.clone();
    run(&state, move |c| {
        registry::remove_backup(c, &user.account_id, &id, shared::now_unix(), t)
    })
    .await?;
    state.links.changed(&account);
    Ok(HttpResponse::NoContent().finish())
}

/// The account's entitlements, with where each line item is mapped.
#[utoipa::path(
    tag = "account",
    operation_id = "list_own_entitlements",
    security(("session" = [])),
    responses((status = 200, description = "The entitlements, oldest first", body = Vec<Entitlement>), doc::UserRead)
)]
#[get("/api/v1/account/entitlements")]
pub async fn entitlements(
    user: AccountUser,
    state: State,
) -> AppResult<web::Json<Vec<Entitlement>>> {
    let e = run(&state, move |c| {
        catalog::list_entitlements(c, &user.account_id)
    })
    .await?;
    Ok(web::Json(e))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewMapping {
    #[schema(example = "ACT-7K3M-Q9ZD-2WXR-H4TN")]
    activation_id: String,
    /// A standalone server, or either member of a pair (rights go to the pair).
    server_id: String,
    /// Seats to add, 1 to 1,000,000.
    #[schema(minimum = 1, maximum = 1_000_000, example = 5)]
    quantity: i64,
}

/// Maps more of a line item to a server or its pair; the servers receive it at their next
/// poll.
#[utoipa::path(
    tag = "account",
    security(("session" = [])),
    request_body = NewMapping,
    responses((status = 201, description = "The line item's mapping to the holder, with its new total", body = Mapping), doc::UserMap)
)]
#[post("/api/v1/account/mappings")]
pub async fn map_rights(
    user: AccountUser,
    state: State,
    body: web::Json<NewMapping>,
) -> AppResult<HttpResponse> {
    let b = body.into_inner();
    let account = user.account_id.clone();
    let m = run(&state, move |c| {
        mappings::map_rights(
            c,
            &user.account_id,
            &b.activation_id,
            &b.server_id,
            b.quantity,
        )
    })
    .await?;
    state.links.changed(&account);
    Ok(HttpResponse::Created().json(m))
}

/// Removes a mapping; the servers holding their live link drop the rights at once, the
/// others at their next poll.
#[utoipa::path(
    tag = "account",
    security(("session" = [])),
    params(("id" = String, Path, description = "Mapping ID")),
    responses((status = 204, description = "Removed"), doc::UserWrite)
)]
#[delete("/api/v1/account/mappings/{id}")]
pub async fn unmap(
    user: AccountUser,
    state: State,
    id: web::Path<String>,
) -> AppResult<HttpResponse> {
    let (id, account) = (id.into_inner(), user.account_id.clone());
    run(&state, move |c| mappings::unmap(c, &user.account_id, &id)).await?;
    state.links.changed(&account);
    Ok(HttpResponse::NoContent().finish())
}

/// The account's device tokens (without secrets).
#[utoipa::path(
    tag = "account",
    operation_id = "list_own_tokens",
    security(("session" = [])),
    responses((status = 200, description = "The tokens, newest first", body = Vec<DeviceToken>), doc::UserRead)
)]
#[get("/api/v1/account/device-tokens")]
pub async fn list_tokens(
    user: AccountUser,
    state: State,
) -> AppResult<web::Json<Vec<DeviceToken>>> {
    let t = run(&state, move |c| {
        tokens::list_device_tokens(c, &user.account_id)
    })
    .await?;
    Ok(web::Json(t))
}

/// Creates a device token for the account's servers; its secret is in this answer only.
#[utoipa::path(
    tag = "account",
    operation_id = "create_own_token",
    security(("session" = [])),
    request_body = NewToken,
    responses((status = 201, description = "The token, with its secret (shown only now)", body = IssuedToken), doc::UserWrite)
)]
#[post("/api/v1/account/device-tokens")]
pub async fn create_token(
    user: AccountUser,
    state: State,
    body: web::Json<NewToken>,
) -> AppResult<HttpResponse> {
    let b = body.into_inner();
    let t = run(&state, move |c| {
        tokens::create_device_token(c, &user.account_id, &b.name, b.expires_in_days)
    })
    .await?;
    Ok(HttpResponse::Created().json(t))
}

/// Revokes one of the account's device tokens.
#[utoipa::path(
    tag = "account",
    operation_id = "revoke_own_token",
    security(("session" = [])),
    params(("id" = String, Path, description = "Device token ID")),
    responses((status = 204, description = "Revoked"), doc::UserWrite)
)]
#[delete("/api/v1/account/device-tokens/{id}")]
pub async fn revoke_token(
    user: AccountUser,
    state: State,
    id: web::Path<String>,
) -> AppResult<HttpResponse> {
    let id = id.into_inner();
    run(&state, move |c| {
        tokens::revoke_device_token(c, &user.account_id, &id)
    })
    .await?;
    Ok(HttpResponse::NoContent().finish())
}
