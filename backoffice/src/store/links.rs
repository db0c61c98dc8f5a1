//! Changes of an account's rights told through PostgreSQL, so that every back-office
//! process on one database wakes the live links it holds: a registry write sends
//! `NOTIFY lls_rights, '<account ID>'` inside its transaction ([`announce`], delivered
//! only if it commits), and each process keeps one connection of its own listening
//! ([`listen`]). SQLite has one process; there the request that made the change wakes the
//! links itself (`crate::links`).
//!
//! The listener reads what arrived without blocking every [`LISTEN_TICK`] (libpq's
//! `PQconsumeInput`, a read of its socket: no query, no round trip; diesel does not hand
//! out the socket to wait on), checks its connection every [`CHECK_EVERY`], and opens a
//! new one after a failure, after which every link looks again (a notification may have
//! been missed meanwhile).

use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::Text;

use crate::db::{self, Backend, DbConn};
use crate::error::AppResult;

/// The channel.
pub const CHANNEL: &str = "lls_rights";

/// The listener's connection's `application_name`.
pub const APPLICATION_NAME: &str = "backoffice-listener";

/// How often the listener reads what arrived.
pub const LISTEN_TICK: Duration = Duration::from_millis(50);

/// How often the listener checks its connection with a query.
pub const CHECK_EVERY: Duration = Duration::from_secs(5);

/// Tells every process that the rights of `account_id` changed, when the current
/// transaction commits (PostgreSQL; nothing on SQLite).
pub fn announce(conn: &mut DbConn, account_id: &str) -> AppResult<()> {
    if let DbConn::Pg(c) = conn {
        diesel::sql_query("SELECT pg_notify($1, $2)")
            .bind::<Text, _>(CHANNEL)
            .bind::<Text, _>(account_id)
            .execute(c)?;
    }
    Ok(())
}

/// What the listener tells its process.
pub trait Listener: Send + 'static {
    /// The rights of this account changed.
    fn changed(&self, account_id: &str);
    /// Anything may have changed (the listener was not listening for a while).
    fn changed_all(&self);
    /// Nobody listens any more: the listener stops.
    fn is_closed(&self) -> bool;
}

/// Starts the listener thread for the PostgreSQL database at `url` (nothing for SQLite).
/// It runs until `to` is closed.
pub fn listen(url: &str, to: impl Listener) -> std::io::Result<()> {
    if !matches!(Backend::from_url(url), Ok((Backend::Postgres, _))) {
        return Ok(());
    }
    let url = url.to_owned();
    std::thread::Builder::new()
        .name("db-listener".into())
        .spawn(move || {
            let mut failed = false;
            while !to.is_closed() {
                match listen_once(&url, &to, failed) {
                    Ok(()) => return,
                    Err(e) => {
                        // Once per outage at WARN, then quietly until it is back.
                        if !failed {
                            tracing::warn!(
                                error = %e,
                                "lost the database's notifications of changed rights; \
                                 reconnecting (live links fall back to their hold time)"
                            );
                        }
                        failed = true;
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
            }
        })?;
    Ok(())
}

/// Listens on one connection until it fails.
fn listen_once(url: &str, to: &impl Listener, after_failure: bool) -> Result<(), String> {
    let mut conn = match db::open(url).map_err(|e| e.to_string())? {
        DbConn::Pg(c) => c,
        DbConn::Sqlite(_) => return Err("not a PostgreSQL database".into()),
    };
    // Named, for an operator reading pg_stat_activity.
    conn.batch_execute(&format!(
        "SET application_name = '{APPLICATION_NAME}'; LISTEN {CHANNEL}"
    ))
    .map_err(|e| e.to_string())?;
    if after_failure {
        tracing::info!("listening again to the database's notifications of changed rights");
        to.changed_all();
    }
    let mut checked = Instant::now();
    while !to.is_closed() {
        for n in conn.notifications_iter() {
            let n = n.map_err(|e| e.to_string())?;
            to.changed(&n.payload);
        }
        if checked.elapsed() >= CHECK_EVERY {
            diesel::sql_query("SELECT 1")
                .execute(&mut conn)
                .map_err(|e| e.to_string())?;
            checked = Instant::now();
        }
        std::thread::sleep(LISTEN_TICK);
    }
    Ok(())
}
