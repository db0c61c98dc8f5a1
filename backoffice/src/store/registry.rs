//! The account's registry as it sees it and works it by hand: the Servers list, View
//! Server (a server with its pair or cluster, rights and usage), registering a pair or a
//! three-member cluster before its servers start, and removing a pair's backup.

use diesel::prelude::*;
use serde::Serialize;
use shared::capability::{ClusterStatus, FeatureUsage, PairStatus, Role, ServerStatus};
use shared::{ErrorCode, HostId};
use utoipa::ToSchema;

use super::lock_account;
use super::mappings::{self, MappedRight};
use super::servers::{
    ClusterRow, PairRow, PairRows, RegisteredBy, ServerRow, account_server, cluster_by_id,
    cluster_members, delete_backup, holder_of, known, pair_by_id, place_member,
    register_cluster_rows, register_pair_rows, server_by_id,
};
use crate::db::DbConn;
use crate::domain::registry::{self as rules, Known, KnownCluster, Plan, ServerState};
use crate::domain::status;
use crate::error::{AppError, AppResult};
use crate::schema::{clusters, mappings as mapping_rows, pairs, servers, usage_samples};

/// A license server as the account sees it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, ToSchema)]
pub struct ServerInfo {
    pub id: String,
    #[schema(example = "ethernet:00163E5A1B2C")]
    pub hostid: String,
    pub role: Role,
    /// `registered` (it has spoken to the back office), `expected` (named by a pair, not
    /// heard from yet) or `waiting` (a backup whose main has not registered the pair).
    #[schema(example = "registered")]
    pub registration: String,
    pub status: ServerStatus,
    /// First contact (Unix time, seconds).
    #[schema(format = Int64, minimum = 0, example = 1798366799)]
    pub first_contact_at: Option<i64>,
    /// Last contact (Unix time, seconds).
    #[schema(format = Int64, minimum = 0, example = 1798367399)]
    pub last_contact_at: Option<i64>,
    pub pair_id: Option<String>,
    /// The three-member cluster it is a member of.
    pub cluster_id: Option<String>,
    /// A cluster member's view of its cluster, as it last reported it.
    pub reported_cluster_status: Option<ClusterStatus>,
    /// The ID of the public key the server last sent (the SHA-256 of its 32 bytes, first
    /// 12 in base64url): the key its grants are signed with. Absent until it sends one.
    #[schema(example = "q5bYF3hJ0aTzW1xk")]
    pub key_id: Option<String>,
}

/// A failover pair and its members.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, ToSchema)]
pub struct PairView {
    pub id: String,
    pub status: PairStatus,
    /// `capability` (the main's request) or `portal` (by hand).
    #[schema(example = "capability")]
    pub registered_by: String,
    /// Unix time, seconds.
    #[schema(format = Int64, minimum = 0, example = 1798366799)]
    pub created_at: i64,
    pub main: ServerInfo,
    pub backup: Option<ServerInfo>,
}

/// A three-member failover cluster and its members.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, ToSchema)]
pub struct ClusterView {
    pub id: String,
    /// The best status reported by a member the back office hears from:
    /// `operational` (it sees both other members), `partially_operational` (one),
    /// `not_operational` (none, or no member heard from).
    pub status: ClusterStatus,
    /// `capability` (a member's request) or `portal` (by hand).
    #[schema(example = "capability")]
    pub registered_by: String,
    /// Unix time, seconds.
    #[schema(format = Int64, minimum = 0, example = 1798366799)]
    pub created_at: i64,
    /// The three members, by hostid, each with its status as the back office sees it and
    /// what it reported of the cluster.
    pub members: Vec<ServerInfo>,
}

/// Everything the View Server page shows.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, ToSchema)]
pub struct ServerView {
    pub server: ServerInfo,
    pub pair: Option<PairView>,
    pub cluster: Option<ClusterView>,
    /// The rights mapped to the server (to its pair's main for a pair, to its cluster
    /// for a cluster member).
    pub rights: Vec<MappedRight>,
    /// What the serving member last reported.
    pub usage: Vec<FeatureUsage>,
    /// When that was reported (Unix time, seconds).
    #[schema(format = Int64, minimum = 0, example = 1798367399)]
    pub usage_reported_at: Option<i64>,
}

/// One row of the Servers list.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, ToSchema)]
pub struct ServerSummary {
    #[serde(flatten)]
    pub server: ServerInfo,
    /// The pair's status, for a pair member.
    pub pair_status: Option<PairStatus>,
    /// The other member's hostid, for a pair member.
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
        cluster_id: row.cluster_id.clone(),
        reported_cluster_status: row.reported_cluster_status(),
        key_id: row.server_key_id.clone(),
    }
}

