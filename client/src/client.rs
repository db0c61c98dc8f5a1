//! The client: servers in order of preference, checkouts whose grants are verified with
//! the producer's key, renewals and returns, and the guard that renews a lease in the
//! background and returns it when dropped.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::Method;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use shared::grant::{Expected, GrantError, VerifiedGrant, verify_grant};
use shared::lease::{
    CheckoutRequest, ClientSecret, FeatureInfo, Lease, QUEUE_POLL_SECS, QueuePlace,
};
use shared::signing::Verifier;
use shared::{ErrorBody, ErrorCode};

/// How far the client's clock may differ from the servers' and the back office's when a
/// grant's times are checked, by default.
pub const DEFAULT_CLOCK_LEEWAY: Duration = Duration::from_secs(60);

/// Why a request to the license servers gave no (trusted) answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The server answered with a contract error (`NO_LICENSE_AVAILABLE`, …).
    #[error("{body} (HTTP {status})")]
    Api {
        /// The HTTP status of the answer.
        status: u16,
        /// The contract's error: its code, a message for a person and the details.
        body: ErrorBody,
    },
    /// No server could be reached.
    #[error("no license server answered: {0}")]
    Transport(String),
    /// Bad input on the client side or an answer that makes no sense.
    #[error("{0}")]
    Invalid(String),
    /// A lease whose grant does not verify with the producer's key: not granted by a
    /// license server the back office bound (a fake server, or one whose binding is
    /// missing or expired). The lease is not used.
    #[error("refused the lease from {server}: {reason}")]
    Untrusted {
        /// The URL of the server that sent the lease.
        server: String,
        /// What did not verify.
        reason: String,
    },
}

impl ClientError {
    /// Whether another try may succeed: no server answered, or none serves right now
    /// (a takeover or failback under way).
    pub fn is_transient(&self) -> bool {
        matches!(self, ClientError::Transport(_))
            || matches!(
                self.code(),
                Some(ErrorCode::NotServing | ErrorCode::Unavailable)
            )
    }

    /// The contract error code, for API errors.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api { body, .. } => Some(body.code),
            _ => None,
        }
    }

    /// The contract error's body (code, message, details), for API errors.
    pub fn body(&self) -> Option<&ErrorBody> {
        match self {
            ClientError::Api { body, .. } => Some(body),
            _ => None,
        }
    }
}

struct Inner {
    http: reqwest::Client,
    /// Ordered: the preferred server first (as configured; `NOT_SERVING` reorders).
    servers: Mutex<Vec<String>>,
    /// The backup the main last named in a lease answer (`backup_uri`), tried after the
    /// configured servers; replaced when the main names another, removed when it names
    /// none.
    learned_backup: Mutex<Option<String>>,
    /// The cluster's members, as the last cluster member to answer named them; tried
    /// after the configured servers.
    learned_members: Mutex<Vec<String>>,
    client_id: String,
    /// The user and host sent with every checkout that names none (default: the OS's).
    user: Option<String>,
    host: Option<String>,
    /// Sent with every checkout: proves this client holds its leases.
    secret: ClientSecret,
    /// The producer's public key: every grant is verified with it.
    producer: Verifier,
    /// Seconds.
    leeway: i64,
}

/// A handle to one or more license servers. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("servers", &self.servers())
            .field("client_id", &self.inner.client_id)
            .field("user", &self.inner.user)
            .field("host", &self.inner.host)
            .finish()
    }
}

fn default_client_id() -> String {
    let host = os_host().unwrap_or_else(|| "client".to_owned());
    format!("{host}:{}", std::process::id())
}

/// A name the server accepts: 1 to 256 printable characters, no spaces (the options
/// file's names are words).
fn usable(name: String) -> Option<String> {
    let name = name.trim().to_owned();
    (!name.is_empty()
        && name.len() <= 256
        && !name.chars().any(|c| c.is_control() || c.is_whitespace()))
    .then_some(name)
}

/// The host this process runs on: `HOSTNAME`, else `/etc/hostname`.
pub fn os_host() -> Option<String> {
    std::env::var("HOSTNAME").ok().and_then(usable).or_else(|| {
        std::fs::read_to_string("/etc/hostname")
            .ok()
            .and_then(usable)
    })
}

/// The user this process runs as: `USER`, else `LOGNAME`, else `USERNAME` (Windows).
pub fn os_user() -> Option<String> {
    ["USER", "LOGNAME", "USERNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().and_then(usable))
}

/// The certificates of a PEM bundle, to trust besides the system's roots.
pub fn ca_certificates(pem: &[u8]) -> Result<Vec<reqwest::Certificate>, ClientError> {
    let certs = reqwest::Certificate::from_pem_bundle(pem)
        .map_err(|e| ClientError::Invalid(format!("the CA bundle is not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(ClientError::Invalid(
            "the CA bundle holds no CERTIFICATE".into(),
        ));
    }
    Ok(certs)
}

/// An error and its causes in one line, with what to do when a server's certificate was
/// refused.
pub fn describe_error(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let text = inner.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        src = inner.source();
    }
    if s.contains("UnknownIssuer") || s.contains("unknown issuer") {
        s.push_str(
            " (the server's certificate is not issued by a CA this side trusts: \
             give the CA's certificate as the CA bundle)",
        );
    } else if s.contains("NotValidForName") {
        s.push_str(" (the server's certificate does not name the host in the URL)");
    }
    s
}

