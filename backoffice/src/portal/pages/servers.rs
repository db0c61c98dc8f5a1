//! The Servers list and the View Server page (with the server's pair or cluster), with its
//! forms: map rights here (and unmap them), remove the pair's backup, replace a cluster's
//! member. A form's error is shown on the page itself,
//! next to its field.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, web};
use askama::Template;
use serde::Deserialize;
use shared::ErrorCode;
use shared::capability::FeatureUsage;
use shared::lease::{FeatureRight, describe_rights};

use super::{CsrfForm, PageResult, render, server_url, status_of};
use crate::error::AppError;
use crate::portal::chart::{self, Sample};
use crate::portal::cookies::redirect_with;
use crate::portal::errors::PortalError;
use crate::portal::layout::Layout;
use crate::portal::session::PortalUser;
use crate::portal::view::{self, StatusView};
use crate::state::{State, run};
use crate::store::catalog::{self, Entitlement};
use crate::store::mappings;
use crate::store::registry::{self, ClusterView, PairView, ServerInfo, ServerView};
use crate::store::usage::{self, IntervalUsage, UsagePoint};

/// A server as a row or a pair member shows it.
#[derive(Clone, Debug)]
struct MemberView {
    id: String,
    hostid: String,
    role: &'static str,
    status: StatusView,
    last_contact: String,
    last_contact_iso: String,
    note: Option<&'static str>,
    /// The ID of the key its grants are signed with, when it has sent one.
    key_id: Option<String>,
}

fn member(s: &ServerInfo, now: i64) -> MemberView {
    MemberView {
        id: s.id.clone(),
        hostid: s.hostid.clone(),
        role: if s.cluster_id.is_some() {
            "Cluster member"
        } else {
            view::role(s.role)
        },
        status: view::member_status(s.status, s.first_contact_at.is_some()),
        last_contact: view::last_contact(now, s.last_contact_at),
        last_contact_iso: s.last_contact_at.map(view::iso).unwrap_or_default(),
        note: view::registration_note(&s.registration),
        key_id: s.key_id.clone(),
    }
}

struct ServerRow {
    server: MemberView,
    pair_status: Option<StatusView>,
    partner: Option<String>,
    clustered: bool,
}

#[derive(Template)]
#[template(path = "servers.html")]
struct ServersPage {
    layout: Layout,
    rows: Vec<ServerRow>,
}

pub async fn servers(req: HttpRequest, user: PortalUser, state: State) -> PageResult {
    let (account, t) = (user.account_id.clone(), state.server_timeout());
    let now = shared::now_unix();
    let list = run(&state, move |c| registry::list_servers(c, &account, now, t)).await?;
    let rows = list
        .iter()
        .map(|s| ServerRow {
            server: member(&s.server, now),
            pair_status: s
                .pair_status
                .map(|p| view::pair_status_of(p, s.server.first_contact_at.is_some())),
            partner: s.partner_hostid.clone(),
            clustered: s.server.cluster_id.is_some(),
        })
        .collect();
    let page = ServersPage {
        layout: Layout::page(&req, user.bar(), "License servers", "servers"),
        rows,
    };
    render(&req, StatusCode::OK, &page)
}

struct PairBlock {
    id: String,
    status: StatusView,
    registered_by: String,
    main: MemberView,
    backup: Option<MemberView>,
}

/// A cluster member as View Server lists it: its own status, and what it reported of the
/// cluster.
struct ClusterMember {
    server: MemberView,
    reported: Option<StatusView>,
}

struct ClusterBlock {
    id: String,
    status: StatusView,
    registered_by: String,
    members: Vec<ClusterMember>,
}

fn cluster_block(c: &ClusterView, now: i64) -> ClusterBlock {
    ClusterBlock {
        id: c.id.clone(),
        status: view::cluster_status(c.status),
        registered_by: c.registered_by.clone(),
        members: c
            .members
            .iter()
            .map(|m| ClusterMember {
                server: member(m, now),
                reported: m.reported_cluster_status.map(view::cluster_status),
            })
            .collect(),
    }
}

struct RightView {
    mapping_id: String,
    activation_id: String,
    product: String,
    features: String,
    quantity: i64,
    starts: String,
    expiry: String,
}

struct UsageRow {
    feature: String,
    version: String,
    count: i64,
    in_use: i64,
    /// Overdraft seats and borrowed seats among those in use (the server's last report).
    overdraft: u32,
    borrowed: u32,
    /// The line items mapped here that grant the feature, with their ends:
    /// `14 (10 permanent, 4 until 2027-03-31)`.
    line_items: String,
}

