//! Usage over time: what servers report with their polls, kept as readings (when the usage
//! changed, and at least once a minute a server), and read back for View Server: its
//! current usage is the latest reading, its charts and tables the readings of a window.

use diesel::prelude::*;
use serde::Serialize;
use shared::capability::FeatureUsage;
use utoipa::ToSchema;

use super::new_id;
use super::servers::{account_server, pair_by_id};
use crate::db::DbConn;
use crate::error::AppResult;
use crate::schema::usage_samples;

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
