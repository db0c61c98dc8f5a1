//! Rights: a verified capability answer's rights replace the current ones (durably),
//! unless the answer is older than the one they came from; the usage report the poller
//! sends with each capability request.

use shared::capability::{CapabilityClaims, FeatureUsage, Role, ServerReport};

use super::{Service, now_ms};
use crate::domain::Event;
use crate::error::ServiceError;
use crate::pair;
use crate::store;

/// How a verified capability answer changed the rights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RightsChange {
    Unchanged,
    Changed,
    /// Issued before the answer the current rights came from: refused.
    Older,
}

impl Service {
    /// Applies a verified capability answer's rights (durably) unless it is older than
    /// the one the current rights came from.
    pub async fn update_rights(
        &self,
        claims: &CapabilityClaims,
    ) -> Result<RightsChange, ServiceError> {
        let rx = {
            let mut st = self.state.lock();
            if self.cfg.role == Role::Backup && st.active_since.is_none() {
                // A standby copy takes its rights from its main's changes.
                return Ok(RightsChange::Unchanged);
            }
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
    use crate::service::tests::{claims, service};

    #[tokio::test]
    async fn rights_change_once_and_an_older_answer_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let svc = service(dir.path(), 3).await;
        let same = claims(3);
        assert_eq!(
            svc.update_rights(&same).await.unwrap(),
            RightsChange::Unchanged
        );
        let more = claims(5);
        assert_eq!(
            svc.update_rights(&more).await.unwrap(),
            RightsChange::Changed
        );
        assert_eq!(svc.features()[0].count, 5);
        let older = CapabilityClaims {
            iat: more.iat - 10,
            ..claims(9)
        };
        assert_eq!(
            svc.update_rights(&older).await.unwrap(),
            RightsChange::Older
        );
        assert_eq!(svc.features()[0].count, 5);
        svc.shutdown().await;
    }
}