struct ChartRow {
    time: String,
    count: i64,
    in_use: i64,
}

struct ChartView {
    feature: String,
    svg: String,
    /// Every reading of the window, newest first.
    rows: Vec<ChartRow>,
}

struct ItemOption {
    activation_id: String,
    label: String,
    unmapped: i64,
    selected: bool,
}

/// The map form's state: what was entered, and an error next to its field (`activation_id`
/// or `quantity`) or on top (empty field).
#[derive(Default)]
struct MapForm {
    activation_id: String,
    quantity: String,
    error: Option<String>,
    field: &'static str,
}

struct RangeLink {
    key: &'static str,
    label: &'static str,
    current: bool,
}

/// One row of a usage report table: an interval of a feature, its parts added up.
#[derive(Clone, Debug)]
pub(super) struct IntervalRow {
    pub when: String,
    pub iso: String,
    pub feature: String,
    pub count: i64,
    pub peak: i64,
    pub average: String,
    pub grants: i64,
    pub denied: i64,
    /// Denials by code: `NO_LICENSE_AVAILABLE 2, EXCLUDED 1`.
    pub denials: String,
    pub true_denials: i64,
    pub borrowed: i64,
    pub overdraft: i64,
    pub queued: i64,
    pub served_by: String,
}

/// The most intervals a usage report table shows (the newest).
pub(super) const INTERVAL_ROWS: usize = 100;

pub(super) fn interval_rows(intervals: &[IntervalUsage]) -> Vec<IntervalRow> {
    intervals
        .iter()
        .take(INTERVAL_ROWS)
        .map(|i| IntervalRow {
            when: format!(
                "{} ({})",
                view::time(i.starts_at),
                shared::duration::format(std::time::Duration::from_secs(
                    u64::try_from(i.ends_at - i.starts_at).unwrap_or_default()
                ))
            ),
            iso: view::iso(i.starts_at),
            feature: if i.version.is_empty() {
                i.feature.clone()
            } else {
                format!("{} {}", i.feature, i.version)
            },
            count: i.count,
            peak: i.peak,
            average: format!("{:.2}", i.average),
            grants: i.grants,
            denied: i.denied(),
            denials: i
                .denials
                .iter()
                .map(|(code, n)| format!("{code} {n}"))
                .collect::<Vec<_>>()
                .join(", "),
            true_denials: i.true_denials,
            borrowed: i.borrowed,
            overdraft: i.overdraft,
            queued: i.queued,
            served_by: i.served_by.join(", "),
        })
        .collect()
}

#[derive(Template)]
#[template(path = "server.html")]
struct ServerPage {
    layout: Layout,
    server: MemberView,
    pair: Option<PairBlock>,
    cluster: Option<ClusterBlock>,
    rights: Vec<RightView>,
    usage: Vec<UsageRow>,
    usage_reported: Option<String>,
    charts: Vec<ChartView>,
    intervals: Vec<IntervalRow>,
    ranges: Vec<RangeLink>,
    range_label: &'static str,
    options: Vec<ItemOption>,
    map: MapForm,
    remove_error: Option<String>,
    replace_error: Option<String>,
    csrf: String,
}

/// The chart ranges: key, label, seconds.
const RANGES: &[(&str, &str, i64)] = &[
    ("1h", "hour", 3600),
    ("24h", "day", 86_400),
    ("7d", "week", 7 * 86_400),
];

/// How View Server is shown: the chart range, and the state of its two forms.
#[derive(Default)]
struct Shown {
    range: Option<String>,
    map: MapForm,
    remove_error: Option<String>,
    replace_error: Option<String>,
}

