//! The capability protocol between license servers and the back office.
//!
//! A license server sends a [`CapabilityRequest`] at startup and then on every poll; the
//! back office answers with a [`CapabilityResponse`] whose `token` is a JWT (EdDSA) over
//! [`CapabilityClaims`]: the complete current rights of the server's pair, bound to the
//! requesting hostid and to the request's ID.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::HostId;

/// The role a license server has (or claims) in the registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Main,
    Backup,
    Standalone,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Main => "main",
            Role::Backup => "backup",
            Role::Standalone => "standalone",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "main" => Some(Role::Main),
            "backup" => Some(Role::Backup),
            "standalone" => Some(Role::Standalone),
            _ => None,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A server's own status (contract).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ServerStatus {
    /// Serving licenses.
    Active,
    /// Up, standing by.
    Ready,
    /// Not reachable.
    Inaccessible,
}

impl ServerStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ServerStatus::Active => "active",
            ServerStatus::Ready => "ready",
            ServerStatus::Inaccessible => "inaccessible",
        }
    }
}

/// A three-member failover cluster's status (contract), as one member sees it:
/// `operational` when it is linked to both other members, `partially_operational` to one
/// (the two serve), `not_operational` to none (nothing is granted; leases are kept until
/// they lapse).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ClusterStatus {
    Operational,
    PartiallyOperational,
    NotOperational,
}

impl ClusterStatus {
    /// The status of a member that sees `reachable` of the two other members.
    pub fn of_links(reachable: usize) -> ClusterStatus {
        match reachable {
            0 => ClusterStatus::NotOperational,
            1 => ClusterStatus::PartiallyOperational,
            _ => ClusterStatus::Operational,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ClusterStatus::Operational => "operational",
            ClusterStatus::PartiallyOperational => "partially_operational",
            ClusterStatus::NotOperational => "not_operational",
        }
    }

    pub fn parse(s: &str) -> Option<ClusterStatus> {
        [
            ClusterStatus::Operational,
            ClusterStatus::PartiallyOperational,
            ClusterStatus::NotOperational,
        ]
        .into_iter()
        .find(|c| c.as_str() == s)
    }
}

/// A failover pair's status (contract).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum PairStatus {
    PairedAvailable,
    MainNotAvailable,
    BackupNotAvailable,
    NotSynced,
    Recovering,
}

impl PairStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PairStatus::PairedAvailable => "paired_available",
            PairStatus::MainNotAvailable => "main_not_available",
            PairStatus::BackupNotAvailable => "backup_not_available",
            PairStatus::NotSynced => "not_synced",
            PairStatus::Recovering => "recovering",
        }
    }

    pub fn parse(s: &str) -> Option<PairStatus> {
        [
            PairStatus::PairedAvailable,
            PairStatus::MainNotAvailable,
            PairStatus::BackupNotAvailable,
            PairStatus::NotSynced,
            PairStatus::Recovering,
        ]
        .into_iter()
        .find(|p| p.as_str() == s)
    }
}

/// Rights asked for at startup: `RIGHTS_IDS=ACTIVATION_ID:COUNT,…`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RightsRequest {
    pub activation_id: String,
    pub count: u32,
}

/// Parses `ACT-1:5,ACT-2:10` (whitespace allowed around items).
pub fn parse_rights_ids(input: &str) -> Result<Vec<RightsRequest>, String> {
    let mut out = Vec::new();
    for item in input.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (id, count) = item
            .rsplit_once(':')
            .ok_or_else(|| format!("`{item}` is not ACTIVATION_ID:COUNT"))?;
        let count: u32 = count
            .trim()
            .parse()
            .map_err(|_| format!("`{item}`: the count must be a positive whole number"))?;
        if count == 0 || id.trim().is_empty() {
            return Err(format!(
                "`{item}`: need an activation ID and a count above 0"
            ));
        }
        out.push(RightsRequest {
            activation_id: id.trim().to_owned(),
            count,
        });
    }
    Ok(out)
}

