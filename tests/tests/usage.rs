//! Usage reports with real processes (a back office, license servers, clients of the
//! client library): grants and denials of several kinds counted per interval, true
//! denials told from retries, reported to the back office and read back through the
//! account API per server and per entitlement; and a pair through a kill -9 of the main
//! and the failback, every interval reported once (the totals are what both sides
//! served).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Result, ensure};
use licensing_client::{Client, ClientError};
use serde_json::Value;
use shared::ErrorCode;
use shared::lease::{CheckoutRequest, Lease};
use tests::backoffice::Fixture;
use tests::{BackOffice, Backend, LicenseServer, PairSetup, eventually, wait_paired};

const WAIT: Duration = Duration::from_secs(40);

fn ask(client_id: &str, user: &str, host: &str) -> CheckoutRequest {
    CheckoutRequest {
        user: Some(user.to_owned()),
        host: Some(host.to_owned()),
        ..tests::checkout_request("cad", client_id)
    }
}

async fn refused(client: &Client, req: &CheckoutRequest, code: ErrorCode) -> Result<()> {
    match client.checkout_lease(req).await {
        Ok(l) => anyhow::bail!("{} was granted {l:?}, expected {code}", req.client_id),
        Err(ClientError::Api { body, .. }) if body.code == code => Ok(()),
        Err(e) => anyhow::bail!("{}: {e} (expected {code})", req.client_id),
    }
}

/// What a list of intervals (the account API's) adds up to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Totals {
    grants: i64,
    denials: BTreeMap<String, i64>,
    true_denials: i64,
    peak: i64,
    served_by: Vec<String>,
}

fn totals(intervals: &Value) -> Totals {
    let mut t = Totals::default();
    for i in intervals.as_array().into_iter().flatten() {
        t.grants += i["grants"].as_i64().unwrap_or_default();
        t.true_denials += i["true_denials"].as_i64().unwrap_or_default();
        t.peak = t.peak.max(i["peak"].as_i64().unwrap_or_default());
        for (code, n) in i["denials"].as_object().into_iter().flatten() {
            *t.denials.entry(code.clone()).or_default() += n.as_i64().unwrap_or_default();
        }
        for s in i["served_by"].as_array().into_iter().flatten() {
            let s = s.as_str().unwrap_or_default().to_owned();
            if !t.served_by.contains(&s) {
                t.served_by.push(s);
            }
        }
    }
    t.served_by.sort();
    t
}

async fn server_totals(fx: &Fixture, server_id: &str) -> Option<Totals> {
    Some(totals(&fx.usage_intervals(server_id).await?))
}

