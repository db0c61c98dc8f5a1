//! Storage connections: SQLite (embedded default) or PostgreSQL, chosen by URL scheme.

use std::path::Path;
use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::r2d2::{self, ManageConnection};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use crate::files;

const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations/sqlite");
const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations/postgres");

/// One connection type over both backends: queries are written once.
#[derive(diesel::MultiConnection)]
pub enum DbConn {
    Sqlite(SqliteConnection),
    Pg(PgConnection),
}

impl DbConn {
    /// A transaction that writes; nested in another, a savepoint.
    ///
    /// On SQLite it begins with `BEGIN IMMEDIATE`, taking the write lock before its first
    /// read. A plain (deferred) transaction that reads and then writes cannot wait for the
    /// lock when another connection wrote meanwhile: SQLite answers `database is locked` at
    /// once, whatever the busy timeout, and the request would fail with `UNAVAILABLE`.
    /// Taking the lock first, it waits its turn instead. PostgreSQL needs nothing of this.
    pub fn write_transaction<T, E, F>(&mut self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut DbConn) -> Result<T, E>,
        E: From<diesel::result::Error>,
    {
        use diesel::connection::{AnsiTransactionManager, TransactionManager};
        let DbConn::Sqlite(c) = self else {
            return self.transaction(f);
        };
        if AnsiTransactionManager::transaction_manager_status_mut(c)
            .transaction_depth()?
            .is_some()
        {
            return self.transaction(f);
        }
        AnsiTransactionManager::begin_transaction_sql(c, "BEGIN IMMEDIATE")?;
        type Manager = <DbConn as Connection>::TransactionManager;
        match f(self) {
            Ok(value) => {
                Manager::commit_transaction(self)?;
                Ok(value)
            }
            Err(e) => match Manager::rollback_transaction(self) {
                Ok(()) | Err(diesel::result::Error::BrokenTransactionManager) => Err(e),
                Err(rollback) => Err(rollback.into()),
            },
        }
    }
}

/// Runs a query on the backend's own connection type: `on_backend!(conn, |c| query.load(c))`.
///
/// Through the multi-backend [`DbConn`], diesel walks the query twice more on every call to
/// find its cached statement (a third of a small lookup's cost on SQLite); on the backend's
/// own connection the statement is found by the query's type. For the hot paths.
#[macro_export]
macro_rules! on_backend {
    ($conn:expr, |$c:ident| $body:expr) => {
        match $conn {
            $crate::db::DbConn::Sqlite($c) => $body,
            $crate::db::DbConn::Pg($c) => $body,
        }
    };
}

/// Which backend a database URL names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, thiserror::Error)]
pub enum DbSetupError {
    #[error("DATABASE_URL must start with sqlite:// or postgres:// (got scheme `{0}`)")]
    UnknownScheme(String),
    #[error("cannot open the database: {0}")]
    Connect(String),
    #[error("cannot run migrations: {0}")]
    Migrate(String),
}

impl Backend {
    /// The backend from the URL scheme, and the string the driver takes.
    pub fn from_url(url: &str) -> Result<(Backend, String), DbSetupError> {
        if let Some(path) = url.strip_prefix("sqlite://") {
            Ok((Backend::Sqlite, path.to_owned()))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok((Backend::Postgres, url.to_owned()))
        } else {
            let scheme = url.split(':').next().unwrap_or_default();
            Err(DbSetupError::UnknownScheme(
                scheme.chars().take(20).collect(),
            ))
        }
    }
}

/// An r2d2 manager that opens the backend named by the URL, never by trial.
#[derive(Debug)]
pub struct Manager {
    backend: Backend,
    target: String,
}

impl ManageConnection for Manager {
    type Connection = DbConn;
    type Error = r2d2::Error;

    fn connect(&self) -> Result<DbConn, r2d2::Error> {
        match self.backend {
            Backend::Sqlite => {
                let mut c = SqliteConnection::establish(&self.target)
                    .map_err(r2d2::Error::ConnectionError)?;
                // First the wait for a lock (so that nothing after fails on one), then WAL for
                // concurrent readers (kept in the file: only the first connection changes it).
                c.batch_execute(
                    "PRAGMA busy_timeout = 10000; PRAGMA journal_mode = WAL; \
                     PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
                )
                .map_err(r2d2::Error::QueryError)?;
                Ok(DbConn::Sqlite(c))
            }
            Backend::Postgres => PgConnection::establish(&self.target)
                .map(DbConn::Pg)
                .map_err(r2d2::Error::ConnectionError),
        }
    }

    fn is_valid(&self, conn: &mut DbConn) -> Result<(), r2d2::Error> {
        conn.batch_execute("SELECT 1")
            .map_err(r2d2::Error::QueryError)
    }

    /// A connection whose transaction state is unknown (PostgreSQL reports that once its
    /// server is gone) is dropped rather than given out again.
    fn has_broken(&self, conn: &mut DbConn) -> bool {
        use diesel::r2d2::R2D2Connection;
        std::thread::panicking() || conn.is_broken()
    }
}

pub type Pool = r2d2::Pool<Manager>;

