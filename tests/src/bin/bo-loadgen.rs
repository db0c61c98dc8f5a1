//! Load tool: signed capability polls per second against a real back office.
//!
//! Starts a back office (from the same target directory: build with `--release --bins`),
//! registers `--servers` license servers through the capability protocol, then polls as
//! those servers from `--concurrency` keep-alive connections for `--seconds`, every answer
//! signed (the first answer on each connection is verified: signature, addressee, request
//! ID, freshness and rights). With `--baseline-seconds N` it first measures, for N seconds
//! on the same server with the same client, a trivial endpoint (`GET /api/v1/signing-key`:
//! no storage, no signing) for a ratio that a noisy machine does not blur.
//!
//! The client is a minimal HTTP/1.1 one over plain sockets, as cheap as `wrk`: on two cores
//! it shares the machine with the back office, and a full client (reqwest) cost about as
//! much CPU per request as the back office's storage work.
//!
//! cargo build --release -p backoffice -p tests --bins
//! target/release/bo-loadgen --backend sqlite --baseline-seconds 5

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
}

fn args() -> Result<Args> {
    let mut a = Args {
        backend: Backend::Sqlite,
        servers: 1000,
        concurrency: 32,
        seconds: 10,
        baseline_seconds: 0,
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
            "-h" | "--help" => {
                println!(
                    "bo-loadgen [--backend sqlite|postgres] [--servers 1000] [--concurrency 32] \
                     [--seconds 10] [--baseline-seconds 0]\n\
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

/// CPU time of all PostgreSQL processes (the database server's own share of the work).
fn postgres_cpu_time() -> Duration {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Duration::ZERO;
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| {
            let pid = e.file_name().into_string().ok()?;
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            (comm.trim() == "postgres").then(|| cpu_time(&pid))
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
                let length = length.context("a response without Content-Length")?;
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
    /// Status 200 and a capability token for `hostid` answering `request_id`.
    Signed {
        hostid: String,
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
    postgres: bool,
) -> Result<Phase> {
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let server0 = cpu_time(server_pid);
    let client0 = cpu_time("self");
    let machine0 = machine_cpu();
    let threads0 = thread_cpu_times(server_pid);
    let postgres0 = postgres.then(postgres_cpu_time);
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
    let postgres_cpu = postgres0.map(|p0| postgres_cpu_time().saturating_sub(p0));
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
    let Check::Signed { hostid, request_id } = check else {
        return Ok(());
    };
    let v: Value = serde_json::from_slice(body)?;
    let token = v["token"]
        .as_str()
        .context("a capability answer without a token")?;
    let hostid = shared::HostId::parse(&hostid).map_err(|e| anyhow::anyhow!("{e}"))?;
    let claims = verifier
        .verify(token, &hostid, request_id, shared::now_unix(), 60)
        .context("a capability answer does not verify")?;
    if claims.rights.is_empty() {
        bail!("a capability answer for {hostid} carries no rights");
    }
    Ok(())
}

/// `POST /api/v1/capability` as the registered servers, in turn.
struct Polls {
    head: String,
    token: String,
    hosts: Vec<(String, &'static str, Option<String>)>,
    concurrency: usize,
}

impl Workload for Polls {
    fn request(&self, w: usize, n: usize, out: &mut Vec<u8>) -> Result<Check> {
        use std::io::Write;
        let (h, role, b) = &self.hosts[(w + n * self.concurrency) % self.hosts.len()];
        let body = capability_request(h, role, b.as_deref(), &[]);
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
            hostid: h.clone(),
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
    // A process of its own, so that its CPU time is its own.
    let bo = BackOffice::start_process(a.backend, &[("RUST_LOG", "warn"), ("DB_POOL_SIZE", "8")])
        .await?;
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
    // Register the servers: failover pairs (a main registers itself and names its backup;
    // one standalone server if the count is odd), each main with a share of the line item,
    // so that every poll carries real rights.
    let t0 = Instant::now();
    let mut hosts = Vec::with_capacity(a.servers);
    for i in (0..a.servers - 1).step_by(2) {
        let (m, b) = (format!("string:m{i}"), format!("string:b{i}"));
        let body = capability_request(&m, "main", Some(&b), &[(&fx.activation_id, 10)]);
        let r = api.post("/api/v1/capability", body).await?;
        if r.status != 200 {
            bail!("registering {m}: {}", r.body);
        }
        hosts.push((m, "main", Some(b.clone())));
        hosts.push((b, "backup", None));
    }
    if a.servers % 2 == 1 {
        let s = format!("string:s{}", a.servers - 1);
        let body = capability_request(&s, "standalone", None, &[(&fx.activation_id, 10)]);
        let r = api.post("/api/v1/capability", body).await?;
        if r.status != 200 {
            bail!("registering {s}: {}", r.body);
        }
        hosts.push((s, "standalone", None));
    }
    println!(
        "registered {} servers ({} failover pairs) on {:?} in {:.1} s",
        hosts.len(),
        a.servers / 2,
        a.backend,
        t0.elapsed().as_secs_f64()
    );

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
            a.backend == Backend::Postgres,
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
    });
    let servers = polls.hosts.len();
    let p = phase(
        &addr,
        &server_pid,
        a.concurrency,
        a.seconds,
        polls,
        verifier,
        a.backend == Backend::Postgres,
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
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
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
