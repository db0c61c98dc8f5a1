//! The license server's client API: checkout, renew, return, and what it reports.
//!
//! Every time on the wire is Unix time in seconds (since 1970-01-01T00:00:00Z, UTC).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// `POST /api/v1/leases` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(
    feature = "openapi",
    schema(example = json!({
        "feature": "cad", "count": 1, "client_id": "ws-17:4242",
        "user": "alice", "host": "ws-17",
        "client_secret": "q2V0aGlzIGlzIG5vdCBhIHJlYWwgc2VjcmV0IGF0IGFsbA"
    }))
)]
#[serde(deny_unknown_fields)]
pub struct CheckoutRequest {
    /// The feature's name, 1 to 256 printable characters.
    pub feature: String,
    /// A specific version (at most 64 printable characters); any version of the feature
    /// when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Seats to take, 1 when absent.
    #[serde(default = "one")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, default = 1))]
    pub count: u32,
    /// The client's identity (1 to 256 printable characters).
    pub client_id: String,
    /// The operating-system user the client runs as (1 to 256 printable characters; the
    /// client library sends the OS's). What `USER` and `GROUP` rules of the server's
    /// options file match; a checkout without one matches none of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The host the client runs on (1 to 256 printable characters; the client library
    /// sends the OS's host name). What `HOST` and `HOST_GROUP` rules match (ignoring ASCII
    /// case); a checkout without one matches none of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// A secret only this client knows (16 to 256 printable characters; the client
    /// library sends a random one per client). A checkout of a feature that names the
    /// client ID of a live lease of it gets that lease back, renewed, only with the secret
    /// the lease was granted with (or with the lease's token as `Authorization: Bearer`);
    /// otherwise it is another client's checkout and is granted a lease of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, min_length = 16, max_length = 256))]
    pub client_secret: Option<ClientSecret>,
    /// Borrow the seats for this long (seconds, 1 to 365 days, and at most the line
    /// item's `max_borrow_secs`): a lease for offline use, granted anew (never an existing
    /// lease reclaimed), not renewed, ending then (or sooner, at the end of the server's
    /// binding or rights, shown in `expires_at`) unless returned early. A line item that
    /// is not borrowable: `FORBIDDEN`; longer than allowed: `VALIDATION_ERROR` (field
    /// `borrow_secs`, naming the maximum).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 1, maximum = 31_536_000, example = 604800)
    )]
    pub borrow_secs: Option<u64>,
    /// Wait in line this long (seconds, 1 to the server's `QUEUE_MAX_WAIT`, 3,600 by
    /// default) when no seat is free: the answer is then `202` with the client's place
    /// ([`QueuePlace`]), and seats are granted to those in line first come, first served
    /// as they free. The client repeats the same checkout (same client ID and secret, or
    /// the place's token as `Authorization: Bearer`) to pick its seat up: the server
    /// holds that request until the seat is granted (`201`, the lease) or for at most
    /// [`QUEUE_POLL_SECS`] (`202` again, the place now). Out of range:
    /// `VALIDATION_ERROR` (field `queue_secs`); not with `borrow_secs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, example = 600))]
    pub queue_secs: Option<u64>,
}

/// How long a server holds a queued client's repeated checkout before it answers its
/// place again (seconds).
pub const QUEUE_POLL_SECS: u64 = 20;

/// A client's place in line (`202` answer to a checkout with `queue_secs`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QueuePlace {
    /// The place's ID: the ID the lease will have once granted.
    pub queue_id: Uuid,
    /// Proves the place (and then the lease): `Authorization: Bearer` to pick the seat up
    /// or to leave the line (`DELETE /api/v1/queue/{queue_id}`).
    pub token: String,
    pub feature: String,
    /// The version asked for; any when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub count: u32,
    pub client_id: String,
    /// 1: the next of this feature's line to be granted a seat.
    pub position: u32,
    /// Clients in line for the feature in all.
    pub queued: u32,
    /// When the client joined the line, (Unix time, seconds).
    pub queued_at: i64,
    /// When the place lapses unless a seat was granted, (Unix time, seconds).
    pub queued_until: i64,
    /// Why no seat was granted at once.
    pub reason: String,
    /// The server holding the place; the backup of a pair when the main is away.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub main_uri: Option<String>,
}

