//! Types and rules shared by the back office, the license server and clients.
//!
//! Nothing here knows about HTTP frameworks or SQL: the protocol (hostids, capability
//! requests and signed responses, leases), the error codes of the contract, signing and
//! verification. The client library producers link is a crate of its own,
//! `licensing-client` (`client/`), built on these types.

pub mod capability;
pub mod duration;
pub mod error;
pub mod grant;
pub mod hostid;
pub mod lease;
pub mod secret;
pub mod signing;

pub use error::{ErrorBody, ErrorCode};
pub use hostid::{HostId, HostIdType};

/// Seconds since the Unix epoch, the time unit of every timestamp on the wire.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `n` random bytes from the operating system.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf).expect("the operating system's random source failed");
    buf
}

/// A random URL-safe token of `N` bytes of entropy.
pub fn random_token<const N: usize>() -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<N>())
}
