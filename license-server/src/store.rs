//! The durable local store: an append-only journal of ordered events plus periodic
//! snapshots, written by one writer thread with group commit.
//!
//! Files in `DATA_DIR`:
//! - `journal.log`: records `[len: u32 LE][crc32: u32 LE][JSON {seq, event}]`, appended;
//! - `snapshot.json`: the whole [`State`] at some sequence number (written to a temporary
//!   file, fsynced, renamed, directory fsynced), after which the journal is truncated.
//!
//! The writer drains every pending event from its channel, writes them in one go, calls
//! `fdatasync` once and only then acknowledges each. It keeps its own copy of the state
//! (the durable state) to write snapshots from. Recovery loads the snapshot, replays the
//! journal records that follow it and cuts off a torn last record.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::domain::{Event, State};

const JOURNAL: &str = "journal.log";
const SNAPSHOT: &str = "snapshot.json";
const SNAPSHOT_TMP: &str = "snapshot.json.tmp";
const HEADER: usize = 8;
/// Largest record accepted on recovery (a larger length means a torn header).
const MAX_RECORD: usize = 16 << 20;
/// Most events written per commit.
const MAX_BATCH: usize = 8192;

#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Snapshot and truncate the journal once it is this large.
    pub snapshot_after_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            snapshot_after_bytes: 64 << 20,
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

#[derive(Serialize)]
struct RecordRef<'a> {
    seq: u64,
    event: &'a Event,
}

#[derive(Deserialize)]
struct Record {
    seq: u64,
    event: Event,
}

enum Msg {
    Event {
        seq: u64,
        event: Event,
        ack: Option<oneshot::Sender<Result<(), StoreError>>>,
    },
    /// Acknowledged once everything sent before it is durable.
    Barrier(oneshot::Sender<Result<(), StoreError>>),
    /// Replaces the whole state (a backup taking a snapshot from its main, a main taking
    /// its backup's changes back): written as the snapshot, the journal emptied.
    Reset {
        state: Box<State>,
        ack: oneshot::Sender<Result<(), StoreError>>,
    },
}

/// Counters the writer keeps, read by the metrics endpoint.
#[derive(Debug, Default)]
pub struct StoreStats {
    pub commits: AtomicU64,
    pub events: AtomicU64,
    pub snapshots: AtomicU64,
    pub durable_seq: AtomicU64,
}

/// What recovery found.
#[derive(Debug, Clone, Default)]
pub struct Recovery {
    pub snapshot_seq: u64,
    pub replayed: u64,
    /// Bytes cut off the end of the journal (a torn last write).
    pub truncated_bytes: u64,
}

/// An event once it is durable, in sequence order: the stream a main will replicate to
/// its backup (issue 4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    pub seq: u64,
    pub event: Event,
}

/// Handle to the writer thread.
pub struct Store {
    committed: tokio::sync::broadcast::Sender<Arc<Committed>>,
    tx: parking_lot::Mutex<Option<mpsc::Sender<Msg>>>,
    thread: parking_lot::Mutex<Option<std::thread::JoinHandle<()>>>,
    pub stats: Arc<StoreStats>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

/// Opens (or creates) the store in `dir`, recovers the state and starts the writer.
pub fn open(dir: &Path, opts: StoreOptions) -> io::Result<(State, Store, Recovery)> {
    std::fs::create_dir_all(dir)?;
    let (state, recovery) = recover(dir)?;
    let journal_path = dir.join(JOURNAL);
    let journal = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&journal_path)?;
    let journal_len = journal.metadata()?.len();
    let mut writer = Writer {
        dir: dir.to_owned(),
        journal,
        journal_len,
        state: state.clone(),
        opts,
        buf: Vec::with_capacity(1 << 16),
    };
    // Compact what was replayed so the next start is quick.
    if recovery.replayed > 0 {
        writer.snapshot()?;
    }
    let stats = Arc::new(StoreStats::default());
    stats.durable_seq.store(state.seq, Ordering::Relaxed);
    let (tx, rx) = mpsc::channel();
    let thread_stats = stats.clone();
    let (committed, _) = tokio::sync::broadcast::channel(65_536);
    let thread_committed = committed.clone();
    let thread = std::thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || writer.run(rx, &thread_stats, &thread_committed))?;
    Ok((
        state,
        Store {
            committed,
            tx: parking_lot::Mutex::new(Some(tx)),
            thread: parking_lot::Mutex::new(Some(thread)),
            stats,
        },
        recovery,
    ))
}

