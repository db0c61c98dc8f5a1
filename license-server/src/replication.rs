//! The failover pair at run time.
//!
//! The main drives everything: it pushes its changes to the backup as ordered batches
//! (`POST /api/v1/pair/events`; an empty batch is the heartbeat), sends a full snapshot
//! when the backup's copy does not continue its own, and takes the backup's changes back
//! (`POST /api/v1/pair/handback`) when it finds the backup serving. The backup only
//! answers, and takes over when the main has been silent for the failover timeout
//! ([`run_backup`]). The rules (who serves, when to take over, pair status) are in
//! [`crate::pair`]; the merge of a failback is [`crate::domain::State::merged_for_failback`].
//!
//! The main sends a change as soon as it is applied and queued to its journal, while its
//! own `fdatasync` runs, and a client waiting for the change is answered once both are
//! done (its own sync, then the backup's acknowledgement). So the backup may hold a change
//! the main loses in a crash; nobody was told of it. If the backup takes over, it serves
//! with that change (a lease granted there comes back to its client, who retries with the
//! same ID and secret); if the main comes back first, it finds the backup ahead in the
//! same history and takes the backup's changes back before serving ([`Service::must_absorb`]).
//! "Ahead" is measured from where the main's copy stood when it started (the store's
//! restart point), not from its copy now: what the main records at its start (that it
//! acknowledges alone, rights that changed) takes the same sequence numbers as the
//! changes it lost, and a backup holding those must be taken back, never continued.
//! The merge then takes the backup's copy as it is (it holds all the main kept, and a
//! lease the main alone still holds was ended there): see `merged_for_failback`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use shared::ErrorCode;
use shared::capability::Role;
use tokio::sync::broadcast::error::TryRecvError;
use tokio::sync::watch;

use crate::pair::{Link, Serving};
use crate::service::peer::{Batch, MAX_BATCH, Peer, PeerError};
use crate::service::{Position, Service, now_ms};
use crate::store::Record;
/// Changes kept in memory to let a backup that was away a short while catch up without a
/// full snapshot.
const RING: usize = 100_000;

#[derive(Debug, Clone, Copy)]
pub struct MainConfig {
    pub heartbeat: Duration,
    /// `BACKUP_ABSENCE_LIMIT`.
    pub absence_limit: Duration,
}

/// Changes received from the store as they are queued, kept for a backup's catch-up.
struct Ring {
    sub: tokio::sync::broadcast::Receiver<Record>,
    events: VecDeque<Record>,
    /// Changes were missed (the receiver lagged): the ring cannot serve a catch-up.
    lagged: bool,
}

impl Ring {
    /// Takes what the store has published since the last call.
    fn drain(&mut self) -> bool {
        loop {
            match self.sub.try_recv() {
                Ok(c) => self.push(c),
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "replication fell behind the journal");
                    self.events.clear();
                    self.lagged = true;
                }
                Err(TryRecvError::Closed) => return false,
            }
        }
    }

    fn push(&mut self, c: Record) {
        // A failback replaces the state: changes start again from a higher number.
        if self.events.back().is_some_and(|b| c.seq != b.seq + 1) {
            self.events.clear();
        }
        self.events.push_back(c);
        if self.events.len() > RING {
            self.events.pop_front();
        }
    }

    /// Whether every change from `from` on is here (or none is needed).
    fn covers(&self, from: u64, last: u64) -> bool {
        !self.lagged
            && (from > last
                || self.events.front().is_some_and(|f| {
                    f.seq <= from && self.events.back().is_some_and(|b| b.seq >= last)
                }))
    }

    /// Up to [`MAX_BATCH`] changes from `from` on.
    fn batch_from(&self, from: u64) -> impl ExactSizeIterator<Item = &Record> + Clone {
        let skip = self
            .events
            .front()
            .map_or(0, |f| from.saturating_sub(f.seq) as usize);
        self.events
            .range(skip.min(self.events.len())..)
            .take(MAX_BATCH)
    }
}

/// Sleeps, or returns true when asked to stop.
async fn pause(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        () = tokio::time::sleep(d) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}

