//! Helpers for the end-to-end tests: start real back offices (on SQLite or on a fresh
//! PostgreSQL database) and license servers as child processes, and talk to them over HTTP.
//!
//! The binaries must be built first (`cargo build --bins`; the test script does it).

pub mod browser;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

/// `target/debug` (or whichever profile the test binary was built in).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test-binary>, or target/<profile>/<tool> for the load tools.
    let dir = exe.parent().expect("exe has a directory");
    if dir.ends_with("deps") {
        dir.parent().expect("target/<profile>").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// The path of a workspace binary, which must have been built.
pub fn binary(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is not built; run `cargo build --bins` first (scripts/test does)",
        p.display()
    );
    p
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The storage backends every storage test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// SQLite always; PostgreSQL when `TEST_POSTGRES_URL` names a server. In CI a missing
/// PostgreSQL fails the run instead of skipping.
pub fn backends() -> Vec<Backend> {
    let mut v = vec![Backend::Sqlite];
    if std::env::var("TEST_POSTGRES_URL").is_ok_and(|u| !u.is_empty()) {
        v.push(Backend::Postgres);
    } else if std::env::var("CI").is_ok_and(|c| c == "true" || c == "1") {
        panic!("CI must run the storage tests on PostgreSQL too: set TEST_POSTGRES_URL");
    } else {
        eprintln!("note: TEST_POSTGRES_URL unset, PostgreSQL runs skipped (scripts/test sets it)");
    }
    v
}

/// A PostgreSQL database of its own for one test, dropped afterwards.
pub struct PgDatabase {
    admin_url: String,
    name: String,
    pub url: String,
}

impl PgDatabase {
    pub fn create() -> Result<PgDatabase> {
        use diesel::{Connection, PgConnection, RunQueryDsl};
        let admin_url = std::env::var("TEST_POSTGRES_URL").context("TEST_POSTGRES_URL")?;
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let mut c = PgConnection::establish(&admin_url)?;
        diesel::sql_query(format!("CREATE DATABASE {name}")).execute(&mut c)?;
        let (base, _) = admin_url
            .rsplit_once('/')
            .context("TEST_POSTGRES_URL ends with /DATABASE")?;
        let url = format!("{base}/{name}");
        Ok(PgDatabase {
            admin_url,
            name,
            url,
        })
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        use diesel::{Connection, PgConnection, RunQueryDsl};
        if let Ok(mut c) = PgConnection::establish(&self.admin_url) {
            let _ = diesel::sql_query(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .execute(&mut c);
        }
    }
}

/// A child process killed when dropped.
pub struct Process {
    pub child: Child,
    pub name: String,
    pub log: PathBuf,
}

impl Process {
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Result<Process> {
        let out = std::fs::File::create(&log)?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        Ok(Process {
            child,
            name: name.to_owned(),
            log,
        })
    }

    /// kill -9.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait up to 10 s, then kill -9.
    pub fn stop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `f` until it returns `Some` or `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub const ADMIN_EMAIL: &str = "admin@example.com";
pub const ADMIN_PASSWORD: &str = "correct horse battery";

/// A running back office.
pub struct BackOffice {
    pub process: Process,
    pub url: String,
    pub data_dir: PathBuf,
    pub backend: Backend,
    _tmp: Option<tempfile::TempDir>,
    _pg: Option<PgDatabase>,
    database_url: String,
    port: u16,
    extra_env: Vec<(String, String)>,
    pub http: reqwest::Client,
}

impl BackOffice {
    /// Starts a back office on a fresh database of `backend`.
    pub async fn start(backend: Backend) -> Result<BackOffice> {
        Self::start_with(backend, &[]).await
    }

    /// Starts one with extra settings (e.g. `POLL_INTERVAL`).
    pub async fn start_with(backend: Backend, env: &[(&str, &str)]) -> Result<BackOffice> {
        let tmp = tempfile::tempdir()?;
        let data_dir = tmp.path().to_path_buf();
        // The back office's data is for its owner only (it warns and fixes otherwise).
        std::fs::set_permissions(
            &data_dir,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )?;
        let (pg, database_url) = match backend {
            Backend::Sqlite => (
                None,
                format!("sqlite://{}", data_dir.join("bo.db").display()),
            ),
            Backend::Postgres => {
                let db = PgDatabase::create()?;
                let url = db.url.clone();
                (Some(db), url)
            }
        };
        let port = free_port();
        let extra_env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let process = Self::spawn(&data_dir, &database_url, port, &extra_env)?;
        let bo = BackOffice {
            process,
            url: format!("http://127.0.0.1:{port}"),
            data_dir,
            backend,
            _tmp: Some(tmp),
            _pg: pg,
            database_url,
            port,
            extra_env,
            http: reqwest::Client::new(),
        };
        bo.wait_ready().await?;
        Ok(bo)
    }

    fn spawn(
        data_dir: &Path,
        database_url: &str,
        port: u16,
        env: &[(String, String)],
    ) -> Result<Process> {
        let mut cmd = Command::new(binary("backoffice"));
        cmd.arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .env("LISTEN", format!("127.0.0.1:{port}"))
            .env("DATA_DIR", data_dir)
            .env("DATABASE_URL", database_url)
            .env("ADMIN_EMAIL", ADMIN_EMAIL)
            .env("ADMIN_PASSWORD", ADMIN_PASSWORD)
            .env("WORKERS", "2");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let log = data_dir.join(format!("backoffice-{}.log", uuid::Uuid::new_v4().simple()));
        Process::spawn("backoffice", cmd, log)
    }

    async fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = self.http.get(format!("{}/healthz", self.url)).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if let Ok(Some(status)) = self.process.child.try_wait_ref() {
                bail!(
                    "back office exited ({status}):\n{}",
                    self.process.log_text()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "back office not ready in 30 s:\n{}",
                    self.process.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the process (SIGTERM), keeping its data.
    pub fn stop(&mut self) {
        self.process.stop();
    }

    /// kill -9, keeping its data.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts it again on the same data and port.
    pub async fn restart(&mut self) -> Result<()> {
        self.process.kill();
        self.process = Self::spawn(
            &self.data_dir,
            &self.database_url,
            self.port,
            &self.extra_env,
        )?;
        self.wait_ready().await
    }

    pub fn public_key_path(&self) -> PathBuf {
        self.data_dir.join("signing-key.pub.pem")
    }

    /// Where its database is.
    pub fn database_url(&self) -> &str {
        &self.database_url
    }

    /// The process ID.
    pub fn pid(&self) -> u32 {
        self.process.child.id()
    }

    /// Its resident memory, in KiB (from /proc).
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// What it has logged so far.
    pub fn log_text(&self) -> String {
        self.process.log_text()
    }

    /// Runs `backoffice ARGS…` with this back office's settings (e.g. `admin add`), to the
    /// end; returns its status, stdout and stderr.
    pub fn command(&self, args: &[&str]) -> Result<std::process::Output> {
        let mut cmd = Command::new(binary("backoffice"));
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .env("DATA_DIR", &self.data_dir)
            .env("DATABASE_URL", &self.database_url)
            .env("ADMIN_EMAIL", ADMIN_EMAIL)
            .env("ADMIN_PASSWORD", ADMIN_PASSWORD);
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
        }
        Ok(cmd.stdin(Stdio::null()).output()?)
    }

    pub fn public_key_pem(&self) -> String {
        std::fs::read_to_string(self.public_key_path()).expect("public key file")
    }

    /// Its public key as clients hold it: the producer's key every grant is verified with.
    pub fn producer(&self) -> shared::signing::Verifier {
        shared::signing::Verifier::from_public_pem(&self.public_key_pem()).expect("an Ed25519 key")
    }

    /// Signs in and returns the bearer token.
    pub async fn login(&self, email: &str, password: &str) -> Result<String> {
        let r: Value = self
            .http
            .post(format!("{}/api/v1/auth/login", self.url))
            .json(&json!({"email": email, "password": password}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(r["token"].as_str().context("token")?.to_owned())
    }

    pub async fn admin(&self) -> Result<Api> {
        Ok(Api {
            base: self.url.clone(),
            token: self.login(ADMIN_EMAIL, ADMIN_PASSWORD).await?,
            http: self.http.clone(),
        })
    }

    /// Sets up what most tests need: a product with `features`, an account with a user,
    /// an entitlement with one line item of `quantity`, and a device token.
    pub async fn fixture(&self, features: &[&str], quantity: i64) -> Result<Fixture> {
        let admin = self.admin().await?;
        let feats: Vec<Value> = features
            .iter()
            .map(|f| json!({"name": f, "version": "1.0"}))
            .collect();
        let product = admin
            .post("/api/v1/products", json!({"name": format!("Suite {}", uuid::Uuid::new_v4().simple()), "version": "1", "features": feats}))
            .await?
            .ok()?;
        let account = admin
            .post(
                "/api/v1/accounts",
                json!({"name": format!("Acme {}", uuid::Uuid::new_v4().simple())}),
            )
            .await?
            .ok()?;
        let account_id = account["id"].as_str().context("account id")?.to_owned();
        let email = format!("user-{}@example.com", uuid::Uuid::new_v4().simple());
        admin
            .post(
                &format!("/api/v1/accounts/{account_id}/users"),
                json!({"email": email, "password": ADMIN_PASSWORD}),
            )
            .await?
            .ok()?;
        let ent = admin
            .post(
                &format!("/api/v1/accounts/{account_id}/entitlements"),
                json!({"name": "Order 1", "line_items": [{"product_id": product["id"], "quantity": quantity}]}),
            )
            .await?
            .ok()?;
        let activation_id = ent["line_items"][0]["activation_id"]
            .as_str()
            .context("activation id")?
            .to_owned();
        let token = admin
            .post(
                &format!("/api/v1/accounts/{account_id}/device-tokens"),
                json!({"name": "servers"}),
            )
            .await?
            .ok()?;
        let user = Api {
            base: self.url.clone(),
            token: self.login(&email, ADMIN_PASSWORD).await?,
            http: self.http.clone(),
        };
        Ok(Fixture {
            admin,
            user,
            user_email: email,
            account_id,
            product_id: product["id"].as_str().context("product id")?.to_owned(),
            activation_id,
            device_token: token["token"].as_str().context("device token")?.to_owned(),
        })
    }
}

trait TryWaitRef {
    fn try_wait_ref(&self) -> std::io::Result<Option<std::process::ExitStatus>>;
}

impl TryWaitRef for Child {
    fn try_wait_ref(&self) -> std::io::Result<Option<std::process::ExitStatus>> {
        // Child::try_wait needs &mut; /proc tells whether the process is gone.
        let alive = Path::new(&format!("/proc/{}", self.id())).exists()
            && !std::fs::read_to_string(format!("/proc/{}/stat", self.id()))
                .map(|s| s.split_whitespace().nth(2) == Some("Z"))
                .unwrap_or(true);
        if alive {
            Ok(None)
        } else {
            use std::os::unix::process::ExitStatusExt;
            Ok(Some(std::process::ExitStatus::from_raw(0)))
        }
    }
}

/// What [`BackOffice::fixture`] made.
pub struct Fixture {
    pub admin: Api,
    pub user: Api,
    pub user_email: String,
    pub account_id: String,
    pub product_id: String,
    pub activation_id: String,
    pub device_token: String,
}

/// An authenticated JSON client.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub token: String,
    pub http: reqwest::Client,
}

/// A response: status and JSON body (Null when empty).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Reply {
    /// The body, or an error naming the status and body.
    pub fn ok(self) -> Result<Value> {
        if (200..300).contains(&self.status) {
            Ok(self.body)
        } else {
            bail!("HTTP {}: {}", self.status, self.body)
        }
    }

    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }
}

impl Api {
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Reply> {
        let mut rb = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let r = rb.send().await?;
        let status = r.status().as_u16();
        let text = r.text().await?;
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Ok(Reply { status, body })
    }

    pub async fn get(&self, path: &str) -> Result<Reply> {
        self.send(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Result<Reply> {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Result<Reply> {
        self.send(reqwest::Method::DELETE, path, None).await
    }
}

/// A capability request body as a license server sends it.
pub fn capability_request(
    hostid: &str,
    role: &str,
    backup: Option<&str>,
    rights: &[(&str, u32)],
) -> Value {
    let mut v = json!({
        "request_id": uuid::Uuid::new_v4(),
        "hostid": hostid,
        "role": role,
        "sent_at": shared::now_unix(),
    });
    if let Some(b) = backup {
        v["backup_hostid"] = json!(b);
    }
    if !rights.is_empty() {
        v["rights"] = rights
            .iter()
            .map(|(a, c)| json!({"activation_id": a, "count": c}))
            .collect();
    }
    v
}

impl BackOffice {
    /// Sends a capability request with a device token.
    pub async fn capability(&self, device_token: &str, body: &Value) -> Result<Reply> {
        Api {
            base: self.url.clone(),
            token: device_token.to_owned(),
            http: self.http.clone(),
        }
        .post("/api/v1/capability", body.clone())
        .await
    }
}

/// A running license server (the real binary), restartable on the same data and port.
pub struct LicenseServer {
    pub process: Process,
    pub name: String,
    pub url: String,
    pub port: u16,
    pub data_dir: PathBuf,
    env: Vec<(String, String)>,
}

impl LicenseServer {
    /// Starts `license-server serve` on `port` with `DATA_DIR=data_dir` and `env`, and
    /// waits until it answers.
    pub async fn start(
        name: &str,
        data_dir: &Path,
        port: u16,
        env: &[(String, String)],
    ) -> Result<LicenseServer> {
        let mut s = LicenseServer {
            process: Self::spawn(name, data_dir, port, env)?,
            name: name.to_owned(),
            url: format!("http://127.0.0.1:{port}"),
            port,
            data_dir: data_dir.to_owned(),
            env: env.to_vec(),
        };
        s.wait_ready().await?;
        Ok(s)
    }

    fn spawn(name: &str, data_dir: &Path, port: u16, env: &[(String, String)]) -> Result<Process> {
        std::fs::create_dir_all(data_dir)?;
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
        let log = data_dir.with_extension(format!("{}.log", uuid::Uuid::new_v4().simple()));
        Process::spawn(name, cmd, log)
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = http.get(format!("{}/healthz", self.url)).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if let Ok(Some(status)) = self.process.child.try_wait() {
                bail!(
                    "{} exited ({status}):\n{}",
                    self.name,
                    self.process.log_text()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{} not ready in 30 s:\n{}",
                    self.name,
                    self.process.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// kill -9: no chance to flush or say goodbye.
    pub fn kill9(&mut self) {
        self.process.kill();
    }

    /// Starts it again on the same data, port and settings.
    pub async fn restart(&mut self) -> Result<()> {
        self.process.kill();
        self.process = Self::spawn(&self.name, &self.data_dir, self.port, &self.env)?;
        self.wait_ready().await
    }

    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("admin.token"))
            .map(|t| t.trim().to_owned())
            .unwrap_or_default()
    }

    /// `GET /api/v1/status`.
    pub async fn status(&self) -> Result<Value> {
        Ok(reqwest::Client::new()
            .get(format!("{}/api/v1/status", self.url))
            .timeout(Duration::from_secs(5))
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

    pub fn log_text(&self) -> String {
        self.process.log_text()
    }
}

/// The leases of `feature` held by the license server at `url` (operator API); usable
/// from a task that does not own the server.
pub async fn leases_at(url: &str, admin_token: &str, feature: &str) -> Result<Vec<Value>> {
    let v: Value = reqwest::Client::new()
        .get(format!("{url}/api/v1/admin/features/{feature}/leases"))
        .bearer_auth(admin_token)
        .timeout(Duration::from_secs(5))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(v.as_array().cloned().unwrap_or_default())
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
    /// overrides or adds settings on both servers.
    pub fn new(
        bo: &BackOffice,
        fx: &Fixture,
        count: u32,
        extra: &[(&str, &str)],
    ) -> Result<PairSetup> {
        let tmp = tempfile::tempdir()?;
        let (main_port, backup_port) = (free_port(), free_port());
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
        let with = |mut env: Vec<(String, String)>, more: &[(&str, String)]| {
            for (k, v) in more
                .iter()
                .map(|(k, v)| (*k, v.clone()))
                .chain(extra.iter().map(|(k, v)| (*k, (*v).to_owned())))
            {
                env.retain(|(ek, _)| ek != k);
                env.push((k.to_owned(), v));
            }
            env
        };
        let main_env = with(
            common.clone(),
            &[
                ("HOSTID", main_hostid.clone()),
                ("BACKUP_SERVER_HOSTID", backup_hostid.clone()),
                (
                    "LICENSING_BACKUP_URI",
                    format!("http://127.0.0.1:{backup_port}"),
                ),
                ("RIGHTS_IDS", format!("{}:{count}", fx.activation_id)),
            ],
        );
        let backup_env = with(
            common,
            &[
                ("HOSTID", backup_hostid.clone()),
                (
                    "LICENSING_MAIN_URI",
                    format!("http://127.0.0.1:{main_port}"),
                ),
            ],
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

/// The last `n` lines of a log.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A TCP proxy on loopback whose link the test can cut and heal (the link between a
/// main and its backup).
pub struct Proxy {
    pub port: u16,
    cut: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Forwards `127.0.0.1:<port>` to `127.0.0.1:<target>`.
    pub async fn start(target: u16) -> Result<Proxy> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let cut = std::sync::Arc::new(tokio::sync::watch::Sender::new(false));
        let c = cut.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if *c.borrow() {
                    continue; // dropped: the peer sees the connection closed
                }
                let mut rx = c.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                    else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = rx.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        Ok(Proxy { port, cut, task })
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Cuts every connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    pub fn heal(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A checkout of one seat of `feature` for `client_id`.
pub fn checkout_request(feature: &str, client_id: &str) -> shared::lease::CheckoutRequest {
    shared::lease::CheckoutRequest {
        feature: feature.to_owned(),
        version: None,
        count: 1,
        client_id: client_id.to_owned(),
        client_secret: None,
    }
}
