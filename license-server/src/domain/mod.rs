//! The pure domain: rights pools, allocation, lease expiry and the event-sourced state
//! machine. Nothing here knows about HTTP, disks or clocks: callers pass `now`.
//!
//! Every change of state is an [`Event`]; [`State::apply`] is the only mutation. Decisions
//! (`decide_*`) read the state and return the event to apply, or why not. The same ordered
//! event stream is written to the journal and is what a main replicates to its backup.
//!
//! The leases themselves are kept compactly in [`table`]; [`wire`] gives the state its JSON
//! form (the pair's snapshot and handback messages). Rights are the back office's signed
//! answers, counted only once verified ([`rights`]).

mod queue;
pub(crate) mod rights;
mod table;
pub mod usage;
mod wire;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use shared::capability::{CapabilityClaims, Right, UsageInterval, UsageKey};
use shared::lease::{FeatureInfo, FeatureRight, LeaseInfo};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::options::{Options, RuleDenial, Seats, Who};
pub use queue::{MAX_QUEUED, QueueEntry};
pub use rights::{Rights, RightsCheck, RightsError, renewal_step};
use table::LeaseTable;
pub use table::{CHUNK, FrozenLeases, LeaseRef};

/// The most closed usage intervals a state keeps (about four days of 5-minute intervals
/// of 10 features); the back office has them long before.
pub const USAGE_KEPT: usize = 12_000;

/// Milliseconds since the Unix epoch (internal time unit; the wire uses seconds).
pub type Millis = i64;

/// A Unix time (seconds) in RFC 3339, for messages.
pub fn fmt_time(unix: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// How a verified capability answer changes the rights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RightsChange {
    Unchanged,
    Changed,
    /// Issued before the answer the current rights came from: refused.
    Older,
}

/// Largest number of seats one checkout may ask for.
pub const MAX_SEATS_PER_CHECKOUT: u32 = 10_000;

/// A pool is one feature at one version.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FeatureKey {
    pub feature: String,
    pub version: String,
}

impl FeatureKey {
    /// `cad 1.0`, or `cad` for an unversioned pool.
    pub fn display(&self) -> String {
        if self.version.is_empty() {
            self.feature.clone()
        } else {
            format!("{} {}", self.feature, self.version)
        }
    }
}

/// What a client proves it holds its lease with: the first 16 bytes of the SHA-256 of
/// its secret (all zero: none; a checkout without a secret can reclaim nothing by it).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Holder(pub [u8; 16]);

impl Holder {
    pub const NONE: Holder = Holder([0; 16]);

    /// The holder of a client secret.
    pub fn of_secret(secret: &str) -> Holder {
        let mut h = Sha256::new();
        h.update(b"lls-client-secret\0");
        h.update(secret.as_bytes());
        let mut out = [0u8; 16];
        out.copy_from_slice(&h.finalize()[..16]);
        if out == [0; 16] {
            out[15] = 1;
        }
        Holder(out)
    }

    pub fn is_none(&self) -> bool {
        self.0 == [0; 16]
    }

    /// Whether a checkout by `self` proves it holds a lease granted to `lease`: both are
    /// known and equal (compared in constant time).
    pub fn proves(&self, lease: &Holder) -> bool {
        !self.is_none() && bool::from(self.0.ct_eq(&lease.0))
    }
}

impl std::fmt::Debug for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.is_none() {
            "Holder(none)"
        } else {
            "Holder(***)"
        })
    }
}

/// In JSON (the pair's messages): 32 hex digits, absent for none.
impl Serialize for Holder {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut hex = String::with_capacity(32);
        for b in self.0 {
            hex.push_str(&format!("{b:02x}"));
        }
        s.serialize_str(&hex)
    }
}

impl<'de> Deserialize<'de> for Holder {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let hex = String::deserialize(d)?;
        let bad = || serde::de::Error::custom("a holder is 32 hex digits");
        if hex.len() != 32 || !hex.is_ascii() {
            return Err(bad());
        }
        let mut out = [0u8; 16];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Holder(out))
    }
}

/// A lease as the state holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub id: Uuid,
    pub feature: String,
    pub version: String,
    pub count: u32,
    pub client_id: String,
    pub granted_at: Millis,
    /// Last grant or renewal.
    pub renewed_at: Millis,
    pub expires_at: Millis,
    /// Hostid of the server that granted it.
    pub granted_by: String,
    /// Sequence number of the event that granted it (set when applied): tells, after a
    /// failover, whether the lease was granted before or after the two servers diverged.
    #[serde(default)]
    pub granted_seq: u64,
    /// Who may reclaim it by checking out again ([`Holder`]).
    #[serde(default, skip_serializing_if = "Holder::is_none")]
    pub holder: Holder,
    /// The user and host the checkout named ("" when it named none): what the options
    /// file's `MAX` and `RESERVE` rules count.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host: String,
    /// Borrowed, or an overdraft seat.
    #[serde(default, flatten)]
    pub kind: LeaseKind,
}

/// What kind of lease: borrowed (held offline for a period the client chose, within the
/// line item's maximum; not renewed, returned early or ended), and whether its seats are
/// overdraft (granted beyond the count, within the line item's overdraft).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LeaseKind {
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub borrowed: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub overdraft: bool,
}

impl LeaseKind {
    const BORROWED: u8 = 1;
    const OVERDRAFT: u8 = 2;

    /// Its byte in the store's records.
    pub fn bits(self) -> u8 {
        (u8::from(self.borrowed) * Self::BORROWED) | (u8::from(self.overdraft) * Self::OVERDRAFT)
    }

    /// From its byte; `None` for bits this version does not know.
    pub fn from_bits(b: u8) -> Option<LeaseKind> {
        (b & !(Self::BORROWED | Self::OVERDRAFT) == 0).then_some(LeaseKind {
            borrowed: b & Self::BORROWED != 0,
            overdraft: b & Self::OVERDRAFT != 0,
        })
    }
}

impl LeaseRecord {
    pub fn info(&self) -> LeaseInfo {
        LeaseInfo {
            lease_id: self.id,
            feature: self.feature.clone(),
            version: self.version.clone(),
            count: self.count,
            client_id: self.client_id.clone(),
            user: Some(self.user.clone()).filter(|u| !u.is_empty()),
            host: Some(self.host.clone()).filter(|h| !h.is_empty()),
            granted_at: self.granted_at / 1000,
            expires_at: self.expires_at / 1000,
            granted_by: Some(self.granted_by.clone()),
            borrowed: self.kind.borrowed,
            overdraft: self.kind.overdraft,
        }
    }
}

/// Every change of the state, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// The key that signs lease tokens (base64), created once per pool.
    LeaseKeyCreated {
        key: String,
    },
    /// A capability answer changed the rights: the answer itself, verbatim (its counts
    /// count once it verified, [`RightsCheck`]).
    RightsUpdated {
        rights: Rights,
        at: Millis,
    },
    LeaseGranted {
        lease: LeaseRecord,
    },
    LeaseRenewed {
        id: Uuid,
        at: Millis,
        expires_at: Millis,
    },
    LeaseReturned {
        id: Uuid,
        at: Millis,
    },
    LeaseExpired {
        id: Uuid,
        at: Millis,
    },
    /// Released by an operator.
    LeaseReleased {
        id: Uuid,
        at: Millis,
    },
    /// A new history of events begins (first start of a main or standalone server).
    HistoryStarted {
        history: Uuid,
    },
    /// A backup took over from a silent main: its history forks from the main's here.
    TookOver {
        at: Millis,
        history: Uuid,
    },
    /// A backup that had taken over handed the pool back to its returning main.
    HandedBack {
        at: Millis,
    },
    /// A main acknowledges changes without its backup from `from_seq` on (the backup is
    /// unreachable, behind, or not contacted yet).
    WentAlone {
        at: Millis,
        from_seq: u64,
    },
    /// The backup holds every change again: clients wait for it once more.
    Rejoined {
        at: Millis,
    },
    /// The options file in force changed (read at start or reloaded by the main or a
    /// standalone server): its text, verbatim (empty: no options). A backup follows its
    /// main's, so that it honours them when it takes over.
    OptionsChanged {
        text: String,
        at: Millis,
    },
    /// A backup was removed from its pair (by an operator on either side): it never takes
    /// over again.
    Detached {
        at: Millis,
        reason: String,
    },
    /// The main's backup changed: dropped (absence limit, operator, or the backup left)
    /// or given a new address.
    BackupChanged {
        at: Millis,
        dropped: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        uri: Option<String>,
        reason: String,
    },
    /// A client joined the line for a seat ([`queue`]).
    QueueJoined {
        entry: QueueEntry,
    },
    /// A client left the line without a seat: its time was up (`lapsed`) or it left.
    QueueLeft {
        id: Uuid,
        at: Millis,
        lapsed: bool,
    },
    /// Usage intervals closed by the serving server ([`usage`]): kept (the latest
    /// [`USAGE_KEPT`]) until reported, and replicated like any change, so that what one
    /// server served is reported even if it dies.
    UsageClosed {
        intervals: Vec<UsageInterval>,
    },
}

impl Event {
    pub fn kind(&self) -> &'static str {
        match self {
            Event::LeaseKeyCreated { .. } => "lease_key_created",
            Event::RightsUpdated { .. } => "rights_updated",
            Event::LeaseGranted { .. } => "lease_granted",
            Event::LeaseRenewed { .. } => "lease_renewed",
            Event::LeaseReturned { .. } => "lease_returned",
            Event::LeaseExpired { .. } => "lease_expired",
            Event::LeaseReleased { .. } => "lease_released",
            Event::HistoryStarted { .. } => "history_started",
            Event::TookOver { .. } => "took_over",
            Event::HandedBack { .. } => "handed_back",
            Event::BackupChanged { .. } => "backup_changed",
            Event::WentAlone { .. } => "went_alone",
            Event::Detached { .. } => "detached",
            Event::Rejoined { .. } => "rejoined",
            Event::OptionsChanged { .. } => "options_changed",
            Event::QueueJoined { .. } => "queue_joined",
            Event::QueueLeft { .. } => "queue_left",
            Event::UsageClosed { .. } => "usage_closed",
        }
    }
}

