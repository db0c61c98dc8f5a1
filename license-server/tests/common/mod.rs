//! The license server's tests use the workspace's test kit (the `tests` crate): the real
//! `license-server` binary on a port of its own, the fake back office with its
//! misbehaviour modes, certificates made in the test, one `eventually`. These are the
//! names they know it by.

use std::path::Path;

pub use tests::eventually as wait_for;
pub use tests::fake_backoffice::{FakeBackoffice, FakeBackoffice as TestBackoffice, Mode, right};
pub use tests::license_server::{LicenseServer, feature, get_json, http, with};

/// Certificates made in the test.
pub mod tls {
    pub use tests::tls::TestCa;
}

/// The settings of a license server `hostid` polling `bo`.
pub fn base_env(bo: &FakeBackoffice, hostid: &str) -> Vec<(String, String)> {
    bo.server_env(hostid)
}

/// A running `license-server serve` on a port of its own (see
/// [`tests::license_server::LicenseServer`], which it derefs to).
pub struct Server(LicenseServer);

impl Server {
    /// Starts it with `DATA_DIR=data_dir` and `env` (`LISTEN` in `env` picks the port),
    /// and waits until it answers; panics with its log if it does not.
    pub async fn start(data_dir: &Path, env: Vec<(String, String)>) -> Server {
        let port = env
            .iter()
            .find(|(k, _)| k == "LISTEN")
            .and_then(|(_, v)| v.rsplit_once(':')?.1.parse().ok())
            .unwrap_or(0);
        let env: Vec<_> = env.into_iter().filter(|(k, _)| k != "LISTEN").collect();
        match LicenseServer::builder(data_dir)
            .port(port)
            .envs(&env)
            .start()
            .await
        {
            Ok(s) => Server(s),
            Err(e) => panic!("{e:#}"),
        }
    }

    /// Everything it logged.
    pub fn log(&self) -> String {
        self.0.log_text()
    }

    /// SIGTERM and its exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.0
            .terminate()
            .expect("the license server exits within 10 s of SIGTERM")
    }
}

impl std::ops::Deref for Server {
    type Target = LicenseServer;
    fn deref(&self) -> &LicenseServer {
        &self.0
    }
}

impl std::ops::DerefMut for Server {
    fn deref_mut(&mut self) -> &mut LicenseServer {
        &mut self.0
    }
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

/// Returns `lease` (a checkout's answer) on `server` with its token; the HTTP status.
pub async fn give_back(server: &Server, lease: &serde_json::Value) -> u16 {
    let id = lease["lease_id"].as_str().unwrap();
    http()
        .delete(server.url(&format!("/api/v1/leases/{id}")))
        .bearer_auth(lease["token"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
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

/// Runs `license-server serve` with only `env` on `data` to its end (a refused start);
/// its stderr.
pub fn refused_start(env: &[(String, String)], data: &Path) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_license-server"))
        .arg("serve")
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("DATA_DIR", data)
        .env("LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!out.status.success(), "the server started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}
