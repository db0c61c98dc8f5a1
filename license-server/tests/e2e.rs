//! End-to-end tests: the real `license-server` binary against a real (small) back office;
//! the operator API's access modes in [`access`], mail notifications in [`mail`], usage
//! statistics in [`stats`], TLS in [`tls`], slow clients, floods and bad settings in
//! [`hardening`], the chain of trust (keys, bindings, signed grants and rights) in
//! [`trust`]. One test binary, so that the harness in `common` is built and linked once.

#[path = "e2e/access.rs"]
mod access;
mod common;
#[path = "e2e/hardening.rs"]
mod hardening;
#[path = "e2e/mail.rs"]
mod mail;
#[path = "e2e/stats.rs"]
mod stats;
#[path = "e2e/tls.rs"]
mod tls;
#[path = "e2e/trust.rs"]
mod trust;

use std::time::Duration;

use common::*;
use licensing_client::Client;
use serde_json::{Value, json};
use shared::capability::Role;

const T: Duration = Duration::from_secs(15);

async fn rights_arrived(server: &Server, name: &str, count: u64) {
    wait_for(T, &format!("{name} with {count} seats"), || async {
        let f = feature(server, name).await?;
        (f["count"] == count).then_some(())
    })
    .await;
}

async fn status(server: &Server) -> Value {
    get_json(&server.url("/api/v1/status")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rights_at_startup_checkouts_until_no_license_and_bad_input() {
    let bo = TestBackoffice::start(vec![right("cad", 3)]).await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("lls"),
        with(
            base_env(&bo, "string:lls-1"),
            &[("RIGHTS_IDS", "ACT-cad:3")],
        ),
    )
    .await;
    rights_arrived(&server, "cad", 3).await;

    // The capability request as the contract says.
    {
        let reqs = bo.state.requests.lock().unwrap();
        let first = &reqs[0];
        assert_eq!(first.hostid.to_string(), "string:lls-1");
        assert_eq!(first.role, Role::Standalone);
        assert_eq!(first.rights.len(), 1);
        assert_eq!(first.rights[0].activation_id, "ACT-cad");
        assert_eq!(first.rights[0].count, 3);
        assert!(first.report.is_some());
        assert!((first.sent_at - shared::now_unix()).abs() < 60);
        if reqs.len() > 1 {
            assert_ne!(reqs[0].request_id, reqs[1].request_id);
        }
    }

    let mut leases = Vec::new();
    for i in 0..3 {
        let (st, lease) = checkout(&server, "cad", &format!("client-{i}")).await;
        assert_eq!(st, 201, "{lease}");
        assert_eq!(lease["feature"], "cad");
        assert_eq!(lease["version"], "1.0");
        leases.push(lease);
    }
    let (st, err) = checkout(&server, "cad", "client-9").await;
    assert_eq!(st, 409);
    assert_eq!(err["code"], "NO_LICENSE_AVAILABLE");
    let next = err["next_free_at"].as_i64().expect("next_free_at");
    assert!(next >= leases[0]["expires_at"].as_i64().unwrap());
    // The same client again: the same lease, not a second seat.
    let (st, again) = checkout(&server, "cad", "client-0").await;
    assert_eq!(st, 201);
    assert_eq!(again["lease_id"], leases[0]["lease_id"]);

    let c = http();
    let id0 = leases[0]["lease_id"].as_str().unwrap();
    let tok0 = leases[0]["token"].as_str().unwrap();
    let tok1 = leases[1]["token"].as_str().unwrap();
    // Renew: own token yes, no token 401, another lease's token 403.
    let r = c
        .put(server.url(&format!("/api/v1/leases/{id0}")))
        .bearer_auth(tok0)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .put(server.url(&format!("/api/v1/leases/{id0}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "UNAUTHORIZED");
    let r = c
        .delete(server.url(&format!("/api/v1/leases/{id0}")))
        .bearer_auth(tok1)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "FORBIDDEN");

    // Bad input: contract errors, nothing changed.
    let bad: Vec<(&str, reqwest::RequestBuilder, u16, &str)> = vec![
        (
            "unknown feature",
            c.post(server.url("/api/v1/leases"))
                .json(&json!({"feature": "nope", "client_id": "x"})),
            404,
            "NOT_FOUND",
        ),
        (
            "count 0",
            c.post(server.url("/api/v1/leases"))
                .json(&json!({"feature": "cad", "client_id": "x", "count": 0})),
            400,
            "VALIDATION_ERROR",
        ),
        (
            "huge count",
            c.post(server.url("/api/v1/leases"))
                .json(&json!({"feature": "cad", "client_id": "x", "count": 4_000_000_000u64})),
            400,
            "VALIDATION_ERROR",
        ),
        (
            "negative count",
            c.post(server.url("/api/v1/leases"))
                .json(&json!({"feature": "cad", "client_id": "x", "count": -1})),
            400,
            "VALIDATION_ERROR",
        ),
        (
            "malformed JSON",
            c.post(server.url("/api/v1/leases"))
                .header("content-type", "application/json")
                .body("{\"feature\": "),
            400,
            "VALIDATION_ERROR",
        ),
        (
            "unknown field",
            c.post(server.url("/api/v1/leases"))
                .json(&json!({"feature": "cad", "client_id": "x", "seats": 1})),
            400,
            "VALIDATION_ERROR",
        ),
        (
            "not JSON",
            c.post(server.url("/api/v1/leases"))
                .header("content-type", "text/plain")
                .body("feature=cad"),
            400,
            "VALIDATION_ERROR",
        ),
        (
            "empty client id",
            c.post(server.url("/api/v1/leases"))
                .json(&json!({"feature": "cad", "client_id": " "})),
            400,
            "VALIDATION_ERROR",
        ),
        (
            "huge body",
            c.post(server.url("/api/v1/leases"))
                .header("content-type", "application/json")
                .body(format!(
                    "{{\"feature\": \"{}\", \"client_id\": \"x\"}}",
                    "a".repeat(20_000)
                )),
            413,
            "VALIDATION_ERROR",
        ),
        (
            "unknown lease",
            c.put(server.url(&format!("/api/v1/leases/{}", uuid::Uuid::new_v4())))
                .bearer_auth(tok0),
            404,
            "NOT_FOUND",
        ),
        (
            "lease id not a uuid",
            c.delete(server.url("/api/v1/leases/not-a-lease"))
                .bearer_auth(tok0),
            404,
            "NOT_FOUND",
        ),
        (
            "unknown route",
            c.get(server.url("/api/v1/nothing")),
            404,
            "NOT_FOUND",
        ),
        (
            "wrong method",
            c.patch(server.url("/api/v1/leases")),
            405,
            "NOT_FOUND",
        ),
        (
            "operator without token",
            c.get(server.url("/api/v1/admin/features/cad/leases")),
            401,
            "UNAUTHORIZED",
        ),
        (
            "operator with wrong token",
            c.get(server.url("/api/v1/admin/features/cad/leases"))
                .bearer_auth("nope"),
            401,
            "UNAUTHORIZED",
        ),
    ];
    for (what, req, status, code) in bad {
        let r = req.send().await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{what}");
        let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(ct.starts_with("application/json"), "{what}: {ct}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["code"], code, "{what}: {body}");
        assert!(!body["message"].as_str().unwrap().is_empty(), "{what}");
    }
    let f = feature(&server, "cad").await.unwrap();
    assert_eq!(
        (
            f["count"].as_u64(),
            f["in_use"].as_u64(),
            f["free"].as_u64()
        ),
        (Some(3), Some(3), Some(0))
    );

    // Operators see who holds what and can force-release.
    let admin = server.admin_token();
    let list: Value = c
        .get(server.url("/api/v1/admin/features/cad/leases"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list.as_array().unwrap().len(), 3);
    assert!(
        list[0]["client_id"]
            .as_str()
            .unwrap()
            .starts_with("client-")
    );
    assert!(list[0]["granted_at"].as_i64().is_some() && list[0]["expires_at"].as_i64().is_some());
    let id2 = leases[2]["lease_id"].as_str().unwrap();
    let r = c
        .delete(server.url(&format!("/api/v1/admin/leases/{id2}")))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The client returns its lease normally.
    let r = c
        .delete(server.url(&format!("/api/v1/leases/{id0}")))
        .bearer_auth(tok0)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let f = feature(&server, "cad").await.unwrap();
    assert_eq!(f["in_use"], 1);
    let (st, _) = checkout(&server, "cad", "client-9").await;
    assert_eq!(st, 201);

    // The operator CLI, human and JSON.
    let bin = env!("CARGO_BIN_EXE_license-server");
    let out = std::process::Command::new(bin)
        .args(["status", "--url", &server.url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("backoffice:  connected"), "{text}");
    assert!(text.contains("standalone"), "{text}");
    let out = std::process::Command::new(bin)
        .args([
            "leases",
            "cad",
            "--json",
            "--url",
            &server.url,
            "--data-dir",
        ])
        .arg(&server.data_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
    let out = std::process::Command::new(bin)
        .args(["features", "--url", &server.url])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("cad"));

    // Health, metrics, OpenAPI.
    let r = c.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let m = c
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "lls_lease_grants_total",
        "lls_denials_total{code=\"NO_LICENSE_AVAILABLE\"}",
        "lls_capability_polls_total{result=\"ok\"}",
        "lls_http_request_duration_seconds_bucket",
        "lls_seats_in_use 2",
    ] {
        assert!(m.contains(name), "metrics lack {name}:\n{m}");
    }
    let doc: Value = get_json(&server.url("/api/v1/openapi.json")).await;
    assert!(doc["paths"]["/api/v1/leases"]["post"].is_object());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rights_change_on_the_next_poll_without_restart() {
    let bo = TestBackoffice::start(vec![right("cad", 2)]).await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("lls"), base_env(&bo, "string:lls-poll")).await;
    rights_arrived(&server, "cad", 2).await;
    for i in 0..2 {
        assert_eq!(checkout(&server, "cad", &format!("c{i}")).await.0, 201);
    }

    // More seats and a new feature.
    bo.set_rights(vec![right("cad", 5), right("viz", 1)]);
    rights_arrived(&server, "cad", 5).await;
    rights_arrived(&server, "viz", 1).await;
    assert_eq!(checkout(&server, "viz", "c0").await.0, 201);

    // Fewer seats than in use: existing leases stay, nothing new is granted.
    bo.set_rights(vec![right("cad", 1)]);
    rights_arrived(&server, "cad", 1).await;
    let f = feature(&server, "cad").await.unwrap();
    assert_eq!(f["in_use"], 2);
    let (st, err) = checkout(&server, "cad", "c9").await;
    assert_eq!(
        (st, err["code"].as_str()),
        (409, Some("NO_LICENSE_AVAILABLE"))
    );
    // The same client still gets its lease (renewed).
    assert_eq!(checkout(&server, "cad", "c0").await.0, 201);
    // viz removed: shown with count 0 while its lease lives; no new checkouts.
    let f = feature(&server, "viz").await.unwrap();
    assert_eq!(
        (f["count"].as_u64(), f["in_use"].as_u64()),
        (Some(0), Some(1))
    );

    // An expired right: FEATURE_EXPIRED.
    let mut old = right("old", 3);
    old.expires_at = Some(shared::now_unix() - 10);
    bo.set_rights(vec![right("cad", 1), old]);
    wait_for(T, "the expired feature", || async {
        feature(&server, "old")
            .await
            .filter(|f| f["expired"] == true)
    })
    .await;
    let (st, err) = checkout(&server, "old", "c0").await;
    assert_eq!((st, err["code"].as_str()), (410, Some("FEATURE_EXPIRED")));
    let (st, err) = checkout(&server, "viz", "c5").await;
    assert_eq!((st, err["code"].as_str()), (404, Some("NOT_FOUND")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unrenewed_lease_expires_and_frees_its_seat() {
    let bo = TestBackoffice::start(vec![right("cad", 1)]).await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("lls"),
        with(base_env(&bo, "string:lls-exp"), &[("LEASE_DURATION", "2s")]),
    )
    .await;
    rights_arrived(&server, "cad", 1).await;
    let (st, lease) = checkout(&server, "cad", "a").await;
    assert_eq!(st, 201);
    let (st, err) = checkout(&server, "cad", "b").await;
    assert_eq!(st, 409);
    let next = err["next_free_at"].as_i64().unwrap();
    assert!(next <= shared::now_unix() + 3, "{err}");
    // b gets the seat once a's lease lapses.
    wait_for(T, "the seat to free", || async {
        (checkout(&server, "cad", "b").await.0 == 201).then_some(())
    })
    .await;
    assert_eq!(renew(&server, &lease).await, 404);
    let m = http()
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(m.contains("lls_lease_expirations_total 1"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_after_an_acknowledged_checkout_keeps_the_lease() {
    let mut bo = TestBackoffice::start(vec![right("cad", 2)]).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("lls");
    let mut server = Server::start(&data, base_env(&bo, "string:lls-k9")).await;
    rights_arrived(&server, "cad", 2).await;
    let (st, lease) = checkout(&server, "cad", "survivor").await;
    assert_eq!(st, 201);
    server.kill9();

    // Restart with the back office gone: rights and leases come from the local store.
    bo.stop().await;
    let env = server.env.clone();
    drop(server);
    let server = Server::start(&data, env).await;
    let f = feature(&server, "cad")
        .await
        .expect("rights restored from disk");
    assert_eq!(
        (f["count"].as_u64(), f["in_use"].as_u64()),
        (Some(2), Some(1))
    );
    let admin = server.admin_token();
    let list: Value = http()
        .get(server.url("/api/v1/admin/features/cad/leases"))
        .bearer_auth(admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list[0]["lease_id"], lease["lease_id"]);
    // Same client, same lease; the token from before the crash still works.
    let (st, again) = checkout(&server, "cad", "survivor").await;
    assert_eq!(st, 201);
    assert_eq!(again["lease_id"], lease["lease_id"]);
    assert_eq!(renew(&server, &lease).await, 200);
}

/// Returns are answered before their own sync. Attack: return, hand the seat to another
/// client at once, kill -9, several times over. The later grant was acknowledged, so it
/// is on disk, and with it the return before it: the seat is never held twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_right_after_a_return_never_hands_its_seat_out_twice() {
    let mut bo = TestBackoffice::start(vec![right("cad", 1)]).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("lls");
    let mut server = Server::start(&data, base_env(&bo, "string:lls-ret")).await;
    rights_arrived(&server, "cad", 1).await;
    bo.stop().await;
    for round in 0..3 {
        let (st, lease) = checkout(&server, "cad", &format!("first-{round}")).await;
        assert_eq!(st, 201, "{lease}");
        assert_eq!(give_back(&server, &lease).await, 204);
        let (st, second) = checkout(&server, "cad", &format!("second-{round}")).await;
        assert_eq!(st, 201, "the returned seat is free at once: {second}");
        server.kill9();
        let env = server.env.clone();
        drop(server);
        server = Server::start(&data, env).await;
        let list: Value = http()
            .get(server.url("/api/v1/admin/features/cad/leases"))
            .bearer_auth(server.admin_token())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let held: Vec<&Value> = list.as_array().unwrap().iter().collect();
        assert_eq!(held.len(), 1, "round {round}: one seat, held once: {list}");
        assert_eq!(held[0]["lease_id"], second["lease_id"]);
        // The next round starts from a free seat.
        assert_eq!(give_back(&server, &second).await, 204);
    }
    // A return with nothing after it, then kill -9: it may be lost (the seat held until the
    // lease lapses) or kept, but the seat is never held by two.
    let (st, last) = checkout(&server, "cad", "last").await;
    assert_eq!(st, 201);
    assert_eq!(give_back(&server, &last).await, 204);
    server.kill9();
    let env = server.env.clone();
    drop(server);
    let server = Server::start(&data, env).await;
    let f = feature(&server, "cad").await.expect("rights restored");
    assert!(f["in_use"].as_u64().unwrap() <= 1, "{f}");
    let (st, other) = checkout(&server, "cad", "other").await;
    assert!(
        (st == 201) == (f["in_use"] == 0),
        "a seat is granted exactly when none is held: {st} {other} {f}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backoffice_stopped_the_server_keeps_serving_and_says_so() {
    let mut bo = TestBackoffice::start(vec![right("cad", 2)]).await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("lls"), base_env(&bo, "string:lls-down")).await;
    rights_arrived(&server, "cad", 2).await;
    assert_eq!(status(&server).await["backoffice"]["state"], "connected");
    bo.stop().await;
    wait_for(T, "status to show the back office unreachable", || async {
        let s = status(&server).await;
        (s["backoffice"]["state"] == "unreachable").then_some(())
    })
    .await;
    assert_eq!(checkout(&server, "cad", "a").await.0, 201);
    let s = status(&server).await;
    assert!(
        s["backoffice"]["last_error"]
            .as_str()
            .unwrap()
            .contains("unreachable")
    );
    assert!(s["backoffice"]["last_success_at"].as_i64().is_some());
    assert_eq!(s["rights"]["seats"], 2);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_license-server"))
        .args(["status", "--url", &server.url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("backoffice:  unreachable since"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_at_once_never_exceed_the_count() {
    let bo = TestBackoffice::start(vec![right("cad", 10)]).await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("lls"), base_env(&bo, "string:lls-conc")).await;
    rights_arrived(&server, "cad", 10).await;
    let url = server.url.clone();

    // 100 clients at once: exactly 10 seats granted.
    let mut tasks = Vec::new();
    for i in 0..100 {
        let c = Client::new(&url, bo.producer())
            .unwrap()
            .with_client_id(format!("burst-{i}"));
        tasks.push(tokio::spawn(async move {
            c.checkout_lease(&shared::lease::CheckoutRequest {
                borrow_secs: None,
                queue_secs: None,
                feature: "cad".into(),
                version: None,
                count: 1,
                client_id: c.client_id().to_owned(),
                user: None,
                host: None,
                client_secret: None,
            })
            .await
        }));
    }
    let mut granted = Vec::new();
    let mut denied = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(l) => granted.push(l),
            Err(e) => {
                assert_eq!(e.code(), Some(shared::ErrorCode::NoLicenseAvailable), "{e}");
                denied += 1;
            }
        }
    }
    assert_eq!((granted.len(), denied), (10, 90));
    let c = Client::new(&url, bo.producer()).unwrap();
    for l in &granted {
        c.release(l).await.unwrap();
    }

    // Checkout/return churn from 40 clients while a watcher checks the count.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for i in 0..40 {
        let c = Client::new(&url, bo.producer())
            .unwrap()
            .with_client_id(format!("churn-{i}"));
        let stop = stop.clone();
        workers.push(tokio::spawn(async move {
            let mut ok = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(g) = c.checkout("cad", 1).await {
                    ok += 1;
                    g.release().await.unwrap();
                }
            }
            ok
        }));
    }
    let admin = server.admin_token();
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while std::time::Instant::now() < deadline {
        let f = feature(&server, "cad").await.unwrap();
        assert!(f["in_use"].as_u64().unwrap() <= 10, "{f}");
        let list: Value = http()
            .get(server.url("/api/v1/admin/features/cad/leases"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(list.as_array().unwrap().len() <= 10);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for w in workers {
        total += w.await.unwrap();
    }
    assert!(total > 10, "only {total} cycles");
    wait_for(T, "every seat back", || async {
        (feature(&server, "cad").await?["in_use"] == 0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_answers_are_rejected_and_rights_unchanged() {
    let bo = TestBackoffice::start(vec![right("cad", 2)]).await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("lls"), base_env(&bo, "string:lls-bad")).await;
    rights_arrived(&server, "cad", 2).await;

    // Every bad answer carries 9 seats; none may take effect.
    bo.set_rights(vec![right("cad", 9)]);
    for (mode, reason) in [
        (Mode::WrongKey, "not by the configured key"),
        (Mode::WrongHostid, "addressed to"),
        (Mode::Stale, "stale"),
        (Mode::Replay, "not for the request just sent"),
    ] {
        bo.set_mode(mode);
        let seen = bo.request_count();
        wait_for(T, &format!("{mode:?} to be rejected"), || async {
            let s = status(&server).await;
            let err = s["backoffice"]["last_error"]
                .as_str()
                .unwrap_or("")
                .to_owned();
            (bo.request_count() > seen + 1
                && s["backoffice"]["state"] == "rejected"
                && err.contains(reason))
            .then_some(())
        })
        .await;
        let f = feature(&server, "cad").await.unwrap();
        assert_eq!(f["count"], 2, "{mode:?} changed the rights");
    }
    assert!(server.log().contains("rejected a capability answer"));
    // Good answers again: the new rights arrive.
    bo.set_mode(Mode::Normal);
    rights_arrived(&server, "cad", 9).await;

    // A brand-new server that only ever gets bad answers has no rights.
    bo.set_mode(Mode::WrongKey);
    let fresh = Server::start(&dir.path().join("fresh"), base_env(&bo, "string:lls-new")).await;
    wait_for(T, "a rejected answer", || async {
        (status(&fresh).await["backoffice"]["state"] == "rejected").then_some(())
    })
    .await;
    assert!(
        get_json(&fresh.url("/api/v1/features"))
            .await
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(checkout(&fresh, "cad", "a").await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_before_its_main_waits_and_stands_by() {
    let bo = TestBackoffice::start(vec![right("cad", 2)]).await;
    bo.set_mode(Mode::MainNotRegistered);
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("lls"),
        with(
            base_env(&bo, "string:lls-backup"),
            &[("LICENSING_MAIN_URI", "http://main.example:7070")],
        ),
    )
    .await;
    wait_for(T, "waiting_for_main", || async {
        let s = status(&server).await;
        (s["backoffice"]["state"] == "waiting_for_main").then_some(s)
    })
    .await;
    assert!(server.log().contains("MAIN_NOT_REGISTERED"));
    bo.set_mode(Mode::Normal);
    // Accepted now; a standby backup's pool comes from its main, not from its own polls.
    wait_for(T, "the back office accepting the backup", || async {
        let s = status(&server).await;
        (s["backoffice"]["state"] == "connected").then_some(s)
    })
    .await;
    let s = status(&server).await;
    assert_eq!(s["rights"]["seats"], 0);
    assert_ne!(
        s["pair_status"], "paired_available",
        "no copy of the main's pool yet"
    );
    assert_eq!(
        (s["role"].as_str(), s["server_status"].as_str()),
        (Some("backup"), Some("ready"))
    );
    // A standby backup grants nothing and points at the main.
    let (st, err) = checkout(&server, "cad", "a").await;
    assert_eq!(st, 503);
    assert_eq!(err["code"], "NOT_SERVING");
    assert_eq!(err["serving_url"], "http://main.example:7070");
    let reqs = bo.state.requests.lock().unwrap();
    assert!(reqs.iter().all(|r| r.role == Role::Backup));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_library_renews_in_the_background_and_returns_on_drop() {
    let bo = TestBackoffice::start(vec![right("cad", 1)]).await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("lls"),
        with(
            base_env(&bo, "string:lls-lib"),
            &[
                ("LEASE_DURATION", "2s"),
                ("BACKUP_SERVER_HOSTID", "string:lls-lib-b"),
                ("LICENSING_BACKUP_URI", "http://backup.example:7070"),
            ],
        ),
    )
    .await;
    rights_arrived(&server, "cad", 1).await;
    // A main asks its backup where it stands before it serves; this one's backup never
    // answers, so it serves alone once the question fails.
    wait_for(T, "the main serving", || async {
        let s = status(&server).await;
        (s["server_status"] == "active").then_some(s)
    })
    .await;
    let client = Client::new(&server.url, bo.producer())
        .unwrap()
        .with_client_id("lib");
    let guard = client.checkout("cad", 1).await.unwrap();
    let first = guard.lease();
    assert_eq!(
        first.backup_uri.as_deref(),
        Some("http://backup.example:7070")
    );
    assert!(
        client
            .servers()
            .contains(&"http://backup.example:7070".to_owned())
    );
    // Held well past the 2 s lease: renewed in the background.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    assert!(guard.lease().expires_at > first.expires_at);
    assert!(guard.last_error().is_none());
    assert_eq!(feature(&server, "cad").await.unwrap()["in_use"], 1);
    let other = Client::new(&server.url, bo.producer())
        .unwrap()
        .with_client_id("other");
    let err = other.checkout("cad", 1).await.unwrap_err();
    assert_eq!(err.code(), Some(shared::ErrorCode::NoLicenseAvailable));
    assert!(err.body().unwrap().next_free_at.is_some());
    // Dropped: returned (not left to expire: the returns counter below proves it).
    drop(guard);
    wait_for(T, "the dropped lease to be returned", || async {
        (feature(&server, "cad").await?["in_use"] == 0).then_some(())
    })
    .await;
    // Counted once the return is durable (just after the seat shows free).
    wait_for(T, "the return to be counted", || async {
        let m = http()
            .get(server.url("/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        m.contains("lls_lease_returns_total 1").then_some(())
    })
    .await;
    assert_eq!(status(&server).await["role"], "main");

    // The command-line client.
    let bin = env!("CARGO_BIN_EXE_license-client");
    let out = std::process::Command::new(bin)
        .env("LICENSE_PRODUCER_KEY", &bo.public_key)
        .args([
            "--server",
            &server.url,
            "--client-id",
            "cli",
            "--json",
            "checkout",
            "cad",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lease: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = lease["lease_id"].as_str().unwrap();
    let token = lease["token"].as_str().unwrap();
    let out = std::process::Command::new(bin)
        .env("LICENSE_PRODUCER_KEY", &bo.public_key)
        .args(["--server", &server.url, "renew", id, "--token", token])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = std::process::Command::new(bin)
        .env("LICENSE_PRODUCER_KEY", &bo.public_key)
        .args(["--server", &server.url, "return", id, "--token", token])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = std::process::Command::new(bin)
        .env("LICENSE_PRODUCER_KEY", &bo.public_key)
        .args(["--server", &server.url, "features"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("cad") && text.contains("FREE"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_shuts_down_cleanly_and_state_persists() {
    let bo = TestBackoffice::start(vec![right("cad", 2)]).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("lls");
    let mut server = Server::start(&data, base_env(&bo, "string:lls-term")).await;
    rights_arrived(&server, "cad", 2).await;
    assert_eq!(checkout(&server, "cad", "a").await.0, 201);
    let status = server.terminate();
    assert!(status.success(), "{status}\n{}", server.log());
    assert!(server.log().contains("stopped"));
    let env = server.env.clone();
    drop(server);
    let server = Server::start(&data, env).await;
    assert_eq!(feature(&server, "cad").await.unwrap()["in_use"], 1);
}
