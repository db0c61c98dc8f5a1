//! The license-server registry's rows: servers and failover pairs, looked up, created and
//! paired; what the domain rules are told about a hostid; the holder of a server's rights.

use diesel::prelude::*;
use shared::HostId;
use shared::capability::{FeatureUsage, PairStatus, Role, ServerStatus};

use super::{new_id, unique_or};
use crate::db::DbConn;
use crate::domain::registry::{self as rules, Known, KnownPair, ServerState};
use crate::error::{AppError, AppResult};
use crate::on_backend;
use crate::schema::{pairs, servers, usage_samples};

/// A server's row, as every query of it selects it.
#[derive(Clone, Debug, Queryable, Selectable)]
#[diesel(table_name = servers)]
pub(super) struct ServerRow {
    pub id: String,
    pub account_id: String,
    pub hostid: String,
    pub role: String,
    pub pair_id: Option<String>,
    pub state: String,
    pub first_contact_at: Option<i64>,
    pub last_contact_at: Option<i64>,
    pub reported_status: Option<String>,
    pub reported_pair_status: Option<String>,
    pub usage_json: Option<String>,
    pub last_sample_at: Option<i64>,
}

impl ServerRow {
    pub fn role(&self) -> Role {
        Role::parse(&self.role).unwrap_or(Role::Standalone)
    }

    pub fn usage(&self) -> Vec<FeatureUsage> {
        self.usage_json
            .as_deref()
            .and_then(|j| serde_json::from_str(j).ok())
            .unwrap_or_default()
    }

    pub fn reported_status(&self) -> Option<ServerStatus> {
        match self.reported_status.as_deref() {
            Some("active") => Some(ServerStatus::Active),
            Some("ready") => Some(ServerStatus::Ready),
            Some("inaccessible") => Some(ServerStatus::Inaccessible),
            _ => None,
        }
    }

    pub fn reported_pair_status(&self) -> Option<PairStatus> {
        self.reported_pair_status
            .as_deref()
            .and_then(PairStatus::parse)
    }
}

#[derive(Clone, Debug, Queryable, Selectable)]
#[diesel(table_name = pairs)]
pub(super) struct PairRow {
    pub id: String,
    pub account_id: String,
    pub main_server_id: String,
    pub backup_server_id: Option<String>,
    pub registered_by: String,
    pub created_at: i64,
}

// The capability requests' lookups. By a primary or unique key they use `get_result`, not
// `first`: `first` adds `LIMIT ?`, and the bundled SQLite plans with the LIMIT's bound
// value, so it re-prepares such a statement every time it is bound (a sixth of a poll's CPU
// went there). They run on the backend's own connection (`on_backend!`).

pub(super) fn server_by_hostid(conn: &mut DbConn, hostid: &str) -> AppResult<Option<ServerRow>> {
    Ok(on_backend!(conn, |c| servers::table
        .filter(servers::hostid.eq(hostid))
        .select(ServerRow::as_select())
        .get_result(c)
        .optional())?)
}

pub(super) fn server_by_id(conn: &mut DbConn, id: &str) -> AppResult<Option<ServerRow>> {
    Ok(on_backend!(conn, |c| servers::table
        .find(id)
        .select(ServerRow::as_select())
        .get_result(c)
        .optional())?)
}

pub(super) fn pair_by_id(conn: &mut DbConn, id: &str) -> AppResult<Option<PairRow>> {
    Ok(on_backend!(conn, |c| pairs::table
        .find(id)
        .select(PairRow::as_select())
        .get_result(c)
        .optional())?)
}

pub(super) fn hostid_of(conn: &mut DbConn, server_id: &str) -> AppResult<HostId> {
    let h: String = on_backend!(conn, |c| servers::table
        .find(server_id)
        .select(servers::hostid)
        .get_result(c))?;
    HostId::parse(&h).map_err(AppError::internal)
}

