//! The pair's own protocol: what the two servers send each other (`/api/v1/pair/*`), the
//! largest message of each route, and the HTTP client one server uses to reach the other
//! (over `https://` when the URL says so, trusting the system's roots and
//! `BACKOFFICE_CA`), authenticated with the pair's secret ([`PairToken`]).
//!
//! Changes and states carry leases as they are and rights only as the back office's
//! signed answers (a token), which the receiver verifies.

use std::time::Duration;

use licensing_client::describe_error;
use serde::{Deserialize, Serialize};
use shared::ErrorBody;
use uuid::Uuid;

use super::pair::Position;
use crate::domain::State;
use crate::identity::PairToken;
use crate::store::Committed;

/// Most changes the main sends in one batch.
pub const MAX_BATCH: usize = 4096;

/// Largest `POST /api/v1/pair/events` body: [`MAX_BATCH`] changes of at most about 2 KiB
/// each (a lease with the longest feature, version and client names), or a change of the
/// rights (a few hundred bytes a right) — 16 MiB leaves room for both.
pub const EVENTS_BODY_LIMIT: usize = 16 << 20;

/// Largest `PUT /api/v1/pair/snapshot` body: the whole pool, about 250 bytes a lease,
/// so room for about a million leases.
pub const SNAPSHOT_BODY_LIMIT: usize = 256 << 20;

/// A batch of changes (or, empty, a heartbeat), main to backup, as the backup reads it.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    /// The history the changes belong to.
    pub history: Uuid,
    /// How far the main's changes went (applied, not necessarily durable yet) when it
    /// sent this.
    pub main_seq: u64,
    /// The changes, in order, each `{seq, event}` in the journal's own form (both
    /// servers of a pair run the same version).
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<Committed>,
}

/// A batch as the main sends it (the changes borrowed from its ring).
#[derive(Debug, Serialize)]
pub struct BatchOut<'a> {
    pub history: Uuid,
    pub main_seq: u64,
    pub events: Vec<&'a Committed>,
}

/// The backup's answer: it holds everything up to `seq` durably.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Ack {
    /// The last change the backup holds durably.
    pub seq: u64,
}

/// `POST /api/v1/pair/detach` body.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Detach {
    /// Why, for the other server's log and status (at most 512 characters).
    #[schema(max_length = 512, example = "not seen for 7d (BACKUP_ABSENCE_LIMIT)")]
    pub reason: String,
}

/// `POST /api/v1/pair/detach` answer.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Detached {
    pub detached: bool,
    /// False when this server was already detached.
    pub changed: bool,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum PeerError {
    #[error("unreachable: {0}")]
    Unreachable(String),
    #[error("{0}")]
    Refused(ErrorBody),
    #[error("no pair secret yet: PAIR_TOKEN is unset and the back office has not sent the pair's")]
    NoPairToken,
}

/// HTTP client for the other server of the pair.
#[derive(Clone)]
pub struct Peer {
    http: reqwest::Client,
    token: PairToken,
    sync_timeout: Duration,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Peer")
    }
}

impl Peer {
    /// `sync_timeout`: the longest a batch may take before the backup counts as gone
    /// (clients wait at most this long for a backup that stalls); `ca`: certificates
    /// trusted besides the system's roots.
    pub fn new(
        token: PairToken,
        sync_timeout: Duration,
        ca: Vec<reqwest::Certificate>,
    ) -> anyhow::Result<Peer> {
        let http = reqwest::Client::builder()
            .connect_timeout(sync_timeout.min(Duration::from_secs(2)))
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(30))
            .tls_certs_merge(ca)
            .build()
            .map_err(|e| anyhow::anyhow!("the pair's HTTP client: {}", describe_error(&e)))?;
        Ok(Peer {
            http,
            token,
            sync_timeout,
        })
    }

    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        timeout: Duration,
    ) -> Result<T, PeerError> {
        let token = self.token.get().ok_or(PeerError::NoPairToken)?;
        let resp = req
            .bearer_auth(token.expose())
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| PeerError::Unreachable(describe_error(&e)))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| PeerError::Unreachable(describe_error(&e)))?;
        if status.is_success() {
            return serde_json::from_slice(&bytes)
                .map_err(|e| PeerError::Unreachable(format!("unexpected answer: {e}")));
        }
        Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => PeerError::Refused(body),
            Err(_) => PeerError::Unreachable(format!("HTTP {status}")),
        })
    }

    pub async fn position(&self, base: &str) -> Result<Position, PeerError> {
        let url = format!("{base}/api/v1/pair/position");
        self.send(
            self.http.get(url),
            self.sync_timeout.max(Duration::from_secs(1)),
        )
        .await
    }

    pub async fn push(&self, base: &str, batch: &BatchOut<'_>) -> Result<Ack, PeerError> {
        let url = format!("{base}/api/v1/pair/events");
        self.send(self.http.post(url).json(batch), self.sync_timeout)
            .await
    }

    pub async fn snapshot(&self, base: &str, state: &State) -> Result<Ack, PeerError> {
        let url = format!("{base}/api/v1/pair/snapshot");
        self.send(self.http.put(url).json(state), Duration::from_secs(60))
            .await
    }

    pub async fn handback(&self, base: &str) -> Result<State, PeerError> {
        let url = format!("{base}/api/v1/pair/handback");
        self.send(self.http.post(url), Duration::from_secs(60))
            .await
    }

    pub async fn detach(&self, base: &str, reason: &str) -> Result<Detached, PeerError> {
        let url = format!("{base}/api/v1/pair/detach");
        let body = Detach {
            reason: reason.chars().take(super::pair::MAX_REASON).collect(),
        };
        self.send(self.http.post(url).json(&body), Duration::from_secs(5))
            .await
    }
}
