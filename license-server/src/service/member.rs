//! The client and operator operations of a member of a three-member cluster: each is a
//! command proposed to the cluster ([`crate::cluster::machine`]), decided and applied by
//! every member in log order, and answered once a majority holds it durably. Tokens are
//! checked here first; answers are built as a standalone server builds them: the grant
//! signed by this member's own key, with this member's binding, and no lease longer than
//! that binding or the pool's rights' `serve_until` (the leader proposes the lease's
//! length, so every member applies the same).

use std::sync::Arc;

use shared::lease::{CheckoutRequest, Lease, LeaseInfo};
use uuid::Uuid;

use super::leases::key_of;
use super::{Service, now_ms};
use crate::cluster::Cluster;
use crate::cluster::machine::{Command, Outcome};
use crate::domain::{Holder, LeaseRecord};
use crate::error::ServiceError;
use crate::identity::Binding;

impl Service {
    /// The lease key comes from the cluster's first leader: taken from the pool as soon
    /// as it is there (a standalone server has it from the start).
    pub(super) fn ensure_lease_key(&self) {
        if self.cluster.is_none() || self.lease_key.read().is_some() {
            return;
        }
        let key = key_of(&self.state.lock());
        if let Ok(Some(k)) = key {
            *self.lease_key.write() = Some(k);
        }
    }

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

    /// `lease_token`: a lease token the client showed, which (like its secret) gets it
    /// its own live lease back; the command carries the lease it proves, never the token.
    pub(super) async fn checkout_in_cluster(
        &self,
        c: &Cluster,
        req: &CheckoutRequest,
        lease_token: Option<&str>,
    ) -> Result<Lease, ServiceError> {
        let at = now_ms();
        let (binding, lease_ms, room_ms) = self.grantable_member(c, at)?;
        let borrow_ms = super::leases::borrow_ms(req);
        let shown = lease_token.and_then(|t| {
            self.state
                .lock()
                .client_lease_ids(&req.client_id, &req.feature)
                .into_iter()
                .find(|id| self.token_matches(id, t))
        });
        let cmd = Command::Checkout {
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
            lease_ms: super::leases::lease_length(lease_ms, room_ms, borrow_ms),
            lease_id: Uuid::new_v4(),
            granted_by: self.hostid_str.clone(),
            borrow_ms,
        };
        let (lease, renewed) = self.lease_of(self.commit(c, cmd).await?, &req.feature)?;
        if renewed {
            self.metrics.renewals.inc();
        } else {
            self.metrics.grants.inc();
        }
        Ok(self.lease_view(&lease, &binding))
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
            Outcome::Ended { .. } => {
                self.metrics.returns.inc();
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
                tracing::info!(lease = %id, feature = %lease.feature, client = %lease.client_id, "lease released by an operator");
                Ok(lease.info())
            }
            Outcome::Denied { denied } => Err(self.denied(denied, "")),
            other => Err(unexpected(&other)),
        }
    }
}

fn unexpected(outcome: &Outcome) -> ServiceError {
    ServiceError::Internal(format!("the cluster answered {outcome:?}"))
}
