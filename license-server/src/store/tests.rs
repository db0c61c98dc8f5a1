//! Tests of the store: recovery rules (torn tails cut, damage refused with files left
//! as they were, salvage), compaction, resets, version 0 files, file modes, the lock.

use std::collections::BTreeMap;

use super::*;
use crate::domain::{LeaseRecord, Rights};
use uuid::Uuid;

/// An event with its sequence number, as version 0 journals held it (JSON).
#[derive(Serialize)]
struct Committed {
    seq: u64,
    event: Event,
}

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
            holder: crate::domain::Holder::of_secret(&format!("c{i}")),
            // Every kind of lease, so that snapshots and journals carry each.
            kind: crate::domain::LeaseKind {
                borrowed: i % 3 == 1,
                overdraft: i % 3 == 2,
            },
            user: format!("u{}", i % 7),
            host: String::new(),
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

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("journal-") && n.ends_with(".log"))
        })
        .collect();
    v.sort();
    v
}

/// Every file's bytes, by name (the lock file aside).
fn files_of(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name() != files::LOCK)
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

/// Record start offsets of a segment.
fn record_offsets(data: &[u8]) -> Vec<usize> {
    let mut r = frame::Reader::new(data);
    let mut out = Vec::new();
    while let Some(Ok(f)) = r.next_frame() {
        out.push(f.offset as usize);
    }
    out
}

/// Ids of the leases of a state, sorted.
fn lease_ids(s: &State) -> Vec<Uuid> {
    let mut v: Vec<Uuid> = s.leases().map(|l| l.id).collect();
    v.sort();
    v
}

/// A store with `n` grants in one journal segment, closed.
async fn store_with(dir: &Path, n: u32) -> State {
    let (mut state, store, _) = open(dir, StoreOptions::default()).unwrap();
    write_events(&store, &mut state, n).await;
    store.shutdown();
    state
}

#[tokio::test]
async fn events_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let written = store_with(dir.path(), 50).await;
    let (back, _, rec) = open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(rec.replayed, 50);
    assert_eq!(back.seq, 50);
    assert_eq!(lease_ids(&back), lease_ids(&written));
}

fn joined(i: u32) -> Event {
    Event::QueueJoined {
        entry: crate::domain::QueueEntry {
            id: Uuid::new_v4(),
            feature: "cad".into(),
            version: (i % 2 == 1).then(|| "2.0".to_owned()),
            count: 1 + i,
            client_id: format!("q{i}"),
            holder: crate::domain::Holder::of_secret(&format!("q{i}")),
            user: format!("u{i}"),
            host: "ws".into(),
            queued_at: 1_000 + i64::from(i),
            until: 600_000,
            queued_seq: 0,
        },
    }
}

#[tokio::test]
async fn the_line_survives_a_reopen_from_the_journal_and_from_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let (mut state, store, _) = open(dir.path(), StoreOptions::default()).unwrap();
    write_events(&store, &mut state, 3).await;
    let joins: Vec<Event> = (0..4).map(joined).collect();
    let id = |e: &Event| match e {
        Event::QueueJoined { entry } => entry.id,
        other => panic!("{other:?}"),
    };
    // Four join; the second leaves, the third is granted its seat (a lease of its ID).
    let Event::LeaseGranted { lease } = grant(9) else {
        unreachable!()
    };
    let served = Event::LeaseGranted {
        lease: LeaseRecord {
            id: id(&joins[2]),
            ..lease
        },
    };
    let left = Event::QueueLeft {
        id: id(&joins[1]),
        at: 2_000,
        lapsed: false,
    };
    let mut rxs = Vec::new();
    for ev in joins.iter().cloned().chain([left, served]) {
        let seq = state.apply(&ev);
        rxs.push(store.submit(seq, ev));
    }
    for rx in rxs {
        acked(rx).await.unwrap();
    }
    store.shutdown();
    let order: Vec<Uuid> = state.queue().iter().map(|e| e.id).collect();
    assert_eq!(order, [id(&joins[0]), id(&joins[3])]);

    let (back, store, _) = open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(back.queue(), state.queue());
    assert!(back.lease(&id(&joins[2])).is_some());
    // Written whole as a snapshot, then read from it.
    acked(store.reset(back.clone())).await.unwrap();
    store.shutdown();
    let (again, _, rec) = open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(rec.replayed, 0);
    assert_eq!(again.queue(), state.queue());
    assert_eq!(again.seq, state.seq);
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
async fn queued_events_are_published_in_order_as_the_journal_holds_them() {
    let dir = tempfile::tempdir().unwrap();
    let (mut state, store, _) = open(dir.path(), StoreOptions::default()).unwrap();
    let mut sub = store.subscribe();
    write_events(&store, &mut state, 100).await;
    let mut published = Vec::new();
    for expected in 1..=100u64 {
        let r = sub.recv().await.unwrap();
        assert_eq!(r.seq, expected);
        let (seq, event) = codec::get_record(&r.frame[frame::RECORD_HEADER..]).unwrap();
        assert_eq!(seq, expected);
        assert!(matches!(event, Event::LeaseGranted { .. }));
        published.extend_from_slice(&r.frame);
    }
    store.shutdown();
    // Encoded once: the journal holds the very bytes that were published.
    let journal = std::fs::read(&segments(dir.path())[0]).unwrap();
    assert_eq!(&journal[frame::HEADER_LEN..], &published[..]);
}

