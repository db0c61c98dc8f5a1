//! What a server shows of itself: the status (`GET /api/v1/status`), the back-office
//! contact the poller keeps up to date, and the metrics (`GET /metrics`).

use serde::Serialize;
use shared::capability::{ClusterStatus, PairStatus, Role, ServerStatus};
use uuid::Uuid;

use super::{Service, now_ms};
use crate::cluster::ClusterView;
use crate::metrics::Metrics;
use crate::pair::{self, Link, Serving};

/// The state of our contact with the back office, shown in the status.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Contact {
    /// No answer yet since this process started.
    NotContacted,
    Connected,
    Unreachable,
    /// The back office answered `MAIN_NOT_REGISTERED`: waiting for the main.
    WaitingForMain,
    /// The back office refused the request (an error answer).
    Refused,
    /// The answer did not verify (signature, hostid, request, freshness).
    Rejected,
}

/// This server's contact with the back office.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct BackofficeStatus {
    /// `BACKOFFICE_URL`.
    pub url: String,
    pub state: Contact,
    /// Since when `state` holds (Unix time, seconds).
    pub since: Option<i64>,
    /// When the last capability request was sent (Unix time, seconds).
    pub last_attempt_at: Option<i64>,
    /// When the last answer verified (Unix time, seconds).
    pub last_success_at: Option<i64>,
    /// Why the last request failed (cleared by a success).
    pub last_error: Option<String>,
    /// Seconds between polls now.
    pub poll_interval_secs: Option<u64>,
    /// When the next capability request is due (Unix time, seconds).
    pub next_attempt_at: Option<i64>,
    /// The live link is open: a change of rights arrives within a second, not at the next
    /// poll.
    pub link_up: bool,
}

impl Service {
    pub fn backoffice(&self) -> BackofficeStatus {
        self.backoffice.lock().clone()
    }

    pub fn set_backoffice(&self, f: impl FnOnce(&mut BackofficeStatus)) {
        let mut b = self.backoffice.lock();
        let before = b.state.clone();
        f(&mut b);
        if b.state != before {
            b.since = Some(shared::now_unix());
        }
    }

    pub fn status(&self) -> StatusView {
        let now = now_ms();
        let (features, leases, seq, rights_updated_at, rights_count, serve_until, pair, queued) = {
            let st = self.state.lock();
            let facts = self.facts(&st);
            let p = self.pair.lock().clone();
            let (serving, pair_status) = self.statuses(&facts, now);
            let view = PairView {
                server_status: pair::server_status(serving),
                pair_status,
                serving: serving == Serving::Serving,
                link: (self.cfg.role == Role::Main).then_some(p.link),
                backup_last_seen: p.backup_last_seen.map(|m| m / 1000),
                main_last_heard: match self.cfg.role {
                    Role::Backup => p.last_heard.map(|m| m / 1000),
                    _ => None,
                },
                active_since: st.active_since.map(|m| m / 1000),
                maintenance_ends_at: st
                    .active_since
                    .map(|m| (m + self.cfg.maintenance_ms) / 1000),
                detached: facts.detached || (self.cfg.role == Role::Main && st.backup.dropped),
                detached_reason: match self.cfg.role {
                    Role::Backup => st.detached.clone(),
                    _ => st.backup.reason.clone().filter(|_| st.backup.dropped),
                },
                history: st.history,
                replicated_seq: (self.cfg.role == Role::Main).then(|| self.repl.borrow().acked),
            };
            let mut queued = std::collections::BTreeMap::new();
            for e in st.queue() {
                *queued.entry(e.feature.clone()).or_insert(0) += 1;
            }
            (
                st.features(now),
                st.lease_count(),
                st.seq,
                st.rights_updated_at,
                st.current_rights().len(),
                st.rights
                    .as_ref()
                    .and_then(|r| r.claims())
                    .map(|c| c.serve_until),
                view,
                queued,
            )
        };
        let trust = TrustView {
            key_id: self.identity.key_id().to_owned(),
            bound_until: self.identity.binding().map(|b| b.until()),
            serve_until,
            pair_secret: match self.cfg.role {
                Role::Standalone => None,
                _ if self.identity.pair_token_configured() => Some(PairSecretSource::Configured),
                _ if self.identity.pair_token().is_set() => Some(PairSecretSource::Backoffice),
                _ => Some(PairSecretSource::None),
            },
        };
        let rights = RightsSummary {
            rights: rights_count,
            features: features.len(),
            seats: features.iter().map(|f| u64::from(f.count)).sum(),
            in_use: features.iter().map(|f| u64::from(f.in_use)).sum(),
            updated_at: rights_updated_at.map(|m| m / 1000),
            next_expiry: features
                .iter()
                .filter(|f| !f.expired)
                .filter_map(|f| f.expires_at)
                .min(),
            expired_features: features.iter().filter(|f| f.expired).count(),
        };
        let cluster = self.cluster().map(|c| c.view());
        let mut pair = pair;
        if let Some(c) = &cluster {
            pair.serving = c.serving;
            pair.server_status = if c.serving {
                ServerStatus::Active
            } else {
                ServerStatus::Ready
            };
        }
        let served_by = if let Some(c) = &cluster {
            c.serving_url.clone()
        } else if pair.serving {
            self.cfg.public_url.clone()
        } else {
            match self.cfg.role {
                Role::Backup => self.cfg.main_uri.clone(),
                _ => self.backup_uri(),
            }
        };
        StatusView {
            hostid: self.hostid_str.clone(),
            role: self.cfg.role,
            server_status: pair.server_status,
            pair_status: pair.pair_status,
            cluster_status: cluster.as_ref().map(|c| c.status),
            served_by,
            pair,
            public_url: self.cfg.public_url.clone(),
            backup_uri: self.backup_uri(),
            main_uri: self.cfg.main_uri.clone(),
            backoffice: self.backoffice(),
            rights,
            trust,
            leases,
            queued,
            cluster,
            journal_seq: seq,
            durable_seq: self
                .store
                .stats
                .durable_seq
                .load(std::sync::atomic::Ordering::Relaxed),
            lease_duration_secs: (self.cfg.lease_ms / 1000) as u64,
            started_at: self.started_at,
            version: env!("CARGO_PKG_VERSION"),
        }
    }

