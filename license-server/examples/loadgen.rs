//! Load generator: checkout + return cycles against a running license server over
//! loopback HTTP/1.1 keep-alive connections, at several concurrency levels.
//!
//! It starts nothing itself. Start a back office (or `examples/dev_backoffice.rs`) and a
//! license server whose rights include the feature (enough seats for the highest
//! concurrency), then:
//!
//! ```text
//! cargo run --release -p license-server --example loadgen -- \
//!     --url http://127.0.0.1:7070 --feature bench --concurrency 1,16,64 --duration 10s
//! ```
//!
//! Each client owns one connection and loops: `POST /api/v1/leases` (201, durable before
//! the answer), then `DELETE /api/v1/leases/{id}` with the lease token (204). A cycle is
//! both requests; latency percentiles are per cycle and per request.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug)]
struct Args {
    url: String,
    feature: String,
    levels: Vec<usize>,
    duration: Duration,
    warmup: Duration,
    threads: usize,
}

fn usage() -> ! {
    eprintln!(
        "usage: loadgen [--url http://127.0.0.1:7070] [--feature bench] [--concurrency 1,16,64] [--duration 10s] [--warmup 1s] [--threads 1]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut a = Args {
        url: "http://127.0.0.1:7070".into(),
        feature: "bench".into(),
        levels: vec![1, 16, 64],
        duration: Duration::from_secs(10),
        warmup: Duration::from_secs(1),
        threads: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--url" => a.url = val(),
            "--feature" => a.feature = val(),
            "--concurrency" => {
                a.levels = val()
                    .split(',')
                    .map(|s| s.trim().parse().unwrap_or_else(|_| usage()))
                    .collect()
            }
            "--duration" => {
                a.duration = shared::duration::parse(&val()).unwrap_or_else(|_| usage())
            }
            "--warmup" => a.warmup = shared::duration::parse(&val()).unwrap_or_else(|_| usage()),
            "--threads" => a.threads = val().parse().unwrap_or_else(|_| usage()),
            "-h" | "--help" => usage(),
            _ => usage(),
        }
    }
    a
}

/// A minimal HTTP/1.1 keep-alive connection.
struct Conn {
    stream: TcpStream,
    host: String,
    buf: Vec<u8>,
    req: Vec<u8>,
}