/// Renders View Server; the POST handlers use it to show their errors in place.
async fn server_page(
    req: &HttpRequest,
    user: &PortalUser,
    state: &State,
    id: String,
    shown: Shown,
    status: StatusCode,
) -> PageResult {
    let (range_key, range_label, window) = RANGES
        .iter()
        .copied()
        .find(|r| Some(r.0) == shown.range.as_deref())
        .unwrap_or(RANGES[1]);
    let (account, t) = (user.account_id.clone(), state.server_timeout());
    let now = shared::now_unix();
    let since = now - window;
    let (v, ents, history, latest, intervals) = run(state, move |c| {
        let v = registry::view_server(c, &account, &id, now, t)?;
        let ents = catalog::list_entitlements(c, &account)?;
        let h = usage::usage_history(c, &account, &id, since)?;
        let latest = usage::latest_readings(c, &account, &id)?;
        let intervals = usage::server_intervals(c, &account, &id, since)?;
        Ok((v, ents, h, latest, intervals))
    })
    .await?;
    // Current usage is the latest reading, the one the charts end with.
    let latest = chart::merge_latest(&latest);
    let title = format!("Server {}", v.server.hostid);
    let page = ServerPage {
        layout: Layout::page(req, user.bar(), &title, "servers"),
        server: member(&v.server, now),
        pair: v.pair.as_ref().map(|p| pair_block(p, now)),
        cluster: v.cluster.as_ref().map(|c| cluster_block(c, now)),
        rights: rights(&v),
        usage: latest
            .iter()
            .map(|u| UsageRow {
                feature: u.feature.clone(),
                version: u.version.clone(),
                count: u.count,
                in_use: u.in_use,
                overdraft: reported(&v, u, |r| r.overdraft),
                borrowed: reported(&v, u, |r| r.borrowed),
                line_items: line_items_of(&v, &u.feature, &u.version, now),
            })
            .collect(),
        usage_reported: latest
            .first()
            .map(|u| format!("{} ({})", view::time(u.at), view::ago(now, u.at))),
        charts: charts(&history, range_label, since, now),
        intervals: interval_rows(&intervals),
        ranges: RANGES
            .iter()
            .map(|r| RangeLink {
                key: r.0,
                label: r.1,
                current: r.0 == range_key,
            })
            .collect(),
        range_label,
        options: options(&ents, &shown.map.activation_id),
        map: shown.map,
        remove_error: shown.remove_error,
        replace_error: shown.replace_error,
        csrf: user.csrf_token.clone(),
    };
    render(req, status, &page)
}

/// The line items mapped here that grant `feature` `version`, with their ends, as
/// `license-server features` shows them: `14 (10 permanent, 4 until 2027-03-31)`.
/// A figure of the server's last usage report for the reading's feature and version (0 when
/// the report does not name it).
fn reported(v: &ServerView, u: &UsagePoint, f: impl Fn(&FeatureUsage) -> u32) -> u32 {
    v.usage
        .iter()
        .find(|r| r.feature == u.feature && r.version == u.version)
        .map_or(0, f)
}

fn line_items_of(v: &ServerView, feature: &str, version: &str, now: i64) -> String {
    let rights: Vec<FeatureRight> = v
        .rights
        .iter()
        .filter(|r| {
            r.features
                .iter()
                .any(|f| f.name == feature && f.version == version)
                && r.expires_at.is_none_or(|e| now < e)
        })
        .map(|r| FeatureRight {
            activation_id: r.activation_id.clone(),
            count: u32::try_from(r.quantity).unwrap_or(u32::MAX),
            starts_at: r.starts_at,
            expires_at: r.expires_at,
            started: r.starts_at <= now,
        })
        .collect();
    if rights.is_empty() {
        return "none mapped".to_owned();
    }
    let now_count = rights
        .iter()
        .filter(|r| r.started)
        .fold(0u32, |a, r| a.saturating_add(r.count));
    describe_rights(now_count, &rights)
}

fn pair_block(p: &PairView, now: i64) -> PairBlock {
    PairBlock {
        id: p.id.clone(),
        status: view::pair_status_of(p.status, p.main.first_contact_at.is_some()),
        registered_by: p.registered_by.clone(),
        main: member(&p.main, now),
        backup: p.backup.as_ref().map(|b| member(b, now)),
    }
}

fn rights(v: &ServerView) -> Vec<RightView> {
    v.rights
        .iter()
        .map(|r| RightView {
            mapping_id: r.mapping_id.clone(),
            activation_id: r.activation_id.clone(),
            product: format!("{} {}", r.product_name, r.product_version)
                .trim()
                .to_owned(),
            features: r
                .features
                .iter()
                .map(|f| format!("{} {}", f.name, f.version).trim().to_owned())
                .collect::<Vec<_>>()
                .join(", "),
            quantity: r.quantity,
            starts: view::date(r.starts_at),
            expiry: view::expiry(r.expires_at),
        })
        .collect()
}

/// One chart per feature (and version), with every reading of the window as a table.
fn charts(history: &[UsagePoint], range_label: &str, since: i64, now: i64) -> Vec<ChartView> {
    let mut keys: Vec<(&str, &str)> = history
        .iter()
        .map(|p| (p.feature.as_str(), p.version.as_str()))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys.iter()
        .enumerate()
        .map(|(i, (feature, version))| {
            let samples = chart::merge(
                history
                    .iter()
                    .filter(|p| p.feature == *feature && p.version == *version)
                    .map(|p| Sample {
                        at: p.at,
                        count: p.count,
                        in_use: p.in_use,
                    }),
            );
            let name = format!("{feature} {version}").trim().to_owned();
            let svg = chart::render(
                &format!("chart-{i}"),
                &name,
                range_label,
                &samples,
                since,
                now,
            );
            let rows = samples
                .iter()
                .rev()
                .map(|s| ChartRow {
                    time: view::time(s.at),
                    count: s.count,
                    in_use: s.in_use,
                })
                .collect();
            ChartView {
                feature: name,
                svg,
                rows,
            }
        })
        .collect()
}

