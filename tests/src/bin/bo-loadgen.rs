//! Load tool: signed capability polls per second against a real back office.
//!
//! Starts a back office (from the same target directory: build with `--release --bins`),
//! registers `--servers` license servers through the capability protocol, each with a key
//! of its own, then polls as those servers from `--concurrency` keep-alive connections for
//! `--seconds`, every poll carrying the server's public key and every answer signed, with
//! a binding of that key (the first answer on each connection is verified: signature,
//! addressee, request ID, freshness, rights, the binding of the server's key and, for a
//! pair, the pair's secret). With `--report` each poll also carries a usage report, as a
//! license server's do. With `--baseline-seconds N` it first measures, for N seconds on
//! the same server with the same client, a trivial endpoint (`GET /api/v1/signing-key`: no
//! storage, no signing) for a ratio that a noisy machine does not blur.
//!
//! Before and after the run it measures the disk the data lives on (`fdatasync` of 4 KiB
//! writes in a loop, in the data directory: SQLite's file, and on this machine the same
//! disk as PostgreSQL's) and reads the machine's load average, so that figures from
//! different days can be compared.
//!
//! The client is a minimal HTTP/1.1 one over plain sockets, as cheap as `wrk`: on two cores
//! it shares the machine with the back office, and a full client (reqwest) cost about as
//! much CPU per request as the back office's storage work.
//!
//! With `--links` it measures the live link instead: every server holds its link (one
//! connection each), the back office's memory and CPU are measured at rest for
//! `--seconds`, then one change of the line item every server holds (its expiry) is made
//! through the producer API, and the time until every link has its signed answer is
//! measured. With `--processes 2` (PostgreSQL) the links are spread over two back-office
//! processes on the one database, and the change is made through the first.
//!
//! cargo build --release -p backoffice -p tests --bins
//! target/release/bo-loadgen --backend sqlite --baseline-seconds 5
//! target/release/bo-loadgen --backend postgres --links --processes 2 --servers 1000

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use tests::{BackOffice, Backend, capability_request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Args {
    backend: Backend,
    servers: usize,
    concurrency: usize,
    seconds: u64,
    baseline_seconds: u64,
    report: bool,
    /// Measure the live link instead of polls.
    links: bool,
    /// Back-office processes on the one database (`--links` only).
    processes: usize,
    /// Back-office settings besides the tool's own (`--set NAME=VALUE`).
    settings: Vec<(String, String)>,
}

fn args() -> Result<Args> {
    let mut a = Args {
        backend: Backend::Sqlite,
        servers: 1000,
        concurrency: 32,
        seconds: 10,
        baseline_seconds: 0,
        report: false,
        links: false,
        processes: 1,
        settings: Vec::new(),
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
            "--baseline-seconds" => a.baseline_seconds = val()?.parse()?,
            "--report" => a.report = true,
            "--links" => a.links = true,
            "--processes" => a.processes = val()?.parse()?,
            "--set" => {
                let v = val()?;
                let (name, value) = v.split_once('=').context("--set NAME=VALUE")?;
                a.settings.push((name.to_owned(), value.to_owned()));
            }
            "-h" | "--help" => {
                println!(
                    "bo-loadgen [--backend sqlite|postgres] [--servers 1000] [--concurrency 32] \
                     [--seconds 10] [--baseline-seconds 0] [--report] [--links [--processes 2]] \
                     [--set NAME=VALUE]…\n\
                     PostgreSQL needs TEST_POSTGRES_URL (scripts/test prints how it is set)."
                );
                std::process::exit(0);
            }
            other => bail!("unknown flag {other}"),
        }
    }
    if a.concurrency == 0 || a.servers < 2 {
        bail!("--concurrency must be at least 1 and --servers at least 2");
    }
    Ok(a)
}

