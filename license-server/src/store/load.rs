//! Reading a data directory: the strict load at every start, and the salvage behind
//! `license-server store verify` and `store recover`. Reading changes nothing; what a
//! load decides to change (a torn tail to cut, obsolete files to remove) is returned for
//! [`super::open`] to carry out.
//!
//! Rights are verified as they are read ([`RightsCheck`]): the snapshot's and every
//! change of rights in the journal. Rights that do not verify (edited, signed by another
//! key, addressed to another server, or kept as counts by an older version) are damage
//! like any other, named by file and record; a salvage drops them (the rights before
//! them stay in force) and the server gets its rights again from the back office.
//! Without a check (`store verify` not given the back office's key) rights are read but
//! not verified, and count for nothing.

use std::io;
use std::path::{Path, PathBuf};

use crate::domain::{Event, RightsCheck, State};

use super::codec::{self, Section};
use super::frame::{FileHeader, Frame, JOURNAL_MAGIC, Reader, SNAPSHOT_MAGIC, Stop};

pub const SNAPSHOT: &str = "snapshot.bin";
pub const SNAPSHOT_TMP: &str = "snapshot.bin.tmp";
/// Version 0 (JSON) files, imported once.
pub const LEGACY_SNAPSHOT: &str = "snapshot.json";
pub const LEGACY_JOURNAL: &str = "journal.log";

pub fn segment_name(base: u64) -> String {
    format!("journal-{base:020}.log")
}

pub(super) fn segment_base(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("journal-")?.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A file that cannot be trusted, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{} is damaged{}: {what}. Nothing was changed. `license-server store verify` shows what is readable; `license-server store recover` keeps it, after asking",
    file.display(),
    at(*offset, *record)
)]
pub struct Damage {
    pub file: PathBuf,
    pub offset: Option<u64>,
    /// Zero-based record (journal) or section (snapshot) number in the file.
    pub record: Option<u64>,
    pub what: String,
}

fn at(offset: Option<u64>, record: Option<u64>) -> String {
    match (offset, record) {
        (Some(o), Some(r)) => format!(" at byte {o} (record {r})"),
        (Some(o), None) => format!(" at byte {o}"),
        _ => String::new(),
    }
}

/// Why a store could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Damaged(#[from] Damage),
}

pub(super) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LoadError + '_ {
    move |source| LoadError::Io {
        path: path.to_owned(),
        source,
    }
}

/// One journal segment as found.
#[derive(Debug, Clone, Default)]
pub struct SegmentInfo {
    pub path: PathBuf,
    pub base: u64,
    pub epoch: u64,
    pub bytes: u64,
    /// Records that verified.
    pub records: u64,
    /// Sequence numbers of its first and last good records.
    pub seqs: Option<(u64, u64)>,
    /// Where the good records end when a torn tail follows.
    pub torn_at: Option<u64>,
    pub damaged: bool,
}

/// The snapshot as found.
#[derive(Debug, Clone, Default)]
pub struct SnapshotInfo {
    pub path: PathBuf,
    pub seq: u64,
    pub epoch: u64,
    pub bytes: u64,
    pub leases: u64,
    pub damaged: bool,
}

/// What a salvage could not keep.
#[derive(Debug, Clone)]
pub struct Loss {
    pub damage: Damage,
    /// What is lost with it, in words.
    pub lost: String,
}

/// Everything a read of the directory found.
#[derive(Debug, Default)]
pub struct Scan {
    pub state: State,
    pub epoch: u64,
    pub snapshot: Option<SnapshotInfo>,
    /// The segments replayed, in order.
    pub segments: Vec<SegmentInfo>,
    /// Files no longer needed: segments the snapshot covers or of another epoch, a
    /// snapshot left half-written.
    pub stale: Vec<PathBuf>,
    /// Version 0 files (imported at open).
    pub legacy: Vec<PathBuf>,
    /// Events applied from the journal.
    pub replayed: u64,
    /// Salvage only: what could not be read.
    pub losses: Vec<Loss>,
}

impl Scan {
    pub fn torn_bytes(&self) -> u64 {
        self.segments
            .last()
            .and_then(|s| s.torn_at.map(|at| s.bytes - at))
            .unwrap_or(0)
    }
}