fn normalise(url: &str) -> Result<String, ClientError> {
    let url = url.trim().trim_end_matches('/');
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(ClientError::Invalid(format!(
            "`{url}` is not a server URL such as http://127.0.0.1:7070"
        )));
    }
    Ok(url.to_owned())
}

/// Servers, trusted CAs and identity of a [`Client`] to build; the producer's key is
/// given first ([`Client::builder`]).
#[derive(Debug)]
pub struct ClientBuilder {
    producer: Verifier,
    servers: Vec<String>,
    ca: Vec<reqwest::Certificate>,
    client_id: Option<String>,
    user: Option<String>,
    host: Option<String>,
    leeway: Duration,
}

impl ClientBuilder {
    /// Adds a server (tried in the order added; the first is preferred).
    pub fn server(mut self, url: impl AsRef<str>) -> Self {
        self.servers.push(url.as_ref().to_owned());
        self
    }

    /// Trusts the certificates of a PEM bundle besides the system's roots (for servers
    /// whose certificates come from a private CA).
    pub fn ca_pem(mut self, pem: &[u8]) -> Result<Self, ClientError> {
        self.ca.extend(ca_certificates(pem)?);
        Ok(self)
    }

    /// This client's identity (default: `hostname:pid`).
    pub fn client_id(mut self, id: impl Into<String>) -> Self {
        self.client_id = Some(id.into());
        self
    }

    /// The user sent with checkouts (default: the OS's, [`os_user`]); what the server's
    /// options file rules (`USER`, `GROUP`) match.
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    /// The host sent with checkouts (default: the OS's host name, [`os_host`]); what the
    /// server's options file rules (`HOST`, `HOST_GROUP`) match.
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }

    /// How far this machine's clock may differ from the servers' when grants are
    /// checked (default [`DEFAULT_CLOCK_LEEWAY`]).
    pub fn clock_leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// The client; fails when no server is named, a URL is not `http://` or `https://`,
    /// or the HTTP client cannot be made.
    pub fn build(self) -> Result<Client, ClientError> {
        let mut servers = Vec::new();
        for u in &self.servers {
            let u = normalise(u)?;
            if !servers.contains(&u) {
                servers.push(u);
            }
        }
        if servers.is_empty() {
            return Err(ClientError::Invalid("name at least one server".into()));
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(3))
            .tls_certs_merge(self.ca)
            .build()
            .map_err(|e| ClientError::Invalid(describe_error(&e)))?;
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                servers: Mutex::new(servers),
                learned_backup: Mutex::new(None),
                learned_members: Mutex::new(Vec::new()),
                client_id: self.client_id.unwrap_or_else(default_client_id),
                user: self.user.or_else(os_user),
                host: self.host.or_else(os_host),
                secret: ClientSecret::random(),
                producer: self.producer,
                leeway: i64::try_from(self.leeway.as_secs()).unwrap_or(i64::MAX),
            }),
        })
    }
}

/// What a request's answer was and which server gave it.
struct Answer<T> {
    body: Option<T>,
    server: String,
    /// The HTTP status (2xx).
    status: u16,
}

impl Client {
    /// One server; grants are verified with `producer`, the producer's public key.
    pub fn new(url: &str, producer: Verifier) -> Result<Client, ClientError> {
        Client::with_servers([url], producer)
    }

