//! A three-member failover cluster (`CLUSTER_MEMBER_HOSTIDS`): three equal license servers
//! serve one pool, every change committed by a majority (raft, with openraft), so that
//! licenses are served while any two members see each other and never by a member cut
//! off from the other two.
//!
//! # How it works
//!
//! - Each member is a raft node whose ID is derived from its hostid ([`node_id`]); the
//!   membership is three hostids. A new cluster's members create it from their settings
//!   (this member and its `CLUSTER_MEMBER_HOSTIDS`) once one has heard from another
//!   with the same settings and no log either (openraft accepts the same membership from
//!   each); a member without a log that reaches a member holding one never creates a
//!   membership: it waits to be added, answering `UNAVAILABLE` ([`membership`]).
//! - A member whose machine died for good is replaced: the operator starts the new member
//!   with an empty `DATA_DIR` and settings naming the two that stay, then restarts those
//!   two one at a time with settings naming it instead of the one taken out (the hellos
//!   of members whose settings are one member apart pass, so the two keep serving). When
//!   the leader's settings and both others' hellos name the same three, one member away
//!   from the raft membership, and the new member answers, the leader adds it as a
//!   learner, waits until it has caught up, and changes the voters (openraft's joint
//!   consensus); the member taken out gets no entry more, is refused by the others as a
//!   stranger and says `not_operational`. Anything else (two members changed at once,
//!   settings that disagree, a new member holding another cluster's log) changes nothing
//!   and is logged at ERROR and shown in the status (`membership_problem`). The cluster's
//!   status, and the member URLs given to clients, follow the raft membership.
//! - The pool is the state machine ([`machine`]): the leader proposes commands ("check
//!   out this for this client at this time, with this lease ID"), every member decides and
//!   applies them in log order against its own copy of the [`State`], so every copy is
//!   the same and no two checkouts can take one seat.
//! - A change is answered once a majority holds it durably (its raft log `fdatasync`ed)
//!   and the leader has applied it. The leader serves; a follower answers `NOT_SERVING`
//!   with the leader's URL, and a member that sees no leader (cut off, or the cluster
//!   electing) `UNAVAILABLE`, so clients move on to another member by themselves.
//! - The leader also proposes the pool's lease key once, the rights its back-office
//!   contact verified (newer answers only) and the expiry of lapsed leases; the service
//!   on the leader proposes serving the line of waiting clients whenever a seat is owed
//!   to it ([`crate::service::member::line_server`]), and commits the usage intervals
//!   its meter closed and the back office's acknowledgement of them
//!   ([`crate::service::usage`]). The line and the closed intervals are part of the pool:
//!   every member holds them, and a new leader serves and reports them.
//! - Trust (the chain of the back office's signatures): each member polls the back
//!   office with its own hostid and key, naming the other two (the back office registers
//!   the three as one cluster and maps its rights once), and holds its own binding. The
//!   pool's rights are the signed answer of the member that led when it arrived, carried
//!   verbatim in the log and snapshots and verified by every member as it applies or
//!   loads them (the producer's key, issued to exactly these three members and
//!   addressed to one of them): a member never counts rights that do not verify for it, and a snapshot whose rights do not verify is
//!   refused. Grants are signed by the member that serves, with its own key and
//!   binding, so clients verify them as any server's; no lease outlasts that binding
//!   or the rights' `serve_until`. Members authenticate each other with `PAIR_TOKEN`,
//!   required in cluster mode and never `BACKOFFICE_TOKEN`.
//! - Members say hello to each other every `CLUSTER_HEARTBEAT_INTERVAL` and count one
//!   down after `CLUSTER_MEMBER_TIMEOUT` ([`health`]): the cluster status. Raft keeps
//!   its own, faster heartbeat (100 ms, elections after 0.5 to 1 s of silence), so that a
//!   lost leader is replaced within one to two seconds (a second round when both
//!   survivors stood at once: openraft's followers refuse votes while the old leader's
//!   lease, the longest election timeout, lasts).
//! - A member that starts later, or was cut off, catches up from the leader: the entries
//!   it lacks, or a snapshot of the pool when those were purged.
//!
//! # Files (in `DATA_DIR`, mode 0600; format version 1)
//!
//! | file | holds |
//! |---|---|
//! | `raft-vote.bin` | the vote and the last purged log ID |
//! | `raft-log-<I, 20 digits>.log` | a log segment: the entries I, I+1, … |
//! | `raft-snapshot.bin` | the pool as of a log position, with that position and the membership |
//! | `*.tmp` | a vote or snapshot being written (replaced whole, by rename) |
//!
//! Each is a 36-byte header as the store's ([`crate::store::frame::FileHeader`]: magic
//! `LLS-VOT\n`, `LLS-RLG\n` or `LLS-RSN\n`, version 1, base: a segment's first index, a
//! snapshot's last index) and then checksummed records as the store's. A vote record is
//! JSON `{"vote": …, "purged": …}`; a log record is one openraft entry as JSON (its log
//! ID and a command, a membership or nothing); a snapshot's first record is its meta as
//! JSON (last log ID, membership, snapshot ID), the rest are the store's snapshot sections
//! ([`crate::store::codec`]). An append is acknowledged after `fdatasync`; the vote and
//! snapshots are written to a temporary file, synced and renamed over. A record cut short
//! at the end of the newest segment (a crash while it was appended) is cut off with a
//! warning; anything else that does not verify stops the start with an error naming the
//! file and the record. A damaged member is recovered by moving its `DATA_DIR` aside: it
//! starts empty and takes everything from the other members.
//!
//! A data directory is either a cluster member's or a standalone (or pair) server's: a
//! start in the other mode is refused.

