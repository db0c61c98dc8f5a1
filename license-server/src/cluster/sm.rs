//! The state machine ([`openraft::storage::RaftStateMachine`]): the pool's [`State`],
//! shared with the service that reads it, changed only by applying committed commands
//! ([`super::machine::apply`]) or by installing a snapshot; and its snapshots, written
//! in the store's style (format in [`super`]'s documentation). The rights of a snapshot,
//! read from this member's file or sent by the leader, are verified like a command's
//! ([`RightsCheck`]); a snapshot whose rights do not verify is refused. Rights are
//! checked against the raft membership in effect where they stand in the log (not this
//! member's settings), so every member decides alike while a member is replaced.

use std::io::{self, Cursor, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, EntryPayload, ErrorSubject, ErrorVerb, LogId, RaftSnapshotBuilder, Snapshot,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};
use parking_lot::Mutex;

use super::machine::{self, Command, Outcome};
use super::{Entry, Member, NodeId, TypeConfig};
use crate::domain::{Frozen, RightsCheck, State};
use crate::lease_key::LeaseKey;
use crate::store::codec::{self, Section};
use crate::store::files;
use crate::store::frame::{self, FileHeader, Reader};

pub const SNAPSHOT_MAGIC: [u8; 8] = *b"LLS-RSN\n";
pub const SNAPSHOT_FILE: &str = "raft-snapshot.bin";
const SNAPSHOT_TMP: &str = "raft-snapshot.bin.tmp";

type Meta = SnapshotMeta<NodeId, Member>;

/// What the state machine has applied (besides the pool itself).
#[derive(Clone, Debug, Default)]
pub struct Applied {
    pub log_id: Option<LogId<NodeId>>,
    pub membership: StoredMembership<NodeId, Member>,
}

pub struct StateMachine {
    state: Arc<Mutex<State>>,
    applied: Arc<Mutex<Applied>>,
    dir: PathBuf,
    /// The last snapshot written or installed.
    current: Arc<Mutex<Option<Meta>>>,
    /// Verifies rights: the producer's key (the clusters it takes are set from the
    /// membership by [`membership_check`]).
    check: RightsCheck,
    /// Verifies the rights of commands: for the membership applied last.
    applying: RightsCheck,
    /// The pool's lease key, decoded for signing: set under the state lock when the
    /// command that creates it is applied or a snapshot installed.
    lease_key: Arc<LeaseKey>,
}

/// The voters' hostids of each configuration of `m` (two while a member is replaced).
pub fn voter_sets(m: &openraft::Membership<NodeId, Member>) -> Vec<Vec<shared::HostId>> {
    m.get_joint_config()
        .iter()
        .map(|ids| {
            ids.iter()
                .filter_map(|id| m.get_node(id))
                .filter_map(|n| shared::HostId::parse(&n.hostid).ok())
                .collect()
        })
        .collect()
}

/// The check of the rights of commands applied under the membership `m`.
pub fn membership_check(check: &RightsCheck, m: &StoredMembership<NodeId, Member>) -> RightsCheck {
    check.of_clusters(voter_sets(m.membership()))
}

/// Takes a copy when asked for a builder; encodes and writes it when asked to build.
pub struct Builder {
    frozen: Frozen,
    applied: Applied,
    dir: PathBuf,
    current: Arc<Mutex<Option<Meta>>>,
}

fn sm_err(verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageError::IO {
        source: StorageIOError::new(
            ErrorSubject::StateMachine,
            verb,
            AnyError::error(e.to_string()),
        ),
    }
}