/// Reads a store, verifying its rights with `check`. `salvage`: go on past damage, noting
/// each loss (verify, recover); otherwise the first damage is the error.
pub fn scan(dir: &Path, salvage: bool, check: Option<&RightsCheck>) -> Result<Scan, LoadError> {
    let mut scan = Scan::default();
    let mut segments: Vec<(u64, PathBuf)> = Vec::new();
    let mut have_snapshot = false;
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(scan),
        Err(e) => {
            return Err(LoadError::Io {
                path: dir.to_owned(),
                source: e,
            });
        }
    };
    for entry in entries {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        match name {
            SNAPSHOT => have_snapshot = true,
            SNAPSHOT_TMP => scan.stale.push(entry.path()),
            LEGACY_SNAPSHOT | LEGACY_JOURNAL => scan.legacy.push(entry.path()),
            _ => {
                if let Some(base) = segment_base(name) {
                    segments.push((base, entry.path()));
                }
            }
        }
    }
    segments.sort();
    scan.legacy.sort();
    if !scan.legacy.is_empty() && !have_snapshot && segments.is_empty() {
        if salvage {
            return Err(Damage {
                file: dir.to_owned(),
                offset: None,
                record: None,
                what: "it holds files of an older version (snapshot.json, journal.log); start the server once to convert them, or keep them aside".into(),
            }
            .into());
        }
        load_legacy(dir, &mut scan)?;
        scan.state.end_load();
        return Ok(scan);
    }

    let mut loss = |scan: &mut Scan, damage: Damage, lost: String| -> Result<(), LoadError> {
        if salvage {
            scan.losses.push(Loss { damage, lost });
            Ok(())
        } else {
            Err(damage.into())
        }
    };

    let mut epoch = None;
    if have_snapshot {
        let info = load_snapshot(&dir.join(SNAPSHOT), &mut scan, check, &mut loss)?;
        epoch = Some(info.epoch);
        scan.snapshot = Some(info);
    }

    // The segments of the snapshot's epoch, in order; every other one is stale.
    let mut live: Vec<(FileHeader, PathBuf, Vec<u8>)> = Vec::new();
    for (i, (_, path)) in segments.iter().enumerate() {
        let data = std::fs::read(path).map_err(io_err(path))?;
        let header = match FileHeader::decode(&data, JOURNAL_MAGIC) {
            Ok(h) => h,
            // The newest segment may have been created just before a crash, its header
            // not yet written.
            Err(_) if i + 1 == segments.len() && data.iter().all(|b| *b == 0) => {
                scan.stale.push(path.clone());
                continue;
            }
            Err(what) => {
                loss(
                    &mut scan,
                    Damage {
                        file: path.clone(),
                        offset: Some(0),
                        record: None,
                        what,
                    },
                    "the whole segment".into(),
                )?;
                continue;
            }
        };
        match epoch {
            Some(e) if e != header.epoch => {
                scan.stale.push(path.clone());
                continue;
            }
            Some(_) => {}
            None => epoch = Some(header.epoch),
        }
        live.push((header, path.clone(), data));
    }
    scan.epoch = epoch.unwrap_or(0);
    scan.state.begin_load();
    // A segment wholly before the snapshot (the next one starts at or before the
    // snapshot's next sequence number) was compacted away.
    let next = scan.state.seq + 1;
    let first_needed = live
        .iter()
        .rposition(|(h, _, _)| h.base <= next)
        .unwrap_or(0);
    for (_, path, _) in live.drain(..first_needed) {
        scan.stale.push(path);
    }
    let n = live.len();
    for (i, (header, path, data)) in live.into_iter().enumerate() {
        let info = replay_segment(
            &path,
            header,
            &data,
            i + 1 == n,
            &mut scan,
            check,
            &mut loss,
        )?;
        scan.segments.push(info);
    }
    scan.state.end_load();
    Ok(scan)
}

pub(super) type LossFn<'a> = dyn FnMut(&mut Scan, Damage, String) -> Result<(), LoadError> + 'a;

fn load_snapshot(
    path: &Path,
    scan: &mut Scan,
    check: Option<&RightsCheck>,
    loss: &mut LossFn<'_>,
) -> Result<SnapshotInfo, LoadError> {
    let data = std::fs::read(path).map_err(io_err(path))?;
    snapshot_from_bytes(path, &data, scan, check, loss)
}

/// What is lost with rights that do not verify.
const RIGHTS_LOST: &str =
    "those rights (never served; the server gets its rights again from the back office)";

