//! The binary encoding of journal records and snapshot sections (format version 1).
//!
//! Primitives: `u64` and counts as LEB128 varints (at most 10 bytes), `i64` zig-zag then
//! varint, `u32` as a varint that must fit, `bool` one byte (0 or 1), a string its byte
//! length then UTF-8, a UUID its 16 bytes, `Option<T>` one byte (0 none, 1 some) then `T`.
//!
//! A journal record's payload is `seq: u64 LE (8 bytes)`, then the event: one tag byte and
//! its fields in the order below. Tags are never reused; a new kind of event takes a new
//! tag, and a reader meets an unknown one with a clear error (a newer version wrote it).
//!
//! | tag | event | fields |
//! |---:|---|---|
//! | 1 | `LeaseKeyCreated` | key: str |
//! | 2 | (`RightsUpdated` with rights as counts: read as damage, never served) | rights: count, right*; at: i64; issued_at: i64 |
//! | 3 | `LeaseGranted` (before holders: none) | lease |
//! | 4 | `LeaseRenewed` | id: uuid; at: i64; expires_at: i64 |
//! | 5 | `LeaseReturned` | id; at |
//! | 6 | `LeaseExpired` | id; at |
//! | 7 | `LeaseReleased` | id; at |
//! | 8 | `HistoryStarted` | history: uuid |
//! | 9 | `TookOver` | at; history |
//! | 10 | `HandedBack` | at |
//! | 11 | `WentAlone` | at; from_seq: u64 |
//! | 12 | `Rejoined` | at |
//! | 13 | `Detached` | at; reason: str |
//! | 14 | `BackupChanged` | at; dropped: bool; uri: option str; reason: str |
//! | 15 | `RightsUpdated` | rights: str (the capability answer, verbatim); at: i64 |
//! | 16 | `LeaseGranted` (before users, hosts, borrowing and overdraft: none of them) | lease; holder: 16 bytes (zero: none) |
//! | 17 | `LeaseGranted` (before borrowing and overdraft: neither) | lease; holder: 16 bytes; user: str; host: str (empty: none) |
//! | 18 | `OptionsChanged` | text: str (the options file, verbatim; empty: none); at: i64 |
//! | 19 | `LeaseGranted` | lease; holder: 16 bytes; user: str; host: str (empty: none); kind: u8 (bit 0 borrowed, bit 1 overdraft; other bits refused) |
//! | 20 | `QueueJoined` | queued (below) |
//! | 21 | `QueueLeft` | id; at; lapsed: bool (its time was up; false: the client left) |
//! | 22 | `UsageClosed` | intervals: str (a JSON array of the protocol's `UsageInterval`s) |
//!
//! `right` = activation_id: str, feature: str, version: str, count: u32, starts_at: i64,
//! expires_at: option i64. `lease` = id, feature: str, version: str, count: u32,
//! client_id: str, granted_at: i64, renewed_at: i64, expires_at: i64, granted_by: str,
//! granted_seq: u64. `queued` = id: uuid, feature: str, version: option str (none: any),
//! count: u32, client_id: str, holder: 16 bytes, user: str, host: str, queued_at: i64,
//! until: i64, queued_seq: u64.
//!
//! Rights are never stored as counts: only the back office's signed answer is, and it is
//! verified at every load ([`super::load`]). Tag 2 and head section 1 (counts, from before
//! signed rights) still decode, so that `store verify` can name them and `store recover`
//! can drop them, but a load refuses them like rights that do not verify.
//!
//! A snapshot's sections are a tag byte and their fields:
//!
//! | tag | section | fields |
//! |---:|---|---|
//! | 10 | head (first) | as 9, then usage: str (the closed usage intervals kept, a JSON array of the protocol's `UsageInterval`s) |
//! | 9 | head, before usage | as 7, then queue: count, queued* (in the order they joined) |
//! | 7 | head, before the queue | as 4, then options: option str (the options file in force, verbatim) |
//! | 4 | head, before options | seq: u64; lease_key: option str; rights: option str (the capability answer, verbatim); rights_updated_at: option i64; history: uuid; fork: option (history: uuid, seq: u64); active_since: option i64; backup: (dropped: bool, uri: option str, reason: option str, changed_at: option i64); detached: option str; alone_from: option u64; absorbed: option fork |
//! | 8 | leases (up to 1,024) | pools: count, (feature: str, version: str)*; hosts: count, str*; names: count, str*; leases: count, (id: uuid, client_id: str, pool: u32, host: u32, count: u32, granted_at: i64, renewed_at − granted_at: i64, expires_at − renewed_at: i64, granted_seq: u64, holder: 16 bytes, user: u32, client host: u32, kind: u8 as in tag 19)* (user and client host: 0 none, n the n-th name) |
//! | 3 | end (last) | leases: u64 (how many in all); sections: u64 (lease sections) |
//! | 1 | head, before signed rights | as 4, but rights: count, right*; rights_updated_at; rights_issued_at: i64 |
//! | 6 | leases, before borrowing and overdraft | as 8 without kind |
//! | 5 | leases, before users and hosts | as 6 without names, user and client host |
//! | 2 | leases, before holders | as 5 without holder |
//!
//! Each lease section carries its own small name tables, so that a damaged section loses
//! only its own leases. Every decoder checks every length against the bytes left before
//! it allocates, rejects trailing bytes, and never panics, whatever the input.

