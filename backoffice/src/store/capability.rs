//! The capability protocol's storage side. Polls (a known server in its known role, asking
//! for nothing new) are carried out a batch at a time in a few statements for the whole
//! batch ([`polls`]); anything else (registering a server or a pair, mapping the rights a
//! request asks for, a main that dropped its backup) takes the slow path ([`capability`])
//! under the account's lock. Either records the contact, what the server reported and its
//! public key, and answers with the complete rights of its pair, and with the pair's secret
//! for the pair's two servers. Request IDs are kept so that a replay is refused, and
//! forgotten in small chunks.

use std::collections::{HashMap, HashSet};

use diesel::prelude::*;
use shared::ErrorCode;
use shared::capability::{
    CapabilityRequest, ClusterInfo, ClusterStatus, PairInfo, PairStatus, Right, Role, ServerReport,
};
use shared::secret::Secret;

use super::mappings::{ensure_rights, rights_of};
use super::servers::{
    Entry, PairRows, RegisteredBy, ServerRow, delete_backup, ensure_pair_token, entries, holder_of,
    insert_server, known, register_cluster_rows, register_pair_rows, server_by_id,
};
use super::{lock_account, tokens, unique_or, usage};
use crate::db::DbConn;
use crate::domain::registry::{self as rules, Known, Plan, ServerState};
use crate::domain::validate::ServerKey;
use crate::error::{AppError, AppResult};
use crate::on_backend;
use crate::schema::{seen_requests, servers};

/// What a capability request is answered with (before signing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapabilityAnswer {
    pub server_id: String,
    pub role: Role,
    pub pair: Option<PairInfo>,
    pub cluster: Option<ClusterInfo>,
    pub rights: Vec<Right>,
    /// The pair's secret, for either server of a pair that has both.
    pub pair_token: Option<Secret>,
    /// The server's public key changed with this request.
    pub key_change: Option<KeyChange>,
}

impl CapabilityAnswer {
    /// Its revision ([`shared::capability::revision`]): what a live link compares.
    pub fn revision(&self) -> String {
        shared::capability::revision(
            &self.server_id,
            self.role,
            self.pair.as_ref(),
            self.cluster.as_ref(),
            &self.rights,
            self.pair_token.as_ref().map(Secret::expose),
        )
    }
}

/// What a known server of `account_id` would be answered with now, read without writing
/// anything (a live link looking again); `None` when it is not (or no longer) the
/// account's.
pub fn current_answer(
    conn: &mut DbConn,
    account_id: &str,
    hostid: &shared::HostId,
) -> AppResult<Option<CapabilityAnswer>> {
    let Some((k, e)) = known(conn, account_id, hostid)? else {
        return Ok(None);
    };
    let h = holder(&k);
    let rights = rights_of(conn, &[h])?.remove(h).unwrap_or_default();
    Ok(Some(answer_of(&k, &e, rights, None)))
}

/// A server's public key changed: the key IDs before (none the first time) and after.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyChange {
    pub old: Option<String>,
    pub new: String,
}

/// One poll of a batch: the device token it came with, the request, its checked server
/// key, and when it came.
#[derive(Clone, Copy, Debug)]
pub struct Poll<'a> {
    pub token: &'a str,
    pub request: &'a CapabilityRequest,
    pub key: Option<&'a ServerKey>,
    pub now: i64,
}

/// How a poll came out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Polled {
    Answered(Box<CapabilityAnswer>),
    /// It changes the registry: the slow path ([`capability`]) takes it. Nothing of it was
    /// written.
    Slow,
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
    .map_err(|e| unique_or(e, replayed))?;
    Ok(())
}

fn replayed() -> AppError {
    AppError::new(
        ErrorCode::ReplayedRequest,
        "this request ID was seen before; send each request with a new ID",
    )
}

/// Records request IDs (ID, time) in one statement; returns those that were new. They are
/// written in order: two batches that both hold IDs of the other's (replays) never wait for
/// each other crosswise.
fn record_request_ids(conn: &mut DbConn, ids: &[(String, i64)]) -> AppResult<HashSet<String>> {
    if ids.is_empty() {
        return Ok(HashSet::new());
    }
    let mut ids: Vec<&(String, i64)> = ids.iter().collect();
    ids.sort_unstable();
    let values: Vec<_> = ids
        .iter()
        .map(|(id, at)| {
            (
                seen_requests::request_id.eq(id),
                seen_requests::seen_at.eq(at),
            )
        })
        .collect();
    let fresh: Vec<String> = on_backend!(conn, |c| diesel::insert_into(seen_requests::table)
        .values(&values)
        .on_conflict_do_nothing()
        .returning(seen_requests::request_id)
        .get_results(c))?;
    Ok(fresh.into_iter().collect())
}

/// How many request IDs one purge statement forgets: small enough that the statement is
/// over in milliseconds (SQLite's writer waits for it), large enough to keep up with any
/// rate this service reaches.
pub const PURGE_CHUNK: i64 = 2000;

/// Forgets at most [`PURGE_CHUNK`] request IDs older than `before` (the clock check refuses
/// them anyway); returns how many. Called until it returns less than a chunk.
pub fn purge_request_ids(conn: &mut DbConn, before: i64) -> AppResult<usize> {
    let chunk: Vec<String> = on_backend!(conn, |c| seen_requests::table
        .filter(seen_requests::seen_at.lt(before))
        .select(seen_requests::request_id)
        .limit(PURGE_CHUNK)
        .load(c))?;
    if chunk.is_empty() {
        return Ok(0);
    }
    Ok(on_backend!(conn, |c| diesel::delete(
        seen_requests::table.filter(seen_requests::request_id.eq_any(&chunk))
    )
    .execute(c))?)
}

/// What became of one poll of a batch: the account its device token belongs to (when it
/// is valid), and the outcome.
pub type PollResult = (Option<String>, AppResult<Polled>);

