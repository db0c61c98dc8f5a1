//! Who is signed in to the portal: the session cookie's account user (an administrator is
//! sent back to sign in), and the CSRF rule of every form.

use std::future::Future;
use std::pin::Pin;

use actix_web::{FromRequest, HttpRequest, dev::Payload};
use shared::ErrorCode;

use super::cookies::{SESSION_COOKIE, safe_next, same_secret};
use super::errors::PortalError;
use super::layout::UserBar;
use crate::state::{State, run};
use crate::store::auth::{self, Principal};

/// The CSRF rule of every portal form: the hidden `csrf` field must equal the secret the
/// server holds for this browser (the session's token, or the sign-in cookie).
pub fn check_csrf(expected: &str, given: &str) -> Result<(), PortalError> {
    if same_secret(expected, given) {
        Ok(())
    } else {
        Err(PortalError::Forbidden(
            "This form was not sent from a page of this portal, or it is too old. Go back, \
             reload the page and try again."
                .to_owned(),
        ))
    }
}

/// A signed-in account user of the portal. Every handler passes `account_id` to the store,
/// which filters by it: nothing of another account is reachable.
#[derive(Clone, Debug)]
pub struct PortalUser {
    pub user_id: String,
    pub account_id: String,
    pub email: String,
    pub csrf_token: String,
    pub token: String,
}

impl PortalUser {
    pub fn check_csrf(&self, given: &str) -> Result<(), PortalError> {
        check_csrf(&self.csrf_token, given)
    }

    /// What the page frame shows of the user.
    pub fn bar(&self) -> UserBar {
        UserBar {
            email: self.email.clone(),
            csrf: self.csrf_token.clone(),
        }
    }
}

impl FromRequest for PortalUser {
    type Error = PortalError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, PortalError>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let next = (req.method() == actix_web::http::Method::GET)
                .then(|| safe_next(req.path()).map(str::to_owned))
                .flatten();
            let Some(token) = req.cookie(SESSION_COOKIE).map(|c| c.value().to_owned()) else {
                return Err(PortalError::SignIn {
                    expired: false,
                    next,
                });
            };
            if token.is_empty() || token.len() > 512 {
                return Err(PortalError::SignIn {
                    expired: false,
                    next,
                });
            }
            let state = req.app_data::<State>().cloned().ok_or_else(|| {
                PortalError::from(crate::error::AppError::internal(
                    "the application state is missing",
                ))
            })?;
            let t = token.clone();
            let info = match run(&state, move |c| auth::session(c, &t)).await {
                Ok(i) => i,
                Err(e) if e.code() == ErrorCode::Unauthorized => {
                    return Err(PortalError::SignIn {
                        expired: true,
                        next,
                    });
                }
                Err(e) => return Err(e.into()),
            };
            match info.principal {
                Principal::User {
                    user_id,
                    account_id,
                } => {
                    tracing::Span::current().record("account", account_id.as_str());
                    Ok(PortalUser {
                        user_id,
                        account_id,
                        email: info.email,
                        csrf_token: info.csrf_token,
                        token,
                    })
                }
                Principal::Admin { .. } => Err(PortalError::SignIn {
                    expired: false,
                    next: None,
                }),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csrf_needs_the_exact_token() {
        assert!(check_csrf("abc123", "abc123").is_ok());
        assert!(matches!(
            check_csrf("abc123", ""),
            Err(PortalError::Forbidden(_))
        ));
        assert!(check_csrf("abc123", "abc124").is_err());
        assert!(check_csrf("abc123", "abc1234").is_err());
        // An empty expected secret never matches (no session, no sign-in cookie).
        assert!(check_csrf("", "").is_err());
    }
}