pub mod health;
pub mod log;
pub mod machine;
pub mod membership;
pub mod network;
pub mod sm;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::{Config, ServerState, SnapshotPolicy};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use shared::HostId;
use shared::capability::ClusterStatus;
use shared::secret::Secret;
use tokio::sync::watch;

use crate::domain::{Millis, Rights, RightsChange, RightsCheck, State};
use crate::error::ServiceError;
use crate::lease_key::LeaseKey;
use health::{Health, Peer};
use machine::{Command, Outcome};
use membership::{Action, Hold};
use network::{Network, Wire};
use sm::Applied;

openraft::declare_raft_types!(
    /// The cluster's raft types: commands and outcomes of [`machine`], members by hostid.
    pub TypeConfig:
        D = Command,
        R = Outcome,
        NodeId = u64,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = std::io::Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type NodeId = u64;
pub type Entry = openraft::Entry<TypeConfig>;
pub type Raft = openraft::Raft<TypeConfig>;

/// Raft's own heartbeat and election timeouts (milliseconds).
const RAFT_HEARTBEAT_MS: u64 = 100;
const ELECTION_MIN_MS: u64 = 500;
const ELECTION_MAX_MS: u64 = 1000;
/// A leader that has not heard a majority for this long does not take new requests.
const QUORUM_ACK_LIMIT_MS: u64 = ELECTION_MAX_MS;
/// How long a request waits for its change to be committed before it is answered
/// `UNAVAILABLE` (it may still be committed; a retry of a checkout by the same client
/// gets that lease).
const COMMIT_TIMEOUT: Duration = Duration::from_secs(3);
/// How often the leader looks for leases to expire and rights to propose.
const DUTY_INTERVAL: Duration = Duration::from_millis(100);
/// How long a new member may take to catch up before its addition is tried again.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(120);

/// A member in the raft membership: its hostid (the same on every member; URLs are each
/// member's own settings).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub hostid: String,
}

impl std::fmt::Display for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.hostid)
    }
}