/// The main's side: find the backup, bring it up to date, keep it there, take its
/// changes back after a failover, drop it after the absence limit.
pub async fn run_main(
    svc: Arc<Service>,
    peer: Peer,
    cfg: MainConfig,
    mut stop: watch::Receiver<bool>,
) {
    let mut ring = Ring {
        sub: svc.subscribe(),
        events: VecDeque::new(),
        lagged: false,
    };
    let started = now_ms();
    let mut unreachable_logged = false;
    let mut no_secret_logged = false;
    loop {
        if *stop.borrow() || !ring.drain() {
            return;
        }
        let Some(uri) = svc.backup_uri() else {
            lose(&svc, Link::None).await;
            svc.set_recovering(false);
            if pause(cfg.heartbeat, &mut stop).await {
                return;
            }
            continue;
        };
        let pos = match peer.position(&uri).await {
            Ok(p) => p,
            Err(e) => {
                svc.metrics.replication_failures.inc();
                lose(&svc, Link::Unreachable).await;
                // Nobody to take changes back from: serve alone.
                svc.set_recovering(false);
                if matches!(e, PeerError::NoPairToken) {
                    if !no_secret_logged {
                        tracing::warn!(
                            backup = %uri,
                            "no pair secret yet (PAIR_TOKEN is unset and the back office has sent none): serving alone until it arrives"
                        );
                        no_secret_logged = true;
                    }
                } else if !unreachable_logged {
                    tracing::warn!(backup = %uri, error = %e, "the backup is unreachable; serving alone");
                    unreachable_logged = true;
                }
                let last = svc.backup_last_seen().unwrap_or(started);
                if now_ms() - last >= cfg.absence_limit.as_millis() as i64 {
                    let why = format!(
                        "not seen for {} (BACKUP_ABSENCE_LIMIT)",
                        shared::duration::format(cfg.absence_limit)
                    );
                    if let Err(e) = svc.detach(&why).await {
                        tracing::error!(error = %e, "could not record the dropped backup");
                    }
                }
                if pause(cfg.heartbeat, &mut stop).await {
                    return;
                }
                continue;
            }
        };
        unreachable_logged = false;
        no_secret_logged = false;
        svc.backup_seen();
        if pos.detached {
            if let Err(e) = svc.detach("the backup left the pair").await {
                tracing::error!(error = %e, "could not record the dropped backup");
            }
            continue;
        }
        if pos.role != Role::Backup {
            tracing::error!(backup = %uri, role = %pos.role, "LICENSING_BACKUP_URI names a server that is not a backup (set LICENSING_MAIN_URI on it)");
            lose(&svc, Link::Unreachable).await;
            svc.set_recovering(false);
            if pause(cfg.heartbeat * 4, &mut stop).await {
                return;
            }
            continue;
        }
        if pos.active || svc.must_absorb(pos.history, pos.seq) {
            tracing::info!(
                backup_serving = pos.active,
                backup_seq = pos.seq,
                "recovering: the backup holds changes this server lacks; taking them back before serving"
            );
            svc.set_recovering(true);
            if let Err(e) = failback(&svc, &peer, &uri).await {
                tracing::warn!(error = %e, "taking the backup's changes back failed; retrying");
                if pause(cfg.heartbeat, &mut stop).await {
                    return;
                }
            }
            continue;
        }
        svc.backup_compared();
        svc.set_recovering(false);
        match stream(&svc, &peer, &uri, &pos, &mut ring, cfg, &mut stop).await {
            Streamed::Stop => return,
            Streamed::Resync => {}
            Streamed::Unreachable(e) => {
                svc.metrics.replication_failures.inc();
                tracing::warn!(backup = %uri, error = %e, "lost the backup; changes are acknowledged without it");
                lose(&svc, Link::Unreachable).await;
                if pause(cfg.heartbeat, &mut stop).await {
                    return;
                }
            }
        }
    }
}

/// The backup no longer keeps up: record that changes are acknowledged without it, then
/// release the clients waiting for it.
async fn lose(svc: &Service, link: Link) {
    if let Err(e) = svc.go_alone().await {
        tracing::error!(error = %e, "could not record that the backup is gone");
    }
    svc.set_link(link);
}

/// The main takes the pool back from a backup that served (or that holds changes of its
/// own): the backup stops serving and hands over its state, the main merges it with its
/// own and serves from the merge.
async fn failback(svc: &Service, peer: &Peer, uri: &str) -> Result<(), PeerError> {
    let started = std::time::Instant::now();
    let theirs = peer.handback(uri).await?;
    let report = svc
        .take_back(theirs)
        .await
        .map_err(|e| PeerError::Refused(e.body()))?;
    svc.set_recovering(false);
    tracing::info!(
        from_backup = report.from_backup,
        from_main = report.from_main,
        renewed_on_main = report.renewed_on_main,
        ms = started.elapsed().as_millis() as u64,
        "took the backup's changes back; serving again"
    );
    Ok(())
}

enum Streamed {
    Stop,
    /// The backup's copy or this server's history changed: look again.
    Resync,
    Unreachable(String),
}

