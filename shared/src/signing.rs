//! Ed25519 signing of capability responses (JWT, EdDSA) and their verification.

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{EncodePrivateKey, EncodePublicKey};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use uuid::Uuid;

use crate::HostId;
use crate::capability::{CapabilityClaims, ISSUER};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("not an Ed25519 key in PEM form: {0}")]
    BadKey(String),
}

/// A new Ed25519 key pair as (private PKCS#8 PEM, public SPKI PEM).
pub fn generate_keypair() -> (String, String) {
    let key = SigningKey::from_bytes(&crate::random_bytes::<32>());
    let private = key
        .to_pkcs8_pem(LineEnding::LF)
        .expect("an Ed25519 key always encodes")
        .to_string();
    let public = key
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .expect("an Ed25519 key always encodes");
    (private, public)
}

/// The public key (SPKI PEM) that goes with a private key (PKCS#8 PEM).
pub fn public_pem_of(private_pem: &str) -> Result<String, KeyError> {
    use ed25519_dalek::pkcs8::DecodePrivateKey;
    let key =
        SigningKey::from_pkcs8_pem(private_pem).map_err(|e| KeyError::BadKey(e.to_string()))?;
    key.verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| KeyError::BadKey(e.to_string()))
}

/// Signs capability claims.
pub struct Signer {
    key: EncodingKey,
    header: Header,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(***)")
    }
}

impl Signer {
    pub fn from_pem(private_pem: &str) -> Result<Self, KeyError> {
        let key = EncodingKey::from_ed_pem(private_pem.as_bytes())
            .map_err(|e| KeyError::BadKey(e.to_string()))?;
        Ok(Signer {
            key,
            header: Header::new(Algorithm::EdDSA),
        })
    }

    pub fn sign(&self, claims: &CapabilityClaims) -> String {
        jsonwebtoken::encode(&self.header, claims, &self.key)
            .expect("serialising claims and signing with a valid key cannot fail")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the signature does not verify with the configured public key: {0}")]
    BadSignature(String),
    #[error("the answer is addressed to {got}, not to this server ({expected})")]
    WrongHostid { expected: String, got: String },
    #[error("the answer is for request {got}, not for the request just sent ({expected})")]
    WrongRequest { expected: Uuid, got: Uuid },
    #[error("the answer is stale: issued at {iat}, expired at {exp}, local time {now}")]
    Stale { iat: i64, exp: i64, now: i64 },
}

/// Verifies capability responses with the back office's public key.
#[derive(Clone)]
pub struct Verifier {
    key: DecodingKey,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier")
    }
}

impl Verifier {
    pub fn from_public_pem(public_pem: &str) -> Result<Self, KeyError> {
        let key = DecodingKey::from_ed_pem(public_pem.as_bytes())
            .map_err(|e| KeyError::BadKey(e.to_string()))?;
        Ok(Verifier { key })
    }

    /// Checks the signature only (any hostid, any request, any age).
    pub fn decode_unchecked_binding(&self, token: &str) -> Result<CapabilityClaims, VerifyError> {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.validate_exp = false;
        validation.set_required_spec_claims(&["iss", "sub"]);
        validation.set_issuer(&[ISSUER]);
        jsonwebtoken::decode::<CapabilityClaims>(token, &self.key, &validation)
            .map(|d| d.claims)
            .map_err(|e| VerifyError::BadSignature(e.to_string()))
    }

    /// Full verification: signature, addressee, request binding and freshness.
    /// `leeway` is how far the two clocks may differ.
    pub fn verify(
        &self,
        token: &str,
        hostid: &HostId,
        request_id: Uuid,
        now: i64,
        leeway_secs: i64,
    ) -> Result<CapabilityClaims, VerifyError> {
        let claims = self.decode_unchecked_binding(token)?;
        let expected = hostid.to_string();
        if claims.sub != expected {
            return Err(VerifyError::WrongHostid {
                expected,
                got: claims.sub,
            });
        }
        if claims.request_id != request_id {
            return Err(VerifyError::WrongRequest {
                expected: request_id,
                got: claims.request_id,
            });
        }
        if claims.exp + leeway_secs < now || claims.iat - leeway_secs > now {
            return Err(VerifyError::Stale {
                iat: claims.iat,
                exp: claims.exp,
                now,
            });
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capability::{Right, Role};

    fn claims(hostid: &HostId, request_id: Uuid, now: i64) -> CapabilityClaims {
        CapabilityClaims {
            iss: ISSUER.into(),
            sub: hostid.to_string(),
            request_id,
            iat: now,
            exp: now + 300,
            server_id: "s1".into(),
            role: Role::Standalone,
            pair: None,
            poll_interval_secs: 60,
            rights: vec![Right {
                activation_id: "A-1".into(),
                feature: "cad".into(),
                version: "1.0".into(),
                count: 5,
                starts_at: 0,
                expires_at: None,
            }],
        }
    }

    #[test]
    fn sign_and_verify_round_trip_and_tampering_fails() {
        let (private, public) = generate_keypair();
        assert_eq!(public_pem_of(&private).unwrap(), public);
        let signer = Signer::from_pem(&private).unwrap();
        let verifier = Verifier::from_public_pem(&public).unwrap();
        let host = HostId::parse("string:lls-1").unwrap();
        let rid = Uuid::new_v4();
        let now = crate::now_unix();
        let token = signer.sign(&claims(&host, rid, now));
        let got = verifier.verify(&token, &host, rid, now, 5).unwrap();
        assert_eq!(got.rights[0].count, 5);

        // One byte changed anywhere in the payload or signature: refused.
        let bytes = token.as_bytes();
        for pos in [bytes.len() / 2, bytes.len() - 3] {
            let mut t = bytes.to_vec();
            t[pos] = if t[pos] == b'A' { b'B' } else { b'A' };
            let t = String::from_utf8(t).unwrap();
            assert!(verifier.verify(&t, &host, rid, now, 5).is_err());
        }

        let other = HostId::parse("string:lls-2").unwrap();
        assert!(matches!(
            verifier.verify(&token, &other, rid, now, 5),
            Err(VerifyError::WrongHostid { .. })
        ));
        assert!(matches!(
            verifier.verify(&token, &host, Uuid::new_v4(), now, 5),
            Err(VerifyError::WrongRequest { .. })
        ));
        assert!(matches!(
            verifier.verify(&token, &host, rid, now + 3600, 5),
            Err(VerifyError::Stale { .. })
        ));

        let (_, other_public) = generate_keypair();
        let wrong = Verifier::from_public_pem(&other_public).unwrap();
        assert!(matches!(
            wrong.verify(&token, &host, rid, now, 5),
            Err(VerifyError::BadSignature(_))
        ));
    }
}