/// A member's raft node ID: the first 8 bytes of the SHA-256 of its hostid.
pub fn node_id(hostid: &HostId) -> NodeId {
    let digest = Sha256::digest(hostid.to_string().as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(b)
}

pub fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// What members say to each other every heartbeat (`POST /api/v1/member/hello`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Hello {
    /// The sender's hostid.
    pub hostid: String,
    /// The three hostids the sender's settings name (itself and its
    /// `CLUSTER_MEMBER_HOSTIDS`), sorted: members whose settings are more than one member
    /// apart are of another cluster, refused.
    pub members: Vec<String>,
    /// The sender's clock, Unix milliseconds.
    pub time_ms: i64,
    /// Where clients reach the sender (`PUBLIC_URL`).
    pub public_url: Option<String>,
    /// The sender's operator settings (`ADMIN_ACCESS` and the operator tokens) as an
    /// HMAC keyed with `PAIR_TOKEN` ([`crate::access::OperatorAccess::fingerprint`]):
    /// members that differ are named in an error, and keep serving.
    #[serde(default)]
    pub admin: Option<String>,
    /// The voters of the raft membership the sender's log holds, sorted (both
    /// configurations' while a member is replaced); absent when it holds no cluster log
    /// (a member waiting to be added, or a new cluster's before it formed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub membership: Option<Vec<String>>,
}

/// The raft membership a member's log holds.
#[derive(Clone, Debug, Default)]
pub struct Voters {
    pub ids: Vec<NodeId>,
    /// Their hostids, sorted.
    pub hostids: Vec<String>,
    /// A change is under way (two configurations).
    pub joint: bool,
}

impl Voters {
    fn of(m: &openraft::StoredMembership<NodeId, Member>) -> Voters {
        let m = m.membership();
        let ids: Vec<NodeId> = m.voter_ids().collect();
        let mut hostids: Vec<String> = ids
            .iter()
            .filter_map(|id| m.get_node(id).map(|n| n.hostid.clone()))
            .collect();
        hostids.sort();
        Voters {
            ids,
            hostids,
            joint: m.get_joint_config().len() > 1,
        }
    }
}

/// The settings a member runs with.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub hostid: HostId,
    /// This member's URL for clients.
    pub public_url: String,
    /// The other two: hostid and URL.
    pub members: Vec<(HostId, String)>,
    pub heartbeat_interval: Duration,
    pub member_timeout: Duration,
    /// `PAIR_TOKEN`: the secret members authenticate each other with.
    pub token: Secret,
    /// This member's operator settings, as its hello carries them.
    pub admin: String,
    pub ca: Vec<reqwest::Certificate>,
    /// Verifies the pool's rights: the producer's key, addressed to a member.
    pub rights: RightsCheck,
}

/// A running member.
pub struct Cluster {
    pub raft: Raft,
    pub id: NodeId,
    pub hostid: HostId,
    public_url: String,
    /// The three hostids, sorted.
    members: Vec<String>,
    pub health: Arc<Health>,
    state: Arc<Mutex<State>>,
    lease_key: Arc<LeaseKey>,
    applied: Arc<Mutex<Applied>>,
    wire: Wire,
    heartbeat_interval: Duration,
    /// This member's operator settings, as its hello carries them.
    admin: String,
    /// The newest answer this member's back-office contact verified, proposed when it
    /// leads.
    rights: Mutex<Option<Rights>>,
    /// Verifies rights (the producer's key): the leader's offer is checked against the
    /// membership before it is proposed.
    rights_check: RightsCheck,
    /// Servers of another cluster that said hello (each logged once).
    strangers: Mutex<std::collections::HashSet<String>>,
    /// Why the membership is not what the settings name (or this member waits to be
    /// added): shown in the status.
    hold: Mutex<Option<Hold>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("hostid", &self.hostid)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Loads the member's raft files from `dir` and starts its raft node.
    pub async fn start(cfg: ClusterConfig, dir: &Path) -> anyhow::Result<Arc<Cluster>> {
        let d = dir.to_owned();
        let rights = cfg.rights.clone();
        let (log, sm) = tokio::task::spawn_blocking(move || {
            let log = log::open(&d).map_err(|e| anyhow::anyhow!("{e}"))?;
            let sm = sm::StateMachine::open(&d, rights).map_err(anyhow::Error::msg)?;
            Ok::<_, anyhow::Error>((log, sm))
        })
        .await?
        .with_context(|| {
            "the cluster member's files cannot be read; to recover, stop it, move DATA_DIR \
             aside and start it again: it takes the pool from the other members"
        })?;
        let (sm, state) = sm;
        let lease_key = sm.lease_key();
        let applied = sm.applied();
        let id = node_id(&cfg.hostid);
        let peers: Vec<Peer> = cfg
            .members
            .iter()
            .map(|(h, url)| Peer {
                id: node_id(h),
                hostid: h.clone(),
                url: url.clone(),
            })
            .collect();
        let mut members: Vec<String> = std::iter::once(cfg.hostid.to_string())
            .chain(peers.iter().map(|p| p.hostid.to_string()))
            .collect();
        members.sort();
        let health = Arc::new(Health::new(peers, cfg.member_timeout));
        let wire = Wire::new(cfg.token.clone(), cfg.hostid.to_string(), cfg.ca.clone())?;
        let config = Config {
            cluster_name: "license-server".into(),
            heartbeat_interval: RAFT_HEARTBEAT_MS,
            election_timeout_min: ELECTION_MIN_MS,
            election_timeout_max: ELECTION_MAX_MS,
            install_snapshot_timeout: 10_000,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(20_000),
            max_in_snapshot_log_to_keep: 1_000,
            snapshot_max_chunk_size: 1 << 20,
            ..Config::default()
        }
        .validate()
        .context("the cluster's raft settings")?;
        let network = Network {
            wire: wire.clone(),
            health: health.clone(),
        };
        let raft = Raft::new(id, Arc::new(config), network, log, sm)
            .await
            .context("starting the cluster member's raft node")?;
        if !raft.is_initialized().await? {
            tracing::info!(
                "this member holds no cluster log: it creates the membership with the other \
                 members of a new cluster, or waits to be added by the leader of a running one"
            );
        }
        Ok(Arc::new(Cluster {
            raft,
            id,
            hostid: cfg.hostid,
            public_url: cfg.public_url,
            members,
            health,
            state,
            lease_key,
            applied,
            wire,
            heartbeat_interval: cfg.heartbeat_interval,
            admin: cfg.admin,
            rights: Mutex::new(None),
            rights_check: cfg.rights,
            strangers: Mutex::new(Default::default()),
            hold: Mutex::new(None),
        }))
    }