/// CPU time (user + system) a process has used, from /proc.
fn cpu_time(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name; in
    // clock ticks, which Linux reports at 100 a second.
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// CPU time of a process's threads, added up by thread name.
fn thread_cpu_times(pid: &str) -> std::collections::BTreeMap<String, Duration> {
    let mut by_name = std::collections::BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return by_name;
    };
    for t in dir.filter_map(Result::ok) {
        let tid = t.file_name().to_string_lossy().into_owned();
        let path = format!("{pid}/task/{tid}");
        let name = std::fs::read_to_string(format!("/proc/{path}/comm")).unwrap_or_default();
        *by_name
            .entry(name.trim().to_owned())
            .or_insert(Duration::ZERO) += cpu_time(&path);
    }
    by_name
}

/// CPU time of the PostgreSQL processes that work for database `db`: its connections
/// (`postgres: USER DB HOST(PORT) …`, autovacuum workers naming it) and the server's own
/// (WAL writer, checkpointer, …). Other databases' connections (other tests on the same
/// server) are left out.
fn postgres_cpu_time(db: &str) -> Duration {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Duration::ZERO;
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| {
            let pid = e.file_name().into_string().ok()?;
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            if comm.trim() != "postgres" {
                return None;
            }
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline);
            let connection = cmdline.contains('(') || cmdline.contains("autovacuum worker");
            (!connection || cmdline.split_whitespace().any(|w| w == db)).then(|| cpu_time(&pid))
        })
        .sum()
}

/// Busy and total CPU time of the whole machine (all cores), from /proc/stat.
fn machine_cpu() -> (Duration, Duration) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let total: u64 = f.iter().take(8).sum();
    // idle and iowait
    let idle = f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
    let ms = |ticks: u64| Duration::from_millis(ticks * 10);
    (ms(total - idle), ms(total))
}

/// The disk's `fdatasync` latency where `dir` is: 4 KiB written and synced, 200 times or
/// for at most two seconds.
fn fsync_latency(dir: &std::path::Path) -> Result<Value> {
    use std::io::Write;
    let path = dir.join("fsync-probe");
    let mut f = std::fs::File::create(&path)?;
    let block = [0x5a_u8; 4096];
    let mut lat = Vec::with_capacity(200);
    let started = Instant::now();
    while lat.len() < 200 && started.elapsed() < Duration::from_secs(2) {
        f.write_all(&block)?;
        let t = Instant::now();
        f.sync_data()?;
        lat.push(t.elapsed());
    }
    drop(f);
    std::fs::remove_file(&path)?;
    lat.sort();
    let ms = |d: Duration| (d.as_secs_f64() * 1e5).round() / 100.0;
    let mean = lat.iter().sum::<Duration>() / u32::try_from(lat.len()).unwrap_or(1).max(1);
    let p99 = lat[(lat.len() * 99 / 100).min(lat.len() - 1)];
    Ok(json!({
        "samples": lat.len(),
        "mean_ms": ms(mean),
        "p50_ms": ms(lat[lat.len() / 2]),
        "p99_ms": ms(p99),
    }))
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// One keep-alive HTTP/1.1 connection: a request out, a response in.
struct Conn {
    addr: String,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

impl Conn {
    fn new(addr: &str) -> Conn {
        Conn {
            addr: addr.to_owned(),
            stream: None,
            buf: Vec::with_capacity(16 * 1024),
        }
    }

    /// Sends `request` (a whole HTTP/1.1 request) and returns the status and the body.
    async fn exchange(&mut self, request: &[u8]) -> Result<(u16, &[u8])> {
        if self.stream.is_none() {
            let s = TcpStream::connect(&self.addr).await?;
            s.set_nodelay(true)?;
            self.stream = Some(s);
        }
        let result = Self::round_trip(
            self.stream.as_mut().context("connected")?,
            request,
            &mut self.buf,
        )
        .await;
        match result {
            Ok((status, start, end, close)) => {
                if close {
                    self.stream = None;
                }
                Ok((status, &self.buf[start..end]))
            }
            Err(e) => {
                self.stream = None;
                Err(e)
            }
        }
    }

    /// Returns the status, where the body is in `buf`, and whether the server closes.
    async fn round_trip(
        stream: &mut TcpStream,
        request: &[u8],
        buf: &mut Vec<u8>,
    ) -> Result<(u16, usize, usize, bool)> {
        stream.write_all(request).await?;
        buf.clear();
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = std::str::from_utf8(&buf[..end])?;
                let status: u16 = head.get(9..12).context("status line")?.parse()?;
                let mut length = None;
                let mut close = false;
                for line in head.lines().skip(1) {
                    if let Some((k, v)) = line.split_once(':') {
                        if k.eq_ignore_ascii_case("content-length") {
                            length = Some(v.trim().parse::<usize>()?);
                        } else if k.eq_ignore_ascii_case("connection") {
                            close = v.trim().eq_ignore_ascii_case("close");
                        }
                    }
                }
                let length = match status {
                    204 => 0,
                    _ => length.context("a response without Content-Length")?,
                };
                let total = end + 4 + length;
                while buf.len() < total {
                    if stream.read_buf(buf).await? == 0 {
                        bail!("the connection closed in a response body");
                    }
                }
                return Ok((status, end + 4, total, close));
            }
            if stream.read_buf(buf).await? == 0 {
                bail!("the connection closed");
            }
        }
    }
}

