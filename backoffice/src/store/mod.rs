//! Storage behind functions: every function takes a connection and speaks domain types.

pub mod auth;
pub mod capability;
pub mod catalog;
pub mod links;
pub mod mappings;
pub mod registry;
pub mod servers;
pub mod tokens;
pub mod usage;

use diesel::prelude::*;

use crate::db::DbConn;
use crate::error::{AppError, AppResult};
use crate::schema::accounts;

pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Serialises registry writers of one account on both backends: the first statement of the
/// transaction is a write to the account's row, which takes PostgreSQL's row lock and
/// SQLite's write lock before anything is read. Every change of an account's rights is
/// such a write: on PostgreSQL it also tells every back-office process, once committed
/// ([`links::announce`]), so that they wake the account's live links.
pub fn lock_account(conn: &mut DbConn, account_id: &str) -> AppResult<()> {
    let n = diesel::update(accounts::table.find(account_id))
        .set(accounts::lock_version.eq(accounts::lock_version + 1))
        .execute(conn)?;
    if n == 0 {
        return Err(AppError::not_found("account"));
    }
    links::announce(conn, account_id)
}

/// Whether a diesel error is a unique-constraint violation.
pub fn is_unique_violation(e: &diesel::result::Error) -> bool {
    matches!(
        e,
        diesel::result::Error::DatabaseError(diesel::result::DatabaseErrorKind::UniqueViolation, _)
    )
}

/// Maps a unique violation to `on_conflict`, anything else as usual.
pub fn unique_or(e: diesel::result::Error, on_conflict: impl FnOnce() -> AppError) -> AppError {
    if is_unique_violation(&e) {
        on_conflict()
    } else {
        e.into()
    }
}

pub fn sha256_hex(input: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(input.as_bytes());
    let mut s = String::with_capacity(64);
    for b in digest {
        use std::fmt::Write;
        let _ = write!(s, "{b:02x}");
    }
    s
}
