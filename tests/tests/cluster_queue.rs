//! The line of waiting clients and the usage report in a three-member cluster, with real
//! processes (the real back office, three `license-server` members, clients of the
//! client library): clients queued at the leader are granted in the order they joined as
//! seats free, never more than the count; one that leaves (at a follower it is redirected,
//! at the leader it leaves) takes no seat; after a kill -9 of the leader the new leader
//! holds the same line and grants in the same order, nothing twice; and the cluster's
//! usage intervals reach the back office's account API once, also after a kill -9 of the
//! leader.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use licensing_client::{Client, ClientError};
use serde_json::{Value, json};
use shared::lease::{CheckoutRequest, Lease};
use tests::cluster::{ClusterSetup, kill_the_leader};
use tests::license_server::{granted, still_waiting};
use tests::{BackOffice, Backend, Fixture, LicenseServer, eventually};
use tokio::task::JoinHandle;

/// One cluster test at a time: several clusters at once on two cores starve their
/// heartbeats.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const FEATURE: &str = "cad";
const WAIT: Duration = Duration::from_secs(30);
/// How long the queued clients of these tests are willing to wait.
const PATIENCE: Duration = Duration::from_secs(120);

async fn cluster(
    seats: u32,
    extra: &[(&str, &str)],
) -> Result<(BackOffice, Fixture, ClusterSetup, Vec<LicenseServer>, usize)> {
    let bo = BackOffice::start(Backend::Sqlite).await?;
    let fx = bo.fixture(&[FEATURE], 40).await?;
    let mut settings = vec![
        ("CLUSTER_HEARTBEAT_INTERVAL", "250ms"),
        ("CLUSTER_MEMBER_TIMEOUT", "1s"),
        ("QUEUE_MAX_WAIT", "10m"),
    ];
    settings.extend_from_slice(extra);
    let s = ClusterSetup::new(&bo, &fx, seats, &settings).await?;
    let (members, leader) = s.start_operational(seats, WAIT).await?;
    Ok((bo, fx, s, members, leader))
}

fn ask(client_id: &str) -> CheckoutRequest {
    tests::checkout_request(FEATURE, client_id)
}

/// The first lease of a client that knows one follower: retried while that follower does
/// not see the leader yet (it answers `UNAVAILABLE` then; the client learns every member
/// from its first lease).
async fn first_grant(client: &Client, client_id: &str) -> Lease {
    eventually(WAIT, &format!("a first grant to {client_id}"), || async {
        client.checkout_lease(&ask(client_id)).await.ok()
    })
    .await
}

/// A client of the library that waits in line for a seat, in a task of its own.
fn wait_in_line(client: &Client, client_id: &str) -> JoinHandle<Result<Lease, ClientError>> {
    let client = client.clone();
    let req = ask(client_id);
    tokio::spawn(async move { client.checkout_lease_queued(&req, PATIENCE, |_| {}).await })
}

async fn line_is(m: &LicenseServer, clients: &[&str]) {
    tests::license_server::line_is(&m.url, &m.admin_token(), FEATURE, clients).await;
}

async fn within_count(m: &LicenseServer, count: u32) -> Result<u32> {
    tests::license_server::within_count(m, FEATURE, count).await
}

