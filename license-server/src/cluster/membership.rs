//! Who is in the cluster, decided from what the members say (pure: no I/O, no clock).
//!
//! A member's settings (`CLUSTER_MEMBER_HOSTIDS`, and itself) name the three members it
//! should run with; the raft membership in its log names the three it runs with. They
//! differ while a member is replaced (docs/design.md, "Three-member cluster"): the
//! operator starts the new member with an empty `DATA_DIR` and then restarts the two that
//! stay, one at a time, naming it instead of the member taken out. [`decide`] is what the
//! leader does about it; [`first_start`] is whether a member without a cluster log
//! creates the cluster's membership (a new cluster) or waits to be added (a replacement).

use std::collections::BTreeSet;

/// What this member knows of another member it is configured with, from its last hello.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerReport {
    pub hostid: String,
    /// Its last hello passed every check within `CLUSTER_MEMBER_TIMEOUT`.
    pub up: bool,
    /// Why it refuses this member, or this member refuses it (another cluster, the
    /// clock).
    pub refused: Option<String>,
    /// The three members its settings name, sorted (its last hello).
    pub settings: Option<Vec<String>>,
    /// It answered this member's last hello with its own, even if this member's checks
    /// refused it (its clock): `membership` is what it holds.
    pub heard: bool,
    /// The voters of the raft membership its log holds, sorted; `None`: it holds no
    /// cluster log (or has not said: `heard` is false).
    pub membership: Option<Vec<String>>,
}

/// What the leader does about the membership.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// The membership is the configured one: nothing.
    Keep,
    /// Add `new` as a learner, let it catch up, then change the voters to the configured
    /// three (`out` leaves).
    Replace { out: String, new: String },
}

/// Why the membership does not change now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hold {
    /// An expected step of a replacement has not happened yet (logged at INFO).
    Wait(String),
    /// The settings are wrong: an operator must correct them (logged at ERROR).
    Refuse(String),
}

impl Hold {
    pub fn message(&self) -> &str {
        match self {
            Hold::Wait(m) | Hold::Refuse(m) => m,
        }
    }
}

fn list(set: &[String]) -> String {
    set.join(", ")
}

fn minus(a: &[String], b: &[String]) -> Vec<String> {
    let b: BTreeSet<&String> = b.iter().collect();
    a.iter().filter(|x| !b.contains(x)).cloned().collect()
}

/// The leader's decision. `settings`: the three members this member's settings name
/// (sorted); `voters`: those of the raft membership (sorted; every configuration's while
/// a change is under way, `joint`); `peers`: the other two of `settings`.
pub fn decide(
    settings: &[String],
    voters: &[String],
    joint: bool,
    peers: &[PeerReport],
) -> Result<Action, Hold> {
    if joint {
        return Err(Hold::Wait(
            "a change of the membership is under way: the leader completes it".into(),
        ));
    }
    if settings == voters {
        return Ok(Action::Keep);
    }
    let (new, out) = (minus(settings, voters), minus(voters, settings));
    if new.len() != 1 || out.len() != 1 {
        return Err(Hold::Refuse(format!(
            "this member's CLUSTER_MEMBER_HOSTIDS name {} in place of {}, but the cluster's \
             members are {}: replace one member at a time; the membership is not changed",
            list(&new),
            list(&out),
            list(voters)
        )));
    }
    let (new, out) = (new[0].clone(), out[0].clone());
    for p in peers {
        if let Some(why) = &p.refused {
            return Err(Hold::Refuse(format!(
                "{why}; the membership is not changed until member {} passes the cluster's \
                 checks",
                p.hostid
            )));
        }
        if !p.up {
            return Err(Hold::Wait(format!(
                "waiting for member {} to answer before {out} is replaced by {new}",
                p.hostid
            )));
        }
        match &p.settings {
            Some(theirs) if theirs == settings => {}
            Some(theirs) if theirs == voters => {
                return Err(Hold::Wait(format!(
                    "member {} still names {out} in its CLUSTER_MEMBER_HOSTIDS: {out} is \
                     replaced by {new} once it names {new} (restart it with the new settings)",
                    p.hostid
                )));
            }
            theirs => {
                return Err(Hold::Refuse(format!(
                    "the settings of member {} name {}, this member's name {}: set \
                     CLUSTER_MEMBER_HOSTIDS alike on the three members (the cluster's \
                     members are {}); the membership is not changed",
                    p.hostid,
                    theirs.as_deref().map_or("nothing".into(), list),
                    list(settings),
                    list(voters)
                )));
            }
        }
        if p.hostid == new
            && let Some(theirs) = &p.membership
            && theirs != voters
        {
            return Err(Hold::Refuse(format!(
                "member {new} belongs to another cluster: its log holds the members {}; \
                 start it with an empty DATA_DIR to add it to this cluster (of {})",
                list(theirs),
                list(voters)
            )));
        }
    }
    Ok(Action::Replace { out, new })
}

