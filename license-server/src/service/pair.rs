//! The pair at run time, as the service sees it: whether this server serves now (the
//! rules are [`crate::pair`]'s), the backup's acknowledgements a main waits for, the
//! changes and snapshots a backup takes from its main, takeover, handback and failback,
//! detaching, and telling the other server.
//!
//! The pair's channel moves leases and returns as they are; rights cross it only as the
//! back office's signed answers, verified here for this server before anything is taken
//! (a batch or snapshot whose rights do not verify is refused whole with
//! `UNVERIFIED_RIGHTS`; a handback's are left out of the merge).

use serde::{Deserialize, Serialize};
use shared::capability::{PairStatus, Role, ServerStatus};
use uuid::Uuid;

use super::peer::Replicated;
use super::{Service, ServiceConfig, fmt_time, now_ms};
use crate::domain::{Event, MergeReport, Millis, Rights, State};
use crate::error::ServiceError;
use crate::pair::{self, Link, PairFacts, Serving};
use crate::store;

/// Longest reason the other server may give for detaching this one.
pub const MAX_REASON: usize = 512;

/// How far the backup has acknowledged the main's changes (main only).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Replication {
    /// The last sequence number the backup holds durably.
    pub acked: u64,
    /// While true, a change is acknowledged to its client only once the backup holds it.
    pub in_sync: bool,
}

/// The run-time side of the pair (what is not in the durable state).
#[derive(Debug, Clone)]
pub(super) struct PairRuntime {
    /// Main: taking the backup's changes before it serves again (also at start, until
    /// the backup has been asked).
    pub(super) recovering: bool,
    /// Main: where its own copy stood when it started (history, last change; the
    /// earliest start since the backup's copy was last compared, kept by the store),
    /// until its backup's copy has been compared with it. The main sends changes while
    /// its own sync runs, so a crash can leave the backup holding changes past that point
    /// that this server lost (none of them acknowledged to a client: that waits for this
    /// server's sync too). They are taken back before serving, even once the changes
    /// made since have numbers as high (the same numbers, other changes). After the
    /// comparison the backup holds only what this server sent.
    pub(super) restart_point: Option<crate::store::RestartPoint>,
    pub(super) link: Link,
    /// Main: when the backup last answered.
    pub(super) backup_last_seen: Option<Millis>,
    /// Backup: when the main was last heard (changes, snapshot, heartbeat).
    pub(super) last_heard: Option<Millis>,
    /// Backup: its copy had everything the main had when last heard.
    pub(super) synced: bool,
}

/// Where a server's copy of the pool stands, for its partner (`GET /api/v1/pair/position`).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Position {
    pub hostid: String,
    pub role: Role,
    /// The history the copy belongs to (a new one starts at a takeover and a failback).
    pub history: Uuid,
    /// The last change the copy holds.
    pub seq: u64,
    /// A backup serving in place of its main (it took over).
    pub active: bool,
    /// Removed from the pair.
    pub detached: bool,
    pub server_status: ServerStatus,
    pub pair_status: Option<PairStatus>,
}

impl Service {
    pub(super) fn facts(&self, st: &State) -> PairFacts {
        let p = self.pair.lock();
        PairFacts {
            role: self.cfg.role,
            recovering: p.recovering,
            link: p.link,
            active_since: st.active_since,
            has_copy: !st.history.is_nil(),
            detached: self.cfg.role == Role::Backup && st.detached.is_some(),
            last_heard: p.last_heard,
            synced: p.synced,
        }
    }

    pub(super) fn serving_of(&self, st: &State, now: Millis) -> Serving {
        pair::serving(&self.facts(st), now, self.cfg.maintenance_ms)
    }

    /// Whether this server serves, and the pair status it sees.
    pub(super) fn statuses(&self, facts: &PairFacts, now: Millis) -> (Serving, Option<PairStatus>) {
        (
            pair::serving(facts, now, self.cfg.maintenance_ms),
            pair::pair_status(facts, now, self.cfg.failover_timeout_ms),
        )
    }

    /// [`Service::statuses`] now, from one look at the state.
    pub fn serving_now(&self) -> (Serving, Option<PairStatus>) {
        let st = self.state.lock();
        self.statuses(&self.facts(&st), now_ms())
    }