/// Why a decision refuses (serialisable: a cluster's state machine answers with it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Denied {
    UnknownFeature,
    FeatureExpired {
        expired_at: Millis,
    },
    /// The feature is (no longer) licensed: its rights were removed.
    FeatureRemoved,
    NoSeat {
        /// When enough seats free for this request, if any lease freeing would do it.
        next_free_at: Option<Millis>,
        reason: String,
        /// Seats asked for.
        #[serde(default)]
        asked: u32,
        /// Seats free now in the pool that came closest (the most free).
        #[serde(default)]
        free: u32,
        /// Seats licensed now in that pool.
        #[serde(default)]
        count: u32,
    },
    UnknownLease,
    /// A borrow of a pool none of whose rights is borrowable.
    NotBorrowable,
    /// A borrow longer than the rights allow.
    BorrowTooLong {
        /// The longest borrow allowed (seconds).
        max_secs: u64,
    },
    /// A rule of the options file refused.
    Rule(RuleDenial),
    /// The line is as long as it may be ([`MAX_QUEUED`]).
    QueueFull {
        max: usize,
    },
    /// No such place in line (granted, lapsed, left, or never queued).
    NotQueued,
}

/// What a checkout asks for (validated by the caller).
#[derive(Clone, Copy, Debug)]
pub struct CheckoutAsk<'a> {
    pub feature: &'a str,
    pub version: Option<&'a str>,
    pub count: u32,
    pub client_id: &'a str,
    /// The client's secret, hashed ([`Holder::NONE`] without one).
    pub holder: Holder,
    /// A borrow for this long (milliseconds), or an ordinary lease (see
    /// [`State::decide_checkout`]).
    pub borrow_ms: Option<i64>,
    /// The user and host the checkout named.
    pub who: Who<'a>,
}

/// The options file in force: its text as the event carried it, and its rules.
#[derive(Clone, Debug, Default)]
pub struct OptionsInForce {
    pub text: Arc<str>,
    pub rules: Arc<Options>,
}

impl OptionsInForce {
    /// The options of a text (an empty text: none). A text that does not parse (written
    /// by a newer version) puts no rules in force; the service checks every text before
    /// it makes an event of it.
    pub fn of(text: &str) -> Option<OptionsInForce> {
        (!text.is_empty()).then(|| OptionsInForce {
            text: text.into(),
            rules: Arc::new(crate::options::parse(text).unwrap_or_default()),
        })
    }
}

#[derive(Clone, Debug, Default)]
struct Pool {
    /// Each contributing right (times in Unix seconds).
    parts: Vec<Part>,
}

/// One right of a pool: a line item's count, overdraft and borrow policy.
#[derive(Clone, Debug)]
struct Part {
    activation_id: String,
    count: u32,
    starts_at: i64,
    expires_at: Option<i64>,
    overdraft: u32,
    max_borrow_secs: Option<u64>,
}

impl Part {
    fn in_force(&self, secs: i64) -> bool {
        self.starts_at <= secs && self.expires_at.is_none_or(|e| secs < e)
    }
}

impl Pool {
    fn count_at(&self, now: Millis) -> u32 {
        let secs = now.div_euclid(1000);
        self.parts
            .iter()
            .filter(|p| p.in_force(secs))
            .fold(0u32, |acc, p| acc.saturating_add(p.count))
    }

    /// Seats beyond the count the live rights allow (their overdrafts added up).
    fn overdraft_at(&self, now: Millis) -> u32 {
        let secs = now.div_euclid(1000);
        self.parts
            .iter()
            .filter(|p| p.in_force(secs))
            .fold(0u32, |acc, p| acc.saturating_add(p.overdraft))
    }

    /// The longest borrow a live right allows (seconds); `None` when none is borrowable.
    fn max_borrow_at(&self, now: Millis) -> Option<u64> {
        let secs = now.div_euclid(1000);
        self.parts
            .iter()
            .filter(|p| p.in_force(secs))
            .filter_map(|p| p.max_borrow_secs)
            .max()
    }

    fn starts_at(&self) -> Option<i64> {
        self.parts.iter().map(|p| p.starts_at).min()
    }

    /// The last expiry, `None` if any part is permanent.
    fn expires_at(&self) -> Option<i64> {
        let mut latest = None;
        for p in &self.parts {
            match p.expires_at {
                None => return None,
                Some(e) => latest = Some(latest.map_or(e, |l: i64| l.max(e))),
            }
        }
        latest
    }

    fn expired_at(&self, now: Millis) -> Option<Millis> {
        let exp = self.expires_at()?;
        (exp * 1000 <= now).then_some(exp * 1000)
    }

    /// The earliest future start of a part, for "not yet started" pools.
    fn next_start(&self, now: Millis) -> Option<Millis> {
        let secs = now.div_euclid(1000);
        self.parts
            .iter()
            .filter(|p| p.starts_at > secs)
            .map(|p| p.starts_at * 1000)
            .min()
    }

    /// Its rights one by one, in force now or later (not the expired), soonest end
    /// first, permanent last.
    fn rights(&self, now: Millis) -> Vec<FeatureRight> {
        let secs = now.div_euclid(1000);
        let mut out: Vec<FeatureRight> = self
            .parts
            .iter()
            .filter(|p| p.expires_at.is_none_or(|e| secs < e))
            .map(|p| FeatureRight {
                activation_id: p.activation_id.clone(),
                count: p.count,
                starts_at: p.starts_at,
                expires_at: p.expires_at,
                started: p.starts_at <= secs,
            })
            .collect();
        out.sort_by(|a, b| {
            (a.expires_at.is_none(), a.expires_at, &a.activation_id).cmp(&(
                b.expires_at.is_none(),
                b.expires_at,
                &b.activation_id,
            ))
        });
        out
    }
}

/// Where a takeover forked from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fork {
    pub history: Uuid,
    pub seq: u64,
}

/// Changes to the main's backup made at run time.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupState {
    /// Dropped: the main replicates to no backup and hands clients none.
    pub dropped: bool,
    /// A new address given by an operator (replaces `LICENSING_BACKUP_URI`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_at: Option<Millis>,
}

/// The whole state of a license server's pool. Its JSON form (the pair's snapshot) is in
/// [`wire`]; the store writes it in its own binary form from a [`Frozen`] copy.
#[derive(Clone, Debug, Default)]
pub struct State {
    /// Sequence number of the last applied event.
    pub seq: u64,
    pub lease_key: Option<String>,
    /// The capability answer the rights come from (`None` before the first).
    pub rights: Option<Rights>,
    pub rights_updated_at: Option<Millis>,
    /// The history these events belong to (nil: none yet). A backup that takes over
    /// starts a new one; a main that takes the backup's changes back starts another.
    pub history: Uuid,
    /// Set by a takeover: the history and sequence number this server diverged from.
    pub fork: Option<Fork>,
    /// A backup that took over: since when it serves (cleared when it hands back).
    pub active_since: Option<Millis>,
    /// A main: its backup as changed at run time (dropped, or a new address).
    pub backup: BackupState,
    /// A backup: removed from its pair, and why.
    pub detached: Option<String>,
    /// A main: acknowledging changes without its backup since this sequence number; a
    /// change granted while in sync and not held by the backup was never acknowledged.
    pub alone_from: Option<u64>,
    /// Set by a failback: the backup's history and sequence number this state took in.
    pub absorbed: Option<Fork>,
    /// The options file in force (a backup: its main's).
    pub options: Option<OptionsInForce>,
    /// Clients waiting for a seat, in the order they joined ([`queue`]).
    queue: Vec<QueueEntry>,
    /// Closed usage intervals, oldest first, the latest [`USAGE_KEPT`] of them: what the
    /// server reports to the back office (which keeps each once).
    pub usage: BTreeMap<UsageKey, UsageInterval>,
    leases: LeaseTable,
    /// The pools the rights make (derived from `rights`).
    pools: BTreeMap<FeatureKey, Pool>,
}

/// A copy of the state for a snapshot, cheap to take under the state lock: everything but
/// the leases cloned (small), the leases shared with the live state (copy on write).
#[derive(Clone, Debug, Default)]
pub struct Frozen {
    /// The state without its leases.
    pub head: State,
    pub leases: FrozenLeases,
}

impl Frozen {
    pub fn seq(&self) -> u64 {
        self.head.seq
    }
}

impl State {
    /// Rebuilds the pools from the rights (after the rights were set directly). The lease
    /// indexes are always current.
    pub fn rebuild_index(&mut self) {
        self.pools = pools_of(self.current_rights());
    }

    /// The rights that count: those of a verified answer, else none.
    pub fn current_rights(&self) -> &[Right] {
        self.rights.as_ref().map_or(&[], Rights::rights)
    }

    /// When the answer the rights come from was signed (`i64::MIN` without verified
    /// rights).
    pub fn rights_issued_at(&self) -> i64 {
        self.rights.as_ref().map_or(i64::MIN, Rights::issued_at)
    }

    /// What a verified answer's claims would change: nothing when older than the answer
    /// held (`Older`), or the same rights not to be served markedly longer
    /// ([`renewal_step`]); else they replace the held ones.
    pub fn rights_change(&self, claims: &CapabilityClaims) -> RightsChange {
        if claims.iat < self.rights_issued_at() {
            return RightsChange::Older;
        }
        if let Some(held) = self.rights.as_ref().and_then(Rights::claims)
            && held.rights == claims.rights
            && claims.serve_until <= held.serve_until + renewal_step(held.iat, held.serve_until)
        {
            return RightsChange::Unchanged;
        }
        RightsChange::Changed
    }

    /// Adds a lease as it is (loading a snapshot); a lease with the same ID is replaced.
    pub fn insert_lease(&mut self, lease: LeaseRef<'_>) {
        self.leases.insert(lease);
    }

    /// Loading many leases and events: the expiry indexes are built once, by
    /// [`State::end_load`], which must follow (until then nothing expires or is allocated
    /// correctly).
    pub fn begin_load(&mut self) {
        self.leases.defer_index();
    }

    /// Builds what [`State::begin_load`] deferred.
    pub fn end_load(&mut self) {
        self.leases.index();
    }

