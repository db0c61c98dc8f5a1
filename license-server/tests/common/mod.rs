//! Test harness: a small but real back office ([`backoffice`]), certificates made in the
//! test ([`tls`]), and the real `license-server` binary as a child process.

pub mod backoffice;
pub mod tls;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use backoffice::{FakeBackoffice, Mode, right};
use shared::capability::Right;

pub const BO_TOKEN: &str = "bo-secret-token";

/// The fake back office in a directory of its own.
pub struct TestBackoffice {
    bo: FakeBackoffice,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for TestBackoffice {
    type Target = FakeBackoffice;
    fn deref(&self) -> &FakeBackoffice {
        &self.bo
    }
}

impl std::ops::DerefMut for TestBackoffice {
    fn deref_mut(&mut self) -> &mut FakeBackoffice {
        &mut self.bo
    }
}

impl TestBackoffice {
    /// Its public key: the producer's key clients verify grants with.
    pub fn producer(&self) -> shared::signing::Verifier {
        let pem = std::fs::read_to_string(&self.public_key).unwrap();
        shared::signing::Verifier::from_public_pem(&pem).unwrap()
    }

    pub async fn start(rights: Vec<Right>) -> TestBackoffice {
        Self::start_with(rights, None)
    }

    /// Over HTTPS with this certificate and key.
    pub async fn start_tls(rights: Vec<Right>, cert: &Path, key: &Path) -> TestBackoffice {
        Self::start_with(rights, Some((cert, key)))
    }

    fn start_with(rights: Vec<Right>, tls: Option<(&Path, &Path)>) -> TestBackoffice {
        let dir = tempfile::tempdir().unwrap();
        let bo = FakeBackoffice::start("127.0.0.1:0", dir.path(), rights, BO_TOKEN, 1, tls)
            .expect("start the test back office");
        TestBackoffice { bo, _dir: dir }
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
        let scheme = if env.iter().any(|(k, _)| k == "TLS_CERT") {
            "https"
        } else {
            "http"
        };
        Server {
            child,
            url: format!("{scheme}://{addr}"),
            data_dir: data_dir.to_owned(),
            env,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
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

/// `GET url` with `Authorization: Bearer token`, as JSON (`Null` when it is not JSON).
pub async fn get_json_as(url: &str, token: &str) -> serde_json::Value {
    let r = http().get(url).bearer_auth(token).send().await.unwrap();
    r.json().await.unwrap_or_default()
}

/// The leases of `feature` on `server`, from its operator API.
pub async fn leases_of(server: &Server, feature: &str) -> serde_json::Value {
    get_json_as(
        &server.url(&format!("/api/v1/admin/features/{feature}/leases")),
        &server.admin_token(),
    )
    .await
}

/// `count` of a feature in `GET /api/v1/features`, `None` if absent.
pub async fn feature(server: &Server, name: &str) -> Option<serde_json::Value> {
    let v = get_json(&server.url("/api/v1/features")).await;
    v.as_array()?.iter().find(|f| f["feature"] == name).cloned()
}

/// `token` with its claims edited by `edit`, its header and signature kept: what anyone
/// who can write a file or send a message can make of a signed answer.
pub fn edited_token(token: &str, edit: impl FnOnce(&mut serde_json::Value)) -> String {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let parts: Vec<&str> = token.split('.').collect();
    let mut claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    edit(&mut claims);
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap());
    format!("{}.{payload}.{}", parts[0], parts[2])
}

/// Sets the count of every right in a capability answer's claims.
pub fn set_counts(claims: &mut serde_json::Value, count: u64) {
    for r in claims["rights"].as_array_mut().unwrap() {
        r["count"] = count.into();
    }
}

/// The secret the tests' client `client` checks out with.
pub fn secret_of(client: &str) -> String {
    format!("{client}/secret-only-it-knows")
}

/// A checkout of one seat by `client` with its own secret (so that the same client gets
/// its lease back).
pub async fn checkout(server: &Server, feature: &str, client: &str) -> (u16, serde_json::Value) {
    let resp = http()
        .post(server.url("/api/v1/leases"))
        .json(&serde_json::json!({
            "feature": feature,
            "client_id": client,
            "client_secret": secret_of(client),
        }))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(serde_json::Value::Null))
}

/// Renews `lease` (a checkout's answer) on `server` with its token; the HTTP status.
pub async fn renew(server: &Server, lease: &serde_json::Value) -> u16 {
    let id = lease["lease_id"].as_str().unwrap();
    http()
        .put(server.url(&format!("/api/v1/leases/{id}")))
        .bearer_auth(lease["token"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}
