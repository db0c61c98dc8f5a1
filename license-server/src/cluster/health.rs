//! Who is up: each member says hello to the other two every `CLUSTER_HEARTBEAT_INTERVAL`
//! and counts one down when it has not answered for `CLUSTER_MEMBER_TIMEOUT` (the seed's
//! 1 s and 5 s). A hello also checks the other member is who and where this member
//! expects (its hostid, settings naming the same three members or, while a member is
//! replaced, two of them) and that its clock agrees within an hour; a member that fails
//! those checks is refused: no raft message goes to it, and the error naming it is
//! logged and shown in the status. The last hello of each member (its settings, the
//! membership its log holds) is kept for the decisions of [`super::membership`]. A member whose operator
//! settings differ (`ADMIN_ACCESS` and the operator tokens, compared as an HMAC keyed
//! with `PAIR_TOKEN`) is named in an error log and in the status, and not refused.

use std::time::{Duration, Instant};

use parking_lot::Mutex;
use shared::HostId;
use shared::capability::ClusterStatus;

use super::network::{HelloError, Wire};
use super::{Hello, NodeId, now_ms};
use crate::settings::CLUSTER_MAX_CLOCK_SKEW;

/// Another member, as configured.
#[derive(Debug, Clone)]
pub struct Peer {
    pub id: NodeId,
    pub hostid: HostId,
    /// `CLUSTER_MEMBER_URIS`: where this member reaches it.
    pub url: String,
}

/// What the hellos found about a member.
#[derive(Debug, Clone, Default)]
pub struct PeerState {
    /// The last answer that passed every check.
    pub last_ok: Option<Instant>,
    /// The same, in Unix milliseconds (for the status).
    pub last_ok_ms: Option<i64>,
    /// Its URL for clients, as it says (`PUBLIC_URL`).
    pub public_url: Option<String>,
    /// Its clock minus ours, at the last answer (ms; half the round trip is allowed for).
    pub clock_offset_ms: Option<i64>,
    /// Why it is refused (another cluster, another hostid, its clock): no raft message
    /// goes to it while set.
    pub refused: Option<String>,
    /// Why the last hello failed (did not answer).
    pub last_error: Option<String>,
    /// Its operator settings differ from this member's (logged once per change; it is
    /// not refused for it: the pool matters more).
    pub admin_differs: bool,
    /// Its last hello that passed every check.
    pub hello: Option<Hello>,
    /// What its last answer said of its cluster log, even when this member's checks
    /// refused it (`Some(None)`: it holds none); `None`: unknown (it refused this member,
    /// or never answered).
    pub log: Option<Option<Vec<String>>>,
}

pub struct Health {
    pub peers: Vec<Peer>,
    state: Mutex<Vec<PeerState>>,
    timeout: Duration,
}

impl Health {
    pub fn new(peers: Vec<Peer>, timeout: Duration) -> Health {
        let state = Mutex::new(vec![PeerState::default(); peers.len()]);
        Health {
            peers,
            state,
            timeout,
        }
    }

    fn index(&self, id: NodeId) -> Option<usize> {
        self.peers.iter().position(|p| p.id == id)
    }

    pub fn peer(&self, id: NodeId) -> Option<&Peer> {
        self.index(id).map(|i| &self.peers[i])
    }

    /// Where to send raft messages for `id`, or why none go.
    pub fn url_for(&self, id: NodeId) -> Result<String, String> {
        let i = self
            .index(id)
            .ok_or_else(|| format!("node {id} is not a member of this cluster"))?;
        match &self.state.lock()[i].refused {
            Some(why) => Err(why.clone()),
            None => Ok(self.peers[i].url.clone()),
        }
    }

    pub fn states(&self) -> Vec<PeerState> {
        self.state.lock().clone()
    }

    /// Whether member `id` is up (see [`Health::is_up`]).
    pub fn up(&self, id: NodeId) -> bool {
        self.index(id)
            .is_some_and(|i| self.is_up(&self.state.lock()[i]))
    }

