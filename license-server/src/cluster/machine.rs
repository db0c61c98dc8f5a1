//! The pool as a replicated state machine: the commands a cluster's leader proposes and
//! how every member applies them. Pure: no I/O, no clock; a command carries its time.
//!
//! Rights travel as the back office's signed answer, verbatim; every member verifies it
//! as it applies it ([`RightsCheck`]: the producer's key, addressed to a member of this
//! cluster), so counts that were not signed never enter any member's pool.
//!
//! A command is a request, not its result: "check out this feature for this client at
//! this time, with this new lease ID". Each member decides it against its own copy of the
//! [`State`] with the domain's `decide_*` and applies the events they return, in log
//! order. Every member holds the same state before each command, so every member decides
//! alike, and two checkouts proposed at once for the last seat are decided one after the
//! other: the second finds the seat taken.
//!
//! The line of waiting clients (`queue_secs`) is part of the pool too: a checkout that
//! may wait joins it when no seat is free ([`Command::Checkout`] with `queue`), a client
//! leaves it ([`Command::QueueLeave`]), and the leader serves it
//! ([`Command::ServeQueue`]: "lapse the places whose wait ended and grant the seats the
//! line is owed, as of `at`"). Serving is one command, not one proposal per grant: every
//! member decides it with the domain's [`State::next_queue_grant`], whose order (first
//! come, first served per feature) and lease IDs (the places' own) depend on the pool
//! alone, so one log entry — one majority write — grants every seat that freed, and a new
//! leader after a crash serves the same line in the same order.

use serde::{Deserialize, Serialize};
use shared::capability::{UsageInterval, UsageKey};
use uuid::Uuid;

use crate::domain::{
    CheckoutAsk, Denied, Event, Holder, LeaseRecord, Millis, QueueEntry, Rights, RightsCheck, State,
};
use crate::options::Who;

/// What a leader proposes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    /// The pool's lease-token key and history, chosen by the first leader (a later one
    /// changes nothing).
    Init {
        lease_key: String,
        history: Uuid,
    },
    /// A capability answer of one of the members (the token): its rights replace the
    /// pool's once it verified, unless it is older than the answer held.
    Rights {
        rights: Rights,
        at: Millis,
    },
    /// Lapsed leases are freed first, as of `at`.
    Checkout {
        feature: String,
        version: Option<String>,
        count: u32,
        client_id: String,
        /// The client's secret, hashed: it gets its own live lease back.
        #[serde(default, skip_serializing_if = "Holder::is_none")]
        holder: Holder,
        /// The lease whose token the client showed (checked by the proposing member):
        /// it gets that lease back.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        shown: Option<Uuid>,
        at: Millis,
        lease_ms: i64,
        /// The ID of the lease if one is granted.
        lease_id: Uuid,
        /// The member that proposed it.
        granted_by: String,
        /// A borrow for this long (milliseconds; `lease_ms` is then its length, within
        /// the proposer's binding and rights).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        borrow_ms: Option<i64>,
        /// The client waits in line for a seat when none is free (`queue_secs`): the
        /// place it takes. `None` for a client that already had a place (it picks its
        /// seat up, or its wait is over).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        queue: Option<QueueAsk>,
    },
    /// A client leaves the line.
    QueueLeave {
        id: Uuid,
        at: Millis,
    },
    /// Lapsed leases are freed and places whose wait ended leave the line, then the
    /// seats the line is owed are granted in its order, as of `at`, as leases of
    /// `lease_ms` (none without it: the proposer may not grant now) by `granted_by`.
    ServeQueue {
        at: Millis,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lease_ms: Option<i64>,
        granted_by: String,
    },
    Renew {
        id: Uuid,
        at: Millis,
        lease_ms: i64,
    },
    Return {
        id: Uuid,
        at: Millis,
    },
    /// By an operator.
    Release {
        id: Uuid,
        at: Millis,
    },
    /// Frees every lease lapsed at `at`.
    Expire {
        at: Millis,
    },
    /// Usage intervals the leader's meter closed: every member keeps them until the back
    /// office acknowledged them, so that a new leader reports what the old one did not.
    UsageClosed {
        intervals: Vec<UsageInterval>,
    },
    /// The back office acknowledged these intervals (it answered a report that carried
    /// them): no member reports them again.
    UsageReported {
        keys: Vec<UsageKey>,
    },
}

