//! Files for their owner only: `DATA_DIR` is 0700 and every file in it 0600, on creation
//! and checked at every start (a warning, then fixed, when one is more open).

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

#[cfg(unix)]
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};

/// Mode of `DATA_DIR`.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file in it.
pub const FILE_MODE: u32 = 0o600;

/// Creates `dir` (mode 0700) or, when it exists and is more open, warns and fixes it;
/// then does the same for every file directly in it (0600).
pub fn prepare_dir(dir: &Path) -> io::Result<()> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => fix_mode(dir, &m, DIR_MODE)?,
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("DATA_DIR {} exists and is not a directory", dir.display()),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let mut b = std::fs::DirBuilder::new();
            b.recursive(true);
            #[cfg(unix)]
            b.mode(DIR_MODE);
            b.create(dir)?;
            // `mode` is filtered by the umask, and parents made on the way are not ours to
            // restrict: set the directory itself exactly.
            set_mode(dir, DIR_MODE)?;
        }
        Err(e) => return Err(e),
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let m = entry.metadata()?;
        if m.is_file() {
            fix_mode(&entry.path(), &m, FILE_MODE)?;
        }
    }
    Ok(())
}

#[cfg(unix)]
fn fix_mode(path: &Path, m: &std::fs::Metadata, want: u32) -> io::Result<()> {
    let mode = m.permissions().mode() & 0o777;
    if mode & !want != 0 {
        tracing::warn!(
            path = %path.display(),
            mode = format!("{mode:o}"),
            fixed_to = format!("{want:o}"),
            "readable or writable by others than its owner; fixed"
        );
        set_mode(path, want)?;
    }
    Ok(())
}

#[cfg(not(unix))]
fn fix_mode(_: &Path, _: &std::fs::Metadata, _: u32) -> io::Result<()> {
    Ok(())
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_: &Path, _: u32) -> io::Result<()> {
    Ok(())
}

/// Opens a file for writing, creating it with mode 0600 (truncated if `truncate`).
pub fn create_private(path: &Path, truncate: bool) -> io::Result<File> {
    let mut o = OpenOptions::new();
    o.write(true).create(true);
    if truncate {
        o.truncate(true);
    }
    #[cfg(unix)]
    o.mode(FILE_MODE);
    o.open(path)
}

/// The file locked while a process uses a data directory.
pub const LOCK: &str = "store.lock";

/// Takes the data directory's lock (held until the file is dropped): one process at a
/// time uses a store.
pub fn lock_dir(dir: &Path) -> io::Result<File> {
    let f = create_private(&dir.join(LOCK), false)?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            "another process uses this data directory (a license server running on it?)",
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

/// Whether a process holds the data directory's lock now (checked without creating
/// anything).
pub fn in_use(dir: &Path) -> bool {
    File::open(dir.join(LOCK))
        .is_ok_and(|f| matches!(f.try_lock_shared(), Err(std::fs::TryLockError::WouldBlock)))
}

/// Writes a whole small file, mode 0600.
pub fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    create_private(path, true)?.write_all(bytes)
}

/// Writes a small file of `dir` for its owner only (0600), whole or not at all: to a
/// temporary file, synced, renamed into place, the directory synced.
pub fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    write_private(&tmp, bytes)?;
    File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))?;
    fsync_dir(dir)
}

/// Makes the directory's entries (a new, renamed or removed file) durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_new_data_dir_is_0700_and_its_files_0600() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/data");
        prepare_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        write_private(&dir.join("x"), b"1").unwrap();
        assert_eq!(mode(&dir.join("x")), 0o600);
    }

    #[test]
    fn too_open_modes_are_fixed_at_start() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        std::fs::create_dir(&dir).unwrap();
        set_mode(&dir, 0o755).unwrap();
        std::fs::write(dir.join("admin.token"), "t").unwrap();
        set_mode(&dir.join("admin.token"), 0o644).unwrap();
        prepare_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("admin.token")), 0o600);
    }
}