use std::collections::HashMap;

use shared::capability::UsageInterval;
use uuid::Uuid;

use crate::domain::{
    BackupState, Event, Fork, Frozen, Holder, LeaseKind, LeaseRecord, LeaseRef, OptionsInForce,
    QueueEntry, Rights, State,
};

/// Why a payload could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("it ends early")]
    Truncated,
    #[error("a number is too long")]
    Overlong,
    #[error("a number is out of range")]
    Range,
    #[error("a text is not UTF-8")]
    Utf8,
    #[error("a yes/no byte is {0}")]
    Bool(u8),
    #[error("a lease's kind byte is {0}, with bits this version does not know")]
    LeaseKind(u8),
    #[error("it holds {0} bytes more than its content")]
    Trailing(usize),
    #[error("its kind {0} is unknown to this version (was it written by a newer one?)")]
    UnknownTag(u8),
    #[error(
        "it holds rights as plain counts, without the back office's signature (written \
         before rights were kept signed, or edited); they are never served"
    )]
    UnsignedRights,
    #[error("its usage intervals are not the JSON this version writes")]
    Usage,
}

pub type Result<T> = std::result::Result<T, DecodeError>;

/// Appends primitives to a buffer.
pub struct Enc<'a>(pub &'a mut Vec<u8>);

impl Enc<'_> {
    pub fn u8(&mut self, v: u8) {
        self.0.push(v);
    }

    pub fn u64(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    pub fn i64(&mut self, v: i64) {
        self.u64(((v << 1) ^ (v >> 63)) as u64);
    }

    pub fn bool(&mut self, v: bool) {
        self.u8(u8::from(v));
    }

    pub fn str(&mut self, v: &str) {
        self.u64(v.len() as u64);
        self.0.extend_from_slice(v.as_bytes());
    }

    pub fn uuid(&mut self, v: &Uuid) {
        self.0.extend_from_slice(v.as_bytes());
    }

    pub fn holder(&mut self, v: &Holder) {
        self.0.extend_from_slice(&v.0);
    }

    pub fn opt<T>(&mut self, v: Option<T>, f: impl FnOnce(&mut Self, T)) {
        match v {
            None => self.u8(0),
            Some(v) => {
                self.u8(1);
                f(self, v);
            }
        }
    }
}

/// Reads primitives from a payload; every read is checked.
pub struct Dec<'a> {
    buf: &'a [u8],
}

impl<'a> Dec<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Dec { buf }
    }

    pub fn u8(&mut self) -> Result<u8> {
        let (&b, rest) = self.buf.split_first().ok_or(DecodeError::Truncated)?;
        self.buf = rest;
        Ok(b)
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.buf.len() {
            return Err(DecodeError::Truncated);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    pub fn u64(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for i in 0..10 {
            let b = self.u8()?;
            if i == 9 && b > 1 {
                return Err(DecodeError::Overlong);
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DecodeError::Overlong)
    }

    pub fn u32(&mut self) -> Result<u32> {
        u32::try_from(self.u64()?).map_err(|_| DecodeError::Range)
    }

    pub fn i64(&mut self) -> Result<i64> {
        let v = self.u64()?;
        Ok(((v >> 1) as i64) ^ -((v & 1) as i64))
    }

    pub fn bool(&mut self) -> Result<bool> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(DecodeError::Bool(b)),
        }
    }

    pub fn str(&mut self) -> Result<&'a str> {
        let n = usize::try_from(self.u64()?).map_err(|_| DecodeError::Range)?;
        std::str::from_utf8(self.take(n)?).map_err(|_| DecodeError::Utf8)
    }

    pub fn string(&mut self) -> Result<String> {
        self.str().map(str::to_owned)
    }

    pub fn uuid(&mut self) -> Result<Uuid> {
        let b: [u8; 16] = self
            .take(16)?
            .try_into()
            .map_err(|_| DecodeError::Truncated)?;
        Ok(Uuid::from_bytes(b))
    }

    pub fn lease_kind(&mut self) -> Result<LeaseKind> {
        let b = self.u8()?;
        LeaseKind::from_bits(b).ok_or(DecodeError::LeaseKind(b))
    }

    pub fn holder(&mut self) -> Result<Holder> {
        let b: [u8; 16] = self
            .take(16)?
            .try_into()
            .map_err(|_| DecodeError::Truncated)?;
        Ok(Holder(b))
    }

    pub fn opt<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<Option<T>> {
        if self.bool()? {
            f(self).map(Some)
        } else {
            Ok(None)
        }
    }

    /// A count of items each at least `min_size` bytes long: never more than the bytes
    /// left could hold, so a damaged count cannot make a decoder allocate much.
    pub fn count(&mut self, min_size: usize) -> Result<usize> {
        let n = usize::try_from(self.u64()?).map_err(|_| DecodeError::Range)?;
        if n.saturating_mul(min_size.max(1)) > self.buf.len() {
            return Err(DecodeError::Truncated);
        }
        Ok(n)
    }

    pub fn finish(self) -> Result<()> {
        match self.buf.len() {
            0 => Ok(()),
            n => Err(DecodeError::Trailing(n)),
        }
    }
}

/// Reads past rights kept as counts (format before signed rights); returns how many.
fn skip_unsigned_rights(d: &mut Dec<'_>) -> Result<usize> {
    let n = d.count(6)?;
    for _ in 0..n {
        d.str()?;
        d.str()?;
        d.str()?;
        d.u32()?;
        d.i64()?;
        d.opt(Dec::i64)?;
    }
    Ok(n)
}