pub(super) fn snapshot_from_bytes(
    path: &Path,
    data: &[u8],
    scan: &mut Scan,
    check: Option<&RightsCheck>,
    loss: &mut LossFn<'_>,
) -> Result<SnapshotInfo, LoadError> {
    let mut info = SnapshotInfo {
        path: path.to_owned(),
        bytes: data.len() as u64,
        ..SnapshotInfo::default()
    };
    let damage = |offset: u64, record: Option<u64>, what: String| Damage {
        file: path.to_owned(),
        offset: Some(offset),
        record,
        what,
    };
    let header = match FileHeader::decode(data, SNAPSHOT_MAGIC) {
        Ok(h) => h,
        Err(what) => {
            info.damaged = true;
            loss(
                scan,
                damage(0, None, what),
                "the whole snapshot: every lease and right it held".into(),
            )?;
            return Ok(info);
        }
    };
    info.seq = header.base;
    info.epoch = header.epoch;
    let mut reader = Reader::new(data);
    let mut state: Option<State> = None;
    let mut end: Option<(u64, u64)> = None;
    let mut sections = 0u64;
    loop {
        let frame = match reader.next_frame() {
            None => break,
            Some(Ok(f)) => f,
            Some(Err(stop)) => {
                // A snapshot is renamed into place only once complete and synced: a short
                // one is damage too.
                info.damaged = true;
                let (offset, record, what) = match stop {
                    Stop::Torn { offset } => (offset, None, "it ends early".to_owned()),
                    Stop::Damaged {
                        offset,
                        record,
                        what,
                    } => (offset, Some(record), what),
                };
                loss(
                    scan,
                    damage(offset, record, what),
                    "the leases of one section (up to 1,024)".into(),
                )?;
                if !reader.skip_damaged() && reader.resync().is_none() {
                    break;
                }
                continue;
            }
        };
        let section = match codec::get_section(frame.payload) {
            Ok(s) => s,
            Err(e) => {
                info.damaged = true;
                loss(
                    scan,
                    damage(frame.offset, Some(frame.record), format!("section: {e}")),
                    "the leases of one section (up to 1,024)".into(),
                )?;
                continue;
            }
        };
        match (section, frame.record) {
            (
                Section::Head {
                    state: mut head,
                    unsigned_rights,
                },
                0,
            ) => {
                if unsigned_rights > 0 {
                    info.damaged = true;
                    loss(
                        scan,
                        damage(
                            frame.offset,
                            Some(0),
                            super::codec::DecodeError::UnsignedRights.to_string(),
                        ),
                        RIGHTS_LOST.into(),
                    )?;
                }
                if let (Some(check), Some(rights)) = (check, head.rights.as_mut())
                    && let Err(e) = check.verify(rights)
                {
                    info.damaged = true;
                    loss(
                        scan,
                        damage(
                            frame.offset,
                            Some(0),
                            format!("its rights do not verify: {e}"),
                        ),
                        RIGHTS_LOST.into(),
                    )?;
                    head.rights = None;
                    head.rights_updated_at = None;
                }
                head.rebuild_index();
                if head.seq != header.base {
                    info.damaged = true;
                    loss(
                        scan,
                        damage(
                            frame.offset,
                            Some(0),
                            format!(
                                "its state is at sequence {} but its header says {}",
                                head.seq, header.base
                            ),
                        ),
                        "nothing more".into(),
                    )?;
                }
                let mut head = *head;
                head.begin_load();
                state = Some(head);
            }
            (Section::Leases(leases), _) if state.is_some() && end.is_none() => {
                let st = state.as_mut().expect("checked");
                sections += 1;
                for l in leases {
                    st.insert_lease(l);
                }
            }
            (Section::End { leases, sections }, _) if end.is_none() => {
                end = Some((leases, sections));
            }
            (_, record) => {
                info.damaged = true;
                loss(
                    scan,
                    damage(frame.offset, Some(record), "a section out of place".into()),
                    "nothing more".into(),
                )?;
            }
        }
    }
    let mut state = match state {
        Some(s) => s,
        None => {
            info.damaged = true;
            loss(
                scan,
                damage(
                    crate::store::frame::HEADER_LEN as u64,
                    Some(0),
                    "its first section (sequence number, lease key, rights, pair state) is unreadable".into(),
                ),
                "the lease key (every lease token issued), the rights and the pair state; a new lease key is made at start".into(),
            )?;
            State::default()
        }
    };
    info.leases = state.lease_count() as u64;
    match end {
        Some((leases, n)) if leases == info.leases && n == sections => {}
        Some((leases, _)) => {
            info.damaged = true;
            loss(
                scan,
                damage(
                    reader.offset(),
                    None,
                    format!(
                        "it holds {} leases of the {leases} it was written with",
                        info.leases
                    ),
                ),
                format!("{} leases", leases.saturating_sub(info.leases)),
            )?;
        }
        None => {
            info.damaged = true;
            loss(
                scan,
                damage(reader.offset(), None, "its last section is missing".into()),
                "possibly some leases".into(),
            )?;
        }
    }
    state.seq = header.base;
    scan.state = state;
    Ok(info)
}

