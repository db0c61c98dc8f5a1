//! Capability requests to the back office: at startup (with backoff and jitter until an
//! answer verifies) and then every poll interval, each with this server's public key and
//! its report. Every answer is verified (signature, addressee, request ID, freshness, not
//! older than the rights held) before it is taken: its binding of this server's key, the
//! pair's secret, and its rights, kept verbatim; anything else is logged and changes
//! nothing.
//!
//! Beside the polls, the live link: one capability request held open by the back office
//! (`link`, with the revision of the answer held) and answered as soon as this server's
//! rights change, verified and taken like any answer, or `204` when its time is up; then
//! opened again at once. A link that fails is opened again with backoff and jitter (at
//! most [`LINK_BACKOFF_MAX`] apart); meanwhile the polls go on as before.
//!
//! And the report: a poll goes out within [`REPORT_TICK`] of a change of this server's
//! serving state or its pair's status, or of a feature's seats in use by more than a
//! [`USAGE_FRACTION`] of its count, or of a usage interval closed, and every
//! [`REPORT_EVERY`] at least (each opening of the link carries the report too). A report
//! carries the closed usage intervals the back office has not acknowledged by answering a
//! request that carried them (after a restart, all those kept: the back office keeps each
//! once).
//!
//! An operator's "poll now" (`license-server reread`) wakes the polls at once and is
//! answered with that poll's outcome.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use licensing_client::describe_error;
use parking_lot::Mutex;
use shared::capability::{
    CapabilityClaims, CapabilityRequest, CapabilityResponse, LinkWait, RightsRequest, Role,
    ServerReport, UsageKey,
};
use shared::secret::Secret;
use shared::{ErrorBody, ErrorCode, HostId};
use tokio::sync::watch;
use uuid::Uuid;

use crate::service::{Contact, PollOutcome, RightsChange, Service};

#[derive(Debug, Clone, thiserror::Error)]
pub enum PollError {
    #[error("the back office is unreachable: {0}")]
    Unreachable(String),
    #[error("the back office does not know this pair's main yet: {0}")]
    MainNotRegistered(ErrorBody),
    #[error("the back office refused the request (HTTP {status}): {body}")]
    Refused { status: u16, body: ErrorBody },
    #[error("the answer was rejected: {0}")]
    Rejected(String),
}

impl PollError {
    fn label(&self) -> &'static str {
        match self {
            PollError::Unreachable(_) => "unreachable",
            PollError::MainNotRegistered(_) => "main_not_registered",
            PollError::Refused { .. } => "refused",
            PollError::Rejected(_) => "rejected",
        }
    }

    fn contact(&self) -> Contact {
        match self {
            PollError::Unreachable(_) => Contact::Unreachable,
            PollError::MainNotRegistered(_) => Contact::WaitingForMain,
            PollError::Refused { .. } => Contact::Refused,
            PollError::Rejected(_) => Contact::Rejected,
        }
    }
}

#[derive(Debug, Clone)]
pub struct PollerConfig {
    pub url: String,
    pub token: Secret,
    pub hostid: HostId,
    pub role: Role,
    pub backup_hostid: Option<HostId>,
    /// A cluster member's `CLUSTER_MEMBER_HOSTIDS`: the other two members.
    pub cluster_member_hostids: Vec<HostId>,
    pub rights: Vec<RightsRequest>,
    /// `CAPABILITY_POLL_INTERVAL`; `None`: the back office's `poll_interval_secs`.
    pub poll_interval: Option<Duration>,
    /// `LIVE_LINK`: hold the live link besides the polls.
    pub live_link: bool,
    pub leeway: Duration,
    pub backoff_max: Duration,
}

/// How long the back office is asked to hold the live link when nothing changes (it holds
/// it for less when its `SERVER_TIMEOUT` asks for more frequent contact).
pub const LINK_WAIT_SECS: u32 = 60;

/// The longest wait before the live link is opened again after a failure.
pub const LINK_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The least time between two openings of the live link after a change came through it.
pub const LINK_LEAST_CHANGED: Duration = Duration::from_millis(200);

/// How often this server's report is compared with the one the back office has.
pub const REPORT_TICK: Duration = Duration::from_millis(250);

/// A change of a feature's seats in use by more than this fraction of its count is
/// reported at once.
pub const USAGE_FRACTION: f64 = 0.1;

/// The back office hears this server's report at least this often.
pub const REPORT_EVERY: Duration = Duration::from_secs(60);