    /// Whether client requests are served now; called with the state lock held, so a
    /// takeover or a handback is never half-seen by a request.
    pub(super) fn ensure_serving_locked(
        &self,
        st: &State,
        now: Millis,
    ) -> Result<(), ServiceError> {
        match self.serving_of(st, now) {
            Serving::Serving => Ok(()),
            Serving::MaintenanceExpired => Err(ServiceError::MaintenanceExpired(format!(
                "this backup has served alone since {} and the failover maintenance interval \
                 is over; bring the main back",
                fmt_time(st.active_since.unwrap_or_default() / 1000)
            ))),
            Serving::Redirect => {
                let other = match self.cfg.role {
                    Role::Backup => self.cfg.main_uri.clone(),
                    _ => self.backup_uri.read().clone(),
                };
                match other {
                    Some(url) => Err(ServiceError::NotServing { serving_url: url }),
                    None => Err(ServiceError::Unavailable(
                        "this server is taking its backup's changes back; retry shortly".into(),
                    )),
                }
            }
        }
    }

    pub(super) fn refuse_if_not_serving(&self) -> Result<(), ServiceError> {
        let st = self.state.lock();
        self.ensure_serving_locked(&st, now_ms()).inspect_err(|e| {
            self.metrics.deny(e.code());
        })
    }

    /// Waits until the backup holds `seq`, while it is in sync (semi-synchronous
    /// replication: a change is acknowledged to its client only once both servers hold
    /// it). Returns at once when there is no backup in sync.
    pub(super) async fn replicated(&self, seq: u64) {
        let mut rx = self.repl.subscribe();
        let _ = rx.wait_for(|r| !r.in_sync || r.acked >= seq).await;
    }

    /// The replication watermark (main).
    pub fn replication(&self) -> Replication {
        *self.repl.borrow()
    }

    /// Records the backup's acknowledgement of `acked`; `in_sync` when the backup had
    /// everything that was applied here when the changes were sent.
    pub async fn set_acked(&self, acked: u64, in_sync: bool) {
        self.pair.lock().backup_last_seen = Some(now_ms());
        if in_sync {
            {
                let mut st = self.state.lock();
                if st.alone_from.is_some() {
                    let ev = Event::Rejoined { at: now_ms() };
                    let seq = st.apply(&ev);
                    self.store.submit_nowait(seq, ev);
                }
            }
            self.repl.send_modify(|r| {
                r.acked = acked;
                r.in_sync = true;
            });
            self.set_link(Link::InSync);
        } else {
            self.repl.send_modify(|r| r.acked = acked);
            if let Err(e) = self.go_alone().await {
                tracing::error!(error = %e, "could not record that the backup fell behind");
            }
            self.set_link(Link::CatchingUp);
        }
    }

    /// Records that changes from here on are acknowledged without the backup (durably,
    /// before any waiting client is released), then releases them.
    pub async fn go_alone(&self) -> Result<(), ServiceError> {
        let rx = {
            let mut st = self.state.lock();
            // Only a main acknowledges changes; a backup's journal stays its main's copy.
            if self.cfg.role != Role::Main || st.alone_from.is_some() {
                None
            } else {
                let ev = Event::WentAlone {
                    at: now_ms(),
                    from_seq: self.repl.borrow().acked + 1,
                };
                let seq = st.apply(&ev);
                Some(self.store.submit(seq, ev))
            }
        };
        if let Some(rx) = rx {
            store::acked(rx).await?;
        }
        self.repl
            .send_if_modified(|r| std::mem::replace(&mut r.in_sync, false));
        Ok(())
    }

    /// How the main sees its backup (for the status); use [`Service::go_alone`] first
    /// when the backup stops keeping up.
    pub fn set_link(&self, link: Link) {
        let mut p = self.pair.lock();
        if p.link != link {
            let flicker = matches!(
                (p.link, link),
                (Link::InSync, Link::CatchingUp) | (Link::CatchingUp, Link::InSync)
            );
            if flicker {
                tracing::debug!(from = ?p.link, to = ?link, "link to the backup changed");
            } else {
                tracing::info!(from = ?p.link, to = ?link, "link to the backup changed");
            }
            p.link = link;
        }
    }

    pub fn backup_seen(&self) {
        self.pair.lock().backup_last_seen = Some(now_ms());
    }

    pub fn backup_last_seen(&self) -> Option<Millis> {
        self.pair.lock().backup_last_seen
    }

    pub fn set_recovering(&self, recovering: bool) {
        let mut p = self.pair.lock();
        if p.recovering != recovering {
            if recovering {
                tracing::info!("recovering: taking the backup's changes before serving again");
            } else {
                tracing::info!("serving");
            }
            p.recovering = recovering;
        }
    }

    pub fn recovering(&self) -> bool {
        self.pair.lock().recovering
    }

    /// The backup's URL as handed to clients: `None` when dropped or not configured.
    pub fn backup_uri(&self) -> Option<String> {
        self.backup_uri.read().clone()
    }

