//! The portal's page handlers: thin, each passing the session's account ID to the store.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;
use serde::Deserialize;
use shared::{ErrorBody, ErrorCode};

use super::chart::{self, Sample};
use super::session::{
    self, PortalError, PortalUser, SESSION_COOKIE, SIGNIN_COOKIE, check_csrf, redirect,
    redirect_with, removal,
};
use super::view::{self, StatusView};
use super::{Layout, SIGNIN, html};
use crate::api::{State, run};
use crate::error::AppError;
use crate::store::auth as auth_store;
use crate::store::registry::{self, ServerInfo};
use crate::store::{auth, catalog};

type PageResult = Result<HttpResponse, PortalError>;

fn timeout(state: &State) -> i64 {
    state.settings.server_timeout().as_secs() as i64
}

fn status_of(e: &ErrorBody) -> StatusCode {
    StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::BAD_REQUEST)
}

pub async fn home() -> HttpResponse {
    redirect("/portal/servers")
}

// ---------------------------------------------------------------------------
// Sign in and out.

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

/// Renders the sign-in form with a fresh double-submit token (cookie and hidden field).
fn signin_page(
    req: &HttpRequest,
    status: StatusCode,
    email: String,
    next: String,
    error: Option<String>,
    notice: Option<String>,
) -> PageResult {
    let token = shared::random_token::<24>();
    let mut layout = Layout::bare("Sign in");
    layout.flash = session::flash_of(req);
    let page = SigninPage {
        layout,
        csrf: token.clone(),
        email,
        next: session::safe_next(&next).unwrap_or("").to_owned(),
        error,
        notice,
    };
    let mut resp = html(req, status, &page)?;
    resp.add_cookie(&session::cookie(req, SIGNIN_COOKIE, token, 3600))
        .map_err(|e| PortalError::Internal(e.to_string()))?;
    Ok(resp)
}

pub async fn signin_form(req: HttpRequest, q: web::Query<SigninQuery>) -> PageResult {
    let q = q.into_inner();
    let notice = q
        .expired
        .is_some()
        .then(|| "Your session has expired. Sign in again.".to_owned());
    signin_page(
        &req,
        StatusCode::OK,
        String::new(),
        q.next.unwrap_or_default(),
        None,
        notice,
    )
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
    let expected = req
        .cookie(SIGNIN_COOKIE)
        .map(|c| c.value().to_owned())
        .unwrap_or_default();
    if check_csrf(&expected, &f.csrf).is_err() {
        return signin_page(
            &req,
            StatusCode::FORBIDDEN,
            f.email,
            f.next,
            Some("The sign-in form had expired or did not come from this portal. Please sign in again.".to_owned()),
            None,
        );
    }
    if f.email.trim().is_empty()
        || f.password.is_empty()
        || f.email.len() > 254
        || f.password.len() > 256
    {
        return signin_page(
            &req,
            StatusCode::UNAUTHORIZED,
            f.email,
            f.next,
            Some("Enter your e-mail address and your password.".to_owned()),
            None,
        );
    }
    let lifetime = state.settings.session_lifetime.as_secs() as i64;
    let (email, password) = (f.email.clone(), f.password);
    let result = run(&state, move |c| {
        let s = auth_store::login(c, &email, &password, lifetime)?;
        if s.kind == "admin" {
            // The portal is for account users: end the administrator's session at once.
            auth_store::logout(c, &s.token)?;
        }
        Ok(s)
    })
    .await;
    match result {
        Ok(s) if s.kind == "admin" => signin_page(
            &req,
            StatusCode::FORBIDDEN,
            f.email,
            f.next,
            Some(
                "This is a producer administrator. The portal is for the users of customer \
                 accounts; administrators work through the API under /api/v1."
                    .to_owned(),
            ),
            None,
        ),
        Ok(s) => {
            let to = session::safe_next(&f.next)
                .unwrap_or("/portal/servers")
                .to_owned();
            Ok(HttpResponse::SeeOther()
                .insert_header((actix_web::http::header::LOCATION, to))
                .cookie(session::cookie(&req, SESSION_COOKIE, s.token, lifetime))
                .cookie(removal(SIGNIN_COOKIE))
                .finish())
        }
        Err(e) if e.code() == ErrorCode::Unauthorized => signin_page(
            &req,
            StatusCode::UNAUTHORIZED,
            f.email,
            f.next,
            Some("Wrong e-mail address or password.".to_owned()),
            None,
        ),
        Err(e) => Err(e.into()),
    }
}

#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
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
        .map_err(|e| PortalError::Internal(e.to_string()))?;
    Ok(r)
}

// ---------------------------------------------------------------------------
// Servers.