    /// The pool, as applied on this member (shared with the service).
    pub fn state(&self) -> Arc<Mutex<State>> {
        self.state.clone()
    }

    /// The raft term this member knows.
    pub fn term(&self) -> u64 {
        self.raft.metrics().borrow().current_term
    }

    /// The pool's lease key, kept by the state machine.
    pub fn lease_key(&self) -> Arc<LeaseKey> {
        self.lease_key.clone()
    }

    /// The raft membership this member's log holds.
    pub fn voters(&self) -> Voters {
        Voters::of(&self.raft.metrics().borrow().membership_config)
    }

    /// This member's hello.
    pub fn hello(&self) -> Hello {
        let voters = self.voters();
        Hello {
            hostid: self.hostid.to_string(),
            members: self.members.clone(),
            time_ms: now_ms(),
            public_url: Some(self.public_url.clone()),
            admin: Some(self.admin.clone()),
            membership: (!voters.ids.is_empty()).then_some(voters.hostids),
        }
    }

    /// The cluster status: this member's links to the other voters of the membership
    /// (`not_operational` when it is not one of them).
    pub fn status(&self) -> ClusterStatus {
        self.health.status(self.id, &self.voters().ids)
    }

    /// Checks a member's hello (the receiving side): one of ours, of the same cluster.
    /// Returns ours. A clock too far off is not refused here: the sender's own check of
    /// this answer refuses this member by name ([`health::check`]), and the answer tells
    /// it whether this member holds a cluster log, which a new cluster's members need to
    /// know before they create the membership without it ([`membership::first_start`]).
    /// Every other member request is refused for the clock ([`Cluster::check_sender`]).
    pub fn answer_hello(&self, theirs: &Hello) -> Result<Hello, ServiceError> {
        let ours =
            self.members.contains(&theirs.hostid) && theirs.hostid != self.hostid.to_string();
        if !ours || !health::same_cluster(&theirs.members, &self.members) {
            let msg = health::another_cluster(&theirs.hostid, &theirs.members, &self.members);
            // Once per sender: it says hello every heartbeat.
            if self.strangers.lock().insert(theirs.hostid.clone()) {
                tracing::error!(from = %theirs.hostid, "a server of another cluster said hello: {msg}");
            }
            return Err(ServiceError::RoleConflict(msg));
        }
        Ok(self.hello())
    }

