//! The chain of trust with real processes, each test an attack that fails: a server's
//! own key and the back office's binding of it, bindings that are not the server's,
//! rights past their `serve_until`, another client's ID, a fake license server, a
//! backup's grants after its main was killed, and rights pushed through the pair's
//! channel unsigned, signed by another key, or for another server (snapshot, changes,
//! handback), replayed or reordered. Rights edited at rest are in `tests/store.rs`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use license_server::domain::{Event, Rights};
use license_server::service::peer::Batch;
use license_server::store::{Record, codec};
use licensing_client::{Client, ClientError};
use serde_json::{Value, json};
use shared::capability::{CapabilityClaims, ISSUER, PairInfo, Role};
use shared::grant::{BindingClaims, Expected, GrantClaims, verify_grant};
use shared::signing::Signer;
use shared::{HostId, now_unix};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;
use crate::{T, rights_arrived, status};

/// A few lines of HTTP: answers every request with what `answer(method, path, body)`
/// says, then closes the connection.
async fn fake_http<F>(answer: F) -> String
where
    F: Fn(&str, &str, &[u8]) -> (u16, String) + Send + Sync + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                let mut head_end = None;
                let mut len = 0;
                loop {
                    if let Some(end) = head_end
                        && buf.len() >= end + len
                    {
                        break;
                    }
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    if head_end.is_none()
                        && let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n")
                    {
                        head_end = Some(i + 4);
                        len = String::from_utf8_lossy(&buf[..i])
                            .lines()
                            .find_map(|l| {
                                let l = l.to_ascii_lowercase();
                                l.strip_prefix("content-length:")
                                    .and_then(|v| v.trim().parse().ok())
                            })
                            .unwrap_or(0);
                    }
                }
                let end = head_end.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                let mut first = head.lines().next().unwrap_or_default().split(' ');
                let (method, path) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
                let (status, body) = answer(method, path, &buf[end..end + len]);
                let reply = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(reply.as_bytes()).await;
            });
        }
    });
    url
}

/// Capability claims for `sub` (in `pair`) with `count` seats of `cad` 1.0.
fn answer(sub: &str, pair: Option<PairInfo>, count: u32) -> CapabilityClaims {
    let now = now_unix();
    CapabilityClaims {
        iss: ISSUER.into(),
        sub: sub.into(),
        request_id: uuid::Uuid::new_v4(),
        iat: now,
        exp: now + 300,
        server_id: "srv-1".into(),
        role: Role::Main,
        pair,
        cluster: None,
        poll_interval_secs: 1,
        rights: vec![right("cad", count)],
        serve_until: now + 86_400,
        binding: None,
        pair_token: None,
    }
}

/// Checks a lease's grant by hand, with the producer's key alone.
fn verified(bo: &TestBackoffice, lease: &Value) -> shared::grant::VerifiedGrant {
    let id = lease["lease_id"].as_str().unwrap().parse().unwrap();
    let asked = Expected {
        client_id: lease["client_id"].as_str().unwrap(),
        lease_id: Some(id),
        feature: lease["feature"].as_str().unwrap(),
        version: None,
        count: lease["count"].as_u64().unwrap() as u32,
    };
    verify_grant(
        &bo.producer(),
        lease["grant"].as_str().unwrap(),
        lease["binding"].as_str().unwrap(),
        &asked,
        now_unix(),
        5,
    )
    .unwrap()
}

/// Waits until `client` is granted a seat of `cad` again, and checks the grant.
async fn granted_again(bo: &TestBackoffice, server: &Server, client: &str, what: &str) {
    let lease = wait_for(T, what, || async {
        let (st, lease) = checkout(server, "cad", client).await;
        (st == 201).then_some(lease)
    })
    .await;
    verified(bo, &lease);
}

