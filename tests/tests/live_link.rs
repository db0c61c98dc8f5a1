//! The live link between license servers and the back office, with real processes: a
//! mapping made through the account API in force on both servers of a pair within 2 s at
//! the default 10-minute poll interval (on SQLite, and on PostgreSQL made through another
//! back-office process than the one the pair talks to); a takeover seen in the account API
//! within 3 s of kill -9; a stopped server `inaccessible` within `SERVER_TIMEOUT` (and a
//! running one never, between polls ten minutes apart); a link cut by a proxy opened again;
//! and a flood of links refused past the caps.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use shared::HostId;
use shared::capability::CapabilityClaims;
use shared::signing::Verifier;
use tests::{
    BackOffice, Backend, Fixture, LicenseServer, PairSetup, Proxy, capability_request, eventually,
    wait_paired,
};

/// One at a time: they measure seconds, and several at once on two cores would measure the
/// machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const WAIT: Duration = Duration::from_secs(30);
/// The target for a change to be in force on the servers.
const IN_FORCE: Duration = Duration::from_secs(2);
/// Polls as far apart as the default: only the live link can be quick.
const POLL: (&str, &str) = ("CAPABILITY_POLL_INTERVAL", "10m");
/// The back office holds a link for a third of `SERVER_TIMEOUT`, and a server counts its
/// link up once the back office has answered one: with the default (60 s) that is 20 s
/// after a start, with this 2 s. Nothing here depends on how long a link is held.
const LINK_HOLD: (&str, &str) = ("SERVER_TIMEOUT", "6s");

/// Seats of `cad` a server serves from its rights (`None` when it does not answer).
async fn seats(server: &LicenseServer) -> Option<u64> {
    let f = tests::license_server::feature(server, "cad").await?;
    f["count"].as_u64()
}

/// Waits until the server's live link is open.
async fn link_up(server: &LicenseServer) {
    eventually(WAIT, "the live link open", || async {
        let s = server.status().await.ok()?;
        (s["backoffice"]["link_up"] == true).then_some(())
    })
    .await;
}

/// The account's view of the server with `hostid`.
async fn at_backoffice(fx: &Fixture, hostid: &str) -> Result<Value> {
    let servers = fx.user.get("/api/v1/account/servers").await?.ok()?;
    servers
        .as_array()
        .context("servers")?
        .iter()
        .find(|s| s["hostid"] == hostid)
        .cloned()
        .with_context(|| format!("{hostid} at the back office"))
}

/// Maps `quantity` more of the fixture's line item to the server with `hostid`, through
/// the account API of `bo` (which may be another process than the servers talk to).
async fn map(bo: &BackOffice, fx: &Fixture, hostid: &str, quantity: u32) -> Result<()> {
    let id = at_backoffice(fx, hostid).await?["id"]
        .as_str()
        .context("server ID")?
        .to_owned();
    let user = tests::Api {
        base: bo.url.clone(),
        ..fx.user.clone()
    };
    user.post(
        "/api/v1/account/mappings",
        json!({"activation_id": fx.activation_id, "server_id": id, "quantity": quantity}),
    )
    .await?
    .ok()?;
    Ok(())
}

/// A pair of `seats` seats started against `bo`, both links open.
async fn pair(
    bo: &BackOffice,
    fx: &Fixture,
    seats: u32,
    extra: &[(&str, &str)],
) -> Result<(PairSetup, LicenseServer, LicenseServer)> {
    let mut all = vec![POLL];
    all.extend_from_slice(extra);
    let setup = PairSetup::new(bo, fx, seats, &all)?;
    let main = setup.start_main().await?;
    let backup = setup.start_backup().await?;
    wait_paired(&main, &backup, WAIT).await?;
    link_up(&main).await;
    link_up(&backup).await;
    Ok((setup, main, backup))
}

/// Two back-office processes on one PostgreSQL database and a pair started against the
/// first; `None` when PostgreSQL is not configured for tests.
async fn two_processes() -> Result<
    Option<(
        BackOffice,
        BackOffice,
        Fixture,
        PairSetup,
        LicenseServer,
        LicenseServer,
    )>,
