//! The raft log and vote on disk ([`openraft::storage::RaftLogStorage`]), in the store's
//! file style (`crate::store::frame`): a 36-byte header (magic, format version, base,
//! CRC), then checksummed records. The format is in [`super`]'s documentation.
//!
//! One writer thread owns the files: appends from the raft core are queued, written in
//! one go and made durable with one `fdatasync` before each is acknowledged (group
//! commit); truncation and purging go through the same queue, so they happen in order.
//! The entries since the last purge are also kept in memory, for the raft core to read.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    AnyError, ErrorSubject, ErrorVerb, LogId, LogState, RaftLogReader, StorageError,
    StorageIOError, Vote,
};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::{Entry, NodeId, TypeConfig};
use crate::store::files;
use crate::store::frame::{self, FileHeader, Reader, Stop};

pub const LOG_MAGIC: [u8; 8] = *b"LLS-RLG\n";
pub const VOTE_MAGIC: [u8; 8] = *b"LLS-VOT\n";
/// The vote and the last purged log ID.
pub const VOTE_FILE: &str = "raft-vote.bin";
const VOTE_TMP: &str = "raft-vote.bin.tmp";
/// A new segment is started once the current one holds this much.
const SEGMENT_BYTES: u64 = 8 << 20;

/// A log segment's file name: `raft-log-<first index, 20 digits>.log`.
pub fn segment_name(base: u64) -> String {
    format!("raft-log-{base:020}.log")
}

fn segment_base(name: &str) -> Option<u64> {
    name.strip_prefix("raft-log-")?
        .strip_suffix(".log")?
        .parse()
        .ok()
}

/// Whether `dir` holds a cluster member's files.
pub fn is_member_dir(dir: &Path) -> bool {
    dir.join(VOTE_FILE).exists()
        || std::fs::read_dir(dir).is_ok_and(|rd| {
            rd.filter_map(Result::ok)
                .any(|e| e.file_name().to_str().and_then(segment_base).is_some())
        })
}

/// What the vote file holds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Meta {
    vote: Option<Vote<NodeId>>,
    purged: Option<LogId<NodeId>>,
}

type Entries = Arc<RwLock<BTreeMap<u64, Entry>>>;

/// The log storage handed to openraft.
pub struct LogStore {
    entries: Entries,
    meta: Meta,
    tx: mpsc::Sender<Msg>,
}

/// Reads entries for the raft core's replication.
#[derive(Clone)]
pub struct LogReader {
    entries: Entries,
}

enum Msg {
    Append {
        bytes: Vec<u8>,
        first: u64,
        count: u64,
        done: LogFlushed<TypeConfig>,
    },
    /// Removes the entries from this index on.
    Truncate(u64, oneshot::Sender<io::Result<()>>),
    /// Writes the vote file (a new vote, or a purge: then the segments it covers go).
    Meta(Meta, Option<u64>, oneshot::Sender<io::Result<()>>),
}

fn store_err(subject: ErrorSubject<NodeId>, verb: ErrorVerb, e: io::Error) -> StorageError<NodeId> {
    StorageError::from_io_error(subject, verb, e)
}

fn closed() -> io::Error {
    io::Error::other("the raft log's writer stopped")
}

/// Why the files could not be loaded: which file, where, what.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {what}")]
pub struct LoadError {
    pub path: PathBuf,
    pub what: String,
}

fn load_err(path: &Path, what: impl std::fmt::Display) -> LoadError {
    LoadError {
        path: path.to_owned(),
        what: what.to_string(),
    }
}

struct Segment {
    base: u64,
    path: PathBuf,
    /// Byte offset of each entry, in order (entry `base + i` at `offsets[i]`).
    offsets: Vec<u64>,
    len: u64,
}

impl Segment {
    fn next(&self) -> u64 {
        self.base + self.offsets.len() as u64
    }
}