pub struct Poller {
    cfg: PollerConfig,
    http: reqwest::Client,
    svc: Arc<Service>,
    held: Mutex<Held>,
}

/// What the back office and this server last agreed on.
#[derive(Default)]
struct Held {
    /// The revision of the last answer taken ([`CapabilityClaims::revision`]).
    revision: Option<String>,
    /// The last report the back office received, and when.
    report: Option<(ServerReport, Instant)>,
    /// The usage intervals the back office acknowledged (it answered a request that
    /// carried them): not sent again.
    usage_acked: BTreeSet<UsageKey>,
}

impl Held {
    /// The back office received `report`: its intervals are acknowledged (returned).
    fn reported(&mut self, mut report: ServerReport) -> Vec<UsageKey> {
        let keys: Vec<UsageKey> = report.intervals.drain(..).map(|i| i.key()).collect();
        self.usage_acked.extend(keys.iter().cloned());
        self.report = Some((report, Instant::now()));
        keys
    }
}

/// Whether `now` differs from `sent` enough to be reported at once: another serving state,
/// pair status or cluster status, a dropped backup, other features, or a feature's seats in use changed
/// by more than [`USAGE_FRACTION`] of its count.
pub fn report_changed(sent: &ServerReport, now: &ServerReport) -> bool {
    if sent.server_status != now.server_status
        || sent.pair_status != now.pair_status
        || sent.backup_dropped != now.backup_dropped
        || sent.cluster_status != now.cluster_status
        || sent.usage.len() != now.usage.len()
    {
        return true;
    }
    sent.usage.iter().zip(&now.usage).any(|(a, b)| {
        let moved = f64::from(a.in_use.abs_diff(b.in_use));
        a.feature != b.feature
            || a.version != b.version
            || a.count != b.count
            || moved > USAGE_FRACTION * f64::from(b.count)
    })
}

impl std::fmt::Debug for Poller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Poller")
            .field("url", &self.cfg.url)
            .finish()
    }
}

/// The wait before retry `attempt` (0-based): exponential, capped, with jitter in
/// [half, full] of the step.
pub fn backoff(attempt: u32, cap: Duration) -> Duration {
    let base = Duration::from_millis(500).saturating_mul(1u32 << attempt.min(16));
    let step = base.min(cap).max(Duration::from_millis(100));
    let r = u64::from(u16::from_le_bytes(shared::random_bytes::<2>()));
    let half = step / 2;
    half + half.mul_f64(r as f64 / f64::from(u16::MAX))
}