    /// An ordered list of servers (the first is preferred); grants are verified with
    /// `producer`.
    pub fn with_servers<I, S>(urls: I, producer: Verifier) -> Result<Client, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        urls.into_iter()
            .fold(Client::builder(producer), |b, u| b.server(u))
            .build()
    }

    /// A client whose grants are verified with `producer` (the producer's public key:
    /// there is no client without it), then servers, CA certificates and identity.
    pub fn builder(producer: Verifier) -> ClientBuilder {
        ClientBuilder {
            producer,
            servers: Vec::new(),
            ca: Vec::new(),
            client_id: None,
            user: None,
            host: None,
            leeway: DEFAULT_CLOCK_LEEWAY,
        }
    }

    /// The same servers and producer key, another client (identity and secret).
    pub fn with_client_id(&self, client_id: impl Into<String>) -> Client {
        Client {
            inner: Arc::new(Inner {
                http: self.inner.http.clone(),
                servers: Mutex::new(self.configured()),
                learned_backup: Mutex::new(self.learned_backup()),
                learned_members: Mutex::new(self.learned_members()),
                client_id: client_id.into(),
                user: self.inner.user.clone(),
                host: self.inner.host.clone(),
                secret: ClientSecret::random(),
                producer: self.inner.producer.clone(),
                leeway: self.inner.leeway,
            }),
        }
    }

    /// This client's identity, sent with every checkout.
    pub fn client_id(&self) -> &str {
        &self.inner.client_id
    }

    /// The servers in the order they are tried: the configured list, then the backup
    /// learned from the main, then the cluster members learned from a member.
    pub fn servers(&self) -> Vec<String> {
        let mut s = self.configured();
        for u in self
            .learned_backup()
            .into_iter()
            .chain(self.learned_members())
        {
            if !s.contains(&u) {
                s.push(u);
            }
        }
        s
    }

    /// The cluster's members as a member last named them (empty outside a cluster).
    pub fn learned_members(&self) -> Vec<String> {
        self.inner
            .learned_members
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn configured(&self) -> Vec<String> {
        self.inner
            .servers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The backup the main last named, if any.
    pub fn learned_backup(&self) -> Option<String> {
        self.inner
            .learned_backup
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Keeps the backup a main names in its answers. An answer from a backup (it names
    /// its main in `main_uri`) changes nothing: the client keeps both.
    fn learn(&self, lease: &Lease) {
        if !lease.members.is_empty() {
            let named: Vec<String> = lease
                .members
                .iter()
                .filter_map(|u| normalise(u).ok())
                .collect();
            let mut m = self
                .inner
                .learned_members
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if *m != named {
                tracing::info!(members = ?named, "learned the cluster's members");
                *m = named;
            }
            return;
        }
        if lease.main_uri.is_some() {
            return;
        }
        let named = lease.backup_uri.as_deref().and_then(|u| normalise(u).ok());
        let mut b = self
            .inner
            .learned_backup
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if *b != named {
            match &named {
                Some(u) => tracing::info!(backup = %u, "learned the backup server's URL"),
                None => tracing::info!("the main names no backup any more"),
            }
            *b = named;
        }
    }

    fn prefer(&self, url: &str) {
        if let Ok(url) = normalise(url) {
            let mut s = self.inner.servers.lock().unwrap_or_else(|e| e.into_inner());
            s.retain(|u| *u != url);
            s.insert(0, url);
        }
    }

    /// Sends to the servers in order (starting with `first` if given) until one answers.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        bearer: Option<&str>,
        first: Option<&str>,
    ) -> Result<Answer<T>, ClientError> {
        self.call_timed(method, path, body, bearer, first, None)
            .await
    }

    /// [`Client::call`], each request allowed `timeout` instead of the client's (a
    /// server that holds the request, as a queued checkout's).
    async fn call_timed<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        bearer: Option<&str>,
        first: Option<&str>,
        timeout: Option<Duration>,
    ) -> Result<Answer<T>, ClientError> {
        let mut order = self.servers();
        if let Some(f) = first.and_then(|f| normalise(f).ok()) {
            order.retain(|u| *u != f);
            order.insert(0, f);
        }
        let mut last_err = None;
        let mut redirected = false;
        let mut i = 0;
        while i < order.len() {
            let base = order[i].clone();
            i += 1;
            let mut req = self
                .inner
                .http
                .request(method.clone(), format!("{base}{path}"));
            if let Some(b) = &body {
                req = req
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(b.clone());
            }
            if let Some(t) = bearer {
                req = req.bearer_auth(t);
            }
            if let Some(t) = timeout {
                req = req.timeout(t);
            }
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) => {
                    let why = describe_error(&e);
                    tracing::debug!(server = %base, error = %why, "license server did not answer");
                    last_err = Some(ClientError::Transport(format!("{base}: {why}")));
                    continue;
                }
            };
            let status = resp.status().as_u16();
            let bytes = match resp.bytes().await {
                Ok(b) => b,
                Err(e) => {
                    last_err = Some(ClientError::Transport(format!(
                        "{base}: {}",
                        describe_error(&e)
                    )));
                    continue;
                }
            };
            if (200..300).contains(&status) {
                if status == 204 || bytes.is_empty() {
                    return Ok(Answer {
                        body: None,
                        server: base,
                        status,
                    });
                }
                return match serde_json::from_slice(&bytes) {
                    Ok(body) => Ok(Answer {
                        body: Some(body),
                        server: base,
                        status,
                    }),
                    Err(e) => Err(ClientError::Invalid(format!(
                        "unexpected answer from {base}: {e}"
                    ))),
                };
            }
            let body = serde_json::from_slice::<ErrorBody>(&bytes).unwrap_or_else(|_| {
                ErrorBody::new(
                    ErrorCode::Unknown,
                    String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned(),
                )
            });
            if body.code == ErrorCode::NotServing
                && let Some(url) = body.serving_url.clone()
                && !redirected
            {
                // Standby server: go where it says, once.
                redirected = true;
                if let Ok(url) = normalise(&url) {
                    self.prefer(&url);
                    // Try it next.
                    if let Some(p) = order.iter().position(|u| *u == url) {
                        order.remove(p);
                        if p < i {
                            i -= 1;
                        }
                    }
                    order.insert(i, url);
                }
                last_err = Some(ClientError::Api { status, body });
                continue;
            }
            if body.code == ErrorCode::Unavailable {
                // Busy or cut off from its cluster: another server may serve.
                tracing::debug!(server = %base, error = %body, "license server unavailable; trying the next");
                last_err = Some(ClientError::Api { status, body });
                continue;
            }
            return Err(ClientError::Api { status, body });
        }
        Err(last_err.unwrap_or_else(|| ClientError::Transport("no server configured".into())))
    }

    /// Every feature of the first server that answers.
    pub async fn features(&self) -> Result<Vec<FeatureInfo>, ClientError> {
        self.call(Method::GET, "/api/v1/features", None, None, None)
            .await?
            .body
            .ok_or_else(|| ClientError::Invalid("empty answer".into()))
    }

    /// Checks out `count` seats of `feature` (any version); the guard renews the lease in
    /// the background and returns it when dropped.
    pub async fn checkout(&self, feature: &str, count: u32) -> Result<LeaseGuard, ClientError> {
        self.checkout_with(self.request(feature, count)).await
    }

    /// A checkout of `count` seats of `feature` (any version) as this client.
    fn request(&self, feature: &str, count: u32) -> CheckoutRequest {
        CheckoutRequest {
            borrow_secs: None,
            queue_secs: None,
            feature: feature.to_owned(),
            version: None,
            count,
            client_id: self.inner.client_id.clone(),
            user: None,
            host: None,
            client_secret: None,
        }
    }

    /// Checks out with a full request (a version, another client ID).
    pub async fn checkout_with(&self, req: CheckoutRequest) -> Result<LeaseGuard, ClientError> {
        let lease = self.checkout_lease(&req).await?;
        Ok(LeaseGuard::new(self.clone(), lease))
    }

    /// Checks out without a guard: the caller renews and returns. A request without a
    /// `client_secret`, `user` or `host` is sent with this client's.
    pub async fn checkout_lease(&self, req: &CheckoutRequest) -> Result<Lease, ClientError> {
        let req = self.completed(req);
        let body = serde_json::to_vec(&req).map_err(|e| ClientError::Invalid(e.to_string()))?;
        let answer: Answer<Lease> = self
            .call(Method::POST, "/api/v1/leases", Some(body), None, None)
            .await?;
        let lease = answer
            .body
            .ok_or_else(|| ClientError::Invalid("empty answer to a checkout".into()))?;
        self.checked_out(&req, lease, &answer.server)
    }

    /// The request with this client's secret, user and host where it names none.
    fn completed(&self, req: &CheckoutRequest) -> CheckoutRequest {
        let mut req = req.clone();
        if req.client_secret.is_none() {
            req.client_secret = Some(self.inner.secret.clone());
        }
        if req.user.is_none() {
            req.user = self.inner.user.clone();
        }
        if req.host.is_none() {
            req.host = self.inner.host.clone();
        }
        req
    }

    /// Checks out `count` seats of `feature` (any version), waiting in line up to `wait`
    /// when none is free: seats go to those in line first come, first served. The guard
    /// renews and returns the lease like [`Client::checkout`]'s. When the wait ends
    /// without a seat the client leaves the line and the error is
    /// `NO_LICENSE_AVAILABLE`. A server that stops answering meanwhile is followed to its
    /// partner, which holds the same line.
    pub async fn checkout_queued(
        &self,
        feature: &str,
        count: u32,
        wait: Duration,
    ) -> Result<LeaseGuard, ClientError> {
        self.checkout_with_queued(self.request(feature, count), wait)
            .await
    }

    /// A guard for a lease checked out without one: it renews the lease in the
    /// background and returns it when dropped.
    pub fn guard(&self, lease: Lease) -> LeaseGuard {
        LeaseGuard::new(self.clone(), lease)
    }

    /// [`Client::checkout_queued`] with a full request (a version, another client ID).
    pub async fn checkout_with_queued(
        &self,
        req: CheckoutRequest,
        wait: Duration,
    ) -> Result<LeaseGuard, ClientError> {
        let lease = self.checkout_lease_queued(&req, wait, |_| {}).await?;
        Ok(LeaseGuard::new(self.clone(), lease))
    }

    /// [`Client::checkout_queued`] with a full request and without a guard; `on_place`
    /// hears every place in line the server answers (the first, then each new look).
    pub async fn checkout_lease_queued(
        &self,
        req: &CheckoutRequest,
        wait: Duration,
        mut on_place: impl FnMut(&QueuePlace),
    ) -> Result<Lease, ClientError> {
        let mut req = self.completed(req);
        let deadline = tokio::time::Instant::now() + wait;
        let mut place: Option<QueuePlace> = None;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(self.gave_up(place.as_ref(), wait).await);
            }
            // Only the time left: a place that lapsed is not taken again for longer.
            req.queue_secs = Some(left.as_secs().max(1));
            let body = serde_json::to_vec(&req).map_err(|e| ClientError::Invalid(e.to_string()))?;
            let answer: Answer<serde_json::Value> = match self
                .call_timed(
                    Method::POST,
                    "/api/v1/leases",
                    Some(body),
                    place.as_ref().map(|p| p.token.as_str()),
                    None,
                    Some(Duration::from_secs(QUEUE_POLL_SECS + 10)),
                )
                .await
            {
                Ok(a) => a,
                // No server serves for a moment (a takeover, a failback): try again.
                Err(e) if place.is_some() && e.is_transient() => {
                    tracing::debug!(error = %e, "no server holds the line now; trying again");
                    tokio::time::sleep(Duration::from_millis(500).min(left)).await;
                    continue;
                }
                // The place lapsed as the wait ended.
                Err(e) if place.is_some() && e.code() == Some(ErrorCode::NoLicenseAvailable) => {
                    return Err(self.gave_up(place.as_ref(), wait).await);
                }
                Err(e) => return Err(e),
            };
            let value = answer
                .body
                .ok_or_else(|| ClientError::Invalid("empty answer to a checkout".into()))?;
            let invalid = |e: serde_json::Error| {
                ClientError::Invalid(format!("unexpected answer from {}: {e}", answer.server))
            };
            if answer.status == 202 {
                let p: QueuePlace = serde_json::from_value(value).map_err(invalid)?;
                on_place(&p);
                place = Some(p);
                continue;
            }
            let lease: Lease = serde_json::from_value(value).map_err(invalid)?;
            return self.checked_out(&req, lease, &answer.server);
        }
    }

    /// Leaves the line after a wait that ended without a seat; the error to return.
    async fn gave_up(&self, place: Option<&QueuePlace>, wait: Duration) -> ClientError {
        let mut message = format!(
            "no license available: waited in line {}s without a free seat",
            wait.as_secs()
        );
        if let Some(p) = place {
            message.push_str(&format!(" (last place: {} of {})", p.position, p.queued));
            let path = format!("/api/v1/queue/{}", p.queue_id);
            if let Err(e) = self
                .call::<serde_json::Value>(Method::DELETE, &path, None, Some(&p.token), None)
                .await
            {
                tracing::debug!(error = %e, "could not leave the line (its place lapses by itself)");
            }
        }
        ClientError::Api {
            status: 409,
            body: ErrorBody::new(ErrorCode::NoLicenseAvailable, message),
        }
    }

    /// A checkout's lease, once its grant verifies and says what was asked.
    fn checked_out(
        &self,
        req: &CheckoutRequest,
        lease: Lease,
        server: &str,
    ) -> Result<Lease, ClientError> {
        let lease = self.verified(
            lease,
            server,
            Expected {
                client_id: &req.client_id,
                lease_id: None,
                feature: &req.feature,
                version: req.version.as_deref(),
                count: req.count,
            },
        )?;
        if req.borrow_secs.is_some() && !lease.borrowed {
            return Err(ClientError::Invalid(format!(
                "{server} answered a borrow with a lease that is not borrowed"
            )));
        }
        self.learn(&lease);
        Ok(lease)
    }

    /// Borrows `count` seats of `feature` (a version, or any) for offline use for
    /// `period`: a lease whose signed grant [`verify_borrowed`] checks later with the
    /// producer's key alone, no server needed. It is not renewed; it ends at its
    /// `expires_at` (the period, or sooner when the server's binding or rights end
    /// sooner), or earlier when given back with [`Client::release`]. Keep it (it holds
    /// the lease token) where only its user reads it.
    pub async fn borrow(
        &self,
        feature: &str,
        version: Option<&str>,
        count: u32,
        period: Duration,
    ) -> Result<Lease, ClientError> {
        self.checkout_lease(&CheckoutRequest {
            feature: feature.to_owned(),
            version: version.map(str::to_owned),
            count,
            client_id: self.inner.client_id.clone(),
            user: None,
            host: None,
            client_secret: None,
            borrow_secs: Some(period.as_secs().max(1)),
            queue_secs: None,
        })
        .await
    }

    /// Renews a lease (at the server that granted it first).
    pub async fn renew(&self, lease: &Lease) -> Result<Lease, ClientError> {
        let path = format!("/api/v1/leases/{}", lease.lease_id);
        let answer: Answer<Lease> = self
            .call(
                Method::PUT,
                &path,
                None,
                Some(&lease.token),
                lease.served_by.as_deref(),
            )
            .await?;
        let new = answer
            .body
            .ok_or_else(|| ClientError::Invalid("empty answer to a renewal".into()))?;
        let new = self.verified(
            new,
            &answer.server,
            Expected {
                client_id: &lease.client_id,
                lease_id: Some(lease.lease_id),
                feature: &lease.feature,
                version: Some(&lease.version),
                count: lease.count,
            },
        )?;
        self.learn(&new);
        Ok(new)
    }

    /// Renews by ID and token (e.g. from a command line): the answer must be a verified
    /// grant of that lease.
    pub async fn renew_by_id(&self, id: Uuid, token: &str) -> Result<Lease, ClientError> {
        let path = format!("/api/v1/leases/{id}");
        let answer: Answer<Lease> = self
            .call(Method::PUT, &path, None, Some(token), None)
            .await?;
        let lease = answer
            .body
            .ok_or_else(|| ClientError::Invalid("empty answer to a renewal".into()))?;
        let (client_id, feature, version) = (
            lease.client_id.clone(),
            lease.feature.clone(),
            lease.version.clone(),
        );
        let count = lease.count;
        self.verified(
            lease,
            &answer.server,
            Expected {
                client_id: &client_id,
                lease_id: Some(id),
                feature: &feature,
                version: Some(&version),
                count,
            },
        )
    }

    /// The lease if its grant verifies with the producer's key and says what the lease
    /// says; [`ClientError::Untrusted`] otherwise.
    fn verified(
        &self,
        lease: Lease,
        server: &str,
        expected: Expected<'_>,
    ) -> Result<Lease, ClientError> {
        let untrusted = |reason: String| {
            tracing::warn!(server, %reason, "refused a lease that does not verify");
            ClientError::Untrusted {
                server: server.to_owned(),
                reason,
            }
        };
        if lease.grant.is_empty() || lease.binding.is_empty() {
            return Err(untrusted(
                "the answer carries no signed grant and binding (not a license server of this \
                 producer, or one too old to sign its grants)"
                    .into(),
            ));
        }
        let v = verify_grant(
            &self.inner.producer,
            &lease.grant,
            &lease.binding,
            &expected,
            shared::now_unix(),
            self.inner.leeway,
        )
        .map_err(|e| untrusted(e.to_string()))?;
        let g = &v.grant;
        let same = g.jti == lease.lease_id
            && g.sub == lease.client_id
            && g.feature == lease.feature
            && g.version == lease.version
            && g.count == lease.count
            && g.exp == lease.expires_at
            && g.borrowed == lease.borrowed;
        if !same {
            return Err(untrusted(
                "the lease's fields differ from what its grant signs".into(),
            ));
        }
        Ok(lease)
    }

    /// Returns a lease.
    pub async fn release(&self, lease: &Lease) -> Result<(), ClientError> {
        let path = format!("/api/v1/leases/{}", lease.lease_id);
        self.call::<serde_json::Value>(
            Method::DELETE,
            &path,
            None,
            Some(&lease.token),
            lease.served_by.as_deref(),
        )
        .await
        .map(|_| ())
    }

    /// Returns a lease by ID and token.
    pub async fn release_by_id(&self, id: Uuid, token: &str) -> Result<(), ClientError> {
        let path = format!("/api/v1/leases/{id}");
        self.call::<serde_json::Value>(Method::DELETE, &path, None, Some(token), None)
            .await
            .map(|_| ())
    }
}

