//! The key lease tokens are signed with: HMAC-SHA256 of the lease (or place) ID, with
//! the pool's key kept in its state, so a restarted server, a backup fed the same
//! changes, or another member of a cluster verifies tokens it did not issue.
//!
//! The key is kept here decoded, beside the pool's state, so that signing and verifying
//! never take the pool's lock: they are called with it held as well as without. It is
//! set by whoever replaces the pool's key, under the pool's lock: the service when a
//! server creates its key or takes its main's state, a cluster member's state machine
//! when it applies the command that creates the key or installs a snapshot.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use parking_lot::RwLock;
use sha2::Sha256;
use uuid::Uuid;

use crate::domain::State;

/// The pool's lease key, or none yet (a backup before its main's state arrives, a
/// cluster member before its first leader created the key).
#[derive(Default)]
pub struct LeaseKey(RwLock<Option<Hmac<Sha256>>>);

impl std::fmt::Debug for LeaseKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key itself.
        f.debug_struct("LeaseKey")
            .field("set", &self.0.read().is_some())
            .finish()
    }
}

/// Why the key in the pool's state cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damaged(pub String);

impl std::fmt::Display for Damaged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the stored lease key is damaged: {}", self.0)
    }
}

fn decode(state: &State) -> Result<Option<Hmac<Sha256>>, Damaged> {
    let Some(key) = &state.lease_key else {
        return Ok(None);
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(key.as_bytes())
        .map_err(|e| Damaged(e.to_string()))?;
    Hmac::<Sha256>::new_from_slice(&bytes)
        .map(Some)
        .map_err(|e| Damaged(e.to_string()))
}

impl LeaseKey {
    /// The key of `state` (called under the pool's lock).
    pub fn of(state: &State) -> Result<LeaseKey, Damaged> {
        Ok(LeaseKey(RwLock::new(decode(state)?)))
    }

    /// Takes the key of `state`, which replaces the pool (called under the pool's lock).
    pub fn set_from(&self, state: &State) -> Result<(), Damaged> {
        let key = decode(state)?;
        *self.0.write() = key;
        Ok(())
    }

    /// Whether there is a key to sign with.
    pub fn is_set(&self) -> bool {
        self.0.read().is_some()
    }

    /// The token of lease or place `id`; `None` before there is a key.
    pub fn sign(&self, id: &Uuid) -> Option<String> {
        let mut mac = self.0.read().clone()?;
        mac.update(id.as_bytes());
        Some(URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
    }

    /// Whether `token` is the token of `id` (in constant time).
    pub fn verify(&self, id: &Uuid, token: &str) -> bool {
        let Ok(sig) = URL_SAFE_NO_PAD.decode(token.as_bytes()) else {
            return false;
        };
        let Some(mut mac) = self.0.read().clone() else {
            return false;
        };
        mac.update(id.as_bytes());
        mac.verify_slice(&sig).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_verifies_for_its_id_and_key_only() {
        let mut st = State::default();
        let none = LeaseKey::of(&st).unwrap();
        let id = Uuid::new_v4();
        assert_eq!(none.sign(&id), None);
        assert!(!none.verify(&id, ""));
        st.lease_key = Some(URL_SAFE_NO_PAD.encode([7u8; 32]));
        let key = LeaseKey::of(&st).unwrap();
        let token = key.sign(&id).unwrap();
        assert!(key.verify(&id, &token));
        assert!(!key.verify(&Uuid::new_v4(), &token));
        assert!(!key.verify(&id, "not base64 at all!"));
        // Another pool's key: the token does not verify.
        st.lease_key = Some(URL_SAFE_NO_PAD.encode([8u8; 32]));
        let other = LeaseKey::default();
        other.set_from(&st).unwrap();
        assert!(!other.verify(&id, &token));
        // A damaged key is refused, not used.
        st.lease_key = Some("%%%".into());
        assert!(LeaseKey::of(&st).is_err());
    }
}
