//! Device tokens: what license servers authenticate to the back office with
//! (`Authorization: Bearer dt_ID.SECRET`). The secret is shown once and stored hashed.

use diesel::prelude::*;
use serde::Serialize;
use utoipa::ToSchema;

use super::{new_id, sha256_hex};
use crate::db::DbConn;
use crate::domain::validate;
use crate::error::{AppError, AppResult};
use crate::schema::{accounts, device_tokens};

/// A device token, without its secret.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, ToSchema)]
pub struct DeviceToken {
    pub id: String,
    pub account_id: String,
    #[schema(example = "Berlin servers")]
    pub name: String,
    /// Unix time, seconds.
    #[schema(format = Int64, minimum = 0, example = 1798366799)]
    pub created_at: i64,
    /// Unix time, seconds; absent for a token that does not expire.
    #[schema(format = Int64, minimum = 0, example = 1829902799)]
    pub expires_at: Option<i64>,
    /// Unix time, seconds; absent while the token is valid.
    #[schema(format = Int64, minimum = 0, example = 1798453199)]
    pub revoked_at: Option<i64>,
}

/// A device token just created, with its secret: shown this once.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, ToSchema)]
pub struct IssuedToken {
    #[serde(flatten)]
    pub device_token: DeviceToken,
    /// The bearer token, `dt_ID.SECRET`: stored only hashed, never shown again.
    #[serde(rename = "token")]
    #[schema(
        example = "dt_3f1c9a0e-8d2b-4b7e-9a51-2c6f0e7d4b13.Zm9vYmFyYmF6cXV4cXV1eHF1dXhxdXV4cXV1eA"
    )]
    pub secret: String,
}

/// Longest lifetime of a device token, in days.
pub const MAX_DAYS: i64 = 3650;

/// Creates a device token living `expires_in_days` (1 to [`MAX_DAYS`]; forever when
/// absent). The secret is returned once and stored hashed.
pub fn create_device_token(
    conn: &mut DbConn,
    account_id: &str,
    name: &str,
    expires_in_days: Option<i64>,
) -> AppResult<IssuedToken> {
    let name = validate::name("name", name)?;
    if expires_in_days.is_some_and(|d| !(1..=MAX_DAYS).contains(&d)) {
        return Err(AppError::validation(
            "expires_in_days",
            format!("a token lives 1 to {MAX_DAYS} days"),
        ));
    }
    let lifetime = expires_in_days.map(|d| d * 86_400);
    let exists: i64 = accounts::table.find(account_id).count().get_result(conn)?;
    if exists == 0 {
        return Err(AppError::not_found("account"));
    }
    let now = shared::now_unix();
    let id = new_id();
    let secret = shared::random_token::<32>();
    let token = DeviceToken {
        id: id.clone(),
        account_id: account_id.to_owned(),
        name,
        created_at: now,
        expires_at: lifetime.map(|l| now + l),
        revoked_at: None,
    };
    diesel::insert_into(device_tokens::table)
        .values((
            device_tokens::id.eq(&token.id),
            device_tokens::account_id.eq(&token.account_id),
            device_tokens::name.eq(&token.name),
            device_tokens::secret_hash.eq(sha256_hex(&secret)),
            device_tokens::created_at.eq(now),
            device_tokens::expires_at.eq(token.expires_at),
        ))
        .execute(conn)?;
    Ok(IssuedToken {
        device_token: token,
        secret: format!("dt_{id}.{secret}"),
    })
}

type TokenRow = (String, String, String, i64, Option<i64>, Option<i64>);

fn token_from(row: TokenRow) -> DeviceToken {
    let (id, account_id, name, created_at, expires_at, revoked_at) = row;
    DeviceToken {
        id,
        account_id,
        name,
        created_at,
        expires_at,
        revoked_at,
    }
}

pub fn list_device_tokens(conn: &mut DbConn, account_id: &str) -> AppResult<Vec<DeviceToken>> {
    let rows: Vec<TokenRow> = device_tokens::table
        .filter(device_tokens::account_id.eq(account_id))
        .select((
            device_tokens::id,
            device_tokens::account_id,
            device_tokens::name,
            device_tokens::created_at,
            device_tokens::expires_at,
            device_tokens::revoked_at,
        ))
        .order(device_tokens::created_at.desc())
        .load(conn)?;
    Ok(rows.into_iter().map(token_from).collect())
}

pub fn revoke_device_token(conn: &mut DbConn, account_id: &str, id: &str) -> AppResult<()> {
    let n = diesel::update(
        device_tokens::table
            .filter(device_tokens::id.eq(id))
            .filter(device_tokens::account_id.eq(account_id))
            .filter(device_tokens::revoked_at.is_null()),
    )
    .set(device_tokens::revoked_at.eq(shared::now_unix()))
    .execute(conn)?;
    if n == 0 {
        return Err(AppError::not_found("device token"));
    }
    Ok(())
}

/// The account a device token (`dt_ID.SECRET`) belongs to, if it is valid.
pub fn authenticate_device(conn: &mut DbConn, bearer: &str) -> AppResult<String> {
    authenticate_devices(conn, &[bearer])?
        .pop()
        .unwrap_or_else(|| Err(unknown_device()))
}

fn unknown_device() -> AppError {
    AppError::unauthorized("missing, unknown, expired or revoked device token")
}

/// `dt_ID.SECRET` → (ID, SECRET).
fn split_device_token(bearer: &str) -> Option<(&str, &str)> {
    bearer
        .strip_prefix("dt_")
        .and_then(|s| s.split_once('.'))
        .filter(|(id, _)| id.len() <= 64)
}

/// The accounts device tokens belong to, each checked on its own, in one query for all.
pub fn authenticate_devices(
    conn: &mut DbConn,
    bearers: &[&str],
) -> AppResult<Vec<AppResult<String>>> {
    let split: Vec<Option<(&str, &str)>> = bearers.iter().map(|b| split_device_token(b)).collect();
    let mut ids: Vec<&str> = split.iter().flatten().map(|(id, _)| *id).collect();
    ids.sort_unstable();
    ids.dedup();
    if ids.is_empty() {
        return Ok(bearers.iter().map(|_| Err(unknown_device())).collect());
    }
    // On the backend's own connection (every capability request comes here).
    type Row = (String, String, String, Option<i64>, Option<i64>);
    let rows: Vec<Row> = crate::on_backend!(conn, |c| device_tokens::table
        .filter(device_tokens::id.eq_any(&ids))
        .select((
            device_tokens::id,
            device_tokens::account_id,
            device_tokens::secret_hash,
            device_tokens::expires_at,
            device_tokens::revoked_at,
        ))
        .load(c))?;
    let now = shared::now_unix();
    Ok(split
        .into_iter()
        .map(|parts| {
            let (id, secret) = parts.ok_or_else(unknown_device)?;
            let (_, account_id, hash, expires_at, revoked_at) =
                rows.iter().find(|r| r.0 == id).ok_or_else(unknown_device)?;
            let digest = sha256_hex(secret);
            let same = digest.len() == hash.len()
                && digest
                    .bytes()
                    .zip(hash.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0;
            if !same || revoked_at.is_some() || expires_at.is_some_and(|e| e <= now) {
                return Err(unknown_device());
            }
            Ok(account_id.clone())
        })
        .collect())
}

/// Deletes every device token of an account (the account being deleted).
pub(super) fn delete_account_tokens(conn: &mut DbConn, account_id: &str) -> AppResult<()> {
    diesel::delete(device_tokens::table.filter(device_tokens::account_id.eq(account_id)))
        .execute(conn)?;
    Ok(())
}