fn cluster_view(
    conn: &mut DbConn,
    c: &ClusterRow,
    now: i64,
    timeout: i64,
) -> AppResult<ClusterView> {
    let members: Vec<ServerInfo> = cluster_members(conn, &c.id)?
        .iter()
        .map(|r| info(r, now, timeout))
        .collect();
    let seen: Vec<_> = members
        .iter()
        .map(|m| (m.status, m.reported_cluster_status))
        .collect();
    Ok(ClusterView {
        id: c.id.clone(),
        status: status::cluster_status(&seen),
        registered_by: c.registered_by.clone(),
        created_at: c.created_at,
        members,
    })
}

fn pair_view(conn: &mut DbConn, p: &PairRow, now: i64, timeout: i64) -> AppResult<PairView> {
    let main = server_by_id(conn, &p.main_server_id)?
        .ok_or_else(|| AppError::internal("a pair's main vanished"))?;
    let backup = match &p.backup_server_id {
        Some(b) => server_by_id(conn, b)?,
        None => None,
    };
    let mi = info(&main, now, timeout);
    let bi = backup.as_ref().map(|b| info(b, now, timeout));
    let st = status::pair_status(
        mi.status,
        bi.as_ref().map(|b| b.status),
        main.reported_pair_status(),
        backup.as_ref().and_then(ServerRow::reported_pair_status),
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
        .select(ServerRow::as_select())
        .order(servers::hostid)
        .load(conn)?;
    let prs: Vec<PairRow> = pairs::table
        .filter(pairs::account_id.eq(account_id))
        .select(PairRow::as_select())
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
    let cluster = match &row.cluster_id {
        Some(cid) => match cluster_by_id(conn, cid)? {
            Some(c) => Some(cluster_view(conn, &c, now, timeout)?),
            None => None,
        },
        None => None,
    };
    let holder = holder_of(conn, &row)?;
    let rights = mappings::mapped_rights(conn, &holder)?;
    // Usage: what the serving member of the pair or cluster last reported.
    let mut usage = row.usage();
    let mut reported_at = row.usage_json.as_ref().and(row.last_contact_at);
    let serving: Vec<&ServerInfo> = match (&pair, &cluster) {
        (Some(p), _) => [Some(&p.main), p.backup.as_ref()]
            .into_iter()
            .flatten()
            .collect(),
        (None, Some(c)) => c.members.iter().collect(),
        (None, None) => Vec::new(),
    };
    for member in serving {
        if member.status == ServerStatus::Active
            && let Some(m) = server_by_id(conn, &member.id)?
        {
            usage = m.usage();
            reported_at = m.usage_json.as_ref().and(m.last_contact_at);
            break;
        }
    }
    Ok(ServerView {
        server: info(&row, now, timeout),
        pair,
        cluster,
        rights,
        usage,
        usage_reported_at: reported_at,
    })
}

fn already_paired(main: &HostId, backup: &HostId) -> AppError {
    AppError::new(
        ErrorCode::AlreadyExists,
        format!("{main} and {backup} are already registered as a pair"),
    )
}

/// Registers a failover pair by hand, before either server has started.
pub fn register_pair(
    conn: &mut DbConn,
    account_id: &str,
    main: &HostId,
    backup: &HostId,
) -> AppResult<PairView> {
    let now = shared::now_unix();
    let pid = conn.write_transaction::<_, AppError, _>(|c| {
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
            return Err(already_paired(main, backup));
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
            } => {
                let rows = PairRows {
                    main_hostid: main,
                    backup_hostid: backup,
                    main: m,
                    backup: b,
                    pair,
                };
                Ok(register_pair_rows(c, account_id, rows, RegisteredBy::Portal, now)?.1)
            }
            _ => Err(already_paired(main, backup)),
        }
    })?;
    let p = pair_by_id(conn, &pid)?.ok_or_else(|| AppError::internal("pair vanished"))?;
    pair_view(conn, &p, now, i64::MAX)
}

/// Registers a three-member cluster by hand, before its members start: the first of
/// `members` holds its rights. The same rules as a member's first request.
pub fn register_cluster(
    conn: &mut DbConn,
    account_id: &str,
    members: &[HostId],
) -> AppResult<ClusterView> {
    let now = shared::now_unix();
    let (first, others) = members.split_first().ok_or_else(|| {
        AppError::validation("hostids", "a cluster has three members: name all three")
    })?;
    if let Some(twice) = others.iter().find(|h| *h == first) {
        return Err(AppError::validation(
            "hostids",
            format!("hostid {twice} is named twice: a cluster has three different members"),
        ));
    }
    let cid = conn.write_transaction::<_, AppError, _>(|c| {
        lock_account(c, account_id)?;
        let k = known(c, account_id, first)?;
        let ko = others
            .iter()
            .map(|h| known(c, account_id, h))
            .collect::<AppResult<Vec<_>>>()?;
        let ko: Vec<Option<&Known>> = ko.iter().map(|x| x.as_ref().map(|x| &x.0)).collect();
        match rules::plan_member(first, others, k.as_ref().map(|x| &x.0), &ko)? {
            Plan::RegisterCluster { members } => {
                Ok(register_cluster_rows(c, account_id, members, RegisteredBy::Portal, now)?.1)
            }
            _ => Err(AppError::new(
                ErrorCode::AlreadyExists,
                format!(
                    "{} are already registered as a cluster",
                    rules::hostid_list(members)
                ),
            )),
        }
    })?;
    let c = cluster_by_id(conn, &cid)?.ok_or_else(|| AppError::internal("cluster vanished"))?;
    cluster_view(conn, &c, now, i64::MAX)
}

