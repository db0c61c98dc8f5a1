//! The durable local store: an append-only journal of ordered events plus snapshots,
//! written by one writer thread with group commit. This comment is its specification
//! (format version 1); `docs/design.md` repeats it for operators.
//!
//! # Files
//!
//! `DATA_DIR` is mode 0700; every file in it is created 0600, and a start that finds the
//! directory or a file more open warns and fixes it ([`files`]).
//!
//! | file | holds |
//! |---|---|
//! | `snapshot.bin` | the whole state at sequence number S |
//! | `journal-<B>.log` | a journal segment: the events B, B+1, … (B in 20 digits) |
//! | `snapshot.bin.tmp` | a snapshot being written (removed at start) |
//! | `store.lock` | locked (`flock`) while a server uses the directory |
//! | `pair-restart.json` | a main's `{"history", "seq"}` at its earliest start since its backup's copy was last compared with its own ([`Store::hold_restart_point`]) |
//! | `*.damaged-<time>` | files `store recover` moved aside (never read, never deleted) |
//! | `server-key.pem`, `capability.jwt` | the server's own key and its latest verified answer (not the store's: [`crate::identity`]) |
//! | `snapshot.json`, `journal.log` | version 0 (JSON), converted once at start and kept as `*.v0-imported` |
//!
//! Both kinds of file are a 36-byte header and then records.
//!
//! Header: magic (8 bytes: `LLS-JNL\n` for a segment, `LLS-SNP\n` for a snapshot),
//! format version (u32 LE, 1), 4 zero bytes, epoch (u64 LE), base (u64 LE: a segment's
//! first sequence number, a snapshot's state sequence number), CRC-32 of the 32 bytes
//! before it (u32 LE). The *epoch* is random, chosen when a store is created and again at
//! every reset (a state replaced whole); segments belong to the snapshot of their epoch,
//! so a crash halfway through a reset never mixes two histories.
//!
//! Record: payload length (u32 LE, 1 to 16 MiB), CRC-32 of the payload (u32 LE), CRC-32
//! of those 8 bytes (u32 LE), payload. A segment's payloads are events ([`codec`]: the
//! sequence number, a tag byte, the fields); a snapshot's are sections (the state without
//! leases, then up to 1,024 leases each with their own name tables, then an end section
//! with the totals). The encoding is hand-framed rather than serde's: the event enum's
//! serde form (internally tagged, optional fields skipped) is one that positional formats
//! such as postcard cannot carry; and a format that is a spec should not change when
//! someone edits a derive. Decoding checks every length before it allocates and never
//! panics, whatever the bytes (fuzzed). The pair's stream carries these same records,
//! byte for byte ([`Record`], `service::peer::Batch`).
//!
//! # Writing
//!
//! The writer drains every pending event, appends them in one write, calls `fdatasync`
//! once and only then acknowledges each (group commit); it keeps no copy of the state.
//! Once the segments hold more than `max(snapshot_after_bytes, last snapshot's size)`,
//! it asks the owner of the state for a copy ([`Store::compaction_wanted`]). The owner
//! takes one under its lock ([`crate::domain::State::frozen`]: the leases are shared copy
//! on write, so this costs microseconds) and hands it over with [`Store::compact`],
//! after every event it holds. The writer then starts a new segment at S+1, and a
//! separate thread writes the snapshot (buffered: to `snapshot.bin.tmp`, `fsync`,
//! rename, `fsync` of the directory) and removes the segments before S+1. Grants go on
//! meanwhile; a crash at any step leaves files that load. A reset (a backup taking its
//! main's state, a main taking its backup's back) writes a snapshot of a new epoch, then
//! removes every segment and starts one at S+1.
//!
//! # Loading
//!
//! A start reads the snapshot and the segments of its epoch that follow it, replaying
//! only events after S, in order. A start rewrites nothing: it only cuts a torn tail,
//! removes files a compaction had finished with, and converts version 0 files.
//!
//! * Torn: the newest segment's last record is cut short by the end of the file (its
//!   header incomplete, or its payload running past the end), or the file ends in zero
//!   bytes where a record would start. That is a crash in the middle of an append, which
//!   nobody was told was durable: it is cut off, with a warning.
//! * Damaged: anything else that does not verify, anywhere (a checksum, an impossible
//!   length, an undecodable event, a gap in the sequence numbers, a short snapshot, an
//!   unknown format version, rights whose signature does not verify for this server with
//!   the back office's key, or rights kept as counts). The start stops with one error
//!   naming the file, the byte offset and the record, and leaves every file as it was.
//!   Because a record header has its own checksum, a damaged length is never taken for a
//!   torn record.
//!
//! `license-server store verify` reads everything it can and reports it, changing
//! nothing; `license-server store recover` keeps every record that verifies (skipping a
//! damaged one by its length, or finding the next good record), writes them as a new
//! snapshot of a new epoch, moves the damaged files aside and says what was lost
//! ([`repair`]).