    /// This server's copy: history and sequence number (and what it is doing).
    pub fn position(&self) -> Position {
        let st = self.state.lock();
        let facts = self.facts(&st);
        let (serving, pair_status) = self.statuses(&facts, now_ms());
        Position {
            hostid: self.hostid_str.clone(),
            role: self.cfg.role,
            history: st.history,
            seq: st.seq,
            active: st.active_since.is_some(),
            detached: facts.detached,
            server_status: pair::server_status(serving),
            pair_status,
        }
    }

    pub fn history(&self) -> Uuid {
        self.state.lock().history
    }

    /// Whether a standby backup at (`history`, `seq`) holds changes this server must take
    /// in before it overwrites the backup's copy.
    pub fn must_absorb(&self, history: Uuid, seq: u64) -> bool {
        let lost_in_crash = self
            .pair
            .lock()
            .restart_point
            .is_some_and(|p| !p.history.is_nil() && p.history == history && seq > p.seq);
        lost_in_crash || self.state.lock().must_absorb(history, seq)
    }

    /// Main: the backup's copy has been compared with this server's (it continues this
    /// run's changes, or was taken back): see `PairRuntime::restart_point`.
    pub fn backup_compared(&self) {
        if self.pair.lock().restart_point.take().is_some()
            && let Err(e) = self.store.clear_restart_point()
        {
            tracing::error!(error = %e, "could not forget the restart point (pair-restart.json)");
        }
    }

    /// The last change applied (and queued to the store; durable a little later).
    pub fn applied_seq(&self) -> u64 {
        self.state.lock().seq
    }

    /// Verifies rights offered by the pair partner for this server.
    fn verify_partner_rights(&self, rights: &mut Rights, what: &str) -> Result<(), ServiceError> {
        self.identity
            .rights_check()
            .verify(rights)
            .map_err(|e| {
                self.metrics.deny(shared::ErrorCode::UnverifiedRights);
                tracing::error!(what, error = %e, "refused rights from the pair's channel that do not verify");
                ServiceError::UnverifiedRights(format!(
                    "the rights in {what} are not the back office's answer for this pair: {e}; \
                     nothing was changed"
                ))
            })
    }

    /// Backup: applies changes from the main, in order, durably; heartbeats (no events)
    /// only say the main is alive. `main_seq` is how far the main was when it sent them.
    /// A change of rights must verify for this server and be no older than the rights
    /// held, or the whole batch is refused.
    pub async fn apply_replicated(
        &self,
        history: Uuid,
        mut events: Vec<Replicated>,
        main_seq: u64,
    ) -> Result<u64, ServiceError> {
        if self.cfg.role != Role::Backup {
            return Err(ServiceError::RoleConflict(
                "this server is not a backup; it takes no changes from another".into(),
            ));
        }
        // Signatures are checked before the lock is taken (the first event past what is
        // held is rechecked under it: only new events count).
        for c in &mut events {
            if let Event::RightsUpdated { rights, .. } = &mut c.event {
                self.verify_partner_rights(rights, &format!("change {}", c.record.seq))?;
            }
        }
        let (seq, rx) = {
            let mut st = self.state.lock();
            self.check_follower(&st)?;
            if st.history != history {
                return Err(ServiceError::OutOfSync(format!(
                    "this backup's copy is of another history ({}); send a snapshot",
                    st.history
                )));
            }
            let mut issued = st.rights_issued_at();
            for c in events.iter().filter(|c| c.record.seq > st.seq) {
                if let Event::RightsUpdated { rights, .. } = &c.event {
                    if rights.issued_at() < issued {
                        return Err(ServiceError::UnverifiedRights(format!(
                            "change {} holds rights older than those held (a replay?); \
                             nothing was changed",
                            c.record.seq
                        )));
                    }
                    issued = rights.issued_at();
                }
            }
            let mut last = None;
            for c in events {
                if c.record.seq <= st.seq {
                    continue; // sent again after a lost acknowledgement
                }
                if c.record.seq != st.seq + 1 {
                    return Err(ServiceError::OutOfSync(format!(
                        "this backup holds up to {}, the changes start at {}",
                        st.seq, c.record.seq
                    )));
                }
                st.apply(&c.event);
                if let Event::LeaseKeyCreated { .. } = &c.event {
                    self.lease_key.set_from(&st)?;
                }
                // Journaled as received: the main's record, byte for byte.
                last = Some(self.store.submit_framed(c.record));
            }
            self.heard(st.seq >= main_seq);
            (st.seq, last)
        };
        if let Some(rx) = rx {
            store::acked(rx).await?;
        }
        Ok(seq)
    }