/// What one phase measured.
struct Phase {
    requests: usize,
    errors: u64,
    seconds: f64,
    p50: Duration,
    p99: Duration,
    server_cpu: Duration,
    client_cpu: Duration,
    /// CPU time of the whole machine in the phase: busy, and available.
    machine_busy: Duration,
    machine_total: Duration,
    /// PostgreSQL's processes, when it is the backend.
    postgres_cpu: Option<Duration>,
    /// The back office's CPU time by thread name.
    server_threads: std::collections::BTreeMap<String, Duration>,
}

impl Phase {
    fn json(&self) -> Value {
        let per = |d: Duration| (d.as_secs_f64() * 1e6 / self.requests.max(1) as f64).round();
        let pct = |d: Duration| {
            (d.as_secs_f64() * 100.0 / self.machine_total.as_secs_f64().max(1e-9)).round()
        };
        let db = self.postgres_cpu.unwrap_or_default();
        let mut v = json!({
            "requests": self.requests,
            "per_second": (self.requests as f64 / self.seconds).round(),
            "errors": self.errors,
            "p50_ms": (self.p50.as_secs_f64() * 1e5).round() / 100.0,
            "p99_ms": (self.p99.as_secs_f64() * 1e5).round() / 100.0,
            "server_cpu_us_per_request": per(self.server_cpu),
            "loadgen_cpu_us_per_request": per(self.client_cpu),
            // How busy the machine's cores were, and how much of that was other processes
            // (another build, say): a run with a large share there is not representative.
            "machine_busy_pct": pct(self.machine_busy),
            "other_processes_cpu_pct": pct(self
                .machine_busy
                .saturating_sub(self.server_cpu + self.client_cpu + db)),
        });
        v["server_threads_cpu_us_per_request"] = self
            .server_threads
            .iter()
            .filter(|(_, d)| !d.is_zero())
            .map(|(name, d)| (name.clone(), json!(per(*d))))
            .collect::<serde_json::Map<_, _>>()
            .into();
        if self.postgres_cpu.is_some() {
            v["postgres_cpu_us_per_request"] = json!(per(db));
        }
        v
    }
}

/// Fills a buffer with worker `w`'s `n`th request; checks the first answer a worker gets.
trait Workload: Send + Sync + 'static {
    fn request(&self, w: usize, n: usize, out: &mut Vec<u8>) -> Result<Check>;
}

/// How a worker's answer is judged.
enum Check {
    /// Status 200 and a body.
    Ok,
    /// Status 200 and a capability token for `host` answering `request_id`.
    Signed {
        host: Arc<Host>,
        request_id: uuid::Uuid,
    },
}

