//! A flood of wrong sign-ins against the back office's binary: the hashing pool is bounded
//! (429 with Retry-After beyond it), memory stays flat and `/healthz` keeps answering
//! within 100 ms (the median: the hashing threads run at the lowest priority). Alone in
//! its test binary so that no other test's hashing shares the machine's cores while it
//! measures.

use serde_json::{Value, json};
use tests::{BackOffice, Backend};

fn login_body(email: &str, password: &str) -> Value {
    json!({"email": email, "password": password})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_wrong_logins_keeps_memory_bounded_and_healthz_fast() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let bo = Arc::new(
        BackOffice::start_process(Backend::Sqlite, &[])
            .await
            .unwrap(),
    );
    let done = Arc::new(AtomicBool::new(false));

    // Resident memory, sampled every 5 ms from /proc.
    let rss = {
        let (bo, done) = (bo.clone(), done.clone());
        std::thread::spawn(move || {
            let mut max = 0;
            while !done.load(Ordering::Relaxed) {
                max = max.max(bo.rss_kib().unwrap_or(0));
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            max
        })
    };
    // /healthz, asked again and again on a connection of its own.
    let health = {
        let (url, done) = (bo.url.clone(), done.clone());
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut times = Vec::new();
            while !done.load(Ordering::Relaxed) {
                let t = std::time::Instant::now();
                let r = client.get(format!("{url}/healthz")).send().await.unwrap();
                assert_eq!(r.status(), 200);
                times.push(t.elapsed());
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            times
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;

    // 128 wrong logins at once, for addresses nobody has (no account needed).
    let logins: Vec<_> = (0..128)
        .map(|i| {
            let url = bo.url.clone();
            tokio::spawn(async move {
                let r = reqwest::Client::new()
                    .post(format!("{url}/api/v1/auth/login"))
                    .json(&login_body(
                        &format!("nobody-{i}@example.com"),
                        "wrong password!",
                    ))
                    .send()
                    .await
                    .unwrap();
                let retry = r.headers().get("retry-after").is_some();
                (r.status().as_u16(), retry)
            })
        })
        .collect();
    let mut refused_busy = 0;
    for t in logins {
        match t.await.unwrap() {
            (401, _) => {}
            (429, true) => refused_busy += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    done.store(true, Ordering::Relaxed);
    let max_rss_kib = rss.join().unwrap();
    let times = health.await.unwrap();
    let mut sorted = times.clone();
    sorted.sort();
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or_default();
    let slowest = sorted.last().copied().unwrap_or_default();
    eprintln!(
        "flood: {refused_busy} of 128 refused at once; peak RSS {} MiB; /healthz asked {} times, median {median:?}, slowest {slowest:?}",
        max_rss_kib / 1024,
        times.len()
    );
    assert!(refused_busy > 0, "the hashing pool is bounded");
    assert!(max_rss_kib < 150 * 1024, "peak RSS {max_rss_kib} KiB");
    assert!(times.len() >= 5, "/healthz was asked during the flood");
    // The median, not the slowest: on a loaded machine any request can wait for a core
    // now and then; one queued behind the hashing would wait for all of them (2-3 s each
    // before the pool was bounded).
    assert!(
        median < std::time::Duration::from_millis(100),
        "/healthz took {median:?} (median) during the flood"
    );
}
