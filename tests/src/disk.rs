//! A small disk of the test's own: a tmpfs mounted on a temporary directory, to fill
//! completely (a full disk) or to a given percentage (as `df` counts it). Mounting needs
//! root, as `scripts/test` and CI run; elsewhere the test is skipped with a note.

use std::io::Write;
use std::path::{Path, PathBuf};

/// A tmpfs mounted on a temporary directory, unmounted when dropped.
pub struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// A tmpfs of `size` (`4m`), or `None` with a note when it cannot be mounted (not
    /// root); under CI (`CI` set) not mounting fails the test.
    pub fn mount(size: &str) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Some(SmallDisk { dir });
        }
        assert!(
            std::env::var("CI").is_err(),
            "CI runs as root and must mount a small tmpfs for the small-disk tests"
        );
        eprintln!("note: cannot mount a tmpfs (not root?); this small-disk test is skipped");
        None
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    fn filler(&self) -> PathBuf {
        self.dir.path().join("filler")
    }

    /// Writes a file until the disk is full.
    pub fn fill(&self) -> PathBuf {
        let path = self.filler();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        let chunk = vec![0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
        path
    }

    /// Percent of the disk used, as `df` counts it (rounded up).
    pub fn used_percent(&self) -> u8 {
        let st = rustix::fs::statvfs(self.dir.path()).unwrap();
        let used = st.f_blocks - st.f_bfree;
        ((used * 100).div_ceil(used + st.f_bavail)) as u8
    }

    /// Grows or shrinks a file of its own, a page at a time, until the disk is `percent`
    /// used (each page is less than a percent of a disk of 400 KiB or more).
    pub fn fill_to(&self, percent: u8) {
        let path = self.filler();
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        let page = 4096;
        while self.used_percent() < percent {
            (&f).write_all(&vec![0u8; page]).unwrap();
        }
        while self.used_percent() > percent {
            let len = f.metadata().unwrap().len();
            assert!(
                len >= page as u64,
                "the disk is {}% used without the filler, more than {percent}%",
                self.used_percent()
            );
            f.set_len(len - page as u64).unwrap();
        }
        assert_eq!(self.used_percent(), percent);
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}