async fn raw(m: &LicenseServer, req: reqwest::RequestBuilder) -> Result<(u16, Value)> {
    let resp = req.send().await.with_context(|| m.name.clone())?;
    let status = resp.status().as_u16();
    let body = resp.json().await.unwrap_or(Value::Null);
    Ok((status, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_clients_queued_at_the_leader_are_granted_in_order_and_one_that_leaves_takes_no_seat()
-> Result<()> {
    let _serial = SERIAL.lock().await;
    let (_bo, _fx, s, members, leader) = cluster(1, &[]).await?;
    let follower = (leader + 1) % 3;
    let (l, f) = (&members[leader], &members[follower]);
    // Clients that know only a follower: redirected to the leader like any checkout.
    let client = s.client(&f.url)?;
    let holder = first_grant(&client, "holder").await;

    let mut q1 = wait_in_line(&client, "q1");
    line_is(l, &["q1"]).await;
    // One joins over HTTP and gives up: at a follower it is told where the leader is.
    let (status, place) = raw(
        l,
        tests::license_server::http()
            .post(l.url("/api/v1/leases"))
            .json(&json!({"feature": FEATURE, "client_id": "leaver", "queue_secs": 600})),
    )
    .await?;
    ensure!(status == 202 && place["position"] == 2, "{status} {place}");
    let mut q2 = wait_in_line(&client, "q2");
    line_is(l, &["q1", "leaver", "q2"]).await;
    let mut q3 = wait_in_line(&client, "q3");
    // Every member holds the same line.
    for m in &members {
        line_is(m, &["q1", "leaver", "q2", "q3"]).await;
    }
    let queue_id = place["queue_id"].as_str().context("queue_id")?;
    let place_token = place["token"].as_str().context("token")?;
    let leave = |m: &LicenseServer, bearer: &str| {
        tests::license_server::http()
            .delete(m.url(&format!("/api/v1/queue/{queue_id}")))
            .bearer_auth(bearer)
    };
    let (status, err) = raw(f, leave(f, place_token)).await?;
    ensure!(
        err["code"] == "NOT_SERVING" && err["serving_url"] == l.url.as_str(),
        "a follower: {status} {err}"
    );
    let (status, err) = raw(l, leave(l, &holder.token)).await?;
    ensure!(status == 403, "another's token: {status} {err}");
    let (status, err) = raw(l, leave(l, place_token)).await?;
    ensure!(status == 204, "leaving: {status} {err}");
    for m in &members {
        line_is(m, &["q1", "q2", "q3"]).await;
    }

    // Seats free one at a time: granted in the order the clients joined, one at a time.
    let mut ids = std::collections::BTreeSet::new();
    client.release(&holder).await?;
    let l1 = granted(&mut q1, "q1").await?;
    ensure!(l1.client_id == "q1");
    line_is(l, &["q2", "q3"]).await;
    still_waiting(&mut q2, "q2, granted out of order").await?;
    still_waiting(&mut q3, "q3, granted out of order").await?;
    ensure!(within_count(l, 1).await? == 1);
    client.release(&l1).await?;
    let l2 = granted(&mut q2, "q2").await?;
    ensure!(l2.client_id == "q2");
    still_waiting(&mut q3, "q3, granted before its turn").await?;
    ensure!(within_count(l, 1).await? == 1);
    client.release(&l2).await?;
    let l3 = granted(&mut q3, "q3").await?;
    ensure!(l3.client_id == "q3");
    for l in [&l1, &l2, &l3] {
        ensure!(ids.insert(l.lease_id), "{} granted twice", l.lease_id);
    }
    for m in &members {
        line_is(m, &[]).await;
        within_count(m, 1).await?;
    }
    // The one that left took no seat.
    let held = tests::license_server::leases_at(&l.url, &l.admin_token(), FEATURE).await?;
    ensure!(
        tests::lease_ids(&held) == [l3.lease_id.to_string()].into(),
        "{held:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_kill_9_of_the_leader_the_new_leader_keeps_the_line_and_grants_in_the_same_order()
-> Result<()> {
    let _serial = SERIAL.lock().await;
    let (_bo, _fx, s, mut members, leader) = cluster(1, &[]).await?;
    let follower = (leader + 1) % 3;
    let client = s.client(&members[follower].url)?;
    let holder = first_grant(&client, "holder").await;
    let mut q1 = wait_in_line(&client, "q1");
    line_is(&members[leader], &["q1"]).await;
    let mut q2 = wait_in_line(&client, "q2");
    line_is(&members[leader], &["q1", "q2"]).await;
    let mut q3 = wait_in_line(&client, "q3");
    for m in &members {
        line_is(m, &["q1", "q2", "q3"]).await;
    }

    let (new, alive) = kill_the_leader(&mut members, leader, 1, WAIT).await?;
    let n = &members[new];
    line_is(n, &["q1", "q2", "q3"]).await;
    for (q, who) in [(&mut q1, "q1"), (&mut q2, "q2"), (&mut q3, "q3")] {
        still_waiting(q, &format!("{who}, answered while the seat was held")).await?;
    }
    ensure!(within_count(n, 1).await? == 1);

    // The seat frees at the new leader: granted in the same order, once each.
    client.release(&holder).await?;
    let l1 = granted(&mut q1, "q1").await?;
    ensure!(l1.client_id == "q1");
    still_waiting(&mut q2, "q2, granted before its turn").await?;
    still_waiting(&mut q3, "q3, granted before its turn").await?;
    ensure!(within_count(n, 1).await? == 1);
    client.release(&l1).await?;
    let l2 = granted(&mut q2, "q2").await?;
    ensure!(l2.client_id == "q2");
    still_waiting(&mut q3, "q3, granted before its turn").await?;
    client.release(&l2).await?;
    let l3 = granted(&mut q3, "q3").await?;
    ensure!(l3.client_id == "q3");
    ensure!(l1.lease_id != l2.lease_id && l2.lease_id != l3.lease_id && l1.lease_id != l3.lease_id);
    for i in &alive {
        line_is(&members[*i], &[]).await;
        within_count(&members[*i], 1).await?;
    }
    // The old leader, back, catches up: the same pool, no line.
    members[leader] = s.start(leader).await?;
    line_is(&members[leader], &[]).await;
    eventually(WAIT, "the restarted member holds q3's lease", || async {
        let held = tests::license_server::leases_at(
            &members[leader].url,
            &members[leader].admin_token(),
            FEATURE,
        )
        .await
        .ok()?;
        (tests::lease_ids(&held) == [l3.lease_id.to_string()].into()).then_some(())
    })
    .await;
    Ok(())
}

/// The grants of `cad` in the cluster's intervals the account API shows for `server_id`.
async fn grants_reported(fx: &Fixture, server_id: &str) -> Option<i64> {
    let body = fx.usage_intervals(server_id).await?;
    Some(
        body.as_array()?
            .iter()
            .filter(|i| i["feature"] == FEATURE)
            .map(|i| i["grants"].as_i64().unwrap_or(0))
            .sum(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clusters_usage_reaches_the_back_office_once_also_after_a_kill_9_of_the_leader()
-> Result<()> {
    let _serial = SERIAL.lock().await;
    let (_bo, fx, s, mut members, leader) = cluster(4, &[("USAGE_INTERVAL", "2s")]).await?;
    let client = s.client(&members[(leader + 1) % 3].url)?;
    let a = first_grant(&client, "a").await;
    let b = client.checkout_lease(&ask("b")).await?;
    client.release(&a).await?;
    // Any member's ID shows the cluster's intervals.
    let ids = [
        fx.server_id(&s.hostids[0]).await?,
        fx.server_id(&s.hostids[1]).await?,
        fx.server_id(&s.hostids[2]).await?,
    ];
    eventually(WAIT, "the two grants in the back office", || async {
        (grants_reported(&fx, &ids[0]).await? == 2).then_some(())
    })
    .await;

    let (new, _) = kill_the_leader(&mut members, leader, 4, WAIT).await?;
    let after = s.client(&members[new].url)?;
    let c = after.checkout_lease(&ask("c")).await?;
    after.release(&c).await?;
    after.release(&b).await?;
    for id in &ids {
        eventually(WAIT, "the third grant in the back office", || async {
            (grants_reported(&fx, id).await? == 3).then_some(())
        })
        .await;
    }
    // Several intervals and reports later, still each once (the new leader reported what
    // was committed and not acknowledged; the back office keeps each once).
    members[leader] = s.start(leader).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let total = grants_reported(&fx, &ids[leader]).await;
    if total != Some(3) {
        bail!("the cluster's grants reported: {total:?}, not 3");
    }
    let body = fx
        .usage_intervals(&ids[0])
        .await
        .context("the cluster's usage intervals")?;
    let served_by: std::collections::BTreeSet<String> = body
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|i| i["served_by"].as_array().cloned().unwrap_or_default())
        .filter_map(|s| s.as_str().map(str::to_owned))
        .collect();
    ensure!(
        served_by.contains(&s.hostids[leader]) && served_by.contains(&s.hostids[new]),
        "both leaders' intervals: {served_by:?} of {body}"
    );
    Ok(())
}
