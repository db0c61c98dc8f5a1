//! Leases: checkout, renew, return and an operator's release, each decided under the
//! state lock and answered once durable (a return as soon as it is queued: see
//! [`Service::return_lease`]); lease tokens (HMAC-SHA256 of the lease ID with a
//! key kept in the state, so a restarted server or a backup fed the same changes verifies
//! tokens it did not issue); grants signed with this server's key, after the lock is
//! released; expiry of leases not renewed in time.
//!
//! A checkout or renewal is granted only while this server holds a valid binding of its
//! key (else `SERVER_NOT_BOUND`) and its rights are within their `serve_until` (else
//! `RIGHTS_EXPIRED`); no lease ends later than either.

use std::sync::Arc;

use shared::capability::Role;
use shared::grant::GrantClaims;
use shared::lease::{CheckoutRequest, FeatureInfo, Lease, LeaseInfo, MAX_BORROW_SECS, PoolHolders};
use uuid::Uuid;

use super::{Service, fmt_time, now_ms};
use crate::domain::{
    CheckoutAsk, Denied, Event, FeatureKey, Holder, LeaseRecord, MAX_SEATS_PER_CHECKOUT, Millis,
    State,
};
use crate::error::ServiceError;
use crate::identity::Binding;
use crate::options::Who;
use crate::pair::Serving;
use crate::store;

impl Service {
    /// The token of lease or place `id` (empty before the pool has a key: nothing is
    /// granted then). Takes no lock but the key's: called with the state lock held too.
    pub fn sign_lease(&self, id: &Uuid) -> String {
        self.lease_key.sign(id).unwrap_or_default()
    }

    pub(super) fn token_matches(&self, id: &Uuid, token: &str) -> bool {
        self.lease_key.verify(id, token)
    }

    /// The lease as its client sees it, with the grant signed by this server's key and
    /// the binding of that key (called outside the state lock).
    pub(super) fn lease_view(&self, r: &LeaseRecord, binding: &Binding) -> Lease {
        let grant = GrantClaims {
            iss: self.hostid_str.clone(),
            sub: r.client_id.clone(),
            jti: r.id,
            feature: r.feature.clone(),
            version: r.version.clone(),
            count: r.count,
            iat: r.renewed_at / 1000,
            exp: r.expires_at / 1000,
            borrowed: r.kind.borrowed,
        };
        Lease {
            lease_id: r.id,
            token: self.sign_lease(&r.id),
            grant: self.identity.sign_grant(&grant),
            binding: binding.token.clone(),
            feature: grant.feature,
            version: grant.version,
            count: r.count,
            client_id: grant.sub,
            user: Some(r.user.clone()).filter(|u| !u.is_empty()),
            host: Some(r.host.clone()).filter(|h| !h.is_empty()),
            granted_at: r.granted_at / 1000,
            expires_at: grant.exp,
            renew_after: if r.kind.borrowed {
                grant.exp
            } else {
                (r.renewed_at + (r.expires_at - r.renewed_at) / 2) / 1000
            },
            borrowed: r.kind.borrowed,
            overdraft: r.kind.overdraft,
            served_by: self.cfg.public_url.clone(),
            backup_uri: self.backup_uri(),
            main_uri: match self.cfg.role {
                Role::Backup => self.cfg.main_uri.clone(),
                _ => None,
            },
            members: self.cluster().map(|c| c.client_urls()).unwrap_or_default(),
        }
    }

    /// Whether leases may be granted or renewed now (called with the state lock held,
    /// after [`Service::ensure_serving_locked`]): the binding grants are signed under,
    /// how long a lease may last — `LEASE_DURATION`, but never past the binding or the
    /// rights' `serve_until` — and how long until either ends (the most a borrow gets).
    pub(super) fn grantable_locked(
        &self,
        st: &State,
        now: Millis,
    ) -> Result<(Arc<Binding>, i64, i64), ServiceError> {
        let Some(claims) = st.rights.as_ref().and_then(|r| r.claims()) else {
            return Err(ServiceError::NotFound(format!(
                "no feature is licensed on this server: it holds no rights from the back \
                 office at {} yet",
                self.cfg.backoffice_url
            )));
        };
        let until = claims.serve_until.saturating_mul(1000);
        if until <= now {
            return Err(ServiceError::RightsExpired(format!(
                "this server's rights were signed by the back office at {} to be served \
                 until {}, and no newer answer has arrived: it grants and renews nothing \
                 until the back office at {} answers again (check that it is reachable)",
                fmt_time(claims.iat),
                fmt_time(claims.serve_until),
                self.cfg.backoffice_url
            )));
        }
        let binding = self.identity.valid_binding(now).map_err(|e| {
            ServiceError::NotBound(format!(
                "this server grants nothing until the back office binds its key (key {}): {e}; \
                 it asks again on its next poll of {}",
                self.identity.key_id(),
                self.cfg.backoffice_url
            ))
        })?;
        let until = until.min(binding.until().saturating_mul(1000));
        Ok((binding, self.cfg.lease_ms.min(until - now), until - now))
    }

