//! The queue: clients that asked to wait for a seat (`queue_secs`), in the order they
//! joined, and the rules that serve them — pure, like the rest of the domain.
//!
//! * First come, first served, per feature: an entry waiting for seats (no seat free, but
//!   the pool is big enough for it) holds back every later entry of its feature, and new
//!   checkouts of the feature too ([`State::decide_checkout`]).
//! * An entry the options file refuses now (a reservation for others, a `MAX`) does not
//!   hold back those behind it; nor does one the pool can never hold (more seats than
//!   licensed) or one whose feature is gone. They stay in line until their time ends.
//! * A seat is granted to an entry as a lease whose ID is the entry's: every server that
//!   applies the same events holds the same queue and grants the same seat to the same
//!   client, and the client's token for its place is its lease's token.
//! * An entry leaves the line when granted ([`Event::LeaseGranted`] with its ID), when its
//!   time ends ([`Event::QueueLeft`], `lapsed`) or when its client leaves.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{CheckoutAsk, Denied, Event, Holder, Millis, State};
use crate::options::{RuleKind, Who};

/// Most clients in line on one server (all features): the queue lives in the state's
/// head, so it is kept small.
pub const MAX_QUEUED: usize = 10_000;

/// A client waiting in line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueEntry {
    /// Its place's ID, and the ID of the lease it is granted.
    pub id: Uuid,
    pub feature: String,
    /// The version asked for (`None`: any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub count: u32,
    pub client_id: String,
    /// Who may pick the seat up or leave the line ([`Holder`]).
    #[serde(default, skip_serializing_if = "Holder::is_none")]
    pub holder: Holder,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host: String,
    pub queued_at: Millis,
    /// When the client gives up waiting.
    pub until: Millis,
    /// Sequence number of the event that queued it (set when applied): tells, after a
    /// failover, whether it joined before or after the two servers diverged.
    #[serde(default)]
    pub queued_seq: u64,
}

impl QueueEntry {
    fn ask(&self) -> CheckoutAsk<'_> {
        CheckoutAsk {
            feature: &self.feature,
            version: self.version.as_deref(),
            count: self.count,
            client_id: &self.client_id,
            holder: self.holder,
            borrow_ms: None,
            who: Who {
                user: &self.user,
                host: &self.host,
            },
        }
    }
}

/// What the queue's rules make of an entry now.
enum Turn {
    /// Its seats are free: the grant.
    Grant(Box<Event>),
    /// It waits for seats, holding back those behind it.
    Waits,
    /// It may not have a seat now (a rule, a pool too small, a feature gone): it keeps
    /// its place but holds back nobody.
    Passed,
}

impl State {
    /// How many clients wait in line for a feature (any version): what usage reports
    /// count as queued.
    pub fn queued(&self, feature: &str) -> usize {
        self.queue.iter().filter(|e| e.feature == feature).count()
    }

    /// How many clients wait in line for a pool (those that asked for its version or any).
    pub fn queued_for(&self, key: &super::FeatureKey) -> usize {
        self.queue
            .iter()
            .filter(|e| {
                e.feature == key.feature && e.version.as_ref().is_none_or(|v| *v == key.version)
            })
            .count()
    }

    /// Every client in line, in the order they joined.
    pub fn queue(&self) -> &[QueueEntry] {
        &self.queue
    }

    /// Replaces the line (loading a snapshot).
    pub fn set_queue(&mut self, queue: Vec<QueueEntry>) {
        self.queue = queue;
    }

    /// A place in line by its ID.
    pub fn queue_entry(&self, id: &Uuid) -> Option<&QueueEntry> {
        self.queue.iter().find(|e| e.id == *id)
    }

    /// A client's own place in line for a feature: it proves it by its secret, or `holds`
    /// says it showed the place's token.
    pub fn own_queue_entry(
        &self,
        ask: &CheckoutAsk<'_>,
        holds: impl Fn(&Uuid) -> bool,
    ) -> Option<&QueueEntry> {
        self.queue.iter().find(|e| {
            e.feature == ask.feature
                && e.client_id == ask.client_id
                && (ask.holder.proves(&e.holder) || holds(&e.id))
        })
    }

    /// An entry's place among those waiting for its feature (1: next in line).
    pub fn queue_position(&self, id: &Uuid) -> Option<usize> {
        let e = self.queue_entry(id)?;
        Some(
            self.queue
                .iter()
                .take_while(|o| o.id != *id)
                .filter(|o| o.feature == e.feature)
                .count()
                + 1,
        )
    }

    /// A checkout that was `denied` joins the line until `until`, when waiting may help:
    /// no seat free in a pool big enough for it, or a reservation or `MAX` of the options
    /// file. Otherwise (excluded, more seats than licensed, no such feature) the denial
    /// stands.
    pub fn decide_queue_join(
        &self,
        ask: &CheckoutAsk<'_>,
        now: Millis,
        until: Millis,
        id: Uuid,
        denied: Denied,
    ) -> Result<Event, Denied> {
        let may_wait = match &denied {
            Denied::NoSeat { .. } => self.could_ever_fit(ask, now),
            Denied::Rule(r) => r.kind != RuleKind::Excluded,
            _ => false,
        };
        if !may_wait || ask.borrow_ms.is_some() {
            return Err(denied);
        }
        if self.queue.len() >= MAX_QUEUED {
            return Err(Denied::QueueFull { max: MAX_QUEUED });
        }
        Ok(Event::QueueJoined {
            entry: QueueEntry {
                id,
                feature: ask.feature.to_owned(),
                version: ask.version.map(str::to_owned),
                count: ask.count,
                client_id: ask.client_id.to_owned(),
                holder: ask.holder,
                user: ask.who.user.to_owned(),
                host: ask.who.host.to_owned(),
                queued_at: now,
                until,
                queued_seq: 0,
            },
        })
    }