/// Whether a member without a cluster log may create the cluster's membership: only a
/// new cluster's (no member it hears from holds a log, none that refuses it might, one
/// at least answered with the same settings and no log either); else it waits,
/// answering `UNAVAILABLE`, to be added by the leader (`Err`: why it waits).
///
/// A member this one refuses for its clock still answers with its hello, so two members
/// of a new cluster form it without the third whose clock is off, and it is added once
/// its clock is set right; a member that refuses this one (it names other members) may
/// hold a log this one does not know of, so this one waits.
pub fn first_start(settings: &[String], peers: &[PeerReport]) -> Result<(), String> {
    if let Some(p) = peers.iter().find(|p| p.membership.is_some()) {
        return Err(format!(
            "member {} holds the cluster's log: this member waits to be added by the \
             cluster's leader (once the other members' CLUSTER_MEMBER_HOSTIDS name it)",
            p.hostid
        ));
    }
    let refusal = |p: &PeerReport| {
        p.refused
            .as_ref()
            .map(|why| format!("{why}; this member waits to be added to a cluster"))
    };
    if let Some(why) = peers.iter().filter(|p| !p.heard).find_map(refusal) {
        return Err(why);
    }
    if peers
        .iter()
        .any(|p| p.up && p.settings.as_deref() == Some(settings))
    {
        return Ok(());
    }
    Err(peers.iter().find_map(refusal).unwrap_or_else(|| {
        "waiting to hear from another member: a new cluster's members create its \
         membership together, a new member of a running cluster is added by its leader"
            .into()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(m: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = m.iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    }

    fn peer(hostid: &str, settings: &[&str], membership: Option<&[&str]>) -> PeerReport {
        PeerReport {
            hostid: hostid.into(),
            up: true,
            refused: None,
            settings: Some(set(settings)),
            heard: true,
            membership: membership.map(set),
        }
    }

    const ABC: [&str; 3] = ["a", "b", "c"];
    const ABD: [&str; 3] = ["a", "b", "d"];

    #[test]
    fn the_leader_replaces_one_member_once_every_member_names_the_new_one() {
        let (new, old) = (set(&ABD), set(&ABC));
        // Nothing configured differently: nothing to do.
        assert_eq!(
            decide(&old, &old, false, &[peer("b", &ABC, Some(&ABC))]),
            Ok(Action::Keep)
        );
        // A and B name D, D is empty (or already a learner holding this cluster's log).
        for d in [None, Some(&ABC[..])] {
            assert_eq!(
                decide(
                    &new,
                    &old,
                    false,
                    &[peer("b", &ABD, Some(&ABC)), peer("d", &ABD, d)]
                ),
                Ok(Action::Replace {
                    out: "c".into(),
                    new: "d".into()
                })
            );
        }
    }

    #[test]
    fn a_replacement_waits_for_the_staying_member_s_restart_and_the_new_member() {
        let (new, old) = (set(&ABD), set(&ABC));
        let d = peer("d", &ABD, None);
        let e = decide(&new, &old, false, &[peer("b", &ABC, Some(&ABC)), d.clone()]).unwrap_err();
        assert!(
            matches!(&e, Hold::Wait(m) if m.contains("member b still names c")),
            "{e:?}"
        );
        let down = PeerReport {
            up: false,
            ..d.clone()
        };
        let e = decide(&new, &old, false, &[peer("b", &ABD, Some(&ABC)), down]).unwrap_err();
        assert!(
            matches!(&e, Hold::Wait(m) if m.contains("member d to answer")),
            "{e:?}"
        );
        let e = decide(&new, &old, true, &[peer("b", &ABD, Some(&ABC)), d]).unwrap_err();
        assert!(matches!(e, Hold::Wait(_)));
    }

    #[test]
    fn two_members_changed_disagreeing_settings_and_another_cluster_s_member_are_refused() {
        let old = set(&ABC);
        // Two at once.
        let e = decide(
            &set(&["a", "d", "e"]),
            &old,
            false,
            &[
                peer("d", &["a", "d", "e"], None),
                peer("e", &["a", "d", "e"], None),
            ],
        )
        .unwrap_err();
        assert!(
            matches!(&e, Hold::Refuse(m) if m.contains("d, e in place of b, c") && m.contains("one member at a time")),
            "{e:?}"
        );
        // D configured with a member that is not in the cluster.
        let e = decide(
            &set(&ABD),
            &old,
            false,
            &[
                peer("b", &ABD, Some(&ABC)),
                peer("d", &["a", "d", "x"], None),
            ],
        )
        .unwrap_err();
        assert!(
            matches!(&e, Hold::Refuse(m) if m.contains("settings of member d name a, d, x")),
            "{e:?}"
        );
        // D holds another cluster's log.
        let e = decide(
            &set(&ABD),
            &old,
            false,
            &[
                peer("b", &ABD, Some(&ABC)),
                peer("d", &ABD, Some(&["d", "e", "f"])),
            ],
        )
        .unwrap_err();
        assert!(
            matches!(&e, Hold::Refuse(m) if m.contains("d belongs to another cluster") && m.contains("d, e, f")),
            "{e:?}"
        );
        // A refused member.
        let refused = PeerReport {
            refused: Some("member d refuses this member".into()),
            ..peer("d", &ABD, None)
        };
        let e = decide(
            &set(&ABD),
            &old,
            false,
            &[peer("b", &ABD, Some(&ABC)), refused],
        )
        .unwrap_err();
        assert!(matches!(e, Hold::Refuse(_)), "{e:?}");
    }

    #[test]
    fn only_a_new_cluster_s_members_create_its_membership() {
        let abc = set(&ABC);
        // Another empty member with the same settings: a new cluster.
        assert_eq!(first_start(&abc, &[peer("b", &ABC, None)]), Ok(()));
        // A member holding a log: wait to be added.
        let e = first_start(
            &set(&ABD),
            &[peer("a", &ABD, Some(&ABC)), peer("b", &ABD, None)],
        )
        .unwrap_err();
        assert!(e.contains("member a holds the cluster's log"), "{e}");
        // Nobody heard, only refusals, or other settings: wait.
        assert!(first_start(&abc, &[]).is_err());
        let refused = PeerReport {
            hostid: "a".into(),
            refused: Some("member a refuses this member".into()),
            ..Default::default()
        };
        assert!(first_start(&set(&ABD), &[refused.clone(), peer("b", &ABD, None)]).is_err());
        // One whose clock this member refuses, heard to hold no log: the other two form
        // the cluster (it is added when its clock is right); heard to hold one: wait.
        let skewed = PeerReport {
            up: false,
            heard: true,
            ..refused.clone()
        };
        assert_eq!(
            first_start(&set(&ABD), &[skewed.clone(), peer("b", &ABD, None)]),
            Ok(())
        );
        let logged = PeerReport {
            membership: Some(set(&ABC)),
            ..skewed.clone()
        };
        assert!(first_start(&set(&ABD), &[logged, peer("b", &ABD, None)]).is_err());
        // Refused by all: waits, saying why.
        let e = first_start(&set(&ABD), &[skewed.clone(), skewed]).unwrap_err();
        assert!(e.contains("member a refuses this member"), "{e}");
        assert!(first_start(&abc, &[peer("b", &ABD, None)]).is_err());
        let silent = PeerReport {
            up: false,
            ..peer("b", &ABC, None)
        };
        assert!(first_start(&abc, &[silent]).is_err());
    }
}
