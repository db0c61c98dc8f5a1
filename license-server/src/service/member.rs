//! The client and operator operations of a member of a three-member cluster: each is a
//! command proposed to the cluster ([`crate::cluster::machine`]), decided and applied by
//! every member in log order, and answered once a majority holds it durably. Tokens are
//! checked here first; answers are built as a standalone server builds them: the grant
//! signed by this member's own key, with this member's binding, and no lease longer than
//! that binding or the pool's rights' `serve_until` (the leader proposes the lease's
//! length, so every member applies the same).
//!
//! The line of waiting clients too: a queued checkout is a checkout command that takes a
//! place when no seat is free, leaving is a command, and while this member serves,
//! [`line_server`] proposes serving the line whenever a seat is owed to it (a return, a
//! release, an expiry, new rights: looked at on each such change here and every
//! [`LINE_TICK`]), so that a new leader serves the line it inherited at once.

use std::sync::Arc;
use std::time::Duration;

use shared::lease::{CheckoutRequest, Lease, LeaseInfo};
use tokio::sync::watch;
use uuid::Uuid;

use super::leases::pool_key;
use super::queue::Step;
use super::{Service, now_ms};
use crate::cluster::Cluster;
use crate::cluster::machine::{Command, Outcome, QueueAsk};
use crate::domain::{Denied, Holder, LeaseRecord};
use crate::error::ServiceError;
use crate::identity::Binding;

/// How often the serving member looks whether the line is owed a seat or a wait ended
/// (besides at once after a return, a release or a client leaving).
pub const LINE_TICK: Duration = Duration::from_millis(100);

impl Service {
    async fn commit(&self, c: &Cluster, cmd: Command) -> Result<Outcome, ServiceError> {
        c.propose(cmd)
            .await
            .inspect_err(|e| self.metrics.deny(e.code()))
    }

    fn lease_of(
        &self,
        outcome: Outcome,
        feature: &str,
    ) -> Result<(LeaseRecord, bool), ServiceError> {
        match outcome {
            Outcome::Lease { lease, renewed } => Ok((lease, renewed)),
            Outcome::Denied { denied } => Err(self.denied(denied, feature)),
            other => Err(unexpected(&other)),
        }
    }

    /// This member serves, holds a valid binding and rights within their `serve_until`:
    /// the binding and the longest lease it may grant now (as a standalone server).
    fn grantable_member(
        &self,
        c: &Cluster,
        now: i64,
    ) -> Result<(Arc<Binding>, i64, i64), ServiceError> {
        c.serving().inspect_err(|e| self.metrics.deny(e.code()))?;
        let st = self.state.lock();
        self.grantable_locked(&st, now)
            .inspect_err(|e| self.metrics.deny(e.code()))
    }

    /// The checkout command for `req` at `at`: `lease_token`, a token the client showed,
    /// which (like its secret) gets it its own live lease or place in line back — the
    /// command carries the lease or place it proves, never the token.
    fn checkout_command(
        &self,
        req: &CheckoutRequest,
        lease_token: Option<&str>,
        at: i64,
        lease_ms: i64,
        queue: Option<QueueAsk>,
    ) -> Command {
        let borrow_ms = super::leases::borrow_ms(req);
        let shown = lease_token.and_then(|t| {
            let st = self.state.lock();
            let places = st
                .queue()
                .iter()
                .filter(|e| e.client_id == req.client_id && e.feature == req.feature)
                .map(|e| e.id);
            st.client_lease_ids(&req.client_id, &req.feature)
                .into_iter()
                .chain(places)
                .find(|id| self.token_matches(id, t))
        });
        Command::Checkout {
            feature: req.feature.clone(),
            version: req.version.clone(),
            count: req.count,
            client_id: req.client_id.clone(),
            holder: req
                .client_secret
                .as_ref()
                .map_or(Holder::NONE, |s| Holder::of_secret(s.expose())),
            shown,
            at,
            lease_ms,
            lease_id: Uuid::new_v4(),
            granted_by: self.hostid_str.clone(),
            borrow_ms,
            queue,
        }
    }