/// What the registry knows of a hostid, as the domain rules see it, with its row.
pub(super) fn known(
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

pub(super) fn insert_server(
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
        .map_err(|e| unique_or(e, || rules::in_use(hostid).into()))?;
    Ok(id)
}

/// Who registers a pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RegisteredBy {
    /// The main's own capability request: the main has spoken.
    Capability,
    /// An account user, before either server has started.
    Portal,
}

impl RegisteredBy {
    fn as_str(self) -> &'static str {
        match self {
            RegisteredBy::Capability => "capability",
            RegisteredBy::Portal => "portal",
        }
    }
}

/// A pair to create or complete, as [`Plan::RegisterPair`] found it.
pub(super) struct PairRows<'a> {
    pub main_hostid: &'a HostId,
    pub backup_hostid: &'a HostId,
    /// The rows that exist already.
    pub main: Option<String>,
    pub backup: Option<String>,
    pub pair: Option<String>,
}

/// Creates or completes a pair's rows. Returns (main server id, pair id).
pub(super) fn register_pair_rows(
    conn: &mut DbConn,
    account_id: &str,
    rows: PairRows<'_>,
    by: RegisteredBy,
    now: i64,
) -> AppResult<(String, String)> {
    let main_state = match by {
        RegisteredBy::Capability => ServerState::Registered,
        RegisteredBy::Portal => ServerState::Expected,
    };
    let mut member = |existing: Option<String>, hostid: &HostId, role: Role, state: ServerState| {
        place_member(conn, account_id, existing, hostid, role, state, now)
    };
    let main_id = member(rows.main, rows.main_hostid, Role::Main, main_state)?;
    let backup_id = member(
        rows.backup,
        rows.backup_hostid,
        Role::Backup,
        ServerState::Expected,
    )?;
    let pair_id = match rows.pair {
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
                    pairs::registered_by.eq(by.as_str()),
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

/// Gives a pair member its role: its existing row (a registered server stays registered,
/// any other takes `state`), or a new row in `state`.
fn place_member(
    conn: &mut DbConn,
    account_id: &str,
    existing: Option<String>,
    hostid: &HostId,
    role: Role,
    state: ServerState,
    now: i64,
) -> AppResult<String> {
    let Some(id) = existing else {
        return insert_server(conn, account_id, hostid, role, state, now);
    };
    let row = server_by_id(conn, &id)?
        .ok_or_else(|| AppError::internal("a pair member vanished inside its transaction"))?;
    let state = match ServerState::parse(&row.state) {
        ServerState::Registered => ServerState::Registered,
        _ => state,
    };
    diesel::update(servers::table.find(&id))
        .set((
            servers::role.eq(role.as_str()),
            servers::state.eq(state.as_str()),
        ))
        .execute(conn)?;
    Ok(id)
}

/// The server that holds a server's rights: itself, or its pair's main.
pub(super) fn holder_of(conn: &mut DbConn, row: &ServerRow) -> AppResult<String> {
    match (&row.pair_id, row.role()) {
        (Some(pid), Role::Backup) => Ok(pair_by_id(conn, pid)?
            .map(|p| p.main_server_id)
            .unwrap_or_else(|| row.id.clone())),
        _ => Ok(row.id.clone()),
    }
}

/// Takes a pair's backup out of it: the pair keeps its main and its rights.
pub(super) fn delete_backup(c: &mut DbConn, pair_id: &str, backup_id: &str) -> AppResult<()> {
    diesel::update(pairs::table.find(pair_id))
        .set(pairs::backup_server_id.eq(None::<String>))
        .execute(c)?;
    diesel::delete(usage_samples::table.filter(usage_samples::server_id.eq(backup_id)))
        .execute(c)?;
    diesel::delete(servers::table.find(backup_id)).execute(c)?;
    Ok(())
}

/// A server of `account_id` (another account's is `NOT_FOUND`, like a missing one).
pub(super) fn account_server(
    conn: &mut DbConn,
    account_id: &str,
    server_id: &str,
) -> AppResult<ServerRow> {
    server_by_id(conn, server_id)?
        .filter(|r| r.account_id == account_id)
        .ok_or_else(|| AppError::not_found("server"))
}
