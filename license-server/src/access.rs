//! Who may do what on the operator API (`/api/v1/admin/*`): the full token
//! (`ADMIN_TOKEN`) acts, the restricted one (`ADMIN_READONLY_TOKEN`) only reads, and the
//! server's remote-administration mode (`ADMIN_ACCESS`) caps both: `full` (the tokens
//! as they are), `restricted` (the full token acts as the restricted one) or `none` (the
//! operator API refuses everything; the pair's and the cluster members' own APIs, with
//! `PAIR_TOKEN`, are not affected). Pure rules: no HTTP here.
//!
//! Tokens are kept as their SHA-256 and compared in constant time (not even the length
//! leaks); a token shorter than [`MIN_TOKEN`] is refused at start.

use sha2::{Digest, Sha256};
use shared::secret::Secret;
use subtle::ConstantTimeEq;

/// Shortest operator token accepted (`ADMIN_TOKEN`, `ADMIN_READONLY_TOKEN`).
pub const MIN_TOKEN: usize = 16;

/// Longest bearer token looked at; longer ones are wrong.
const MAX_TOKEN: usize = 1024;

/// `ADMIN_ACCESS`: what the operator API allows at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AdminAccess {
    /// Each token as it is: the full one acts, the restricted one reads.
    #[default]
    Full,
    /// Reads only, whichever token.
    Restricted,
    /// Nothing.
    None,
}

impl AdminAccess {
    pub fn parse(value: &str) -> Result<AdminAccess, String> {
        match value.trim().to_ascii_lowercase().as_str() {
            "full" => Ok(AdminAccess::Full),
            "restricted" => Ok(AdminAccess::Restricted),
            "none" => Ok(AdminAccess::None),
            _ => Err(format!(
                "ADMIN_ACCESS `{value}` is not one of full, restricted, none"
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AdminAccess::Full => "full",
            AdminAccess::Restricted => "restricted",
            AdminAccess::None => "none",
        }
    }
}

/// What a request may do once its token is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Read: status, leases, usage, statistics.
    Read,
    /// Act: release, reread, reload, detach, set the backup, recycle.
    Act,
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No token was sent (401).
    Missing,
    /// The token is neither operator token (401).
    Wrong,
    /// `ADMIN_ACCESS=none` (403).
    Off,
    /// A reading token (or mode) on a request that acts (403).
    ReadOnly { by_mode: bool },
}

impl Refusal {
    /// Whether it is 401 (else 403).
    pub fn unauthenticated(&self) -> bool {
        matches!(self, Refusal::Missing | Refusal::Wrong)
    }

    /// The message the operator reads.
    pub fn message(&self) -> &'static str {
        match self {
            Refusal::Missing => {
                "operator endpoints need `Authorization: Bearer <ADMIN_TOKEN or ADMIN_READONLY_TOKEN>`"
            }
            Refusal::Wrong => "the operator token is neither ADMIN_TOKEN nor ADMIN_READONLY_TOKEN",
            Refusal::Off => {
                "remote administration is off on this server (ADMIN_ACCESS=none): the operator API refuses every request"
            }
            Refusal::ReadOnly { by_mode: true } => {
                "this server allows reading only (ADMIN_ACCESS=restricted): status, leases, usage and statistics"
            }
            Refusal::ReadOnly { by_mode: false } => {
                "the restricted operator token (ADMIN_READONLY_TOKEN) reads only: status, leases, usage and statistics; acting needs ADMIN_TOKEN"
            }
        }
    }
}

/// The operator tokens and the mode, as checked at each request.
#[derive(Clone)]
pub struct OperatorAccess {
    full: [u8; 32],
    restricted: Option<[u8; 32]>,
    mode: AdminAccess,
}

impl std::fmt::Debug for OperatorAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorAccess")
            .field("restricted_token", &self.restricted.is_some())
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

impl OperatorAccess {
    pub fn new(full: &Secret, restricted: Option<&Secret>, mode: AdminAccess) -> Self {
        OperatorAccess {
            full: digest(full.expose()),
            restricted: restricted.map(|r| digest(r.expose())),
            mode,
        }
    }

    pub fn mode(&self) -> AdminAccess {
        self.mode
    }

    /// What a request with `token` may do, if `needs` is within it.
    pub fn authorize(&self, token: Option<&str>, needs: Level) -> Result<Level, Refusal> {
        if self.mode == AdminAccess::None {
            return Err(Refusal::Off);
        }
        let token = token.ok_or(Refusal::Missing)?;
        // Too long a token is wrong, but hashed all the same (the time tells nothing).
        let fits = token.len() <= MAX_TOKEN;
        let sent = digest(token);
        let is_full = fits && bool::from(sent.ct_eq(&self.full));
        let is_restricted = fits && self.restricted.is_some_and(|r| bool::from(sent.ct_eq(&r)));
        let level = match (is_full, is_restricted) {
            (true, _) if self.mode == AdminAccess::Full => Level::Act,
            (true, _) | (_, true) => Level::Read,
            (false, false) => return Err(Refusal::Wrong),
        };
        if needs > level {
            return Err(Refusal::ReadOnly {
                by_mode: is_full && self.mode == AdminAccess::Restricted,
            });
        }
        Ok(level)
    }

