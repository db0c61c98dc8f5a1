//! The license-server registry: servers, failover pairs, mapped rights, and the
//! capability protocol's storage side.

use diesel::prelude::*;
use serde::Serialize;
use shared::capability::{
    CapabilityRequest, FeatureUsage, PairInfo, PairStatus, Right, Role, ServerReport, ServerStatus,
};
use shared::{ErrorCode, HostId};

use super::{lock_account, new_id};
use crate::db::DbConn;
use crate::domain::registry::{self as rules, Known, KnownPair, Plan, ServerState};
use crate::domain::{status, validate};
use crate::error::{AppError, AppResult, is_unique_violation};
use crate::on_backend;
use crate::schema::{features, line_items, mappings, pairs, seen_requests, servers, usage_samples};

#[derive(Clone, Debug, Queryable)]
struct ServerRow {
    id: String,
    account_id: String,
    hostid: String,
    role: String,
    pair_id: Option<String>,
    state: String,
    first_contact_at: Option<i64>,
    last_contact_at: Option<i64>,
    reported_status: Option<String>,
    reported_pair_status: Option<String>,
    usage_json: Option<String>,
    last_sample_at: Option<i64>,
}

type ServerCols = (
    servers::id,
    servers::account_id,
    servers::hostid,
    servers::role,
    servers::pair_id,
    servers::state,
    servers::first_contact_at,
    servers::last_contact_at,
    servers::reported_status,
    servers::reported_pair_status,
    servers::usage_json,
    servers::last_sample_at,
);

const SERVER_COLS: ServerCols = (
    servers::id,
    servers::account_id,
    servers::hostid,
    servers::role,
    servers::pair_id,
    servers::state,
    servers::first_contact_at,
    servers::last_contact_at,
    servers::reported_status,
    servers::reported_pair_status,
    servers::usage_json,
    servers::last_sample_at,
);

impl ServerRow {
    fn role(&self) -> Role {
        Role::parse(&self.role).unwrap_or(Role::Standalone)
    }

    fn usage(&self) -> Vec<FeatureUsage> {
        self.usage_json
            .as_deref()
            .and_then(|j| serde_json::from_str(j).ok())
            .unwrap_or_default()
    }

    fn reported_status(&self) -> Option<ServerStatus> {
        match self.reported_status.as_deref() {
            Some("active") => Some(ServerStatus::Active),
            Some("ready") => Some(ServerStatus::Ready),
            Some("inaccessible") => Some(ServerStatus::Inaccessible),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, Queryable)]
struct PairRow {
    id: String,
    account_id: String,
    main_server_id: String,
    backup_server_id: Option<String>,
    registered_by: String,
    created_at: i64,
}

// The capability requests' lookups. By a primary or unique key they use `get_result`, not
// `first`: `first` adds `LIMIT ?`, and the bundled SQLite plans with the LIMIT's bound
// value, so it re-prepares such a statement every time it is bound (a sixth of a poll's CPU
// went there). They run on the backend's own connection (`on_backend!`).

fn server_by_hostid(conn: &mut DbConn, hostid: &str) -> AppResult<Option<ServerRow>> {
    Ok(on_backend!(conn, |c| servers::table
        .filter(servers::hostid.eq(hostid))
        .select(SERVER_COLS)
        .get_result(c)
        .optional())?)
}

fn server_by_id(conn: &mut DbConn, id: &str) -> AppResult<Option<ServerRow>> {
    Ok(on_backend!(conn, |c| servers::table
        .find(id)
        .select(SERVER_COLS)
        .get_result(c)
        .optional())?)
}

fn pair_by_id(conn: &mut DbConn, id: &str) -> AppResult<Option<PairRow>> {
    Ok(on_backend!(conn, |c| pairs::table
        .find(id)
        .get_result(c)
        .optional())?)
}

fn hostid_of(conn: &mut DbConn, server_id: &str) -> AppResult<HostId> {
    let h: String = on_backend!(conn, |c| servers::table
        .find(server_id)
        .select(servers::hostid)
        .get_result(c))?;
    HostId::parse(&h).map_err(AppError::internal)
}

/// What the registry knows of a hostid, as the domain rules see it.
fn known(
    conn: &mut DbConn,
    account_id: &str,
    hostid: &HostId,
) -> AppResult<Option<(Known, ServerRow)>> {
    let Some(row) = server_by_hostid(conn, &hostid.to_string())? else {
        return Ok(None);
    };
    // The server's own hostid is the one asked about: only its partner's is looked up.
    let hostid_of = |c: &mut DbConn, id: &str| {
        if id == row.id {
            Ok(hostid.clone())
        } else {
            hostid_of(c, id)
        }
    };
    let pair = match &row.pair_id {
        Some(pid) => match pair_by_id(conn, pid)? {
            Some(p) => Some(KnownPair {
                pair_id: p.id.clone(),
                main_server_id: p.main_server_id.clone(),
                main_hostid: hostid_of(conn, &p.main_server_id)?,
                backup_hostid: match &p.backup_server_id {
                    Some(b) => Some(hostid_of(conn, b)?),
                    None => None,
                },
            }),
            None => None,
        },
        None => None,
    };
    let k = Known {
        server_id: row.id.clone(),
        same_account: row.account_id == account_id,
        role: row.role(),
        state: ServerState::parse(&row.state),
        pair,
    };
    Ok(Some((k, row)))
}

/// What a capability request is answered with (before signing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapabilityAnswer {
    pub server_id: String,
    pub role: Role,
    pub pair: Option<PairInfo>,
    pub rights: Vec<Right>,
}

