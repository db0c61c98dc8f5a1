//! Failover pairs with real processes: a back office, a main, a backup, and clients using
//! the client library. kill -9 under load, failback, a cut link, every start order, the
//! maintenance interval, the absence limit and operator changes.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use licensing_client::{Client, ClientError};
use serde_json::Value;
use shared::ErrorCode;
use shared::lease::{CheckoutRequest, Lease};
use tests::{
    BackOffice, Backend, Fixture, LicenseServer, PairSetup, Proxy, binary, eventually, wait_paired,
};
use uuid::Uuid;

/// One failover test at a time: they time silences of a second, and several at once on
/// two cores could starve a heartbeat.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const FEATURE: &str = "cad";
const SEATS: u32 = 8;
const WAIT: Duration = Duration::from_secs(30);

fn req(client_id: &str) -> CheckoutRequest {
    tests::checkout_request("cad", client_id)
}

async fn setup(extra: &[(&str, &str)]) -> Result<(BackOffice, Fixture, PairSetup)> {
    let bo = BackOffice::start(Backend::Sqlite).await?;
    let fx = bo.fixture(&[FEATURE], 20).await?;
    let pair = PairSetup::new(&bo, &fx, SEATS, extra)?;
    Ok((bo, fx, pair))
}

/// What the clients hold: acknowledged checkouts not (acknowledged as) returned.
#[derive(Default)]
struct Ledger {
    held: BTreeMap<Uuid, Lease>,
    /// Returns under way, or whose answer was lost: the server may or may not have taken
    /// them (a kill can fall between a return taken and its answer).
    in_doubt: HashSet<Uuid>,
    /// Returns a server acknowledged: it held the lease when the return came (a return of
    /// a lease a server does not know is refused), so a lease held at a kill and
    /// returned since is gone rightly, not lost.
    returned: HashSet<Uuid>,
    grants: u64,
    /// Each client's latest failed checkout: what a stall is made of.
    last_error: BTreeMap<usize, String>,
}

impl Ledger {
    /// The leases a server may rightly lack: returns in doubt, and returns taken.
    fn released(&self) -> HashSet<Uuid> {
        self.in_doubt.union(&self.returned).copied().collect()
    }
}