fn put_lease(e: &mut Enc<'_>, l: &LeaseRecord) {
    e.uuid(&l.id);
    e.str(&l.feature);
    e.str(&l.version);
    e.u64(u64::from(l.count));
    e.str(&l.client_id);
    e.i64(l.granted_at);
    e.i64(l.renewed_at);
    e.i64(l.expires_at);
    e.str(&l.granted_by);
    e.u64(l.granted_seq);
}

fn get_lease(d: &mut Dec<'_>) -> Result<LeaseRecord> {
    Ok(LeaseRecord {
        id: d.uuid()?,
        feature: d.string()?,
        version: d.string()?,
        count: d.u32()?,
        client_id: d.string()?,
        granted_at: d.i64()?,
        renewed_at: d.i64()?,
        expires_at: d.i64()?,
        granted_by: d.string()?,
        granted_seq: d.u64()?,
        holder: Holder::NONE,
        user: String::new(),
        host: String::new(),
        kind: LeaseKind::default(),
    })
}

fn put_queued(e: &mut Enc<'_>, q: &QueueEntry) {
    e.uuid(&q.id);
    e.str(&q.feature);
    e.opt(q.version.as_deref(), Enc::str);
    e.u64(u64::from(q.count));
    e.str(&q.client_id);
    e.holder(&q.holder);
    e.str(&q.user);
    e.str(&q.host);
    e.i64(q.queued_at);
    e.i64(q.until);
    e.u64(q.queued_seq);
}

fn get_queued(d: &mut Dec<'_>) -> Result<QueueEntry> {
    Ok(QueueEntry {
        id: d.uuid()?,
        feature: d.string()?,
        version: d.opt(Dec::string)?,
        count: d.u32()?,
        client_id: d.string()?,
        holder: d.holder()?,
        user: d.string()?,
        host: d.string()?,
        queued_at: d.i64()?,
        until: d.i64()?,
        queued_seq: d.u64()?,
    })
}

/// Appends a journal record's payload: the sequence number and the event.
pub fn put_record(buf: &mut Vec<u8>, seq: u64, event: &Event) {
    buf.extend_from_slice(&seq.to_le_bytes());
    let e = &mut Enc(buf);
    match event {
        Event::LeaseKeyCreated { key } => {
            e.u8(1);
            e.str(key);
        }
        Event::RightsUpdated { rights, at } => {
            e.u8(15);
            e.str(rights.token());
            e.i64(*at);
        }
        Event::LeaseGranted { lease: l } => {
            e.u8(19);
            put_lease(e, l);
            e.holder(&l.holder);
            e.str(&l.user);
            e.str(&l.host);
            e.u8(l.kind.bits());
        }
        Event::LeaseRenewed { id, at, expires_at } => {
            e.u8(4);
            e.uuid(id);
            e.i64(*at);
            e.i64(*expires_at);
        }
        Event::LeaseReturned { id, at } => {
            e.u8(5);
            e.uuid(id);
            e.i64(*at);
        }
        Event::LeaseExpired { id, at } => {
            e.u8(6);
            e.uuid(id);
            e.i64(*at);
        }
        Event::LeaseReleased { id, at } => {
            e.u8(7);
            e.uuid(id);
            e.i64(*at);
        }
        Event::HistoryStarted { history } => {
            e.u8(8);
            e.uuid(history);
        }
        Event::TookOver { at, history } => {
            e.u8(9);
            e.i64(*at);
            e.uuid(history);
        }
        Event::HandedBack { at } => {
            e.u8(10);
            e.i64(*at);
        }
        Event::WentAlone { at, from_seq } => {
            e.u8(11);
            e.i64(*at);
            e.u64(*from_seq);
        }
        Event::Rejoined { at } => {
            e.u8(12);
            e.i64(*at);
        }
        Event::OptionsChanged { text, at } => {
            e.u8(18);
            e.str(text);
            e.i64(*at);
        }
        Event::QueueJoined { entry } => {
            e.u8(20);
            put_queued(e, entry);
        }
        Event::QueueLeft { id, at, lapsed } => {
            e.u8(21);
            e.uuid(id);
            e.i64(*at);
            e.bool(*lapsed);
        }
        Event::Detached { at, reason } => {
            e.u8(13);
            e.i64(*at);
            e.str(reason);
        }
        Event::BackupChanged {
            at,
            dropped,
            uri,
            reason,
        } => {
            e.u8(14);
            e.i64(*at);
            e.bool(*dropped);
            e.opt(uri.as_deref(), Enc::str);
            e.str(reason);
        }
        Event::UsageClosed { intervals } => {
            e.u8(22);
            e.str(&usage_json(intervals.iter()));
        }
    }
}

/// Usage intervals as JSON (they cannot fail to serialise: plain fields, string keys).
fn usage_json<'a>(intervals: impl Iterator<Item = &'a UsageInterval>) -> String {
    serde_json::to_string(&intervals.collect::<Vec<_>>()).unwrap_or_else(|_| "[]".into())
}

fn get_usage(d: &mut Dec<'_>) -> Result<Vec<UsageInterval>> {
    serde_json::from_str(d.str()?).map_err(|_| DecodeError::Usage)
}

