//! The producer API: products, accounts, users, entitlements, device tokens.

use actix_web::{HttpResponse, web};
use serde::Deserialize;

use super::auth::Admin;
use super::{State, run};
use crate::error::AppResult;
use crate::store::catalog::{self, FeatureSpec, LineItemSpec};
use crate::store::{auth, registry};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewProduct {
    name: String,
    #[serde(default)]
    version: String,
    #[serde(default)]
    features: Vec<FeatureSpec>,
}

pub async fn create_product(
    _: Admin,
    state: State,
    body: web::Json<NewProduct>,
) -> AppResult<HttpResponse> {
    let b = body.into_inner();
    let p = run(&state, move |c| {
        catalog::create_product(c, &b.name, &b.version, &b.features)
    })
    .await?;
    Ok(HttpResponse::Created().json(p))
}

pub async fn list_products(_: Admin, state: State) -> AppResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(run(&state, catalog::list_products).await?))
}

pub async fn get_product(_: Admin, state: State, id: web::Path<String>) -> AppResult<HttpResponse> {
    let id = id.into_inner();
    Ok(HttpResponse::Ok().json(run(&state, move |c| catalog::get_product(c, &id)).await?))
}

pub async fn add_feature(
    _: Admin,
    state: State,
    id: web::Path<String>,
    body: web::Json<FeatureSpec>,
) -> AppResult<HttpResponse> {
    let (id, spec) = (id.into_inner(), body.into_inner());
    let f = run(&state, move |c| catalog::add_feature(c, &id, &spec)).await?;
    Ok(HttpResponse::Created().json(f))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewAccount {
    name: String,
}

pub async fn create_account(
    _: Admin,
    state: State,
    body: web::Json<NewAccount>,
) -> AppResult<HttpResponse> {
    let name = body.into_inner().name;
    Ok(
        HttpResponse::Created()
            .json(run(&state, move |c| catalog::create_account(c, &name)).await?),
    )
}

pub async fn list_accounts(_: Admin, state: State) -> AppResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(run(&state, catalog::list_accounts).await?))
}

pub async fn get_account(_: Admin, state: State, id: web::Path<String>) -> AppResult<HttpResponse> {
    let id = id.into_inner();
    Ok(HttpResponse::Ok().json(run(&state, move |c| catalog::get_account(c, &id)).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    email: String,
    password: String,
}

pub async fn create_user(
    _: Admin,
    state: State,
    id: web::Path<String>,
    body: web::Json<NewUser>,
) -> AppResult<HttpResponse> {
    let (id, b) = (id.into_inner(), body.into_inner());
    let u = run(&state, move |c| {
        auth::create_user(c, &id, &b.email, &b.password)
    })
    .await?;
    Ok(HttpResponse::Created().json(u))
}

pub async fn list_users(_: Admin, state: State, id: web::Path<String>) -> AppResult<HttpResponse> {
    let id = id.into_inner();
    let users = run(&state, move |c| {
        catalog::get_account(c, &id)?;
        auth::list_users(c, &id)
    })
    .await?;
    Ok(HttpResponse::Ok().json(users))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewEntitlement {
    #[serde(default = "default_entitlement_name")]
    name: String,
    line_items: Vec<LineItemSpec>,
}

fn default_entitlement_name() -> String {
    "Entitlement".to_owned()
}

pub async fn create_entitlement(
    _: Admin,
    state: State,
    id: web::Path<String>,
    body: web::Json<NewEntitlement>,
) -> AppResult<HttpResponse> {
    let (id, b) = (id.into_inner(), body.into_inner());
    let e = run(&state, move |c| {
        catalog::create_entitlement(c, &id, &b.name, &b.line_items)
    })
    .await?;
    Ok(HttpResponse::Created().json(e))
}

pub async fn list_entitlements(
    _: Admin,
    state: State,
    id: web::Path<String>,
) -> AppResult<HttpResponse> {
    let id = id.into_inner();
    let e = run(&state, move |c| {
        catalog::get_account(c, &id)?;
        catalog::list_entitlements(c, &id)
    })
    .await?;
    Ok(HttpResponse::Ok().json(e))
}

pub async fn list_servers(
    _: Admin,
    state: State,
    id: web::Path<String>,
) -> AppResult<HttpResponse> {
    let id = id.into_inner();
    let timeout = state.settings.server_timeout().as_secs() as i64;
    let s = run(&state, move |c| {
        catalog::get_account(c, &id)?;
        registry::list_servers(c, &id, shared::now_unix(), timeout)
    })
    .await?;
    Ok(HttpResponse::Ok().json(s))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    name: String,
    /// Lifetime in days; the token does not expire when absent.
    #[serde(default)]
    expires_in_days: Option<i64>,
}

pub async fn create_token_for(
    state: &State,
    account_id: String,
    b: NewToken,
) -> AppResult<HttpResponse> {
    if b.expires_in_days.is_some_and(|d| !(1..=3650).contains(&d)) {
        return Err(crate::error::AppError::validation(
            "expires_in_days",
            "a token lives 1 to 3650 days",
        ));
    }
    let lifetime = b.expires_in_days.map(|d| d * 86_400);
    let (token, secret) = run(state, move |c| {
        auth::create_device_token(c, &account_id, &b.name, lifetime)
    })
    .await?;
    let mut v = serde_json::to_value(token).map_err(crate::error::AppError::internal)?;
    v["token"] = serde_json::Value::String(secret);
    Ok(HttpResponse::Created().json(v))
}

pub async fn create_token(
    _: Admin,
    state: State,
    id: web::Path<String>,
    body: web::Json<NewToken>,
) -> AppResult<HttpResponse> {
    create_token_for(&state, id.into_inner(), body.into_inner()).await
}

pub async fn list_tokens(_: Admin, state: State, id: web::Path<String>) -> AppResult<HttpResponse> {
    let id = id.into_inner();
    let t = run(&state, move |c| {
        catalog::get_account(c, &id)?;
        auth::list_device_tokens(c, &id)
    })
    .await?;
    Ok(HttpResponse::Ok().json(t))
}

pub async fn revoke_token(
    _: Admin,
    state: State,
    path: web::Path<(String, String)>,
) -> AppResult<HttpResponse> {
    let (id, token_id) = path.into_inner();
    run(&state, move |c| {
        auth::revoke_device_token(c, &id, &token_id)
    })
    .await?;
    Ok(HttpResponse::NoContent().finish())
}