    /// Backup: replaces its copy with the main's whole state, whose rights must verify
    /// for this server.
    pub async fn install_snapshot(&self, mut state: State) -> Result<u64, ServiceError> {
        if self.cfg.role != Role::Backup {
            return Err(ServiceError::RoleConflict(
                "this server is not a backup; it takes no snapshot from another".into(),
            ));
        }
        if let Some(rights) = state.rights.as_mut() {
            self.verify_partner_rights(rights, "the snapshot")?;
        }
        let (seq, rx) = {
            let mut st = self.state.lock();
            self.check_follower(&st)?;
            state.rebuild_index();
            // What the backup itself was told about its place in the pair stays.
            state.detached = st.detached.clone();
            state.active_since = None;
            self.lease_key.set_from(&state)?;
            let seq = state.seq;
            *st = state.clone();
            self.heard(true);
            (seq, self.store.reset(state))
        };
        store::acked(rx).await?;
        tracing::info!(seq, "took a full copy of the main's state");
        Ok(seq)
    }

    fn check_follower(&self, st: &State) -> Result<(), ServiceError> {
        if st.active_since.is_some() {
            return Err(ServiceError::RoleConflict(
                "this backup has taken over and serves; take its changes back first (handback)"
                    .into(),
            ));
        }
        if st.detached.is_some() {
            return Err(ServiceError::RoleConflict(
                "this backup was removed from the pair".into(),
            ));
        }
        Ok(())
    }

    fn heard(&self, synced: bool) {
        let mut p = self.pair.lock();
        p.last_heard = Some(now_ms());
        p.synced = synced;
    }

    /// Backup: takes over if the main has been silent for the failover timeout.
    pub async fn take_over_if_due(&self) -> Result<bool, ServiceError> {
        let now = now_ms();
        let rx = {
            let mut st = self.state.lock();
            let facts = self.facts(&st);
            if !pair::should_take_over(&facts, now, self.cfg.failover_timeout_ms) {
                return Ok(false);
            }
            let ev = Event::TookOver {
                at: now,
                history: Uuid::new_v4(),
            };
            let seq = st.apply(&ev);
            tracing::warn!(
                silent_ms = facts.last_heard.map(|t| now - t),
                leases = st.lease_count(),
                seq,
                "the main is silent: this backup takes over and serves the main's pool"
            );
            self.store.submit(seq, ev)
        };
        store::acked(rx).await?;
        self.metrics.takeovers.inc();
        Ok(true)
    }

    /// Backup: the returning main takes the pool back. The backup stops serving at once
    /// (under the state lock, so no request is half-served) and answers with its whole
    /// state once everything it did is durable.
    pub async fn hand_back(&self) -> Result<State, ServiceError> {
        if self.cfg.role != Role::Backup {
            return Err(ServiceError::RoleConflict(
                "this server is not a backup".into(),
            ));
        }
        let now = now_ms();
        let rx = {
            let mut st = self.state.lock();
            // Hearing from the main now: no takeover right after handing back.
            self.heard(false);
            if st.active_since.is_some() {
                // What it counted goes back with the pool (the part of the open intervals
                // it served), before it stops owning it.
                self.flush_usage(&mut st, now);
                let ev = Event::HandedBack { at: now };
                let seq = st.apply(&ev);
                tracing::info!(
                    seq,
                    leases = st.lease_count(),
                    "handing the pool back to the main"
                );
                Some(self.store.submit(seq, ev))
            } else {
                None
            }
        };
        match rx {
            Some(rx) => store::acked(rx).await?,
            None => store::acked(self.store.barrier()).await?,
        }
        Ok(self.snapshot())
    }

    /// Main: serves from the merge of its own state and the backup's (failback). The
    /// backup's leases are always taken (a granted lease is never lost); its rights only
    /// if they verify for this server.
    pub async fn take_back(&self, mut backup: State) -> Result<MergeReport, ServiceError> {
        if let Some(rights) = backup.rights.as_mut()
            && self
                .verify_partner_rights(rights, "the backup's handback")
                .is_err()
        {
            backup.rights = None;
            backup.rights_updated_at = None;
        }
        backup.rebuild_index();
        let (report, rx) = {
            let mut st = self.state.lock();
            let (merged, report) =
                State::merged_for_failback(&st, &backup, Uuid::new_v4(), now_ms());
            self.lease_key.set_from(&merged)?;
            *st = merged.clone();
            (report, self.store.reset(merged))
        };
        store::acked(rx).await?;
        self.backup_compared();
        // The backup now follows again: it has to catch up first.
        self.repl.send_modify(|r| r.in_sync = false);
        self.metrics.failbacks.inc();
        Ok(report)
    }

