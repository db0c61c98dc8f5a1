//! Usage statistics kept by the server: per feature, who used it (the checkout's `user`,
//! else its `client_id`), how many grants and renewals, first and last used — DS's
//! "Usage Per User" with its "Last used at". Named users not seen for
//! `USAGE_RECYCLE_AFTER` (30 days) are recycled, dropped from the statistics, every day
//! at 00:00 UTC; a user holding a lease renews it, so is always recent.
//!
//! Each server keeps its own (a cluster's members each theirs: the seed's recycling is
//! per member, not propagated) in `DATA_DIR/usage-stats.json` (mode 0600, replaced whole
//! through `store::files::write_atomically`: synced, renamed, the directory synced),
//! written within [`SAVE_EVERY`] of a change and at shutdown. A file that does not read
//! is set aside as `usage-stats.json.bad` with an error and the statistics start empty:
//! they count nothing a grant depends on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// How soon a change is written.
pub const SAVE_EVERY: Duration = Duration::from_secs(10);
/// The file, in `DATA_DIR`.
pub const FILE: &str = "usage-stats.json";

/// One user of a feature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UserUsage {
    /// The checkout's `user`, else its `client_id`.
    pub user: String,
    /// Grants and renewals.
    pub uses: u64,
    /// First grant (Unix time, seconds).
    #[schema(format = Int64)]
    pub first_used: i64,
    /// Last grant or renewal (Unix time, seconds).
    #[schema(format = Int64)]
    pub last_used: i64,
}

/// One feature's users, the most recent first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FeatureUsage {
    pub feature: String,
    /// Grants and renewals, all users (recycled ones included).
    pub uses: u64,
    pub users: Vec<UserUsage>,
}

/// `GET /api/v1/admin/statistics`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UsageStatistics {
    /// `USAGE_RECYCLE_AFTER`, in seconds.
    pub recycle_after_secs: u64,
    /// When named users were last recycled (Unix time, seconds), if ever.
    #[schema(format = Int64)]
    pub last_recycled_at: Option<i64>,
    pub features: Vec<FeatureUsage>,
}

/// What the file holds.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Data {
    version: u32,
    last_recycled_at: Option<i64>,
    /// feature → (uses, user → usage)
    features: BTreeMap<String, (u64, BTreeMap<String, UserUsage>)>,
}

/// The statistics and where they are kept.
pub struct UsageStats {
    /// `DATA_DIR`, where [`FILE`] is kept (`None`: in memory only).
    dir: Option<PathBuf>,
    recycle_after: Duration,
    data: Mutex<Data>,
    changed: watch::Sender<u64>,
}

impl std::fmt::Debug for UsageStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsageStats")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl UsageStats {
    /// In memory only (tests).
    pub fn in_memory(recycle_after: Duration) -> UsageStats {
        UsageStats {
            dir: None,
            recycle_after,
            data: Mutex::new(Data {
                version: 1,
                ..Data::default()
            }),
            changed: watch::channel(0).0,
        }
    }

    /// Reads `DATA_DIR/usage-stats.json`, if any.
    pub fn open(data_dir: &Path, recycle_after: Duration) -> UsageStats {
        let path = data_dir.join(FILE);
        let mut stats = UsageStats::in_memory(recycle_after);
        match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<Data>(&bytes) {
                Ok(d) if d.version == 1 => *stats.data.get_mut() = d,
                Ok(_) | Err(_) => {
                    let bad = data_dir.join(format!("{FILE}.bad"));
                    let _ = std::fs::rename(&path, &bad);
                    tracing::error!(
                        file = %path.display(),
                        moved_to = %bad.display(),
                        "the usage statistics do not read; set aside, counting starts again"
                    );
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "the usage statistics cannot be read; counting starts again")
            }
        }
        stats.dir = Some(data_dir.to_owned());
        stats
    }

    /// `user` used `feature` at `now` (Unix seconds): a grant or a renewal.
    pub fn record(&self, feature: &str, user: &str, now: i64) {
        {
            let mut d = self.data.lock();
            let (uses, users) = d.features.entry(feature.to_owned()).or_default();
            *uses += 1;
            let u = users.entry(user.to_owned()).or_insert_with(|| UserUsage {
                user: user.to_owned(),
                uses: 0,
                first_used: now,
                last_used: now,
            });
            u.uses += 1;
            u.last_used = u.last_used.max(now);
        }
        self.changed.send_modify(|n| *n += 1);
    }

    /// Drops the users not seen for `USAGE_RECYCLE_AFTER` before `now`; how many.
    pub fn recycle(&self, now: i64) -> usize {
        let before = now - self.recycle_after.as_secs() as i64;
        let mut dropped = 0;
        {
            let mut d = self.data.lock();
            for (_, users) in d.features.values_mut() {
                let n = users.len();
                users.retain(|_, u| u.last_used > before);
                dropped += n - users.len();
            }
            d.last_recycled_at = Some(now);
        }
        self.changed.send_modify(|n| *n += 1);
        dropped
    }

    /// The statistics, each feature's most recent users first.
    pub fn view(&self) -> UsageStatistics {
        let d = self.data.lock();
        UsageStatistics {
            recycle_after_secs: self.recycle_after.as_secs(),
            last_recycled_at: d.last_recycled_at,
            features: d
                .features
                .iter()
                .map(|(feature, (uses, users))| {
                    let mut users: Vec<UserUsage> = users.values().cloned().collect();
                    users.sort_by(|a, b| b.last_used.cmp(&a.last_used).then(a.user.cmp(&b.user)));
                    FeatureUsage {
                        feature: feature.clone(),
                        uses: *uses,
                        users,
                    }
                })
                .collect(),
        }
    }

    /// Writes the file (replaced whole).
    pub fn save(&self) -> std::io::Result<()> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        let bytes = serde_json::to_vec(&*self.data.lock())?;
        crate::store::files::write_atomically(dir, FILE, &bytes)
    }
}

