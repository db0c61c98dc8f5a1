//! A child process of a test (a back office or a license server as its real binary),
//! killed when dropped, its standard output and error appended to a log file.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// `target/debug` (or whichever profile the test binary was built in).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test-binary>, or target/<profile>/<tool> for the load tools.
    let dir = exe.parent().expect("exe has a directory");
    if dir.ends_with("deps") {
        dir.parent().expect("target/<profile>").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// The path of a workspace binary, which must have been built.
pub fn binary(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is not built; run `cargo build --bins` first (scripts/test does)",
        p.display()
    );
    p
}

/// A child process killed when dropped.
pub struct Process {
    pub child: Child,
    pub name: String,
    pub log: PathBuf,
}

impl Process {
    /// Starts `cmd` with its output appended to `log` (a restart keeps the earlier lines).
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Result<Process> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("cannot open {}", log.display()))?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        Ok(Process {
            child,
            name: name.to_owned(),
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it has exited (and how).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// kill -9: no chance to flush or say goodbye.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for the exit; kill -9 after `grace`.
    pub fn terminate(&mut self, grace: Duration) -> Option<ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
        None
    }

    /// SIGTERM, then kill -9 after 10 s.
    pub fn stop(&mut self) {
        self.terminate(Duration::from_secs(10));
    }

    /// Its resident memory, in KiB (from /proc).
    pub fn rss_kib(&self) -> Option<u64> {
        rss_kib(self.pid())
    }

    /// Every thread's stack, for a process that stopped answering (`gdb` attaches for a
    /// moment; `None` when gdb is not installed or cannot attach).
    pub fn stacks(&self) -> Option<String> {
        let out = Command::new("timeout")
            .args(["20", "gdb", "-p", &self.pid().to_string(), "-batch", "-nx"])
            .args(["-ex", "set pagination off", "-ex", "thread apply all bt"])
            .stdin(Stdio::null())
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        // Only the stacks: gdb's own chatter (symbol loading) is noise here.
        let stacks: String = text
            .lines()
            .filter(|l| l.starts_with("Thread ") || l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect();
        (!stacks.is_empty()).then_some(stacks)
    }

    /// Everything it has written to its log.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The resident memory of process `pid`, in KiB (from /proc).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The last `n` lines of a log.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A log file beside `dir` for the process `name`.
pub(crate) fn log_beside(dir: &Path, name: &str) -> PathBuf {
    let file = dir
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    dir.with_file_name(format!("{file}.{name}.log"))
}
