//! The client library (feature `client`): check licenses out of a license server, renew
//! them in the background, return them on drop.
//!
//! ```no_run
//! # async fn demo() -> Result<(), shared::client::ClientError> {
//! let client = shared::client::Client::new("http://127.0.0.1:7070")?;
//! let guard = client.checkout("cad", 1).await?; // renewed in the background
//! println!("lease {} until {}", guard.lease().lease_id, guard.lease().expires_at);
//! guard.release().await?; // or just drop it
//! # Ok(()) }
//! ```
//!
//! A client knows an ordered list of servers. Requests go to the first that answers; a
//! server that does not answer sends the client to the next; `NOT_SERVING` moves the
//! client to the server named in `serving_url`; the backup URL a main hands out with each
//! lease (`backup_uri`) is added to the list.
//!
//! `https://` servers are verified against the system's trusted roots; a server whose
//! certificate comes from a private CA needs that CA's certificate:
//!
//! ```no_run
//! # async fn demo() -> Result<(), shared::client::ClientError> {
//! let pem = std::fs::read("/etc/licensing/ca.pem").expect("the CA bundle");
//! let client = shared::client::Client::builder()
//!     .server("https://lls-main.example:7070")
//!     .server("https://lls-backup.example:7070")
//!     .ca_pem(&pem)?
//!     .build()?;
//! # Ok(()) }
//! ```

use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::Method;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::lease::{CheckoutRequest, FeatureInfo, Lease};
use crate::{ErrorBody, ErrorCode};

#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The server answered with a contract error.
    #[error("{body} (HTTP {status})")]
    Api { status: u16, body: ErrorBody },
    /// No server could be reached.
    #[error("no license server answered: {0}")]
    Transport(String),
    /// Bad input on the client side or an answer that makes no sense.
    #[error("{0}")]
    Invalid(String),
}

impl ClientError {
    /// The contract error code, for API errors.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api { body, .. } => Some(body.code),
            _ => None,
        }
    }

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
    client_id: String,
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
            .finish()
    }
}

fn default_client_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "client".to_owned());
    format!("{host}:{}", std::process::id())
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

/// Servers, trusted CAs and identity of a [`Client`] to build.
#[derive(Debug, Default)]
pub struct ClientBuilder {
    servers: Vec<String>,
    ca: Vec<reqwest::Certificate>,
    client_id: Option<String>,
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
                client_id: self.client_id.unwrap_or_else(default_client_id),
            }),
        })
    }
}

impl Client {
    /// One server.
    pub fn new(url: &str) -> Result<Client, ClientError> {
        Client::with_servers([url])
    }

    /// An ordered list of servers (the first is preferred).
    pub fn with_servers<I, S>(urls: I) -> Result<Client, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        urls.into_iter()
            .fold(Client::builder(), |b, u| b.server(u))
            .build()
    }

    /// Servers, CA certificates and identity, e.g. for `https://` servers with a private
    /// CA.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// The same servers, another client identity (default: `hostname:pid`).
    pub fn with_client_id(&self, client_id: impl Into<String>) -> Client {
        Client {
            inner: Arc::new(Inner {
                http: self.inner.http.clone(),
                servers: Mutex::new(self.configured()),
                learned_backup: Mutex::new(self.learned_backup()),
                client_id: client_id.into(),
            }),
        }
    }

    pub fn client_id(&self) -> &str {
        &self.inner.client_id
    }

    /// The servers in the order they are tried: the configured list, then the backup
    /// learned from the main.
    pub fn servers(&self) -> Vec<String> {
        let mut s = self.configured();
        if let Some(b) = self.learned_backup()
            && !s.contains(&b)
        {
            s.push(b);
        }
        s
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
    ) -> Result<Option<T>, ClientError> {
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
                    return Ok(None);
                }
                return serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                    ClientError::Invalid(format!("unexpected answer from {base}: {e}"))
                });
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
            return Err(ClientError::Api { status, body });
        }
        Err(last_err.unwrap_or_else(|| ClientError::Transport("no server configured".into())))
    }

    /// Every feature of the first server that answers.
    pub async fn features(&self) -> Result<Vec<FeatureInfo>, ClientError> {
        self.call(Method::GET, "/api/v1/features", None, None, None)
            .await?
            .ok_or_else(|| ClientError::Invalid("empty answer".into()))
    }

    /// Checks out `count` seats of `feature` (any version); the guard renews the lease in
    /// the background and returns it when dropped.
    pub async fn checkout(&self, feature: &str, count: u32) -> Result<LeaseGuard, ClientError> {
        self.checkout_with(CheckoutRequest {
            feature: feature.to_owned(),
            version: None,
            count,
            client_id: self.inner.client_id.clone(),
        })
        .await
    }

    /// Checks out with a full request (a version, another client ID).
    pub async fn checkout_with(&self, req: CheckoutRequest) -> Result<LeaseGuard, ClientError> {
        let lease = self.checkout_lease(&req).await?;
        Ok(LeaseGuard::new(self.clone(), lease))
    }

    /// Checks out without a guard: the caller renews and returns.
    pub async fn checkout_lease(&self, req: &CheckoutRequest) -> Result<Lease, ClientError> {
        let body = serde_json::to_vec(req).map_err(|e| ClientError::Invalid(e.to_string()))?;
        let lease: Lease = self
            .call(Method::POST, "/api/v1/leases", Some(body), None, None)
            .await?
            .ok_or_else(|| ClientError::Invalid("empty answer to a checkout".into()))?;
        self.learn(&lease);
        Ok(lease)
    }

    /// Renews a lease (at the server that granted it first).
    pub async fn renew(&self, lease: &Lease) -> Result<Lease, ClientError> {
        let path = format!("/api/v1/leases/{}", lease.lease_id);
        let new: Lease = self
            .call(
                Method::PUT,
                &path,
                None,
                Some(&lease.token),
                lease.served_by.as_deref(),
            )
            .await?
            .ok_or_else(|| ClientError::Invalid("empty answer to a renewal".into()))?;
        self.learn(&new);
        Ok(new)
    }

    /// Renews by ID and token (e.g. from a command line).
    pub async fn renew_by_id(&self, id: Uuid, token: &str) -> Result<Lease, ClientError> {
        let path = format!("/api/v1/leases/{id}");
        self.call(Method::PUT, &path, None, Some(token), None)
            .await?
            .ok_or_else(|| ClientError::Invalid("empty answer to a renewal".into()))
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
            lease_id: Uuid::nil(),
            token: "t".into(),
            feature: "f".into(),
            version: String::new(),
            count: 1,
            client_id: "c".into(),
            granted_at: 0,
            expires_at,
            renew_after,
            served_by: None,
            backup_uri: Some("http://backup:7070/".into()),
            main_uri: None,
        }
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
        let c = Client::with_servers(["http://a:1/", "http://b:2", "http://a:1"]).unwrap();
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
        assert!(Client::new("ftp://x").is_err());
        let d = c.with_client_id("me");
        assert_eq!(d.client_id(), "me");
    }

    #[tokio::test]
    async fn unreachable_servers_are_a_transport_error() {
        // Port 9 on loopback: nothing listens.
        let c = Client::with_servers(["http://127.0.0.1:9", "http://127.0.0.1:9/x"]).unwrap();
        let err = c.features().await.unwrap_err();
        assert!(matches!(err, ClientError::Transport(_)), "{err:?}");
    }
}