pub(super) fn replay_segment(
    path: &Path,
    header: FileHeader,
    data: &[u8],
    last: bool,
    scan: &mut Scan,
    check: Option<&RightsCheck>,
    loss: &mut LossFn<'_>,
) -> Result<SegmentInfo, LoadError> {
    let mut info = SegmentInfo {
        path: path.to_owned(),
        base: header.base,
        epoch: header.epoch,
        bytes: data.len() as u64,
        ..SegmentInfo::default()
    };
    let damage = |offset: u64, record: u64, what: String| Damage {
        file: path.to_owned(),
        offset: Some(offset),
        record: Some(record),
        what,
    };
    let mut reader = Reader::new(data);
    // A salvage skipped a damaged record: the gap after it is that loss, not another.
    let mut skipped = false;
    loop {
        let frame: Frame<'_> = match reader.next_frame() {
            None => break,
            Some(Ok(f)) => f,
            Some(Err(Stop::Torn { offset })) if last => {
                info.torn_at = Some(offset);
                break;
            }
            Some(Err(stop)) => {
                info.damaged = true;
                let d = match stop {
                    Stop::Torn { offset } => damage(
                        offset,
                        reader.record(),
                        "it ends in a record cut short, but newer segments follow".into(),
                    ),
                    Stop::Damaged {
                        offset,
                        record,
                        what,
                    } => damage(offset, record, what),
                };
                loss(scan, d, "one event".into())?;
                skipped = true;
                if reader.skip_damaged() {
                    continue;
                }
                match reader.resync() {
                    Some(_) => continue,
                    None => {
                        if let Some(l) = scan.losses.last_mut() {
                            l.lost = "every event from there to the end of the segment".into();
                        }
                        break;
                    }
                }
            }
        };
        let (seq, mut event) = match codec::get_record(frame.payload) {
            Ok(r) => r,
            Err(e) => {
                info.damaged = true;
                let lost = match e {
                    codec::DecodeError::UnsignedRights => RIGHTS_LOST,
                    _ => "one event",
                };
                loss(
                    scan,
                    damage(frame.offset, frame.record, format!("its event: {e}")),
                    lost.into(),
                )?;
                skipped = true;
                continue;
            }
        };
        if let (Some(check), Event::RightsUpdated { rights, .. }) = (check, &mut event)
            && seq > scan.state.seq
            && let Err(e) = check.verify(rights)
        {
            info.damaged = true;
            loss(
                scan,
                damage(
                    frame.offset,
                    frame.record,
                    format!("its rights do not verify: {e}"),
                ),
                RIGHTS_LOST.into(),
            )?;
            skipped = true;
            continue;
        }
        info.records += 1;
        info.seqs = Some(match info.seqs {
            None => (seq, seq),
            Some((first, _)) => (first, seq),
        });
        apply(
            scan,
            seq,
            &event,
            std::mem::take(&mut skipped),
            |what| damage(frame.offset, frame.record, what),
            loss,
        )?;
    }
    Ok(info)
}