/// Usage of one feature, as a license server reports it with its polls.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct FeatureUsage {
    pub feature: String,
    #[serde(default)]
    pub version: String,
    pub count: u32,
    pub in_use: u32,
    /// Seats in use beyond `count` (overdraft seats of the line items that allow them):
    /// the overage the back office shows.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub overdraft: u32,
    /// Seats borrowed (held offline by clients), part of `in_use`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub borrowed: u32,
}

/// What a server tells the back office about itself with each request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ServerReport {
    pub server_status: ServerStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pair_status: Option<PairStatus>,
    #[serde(default)]
    pub usage: Vec<FeatureUsage>,
    /// The main has dropped its backup (absence limit or operator): the back office
    /// removes it from the pair.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub backup_dropped: bool,
    /// Closed usage intervals the back office may not have yet (servers before usage
    /// reports send none). A report may repeat intervals: the back office keeps each once,
    /// by [`UsageInterval::key`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub intervals: Vec<UsageInterval>,
    /// A cluster member's view of its cluster (linked to both other members, to one, to
    /// none); absent for a standalone server or a pair.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_status: Option<ClusterStatus>,
}

/// The most usage intervals one request carries.
pub const MAX_REPORTED_INTERVALS: usize = 100;

/// The usage of one feature over one interval, as the server that served it counted it.
///
/// Intervals are aligned to the clock (`starts_at` a multiple of their length since the
/// Unix epoch), so both servers of a pair cut the same ones. A server that served only
/// part of an interval (it took over, or handed back, within it) reports that part:
/// `served_from`..`served_until`; the back office adds the parts up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct UsageInterval {
    pub feature: String,
    #[serde(default)]
    pub version: String,
    /// When the interval starts (Unix time, seconds; inclusive).
    #[cfg_attr(feature = "openapi", schema(format = Int64, minimum = 0, example = 1798366800))]
    pub starts_at: i64,
    /// When it ends (Unix time, seconds; exclusive).
    #[cfg_attr(feature = "openapi", schema(format = Int64, minimum = 0, example = 1798367100))]
    pub ends_at: i64,
    /// The hostid of the server that served this part of the interval.
    pub served_by: HostId,
    /// When the part of the interval it served starts (Unix time, seconds).
    #[cfg_attr(feature = "openapi", schema(format = Int64, minimum = 0, example = 1798366800))]
    pub served_from: i64,
    /// When that part ends (Unix time, seconds).
    #[cfg_attr(feature = "openapi", schema(format = Int64, minimum = 0, example = 1798367100))]
    pub served_until: i64,
    /// Seats licensed (the most during the part).
    pub count: u32,
    /// The most seats in use at once.
    pub peak: u32,
    /// Seats in use times seconds over the part: the average in use over the interval is
    /// `seat_secs / (ends_at - starts_at)`.
    pub seat_secs: u64,
    /// Checkouts granted (borrows and overdraft seats included).
    pub grants: u32,
    /// Checkouts refused, by the contract code that refused them (`NO_LICENSE`,
    /// `EXCLUDED`, `OVER_MAX`, `RESERVED`, …).
    #[serde(default)]
    pub denials: std::collections::BTreeMap<String, u32>,
    /// Denied clients (by client ID, or by user and host) that did not get a seat of
    /// the feature on a retry within the retry window (a minute unless set); counted in
    /// the interval of their first denial's window end.
    pub true_denials: u32,
    /// Grants that were borrows.
    pub borrowed: u32,
    /// Grants of overdraft seats.
    pub overdraft: u32,
    /// Clients that joined a queue for a seat (0 where no queue exists).
    #[serde(default)]
    pub queued: u32,
}

/// Interval start, feature, version, who served, from when: see [`UsageInterval::key`]
/// (in this order, so that keys sort oldest first).
pub type UsageKey = (i64, String, String, String, i64);

