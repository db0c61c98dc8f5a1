//! The storage backends every storage test runs on, and a PostgreSQL database of its own
//! for each test (from `TEST_POSTGRES_URL`, which `scripts/test` sets).

use anyhow::{Context, Result};

/// The storage backends every storage test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// SQLite always; PostgreSQL when `TEST_POSTGRES_URL` names a server. In CI a missing
/// PostgreSQL fails the run instead of skipping.
pub fn backends() -> Vec<Backend> {
    let mut v = vec![Backend::Sqlite];
    if std::env::var("TEST_POSTGRES_URL").is_ok_and(|u| !u.is_empty()) {
        v.push(Backend::Postgres);
    } else if std::env::var("CI").is_ok_and(|c| c == "true" || c == "1") {
        panic!("CI must run the storage tests on PostgreSQL too: set TEST_POSTGRES_URL");
    } else {
        eprintln!("note: TEST_POSTGRES_URL unset, PostgreSQL runs skipped (scripts/test sets it)");
    }
    v
}

/// A PostgreSQL database of its own for one test, dropped afterwards.
pub struct PgDatabase {
    admin_url: String,
    name: String,
    pub url: String,
}

impl PgDatabase {
    pub fn create() -> Result<PgDatabase> {
        use diesel::{Connection, PgConnection, RunQueryDsl};
        let admin_url = std::env::var("TEST_POSTGRES_URL").context("TEST_POSTGRES_URL")?;
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let mut c = PgConnection::establish(&admin_url)?;
        diesel::sql_query(format!("CREATE DATABASE {name}")).execute(&mut c)?;
        let (base, _) = admin_url
            .rsplit_once('/')
            .context("TEST_POSTGRES_URL ends with /DATABASE")?;
        let url = format!("{base}/{name}");
        Ok(PgDatabase {
            admin_url,
            name,
            url,
        })
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        use diesel::{Connection, PgConnection, RunQueryDsl};
        if let Ok(mut c) = PgConnection::establish(&self.admin_url) {
            let _ = diesel::sql_query(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .execute(&mut c);
        }
    }
}
