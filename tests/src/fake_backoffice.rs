//! A small but real back office for tests and benchmarks (actix-web): it answers
//! `POST /api/v1/capability` with real capability claims signed by a key of its own, over
//! HTTP or HTTPS, and can be told to misbehave (wrong key, wrong hostid, stale, replayed,
//! `MAIN_NOT_REGISTERED`). It does no pairing and no accounting; tests of those run the
//! real back office ([`crate::backoffice`]).
//!
//! Used by the license server's tests and by its `examples/dev_backoffice.rs`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use shared::capability::{
    CapabilityClaims, CapabilityRequest, CapabilityResponse, ISSUER, Right, Role,
};
use shared::signing::{Signer, generate_keypair};
use shared::{ErrorBody, ErrorCode};

use crate::tls::ServerCert;

/// The device token the test back office expects ([`FakeBackoffice::start`]).
pub const BO_TOKEN: &str = "bo-secret-token";

/// How the back office answers.
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
    token: String,
    pub rights: Mutex<Vec<Right>>,
    pub mode: Mutex<Mode>,
    pub poll_secs: u64,
    pub requests: Mutex<Vec<CapabilityRequest>>,
    last_good: Mutex<Option<String>>,
}

/// A running back office; stopped (every connection closed) on [`FakeBackoffice::stop`]
/// or drop.
pub struct FakeBackoffice {
    pub url: String,
    /// The PEM file of its public key (`BACKOFFICE_PUBLIC_KEY`).
    pub public_key: PathBuf,
    pub state: Arc<BoState>,
    handle: Option<ServerHandle>,
    /// Where its key lives, when it chose the place itself.
    _dir: Option<tempfile::TempDir>,
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
    bo: web::Data<BoState>,
    req: HttpRequest,
    body: web::Json<CapabilityRequest>,
) -> HttpResponse {
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if auth != format!("Bearer {}", bo.token) {
        return HttpResponse::Unauthorized()
            .json(ErrorBody::new(ErrorCode::Unauthorized, "bad server token"));
    }
    let req = body.into_inner();
    bo.requests.lock().unwrap().push(req.clone());
    let mode = *bo.mode.lock().unwrap();
    if mode == Mode::MainNotRegistered && req.role == Role::Backup {
        return HttpResponse::Conflict().json(ErrorBody::new(
            ErrorCode::MainNotRegistered,
            "start the main first",
        ));
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
    HttpResponse::Ok().json(CapabilityResponse { token })
}

impl FakeBackoffice {
    /// For a test: on a port of its own, in a directory of its own, expecting
    /// [`BO_TOKEN`], telling servers to poll every second.
    pub async fn start(rights: Vec<Right>) -> FakeBackoffice {
        Self::start_in_tempdir(rights, None)
    }

    /// [`FakeBackoffice::start`] over HTTPS with this certificate and key.
    pub async fn start_tls(rights: Vec<Right>, cert: &Path, key: &Path) -> FakeBackoffice {
        Self::start_in_tempdir(rights, Some((cert, key)))
    }

    /// [`FakeBackoffice::start_tls`] with a certificate from [`crate::tls::TestCa`].
    pub async fn start_with_cert(rights: Vec<Right>, cert: &ServerCert) -> FakeBackoffice {
        Self::start_in_tempdir(rights, Some((&cert.cert, &cert.key)))
    }

    fn start_in_tempdir(rights: Vec<Right>, tls: Option<(&Path, &Path)>) -> FakeBackoffice {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut bo = FakeBackoffice::serve("127.0.0.1:0", dir.path(), rights, BO_TOKEN, 1, tls)
            .expect("start the test back office");
        bo._dir = Some(dir);
        bo
    }

    /// The settings of a license server `hostid` that polls this back office (every
    /// 300 ms, retrying within 500 ms), with 60 s leases.
    pub fn server_env(&self, hostid: &str) -> Vec<(String, String)> {
        let token = self.state.token.as_str();
        [
            ("HOSTID", hostid),
            ("BACKOFFICE_URL", self.url.as_str()),
            ("BACKOFFICE_TOKEN", token),
            (
                "BACKOFFICE_PUBLIC_KEY",
                self.public_key.to_str().unwrap_or(""),
            ),
            ("CAPABILITY_POLL_INTERVAL", "300ms"),
            ("BACKOFF_MAX", "500ms"),
            ("LEASE_DURATION", "60s"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
    }

    /// Listens on `listen` (port 0: any), over HTTPS when `tls` names a certificate and
    /// its key; writes its public key to `dir/backoffice.pub.pem`; authenticates servers
    /// by `token`. Must be called within a Tokio runtime, which runs it.
    pub fn serve(
        listen: &str,
        dir: &Path,
        rights: Vec<Right>,
        token: &str,
        poll_secs: u64,
        tls: Option<(&Path, &Path)>,
    ) -> std::io::Result<FakeBackoffice> {
        let (private, public) = generate_keypair();
        let (wrong_private, _) = generate_keypair();
        std::fs::create_dir_all(dir)?;
        let public_key = dir.join("backoffice.pub.pem");
        std::fs::write(&public_key, public)?;
        let state = Arc::new(BoState {
            signer: Signer::from_pem(&private).map_err(std::io::Error::other)?,
            wrong_signer: Signer::from_pem(&wrong_private).map_err(std::io::Error::other)?,
            token: token.to_owned(),
            rights: Mutex::new(rights),
            mode: Mutex::new(Mode::Normal),
            poll_secs,
            requests: Mutex::new(Vec::new()),
            last_good: Mutex::new(None),
        });
        let listener = TcpListener::bind(listen)?;
        let addr = listener.local_addr()?;
        let data = web::Data::from(state.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .route("/api/v1/capability", web::post().to(capability))
        })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(1);
        let (server, scheme) = match tls {
            Some((cert, key)) => {
                let config =
                    http_kit::tls::server_config(cert, key).map_err(std::io::Error::other)?;
                (server.listen_rustls_0_23(listener, config)?, "https")
            }
            None => (server.listen(listener)?, "http"),
        };
        let server = server.run();
        let handle = server.handle();
        tokio::spawn(server);
        Ok(FakeBackoffice {
            url: format!("{scheme}://{addr}"),
            public_key,
            state,
            handle: Some(handle),
            _dir: None,
        })
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
        if let Some(h) = self.handle.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), h.stop(false)).await;
        }
    }
}

impl Drop for FakeBackoffice {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            // Stopping is asynchronous; the task ends on its own.
            drop(h.stop(false));
        }
    }
}