pub mod codec;
pub mod files;
pub mod frame;
pub mod load;
pub mod repair;

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};

use crate::domain::{Event, Frozen, RightsCheck, State};
use frame::{FileHeader, JOURNAL_MAGIC, SNAPSHOT_MAGIC};
pub use load::{Damage, LoadError};
use load::{SNAPSHOT, SNAPSHOT_TMP, segment_name};

/// Most events written per commit.
const MAX_BATCH: usize = 8192;
/// A snapshot being written is synced after every this many bytes.
const SNAPSHOT_SYNC_BYTES: usize = 1 << 20;

#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Ask for a snapshot once the journal holds this much, or as much as the last
    /// snapshot if that is more (so compaction costs at most about twice the writes).
    pub snapshot_after_bytes: u64,
    /// Verifies the rights as they are loaded (rights that do not verify are damage);
    /// without it they load unverified and count for nothing.
    pub rights: Option<RightsCheck>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            snapshot_after_bytes: 8 << 20,
            rights: None,
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("the local store failed: {0}")]
    Io(String),
    #[error("the local store is shut down")]
    Closed,
}

#[expect(
    clippy::large_enum_variant,
    reason = "an event moves once through the channel to the writer; boxing it would allocate for every grant"
)]
enum Msg {
    Event {
        seq: u64,
        body: Body,
        ack: Option<oneshot::Sender<Result<(), StoreError>>>,
    },
    /// Acknowledged once everything sent before it is durable.
    Barrier(oneshot::Sender<Result<(), StoreError>>),
    /// Replaces the whole state (a backup taking a snapshot from its main, a main taking
    /// its backup's changes back): written as the snapshot of a new epoch.
    Reset {
        state: Box<State>,
        ack: oneshot::Sender<Result<(), StoreError>>,
    },
    /// A copy of the state after every event sent before it: snapshot it.
    Compact(Box<Frozen>),
}

/// An event on its way to the writer: as it is, or already encoded as its journal record
/// (when it is replicated too, or came from the main so).
enum Body {
    Event(Event),
    Framed(Bytes),
}

/// Counters the writer keeps, read by the metrics endpoint.
#[derive(Debug, Default)]
pub struct StoreStats {
    pub commits: AtomicU64,
    pub events: AtomicU64,
    pub snapshots: AtomicU64,
    pub durable_seq: AtomicU64,
    /// Size and sequence number of the last snapshot written or loaded.
    pub snapshot_bytes: AtomicU64,
    pub snapshot_seq: AtomicU64,
    /// Bytes in the journal's segments.
    pub journal_bytes: AtomicU64,
}

/// What loading found and did.
#[derive(Debug, Clone, Default)]
pub struct Recovery {
    pub snapshot_seq: u64,
    pub replayed: u64,
    /// Bytes cut off the end of the journal (a torn last write).
    pub truncated_bytes: u64,
    /// Files a finished compaction or reset had left, removed.
    pub removed_files: usize,
    /// Version 0 files were converted.
    pub imported_legacy: bool,
}

