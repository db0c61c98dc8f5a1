//! Rights exist only as the back office's signed answers.
//!
//! A [`Rights`] is a capability answer kept verbatim (the JWS). Its counts are read only
//! from claims that verified here, with the producer's key, for this server
//! ([`RightsCheck::verify`]): decoding a token from a file or from the pair partner gives
//! rights that are *not verified*, and rights that are not verified make no pool — a
//! path that forgot to verify serves nothing rather than something unsigned. Every place
//! rights enter the state (the back office's answers, the journal and snapshot at every
//! start, the pair's changes, snapshots and handbacks) verifies them and refuses what
//! does not verify.
//!
//! An answer verifies for a server when it is signed by the producer (`kid`, signature,
//! kind, issuer) and is addressed to it or names it in its pair (the main's answer is
//! also the backup's copy; a backup's answer, taken back at a failback, also the main's).
//! A member of a three-member cluster takes only its cluster's rights
//! ([`RightsCheck::in_cluster`]): an answer that names, as the cluster it was issued to,
//! exactly the three members this member runs with (the back office registered them as
//! one cluster), addressed to one of them; the pool's rights in the cluster's log are
//! checked against the raft membership where they stand ([`RightsCheck::of_clusters`]),
//! so that a member replaced by another changes nothing for the rights held. Each member polls with its own hostid, and
//! the pool's rights are the answer of whichever member led when it arrived, verified
//! again by every member as it applies it; a server taken out of the cluster, or one
//! that is not in it, takes none of them.
//! How old it may be is not part of it: an answer stays authentic, and past its
//! `serve_until` the server grants nothing from it ([`Rights::serve_until`]).

use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use shared::HostId;
use shared::capability::{CapabilityClaims, Right};
use shared::signing::{Verifier, VerifyError};

/// A capability answer (the token), with its claims once they verified here.
#[derive(Clone)]
pub struct Rights {
    token: Arc<str>,
    verified: Option<Arc<CapabilityClaims>>,
}

impl Rights {
    /// Rights as read from a file or the wire: not verified, so they count for nothing
    /// until [`RightsCheck::verify`] says otherwise.
    pub fn unverified(token: impl Into<Arc<str>>) -> Rights {
        Rights {
            token: token.into(),
            verified: None,
        }
    }

    /// The answer as the back office signed it.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The claims, if they verified.
    pub fn claims(&self) -> Option<&CapabilityClaims> {
        self.verified.as_deref()
    }

    pub fn is_verified(&self) -> bool {
        self.verified.is_some()
    }

    /// The rights that count: none unless verified.
    pub fn rights(&self) -> &[Right] {
        self.claims().map_or(&[], |c| &c.rights)
    }

    /// When the answer was signed (Unix seconds); unverified rights are older than any.
    pub fn issued_at(&self) -> i64 {
        self.claims().map_or(i64::MIN, |c| c.iat)
    }

    /// Until when they may be served without a newer answer (Unix seconds); unverified
    /// rights never.
    pub fn serve_until(&self) -> i64 {
        self.claims().map_or(i64::MIN, |c| c.serve_until)
    }
}

impl PartialEq for Rights {
    fn eq(&self, other: &Rights) -> bool {
        self.token == other.token
    }
}

impl Eq for Rights {}

impl std::fmt::Debug for Rights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token carries the pair's secret: never printed.
        match self.claims() {
            Some(c) => write!(
                f,
                "Rights(verified, to {}, issued {}, {} rights)",
                c.sub,
                c.iat,
                c.rights.len()
            ),
            None => write!(f, "Rights(not verified, {} bytes)", self.token.len()),
        }
    }
}

/// On the wire and on disk: the token, nothing else.
impl Serialize for Rights {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.token)
    }
}

impl<'de> Deserialize<'de> for Rights {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Rights::unverified)
    }
}

/// How much later (seconds) a newer answer like the one held must let its rights (or its
/// binding) be served for it to be taken: a minute, or a quarter of the held one's window
/// when that is shorter. So what is kept carries a recent `serve_until` without a write
/// for every poll, and never runs out while the back office answers.
pub fn renewal_step(issued_at: i64, valid_until: i64) -> i64 {
    ((valid_until - issued_at) / 4).clamp(0, 60)
}