/// Reads the log and vote in `dir` (after a crash, a record cut short at the end of the
/// newest segment is cut off, with a warning) and starts the writer. Anything else that
/// does not verify stops the start.
pub fn open(dir: &Path) -> Result<LogStore, LoadError> {
    let meta = read_meta(dir)?;
    let purged_index = meta.purged.map(|l| l.index);
    let mut names: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .map_err(|e| load_err(dir, e))?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let base = e.file_name().to_str().and_then(segment_base)?;
            Some((base, e.path()))
        })
        .collect();
    names.sort();
    let mut entries = BTreeMap::new();
    let mut segments = Vec::new();
    let last = names.len().saturating_sub(1);
    for (i, (base, path)) in names.into_iter().enumerate() {
        let data = std::fs::read(&path).map_err(|e| load_err(&path, e))?;
        let newest = i == last;
        if newest && data.len() < frame::HEADER_LEN {
            // Created, and the machine stopped before its header was written out.
            tracing::warn!(file = %path.display(), "removing an empty raft log segment (a crash as it was created)");
            std::fs::remove_file(&path).map_err(|e| load_err(&path, e))?;
            continue;
        }
        let header = FileHeader::decode(&data, LOG_MAGIC).map_err(|e| load_err(&path, e))?;
        if header.base != base {
            return Err(load_err(
                &path,
                format!(
                    "its header says it starts at {}, its name at {base}",
                    header.base
                ),
            ));
        }
        let mut seg = Segment {
            base,
            path: path.clone(),
            offsets: Vec::new(),
            len: data.len() as u64,
        };
        let mut reader = Reader::new(&data);
        loop {
            match reader.next_frame() {
                None => break,
                Some(Ok(f)) => {
                    let entry: Entry = serde_json::from_slice(f.payload).map_err(|e| {
                        load_err(
                            &path,
                            format!(
                                "record {} at byte {}: not a log entry ({e})",
                                f.record, f.offset
                            ),
                        )
                    })?;
                    let want = seg.next();
                    if entry.log_id.index != want {
                        return Err(load_err(
                            &path,
                            format!(
                                "record {} at byte {}: entry {} where {want} belongs",
                                f.record, f.offset, entry.log_id.index
                            ),
                        ));
                    }
                    seg.offsets.push(f.offset);
                    if purged_index.is_none_or(|p| entry.log_id.index > p) {
                        entries.insert(entry.log_id.index, entry);
                    }
                }
                Some(Err(Stop::Torn { offset })) if newest => {
                    tracing::warn!(
                        file = %path.display(),
                        offset,
                        bytes = seg.len - offset,
                        "the raft log ends in a record cut short (a crash while it was written, never acknowledged); cutting it off"
                    );
                    let f = OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(|e| load_err(&path, e))?;
                    f.set_len(offset).map_err(|e| load_err(&path, e))?;
                    f.sync_all().map_err(|e| load_err(&path, e))?;
                    seg.len = offset;
                    break;
                }
                Some(Err(stop)) => return Err(load_err(&path, stop)),
            }
        }
        segments.push(seg);
    }
    // What follows the last purge must be whole: no entry missing.
    let mut expect = purged_index.map(|p| p + 1);
    for &index in entries.keys() {
        if let Some(want) = expect
            && index != want
        {
            return Err(load_err(
                dir,
                format!(
                    "the raft log lacks entries {want} to {} (a segment is missing)",
                    index - 1
                ),
            ));
        }
        expect = Some(index + 1);
    }
    let entries = Arc::new(RwLock::new(entries));
    let (tx, rx) = mpsc::channel();
    let writer = Writer {
        dir: dir.to_owned(),
        segments,
        file: None,
    };
    std::thread::Builder::new()
        .name("raft-log-writer".into())
        .spawn(move || writer.run(rx))
        .map_err(|e| load_err(dir, e))?;
    Ok(LogStore { entries, meta, tx })
}