/// An event queued to the journal, as the journal holds it: its sequence number and its
/// record, framed (header and payload, [`frame::put_frame`]'s form). The stream a main
/// replicates to its backup: the record is encoded once, for the journal and the wire,
/// and the backup journals the bytes it received as they are (after decoding them to
/// apply them), so both servers' journals hold the same records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub frame: Bytes,
}

impl Record {
    /// Encodes `event` as the journal's record for `seq`.
    pub fn encode(seq: u64, event: &Event) -> Record {
        let mut buf = Vec::with_capacity(128);
        let start = frame::begin_frame(&mut buf);
        codec::put_record(&mut buf, seq, event);
        frame::end_frame(&mut buf, start);
        Record {
            seq,
            frame: Bytes::from(buf),
        }
    }
}

/// Handle to the writer thread.
pub struct Store {
    committed: tokio::sync::broadcast::Sender<Record>,
    tx: parking_lot::Mutex<Option<mpsc::Sender<Msg>>>,
    thread: parking_lot::Mutex<Option<std::thread::JoinHandle<()>>>,
    wanted: watch::Receiver<u64>,
    pub stats: Arc<StoreStats>,
    /// Held until shut down: one process at a time uses a data directory.
    lock: parking_lot::Mutex<Option<File>>,
    dir: PathBuf,
}

/// Where a main's own copy stood when it started: see [`Store::hold_restart_point`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartPoint {
    pub history: uuid::Uuid,
    pub seq: u64,
}

const RESTART_POINT: &str = "pair-restart.json";

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

fn new_epoch() -> u64 {
    u64::from_le_bytes(shared::random_bytes::<8>())
}

/// Opens (or creates) the store in `dir`, loads the state and starts the writer.
pub fn open(dir: &Path, opts: StoreOptions) -> Result<(State, Store, Recovery), LoadError> {
    files::prepare_dir(dir).map_err(load::io_err(dir))?;
    let lock = files::lock_dir(dir).map_err(load::io_err(dir))?;
    let mut scan = load::scan(dir, false, opts.rights.as_ref())?;
    let mut rec = Recovery {
        snapshot_seq: scan.snapshot.as_ref().map_or(0, |s| s.seq),
        replayed: scan.replayed,
        truncated_bytes: scan.torn_bytes(),
        ..Recovery::default()
    };
    let mut dir_changed = false;
    let stats = Arc::new(StoreStats::default());

    if !scan.legacy.is_empty() {
        // Converted: written as a snapshot of a new epoch, the old files kept aside.
        if scan.snapshot.is_none() && scan.segments.is_empty() {
            scan.epoch = new_epoch();
            let bytes = write_snapshot(dir, &scan.state.frozen(), scan.epoch)
                .map_err(load::io_err(&dir.join(SNAPSHOT)))?;
            stats.snapshot_bytes.store(bytes, Ordering::Relaxed);
            stats.snapshot_seq.store(scan.state.seq, Ordering::Relaxed);
            rec.imported_legacy = true;
            rec.snapshot_seq = scan.state.seq;
            tracing::info!(
                seq = scan.state.seq,
                leases = scan.state.lease_count(),
                "converted the store from version 0 (JSON) files"
            );
        }
        for path in &scan.legacy {
            let mut aside = path.clone().into_os_string();
            aside.push(".v0-imported");
            std::fs::rename(path, &aside).map_err(load::io_err(path))?;
        }
        dir_changed = true;
    }
    for path in &scan.stale {
        match std::fs::remove_file(path) {
            Ok(()) => rec.removed_files += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(load::io_err(path)(e)),
        }
        dir_changed = true;
    }
    if let Some(s) = &scan.snapshot {
        stats.snapshot_bytes.store(s.bytes, Ordering::Relaxed);
        stats.snapshot_seq.store(s.seq, Ordering::Relaxed);
    }
    if scan.epoch == 0 {
        scan.epoch = new_epoch();
    }

    // The newest segment is appended to (after its torn tail is cut); a new store starts
    // one.
    let mut closed = Vec::new();
    let (journal, journal_path, journal_len, journal_base) = match scan.segments.split_last() {
        Some((last, earlier)) => {
            closed = earlier.iter().map(|s| (s.path.clone(), s.bytes)).collect();
            let f = OpenOptions::new()
                .append(true)
                .open(&last.path)
                .map_err(load::io_err(&last.path))?;
            let mut len = last.bytes;
            if let Some(at) = last.torn_at {
                tracing::warn!(
                    file = %last.path.display(),
                    offset = at,
                    bytes = last.bytes - at,
                    "the journal ends in a record cut short (a crash while it was written, never acknowledged); cutting it off"
                );
                f.set_len(at).map_err(load::io_err(&last.path))?;
                f.sync_all().map_err(load::io_err(&last.path))?;
                len = at;
            }
            (f, last.path.clone(), len, last.base)
        }
        None => {
            let base = scan.state.seq + 1;
            let (f, path, len) =
                create_segment(dir, scan.epoch, base).map_err(load::io_err(dir))?;
            dir_changed = true;
            (f, path, len, base)
        }
    };
    if dir_changed {
        files::fsync_dir(dir).map_err(load::io_err(dir))?;
    }
    let state = scan.state;
    stats.durable_seq.store(state.seq, Ordering::Relaxed);
    let journal_bytes = journal_len + closed.iter().map(|(_, b)| b).sum::<u64>();
    stats.journal_bytes.store(journal_bytes, Ordering::Relaxed);

    let (want_tx, wanted) = watch::channel(0u64);
    let writer = Writer {
        dir: dir.to_owned(),
        epoch: scan.epoch,
        journal,
        journal_path,
        journal_base,
        journal_len,
        closed,
        next_seq: state.seq + 1,
        unsynced: false,
        dir_dirty: false,
        buf: Vec::with_capacity(1 << 16),
        opts,
        want: want_tx,
        asked: false,
        compacting: None,
        stats: stats.clone(),
    };
    let (tx, rx) = mpsc::channel();
    let (committed, _) = tokio::sync::broadcast::channel(65_536);
    let thread = std::thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || writer.run(rx))
        .map_err(load::io_err(dir))?;
    Ok((
        state,
        Store {
            committed,
            tx: parking_lot::Mutex::new(Some(tx)),
            thread: parking_lot::Mutex::new(Some(thread)),
            wanted,
            stats,
            lock: parking_lot::Mutex::new(Some(lock)),
            dir: dir.to_path_buf(),
        },
        rec,
    ))
}

