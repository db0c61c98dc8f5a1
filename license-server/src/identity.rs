//! This server's place in the chain of trust: its own Ed25519 key, the back office's
//! binding of that key to its hostid and pair, and the secret the two servers of its pair
//! authenticate each other with.
//!
//! - `DATA_DIR/server-key.pem` (PKCS#8, mode 0600): generated on first start, never
//!   replaced; its public half goes in every capability request (`server_key`) and it
//!   signs every grant ([`Identity::sign_grant`]).
//! - `DATA_DIR/capability.jwt` (mode 0600): this server's latest verified answer from the
//!   back office, kept for its binding and the pair's secret across restarts, and
//!   verified again when read (signature, addressed to this hostid, the binding naming
//!   this hostid and this key). A backup keeps its own answer here, not its main's.
//! - The pair's secret: `PAIR_TOKEN` when set, else the back office's `pair_token` from
//!   the latest verified answer ([`PairToken`]); until there is one the pair has no link.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use parking_lot::{Mutex, RwLock};
use sha2::{Digest, Sha256};
use shared::HostId;
use shared::capability::{CapabilityClaims, ISSUER};
use shared::grant::{BindingClaims, GrantClaims};
use shared::secret::Secret;
use shared::signing::{Signer, TYP_BINDING, Verifier, VerifyError};
use subtle::ConstantTimeEq;

use crate::domain::{Millis, RightsCheck};
use crate::store::files;

/// The server's private key, in `DATA_DIR`.
pub const KEY_FILE: &str = "server-key.pem";
/// The server's latest verified capability answer, in `DATA_DIR`.
pub const ANSWER_FILE: &str = "capability.jwt";

/// Reads `DATA_DIR/server-key.pem`, or makes a new key there (mode 0600) when there is
/// none. A file that is not a key stops the start: a key is never silently replaced.
pub fn load_or_create_key(dir: &Path) -> anyhow::Result<Signer> {
    let path = dir.join(KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(pem) => Signer::from_pem(&pem).map_err(|e| {
            anyhow::anyhow!(
                "{} is not this server's Ed25519 private key (PKCS#8 PEM): {e}. Restore it \
                 from a backup, or remove it to make a new key (the back office binds the \
                 new key on the next answer)",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let signer = Signer::generate();
            files::write_atomically(dir, KEY_FILE, signer.private_pem().expose().as_bytes())
                .with_context(|| format!("writing {}", path.display()))?;
            tracing::info!(
                path = %path.display(),
                key_id = signer.kid(),
                "generated this server's key (it signs every grant)"
            );
            Ok(signer)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Why a binding is not this server's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindingError {
    #[error(
        "the back office's answer carries no binding of this server's key (a back office \
         that does not bind server keys yet?)"
    )]
    Missing,
    #[error("the binding is not signed by the back office's key: {0}")]
    Signature(VerifyError),
    #[error("the binding binds hostid {got}, not this server's {expected}")]
    OtherServer { expected: String, got: String },
    #[error("the binding binds key {got}, not this server's key {expected}")]
    OtherKey { expected: String, got: String },
    #[error("the binding expired at {0}")]
    Expired(String),
}

/// A binding of this server's key that verified.
#[derive(Debug, Clone)]
pub struct Binding {
    pub token: String,
    pub claims: BindingClaims,
}

impl Binding {
    /// Until when grants may be signed under it (Unix seconds).
    pub fn until(&self) -> i64 {
        self.claims.exp
    }
}

/// The pair's secret as both sides of the link read it: the client that calls the other
/// server, and the check of the pair API. Shared, since it may arrive at run time.
#[derive(Clone, Default)]
pub struct PairToken(Arc<RwLock<Option<PairSecret>>>);

struct PairSecret {
    secret: Secret,
    digest: [u8; 32],
}

impl std::fmt::Debug for PairToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.read().is_some() {
            "PairToken(***)"
        } else {
            "PairToken(none)"
        })
    }
}

/// Why a pair request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairRefusal {
    /// No token was sent.
    Missing,
    /// Another token was sent.
    Wrong,
    /// This server has no pair secret yet.
    NoneYet,
}

impl PairToken {
    /// A fixed secret (`PAIR_TOKEN`).
    pub fn fixed(secret: Secret) -> PairToken {
        let t = PairToken::default();
        t.set(secret.expose());
        t
    }

    /// Sets the secret; returns whether it changed.
    pub fn set(&self, secret: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        let mut s = self.0.write();
        if s.as_ref().is_some_and(|s| s.digest == digest) {
            return false;
        }
        *s = Some(PairSecret {
            secret: Secret::new(secret),
            digest,
        });
        true
    }

    pub fn get(&self) -> Option<Secret> {
        self.0.read().as_ref().map(|s| s.secret.clone())
    }

    pub fn is_set(&self) -> bool {
        self.0.read().is_some()
    }