#[tokio::test]
async fn records_received_framed_are_journaled_as_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let (mut state, store, _) = open(dir.path(), StoreOptions::default()).unwrap();
    let mut sent = Vec::new();
    for i in 0..10 {
        let ev = grant(i);
        let seq = state.apply(&ev);
        let rec = Record::encode(seq, &ev);
        sent.extend_from_slice(&rec.frame);
        acked(store.submit_framed(rec)).await.unwrap();
    }
    store.shutdown();
    let journal = std::fs::read(&segments(dir.path())[0]).unwrap();
    assert_eq!(&journal[frame::HEADER_LEN..], &sent[..]);
    let (back, _, rec) = open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!((back.seq, rec.replayed), (10, 10));
    assert_eq!(lease_ids(&back), lease_ids(&state));
}

#[tokio::test]
async fn a_torn_last_record_is_cut_and_appending_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    store_with(dir.path(), 10).await;
    let path = segments(dir.path()).pop().unwrap();
    let full = std::fs::read(&path).unwrap();
    let last = *record_offsets(&full).last().unwrap();
    for cut in [last + 1, last + frame::RECORD_HEADER, full.len() - 1] {
        std::fs::write(&path, &full[..cut]).unwrap();
        let (s, _, rec) = open(dir.path(), StoreOptions::default()).unwrap();
        assert_eq!(s.seq, 9, "cut at {cut}");
        assert_eq!(rec.truncated_bytes, (cut - last) as u64);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), last as u64);
    }
    // Zeros after the last record (a file extended, never written): cut too.
    let mut zeros = full[..last].to_vec();
    zeros.extend_from_slice(&[0; 300]);
    std::fs::write(&path, &zeros).unwrap();
    let (mut state, store, rec) = open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!((state.seq, rec.truncated_bytes), (9, 300));
    write_events(&store, &mut state, 1).await;
    store.shutdown();
    let (s, _, rec) = open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!((s.seq, rec.truncated_bytes), (10, 0));
}

/// A bit flipped inside record `which` of a 30-record journal: the start is refused
/// naming the file, offset and record; nothing changes; `recover` keeps the other 29.
async fn flip_is_refused_then_recovered(which: usize) {
    let dir = tempfile::tempdir().unwrap();
    let written = store_with(dir.path(), 30).await;
    let path = segments(dir.path()).pop().unwrap();
    let mut data = std::fs::read(&path).unwrap();
    let offsets = record_offsets(&data);
    let lost = grant_of(&data, offsets[which]).expect("a grant");
    let at = offsets[which] + frame::RECORD_HEADER + 20;
    data[at] ^= 0x04;
    std::fs::write(&path, &data).unwrap();
    let before = files_of(dir.path());

    let err = open(dir.path(), StoreOptions::default()).unwrap_err();
    let LoadError::Damaged(d) = &err else {
        panic!("{err}")
    };
    assert_eq!(d.file, path);
    assert_eq!(d.offset, Some(offsets[which] as u64));
    assert_eq!(d.record, Some(which as u64));
    let msg = err.to_string();
    assert!(
        msg.contains(&path.display().to_string())
            && msg.contains(&format!("byte {}", offsets[which]))
            && msg.contains(&format!("record {which}"))
            && msg.contains("store recover"),
        "{msg}"
    );
    assert_eq!(files_of(dir.path()), before, "the files changed");

    let scan = repair::verify(dir.path(), None).unwrap();
    assert!(repair::is_damaged(&scan));
    assert_eq!(scan.losses.len(), 1);
    assert_eq!(files_of(dir.path()), before, "verify changed the files");
    let report = repair::report(dir.path(), &scan);
    let lost_event = format!("lost: event {}", which + 1);
    assert!(
        report.contains("DAMAGED") && report.contains(&lost_event) || which == 29,
        "{report}"
    );

    let done = repair::recover(dir.path(), &scan).unwrap();
    assert_eq!(done.leases, 29);
    assert_eq!(done.moved_aside.len(), 1);
    assert_eq!(std::fs::read(&done.moved_aside[0]).unwrap(), data);
    let (back, _, _) = open(dir.path(), StoreOptions::default()).unwrap();
    let mut expected = lease_ids(&written);
    expected.retain(|id| *id != lost);
    assert_eq!(lease_ids(&back), expected);
    // Sequence numbers go on from the last readable event.
    assert_eq!(back.seq, if which == 29 { 29 } else { 30 });
}