impl Store {
    /// A main's restart point: where its own copy stood (`now`) when it started, or, when
    /// it has started before without its backup's copy compared since, where it stood
    /// then (kept in `pair-restart.json`, synced). A main sends changes to its backup while
    /// its own sync runs, so a crash can leave the backup with changes past that point
    /// that the main lost, and the main's later changes reuse their numbers: whatever
    /// the backup holds past the earliest such point is not the main's and must be taken
    /// back, not continued. [`Store::clear_restart_point`] once compared.
    pub fn hold_restart_point(&self, now: RestartPoint) -> io::Result<RestartPoint> {
        let path = self.dir.join(RESTART_POINT);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} is damaged ({e}): remove it to start", path.display()),
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let bytes = serde_json::to_vec(&now).map_err(io::Error::other)?;
                // Whole or not at all: a crash while it is written must not leave a
                // file that stops the next start.
                files::write_atomically(&self.dir, RESTART_POINT, &bytes)?;
                Ok(now)
            }
            Err(e) => Err(e),
        }
    }

    /// The backup's copy has been compared with this server's: the restart point is
    /// forgotten.
    pub fn clear_restart_point(&self) -> io::Result<()> {
        match std::fs::remove_file(self.dir.join(RESTART_POINT)) {
            Ok(()) => files::fsync_dir(&self.dir),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Queues an event (already applied in memory with `seq`); the receiver completes once
    /// it is durable. Call in sequence order (under the state lock).
    pub fn submit(&self, seq: u64, event: Event) -> oneshot::Receiver<Result<(), StoreError>> {
        let (ack, rx) = oneshot::channel();
        self.send(Msg::Event {
            seq,
            body: Body::Event(event),
            ack: Some(ack),
        });
        rx
    }

    /// Queues a change received from the main, as its journal record (decoded and
    /// applied in memory with `seq`); the receiver completes once it is durable.
    pub fn submit_framed(&self, rec: Record) -> oneshot::Receiver<Result<(), StoreError>> {
        let (ack, rx) = oneshot::channel();
        self.send(Msg::Event {
            seq: rec.seq,
            body: Body::Framed(rec.frame),
            ack: Some(ack),
        });
        rx
    }

    /// Queues an event without waiting for it (expiries: a lost one happens again).
    pub fn submit_nowait(&self, seq: u64, event: Event) {
        self.send(Msg::Event {
            seq,
            body: Body::Event(event),
            ack: None,
        });
    }

    fn send(&self, mut msg: Msg) {
        if let Msg::Event { seq, body, .. } = &mut msg
            && self.committed.receiver_count() > 0
        {
            // Encoded here, once: the writer appends these bytes, the main sends them.
            let rec = match body {
                Body::Event(event) => Record::encode(*seq, event),
                Body::Framed(frame) => Record {
                    seq: *seq,
                    frame: frame.clone(),
                },
            };
            *body = Body::Framed(rec.frame.clone());
            let _ = self.committed.send(rec);
        }
        if let Some(tx) = &*self.tx.lock() {
            // A send error drops the acknowledgement, which its receiver sees as closed.
            let _ = tx.send(msg);
        }
    }

    /// Every event from now on, in order, as it is queued: before it is durable, so that a
    /// main replicates a change while its own `fdatasync` runs (whoever answers a client
    /// waits for both). A receiver that falls more than 65,536 events behind gets `Lagged`
    /// and must resynchronise from a snapshot.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Record> {
        self.committed.subscribe()
    }

    /// Replaces the state durably (after everything queued before it); events that
    /// follow continue from `state.seq`.
    pub fn reset(&self, state: State) -> oneshot::Receiver<Result<(), StoreError>> {
        let (ack, rx) = oneshot::channel();
        self.send(Msg::Reset {
            state: Box::new(state),
            ack,
        });
        rx
    }

    /// Completes when everything queued so far is durable.
    pub fn barrier(&self) -> oneshot::Receiver<Result<(), StoreError>> {
        let (ack, rx) = oneshot::channel();
        self.send(Msg::Barrier(ack));
        rx
    }

    /// Changes each time the journal has grown enough for a snapshot; closed when the
    /// writer stops. The owner of the state answers with [`Store::compact`].
    pub fn compaction_wanted(&self) -> watch::Receiver<u64> {
        self.wanted.clone()
    }

    /// Snapshots `frozen`, a copy of the state taken under the state lock *after* every
    /// event up to its sequence number was queued (and sent under that same lock, so
    /// nothing later is queued before it). The snapshot is written off the writer's path.
    pub fn compact(&self, frozen: Frozen) {
        self.send(Msg::Compact(Box::new(frozen)));
    }

    /// Flushes, stops the writer (and a compaction under way) and waits for them.
    pub fn shutdown(&self) {
        self.tx.lock().take();
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
        self.lock.lock().take();
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Waits for an acknowledgement from [`Store::submit`].
pub async fn acked(rx: oneshot::Receiver<Result<(), StoreError>>) -> Result<(), StoreError> {
    rx.await.unwrap_or(Err(StoreError::Closed))
}

struct Writer {
    dir: PathBuf,
    epoch: u64,
    journal: File,
    journal_path: PathBuf,
    journal_base: u64,
    journal_len: u64,
    /// Earlier segments of this epoch, not yet compacted away.
    closed: Vec<(PathBuf, u64)>,
    next_seq: u64,
    /// Written since the last sync.
    unsynced: bool,
    /// A segment was created: the directory must be synced before its records count.
    dir_dirty: bool,
    buf: Vec<u8>,
    opts: StoreOptions,
    want: watch::Sender<u64>,
    /// A snapshot was asked for and not given yet.
    asked: bool,
    compacting: Option<std::thread::JoinHandle<()>>,
    stats: Arc<StoreStats>,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Msg>) {
        let mut batch: Vec<Msg> = Vec::with_capacity(1024);
        while let Ok(first) = rx.recv() {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
            let result = self.commit(&mut batch);
            let stats = &self.stats;
            let n_events = batch
                .iter()
                .filter(|m| matches!(m, Msg::Event { .. }))
                .count() as u64;
            if let Err(e) = &result {
                // A failed write or fsync leaves the file in an unknown state: stop the
                // process (fail-stop) so a restart recovers from what is on disk.
                tracing::error!(error = %e, "the journal could not be written; stopping");
            } else {
                stats.commits.fetch_add(1, Ordering::Relaxed);
                stats.events.fetch_add(n_events, Ordering::Relaxed);
                stats
                    .durable_seq
                    .store(self.next_seq - 1, Ordering::Release);
                stats
                    .journal_bytes
                    .store(self.journal_bytes(), Ordering::Relaxed);
            }
            let reply = result.clone().map_err(|e| StoreError::Io(e.clone()));
            for m in batch.drain(..) {
                match m {
                    Msg::Event { ack: Some(ack), .. }
                    | Msg::Barrier(ack)
                    | Msg::Reset { ack, .. } => {
                        let _ = ack.send(reply.clone());
                    }
                    Msg::Event { ack: None, .. } | Msg::Compact(_) => {}
                }
            }
            if result.is_err() {
                std::process::exit(70);
            }
            self.maybe_ask();
        }
        // Channel closed: everything was already synced batch by batch.
        self.finish_compaction(true);
    }

    fn journal_bytes(&self) -> u64 {
        self.journal_len + self.closed.iter().map(|(_, b)| b).sum::<u64>()
    }

    /// Asks the owner of the state for a copy once the journal is large enough.
    fn maybe_ask(&mut self) {
        self.finish_compaction(false);
        if self.asked || self.compacting.is_some() {
            return;
        }
        let threshold = self
            .opts
            .snapshot_after_bytes
            .max(self.stats.snapshot_bytes.load(Ordering::Relaxed));
        if self.journal_bytes() >= threshold {
            self.asked = true;
            self.want.send_modify(|n| *n += 1);
        }
    }

    /// Reaps a finished compaction thread (or waits for it).
    fn finish_compaction(&mut self, wait: bool) {
        if self
            .compacting
            .as_ref()
            .is_some_and(|h| wait || h.is_finished())
            && let Some(h) = self.compacting.take()
        {
            let _ = h.join();
        }
    }

    fn commit(&mut self, batch: &mut [Msg]) -> Result<(), String> {
        self.buf.clear();
        for m in batch.iter_mut() {
            match m {
                Msg::Event { seq, body, .. } => {
                    if *seq != self.next_seq {
                        return Err(format!(
                            "event out of order: got sequence {seq}, expected {}",
                            self.next_seq
                        ));
                    }
                    match body {
                        Body::Event(event) => {
                            let start = frame::begin_frame(&mut self.buf);
                            codec::put_record(&mut self.buf, *seq, event);
                            frame::end_frame(&mut self.buf, start);
                        }
                        Body::Framed(frame) => self.buf.extend_from_slice(frame),
                    }
                    self.next_seq += 1;
                }
                Msg::Reset { state, .. } => {
                    self.flush()?;
                    self.reset(state).map_err(|e| format!("reset: {e}"))?;
                }
                Msg::Compact(frozen) => {
                    self.asked = false;
                    let frozen = std::mem::take(&mut **frozen);
                    self.flush()?;
                    self.start_compaction(frozen)
                        .map_err(|e| format!("compaction: {e}"))?;
                }
                Msg::Barrier(_) => {}
            }
        }
        self.flush()
    }

    /// Writes and syncs the records encoded so far.
    fn flush(&mut self) -> Result<(), String> {
        if !self.buf.is_empty() {
            self.journal
                .write_all(&self.buf)
                .map_err(|e| e.to_string())?;
            self.journal_len += self.buf.len() as u64;
            self.buf.clear();
            self.unsynced = true;
        }
        if self.unsynced {
            self.journal.sync_data().map_err(|e| e.to_string())?;
            self.unsynced = false;
        }
        if self.dir_dirty {
            files::fsync_dir(&self.dir).map_err(|e| e.to_string())?;
            self.dir_dirty = false;
        }
        Ok(())
    }

    /// Starts a new segment at S+1 and hands the copy and the segments it covers to a
    /// thread of its own.
    fn start_compaction(&mut self, frozen: Frozen) -> io::Result<()> {
        let seq = frozen.seq();
        if seq + 1 != self.next_seq || self.compacting.is_some() {
            // Not at the writer's position (it cannot be, when sent as documented): skip;
            // the journal is asked for again later.
            tracing::debug!(
                copy = seq,
                writer = self.next_seq - 1,
                "snapshot copy not at the journal's end; skipped"
            );
            return Ok(());
        }
        if self.journal_base < self.next_seq {
            let (f, path, len) = create_segment(&self.dir, self.epoch, self.next_seq)?;
            let old = std::mem::replace(&mut self.journal, f);
            drop(old);
            let old_path = std::mem::replace(&mut self.journal_path, path);
            self.closed.push((old_path, self.journal_len));
            self.journal_len = len;
            self.journal_base = self.next_seq;
            self.dir_dirty = true;
        }
        let covered = std::mem::take(&mut self.closed).len();
        let (dir, epoch, stats) = (self.dir.clone(), self.epoch, self.stats.clone());
        let handle = std::thread::Builder::new()
            .name("store-snapshot".into())
            .spawn(move || {
                let started = std::time::Instant::now();
                match compact(&dir, &frozen, epoch) {
                    Ok(bytes) => {
                        stats.snapshot_bytes.store(bytes, Ordering::Relaxed);
                        stats.snapshot_seq.store(seq, Ordering::Relaxed);
                        stats.snapshots.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(
                            seq,
                            leases = frozen.leases.len(),
                            bytes,
                            ms = started.elapsed().as_millis() as u64,
                            segments_removed = covered,
                            "snapshot written"
                        );
                    }
                    Err(e) => {
                        // Nothing is lost: the segments stay until a snapshot covers them.
                        tracing::error!(error = %e, "the snapshot could not be written; the journal keeps growing until one is");
                    }
                }
            })?;
        self.compacting = Some(handle);
        Ok(())
    }

    /// Writes `state` as the snapshot of a new epoch, removes every segment, starts one.
    fn reset(&mut self, state: &State) -> io::Result<()> {
        self.finish_compaction(true);
        let epoch = new_epoch();
        let bytes = write_snapshot(&self.dir, &state.frozen(), epoch)?;
        self.stats.snapshot_bytes.store(bytes, Ordering::Relaxed);
        self.stats.snapshot_seq.store(state.seq, Ordering::Relaxed);
        self.stats.snapshots.fetch_add(1, Ordering::Relaxed);
        // The old segments are of another epoch now: a crash before they are gone leaves
        // them ignored.
        for (path, _) in self.closed.drain(..) {
            remove_if_there(&path)?;
        }
        remove_if_there(&self.journal_path)?;
        let base = state.seq + 1;
        let (f, path, len) = create_segment(&self.dir, epoch, base)?;
        self.journal = f;
        self.journal_path = path;
        self.journal_len = len;
        self.journal_base = base;
        self.epoch = epoch;
        self.next_seq = base;
        self.dir_dirty = true;
        Ok(())
    }
}

fn remove_if_there(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Creates a segment starting at `base`, its header written but not synced: the first
/// commit's `fdatasync` covers it (and the directory is synced before that commit is
/// acknowledged); a crash before leaves an empty or zero-filled newest segment, which a
/// load ignores.
fn create_segment(dir: &Path, epoch: u64, base: u64) -> io::Result<(File, PathBuf, u64)> {
    let path = dir.join(segment_name(base));
    let mut f = files::create_private(&path, true)?;
    let header = FileHeader {
        magic: JOURNAL_MAGIC,
        epoch,
        base,
    }
    .encode();
    f.write_all(&header)?;
    Ok((f, path, header.len() as u64))
}

/// Writes a snapshot, then removes the segments it covers: every one that starts at or
/// before its sequence number (the writer's current segment starts after it), which
/// includes any a failed compaction left.
fn compact(dir: &Path, frozen: &Frozen, epoch: u64) -> io::Result<u64> {
    let bytes = write_snapshot(dir, frozen, epoch)?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry
            .file_name()
            .to_str()
            .and_then(load::segment_base)
            .is_some_and(|base| base <= frozen.seq())
        {
            remove_if_there(&entry.path())?;
        }
    }
    files::fsync_dir(dir)?;
    Ok(bytes)
}

/// Writes `frozen` as `snapshot.bin`: to a temporary file through a buffer, synced,
/// renamed into place, the directory synced. Returns its size.
pub(crate) fn write_snapshot(dir: &Path, frozen: &Frozen, epoch: u64) -> io::Result<u64> {
    let tmp = dir.join(SNAPSHOT_TMP);
    let mut w = BufWriter::with_capacity(1 << 20, files::create_private(&tmp, true)?);
    let header = FileHeader {
        magic: SNAPSHOT_MAGIC,
        epoch,
        base: frozen.seq(),
    }
    .encode();
    w.write_all(&header)?;
    let mut bytes = header.len() as u64;
    let mut unsynced = 0usize;
    let mut payload = Vec::with_capacity(1 << 17);
    let mut framed = Vec::with_capacity(1 << 17);
    codec::put_snapshot(frozen, &mut payload, |p| {
        framed.clear();
        frame::put_frame(&mut framed, p);
        bytes += framed.len() as u64;
        w.write_all(&framed)?;
        // Synced as it goes: a file system commit forced by the journal's own `fdatasync`
        // then never has more than this much of the snapshot to write out first.
        unsynced += framed.len();
        if unsynced >= SNAPSHOT_SYNC_BYTES {
            unsynced = 0;
            w.flush()?;
            w.get_ref().sync_data()?;
        }
        Ok(())
    })?;
    let f = w.into_inner().map_err(|e| e.into_error())?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, dir.join(SNAPSHOT))?;
    files::fsync_dir(dir)?;
    Ok(bytes)
}