/// Decodes a journal record's payload.
pub fn get_record(payload: &[u8]) -> Result<(u64, Event)> {
    let mut d = Dec::new(payload);
    let seq = u64::from_le_bytes(d.take(8)?.try_into().map_err(|_| DecodeError::Truncated)?);
    let event = match d.u8()? {
        1 => Event::LeaseKeyCreated { key: d.string()? },
        2 => {
            // Checked whole, so that a damaged record is not taken for an old one.
            skip_unsigned_rights(&mut d)?;
            d.i64()?;
            d.i64()?;
            d.finish()?;
            return Err(DecodeError::UnsignedRights);
        }
        3 => Event::LeaseGranted {
            lease: get_lease(&mut d)?,
        },
        15 => Event::RightsUpdated {
            rights: Rights::unverified(d.str()?),
            at: d.i64()?,
        },
        tag @ (16 | 17 | 19) => {
            let mut lease = get_lease(&mut d)?;
            lease.holder = d.holder()?;
            if tag != 16 {
                lease.user = d.string()?;
                lease.host = d.string()?;
            }
            if tag == 19 {
                lease.kind = d.lease_kind()?;
            }
            Event::LeaseGranted { lease }
        }
        4 => Event::LeaseRenewed {
            id: d.uuid()?,
            at: d.i64()?,
            expires_at: d.i64()?,
        },
        5 => Event::LeaseReturned {
            id: d.uuid()?,
            at: d.i64()?,
        },
        6 => Event::LeaseExpired {
            id: d.uuid()?,
            at: d.i64()?,
        },
        7 => Event::LeaseReleased {
            id: d.uuid()?,
            at: d.i64()?,
        },
        8 => Event::HistoryStarted { history: d.uuid()? },
        9 => Event::TookOver {
            at: d.i64()?,
            history: d.uuid()?,
        },
        10 => Event::HandedBack { at: d.i64()? },
        11 => Event::WentAlone {
            at: d.i64()?,
            from_seq: d.u64()?,
        },
        12 => Event::Rejoined { at: d.i64()? },
        18 => Event::OptionsChanged {
            text: d.string()?,
            at: d.i64()?,
        },
        13 => Event::Detached {
            at: d.i64()?,
            reason: d.string()?,
        },
        20 => Event::QueueJoined {
            entry: get_queued(&mut d)?,
        },
        21 => Event::QueueLeft {
            id: d.uuid()?,
            at: d.i64()?,
            lapsed: d.bool()?,
        },
        14 => Event::BackupChanged {
            at: d.i64()?,
            dropped: d.bool()?,
            uri: d.opt(Dec::string)?,
            reason: d.string()?,
        },
        22 => Event::UsageClosed {
            intervals: get_usage(&mut d)?,
        },
        tag => return Err(DecodeError::UnknownTag(tag)),
    };
    d.finish()?;
    Ok((seq, event))
}

/// Head before signed rights (rights as counts).
pub const SECTION_HEAD_V1: u8 = 1;
/// Leases before holders.
pub const SECTION_LEASES_V1: u8 = 2;
pub const SECTION_END: u8 = 3;
/// Head before options.
pub const SECTION_HEAD_V2: u8 = 4;
/// Head before the queue.
pub const SECTION_HEAD_V3: u8 = 7;
/// Head before usage.
pub const SECTION_HEAD_V4: u8 = 9;
pub const SECTION_HEAD: u8 = 10;
/// Leases before users and hosts.
pub const SECTION_LEASES_V2: u8 = 5;
/// Leases before borrowing and overdraft.
pub const SECTION_LEASES_V3: u8 = 6;
pub const SECTION_LEASES: u8 = 8;

fn put_fork(e: &mut Enc<'_>, f: Fork) {
    e.uuid(&f.history);
    e.u64(f.seq);
}

fn get_fork(d: &mut Dec<'_>) -> Result<Fork> {
    Ok(Fork {
        history: d.uuid()?,
        seq: d.u64()?,
    })
}

/// The head section: the state without its leases.
pub fn put_head(buf: &mut Vec<u8>, s: &State) {
    let e = &mut Enc(buf);
    e.u8(SECTION_HEAD);
    e.u64(s.seq);
    e.opt(s.lease_key.as_deref(), Enc::str);
    e.opt(s.rights.as_ref().map(Rights::token), Enc::str);
    e.opt(s.rights_updated_at, Enc::i64);
    e.uuid(&s.history);
    e.opt(s.fork, put_fork);
    e.opt(s.active_since, Enc::i64);
    e.bool(s.backup.dropped);
    e.opt(s.backup.uri.as_deref(), Enc::str);
    e.opt(s.backup.reason.as_deref(), Enc::str);
    e.opt(s.backup.changed_at, Enc::i64);
    e.opt(s.detached.as_deref(), Enc::str);
    e.opt(s.alone_from, Enc::u64);
    e.opt(s.absorbed, put_fork);
    e.opt(s.options.as_ref().map(|o| &*o.text), Enc::str);
    e.u64(s.queue().len() as u64);
    for q in s.queue() {
        put_queued(e, q);
    }
    e.str(&usage_json(s.usage.values()));
}

/// What a snapshot section holds.
#[derive(Debug)]
pub enum Section<'a> {
    /// The state without its leases; `unsigned_rights`: rights kept as counts by a
    /// version before signed rights (dropped: never served).
    Head {
        state: Box<State>,
        unsigned_rights: usize,
    },
    Leases(Vec<LeaseRef<'a>>),
    End {
        leases: u64,
        sections: u64,
    },
}

