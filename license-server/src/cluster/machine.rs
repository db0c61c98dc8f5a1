//! The pool as a replicated state machine: the commands a cluster's leader proposes and
//! how every member applies them. Pure: no I/O, no clock; a command carries its time.
//!
//! A command is a request, not its result: "check out this feature for this client at
//! this time, with this new lease ID". Each member decides it against its own copy of the
//! [`State`] with the domain's `decide_*` and applies the events they return, in log
//! order. Every member holds the same state before each command, so every member decides
//! alike, and two checkouts proposed at once for the last seat are decided one after the
//! other: the second finds the seat taken.

use serde::{Deserialize, Serialize};
use shared::capability::Right;
use uuid::Uuid;

use crate::domain::{CheckoutAsk, Denied, Event, LeaseRecord, Millis, State};

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
    /// A verified capability answer's rights (an older answer than the rights held
    /// changes nothing).
    Rights {
        rights: Vec<Right>,
        at: Millis,
        issued_at: i64,
    },
    /// Lapsed leases are freed first, as of `at`.
    Checkout {
        feature: String,
        version: Option<String>,
        count: u32,
        client_id: String,
        at: Millis,
        lease_ms: i64,
        /// The ID of the lease if one is granted.
        lease_id: Uuid,
        /// The member that proposed it.
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

/// Applies `cmd` to `st`: decides, applies the events, says what happened.
pub fn apply(st: &mut State, cmd: &Command) -> Outcome {
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
        Command::Rights {
            rights,
            at,
            issued_at,
        } => {
            if *issued_at < st.rights_issued_at {
                return Outcome::Older;
            }
            if *rights != st.rights || st.rights_updated_at.is_none() {
                st.apply(&Event::RightsUpdated {
                    rights: rights.clone(),
                    at: *at,
                    issued_at: *issued_at,
                });
            }
            Outcome::Done
        }
        Command::Checkout {
            feature,
            version,
            count,
            client_id,
            at,
            lease_ms,
            lease_id,
            granted_by,
        } => {
            expire(st, *at);
            let ask = CheckoutAsk {
                feature,
                version: version.as_deref(),
                count: *count,
                client_id,
            };
            match st.decide_checkout(&ask, *at, *lease_ms, *lease_id, granted_by) {
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
mod tests {
    use super::*;

    const T0: Millis = 1_700_000_000_000;
    const LEASE: i64 = 60_000;

    fn pool(count: u32) -> State {
        let mut st = State::default();
        let rights = vec![Right {
            activation_id: "A".into(),
            feature: "cad".into(),
            version: "1.0".into(),
            count,
            starts_at: 0,
            expires_at: None,
        }];
        assert_eq!(
            apply(
                &mut st,
                &Command::Rights {
                    rights,
                    at: T0,
                    issued_at: T0 / 1000,
                }
            ),
            Outcome::Done
        );
        st
    }

    fn checkout(client: &str, at: Millis) -> Command {
        Command::Checkout {
            feature: "cad".into(),
            version: None,
            count: 1,
            client_id: client.into(),
            at,
            lease_ms: LEASE,
            lease_id: Uuid::new_v4(),
            granted_by: "string:m1".into(),
        }
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
        let older = Command::Rights {
            rights: Vec::new(),
            at: T0,
            issued_at: T0 / 1000 - 1,
        };
        assert_eq!(apply(&mut st, &older), Outcome::Older);
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
}
