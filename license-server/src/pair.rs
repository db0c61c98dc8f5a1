//! The pure rules of a failover pair: who serves, when a backup takes over, what the pair
//! status is. Nothing here does I/O or reads a clock; callers pass `now`.
//!
//! The moving parts (replication, takeover, failback) live in [`crate::replication`];
//! they ask these functions what to do.

use shared::capability::{PairStatus, Role, ServerStatus};

use crate::domain::Millis;

/// How a main sees its backup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Link {
    /// No backup: none configured, or dropped.
    None,
    /// Not contacted yet since this process started.
    Unknown,
    /// The last attempt to reach it failed.
    Unreachable,
    /// Reachable and receiving the changes it missed.
    CatchingUp,
    /// Has every change: grants wait for its acknowledgement.
    InSync,
}

/// What a server does with client requests right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Serving {
    /// Grants, renews, returns.
    Serving,
    /// Standing by (a backup whose main is alive, or a main taking the backup's
    /// changes): clients are sent to the other server.
    Redirect,
    /// A backup that has served alone for longer than the maintenance interval.
    MaintenanceExpired,
}

/// The facts the rules below look at, gathered by the caller.
#[derive(Clone, Copy, Debug)]
pub struct PairFacts {
    pub role: Role,
    /// Main: taking the backup's changes before it serves again.
    pub recovering: bool,
    /// Main: how it sees its backup.
    pub link: Link,
    /// Backup: serving since (it took over and has not handed back).
    pub active_since: Option<Millis>,
    /// Backup: it holds a copy of the main's pool (it was synchronised at least once).
    pub has_copy: bool,
    /// Backup: removed from the pair by an operator or by the main.
    pub detached: bool,
    /// Backup: when the main was last heard (a change or a heartbeat).
    pub last_heard: Option<Millis>,
    /// Backup: its copy had every change the main had when it was last heard.
    pub synced: bool,
}

/// Whether a server serves clients.
pub fn serving(f: &PairFacts, now: Millis, maintenance_ms: i64) -> Serving {
    match f.role {
        Role::Standalone => Serving::Serving,
        Role::Main if f.recovering => Serving::Redirect,
        Role::Main => Serving::Serving,
        Role::Backup => match f.active_since {
            Some(since) if now - since >= maintenance_ms => Serving::MaintenanceExpired,
            Some(_) => Serving::Serving,
            None => Serving::Redirect,
        },
    }
}

/// A standby backup takes over once the main has been silent for the failover timeout,
/// provided it holds a copy of the main's pool to serve (a backup that never heard from
/// its main has nothing to serve) and is still part of the pair.
pub fn should_take_over(f: &PairFacts, now: Millis, failover_timeout_ms: i64) -> bool {
    f.role == Role::Backup
        && f.active_since.is_none()
        && f.has_copy
        && !f.detached
        && f.last_heard.is_some_and(|t| now - t >= failover_timeout_ms)
}

/// The server's own status (contract): serving is `active`, standing by is `ready`.
pub fn server_status(s: Serving) -> ServerStatus {
    match s {
        Serving::Serving => ServerStatus::Active,
        Serving::Redirect | Serving::MaintenanceExpired => ServerStatus::Ready,
    }
}

