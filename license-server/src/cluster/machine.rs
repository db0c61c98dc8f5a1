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

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::{
    CheckoutAsk, Denied, Event, Holder, LeaseRecord, Millis, Rights, RightsCheck, State,
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
}

impl Command {
    pub fn kind(&self) -> &'static str {
        match self {
            Command::Init { .. } => "init",
            Command::Rights { .. } => "rights",
            Command::Checkout { .. } => "checkout",
            Command::Renew { .. } => "renew",
            Command::Return { .. } => "return",
            Command::Release { .. } => "release",
            Command::Expire { .. } => "expire",
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
                Err(denied) => Outcome::Denied { denied },
            }
        }
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
    }
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
}