async fn phase(
    addr: &str,
    server_pid: &str,
    concurrency: usize,
    seconds: u64,
    load: Arc<dyn Workload>,
    verifier: Arc<shared::signing::Verifier>,
    postgres: Option<&str>,
) -> Result<Phase> {
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let server0 = cpu_time(server_pid);
    let client0 = cpu_time("self");
    let machine0 = machine_cpu();
    let threads0 = thread_cpu_times(server_pid);
    let postgres0 = postgres.map(postgres_cpu_time);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let (stop, errors, load, verifier) =
            (stop.clone(), errors.clone(), load.clone(), verifier.clone());
        let mut conn = Conn::new(addr);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(200_000);
            let mut req = Vec::with_capacity(1024);
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let check = load.request(w, n, &mut req)?;
                n += 1;
                let t = Instant::now();
                let ok = match conn.exchange(&req).await {
                    Ok((200, body)) if !body.is_empty() => {
                        if n == 1 {
                            verify_first(&verifier, check, body)?;
                        }
                        true
                    }
                    _ => false,
                };
                if ok {
                    lat.push(t.elapsed());
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            anyhow::Ok(lat)
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let (server_cpu, client_cpu) = (
        cpu_time(server_pid).saturating_sub(server0),
        cpu_time("self").saturating_sub(client0),
    );
    let postgres_cpu = postgres
        .zip(postgres0)
        .map(|(db, p0)| postgres_cpu_time(db).saturating_sub(p0));
    let machine1 = machine_cpu();
    let mut server_threads = thread_cpu_times(server_pid);
    for (name, d) in &mut server_threads {
        *d = d.saturating_sub(threads0.get(name).copied().unwrap_or_default());
    }
    let (machine_busy, machine_total) = (
        machine1.0.saturating_sub(machine0.0),
        machine1.1.saturating_sub(machine0.1),
    );
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Ok(Phase {
        requests: lat.len(),
        errors: errors.load(Ordering::Relaxed),
        seconds: elapsed,
        p50: pct(0.50),
        p99: pct(0.99),
        server_cpu,
        client_cpu,
        machine_busy,
        machine_total,
        postgres_cpu,
        server_threads,
    })
}

/// The first answer on each connection is verified in full; a bad one stops the run.
fn verify_first(verifier: &shared::signing::Verifier, check: Check, body: &[u8]) -> Result<()> {
    let Check::Signed { host, request_id } = check else {
        return Ok(());
    };
    let v: Value = serde_json::from_slice(body)?;
    let token = v["token"]
        .as_str()
        .context("a capability answer without a token")?;
    let hostid = shared::HostId::parse(&host.hostid).map_err(|e| anyhow::anyhow!("{e}"))?;
    let claims = verifier
        .verify(token, &hostid, request_id, shared::now_unix(), 60)
        .context("a capability answer does not verify")?;
    if claims.rights.is_empty() {
        bail!("a capability answer for {hostid} carries no rights");
    }
    let binding: shared::grant::BindingClaims = verifier
        .decode(
            claims
                .binding
                .as_deref()
                .context("an answer without a binding")?,
            shared::signing::TYP_BINDING,
        )
        .context("a binding does not verify")?;
    if binding.sub != host.hostid || binding.key != host.key || binding.exp != claims.serve_until {
        bail!("the binding for {hostid} names {binding:?}");
    }
    if (host.role != "standalone") != claims.pair_token.is_some() {
        bail!("a pair's server without the pair's secret, or a standalone server with one");
    }
    Ok(())
}

/// A registered license server, as the load tool polls as it.
struct Host {
    hostid: String,
    role: &'static str,
    /// A main's backup.
    backup: Option<String>,
    /// Its public key, base64url.
    key: String,
}

/// `POST /api/v1/capability` as the registered servers, in turn.
struct Polls {
    head: String,
    token: String,
    hosts: Vec<Arc<Host>>,
    concurrency: usize,
    /// A usage report with every poll, as license servers send.
    report: bool,
}

impl Workload for Polls {
    fn request(&self, w: usize, n: usize, out: &mut Vec<u8>) -> Result<Check> {
        use std::io::Write;
        let host = &self.hosts[(w + n * self.concurrency) % self.hosts.len()];
        let mut body = capability_request(&host.hostid, host.role, host.backup.as_deref(), &[]);
        body["server_key"] = json!(host.key);
        if self.report {
            let usage: Vec<Value> = ["cad", "sim", "render"]
                .iter()
                .map(|f| json!({"feature": f, "version": "1.0", "count": 10, "in_use": 3}))
                .collect();
            body["report"] = json!({
                "server_status": if host.role == "backup" { "ready" } else { "active" },
                "pair_status": (host.role != "standalone").then_some("paired_available"),
                "usage": usage,
            });
        }
        let request_id = body["request_id"].as_str().context("request_id")?.parse()?;
        let body = serde_json::to_vec(&body)?;
        out.clear();
        write!(
            out,
            "POST /api/v1/capability HTTP/1.1\r\n{}Authorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.head,
            self.token,
            body.len()
        )?;
        out.extend_from_slice(&body);
        Ok(Check::Signed {
            host: host.clone(),
            request_id,
        })
    }
}

/// `GET /api/v1/signing-key`: the trivial baseline.
struct Trivial {
    request: Vec<u8>,
}

impl Workload for Trivial {
    fn request(&self, _w: usize, _n: usize, out: &mut Vec<u8>) -> Result<Check> {
        out.clear();
        out.extend_from_slice(&self.request);
        Ok(Check::Ok)
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let a = args()?;
    let load_before = loadavg();
    let mut settings = vec![("RUST_LOG", "warn"), ("DB_POOL_SIZE", "8")];
    // Links held a minute (a third of SERVER_TIMEOUT), all of one account.
    let cap = a.servers.to_string();
    if a.links {
        settings.extend([
            ("SERVER_TIMEOUT", "180s"),
            ("MAX_LINKS_PER_ACCOUNT", cap.as_str()),
        ]);
    }
    settings.extend(a.settings.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    // A process of its own, so that its CPU time is its own.
    let bo = BackOffice::start_process(a.backend, &settings).await?;
    let fsync_before = fsync_latency(&bo.data_dir)?;
    // The database's name, to tell its PostgreSQL processes from other tests' ones.
    let postgres_db = (a.backend == Backend::Postgres).then(|| {
        bo.database_url()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned()
    });
    let server_pid = bo.pid().to_string();
    let addr = bo
        .url
        .strip_prefix("http://")
        .context("http URL")?
        .to_owned();
    let verifier = Arc::new(shared::signing::Verifier::from_public_pem(
        &bo.public_key_pem(),
    )?);
    let fx = bo.fixture(&["cad", "sim", "render"], 1_000_000).await?;
    let api = tests::Api {
        base: bo.url.clone(),
        token: fx.device_token.clone(),
        http: reqwest::Client::new(),
    };
    // Register the servers, each with a key of its own: failover pairs (a main registers
    // itself and names its backup; one standalone server if the count is odd), each main
    // with a share of the line item, so that every poll carries real rights.
    let t0 = Instant::now();
    let mut hosts = Vec::with_capacity(a.servers);
    let mut register = |hostid: String, role: &'static str, backup: Option<String>| {
        let key = shared::signing::Signer::generate().public_key();
        let rights: &[(&str, u32)] = if role == "backup" {
            &[]
        } else {
            &[(&fx.activation_id, 10)]
        };
        let mut body = capability_request(&hostid, role, backup.as_deref(), rights);
        body["server_key"] = json!(key);
        hosts.push(Arc::new(Host {
            hostid,
            role,
            backup,
            key,
        }));
        body
    };
    let mut bodies = Vec::with_capacity(a.servers);
    for i in (0..a.servers - 1).step_by(2) {
        let (m, b) = (format!("string:m{i}"), format!("string:b{i}"));
        bodies.push(register(m, "main", Some(b.clone())));
        bodies.push(register(b, "backup", None));
    }
    if a.servers % 2 == 1 {
        bodies.push(register(
            format!("string:s{}", a.servers - 1),
            "standalone",
            None,
        ));
    }
    let mut revisions = Vec::with_capacity(bodies.len());
    for body in bodies {
        let r = api.post("/api/v1/capability", body.clone()).await?;
        if r.status != 200 {
            bail!("registering {}: {}", body["hostid"], r.body);
        }
        let claims = verifier.verify(
            r.body["token"].as_str().context("token")?,
            &shared::HostId::parse(body["hostid"].as_str().context("hostid")?)?,
            body["request_id"].as_str().context("id")?.parse()?,
            shared::now_unix(),
            5,
        )?;
        revisions.push(claims.revision());
    }
    println!(
        "registered {} servers ({} failover pairs) on {:?} in {:.1} s",
        hosts.len(),
        a.servers / 2,
        a.backend,
        t0.elapsed().as_secs_f64()
    );

    if a.links {
        let mut result = links(&a, &bo, &fx, &hosts, &revisions).await?;
        result["loadavg_before"] = json!(load_before);
        result["loadavg_after"] = json!(loadavg());
        result["fdatasync_before"] = fsync_before;
        result["fdatasync_after"] = fsync_latency(&bo.data_dir)?;
        println!("{result}");
        return Ok(());
    }
    let head = format!("Host: {addr}\r\n");
    let baseline = if a.baseline_seconds > 0 {
        let trivial = Arc::new(Trivial {
            request: format!("GET /api/v1/signing-key HTTP/1.1\r\n{head}\r\n").into_bytes(),
        });
        let p = phase(
            &addr,
            &server_pid,
            a.concurrency,
            a.baseline_seconds,
            trivial,
            verifier.clone(),
            postgres_db.as_deref(),
        )
        .await?;
        Some(p)
    } else {
        None
    };
    let polls = Arc::new(Polls {
        head,
        token: fx.device_token.clone(),
        hosts,
        concurrency: a.concurrency,
        report: a.report,
    });
    let servers = polls.hosts.len();
    let p = phase(
        &addr,
        &server_pid,
        a.concurrency,
        a.seconds,
        polls,
        verifier,
        postgres_db.as_deref(),
    )
    .await?;
    let mut result = json!({
        "backend": format!("{:?}", a.backend),
        "servers": servers,
        "concurrency": a.concurrency,
        "seconds": (p.seconds * 10.0).round() / 10.0,
        "polls_per_second": (p.requests as f64 / p.seconds).round(),
        "errors": p.errors,
        "p50_ms": (p.p50.as_secs_f64() * 1e5).round() / 100.0,
        "p99_ms": (p.p99.as_secs_f64() * 1e5).round() / 100.0,
        "polls": p.json(),
        "report": a.report,
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
        "fdatasync_before": fsync_before,
        "fdatasync_after": fsync_latency(&bo.data_dir)?,
    });
    if let Some(b) = baseline {
        result["ratio_to_baseline"] = json!(
            (p.requests as f64 / p.seconds / (b.requests as f64 / b.seconds) * 1000.0).round()
                / 1000.0
        );
        result["baseline_signing_key"] = b.json();
    }
    println!("{result}");
    Ok(())
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The live link: every server holds its link; memory and CPU at rest; then the time from
/// one change of what every server holds to the last signed answer.
async fn links(
    a: &Args,
    bo: &BackOffice,
    fx: &tests::Fixture,
    hosts: &[Arc<Host>],
    revisions: &[String],
) -> Result<Value> {
    let mut others = Vec::new();
    for _ in 1..a.processes.max(1) {
        others.push(bo.sibling(&[]).await?);
    }
    let all: Vec<&BackOffice> = std::iter::once(bo).chain(&others).collect();
    let pids: Vec<String> = all.iter().map(|b| b.pid().to_string()).collect();
    let rss_before: Vec<u64> = pids.iter().map(|p| rss_kib(p)).collect();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for (i, (host, revision)) in hosts.iter().zip(revisions).enumerate() {
        let office = all[i % all.len()];
        let addr = office
            .url
            .strip_prefix("http://")
            .context("http URL")?
            .to_owned();
        let mut body = capability_request(&host.hostid, host.role, host.backup.as_deref(), &[]);
        body["server_key"] = json!(host.key);
        body["link"] = json!({"revision": revision, "wait_secs": 60});
        let body = serde_json::to_vec(&body)?;
        let mut request = format!(
            "POST /api/v1/capability HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            fx.device_token,
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(&body);
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut conn = Conn::new(&addr);
            let outcome = conn
                .exchange(&request)
                .await
                .map(|(status, _)| (status, Instant::now()));
            let _ = tx.send(outcome.map_err(|e| e.to_string()));
        });
    }
    drop(tx);
    // All held (the first ones answered 204 only after a minute).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let held: usize = links_held(&all).await;
    let cpu0: Vec<Duration> = pids.iter().map(|p| cpu_time(p)).collect();
    let rest = Instant::now();
    tokio::time::sleep(Duration::from_secs(a.seconds)).await;
    let rest = rest.elapsed();
    let cpu_at_rest: Vec<f64> = pids
        .iter()
        .zip(&cpu0)
        .map(|(p, c0)| (cpu_time(p) - *c0).as_secs_f64() / rest.as_secs_f64() * 100.0)
        .collect();
    let rss_held: Vec<u64> = pids.iter().map(|p| rss_kib(p)).collect();

    // One change of what every server holds: the line item's expiry.
    let ents = fx
        .admin
        .get(&format!("/api/v1/accounts/{}/entitlements", fx.account_id))
        .await?
        .ok()?;
    let (eid, lid) = ents
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|e| {
            let item = e["line_items"]
                .as_array()?
                .iter()
                .find(|l| l["activation_id"] == fx.activation_id.as_str())?;
            Some((
                e["id"].as_str()?.to_owned(),
                item["id"].as_str()?.to_owned(),
            ))
        })
        .context("the fixture's line item")?;
    let changed = Instant::now();
    fx.admin
        .patch(
            &format!(
                "/api/v1/accounts/{}/entitlements/{eid}/line-items/{lid}",
                fx.account_id
            ),
            json!({"expires_at": shared::now_unix() + 365 * 86_400}),
        )
        .await?
        .ok()?;
    let mut took = Vec::with_capacity(hosts.len());
    let mut errors = 0u64;
    while let Some(outcome) = rx.recv().await {
        match outcome {
            Ok((200, at)) => took.push(at.saturating_duration_since(changed)),
            _ => errors += 1,
        }
    }
    took.sort_unstable();
    let ms = |d: Option<&Duration>| d.map_or(0.0, |d| (d.as_secs_f64() * 1e5).round() / 100.0);
    Ok(json!({
        "backend": format!("{:?}", a.backend),
        "processes": all.len(),
        "links": hosts.len(),
        "links_held_after_3s": held,
        "rss_kib_before_links": rss_before,
        "rss_kib_with_links": rss_held,
        "cpu_pct_at_rest": cpu_at_rest,
        "rest_seconds": rest.as_secs(),
        "answered": took.len(),
        "errors": errors,
        "change_to_first_answer_ms": ms(took.first()),
        "change_to_median_answer_ms": ms(took.get(took.len() / 2)),
        "change_to_last_answer_ms": ms(took.last()),
    }))
}

/// Links held by the back offices now, from their metrics.
async fn links_held(all: &[&BackOffice]) -> usize {
    let mut n = 0;
    for b in all {
        let text = reqwest::get(format!("{}/metrics", b.url))
            .await
            .ok()
            .map(|r| r.text());
        let Some(text) = text else { continue };
        let text = text.await.unwrap_or_default();
        n += text
            .lines()
            .find_map(|l| l.strip_prefix("backoffice_live_links "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0) as usize;
    }
    n
}
