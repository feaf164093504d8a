//! Raft traffic to other replicas over gRPC: one reused channel per peer address, deadlines
//! from openraft's RPC options, snapshots in chunks.

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use dllm_proto::client::{connect, Channel};
use dllm_proto::raft::{raft_service_client::RaftServiceClient, RaftPayload};
use openraft::{
    error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable},
    network::{RPCOption, RaftNetwork, RaftNetworkFactory},
    raft::{
        AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest,
        InstallSnapshotResponse, VoteRequest, VoteResponse,
    },
    BasicNode,
};
use serde::{de::DeserializeOwned, Serialize};
use tonic::transport::Endpoint;

use crate::raft_types::TypeConfig;

/// Largest Raft message accepted or sent; snapshot chunks are far below it.
pub const MAX_RAFT_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Channels to peer replicas, one per address, shared by Raft replication and by request
/// forwarding. tonic channels multiplex many calls over one HTTP/2 connection and reconnect
/// on their own, so a channel is made once and reused.
#[derive(Clone, Default)]
pub struct Peers {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

/// Why a call to a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The peer could not be reached (connection refused, reset, no route).
    #[error("replica at {addr} is unreachable: {status}")]
    Unreachable {
        /// The peer.
        addr: String,
        /// What gRPC said.
        status: tonic::Status,
    },
    /// The call failed after reaching the peer, or took too long.
    #[error("call to replica at {addr} failed: {reason}")]
    Failed {
        /// The peer.
        addr: String,
        /// What went wrong.
        reason: String,
    },
}

impl Peers {
    /// A client for the replica at `addr` (host:port), on the shared channel.
    pub fn client(&self, addr: &str) -> Result<RaftServiceClient<Channel>, PeerError> {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        let channel = match channels.get(addr) {
            Some(c) => c.clone(),
            None => {
                let channel = connect(
                    Endpoint::from_shared(format!("http://{addr}"))
                        .map_err(|e| PeerError::Failed {
                            addr: addr.to_string(),
                            reason: e.to_string(),
                        })?
                        .connect_timeout(Duration::from_millis(500))
                        .tcp_nodelay(true)
                        .http2_keep_alive_interval(Duration::from_secs(5))
                        .keep_alive_timeout(Duration::from_secs(5))
                        .connect_lazy(),
                );
                channels.insert(addr.to_string(), channel.clone());
                channel
            }
        };
        Ok(RaftServiceClient::new(channel)
            .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES))
    }

    /// Sends a bincode-encoded `req` to `addr` with `call` and decodes the answer.
    ///
    /// # Errors
    /// [`PeerError`] when the peer is unreachable, the call fails or times out, or the answer
    /// does not decode.
    pub async fn call<Req, Resp, F, Fut>(
        &self,
        addr: &str,
        req: &Req,
        timeout: Duration,
        call: F,
    ) -> Result<Resp, PeerError>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        F: FnOnce(RaftServiceClient<Channel>, tonic::Request<RaftPayload>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<RaftPayload>, tonic::Status>>,
    {
        let failed = |reason: String| PeerError::Failed {
            addr: addr.to_string(),
            reason,
        };
        let data = bincode::serialize(req).map_err(|e| failed(e.to_string()))?;
        let mut request = tonic::Request::new(RaftPayload { data });
        request.set_timeout(timeout);
        let client = self.client(addr)?;
        let response = match tokio::time::timeout(timeout, call(client, request)).await {
            Err(_) => return Err(failed(format!("no answer within {timeout:?}"))),
            Ok(Err(status)) if status.code() == tonic::Code::Unavailable => {
                return Err(PeerError::Unreachable {
                    addr: addr.to_string(),
                    status,
                })
            }
            Ok(Err(status)) => return Err(failed(status.to_string())),
            Ok(Ok(response)) => response,
        };
        bincode::deserialize(&response.into_inner().data).map_err(|e| failed(e.to_string()))
    }
}

/// Makes one [`RaftConn`] per target replica for openraft.
#[derive(Clone)]
pub struct Network {
    peers: Peers,
}

impl Network {
    /// A factory on the shared peer channels.
    pub fn new(peers: Peers) -> Self {
        Self { peers }
    }
}

/// openraft's connection to one target replica.
pub struct RaftConn {
    target: u64,
    addr: String,
    peers: Peers,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = RaftConn;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> RaftConn {
        RaftConn {
            target,
            addr: node.addr.clone(),
            peers: self.peers.clone(),
        }
    }
}

impl RaftConn {
    async fn send<Req, Resp, E, F, Fut>(
        &self,
        req: &Req,
        option: &RPCOption,
        call: F,
    ) -> Result<Resp, RPCError<u64, BasicNode, RaftError<u64, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
        F: FnOnce(RaftServiceClient<Channel>, tonic::Request<RaftPayload>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<RaftPayload>, tonic::Status>>,
    {
        let answer: Result<Resp, RaftError<u64, E>> = self
            .peers
            .call(&self.addr, req, option.hard_ttl(), call)
            .await
            .map_err(|e| match e {
                PeerError::Unreachable { .. } => RPCError::Unreachable(Unreachable::new(&e)),
                PeerError::Failed { .. } => RPCError::Network(NetworkError::new(&e)),
            })?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for RaftConn {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.send(&rpc, &option, |mut c, r| async move {
            c.append_entries(r).await
        })
        .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>,
    > {
        self.send(&rpc, &option, |mut c, r| async move {
            c.install_snapshot(r).await
        })
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.send(&rpc, &option, |mut c, r| async move { c.vote(r).await })
            .await
    }
}