/// Decodes `data` every way the store reads bytes from disk (an event, a snapshot
/// section, a journal segment and a snapshot file, each strictly and salvaging, with and
/// without a valid file header in front) and returns how many records verified. For the
/// fuzz target (`fuzz/`) and the property test: whatever the bytes, it must not panic.
pub fn decode_any(data: &[u8]) -> usize {
    let mut verified = 0;
    let _ = codec::get_record(data);
    let _ = codec::get_section(data);
    let path = Path::new("fuzz");
    for magic in [JOURNAL_MAGIC, SNAPSHOT_MAGIC] {
        let mut framed = FileHeader {
            magic,
            epoch: 1,
            base: 1,
        }
        .encode()
        .to_vec();
        framed.extend_from_slice(data);
        for bytes in [data, &framed[..]] {
            for salvage in [false, true] {
                let mut scan = load::Scan::default();
                let mut loss = |scan: &mut load::Scan, damage: Damage, lost: String| {
                    if salvage {
                        scan.losses.push(load::Loss { damage, lost });
                        Ok(())
                    } else {
                        Err(LoadError::Damaged(damage))
                    }
                };
                let result = if magic == JOURNAL_MAGIC {
                    let Ok(header) = FileHeader::decode(bytes, magic) else {
                        continue;
                    };
                    load::replay_segment(path, header, bytes, true, &mut scan, None, &mut loss)
                        .map(|i| i.records)
                } else {
                    load::snapshot_from_bytes(path, bytes, &mut scan, None, &mut loss)
                        .map(|i| i.leases)
                };
                scan.state.end_load();
                verified += result.unwrap_or(0) as usize;
            }
        }
    }
    verified
}

#[cfg(test)]
mod tests;
