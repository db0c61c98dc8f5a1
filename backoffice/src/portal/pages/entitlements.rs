//! The account's entitlements: each line item, how much of it is mapped, and where.

use actix_web::HttpRequest;
use actix_web::http::StatusCode;
use askama::Template;

use super::{PageResult, render};
use crate::portal::layout::Layout;
use crate::portal::session::PortalUser;
use crate::portal::view;
use crate::state::{State, run};
use crate::store::catalog;

struct MapLink {
    server_id: String,
    hostid: String,
    quantity: i64,
}

struct ItemView {
    activation_id: String,
    product: String,
    quantity: i64,
    mapped: i64,
    unmapped: i64,
    starts: String,
    expiry: String,
    borrow: String,
    overdraft: i64,
    mappings: Vec<MapLink>,
}

struct EntitlementView {
    name: String,
    created: String,
    items: Vec<ItemView>,
}

#[derive(Template)]
#[template(path = "entitlements.html")]
struct EntitlementsPage {
    layout: Layout,
    entitlements: Vec<EntitlementView>,
}

pub async fn entitlements(req: HttpRequest, user: PortalUser, state: State) -> PageResult {
    let account = user.account_id.clone();
    let ents = run(&state, move |c| catalog::list_entitlements(c, &account)).await?;
    let entitlements = ents
        .into_iter()
        .map(|e| EntitlementView {
            name: e.name,
            created: view::date(e.created_at),
            items: e
                .line_items
                .into_iter()
                .map(|li| ItemView {
                    product: format!("{} {}", li.product_name, li.product_version)
                        .trim()
                        .to_owned(),
                    unmapped: li.quantity - li.mapped,
                    quantity: li.quantity,
                    mapped: li.mapped,
                    starts: view::date(li.starts_at),
                    expiry: view::expiry(li.expires_at),
                    borrow: view::borrow_policy(li.max_borrow_secs),
                    overdraft: li.overdraft,
                    mappings: li
                        .mappings
                        .into_iter()
                        .map(|m| MapLink {
                            server_id: m.server_id,
                            hostid: m.hostid,
                            quantity: m.quantity,
                        })
                        .collect(),
                    activation_id: li.activation_id,
                })
                .collect(),
        })
        .collect();
    let page = EntitlementsPage {
        layout: Layout::page(&req, user.bar(), "Entitlements", "entitlements"),
        entitlements,
    };
    render(&req, StatusCode::OK, &page)
}
