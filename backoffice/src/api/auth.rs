//! Sign-in and the extractors that tell administrators, account users and servers apart.

use std::future::Future;
use std::pin::Pin;

use actix_web::{FromRequest, HttpRequest, HttpResponse, dev::Payload, web};
use serde::Deserialize;
use shared::ErrorCode;

use super::{State, run};
use crate::error::{AppError, AppResult};
use crate::store::auth::{self, Principal};

/// The bearer token of a request, if any.
pub fn bearer(req: &HttpRequest) -> Option<String> {
    let h = req.headers().get(actix_web::http::header::AUTHORIZATION)?;
    let s = h.to_str().ok()?;
    let t = s
        .strip_prefix("Bearer ")
        .or_else(|| s.strip_prefix("bearer "))?;
    let t = t.trim();
    (!t.is_empty() && t.len() <= 512).then(|| t.to_owned())
}

async fn principal(req: HttpRequest) -> AppResult<Principal> {
    let token = bearer(&req).ok_or_else(|| {
        AppError::unauthorized(
            "send `Authorization: Bearer TOKEN`; get a token from POST /api/v1/auth/login",
        )
    })?;
    let state = req
        .app_data::<State>()
        .cloned()
        .ok_or_else(|| AppError::internal("no state"))?;
    Ok(run(&state, move |c| auth::session(c, &token))
        .await?
        .principal)
}

/// A signed-in producer administrator.
#[derive(Debug)]
pub struct Admin {
    pub admin_id: String,
}

impl FromRequest for Admin {
    type Error = AppError;
    type Future = Pin<Box<dyn Future<Output = AppResult<Self>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            match principal(req).await? {
                Principal::Admin { admin_id } => Ok(Admin { admin_id }),
                Principal::User { .. } => Err(AppError::new(
                    ErrorCode::Forbidden,
                    "this needs a producer administrator",
                )),
            }
        })
    }
}

/// A signed-in account user: everything it does is within `account_id`.
#[derive(Debug)]
pub struct AccountUser {
    pub user_id: String,
    pub account_id: String,
}

impl FromRequest for AccountUser {
    type Error = AppError;
    type Future = Pin<Box<dyn Future<Output = AppResult<Self>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            match principal(req).await? {
                Principal::User {
                    user_id,
                    account_id,
                } => Ok(AccountUser {
                    user_id,
                    account_id,
                }),
                Principal::Admin { .. } => Err(AppError::new(
                    ErrorCode::Forbidden,
                    "this needs an account user; administrators use /api/v1/accounts/{id}/…",
                )),
            }
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginBody {
    email: String,
    password: String,
}

pub async fn login(state: State, body: web::Json<LoginBody>) -> AppResult<HttpResponse> {
    let body = body.into_inner();
    if body.email.len() > 254 || body.password.len() > 256 {
        return Err(AppError::unauthorized("wrong e-mail or password"));
    }
    let lifetime = state.settings.session_lifetime.as_secs() as i64;
    let session = run(&state, move |c| {
        auth::login(c, &body.email, &body.password, lifetime)
    })
    .await?;
    Ok(HttpResponse::Ok().json(session))
}

pub async fn logout(state: State, req: HttpRequest) -> AppResult<HttpResponse> {
    let token = bearer(&req).ok_or_else(|| AppError::unauthorized("not signed in"))?;
    run(&state, move |c| auth::logout(c, &token)).await?;
    Ok(HttpResponse::NoContent().finish())
}
