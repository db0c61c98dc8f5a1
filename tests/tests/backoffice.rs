//! The back office over HTTP, on SQLite and on PostgreSQL: the capability protocol, pair
//! registration and ordering, rights mapping, signatures, and bad input.

use serde_json::{Value, json};
use shared::HostId;
use shared::capability::{CapabilityClaims, Role};
use shared::signing::Verifier;
use tests::{BackOffice, Backend, backends, capability_request};

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
    let pem = bo
        .http
        .get(format!("{}/api/v1/signing-key", bo.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(pem, bo.public_key_pem());

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

    // Clock skew and replay.
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