/// The map form's choice of line items, with what is still unmapped of each.
fn options(ents: &[Entitlement], selected: &str) -> Vec<ItemOption> {
    ents.iter()
        .flat_map(|e| e.line_items.iter())
        .map(|li| {
            let unmapped = li.quantity - li.mapped;
            ItemOption {
                activation_id: li.activation_id.clone(),
                label: format!(
                    "{} — {} {} — {unmapped} of {} unmapped",
                    li.activation_id, li.product_name, li.product_version, li.quantity
                ),
                unmapped,
                selected: li.activation_id == selected,
            }
        })
        .collect()
}

#[derive(Deserialize)]
pub struct ServerQuery {
    #[serde(default)]
    range: Option<String>,
}

pub async fn server(
    req: HttpRequest,
    user: PortalUser,
    state: State,
    id: web::Path<String>,
    q: web::Query<ServerQuery>,
) -> PageResult {
    let shown = Shown {
        range: q.into_inner().range,
        ..Shown::default()
    };
    server_page(&req, &user, &state, id.into_inner(), shown, StatusCode::OK).await
}

#[derive(Deserialize)]
pub struct MapRightsForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    activation_id: String,
    #[serde(default)]
    quantity: String,
}

/// Shows View Server again with the map form's error next to its field.
async fn map_failed(
    req: &HttpRequest,
    user: &PortalUser,
    state: &State,
    id: String,
    map: MapForm,
    e: AppError,
) -> PageResult {
    let field =
        match (e.code(), e.field()) {
            (ErrorCode::UnknownRightsId, _)
            | (ErrorCode::ValidationError, Some("activation_id")) => "activation_id",
            (ErrorCode::InsufficientQuantity, _)
            | (ErrorCode::ValidationError, Some("quantity")) => "quantity",
            _ => "",
        };
    let status = status_of(&e);
    let shown = Shown {
        map: MapForm {
            error: Some(e.message().to_owned()),
            field,
            ..map
        },
        ..Shown::default()
    };
    server_page(req, user, state, id, shown, status).await
}

pub async fn map_rights(
    req: HttpRequest,
    user: PortalUser,
    state: State,
    id: web::Path<String>,
    form: web::Form<MapRightsForm>,
) -> PageResult {
    user.check_csrf(&form.csrf)?;
    let id = id.into_inner();
    let f = form.into_inner();
    let map = MapForm {
        activation_id: f.activation_id.trim().to_owned(),
        quantity: f.quantity.trim().to_owned(),
        ..MapForm::default()
    };
    if map.activation_id.is_empty() {
        let e = AppError::validation("activation_id", "Choose an activation ID.");
        return map_failed(&req, &user, &state, id, map, e).await;
    }
    let Ok(quantity) = map.quantity.parse::<i64>() else {
        let e = AppError::validation("quantity", "Enter the quantity as a whole number, e.g. 5.");
        return map_failed(&req, &user, &state, id, map, e).await;
    };
    let (account, act, sid) = (
        user.account_id.clone(),
        map.activation_id.clone(),
        id.clone(),
    );
    match run(&state, move |c| {
        mappings::map_rights(c, &account, &act, &sid, quantity)
    })
    .await
    {
        Ok(m) => {
            state.links.changed(&user.account_id);
            Ok(redirect_with(
                &req,
                &server_url(&id),
                "ok",
                &format!(
                    "Mapped {quantity} of {} here (now {} in all). Running servers receive it \
                     within seconds, others when they start.",
                    m.activation_id, m.quantity
                ),
            ))
        }
        Err(e) if e.code() == ErrorCode::NotFound => Err(PortalError::NotFound),
        Err(e) => map_failed(&req, &user, &state, id, map, e).await,
    }
}

