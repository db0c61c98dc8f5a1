//! Building and running the service: `Application::build(settings)` binds (port 0 works
//! for tests), opens storage, loads or creates the signing key and the first admin.

use std::net::TcpListener;
use std::path::Path;

use actix_web::dev::Server;
use actix_web::{App, HttpServer, web};
use anyhow::Context;
use shared::signing::{Signer, generate_keypair, public_pem_of};
use tracing_actix_web::TracingLogger;

use crate::config::Settings;
use crate::db::{self, Backend, Pool};
use crate::metrics::Metrics;
use crate::writer::Writer;
use crate::{api, store};

/// Shared by every request.
pub struct AppState {
    pub pool: Pool,
    pub backend: Backend,
    pub signer: Signer,
    pub public_pem: String,
    pub settings: Settings,
    pub metrics: Metrics,
    /// On SQLite, the thread that carries out capability requests (see [`api::run_write`]).
    pub writer: Option<Writer>,
}

pub struct Application {
    port: u16,
    server: Server,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        std::fs::create_dir_all(&settings.data_dir)
            .with_context(|| format!("cannot create DATA_DIR {}", settings.data_dir.display()))?;
        let (signer, public_pem) = load_or_create_key(&settings.signing_key_path())?;
        let url = settings.database_url();
        let size = settings.db_pool_size.max(1);
        let (pool, backend) = {
            let url = url.clone();
            web::block(move || db::connect(&url, size)).await??
        };
        let writer = match backend {
            Backend::Sqlite => Some(Writer::start(&url)?),
            Backend::Postgres => None,
        };
        tracing::info!(?backend, "storage ready");

        let email = settings.admin_email.clone();
        let password = settings.admin_password.clone();
        let p = pool.clone();
        let generated = web::block(move || {
            let mut c = p.get()?;
            store::auth::ensure_first_admin(&mut c, &email, password.as_ref())
        })
        .await?
        .map_err(|e| anyhow::anyhow!("cannot create the first administrator: {e}"))?;
        if let Some(pw) = generated {
            // Printed once, on the console only, never to the log.
            println!(
                "Created the first producer administrator {} with password: {pw}\n\
                 (shown only now; set ADMIN_PASSWORD to choose one)",
                settings.admin_email
            );
        }

        let listener = TcpListener::bind(&settings.listen)
            .with_context(|| format!("cannot listen on {}", settings.listen))?;
        let port = listener.local_addr()?.port();
        let workers = settings.workers;
        let state = web::Data::new(AppState {
            pool,
            backend,
            signer,
            public_pem,
            settings,
            metrics: Metrics::default(),
            writer,
        });
        spawn_housekeeping(state.clone());
        let mut server = HttpServer::new(move || {
            App::new()
                .wrap(actix_web::middleware::from_fn(crate::metrics::record))
                .wrap(TracingLogger::default())
                .app_data(state.clone())
                .app_data(api::json_config())
                .app_data(api::path_config())
                .app_data(api::query_config())
                .app_data(web::PayloadConfig::new(api::MAX_BODY))
                .app_data(web::FormConfig::default().limit(api::MAX_BODY))
                .configure(api::routes)
                .configure(crate::portal::routes)
                .default_service(web::to(api::not_found))
        })
        .listen(listener)?;
        if let Some(w) = workers {
            server = server.workers(w.max(1));
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

/// Loads the signing key, or creates it (and its public half beside it) on first start.
pub fn load_or_create_key(path: &Path) -> anyhow::Result<(Signer, String)> {
    let private = if path.exists() {
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read SIGNING_KEY {}", path.display()))?
    } else {
        let (private, _) = generate_keypair();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        write_private(path, &private)?;
        tracing::info!(path = %path.display(), "generated a new signing key");
        private
    };
    let public = public_pem_of(&private).context("SIGNING_KEY is not an Ed25519 PKCS#8 PEM key")?;
    let pub_path = path.with_extension("pub.pem");
    if std::fs::read_to_string(&pub_path).ok().as_deref() != Some(public.as_str()) {
        std::fs::write(&pub_path, &public)
            .with_context(|| format!("cannot write {}", pub_path.display()))?;
    }
    Ok((Signer::from_pem(&private)?, public))
}

fn write_private(path: &Path, pem: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(pem.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

/// Forgets old request IDs and expired sessions once a minute.
fn spawn_housekeeping(state: web::Data<AppState>) {
    actix_web::rt::spawn(async move {
        let mut tick = actix_web::rt::time::interval(std::time::Duration::from_secs(60));
        loop {
            tick.tick().await;
            let s = state.clone();
            let res = web::block(move || -> crate::error::AppResult<(usize, usize)> {
                let mut c = s.pool.get()?;
                let now = shared::now_unix();
                let window = 2 * s.settings.clock_skew.as_secs() as i64 + 60;
                Ok((
                    store::registry::purge_request_ids(&mut c, now - window)?,
                    store::auth::purge_sessions(&mut c, now)?,
                ))
            })
            .await;
            match res {
                Ok(Ok((ids, sessions))) => tracing::debug!(ids, sessions, "housekeeping"),
                Ok(Err(e)) => tracing::warn!(error = %e, "housekeeping failed"),
                Err(e) => tracing::warn!(error = %e, "housekeeping failed"),
            }
        }
    });
}
