//! Benchmarks of the license server's store, against the real release binary:
//!
//! * `memory`: checks out `--leases` leases (distinct client IDs like real ones,
//!   `ws-000123.example.net:48213`) from a real server over loopback HTTP and reads the
//!   server's `VmRSS` before and after.
//! * `restart`: for each of `--leases` (e.g. 10000,100000,1000000) writes a store holding
//!   that many live leases the way a server leaves it at its largest (a snapshot plus a
//!   journal tail just short of the next compaction), starts the server on it, kills it
//!   with `SIGKILL` and times each restart from the spawn to the first lease granted
//!   (and to the first `/healthz` answer).
//!
//! `restart --via-http` checks the leases out from the server instead (any build of it,
//! `LICENSE_SERVER_BIN=path`, so an older one can be measured in the same run).
//!
//! Both report the disk's `fdatasync` latency (4 KiB writes in the data directory's file
//! system, before and after) and the machine's load, so figures from different days
//! compare. Build first, then run from the workspace root:
//!
//! ```text
//! cargo build --release -p license-server --examples --bins
//! target/release/examples/store_bench memory --leases 100000
//! target/release/examples/store_bench restart --leases 10000,100000,1000000
//! ```
//!
//! It starts `license-server` and `examples/dev_backoffice` from the same target
//! directory, uses only loopback addresses, and stops everything it started.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use license_server::domain::{Event, Holder, LeaseRecord, Rights, State};
use license_server::identity::{self, Identity};
use license_server::store::{self, StoreOptions};
use shared::HostId;
use shared::signing::Verifier;
use tests::free_port;
use uuid::Uuid;

fn usage() -> ! {
    eprintln!(
        "usage: store_bench memory [--leases 100000] [--connections 32]\n       store_bench restart [--leases 10000,100000,1000000] [--runs 3] [--via-http]\n       store_bench load|populate [--leases N]\n       store_bench fill --port PORT [--leases N]"
    );
    std::process::exit(2)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| usage());
    let mut leases: Vec<usize> = Vec::new();
    let mut connections = 32usize;
    let mut runs = 3usize;
    let mut via_http = false;
    let mut port = None;
    while let Some(flag) = args.next() {
        if flag == "--via-http" {
            via_http = true;
            continue;
        }
        let v = args.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--leases" => {
                leases = v
                    .split(',')
                    .map(|s| s.trim().parse().unwrap_or_else(|_| usage()))
                    .collect()
            }
            "--connections" => connections = v.parse().unwrap_or_else(|_| usage()),
            "--runs" => runs = v.parse().unwrap_or_else(|_| usage()),
            "--port" => port = Some(v.parse().unwrap_or_else(|_| usage())),
            _ => usage(),
        }
    }
    let work = tempfile::Builder::new()
        .prefix("store-bench")
        .tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| "/tmp".into()))
        .expect("a temporary directory");
    let mut procs = Procs(Vec::new());
    match mode.as_str() {
        "memory" => memory(
            work.path(),
            leases.first().copied().unwrap_or(100_000),
            connections,
            &mut procs,
        ),
        "populate" => {
            // A store to try by hand: `store_bench populate --leases N` prints its path.
            let n = leases.first().copied().unwrap_or(100_000);
            let data = work.keep().join("data");
            let (snapshot, journal) = populate(&data, n, None);
            println!(
                "{} ({n} leases, snapshot {snapshot} bytes, journal {journal} bytes)",
                data.display()
            );
        }
        "fill" => {
            // Checks out `--leases` leases from a server already running on `--port`.
            check_out(
                port.unwrap_or_else(|| usage()),
                leases.first().copied().unwrap_or(100_000),
                connections,
            );
        }
        "load" => {
            for n in leases {
                let data = work.path().join(format!("load-{n}"));
                let (snapshot, journal) = populate(&data, n, None);
                for _ in 0..runs {
                    let t = Instant::now();
                    let (state, st, rec) =
                        store::open(&data, StoreOptions::default()).expect("open");
                    let took = t.elapsed();
                    drop(st);
                    println!(
                        "{{\"bench\":\"load\",\"leases\":{},\"snapshot_mib\":{:.1},\"journal_mib\":{:.1},\"replayed\":{},\"open_ms\":{:.0}}}",
                        state.lease_count(),
                        snapshot as f64 / (1 << 20) as f64,
                        journal as f64 / (1 << 20) as f64,
                        rec.replayed,
                        took.as_secs_f64() * 1000.0
                    );
                }
            }
        }
        "restart" => {
            if leases.is_empty() {
                leases = vec![10_000, 100_000, 1_000_000];
            }
            for n in leases {
                restart(work.path(), n, runs, via_http, &mut procs);
            }
        }
        _ => usage(),
    }
}