async fn stream(
    svc: &Service,
    peer: &Peer,
    uri: &str,
    pos: &Position,
    ring: &mut Ring,
    cfg: MainConfig,
    stop: &mut watch::Receiver<bool>,
) -> Streamed {
    let history = svc.history();
    // How far this server's changes go (applied and queued; durable a little later: the
    // backup gets them while the journal syncs, and clients wait for both).
    let applied = svc.applied_seq();
    let mut next = if pos.history == history
        && pos.seq <= applied
        && ring.covers(pos.seq + 1, applied)
    {
        pos.seq + 1
    } else {
        let state = svc.snapshot();
        ring.lagged = false;
        if state.history != history {
            return Streamed::Resync;
        }
        match peer.snapshot(uri, &state).await {
            Ok(ack) => {
                tracing::info!(
                    seq = ack.seq,
                    leases = state.lease_count(),
                    "sent the backup a full copy"
                );
                ack.seq + 1
            }
            Err(PeerError::Unreachable(e)) => return Streamed::Unreachable(e),
            Err(e @ PeerError::NoPairToken) => return Streamed::Unreachable(e.to_string()),
            Err(PeerError::Refused(body)) => {
                tracing::warn!(code = %body.code, message = %body.message, "the backup refused the snapshot");
                return Streamed::Resync;
            }
        }
    };
    if next <= applied + 1 && next > 1 {
        svc.set_acked(next - 1, next > applied).await;
    }
    loop {
        if !ring.drain() {
            return Streamed::Stop;
        }
        if ring.lagged || svc.history() != history || svc.backup_uri().as_deref() != Some(uri) {
            return Streamed::Resync;
        }
        let applied = svc.applied_seq();
        let (n, last) = if next <= ring.events.back().map_or(0, |c| c.seq) {
            let b = ring.batch_from(next);
            if b.clone().next().is_none_or(|c| c.seq != next) {
                return Streamed::Resync;
            }
            (b.len(), b.last().map_or(next - 1, |c| c.seq))
        } else {
            // Nothing to send: wait for a change or the heartbeat.
            tokio::select! {
                r = ring.sub.recv() => {
                    match r {
                        Ok(c) => ring.push(c),
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            ring.lagged = true;
                            return Streamed::Resync;
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return Streamed::Stop,
                    }
                    continue;
                }
                () = tokio::time::sleep(cfg.heartbeat) => (0, next - 1),
                _ = stop.changed() => return Streamed::Stop,
            }
        };
        // Everything received so far goes in this batch: once the backup acknowledges
        // it, the backup keeps up, and clients wait for its acknowledgements. The records
        // go as the store encoded them for the journal.
        let keeps_up = n < MAX_BATCH;
        let body = Batch::encode(history, applied, ring.batch_from(next).take(n));
        let n = n as u64;
        match peer.push(uri, body).await {
            Ok(ack) => {
                next = ack.seq.max(last) + 1;
                svc.set_acked(ack.seq, keeps_up && ack.seq >= last).await;
                svc.metrics.replication_batches.inc();
                svc.metrics.replication_events.inc_by(n);
            }
            Err(PeerError::Unreachable(e)) => return Streamed::Unreachable(e),
            Err(e @ PeerError::NoPairToken) => return Streamed::Unreachable(e.to_string()),
            Err(PeerError::Refused(body)) => {
                if body.code != ErrorCode::OutOfSync {
                    tracing::warn!(code = %body.code, message = %body.message, "the backup refused the changes");
                }
                lose(svc, Link::CatchingUp).await;
                return Streamed::Resync;
            }
        }
        if *stop.borrow() {
            return Streamed::Stop;
        }
    }
}

/// The backup's side: take over once the main has been silent for the failover timeout.
pub async fn run_backup(svc: Arc<Service>, tick: Duration, mut stop: watch::Receiver<bool>) {
    let mut was_expired = false;
    loop {
        if pause(tick, &mut stop).await {
            return;
        }
        if let Err(e) = svc.take_over_if_due().await {
            tracing::error!(error = %e, "taking over failed");
        }
        let expired = svc.serving_now().0 == Serving::MaintenanceExpired;
        if expired && !was_expired {
            tracing::error!(
                "the failover maintenance interval is over: this backup stops serving (MAINTENANCE_INTERVAL_EXPIRED); bring the main back"
            );
        }
        was_expired = expired;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Event;

    fn ring_with(seqs: std::ops::RangeInclusive<u64>) -> Ring {
        let (tx, sub) = tokio::sync::broadcast::channel(16);
        drop(tx);
        let mut r = Ring {
            sub,
            events: VecDeque::new(),
            lagged: false,
        };
        for seq in seqs {
            r.push(Record::encode(seq, &Event::HandedBack { at: 0 }));
        }
        r
    }

    #[test]
    fn the_ring_serves_catch_up_only_when_it_has_every_change() {
        let r = ring_with(10..=20);
        assert!(r.covers(10, 20));
        assert!(r.covers(15, 20));
        assert!(r.covers(21, 20), "nothing needed");
        assert!(!r.covers(9, 20), "change 9 is gone");
        assert!(!r.covers(15, 25), "changes 21..25 not here yet");
        let b: Vec<_> = r.batch_from(15).map(|c| c.seq).collect();
        assert_eq!(b, (15..=20).collect::<Vec<_>>());
    }

    #[test]
    fn a_jump_in_sequence_numbers_empties_the_ring() {
        let mut r = ring_with(1..=5);
        r.push(Record::encode(50, &Event::HandedBack { at: 0 }));
        assert_eq!(r.events.len(), 1);
        assert!(!r.covers(3, 50));
    }
}