    /// Every lease, in no particular order.
    pub fn leases(&self) -> impl Iterator<Item = LeaseRef<'_>> {
        self.leases.iter().map(|l| self.leases.view(l))
    }

    /// A copy for a snapshot (see [`Frozen`]).
    pub fn frozen(&self) -> Frozen {
        Frozen {
            head: self.without_leases(),
            leases: self.leases.frozen(),
        }
    }

    /// The state with no leases (everything else cloned).
    fn without_leases(&self) -> State {
        State {
            seq: self.seq,
            lease_key: self.lease_key.clone(),
            rights: self.rights.clone(),
            rights_updated_at: self.rights_updated_at,
            history: self.history,
            fork: self.fork,
            active_since: self.active_since,
            backup: self.backup.clone(),
            detached: self.detached.clone(),
            alone_from: self.alone_from,
            absorbed: self.absorbed,
            options: self.options.clone(),
            queue: self.queue.clone(),
            usage: self.usage.clone(),
            leases: LeaseTable::default(),
            pools: self.pools.clone(),
        }
    }

    /// Applies one event; returns its sequence number.
    pub fn apply(&mut self, event: &Event) -> u64 {
        match event {
            Event::LeaseKeyCreated { key } => self.lease_key = Some(key.clone()),
            Event::RightsUpdated { rights, at } => {
                self.rights = Some(rights.clone());
                self.rights_updated_at = Some(*at);
                self.pools = pools_of(rights.rights());
            }
            Event::LeaseGranted { lease } => {
                self.leases.insert(LeaseRef {
                    granted_seq: self.seq + 1,
                    ..LeaseRef::from(lease)
                });
                self.apply_queue(event);
            }
            Event::QueueJoined { .. } | Event::QueueLeft { .. } => self.apply_queue(event),
            Event::LeaseRenewed { id, at, expires_at } => self.leases.renew(id, *at, *expires_at),
            Event::LeaseReturned { id, .. }
            | Event::LeaseExpired { id, .. }
            | Event::LeaseReleased { id, .. } => {
                self.leases.remove(id);
            }
            Event::HistoryStarted { history } => self.history = *history,
            Event::TookOver { at, history } => {
                self.fork = Some(Fork {
                    history: self.history,
                    seq: self.seq,
                });
                self.history = *history;
                self.active_since = Some(*at);
            }
            Event::HandedBack { .. } => self.active_since = None,
            Event::WentAlone { from_seq, .. } => self.alone_from = Some(*from_seq),
            Event::Detached { reason, .. } => self.detached = Some(reason.clone()),
            Event::Rejoined { .. } => self.alone_from = None,
            Event::OptionsChanged { text, .. } => self.options = OptionsInForce::of(text),
            Event::UsageClosed { intervals } => self.keep_usage(intervals.iter().cloned()),
            Event::BackupChanged {
                at,
                dropped,
                uri,
                reason,
            } => {
                self.backup = BackupState {
                    dropped: *dropped,
                    uri: uri.clone().or_else(|| self.backup.uri.clone()),
                    reason: Some(reason.clone()),
                    changed_at: Some(*at),
                };
            }
        }
        self.seq += 1;
        self.seq
    }

    /// Forgets closed usage intervals the back office acknowledged (a cluster's: its
    /// members report from one replicated set, so an acknowledged one leaves it).
    pub fn forget_usage(&mut self, keys: &[UsageKey]) {
        for k in keys {
            self.usage.remove(k);
        }
    }

    /// Adds closed usage intervals (one already held is kept as it is), then forgets the
    /// oldest beyond [`USAGE_KEPT`].
    pub fn keep_usage(&mut self, intervals: impl IntoIterator<Item = UsageInterval>) {
        for i in intervals {
            self.usage.entry(i.key()).or_insert(i);
        }
        while self.usage.len() > USAGE_KEPT {
            self.usage.pop_first();
        }
    }

    /// The lease with this ID (a copy: the table keeps leases in a compact form).
    pub fn lease(&self, id: &Uuid) -> Option<LeaseRecord> {
        self.leases.get(id).map(|l| self.leases.record(l))
    }

    /// The IDs of a client's leases of a feature (any version).
    pub fn client_lease_ids(&self, client_id: &str, feature: &str) -> Vec<Uuid> {
        self.leases
            .of_client(client_id, feature)
            .map(|l| l.id)
            .collect()
    }

    pub fn has_lease(&self, id: &Uuid) -> bool {
        self.leases.contains(id)
    }

    pub fn lease_count(&self) -> usize {
        self.leases.len()
    }

    pub fn in_use(&self, key: &FeatureKey) -> u32 {
        self.leases
            .pool_id(key)
            .map_or(0, |p| self.leases.in_use(p))
    }

    /// Every pool's key.
    pub fn pool_keys(&self) -> impl Iterator<Item = &FeatureKey> {
        self.pools.keys()
    }

    /// The pool a checkout of `feature` (and `version`, when it names one) asks for: the
    /// first of that feature when it names none.
    pub fn pool_of(&self, feature: &str, version: Option<&str>) -> Option<FeatureKey> {
        self.pools
            .keys()
            .find(|k| k.feature == feature && version.is_none_or(|v| k.version == v))
            .cloned()
    }

    /// Seats licensed for a pool at `now`.
    pub fn count_at(&self, key: &FeatureKey, now: Millis) -> u32 {
        self.pools.get(key).map_or(0, |p| p.count_at(now))
    }

    /// Leases whose time is up at `now`, as expiry events (not applied).
    pub fn expired(&self, now: Millis) -> Vec<Event> {
        self.leases
            .by_expiry()
            .take_while(|(exp, _)| *exp <= now)
            .map(|(_, l)| Event::LeaseExpired { id: l.id, at: now })
            .collect()
    }

    /// The earliest lease expiry, for the reaper's sleep.
    pub fn next_expiry(&self) -> Option<Millis> {
        self.leases.next_expiry()
    }

    /// Checkout: the existing live lease of this client for this feature (renewed) when
    /// the client proves it holds it (its secret, or `holds` says it showed the lease's
    /// token), or a new lease if seats are free.
    pub fn decide_checkout(
        &self,
        ask: &CheckoutAsk<'_>,
        now: Millis,
        lease_ms: i64,
        new_id: Uuid,
        granted_by: &str,
        holds: impl Fn(&Uuid) -> bool,
    ) -> Result<Event, Denied> {
        let candidates = self.candidates(ask, now)?;

        // The same client again while its lease lives: that lease, renewed, when the
        // client proves it holds it; another one that only names the client ID is a
        // client of its own. Of several (one per version), the one of the lowest version
        // and ID: the choice must not depend on the order of a hash table, so that every
        // member of a cluster decides alike.
        let own = self
            .leases
            .of_client(ask.client_id, ask.feature)
            .filter(|l| {
                let version = &self.leases.pool_key(l.pool).version;
                l.expires_at > now
                    && ask.version.is_none_or(|v| v == version)
                    && (ask.holder.proves(&l.holder) || holds(&l.id))
            })
            .min_by(|a, b| {
                (&self.leases.pool_key(a.pool).version, a.id)
                    .cmp(&(&self.leases.pool_key(b.pool).version, b.id))
            });
        if let Some(l) = own
            && ask.borrow_ms.is_none()
        {
            return self.decide_renew(&l.id, now, lease_ms);
        }

        let granted = self.decide_new(&candidates, ask, now, lease_ms, new_id, granted_by)?;
        // Seats free, but clients queued earlier wait for them: first come, first served.
        let waiting = self.waiting_in_line(ask.feature, self.queue.len(), now);
        if waiting > 0
            && let Event::LeaseGranted { lease } = &granted
        {
            let key = FeatureKey {
                feature: lease.feature.clone(),
                version: lease.version.clone(),
            };
            let count = self.count_at(&key, now);
            let clients = if waiting == 1 {
                "client waits"
            } else {
                "clients wait"
            };
            return Err(Denied::NoSeat {
                next_free_at: None,
                reason: format!(
                    "{waiting} {clients} in line for {} before this checkout",
                    ask.feature
                ),
                asked: ask.count,
                free: count.saturating_sub(self.in_use(&key)),
                count,
            });
        }
        Ok(granted)
    }

    /// The pools a checkout may take its seats from: the exact version, or every version
    /// of the feature (a borrow: those that allow borrowing that long).
    fn candidates(
        &self,
        ask: &CheckoutAsk<'_>,
        now: Millis,
    ) -> Result<Vec<(&FeatureKey, &Pool)>, Denied> {
        let first = FeatureKey {
            feature: ask.feature.to_owned(),
            version: ask.version.unwrap_or_default().to_owned(),
        };
        let candidates: Vec<(&FeatureKey, &Pool)> = self
            .pools
            .range(first..)
            .take_while(|(k, _)| k.feature == ask.feature)
            .filter(|(k, _)| ask.version.is_none_or(|v| k.version == v))
            .collect();
        if candidates.is_empty() {
            return Err(Denied::UnknownFeature);
        }
        match ask.borrow_ms {
            Some(ms) => borrowable(candidates, ms, now),
            None => Ok(candidates),
        }
    }

    /// A new lease from the first of `candidates` with room for it, if the options
    /// file's rules allow it; the queue is not consulted.
    fn decide_new(
        &self,
        candidates: &[(&FeatureKey, &Pool)],
        ask: &CheckoutAsk<'_>,
        now: Millis,
        lease_ms: i64,
        new_id: Uuid,
        granted_by: &str,
    ) -> Result<Event, Denied> {
        if let Some(options) = &self.options {
            self.decide_rules(&options.rules, ask, now)
                .map_err(Denied::Rule)?;
        }

        let mut all_expired_at: Option<Millis> = Some(0);
        let mut next_free: Option<Millis> = None;
        let mut reasons = Vec::new();
        // The pool that came closest: the most seats free (the first of equals).
        let mut closest: Option<(u32, u32)> = None;
        for (key, pool) in candidates {
            let cap = pool.count_at(now);
            match pool.expired_at(now) {
                Some(at) => {
                    all_expired_at = all_expired_at.map(|a| a.max(at));
                    continue;
                }
                None => all_expired_at = None,
            }
            let used = self.in_use(key);
            let wanted = used.saturating_add(ask.count);
            // Beyond the count, up to the rights' overdraft: marked as such.
            let overdraft = wanted > cap && cap > 0 && wanted - cap <= pool.overdraft_at(now);
            if wanted <= cap || overdraft {
                return Ok(Event::LeaseGranted {
                    lease: LeaseRecord {
                        id: new_id,
                        feature: key.feature.clone(),
                        version: key.version.clone(),
                        count: ask.count,
                        client_id: ask.client_id.to_owned(),
                        granted_at: now,
                        renewed_at: now,
                        expires_at: now + lease_ms,
                        granted_by: granted_by.to_owned(),
                        granted_seq: 0,
                        holder: ask.holder,
                        kind: LeaseKind {
                            borrowed: ask.borrow_ms.is_some(),
                            overdraft,
                        },
                        user: ask.who.user.to_owned(),
                        host: ask.who.host.to_owned(),
                    },
                });
            }
            let free = cap.saturating_sub(used);
            if closest.is_none_or(|(f, _)| free > f) {
                closest = Some((free, cap));
            }
            let name = key.display();
            let when = if cap == 0 {
                reasons.push(format!("{name} has not started"));
                pool.next_start(now)
            } else {
                let seats = if ask.count == 1 { "seat" } else { "seats" };
                let beyond = if ask.count > cap {
                    format!(", more than the {cap} licensed")
                } else {
                    String::new()
                };
                reasons.push(format!(
                    "{} {seats} of {name} asked, {free} of {cap} free{beyond}",
                    ask.count
                ));
                if ask.count > cap {
                    None
                } else {
                    self.when_free(key, used, cap, ask.count)
                }
            };
            if let Some(w) = when {
                next_free = Some(next_free.map_or(w, |n: Millis| n.min(w)));
            }
        }
        if let Some(at) = all_expired_at {
            return Err(Denied::FeatureExpired { expired_at: at });
        }
        let (free, count) = closest.unwrap_or_default();
        Err(Denied::NoSeat {
            next_free_at: next_free,
            reason: reasons.join("; "),
            asked: ask.count,
            free,
            count,
        })
    }

    /// Every version's pool of a feature, in version order.
    fn pools_of_feature<'a>(
        &'a self,
        feature: &'a str,
    ) -> impl Iterator<Item = (&'a FeatureKey, &'a Pool)> {
        self.pools
            .range(
                FeatureKey {
                    feature: feature.to_owned(),
                    version: String::new(),
                }..,
            )
            .take_while(move |(k, _)| k.feature == feature)
    }

    /// The options file's say on a new grant: seats and live leases of every version of
    /// the feature.
    fn decide_rules(
        &self,
        options: &Options,
        ask: &CheckoutAsk<'_>,
        now: Millis,
    ) -> Result<(), RuleDenial> {
        if options.is_open(ask.feature) {
            return Ok(());
        }
        let pools: Vec<&FeatureKey> = self
            .pools_of_feature(ask.feature)
            .filter(|(_, p)| p.expired_at(now).is_none())
            .map(|(k, _)| k)
            .collect();
        let seats = Seats {
            count: pools
                .iter()
                .fold(0u32, |a, k| a.saturating_add(self.count_at(k, now))),
            used: pools
                .iter()
                .fold(0u32, |a, k| a.saturating_add(self.in_use(k))),
        };
        let leases = pools
            .iter()
            .filter_map(|k| self.leases.pool_id(k))
            .flat_map(|p| self.leases.by_pool_expiry(p))
            .filter(|(exp, _)| *exp > now)
            .map(|(_, l)| {
                let who = Who {
                    user: self.leases.who(l.user),
                    host: self.leases.who(l.client_host),
                };
                (who, l.count)
            });
        options.decide(ask.feature, ask.who, ask.count, seats, leases)
    }

    /// When enough leases of a pool will have expired for `want` more seats.
    fn when_free(&self, key: &FeatureKey, used: u32, cap: u32, want: u32) -> Option<Millis> {
        let mut remaining = used;
        for (exp, l) in self.leases.by_pool_expiry(self.leases.pool_id(key)?) {
            remaining = remaining.saturating_sub(l.count);
            if remaining.saturating_add(want) <= cap {
                return Some(exp);
            }
        }
        None
    }

    /// Renew: a live lease of a feature that is still licensed.
    pub fn decide_renew(&self, id: &Uuid, now: Millis, lease_ms: i64) -> Result<Event, Denied> {
        let l = self.leases.get(id).ok_or(Denied::UnknownLease)?;
        if l.expires_at <= now {
            return Err(Denied::UnknownLease);
        }
        let pool = self
            .pools
            .get(self.leases.pool_key(l.pool))
            .ok_or(Denied::FeatureRemoved)?;
        if let Some(at) = pool.expired_at(now) {
            return Err(Denied::FeatureExpired { expired_at: at });
        }
        // A borrowed lease keeps the end it was borrowed until: a renewal neither extends
        // nor shortens it.
        let expires_at = if l.kind.borrowed {
            l.expires_at
        } else {
            now + lease_ms
        };
        Ok(Event::LeaseRenewed {
            id: *id,
            at: now,
            expires_at,
        })
    }

    /// Return by the client.
    pub fn decide_return(&self, id: &Uuid, now: Millis) -> Result<Event, Denied> {
        if self.leases.contains(id) {
            Ok(Event::LeaseReturned { id: *id, at: now })
        } else {
            Err(Denied::UnknownLease)
        }
    }

    /// Release by an operator.
    pub fn decide_release(&self, id: &Uuid, now: Millis) -> Result<Event, Denied> {
        if self.leases.contains(id) {
            Ok(Event::LeaseReleased { id: *id, at: now })
        } else {
            Err(Denied::UnknownLease)
        }
    }

    /// Every pool with its count, use and expiry; pools whose rights were removed but
    /// that still have leases show a count of 0.
    pub fn features(&self, now: Millis) -> Vec<FeatureInfo> {
        let mut keys: BTreeSet<&FeatureKey> = self.pools.keys().collect();
        keys.extend(self.leases.pools_in_use().map(|(k, _)| k));
        let mut borrowed: BTreeMap<&FeatureKey, u32> = BTreeMap::new();
        for l in self.leases.iter().filter(|l| l.kind.borrowed) {
            let n = borrowed.entry(self.leases.pool_key(l.pool)).or_default();
            *n = n.saturating_add(l.count);
        }
        keys.into_iter()
            .map(|key| {
                let pool = self.pools.get(key);
                let count = pool.map_or(0, |p| p.count_at(now));
                let in_use = self.in_use(key);
                FeatureInfo {
                    feature: key.feature.clone(),
                    version: key.version.clone(),
                    count,
                    in_use,
                    free: count.saturating_sub(in_use),
                    overdraft: in_use.saturating_sub(count),
                    borrowed: borrowed.get(key).copied().unwrap_or(0),
                    queued: self.queued_for(key) as u32,
                    starts_at: pool.and_then(Pool::starts_at),
                    expires_at: pool.and_then(Pool::expires_at),
                    expired: pool.is_none_or(|p| p.expired_at(now).is_some()),
                    rights: pool.map_or_else(Vec::new, |p| p.rights(now)),
                }
            })
            .collect()
    }

    /// Leases of a feature (every version), oldest first.
    pub fn leases_of(&self, feature: &str) -> Vec<LeaseInfo> {
        let mut out: Vec<LeaseInfo> = self
            .leases
            .iter()
            .filter(|l| self.leases.pool_key(l.pool).feature == feature)
            .map(|l| self.leases.record(l).info())
            .collect();
        out.sort_by_key(|l| (l.granted_at, l.lease_id));
        out
    }

    pub fn has_feature(&self, feature: &str) -> bool {
        self.pools.keys().any(|k| k.feature == feature)
            || self
                .leases
                .pools_in_use()
                .any(|(k, _)| k.feature == feature)
    }
}

