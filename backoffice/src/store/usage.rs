//! Usage over time: what servers report with their polls, sampled at most once a minute a
//! server, and read back for the usage charts.

use diesel::prelude::*;
use serde::Serialize;
use shared::capability::FeatureUsage;
use utoipa::ToSchema;

use super::new_id;
use super::servers::{account_server, pair_by_id};
use crate::db::DbConn;
use crate::error::AppResult;
use crate::schema::usage_samples;

/// Seconds between two samples of one server.
pub const SAMPLE_EVERY: i64 = 60;

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

/// Keeps one sample of each feature a server reported.
pub(super) fn record(
    conn: &mut DbConn,
    server_id: &str,
    usage: &[FeatureUsage],
    now: i64,
) -> AppResult<()> {
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
    ids.sort();
    ids.dedup();
    let mut points = Vec::new();
    for id in &ids {
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
