//! The test kit: everything the workspace's tests start and talk to, in one library.
//!
//! - [`backoffice`]: the real back office, in-process (`Application::build` on port 0) or
//!   as its binary, on SQLite or a PostgreSQL database of its own ([`postgres`]), over
//!   HTTP or HTTPS, with a fixture of products, accounts, entitlements and tokens;
//! - [`license_server`]: the real `license-server` binary on a port of its own, restartable
//!   on the same data, and the settings of a failover pair;
//! - [`fake_backoffice`]: a small signing back office that can be told to misbehave
//!   (wrong key, wrong hostid, stale, replayed, `MAIN_NOT_REGISTERED`);
//! - [`proxy`]: a TCP proxy whose link a test can cut and heal;
//! - [`smtp`]: a real SMTP server (aiosmtpd) whose mails a test reads;
//! - [`tls`]: a certificate authority made in the test, and certificates it issues;
//! - [`disk`]: a small tmpfs to fill (a full disk, or a disk so many percent used);
//! - [`browser`]: headless Chromium through WebDriver;
//! - [`eventually`], the one way tests wait for something.
//!
//! The binaries a test starts must be built first (`cargo build --bins`; `scripts/test`
//! does it, and `cargo test -p license-server` builds its own).

pub mod backoffice;
pub mod browser;
pub mod cluster;
pub mod disk;
pub mod fake_backoffice;
pub mod license_server;
pub mod postgres;
pub mod process;
pub mod proxy;
pub mod smtp;
pub mod tls;

use std::time::{Duration, Instant};

pub use backoffice::{
    ADMIN_EMAIL, ADMIN_PASSWORD, Api, BackOffice, Fixture, Reply, capability_request,
};
pub use disk::SmallDisk;
pub use license_server::{
    LicenseServer, PairSetup, lease_ids, leases_at, seats_held, server_env, wait_paired,
};
pub use postgres::{Backend, PgDatabase, backends};
pub use process::{Process, bin_dir, binary, tail};
pub use proxy::Proxy;

/// A free TCP port on loopback (for servers that must know each other's port before
/// either starts; anything else listens on port 0).
///
/// The port is taken from below Linux's ephemeral range (32768–60999), which the kernel
/// hands out as the local port of every outgoing connection and of every `bind` to port
/// 0: a port from that range, free when checked, was now and then the local port of some
/// client's connection by the time the server bound it ("Address already in use"). Below
/// it only another `free_port` competes. Tests run side by side in processes of their own
/// (cargo-nextest); each running test has a slot number of its own
/// (`NEXTEST_TEST_GLOBAL_SLOT`, 0 to the number of tests at once − 1), and takes its ports
/// from that slot's window only, so two tests never pick the same port between the check
/// and their server's `bind`. Within the window a process starts at its own offset and
/// walks on (a test before it in the same slot may still be closing its sockets), and every
/// candidate is checked by binding it. Under `cargo test` (no slot) the whole range is one
/// window.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    /// Windows for up to this many tests at once (`.config/nextest.toml` runs four).
    const SLOTS: u32 = 8;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let (base, span) = match std::env::var("NEXTEST_TEST_GLOBAL_SLOT")
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
    {
        Some(slot) => (FIRST + (slot % SLOTS) * (SPAN / SLOTS), SPAN / SLOTS),
        None => (FIRST, SPAN),
    };
    if NEXT.load(Ordering::Relaxed) == u32::MAX {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let start = (std::process::id().wrapping_mul(7_919) ^ nanos) % span;
        let _ = NEXT.compare_exchange(u32::MAX, start, Ordering::Relaxed, Ordering::Relaxed);
    }
    for _ in 0..span {
        let port = base + NEXT.fetch_add(1, Ordering::Relaxed) % span;
        let port = u16::try_from(port).expect("below 32000");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between {base} and {}", base + span)
}

/// Polls `f` every 20 ms until it returns `Some`, or panics naming `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A checkout of one seat of `feature` for `client_id`.
pub fn checkout_request(feature: &str, client_id: &str) -> shared::lease::CheckoutRequest {
    shared::lease::CheckoutRequest {
        borrow_secs: None,
        queue_secs: None,
        feature: feature.to_owned(),
        version: None,
        count: 1,
        client_id: client_id.to_owned(),
        user: None,
        host: None,
        client_secret: None,
    }
}
