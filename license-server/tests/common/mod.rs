//! Test harness: a small but real back office (axum, signs real capability claims with
//! `shared::signing::Signer`) and the real `license-server` binary as a child process.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use shared::capability::{
    CapabilityClaims, CapabilityRequest, CapabilityResponse, ISSUER, Right, Role,
};
use shared::signing::{Signer, generate_keypair};
use shared::{ErrorBody, ErrorCode};

pub const BO_TOKEN: &str = "bo-secret-token";

/// How the test back office answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Normal,
    /// Signed with a key the license server does not trust.
    WrongKey,
    /// Addressed to another hostid.
    WrongHostid,
    /// Issued two hours ago, expired an hour ago.
    Stale,
    /// The last good answer again (bound to an earlier request ID).
    Replay,
    /// `MAIN_NOT_REGISTERED` to backups.
    MainNotRegistered,
}

pub struct BoState {
    signer: Signer,
    wrong_signer: Signer,
    pub rights: Mutex<Vec<Right>>,
    pub mode: Mutex<Mode>,
    pub poll_secs: u64,
    pub requests: Mutex<Vec<CapabilityRequest>>,
    last_good: Mutex<Option<String>>,
}

pub struct TestBackoffice {
    pub url: String,
    pub public_key: PathBuf,
    pub state: Arc<BoState>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

pub fn right(feature: &str, count: u32) -> Right {
    Right {
        activation_id: format!("ACT-{feature}"),
        feature: feature.into(),
        version: "1.0".into(),
        count,
        starts_at: 0,
        expires_at: None,
    }
}

async fn capability(
    State(bo): State<Arc<BoState>>,
    headers: HeaderMap,
    Json(req): Json<CapabilityRequest>,
) -> Response {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if auth != format!("Bearer {BO_TOKEN}") {
        return (
            StatusCode::UNAUTHORIZED,
            Json(ErrorBody::new(ErrorCode::Unauthorized, "bad server token")),
        )
            .into_response();
    }
    bo.requests.lock().unwrap().push(req.clone());
    let mode = *bo.mode.lock().unwrap();
    if mode == Mode::MainNotRegistered && req.role == Role::Backup {
        return (
            StatusCode::CONFLICT,
            Json(ErrorBody::new(
                ErrorCode::MainNotRegistered,
                "start the main first",
            )),
        )
            .into_response();
    }
    let now = shared::now_unix();
    let mut claims = CapabilityClaims {
        iss: ISSUER.into(),
        sub: req.hostid.to_string(),
        request_id: req.request_id,
        iat: now,
        exp: now + 300,
        server_id: "srv-1".into(),
        role: req.role,
        pair: None,
        poll_interval_secs: bo.poll_secs,
        rights: bo.rights.lock().unwrap().clone(),
        serve_until: now + 30 * 86_400,
        binding: None,
        pair_token: None,
    };
    match mode {
        Mode::WrongHostid => claims.sub = "string:somebody-else".into(),
        Mode::Stale => {
            claims.iat = now - 7200;
            claims.exp = now - 3600;
        }
        _ => {}
    }
    let token = if mode == Mode::WrongKey {
        bo.wrong_signer.sign(&claims)
    } else {
        bo.signer.sign(&claims)
    };
    let token = match mode {
        Mode::Replay => bo.last_good.lock().unwrap().clone().unwrap_or(token),
        Mode::Normal | Mode::MainNotRegistered => {
            *bo.last_good.lock().unwrap() = Some(token.clone());
            token
        }
        _ => token,
    };
    Json(CapabilityResponse { token }).into_response()
}

impl TestBackoffice {
    pub async fn start(rights: Vec<Right>) -> TestBackoffice {
        let dir = tempfile::tempdir().unwrap();
        let (private, public) = generate_keypair();
        let (wrong_private, _) = generate_keypair();
        let public_key = dir.path().join("backoffice.pub.pem");
        std::fs::write(&public_key, public).unwrap();
        let state = Arc::new(BoState {
            signer: Signer::from_pem(&private).unwrap(),
            wrong_signer: Signer::from_pem(&wrong_private).unwrap(),
            rights: Mutex::new(rights),
            mode: Mutex::new(Mode::Normal),
            poll_secs: 1,
            requests: Mutex::new(Vec::new()),
            last_good: Mutex::new(None),
        });
        let app = axum::Router::new()
            .route("/api/v1/capability", axum::routing::post(capability))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        TestBackoffice {
            url,
            public_key,
            state,
            stop: Some(stop),
            task: Some(task),
            _dir: dir,
        }
    }

    pub fn set_rights(&self, rights: Vec<Right>) {
        *self.state.rights.lock().unwrap() = rights;
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    pub fn request_count(&self) -> usize {
        self.state.requests.lock().unwrap().len()
    }

    /// Stops listening and closes every connection.
    pub async fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }
}

/// A running `license-server serve`.
pub struct Server {
    child: Child,
    pub url: String,
    pub data_dir: PathBuf,
    pub env: Vec<(String, String)>,
}

pub fn base_env(bo: &TestBackoffice, hostid: &str) -> Vec<(String, String)> {
    [
        ("HOSTID", hostid),
        ("BACKOFFICE_URL", bo.url.as_str()),
        ("BACKOFFICE_TOKEN", BO_TOKEN),
        ("BACKOFFICE_PUBLIC_KEY", bo.public_key.to_str().unwrap()),
        ("CAPABILITY_POLL_INTERVAL", "300ms"),
        ("BACKOFF_MAX", "500ms"),
        ("LEASE_DURATION", "60s"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

pub fn with(mut env: Vec<(String, String)>, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    for (k, v) in extra {
        env.retain(|(ek, _)| ek != k);
        env.push((k.to_string(), v.to_string()));
    }
    env
}

impl Server {
    pub async fn start(data_dir: &Path, env: Vec<(String, String)>) -> Server {
        std::fs::create_dir_all(data_dir).unwrap();
        let addr_file = data_dir.join("listen.addr");
        let _ = std::fs::remove_file(&addr_file);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.with_extension("log"))
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_license-server"));
        cmd.arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .env("LISTEN", "127.0.0.1:0")
            .env("DATA_DIR", data_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start license-server");
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr = loop {
            if let Ok(s) = std::fs::read_to_string(&addr_file)
                && s.ends_with('\n')
            {
                break s.trim().to_owned();
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "license-server exited with {status}; log:\n{}",
                    std::fs::read_to_string(data_dir.with_extension("log")).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "license-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        Server {
            child,
            url: format!("http://{addr}"),
            data_dir: data_dir.to_owned(),
            env,
        }
    }

    /// SIGKILL, no chance to flush anything.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.with_extension("log")).unwrap_or_default()
    }

    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("admin.token"))
            .unwrap()
            .trim()
            .to_owned()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        self.child.wait().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

pub async fn get_json(url: &str) -> serde_json::Value {
    http().get(url).send().await.unwrap().json().await.unwrap()
}

/// `count` of a feature in `GET /api/v1/features`, `None` if absent.
pub async fn feature(server: &Server, name: &str) -> Option<serde_json::Value> {
    let v = get_json(&server.url("/api/v1/features")).await;
    v.as_array()?.iter().find(|f| f["feature"] == name).cloned()
}

pub async fn checkout(server: &Server, feature: &str, client: &str) -> (u16, serde_json::Value) {
    let resp = http()
        .post(server.url("/api/v1/leases"))
        .json(&serde_json::json!({"feature": feature, "client_id": client}))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(serde_json::Value::Null))
}
