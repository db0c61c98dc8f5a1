//! The capability protocol's storage side: a license server's request registers what it
//! implies (a standalone server, a pair, a waiting backup), maps the rights it asks for,
//! records the contact and what the server reported, and is answered with the complete
//! rights of its pair. Request IDs are kept so that a replay is refused.

use diesel::prelude::*;
use shared::ErrorCode;
use shared::capability::{CapabilityRequest, PairInfo, PairStatus, Right, Role, ServerReport};

use super::mappings::{ensure_rights, rights_of};
use super::servers::{
    PairRows, RegisteredBy, ServerRow, delete_backup, holder_of, hostid_of, insert_server, known,
    pair_by_id, register_pair_rows, server_by_id,
};
use super::{lock_account, unique_or, usage};
use crate::db::DbConn;
use crate::domain::registry::{self as rules, Known, Plan, ServerState};
use crate::error::{AppError, AppResult};
use crate::on_backend;
use crate::schema::{seen_requests, servers};

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
    on_backend!(conn, |c| diesel::insert_into(seen_requests::table)
        .values(values)
        .execute(c))
    .map_err(|e| {
        unique_or(e, || {
            AppError::new(
                ErrorCode::ReplayedRequest,
                "this request ID was seen before; send each request with a new ID",
            )
        })
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
    validate(req)?;
    // A main that dropped its backup (absence limit, or an operator on either server)
    // says so with every poll: the backup leaves the pair and is not added back.
    if req.role == Role::Main
        && req.report.as_ref().is_some_and(|r| r.backup_dropped)
        && let Some(answer) = dropped_backup(conn, account_id, req, now)?
    {
        return Ok(answer);
    }
    if req.rights.is_empty()
        && let Some(answer) = known_server(conn, account_id, req, now)?
    {
        return Ok(answer);
    }
    let row = register(conn, account_id, req, now)?;
    answer(conn, &row.id, row.role(), row.pair_id.as_deref())
}

fn validate(req: &CapabilityRequest) -> AppResult<()> {
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
    if let Some(r) = &req.report {
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
                "feature names are at most 64 characters, versions at most 32",
            ));
        }
    }
    Ok(())
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

impl From<crate::domain::DomainError> for NotFast {
    fn from(e: crate::domain::DomainError) -> Self {
        NotFast::Refused(e.into())
    }
}

/// The fast path: a known server in its known role, asking for nothing new. One short
/// transaction whose first statement writes the request ID: SQLite's write lock is taken
/// before anything is read (one snapshot, never upgraded), and PostgreSQL locks nothing but
/// the new request ID and the server's row. `None` when the request changes the registry.
fn known_server(
    conn: &mut DbConn,
    account_id: &str,
    req: &CapabilityRequest,
    now: i64,
) -> AppResult<Option<CapabilityAnswer>> {
    let fast = conn.transaction::<_, NotFast, _>(|c| {
        record_request_id(c, &req.request_id, now)?;
        let k = known(c, account_id, &req.hostid)?;
        // Without the backup's row: the rules consult it only to register a pair, and the
        // errors they find on the main's side come first. `Known` here is `Known` with it
        // too; anything else goes to the slow path, which looks it up.
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
        Ok(answer) => Ok(Some(answer)),
        Err(NotFast::Refused(e)) => Err(e),
        // Rolled back, request ID included: the slow path records it.
        Err(NotFast::Slow) => Ok(None),
    }
}

/// What carrying out a plan left.
enum Placed {
    /// The requesting server's row.
    Server(String),
    /// A backup recorded as waiting for its main: refused, but the record is kept.
    Waiting,
}

/// The slow path: changes the registry under the account's lock.
fn register(
    conn: &mut DbConn,
    account_id: &str,
    req: &CapabilityRequest,
    now: i64,
) -> AppResult<ServerRow> {
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
        let server_id = match place(c, account_id, req, plan, k.as_ref().map(|x| &x.0), now)? {
            Placed::Server(id) => id,
            Placed::Waiting => return Ok(Err(rules::waiting_backup_error(&req.hostid))),
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
    Ok(outcome?)
}

/// Carries out the rules' plan for the requesting server.
fn place(
    c: &mut DbConn,
    account_id: &str,
    req: &CapabilityRequest,
    plan: Plan,
    known: Option<&Known>,
    now: i64,
) -> AppResult<Placed> {
    let known_id = || {
        known
            .map(|k| k.server_id.clone())
            .ok_or_else(|| AppError::internal("the plan names a server that is not known"))
    };
    let id = match plan {
        Plan::Known => known_id()?,
        Plan::CreateStandalone => insert_server(
            c,
            account_id,
            &req.hostid,
            Role::Standalone,
            ServerState::Registered,
            now,
        )?,
        Plan::WaitingBecomesStandalone => {
            let id = known_id()?;
            diesel::update(servers::table.find(&id))
                .set((
                    servers::role.eq(Role::Standalone.as_str()),
                    servers::state.eq(ServerState::Registered.as_str()),
                ))
                .execute(c)?;
            id
        }
        Plan::RegisterPair { main, backup, pair } => {
            let backup_hostid = req.backup_hostid.as_ref().ok_or_else(|| {
                AppError::validation("backup_hostid", "a main server must name its backup")
            })?;
            let rows = PairRows {
                main_hostid: &req.hostid,
                backup_hostid,
                main,
                backup,
                pair,
            };
            register_pair_rows(c, account_id, rows, RegisteredBy::Capability, now)?.0
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
            return Ok(Placed::Waiting);
        }
    };
    Ok(Placed::Server(id))
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

/// Records a contact: time, state and what the server reported.
fn touch(
    conn: &mut DbConn,
    row: &ServerRow,
    report: Option<&ServerReport>,
    now: i64,
) -> AppResult<()> {
    let first = row.first_contact_at.unwrap_or(now);
    let contact = (
        servers::last_contact_at.eq(now),
        servers::first_contact_at.eq(first),
        servers::state.eq(ServerState::Registered.as_str()),
    );
    let Some(r) = report else {
        diesel::update(servers::table.find(&row.id))
            .set(contact)
            .execute(conn)?;
        return Ok(());
    };
    let usage_json = serde_json::to_string(&r.usage).map_err(AppError::internal)?;
    let sample = row
        .last_sample_at
        .is_none_or(|t| now - t >= usage::SAMPLE_EVERY);
    diesel::update(servers::table.find(&row.id))
        .set((
            contact,
            servers::reported_status.eq(r.server_status.as_str()),
            servers::reported_pair_status.eq(r.pair_status.map(PairStatus::as_str)),
            servers::usage_json.eq(usage_json),
            servers::last_sample_at.eq(if sample {
                Some(now)
            } else {
                row.last_sample_at
            }),
        ))
        .execute(conn)?;
    if sample {
        usage::record(conn, &row.id, &r.usage, now)?;
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
