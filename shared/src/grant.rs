//! The chain of trust from the producer to every client, checked offline.
//!
//! ```text
//!   producer key (the back office's signing key; clients are given its public half)
//!      │ signs, in every capability answer
//!      ▼
//!   server binding   {sub: server hostid, key: server public key, pair, iat, exp}
//!      │ names the key that signs
//!      ▼
//!   grant            {iss: server hostid, sub: client ID, jti: lease ID,
//!                     feature, version, count, iat, exp}
//! ```
//!
//! Each license server has an Ed25519 key of its own (generated on first start, kept in a
//! file only its owner reads). Its public half travels in its capability requests; the
//! back office answers with a [`BindingClaims`] token binding that key to the server's
//! hostid and pair, signed with the producer's key and valid as long as the answer's
//! rights may be served. Every lease the server grants or renews carries a
//! [`GrantClaims`] token signed with the server's key, plus the binding. A client that
//! holds only the producer's public key checks, with [`verify_grant`]:
//!
//! 1. the binding: signed by the producer's key (`kid`), of the binding kind, issued by
//!    the back office;
//! 2. the grant: signed by the key the binding names (`kid` too), of the grant kind,
//!    issued by the hostid the binding names;
//! 3. the grant is what was asked for: this client, this lease, the feature, the version
//!    when one was asked for, the count;
//! 4. times: issued while the binding was valid, ending no later than the binding, not
//!    issued in the future, not yet expired (each within the clock leeway).
//!
//! A backup that serves after its main died signs with its own key and its own binding:
//! its grants verify the same way. A program that merely answers `POST /api/v1/leases`
//! with 201 has no binding signed by the producer, and its grants are refused.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::capability::{ISSUER, PairInfo};
use crate::signing::{
    KeyError, Signer, TYP_BINDING, TYP_GRANT, Verifier, VerifyError, decode_public_key, key_id,
};

/// The back office's statement that a public key belongs to a license server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindingClaims {
    /// The back office ([`ISSUER`]).
    pub iss: String,
    /// The server's hostid.
    pub sub: String,
    /// The server's Ed25519 public key, base64url of its 32 bytes.
    pub key: String,
    /// The pair the server belongs to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pair: Option<PairInfo>,
    /// Issued at (Unix time, seconds).
    pub iat: i64,
    /// Valid until (Unix time, seconds): grants issued later, or ending later, are refused.
    pub exp: i64,
}

impl BindingClaims {
    /// Signs the binding with the producer's key.
    pub fn sign(&self, producer: &Signer) -> String {
        producer.sign_jws(TYP_BINDING, self)
    }
}

/// What a license server signs for each lease it grants or renews.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantClaims {
    /// The hostid of the server that granted or renewed the lease.
    pub iss: String,
    /// The client ID the lease belongs to.
    pub sub: String,
    /// The lease ID.
    pub jti: Uuid,
    pub feature: String,
    pub version: String,
    pub count: u32,
    /// Granted or renewed at (Unix time, seconds).
    pub iat: i64,
    /// The lease ends (Unix time, seconds).
    pub exp: i64,
    /// Borrowed for offline use until `exp`: the client may use it with no server.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub borrowed: bool,
}

impl GrantClaims {
    /// Signs the grant with the serving server's key.
    pub fn sign(&self, server: &Signer) -> String {
        server.sign_jws(TYP_GRANT, self)
    }
}

/// What the client asked for, to compare with what it was granted.
#[derive(Clone, Copy, Debug)]
pub struct Expected<'a> {
    pub client_id: &'a str,
    /// The lease, when renewing one the client already holds.
    pub lease_id: Option<Uuid>,
    pub feature: &'a str,
    /// A specific version, or any version of the feature.
    pub version: Option<&'a str>,
    pub count: u32,
}

/// A grant whose whole chain verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedGrant {
    pub grant: GrantClaims,
    pub binding: BindingClaims,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    #[error("the server's binding does not verify with the producer's key: {0}")]
    Binding(VerifyError),
    #[error("the server's binding names no usable key: {0}")]
    BindingKey(KeyError),
    #[error("the grant does not verify with the key the back office bound to {server}: {error}")]
    Grant { server: String, error: VerifyError },
    #[error("the grant is signed for {got}, but its binding is for {expected}")]
    WrongServer { expected: String, got: String },
    #[error("the grant is not what was asked for: {0}")]
    Mismatch(String),
    #[error("the grant's times do not hold: {0}")]
    Time(String),
}