impl Store {
    /// Queues an event (already applied in memory with `seq`); the receiver completes once
    /// it is durable. Call in sequence order (under the state lock).
    pub fn submit(&self, seq: u64, event: Event) -> oneshot::Receiver<Result<(), StoreError>> {
        let (ack, rx) = oneshot::channel();
        if let Some(tx) = &*self.tx.lock() {
            // A send error drops `ack`, which the receiver sees as closed.
            let _ = tx.send(Msg::Event {
                seq,
                event,
                ack: Some(ack),
            });
        }
        rx
    }

    /// Queues an event without waiting for it (expiries: a lost one happens again).
    pub fn submit_nowait(&self, seq: u64, event: Event) {
        if let Some(tx) = &*self.tx.lock() {
            let _ = tx.send(Msg::Event {
                seq,
                event,
                ack: None,
            });
        }
    }

    /// Every event from now on, once durable, in order. A receiver that falls more than
    /// 65,536 events behind gets `Lagged` and must resynchronise from a snapshot.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<Committed>> {
        self.committed.subscribe()
    }

    /// Replaces the state durably (after everything queued before it); events that
    /// follow continue from `state.seq`.
    pub fn reset(&self, state: State) -> oneshot::Receiver<Result<(), StoreError>> {
        let (ack, rx) = oneshot::channel();
        if let Some(tx) = &*self.tx.lock() {
            let _ = tx.send(Msg::Reset {
                state: Box::new(state),
                ack,
            });
        }
        rx
    }

    /// Completes when everything queued so far is durable.
    pub fn barrier(&self) -> oneshot::Receiver<Result<(), StoreError>> {
        let (ack, rx) = oneshot::channel();
        if let Some(tx) = &*self.tx.lock() {
            let _ = tx.send(Msg::Barrier(ack));
        }
        rx
    }

    /// Flushes, stops the writer and waits for it.
    pub fn shutdown(&self) {
        self.tx.lock().take();
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
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
    journal: File,
    journal_len: u64,
    /// The durable state: every event written and synced so far.
    state: State,
    opts: StoreOptions,
    buf: Vec<u8>,
}

impl Writer {
    fn run(
        mut self,
        rx: mpsc::Receiver<Msg>,
        stats: &StoreStats,
        committed: &tokio::sync::broadcast::Sender<Arc<Committed>>,
    ) {
        let mut batch: Vec<Msg> = Vec::with_capacity(1024);
        while let Ok(first) = rx.recv() {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
            let result = self.commit(&batch);
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
                stats.durable_seq.store(self.state.seq, Ordering::Relaxed);
                if committed.receiver_count() > 0 {
                    for m in &batch {
                        if let Msg::Event { seq, event, .. } = m {
                            let _ = committed.send(Arc::new(Committed {
                                seq: *seq,
                                event: event.clone(),
                            }));
                        }
                    }
                }
            }
            let reply = result.clone().map_err(|e| StoreError::Io(e.to_string()));
            for m in batch.drain(..) {
                match m {
                    Msg::Event { ack: Some(ack), .. }
                    | Msg::Barrier(ack)
                    | Msg::Reset { ack, .. } => {
                        let _ = ack.send(reply.clone());
                    }
                    Msg::Event { ack: None, .. } => {}
                }
            }
            if result.is_err() {
                std::process::exit(70);
            }
            if self.journal_len >= self.opts.snapshot_after_bytes {
                match self.snapshot() {
                    Ok(()) => {
                        stats.snapshots.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "snapshot failed; stopping");
                        std::process::exit(70);
                    }
                }
            }
        }
        // Channel closed: everything was already synced batch by batch.
    }

    fn commit(&mut self, batch: &[Msg]) -> Result<(), String> {
        self.buf.clear();
        for m in batch {
            match m {
                Msg::Event { seq, event, .. } => {
                    let expected = self.state.seq + 1;
                    if *seq != expected {
                        return Err(format!(
                            "event out of order: got sequence {seq}, expected {expected}"
                        ));
                    }
                    encode_record(&mut self.buf, *seq, event);
                    self.state.apply(event);
                }
                Msg::Reset { state, .. } => {
                    self.flush()?;
                    self.state = (**state).clone();
                    self.state.rebuild_index();
                    self.snapshot().map_err(|e| e.to_string())?;
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
            self.journal.sync_data().map_err(|e| e.to_string())?;
            self.journal_len += self.buf.len() as u64;
            self.buf.clear();
        }
        Ok(())
    }

    /// Writes the durable state as a snapshot, then empties the journal.
    fn snapshot(&mut self) -> io::Result<()> {
        write_snapshot(&self.dir, &self.state)?;
        self.journal.set_len(0)?;
        self.journal.sync_all()?;
        self.journal_len = 0;
        tracing::debug!(seq = self.state.seq, "snapshot written, journal truncated");
        Ok(())
    }
}

fn encode_record(buf: &mut Vec<u8>, seq: u64, event: &Event) {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; HEADER]);
    serde_json::to_writer(&mut *buf, &RecordRef { seq, event }).expect("events always serialise");
    let payload = &buf[start + HEADER..];
    let len = payload.len() as u32;
    let crc = crc32fast::hash(payload);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn write_snapshot(dir: &Path, state: &State) -> io::Result<()> {
    let tmp = dir.join(SNAPSHOT_TMP);
    {
        let mut f = File::create(&tmp)?;
        serde_json::to_writer(&mut f, state).map_err(io::Error::other)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(SNAPSHOT))?;
    fsync_dir(dir)
}

