//! The back office over HTTP, on SQLite and on PostgreSQL: the capability protocol, pair
//! registration and ordering, rights mapping, signatures, the chain of trust (server keys
//! bound to their hostids, the pair's secret), and bad input.

use serde_json::{Value, json};
use shared::HostId;
use shared::capability::{CapabilityClaims, ISSUER, Role};
use shared::grant::{
    BindingClaims, Expected, GrantClaims, GrantError, VerifiedGrant, verify_grant,
};
use shared::signing::{Signer, TYP_BINDING, Verifier};
use tests::{BackOffice, Backend, SmallDisk, backends, capability_request};

fn verify(bo: &BackOffice, body: &Value, reply_body: &Value) -> CapabilityClaims {
    let verifier = Verifier::from_public_pem(&bo.public_key_pem()).unwrap();
    let token = reply_body["token"].as_str().expect("token");
    let hostid = HostId::parse(body["hostid"].as_str().unwrap()).unwrap();
    let rid = body["request_id"].as_str().unwrap().parse().unwrap();
    let claims = verifier
        .verify(token, &hostid, rid, shared::now_unix(), 5)
        .expect("answer verifies with the published key");
    // One byte changed, anywhere: no longer verifies.
    for pos in [10, token.len() / 2, token.len() - 2] {
        let mut t = token.as_bytes().to_vec();
        t[pos] = if t[pos] == b'x' { b'y' } else { b'x' };
        let t = String::from_utf8(t).unwrap();
        assert!(
            verifier
                .verify(&t, &hostid, rid, shared::now_unix(), 5)
                .is_err()
        );
    }
    claims
}

fn counts(claims: &CapabilityClaims) -> Vec<(String, String, u32)> {
    let mut v: Vec<_> = claims
        .rights
        .iter()
        .map(|r| (r.activation_id.clone(), r.feature.clone(), r.count))
        .collect();
    v.sort();
    v
}

async fn pair_flow(backend: Backend) {
    let bo = BackOffice::start(backend).await.unwrap();
    let fx = bo.fixture(&["cad", "sim"], 10).await.unwrap();
    let main = "ethernet:00163E5A1B2C";
    let backup = "ethernet:00-16-3e-5a-1b-2d";

    // The published key: the file and the endpoint agree.
    assert_eq!(published_pem(&bo).await, bo.public_key_pem());

    // The backup comes first: refused, recorded as waiting, never main.
    let b1 = capability_request(backup, "backup", None, &[]);
    let r = bo.capability(&fx.device_token, &b1).await.unwrap();
    assert_eq!(r.status, 409, "{r:?}");
    assert_eq!(r.code(), "MAIN_NOT_REGISTERED");
    let servers = fx
        .user
        .get("/api/v1/account/servers")
        .await
        .unwrap()
        .ok()
        .unwrap();
    let s = servers.as_array().unwrap();
    assert_eq!(s.len(), 1);
    assert_eq!(s[0]["hostid"], "ethernet:00163E5A1B2D");
    assert_eq!(s[0]["role"], "backup");
    assert_eq!(s[0]["registration"], "waiting");
    assert!(s[0]["pair_id"].is_null());

    // The main's startup request with BACKUP_SERVER_HOSTID and a rights ID.
    let m1 = capability_request(main, "main", Some(backup), &[(&fx.activation_id, 4)]);
    let r = bo.capability(&fx.device_token, &m1).await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let claims = verify(&bo, &m1, &r.body);
    assert_eq!(claims.role, Role::Main);
    let pair = claims.pair.clone().expect("pair");
    assert_eq!(pair.main.to_string(), main);
    assert_eq!(
        pair.backup.as_ref().unwrap().to_string(),
        "ethernet:00163E5A1B2D"
    );
    assert_eq!(
        counts(&claims),
        vec![
            (fx.activation_id.clone(), "cad".into(), 4),
            (fx.activation_id.clone(), "sim".into(), 4)
        ]
    );
    assert!(claims.poll_interval_secs > 0);
    assert!(claims.exp > claims.iat);

    // The backup's next request: the same rights, in the backup role.
    let b2 = capability_request(backup, "backup", None, &[]);
    let r = bo.capability(&fx.device_token, &b2).await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let bclaims = verify(&bo, &b2, &r.body);
    assert_eq!(bclaims.role, Role::Backup);
    assert_eq!(counts(&bclaims), counts(&claims));
    assert_eq!(bclaims.pair.as_ref().unwrap().id, pair.id);

    // A repeated startup request asks for the same count: nothing more is mapped.
    let m1b = capability_request(main, "main", Some(backup), &[(&fx.activation_id, 4)]);
    let r = bo.capability(&fx.device_token, &m1b).await.unwrap();
    assert_eq!(counts(&verify(&bo, &m1b, &r.body)), counts(&claims));

    // A second line item, mapped to the pair through the account API, reaches both.
    let ent = fx
        .admin
        .post(
            &format!("/api/v1/accounts/{}/entitlements", fx.account_id),
            json!({"name": "Order 2", "line_items": [{"product_id": fx.product_id, "quantity": 3}]}),
        )
        .await
        .unwrap()
        .ok()
        .unwrap();
    let act2 = ent["line_items"][0]["activation_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let backup_id = s[0]["id"].as_str().unwrap().to_owned();
    let m = fx
        .user
        .post(
            "/api/v1/account/mappings",
            json!({"activation_id": act2, "server_id": backup_id, "quantity": 2}),
        )
        .await
        .unwrap();
    assert_eq!(m.status, 201, "{m:?}");
    for (h, role, b) in [(main, "main", Some(backup)), (backup, "backup", None)] {
        let req = capability_request(h, role, b, &[]);
        let r = bo.capability(&fx.device_token, &req).await.unwrap();
        let c = verify(&bo, &req, &r.body);
        assert!(
            c.rights
                .iter()
                .any(|x| x.activation_id == act2 && x.count == 2),
            "{role} lacks the new rights"
        );
        assert_eq!(c.rights.len(), 4);
    }

    // View Server: both hostids and roles, the pair, the rights.
    let v = fx
        .user
        .get(&format!("/api/v1/account/servers/{backup_id}"))
        .await
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(v["pair"]["main"]["hostid"], main);
    assert_eq!(v["pair"]["main"]["role"], "main");
    assert_eq!(v["pair"]["backup"]["role"], "backup");
    assert_eq!(v["pair"]["status"], "paired_available");
    assert_eq!(v["rights"].as_array().unwrap().len(), 2);

    // Entitlements show what is mapped where.
    let e = fx
        .user
        .get("/api/v1/account/entitlements")
        .await
        .unwrap()
        .ok()
        .unwrap();
    let items: Vec<&Value> = e
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|x| x["line_items"].as_array().unwrap())
        .collect();
    assert_eq!(
        items
            .iter()
            .map(|i| i["mapped"].as_i64().unwrap())
            .sum::<i64>(),
        6
    );
}

#[tokio::test]
async fn backup_first_then_main_then_polling() {
    for b in backends() {
        pair_flow(b).await;
    }
}