/// Verifies a grant and its binding with the producer's public key alone (no network).
/// `leeway` is how far the client's clock may differ from the server's and the back
/// office's (seconds).
pub fn verify_grant(
    producer: &Verifier,
    grant: &str,
    binding: &str,
    expected: &Expected<'_>,
    now: i64,
    leeway: i64,
) -> Result<VerifiedGrant, GrantError> {
    let b: BindingClaims = producer
        .decode(binding, TYP_BINDING)
        .map_err(GrantError::Binding)?;
    if b.iss != ISSUER {
        return Err(GrantError::Binding(VerifyError::Malformed(format!(
            "the binding's issuer is `{}`, not the back office",
            b.iss
        ))));
    }
    let server_key = decode_public_key(&b.key).map_err(GrantError::BindingKey)?;
    let g: GrantClaims = Verifier::from_key(&server_key)
        .decode(grant, TYP_GRANT)
        .map_err(|error| GrantError::Grant {
            server: b.sub.clone(),
            error,
        })?;
    if g.iss != b.sub {
        return Err(GrantError::WrongServer {
            expected: b.sub,
            got: g.iss,
        });
    }

    let mut wrong = Vec::new();
    if g.sub != expected.client_id {
        wrong.push(format!(
            "client `{}` instead of `{}`",
            g.sub, expected.client_id
        ));
    }
    if let Some(id) = expected.lease_id
        && g.jti != id
    {
        wrong.push(format!("lease {} instead of {id}", g.jti));
    }
    if g.feature != expected.feature {
        wrong.push(format!(
            "feature `{}` instead of `{}`",
            g.feature, expected.feature
        ));
    }
    if let Some(v) = expected.version
        && g.version != v
    {
        wrong.push(format!("version `{}` instead of `{v}`", g.version));
    }
    if g.count != expected.count {
        wrong.push(format!("{} seats instead of {}", g.count, expected.count));
    }
    if !wrong.is_empty() {
        return Err(GrantError::Mismatch(wrong.join(", ")));
    }

    let time = |what: String| Err(GrantError::Time(what));
    if g.iat + leeway < b.iat || g.iat - leeway > b.exp {
        return time(format!(
            "granted at {} outside its binding's validity ({} to {})",
            g.iat, b.iat, b.exp
        ));
    }
    if g.exp - leeway > b.exp {
        return time(format!(
            "the lease ends at {}, after its binding ({})",
            g.exp, b.exp
        ));
    }
    if g.iat - leeway > now {
        return time(format!(
            "granted at {}, in the future (local time {now})",
            g.iat
        ));
    }
    if g.exp + leeway <= now {
        return time(format!("the lease ended at {} (local time {now})", g.exp));
    }
    Ok(VerifiedGrant {
        grant: g,
        binding: b,
    })
}

