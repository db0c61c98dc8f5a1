//! The service: the pool's state, its store, the pair and the back-office contact behind
//! a few locks; what the HTTP handlers, the poller and the replicator call.
//!
//! Every change follows the same path: under the state lock, decide (pure domain), apply
//! to the in-memory state and queue the event to the store (in sequence order); release
//! the lock; wait until the event is durable (and, on a main with a backup in sync, until
//! the backup holds it); answer. Returns (and expiries) alone do not wait: losing one in a
//! crash keeps a seat held a little longer, never hands it out twice (see
//! [`Service::return_lease`]).
//!
//! The parts: [`leases`] (checkout, renew, return, release, tokens, signed grants,
//! expiry), [`rights`] (the back office's verified answers: rights, binding, the pair's
//! secret; the usage report), [`pair`] (who serves, replication, takeover, failback,
//! detach), [`status`] (what `GET /api/v1/status` and `/metrics` show), [`peer`] (the
//! HTTP client for the other server of the pair), [`member`] (the same operations as a
//! member of a three-member cluster: proposed to the cluster, decided by its state
//! machine, answered once a majority holds them, the grants signed by the member),
//! [`usage`] (the usage reports: counted, closed into events, reported).
//!
//! Rights enter the state only verified ([`crate::domain::RightsCheck`]): from the back
//! office through [`Service::take_answer`], from the pair partner through
//! [`Service::apply_replicated`], [`Service::install_snapshot`] and
//! [`Service::take_back`], each of which verifies them first and refuses (or, for a
//! failback, leaves out) what does not verify; on a cluster member, from the cluster's
//! log and snapshots, verified by its state machine ([`crate::cluster::sm`]).
//!
//! ## Locks
//!
//! - `state` (`Mutex<State>`): the pool, the durable truth; every decision is made under
//!   it, and events reach the store in the order they were applied.
//! - `pair` (`Mutex<PairRuntime>`): what is known of the other server now (not durable).
//! - `lease_key` ([`LeaseKey`], an `RwLock`): the key lease tokens are signed with;
//!   replaced only under `state`, when a copy of the main's state arrives or is merged
//!   (in a cluster, by the state machine, when the key is committed or a snapshot
//!   installed). Signing takes no other lock, so it may be done with `state` held.
//! - `backup_uri` (`RwLock`): the backup's URL handed to clients; changed only under
//!   `state`.
//! - `backoffice` (`Mutex<BackofficeStatus>`): the poller's contact, on its own.
//! - `meter` (`Mutex<Meter>`): the usage counted; taken only under `state`, alone.
//! - `sessions` (`Mutex<Sessions>`): the operators' full session; on its own.
//! - `repl` (a `watch` channel): how far the backup acknowledged, for waiting clients.
//! - the identity's binding and pair secret (`RwLock`s in [`Identity`]): replaced by the
//!   poller alone.
//!
//! Order: `state` first, then any of `pair`, `lease_key`, `backup_uri`, `repl`, the
//! binding; those are never held together, and none is held while taking `state`.
//! `backoffice` is never held with another. No lock is held across an `.await`. Grants
//! are signed after the state lock is released.

pub mod leases;
pub mod member;
pub mod options;
pub mod pair;
pub mod peer;
pub mod queue;
pub mod rights;
pub mod session;
pub mod status;
pub mod usage;

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use parking_lot::{Mutex, RwLock};
use shared::HostId;
use shared::capability::Role;
use tokio::sync::watch;
use uuid::Uuid;

use crate::cluster::Cluster;
pub use crate::domain::fmt_time;
use crate::domain::usage::Meter;
use crate::domain::{Event, Millis, State};
use crate::error::ServiceError;
use crate::identity::Identity;
use crate::lease_key::LeaseKey;
use crate::metrics::Metrics;
use crate::pair::Link;
use crate::store::{self, Store};

pub use pair::{Position, Replication};
pub use peer::Peer;
pub use rights::{AnswerOutcome, PollOutcome, RightsChange};
pub use status::{
    BackofficeStatus, Contact, PairSecretSource, PairView, RightsSummary, StatusView, TrustView,
};

use pair::{PairRuntime, effective_backup_uri};

