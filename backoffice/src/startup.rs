//! Starting the service, in one place: `Application::build(settings)` reads the TLS
//! certificate and key when `TLS_CERT` and `TLS_KEY` are set, makes `DATA_DIR` (for its
//! owner only), loads or creates the signing key, opens and migrates storage, creates the
//! first administrator, starts the password pool, generates the API's document and binds
//! (port 0 works for tests); `run_until_stopped` serves HTTP, or HTTPS only when TLS is
//! set, hardened against slow clients and descriptor exhaustion (`http_kit::serve`).

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use actix_web::dev::{Server, ServerHandle};
use actix_web::{HttpServer, web};
use anyhow::Context;
use http_kit::openapi::RouteTable;
use http_kit::serve::{ConnectionGate, Limits, raise_nofile_limit};
use parking_lot::Mutex;

use crate::api::system::ApiDocument;
use crate::config::Settings;
use crate::db;
use crate::domain::throttle::Throttle;
use crate::error::AppResult;
use crate::http::Metrics;
use crate::links::Links;
use crate::passwords::Hasher;
use crate::routes::{self, Shared};
use crate::state::{AppState, run, run_write};
use crate::store;
use crate::writer::Writer;
use crate::{files, keys};

pub struct Application {
    address: SocketAddr,
    https: bool,
    server: Server,
}

/// The connection limits: one worker per core unless `WORKERS` says otherwise, and as
/// many connections as `RLIMIT_NOFILE` allows (raised towards what the default needs).
fn limits(settings: &Settings) -> anyhow::Result<Limits> {
    let mut limits = Limits::default();
    if let Some(n) = settings.workers {
        limits.workers = n;
    }
    let nofile = raise_nofile_limit(limits.fds_needed()).context("raising RLIMIT_NOFILE")?;
    limits.max_connections = limits
        .max_connections
        .min(limits.max_connections_for(nofile))
        .max(1);
    Ok(limits)
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        // What the settings name is read first, so that a bad file stops the start at once.
        let tls = settings
            .tls
            .as_ref()
            .map(|t| t.server_config())
            .transpose()?;
        let tls_set = tls.is_some();
        let limits = limits(&settings)?;
        files::private_dir(&settings.data_dir)
            .with_context(|| format!("cannot create DATA_DIR {}", settings.data_dir.display()))?;
        let (signer, public_pem) = keys::load_or_create(&settings.signing_key_path())?;
        let url = settings.database_url();
        let size = settings.db_pool_size;
        let (pool, backend) = {
            let url = url.clone();
            web::block(move || db::connect(&url, size))
                .await
                .context("the blocking pool")??
        };
        let writer = Writer::start(&url)?;
        let links = Links::new(settings.max_links, settings.max_links_per_account);
        store::links::listen(&url, Arc::downgrade(&links))
            .context("cannot start the database's listener")?;
        tracing::info!(?backend, "storage ready");

        let listener = TcpListener::bind(&settings.listen)
            .with_context(|| format!("cannot listen on LISTEN={}", settings.listen))?;
        let address = listener.local_addr()?;
        let state = web::Data::new(AppState {
            pool,
            backend,
            signer,
            public_pem,
            settings,
            metrics: web::Data::new(Metrics::default()),
            writer,
            links,
            hasher: Hasher::for_this_machine().context("cannot start the password threads")?,
            throttle: Mutex::new(Throttle::default()),
        });
        first_admin(&state).await?;

        let doc = serde_json::to_value(routes::openapi()).context("the OpenAPI document")?;
        let gate = ConnectionGate::new(limits.max_connections, routes::is_priority);
        let shared = Shared {
            metrics: state.metrics.clone(),
            state: state.clone(),
            routes: Arc::new(RouteTable::from_document(&doc)),
            document: web::Data::new(ApiDocument(doc.to_string())),
            gate: gate.clone(),
            body_timeout: limits.body_timeout,
        };
        spawn_housekeeping(state);
        let server = limits.apply(HttpServer::new(move || routes::app(shared.clone())), &gate);
        let server = match tls {
            Some(config) => server.listen_rustls_0_23(listener, config)?,
            None => server.listen(listener)?,
        };
        Ok(Application {
            address,
            https: tls_set,
            server: server.run(),
        })
    }

    pub fn port(&self) -> u16 {
        self.address.port()
    }

    /// The bound address.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Whether it serves HTTPS (`TLS_CERT` and `TLS_KEY` set).
    pub fn is_https(&self) -> bool {
        self.https
    }

    /// Stops the server from elsewhere (e.g. a test that runs it in-process).
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }
}

/// Creates the first producer administrator when there is none, with `ADMIN_PASSWORD` or a
/// generated password printed once, on the console only, never to the log.
async fn first_admin(state: &AppState) -> anyhow::Result<()> {
    if run(state, store::auth::has_admin).await? {
        return Ok(());
    }
    let email = state.settings.admin_email.clone();
    let (password, generated) = match &state.settings.admin_password {
        Some(p) => (p.expose().to_owned(), false),
        None => (shared::random_token::<18>(), true),
    };
    let hash = state.hasher.hash(password.clone()).await?;
    let e = email.clone();
    run(state, move |c| store::auth::create_admin(c, &e, &hash))
        .await
        .context("cannot create the first administrator")?;
    if generated {
        println!(
            "Created the first producer administrator {email} with password: {password}\n\
             (shown only now; set ADMIN_PASSWORD to choose one)"
        );
    }
    Ok(())
}

/// Forgets old request IDs and expired sessions once a minute. Request IDs go in small
/// chunks, each its own short write: at 10,000 polls a second a minute leaves 600,000 of
/// them, and one statement for all would hold SQLite's writer (and every poll) meanwhile.
fn spawn_housekeeping(state: web::Data<AppState>) {
    actix_web::rt::spawn(async move {
        let mut tick = actix_web::rt::time::interval(std::time::Duration::from_secs(60));
        loop {
            tick.tick().await;
            let window = 2 * i64::try_from(state.settings.clock_skew.as_secs()).unwrap_or(0) + 60;
            let before = shared::now_unix() - window;
            let res: AppResult<(usize, usize)> = async {
                let mut ids = 0;
                loop {
                    let (n, committed) = run_write(&state, move |c| {
                        store::capability::purge_request_ids(c, before)
                    })
                    .await?;
                    let n = n?;
                    committed.wait().await?;
                    ids += n;
                    if n < store::capability::PURGE_CHUNK as usize {
                        break;
                    }
                }
                let sessions = run(&state, |c| {
                    store::auth::purge_sessions(c, shared::now_unix())
                })
                .await?;
                Ok((ids, sessions))
            }
            .await;
            match res {
                Ok((ids, sessions)) => tracing::debug!(ids, sessions, "housekeeping"),
                Err(e) => tracing::warn!(error = %e, "housekeeping failed"),
            }
        }
    });
}