/// Checks a borrowed lease offline, with the producer's public key alone: its grant and
/// binding verify (the chain of trust), the grant is a borrow of this lease, its client,
/// feature, version and count, and it has not ended at `now` (Unix seconds; `leeway`
/// seconds of clock difference allowed).
pub fn verify_borrowed(
    producer: &Verifier,
    lease: &Lease,
    now: i64,
    leeway: i64,
) -> Result<VerifiedGrant, GrantError> {
    let v = verify_grant(
        producer,
        &lease.grant,
        &lease.binding,
        &Expected {
            client_id: &lease.client_id,
            lease_id: Some(lease.lease_id),
            feature: &lease.feature,
            version: Some(&lease.version),
            count: lease.count,
        },
        now,
        leeway,
    )?;
    if !v.grant.borrowed {
        return Err(GrantError::Mismatch(
            "the grant is for online use, not a borrow: it is valid only while renewed".into(),
        ));
    }
    Ok(v)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// How long to wait before renewing: until `renew_after`, but never past half the time
/// left, and at least 200 ms.
pub fn renew_delay(lease: &Lease, now_ms: i64) -> Duration {
    let half_left = (lease.expires_at * 1000 - now_ms) / 2;
    let until_renew = lease.renew_after * 1000 - now_ms;
    let ms = until_renew.min(half_left).max(200);
    Duration::from_millis(ms as u64)
}

/// A checked-out lease, renewed in the background, returned on drop.
pub struct LeaseGuard {
    client: Client,
    lease: Arc<Mutex<Lease>>,
    last_error: Arc<Mutex<Option<ClientError>>>,
    renewer: Option<tokio::task::JoinHandle<()>>,
    released: bool,
}

impl std::fmt::Debug for LeaseGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseGuard")
            .field("lease_id", &self.lease().lease_id)
            .finish()
    }
}

