//! License servers as their real binary (`license-server serve`), one child process each:
//! [`LicenseServer::builder`] starts one on a port of its own (port 0, read back from
//! `DATA_DIR/listen.addr`) or on a given one, waits until it answers, and restarts it on
//! the same data and port; [`PairSetup`] makes the settings of a main and its backup
//! against a back office; and a few calls every test makes (status, features, checkout,
//! the operator's lease list, an operator command).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::backoffice::{BackOffice, Fixture};
use crate::process::{Process, binary, log_beside, tail};

/// What starts a license server; see [`LicenseServer::builder`].
#[derive(Debug, Clone)]
pub struct Builder {
    name: String,
    data_dir: PathBuf,
    port: u16,
    env: Vec<(String, String)>,
}

impl Builder {
    /// Its name in logs and messages (default `license-server`).
    pub fn name(mut self, name: &str) -> Builder {
        self.name = name.to_owned();
        self
    }

    /// The port to listen on (default 0: any free one).
    pub fn port(mut self, port: u16) -> Builder {
        self.port = port;
        self
    }

    /// A setting (replacing an earlier value of the same name).
    pub fn env(mut self, name: &str, value: impl Into<String>) -> Builder {
        self.env.retain(|(k, _)| k != name);
        self.env.push((name.to_owned(), value.into()));
        self
    }

    /// Several settings.
    pub fn envs<K: AsRef<str>, V: AsRef<str>>(mut self, env: &[(K, V)]) -> Builder {
        for (k, v) in env {
            self = self.env(k.as_ref(), v.as_ref());
        }
        self
    }

    /// Starts it and waits until it answers `/healthz`.
    pub async fn start(self) -> Result<LicenseServer> {
        let https = self.env.iter().any(|(k, _)| k == "TLS_CERT");
        let mut s = LicenseServer {
            process: spawn(&self.name, &self.data_dir, self.port, &self.env)?,
            url: String::new(),
            port: self.port,
            name: self.name,
            data_dir: self.data_dir,
            env: self.env,
            https,
        };
        s.wait_ready().await?;
        Ok(s)
    }
}

/// A running `license-server serve`, killed when dropped.
pub struct LicenseServer {
    pub process: Process,
    pub name: String,
    /// `http://127.0.0.1:PORT` (`https://` with `TLS_CERT`).
    pub url: String,
    pub port: u16,
    pub data_dir: PathBuf,
    /// Its settings (besides `LISTEN` and `DATA_DIR`).
    pub env: Vec<(String, String)>,
    https: bool,
}

fn spawn(name: &str, data_dir: &Path, port: u16, env: &[(String, String)]) -> Result<Process> {
    std::fs::create_dir_all(data_dir)?;
    let _ = std::fs::remove_file(data_dir.join("listen.addr"));
    let mut cmd = Command::new(binary("license-server"));
    cmd.arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .env("LISTEN", format!("127.0.0.1:{port}"))
        .env("DATA_DIR", data_dir);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Process::spawn(name, cmd, log_beside(data_dir, "license-server"))
}

impl LicenseServer {
    /// A license server `hostid` of `fx`'s account, polling `bo` with its device token
    /// and trusting its key; more settings to add.
    pub fn of_account(bo: &BackOffice, fx: &Fixture, data_dir: &Path, hostid: &str) -> Builder {
        Self::builder(data_dir)
            .env("HOSTID", hostid)
            .env("BACKOFFICE_URL", bo.url.clone())
            .env("BACKOFFICE_TOKEN", fx.device_token.clone())
            .env(
                "BACKOFFICE_PUBLIC_KEY",
                bo.public_key_path().display().to_string(),
            )
    }

    /// A license server keeping its state in `data_dir`.
    pub fn builder(data_dir: &Path) -> Builder {
        Builder {
            name: "license-server".to_owned(),
            data_dir: data_dir.to_owned(),
            port: 0,
            env: Vec::new(),
        }
    }

    /// Starts `name` on `port` (0: any) with `DATA_DIR=data_dir` and `env`.
    pub async fn start(
        name: &str,
        data_dir: &Path,
        port: u16,
        env: &[(String, String)],
    ) -> Result<LicenseServer> {
        Self::builder(data_dir)
            .name(name)
            .port(port)
            .envs(env)
            .start()
            .await
    }

