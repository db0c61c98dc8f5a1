//! Leases: checkout, renew, return and an operator's release, each decided under the
//! state lock and answered once durable; lease tokens (HMAC-SHA256 of the lease ID with a
//! key kept in the state, so a restarted server or a backup fed the same changes verifies
//! tokens it did not issue); expiry of leases not renewed in time.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use shared::capability::Role;
use shared::lease::{CheckoutRequest, FeatureInfo, Lease, LeaseInfo};
use uuid::Uuid;

use super::{Service, fmt_time, now_ms};
use crate::domain::{
    CheckoutAsk, Denied, Event, LeaseRecord, MAX_SEATS_PER_CHECKOUT, Millis, State,
};
use crate::error::ServiceError;
use crate::pair::Serving;
use crate::store;

impl Service {
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
}

/// Checks a checkout request's fields (before anything is locked).
pub fn validate_checkout(req: &CheckoutRequest) -> Result<(), ServiceError> {
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

pub(super) fn key_of(state: &State) -> Result<Option<Hmac<Sha256>>, ServiceError> {
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
#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::ServiceConfig;
    use crate::service::tests::{service, store_at};
    use shared::HostId;

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
        let (state, store) = store_at(dir.path());
        assert_eq!(state.lease_count(), 2);
        let cfg = ServiceConfig::standalone(HostId::parse("string:unit").unwrap(), 60_000);
        let svc = Service::start(cfg, state, store, None).await.unwrap();
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