/// What a failback merge kept from each side.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MergeReport {
    /// Leases held on the backup (granted by either server before or during the failover).
    pub from_backup: usize,
    /// Leases the main granted that the backup never saw (after the two diverged).
    pub from_main: usize,
    /// Leases renewed on the main later than on the backup.
    pub renewed_on_main: usize,
}

impl State {
    /// The state a returning main serves from after a failover: everything the backup
    /// did while it served, plus the leases the main granted that the backup never saw.
    ///
    /// When the backup forked from this main's history, a lease only the main holds was
    /// granted after the fork iff its grant's sequence number is past the fork; older ones
    /// were ended on the backup and stay ended. Of the later ones, only those granted
    /// while the main acknowledged without its backup are kept: one granted while the
    /// pair was in sync waited for the backup, which never had it, so its client was
    /// never answered. Without a common history nothing tells
    /// the two apart, and every live lease is kept (a lease is never lost; a returned one
    /// at worst holds its seat until it expires). Both sides' expiries are honoured.
    ///
    /// A backup that stood by and is ahead in the main's own history (the main lost in a
    /// crash changes it had sent while its own sync ran) holds everything the main held up
    /// to its own last change, and more: there the fork is the backup's last change. A
    /// lease only the main holds was ended on the backup (returned or expired there, its
    /// seat perhaps granted again), unless the main granted it after that point.
    pub fn merged_for_failback(
        main: &State,
        backup: &State,
        history: Uuid,
        now: Millis,
    ) -> (State, MergeReport) {
        let mut out = backup.clone();
        let mut report = MergeReport {
            from_backup: backup.leases.len(),
            ..MergeReport::default()
        };
        let fork = backup
            .fork
            .filter(|f| !main.history.is_nil() && f.history == main.history)
            .or_else(|| {
                (!main.history.is_nil() && backup.history == main.history).then_some(Fork {
                    history: main.history,
                    seq: backup.seq,
                })
            });
        let next_seq = main.seq.max(backup.seq) + 1;
        for l in main.leases.iter() {
            match out.leases.get(&l.id) {
                Some(b) => {
                    if l.expires_at > b.expires_at {
                        let renewed_at = b.renewed_at.max(l.renewed_at);
                        out.leases.renew(&l.id, renewed_at, l.expires_at);
                        report.renewed_on_main += 1;
                    }
                }
                None => {
                    let keep = match fork {
                        Some(f) => {
                            l.granted_seq > f.seq
                                && main.alone_from.is_some_and(|a| l.granted_seq >= a)
                        }
                        None => l.expires_at > now,
                    };
                    if keep {
                        out.leases.insert(LeaseRef {
                            granted_seq: next_seq,
                            ..main.leases.view(l)
                        });
                        report.from_main += 1;
                    }
                }
            }
        }
        if main.rights_issued_at() > backup.rights_issued_at() {
            out.rights = main.rights.clone();
            out.rights_updated_at = main.rights_updated_at;
        }
        if out.lease_key.is_none() {
            out.lease_key = main.lease_key.clone();
        }
        out.absorbed = Some(Fork {
            history: backup.history,
            seq: backup.seq,
        });
        out.history = history;
        out.fork = None;
        out.active_since = None;
        out.alone_from = Some(next_seq);
        out.backup = main.backup.clone();
        // The main's options: it read its file at this start, after the backup's copy.
        out.options = main.options.clone();
        // What either side served and closed, each interval once.
        out.keep_usage(main.usage.values().cloned());
        out.detached = None;
        out.merge_queue(main, fork, next_seq, now);
        out.seq = next_seq;
        out.rebuild_index();
        (out, report)
    }

