//! What the fuzz targets share: keys made from constant seeds (so that a corpus of signed
//! tokens stays valid from one run to the next) and the moment they verify at.

use std::sync::LazyLock;

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use shared::signing::{Signer, Verifier};

/// The clock of every verification (Unix seconds).
pub const NOW: i64 = 1_800_000_000;

/// Clock leeway allowed in verifications (seconds).
pub const LEEWAY: i64 = 60;

fn signer(seed: u8) -> Signer {
    let pem = SigningKey::from_bytes(&[seed; 32])
        .to_pkcs8_pem(LineEnding::LF)
        .expect("an Ed25519 key as PKCS#8");
    Signer::from_pem(&pem).expect("the key reads back")
}

/// The producer's key (the back office's signing key).
pub static PRODUCER: LazyLock<Signer> = LazyLock::new(|| signer(1));

/// A license server's own key.
pub static SERVER: LazyLock<Signer> = LazyLock::new(|| signer(2));

/// What verifies with the producer's public key alone.
pub fn producer() -> Verifier {
    Verifier::from_key(&PRODUCER.verifying_key())
}