    /// A client leaves the line.
    pub fn decide_queue_leave(&self, id: &Uuid, now: Millis) -> Result<Event, Denied> {
        match self.queue_entry(id) {
            Some(_) => Ok(Event::QueueLeft {
                id: *id,
                at: now,
                lapsed: false,
            }),
            None => Err(Denied::NotQueued),
        }
    }

    /// Entries whose time is up at `now`, as events (not applied).
    pub fn lapsed_in_queue(&self, now: Millis) -> Vec<Event> {
        self.queue
            .iter()
            .filter(|e| e.until <= now)
            .map(|e| Event::QueueLeft {
                id: e.id,
                at: now,
                lapsed: true,
            })
            .collect()
    }

    /// When the first entry's time is up.
    pub fn next_queue_deadline(&self) -> Option<Millis> {
        self.queue.iter().map(|e| e.until).min()
    }

    /// The grant the queue is owed now, if any: the first entry, in the order they joined,
    /// whose seats are free and that no earlier entry of its feature holds back. Apply it
    /// and ask again until `None`.
    pub fn next_queue_grant(&self, now: Millis, lease_ms: i64, granted_by: &str) -> Option<Event> {
        let mut held_back: Vec<&str> = Vec::new();
        for e in &self.queue {
            if e.until <= now || held_back.contains(&e.feature.as_str()) {
                continue;
            }
            match self.turn(e, now, lease_ms, granted_by) {
                Turn::Grant(ev) => return Some(*ev),
                Turn::Waits => held_back.push(&e.feature),
                Turn::Passed => {}
            }
        }
        None
    }

    /// How many of the first `before` entries of the line wait for seats of `feature` (or
    /// could take them now): a new checkout of the feature comes after them.
    pub(super) fn waiting_in_line(&self, feature: &str, before: usize, now: Millis) -> usize {
        self.queue
            .iter()
            .take(before)
            .filter(|e| e.feature == feature && e.until > now)
            .filter(|e| !matches!(self.turn(e, now, 0, ""), Turn::Passed))
            .count()
    }

    fn turn(&self, e: &QueueEntry, now: Millis, lease_ms: i64, granted_by: &str) -> Turn {
        let ask = e.ask();
        let Ok(candidates) = self.candidates(&ask, now) else {
            return Turn::Passed;
        };
        match self.decide_new(&candidates, &ask, now, lease_ms, e.id, granted_by) {
            Ok(ev) => Turn::Grant(Box::new(ev)),
            Err(Denied::NoSeat { .. }) if self.could_ever_fit(&ask, now) => Turn::Waits,
            Err(_) => Turn::Passed,
        }
    }

    /// Whether some pool the checkout may use is big enough for it (its count and
    /// overdraft now, or it starts later).
    fn could_ever_fit(&self, ask: &CheckoutAsk<'_>, now: Millis) -> bool {
        self.candidates(ask, now).is_ok_and(|pools| {
            pools.iter().any(|(_, p)| {
                p.expired_at(now).is_none()
                    && (p.count_at(now).saturating_add(p.overdraft_at(now)) >= ask.count
                        || p.next_start(now).is_some())
            })
        })
    }

    /// Applies a queue event (called by [`State::apply`]).
    pub(super) fn apply_queue(&mut self, event: &Event) {
        match event {
            Event::QueueJoined { entry } => self.queue.push(QueueEntry {
                queued_seq: self.seq + 1,
                ..entry.clone()
            }),
            Event::QueueLeft { id, .. } => self.queue.retain(|e| e.id != *id),
            Event::LeaseGranted { lease } if !self.queue.is_empty() => {
                self.queue.retain(|e| e.id != lease.id);
            }
            _ => {}
        }
    }

    /// The line after a failback (see [`State::merged_for_failback`]): the backup's,
    /// and the main's entries the backup never saw that joined while the main
    /// acknowledged alone (with a common history) or that are still waiting (without
    /// one), in the order they joined.
    pub(super) fn merge_queue(
        &mut self,
        main: &State,
        fork: Option<super::Fork>,
        next_seq: u64,
        now: Millis,
    ) {
        let queue = std::mem::take(&mut self.queue);
        self.queue = queue
            .into_iter()
            .filter(|e| !self.has_lease(&e.id))
            .collect();
        for e in &main.queue {
            if self.queue_entry(&e.id).is_some() || self.has_lease(&e.id) {
                continue;
            }
            let keep = match fork {
                Some(f) => {
                    e.queued_seq > f.seq && main.alone_from.is_some_and(|a| e.queued_seq >= a)
                }
                None => e.until > now,
            };
            if keep {
                self.queue.push(QueueEntry {
                    queued_seq: next_seq,
                    ..e.clone()
                });
            }
        }
        self.queue.sort_by_key(|e| e.queued_at);
    }
}