/// The key ID a binding names, for messages and logs.
pub fn binding_key_id(b: &BindingClaims) -> Option<String> {
    decode_public_key(&b.key).ok().map(|k| key_id(&k))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HostId;

    const NOW: i64 = 1_800_000_000;

    struct World {
        producer: Signer,
        server: Signer,
        binding: String,
    }

    fn world() -> World {
        let producer = Signer::generate();
        let server = Signer::generate();
        let binding = BindingClaims {
            iss: ISSUER.into(),
            sub: "string:lls-a".into(),
            key: server.public_key(),
            pair: Some(PairInfo {
                id: "p1".into(),
                main: HostId::parse("string:lls-a").unwrap(),
                backup: Some(HostId::parse("string:lls-b").unwrap()),
            }),
            iat: NOW - 60,
            exp: NOW + 86_400,
        }
        .sign(&producer);
        World {
            producer,
            server,
            binding,
        }
    }

    fn grant(iss: &str) -> GrantClaims {
        GrantClaims {
            borrowed: false,
            iss: iss.into(),
            sub: "alice@ws1".into(),
            jti: Uuid::from_u128(7),
            feature: "cad".into(),
            version: "1.0".into(),
            count: 2,
            iat: NOW,
            exp: NOW + 300,
        }
    }

    fn asked() -> Expected<'static> {
        Expected {
            client_id: "alice@ws1",
            lease_id: None,
            feature: "cad",
            version: None,
            count: 2,
        }
    }

    fn check(
        w: &World,
        grant: &str,
        binding: &str,
        e: &Expected<'_>,
    ) -> Result<VerifiedGrant, GrantError> {
        let producer = Verifier::from_key(&w.producer.verifying_key());
        verify_grant(&producer, grant, binding, e, NOW + 10, 5)
    }

    #[test]
    fn a_grant_from_a_bound_server_verifies_with_the_producer_key_alone() {
        let w = world();
        let g = grant("string:lls-a").sign(&w.server);
        let ok = check(&w, &g, &w.binding, &asked()).unwrap();
        assert_eq!(ok.grant.count, 2);
        assert_eq!(ok.binding.pair.unwrap().id, "p1");
        let with_version = Expected {
            version: Some("1.0"),
            lease_id: Some(Uuid::from_u128(7)),
            ..asked()
        };
        check(&w, &g, &w.binding, &with_version).unwrap();
    }

    #[test]
    fn a_fake_server_with_its_own_key_is_refused() {
        let w = world();
        // Signed by a key no binding names.
        let rogue = Signer::generate();
        let g = grant("string:lls-a").sign(&rogue);
        assert!(matches!(
            check(&w, &g, &w.binding, &asked()),
            Err(GrantError::Grant {
                error: VerifyError::UnknownKey { .. },
                ..
            })
        ));
        // With a binding it made itself (signed by a key that is not the producer's).
        let self_bound = BindingClaims {
            iss: ISSUER.into(),
            sub: "string:lls-a".into(),
            key: rogue.public_key(),
            pair: None,
            iat: NOW - 60,
            exp: NOW + 86_400,
        }
        .sign(&rogue);
        assert!(matches!(
            check(&w, &g, &self_bound, &asked()),
            Err(GrantError::Binding(VerifyError::UnknownKey { .. }))
        ));
    }

    #[test]
    fn a_grant_for_another_hostid_or_client_or_feature_is_refused() {
        let w = world();
        let g = grant("string:lls-other").sign(&w.server);
        assert!(matches!(
            check(&w, &g, &w.binding, &asked()),
            Err(GrantError::WrongServer { .. })
        ));
        let g = grant("string:lls-a").sign(&w.server);
        for e in [
            Expected {
                client_id: "bob@ws2",
                ..asked()
            },
            Expected {
                feature: "cam",
                ..asked()
            },
            Expected {
                version: Some("2.0"),
                ..asked()
            },
            Expected {
                count: 1,
                ..asked()
            },
            Expected {
                lease_id: Some(Uuid::from_u128(8)),
                ..asked()
            },
        ] {
            assert!(
                matches!(check(&w, &g, &w.binding, &e), Err(GrantError::Mismatch(_))),
                "{e:?}"
            );
        }
    }

    #[test]
    fn an_expired_binding_or_grant_is_refused() {
        let w = world();
        let producer = Verifier::from_key(&w.producer.verifying_key());
        let expired_binding = BindingClaims {
            iss: ISSUER.into(),
            sub: "string:lls-a".into(),
            key: w.server.public_key(),
            pair: None,
            iat: NOW - 7200,
            exp: NOW - 3600,
        }
        .sign(&w.producer);
        let g = grant("string:lls-a").sign(&w.server);
        assert!(matches!(
            check(&w, &g, &expired_binding, &asked()),
            Err(GrantError::Time(_))
        ));
        // A grant that outlives its binding.
        let long = GrantClaims {
            exp: NOW + 2 * 86_400,
            ..grant("string:lls-a")
        }
        .sign(&w.server);
        assert!(matches!(
            check(&w, &long, &w.binding, &asked()),
            Err(GrantError::Time(_))
        ));
        // A lease that has ended.
        let g = grant("string:lls-a").sign(&w.server);
        assert!(matches!(
            verify_grant(&producer, &g, &w.binding, &asked(), NOW + 1000, 5),
            Err(GrantError::Time(_))
        ));
        // Granted in the future.
        assert!(matches!(
            verify_grant(&producer, &g, &w.binding, &asked(), NOW - 100, 5),
            Err(GrantError::Time(_))
        ));
    }

    #[test]
    fn swapped_or_damaged_tokens_are_refused() {
        let w = world();
        let g = grant("string:lls-a").sign(&w.server);
        // The grant and binding swapped: each is of the wrong kind.
        assert!(check(&w, &w.binding, &g, &asked()).is_err());
        // A grant whose claims were edited (count 2 -> 200) keeps its old signature.
        let mut parts: Vec<String> = g.split('.').map(str::to_owned).collect();
        let mut edited = grant("string:lls-a");
        edited.count = 200;
        let json = serde_json::to_vec(&edited).unwrap();
        use base64::Engine;
        parts[1] = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json);
        let forged = parts.join(".");
        assert!(matches!(
            check(
                &w,
                &forged,
                &w.binding,
                &Expected {
                    count: 200,
                    ..asked()
                }
            ),
            Err(GrantError::Grant {
                error: VerifyError::BadSignature(_),
                ..
            })
        ));
        // Truncated.
        assert!(check(&w, &g[..g.len() - 10], &w.binding, &asked()).is_err());
        assert!(check(&w, &g, &w.binding[..20], &asked()).is_err());
    }
}
