//! Usage statistics through the operator API and CLI against the real binary: each
//! feature's users (the checkout's `user`, else its client), their uses, first and last
//! use, readable with the restricted token, kept across a restart; a recycling period
//! under an hour stops the start. (Recycling itself, with time the test controls, is
//! `stats`'s unit tests.)

use reqwest::Method;

use super::access::{FULL, READ};
use super::*;

async fn statistics(server: &Server, token: &str) -> (u16, Value) {
    let r = http()
        .request(Method::GET, server.url("/api/v1/admin/statistics"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_statistics_name_each_user_and_feature_for_the_restricted_token_across_a_restart() {
    let bo = TestBackoffice::start(vec![right("cad", 3), right("cam", 3)]).await;
    let dir = tempfile::tempdir().unwrap();
    let env = with(
        base_env(&bo, "string:lls-stats"),
        &[("ADMIN_TOKEN", FULL), ("ADMIN_READONLY_TOKEN", READ)],
    );
    let mut server = Server::start(dir.path(), env).await;
    rights_arrived(&server, "cam", 3).await;
    let take = |feature: &'static str, client: &'static str, user: Option<&'static str>| {
        let url = server.url("/api/v1/leases");
        async move {
            let r = http()
                .post(url)
                .json(
                    &json!({"feature": feature, "client_id": client, "user": user,
                    "client_secret": secret_of(client)}),
                )
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
            r.json::<Value>().await.unwrap()
        }
    };
    let alice = take("cad", "ws-1", Some("alice")).await;
    take("cad", "ws-2", Some("bob")).await;
    take("cam", "ws-3", None).await;
    // A renewal is a use too.
    let r = http()
        .put(server.url(&format!(
            "/api/v1/leases/{}",
            alice["lease_id"].as_str().unwrap()
        )))
        .bearer_auth(alice["token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let (status, v) = statistics(&server, READ).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["recycle_after_secs"], 30 * 86_400);
    let users = |v: &Value, feature: &str| -> Vec<(String, u64)> {
        v["features"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["feature"] == feature)
            .map(|f| {
                f["users"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|u| {
                        (
                            u["user"].as_str().unwrap().to_owned(),
                            u["uses"].as_u64().unwrap(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut cad = users(&v, "cad");
    cad.sort();
    assert_eq!(cad, [("alice".into(), 2), ("bob".into(), 1)], "{v}");
    assert_eq!(
        users(&v, "cam"),
        [("ws-3".into(), 1)],
        "no user: its client"
    );
    let u = &v["features"][0]["users"][0];
    assert!(u["first_used"].as_i64().unwrap() <= u["last_used"].as_i64().unwrap());
    let r = http()
        .get(server.url("/api/v1/admin/statistics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let out = server
        .operator(&["statistics", "--readonly-token", READ])
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("alice") && said.contains("ws-3"),
        "{said}"
    );

    // Kept across a restart (written at the stop).
    assert!(server.terminate().success());
    server.restart().await.unwrap();
    let (_, after) = statistics(&server, FULL).await;
    assert_eq!(after["features"], v["features"]);
    let mode = {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(dir.path().join("usage-stats.json"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode, 0o600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recycling_period_under_an_hour_stops_the_start() {
    let bo = TestBackoffice::start(vec![right("cad", 3)]).await;
    let dir = tempfile::tempdir().unwrap();
    let env = with(
        base_env(&bo, "string:lls-recycle"),
        &[("USAGE_RECYCLE_AFTER", "10m")],
    );
    let said = refused_start(&env, dir.path());
    assert!(
        said.contains("USAGE_RECYCLE_AFTER must be at least 1h"),
        "{said}"
    );
}