/// Why rights do not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RightsError {
    #[error("not signed by the back office's key (BACKOFFICE_PUBLIC_KEY): {0}")]
    Signature(VerifyError),
    #[error("addressed to {to}, and its pair does not name this server ({hostid})")]
    NotForThisServer { to: String, hostid: String },
    #[error(
        "addressed to {to} as a member of {theirs}, not the rights of this server's cluster ({ours}); \
         CLUSTER_MEMBER_HOSTIDS must name the members the back office registered"
    )]
    NotThisCluster {
        to: String,
        theirs: String,
        ours: String,
    },
}

/// Verifies rights for one server: the producer's key and the server's hostid.
#[derive(Debug, Clone)]
pub struct RightsCheck {
    producer: Verifier,
    hostid: HostId,
    /// A cluster member's clusters: the sets of three hostids (each sorted) whose answers
    /// verify; `None` for a standalone or pair server.
    cluster: Option<Vec<Vec<HostId>>>,
    /// Also the answer of the members before one was replaced (a set that shares two
    /// members with one of `cluster`): the rights a snapshot holds were verified as they
    /// were applied, under the membership of then.
    previous: bool,
}

impl RightsCheck {
    pub fn new(producer: Verifier, hostid: HostId) -> RightsCheck {
        RightsCheck {
            producer,
            hostid,
            cluster: None,
            previous: false,
        }
    }

    /// The check of a member of a three-member cluster whose other members are `others`:
    /// only answers issued to this cluster (naming exactly these three members) and
    /// addressed to one of them verify.
    pub fn in_cluster(self, others: Vec<HostId>) -> RightsCheck {
        let cluster = std::iter::once(self.hostid.clone()).chain(others).collect();
        self.of_clusters(vec![cluster])
    }

    /// The same check for the answers issued to one of `clusters` (each a set of three
    /// hostids): a cluster's state machine verifies against the raft membership in
    /// effect where the rights stand in the log (two sets while a member is replaced),
    /// so that every member decides alike whatever its own settings say.
    pub fn of_clusters(&self, clusters: Vec<Vec<HostId>>) -> RightsCheck {
        let clusters = clusters
            .into_iter()
            .map(|mut c| {
                c.sort_by_key(ToString::to_string);
                c
            })
            .collect();
        RightsCheck {
            cluster: Some(clusters),
            previous: false,
            ..self.clone()
        }
    }

    /// The same check, also taking the answer issued to the members before one of them
    /// was replaced (for the rights a snapshot holds, verified as they were applied).
    pub fn or_previous(self) -> RightsCheck {
        RightsCheck {
            previous: true,
            ..self
        }
    }

    pub fn hostid(&self) -> &HostId {
        &self.hostid
    }

    pub fn producer(&self) -> &Verifier {
        &self.producer
    }

    /// Verifies `rights` (again, if they were): signed by the producer, addressed to this
    /// server or naming it in the pair (on a cluster member: issued to this cluster, and
    /// addressed to one of its members). On success their counts count.
    pub fn verify(&self, rights: &mut Rights) -> Result<(), RightsError> {
        rights.verified = None;
        let claims = self
            .producer
            .decode_capability(&rights.token)
            .map_err(RightsError::Signature)?;
        if let Some(clusters) = &self.cluster {
            self.of_this_cluster(clusters, &claims)?;
        } else {
            let named = claims.sub == self.hostid.to_string()
                || claims.pair.as_ref().is_some_and(|p| {
                    p.main == self.hostid || p.backup.as_ref() == Some(&self.hostid)
                });
            if !named {
                return Err(RightsError::NotForThisServer {
                    to: claims.sub,
                    hostid: self.hostid.to_string(),
                });
            }
        }
        rights.verified = Some(Arc::new(claims));
        Ok(())
    }