/// Records a request ID; a repeated one is a replay.
pub fn record_request_id(conn: &mut DbConn, request_id: &uuid::Uuid, now: i64) -> AppResult<()> {
    let values = (
        seen_requests::request_id.eq(request_id.to_string()),
        seen_requests::seen_at.eq(now),
    );
    let inserted = on_backend!(conn, |c| diesel::insert_into(seen_requests::table)
        .values(values)
        .execute(c));
    inserted.map_err(|e| {
        if is_unique_violation(&e) {
            AppError::new(
                ErrorCode::ReplayedRequest,
                "this request ID was seen before; send each request with a new ID",
            )
        } else {
            e.into()
        }
    })?;
    Ok(())
}

/// Forgets request IDs older than `before` (they are refused by the clock check anyway).
pub fn purge_request_ids(conn: &mut DbConn, before: i64) -> AppResult<usize> {
    Ok(
        diesel::delete(seen_requests::table.filter(seen_requests::seen_at.lt(before)))
            .execute(conn)?,
    )
}

/// Handles a capability request from a server of `account_id`: registers what the
/// request implies, maps requested rights, records the contact, and returns the rights.
pub fn capability(
    conn: &mut DbConn,
    account_id: &str,
    req: &CapabilityRequest,
    now: i64,
) -> AppResult<CapabilityAnswer> {
    if req.role != Role::Main && req.backup_hostid.is_some() {
        return Err(AppError::validation(
            "backup_hostid",
            "only a main server names a backup",
        ));
    }
    if req.rights.len() > 100 {
        return Err(AppError::validation(
            "rights",
            "at most 100 rights IDs per request",
        ));
    }
    validate_report(req.report.as_ref())?;

    // A main that dropped its backup (absence limit, or an operator on either server)
    // says so with every poll: the backup leaves the pair and is not added back.
    if req.role == Role::Main
        && req.report.as_ref().is_some_and(|r| r.backup_dropped)
        && let Some(answer) = dropped_backup(conn, account_id, req, now)?
    {
        return Ok(answer);
    }

    // Fast path: a known server in its known role, asking for nothing new. One short
    // transaction whose first statement writes the request ID: SQLite's write lock is taken
    // before anything is read (one snapshot, never upgraded), and PostgreSQL locks nothing
    // but the new request ID and the server's row.
    if req.rights.is_empty() {
        let fast = conn.transaction::<_, NotFast, _>(|c| {
            record_request_id(c, &req.request_id, now)?;
            let k = known(c, account_id, &req.hostid)?;
            // Without the backup's row: the rules consult it only to register a pair, and
            // the errors they find on the main's side come first. `Known` here is `Known`
            // with it too; anything else goes to the slow path, which looks it up.
            let plan = rules::plan(
                &req.hostid,
                req.role,
                req.backup_hostid.as_ref(),
                k.as_ref().map(|x| &x.0),
                None,
            )?;
            let (Plan::Known, Some((k, row))) = (plan, k) else {
                return Err(NotFast::Slow);
            };
            touch(c, &row, req.report.as_ref(), now)?;
            let holder = k
                .pair
                .as_ref()
                .map_or(&row.id, |p| &p.main_server_id)
                .clone();
            Ok(CapabilityAnswer {
                rights: rights_of(c, &holder)?,
                server_id: row.id,
                role: k.role,
                pair: k.pair.map(|p| PairInfo {
                    id: p.pair_id,
                    main: p.main_hostid,
                    backup: p.backup_hostid,
                }),
            })
        });
        match fast {
            Ok(answer) => return Ok(answer),
            Err(NotFast::Refused(e)) => return Err(e),
            // Rolled back, request ID included: the slow path records it.
            Err(NotFast::Slow) => {}
        }
    }

    // Slow path: change the registry under the account's lock.
    let outcome = conn.transaction::<_, AppError, _>(|c| {
        lock_account(c, account_id)?;
        record_request_id(c, &req.request_id, now)?;
        let k = known(c, account_id, &req.hostid)?;
        let kb = match &req.backup_hostid {
            Some(b) => known(c, account_id, b)?,
            None => None,
        };
        let plan = rules::plan(
            &req.hostid,
            req.role,
            req.backup_hostid.as_ref(),
            k.as_ref().map(|x| &x.0),
            kb.as_ref().map(|x| &x.0),
        )?;
        let server_id = match plan {
            Plan::Known => k
                .as_ref()
                .map(|x| x.0.server_id.clone())
                .ok_or_else(|| AppError::internal("plan Known without a known server"))?,
            Plan::CreateStandalone => insert_server(
                c,
                account_id,
                &req.hostid,
                Role::Standalone,
                ServerState::Registered,
                now,
            )?,
            Plan::WaitingBecomesStandalone => {
                let id = k
                    .as_ref()
                    .map(|x| x.0.server_id.clone())
                    .unwrap_or_default();
                diesel::update(servers::table.find(&id))
                    .set((
                        servers::role.eq(Role::Standalone.as_str()),
                        servers::state.eq(ServerState::Registered.as_str()),
                    ))
                    .execute(c)?;
                id
            }
            Plan::RegisterPair { main, backup, pair } => {
                let b = req.backup_hostid.as_ref().ok_or_else(|| {
                    AppError::validation("backup_hostid", "a main server must name its backup")
                })?;
                register_pair_rows(
                    c,
                    account_id,
                    &req.hostid,
                    b,
                    main,
                    backup,
                    pair,
                    true,
                    "capability",
                    now,
                )?
                .0
            }
            Plan::RecordWaitingBackup { existing } => {
                let id = match existing {
                    Some(id) => id,
                    None => insert_server(
                        c,
                        account_id,
                        &req.hostid,
                        Role::Backup,
                        ServerState::Waiting,
                        now,
                    )?,
                };
                diesel::update(servers::table.find(&id))
                    .set(servers::last_contact_at.eq(now))
                    .execute(c)?;
                return Ok(Err(rules::waiting_backup_error(&req.hostid)));
            }
        };
        let row = server_by_id(c, &server_id)?
            .ok_or_else(|| AppError::internal("server vanished inside its transaction"))?;
        let holder = holder_of(c, &row)?;
        for r in &req.rights {
            ensure_rights(
                c,
                account_id,
                &holder,
                &r.activation_id,
                i64::from(r.count),
                now,
            )?;
        }
        touch(c, &row, req.report.as_ref(), now)?;
        Ok(Ok(row))
    })?;
    let row = outcome?;
    answer(conn, &row.id, row.role(), row.pair_id.as_deref())
}

