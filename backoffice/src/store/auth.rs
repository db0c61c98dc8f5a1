//! Administrators, account users, their password hashes and their sessions. Hashing is not
//! done here (see `crate::passwords`): these functions store and return hashes.

use diesel::prelude::*;
use serde::Serialize;
use utoipa::ToSchema;

use super::{new_id, sha256_hex, unique_or};
use crate::db::DbConn;
use crate::error::{AppError, AppResult};
use crate::schema::{accounts, admins, sessions, users};

/// Who a session belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    Admin { admin_id: String },
    User { user_id: String, account_id: String },
}

/// What a sign-in is checked against.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub principal: Principal,
    pub password_hash: String,
}

/// A new session, as `POST /api/v1/auth/login` answers it.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Session {
    /// The bearer token: `Authorization: Bearer TOKEN`.
    pub token: String,
    /// `admin` (a producer administrator) or `user` (a customer account's user).
    #[schema(example = "user")]
    pub kind: &'static str,
    /// The account of a user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    /// When the session ends (Unix time, seconds).
    #[schema(format = Int64, minimum = 0, example = 1798409999)]
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

/// The administrator or user with `email` (already normalised), with the password hash.
pub fn credentials(conn: &mut DbConn, email: &str) -> AppResult<Option<Credentials>> {
    let admin: Option<(String, String)> = admins::table
        .filter(admins::email.eq(email))
        .select((admins::id, admins::password_hash))
        .first(conn)
        .optional()?;
    if let Some((admin_id, password_hash)) = admin {
        return Ok(Some(Credentials {
            principal: Principal::Admin { admin_id },
            password_hash,
        }));
    }
    let user: Option<(String, String, String)> = users::table
        .filter(users::email.eq(email))
        .select((users::id, users::account_id, users::password_hash))
        .first(conn)
        .optional()?;
    Ok(
        user.map(|(user_id, account_id, password_hash)| Credentials {
            principal: Principal::User {
                user_id,
                account_id,
            },
            password_hash,
        }),
    )
}

/// The password hash of a principal (to check the current password before a change).
pub fn password_hash(conn: &mut DbConn, who: &Principal) -> AppResult<String> {
    let hash = match who {
        Principal::Admin { admin_id } => admins::table
            .find(admin_id)
            .select(admins::password_hash)
            .first(conn)
            .optional()?,
        Principal::User { user_id, .. } => users::table
            .find(user_id)
            .select(users::password_hash)
            .first(conn)
            .optional()?,
    };
    hash.ok_or_else(|| AppError::not_found("user"))
}

/// Stores a new password hash and ends every session of the principal but `keep` (the
/// token of the session that asked, if any).
pub fn set_password(
    conn: &mut DbConn,
    who: &Principal,
    hash: &str,
    keep: Option<&str>,
) -> AppResult<()> {
    conn.write_transaction::<_, AppError, _>(|c| {
        let n = match who {
            Principal::Admin { admin_id } => diesel::update(admins::table.find(admin_id))
                .set(admins::password_hash.eq(hash))
                .execute(c)?,
            Principal::User { user_id, .. } => diesel::update(users::table.find(user_id))
                .set(users::password_hash.eq(hash))
                .execute(c)?,
        };
        if n == 0 {
            return Err(AppError::not_found("user"));
        }
        let keep = keep.map(sha256_hex).unwrap_or_default();
        let others = sessions::token_hash.ne(&keep);
        match who {
            Principal::Admin { admin_id } => diesel::delete(
                sessions::table
                    .filter(sessions::admin_id.eq(admin_id))
                    .filter(others),
            )
            .execute(c)?,
            Principal::User { user_id, .. } => diesel::delete(
                sessions::table
                    .filter(sessions::user_id.eq(user_id))
                    .filter(others),
            )
            .execute(c)?,
        };
        Ok(())
    })
}

