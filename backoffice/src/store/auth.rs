//! Administrators, account users, sessions and device tokens.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use diesel::prelude::*;
use serde::Serialize;
use shared::ErrorCode;
use shared::secret::Secret;

use super::{new_id, sha256_hex};
use crate::db::DbConn;
use crate::domain::validate;
use crate::error::{AppError, AppResult, is_unique_violation};
use crate::schema::{accounts, admins, device_tokens, sessions, users};

/// Hashes a password with Argon2id (memory-hard).
pub fn hash_password(password: &str) -> String {
    let salt =
        SaltString::encode_b64(&shared::random_bytes::<16>()).expect("16 bytes is a valid salt");
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 with default parameters cannot fail")
        .to_string()
}

fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// Creates the first producer administrator when there is none. Returns the generated
/// password when none was configured, for the caller to print once.
pub fn ensure_first_admin(
    conn: &mut DbConn,
    email: &str,
    password: Option<&Secret>,
) -> AppResult<Option<String>> {
    let count: i64 = admins::table.count().get_result(conn)?;
    if count > 0 {
        return Ok(None);
    }
    let email = validate::email(email)?;
    let (password, generated) = match password {
        Some(p) if !p.is_empty() => (p.expose().to_owned(), None),
        _ => {
            let p = shared::random_token::<18>();
            (p.clone(), Some(p))
        }
    };
    validate::password(&password)?;
    diesel::insert_into(admins::table)
        .values((
            admins::id.eq(new_id()),
            admins::email.eq(&email),
            admins::password_hash.eq(hash_password(&password)),
            admins::created_at.eq(shared::now_unix()),
        ))
        .execute(conn)?;
    Ok(generated)
}

/// Who a session belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    Admin { admin_id: String },
    User { user_id: String, account_id: String },
}

#[derive(Clone, Debug, Serialize)]
pub struct Session {
    pub token: String,
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    pub expires_at: i64,
    #[serde(skip)]
    pub csrf_token: String,
}

#[derive(Clone, Debug)]
pub struct SessionInfo {
    pub principal: Principal,
    pub csrf_token: String,
    pub email: String,
}

/// Signs in an administrator or an account user.
pub fn login(conn: &mut DbConn, email: &str, password: &str, lifetime: i64) -> AppResult<Session> {
    let email = email.trim().to_ascii_lowercase();
    let bad = || AppError::unauthorized("wrong e-mail or password");
    let admin: Option<(String, String)> = admins::table
        .filter(admins::email.eq(&email))
        .select((admins::id, admins::password_hash))
        .first(conn)
        .optional()?;
    let (principal, hash) = if let Some((id, hash)) = admin {
        (Principal::Admin { admin_id: id }, hash)
    } else {
        let user: Option<(String, String, String)> = users::table
            .filter(users::email.eq(&email))
            .select((users::id, users::account_id, users::password_hash))
            .first(conn)
            .optional()?;
        let (id, account_id, hash) = user.ok_or_else(|| {
            // Spend the same time as a real check so that timing does not tell who exists.
            let _ = verify_password(password, DUMMY_HASH);
            bad()
        })?;
        (
            Principal::User {
                user_id: id,
                account_id,
            },
            hash,
        )
    };
    if !verify_password(password, &hash) {
        return Err(bad());
    }
    let token = shared::random_token::<32>();
    let csrf = shared::random_token::<24>();
    let now = shared::now_unix();
    let (admin_id, user_id, account_id, kind) = match &principal {
        Principal::Admin { admin_id } => (Some(admin_id.clone()), None, None, "admin"),
        Principal::User {
            user_id,
            account_id,
        } => (
            None,
            Some(user_id.clone()),
            Some(account_id.clone()),
            "user",
        ),
    };
    diesel::insert_into(sessions::table)
        .values((
            sessions::token_hash.eq(sha256_hex(&token)),
            sessions::admin_id.eq(admin_id),
            sessions::user_id.eq(user_id),
            sessions::account_id.eq(&account_id),
            sessions::csrf_token.eq(&csrf),
            sessions::created_at.eq(now),
            sessions::expires_at.eq(now + lifetime),
        ))
        .execute(conn)?;
    Ok(Session {
        token,
        kind,
        account_id,
        expires_at: now + lifetime,
        csrf_token: csrf,
    })
}

const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$CTFhFdXPJO1aFaMaO6Mm5c8y7cJHAph8ArZWb2GRPPc";