/// Why the fast path's transaction ended without an answer.
enum NotFast {
    /// The request changes the registry: the slow path takes it.
    Slow,
    Refused(AppError),
}

impl From<AppError> for NotFast {
    fn from(e: AppError) -> Self {
        NotFast::Refused(e)
    }
}

impl From<diesel::result::Error> for NotFast {
    fn from(e: diesel::result::Error) -> Self {
        NotFast::Refused(e.into())
    }
}

fn validate_report(report: Option<&ServerReport>) -> AppResult<()> {
    if let Some(r) = report {
        if r.usage.len() > 1000 {
            return Err(AppError::validation(
                "report.usage",
                "at most 1000 features",
            ));
        }
        if r.usage
            .iter()
            .any(|u| u.feature.len() > 64 || u.version.len() > 32)
        {
            return Err(AppError::validation(
                "report.usage",
                "feature names are at most 64 characters",
            ));
        }
    }
    Ok(())
}

fn insert_server(
    conn: &mut DbConn,
    account_id: &str,
    hostid: &HostId,
    role: Role,
    state: ServerState,
    now: i64,
) -> AppResult<String> {
    let id = new_id();
    diesel::insert_into(servers::table)
        .values((
            servers::id.eq(&id),
            servers::account_id.eq(account_id),
            servers::hostid.eq(hostid.to_string()),
            servers::role.eq(role.as_str()),
            servers::state.eq(state.as_str()),
            servers::created_at.eq(now),
        ))
        .execute(conn)
        .map_err(|e| {
            if is_unique_violation(&e) {
                AppError::new(
                    ErrorCode::HostidInUse,
                    format!("hostid {hostid} is registered to another account"),
                )
            } else {
                e.into()
            }
        })?;
    Ok(id)
}