/// Replaces a cluster's member `out` by `new` (expected until it contacts the back
/// office): the cluster keeps three members and its rights (moved to a member that stays
/// when `out` held them); `out` leaves the registry, and its requests naming the others
/// are refused from then on. The members that stay are refused too until their
/// `CLUSTER_MEMBER_HOSTIDS` name the new member.
pub fn replace_member(
    conn: &mut DbConn,
    account_id: &str,
    cluster_id: &str,
    out: &HostId,
    new: &HostId,
) -> AppResult<ClusterView> {
    let now = shared::now_unix();
    conn.write_transaction::<_, AppError, _>(|c| {
        lock_account(c, account_id)?;
        let cl = cluster_by_id(c, cluster_id)?
            .filter(|x| x.account_id == account_id)
            .ok_or_else(|| AppError::not_found("cluster"))?;
        let rows = cluster_members(c, &cl.id)?;
        let mut members = rows
            .iter()
            .map(|r| HostId::parse(&r.hostid).map_err(AppError::internal))
            .collect::<AppResult<Vec<_>>>()?;
        members.sort_by_key(ToString::to_string);
        let kc = KnownCluster {
            cluster_id: cl.id.clone(),
            holder_server_id: cl.holder_server_id.clone(),
            members,
        };
        let kn = known(c, account_id, new)?;
        rules::plan_replace(&kc, out, new, kn.as_ref().map(|x| &x.0))?;
        let leaving = rows
            .iter()
            .find(|r| r.hostid == out.to_string())
            .ok_or_else(|| AppError::internal("a cluster member vanished"))?;
        let joining = place_member(
            c,
            account_id,
            kn.map(|x| x.0.server_id),
            new,
            Role::Standalone,
            ServerState::Expected,
            now,
        )?;
        diesel::update(servers::table.find(&joining))
            .set(servers::cluster_id.eq(Some(&cl.id)))
            .execute(c)?;
        // The cluster's rights stay with it: held by a member that stays.
        if cl.holder_server_id == leaving.id {
            let heir = rows
                .iter()
                .find(|r| r.id != leaving.id)
                .map_or_else(|| joining.clone(), |r| r.id.clone());
            diesel::update(mapping_rows::table.filter(mapping_rows::server_id.eq(&leaving.id)))
                .set(mapping_rows::server_id.eq(&heir))
                .execute(c)?;
            diesel::update(clusters::table.find(&cl.id))
                .set(clusters::holder_server_id.eq(&heir))
                .execute(c)?;
        }
        diesel::delete(usage_samples::table.filter(usage_samples::server_id.eq(&leaving.id)))
            .execute(c)?;
        diesel::delete(servers::table.find(&leaving.id)).execute(c)?;
        Ok(())
    })?;
    let cl =
        cluster_by_id(conn, cluster_id)?.ok_or_else(|| AppError::internal("cluster vanished"))?;
    cluster_view(conn, &cl, now, i64::MAX)
}

/// Removes a pair's backup; refused while the pair's rights are in use.
pub fn remove_backup(
    conn: &mut DbConn,
    account_id: &str,
    pair_id: &str,
    now: i64,
    timeout: i64,
) -> AppResult<()> {
    conn.write_transaction::<_, AppError, _>(|c| {
        lock_account(c, account_id)?;
        let p = pair_by_id(c, pair_id)?
            .filter(|p| p.account_id == account_id)
            .ok_or_else(|| AppError::not_found("pair"))?;
        let Some(backup_id) = p.backup_server_id.clone() else {
            return Err(AppError::new(ErrorCode::NotFound, "the pair has no backup"));
        };
        let mut in_use = 0u32;
        for id in [&p.main_server_id, &backup_id] {
            if let Some(r) = server_by_id(c, id)?
                && r.last_contact_at.is_some_and(|t| now - t <= timeout)
            {
                in_use += r.usage().iter().map(|u| u.in_use).sum::<u32>();
            }
        }
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
