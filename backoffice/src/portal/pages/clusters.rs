//! Registering a three-member failover cluster by hand, before its members start. Each
//! hostid is checked on its own, so that every error shows next to its field; a refusal
//! of the registry shows next to the hostid its message starts with, else on top.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, web};
use askama::Template;
use serde::Deserialize;
use shared::HostId;

use super::{PageResult, render, server_url, status_of};
use crate::portal::cookies::redirect_with;
use crate::portal::layout::Layout;
use crate::portal::session::PortalUser;
use crate::state::{State, run};
use crate::store::registry;

/// One of the three hostid fields: what was entered and its error.
#[derive(Default)]
struct Field {
    value: String,
    error: Option<String>,
}

#[derive(Template)]
#[template(path = "cluster_new.html")]
struct ClusterPage {
    layout: Layout,
    csrf: String,
    members: [Field; 3],
    error: Option<String>,
}

const TITLE: &str = "Register a failover cluster";

pub async fn cluster_form(req: HttpRequest, user: PortalUser) -> PageResult {
    let page = ClusterPage {
        layout: Layout::page(&req, user.bar(), TITLE, "servers"),
        csrf: user.csrf_token.clone(),
        members: Default::default(),
        error: None,
    };
    render(&req, StatusCode::OK, &page)
}

#[derive(Deserialize)]
pub struct ClusterForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    hostid_1: String,
    #[serde(default)]
    hostid_2: String,
    #[serde(default)]
    hostid_3: String,
}

pub async fn register_cluster(
    req: HttpRequest,
    user: PortalUser,
    state: State,
    form: web::Form<ClusterForm>,
) -> PageResult {
    user.check_csrf(&form.csrf)?;
    let f = form.into_inner();
    let field = |v: &str| Field {
        value: v.trim().to_owned(),
        error: None,
    };
    let mut page = ClusterPage {
        layout: Layout::page(&req, user.bar(), TITLE, "servers"),
        csrf: user.csrf_token.clone(),
        members: [field(&f.hostid_1), field(&f.hostid_2), field(&f.hostid_3)],
        error: None,
    };
    let parsed: Vec<_> = page
        .members
        .iter()
        .map(|m| HostId::parse(&m.value))
        .collect();
    if parsed.iter().any(Result::is_err) {
        for (m, p) in page.members.iter_mut().zip(&parsed) {
            m.error = p.as_ref().err().map(ToString::to_string);
        }
        page.layout.title = format!("Error: {TITLE}");
        return render(&req, StatusCode::BAD_REQUEST, &page);
    }
    let hostids: Vec<HostId> = parsed.into_iter().filter_map(Result::ok).collect();
    let (account, members) = (user.account_id.clone(), hostids.clone());
    match run(&state, move |c| {
        registry::register_cluster(c, &account, &members)
    })
    .await
    {
        Ok(v) => {
            state.links.changed(&user.account_id);
            let first = v
                .members
                .iter()
                .find(|m| m.hostid == hostids[0].to_string());
            let list = crate::domain::registry::hostid_list(&hostids);
            Ok(redirect_with(
                &req,
                &server_url(first.map_or(&v.members[0].id, |m| &m.id)),
                "ok",
                &format!(
                    "Registered the failover cluster of {list}. Start each member with \
                     CLUSTER_MEMBER_HOSTIDS naming the other two."
                ),
            ))
        }
        Err(e) => {
            let status = status_of(&e);
            let e = e.body().clone();
            // The registry's messages start with the hostid concerned, when one is.
            let m = e.message.strip_prefix("hostid ").unwrap_or(&e.message);
            let at = page.members.iter().position(|f| {
                m.strip_prefix(f.value.as_str())
                    .is_some_and(|rest| rest.starts_with(' '))
            });
            match at {
                Some(i) => page.members[i].error = Some(e.message),
                None => page.error = Some(e.message),
            }
            page.layout.title = format!("Error: {TITLE}");
            render(&req, status, &page)
        }
    }
}
