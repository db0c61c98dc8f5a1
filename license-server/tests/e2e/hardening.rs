//! Attacks on a real server process: slow clients holding connections, a huge body
//! without a token, more connections than the cap, and bad settings.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::T;
use crate::common::*;

fn addr(server: &Server) -> String {
    server.url.trim_start_matches("http://").to_owned()
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// One request on a connection of its own; the status line and the body.
async fn raw(addr: &str, request: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.lines().next().unwrap_or_default().to_owned();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

async fn timed<F: std::future::Future>(f: F) -> (F::Output, Duration) {
    let start = Instant::now();
    let out = f.await;
    (out, start.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_cannot_starve_health_or_checkouts() {
    let bo = TestBackoffice::start(vec![right("cad", 50)]).await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("lls"), base_env(&bo, "string:lls-slow")).await;
    wait_for(T, "rights", || async {
        (feature(&server, "cad").await?["count"] == 50).then_some(())
    })
    .await;
    let target = addr(&server);

    // 2,000 connections, each sending one byte of a request head every 2 s.
    const SLOW: usize = 2000;
    rlimit::increase_nofile_limit(SLOW as u64 + 1024).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let closed = Arc::new(AtomicUsize::new(0));
    let open = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..SLOW {
        let (target, stop, closed, open) =
            (target.clone(), stop.clone(), closed.clone(), open.clone());
        tasks.push(tokio::spawn(async move {
            let Ok(mut s) = TcpStream::connect(&target).await else {
                return false;
            };
            open.fetch_add(1, Ordering::Relaxed);
            let mut buf = [0u8; 256];
            for b in b"GET /healthz HTTP/1.1\r\nHost: x\r\n".iter().cycle() {
                if stop.load(Ordering::Relaxed) {
                    return true;
                }
                if s.write_all(&[*b]).await.is_err() {
                    closed.fetch_add(1, Ordering::Relaxed);
                    return true;
                }
                // The server answers 408 and closes once the head timeout is over.
                if let Ok(Ok(n)) =
                    tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await
                {
                    closed.fetch_add(1, Ordering::Relaxed);
                    let head = String::from_utf8_lossy(&buf[..n]);
                    assert!(n == 0 || head.starts_with("HTTP/1.1 408"), "{head}");
                    return true;
                }
            }
            true
        }));
    }
    wait_for(T, "2,000 slow connections", || async {
        (open.load(Ordering::Relaxed) == SLOW).then_some(())
    })
    .await;
    let connected = Instant::now();
    // Meanwhile health and checkouts answer, over 7 s (past the head timeout of the slow
    // ones): every one within 3 s and half of them within 250 ms. Starved, they would
    // wait for the slow connections' head timeout (5 s) or not be answered at all; a
    // single answer past a second is what a machine busy with other builds does to a
    // debug build holding 2,000 connections, and is not what this test is about.
    let mut probes = 0;
    let (mut health_times, mut checkout_times) = (Vec::new(), Vec::new());
    while connected.elapsed() < Duration::from_secs(7) {
        let (health, took) = timed(raw(
            &target,
            "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        ))
        .await;
        assert!(health.0.starts_with("HTTP/1.1 200"), "{health:?}");
        assert!(took < Duration::from_secs(3), "/healthz took {took:?}");
        health_times.push(took);
        let ((st, lease), took) = timed(checkout(&server, "cad", &format!("probe-{probes}"))).await;
        assert_eq!(st, 201, "{lease}");
        assert!(took < Duration::from_secs(3), "a checkout took {took:?}");
        checkout_times.push(took);
        probes += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for (what, mut times) in [("/healthz", health_times), ("checkout", checkout_times)] {
        times.sort();
        let median = times[times.len() / 2];
        assert!(
            median < Duration::from_millis(250),
            "{what}: median {median:?} of {times:?}"
        );
    }
    stop.store(true, Ordering::Relaxed);
    let mut ok = 0;
    for t in tasks {
        if t.await.unwrap() {
            ok += 1;
        }
    }
    assert_eq!(ok, SLOW, "every slow connection was accepted");
    // The head timeout (5 s) closed the slow connections.
    assert!(
        closed.load(Ordering::Relaxed) >= SLOW * 9 / 10,
        "only {} of {SLOW} slow connections were closed by the server",
        closed.load(Ordering::Relaxed)
    );
    assert!(probes >= 5, "{probes}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_pair_body_without_a_token_is_refused_unread() {
    let bo = TestBackoffice::start(vec![right("cad", 1)]).await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("lls"), base_env(&bo, "string:lls-flood")).await;
    let target = addr(&server);
    assert_eq!(
        raw(
            &target,
            "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .await
        .0,
        "HTTP/1.1 200 OK"
    );
    let before = rss_kib(server.pid());

    // Four 250 MiB bodies at once, no token.
    const SIZE: u64 = 250 << 20;
    let mut tasks = Vec::new();
    for token in [None, Some("wrong"), None, Some("wrong")] {
        let target = target.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(&target).await.unwrap();
            let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
            let head = format!(
                "POST /api/v1/pair/events HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/octet-stream\r\nContent-Length: {SIZE}\r\n\r\n"
            );
            s.write_all(head.as_bytes()).await.unwrap();
            let (mut rd, mut wr) = s.into_split();
            let sent = Arc::new(AtomicU64::new(0));
            let counter = sent.clone();
            let writer = tokio::spawn(async move {
                let chunk = vec![b' '; 64 << 10];
                while counter.load(Ordering::Relaxed) < SIZE {
                    if wr.write_all(&chunk).await.is_err() {
                        break;
                    }
                    counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                }
            });
            // How much of the body was on its way when the answer came.
            let mut answer = vec![0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(10), rd.read(&mut answer))
                .await
                .unwrap()
                .unwrap();
            let sent_before_answer = sent.load(Ordering::Relaxed);
            writer.abort();
            (String::from_utf8_lossy(&answer[..n]).into_owned(), sent_before_answer)
        }));
    }
    for t in tasks {
        let (answer, sent) = t.await.unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 401") || answer.starts_with("HTTP/1.1 403"),
            "{answer}"
        );
        assert!(
            answer.contains("pair endpoints need")
                || answer.contains("pair token")
                || answer.contains("no pair secret"),
            "{answer}"
        );
        assert!(
            sent < 32 << 20,
            "the answer came only after {sent} bytes of the body"
        );
    }
    let after = rss_kib(server.pid());
    assert!(
        after < before + 16 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
    assert_eq!(
        raw(
            &target,
            "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .await
        .0,
        "HTTP/1.1 200 OK"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_max_connections_only_health_status_and_operators_are_served() {
    let bo = TestBackoffice::start(vec![right("cad", 5)]).await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("lls"),
        with(base_env(&bo, "string:lls-cap"), &[("MAX_CONNECTIONS", "8")]),
    )
    .await;
    let target = addr(&server);
    // Eight clients keep their connections open after a request.
    let mut held = Vec::new();
    for _ in 0..8 {
        let mut s = TcpStream::connect(&target).await.unwrap();
        s.write_all(b"GET /api/v1/features HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        held.push(s);
    }
    // The next client is refused and told to retry; health, status and operators pass.
    let (status, body) = raw(&target, "GET /api/v1/features HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(status.starts_with("HTTP/1.1 503"), "{status}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["code"], "UNAVAILABLE");
    for path in ["/healthz", "/api/v1/status"] {
        let (status, _) = raw(
            &target,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert!(status.starts_with("HTTP/1.1 200"), "{path}: {status}");
    }
    let (status, _) = raw(
        &target,
        &format!(
            "GET /api/v1/admin/features/cad/leases HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            server.admin_token()
        ),
    )
    .await;
    assert!(!status.starts_with("HTTP/1.1 503"), "{status}");
    // Once the clients leave, everyone is served again.
    drop(held);
    wait_for(T, "the cap to free", || async {
        let (status, _) = raw(
            &target,
            "GET /api/v1/features HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        status.starts_with("HTTP/1.1 200").then_some(())
    })
    .await;
}

#[test]
fn each_bad_setting_stops_the_server_at_once_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("bo.pub.pem");
    std::fs::write(&key, shared::signing::generate_keypair().1).unwrap();
    let data = dir.path().join("data");
    let base = [
        ("HOSTID", "string:lls-bad"),
        ("BACKOFFICE_URL", "http://127.0.0.1:9"),
        ("BACKOFFICE_TOKEN", "t"),
        ("BACKOFFICE_PUBLIC_KEY", key.to_str().unwrap()),
        ("LISTEN", "127.0.0.1:0"),
        ("DATA_DIR", data.to_str().unwrap()),
    ];
    let missing = dir.path().join("missing.pem");
    /// A setting, its bad value, and what else it needs to be read.
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);
    let cases: &[Case] = &[
        ("BACKOFFICE_URL", "not a url", &[]),
        ("BACKOFFICE_URL", "ftp://x", &[]),
        ("LICENSING_MAIN_URI", "not a url", &[]),
        (
            "LICENSING_BACKUP_URI",
            "not a url",
            &[("BACKUP_SERVER_HOSTID", "string:b")],
        ),
        ("PUBLIC_URL", "lls.example:7070", &[]),
        ("LEASE_DURATION", "soon", &[]),
        ("MAX_CONNECTIONS", "many", &[]),
        ("MAX_CONNECTIONS", "100000000", &[]),
        ("LISTEN", "nowhere", &[]),
        ("HOSTID", "disk:1", &[]),
        (
            "TLS_CERT",
            missing.to_str().unwrap(),
            &[("TLS_KEY", key.to_str().unwrap())],
        ),
        (
            "TLS_CERT",
            key.to_str().unwrap(),
            &[("TLS_KEY", key.to_str().unwrap())],
        ),
        ("BACKOFFICE_CA", key.to_str().unwrap(), &[]),
        ("BACKOFFICE_PUBLIC_KEY", missing.to_str().unwrap(), &[]),
        // The pair's secret is never the device token.
        ("PAIR_TOKEN", "t", &[]),
        ("LOG_FORMAT", "yaml", &[]),
        ("RUST_LOG", "warn,license_server=loud", &[]),
    ];
    for (name, value, extra) in cases {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_license-server"));
        cmd.arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default());
        for (k, v) in base.iter().chain(extra.iter()) {
            cmd.env(k, v);
        }
        cmd.env(name, value);
        let start = Instant::now();
        let out = cmd.output().unwrap();
        let took = start.elapsed();
        let err = String::from_utf8_lossy(&out.stderr);
        let line = err
            .lines()
            .find(|l| l.starts_with("error: "))
            .unwrap_or_default();
        assert!(!out.status.success(), "{name}={value} started");
        assert!(
            took < Duration::from_secs(1),
            "{name}={value}: exited after {took:?}"
        );
        assert!(
            line.contains(name) && (line.contains(value) || *name == "MAX_CONNECTIONS"),
            "{name}={value}: {err}"
        );
        assert_eq!(
            err.lines().filter(|l| l.starts_with("error")).count(),
            1,
            "{name}={value}: {err}"
        );
    }
}
