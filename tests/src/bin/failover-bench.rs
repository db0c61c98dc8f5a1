//! Load tool: takeover and failback times of a failover pair, with real processes.
//!
//! Starts a back office (SQLite), a main and its backup with default pair settings, then
//! `--runs` times: a client holds a lease on the main; the main is killed (-9); the time
//! until a checkout succeeds on the backup is the takeover time; the main is started
//! again; the time until a checkout succeeds on the main is the failback time. After
//! each move it checks that the held lease is still held and that no server holds more
//! seats than the count.
//!
//! With `--cluster`: a three-member cluster (default settings) instead; each run kills
//! the leader, times the first checkout served by another member, checks the held lease
//! is on the new leader, and starts the killed member again.
//!
//! cargo build --release --bins && target/release/failover-bench --runs 20 [--cluster]

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use licensing_client::Client;
use shared::lease::CheckoutRequest;
use tests::cluster::{ClusterSetup, wait_cluster};
use tests::{BackOffice, Backend, LicenseServer, PairSetup, wait_paired};

const SEATS: u32 = 8;

fn req(client_id: &str) -> CheckoutRequest {
    tests::checkout_request("cad", client_id)
}

/// Checks out through a client that knows both servers until `want` serves it.
async fn first_checkout_on(client: &Client, want: &str, tag: &str) -> Result<Duration> {
    first_checkout(client, |by| by == want, tag).await
}

/// Checks out until a server `wanted` serves it; how long that took.
async fn first_checkout(
    client: &Client,
    wanted: impl Fn(&str) -> bool,
    tag: &str,
) -> Result<Duration> {
    let start = Instant::now();
    let mut n = 0;
    loop {
        n += 1;
        if let Ok(l) = client.checkout_lease(&req(&format!("{tag}-{n}"))).await
            && l.served_by.as_deref().is_some_and(&wanted)
        {
            let elapsed = start.elapsed();
            client.release(&l).await?;
            return Ok(elapsed);
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!("no checkout by the server wanted within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn holds(server: &LicenseServer, lease_id: &str) -> Result<bool> {
    let leases = server.leases("cad").await?;
    let seats: u64 = leases
        .iter()
        .map(|l| l["count"].as_u64().unwrap_or(0))
        .sum();
    if seats > u64::from(SEATS) {
        bail!("{} holds {seats} seats of {SEATS}", server.name);
    }
    Ok(leases.iter().any(|l| l["lease_id"] == lease_id))
}

fn summary(name: &str, v: &mut [Duration]) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{name}: runs {}  median {:.0} ms  min {:.0} ms  max {:.0} ms",
        v.len(),
        ms(v[v.len() / 2]),
        ms(v[0]),
        ms(v[v.len() - 1])
    );
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut runs = 20;
    let mut cluster = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => runs = args.next().context("--runs N")?.parse()?,
            "--cluster" => cluster = true,
            "-h" | "--help" => {
                println!("failover-bench [--runs 20] [--cluster]");
                return Ok(());
            }
            other => bail!("unknown flag {other}"),
        }
    }
    if cluster {
        return cluster_takeover(runs).await;
    }
    let bo = BackOffice::start(Backend::Sqlite).await?;
    let fx = bo.fixture(&["cad"], 20).await?;
    let pair = PairSetup::new(&bo, &fx, SEATS, &[])?;
    let mut main = pair.start_main().await?;
    let backup = pair.start_backup().await?;
    wait_paired(&main, &backup, Duration::from_secs(30)).await?;
    let client = Client::with_servers([main.url.as_str(), backup.url.as_str()], bo.producer())?;

    let (mut takeover, mut failback) = (Vec::new(), Vec::new());
    let mut lost = 0;
    for run in 0..runs {
        let held = Client::new(&main.url, bo.producer())?
            .checkout_lease(&req(&format!("holder-{run}")))
            .await?;
        let id = held.lease_id.to_string();

        main.kill9();
        takeover.push(first_checkout_on(&client, &backup.url, &format!("t{run}")).await?);
        if !holds(&backup, &id).await? {
            lost += 1;
        }

        let restarted = Instant::now();
        main.restart().await?;
        first_checkout_on(&client, &main.url, &format!("f{run}")).await?;
        failback.push(restarted.elapsed());
        if !holds(&main, &id).await? {
            lost += 1;
        }
        client.release(&held).await?;
        wait_paired(&main, &backup, Duration::from_secs(30)).await?;
        eprintln!(
            "run {run}: takeover {:?}, failback {:?}",
            takeover[run], failback[run]
        );
    }
    println!(
        "failover pair, FAILOVER_TIMEOUT 1s, HEARTBEAT_INTERVAL 250ms (defaults), {SEATS} seats"
    );
    summary(
        "takeover (kill -9 of the main -> first checkout on the backup)",
        &mut takeover,
    );
    summary(
        "failback (main restarted -> first checkout on the main)",
        &mut failback,
    );
    println!("leases lost: {lost}; over-allocation: none seen (every check passed)");
    Ok(())
}

/// The takeover time of a three-member cluster with default settings.
async fn cluster_takeover(runs: usize) -> Result<()> {
    let bo = BackOffice::start(Backend::Sqlite).await?;
    let fx = bo.fixture(&["cad"], 40).await?;
    let setup = ClusterSetup::new(&bo, &fx, SEATS, &[]).await?;
    let mut members = setup.start_all().await?;
    let client = Client::with_servers(members.iter().map(|m| m.url.clone()), bo.producer())?;
    let wait = Duration::from_secs(60);
    let (mut takeover, mut lost) = (Vec::new(), 0);
    for run in 0..runs {
        let leader = wait_cluster(
            &members.iter().collect::<Vec<_>>(),
            "operational",
            SEATS,
            wait,
        )
        .await?;
        let held = client
            .checkout_lease(&req(&format!("holder-{run}")))
            .await?;
        let killed = members[leader].url.clone();
        members[leader].kill9();
        takeover.push(first_checkout(&client, |by| by != killed, &format!("t{run}")).await?);
        let alive: Vec<&LicenseServer> = members.iter().filter(|m| m.url != killed).collect();
        let next = wait_cluster(&alive, "partially_operational", SEATS, wait).await?;
        if !holds(alive[next], &held.lease_id.to_string()).await? {
            lost += 1;
        }
        client.release(&held).await?;
        members[leader].restart().await?;
        eprintln!("run {run}: takeover {:?}", takeover[run]);
    }
    println!(
        "three-member cluster, raft heartbeat 100 ms, election timeout 0.5-1 s, {SEATS} seats"
    );
    summary(
        "takeover (kill -9 of the leader -> first checkout on another member)",
        &mut takeover,
    );
    println!("leases lost: {lost}; over-allocation: none seen (every check passed)");
    Ok(())
}
