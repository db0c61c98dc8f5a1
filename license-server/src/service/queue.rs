//! The queue at run time: a checkout with `queue_secs` joins the line when no seat is
//! free (`202`, its place), repeats to pick its seat up (held until granted or for
//! [`QUEUE_POLL_SECS`]), or leaves; seats are granted from the line whenever they free
//! (a return, a release, an expiry, the reaper's pass after rights or options changed
//! or a takeover), in the domain's order ([`crate::domain::State::next_queue_grant`]).
//!
//! A seat granted from the line is a lease like any other, queued to the store in order
//! without waiting; its client is told only when it picks it up, by a checkout that finds
//! its own lease and renews it, answered once that renewal is durable (and on the backup)
//! — and with it the grant before it.
//!
//! A cluster member keeps the same line through the cluster ([`super::member`]): joining,
//! leaving and serving it are commands every member decides alike, and the leader
//! proposes serving it whenever a seat is owed to it.

use std::sync::atomic::Ordering;
use std::time::Duration;

use shared::capability::Role;
use shared::lease::{CheckoutRequest, Lease, QUEUE_POLL_SECS, QueuePlace, QueuedInfo};
use uuid::Uuid;

use super::leases::{ask_of, borrow_ms};
use super::{Service, fmt_time, now_ms};
use crate::domain::{Denied, Event, Millis, QueueEntry, State};
use crate::error::ServiceError;
use crate::store;

/// What a checkout answers: the lease, or the client's place in line.
#[derive(Debug)]
pub enum Checkout {
    Granted(Box<Lease>),
    Queued(Box<QueuePlace>),
}

/// What a queued checkout's look decided, once durable.
enum Decided {
    Joined(Box<QueuePlace>),
    Leased(Box<crate::domain::LeaseRecord>),
}

/// One look at a queued checkout.
pub(super) enum Step {
    Granted(Lease),
    /// Joined the line just now.
    Joined(QueuePlace),
    /// Already in line: its place, and when its wait ends.
    Waiting(QueuePlace, Millis),
}

impl Service {
    /// A checkout that may wait in line (`queue_secs`); without it, [`Service::checkout`].
    pub async fn checkout_or_queue(
        &self,
        req: &CheckoutRequest,
        lease_token: Option<&str>,
    ) -> Result<Checkout, ServiceError> {
        let Some(secs) = req.queue_secs else {
            return Ok(Checkout::Granted(Box::new(
                self.checkout(req, lease_token).await?,
            )));
        };
        if let Err(e) = super::leases::validate_checkout(req).and_then(|()| self.check_wait(req)) {
            self.metrics.deny(e.code());
            return Err(e);
        }
        let poll_until = tokio::time::Instant::now() + Duration::from_secs(QUEUE_POLL_SECS);
        let mut had_place = false;
        loop {
            let changed = self.queue_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            match self.queue_step(req, secs, lease_token, had_place).await? {
                Step::Granted(l) => return Ok(Checkout::Granted(Box::new(l))),
                Step::Joined(p) => return Ok(Checkout::Queued(Box::new(p))),
                Step::Waiting(p, until) => {
                    let now = tokio::time::Instant::now();
                    if now >= poll_until || self.queue_stopping.load(Ordering::Relaxed) {
                        return Ok(Checkout::Queued(Box::new(p)));
                    }
                    had_place = true;
                    // Look again when the line changes, or just after the wait ends.
                    let left = Duration::from_millis(u64::try_from(until - now_ms()).unwrap_or(0));
                    let wake = poll_until.min(now + left + Duration::from_millis(5));
                    tokio::select! {
                        () = &mut changed => {}
                        () = tokio::time::sleep_until(wake) => {}
                    }
                }
            }
        }
    }

    /// The server stops: queued checkouts held open answer their place now (their
    /// clients repeat them, at the partner or once this server is back).
    pub fn stop_holding_queued(&self) {
        self.queue_stopping.store(true, Ordering::Relaxed);
        self.queue_changed.notify_waiters();
    }

    /// `queue_secs` within `QUEUE_MAX_WAIT`, and not with a borrow.
    fn check_wait(&self, req: &CheckoutRequest) -> Result<(), ServiceError> {
        let max = u64::try_from(self.cfg.queue_max_ms / 1000).unwrap_or(0);
        match req.queue_secs {
            Some(s) if !(1..=max).contains(&s) => Err(ServiceError::validation(
                "queue_secs",
                format!(
                    "queue_secs must be between 1 and {max} (this server's QUEUE_MAX_WAIT, {})",
                    humantime::format_duration(Duration::from_secs(max))
                ),
            )),
            Some(_) if req.borrow_secs.is_some() => Err(ServiceError::validation(
                "queue_secs",
                "a borrow does not wait in line: send borrow_secs or queue_secs, not both",
            )),
            _ => Ok(()),
        }
    }

