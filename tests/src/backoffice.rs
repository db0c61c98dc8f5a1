//! The real back office, two ways:
//!
//! - **in-process** (the default, [`BackOffice::start`]): `backoffice::Application::build` on
//!   port 0 in a thread of its own with its own actix runtime, as a test of an API or a
//!   page needs it — no binary to build, no process to start;
//! - **as its binary** ([`Builder::process`]), where the process is the point: its log,
//!   its memory, kill -9, a signal, its start refusing bad settings.
//!
//! Either runs on a fresh SQLite file or a PostgreSQL database of its own, optionally over
//! HTTPS; [`BackOffice::fixture`] sets up what most tests need through the API.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::postgres::{Backend, PgDatabase};
use crate::process::{Process, binary, log_beside, tail};
use crate::tls::ServerCert;

pub const ADMIN_EMAIL: &str = "admin@example.com";
pub const ADMIN_PASSWORD: &str = "correct horse battery";

/// What starts a back office; see [`BackOffice::builder`].
#[derive(Debug, Clone)]
pub struct Builder {
    backend: Backend,
    env: Vec<(String, String)>,
    process: bool,
    ca: Option<PathBuf>,
}

impl Builder {
    /// A setting (replacing an earlier value of the same name).
    pub fn env(mut self, name: &str, value: impl Into<String>) -> Builder {
        self.env.retain(|(k, _)| k != name);
        self.env.push((name.to_owned(), value.into()));
        self
    }

    /// Several settings.
    pub fn envs(mut self, env: &[(&str, &str)]) -> Builder {
        for (k, v) in env {
            self = self.env(k, *v);
        }
        self
    }

    /// Serves HTTPS with `cert` (`TLS_CERT`, `TLS_KEY`); the test's clients trust `ca`.
    pub fn tls(self, cert: &ServerCert, ca: &Path) -> Builder {
        let mut b = self
            .env("TLS_CERT", cert.cert.display().to_string())
            .env("TLS_KEY", cert.key.display().to_string());
        b.ca = Some(ca.to_owned());
        b
    }

    /// Runs the `backoffice` binary as a child process instead.
    pub fn process(mut self) -> Builder {
        self.process = true;
        self
    }

    /// Starts it and waits until it answers `/healthz`.
    pub async fn start(self) -> Result<BackOffice> {
        let tmp = tempfile::tempdir()?;
        let data_dir = tmp.path().join("data");
        let (pg, database_url) = match self.backend {
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
        let https = self.env.iter().any(|(k, _)| k == "TLS_CERT");
        let mut http = reqwest::Client::builder().timeout(Duration::from_secs(30));
        if let Some(ca) = &self.ca {
            let pem = std::fs::read(ca)?;
            http = http.tls_certs_merge(licensing_client::ca_certificates(&pem)?);
        }
        let mut bo = BackOffice {
            runner: Runner::Stopped,
            url: String::new(),
            data_dir,
            backend: self.backend,
            database_url,
            port: 0,
            https,
            env: self.env,
            in_process: !self.process,
            http: http.build()?,
            _pg: pg,
            _tmp: tmp,
        };
        bo.run().await?;
        Ok(bo)
    }
}

enum Runner {
    Stopped,
    InProcess(InProcess),
    Child(Process),
}

/// A back office running in a thread of this process.
struct InProcess {
    handle: ServerHandle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl InProcess {
    /// Builds the application in a thread of its own (its own actix runtime, its own
    /// workers), and returns once it listens, with its port.
    async fn start(settings: backoffice::Settings) -> Result<(InProcess, u16)> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("backoffice".into())
            .spawn(move || {
                actix_web::rt::System::new().block_on(async move {
                    match backoffice::Application::build(settings).await {
                        Ok(app) => {
                            let _ = tx.send(Ok((app.handle(), app.port())));
                            let _ = app.run_until_stopped().await;
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                        }
                    }
                });
            })?;
        let (handle, port) = rx.await.context("the back office's thread ended")??;
        Ok((
            InProcess {
                handle,
                thread: Some(thread),
            },
            port,
        ))
    }

