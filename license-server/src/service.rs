//! The service: the state behind one lock, the store, lease tokens and what handlers call.
//!
//! Every change follows the same path: under the state lock, decide (pure domain), apply
//! to the in-memory state and queue the event to the store (in sequence order); release
//! the lock; wait until the event is durable; answer.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use sha2::Sha256;
use shared::HostId;
use shared::capability::{
    CapabilityClaims, FeatureUsage, PairStatus, Role, ServerReport, ServerStatus,
};
use shared::lease::{CheckoutRequest, FeatureInfo, Lease, LeaseInfo};
use uuid::Uuid;

use tokio::sync::watch;

use crate::domain::{
    CheckoutAsk, Denied, Event, LeaseRecord, MAX_SEATS_PER_CHECKOUT, MergeReport, Millis, State,
};
use crate::error::ServiceError;
use crate::metrics::Metrics;
use crate::pair::{self, Link, PairFacts, Serving};
use crate::store::{self, Store};

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
        }
    }
}

/// How far the backup has acknowledged the main's changes (main only).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Replication {
    /// The last sequence number the backup holds durably.
    pub acked: u64,
    /// While true, a change is acknowledged to its client only once the backup holds it.
    pub in_sync: bool,
}

/// The run-time side of the pair (what is not in the durable state).
#[derive(Debug, Clone)]
struct PairRuntime {
    /// Main: taking the backup's changes before it serves again (also at start, until
    /// the backup has been asked).
    recovering: bool,
    link: Link,
    /// Main: when the backup last answered.
    backup_last_seen: Option<Millis>,
    /// Backup: when the main was last heard (changes, snapshot, heartbeat).
    last_heard: Option<Millis>,
    /// Backup: its copy had everything the main had when last heard.
    synced: bool,
}

/// Where a server's copy of the pool stands, for its partner (`GET /api/v1/pair/position`).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Position {
    pub hostid: String,
    pub role: Role,
    pub history: Uuid,
    pub seq: u64,
    /// A backup serving in place of its main (it took over).
    pub active: bool,
    /// Removed from the pair.
    pub detached: bool,
    pub server_status: ServerStatus,
    pub pair_status: Option<PairStatus>,
}

/// The state of our contact with the back office, shown in the status.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
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

#[derive(Debug, Clone, Serialize)]
pub struct BackofficeStatus {
    pub url: String,
    pub state: Contact,
    /// Since when `state` holds (Unix seconds).
    pub since: Option<i64>,
    pub last_attempt_at: Option<i64>,
    pub last_success_at: Option<i64>,
    pub last_error: Option<String>,
    pub poll_interval_secs: Option<u64>,
    pub next_attempt_at: Option<i64>,
}

/// How a verified capability answer changed the rights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RightsChange {
    Unchanged,
    Changed,
    /// Issued before the answer the current rights came from: refused.
    Older,
}

pub struct Service {
    pub cfg: ServiceConfig,
    hostid_str: String,
    state: Mutex<State>,
    store: Store,
    /// Signs lease tokens; `None` on a backup that has no copy of its main's pool yet.
    lease_key: RwLock<Option<Hmac<Sha256>>>,
    pub metrics: Metrics,
    backoffice: Mutex<BackofficeStatus>,
    started_at: i64,
    pair: Mutex<PairRuntime>,
    /// The backup's URL handed to clients (main): configured, changed or dropped.
    backup_uri: RwLock<Option<String>>,
    repl: watch::Sender<Replication>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service").field("cfg", &self.cfg).finish()
    }
}

impl Service {
    /// Takes the recovered state and its store; creates the lease key on first start.
    pub async fn start(
        cfg: ServiceConfig,
        mut state: State,
        store: Store,
    ) -> Result<Arc<Service>, ServiceError> {
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
        let backup_uri = effective_backup_uri(&cfg, &state);
        // A main acknowledges alone until its backup is in sync.
        if cfg.role == Role::Main && state.alone_from.is_none() {
            let ev = Event::WentAlone {
                at: now_ms(),
                from_seq: state.seq + 2,
            };
            let seq = state.apply(&ev);
            store::acked(store.submit(seq, ev)).await?;
        }
        let lease_key = key_of(&state)?;
        let pair = PairRuntime {
            recovering: cfg.role == Role::Main && backup_uri.is_some(),
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
        };
        let svc = Arc::new(Service {
            hostid_str: cfg.hostid.to_string(),
            cfg,
            state: Mutex::new(state),
            store,
            lease_key: RwLock::new(lease_key),
            metrics: Metrics::new(),
            backoffice: Mutex::new(backoffice),
            started_at: shared::now_unix(),
            pair: Mutex::new(pair),
            backup_uri: RwLock::new(backup_uri),
            repl: watch::Sender::new(Replication::default()),
        });
        tokio::spawn(compactor(Arc::downgrade(&svc)));
        Ok(svc)
    }

