//! Usage over time: what servers report with their polls, kept as readings (when the usage
//! changed, and at least once a minute a server), and read back for View Server: its
//! current usage is the latest reading, its charts and tables the readings of a window.
//!
//! And the usage reports: the closed intervals servers report (peak, average, grants,
//! denials by code, true denials, borrowed, overdraft, queued), kept once each by who
//! served which part of which interval, and read back added up per interval for a server
//! and its pair partner, and for an entitlement's line items across the servers they are
//! mapped to.

use std::collections::{BTreeMap, BTreeSet};

use diesel::prelude::*;
use serde::Serialize;
use shared::capability::{FeatureUsage, UsageInterval};
use utoipa::ToSchema;

use super::new_id;
use super::servers::{ServerRow, account_server, cluster_members, pair_by_id};
use crate::db::DbConn;
use crate::error::{AppError, AppResult};
use crate::on_backend;
use crate::schema::{features, line_items, mappings, servers, usage_intervals, usage_samples};

/// Seconds between two samples of one server whose usage did not change.
pub const SAMPLE_EVERY: i64 = 60;

/// Most readings of one server read for a window (a week of one a minute for 10
/// features); the newest are kept.
const MAX_READINGS: i64 = 100_800;

/// One point of a usage chart.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, ToSchema)]
pub struct UsagePoint {
    pub feature: String,
    pub version: String,
    /// When it was sampled (Unix time, seconds).
    #[schema(format = Int64, minimum = 0, example = 1798366799)]
    pub at: i64,
    /// Seats the server had.
    pub count: i64,
    /// Seats in use.
    pub in_use: i64,
}

/// Keeps one sample of each feature a server reported; a second report within the same
/// second replaces that second's (times are whole seconds: the later one is the truth).
pub(super) fn record(
    conn: &mut DbConn,
    server_id: &str,
    usage: &[FeatureUsage],
    now: i64,
    same_second: bool,
) -> AppResult<()> {
    if same_second {
        diesel::delete(
            usage_samples::table
                .filter(usage_samples::server_id.eq(server_id))
                .filter(usage_samples::sampled_at.eq(now)),
        )
        .execute(conn)?;
    }
    // One statement a row: batch inserts are not portable across the backends.
    for u in usage {
        diesel::insert_into(usage_samples::table)
            .values((
                usage_samples::id.eq(new_id()),
                usage_samples::server_id.eq(server_id),
                usage_samples::feature.eq(&u.feature),
                usage_samples::version.eq(&u.version),
                usage_samples::count.eq(i64::from(u.count)),
                usage_samples::in_use.eq(i64::from(u.in_use)),
                usage_samples::sampled_at.eq(now),
            ))
            .execute(conn)?;
    }
    Ok(())
}

/// A server and its pair partner: whose readings View Server shows.
fn with_partner(conn: &mut DbConn, account_id: &str, server_id: &str) -> AppResult<Vec<String>> {
    let row = account_server(conn, account_id, server_id)?;
    let mut ids = vec![row.id.clone()];
    if let Some(pid) = &row.pair_id
        && let Some(p) = pair_by_id(conn, pid)?
    {
        ids.push(p.main_server_id);
        ids.extend(p.backup_server_id);
    }
    ids.sort();
    ids.dedup();
    Ok(ids)
}

/// A server, its pair partner and the other members of its cluster: whose usage
/// intervals are one pool's.
fn serving_together(
    conn: &mut DbConn,
    account_id: &str,
    server_id: &str,
) -> AppResult<Vec<String>> {
    let mut ids = with_partner(conn, account_id, server_id)?;
    let row = account_server(conn, account_id, server_id)?;
    if let Some(cid) = &row.cluster_id {
        ids.extend(cluster_members(conn, cid)?.into_iter().map(|m| m.id));
        ids.sort();
        ids.dedup();
    }
    Ok(ids)
}

/// The latest readings of a server and its pair partner: those of the last time either
/// reported (both, when both reported then), oldest first; none before any report.
pub fn latest_readings(
    conn: &mut DbConn,
    account_id: &str,
    server_id: &str,
) -> AppResult<Vec<UsagePoint>> {
    let ids = with_partner(conn, account_id, server_id)?;
    let last: Option<i64> = usage_samples::table
        .filter(usage_samples::server_id.eq_any(&ids))
        .select(diesel::dsl::max(usage_samples::sampled_at))
        .first(conn)?;
    match last {
        Some(at) => readings(conn, &ids, at, Some(at)),
        None => Ok(Vec::new()),
    }
}