    /// Refreshes the gauges and store counters, then renders the metrics.
    pub fn render_metrics(&self) -> String {
        let features = self.features();
        let (leases, queued) = {
            let st = self.state.lock();
            (st.lease_count(), st.queue().len())
        };
        let m = &self.metrics;
        m.leases.set(leases as i64);
        m.queued.set(queued as i64);
        m.seats_in_use
            .set(features.iter().map(|f| i64::from(f.in_use)).sum());
        m.seats_licensed
            .set(features.iter().map(|f| i64::from(f.count)).sum());
        let s = &self.store.stats;
        use std::sync::atomic::Ordering::Relaxed;
        Metrics::catch_up(&m.store_commits, s.commits.load(Relaxed));
        Metrics::catch_up(&m.store_events, s.events.load(Relaxed));
        Metrics::catch_up(&m.store_snapshots, s.snapshots.load(Relaxed));
        m.render()
    }
}

/// `GET /api/v1/status`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StatusView {
    /// This server's hostid, `TYPE:VALUE`.
    pub hostid: String,
    pub role: Role,
    pub server_status: ServerStatus,
    pub pair_status: Option<PairStatus>,
    /// A cluster member: `operational`, `partially_operational` or `not_operational`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_status: Option<ClusterStatus>,
    /// The URL of the server that serves this pool's licenses now (this one when it
    /// serves, else the partner it sends clients to).
    pub served_by: Option<String>,
    pub pair: PairView,
    /// This server's URL as clients reach it (`PUBLIC_URL`).
    pub public_url: Option<String>,
    /// Main: the backup's URL handed to clients.
    pub backup_uri: Option<String>,
    /// Backup: its main's URL (`LICENSING_MAIN_URI`).
    pub main_uri: Option<String>,
    pub backoffice: BackofficeStatus,
    pub rights: RightsSummary,
    pub trust: TrustView,
    /// Leases held now.
    pub leases: usize,
    /// Clients waiting in line for a seat, by feature (absent: none); who they are is
    /// the operator's `GET /api/v1/admin/usage`.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub queued: std::collections::BTreeMap<String, usize>,
    /// A cluster member: the cluster as it sees it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterView>,
    /// The last change applied.
    pub journal_seq: u64,
    /// The last change on disk.
    pub durable_seq: u64,
    /// `LEASE_DURATION`, in seconds.
    pub lease_duration_secs: u64,
    /// When this process started (Unix time, seconds).
    pub started_at: i64,
    /// This server's version.
    pub version: &'static str,
}

/// The pair as this server sees it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PairView {
    pub server_status: ServerStatus,
    pub pair_status: Option<PairStatus>,
    /// Whether this server grants, renews and returns leases now.
    pub serving: bool,
    /// Main: how it sees its backup.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<Link>,
    /// Main: when the backup last answered (Unix time, seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backup_last_seen: Option<i64>,
    /// Backup: when the main was last heard (Unix time, seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub main_last_heard: Option<i64>,
    /// Backup: serving alone since (it took over) (Unix time, seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active_since: Option<i64>,
    /// Backup: when the failover maintenance interval ends (Unix time, seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maintenance_ends_at: Option<i64>,
    /// Main: its backup was dropped; backup: it left the pair.
    pub detached: bool,
    /// Why it was detached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detached_reason: Option<String>,
    /// The history of this server's copy of the pool.
    pub history: Uuid,
    /// Main: the last change the backup acknowledged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicated_seq: Option<u64>,
}

/// This server's standing in the chain of trust.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TrustView {
    /// The ID of this server's own key, which signs every grant.
    pub key_id: String,
    /// Until when the back office's binding of that key lets this server grant, in Unix
    /// seconds; absent without a binding (nothing is granted: `SERVER_NOT_BOUND`).
    pub bound_until: Option<i64>,
    /// Until when the rights held may be served without a newer answer, in Unix seconds
    /// (then `RIGHTS_EXPIRED`).
    pub serve_until: Option<i64>,
    /// A pair's server: where the pair's secret comes from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pair_secret: Option<PairSecretSource>,
}

/// Where the pair's secret comes from.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PairSecretSource {
    /// `PAIR_TOKEN`.
    Configured,
    /// The back office's answer.
    Backoffice,
    /// None yet: the pair has no link.
    None,
}

/// The rights this server holds.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RightsSummary {
    /// Rights (line items) held.
    pub rights: usize,
    /// Features (pools) they make.
    pub features: usize,
    /// Seats licensed now, all features.
    pub seats: u64,
    /// Seats held now, all features.
    pub in_use: u64,
    /// When the rights last changed, (Unix time, seconds); absent before the first answer.
    pub updated_at: Option<i64>,
    /// The earliest expiry among features still valid (Unix time, seconds).
    pub next_expiry: Option<i64>,
    /// Features whose every right has expired.
    pub expired_features: usize,
}