    pub(super) async fn checkout_in_cluster(
        &self,
        c: &Cluster,
        req: &CheckoutRequest,
        lease_token: Option<&str>,
    ) -> Result<Lease, ServiceError> {
        let at = now_ms();
        let (binding, lease_ms, room_ms) = self.grantable_member(c, at)?;
        let lease_ms =
            super::leases::lease_length(lease_ms, room_ms, super::leases::borrow_ms(req));
        let cmd = self.checkout_command(req, lease_token, at, lease_ms, None);
        let (lease, renewed) = self
            .lease_of(self.commit(c, cmd).await?, &req.feature)
            .inspect_err(|e| self.meter_denial(&self.state.lock(), req, e, at))?;
        if renewed {
            self.metrics.renewals.inc();
        } else {
            self.metrics.grants.inc();
            self.meter_grant(&self.state.lock(), &pool_key(&lease), lease.kind, req, at);
        }
        Ok(self.lease_view(&lease, &binding))
    }

    /// One look at a queued checkout on the member that serves: its place if it holds
    /// one, else a checkout that takes a place when no seat is free (`had_place`: it held
    /// one while it waited, so it picks its seat up or its wait is over).
    pub(super) async fn queue_step_in_cluster(
        &self,
        c: &Cluster,
        req: &CheckoutRequest,
        secs: u64,
        lease_token: Option<&str>,
        had_place: bool,
    ) -> Result<Step, ServiceError> {
        let at = now_ms();
        let (binding, lease_ms, room_ms) = self.grantable_member(c, at)?;
        {
            let st = self.state.lock();
            let ask = super::leases::ask_of(req);
            let holds = |id: &Uuid| lease_token.is_some_and(|t| self.token_matches(id, t));
            if let Some(e) = st.own_queue_entry(&ask, holds) {
                if e.until <= at {
                    return Err(self.wait_over(&e.feature, e.count, Some(e.until)));
                }
                let place = self.place(&st, e, "waiting for a seat".into());
                return Ok(Step::Waiting(place, e.until));
            }
        }
        let queue = (!had_place).then(|| QueueAsk {
            id: Uuid::new_v4(),
            until: at.saturating_add(i64::try_from(secs).unwrap_or(0).saturating_mul(1000)),
        });
        let lease_ms = super::leases::lease_length(lease_ms, room_ms, None);
        let cmd = self.checkout_command(req, lease_token, at, lease_ms, queue);
        match self.commit(c, cmd).await? {
            Outcome::Lease { lease, renewed } => {
                if renewed {
                    self.metrics.renewals.inc();
                } else {
                    self.metrics.grants.inc();
                    self.meter_grant(&self.state.lock(), &pool_key(&lease), lease.kind, req, at);
                }
                Ok(Step::Granted(self.lease_view(&lease, &binding)))
            }
            Outcome::Queued {
                entry,
                joined,
                reason,
            } => {
                let st = self.state.lock();
                let reason = match reason {
                    Some(d) => self.denial(d, &req.feature).to_string(),
                    None => "waiting for a seat".into(),
                };
                let place = self.place(&st, &entry, reason);
                if !joined {
                    return Ok(Step::Waiting(place, entry.until));
                }
                self.meter_queued(&st, req, at);
                drop(st);
                self.metrics.queue_joins.inc();
                tracing::info!(
                    feature = %place.feature,
                    client = %place.client_id,
                    position = place.position,
                    until = %super::fmt_time(place.queued_until),
                    "a client joined the line"
                );
                Ok(Step::Joined(place))
            }
            // Its place lapsed or was left while it waited: the wait is over.
            Outcome::Denied {
                denied: Denied::NoSeat { .. },
            } if had_place => Err(self.wait_over(&req.feature, req.count, None)),
            Outcome::Denied { denied } => {
                let e = self.denied(denied, &req.feature);
                self.meter_denial(&self.state.lock(), req, &e, at);
                Err(e)
            }
            other => Err(unexpected(&other)),
        }
    }

    /// Leaves the line through the cluster (the place's token checked by the caller).
    pub(super) async fn leave_queue_in_cluster(
        &self,
        c: &Cluster,
        id: &Uuid,
    ) -> Result<(), ServiceError> {
        let cmd = Command::QueueLeave {
            id: *id,
            at: now_ms(),
        };
        match self.commit(c, cmd).await? {
            Outcome::Done => {
                self.metrics.queue_leaves.inc();
                self.queue_changed.notify_waiters();
                self.line_due.notify_one();
                Ok(())
            }
            Outcome::Denied { denied } => Err(self.denied(denied, "")),
            other => Err(unexpected(&other)),
        }
    }