    /// Whether `presented` (a bearer token) is the pair's secret, compared in constant
    /// time.
    pub fn check(&self, presented: Option<&str>) -> Result<(), PairRefusal> {
        let s = self.0.read();
        let Some(s) = s.as_ref() else {
            return Err(PairRefusal::NoneYet);
        };
        let presented = presented.ok_or(PairRefusal::Missing)?;
        let digest = Sha256::digest(presented.as_bytes());
        if presented.len() <= http_kit::auth::MAX_TOKEN && bool::from(digest.ct_eq(&s.digest)) {
            Ok(())
        } else {
            Err(PairRefusal::Wrong)
        }
    }
}

/// What the server knows of itself in the chain of trust.
pub struct Identity {
    hostid: HostId,
    hostid_str: String,
    signer: Signer,
    rights: RightsCheck,
    binding: RwLock<Option<Arc<Binding>>>,
    pair_token: PairToken,
    /// `PAIR_TOKEN` was set: the back office's secret is not used.
    pair_token_configured: bool,
    /// Where the latest verified answer is kept (`None`: not kept, in tests).
    answer_file: Option<PathBuf>,
    /// The last problem with the back office's binding, logged once.
    binding_problem: Mutex<Option<String>>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("hostid", &self.hostid_str)
            .field("key_id", &self.signer.kid())
            .finish_non_exhaustive()
    }
}

/// What taking a verified answer changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnswerTaken {
    pub binding_changed: bool,
    pub pair_token_changed: bool,
}

impl Identity {
    /// `pair_token`: `PAIR_TOKEN` when set. `data_dir`: where the latest answer is kept
    /// (`None`: nowhere).
    pub fn new(
        hostid: HostId,
        signer: Signer,
        producer: Verifier,
        pair_token: Option<Secret>,
        data_dir: Option<&Path>,
    ) -> Identity {
        let pair_token_configured = pair_token.is_some();
        Identity {
            hostid_str: hostid.to_string(),
            rights: RightsCheck::new(producer, hostid.clone()),
            hostid,
            signer,
            binding: RwLock::new(None),
            pair_token: pair_token.map(PairToken::fixed).unwrap_or_default(),
            pair_token_configured,
            answer_file: data_dir.map(|d| d.join(ANSWER_FILE)),
            binding_problem: Mutex::new(None),
        }
    }

    pub fn hostid(&self) -> &HostId {
        &self.hostid
    }

    /// A member of a three-member cluster: rights addressed to the other two members
    /// (`others`) verify too ([`RightsCheck::in_cluster`]); its binding stays its own.
    pub fn in_cluster(self, others: Vec<HostId>) -> Identity {
        Identity {
            rights: self.rights.in_cluster(others),
            ..self
        }
    }

    /// Verifies rights for this server (signed by the producer, for it or its pair).
    pub fn rights_check(&self) -> &RightsCheck {
        &self.rights
    }

    /// This server's public key as it travels in capability requests.
    pub fn public_key(&self) -> String {
        self.signer.public_key()
    }

    pub fn key_id(&self) -> &str {
        self.signer.kid()
    }

    pub fn pair_token(&self) -> &PairToken {
        &self.pair_token
    }

    pub fn pair_token_configured(&self) -> bool {
        self.pair_token_configured
    }

    /// The binding grants are signed under, if any (expired or not).
    pub fn binding(&self) -> Option<Arc<Binding>> {
        self.binding.read().clone()
    }

    /// The binding if grants may be signed under it at `now`; else why not (the problem
    /// with the back office's last binding, when it sent one that was not taken).
    pub fn valid_binding(&self, now: Millis) -> Result<Arc<Binding>, String> {
        let Some(b) = self.binding() else {
            return Err(self
                .binding_problem
                .lock()
                .clone()
                .unwrap_or_else(|| BindingError::Missing.to_string()));
        };
        if b.until() * 1000 <= now {
            return Err(BindingError::Expired(crate::domain::fmt_time(b.until())).to_string());
        }
        Ok(b)
    }

    /// Signs a grant with this server's key.
    pub fn sign_grant(&self, claims: &GrantClaims) -> String {
        claims.sign(&self.signer)
    }

    /// Checks that `token` binds this server's key to its hostid, signed by the
    /// producer, and is still valid.
    pub fn check_binding(&self, token: &str) -> Result<BindingClaims, BindingError> {
        let claims: BindingClaims = self
            .rights
            .producer()
            .decode(token, TYP_BINDING)
            .map_err(BindingError::Signature)?;
        if claims.iss != ISSUER {
            return Err(BindingError::Signature(VerifyError::Malformed(format!(
                "the binding's issuer is `{}`, not the back office",
                claims.iss
            ))));
        }
        if claims.sub != self.hostid_str {
            return Err(BindingError::OtherServer {
                expected: self.hostid_str.clone(),
                got: claims.sub,
            });
        }
        if claims.key != self.signer.public_key() {
            let got = shared::grant::binding_key_id(&claims).unwrap_or_else(|| claims.key.clone());
            return Err(BindingError::OtherKey {
                expected: self.signer.kid().to_owned(),
                got,
            });
        }
        if claims.exp <= shared::now_unix() {
            return Err(BindingError::Expired(crate::domain::fmt_time(claims.exp)));
        }
        Ok(claims)
    }