async fn errors(backend: Backend) {
    let bo = BackOffice::start(backend).await.unwrap();
    let fx = bo.fixture(&["cad"], 5).await.unwrap();
    let other = bo.fixture(&["cad"], 5).await.unwrap();
    let tok = &fx.device_token;

    // Authentication.
    let body = capability_request("string:lls-1", "standalone", None, &[]);
    for bad in ["", "nonsense", "dt_x.y", &format!("{}x", tok)] {
        let r = bo.capability(bad, &body).await.unwrap();
        assert_eq!((r.status, r.code()), (401, "UNAUTHORIZED"), "token {bad:?}");
    }
    // Malformed, unknown fields, bad hostids, oversized.
    let raw = bo
        .http
        .post(format!("{}/api/v1/capability", bo.url))
        .bearer_auth(tok)
        .body("{\"request_id\":")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 400);
    let v: Value = raw.json().await.unwrap();
    assert_eq!(v["code"], "VALIDATION_ERROR");
    let mut extra = capability_request("string:lls-1", "standalone", None, &[]);
    extra["surprise"] = json!(1);
    assert_eq!(
        bo.capability(tok, &extra).await.unwrap().code(),
        "VALIDATION_ERROR"
    );
    let badhost = capability_request("ethernet:12", "standalone", None, &[]);
    assert_eq!(
        bo.capability(tok, &badhost).await.unwrap().code(),
        "VALIDATION_ERROR"
    );
    let mut missing = capability_request("string:lls-1", "standalone", None, &[]);
    missing.as_object_mut().unwrap().remove("request_id");
    assert_eq!(
        bo.capability(tok, &missing).await.unwrap().code(),
        "VALIDATION_ERROR"
    );
    let huge = json!({"x": "y".repeat(100_000)});
    let r = bo.capability(tok, &huge).await.unwrap();
    assert_eq!((r.status, r.code()), (400, "VALIDATION_ERROR"));

    // Clock skew and replay; a clock in milliseconds is not a clock in seconds.
    let mut millis = capability_request("string:lls-1", "standalone", None, &[]);
    millis["sent_at"] = json!(shared::now_unix() * 1000);
    let r = bo.capability(tok, &millis).await.unwrap();
    assert_eq!((r.status, r.code()), (400, "VALIDATION_ERROR"), "{r:?}");
    assert_eq!(r.body["field"], "sent_at");
    let mut skewed = capability_request("string:lls-1", "standalone", None, &[]);
    skewed["sent_at"] = json!(shared::now_unix() - 3600);
    assert_eq!(
        bo.capability(tok, &skewed).await.unwrap().code(),
        "CLOCK_SKEW"
    );
    let once = capability_request("string:lls-1", "standalone", None, &[]);
    assert_eq!(bo.capability(tok, &once).await.unwrap().status, 200);
    let r = bo.capability(tok, &once).await.unwrap();
    assert_eq!((r.status, r.code()), (409, "REPLAYED_REQUEST"));

    // Pairing rules.
    let r = bo
        .capability(
            tok,
            &capability_request("string:m1", "main", Some("ethernet:00163E5A1B2C"), &[]),
        )
        .await
        .unwrap();
    assert_eq!(r.code(), "HOSTID_TYPE_MISMATCH");
    // The standalone server cannot start as a backup or be named as one.
    let r = bo
        .capability(
            tok,
            &capability_request("string:lls-1", "backup", None, &[]),
        )
        .await
        .unwrap();
    assert_eq!(r.code(), "ROLE_CONFLICT");
    let r = bo
        .capability(
            tok,
            &capability_request("string:m1", "main", Some("string:lls-1"), &[]),
        )
        .await
        .unwrap();
    assert_eq!(r.code(), "ROLE_CONFLICT");
    // Another account's hostid.
    let r = bo
        .capability(
            &other.device_token,
            &capability_request("string:lls-1", "standalone", None, &[]),
        )
        .await
        .unwrap();
    assert_eq!((r.status, r.code()), (409, "HOSTID_IN_USE"));

    // Rights: unknown, another account's, too many — nothing changed.
    let r = bo
        .capability(
            tok,
            &capability_request("string:m2", "main", Some("string:b2"), &[("ACT-NOPE", 1)]),
        )
        .await
        .unwrap();
    assert_eq!((r.status, r.code()), (400, "UNKNOWN_RIGHTS_ID"));
    let r = bo
        .capability(
            tok,
            &capability_request(
                "string:m2",
                "main",
                Some("string:b2"),
                &[(&other.activation_id, 1)],
            ),
        )
        .await
        .unwrap();
    assert_eq!(r.code(), "UNKNOWN_RIGHTS_ID");
    let r = bo
        .capability(
            tok,
            &capability_request(
                "string:m2",
                "main",
                Some("string:b2"),
                &[(&fx.activation_id, 6)],
            ),
        )
        .await
        .unwrap();
    assert_eq!((r.status, r.code()), (409, "INSUFFICIENT_QUANTITY"));
    let servers = fx
        .user
        .get("/api/v1/account/servers")
        .await
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(
        servers.as_array().unwrap().len(),
        1,
        "a refused request registers nothing: {servers}"
    );

    // Account API: bad input and other accounts' objects.
    let u = &fx.user;
    let r = u
        .post(
            "/api/v1/account/pairs",
            json!({"main_hostid": "string:a", "backup_hostid": "uuid:nope"}),
        )
        .await
        .unwrap();
    assert_eq!((r.status, r.code()), (400, "VALIDATION_ERROR"));
    assert_eq!(r.body["field"], "backup_hostid");
    let r = u
        .post(
            "/api/v1/account/pairs",
            json!({"main_hostid": "string:a", "backup_hostid": "ethernet:00163E5A1B2C"}),
        )
        .await
        .unwrap();
    assert_eq!(r.code(), "HOSTID_TYPE_MISMATCH");
    let r = u
        .post(
            "/api/v1/account/pairs",
            json!({"main_hostid": "string:a", "backup_hostid": "string:a"}),
        )
        .await
        .unwrap();
    assert_eq!(r.code(), "VALIDATION_ERROR");
    let p = u
        .post(
            "/api/v1/account/pairs",
            json!({"main_hostid": "string:hm", "backup_hostid": "string:hb"}),
        )
        .await
        .unwrap();
    assert_eq!(p.status, 201, "{p:?}");
    let r = u
        .post(
            "/api/v1/account/pairs",
            json!({"main_hostid": "string:hm", "backup_hostid": "string:hb"}),
        )
        .await
        .unwrap();
    assert_eq!(r.code(), "ALREADY_EXISTS");
    let r = other
        .user
        .post(
            "/api/v1/account/pairs",
            json!({"main_hostid": "string:hm", "backup_hostid": "string:zz"}),
        )
        .await
        .unwrap();
    assert_eq!(r.code(), "HOSTID_IN_USE");
    let main_id = p.body["main"]["id"].as_str().unwrap().to_owned();
    let pair_id = p.body["id"].as_str().unwrap().to_owned();
    for path in [
        format!("/api/v1/account/servers/{main_id}"),
        format!("/api/v1/account/servers/{main_id}/usage"),
    ] {
        let r = other.user.get(&path).await.unwrap();
        assert_eq!((r.status, r.code()), (404, "NOT_FOUND"), "{path}");
    }
    let r = other
        .user
        .delete(&format!("/api/v1/account/pairs/{pair_id}/backup"))
        .await
        .unwrap();
    assert_eq!(r.code(), "NOT_FOUND");
    let r = other
        .user
        .post(
            "/api/v1/account/mappings",
            json!({"activation_id": other.activation_id, "server_id": main_id, "quantity": 1}),
        )
        .await
        .unwrap();
    assert_eq!(r.code(), "NOT_FOUND");
    let r = u
        .post(
            "/api/v1/account/mappings",
            json!({"activation_id": fx.activation_id, "server_id": main_id, "quantity": 0}),
        )
        .await
        .unwrap();
    assert_eq!(r.code(), "VALIDATION_ERROR");
    let r = u
        .post(
            "/api/v1/account/mappings",
            json!({"activation_id": fx.activation_id, "server_id": main_id, "quantity": 6}),
        )
        .await
        .unwrap();
    assert_eq!(r.code(), "INSUFFICIENT_QUANTITY");
    let m = u
        .post(
            "/api/v1/account/mappings",
            json!({"activation_id": fx.activation_id, "server_id": main_id, "quantity": 5}),
        )
        .await
        .unwrap();
    assert_eq!(m.status, 201);
    let mid = m.body["id"].as_str().unwrap().to_owned();
    let r = other
        .user
        .delete(&format!("/api/v1/account/mappings/{mid}"))
        .await
        .unwrap();
    assert_eq!(r.code(), "NOT_FOUND");

    // Roles: an account user is not an administrator, and the other way round.
    let r = u.get("/api/v1/products").await.unwrap();
    assert_eq!((r.status, r.code()), (403, "FORBIDDEN"));
    let r = fx.admin.get("/api/v1/account/servers").await.unwrap();
    assert_eq!((r.status, r.code()), (403, "FORBIDDEN"));
    let r = fx
        .admin
        .get("/api/v1/accounts/no-such-account")
        .await
        .unwrap();
    assert_eq!((r.status, r.code()), (404, "NOT_FOUND"));
    let r = fx
        .admin
        .post("/api/v1/products", json!({"name": "", "features": []}))
        .await
        .unwrap();
    assert_eq!(r.code(), "VALIDATION_ERROR");
    let r = fx
        .admin
        .post(
            &format!("/api/v1/accounts/{}/entitlements", fx.account_id),
            json!({"line_items": [{"product_id": "nope", "quantity": 1}]}),
        )
        .await
        .unwrap();
    assert_eq!(r.code(), "NOT_FOUND");

    // Removing a backup while its rights are in use is refused; once free, it goes.
    let m = capability_request("string:hm", "main", Some("string:hb"), &[]);
    let mut m = m;
    m["report"] = json!({"server_status": "active", "pair_status": "paired_available", "usage": [{"feature": "cad", "version": "1.0", "count": 5, "in_use": 2}]});
    assert_eq!(bo.capability(tok, &m).await.unwrap().status, 200);
    let r = u
        .delete(&format!("/api/v1/account/pairs/{pair_id}/backup"))
        .await
        .unwrap();
    assert_eq!((r.status, r.code()), (409, "PAIR_HAS_ACTIVE_RIGHTS"));
    let mut m = capability_request("string:hm", "main", Some("string:hb"), &[]);
    m["report"] = json!({"server_status": "active", "usage": [{"feature": "cad", "version": "1.0", "count": 5, "in_use": 0}]});
    assert_eq!(bo.capability(tok, &m).await.unwrap().status, 200);
    let r = u
        .delete(&format!("/api/v1/account/pairs/{pair_id}/backup"))
        .await
        .unwrap();
    assert_eq!(r.status, 204, "{r:?}");
    let v = u
        .get(&format!("/api/v1/account/servers/{main_id}"))
        .await
        .unwrap()
        .ok()
        .unwrap();
    assert!(v["pair"]["backup"].is_null());
    assert_eq!(v["pair"]["status"], "backup_not_available");

    // Revoked device tokens stop working.
    let t = u
        .get("/api/v1/account/device-tokens")
        .await
        .unwrap()
        .ok()
        .unwrap();
    let tid = t[0]["id"].as_str().unwrap();
    let r = other
        .user
        .delete(&format!("/api/v1/account/device-tokens/{tid}"))
        .await
        .unwrap();
    assert_eq!(r.code(), "NOT_FOUND");
    assert_eq!(
        u.delete(&format!("/api/v1/account/device-tokens/{tid}"))
            .await
            .unwrap()
            .status,
        204
    );
    let r = bo
        .capability(
            tok,
            &capability_request("string:lls-1", "standalone", None, &[]),
        )
        .await
        .unwrap();
    assert_eq!(r.code(), "UNAUTHORIZED");

    // Unknown endpoints and methods.
    let r = u.get("/api/v1/nothing-here").await.unwrap();
    assert_eq!((r.status, r.code()), (404, "NOT_FOUND"));
}