/// Creates or completes a pair's rows. Returns (main server id, pair id).
#[expect(
    clippy::too_many_arguments,
    reason = "one call site per way a pair is registered"
)]
fn register_pair_rows(
    conn: &mut DbConn,
    account_id: &str,
    main_hostid: &HostId,
    backup_hostid: &HostId,
    main: Option<String>,
    backup: Option<String>,
    pair: Option<String>,
    main_speaks: bool,
    registered_by: &str,
    now: i64,
) -> AppResult<(String, String)> {
    let main_state = if main_speaks {
        ServerState::Registered
    } else {
        ServerState::Expected
    };
    let main_id = match main {
        Some(id) => {
            let row =
                server_by_id(conn, &id)?.ok_or_else(|| AppError::internal("main vanished"))?;
            let state = match ServerState::parse(&row.state) {
                ServerState::Registered => ServerState::Registered,
                _ => main_state,
            };
            diesel::update(servers::table.find(&id))
                .set((
                    servers::role.eq(Role::Main.as_str()),
                    servers::state.eq(state.as_str()),
                ))
                .execute(conn)?;
            id
        }
        None => insert_server(conn, account_id, main_hostid, Role::Main, main_state, now)?,
    };
    let backup_id = match backup {
        Some(id) => {
            let row =
                server_by_id(conn, &id)?.ok_or_else(|| AppError::internal("backup vanished"))?;
            let state = match ServerState::parse(&row.state) {
                ServerState::Registered => ServerState::Registered,
                _ => ServerState::Expected,
            };
            diesel::update(servers::table.find(&id))
                .set((
                    servers::role.eq(Role::Backup.as_str()),
                    servers::state.eq(state.as_str()),
                ))
                .execute(conn)?;
            id
        }
        None => insert_server(
            conn,
            account_id,
            backup_hostid,
            Role::Backup,
            ServerState::Expected,
            now,
        )?,
    };
    let pair_id = match pair {
        Some(pid) => {
            diesel::update(pairs::table.find(&pid))
                .set(pairs::backup_server_id.eq(Some(&backup_id)))
                .execute(conn)?;
            pid
        }
        None => {
            let pid = new_id();
            diesel::insert_into(pairs::table)
                .values((
                    pairs::id.eq(&pid),
                    pairs::account_id.eq(account_id),
                    pairs::main_server_id.eq(&main_id),
                    pairs::backup_server_id.eq(Some(&backup_id)),
                    pairs::registered_by.eq(registered_by),
                    pairs::created_at.eq(now),
                ))
                .execute(conn)?;
            pid
        }
    };
    diesel::update(servers::table.filter(servers::id.eq(&main_id).or(servers::id.eq(&backup_id))))
        .set(servers::pair_id.eq(Some(&pair_id)))
        .execute(conn)?;
    Ok((main_id, pair_id))
}

/// The server that holds a server's rights: itself, or its pair's main.
fn holder_of(conn: &mut DbConn, row: &ServerRow) -> AppResult<String> {
    match (&row.pair_id, row.role()) {
        (Some(pid), Role::Backup) => Ok(pair_by_id(conn, pid)?
            .map(|p| p.main_server_id)
            .unwrap_or_else(|| row.id.clone())),
        _ => Ok(row.id.clone()),
    }
}

/// Ensures at least `count` of the line item with `activation_id` is mapped to `holder`.
fn ensure_rights(
    conn: &mut DbConn,
    account_id: &str,
    holder: &str,
    activation_id: &str,
    count: i64,
    now: i64,
) -> AppResult<()> {
    let item: Option<(String, i64)> = line_items::table
        .filter(line_items::activation_id.eq(activation_id))
        .filter(line_items::account_id.eq(account_id))
        .select((line_items::id, line_items::quantity))
        .first(conn)
        .optional()?;
    let Some((item_id, quantity)) = item else {
        return Err(unknown_rights(activation_id));
    };
    let maps: Vec<(String, String, i64)> = mappings::table
        .filter(mappings::line_item_id.eq(&item_id))
        .select((mappings::id, mappings::server_id, mappings::quantity))
        .load(conn)?;
    let here = maps.iter().find(|m| m.1 == holder);
    let total: i64 = maps.iter().map(|m| m.2).sum();
    let Some(new_qty) = rules::ensure_mapping(
        activation_id,
        count,
        here.map_or(0, |m| m.2),
        total,
        quantity,
    )?
    else {
        return Ok(());
    };
    match here {
        Some((mid, _, _)) => {
            diesel::update(mappings::table.find(mid))
                .set(mappings::quantity.eq(new_qty))
                .execute(conn)?;
        }
        None => {
            diesel::insert_into(mappings::table)
                .values((
                    mappings::id.eq(new_id()),
                    mappings::account_id.eq(account_id),
                    mappings::line_item_id.eq(&item_id),
                    mappings::server_id.eq(holder),
                    mappings::quantity.eq(new_qty),
                    mappings::created_at.eq(now),
                ))
                .execute(conn)?;
        }
    }
    Ok(())
}

fn unknown_rights(activation_id: &str) -> AppError {
    AppError::new(
        ErrorCode::UnknownRightsId,
        format!(
            "no line item of this account has activation ID {}",
            activation_id.chars().take(64).collect::<String>()
        ),
    )
}