    /// Whether a standby backup at (`history`, `seq`) holds changes this state lacks and
    /// must be merged before it is overwritten: it has a history of its own that this
    /// state neither continues nor has already taken in.
    pub fn must_absorb(&self, history: Uuid, seq: u64) -> bool {
        if history.is_nil() || seq == 0 {
            return false;
        }
        if history == self.history {
            return seq > self.seq;
        }
        self.absorbed != Some(Fork { history, seq })
    }
}

/// The pools a borrow of `ms` may come from: those whose rights allow borrowing that
/// long. None borrowable: [`Denied::NotBorrowable`]; none long enough:
/// [`Denied::BorrowTooLong`] with the longest allowed.
fn borrowable<'a>(
    candidates: Vec<(&'a FeatureKey, &'a Pool)>,
    ms: i64,
    now: Millis,
) -> Result<Vec<(&'a FeatureKey, &'a Pool)>, Denied> {
    let longest = candidates
        .iter()
        .filter_map(|(_, p)| p.max_borrow_at(now))
        .max()
        .ok_or(Denied::NotBorrowable)?;
    let fit: Vec<_> = candidates
        .into_iter()
        .filter(|(_, p)| {
            p.max_borrow_at(now)
                .is_some_and(|max| i128::from(max) * 1000 >= i128::from(ms))
        })
        .collect();
    if fit.is_empty() {
        return Err(Denied::BorrowTooLong { max_secs: longest });
    }
    Ok(fit)
}

