//! Operators' tools against the real back office and real license-server processes:
//! `license-server reread` puts a line item mapped a moment ago in force at once (the
//! poll interval is 10 minutes); `status` shows who holds each seat only with the
//! operator token; `features` and `status` name each line item's end; a denial says how
//! many seats were asked for and how many are free, in words and in fields.

use std::process::Output;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use licensing_client::Client;
use serde_json::{Value, json};
use shared::ErrorCode;
use shared::lease::CheckoutRequest;
use tests::license_server::{feature, http};
use tests::{BackOffice, Backend, Fixture, LicenseServer, backends, eventually};

const WAIT: Duration = Duration::from_secs(30);

/// 2030-03-31T12:00:00Z, the end of the fixture's second line item.
const ENDS: i64 = 1_901_188_800;

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A server of `fx`'s account polling every 10 minutes (so only `reread` brings rights
/// sooner), asking for `rights` at its start.
async fn start_server(
    bo: &BackOffice,
    fx: &Fixture,
    dir: &std::path::Path,
    hostid: &str,
    rights: &str,
) -> Result<LicenseServer> {
    LicenseServer::of_account(bo, fx, dir, hostid)
        .name("lls")
        .env("RIGHTS_IDS", rights)
        .env("CAPABILITY_POLL_INTERVAL", "10m")
        // The polls alone: what reaches the server, reaches it because an operator asked.
        .env("LIVE_LINK", "false")
        .env("BACKOFF_MAX", "500ms")
        .start()
        .await
}

async fn count_of(server: &LicenseServer, name: &str) -> Option<u64> {
    feature(server, name).await?["count"].as_u64()
}

/// The server's ID at the back office, as the account sees it.
async fn server_id(fx: &Fixture, hostid: &str) -> Result<String> {
    let servers = fx.user.get("/api/v1/account/servers").await?.ok()?;
    servers
        .as_array()
        .context("servers")?
        .iter()
        .find(|s| s["hostid"] == hostid)
        .and_then(|s| s["id"].as_str())
        .map(str::to_owned)
        .context("the server at the back office")
}

