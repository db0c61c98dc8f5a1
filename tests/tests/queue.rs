//! Queueing with real processes (a back office, license servers, clients of the client
//! library): clients that wait in line are granted in the order they joined as seats
//! free, never more than the count and never twice; a reserved seat goes past a queued
//! client it is not reserved for, who blocks nobody behind; a client that gives up
//! (its time ends, or it leaves) gets no seat and blocks nobody; a wait out of range is
//! refused and changes nothing; the line is intact on the backup after a kill -9 of the
//! main (the backup grants the next in line) and on the main after the failback.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use licensing_client::{Client, ClientError};
use serde_json::{Value, json};
use shared::ErrorCode;
use shared::lease::{CheckoutRequest, Lease};
use tests::license_server::{granted, queue_at, still_waiting};
use tests::{BackOffice, Backend, LicenseServer, PairSetup, eventually, wait_paired};
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(30);
/// How long the queued clients of these tests are willing to wait.
const PATIENCE: Duration = Duration::from_secs(120);

fn ask(client_id: &str, user: &str) -> CheckoutRequest {
    CheckoutRequest {
        user: Some(user.to_owned()),
        host: Some("ws".to_owned()),
        ..tests::checkout_request("cad", client_id)
    }
}

/// A client of the library that waits in line for a seat, in a task of its own.
fn wait_in_line(client: &Client, req: CheckoutRequest) -> JoinHandle<Result<Lease, ClientError>> {
    let client = client.clone();
    tokio::spawn(async move { client.checkout_lease_queued(&req, PATIENCE, |_| {}).await })
}

async fn line_is(url: &str, token: &str, clients: &[&str]) {
    tests::license_server::line_is(url, token, "cad", clients).await;
}

async fn within_count(server: &LicenseServer, count: u32) -> Result<u32> {
    tests::license_server::within_count(server, "cad", count).await
}