    /// While this member serves: lapses the places whose wait ended and grants the seats
    /// the line is owed, as one command, when there is anything to do.
    async fn serve_line(&self, c: &Cluster) {
        if c.serving().is_err() {
            return;
        }
        let at = now_ms();
        let cmd = {
            let st = self.state.lock();
            if st.queue().is_empty() {
                return;
            }
            let lease_ms = self.grantable_locked(&st, at).ok().map(|(_, ms, _)| ms);
            let lapsed = st.next_queue_deadline().is_some_and(|d| d <= at);
            let owed =
                lease_ms.is_some_and(|ms| st.next_queue_grant(at, ms, &self.hostid_str).is_some());
            if !lapsed && !owed {
                return;
            }
            Command::ServeQueue {
                at,
                lease_ms,
                granted_by: self.hostid_str.clone(),
            }
        };
        match c.propose(cmd).await {
            Ok(Outcome::Served { granted, lapsed }) => {
                let st = self.state.lock();
                for id in &granted {
                    if let Some(l) = st.lease(id) {
                        tracing::info!(feature = %l.feature, client = %l.client_id, lease = %id, "a seat granted to a client in line");
                    }
                    self.meter_queue_grant(&st, id, at);
                }
                drop(st);
                if !lapsed.is_empty() {
                    tracing::info!(
                        places = lapsed.len(),
                        "clients' waits in line ended without a seat"
                    );
                }
                self.metrics.queue_grants.inc_by(granted.len() as u64);
                self.metrics.queue_lapses.inc_by(lapsed.len() as u64);
                if !granted.is_empty() || !lapsed.is_empty() {
                    self.queue_changed.notify_waiters();
                }
            }
            Ok(other) => tracing::warn!(outcome = ?other, "serving the line answered otherwise"),
            Err(e) => tracing::debug!(error = %e, "could not serve the line yet"),
        }
    }

    pub(super) async fn renew_in_cluster(
        &self,
        c: &Cluster,
        id: &Uuid,
        token: Option<&str>,
    ) -> Result<Lease, ServiceError> {
        c.serving().inspect_err(|e| self.metrics.deny(e.code()))?;
        self.authorize(id, token)?;
        let at = now_ms();
        let (binding, lease_ms, _) = self.grantable_member(c, at)?;
        let feature = self
            .state
            .lock()
            .lease(id)
            .map(|l| l.feature)
            .unwrap_or_default();
        let cmd = Command::Renew {
            id: *id,
            at,
            lease_ms,
        };
        let (lease, _) = self.lease_of(self.commit(c, cmd).await?, &feature)?;
        self.metrics.renewals.inc();
        Ok(self.lease_view(&lease, &binding))
    }

    pub(super) async fn return_in_cluster(
        &self,
        c: &Cluster,
        id: &Uuid,
        token: Option<&str>,
    ) -> Result<(), ServiceError> {
        c.serving().inspect_err(|e| self.metrics.deny(e.code()))?;
        self.authorize(id, token)?;
        let cmd = Command::Return {
            id: *id,
            at: now_ms(),
        };
        match self.commit(c, cmd).await? {
            Outcome::Ended { lease } => {
                self.metrics.returns.inc();
                self.meter_levels(&self.state.lock(), Some(&pool_key(&lease)), now_ms());
                self.line_due.notify_one();
                Ok(())
            }
            Outcome::Denied { denied } => Err(self.denied(denied, "")),
            other => Err(unexpected(&other)),
        }
    }

    pub(super) async fn release_in_cluster(
        &self,
        c: &Cluster,
        id: &Uuid,
    ) -> Result<LeaseInfo, ServiceError> {
        let cmd = Command::Release {
            id: *id,
            at: now_ms(),
        };
        match self.commit(c, cmd).await? {
            Outcome::Ended { lease } => {
                self.metrics.releases.inc();
                self.meter_levels(&self.state.lock(), Some(&pool_key(&lease)), now_ms());
                self.line_due.notify_one();
                tracing::info!(lease = %id, feature = %lease.feature, client = %lease.client_id, "lease released by an operator");
                Ok(lease.info())
            }
            Outcome::Denied { denied } => Err(self.denied(denied, "")),
            other => Err(unexpected(&other)),
        }
    }
}

/// Serves the cluster's line while this member serves (see the module's comment), until
/// `stop`.
pub async fn line_server(svc: Arc<Service>, mut stop: watch::Receiver<bool>) {
    let Some(c) = svc.cluster().cloned() else {
        return;
    };
    loop {
        tokio::select! {
            () = svc.line_due.notified() => {}
            () = tokio::time::sleep(LINE_TICK) => {}
            _ = stop.changed() => return,
        }
        svc.serve_line(&c).await;
    }
}

fn unexpected(outcome: &Outcome) -> ServiceError {
    ServiceError::Internal(format!("the cluster answered {outcome:?}"))
}