impl Poller {
    /// `ca`: certificates trusted besides the system's roots (`BACKOFFICE_CA`).
    pub fn new(
        cfg: PollerConfig,
        svc: Arc<Service>,
        ca: Vec<reqwest::Certificate>,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(5))
            .tls_certs_merge(ca)
            .build()
            .map_err(|e| {
                anyhow::anyhow!("the back office's HTTP client: {}", describe_error(&e))
            })?;
        Ok(Poller {
            cfg,
            http,
            svc,
            held: Mutex::new(Held::default()),
        })
    }

    /// One capability request and its verification: the answer (the token) and its
    /// claims; `None` when a live link's time was up with nothing changed.
    pub async fn request(
        &self,
        include_rights: bool,
        link: Option<LinkWait>,
    ) -> Result<Option<(String, CapabilityClaims)>, PollError> {
        let request_id = Uuid::new_v4();
        let mut report = self.svc.report();
        report.intervals = self.svc.usage_to_report(&mut self.held.lock().usage_acked);
        let timeout = link.as_ref().map_or(Duration::from_secs(10), |l| {
            Duration::from_secs(u64::from(l.wait_secs) + 10)
        });
        let req = CapabilityRequest {
            request_id,
            hostid: self.cfg.hostid.clone(),
            role: self.cfg.role,
            backup_hostid: self.cfg.backup_hostid.clone(),
            cluster_member_hostids: self.cfg.cluster_member_hostids.clone(),
            sent_at: shared::now_unix(),
            rights: if include_rights {
                self.cfg.rights.clone()
            } else {
                Vec::new()
            },
            report: Some(report.clone()),
            server_key: Some(self.svc.identity().public_key()),
            link,
        };
        let resp = self
            .http
            .post(format!("{}/api/v1/capability", self.cfg.url))
            .bearer_auth(self.cfg.token.expose())
            .timeout(timeout)
            .json(&req)
            .send()
            .await
            .map_err(|e| PollError::Unreachable(describe_error(&e)))?;
        let status = resp.status().as_u16();
        if status == 204 && req.link.is_some() {
            let acked = self.held.lock().reported(report);
            self.svc.usage_acknowledged(acked).await;
            return Ok(None);
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| PollError::Unreachable(describe_error(&e)))?;
        if !(200..300).contains(&status) {
            return Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(body) if body.code == ErrorCode::MainNotRegistered => {
                    PollError::MainNotRegistered(body)
                }
                Ok(body) => PollError::Refused { status, body },
                Err(_) if status >= 500 || status == 404 || status == 502 => {
                    PollError::Unreachable(format!("HTTP {status} without an error body"))
                }
                Err(_) => PollError::Refused {
                    status,
                    body: ErrorBody::new(
                        ErrorCode::Unknown,
                        String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned(),
                    ),
                },
            });
        }
        let answer: CapabilityResponse = serde_json::from_slice(&bytes)
            .map_err(|e| PollError::Rejected(format!("not a capability response: {e}")))?;
        let claims = self
            .svc
            .identity()
            .rights_check()
            .producer()
            .verify(
                &answer.token,
                &self.cfg.hostid,
                request_id,
                shared::now_unix(),
                self.cfg.leeway.as_secs() as i64,
            )
            .map_err(|e| PollError::Rejected(e.to_string()))?;
        let acked = self.held.lock().reported(report);
        self.svc.usage_acknowledged(acked).await;
        Ok(Some((answer.token, claims)))
    }

    /// Requests, verifies and applies; returns the poll interval the answer asks for.
    pub async fn poll_once(&self, include_rights: bool) -> Result<Duration, PollError> {
        let (token, claims) = self
            .request(include_rights, None)
            .await?
            .ok_or_else(|| PollError::Rejected("an empty answer to a poll".into()))?;
        self.take(token, claims).await
    }

    /// Takes a verified answer; returns the poll interval it asks for.
    async fn take(&self, token: String, claims: CapabilityClaims) -> Result<Duration, PollError> {
        let (role, poll_interval_secs) = (claims.role, claims.poll_interval_secs);
        let revision = claims.revision();
        let (rights, seats, server_id) = (
            claims.rights.len(),
            claims
                .rights
                .iter()
                .map(|r| u64::from(r.count))
                .sum::<u64>(),
            claims.server_id.clone(),
        );
        let iat = claims.iat;
        let outcome = self
            .svc
            .take_answer(&token, claims)
            .await
            .map_err(|e| PollError::Rejected(e.to_string()))?;
        match outcome.rights {
            RightsChange::Older => {
                return Err(PollError::Rejected(format!(
                    "the answer was issued at {iat}, before the answer the current rights came from (replayed?)"
                )));
            }
            RightsChange::Changed => {
                tracing::info!(
                    rights,
                    seats,
                    %server_id,
                    "rights updated from the back office"
                );
            }
            RightsChange::Unchanged => {
                tracing::debug!("capability answer: rights unchanged");
            }
        }
        self.held.lock().revision = Some(revision);
        if role != self.cfg.role {
            tracing::warn!(
                ours = %self.cfg.role,
                theirs = %role,
                "the back office registers this server in another role"
            );
        }
        Ok(Duration::from_secs(poll_interval_secs.max(1)))
    }

    /// Polls, holds the live link and reports until `shutdown` turns true.
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        let this = Arc::new(self);
        let link = this
            .cfg
            .live_link
            .then(|| tokio::spawn(this.clone().hold_link(shutdown.clone())));
        this.poll(shutdown).await;
        if let Some(link) = link {
            let _ = link.await;
        }
    }

    /// Whether the report differs from what the back office has enough to send it now.
    fn report_due(&self) -> bool {
        let held = self.held.lock();
        match &held.report {
            None => true,
            Some((sent, at)) => {
                at.elapsed() >= REPORT_EVERY
                    || self.svc.usage_pending(&held.usage_acked)
                    || report_changed(sent, &self.svc.report())
            }
        }
    }

    /// The live link: held open, taken when answered, opened again at once (after a failure,
    /// with backoff).
    async fn hold_link(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut attempt: u32 = 0;
        loop {
            let revision = self.held.lock().revision.clone();
            let started = Instant::now();
            let pause = match revision {
                // No verified answer yet: the polls get one first.
                None => REPORT_TICK,
                Some(revision) => {
                    let link = LinkWait {
                        revision: revision.clone(),
                        wait_secs: LINK_WAIT_SECS,
                    };
                    let outcome = tokio::select! {
                        o = self.request(false, Some(link)) => o,
                        _ = shutdown.changed() => return,
                    };
                    match self.link_answered(outcome, &revision).await {
                        Ok(changed) => {
                            attempt = 0;
                            self.svc.set_backoffice(|b| {
                                if !b.link_up {
                                    tracing::info!(url = %b.url, "live link to the back office open");
                                }
                                b.link_up = true;
                            });
                            // Answered at once without a change (the server left the
                            // registry, say): not more than once a second; with one, not
                            // more than five times (a back office that answers every link
                            // at once would otherwise be asked without pause).
                            let least = if changed {
                                LINK_LEAST_CHANGED
                            } else {
                                Duration::from_secs(1)
                            };
                            least.saturating_sub(started.elapsed())
                        }
                        Err(e) => {
                            let wait = backoff(attempt, LINK_BACKOFF_MAX);
                            attempt = attempt.saturating_add(1);
                            self.svc.set_backoffice(|b| {
                                if b.link_up {
                                    tracing::warn!(
                                        error = %e,
                                        retry_in_secs = wait.as_secs_f64(),
                                        "live link to the back office lost; polling meanwhile"
                                    );
                                } else {
                                    tracing::debug!(error = %e, retry_in_secs = wait.as_secs_f64(), "live link not open");
                                }
                                b.link_up = false;
                            });
                            wait
                        }
                    }
                }
            };
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                _ = shutdown.changed() => return,
            }
            if *shutdown.borrow() {
                return;
            }
        }
    }

    /// Takes what the live link was answered with: `true` when its rights changed.
    async fn link_answered(
        &self,
        outcome: Result<Option<(String, CapabilityClaims)>, PollError>,
        sent: &str,
    ) -> Result<bool, PollError> {
        let Some((token, claims)) = outcome? else {
            return Ok(false);
        };
        if claims.revision() == *sent {
            // Answered as changed with what this server holds: a back office that computes
            // revisions otherwise (another version). Backing off keeps this from spinning.
            return Err(PollError::Rejected(
                "the back office answered the live link with the rights held".into(),
            ));
        }
        self.take(token, claims).await?;
        self.svc.metrics.poll("link");
        Ok(true)
    }

    /// Polls until `shutdown` turns true: every poll interval, when the report is due,
    /// and at once when an operator asks.
    async fn poll(&self, mut shutdown: watch::Receiver<bool>) {
        let mut attempt: u32 = 0;
        let mut interval: Option<Duration> = self.cfg.poll_interval;
        let mut include_rights = true;
        let mut asked = self.svc.poll_requests();
        // Operators waiting for the poll about to be made.
        let mut waiting: Vec<tokio::sync::oneshot::Sender<PollOutcome>> = Vec::new();
        loop {
            let started = shared::now_unix();
            self.svc
                .set_backoffice(|b| b.last_attempt_at = Some(started));
            let result = self.poll_once(include_rights).await;
            let outcome: PollOutcome = match &result {
                Ok(_) => Ok(()),
                Err(e) => Err(e.to_string()),
            };
            let reporting = result.is_ok();
            let wait = match result {
                Ok(theirs) => {
                    include_rights = false;
                    attempt = 0;
                    let every = self.cfg.poll_interval.unwrap_or(theirs);
                    interval = Some(every);
                    self.svc.metrics.poll("ok");
                    let now = shared::now_unix();
                    self.svc.set_backoffice(|b| {
                        if b.state != Contact::Connected {
                            tracing::info!(url = %b.url, "back office contacted; rights verified");
                        }
                        b.state = Contact::Connected;
                        b.last_success_at = Some(now);
                        b.last_error = None;
                        b.poll_interval_secs = Some(every.as_secs());
                    });
                    every
                }
                Err(e) => {
                    self.svc.metrics.poll(e.label());
                    let cap = interval
                        .map_or(self.cfg.backoff_max, |i| i.min(self.cfg.backoff_max))
                        .max(Duration::from_millis(200));
                    let wait = backoff(attempt, cap);
                    attempt = attempt.saturating_add(1);
                    let secs = wait.as_secs_f64();
                    match &e {
                        PollError::Unreachable(why) => tracing::warn!(
                            error = %why,
                            retry_in_secs = secs,
                            "the back office is unreachable; serving from the last verified rights until they expire"
                        ),
                        PollError::MainNotRegistered(body) => tracing::warn!(
                            message = %body.message,
                            retry_in_secs = secs,
                            "waiting for the main of this pair to register with the back office (MAIN_NOT_REGISTERED)"
                        ),
                        PollError::Refused { status, body } => tracing::error!(
                            status,
                            code = %body.code,
                            message = %body.message,
                            retry_in_secs = secs,
                            "the back office refused the capability request"
                        ),
                        PollError::Rejected(why) => tracing::error!(
                            reason = %why,
                            retry_in_secs = secs,
                            "rejected a capability answer; rights unchanged"
                        ),
                    }
                    let msg = e.to_string();
                    self.svc.set_backoffice(|b| {
                        b.state = e.contact();
                        b.last_error = Some(msg);
                    });
                    wait
                }
            };
            let next = shared::now_unix() + wait.as_secs() as i64;
            self.svc.set_backoffice(|b| b.next_attempt_at = Some(next));
            for reply in waiting.drain(..) {
                let _ = reply.send(outcome.clone());
            }
            // Until the next poll, unless the report is due first (after a success: a
            // back office that is failing gets its backoff) or an operator asks.
            let due = tokio::time::Instant::now() + wait;
            loop {
                let asked_now = async {
                    match asked.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = tokio::time::sleep_until(due) => break,
                    () = tokio::time::sleep(REPORT_TICK), if reporting => {
                        if self.report_due() {
                            break;
                        }
                    }
                    _ = shutdown.changed() => return,
                    Some(reply) = asked_now => {
                        tracing::info!("an operator asked for a poll of the back office now (reread)");
                        waiting.push(reply);
                        // Others who asked meanwhile share it.
                        while let Some(more) = asked.as_mut().and_then(|rx| rx.try_recv().ok()) {
                            waiting.push(more);
                        }
                        break;
                    }
                }
                if *shutdown.borrow() {
                    return;
                }
            }
            if *shutdown.borrow() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_is_due_on_a_change_of_state_or_of_usage_by_more_than_a_tenth() {
        use shared::capability::{FeatureUsage, PairStatus, ServerStatus};
        let report = |status, pair, in_use| ServerReport {
            server_status: status,
            pair_status: Some(pair),
            usage: vec![FeatureUsage {
                feature: "cad".into(),
                version: "1.0".into(),
                count: 20,
                in_use,
                overdraft: 0,
                borrowed: 0,
            }],
            backup_dropped: false,
            intervals: Vec::new(),
            cluster_status: None,
        };
        let sent = report(ServerStatus::Active, PairStatus::Recovering, 10);
        let same = |r: &ServerReport| !report_changed(&sent, r);
        assert!(same(&report(
            ServerStatus::Active,
            PairStatus::Recovering,
            10
        )));
        // 2 of 20 is a tenth, not more: the minute's report takes it.
        assert!(same(&report(
            ServerStatus::Active,
            PairStatus::Recovering,
            12
        )));
        assert!(!same(&report(
            ServerStatus::Active,
            PairStatus::Recovering,
            13
        )));
        assert!(!same(&report(
            ServerStatus::Active,
            PairStatus::Recovering,
            7
        )));
        assert!(!same(&report(
            ServerStatus::Active,
            PairStatus::PairedAvailable,
            10
        )));
        assert!(!same(&report(
            ServerStatus::Ready,
            PairStatus::Recovering,
            10
        )));
        let mut dropped = sent.clone();
        dropped.backup_dropped = true;
        assert!(!same(&dropped));
        let mut cluster = sent.clone();
        cluster.cluster_status = Some(shared::capability::ClusterStatus::PartiallyOperational);
        assert!(!same(&cluster));
        let mut more = sent.clone();
        more.usage.push(more.usage[0].clone());
        assert!(!same(&more));
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let cap = Duration::from_secs(8);
        for attempt in 0..20 {
            let d = backoff(attempt, cap);
            let step = Duration::from_millis(500)
                .saturating_mul(1 << attempt.min(16))
                .min(cap);
            assert!(d >= step / 2 && d <= step, "attempt {attempt}: {d:?}");
        }
        let samples: std::collections::HashSet<_> = (0..20).map(|_| backoff(5, cap)).collect();
        assert!(samples.len() > 1, "no jitter");
    }
}