#[tokio::test]
async fn bad_input_gets_contract_errors_and_changes_nothing() {
    for b in backends() {
        errors(b).await;
    }
}

async fn concurrency(backend: Backend) {
    let bo = BackOffice::start_with(backend, &[("DB_POOL_SIZE", "8")])
        .await
        .unwrap();
    let fx = bo.fixture(&["cad"], 20).await.unwrap();
    // 40 servers race for 20 seats of one line item, 3 each; one pair's main and backup
    // hammer their requests at the same time.
    let mut tasks = Vec::new();
    for i in 0..40 {
        let url = bo.url.clone();
        let token = fx.device_token.clone();
        let act = fx.activation_id.clone();
        tasks.push(tokio::spawn(async move {
            let api = tests::Api {
                base: url,
                token,
                http: reqwest::Client::new(),
            };
            let body = capability_request(
                &format!("string:m{i}"),
                "main",
                Some(&format!("string:b{i}")),
                &[(&act, 3)],
            );
            api.post("/api/v1/capability", body).await.unwrap()
        }));
    }
    for _ in 0..20 {
        for (h, role, b) in [
            ("string:pm", "main", Some("string:pb")),
            ("string:pb", "backup", None),
        ] {
            let url = bo.url.clone();
            let token = fx.device_token.clone();
            tasks.push(tokio::spawn(async move {
                let api = tests::Api {
                    base: url,
                    token,
                    http: reqwest::Client::new(),
                };
                api.post("/api/v1/capability", capability_request(h, role, b, &[]))
                    .await
                    .unwrap()
            }));
        }
    }
    let mut granted = 0;
    for t in tasks {
        let r = t.await.unwrap();
        match (r.status, r.code()) {
            (200, _) => granted += 1,
            (409, "INSUFFICIENT_QUANTITY" | "MAIN_NOT_REGISTERED") => {}
            other => panic!("unexpected answer {other:?}: {}", r.body),
        }
    }
    assert!(granted > 0);
    let e = fx
        .user
        .get("/api/v1/account/entitlements")
        .await
        .unwrap()
        .ok()
        .unwrap();
    let mapped = e[0]["line_items"][0]["mapped"].as_i64().unwrap();
    assert!(mapped <= 20, "mapped {mapped} of 20");
    assert_eq!(
        mapped, 18,
        "six servers get 3 seats each; the seventh does not fit"
    );
    let servers = fx
        .user
        .get("/api/v1/account/servers")
        .await
        .unwrap()
        .ok()
        .unwrap();
    let servers = servers.as_array().unwrap();
    let mains: Vec<&Value> = servers.iter().filter(|s| s["role"] == "main").collect();
    let pm: Vec<&&Value> = mains
        .iter()
        .filter(|s| s["hostid"] == "string:pm")
        .collect();
    assert_eq!(pm.len(), 1, "exactly one pair per main");
    assert_eq!(pm[0]["partner_hostid"], "string:pb");
    let pairs: std::collections::HashSet<&str> = servers
        .iter()
        .filter_map(|s| s["pair_id"].as_str())
        .collect();
    assert_eq!(pairs.len(), mains.len(), "one pair per main");
    assert!(
        servers
            .iter()
            .filter(|s| s["role"] == "backup")
            .all(|s| s["role"] != "main")
    );
}

#[tokio::test]
async fn concurrent_requests_keep_one_pair_per_main_and_never_overmap() {
    for b in backends() {
        concurrency(b).await;
    }
}

async fn dropped_backup(backend: Backend) {
    let bo = BackOffice::start(backend).await.unwrap();
    let fx = bo.fixture(&["cad"], 10).await.unwrap();
    let (main, backup) = ("string:drop-main", "string:drop-backup");
    let first = capability_request(main, "main", Some(backup), &[(&fx.activation_id, 4)]);
    let r = bo.capability(&fx.device_token, &first).await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let b = capability_request(backup, "backup", None, &[]);
    assert_eq!(
        bo.capability(&fx.device_token, &b).await.unwrap().status,
        200
    );

    // The main reports that it dropped its backup (absence limit or an operator): the
    // backup leaves the pair even though seats are in use, and is not added back by the
    // main's later polls, which still name it.
    let mut poll = capability_request(main, "main", Some(backup), &[]);
    poll["report"] = json!({
        "server_status": "active",
        "pair_status": "backup_not_available",
        "usage": [{"feature": "cad", "version": "1.0", "count": 4, "in_use": 3}],
        "backup_dropped": true,
    });
    for _ in 0..2 {
        poll["request_id"] = json!(uuid::Uuid::new_v4());
        let r = bo.capability(&fx.device_token, &poll).await.unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        let claims = verify(&bo, &poll, &r.body);
        assert_eq!(claims.role, Role::Main);
        assert_eq!(claims.pair.as_ref().unwrap().backup, None);
        assert_eq!(
            counts(&claims),
            vec![(fx.activation_id.clone(), "cad".into(), 4)]
        );
    }
    let servers = fx
        .user
        .get("/api/v1/account/servers")
        .await
        .unwrap()
        .ok()
        .unwrap();
    let servers = servers.as_array().unwrap();
    assert_eq!(servers.len(), 1, "{servers:?}");
    assert_eq!(servers[0]["hostid"], main);
    assert!(servers[0]["partner_hostid"].is_null());
}

#[tokio::test]
async fn a_main_that_dropped_its_backup_takes_it_out_of_the_pair() {
    for b in backends() {
        dropped_backup(b).await;
    }
}

// ---------------------------------------------------------------------------------------
// The chain of trust: each server's key bound to its hostid and pair, the pair's secret.

/// A capability request that carries the server's public key.
fn keyed(
    hostid: &str,
    role: &str,
    backup: Option<&str>,
    rights: &[(&str, u32)],
    key: &Signer,
) -> Value {
    let mut v = capability_request(hostid, role, backup, rights);
    v["server_key"] = json!(key.public_key());
    v
}

/// The producer's public key (PEM) as a client is given it: `GET /api/v1/signing-key`.
async fn published_pem(bo: &BackOffice) -> String {
    bo.http
        .get(format!("{}/api/v1/signing-key", bo.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The producer's key as a client is given it.
async fn published_key(bo: &BackOffice) -> Verifier {
    Verifier::from_public_pem(&published_pem(bo).await).unwrap()
}

/// Sends a request that must be answered, and verifies the answer.
async fn answered(bo: &BackOffice, device_token: &str, body: &Value) -> CapabilityClaims {
    let r = bo.capability(device_token, body).await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    verify(bo, body, &r.body)
}

/// An answer's binding, verified with the producer's key.
fn binding_of(producer: &Verifier, claims: &CapabilityClaims) -> BindingClaims {
    let token = claims
        .binding
        .as_deref()
        .expect("an answer to a keyed request has a binding");
    producer
        .decode(token, TYP_BINDING)
        .expect("the binding verifies with the published key")
}

/// A grant of one seat of `cad` to `client-1`, signed with `key` as `hostid`.
fn grant(hostid: &str, key: &Signer, now: i64) -> (String, uuid::Uuid) {
    let lease = uuid::Uuid::new_v4();
    let g = GrantClaims {
        borrowed: false,
        iss: hostid.to_owned(),
        sub: "client-1".into(),
        jti: lease,
        feature: "cad".into(),
        version: "1.0".into(),
        count: 1,
        iat: now,
        exp: now + 600,
    };
    (g.sign(key), lease)
}

/// Verifies a grant signed with `key` under an answer's binding, as a client would: with
/// the producer's key alone.
fn client_check(
    producer: &Verifier,
    claims: &CapabilityClaims,
    key: &Signer,
) -> Result<VerifiedGrant, GrantError> {
    let now = shared::now_unix();
    let (token, lease) = grant(&claims.sub, key, now);
    let expected = Expected {
        client_id: "client-1",
        lease_id: Some(lease),
        feature: "cad",
        version: None,
        count: 1,
    };
    verify_grant(
        producer,
        &token,
        claims.binding.as_deref().unwrap_or_default(),
        &expected,
        now,
        5,
    )
}

/// The key IDs the account API shows, by hostid.
async fn key_ids(fx: &tests::Fixture) -> std::collections::BTreeMap<String, Value> {
    let servers = fx
        .user
        .get("/api/v1/account/servers")
        .await
        .unwrap()
        .ok()
        .unwrap();
    servers
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["hostid"].as_str().unwrap().to_owned(),
                s["key_id"].clone(),
            )
        })
        .collect()
}

