//! Files and directories for their owner only: `DATA_DIR` is 0700, the SQLite database (and
//! its `-wal` and `-shm` files, which SQLite creates with the database file's mode) and the
//! signing key are 0600. Created that way, and checked at every start: anything more open is
//! logged as a warning and closed.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode bits that let anyone but the owner in.
const OTHERS: u32 = 0o077;

/// Creates `dir` (and its parents) 0700, or makes an existing one 0700.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    if !dir.exists() {
        DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    }
    restrict(dir, 0o700)
}

/// Creates an empty `file` 0600 if it does not exist, or makes an existing one 0600.
pub fn private_file(file: &Path) -> io::Result<()> {
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => restrict(file, 0o600),
        Err(e) => Err(e),
    }
}

/// Makes `path`, if it exists, no more open than `mode`; warns when it was.
pub fn restrict_if_present(path: &Path, mode: u32) -> io::Result<()> {
    if path.exists() {
        restrict(path, mode)
    } else {
        Ok(())
    }
}

fn restrict(path: &Path, mode: u32) -> io::Result<()> {
    let current = fs::metadata(path)?.permissions().mode() & 0o777;
    if current & OTHERS != 0 {
        fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
        tracing::warn!(
            path = %path.display(),
            was = format_args!("{current:o}"),
            now = format_args!("{mode:o}"),
            "others could read this; it is now for its owner only"
        );
    }
    Ok(())
}

/// Writes a new file readable by its owner only; fails if it exists.
pub fn write_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn created_private_and_closed_when_too_open() {
        let tmp = std::env::temp_dir().join(format!("files-{}", uuid::Uuid::new_v4()));
        let dir = tmp.join("data");
        private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        let db = dir.join("backoffice.db");
        private_file(&db).unwrap();
        assert_eq!(mode(&db), 0o600);

        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(&db, fs::Permissions::from_mode(0o644)).unwrap();
        private_dir(&dir).unwrap();
        private_file(&db).unwrap();
        assert_eq!((mode(&dir), mode(&db)), (0o700, 0o600));

        // Tighter than asked is left alone.
        fs::set_permissions(&db, fs::Permissions::from_mode(0o400)).unwrap();
        private_file(&db).unwrap();
        assert_eq!(mode(&db), 0o400);
        fs::remove_dir_all(&tmp).unwrap();
    }
}
