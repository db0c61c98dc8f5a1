//! A license server against the real back office, on SQLite and on PostgreSQL: rights
//! from RIGHTS_IDS at startup, rights mapped later arriving by polling, checkouts until
//! NO_LICENSE_AVAILABLE, lease expiry, kill -9 after an acknowledged checkout, and the
//! back office stopped while the server keeps serving; and the back office over HTTPS,
//! trusted through `BACKOFFICE_CA` and refused under another CA.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use licensing_client::Client;
use serde_json::{Value, json};
use shared::ErrorCode;
use shared::lease::CheckoutRequest;
use tests::tls::TestCa;
use tests::{BackOffice, Backend, LicenseServer, backends, eventually, server_env};

const WAIT: Duration = Duration::from_secs(30);

fn req(client_id: &str) -> CheckoutRequest {
    tests::checkout_request("cad", client_id)
}

async fn seats(server: &LicenseServer) -> Option<u64> {
    let f: Value = reqwest::get(format!("{}/api/v1/features", server.url))
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    f.as_array()?
        .iter()
        .find(|f| f["feature"] == "cad")
        .and_then(|f| f["count"].as_u64())
}

async fn scenario(backend: Backend) -> Result<()> {
    let mut bo = BackOffice::start(backend).await?;
    let fx = bo.fixture(&["cad"], 10).await?;
    let tmp = tempfile::tempdir()?;
    let hostid = format!(
        "string:lls-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let env: Vec<(String, String)> = [
        ("HOSTID", hostid.clone()),
        ("BACKOFFICE_URL", bo.url.clone()),
        ("BACKOFFICE_TOKEN", fx.device_token.clone()),
        (
            "BACKOFFICE_PUBLIC_KEY",
            bo.public_key_path().display().to_string(),
        ),
        ("RIGHTS_IDS", format!("{}:3", fx.activation_id)),
        ("CAPABILITY_POLL_INTERVAL", "500ms".into()),
        ("BACKOFF_MAX", "500ms".into()),
        ("LEASE_DURATION", "3s".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let mut server = LicenseServer::start("lls", &tmp.path().join("lls"), 0, &env).await?;

    // Rights from RIGHTS_IDS at startup, mapped by the back office in the same request.
    eventually(WAIT, "3 seats from RIGHTS_IDS", || async {
        (seats(&server).await == Some(3)).then_some(())
    })
    .await;

    // 2 more mapped through the account API arrive with the next poll, no restart.
    let server_id = fx.server_id(&hostid).await?;
    fx.user
        .post(
            "/api/v1/account/mappings",
            json!({"activation_id": fx.activation_id, "server_id": server_id, "quantity": 2}),
        )
        .await?
        .ok()?;
    eventually(WAIT, "5 seats after polling", || async {
        (seats(&server).await == Some(5)).then_some(())
    })
    .await;

    // Checkouts until no seat is left; the refusal says when the next one frees.
    let client = Client::new(&server.url, bo.producer())?;
    let mut leases = Vec::new();
    for i in 0..5 {
        leases.push(client.checkout_lease(&req(&format!("c{i}"))).await?);
    }
    let err = client.checkout_lease(&req("c5")).await.unwrap_err();
    ensure!(err.code() == Some(ErrorCode::NoLicenseAvailable), "{err}");
    ensure!(err.body().and_then(|b| b.next_free_at).is_some(), "{err}");

    // Leases not renewed expire and free their seats.
    let again = eventually(WAIT, "a seat freed by expiry", || async {
        client.checkout_lease(&req("after-expiry")).await.ok()
    })
    .await;
    ensure!(again.granted_at >= leases[0].expires_at - 1);

    // kill -9 right after an acknowledged checkout: the lease is still held after restart.
    // (The five leases lapse one by one, as they were granted: wait for the next seat.)
    let held = eventually(WAIT, "another seat freed by expiry", || async {
        client.checkout_lease(&req("durable")).await.ok()
    })
    .await;
    server.kill9();
    server.restart().await?;
    let on_disk = server.leases("cad").await?;
    ensure!(
        on_disk
            .iter()
            .any(|l| l["lease_id"] == held.lease_id.to_string()),
        "the acknowledged lease was lost: {on_disk:?}"
    );
    client.renew(&held).await?;

    // The back office stops: the server keeps serving from its last verified rights and
    // says so in its status.
    bo.stop();
    eventually(
        WAIT,
        "the server noticing the back office is gone",
        || async {
            let s = server.status().await.ok()?;
            (s["backoffice"]["state"] == "unreachable").then_some(())
        },
    )
    .await;
    let served = client.checkout_lease(&req("while-bo-down")).await?;
    ensure!(served.served_by.as_deref() == Some(server.url.as_str()));
    ensure!(seats(&server).await == Some(5));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_license_server_against_the_real_back_office() -> Result<()> {
    for b in backends() {
        scenario(b).await.with_context(|| format!("on {b:?}"))?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_https_a_license_server_trusting_the_back_offices_ca_gets_its_rights_and_another_ca_is_refused()
-> Result<()> {
    let tmp = tempfile::tempdir()?;
    let site = TestCa::new(&tmp.path().join("pki"), "site");
    let other = TestCa::new(&tmp.path().join("other-pki"), "other");
    let bo = BackOffice::builder(Backend::Sqlite)
        .tls(&site.issue("backoffice"), &site.cert)
        .start()
        .await?;
    ensure!(bo.url.starts_with("https://"), "{}", bo.url);
    let fx = bo.fixture(&["cad"], 4).await?;
    // HTTPS only: plain HTTP on its port gets no answer.
    let plain = bo.url.replace("https://", "http://");
    ensure!(
        reqwest::get(format!("{plain}/healthz")).await.is_err(),
        "the back office answered plain HTTP"
    );

    // BACKOFFICE_CA names the CA that issued the back office's certificate: rights arrive.
    let mut env = server_env(&bo, &fx, "string:lls-tls");
    env.push(("BACKOFFICE_CA".into(), site.cert.display().to_string()));
    env.push(("RIGHTS_IDS".into(), format!("{}:3", fx.activation_id)));
    let server = LicenseServer::start("lls", &tmp.path().join("lls"), 0, &env).await?;
    eventually(WAIT, "3 seats over HTTPS", || async {
        (seats(&server).await == Some(3)).then_some(())
    })
    .await;
    // The poller marks the contact once the answer it verified is applied: a moment after
    // the seats show.
    eventually(WAIT, "the back office connected", || async {
        let status = server.status().await.ok()?;
        (status["backoffice"]["state"] == "connected").then_some(())
    })
    .await;

    // Another CA: the back office is refused, and the status and the log say why.
    let mut env = server_env(&bo, &fx, "string:lls-lost");
    env.push(("BACKOFFICE_CA".into(), other.cert.display().to_string()));
    let lost = LicenseServer::start("lost", &tmp.path().join("lost"), 0, &env).await?;
    let why = eventually(WAIT, "the back office refused over TLS", || async {
        let s = lost.status().await.ok()?;
        (s["backoffice"]["state"] == "unreachable")
            .then(|| s["backoffice"]["last_error"].as_str().map(str::to_owned))
            .flatten()
    })
    .await;
    ensure!(why.contains("not issued by a CA this side trusts"), "{why}");
    ensure!(
        lost.log_text()
            .contains("not issued by a CA this side trusts"),
        "{}",
        lost.log_text()
    );
    ensure!(
        seats(&lost).await.is_none(),
        "rights without a trusted back office"
    );
    Ok(())
}