/// A registered main reports that it dropped its backup: remove the backup from the pair
/// (whatever is in use: the main itself let it go) and answer as the pair's main.
/// `None` when the requester is not a registered main (the usual rules apply).
fn dropped_backup(
    conn: &mut DbConn,
    account_id: &str,
    req: &CapabilityRequest,
    now: i64,
) -> AppResult<Option<CapabilityAnswer>> {
    let is_main = |k: &Known| k.role == Role::Main && k.same_account && k.pair.is_some();
    if !known(conn, account_id, &req.hostid)?.is_some_and(|(k, _)| is_main(&k)) {
        return Ok(None);
    }
    conn.transaction::<_, AppError, _>(|c| {
        lock_account(c, account_id)?;
        let Some((k, row)) = known(c, account_id, &req.hostid)?.filter(|(k, _)| is_main(k))
        else {
            return Ok(None);
        };
        let Some(pair) = k.pair else {
            return Ok(None);
        };
        record_request_id(c, &req.request_id, now)?;
        if let Some(p) = pair_by_id(c, &pair.pair_id)?
            && let Some(backup_id) = p.backup_server_id.clone()
        {
            delete_backup(c, &p.id, &backup_id)?;
            tracing::info!(pair = %p.id, main = %req.hostid, "the main dropped its backup; removed from the pair");
        }
        touch(c, &row, req.report.as_ref(), now)?;
        Ok(Some(CapabilityAnswer {
            rights: rights_of(c, &row.id)?,
            server_id: row.id,
            role: Role::Main,
            pair: Some(PairInfo {
                id: pair.pair_id,
                main: pair.main_hostid,
                backup: None,
            }),
        }))
    })
}

/// Takes a pair's backup out of it: the pair keeps its main and its rights.
fn delete_backup(c: &mut DbConn, pair_id: &str, backup_id: &str) -> AppResult<()> {
    diesel::update(pairs::table.find(pair_id))
        .set(pairs::backup_server_id.eq(None::<String>))
        .execute(c)?;
    diesel::delete(usage_samples::table.filter(usage_samples::server_id.eq(backup_id)))
        .execute(c)?;
    diesel::delete(servers::table.find(backup_id)).execute(c)?;
    Ok(())
}

/// Records a contact: time, state and what the server reported.
fn touch(
    conn: &mut DbConn,
    row: &ServerRow,
    report: Option<&ServerReport>,
    now: i64,
) -> AppResult<()> {
    let first = row.first_contact_at.unwrap_or(now);
    match report {
        None => {
            diesel::update(servers::table.find(&row.id))
                .set((
                    servers::last_contact_at.eq(now),
                    servers::first_contact_at.eq(first),
                    servers::state.eq(ServerState::Registered.as_str()),
                ))
                .execute(conn)?;
        }
        Some(r) => {
            let usage = serde_json::to_string(&r.usage).map_err(AppError::internal)?;
            let sample = row.last_sample_at.is_none_or(|t| now - t >= 60);
            diesel::update(servers::table.find(&row.id))
                .set((
                    servers::last_contact_at.eq(now),
                    servers::first_contact_at.eq(first),
                    servers::state.eq(ServerState::Registered.as_str()),
                    servers::reported_status.eq(r.server_status.as_str()),
                    servers::reported_pair_status.eq(r.pair_status.map(PairStatus::as_str)),
                    servers::usage_json.eq(usage),
                    servers::last_sample_at.eq(if sample {
                        Some(now)
                    } else {
                        row.last_sample_at
                    }),
                ))
                .execute(conn)?;
            if sample && !r.usage.is_empty() {
                // One statement a row: batch inserts are not portable across the backends.
                for u in &r.usage {
                    diesel::insert_into(usage_samples::table)
                        .values((
                            usage_samples::id.eq(new_id()),
                            usage_samples::server_id.eq(&row.id),
                            usage_samples::feature.eq(&u.feature),
                            usage_samples::version.eq(&u.version),
                            usage_samples::count.eq(i64::from(u.count)),
                            usage_samples::in_use.eq(i64::from(u.in_use)),
                            usage_samples::sampled_at.eq(now),
                        ))
                        .execute(conn)?;
                }
            }
        }
    }
    Ok(())
}

/// The complete current rights of a server's pair (or of the server alone).
fn answer(
    conn: &mut DbConn,
    server_id: &str,
    role: Role,
    pair_id: Option<&str>,
) -> AppResult<CapabilityAnswer> {
    let (holder, pair) = match pair_id {
        Some(pid) => {
            let p = pair_by_id(conn, pid)?.ok_or_else(|| AppError::internal("pair vanished"))?;
            let info = PairInfo {
                id: p.id.clone(),
                main: hostid_of(conn, &p.main_server_id)?,
                backup: match &p.backup_server_id {
                    Some(b) => Some(hostid_of(conn, b)?),
                    None => None,
                },
            };
            (p.main_server_id, Some(info))
        }
        None => (server_id.to_owned(), None),
    };
    Ok(CapabilityAnswer {
        server_id: server_id.to_owned(),
        role,
        pair,
        rights: rights_of(conn, &holder)?,
    })
}

/// Rights mapped to a holder: one entry per (line item, feature).
pub fn rights_of(conn: &mut DbConn, holder: &str) -> AppResult<Vec<Right>> {
    let rows: Vec<(String, i64, i64, Option<i64>, String, String)> =
        on_backend!(conn, |c| mappings::table
            .inner_join(line_items::table)
            .inner_join(features::table.on(features::product_id.eq(line_items::product_id)))
            .filter(mappings::server_id.eq(holder))
            .select((
                line_items::activation_id,
                mappings::quantity,
                line_items::starts_at,
                line_items::expires_at,
                features::name,
                features::version,
            ))
            .order((line_items::activation_id, features::name))
            .load(c))?;
    Ok(rows
        .into_iter()
        .map(
            |(activation_id, qty, starts_at, expires_at, feature, version)| Right {
                activation_id,
                feature,
                version,
                count: u32::try_from(qty).unwrap_or(u32::MAX),
                starts_at,
                expires_at,
            },
        )
        .collect())
}

