//! The license-server registry's rows: servers, failover pairs and three-member
//! clusters, looked up (a server with its pair and partner in one joined query, a cluster
//! member's cluster in one more), created, paired and clustered, each pair with its own
//! secret; what the domain rules are told about a hostid; the holder of a server's rights.

use diesel::prelude::*;
use shared::HostId;
use shared::capability::{ClusterStatus, FeatureUsage, PairStatus, Role, ServerStatus};
use shared::secret::Secret;

use super::{new_id, unique_or};
use crate::db::DbConn;
use crate::domain::registry::{self as rules, Known, KnownCluster, KnownPair, ServerState};
use crate::error::{AppError, AppResult};
use crate::on_backend;
use crate::schema::{clusters, pairs, servers, usage_samples};

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
    /// The server's current public key (base64url) and its key ID.
    pub server_key: Option<String>,
    pub server_key_id: Option<String>,
    pub cluster_id: Option<String>,
    /// What a cluster member last reported of its cluster.
    pub reported_cluster_status: Option<String>,
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

    pub fn reported_cluster_status(&self) -> Option<ClusterStatus> {
        self.reported_cluster_status
            .as_deref()
            .and_then(ClusterStatus::parse)
    }
}

#[derive(Clone, Debug, Queryable, Selectable)]
#[diesel(table_name = clusters)]
pub(super) struct ClusterRow {
    pub id: String,
    pub account_id: String,
    /// The member whose row holds the cluster's rights (the first to register it).
    pub holder_server_id: String,
    pub registered_by: String,
    pub created_at: i64,
}

pub(super) fn cluster_by_id(conn: &mut DbConn, id: &str) -> AppResult<Option<ClusterRow>> {
    Ok(on_backend!(conn, |c| clusters::table
        .find(id)
        .select(ClusterRow::as_select())
        .get_result(c)
        .optional())?)
}