    async fn queue_step(
        &self,
        req: &CheckoutRequest,
        secs: u64,
        lease_token: Option<&str>,
        had_place: bool,
    ) -> Result<Step, ServiceError> {
        if let Some(c) = self.cluster() {
            return self
                .queue_step_in_cluster(c, req, secs, lease_token, had_place)
                .await;
        }
        let ask = ask_of(req);
        let holds = |id: &Uuid| lease_token.is_some_and(|t| self.token_matches(id, t));
        let now = now_ms();
        // Decided under the lock; waited for (durable, on the backup) after it.
        let (granted, seq, rx, binding, joined) = {
            let mut st = self.state.lock();
            let (binding, lease_ms, room_ms) = self.ready_to_grant_locked(&mut st, now)?;
            if let Some(e) = st.own_queue_entry(&ask, holds) {
                if e.until <= now {
                    return Err(self.wait_over(&e.feature, e.count, Some(e.until)));
                }
                let place = self.place(&st, e, "waiting for a seat".into());
                return Ok(Step::Waiting(place, e.until));
            }
            let decided = st.decide_checkout(
                &ask,
                now,
                super::leases::lease_length(lease_ms, room_ms, borrow_ms(req)),
                Uuid::new_v4(),
                &self.hostid_str,
                holds,
            );
            let (ev, joined) = match decided {
                Ok(ev) => (ev, None),
                // Its place lapsed or was left while it waited: the wait is over.
                Err(Denied::NoSeat { .. }) if had_place => {
                    return Err(self.wait_over(&req.feature, req.count, None));
                }
                Err(d) if had_place => return Err(self.denied(d, &req.feature)),
                Err(d) => {
                    let reason = self.denial(d.clone(), &req.feature).to_string();
                    let until = now.saturating_add(i64::try_from(secs).unwrap_or(0) * 1000);
                    let ev = st
                        .decide_queue_join(&ask, now, until, Uuid::new_v4(), d)
                        .map_err(|d| {
                            let e = self.denied(d, &req.feature);
                            self.meter_denial(&st, req, &e, now);
                            e
                        })?;
                    (ev, Some(reason))
                }
            };
            let seq = st.apply(&ev);
            match &ev {
                Event::QueueJoined { .. } => self.meter_queued(&st, req, now),
                Event::LeaseGranted { lease } => self.meter_queue_grant(&st, &lease.id, now),
                _ => {}
            }
            let joined = match (&ev, joined) {
                (Event::QueueJoined { entry }, Some(reason)) => st
                    .queue_entry(&entry.id)
                    .map(|e| Decided::Joined(Box::new(self.place(&st, e, reason)))),
                (Event::LeaseGranted { lease: l }, None) => {
                    st.lease(&l.id).map(|r| Decided::Leased(Box::new(r)))
                }
                (Event::LeaseRenewed { id, .. }, None) => {
                    st.lease(id).map(|r| Decided::Leased(Box::new(r)))
                }
                (other, _) => {
                    return Err(ServiceError::Internal(format!(
                        "a checkout decided {}",
                        other.kind()
                    )));
                }
            };
            let granted = matches!(ev, Event::LeaseGranted { .. });
            (granted, seq, self.store.submit(seq, ev), binding, joined)
        };
        store::acked(rx).await?;
        self.replicated(seq).await;
        match joined {
            Some(Decided::Joined(place)) => {
                self.metrics.queue_joins.inc();
                tracing::info!(
                    feature = %place.feature,
                    client = %place.client_id,
                    position = place.position,
                    until = %fmt_time(place.queued_until),
                    "a client joined the line"
                );
                Ok(Step::Joined(*place))
            }
            Some(Decided::Leased(rec)) => {
                if granted {
                    self.metrics.grants.inc();
                } else {
                    self.metrics.renewals.inc();
                }
                Ok(Step::Granted(self.lease_view(&rec, &binding)))
            }
            None => Err(ServiceError::Internal("the lease or place vanished".into())),
        }
    }

    /// The client's place, as it is told it.
    pub(super) fn place(&self, st: &State, e: &QueueEntry, reason: String) -> QueuePlace {
        QueuePlace {
            queue_id: e.id,
            token: self.sign_lease(&e.id),
            feature: e.feature.clone(),
            version: e.version.clone(),
            count: e.count,
            client_id: e.client_id.clone(),
            position: st.queue_position(&e.id).unwrap_or(1) as u32,
            queued: st.queued(&e.feature) as u32,
            queued_at: e.queued_at / 1000,
            queued_until: e.until / 1000,
            reason,
            served_by: self.cfg.public_url.clone(),
            backup_uri: self.backup_uri(),
            main_uri: match self.cfg.role {
                Role::Backup => self.cfg.main_uri.clone(),
                _ => None,
            },
        }
    }