/// Clients that check out more than the pool holds: `holders` keep one lease each,
/// `cyclers` check out and return in a loop. Every error (the main gone, the backup not
/// serving yet, no seat left) is retried.
fn start_load(
    producer: &shared::signing::Verifier,
    main_url: &str,
    holders: usize,
    cyclers: usize,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for w in 0..holders + cyclers {
        let client = Client::new(main_url, producer.clone()).expect("client");
        let ledger = ledger.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut holding = false;
            // Each worker is one client (one ID, and its client's secret), as an
            // application instance is: a checkout whose answer a kill lost comes back on
            // its retry, and so does a seat whose return a kill lost (a return is answered
            // before it is durable, so a kill can lose an answered return: the seat stays
            // held until its lease ends or its client asks again), rather than staying
            // held by nobody.
            let ask = req(&format!("w{w}"));
            while !stop.load(Ordering::Relaxed) {
                if holding {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                let lease = match client.checkout_lease(&ask).await {
                    Ok(l) => l,
                    Err(e) => {
                        ledger.lock().unwrap().last_error.insert(w, e.to_string());
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                {
                    let mut l = ledger.lock().unwrap();
                    l.grants += 1;
                    l.in_doubt.remove(&lease.lease_id);
                    l.returned.remove(&lease.lease_id);
                    l.held.insert(lease.lease_id, lease.clone());
                }
                if w < holders {
                    holding = true;
                    continue;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
                // In doubt from the moment it is sent until its answer comes. A return that
                // fails is tried again (the main may have died under it) until a server
                // takes it; a lost answer leaves it in doubt.
                {
                    let mut l = ledger.lock().unwrap();
                    l.held.remove(&lease.lease_id);
                    l.in_doubt.insert(lease.lease_id);
                }
                let mut failed = false;
                loop {
                    match client.release(&lease).await {
                        Ok(()) => break,
                        Err(ClientError::Api { body, .. }) if body.code == ErrorCode::NotFound => {
                            // Taken by a server whose answer was lost, then not known.
                            failed = true;
                            break;
                        }
                        Err(_) if !stop.load(Ordering::Relaxed) => {
                            failed = true;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Err(_) => break,
                    }
                }
                if !failed {
                    let mut l = ledger.lock().unwrap();
                    l.in_doubt.remove(&lease.lease_id);
                    l.returned.insert(lease.lease_id);
                }
            }
        }));
    }
    tasks
}

/// Samples both servers' own lease lists until stopped; returns the most seats either
/// ever held at once.
fn watch_counts(
    servers: Vec<(String, String)>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(u32, u32)> {
    tokio::spawn(async move {
        let mut max = (0, 0);
        let mut samples = 0;
        while !stop.load(Ordering::Relaxed) {
            for (i, (url, token)) in servers.iter().enumerate() {
                if let Some(n) = tests::seats_held(url, token, FEATURE).await {
                    samples += 1;
                    if i == 0 {
                        max.0 = max.0.max(n);
                    } else {
                        max.1 = max.1.max(n);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            samples > 10,
            "too few samples of the lease lists: {samples}"
        );
        max
    })
}

/// 4 holders and 8 cyclers wanting 12 seats of 8 (the count always contended) through the
/// main, and a watch on both servers' own lease lists.
struct Load {
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    watcher: tokio::task::JoinHandle<(u32, u32)>,
}

impl Load {
    fn start(bo: &BackOffice, main: &LicenseServer, backup: &LicenseServer) -> Load {
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = start_load(
            &bo.producer(),
            &main.url,
            4,
            8,
            ledger.clone(),
            stop.clone(),
        );
        let watcher = watch_counts(
            vec![
                (main.url.clone(), main.admin_token()),
                (backup.url.clone(), backup.admin_token()),
            ],
            stop.clone(),
        );
        Load {
            ledger,
            stop,
            tasks,
            watcher,
        }
    }

    /// Stops the clients and the watch: an error if either server ever held more than
    /// the count.
    async fn finish(self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await?;
        }
        let (max_main, max_backup) = self.watcher.await?;
        ensure!(
            max_main <= SEATS && max_backup <= SEATS,
            "over-allocation: main held {max_main}, backup {max_backup} of {SEATS}"
        );
        Ok(())
    }
}

/// Waits until the load has made `more` grants beyond `since`; on a stall, an error with
/// what the clients last heard and what each server says and logged.
async fn grants_resume(
    ledger: &Mutex<Ledger>,
    since: u64,
    more: u64,
    what: &str,
    servers: &[&LicenseServer],
) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if ledger.lock().unwrap().grants > since + more {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (grants, held, doubt, errors) = {
        let l = ledger.lock().unwrap();
        (
            l.grants,
            l.held.len(),
            l.in_doubt.len(),
            l.last_error.clone(),
        )
    };
    let mut report = format!(
        "timed out after {WAIT:?} waiting for {what}: {grants} grants ({since} before), \
         {held} held, {doubt} in doubt; the clients' latest errors: {errors:#?}\n"
    );
    for s in servers {
        report += &server_report(s, 80, |l| !l.contains("DEBUG")).await;
    }
    bail!(report)
}

/// What a server says (its lease count and status) and the last `lines` lines of its log
/// that `keep` keeps.
async fn server_report(s: &LicenseServer, lines: usize, keep: impl Fn(&str) -> bool) -> String {
    let status = s
        .status()
        .await
        .map_or_else(|e| e.to_string(), |v| v.to_string());
    let leases = s.leases(FEATURE).await.map(|l| l.len());
    let log = s.log_text();
    let kept: Vec<&str> = log.lines().filter(|l| keep(l)).collect();
    let tail = kept[kept.len().saturating_sub(lines)..].join("\n");
    format!("\n== {} ({leases:?} leases): {status}\n{tail}\n", s.url)
}

/// What the servers know of a lease the clients hold and the main lost: its grant, whether
/// the backup has it, and what both logged.
async fn missing_lease_report(
    lease: &Lease,
    main: &LicenseServer,
    backup: &LicenseServer,
) -> String {
    let id = lease.lease_id.to_string();
    let on_backup = backup
        .leases(FEATURE)
        .await
        .map(|l| tests::lease_ids(&l).contains(&id));
    let mut report = format!(
        "client {} granted at {} by {:?}; on the backup: {on_backup:?}\n",
        lease.client_id, lease.granted_at, lease.served_by
    );
    for s in [main, backup] {
        report += &server_report(s, 120, |l| {
            !l.contains("DEBUG") && !l.contains("request refused") || l.contains(&id)
        })
        .await;
    }
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_main_under_load_then_failback() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let (bo, _fx, pair) = setup(&[]).await?;
    let mut main = pair.start_main().await?;
    let backup = pair.start_backup().await?;
    wait_paired(&main, &backup, WAIT).await?;

    let load = Load::start(&bo, &main, &backup);
    let ledger = load.ledger.clone();
    grants_resume(&ledger, 0, 100, "grants under load", &[&main, &backup]).await?;

    main.kill9();
    let killed = Instant::now();
    let (held_at_kill, grants_at_kill) = {
        let l = ledger.lock().unwrap();
        (l.held.clone(), l.grants)
    };
    ensure!(!held_at_kill.is_empty(), "no lease held when the main died");

    // Clients continue on the backup.
    grants_resume(
        &ledger,
        grants_at_kill,
        20,
        "grants on the backup",
        &[&backup],
    )
    .await?;
    let takeover = killed.elapsed();
    let st = backup.status().await?;
    ensure!(st["server_status"] == "active", "backup status: {st}");
    ensure!(st["pair_status"] == "main_not_available", "backup: {st}");

    // Every lease acknowledged before the kill is held by the backup.
    let on_backup = tests::lease_ids(&backup.leases(FEATURE).await?);
    let released = ledger.lock().unwrap().released();
    for id in held_at_kill.keys() {
        ensure!(
            on_backup.contains(&id.to_string()) || released.contains(id),
            "lease {id}, acknowledged before the kill, is not on the backup"
        );
    }
    // A lease the main granted is renewed on the backup with its own token.
    let from_main = held_at_kill
        .values()
        .find(|l| on_backup.contains(&l.lease_id.to_string()))
        .context("a lease of the main held on the backup")?
        .clone();
    let direct = Client::new(&backup.url, bo.producer())?;
    let renewed = direct.renew(&from_main).await?;
    ensure!(renewed.served_by.as_deref() == Some(backup.url.as_str()));
    ensure!(renewed.main_uri.as_deref() == Some(main.url.as_str()));
    // And one the backup grants, held through the failback.
    let from_backup = eventually(WAIT, "a seat on the backup", || async {
        direct.checkout_lease(&req("held-on-backup")).await.ok()
    })
    .await;
    ensure!(from_backup.served_by.as_deref() == Some(backup.url.as_str()));

    // The main comes back: it takes the backup's changes, then serves; clients return.
    let grants_before_failback = ledger.lock().unwrap().grants;
    main.restart().await?;
    wait_paired(&main, &backup, WAIT).await?;
    let log = main.log_text();
    ensure!(
        log.contains("recovering") && log.contains("took the backup's changes back"),
        "the main did not recover through the backup:\n{}",
        log.lines()
            .filter(|l| !l.contains("DEBUG"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    grants_resume(
        &ledger,
        grants_before_failback,
        20,
        "grants on the main again",
        &[&main, &backup],
    )
    .await?;
    load.finish().await?;

    // Nothing lost in either move: every lease the clients hold is on the main, which
    // renews leases the backup granted.
    let held = ledger.lock().unwrap().held.clone();
    let doubt = ledger.lock().unwrap().in_doubt.clone();
    let on_main = tests::lease_ids(&main.leases(FEATURE).await?);
    for id in held.keys() {
        ensure!(
            on_main.contains(&id.to_string()) || doubt.contains(id),
            "lease {id} is not on the main after failback"
        );
    }
    ensure!(on_main.contains(&from_backup.lease_id.to_string()));
    let renewed = Client::new(&main.url, bo.producer())?
        .renew(&from_backup)
        .await?;
    ensure!(renewed.served_by.as_deref() == Some(main.url.as_str()));
    // The backup stands by again and sends clients to the main.
    let via_backup = Client::new(&backup.url, bo.producer())?;
    let lease = via_backup.checkout_lease(&req("late-client")).await?;
    ensure!(
        lease.served_by.as_deref() == Some(main.url.as_str()),
        "{lease:?}"
    );
    eprintln!("takeover (kill -9 to 20 more grants on the backup): {takeover:?}");
    Ok(())
}

/// A kill -9 can leave the backup holding changes the main lost (none of them
/// acknowledged). Killed
/// under load and restarted at once, before the backup would take over, three times: the
/// main comes back with every acknowledged lease, takes in what only the backup holds, and
/// neither server ever holds more than the count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_main_under_load_and_an_immediate_restart_lose_nothing() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let (bo, _fx, pair) = setup(&[("FAILOVER_TIMEOUT", "60s")]).await?;
    let mut main = pair.start_main().await?;
    let backup = pair.start_backup().await?;
    wait_paired(&main, &backup, WAIT).await?;
    let load = Load::start(&bo, &main, &backup);
    let ledger = load.ledger.clone();
    let mut took_back = 0;
    for round in 0..3 {
        let before = ledger.lock().unwrap().grants;
        grants_resume(&ledger, before, 50, "grants under load", &[&main, &backup]).await?;
        main.kill9();
        let held_at_kill = ledger.lock().unwrap().held.clone();
        main.restart().await?;
        wait_paired(&main, &backup, WAIT).await?;
        ensure!(
            backup.status().await?["server_status"] != "active",
            "round {round}: the backup took over (FAILOVER_TIMEOUT is 60 s)"
        );
        let on_main = tests::lease_ids(&main.leases(FEATURE).await?);
        let released = ledger.lock().unwrap().released();
        for (id, lease) in &held_at_kill {
            if !(on_main.contains(&id.to_string()) || released.contains(id)) {
                bail!(
                    "round {round}: lease {id}, acknowledged before the kill, is not on the main\n{}",
                    missing_lease_report(lease, &main, &backup).await
                );
            }
        }
        if main
            .log_text()
            .contains("the backup holds changes this server lacks")
        {
            took_back += 1;
        }
    }
    // How often the kill fell between the backup's copy and the main's own sync.
    eprintln!("the main took changes back from its backup after {took_back} of 3 restarts");
    let before = ledger.lock().unwrap().grants;
    grants_resume(
        &ledger,
        before,
        20,
        "grants after the last restart",
        &[&main, &backup],
    )
    .await?;
    load.finish().await?;
    let held = ledger.lock().unwrap().held.clone();
    let on_main = tests::lease_ids(&main.leases(FEATURE).await?);
    for id in held.keys() {
        ensure!(on_main.contains(&id.to_string()), "lease {id} lost");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_link_then_healed() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let (bo, _fx, mut pair) = setup(&[]).await?;
    // The main reaches its backup only through a proxy the test controls; clients reach
    // both directly.
    let proxy = Proxy::start(pair.backup_port).await?;
    pair.main_env.retain(|(k, _)| k != "LICENSING_BACKUP_URI");
    pair.main_env
        .push(("LICENSING_BACKUP_URI".into(), proxy.url()));
    let main = pair.start_main().await?;
    let backup = pair.start_backup().await?;
    wait_paired(&main, &backup, WAIT).await?;
    let on_main = Client::new(&main.url, bo.producer())?;
    let a1 = on_main.checkout_lease(&req("a1")).await?;

    proxy.cut();
    // The backup hears nothing and takes over; the main loses its backup and serves on.
    eventually(WAIT, "the backup taking over", || async {
        let s = backup.status().await.ok()?;
        (s["server_status"] == "active").then_some(())
    })
    .await;
    eventually(WAIT, "the main serving alone", || async {
        (main.pair_status().await.as_deref() == Some("backup_not_available")).then_some(())
    })
    .await;
    let a2 = on_main.checkout_lease(&req("a2")).await?;
    ensure!(a2.served_by.as_deref() == Some(main.url.as_str()));
    let on_backup = Client::new(&backup.url, bo.producer())?;
    let b1 = on_backup.checkout_lease(&req("b1")).await?;
    ensure!(b1.served_by.as_deref() == Some(backup.url.as_str()));
    // Each side alone never exceeds the count.
    for s in [&main, &backup] {
        let n = tests::seats_held(&s.url, &s.admin_token(), FEATURE)
            .await
            .unwrap_or(0);
        ensure!(n <= SEATS, "{} holds {n} of {SEATS}", s.name);
    }

    proxy.heal();
    // The main finds the backup serving, takes its changes back, then both pair again.
    wait_paired(&main, &backup, WAIT).await?;
    let held = tests::lease_ids(&main.leases(FEATURE).await?);
    for l in [&a1, &a2, &b1] {
        ensure!(
            held.contains(&l.lease_id.to_string()),
            "{} lost in the heal",
            l.client_id
        );
    }
    // The backup stands by: its client is sent to the main, which renews b1.
    let renewed = on_backup.renew(&b1).await?;
    ensure!(renewed.served_by.as_deref() == Some(main.url.as_str()));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_start_order_ends_paired() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let (bo, _fx, pair) = setup(&[]).await?;

    // The backup first: the back office refuses it (MAIN_NOT_REGISTERED) until the main
    // has registered the pair; it never serves.
    let mut backup = pair.start_backup().await?;
    eventually(WAIT, "the backup waiting for its main", || async {
        let s = backup.status().await.ok()?;
        (s["backoffice"]["state"] == "waiting_for_main").then_some(s)
    })
    .await;
    ensure!(backup.status().await?["server_status"] == "ready");
    let mut main = pair.start_main().await?;
    wait_paired(&main, &backup, WAIT).await?;
    let lease = Client::new(&main.url, bo.producer())?
        .checkout_lease(&req("c1"))
        .await?;

    // Both down, the main first again.
    main.kill9();
    backup.kill9();
    main.restart().await?;
    backup.restart().await?;
    wait_paired(&main, &backup, WAIT).await?;

    // The backup restarted while the main is down: it takes over from its copy.
    main.kill9();
    backup.restart().await?;
    eventually(WAIT, "the restarted backup taking over", || async {
        let s = backup.status().await.ok()?;
        (s["server_status"] == "active").then_some(())
    })
    .await;
    ensure!(tests::lease_ids(&backup.leases(FEATURE).await?).contains(&lease.lease_id.to_string()));
    main.restart().await?;
    wait_paired(&main, &backup, WAIT).await?;

    // The main restarted while the backup is down: it serves alone, then pairs.
    backup.kill9();
    main.restart().await?;
    eventually(WAIT, "the main serving alone", || async {
        (main.pair_status().await.as_deref() == Some("backup_not_available")).then_some(())
    })
    .await;
    let alone = Client::new(&main.url, bo.producer())?
        .checkout_lease(&req("c2"))
        .await?;
    backup.restart().await?;
    wait_paired(&main, &backup, WAIT).await?;
    let on_backup = tests::lease_ids(&backup.leases(FEATURE).await?);
    for l in [&lease, &alone] {
        ensure!(
            on_backup.contains(&l.lease_id.to_string()),
            "{} not replicated",
            l.client_id
        );
    }

    // The operator's view of the pair, from either server: both, and who serves.
    for from in [&main.url, &backup.url] {
        let out = std::process::Command::new(binary("license-server"))
            .args(["status", "--url", from, "--pair", "all"])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success(),
            "status: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        ensure!(
            text.contains(&main.url) && text.contains(&backup.url),
            "status --pair all from {from}:\n{text}"
        );
        ensure!(text.contains("pair: paired available"), "{text}");
        ensure!(
            text.lines()
                .any(|l| l.starts_with("cad") && l.contains(main.url.as_str())),
            "who serves cad:\n{text}"
        );
    }
    // With each server's own operator token: who holds the seats, the backup holding its
    // main's leases.
    for server in [&main, &backup] {
        let dir = server.data_dir.display().to_string();
        let out = server.operator(&["status", "--pair", "all", "--data-dir", &dir])?;
        let text = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success(),
            "status: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for l in [&lease, &alone] {
            ensure!(
                text.contains(&l.lease_id.to_string()),
                "{} not shown by {}:\n{text}",
                l.client_id,
                server.url
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_interval_ends_the_backups_service() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let (bo, _fx, pair) = setup(&[("FAILOVER_MAINTENANCE_INTERVAL", "3s")]).await?;
    let mut main = pair.start_main().await?;
    let backup = pair.start_backup().await?;
    wait_paired(&main, &backup, WAIT).await?;
    main.kill9();
    let c = Client::new(&backup.url, bo.producer())?;
    let lease = eventually(WAIT, "a checkout on the backup", || async {
        c.checkout_lease(&req("m1")).await.ok()
    })
    .await;
    ensure!(lease.served_by.as_deref() == Some(backup.url.as_str()));
    let st = backup.status().await?;
    ensure!(st["pair"]["maintenance_ends_at"].as_i64().is_some(), "{st}");
    let err = eventually(WAIT, "the maintenance interval to end", || async {
        match c.checkout_lease(&req("m2")).await {
            Err(e) if e.code() == Some(ErrorCode::MaintenanceIntervalExpired) => Some(e),
            _ => None,
        }
    })
    .await;
    ensure!(err.body().is_some_and(|b| !b.message.is_empty()));
    ensure!(backup.status().await?["server_status"] == "ready");
    Ok(())
}

/// The servers the account sees at the back office, by hostid.
async fn account_servers(fx: &Fixture) -> Result<BTreeMap<String, Value>> {
    let v = fx.user.get("/api/v1/account/servers").await?.ok()?;
    Ok(v.as_array()
        .context("servers")?
        .iter()
        .map(|s| (s["hostid"].as_str().unwrap_or("").to_owned(), s.clone()))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absence_limit_and_operator_changes_reach_everyone() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let (bo, fx, pair) = setup(&[("BACKUP_ABSENCE_LIMIT", "3s")]).await?;
    let main = pair.start_main().await?;
    let mut backup = pair.start_backup().await?;
    wait_paired(&main, &backup, WAIT).await?;
    // The back office shows the pair and what the servers report.
    eventually(WAIT, "the pair at the back office", || async {
        let s = account_servers(&fx).await.ok()?;
        let m = s.get(&pair.main_hostid)?;
        (m["partner_hostid"] == pair.backup_hostid.as_str()
            && m["pair_status"] == "paired_available")
            .then_some(())
    })
    .await;

    // A new backup address reaches clients with their next lease answer.
    let client = Client::new(&main.url, bo.producer())?;
    let l1 = client.checkout_lease(&req("x1")).await?;
    ensure!(l1.backup_uri.as_deref() == Some(backup.url.as_str()));
    ensure!(client.learned_backup().as_deref() == Some(backup.url.as_str()));
    let moved = format!("http://127.0.0.1:{}", pair.backup_port);
    let out = std::process::Command::new(binary("license-server"))
        .args([
            "pair",
            "set-backup",
            &moved.replace("127.0.0.1", "localhost"),
            "--url",
            &main.url,
        ])
        .env("ADMIN_TOKEN", main.admin_token())
        .output()?;
    ensure!(
        out.status.success(),
        "set-backup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let renewed = client.renew(&l1).await?;
    ensure!(
        renewed.backup_uri.as_deref() == Some(moved.replace("127.0.0.1", "localhost").as_str())
    );
    ensure!(client.learned_backup() == renewed.backup_uri);
    wait_paired(&main, &backup, WAIT).await?;

    // The backup is away longer than BACKUP_ABSENCE_LIMIT: the main drops it, says so
    // in its status, stops naming it to clients and tells the back office.
    backup.kill9();
    eventually(WAIT, "the main dropping its absent backup", || async {
        let s = main.status().await.ok()?;
        (s["pair"]["detached"] == true).then_some(s)
    })
    .await;
    // (The status shows the drop as soon as it is decided; the log line follows once it
    // is durable.)
    eventually(WAIT, "the drop in the main's log", || async {
        main.log_text()
            .contains("BACKUP_ABSENCE_LIMIT")
            .then_some(())
    })
    .await;
    let l2 = client.renew(&l1).await?;
    ensure!(l2.backup_uri.is_none(), "{l2:?}");
    ensure!(client.learned_backup().is_none());
    eventually(WAIT, "the back office removing the backup", || async {
        let s = account_servers(&fx).await.ok()?;
        let m = s.get(&pair.main_hostid)?;
        (m["partner_hostid"].is_null() && !s.contains_key(&pair.backup_hostid)).then_some(())
    })
    .await;

    // An operator removes a backup from the backup's side: the main learns it at once.
    let fx2 = bo.fixture(&[FEATURE], 10).await?;
    let pair2 = PairSetup::new(&bo, &fx2, 4, &[])?;
    let main2 = pair2.start_main().await?;
    let backup2 = pair2.start_backup().await?;
    wait_paired(&main2, &backup2, WAIT).await?;
    let out = std::process::Command::new(binary("license-server"))
        .args(["pair", "detach", "--url", &backup2.url])
        .env("ADMIN_TOKEN", backup2.admin_token())
        .output()?;
    ensure!(
        out.status.success(),
        "detach: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = main2.status().await?;
    ensure!(s["pair"]["detached"] == true, "main2: {s}");
    ensure!(s["backup_uri"].is_null());
    let l = Client::new(&main2.url, bo.producer())?
        .checkout_lease(&req("y1"))
        .await?;
    ensure!(l.backup_uri.is_none(), "{l:?}");
    eventually(
        WAIT,
        "the back office removing the backup that left",
        || async {
            let s = account_servers(&fx2).await.ok()?;
            s.get(&pair2.main_hostid)?["partner_hostid"]
                .is_null()
                .then_some(())
        },
    )
    .await;
    // The backup that left never takes over.
    let mut main2 = main2;
    main2.kill9();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let s = backup2.status().await?;
    if s["server_status"] != "ready" {
        bail!("a detached backup took over: {s}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_main_serves_its_first_rights_while_its_backup_does_not_answer() -> Result<()> {
    let _serial = SERIAL.lock().await;
    // Polls a minute apart, and a backup that accepts connections but never answers:
    // the main's first answer arrives while it is still asking the backup where it
    // stands, and its rights must be taken then, not a minute later. (A client sent to
    // the silent backup meanwhile waits out its own request timeout, 10 s.)
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let hole_url = format!("http://{}", hole.local_addr()?);
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((c, _)) = hole.accept().await {
            open.push(c);
        }
    });
    let (bo, _fx, mut pair) = setup(&[("CAPABILITY_POLL_INTERVAL", "60s")]).await?;
    pair.main_env.retain(|(k, _)| k != "LICENSING_BACKUP_URI");
    pair.main_env
        .push(("LICENSING_BACKUP_URI".into(), hole_url));
    let main = pair.start_main().await?;
    let c = Client::new(&main.url, bo.producer())?;
    let started = std::time::Instant::now();
    let lease = loop {
        match c.checkout_lease(&req("first")).await {
            Ok(l) => break l,
            Err(e) if started.elapsed() > WAIT => {
                bail!("no checkout on the new main: {e}\n{}", main.log_text())
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    ensure!(lease.served_by.as_deref() == Some(main.url.as_str()));
    ensure!(main.pair_status().await.as_deref() == Some("backup_not_available"));
    held.abort();
    Ok(())
}
