//! The back office's answers: this server's own (from its polls) brings its binding, the
//! pair's secret and its rights; rights replace the current ones (durably, the answer
//! verbatim) unless the answer is older than the one they came from. Also the usage
//! report the poller sends with each capability request, and an operator's "poll now"
//! ([`PollNow`], `license-server reread`).

use std::time::Duration;

use parking_lot::Mutex;
use shared::capability::{CapabilityClaims, FeatureUsage, Role, ServerReport};
use tokio::sync::{mpsc, oneshot};

use super::{Service, now_ms};
use crate::domain::{Event, Rights};
use crate::error::ServiceError;
use crate::identity::{AnswerTaken, BindingError};
use crate::pair;
use crate::store;

pub use crate::domain::RightsChange;

/// What this server took from one of its own answers.
#[derive(Debug, Clone)]
pub struct AnswerOutcome {
    pub rights: RightsChange,
    /// The binding and the pair's secret; the error says why the binding was not taken.
    pub identity: Result<AnswerTaken, BindingError>,
}

/// How a poll asked for by an operator ended: `Err` says why the back office gave no
/// verified answer.
pub type PollOutcome = Result<(), String>;

/// Operators' requests to poll the back office now (`lmreread`), each answered with the
/// outcome of the poll that served it; requests made while a poll is under way share
/// the next one. The poller takes the receiving side once ([`PollNow::take`]).
pub struct PollNow {
    tx: mpsc::Sender<oneshot::Sender<PollOutcome>>,
    rx: Mutex<Option<mpsc::Receiver<oneshot::Sender<PollOutcome>>>>,
}

/// The longest an operator waits for a poll asked for: the poller's request times out
/// after 10 s, and one under way may have to end first.
const POLL_NOW_WAIT: Duration = Duration::from_secs(30);

impl PollNow {
    pub fn new() -> PollNow {
        // A few operators at once at most; more wait for room.
        let (tx, rx) = mpsc::channel(16);
        PollNow {
            tx,
            rx: Mutex::new(Some(rx)),
        }
    }

    /// The requests, for the poller (once; `None` after).
    pub fn take(&self) -> Option<mpsc::Receiver<oneshot::Sender<PollOutcome>>> {
        self.rx.lock().take()
    }
}

impl Default for PollNow {
    fn default() -> Self {
        PollNow::new()
    }
}

impl Service {
    /// Makes the poller ask the back office now and waits for the outcome: `Ok` once a
    /// verified answer was taken (rights changed or not); `UNAVAILABLE` with the back
    /// office's error otherwise.
    pub async fn poll_now(&self) -> Result<(), ServiceError> {
        let not_running =
            || ServiceError::Unavailable("this server's poller is not running".to_owned());
        // No poller took the requests (none was started): nobody would answer.
        if self.poll_now.rx.lock().is_some() {
            return Err(not_running());
        }
        let (reply, outcome) = oneshot::channel();
        let asked = async {
            self.poll_now
                .tx
                .send(reply)
                .await
                .map_err(|_| not_running())?;
            outcome.await.map_err(|_| not_running())
        };
        match tokio::time::timeout(POLL_NOW_WAIT, asked).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(why))) => Err(ServiceError::Unavailable(format!(
                "the back office gave no new rights: {why}"
            ))),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ServiceError::Unavailable(format!(
                "the back office did not answer within {} s",
                POLL_NOW_WAIT.as_secs()
            ))),
        }
    }

    /// The operators' requests to poll now, for the poller (once).
    pub fn poll_requests(&self) -> Option<mpsc::Receiver<oneshot::Sender<PollOutcome>>> {
        self.poll_now.take()
    }

    /// Takes this server's own answer from the back office, which the poller verified in
    /// full (signature, addressee, request, freshness): its binding and the pair's secret,
    /// then its rights.
    pub async fn take_answer(
        &self,
        token: &str,
        claims: CapabilityClaims,
    ) -> Result<AnswerOutcome, ServiceError> {
        let identity = self.identity.take_answer(token, &claims);
        let rights = self.identity.rights_check().fresh(token, claims);
        if let Some(c) = self.cluster() {
            // The pool's rights are committed by the cluster's leader (this member's
            // answer when it leads); every member verifies them as it applies them.
            c.offer_rights(rights);
            return Ok(AnswerOutcome {
                rights: RightsChange::Unchanged,
                identity,
            });
        }
        Ok(AnswerOutcome {
            rights: self.update_rights(rights).await?,
            identity,
        })
    }

    /// Applies verified rights (durably) unless they are older than the ones held. A
    /// standby backup takes its rights from its main's changes, not from its own answers;
    /// a backup that serves takes them from its own (so a long takeover does not run out
    /// of `serve_until`).
    pub async fn update_rights(&self, rights: Rights) -> Result<RightsChange, ServiceError> {
        let Some(claims) = rights.claims() else {
            return Err(ServiceError::Internal(
                "rights that were not verified were offered".into(),
            ));
        };
        let rx = {
            let mut st = self.state.lock();
            if self.cfg.role == Role::Backup && st.active_since.is_none() {
                return Ok(RightsChange::Unchanged);
            }
            match st.rights_change(claims) {
                RightsChange::Changed => {}
                unchanged_or_older => return Ok(unchanged_or_older),
            }
            let ev = Event::RightsUpdated {
                rights: rights.clone(),
                at: now_ms(),
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
                overdraft: f.overdraft,
                borrowed: f.borrowed,
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
            intervals: Vec::new(),
            cluster_status: self.cluster.as_ref().map(|c| c.status()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::tests::{answer, claims, service};

    #[tokio::test]
    async fn rights_change_once_and_an_older_answer_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let svc = service(dir.path(), 3).await;
        let key = svc.identity().public_key();
        assert_eq!(
            answer(&svc, claims(3, &key)).await.rights,
            RightsChange::Unchanged
        );
        let more = claims(5, &key);
        let iat = more.iat;
        assert_eq!(answer(&svc, more).await.rights, RightsChange::Changed);
        assert_eq!(svc.features()[0].count, 5);
        let older = CapabilityClaims {
            iat: iat - 10,
            ..claims(9, &key)
        };
        assert_eq!(answer(&svc, older).await.rights, RightsChange::Older);
        assert_eq!(svc.features()[0].count, 5);
        // The same rights, to be served a day longer: recorded.
        let longer = CapabilityClaims {
            serve_until: shared::now_unix() + 2 * 86_400,
            ..claims(5, &key)
        };
        assert_eq!(answer(&svc, longer).await.rights, RightsChange::Changed);
        svc.shutdown().await;
    }
}