/// The place a checkout takes in line if no seat is free.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueAsk {
    /// The place's ID (the ID of the lease it is granted).
    pub id: Uuid,
    /// When the client gives up waiting.
    pub until: Millis,
}

impl Command {
    pub fn kind(&self) -> &'static str {
        match self {
            Command::Init { .. } => "init",
            Command::Rights { .. } => "rights",
            Command::Checkout { .. } => "checkout",
            Command::QueueLeave { .. } => "queue_leave",
            Command::ServeQueue { .. } => "serve_queue",
            Command::Renew { .. } => "renew",
            Command::Return { .. } => "return",
            Command::Release { .. } => "release",
            Command::Expire { .. } => "expire",
            Command::UsageClosed { .. } => "usage_closed",
            Command::UsageReported { .. } => "usage_reported",
        }
    }
}

/// What applying a command did, the same on every member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Outcome {
    /// Applied (or nothing to do: an `Init` after the first, rights already held).
    Done,
    /// Refused: older than the rights held.
    Older,
    /// Refused: the answer does not verify on this member (why).
    Unverified {
        error: String,
    },
    /// The lease after a checkout or a renewal; `renewed` when the client already held it.
    Lease {
        lease: LeaseRecord,
        renewed: bool,
    },
    /// The lease as it was, now released or returned.
    Ended {
        lease: LeaseRecord,
    },
    Denied {
        denied: Denied,
    },
    /// Leases freed because they lapsed.
    Expired {
        freed: usize,
    },
    /// The client's place in line: taken now (`joined`, because of `reason`) or held
    /// already.
    Queued {
        entry: QueueEntry,
        joined: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<Denied>,
    },
    /// The line served: the leases granted from it (each its place's ID) and the places
    /// whose wait ended, in order.
    Served {
        granted: Vec<Uuid>,
        lapsed: Vec<Uuid>,
    },
}

/// Applies `cmd` to `st`: decides, applies the events, says what happened. `check`
/// verifies rights (every member of a cluster checks alike: one producer key, one
/// membership).
pub fn apply(st: &mut State, cmd: &Command, check: &RightsCheck) -> Outcome {
    match cmd {
        Command::Init { lease_key, history } => {
            if st.lease_key.is_none() {
                st.apply(&Event::LeaseKeyCreated {
                    key: lease_key.clone(),
                });
            }
            if st.history.is_nil() {
                st.apply(&Event::HistoryStarted { history: *history });
            }
            Outcome::Done
        }
        Command::Rights { rights, at } => {
            let mut rights = rights.clone();
            if let Err(e) = check.verify(&mut rights) {
                return Outcome::Unverified {
                    error: e.to_string(),
                };
            }
            if rights.issued_at() < st.rights_issued_at() {
                return Outcome::Older;
            }
            if st.rights.as_ref() != Some(&rights) {
                st.apply(&Event::RightsUpdated { rights, at: *at });
            }
            Outcome::Done
        }
        Command::Checkout {
            feature,
            version,
            count,
            client_id,
            holder,
            shown,
            at,
            lease_ms,
            lease_id,
            granted_by,
            borrow_ms,
            queue,
        } => {
            expire(st, *at);
            let ask = CheckoutAsk {
                feature,
                version: version.as_deref(),
                count: *count,
                client_id,
                holder: *holder,
                borrow_ms: *borrow_ms,
                // A cluster's members decide alike from the log alone: no member's
                // options file has a say (docs/design.md, "Options file").
                who: Who::default(),
            };
            let holds = |id: &Uuid| *shown == Some(*id);
            // A client already in line keeps its place (two of its checkouts at once).
            if queue.is_some()
                && let Some(entry) = st.own_queue_entry(&ask, holds)
            {
                return Outcome::Queued {
                    entry: entry.clone(),
                    joined: false,
                    reason: None,
                };
            }
            match st.decide_checkout(&ask, *at, *lease_ms, *lease_id, granted_by, holds) {
                Ok(ev) => {
                    let (id, renewed) = match &ev {
                        Event::LeaseGranted { lease } => (lease.id, false),
                        Event::LeaseRenewed { id, .. } => (*id, true),
                        // decide_checkout returns nothing else.
                        _ => {
                            return Outcome::Denied {
                                denied: Denied::UnknownLease,
                            };
                        }
                    };
                    st.apply(&ev);
                    lease_outcome(st, &id, renewed)
                }
                Err(denied) => match queue {
                    Some(q) => join(st, &ask, *at, q, denied),
                    None => Outcome::Denied { denied },
                },
            }
        }
        Command::QueueLeave { id, at } => match st.decide_queue_leave(id, *at) {
            Ok(ev) => {
                st.apply(&ev);
                Outcome::Done
            }
            Err(denied) => Outcome::Denied { denied },
        },
        Command::ServeQueue {
            at,
            lease_ms,
            granted_by,
        } => serve_queue(st, *at, *lease_ms, granted_by),
        Command::Renew { id, at, lease_ms } => {
            expire(st, *at);
            match st.decide_renew(id, *at, *lease_ms) {
                Ok(ev) => {
                    st.apply(&ev);
                    lease_outcome(st, id, true)
                }
                Err(denied) => Outcome::Denied { denied },
            }
        }
        Command::Return { id, at } => end(st, id, st.decide_return(id, *at)),
        Command::Release { id, at } => end(st, id, st.decide_release(id, *at)),
        Command::Expire { at } => Outcome::Expired {
            freed: expire(st, *at),
        },
        Command::UsageClosed { intervals } => {
            st.apply(&Event::UsageClosed {
                intervals: intervals.clone(),
            });
            Outcome::Done
        }
        Command::UsageReported { keys } => {
            st.forget_usage(keys);
            Outcome::Done
        }
    }
}