/// Decodes a snapshot section; lease sections borrow their strings from the payload.
pub fn get_section(payload: &[u8]) -> Result<Section<'_>> {
    let mut d = Dec::new(payload);
    let section = match d.u8()? {
        tag @ (SECTION_HEAD | SECTION_HEAD_V4 | SECTION_HEAD_V3 | SECTION_HEAD_V2
        | SECTION_HEAD_V1) => {
            let mut s = State::default();
            let mut unsigned_rights = 0;
            s.seq = d.u64()?;
            s.lease_key = d.opt(Dec::string)?;
            if tag != SECTION_HEAD_V1 {
                s.rights = d.opt(|d| d.str().map(Rights::unverified))?;
                s.rights_updated_at = d.opt(Dec::i64)?;
            } else {
                unsigned_rights = skip_unsigned_rights(&mut d)?;
                s.rights_updated_at = d.opt(Dec::i64)?.filter(|_| unsigned_rights == 0);
                d.i64()?;
            }
            s.history = d.uuid()?;
            s.fork = d.opt(get_fork)?;
            s.active_since = d.opt(Dec::i64)?;
            s.backup = BackupState {
                dropped: d.bool()?,
                uri: d.opt(Dec::string)?,
                reason: d.opt(Dec::string)?,
                changed_at: d.opt(Dec::i64)?,
            };
            s.detached = d.opt(Dec::string)?;
            s.alone_from = d.opt(Dec::u64)?;
            s.absorbed = d.opt(get_fork)?;
            if matches!(tag, SECTION_HEAD | SECTION_HEAD_V4 | SECTION_HEAD_V3) {
                s.options = d.opt(Dec::str)?.and_then(OptionsInForce::of);
            }
            if matches!(tag, SECTION_HEAD | SECTION_HEAD_V4) {
                // A queued entry is at least 41 bytes (ID and holder 32, nine more fields).
                let n = d.count(41)?;
                let mut queue = Vec::with_capacity(n);
                for _ in 0..n {
                    queue.push(get_queued(&mut d)?);
                }
                s.set_queue(queue);
            }
            if tag == SECTION_HEAD {
                s.keep_usage(get_usage(&mut d)?);
            }
            s.rebuild_index();
            Section::Head {
                state: Box::new(s),
                unsigned_rights,
            }
        }
        tag @ (SECTION_LEASES | SECTION_LEASES_V3 | SECTION_LEASES_V2 | SECTION_LEASES_V1) => {
            let n = d.count(2)?;
            let mut pools = Vec::with_capacity(n);
            for _ in 0..n {
                pools.push((d.str()?, d.str()?));
            }
            let n = d.count(1)?;
            let mut hosts = Vec::with_capacity(n);
            for _ in 0..n {
                hosts.push(d.str()?);
            }
            let mut names = Vec::new();
            if tag == SECTION_LEASES || tag == SECTION_LEASES_V3 {
                let n = d.count(1)?;
                names.reserve(n);
                for _ in 0..n {
                    names.push(d.str()?);
                }
            }
            let name = |i: u32| match i {
                0 => Ok(""),
                i => names.get(i as usize - 1).copied().ok_or(DecodeError::Range),
            };
            let n = d.count(16 + 8)?;
            let mut leases = Vec::with_capacity(n);
            for _ in 0..n {
                let id = d.uuid()?;
                let client_id = d.str()?;
                let (feature, version) = *pools.get(d.u32()? as usize).ok_or(DecodeError::Range)?;
                let granted_by = *hosts.get(d.u32()? as usize).ok_or(DecodeError::Range)?;
                let count = d.u32()?;
                let granted_at = d.i64()?;
                let renewed_at = granted_at.wrapping_add(d.i64()?);
                let expires_at = renewed_at.wrapping_add(d.i64()?);
                let granted_seq = d.u64()?;
                let holder = if tag == SECTION_LEASES_V1 {
                    Holder::NONE
                } else {
                    d.holder()?
                };
                let (user, host) = if tag == SECTION_LEASES || tag == SECTION_LEASES_V3 {
                    (name(d.u32()?)?, name(d.u32()?)?)
                } else {
                    ("", "")
                };
                let kind = if tag == SECTION_LEASES {
                    d.lease_kind()?
                } else {
                    LeaseKind::default()
                };
                leases.push(LeaseRef {
                    id,
                    client_id,
                    feature,
                    version,
                    granted_by,
                    count,
                    granted_at,
                    renewed_at,
                    expires_at,
                    granted_seq,
                    holder,
                    kind,
                    user,
                    host,
                });
            }
            Section::Leases(leases)
        }
        SECTION_END => Section::End {
            leases: d.u64()?,
            sections: d.u64()?,
        },
        tag => return Err(DecodeError::UnknownTag(tag)),
    };
    d.finish()?;
    Ok(section)
}