/// Processes started here, killed when done (or on a panic).
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("own path");
    let examples = exe.parent().expect("examples dir");
    let path = match name {
        "dev_backoffice" => examples.join(name),
        "license-server" if std::env::var_os("LICENSE_SERVER_BIN").is_some() => {
            PathBuf::from(std::env::var_os("LICENSE_SERVER_BIN").expect("checked"))
        }
        _ => examples.parent().expect("target dir").join(name),
    };
    assert!(
        path.exists(),
        "{} is missing: cargo build --release -p license-server --examples --bins",
        path.display()
    );
    path
}

/// The dev back office granting `seats` of `bench`; returns its URL and public key file.
fn start_backoffice(dir: &Path, seats: usize, procs: &mut Procs) -> (String, PathBuf) {
    let port = free_port();
    let child = Command::new(bin("dev_backoffice"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--out-dir", &dir.display().to_string()])
        .args(["--rights", &format!("bench:{seats}")])
        .args(["--token", "bench-token"])
        .stderr(Stdio::null())
        .spawn()
        .expect("dev_backoffice starts");
    procs.0.push(child);
    let key = dir.join("backoffice.pub.pem");
    wait_until(Duration::from_secs(10), || key.exists());
    (format!("http://127.0.0.1:{port}"), key)
}

fn start_server(data: &Path, bo: &(String, PathBuf), port: u16) -> Child {
    Command::new(bin("license-server"))
        .arg("serve")
        .env_clear()
        .env("HOSTID", "string:bench")
        .env("LISTEN", format!("127.0.0.1:{port}"))
        .env("DATA_DIR", data)
        .env("BACKOFFICE_URL", &bo.0)
        .env("BACKOFFICE_TOKEN", "bench-token")
        .env("BACKOFFICE_PUBLIC_KEY", &bo.1)
        .env("LEASE_DURATION", "2h")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("license-server starts")
}

fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A minimal HTTP/1.1 keep-alive client.
struct Conn {
    r: BufReader<TcpStream>,
    port: u16,
}

impl Conn {
    fn connect(port: u16) -> std::io::Result<Conn> {
        let s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Conn {
            r: BufReader::new(s),
            port,
        })
    }

    fn request(&mut self, method: &str, path: &str, body: &str) -> std::io::Result<(u16, String)> {
        let req = format!(
            "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1:{}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            self.port,
            body.len()
        );
        self.r.get_mut().write_all(req.as_bytes())?;
        let mut line = String::new();
        self.r.read_line(&mut line)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let mut len = 0usize;
        loop {
            line.clear();
            self.r.read_line(&mut line)?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; len];
        self.r.read_exact(&mut body)?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

fn checkout_body(client: &str) -> String {
    format!(r#"{{"feature":"bench","client_id":"{client}","count":1}}"#)
}

fn client_id(i: usize) -> String {
    format!("ws-{i:06}.example.net:{}", 1000 + (i * 7919) % 60000)
}

/// Resident and peak memory of a process, in KiB.
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// CPU time a process has used so far, in ms (`/proc/PID/schedstat`, all its threads).
fn cpu_ms(pid: u32) -> f64 {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    dir.filter_map(|t| t.ok())
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .sum::<f64>()
        / 1e6
}

/// Mean and p99 of `fdatasync` after a 4 KiB write, in µs, in `dir`'s file system.
fn fdatasync_us(dir: &Path) -> (f64, f64) {
    let path = dir.join("fdatasync.probe");
    let mut f = std::fs::File::create(&path).expect("probe file");
    let block = [0x5au8; 4096];
    let mut times = Vec::with_capacity(200);
    for _ in 0..200 {
        f.write_all(&block).expect("write");
        let t = Instant::now();
        f.sync_data().expect("fdatasync");
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    drop(f);
    let _ = std::fs::remove_file(&path);
    times.sort_by(f64::total_cmp);
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    (mean, times[times.len() * 99 / 100])
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Checks out `n` leases with distinct client IDs over `connections` connections.
fn check_out(port: u16, n: usize, connections: usize) {
    let per = n.div_ceil(connections);
    std::thread::scope(|s| {
        for t in 0..connections {
            s.spawn(move || {
                let mut c = Conn::connect(port).expect("connect");
                for i in t * per..((t + 1) * per).min(n) {
                    let (status, body) = c
                        .request("POST", "/api/v1/leases", &checkout_body(&client_id(i)))
                        .expect("checkout");
                    assert_eq!(status, 201, "checkout {i}: {body}");
                }
            });
        }
    });
}

/// Waits until the server serves `bench` (the back office's rights are in).
fn wait_serving(port: u16) {
    wait_until(Duration::from_secs(30), || {
        Conn::connect(port)
            .and_then(|mut c| c.request("GET", "/api/v1/features", ""))
            .is_ok_and(|(s, b)| s == 200 && b.contains("\"bench\""))
    });
}

/// Bytes of the files in a data directory.
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn memory(work: &Path, n: usize, connections: usize, procs: &mut Procs) {
    let sync_before = fdatasync_us(work);
    let load_before = loadavg();
    let bo = start_backoffice(work, n * 2, procs);
    let port = free_port();
    let data = work.join("data");
    procs.0.push(start_server(&data, &bo, port));
    let pid = procs.0.last().expect("server").id();
    wait_serving(port);
    let rss_idle = rss_kib(pid);
    let start = Instant::now();
    check_out(port, n, connections);
    let took = start.elapsed();
    // Let the allocator settle (no effect on RSS, which is what it is).
    std::thread::sleep(Duration::from_millis(500));
    let (rss, hwm) = rss_kib(pid);
    let (_, status) = Conn::connect(port)
        .and_then(|mut c| c.request("GET", "/api/v1/status", ""))
        .expect("status");
    let leases = status
        .split("\"leases\":")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(0);
    assert_eq!(leases, n, "the server holds {leases} leases");
    let sync_after = fdatasync_us(work);
    println!(
        "{{\"bench\":\"memory\",\"leases\":{n},\"checkout_seconds\":{:.1},\"rss_idle_mib\":{:.1},\"rss_mib\":{:.1},\"peak_rss_mib\":{:.1},\"bytes_per_lease\":{:.0},\"fdatasync_mean_us\":[{:.0},{:.0}],\"fdatasync_p99_us\":[{:.0},{:.0}],\"loadavg\":[\"{load_before}\",\"{}\"]}}",
        took.as_secs_f64(),
        rss_idle.0 as f64 / 1024.0,
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0,
        (rss.saturating_sub(rss_idle.0) * 1024) as f64 / n as f64,
        sync_before.0,
        sync_after.0,
        sync_before.1,
        sync_after.1,
        loadavg()
    );
}

/// The dev back office's signed answer to `string:bench`, whose key (made in `data` if
/// absent) it binds, taken as the server takes it (kept in `data/capability.jwt`): a
/// server started on `data` then grants without asking the back office first.
fn answer_for(data: &Path, bo: &(String, PathBuf)) -> String {
    store::files::prepare_dir(data).expect("data directory");
    let key = identity::load_or_create_key(data).expect("server key");
    let body = serde_json::json!({
        "request_id": Uuid::new_v4(),
        "hostid": "string:bench",
        "role": "standalone",
        "sent_at": shared::now_unix(),
        "server_key": key.public_key(),
    });
    let token: String = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async {
            let answer: serde_json::Value = reqwest::Client::new()
                .post(format!("{}/api/v1/capability", bo.0))
                .bearer_auth("bench-token")
                .json(&body)
                .send()
                .await
                .expect("the dev back office answers")
                .json()
                .await
                .expect("a capability answer");
            answer["token"].as_str().expect("a token").to_owned()
        });
    let producer = Verifier::from_public_pem(&std::fs::read_to_string(&bo.1).expect("key"))
        .expect("the dev back office's key");
    let claims = producer.decode_capability(&token).expect("a signed answer");
    let hostid = HostId::parse("string:bench").expect("hostid");
    Identity::new(hostid, key, producer, None, Some(data))
        .take_answer(&token, &claims)
        .expect("a binding of the bench server's key");
    token
}

/// Writes a store with `n` live leases as a server leaves it at its largest: a snapshot,
/// then renewals in the journal up to just short of the next compaction. `rights`: the
/// back office's answer to keep as its rights (none: the store has none).
fn populate(data: &Path, n: usize, rights: Option<&str>) -> (u64, u64) {
    let now = shared::now_unix() * 1000;
    let (mut state, st, _) = store::open(data, StoreOptions::default()).expect("open store");
    let mut wanted = st.compaction_wanted();
    let submit = |state: &mut State, ev: Event| {
        let seq = state.apply(&ev);
        st.submit_nowait(seq, ev);
    };
    submit(
        &mut state,
        Event::LeaseKeyCreated {
            key: "YmVuY2gtbGVhc2Uta2V5LTAxMjM0NTY3ODkwMTIzNDU".into(),
        },
    );
    submit(
        &mut state,
        Event::HistoryStarted {
            history: Uuid::new_v4(),
        },
    );
    if let Some(token) = rights {
        submit(
            &mut state,
            Event::RightsUpdated {
                rights: Rights::unverified(token),
                at: now,
            },
        );
    }
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let id = Uuid::new_v4();
        ids.push(id);
        submit(
            &mut state,
            Event::LeaseGranted {
                lease: LeaseRecord {
                    kind: license_server::domain::LeaseKind::default(),
                    id,
                    feature: "bench".into(),
                    version: String::new(),
                    count: 1,
                    client_id: client_id(i),
                    granted_at: now,
                    renewed_at: now,
                    expires_at: now + 7_200_000,
                    granted_by: "string:bench".into(),
                    granted_seq: 0,
                    holder: Holder::of_secret(&client_id(i)),
                    user: String::new(),
                    host: String::new(),
                },
            },
        );
        if i % 10_000 == 0 {
            compact_when_asked(&st, &state, &mut wanted);
        }
    }
    // Everything in a snapshot, then a journal tail up to just short of the threshold.
    let stat = |v: &std::sync::atomic::AtomicU64| v.load(std::sync::atomic::Ordering::Relaxed);
    while stat(&st.stats.snapshot_seq) != state.seq {
        block_on(store::acked(st.barrier())).expect("durable");
        st.compact(state.frozen());
        block_on(store::acked(st.barrier())).expect("durable");
        let asked = Instant::now();
        while stat(&st.stats.snapshot_seq) != state.seq && asked.elapsed() < Duration::from_secs(2)
        {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let threshold = StoreOptions::default()
        .snapshot_after_bytes
        .max(stat(&st.stats.snapshot_bytes));
    let mut i = 0usize;
    loop {
        for _ in 0..1000 {
            let ev = Event::LeaseRenewed {
                id: ids[i % n.max(1)],
                at: now + 1,
                expires_at: now + 7_200_000 + 1,
            };
            submit(&mut state, ev);
            i += 1;
        }
        block_on(store::acked(st.barrier())).expect("durable");
        if stat(&st.stats.journal_bytes) + 100 * 1000 >= threshold {
            break;
        }
    }
    let (snapshot, journal) = (
        stat(&st.stats.snapshot_bytes),
        stat(&st.stats.journal_bytes),
    );
    st.shutdown();
    (snapshot, journal)
}

fn compact_when_asked(
    st: &store::Store,
    state: &State,
    wanted: &mut tokio::sync::watch::Receiver<u64>,
) {
    if wanted.has_changed().unwrap_or(false) {
        wanted.borrow_and_update();
        st.compact(state.frozen());
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(f)
}

fn restart(work: &Path, n: usize, runs: usize, via_http: bool, procs: &mut Procs) {
    let sync_before = fdatasync_us(work);
    let load_before = loadavg();
    let data = work.join(format!("restart-{n}"));
    let bo = start_backoffice(&work.join(format!("bo-{n}")), n * 2, procs);
    let port = free_port();
    // Written by this build's store (at its largest), or by the server itself.
    let (snapshot, journal) = if via_http {
        let mut server = start_server(&data, &bo, port);
        wait_serving(port);
        check_out(port, n, 32);
        let _ = server.kill();
        let _ = server.wait();
        (0, dir_bytes(&data))
    } else {
        let answer = answer_for(&data, &bo);
        populate(&data, n, Some(&answer))
    };
    let mut to_health = Vec::new();
    let mut to_grant = Vec::new();
    let mut cpu = Vec::new();
    // The first start finds the files as the populating process left them; every later
    // one follows a SIGKILL of the server while it serves.
    for run in 0..=runs {
        let start = Instant::now();
        let mut child = start_server(&data, &bo, port);
        let mut health = None;
        let mut conn = loop {
            if let Ok(c) = Conn::connect(port) {
                break c;
            }
            assert!(start.elapsed() < Duration::from_secs(120), "no answer");
            std::thread::sleep(Duration::from_millis(1));
        };
        loop {
            if health.is_none()
                && conn
                    .request("GET", "/healthz", "")
                    .is_ok_and(|(s, _)| s == 200)
            {
                health = Some(start.elapsed());
            }
            let client = format!("restart-probe-{run}");
            match conn.request("POST", "/api/v1/leases", &checkout_body(&client)) {
                Ok((201, _)) => break,
                Ok(_) => {}
                Err(_) => conn = Conn::connect(port).expect("reconnect"),
            }
            assert!(start.elapsed() < Duration::from_secs(120), "no grant");
            std::thread::sleep(Duration::from_millis(1));
        }
        let granted = start.elapsed();
        let used = cpu_ms(child.id());
        if run > 0 {
            cpu.push(used);
            to_health.push(health.unwrap_or(granted).as_secs_f64() * 1000.0);
            to_grant.push(granted.as_secs_f64() * 1000.0);
        }
        // kill -9 while it serves.
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
    }
    let sync_after = fdatasync_us(work);
    to_health.sort_by(f64::total_cmp);
    to_grant.sort_by(f64::total_cmp);
    cpu.sort_by(f64::total_cmp);
    let median = |v: &[f64]| v[v.len() / 2];
    println!(
        "{{\"bench\":\"restart\",\"leases\":{n},\"snapshot_mib\":{:.1},\"journal_mib\":{:.1},\"runs\":{runs},\"to_healthz_ms\":{{\"median\":{:.0},\"max\":{:.0}}},\"to_first_grant_ms\":{{\"median\":{:.0},\"max\":{:.0}}},\"server_cpu_ms_to_first_grant\":{:.0},\"fdatasync_mean_us\":[{:.0},{:.0}],\"fdatasync_p99_us\":[{:.0},{:.0}],\"loadavg\":[\"{load_before}\",\"{}\"]}}",
        snapshot as f64 / (1 << 20) as f64,
        journal as f64 / (1 << 20) as f64,
        median(&to_health),
        to_health.last().copied().unwrap_or(0.0),
        median(&to_grant),
        to_grant.last().copied().unwrap_or(0.0),
        median(&cpu),
        sync_before.0,
        sync_after.0,
        sync_before.1,
        sync_after.1,
        loadavg()
    );
    let _ = std::fs::remove_dir_all(&data);
}