/// The lease ID in the grant record (tag 16, 17 or 19) at `offset` (the payload's bytes 9..25).
fn grant_of(data: &[u8], offset: usize) -> Option<Uuid> {
    let p = offset + frame::RECORD_HEADER;
    matches!(data[p + 8], 16 | 17 | 19).then(|| Uuid::from_slice(&data[p + 9..p + 25]).unwrap())
}

#[tokio::test]
async fn a_flip_in_the_first_record_is_refused_and_recovered() {
    flip_is_refused_then_recovered(0).await;
}

#[tokio::test]
async fn a_flip_in_a_middle_record_is_refused_and_recovered() {
    flip_is_refused_then_recovered(15).await;
}

#[tokio::test]
async fn a_flip_in_the_last_record_is_refused_and_recovered() {
    flip_is_refused_then_recovered(29).await;
}

#[tokio::test]
async fn a_damaged_length_is_not_taken_for_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    store_with(dir.path(), 5).await;
    let path = segments(dir.path()).pop().unwrap();
    let mut data = std::fs::read(&path).unwrap();
    let last = *record_offsets(&data).last().unwrap();
    data[last + 2] ^= 0x40; // the length now runs past the end of the file
    std::fs::write(&path, &data).unwrap();
    assert!(matches!(
        open(dir.path(), StoreOptions::default()),
        Err(LoadError::Damaged(Damage {
            record: Some(4),
            ..
        }))
    ));
    assert_eq!(std::fs::read(&path).unwrap(), data);
}

/// Asks for a snapshot when the store wants one, as the service does.
fn compact_if_wanted(store: &Store, state: &State, wanted: &mut watch::Receiver<u64>) -> bool {
    if wanted.has_changed().unwrap_or(false) {
        wanted.borrow_and_update();
        store.compact(state.frozen());
        true
    } else {
        false
    }
}

async fn wait_for_snapshots(store: &Store, n: u64) {
    for _ in 0..500 {
        if store.stats.snapshots.load(Ordering::Relaxed) >= n {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("no snapshot written");
}

#[tokio::test]
async fn compaction_snapshots_and_drops_old_segments_while_events_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        snapshot_after_bytes: 4096,
        ..StoreOptions::default()
    };
    let (mut state, store, _) = open(dir.path(), opts.clone()).unwrap();
    let mut wanted = store.compaction_wanted();
    let mut asked = 0;
    for _ in 0..20 {
        write_events(&store, &mut state, 20).await;
        if compact_if_wanted(&store, &state, &mut wanted) {
            asked += 1;
            wait_for_snapshots(&store, asked).await;
        }
        // Renewals and returns of leases the snapshot holds.
        let ids: Vec<Uuid> = state.leases().map(|l| l.id).take(3).collect();
        let ev = Event::LeaseRenewed {
            id: ids[0],
            at: 5,
            expires_at: 9_000_000,
        };
        let seq = state.apply(&ev);
        acked(store.submit(seq, ev)).await.unwrap();
        let ev = Event::LeaseReturned { id: ids[1], at: 6 };
        let seq = state.apply(&ev);
        acked(store.submit(seq, ev)).await.unwrap();
    }
    assert!(asked >= 3, "{asked} snapshots");
    store.shutdown();
    assert!(segments(dir.path()).len() <= 2);
    let (back, _, rec) = open(dir.path(), opts).unwrap();
    assert!(rec.snapshot_seq > 0);
    assert_eq!(back.seq, state.seq);
    assert_eq!(lease_ids(&back), lease_ids(&state));
    for l in state.leases() {
        assert_eq!(
            back.lease(&l.id).unwrap().kind,
            l.kind,
            "borrowed, overdraft kept"
        );
    }
    let a = state
        .leases()
        .find(|l| l.expires_at == 9_000_000)
        .unwrap()
        .id;
    assert_eq!(back.lease(&a).unwrap().expires_at, 9_000_000);
}