    /// Main: drops its backup (absence limit, operator, or the backup left); backup: leaves
    /// the pair. Durable; clients stop being handed the backup's URL.
    pub async fn detach(&self, reason: &str) -> Result<bool, ServiceError> {
        let rx = {
            let mut st = self.state.lock();
            let ev = match self.cfg.role {
                Role::Backup if st.detached.is_some() => return Ok(false),
                Role::Backup => Event::Detached {
                    at: now_ms(),
                    reason: reason.to_owned(),
                },
                _ if st.backup.dropped => return Ok(false),
                _ => Event::BackupChanged {
                    at: now_ms(),
                    dropped: true,
                    uri: None,
                    reason: reason.to_owned(),
                },
            };
            let seq = st.apply(&ev);
            *self.backup_uri.write() = effective_backup_uri(&self.cfg, &st);
            self.store.submit(seq, ev)
        };
        store::acked(rx).await?;
        self.go_alone().await?;
        self.set_link(Link::None);
        self.set_recovering(false);
        match self.cfg.role {
            Role::Backup => tracing::warn!(reason, "this backup left its pair"),
            _ => tracing::warn!(reason, "the backup was dropped from the pair"),
        }
        Ok(true)
    }

    /// An operator removes the backup from the pair, on the main or on the backup; the
    /// other server is told (best effort: it also learns on its next contact).
    pub async fn detach_by_operator(&self) -> Result<(), ServiceError> {
        let (partner, reason) = match self.cfg.role {
            Role::Main => (
                self.backup_uri(),
                "the backup was removed by an operator of the main",
            ),
            Role::Backup => (
                self.cfg.main_uri.clone(),
                "the backup was removed by an operator of the backup",
            ),
            Role::Standalone => {
                return Err(ServiceError::RoleConflict(
                    "this server is not part of a pair".into(),
                ));
            }
        };
        self.detach(reason).await?;
        self.tell_partner(partner.as_deref(), reason).await;
        Ok(())
    }

    /// The other server detached this one (a main dropped its backup, or a backup left).
    pub async fn detached_by_partner(&self, reason: &str) -> Result<bool, ServiceError> {
        if reason.chars().count() > MAX_REASON || reason.chars().any(char::is_control) {
            return Err(ServiceError::validation(
                "reason",
                format!("the reason must be at most {MAX_REASON} printable characters"),
            ));
        }
        let reason = match self.cfg.role {
            Role::Backup => format!("removed from the pair by the main: {reason}"),
            _ => format!("the backup left the pair: {reason}"),
        };
        self.detach(&reason).await
    }

    /// Tells the other server of the pair that this one detached it (best effort: a main
    /// that does not hear it finds out from the backup's position; a backup from the
    /// main's silence and the back office).
    pub async fn tell_partner(&self, uri: Option<&str>, reason: &str) {
        if let (Some(uri), Some(peer)) = (uri, &self.peer)
            && let Err(e) = peer.detach(uri, reason).await
        {
            tracing::warn!(partner = %uri, error = %e, "could not tell the other server; it learns on its next contact");
        }
    }

    /// Main: a new address for the backup (and no longer dropped).
    pub async fn set_backup(&self, uri: String) -> Result<(), ServiceError> {
        if self.cfg.role != Role::Main {
            return Err(ServiceError::RoleConflict(
                "only a main has a backup (set BACKUP_SERVER_HOSTID)".into(),
            ));
        }
        let rx = {
            let mut st = self.state.lock();
            let ev = Event::BackupChanged {
                at: now_ms(),
                dropped: false,
                uri: Some(uri.clone()),
                reason: "new address set by an operator".into(),
            };
            let seq = st.apply(&ev);
            *self.backup_uri.write() = effective_backup_uri(&self.cfg, &st);
            self.store.submit(seq, ev)
        };
        store::acked(rx).await?;
        self.go_alone().await?;
        self.set_link(Link::Unknown);
        tracing::info!(backup = %uri, "the backup's address changed");
        Ok(())
    }
}

/// The backup clients are handed: none once dropped, else the operator's address, else
/// `LICENSING_BACKUP_URI`.
pub(super) fn effective_backup_uri(cfg: &ServiceConfig, st: &State) -> Option<String> {
    if cfg.role != Role::Main || st.backup.dropped {
        return None;
    }
    st.backup.uri.clone().or_else(|| cfg.backup_uri.clone())
}