async fn bindings(backend: Backend) {
    // A process: the key change must show in its log.
    let bo = BackOffice::start_process(backend, &[]).await.unwrap();
    let fx = bo.fixture(&["cad"], 10).await.unwrap();
    let producer = published_key(&bo).await;
    let (main, backup) = ("string:trust-main", "string:trust-backup");
    let (km, kb) = (Signer::generate(), Signer::generate());

    // The main registers the pair with its key; the backup follows with its own.
    let req = keyed(main, "main", Some(backup), &[(&fx.activation_id, 3)], &km);
    let m = answered(&bo, &fx.device_token, &req).await;
    let req = keyed(backup, "backup", None, &[], &kb);
    let b = answered(&bo, &fx.device_token, &req).await;
    for (claims, hostid, key) in [(&m, main, &km), (&b, backup, &kb)] {
        // Rights may be served for RIGHTS_VALIDITY (30 days by default), and the binding
        // lasts exactly as long: the key belongs to this hostid in this pair.
        assert_eq!(claims.serve_until, claims.iat + 30 * 86_400);
        let binding = binding_of(&producer, claims);
        assert_eq!(binding.iss, ISSUER);
        assert_eq!(binding.sub, hostid);
        assert_eq!(binding.key, key.public_key());
        assert_eq!(binding.pair, claims.pair);
        let pair = binding.pair.as_ref().expect("the binding names the pair");
        assert_eq!(
            (
                pair.main.to_string(),
                pair.backup.as_ref().map(ToString::to_string)
            ),
            (main.to_owned(), Some(backup.to_owned()))
        );
        assert_eq!((binding.iat, binding.exp), (claims.iat, claims.serve_until));
        // A client holding only the published key verifies the whole chain of a grant this
        // server signs; a grant under this binding signed with any other key is refused.
        let ok = client_check(&producer, claims, key).expect("the chain verifies");
        assert_eq!(ok.binding, binding);
        assert!(matches!(
            client_check(&producer, claims, &Signer::generate()),
            Err(GrantError::Grant { .. })
        ));
    }

    // A request without a key gets rights but no binding.
    let plain = capability_request(main, "main", Some(backup), &[]);
    assert_eq!(answered(&bo, &fx.device_token, &plain).await.binding, None);

    // View Server shows each server's key ID, in the API and in the portal.
    let ids = key_ids(&fx).await;
    assert_eq!(ids[main], json!(km.kid()));
    assert_eq!(ids[backup], json!(kb.kid()));
    let cookie = portal_session(&bo, &fx.user_email, tests::ADMIN_PASSWORD).await;
    let main_id = fx
        .user
        .get("/api/v1/account/servers")
        .await
        .unwrap()
        .ok()
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["hostid"] == main)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let page = portal_page(&bo, &cookie, &format!("/portal/servers/{main_id}")).await;
    assert!(page.contains(km.kid()) && page.contains(kb.kid()), "{page}");

    // The main changes its key: the answer binds the new one, grants signed with the old
    // one no longer verify under it, View Server shows the new ID, and the log says so at
    // INFO with both IDs.
    let km2 = Signer::generate();
    let req = keyed(main, "main", Some(backup), &[], &km2);
    let m2 = answered(&bo, &fx.device_token, &req).await;
    assert_eq!(binding_of(&producer, &m2).key, km2.public_key());
    assert!(client_check(&producer, &m2, &km2).is_ok());
    assert!(matches!(
        client_check(&producer, &m2, &km),
        Err(GrantError::Grant { .. })
    ));
    assert_eq!(key_ids(&fx).await[main], json!(km2.kid()));
    let logged = tests::eventually(
        std::time::Duration::from_secs(5),
        "the key change in the log",
        || {
            let log = bo.log_text();
            let (old, new) = (km.kid(), km2.kid());
            async move {
                log.lines()
                    .find(|l| {
                        l.contains("public key changed") && l.contains(old) && l.contains(new)
                    })
                    .map(str::to_owned)
            }
        },
    )
    .await;
    assert_eq!(level(&logged), "INFO", "{logged}");
    assert!(logged.contains(main), "in the request's span: {logged}");

    // Anything that is not a key is refused naming the field, and changes nothing: the
    // server keeps its key, a new hostid is not registered.
    let pem = km.public_pem();
    let short = &km.public_key()[..30];
    let padded = format!("{}=", km.public_key());
    // The identity point (y = 1), a "key" that every signature verifies with.
    let weak = "AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    for (hostid, role, b) in [
        (main, "main", Some(backup)),
        ("string:trust-new", "standalone", None),
    ] {
        for bad in ["", "not a key", short, &padded, &pem, weak] {
            let mut req = capability_request(hostid, role, b, &[]);
            req["server_key"] = json!(bad);
            let r = bo.capability(&fx.device_token, &req).await.unwrap();
            assert_eq!(
                (r.status, r.code()),
                (400, "VALIDATION_ERROR"),
                "{bad:?}: {r:?}"
            );
            assert_eq!(r.body["field"], "server_key", "{r:?}");
            assert!(r.body.get("token").is_none());
        }
    }
    let ids = key_ids(&fx).await;
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert_eq!(ids[main], json!(km2.kid()));

    // Another account's device token never gets a binding for this account's hostids, and
    // cannot change their keys.
    let other = bo.fixture(&["cad"], 5).await.unwrap();
    let attacker = Signer::generate();
    for (hostid, role, b) in [(main, "main", Some(backup)), (backup, "backup", None)] {
        let req = keyed(hostid, role, b, &[], &attacker);
        let r = bo.capability(&other.device_token, &req).await.unwrap();
        assert_eq!((r.status, r.code()), (409, "HOSTID_IN_USE"), "{r:?}");
        assert!(r.body.get("token").is_none(), "{r:?}");
    }
    let ids = key_ids(&fx).await;
    assert_eq!(
        (&ids[main], &ids[backup]),
        (&json!(km2.kid()), &json!(kb.kid()))
    );
}

#[tokio::test]
async fn a_servers_key_is_bound_to_its_hostid_and_pair_and_verifies_with_the_published_key() {
    for b in backends() {
        bindings(b).await;
    }
}

/// Sends a request that must be answered; its pair secret.
async fn pair_token(bo: &BackOffice, device_token: &str, body: &Value) -> Option<String> {
    answered(bo, device_token, body).await.pair_token
}