    /// Whether a member answered every check within `CLUSTER_MEMBER_TIMEOUT`.
    pub fn is_up(&self, s: &PeerState) -> bool {
        s.refused.is_none() && s.last_ok.is_some_and(|t| t.elapsed() < self.timeout)
    }

    /// The cluster status from this member's links to the other members of the raft
    /// membership (`voters`, this one among them; else `not_operational`).
    pub fn status(&self, me: NodeId, voters: &[NodeId]) -> ClusterStatus {
        if !voters.contains(&me) {
            return ClusterStatus::NotOperational;
        }
        let st = self.state.lock();
        let links = self
            .peers
            .iter()
            .zip(st.iter())
            .filter(|(p, s)| voters.contains(&p.id) && self.is_up(s))
            .count();
        ClusterStatus::of_links(links)
    }

    /// What this member knows of each other member it is configured with.
    pub fn reports(&self) -> Vec<super::membership::PeerReport> {
        let st = self.state.lock();
        self.peers
            .iter()
            .zip(st.iter())
            .map(|(p, s)| super::membership::PeerReport {
                hostid: p.hostid.to_string(),
                up: self.is_up(s),
                refused: s.refused.clone(),
                settings: s.hello.as_ref().map(|h| h.members.clone()),
                heard: s.log.is_some(),
                membership: s.log.clone().flatten(),
            })
            .collect()
    }

    /// A member's URL for clients: what it says, else where this member reaches it.
    pub fn client_url(&self, id: NodeId) -> Option<String> {
        let i = self.index(id)?;
        let st = self.state.lock();
        Some(
            st[i]
                .public_url
                .clone()
                .unwrap_or_else(|| self.peers[i].url.clone()),
        )
    }

    /// Records a hello's outcome; logs what changed.
    fn record(&self, i: usize, outcome: Result<(Hello, i64), HelloError>, ours: &Hello) {
        let peer = &self.peers[i];
        let mut all = self.state.lock();
        let s = &mut all[i];
        let was_up = self.is_up(s);
        match outcome {
            Ok((theirs, offset)) => {
                s.clock_offset_ms = Some(offset);
                // What it holds, if it is the member expected there (else unknown).
                s.log =
                    (theirs.hostid == peer.hostid.to_string()).then(|| theirs.membership.clone());
                let refused = check(peer, &theirs, ours, offset);
                if refused != s.refused {
                    match &refused {
                        Some(why) => {
                            tracing::error!(member = %peer.hostid, url = %peer.url, "{why}")
                        }
                        None => {
                            tracing::info!(member = %peer.hostid, "the member passes the cluster's checks again")
                        }
                    }
                }
                s.refused = refused;
                // A member that sends none (an older version) is not compared.
                let differs = theirs.admin.is_some() && theirs.admin != ours.admin;
                if differs != s.admin_differs {
                    if differs {
                        tracing::error!(member = %peer.hostid, "{}", admin_differs(&peer.hostid));
                    } else {
                        tracing::info!(member = %peer.hostid, "the member's operator settings agree with this member's again");
                    }
                    s.admin_differs = differs;
                }
                if s.refused.is_none() {
                    s.last_ok = Some(Instant::now());
                    s.last_ok_ms = Some(now_ms());
                    s.public_url = theirs.public_url.clone();
                    s.last_error = None;
                    s.hello = Some(theirs);
                }
            }
            Err(HelloError::Refused(why)) => {
                let why = format!(
                    "member {} ({}) refuses this member: {why}",
                    peer.hostid, peer.url
                );
                if s.refused.as_ref() != Some(&why) {
                    tracing::error!(member = %peer.hostid, "{why}");
                }
                s.refused = Some(why);
                s.log = None;
            }
            Err(HelloError::Unreachable(why)) => {
                if s.last_error.is_none() {
                    tracing::debug!(member = %peer.hostid, error = %why, "member did not answer");
                }
                s.last_error = Some(why);
            }
        }
        let up = self.is_up(s);
        if was_up != up {
            if up {
                tracing::info!(member = %peer.hostid, url = %peer.url, "cluster member is up");
            } else {
                tracing::warn!(
                    member = %peer.hostid,
                    url = %peer.url,
                    error = s.refused.as_deref().or(s.last_error.as_deref()).unwrap_or("no answer"),
                    "cluster member is down (no good answer within CLUSTER_MEMBER_TIMEOUT)"
                );
            }
        }
    }

