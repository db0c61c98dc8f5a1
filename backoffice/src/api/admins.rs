//! Producer administrators: listing them and adding one (an administrator's recovery
//! without the console; `backoffice admin add` and `reset-password` are the console's).

use super::auth::{Admin, NewPerson};
use super::doc;
use crate::access;
use crate::error::AppResult;
use crate::state::{State, run};
use crate::store::auth;
use actix_web::{get, post, web};

/// Every producer administrator.
#[utoipa::path(
    tag = "admins",
    security(("session" = [])),
    responses((status = 200, description = "The administrators, by e-mail address", body = Vec<auth::Admin>), doc::AdminRead)
)]
#[get("/api/v1/admins")]
pub async fn list_admins(_: Admin, state: State) -> AppResult<web::Json<Vec<auth::Admin>>> {
    Ok(web::Json(run(&state, auth::list_admins).await?))
}

/// Adds a producer administrator.
#[utoipa::path(
    tag = "admins",
    security(("session" = [])),
    request_body = NewPerson,
    responses((status = 201, description = "The new administrator", body = auth::Admin), doc::AdminCreate)
)]
#[post("/api/v1/admins")]
pub async fn add_admin(
    _: Admin,
    state: State,
    body: web::Json<NewPerson>,
) -> AppResult<actix_web::HttpResponse> {
    let b = body.into_inner();
    let admin = access::add_admin(&state, &b.email, &b.password).await?;
    Ok(actix_web::HttpResponse::Created().json(admin))
}