impl StateMachine {
    /// Loads the last snapshot in `dir`, if any (anything that does not verify stops
    /// the start); the entries after it are applied again by openraft.
    pub fn open(
        dir: &Path,
        check: RightsCheck,
    ) -> Result<(StateMachine, Arc<Mutex<State>>), String> {
        let path = dir.join(SNAPSHOT_FILE);
        let (state, applied, current) = match std::fs::read(&path) {
            Ok(bytes) => {
                let (meta, state) =
                    decode(&bytes, &check).map_err(|e| format!("{}: {e}", path.display()))?;
                let applied = Applied {
                    log_id: meta.last_log_id,
                    membership: meta.last_membership.clone(),
                };
                (state, applied, Some(meta))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                (State::default(), Applied::default(), None)
            }
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let lease_key =
            Arc::new(LeaseKey::of(&state).map_err(|e| format!("{}: {e}", path.display()))?);
        let state = Arc::new(Mutex::new(state));
        let applying = membership_check(&check, &applied.membership);
        Ok((
            StateMachine {
                state: state.clone(),
                applied: Arc::new(Mutex::new(applied)),
                dir: dir.to_owned(),
                current: Arc::new(Mutex::new(current)),
                check,
                applying,
                lease_key,
            },
            state,
        ))
    }

    /// What has been applied: shared with the cluster handle, for its status.
    pub fn applied(&self) -> Arc<Mutex<Applied>> {
        self.applied.clone()
    }

    /// The pool's lease key it keeps: shared with the service, which signs with it.
    pub fn lease_key(&self) -> Arc<LeaseKey> {
        self.lease_key.clone()
    }
}

/// A snapshot's bytes: header, the meta as JSON, then the pool's sections.
pub fn encode(meta: &Meta, frozen: &Frozen) -> io::Result<Vec<u8>> {
    let mut out = FileHeader {
        magic: SNAPSHOT_MAGIC,
        epoch: 0,
        base: meta.last_log_id.map_or(0, |l| l.index),
    }
    .encode()
    .to_vec();
    frame::put_frame(
        &mut out,
        &serde_json::to_vec(meta).map_err(io::Error::other)?,
    );
    let mut payload = Vec::with_capacity(1 << 16);
    codec::put_snapshot(frozen, &mut payload, |p| {
        frame::put_frame(&mut out, p);
        Ok(())
    })?;
    Ok(out)
}

/// Reads a snapshot's bytes back, its rights verified with `check`; anything that does
/// not verify is an error saying where.
pub fn decode(bytes: &[u8], check: &RightsCheck) -> Result<(Meta, State), String> {
    FileHeader::decode(bytes, SNAPSHOT_MAGIC)?;
    let mut reader = Reader::new(bytes);
    let mut next = |what: &str| match reader.next_frame() {
        Some(Ok(f)) => Ok(f),
        Some(Err(stop)) => Err(stop.to_string()),
        None => Err(format!("it ends before {what}")),
    };
    let f = next("its meta")?;
    let meta: Meta = serde_json::from_slice(f.payload)
        .map_err(|e| format!("record 0: not a snapshot's meta ({e})"))?;
    // The rights held were verified as they were applied: under this membership, or the
    // one before a member was replaced.
    let check = membership_check(check, &meta.last_membership).or_previous();
    let f = next("the pool")?;
    let mut state = match codec::get_section(f.payload) {
        Ok(Section::Head {
            state,
            unsigned_rights: 0,
        }) => *state,
        Ok(Section::Head { .. }) => {
            return Err(format!(
                "record {}: rights kept as counts, not as the back office's signed answer",
                f.record
            ));
        }
        Ok(_) => return Err(format!("record {}: not the pool's head", f.record)),
        Err(e) => return Err(format!("record {} at byte {}: {e}", f.record, f.offset)),
    };
    if let Some(rights) = state.rights.as_mut() {
        check
            .verify(rights)
            .map_err(|e| format!("record {}: its rights do not verify: {e}", f.record))?;
        state.rebuild_index();
    }
    state.begin_load();
    let (mut leases, mut sections) = (0u64, 0u64);
    loop {
        let f = next("its end")?;
        match codec::get_section(f.payload) {
            Ok(Section::Leases(list)) => {
                sections += 1;
                leases += list.len() as u64;
                for l in list {
                    state.insert_lease(l);
                }
            }
            Ok(Section::End {
                leases: n,
                sections: s,
            }) => {
                if (n, s) != (leases, sections) {
                    return Err(format!(
                        "it holds {leases} leases in {sections} sections, its end says {n} in {s}"
                    ));
                }
                break;
            }
            Ok(Section::Head { .. }) => return Err(format!("record {}: a second head", f.record)),
            Err(e) => return Err(format!("record {} at byte {}: {e}", f.record, f.offset)),
        }
    }
    if let Some(extra) = reader.next_frame() {
        let at = extra.map(|f| f.offset).unwrap_or_else(|s| match s {
            frame::Stop::Torn { offset } | frame::Stop::Damaged { offset, .. } => offset,
        });
        return Err(format!("bytes follow its end, at byte {at}"));
    }
    state.end_load();
    Ok((meta, state))
}

/// Writes a snapshot file: temporary file, synced, renamed over, directory synced.
fn write_file(dir: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(SNAPSHOT_TMP);
    let mut f = files::create_private(&tmp, true)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, dir.join(SNAPSHOT_FILE))?;
    files::fsync_dir(dir)
}