    /// Marks members down whose last good answer is too old (logged once).
    fn expire(&self) {
        let mut all = self.state.lock();
        for (s, peer) in all.iter_mut().zip(&self.peers) {
            if s.refused.is_none() && s.last_ok.is_some_and(|t| t.elapsed() >= self.timeout) {
                tracing::warn!(
                    member = %peer.hostid,
                    url = %peer.url,
                    error = s.last_error.as_deref().unwrap_or("no answer"),
                    "cluster member is down (no answer within CLUSTER_MEMBER_TIMEOUT)"
                );
                s.last_ok = None;
            }
        }
    }

    /// Says hello to every member each `interval` until `stop`.
    pub async fn run(
        &self,
        wire: Wire,
        ours: impl Fn() -> Hello,
        interval: Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            let hello = ours();
            let calls = self.peers.iter().map(|p| {
                let (wire, hello) = (&wire, &hello);
                async move {
                    let sent = now_ms();
                    let answer = wire
                        .hello(&p.url, hello, interval.max(Duration::from_millis(500)))
                        .await;
                    let back = now_ms();
                    answer.map(|theirs| {
                        let offset = theirs.time_ms - (sent + back) / 2;
                        (theirs, offset)
                    })
                }
            });
            let results = futures_util::future::join_all(calls).await;
            for (i, r) in results.into_iter().enumerate() {
                self.record(i, r, &hello);
            }
            self.expire();
        }
    }
}

/// Whether two members' settings are of one cluster: the same three members, or (while a
/// member is replaced, its settings changed on some members and not yet on others) two of
/// them.
pub fn same_cluster(theirs: &[String], ours: &[String]) -> bool {
    theirs.len() == ours.len()
        && theirs.iter().filter(|m| ours.contains(m)).count() + 1 >= ours.len()
}

/// The error for a server whose settings name another cluster's members.
pub fn another_cluster(hostid: &str, theirs: &[String], ours: &[String]) -> String {
    format!(
        "member {hostid} belongs to another cluster: its members are {}, this cluster's are {}",
        theirs.join(", "),
        ours.join(", ")
    )
}

/// Whether a member's hello passes: the hostid expected at its URL, settings of this
/// cluster ([`same_cluster`]), a clock within the limit. `None` when it does; else the
/// error naming it.
pub fn check(peer: &Peer, theirs: &Hello, ours: &Hello, offset_ms: i64) -> Option<String> {
    if theirs.hostid != peer.hostid.to_string() {
        return Some(format!(
            "the member at {} answers as {}, but CLUSTER_MEMBER_HOSTIDS expects {} there: \
             two members with one hostid, or the URLs in another order than the hostids",
            peer.url, theirs.hostid, peer.hostid
        ));
    }
    if !same_cluster(&theirs.members, &ours.members) {
        return Some(another_cluster(
            &peer.hostid.to_string(),
            &theirs.members,
            &ours.members,
        ));
    }
    let limit = CLUSTER_MAX_CLOCK_SKEW.as_millis() as i64;
    if offset_ms.abs() > limit {
        return Some(clock_error(&peer.hostid.to_string(), offset_ms));
    }
    None
}

/// What is said of a member whose operator settings differ from this member's.
pub fn admin_differs(hostid: &HostId) -> String {
    format!(
        "the operator settings of member {hostid} differ from this member's: set ADMIN_ACCESS, \
         ADMIN_TOKEN and ADMIN_READONLY_TOKEN the same on the three members (an operator \
         would otherwise be let in, or kept out, depending on the member asked)"
    )
}

