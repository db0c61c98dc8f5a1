//! The license server's client API: checkout, renew, return, and what it reports.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// `POST /api/v1/leases` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckoutRequest {
    pub feature: String,
    /// A specific version; any version of the feature when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Seats to take, 1 when absent.
    #[serde(default = "one")]
    pub count: u32,
    /// The client's stable identity: a second checkout of the same feature by the same
    /// client while its lease lives returns that lease.
    pub client_id: String,
}

fn one() -> u32 {
    1
}

/// A granted lease (answer to checkout and renew).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub lease_id: Uuid,
    /// Proves possession of the lease on renew and return; signed by the server.
    pub token: String,
    pub feature: String,
    pub version: String,
    pub count: u32,
    pub client_id: String,
    pub granted_at: i64,
    pub expires_at: i64,
    /// Renew before this time (Unix seconds).
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
}

/// A lease as operators see it (no token).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseInfo {
    pub lease_id: Uuid,
    pub feature: String,
    pub version: String,
    pub count: u32,
    pub client_id: String,
    pub granted_at: i64,
    pub expires_at: i64,
    /// Hostid of the server that granted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub granted_by: Option<String>,
}

/// One feature's pool, `GET /api/v1/features`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureInfo {
    pub feature: String,
    pub version: String,
    pub count: u32,
    pub in_use: u32,
    pub free: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starts_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    pub expired: bool,
}