pub async fn unmap(
    req: HttpRequest,
    user: PortalUser,
    state: State,
    path: web::Path<(String, String)>,
    form: web::Form<CsrfForm>,
) -> PageResult {
    user.check_csrf(&form.csrf)?;
    let (id, mapping_id) = path.into_inner();
    let (account, t, sid, mid) = (
        user.account_id.clone(),
        state.server_timeout(),
        id.clone(),
        mapping_id.clone(),
    );
    let activation = run(&state, move |c| {
        // The mapping must be one of this server's (and so of this account's).
        let v = registry::view_server(c, &account, &sid, shared::now_unix(), t)?;
        let right = v
            .rights
            .iter()
            .find(|r| r.mapping_id == mid)
            .ok_or_else(|| AppError::not_found("mapping"))?;
        mappings::unmap(c, &account, &mid)?;
        Ok(format!(
            "{} ({} seats)",
            right.activation_id, right.quantity
        ))
    })
    .await?;
    state.links.changed(&user.account_id);
    Ok(redirect_with(
        &req,
        &server_url(&id),
        "ok",
        &format!("Unmapped {activation}. Running servers drop these rights within seconds."),
    ))
}

pub async fn remove_backup(
    req: HttpRequest,
    user: PortalUser,
    state: State,
    id: web::Path<String>,
    form: web::Form<CsrfForm>,
) -> PageResult {
    user.check_csrf(&form.csrf)?;
    let id = id.into_inner();
    let (account, t, sid) = (user.account_id.clone(), state.server_timeout(), id.clone());
    let result = run(&state, move |c| {
        let now = shared::now_unix();
        let v = registry::view_server(c, &account, &sid, now, t)?;
        let p = v.pair.ok_or_else(|| {
            AppError::new(ErrorCode::NotFound, "this server is not part of a pair")
        })?;
        let backup = p
            .backup
            .ok_or_else(|| AppError::new(ErrorCode::NotFound, "this pair has no backup"))?;
        registry::remove_backup(c, &account, &p.id, now, t)?;
        Ok((p.main.id, p.main.hostid, backup.hostid))
    })
    .await;
    if result.is_ok() {
        state.links.changed(&user.account_id);
    }
    match result {
        Ok((main_id, main, backup)) => Ok(redirect_with(
            &req,
            &server_url(&main_id),
            "ok",
            &format!("Removed the backup {backup}; {main} now runs without a backup."),
        )),
        Err(e) if e.code() == ErrorCode::PairHasActiveRights => {
            let status = status_of(&e);
            let shown = Shown {
                remove_error: Some(e.message().to_owned()),
                ..Shown::default()
            };
            server_page(&req, &user, &state, id, shown, status).await
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(Deserialize)]
pub struct ReplaceForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    out_hostid: String,
    #[serde(default)]
    new_hostid: String,
}

/// Replaces a member of this server's cluster; an error shows next to the form.
pub async fn replace_member(
    req: HttpRequest,
    user: PortalUser,
    state: State,
    id: web::Path<String>,
    form: web::Form<ReplaceForm>,
) -> PageResult {
    user.check_csrf(&form.csrf)?;
    let id = id.into_inner();
    let f = form.into_inner();
    let (account, t, sid) = (user.account_id.clone(), state.server_timeout(), id.clone());
    let result = run(&state, move |c| {
        let out = shared::HostId::parse(f.out_hostid.trim())
            .map_err(|e| AppError::validation("out_hostid", e.to_string()))?;
        let new = shared::HostId::parse(f.new_hostid.trim())
            .map_err(|e| AppError::validation("new_hostid", e.to_string()))?;
        let v = registry::view_server(c, &account, &sid, shared::now_unix(), t)?;
        let cl = v.cluster.ok_or_else(|| {
            AppError::new(ErrorCode::NotFound, "this server is not a cluster member")
        })?;
        let after = registry::replace_member(c, &account, &cl.id, &out, &new)?;
        // Back to this server's page, or (when it left) to a member that stays.
        let stays = after
            .members
            .iter()
            .find(|m| m.id == sid)
            .or_else(|| after.members.iter().find(|m| m.hostid != new.to_string()))
            .map_or(sid.clone(), |m| m.id.clone());
        Ok((stays, out, new))
    })
    .await;
    match result {
        Ok((stays, out, new)) => {
            state.links.changed(&user.account_id);
            Ok(redirect_with(
                &req,
                &server_url(&stays),
                "ok",
                &format!(
                    "Replaced {out} by {new} in the cluster. Set CLUSTER_MEMBER_HOSTIDS on \
                     the members to the new three."
                ),
            ))
        }
        Err(e) if e.code() != ErrorCode::Unavailable && e.code() != ErrorCode::InternalError => {
            let status = status_of(&e);
            let shown = Shown {
                replace_error: Some(e.message().to_owned()),
                ..Shown::default()
            };
            server_page(&req, &user, &state, id, shown, status).await
        }
        Err(e) => Err(e.into()),
    }
}
