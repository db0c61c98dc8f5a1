//! Borrowing and overdraft with real processes: the real back office sets a line item's
//! policy, a failover pair (or a standalone server) enforces it from the signed rights.
//! A borrowed seat counts against the pool, survives kill -9 of the main and the
//! failback, is given back early, and its grant verifies offline (library and
//! `license-client verify`) once both servers are stopped; a borrow longer than allowed
//! or of a line item that is not borrowable is refused. Overdraft seats are granted
//! beyond the count, marked, reported to the back office and shown there; none where the
//! line item has none.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use licensing_client::{Client, ClientError, verify_borrowed};
use serde_json::json;
use shared::ErrorCode;
use shared::lease::Lease;
use tests::{
    BackOffice, Backend, Fixture, LicenseServer, PairSetup, binary, eventually, server_env,
    wait_paired,
};

const WAIT: Duration = Duration::from_secs(30);
const HOUR: Duration = Duration::from_secs(3_600);

fn code(r: &Result<Lease, ClientError>) -> Option<ErrorCode> {
    r.as_ref().err().and_then(ClientError::code)
}

/// Runs `license-client verify FILE` with the producer's key and no server.
fn verify_cli(bo: &BackOffice, file: &std::path::Path) -> Result<std::process::Output> {
    Ok(std::process::Command::new(binary("license-client"))
        .arg("--producer-key")
        .arg(bo.public_key_path())
        .arg("--server")
        .arg("http://127.0.0.1:9")
        .arg("verify")
        .arg(file)
        .output()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_borrowed_seat_counts_survives_kill_9_and_failback_returns_early_and_verifies_offline()
-> Result<()> {
    let bo = BackOffice::start(Backend::Sqlite).await?;
    let fx = bo.fixture(&["cad"], 20).await?;
    fx.patch_line_item(json!({"borrowable": true, "max_borrow_secs": 86_400}))
        .await?;
    let pair = PairSetup::new(&bo, &fx, 2, &[])?;
    let mut main = pair.start_main().await?;
    let mut backup = pair.start_backup().await?;
    wait_paired(&main, &backup, WAIT).await?;
    let producer = bo.producer();
    let laptop = Client::new(&main.url, producer.clone())?.with_client_id("laptop");
    let desk = Client::new(&main.url, producer.clone())?.with_client_id("desk");

    // Longer than the line item allows: refused, naming the maximum; nothing granted.
    let r = laptop.borrow("cad", None, 1, 2 * 24 * HOUR).await;
    ensure!(code(&r) == Some(ErrorCode::ValidationError), "{r:?}");
    let body = r.unwrap_err().body().cloned().context("an error body")?;
    ensure!(body.field.as_deref() == Some("borrow_secs"), "{body:?}");
    ensure!(body.message.contains("86400"), "{body:?}");

    // Two seats borrowed for an hour: signed borrows, and the pool of 2 is used up.
    let kept = laptop.borrow("cad", None, 1, HOUR).await?;
    let early = laptop.borrow("cad", None, 1, HOUR).await?;
    let now = shared::now_unix();
    for b in [&kept, &early] {
        ensure!(b.borrowed && !b.overdraft, "{b:?}");
        ensure!((b.expires_at - now - 3_600).abs() <= 5, "{b:?}");
        verify_borrowed(&producer, b, now, 5)?;
    }
    let r = desk
        .checkout_lease(&tests::checkout_request("cad", "desk"))
        .await;
    ensure!(code(&r) == Some(ErrorCode::NoLicenseAvailable), "{r:?}");

    // kill -9 of the main: the backup holds both borrows, counts them, and takes one
    // back early, freeing its seat.
    main.kill9();
    let on_backup = Client::new(&backup.url, producer.clone())?.with_client_id("desk");
    eventually(WAIT, "the backup serving", || async {
        (backup.status().await.ok()?["server_status"] == "active").then_some(())
    })
    .await;
    let held = tests::lease_ids(&backup.leases("cad").await?);
    ensure!(
        held.contains(&kept.lease_id.to_string()) && held.contains(&early.lease_id.to_string()),
        "the backup lost a borrow: {held:?}"
    );
    let r = on_backup
        .checkout_lease(&tests::checkout_request("cad", "desk"))
        .await;
    ensure!(code(&r) == Some(ErrorCode::NoLicenseAvailable), "{r:?}");
    Client::new(&backup.url, producer.clone())?
        .release(&early)
        .await?;
    let desk_lease = on_backup
        .checkout_lease(&tests::checkout_request("cad", "desk"))
        .await?;

    // Failback: the main takes the backup's changes; the borrow is still held, marked,
    // and still counted.
    main.restart().await?;
    wait_paired(&main, &backup, WAIT).await?;
    let leases = main.leases("cad").await?;
    let borrowed = leases
        .iter()
        .find(|l| l["lease_id"] == kept.lease_id.to_string())
        .context("the borrow is not on the main after failback")?;
    ensure!(borrowed["borrowed"] == true, "{borrowed}");
    ensure!(
        borrowed["expires_at"] == kept.expires_at,
        "the failback moved the borrow's end: {borrowed}"
    );
    ensure!(
        !tests::lease_ids(&leases).contains(&early.lease_id.to_string()),
        "a borrow returned early came back"
    );
    ensure!(tests::lease_ids(&leases).contains(&desk_lease.lease_id.to_string()));
    let r = desk
        .checkout_lease(&tests::checkout_request("cad", "another"))
        .await;
    ensure!(code(&r) == Some(ErrorCode::NoLicenseAvailable), "{r:?}");

    // No longer borrowable (at the servers' next poll): a new borrow is refused.
    fx.patch_line_item(json!({"borrowable": false})).await?;
    eventually(WAIT, "a borrow refused as not borrowable", || async {
        let r = Client::new(&main.url, producer.clone())
            .ok()?
            .with_client_id("late")
            .borrow("cad", None, 1, HOUR)
            .await;
        (code(&r) == Some(ErrorCode::Forbidden)).then_some(())
    })
    .await;

    // Both servers stopped: the borrow verifies offline, with the library and the CLI; a
    // lease file whose count was raised does not.
    main.terminate();
    backup.terminate();
    verify_borrowed(&producer, &kept, shared::now_unix(), 5)?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("borrowed.json");
    std::fs::write(&file, serde_json::to_vec(&kept)?)?;
    let out = verify_cli(&bo, &file)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success() && stdout.contains("valid"), "{out:?}");
    let mut forged = kept.clone();
    forged.count = 5;
    std::fs::write(&file, serde_json::to_vec(&forged)?)?;
    let out = verify_cli(&bo, &file)?;
    ensure!(!out.status.success(), "a forged borrow verified: {out:?}");
    // An ordinary (online) lease is no borrow.
    let mut online = desk_lease.clone();
    online.borrowed = true;
    ensure!(verify_borrowed(&producer, &online, shared::now_unix(), 5).is_err());
    Ok(())
}

async fn standalone(
    bo: &BackOffice,
    fx: &Fixture,
    dir: &std::path::Path,
) -> Result<(LicenseServer, String)> {
    let hostid = format!(
        "string:lls-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let env = tests::license_server::with(
        server_env(bo, fx, &hostid),
        &[("RIGHTS_IDS", &format!("{}:2", fx.activation_id))],
    );
    Ok((LicenseServer::start("lls", dir, 0, &env).await?, hostid))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overdraft_seats_are_granted_marked_reported_and_shown_and_none_where_not_allowed()
-> Result<()> {
    let bo = BackOffice::start(Backend::Sqlite).await?;
    let fx = bo.fixture(&["cad"], 10).await?;
    fx.patch_line_item(json!({"overdraft": 1})).await?;
    let tmp = tempfile::tempdir()?;
    let (server, hostid) = standalone(&bo, &fx, &tmp.path().join("lls")).await?;
    let client = Client::new(&server.url, bo.producer())?;
    let checkout = |id: &str| {
        let client = client.with_client_id(id);
        let id = id.to_owned();
        async move {
            client
                .checkout_lease(&tests::checkout_request("cad", &id))
                .await
        }
    };
    let a = eventually(WAIT, "rights from the back office", || async {
        checkout("a").await.ok()
    })
    .await;
    let b = checkout("b").await?;
    ensure!(!a.overdraft && !b.overdraft, "{a:?} {b:?}");
    // The count used up: one overdraft seat, marked; then denied as usual.
    let c = checkout("c").await?;
    ensure!(c.overdraft, "{c:?}");
    let r = checkout("d").await;
    ensure!(code(&r) == Some(ErrorCode::NoLicenseAvailable), "{r:?}");
    let leases = server.leases("cad").await?;
    let marked: Vec<_> = leases.iter().filter(|l| l["overdraft"] == true).collect();
    ensure!(
        marked.len() == 1 && marked[0]["lease_id"] == c.lease_id.to_string(),
        "{leases:?}"
    );

    // Reported with the next poll and shown on the server's page of the account API.
    let id = fx.server_id(&hostid).await?;
    let usage = eventually(WAIT, "the overage reported", || async {
        let v = fx
            .user
            .get(&format!("/api/v1/account/servers/{id}"))
            .await
            .ok()?
            .ok()
            .ok()?;
        let u = v["usage"]
            .as_array()?
            .iter()
            .find(|u| u["feature"] == "cad")?
            .clone();
        (u["overdraft"] == 1).then_some(u)
    })
    .await;
    ensure!(usage["in_use"] == 3 && usage["count"] == 2, "{usage}");

    // No overdraft on the line item (at the next poll): the seat given back is not
    // granted beyond the count again.
    fx.patch_line_item(json!({"overdraft": 0})).await?;
    client.release(&c).await?;
    eventually(WAIT, "no overdraft any more", || async {
        let r = checkout("e").await;
        match r {
            Ok(l) => {
                // Still the old rights: give it back and ask again.
                client.release(&l).await.ok()?;
                None
            }
            Err(_) => (code(&r) == Some(ErrorCode::NoLicenseAvailable)).then_some(()),
        }
    })
    .await;
    Ok(())
}
