//! The operator API's access modes against the real binary: the full token acts, the
//! restricted token only reads (403 `FORBIDDEN` on anything that acts, the lease kept),
//! `ADMIN_ACCESS=restricted` makes the full token read-only, `none` refuses everything
//! while clients are served, a missing or unknown token is 401 `UNAUTHORIZED`, the CLI
//! takes the restricted token, every refusal is logged below WARN, and a token too short
//! stops the start.

use reqwest::Method;

use super::*;

pub const FULL: &str = "the full operator token of this test";
pub const READ: &str = "the read-only operator token of this test";
/// Long enough, one character off the restricted token.
const NEAR_MISS: &str = "the read-only operator token of this tesT";

/// `method path` on `server` with `token`: the status and the error code, if any.
async fn call(server: &Server, method: Method, path: &str, token: Option<&str>) -> (u16, String) {
    let mut req = http().request(method, server.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or_default();
    (status, body["code"].as_str().unwrap_or_default().to_owned())
}

fn ok() -> (u16, String) {
    (200, String::new())
}

fn refused(status: u16, code: &str) -> (u16, String) {
    (status, code.to_owned())
}

/// Runs `license-server ARGS` against `server` with nothing but `ARGS` to go on.
fn cli(server: &Server, args: &[&str]) -> (bool, String) {
    let out = server.operator(args).unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_operator_token_does_what_the_access_mode_allows_and_no_more() {
    let bo = TestBackoffice::start(vec![right("cad", 3)]).await;
    let dir = tempfile::tempdir().unwrap();
    let env = with(
        base_env(&bo, "string:lls-access"),
        &[("ADMIN_TOKEN", FULL), ("ADMIN_READONLY_TOKEN", READ)],
    );
    let mut server = Server::start(dir.path(), env).await;
    rights_arrived(&server, "cad", 3).await;
    let (status, lease) = checkout(&server, "cad", "ws-1").await;
    assert_eq!(status, 201, "{lease}");
    let id = lease["lease_id"].as_str().unwrap().to_owned();
    let release = format!("/api/v1/admin/leases/{id}");
    let usage = "/api/v1/admin/usage";

    // ADMIN_ACCESS=full (the default): each token as it is.
    assert_eq!(
        call(&server, Method::GET, usage, None).await,
        refused(401, "UNAUTHORIZED")
    );
    for wrong in [
        "not an operator token",
        "the full operator token of this tes",
        NEAR_MISS,
    ] {
        assert_eq!(
            call(&server, Method::GET, usage, Some(wrong)).await,
            refused(401, "UNAUTHORIZED"),
            "{wrong}"
        );
    }
    assert_eq!(call(&server, Method::GET, usage, Some(READ)).await, ok());
    assert_eq!(
        call(
            &server,
            Method::GET,
            "/api/v1/admin/features/cad/leases",
            Some(READ)
        )
        .await,
        ok()
    );
    assert_eq!(call(&server, Method::GET, usage, Some(FULL)).await, ok());
    for (method, path) in [
        (Method::DELETE, release.as_str()),
        (Method::POST, "/api/v1/admin/reread"),
        (Method::POST, "/api/v1/admin/options/reload"),
        (Method::POST, "/api/v1/admin/pair/detach"),
        (Method::PUT, "/api/v1/admin/pair/backup"),
    ] {
        assert_eq!(
            call(&server, method.clone(), path, Some(READ)).await,
            refused(403, "FORBIDDEN"),
            "{method} {path}"
        );
        assert_eq!(
            call(&server, method.clone(), path, None).await,
            refused(401, "UNAUTHORIZED"),
            "{method} {path}"
        );
    }
    assert_eq!(
        leases_of(&server, "cad").await.as_array().map(Vec::len),
        Some(1),
        "kept"
    );

    // The CLI takes the restricted token: it reads who holds the seats, and cannot release.
    let (done, said) = cli(&server, &["status", "--readonly-token", READ]);
    assert!(done && said.contains("ws-1"), "{said}");
    let (done, said) = cli(&server, &["release", &id, "--readonly-token", READ]);
    assert!(
        !done && said.contains("FORBIDDEN") && said.contains("ADMIN_READONLY_TOKEN"),
        "{said}"
    );
    let (done, said) = cli(
        &server,
        &["leases", "cad", "--token", "not an operator token"],
    );
    assert!(!done && said.contains("UNAUTHORIZED"), "{said}");
    // The full token acts.
    let (done, said) = cli(&server, &["release", &id, "--token", FULL]);
    assert!(done, "{said}");
    assert_eq!(
        leases_of(&server, "cad").await.as_array().map(Vec::len),
        Some(0)
    );
    let (status, lease) = checkout(&server, "cad", "ws-2").await;
    assert_eq!(status, 201, "{lease}");
    let id = lease["lease_id"].as_str().unwrap().to_owned();
    let release = format!("/api/v1/admin/leases/{id}");

    // ADMIN_ACCESS=restricted: the full token reads and no more.
    server.env = with(server.env.clone(), &[("ADMIN_ACCESS", "restricted")]);
    server.restart().await.unwrap();
    assert_eq!(call(&server, Method::GET, usage, Some(FULL)).await, ok());
    assert_eq!(call(&server, Method::GET, usage, Some(READ)).await, ok());
    assert_eq!(
        call(&server, Method::DELETE, &release, Some(FULL)).await,
        refused(403, "FORBIDDEN")
    );
    assert_eq!(
        call(&server, Method::GET, usage, Some("not an operator token")).await,
        refused(401, "UNAUTHORIZED")
    );
    let (done, said) = cli(&server, &["release", &id, "--token", FULL]);
    assert!(!done && said.contains("ADMIN_ACCESS=restricted"), "{said}");
    assert_eq!(
        leases_of(&server, "cad").await.as_array().map(Vec::len),
        Some(1),
        "kept"
    );

    // ADMIN_ACCESS=none: the operator API refuses everything; clients are served.
    server.env = with(server.env.clone(), &[("ADMIN_ACCESS", "none")]);
    server.restart().await.unwrap();
    for token in [Some(FULL), Some(READ), None] {
        assert_eq!(
            call(&server, Method::GET, usage, token).await,
            refused(403, "FORBIDDEN")
        );
        assert_eq!(
            call(&server, Method::DELETE, &release, token).await,
            refused(403, "FORBIDDEN")
        );
    }
    let (done, said) = cli(&server, &["leases", "cad", "--token", FULL]);
    assert!(!done && said.contains("ADMIN_ACCESS=none"), "{said}");
    let (status, lease) = checkout(&server, "cad", "ws-3").await;
    assert_eq!(status, 201, "{lease}");

    // Every refusal was logged, as the client's error (INFO), never at WARN or above;
    // no token appears in the log.
    let log = server.log();
    let refusals: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("request refused") && l.contains("/api/v1/admin/"))
        .collect();
    assert!(refusals.len() >= 20, "{}", refusals.len());
    assert!(refusals.iter().all(|l| l.contains("INFO")), "{refusals:#?}");
    for secret in [FULL, READ] {
        assert!(!log.contains(secret), "a token was logged");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_too_short_operator_token_or_an_unknown_access_mode_stops_the_start() {
    let bo = TestBackoffice::start(vec![right("cad", 3)]).await;
    let dir = tempfile::tempdir().unwrap();
    for (setting, value, says) in [
        (
            "ADMIN_TOKEN",
            "short-secret",
            "ADMIN_TOKEN is too short (12 characters)",
        ),
        (
            "ADMIN_READONLY_TOKEN",
            "0123456789abcde",
            "ADMIN_READONLY_TOKEN is too short (15 characters)",
        ),
        (
            "ADMIN_ACCESS",
            "readonly",
            "ADMIN_ACCESS `readonly` is not one of full, restricted, none",
        ),
    ] {
        let said = refused_start(
            &with(base_env(&bo, "string:lls-short"), &[(setting, value)]),
            dir.path(),
        );
        assert!(said.contains(says), "{setting}: {said}");
        assert!(
            !said.contains(value) || setting == "ADMIN_ACCESS",
            "the token was printed: {said}"
        );
    }
}

/// `method path` with the full token and, if given, a session key: status and body.
async fn act(
    server: &Server,
    method: Method,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = http().request(method, server.url(path)).bearer_auth(FULL);
    if let Some(k) = key {
        req = req.header("X-Admin-Session", k);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or_default())
}

/// `POST /api/v1/admin/session` with the full token and `body`, no key: status and body.
async fn open_session(server: &Server, body: Value) -> (u16, Value) {
    act(
        server,
        Method::POST,
        "/api/v1/admin/session",
        None,
        Some(body),
    )
    .await
}

/// The key `license-server session open` printed.
fn key_printed(said: &str) -> String {
    said.lines()
        .find_map(|l| l.strip_prefix("export LICENSE_ADMIN_SESSION="))
        .unwrap_or_else(|| panic!("no key in: {said}"))
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_operator_at_a_time_acts_while_a_full_session_is_open() {
    let bo = TestBackoffice::start(vec![right("cad", 3)]).await;
    let dir = tempfile::tempdir().unwrap();
    let env = with(
        base_env(&bo, "string:lls-session"),
        &[
            ("ADMIN_TOKEN", FULL),
            ("ADMIN_READONLY_TOKEN", READ),
            ("ADMIN_SESSION_IDLE", "2s"),
        ],
    );
    let server = Server::start(dir.path(), env).await;
    rights_arrived(&server, "cad", 3).await;
    let mut ids = Vec::new();
    for ws in ["ws-1", "ws-2", "ws-3"] {
        let (status, lease) = checkout(&server, "cad", ws).await;
        assert_eq!(status, 201, "{lease}");
        ids.push(format!(
            "/api/v1/admin/leases/{}",
            lease["lease_id"].as_str().unwrap()
        ));
    }
    let session = "/api/v1/admin/session";

    // Alice opens the session with the CLI; the key is printed once.
    let (done, said) = cli(
        &server,
        &["session", "open", "--operator", "alice", "--token", FULL],
    );
    assert!(done, "{said}");
    let alice = key_printed(&said);

    // Bob, with the full token but not the key, acts on nothing: refused, naming Alice
    // and when the session lapses; the lease is kept. Nor can he open the session.
    let (status, body) = act(&server, Method::DELETE, &ids[0], None, None).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("SESSION_HELD")),
        "{body}"
    );
    let msg = body["message"].as_str().unwrap();
    assert!(msg.contains("alice") && msg.contains("lapses at"), "{msg}");
    let (done, said) = cli(&server, &["release", &ids[0][21..], "--token", FULL]);
    assert!(
        !done && said.contains("SESSION_HELD") && said.contains("alice"),
        "{said}"
    );
    let (status, body) = open_session(&server, json!({"operator": "bob"})).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("SESSION_HELD")),
        "{body}"
    );
    // A key that is not the session's is no better than none.
    let (status, _) = act(
        &server,
        Method::DELETE,
        &ids[0],
        Some("a guessed key"),
        None,
    )
    .await;
    assert_eq!(status, 409);
    assert_eq!(
        leases_of(&server, "cad").await.as_array().map(Vec::len),
        Some(3),
        "kept"
    );
    // Reading is not acting: either token reads, and sees who holds the session, never
    // the key.
    assert_eq!(
        call(&server, Method::GET, "/api/v1/admin/usage", Some(READ)).await,
        ok()
    );
    let (status, body) = act(&server, Method::GET, session, None, None).await;
    assert_eq!(status, 200);
    assert_eq!(body["operator"], "alice", "{body}");
    assert!(!body.to_string().contains(&alice), "{body}");
    let (done, said) = cli(&server, &["session", "show", "--readonly-token", READ]);
    assert!(done && said.contains("alice holds"), "{said}");
    // The restricted token cannot open a session.
    assert_eq!(
        call(&server, Method::POST, session, Some(READ)).await,
        refused(403, "FORBIDDEN")
    );

    // Alice acts with her key (the CLI's --session).
    let (done, said) = cli(
        &server,
        &[
            "release",
            &ids[0][21..],
            "--token",
            FULL,
            "--session",
            &alice,
        ],
    );
    assert!(done, "{said}");
    assert_eq!(
        leases_of(&server, "cad").await.as_array().map(Vec::len),
        Some(2)
    );

    // Bob takes it over: Alice is out, told who holds it now.
    let (status, body) = open_session(&server, json!({"operator": "bob", "take_over": true})).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["took_over"]["operator"], "alice", "{body}");
    let bob = body["key"].as_str().unwrap().to_owned();
    let (status, body) = act(&server, Method::DELETE, &ids[1], Some(&alice), None).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["message"].as_str().unwrap().contains("bob"), "{body}");
    // Alice cannot close Bob's session; Bob closes it, and the full token acts alone again.
    let (status, _) = act(&server, Method::DELETE, session, Some(&alice), None).await;
    assert_eq!(status, 409);
    let (done, said) = cli(
        &server,
        &["session", "close", "--token", FULL, "--session", &bob],
    );
    assert!(done, "{said}");
    let (status, body) = act(&server, Method::DELETE, &ids[1], None, None).await;
    assert_eq!(status, 200, "{body}");

    // A session left idle lapses (ADMIN_SESSION_IDLE=2s here): then another opens it.
    let (status, body) = open_session(&server, json!({"operator": "bob"})).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["idle_secs"], 2);
    let (status, _) = open_session(&server, json!({"operator": "alice"})).await;
    assert_eq!(status, 409);
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let (status, body) = open_session(&server, json!({"operator": "alice"})).await;
    assert_eq!(status, 201, "{body}");
    assert!(body.get("took_over").is_none(), "{body}");

    // Bad input changes nothing: a name too long, an unknown field.
    for bad in [
        json!({"operator": "x".repeat(65)}),
        json!({"operator": "carol", "force": true}),
        json!({"operator": "a\u{7}b"}),
    ] {
        let (status, body) = open_session(&server, bad.clone()).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (400, Some("VALIDATION_ERROR")),
            "{bad}: {body}"
        );
    }
    let (_, body) = act(&server, Method::GET, session, None, None).await;
    assert_eq!(body["operator"], "alice", "{body}");
    // Refusals are the operators' errors: not at WARN in the server's log.
    let log = server.log();
    assert!(
        !log.lines()
            .any(|l| l.contains("SESSION_HELD") && l.contains("WARN")),
        "{log}"
    );
}
