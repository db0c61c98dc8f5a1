//! Ed25519 JSON Web Signatures: the producer's capability answers and server bindings, and
//! the grants license servers sign for their clients (see [`crate::grant`]).
//!
//! Every token is a compact JWS, `base64url(header).base64url(claims).base64url(signature)`
//! with `alg: EdDSA`, in the format jsonwebtoken reads and writes. Its header names the
//! kind of token (`typ`, one of the `TYP_*` constants) and the key that signed it (`kid`,
//! [`key_id`]): a verifier refuses a token of another kind (a binding offered as a
//! capability answer, say) and names an unknown key instead of reporting a bad signature.
//!
//! Signing uses a key decoded once ([`Signer`]). `jsonwebtoken::encode` would decode the
//! PKCS#8 key and derive its public half again for every token, two scalar
//! multiplications where one is needed; a test checks that our tokens are exactly those
//! jsonwebtoken writes for the same header and claims.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{SigningKey, VerifyingKey};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::HostId;
use crate::capability::{CapabilityClaims, ISSUER};
use crate::secret::Secret;

/// `typ` of a capability answer (back office to license server).
pub const TYP_CAPABILITY: &str = "lls-capability+jwt";
/// `typ` of a server binding (back office: this key belongs to this server).
pub const TYP_BINDING: &str = "lls-binding+jwt";
/// `typ` of a grant (license server to client).
pub const TYP_GRANT: &str = "lls-grant+jwt";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("not an Ed25519 key in PEM form: {0}")]
    BadKey(String),
}

/// The key ID of an Ed25519 public key: base64url of the first 12 bytes of its SHA-256,
/// 16 characters. Sent as `kid` in every token's header.
pub fn key_id(public: &VerifyingKey) -> String {
    let digest = Sha256::digest(public.as_bytes());
    URL_SAFE_NO_PAD.encode(&digest[..12])
}

/// An Ed25519 public key as it travels in JSON: base64url of its 32 bytes.
pub fn encode_public_key(public: &VerifyingKey) -> String {
    URL_SAFE_NO_PAD.encode(public.as_bytes())
}

/// The inverse of [`encode_public_key`].
pub fn decode_public_key(b64: &str) -> Result<VerifyingKey, KeyError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(b64.trim())
        .map_err(|_| KeyError::BadKey("the public key is not base64url".into()))?;
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|_| KeyError::BadKey("an Ed25519 public key is 32 bytes".into()))?;
    VerifyingKey::from_bytes(&bytes)
        .map_err(|_| KeyError::BadKey("not a point of the Ed25519 curve".into()))
}

/// A new Ed25519 key pair as (private PKCS#8 PEM, public SPKI PEM).
pub fn generate_keypair() -> (String, String) {
    let signer = Signer::generate();
    (
        signer.private_pem().expose().to_owned(),
        signer.public_pem(),
    )
}

/// The public key (SPKI PEM) that goes with a private key (PKCS#8 PEM).
pub fn public_pem_of(private_pem: &str) -> Result<String, KeyError> {
    Ok(Signer::from_pem(private_pem)?.public_pem())
}

#[derive(Serialize)]
struct JwsHeader<'a> {
    alg: &'static str,
    typ: &'a str,
    kid: &'a str,
}

/// Signs tokens with an Ed25519 key decoded once: the producer's key in the back office,
/// a license server's own key for its grants.
///
/// The key is held twice: as ed25519-dalek's, for its encodings and the verifying key,
/// and as AWS-LC's, which signs (Ed25519 is deterministic, RFC 8032: both make the same
/// signature of the same message, a test checks it; AWS-LC's takes a third of the time,
/// and every answer of the back office and every grant is signed).
pub struct Signer {
    key: SigningKey,
    fast: aws_lc_rs::signature::Ed25519KeyPair,
    kid: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer(kid {})", self.kid)
    }
}

impl Signer {
    /// A new random key.
    pub fn generate() -> Self {
        Self::from_key(SigningKey::from_bytes(&crate::random_bytes::<32>()))
    }