#[tokio::test]
async fn a_crash_between_snapshot_and_segment_removal_loads() {
    // The snapshot is written, the old segment still there: its events are skipped.
    let dir = tempfile::tempdir().unwrap();
    let (mut state, store, _) = open(dir.path(), StoreOptions::default()).unwrap();
    write_events(&store, &mut state, 40).await;
    store.shutdown();
    let old = std::fs::read(&segments(dir.path())[0]).unwrap();
    let (mut state, store, _) = open(dir.path(), StoreOptions::default()).unwrap();
    store.compact(state.frozen());
    wait_for_snapshots(&store, 1).await;
    write_events(&store, &mut state, 5).await;
    store.shutdown();
    assert_eq!(segments(dir.path()).len(), 1);
    std::fs::write(dir.path().join(segment_name(1)), &old).unwrap();
    let (back, _, rec) = open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!((back.seq, rec.replayed, rec.removed_files), (45, 5, 1));
    assert_eq!(lease_ids(&back), lease_ids(&state));
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
    write_events(&store, &mut next, 2).await;
    store.shutdown();
    let (back, _, _) = open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(back.seq, 42);
    assert_eq!(lease_ids(&back), lease_ids(&next));
}

#[tokio::test]
async fn segments_of_an_earlier_epoch_are_ignored_after_a_reset() {
    // A crash after a reset's snapshot, before its old segments were removed.
    let dir = tempfile::tempdir().unwrap();
    let (mut state, store, _) = open(dir.path(), StoreOptions::default()).unwrap();
    write_events(&store, &mut state, 50).await;
    let old = std::fs::read(&segments(dir.path())[0]).unwrap();
    let mut other = State::default();
    other.apply(&grant(7));
    other.seq = 3;
    acked(store.reset(other.clone())).await.unwrap();
    store.shutdown();
    std::fs::write(dir.path().join(segment_name(1)), &old).unwrap();
    let (back, _, rec) = open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(back.seq, 3);
    assert_eq!(lease_ids(&back), lease_ids(&other));
    assert_eq!(rec.removed_files, 1);
}

#[tokio::test]
async fn a_gap_in_sequence_numbers_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    store_with(dir.path(), 3).await;
    let path = segments(dir.path()).pop().unwrap();
    let mut data = std::fs::read(&path).unwrap();
    let mut payload = Vec::new();
    codec::put_record(&mut payload, 9, &grant(1));
    frame::put_frame(&mut data, &payload);
    std::fs::write(&path, &data).unwrap();
    let err = open(dir.path(), StoreOptions::default()).unwrap_err();
    assert!(
        err.to_string().contains("skips from sequence 3 to 9"),
        "{err}"
    );
}

async fn snapshot_with(dir: &Path, n: u32) -> State {
    let (mut state, store, _) = open(dir, StoreOptions::default()).unwrap();
    write_events(&store, &mut state, n).await;
    store.compact(state.frozen());
    wait_for_snapshots(&store, 1).await;
    store.shutdown();
    state
}

