//! The account API: what an account user sees and does (only within its own account).

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use shared::HostId;

use super::auth::AccountUser;
use super::producer::{NewToken, create_token_for};
use super::{State, run};
use crate::error::{AppError, AppResult};
use crate::store::{auth, catalog, registry};

fn timeout(state: &State) -> i64 {
    state.settings.server_timeout().as_secs() as i64
}

pub async fn me(user: AccountUser, state: State) -> AppResult<HttpResponse> {
    let account = run(&state, move |c| catalog::get_account(c, &user.account_id)).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "user_id": user.user_id, "account": account })))
}

pub async fn list_servers(user: AccountUser, state: State) -> AppResult<HttpResponse> {
    let t = timeout(&state);
    let s = run(&state, move |c| {
        registry::list_servers(c, &user.account_id, shared::now_unix(), t)
    })
    .await?;
    Ok(HttpResponse::Ok().json(s))
}

pub async fn view_server(
    user: AccountUser,
    state: State,
    id: web::Path<String>,
) -> AppResult<HttpResponse> {
    let (id, t) = (id.into_inner(), timeout(&state));
    let v = run(&state, move |c| {
        registry::view_server(c, &user.account_id, &id, shared::now_unix(), t)
    })
    .await?;
    Ok(HttpResponse::Ok().json(v))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    /// Seconds of history, one day when absent.
    #[serde(default)]
    window: Option<i64>,
}

pub async fn usage(
    user: AccountUser,
    state: State,
    id: web::Path<String>,
    q: web::Query<UsageQuery>,
) -> AppResult<HttpResponse> {
    let window = q.window.unwrap_or(86_400).clamp(60, 90 * 86_400);
    let id = id.into_inner();
    let since = shared::now_unix() - window;
    let points = run(&state, move |c| {
        registry::usage_history(c, &user.account_id, &id, since)
    })
    .await?;
    Ok(HttpResponse::Ok().json(points))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewPair {
    main_hostid: String,
    backup_hostid: String,
}

/// Parses a hostid field into a validation error that names the field.
pub fn hostid(field: &str, value: &str) -> AppResult<HostId> {
    HostId::parse(value).map_err(|e| AppError::validation(field, e.to_string()))
}

pub async fn register_pair(
    user: AccountUser,
    state: State,
    body: web::Json<NewPair>,
) -> AppResult<HttpResponse> {
    let main = hostid("main_hostid", &body.main_hostid)?;
    let backup = hostid("backup_hostid", &body.backup_hostid)?;
    let p = run(&state, move |c| {
        registry::register_pair(c, &user.account_id, &main, &backup)
    })
    .await?;
    Ok(HttpResponse::Created().json(p))
}

pub async fn remove_backup(
    user: AccountUser,
    state: State,
    id: web::Path<String>,
) -> AppResult<HttpResponse> {
    let (id, t) = (id.into_inner(), timeout(&state));
    run(&state, move |c| {
        registry::remove_backup(c, &user.account_id, &id, shared::now_unix(), t)
    })
    .await?;
    Ok(HttpResponse::NoContent().finish())
}

pub async fn entitlements(user: AccountUser, state: State) -> AppResult<HttpResponse> {
    let e = run(&state, move |c| {
        catalog::list_entitlements(c, &user.account_id)
    })
    .await?;
    Ok(HttpResponse::Ok().json(e))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewMapping {
    activation_id: String,
    /// A standalone server, or either member of a pair (rights go to the pair).
    server_id: String,
    quantity: i64,
}

pub async fn map_rights(
    user: AccountUser,
    state: State,
    body: web::Json<NewMapping>,
) -> AppResult<HttpResponse> {
    let b = body.into_inner();
    let m = run(&state, move |c| {
        registry::map_rights(
            c,
            &user.account_id,
            &b.activation_id,
            &b.server_id,
            b.quantity,
        )
    })
    .await?;
    Ok(HttpResponse::Created().json(m))
}

pub async fn unmap(
    user: AccountUser,
    state: State,
    id: web::Path<String>,
) -> AppResult<HttpResponse> {
    let id = id.into_inner();
    run(&state, move |c| registry::unmap(c, &user.account_id, &id)).await?;
    Ok(HttpResponse::NoContent().finish())
}

pub async fn list_tokens(user: AccountUser, state: State) -> AppResult<HttpResponse> {
    let t = run(&state, move |c| {
        auth::list_device_tokens(c, &user.account_id)
    })
    .await?;
    Ok(HttpResponse::Ok().json(t))
}

pub async fn create_token(
    user: AccountUser,
    state: State,
    body: web::Json<NewToken>,
) -> AppResult<HttpResponse> {
    create_token_for(&state, user.account_id, body.into_inner()).await
}

pub async fn revoke_token(
    user: AccountUser,
    state: State,
    id: web::Path<String>,
) -> AppResult<HttpResponse> {
    let id = id.into_inner();
    run(&state, move |c| {
        auth::revoke_device_token(c, &user.account_id, &id)
    })
    .await?;
    Ok(HttpResponse::NoContent().finish())
}
