//! Usage reports at run time: the serving server feeds its [`Meter`] from the lease
//! operations (under the state lock, in the order they were applied), a ticker closes the
//! intervals that ended and makes an event of them ([`Event::UsageClosed`]: durable,
//! replicated to the backup, merged at a failback), and the poller reports the closed
//! intervals the back office has not acknowledged yet.
//!
//! Only the server that owns the pool counts: a main or standalone server, or a backup
//! that took over (it hands what it counted back with the pool), or the member of a
//! cluster that serves (leads). A cluster's closed intervals are a command of the cluster
//! ([`crate::cluster::machine::Command::UsageClosed`]), so every member holds them; the
//! leader's poller reports them, and once the back office answered, a second command
//! ([`crate::cluster::machine::Command::UsageReported`]) takes them out of every member's
//! set: a new leader reports only what was not acknowledged. The open interval lives in
//! the leader's memory: what a leader killed counted of it is lost (a leader that stops
//! or loses its leadership commits it first, when it still can).

use std::collections::BTreeSet;
use std::sync::Weak;
use std::time::Duration;

use shared::capability::{UsageInterval, UsageKey};
use shared::lease::CheckoutRequest;

use super::{Service, now_ms};
use crate::domain::usage::Asker;
use crate::domain::{Event, FeatureKey, LeaseKind, Millis, State};
use crate::error::ServiceError;

/// How often the ticker looks for intervals that ended.
pub const TICK: Duration = Duration::from_secs(1);

/// The most intervals one report carries (the rest go with the next ones, at once): the
/// back office takes at most this many, in a body of at most 64 KiB.
pub const REPORT_MAX: usize = shared::capability::MAX_REPORTED_INTERVALS;

impl Service {
    /// Whether this server's pool is its own to count: not a standby copy of its main's.
    fn owns_pool(&self, st: &State) -> bool {
        match &self.cluster {
            Some(c) => c.serving().is_ok(),
            None => self.cfg.role != shared::capability::Role::Backup || st.active_since.is_some(),
        }
    }

    /// A client joined the line for a seat (under the state lock): the interval's
    /// `queued`.
    pub(super) fn meter_queued(&self, st: &State, req: &CheckoutRequest, now: Millis) {
        if !self.owns_pool(st) {
            return;
        }
        if let Some(key) = st.pool_of(&req.feature, req.version.as_deref()) {
            self.meter.lock().queued(&key, now);
        }
    }

    /// A seat granted to a client in line, lease `id` (under the state lock, after the
    /// grant applied): a grant like any, which also ends that client's denial window.
    pub(super) fn meter_queue_grant(&self, st: &State, id: &uuid::Uuid, now: Millis) {
        if !self.owns_pool(st) {
            return;
        }
        if let Some(r) = st.lease(id) {
            let key = FeatureKey {
                feature: r.feature.clone(),
                version: r.version.clone(),
            };
            let who = Asker {
                client_id: &r.client_id,
                user: &r.user,
                host: &r.host,
            };
            self.meter_granted(st, &key, r.kind, who, now);
        }
    }

    /// A grant of pool `key` to `who`, and the pool's level after it.
    fn meter_granted(
        &self,
        st: &State,
        key: &FeatureKey,
        kind: LeaseKind,
        who: Asker<'_>,
        now: Millis,
    ) {
        let mut m = self.meter.lock();
        m.grant(key, now, kind, who);
        m.level(key, now, st.in_use(key), st.count_at(key, now));
    }

    /// A granted checkout of pool `key` (under the state lock, after the grant applied).
    pub(super) fn meter_grant(
        &self,
        st: &State,
        key: &FeatureKey,
        kind: LeaseKind,
        req: &CheckoutRequest,
        now: Millis,
    ) {
        if !self.owns_pool(st) {
            return;
        }
        self.meter_granted(st, key, kind, asker(req), now);
    }

    /// A checkout refused by the pool's rules (under the state lock): counted for the
    /// pool it asked for, when the server has one (a feature it does not license is not
    /// a usage figure).
    pub(super) fn meter_denial(
        &self,
        st: &State,
        req: &CheckoutRequest,
        err: &ServiceError,
        now: Millis,
    ) {
        if !self.owns_pool(st) {
            return;
        }
        if let Some(key) = st.pool_of(&req.feature, req.version.as_deref()) {
            self.meter
                .lock()
                .deny(&key, now, err.code().as_str(), asker(req));
        }
    }

    /// Seats in use changed (a return, a release, expiries): `key`'s pool, or every pool.
    pub(super) fn meter_levels(&self, st: &State, key: Option<&FeatureKey>, now: Millis) {
        if !self.owns_pool(st) {
            return;
        }
        let mut m = self.meter.lock();
        match key {
            Some(key) => m.level(key, now, st.in_use(key), st.count_at(key, now)),
            None => {
                for key in st.pool_keys() {
                    m.level(key, now, st.in_use(key), st.count_at(key, now));
                }
            }
        }
    }