    /// A client's wait in line ended (at `until`, when known) without a seat.
    pub(super) fn wait_over(
        &self,
        feature: &str,
        asked: u32,
        until: Option<Millis>,
    ) -> ServiceError {
        let at = until.map_or_else(String::new, |u| format!(" at {}", fmt_time(u / 1000)));
        let err = ServiceError::NoLicense {
            message: format!(
                "no license of `{feature}` available: the wait in line ended{at} without a \
                 free seat"
            ),
            next_free_at: None,
            asked,
            free: 0,
            count: 0,
        };
        self.metrics.deny(err.code());
        err
    }

    /// Leaves the line (`DELETE /api/v1/queue/{id}`, the place's token).
    pub async fn leave_queue(&self, id: &Uuid, token: Option<&str>) -> Result<(), ServiceError> {
        if let Some(c) = self.cluster() {
            c.serving().inspect_err(|e| self.metrics.deny(e.code()))?;
        } else {
            self.refuse_if_not_serving()?;
        }
        let Some(token) = token else {
            let e = ServiceError::Unauthorized(
                "send the place's token as `Authorization: Bearer <token>`".into(),
            );
            self.metrics.deny(e.code());
            return Err(e);
        };
        if !self.token_matches(id, token) {
            let e = ServiceError::Forbidden("the token is not the token of this place".into());
            self.metrics.deny(e.code());
            return Err(e);
        }
        if let Some(c) = self.cluster() {
            return self.leave_queue_in_cluster(c, id).await;
        }
        let now = now_ms();
        let (seq, rx) = {
            let mut st = self.state.lock();
            self.ensure_serving_locked(&st, now)
                .inspect_err(|e| self.metrics.deny(e.code()))?;
            let ev = st
                .decide_queue_leave(id, now)
                .map_err(|d| self.denied(d, ""))?;
            let seq = st.apply(&ev);
            let rx = self.store.submit(seq, ev);
            self.serve_queue_locked(&mut st, now);
            (seq, rx)
        };
        store::acked(rx).await?;
        self.replicated(seq).await;
        self.metrics.queue_leaves.inc();
        self.queue_changed.notify_waiters();
        Ok(())
    }

    /// Lapses places whose wait ended and grants the seats the line is owed (called with
    /// the state lock held, by a server that serves). Returns the seats granted.
    pub(super) fn serve_queue_locked(&self, st: &mut State, now: Millis) -> usize {
        if st.queue().is_empty() {
            return 0;
        }
        let lapsed = st.lapsed_in_queue(now);
        for ev in &lapsed {
            if let Event::QueueLeft { id, .. } = ev
                && let Some(e) = st.queue_entry(id)
            {
                tracing::info!(feature = %e.feature, client = %e.client_id, "a client's wait in line ended without a seat");
            }
            let seq = st.apply(ev);
            self.store.submit_nowait(seq, ev.clone());
        }
        self.metrics.queue_lapses.inc_by(lapsed.len() as u64);
        let mut granted = 0;
        if let Ok((_, lease_ms, _)) = self.grantable_locked(st, now) {
            while granted < crate::domain::MAX_QUEUED
                && let Some(ev) = st.next_queue_grant(now, lease_ms, &self.hostid_str)
            {
                let id = match &ev {
                    Event::LeaseGranted { lease } => {
                        tracing::info!(feature = %lease.feature, client = %lease.client_id, lease = %lease.id, "a seat granted to a client in line");
                        Some(lease.id)
                    }
                    _ => None,
                };
                let seq = st.apply(&ev);
                if let Some(id) = id {
                    self.meter_queue_grant(st, &id, now);
                }
                self.store.submit_nowait(seq, ev);
                granted += 1;
            }
        }
        self.metrics.queue_grants.inc_by(granted as u64);
        if granted > 0 || !lapsed.is_empty() {
            self.queue_changed.notify_waiters();
        }
        granted
    }

    /// Every client in line, in order, as operators see them.
    pub fn queued(&self) -> Vec<QueuedInfo> {
        let st = self.state.lock();
        queued_infos(&st)
    }
}

/// The line as operators see it.
pub fn queued_infos(st: &State) -> Vec<QueuedInfo> {
    st.queue()
        .iter()
        .map(|e| QueuedInfo {
            queue_id: e.id,
            feature: e.feature.clone(),
            version: e.version.clone(),
            count: e.count,
            client_id: e.client_id.clone(),
            user: Some(e.user.clone()).filter(|u| !u.is_empty()),
            host: Some(e.host.clone()).filter(|h| !h.is_empty()),
            position: st.queue_position(&e.id).unwrap_or(1) as u32,
            queued_at: e.queued_at / 1000,
            queued_until: e.until / 1000,
        })
        .collect()
}