#[derive(Clone, Debug)]
struct MemberView {
    id: String,
    hostid: String,
    role: &'static str,
    status: StatusView,
    last_contact: String,
    last_contact_iso: String,
    note: Option<&'static str>,
}

fn member(s: &ServerInfo, now: i64) -> MemberView {
    MemberView {
        id: s.id.clone(),
        hostid: s.hostid.clone(),
        role: view::role(s.role),
        status: view::server_status(s.status),
        last_contact: view::last_contact(now, s.last_contact_at),
        last_contact_iso: s.last_contact_at.map(view::iso).unwrap_or_default(),
        note: view::registration_note(&s.registration),
    }
}

struct ServerRow {
    server: MemberView,
    pair_status: Option<StatusView>,
    partner: Option<String>,
}

#[derive(Template)]
#[template(path = "servers.html")]
struct ServersPage {
    layout: Layout,
    rows: Vec<ServerRow>,
}

pub async fn servers(req: HttpRequest, user: PortalUser, state: State) -> PageResult {
    let (account, t) = (user.account_id.clone(), timeout(&state));
    let now = shared::now_unix();
    let list = run(&state, move |c| registry::list_servers(c, &account, now, t)).await?;
    let rows = list
        .iter()
        .map(|s| ServerRow {
            server: member(&s.server, now),
            pair_status: s.pair_status.map(view::pair_status),
            partner: s.partner_hostid.clone(),
        })
        .collect();
    let page = ServersPage {
        layout: Layout::page(&req, &user, "License servers", "servers"),
        rows,
    };
    html(&req, StatusCode::OK, &page)
}

struct PairBlock {
    id: String,
    status: StatusView,
    registered_by: String,
    main: MemberView,
    backup: Option<MemberView>,
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
    count: u32,
    in_use: u32,
}

struct ChartRow {
    time: String,
    count: i64,
    in_use: i64,
}

struct ChartView {
    feature: String,
    svg: String,
    rows: Vec<ChartRow>,
    more: usize,
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

#[derive(Template)]
#[template(path = "server.html")]
struct ServerPage {
    layout: Layout,
    server: MemberView,
    pair: Option<PairBlock>,
    rights: Vec<RightView>,
    usage: Vec<UsageRow>,
    usage_reported: Option<String>,
    charts: Vec<ChartView>,
    ranges: Vec<RangeLink>,
    range_label: &'static str,
    options: Vec<ItemOption>,
    map: MapForm,
    remove_error: Option<String>,
    csrf: String,
}

const RANGES: &[(&str, &str, i64)] = &[
    ("1h", "hour", 3600),
    ("24h", "day", 86_400),
    ("7d", "week", 7 * 86_400),
];

#[derive(Deserialize)]
pub struct ServerQuery {
    #[serde(default)]
    range: Option<String>,
}

/// Renders View Server; the POST handlers use it to show their errors in place.
#[expect(
    clippy::too_many_arguments,
    reason = "the page plus the state of its two forms; one call per way the page is shown"
)]
async fn server_page(
    req: &HttpRequest,
    user: &PortalUser,
    state: &State,
    id: String,
    range: Option<&str>,
    map: MapForm,
    remove_error: Option<String>,
    status: StatusCode,
) -> PageResult {
    let (range_key, range_label, window) = RANGES
        .iter()
        .copied()
        .find(|r| Some(r.0) == range)
        .unwrap_or(RANGES[1]);
    let (account, t) = (user.account_id.clone(), timeout(state));
    let now = shared::now_unix();
    let since = now - window;
    let (v, ents, history) = run(state, move |c| {
        let v = registry::view_server(c, &account, &id, now, t)?;
        let ents = catalog::list_entitlements(c, &account)?;
        let h = registry::usage_history(c, &account, &id, since)?;
        Ok((v, ents, h))
    })
    .await?;

    let pair = v.pair.as_ref().map(|p| PairBlock {
        id: p.id.clone(),
        status: view::pair_status(p.status),
        registered_by: p.registered_by.clone(),
        main: member(&p.main, now),
        backup: p.backup.as_ref().map(|b| member(b, now)),
    });
    let rights = v
        .rights
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
        .collect();
    let usage = v
        .usage
        .iter()
        .map(|u| UsageRow {
            feature: u.feature.clone(),
            version: u.version.clone(),
            count: u.count,
            in_use: u.in_use,
        })
        .collect();

    // One chart per feature (and version).
    let mut keys: Vec<(String, String)> = history
        .iter()
        .map(|p| (p.feature.clone(), p.version.clone()))
        .collect();
    keys.sort();
    keys.dedup();
    let charts = keys
        .iter()
        .enumerate()
        .map(|(i, (feature, version))| {
            let samples = chart::merge(
                history
                    .iter()
                    .filter(|p| &p.feature == feature && &p.version == version)
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
            let shown = samples.len().min(100);
            let rows = samples[samples.len() - shown..]
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
                more: samples.len() - shown,
            }
        })
        .collect();

    let options = ents
        .iter()
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
                selected: li.activation_id == map.activation_id,
            }
        })
        .collect();

    let title = format!("Server {}", v.server.hostid);
    let page = ServerPage {
        layout: Layout::page(req, user, &title, "servers"),
        server: member(&v.server, now),
        pair,
        rights,
        usage,
        usage_reported: v
            .usage_reported_at
            .map(|t| view::last_contact(now, Some(t))),
        charts,
        ranges: RANGES
            .iter()
            .map(|r| RangeLink {
                key: r.0,
                label: r.1,
                current: r.0 == range_key,
            })
            .collect(),
        range_label,
        options,
        map,
        remove_error,
        csrf: user.csrf_token.clone(),
    };
    html(req, status, &page)
}