fn read_meta(dir: &Path) -> Result<Meta, LoadError> {
    let path = dir.join(VOTE_FILE);
    let data = match std::fs::read(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Meta::default()),
        Err(e) => return Err(load_err(&path, e)),
    };
    FileHeader::decode(&data, VOTE_MAGIC).map_err(|e| load_err(&path, e))?;
    let mut reader = Reader::new(&data);
    match reader.next_frame() {
        Some(Ok(f)) => serde_json::from_slice(f.payload)
            .map_err(|e| load_err(&path, format!("record 0: not a vote ({e})"))),
        Some(Err(stop)) => Err(load_err(&path, stop)),
        None => Err(load_err(&path, "it holds no vote")),
    }
}

/// Writes the vote file: a temporary file, synced, renamed over, the directory synced.
fn write_meta(dir: &Path, meta: &Meta) -> io::Result<()> {
    let mut buf = FileHeader {
        magic: VOTE_MAGIC,
        epoch: 0,
        base: 0,
    }
    .encode()
    .to_vec();
    frame::put_frame(
        &mut buf,
        &serde_json::to_vec(meta).map_err(io::Error::other)?,
    );
    let tmp = dir.join(VOTE_TMP);
    let mut f = files::create_private(&tmp, true)?;
    f.write_all(&buf)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, dir.join(VOTE_FILE))?;
    files::fsync_dir(dir)
}

struct Writer {
    dir: PathBuf,
    segments: Vec<Segment>,
    /// The newest segment, open for appending.
    file: Option<File>,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Msg>) {
        let mut batch = Vec::new();
        while let Ok(first) = rx.recv() {
            batch.push(first);
            while let Ok(m) = rx.try_recv() {
                batch.push(m);
            }
            let mut synced: Vec<LogFlushed<TypeConfig>> = Vec::new();
            let mut result = Ok(());
            for m in batch.drain(..) {
                match m {
                    Msg::Append {
                        bytes,
                        first,
                        count,
                        done,
                    } => {
                        if result.is_ok() {
                            result = self.append(&bytes, first, count);
                        }
                        synced.push(done);
                    }
                    Msg::Truncate(index, ack) => {
                        let r = result
                            .as_ref()
                            .map_err(|e| io::Error::new(e.kind(), e.to_string()))
                            .and_then(|()| self.flush())
                            .and_then(|()| self.truncate(index));
                        let _ = ack.send(r);
                    }
                    Msg::Meta(meta, purge, ack) => {
                        let r = write_meta(&self.dir, &meta).and_then(|()| match purge {
                            Some(upto) => self.purge(upto),
                            None => Ok(()),
                        });
                        let _ = ack.send(r);
                    }
                }
            }
            if result.is_ok() {
                result = self.flush();
            }
            if let Err(e) = &result {
                // A failed write or sync leaves the file in an unknown state: stop the
                // process so a restart loads what is on disk (and catches up from the
                // other members).
                tracing::error!(error = %e, "the raft log could not be written; stopping");
            }
            for done in synced {
                done.log_io_completed(
                    result
                        .as_ref()
                        .map(|_| ())
                        .map_err(|e| io::Error::new(e.kind(), e.to_string())),
                );
            }
            if result.is_err() {
                std::process::exit(70);
            }
        }
    }

    /// Appends encoded entries `first..first + count`, starting a new segment when the
    /// current one is full or does not end right before `first`.
    fn append(&mut self, bytes: &[u8], first: u64, count: u64) -> io::Result<()> {
        let roll = self
            .segments
            .last()
            .is_none_or(|s| s.next() != first || s.len >= SEGMENT_BYTES);
        if roll {
            self.flush()?;
            let path = self.dir.join(segment_name(first));
            let mut f = files::create_private(&path, true)?;
            let header = FileHeader {
                magic: LOG_MAGIC,
                epoch: 0,
                base: first,
            }
            .encode();
            f.write_all(&header)?;
            f.sync_all()?;
            files::fsync_dir(&self.dir)?;
            self.segments.push(Segment {
                base: first,
                path,
                offsets: Vec::new(),
                len: header.len() as u64,
            });
            self.file = Some(f);
        }
        let seg = self.segments.last_mut().expect("a segment was just made");
        if self.file.is_none() {
            self.file = Some(OpenOptions::new().append(true).open(&seg.path)?);
        }
        let mut pos = 0usize;
        let mut offset = seg.len;
        for _ in 0..count {
            let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().expect("4 bytes")) as usize;
            seg.offsets.push(offset);
            pos += frame::RECORD_HEADER + len;
            offset += (frame::RECORD_HEADER + len) as u64;
        }
        self.file.as_mut().expect("open").write_all(bytes)?;
        seg.len = offset;
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        match &self.file {
            Some(f) => f.sync_data(),
            None => Ok(()),
        }
    }

    fn truncate(&mut self, index: u64) -> io::Result<()> {
        while let Some(seg) = self.segments.last_mut() {
            if seg.base >= index {
                self.file = None;
                std::fs::remove_file(&seg.path)?;
                self.segments.pop();
                continue;
            }
            let keep = (index - seg.base) as usize;
            if keep < seg.offsets.len() {
                let at = seg.offsets[keep];
                self.file = None;
                let f = OpenOptions::new().write(true).open(&seg.path)?;
                f.set_len(at)?;
                f.sync_all()?;
                seg.offsets.truncate(keep);
                seg.len = at;
            }
            break;
        }
        files::fsync_dir(&self.dir)
    }

    /// Removes the segments whose every entry is at or before `upto`.
    fn purge(&mut self, upto: u64) -> io::Result<()> {
        let mut removed = false;
        while let Some(seg) = self.segments.first() {
            if seg.next() > upto + 1 {
                break;
            }
            if self.segments.len() == 1 {
                self.file = None;
            }
            std::fs::remove_file(&seg.path)?;
            self.segments.remove(0);
            removed = true;
        }
        if removed {
            files::fsync_dir(&self.dir)?;
        }
        Ok(())
    }
}