    fn from_key(key: SigningKey) -> Self {
        let kid = key_id(&key.verifying_key());
        let fast = aws_lc_rs::signature::Ed25519KeyPair::from_seed_and_public_key(
            key.as_bytes(),
            key.verifying_key().as_bytes(),
        )
        .expect("a valid Ed25519 key is a valid AWS-LC key");
        Signer { key, fast, kid }
    }

    /// From a PKCS#8 PEM private key.
    pub fn from_pem(private_pem: &str) -> Result<Self, KeyError> {
        SigningKey::from_pkcs8_pem(private_pem)
            .map(Self::from_key)
            .map_err(|e| KeyError::BadKey(e.to_string()))
    }

    /// The private key as PKCS#8 PEM, to be written to a file only its owner reads.
    pub fn private_pem(&self) -> Secret {
        Secret::new(
            self.key
                .to_pkcs8_pem(LineEnding::LF)
                .expect("an Ed25519 key always encodes")
                .to_string(),
        )
    }

    /// The public key as SPKI PEM.
    pub fn public_pem(&self) -> String {
        self.key
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .expect("an Ed25519 key always encodes")
    }

    /// The public key as it travels in JSON ([`encode_public_key`]).
    pub fn public_key(&self) -> String {
        encode_public_key(&self.key.verifying_key())
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// This key's ID ([`key_id`]).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// A compact JWS of `claims` with header `{alg: EdDSA, typ, kid}`.
    pub fn sign_jws<T: Serialize>(&self, typ: &str, claims: &T) -> String {
        let header = JwsHeader {
            alg: "EdDSA",
            typ,
            kid: &self.kid,
        };
        let mut out = String::with_capacity(512);
        encode_part(&mut out, &header);
        out.push('.');
        encode_part(&mut out, claims);
        let signature = self.fast.sign(out.as_bytes());
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(signature.as_ref(), &mut out);
        out
    }

    /// Signs a capability answer.
    pub fn sign(&self, claims: &CapabilityClaims) -> String {
        self.sign_jws(TYP_CAPABILITY, claims)
    }
}

fn encode_part<T: Serialize>(out: &mut String, value: &T) {
    let json = serde_json::to_vec(value).expect("claims always serialise to JSON");
    URL_SAFE_NO_PAD.encode_string(json, out);
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("not a signed token (three base64url parts with an EdDSA header): {0}")]
    Malformed(String),
    #[error("the token is a {got}, not a {expected}")]
    WrongKind { expected: String, got: String },
    #[error(
        "the token is signed by key {got}, not by the configured key {expected}; \
         check which public key this server or client was given"
    )]
    UnknownKey { expected: String, got: String },
    #[error("the signature does not verify with the configured public key: {0}")]
    BadSignature(String),
    #[error("the answer is addressed to {got}, not to this server ({expected})")]
    WrongHostid { expected: String, got: String },
    #[error("the answer is for request {got}, not for the request just sent ({expected})")]
    WrongRequest { expected: Uuid, got: Uuid },
    #[error("the answer is stale: issued at {iat}, expired at {exp}, local time {now}")]
    Stale { iat: i64, exp: i64, now: i64 },
}

/// Verifies tokens signed by one Ed25519 key: the producer's (capability answers,
/// bindings) or a license server's (grants).
#[derive(Clone)]
pub struct Verifier {
    key: DecodingKey,
    kid: String,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Verifier(kid {})", self.kid)
    }
}

impl Verifier {
    /// From an SPKI PEM public key (the back office's `signing-key.pub.pem`).
    pub fn from_public_pem(public_pem: &str) -> Result<Self, KeyError> {
        let key = VerifyingKey::from_public_key_pem(public_pem)
            .map_err(|e| KeyError::BadKey(e.to_string()))?;
        Ok(Self::from_key(&key))
    }