// ---------------------------------------------------------------------------
// The account's view and hand operations.

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ServerInfo {
    pub id: String,
    pub hostid: String,
    pub role: Role,
    /// registered, expected or waiting.
    pub registration: String,
    pub status: ServerStatus,
    pub first_contact_at: Option<i64>,
    pub last_contact_at: Option<i64>,
    pub pair_id: Option<String>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct PairView {
    pub id: String,
    pub status: PairStatus,
    pub registered_by: String,
    pub created_at: i64,
    pub main: ServerInfo,
    pub backup: Option<ServerInfo>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct MappedRight {
    pub mapping_id: String,
    pub line_item_id: String,
    pub activation_id: String,
    pub product_name: String,
    pub product_version: String,
    pub quantity: i64,
    pub starts_at: i64,
    pub expires_at: Option<i64>,
    pub features: Vec<FeatureRef>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct FeatureRef {
    pub name: String,
    pub version: String,
}

/// Everything the View Server page shows.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ServerView {
    pub server: ServerInfo,
    pub pair: Option<PairView>,
    pub rights: Vec<MappedRight>,
    pub usage: Vec<FeatureUsage>,
    pub usage_reported_at: Option<i64>,
}

/// One row of the Servers list.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ServerSummary {
    #[serde(flatten)]
    pub server: ServerInfo,
    pub pair_status: Option<PairStatus>,
    pub partner_hostid: Option<String>,
}

fn info(row: &ServerRow, now: i64, timeout: i64) -> ServerInfo {
    ServerInfo {
        id: row.id.clone(),
        hostid: row.hostid.clone(),
        role: row.role(),
        registration: row.state.clone(),
        status: status::server_status(
            row.role(),
            row.last_contact_at,
            row.reported_status(),
            now,
            timeout,
        ),
        first_contact_at: row.first_contact_at,
        last_contact_at: row.last_contact_at,
        pair_id: row.pair_id.clone(),
    }
}

fn pair_view(conn: &mut DbConn, p: &PairRow, now: i64, timeout: i64) -> AppResult<PairView> {
    let main = server_by_id(conn, &p.main_server_id)?
        .ok_or_else(|| AppError::internal("main vanished"))?;
    let backup = match &p.backup_server_id {
        Some(b) => server_by_id(conn, b)?,
        None => None,
    };
    let mi = info(&main, now, timeout);
    let bi = backup.as_ref().map(|b| info(b, now, timeout));
    let parse = |s: &Option<String>| s.as_deref().and_then(PairStatus::parse);
    let st = status::pair_status(
        mi.status,
        bi.as_ref().map(|b| b.status),
        parse(&main.reported_pair_status),
        backup.as_ref().and_then(|b| parse(&b.reported_pair_status)),
    );
    Ok(PairView {
        id: p.id.clone(),
        status: st,
        registered_by: p.registered_by.clone(),
        created_at: p.created_at,
        main: mi,
        backup: bi,
    })
}

pub fn list_servers(
    conn: &mut DbConn,
    account_id: &str,
    now: i64,
    timeout: i64,
) -> AppResult<Vec<ServerSummary>> {
    let rows: Vec<ServerRow> = servers::table
        .filter(servers::account_id.eq(account_id))
        .select(SERVER_COLS)
        .order(servers::hostid)
        .load(conn)?;
    let prs: Vec<PairRow> = pairs::table
        .filter(pairs::account_id.eq(account_id))
        .load(conn)?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        let p = row
            .pair_id
            .as_ref()
            .and_then(|pid| prs.iter().find(|p| &p.id == pid));
        let (pair_status, partner) = match p {
            Some(p) => {
                let v = pair_view(conn, p, now, timeout)?;
                let partner = if v.main.id == row.id {
                    v.backup.as_ref().map(|b| b.hostid.clone())
                } else {
                    Some(v.main.hostid.clone())
                };
                (Some(v.status), partner)
            }
            None => (None, None),
        };
        out.push(ServerSummary {
            server: info(row, now, timeout),
            pair_status,
            partner_hostid: partner,
        });
    }
    Ok(out)
}

fn account_server(conn: &mut DbConn, account_id: &str, server_id: &str) -> AppResult<ServerRow> {
    server_by_id(conn, server_id)?
        .filter(|r| r.account_id == account_id)
        .ok_or_else(|| AppError::not_found("server"))
}