    /// Takes this server's own verified answer (from a poll): its binding, the pair's
    /// secret (unless `PAIR_TOKEN` is set); keeps it on disk when either changed. A
    /// binding that does not verify is not taken (the one held stays) and is returned as
    /// the error, after the rest was taken.
    pub fn take_answer(
        &self,
        token: &str,
        claims: &CapabilityClaims,
    ) -> Result<AnswerTaken, BindingError> {
        let pair_token_changed = match &claims.pair_token {
            Some(t) if !self.pair_token_configured && !t.is_empty() => {
                let changed = self.pair_token.set(t);
                if changed {
                    tracing::info!("the pair's secret came from the back office");
                }
                changed
            }
            _ => false,
        };
        let binding = claims
            .binding
            .as_deref()
            .ok_or(BindingError::Missing)
            .and_then(|b| self.check_binding(b).map(|c| (b, c)));
        let result = match binding {
            Ok((token, claims)) => {
                let mut held = self.binding.write();
                // A binding like the one held, valid a little longer, is not worth a
                // write: each answer carries one.
                let changed = held.as_ref().is_none_or(|h| {
                    let step = crate::domain::renewal_step(h.claims.iat, h.claims.exp);
                    h.claims.key != claims.key
                        || h.claims.pair != claims.pair
                        || claims.exp > h.claims.exp + step
                        || claims.exp < h.claims.exp
                });
                if changed {
                    tracing::info!(
                        key_id = self.signer.kid(),
                        bound_until = %crate::domain::fmt_time(claims.exp),
                        "the back office bound this server's key"
                    );
                    *held = Some(Arc::new(Binding {
                        token: token.to_owned(),
                        claims,
                    }));
                }
                *self.binding_problem.lock() = None;
                Ok(changed)
            }
            Err(e) => {
                let text = e.to_string();
                let mut last = self.binding_problem.lock();
                if last.as_deref() != Some(&text) {
                    tracing::error!(
                        problem = %text,
                        "this server grants nothing under this answer's binding; it keeps the binding it holds, if still valid"
                    );
                    *last = Some(text);
                }
                Err(e)
            }
        };
        let binding_changed = *result.as_ref().unwrap_or(&false);
        if (binding_changed || pair_token_changed)
            && let Some(path) = &self.answer_file
            && let Some(dir) = path.parent()
            && let Err(e) =
                files::write_atomically(dir, ANSWER_FILE, format!("{token}\n").as_bytes())
        {
            tracing::error!(path = %path.display(), error = %e, "could not keep the back office's answer; a restart waits for the next one");
        }
        result.map(|_| AnswerTaken {
            binding_changed,
            pair_token_changed,
        })
    }

    /// Reads the answer kept on disk at the last start (verified again: signed by the
    /// producer, addressed to this server, its binding this server's key). One that does
    /// not verify is ignored with a warning: the next answer replaces it.
    pub fn load_answer(&self) {
        let Some(path) = &self.answer_file else {
            return;
        };
        let token = match std::fs::read_to_string(path) {
            Ok(t) => t.trim().to_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the kept answer; waiting for the back office's next one");
                return;
            }
        };
        let claims = match self.rights.producer().decode_capability(&token) {
            Ok(c) if c.sub == self.hostid_str => c,
            Ok(c) => {
                tracing::warn!(path = %path.display(), to = %c.sub, "the kept answer is addressed to another server; ignored");
                return;
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "the kept answer does not verify with BACKOFFICE_PUBLIC_KEY; ignored");
                return;
            }
        };
        if let Some(t) = claims.pair_token.as_deref().filter(|t| !t.is_empty())
            && !self.pair_token_configured
        {
            self.pair_token.set(t);
        }
        match claims
            .binding
            .as_deref()
            .map(|b| (b, self.check_binding(b)))
        {
            Some((b, Ok(c))) => {
                tracing::info!(
                    key_id = self.signer.kid(),
                    bound_until = %crate::domain::fmt_time(c.exp),
                    "the back office's binding of this server's key, as kept"
                );
                *self.binding.write() = Some(Arc::new(Binding {
                    token: b.to_owned(),
                    claims: c,
                }));
            }
            Some((_, Err(e))) => {
                tracing::warn!(path = %path.display(), problem = %e, "the kept binding is not this server's; waiting for the back office's next answer");
            }
            None => {}
        }
    }
}
