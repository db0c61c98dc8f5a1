//! Signing in and out, changing one's own password, and the extractors that tell
//! administrators and account users apart (each records its account in the request span).

use std::future::Future;
use std::pin::Pin;

use actix_web::{FromRequest, HttpRequest, HttpResponse, dev::Payload, post, web};
use http_kit::auth::bearer;
use http_kit::extract::client_ip;
use serde::Deserialize;
use utoipa::ToSchema;

use super::doc;
use crate::access;
use crate::error::{AppError, AppResult};
use crate::state::{State, run};
use crate::store::auth::{self, Principal, Session, SessionInfo};

/// The session of a request's bearer token, and the token.
async fn session_of(req: &HttpRequest) -> AppResult<(SessionInfo, String)> {
    let token = bearer(req).map(str::to_owned).ok_or_else(|| {
        AppError::unauthorized(
            "send `Authorization: Bearer TOKEN`; get a token from POST /api/v1/auth/login",
        )
    })?;
    let state = req
        .app_data::<State>()
        .cloned()
        .ok_or_else(|| AppError::internal("the application state is missing"))?;
    let t = token.clone();
    let info = run(&state, move |c| auth::session(c, &t)).await?;
    let account = match &info.principal {
        Principal::Admin { .. } => "(producer)",
        Principal::User { account_id, .. } => account_id.as_str(),
    };
    tracing::Span::current().record("account", account);
    Ok((info, token))
}

type Extracted<T> = Pin<Box<dyn Future<Output = AppResult<T>>>>;

/// Extracts what `pick` makes of the request's session.
fn extract<T: 'static>(
    req: &HttpRequest,
    pick: fn(SessionInfo, String) -> AppResult<T>,
) -> Extracted<T> {
    let req = req.clone();
    Box::pin(async move {
        let (info, token) = session_of(&req).await?;
        pick(info, token)
    })
}

/// Anyone signed in: an administrator or an account user.
#[derive(Debug)]
pub struct SignedIn {
    pub principal: Principal,
    pub email: String,
    pub token: String,
}

impl FromRequest for SignedIn {
    type Error = AppError;
    type Future = Extracted<Self>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        extract(req, |info, token| {
            Ok(SignedIn {
                principal: info.principal,
                email: info.email,
                token,
            })
        })
    }
}

/// A signed-in producer administrator.
#[derive(Debug)]
pub struct Admin {
    pub admin_id: String,
}

impl FromRequest for Admin {
    type Error = AppError;
    type Future = Extracted<Self>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        extract(req, |info, _| match info.principal {
            Principal::Admin { admin_id } => Ok(Admin { admin_id }),
            Principal::User { .. } => {
                Err(AppError::forbidden("this needs a producer administrator"))
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
    type Future = Extracted<Self>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        extract(req, |info, _| match info.principal {
            Principal::User {
                user_id,
                account_id,
            } => Ok(AccountUser {
                user_id,
                account_id,
            }),
            Principal::Admin { .. } => Err(AppError::forbidden(
                "this needs an account user; administrators use /api/v1/accounts/{id}/…",
            )),
        })
    }
}

/// A new administrator or user: an e-mail address and a password.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPerson {
    #[schema(example = "ops@customer.example")]
    pub email: String,
    /// 10 to 256 characters.
    #[schema(min_length = 10, max_length = 256, example = "correct horse battery")]
    pub password: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginBody {
    #[schema(example = "ops@customer.example")]
    email: String,
    #[schema(example = "correct horse battery")]
    password: String,
}

/// Signs in an administrator or an account user. Failed sign-ins slow down: after five for
/// an account (twenty from an address) each further one locks it for twice as long, from
/// 1 s up to 15 minutes, answered `TOO_MANY_REQUESTS` with `Retry-After`.
#[utoipa::path(
    tag = "auth",
    request_body = LoginBody,
    responses((status = 200, description = "Signed in", body = Session), doc::SignIn)
)]
#[post("/api/v1/auth/login")]
pub async fn login(
    state: State,
    req: HttpRequest,
    body: web::Json<LoginBody>,
) -> AppResult<web::Json<Session>> {
    let b = body.into_inner();
    let session = access::sign_in(&state, &b.email, &b.password, client_ip(&req)).await?;
    Ok(web::Json(session))
}

/// Ends the session of the bearer token.
#[utoipa::path(
    tag = "auth",
    security(("session" = [])),
    responses((status = 204, description = "Signed out"), doc::Session)
)]
#[post("/api/v1/auth/logout")]
pub async fn logout(state: State, req: HttpRequest) -> AppResult<HttpResponse> {
    let token = bearer(&req)
        .map(str::to_owned)
        .ok_or_else(|| AppError::unauthorized("not signed in"))?;
    run(&state, move |c| auth::logout(c, &token)).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    current_password: String,
    /// 10 to 256 characters.
    #[schema(
        min_length = 10,
        max_length = 256,
        example = "a much longer passphrase"
    )]
    new_password: String,
}

/// Changes one's own password (administrator or user). The current password is required
/// and counts against the sign-in throttle; every other session of the caller ends.
#[utoipa::path(
    tag = "auth",
    security(("session" = [])),
    request_body = PasswordChange,
    responses((status = 204, description = "Changed"), doc::PasswordChange)
)]
#[post("/api/v1/auth/password")]
pub async fn change_password(
    state: State,
    req: HttpRequest,
    who: SignedIn,
    body: web::Json<PasswordChange>,
) -> AppResult<HttpResponse> {
    let b = body.into_inner();
    access::change_password(
        &state,
        who.principal,
        &who.email,
        &b.current_password,
        &b.new_password,
        client_ip(&req),
        who.token,
    )
    .await?;
    Ok(HttpResponse::NoContent().finish())
}
