//! The account's entitlements: each line item, how much of it is mapped, and where; and
//! its usage report over the last day on each server it is mapped to.

use actix_web::HttpRequest;
use actix_web::http::StatusCode;
use askama::Template;

use super::{PageResult, render};
use crate::portal::layout::Layout;
use crate::portal::session::PortalUser;
use crate::portal::view;
use crate::state::{State, run};
use crate::store::{catalog, usage};

use super::servers::{IntervalRow, interval_rows};

/// The usage the page shows: the last day's intervals.
const USAGE_WINDOW: i64 = 86_400;

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

/// A line item's usage on one server (and its pair partner) it is mapped to.
struct ItemUsage {
    activation_id: String,
    server_id: String,
    hostid: String,
    intervals: Vec<IntervalRow>,
}

struct EntitlementView {
    name: String,
    created: String,
    items: Vec<ItemView>,
    usage: Vec<ItemUsage>,
}

#[derive(Template)]
#[template(path = "entitlements.html")]
struct EntitlementsPage {
    layout: Layout,
    entitlements: Vec<EntitlementView>,
}

pub async fn entitlements(req: HttpRequest, user: PortalUser, state: State) -> PageResult {
    let account = user.account_id.clone();
    let since = shared::now_unix() - USAGE_WINDOW;
    let (ents, usage) = run(&state, move |c| {
        let ents = catalog::list_entitlements(c, &account)?;
        let usage = ents
            .iter()
            .map(|e| usage::entitlement_intervals(c, &account, &e.id, since))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((ents, usage))
    })
    .await?;
    let entitlements = ents
        .into_iter()
        .zip(usage)
        .map(|(e, usage)| EntitlementView {
            usage: usage
                .into_iter()
                .filter(|u| !u.intervals.is_empty())
                .map(|u| ItemUsage {
                    intervals: interval_rows(&u.intervals),
                    activation_id: u.activation_id,
                    server_id: u.server_id,
                    hostid: u.hostid,
                })
                .collect(),
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