/// Seconds from `now` (Unix seconds) to the next 00:00 UTC.
pub fn until_midnight(now: i64) -> u64 {
    (86_400 - now.rem_euclid(86_400)) as u64
}

/// Writes the statistics within [`SAVE_EVERY`] of a change, recycles every day at 00:00
/// UTC, and writes them a last time at `stop`.
pub async fn run(stats: Arc<UsageStats>, mut stop: watch::Receiver<bool>) {
    let mut changed = stats.changed.subscribe();
    let now = || crate::cluster::now_ms() / 1000;
    let mut midnight = Box::pin(tokio::time::sleep(Duration::from_secs(until_midnight(
        now(),
    ))));
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            () = &mut midnight => {
                let n = stats.recycle(now());
                tracing::info!(
                    recycled = n,
                    after = %shared::duration::format(stats.recycle_after),
                    "named users not seen for USAGE_RECYCLE_AFTER recycled"
                );
                midnight.as_mut().reset(
                    tokio::time::Instant::now() + Duration::from_secs(until_midnight(now()).max(1)),
                );
            }
            r = changed.changed() => {
                if r.is_err() {
                    break;
                }
                tokio::select! {
                    _ = stop.changed() => break,
                    () = tokio::time::sleep(SAVE_EVERY) => {}
                }
                changed.borrow_and_update();
                if let Err(e) = stats.save() {
                    tracing::error!(error = %e, "the usage statistics cannot be written");
                }
            }
        }
    }
    if let Err(e) = stats.save() {
        tracing::error!(error = %e, "the usage statistics cannot be written");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;

    #[test]
    fn uses_are_counted_per_feature_and_user_with_first_and_last_use() {
        let s = UsageStats::in_memory(Duration::from_secs(30 * DAY as u64));
        s.record("cad", "alice", 100);
        s.record("cad", "bob", 150);
        s.record("cad", "alice", 200);
        s.record("cam", "alice", 120);
        let v = s.view();
        assert_eq!(v.features.len(), 2);
        let cad = &v.features[0];
        assert_eq!((cad.feature.as_str(), cad.uses), ("cad", 3));
        assert_eq!(
            cad.users[0],
            UserUsage {
                user: "alice".into(),
                uses: 2,
                first_used: 100,
                last_used: 200
            }
        );
        assert_eq!(cad.users[1].user, "bob");
    }

    #[test]
    fn recycling_drops_the_users_not_seen_for_the_period_and_keeps_the_rest() {
        let s = UsageStats::in_memory(Duration::from_secs(30 * DAY as u64));
        let t0 = 1_900_000_000;
        s.record("cad", "gone", t0);
        s.record("cad", "recent", t0 + 20 * DAY);
        s.record("cam", "gone", t0 + 25 * DAY);
        // Exactly 30 days on: not yet.
        assert_eq!(s.recycle(t0 + 30 * DAY - 1), 0);
        assert_eq!(s.recycle(t0 + 30 * DAY + 1), 1);
        let v = s.view();
        assert_eq!(v.last_recycled_at, Some(t0 + 30 * DAY + 1));
        let users = |f: usize| {
            v.features[f]
                .users
                .iter()
                .map(|u| u.user.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(users(0), ["recent"]);
        assert_eq!(users(1), ["gone"], "seen for cam within the period");
        assert_eq!(
            v.features[0].uses, 2,
            "the feature's count keeps recycled users' uses"
        );
        assert_eq!(s.recycle(t0 + 60 * DAY), 2);
        assert_eq!(until_midnight(t0), (DAY - t0 % DAY) as u64);
        assert_eq!(until_midnight(19 * DAY), DAY as u64);
    }

    #[test]
    fn statistics_survive_a_restart_and_a_damaged_file_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let s = UsageStats::open(dir.path(), Duration::from_secs(60));
        s.record("cad", "alice", 100);
        s.save().unwrap();
        let again = UsageStats::open(dir.path(), Duration::from_secs(60));
        assert_eq!(again.view(), s.view());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(dir.path().join(FILE), b"{not json").unwrap();
        let fresh = UsageStats::open(dir.path(), Duration::from_secs(60));
        assert!(fresh.view().features.is_empty());
        assert!(dir.path().join(format!("{FILE}.bad")).exists());
    }
}
