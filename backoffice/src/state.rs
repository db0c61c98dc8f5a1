//! What every request shares ([`AppState`]) and the helpers that run a request's storage
//! work off the async threads, in the request's tracing span.

use actix_web::web;
use parking_lot::Mutex;
use shared::signing::Signer;

use crate::config::Settings;
use crate::db::{Backend, DbConn, Pool};
use crate::domain::throttle::Throttle;
use crate::error::{AppError, AppResult};
use crate::http::Metrics;
use crate::links::Links;
use crate::passwords::Hasher;
use crate::writer::{Committed, Writer};

pub struct AppState {
    pub pool: Pool,
    pub backend: Backend,
    pub signer: Signer,
    pub public_pem: String,
    pub settings: Settings,
    pub metrics: web::Data<Metrics>,
    /// The thread that carries out capability requests in batches (see [`crate::writer`]).
    pub writer: Writer,
    /// The live links held open, woken when their account's rights change (see
    /// [`crate::links`]).
    pub links: std::sync::Arc<Links>,
    /// Password hashing, bounded (see [`crate::passwords`]).
    pub hasher: Hasher,
    /// Failed sign-ins per account and address (see [`crate::domain::throttle`]).
    pub throttle: Mutex<Throttle>,
}

/// The state as handlers take it.
pub type State = web::Data<AppState>;

impl AppState {
    /// A server silent this long (seconds) is `inaccessible`.
    pub fn server_timeout(&self) -> i64 {
        secs(self.settings.server_timeout())
    }

    /// How long a sign-in lasts, in seconds.
    pub fn session_lifetime(&self) -> i64 {
        secs(self.settings.session_lifetime)
    }
}

fn secs(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// Runs storage work on the blocking pool with a pooled connection, in the caller's span.
pub async fn run<T, F>(state: &AppState, f: F) -> AppResult<T>
where
    T: Send + 'static,
    F: FnOnce(&mut DbConn) -> AppResult<T> + Send + 'static,
{
    let pool = state.pool.clone();
    let span = tracing::Span::current();
    web::block(move || {
        let _in = span.enter();
        let mut conn = pool.get()?;
        f(&mut conn)
    })
    .await
    .map_err(|e| AppError::internal(format!("the blocking pool: {e}")))?
}

/// Like [`run`], for storage work that writes what SQLite's writer thread writes (the
/// capability requests' slow path, forgetting request IDs): on SQLite it goes to that
/// thread (one writer at a time, committed in batches; see [`crate::writer`]), on
/// PostgreSQL through the pool. The result comes with what tells when it is committed:
/// answer only after that.
pub async fn run_write<T, F>(state: &AppState, f: F) -> AppResult<(AppResult<T>, Committed)>
where
    T: Send + 'static,
    F: FnOnce(&mut DbConn) -> AppResult<T> + Send + 'static,
{
    match state.backend {
        Backend::Sqlite => state.writer.run(f).await,
        Backend::Postgres => Ok((run(state, f).await, Committed::done())),
    }
}
