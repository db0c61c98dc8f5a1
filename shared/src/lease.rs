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
}

fn one() -> u32 {
    1
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
    /// When the lease lapses unless renewed, (Unix time, seconds).
    pub expires_at: i64,
    /// Renew after this time and before `expires_at`, (Unix time, seconds).
    pub renew_after: i64,
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
}

/// One feature's pool, `GET /api/v1/features`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(
    feature = "openapi",
    schema(example = json!({
        "feature": "cad", "version": "2.0", "count": 10, "in_use": 3, "free": 7,
        "starts_at": 1767225600, "expires_at": 1798761599, "expired": false
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
    /// When the earliest right of this pool starts, (Unix time, seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starts_at: Option<i64>,
    /// When the last right of this pool expires, (Unix time, seconds); absent when one is
    /// permanent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    /// Every right of this pool has expired: checkouts get `FEATURE_EXPIRED`.
    pub expired: bool,
}