    /// What the members of a cluster compare at each hello: the mode and both tokens,
    /// as an HMAC keyed with the members' secret (`PAIR_TOKEN`), so that the hello shows
    /// whether they agree and nothing an outsider could test a token against.
    pub fn fingerprint(&self, key: &Secret) -> String {
        use base64::Engine;
        use hmac::{Hmac, Mac};
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key.expose().as_bytes())
            .expect("HMAC takes a key of any length");
        mac.update(self.mode.as_str().as_bytes());
        mac.update(&self.full);
        mac.update(&self.restricted.unwrap_or([0; 32]));
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&mac.finalize().into_bytes()[..16])
    }
}

/// `name`'s value checked as an operator token: at least [`MIN_TOKEN`] characters.
pub fn check_token(name: &str, token: &Secret) -> Result<(), String> {
    let n = token.expose().chars().count();
    if n < MIN_TOKEN {
        return Err(format!(
            "{name} is too short ({n} characters): an operator token needs at least {MIN_TOKEN}; \
             generate one with e.g. `openssl rand -base64 32`"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = "the full operator token";
    const READ: &str = "the read-only operator token";

    fn access(mode: AdminAccess, restricted: bool) -> OperatorAccess {
        OperatorAccess::new(
            &Secret::new(FULL),
            restricted.then(|| Secret::new(READ)).as_ref(),
            mode,
        )
    }

    #[test]
    fn the_full_token_acts_and_the_restricted_one_only_reads() {
        let a = access(AdminAccess::Full, true);
        assert_eq!(a.authorize(Some(FULL), Level::Act), Ok(Level::Act));
        assert_eq!(a.authorize(Some(READ), Level::Read), Ok(Level::Read));
        assert_eq!(
            a.authorize(Some(READ), Level::Act),
            Err(Refusal::ReadOnly { by_mode: false })
        );
        assert_eq!(a.authorize(None, Level::Read), Err(Refusal::Missing));
        assert_eq!(
            a.authorize(Some("the full operator toke"), Level::Read),
            Err(Refusal::Wrong)
        );
        assert_eq!(
            a.authorize(Some(&"x".repeat(MAX_TOKEN + 1)), Level::Read),
            Err(Refusal::Wrong)
        );
        // Without a restricted token, nothing else reads.
        let a = access(AdminAccess::Full, false);
        assert_eq!(a.authorize(Some(READ), Level::Read), Err(Refusal::Wrong));
    }

    #[test]
    fn restricted_mode_makes_the_full_token_read_only_and_none_refuses_all() {
        let a = access(AdminAccess::Restricted, true);
        assert_eq!(a.authorize(Some(FULL), Level::Read), Ok(Level::Read));
        assert_eq!(
            a.authorize(Some(FULL), Level::Act),
            Err(Refusal::ReadOnly { by_mode: true })
        );
        assert_eq!(a.authorize(Some("wrong"), Level::Read), Err(Refusal::Wrong));
        let a = access(AdminAccess::None, true);
        for t in [Some(FULL), Some(READ), None] {
            assert_eq!(a.authorize(t, Level::Read), Err(Refusal::Off));
        }
        assert!(!Refusal::Off.unauthenticated() && Refusal::Wrong.unauthenticated());
    }

    #[test]
    fn modes_parse_and_short_tokens_are_refused() {
        assert_eq!(
            AdminAccess::parse(" Restricted "),
            Ok(AdminAccess::Restricted)
        );
        assert_eq!(AdminAccess::parse("none"), Ok(AdminAccess::None));
        assert!(
            AdminAccess::parse("read")
                .unwrap_err()
                .contains("full, restricted, none")
        );
        let e = check_token("ADMIN_TOKEN", &Secret::new("short")).unwrap_err();
        assert!(
            e.starts_with("ADMIN_TOKEN is too short (5 characters)"),
            "{e}"
        );
        assert!(check_token("ADMIN_TOKEN", &Secret::new(FULL)).is_ok());
    }

    #[test]
    fn members_agree_only_on_the_same_mode_and_tokens() {
        let key = Secret::new("the members' secret");
        let a = access(AdminAccess::Full, true).fingerprint(&key);
        assert_eq!(a, access(AdminAccess::Full, true).fingerprint(&key));
        assert_ne!(a, access(AdminAccess::Restricted, true).fingerprint(&key));
        assert_ne!(a, access(AdminAccess::Full, false).fingerprint(&key));
        assert_ne!(
            a,
            access(AdminAccess::Full, true).fingerprint(&Secret::new("other"))
        );
        assert!(!a.contains(FULL));
    }
}