#[tokio::test]
async fn a_damaged_snapshot_is_refused_then_its_other_sections_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let written = snapshot_with(dir.path(), 3000).await;
    let path = dir.path().join(SNAPSHOT);
    let mut data = std::fs::read(&path).unwrap();
    let offsets = record_offsets(&data);
    // Sections: head, three lease sections (1,024 + 1,024 + 952), end.
    assert_eq!(offsets.len(), 5);
    data[offsets[2] + 40] ^= 0x01;
    std::fs::write(&path, &data).unwrap();
    let before = files_of(dir.path());
    let err = open(dir.path(), StoreOptions::default()).unwrap_err();
    assert!(
        matches!(&err, LoadError::Damaged(d) if d.file == path && d.record == Some(2)),
        "{err}"
    );
    assert_eq!(files_of(dir.path()), before);

    let scan = repair::verify(dir.path(), None).unwrap();
    let done = repair::recover(dir.path(), &scan).unwrap();
    assert_eq!(done.leases, 3000 - 1024);
    assert!(
        done.moved_aside[0]
            .to_string_lossy()
            .contains("snapshot.bin.damaged-")
    );
    let (back, _, _) = open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(back.seq, written.seq);
    assert_eq!(back.lease_count(), 3000 - 1024);
    assert_eq!(back.lease_key, written.lease_key);
}

#[tokio::test]
async fn a_snapshot_cut_short_is_damage() {
    let dir = tempfile::tempdir().unwrap();
    snapshot_with(dir.path(), 100).await;
    let path = dir.path().join(SNAPSHOT);
    let data = std::fs::read(&path).unwrap();
    std::fs::write(&path, &data[..data.len() - 3]).unwrap();
    assert!(matches!(
        open(dir.path(), StoreOptions::default()),
        Err(LoadError::Damaged(_))
    ));
}

/// A producer, the check of `string:me`'s rights, and a signed answer with `count` seats.
fn signed_rights(count: u32) -> (RightsCheck, String, String) {
    use shared::signing::{Signer, Verifier};
    let producer = Signer::generate();
    let check = RightsCheck::new(
        Verifier::from_key(&producer.verifying_key()),
        shared::HostId::parse("string:me").unwrap(),
    );
    let claims = crate::domain::rights::tests::claims("string:me", None, count);
    let good = producer.sign(&claims);
    // The same claims with 999 seats, under the old signature.
    let parts: Vec<&str> = good.split('.').collect();
    use base64::Engine;
    let mut edited = claims;
    edited.rights[0].count = 999;
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&edited).unwrap());
    let forged = format!("{}.{payload}.{}", parts[0], parts[2]);
    (check, good, forged)
}

fn rights_event(token: &str) -> Event {
    Event::RightsUpdated {
        rights: Rights::unverified(token),
        at: 1,
    }
}