async fn pair_secret(backend: Backend) {
    let bo = BackOffice::start(backend).await.unwrap();
    let fx = bo.fixture(&["cad"], 10).await.unwrap();
    let other = bo.fixture(&["cad"], 10).await.unwrap();
    let dt = fx.device_token.as_str();
    let (main, b1, b2) = ("string:ps-main", "string:ps-b1", "string:ps-b2");
    let poll = |h: &str, role: &str, b: Option<&str>| capability_request(h, role, b, &[]);

    // Both servers of the pair get the same secret: 32 random bytes, base64url.
    let start = capability_request(main, "main", Some(b1), &[(&fx.activation_id, 4)]);
    let t1 = pair_token(&bo, dt, &start)
        .await
        .expect("the main gets the pair's secret");
    assert_eq!(t1.len(), 43, "{t1}");
    assert_eq!(
        pair_token(&bo, dt, &poll(b1, "backup", None)).await,
        Some(t1.clone())
    );
    assert_eq!(
        pair_token(&bo, dt, &poll(main, "main", Some(b1))).await,
        Some(t1.clone())
    );

    // A standalone server of the same account gets none; another account's pair has its
    // own; another account naming this pair's servers gets nothing at all.
    assert_eq!(
        pair_token(&bo, dt, &poll("string:ps-solo", "standalone", None)).await,
        None
    );
    let theirs = capability_request(
        "string:ps-other-main",
        "main",
        Some("string:ps-other-b"),
        &[(&other.activation_id, 2)],
    );
    let t_other = pair_token(&bo, &other.device_token, &theirs).await.unwrap();
    assert_ne!(t_other, t1);
    for (h, role, b) in [(main, "main", Some(b1)), (b1, "backup", None)] {
        let r = bo
            .capability(&other.device_token, &poll(h, role, b))
            .await
            .unwrap();
        assert_eq!(r.code(), "HOSTID_IN_USE", "{r:?}");
        assert!(!r.body.to_string().contains(&t1));
    }

    // Never shown: not in the account API, the producer API, the portal or the log.
    let servers = fx
        .user
        .get("/api/v1/account/servers")
        .await
        .unwrap()
        .ok()
        .unwrap();
    let mut shown = vec![servers.to_string()];
    let cookie = portal_session(&bo, &fx.user_email, tests::ADMIN_PASSWORD).await;
    shown.push(portal_page(&bo, &cookie, "/portal/servers").await);
    let mut pair_id = String::new();
    for s in servers.as_array().unwrap() {
        let id = s["id"].as_str().unwrap();
        let v = fx
            .user
            .get(&format!("/api/v1/account/servers/{id}"))
            .await
            .unwrap()
            .ok()
            .unwrap();
        if s["hostid"] == main {
            pair_id = v["pair"]["id"].as_str().unwrap().to_owned();
        }
        shown.push(v.to_string());
        shown.push(portal_page(&bo, &cookie, &format!("/portal/servers/{id}")).await);
    }
    let by_admin = fx
        .admin
        .get(&format!("/api/v1/accounts/{}/servers", fx.account_id))
        .await
        .unwrap()
        .ok()
        .unwrap();
    shown.push(by_admin.to_string());
    shown.push(bo.log_text());
    for text in &shown {
        assert!(!text.contains(&t1), "the pair's secret is shown: {text}");
    }

    // The backup leaves the pair and the main starts with another one: the new backup gets
    // a new secret, with the main; the old backup gets nothing.
    let r = fx
        .user
        .delete(&format!("/api/v1/account/pairs/{pair_id}/backup"))
        .await
        .unwrap();
    assert_eq!(r.status, 204, "{r:?}");
    let t2 = pair_token(&bo, dt, &poll(main, "main", Some(b2)))
        .await
        .expect("a new secret");
    assert_ne!(t2, t1);
    assert_eq!(
        pair_token(&bo, dt, &poll(b2, "backup", None)).await,
        Some(t2.clone())
    );
    let r = bo.capability(dt, &poll(b1, "backup", None)).await.unwrap();
    assert_eq!(r.code(), "MAIN_NOT_REGISTERED", "{r:?}");
    assert!(r.body.get("token").is_none());

    // The main drops its backup (absence limit): alone, it gets no secret, and the dropped
    // backup nothing; the next backup it names gets a new one.
    let mut dropped = poll(main, "main", Some(b2));
    dropped["report"] = json!({"server_status": "active", "backup_dropped": true});
    assert_eq!(pair_token(&bo, dt, &dropped).await, None);
    let r = bo.capability(dt, &poll(b2, "backup", None)).await.unwrap();
    assert_eq!(r.code(), "MAIN_NOT_REGISTERED", "{r:?}");
    let t3 = pair_token(&bo, dt, &poll(main, "main", Some(b1)))
        .await
        .unwrap();
    assert!(t3 != t1 && t3 != t2);
    assert_eq!(
        pair_token(&bo, dt, &poll(b1, "backup", None)).await,
        Some(t3)
    );

    // A pair registered in the portal before its servers start: whichever asks first, both
    // get the pair's one secret.
    let r = fx
        .user
        .post(
            "/api/v1/account/pairs",
            json!({"main_hostid": "string:ps-p-main", "backup_hostid": "string:ps-p-b"}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{r:?}");
    assert!(!r.body.to_string().contains("token"), "{r:?}");
    let t4 = pair_token(&bo, dt, &poll("string:ps-p-b", "backup", None))
        .await
        .unwrap();
    assert_eq!(
        pair_token(
            &bo,
            dt,
            &poll("string:ps-p-main", "main", Some("string:ps-p-b"))
        )
        .await,
        Some(t4)
    );
}

#[tokio::test]
async fn both_servers_of_a_pair_and_only_they_get_its_secret_which_changes_with_the_backup() {
    for b in backends() {
        pair_secret(b).await;
    }
}

#[tokio::test]
async fn rights_may_be_served_for_rights_validity_and_the_binding_ends_with_them() {
    let bo = BackOffice::start_with(
        Backend::Sqlite,
        &[("RIGHTS_VALIDITY", "2h"), ("POLL_INTERVAL", "1m")],
    )
    .await
    .unwrap();
    let fx = bo.fixture(&["cad"], 10).await.unwrap();
    let key = Signer::generate();
    let req = keyed(
        "string:validity",
        "standalone",
        None,
        &[(&fx.activation_id, 1)],
        &key,
    );
    let claims = answered(&bo, &fx.device_token, &req).await;
    assert_eq!(claims.poll_interval_secs, 60);
    assert_eq!(claims.serve_until, claims.iat + 7200);
    let binding = binding_of(&published_key(&bo).await, &claims);
    assert_eq!((binding.exp, binding.pair), (claims.serve_until, None));
}

// ---------------------------------------------------------------------------------------
// The API's document.

/// Every property named `…_at` of every schema, with its schema.
fn time_fields(doc: &Value) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for (name, schema) in doc["components"]["schemas"].as_object().unwrap() {
        if let Some(props) = schema["properties"].as_object() {
            for (p, s) in props {
                if p.ends_with("_at") {
                    out.push((format!("{name}.{p}"), s.clone()));
                }
            }
        }
    }
    out
}

/// Runs the outside validator (`openapi-spec-validator` from PyPI, which scripts/test
/// installs) on the document; `false` when it is not installed outside CI.
fn outside_validator_accepts(doc: &Value) -> bool {
    let available = std::process::Command::new("python3")
        .args(["-c", "import openapi_spec_validator"])
        .status()
        .is_ok_and(|s| s.success());
    if !available {
        assert!(
            std::env::var("CI").is_err(),
            "CI must validate the document: pip install openapi-spec-validator (scripts/test does)"
        );
        eprintln!("note: openapi-spec-validator not installed; the outside validation is skipped");
        return false;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, serde_json::to_vec_pretty(doc).unwrap()).unwrap();
    let out = std::process::Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openapi-spec-validator refused the document:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    true
}

#[tokio::test]
async fn the_api_document_is_generated_valid_and_covers_every_route() {
    let bo = BackOffice::start(Backend::Sqlite).await.unwrap();
    let doc: Value = bo
        .http
        .get(format!("{}/api/v1/openapi.json", bo.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    outside_validator_accepts(&doc);
    // A client of its own: the validator may have taken longer than the server keeps an
    // idle connection.
    let http = reqwest::Client::new();

    const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];
    let mut ids = std::collections::HashSet::new();
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 30, "{} paths", paths.len());
    for (path, item) in paths {
        assert!(
            path.starts_with("/api/v1/") || path == "/healthz" || path == "/metrics",
            "{path}"
        );
        let url = format!(
            "{}{}",
            bo.url,
            path.replace("{id}", "x").replace("{token_id}", "y")
        );
        let documented: Vec<&str> = METHODS
            .into_iter()
            .filter(|m| item.get(*m).is_some())
            .collect();
        for m in METHODS {
            let method = reqwest::Method::from_bytes(m.to_uppercase().as_bytes()).unwrap();
            let r = http.request(method, &url).send().await.unwrap();
            let status = r.status().as_u16();
            let allow = r
                .headers()
                .get("allow")
                .map(|v| v.to_str().unwrap().to_owned());
            let body = r.text().await.unwrap();
            let Some(op) = item.get(m) else {
                // Not documented: not served either.
                assert_eq!(status, 405, "{m} {path}: {body}");
                let allow = allow.expect("405 says what is allowed");
                for d in &documented {
                    assert!(allow.contains(&d.to_uppercase()), "{path}: Allow {allow}");
                }
                continue;
            };
            // Documented: served (any answer but the ones for what does not exist).
            assert!(
                status != 405 && !(status == 404 && body.contains("no endpoint")),
                "{m} {path} is documented but not served: {status} {body}"
            );
            let id = op["operationId"].as_str().unwrap();
            assert!(ids.insert(id.to_owned()), "operationId {id} twice");
            let responses = op["responses"].as_object().unwrap();
            let ok: Vec<&String> = responses.keys().filter(|k| k.starts_with('2')).collect();
            // One success, or a body and "nothing changed" (a live link's 204).
            assert!(
                ok.len() == 1 || (ok.len() == 2 && ok.iter().any(|k| *k == "204")),
                "{m} {path}: {ok:?}"
            );
            for k in ok {
                let success = &responses[k];
                assert!(
                    !success["description"].as_str().unwrap().is_empty(),
                    "{m} {path}: a success without a description"
                );
                if k != "204" {
                    let content = success["content"].as_object().expect("a body");
                    assert!(
                        content.values().all(|c| c.get("schema").is_some()),
                        "{m} {path}: a success body without a schema"
                    );
                }
            }
            // The errors: every status lists its codes, each of that status.
            for (status, r) in responses.iter().filter(|(k, _)| !k.starts_with('2')) {
                let schema = &r["content"]["application/json"]["schema"]["allOf"][1];
                let codes = schema["properties"]["code"]["enum"].as_array().unwrap();
                assert!(!codes.is_empty(), "{m} {path} {status}");
                for c in codes {
                    let code: shared::ErrorCode = serde_json::from_value(c.clone()).unwrap();
                    assert_eq!(code.http_status().to_string(), *status, "{m} {path} {c}");
                    assert!(
                        r["content"]["application/json"]["examples"][c.as_str().unwrap()]
                            .is_object(),
                        "{m} {path}: no example of {c}"
                    );
                }
            }
            assert!(responses.contains_key("500"), "{m} {path} lacks 500");
            // Whatever touches storage can find it unavailable.
            let static_ = ["/metrics", "/api/v1/openapi.json", "/api/v1/signing-key"];
            if !static_.contains(&path.as_str()) {
                assert!(responses.contains_key("503"), "{m} {path} lacks 503");
            }
        }
    }
    // A path that is not documented does not exist.
    let r = http
        .get(format!("{}/api/v1/undocumented", bo.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // Every time is Unix seconds, and says so.
    let times = time_fields(&doc);
    assert!(times.len() >= 15, "{times:?}");
    for (name, s) in &times {
        assert_eq!(s["format"], "int64", "{name}: {s}");
        let description = s["description"]
            .as_str()
            .unwrap_or("")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        assert!(
            description.contains("Unix time") || description.contains("Unix seconds"),
            "{name}: {s}"
        );
    }
}

async fn milliseconds(backend: Backend) {
    let bo = BackOffice::start(backend).await.unwrap();
    let fx = bo.fixture(&["cad"], 5).await.unwrap();
    let path = format!("/api/v1/accounts/{}/entitlements", fx.account_id);
    for (field, item) in [
        (
            "line_items.starts_at",
            json!({"product_id": fx.product_id, "quantity": 1, "starts_at": 1_798_366_799_000_i64}),
        ),
        (
            "line_items.expires_at",
            json!({"product_id": fx.product_id, "quantity": 1, "expires_at": 1_798_366_799_000_i64}),
        ),
    ] {
        let r = fx
            .admin
            .post(&path, json!({"line_items": [item]}))
            .await
            .unwrap();
        assert_eq!((r.status, r.code()), (400, "VALIDATION_ERROR"), "{r:?}");
        assert_eq!(r.body["field"], field);
        let msg = r.body["message"].as_str().unwrap();
        assert!(
            msg.contains("Unix seconds") && msg.contains("milliseconds"),
            "{msg}"
        );
    }
    // Nothing was created.
    let e = fx.admin.get(&path).await.unwrap().ok().unwrap();
    assert_eq!(e.as_array().unwrap().len(), 1);
    // Seconds are taken.
    let r = fx
        .admin
        .post(
            &path,
            json!({"line_items": [{"product_id": fx.product_id, "quantity": 1, "starts_at": 1_798_366_799_i64, "expires_at": 1_829_902_799_i64}]}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.body["line_items"][0]["starts_at"], 1_798_366_799_i64);
}

#[tokio::test]
async fn times_in_milliseconds_are_refused_naming_the_field_and_the_unit() {
    for b in backends() {
        milliseconds(b).await;
    }
}

// ---------------------------------------------------------------------------------------
// Sign-in floods and password guessing.

fn login_body(email: &str, password: &str) -> Value {
    json!({"email": email, "password": password})
}

async fn login_status(bo: &BackOffice, email: &str, password: &str) -> (u16, Option<u64>) {
    let r = bo
        .http
        .post(format!("{}/api/v1/auth/login", bo.url))
        .json(&login_body(email, password))
        .send()
        .await
        .unwrap();
    let retry = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    (r.status().as_u16(), retry)
}

/// A browser-like client of the portal's sign-in form (cookie and CSRF field by hand): the
/// status and page it answers with.
async fn portal_sign_in(bo: &BackOffice, email: &str, password: &str) -> (u16, String) {
    let r = portal_sign_in_form(bo, email, password).await;
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Signs in to the portal; the session cookie (`portal_session=…`).
async fn portal_session(bo: &BackOffice, email: &str, password: &str) -> String {
    let r = portal_sign_in_form(bo, email, password).await;
    assert_eq!(r.status().as_u16(), 303, "the portal's sign-in");
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("portal_session="))
        .and_then(|v| v.split(';').next())
        .expect("a session cookie")
        .to_owned()
}

/// A portal page as the signed-in user with `cookie` sees it.
async fn portal_page(bo: &BackOffice, cookie: &str, path: &str) -> String {
    let r = bo
        .http
        .get(format!("{}{path}", bo.url))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{path}");
    r.text().await.unwrap()
}

/// Posts the portal's sign-in form as a browser would, not following the redirect.
async fn portal_sign_in_form(bo: &BackOffice, email: &str, password: &str) -> reqwest::Response {
    let page = bo
        .http
        .get(format!("{}/portal/signin", bo.url))
        .send()
        .await
        .unwrap();
    let cookie = page
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("portal_signin="))
        .and_then(|v| v.split(';').next())
        .unwrap()
        .to_owned();
    let html = page.text().await.unwrap();
    let csrf = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_owned();
    let enc = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(format!("{}/portal/signin", bo.url))
        .header("cookie", cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "csrf={}&email={}&password={}&next=",
            enc(&csrf),
            enc(email),
            enc(password)
        ))
        .send()
        .await
        .unwrap()
}

/// Waits out a lock (sleeping through `429`s), then fails once more: that failure locks
/// for the next, longer time.
async fn wait_out_then_fail(bo: &BackOffice, user: &str) {
    loop {
        match login_status(bo, user, "wrong password!").await {
            (429, Some(s)) => tokio::time::sleep(std::time::Duration::from_secs(s)).await,
            (401, _) => return,
            other => panic!("unexpected answer {other:?}"),
        }
    }
}

#[tokio::test]
async fn guessing_a_password_is_slowed_then_refused_on_the_api_and_the_portal_and_the_lock_ends() {
    let bo = BackOffice::start_process(Backend::Sqlite, &[])
        .await
        .unwrap();
    let fx = bo.fixture(&["cad"], 5).await.unwrap();
    let (user, right) = (fx.user_email.as_str(), tests::ADMIN_PASSWORD);

    // Five free tries on the API; the sixth failure locks the account for a second, in
    // which even the right password is refused without a look, on the API and the portal.
    for i in 0..6 {
        assert_eq!(
            login_status(&bo, user, "wrong password!").await.0,
            401,
            "try {i}"
        );
    }
    assert_eq!(login_status(&bo, user, right).await, (429, Some(1)));
    let (status, html) = portal_sign_in(&bo, user, "wrong password!").await;
    assert_eq!(status, 429, "{html}");
    assert!(html.contains("Too many failed sign-ins"), "{html}");
    // 200 more guesses: nearly all refused at once.
    let started = std::time::Instant::now();
    let mut refused = 0;
    for _ in 0..200 {
        let (status, retry) = login_status(&bo, user, "wrong password!").await;
        if status == 429 {
            assert!(retry.is_some_and(|s| s >= 1), "429 says when");
            refused += 1;
        }
    }
    eprintln!("200 guesses answered in {:?}", started.elapsed());
    assert!(refused >= 150, "{refused} of 200 refused");

    // Each failure after a lock locks for twice as long.
    let mut last = 0;
    for _ in 0..2 {
        wait_out_then_fail(&bo, user).await;
        let (status, retry) = login_status(&bo, user, "wrong password!").await;
        assert_eq!(status, 429);
        let retry = retry.unwrap();
        assert!(retry > last, "the lock grows: {retry} s after {last} s");
        last = retry;
    }
    // The lock ends: the right password works, and the count starts afresh.
    tokio::time::sleep(std::time::Duration::from_secs(last)).await;
    assert_eq!(login_status(&bo, user, right).await.0, 200);
    assert_eq!(login_status(&bo, user, "wrong password!").await.0, 401);
    assert_eq!(login_status(&bo, user, right).await.0, 200);

    // Failures on the portal count as on the API.
    for _ in 0..6 {
        assert_eq!(portal_sign_in(&bo, user, "wrong password!").await.0, 401);
    }
    let (status, html) = portal_sign_in(&bo, user, right).await;
    assert_eq!(status, 429, "{html}");
    assert!(html.contains("Too many failed sign-ins"), "{html}");
    assert_eq!(login_status(&bo, user, right).await.0, 429);

    // One address guessing many accounts is slowed too (twenty free failures).
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(login_status(&bo, user, right).await.0, 200);
    for i in 0..21 {
        let (status, _) = login_status(&bo, &format!("guess-{i}@example.com"), "x").await;
        assert_eq!(status, 401, "account {i}");
    }
    assert_eq!(
        login_status(&bo, "someone-else@example.com", "x").await.0,
        429
    );

    // Each burst is logged once, at WARN: the account's two and the address's one.
    let log = bo.log_text();
    let bursts: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("repeated failed sign-ins"))
        .collect();
    assert_eq!(bursts.len(), 3, "{bursts:#?}");
    assert!(bursts.iter().all(|l| l.contains("WARN")));
    assert_eq!(
        bursts.iter().filter(|l| l.contains(&fx.user_email)).count(),
        2,
        "{bursts:#?}"
    );
    assert!(bursts.iter().any(|l| l.contains("address 127.0.0.1")));
    assert!(!log.contains("wrong password!"), "a password in the log");
}

// ---------------------------------------------------------------------------------------
// A full disk.

#[tokio::test]
async fn a_full_disk_gives_the_same_code_on_every_write_route() {
    let Some(disk) = SmallDisk::mount("4m") else {
        return;
    };
    let url = format!("sqlite://{}", disk.path().join("bo.db").display());
    let bo = BackOffice::start_process(Backend::Sqlite, &[("DATABASE_URL", &url)])
        .await
        .unwrap();
    let fx = bo.fixture(&["cad"], 10).await.unwrap();
    // Things to change: a pair with a mapping, a spare token, a second session.
    let pair = fx
        .user
        .post(
            "/api/v1/account/pairs",
            json!({"main_hostid": "string:full-m", "backup_hostid": "string:full-b"}),
        )
        .await
        .unwrap()
        .ok()
        .unwrap();
    let (pair_id, main_id) = (
        pair["id"].as_str().unwrap().to_owned(),
        pair["main"]["id"].as_str().unwrap().to_owned(),
    );
    let mapping = fx
        .user
        .post(
            "/api/v1/account/mappings",
            json!({"activation_id": fx.activation_id, "server_id": main_id, "quantity": 2}),
        )
        .await
        .unwrap()
        .ok()
        .unwrap();
    let mapping_id = mapping["id"].as_str().unwrap().to_owned();
    let tokens = fx
        .user
        .get("/api/v1/account/device-tokens")
        .await
        .unwrap()
        .ok()
        .unwrap();
    let token_id = tokens[0]["id"].as_str().unwrap().to_owned();
    let spare = fx.admin.clone();
    let acc = &fx.account_id;

    let filler = disk.fill();
    let capability = capability_request("string:full-m", "main", Some("string:full-b"), &[]);
    let writes: Vec<(&tests::Api, reqwest::Method, String, Option<Value>)> = vec![
        (
            &fx.admin,
            reqwest::Method::POST,
            "/api/v1/auth/login".into(),
            Some(json!({"email": tests::ADMIN_EMAIL, "password": tests::ADMIN_PASSWORD})),
        ),
        (
            &fx.admin,
            reqwest::Method::POST,
            "/api/v1/auth/password".into(),
            Some(
                json!({"current_password": tests::ADMIN_PASSWORD, "new_password": "another long password"}),
            ),
        ),
        (
            &fx.admin,
            reqwest::Method::POST,
            "/api/v1/admins".into(),
            Some(json!({"email": "more@example.com", "password": "correct horse battery"})),
        ),
        (
            &fx.admin,
            reqwest::Method::POST,
            "/api/v1/products".into(),
            Some(json!({"name": "Full", "features": [{"name": "f"}]})),
        ),
        (
            &fx.admin,
            reqwest::Method::POST,
            format!("/api/v1/products/{}/features", fx.product_id),
            Some(json!({"name": "extra"})),
        ),
        (
            &fx.admin,
            reqwest::Method::PATCH,
            format!("/api/v1/products/{}", fx.product_id),
            Some(json!({"name": "Renamed on a full disk"})),
        ),
        (
            &fx.admin,
            reqwest::Method::POST,
            "/api/v1/accounts".into(),
            Some(json!({"name": "Full Ltd"})),
        ),
        (
            &fx.admin,
            reqwest::Method::PATCH,
            format!("/api/v1/accounts/{acc}"),
            Some(json!({"name": "Renamed Ltd"})),
        ),
        (
            &fx.admin,
            reqwest::Method::POST,
            format!("/api/v1/accounts/{acc}/users"),
            Some(json!({"email": "new@example.com", "password": "correct horse battery"})),
        ),
        (
            &fx.admin,
            reqwest::Method::POST,
            format!("/api/v1/accounts/{acc}/entitlements"),
            Some(json!({"line_items": [{"product_id": fx.product_id, "quantity": 1}]})),
        ),
        (
            &fx.admin,
            reqwest::Method::POST,
            format!("/api/v1/accounts/{acc}/device-tokens"),
            Some(json!({"name": "t"})),
        ),
        (
            &fx.admin,
            reqwest::Method::DELETE,
            format!("/api/v1/accounts/{acc}/device-tokens/{token_id}"),
            None,
        ),
        (
            &fx.user,
            reqwest::Method::POST,
            "/api/v1/account/pairs".into(),
            Some(json!({"main_hostid": "string:full-x", "backup_hostid": "string:full-y"})),
        ),
        (
            &fx.user,
            reqwest::Method::POST,
            "/api/v1/account/mappings".into(),
            Some(json!({"activation_id": fx.activation_id, "server_id": main_id, "quantity": 1})),
        ),
        (
            &fx.user,
            reqwest::Method::DELETE,
            format!("/api/v1/account/mappings/{mapping_id}"),
            None,
        ),
        (
            &fx.user,
            reqwest::Method::DELETE,
            format!("/api/v1/account/pairs/{pair_id}/backup"),
            None,
        ),
        (
            &fx.user,
            reqwest::Method::POST,
            "/api/v1/account/device-tokens".into(),
            Some(json!({"name": "t"})),
        ),
        (
            &fx.user,
            reqwest::Method::DELETE,
            format!("/api/v1/account/device-tokens/{token_id}"),
            None,
        ),
        (
            &spare,
            reqwest::Method::POST,
            "/api/v1/auth/logout".into(),
            None,
        ),
    ];
    let mut messages = std::collections::BTreeSet::new();
    for (api, method, path, body) in &writes {
        let r = api.send(method.clone(), path, body.clone()).await.unwrap();
        assert_eq!(
            (r.status, r.code()),
            (503, "UNAVAILABLE"),
            "{method} {path}: {r:?}"
        );
        messages.insert(r.body["message"].as_str().unwrap().to_owned());
    }
    let r = bo.capability(&fx.device_token, &capability).await.unwrap();
    assert_eq!(
        (r.status, r.code()),
        (503, "UNAVAILABLE"),
        "capability: {r:?}"
    );
    messages.insert(r.body["message"].as_str().unwrap().to_owned());
    assert_eq!(
        messages.len(),
        1,
        "one message for one condition: {messages:#?}"
    );
    assert!(messages.iter().all(|m| m.contains("storage is full")));

    // Reads go on; the operator's log has the cause, with each request.
    assert_eq!(fx.admin.get("/api/v1/products").await.unwrap().status, 200);
    let log = bo.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("ERROR") && l.contains("database or disk is full")),
        "{log}"
    );

    // Space again: writes work again, the capability writer included.
    std::fs::remove_file(filler).unwrap();
    let r = fx
        .admin
        .post("/api/v1/products", json!({"name": "After", "features": []}))
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{r:?}");
    let again = capability_request("string:full-m", "main", Some("string:full-b"), &[]);
    let r = bo.capability(&fx.device_token, &again).await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    drop(bo);
}