    /// Hands the store a copy of the state to snapshot: taken under the lock, so it holds
    /// exactly the events queued so far, and cheap (the leases are shared, copy on write).
    fn compact(&self) {
        let st = self.state.lock();
        self.store.compact(st.frozen());
    }

    /// The durable event stream (for replication to a backup).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<store::Committed>> {
        self.store.subscribe()
    }

    /// A copy of the current state (for a full resynchronisation of a backup).
    pub fn snapshot(&self) -> State {
        self.state.lock().clone()
    }

    /// Waits for everything queued to be durable and stops the store's writer.
    pub async fn shutdown(&self) {
        let _ = store::acked(self.store.barrier()).await;
        self.store.shutdown();
    }

    // ---- the pair ----

    fn facts(&self, st: &State) -> PairFacts {
        let p = self.pair.lock();
        PairFacts {
            role: self.cfg.role,
            recovering: p.recovering,
            link: p.link,
            active_since: st.active_since,
            has_copy: !st.history.is_nil(),
            detached: self.cfg.role == Role::Backup && st.detached.is_some(),
            last_heard: p.last_heard,
            synced: p.synced,
        }
    }

    fn serving_of(&self, st: &State, now: Millis) -> Serving {
        pair::serving(&self.facts(st), now, self.cfg.maintenance_ms)
    }

    /// Whether this server serves, and the pair status it sees.
    fn statuses(&self, facts: &PairFacts, now: Millis) -> (Serving, Option<PairStatus>) {
        (
            pair::serving(facts, now, self.cfg.maintenance_ms),
            pair::pair_status(facts, now, self.cfg.failover_timeout_ms),
        )
    }

    /// [`Service::statuses`] now, from one look at the state.
    pub fn serving_now(&self) -> (Serving, Option<PairStatus>) {
        let st = self.state.lock();
        self.statuses(&self.facts(&st), now_ms())
    }

    /// Whether client requests are served now; called with the state lock held, so a
    /// takeover or a handback is never half-seen by a request.
    fn ensure_serving_locked(&self, st: &State, now: Millis) -> Result<(), ServiceError> {
        match self.serving_of(st, now) {
            Serving::Serving => Ok(()),
            Serving::MaintenanceExpired => Err(ServiceError::MaintenanceExpired(format!(
                "this backup has served alone since {} and the failover maintenance interval \
                 is over; bring the main back",
                fmt_time(st.active_since.unwrap_or_default() / 1000)
            ))),
            Serving::Redirect => {
                let other = match self.cfg.role {
                    Role::Backup => self.cfg.main_uri.clone(),
                    _ => self.backup_uri.read().clone(),
                };
                match other {
                    Some(url) => Err(ServiceError::NotServing { serving_url: url }),
                    None => Err(ServiceError::Unavailable(
                        "this server is taking its backup's changes back; retry shortly".into(),
                    )),
                }
            }
        }
    }

    fn refuse_if_not_serving(&self) -> Result<(), ServiceError> {
        let st = self.state.lock();
        self.ensure_serving_locked(&st, now_ms()).inspect_err(|e| {
            self.metrics.deny(e.code());
        })
    }

    /// Waits until the backup holds `seq`, while it is in sync (semi-synchronous
    /// replication: a change is acknowledged to its client only once both servers hold
    /// it). Returns at once when there is no backup in sync.
    async fn replicated(&self, seq: u64) {
        let mut rx = self.repl.subscribe();
        let _ = rx.wait_for(|r| !r.in_sync || r.acked >= seq).await;
    }

    /// The replication watermark (main).
    pub fn replication(&self) -> Replication {
        *self.repl.borrow()
    }

    /// Records the backup's acknowledgement of `acked`; `in_sync` when the backup had
    /// everything that was durable here when the changes were sent.
    pub async fn set_acked(&self, acked: u64, in_sync: bool) {
        self.pair.lock().backup_last_seen = Some(now_ms());
        if in_sync {
            {
                let mut st = self.state.lock();
                if st.alone_from.is_some() {
                    let ev = Event::Rejoined { at: now_ms() };
                    let seq = st.apply(&ev);
                    self.store.submit_nowait(seq, ev);
                }
            }
            self.repl.send_modify(|r| {
                r.acked = acked;
                r.in_sync = true;
            });
            self.set_link(Link::InSync);
        } else {
            self.repl.send_modify(|r| r.acked = acked);
            if let Err(e) = self.go_alone().await {
                tracing::error!(error = %e, "could not record that the backup fell behind");
            }
            self.set_link(Link::CatchingUp);
        }
    }

    /// Records that changes from here on are acknowledged without the backup (durably,
    /// before any waiting client is released), then releases them.
    pub async fn go_alone(&self) -> Result<(), ServiceError> {
        let rx = {
            let mut st = self.state.lock();
            // Only a main acknowledges changes; a backup's journal stays its main's copy.
            if self.cfg.role != Role::Main || st.alone_from.is_some() {
                None
            } else {
                let ev = Event::WentAlone {
                    at: now_ms(),
                    from_seq: self.repl.borrow().acked + 1,
                };
                let seq = st.apply(&ev);
                Some(self.store.submit(seq, ev))
            }
        };
        if let Some(rx) = rx {
            store::acked(rx).await?;
        }
        self.repl
            .send_if_modified(|r| std::mem::replace(&mut r.in_sync, false));
        Ok(())
    }

    /// How the main sees its backup (for the status); use [`Service::go_alone`] first
    /// when the backup stops keeping up.
    pub fn set_link(&self, link: Link) {
        let mut p = self.pair.lock();
        if p.link != link {
            let flicker = matches!(
                (p.link, link),
                (Link::InSync, Link::CatchingUp) | (Link::CatchingUp, Link::InSync)
            );
            if flicker {
                tracing::debug!(from = ?p.link, to = ?link, "link to the backup changed");
            } else {
                tracing::info!(from = ?p.link, to = ?link, "link to the backup changed");
            }
            p.link = link;
        }
    }

    pub fn backup_seen(&self) {
        self.pair.lock().backup_last_seen = Some(now_ms());
    }

    pub fn backup_last_seen(&self) -> Option<Millis> {
        self.pair.lock().backup_last_seen
    }

    pub fn set_recovering(&self, recovering: bool) {
        let mut p = self.pair.lock();
        if p.recovering != recovering {
            if recovering {
                tracing::info!("recovering: taking the backup's changes before serving again");
            } else {
                tracing::info!("serving");
            }
            p.recovering = recovering;
        }
    }

    pub fn recovering(&self) -> bool {
        self.pair.lock().recovering
    }

    /// The backup's URL as handed to clients: `None` when dropped or not configured.
    pub fn backup_uri(&self) -> Option<String> {
        self.backup_uri.read().clone()
    }

    /// This server's copy: history and sequence number (and what it is doing).
    pub fn position(&self) -> Position {
        let st = self.state.lock();
        let facts = self.facts(&st);
        let (serving, pair_status) = self.statuses(&facts, now_ms());
        Position {
            hostid: self.hostid_str.clone(),
            role: self.cfg.role,
            history: st.history,
            seq: st.seq,
            active: st.active_since.is_some(),
            detached: facts.detached,
            server_status: pair::server_status(serving),
            pair_status,
        }
    }

    pub fn history(&self) -> Uuid {
        self.state.lock().history
    }

    /// Whether a standby backup at (`history`, `seq`) holds changes this server must take
    /// in before it overwrites the backup's copy.
    pub fn must_absorb(&self, history: Uuid, seq: u64) -> bool {
        self.state.lock().must_absorb(history, seq)
    }

    pub fn durable_seq(&self) -> u64 {
        self.store
            .stats
            .durable_seq
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Backup: applies changes from the main, in order, durably; heartbeats (no events)
    /// only say the main is alive. `main_seq` is how far the main was when it sent them.
    pub async fn apply_replicated(
        &self,
        history: Uuid,
        events: Vec<store::Committed>,
        main_seq: u64,
    ) -> Result<u64, ServiceError> {
        if self.cfg.role != Role::Backup {
            return Err(ServiceError::RoleConflict(
                "this server is not a backup; it takes no changes from another".into(),
            ));
        }
        let (seq, rx) = {
            let mut st = self.state.lock();
            self.check_follower(&st)?;
            if st.history != history {
                return Err(ServiceError::OutOfSync(format!(
                    "this backup's copy is of another history ({}); send a snapshot",
                    st.history
                )));
            }
            let mut last = None;
            for c in events {
                if c.seq <= st.seq {
                    continue; // sent again after a lost acknowledgement
                }
                if c.seq != st.seq + 1 {
                    return Err(ServiceError::OutOfSync(format!(
                        "this backup holds up to {}, the changes start at {}",
                        st.seq, c.seq
                    )));
                }
                if let Event::LeaseKeyCreated { .. } = &c.event {
                    st.apply(&c.event);
                    *self.lease_key.write() = key_of(&st)?;
                } else {
                    st.apply(&c.event);
                }
                last = Some(self.store.submit(c.seq, c.event));
            }
            self.heard(st.seq >= main_seq);
            (st.seq, last)
        };
        if let Some(rx) = rx {
            store::acked(rx).await?;
        }
        Ok(seq)
    }

    /// Backup: replaces its copy with the main's whole state.
    pub async fn install_snapshot(&self, mut state: State) -> Result<u64, ServiceError> {
        if self.cfg.role != Role::Backup {
            return Err(ServiceError::RoleConflict(
                "this server is not a backup; it takes no snapshot from another".into(),
            ));
        }
        let (seq, rx) = {
            let mut st = self.state.lock();
            self.check_follower(&st)?;
            state.rebuild_index();
            // What the backup itself was told about its place in the pair stays.
            state.detached = st.detached.clone();
            state.active_since = None;
            *self.lease_key.write() = key_of(&state)?;
            let seq = state.seq;
            *st = state.clone();
            self.heard(true);
            (seq, self.store.reset(state))
        };
        store::acked(rx).await?;
        tracing::info!(seq, "took a full copy of the main's state");
        Ok(seq)
    }

    fn check_follower(&self, st: &State) -> Result<(), ServiceError> {
        if st.active_since.is_some() {
            return Err(ServiceError::RoleConflict(
                "this backup has taken over and serves; take its changes back first (handback)"
                    .into(),
            ));
        }
        if st.detached.is_some() {
            return Err(ServiceError::RoleConflict(
                "this backup was removed from the pair".into(),
            ));
        }
        Ok(())
    }

    fn heard(&self, synced: bool) {
        let mut p = self.pair.lock();
        p.last_heard = Some(now_ms());
        p.synced = synced;
    }

    /// Backup: takes over if the main has been silent for the failover timeout.
    pub async fn take_over_if_due(&self) -> Result<bool, ServiceError> {
        let now = now_ms();
        let rx = {
            let mut st = self.state.lock();
            let facts = self.facts(&st);
            if !pair::should_take_over(&facts, now, self.cfg.failover_timeout_ms) {
                return Ok(false);
            }
            let ev = Event::TookOver {
                at: now,
                history: Uuid::new_v4(),
            };
            let seq = st.apply(&ev);
            tracing::warn!(
                silent_ms = facts.last_heard.map(|t| now - t),
                leases = st.lease_count(),
                seq,
                "the main is silent: this backup takes over and serves the main's pool"
            );
            self.store.submit(seq, ev)
        };
        store::acked(rx).await?;
        self.metrics.takeovers.inc();
        Ok(true)
    }

    /// Backup: the returning main takes the pool back. The backup stops serving at once
    /// (under the state lock, so no request is half-served) and answers with its whole
    /// state once everything it did is durable.
    pub async fn hand_back(&self) -> Result<State, ServiceError> {
        if self.cfg.role != Role::Backup {
            return Err(ServiceError::RoleConflict(
                "this server is not a backup".into(),
            ));
        }
        let now = now_ms();
        let rx = {
            let mut st = self.state.lock();
            // Hearing from the main now: no takeover right after handing back.
            self.heard(false);
            if st.active_since.is_some() {
                let ev = Event::HandedBack { at: now };
                let seq = st.apply(&ev);
                tracing::info!(
                    seq,
                    leases = st.lease_count(),
                    "handing the pool back to the main"
                );
                Some(self.store.submit(seq, ev))
            } else {
                None
            }
        };
        match rx {
            Some(rx) => store::acked(rx).await?,
            None => store::acked(self.store.barrier()).await?,
        }
        Ok(self.snapshot())
    }

    /// Main: serves from the merge of its own state and the backup's (failback).
    pub async fn take_back(&self, backup: &State) -> Result<MergeReport, ServiceError> {
        let (report, rx) = {
            let mut st = self.state.lock();
            let (merged, report) =
                State::merged_for_failback(&st, backup, Uuid::new_v4(), now_ms());
            *self.lease_key.write() = key_of(&merged)?;
            *st = merged.clone();
            (report, self.store.reset(merged))
        };
        store::acked(rx).await?;
        // The backup now follows again: it has to catch up first.
        self.repl.send_modify(|r| r.in_sync = false);
        self.metrics.failbacks.inc();
        Ok(report)
    }

    /// Main: drops its backup (absence limit, operator, or the backup left); backup: leaves
    /// the pair. Durable; clients stop being handed the backup's URL.
    pub async fn detach(&self, reason: &str) -> Result<bool, ServiceError> {
        let rx = {
            let mut st = self.state.lock();
            let ev = match self.cfg.role {
                Role::Backup if st.detached.is_some() => return Ok(false),
                Role::Backup => Event::Detached {
                    at: now_ms(),
                    reason: reason.to_owned(),
                },
                _ if st.backup.dropped => return Ok(false),
                _ => Event::BackupChanged {
                    at: now_ms(),
                    dropped: true,
                    uri: None,
                    reason: reason.to_owned(),
                },
            };
            let seq = st.apply(&ev);
            *self.backup_uri.write() = effective_backup_uri(&self.cfg, &st);
            self.store.submit(seq, ev)
        };
        store::acked(rx).await?;
        self.go_alone().await?;
        self.set_link(Link::None);
        self.set_recovering(false);
        match self.cfg.role {
            Role::Backup => tracing::warn!(reason, "this backup left its pair"),
            _ => tracing::warn!(reason, "the backup was dropped from the pair"),
        }
        Ok(true)
    }

    /// Main: a new address for the backup (and no longer dropped).
    pub async fn set_backup(&self, uri: String) -> Result<(), ServiceError> {
        if self.cfg.role != Role::Main {
            return Err(ServiceError::RoleConflict(
                "only a main has a backup (set BACKUP_SERVER_HOSTID)".into(),
            ));
        }
        let rx = {
            let mut st = self.state.lock();
            let ev = Event::BackupChanged {
                at: now_ms(),
                dropped: false,
                uri: Some(uri.clone()),
                reason: "new address set by an operator".into(),
            };
            let seq = st.apply(&ev);
            *self.backup_uri.write() = effective_backup_uri(&self.cfg, &st);
            self.store.submit(seq, ev)
        };
        store::acked(rx).await?;
        self.go_alone().await?;
        self.set_link(Link::Unknown);
        tracing::info!(backup = %uri, "the backup's address changed");
        Ok(())
    }

    // ---- lease tokens ----

    pub fn sign_lease(&self, id: &Uuid) -> String {
        let Some(mut mac) = self.lease_key.read().clone() else {
            return String::new();
        };
        mac.update(id.as_bytes());
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }

    fn token_matches(&self, id: &Uuid, token: &str) -> bool {
        let Ok(sig) = URL_SAFE_NO_PAD.decode(token.as_bytes()) else {
            return false;
        };
        let Some(mut mac) = self.lease_key.read().clone() else {
            return false;
        };
        mac.update(id.as_bytes());
        mac.verify_slice(&sig).is_ok()
    }

    fn lease_view(&self, r: &LeaseRecord) -> Lease {
        Lease {
            lease_id: r.id,
            token: self.sign_lease(&r.id),
            feature: r.feature.clone(),
            version: r.version.clone(),
            count: r.count,
            client_id: r.client_id.clone(),
            granted_at: r.granted_at / 1000,
            expires_at: r.expires_at / 1000,
            renew_after: (r.renewed_at + self.cfg.lease_ms / 2) / 1000,
            served_by: self.cfg.public_url.clone(),
            backup_uri: self.backup_uri(),
            main_uri: match self.cfg.role {
                Role::Backup => self.cfg.main_uri.clone(),
                _ => None,
            },
        }
    }

    fn denied(&self, d: Denied, feature: &str) -> ServiceError {
        let err = match d {
            Denied::UnknownFeature => {
                ServiceError::NotFound(format!("no feature `{feature}` is licensed on this server"))
            }
            Denied::FeatureExpired { expired_at } => ServiceError::FeatureExpired(format!(
                "the license for `{feature}` expired at {}",
                fmt_time(expired_at / 1000)
            )),
            Denied::FeatureRemoved => ServiceError::NotFound(format!(
                "`{feature}` is no longer licensed on this server; the lease cannot be renewed"
            )),
            Denied::NoSeat {
                next_free_at,
                reason,
            } => ServiceError::NoLicense {
                message: format!("no seat of `{feature}` is free: {reason}"),
                // Round up: the seat is free at that second at the latest.
                next_free_at: next_free_at.map(|ms| (ms + 999) / 1000),
            },
            Denied::UnknownLease => ServiceError::NotFound(
                "no such lease: it expired, was returned, or never existed".into(),
            ),
        };
        self.metrics.deny(err.code());
        err
    }

    /// Frees lapsed leases (called with the lock held).
    fn reap_locked(&self, st: &mut State, now: Millis) -> usize {
        if st.next_expiry().is_none_or(|e| e > now) {
            return 0;
        }
        let events = st.expired(now);
        let n = events.len();
        for ev in events {
            let seq = st.apply(&ev);
            self.store.submit_nowait(seq, ev);
        }
        self.metrics.expirations.inc_by(n as u64);
        n
    }

    /// The reaper's step: frees lapsed leases, returns the next expiry.
    pub fn reap(&self) -> (usize, Option<Millis>) {
        let mut st = self.state.lock();
        let now = now_ms();
        // Only the server that serves expires leases; a standby copy follows its main.
        if self.serving_of(&st, now) != Serving::Serving {
            return (0, None);
        }
        let n = self.reap_locked(&mut st, now);
        if n > 0 {
            tracing::info!(freed = n, "leases expired (not renewed in time)");
        }
        (n, st.next_expiry())
    }

    // ---- client API ----

    pub async fn checkout(&self, req: &CheckoutRequest) -> Result<Lease, ServiceError> {
        if let Err(e) = validate_checkout(req) {
            self.metrics.deny(e.code());
            return Err(e);
        }
        let ask = CheckoutAsk {
            feature: &req.feature,
            version: req.version.as_deref(),
            count: req.count,
            client_id: &req.client_id,
        };
        let now = now_ms();
        let (rec, renewed, seq, rx) = {
            let mut st = self.state.lock();
            self.ensure_serving_locked(&st, now)
                .inspect_err(|e| self.metrics.deny(e.code()))?;
            self.reap_locked(&mut st, now);
            let ev = st
                .decide_checkout(
                    &ask,
                    now,
                    self.cfg.lease_ms,
                    Uuid::new_v4(),
                    &self.hostid_str,
                )
                .map_err(|d| self.denied(d, &req.feature))?;
            let (id, renewed) = match &ev {
                Event::LeaseGranted { lease } => (lease.id, false),
                Event::LeaseRenewed { id, .. } => (*id, true),
                other => {
                    return Err(ServiceError::Internal(format!(
                        "checkout decided {}",
                        other.kind()
                    )));
                }
            };
            let seq = st.apply(&ev);
            let rec = st.lease(&id);
            (rec, renewed, seq, self.store.submit(seq, ev))
        };
        store::acked(rx).await?;
        self.replicated(seq).await;
        let rec = rec.ok_or_else(|| ServiceError::Internal("the lease vanished".into()))?;
        if renewed {
            self.metrics.renewals.inc();
        } else {
            self.metrics.grants.inc();
        }
        Ok(self.lease_view(&rec))
    }

    /// Checks a lease token; tells "no such lease" from "not your lease".
    fn authorize(&self, id: &Uuid, token: Option<&str>) -> Result<(), ServiceError> {
        let Some(token) = token else {
            let e = ServiceError::Unauthorized(
                "send the lease token as `Authorization: Bearer <token>`".into(),
            );
            self.metrics.deny(e.code());
            return Err(e);
        };
        if self.token_matches(id, token) {
            return Ok(());
        }
        let exists = self.state.lock().has_lease(id);
        let e = if exists {
            ServiceError::Forbidden("the token is not the token of this lease".into())
        } else {
            ServiceError::NotFound(format!(
                "no lease {id}: it expired, was returned, or never existed"
            ))
        };
        self.metrics.deny(e.code());
        Err(e)
    }

    pub async fn renew(&self, id: &Uuid, token: Option<&str>) -> Result<Lease, ServiceError> {
        self.refuse_if_not_serving()?;
        self.authorize(id, token)?;
        let now = now_ms();
        let (rec, seq, rx) = {
            let mut st = self.state.lock();
            self.ensure_serving_locked(&st, now)
                .inspect_err(|e| self.metrics.deny(e.code()))?;
            self.reap_locked(&mut st, now);
            let feature = st.lease(id).map(|l| l.feature).unwrap_or_default();
            let ev = st
                .decide_renew(id, now, self.cfg.lease_ms)
                .map_err(|d| self.denied(d, &feature))?;
            let seq = st.apply(&ev);
            let rec = st.lease(id);
            (rec, seq, self.store.submit(seq, ev))
        };
        store::acked(rx).await?;
        self.replicated(seq).await;
        self.metrics.renewals.inc();
        let rec = rec.ok_or_else(|| ServiceError::Internal("the lease vanished".into()))?;
        Ok(self.lease_view(&rec))
    }

    pub async fn return_lease(&self, id: &Uuid, token: Option<&str>) -> Result<(), ServiceError> {
        self.refuse_if_not_serving()?;
        self.authorize(id, token)?;
        let now = now_ms();
        let (seq, rx) = {
            let mut st = self.state.lock();
            self.ensure_serving_locked(&st, now)
                .inspect_err(|e| self.metrics.deny(e.code()))?;
            let ev = st.decide_return(id, now).map_err(|d| self.denied(d, ""))?;
            let seq = st.apply(&ev);
            (seq, self.store.submit(seq, ev))
        };
        store::acked(rx).await?;
        self.replicated(seq).await;
        self.metrics.returns.inc();
        Ok(())
    }

    // ---- operators ----

    pub async fn release(&self, id: &Uuid) -> Result<LeaseInfo, ServiceError> {
        let now = now_ms();
        let (info, seq, rx) = {
            let mut st = self.state.lock();
            self.ensure_serving_locked(&st, now)?;
            let info = st.lease(id).as_ref().map(LeaseRecord::info);
            let ev = st.decide_release(id, now).map_err(|d| self.denied(d, ""))?;
            let seq = st.apply(&ev);
            (info, seq, self.store.submit(seq, ev))
        };
        store::acked(rx).await?;
        self.replicated(seq).await;
        self.metrics.releases.inc();
        let info = info.ok_or_else(|| ServiceError::Internal("the lease vanished".into()))?;
        tracing::info!(lease = %id, feature = %info.feature, client = %info.client_id, "lease released by an operator");
        Ok(info)
    }

    pub fn features(&self) -> Vec<FeatureInfo> {
        self.state.lock().features(now_ms())
    }

    pub fn leases_of(&self, feature: &str) -> Result<Vec<LeaseInfo>, ServiceError> {
        let st = self.state.lock();
        if !st.has_feature(feature) {
            return Err(ServiceError::NotFound(format!(
                "no feature `{feature}` is licensed on this server"
            )));
        }
        Ok(st.leases_of(feature))
    }

    // ---- rights ----

    /// Applies a verified capability answer's rights (durably) unless it is older than
    /// the one the current rights came from.
    pub async fn update_rights(
        &self,
        claims: &CapabilityClaims,
    ) -> Result<RightsChange, ServiceError> {
        let rx = {
            let mut st = self.state.lock();
            if self.cfg.role == Role::Backup && st.active_since.is_none() {
                // A standby copy takes its rights from its main's changes.
                return Ok(RightsChange::Unchanged);
            }
            if claims.iat < st.rights_issued_at {
                return Ok(RightsChange::Older);
            }
            if claims.rights == st.rights && st.rights_updated_at.is_some() {
                return Ok(RightsChange::Unchanged);
            }
            let ev = Event::RightsUpdated {
                rights: claims.rights.clone(),
                at: now_ms(),
                issued_at: claims.iat,
            };
            let seq = st.apply(&ev);
            self.store.submit(seq, ev)
        };
        store::acked(rx).await?;
        Ok(RightsChange::Changed)
    }

    /// Usage and status for the back office.
    pub fn report(&self) -> ServerReport {
        let usage = self
            .features()
            .into_iter()
            .map(|f| FeatureUsage {
                feature: f.feature,
                version: f.version,
                count: f.count,
                in_use: f.in_use,
            })
            .collect();
        let ((serving, pair_status), dropped) = {
            let st = self.state.lock();
            (
                self.statuses(&self.facts(&st), now_ms()),
                self.cfg.role == Role::Main && st.backup.dropped,
            )
        };
        ServerReport {
            server_status: pair::server_status(serving),
            pair_status,
            usage,
            backup_dropped: dropped,
        }
    }

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
        let (features, leases, seq, rights_updated_at, rights_count, pair) = {
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
            (
                st.features(now),
                st.lease_count(),
                st.seq,
                st.rights_updated_at,
                st.rights.len(),
                view,
            )
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
        let served_by = if pair.serving {
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
            served_by,
            pair,
            public_url: self.cfg.public_url.clone(),
            backup_uri: self.backup_uri(),
            main_uri: self.cfg.main_uri.clone(),
            backoffice: self.backoffice(),
            rights,
            leases,
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
        let leases = self.state.lock().lease_count();
        let m = &self.metrics;
        m.leases.set(leases as i64);
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
#[derive(Debug, Clone, Serialize)]
pub struct StatusView {
    pub hostid: String,
    pub role: Role,
    pub server_status: ServerStatus,
    pub pair_status: Option<PairStatus>,
    /// The URL of the server that serves this pool's licenses now (this one when it
    /// serves, else the partner it sends clients to).
    pub served_by: Option<String>,
    pub pair: PairView,
    pub public_url: Option<String>,
    pub backup_uri: Option<String>,
    pub main_uri: Option<String>,
    pub backoffice: BackofficeStatus,
    pub rights: RightsSummary,
    pub leases: usize,
    pub journal_seq: u64,
    pub durable_seq: u64,
    pub lease_duration_secs: u64,
    pub started_at: i64,
    pub version: &'static str,
}

/// The pair as this server sees it.
#[derive(Debug, Clone, Serialize)]
pub struct PairView {
    pub server_status: ServerStatus,
    pub pair_status: Option<PairStatus>,
    /// Whether this server grants, renews and returns leases now.
    pub serving: bool,
    /// Main: how it sees its backup.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<Link>,
    /// Main: when the backup last answered (Unix seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backup_last_seen: Option<i64>,
    /// Backup: when the main was last heard (Unix seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub main_last_heard: Option<i64>,
    /// Backup: serving alone since (it took over).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active_since: Option<i64>,
    /// Backup: when the failover maintenance interval ends.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maintenance_ends_at: Option<i64>,
    /// Main: its backup was dropped; backup: it left the pair.
    pub detached: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detached_reason: Option<String>,
    pub history: Uuid,
    /// Main: the last change the backup acknowledged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicated_seq: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RightsSummary {
    /// Rights (line items) held.
    pub rights: usize,
    pub features: usize,
    pub seats: u64,
    pub in_use: u64,
    /// When the rights last changed (Unix seconds); `None` before the first answer.
    pub updated_at: Option<i64>,
    /// The earliest expiry among features still valid.
    pub next_expiry: Option<i64>,
    pub expired_features: usize,
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

fn validate_checkout(req: &CheckoutRequest) -> Result<(), ServiceError> {
    let name_ok =
        |s: &str| !s.trim().is_empty() && s.len() <= 256 && !s.chars().any(char::is_control);
    if !name_ok(&req.feature) {
        return Err(ServiceError::validation(
            "feature",
            "the feature name must be 1 to 256 printable characters",
        ));
    }
    if let Some(v) = &req.version
        && (v.len() > 64 || v.chars().any(char::is_control))
    {
        return Err(ServiceError::validation(
            "version",
            "the version must be at most 64 printable characters",
        ));
    }
    if !name_ok(&req.client_id) {
        return Err(ServiceError::validation(
            "client_id",
            "client_id must be 1 to 256 printable characters identifying the client",
        ));
    }
    if req.count == 0 || req.count > MAX_SEATS_PER_CHECKOUT {
        return Err(ServiceError::validation(
            "count",
            format!("count must be between 1 and {MAX_SEATS_PER_CHECKOUT}"),
        ));
    }
    Ok(())
}

fn key_of(state: &State) -> Result<Option<Hmac<Sha256>>, ServiceError> {
    let Some(key) = &state.lease_key else {
        return Ok(None);
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(key.as_bytes())
        .map_err(|e| ServiceError::Internal(format!("the stored lease key is damaged: {e}")))?;
    Hmac::<Sha256>::new_from_slice(&bytes)
        .map(Some)
        .map_err(|e| ServiceError::Internal(e.to_string()))
}

/// The backup clients are handed: none once dropped, else the operator's address, else
/// `LICENSING_BACKUP_URI`.
fn effective_backup_uri(cfg: &ServiceConfig, st: &State) -> Option<String> {
    if cfg.role != Role::Main || st.backup.dropped {
        return None;
    }
    st.backup.uri.clone().or_else(|| cfg.backup_uri.clone())
}

/// RFC 3339 for messages.
pub fn fmt_time(unix: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::capability::Right;

    async fn service(dir: &std::path::Path, count: u32) -> Arc<Service> {
        let (state, store, _) = store::open(dir, store::StoreOptions::default()).unwrap();
        let svc = Service::start(
            ServiceConfig::standalone(HostId::parse("string:unit").unwrap(), 60_000),
            state,
            store,
        )
        .await
        .unwrap();
        let now = shared::now_unix();
        let claims = CapabilityClaims {
            iss: "x".into(),
            sub: "string:unit".into(),
            request_id: Uuid::new_v4(),
            iat: now,
            exp: now + 60,
            server_id: "s".into(),
            role: Role::Standalone,
            pair: None,
            poll_interval_secs: 60,
            rights: vec![Right {
                activation_id: "A".into(),
                feature: "cad".into(),
                version: String::new(),
                count,
                starts_at: 0,
                expires_at: None,
            }],
            serve_until: now + 86_400,
            binding: None,
            pair_token: None,
        };
        assert_eq!(
            svc.update_rights(&claims).await.unwrap(),
            RightsChange::Changed
        );
        assert_eq!(
            svc.update_rights(&claims).await.unwrap(),
            RightsChange::Unchanged
        );
        let older = CapabilityClaims {
            iat: now - 10,
            ..claims
        };
        assert_eq!(
            svc.update_rights(&older).await.unwrap(),
            RightsChange::Older
        );
        svc
    }

    fn req(client: &str) -> CheckoutRequest {
        CheckoutRequest {
            feature: "cad".into(),
            version: None,
            count: 1,
            client_id: client.into(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_checkouts_never_exceed_the_count() {
        let dir = tempfile::tempdir().unwrap();
        let svc = service(dir.path(), 10).await;
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let svc = svc.clone();
                tokio::spawn(async move { svc.checkout(&req(&format!("c{i}"))).await })
            })
            .collect();
        let mut ok = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(_) => ok += 1,
                Err(e) => assert_eq!(e.code(), shared::ErrorCode::NoLicenseAvailable),
            }
        }
        assert_eq!(ok, 10);
        assert_eq!(svc.features()[0].in_use, 10);
        svc.shutdown().await;
    }

    #[tokio::test]
    async fn lease_tokens_bind_to_their_lease_and_survive_restart() {
        let dir = tempfile::tempdir().unwrap();
        let svc = service(dir.path(), 2).await;
        let a = svc.checkout(&req("a")).await.unwrap();
        let b = svc.checkout(&req("b")).await.unwrap();
        assert_eq!(
            svc.renew(&a.lease_id, None).await.unwrap_err().code(),
            shared::ErrorCode::Unauthorized
        );
        assert_eq!(
            svc.renew(&a.lease_id, Some(&b.token))
                .await
                .unwrap_err()
                .code(),
            shared::ErrorCode::Forbidden
        );
        assert_eq!(
            svc.return_lease(&Uuid::new_v4(), Some(&a.token))
                .await
                .unwrap_err()
                .code(),
            shared::ErrorCode::NotFound
        );
        svc.renew(&a.lease_id, Some(&a.token)).await.unwrap();
        svc.shutdown().await;
        drop(svc);

        // Reopened: same key, the old token still verifies.
        let (state, store, _) = store::open(dir.path(), store::StoreOptions::default()).unwrap();
        assert_eq!(state.lease_count(), 2);
        let cfg = ServiceConfig::standalone(HostId::parse("string:unit").unwrap(), 60_000);
        let svc = Service::start(cfg, state, store).await.unwrap();
        svc.return_lease(&a.lease_id, Some(&a.token)).await.unwrap();
        assert_eq!(svc.features()[0].in_use, 1);
        svc.shutdown().await;
    }

    #[test]
    fn checkout_validation() {
        let mut r = req("a");
        r.count = 0;
        assert!(validate_checkout(&r).is_err());
        r.count = MAX_SEATS_PER_CHECKOUT + 1;
        assert!(validate_checkout(&r).is_err());
        r.count = 1;
        r.client_id = String::new();
        assert!(validate_checkout(&r).is_err());
        r.client_id = "a".into();
        r.feature = "x\u{0}".into();
        assert!(validate_checkout(&r).is_err());
        assert!(validate_checkout(&req("ok")).is_ok());
    }
}