/// The session behind a bearer token or cookie, if it is live.
pub fn session(conn: &mut DbConn, token: &str) -> AppResult<SessionInfo> {
    /// admin, user, account, CSRF token, expiry.
    type SessionRow = (Option<String>, Option<String>, Option<String>, String, i64);
    let row: Option<SessionRow> = sessions::table
        .filter(sessions::token_hash.eq(sha256_hex(token)))
        .select((
            sessions::admin_id,
            sessions::user_id,
            sessions::account_id,
            sessions::csrf_token,
            sessions::expires_at,
        ))
        .first(conn)
        .optional()?;
    let Some((admin_id, user_id, account_id, csrf_token, expires_at)) = row else {
        return Err(AppError::unauthorized(
            "not signed in, or the session was ended",
        ));
    };
    if expires_at <= shared::now_unix() {
        return Err(AppError::unauthorized(
            "the session has expired; sign in again",
        ));
    }
    let (principal, email) = match (admin_id, user_id, account_id) {
        (Some(admin_id), _, _) => {
            let email = admins::table
                .find(&admin_id)
                .select(admins::email)
                .first(conn)?;
            (Principal::Admin { admin_id }, email)
        }
        (None, Some(user_id), Some(account_id)) => {
            let email = users::table
                .find(&user_id)
                .select(users::email)
                .first(conn)?;
            (
                Principal::User {
                    user_id,
                    account_id,
                },
                email,
            )
        }
        _ => return Err(AppError::unauthorized("not signed in")),
    };
    Ok(SessionInfo {
        principal,
        csrf_token,
        email,
    })
}

pub fn logout(conn: &mut DbConn, token: &str) -> AppResult<()> {
    diesel::delete(sessions::table.filter(sessions::token_hash.eq(sha256_hex(token))))
        .execute(conn)?;
    Ok(())
}

/// Deletes expired sessions; returns how many.
pub fn purge_sessions(conn: &mut DbConn, now: i64) -> AppResult<usize> {
    Ok(diesel::delete(sessions::table.filter(sessions::expires_at.le(now))).execute(conn)?)
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct User {
    pub id: String,
    pub account_id: String,
    pub email: String,
    pub created_at: i64,
}

pub fn create_user(
    conn: &mut DbConn,
    account_id: &str,
    email: &str,
    password: &str,
) -> AppResult<User> {
    let email = validate::email(email)?;
    validate::password(password)?;
    let exists: i64 = accounts::table.find(account_id).count().get_result(conn)?;
    if exists == 0 {
        return Err(AppError::not_found("account"));
    }
    let taken: i64 = admins::table
        .filter(admins::email.eq(&email))
        .count()
        .get_result(conn)?;
    if taken > 0 {
        return Err(
            AppError::new(ErrorCode::AlreadyExists, "that e-mail is taken")
                .0
                .with_field("email")
                .into(),
        );
    }
    let user = User {
        id: new_id(),
        account_id: account_id.to_owned(),
        email,
        created_at: shared::now_unix(),
    };
    diesel::insert_into(users::table)
        .values((
            users::id.eq(&user.id),
            users::account_id.eq(&user.account_id),
            users::email.eq(&user.email),
            users::password_hash.eq(hash_password(password)),
            users::created_at.eq(user.created_at),
        ))
        .execute(conn)
        .map_err(|e| {
            if is_unique_violation(&e) {
                AppError(
                    shared::ErrorBody::new(ErrorCode::AlreadyExists, "that e-mail is taken")
                        .with_field("email"),
                )
            } else {
                e.into()
            }
        })?;
    Ok(user)
}

pub fn list_users(conn: &mut DbConn, account_id: &str) -> AppResult<Vec<User>> {
    let rows: Vec<(String, String, String, i64)> = users::table
        .filter(users::account_id.eq(account_id))
        .select((
            users::id,
            users::account_id,
            users::email,
            users::created_at,
        ))
        .order(users::email)
        .load(conn)?;
    Ok(rows
        .into_iter()
        .map(|(id, account_id, email, created_at)| User {
            id,
            account_id,
            email,
            created_at,
        })
        .collect())
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct DeviceToken {
    pub id: String,
    pub account_id: String,
    pub name: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

/// Creates a device token; the secret (`ID.SECRET`) is returned once and stored hashed.
pub fn create_device_token(
    conn: &mut DbConn,
    account_id: &str,
    name: &str,
    lifetime: Option<i64>,
) -> AppResult<(DeviceToken, String)> {
    let name = validate::name("name", name)?;
    if let Some(l) = lifetime
        && l <= 0
    {
        return Err(AppError::validation(
            "expires_in_days",
            "the lifetime must be positive",
        ));
    }
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
    Ok((token, format!("dt_{id}.{secret}")))
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
    let bad = || AppError::unauthorized("missing, unknown, expired or revoked device token");
    let (id, secret) = bearer
        .strip_prefix("dt_")
        .and_then(|s| s.split_once('.'))
        .ok_or_else(bad)?;
    if id.len() > 64 {
        return Err(bad());
    }
    // By primary key: `get_result` (no `LIMIT ?`, which SQLite re-prepares each time), on
    // the backend's own connection (every capability request comes here).
    let row: Option<(String, String, Option<i64>, Option<i64>)> =
        crate::on_backend!(conn, |c| device_tokens::table
            .find(id)
            .select((
                device_tokens::account_id,
                device_tokens::secret_hash,
                device_tokens::expires_at,
                device_tokens::revoked_at,
            ))
            .get_result(c)
            .optional())?;
    let (account_id, hash, expires_at, revoked_at) = row.ok_or_else(bad)?;
    let now = shared::now_unix();
    let digest = sha256_hex(secret);
    let same = digest.len() == hash.len()
        && digest
            .bytes()
            .zip(hash.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !same || revoked_at.is_some() || expires_at.is_some_and(|e| e <= now) {
        return Err(bad());
    }
    Ok(account_id)
}