/// Starts a session for a principal whose password has been checked.
pub fn create_session(
    conn: &mut DbConn,
    principal: &Principal,
    lifetime: i64,
) -> AppResult<Session> {
    let token = shared::random_token::<32>();
    let csrf = shared::random_token::<24>();
    let now = shared::now_unix();
    let (admin_id, user_id, account_id, kind) = match principal {
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

fn email_taken() -> AppError {
    AppError::already_exists("email", "that e-mail address is taken")
}

/// Whether any administrator or user has `email`.
fn email_in_use(conn: &mut DbConn, email: &str) -> AppResult<bool> {
    let admins: i64 = admins::table
        .filter(admins::email.eq(email))
        .count()
        .get_result(conn)?;
    let users: i64 = users::table
        .filter(users::email.eq(email))
        .count()
        .get_result(conn)?;
    Ok(admins + users > 0)
}

/// A producer administrator.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, ToSchema)]
pub struct Admin {
    pub id: String,
    #[schema(example = "admin@example.com")]
    pub email: String,
    /// Unix time, seconds.
    #[schema(format = Int64, minimum = 0, example = 1798366799)]
    pub created_at: i64,
}

/// Whether there is any administrator.
pub fn has_admin(conn: &mut DbConn) -> AppResult<bool> {
    let n: i64 = admins::table.count().get_result(conn)?;
    Ok(n > 0)
}

/// Adds an administrator; `email` validated and normalised, `password_hash` made by the
/// caller.
pub fn create_admin(conn: &mut DbConn, email: &str, password_hash: &str) -> AppResult<Admin> {
    let admin = Admin {
        id: new_id(),
        email: email.to_owned(),
        created_at: shared::now_unix(),
    };
    conn.write_transaction::<_, AppError, _>(|c| {
        if email_in_use(c, email)? {
            return Err(email_taken());
        }
        diesel::insert_into(admins::table)
            .values((
                admins::id.eq(&admin.id),
                admins::email.eq(&admin.email),
                admins::password_hash.eq(password_hash),
                admins::created_at.eq(admin.created_at),
            ))
            .execute(c)
            .map_err(|e| unique_or(e, email_taken))?;
        Ok(())
    })?;
    Ok(admin)
}

pub fn list_admins(conn: &mut DbConn) -> AppResult<Vec<Admin>> {
    let rows: Vec<(String, String, i64)> = admins::table
        .select((admins::id, admins::email, admins::created_at))
        .order(admins::email)
        .load(conn)?;
    Ok(rows
        .into_iter()
        .map(|(id, email, created_at)| Admin {
            id,
            email,
            created_at,
        })
        .collect())
}

/// A customer account's user.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, ToSchema)]
pub struct User {
    pub id: String,
    pub account_id: String,
    #[schema(example = "ops@customer.example")]
    pub email: String,
    /// Unix time, seconds.
    #[schema(format = Int64, minimum = 0, example = 1798366799)]
    pub created_at: i64,
}

/// Adds a user to an account; `email` validated and normalised, `password_hash` made by
/// the caller.
pub fn create_user(
    conn: &mut DbConn,
    account_id: &str,
    email: &str,
    password_hash: &str,
) -> AppResult<User> {
    let user = User {
        id: new_id(),
        account_id: account_id.to_owned(),
        email: email.to_owned(),
        created_at: shared::now_unix(),
    };
    conn.write_transaction::<_, AppError, _>(|c| {
        let exists: i64 = accounts::table.find(account_id).count().get_result(c)?;
        if exists == 0 {
            return Err(AppError::not_found("account"));
        }
        if email_in_use(c, email)? {
            return Err(email_taken());
        }
        diesel::insert_into(users::table)
            .values((
                users::id.eq(&user.id),
                users::account_id.eq(&user.account_id),
                users::email.eq(&user.email),
                users::password_hash.eq(password_hash),
                users::created_at.eq(user.created_at),
            ))
            .execute(c)
            .map_err(|e| unique_or(e, email_taken))?;
        Ok(())
    })?;
    Ok(user)
}

/// A user's columns, as [`to_user`] reads them.
const USER: (
    users::id,
    users::account_id,
    users::email,
    users::created_at,
) = (
    users::id,
    users::account_id,
    users::email,
    users::created_at,
);

fn to_user((id, account_id, email, created_at): (String, String, String, i64)) -> User {
    User {
        id,
        account_id,
        email,
        created_at,
    }
}

pub fn list_users(conn: &mut DbConn, account_id: &str) -> AppResult<Vec<User>> {
    let rows: Vec<(String, String, String, i64)> = users::table
        .filter(users::account_id.eq(account_id))
        .select(USER)
        .order(users::email)
        .load(conn)?;
    Ok(rows.into_iter().map(to_user).collect())
}

/// One of the account's users, or `NOT_FOUND` (another account's user is not found).
fn account_user(conn: &mut DbConn, account_id: &str, user_id: &str) -> AppResult<User> {
    users::table
        .filter(users::id.eq(user_id))
        .filter(users::account_id.eq(account_id))
        .select(USER)
        .first(conn)
        .optional()?
        .map(to_user)
        .ok_or_else(|| AppError::not_found("user"))
}

/// Changes an account user's e-mail address (validated and normalised here). The user's
/// sessions go on: they are the same person.
pub fn update_user_email(
    conn: &mut DbConn,
    account_id: &str,
    user_id: &str,
    email: &str,
) -> AppResult<User> {
    let email = crate::domain::validate::email(email)?;
    conn.write_transaction::<_, AppError, _>(|c| {
        let user = account_user(c, account_id, user_id)?;
        if user.email == email {
            return Ok(user);
        }
        if email_in_use(c, &email)? {
            return Err(email_taken());
        }
        diesel::update(users::table.find(user_id))
            .set(users::email.eq(&email))
            .execute(c)
            .map_err(|e| unique_or(e, email_taken))?;
        Ok(User { email, ..user })
    })
}

/// Deletes an account user and ends its sessions.
pub fn delete_user(conn: &mut DbConn, account_id: &str, user_id: &str) -> AppResult<()> {
    conn.write_transaction::<_, AppError, _>(|c| {
        account_user(c, account_id, user_id)?;
        diesel::delete(sessions::table.filter(sessions::user_id.eq(user_id))).execute(c)?;
        diesel::delete(users::table.find(user_id)).execute(c)?;
        Ok(())
    })
}

/// Deletes every user of an account and ends their sessions (the account being deleted).
pub(super) fn delete_account_users(conn: &mut DbConn, account_id: &str) -> AppResult<()> {
    let of_account = users::table
        .filter(users::account_id.eq(account_id))
        .select(users::id.nullable());
    diesel::delete(
        sessions::table.filter(
            sessions::account_id
                .eq(account_id)
                .or(sessions::user_id.eq_any(of_account)),
        ),
    )
    .execute(conn)?;
    diesel::delete(users::table.filter(users::account_id.eq(account_id))).execute(conn)?;
    Ok(())
}
