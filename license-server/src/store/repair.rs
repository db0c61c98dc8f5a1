//! `license-server store verify` and `license-server store recover`: what a store still
//! holds when a start refuses it, and keeping that.
//!
//! Verify reads every file as a salvage would and changes nothing. Recover keeps every
//! record that verifies: the readable sections of the snapshot, then every readable event
//! in order (an event after a lost one applies to what is known; a renewal or return of
//! a lease whose grant was lost changes nothing). It writes that as the snapshot of a new
//! epoch and a new history (so that the backup of a pair, which may hold what was lost,
//! is merged back rather than overwritten), moves each damaged file aside as `<name>.damaged-<unix time>` (never deleting
//! it) and removes the undamaged segments it has taken in.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::load::{self, LoadError, SNAPSHOT, Scan};
use super::{files, new_epoch, write_snapshot};
use crate::domain::RightsCheck;

/// Reads everything readable (changes nothing), verifying rights with `check` when given.
pub fn verify(dir: &Path, check: Option<&RightsCheck>) -> Result<Scan, LoadError> {
    load::scan(dir, true, check)
}

/// Whether the store holds damage (a torn tail is not damage).
pub fn is_damaged(scan: &Scan) -> bool {
    !scan.losses.is_empty()
}

/// A report for an operator.
pub fn report(dir: &Path, scan: &Scan) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "store: {}", dir.display());
    match &scan.snapshot {
        Some(s) => {
            let _ = writeln!(
                out,
                "snapshot: {} — sequence {}, {} leases, {} bytes{}",
                file_name(&s.path),
                s.seq,
                s.leases,
                s.bytes,
                if s.damaged { ", DAMAGED" } else { ", ok" }
            );
        }
        None => {
            let _ = writeln!(out, "snapshot: none");
        }
    }
    for seg in &scan.segments {
        let seqs = seg.seqs.map_or_else(
            || "no events".to_owned(),
            |(a, b)| format!("events {a} to {b}"),
        );
        let _ = writeln!(
            out,
            "journal: {} — {} records ({seqs}), {} bytes{}{}",
            file_name(&seg.path),
            seg.records,
            seg.bytes,
            if seg.damaged { ", DAMAGED" } else { ", ok" },
            seg.torn_at.map_or_else(String::new, |at| format!(
                "; its last {} bytes are a write cut short by a crash (cut at the next start)",
                seg.bytes - at
            ))
        );
    }
    for p in &scan.stale {
        let _ = writeln!(
            out,
            "no longer needed: {} (removed at the next start)",
            file_name(p)
        );
    }
    let s = &scan.state;
    let rights = match &s.rights {
        None => "no rights".to_owned(),
        Some(r) => match r.claims() {
            Some(c) => format!(
                "{} rights (signed by the back office at {}, to be served until {})",
                c.rights.len(),
                crate::domain::fmt_time(c.iat),
                crate::domain::fmt_time(c.serve_until)
            ),
            None => "rights whose signature was not checked (give the back office's \
                     public key, --backoffice-public-key or BACKOFFICE_PUBLIC_KEY)"
                .to_owned(),
        },
    };
    let _ = writeln!(
        out,
        "readable: state at sequence {}, {} leases, {rights}, lease key {}",
        s.seq,
        s.lease_count(),
        if s.lease_key.is_some() {
            "present"
        } else {
            "missing"
        }
    );
    if scan.losses.is_empty() {
        let _ = writeln!(out, "no damage: the server starts from this store");
    } else {
        let _ = writeln!(out, "damage ({}):", scan.losses.len());
        for l in &scan.losses {
            let d = &l.damage;
            let _ = writeln!(
                out,
                "  {}{}{}: {} — lost: {}",
                file_name(&d.file),
                d.offset
                    .map_or_else(String::new, |o| format!(" at byte {o}")),
                d.record
                    .map_or_else(String::new, |r| format!(" (record {r})")),
                d.what,
                l.lost
            );
        }
        let _ = writeln!(
            out,
            "the server refuses to start from this store; `license-server store recover` keeps what is readable"
        );
    }
    out
}

fn file_name(p: &Path) -> String {
    p.file_name().map_or_else(
        || p.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// What recover did.
#[derive(Debug, Default)]
pub struct Recovered {
    pub seq: u64,
    pub leases: usize,
    pub moved_aside: Vec<PathBuf>,
    pub removed: Vec<PathBuf>,
}

/// Keeps what `scan` (a [`verify`] of `dir`) found readable. The server must be stopped.
pub fn recover(dir: &Path, scan: &Scan) -> Result<Recovered, LoadError> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let aside = |p: &Path| -> PathBuf {
        let mut name = p.as_os_str().to_owned();
        name.push(format!(".damaged-{stamp}"));
        PathBuf::from(name)
    };
    let _lock = files::lock_dir(dir).map_err(load::io_err(dir))?;
    let mut done = Recovered {
        seq: scan.state.seq,
        leases: scan.state.lease_count(),
        ..Recovered::default()
    };
    // The damaged snapshot first, so the new one does not replace it.
    if let Some(s) = scan.snapshot.as_ref().filter(|s| s.damaged) {
        let to = aside(&s.path);
        std::fs::rename(&s.path, &to).map_err(load::io_err(&s.path))?;
        done.moved_aside.push(to);
    }
    // A new history: a backup that holds what was lost is then merged, not overwritten.
    let mut frozen = scan.state.frozen();
    if !frozen.head.history.is_nil() {
        frozen.head.history = uuid::Uuid::new_v4();
    }
    write_snapshot(dir, &frozen, new_epoch()).map_err(load::io_err(&dir.join(SNAPSHOT)))?;
    for seg in &scan.segments {
        if seg.damaged {
            let to = aside(&seg.path);
            std::fs::rename(&seg.path, &to).map_err(load::io_err(&seg.path))?;
            done.moved_aside.push(to);
        } else {
            std::fs::remove_file(&seg.path).map_err(load::io_err(&seg.path))?;
            done.removed.push(seg.path.clone());
        }
    }
    // Segments that did not even have a readable header.
    for l in &scan.losses {
        let f = &l.damage.file;
        if f.exists() && f.file_name().is_some_and(|n| n != SNAPSHOT) && !done.removed.contains(f) {
            let to = aside(f);
            std::fs::rename(f, &to).map_err(load::io_err(f))?;
            done.moved_aside.push(to);
        }
    }
    files::fsync_dir(dir).map_err(load::io_err(dir))?;
    Ok(done)
}