/// Carries out a batch of polls in a few statements for all of them: the device tokens,
/// the servers with their pairs, the request IDs, the rights and the contact times each in
/// one, plus one for each server that reported usage, changed its key or speaks for the
/// first time. Each poll is answered, refused, or sent to the slow path; the error of the
/// whole is a storage failure, which none of them survives.
pub fn polls(conn: &mut DbConn, polls: &[Poll<'_>]) -> AppResult<Vec<PollResult>> {
    let tokens: Vec<&str> = polls.iter().map(|p| p.token).collect();
    let accounts = tokens::authenticate_devices(conn, &tokens)?;
    let mut out: Outcomes = polls
        .iter()
        .zip(&accounts)
        .map(|(p, account)| match account {
            Err(e) => Some(Err(e.clone())),
            // Rights asked for, or a main that dropped its backup: the registry changes.
            Ok(_) if !p.request.rights.is_empty() || drops_backup(p.request) => {
                Some(Ok(Polled::Slow))
            }
            Ok(_) => None,
        })
        .collect();
    let found = servers_of(conn, polls, &out)?;
    let mut known = known_servers(polls, &accounts, &found, &mut out);
    record_fresh(conn, polls, &mut known, &mut out)?;
    for (i, answer) in contact(conn, polls, &known)? {
        out[i] = Some(Ok(Polled::Answered(Box::new(answer))));
    }
    Ok(out
        .into_iter()
        .zip(accounts)
        .map(|(o, account)| {
            let o = o.unwrap_or_else(|| Err(AppError::internal("a poll was left unanswered")));
            (account.ok(), o)
        })
        .collect())
}

/// The outcome of each poll of a batch, once it has one.
type Outcomes = Vec<Option<AppResult<Polled>>>;

/// A poll of a known server in its known role: its index in the batch, what the rules
/// know, its entry.
type KnownPoll<'e> = (usize, Known, &'e Entry);

/// The entries of the servers of the polls still without an outcome, by hostid: one query.
fn servers_of(
    conn: &mut DbConn,
    polls: &[Poll<'_>],
    out: &Outcomes,
) -> AppResult<HashMap<String, Entry>> {
    let mut hostids: Vec<String> = polls
        .iter()
        .zip(out)
        .filter(|(_, o)| o.is_none())
        .map(|(p, _)| p.request.hostid.to_string())
        .collect();
    hostids.sort_unstable();
    hostids.dedup();
    Ok(entries(conn, &hostids)?
        .into_iter()
        .map(|e| (e.row.hostid.clone(), e))
        .collect())
}

/// The polls of known servers in their known roles; the others are refused by the rules or
/// go to the slow path.
fn known_servers<'e>(
    polls: &[Poll<'_>],
    accounts: &[AppResult<String>],
    found: &'e HashMap<String, Entry>,
    out: &mut Outcomes,
) -> Vec<KnownPoll<'e>> {
    let mut known = Vec::with_capacity(polls.len());
    for (i, p) in polls.iter().enumerate() {
        if out[i].is_some() {
            continue;
        }
        let account = accounts[i].as_deref().unwrap_or_default();
        let e = found.get(&p.request.hostid.to_string());
        let planned = e
            .map(|e| e.known(account))
            .transpose()
            .and_then(|k| fast_plan(p.request, k, e));
        match planned {
            Ok(Some((k, e))) => known.push((i, k, e)),
            Ok(None) => out[i] = Some(Ok(Polled::Slow)),
            Err(err) => out[i] = Some(Err(err)),
        }
    }
    known
}