impl UsageInterval {
    /// What identifies an interval's part: a repeated report of it changes nothing.
    pub fn key(&self) -> UsageKey {
        (
            self.starts_at,
            self.feature.clone(),
            self.version.clone(),
            self.served_by.to_string(),
            self.served_from,
        )
    }
}

/// `POST /api/v1/capability` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CapabilityRequest {
    /// Unique per request; the answer is bound to it and a repeated ID is refused.
    pub request_id: Uuid,
    /// The sender's hostid.
    pub hostid: HostId,
    pub role: Role,
    /// Main only: `BACKUP_SERVER_HOSTID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_hostid: Option<HostId>,
    /// A member of a three-member cluster only (with role `standalone`):
    /// `CLUSTER_MEMBER_HOSTIDS`, the other two members' hostids. The back office registers
    /// the three as one cluster, which holds the rights.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cluster_member_hostids: Vec<HostId>,
    /// The sender's clock (Unix time, seconds), checked against the back office's.
    #[cfg_attr(feature = "openapi", schema(format = Int64, minimum = 0, example = 1798366799))]
    pub sent_at: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rights: Vec<RightsRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<ServerReport>,
    /// The server's own Ed25519 public key (base64url of its 32 bytes), which signs the
    /// grants it hands to clients; the answer binds it to the hostid
    /// ([`CapabilityClaims::binding`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_key: Option<String>,
    /// Makes this request the server's live link: the back office holds it open until
    /// the server's rights differ from `revision` (answered then, signed like any answer)
    /// or `wait_secs` pass (answered `204 No Content`: nothing changed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<LinkWait>,
}

/// The live link's part of a capability request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct LinkWait {
    /// The [`CapabilityClaims::revision`] of the answer the server holds.
    pub revision: String,
    /// How long to hold the request when nothing changes, in seconds (the back office
    /// holds it for less when its `SERVER_TIMEOUT` asks for more frequent contact).
    pub wait_secs: u32,
}

/// `POST /api/v1/capability` answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CapabilityResponse {
    /// A JWT (EdDSA) over [`CapabilityClaims`].
    pub token: String,
}

/// One right: a count of a feature from one line item.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Right {
    pub activation_id: String,
    pub feature: String,
    #[serde(default)]
    pub version: String,
    pub count: u32,
    /// When the right starts (Unix time, seconds).
    #[cfg_attr(feature = "openapi", schema(format = Int64, minimum = 0, example = 1798366799))]
    pub starts_at: i64,
    /// When it ends (Unix time, seconds); `None` for a permanent right.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(format = Int64, minimum = 0, example = 1829902799))]
    pub expires_at: Option<i64>,
    /// The longest a client may borrow these seats (seconds); absent when the line item
    /// is not borrowable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_borrow_secs: Option<u64>,
    /// Seats a server may grant beyond `count` once it is used up (marked `overdraft`,
    /// reported as overage); 0 when absent.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub overdraft: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Who is who in a pair.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PairInfo {
    pub id: String,
    pub main: HostId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<HostId>,
}

/// The three-member cluster a server is a member of.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClusterInfo {
    pub id: String,
    /// The three members' hostids, sorted.
    pub members: Vec<HostId>,
}

/// The signed content of a capability response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CapabilityClaims {
    pub iss: String,
    /// The hostid the answer is addressed to.
    pub sub: String,
    /// The request this answers.
    pub request_id: Uuid,
    /// When it was signed (Unix time, seconds).
    #[cfg_attr(feature = "openapi", schema(format = Int64, minimum = 0, example = 1798366799))]
    pub iat: i64,
    /// When it stops being fresh (Unix time, seconds).
    #[cfg_attr(feature = "openapi", schema(format = Int64, minimum = 0, example = 1798367099))]
    pub exp: i64,
    pub server_id: String,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pair: Option<PairInfo>,
    /// The cluster whose rights these are, for a member of a three-member cluster: the
    /// three members receive the same rights, each in an answer addressed to it, and
    /// each member takes the pool's rights from an answer that names it here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterInfo>,
    /// How often to poll, in seconds.
    pub poll_interval_secs: u64,
    pub rights: Vec<Right>,
    /// The rights of this answer may be served until then (Unix time, seconds) without a newer
    /// answer; later the server stops granting and says why. This bounds what restoring
    /// an old answer (a rollback of the server's files) can gain.
    pub serve_until: i64,
    /// The server binding ([`crate::grant::BindingClaims`], a token signed with the same
    /// key) for the `server_key` of the request, when it sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binding: Option<String>,
    /// The secret the two servers of the pair authenticate each other with, issued by
    /// the back office for the pair (servers with `PAIR_TOKEN` set use theirs instead).
    /// Sent to both servers of a pair only, over the authenticated channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pair_token: Option<String>,
}