pub fn view_server(
    conn: &mut DbConn,
    account_id: &str,
    server_id: &str,
    now: i64,
    timeout: i64,
) -> AppResult<ServerView> {
    let row = account_server(conn, account_id, server_id)?;
    let pair = match &row.pair_id {
        Some(pid) => match pair_by_id(conn, pid)? {
            Some(p) => Some(pair_view(conn, &p, now, timeout)?),
            None => None,
        },
        None => None,
    };
    let holder = holder_of(conn, &row)?;
    /// mapping, line item, activation ID, product name and version, quantity, start,
    /// expiry, product.
    type MappingRow = (
        String,
        String,
        String,
        String,
        String,
        i64,
        i64,
        Option<i64>,
        String,
    );
    let maps: Vec<MappingRow> = mappings::table
        .inner_join(line_items::table.inner_join(crate::schema::products::table))
        .filter(mappings::server_id.eq(&holder))
        .select((
            mappings::id,
            line_items::id,
            line_items::activation_id,
            crate::schema::products::name,
            crate::schema::products::version,
            mappings::quantity,
            line_items::starts_at,
            line_items::expires_at,
            line_items::product_id,
        ))
        .order(line_items::activation_id)
        .load(conn)?;
    let mut rights = Vec::with_capacity(maps.len());
    for (
        mapping_id,
        line_item_id,
        activation_id,
        product_name,
        product_version,
        quantity,
        starts_at,
        expires_at,
        product_id,
    ) in maps
    {
        let feats: Vec<(String, String)> = features::table
            .filter(features::product_id.eq(&product_id))
            .select((features::name, features::version))
            .order(features::name)
            .load(conn)?;
        rights.push(MappedRight {
            mapping_id,
            line_item_id,
            activation_id,
            product_name,
            product_version,
            quantity,
            starts_at,
            expires_at,
            features: feats
                .into_iter()
                .map(|(name, version)| FeatureRef { name, version })
                .collect(),
        });
    }
    // Usage: what the serving member of the pair last reported.
    let mut usage = row.usage();
    let mut reported_at = row.usage_json.as_ref().and(row.last_contact_at);
    if let Some(p) = &pair {
        for member in [Some(&p.main), p.backup.as_ref()].into_iter().flatten() {
            if member.status == ServerStatus::Active
                && let Some(m) = server_by_id(conn, &member.id)?
            {
                usage = m.usage();
                reported_at = m.usage_json.as_ref().and(m.last_contact_at);
                break;
            }
        }
    }
    Ok(ServerView {
        server: info(&row, now, timeout),
        pair,
        rights,
        usage,
        usage_reported_at: reported_at,
    })
}

/// Registers a failover pair by hand, before either server has started.
pub fn register_pair(
    conn: &mut DbConn,
    account_id: &str,
    main: &HostId,
    backup: &HostId,
) -> AppResult<PairView> {
    let now = shared::now_unix();
    let pid = conn.transaction::<_, AppError, _>(|c| {
        lock_account(c, account_id)?;
        let k = known(c, account_id, main)?;
        let kb = known(c, account_id, backup)?;
        if let Some((
            Known {
                pair: Some(p),
                role: Role::Main,
                ..
            },
            _,
        )) = &k
            && p.backup_hostid.as_ref() == Some(backup)
        {
            return Err(AppError::new(
                ErrorCode::AlreadyExists,
                format!("{main} and {backup} are already registered as a pair"),
            ));
        }
        match rules::plan(
            main,
            Role::Main,
            Some(backup),
            k.as_ref().map(|x| &x.0),
            kb.as_ref().map(|x| &x.0),
        )? {
            Plan::RegisterPair {
                main: m,
                backup: b,
                pair,
            } => Ok(register_pair_rows(
                c, account_id, main, backup, m, b, pair, false, "portal", now,
            )?
            .1),
            _ => Err(AppError::new(
                ErrorCode::AlreadyExists,
                format!("{main} and {backup} are already registered as a pair"),
            )),
        }
    })?;
    let p = pair_by_id(conn, &pid)?.ok_or_else(|| AppError::internal("pair vanished"))?;
    pair_view(conn, &p, now, i64::MAX)
}