async fn reread_scenario(backend: Backend) -> Result<()> {
    let mut bo = BackOffice::start(backend).await?;
    let fx = bo.fixture(&["cad"], 10).await?;
    let tmp = tempfile::tempdir()?;
    let hostid = "string:lls-reread";
    let server = start_server(
        &bo,
        &fx,
        &tmp.path().join("lls"),
        hostid,
        &format!("{}:3", fx.activation_id),
    )
    .await?;
    eventually(WAIT, "3 seats from RIGHTS_IDS", || async {
        (count_of(&server, "cad").await == Some(3)).then_some(())
    })
    .await;
    let id = server_id(&fx, hostid).await?;
    // Its start reported (a report is a poll, and would bring the mapping below): once
    // its polls stop for a second (four report ticks), nothing changes on the server and
    // nothing is reported until a minute is up.
    let polls = || async {
        let m = http()
            .get(server.url("/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        m.lines()
            .find(|l| l.starts_with("lls_capability_polls_total{result=\"ok\"}"))
            .map(str::to_owned)
    };
    eventually(WAIT, "the server's polls to settle", || async {
        let before = polls().await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        (polls().await? == before).then_some(())
    })
    .await;
    let map = |quantity: u32| {
        fx.user.post(
            "/api/v1/account/mappings",
            json!({"activation_id": fx.activation_id, "server_id": id, "quantity": quantity}),
        )
    };
    let data_dir = server.data_dir.display().to_string();

    // Mapped through the account API; without the operator token, or with a wrong one,
    // no poll is made: the server still has 3 seats (its next poll is 10 minutes away).
    map(2).await?.ok()?;
    let url = server.url("/api/v1/admin/reread");
    let none = http().post(&url).send().await?;
    ensure!(none.status() == 401, "no token: {}", none.status());
    let wrong = http()
        .post(&url)
        .bearer_auth("not-the-operator-token")
        .send()
        .await?;
    ensure!(wrong.status() == 401, "wrong token: {}", wrong.status());
    let out = server.operator(&["reread"])?;
    ensure!(
        !out.status.success() && text(&out).contains("no operator token"),
        "{}",
        text(&out)
    );
    let out = server.operator(&["reread", "--token", "not-the-operator-token"])?;
    ensure!(
        !out.status.success() && text(&out).contains("UNAUTHORIZED"),
        "{}",
        text(&out)
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    ensure!(count_of(&server, "cad").await == Some(3), "polled anyway");

    // With the token: in force when the command returns, and it says what changed.
    let out = server.operator(&["reread", "--data-dir", &data_dir])?;
    ensure!(out.status.success(), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    ensure!(
        said.contains("cad 1.0: 3 permanent -> 5 permanent"),
        "{said}"
    );
    ensure!(count_of(&server, "cad").await == Some(5), "not in force");

    // Nothing new: it says so; as JSON, the features before and after.
    let out = server.operator(&["reread", "--data-dir", &data_dir])?;
    ensure!(
        out.status.success() && text(&out).contains("rights unchanged"),
        "{}",
        text(&out)
    );
    let out = server.operator(&["reread", "--json", "--data-dir", &data_dir])?;
    let v: Value = serde_json::from_slice(&out.stdout).with_context(|| text(&out))?;
    ensure!(
        v["before"][0]["count"] == 5 && v["after"][0]["count"] == 5,
        "{v}"
    );

    // The back office gone: the operator is told why, and the rights stay.
    bo.stop();
    let out = server.operator(&["reread", "--data-dir", &data_dir])?;
    let why = text(&out);
    ensure!(
        !out.status.success() && why.contains("UNAVAILABLE") && why.contains("unreachable"),
        "{why}"
    );
    ensure!(count_of(&server, "cad").await == Some(5));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reread_puts_a_line_item_mapped_through_the_account_api_in_force_at_once() -> Result<()> {
    for b in backends() {
        reread_scenario(b)
            .await
            .with_context(|| format!("on {b:?}"))?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_who_holds_each_seat_and_each_line_items_end_to_the_operator_only()
-> Result<()> {
    let bo = BackOffice::start(Backend::Sqlite).await?;
    let fx = bo.fixture(&["cad"], 10).await?;
    // A second line item of 4 seats that ends in 2030.
    let dated = fx.add_line_item(4, Some(ENDS)).await?;
    let tmp = tempfile::tempdir()?;
    let server = start_server(
        &bo,
        &fx,
        &tmp.path().join("lls"),
        "string:lls-status",
        &format!("{}:10,{dated}:4", fx.activation_id),
    )
    .await?;
    eventually(WAIT, "14 seats", || async {
        (count_of(&server, "cad").await == Some(14)).then_some(())
    })
    .await;
    let client = Client::new(&server.url, bo.producer())?;
    let checkout = |id: &str, count: u32| CheckoutRequest {
        count,
        ..tests::checkout_request("cad", id)
    };
    client.checkout_lease(&checkout("ws-17:4242", 5)).await?;
    client.checkout_lease(&checkout("ws-23:77", 4)).await?;

    // A denial says how many were asked for and how many are free, in words and fields.
    let err = client
        .checkout_lease(&checkout("ws-99:1", 7))
        .await
        .unwrap_err();
    let body = err.body().context("an API error")?;
    ensure!(body.code == ErrorCode::NoLicenseAvailable, "{err}");
    ensure!(
        body.message
            .contains("7 seats of cad 1.0 asked, 5 of 14 free"),
        "{err}"
    );
    ensure!(
        (body.asked, body.free, body.count) == (Some(7), Some(5), Some(14)),
        "{body:?}"
    );

    // `features`: each line item's end.
    let out = server.operator(&["features"])?;
    ensure!(out.status.success(), "{}", text(&out));
    ensure!(
        text(&out).contains("10 permanent, 4 until 2030-03-31"),
        "{}",
        text(&out)
    );

    // `status` with the token: per feature, the count with its ends, and each holder.
    let data_dir = server.data_dir.display().to_string();
    let out = server.operator(&["status", "--data-dir", &data_dir])?;
    let said = text(&out);
    ensure!(out.status.success(), "{said}");
    ensure!(
        said.contains("cad 1.0: 9 in use of 14 (10 permanent, 4 until 2030-03-31), 5 free"),
        "{said}"
    );
    for holder in ["ws-17:4242", "ws-23:77"] {
        let row = said
            .lines()
            .find(|l| l.trim_start().starts_with(holder))
            .with_context(|| format!("no row of {holder}:\n{said}"))?;
        ensure!(row.contains("string:lls-status"), "served by: {row}");
    }
    ensure!(
        said.contains("CLIENT") && said.contains("SINCE") && said.contains("UNTIL"),
        "{said}"
    );

    // Without the token the holders are not shown; with a wrong one, refused. The API
    // itself refuses both.
    let out = server.operator(&["status"])?;
    let said = text(&out);
    ensure!(
        out.status.success() && said.contains("seat holders not shown") && !said.contains("ws-17"),
        "{said}"
    );
    let out = server.operator(&["status", "--token", "not-the-operator-token"])?;
    let said = text(&out);
    ensure!(
        !out.status.success() && said.contains("UNAUTHORIZED") && !said.contains("ws-17"),
        "{said}"
    );
    let url = server.url("/api/v1/admin/usage");
    let none = http().get(&url).send().await?;
    ensure!(none.status() == 401, "no token: {}", none.status());
    let wrong = http()
        .get(&url)
        .bearer_auth("not-the-operator-token")
        .send()
        .await?;
    ensure!(wrong.status() == 401, "wrong token: {}", wrong.status());
    let usage: Value = http()
        .get(&url)
        .bearer_auth(server.admin_token())
        .send()
        .await?
        .json()
        .await?;
    ensure!(
        usage[0]["leases"].as_array().map(Vec::len) == Some(2),
        "{usage}"
    );
    ensure!(
        usage[0]["pool"]["rights"][0]["expires_at"] == ENDS,
        "soonest end first: {usage}"
    );
    Ok(())
}
