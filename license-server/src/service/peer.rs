//! The pair's own protocol: what the two servers send each other (`/api/v1/pair/*`), the
//! largest message of each route, and the HTTP client one server uses to reach the other
//! (over `https://` when the URL says so, trusting the system's roots and
//! `BACKOFFICE_CA`), authenticated with the pair's secret ([`PairToken`]).
//!
//! Changes and states carry leases as they are and rights only as the back office's
//! signed answers (a token), which the receiver verifies.

use std::time::Duration;

use bytes::Bytes;
use licensing_client::describe_error;
use serde::{Deserialize, Serialize};
use shared::ErrorBody;
use uuid::Uuid;

use super::pair::Position;
use crate::domain::{Event, State};
use crate::identity::PairToken;
use crate::store::{Record, codec, frame};

/// Most changes the main sends in one batch.
pub const MAX_BATCH: usize = 4096;

/// Largest `POST /api/v1/pair/events` body: [`MAX_BATCH`] changes of at most about 2 KiB
/// each (a lease with the longest feature, version and client names), or a change of the
/// rights (a few hundred bytes a right) — 16 MiB leaves room for both.
pub const EVENTS_BODY_LIMIT: usize = 16 << 20;

/// Largest `PUT /api/v1/pair/snapshot` body: the whole pool, about 250 bytes a lease,
/// so room for about a million leases.
pub const SNAPSHOT_BODY_LIMIT: usize = 256 << 20;

/// A batch's body starts with this (then the format version).
pub const BATCH_MAGIC: [u8; 8] = *b"LLS-PEV\n";
/// Format version of a batch this build sends and takes.
pub const BATCH_VERSION: u32 = 1;
/// magic 8, version 4, reserved 4, history 16, main_seq 8.
pub const BATCH_HEADER: usize = 40;

/// A batch of changes (or, empty, a heartbeat), main to backup, as the backup reads it.
///
/// On the wire (`application/octet-stream`): magic `LLS-PEV\n`, format version (u32 LE,
/// 1), 4 zero bytes, the history the changes belong to (16 bytes), how far the main's
/// changes went when it sent them (`main_seq`, u64 LE; applied, not necessarily durable
/// yet), then the changes in order, each the journal's record byte for byte (framed and
/// checksummed, [`crate::store`]; both servers of a pair run the same version). The main
/// sends the records its store encoded; the backup journals them as they came.
#[derive(Debug)]
pub struct Batch {
    pub history: Uuid,
    pub main_seq: u64,
    pub events: Vec<Replicated>,
}

/// One change of a batch: decoded to be applied, and its record to be journaled.
#[derive(Debug)]
pub struct Replicated {
    pub event: Event,
    pub record: Record,
}

impl Batch {
    /// The body of a batch of `records` (in order, consecutive).
    pub fn encode<'a>(
        history: Uuid,
        main_seq: u64,
        records: impl IntoIterator<Item = &'a Record>,
    ) -> Vec<u8> {
        let records = records.into_iter();
        let mut body = Vec::with_capacity(BATCH_HEADER + 128 * records.size_hint().0);
        body.extend_from_slice(&BATCH_MAGIC);
        body.extend_from_slice(&BATCH_VERSION.to_le_bytes());
        body.extend_from_slice(&[0; 4]);
        body.extend_from_slice(history.as_bytes());
        body.extend_from_slice(&main_seq.to_le_bytes());
        for r in records {
            body.extend_from_slice(&r.frame);
        }
        body
    }

    /// Reads a body: every record must verify and decode (and hold rights only as a
    /// signed answer), or the batch is refused whole with the reason.
    pub fn decode(body: Bytes) -> Result<Batch, String> {
        let head = body
            .get(..BATCH_HEADER)
            .ok_or("the body is shorter than a batch's header")?;
        if head[..8] != BATCH_MAGIC {
            return Err(
                "the body is not a batch of changes (it does not start with `LLS-PEV`)".into(),
            );
        }
        let version = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
        if version != BATCH_VERSION {
            return Err(format!(
                "the batch is of format version {version}; this server reads {BATCH_VERSION} \
                 (both servers of a pair must run the same version)"
            ));
        }
        let history = Uuid::from_slice(&head[16..32]).map_err(|e| e.to_string())?;
        let main_seq = u64::from_le_bytes(head[32..40].try_into().map_err(|_| "short header")?);
        let mut events = Vec::new();
        let mut frames = frame::Reader::at(&body, BATCH_HEADER);
        while let Some(f) = frames.next_frame() {
            let f = f.map_err(|e| format!("change {}: {e}", frames.record()))?;
            let (seq, event) = codec::get_record(f.payload)
                .map_err(|e| format!("record {} at byte {}: {e}", f.record, f.offset))?;
            let start = f.offset as usize;
            let end = start + frame::RECORD_HEADER + f.payload.len();
            events.push(Replicated {
                event,
                record: Record {
                    seq,
                    frame: body.slice(start..end),
                },
            });
        }
        Ok(Batch {
            history,
            main_seq,
            events,
        })
    }
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

    /// Sends a batch ([`Batch::encode`]).
    pub async fn push(&self, base: &str, body: Vec<u8>) -> Result<Ack, PeerError> {
        let url = format!("{base}/api/v1/pair/events");
        let req = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(body);
        self.send(req, self.sync_timeout).await
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::codec::tests::every_event;

    #[test]
    fn a_batch_reads_back_as_sent_and_any_cut_or_flipped_byte_is_refused() {
        let history = Uuid::new_v4();
        let records: Vec<Record> = every_event()
            .iter()
            .enumerate()
            .map(|(i, e)| Record::encode(i as u64 + 1, e))
            .collect();
        let body = Batch::encode(history, 99, &records);
        let batch = Batch::decode(Bytes::from(body.clone())).unwrap();
        assert_eq!((batch.history, batch.main_seq), (history, 99));
        let back: Vec<Record> = batch.events.into_iter().map(|r| r.record).collect();
        assert_eq!(back, records, "the journal's records, byte for byte");
        // Cut anywhere but at a record's end, or one byte changed: refused, no panic.
        let ends: Vec<usize> = records
            .iter()
            .scan(BATCH_HEADER, |at, r| {
                *at += r.frame.len();
                Some(*at)
            })
            .collect();
        for cut in 0..body.len() {
            let r = Batch::decode(Bytes::copy_from_slice(&body[..cut]));
            assert_eq!(
                r.is_ok(),
                cut == BATCH_HEADER || ends.contains(&cut),
                "cut at {cut}"
            );
        }
        for at in 0..body.len() {
            let mut bad = body.clone();
            bad[at] ^= 0x20;
            let r = Batch::decode(Bytes::from(bad));
            // The reserved bytes, the history and the main's position carry no checksum
            // of their own.
            if (12..BATCH_HEADER).contains(&at) {
                assert!(r.is_ok(), "byte {at}");
            } else {
                assert!(r.is_err(), "byte {at}");
            }
        }
    }
}