/// A cluster's members' rows, by hostid.
pub(super) fn cluster_members(conn: &mut DbConn, cluster_id: &str) -> AppResult<Vec<ServerRow>> {
    Ok(on_backend!(conn, |c| servers::table
        .filter(servers::cluster_id.eq(cluster_id))
        .select(ServerRow::as_select())
        .order(servers::hostid)
        .load(c))?)
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

/// A server's row with its pair as one joined lookup reads them: the pair's row, the other
/// member's hostid, and the pair's secret (for the capability answers only).
#[derive(Clone, Debug)]
pub(super) struct Entry {
    pub row: ServerRow,
    pub pair: Option<PairRow>,
    pub partner_hostid: Option<String>,
    pub pair_token: Option<Secret>,
    /// A cluster member's cluster, with its members' hostids (sorted).
    pub cluster: Option<(ClusterRow, Vec<String>)>,
}

diesel::alias!(servers as partners: Partners);

/// The servers with these hostids, each with its pair and partner: one query.
pub(super) fn entries(conn: &mut DbConn, hostids: &[String]) -> AppResult<Vec<Entry>> {
    if hostids.is_empty() {
        return Ok(Vec::new());
    }
    let partner_id = partners.field(servers::id);
    /// The server, its pair, the partner's hostid, the pair's secret.
    type Row = (ServerRow, Option<PairRow>, Option<String>, Option<String>);
    let rows: Vec<Row> = on_backend!(conn, |c| servers::table
        .left_join(pairs::table.on(pairs::id.nullable().eq(servers::pair_id)))
        .left_join(
            partners.on(partner_id
                .nullable()
                .eq(pairs::main_server_id.nullable())
                .or(partner_id.nullable().eq(pairs::backup_server_id))
                .and(partner_id.ne(servers::id))),
        )
        .filter(servers::hostid.eq_any(hostids))
        .select((
            ServerRow::as_select(),
            Option::<PairRow>::as_select(),
            partners.field(servers::hostid).nullable(),
            pairs::pair_token.nullable(),
        ))
        .load(c))?;
    let mut entries: Vec<Entry> = rows
        .into_iter()
        .map(|(row, pair, partner_hostid, token)| Entry {
            row,
            pair,
            partner_hostid,
            pair_token: token.map(Secret::new),
            cluster: None,
        })
        .collect();
    with_clusters(conn, &mut entries)?;
    Ok(entries)
}

/// Adds their clusters to the entries of cluster members: two queries, when there are any.
fn with_clusters(conn: &mut DbConn, entries: &mut [Entry]) -> AppResult<()> {
    let mut ids: Vec<String> = entries
        .iter()
        .filter_map(|e| e.row.cluster_id.clone())
        .collect();
    if ids.is_empty() {
        return Ok(());
    }
    ids.sort_unstable();
    ids.dedup();
    let rows: Vec<ClusterRow> = on_backend!(conn, |c| clusters::table
        .filter(clusters::id.eq_any(&ids))
        .select(ClusterRow::as_select())
        .load(c))?;
    let members: Vec<(Option<String>, String)> = on_backend!(conn, |c| servers::table
        .filter(servers::cluster_id.eq_any(&ids))
        .select((servers::cluster_id, servers::hostid))
        .order(servers::hostid)
        .load(c))?;
    for e in entries {
        let Some(cid) = &e.row.cluster_id else {
            continue;
        };
        let Some(row) = rows.iter().find(|r| &r.id == cid) else {
            continue;
        };
        let hostids = members
            .iter()
            .filter(|(c, _)| c.as_ref() == Some(cid))
            .map(|(_, h)| h.clone())
            .collect();
        e.cluster = Some((row.clone(), hostids));
    }
    Ok(())
}

/// The entry of one hostid.
pub(super) fn entry(conn: &mut DbConn, hostid: &HostId) -> AppResult<Option<Entry>> {
    Ok(entries(conn, &[hostid.to_string()])?.into_iter().next())
}

impl Entry {
    /// What the domain rules are told about this server, asked about by `account_id`.
    pub fn known(&self, account_id: &str) -> AppResult<Known> {
        let row = &self.row;
        let pair = match &self.pair {
            None => None,
            Some(p) => {
                // The server's own hostid where it is the member named; its partner's
                // where the other is.
                let hostid_of = |id: &str| -> AppResult<HostId> {
                    let h = if id == row.id {
                        Some(&row.hostid)
                    } else {
                        self.partner_hostid.as_ref()
                    };
                    let h = h.ok_or_else(|| AppError::internal("a pair member vanished"))?;
                    HostId::parse(h).map_err(AppError::internal)
                };
                Some(KnownPair {
                    pair_id: p.id.clone(),
                    main_server_id: p.main_server_id.clone(),
                    main_hostid: hostid_of(&p.main_server_id)?,
                    backup_hostid: p.backup_server_id.as_deref().map(hostid_of).transpose()?,
                })
            }
        };
        let cluster = match &self.cluster {
            None => None,
            Some((c, hostids)) => {
                let mut members = hostids
                    .iter()
                    .map(|h| HostId::parse(h).map_err(AppError::internal))
                    .collect::<AppResult<Vec<_>>>()?;
                members.sort_by_key(ToString::to_string);
                Some(KnownCluster {
                    cluster_id: c.id.clone(),
                    holder_server_id: c.holder_server_id.clone(),
                    members,
                })
            }
        };
        Ok(Known {
            server_id: row.id.clone(),
            same_account: row.account_id == account_id,
            role: row.role(),
            state: ServerState::parse(&row.state),
            pair,
            cluster,
        })
    }
}

/// What the registry knows of a hostid, as the domain rules see it, with its entry.
pub(super) fn known(
    conn: &mut DbConn,
    account_id: &str,
    hostid: &HostId,
) -> AppResult<Option<(Known, Entry)>> {
    match entry(conn, hostid)? {
        Some(e) => Ok(Some((e.known(account_id)?, e))),
        None => Ok(None),
    }
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
            // A new backup gets a new secret: whatever the pair's former backup held is
            // worth nothing to it.
            let current = pair_by_id(conn, &pid)?.and_then(|p| p.backup_server_id);
            if current.as_ref() != Some(&backup_id) {
                diesel::update(pairs::table.find(&pid))
                    .set((
                        pairs::backup_server_id.eq(Some(&backup_id)),
                        pairs::pair_token.eq(new_pair_token()),
                    ))
                    .execute(conn)?;
            }
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
                    pairs::pair_token.eq(new_pair_token()),
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

/// Creates a cluster's rows: its three members (the first the holder of its rights), each
/// its existing row or a new one. Returns (first member's server id, cluster id).
pub(super) fn register_cluster_rows(
    conn: &mut DbConn,
    account_id: &str,
    members: Vec<(HostId, Option<String>)>,
    by: RegisteredBy,
    now: i64,
) -> AppResult<(String, String)> {
    let mut ids = Vec::with_capacity(members.len());
    for (i, (hostid, existing)) in members.into_iter().enumerate() {
        // The member whose request registers it has spoken; the others are expected.
        let state = match (by, i) {
            (RegisteredBy::Capability, 0) => ServerState::Registered,
            _ => ServerState::Expected,
        };
        ids.push(place_member(
            conn,
            account_id,
            existing,
            &hostid,
            Role::Standalone,
            state,
            now,
        )?);
    }
    let first = ids
        .first()
        .cloned()
        .ok_or_else(|| AppError::internal("a cluster without members"))?;
    let cid = new_id();
    diesel::insert_into(clusters::table)
        .values((
            clusters::id.eq(&cid),
            clusters::account_id.eq(account_id),
            clusters::holder_server_id.eq(&first),
            clusters::registered_by.eq(by.as_str()),
            clusters::created_at.eq(now),
        ))
        .execute(conn)?;
    diesel::update(servers::table.filter(servers::id.eq_any(&ids)))
        .set(servers::cluster_id.eq(Some(&cid)))
        .execute(conn)?;
    Ok((first, cid))
}

/// Gives a pair or cluster member its role: its existing row (a registered server stays registered,
/// any other takes `state`), or a new row in `state`.
pub(super) fn place_member(
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

/// The server that holds a server's rights: itself, its pair's main, or its cluster's
/// holder.
pub(super) fn holder_of(conn: &mut DbConn, row: &ServerRow) -> AppResult<String> {
    if let Some(cid) = &row.cluster_id {
        return Ok(cluster_by_id(conn, cid)?
            .map(|c| c.holder_server_id)
            .unwrap_or_else(|| row.id.clone()));
    }
    match (&row.pair_id, row.role()) {
        (Some(pid), Role::Backup) => Ok(pair_by_id(conn, pid)?
            .map(|p| p.main_server_id)
            .unwrap_or_else(|| row.id.clone())),
        _ => Ok(row.id.clone()),
    }
}

/// A pair's new secret: 32 random bytes, base64url.
fn new_pair_token() -> String {
    shared::random_token::<32>()
}

/// Gives a pair that has none (one registered before pairs had secrets) its secret.
pub(super) fn ensure_pair_token(c: &mut DbConn, pair_id: &str) -> AppResult<Secret> {
    let token = new_pair_token();
    diesel::update(
        pairs::table
            .find(pair_id)
            .filter(pairs::pair_token.is_null()),
    )
    .set(pairs::pair_token.eq(&token))
    .execute(c)?;
    let stored: Option<String> = pairs::table
        .find(pair_id)
        .select(pairs::pair_token)
        .get_result(c)?;
    stored
        .map(Secret::new)
        .ok_or_else(|| AppError::internal("a pair's secret vanished"))
}

/// Takes a pair's backup out of it: the pair keeps its main and its rights, and gets a new
/// secret, which the removed backup never receives.
pub(super) fn delete_backup(c: &mut DbConn, pair_id: &str, backup_id: &str) -> AppResult<()> {
    diesel::update(pairs::table.find(pair_id))
        .set((
            pairs::backup_server_id.eq(None::<String>),
            pairs::pair_token.eq(new_pair_token()),
        ))
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