fn pools_of(rights: &[Right]) -> BTreeMap<FeatureKey, Pool> {
    let mut pools: BTreeMap<FeatureKey, Pool> = BTreeMap::new();
    for r in rights {
        pools
            .entry(FeatureKey {
                feature: r.feature.clone(),
                version: r.version.clone(),
            })
            .or_default()
            .parts
            .push(Part {
                activation_id: r.activation_id.clone(),
                count: r.count,
                starts_at: r.starts_at,
                expires_at: r.expires_at,
                overdraft: r.overdraft,
                max_borrow_secs: r.max_borrow_secs,
            });
    }
    pools
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::RuleKind;

    const LEASE: i64 = 60_000;
    const T0: Millis = 1_700_000_000_000;

    fn right(feature: &str, version: &str, count: u32, expires_at: Option<i64>) -> Right {
        Right {
            activation_id: format!("ACT-{feature}"),
            feature: feature.into(),
            version: version.into(),
            count,
            starts_at: 0,
            expires_at,
            max_borrow_secs: None,
            overdraft: 0,
        }
    }

    fn state_with(rights: Vec<Right>) -> State {
        let mut s = State::default();
        s.apply(&Event::RightsUpdated {
            rights: rights::tests::signed(rights, T0 / 1000),
            at: T0,
        });
        s
    }

    /// A client whose secret is its name.
    fn ask<'a>(feature: &'a str, client: &'a str, count: u32) -> CheckoutAsk<'a> {
        CheckoutAsk {
            borrow_ms: None,
            feature,
            version: None,
            count,
            client_id: client,
            holder: Holder::of_secret(&format!("{client}'s own secret")),
            who: Who::default(),
        }
    }

    #[test]
    fn reserved_seats_count_across_versions_and_the_rules_follow_their_event() {
        // 2 seats of 1.0 and 2 of 2.0; alice's group reserves 2 of the feature.
        let mut s = state_with(vec![
            right("cad", "1.0", 2, None),
            right("cad", "2.0", 2, None),
        ]);
        s.apply(&Event::OptionsChanged {
            text: "GROUP eng alice\nRESERVE 2 cad GROUP eng\n".into(),
            at: T0,
        });
        let as_ = |client: &'static str, user: &'static str| CheckoutAsk {
            who: Who { user, host: "h" },
            ..ask("cad", client, 1)
        };
        checkout(&mut s, &as_("b1", "bob"), T0).unwrap();
        checkout(&mut s, &as_("b2", "bob"), T0).unwrap();
        match checkout(&mut s, &as_("b3", "bob"), T0) {
            Err(Denied::Rule(r)) => assert_eq!((r.kind, r.line), (RuleKind::Reserved, 2)),
            other => panic!("{other:?}"),
        }
        checkout(&mut s, &as_("a1", "alice"), T0).unwrap();
        // The rules end with an empty text: bob takes the last seat.
        s.apply(&Event::OptionsChanged {
            text: String::new(),
            at: T0,
        });
        assert!(s.options.is_none());
        checkout(&mut s, &as_("b3", "bob"), T0).unwrap();
        // A copy for the pair (JSON) carries the options.
        s.apply(&Event::OptionsChanged {
            text: "EXCLUDE cad USER bob\n".into(),
            at: T0,
        });
        let copy: State = serde_json::from_value(serde_json::to_value(&s).unwrap()).unwrap();
        assert_eq!(
            copy.options.map(|o| o.text),
            Some("EXCLUDE cad USER bob\n".into())
        );
    }

    fn checkout(s: &mut State, a: &CheckoutAsk<'_>, now: Millis) -> Result<Uuid, Denied> {
        let ev = s.decide_checkout(a, now, LEASE, Uuid::new_v4(), "string:me", |_| false)?;
        let id = match &ev {
            Event::LeaseGranted { lease } => lease.id,
            Event::LeaseRenewed { id, .. } => *id,
            other => panic!("unexpected {other:?}"),
        };
        s.apply(&ev);
        Ok(id)
    }

    fn lending(count: u32, max_borrow_secs: Option<u64>, overdraft: u32) -> State {
        state_with(vec![Right {
            max_borrow_secs,
            overdraft,
            ..right("cad", "1.0", count, None)
        }])
    }

    fn granted(s: &mut State, a: &CheckoutAsk<'_>, now: Millis, ms: i64) -> LeaseRecord {
        match s.decide_checkout(a, now, ms, Uuid::new_v4(), "string:me", |_| false) {
            Ok(ev @ Event::LeaseGranted { .. }) => {
                s.apply(&ev);
                let Event::LeaseGranted { lease } = ev else {
                    unreachable!()
                };
                s.lease(&lease.id).unwrap()
            }
            other => panic!("not granted: {other:?}"),
        }
    }

    #[test]
    fn overdraft_seats_are_granted_beyond_the_count_marked_and_only_where_allowed() {
        let mut s = lending(2, None, 1);
        let key = FeatureKey {
            feature: "cad".into(),
            version: "1.0".into(),
        };
        for c in ["a", "b"] {
            assert!(!granted(&mut s, &ask("cad", c, 1), T0, LEASE).kind.overdraft);
        }
        let over = granted(&mut s, &ask("cad", "c", 1), T0, LEASE);
        assert!(over.kind.overdraft && !over.kind.borrowed);
        assert!(over.info().overdraft);
        let f = &s.features(T0)[0];
        assert_eq!((f.count, f.in_use, f.free, f.overdraft), (2, 3, 0, 1));
        // The overdraft used up: denied as usual.
        assert!(matches!(
            checkout(&mut s, &ask("cad", "d", 1), T0),
            Err(Denied::NoSeat { .. })
        ));
        // Two at once where one overdraft seat is left of two: never more than it allows.
        let mut s = lending(2, None, 1);
        granted(&mut s, &ask("cad", "a", 1), T0, LEASE);
        assert!(matches!(
            checkout(&mut s, &ask("cad", "b", 3), T0),
            Err(Denied::NoSeat { .. })
        ));
        assert!(
            granted(&mut s, &ask("cad", "b", 2), T0, LEASE)
                .kind
                .overdraft
        );
        assert_eq!(s.in_use(&key), 3);

        // No overdraft on the line item: none granted.
        let mut s = lending(1, None, 0);
        granted(&mut s, &ask("cad", "a", 1), T0, LEASE);
        assert!(matches!(
            checkout(&mut s, &ask("cad", "b", 1), T0),
            Err(Denied::NoSeat { .. })
        ));
    }

    #[test]
    fn a_borrow_within_the_maximum_is_granted_counted_and_kept_to_its_end() {
        const DAY: i64 = 86_400_000;
        let mut s = lending(2, Some(7 * 86_400), 0);
        let borrow = CheckoutAsk {
            borrow_ms: Some(3 * DAY),
            ..ask("cad", "laptop", 1)
        };
        let b = granted(&mut s, &borrow, T0, 3 * DAY);
        assert!(b.kind.borrowed && !b.kind.overdraft);
        assert_eq!(b.expires_at, T0 + 3 * DAY);
        assert_eq!(s.features(T0)[0].borrowed, 1);
        // Counted against the pool: one seat left.
        granted(&mut s, &ask("cad", "desk", 1), T0, LEASE);
        assert!(checkout(&mut s, &ask("cad", "other", 1), T0).is_err());
        // The borrower checking out again gets a new borrow, never its old one renewed
        // short; a renewal keeps the borrow's end.
        let ev = s.decide_renew(&b.id, T0 + DAY, LEASE).unwrap();
        assert!(matches!(ev, Event::LeaseRenewed { expires_at, .. } if expires_at == T0 + 3 * DAY));
        // It ends at its end, not before.
        assert!(
            s.expired(T0 + 3 * DAY - 1)
                .iter()
                .all(|e| !matches!(e, Event::LeaseExpired { id, .. } if *id == b.id))
        );
        assert!(
            s.expired(T0 + 3 * DAY)
                .iter()
                .any(|e| matches!(e, Event::LeaseExpired { id, .. } if *id == b.id))
        );
        // Returned early: the seat is free again.
        s.apply(&s.decide_return(&b.id, T0 + 1).unwrap());
        granted(&mut s, &ask("cad", "other", 1), T0 + 2, LEASE);
    }

    #[test]
    fn a_borrow_is_refused_where_not_borrowable_or_longer_than_allowed() {
        let borrow = |ms| CheckoutAsk {
            borrow_ms: Some(ms),
            ..ask("cad", "laptop", 1)
        };
        let mut s = lending(5, None, 2);
        assert_eq!(
            checkout(&mut s, &borrow(60_000), T0),
            Err(Denied::NotBorrowable)
        );
        let mut s = lending(5, Some(3_600), 0);
        assert_eq!(
            checkout(&mut s, &borrow(3_600_001), T0),
            Err(Denied::BorrowTooLong { max_secs: 3_600 })
        );
        assert!(checkout(&mut s, &borrow(3_600_000), T0).is_ok());
        assert_eq!(s.lease_count(), 1, "the refusals granted nothing");
    }

    #[test]
    fn a_denial_says_how_many_seats_were_asked_and_how_many_are_free() {
        let mut s = state_with(vec![right("cad", "1.0", 10, None)]);
        checkout(&mut s, &ask("cad", "holder", 5), T0).unwrap();
        match checkout(&mut s, &ask("cad", "big", 7), T0 + 1) {
            Err(Denied::NoSeat {
                reason,
                asked,
                free,
                count,
                ..
            }) => {
                assert_eq!(reason, "7 seats of cad 1.0 asked, 5 of 10 free");
                assert_eq!((asked, free, count), (7, 5, 10));
            }
            other => panic!("{other:?}"),
        }
        // More than the pool has in all: said so, and no time it would free.
        match checkout(&mut s, &ask("cad", "huge", 11), T0 + 1) {
            Err(Denied::NoSeat {
                reason,
                next_free_at,
                ..
            }) => {
                assert_eq!(
                    reason,
                    "11 seats of cad 1.0 asked, 5 of 10 free, more than the 10 licensed"
                );
                assert_eq!(next_free_at, None);
            }
            other => panic!("{other:?}"),
        }
        // Of several versions, the numbers are the closest pool's (the most free).
        let mut s = state_with(vec![
            right("cad", "1.0", 2, None),
            right("cad", "2.0", 4, None),
        ]);
        checkout(&mut s, &ask("cad", "a", 2), T0).unwrap();
        checkout(&mut s, &ask("cad", "b", 1), T0).unwrap();
        match checkout(&mut s, &ask("cad", "c", 4), T0 + 1) {
            Err(Denied::NoSeat {
                reason,
                asked,
                free,
                count,
                ..
            }) => {
                assert_eq!(
                    reason,
                    "4 seats of cad 1.0 asked, 0 of 2 free, more than the 2 licensed; \
                     4 seats of cad 2.0 asked, 3 of 4 free"
                );
                assert_eq!((asked, free, count), (4, 3, 4));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn grants_until_the_count_then_denies_with_next_free_at() {
        let mut s = state_with(vec![right("cad", "1.0", 3, None)]);
        for i in 0..3 {
            checkout(&mut s, &ask("cad", &format!("c{i}"), 1), T0 + i).unwrap();
        }
        let key = FeatureKey {
            feature: "cad".into(),
            version: "1.0".into(),
        };
        assert_eq!(s.in_use(&key), 3);
        match checkout(&mut s, &ask("cad", "c9", 1), T0 + 10) {
            Err(Denied::NoSeat { next_free_at, .. }) => assert_eq!(next_free_at, Some(T0 + LEASE)),
            other => panic!("{other:?}"),
        }
        // Two seats at once: free when the second lease ends.
        match checkout(&mut s, &ask("cad", "c9", 2), T0 + 10) {
            Err(Denied::NoSeat { next_free_at, .. }) => {
                assert_eq!(next_free_at, Some(T0 + 1 + LEASE))
            }
            other => panic!("{other:?}"),
        }
        // More than the pool holds: never.
        match checkout(&mut s, &ask("cad", "c9", 4), T0 + 10) {
            Err(Denied::NoSeat { next_free_at, .. }) => assert_eq!(next_free_at, None),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn same_client_gets_its_lease_back_renewed() {
        let mut s = state_with(vec![right("cad", "", 3, None)]);
        let a = checkout(&mut s, &ask("cad", "alice", 1), T0).unwrap();
        let b = checkout(&mut s, &ask("cad", "alice", 1), T0 + 5000).unwrap();
        assert_eq!(a, b);
        assert_eq!(s.lease_count(), 1);
        assert_eq!(s.lease(&a).unwrap().expires_at, T0 + 5000 + LEASE);
        // After it lapsed, a new lease.
        let c = checkout(&mut s, &ask("cad", "alice", 1), T0 + 5000 + LEASE + 1).unwrap();
        assert_ne!(a, c);
    }

    #[test]
    fn naming_another_clients_id_without_its_secret_is_another_client() {
        let mut s = state_with(vec![right("cad", "", 3, None)]);
        let alice = checkout(&mut s, &ask("cad", "alice", 1), T0).unwrap();
        // Alice's client ID with another secret, and with none: leases of their own.
        let impostor = CheckoutAsk {
            holder: Holder::of_secret("a guess"),
            ..ask("cad", "alice", 1)
        };
        let other = checkout(&mut s, &impostor, T0 + 1).unwrap();
        assert_ne!(other, alice);
        let anonymous = CheckoutAsk {
            holder: Holder::NONE,
            ..ask("cad", "alice", 1)
        };
        let third = checkout(&mut s, &anonymous, T0 + 2).unwrap();
        assert!(third != alice && third != other);
        // Full now: the impostor gets no seat, and never alice's lease.
        assert!(matches!(
            checkout(
                &mut s,
                &CheckoutAsk {
                    holder: Holder::of_secret("another guess"),
                    ..impostor
                },
                T0 + 3
            ),
            Err(Denied::NoSeat { .. })
        ));
        // A checkout without a secret that shows alice's lease token gets it back.
        let ev = s
            .decide_checkout(
                &anonymous,
                T0 + 4,
                LEASE,
                Uuid::new_v4(),
                "string:me",
                |id| *id == alice,
            )
            .unwrap();
        assert!(matches!(ev, Event::LeaseRenewed { id, .. } if id == alice));
        // Holders: none proves nothing, not even against none.
        assert!(!Holder::NONE.proves(&Holder::NONE));
        assert!(Holder::of_secret("x").proves(&Holder::of_secret("x")));
        assert!(!Holder::of_secret("x").proves(&Holder::of_secret("y")));
        let json = serde_json::to_string(&Holder::of_secret("x")).unwrap();
        assert_eq!(
            serde_json::from_str::<Holder>(&json).unwrap(),
            Holder::of_secret("x")
        );
    }

    #[test]
    fn expiry_frees_seats() {
        let mut s = state_with(vec![right("cad", "", 1, None)]);
        let id = checkout(&mut s, &ask("cad", "a", 1), T0).unwrap();
        assert!(s.expired(T0 + LEASE - 1).is_empty());
        assert_eq!(s.next_expiry(), Some(T0 + LEASE));
        let evs = s.expired(T0 + LEASE);
        assert_eq!(evs, vec![Event::LeaseExpired { id, at: T0 + LEASE }]);
        for e in &evs {
            s.apply(e);
        }
        assert_eq!(s.lease_count(), 0);
        checkout(&mut s, &ask("cad", "b", 1), T0 + LEASE).unwrap();
        // A renewal after the lease lapsed is refused.
        assert_eq!(
            s.decide_renew(&id, T0 + LEASE, LEASE),
            Err(Denied::UnknownLease)
        );
    }

    #[test]
    fn expired_and_unknown_features() {
        let now_s = T0 / 1000;
        let mut s = state_with(vec![
            right("old", "", 5, Some(now_s - 10)),
            right("new", "", 5, Some(now_s + 10)),
        ]);
        assert_eq!(
            checkout(&mut s, &ask("old", "a", 1), T0),
            Err(Denied::FeatureExpired {
                expired_at: (now_s - 10) * 1000
            })
        );
        assert_eq!(
            checkout(&mut s, &ask("nope", "a", 1), T0),
            Err(Denied::UnknownFeature)
        );
        let id = checkout(&mut s, &ask("new", "a", 1), T0).unwrap();
        // The feature expires while the lease lives: renewals are refused.
        assert!(matches!(
            s.decide_renew(&id, T0 + 11_000, LEASE),
            Err(Denied::FeatureExpired { .. })
        ));
        let f = s.features(T0 + 11_000);
        assert!(f.iter().all(|f| f.expired));
    }

    #[test]
    fn shrinking_rights_keep_leases_but_grant_nothing_new() {
        let mut s = state_with(vec![right("cad", "", 3, None)]);
        let ids: Vec<Uuid> = (0..3)
            .map(|i| checkout(&mut s, &ask("cad", &format!("c{i}"), 1), T0).unwrap())
            .collect();
        s.apply(&Event::RightsUpdated {
            rights: rights::tests::signed(vec![right("cad", "", 1, None)], 0),
            at: T0 + 1,
        });
        assert_eq!(s.lease_count(), 3);
        assert!(s.decide_renew(&ids[0], T0 + 2, LEASE).is_ok());
        assert!(matches!(
            checkout(&mut s, &ask("cad", "x", 1), T0 + 2),
            Err(Denied::NoSeat { .. })
        ));
        for id in &ids[..2] {
            let ev = s.decide_return(id, T0 + 3).unwrap();
            s.apply(&ev);
        }
        // 1 in use of 1: still full; after the last returns, one seat.
        assert!(checkout(&mut s, &ask("cad", "x", 1), T0 + 4).is_err());
        let ev = s.decide_return(&ids[2], T0 + 5).unwrap();
        s.apply(&ev);
        checkout(&mut s, &ask("cad", "x", 1), T0 + 6).unwrap();
        let f = &s.features(T0 + 6)[0];
        assert_eq!((f.count, f.in_use, f.free), (1, 1, 0));
        // Removed entirely: leases remain visible with count 0, renewals refused.
        s.apply(&Event::RightsUpdated {
            rights: rights::tests::signed(vec![], 0),
            at: T0 + 7,
        });
        let f = &s.features(T0 + 7)[0];
        assert_eq!((f.count, f.in_use), (0, 1));
        let lid = s.leases_of("cad")[0].lease_id;
        assert_eq!(
            s.decide_renew(&lid, T0 + 8, LEASE),
            Err(Denied::FeatureRemoved)
        );
    }

    #[test]
    fn versions_and_rights_sum() {
        let mut s = state_with(vec![
            right("cad", "1.0", 1, None),
            right("cad", "2.0", 1, None),
            right("cad", "2.0", 1, None),
        ]);
        let v2 = CheckoutAsk {
            version: Some("2.0"),
            ..ask("cad", "a", 2)
        };
        checkout(&mut s, &v2, T0).unwrap();
        // Any version: 2.0 is full, 1.0 has one.
        let id = checkout(&mut s, &ask("cad", "b", 1), T0).unwrap();
        assert_eq!(s.lease(&id).unwrap().version, "1.0");
        assert!(checkout(&mut s, &ask("cad", "c", 1), T0).is_err());
        let unknown_version = CheckoutAsk {
            version: Some("3.0"),
            ..ask("cad", "a", 1)
        };
        assert_eq!(
            checkout(&mut s, &unknown_version, T0),
            Err(Denied::UnknownFeature)
        );
    }

    #[test]
    fn snapshot_round_trip_rebuilds_indexes() {
        let mut s = state_with(vec![right("cad", "", 2, None)]);
        let id = checkout(&mut s, &ask("cad", "a", 1), T0).unwrap();
        let mut meter = usage::Meter::new(shared::HostId::parse("string:m").unwrap(), 1_000, 1_000);
        let cad = FeatureKey {
            feature: "cad".into(),
            version: String::new(),
        };
        meter.level(&cad, T0, 1, 2);
        s.apply(&Event::UsageClosed {
            intervals: meter.flush(T0 + 500),
        });
        let json = serde_json::to_string(&s).unwrap();
        let mut back: State = serde_json::from_str(&json).unwrap();
        // The closed usage intervals go with the pair's snapshot and handback.
        assert_eq!(back.usage, s.usage);
        assert_eq!(back.usage.len(), 1);
        back.rebuild_index();
        // Rights read from JSON count for nothing until they verify again.
        assert_eq!(back.features(T0)[0].count, 0);
        rights::tests::check()
            .verify(back.rights.as_mut().unwrap())
            .unwrap();
        back.rebuild_index();
        assert_eq!(back.seq, s.seq);
        assert_eq!(back.features(T0), s.features(T0));
        assert_eq!(back.next_expiry(), Some(T0 + LEASE));
        // Same client gets the same lease from the restored state.
        assert_eq!(
            checkout(&mut back, &ask("cad", "a", 1), T0 + 1).unwrap(),
            id
        );
    }

    fn grant_to(s: &mut State, client: &str, now: Millis) -> Uuid {
        checkout(s, &ask("cad", client, 1), now).unwrap()
    }

    #[test]
    fn failback_merge_keeps_both_sides_grants_and_the_backups_returns() {
        let h1 = Uuid::new_v4();
        let mut main = state_with(vec![right("cad", "", 10, None)]);
        main.apply(&Event::HistoryStarted { history: h1 });
        let before = grant_to(&mut main, "before", T0);
        let returned_on_backup = grant_to(&mut main, "leaver", T0);
        // The backup is a copy up to here, then the main dies and the backup takes over.
        let mut backup = main.clone();
        backup.rebuild_index();
        backup.apply(&Event::TookOver {
            at: T0 + 10,
            history: Uuid::new_v4(),
        });
        assert_eq!(backup.fork.unwrap().seq, main.seq);
        // The main had granted one more that never reached the backup, and acknowledged
        // it alone (the backup had stopped answering) ...
        main.apply(&Event::WentAlone {
            at: T0 + 4,
            from_seq: main.seq + 1,
        });
        let main_only = grant_to(&mut main, "unreplicated", T0 + 5);
        // ... while a grant of the pair in sync that the backup never held was never
        // acknowledged.
        let mut in_sync_main = main.clone();
        in_sync_main.rebuild_index();
        in_sync_main.apply(&Event::Rejoined { at: T0 + 6 });
        let phantom = grant_to(&mut in_sync_main, "never-answered", T0 + 7);
        // The backup serves: a new grant, a return, a renewal.
        let on_backup = grant_to(&mut backup, "on-backup", T0 + 20);
        let ev = backup.decide_return(&returned_on_backup, T0 + 21).unwrap();
        backup.apply(&ev);
        let ev = backup.decide_renew(&before, T0 + 30, LEASE).unwrap();
        backup.apply(&ev);

        let h3 = Uuid::new_v4();
        let (m, report) = State::merged_for_failback(&main, &backup, h3, T0 + 40);
        assert!(m.lease(&before).is_some());
        assert_eq!(m.lease(&before).unwrap().expires_at, T0 + 30 + LEASE);
        assert!(m.lease(&on_backup).is_some());
        assert!(
            m.lease(&main_only).is_some(),
            "the main's own grant is kept"
        );
        assert!(
            m.lease(&returned_on_backup).is_none(),
            "returned on the backup"
        );
        assert_eq!(m.lease_count(), 3);
        assert_eq!(
            report,
            MergeReport {
                from_backup: 2,
                from_main: 1,
                renewed_on_main: 0
            }
        );
        assert_eq!(m.history, h3);
        assert!(m.seq > main.seq.max(backup.seq));
        assert_eq!(m.active_since, None);
        let key = FeatureKey {
            feature: "cad".into(),
            version: String::new(),
        };
        assert_eq!(m.in_use(&key), 3);
        let (m2, _) = State::merged_for_failback(&in_sync_main, &backup, h3, T0 + 40);
        assert!(
            m2.lease(&phantom).is_none(),
            "never acknowledged to its client"
        );
        // The backup's state is taken in: not again; another history of the backup is.
        assert!(!m.must_absorb(backup.history, backup.seq));
        assert!(m.must_absorb(backup.history, backup.seq + 1));
        assert!(!m.must_absorb(h3, m.seq));
        assert!(!m.must_absorb(Uuid::nil(), 0));
    }

    #[test]
    fn a_standby_backup_ahead_in_the_mains_history_is_taken_as_it_is() {
        let mut main = state_with(vec![right("cad", "", 2, None)]);
        main.apply(&Event::HistoryStarted {
            history: Uuid::new_v4(),
        });
        let kept = grant_to(&mut main, "a", T0);
        let returned = grant_to(&mut main, "b", T0);
        // The backup got more than the main kept through a crash: a return, and the seat
        // granted again (the pool full again).
        let mut backup = main.clone();
        backup.rebuild_index();
        let ev = backup.decide_return(&returned, T0 + 1).unwrap();
        backup.apply(&ev);
        let again = grant_to(&mut backup, "c", T0 + 2);
        // The restarted main records, before it compares, that it acknowledges alone:
        // its sequence numbers reach the backup's, with other changes.
        main.apply(&Event::WentAlone {
            at: T0 + 3,
            from_seq: main.seq + 1,
        });
        main.apply(&Event::WentAlone {
            at: T0 + 3,
            from_seq: main.seq + 1,
        });
        assert!(main.seq >= backup.seq);
        let (m, report) = State::merged_for_failback(&main, &backup, Uuid::new_v4(), T0 + 4);
        assert!(m.lease(&kept).is_some() && m.lease(&again).is_some());
        assert!(
            m.lease(&returned).is_none(),
            "returned on the backup: its seat is taken again"
        );
        let key = FeatureKey {
            feature: "cad".into(),
            version: String::new(),
        };
        assert_eq!(m.in_use(&key), 2, "never more than the count");
        assert_eq!(report.from_main, 0);
    }

    #[test]
    fn failback_merge_without_common_history_keeps_every_live_lease() {
        let mut main = state_with(vec![right("cad", "", 10, None)]);
        main.apply(&Event::HistoryStarted {
            history: Uuid::new_v4(),
        });
        let live = grant_to(&mut main, "a", T0);
        let mut backup = state_with(vec![right("cad", "", 10, None)]);
        backup.apply(&Event::HistoryStarted {
            history: Uuid::new_v4(),
        });
        let theirs = grant_to(&mut backup, "b", T0);
        let (m, _) = State::merged_for_failback(&main, &backup, Uuid::new_v4(), T0 + 1);
        assert!(m.lease(&live).is_some() && m.lease(&theirs).is_some());
        // Lapsed leases of the main are not brought back.
        let (m, _) = State::merged_for_failback(&main, &backup, Uuid::new_v4(), T0 + LEASE + 1);
        assert!(m.lease(&live).is_none());
    }

    /// Joins the line for `secs` seconds after a checkout was denied.
    fn join(s: &mut State, a: &CheckoutAsk<'_>, now: Millis, secs: i64) -> Uuid {
        let denied = checkout(s, a, now).expect_err("a seat was free");
        let ev = s
            .decide_queue_join(a, now, now + secs * 1000, Uuid::new_v4(), denied)
            .unwrap();
        let Event::QueueJoined { entry } = &ev else {
            panic!("{ev:?}")
        };
        let id = entry.id;
        s.apply(&ev);
        id
    }

    /// Grants what the line is owed; the clients granted, in order.
    fn serve(s: &mut State, now: Millis) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(ev) = s.next_queue_grant(now, LEASE, "string:me") {
            let Event::LeaseGranted { lease } = &ev else {
                panic!("{ev:?}")
            };
            out.push(lease.client_id.clone());
            s.apply(&ev);
        }
        out
    }

    fn give_back(s: &mut State, id: &Uuid, now: Millis) {
        let ev = s.decide_return(id, now).unwrap();
        s.apply(&ev);
    }

    #[test]
    fn three_queued_clients_are_granted_in_order_as_seats_free() {
        let mut s = state_with(vec![right("cad", "", 2, None)]);
        let held: Vec<Uuid> = ["h1", "h2"]
            .iter()
            .map(|c| checkout(&mut s, &ask("cad", c, 1), T0).unwrap())
            .collect();
        let places: Vec<Uuid> = ["q1", "q2", "q3"]
            .iter()
            .enumerate()
            .map(|(i, c)| join(&mut s, &ask("cad", c, 1), T0 + i as i64, 600))
            .collect();
        assert_eq!(s.queued("cad"), 3);
        assert_eq!(s.queue_position(&places[2]), Some(3));
        assert!(serve(&mut s, T0 + 10).is_empty(), "no seat free yet");
        give_back(&mut s, &held[1], T0 + 20);
        assert_eq!(serve(&mut s, T0 + 20), ["q1"]);
        // The seat is a lease with the place's ID; the place is gone, the next moves up.
        assert_eq!(s.lease(&places[0]).unwrap().client_id, "q1");
        assert_eq!(s.queue_position(&places[1]), Some(1));
        // A newcomer does not jump the line, even for a seat that is free.
        give_back(&mut s, &held[0], T0 + 30);
        match checkout(&mut s, &ask("cad", "newcomer", 1), T0 + 30) {
            Err(Denied::NoSeat { reason, .. }) => {
                assert!(reason.contains("2 clients wait in line"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(serve(&mut s, T0 + 30), ["q2"]);
        give_back(&mut s, &places[0], T0 + 40);
        assert_eq!(serve(&mut s, T0 + 40), ["q3"]);
        assert_eq!(s.queued("cad"), 0);
        let key = FeatureKey {
            feature: "cad".into(),
            version: String::new(),
        };
        assert_eq!(s.in_use(&key), 2, "never more than the count");
        // Every member applying the same events holds the same line and leases.
        let copy: State = serde_json::from_value(serde_json::to_value(&s).unwrap()).unwrap();
        assert_eq!(copy.queue(), s.queue());
    }

    #[test]
    fn a_reserved_seat_goes_past_a_queued_client_it_is_not_reserved_for() {
        let mut s = state_with(vec![right("cad", "", 2, None)]);
        s.apply(&Event::OptionsChanged {
            text: "RESERVE 1 cad USER alice\n".into(),
            at: T0,
        });
        let as_ = |client: &'static str, user: &'static str| CheckoutAsk {
            who: Who { user, host: "h" },
            ..ask("cad", client, 1)
        };
        let bob1 = checkout(&mut s, &as_("bob1", "bob"), T0).unwrap();
        let alice1 = checkout(&mut s, &as_("alice1", "alice"), T0).unwrap();
        join(&mut s, &as_("bob2", "bob"), T0 + 1, 600);
        join(&mut s, &as_("alice2", "alice"), T0 + 2, 600);
        // Alice's seat frees: it is reserved, bob2 may not have it and does not hold
        // back alice2 behind him.
        give_back(&mut s, &alice1, T0 + 3);
        assert_eq!(serve(&mut s, T0 + 3), ["alice2"]);
        assert_eq!(s.queued("cad"), 1);
        // Bob's own seat frees: bob2's turn.
        give_back(&mut s, &bob1, T0 + 4);
        assert_eq!(serve(&mut s, T0 + 4), ["bob2"]);
        // An excluded client never joins the line.
        s.apply(&Event::OptionsChanged {
            text: "EXCLUDE cad USER eve\n".into(),
            at: T0 + 5,
        });
        let eve = as_("eve", "eve");
        let denied = checkout(&mut s, &eve, T0 + 5).unwrap_err();
        assert!(matches!(
            s.decide_queue_join(&eve, T0 + 5, T0 + 60_000, Uuid::new_v4(), denied),
            Err(Denied::Rule(_))
        ));
    }

    #[test]
    fn a_client_that_gave_up_gets_no_seat_and_blocks_nobody() {
        let mut s = state_with(vec![right("cad", "", 1, None)]);
        let held = checkout(&mut s, &ask("cad", "h", 1), T0).unwrap();
        let quitter = join(&mut s, &ask("cad", "quitter", 1), T0, 5);
        let leaver = join(&mut s, &ask("cad", "leaver", 1), T0 + 1, 600);
        join(&mut s, &ask("cad", "patient", 1), T0 + 2, 600);
        assert_eq!(s.next_queue_deadline(), Some(T0 + 5000));
        let lapsed = s.lapsed_in_queue(T0 + 5000);
        assert_eq!(
            lapsed,
            vec![Event::QueueLeft {
                id: quitter,
                at: T0 + 5000,
                lapsed: true
            }]
        );
        for ev in &lapsed {
            s.apply(ev);
        }
        let ev = s.decide_queue_leave(&leaver, T0 + 6000).unwrap();
        s.apply(&ev);
        assert_eq!(
            s.decide_queue_leave(&leaver, T0 + 6000),
            Err(Denied::NotQueued)
        );
        give_back(&mut s, &held, T0 + 7000);
        assert_eq!(serve(&mut s, T0 + 7000), ["patient"]);
        assert!(s.lease(&quitter).is_none() && s.lease(&leaver).is_none());
        // A place whose time is up is not served even before it is lapsed.
        let mut s = state_with(vec![right("cad", "", 1, None)]);
        let held = checkout(&mut s, &ask("cad", "h", 1), T0).unwrap();
        join(&mut s, &ask("cad", "late", 1), T0, 1);
        give_back(&mut s, &held, T0 + 1000);
        assert!(serve(&mut s, T0 + 1000).is_empty());
    }

    #[test]
    fn naming_a_queued_clients_id_without_its_secret_or_token_finds_no_place() {
        let mut s = state_with(vec![right("cad", "", 1, None)]);
        checkout(&mut s, &ask("cad", "h", 1), T0).unwrap();
        let alice = ask("cad", "alice", 1);
        let place = join(&mut s, &alice, T0, 600);
        assert_eq!(
            s.own_queue_entry(&alice, |_| false).map(|e| e.id),
            Some(place)
        );
        // Her client ID with another secret, or none: not her place, whatever it shows.
        for holder in [Holder::of_secret("a guess"), Holder::NONE] {
            let impostor = CheckoutAsk { holder, ..alice };
            assert!(s.own_queue_entry(&impostor, |_| false).is_none());
            assert!(s.own_queue_entry(&impostor, |id| *id != place).is_none());
            // The place's token (what `holds` checks) proves it.
            assert!(s.own_queue_entry(&impostor, |id| *id == place).is_some());
        }
        // Another client's own secret and ID do not find her place either.
        assert!(
            s.own_queue_entry(&ask("cad", "bob", 1), |_| false)
                .is_none()
        );
    }

    #[test]
    fn rights_that_grow_serve_the_line() {
        let mut s = state_with(vec![right("cad", "", 1, None)]);
        checkout(&mut s, &ask("cad", "h", 1), T0).unwrap();
        join(&mut s, &ask("cad", "q1", 1), T0, 600);
        join(&mut s, &ask("cad", "q2", 1), T0 + 1, 600);
        assert!(serve(&mut s, T0 + 2).is_empty());
        s.apply(&Event::RightsUpdated {
            rights: rights::tests::signed(vec![right("cad", "", 2, None)], 0),
            at: T0 + 3,
        });
        assert_eq!(serve(&mut s, T0 + 3), ["q1"]);
        assert_eq!(s.queued("cad"), 1);
    }

    #[test]
    fn a_request_the_pool_can_never_hold_neither_waits_nor_blocks() {
        let mut s = state_with(vec![right("cad", "", 2, None)]);
        let a = checkout(&mut s, &ask("cad", "a", 2), T0).unwrap();
        let too_big = ask("cad", "greedy", 3);
        let denied = checkout(&mut s, &too_big, T0).unwrap_err();
        assert!(matches!(
            s.decide_queue_join(&too_big, T0, T0 + 60_000, Uuid::new_v4(), denied),
            Err(Denied::NoSeat { .. })
        ));
        // Two seats asked at the head: a one-seat client behind waits its turn (first
        // come, first served), and both are served once the seats free.
        join(&mut s, &ask("cad", "two", 2), T0, 600);
        join(&mut s, &ask("cad", "one", 1), T0 + 1, 600);
        give_back(&mut s, &a, T0 + 2);
        assert_eq!(serve(&mut s, T0 + 2), ["two"]);
        assert_eq!(s.queued("cad"), 1);
    }

    #[test]
    fn failback_keeps_the_backups_line_and_the_mains_own_later_places() {
        let h1 = Uuid::new_v4();
        let mut main = state_with(vec![right("cad", "", 1, None)]);
        main.apply(&Event::HistoryStarted { history: h1 });
        let held = grant_to(&mut main, "holder", T0);
        let before = join(&mut main, &ask("cad", "before", 1), T0 + 1, 600);
        let granted_on_backup = join(&mut main, &ask("cad", "served", 1), T0 + 2, 600);
        let mut backup = main.clone();
        backup.rebuild_index();
        backup.apply(&Event::TookOver {
            at: T0 + 10,
            history: Uuid::new_v4(),
        });
        // The backup serves: the holder returns, "before" is granted; "served" waits.
        give_back(&mut backup, &held, T0 + 11);
        assert_eq!(serve(&mut backup, T0 + 11), ["before"]);
        // The main, alone, took one more place the backup never saw.
        main.apply(&Event::WentAlone {
            at: T0 + 4,
            from_seq: main.seq + 1,
        });
        let alone = join(&mut main, &ask("cad", "alone", 1), T0 + 5, 600);
        let (m, _) = State::merged_for_failback(&main, &backup, Uuid::new_v4(), T0 + 20);
        let order: Vec<Uuid> = m.queue().iter().map(|e| e.id).collect();
        assert_eq!(order, [granted_on_backup, alone]);
        assert!(m.lease(&before).is_some() && m.queue_entry(&before).is_none());
    }

    #[test]
    fn a_failback_keeps_the_usage_both_sides_closed_each_once() {
        let meter = |host: &str, from: Millis| {
            let mut m = usage::Meter::new(shared::HostId::parse(host).unwrap(), 300_000, 60_000);
            let key = FeatureKey {
                feature: "cad".into(),
                version: String::new(),
            };
            m.level(&key, from, 1, 10);
            m.flush(from + 1_000)
        };
        let t = 1_795_737_600_000;
        let ours = meter("string:main", t);
        let theirs = meter("string:backup", t + 100_000);
        let mut main = State::default();
        main.apply(&Event::UsageClosed {
            intervals: ours.clone(),
        });
        let mut backup = State::default();
        // The backup holds the main's (replicated) and its own.
        backup.apply(&Event::UsageClosed { intervals: ours });
        backup.apply(&Event::UsageClosed { intervals: theirs });
        let (m, _) = State::merged_for_failback(&main, &backup, Uuid::new_v4(), t);
        assert_eq!(m.usage.len(), 2);
        let servers: Vec<String> = m.usage.values().map(|i| i.served_by.to_string()).collect();
        assert_eq!(servers, ["string:backup", "string:main"]);
        // The same intervals again change nothing.
        let mut again = m.clone();
        again.keep_usage(backup.usage.values().cloned());
        assert_eq!(again.usage, m.usage);
    }

    #[test]
    fn sequence_numbers_count_events() {
        let mut s = State::default();
        assert_eq!(s.apply(&Event::LeaseKeyCreated { key: "k".into() }), 1);
        assert_eq!(
            s.apply(&Event::LeaseReturned {
                id: Uuid::nil(),
                at: 0
            }),
            2
        );
    }
}
