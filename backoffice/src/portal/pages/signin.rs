//! Signing in and out of the portal. The sign-in form carries a double-submit CSRF token (a
//! cookie and a hidden field); sign-ins go through the same throttle and hashing pool as
//! the API's.

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;
use http_kit::extract::client_ip;
use serde::Deserialize;
use shared::ErrorCode;

use super::{CsrfForm, PageResult, render};
use crate::access;
use crate::portal::cookies::{self, SESSION_COOKIE, SIGNIN, SIGNIN_COOKIE, redirect_with, removal};
use crate::portal::errors::PortalError;
use crate::portal::layout::Layout;
use crate::portal::session::{PortalUser, check_csrf};
use crate::state::{State, run};
use crate::store::auth;

#[derive(Template)]
#[template(path = "signin.html")]
struct SigninPage {
    layout: Layout,
    csrf: String,
    email: String,
    next: String,
    error: Option<String>,
    notice: Option<String>,
}

#[derive(Deserialize)]
pub struct SigninQuery {
    #[serde(default)]
    expired: Option<String>,
    #[serde(default)]
    next: Option<String>,
}

/// What the sign-in page shows besides the form.
#[derive(Default)]
struct Shown {
    email: String,
    next: String,
    error: Option<String>,
    notice: Option<String>,
    retry_after: Option<u64>,
}

/// Renders the sign-in form with a fresh double-submit token (cookie and hidden field).
fn signin_page(req: &HttpRequest, status: StatusCode, shown: Shown) -> PageResult {
    let token = shared::random_token::<24>();
    let mut layout = Layout::bare("Sign in");
    layout.flash = cookies::flash_of(req);
    let page = SigninPage {
        layout,
        csrf: token.clone(),
        email: shown.email,
        next: cookies::safe_next(&shown.next).unwrap_or("").to_owned(),
        error: shown.error,
        notice: shown.notice,
    };
    let mut resp = render(req, status, &page)?;
    resp.add_cookie(&cookies::cookie(req, SIGNIN_COOKIE, token, 3600))
        .map_err(|e| PortalError::Template(e.to_string()))?;
    if let Some(s) = shown.retry_after {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from(s));
    }
    Ok(resp)
}

pub async fn signin_form(req: HttpRequest, q: web::Query<SigninQuery>) -> PageResult {
    let q = q.into_inner();
    let shown = Shown {
        next: q.next.unwrap_or_default(),
        notice: q
            .expired
            .is_some()
            .then(|| "Your session has expired. Sign in again.".to_owned()),
        ..Shown::default()
    };
    signin_page(&req, StatusCode::OK, shown)
}

#[derive(Deserialize)]
pub struct SigninForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    next: String,
}

pub async fn signin(req: HttpRequest, state: State, form: web::Form<SigninForm>) -> PageResult {
    let f = form.into_inner();
    let again = |error: &str| Shown {
        email: f.email.clone(),
        next: f.next.clone(),
        error: Some(error.to_owned()),
        ..Shown::default()
    };
    let expected = req
        .cookie(SIGNIN_COOKIE)
        .map(|c| c.value().to_owned())
        .unwrap_or_default();
    if check_csrf(&expected, &f.csrf).is_err() {
        let shown = again(
            "The sign-in form had expired or did not come from this portal. Please sign in again.",
        );
        return signin_page(&req, StatusCode::FORBIDDEN, shown);
    }
    if f.email.trim().is_empty() || f.password.is_empty() {
        let shown = again("Enter your e-mail address and your password.");
        return signin_page(&req, StatusCode::UNAUTHORIZED, shown);
    }
    let session = match access::sign_in(&state, &f.email, &f.password, client_ip(&req)).await {
        Ok(s) => s,
        Err(e) if e.code() == ErrorCode::Unauthorized => {
            let shown = again("Wrong e-mail address or password.");
            return signin_page(&req, StatusCode::UNAUTHORIZED, shown);
        }
        Err(e) if e.code() == ErrorCode::TooManyRequests => {
            let shown = Shown {
                retry_after: e.retry_after(),
                ..again(&format!("{}.", capitalise(e.message())))
            };
            return signin_page(&req, StatusCode::TOO_MANY_REQUESTS, shown);
        }
        Err(e) => return Err(e.into()),
    };
    if session.kind == "admin" {
        // The portal is for account users: end the administrator's session at once.
        let token = session.token;
        run(&state, move |c| auth::logout(c, &token)).await?;
        let shown = again(
            "This is a producer administrator. The portal is for the users of customer \
             accounts; administrators work through the API under /api/v1.",
        );
        return signin_page(&req, StatusCode::FORBIDDEN, shown);
    }
    let to = cookies::safe_next(&f.next)
        .unwrap_or("/portal/servers")
        .to_owned();
    let lifetime = state.session_lifetime();
    Ok(HttpResponse::SeeOther()
        .insert_header((header::LOCATION, to))
        .cookie(cookies::cookie(
            &req,
            SESSION_COOKIE,
            session.token,
            lifetime,
        ))
        .cookie(removal(SIGNIN_COOKIE))
        .finish())
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(first) => first.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

pub async fn signout(
    req: HttpRequest,
    user: PortalUser,
    state: State,
    form: web::Form<CsrfForm>,
) -> PageResult {
    user.check_csrf(&form.csrf)?;
    let token = user.token.clone();
    run(&state, move |c| auth::logout(c, &token)).await?;
    let mut r = redirect_with(&req, SIGNIN, "ok", "You are signed out.");
    r.add_cookie(&removal(SESSION_COOKIE))
        .map_err(|e| PortalError::Template(e.to_string()))?;
    Ok(r)
}