/// Loads the snapshot and replays the journal; cuts a torn tail off the journal.
pub fn recover(dir: &Path) -> io::Result<(State, Recovery)> {
    let mut rec = Recovery::default();
    let mut state = match std::fs::read(dir.join(SNAPSHOT)) {
        Ok(bytes) => {
            let mut s: State = serde_json::from_slice(&bytes).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} is damaged: {e}", dir.join(SNAPSHOT).display()),
                )
            })?;
            s.rebuild_index();
            s
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => State::default(),
        Err(e) => return Err(e),
    };
    rec.snapshot_seq = state.seq;
    let path = dir.join(JOURNAL);
    let mut data = Vec::new();
    match File::open(&path) {
        Ok(mut f) => {
            f.read_to_end(&mut data)?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((state, rec)),
        Err(e) => return Err(e),
    }
    let mut pos = 0usize;
    while pos + HEADER <= data.len() {
        let len = u32::from_le_bytes(data[pos..pos + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(data[pos + 4..pos + 8].try_into().expect("4 bytes"));
        let end = pos + HEADER + len;
        if len > MAX_RECORD || end > data.len() {
            break;
        }
        let payload = &data[pos + HEADER..end];
        if crc32fast::hash(payload) != crc {
            break;
        }
        let Ok(record) = serde_json::from_slice::<Record>(payload) else {
            break;
        };
        if record.seq > state.seq {
            if record.seq != state.seq + 1 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "the journal skips from sequence {} to {}",
                        state.seq, record.seq
                    ),
                ));
            }
            state.apply(&record.event);
            rec.replayed += 1;
        }
        pos = end;
    }
    if pos < data.len() {
        rec.truncated_bytes = (data.len() - pos) as u64;
        tracing::warn!(
            bytes = rec.truncated_bytes,
            "the journal ends in a torn or damaged record; cutting it off"
        );
        let f = OpenOptions::new().write(true).open(&path)?;
        f.set_len(pos as u64)?;
        f.sync_all()?;
    }
    Ok((state, rec))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::LeaseRecord;
    use uuid::Uuid;

    fn grant(i: u32) -> Event {
        Event::LeaseGranted {
            lease: LeaseRecord {
                id: Uuid::new_v4(),
                feature: "cad".into(),
                version: String::new(),
                count: 1,
                client_id: format!("c{i}"),
                granted_at: 1,
                renewed_at: 1,
                expires_at: 1_000_000 + i64::from(i),
                granted_by: "string:me".into(),
                granted_seq: 0,
            },
        }
    }

    async fn write_events(store: &Store, state: &mut State, n: u32) {
        let mut rxs = Vec::new();
        for i in 0..n {
            let ev = grant(i);
            let seq = state.apply(&ev);
            rxs.push(store.submit(seq, ev));
        }
        for rx in rxs {
            acked(rx).await.unwrap();
        }
    }

    #[tokio::test]
    async fn events_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (mut state, store, _) = open(dir.path(), StoreOptions::default()).unwrap();
        write_events(&store, &mut state, 50).await;
        store.shutdown();
        let (back, _, rec) = open(dir.path(), StoreOptions::default()).unwrap();
        assert_eq!(rec.replayed, 50);
        assert_eq!(back.seq, 50);
        assert_eq!(back.lease_count(), 50);
    }

    #[tokio::test]
    async fn group_commit_batches_concurrent_events() {
        let dir = tempfile::tempdir().unwrap();
        let (mut state, store, _) = open(dir.path(), StoreOptions::default()).unwrap();
        // 2,000 events queued at once are written in far fewer fsyncs.
        write_events(&store, &mut state, 2000).await;
        let commits = store.stats.commits.load(Ordering::Relaxed);
        assert_eq!(store.stats.events.load(Ordering::Relaxed), 2000);
        assert!(commits < 2000, "{commits} commits for 2000 events");
        assert_eq!(store.stats.durable_seq.load(Ordering::Relaxed), 2000);
        acked(store.barrier()).await.unwrap();
        store.shutdown();
    }

    #[tokio::test]
    async fn durable_events_are_published_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (mut state, store, _) = open(dir.path(), StoreOptions::default()).unwrap();
        let mut sub = store.subscribe();
        write_events(&store, &mut state, 100).await;
        for expected in 1..=100u64 {
            let c = sub.recv().await.unwrap();
            assert_eq!(c.seq, expected);
            assert!(matches!(c.event, Event::LeaseGranted { .. }));
        }
        store.shutdown();
    }

    #[tokio::test]
    async fn torn_last_record_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let (mut state, store, _) = open(dir.path(), StoreOptions::default()).unwrap();
        write_events(&store, &mut state, 10).await;
        store.shutdown();
        let path = dir.path().join(JOURNAL);
        let full = std::fs::read(&path).unwrap();

        // Cuts inside the last record: 9 records back, torn tail gone.
        let last_start = {
            // Find where record 10 starts by walking the framing.
            let mut pos = 0;
            for _ in 0..9 {
                let len = u32::from_le_bytes(full[pos..pos + 4].try_into().unwrap()) as usize;
                pos += HEADER + len;
            }
            pos
        };
        for cut in [last_start + 1, last_start + HEADER, full.len() - 1] {
            std::fs::write(&path, &full[..cut]).unwrap();
            let (s, rec) = recover(dir.path()).unwrap();
            assert_eq!(s.seq, 9, "cut at {cut}");
            assert_eq!(rec.truncated_bytes, (cut - last_start) as u64);
            assert_eq!(std::fs::metadata(&path).unwrap().len(), last_start as u64);
        }

        // A flipped byte in the last record: its checksum fails, it is dropped.
        let mut damaged = full.clone();
        let n = damaged.len();
        damaged[n - 3] ^= 0x55;
        std::fs::write(&path, &damaged).unwrap();
        let (s, _) = recover(dir.path()).unwrap();
        assert_eq!(s.seq, 9);

        // And the store opens and appends after the cut.
        let (mut state, store, _) = open(dir.path(), StoreOptions::default()).unwrap();
        assert_eq!(state.seq, 9);
        write_events(&store, &mut state, 1).await;
        store.shutdown();
        let (s, _) = recover(dir.path()).unwrap();
        assert_eq!(s.seq, 10);
    }

    #[tokio::test]
    async fn snapshots_truncate_the_journal_and_recover() {
        let dir = tempfile::tempdir().unwrap();
        let opts = StoreOptions {
            snapshot_after_bytes: 4096,
        };
        let (mut state, store, _) = open(dir.path(), opts.clone()).unwrap();
        for _ in 0..10 {
            write_events(&store, &mut state, 20).await;
        }
        assert!(store.stats.snapshots.load(Ordering::Relaxed) > 0);
        store.shutdown();
        let journal_len = std::fs::metadata(dir.path().join(JOURNAL)).unwrap().len();
        assert!(journal_len < 4096 + 4096, "journal is {journal_len} bytes");
        let (back, _, rec) = open(dir.path(), opts).unwrap();
        assert_eq!(back.seq, 200);
        assert_eq!(back.lease_count(), 200);
        assert!(rec.snapshot_seq > 0);
    }

    #[tokio::test]
    async fn reset_replaces_the_state_durably() {
        let dir = tempfile::tempdir().unwrap();
        let (mut state, store, _) = open(dir.path(), StoreOptions::default()).unwrap();
        write_events(&store, &mut state, 5).await;
        let mut other = State::default();
        for i in 0..3 {
            other.apply(&grant(100 + i));
        }
        other.seq = 40;
        acked(store.reset(other.clone())).await.unwrap();
        // Events continue from the new state's sequence number.
        let mut next = other.clone();
        next.rebuild_index();
        write_events(&store, &mut next, 2).await;
        store.shutdown();
        let (back, _, _) = open(dir.path(), StoreOptions::default()).unwrap();
        assert_eq!(back.seq, 42);
        assert_eq!(back.lease_count(), 5);
    }

    #[tokio::test]
    async fn out_of_order_sequence_is_refused_on_recovery() {
        let dir = tempfile::tempdir().unwrap();
        let mut buf = Vec::new();
        encode_record(&mut buf, 1, &grant(0));
        encode_record(&mut buf, 3, &grant(1));
        std::fs::write(dir.path().join(JOURNAL), &buf).unwrap();
        assert!(recover(dir.path()).is_err());
    }
}