impl LeaseGuard {
    fn new(client: Client, lease: Lease) -> LeaseGuard {
        let lease = Arc::new(Mutex::new(lease));
        let last_error = Arc::new(Mutex::new(None));
        let renewer = tokio::spawn(renew_loop(
            client.clone(),
            lease.clone(),
            last_error.clone(),
        ));
        LeaseGuard {
            client,
            lease,
            last_error,
            renewer: Some(renewer),
            released: false,
        }
    }

    /// The lease as last granted or renewed.
    pub fn lease(&self) -> Lease {
        self.lease.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The last background renewal error, if the last renewal failed.
    pub fn last_error(&self) -> Option<ClientError> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Renews now.
    pub async fn renew(&self) -> Result<Lease, ClientError> {
        let current = self.lease();
        let new = self.client.renew(&current).await?;
        *self.lease.lock().unwrap_or_else(|e| e.into_inner()) = new.clone();
        Ok(new)
    }

    /// Returns the lease and waits for the answer.
    pub async fn release(mut self) -> Result<(), ClientError> {
        if let Some(r) = self.renewer.take() {
            r.abort();
        }
        self.released = true;
        let lease = self.lease();
        self.client.release(&lease).await
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        if let Some(r) = self.renewer.take() {
            r.abort();
        }
        if self.released {
            return;
        }
        let lease = self.lease();
        let client = self.client.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn(async move {
                    if let Err(e) = client.release(&lease).await {
                        tracing::warn!(lease = %lease.lease_id, error = %e, "returning the lease failed; it frees when it expires");
                    }
                });
            }
            Err(_) => tracing::warn!(
                lease = %lease.lease_id,
                "dropped outside a runtime: the lease frees when it expires"
            ),
        }
    }
}

