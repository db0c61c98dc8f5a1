//! Load tool: signed capability polls per second against a real back office.
//!
//! Starts a back office (from the same target directory: build with `--release --bins`),
//! registers `--servers` license servers through the capability protocol, then polls as
//! those servers from `--concurrency` connections for `--seconds`, every answer signed.
//!
//! cargo build --release --bins && target/release/bo-loadgen --backend sqlite

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;
use tests::{BackOffice, Backend, capability_request};

struct Args {
    backend: Backend,
    servers: usize,
    concurrency: usize,
    seconds: u64,
}

fn args() -> Result<Args> {
    let mut a = Args {
        backend: Backend::Sqlite,
        servers: 1000,
        concurrency: 32,
        seconds: 10,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().context("flag needs a value");
        match flag.as_str() {
            "--backend" => {
                a.backend = match val()?.as_str() {
                    "sqlite" => Backend::Sqlite,
                    "postgres" => Backend::Postgres,
                    other => bail!("unknown backend {other}"),
                }
            }
            "--servers" => a.servers = val()?.parse()?,
            "--concurrency" => a.concurrency = val()?.parse()?,
            "--seconds" => a.seconds = val()?.parse()?,
            "-h" | "--help" => {
                println!(
                    "bo-loadgen [--backend sqlite|postgres] [--servers 1000] [--concurrency 32] [--seconds 10]\n\
                     PostgreSQL needs TEST_POSTGRES_URL (scripts/test prints how it is set)."
                );
                std::process::exit(0);
            }
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(a)
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = args()?;
    let bo =
        BackOffice::start_with(a.backend, &[("RUST_LOG", "warn"), ("DB_POOL_SIZE", "8")]).await?;
    let fx = bo.fixture(&["cad", "sim", "render"], 1_000_000).await?;
    let api = tests::Api {
        base: bo.url.clone(),
        token: fx.device_token.clone(),
        http: reqwest::Client::new(),
    };
    // Register the servers: pairs for the first half, standalone servers for the rest, each
    // with a share of the line item, so that every poll carries real rights.
    let t0 = Instant::now();
    let mut hosts = Vec::with_capacity(a.servers);
    for i in 0..a.servers {
        let (h, body) = if i % 2 == 0 && i + 1 < a.servers {
            let m = format!("string:m{i}");
            let b = format!("string:b{i}");
            let body = capability_request(&m, "main", Some(&b), &[(&fx.activation_id, 10)]);
            hosts.push((b.clone(), "backup"));
            (m.clone(), (body, "main", Some(b)))
        } else if i % 2 == 1 {
            continue;
        } else {
            let s = format!("string:s{i}");
            (
                s.clone(),
                (
                    capability_request(&s, "standalone", None, &[(&fx.activation_id, 10)]),
                    "standalone",
                    None,
                ),
            )
        };
        let r = api.post("/api/v1/capability", body.0).await?;
        if r.status != 200 {
            bail!("registering {h}: {}", r.body);
        }
        hosts.push((h, body.1));
    }
    println!(
        "registered {} servers on {:?} in {:.1} s",
        hosts.len(),
        a.backend,
        t0.elapsed().as_secs_f64()
    );

    let hosts = Arc::new(
        hosts
            .into_iter()
            .map(|(h, role)| {
                let backup = (role == "main").then(|| h.replace("string:m", "string:b"));
                (h, role, backup)
            })
            .collect::<Vec<_>>(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..a.concurrency {
        let hosts = hosts.clone();
        let stop = stop.clone();
        let errors = errors.clone();
        let url = format!("{}/api/v1/capability", bo.url);
        let token = fx.device_token.clone();
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .build()?;
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(100_000);
            let mut i = w;
            while !stop.load(Ordering::Relaxed) {
                let (h, role, b) = &hosts[i % hosts.len()];
                i += a.concurrency;
                let body = capability_request(h, role, b.as_deref(), &[]);
                let start = Instant::now();
                let ok = match client
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
                    .await
                {
                    Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                if ok {
                    lat.push(start.elapsed());
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            lat
        }));
    }
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(a.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await?);
    }
    let elapsed = start.elapsed().as_secs_f64();
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let result = json!({
        "backend": format!("{:?}", a.backend),
        "servers": hosts.len(),
        "concurrency": a.concurrency,
        "seconds": elapsed,
        "polls": lat.len(),
        "polls_per_second": (lat.len() as f64 / elapsed).round(),
        "errors": errors.load(Ordering::Relaxed),
        "p50_ms": pct(0.50).as_secs_f64() * 1000.0,
        "p99_ms": pct(0.99).as_secs_f64() * 1000.0,
    });
    println!("{result}");
    Ok(())
}