> {
    if !tests::backends().contains(&Backend::Postgres) {
        eprintln!("TEST_POSTGRES_URL is not set: PostgreSQL not tested");
        return Ok(None);
    }
    let bo = BackOffice::start_process(Backend::Postgres, &[LINK_HOLD]).await?;
    let other = bo.sibling(&[]).await?;
    let fx = bo.fixture(&["cad"], 40).await?;
    let (setup, main, backup) = pair(&bo, &fx, 4, &[]).await?;
    Ok(Some((bo, other, fx, setup, main, backup)))
}

/// Maps 2 more seats through `via` and returns how long until both servers serve them.
async fn mapping_in_force(
    via: &BackOffice,
    fx: &Fixture,
    setup: &PairSetup,
    main: &LicenseServer,
    backup: &LicenseServer,
) -> Result<Duration> {
    let before = seats(main).await.context("main's seats")?;
    let started = Instant::now();
    map(via, fx, &setup.main_hostid, 2).await?;
    let want = before + 2;
    eventually(WAIT, "2 more seats on both servers", || async {
        (seats(main).await == Some(want) && seats(backup).await == Some(want)).then_some(())
    })
    .await;
    Ok(started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mapping_through_the_account_api_is_in_force_on_both_servers_of_a_pair_within_2s_on_sqlite()
-> Result<()> {
    let _one = SERIAL.lock().await;
    let bo = BackOffice::start_process(Backend::Sqlite, &[LINK_HOLD]).await?;
    let fx = bo.fixture(&["cad"], 40).await?;
    let (setup, main, backup) = pair(&bo, &fx, 4, &[]).await?;
    for round in 0..3 {
        let took = mapping_in_force(&bo, &fx, &setup, &main, &backup).await?;
        eprintln!("live link, SQLite: mapping {round} in force on both servers in {took:?}");
        ensure!(took < IN_FORCE, "round {round}: {took:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mapping_made_on_another_back_office_process_is_in_force_on_both_servers_within_2s_on_postgres()
-> Result<()> {
    let _one = SERIAL.lock().await;
    let Some((_bo, other, fx, setup, main, backup)) = two_processes().await? else {
        return Ok(());
    };
    for round in 0..3 {
        let took = mapping_in_force(&other, &fx, &setup, &main, &backup).await?;
        eprintln!(
            "live link, PostgreSQL, two processes: mapping {round} in force on both servers in {took:?}"
        );
        ensure!(took < IN_FORCE, "round {round}: {took:?}");
    }
    Ok(())
}

/// The back offices' listener connections to `database_url` (their `pid`s), as
/// PostgreSQL sees them; with `terminate`, they are cut first.
fn listeners(database_url: &str, terminate: bool) -> Result<Vec<i32>> {
    use diesel::sql_types::Integer;
    use diesel::{Connection, PgConnection, QueryableByName, RunQueryDsl};
    #[derive(QueryableByName)]
    struct Pid {
        #[diesel(sql_type = Integer)]
        pid: i32,
    }
    let mut c = PgConnection::establish(database_url)?;
    // Materialised first: only these are terminated, whatever order the planner picks.
    let sql = format!(
        "WITH l AS MATERIALIZED (SELECT pid FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name = 'backoffice-listener') \
         SELECT pid FROM l{}",
        if terminate {
            " WHERE pg_terminate_backend(pid)"
        } else {
            ""
        }
    );
    let rows: Vec<Pid> = diesel::sql_query(sql).load(&mut c)?;
    Ok(rows.into_iter().map(|r| r.pid).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_back_offices_listen_again_after_postgresql_cuts_their_listener_connections()
-> Result<()> {
    let _one = SERIAL.lock().await;
    let Some((bo, other, fx, setup, main, backup)) = two_processes().await? else {
        return Ok(());
    };
    let url = bo.database_url().to_owned();
    let before = listeners(&url, false)?;
    ensure!(before.len() == 2, "one listener a process: {before:?}");
    let cut = listeners(&url, true)?;
    ensure!(cut == before, "cut {cut:?} of {before:?}");
    let again = eventually(WAIT, "both listening again", || async {
        let now = listeners(&url, false).ok()?;
        (now.len() == 2 && now.iter().all(|p| !before.contains(p))).then_some(now)
    })
    .await;
    eprintln!("listeners {before:?} cut, listening again as {again:?}");
    let took = mapping_in_force(&other, &fx, &setup, &main, &backup).await?;
    ensure!(took < IN_FORCE, "{took:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_main_shows_in_the_account_api_as_the_backup_serving_within_3s() -> Result<()>
{
    let _one = SERIAL.lock().await;
    let bo = BackOffice::start_with(Backend::Sqlite, &[LINK_HOLD]).await?;
    let fx = bo.fixture(&["cad"], 10).await?;
    let (setup, mut main, _backup) = pair(&bo, &fx, 4, &[("FAILOVER_TIMEOUT", "1s")]).await?;
    eventually(WAIT, "the backup ready at the back office", || async {
        let b = at_backoffice(&fx, &setup.backup_hostid).await.ok()?;
        (b["status"] == "ready").then_some(())
    })
    .await;
    let killed = Instant::now();
    main.kill9();
    eventually(
        Duration::from_secs(3),
        "the backup active at the back office",
        || async {
            let b = at_backoffice(&fx, &setup.backup_hostid).await.ok()?;
            (b["status"] == "active" && b["pair_status"] == "main_not_available").then_some(())
        },
    )
    .await;
    eprintln!(
        "live link: takeover in the account API {:?} after kill -9",
        killed.elapsed()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_is_inaccessible_within_server_timeout_and_a_running_one_never()
-> Result<()> {
    let _one = SERIAL.lock().await;
    let bo = BackOffice::start_with(Backend::Sqlite, &[("SERVER_TIMEOUT", "3s")]).await?;
    let fx = bo.fixture(&["cad"], 10).await?;
    let (setup, mut main, mut backup) = pair(&bo, &fx, 4, &[]).await?;
    // Polls ten minutes apart: the link alone keeps both accessible, past the timeout.
    tokio::time::sleep(Duration::from_secs(5)).await;
    for hostid in [&setup.main_hostid, &setup.backup_hostid] {
        let s = at_backoffice(&fx, hostid).await?;
        ensure!(s["status"] != "inaccessible", "{hostid} while running: {s}");
    }
    let stopped = Instant::now();
    backup.terminate();
    main.terminate();
    // The timeout counts whole seconds from the last contact: one more second at most.
    eventually(Duration::from_secs(5), "both inaccessible", || async {
        let m = at_backoffice(&fx, &setup.main_hostid).await.ok()?;
        let b = at_backoffice(&fx, &setup.backup_hostid).await.ok()?;
        (m["status"] == "inaccessible" && b["status"] == "inaccessible").then_some(())
    })
    .await;
    eprintln!(
        "live link: inaccessible {:?} after stopping (SERVER_TIMEOUT=3s)",
        stopped.elapsed()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_cut_by_the_proxy_is_opened_again_and_brings_what_changed_meanwhile() -> Result<()> {
    let _one = SERIAL.lock().await;
    let bo = BackOffice::start_with(Backend::Sqlite, &[LINK_HOLD]).await?;
    let fx = bo.fixture(&["cad"], 10).await?;
    let port: u16 = bo.url.rsplit(':').next().context("port")?.parse()?;
    let proxy = Proxy::start(port).await?;
    let tmp = tempfile::tempdir()?;
    let hostid = format!(
        "string:lls-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let env: Vec<(String, String)> = [
        ("HOSTID", hostid.clone()),
        ("BACKOFFICE_URL", proxy.url()),
        ("BACKOFFICE_TOKEN", fx.device_token.clone()),
        (
            "BACKOFFICE_PUBLIC_KEY",
            bo.public_key_path().display().to_string(),
        ),
        ("RIGHTS_IDS", format!("{}:2", fx.activation_id)),
        (POLL.0, POLL.1.to_owned()),
        ("BACKOFF_MAX", "500ms".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let server = LicenseServer::start("lls", &tmp.path().join("lls"), 0, &env).await?;
    link_up(&server).await;

    proxy.cut();
    eventually(WAIT, "the link seen down", || async {
        let s = server.status().await.ok()?;
        (s["backoffice"]["link_up"] == false).then_some(())
    })
    .await;
    // Changed while the link is down: not there yet.
    map(&bo, &fx, &hostid, 3).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    ensure!(
        seats(&server).await == Some(2),
        "rights arrived through a cut link"
    );

    proxy.heal();
    // Opened again (backoff of a few seconds after a short cut) and answered at once.
    let healed = Instant::now();
    eventually(WAIT, "the change after the link is back", || async {
        (seats(&server).await == Some(5)).then_some(())
    })
    .await;
    link_up(&server).await;
    eprintln!(
        "live link: change in force {:?} after the proxy healed",
        healed.elapsed()
    );
    let started = Instant::now();
    map(&bo, &fx, &hostid, 1).await?;
    eventually(IN_FORCE, "the next change within 2 s", || async {
        (seats(&server).await == Some(6)).then_some(())
    })
    .await;
    eprintln!("live link: next change in force in {:?}", started.elapsed());
    Ok(())
}

/// A link request for `hostid` holding the revision of `claims`, for at most `wait` s.
fn link_request(hostid: &str, claims: &CapabilityClaims, wait: u32) -> Value {
    let mut body = capability_request(hostid, "standalone", None, &[]);
    body["link"] = json!({"revision": claims.revision(), "wait_secs": wait});
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_links_past_the_cap_is_refused_and_room_is_made_when_they_close() -> Result<()> {
    let bo = BackOffice::start_with(
        Backend::Sqlite,
        &[("MAX_LINKS_PER_ACCOUNT", "3"), ("SERVER_TIMEOUT", "9s")],
    )
    .await?;
    let fx = bo.fixture(&["cad"], 10).await?;
    let hostid = "string:flood-1";
    let first = capability_request(hostid, "standalone", None, &[(&fx.activation_id, 2)]);
    let reply = bo.capability(&fx.device_token, &first).await?.ok()?;
    let verifier = Verifier::from_public_pem(&bo.public_key_pem())?;
    let claims = verifier.verify(
        reply["token"].as_str().context("token")?,
        &HostId::parse(hostid)?,
        first["request_id"].as_str().context("id")?.parse()?,
        shared::now_unix(),
        5,
    )?;

    // 20 at once: 3 are held, the rest refused at once.
    let started = Instant::now();
    let flood: Vec<_> = (0..20)
        .map(|_| {
            let (bo_url, token, body) = (
                bo.url.clone(),
                fx.device_token.clone(),
                link_request(hostid, &claims, 60),
            );
            let http = bo.http.clone();
            tokio::spawn(async move {
                let r = http
                    .post(format!("{bo_url}/api/v1/capability"))
                    .bearer_auth(token)
                    .json(&body)
                    .send()
                    .await?;
                let status = r.status().as_u16();
                let retry = r.headers().contains_key("retry-after");
                let code = r.json::<Value>().await.ok().map(|b| b["code"].clone());
                anyhow::Ok((status, retry, code, started.elapsed()))
            })
        })
        .collect();
    let mut held = 0;
    let mut refused = 0;
    for f in flood {
        let (status, retry, code, took) = f.await??;
        match status {
            // Held for a third of SERVER_TIMEOUT, then "nothing changed".
            204 => {
                ensure!(took >= Duration::from_secs(2), "released early: {took:?}");
                held += 1;
            }
            429 => {
                ensure!(
                    retry && code == Some(json!("TOO_MANY_REQUESTS")),
                    "{code:?}"
                );
                ensure!(took < Duration::from_secs(2), "refused late: {took:?}");
                refused += 1;
            }
            other => anyhow::bail!("HTTP {other}: {code:?}"),
        }
    }
    ensure!((held, refused) == (3, 17), "held {held}, refused {refused}");
    // Closed: room again, and a change answers a held link at once with signed rights.
    let body = link_request(hostid, &claims, 60);
    let holder = {
        let (bo_url, token, body, http) = (
            bo.url.clone(),
            fx.device_token.clone(),
            body.clone(),
            bo.http.clone(),
        );
        tokio::spawn(async move {
            let r = http
                .post(format!("{bo_url}/api/v1/capability"))
                .bearer_auth(token)
                .json(&body)
                .send()
                .await?;
            anyhow::Ok((
                r.status().as_u16(),
                r.json::<Value>().await?,
                Instant::now(),
            ))
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mapped = Instant::now();
    map(&bo, &fx, hostid, 1).await?;
    let (status, answer, at) = holder.await??;
    ensure!(status == 200, "HTTP {status}: {answer}");
    ensure!(at.duration_since(mapped) < Duration::from_secs(1));
    let changed = verifier.verify(
        answer["token"].as_str().context("token")?,
        &HostId::parse(hostid)?,
        body["request_id"].as_str().context("id")?.parse()?,
        shared::now_unix(),
        5,
    )?;
    ensure!(changed.rights.iter().map(|r| r.count).sum::<u32>() == 3);
    ensure!(changed.revision() != claims.revision());
    Ok(())
}