async fn renew_loop(
    client: Client,
    lease: Arc<Mutex<Lease>>,
    last_error: Arc<Mutex<Option<ClientError>>>,
) {
    let mut retry: Option<Duration> = None;
    loop {
        let current = lease.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let wait = retry.unwrap_or_else(|| renew_delay(&current, now_ms()));
        tokio::time::sleep(wait).await;
        match client.renew(&current).await {
            Ok(new) => {
                *lease.lock().unwrap_or_else(|e| e.into_inner()) = new;
                *last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
                retry = None;
            }
            Err(e) => {
                let fatal = matches!(
                    e.code(),
                    Some(ErrorCode::NotFound | ErrorCode::Forbidden | ErrorCode::FeatureExpired)
                );
                tracing::warn!(lease = %current.lease_id, error = %e, fatal, "renewing the lease failed");
                *last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
                if fatal {
                    return;
                }
                retry = Some(Duration::from_millis(500));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(expires_at: i64, renew_after: i64) -> Lease {
        Lease {
            borrowed: false,
            overdraft: false,
            lease_id: Uuid::nil(),
            token: "t".into(),
            feature: "f".into(),
            version: String::new(),
            count: 1,
            client_id: "c".into(),
            user: None,
            host: None,
            granted_at: 0,
            expires_at,
            renew_after,
            served_by: None,
            backup_uri: Some("http://backup:7070/".into()),
            main_uri: None,
            members: Vec::new(),
            grant: String::new(),
            binding: String::new(),
        }
    }

    fn producer() -> Verifier {
        Verifier::from_key(&shared::signing::Signer::generate().verifying_key())
    }

    #[test]
    fn renew_delay_is_before_expiry() {
        // 300 s lease granted now: renew after 150 s.
        assert_eq!(
            renew_delay(&lease(1300, 1150), 1_000_000),
            Duration::from_secs(150)
        );
        // Short lease: never later than half the time left, never below 200 ms.
        assert_eq!(
            renew_delay(&lease(1002, 1001), 1_000_000),
            Duration::from_millis(1000)
        );
        assert_eq!(
            renew_delay(&lease(1000, 1000), 1_000_000),
            Duration::from_millis(200)
        );
    }

    #[test]
    fn servers_are_ordered_and_learned() {
        let c =
            Client::with_servers(["http://a:1/", "http://b:2", "http://a:1"], producer()).unwrap();
        assert_eq!(c.servers(), vec!["http://a:1", "http://b:2"]);
        c.learn(&lease(0, 0));
        assert_eq!(c.servers().last().unwrap(), "http://backup:7070");
        // A new backup address replaces the old one; an answer from the backup keeps it;
        // a main that names no backup removes it.
        let mut moved = lease(0, 0);
        moved.backup_uri = Some("http://backup2:7070".into());
        c.learn(&moved);
        assert_eq!(c.learned_backup().as_deref(), Some("http://backup2:7070"));
        assert!(!c.servers().contains(&"http://backup:7070".to_owned()));
        let mut from_backup = lease(0, 0);
        from_backup.backup_uri = None;
        from_backup.main_uri = Some("http://a:1".into());
        c.learn(&from_backup);
        assert_eq!(c.learned_backup().as_deref(), Some("http://backup2:7070"));
        let mut dropped = lease(0, 0);
        dropped.backup_uri = None;
        c.learn(&dropped);
        assert_eq!(c.learned_backup(), None);
        c.learn(&lease(0, 0));
        c.prefer("http://b:2");
        assert_eq!(c.servers()[0], "http://b:2");
        assert!(Client::new("ftp://x", producer()).is_err());
        let d = c.with_client_id("me");
        assert_eq!(d.client_id(), "me");
    }

    #[test]
    fn cluster_members_are_learned_and_tried_after_the_configured_servers() {
        let c = Client::new("http://a:1", producer()).unwrap();
        let mut l = lease(0, 0);
        l.backup_uri = None;
        l.members = vec![
            "http://a:1/".into(),
            "http://b:2".into(),
            "http://c:3".into(),
        ];
        c.learn(&l);
        assert_eq!(c.servers(), vec!["http://a:1", "http://b:2", "http://c:3"]);
        // A member's answer without members (never sent by one) keeps them; a clone
        // for another client identity keeps them too.
        assert_eq!(c.with_client_id("x").learned_members().len(), 3);
        c.prefer("http://c:3");
        assert_eq!(c.servers()[0], "http://c:3");
    }

    #[tokio::test]
    async fn unreachable_servers_are_a_transport_error() {
        // Port 9 on loopback: nothing listens.
        let c = Client::with_servers(["http://127.0.0.1:9", "http://127.0.0.1:9/x"], producer())
            .unwrap();
        let err = c.features().await.unwrap_err();
        assert!(matches!(err, ClientError::Transport(_)), "{err:?}");
    }

    /// A lease granted by a server the producer bound, signed by `server_key`.
    fn granted(producer: &shared::signing::Signer, server_key: &shared::signing::Signer) -> Lease {
        use shared::grant::{BindingClaims, GrantClaims};
        let now = shared::now_unix();
        let mut l = lease(now + 300, now + 150);
        l.client_id = "me".into();
        l.lease_id = Uuid::new_v4();
        l.binding = BindingClaims {
            iss: shared::capability::ISSUER.into(),
            sub: "string:lls-1".into(),
            key: server_key.public_key(),
            pair: None,
            iat: now - 10,
            exp: now + 86_400,
        }
        .sign(producer);
        l.grant = GrantClaims {
            borrowed: false,
            iss: "string:lls-1".into(),
            sub: l.client_id.clone(),
            jti: l.lease_id,
            feature: l.feature.clone(),
            version: l.version.clone(),
            count: l.count,
            iat: now,
            exp: l.expires_at,
        }
        .sign(server_key);
        l
    }

    #[test]
    fn only_leases_whose_grant_verifies_with_the_producer_key_are_accepted() {
        let producer = shared::signing::Signer::generate();
        let server = shared::signing::Signer::generate();
        let c = Client::new("http://a:1", Verifier::from_key(&producer.verifying_key()))
            .unwrap()
            .with_client_id("me");
        let asked = |l: &Lease| Expected {
            client_id: "me",
            lease_id: None,
            feature: "f",
            version: None,
            count: l.count,
        };
        let good = granted(&producer, &server);
        assert!(c.verified(good.clone(), "http://a:1", asked(&good)).is_ok());

        // Signed by a server whose key another key bound (a fake server's own "producer").
        let rogue = granted(&shared::signing::Signer::generate(), &server);
        // No grant at all.
        let unsigned = lease(good.expires_at, good.renew_after);
        // The plain fields say more than the grant signs.
        let mut inflated = good.clone();
        inflated.count = 50;
        // Another client's lease.
        let mut other = good.clone();
        other.client_id = "someone-else".into();
        for (what, l, expected) in [
            ("rogue", rogue.clone(), asked(&rogue)),
            ("unsigned", unsigned.clone(), asked(&unsigned)),
            ("inflated", inflated.clone(), asked(&good)),
            ("other client", other.clone(), asked(&other)),
        ] {
            match c.verified(l, "http://a:1", expected) {
                Err(ClientError::Untrusted { server, reason }) => {
                    assert_eq!(server, "http://a:1", "{what}");
                    assert!(!reason.is_empty(), "{what}");
                }
                other => panic!("{what}: {other:?}"),
            }
        }
    }
}
