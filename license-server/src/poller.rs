//! Capability requests to the back office: at startup (with backoff and jitter until an
//! answer verifies) and then every poll interval, each with this server's public key.
//! Every answer is verified (signature, addressee, request ID, freshness, not older than
//! the rights held) before it is taken: its binding of this server's key, the pair's
//! secret, and its rights, kept verbatim; anything else is logged and changes nothing.
//! An operator's "poll now" (`license-server reread`) wakes the loop at once and is
//! answered with that poll's outcome.

use std::sync::Arc;
use std::time::Duration;

use licensing_client::describe_error;
use shared::capability::{
    CapabilityClaims, CapabilityRequest, CapabilityResponse, RightsRequest, Role,
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
    pub rights: Vec<RightsRequest>,
    /// `CAPABILITY_POLL_INTERVAL`; `None`: the back office's `poll_interval_secs`.
    pub poll_interval: Option<Duration>,
    pub leeway: Duration,
    pub backoff_max: Duration,
}

pub struct Poller {
    cfg: PollerConfig,
    http: reqwest::Client,
    svc: Arc<Service>,
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
        Ok(Poller { cfg, http, svc })
    }

    /// One capability request and its verification: the answer (the token) and its
    /// claims.
    pub async fn request(
        &self,
        include_rights: bool,
    ) -> Result<(String, CapabilityClaims), PollError> {
        let request_id = Uuid::new_v4();
        let req = CapabilityRequest {
            request_id,
            hostid: self.cfg.hostid.clone(),
            role: self.cfg.role,
            backup_hostid: self.cfg.backup_hostid.clone(),
            sent_at: shared::now_unix(),
            rights: if include_rights {
                self.cfg.rights.clone()
            } else {
                Vec::new()
            },
            report: Some(self.svc.report()),
            server_key: Some(self.svc.identity().public_key()),
        };
        let resp = self
            .http
            .post(format!("{}/api/v1/capability", self.cfg.url))
            .bearer_auth(self.cfg.token.expose())
            .json(&req)
            .send()
            .await
            .map_err(|e| PollError::Unreachable(describe_error(&e)))?;
        let status = resp.status().as_u16();
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
        Ok((answer.token, claims))
    }

    /// Requests, verifies and applies; returns the poll interval the answer asks for.
    pub async fn poll_once(&self, include_rights: bool) -> Result<Duration, PollError> {
        let (token, claims) = self.request(include_rights).await?;
        let (role, poll_interval_secs) = (claims.role, claims.poll_interval_secs);
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
                tracing::debug!("capability poll: rights unchanged");
            }
        }
        if role != self.cfg.role {
            tracing::warn!(
                ours = %self.cfg.role,
                theirs = %role,
                "the back office registers this server in another role"
            );
        }
        Ok(Duration::from_secs(poll_interval_secs.max(1)))
    }

    /// Polls until `shutdown` turns true; at once when an operator asks.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
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
            let asked_now = async {
                match asked.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
                Some(reply) = asked_now => {
                    tracing::info!("an operator asked for a poll of the back office now (reread)");
                    waiting.push(reply);
                    // Others who asked meanwhile share it.
                    while let Some(more) = asked.as_mut().and_then(|rx| rx.try_recv().ok()) {
                        waiting.push(more);
                    }
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