/// A client in line, as an operator sees it (`GET /api/v1/status`, the admin usage).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QueuedInfo {
    pub queue_id: Uuid,
    pub feature: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub count: u32,
    pub client_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// 1: next in its feature's line.
    pub position: u32,
    /// When the client joined the line, (Unix time, seconds).
    pub queued_at: i64,
    /// When the client gives up unless granted a seat, (Unix time, seconds).
    pub queued_until: i64,
}

/// The longest borrow a client may ask for (365 days, the back office's limit too).
pub const MAX_BORROW_SECS: u64 = 365 * 86_400;

fn one() -> u32 {
    1
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A client's secret (see [`CheckoutRequest::client_secret`]): sent as it is, never shown
/// by `Debug`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ClientSecret(String);

impl ClientSecret {
    pub fn new(secret: impl Into<String>) -> Self {
        ClientSecret(secret.into())
    }

    /// A new random secret (256 bits).
    pub fn random() -> Self {
        ClientSecret(crate::random_token::<32>())
    }

    /// The secret itself; call only where it is used, never to log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientSecret(***)")
    }
}

/// A granted lease (answer to checkout and renew).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(
    feature = "openapi",
    schema(example = json!({
        "lease_id": "0b9e7c1e-6a53-4f47-9d59-3c1d2a0f6b11",
        "token": "q5bD2n1S0Jm0pQfK8cQm3T5rR8b7H2yWc9uYV4s3Lxk",
        "feature": "cad", "version": "2.0", "count": 1, "client_id": "ws-17:4242",
        "granted_at": 1767225600, "expires_at": 1767225900, "renew_after": 1767225750,
        "served_by": "https://lls-main.example:7070",
        "backup_uri": "https://lls-backup.example:7070",
        "grant": "eyJhbGciOiJFZERTQSIsInR5cCI6Imxscy1ncmFudCtqd3QiLCJraWQiOiI…",
        "binding": "eyJhbGciOiJFZERTQSIsInR5cCI6Imxscy1iaW5kaW5nK2p3dCIsImtpZCI6…"
    }))
)]
pub struct Lease {
    pub lease_id: Uuid,
    /// Proves possession of the lease on renew and return (`Authorization: Bearer`);
    /// signed by the server.
    pub token: String,
    pub feature: String,
    /// The version granted (empty when the feature has one unversioned pool).
    pub version: String,
    /// Seats held.
    pub count: u32,
    pub client_id: String,
    /// The user the checkout named (absent when it named none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The host the checkout named (absent when it named none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// When the lease was first granted, (Unix time, seconds).
    pub granted_at: i64,
    /// When the lease lapses unless renewed, (Unix time, seconds); a borrowed lease ends
    /// then.
    pub expires_at: i64,
    /// Renew after this time and before `expires_at`, (Unix time, seconds).
    pub renew_after: i64,
    /// Borrowed for offline use: not renewed, ends at `expires_at` or when returned.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub borrowed: bool,
    /// Granted beyond the feature's count, from the line item's overdraft (reported to
    /// the back office as overage).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub overdraft: bool,
    /// The URL of the server that granted or renewed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_by: Option<String>,
    /// The backup's URL, for clients to fail over to (`LICENSING_BACKUP_URI`). A main
    /// that has no backup (any more) sends none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_uri: Option<String>,
    /// Set when a backup answered: the URL of the main it stands in for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub main_uri: Option<String>,
    /// The grant of this checkout or renewal: a compact JWS (`lls-grant+jwt`, EdDSA) over
    /// [`crate::grant::GrantClaims`], signed by the serving server's own key. A client
    /// verifies it with [`crate::grant::verify_grant`] and the producer's public key.
    #[serde(default)]
    pub grant: String,
    /// The back office's binding of the serving server's key to its hostid and pair
    /// (`lls-binding+jwt`, signed with the producer's key).
    #[serde(default)]
    pub binding: String,
    /// Set when a member of a three-member cluster answered: every member's URL, for
    /// clients to find the serving member by themselves after a loss.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<String>,
}