    /// Before a checkout decides (the state lock held): serving, grantable (see
    /// [`Service::grantable_locked`]), lapsed leases freed and the line served first.
    pub(super) fn ready_to_grant_locked(
        &self,
        st: &mut State,
        now: Millis,
    ) -> Result<(Arc<Binding>, i64, i64), ServiceError> {
        self.ensure_serving_locked(st, now)
            .inspect_err(|e| self.metrics.deny(e.code()))?;
        let ready = self
            .grantable_locked(st, now)
            .inspect_err(|e| self.metrics.deny(e.code()))?;
        self.reap_locked(st, now);
        Ok(ready)
    }

    /// A denial as the client's error, counted in the metrics.
    pub(super) fn denied(&self, d: Denied, feature: &str) -> ServiceError {
        let err = self.denial(d, feature);
        self.metrics.deny(err.code());
        err
    }

    /// A denial as the client's error.
    pub(super) fn denial(&self, d: Denied, feature: &str) -> ServiceError {
        match d {
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
                asked,
                free,
                count,
            } => ServiceError::NoLicense {
                message: format!("no license of `{feature}` available: {reason}"),
                // Round up: the seat is free at that second at the latest.
                next_free_at: next_free_at.map(|ms| (ms + 999) / 1000),
                asked,
                free,
                count,
            },
            Denied::UnknownLease => ServiceError::NotFound(
                "no such lease: it expired, was returned, or never existed".into(),
            ),
            Denied::NotBorrowable => ServiceError::Forbidden(format!(
                "`{feature}` may not be borrowed: its line item is not borrowable (the \
                 producer sets that per line item); check it out for online use instead"
            )),
            Denied::BorrowTooLong { max_secs } => ServiceError::validation(
                "borrow_secs",
                format!(
                    "`{feature}` may be borrowed for at most {max_secs} seconds ({}); ask \
                     for a shorter period",
                    humantime::format_duration(std::time::Duration::from_secs(max_secs))
                ),
            ),
            Denied::Rule(r) => ServiceError::Rule {
                kind: r.kind,
                line: r.line,
                message: r.message,
            },
            Denied::QueueFull { max } => ServiceError::NoLicense {
                message: format!(
                    "no license of `{feature}` available, and the line of waiting clients is \
                     full ({max} on this server): retry later"
                ),
                next_free_at: None,
                asked: 0,
                free: 0,
                count: 0,
            },
            Denied::NotQueued => ServiceError::NotFound(
                "no such place in line: it was granted a seat, its wait ended, it left, or it \
                 never existed"
                    .into(),
            ),
        }
    }

    /// Frees lapsed leases, then serves the line (called with the lock held).
    pub(super) fn reap_locked(&self, st: &mut State, now: Millis) -> usize {
        if st.next_expiry().is_none_or(|e| e > now) {
            self.serve_queue_locked(st, now);
            return 0;
        }
        let events = st.expired(now);
        let n = events.len();
        for ev in events {
            let seq = st.apply(&ev);
            self.store.submit_nowait(seq, ev);
        }
        self.metrics.expirations.inc_by(n as u64);
        self.serve_queue_locked(st, now);
        self.meter_levels(st, None, now);
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
        let next = match (st.next_expiry(), st.next_queue_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        (n, next)
    }

    // ---- client API ----

    /// Checks seats out. `lease_token`: a lease token the client showed (`Authorization:
    /// Bearer`), which, like its secret, gets it its own live lease back.
    pub async fn checkout(
        &self,
        req: &CheckoutRequest,
        lease_token: Option<&str>,
    ) -> Result<Lease, ServiceError> {
        if let Err(e) = validate_checkout(req) {
            self.metrics.deny(e.code());
            return Err(e);
        }
        if let Some(c) = self.cluster() {
            return self.checkout_in_cluster(c, req, lease_token).await;
        }
        let ask = ask_of(req);
        let now = now_ms();
        let (rec, renewed, seq, rx, binding) = {
            let mut st = self.state.lock();
            let (binding, lease_ms, room_ms) = self.ready_to_grant_locked(&mut st, now)?;
            let ev = st
                .decide_checkout(
                    &ask,
                    now,
                    lease_length(lease_ms, room_ms, ask.borrow_ms),
                    Uuid::new_v4(),
                    &self.hostid_str,
                    |id| lease_token.is_some_and(|t| self.token_matches(id, t)),
                )
                .map_err(|d| {
                    let e = self.denied(d, &req.feature);
                    self.meter_denial(&st, req, &e, now);
                    e
                })?;
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
            if let (Some(r), false) = (&rec, renewed) {
                self.meter_grant(&st, &pool_key(r), r.kind, req, now);
            }
            (rec, renewed, seq, self.store.submit(seq, ev), binding)
        };
        store::acked(rx).await?;
        self.replicated(seq).await;
        let rec = rec.ok_or_else(|| ServiceError::Internal("the lease vanished".into()))?;
        if renewed {
            self.metrics.renewals.inc();
        } else {
            self.metrics.grants.inc();
        }
        Ok(self.lease_view(&rec, &binding))
    }

    /// Checks a lease token; tells "no such lease" from "not your lease".
    pub(super) fn authorize(&self, id: &Uuid, token: Option<&str>) -> Result<(), ServiceError> {
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
        if let Some(c) = self.cluster() {
            return self.renew_in_cluster(c, id, token).await;
        }
        self.refuse_if_not_serving()?;
        self.authorize(id, token)?;
        let now = now_ms();
        let (rec, seq, rx, binding) = {
            let mut st = self.state.lock();
            self.ensure_serving_locked(&st, now)
                .inspect_err(|e| self.metrics.deny(e.code()))?;
            let (binding, lease_ms, _) = self
                .grantable_locked(&st, now)
                .inspect_err(|e| self.metrics.deny(e.code()))?;
            self.reap_locked(&mut st, now);
            let feature = st.lease(id).map(|l| l.feature).unwrap_or_default();
            let ev = st
                .decide_renew(id, now, lease_ms)
                .map_err(|d| self.denied(d, &feature))?;
            let seq = st.apply(&ev);
            let rec = st.lease(id);
            (rec, seq, self.store.submit(seq, ev), binding)
        };
        store::acked(rx).await?;
        self.replicated(seq).await;
        self.metrics.renewals.inc();
        let rec = rec.ok_or_else(|| ServiceError::Internal("the lease vanished".into()))?;
        Ok(self.lease_view(&rec, &binding))
    }

    /// Returns a lease. Answered as soon as it is applied and queued to the store, without
    /// waiting for its `fdatasync` or the backup: a return lost in a crash can only keep
    /// its seat held until the lease would have lapsed, never hand it out twice. The
    /// journal and the pair's stream are ordered, so any change that hands the freed seat
    /// to someone else comes after the return, and that change is answered only once it
    /// is durable (and on the backup) — with the return before it. (A cluster member
    /// commits returns through the cluster like any change.)
    pub async fn return_lease(&self, id: &Uuid, token: Option<&str>) -> Result<(), ServiceError> {
        if let Some(c) = self.cluster() {
            return self.return_in_cluster(c, id, token).await;
        }
        self.refuse_if_not_serving()?;
        self.authorize(id, token)?;
        let now = now_ms();
        {
            let mut st = self.state.lock();
            self.ensure_serving_locked(&st, now)
                .inspect_err(|e| self.metrics.deny(e.code()))?;
            let key = st.lease(id).as_ref().map(pool_key);
            let ev = st.decide_return(id, now).map_err(|d| self.denied(d, ""))?;
            let seq = st.apply(&ev);
            self.store.submit_nowait(seq, ev);
            self.serve_queue_locked(&mut st, now);
            self.meter_levels(&st, key.as_ref(), now);
        }
        self.metrics.returns.inc();
        Ok(())
    }

    // ---- operators ----

    pub async fn release(&self, id: &Uuid) -> Result<LeaseInfo, ServiceError> {
        if let Some(c) = self.cluster() {
            return self.release_in_cluster(c, id).await;
        }
        let now = now_ms();
        let (info, seq, rx) = {
            let mut st = self.state.lock();
            self.ensure_serving_locked(&st, now)?;
            let info = st.lease(id).as_ref().map(LeaseRecord::info);
            let ev = st.decide_release(id, now).map_err(|d| self.denied(d, ""))?;
            let seq = st.apply(&ev);
            let key = info.as_ref().map(|i| FeatureKey {
                feature: i.feature.clone(),
                version: i.version.clone(),
            });
            let rx = self.store.submit(seq, ev);
            self.serve_queue_locked(&mut st, now);
            self.meter_levels(&st, key.as_ref(), now);
            (info, seq, rx)
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

    /// Every pool with its leases (oldest first), read at one instant.
    pub fn holders(&self) -> Vec<PoolHolders> {
        let st = self.state.lock();
        let features = st.features(now_ms());
        let mut leases: Vec<LeaseInfo> = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for f in &features {
            if seen.insert(f.feature.as_str()) {
                leases.extend(st.leases_of(&f.feature));
            }
        }
        let queued = super::queue::queued_infos(&st);
        drop(st);
        features
            .into_iter()
            .map(|pool| PoolHolders {
                leases: leases
                    .iter()
                    .filter(|l| l.feature == pool.feature && l.version == pool.version)
                    .cloned()
                    .collect(),
                queued: queued
                    .iter()
                    .filter(|q| {
                        q.feature == pool.feature
                            && q.version.as_ref().is_none_or(|v| *v == pool.version)
                    })
                    .cloned()
                    .collect(),
                pool,
            })
            .collect()
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
    let word_ok = |s: &str| name_ok(s) && !s.chars().any(char::is_whitespace);
    if let Some(user) = &req.user
        && !word_ok(user)
    {
        return Err(ServiceError::validation(
            "user",
            "user must be 1 to 256 printable characters without spaces (the OS user name)",
        ));
    }
    if let Some(host) = &req.host
        && !word_ok(host)
    {
        return Err(ServiceError::validation(
            "host",
            "host must be 1 to 256 printable characters without spaces (the host name)",
        ));
    }
    if let Some(secret) = &req.client_secret {
        let s = secret.expose();
        if !(16..=256).contains(&s.len()) || s.chars().any(char::is_control) {
            return Err(ServiceError::validation(
                "client_secret",
                "client_secret must be 16 to 256 printable characters known only to the \
                 client (the client library sends a random one)",
            ));
        }
    }
    if let Some(b) = req.borrow_secs
        && !(1..=MAX_BORROW_SECS).contains(&b)
    {
        return Err(ServiceError::validation(
            "borrow_secs",
            format!("borrow_secs must be between 1 and {MAX_BORROW_SECS} (365 days)"),
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

/// What a (validated) checkout request asks the domain for.
pub(super) fn ask_of(req: &CheckoutRequest) -> CheckoutAsk<'_> {
    CheckoutAsk {
        feature: &req.feature,
        version: req.version.as_deref(),
        count: req.count,
        client_id: &req.client_id,
        holder: req
            .client_secret
            .as_ref()
            .map_or(Holder::NONE, |s| Holder::of_secret(s.expose())),
        borrow_ms: borrow_ms(req),
        who: Who {
            user: req.user.as_deref().unwrap_or_default(),
            host: req.host.as_deref().unwrap_or_default(),
        },
    }
}

/// The borrow a checkout asks for, in milliseconds (validated: at most 365 days).
/// The pool a lease was granted from.
pub(super) fn pool_key(r: &LeaseRecord) -> FeatureKey {
    FeatureKey {
        feature: r.feature.clone(),
        version: r.version.clone(),
    }
}

pub(super) fn borrow_ms(req: &CheckoutRequest) -> Option<i64> {
    req.borrow_secs.map(|s| {
        i64::try_from(s)
            .unwrap_or(i64::MAX / 1000)
            .saturating_mul(1000)
    })
}

/// How long a new lease lasts: an ordinary one `lease_ms` (already within `room_ms`), a
/// borrowed one its period, but never past the binding or the rights (`room_ms`).
pub(super) fn lease_length(lease_ms: i64, room_ms: i64, borrow_ms: Option<i64>) -> i64 {
    borrow_ms.map_or(lease_ms, |b| b.min(room_ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::tests::{answer, claims, producer, service, started};
    use shared::ErrorCode;
    use shared::capability::CapabilityClaims;
    use shared::grant::{Expected, verify_grant};
    use shared::lease::ClientSecret;
    use shared::signing::Verifier;

    fn req(client: &str) -> CheckoutRequest {
        CheckoutRequest {
            borrow_secs: None,
            queue_secs: None,
            feature: "cad".into(),
            version: None,
            count: 1,
            client_id: client.into(),
            user: None,
            host: None,
            client_secret: Some(ClientSecret::new(format!("{client}-secret-0123456789"))),
        }
    }

    fn verify(l: &Lease) -> Result<shared::grant::VerifiedGrant, shared::grant::GrantError> {
        let asked = Expected {
            client_id: &l.client_id,
            lease_id: Some(l.lease_id),
            feature: &l.feature,
            version: Some(&l.version),
            count: l.count,
        };
        let producer = Verifier::from_key(&producer().verifying_key());
        verify_grant(
            &producer,
            &l.grant,
            &l.binding,
            &asked,
            shared::now_unix(),
            5,
        )
    }

    #[tokio::test]
    async fn every_grant_and_renewal_verifies_with_the_producer_key() {
        let dir = tempfile::tempdir().unwrap();
        let svc = service(dir.path(), 2).await;
        let a = svc.checkout(&req("a"), None).await.unwrap();
        let v = verify(&a).unwrap();
        assert_eq!(v.grant.iss, "string:unit");
        assert_eq!(v.binding.key, svc.identity().public_key());
        let renewed = svc.renew(&a.lease_id, Some(&a.token)).await.unwrap();
        verify(&renewed).unwrap();
        // The same client again (its secret): its lease, renewed and signed again.
        let again = svc.checkout(&req("a"), None).await.unwrap();
        assert_eq!(again.lease_id, a.lease_id);
        verify(&again).unwrap();
        svc.shutdown().await;
    }

    #[tokio::test]
    async fn no_lease_outlives_the_rights_serve_until_and_past_it_nothing_is_granted() {
        let dir = tempfile::tempdir().unwrap();
        let svc = service(dir.path(), 2).await;
        let key = svc.identity().public_key();
        let now = shared::now_unix();
        // Rights to be served two seconds more: the lease ends with them.
        let short = CapabilityClaims {
            serve_until: now + 2,
            ..claims(3, &key)
        };
        answer(&svc, short).await;
        let a = svc.checkout(&req("a"), None).await.unwrap();
        assert!(a.expires_at <= now + 2, "{} > {}", a.expires_at, now + 2);
        verify(&a).unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
        let e = svc.checkout(&req("b"), None).await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::RightsExpired, "{e}");
        assert!(e.to_string().contains("no newer answer"), "{e}");
        // A returned lease is still taken back.
        svc.return_lease(&a.lease_id, Some(&a.token)).await.unwrap();
        // A newer answer: serving again.
        answer(&svc, claims(3, &key)).await;
        verify(&svc.checkout(&req("b"), None).await.unwrap()).unwrap();
        svc.shutdown().await;
    }

    #[tokio::test]
    async fn without_a_binding_of_its_own_key_a_server_grants_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let svc = started(dir.path()).await;
        // An answer binding another key, then one binding none: rights, but no grants.
        let other = shared::signing::Signer::generate().public_key();
        let outcome = answer(&svc, claims(3, &other)).await;
        assert!(outcome.identity.is_err());
        assert_eq!(svc.features()[0].count, 3);
        let e = svc.checkout(&req("a"), None).await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::ServerNotBound, "{e}");
        let none = CapabilityClaims {
            binding: None,
            ..claims(3, &other)
        };
        assert!(answer(&svc, none).await.identity.is_err());
        assert_eq!(
            svc.checkout(&req("a"), None).await.unwrap_err().code(),
            ErrorCode::ServerNotBound
        );
        // Its own key bound: granted.
        let key = svc.identity().public_key();
        assert!(answer(&svc, claims(3, &key)).await.identity.is_ok());
        verify(&svc.checkout(&req("a"), None).await.unwrap()).unwrap();
        svc.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_checkouts_never_exceed_the_count() {
        let dir = tempfile::tempdir().unwrap();
        let svc = service(dir.path(), 10).await;
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let svc = svc.clone();
                tokio::spawn(async move { svc.checkout(&req(&format!("c{i}")), None).await })
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
        let a = svc.checkout(&req("a"), None).await.unwrap();
        let b = svc.checkout(&req("b"), None).await.unwrap();
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
        let svc = started(dir.path()).await;
        assert_eq!(svc.state.lock().lease_count(), 2);
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
        r.feature = "cad".into();
        r.client_secret = Some(ClientSecret::new("short"));
        assert!(validate_checkout(&r).is_err());
        assert!(validate_checkout(&req("ok")).is_ok());
    }
}