#[tokio::test]
async fn rights_that_do_not_verify_are_damage_named_by_file_and_record() {
    let dir = tempfile::tempdir().unwrap();
    let (check, good, forged) = signed_rights(3);
    {
        let (mut state, store, _) = open(dir.path(), StoreOptions::default()).unwrap();
        let mut rxs = Vec::new();
        for ev in [
            grant(0),
            rights_event(&good),
            grant(1),
            rights_event(&forged),
            grant(2),
        ] {
            let seq = state.apply(&ev);
            rxs.push(store.submit(seq, ev));
        }
        for rx in rxs {
            acked(rx).await.unwrap();
        }
        store.shutdown();
    }
    let before = files_of(dir.path());
    let with_check = || StoreOptions {
        rights: Some(check.clone()),
        ..StoreOptions::default()
    };
    match open(dir.path(), with_check()) {
        Err(LoadError::Damaged(d)) => {
            assert_eq!(d.record, Some(3), "{d}");
            assert!(d.what.contains("its rights do not verify"), "{d}");
            assert!(d.to_string().contains("journal-"), "{d}");
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("edited rights loaded"),
    }
    assert_eq!(
        files_of(dir.path()),
        before,
        "a refused start changed the files"
    );
    // Read without the key, rights count for nothing.
    let (unchecked, store, _) = open(dir.path(), StoreOptions::default()).unwrap();
    assert!(unchecked.current_rights().is_empty());
    store.shutdown();
    // Salvaged: the edited change is dropped, the signed one before it stays in force.
    let scan = repair::verify(dir.path(), Some(&check)).unwrap();
    assert_eq!(scan.losses.len(), 1);
    assert!(
        scan.losses[0].lost.contains("never served"),
        "{}",
        scan.losses[0].lost
    );
    assert_eq!(scan.state.current_rights()[0].count, 3);
    repair::recover(dir.path(), &scan).unwrap();
    let (back, store, _) = open(dir.path(), with_check()).unwrap();
    assert_eq!(back.current_rights()[0].count, 3);
    assert_eq!(back.lease_count(), 3);
    store.shutdown();

    // The same in a snapshot: refused at its first section, the rights dropped by a
    // salvage, every lease kept.
    let mut state = back.clone();
    state.apply(&rights_event(&forged));
    write_snapshot(dir.path(), &state.frozen(), new_epoch()).unwrap();
    for seg in segments(dir.path()) {
        std::fs::remove_file(seg).unwrap();
    }
    match open(dir.path(), with_check()) {
        Err(LoadError::Damaged(d)) => {
            assert_eq!(d.record, Some(0), "{d}");
            assert!(d.to_string().contains(SNAPSHOT), "{d}");
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("edited rights loaded"),
    }
    let scan = repair::verify(dir.path(), Some(&check)).unwrap();
    assert!(scan.state.rights.is_none());
    assert_eq!(scan.state.lease_count(), 3);
}

#[tokio::test]
async fn version_0_files_are_converted_once() {
    // The layout before format version 1: JSON snapshot, `[len][crc][JSON]` journal.
    let dir = tempfile::tempdir().unwrap();
    let mut state = State::default();
    for i in 0..5 {
        state.apply(&grant(i));
    }
    // Its rights were counts: dropped (never signed), in the snapshot and the journal.
    let plain = serde_json::json!([{"activation_id": "A", "feature": "cad", "version": "",
        "count": 50_000, "starts_at": 0}]);
    let mut snapshot = serde_json::to_value(&state).unwrap();
    snapshot["rights"] = plain.clone();
    snapshot["rights_issued_at"] = 1.into();
    std::fs::write(
        dir.path().join("snapshot.json"),
        serde_json::to_vec(&snapshot).unwrap(),
    )
    .unwrap();
    let mut journal = Vec::new();
    let mut expected = state.clone();
    let mut record = |payload: Vec<u8>| {
        journal.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        journal.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        journal.extend_from_slice(&payload);
    };
    for i in 5..8 {
        let ev = grant(i);
        let seq = expected.apply(&ev);
        record(serde_json::to_vec(&Committed { seq, event: ev }).unwrap());
    }
    record(
        serde_json::to_vec(
            &serde_json::json!({"seq": 9, "event": {"type": "rights_updated",
            "rights": plain, "at": 1, "issued_at": 2}}),
        )
        .unwrap(),
    );
    let ev = grant(9);
    expected.seq += 1;
    let seq = expected.apply(&ev);
    record(serde_json::to_vec(&Committed { seq, event: ev }).unwrap());
    std::fs::write(dir.path().join("journal.log"), &journal).unwrap();
    let (back, store, rec) = open(dir.path(), StoreOptions::default()).unwrap();
    assert!(rec.imported_legacy);
    assert_eq!(back.seq, 10);
    assert!(back.rights.is_none() && back.current_rights().is_empty());
    assert_eq!(lease_ids(&back), lease_ids(&expected));
    store.shutdown();
    assert!(dir.path().join("journal.log.v0-imported").exists());
    assert!(!dir.path().join("journal.log").exists());
    let (again, _, rec) = open(dir.path(), StoreOptions::default()).unwrap();
    assert!(!rec.imported_legacy);
    assert_eq!(lease_ids(&again), lease_ids(&expected));
}

#[cfg(unix)]
#[tokio::test]
async fn files_made_too_open_are_fixed_at_start() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    store_with(&dir, 3).await;
    std::fs::write(dir.join("admin.token"), "secret\n").unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    for e in std::fs::read_dir(&dir).unwrap() {
        std::fs::set_permissions(e.unwrap().path(), std::fs::Permissions::from_mode(0o644))
            .unwrap();
    }
    let (state, store, _) = open(&dir, StoreOptions::default()).unwrap();
    assert_eq!(mode(&dir), 0o700);
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        assert_eq!(mode(&p), 0o600, "{}", p.display());
    }
    // And what the store creates later is 0600 from the start.
    store.compact(state.frozen());
    wait_for_snapshots(&store, 1).await;
    store.shutdown();
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        assert_eq!(mode(&p), 0o600, "{}", p.display());
    }
}