impl Conn {
    async fn open(addr: &str) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            host: addr.to_owned(),
            buf: Vec::with_capacity(4096),
            req: Vec::with_capacity(1024),
        })
    }

    async fn request(
        &mut self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: Option<&[u8]>,
    ) -> std::io::Result<(u16, Vec<u8>)> {
        use std::io::Write;
        self.req.clear();
        write!(
            self.req,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n",
            self.host
        )?;
        if let Some(t) = bearer {
            write!(self.req, "Authorization: Bearer {t}\r\n")?;
        }
        match body {
            Some(b) => {
                write!(
                    self.req,
                    "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    b.len()
                )?;
                self.req.extend_from_slice(b);
            }
            None => self.req.extend_from_slice(b"Content-Length: 0\r\n\r\n"),
        }
        self.stream.write_all(&self.req).await?;
        self.read_response().await
    }

    async fn read_response(&mut self) -> std::io::Result<(u16, Vec<u8>)> {
        self.buf.clear();
        let mut chunk = [0u8; 4096];
        let header_end = loop {
            if let Some(p) = find(&self.buf, b"\r\n\r\n") {
                break p + 4;
            }
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        };
        let head = std::str::from_utf8(&self.buf[..header_end])
            .map_err(|_| std::io::Error::other("bad header"))?;
        let status: u16 = head
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other("bad status line"))?;
        let len = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        while self.buf.len() < header_end + len {
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        Ok((status, self.buf[header_end..header_end + len].to_vec()))
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[derive(serde::Deserialize)]
struct LeaseAnswer {
    lease_id: String,
    token: String,
}

#[derive(Default)]
struct WorkerResult {
    cycles: u64,
    errors: u64,
    cycle_us: Vec<u32>,
    request_us: Vec<u32>,
    first_error: Option<String>,
}

async fn worker(
    addr: String,
    feature: String,
    id: String,
    until: Instant,
    record_from: Instant,
) -> WorkerResult {
    let mut r = WorkerResult::default();
    let mut conn = match Conn::open(&addr).await {
        Ok(c) => c,
        Err(e) => {
            r.errors += 1;
            r.first_error = Some(e.to_string());
            return r;
        }
    };
    let body =
        serde_json::to_vec(&serde_json::json!({"feature": feature, "client_id": id})).unwrap();
    while Instant::now() < until {
        let t0 = Instant::now();
        let (st, resp) = match conn
            .request("POST", "/api/v1/leases", None, Some(&body))
            .await
        {
            Ok(x) => x,
            Err(e) => {
                r.errors += 1;
                r.first_error.get_or_insert(e.to_string());
                break;
            }
        };
        if st != 201 {
            r.errors += 1;
            r.first_error.get_or_insert(format!(
                "checkout: HTTP {st} {}",
                String::from_utf8_lossy(&resp)
            ));
            continue;
        }
        let lease: LeaseAnswer = serde_json::from_slice(&resp).unwrap();
        let t1 = Instant::now();
        let path = format!("/api/v1/leases/{}", lease.lease_id);
        match conn
            .request("DELETE", &path, Some(&lease.token), None)
            .await
        {
            Ok((204, _)) => {}
            Ok((st, b)) => {
                r.errors += 1;
                r.first_error
                    .get_or_insert(format!("return: HTTP {st} {}", String::from_utf8_lossy(&b)));
                continue;
            }
            Err(e) => {
                r.errors += 1;
                r.first_error.get_or_insert(e.to_string());
                break;
            }
        }
        let t2 = Instant::now();
        if t0 >= record_from {
            r.cycles += 1;
            r.cycle_us.push((t2 - t0).as_micros() as u32);
            r.request_us.push((t1 - t0).as_micros() as u32);
            r.request_us.push((t2 - t1).as_micros() as u32);
        }
    }
    r
}

fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

async fn store_counters(addr: &str) -> Option<(u64, u64)> {
    let mut c = Conn::open(addr).await.ok()?;
    let (_, body) = c.request("GET", "/metrics", None, None).await.ok()?;
    let text = String::from_utf8_lossy(&body);
    let get = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
            .map(|v| v as u64)
    };
    Some((
        get("lls_store_commits_total ")?,
        get("lls_store_events_total ")?,
    ))
}

async fn run(args: Args) {
    let addr = args
        .url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    println!(
        "| clients | cycles/s | requests/s | cycle p50 ms | cycle p99 ms | request p50 ms | request p99 ms | max cycle ms | errors | events/fsync |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &n in &args.levels {
        let before = store_counters(&addr).await;
        let start = Instant::now();
        let record_from = start + args.warmup;
        let until = record_from + args.duration;
        let mut tasks = Vec::new();
        for w in 0..n {
            tasks.push(tokio::spawn(worker(
                addr.clone(),
                args.feature.clone(),
                format!("loadgen-{n}-{w}"),
                until,
                record_from,
            )));
        }
        let mut all = WorkerResult::default();
        for t in tasks {
            let r = t.await.unwrap();
            all.cycles += r.cycles;
            all.errors += r.errors;
            all.cycle_us.extend(r.cycle_us);
            all.request_us.extend(r.request_us);
            if all.first_error.is_none() {
                all.first_error = r.first_error;
            }
        }
        let after = store_counters(&addr).await;
        let secs = args.duration.as_secs_f64();
        all.cycle_us.sort_unstable();
        all.request_us.sort_unstable();
        let per_fsync = match (before, after) {
            (Some((c0, e0)), Some((c1, e1))) if c1 > c0 => {
                format!("{:.1}", (e1 - e0) as f64 / (c1 - c0) as f64)
            }
            _ => "-".into(),
        };
        println!(
            "| {n} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {per_fsync} |",
            all.cycles as f64 / secs,
            2.0 * all.cycles as f64 / secs,
            pct(&all.cycle_us, 0.50),
            pct(&all.cycle_us, 0.99),
            pct(&all.request_us, 0.50),
            pct(&all.request_us, 0.99),
            all.cycle_us.last().map_or(0.0, |m| f64::from(*m) / 1000.0),
            all.errors,
        );
        if let Some(e) = all.first_error {
            eprintln!("first error at {n} clients: {e}");
        }
    }
}

fn main() {
    let args = parse_args();
    let rt = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    }
    .expect("runtime");
    rt.block_on(run(args));
}
