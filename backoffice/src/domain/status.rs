//! Server, pair and cluster status as the back office sees them.

use shared::capability::{ClusterStatus, PairStatus, Role, ServerStatus};

/// A server is `inaccessible` when it has not been heard from within `timeout` seconds;
/// otherwise what it reported, or what its role implies.
pub fn server_status(
    role: Role,
    last_contact: Option<i64>,
    reported: Option<ServerStatus>,
    now: i64,
    timeout: i64,
) -> ServerStatus {
    match last_contact {
        Some(t) if now - t <= timeout => reported.unwrap_or(match role {
            Role::Backup => ServerStatus::Ready,
            _ => ServerStatus::Active,
        }),
        _ => ServerStatus::Inaccessible,
    }
}

/// The pair's status from its members' statuses and what the main last reported.
pub fn pair_status(
    main: ServerStatus,
    backup: Option<ServerStatus>,
    reported_by_main: Option<PairStatus>,
    reported_by_backup: Option<PairStatus>,
) -> PairStatus {
    match (main, backup) {
        (ServerStatus::Inaccessible, _) => PairStatus::MainNotAvailable,
        (_, None | Some(ServerStatus::Inaccessible)) => PairStatus::BackupNotAvailable,
        _ => match (reported_by_main, reported_by_backup) {
            (Some(PairStatus::Recovering), _) | (_, Some(PairStatus::Recovering)) => {
                PairStatus::Recovering
            }
            // The backup serves in the main's place (it took over), or the main serves
            // without its backup: what the servers themselves see wins.
            (_, Some(PairStatus::MainNotAvailable)) if backup == Some(ServerStatus::Active) => {
                PairStatus::MainNotAvailable
            }
            (Some(PairStatus::BackupNotAvailable), _) => PairStatus::BackupNotAvailable,
            (Some(PairStatus::NotSynced), _) | (_, Some(PairStatus::NotSynced)) => {
                PairStatus::NotSynced
            }
            _ => PairStatus::PairedAvailable,
        },
    }
}

/// A cluster's status from its members' statuses and what each reported of the cluster:
/// the best status reported by a member the back office hears from (a member sees its
/// links to the other two; the back office sees none of them), `not_operational` when it
/// hears from none.
pub fn cluster_status(members: &[(ServerStatus, Option<ClusterStatus>)]) -> ClusterStatus {
    let rank = |s: ClusterStatus| match s {
        ClusterStatus::Operational => 2,
        ClusterStatus::PartiallyOperational => 1,
        ClusterStatus::NotOperational => 0,
    };
    members
        .iter()
        .filter(|(s, _)| *s != ServerStatus::Inaccessible)
        .filter_map(|(_, c)| *c)
        .max_by_key(|c| rank(*c))
        .unwrap_or(ClusterStatus::NotOperational)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clusters_status_is_the_best_its_members_in_contact_report() {
        use ClusterStatus::*;
        use ServerStatus::*;
        assert_eq!(
            cluster_status(&[
                (Active, Some(Operational)),
                (Ready, Some(Operational)),
                (Ready, Some(Operational))
            ]),
            Operational
        );
        // A member cut off from the others reports not_operational; the two that see
        // each other say how the cluster serves.
        assert_eq!(
            cluster_status(&[
                (Ready, Some(NotOperational)),
                (Active, Some(PartiallyOperational)),
                (Ready, Some(PartiallyOperational))
            ]),
            PartiallyOperational
        );
        // What a member reported before it fell silent does not count.
        assert_eq!(
            cluster_status(&[
                (Inaccessible, Some(Operational)),
                (Ready, Some(NotOperational)),
                (Inaccessible, None)
            ]),
            NotOperational
        );
        assert_eq!(cluster_status(&[]), NotOperational);
    }

    #[test]
    fn silence_makes_a_server_inaccessible() {
        assert_eq!(
            server_status(Role::Main, Some(100), None, 150, 60),
            ServerStatus::Active
        );
        assert_eq!(
            server_status(Role::Backup, Some(100), None, 150, 60),
            ServerStatus::Ready
        );
        assert_eq!(
            server_status(Role::Main, Some(100), None, 161, 60),
            ServerStatus::Inaccessible
        );
        assert_eq!(
            server_status(Role::Main, None, None, 0, 60),
            ServerStatus::Inaccessible
        );
    }

    #[test]
    fn pair_status_follows_members() {
        use ServerStatus::*;
        assert_eq!(
            pair_status(Active, Some(Ready), None, None),
            PairStatus::PairedAvailable
        );
        assert_eq!(
            pair_status(Inaccessible, Some(Active), None, None),
            PairStatus::MainNotAvailable
        );
        assert_eq!(
            pair_status(Active, Some(Inaccessible), None, None),
            PairStatus::BackupNotAvailable
        );
        assert_eq!(
            pair_status(Active, None, None, None),
            PairStatus::BackupNotAvailable
        );
        assert_eq!(
            pair_status(Active, Some(Ready), Some(PairStatus::Recovering), None),
            PairStatus::Recovering
        );
        assert_eq!(
            pair_status(Active, Some(Ready), None, Some(PairStatus::NotSynced)),
            PairStatus::NotSynced
        );
        // What the servers see: a backup that took over, a main that lost its backup.
        assert_eq!(
            pair_status(
                Active,
                Some(Active),
                Some(PairStatus::PairedAvailable),
                Some(PairStatus::MainNotAvailable)
            ),
            PairStatus::MainNotAvailable
        );
        assert_eq!(
            pair_status(
                Active,
                Some(Ready),
                Some(PairStatus::BackupNotAvailable),
                None
            ),
            PairStatus::BackupNotAvailable
        );
        // A standby backup that merely lost sight of its main does not decide.
        assert_eq!(
            pair_status(
                Active,
                Some(Ready),
                Some(PairStatus::PairedAvailable),
                Some(PairStatus::MainNotAvailable)
            ),
            PairStatus::PairedAvailable
        );
    }
}