// ---------------------------------------------------------------------------------------
// Recovering access.

/// The password a console command printed (`…: PASSWORD` on its first line).
fn printed_password(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .next()
        .and_then(|l| l.rsplit_once(": "))
        .map(|(_, p)| p.trim().to_owned())
        .unwrap()
}

async fn recovery(backend: Backend) {
    let bo = BackOffice::start_process(backend, &[]).await.unwrap();
    let fx = bo.fixture(&["cad"], 5).await.unwrap();

    // At the console: a new administrator, its password printed once.
    let out = bo.command(&["admin", "add", "Second@Example.com"]).unwrap();
    let second = printed_password(&out);
    assert!(second.len() >= 20, "{second}");
    bo.login("second@example.com", &second).await.unwrap();
    // Not twice; and a reset needs someone to reset. One line each, non-zero.
    for args in [
        &["admin", "add", "second@example.com"][..],
        &["admin", "reset-password", "nobody@example.com"],
        &["admin", "add", "not an address"],
    ] {
        let out = bo.command(args).unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
    }

    // A lost password: reset it; the old one and its sessions stop working.
    let before = bo.admin().await.unwrap();
    let out = bo
        .command(&["admin", "reset-password", tests::ADMIN_EMAIL])
        .unwrap();
    let reset = printed_password(&out);
    assert_eq!(before.get("/api/v1/products").await.unwrap().status, 401);
    assert!(
        bo.login(tests::ADMIN_EMAIL, tests::ADMIN_PASSWORD)
            .await
            .is_err()
    );
    let admin = tests::Api {
        base: bo.url.clone(),
        token: bo.login(tests::ADMIN_EMAIL, &reset).await.unwrap(),
        http: bo.http.clone(),
    };

    // Through the API, an administrator adds another; users may not.
    let r = admin
        .post(
            "/api/v1/admins",
            json!({"email": "third@example.com", "password": "third's long password"}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{r:?}");
    bo.login("third@example.com", "third's long password")
        .await
        .unwrap();
    let listed = admin.get("/api/v1/admins").await.unwrap().ok().unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 3);
    for (who, body, expected) in [
        (
            &fx.user,
            json!({"email": "x@example.com", "password": "long enough pw"}),
            (403, "FORBIDDEN"),
        ),
        (
            &admin,
            json!({"email": "third@example.com", "password": "long enough pw"}),
            (409, "ALREADY_EXISTS"),
        ),
        (
            &admin,
            json!({"email": fx.user_email, "password": "long enough pw"}),
            (409, "ALREADY_EXISTS"),
        ),
        (
            &admin,
            json!({"email": "fourth@example.com", "password": "short"}),
            (400, "VALIDATION_ERROR"),
        ),
    ] {
        let r = who.post("/api/v1/admins", body).await.unwrap();
        assert_eq!((r.status, r.code()), expected, "{r:?}");
    }

    // Anyone changes their own password, given the current one; other sessions end.
    let other_session = tests::Api {
        token: bo
            .login(&fx.user_email, tests::ADMIN_PASSWORD)
            .await
            .unwrap(),
        ..fx.user.clone()
    };
    let change =
        |current: &str, new: &str| json!({"current_password": current, "new_password": new});
    let r = fx
        .user
        .post(
            "/api/v1/auth/password",
            change("wrong password!", "a new long password"),
        )
        .await
        .unwrap();
    assert_eq!((r.status, r.code()), (401, "UNAUTHORIZED"));
    assert_eq!(r.body["field"], "current_password");
    let r = fx
        .user
        .post(
            "/api/v1/auth/password",
            change(tests::ADMIN_PASSWORD, "short"),
        )
        .await
        .unwrap();
    assert_eq!((r.status, r.code()), (400, "VALIDATION_ERROR"));
    assert_eq!(r.body["field"], "new_password");
    let r = fx
        .user
        .post(
            "/api/v1/auth/password",
            change(tests::ADMIN_PASSWORD, "a new long password"),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 204, "{r:?}");
    assert_eq!(fx.user.get("/api/v1/account").await.unwrap().status, 200);
    assert_eq!(
        other_session.get("/api/v1/account").await.unwrap().status,
        401
    );
    assert!(
        bo.login(&fx.user_email, tests::ADMIN_PASSWORD)
            .await
            .is_err()
    );
    bo.login(&fx.user_email, "a new long password")
        .await
        .unwrap();
    // An administrator too.
    let r = admin
        .post(
            "/api/v1/auth/password",
            change(&reset, "the admin's new password"),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 204, "{r:?}");
    bo.login(tests::ADMIN_EMAIL, "the admin's new password")
        .await
        .unwrap();

    // No password is ever in a log.
    let log = bo.log_text();
    for p in [
        &second,
        &reset,
        "a new long password",
        "third's long password",
    ] {
        assert!(!log.contains(p), "{p} in the log");
    }
}

#[tokio::test]
async fn administrators_and_users_recover_and_change_their_passwords() {
    for b in backends() {
        recovery(b).await;
    }
}

// ---------------------------------------------------------------------------------------
// Files, settings, logs.

fn mode(p: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn set_mode(p: &std::path::Path, m: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
}

#[tokio::test]
async fn the_data_directory_database_and_signing_key_are_for_their_owner_only() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let data_s = data.display().to_string();
    // DATA_DIR made by the back office, and the database in it (DATABASE_URL unset).
    let mut bo = BackOffice::start_process(
        Backend::Sqlite,
        &[("DATA_DIR", &data_s), ("DATABASE_URL", "")],
    )
    .await
    .unwrap();
    let db = data.join("backoffice.db");
    let wal = data.join("backoffice.db-wal");
    let shm = data.join("backoffice.db-shm");
    let key = data.join("signing-key.pem");
    let private = [&db, &wal, &shm, &key];
    assert_eq!(mode(&data), 0o700);
    for f in private {
        assert_eq!(mode(f), 0o600, "{}", f.display());
    }
    assert_eq!(mode(&data.join("signing-key.pub.pem")), 0o644);

    // Opened up by someone: the next start says so and closes them.
    set_mode(&data, 0o755);
    for f in private {
        set_mode(f, 0o644);
    }
    bo.restart().await.unwrap();
    assert_eq!(mode(&data), 0o700);
    for f in private {
        assert_eq!(mode(f), 0o600, "{}", f.display());
    }
    let log = bo.log_text();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("for its owner only"))
        .collect();
    for p in [&data, &db, &key] {
        let p = p.display().to_string();
        assert!(
            warnings.iter().any(|w| w.contains(&format!("path={p} "))),
            "no warning for {p}: {warnings:#?}"
        );
    }
}