/// Removes a pair's backup; refused while the pair's rights are in use.
pub fn remove_backup(
    conn: &mut DbConn,
    account_id: &str,
    pair_id: &str,
    now: i64,
    timeout: i64,
) -> AppResult<()> {
    conn.transaction::<_, AppError, _>(|c| {
        lock_account(c, account_id)?;
        let p = pair_by_id(c, pair_id)?
            .filter(|p| p.account_id == account_id)
            .ok_or_else(|| AppError::not_found("pair"))?;
        let Some(backup_id) = p.backup_server_id.clone() else {
            return Err(AppError::new(ErrorCode::NotFound, "the pair has no backup"));
        };
        let in_use: u32 = [Some(p.main_server_id.clone()), Some(backup_id.clone())]
            .into_iter()
            .flatten()
            .filter_map(|id| server_by_id(c, &id).ok().flatten())
            .filter(|r| r.last_contact_at.is_some_and(|t| now - t <= timeout))
            .flat_map(|r| r.usage())
            .map(|u| u.in_use)
            .sum();
        if in_use > 0 {
            return Err(AppError::new(
                ErrorCode::PairHasActiveRights,
                format!(
                    "{in_use} seats of this pair's rights are in use; wait until they are returned \
                     (or stop the servers) before removing the backup"
                ),
            ));
        }
        delete_backup(c, &p.id, &backup_id)
    })
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Mapping {
    pub id: String,
    pub line_item_id: String,
    pub activation_id: String,
    /// The server that holds the rights: the pair's main, or a standalone server.
    pub server_id: String,
    pub quantity: i64,
}

/// Maps `quantity` more of a line item to a server or its pair.
pub fn map_rights(
    conn: &mut DbConn,
    account_id: &str,
    activation_id: &str,
    server_id: &str,
    quantity: i64,
) -> AppResult<Mapping> {
    validate::quantity("quantity", quantity)?;
    let now = shared::now_unix();
    conn.transaction::<_, AppError, _>(|c| {
        lock_account(c, account_id)?;
        let item: Option<(String, i64)> = line_items::table
            .filter(line_items::activation_id.eq(activation_id))
            .filter(line_items::account_id.eq(account_id))
            .select((line_items::id, line_items::quantity))
            .first(c)
            .optional()?;
        let (item_id, total_qty) = item.ok_or_else(|| unknown_rights(activation_id))?;
        let row = account_server(c, account_id, server_id)?;
        if row.role() == Role::Backup && row.pair_id.is_none() {
            return Err(AppError::new(
                ErrorCode::RoleConflict,
                "this backup has no registered main; map rights to the main or the pair",
            ));
        }
        let holder = holder_of(c, &row)?;
        let maps: Vec<(String, String, i64)> = mappings::table
            .filter(mappings::line_item_id.eq(&item_id))
            .select((mappings::id, mappings::server_id, mappings::quantity))
            .load(c)?;
        let total: i64 = maps.iter().map(|m| m.2).sum();
        rules::check_map(activation_id, quantity, total, total_qty)?;
        let (id, qty) = match maps.iter().find(|m| m.1 == holder) {
            Some((mid, _, q)) => {
                diesel::update(mappings::table.find(mid))
                    .set(mappings::quantity.eq(q + quantity))
                    .execute(c)?;
                (mid.clone(), q + quantity)
            }
            None => {
                let mid = new_id();
                diesel::insert_into(mappings::table)
                    .values((
                        mappings::id.eq(&mid),
                        mappings::account_id.eq(account_id),
                        mappings::line_item_id.eq(&item_id),
                        mappings::server_id.eq(&holder),
                        mappings::quantity.eq(quantity),
                        mappings::created_at.eq(now),
                    ))
                    .execute(c)?;
                (mid, quantity)
            }
        };
        Ok(Mapping {
            id,
            line_item_id: item_id,
            activation_id: activation_id.to_owned(),
            server_id: holder,
            quantity: qty,
        })
    })
}

/// Removes a mapping; the rights leave the servers at their next poll.
pub fn unmap(conn: &mut DbConn, account_id: &str, mapping_id: &str) -> AppResult<()> {
    conn.transaction::<_, AppError, _>(|c| {
        lock_account(c, account_id)?;
        let n = diesel::delete(
            mappings::table
                .filter(mappings::id.eq(mapping_id))
                .filter(mappings::account_id.eq(account_id)),
        )
        .execute(c)?;
        if n == 0 {
            return Err(AppError::not_found("mapping"));
        }
        Ok(())
    })
}

/// One point of a usage chart.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct UsagePoint {
    pub feature: String,
    pub version: String,
    pub at: i64,
    pub count: i64,
    pub in_use: i64,
}

/// Usage samples of a server and its pair partner since `since`, oldest first.
pub fn usage_history(
    conn: &mut DbConn,
    account_id: &str,
    server_id: &str,
    since: i64,
) -> AppResult<Vec<UsagePoint>> {
    let row = account_server(conn, account_id, server_id)?;
    let mut ids = vec![row.id.clone()];
    if let Some(pid) = &row.pair_id
        && let Some(p) = pair_by_id(conn, pid)?
    {
        ids.push(p.main_server_id);
        ids.extend(p.backup_server_id);
    }
    let mut points = Vec::new();
    for id in ids.iter().collect::<std::collections::BTreeSet<_>>() {
        let rows: Vec<(String, String, i64, i64, i64)> = usage_samples::table
            .filter(usage_samples::server_id.eq(id))
            .filter(usage_samples::sampled_at.ge(since))
            .select((
                usage_samples::feature,
                usage_samples::version,
                usage_samples::sampled_at,
                usage_samples::count,
                usage_samples::in_use,
            ))
            .order(usage_samples::sampled_at)
            .limit(10_000)
            .load(conn)?;
        points.extend(
            rows.into_iter()
                .map(|(feature, version, at, count, in_use)| UsagePoint {
                    feature,
                    version,
                    at,
                    count,
                    in_use,
                }),
        );
    }
    points.sort_by_key(|p| p.at);
    Ok(points)
}