impl CapabilityClaims {
    /// What the live link compares: see [`revision`].
    pub fn revision(&self) -> String {
        revision(
            &self.server_id,
            self.role,
            self.pair.as_ref(),
            self.cluster.as_ref(),
            &self.rights,
            self.pair_token.as_deref(),
        )
    }
}

/// The revision of an answer: a digest of what in it is the server's rights and place
/// (its ID and role, its pair or cluster, its rights, the pair's secret), not of what
/// every answer renews (times, binding, request ID). Two answers with the same revision
/// change nothing on the server; the back office computes it from the answer it would
/// sign, the server from the answer it holds.
pub fn revision(
    server_id: &str,
    role: Role,
    pair: Option<&PairInfo>,
    cluster: Option<&ClusterInfo>,
    rights: &[Right],
    pair_token: Option<&str>,
) -> String {
    use base64::Engine;
    use sha2::{Digest, Sha256};
    // Serialising these types cannot fail (no maps with non-string keys, no custom code).
    // Without a cluster, the digest of the answers before clusters: revisions held by
    // servers across an upgrade stay the same.
    let json = match cluster {
        None => serde_json::to_vec(&(server_id, role, pair, rights, pair_token)),
        Some(c) => serde_json::to_vec(&(server_id, role, pair, rights, pair_token, c)),
    }
    .unwrap_or_default();
    let digest = Sha256::digest(&json);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..16])
}

pub const ISSUER: &str = "licensing-backoffice";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rights_ids_parse() {
        let r = parse_rights_ids(" ACT-1:5, ACT-2:10 ,").unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].activation_id, "ACT-2");
        assert_eq!(r[1].count, 10);
        assert!(parse_rights_ids("ACT-1").is_err());
        assert!(parse_rights_ids("ACT-1:0").is_err());
        assert!(parse_rights_ids("ACT-1:-3").is_err());
        assert!(parse_rights_ids("").unwrap().is_empty());
    }

    #[test]
    fn unknown_fields_are_refused() {
        let json = r#"{"request_id":"67e55044-10b1-426f-9247-bb680e5fe0c8","hostid":"string:a","role":"main","sent_at":1,"extra":1}"#;
        assert!(serde_json::from_str::<CapabilityRequest>(json).is_err());
    }

    #[test]
    fn a_revision_changes_with_the_rights_and_not_with_the_times() {
        let right = |count| Right {
            activation_id: "ACT".into(),
            feature: "cad".into(),
            version: String::new(),
            count,
            starts_at: 0,
            expires_at: None,
            max_borrow_secs: None,
            overdraft: 0,
        };
        let r = |count, token| revision("srv", Role::Main, None, None, &[right(count)], token);
        assert_eq!(r(5, None), r(5, None));
        assert_ne!(r(5, None), r(6, None));
        assert_ne!(r(5, None), r(5, Some("secret")));
        assert_eq!(r(5, None).len(), 22);
        let cluster = ClusterInfo {
            id: "c".into(),
            members: vec![HostId::parse("string:a").unwrap()],
        };
        let rc = revision("srv", Role::Main, None, Some(&cluster), &[right(5)], None);
        assert_ne!(rc, r(5, None), "a cluster is part of the revision");
    }
}