async fn standalone(
    bo: &BackOffice,
    dir: &Path,
    seats: u32,
    extra: &[(&str, &str)],
) -> Result<LicenseServer> {
    let fx = bo.fixture(&["cad"], 10).await?;
    let hostid = format!(
        "string:lls-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let mut builder = LicenseServer::of_account(bo, &fx, &dir.join("lls"), &hostid)
        .name("lls")
        .env("RIGHTS_IDS", format!("{}:{seats}", fx.activation_id))
        .env("CAPABILITY_POLL_INTERVAL", "1s")
        .env("BACKOFF_MAX", "500ms")
        .env("LEASE_DURATION", "60s")
        .env("QUEUE_MAX_WAIT", "10m");
    for (k, v) in extra {
        builder = builder.env(k, *v);
    }
    let server = builder.start().await?;
    eventually(WAIT, "the seats of cad", || async {
        let f = tests::license_server::feature(&server, "cad").await?;
        (f["count"] == seats).then_some(())
    })
    .await;
    Ok(server)
}

async fn raw_checkout(server: &LicenseServer, body: Value) -> Result<(u16, Value)> {
    let resp = tests::license_server::http()
        .post(server.url("/api/v1/leases"))
        .json(&body)
        .send()
        .await?;
    Ok((resp.status().as_u16(), resp.json().await?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_clients_queued_in_order_are_granted_in_order_as_seats_free() -> Result<()> {
    let bo = BackOffice::start(Backend::Sqlite).await?;
    let tmp = tempfile::tempdir()?;
    let server = standalone(&bo, tmp.path(), 2, &[]).await?;
    let token = server.admin_token();
    let client = Client::new(&server.url, bo.producer())?;
    let h1 = client.checkout_lease(&ask("h1", "ann")).await?;
    let h2 = client.checkout_lease(&ask("h2", "ann")).await?;

    // A wait out of range, or with a borrow: refused by field, nothing queued.
    for (body, needle) in [
        (
            json!({"feature": "cad", "client_id": "x", "queue_secs": 0}),
            "between 1 and 600",
        ),
        (
            json!({"feature": "cad", "client_id": "x", "queue_secs": 601}),
            "QUEUE_MAX_WAIT",
        ),
        (
            json!({"feature": "cad", "client_id": "x", "queue_secs": 5, "borrow_secs": 60}),
            "not both",
        ),
    ] {
        let (status, err) = raw_checkout(&server, body).await?;
        ensure!(
            status == 400 && err["code"] == "VALIDATION_ERROR" && err["field"] == "queue_secs",
            "{status} {err}"
        );
        ensure!(
            err["message"].as_str().unwrap_or_default().contains(needle),
            "{err}"
        );
    }
    ensure!(queue_at(&server.url, &token, "cad").await?.is_empty());
    ensure!(server.status().await?.get("queued").is_none());

    // Three clients join the line one after the other.
    let mut q1 = wait_in_line(&client, ask("q1", "bob"));
    line_is(&server.url, &token, &["q1"]).await;
    let mut q2 = wait_in_line(&client, ask("q2", "carol"));
    line_is(&server.url, &token, &["q1", "q2"]).await;
    let mut q3 = wait_in_line(&client, ask("q3", "dave"));
    line_is(&server.url, &token, &["q1", "q2", "q3"]).await;
    // Visible: the count per feature in the status, who and since when to operators,
    // the gauge in the metrics.
    let status = server.status().await?;
    ensure!(status["queued"]["cad"] == 3, "{status}");
    let line = queue_at(&server.url, &token, "cad").await?;
    ensure!(
        line[2]["position"] == 3 && line[2]["user"] == "dave" && line[2]["queued_at"].is_i64(),
        "{line:?}"
    );
    let metrics = tests::license_server::http()
        .get(server.url("/metrics"))
        .send()
        .await?
        .text()
        .await?;
    ensure!(metrics.contains("lls_queued 3"), "{metrics}");
    // `license-server status` with the operator token: how many wait, and who.
    let out = server.operator(&["status", "--token", &token])?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(text.contains("3 waiting in line"), "{text}");
    let rows: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(" q1 ") || l.contains(" q2 ") || l.contains(" q3 "))
        .collect();
    ensure!(
        rows.len() == 3 && rows[0].contains("bob") && rows[2].trim_start().starts_with('3'),
        "{text}"
    );
    // A newcomer without a wait does not jump the line, even when a seat frees.
    let (status, err) = raw_checkout(&server, json!({"feature": "cad", "client_id": "n"})).await?;
    ensure!(
        status == 409 && err["code"] == "NO_LICENSE_AVAILABLE",
        "{status} {err}"
    );

    // Seats free one at a time: granted in the order the clients joined.
    client.release(&h2).await?;
    let l1 = granted(&mut q1, "q1").await?;
    ensure!(l1.client_id == "q1");
    line_is(&server.url, &token, &["q2", "q3"]).await;
    still_waiting(&mut q2, "q2, granted out of order").await?;
    still_waiting(&mut q3, "q3, granted out of order").await?;
    ensure!(within_count(&server, 2).await? == 2);
    client.release(&h1).await?;
    let l2 = granted(&mut q2, "q2").await?;
    still_waiting(&mut q3, "q3, granted before its turn").await?;
    client.release(&l1).await?;
    let l3 = granted(&mut q3, "q3").await?;
    ensure!(within_count(&server, 2).await? == 2);
    // Nothing granted twice: three leases of their own, held by the right clients.
    let held = tests::license_server::leases_at(&server.url, &token, "cad").await?;
    let ids = tests::lease_ids(&held);
    ensure!(
        ids.len() == 2
            && ids.contains(&l2.lease_id.to_string())
            && ids.contains(&l3.lease_id.to_string()),
        "{held:?}"
    );
    ensure!(l1.lease_id != l2.lease_id && l2.lease_id != l3.lease_id);
    ensure!(queue_at(&server.url, &token, "cad").await?.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reserved_seat_is_not_given_to_a_queued_client_it_is_not_reserved_for() -> Result<()> {
    let bo = BackOffice::start(Backend::Sqlite).await?;
    let tmp = tempfile::tempdir()?;
    let options = tmp.path().join("options");
    std::fs::write(&options, "# alice's seat\nRESERVE 1 cad USER alice\n")?;
    let server = standalone(
        &bo,
        tmp.path(),
        2,
        &[("LICENSING_OPTIONS_FILE", &options.display().to_string())],
    )
    .await?;
    let token = server.admin_token();
    let client = Client::new(&server.url, bo.producer())?;
    let bob1 = client.checkout_lease(&ask("bob-1", "bob")).await?;
    let alice1 = client.checkout_lease(&ask("alice-1", "alice")).await?;
    let mut bob2 = wait_in_line(&client, ask("bob-2", "bob"));
    line_is(&server.url, &token, &["bob-2"]).await;
    let mut alice2 = wait_in_line(&client, ask("alice-2", "alice"));
    line_is(&server.url, &token, &["bob-2", "alice-2"]).await;

    // Alice's seat frees: bob-2, first in line, may not have it and holds nobody back.
    client.release(&alice1).await?;
    let l = granted(&mut alice2, "alice-2").await?;
    ensure!(l.user.as_deref() == Some("alice"));
    line_is(&server.url, &token, &["bob-2"]).await;
    still_waiting(&mut bob2, "bob-2, given alice's reserved seat").await?;
    // Bob's own seat frees: his turn.
    client.release(&bob1).await?;
    granted(&mut bob2, "bob-2").await?;
    within_count(&server, 2).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_client_that_gives_up_gets_no_seat_and_does_not_block_the_next() -> Result<()> {
    let bo = BackOffice::start(Backend::Sqlite).await?;
    let tmp = tempfile::tempdir()?;
    let server = standalone(&bo, tmp.path(), 1, &[]).await?;
    let token = server.admin_token();
    let client = Client::new(&server.url, bo.producer())?;
    let holder = client.checkout_lease(&ask("holder", "ann")).await?;

    // One waits 2 s through the library (it leaves the line when its time is up); one
    // joins over HTTP for 2 s and never comes back (its place lapses); one is patient.
    let quitter = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .checkout_lease_queued(&ask("quitter", "bob"), Duration::from_secs(2), |_| {})
                .await
        })
    };
    line_is(&server.url, &token, &["quitter"]).await;
    let (status, place) = raw_checkout(
        &server,
        json!({"feature": "cad", "client_id": "lapser", "queue_secs": 2}),
    )
    .await?;
    ensure!(status == 202 && place["position"] == 2, "{status} {place}");
    ensure!(
        place["queued_until"].as_i64() > place["queued_at"].as_i64(),
        "{place}"
    );
    let mut patient = wait_in_line(&client, ask("patient", "carol"));
    line_is(&server.url, &token, &["quitter", "lapser", "patient"]).await;

    let gave_up = tokio::time::timeout(WAIT, quitter).await??;
    match gave_up {
        Err(e) if e.code() == Some(ErrorCode::NoLicenseAvailable) => {}
        other => bail!("the quitter's wait ended with {other:?}"),
    }
    line_is(&server.url, &token, &["patient"]).await;
    client.release(&holder).await?;
    let lease = granted(&mut patient, "patient").await?;
    let held = tests::license_server::leases_at(&server.url, &token, "cad").await?;
    ensure!(
        tests::lease_ids(&held) == [lease.lease_id.to_string()].into(),
        "{held:?}"
    );
    // Leaving by the place's token: a stranger's token is refused, the right one works.
    let (status, place) = raw_checkout(
        &server,
        json!({"feature": "cad", "client_id": "leaver", "queue_secs": 60}),
    )
    .await?;
    ensure!(status == 202, "{status} {place}");
    let leave = |bearer: String| {
        tests::license_server::http()
            .delete(server.url(&format!(
                "/api/v1/queue/{}",
                place["queue_id"].as_str().unwrap_or("?")
            )))
            .bearer_auth(bearer)
            .send()
    };
    // `license-client checkout --queue`: shows its place, gives up after its wait.
    let out = tokio::process::Command::new(tests::binary("license-client"))
        .args([
            "--server",
            &server.url,
            "--client-id",
            "cli",
            "--producer-key",
        ])
        .arg(bo.public_key_path())
        .args(["checkout", "cad", "--queue", "1"])
        .output()
        .await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success()
            && stderr.contains("waiting in line for cad: place 2 of 2")
            && stderr.contains("waited in line 1s without a free seat"),
        "{stderr}"
    );
    ensure!(leave(lease.token.clone()).await?.status() == 403);
    ensure!(
        leave(place["token"].as_str().unwrap_or_default().to_owned())
            .await?
            .status()
            == 204
    );
    ensure!(queue_at(&server.url, &token, "cad").await?.is_empty());
    within_count(&server, 1).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_line_is_intact_on_the_backup_after_a_kill_9_of_the_main_and_again_after_the_failback()
-> Result<()> {
    let bo = BackOffice::start(Backend::Sqlite).await?;
    let fx = bo.fixture(&["cad"], 10).await?;
    let pair = PairSetup::new(&bo, &fx, 1, &[("QUEUE_MAX_WAIT", "10m")])?;
    let mut main = pair.start_main().await?;
    let backup = pair.start_backup().await?;
    wait_paired(&main, &backup, WAIT).await?;
    let (main_token, backup_token) = (main.admin_token(), backup.admin_token());
    let client = Client::builder(bo.producer())
        .server(&main.url)
        .server(&backup.url)
        .build()?;
    eventually(WAIT, "1 seat of cad", || async {
        let f = tests::license_server::feature(&main, "cad").await?;
        (f["count"] == 1).then_some(())
    })
    .await;
    let holder = client.checkout_lease(&ask("holder", "ann")).await?;
    let mut q1 = wait_in_line(&client, ask("q1", "bob"));
    line_is(&main.url, &main_token, &["q1"]).await;
    let mut q2 = wait_in_line(&client, ask("q2", "carol"));
    line_is(&main.url, &main_token, &["q1", "q2"]).await;
    // The backup holds the same line (each place was answered once it held it).
    line_is(&backup.url, &backup_token, &["q1", "q2"]).await;

    // The main dies: the backup takes over with the line; a seat frees there and goes
    // to the next in line.
    main.kill9();
    eventually(WAIT, "the backup taking the holder's seat back", || async {
        client.release(&holder).await.ok()
    })
    .await;
    let l1 = granted(&mut q1, "q1").await?;
    ensure!(
        l1.served_by.as_deref() == Some(backup.url.as_str()),
        "{l1:?}"
    );
    line_is(&backup.url, &backup_token, &["q2"]).await;
    ensure!(within_count(&backup, 1).await? == 1);

    // The failback: the main takes the backup's changes back, the line with them.
    main.restart().await?;
    wait_paired(&main, &backup, WAIT).await?;
    line_is(&main.url, &main_token, &["q2"]).await;
    still_waiting(&mut q2, "q2, granted a seat that was not free").await?;
    client.release(&l1).await?;
    let l2 = granted(&mut q2, "q2").await?;
    ensure!(l2.served_by.as_deref() == Some(main.url.as_str()), "{l2:?}");
    ensure!(within_count(&main, 1).await? == 1);
    line_is(&backup.url, &backup_token, &[]).await;
    Ok(())
}

/// Runs `f` on a thread of its own, outside the test's runtime (as a C program would).
/// Started at once; the answer is awaited.
fn off_runtime<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> impl std::future::Future<Output = Result<T>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    async move { rx.await.context("the thread ended without an answer") }
}

/// The C ABI's `licensing_checkout_queued` is this call behind its pointer checks (the
/// tests crate forbids `unsafe`, so it calls the safe layer the ABI wraps).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_c_abi_waits_in_line_until_granted_or_its_wait_ends() -> Result<()> {
    use licensing::{LicensingClient, LicensingStatus, Settings};

    let bo = BackOffice::start(Backend::Sqlite).await?;
    let tmp = tempfile::tempdir()?;
    let server = standalone(&bo, tmp.path(), 1, &[]).await?;
    let token = server.admin_token();
    let client = Client::new(&server.url, bo.producer())?;
    let holder = client.checkout_lease(&ask("holder", "ann")).await?;

    let key = std::fs::read_to_string(bo.public_key_path())?;
    let c_client = |id: &str| -> Result<std::sync::Arc<LicensingClient>> {
        let client = LicensingClient::new(Settings {
            servers: &server.url,
            producer_key_pem: &key,
            ca_pem: None,
            client_id: Some(id),
        })
        .map_err(|f| anyhow::anyhow!("{}", f.message))?;
        Ok(std::sync::Arc::new(client))
    };
    let (first, second) = (c_client("c-program")?, c_client("c-other")?);
    // The C call blocks its thread (a thread of C's own, outside any runtime) until
    // granted or its wait ends.
    let checkout = |c: &std::sync::Arc<LicensingClient>, wait_secs: u64| {
        let c = c.clone();
        off_runtime(move || c.checkout("cad", None, 1, Some(Duration::from_secs(wait_secs))))
    };
    let waiting = checkout(&first, 120);
    line_is(&server.url, &token, &["c-program"]).await;
    client.release(&holder).await?;
    let lease = tokio::time::timeout(WAIT, waiting)
        .await??
        .map_err(|f| anyhow::anyhow!("{}", f.message))?;
    ensure!(lease.lease().is_some_and(|l| l.client_id == "c-program"));
    // Held now: another client's wait of one second ends without a seat, out of line.
    let other = tokio::time::timeout(WAIT, checkout(&second, 1)).await??;
    let status = other.as_ref().err().map(|f| f.status);
    // Whatever it got is let go off the runtime (a lease would be returned on drop).
    off_runtime(move || drop(other)).await?;
    ensure!(
        status == Some(LicensingStatus::NoLicenseAvailable),
        "{status:?}"
    );
    ensure!(queue_at(&server.url, &token, "cad").await?.is_empty());
    within_count(&server, 1).await?;
    // The lease is returned and the client's runtime stopped where blocking is allowed.
    off_runtime(move || drop((lease, first, second))).await?;
    within_count(&server, 0).await?;
    Ok(())
}