    /// A cluster member's rule: the answer names this cluster (the same three members)
    /// and is addressed to one of them.
    fn of_this_cluster(
        &self,
        clusters: &[Vec<HostId>],
        claims: &CapabilityClaims,
    ) -> Result<(), RightsError> {
        let list = |m: &[HostId]| {
            m.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let theirs = claims.cluster.as_ref().map(|c| {
            let mut m = c.members.clone();
            m.sort_by_key(ToString::to_string);
            m
        });
        if let Some(theirs) = &theirs {
            let shared = |ours: &Vec<HostId>| theirs.iter().filter(|m| ours.contains(m)).count();
            let named = clusters.iter().any(|ours| {
                ours == theirs || (self.previous && theirs.len() == 3 && shared(ours) == 2)
            });
            let addressed = theirs.iter().any(|m| claims.sub == m.to_string());
            if named && addressed {
                return Ok(());
            }
        }
        Err(RightsError::NotThisCluster {
            to: claims.sub.clone(),
            theirs: theirs.map_or_else(
                || "no cluster".to_owned(),
                |m| format!("the cluster of {}", list(&m)),
            ),
            ours: clusters
                .iter()
                .map(|c| list(c))
                .collect::<Vec<_>>()
                .join(" or "),
        })
    }

    /// Rights from claims the caller has just verified in full (a fresh answer of the
    /// back office, whose signature and addressee the poller checked).
    pub fn fresh(&self, token: &str, claims: CapabilityClaims) -> Rights {
        Rights {
            token: token.into(),
            verified: Some(Arc::new(claims)),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use shared::capability::{ISSUER, PairInfo, Role};
    use shared::signing::Signer;
    use uuid::Uuid;

    pub(crate) fn claims(sub: &str, pair: Option<PairInfo>, count: u32) -> CapabilityClaims {
        let now = shared::now_unix();
        CapabilityClaims {
            iss: ISSUER.into(),
            sub: sub.into(),
            request_id: Uuid::new_v4(),
            iat: now,
            exp: now + 300,
            server_id: "s".into(),
            role: Role::Standalone,
            pair,
            cluster: None,
            poll_interval_secs: 60,
            rights: vec![Right {
                activation_id: "A".into(),
                feature: "cad".into(),
                version: String::new(),
                count,
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

    fn host(s: &str) -> HostId {
        HostId::parse(s).unwrap()
    }

    /// The producer of the domain's (and the cluster's) tests.
    pub(crate) fn producer() -> &'static Signer {
        static P: std::sync::OnceLock<Signer> = std::sync::OnceLock::new();
        P.get_or_init(Signer::generate)
    }

    /// The check of `string:me`'s rights, signed by [`producer`].
    pub(crate) fn check() -> RightsCheck {
        RightsCheck::new(
            Verifier::from_key(&producer().verifying_key()),
            host("string:me"),
        )
    }

    /// Verified rights for `string:me`, signed at `iat`.
    pub(crate) fn signed(rights: Vec<Right>, iat: i64) -> Rights {
        let mut c = claims("string:me", None, 0);
        c.rights = rights;
        c.iat = iat;
        let token = producer().sign(&c);
        check().fresh(&token, c)
    }

    #[test]
    fn rights_count_only_once_verified_for_this_server_or_its_pair() {
        let producer = Signer::generate();
        let check =
            |me: &str| RightsCheck::new(Verifier::from_key(&producer.verifying_key()), host(me));
        let pair = PairInfo {
            id: "p".into(),
            main: host("string:main"),
            backup: Some(host("string:backup")),
        };
        let token = producer.sign(&claims("string:main", Some(pair), 7));
        let mut r = Rights::unverified(token.as_str());
        assert!(r.rights().is_empty(), "not verified: no rights");
        check("string:main").verify(&mut r).unwrap();
        assert_eq!(r.rights()[0].count, 7);
        // The backup of the pair takes the main's answer; a stranger does not.
        check("string:backup").verify(&mut r).unwrap();
        assert!(matches!(
            check("string:other").verify(&mut r),
            Err(RightsError::NotForThisServer { .. })
        ));
        assert!(
            r.rights().is_empty(),
            "a failed check leaves nothing counted"
        );
        // A cluster member takes only answers issued to its cluster (the same three
        // members), addressed to one of them.
        let member = |me: &str, others: &[&str]| {
            check(me).in_cluster(others.iter().map(|h| host(h)).collect())
        };
        let issued = |sub: &str, members: &[&str]| {
            let mut c = claims(sub, None, 4);
            c.cluster = Some(shared::capability::ClusterInfo {
                id: "c".into(),
                members: members.iter().map(|h| host(h)).collect(),
            });
            Rights::unverified(producer.sign(&c).as_str())
        };
        let mut r = issued("string:m1", &["string:m1", "string:m2", "string:m3"]);
        member("string:m2", &["string:m1", "string:m3"])
            .verify(&mut r)
            .unwrap();
        assert_eq!(r.rights()[0].count, 4);
        member("string:m1", &["string:m3", "string:m2"])
            .verify(&mut r)
            .unwrap();
        let refused = |me: &str, others: &[&str], r: &mut Rights| {
            let e = member(me, others).verify(r).unwrap_err();
            assert!(matches!(e, RightsError::NotThisCluster { .. }), "{e}");
            assert!(r.rights().is_empty());
        };
        // A fourth server that names two of the members, or a member configured with
        // another cluster.
        refused("string:m4", &["string:m1", "string:m2"], &mut r);
        refused("string:m2", &["string:m3", "string:m4"], &mut r);
        // Rights of a standalone server (no cluster), even addressed to a member.
        let mut r = Rights::unverified(producer.sign(&claims("string:m1", None, 4)).as_str());
        refused("string:m2", &["string:m1", "string:m3"], &mut r);
        // A member taken out: the cluster the back office names is another one.
        let mut r = issued("string:m1", &["string:m1", "string:m3", "string:m5"]);
        refused("string:m2", &["string:m1", "string:m3"], &mut r);
        // Issued to this cluster, but addressed to a server outside it.
        let mut r = issued("string:m9", &["string:m1", "string:m2", "string:m3"]);
        refused("string:m2", &["string:m1", "string:m3"], &mut r);

        // Against the raft membership (a cluster's log): while m3 is replaced by m4 both
        // sets verify; afterwards only the new one, or the old one for the rights a
        // snapshot holds (verified when they were applied), never a set two members off.
        let hosts = |m: &[&str]| m.iter().map(|h| host(h)).collect::<Vec<_>>();
        let (old, new) = (
            hosts(&["string:m1", "string:m2", "string:m3"]),
            hosts(&["string:m4", "string:m1", "string:m2"]),
        );
        let base = check("string:m4");
        let mut before = issued("string:m1", &["string:m1", "string:m2", "string:m3"]);
        let mut after = issued("string:m4", &["string:m1", "string:m2", "string:m4"]);
        let joint = base.of_clusters(vec![old.clone(), new.clone()]);
        joint.verify(&mut before).unwrap();
        joint.verify(&mut after).unwrap();
        let replaced = base.of_clusters(vec![new.clone()]);
        replaced.verify(&mut after).unwrap();
        assert!(replaced.verify(&mut before).is_err());
        replaced.clone().or_previous().verify(&mut before).unwrap();
        let mut far = issued("string:m1", &["string:m1", "string:m5", "string:m6"]);
        assert!(replaced.or_previous().verify(&mut far).is_err());
        assert!(
            base.of_clusters(vec![])
                .or_previous()
                .verify(&mut after)
                .is_err(),
            "no membership: nothing verifies"
        );

        // Another key, or claims edited under the old signature: refused.
        let rogue = Signer::generate().sign(&claims("string:main", None, 999));
        let mut r = Rights::unverified(rogue.as_str());
        assert!(matches!(
            check("string:main").verify(&mut r),
            Err(RightsError::Signature(VerifyError::UnknownKey { .. }))
        ));
        let parts: Vec<&str> = token.split('.').collect();
        use base64::Engine;
        let forged_claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(&claims("string:main", None, 999)).unwrap());
        let forged = format!("{}.{forged_claims}.{}", parts[0], parts[2]);
        let mut r = Rights::unverified(forged.as_str());
        assert!(matches!(
            check("string:main").verify(&mut r),
            Err(RightsError::Signature(VerifyError::BadSignature(_)))
        ));
        assert!(r.rights().is_empty());
    }

    #[test]
    fn rights_travel_as_their_token_and_arrive_unverified() {
        let producer = Signer::generate();
        let token = producer.sign(&claims("string:main", None, 3));
        let check = RightsCheck::new(
            Verifier::from_key(&producer.verifying_key()),
            host("string:main"),
        );
        let mut r = Rights::unverified(token.as_str());
        check.verify(&mut r).unwrap();
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(json, format!("\"{token}\""));
        let back: Rights = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
        assert!(!back.is_verified());
        assert!(!format!("{r:?}").contains(&token[..20]));
    }
}