/// The pair status (contract) as this server sees it; `None` for a standalone server.
pub fn pair_status(f: &PairFacts, now: Millis, failover_timeout_ms: i64) -> Option<PairStatus> {
    match f.role {
        Role::Standalone => None,
        Role::Main if f.recovering => Some(PairStatus::Recovering),
        Role::Main => Some(match f.link {
            Link::InSync => PairStatus::PairedAvailable,
            Link::CatchingUp => PairStatus::NotSynced,
            Link::None | Link::Unknown | Link::Unreachable => PairStatus::BackupNotAvailable,
        }),
        Role::Backup => {
            // Removed from the pair, serving in its place, or not hearing it: the main is
            // not available to this backup.
            let main_gone = f.detached
                || f.active_since.is_some()
                || f.last_heard.is_none_or(|t| now - t >= failover_timeout_ms);
            Some(if main_gone {
                PairStatus::MainNotAvailable
            } else if f.has_copy && f.synced {
                PairStatus::PairedAvailable
            } else {
                PairStatus::NotSynced
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;

    fn backup() -> PairFacts {
        PairFacts {
            role: Role::Backup,
            recovering: false,
            link: Link::None,
            active_since: None,
            has_copy: true,
            detached: false,
            last_heard: Some(1_000),
            synced: true,
        }
    }

    fn main() -> PairFacts {
        PairFacts {
            role: Role::Main,
            link: Link::InSync,
            ..backup()
        }
    }

    #[test]
    fn a_standby_backup_redirects_and_takes_over_after_silence() {
        let b = backup();
        assert_eq!(serving(&b, 1_500, 21 * DAY), Serving::Redirect);
        assert_eq!(
            server_status(serving(&b, 1_500, 21 * DAY)),
            ServerStatus::Ready
        );
        assert_eq!(
            pair_status(&b, 1_500, 1_000),
            Some(PairStatus::PairedAvailable)
        );
        assert!(!should_take_over(&b, 1_999, 1_000));
        assert!(should_take_over(&b, 2_000, 1_000));
        assert_eq!(
            pair_status(&b, 2_000, 1_000),
            Some(PairStatus::MainNotAvailable)
        );
        // Without a copy of the pool, or once removed from the pair: never.
        assert!(!should_take_over(
            &PairFacts {
                has_copy: false,
                ..b
            },
            9_000,
            1_000
        ));
        assert!(!should_take_over(
            &PairFacts {
                detached: true,
                ..b
            },
            9_000,
            1_000
        ));
        // Never heard since it started: the silence counts from the start.
        assert!(!should_take_over(
            &PairFacts {
                last_heard: None,
                ..b
            },
            9_000,
            1_000
        ));
    }

    #[test]
    fn an_active_backup_serves_until_the_maintenance_interval_ends() {
        let b = PairFacts {
            active_since: Some(10 * DAY),
            ..backup()
        };
        assert_eq!(serving(&b, 10 * DAY, 21 * DAY), Serving::Serving);
        assert_eq!(serving(&b, 31 * DAY - 1, 21 * DAY), Serving::Serving);
        assert_eq!(serving(&b, 31 * DAY, 21 * DAY), Serving::MaintenanceExpired);
        assert!(!should_take_over(&b, 40 * DAY, 1_000));
        assert_eq!(
            pair_status(&b, 10 * DAY, 1_000),
            Some(PairStatus::MainNotAvailable)
        );
    }

    #[test]
    fn main_status_follows_its_link_to_the_backup() {
        let m = main();
        assert_eq!(serving(&m, 0, 0), Serving::Serving);
        assert_eq!(pair_status(&m, 0, 0), Some(PairStatus::PairedAvailable));
        for (link, want) in [
            (Link::CatchingUp, PairStatus::NotSynced),
            (Link::Unreachable, PairStatus::BackupNotAvailable),
            (Link::Unknown, PairStatus::BackupNotAvailable),
            (Link::None, PairStatus::BackupNotAvailable),
        ] {
            assert_eq!(pair_status(&PairFacts { link, ..m }, 0, 0), Some(want));
        }
        let r = PairFacts {
            recovering: true,
            ..m
        };
        assert_eq!(serving(&r, 0, 0), Serving::Redirect);
        assert_eq!(pair_status(&r, 0, 0), Some(PairStatus::Recovering));
        let s = PairFacts {
            role: Role::Standalone,
            ..m
        };
        assert_eq!(pair_status(&s, 0, 0), None);
        assert_eq!(serving(&s, 0, 0), Serving::Serving);
    }

    #[test]
    fn a_backup_catching_up_is_not_synced() {
        let b = PairFacts {
            synced: false,
            ..backup()
        };
        assert_eq!(pair_status(&b, 1_100, 1_000), Some(PairStatus::NotSynced));
    }
}