/// Encodes a snapshot's sections, calling `out` with each payload in order.
pub fn put_snapshot(
    frozen: &Frozen,
    buf: &mut Vec<u8>,
    mut out: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> std::io::Result<()> {
    buf.clear();
    put_head(buf, &frozen.head);
    out(buf)?;
    let mut leases = frozen.leases.iter().peekable();
    let mut sections = 0u64;
    let mut total = 0u64;
    let mut chunk: Vec<LeaseRef<'_>> = Vec::with_capacity(crate::domain::CHUNK);
    while leases.peek().is_some() {
        chunk.clear();
        chunk.extend(leases.by_ref().take(crate::domain::CHUNK));
        buf.clear();
        put_leases(buf, &chunk);
        out(buf)?;
        sections += 1;
        total += chunk.len() as u64;
    }
    buf.clear();
    let e = &mut Enc(buf);
    e.u8(SECTION_END);
    e.u64(total);
    e.u64(sections);
    out(buf)
}

fn put_leases<'a>(buf: &mut Vec<u8>, leases: &[LeaseRef<'a>]) {
    let mut pools: Vec<(&str, &str)> = Vec::new();
    let mut hosts: Vec<&str> = Vec::new();
    // Users and hosts clients named: 0 is none, n the n-th name.
    let mut names: Vec<&str> = Vec::new();
    let mut name_ids: HashMap<&str, u64> = HashMap::new();
    let mut name_of = |n: &'a str| -> u64 {
        if n.is_empty() {
            return 0;
        }
        *name_ids.entry(n).or_insert_with(|| {
            names.push(n);
            names.len() as u64
        })
    };
    let mut who = Vec::with_capacity(leases.len());
    let mut refs = Vec::with_capacity(leases.len());
    // Names of a section are few (the pools and hosts its leases use): a linear search
    // with a one-entry cache is the fastest index.
    let mut last_pool = usize::MAX;
    let mut last_host = usize::MAX;
    for l in leases {
        let p = if last_pool != usize::MAX && pools[last_pool] == (l.feature, l.version) {
            last_pool
        } else {
            match pools.iter().position(|p| *p == (l.feature, l.version)) {
                Some(i) => i,
                None => {
                    pools.push((l.feature, l.version));
                    pools.len() - 1
                }
            }
        };
        let h = if last_host != usize::MAX && hosts[last_host] == l.granted_by {
            last_host
        } else {
            match hosts.iter().position(|h| *h == l.granted_by) {
                Some(i) => i,
                None => {
                    hosts.push(l.granted_by);
                    hosts.len() - 1
                }
            }
        };
        (last_pool, last_host) = (p, h);
        refs.push((p, h));
        who.push((name_of(l.user), name_of(l.host)));
    }
    let e = &mut Enc(buf);
    e.u8(SECTION_LEASES);
    e.u64(pools.len() as u64);
    for (f, v) in &pools {
        e.str(f);
        e.str(v);
    }
    e.u64(hosts.len() as u64);
    for h in &hosts {
        e.str(h);
    }
    e.u64(names.len() as u64);
    for n in &names {
        e.str(n);
    }
    e.u64(leases.len() as u64);
    for ((l, (p, h)), (user, host)) in leases.iter().zip(refs).zip(who) {
        e.uuid(&l.id);
        e.str(l.client_id);
        e.u64(p as u64);
        e.u64(h as u64);
        e.u64(u64::from(l.count));
        e.i64(l.granted_at);
        e.i64(l.renewed_at.wrapping_sub(l.granted_at));
        e.i64(l.expires_at.wrapping_sub(l.renewed_at));
        e.u64(l.granted_seq);
        e.holder(&l.holder);
        e.u64(user);
        e.u64(host);
        e.u8(l.kind.bits());
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn every_event() -> Vec<Event> {
        let id = Uuid::new_v4();
        vec![
            Event::LeaseKeyCreated { key: "k3y".into() },
            Event::RightsUpdated {
                rights: Rights::unverified("eyJhbGciOiJFZERTQSJ9.eyJjb3VudCI6NX0.c2ln"),
                at: 1_700_000_000_123,
            },
            Event::LeaseGranted {
                lease: LeaseRecord {
                    id,
                    feature: "cad".into(),
                    version: "2.0".into(),
                    count: 3,
                    client_id: "host:1234".into(),
                    granted_at: 1,
                    renewed_at: 2,
                    expires_at: i64::MAX,
                    granted_by: "string:me".into(),
                    granted_seq: u64::MAX,
                    holder: Holder::of_secret("host:1234's secret"),
                    user: "alice".into(),
                    host: "ws-17".into(),
                    kind: LeaseKind {
                        borrowed: true,
                        overdraft: true,
                    },
                },
            },
            Event::LeaseGranted {
                lease: LeaseRecord {
                    id: Uuid::new_v4(),
                    feature: "cad".into(),
                    version: String::new(),
                    count: 1,
                    client_id: "anonymous".into(),
                    granted_at: 1,
                    renewed_at: 1,
                    expires_at: 2,
                    granted_by: "string:me".into(),
                    granted_seq: 7,
                    holder: Holder::NONE,
                    user: String::new(),
                    host: String::new(),
                    kind: LeaseKind::default(),
                },
            },
            Event::LeaseRenewed {
                id,
                at: i64::MIN,
                expires_at: -1,
            },
            Event::LeaseReturned { id, at: 5 },
            Event::LeaseExpired { id, at: 6 },
            Event::LeaseReleased { id, at: 7 },
            Event::HistoryStarted {
                history: Uuid::new_v4(),
            },
            Event::TookOver {
                at: 8,
                history: Uuid::new_v4(),
            },
            Event::HandedBack { at: 9 },
            Event::WentAlone {
                at: 10,
                from_seq: 11,
            },
            Event::Rejoined { at: 12 },
            Event::OptionsChanged {
                text: "GROUP eng alice\nRESERVE 1 cad GROUP eng\n".into(),
                at: 14,
            },
            Event::Detached {
                at: 13,
                reason: "gone".into(),
            },
            Event::BackupChanged {
                at: 14,
                dropped: true,
                uri: Some("http://b:7070".into()),
                reason: "operator".into(),
            },
            Event::BackupChanged {
                at: 15,
                dropped: false,
                uri: None,
                reason: String::new(),
            },
            Event::QueueJoined {
                entry: queued("cad", Some("2.0")),
            },
            Event::QueueJoined {
                entry: QueueEntry {
                    holder: Holder::NONE,
                    user: String::new(),
                    host: String::new(),
                    ..queued("cam", None)
                },
            },
            Event::QueueLeft {
                id,
                at: 16,
                lapsed: true,
            },
            Event::QueueLeft {
                id,
                at: i64::MIN,
                lapsed: false,
            },
            Event::UsageClosed {
                intervals: vec![usage_interval()],
            },
        ]
    }

    fn queued(feature: &str, version: Option<&str>) -> QueueEntry {
        QueueEntry {
            id: Uuid::new_v4(),
            feature: feature.into(),
            version: version.map(str::to_owned),
            count: 2,
            client_id: "ws-17:99".into(),
            holder: Holder::of_secret("ws-17:99's secret"),
            user: "alice".into(),
            host: "ws-17".into(),
            queued_at: 1_700_000_000_000,
            until: 1_700_000_600_000,
            queued_seq: 0,
        }
    }

    fn usage_interval() -> UsageInterval {
        UsageInterval {
            feature: "cad".into(),
            version: "2".into(),
            starts_at: 1_795_737_600,
            ends_at: 1_795_737_900,
            served_by: shared::HostId::parse("string:main").unwrap(),
            served_from: 1_795_737_600,
            served_until: 1_795_737_900,
            count: 5,
            peak: 4,
            seat_secs: 900,
            grants: 7,
            denials: [("NO_LICENSE".to_owned(), 2)].into(),
            true_denials: 1,
            borrowed: 1,
            overdraft: 1,
            queued: 0,
        }
    }

    #[test]
    fn a_head_keeps_the_queue_in_order_and_older_heads_load_with_none() {
        let mut s = State::default();
        let (first, second) = (queued("cad", None), queued("cad", Some("1.0")));
        for entry in [first.clone(), second.clone()] {
            s.apply(&Event::QueueJoined { entry });
        }
        let mut buf = Vec::new();
        put_head(&mut buf, &s);
        let Section::Head { state, .. } = get_section(&buf).unwrap() else {
            panic!("not a head")
        };
        assert_eq!(state.queue(), s.queue());
        assert_eq!(state.queue()[0].id, first.id);
        assert_eq!(state.queue()[1].queued_seq, 2);
        // Any cut is an error, never a panic.
        for cut in 0..buf.len() {
            assert!(get_section(&buf[..cut]).is_err(), "cut at {cut}");
        }
        // A head before the queue (tag 7): the same, without the queue's count (and the
        // usage after it).
        let mut old = State::default();
        old.apply(&Event::OptionsChanged {
            text: "MAX 1 cad USER bob\n".into(),
            at: 1,
        });
        let mut buf = Vec::new();
        put_head(&mut buf, &old);
        assert_eq!(
            buf.split_off(buf.len() - 4),
            [0, 2, b'[', b']'],
            "an empty queue is one byte, no usage three"
        );
        buf[0] = SECTION_HEAD_V3;
        let Section::Head { state, .. } = get_section(&buf).unwrap() else {
            panic!("not a head")
        };
        assert!(state.queue().is_empty());
        assert!(state.options.is_some());
        // A count larger than the bytes left is refused before allocating.
        let mut buf = Vec::new();
        put_head(&mut buf, &State::default());
        buf.truncate(buf.len() - 4);
        Enc(&mut buf).u64(u64::MAX >> 8);
        assert!(get_section(&buf).is_err());
    }

    #[test]
    fn a_head_keeps_the_closed_usage_intervals_and_one_before_usage_loads_with_none() {
        let mut s = State::default();
        s.apply(&Event::UsageClosed {
            intervals: vec![usage_interval()],
        });
        s.apply(&Event::QueueJoined {
            entry: queued("cad", None),
        });
        let mut buf = Vec::new();
        put_head(&mut buf, &s);
        let Section::Head { state, .. } = get_section(&buf).unwrap() else {
            panic!("not a head")
        };
        assert_eq!(state.usage, s.usage);
        assert_eq!(state.usage.len(), 1);
        // A head before usage (tag 9): the queue, and no usage.
        let mut buf = Vec::new();
        let mut before_usage = s.clone();
        before_usage.usage = Default::default();
        put_head(&mut buf, &before_usage);
        assert_eq!(buf.split_off(buf.len() - 3), [2, b'[', b']']);
        buf[0] = SECTION_HEAD_V4;
        let Section::Head { state, .. } = get_section(&buf).unwrap() else {
            panic!("not a head")
        };
        assert!(state.usage.is_empty());
        assert_eq!(state.queue(), s.queue());
    }

    #[test]
    fn every_event_round_trips() {
        for (i, ev) in every_event().into_iter().enumerate() {
            let mut buf = Vec::new();
            put_record(&mut buf, i as u64 + 1, &ev);
            assert_eq!(get_record(&buf), Ok((i as u64 + 1, ev)));
            // Any cut is an error, never a panic or a shorter event.
            for cut in 0..buf.len() {
                assert!(get_record(&buf[..cut]).is_err(), "cut at {cut}");
            }
            buf.push(0);
            assert_eq!(get_record(&buf), Err(DecodeError::Trailing(1)));
        }
    }

    #[test]
    fn varints_cover_the_extremes() {
        for v in [0i64, 1, -1, 63, -64, 64, i64::MAX, i64::MIN] {
            let mut buf = Vec::new();
            Enc(&mut buf).i64(v);
            let mut d = Dec::new(&buf);
            assert_eq!(d.i64(), Ok(v));
            d.finish().unwrap();
        }
        // Eleven bytes, or a tenth byte over 1: refused.
        assert_eq!(Dec::new(&[0xff; 11]).u64(), Err(DecodeError::Overlong));
        let mut ten = [0xff; 10];
        ten[9] = 2;
        assert_eq!(Dec::new(&ten).u64(), Err(DecodeError::Overlong));
    }

    /// Rights kept as counts, as versions before signed rights wrote them (tag 2).
    fn unsigned_rights_record(count: u32) -> Vec<u8> {
        let mut buf = 1u64.to_le_bytes().to_vec();
        let e = &mut Enc(&mut buf);
        e.u8(2);
        e.u64(1);
        for s in ["ACT-1", "cad", ""] {
            e.str(s);
        }
        e.u64(u64::from(count));
        e.i64(0);
        e.opt(None::<i64>, Enc::i64);
        e.i64(1_700_000_000_000);
        e.i64(1_700_000_000);
        buf
    }

    #[test]
    fn rights_as_counts_are_refused_by_name_and_old_grants_have_no_holder() {
        let buf = unsigned_rights_record(999_999);
        assert_eq!(get_record(&buf), Err(DecodeError::UnsignedRights));
        // Cut short, it is damage of the ordinary kind.
        assert_eq!(
            get_record(&buf[..buf.len() - 2]),
            Err(DecodeError::Truncated)
        );

        // A grant as tag 3 (before holders) reads with no holder.
        let Event::LeaseGranted { lease } = every_event().swap_remove(2) else {
            unreachable!()
        };
        let mut buf = 9u64.to_le_bytes().to_vec();
        let e = &mut Enc(&mut buf);
        e.u8(3);
        put_lease(e, &lease);
        let (_, Event::LeaseGranted { lease: old }) = get_record(&buf).unwrap() else {
            panic!("not a grant")
        };
        assert_eq!(old.holder, Holder::NONE);
        assert_eq!(old.id, lease.id);

        // A head section as versions before signed rights wrote it: the rights dropped.
        let mut head = vec![SECTION_HEAD_V1];
        let e = &mut Enc(&mut head);
        e.u64(5);
        e.opt(Some("k3y"), Enc::str);
        e.u64(1);
        for s in ["ACT-1", "cad", ""] {
            e.str(s);
        }
        e.u64(50_000);
        e.i64(0);
        e.opt(None::<i64>, Enc::i64);
        e.opt(Some(1_700_000_000_000i64), Enc::i64);
        e.i64(1_700_000_000);
        e.uuid(&Uuid::nil());
        e.opt(None::<Fork>, put_fork);
        e.opt(None::<i64>, Enc::i64);
        e.bool(false);
        e.opt(None::<&str>, Enc::str);
        e.opt(None::<&str>, Enc::str);
        e.opt(None::<i64>, Enc::i64);
        e.opt(None::<&str>, Enc::str);
        e.opt(None::<u64>, Enc::u64);
        e.opt(None::<Fork>, put_fork);
        match get_section(&head).unwrap() {
            Section::Head {
                state,
                unsigned_rights,
            } => {
                assert_eq!(unsigned_rights, 1);
                assert!(state.rights.is_none() && state.current_rights().is_empty());
                assert_eq!(state.lease_key.as_deref(), Some("k3y"));
                assert_eq!(state.seq, 5);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_head_keeps_the_options_in_force() {
        let mut s = State::default();
        s.apply(&Event::OptionsChanged {
            text: "MAX 1 cad USER bob\n".into(),
            at: 1,
        });
        let mut buf = Vec::new();
        put_head(&mut buf, &s);
        let Section::Head { state, .. } = get_section(&buf).unwrap() else {
            panic!("not a head")
        };
        let options = state.options.expect("the options");
        assert_eq!(&*options.text, "MAX 1 cad USER bob\n");
        assert_eq!(options.rules.rules.len(), 1);
    }

    #[test]
    fn an_unknown_event_kind_says_so() {
        let mut buf = 1u64.to_le_bytes().to_vec();
        buf.push(200);
        assert_eq!(get_record(&buf), Err(DecodeError::UnknownTag(200)));
    }

    #[test]
    fn a_huge_count_is_refused_before_allocating() {
        let mut buf = 1u64.to_le_bytes().to_vec();
        buf.push(2);
        Enc(&mut buf).u64(u64::MAX / 2);
        assert_eq!(get_record(&buf), Err(DecodeError::Truncated));
    }
}
