//! The back office's answers: this server's own (from its polls) brings its binding, the
//! pair's secret and its rights; rights replace the current ones (durably, the answer
//! verbatim) unless the answer is older than the one they came from. Also the usage
//! report the poller sends with each capability request.

use shared::capability::{CapabilityClaims, FeatureUsage, Role, ServerReport};

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

impl Service {
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