    /// Checks who sent a member request and its clock.
    pub fn check_sender(&self, hostid: &str, time_ms: Option<i64>) -> Result<(), ServiceError> {
        if !self.members.iter().any(|m| m == hostid) || hostid == self.hostid.to_string() {
            return Err(ServiceError::RoleConflict(format!(
                "{hostid} is not a member of this cluster ({}); check CLUSTER_MEMBER_HOSTIDS on it",
                self.members.join(", ")
            )));
        }
        if let Some(t) = time_ms {
            let offset = t - now_ms();
            if offset.unsigned_abs() > crate::settings::CLUSTER_MAX_CLOCK_SKEW.as_millis() as u64 {
                return Err(ServiceError::ClockSkew(format!(
                    "member {} refuses {hostid}: {}",
                    self.hostid,
                    health::clock_error(hostid, offset)
                )));
            }
        }
        Ok(())
    }

    /// Starts the hellos and the leader's duties; they stop with `stop`.
    pub fn run(self: &Arc<Self>, stop: watch::Receiver<bool>) -> Vec<tokio::task::JoinHandle<()>> {
        let me = self.clone();
        let hellos = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let c = me.clone();
                me.health
                    .run(
                        me.wire.clone(),
                        move || c.hello(),
                        me.heartbeat_interval,
                        stop,
                    )
                    .await;
            })
        };
        let me = self.clone();
        let s = stop.clone();
        let duties = tokio::spawn(async move { me.leader_duties(s).await });
        let me = self.clone();
        let membership = tokio::spawn(async move { me.membership_duty(stop).await });
        vec![hellos, duties, membership]
    }

    /// Every heartbeat: creates a new cluster's membership, or (the leader) replaces a
    /// member as the settings say; records why not ([`membership`]).
    async fn membership_duty(&self, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.heartbeat_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            let voters = self.voters();
            let reports = self.health.reports();
            let hold = if voters.ids.is_empty() {
                match membership::first_start(&self.members, &reports) {
                    Ok(()) => {
                        self.initialise().await;
                        None
                    }
                    Err(why) => Some(Hold::Wait(why)),
                }
            } else {
                match membership::decide(&self.members, &voters.hostids, voters.joint, &reports) {
                    Ok(Action::Keep) => None,
                    Ok(Action::Replace { out, new }) if self.serving().is_ok() => {
                        self.set_hold(None);
                        self.replace(&out, &new).await;
                        None
                    }
                    Ok(Action::Replace { out, new }) => Some(Hold::Wait(format!(
                        "{out} is replaced by {new} once the leader has caught {new} up"
                    ))),
                    Err(hold) => Some(hold),
                }
            };
            self.set_hold(hold);
        }
    }

    /// Records why the membership does not change; logs a change of it.
    fn set_hold(&self, hold: Option<Hold>) {
        let mut held = self.hold.lock();
        if *held == hold {
            return;
        }
        match &hold {
            Some(Hold::Refuse(why)) => tracing::error!("the cluster's membership: {why}"),
            Some(Hold::Wait(why)) => tracing::info!("the cluster's membership: {why}"),
            None if held.is_some() => {
                tracing::info!("the cluster's membership is as this member's settings name it")
            }
            None => {}
        }
        *held = hold;
    }

    /// Creates a new cluster's membership: the three members of the settings.
    async fn initialise(&self) {
        let membership: BTreeMap<NodeId, Member> = std::iter::once((self.id, &self.hostid))
            .chain(self.health.peers.iter().map(|p| (p.id, &p.hostid)))
            .map(|(id, h)| {
                (
                    id,
                    Member {
                        hostid: h.to_string(),
                    },
                )
            })
            .collect();
        match self.raft.initialize(membership).await {
            Ok(()) => tracing::info!(
                members = %self.members.join(", "),
                "cluster membership created: the three members of a new cluster"
            ),
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
            Err(e) => tracing::error!(error = %e, "could not create the cluster's membership"),
        }
    }

    /// The leader replaces `out` by `new`: adds `new` as a learner, waits until it has
    /// caught up, then makes the configured three the voters (joint consensus; `out` is
    /// removed). A failure is logged and tried again at the next heartbeat.
    async fn replace(&self, out: &str, new: &str) {
        let Some(peer) = self
            .health
            .peers
            .iter()
            .find(|p| p.hostid.to_string() == new)
        else {
            return;
        };
        tracing::info!(
            out,
            new,
            "replacing a cluster member: {new} is added as a learner and catches up, then {out} leaves the membership"
        );
        let member = Member {
            hostid: new.to_owned(),
        };
        match tokio::time::timeout(
            CATCH_UP_TIMEOUT,
            self.raft.add_learner(peer.id, member, true),
        )
        .await
        {
            Ok(Ok(_)) => tracing::info!(new, "the new member has caught up"),
            Ok(Err(e)) => {
                tracing::warn!(new, error = %e, "could not add the new member as a learner; trying again");
                return;
            }
            Err(_) => {
                tracing::warn!(
                    new,
                    "the new member did not catch up within {CATCH_UP_TIMEOUT:?}; trying again"
                );
                return;
            }
        }
        let voters: BTreeSet<NodeId> = std::iter::once(self.id)
            .chain(self.health.peers.iter().map(|p| p.id))
            .collect();
        match tokio::time::timeout(CATCH_UP_TIMEOUT, self.raft.change_membership(voters, false))
            .await
        {
            Ok(Ok(_)) => tracing::info!(
                out,
                new,
                members = %self.members.join(", "),
                "cluster membership changed: {new} replaced {out}, which gets no entry any more"
            ),
            Ok(Err(e)) => {
                tracing::warn!(out, new, error = %e, "the membership change was not committed; trying again")
            }
            Err(_) => tracing::warn!(
                out,
                new,
                "the membership change was not committed within {CATCH_UP_TIMEOUT:?}; trying again"
            ),
        }
    }

    /// While this member leads: create the pool's key once, propose newer rights, free
    /// lapsed leases.
    async fn leader_duties(&self, mut stop: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(DUTY_INTERVAL) => {}
                _ = stop.changed() => return,
            }
            if self.serving().is_err() {
                continue;
            }
            let now = now_ms();
            let (no_key, due) = {
                let st = self.state.lock();
                (
                    st.lease_key.is_none() || st.history.is_nil(),
                    st.next_expiry().is_some_and(|e| e <= now),
                )
            };
            if no_key {
                let cmd = Command::Init {
                    lease_key: shared::random_token::<32>(),
                    history: uuid::Uuid::new_v4(),
                };
                if let Err(e) = self.propose(cmd).await {
                    tracing::debug!(error = %e, "could not create the pool's key yet");
                }
            }
            // This member's newest answer, when it changes the pool's rights (or lets
            // them be served markedly longer).
            // (The offer is copied first: the two locks are never held together.)
            let offer = self.rights.lock().clone();
            let offer = offer.filter(|r| {
                r.claims()
                    .is_some_and(|c| self.state.lock().rights_change(c) == RightsChange::Changed)
            });
            // An answer issued to the members the settings name is held back while the
            // membership still names the one they replace (it would not verify yet).
            let offer = offer.filter(|r| {
                let check = sm::membership_check(
                    &self.rights_check,
                    &self.raft.metrics().borrow().membership_config,
                );
                check.verify(&mut r.clone()).is_ok()
            });
            if let Some(rights) = offer {
                let iat = rights.issued_at();
                match self.propose(Command::Rights { rights, at: now }).await {
                    Ok(Outcome::Unverified { error }) => {
                        tracing::error!(problem = %error, "this member's rights do not verify in the cluster");
                    }
                    Ok(_) => tracing::info!(issued_at = iat, "rights committed to the cluster"),
                    Err(e) => tracing::debug!(error = %e, "could not commit the rights yet"),
                }
            }
            if due {
                match self.propose(Command::Expire { at: now }).await {
                    Ok(Outcome::Expired { freed }) if freed > 0 => {
                        tracing::info!(freed, "leases expired (not renewed in time)");
                    }
                    Ok(_) => {}
                    Err(e) => tracing::debug!(error = %e, "could not expire leases yet"),
                }
            }
        }
    }

    /// This member's verified answer: its rights are proposed by the leader's duties
    /// (at once when this member leads).
    pub fn offer_rights(&self, rights: Rights) {
        let mut r = self.rights.lock();
        if r.as_ref()
            .is_none_or(|held| rights.issued_at() >= held.issued_at())
        {
            *r = Some(rights);
        }
    }

    /// Whether this member takes requests now: it leads, a majority acknowledged it
    /// within the last second, and it has applied an entry of its own term (so its pool
    /// holds every change committed before it was elected: tokens and leases are checked
    /// against it). Else `NOT_SERVING` naming the leader, or `UNAVAILABLE` when it knows
    /// of none it can reach.
    pub fn serving(&self) -> Result<(), ServiceError> {
        // Read and released at once: the metrics are not borrowed twice (a second
        // borrow waits behind raft's next update of them, which waits for the first).
        let (leading, serves, leader) = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            let acked = m
                .millis_since_quorum_ack
                .is_some_and(|ms| ms < QUORUM_ACK_LIMIT_MS);
            let caught_up = m
                .last_applied
                .is_some_and(|l| l.leader_id.term == m.current_term);
            (
                m.state == ServerState::Leader,
                acked && caught_up,
                m.current_leader,
            )
        };
        if leading {
            if serves {
                return Ok(());
            }
            return Err(self.not_operational());
        }
        // A leader this member cannot reach is no use to a client either.
        if let Some(leader) = leader.filter(|l| *l != self.id)
            && self.health.up(leader)
            && let Some(url) = self.health.client_url(leader)
        {
            return Err(ServiceError::NotServing { serving_url: url });
        }
        Err(self.not_operational())
    }

    fn not_operational(&self) -> ServiceError {
        if !self.voters().ids.contains(&self.id) {
            let held = self.hold.lock().clone();
            let why = held.as_ref().map_or_else(
                || "it is not one of the cluster's members (its raft membership)".to_owned(),
                |h| h.message().to_owned(),
            );
            return ServiceError::Unavailable(format!(
                "this server grants nothing: {why}; another member may serve"
            ));
        }
        let status = self.status();
        ServiceError::Unavailable(match status {
            ClusterStatus::NotOperational => format!(
                "this cluster member is {}: it sees neither of the other members, and \
                 licenses are granted only while two members see each other; another \
                 member may serve",
                status.as_str()
            ),
            _ => "the cluster is choosing the member that serves; retry shortly".into(),
        })
    }

    /// Proposes a command and waits until it is committed by a majority and applied
    /// here; answers what applying it did.
    pub async fn propose(&self, cmd: Command) -> Result<Outcome, ServiceError> {
        self.serving()?;
        let kind = cmd.kind();
        match tokio::time::timeout(COMMIT_TIMEOUT, self.raft.client_write(cmd)).await {
            Ok(Ok(resp)) => Ok(resp.data),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                match f.leader_id.and_then(|l| self.health.client_url(l)) {
                    Some(url) => Err(ServiceError::NotServing { serving_url: url }),
                    None => Err(self.not_operational()),
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(command = kind, error = %e, "a change was not committed");
                Err(self.not_operational())
            }
            Err(_) => {
                tracing::warn!(
                    command = kind,
                    "a change was not committed within {COMMIT_TIMEOUT:?}: a majority of the cluster is not reachable"
                );
                Err(ServiceError::Unavailable(format!(
                    "the change was not committed by a majority of the cluster within {}s; retry",
                    COMMIT_TIMEOUT.as_secs()
                )))
            }
        }
    }

    /// Every member's URL for clients, this one first (those of the raft membership).
    pub fn client_urls(&self) -> Vec<String> {
        let voters = self.voters().ids;
        std::iter::once(self.public_url.clone())
            .chain(
                self.health
                    .peers
                    .iter()
                    .filter(|p| voters.contains(&p.id))
                    .filter_map(|p| self.health.client_url(p.id)),
            )
            .collect()
    }

    /// The cluster as this member sees it.
    pub fn view(&self) -> ClusterView {
        let (state, leader, term, last_log) = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            (m.state, m.current_leader, m.current_term, m.last_log_index)
        };
        let role = |id: NodeId| {
            if leader == Some(id) {
                MemberRole::Leader
            } else {
                MemberRole::Follower
            }
        };
        let mut members = vec![MemberView {
            hostid: self.hostid.to_string(),
            url: self.public_url.clone(),
            this: true,
            up: true,
            role: match state {
                ServerState::Leader => MemberRole::Leader,
                ServerState::Candidate => MemberRole::Candidate,
                _ => MemberRole::Follower,
            },
            last_seen: Some(now_ms() / 1000),
            clock_offset_ms: Some(0),
            error: None,
            warning: None,
        }];
        for (p, s) in self.health.peers.iter().zip(self.health.states()) {
            members.push(MemberView {
                hostid: p.hostid.to_string(),
                url: s.public_url.clone().unwrap_or_else(|| p.url.clone()),
                this: false,
                up: self.health.is_up(&s),
                role: role(p.id),
                last_seen: s.last_ok_ms.map(|m| m / 1000),
                clock_offset_ms: s.clock_offset_ms,
                error: s.refused.clone().or(s.last_error.clone()),
                warning: s.admin_differs.then(|| health::admin_differs(&p.hostid)),
            });
        }
        let leader_hostid = leader.and_then(|l| {
            if l == self.id {
                Some(self.hostid.to_string())
            } else {
                self.health.peer(l).map(|p| p.hostid.to_string())
            }
        });
        let voters = self.voters();
        // Copied first: `serving` below takes this lock too.
        let membership_problem = self.hold.lock().as_ref().map(|h| h.message().to_owned());
        let serving = self.serving();
        ClusterView {
            status: self.health.status(self.id, &voters.ids),
            membership: voters.hostids,
            membership_problem,
            serving: serving.is_ok(),
            leader: leader_hostid,
            // The member that serves now, if known (from the same look as `serving`).
            serving_url: match serving {
                Ok(()) => Some(self.public_url.clone()),
                Err(ServiceError::NotServing { serving_url }) => Some(serving_url),
                Err(_) => None,
            },
            term,
            last_log_index: last_log,
            applied_index: self.applied.lock().log_id.map(|l| l.index),
            members,
        }
    }

    /// Stops the raft node.
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "the cluster's raft node did not stop cleanly");
        }
    }
}