    pub fn from_key(key: &VerifyingKey) -> Self {
        Verifier {
            key: DecodingKey::from_ed_der(key.as_bytes()),
            kid: key_id(key),
        }
    }

    /// This key's ID ([`key_id`]).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Checks a token's kind, key and signature and returns its claims. Times are the
    /// caller's to check: each kind of token has its own rules.
    pub fn decode<T: DeserializeOwned>(&self, token: &str, typ: &str) -> Result<T, VerifyError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| VerifyError::Malformed(e.to_string()))?;
        if header.alg != Algorithm::EdDSA {
            return Err(VerifyError::Malformed(format!(
                "the algorithm is {:?}, not EdDSA",
                header.alg
            )));
        }
        let got = header.typ.unwrap_or_default();
        if got != typ {
            return Err(VerifyError::WrongKind {
                expected: kind_name(typ).to_owned(),
                got: kind_name(&got).to_owned(),
            });
        }
        match header.kid {
            Some(kid) if kid == self.kid => {}
            other => {
                return Err(VerifyError::UnknownKey {
                    expected: self.kid.clone(),
                    got: other.unwrap_or_else(|| "(none)".into()),
                });
            }
        }
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.validate_exp = false;
        validation.required_spec_claims.clear();
        jsonwebtoken::decode::<T>(token, &self.key, &validation)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidSignature => {
                    VerifyError::BadSignature(e.to_string())
                }
                _ => VerifyError::Malformed(e.to_string()),
            })
    }

    /// A capability answer's signature and issuer only (any hostid, request, age): for
    /// answers kept on disk or received from the pair partner, whose other checks
    /// depend on where they come from.
    pub fn decode_capability(&self, token: &str) -> Result<CapabilityClaims, VerifyError> {
        let claims: CapabilityClaims = self.decode(token, TYP_CAPABILITY)?;
        if claims.iss != ISSUER {
            return Err(VerifyError::Malformed(format!(
                "the issuer is `{}`, not the back office",
                claims.iss
            )));
        }
        Ok(claims)
    }

    /// Full verification of a fresh answer: signature, addressee, request binding and
    /// freshness. `leeway_secs` is how far the two clocks may differ.
    pub fn verify(
        &self,
        token: &str,
        hostid: &HostId,
        request_id: Uuid,
        now: i64,
        leeway_secs: i64,
    ) -> Result<CapabilityClaims, VerifyError> {
        let claims = self.decode_capability(token)?;
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

fn kind_name(typ: &str) -> &str {
    match typ {
        TYP_CAPABILITY => "capability answer",
        TYP_BINDING => "server binding",
        TYP_GRANT => "grant",
        "" => "token without a type",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capability::{Right, Role};

    pub(crate) fn claims(hostid: &HostId, request_id: Uuid, now: i64) -> CapabilityClaims {
        CapabilityClaims {
            iss: ISSUER.into(),
            sub: hostid.to_string(),
            request_id,
            iat: now,
            exp: now + 300,
            server_id: "s1".into(),
            role: Role::Standalone,
            pair: None,
            cluster: None,
            poll_interval_secs: 60,
            rights: vec![Right {
                activation_id: "A-1".into(),
                feature: "cad".into(),
                version: "1.0".into(),
                count: 5,
                starts_at: 0,
                expires_at: None,
                max_borrow_secs: None,
                overdraft: 0,
            }],
            serve_until: now + 86_400,
            binding: None,
            pair_token: None,
        }
    }

    /// AWS-LC signs; the signature is the one ed25519-dalek makes (Ed25519 is
    /// deterministic), so the format and every verifier are unchanged.
    #[test]
    fn the_signature_is_ed25519_dalek_s_byte_for_byte() {
        use ed25519_dalek::Signer as _;
        for _ in 0..20 {
            let signer = Signer::generate();
            for msg in [&b""[..], b"a", &crate::random_bytes::<200>()] {
                let ours = signer.fast.sign(msg);
                assert_eq!(ours.as_ref(), signer.key.sign(msg).to_bytes().as_slice());
            }
        }
        // And a whole token verifies with the public key alone.
        let signer = Signer::generate();
        let jws = signer.sign_jws("test", &serde_json::json!({"a": 1}));
        let (signed, sig) = jws.rsplit_once('.').unwrap();
        let sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
        let sig = ed25519_dalek::Signature::from_slice(&sig).unwrap();
        signer
            .verifying_key()
            .verify_strict(signed.as_bytes(), &sig)
            .unwrap();
    }

    #[test]
    fn sign_and_verify_round_trip_and_tampering_fails() {
        let (private, public) = generate_keypair();
        assert_eq!(public_pem_of(&private).unwrap(), public);
        let signer = Signer::from_pem(&private).unwrap();
        let verifier = Verifier::from_public_pem(&public).unwrap();
        assert_eq!(signer.kid(), verifier.kid());
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
            Err(VerifyError::UnknownKey { .. })
        ));
    }

    #[test]
    fn tokens_read_and_write_like_jsonwebtoken() {
        let signer = Signer::generate();
        let host = HostId::parse("string:lls-1").unwrap();
        let c = claims(&host, Uuid::new_v4(), 1_800_000_000);
        let ours = signer.sign(&c);

        let mut header = jsonwebtoken::Header::new(Algorithm::EdDSA);
        header.typ = Some(TYP_CAPABILITY.into());
        header.kid = Some(signer.kid().into());
        let key = jsonwebtoken::EncodingKey::from_ed_pem(signer.private_pem().expose().as_bytes())
            .unwrap();
        let theirs = jsonwebtoken::encode(&header, &c, &key).unwrap();
        // The same signature over the same claims; the header's field order may differ.
        let (ours_claims, theirs_claims) = (
            ours.split('.').nth(1).unwrap(),
            theirs.split('.').nth(1).unwrap(),
        );
        assert_eq!(ours_claims, theirs_claims);
        let v = Verifier::from_key(&signer.verifying_key());
        assert_eq!(v.decode_capability(&ours).unwrap(), c);
        assert_eq!(v.decode_capability(&theirs).unwrap(), c);
    }

    #[test]
    fn a_token_of_another_kind_or_key_or_shape_is_refused_by_name() {
        let signer = Signer::generate();
        let v = Verifier::from_key(&signer.verifying_key());
        let host = HostId::parse("string:lls-1").unwrap();
        let c = claims(&host, Uuid::new_v4(), 1_800_000_000);

        let as_grant = signer.sign_jws(TYP_GRANT, &c);
        assert!(matches!(
            v.decode_capability(&as_grant),
            Err(VerifyError::WrongKind { .. })
        ));

        let token = signer.sign(&c);
        // Truncated, re-encoded with padding, parts missing: malformed, never a panic.
        for bad in [
            &token[..token.len() / 2],
            "",
            "a.b",
            "...",
            &format!("{token}=="),
            &token.replacen('.', "", 1),
        ] {
            assert!(v.decode_capability(bad).is_err(), "{bad}");
        }

        // A header naming a kid this verifier does not know.
        let mut header = jsonwebtoken::Header::new(Algorithm::EdDSA);
        header.typ = Some(TYP_CAPABILITY.into());
        header.kid = Some("not-our-key".into());
        let key = jsonwebtoken::EncodingKey::from_ed_pem(signer.private_pem().expose().as_bytes())
            .unwrap();
        let foreign = jsonwebtoken::encode(&header, &c, &key).unwrap();
        assert!(matches!(
            v.decode_capability(&foreign),
            Err(VerifyError::UnknownKey { got, .. }) if got == "not-our-key"
        ));
    }

    #[test]
    fn public_keys_travel_as_base64url() {
        let s = Signer::generate();
        let decoded = decode_public_key(&s.public_key()).unwrap();
        assert_eq!(decoded, s.verifying_key());
        assert!(decode_public_key("short").is_err());
        assert!(decode_public_key("!!!").is_err());
    }
}
