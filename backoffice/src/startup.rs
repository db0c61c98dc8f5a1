//! Starting the service, in one place: `Application::build(settings)` makes `DATA_DIR` (for
//! its owner only), loads or creates the signing key, opens and migrates storage, creates
//! the first administrator, starts the password pool, generates the API's document and
//! binds (port 0 works for tests); `run_until_stopped` serves.

use std::net::TcpListener;

use actix_web::dev::Server;
use actix_web::{HttpServer, web};
use anyhow::Context;
use parking_lot::Mutex;

use crate::api::system::ApiDocument;
use crate::config::Settings;
use crate::db;
use crate::domain::throttle::Throttle;
use crate::error::AppResult;
use crate::http::metrics::Metrics;
use crate::passwords::Hasher;
use crate::routes::{self, Shared};
use crate::state::{AppState, run, run_write};
use crate::store;
use crate::writer::Writer;
use crate::{files, keys};

pub struct Application {
    port: u16,
    server: Server,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
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
        tracing::info!(?backend, "storage ready");

        let listener = TcpListener::bind(&settings.listen)
            .with_context(|| format!("cannot listen on LISTEN={}", settings.listen))?;
        let port = listener.local_addr()?.port();
        let workers = settings.workers;
        let state = web::Data::new(AppState {
            pool,
            backend,
            signer,
            public_pem,
            settings,
            metrics: web::Data::new(Metrics::default()),
            writer,
            hasher: Hasher::for_this_machine().context("cannot start the password threads")?,
            throttle: Mutex::new(Throttle::default()),
        });
        first_admin(&state).await?;

        let doc = routes::openapi();
        let shared = Shared {
            metrics: state.metrics.clone(),
            state: state.clone(),
            known: web::Data::new(routes::known_routes(&doc)),
            document: web::Data::new(ApiDocument(
                doc.to_json().context("cannot write the OpenAPI document")?,
            )),
        };
        spawn_housekeeping(state);
        let mut server = HttpServer::new(move || routes::app(shared.clone())).listen(listener)?;
        if let Some(w) = workers {
            server = server.workers(w);
        }
        Ok(Application {
            port,
            server: server.run(),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
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