/// Starts `backoffice serve` with `env`; its exit status, stderr and time to exit (or
/// `None` if it still runs after `limit`).
fn start_and_wait(
    env: &[(&str, &str)],
    args: &[&str],
    limit: std::time::Duration,
) -> Option<(std::process::ExitStatus, String, std::time::Duration)> {
    let tmp = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(tests::binary("backoffice"));
    cmd.args(args)
        .env_clear()
        .env("RUST_LOG", "warn")
        .env("DATA_DIR", tmp.path().join("data"))
        .env("LISTEN", "127.0.0.1:0")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let started = std::time::Instant::now();
    let mut child = cmd.spawn().unwrap();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            return Some((status, err, started.elapsed()));
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn a_bad_setting_stops_the_start_at_once_naming_the_setting_the_value_and_what_is_expected() {
    let second = std::time::Duration::from_secs(1);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let not_a_key = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(not_a_key.path(), "not a key").unwrap();
    let not_a_key = not_a_key.path().display().to_string();
    for (name, value, expected) in [
        ("LISTEN", "not an address", "127.0.0.1:8080"),
        ("LISTEN", taken.as_str(), "cannot listen"),
        ("DATA_DIR", "", "a directory"),
        ("DATABASE_URL", "mysql://db/x", "sqlite://PATH"),
        ("SIGNING_KEY", not_a_key.as_str(), "Ed25519"),
        ("ADMIN_EMAIL", "nobody", "e-mail address"),
        ("ADMIN_PASSWORD", "short", "10 to 256 characters"),
        ("POLL_INTERVAL", "soon", "a duration"),
        ("CLOCK_SKEW", "0s", "a duration"),
        ("RESPONSE_LIFETIME", "forever", "a duration"),
        ("RIGHTS_VALIDITY", "a month", "a duration"),
        ("RIGHTS_VALIDITY", "5m", "longer than POLL_INTERVAL (10m)"),
        ("SESSION_LIFETIME", "1s", "a duration"),
        ("SERVER_TIMEOUT", "-5m", "a duration"),
        ("DB_POOL_SIZE", "0", "a whole number from 1"),
        ("WORKERS", "lots", "a whole number from 1"),
        ("LOG_FORMAT", "xml", "text or json"),
    ] {
        let (status, err, took) = start_and_wait(&[(name, value)], &["serve"], second)
            .unwrap_or_else(|| panic!("{name}={value:?}: still running after a second"));
        assert!(!status.success(), "{name}={value:?}");
        let line = err.trim();
        assert_eq!(line.lines().count(), 1, "{name}={value:?}: {err}");
        assert!(line.contains(name), "{name}={value:?}: {line}");
        if name != "ADMIN_PASSWORD" {
            assert!(line.contains(value), "{name}={value:?}: {line}");
        } else {
            assert!(!line.contains(value), "the password shown: {line}");
        }
        assert!(line.contains(expected), "{name}={value:?}: {line}");
        eprintln!("{took:?}: {line}");
    }
    // TLS: the certificate without its key, and a file that holds no certificate.
    let (status, err, _) = start_and_wait(&[("TLS_CERT", &not_a_key)], &["serve"], second).unwrap();
    assert!(!status.success(), "{err}");
    assert!(
        err.contains("TLS_KEY") && err.contains("since TLS_CERT is set"),
        "{err}"
    );
    let both = [
        ("TLS_CERT", not_a_key.as_str()),
        ("TLS_KEY", not_a_key.as_str()),
    ];
    let (status, err, _) = start_and_wait(&both, &["serve"], second).unwrap();
    assert!(!status.success(), "{err}");
    let line = err.trim();
    assert_eq!(line.lines().count(), 1, "{err}");
    assert!(
        line.contains("TLS_CERT") && line.contains(&not_a_key) && line.contains("CERTIFICATE"),
        "{line}"
    );
    // A settings file with a name that is not a setting.
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), "LISTEN = \"127.0.0.1:0\"\nLISTEN_PORT = 80\n").unwrap();
    let path = file.path().display().to_string();
    let (status, err, _) = start_and_wait(&[], &["--config", &path, "serve"], second).unwrap();
    assert!(!status.success());
    assert!(
        err.contains("LISTEN_PORT") && err.contains("not a setting"),
        "{err}"
    );
}