/// A member's part in the raft cluster now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MemberRole {
    /// Serves: proposes every change.
    Leader,
    Follower,
    /// Asking the others to elect it.
    Candidate,
}

/// One member, as this member sees it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct MemberView {
    pub hostid: String,
    /// Its URL for clients.
    pub url: String,
    /// This member.
    pub this: bool,
    /// Answered every check within `CLUSTER_MEMBER_TIMEOUT`.
    pub up: bool,
    pub role: MemberRole,
    /// Its last good answer (Unix time, seconds).
    pub last_seen: Option<i64>,
    /// Its clock minus this member's, in milliseconds (at its last answer).
    pub clock_offset_ms: Option<i64>,
    /// Why it is down or refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What is wrong with it that does not keep it out (its operator settings differ).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// The cluster as this member sees it (`GET /api/v1/cluster`, and in the status).
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ClusterView {
    /// `operational` (linked to both other members), `partially_operational` (to one),
    /// `not_operational` (to none: nothing is granted).
    pub status: ClusterStatus,
    /// This member serves (it leads, and a majority acknowledged it within a second).
    pub serving: bool,
    /// The leader's hostid, when one is known.
    pub leader: Option<String>,
    /// The URL of the member that serves, when known.
    pub serving_url: Option<String>,
    /// The raft term.
    pub term: u64,
    /// The last entry of this member's raft log.
    pub last_log_index: Option<u64>,
    /// The last entry applied to this member's pool.
    pub applied_index: Option<u64>,
    /// The members this member's settings name, this one first.
    pub members: Vec<MemberView>,
    /// The voters of the raft membership this member's log holds (hostids, sorted; both
    /// configurations' while a member is replaced; empty before it holds a cluster log).
    pub membership: Vec<String>,
    /// Why the membership is not what this member's settings name, or why this member
    /// waits to be added (absent when it is).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub membership_problem: Option<String>,
}