pub async fn server(
    req: HttpRequest,
    user: PortalUser,
    state: State,
    id: web::Path<String>,
    q: web::Query<ServerQuery>,
) -> PageResult {
    server_page(
        &req,
        &user,
        &state,
        id.into_inner(),
        q.range.as_deref(),
        MapForm::default(),
        None,
        StatusCode::OK,
    )
    .await
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

fn server_url(id: &str) -> String {
    format!("/portal/servers/{id}")
}

/// Shows View Server again with the map form's error next to its field.
async fn map_failed(
    req: &HttpRequest,
    user: &PortalUser,
    state: &State,
    id: String,
    map: MapForm,
    e: ErrorBody,
) -> PageResult {
    let field =
        match (e.code, e.field.as_deref()) {
            (ErrorCode::UnknownRightsId, _)
            | (ErrorCode::ValidationError, Some("activation_id")) => "activation_id",
            (ErrorCode::InsufficientQuantity, _)
            | (ErrorCode::ValidationError, Some("quantity")) => "quantity",
            _ => "",
        };
    let status = status_of(&e);
    let map = MapForm {
        error: Some(e.message),
        field,
        ..map
    };
    server_page(req, user, state, id, None, map, None, status).await
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
        let e = AppError::validation("activation_id", "Choose an activation ID.").0;
        return map_failed(&req, &user, &state, id, map, e).await;
    }
    let Ok(quantity) = map.quantity.parse::<i64>() else {
        let e = AppError::validation("quantity", "Enter the quantity as a whole number, e.g. 5.").0;
        return map_failed(&req, &user, &state, id, map, e).await;
    };
    let (account, act, sid) = (
        user.account_id.clone(),
        map.activation_id.clone(),
        id.clone(),
    );
    match run(&state, move |c| {
        registry::map_rights(c, &account, &act, &sid, quantity)
    })
    .await
    {
        Ok(m) => Ok(redirect_with(
            &req,
            &server_url(&id),
            "ok",
            &format!(
                "Mapped {quantity} of {} here (now {} in all). The servers receive it at their next poll.",
                m.activation_id, m.quantity
            ),
        )),
        Err(e) if e.code() == ErrorCode::NotFound => Err(PortalError::NotFound),
        Err(e) => map_failed(&req, &user, &state, id, map, e.0).await,
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
        timeout(&state),
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
        registry::unmap(c, &account, &mid)?;
        Ok(format!(
            "{} ({} seats)",
            right.activation_id, right.quantity
        ))
    })
    .await?;
    Ok(redirect_with(
        &req,
        &server_url(&id),
        "ok",
        &format!("Unmapped {activation}. The servers drop these rights at their next poll."),
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
    let (account, t, sid) = (user.account_id.clone(), timeout(&state), id.clone());
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
    match result {
        Ok((main_id, main, backup)) => Ok(redirect_with(
            &req,
            &server_url(&main_id),
            "ok",
            &format!("Removed the backup {backup}; {main} now runs without a backup."),
        )),
        Err(e) if e.code() == ErrorCode::PairHasActiveRights => {
            let status = status_of(&e.0);
            server_page(
                &req,
                &user,
                &state,
                id,
                None,
                MapForm::default(),
                Some(e.0.message),
                status,
            )
            .await
        }
        Err(e) => Err(e.into()),
    }
}

// ---------------------------------------------------------------------------
// Register a pair by hand.

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
        layout: Layout::page(&req, &user, "Register a failover pair", "servers"),
        csrf: user.csrf_token.clone(),
        main_hostid: String::new(),
        backup_hostid: String::new(),
        main_error: None,
        backup_error: None,
        error: None,
    };
    html(&req, StatusCode::OK, &page)
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
        layout: Layout::page(&req, &user, "Register a failover pair", "servers"),
        csrf: user.csrf_token.clone(),
        main_hostid: f.main_hostid.trim().to_owned(),
        backup_hostid: f.backup_hostid.trim().to_owned(),
        main_error: None,
        backup_error: None,
        error: None,
    };
    // The same checks as the API: each hostid parsed on its own, so both errors show.
    let main = crate::api::account::hostid("main_hostid", &page.main_hostid);
    let backup = crate::api::account::hostid("backup_hostid", &page.backup_hostid);
    let (main, backup) = match (main, backup) {
        (Ok(m), Ok(b)) => (m, b),
        (m, b) => {
            page.main_error = m.err().map(|e| e.0.message);
            page.backup_error = b.err().map(|e| e.0.message);
            page.layout.title = format!("Error: {}", page.layout.title);
            return html(&req, StatusCode::BAD_REQUEST, &page);
        }
    };
    let (account, m, b) = (user.account_id.clone(), main.clone(), backup.clone());
    match run(&state, move |c| {
        registry::register_pair(c, &account, &m, &b)
    })
    .await
    {
        Ok(p) => Ok(redirect_with(
            &req,
            &server_url(&p.main.id),
            "ok",
            &format!(
                "Registered the failover pair: main {main}, backup {backup}. Start the main with \
                 BACKUP_SERVER_HOSTID={backup}, then the backup."
            ),
        )),
        Err(e) => {
            let e = e.0;
            let status = status_of(&e);
            match view::pair_error_field(&e, &main.to_string(), &backup.to_string()) {
                Some("main_hostid") => page.main_error = Some(e.message),
                Some(_) => page.backup_error = Some(e.message),
                None => page.error = Some(e.message),
            }
            page.layout.title = format!("Error: {}", page.layout.title);
            html(&req, status, &page)
        }
    }
}

