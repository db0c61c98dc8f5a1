//! What an operator does at the console when access is lost: add a producer administrator,
//! or reset the password of an administrator or a user. The new password is generated and
//! returned for the caller to print once on stdout; it is never logged. A reset ends every
//! session of that person.

use anyhow::{Context, bail};

use crate::config::Settings;
use crate::db;
use crate::domain::validate;
use crate::passwords;
use crate::store::auth::{self, Principal};

/// A new random password: 24 characters (144 bits).
fn generate() -> String {
    shared::random_token::<18>()
}

/// The database, created (for its owner only) and migrated if need be.
fn connect(settings: &Settings) -> anyhow::Result<db::DbConn> {
    let url = settings.database_url();
    drop(db::connect(&url, 1).context("cannot open the database")?);
    Ok(db::open(&url)?)
}

/// Adds an administrator; returns the generated password.
pub fn add_admin(settings: &Settings, email: &str) -> anyhow::Result<String> {
    let email = validate::email(email).map_err(|e| anyhow::anyhow!("{}", e.message))?;
    let mut conn = connect(settings)?;
    let password = generate();
    let hash = passwords::hash_password(&password)?;
    auth::create_admin(&mut conn, &email, &hash).map_err(|e| match e.code() {
        shared::ErrorCode::AlreadyExists => anyhow::anyhow!(
            "{email} already has an account; `backoffice admin reset-password {email}` gives it \
             a new password"
        ),
        _ => anyhow::anyhow!("{e}"),
    })?;
    Ok(password)
}

/// Gives an administrator or a user a new password and ends their sessions; returns who it
/// was (`administrator` or `user`) and the generated password.
pub fn reset_password(settings: &Settings, email: &str) -> anyhow::Result<(&'static str, String)> {
    let email = email.trim().to_ascii_lowercase();
    let mut conn = connect(settings)?;
    let Some(found) = auth::credentials(&mut conn, &email).map_err(|e| anyhow::anyhow!("{e}"))?
    else {
        bail!("no administrator or user has the e-mail address {email}");
    };
    let password = generate();
    let hash = passwords::hash_password(&password)?;
    auth::set_password(&mut conn, &found.principal, &hash, None)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let who = match found.principal {
        Principal::Admin { .. } => "administrator",
        Principal::User { .. } => "user",
    };
    Ok((who, password))
}