    /// The ticker's step: closes the intervals that ended by `now` into an event.
    pub fn close_usage(&self, now: Millis) {
        let mut st = self.state.lock();
        if !self.owns_pool(&st) {
            return;
        }
        // A main taking its backup's changes back counts no seats until it serves again.
        if self.serving_of(&st, now) == crate::pair::Serving::Serving {
            self.meter_levels(&st, None, now);
        }
        let intervals = self.meter.lock().close(now);
        self.keep_closed(&mut st, intervals);
    }

    /// Everything counted so far, open intervals as the part served, into an event (under
    /// the state lock): the server stops serving its pool (a backup hands it back, a
    /// server stops).
    pub(super) fn flush_usage(&self, st: &mut State, now: Millis) {
        if !self.owns_pool(st) {
            return;
        }
        let intervals = self.meter.lock().flush(now);
        self.keep_closed(st, intervals);
    }

    fn keep_closed(&self, st: &mut State, intervals: Vec<UsageInterval>) {
        if intervals.is_empty() {
            return;
        }
        if self.cluster.is_some() {
            // Committed to the cluster by the ticker ([`Service::commit_usage`]).
            self.usage_uncommitted.lock().extend(intervals);
            return;
        }
        let ev = Event::UsageClosed { intervals };
        let seq = st.apply(&ev);
        self.store.submit_nowait(seq, ev);
    }

    /// The closed intervals the back office has not acknowledged (by `acked`), oldest
    /// first, at most [`REPORT_MAX`]; `acked` loses what the state no longer keeps.
    pub fn usage_to_report(&self, acked: &mut BTreeSet<UsageKey>) -> Vec<UsageInterval> {
        let st = self.state.lock();
        // A cluster's intervals are reported by the member that serves.
        if self.cluster.as_ref().is_some_and(|c| c.serving().is_err()) {
            return Vec::new();
        }
        acked.retain(|k| st.usage.contains_key(k));
        st.usage
            .iter()
            .filter(|(k, _)| !acked.contains(*k))
            .take(REPORT_MAX)
            .map(|(_, i)| i.clone())
            .collect()
    }
}

impl Service {
    /// Whether a closed interval is not in `acked`.
    pub fn usage_pending(&self, acked: &BTreeSet<UsageKey>) -> bool {
        if self.cluster.as_ref().is_some_and(|c| c.serving().is_err()) {
            return false;
        }
        self.state.lock().usage.keys().any(|k| !acked.contains(k))
    }

    /// A cluster member that serves commits the intervals its meter closed (kept for the
    /// next try when the cluster does not commit them now).
    pub async fn commit_usage(&self) {
        let Some(c) = &self.cluster else {
            return;
        };
        let intervals = std::mem::take(&mut *self.usage_uncommitted.lock());
        if intervals.is_empty() {
            return;
        }
        let n = intervals.len();
        let cmd = crate::cluster::machine::Command::UsageClosed {
            intervals: intervals.clone(),
        };
        match c.propose(cmd).await {
            Ok(_) => tracing::debug!(intervals = n, "usage intervals committed to the cluster"),
            Err(e) => {
                tracing::debug!(error = %e, intervals = n, "usage intervals not committed yet");
                let mut held = self.usage_uncommitted.lock();
                let later = std::mem::replace(&mut *held, intervals);
                held.extend(later);
            }
        }
    }

    /// The back office acknowledged `keys` (it answered a report that carried them): a
    /// cluster member that serves takes them out of the cluster's set, so that no member
    /// reports them again.
    pub async fn usage_acknowledged(&self, keys: Vec<UsageKey>) {
        let Some(c) = &self.cluster else {
            return;
        };
        if keys.is_empty() || c.serving().is_err() {
            return;
        }
        let cmd = crate::cluster::machine::Command::UsageReported { keys };
        if let Err(e) = c.propose(cmd).await {
            // This member's poller does not send them again; a new leader does, once, and
            // the back office keeps each once.
            tracing::debug!(error = %e, "the back office's acknowledgement not committed yet");
        }
    }
}

fn asker(req: &CheckoutRequest) -> Asker<'_> {
    Asker {
        client_id: &req.client_id,
        user: req.user.as_deref().unwrap_or_default(),
        host: req.host.as_deref().unwrap_or_default(),
    }
}

/// Closes usage intervals every [`TICK`] until the service is gone.
pub(super) async fn ticker(svc: Weak<Service>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(svc) = svc.upgrade() else {
            return;
        };
        svc.close_usage(now_ms());
        svc.commit_usage().await;
    }
}