/// Records the request IDs of the known polls in one statement; a repeated one (seen
/// before, or twice in this batch) is a replay, refused and dropped from `known`.
fn record_fresh(
    conn: &mut DbConn,
    polls: &[Poll<'_>],
    known: &mut Vec<KnownPoll<'_>>,
    out: &mut Outcomes,
) -> AppResult<()> {
    let mut ids = Vec::with_capacity(known.len());
    let mut in_batch = HashSet::with_capacity(known.len());
    known.retain(|(i, _, _)| {
        let p = &polls[*i];
        let id = p.request.request_id.to_string();
        if !in_batch.insert(id.clone()) {
            out[*i] = Some(Err(replayed()));
            return false;
        }
        ids.push((id, p.now));
        true
    });
    let fresh = record_request_ids(conn, &ids)?;
    known.retain(|(i, _, _)| {
        let new = fresh.contains(&polls[*i].request.request_id.to_string());
        if !new {
            out[*i] = Some(Err(replayed()));
        }
        new
    });
    Ok(())
}

/// Records the known polls' contacts and answers them with their rights: one statement
/// for every server that only polled, its own for one that reported, changed its key or
/// speaks for the first time, and one for the rights of all.
fn contact(
    conn: &mut DbConn,
    polls: &[Poll<'_>],
    known: &[KnownPoll<'_>],
) -> AppResult<Vec<(usize, CapabilityAnswer)>> {
    let holders: Vec<&str> = known.iter().map(|(_, k, _)| holder(k)).collect();
    let rights = rights_of(conn, &holders)?;
    let mut plain: Vec<&str> = Vec::with_capacity(known.len());
    let mut answers = Vec::with_capacity(known.len());
    for (i, k, e) in known {
        let p = &polls[*i];
        let key_change = if p.request.report.is_none()
            && e.row.first_contact_at.is_some()
            && !changes_key(&e.row, p.key)
        {
            plain.push(&e.row.id);
            None
        } else {
            touch(conn, &e.row, p.request.report.as_ref(), p.key, p.now)?
        };
        let rights = rights.get(holder(k)).cloned().unwrap_or_default();
        answers.push((*i, answer_of(k, e, rights, key_change)));
    }
    if !plain.is_empty() {
        let now = polls.iter().map(|p| p.now).max().unwrap_or_default();
        on_backend!(conn, |c| diesel::update(
            servers::table.filter(servers::id.eq_any(&plain))
        )
        .set((
            servers::last_contact_at.eq(now),
            servers::state.eq(ServerState::Registered.as_str()),
        ))
        .execute(c))?;
    }
    Ok(answers)
}

/// A main that reports it dropped its backup.
fn drops_backup(req: &CapabilityRequest) -> bool {
    req.role == Role::Main && req.report.as_ref().is_some_and(|r| r.backup_dropped)
}

/// The poll's plan as the rules make it without the backup's or the other members' rows:
/// `Some` for a known server in its known role (whose pair, if it has both servers, has
/// its secret), `None` when the registry changes. The rules consult those rows only to
/// register a pair or a cluster, and the errors they find on the requester's side come
/// first; `Known` here is `Known` with them too.
fn fast_plan<'e>(
    req: &CapabilityRequest,
    known: Option<Known>,
    entry: Option<&'e Entry>,
) -> AppResult<Option<(Known, &'e Entry)>> {
    let plan = rules::plan_request(req, known.as_ref(), None, &[])?;
    let (Plan::Known, Some(k), Some(e)) = (plan, known, entry) else {
        return Ok(None);
    };
    let needs_token = k.pair.as_ref().is_some_and(|p| p.backup_hostid.is_some());
    if needs_token && e.pair_token.is_none() {
        return Ok(None);
    }
    Ok(Some((k, e)))
}

/// The server that holds a known server's rights: its cluster's holder, its pair's main,
/// or itself.
fn holder(k: &Known) -> &str {
    if let Some(c) = &k.cluster {
        return &c.holder_server_id;
    }
    k.pair.as_ref().map_or(&k.server_id, |p| &p.main_server_id)
}

/// The answer for a known server with its rights.
fn answer_of(
    k: &Known,
    e: &Entry,
    rights: Vec<Right>,
    key_change: Option<KeyChange>,
) -> CapabilityAnswer {
    let pair = k.pair.as_ref().map(|p| PairInfo {
        id: p.pair_id.clone(),
        main: p.main_hostid.clone(),
        backup: p.backup_hostid.clone(),
    });
    // For the two servers of a pair, never for a main left alone.
    let pair_token = pair
        .as_ref()
        .filter(|p| p.backup.is_some())
        .and(e.pair_token.clone());
    let cluster = k.cluster.as_ref().map(|c| ClusterInfo {
        id: c.cluster_id.clone(),
        members: c.members.clone(),
    });
    CapabilityAnswer {
        server_id: k.server_id.clone(),
        role: k.role,
        pair,
        cluster,
        rights,
        pair_token,
        key_change,
    }
}

fn changes_key(row: &ServerRow, key: Option<&ServerKey>) -> bool {
    key.is_some_and(|k| row.server_key.as_deref() != Some(k.key.as_str()))
}

/// The slow path: a request from a server of `account_id` that changes the registry
/// (registers what it implies, maps requested rights, takes a dropped backup out of its
/// pair), under the account's lock, answered with the rights.
pub fn capability(
    conn: &mut DbConn,
    account_id: &str,
    req: &CapabilityRequest,
    key: Option<&ServerKey>,
    now: i64,
) -> AppResult<CapabilityAnswer> {
    let outcome = conn.write_transaction::<_, AppError, _>(|c| {
        lock_account(c, account_id)?;
        record_request_id(c, &req.request_id, now)?;
        // A main that dropped its backup (absence limit, or an operator on either server)
        // says so with every poll: the backup leaves the pair and is not added back.
        if drops_backup(req) && drop_backup(c, account_id, &req.hostid)? {
            let (k, e) = known(c, account_id, &req.hostid)?
                .ok_or_else(|| AppError::internal("a main vanished inside its transaction"))?;
            let key_change = touch(c, &e.row, req.report.as_ref(), key, now)?;
            return Ok(Ok(answer(c, &k, &e, key_change)?));
        }
        let k = known(c, account_id, &req.hostid)?;
        let kb = match &req.backup_hostid {
            Some(b) => known(c, account_id, b)?,
            None => None,
        };
        let ko = req
            .cluster_member_hostids
            .iter()
            .map(|h| known(c, account_id, h))
            .collect::<AppResult<Vec<_>>>()?;
        let ko: Vec<Option<&Known>> = ko.iter().map(|x| x.as_ref().map(|x| &x.0)).collect();
        let plan = rules::plan_request(
            req,
            k.as_ref().map(|x| &x.0),
            kb.as_ref().map(|x| &x.0),
            &ko,
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
        let key_change = touch(c, &row, req.report.as_ref(), key, now)?;
        let (k, e) = known(c, account_id, &req.hostid)?
            .ok_or_else(|| AppError::internal("server vanished inside its transaction"))?;
        Ok(Ok(answer(c, &k, &e, key_change)?))
    })?;
    Ok(outcome?)
}

/// The answer for a known server, read inside the slow path's transaction; a pair without
/// a secret (registered before pairs had them) gets one.
fn answer(
    c: &mut DbConn,
    k: &Known,
    e: &Entry,
    key_change: Option<KeyChange>,
) -> AppResult<CapabilityAnswer> {
    let mut e = e.clone();
    if let Some(p) = &k.pair
        && p.backup_hostid.is_some()
        && e.pair_token.is_none()
    {
        e.pair_token = Some(ensure_pair_token(c, &p.pair_id)?);
    }
    let h = holder(k);
    let rights = rights_of(c, &[h])?.remove(h).unwrap_or_default();
    Ok(answer_of(k, &e, rights, key_change))
}

/// What carrying out a plan left.
enum Placed {
    /// The requesting server's row.
    Server(String),
    /// A backup recorded as waiting for its main: refused, but the record is kept.
    Waiting,
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
        Plan::RegisterCluster { members } => {
            register_cluster_rows(c, account_id, members, RegisteredBy::Capability, now)?.0
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

/// A registered main of the account reports that it dropped its backup: the backup leaves
/// the pair (whatever is in use: the main itself let it go). `false` when the requester is
/// not a registered main (the usual rules apply).
fn drop_backup(c: &mut DbConn, account_id: &str, hostid: &shared::HostId) -> AppResult<bool> {
    let Some((k, e)) = known(c, account_id, hostid)? else {
        return Ok(false);
    };
    let (Role::Main, true, Some(p)) = (k.role, k.same_account, &e.pair) else {
        return Ok(false);
    };
    if let Some(backup_id) = &p.backup_server_id {
        delete_backup(c, &p.id, backup_id)?;
        tracing::info!(pair = %p.id, main = %hostid, "the main dropped its backup; removed from the pair");
    }
    Ok(true)
}

/// What a contact changes on a server's row; `None` leaves a column as it is.
#[derive(AsChangeset)]
#[diesel(table_name = servers)]
struct Contact<'a> {
    last_contact_at: i64,
    first_contact_at: Option<i64>,
    state: &'a str,
    reported_status: Option<&'a str>,
    reported_pair_status: Option<Option<&'a str>>,
    reported_cluster_status: Option<Option<&'a str>>,
    usage_json: Option<String>,
    last_sample_at: Option<i64>,
    server_key: Option<&'a str>,
    server_key_id: Option<&'a str>,
}

/// Records a contact in one statement: time, state, what the server reported, and its key
/// when it changed (returned, for the log).
fn touch(
    conn: &mut DbConn,
    row: &ServerRow,
    report: Option<&ServerReport>,
    key: Option<&ServerKey>,
    now: i64,
) -> AppResult<Option<KeyChange>> {
    let new_key = key.filter(|k| row.server_key.as_deref() != Some(k.key.as_str()));
    let usage_json = report
        .map(|r| serde_json::to_string(&r.usage))
        .transpose()
        .map_err(AppError::internal)?;
    // A reading when the usage changed (so the latest reading is what the server said
    // last: View Server's current usage, its chart and table are the same readings), and
    // at least once a minute otherwise.
    let sample = usage_json.is_some()
        && (usage_json != row.usage_json
            || row
                .last_sample_at
                .is_none_or(|t| now - t >= usage::SAMPLE_EVERY));
    let contact = Contact {
        last_contact_at: now,
        first_contact_at: row.first_contact_at.is_none().then_some(now),
        state: ServerState::Registered.as_str(),
        reported_status: report.map(|r| r.server_status.as_str()),
        reported_pair_status: report.map(|r| r.pair_status.map(PairStatus::as_str)),
        reported_cluster_status: report.map(|r| r.cluster_status.map(ClusterStatus::as_str)),
        usage_json,
        last_sample_at: sample.then_some(now),
        server_key: new_key.map(|k| k.key.as_str()),
        server_key_id: new_key.map(|k| k.id.as_str()),
    };
    let updated = on_backend!(conn, |c| diesel::update(servers::table.find(&row.id))
        .set(&contact)
        .execute(c))?;
    // A row taken out meanwhile (a backup removed while its poll was in a batch) gets no
    // samples: they would name a server that is gone.
    if let Some(r) = report
        && sample
        && updated == 1
    {
        usage::record(
            conn,
            &row.id,
            &r.usage,
            now,
            row.last_sample_at == Some(now),
        )?;
    }
    if let Some(r) = report
        && updated == 1
    {
        usage::record_intervals(conn, row, &r.intervals, now)?;
    }
    Ok(new_key.map(|k| KeyChange {
        old: row.server_key_id.clone(),
        new: k.id.clone(),
    }))
}

#[cfg(test)]
mod tests {
    use shared::HostId;
    use shared::capability::{RightsRequest, UsageInterval};
    use shared::signing::Signer;

    use super::*;
    use crate::db::{self, testing};
    use crate::domain::validate;
    use crate::store::{catalog, tokens};

    fn request(hostid: &str, role: Role, backup: Option<&str>) -> CapabilityRequest {
        CapabilityRequest {
            request_id: uuid::Uuid::new_v4(),
            hostid: HostId::parse(hostid).unwrap(),
            role,
            backup_hostid: backup.map(|b| HostId::parse(b).unwrap()),
            cluster_member_hostids: Vec::new(),
            sent_at: shared::now_unix(),
            rights: Vec::new(),
            report: None,
            server_key: None,
            link: None,
        }
    }

    fn key() -> ServerKey {
        validate::server_key(&Signer::generate().public_key()).unwrap()
    }

    /// An account with a device token and a line item of `cad`: (account, token, activation).
    fn account(c: &mut DbConn, name: &str) -> (String, String, String) {
        let feature = catalog::FeatureSpec {
            name: "cad".into(),
            version: "1.0".into(),
        };
        let product =
            catalog::create_product(c, &format!("Suite {name}"), "1", &[feature]).unwrap();
        let account = catalog::create_account(c, name).unwrap();
        let item = catalog::LineItemSpec {
            product_id: product.id,
            quantity: 10,
            starts_at: None,
            expires_at: None,
            borrowable: true,
            max_borrow_secs: Some(7 * 86_400),
            overdraft: 2,
        };
        let e = catalog::create_entitlement(c, &account.id, "Order", &[item]).unwrap();
        let token = tokens::create_device_token(c, &account.id, "servers", None).unwrap();
        let activation = e.line_items[0].activation_id.clone();
        (account.id, token.secret, activation)
    }

    fn answered(r: &PollResult) -> &CapabilityAnswer {
        match &r.1 {
            Ok(Polled::Answered(a)) => a.as_ref(),
            other => panic!("not answered: {other:?}"),
        }
    }

    fn seen(c: &mut DbConn, id: &uuid::Uuid) -> bool {
        let n: i64 = seen_requests::table
            .find(id.to_string())
            .count()
            .get_result(c)
            .unwrap();
        n == 1
    }

    #[test]
    fn a_batch_of_polls_answers_refuses_or_hands_on_each_poll_by_itself() {
        for tdb in testing::databases() {
            let (pool, backend) = db::connect(&tdb.url, 1).unwrap();
            let c = &mut *pool.get().unwrap();
            let (acme, token, activation) = account(c, "Acme");
            let (_, other_token, _) = account(c, "Other");
            let (k1, k2) = (key(), key());
            let now = shared::now_unix();

            let mut start = request("string:m", Role::Main, Some("string:b"));
            start.rights = vec![RightsRequest {
                activation_id: activation.clone(),
                count: 4,
            }];
            let first = capability(c, &acme, &start, Some(&k1), now).unwrap();
            let pair_token = first
                .pair_token
                .clone()
                .expect("a pair's main gets its secret");
            assert_eq!(first.key_change.as_ref().unwrap().new, k1.id);
            assert_eq!(first.rights.len(), 1);

            let main = request("string:m", Role::Main, Some("string:b"));
            let mut with_rights = request("string:m", Role::Main, Some("string:b"));
            with_rights.rights = start.rights.clone();
            let reqs = [
                (token.as_str(), main.clone(), Some(&k1)),
                // The same request ID again, in the same batch.
                (token.as_str(), main.clone(), Some(&k1)),
                (
                    token.as_str(),
                    request("string:b", Role::Backup, None),
                    None,
                ),
                (
                    token.as_str(),
                    request("string:new", Role::Standalone, None),
                    None,
                ),
                (
                    "dt_nobody.nothing",
                    request("string:m", Role::Main, Some("string:b")),
                    None,
                ),
                (
                    other_token.as_str(),
                    request("string:m", Role::Main, Some("string:b")),
                    Some(&k2),
                ),
                (token.as_str(), with_rights, None),
                (
                    token.as_str(),
                    request("string:m", Role::Main, Some("string:b")),
                    Some(&k2),
                ),
            ];
            let polls: Vec<Poll<'_>> = reqs
                .iter()
                .map(|(token, request, key)| Poll {
                    token,
                    request,
                    key: *key,
                    now,
                })
                .collect();
            let out = c.transaction(|c| super::polls(c, &polls)).unwrap();
            let what = |i: usize| format!("{backend:?}, poll {i}: {:?}", out[i]);

            let m = answered(&out[0]);
            assert_eq!(out[0].0.as_deref(), Some(acme.as_str()), "{}", what(0));
            assert_eq!(m.role, Role::Main);
            assert_eq!(m.pair_token, Some(pair_token.clone()), "{}", what(0));
            assert_eq!(m.rights, first.rights);
            assert_eq!(m.key_change, None, "the same key is no change");
            assert_eq!(
                out[1].1.as_ref().unwrap_err().code(),
                ErrorCode::ReplayedRequest
            );
            let b = answered(&out[2]);
            assert_eq!((b.role, &b.rights), (Role::Backup, &first.rights));
            assert_eq!(b.pair_token, Some(pair_token.clone()), "{}", what(2));
            assert_eq!(out[3].1, Ok(Polled::Slow), "{}", what(3));
            assert_eq!(out[4].0, None);
            assert_eq!(
                out[4].1.as_ref().unwrap_err().code(),
                ErrorCode::Unauthorized
            );
            assert_eq!(
                out[5].1.as_ref().unwrap_err().code(),
                ErrorCode::HostidInUse
            );
            assert_eq!(out[6].1, Ok(Polled::Slow), "{}", what(6));
            let changed = answered(&out[7]);
            let change = changed.key_change.as_ref().expect("a new key");
            assert_eq!(
                (change.old.as_deref(), change.new.as_str()),
                (Some(k1.id.as_str()), k2.id.as_str())
            );

            // Only the polls answered here left their request IDs (the replay's is the
            // first poll's); the slow path and the refused left nothing.
            for (i, (_, r, _)) in reqs.iter().enumerate() {
                assert_eq!(
                    seen(c, &r.request_id),
                    [0, 1, 2, 7].contains(&i),
                    "{}",
                    what(i)
                );
            }
            // And the server's key is the new one, which another account could not set.
            let (_, e) = known(c, &acme, &main.hostid).unwrap().unwrap();
            assert_eq!(e.row.server_key_id.as_deref(), Some(k2.id.as_str()));
        }
    }

    /// The borrow policy and overdraft are stored with the line item, shown with it, and
    /// carried in the signed rights of the servers it is mapped to; a change reaches them
    /// at their next poll.
    #[test]
    fn a_line_items_borrow_policy_and_overdraft_are_stored_and_reach_the_rights() {
        for tdb in testing::databases() {
            let (pool, backend) = db::connect(&tdb.url, 1).unwrap();
            let c = &mut *pool.get().unwrap();
            let (acme, _, activation) = account(c, "Acme");
            let now = shared::now_unix();
            let mut start = request("string:m", Role::Standalone, None);
            start.rights = vec![RightsRequest {
                activation_id: activation.clone(),
                count: 4,
            }];
            let first = capability(c, &acme, &start, Some(&key()), now).unwrap();
            assert_eq!(first.rights.len(), 1, "{backend:?}");
            assert_eq!(first.rights[0].max_borrow_secs, Some(7 * 86_400));
            assert_eq!(first.rights[0].overdraft, 2);

            let ent = &catalog::list_entitlements(c, &acme).unwrap()[0];
            let item = &ent.line_items[0];
            assert!(item.borrowable);
            assert_eq!((item.max_borrow_secs, item.overdraft), (Some(604_800), 2));
            let change = catalog::LineItemChange {
                borrowable: Some(false),
                overdraft: Some(0),
                ..Default::default()
            };
            let now_item = catalog::update_line_item(c, &acme, &ent.id, &item.id, &change).unwrap();
            assert!(!now_item.borrowable, "{backend:?}");
            assert_eq!((now_item.max_borrow_secs, now_item.overdraft), (None, 0));

            // Bad input changes nothing.
            let bad = catalog::LineItemChange {
                max_borrow_secs: Some(3_600),
                overdraft: Some(5),
                ..Default::default()
            };
            let e = catalog::update_line_item(c, &acme, &ent.id, &item.id, &bad).unwrap_err();
            assert_eq!(e.code(), ErrorCode::ValidationError, "{backend:?}");
            let kept = &catalog::list_entitlements(c, &acme).unwrap()[0].line_items[0];
            assert_eq!((kept.max_borrow_secs, kept.overdraft), (None, 0));

            let poll = request("string:m", Role::Standalone, None);
            let next = capability(c, &acme, &poll, None, now).unwrap();
            assert_eq!(next.rights[0].max_borrow_secs, None, "{backend:?}");
            assert_eq!(next.rights[0].overdraft, 0);
        }
    }

    #[test]
    fn a_reading_is_kept_when_the_usage_changes_and_once_a_minute_otherwise() {
        use shared::capability::{FeatureUsage, ServerReport, ServerStatus};
        for tdb in testing::databases() {
            let (pool, _) = db::connect(&tdb.url, 1).unwrap();
            let c = &mut *pool.get().unwrap();
            let (acme, _, _) = account(c, "Acme");
            let report = |in_use| ServerReport {
                server_status: ServerStatus::Active,
                pair_status: None,
                usage: vec![FeatureUsage {
                    feature: "cad".into(),
                    version: "1.0".into(),
                    count: 10,
                    in_use,
                    overdraft: 0,
                    borrowed: 0,
                }],
                backup_dropped: false,
                intervals: Vec::new(),
                cluster_status: None,
            };
            let t0 = shared::now_unix();
            // (seconds after t0, in use): a change a second later is read; the same usage
            // again is not, until a minute has passed.
            // Two within one second: the later is that second's reading.
            for (dt, in_use) in [(0, 2), (0, 1), (1, 4), (2, 4), (61, 4)] {
                let mut r = request("string:solo", Role::Standalone, None);
                r.report = Some(report(in_use));
                capability(c, &acme, &r, None, t0 + dt).unwrap();
            }
            let servers = crate::store::registry::list_servers(c, &acme, t0 + 61, 600).unwrap();
            let id = servers[0].server.id.clone();
            let readings = usage::usage_history(c, &acme, &id, t0).unwrap();
            let got: Vec<(i64, i64)> = readings.iter().map(|p| (p.at - t0, p.in_use)).collect();
            assert_eq!(got, vec![(0, 1), (1, 4), (61, 4)], "{}", tdb.url);
            let latest = usage::latest_readings(c, &acme, &id).unwrap();
            assert_eq!(latest.len(), 1);
            assert_eq!((latest[0].at - t0, latest[0].in_use), (61, 4));
        }
    }

    fn interval(served_by: &str, start: i64, from: i64, grants: u32) -> UsageInterval {
        UsageInterval {
            feature: "cad".into(),
            version: "1.0".into(),
            starts_at: start,
            ends_at: start + 300,
            served_by: HostId::parse(served_by).unwrap(),
            served_from: from,
            served_until: start + 300,
            count: 10,
            peak: 3,
            seat_secs: 600,
            grants,
            denials: [("NO_LICENSE".to_owned(), 2), ("EXCLUDED".to_owned(), 1)].into(),
            true_denials: 1,
            borrowed: 1,
            overdraft: 0,
            queued: 0,
        }
    }

    /// A report of an active server carrying `intervals`.
    fn report(intervals: Vec<UsageInterval>) -> shared::capability::ServerReport {
        shared::capability::ServerReport {
            server_status: shared::capability::ServerStatus::Active,
            pair_status: None,
            usage: Vec::new(),
            backup_dropped: false,
            intervals,
            cluster_status: None,
        }
    }

    #[test]
    fn usage_intervals_are_kept_once_whoever_reports_them_and_parts_add_up() {
        for tdb in testing::databases() {
            let (pool, _) = db::connect(&tdb.url, 1).unwrap();
            let c = &mut *pool.get().unwrap();
            let (acme, _, activation) = account(c, "Acme");
            let now = shared::now_unix();
            let start = now - now % 300 - 600;
            let mut main = request("string:m", Role::Main, Some("string:b"));
            main.rights = vec![RightsRequest {
                activation_id: activation,
                count: 4,
            }];
            capability(c, &acme, &main, None, now).unwrap();
            capability(
                c,
                &acme,
                &request("string:b", Role::Backup, None),
                None,
                now,
            )
            .unwrap();
            // The main served the first interval and half of the second, the backup the
            // other half (a takeover); the backup reports its part, then the main reports
            // everything it holds after the failback, twice. A server outside the pair
            // is not taken for one of it.
            let mut b = request("string:b", Role::Backup, None);
            b.report = Some(report(vec![interval(
                "string:b",
                start + 300,
                start + 450,
                4,
            )]));
            capability(c, &acme, &b, None, now).unwrap();
            for _ in 0..2 {
                let mut m = request("string:m", Role::Main, Some("string:b"));
                m.report = Some(report(vec![
                    interval("string:m", start, start, 5),
                    interval("string:m", start + 300, start + 300, 2),
                    interval("string:b", start + 300, start + 450, 4),
                    interval("string:elsewhere", start, start, 100),
                ]));
                capability(c, &acme, &m, None, now).unwrap();
            }
            let kept: i64 = crate::schema::usage_intervals::table
                .count()
                .get_result(c)
                .unwrap();
            assert_eq!(kept, 3, "{}", tdb.url);
            let servers = crate::store::registry::list_servers(c, &acme, now, 600).unwrap();
            let backup_id = servers
                .iter()
                .find(|s| s.server.hostid == "string:b")
                .unwrap()
                .server
                .id
                .clone();
            // Seen from either server of the pair: the same, newest first, parts added.
            let got = usage::server_intervals(c, &acme, &backup_id, start).unwrap();
            assert_eq!(got.len(), 2);
            assert_eq!((got[0].starts_at, got[0].grants), (start + 300, 6));
            assert_eq!(got[0].served_by, vec!["string:b", "string:m"]);
            assert_eq!(got[0].average, 4.0);
            assert_eq!(got[0].denials["NO_LICENSE"], 4);
            assert_eq!(
                (got[0].true_denials, got[0].borrowed, got[0].peak),
                (2, 2, 3)
            );
            assert_eq!((got[1].starts_at, got[1].grants), (start, 5));
            assert_eq!(got[1].average, 2.0);
            // Per entitlement: its line item on the pair it is mapped to.
            let e = &catalog::list_entitlements(c, &acme).unwrap()[0];
            let items = usage::entitlement_intervals(c, &acme, &e.id, start).unwrap();
            assert_eq!(items.len(), 1);
            assert_eq!(items[0].hostid, "string:m");
            assert_eq!(items[0].intervals, got);
            // Another account sees neither.
            let (other, _, _) = account(c, "Other");
            assert!(usage::server_intervals(c, &other, &backup_id, start).is_err());
            assert!(usage::entitlement_intervals(c, &other, &e.id, start).is_err());
        }
    }

    /// A cluster's intervals are reported by whichever member leads: the back office keeps
    /// the parts served by any member once, shows the whole cluster's from any member's
    /// page and on the entitlement, and keeps none served outside the cluster.
    #[test]
    fn a_clusters_intervals_are_kept_once_from_any_member_and_shown_for_the_whole_cluster() {
        for tdb in testing::databases() {
            let (pool, backend) = db::connect(&tdb.url, 1).unwrap();
            let c = &mut *pool.get().unwrap();
            let (acme, _, activation) = account(c, "Acme");
            let now = shared::now_unix();
            let start = now - now % 300 - 600;
            let (a, b, m3) = ("string:a", "string:b", "string:c");
            for (me, others) in [(a, [b, m3]), (b, [a, m3]), (m3, [a, b])] {
                capability(
                    c,
                    &acme,
                    &member(me, others, &[(&activation, 4)]),
                    None,
                    now,
                )
                .unwrap();
            }
            // a led and reported its interval; b, the next leader, reports a's again (not
            // acknowledged before a died) with its own, and one naming a stranger.
            let mut first = member(a, [b, m3], &[]);
            first.report = Some(report(vec![interval(a, start, start, 3)]));
            capability(c, &acme, &first, None, now).unwrap();
            let mut next = member(b, [a, m3], &[]);
            next.report = Some(report(vec![
                interval(a, start, start, 3),
                interval(b, start + 300, start + 300, 2),
                interval("string:elsewhere", start, start, 100),
            ]));
            capability(c, &acme, &next, None, now).unwrap();
            let kept: i64 = crate::schema::usage_intervals::table
                .count()
                .get_result(c)
                .unwrap();
            assert_eq!(kept, 2, "{backend:?}");
            let servers = crate::store::registry::list_servers(c, &acme, now, 600).unwrap();
            for s in &servers {
                let got = usage::server_intervals(c, &acme, &s.server.id, start).unwrap();
                let grants: Vec<(i64, i64)> = got.iter().map(|i| (i.starts_at, i.grants)).collect();
                assert_eq!(
                    grants,
                    [(start + 300, 2), (start, 3)],
                    "{backend:?} from {}",
                    s.server.hostid
                );
            }
            let e = &catalog::list_entitlements(c, &acme).unwrap()[0];
            let items = usage::entitlement_intervals(c, &acme, &e.id, start).unwrap();
            assert_eq!(items.len(), 1, "{backend:?}: mapped once, to the cluster");
            assert_eq!(items[0].intervals.len(), 2, "{backend:?}");
        }
    }

    fn member(hostid: &str, others: [&str; 2], rights: &[(&str, u32)]) -> CapabilityRequest {
        let mut r = request(hostid, Role::Standalone, None);
        r.cluster_member_hostids = others.iter().map(|h| HostId::parse(h).unwrap()).collect();
        r.rights = rights
            .iter()
            .map(|(a, count)| RightsRequest {
                activation_id: (*a).to_owned(),
                count: *count,
            })
            .collect();
        r
    }

    /// Each server's hostid, state and cluster.
    type Rows = Vec<(String, String, Option<String>)>;

    /// The registry as a test compares it before and after a refused request: the
    /// servers, how many clusters, how much is mapped.
    fn registry(c: &mut DbConn) -> (Rows, i64, i64) {
        use crate::schema::{clusters, mappings};
        let rows = servers::table
            .select((servers::hostid, servers::state, servers::cluster_id))
            .order(servers::hostid)
            .load(c)
            .unwrap();
        let n: i64 = clusters::table.count().get_result(c).unwrap();
        let mapped: Vec<i64> = mappings::table.select(mappings::quantity).load(c).unwrap();
        (rows, n, mapped.iter().sum())
    }

    #[test]
    fn the_first_member_registers_its_cluster_and_the_three_share_one_mapping() {
        for tdb in testing::databases() {
            let (pool, backend) = db::connect(&tdb.url, 1).unwrap();
            let c = &mut *pool.get().unwrap();
            let (acme, _, activation) = account(c, "Acme");
            let now = shared::now_unix();
            let (a, b, m3) = ("string:a", "string:b", "string:c");
            let first = capability(
                c,
                &acme,
                &member(a, [b, m3], &[(&activation, 4)]),
                None,
                now,
            )
            .unwrap();
            let cluster = first.cluster.clone().expect("the answer names the cluster");
            let names: Vec<String> = cluster.members.iter().map(ToString::to_string).collect();
            assert_eq!(names, [a, b, m3], "{backend:?}");
            assert_eq!(first.rights.len(), 1);
            assert_eq!(first.rights[0].count, 4);
            assert_eq!(
                first.pair_token, None,
                "a cluster's members have their own secret"
            );
            // The other two, naming the rest in any order and asking for the same
            // rights: the same cluster, the same rights, nothing mapped twice.
            for (me, others) in [(m3, [a, b]), (b, [m3, a])] {
                let r = capability(
                    c,
                    &acme,
                    &member(me, others, &[(&activation, 4)]),
                    None,
                    now,
                )
                .unwrap();
                assert_eq!(r.cluster.as_ref(), Some(&cluster), "{backend:?} {me}");
                assert_eq!(r.rights, first.rights, "{backend:?} {me}");
                assert_ne!(r.server_id, first.server_id);
            }
            let (rows, clusters, mapped) = registry(c);
            assert_eq!((clusters, mapped), (1, 4), "{backend:?}: counted once");
            assert!(
                rows.iter().all(|(_, state, cid)| state == "registered"
                    && cid.as_deref() == Some(cluster.id.as_str())),
                "{backend:?}: {rows:?}"
            );
            // A poll of a member is answered on the fast path with the same.
            let poll = member(b, [a, m3], &[]);
            let found = entries(c, &[b.to_owned()]).unwrap();
            let k = found[0].known(&acme).unwrap();
            let fast = fast_plan(&poll, Some(k), found.first()).unwrap();
            assert!(
                fast.is_some(),
                "{backend:?}: a member's poll is a plain poll"
            );
            let again = capability(c, &acme, &poll, None, now).unwrap();
            assert_eq!(again.rights, first.rights);
        }
    }

    /// Registered by hand before its members start: expected members, rights mapped on any
    /// member's page to the cluster once, each member then known with those rights; the
    /// same cluster again, or one hostid twice, is refused and changes nothing.
    #[test]
    fn a_cluster_registered_by_hand_holds_rights_mapped_on_any_members_page_once() {
        use crate::store::{mappings, registry};
        for tdb in testing::databases() {
            let (pool, backend) = db::connect(&tdb.url, 1).unwrap();
            let c = &mut *pool.get().unwrap();
            let (acme, _, activation) = account(c, "Acme");
            let hs = |l: &[&str]| -> Vec<HostId> {
                l.iter().map(|h| HostId::parse(h).unwrap()).collect()
            };
            let three = hs(&["string:p1", "string:p2", "string:p3"]);
            let v = registry::register_cluster(c, &acme, &three).unwrap();
            assert_eq!(v.registered_by, "portal", "{backend:?}");
            assert_eq!(v.status, ClusterStatus::NotOperational, "none heard from");
            assert!(v.members.iter().all(|m| m.registration == "expected"));
            let before = registry(c);
            for bad in [
                hs(&["string:p1", "string:p2", "string:p3"]),
                hs(&["string:p3", "string:p2", "string:p1"]),
                hs(&["string:q1", "string:q2", "string:q1"]),
                hs(&["string:q1", "string:p2", "string:q3"]),
            ] {
                let e = registry::register_cluster(c, &acme, &bad).unwrap_err();
                assert!(
                    matches!(
                        e.code(),
                        ErrorCode::AlreadyExists
                            | ErrorCode::ValidationError
                            | ErrorCode::RoleConflict
                    ),
                    "{backend:?} {bad:?}: {e}"
                );
                assert_eq!(registry(c), before, "{backend:?} {bad:?}");
            }
            // 3 mapped on the second member's page, 2 more on the third's: 5, held once.
            let (m2, m3) = (&v.members[1].id, &v.members[2].id);
            mappings::map_rights(c, &acme, &activation, m2, 3).unwrap();
            let m = mappings::map_rights(c, &acme, &activation, m3, 2).unwrap();
            assert_eq!(m.quantity, 5, "{backend:?}");
            assert_eq!(registry(c).2, 5);
            let now = shared::now_unix();
            let mut rights = None;
            for (me, others) in [
                ("string:p2", ["string:p3", "string:p1"]),
                ("string:p1", ["string:p2", "string:p3"]),
                ("string:p3", ["string:p1", "string:p2"]),
            ] {
                let a = capability(
                    c,
                    &acme,
                    &member(me, others, &[(&activation, 5)]),
                    None,
                    now,
                )
                .unwrap();
                assert_eq!(a.rights[0].count, 5, "{backend:?} {me}");
                assert_eq!(
                    a.cluster.as_ref().map(|c| c.id.as_str()),
                    Some(v.id.as_str())
                );
                assert!(rights.as_ref().is_none_or(|r| *r == a.rights));
                rights = Some(a.rights);
            }
            assert_eq!(
                registry(c).2,
                5,
                "{backend:?}: asking for 5 maps nothing more"
            );
            let view = registry::view_server(c, &acme, m3, now, 600).unwrap();
            let cv = view.cluster.expect("View Server shows the cluster");
            assert!(cv.members.iter().all(|m| m.registration == "registered"));
            assert_eq!(view.rights.len(), 1);
            assert_eq!(view.rights[0].quantity, 5);
        }
    }

    /// A member replaced (here the one holding the rights): the cluster keeps its rights
    /// and three members; the leaving member is refused, the others until they name the
    /// new member; a bad replacement changes nothing.
    #[test]
    fn a_replaced_member_gets_nothing_and_the_cluster_keeps_its_rights() {
        use crate::store::registry;
        for tdb in testing::databases() {
            let (pool, backend) = db::connect(&tdb.url, 1).unwrap();
            let c = &mut *pool.get().unwrap();
            let (acme, _, activation) = account(c, "Acme");
            let (other, _, _) = account(c, "Other");
            let now = shared::now_unix();
            let h = |s: &str| HostId::parse(s).unwrap();
            let (a, b, m3, d) = ("string:a", "string:b", "string:c", "string:d");
            let first = capability(
                c,
                &acme,
                &member(a, [b, m3], &[(&activation, 4)]),
                None,
                now,
            )
            .unwrap();
            let cid = first.cluster.unwrap().id;
            // Bad replacements: not a member, already one, another account's cluster.
            let before = registry(c);
            for (cluster, out, new, code) in [
                (cid.as_str(), "string:x", d, ErrorCode::ValidationError),
                (cid.as_str(), a, b, ErrorCode::ValidationError),
                (
                    cid.as_str(),
                    a,
                    "ethernet:00163E5A1B2C",
                    ErrorCode::HostidTypeMismatch,
                ),
                ("no-such-cluster", a, d, ErrorCode::NotFound),
            ] {
                let e = registry::replace_member(c, &acme, cluster, &h(out), &h(new)).unwrap_err();
                assert_eq!(e.code(), code, "{backend:?} {out} -> {new}: {e}");
                assert_eq!(registry(c), before);
            }
            let e = registry::replace_member(c, &other, &cid, &h(a), &h(d)).unwrap_err();
            assert_eq!(e.code(), ErrorCode::NotFound, "{backend:?}");

            let v = registry::replace_member(c, &acme, &cid, &h(a), &h(d)).unwrap();
            let names: Vec<&str> = v.members.iter().map(|m| m.hostid.as_str()).collect();
            assert_eq!(names, [b, m3, d], "{backend:?}");
            let (_, clusters, mapped) = registry(c);
            assert_eq!((clusters, mapped), (1, 4), "{backend:?}: the rights stay");
            let after = registry(c);
            // The leaving member, and a member not reconfigured yet: refused.
            for req in [
                member(a, [b, m3], &[(&activation, 4)]),
                member(b, [a, m3], &[]),
            ] {
                let e = capability(c, &acme, &req, None, now).unwrap_err();
                assert_eq!(
                    e.code(),
                    ErrorCode::RoleConflict,
                    "{backend:?} {}: {e}",
                    req.hostid
                );
                assert_eq!(registry(c), after);
            }
            // Reconfigured, and the new member: the cluster's rights, naming the three.
            for (me, others) in [(b, [m3, d]), (d, [b, m3]), (m3, [d, b])] {
                let r = capability(
                    c,
                    &acme,
                    &member(me, others, &[(&activation, 4)]),
                    None,
                    now,
                )
                .unwrap();
                let names: Vec<String> = r
                    .cluster
                    .unwrap()
                    .members
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                assert_eq!(names, [b, m3, d], "{backend:?} {me}");
                assert_eq!(r.rights, first.rights, "{backend:?} {me}");
            }
            assert_eq!(registry(c).2, 4, "{backend:?}");
        }
    }

    #[test]
    fn bad_member_lists_are_refused_with_contract_codes_and_change_nothing() {
        for tdb in testing::databases() {
            let (pool, backend) = db::connect(&tdb.url, 1).unwrap();
            let c = &mut *pool.get().unwrap();
            let (acme, _, activation) = account(c, "Acme");
            let (other, _, _) = account(c, "Other");
            let now = shared::now_unix();
            capability(
                c,
                &acme,
                &member("string:a", ["string:b", "string:c"], &[(&activation, 3)]),
                None,
                now,
            )
            .unwrap();
            capability(
                c,
                &acme,
                &request("string:m", Role::Main, Some("string:mb")),
                None,
                now,
            )
            .unwrap();
            capability(
                c,
                &other,
                &request("string:theirs", Role::Standalone, None),
                None,
                now,
            )
            .unwrap();
            let before = registry(c);
            let cases: Vec<(CapabilityRequest, ErrorCode)> = vec![
                (
                    member("string:x", ["string:y", "string:y"], &[]),
                    ErrorCode::ValidationError,
                ),
                (
                    member("string:x", ["string:x", "string:y"], &[]),
                    ErrorCode::ValidationError,
                ),
                (
                    member("string:x", ["string:y", "ethernet:00163E5A1B2C"], &[]),
                    ErrorCode::HostidTypeMismatch,
                ),
                // A member naming another set than its cluster's.
                (
                    member("string:a", ["string:b", "string:d"], &[]),
                    ErrorCode::RoleConflict,
                ),
                // A fourth server naming two members.
                (
                    member("string:d", ["string:a", "string:b"], &[(&activation, 3)]),
                    ErrorCode::RoleConflict,
                ),
                // A pair's servers as members, and a member starting standalone.
                (
                    member("string:x", ["string:m", "string:y"], &[]),
                    ErrorCode::RoleConflict,
                ),
                (
                    member("string:mb", ["string:x", "string:y"], &[]),
                    ErrorCode::RoleConflict,
                ),
                (
                    request("string:a", Role::Standalone, None),
                    ErrorCode::RoleConflict,
                ),
                (
                    request("string:x", Role::Main, Some("string:c")),
                    ErrorCode::RoleConflict,
                ),
                // Another account's server.
                (
                    member("string:x", ["string:theirs", "string:y"], &[]),
                    ErrorCode::HostidInUse,
                ),
            ];
            for (req, code) in cases {
                let e = capability(c, &acme, &req, None, now).unwrap_err();
                assert_eq!(e.code(), code, "{backend:?} {req:?}: {e}");
                assert_eq!(
                    registry(c),
                    before,
                    "{backend:?} {req:?} changed the registry"
                );
            }
            // A member list with role main is no member list.
            let mut mixed = member("string:x", ["string:y", "string:z"], &[]);
            mixed.role = Role::Main;
            mixed.backup_hostid = Some(HostId::parse("string:w").unwrap());
            let e = capability(c, &acme, &mixed, None, now).unwrap_err();
            assert_eq!(e.code(), ErrorCode::ValidationError, "{backend:?}");
            assert_eq!(registry(c), before);
        }
    }

    #[test]
    fn old_request_ids_are_forgotten_a_chunk_at_a_time() {
        for tdb in testing::databases() {
            let (pool, _) = db::connect(&tdb.url, 1).unwrap();
            let c = &mut *pool.get().unwrap();
            let old = 2 * PURGE_CHUNK as usize + 7;
            let ids: Vec<(String, i64)> = (0..old)
                .map(|_| (uuid::Uuid::new_v4().to_string(), 100))
                .chain((0..5).map(|_| (uuid::Uuid::new_v4().to_string(), 10_000)))
                .collect();
            for chunk in ids.chunks(500) {
                assert_eq!(record_request_ids(c, chunk).unwrap().len(), chunk.len());
            }
            let mut purged = Vec::new();
            loop {
                let n = purge_request_ids(c, 1_000).unwrap();
                purged.push(n);
                if n < PURGE_CHUNK as usize {
                    break;
                }
            }
            let chunk = PURGE_CHUNK as usize;
            assert_eq!(purged, vec![chunk, chunk, 7]);
            let left: i64 = seen_requests::table.count().get_result(c).unwrap();
            assert_eq!(left, 5);
        }
    }
}