/// A checkout that found no seat takes its place in line, when waiting may help.
fn join(
    st: &mut State,
    ask: &CheckoutAsk<'_>,
    at: Millis,
    q: &QueueAsk,
    denied: Denied,
) -> Outcome {
    match st.decide_queue_join(ask, at, q.until, q.id, denied.clone()) {
        Ok(ev) => {
            st.apply(&ev);
            match st.queue_entry(&q.id) {
                Some(entry) => Outcome::Queued {
                    entry: entry.clone(),
                    joined: true,
                    reason: Some(denied),
                },
                None => Outcome::Denied {
                    denied: Denied::NotQueued,
                },
            }
        }
        Err(denied) => Outcome::Denied { denied },
    }
}

/// Frees lapsed leases, lapses places whose wait ended, grants what the line is owed.
fn serve_queue(st: &mut State, at: Millis, lease_ms: Option<i64>, granted_by: &str) -> Outcome {
    expire(st, at);
    let mut lapsed = Vec::new();
    for ev in st.lapsed_in_queue(at) {
        if let Event::QueueLeft { id, .. } = &ev {
            lapsed.push(*id);
        }
        st.apply(&ev);
    }
    let mut granted = Vec::new();
    if let Some(lease_ms) = lease_ms {
        while granted.len() < crate::domain::MAX_QUEUED
            && let Some(ev) = st.next_queue_grant(at, lease_ms, granted_by)
        {
            if let Event::LeaseGranted { lease } = &ev {
                granted.push(lease.id);
            }
            st.apply(&ev);
        }
    }
    Outcome::Served { granted, lapsed }
}

fn lease_outcome(st: &State, id: &Uuid, renewed: bool) -> Outcome {
    match st.lease(id) {
        Some(lease) => Outcome::Lease { lease, renewed },
        None => Outcome::Denied {
            denied: Denied::UnknownLease,
        },
    }
}

fn end(st: &mut State, id: &Uuid, decided: Result<Event, Denied>) -> Outcome {
    match (decided, st.lease(id)) {
        (Ok(ev), Some(lease)) => {
            st.apply(&ev);
            Outcome::Ended { lease }
        }
        (Err(denied), _) => Outcome::Denied { denied },
        (Ok(_), None) => Outcome::Denied {
            denied: Denied::UnknownLease,
        },
    }
}