fn denials(list: &[(&str, i64)]) -> BTreeMap<String, i64> {
    list.iter().map(|(c, n)| ((*c).to_owned(), *n)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_denials_by_code_and_true_denials_reach_the_back_office_per_server_and_entitlement()
-> Result<()> {
    let bo = BackOffice::start(Backend::Sqlite).await?;
    let fx = bo.fixture(&["cad"], 10).await?;
    let tmp = tempfile::tempdir()?;
    let options = tmp.path().join("options");
    std::fs::write(&options, "MAX 1 cad USER carol\nEXCLUDE cad HOST kiosk\n")?;
    let hostid = format!(
        "string:lls-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let server = LicenseServer::of_account(&bo, &fx, &tmp.path().join("lls"), &hostid)
        .env("RIGHTS_IDS", format!("{}:2", fx.activation_id))
        .env("CAPABILITY_POLL_INTERVAL", "1s")
        .env("BACKOFF_MAX", "500ms")
        .env("LICENSING_OPTIONS_FILE", options.display().to_string())
        .env("USAGE_INTERVAL", "2s")
        .env("USAGE_RETRY_WINDOW", "5s")
        .start()
        .await?;
    let client = Client::new(&server.url, bo.producer())?;
    eventually(WAIT, "2 seats of cad", || async {
        let f = tests::license_server::feature(&server, "cad").await?;
        (f["count"] == 2).then_some(())
    })
    .await;

    // Alice and carol hold the two seats; carol's second client is over her maximum,
    // the kiosk is excluded, erin finds no seat and gets alice's on a retry.
    let alice: Lease = client
        .checkout_lease(&ask("alice", "alice", "ws-1"))
        .await?;
    client
        .checkout_lease(&ask("carol", "carol", "ws-3"))
        .await?;
    refused(
        &client,
        &ask("carol-2", "carol", "ws-3"),
        ErrorCode::OverMax,
    )
    .await?;
    refused(&client, &ask("k", "dave", "kiosk"), ErrorCode::Excluded).await?;
    refused(
        &client,
        &ask("erin", "erin", "ws-5"),
        ErrorCode::NoLicenseAvailable,
    )
    .await?;
    client.release(&alice).await?;
    client.checkout_lease(&ask("erin", "erin", "ws-5")).await?;

    // Reported once their intervals closed, and the true denials once their window
    // ended: carol's second client and the kiosk, not erin.
    let server_id = fx.server_id(&hostid).await?;
    let want = Totals {
        grants: 3,
        denials: denials(&[
            ("EXCLUDED", 1),
            ("NO_LICENSE_AVAILABLE", 1),
            ("OVER_MAX", 1),
        ]),
        true_denials: 2,
        peak: 2,
        served_by: vec![hostid.clone()],
    };
    let got = eventually(WAIT, "the usage report in the back office", || async {
        server_totals(&fx, &server_id)
            .await
            .filter(|t| t.true_denials == 2)
    })
    .await;
    ensure!(got == want, "{got:?}");

    // Each interval: its average at most its peak, clock-aligned, newest first.
    let body = fx
        .user
        .get(&format!(
            "/api/v1/account/servers/{server_id}/usage-intervals?window=3600"
        ))
        .await?
        .ok()?;
    let list = body.as_array().cloned().unwrap_or_default();
    ensure!(!list.is_empty());
    for w in list.windows(2) {
        ensure!(
            w[0]["starts_at"].as_i64() > w[1]["starts_at"].as_i64(),
            "{body}"
        );
    }
    for i in &list {
        let (start, end) = (
            i["starts_at"].as_i64().unwrap(),
            i["ends_at"].as_i64().unwrap(),
        );
        ensure!(end - start == 2 && start % 2 == 0, "{i}");
        ensure!(
            i["average"].as_f64().unwrap() <= i["peak"].as_f64().unwrap(),
            "{i}"
        );
        ensure!(i["count"] == 2, "{i}");
    }

    // The entitlement's view: its line item on this server, the same figures.
    let ents = fx.user.get("/api/v1/account/entitlements").await?.ok()?;
    let ent_id = ents[0]["id"].as_str().unwrap_or_default().to_owned();
    let items = fx
        .user
        .get(&format!("/api/v1/account/entitlements/{ent_id}/usage"))
        .await?
        .ok()?;
    ensure!(items.as_array().map(Vec::len) == Some(1), "{items}");
    ensure!(
        items[0]["activation_id"] == fx.activation_id.as_str() && items[0]["hostid"] == hostid,
        "{items}"
    );
    ensure!(totals(&items[0]["intervals"]) == want, "{items}");

    // Another account's user sees neither.
    let other = bo.fixture(&["cad"], 1).await?;
    let r = other
        .user
        .get(&format!(
            "/api/v1/account/servers/{server_id}/usage-intervals"
        ))
        .await?;
    ensure!(r.status == 404, "{r:?}");
    let r = other
        .user
        .get(&format!("/api/v1/account/entitlements/{ent_id}/usage"))
        .await?;
    ensure!(r.status == 404, "{r:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pair_reports_what_each_side_served_once_through_a_kill_9_of_the_main_and_the_failback()
-> Result<()> {
    let bo = BackOffice::start(Backend::Sqlite).await?;
    let fx = bo.fixture(&["cad"], 20).await?;
    let pair = PairSetup::new(
        &bo,
        &fx,
        3,
        &[("USAGE_INTERVAL", "2s"), ("USAGE_RETRY_WINDOW", "1s")],
    )?;
    let mut main = pair.start_main().await?;
    let backup = pair.start_backup().await?;
    wait_paired(&main, &backup, WAIT).await?;
    let on_main = Client::new(&main.url, bo.producer())?;
    eventually(WAIT, "3 seats of cad", || async {
        let f = tests::license_server::feature(&main, "cad").await?;
        (f["count"] == 3).then_some(())
    })
    .await;
    let main_id = fx.server_id(&pair.main_hostid).await?;
    let reported = |grants: i64, true_denials: i64| {
        let (fx, main_id) = (&fx, &main_id);
        async move {
            let deadline = std::time::Instant::now() + WAIT;
            loop {
                let t = server_totals(fx, main_id).await;
                if let Some(t) = t
                    .as_ref()
                    .filter(|t| t.grants == grants && t.true_denials == true_denials)
                {
                    return Ok::<_, anyhow::Error>(t.clone());
                }
                ensure!(
                    std::time::Instant::now() < deadline,
                    "not {grants} grants and {true_denials} true denials reported: {t:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };

    // The main serves: two grants, a denial (a true one: the client does not retry).
    let a = on_main.checkout_lease(&ask("a", "ann", "ws-1")).await?;
    on_main.checkout_lease(&ask("b", "ben", "ws-2")).await?;
    on_main.checkout_lease(&ask("c", "cy", "ws-3")).await?;
    refused(
        &on_main,
        &ask("d", "dee", "ws-4"),
        ErrorCode::NoLicenseAvailable,
    )
    .await?;
    on_main.release(&a).await?;
    let before = reported(3, 1).await?;
    ensure!(
        before.served_by == vec![pair.main_hostid.clone()],
        "{before:?}"
    );

    // The main dies; the backup serves: a grant, two denials.
    main.kill9();
    let on_backup = Client::new(&backup.url, bo.producer())?;
    let e = eventually(WAIT, "the backup granting", || async {
        on_backup
            .checkout_lease(&ask("e", "eve", "ws-5"))
            .await
            .ok()
    })
    .await;
    ensure!(e.served_by.as_deref() == Some(backup.url.as_str()));
    for who in ["f", "g"] {
        refused(
            &on_backup,
            &ask(who, who, "ws-6"),
            ErrorCode::NoLicenseAvailable,
        )
        .await?;
    }
    on_backup.release(&e).await?;

    // The failback, then the main serves again: one more grant.
    main.restart().await?;
    wait_paired(&main, &backup, WAIT).await?;
    on_main.checkout_lease(&ask("h", "hal", "ws-7")).await?;

    // Everything once: the main's, the backup's (reported by the backup while it served
    // or by the main after it took the backup's part back), the main's again.
    let all = reported(5, 3).await?;
    let mut both = vec![pair.main_hostid.clone(), pair.backup_hostid.clone()];
    both.sort();
    ensure!(
        all == Totals {
            grants: 5,
            denials: denials(&[("NO_LICENSE_AVAILABLE", 3)]),
            true_denials: 3,
            peak: 3,
            served_by: both,
        },
        "{all:?}"
    );
    // Later reports change nothing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let again = server_totals(&fx, &main_id).await;
    ensure!(again.as_ref() == Some(&all), "{again:?}");
    Ok(())
}