// ---------------------------------------------------------------------------
// Entitlements.

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
        layout: Layout::page(&req, &user, "Entitlements", "entitlements"),
        entitlements,
    };
    html(&req, StatusCode::OK, &page)
}

// ---------------------------------------------------------------------------
// Device tokens.

struct TokenView {
    id: String,
    name: String,
    created: String,
    expires: String,
    state: &'static str,
    active: bool,
}

fn token_view(t: &auth::DeviceToken, now: i64) -> TokenView {
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
    let list = run(state, move |c| auth::list_device_tokens(c, &account)).await?;
    let now = shared::now_unix();
    page.tokens = list.iter().map(|t| token_view(t, now)).collect();
    html(req, status, &page)
}

fn empty_tokens_page(req: &HttpRequest, user: &PortalUser) -> TokensPage {
    TokensPage {
        layout: Layout::page(req, user, "Device tokens", "tokens"),
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
            Ok(d) if (1..=3650).contains(&d) => Some(d),
            _ => {
                page.expires_error = Some(
                    "Enter a whole number of days from 1 to 3650, or leave it empty.".to_owned(),
                );
                return tokens_page(&req, &user, &state, page, StatusCode::BAD_REQUEST).await;
            }
        }
    };
    let (account, name) = (user.account_id.clone(), page.name.clone());
    match run(&state, move |c| {
        auth::create_device_token(c, &account, &name, days.map(|d| d * 86_400))
    })
    .await
    {
        Ok((t, secret)) => {
            page.created = Some((t.name, secret));
            page.name.clear();
            page.expires_in_days.clear();
            tokens_page(&req, &user, &state, page, StatusCode::OK).await
        }
        Err(e) if e.code() == ErrorCode::ValidationError => {
            let status = status_of(&e.0);
            match e.0.field.as_deref() {
                Some("expires_in_days") => page.expires_error = Some(e.0.message),
                _ => page.name_error = Some(e.0.message),
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
    let list = run(&state, move |c| auth::list_device_tokens(c, &account)).await?;
    let now = shared::now_unix();
    let token = list
        .iter()
        .find(|t| t.id == id)
        .map(|t| token_view(t, now))
        .ok_or(PortalError::NotFound)?;
    let page = RevokePage {
        layout: Layout::page(&req, &user, "Revoke a device token", "tokens"),
        csrf: user.csrf_token.clone(),
        token,
    };
    html(&req, StatusCode::OK, &page)
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
        let name = auth::list_device_tokens(c, &account)?
            .into_iter()
            .find(|t| t.id == id)
            .map(|t| t.name)
            .ok_or_else(|| AppError::not_found("device token"))?;
        auth::revoke_device_token(c, &account, &id)?;
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
        let t = auth::DeviceToken {
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
        let r = auth::DeviceToken {
            revoked_at: Some(10),
            ..t
        };
        assert_eq!(token_view(&r, 50).state, "Revoked");
    }
}
