//! Who gets in: signing in, changing a password, adding administrators and users. The API
//! and the portal share these flows, so both are throttled alike (see
//! [`crate::domain::throttle`]) and both hash on the bounded pool (see [`crate::passwords`]).

use std::net::IpAddr;

use crate::domain::throttle::{Key, NewLock};
use crate::domain::validate;
use crate::error::{AppError, AppResult};
use crate::passwords::DUMMY_HASH;
use crate::state::{AppState, run};
use crate::store::auth::{self, Admin, Principal, Session, User};

/// How a sign-in's e-mail address is compared: trimmed, lower-case, at most 254 bytes.
fn normalise(email: &str) -> String {
    let mut e = email.trim().to_ascii_lowercase();
    e.truncate(254);
    e
}

fn keys(email: &str, from: Option<IpAddr>) -> Vec<Key> {
    let mut keys = vec![Key::Account(normalise(email))];
    keys.extend(from.map(Key::Address));
    keys
}

/// Refuses at once, without looking at the password, while a key is locked.
fn check_throttle(state: &AppState, keys: &[Key]) -> AppResult<()> {
    state
        .throttle
        .lock()
        .check(keys, now_ms())
        .map_err(|wait_ms| {
            // In whole seconds, rounded up: trying again then is never too early.
            let wait = wait_ms.unsigned_abs().div_ceil(1000);
            AppError::too_many_requests(
                format!(
                    "too many failed sign-ins for this account or from this address; try again in \
                 {wait} s"
                ),
                wait,
            )
        })
}

/// The throttle's clock: milliseconds since the Unix epoch.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn count_failure(state: &AppState, keys: &[Key]) {
    let locks = state.throttle.lock().failed(keys, now_ms());
    for NewLock {
        key,
        failures,
        lock,
    } in locks
    {
        tracing::warn!(
            %key,
            failures,
            locked_for_ms = lock,
            "repeated failed sign-ins: locked; each further failure doubles the lock (this \
             burst is reported once)"
        );
    }
}

fn wrong_credentials() -> AppError {
    AppError::unauthorized("wrong e-mail or password")
}

/// Signs in an administrator or an account user.
pub async fn sign_in(
    state: &AppState,
    email: &str,
    password: &str,
    from: Option<IpAddr>,
) -> AppResult<Session> {
    let keys = keys(email, from);
    check_throttle(state, &keys)?;
    if email.len() > 254 || password.len() > 256 {
        count_failure(state, &keys);
        return Err(wrong_credentials());
    }
    // A place on the hashing pool first: a flood is refused before it costs anything.
    let slot = state.hasher.reserve()?;
    let normalised = normalise(email);
    let found = run(state, move |c| auth::credentials(c, &normalised)).await?;
    // An unknown address costs the same as a known one: timing does not tell who exists.
    let hash = found
        .as_ref()
        .map_or(DUMMY_HASH, |f| f.password_hash.as_str())
        .to_owned();
    let matches = slot.verify(password.to_owned(), hash).await?;
    let Some(found) = found.filter(|_| matches) else {
        count_failure(state, &keys);
        return Err(wrong_credentials());
    };
    state.throttle.lock().succeeded(&keys);
    let lifetime = state.session_lifetime();
    run(state, move |c| {
        auth::create_session(c, &found.principal, lifetime)
    })
    .await
}

/// Changes the signed-in principal's own password, given the current one. Every other
/// session of theirs ends; `keep` (the asking session's token) goes on.
pub async fn change_password(
    state: &AppState,
    who: Principal,
    email: &str,
    current: &str,
    new: &str,
    from: Option<IpAddr>,
    keep: String,
) -> AppResult<()> {
    validate::password(new).map_err(|e| AppError::from(e).with_field("new_password"))?;
    let keys = keys(email, from);
    check_throttle(state, &keys)?;
    let slot = state.hasher.reserve()?;
    let p = who.clone();
    let hash = run(state, move |c| auth::password_hash(c, &p)).await?;
    if current.len() > 256 || !slot.verify(current.to_owned(), hash).await? {
        count_failure(state, &keys);
        return Err(
            AppError::unauthorized("the current password is wrong").with_field("current_password")
        );
    }
    state.throttle.lock().succeeded(&keys);
    let hash = state.hasher.hash(new.to_owned()).await?;
    run(state, move |c| {
        auth::set_password(c, &who, &hash, Some(&keep))
    })
    .await
}

/// Adds a producer administrator.
pub async fn add_admin(state: &AppState, email: &str, password: &str) -> AppResult<Admin> {
    let email = validate::email(email)?;
    validate::password(password)?;
    let hash = state.hasher.hash(password.to_owned()).await?;
    run(state, move |c| auth::create_admin(c, &email, &hash)).await
}

/// Adds a user to a customer account.
pub async fn add_user(
    state: &AppState,
    account_id: String,
    email: &str,
    password: &str,
) -> AppResult<User> {
    let email = validate::email(email)?;
    validate::password(password)?;
    let hash = state.hasher.hash(password.to_owned()).await?;
    run(state, move |c| {
        auth::create_user(c, &account_id, &email, &hash)
    })
    .await
}
