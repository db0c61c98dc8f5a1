//! TLS with certificates made in the test: a back office reached over `https://`, a pair
//! serving HTTPS and replicating over it, clients checking out over it with the site's
//! CA, and a CA nobody configured refused with an error that says why.

use std::path::Path;
use std::time::Duration;

use licensing_client::{Client, ClientError};
use serde_json::Value;

use crate::T;
use crate::common::tls::TestCa;
use crate::common::*;

/// An HTTP client that trusts `ca`.
fn https(ca: &Path) -> reqwest::Client {
    let pem = std::fs::read(ca).unwrap();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .tls_certs_merge(licensing_client::ca_certificates(&pem).unwrap())
        .build()
        .unwrap()
}

async fn json(http: &reqwest::Client, url: &str, token: Option<&str>) -> Option<Value> {
    let mut req = http.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.ok()?.json().await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_a_pair_serves_replicates_and_refuses_an_unknown_ca() {
    let dir = tempfile::tempdir().unwrap();
    let site = TestCa::new(&dir.path().join("pki"), "site");
    let other = TestCa::new(&dir.path().join("other-pki"), "other");
    let bo_cert = site.issue("backoffice");
    let bo = TestBackoffice::start_tls(vec![right("cad", 3)], &bo_cert.cert, &bo_cert.key).await;
    assert!(bo.url.starts_with("https://"));

    let (main_port, backup_port) = (tests::free_port(), tests::free_port());
    let main_url = format!("https://127.0.0.1:{main_port}");
    let backup_url = format!("https://127.0.0.1:{backup_port}");
    let tls_env = |name: &str, port: u16| {
        let cert = site.issue(name);
        with(
            base_env(&bo, &format!("string:tls-{name}")),
            &[
                ("BACKOFFICE_CA", site.cert.to_str().unwrap()),
                ("TLS_CERT", cert.cert.to_str().unwrap()),
                ("TLS_KEY", cert.key.to_str().unwrap()),
                ("LISTEN", &format!("127.0.0.1:{port}")),
                ("PAIR_TOKEN", "pair-secret"),
            ],
        )
    };
    let backup = Server::start(
        &dir.path().join("backup"),
        with(
            tls_env("backup", backup_port),
            &[("LICENSING_MAIN_URI", &main_url)],
        ),
    )
    .await;
    let main = Server::start(
        &dir.path().join("main"),
        with(
            tls_env("main", main_port),
            &[
                ("BACKUP_SERVER_HOSTID", "string:tls-backup"),
                ("LICENSING_BACKUP_URI", &backup_url),
            ],
        ),
    )
    .await;
    assert_eq!(
        (main.url.as_str(), backup.url.as_str()),
        (main_url.as_str(), backup_url.as_str())
    );

    // The back office over HTTPS, the pair's link over HTTPS.
    let http = https(&site.cert);
    wait_for(T, "the pair in sync over HTTPS", || async {
        let s = json(&http, &main.url("/api/v1/status"), None).await?;
        (s["backoffice"]["state"] == "connected" && s["pair_status"] == "paired_available")
            .then_some(())
    })
    .await;

    // A client with the site's CA checks out; the backup holds the lease.
    let pem = std::fs::read(&site.cert).unwrap();
    let client = Client::builder(bo.producer())
        .server(&main.url)
        .ca_pem(&pem)
        .unwrap()
        .client_id("tls-client")
        .build()
        .unwrap();
    let guard = client.checkout("cad", 1).await.unwrap();
    let lease = guard.lease();
    assert_eq!(lease.served_by.as_deref(), Some(main_url.as_str()));
    assert_eq!(lease.backup_uri.as_deref(), Some(backup_url.as_str()));
    let held = json(
        &http,
        &backup.url("/api/v1/admin/features/cad/leases"),
        Some(&backup.admin_token()),
    )
    .await
    .unwrap();
    assert_eq!(held[0]["lease_id"], lease.lease_id.to_string(), "{held}");

    // The command-line client, given the CA.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_license-client"))
        .env("LICENSE_PRODUCER_KEY", &bo.public_key)
        .args(["--server", &main.url, "--ca"])
        .arg(&site.cert)
        .args(["--client-id", "tls-cli", "--json", "checkout", "cad"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_license-server"))
        .args(["status", "--pair", "all", "--url", &main.url, "--ca"])
        .arg(&site.cert)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("paired available"),
        "{text}"
    );

    // A client that trusts another CA, or only the system's roots, is refused and told why.
    for (what, client) in [
        (
            "another CA",
            Client::builder(bo.producer())
                .server(&main.url)
                .ca_pem(&std::fs::read(&other.cert).unwrap())
                .unwrap()
                .build()
                .unwrap(),
        ),
        (
            "the system's roots",
            Client::new(&main.url, bo.producer()).unwrap(),
        ),
    ] {
        let e = client.checkout("cad", 1).await.unwrap_err();
        let ClientError::Transport(msg) = &e else {
            panic!("{what}: {e:?}");
        };
        assert!(
            msg.contains("not issued by a CA this side trusts"),
            "{what}: {msg}"
        );
    }
    guard.release().await.unwrap();

    // A server whose BACKOFFICE_CA is another CA refuses the back office and says why.
    let lost = Server::start(
        &dir.path().join("lost"),
        with(
            base_env(&bo, "string:tls-lost"),
            &[("BACKOFFICE_CA", other.cert.to_str().unwrap())],
        ),
    )
    .await;
    let s = wait_for(T, "the back office refused over TLS", || async {
        let s: Value = get_json(&lost.url("/api/v1/status")).await;
        (s["backoffice"]["state"] == "unreachable").then_some(s)
    })
    .await;
    let why = s["backoffice"]["last_error"].as_str().unwrap();
    assert!(why.contains("not issued by a CA this side trusts"), "{why}");
    assert!(lost.log().contains("not issued by a CA this side trusts"));
}
