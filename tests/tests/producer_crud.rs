//! The producer API's changes and deletions, over HTTP on SQLite and on PostgreSQL:
//! products, features, accounts, users, entitlements and line items change and go under
//! the business's rules (nothing mapped or named goes away, a quantity never falls below
//! what servers hold), bad input changes nothing, another account's objects are not found,
//! account users are refused, and servers get a line item's change at their next poll.

use serde_json::{Value, json};
use shared::HostId;
use shared::capability::CapabilityClaims;
use shared::signing::Verifier;
use tests::{Api, BackOffice, Backend, Fixture, Reply, backends, capability_request};

/// The capability answer's claims, verified with the published key.
async fn answered(bo: &BackOffice, fx: &Fixture, body: &Value) -> CapabilityClaims {
    let r = bo.capability(&fx.device_token, body).await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let verifier = Verifier::from_public_pem(&bo.public_key_pem()).unwrap();
    let hostid = HostId::parse(body["hostid"].as_str().unwrap()).unwrap();
    let rid = body["request_id"].as_str().unwrap().parse().unwrap();
    verifier
        .verify(
            r.body["token"].as_str().unwrap(),
            &hostid,
            rid,
            shared::now_unix(),
            5,
        )
        .expect("the answer verifies")
}

/// (activation ID, feature, count, expiry) of each right, sorted.
fn rights(claims: &CapabilityClaims) -> Vec<(String, String, u32, Option<i64>)> {
    let mut v: Vec<_> = claims
        .rights
        .iter()
        .map(|r| {
            (
                r.activation_id.clone(),
                r.feature.clone(),
                r.count,
                r.expires_at,
            )
        })
        .collect();
    v.sort();
    v
}

fn refused(r: &Reply, status: u16, code: &str) {
    assert_eq!((r.status, r.code()), (status, code), "{r:?}");
}

fn message(r: &Reply) -> &str {
    r.body["message"].as_str().unwrap_or("")
}

async fn get(api: &Api, path: &str) -> Value {
    api.get(path).await.unwrap().ok().unwrap()
}

/// The fixture's one entitlement and its one line item: (entitlement ID, line item path).
async fn line_item_path(fx: &Fixture) -> (String, String) {
    let ents = get(
        &fx.admin,
        &format!("/api/v1/accounts/{}/entitlements", fx.account_id),
    )
    .await;
    let ent = ents[0]["id"].as_str().unwrap().to_owned();
    let item = ents[0]["line_items"][0]["id"].as_str().unwrap();
    let path = format!(
        "/api/v1/accounts/{}/entitlements/{ent}/line-items/{item}",
        fx.account_id
    );
    (ent, path)
}

async fn the_line_item(fx: &Fixture) -> Value {
    let ents = get(
        &fx.admin,
        &format!("/api/v1/accounts/{}/entitlements", fx.account_id),
    )
    .await;
    ents[0]["line_items"][0].clone()
}