/// A lease as operators see it (no token).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(
    feature = "openapi",
    schema(example = json!({
        "lease_id": "0b9e7c1e-6a53-4f47-9d59-3c1d2a0f6b11", "feature": "cad", "version": "2.0",
        "count": 1, "client_id": "ws-17:4242", "granted_at": 1767225600,
        "expires_at": 1767225900, "granted_by": "string:lls-main"
    }))
)]
pub struct LeaseInfo {
    pub lease_id: Uuid,
    pub feature: String,
    pub version: String,
    /// Seats held.
    pub count: u32,
    pub client_id: String,
    /// The user the checkout named (absent when it named none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The host the checkout named (absent when it named none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// When the lease was first granted, (Unix time, seconds).
    pub granted_at: i64,
    /// When the lease lapses unless renewed, (Unix time, seconds).
    pub expires_at: i64,
    /// Hostid of the server that granted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub granted_by: Option<String>,
    /// Borrowed for offline use.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub borrowed: bool,
    /// An overdraft seat (beyond the count).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub overdraft: bool,
}

/// One feature's pool, `GET /api/v1/features`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(
    feature = "openapi",
    schema(example = json!({
        "feature": "cad", "version": "2.0", "count": 10, "in_use": 3, "free": 7,
        "starts_at": 1767225600, "expired": false,
        "rights": [
            {"activation_id": "ACT-2027", "count": 4, "starts_at": 1767225600, "expires_at": 1806451199, "started": true},
            {"activation_id": "ACT-PERM", "count": 6, "starts_at": 1767225600, "started": true}
        ]
    }))
)]
pub struct FeatureInfo {
    pub feature: String,
    pub version: String,
    /// Seats licensed now.
    pub count: u32,
    /// Seats held by leases.
    pub in_use: u32,
    /// Seats free now.
    pub free: u32,
    /// Seats in use beyond `count` (overdraft leases).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub overdraft: u32,
    /// Seats borrowed, part of `in_use`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub borrowed: u32,
    /// Clients waiting in line for a seat of this pool (those that asked for this
    /// version or any).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub queued: u32,
    /// When the earliest right of this pool starts, (Unix time, seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starts_at: Option<i64>,
    /// When the last right of this pool expires, (Unix time, seconds); absent when one is
    /// permanent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    /// Every right of this pool has expired: checkouts get `FEATURE_EXPIRED`.
    pub expired: bool,
    /// The pool's rights one by one (a line item each), in force now or later, the
    /// soonest to end first and permanent ones last; expired ones are left out.
    #[serde(default)]
    pub rights: Vec<FeatureRight>,
}

impl FeatureInfo {
    /// `cad 1.0`, or `cad` for an unversioned pool.
    pub fn name(&self) -> String {
        if self.version.is_empty() {
            self.feature.clone()
        } else {
            format!("{} {}", self.feature, self.version)
        }
    }

    /// The count with its rights' ends, e.g. `14 (10 permanent, 4 until 2027-03-31)`;
    /// just `10 permanent` or `4 until 2027-03-31` with one kind of end. Rights not
    /// started yet are named with their start.
    pub fn count_with_expiry(&self) -> String {
        describe_rights(self.count, &self.rights)
    }
}

/// One pool and who holds its seats: the operator's `GET /api/v1/admin/usage` (the
/// `lmstat -a` view).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PoolHolders {
    /// The pool: count, in use, free, its rights and their ends.
    pub pool: FeatureInfo,
    /// Its leases, oldest first.
    pub leases: Vec<LeaseInfo>,
    /// Clients waiting in line for its seats, in their order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queued: Vec<QueuedInfo>,
}

/// One right of a pool, a line item's seats: [`FeatureInfo::rights`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FeatureRight {
    /// The line item's activation ID.
    pub activation_id: String,
    /// Its seats.
    pub count: u32,
    /// When it starts, (Unix time, seconds).
    pub starts_at: i64,
    /// When it ends, (Unix time, seconds); absent for a permanent right.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    /// It has started (counts now).
    pub started: bool,
}

/// The date (UTC) of a Unix time, `2027-03-31`.
pub fn date_of(unix: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix.max(0) as u64);
    let mut s = humantime::format_rfc3339_seconds(t).to_string();
    s.truncate(10);
    s
}