/// Frees the leases lapsed at `at`; returns how many.
fn expire(st: &mut State, at: Millis) -> usize {
    if st.next_expiry().is_none_or(|e| e > at) {
        return 0;
    }
    let events = st.expired(at);
    for ev in &events {
        st.apply(ev);
    }
    events.len()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::domain::rights::tests::producer;
    use shared::HostId;
    use shared::capability::Right;
    use shared::signing::{Signer, Verifier};

    const T0: Millis = 1_700_000_000_000;
    const LEASE: i64 = 60_000;

    fn host(h: &str) -> HostId {
        HostId::parse(h).unwrap()
    }

    /// The check of member `string:m2` of the cluster m1, m2, m3.
    pub(crate) fn check() -> RightsCheck {
        RightsCheck::new(
            Verifier::from_key(&producer().verifying_key()),
            host("string:m2"),
        )
        .in_cluster(vec![host("string:m1"), host("string:m3")])
    }

    /// Claims addressed to `to` as a member of the cluster m1, m2, m3, without rights.
    fn cluster_claims(to: &str) -> shared::capability::CapabilityClaims {
        let mut c = crate::domain::rights::tests::claims(to, None, 0);
        c.cluster = Some(shared::capability::ClusterInfo {
            id: "c".into(),
            members: ["string:m1", "string:m2", "string:m3"].map(host).to_vec(),
        });
        c
    }

    /// An answer to `to`, issued to the cluster m1, m2, m3, of `count` seats of `cad`,
    /// signed by `signer` at `iat`.
    pub(crate) fn answer(signer: &Signer, to: &str, count: u32, iat: i64) -> Rights {
        let mut c = cluster_claims(to);
        c.rights = vec![Right {
            activation_id: "A".into(),
            feature: "cad".into(),
            version: "1.0".into(),
            count,
            starts_at: 0,
            expires_at: None,
            max_borrow_secs: None,
            overdraft: 0,
        }];
        c.iat = iat;
        Rights::unverified(signer.sign(&c))
    }

    /// Rights of `count` seats, as a command: the answer to member m1.
    pub(crate) fn rights(count: u32, iat: i64) -> Command {
        Command::Rights {
            rights: answer(producer(), "string:m1", count, iat),
            at: T0,
        }
    }

    fn apply(st: &mut State, cmd: &Command) -> Outcome {
        super::apply(st, cmd, &check())
    }

    fn pool(count: u32) -> State {
        let mut st = State::default();
        assert_eq!(apply(&mut st, &rights(count, T0 / 1000)), Outcome::Done);
        st
    }

    fn checkout(client: &str, at: Millis) -> Command {
        Command::Checkout {
            borrow_ms: None,
            feature: "cad".into(),
            version: None,
            count: 1,
            client_id: client.into(),
            holder: Holder::of_secret(&format!("{client}'s secret")),
            shown: None,
            at,
            lease_ms: LEASE,
            lease_id: Uuid::new_v4(),
            granted_by: "string:m1".into(),
            queue: None,
        }
    }

    /// A borrow goes through the log like any grant: each member decides it from the
    /// signed policy, alike.
    #[test]
    fn a_borrow_is_decided_in_log_order_from_the_signed_policy() {
        let mut st = State::default();
        let mut c = cluster_claims("string:m1");
        c.rights = vec![Right {
            activation_id: "A".into(),
            feature: "cad".into(),
            version: "1.0".into(),
            count: 1,
            starts_at: 0,
            expires_at: None,
            max_borrow_secs: Some(3_600),
            overdraft: 0,
        }];
        c.iat = T0 / 1000;
        let rights = Command::Rights {
            rights: Rights::unverified(producer().sign(&c)),
            at: T0,
        };
        assert_eq!(apply(&mut st, &rights), Outcome::Done);
        let borrow = |ms: i64| {
            let mut cmd = checkout("laptop", T0);
            if let Command::Checkout {
                borrow_ms,
                lease_ms,
                ..
            } = &mut cmd
            {
                (*borrow_ms, *lease_ms) = (Some(ms), ms);
            }
            cmd
        };
        let cmd = borrow(3_600_000);
        let logged: Command = serde_json::from_slice(&serde_json::to_vec(&cmd).unwrap()).unwrap();
        assert_eq!(logged, cmd, "the log keeps the borrow");
        assert!(matches!(
            apply(&mut st, &borrow(3_600_001)),
            Outcome::Denied {
                denied: Denied::BorrowTooLong { max_secs: 3_600 }
            }
        ));
        match apply(&mut st, &logged) {
            Outcome::Lease { lease, .. } => {
                assert!(lease.kind.borrowed);
                assert_eq!(lease.expires_at, T0 + 3_600_000);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            apply(&mut st, &checkout("desk", T0)),
            Outcome::Denied {
                denied: Denied::NoSeat { .. }
            }
        ));
    }

    #[test]
    fn two_checkouts_proposed_at_once_for_the_last_seat_grant_one() {
        let mut st = pool(1);
        // Both were proposed against the same state (one free seat); the log orders them.
        let (a, b) = (checkout("a", T0), checkout("b", T0));
        assert!(matches!(
            apply(&mut st, &a),
            Outcome::Lease { renewed: false, .. }
        ));
        assert!(matches!(
            apply(&mut st, &b),
            Outcome::Denied {
                denied: Denied::NoSeat { .. }
            }
        ));
        assert_eq!(st.lease_count(), 1);
    }

    #[test]
    fn every_member_applying_the_same_commands_holds_the_same_pool() {
        let cmds = [
            Command::Init {
                lease_key: "k".into(),
                history: Uuid::new_v4(),
            },
            checkout("a", T0),
            checkout("b", T0 + 1),
            checkout("a", T0 + 2),
            checkout("c", T0 + 3),
            Command::Expire { at: T0 + LEASE + 2 },
            checkout("d", T0 + LEASE + 3),
        ];
        let run = || {
            let mut st = pool(2);
            let outcomes: Vec<Outcome> = cmds.iter().map(|c| apply(&mut st, c)).collect();
            (st, outcomes)
        };
        let (one, out1) = run();
        let (two, out2) = run();
        assert_eq!(out1, out2);
        assert_eq!(one.seq, two.seq);
        assert_eq!(one.features(T0 + LEASE + 3), two.features(T0 + LEASE + 3));
        // a's second checkout renewed its lease; c found no seat; the expiry freed a and
        // b (lapsed at T0 + LEASE + 2 at the latest), so d got one.
        assert!(matches!(out1[3], Outcome::Lease { renewed: true, .. }));
        assert!(matches!(out1[4], Outcome::Denied { .. }));
        assert_eq!(out1[5], Outcome::Expired { freed: 2 });
        assert!(matches!(out1[6], Outcome::Lease { renewed: false, .. }));
        assert_eq!(one.lease_key.as_deref(), Some("k"));
    }

    #[test]
    fn a_lapsed_lease_frees_its_seat_for_the_next_checkout() {
        let mut st = pool(1);
        let Outcome::Lease { lease, .. } = apply(&mut st, &checkout("a", T0)) else {
            panic!("granted");
        };
        assert!(matches!(
            apply(
                &mut st,
                &Command::Renew {
                    id: lease.id,
                    at: T0 + LEASE,
                    lease_ms: LEASE
                }
            ),
            Outcome::Denied {
                denied: Denied::UnknownLease
            }
        ));
        assert!(matches!(
            apply(&mut st, &checkout("b", T0 + LEASE)),
            Outcome::Lease { .. }
        ));
    }

    #[test]
    fn returns_releases_and_older_rights() {
        let mut st = pool(2);
        let Outcome::Lease { lease, .. } = apply(&mut st, &checkout("a", T0)) else {
            panic!("granted");
        };
        let ret = Command::Return {
            id: lease.id,
            at: T0 + 1,
        };
        assert!(matches!(apply(&mut st, &ret), Outcome::Ended { .. }));
        assert!(matches!(apply(&mut st, &ret), Outcome::Denied { .. }));
        assert_eq!(apply(&mut st, &rights(9, T0 / 1000 - 1)), Outcome::Older);
        assert_eq!(st.features(T0)[0].count, 2);
        // A second Init keeps the first key.
        for key in ["first", "second"] {
            apply(
                &mut st,
                &Command::Init {
                    lease_key: key.into(),
                    history: Uuid::new_v4(),
                },
            );
        }
        assert_eq!(st.lease_key.as_deref(), Some("first"));
    }

    #[test]
    fn rights_that_do_not_verify_on_a_member_change_nothing() {
        let mut st = pool(2);
        // Signed by another key; addressed to a server outside the cluster; counts
        // edited under the producer's signature.
        let rogue = Command::Rights {
            rights: answer(&Signer::generate(), "string:m1", 999, T0 / 1000 + 1),
            at: T0,
        };
        let stranger = Command::Rights {
            rights: answer(producer(), "string:elsewhere", 999, T0 / 1000 + 1),
            at: T0,
        };
        let good = answer(producer(), "string:m3", 999, T0 / 1000 + 1);
        let (head, rest) = good.token().split_once('.').unwrap();
        let (_, sig) = rest.split_once('.').unwrap();
        let bad_claims = answer(producer(), "string:m3", 5, T0 / 1000 + 1);
        let body = bad_claims.token().split('.').nth(1).unwrap();
        let spliced = Command::Rights {
            rights: Rights::unverified(format!("{head}.{body}.{sig}")),
            at: T0,
        };
        for cmd in [rogue, stranger, spliced] {
            assert!(
                matches!(apply(&mut st, &cmd), Outcome::Unverified { .. }),
                "{cmd:?}"
            );
            assert_eq!(st.features(T0)[0].count, 2);
        }
        // Another member's answer verifies here: the pool takes it.
        let other = Command::Rights {
            rights: good,
            at: T0,
        };
        assert_eq!(apply(&mut st, &other), Outcome::Done);
        assert_eq!(st.features(T0)[0].count, 999);
    }

    #[test]
    fn a_checkout_naming_another_clients_id_gets_a_lease_of_its_own() {
        let mut st = pool(3);
        let Outcome::Lease { lease: a, .. } = apply(&mut st, &checkout("a", T0)) else {
            panic!("granted");
        };
        // a's client ID without a's secret: another lease.
        let mut impostor = checkout("a", T0 + 1);
        if let Command::Checkout { holder, .. } = &mut impostor {
            *holder = Holder::of_secret("a guess");
        }
        let Outcome::Lease { lease: b, renewed } = apply(&mut st, &impostor) else {
            panic!("granted");
        };
        assert!(!renewed && b.id != a.id);
        // With a's secret, or showing a's lease (its token checked by the leader): a's.
        let Outcome::Lease { lease: again, .. } = apply(&mut st, &checkout("a", T0 + 2)) else {
            panic!("granted");
        };
        assert_eq!(again.id, a.id);
        let mut shows = checkout("a", T0 + 3);
        if let Command::Checkout { holder, shown, .. } = &mut shows {
            *holder = Holder::NONE;
            *shown = Some(a.id);
        }
        let Outcome::Lease {
            lease: shown,
            renewed,
        } = apply(&mut st, &shows)
        else {
            panic!("granted");
        };
        assert!(renewed && shown.id == a.id);
    }

    /// A checkout that may wait `secs` for a seat, taking place `id`.
    pub(crate) fn queued(client: &str, at: Millis, id: Uuid, secs: i64) -> Command {
        let mut cmd = checkout(client, at);
        if let Command::Checkout { queue, .. } = &mut cmd {
            *queue = Some(QueueAsk {
                id,
                until: at + secs * 1000,
            });
        }
        cmd
    }

    pub(crate) fn serve(at: Millis) -> Command {
        Command::ServeQueue {
            at,
            lease_ms: Some(LEASE),
            granted_by: "string:m1".into(),
        }
    }

    /// The IDs of three places in line.
    pub(crate) fn places() -> [Uuid; 3] {
        [Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4()]
    }

    #[test]
    fn the_line_is_decided_alike_on_every_member_and_served_in_the_order_clients_joined() {
        let [p1, p2, p3] = places();
        let holder = Uuid::new_v4();
        let mut first = checkout("holder", T0);
        if let Command::Checkout { lease_id, .. } = &mut first {
            *lease_id = holder;
        }
        let cmds = [
            first,
            queued("q1", T0 + 1, p1, 600),
            queued("q2", T0 + 2, p2, 600),
            queued("q3", T0 + 3, p3, 600),
            // Nothing frees: nothing granted; a newcomer without a wait does not jump the
            // line.
            serve(T0 + 4),
            checkout("newcomer", T0 + 4),
            Command::Return {
                id: holder,
                at: T0 + 5,
            },
            // One command grants the freed seat to the first in line.
            serve(T0 + 6),
            serve(T0 + 7),
            Command::QueueLeave { id: p2, at: T0 + 8 },
            Command::Return { id: p1, at: T0 + 9 },
            serve(T0 + 10),
        ];
        let run = || {
            let mut st = pool(1);
            let out: Vec<Outcome> = cmds.iter().map(|c| apply(&mut st, c)).collect();
            (st, out)
        };
        let ((one, out1), (two, out2)) = (run(), run());
        assert_eq!(out1, out2, "every member decides alike");
        assert_eq!(one.seq, two.seq);
        assert_eq!(one.queue(), two.queue());
        for (i, (place, position)) in [(p1, 1), (p2, 2), (p3, 3)].into_iter().enumerate() {
            match &out1[i + 1] {
                Outcome::Queued {
                    entry,
                    joined: true,
                    reason: Some(Denied::NoSeat { .. }),
                } => {
                    assert_eq!(entry.id, place);
                    assert_eq!(one.queue_position(&place).unwrap_or(position), position);
                }
                other => panic!("{other:?}"),
            }
        }
        let served = |o: &Outcome| match o {
            Outcome::Served { granted, lapsed } => (granted.clone(), lapsed.clone()),
            other => panic!("{other:?}"),
        };
        assert_eq!(served(&out1[4]), (vec![], vec![]));
        assert!(matches!(
            out1[5],
            Outcome::Denied {
                denied: Denied::NoSeat { .. }
            }
        ));
        assert_eq!(served(&out1[7]), (vec![p1], vec![]));
        assert_eq!(served(&out1[8]), (vec![], vec![]));
        assert_eq!(out1[9], Outcome::Done);
        // q2 left: the next seat is q3's.
        assert_eq!(served(&out1[11]), (vec![p3], vec![]));
        assert!(one.queue().is_empty());
        assert_eq!(one.lease_count(), 1);
        assert_eq!(
            apply(
                &mut one.clone(),
                &Command::QueueLeave {
                    id: p2,
                    at: T0 + 11
                }
            ),
            Outcome::Denied {
                denied: Denied::NotQueued
            }
        );
    }

    #[test]
    fn a_queued_client_picks_its_seat_up_by_its_secret_and_an_impostor_neither_takes_nor_holds_it()
    {
        let mut st = pool(1);
        let [place, other, _] = places();
        let Outcome::Lease { lease: held, .. } = apply(&mut st, &checkout("holder", T0)) else {
            panic!("granted");
        };
        assert!(matches!(
            apply(&mut st, &queued("q", T0 + 1, place, 60)),
            Outcome::Queued { joined: true, .. }
        ));
        // Its checkout again, with its secret: its place, not a second one.
        match apply(&mut st, &queued("q", T0 + 2, Uuid::new_v4(), 60)) {
            Outcome::Queued {
                entry,
                joined: false,
                ..
            } => assert_eq!(entry.id, place),
            o => panic!("{o:?}"),
        }
        // q's client ID without q's secret: a place of its own, behind q.
        let mut impostor = queued("q", T0 + 3, other, 60);
        if let Command::Checkout { holder, .. } = &mut impostor {
            *holder = Holder::of_secret("a guess");
        }
        assert!(matches!(
            apply(&mut st, &impostor),
            Outcome::Queued { joined: true, entry, .. } if entry.id == other
        ));
        apply(
            &mut st,
            &Command::Return {
                id: held.id,
                at: T0 + 4,
            },
        );
        apply(&mut st, &serve(T0 + 5));
        // q picks the seat granted to its place up (a renewal of that lease).
        let mut pick = checkout("q", T0 + 6);
        if let Command::Checkout { lease_id, .. } = &mut pick {
            *lease_id = Uuid::new_v4();
        }
        match apply(&mut st, &pick) {
            Outcome::Lease { lease, renewed } => assert!(renewed && lease.id == place),
            o => panic!("{o:?}"),
        }
        assert_eq!(st.lease_count(), 1);
        assert_eq!(st.queue().len(), 1, "the impostor still waits");
    }

    #[test]
    fn a_place_lapses_at_its_time_and_blocks_nobody() {
        let mut st = pool(1);
        let [short, long, _] = places();
        let Outcome::Lease { lease: held, .. } = apply(&mut st, &checkout("holder", T0)) else {
            panic!("granted");
        };
        apply(&mut st, &queued("short", T0, short, 2));
        apply(&mut st, &queued("long", T0, long, 600));
        match apply(&mut st, &serve(T0 + 2_000)) {
            Outcome::Served { granted, lapsed } => {
                assert!(granted.is_empty());
                assert_eq!(lapsed, vec![short]);
            }
            o => panic!("{o:?}"),
        }
        // Its checkout after its wait ended and without a place: no seat, no new place.
        let mut late = checkout("short", T0 + 2_001);
        if let Command::Checkout { queue, .. } = &mut late {
            *queue = None;
        }
        assert!(matches!(apply(&mut st, &late), Outcome::Denied { .. }));
        apply(
            &mut st,
            &Command::Return {
                id: held.id,
                at: T0 + 2_002,
            },
        );
        match apply(&mut st, &serve(T0 + 2_003)) {
            Outcome::Served { granted, .. } => assert_eq!(granted, vec![long]),
            o => panic!("{o:?}"),
        }
        // Without a lease length (the proposer may not grant now) nothing is granted.
        let mut st = pool(1);
        let Outcome::Lease { lease: held, .. } = apply(&mut st, &checkout("holder", T0)) else {
            panic!("granted");
        };
        apply(&mut st, &queued("x", T0, Uuid::new_v4(), 60));
        apply(
            &mut st,
            &Command::Return {
                id: held.id,
                at: T0 + 1,
            },
        );
        let none = Command::ServeQueue {
            at: T0 + 1,
            lease_ms: None,
            granted_by: "string:m1".into(),
        };
        assert_eq!(
            apply(&mut st, &none),
            Outcome::Served {
                granted: vec![],
                lapsed: vec![]
            }
        );
        assert_eq!((st.lease_count(), st.queue().len()), (0, 1));
    }

    #[test]
    fn closed_usage_is_kept_by_every_member_until_the_back_office_acknowledged_it() {
        let interval = |start: i64| shared::capability::UsageInterval {
            feature: "cad".into(),
            version: "1.0".into(),
            starts_at: start,
            ends_at: start + 300,
            served_by: host("string:m1"),
            served_from: start,
            served_until: start + 300,
            count: 1,
            peak: 1,
            seat_secs: 30,
            grants: 2,
            denials: Default::default(),
            true_denials: 0,
            borrowed: 0,
            overdraft: 0,
            queued: 0,
        };
        let (a, b) = (interval(1_000), interval(1_300));
        let cmds = [
            Command::UsageClosed {
                intervals: vec![a.clone(), b.clone()],
            },
            // A second commit of the same interval keeps one.
            Command::UsageClosed {
                intervals: vec![a.clone()],
            },
            Command::UsageReported {
                keys: vec![a.key()],
            },
        ];
        let logged: Vec<Command> = cmds
            .iter()
            .map(|c| serde_json::from_slice(&serde_json::to_vec(c).unwrap()).unwrap())
            .collect();
        assert_eq!(logged, cmds, "the log keeps the intervals");
        let mut st = pool(1);
        for c in &logged {
            assert_eq!(apply(&mut st, c), Outcome::Done);
        }
        assert_eq!(st.usage.keys().cloned().collect::<Vec<_>>(), vec![b.key()]);
    }
}