impl LogStore {
    fn last_log_id(&self) -> Option<LogId<NodeId>> {
        self.entries
            .read()
            .last_key_value()
            .map(|(_, e)| e.log_id)
            .or(self.meta.purged)
    }

    async fn write_meta(&mut self, purge: Option<u64>) -> io::Result<()> {
        let (ack, rx) = oneshot::channel();
        self.tx
            .send(Msg::Meta(self.meta.clone(), purge, ack))
            .map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + std::fmt::Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError<NodeId>> {
        Ok(self
            .entries
            .read()
            .range(range)
            .map(|(_, e)| e.clone())
            .collect())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + std::fmt::Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError<NodeId>> {
        LogReader {
            entries: self.entries.clone(),
        }
        .try_get_log_entries(range)
        .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        Ok(LogState {
            last_purged_log_id: self.meta.purged,
            last_log_id: self.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> LogReader {
        LogReader {
            entries: self.entries.clone(),
        }
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.meta.vote = Some(*vote);
        self.write_meta(None)
            .await
            .map_err(|e| store_err(ErrorSubject::Vote, ErrorVerb::Write, e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(self.meta.vote)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut bytes = Vec::new();
        let mut first = None;
        let mut count = 0;
        {
            let mut map = self.entries.write();
            for e in entries {
                let json = serde_json::to_vec(&e).map_err(|err| StorageError::IO {
                    source: StorageIOError::write_log_entry(e.log_id, AnyError::new(&err)),
                })?;
                frame::put_frame(&mut bytes, &json);
                first.get_or_insert(e.log_id.index);
                count += 1;
                map.insert(e.log_id.index, e);
            }
        }
        let Some(first) = first else {
            callback.log_io_completed(Ok(()));
            return Ok(());
        };
        self.tx
            .send(Msg::Append {
                bytes,
                first,
                count,
                done: callback,
            })
            .map_err(|_| store_err(ErrorSubject::Logs, ErrorVerb::Write, closed()))
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.entries.write().split_off(&log_id.index);
        let (ack, rx) = oneshot::channel();
        self.tx
            .send(Msg::Truncate(log_id.index, ack))
            .map_err(|_| store_err(ErrorSubject::Logs, ErrorVerb::Delete, closed()))?;
        rx.await
            .map_err(|_| closed())
            .and_then(|r| r)
            .map_err(|e| store_err(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        {
            let mut map = self.entries.write();
            let rest = map.split_off(&(log_id.index + 1));
            *map = rest;
        }
        self.meta.purged = Some(log_id);
        self.write_meta(Some(log_id.index))
            .await
            .map_err(|e| store_err(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }
}

#[cfg(test)]
mod tests {
    use openraft::storage::RaftLogStorageExt;
    use openraft::testing::{StoreBuilder, Suite};
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;
    use crate::cluster::sm::StateMachine;

    struct Files;

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Files {
        async fn build(
            &self,
        ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<NodeId>> {
            let dir = tempfile::tempdir().unwrap();
            let log = open(dir.path()).unwrap();
            let (sm, _) =
                StateMachine::open(dir.path(), crate::cluster::machine::tests::check()).unwrap();
            Ok((dir, log, sm))
        }
    }

    #[test]
    fn the_log_and_state_machine_pass_openraft_s_storage_suite() {
        Suite::test_all(Files).unwrap();
    }

    fn blank(term: u64, index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    async fn indexes(store: &mut LogStore) -> Vec<u64> {
        store
            .try_get_log_entries(0..)
            .await
            .unwrap()
            .iter()
            .map(|e| e.log_id.index)
            .collect()
    }

    #[tokio::test]
    async fn entries_votes_truncation_and_purges_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path()).unwrap();
        store
            .blocking_append((1..=10).map(|i| blank(1, i)))
            .await
            .unwrap();
        store.truncate(blank(1, 8).log_id).await.unwrap();
        store
            .blocking_append((8..=12).map(|i| blank(2, i)))
            .await
            .unwrap();
        store.purge(blank(1, 3).log_id).await.unwrap();
        let vote = Vote::new(2, 7);
        store.save_vote(&vote).await.unwrap();
        drop(store);

        let mut store = open(dir.path()).unwrap();
        assert_eq!(indexes(&mut store).await, (4..=12).collect::<Vec<_>>());
        assert_eq!(store.read_vote().await.unwrap(), Some(vote));
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(3));
        assert_eq!(state.last_log_id, Some(blank(2, 12).log_id));
        let e = store.try_get_log_entries(9..10).await.unwrap();
        assert_eq!(e[0].log_id.leader_id.term, 2);
    }

    #[tokio::test]
    async fn a_torn_last_append_is_cut_and_damage_refuses_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path()).unwrap();
        store
            .blocking_append((1..=5).map(|i| blank(1, i)))
            .await
            .unwrap();
        drop(store);
        let seg = dir.path().join(segment_name(1));
        let whole = std::fs::read(&seg).unwrap();
        // A crash in the middle of the last append: cut off, the rest kept.
        std::fs::write(&seg, &whole[..whole.len() - 3]).unwrap();
        let mut store = open(dir.path()).unwrap();
        assert_eq!(indexes(&mut store).await, vec![1, 2, 3, 4]);
        drop(store);
        // A flipped bit in an earlier record: the start stops, naming the file.
        let mut bad = std::fs::read(&seg).unwrap();
        bad[frame::HEADER_LEN + frame::RECORD_HEADER + 2] ^= 0x20;
        std::fs::write(&seg, &bad).unwrap();
        let err = open(dir.path()).err().expect("damage refuses the start");
        assert_eq!(err.path, seg);
        assert!(err.what.contains("record 0"), "{err}");
        // A damaged vote file too.
        std::fs::write(&seg, &whole).unwrap();
        let mut store = open(dir.path()).unwrap();
        store.save_vote(&Vote::new(1, 1)).await.unwrap();
        drop(store);
        let vote = dir.path().join(VOTE_FILE);
        let mut bad = std::fs::read(&vote).unwrap();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        std::fs::write(&vote, &bad).unwrap();
        assert!(open(dir.path()).is_err());
    }
}