pub fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// What the service needs to know about itself.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub hostid: HostId,
    pub role: Role,
    pub lease_ms: i64,
    /// This server's URL for clients (`served_by`).
    pub public_url: Option<String>,
    /// `LICENSING_BACKUP_URI` (main).
    pub backup_uri: Option<String>,
    /// `LICENSING_MAIN_URI` (backup).
    pub main_uri: Option<String>,
    pub backoffice_url: String,
    /// Backup: how long the main may be silent before it takes over.
    pub failover_timeout_ms: i64,
    /// Backup: the longest it serves alone (`FAILOVER_MAINTENANCE_INTERVAL`).
    pub maintenance_ms: i64,
    /// `LICENSING_OPTIONS_FILE`.
    pub options_file: Option<std::path::PathBuf>,
    /// `QUEUE_MAX_WAIT`: the longest a checkout may wait in line.
    pub queue_max_ms: i64,
    /// `USAGE_INTERVAL`: the length of a usage report's interval.
    pub usage_interval_ms: i64,
    /// `USAGE_RETRY_WINDOW`: how long a denied client has to get a seat before its denial
    /// is a true denial.
    pub usage_retry_ms: i64,
    /// `ADMIN_SESSION_IDLE`, in milliseconds.
    pub admin_session_idle_ms: i64,
}

impl ServiceConfig {
    /// A standalone server's configuration (tests, tools).
    pub fn standalone(hostid: HostId, lease_ms: i64) -> ServiceConfig {
        ServiceConfig {
            hostid,
            role: Role::Standalone,
            lease_ms,
            public_url: None,
            backup_uri: None,
            main_uri: None,
            backoffice_url: String::new(),
            failover_timeout_ms: 1_000,
            maintenance_ms: 21 * 86_400_000,
            options_file: None,
            queue_max_ms: 3_600_000,
            usage_interval_ms: 300_000,
            usage_retry_ms: 60_000,
            admin_session_idle_ms: 30 * 60_000,
        }
    }
}

pub struct Service {
    pub cfg: ServiceConfig,
    hostid_str: String,
    /// Shared with the cluster's state machine in a cluster member.
    state: Arc<Mutex<State>>,
    store: Store,
    /// Signs lease tokens; `None` on a backup that has no copy of its main's pool yet.
    lease_key: Arc<LeaseKey>,
    pub metrics: Metrics,
    backoffice: Mutex<BackofficeStatus>,
    started_at: i64,
    pair: Mutex<PairRuntime>,
    /// The backup's URL handed to clients (main): configured, changed or dropped.
    backup_uri: RwLock<Option<String>>,
    repl: watch::Sender<Replication>,
    /// The other server of the pair; `None` for a standalone server.
    peer: Option<Peer>,
    /// This server's key, binding and pair secret.
    identity: Arc<Identity>,
    /// A member of a three-member cluster: every change goes through it.
    cluster: Option<Arc<Cluster>>,
    /// Operators' requests to poll the back office now.
    poll_now: rights::PollNow,
    /// Woken when the line changes (a seat granted from it, a wait ended): queued
    /// checkouts held open look again.
    queue_changed: tokio::sync::Notify,
    /// Set when the server stops: queued checkouts are no longer held open.
    queue_stopping: std::sync::atomic::AtomicBool,
    /// A cluster member's line may be owed a seat now (a return, a release, a client
    /// left): [`member::line_server`] looks at once.
    line_due: tokio::sync::Notify,
    /// What the serving server counts for its usage reports ([`usage`]).
    meter: Mutex<Meter>,
    /// The full administration session ([`session`]).
    sessions: Mutex<crate::admin_session::Sessions>,
    /// A cluster member's closed intervals not committed to the cluster yet.
    usage_uncommitted: Mutex<Vec<shared::capability::UsageInterval>>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service").field("cfg", &self.cfg).finish()
    }
}