#[tokio::test]
async fn one_process_at_a_time_uses_a_store() {
    let dir = tempfile::tempdir().unwrap();
    let (_, store, _) = open(dir.path(), StoreOptions::default()).unwrap();
    let err = open(dir.path(), StoreOptions::default()).unwrap_err();
    assert!(err.to_string().contains("another process"), "{err}");
    let scan = repair::verify(dir.path(), None).unwrap();
    assert!(repair::recover(dir.path(), &scan).is_err());
    store.shutdown();
    drop(store);
    open(dir.path(), StoreOptions::default()).unwrap();
}

/// A small deterministic generator (xorshift64*), so a failure repeats.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Valid files to damage: a journal segment with every kind of event, and a snapshot.
fn corpus() -> Vec<Vec<u8>> {
    let header = |magic| {
        frame::FileHeader {
            magic,
            epoch: 1,
            base: 1,
        }
        .encode()
        .to_vec()
    };
    let mut journal = header(frame::JOURNAL_MAGIC);
    let mut state = State::default();
    let mut payload = Vec::new();
    for ev in codec::tests::every_event()
        .into_iter()
        .chain((0..20).map(grant))
    {
        let seq = state.apply(&ev);
        payload.clear();
        codec::put_record(&mut payload, seq, &ev);
        frame::put_frame(&mut journal, &payload);
    }
    let mut snapshot = header(frame::SNAPSHOT_MAGIC);
    snapshot[24..32].copy_from_slice(&state.seq.to_le_bytes());
    let crc = crc32fast::hash(&snapshot[..32]);
    snapshot[32..36].copy_from_slice(&crc.to_le_bytes());
    let mut buf = Vec::new();
    codec::put_snapshot(&state.frozen(), &mut buf, |p| {
        frame::put_frame(&mut snapshot, p);
        Ok(())
    })
    .unwrap();
    assert!(decode_any(&journal) > 0 && decode_any(&snapshot) > 0);
    vec![journal, snapshot]
}

#[test]
fn decoding_never_panics_whatever_the_bytes() {
    // The bounded, always-run sibling of the fuzz target in `fuzz/`: valid files damaged
    // at random (bit flips, cuts, bytes inserted or overwritten), and random bytes.
    let corpus = corpus();
    // `FUZZ_SEEDS_OUT=fuzz/seeds/store_decode cargo test …` writes them as the fuzz
    // target's seeds.
    if let Some(out) = std::env::var_os("FUZZ_SEEDS_OUT") {
        for (name, bytes) in ["journal", "snapshot"].iter().zip(&corpus) {
            std::fs::write(Path::new(&out).join(name), bytes).unwrap();
        }
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..3000 {
        let mut m = corpus[rng.below(corpus.len())].clone();
        for _ in 0..1 + rng.below(4) {
            if m.len() < 4 {
                break;
            }
            match rng.below(4) {
                0 => {
                    let at = rng.below(m.len());
                    m[at] ^= 1 << rng.below(8);
                }
                1 => m.truncate(rng.below(m.len() + 1)),
                2 => {
                    let at = rng.below(m.len() + 1);
                    m.insert(at, rng.next() as u8);
                }
                _ => {
                    let at = rng.below(m.len().saturating_sub(4));
                    let v = (rng.next() as u32).to_le_bytes();
                    m[at..at + 4].copy_from_slice(&v);
                }
            }
        }
        decode_any(&m);
    }
    for _ in 0..2000 {
        let len = rng.below(400);
        let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        decode_any(&bytes);
    }
}

#[tokio::test]
async fn the_earliest_restart_point_is_kept_until_cleared() {
    let dir = tempfile::tempdir().unwrap();
    let first = RestartPoint {
        history: Uuid::new_v4(),
        seq: 10,
    };
    let later = RestartPoint {
        history: first.history,
        seq: 50,
    };
    {
        let (_, store, _) = open(dir.path(), StoreOptions::default()).unwrap();
        assert_eq!(store.hold_restart_point(first).unwrap(), first);
    }
    // Started again without a comparison: the first point holds, through a reopen.
    let (_, store, _) = open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(store.hold_restart_point(later).unwrap(), first);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("pair-restart.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    store.clear_restart_point().unwrap();
    store.clear_restart_point().unwrap();
    assert_eq!(store.hold_restart_point(later).unwrap(), later);
    // A damaged file stops the start with its name rather than being guessed at.
    std::fs::write(dir.path().join("pair-restart.json"), b"{").unwrap();
    let e = store.hold_restart_point(first).unwrap_err();
    assert!(e.to_string().contains("pair-restart.json"), "{e}");
}