/// The public key of a server's `server-key.pem`, as it travels.
fn server_key(data: &std::path::Path) -> String {
    let pem = std::fs::read_to_string(data.join("server-key.pem")).unwrap();
    Signer::from_pem(&pem).unwrap().public_key()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_signs_its_grants_with_its_own_key_which_the_back_office_binds() {
    let mut bo = TestBackoffice::start(vec![right("cad", 2)]).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("lls");
    let mut server = Server::start(&data, base_env(&bo, "string:lls-key")).await;
    rights_arrived(&server, "cad", 2).await;

    // Its own key, for its owner only; its public half in every request.
    let key = server_key(&data);
    #[cfg(unix)]
    for file in ["server-key.pem", "capability.jwt"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data.join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
    assert!(
        bo.state
            .requests
            .lock()
            .unwrap()
            .iter()
            .all(|r| r.server_key.as_deref() == Some(key.as_str()))
    );

    // The client library verifies the grant; so can anyone with the producer's key.
    let client = Client::new(&server.url, bo.producer())
        .unwrap()
        .with_client_id("verified");
    let guard = client.checkout("cad", 1).await.unwrap();
    let lease = serde_json::to_value(guard.lease()).unwrap();
    let v = verified(&bo, &lease);
    assert_eq!(v.grant.iss, "string:lls-key");
    assert_eq!(v.binding.key, key);
    let renewed = guard.renew().await.unwrap();
    assert!(
        verified(&bo, &serde_json::to_value(&renewed).unwrap())
            .grant
            .iat
            >= v.grant.iat
    );
    let s = status(&server).await;
    assert!(s["trust"]["bound_until"].as_i64().unwrap() > now_unix());
    assert!(s["trust"]["serve_until"].as_i64().unwrap() > now_unix());
    guard.release().await.unwrap();

    // Restarted with the back office gone: the same key, its kept binding verified again,
    // and grants go on.
    server.kill9();
    bo.stop().await;
    let env = server.env.clone();
    drop(server);
    let server = Server::start(&data, env).await;
    assert_eq!(server_key(&data), key);
    let client = Client::new(&server.url, bo.producer()).unwrap();
    let lease = client.checkout("cad", 1).await.unwrap();
    assert_eq!(
        verified(&bo, &serde_json::to_value(lease.lease()).unwrap())
            .binding
            .key,
        key
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binding_that_is_not_this_servers_grants_nothing() {
    let dir = tempfile::tempdir().unwrap();
    for (i, (mode, why)) in [
        (Mode::BindingWrongKey, "not signed by the back office's key"),
        (Mode::BindingOtherHostid, "string:somebody-else"),
        (Mode::BindingExpired, "expired"),
        (Mode::BindingUnknownKid, "not-a-key-id"),
        (Mode::NoBinding, "no binding"),
    ]
    .into_iter()
    .enumerate()
    {
        let bo = TestBackoffice::start(vec![right("cad", 2)]).await;
        bo.set_mode(mode);
        let server = Server::start(
            &dir.path().join(format!("lls-{i}")),
            base_env(&bo, &format!("string:lls-bind-{i}")),
        )
        .await;
        // The rights themselves verify: they are shown, but nothing is granted.
        rights_arrived(&server, "cad", 2).await;
        let (st, err) = checkout(&server, "cad", "x").await;
        assert_eq!(st, 503, "{mode:?}: {err}");
        assert_eq!(err["code"], "SERVER_NOT_BOUND", "{mode:?}");
        let msg = err["message"].as_str().unwrap();
        assert!(msg.contains(why), "{mode:?}: {msg}");
        assert!(server.log().contains(why), "{mode:?}");
        // Once the back office binds its key, it grants.
        bo.set_mode(Mode::Normal);
        granted_again(&bo, &server, "x", "a grant once bound").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_serve_until_nothing_is_granted_and_the_server_says_why() {
    let bo = TestBackoffice::start(vec![right("cad", 2)]).await;
    bo.set_serve_secs(3);
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("lls"), base_env(&bo, "string:lls-until")).await;
    rights_arrived(&server, "cad", 2).await;
    let (st, lease) = checkout(&server, "cad", "a").await;
    assert_eq!(st, 201);
    let until = status(&server).await["trust"]["serve_until"]
        .as_i64()
        .unwrap();
    assert!(
        lease["expires_at"].as_i64().unwrap() <= until + 3,
        "{lease}"
    );
    // No newer answer verifies from now on (each is an old one replayed).
    bo.set_mode(Mode::Replay);
    let err = wait_for(T, "RIGHTS_EXPIRED", || async {
        let (st, err) = checkout(&server, "cad", "b").await;
        (st == 503 && err["code"] == "RIGHTS_EXPIRED").then_some(err)
    })
    .await;
    let msg = err["message"].as_str().unwrap();
    assert!(
        msg.contains("to be served until") && msg.contains(&bo.url),
        "{msg}"
    );
    // The lease cannot be renewed either.
    assert_eq!(renew(&server, &lease).await, 503);
    // The back office answers again: served again.
    bo.set_serve_secs(30 * 86_400);
    bo.set_mode(Mode::Normal);
    granted_again(&bo, &server, "b", "serving again").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn naming_another_clients_id_gets_a_lease_of_its_own_and_never_its_token() {
    let bo = TestBackoffice::start(vec![right("cad", 2)]).await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("lls"), base_env(&bo, "string:lls-own")).await;
    rights_arrived(&server, "cad", 2).await;
    let alice = Client::new(&server.url, bo.producer())
        .unwrap()
        .with_client_id("alice");
    let guard = alice.checkout("cad", 1).await.unwrap();
    let mine = guard.lease();

    let grab = |secret: Option<&str>, token: Option<&str>| {
        let mut body = json!({"feature": "cad", "client_id": "alice"});
        if let Some(s) = secret {
            body["client_secret"] = s.into();
        }
        let mut req = http().post(server.url("/api/v1/leases")).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    // Alice's ID without her secret: a lease of its own, with a token of its own.
    let (st, body) = grab(None, None).await;
    assert_eq!(st, 201, "{body}");
    let other: Value = serde_json::from_str(&body).unwrap();
    assert_ne!(other["lease_id"], mine.lease_id.to_string());
    assert!(!body.contains(&mine.token), "{body}");
    // With a guessed secret, and the seats gone: refused, and nothing of alice's shown.
    let (st, body) = grab(Some("a guess at alice's secret"), None).await;
    assert_eq!(st, 409, "{body}");
    assert!(
        !body.contains(&mine.token) && !body.contains(&mine.lease_id.to_string()),
        "{body}"
    );
    // With her lease's token: her lease.
    let (st, body) = grab(None, Some(&mine.token)).await;
    assert_eq!(st, 201, "{body}");
    let back: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(back["lease_id"], mine.lease_id.to_string());
    // And the library's own client, by its secret: her lease again.
    let again = alice
        .checkout_lease(&shared::lease::CheckoutRequest {
            borrow_secs: None,
            queue_secs: None,
            feature: "cad".into(),
            version: None,
            count: 1,
            client_id: "alice".into(),
            user: None,
            host: None,
            client_secret: None,
        })
        .await
        .unwrap();
    assert_eq!(again.lease_id, mine.lease_id);
    assert_eq!(feature(&server, "cad").await.unwrap()["in_use"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fake_license_server_cannot_grant_to_the_client_library() {
    // A genuine server, for a genuine binding and lease to replay.
    let bo = TestBackoffice::start(vec![right("cad", 2)]).await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("lls"), base_env(&bo, "string:lls-real")).await;
    rights_arrived(&server, "cad", 2).await;
    let (_, genuine) = checkout(&server, "cad", "alice").await;

    let rogue = Signer::generate();
    let now = now_unix();
    let grant_for = |client: &str, id: &str, iss: &str, key: &Signer| {
        GrantClaims {
            borrowed: false,
            iss: iss.into(),
            sub: client.into(),
            jti: id.parse().unwrap(),
            feature: "cad".into(),
            version: "1.0".into(),
            count: 1,
            iat: now,
            exp: now + 300,
        }
        .sign(key)
    };
    let self_bound = BindingClaims {
        iss: ISSUER.into(),
        sub: "string:lls-real".into(),
        key: rogue.public_key(),
        pair: None,
        iat: now - 10,
        exp: now + 86_400,
    }
    .sign(&rogue);
    let id = uuid::Uuid::new_v4().to_string();
    let lease = |grant: &str, binding: &str| {
        json!({
            "lease_id": id, "token": "t", "feature": "cad", "version": "1.0", "count": 1,
            "client_id": "victim", "granted_at": now, "expires_at": now + 300,
            "renew_after": now + 150, "grant": grant, "binding": binding,
        })
    };
    let cases = [
        ("no grant at all", lease("", "")),
        (
            "a grant under a binding it signed itself",
            lease(
                &grant_for("victim", &id, "string:lls-real", &rogue),
                &self_bound,
            ),
        ),
        (
            "a genuine binding with a grant of its own key",
            lease(
                &grant_for("victim", &id, "string:lls-real", &rogue),
                genuine["binding"].as_str().unwrap(),
            ),
        ),
        ("another client's genuine lease replayed", genuine.clone()),
    ];
    let answer = Arc::new(Mutex::new(String::new()));
    let a = answer.clone();
    let fake = fake_http(move |_, _, _| (201, a.lock().unwrap().clone())).await;
    for (what, body) in cases {
        *answer.lock().unwrap() = body.to_string();
        let client = Client::new(&fake, bo.producer())
            .unwrap()
            .with_client_id("victim");
        match client.checkout("cad", 1).await {
            Err(ClientError::Untrusted { server, reason }) => {
                assert_eq!(server, fake, "{what}");
                assert!(!reason.is_empty(), "{what}");
            }
            other => panic!("{what}: {other:?}"),
        }
        // The command-line client refuses it too.
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_license-client"))
            .env("LICENSE_PRODUCER_KEY", &bo.public_key)
            .args([
                "--server",
                &fake,
                "--client-id",
                "victim",
                "checkout",
                "cad",
            ])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}");
        assert!(err.contains("refused the lease from"), "{what}: {err}");
    }
    // Without the producer's key there is no client at all.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_license-client"))
        .args(["--server", &fake, "checkout", "cad"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--producer-key"));
}

/// A main and its backup against `bo`, linked by the secret the back office issues.
async fn pair(bo: &TestBackoffice, dir: &std::path::Path, tag: &str) -> (Server, Server) {
    let (main_port, backup_port) = (tests::free_port(), tests::free_port());
    let (main_id, backup_id) = (format!("string:{tag}-main"), format!("string:{tag}-backup"));
    let main = Server::start(
        &dir.join("main"),
        with(
            base_env(bo, &main_id),
            &[
                ("LISTEN", &format!("127.0.0.1:{main_port}")),
                ("BACKUP_SERVER_HOSTID", &backup_id),
                (
                    "LICENSING_BACKUP_URI",
                    &format!("http://127.0.0.1:{backup_port}"),
                ),
            ],
        ),
    )
    .await;
    let backup = Server::start(
        &dir.join("backup"),
        with(
            base_env(bo, &backup_id),
            &[
                ("LISTEN", &format!("127.0.0.1:{backup_port}")),
                (
                    "LICENSING_MAIN_URI",
                    &format!("http://127.0.0.1:{main_port}"),
                ),
            ],
        ),
    )
    .await;
    for s in [&main, &backup] {
        wait_for(T, "the pair linked", || async {
            (status(s).await["pair_status"] == "paired_available").then_some(())
        })
        .await;
        assert_eq!(status(s).await["trust"]["pair_secret"], "backoffice");
    }
    (main, backup)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backups_grants_after_kill_9_of_the_main_verify() {
    let bo = TestBackoffice::start(vec![right("cad", 3)]).await;
    let dir = tempfile::tempdir().unwrap();
    let (mut main, backup) = pair(&bo, dir.path(), "k9").await;
    let client = Client::with_servers([&main.url, &backup.url], bo.producer())
        .unwrap()
        .with_client_id("survivor");
    let guard = client.checkout("cad", 1).await.unwrap();
    let v = verified(&bo, &serde_json::to_value(guard.lease()).unwrap());
    assert_eq!(v.grant.iss, "string:k9-main");

    main.kill9();
    wait_for(T, "the backup serving", || async {
        (status(&backup).await["server_status"] == "active").then_some(())
    })
    .await;
    // Renewed by the backup: signed with the backup's own key, under its own binding.
    let renewed = guard.renew().await.unwrap();
    let v = verified(&bo, &serde_json::to_value(&renewed).unwrap());
    assert_eq!(v.grant.iss, "string:k9-backup");
    assert_eq!(v.binding.sub, "string:k9-backup");
    assert_eq!(v.binding.key, server_key(&dir.path().join("backup")));
    assert_eq!(v.binding.pair.unwrap().main.to_string(), "string:k9-main");
    // And a new client's lease from the backup verifies the same way.
    let other = client.with_client_id("newcomer");
    let lease = other.checkout("cad", 1).await.unwrap().lease();
    assert_eq!(
        verified(&bo, &serde_json::to_value(&lease).unwrap())
            .grant
            .iss,
        "string:k9-backup"
    );
}

/// A journal record of rights kept as plain counts (tag 2, from before rights were
/// signed): one right of `count` seats of `cad`.
fn counts_record(seq: u64, count: u64) -> Record {
    let mut payload = seq.to_le_bytes().to_vec();
    let mut e = codec::Enc(&mut payload);
    e.u8(2);
    e.u64(1);
    for s in ["ACT-cad", "cad", "1.0"] {
        e.str(s);
    }
    e.u64(count);
    e.i64(0);
    e.opt(None::<i64>, codec::Enc::i64);
    e.i64(now_unix() * 1000);
    e.i64(now_unix());
    let mut frame = Vec::new();
    license_server::store::frame::put_frame(&mut frame, &payload);
    Record {
        seq,
        frame: frame.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rights_pushed_through_the_pair_must_be_signed_for_it() {
    let bo = TestBackoffice::start(vec![right("cad", 3)]).await;
    let dir = tempfile::tempdir().unwrap();
    let (main, backup) = pair(&bo, dir.path(), "push").await;
    // The attacker holds the pair's secret.
    let secret = bo.pair_token("string:push-backup").unwrap();
    let (st, lease) = checkout(&main, "cad", "held").await;
    assert_eq!(st, 201);
    let lease_id = lease["lease_id"].as_str().unwrap().to_owned();
    let position_url = backup.url("/api/v1/pair/position");
    let position = || get_json_as(&position_url, &secret);
    let pos = position().await;
    let seq = pos["seq"].as_u64().unwrap();
    let history = pos["history"].as_str().unwrap().to_owned();

    let pair = PairInfo {
        id: "pair-string:push-main".into(),
        main: HostId::parse("string:push-main").unwrap(),
        backup: Some(HostId::parse("string:push-backup").unwrap()),
    };
    let genuine = bo.sign(&answer("string:push-main", Some(pair.clone()), 3));
    let forged: Vec<(&str, Value)> = vec![
        (
            "edited under the back office's signature",
            json!(edited_token(&genuine, |c| set_counts(c, 999))),
        ),
        (
            "signed by another key",
            json!(bo.sign_wrong(&answer("string:push-main", Some(pair.clone()), 999))),
        ),
        (
            "signed for another server",
            json!(bo.sign(&answer("string:elsewhere", None, 999))),
        ),
        (
            "plain counts",
            json!([{"activation_id": "ACT-cad", "feature": "cad", "version": "1.0",
                    "count": 999, "starts_at": 0}]),
        ),
    ];
    let unchanged = || async {
        let f = feature(&backup, "cad").await.unwrap();
        assert_eq!(f["count"], 3, "{f}");
        assert_eq!(position().await["seq"].as_u64(), Some(seq));
    };
    let send = |req: reqwest::RequestBuilder| async move {
        let r = req.send().await.unwrap();
        let st = r.status().as_u16();
        (st, r.json::<Value>().await.unwrap_or_default())
    };
    let post = |method: reqwest::Method, path: &str, body: Value| {
        send(
            http()
                .request(method, backup.url(path))
                .bearer_auth(&secret)
                .json(&body),
        )
    };
    // A batch of changes goes in the pair's binary form: the journal's records.
    let history_id: uuid::Uuid = history.parse().unwrap();
    let push = |main_seq: u64, records: Vec<Record>| {
        send(
            http()
                .post(backup.url("/api/v1/pair/events"))
                .bearer_auth(&secret)
                .body(Batch::encode(history_id, main_seq, &records)),
        )
    };
    for (what, rights) in forged {
        let code = if rights.is_array() {
            "VALIDATION_ERROR"
        } else {
            "UNVERIFIED_RIGHTS"
        };
        // As the whole state, in a snapshot.
        let state = json!({
            "seq": seq + 10, "lease_key": "a-key", "rights": rights,
            "rights_updated_at": now_unix() * 1000, "history": uuid::Uuid::new_v4(),
            "backup": {"dropped": false}, "leases": {},
        });
        let (st, err) = post(reqwest::Method::PUT, "/api/v1/pair/snapshot", state).await;
        assert_eq!(err["code"], code, "snapshot, {what}: {st} {err}");
        unchanged().await;
        // As a change of rights, in a batch of changes.
        let record = match &rights {
            Value::String(token) => Record::encode(
                seq + 1,
                &Event::RightsUpdated {
                    rights: Rights::unverified(token.as_str()),
                    at: now_unix() * 1000,
                },
            ),
            _ => counts_record(seq + 1, 999),
        };
        let (st, err) = push(seq + 1, vec![record]).await;
        assert_eq!(err["code"], code, "events, {what}: {st} {err}");
        unchanged().await;
    }
    // A change replayed (already held) changes nothing; one out of order is refused.
    let returned = |at_seq: u64| {
        vec![Record::encode(
            at_seq,
            &Event::LeaseReturned {
                id: lease_id.parse().unwrap(),
                at: now_unix() * 1000,
            },
        )]
    };
    let (st, ack) = push(seq, returned(seq)).await;
    assert_eq!((st, ack["seq"].as_u64()), (200, Some(seq)), "{ack}");
    let (st, err) = push(seq + 2, returned(seq + 2)).await;
    assert_eq!((st, err["code"].as_str()), (409, Some("OUT_OF_SYNC")));
    unchanged().await;
    let held = leases_of(&backup, "cad").await.to_string();
    assert!(held.contains(&lease_id), "{held}");
    // The pair itself is unharmed.
    assert_eq!(status(&main).await["pair_status"], "paired_available");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handback_with_unsigned_rights_gives_back_its_leases_and_not_its_rights() {
    let bo = TestBackoffice::start(vec![right("cad", 3)]).await;
    let dir = tempfile::tempdir().unwrap();
    // A "backup" that took over and hands back a state with 999 seats of forged rights
    // and a lease it granted.
    let history = uuid::Uuid::new_v4();
    let granted = uuid::Uuid::new_v4();
    let now_ms = now_unix() * 1000;
    let pair = PairInfo {
        id: "pair-string:hb-main".into(),
        main: HostId::parse("string:hb-main").unwrap(),
        backup: Some(HostId::parse("string:hb-backup").unwrap()),
    };
    let forged = edited_token(&bo.sign(&answer("string:hb-backup", Some(pair), 3)), |c| {
        set_counts(c, 999);
        c["iat"] = (now_unix() + 3600).into();
    });
    let state = json!({
        "seq": 50, "lease_key": null, "rights": forged, "rights_updated_at": now_ms,
        "history": history, "active_since": now_ms - 5000, "backup": {"dropped": false},
        "leases": {granted.to_string(): {
            "id": granted, "feature": "cad", "version": "1.0", "count": 1,
            "client_id": "served-by-the-backup", "granted_at": now_ms - 4000,
            "renewed_at": now_ms - 4000, "expires_at": now_ms + 600_000,
            "granted_by": "string:hb-backup", "granted_seq": 45,
        }},
    });
    let handed_back = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done = handed_back.clone();
    let fake = fake_http(move |method, path, _| match (method, path) {
        ("GET", "/api/v1/pair/position") if !done.load(std::sync::atomic::Ordering::SeqCst) => (
            200,
            json!({"hostid": "string:hb-backup", "role": "backup", "history": history,
                   "seq": 50, "active": true, "detached": false, "server_status": "active",
                   "pair_status": "main_not_available"})
            .to_string(),
        ),
        ("POST", "/api/v1/pair/handback") => {
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            (200, state.to_string())
        }
        _ => (
            404,
            json!({"code": "NOT_FOUND", "message": "gone"}).to_string(),
        ),
    })
    .await;
    let main = Server::start(
        &dir.path().join("main"),
        with(
            base_env(&bo, "string:hb-main"),
            &[
                ("BACKUP_SERVER_HOSTID", "string:hb-backup"),
                ("LICENSING_BACKUP_URI", &fake),
                ("PAIR_TOKEN", "the-pair-secret-of-this-test"),
            ],
        ),
    )
    .await;
    wait_for(T, "the handback", || async {
        handed_back
            .load(std::sync::atomic::Ordering::SeqCst)
            .then_some(())
    })
    .await;
    rights_arrived(&main, "cad", 3).await;
    // The lease the backup granted is the main's now; the forged rights are not.
    let leases = wait_for(T, "the backup's lease taken back", || async {
        let v = leases_of(&main, "cad").await;
        v.to_string().contains("served-by-the-backup").then_some(v)
    })
    .await;
    assert_eq!(leases.as_array().unwrap().len(), 1);
    for _ in 0..5 {
        assert_eq!(feature(&main, "cad").await.unwrap()["count"], 3);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        main.log()
            .contains("refused rights from the pair's channel that do not verify"),
        "{}",
        main.log()
    );
}