impl RaftSnapshotBuilder<TypeConfig> for Builder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let last = self.applied.log_id;
        let meta = Meta {
            last_log_id: last,
            last_membership: self.applied.membership.clone(),
            snapshot_id: format!(
                "{}-{}-{}",
                last.map_or(0, |l| l.leader_id.term),
                last.map_or(0, |l| l.index),
                uuid::Uuid::new_v4().simple()
            ),
        };
        let frozen = std::mem::take(&mut self.frozen);
        let dir = self.dir.clone();
        let m = meta.clone();
        let bytes = tokio::task::spawn_blocking(move || {
            let bytes = encode(&m, &frozen)?;
            write_file(&dir, &bytes)?;
            Ok::<_, io::Error>(bytes)
        })
        .await
        .map_err(|e| sm_err(ErrorVerb::Write, e))?
        .map_err(|e| sm_err(ErrorVerb::Write, e))?;
        tracing::info!(
            index = last.map_or(0, |l| l.index),
            bytes = bytes.len(),
            "cluster snapshot written"
        );
        *self.current.lock() = Some(meta.clone());
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Builder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, Member>), StorageError<NodeId>>
    {
        let a = self.applied.lock();
        Ok((a.log_id, a.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcome>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut out = Vec::new();
        let mut st = self.state.lock();
        let mut applied = self.applied.lock();
        for entry in entries {
            applied.log_id = Some(entry.log_id);
            out.push(match entry.payload {
                EntryPayload::Blank => Outcome::Done,
                EntryPayload::Normal(cmd) => {
                    let outcome = machine::apply(&mut st, &cmd, &self.applying);
                    if matches!(cmd, Command::Init { .. })
                        && let Err(e) = self.lease_key.set_from(&st)
                    {
                        tracing::error!(index = entry.log_id.index, "{e}: lease tokens cannot be signed or checked");
                    }
                    if let Outcome::Unverified { error } = &outcome {
                        tracing::error!(
                            index = entry.log_id.index,
                            problem = %error,
                            "the cluster's log holds rights that do not verify on this member: not taken (check BACKOFFICE_PUBLIC_KEY on every member)"
                        );
                    }
                    outcome
                }
                EntryPayload::Membership(m) => {
                    applied.membership = StoredMembership::new(Some(entry.log_id), m);
                    self.applying = membership_check(&self.check, &applied.membership);
                    Outcome::Done
                }
            });
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Builder {
        // Taken under the locks, so the copy is exactly what was applied.
        let st = self.state.lock();
        Builder {
            frozen: st.frozen(),
            applied: self.applied.lock().clone(),
            dir: self.dir.clone(),
            current: self.current.clone(),
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let bytes = snapshot.into_inner();
        let (theirs, state) =
            decode(&bytes, &self.check).map_err(|e| sm_err(ErrorVerb::Read, e))?;
        if theirs.last_log_id != meta.last_log_id {
            return Err(sm_err(
                ErrorVerb::Read,
                "the snapshot's content is not of the log position it was sent for",
            ));
        }
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || write_file(&dir, &bytes))
            .await
            .map_err(|e| sm_err(ErrorVerb::Write, e))?
            .map_err(|e| sm_err(ErrorVerb::Write, e))?;
        let leases = state.lease_count();
        {
            let mut st = self.state.lock();
            let mut applied = self.applied.lock();
            self.lease_key
                .set_from(&state)
                .map_err(|e| sm_err(ErrorVerb::Read, e))?;
            *st = state;
            applied.log_id = meta.last_log_id;
            applied.membership = meta.last_membership.clone();
            self.applying = membership_check(&self.check, &applied.membership);
        }
        *self.current.lock() = Some(meta.clone());
        tracing::info!(
            index = meta.last_log_id.map_or(0, |l| l.index),
            leases,
            "took a full copy of the pool from the leader"
        );
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let Some(meta) = self.current.lock().clone() else {
            return Ok(None);
        };
        let path = self.dir.join(SNAPSHOT_FILE);
        let bytes = tokio::task::spawn_blocking(move || std::fs::read(path))
            .await
            .map_err(|e| sm_err(ErrorVerb::Read, e))?
            .map_err(|e| sm_err(ErrorVerb::Read, e))?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::machine::Command;
    use crate::cluster::machine::tests::{answer, check, rights};
    use crate::domain::Holder;

    /// The membership of `hostids` (one configuration).
    pub(crate) fn membership(hostids: &[&str]) -> StoredMembership<NodeId, Member> {
        let nodes: std::collections::BTreeMap<NodeId, Member> = hostids
            .iter()
            .map(|h| {
                let id = crate::cluster::node_id(&shared::HostId::parse(h).unwrap());
                (
                    id,
                    Member {
                        hostid: h.to_string(),
                    },
                )
            })
            .collect();
        let voters = nodes.keys().copied().collect();
        StoredMembership::new(None, openraft::Membership::new(vec![voters], nodes))
    }

    /// The key the service signs with follows the pool's: set when the command that
    /// creates it is applied (signing then never takes the state lock, which the line's
    /// places are signed under), and carried by a snapshot to a member that installs it.
    #[tokio::test]
    async fn the_lease_key_is_kept_from_the_committed_command_and_from_a_snapshot() {
        let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (mut a, _) = StateMachine::open(a_dir.path(), check()).unwrap();
        let key = a.lease_key();
        let id = uuid::Uuid::new_v4();
        assert_eq!(key.sign(&id), None);
        let log_id = LogId::new(openraft::CommittedLeaderId::new(1, 1), 1);
        let init = Command::Init {
            lease_key: base64::Engine::encode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                [9u8; 32],
            ),
            history: uuid::Uuid::new_v4(),
        };
        a.apply([Entry {
            log_id,
            payload: EntryPayload::Normal(init),
        }])
        .await
        .unwrap();
        let token = key
            .sign(&id)
            .expect("the key is set once the command is applied");

        let snapshot = a
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        let (mut b, _) = StateMachine::open(b_dir.path(), check()).unwrap();
        assert!(!b.lease_key().verify(&id, &token));
        b.install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await
            .unwrap();
        assert!(b.lease_key().verify(&id, &token));
        // And after a restart, from the snapshot on disk.
        drop(b);
        let (b, _) = StateMachine::open(b_dir.path(), check()).unwrap();
        assert!(b.lease_key().verify(&id, &token));
    }

    fn pool_with_leases(n: usize) -> State {
        let mut st = State::default();
        machine::apply(&mut st, &rights(10_000, 1), &check());
        for i in 0..n {
            machine::apply(
                &mut st,
                &Command::Checkout {
                    borrow_ms: None,
                    feature: "cad".into(),
                    version: None,
                    count: 1,
                    client_id: format!("c{i}"),
                    holder: Holder::of_secret(&format!("c{i}'s secret")),
                    shown: None,
                    at: 1_000,
                    lease_ms: 60_000,
                    lease_id: uuid::Uuid::new_v4(),
                    granted_by: "string:m1".into(),
                    queue: None,
                },
                &check(),
            );
        }
        st
    }

    #[test]
    fn a_snapshot_reads_back_as_the_same_pool_and_any_damage_is_refused() {
        let st = pool_with_leases(1500);
        let meta = Meta {
            last_log_id: Some(LogId::new(openraft::CommittedLeaderId::new(3, 7), 42)),
            last_membership: membership(&["string:m1", "string:m2", "string:m3"]),
            snapshot_id: "s".into(),
        };
        let bytes = encode(&meta, &st.frozen()).unwrap();
        let (m, back) = decode(&bytes, &check()).unwrap();
        assert_eq!(m.last_log_id, meta.last_log_id);
        assert_eq!(back.seq, st.seq);
        assert_eq!(back.lease_count(), 1500);
        assert_eq!(back.features(2_000), st.features(2_000));
        for at in [10, 40, bytes.len() / 2, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[at] ^= 0x04;
            assert!(
                decode(&bad, &check()).is_err(),
                "a flip at byte {at} went unnoticed"
            );
        }
        assert!(decode(&bytes[..bytes.len() - 3], &check()).is_err());
    }

    #[test]
    fn a_snapshot_whose_rights_do_not_verify_is_refused() {
        let mut st = pool_with_leases(3);
        // Rights signed by a key that is not the producer's, put in the pool directly
        // (as an edited file or a rogue leader would).
        st.apply(&crate::domain::Event::RightsUpdated {
            rights: answer(&shared::signing::Signer::generate(), "string:m1", 999, 2),
            at: 2,
        });
        let meta = Meta {
            last_log_id: Some(LogId::new(openraft::CommittedLeaderId::new(1, 7), 9)),
            last_membership: membership(&["string:m1", "string:m2", "string:m3"]),
            snapshot_id: "s".into(),
        };
        let bytes = encode(&meta, &st.frozen()).unwrap();
        let e = decode(&bytes, &check()).unwrap_err();
        assert!(e.contains("rights do not verify"), "{e}");
    }

    #[test]
    fn a_snapshot_keeps_the_rights_of_the_members_before_one_was_replaced_and_no_others() {
        // The pool's rights were issued to m1, m2, m3; m3 was replaced by m4 since.
        let st = pool_with_leases(2);
        let snapshot = |members: &[&str]| {
            let meta = Meta {
                last_log_id: Some(LogId::new(openraft::CommittedLeaderId::new(2, 7), 12)),
                last_membership: membership(members),
                snapshot_id: "s".into(),
            };
            encode(&meta, &st.frozen()).unwrap()
        };
        let (_, back) = decode(
            &snapshot(&["string:m1", "string:m2", "string:m4"]),
            &check(),
        )
        .expect("the rights of before the replacement");
        assert_eq!(back.features(2_000), st.features(2_000));
        // Two members off: another cluster's snapshot.
        let e = decode(
            &snapshot(&["string:m1", "string:m5", "string:m4"]),
            &check(),
        )
        .unwrap_err();
        assert!(e.contains("rights do not verify"), "{e}");
    }

    /// A member that loads the pool from a snapshot holds the same line and serves it as
    /// the members that applied every command.
    #[test]
    fn a_snapshot_carries_the_line_and_a_member_loaded_from_it_serves_it_alike() {
        use crate::cluster::machine::tests::{places, queued, serve};
        let mut st = State::default();
        machine::apply(&mut st, &rights(1, 1), &check());
        let [p1, p2, p3] = places();
        let holder = uuid::Uuid::new_v4();
        let mut first = queued("holder", 1_000, uuid::Uuid::new_v4(), 60);
        if let Command::Checkout { lease_id, .. } = &mut first {
            *lease_id = holder;
        }
        for cmd in [
            first,
            queued("q1", 1_001, p1, 600),
            queued("q2", 1_002, p2, 600),
            queued("q3", 1_003, p3, 600),
        ] {
            machine::apply(&mut st, &cmd, &check());
        }
        assert_eq!(st.queue().len(), 3);
        let meta = Meta {
            last_log_id: Some(LogId::new(openraft::CommittedLeaderId::new(2, 7), 12)),
            last_membership: membership(&["string:m1", "string:m2", "string:m3"]),
            snapshot_id: "s".into(),
        };
        let bytes = encode(&meta, &st.frozen()).unwrap();
        let (_, mut loaded) = decode(&bytes, &check()).unwrap();
        assert_eq!(loaded.queue(), st.queue());
        let after = [
            Command::Return {
                id: holder,
                at: 2_000,
            },
            serve(2_001),
            Command::Return { id: p1, at: 2_002 },
            serve(2_003),
        ];
        for cmd in &after {
            let here = machine::apply(&mut st, cmd, &check());
            assert_eq!(here, machine::apply(&mut loaded, cmd, &check()), "{cmd:?}");
        }
        assert_eq!(loaded.queue(), st.queue());
        assert_eq!(loaded.queue()[0].id, p3);
        assert!(loaded.has_lease(&p2) && !loaded.has_lease(&p1));
    }
}