/// The error for a member whose clock is `offset_ms` off ours.
pub fn clock_error(hostid: &str, offset_ms: i64) -> String {
    format!(
        "the clock of member {hostid} is {} {} this member's; members' clocks must agree \
         within {}: the cluster does not form with it until its clock is set right",
        shared::duration::format(Duration::from_millis(offset_ms.unsigned_abs())),
        if offset_ms > 0 { "ahead of" } else { "behind" },
        shared::duration::format(CLUSTER_MAX_CLOCK_SKEW),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(hostid: &str, members: &[&str]) -> Hello {
        Hello {
            hostid: hostid.into(),
            members: members.iter().map(|m| m.to_string()).collect(),
            time_ms: 0,
            public_url: None,
            admin: None,
            membership: None,
        }
    }

    #[test]
    fn a_hello_from_the_wrong_member_cluster_or_clock_is_refused_by_name() {
        let peer = Peer {
            id: 2,
            hostid: HostId::parse("string:b").unwrap(),
            url: "http://b:1".into(),
        };
        let three = ["string:a", "string:b", "string:c"];
        let ours = hello("string:a", &three);
        assert_eq!(
            check(&peer, &hello("string:b", &three), &ours, 59 * 60_000),
            None
        );
        let e = check(&peer, &hello("string:c", &three), &ours, 0).unwrap();
        assert!(e.contains("answers as string:c"), "{e}");
        // Settings one member apart: a member being replaced (the new one is named on
        // some members already); two apart: another cluster.
        let replacing = ["string:a", "string:b", "string:d"];
        assert_eq!(check(&peer, &hello("string:b", &replacing), &ours, 0), None);
        let other = ["string:b", "string:x", "string:y"];
        let e = check(&peer, &hello("string:b", &other), &ours, 0).unwrap();
        assert!(
            e.contains("another cluster") && e.contains("string:x"),
            "{e}"
        );
        let e = check(&peer, &hello("string:b", &three), &ours, -(61 * 60_000)).unwrap();
        assert!(e.contains("member string:b") && e.contains("behind"), "{e}");
    }

    /// What a member's answers tell of its cluster log, for a new cluster's start: known
    /// from an answer refused for the clock (the member holds none, or its membership),
    /// unknown from a server that is not the member expected, or that refuses this one.
    #[test]
    fn an_answer_refused_for_the_clock_still_tells_whether_the_member_holds_a_log() {
        let three = ["string:a", "string:b", "string:c"];
        let peer = Peer {
            id: 2,
            hostid: HostId::parse("string:b").unwrap(),
            url: "http://b:1".into(),
        };
        let health = Health::new(vec![peer], Duration::from_secs(5));
        let ours = hello("string:a", &three);
        let two_hours = 2 * 3_600_000;
        health.record(0, Ok((hello("string:b", &three), two_hours)), &ours);
        let r = &health.reports()[0];
        assert!(
            !r.up && r.refused.is_some() && r.heard && r.membership.is_none(),
            "{r:?}"
        );
        let mut holding = hello("string:b", &three);
        holding.membership = Some(three.iter().map(|m| m.to_string()).collect());
        health.record(0, Ok((holding, two_hours)), &ours);
        assert_eq!(
            health.reports()[0].membership.as_ref().map(Vec::len),
            Some(3)
        );
        // Another server at its URL, or a refusal: nothing known of its log.
        health.record(0, Ok((hello("string:x", &three), 0)), &ours);
        assert!(!health.reports()[0].heard);
        health.record(0, Ok((hello("string:b", &three), 0)), &ours);
        assert!(health.reports()[0].heard && health.reports()[0].up);
        health.record(0, Err(HelloError::Refused("no".into())), &ours);
        assert!(!health.reports()[0].heard);
    }
}