/// Usage samples of a server and its pair partner since `since`, oldest first.
pub fn usage_history(
    conn: &mut DbConn,
    account_id: &str,
    server_id: &str,
    since: i64,
) -> AppResult<Vec<UsagePoint>> {
    let ids = with_partner(conn, account_id, server_id)?;
    readings(conn, &ids, since, None)
}

/// The readings of `ids` from `since` (to `until`), oldest first; of a server with more
/// than [`MAX_READINGS`], the newest.
fn readings(
    conn: &mut DbConn,
    ids: &[String],
    since: i64,
    until: Option<i64>,
) -> AppResult<Vec<UsagePoint>> {
    let mut points = Vec::new();
    for id in ids {
        let rows: Vec<(String, String, i64, i64, i64)> = usage_samples::table
            .filter(usage_samples::server_id.eq(id))
            .filter(usage_samples::sampled_at.ge(since))
            .filter(usage_samples::sampled_at.le(until.unwrap_or(i64::MAX)))
            .select((
                usage_samples::feature,
                usage_samples::version,
                usage_samples::sampled_at,
                usage_samples::count,
                usage_samples::in_use,
            ))
            .order(usage_samples::sampled_at.desc())
            .limit(MAX_READINGS)
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
    points.sort_by(|a, b| (a.at, &a.feature, &a.version).cmp(&(b.at, &b.feature, &b.version)));
    Ok(points)
}

/// Most interval rows read for one view (a day of 5-minute intervals of 100 features, both
/// servers of a pair); the newest are kept.
const MAX_INTERVAL_ROWS: i64 = 60_000;

/// Keeps the closed usage intervals a server reported, each once: a part already held
/// (the same server, feature, interval and start of its part, repeated after a restart
/// or by the other server of the pair after a failover) changes nothing. An interval is
/// kept for the server that served it: the reporter, its pair partner or another member
/// of its cluster; one naming another server is not kept. Returns how many were new.
pub(super) fn record_intervals(
    conn: &mut DbConn,
    row: &ServerRow,
    intervals: &[UsageInterval],
    now: i64,
) -> AppResult<usize> {
    if intervals.is_empty() {
        return Ok(0);
    }
    let mut servers_by_hostid = BTreeMap::from([(row.hostid.clone(), row.id.clone())]);
    if let Some(pid) = &row.pair_id
        && let Some(p) = pair_by_id(conn, pid)?
    {
        let partners: Vec<(String, String)> = servers::table
            .filter(
                servers::id.eq_any(
                    [Some(p.main_server_id), p.backup_server_id]
                        .into_iter()
                        .flatten(),
                ),
            )
            .select((servers::hostid, servers::id))
            .load(conn)?;
        servers_by_hostid.extend(partners);
    }
    // A cluster's intervals are reported by the member that leads, also those an earlier
    // leader served.
    if let Some(cid) = &row.cluster_id {
        servers_by_hostid.extend(
            cluster_members(conn, cid)?
                .into_iter()
                .map(|m| (m.hostid, m.id)),
        );
    }
    let mut fresh = 0;
    // One statement a row: batch inserts are not portable across the backends.
    for i in intervals {
        let served_by = i.served_by.to_string();
        let Some(server_id) = servers_by_hostid.get(&served_by) else {
            tracing::info!(
                reporter = %row.hostid,
                %served_by,
                "a usage interval served by a server outside the reporter's pair or cluster was not kept"
            );
            continue;
        };
        let denials = serde_json::to_string(&i.denials).map_err(AppError::internal)?;
        let values = (
            usage_intervals::id.eq(new_id()),
            usage_intervals::account_id.eq(&row.account_id),
            usage_intervals::server_id.eq(server_id),
            usage_intervals::served_by.eq(&served_by),
            usage_intervals::feature.eq(&i.feature),
            usage_intervals::version.eq(&i.version),
            usage_intervals::starts_at.eq(i.starts_at),
            usage_intervals::ends_at.eq(i.ends_at),
            usage_intervals::served_from.eq(i.served_from),
            usage_intervals::served_until.eq(i.served_until),
            usage_intervals::count.eq(i64::from(i.count)),
            usage_intervals::peak.eq(i64::from(i.peak)),
            usage_intervals::seat_secs.eq(i64::try_from(i.seat_secs).unwrap_or(i64::MAX)),
            usage_intervals::grants.eq(i64::from(i.grants)),
            usage_intervals::denials.eq(denials),
            usage_intervals::true_denials.eq(i64::from(i.true_denials)),
            usage_intervals::borrowed.eq(i64::from(i.borrowed)),
            usage_intervals::overdraft.eq(i64::from(i.overdraft)),
            usage_intervals::queued.eq(i64::from(i.queued)),
            usage_intervals::received_at.eq(now),
        );
        fresh += on_backend!(conn, |c| diesel::insert_into(usage_intervals::table)
            .values(values)
            .on_conflict_do_nothing()
            .execute(c))?;
    }
    Ok(fresh)
}

/// One interval of one feature, its parts (each server's, when both served in it) added
/// up.
#[derive(Clone, Debug, Serialize, PartialEq, ToSchema)]
pub struct IntervalUsage {
    pub feature: String,
    pub version: String,
    /// When the interval starts (Unix time, seconds; inclusive).
    #[schema(format = Int64, minimum = 0, example = 1798366800)]
    pub starts_at: i64,
    /// When it ends (Unix time, seconds; exclusive).
    #[schema(format = Int64, minimum = 0, example = 1798367100)]
    pub ends_at: i64,
    /// Seats licensed (the most of any part).
    pub count: i64,
    /// The most seats in use at once (the most of any part).
    pub peak: i64,
    /// Seats in use on average over the interval.
    pub average: f64,
    pub grants: i64,
    /// Refused checkouts by the contract code that refused them.
    pub denials: BTreeMap<String, i64>,
    /// Denied clients that got no seat on a retry within the retry window.
    pub true_denials: i64,
    pub borrowed: i64,
    pub overdraft: i64,
    /// Clients that queued for a seat (0 where no queue exists).
    pub queued: i64,
    /// The hostids of the servers that served it.
    pub served_by: Vec<String>,
}

impl IntervalUsage {
    /// All denials, of every code.
    pub fn denied(&self) -> i64 {
        self.denials.values().sum()
    }
}

type IntervalRow = (
    String,
    String,
    String,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    String,
    (i64, i64, i64, i64),
);

/// The intervals of `server_ids` (their features: all, or those in `only`) from `since`,
/// newest first, parts added up.
fn intervals_of(
    conn: &mut DbConn,
    server_ids: &[String],
    only: Option<&BTreeSet<(String, String)>>,
    since: i64,
) -> AppResult<Vec<IntervalUsage>> {
    let rows: Vec<IntervalRow> = usage_intervals::table
        .filter(usage_intervals::server_id.eq_any(server_ids))
        .filter(usage_intervals::starts_at.ge(since))
        .select((
            usage_intervals::feature,
            usage_intervals::version,
            usage_intervals::served_by,
            usage_intervals::starts_at,
            usage_intervals::ends_at,
            usage_intervals::count,
            usage_intervals::peak,
            usage_intervals::seat_secs,
            usage_intervals::grants,
            usage_intervals::denials,
            (
                usage_intervals::true_denials,
                usage_intervals::borrowed,
                usage_intervals::overdraft,
                usage_intervals::queued,
            ),
        ))
        .order(usage_intervals::starts_at.desc())
        .limit(MAX_INTERVAL_ROWS)
        .load(conn)?;
    let mut out: BTreeMap<(i64, String, String), (IntervalUsage, i64)> = BTreeMap::new();
    for (
        feature,
        version,
        served_by,
        starts_at,
        ends_at,
        count,
        peak,
        seat_secs,
        grants,
        denials,
        t,
    ) in rows
    {
        if only.is_some_and(|o| !o.contains(&(feature.clone(), version.clone()))) {
            continue;
        }
        let (true_denials, borrowed, overdraft, queued) = t;
        let (u, secs) = out
            .entry((starts_at, feature.clone(), version.clone()))
            .or_insert_with(|| {
                (
                    IntervalUsage {
                        feature,
                        version,
                        starts_at,
                        ends_at,
                        count: 0,
                        peak: 0,
                        average: 0.0,
                        grants: 0,
                        denials: BTreeMap::new(),
                        true_denials: 0,
                        borrowed: 0,
                        overdraft: 0,
                        queued: 0,
                        served_by: Vec::new(),
                    },
                    0,
                )
            });
        u.count = u.count.max(count);
        u.peak = u.peak.max(peak);
        *secs = secs.saturating_add(seat_secs);
        u.grants += grants;
        // Written by this module from a map of counts; anything else reads as none.
        let denials: BTreeMap<String, i64> = serde_json::from_str(&denials).unwrap_or_default();
        for (code, n) in denials {
            *u.denials.entry(code).or_default() += n;
        }
        u.true_denials += true_denials;
        u.borrowed += borrowed;
        u.overdraft += overdraft;
        u.queued += queued;
        if !u.served_by.contains(&served_by) {
            u.served_by.push(served_by);
        }
    }
    Ok(out
        .into_values()
        .rev()
        .map(|(mut u, secs)| {
            let len = (u.ends_at - u.starts_at).max(1);
            u.average = (secs as f64 / len as f64 * 100.0).round() / 100.0;
            u.served_by.sort();
            u
        })
        .collect())
}

/// The usage intervals of a server and its pair partner (or the other members of its
/// cluster) from `since`, newest first.
pub fn server_intervals(
    conn: &mut DbConn,
    account_id: &str,
    server_id: &str,
    since: i64,
) -> AppResult<Vec<IntervalUsage>> {
    let ids = serving_together(conn, account_id, server_id)?;
    intervals_of(conn, &ids, None, since)
}

/// The usage of one line item's features on one server (and its pair partner) it is
/// mapped to.
#[derive(Clone, Debug, Serialize, PartialEq, ToSchema)]
pub struct LineItemUsage {
    pub activation_id: String,
    /// The server the line item is mapped to, and its hostid.
    pub server_id: String,
    pub hostid: String,
    /// Its intervals, newest first.
    pub intervals: Vec<IntervalUsage>,
}

/// The usage of an entitlement's line items across the servers they are mapped to, from
/// `since`: one entry per line item and server, its features' intervals newest first.
/// (Line items of one product mapped to one server share its pools: each shows them.)
pub fn entitlement_intervals(
    conn: &mut DbConn,
    account_id: &str,
    entitlement_id: &str,
    since: i64,
) -> AppResult<Vec<LineItemUsage>> {
    let items: Vec<(String, String, String)> = line_items::table
        .filter(line_items::account_id.eq(account_id))
        .filter(line_items::entitlement_id.eq(entitlement_id))
        .select((
            line_items::id,
            line_items::activation_id,
            line_items::product_id,
        ))
        .order(line_items::activation_id)
        .load(conn)?;
    if items.is_empty() {
        let exists: i64 = crate::schema::entitlements::table
            .filter(crate::schema::entitlements::id.eq(entitlement_id))
            .filter(crate::schema::entitlements::account_id.eq(account_id))
            .count()
            .get_result(conn)?;
        if exists == 0 {
            return Err(AppError::not_found("entitlement"));
        }
    }
    let mut out = Vec::new();
    for (item_id, activation_id, product_id) in items {
        let feats: BTreeSet<(String, String)> = features::table
            .filter(features::product_id.eq(&product_id))
            .select((features::name, features::version))
            .load::<(String, String)>(conn)?
            .into_iter()
            .collect();
        let mapped: Vec<(String, String)> = mappings::table
            .inner_join(servers::table)
            .filter(mappings::line_item_id.eq(&item_id))
            .select((servers::id, servers::hostid))
            .order(servers::hostid)
            .load(conn)?;
        for (server_id, hostid) in mapped {
            let ids = serving_together(conn, account_id, &server_id)?;
            out.push(LineItemUsage {
                activation_id: activation_id.clone(),
                intervals: intervals_of(conn, &ids, Some(&feats), since)?,
                server_id,
                hostid,
            });
        }
    }
    Ok(out)
}
