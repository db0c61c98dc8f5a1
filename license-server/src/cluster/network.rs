//! How members reach each other over HTTP(S): the raft messages
//! ([`openraft::network::RaftNetwork`]) and the once-a-second hello that tells who is up,
//! who it is, which cluster it belongs to and what its clock says.
//!
//! Every request carries `Authorization: Bearer <PAIR_TOKEN>`, the sender's hostid
//! ([`MEMBER_HEADER`]) and its clock ([`TIME_HEADER`], Unix milliseconds); the receiver
//! refuses a sender that is not one of its members, or whose clock is more than
//! [`crate::settings::CLUSTER_MAX_CLOCK_SKEW`] off. A member whose last hello found it
//! of another cluster, with another hostid or with a clock too far off gets no raft
//! message from this one either: the cluster does not form with it.

use std::sync::Arc;
use std::time::Duration;

use licensing_client::describe_error;
use openraft::AnyError;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use shared::ErrorBody;
use shared::secret::Secret;

use super::health::Health;
use super::{Hello, Member, NodeId, TypeConfig, now_ms};

/// The sender's hostid.
pub const MEMBER_HEADER: &str = "x-cluster-member";
/// The sender's clock, Unix milliseconds.
pub const TIME_HEADER: &str = "x-cluster-time";

/// The HTTP client members share.
#[derive(Clone)]
pub struct Wire {
    http: reqwest::Client,
    token: Secret,
    hostid: String,
}

impl Wire {
    pub fn new(
        token: Secret,
        hostid: String,
        ca: Vec<reqwest::Certificate>,
    ) -> anyhow::Result<Wire> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(500))
            .timeout(Duration::from_secs(30))
            .pool_idle_timeout(Duration::from_secs(30))
            .tls_certs_merge(ca)
            .build()?;
        Ok(Wire {
            http,
            token,
            hostid,
        })
    }

    async fn post<Req: Serialize + ?Sized>(
        &self,
        url: &str,
        body: &Req,
        timeout: Duration,
    ) -> Result<reqwest::Response, reqwest::Error> {
        self.http
            .post(url)
            .bearer_auth(self.token.expose())
            .header(MEMBER_HEADER, &self.hostid)
            .header(TIME_HEADER, now_ms().to_string())
            .json(body)
            .timeout(timeout)
            .send()
            .await
    }

    /// Says hello to a member: its own hello, or why not (its error answer, or that it
    /// did not answer).
    pub async fn hello(
        &self,
        base: &str,
        ours: &Hello,
        timeout: Duration,
    ) -> Result<Hello, HelloError> {
        let resp = self
            .post(&format!("{base}/api/v1/member/hello"), ours, timeout)
            .await
            .map_err(|e| HelloError::Unreachable(describe_error(&e)))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| HelloError::Unreachable(describe_error(&e)))?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| {
                HelloError::Refused(format!("its answer is not a member's hello: {e}"))
            });
        }
        Err(HelloError::Refused(
            match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(body) => body.message,
                Err(_) => format!("HTTP {status}"),
            },
        ))
    }
}

/// Why a hello got no hello back.
#[derive(Debug, Clone)]
pub enum HelloError {
    /// No answer (down, or the network between is cut).
    Unreachable(String),
    /// It answered and refused this member (another cluster, the clock, the token).
    Refused(String),
}

/// Makes a connection per member for the raft core.
#[derive(Clone)]
pub struct Network {
    pub wire: Wire,
    pub health: Arc<Health>,
}

pub struct Conn {
    wire: Wire,
    health: Arc<Health>,
    target: NodeId,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Conn;

    async fn new_client(&mut self, target: NodeId, _node: &Member) -> Conn {
        Conn {
            wire: self.wire.clone(),
            health: self.health.clone(),
            target,
        }
    }
}

impl Conn {
    async fn call<Req, Resp, E>(
        &self,
        path: &str,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, Member, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let base = match self.health.url_for(self.target) {
            Ok(url) => url,
            Err(why) => {
                return Err(RPCError::Unreachable(Unreachable::new(&AnyError::error(
                    why,
                ))));
            }
        };
        let resp = self
            .wire
            .post(
                &format!("{base}/api/v1/member/raft/{path}"),
                req,
                option.hard_ttl(),
            )
            .await
            .map_err(|e| {
                let err = AnyError::error(describe_error(&e));
                if e.is_connect() {
                    RPCError::Unreachable(Unreachable::new(&err))
                } else {
                    RPCError::Network(NetworkError::new(&err))
                }
            })?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| {
            RPCError::Network(NetworkError::new(&AnyError::error(describe_error(&e))))
        })?;
        if !status.is_success() {
            let why = serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|b| b.message)
                .unwrap_or_else(|_| format!("HTTP {status}"));
            return Err(RPCError::Unreachable(Unreachable::new(&AnyError::error(
                why,
            ))));
        }
        let answer: Result<Resp, RaftError<NodeId, E>> = serde_json::from_slice(&bytes)
            .map_err(|e| RPCError::Network(NetworkError::new(&AnyError::new(&e))))?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Conn {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        self.call("append", &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Member, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call("snapshot", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        self.call("vote", &rpc, &option).await
    }
}
