//! The service: the state behind one lock, the store, lease tokens and what handlers call.
//!
//! Every change follows the same path: under the state lock, decide (pure domain), apply
//! to the in-memory state and queue the event to the store (in sequence order); release
//! the lock; wait until the event is durable; answer.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use serde::Serialize;
use sha2::Sha256;
use shared::HostId;
use shared::capability::{CapabilityClaims, FeatureUsage, Role, ServerReport, ServerStatus};
use shared::lease::{CheckoutRequest, FeatureInfo, Lease, LeaseInfo};
use uuid::Uuid;

use crate::domain::{
    CheckoutAsk, Denied, Event, LeaseRecord, MAX_SEATS_PER_CHECKOUT, Millis, State,
};
use crate::error::ServiceError;
use crate::metrics::Metrics;
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
    lease_key: Hmac<Sha256>,
    pub metrics: Metrics,
    backoffice: Mutex<BackofficeStatus>,
    started_at: i64,
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
        let key = match &state.lease_key {
            Some(k) => k.clone(),
            None => {
                let key = URL_SAFE_NO_PAD.encode(shared::random_bytes::<32>());
                let ev = Event::LeaseKeyCreated { key: key.clone() };
                let seq = state.apply(&ev);
                store::acked(store.submit(seq, ev)).await?;
                key
            }
        };
        let key_bytes = URL_SAFE_NO_PAD
            .decode(key.as_bytes())
            .map_err(|e| ServiceError::Internal(format!("the stored lease key is damaged: {e}")))?;
        let lease_key = Hmac::<Sha256>::new_from_slice(&key_bytes)
            .map_err(|e| ServiceError::Internal(e.to_string()))?;
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
        Ok(Arc::new(Service {
            hostid_str: cfg.hostid.to_string(),
            cfg,
            state: Mutex::new(state),
            store,
            lease_key,
            metrics: Metrics::new(),
            backoffice: Mutex::new(backoffice),
            started_at: shared::now_unix(),
        }))
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

    pub fn server_status(&self) -> ServerStatus {
        match self.cfg.role {
            Role::Backup => ServerStatus::Ready,
            Role::Main | Role::Standalone => ServerStatus::Active,
        }
    }

    fn ensure_serving(&self) -> Result<(), ServiceError> {
        match (self.cfg.role, &self.cfg.main_uri) {
            (Role::Backup, Some(main)) => Err(ServiceError::NotServing {
                serving_url: main.clone(),
            }),
            _ => Ok(()),
        }
    }

    // ---- lease tokens ----

    pub fn sign_lease(&self, id: &Uuid) -> String {
        let mut mac = self.lease_key.clone();
        mac.update(id.as_bytes());
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }

    fn token_matches(&self, id: &Uuid, token: &str) -> bool {
        let Ok(sig) = URL_SAFE_NO_PAD.decode(token.as_bytes()) else {
            return false;
        };
        let mut mac = self.lease_key.clone();
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
            backup_uri: self.cfg.backup_uri.clone(),
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
        let n = self.reap_locked(&mut st, now_ms());
        if n > 0 {
            tracing::info!(freed = n, "leases expired (not renewed in time)");
        }
        (n, st.next_expiry())
    }

    // ---- client API ----

    pub async fn checkout(&self, req: &CheckoutRequest) -> Result<Lease, ServiceError> {
        if let Err(e) = self.ensure_serving().and_then(|()| validate_checkout(req)) {
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
        let (rec, renewed, rx) = {
            let mut st = self.state.lock();
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
            let rec = st.lease(&id).cloned();
            (rec, renewed, self.store.submit(seq, ev))
        };
        store::acked(rx).await?;
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
        let exists = self.state.lock().lease(id).is_some();
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
        if let Err(e) = self.ensure_serving() {
            self.metrics.deny(e.code());
            return Err(e);
        }
        self.authorize(id, token)?;
        let now = now_ms();
        let (rec, rx) = {
            let mut st = self.state.lock();
            self.reap_locked(&mut st, now);
            let feature = st.lease(id).map(|l| l.feature.clone()).unwrap_or_default();
            let ev = st
                .decide_renew(id, now, self.cfg.lease_ms)
                .map_err(|d| self.denied(d, &feature))?;
            let seq = st.apply(&ev);
            let rec = st.lease(id).cloned();
            (rec, self.store.submit(seq, ev))
        };
        store::acked(rx).await?;
        self.metrics.renewals.inc();
        let rec = rec.ok_or_else(|| ServiceError::Internal("the lease vanished".into()))?;
        Ok(self.lease_view(&rec))
    }

    pub async fn return_lease(&self, id: &Uuid, token: Option<&str>) -> Result<(), ServiceError> {
        if let Err(e) = self.ensure_serving() {
            self.metrics.deny(e.code());
            return Err(e);
        }
        self.authorize(id, token)?;
        let now = now_ms();
        let rx = {
            let mut st = self.state.lock();
            let ev = st.decide_return(id, now).map_err(|d| self.denied(d, ""))?;
            let seq = st.apply(&ev);
            self.store.submit(seq, ev)
        };
        store::acked(rx).await?;
        self.metrics.returns.inc();
        Ok(())
    }

    // ---- operators ----

    pub async fn release(&self, id: &Uuid) -> Result<LeaseInfo, ServiceError> {
        let now = now_ms();
        let (info, rx) = {
            let mut st = self.state.lock();
            let info = st.lease(id).map(LeaseRecord::info);
            let ev = st.decide_release(id, now).map_err(|d| self.denied(d, ""))?;
            let seq = st.apply(&ev);
            (info, self.store.submit(seq, ev))
        };
        store::acked(rx).await?;
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
        ServerReport {
            server_status: self.server_status(),
            pair_status: None,
            usage,
            backup_dropped: false,
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
        let (features, leases, seq, rights_updated_at, rights_count) = {
            let st = self.state.lock();
            (
                st.features(now),
                st.lease_count(),
                st.seq,
                st.rights_updated_at,
                st.rights.len(),
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
        StatusView {
            hostid: self.hostid_str.clone(),
            role: self.cfg.role,
            server_status: self.server_status(),
            pair_status: None,
            public_url: self.cfg.public_url.clone(),
            backup_uri: self.cfg.backup_uri.clone(),
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
    pub pair_status: Option<shared::capability::PairStatus>,
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
            ServiceConfig {
                hostid: HostId::parse("string:unit").unwrap(),
                role: Role::Standalone,
                lease_ms: 60_000,
                public_url: None,
                backup_uri: None,
                main_uri: None,
                backoffice_url: "http://bo".into(),
            },
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
        let cfg = ServiceConfig {
            hostid: HostId::parse("string:unit").unwrap(),
            role: Role::Standalone,
            lease_ms: 60_000,
            public_url: None,
            backup_uri: None,
            main_uri: None,
            backoffice_url: "http://bo".into(),
        };
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
