//! Registering a failover pair by hand, before either server has started. Each hostid is
//! checked on its own, so that both errors show next to their fields.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, web};
use askama::Template;
use serde::Deserialize;
use shared::HostId;

use super::{PageResult, render, server_url, status_of};
use crate::portal::cookies::redirect_with;
use crate::portal::layout::Layout;
use crate::portal::session::PortalUser;
use crate::portal::view;
use crate::state::{State, run};
use crate::store::registry;

#[derive(Template)]
#[template(path = "pair_new.html")]
struct PairPage {
    layout: Layout,
    csrf: String,
    main_hostid: String,
    backup_hostid: String,
    main_error: Option<String>,
    backup_error: Option<String>,
    error: Option<String>,
}

pub async fn pair_form(req: HttpRequest, user: PortalUser) -> PageResult {
    let page = PairPage {
        layout: Layout::page(&req, user.bar(), "Register a failover pair", "servers"),
        csrf: user.csrf_token.clone(),
        main_hostid: String::new(),
        backup_hostid: String::new(),
        main_error: None,
        backup_error: None,
        error: None,
    };
    render(&req, StatusCode::OK, &page)
}

#[derive(Deserialize)]
pub struct PairForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    main_hostid: String,
    #[serde(default)]
    backup_hostid: String,
}

pub async fn register_pair(
    req: HttpRequest,
    user: PortalUser,
    state: State,
    form: web::Form<PairForm>,
) -> PageResult {
    user.check_csrf(&form.csrf)?;
    let f = form.into_inner();
    let mut page = PairPage {
        layout: Layout::page(&req, user.bar(), "Register a failover pair", "servers"),
        csrf: user.csrf_token.clone(),
        main_hostid: f.main_hostid.trim().to_owned(),
        backup_hostid: f.backup_hostid.trim().to_owned(),
        main_error: None,
        backup_error: None,
        error: None,
    };
    // The same checks as the API: each hostid parsed on its own, so both errors show.
    let main = HostId::parse(&page.main_hostid);
    let backup = HostId::parse(&page.backup_hostid);
    let (main, backup) = match (main, backup) {
        (Ok(m), Ok(b)) => (m, b),
        (m, b) => {
            page.main_error = m.err().map(|e| e.to_string());
            page.backup_error = b.err().map(|e| e.to_string());
            page.layout.title = format!("Error: {}", page.layout.title);
            return render(&req, StatusCode::BAD_REQUEST, &page);
        }
    };
    let (account, m, b) = (user.account_id.clone(), main.clone(), backup.clone());
    match run(&state, move |c| {
        registry::register_pair(c, &account, &m, &b)
    })
    .await
    {
        Ok(p) => {
            state.links.changed(&user.account_id);
            Ok(redirect_with(
                &req,
                &server_url(&p.main.id),
                "ok",
                &format!(
                    "Registered the failover pair: main {main}, backup {backup}. Start the main with \
                 BACKUP_SERVER_HOSTID={backup}, then the backup."
                ),
            ))
        }
        Err(e) => {
            let status = status_of(&e);
            let e = e.body().clone();
            match view::pair_error_field(&e, &main.to_string(), &backup.to_string()) {
                Some("main_hostid") => page.main_error = Some(e.message),
                Some(_) => page.backup_error = Some(e.message),
                None => page.error = Some(e.message),
            }
            page.layout.title = format!("Error: {}", page.layout.title);
            render(&req, status, &page)
        }
    }
}
