//! Device tokens: the list, creating one (its secret shown on the answer page only, which
//! is never cached), and revoking one after a confirmation page.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, web};
use askama::Template;
use serde::Deserialize;
use shared::ErrorCode;

use super::{CsrfForm, PageResult, render, status_of};
use crate::error::AppError;
use crate::portal::cookies::redirect_with;
use crate::portal::errors::PortalError;
use crate::portal::layout::Layout;
use crate::portal::session::PortalUser;
use crate::portal::view;
use crate::state::{State, run};
use crate::store::tokens::{self, DeviceToken};

struct TokenView {
    id: String,
    name: String,
    created: String,
    expires: String,
    state: &'static str,
    active: bool,
}

fn token_view(t: &DeviceToken, now: i64) -> TokenView {
    let expired = t.expires_at.is_some_and(|e| e <= now);
    let (state, active) = match (t.revoked_at, expired) {
        (Some(_), _) => ("Revoked", false),
        (None, true) => ("Expired", false),
        (None, false) => ("Active", true),
    };
    TokenView {
        id: t.id.clone(),
        name: t.name.clone(),
        created: view::time(t.created_at),
        expires: t.expires_at.map_or_else(|| "never".to_owned(), view::date),
        state,
        active,
    }
}

#[derive(Template)]
#[template(path = "tokens.html")]
struct TokensPage {
    layout: Layout,
    csrf: String,
    tokens: Vec<TokenView>,
    /// Just created: its name and secret, shown this once.
    created: Option<(String, String)>,
    name: String,
    expires_in_days: String,
    name_error: Option<String>,
    expires_error: Option<String>,
}

async fn tokens_page(
    req: &HttpRequest,
    user: &PortalUser,
    state: &State,
    mut page: TokensPage,
    status: StatusCode,
) -> PageResult {
    let account = user.account_id.clone();
    let list = run(state, move |c| tokens::list_device_tokens(c, &account)).await?;
    let now = shared::now_unix();
    page.tokens = list.iter().map(|t| token_view(t, now)).collect();
    render(req, status, &page)
}

fn empty_tokens_page(req: &HttpRequest, user: &PortalUser) -> TokensPage {
    TokensPage {
        layout: Layout::page(req, user.bar(), "Device tokens", "tokens"),
        csrf: user.csrf_token.clone(),
        tokens: Vec::new(),
        created: None,
        name: String::new(),
        expires_in_days: String::new(),
        name_error: None,
        expires_error: None,
    }
}

pub async fn tokens(req: HttpRequest, user: PortalUser, state: State) -> PageResult {
    let page = empty_tokens_page(&req, &user);
    tokens_page(&req, &user, &state, page, StatusCode::OK).await
}

#[derive(Deserialize)]
pub struct TokenForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    expires_in_days: String,
}

/// Creates a device token. The answer is the page itself rather than a redirect: the
/// secret is shown this once and stored nowhere (the page is `no-store`).
pub async fn create_token(
    req: HttpRequest,
    user: PortalUser,
    state: State,
    form: web::Form<TokenForm>,
) -> PageResult {
    user.check_csrf(&form.csrf)?;
    let f = form.into_inner();
    let mut page = empty_tokens_page(&req, &user);
    page.name = f.name.trim().to_owned();
    page.expires_in_days = f.expires_in_days.trim().to_owned();
    let days = if page.expires_in_days.is_empty() {
        None
    } else {
        match page.expires_in_days.parse::<i64>() {
            Ok(d) => Some(d),
            Err(_) => {
                page.expires_error = Some(format!(
                    "Enter a whole number of days from 1 to {}, or leave it empty.",
                    tokens::MAX_DAYS
                ));
                return tokens_page(&req, &user, &state, page, StatusCode::BAD_REQUEST).await;
            }
        }
    };
    let (account, name) = (user.account_id.clone(), page.name.clone());
    match run(&state, move |c| {
        tokens::create_device_token(c, &account, &name, days)
    })
    .await
    {
        Ok(t) => {
            page.created = Some((t.device_token.name, t.secret));
            page.name.clear();
            page.expires_in_days.clear();
            tokens_page(&req, &user, &state, page, StatusCode::OK).await
        }
        Err(e) if e.code() == ErrorCode::ValidationError => {
            let status = status_of(&e);
            match e.field() {
                Some("expires_in_days") => page.expires_error = Some(e.message().to_owned()),
                _ => page.name_error = Some(e.message().to_owned()),
            }
            tokens_page(&req, &user, &state, page, status).await
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(Template)]
#[template(path = "token_revoke.html")]
struct RevokePage {
    layout: Layout,
    csrf: String,
    token: TokenView,
}

pub async fn revoke_form(
    req: HttpRequest,
    user: PortalUser,
    state: State,
    id: web::Path<String>,
) -> PageResult {
    let (account, id) = (user.account_id.clone(), id.into_inner());
    let list = run(&state, move |c| tokens::list_device_tokens(c, &account)).await?;
    let now = shared::now_unix();
    let token = list
        .iter()
        .find(|t| t.id == id)
        .map(|t| token_view(t, now))
        .ok_or(PortalError::NotFound)?;
    let page = RevokePage {
        layout: Layout::page(&req, user.bar(), "Revoke a device token", "tokens"),
        csrf: user.csrf_token.clone(),
        token,
    };
    render(&req, StatusCode::OK, &page)
}

pub async fn revoke_token(
    req: HttpRequest,
    user: PortalUser,
    state: State,
    id: web::Path<String>,
    form: web::Form<CsrfForm>,
) -> PageResult {
    user.check_csrf(&form.csrf)?;
    let (account, id) = (user.account_id.clone(), id.into_inner());
    let name = run(&state, move |c| {
        let name = tokens::list_device_tokens(c, &account)?
            .into_iter()
            .find(|t| t.id == id)
            .map(|t| t.name)
            .ok_or_else(|| AppError::not_found("device token"))?;
        tokens::revoke_device_token(c, &account, &id)?;
        Ok(name)
    })
    .await?;
    Ok(redirect_with(
        &req,
        "/portal/tokens",
        "ok",
        &format!(
            "Revoked the device token “{name}”. Servers using it can no longer reach the back office."
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_states() {
        let t = DeviceToken {
            id: "t".into(),
            account_id: "a".into(),
            name: "n".into(),
            created_at: 0,
            expires_at: Some(100),
            revoked_at: None,
        };
        assert_eq!(token_view(&t, 50).state, "Active");
        assert!(token_view(&t, 50).active);
        assert_eq!(token_view(&t, 100).state, "Expired");
        let r = DeviceToken {
            revoked_at: Some(10),
            ..t
        };
        assert_eq!(token_view(&r, 50).state, "Revoked");
    }
}