    /// Stops serving, closes its connections and waits for its thread (and so for its
    /// database) to be done.
    fn stop(&mut self) {
        drop(self.handle.stop(false));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A running back office (stopped when dropped).
pub struct BackOffice {
    runner: Runner,
    /// `http://127.0.0.1:PORT` (`https://` when it serves TLS).
    pub url: String,
    pub data_dir: PathBuf,
    pub backend: Backend,
    database_url: String,
    port: u16,
    https: bool,
    env: Vec<(String, String)>,
    in_process: bool,
    /// A client for it (trusting its CA when it serves HTTPS).
    pub http: reqwest::Client,
    _pg: Option<PgDatabase>,
    _tmp: tempfile::TempDir,
}

impl BackOffice {
    /// In-process, on a fresh database of `backend`.
    pub async fn start(backend: Backend) -> Result<BackOffice> {
        Self::builder(backend).start().await
    }

    /// In-process with extra settings (e.g. `POLL_INTERVAL`).
    pub async fn start_with(backend: Backend, env: &[(&str, &str)]) -> Result<BackOffice> {
        Self::builder(backend).envs(env).start().await
    }

    /// The binary as a child process, with extra settings.
    pub async fn start_process(backend: Backend, env: &[(&str, &str)]) -> Result<BackOffice> {
        Self::builder(backend).envs(env).process().start().await
    }

    pub fn builder(backend: Backend) -> Builder {
        Builder {
            backend,
            env: Vec::new(),
            process: false,
            ca: None,
        }
    }

    /// The settings every test back office has, then the test's own.
    fn settings(&self) -> Vec<(String, String)> {
        let mut all: Vec<(String, String)> = [
            ("LISTEN", format!("127.0.0.1:{}", self.port)),
            ("DATA_DIR", self.data_dir.display().to_string()),
            ("DATABASE_URL", self.database_url.clone()),
            ("ADMIN_EMAIL", ADMIN_EMAIL.to_owned()),
            ("ADMIN_PASSWORD", ADMIN_PASSWORD.to_owned()),
            ("WORKERS", "2".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        for (k, v) in &self.env {
            all.retain(|(ak, _)| ak != k);
            all.push((k.clone(), v.clone()));
        }
        all
    }

    /// Starts it (again, on the same data and port once it has one).
    async fn run(&mut self) -> Result<()> {
        if self.in_process {
            let mut raw = backoffice::config::Raw::new();
            for (k, v) in self.settings() {
                // RUST_LOG and the like belong to a process.
                if let Some(name) = backoffice::config::NAMES.iter().find(|n| **n == k) {
                    raw.insert(name, v);
                }
            }
            let settings = backoffice::Settings::from_raw(&raw)?;
            let (app, port) = InProcess::start(settings).await?;
            self.port = port;
            self.runner = Runner::InProcess(app);
        } else {
            if self.port == 0 {
                self.port = crate::free_port();
            }
            let mut cmd = Command::new(binary("backoffice"));
            cmd.arg("serve")
                .env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .env("RUST_LOG", "info");
            for (k, v) in self.settings() {
                cmd.env(k, v);
            }
            let log = log_beside(&self.data_dir, "backoffice");
            self.runner = Runner::Child(Process::spawn("backoffice", cmd, log)?);
        }
        let scheme = if self.https { "https" } else { "http" };
        self.url = format!("{scheme}://127.0.0.1:{}", self.port);
        self.wait_ready().await
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = self.http.get(format!("{}/healthz", self.url)).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if let Runner::Child(p) = &mut self.runner
                && let Some(status) = p.exited()
            {
                bail!(
                    "back office exited ({status}):\n{}",
                    tail(&p.log_text(), 60)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "back office not ready in 30 s:\n{}",
                    tail(&self.log_text(), 60)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Another back office on the same database with the same signing key (the production
    /// shape on PostgreSQL: several processes behind a load balancer), with this one's
    /// settings and `env`; a process when this one is. Its data directory is its own.
    pub async fn sibling(&self, env: &[(&str, &str)]) -> Result<BackOffice> {
        let tmp = tempfile::tempdir()?;
        let mut settings = self.env.clone();
        settings.retain(|(k, _)| k != "SIGNING_KEY");
        settings.push((
            "SIGNING_KEY".to_owned(),
            self.data_dir.join("signing-key.pem").display().to_string(),
        ));
        let mut bo = BackOffice {
            runner: Runner::Stopped,
            url: String::new(),
            data_dir: tmp.path().join("data"),
            backend: self.backend,
            database_url: self.database_url.clone(),
            port: 0,
            https: self.https,
            env: settings,
            in_process: self.in_process,
            http: self.http.clone(),
            _pg: None,
            _tmp: tmp,
        };
        for (k, v) in env {
            bo.env.retain(|(ek, _)| ek != k);
            bo.env.push(((*k).to_owned(), (*v).to_owned()));
        }
        bo.run().await?;
        Ok(bo)
    }

    /// Its process; what needs one panics on an in-process back office, saying so.
    pub fn process(&self) -> &Process {
        match &self.runner {
            Runner::Child(p) => p,
            _ => panic!("this needs the back office as a process: start it with .process()"),
        }
    }

    /// Stops it (SIGTERM for a process), keeping its data.
    pub fn stop(&mut self) {
        match std::mem::replace(&mut self.runner, Runner::Stopped) {
            Runner::Child(mut p) => p.stop(),
            Runner::InProcess(mut app) => app.stop(),
            Runner::Stopped => {}
        }
    }

    /// kill -9 (a process only), keeping its data.
    pub fn kill(&mut self) {
        match &mut self.runner {
            Runner::Child(p) => p.kill(),
            _ => panic!("kill -9 needs the back office as a process: start it with .process()"),
        }
    }

    /// Stops it and starts it again on the same data and port.
    pub async fn restart(&mut self) -> Result<()> {
        if let Runner::Child(p) = &mut self.runner {
            p.kill();
        }
        self.stop();
        self.run().await
    }

    pub fn public_key_path(&self) -> PathBuf {
        self.data_dir.join("signing-key.pub.pem")
    }

    pub fn public_key_pem(&self) -> String {
        std::fs::read_to_string(self.public_key_path()).expect("public key file")
    }

    /// Its public key as clients hold it: the producer's key every grant is verified with.
    pub fn producer(&self) -> shared::signing::Verifier {
        shared::signing::Verifier::from_public_pem(&self.public_key_pem()).expect("an Ed25519 key")
    }

    /// Where its database is.
    pub fn database_url(&self) -> &str {
        &self.database_url
    }

    /// The process ID (a process only).
    pub fn pid(&self) -> u32 {
        self.process().pid()
    }

    /// Its resident memory in KiB (a process only).
    pub fn rss_kib(&self) -> Option<u64> {
        self.process().rss_kib()
    }

    /// What it has logged so far (a process only; in-process, logs go to the test's own
    /// subscriber, if any).
    pub fn log_text(&self) -> String {
        match &self.runner {
            Runner::Child(p) => p.log_text(),
            _ => String::new(),
        }
    }

    /// Runs `backoffice ARGS…` (e.g. `admin add`) with this back office's settings, to
    /// the end; its status, stdout and stderr.
    pub fn command(&self, args: &[&str]) -> Result<std::process::Output> {
        let mut cmd = Command::new(binary("backoffice"));
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "info");
        for (k, v) in self.settings() {
            cmd.env(k, v);
        }
        Ok(cmd.stdin(std::process::Stdio::null()).output()?)
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

    /// The first administrator, signed in.
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
        let tag = || uuid::Uuid::new_v4().simple().to_string();
        let product = admin
            .post(
                "/api/v1/products",
                json!({"name": format!("Suite {}", tag()), "version": "1", "features": feats}),
            )
            .await?
            .ok()?;
        let account = admin
            .post(
                "/api/v1/accounts",
                json!({"name": format!("Acme {}", tag())}),
            )
            .await?
            .ok()?;
        let account_id = account["id"].as_str().context("account id")?.to_owned();
        let email = format!("user-{}@example.com", tag());
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

impl Drop for BackOffice {
    fn drop(&mut self) {
        // Before its database goes.
        self.stop();
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

impl Fixture {
    /// The account API's usage intervals of server `server_id` (and its pair partner or
    /// cluster members); `None` when it does not answer them.
    pub async fn usage_intervals(&self, server_id: &str) -> Option<Value> {
        self.user
            .get(&format!(
                "/api/v1/account/servers/{server_id}/usage-intervals"
            ))
            .await
            .ok()?
            .ok()
            .ok()
    }

    /// Changes the fixture's line item through the producer API (`PATCH`, the fields of
    /// `change`); the line item as it is now.
    pub async fn patch_line_item(&self, change: Value) -> Result<Value> {
        let ents = self
            .admin
            .get(&format!(
                "/api/v1/accounts/{}/entitlements",
                self.account_id
            ))
            .await?
            .ok()?;
        let ent = ents[0]["id"].as_str().context("entitlement")?;
        let item = ents[0]["line_items"][0]["id"]
            .as_str()
            .context("line item")?;
        self.admin
            .patch(
                &format!(
                    "/api/v1/accounts/{}/entitlements/{ent}/line-items/{item}",
                    self.account_id
                ),
                change,
            )
            .await?
            .ok()
    }

    /// The back office's ID of the account's server `hostid` (the account API's list).
    pub async fn server_id(&self, hostid: &str) -> Result<String> {
        let servers = self.user.get("/api/v1/account/servers").await?.ok()?;
        Ok(servers
            .as_array()
            .context("servers")?
            .iter()
            .find(|s| s["hostid"] == hostid)
            .and_then(|s| s["id"].as_str())
            .with_context(|| format!("{hostid} is not among the account's servers"))?
            .to_owned())
    }

    /// Adds an entitlement with one line item of the fixture's product, `quantity` seats
    /// ending at `expires_at` (Unix seconds; `None`: permanent); its activation ID.
    pub async fn add_line_item(&self, quantity: i64, expires_at: Option<i64>) -> Result<String> {
        let ent = self
            .admin
            .post(
                &format!("/api/v1/accounts/{}/entitlements", self.account_id),
                json!({"name": "Another order", "line_items": [
                    {"product_id": self.product_id, "quantity": quantity, "expires_at": expires_at}
                ]}),
            )
            .await?
            .ok()?;
        Ok(ent["line_items"][0]["activation_id"]
            .as_str()
            .context("activation id")?
            .to_owned())
    }
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

    pub async fn patch(&self, path: &str, body: Value) -> Result<Reply> {
        self.send(reqwest::Method::PATCH, path, Some(body)).await
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