/// Opens the pool and applies pending migrations. An SQLite file is created for its owner
/// only (its `-wal` and `-shm` files follow its mode), and made so if it was more open.
pub fn connect(url: &str, size: u32) -> Result<(Pool, Backend), DbSetupError> {
    let (backend, target) = Backend::from_url(url)?;
    if backend == Backend::Sqlite {
        private_sqlite_files(Path::new(&target))?;
    }
    let manager = Manager { backend, target };
    // One connection first: it switches a new file to WAL and migrates, alone, before the
    // pool opens its connections (which would otherwise queue on the same write lock).
    let mut first = manager
        .connect()
        .map_err(|e| DbSetupError::Connect(e.to_string()))?;
    migrate(&mut first)?;
    drop(first);
    let pool = r2d2::Pool::builder()
        .max_size(size)
        // No `SELECT 1` at every checkout (a round trip per request on PostgreSQL): a
        // connection that died with its server fails its next statement, which answers
        // `UNAVAILABLE`, and is then dropped (`has_broken`); SQLite's never die.
        .test_on_check_out(false)
        .connection_timeout(Duration::from_secs(10))
        .build(manager)
        .map_err(|e| DbSetupError::Connect(e.to_string()))?;
    Ok((pool, backend))
}

fn private_sqlite_files(db: &Path) -> Result<(), DbSetupError> {
    let setup = |e: std::io::Error| DbSetupError::Connect(format!("{}: {e}", db.display()));
    if let Some(parent) = db.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent).map_err(setup)?;
    }
    files::private_file(db).map_err(setup)?;
    for suffix in ["-wal", "-shm"] {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        files::restrict_if_present(Path::new(&p), 0o600).map_err(setup)?;
    }
    Ok(())
}

/// One connection outside the pool (SQLite's writer keeps one of its own).
pub fn open(url: &str) -> Result<DbConn, DbSetupError> {
    let (backend, target) = Backend::from_url(url)?;
    Manager { backend, target }
        .connect()
        .map_err(|e| DbSetupError::Connect(e.to_string()))
}

/// Applies pending migrations of the connection's backend; returns how many ran.
pub fn migrate(conn: &mut DbConn) -> Result<usize, DbSetupError> {
    let ran = match conn {
        DbConn::Sqlite(c) => c.run_pending_migrations(SQLITE_MIGRATIONS).map(|v| v.len()),
        DbConn::Pg(c) => c
            .run_pending_migrations(POSTGRES_MIGRATIONS)
            .map(|v| v.len()),
    };
    ran.map_err(|e| DbSetupError::Migrate(e.to_string()))
}

/// Fresh databases for the storage unit tests, one of each backend they run on.
#[cfg(test)]
pub(crate) mod testing {
    use diesel::{Connection, PgConnection, RunQueryDsl};

    /// A database of its own, removed when dropped.
    pub struct TestDb {
        pub url: String,
        /// PostgreSQL: the server's URL and the database's name.
        pg: Option<(String, String)>,
    }

    impl Drop for TestDb {
        fn drop(&mut self) {
            match &self.pg {
                Some((admin, name)) => {
                    if let Ok(mut c) = PgConnection::establish(admin) {
                        let _ = diesel::sql_query(format!(
                            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                        ))
                        .execute(&mut c);
                    }
                }
                None => {
                    let path = self.url.trim_start_matches("sqlite://");
                    for suffix in ["", "-wal", "-shm"] {
                        let _ = std::fs::remove_file(format!("{path}{suffix}"));
                    }
                }
            }
        }
    }

    /// SQLite always; PostgreSQL when `TEST_POSTGRES_URL` names a server whose role may
    /// create databases (in CI a missing one fails the run instead of skipping).
    pub fn databases() -> Vec<TestDb> {
        let tag = uuid::Uuid::new_v4().simple().to_string();
        let path = std::env::temp_dir().join(format!("bo-test-{tag}.db"));
        let mut out = vec![TestDb {
            url: format!("sqlite://{}", path.display()),
            pg: None,
        }];
        match std::env::var("TEST_POSTGRES_URL") {
            Ok(admin) if !admin.is_empty() => {
                let name = format!("t_{tag}");
                let mut c = PgConnection::establish(&admin).expect("TEST_POSTGRES_URL connects");
                diesel::sql_query(format!("CREATE DATABASE {name}"))
                    .execute(&mut c)
                    .expect("the test role may create databases");
                let (base, _) = admin.rsplit_once('/').expect("URL ends with /DATABASE");
                out.push(TestDb {
                    url: format!("{base}/{name}"),
                    pg: Some((admin.clone(), name)),
                });
            }
            _ if std::env::var("CI").is_ok_and(|c| c == "true" || c == "1") => {
                panic!("CI must run the storage tests on PostgreSQL too: set TEST_POSTGRES_URL")
            }
            _ => {}
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_is_chosen_by_scheme() {
        assert_eq!(
            Backend::from_url("sqlite:///tmp/x.db").unwrap(),
            (Backend::Sqlite, "/tmp/x.db".into())
        );
        assert_eq!(
            Backend::from_url("postgres://u@h/db").unwrap().0,
            Backend::Postgres
        );
        assert!(matches!(
            Backend::from_url("mysql://x"),
            Err(DbSetupError::UnknownScheme(s)) if s == "mysql"
        ));
    }
}