async fn products_and_features(backend: Backend) {
    let bo = BackOffice::start(backend).await.unwrap();
    let fx = bo.fixture(&["cad", "sim"], 5).await.unwrap();
    let admin = &fx.admin;
    let product = format!("/api/v1/products/{}", fx.product_id);
    let before = get(admin, &product).await;

    // A product renamed; the version kept.
    let p = admin
        .patch(&product, json!({"name": "CAD Suite Pro"}))
        .await
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(p["name"], "CAD Suite Pro");
    assert_eq!(p["version"], before["version"]);
    assert_eq!(get(admin, &product).await, p);

    // Bad input and clashes change nothing.
    let other = admin
        .post(
            "/api/v1/products",
            json!({"name": "Viewer", "version": "1", "features": [{"name": "view"}, {"name": "print"}]}),
        )
        .await
        .unwrap()
        .ok()
        .unwrap();
    for (body, status, code) in [
        (json!({"version": "has space"}), 400, "VALIDATION_ERROR"),
        (json!({"name": ""}), 400, "VALIDATION_ERROR"),
        (json!({"name": "x", "surprise": 1}), 400, "VALIDATION_ERROR"),
        (
            json!({"name": "Viewer", "version": "1"}),
            409,
            "ALREADY_EXISTS",
        ),
    ] {
        refused(&admin.patch(&product, body).await.unwrap(), status, code);
    }
    assert_eq!(get(admin, &product).await, p);

    // The product is in a line item: neither it nor its features change or go.
    let cad = p["features"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "cad")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let cad_path = format!("{product}/features/{cad}");
    let r = admin.delete(&cad_path).await.unwrap();
    refused(&r, 409, "IN_USE");
    assert!(message(&r).contains(&fx.activation_id), "{r:?}");
    assert!(message(&r).contains("feature cad"), "{r:?}");
    let r = admin
        .patch(&cad_path, json!({"name": "cad2"}))
        .await
        .unwrap();
    refused(&r, 409, "IN_USE");
    assert!(message(&r).contains(&fx.activation_id), "{r:?}");
    let r = admin.delete(&product).await.unwrap();
    refused(&r, 409, "IN_USE");
    assert!(message(&r).contains(&fx.activation_id), "{r:?}");
    assert_eq!(get(admin, &product).await, p);

    // A product nobody bought: its features change and go.
    let viewer = format!("/api/v1/products/{}", other["id"].as_str().unwrap());
    let view = other["features"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "view")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let view_path = format!("{viewer}/features/{view}");
    // Another product's feature is not found under this one.
    refused(
        &admin
            .patch(&format!("{product}/features/{view}"), json!({"name": "x"}))
            .await
            .unwrap(),
        404,
        "NOT_FOUND",
    );
    refused(
        &admin
            .delete(&format!("{product}/features/{view}"))
            .await
            .unwrap(),
        404,
        "NOT_FOUND",
    );
    refused(
        &admin
            .patch(&view_path, json!({"name": "print"}))
            .await
            .unwrap(),
        409,
        "ALREADY_EXISTS",
    );
    refused(
        &admin
            .patch(&view_path, json!({"name": "bad name!"}))
            .await
            .unwrap(),
        400,
        "VALIDATION_ERROR",
    );
    let f = admin
        .patch(&view_path, json!({"name": "viewer", "version": "2.0"}))
        .await
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(
        (&f["name"], &f["version"]),
        (&json!("viewer"), &json!("2.0"))
    );
    assert_eq!(admin.delete(&view_path).await.unwrap().status, 204);
    refused(&admin.delete(&view_path).await.unwrap(), 404, "NOT_FOUND");
    let names: Vec<Value> = get(admin, &viewer).await["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].clone())
        .collect();
    assert_eq!(names, vec![json!("print")]);
    assert_eq!(admin.delete(&viewer).await.unwrap().status, 204);
    refused(&admin.get(&viewer).await.unwrap(), 404, "NOT_FOUND");

    // Once its entitlement is gone, the first product goes too.
    let (ent, _) = line_item_path(&fx).await;
    let ent_path = format!("/api/v1/accounts/{}/entitlements/{ent}", fx.account_id);
    assert_eq!(admin.delete(&ent_path).await.unwrap().status, 204);
    assert_eq!(admin.delete(&cad_path).await.unwrap().status, 204);
    assert_eq!(admin.delete(&product).await.unwrap().status, 204);
    refused(&admin.get(&product).await.unwrap(), 404, "NOT_FOUND");
}

#[tokio::test]
async fn products_and_features_change_and_go_only_while_no_line_item_names_them() {
    for b in backends() {
        products_and_features(b).await;
    }
}

async fn line_items(backend: Backend) {
    let bo = BackOffice::start(backend).await.unwrap();
    let fx = bo.fixture(&["cad"], 5).await.unwrap();
    let admin = &fx.admin;
    let (ent, item) = line_item_path(&fx).await;
    let ent_path = format!("/api/v1/accounts/{}/entitlements/{ent}", fx.account_id);
    let host = "string:crud-server";
    let act = fx.activation_id.as_str();

    // A server holds 4 of the 5 seats.
    let claims = answered(
        &bo,
        &fx,
        &capability_request(host, "standalone", None, &[(act, 4)]),
    )
    .await;
    assert_eq!(rights(&claims), vec![(act.into(), "cad".into(), 4, None)]);
    let before = the_line_item(&fx).await;
    assert_eq!(before["mapped"], 4);

    // Below what is mapped: refused with both numbers.
    let r = admin.patch(&item, json!({"quantity": 3})).await.unwrap();
    refused(&r, 409, "INSUFFICIENT_QUANTITY");
    assert!(message(&r).contains("mapped 4"), "{r:?}");
    assert!(message(&r).contains("asked 3"), "{r:?}");
    assert!(message(&r).contains(host), "{r:?}");
    assert_eq!(r.body["field"], "quantity");
    // Bad input: refused, naming the field.
    let now = shared::now_unix();
    for (body, field) in [
        (json!({"quantity": 0}), "quantity"),
        (json!({"quantity": 2_000_000}), "quantity"),
        (json!({"expires_at": before["starts_at"]}), "expires_at"),
        (json!({"expires_at": now * 1000}), "expires_at"),
        (json!({"starts_at": -1}), "starts_at"),
        (
            json!({"starts_at": now + 100, "expires_at": now + 50}),
            "expires_at",
        ),
    ] {
        let r = admin.patch(&item, body.clone()).await.unwrap();
        refused(&r, 400, "VALIDATION_ERROR");
        assert_eq!(r.body["field"], field, "{body}: {r:?}");
    }
    refused(
        &admin
            .patch(&item, json!({"product_id": fx.product_id}))
            .await
            .unwrap(),
        400,
        "VALIDATION_ERROR",
    );
    assert_eq!(the_line_item(&fx).await, before, "nothing changed");
    // Asking the server for 8 of 5: refused, as before.
    let r = bo
        .capability(
            &fx.device_token,
            &capability_request(host, "standalone", None, &[(act, 8)]),
        )
        .await
        .unwrap();
    refused(&r, 409, "INSUFFICIENT_QUANTITY");

    // Down to exactly what is mapped, then up to 8 with an expiry.
    let i = admin
        .patch(&item, json!({"quantity": 4}))
        .await
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!((&i["quantity"], &i["mapped"]), (&json!(4), &json!(4)));
    let expires = now + 86_400 * 365;
    let i = admin
        .patch(&item, json!({"quantity": 8, "expires_at": expires}))
        .await
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(i["quantity"], 8);
    assert_eq!(i["expires_at"], expires);
    assert_eq!(i["activation_id"], act);
    // The server's next poll: the new expiry on what it holds, and the new count once it
    // asks for it.
    let claims = answered(&bo, &fx, &capability_request(host, "standalone", None, &[])).await;
    assert_eq!(
        rights(&claims),
        vec![(act.into(), "cad".into(), 4, Some(expires))]
    );
    let claims = answered(
        &bo,
        &fx,
        &capability_request(host, "standalone", None, &[(act, 8)]),
    )
    .await;
    assert_eq!(
        rights(&claims),
        vec![(act.into(), "cad".into(), 8, Some(expires))]
    );
    // Permanent again (`null`), and the count may not fall below the 8 now held.
    let i = admin
        .patch(&item, json!({"expires_at": null}))
        .await
        .unwrap()
        .ok()
        .unwrap();
    assert!(i["expires_at"].is_null(), "{i}");
    let r = admin.patch(&item, json!({"quantity": 7})).await.unwrap();
    refused(&r, 409, "INSUFFICIENT_QUANTITY");
    assert!(message(&r).contains("mapped 8"), "{r:?}");
    assert!(message(&r).contains("asked 7"), "{r:?}");
    let claims = answered(&bo, &fx, &capability_request(host, "standalone", None, &[])).await;
    assert_eq!(rights(&claims), vec![(act.into(), "cad".into(), 8, None)]);

    // Mapped: neither the line item nor its entitlement goes; the refusal names the server.
    for path in [&item, &ent_path] {
        let r = admin.delete(path).await.unwrap();
        refused(&r, 409, "IN_USE");
        assert!(message(&r).contains(host), "{r:?}");
        assert!(message(&r).contains("unmap"), "{r:?}");
    }
    let r = admin
        .patch(&ent_path, json!({"name": "Order 4711 (renewed)"}))
        .await
        .unwrap();
    assert_eq!(r.body["name"], "Order 4711 (renewed)", "{r:?}");
    refused(
        &admin.patch(&ent_path, json!({"name": " "})).await.unwrap(),
        400,
        "VALIDATION_ERROR",
    );

    // Unmapped: the line item goes, and leaves the server at its next poll.
    let mapping = the_line_item(&fx).await["mappings"][0]["mapping_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = fx
        .user
        .delete(&format!("/api/v1/account/mappings/{mapping}"))
        .await
        .unwrap();
    assert_eq!(r.status, 204, "{r:?}");
    assert_eq!(admin.delete(&item).await.unwrap().status, 204);
    refused(&admin.delete(&item).await.unwrap(), 404, "NOT_FOUND");
    refused(
        &admin.patch(&item, json!({"quantity": 9})).await.unwrap(),
        404,
        "NOT_FOUND",
    );
    let claims = answered(&bo, &fx, &capability_request(host, "standalone", None, &[])).await;
    assert!(claims.rights.is_empty(), "{:?}", claims.rights);
    assert_eq!(admin.delete(&ent_path).await.unwrap().status, 204);
    refused(&admin.delete(&ent_path).await.unwrap(), 404, "NOT_FOUND");
}

#[tokio::test]
async fn a_line_item_keeps_at_least_what_is_mapped_and_servers_get_its_change_at_their_next_poll() {
    for b in backends() {
        line_items(b).await;
    }
}

async fn accounts_and_users(backend: Backend) {
    let bo = BackOffice::start(backend).await.unwrap();
    let fx = bo.fixture(&["cad"], 5).await.unwrap();
    let other = bo.fixture(&["cad"], 5).await.unwrap();
    let admin = &fx.admin;
    let account = format!("/api/v1/accounts/{}", fx.account_id);
    let other_account = format!("/api/v1/accounts/{}", other.account_id);

    // Renamed; a clash or an empty name changes nothing.
    let a = admin
        .patch(&account, json!({"name": "Acme Engineering GmbH"}))
        .await
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(a["name"], "Acme Engineering GmbH");
    let other_name = get(admin, &other_account).await["name"].clone();
    refused(
        &admin
            .patch(&account, json!({"name": other_name}))
            .await
            .unwrap(),
        409,
        "ALREADY_EXISTS",
    );
    refused(
        &admin.patch(&account, json!({"name": ""})).await.unwrap(),
        400,
        "VALIDATION_ERROR",
    );
    assert_eq!(get(admin, &account).await, a);

    // A user's e-mail address changes; they sign in with the new one.
    let users = get(admin, &format!("{account}/users")).await;
    let user = format!("{account}/users/{}", users[0]["id"].as_str().unwrap());
    for (email, status, code) in [
        ("not an address", 400, "VALIDATION_ERROR"),
        (tests::ADMIN_EMAIL, 409, "ALREADY_EXISTS"),
        (other.user_email.as_str(), 409, "ALREADY_EXISTS"),
    ] {
        let r = admin.patch(&user, json!({"email": email})).await.unwrap();
        refused(&r, status, code);
    }
    let u = admin
        .patch(&user, json!({"email": "  Ops@Customer.example "}))
        .await
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(u["email"], "ops@customer.example");
    bo.login("ops@customer.example", tests::ADMIN_PASSWORD)
        .await
        .expect("signs in with the new address");
    assert!(
        bo.login(&fx.user_email, tests::ADMIN_PASSWORD)
            .await
            .is_err()
    );

    // An account with a license server is not deleted; the refusal names the server.
    answered(
        &bo,
        &fx,
        &capability_request("string:crud-acct", "standalone", None, &[]),
    )
    .await;
    let r = admin.delete(&account).await.unwrap();
    refused(&r, 409, "IN_USE");
    assert!(message(&r).contains("string:crud-acct"), "{r:?}");
    assert_eq!(get(admin, &account).await, a);

    // A user deleted: their session ends.
    let other_users = get(admin, &format!("{other_account}/users")).await;
    let other_user = format!(
        "{other_account}/users/{}",
        other_users[0]["id"].as_str().unwrap()
    );
    assert_eq!(other.user.get("/api/v1/account").await.unwrap().status, 200);
    assert_eq!(admin.delete(&other_user).await.unwrap().status, 204);
    refused(&admin.delete(&other_user).await.unwrap(), 404, "NOT_FOUND");
    refused(
        &other.user.get("/api/v1/account").await.unwrap(),
        401,
        "UNAUTHORIZED",
    );
    // An account without servers goes with its entitlements and device tokens.
    assert_eq!(admin.delete(&other_account).await.unwrap().status, 204);
    refused(&admin.get(&other_account).await.unwrap(), 404, "NOT_FOUND");
    refused(
        &admin.delete(&other_account).await.unwrap(),
        404,
        "NOT_FOUND",
    );
    let r = bo
        .capability(
            &other.device_token,
            &capability_request("string:crud-gone", "standalone", None, &[]),
        )
        .await
        .unwrap();
    refused(&r, 401, "UNAUTHORIZED");
    // Its product stays (products are the producer's, not the account's).
    assert_eq!(
        admin
            .get(&format!("/api/v1/products/{}", other.product_id))
            .await
            .unwrap()
            .status,
        200
    );
}

#[tokio::test]
async fn accounts_and_users_change_and_an_account_goes_only_without_servers() {
    for b in backends() {
        accounts_and_users(b).await;
    }
}

async fn others(backend: Backend) {
    let bo = BackOffice::start(backend).await.unwrap();
    let fx = bo.fixture(&["cad"], 5).await.unwrap();
    let other = bo.fixture(&["cad"], 5).await.unwrap();
    let admin = &fx.admin;
    let (ent, item) = line_item_path(&fx).await;
    let item_id = item.rsplit('/').next().unwrap().to_owned();
    let users = get(admin, &format!("/api/v1/accounts/{}/users", fx.account_id)).await;
    let user_id = users[0]["id"].as_str().unwrap().to_owned();
    let other_ent = line_item_path(&other).await.0;
    let product = get(admin, &format!("/api/v1/products/{}", fx.product_id)).await;
    let feature = product["features"][0]["id"].as_str().unwrap().to_owned();
    let before_items = the_line_item(&fx).await;

    // Another account's objects, addressed under this one: not found, not changed.
    let oa = &other.account_id;
    let crossed = [
        format!("/api/v1/accounts/{oa}/entitlements/{ent}"),
        format!("/api/v1/accounts/{oa}/entitlements/{ent}/line-items/{item_id}"),
        format!("/api/v1/accounts/{oa}/entitlements/{other_ent}/line-items/{item_id}"),
        format!("/api/v1/accounts/{oa}/users/{user_id}"),
        format!("/api/v1/products/{}/features/{feature}", other.product_id),
    ];
    for path in &crossed {
        let body = if path.contains("line-items") {
            json!({"quantity": 1})
        } else if path.contains("users") {
            json!({"email": "stolen@example.com"})
        } else {
            json!({"name": "stolen"})
        };
        refused(&admin.patch(path, body).await.unwrap(), 404, "NOT_FOUND");
        refused(&admin.delete(path).await.unwrap(), 404, "NOT_FOUND");
    }
    assert_eq!(the_line_item(&fx).await, before_items);
    assert_eq!(
        get(admin, &format!("/api/v1/accounts/{}/users", fx.account_id)).await,
        users
    );

    // An account user (of this very account) may change or delete none of it; without a
    // session, nobody may.
    let account = format!("/api/v1/accounts/{}", fx.account_id);
    let writes = [
        (
            format!("/api/v1/products/{}", fx.product_id),
            json!({"name": "x"}),
        ),
        (
            format!("/api/v1/products/{}/features/{feature}", fx.product_id),
            json!({"name": "x"}),
        ),
        (account.clone(), json!({"name": "x"})),
        (
            format!("{account}/users/{user_id}"),
            json!({"email": "x@y.z"}),
        ),
        (
            format!("{account}/entitlements/{ent}"),
            json!({"name": "x"}),
        ),
        (item.clone(), json!({"quantity": 1})),
    ];
    let anonymous = Api {
        token: "not-a-session".to_owned(),
        ..fx.user.clone()
    };
    for (path, body) in &writes {
        refused(
            &fx.user.patch(path, body.clone()).await.unwrap(),
            403,
            "FORBIDDEN",
        );
        refused(&fx.user.delete(path).await.unwrap(), 403, "FORBIDDEN");
        refused(
            &anonymous.patch(path, body.clone()).await.unwrap(),
            401,
            "UNAUTHORIZED",
        );
        refused(&anonymous.delete(path).await.unwrap(), 401, "UNAUTHORIZED");
    }
    assert_eq!(the_line_item(&fx).await, before_items);
    assert_eq!(get(admin, &account).await["id"], json!(fx.account_id));
    assert_eq!(
        get(admin, &format!("/api/v1/products/{}", fx.product_id)).await,
        product
    );
}

#[tokio::test]
async fn another_accounts_objects_are_not_found_and_account_users_may_change_nothing() {
    for b in backends() {
        others(b).await;
    }
}

async fn lending_policy(backend: Backend) {
    let bo = BackOffice::start(backend).await.unwrap();
    let fx = bo.fixture(&["cad"], 5).await.unwrap();
    let admin = &fx.admin;
    let (_, item) = line_item_path(&fx).await;
    let host = "string:lending-server";
    let act = fx.activation_id.as_str();
    let before = the_line_item(&fx).await;
    assert_eq!(
        (
            &before["borrowable"],
            &before["max_borrow_secs"],
            &before["overdraft"]
        ),
        (&json!(false), &Value::Null, &json!(0)),
        "a line item lends nothing unless told: {before}"
    );

    // Bad policies: refused, naming the field, changing nothing.
    for (body, field) in [
        (json!({"borrowable": true}), "max_borrow_secs"),
        (
            json!({"borrowable": true, "max_borrow_secs": 59}),
            "max_borrow_secs",
        ),
        (
            json!({"borrowable": true, "max_borrow_secs": 366 * 86_400}),
            "max_borrow_secs",
        ),
        (json!({"max_borrow_secs": 600}), "max_borrow_secs"),
        (json!({"overdraft": -1}), "overdraft"),
        (json!({"overdraft": 1_000_001}), "overdraft"),
    ] {
        let r = admin.patch(&item, body.clone()).await.unwrap();
        refused(&r, 400, "VALIDATION_ERROR");
        assert_eq!(r.body["field"], field, "{body}: {r:?}");
    }
    assert_eq!(the_line_item(&fx).await, before, "nothing changed");
    let r = admin
        .post(
            &format!("/api/v1/accounts/{}/entitlements", fx.account_id),
            json!({"name": "Bad", "line_items": [{"product_id": fx.product_id, "quantity": 1, "overdraft": 3, "max_borrow_secs": 600}]}),
        )
        .await
        .unwrap();
    refused(&r, 400, "VALIDATION_ERROR");
    assert_eq!(r.body["field"], "line_items.max_borrow_secs", "{r:?}");

    // A policy: shown with the line item and signed into the servers' rights.
    let r = admin
        .patch(
            &item,
            json!({"borrowable": true, "max_borrow_secs": 86_400, "overdraft": 2}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        (
            &r.body["borrowable"],
            &r.body["max_borrow_secs"],
            &r.body["overdraft"]
        ),
        (&json!(true), &json!(86_400), &json!(2))
    );
    let claims = answered(
        &bo,
        &fx,
        &capability_request(host, "standalone", None, &[(act, 4)]),
    )
    .await;
    assert_eq!(claims.rights.len(), 1, "{:?}", claims.rights);
    assert_eq!(claims.rights[0].max_borrow_secs, Some(86_400));
    assert_eq!(claims.rights[0].overdraft, 2);

    // Not borrowable any more: the maximum goes with it, at the next poll.
    let r = admin
        .patch(&item, json!({"borrowable": false}))
        .await
        .unwrap();
    assert_eq!((r.status, &r.body["max_borrow_secs"]), (200, &Value::Null));
    let claims = answered(&bo, &fx, &capability_request(host, "standalone", None, &[])).await;
    assert_eq!(claims.rights[0].max_borrow_secs, None);
    assert_eq!(claims.rights[0].overdraft, 2);
}

#[tokio::test]
async fn a_line_items_borrow_policy_and_overdraft_are_checked_shown_and_signed_into_the_rights() {
    for b in backends() {
        lending_policy(b).await;
    }
}