/// The ends of a pool's rights, seats of the same end (day) summed, permanent first:
/// `10 permanent, 4 until 2027-03-31`; rights not started yet follow as
/// `+ 5 from 2026-12-01`. Empty without rights.
pub fn describe_ends(rights: &[FeatureRight]) -> String {
    let (ends, later) = ends_of(rights);
    let mut out = ends.iter().map(end_part).collect::<Vec<_>>().join(", ");
    for (s, c) in later {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&format!("+ {c} from {}", date_of(s)));
    }
    out
}

/// `14 (10 permanent, 4 until 2027-03-31)`: a count with the ends of the rights it is
/// made of; one kind of end reads `10 permanent`. `count` is the seats licensed now;
/// rights not started yet follow as `+ 5 from DATE`.
pub fn describe_rights(count: u32, rights: &[FeatureRight]) -> String {
    let (ends, later) = ends_of(rights);
    let mut out = match ends.as_slice() {
        [] => count.to_string(),
        [one] if one.1 == count => end_part(one),
        many => format!(
            "{count} ({})",
            many.iter().map(end_part).collect::<Vec<_>>().join(", ")
        ),
    };
    for (s, c) in later {
        out.push_str(&format!(" + {c} from {}", date_of(s)));
    }
    out
}

/// Seats by end (started rights; permanent first, then by day) and by start (the
/// others, by day).
#[expect(clippy::type_complexity, reason = "two small lists of pairs, local")]
fn ends_of(rights: &[FeatureRight]) -> (Vec<(Option<i64>, u32)>, Vec<(i64, u32)>) {
    let mut ends: Vec<(Option<i64>, u32)> = Vec::new();
    let mut later: Vec<(i64, u32)> = Vec::new();
    for r in rights {
        if !r.started {
            match later
                .iter_mut()
                .find(|(s, _)| date_of(*s) == date_of(r.starts_at))
            {
                Some((_, c)) => *c = c.saturating_add(r.count),
                None => later.push((r.starts_at, r.count)),
            }
            continue;
        }
        let day = r.expires_at.map(date_of);
        match ends.iter_mut().find(|(e, _)| e.map(date_of) == day) {
            Some((_, c)) => *c = c.saturating_add(r.count),
            None => ends.push((r.expires_at, r.count)),
        }
    }
    ends.sort_by_key(|(e, _)| (e.is_some(), *e));
    later.sort_unstable();
    (ends, later)
}

fn end_part((end, count): &(Option<i64>, u32)) -> String {
    match end {
        None => format!("{count} permanent"),
        Some(e) => format!("{count} until {}", date_of(*e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2027-03-31T12:00:00Z and 2026-12-01T00:00:00Z.
    const MAR_2027: i64 = 1_806_494_400;
    const DEC_2026: i64 = 1_796_083_200;

    fn right(id: &str, count: u32, expires_at: Option<i64>, started: bool) -> FeatureRight {
        FeatureRight {
            activation_id: id.into(),
            count,
            starts_at: if started { 0 } else { DEC_2026 },
            expires_at,
            started,
        }
    }

    #[test]
    fn a_count_names_the_end_of_each_line_item() {
        let mixed = [
            right("A", 4, Some(MAR_2027), true),
            right("B", 10, None, true),
        ];
        assert_eq!(
            describe_rights(14, &mixed),
            "14 (10 permanent, 4 until 2027-03-31)"
        );
        assert_eq!(
            describe_rights(10, &[right("B", 10, None, true)]),
            "10 permanent"
        );
        // Two line items ending the same day read as one.
        let same = [
            right("A", 4, Some(MAR_2027), true),
            right("C", 1, Some(MAR_2027 + 3600), true),
        ];
        assert_eq!(describe_rights(5, &same), "5 until 2027-03-31");
        // Not started yet: after the count, with its start.
        let later = [
            right("B", 10, None, true),
            right("D", 5, Some(MAR_2027), false),
        ];
        assert_eq!(
            describe_rights(10, &later),
            "10 permanent + 5 from 2026-12-01"
        );
        assert_eq!(describe_rights(0, &[]), "0");
        assert_eq!(describe_ends(&mixed), "10 permanent, 4 until 2027-03-31");
        assert_eq!(describe_ends(&later), "10 permanent + 5 from 2026-12-01");
        assert_eq!(date_of(MAR_2027), "2027-03-31");
    }
}