impl Service {
    /// Takes the recovered state (its rights verified by the load) and its store; creates
    /// the lease key on first start. `peer` reaches the other server of the pair (`None`
    /// for a standalone server).
    pub async fn start(
        cfg: ServiceConfig,
        mut state: State,
        store: Store,
        peer: Option<Peer>,
        identity: Arc<Identity>,
    ) -> Result<Arc<Service>, ServiceError> {
        // A main's copy as it stands before this start changes anything (the earliest
        // such point since its backup was last compared: see `hold_restart_point`).
        let restart_point = if cfg.role == Role::Main {
            let now = crate::store::RestartPoint {
                history: state.history,
                seq: state.seq,
            };
            Some(store.hold_restart_point(now).map_err(|e| {
                ServiceError::Unavailable(format!("could not keep the restart point: {e}"))
            })?)
        } else {
            None
        };
        // A main or standalone server starts its own history; a backup's comes from its
        // main.
        if cfg.role != Role::Backup {
            if state.lease_key.is_none() {
                let key = URL_SAFE_NO_PAD.encode(shared::random_bytes::<32>());
                let ev = Event::LeaseKeyCreated { key };
                let seq = state.apply(&ev);
                store::acked(store.submit(seq, ev)).await?;
            }
            if state.history.is_nil() {
                let ev = Event::HistoryStarted {
                    history: Uuid::new_v4(),
                };
                let seq = state.apply(&ev);
                store::acked(store.submit(seq, ev)).await?;
            }
        }
        // A main acknowledges alone until its backup is in sync.
        if cfg.role == Role::Main && state.alone_from.is_none() {
            let ev = Event::WentAlone {
                at: now_ms(),
                from_seq: state.seq + 2,
            };
            let seq = state.apply(&ev);
            store::acked(store.submit(seq, ev)).await?;
        }
        let svc = Self::assemble(
            cfg,
            Arc::new(Mutex::new(state)),
            store,
            peer,
            identity,
            None,
        )?;
        svc.pair.lock().restart_point = restart_point;
        tokio::spawn(compactor(Arc::downgrade(&svc)));
        tokio::spawn(usage::ticker(Arc::downgrade(&svc)));
        Ok(svc)
    }

    /// A member of a three-member cluster: its pool is the cluster's state machine's
    /// (the key and history come from the cluster's first leader); `store` only holds
    /// the data directory's lock. Its grants are signed with its own key and binding.
    pub fn start_member(
        cfg: ServiceConfig,
        cluster: Arc<Cluster>,
        store: Store,
        identity: Arc<Identity>,
    ) -> Result<Arc<Service>, ServiceError> {
        let svc = Self::assemble(cfg, cluster.state(), store, None, identity, Some(cluster))?;
        // The leader counts usage and commits the intervals it closes to the cluster.
        tokio::spawn(usage::ticker(Arc::downgrade(&svc)));
        Ok(svc)
    }

    fn assemble(
        cfg: ServiceConfig,
        state: Arc<Mutex<State>>,
        store: Store,
        peer: Option<Peer>,
        identity: Arc<Identity>,
        cluster: Option<Arc<Cluster>>,
    ) -> Result<Arc<Service>, ServiceError> {
        let (lease_key, backup_uri) = {
            let st = state.lock();
            let key = match &cluster {
                // Its state machine keeps it as the cluster's pool changes.
                Some(c) => c.lease_key(),
                None => Arc::new(LeaseKey::of(&st)?),
            };
            (key, effective_backup_uri(&cfg, &st))
        };
        let pair = PairRuntime {
            recovering: cfg.role == Role::Main && backup_uri.is_some(),
            restart_point: None,
            link: if backup_uri.is_some() {
                Link::Unknown
            } else {
                Link::None
            },
            backup_last_seen: None,
            // Silence is counted from the start: a backup restarted while its main is
            // down takes over after the failover timeout.
            last_heard: Some(now_ms()),
            synced: false,
        };
        let backoffice = BackofficeStatus {
            url: cfg.backoffice_url.clone(),
            state: Contact::NotContacted,
            since: Some(shared::now_unix()),
            last_attempt_at: None,
            last_success_at: None,
            last_error: None,
            poll_interval_secs: None,
            next_attempt_at: None,
            link_up: false,
        };
        let meter = Meter::new(
            cfg.hostid.clone(),
            cfg.usage_interval_ms,
            cfg.usage_retry_ms,
        );
        Ok(Arc::new(Service {
            meter: Mutex::new(meter),
            sessions: Mutex::new(crate::admin_session::Sessions::new(
                cfg.admin_session_idle_ms,
            )),
            hostid_str: cfg.hostid.to_string(),
            cfg,
            state,
            store,
            lease_key,
            metrics: Metrics::new(),
            backoffice: Mutex::new(backoffice),
            started_at: shared::now_unix(),
            pair: Mutex::new(pair),
            backup_uri: RwLock::new(backup_uri),
            repl: watch::Sender::new(Replication::default()),
            peer,
            identity,
            cluster,
            poll_now: rights::PollNow::new(),
            queue_changed: tokio::sync::Notify::new(),
            queue_stopping: std::sync::atomic::AtomicBool::new(false),
            line_due: tokio::sync::Notify::new(),
            usage_uncommitted: Mutex::new(Vec::new()),
        }))
    }

