//! The options file with real processes (a back office, license servers, clients of the
//! client library): reserved seats, `MAX`, `INCLUDE` and `EXCLUDE` each refusing with
//! its code and line; reloads by the operator API, the CLI and `SIGHUP` changing what is
//! granted without a restart; bad files refused at reload (the options in force kept)
//! and at start; reservations honoured by the backup through a kill -9 of the main and
//! after the failback.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use licensing_client::{Client, ClientError};
use serde_json::{Value, json};
use shared::ErrorCode;
use shared::lease::{CheckoutRequest, Lease};
use tests::{BackOffice, Backend, LicenseServer, PairSetup, binary, eventually, wait_paired};

const WAIT: Duration = Duration::from_secs(30);

fn ask(client_id: &str, user: &str, host: &str) -> CheckoutRequest {
    CheckoutRequest {
        user: Some(user.to_owned()),
        host: Some(host.to_owned()),
        ..tests::checkout_request("cad", client_id)
    }
}

/// A checkout that must be refused with `code`: the refusal's options-file line.
async fn refused(client: &Client, req: &CheckoutRequest, code: ErrorCode) -> Result<Option<u32>> {
    match client.checkout_lease(req).await {
        Ok(l) => anyhow::bail!("{} was granted {l:?}, expected {code}", req.client_id),
        Err(ClientError::Api { body, .. }) => {
            ensure!(
                body.code == code,
                "{}: {body} (expected {code})",
                req.client_id
            );
            Ok(body.options_line.map(u32::from))
        }
        Err(e) => anyhow::bail!("{}: {e}", req.client_id),
    }
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

async fn reload_api(server: &LicenseServer) -> Result<(u16, Value)> {
    let resp = tests::license_server::http()
        .post(server.url("/api/v1/admin/options/reload"))
        .bearer_auth(server.admin_token())
        .send()
        .await?;
    Ok((resp.status().as_u16(), resp.json().await?))
}

fn reload_cli(server: &LicenseServer) -> Result<std::process::Output> {
    Ok(std::process::Command::new(binary("license-server"))
        .args(["reload-options", "--url", &server.url])
        .env("ADMIN_TOKEN", server.admin_token())
        .output()?)
}

const OPTIONS: &str = "\
# The policies test's options
GROUP eng alice \\
    bob
RESERVE 2 cad GROUP eng
MAX 1 cad USER carol
EXCLUDE cad HOST kiosk
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_refuse_naming_their_line_and_reloads_change_them_without_a_restart() -> Result<()> {
    let bo = BackOffice::start(Backend::Sqlite).await?;
    let fx = bo.fixture(&["cad"], 10).await?;
    let tmp = tempfile::tempdir()?;
    let options = tmp.path().join("options");
    write(&options, OPTIONS)?;
    let hostid = format!(
        "string:lls-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let env: Vec<(String, String)> = [
        ("HOSTID", hostid),
        ("BACKOFFICE_URL", bo.url.clone()),
        ("BACKOFFICE_TOKEN", fx.device_token.clone()),
        (
            "BACKOFFICE_PUBLIC_KEY",
            bo.public_key_path().display().to_string(),
        ),
        ("RIGHTS_IDS", format!("{}:4", fx.activation_id)),
        ("CAPABILITY_POLL_INTERVAL", "1s".into()),
        ("BACKOFF_MAX", "500ms".into()),
        ("LEASE_DURATION", "60s".into()),
        ("LICENSING_OPTIONS_FILE", options.display().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let mut server = LicenseServer::start("lls", &tmp.path().join("lls"), 0, &env).await?;
    let client = Client::new(&server.url, bo.producer())?;
    eventually(WAIT, "4 seats of cad", || async {
        let f = tests::license_server::feature(&server, "cad").await?;
        (f["count"] == 4).then_some(())
    })
    .await;

    // EXCLUDE, whatever the host name's case.
    for host in ["kiosk", "KIOSK"] {
        let line = refused(&client, &ask("k", "dave", host), ErrorCode::Excluded).await?;
        ensure!(
            line == Some(6),
            "EXCLUDE is line 6, the refusal says {line:?}"
        );
    }
    // MAX 1 for carol: one seat, not two.
    let carol = client
        .checkout_lease(&ask("carol-1", "carol", "ws-3"))
        .await?;
    ensure!(carol.user.as_deref() == Some("carol") && carol.host.as_deref() == Some("ws-3"));
    let line = refused(
        &client,
        &ask("carol-2", "carol", "ws-3"),
        ErrorCode::OverMax,
    )
    .await?;
    ensure!(line == Some(5), "{line:?}");
    // 4 seats, 2 reserved for eng: carol and dave take the 2 others, erin finds them kept.
    let dave = client.checkout_lease(&ask("dave", "dave", "ws-4")).await?;
    let line = refused(&client, &ask("erin", "erin", "ws-5"), ErrorCode::Reserved).await?;
    ensure!(line == Some(4), "{line:?}");
    // The holders of the reservation get them (the group continued over two lines).
    let alice = client
        .checkout_lease(&ask("alice", "alice", "ws-1"))
        .await?;
    client.checkout_lease(&ask("bob", "bob", "ws-2")).await?;
    refused(
        &client,
        &ask("frank", "frank", "ws-6"),
        ErrorCode::NoLicenseAvailable,
    )
    .await?;
    // The operator sees who holds what.
    let held = server.leases("cad").await?;
    ensure!(
        held.iter()
            .any(|l| l["lease_id"] == alice.lease_id.to_string()
                && l["user"] == "alice"
                && l["host"] == "ws-1"),
        "{held:?}"
    );
    // A user or host that is not one word is bad input, and changes nothing.
    let resp = tests::license_server::http()
        .post(server.url("/api/v1/leases"))
        .json(&json!({"feature": "cad", "client_id": "x", "user": "a b"}))
        .send()
        .await?;
    ensure!(resp.status() == 400);
    let body: Value = resp.json().await?;
    ensure!(
        body["code"] == "VALIDATION_ERROR" && body["field"] == "user",
        "{body}"
    );

    // Bad files at reload: refused with their line, the options in force kept.
    let bad: &[(&str, u32, &str)] = &[
        ("GROUP eng alice\nRESERVE 9 cad GROUP eng\n", 2, "it has 4"),
        (
            "# x\n\nRESERVE 1 cad USER a\nRESREVE 1 cad USER b\n",
            4,
            "unknown keyword `RESREVE`",
        ),
        ("EXCLUDE nope USER x\n", 1, "unknown feature `nope`"),
        ("INCLUDE cad GROUP nobody\n", 1, "no GROUP `nobody`"),
    ];
    for (text, line, needle) in bad {
        write(&options, text)?;
        let (status, body) = reload_api(&server).await?;
        ensure!(status == 400, "{status} {body}");
        ensure!(
            body["code"] == "VALIDATION_ERROR" && body["options_line"] == *line,
            "{body}"
        );
        let message = body["message"].as_str().unwrap_or_default();
        ensure!(
            message.contains(needle) && message.contains("kept"),
            "{message}"
        );
    }
    let out = reload_cli(&server)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("line 1") && stderr.contains("GROUP `nobody`"),
        "reload-options: {stderr}"
    );
    let line = refused(&client, &ask("k", "dave", "kiosk"), ErrorCode::Excluded).await?;
    ensure!(
        line == Some(6),
        "the old options are not in force: {line:?}"
    );

    // A good file by SIGHUP: only frank may check cad out now; reservations are gone.
    client.release(&dave).await?;
    write(&options, "# only frank\nINCLUDE cad USER frank\n")?;
    let in_force = || server.log_text().matches("options file in force").count();
    let before = in_force();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()?;
    ensure!(hup.success());
    // The reload runs after the signal arrives: a checkout before it could be granted
    // under the old rules, and the same client would then get its lease back.
    eventually(WAIT, "the reload after SIGHUP", || async {
        (in_force() > before).then_some(())
    })
    .await;
    eventually(WAIT, "the INCLUDE rule in force after SIGHUP", || async {
        let line = refused(&client, &ask("erin", "erin", "ws-5"), ErrorCode::Excluded)
            .await
            .ok()?;
        (line == Some(2)).then_some(())
    })
    .await;
    let frank = client
        .checkout_lease(&ask("frank", "frank", "ws-6"))
        .await?;
    ensure!(frank.user.as_deref() == Some("frank"));
    // A checkout that names no user matches no USER rule: not included.
    let nameless = tests::checkout_request("cad", "nameless");
    let resp = tests::license_server::http()
        .post(server.url("/api/v1/leases"))
        .json(&nameless)
        .send()
        .await?;
    let body: Value = resp.json().await?;
    ensure!(
        body["code"] == "EXCLUDED" && body["options_line"] == 2,
        "{body}"
    );

    // A good file by the CLI: no rules, so the pool decides alone (it is full).
    client.release(&frank).await?;
    write(&options, "# open to all\n")?;
    let out = reload_cli(&server)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && stdout.contains("0 rule(s)"),
        "{stdout}"
    );
    let lease: Lease = client.checkout_lease(&ask("erin", "erin", "ws-5")).await?;
    ensure!(lease.user.as_deref() == Some("erin"));
    ensure!(carol.lease_id != lease.lease_id);

    // A bad file refuses the start, naming the line.
    write(&options, "EXCLUDE cad USER x\nMAXIMUM 1 cad USER y\n")?;
    let err = server
        .restart()
        .await
        .err()
        .context("the server started with a bad options file")?;
    let text = format!("{err:#}");
    ensure!(
        text.contains("line 2") && text.contains("unknown keyword `MAXIMUM`"),
        "{text}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mains_options_reach_its_backup_which_honours_them_through_a_kill_9_and_the_failback()
-> Result<()> {
    let bo = BackOffice::start(Backend::Sqlite).await?;
    let fx = bo.fixture(&["cad"], 10).await?;
    let dir = tempfile::tempdir()?;
    let main_options = dir.path().join("main-options");
    let backup_options = dir.path().join("backup-options");
    write(&main_options, "# alice's seats\nRESERVE 2 cad USER alice\n")?;
    // The backup's own file is not used: it follows its main's.
    write(&backup_options, "EXCLUDE cad USER alice\n")?;
    let mut pair = PairSetup::new(&bo, &fx, 3, &[])?;
    pair.main_env.push((
        "LICENSING_OPTIONS_FILE".into(),
        main_options.display().to_string(),
    ));
    pair.backup_env.push((
        "LICENSING_OPTIONS_FILE".into(),
        backup_options.display().to_string(),
    ));
    let mut main = pair.start_main().await?;
    let backup = pair.start_backup().await?;
    wait_paired(&main, &backup, WAIT).await?;
    let on_main = Client::new(&main.url, bo.producer())?;
    eventually(WAIT, "3 seats of cad", || async {
        let f = tests::license_server::feature(&main, "cad").await?;
        (f["count"] == 3).then_some(())
    })
    .await;
    ensure!(
        backup.log_text().contains("not used on a backup"),
        "the backup did not say its file is not used"
    );
    // A backup's options are its main's: it reloads none of its own.
    let (status, body) = reload_api(&backup).await?;
    ensure!(
        status == 409 && body["code"] == "ROLE_CONFLICT",
        "{status} {body}"
    );

    on_main.checkout_lease(&ask("bob", "bob", "ws-2")).await?;
    let line = refused(
        &on_main,
        &ask("carol", "carol", "ws-3"),
        ErrorCode::Reserved,
    )
    .await?;
    ensure!(line == Some(2), "{line:?}");
    let alice_1 = on_main
        .checkout_lease(&ask("alice-1", "alice", "ws-1"))
        .await?;
    // A reload on the main reaches the backup too (answered once the backup holds it).
    write(
        &main_options,
        "# alice's seats\nRESERVE 2 cad USER alice\nEXCLUDE cad HOST kiosk\n",
    )?;
    let out = reload_cli(&main)?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The main dies: the backup takes over, keeps alice's second seat from others and
    // excludes the kiosk, by the main's lines.
    main.kill9();
    let on_backup = Client::new(&backup.url, bo.producer())?;
    eventually(
        WAIT,
        "the backup refusing carol by the reservation",
        || async {
            refused(
                &on_backup,
                &ask("carol", "carol", "ws-3"),
                ErrorCode::Reserved,
            )
            .await
            .ok()
            .flatten()
            .filter(|l| *l == 2)
        },
    )
    .await;
    let line = refused(&on_backup, &ask("k", "dave", "kiosk"), ErrorCode::Excluded).await?;
    ensure!(line == Some(3), "{line:?}");
    let alice_2 = on_backup
        .checkout_lease(&ask("alice-2", "alice", "ws-1"))
        .await?;
    ensure!(alice_2.served_by.as_deref() == Some(backup.url.as_str()));

    // The failback: the main takes the backup's leases back, users included, and keeps
    // honouring the reservation (alice holds both its seats: carol finds none).
    main.restart().await?;
    wait_paired(&main, &backup, WAIT).await?;
    let held = main.leases("cad").await?;
    for l in [&alice_1, &alice_2] {
        ensure!(
            held.iter()
                .any(|h| h["lease_id"] == l.lease_id.to_string() && h["user"] == "alice"),
            "{} not held by alice on the main: {held:?}",
            l.lease_id
        );
    }
    refused(
        &on_main,
        &ask("carol", "carol", "ws-3"),
        ErrorCode::NoLicenseAvailable,
    )
    .await?;
    on_main.release(&alice_2).await?;
    let line = refused(
        &on_main,
        &ask("carol", "carol", "ws-3"),
        ErrorCode::Reserved,
    )
    .await?;
    ensure!(line == Some(2), "{line:?}");
    let line = refused(&on_main, &ask("k", "dave", "kiosk"), ErrorCode::Excluded).await?;
    ensure!(line == Some(3), "{line:?}");
    on_main
        .checkout_lease(&ask("alice-3", "alice", "ws-9"))
        .await?;
    Ok(())
}