/// Applies a replayed event in sequence order; an event the snapshot already holds is
/// skipped, a gap is damage (in a salvage: the missing events are lost; right after a
/// skipped damaged record, they are that record's loss).
fn apply(
    scan: &mut Scan,
    seq: u64,
    event: &Event,
    after_skip: bool,
    damage: impl Fn(String) -> Damage,
    loss: &mut LossFn<'_>,
) -> Result<(), LoadError> {
    let have = scan.state.seq;
    if seq <= have {
        return Ok(());
    }
    if seq != have + 1 {
        let lost = match seq - have - 1 {
            1 => format!("event {}", have + 1),
            _ => format!("events {} to {}", have + 1, seq - 1),
        };
        match scan.losses.last_mut() {
            // Skipped rights are that record's loss; anything else skipped, these events.
            Some(l) if after_skip && l.lost == RIGHTS_LOST => {}
            Some(l) if after_skip => l.lost = lost,
            _ => loss(
                scan,
                damage(format!("the journal skips from sequence {have} to {seq}")),
                lost,
            )?,
        }
        scan.state.seq = seq - 1;
    }
    scan.state.apply(event);
    scan.replayed += 1;
    Ok(())
}

/// Rights kept as counts in version 0 JSON (`rights` a list, or an event without the
/// signed answer): the conversion drops them, since they were never signed; the server
/// gets its rights again from the back office. Returns whether `v` held such rights.
fn drop_unsigned_rights(v: &mut serde_json::Value) -> bool {
    match v.get_mut("rights") {
        Some(r) if r.is_array() => {
            *r = serde_json::Value::Null;
            if let Some(at) = v.get_mut("rights_updated_at") {
                *at = serde_json::Value::Null;
            }
            true
        }
        _ => false,
    }
}

/// Version 0: `snapshot.json` (the state as JSON) and `journal.log` (records
/// `[len u32][crc32 u32][JSON {seq, event}]`, no file header). Read strictly: only a
/// record cut off by the end of the file is a torn tail. Its rights were kept as counts:
/// they are dropped, with a warning.
fn load_legacy(dir: &Path, scan: &mut Scan) -> Result<(), LoadError> {
    #[derive(serde::Deserialize)]
    struct Record {
        seq: u64,
        event: serde_json::Value,
    }
    let unreadable = |file: &Path, e: serde_json::Error| Damage {
        file: file.to_owned(),
        offset: None,
        record: None,
        what: format!("it is not a readable state: {e}"),
    };
    let mut dropped = 0u64;
    let snap = dir.join(LEGACY_SNAPSHOT);
    match std::fs::read(&snap) {
        Ok(bytes) => {
            let mut v: serde_json::Value =
                serde_json::from_slice(&bytes).map_err(|e| unreadable(&snap, e))?;
            dropped += u64::from(drop_unsigned_rights(&mut v));
            scan.state = serde_json::from_value(v).map_err(|e| unreadable(&snap, e))?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(LoadError::Io {
                path: snap,
                source: e,
            });
        }
    }
    let path = dir.join(LEGACY_JOURNAL);
    let data = match std::fs::read(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(LoadError::Io { path, source: e }),
    };
    scan.state.begin_load();
    let mut pos = 0usize;
    let mut record = 0u64;
    while pos < data.len() {
        let damage = |what: &str| Damage {
            file: path.clone(),
            offset: Some(pos as u64),
            record: Some(record),
            what: what.to_owned(),
        };
        let Some(h) = data.get(pos..pos + 8) else {
            break; // torn header
        };
        let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
        let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        let Some(payload) = data.get(pos + 8..pos + 8 + len) else {
            break; // torn payload
        };
        if crc32fast::hash(payload) != crc {
            return Err(damage("its checksum does not match").into());
        }
        let mut rec: Record = serde_json::from_slice(payload)
            .map_err(|e| damage(&format!("its event is unreadable: {e}")))?;
        let have = scan.state.seq;
        if rec.seq > have {
            if rec.seq != have + 1 {
                return Err(damage(&format!(
                    "the journal skips from sequence {have} to {}",
                    rec.seq
                ))
                .into());
            }
            if rec.event["type"] == "rights_updated" && drop_unsigned_rights(&mut rec.event) {
                dropped += 1;
                scan.state.seq = rec.seq;
            } else {
                let event: Event = serde_json::from_value(rec.event)
                    .map_err(|e| damage(&format!("its event is unreadable: {e}")))?;
                scan.state.apply(&event);
                scan.replayed += 1;
            }
        }
        pos += 8 + len;
        record += 1;
    }
    if dropped > 0 {
        tracing::warn!(
            changes = dropped,
            "the version 0 store kept its rights as counts, without the back office's signature: they are dropped, and the server serves nothing until the back office answers"
        );
    }
    Ok(())
}