/// The level of a text log line (`TIMESTAMP LEVEL …`).
fn level(line: &str) -> &str {
    line.split_whitespace().nth(1).unwrap_or("")
}

/// Lines at WARN or ERROR, and any colour code.
fn alarming(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| matches!(level(l), "WARN" | "ERROR") || l.contains('\u{1b}'))
        .collect()
}

#[tokio::test]
async fn logs_say_each_refusal_once_in_one_line_without_colour_or_spurious_errors() {
    let bo = BackOffice::start_process(Backend::Sqlite, &[])
        .await
        .unwrap();
    let fx = bo.fixture(&["cad"], 5).await.unwrap();
    // A clean start: nothing at ERROR or WARN, no colour codes.
    let start = bo.log_text();
    assert!(start.contains("storage ready"), "{start}");
    assert!(alarming(&start).is_empty(), "at a clean start:\n{start}");

    // Refusals: one line each, at INFO, the message once.
    let r = fx.admin.get("/api/v1/nothing-here").await.unwrap();
    assert_eq!(r.status, 404);
    let r = fx
        .admin
        .post("/api/v1/products", json!({"name": "", "features": []}))
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    let refused_message = r.body["message"].as_str().unwrap().to_owned();
    // Another account's hostid: the message does not say whose it is.
    let other = bo.fixture(&["cad"], 5).await.unwrap();
    let mine = capability_request("string:log-1", "standalone", None, &[]);
    assert_eq!(
        bo.capability(&fx.device_token, &mine).await.unwrap().status,
        200
    );
    let theirs = capability_request("string:log-1", "standalone", None, &[]);
    let r = bo.capability(&other.device_token, &theirs).await.unwrap();
    assert_eq!(r.code(), "HOSTID_IN_USE");
    assert!(
        !r.body["message"]
            .as_str()
            .unwrap()
            .contains("another account"),
        "{r:?}"
    );
    // Signed-out portal pages: a redirect, not an error.
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("{}/portal/servers", bo.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    let log = bo.log_text();
    assert!(alarming(&log).is_empty(), "{log}");
    let not_found: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("/api/v1/nothing-here"))
        .collect();
    assert_eq!(not_found.len(), 1, "{not_found:#?}");
    let line = not_found[0];
    assert!(
        level(line) == "INFO" && line.contains("NOT_FOUND"),
        "{line}"
    );
    assert_eq!(line.matches("no endpoint").count(), 1, "{line}");
    assert!(line.len() < 400, "{} bytes: {line}", line.len());
    let invalid: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(&refused_message))
        .collect();
    assert_eq!(invalid.len(), 1, "{invalid:#?}");
    assert_eq!(invalid[0].matches(&refused_message).count(), 1);
    let in_use: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("HOSTID_IN_USE"))
        .collect();
    assert_eq!(in_use.len(), 1, "{in_use:#?}");
    assert!(in_use[0].contains("hostid=string:log-1"), "{}", in_use[0]);
    assert!(
        !log.lines()
            .any(|l| l.contains("/portal/servers") && level(l) != "DEBUG"),
        "{log}"
    );

    // LOG_FORMAT=json: one JSON object a line.
    let bo = BackOffice::start_process(Backend::Sqlite, &[("LOG_FORMAT", "json")])
        .await
        .unwrap();
    let _ = bo
        .http
        .get(format!("{}/api/v1/nothing-here", bo.url))
        .send()
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let log = bo.log_text();
    let mut lines = 0;
    for l in log.lines().filter(|l| !l.is_empty()) {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(v["level"].is_string(), "{l}");
        lines += 1;
    }
    assert!(lines >= 3, "{log}");
}
