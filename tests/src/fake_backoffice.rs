//! A small but real back office for tests and benchmarks (actix-web): it answers
//! `POST /api/v1/capability` with real capability claims signed by a key of its own, over
//! HTTP or HTTPS: the rights, `serve_until`, a binding of the server's key (its
//! `server_key`) to its hostid and pair, and a secret per pair. It remembers the pairs
//! mains announce (`backup_hostid`) so that both servers' answers name the pair. It can
//! be told to misbehave (wrong key, wrong hostid, stale, replayed, `MAIN_NOT_REGISTERED`,
//! and bindings that must be refused: signed by another key, for another hostid,
//! expired, with an unknown `kid`, or none). It does no accounting; tests of that run the
//! real back office ([`crate::backoffice`]).
//!
//! Used by the license server's tests and by its `examples/dev_backoffice.rs`.

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use shared::HostId;
use shared::capability::{
    CapabilityClaims, CapabilityRequest, CapabilityResponse, ISSUER, PairInfo, Right, Role,
};
use shared::grant::BindingClaims;
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
    /// The answer is good; its binding is signed by a key the server does not trust.
    BindingWrongKey,
    /// The binding binds the server's key to another hostid.
    BindingOtherHostid,
    /// The binding expired an hour ago.
    BindingExpired,
    /// The binding's header names a key ID nobody has.
    BindingUnknownKid,
    /// No binding at all.
    NoBinding,
}

pub struct BoState {
    signer: Signer,
    wrong_signer: Signer,
    token: String,
    pub rights: Mutex<Vec<Right>>,
    pub mode: Mutex<Mode>,
    pub poll_secs: u64,
    /// How long an answer's rights may be served without a newer one (`serve_until`).
    pub serve_secs: Mutex<i64>,
    pub requests: Mutex<Vec<CapabilityRequest>>,
    last_good: Mutex<Option<String>>,
    /// The pairs mains announced: backup hostid → (main hostid, the pair's secret).
    pairs: Mutex<HashMap<HostId, (HostId, String)>>,
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
        max_borrow_secs: None,
        overdraft: 0,
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
    let (pair, pair_token) = bo.pair_of(&req);
    let now = shared::now_unix();
    let serve_until = now + *bo.serve_secs.lock().unwrap();
    let binding = req.server_key.as_ref().and_then(|key| {
        let mut b = BindingClaims {
            iss: ISSUER.into(),
            sub: req.hostid.to_string(),
            key: key.clone(),
            pair: pair.clone(),
            iat: now,
            exp: serve_until,
        };
        match mode {
            Mode::NoBinding => None,
            Mode::BindingWrongKey => Some(b.sign(&bo.wrong_signer)),
            Mode::BindingOtherHostid => {
                b.sub = "string:somebody-else".into();
                Some(b.sign(&bo.signer))
            }
            Mode::BindingExpired => {
                b.iat = now - 7200;
                b.exp = now - 3600;
                Some(b.sign(&bo.signer))
            }
            Mode::BindingUnknownKid => Some(with_kid(&b.sign(&bo.signer), "not-a-key-id")),
            _ => Some(b.sign(&bo.signer)),
        }
    });
    let mut claims = CapabilityClaims {
        iss: ISSUER.into(),
        sub: req.hostid.to_string(),
        request_id: req.request_id,
        iat: now,
        exp: now + 300,
        server_id: "srv-1".into(),
        role: req.role,
        pair,
        cluster: None,
        poll_interval_secs: bo.poll_secs,
        rights: bo.rights.lock().unwrap().clone(),
        serve_until,
        binding,
        pair_token,
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

/// The same token with another `kid` in its header (its signature no longer covers it).
fn with_kid(token: &str, kid: &str) -> String {
    let (header, rest) = token.split_once('.').expect("a JWS");
    let mut h: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).expect("base64url")).unwrap();
    h["kid"] = kid.into();
    format!(
        "{}.{rest}",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&h).unwrap())
    )
}

impl BoState {
    /// The pair a request belongs to and its secret: a main registers its backup; a
    /// backup finds the pair its main registered.
    fn pair_of(&self, req: &CapabilityRequest) -> (Option<PairInfo>, Option<String>) {
        let mut pairs = self.pairs.lock().unwrap();
        let (main, backup) = match (req.role, &req.backup_hostid) {
            (Role::Main, Some(backup)) => {
                let entry = pairs
                    .entry(backup.clone())
                    .or_insert_with(|| (req.hostid.clone(), shared::random_token::<32>()));
                entry.0 = req.hostid.clone();
                (req.hostid.clone(), backup.clone())
            }
            (Role::Backup, _) => match pairs.get(&req.hostid) {
                Some((main, _)) => (main.clone(), req.hostid.clone()),
                None => return (None, None),
            },
            _ => return (None, None),
        };
        let secret = pairs.get(&backup).map(|(_, s)| s.clone());
        let pair = PairInfo {
            id: format!("pair-{main}"),
            main,
            backup: Some(backup),
        };
        (Some(pair), secret)
    }
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
            serve_secs: Mutex::new(30 * 86_400),
            requests: Mutex::new(Vec::new()),
            last_good: Mutex::new(None),
            pairs: Mutex::new(HashMap::new()),
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

    /// Its public key: the producer's key clients verify grants with.
    pub fn producer(&self) -> shared::signing::Verifier {
        let pem = std::fs::read_to_string(&self.public_key).expect("its public key file");
        shared::signing::Verifier::from_public_pem(&pem).expect("an Ed25519 key")
    }

    pub fn set_rights(&self, rights: Vec<Right>) {
        *self.state.rights.lock().unwrap() = rights;
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    /// How long answers from now on may be served (`serve_until` = now + this).
    pub fn set_serve_secs(&self, secs: i64) {
        *self.state.serve_secs.lock().unwrap() = secs;
    }

    /// The secret it issued to the pair whose backup is `backup`, if that pair's main has
    /// registered it.
    pub fn pair_token(&self, backup: &str) -> Option<String> {
        let backup = HostId::parse(backup).ok()?;
        let pairs = self.state.pairs.lock().unwrap();
        pairs.get(&backup).map(|(_, s)| s.clone())
    }

    /// Signs `claims` with its key (as an answer of its own, for tests that forge).
    pub fn sign(&self, claims: &CapabilityClaims) -> String {
        self.state.signer.sign(claims)
    }

    /// Signs `claims` with a key the servers do not trust.
    pub fn sign_wrong(&self, claims: &CapabilityClaims) -> String {
        self.state.wrong_signer.sign(claims)
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