    /// Waits for the address it bound (`DATA_DIR/listen.addr`), then for `/healthz`.
    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr_file = self.data_dir.join("listen.addr");
        let addr = loop {
            if let Ok(s) = std::fs::read_to_string(&addr_file)
                && s.ends_with('\n')
            {
                break s.trim().to_owned();
            }
            self.check_alive(deadline)?;
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let (scheme, port) = (
            if self.https { "https" } else { "http" },
            addr.rsplit_once(':').and_then(|(_, p)| p.parse().ok()),
        );
        self.port = port.unwrap_or(self.port);
        self.url = format!("{scheme}://{addr}");
        if self.https {
            // Its certificate is the test's to trust; the address is enough.
            return Ok(());
        }
        let http = reqwest::Client::new();
        loop {
            if let Ok(r) = http.get(self.url("/healthz")).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            self.check_alive(deadline)?;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn check_alive(&mut self, deadline: Instant) -> Result<()> {
        if let Some(status) = self.process.exited() {
            bail!(
                "{} exited ({status}):\n{}",
                self.name,
                tail(&self.log_text(), 60)
            );
        }
        if Instant::now() > deadline {
            bail!(
                "{} not ready in 30 s:\n{}",
                self.name,
                tail(&self.log_text(), 60)
            );
        }
        Ok(())
    }

    /// `self.url` followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// kill -9: no chance to flush or say goodbye.
    pub fn kill9(&mut self) {
        self.process.kill();
    }

    /// SIGTERM, and its exit status (`None`: it had to be killed after 10 s).
    pub fn terminate(&mut self) -> Option<ExitStatus> {
        self.process.terminate(Duration::from_secs(10))
    }

    /// kill -9, then the same binary again on the same data, port and settings.
    pub async fn restart(&mut self) -> Result<()> {
        self.process.kill();
        self.process = spawn(&self.name, &self.data_dir, self.port, &self.env)?;
        self.wait_ready().await
    }

    /// Its full operator token: `ADMIN_TOKEN` when set, else the one it made
    /// (`DATA_DIR/admin.token`).
    pub fn admin_token(&self) -> String {
        if let Some((_, t)) = self.env.iter().find(|(k, _)| k == "ADMIN_TOKEN") {
            return t.clone();
        }
        std::fs::read_to_string(self.data_dir.join("admin.token"))
            .map(|t| t.trim().to_owned())
            .unwrap_or_default()
    }

    /// Everything it logged, over all its runs.
    pub fn log_text(&self) -> String {
        self.process.log_text()
    }

    /// `GET /api/v1/status`.
    pub async fn status(&self) -> Result<Value> {
        Ok(http()
            .get(self.url("/api/v1/status"))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    /// The pair status this server reports (`None` when it does not answer).
    pub async fn pair_status(&self) -> Option<String> {
        let s = self.status().await.ok()?;
        s["pair_status"].as_str().map(str::to_owned)
    }

    /// The leases of `feature` as this server holds them (operator API).
    pub async fn leases(&self, feature: &str) -> Result<Vec<Value>> {
        leases_at(&self.url, &self.admin_token(), feature).await
    }

    /// Runs an operator command against it, `license-server ARGS --url URL`, in an
    /// environment holding no token or data directory (`args` name them when they mean
    /// to).
    pub fn operator(&self, args: &[&str]) -> Result<std::process::Output> {
        Ok(Command::new(binary("license-server"))
            .args(args)
            .args(["--url", &self.url])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .current_dir(self.data_dir.parent().unwrap_or(Path::new("/")))
            .output()?)
    }
}

/// An HTTP client with a 10 s timeout.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("an HTTP client")
}

/// `GET url` as JSON (`Null` when it is not).
pub async fn get_json(url: &str) -> Value {
    match http().get(url).send().await {
        Ok(r) => r.json().await.unwrap_or(Value::Null),
        Err(_) => Value::Null,
    }
}

/// `feature` as `GET /api/v1/features` lists it, `None` if absent.
pub async fn feature(server: &LicenseServer, name: &str) -> Option<Value> {
    let v = get_json(&server.url("/api/v1/features")).await;
    v.as_array()?.iter().find(|f| f["feature"] == name).cloned()
}

/// One seat of `feature` for `client`: the status and the answer's JSON.
pub async fn checkout(server: &LicenseServer, feature: &str, client: &str) -> (u16, Value) {
    let resp = http()
        .post(server.url("/api/v1/leases"))
        .json(&json!({"feature": feature, "client_id": client}))
        .send()
        .await
        .expect("the license server answers");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// `env` with `extra` set (replacing earlier values of the same names).
pub fn with(mut env: Vec<(String, String)>, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    for (k, v) in extra {
        env.retain(|(ek, _)| ek != k);
        env.push(((*k).to_owned(), (*v).to_owned()));
    }
    env
}

/// The leases of `feature` held by the license server at `url` (operator API); usable
/// from a task that does not own the server.
pub async fn leases_at(url: &str, admin_token: &str, feature: &str) -> Result<Vec<Value>> {
    let v = admin_get(url, admin_token, &format!("features/{feature}/leases")).await?;
    Ok(v.as_array().cloned().unwrap_or_default())
}

/// `GET {url}/api/v1/admin/{path}` with the operator token, as JSON.
async fn admin_get(url: &str, admin_token: &str, path: &str) -> Result<Value> {
    Ok(http()
        .get(format!("{url}/api/v1/admin/{path}"))
        .bearer_auth(admin_token)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}

/// Seats of `feature` a server holds by its own lease list; `None` when it does not answer.
pub async fn seats_held(url: &str, admin_token: &str, feature: &str) -> Option<u32> {
    let leases = leases_at(url, admin_token, feature).await.ok()?;
    Some(
        leases
            .iter()
            .map(|l| l["count"].as_u64().unwrap_or(0) as u32)
            .sum(),
    )
}

/// The clients in line for `feature` at the server at `url`, in order (operator API:
/// the admin usage, each `{queue_id, client_id, position, ...}`).
pub async fn queue_at(url: &str, admin_token: &str, feature: &str) -> Result<Vec<Value>> {
    let v = admin_get(url, admin_token, "usage").await?;
    let mut out: Vec<Value> = Vec::new();
    for pool in v.as_array().into_iter().flatten() {
        for q in pool["queued"].as_array().into_iter().flatten() {
            if q["feature"] == feature && !out.iter().any(|o| o["queue_id"] == q["queue_id"]) {
                out.push(q.clone());
            }
        }
    }
    out.sort_by_key(|q| q["position"].as_u64());
    Ok(out)
}

/// The client IDs of a line, in order.
pub fn queued_clients(line: &[Value]) -> Vec<String> {
    line.iter()
        .filter_map(|q| q["client_id"].as_str().map(str::to_owned))
        .collect()
}

/// The lease IDs of a lease list.
pub fn lease_ids(list: &[Value]) -> std::collections::HashSet<String> {
    list.iter()
        .filter_map(|l| l["lease_id"].as_str().map(str::to_owned))
        .collect()
}

/// The settings of a license server `hostid` polling `bo` with `fx`'s device token.
pub fn server_env(bo: &BackOffice, fx: &Fixture, hostid: &str) -> Vec<(String, String)> {
    [
        ("HOSTID", hostid.to_owned()),
        ("BACKOFFICE_URL", bo.url.clone()),
        ("BACKOFFICE_TOKEN", fx.device_token.clone()),
        (
            "BACKOFFICE_PUBLIC_KEY",
            bo.public_key_path().display().to_string(),
        ),
        ("CAPABILITY_POLL_INTERVAL", "500ms".into()),
        ("BACKOFF_MAX", "500ms".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// A main and its backup, started from a back office fixture.
pub struct PairSetup {
    pub tmp: tempfile::TempDir,
    pub main_port: u16,
    pub backup_port: u16,
    pub main_hostid: String,
    pub backup_hostid: String,
    pub main_env: Vec<(String, String)>,
    pub backup_env: Vec<(String, String)>,
}

impl PairSetup {
    /// Settings for a pair serving `count` seats of the fixture's line item; `extra`
    /// overrides or adds settings on both servers. Each names the other's port, so both
    /// ports are chosen here.
    pub fn new(
        bo: &BackOffice,
        fx: &Fixture,
        count: u32,
        extra: &[(&str, &str)],
    ) -> Result<PairSetup> {
        let tmp = tempfile::tempdir()?;
        let (main_port, backup_port) = (crate::free_port(), crate::free_port());
        let tag = uuid::Uuid::new_v4().simple().to_string();
        let main_hostid = format!("string:main-{}", &tag[..8]);
        let backup_hostid = format!("string:backup-{}", &tag[..8]);
        let common: Vec<(String, String)> = [
            ("BACKOFFICE_URL", bo.url.clone()),
            ("BACKOFFICE_TOKEN", fx.device_token.clone()),
            (
                "BACKOFFICE_PUBLIC_KEY",
                bo.public_key_path().display().to_string(),
            ),
            ("CAPABILITY_POLL_INTERVAL", "1s".to_owned()),
            ("BACKOFF_MAX", "500ms".to_owned()),
            ("LEASE_DURATION", "60s".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let main_env = with(
            with(
                common.clone(),
                &[
                    ("HOSTID", &main_hostid),
                    ("BACKUP_SERVER_HOSTID", &backup_hostid),
                    (
                        "LICENSING_BACKUP_URI",
                        &format!("http://127.0.0.1:{backup_port}"),
                    ),
                    ("RIGHTS_IDS", &format!("{}:{count}", fx.activation_id)),
                ],
            ),
            extra,
        );
        let backup_env = with(
            with(
                common,
                &[
                    ("HOSTID", &backup_hostid),
                    (
                        "LICENSING_MAIN_URI",
                        &format!("http://127.0.0.1:{main_port}"),
                    ),
                ],
            ),
            extra,
        );
        Ok(PairSetup {
            tmp,
            main_port,
            backup_port,
            main_hostid,
            backup_hostid,
            main_env,
            backup_env,
        })
    }

    pub async fn start_main(&self) -> Result<LicenseServer> {
        LicenseServer::start(
            "main",
            &self.tmp.path().join("main"),
            self.main_port,
            &self.main_env,
        )
        .await
    }

    pub async fn start_backup(&self) -> Result<LicenseServer> {
        LicenseServer::start(
            "backup",
            &self.tmp.path().join("backup"),
            self.backup_port,
            &self.backup_env,
        )
        .await
    }
}

/// Waits until both servers report the pair `paired_available`.
pub async fn wait_paired(
    main: &LicenseServer,
    backup: &LicenseServer,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let (m, b) = (main.pair_status().await, backup.pair_status().await);
        if m.as_deref() == Some("paired_available") && b.as_deref() == Some("paired_available") {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "not paired_available after {timeout:?}: main {m:?}, backup {b:?}\n--- main log ---\n{}\n--- backup log ---\n{}",
                tail(&main.log_text(), 40),
                tail(&backup.log_text(), 40)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (up to 30 s) until the line of `feature` at `url` is exactly `clients`, in that
/// order.
pub async fn line_is(url: &str, token: &str, feature: &str, clients: &[&str]) {
    crate::eventually(
        std::time::Duration::from_secs(30),
        &format!("the line {clients:?} of {feature} at {url}"),
        || async {
            let line = queue_at(url, token, feature).await.ok()?;
            (queued_clients(&line) == clients).then_some(())
        },
    )
    .await;
}

/// The lease a client waiting in line in `task` was granted (within 30 s).
pub async fn granted(
    task: &mut tokio::task::JoinHandle<Result<shared::lease::Lease, licensing_client::ClientError>>,
    who: &str,
) -> Result<shared::lease::Lease> {
    tokio::time::timeout(std::time::Duration::from_secs(30), task)
        .await
        .with_context(|| format!("{who} was not granted a seat"))??
        .with_context(|| format!("{who}'s wait in line"))
}

/// Fails, saying what the task ended with (a lease, or its error), if a client that must
/// still be waiting in line in `task` is not.
pub async fn still_waiting(
    task: &mut tokio::task::JoinHandle<Result<shared::lease::Lease, licensing_client::ClientError>>,
    what: &str,
) -> Result<()> {
    if task.is_finished() {
        match task.await? {
            Ok(lease) => anyhow::bail!(
                "{what}: granted {} by {:?}",
                lease.lease_id,
                lease.served_by
            ),
            Err(e) => anyhow::bail!("{what}: its wait ended with an error: {e}"),
        }
    }
    Ok(())
}

/// Seats of `feature` held at `server`, which must be at most `count`.
pub async fn within_count(server: &LicenseServer, feature: &str, count: u32) -> Result<u32> {
    let leases = match leases_at(&server.url, &server.admin_token(), feature).await {
        Ok(leases) => leases,
        Err(e) => {
            // A server that does not answer: where are its threads?
            let stacks = server.process.stacks().unwrap_or_default();
            anyhow::bail!(
                "{}'s lease list: {e:#}\n{}\n{stacks}",
                server.name,
                crate::process::tail(&server.process.log_text(), 40)
            );
        }
    };
    let held: u32 = leases
        .iter()
        .map(|l| l["count"].as_u64().unwrap_or(0) as u32)
        .sum();
    anyhow::ensure!(
        held <= count,
        "{held} seats held of {count} at {}",
        server.name
    );
    Ok(held)
}