    /// The cluster this server is a member of, if any.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.as_ref()
    }

    /// Hands the store a copy of the state to snapshot: taken under the lock, so it holds
    /// exactly the events queued so far, and cheap (the leases are shared, copy on write).
    fn compact(&self) {
        let st = self.state.lock();
        self.store.compact(st.frozen());
    }

    /// This server's key, binding and pair secret.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The durable event stream (for replication to a backup).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<store::Record> {
        self.store.subscribe()
    }

    /// A copy of the current state (for a full resynchronisation of a backup).
    pub fn snapshot(&self) -> State {
        self.state.lock().clone()
    }

    /// Waits for everything queued to be durable and stops the store's writer (and a
    /// cluster member's raft node).
    pub async fn shutdown(&self) {
        // What was counted of the open intervals is kept (the part served until now);
        // a cluster's leader commits it to the cluster before its raft node stops.
        {
            let mut st = self.state.lock();
            self.flush_usage(&mut st, now_ms());
        }
        if let Some(c) = &self.cluster {
            self.commit_usage().await;
            c.shutdown().await;
        }
        let _ = store::acked(self.store.barrier()).await;
        self.store.shutdown();
    }
}

/// Answers the store's requests for a snapshot copy until the store or the service stops.
async fn compactor(svc: std::sync::Weak<Service>) {
    let Some(mut wanted) = svc.upgrade().map(|s| s.store.compaction_wanted()) else {
        return;
    };
    while wanted.changed().await.is_ok() {
        match svc.upgrade() {
            Some(s) => s.compact(),
            None => return,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use shared::capability::{CapabilityClaims, ISSUER};
    use shared::grant::BindingClaims;
    use shared::signing::{Signer, Verifier};

    /// The back office of the unit tests: one producer key for the whole test binary.
    pub fn producer() -> &'static Signer {
        static P: std::sync::OnceLock<Signer> = std::sync::OnceLock::new();
        P.get_or_init(Signer::generate)
    }

    pub fn unit() -> HostId {
        HostId::parse("string:unit").unwrap()
    }

    /// `string:unit`'s identity, with a key of its own kept in `dir`.
    pub fn identity(dir: &std::path::Path) -> Arc<Identity> {
        Arc::new(Identity::new(
            unit(),
            crate::identity::load_or_create_key(dir).unwrap(),
            Verifier::from_key(&producer().verifying_key()),
            None,
            Some(dir),
        ))
    }

    pub fn store_at(dir: &std::path::Path) -> (State, Store) {
        let opts = store::StoreOptions {
            rights: Some(identity(dir).rights_check().clone()),
            ..store::StoreOptions::default()
        };
        let (state, store, _) = store::open(dir, opts).unwrap();
        (state, store)
    }

    /// A capability answer for `string:unit` with `count` seats of `cad`, binding `key`.
    pub fn claims(count: u32, key: &str) -> CapabilityClaims {
        let mut c = crate::domain::rights::tests::claims("string:unit", None, count);
        c.binding = Some(
            BindingClaims {
                iss: ISSUER.into(),
                sub: c.sub.clone(),
                key: key.to_owned(),
                pair: None,
                iat: c.iat,
                exp: c.serve_until,
            }
            .sign(producer()),
        );
        c
    }

    /// Signs `claims` as the back office and hands them to `svc` as its poller would.
    pub async fn answer(svc: &Service, claims: CapabilityClaims) -> AnswerOutcome {
        let token = producer().sign(&claims);
        svc.take_answer(&token, claims).await.unwrap()
    }

    /// A standalone server on the store in `dir`, as it starts (no answer taken yet).
    pub async fn started(dir: &std::path::Path) -> Arc<Service> {
        let (state, store) = store_at(dir);
        let cfg = ServiceConfig::standalone(unit(), 60_000);
        Service::start(cfg, state, store, None, identity(dir))
            .await
            .unwrap()
    }

    /// A standalone server in `dir` with `count` seats of `cad`.
    pub async fn service(dir: &std::path::Path, count: u32) -> Arc<Service> {
        let svc = started(dir).await;
        let key = svc.identity().public_key();
        answer(&svc, claims(count, &key)).await;
        svc
    }
}
