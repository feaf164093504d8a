//! Raft traffic to other replicas over gRPC: one reused channel per peer address, deadlines
//! from openraft's RPC options, snapshots in chunks, AppendEntries over one long-lived stream
//! per follower.

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use dllm_proto::client::Channel;
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

use crate::raft_types::TypeConfig;

/// How often a connection between replicas is pinged, and how long a ping may go
/// unanswered before the connection, and every stream on it, is given up.
pub const PEER_KEEPALIVE: Duration = Duration::from_secs(5);

/// Largest Raft message accepted or sent; snapshot chunks are far below it.
pub const MAX_RAFT_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Channels to peer replicas, one per address, shared by Raft replication and by request
/// forwarding. tonic channels multiplex many calls over one HTTP/2 connection and reconnect
/// on their own, so a channel is made once and reused.
#[derive(Clone, Default)]
pub struct Peers {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    /// Long-lived streamed calls, by peer address and method (see [`Peers::call_streamed`]).
    streams: Arc<Mutex<HashMap<(String, &'static str), CallStream>>>,
    /// The tasks that serve the streamed calls; [`Peers::close`] ends them.
    tasks: tokio_util::task::TaskTracker,
    /// How this replica connects to the others (TLS with its own certificate, or plaintext).
    auth: dllm_auth::client::ClientAuth,
}

/// Opens a streamed call on `client`, its request messages taken from the receiver; answers
/// once the peer has answered the call's headers.
pub type OpenStream = fn(
    RaftServiceClient<tonic::transport::Channel>,
    tokio_stream::wrappers::UnboundedReceiverStream<RaftPayload>,
) -> futures::future::BoxFuture<
    'static,
    Result<tonic::Response<tonic::Streaming<RaftPayload>>, tonic::Status>,
>;

/// A request for a streamed call, and where its answer goes.
type StreamJob = (
    RaftPayload,
    tokio::sync::oneshot::Sender<Result<RaftPayload, StreamFailure>>,
);

/// A peer's streamed call for one method.
enum CallStream {
    /// Served by a task ([`run_call_stream`]) that takes requests here; a closed sender
    /// means the stream ended and the next request opens another.
    Open(tokio::sync::mpsc::Sender<StreamJob>),
    /// The peer answered `UNIMPLEMENTED` (a build without the method): unary calls only.
    Unimplemented,
}

/// Why a call to a peer failed.
#[derive(Clone, Debug, thiserror::Error)]
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
    /// Channels to the other replicas, made with `auth`.
    pub fn new(auth: dllm_auth::client::ClientAuth) -> Self {
        Self {
            auth,
            ..Self::default()
        }
    }

    /// Ends every streamed call (each fails what it has not answered) and opens no new
    /// ones; part of a replica's shutdown. Returns once their tasks have ended.
    pub async fn close(&self) {
        self.tasks.close();
        self.streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.tasks.wait().await;
    }

    /// A client for the replica at `addr` (host:port), on the shared channel.
    pub fn client(&self, addr: &str) -> Result<RaftServiceClient<Channel>, PeerError> {
        Ok(RaftServiceClient::new(self.channel(addr)?)
            .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES))
    }

    /// A client for streaming calls to `addr`, on the same connection.
    fn streaming_client(
        &self,
        addr: &str,
    ) -> Result<RaftServiceClient<tonic::transport::Channel>, PeerError> {
        Ok(
            RaftServiceClient::new(self.channel(addr)?.streaming().clone())
                .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES),
        )
    }

    fn channel(&self, addr: &str) -> Result<Channel, PeerError> {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        let channel = match channels.get(addr) {
            Some(c) => c.clone(),
            None => {
                let endpoint = self
                    .auth
                    .endpoint(addr)
                    .map_err(|e| PeerError::Failed {
                        addr: addr.to_string(),
                        reason: e.to_string(),
                    })?
                    .connect_timeout(Duration::from_millis(500))
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(PEER_KEEPALIVE)
                    .keep_alive_timeout(PEER_KEEPALIVE);
                let channel = self.auth.connect_lazy(endpoint);
                channels.insert(addr.to_string(), channel.clone());
                channel
            }
        };
        Ok(channel)
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

impl Peers {
    /// Like [`Peers::call`], but on one long-lived streamed call per peer and method
    /// (`method` names it, `open` opens it) that carries every such request, answered in
    /// order, instead of an HTTP/2 stream, headers and trailers per call. Falls back to the
    /// unary `call` for a peer that does not serve the stream.
    ///
    /// # Errors
    /// As [`Peers::call`]; a stream that breaks fails the requests on it, and the next
    /// request opens a new one.
    pub async fn call_streamed<Req, Resp, F, Fut>(
        &self,
        addr: &str,
        (method, open): (&'static str, OpenStream),
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
        let Some(jobs) = self.stream_to(addr, method, open)? else {
            return self.call(addr, req, timeout, call).await;
        };
        let data = bincode::serialize(req).map_err(|e| failed(e.to_string()))?;
        let (answer, answered) = tokio::sync::oneshot::channel();
        let exchange = async {
            let ended = || StreamFailure::Peer(failed("the stream to the replica ended".into()));
            jobs.send((RaftPayload { data }, answer))
                .await
                .map_err(|_| ended())?;
            answered.await.map_err(|_| ended())?
        };
        match tokio::time::timeout(timeout, exchange).await {
            Err(_) => Err(failed(format!("no answer within {timeout:?}"))),
            Ok(Ok(payload)) => {
                bincode::deserialize(&payload.data).map_err(|e| failed(e.to_string()))
            }
            Ok(Err(StreamFailure::Peer(e))) => Err(e),
            Ok(Err(StreamFailure::Unimplemented)) => self.call(addr, req, timeout, call).await,
        }
    }

    /// Where requests for `method` to `addr` go, opening the stream if none is open; `None`
    /// for a peer without it.
    fn stream_to(
        &self,
        addr: &str,
        method: &'static str,
        open: OpenStream,
    ) -> Result<Option<tokio::sync::mpsc::Sender<StreamJob>>, PeerError> {
        if self.tasks.is_closed() {
            // Closing: no new streams; unary calls until the replica stops.
            return Ok(None);
        }
        let key = (addr.to_string(), method);
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        match streams.get(&key) {
            Some(CallStream::Unimplemented) => return Ok(None),
            Some(CallStream::Open(jobs)) if !jobs.is_closed() => return Ok(Some(jobs.clone())),
            _ => {}
        }
        let client = RaftServiceClient::new(self.channel(addr)?.streaming().clone())
            .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES);
        // Room for every request a forwarder keeps in flight, and then some.
        let (jobs, queue) = tokio::sync::mpsc::channel(16);
        streams.insert(key.clone(), CallStream::Open(jobs.clone()));
        self.tasks.spawn(run_call_stream(
            Arc::downgrade(&self.streams),
            key,
            open,
            client,
            queue,
        ));
        Ok(Some(jobs))
    }
}

/// Serves one streamed call: opens it with the first queued request, sends each later one on
/// it and hands each answer to the oldest request still waiting for one (a request whose
/// caller gave up before it was sent is not sent: the caller retries). Ends, failing every
/// request not answered, when the stream fails or ends, or when the replica's peers are
/// dropped; ends the same way at once if the peer does not serve the method, marking it so.
async fn run_call_stream(
    streams: std::sync::Weak<Mutex<HashMap<(String, &'static str), CallStream>>>,
    key: (String, &'static str),
    open: OpenStream,
    client: RaftServiceClient<tonic::transport::Channel>,
    mut queue: tokio::sync::mpsc::Receiver<StreamJob>,
) {
    let addr = key.0.clone();
    let from_status = |status| StreamFailure::from_status(&addr, status);
    let ended = |reason: &str| {
        StreamFailure::Peer(PeerError::Failed {
            addr: addr.clone(),
            reason: reason.to_string(),
        })
    };
    // Unbounded: sending never waits, so answers are read while requests go out; what is
    // queued is bounded by the callers, each waiting for its answer.
    let (requests, outgoing) = tokio::sync::mpsc::unbounded_channel();
    let mut waiting = std::collections::VecDeque::new();
    // The stream is opened for a request, which goes out with the call's headers.
    if let Some((payload, answer)) = queue.recv().await {
        let _ = requests.send(payload);
        waiting.push_back(answer);
    }
    let opened = open(
        client,
        tokio_stream::wrappers::UnboundedReceiverStream::new(outgoing),
    );
    let failure = match opened.await {
        Err(status) => from_status(status),
        Ok(answers) => {
            let mut answers = answers.into_inner();
            loop {
                tokio::select! {
                    job = queue.recv() => {
                        let Some((payload, answer)) = job else {
                            break ended("replica shutting down");
                        };
                        if answer.is_closed() {
                            continue;
                        }
                        if requests.send(payload).is_err() {
                            let _ = answer.send(Err(ended("the stream to the replica ended")));
                            break ended("the stream to the replica ended");
                        }
                        waiting.push_back(answer);
                    }
                    message = answers.message() => match message {
                        Ok(Some(payload)) => match waiting.pop_front() {
                            // The caller may have given up meanwhile; the order holds.
                            Some(answer) => { let _ = answer.send(Ok(payload)); }
                            None => break ended("the replica answered a request never sent"),
                        },
                        Ok(None) => break ended("the replica ended the stream"),
                        Err(status) => break from_status(status),
                    },
                }
            }
        }
    };
    if matches!(failure, StreamFailure::Unimplemented) {
        tracing::info!(addr = %key.0, method = key.1,
            "replica does not serve the streamed call; using unary calls");
        if let Some(streams) = streams.upgrade() {
            let mut streams = streams.lock().unwrap_or_else(|e| e.into_inner());
            streams.insert(key, CallStream::Unimplemented);
        }
    }
    queue.close();
    while let Ok((_, answer)) = queue.try_recv() {
        waiting.push_back(answer);
    }
    for answer in waiting {
        let _ = answer.send(Err(failure.clone()));
    }
}

/// openraft's view of a failed call.
fn rpc_error<E: std::error::Error>(e: PeerError) -> RPCError<u64, BasicNode, E> {
    match e {
        PeerError::Unreachable { .. } => RPCError::Unreachable(Unreachable::new(&e)),
        PeerError::Failed { .. } => RPCError::Network(NetworkError::new(&e)),
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
    /// The open AppendEntries stream to the target, if any.
    stream: Option<AppendStream>,
    /// The target does not serve the stream (a build without it): unary calls only.
    unary_only: bool,
}

/// One `AppendEntriesStream` call: requests go out on `requests`, each answered in order on
/// `answers`.
struct AppendStream {
    requests: tokio::sync::mpsc::Sender<RaftPayload>,
    answers: tonic::Streaming<RaftPayload>,
    /// A request was sent and its answer not read yet. openraft drops a call that outlives
    /// its timeout, so a call that finds this set knows that the next answer on the stream
    /// belongs to an abandoned request, and opens a new stream instead.
    awaiting: bool,
}

/// Why a request on a stream got no answer.
#[derive(Clone)]
enum StreamFailure {
    /// The target has no such method: fall back to unary calls.
    Unimplemented,
    /// Any other failure; the stream is dropped and the next request opens another.
    Peer(PeerError),
}

impl StreamFailure {
    /// What the status a stream failed with means: fall back, the peer is unreachable, or
    /// any other failure.
    fn from_status(addr: &str, status: tonic::Status) -> Self {
        let addr = addr.to_string();
        match status.code() {
            tonic::Code::Unimplemented => Self::Unimplemented,
            tonic::Code::Unavailable => Self::Peer(PeerError::Unreachable { addr, status }),
            _ => Self::Peer(PeerError::Failed {
                addr,
                reason: status.to_string(),
            }),
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = RaftConn;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> RaftConn {
        RaftConn {
            target,
            addr: node.addr.clone(),
            peers: self.peers.clone(),
            stream: None,
            unary_only: false,
        }
    }
}

impl RaftConn {
    /// Sends `rpc` on the AppendEntries stream (opening it first if needed) and reads its
    /// answer, within `timeout`. Any failure drops the stream.
    async fn append_on_stream(
        &mut self,
        rpc: &AppendEntriesRequest<TypeConfig>,
        timeout: Duration,
    ) -> Result<Result<AppendEntriesResponse<u64>, RaftError<u64>>, StreamFailure> {
        let addr = self.addr.clone();
        let failed = |reason: String| {
            StreamFailure::Peer(PeerError::Failed {
                addr: addr.clone(),
                reason,
            })
        };
        let from_status = |status| StreamFailure::from_status(&addr, status);
        let data = bincode::serialize(rpc).map_err(|e| failed(e.to_string()))?;
        if self.stream.as_ref().is_some_and(|s| s.awaiting) {
            self.stream = None;
        }
        let exchange = async {
            let payload = RaftPayload { data };
            match self.stream.as_mut() {
                Some(stream) => {
                    stream.awaiting = true;
                    stream
                        .requests
                        .send(payload)
                        .await
                        .map_err(|_| failed("the stream to the replica closed".into()))?;
                }
                None => {
                    // The stream is opened with this request, which goes out with the call's
                    // headers: a new stream costs no extra round trip (openraft makes a new
                    // connection, so a new stream, for every read-index quorum check).
                    let mut client = self
                        .peers
                        .streaming_client(&self.addr)
                        .map_err(StreamFailure::Peer)?;
                    let (requests, outgoing) = tokio::sync::mpsc::channel(1);
                    requests
                        .try_send(payload)
                        .map_err(|_| failed("cannot queue the request".into()))?;
                    let answers = client
                        .append_entries_stream(tokio_stream::wrappers::ReceiverStream::new(
                            outgoing,
                        ))
                        .await
                        .map_err(from_status)?
                        .into_inner();
                    self.stream = Some(AppendStream {
                        requests,
                        answers,
                        awaiting: true,
                    });
                }
            }
            let stream = self.stream.as_mut().expect("opened above");
            let answer = stream
                .answers
                .message()
                .await
                .map_err(from_status)?
                .ok_or_else(|| failed("the replica ended the stream".into()))?;
            stream.awaiting = false;
            bincode::deserialize(&answer.data).map_err(|e| failed(e.to_string()))
        };
        let result = match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(failed(format!("no answer within {timeout:?}"))),
        };
        if result.is_err() {
            self.stream = None;
        }
        result
    }

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
            .map_err(rpc_error)?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for RaftConn {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        if !self.unary_only {
            match self.append_on_stream(&rpc, option.hard_ttl()).await {
                Ok(answer) => {
                    return answer
                        .map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
                }
                Err(StreamFailure::Peer(e)) => return Err(rpc_error(e)),
                Err(StreamFailure::Unimplemented) => {
                    tracing::info!(target = self.target, addr = %self.addr,
                        "replica does not serve AppendEntriesStream; replicating with unary calls");
                    self.unary_only = true;
                }
            }
        }
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use dllm_proto::raft::raft_service_server::{RaftService, RaftServiceServer};
    use futures::StreamExt;
    use openraft::Vote;
    use tonic::{Request, Response, Status, Streaming};

    use super::*;

    /// A follower that answers every AppendEntries with `HigherVote(the request's vote)`, so
    /// that a test can tell which request an answer belongs to. On the stream it takes
    /// `slow_term`'s requests two seconds to answer; `stream: false` is a build without the
    /// stream.
    #[derive(Clone)]
    struct Follower {
        stream: bool,
        slow_term: u64,
        stream_attempts: Arc<AtomicUsize>,
        streams_opened: Arc<AtomicUsize>,
        unary_calls: Arc<AtomicUsize>,
    }

    fn answer(data: &[u8]) -> Result<RaftPayload, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> =
            bincode::deserialize(data).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let answer: Result<AppendEntriesResponse<u64>, RaftError<u64>> =
            Ok(AppendEntriesResponse::HigherVote(rpc.vote));
        Ok(RaftPayload {
            data: bincode::serialize(&answer).expect("encode"),
        })
    }

    type Answers =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<RaftPayload, Status>> + Send>>;

    fn unused<T>() -> Result<Response<T>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    #[tonic::async_trait]
    impl RaftService for Follower {
        async fn append_entries(
            &self,
            request: Request<RaftPayload>,
        ) -> Result<Response<RaftPayload>, Status> {
            self.unary_calls.fetch_add(1, Ordering::SeqCst);
            answer(&request.into_inner().data).map(Response::new)
        }

        type AppendEntriesStreamStream = Answers;

        async fn append_entries_stream(
            &self,
            request: Request<Streaming<RaftPayload>>,
        ) -> Result<Response<Answers>, Status> {
            self.stream_attempts.fetch_add(1, Ordering::SeqCst);
            if !self.stream {
                return Err(Status::unimplemented(
                    "no AppendEntriesStream in this build",
                ));
            }
            self.streams_opened.fetch_add(1, Ordering::SeqCst);
            let slow_term = self.slow_term;
            let answers =
                futures::stream::unfold(request.into_inner(), move |mut incoming| async move {
                    let payload = incoming.message().await.ok()??;
                    let rpc: AppendEntriesRequest<TypeConfig> =
                        bincode::deserialize(&payload.data).ok()?;
                    if rpc.vote.leader_id().term == slow_term {
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                    Some((answer(&payload.data), incoming))
                });
            Ok(Response::new(Box::pin(answers)))
        }

        async fn vote(&self, _: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
            unused()
        }
        async fn install_snapshot(
            &self,
            _: Request<RaftPayload>,
        ) -> Result<Response<RaftPayload>, Status> {
            unused()
        }
        /// Echoes the request.
        async fn forward_write(
            &self,
            request: Request<RaftPayload>,
        ) -> Result<Response<RaftPayload>, Status> {
            self.unary_calls.fetch_add(1, Ordering::SeqCst);
            Ok(Response::new(request.into_inner()))
        }

        type ForwardWriteStreamStream = Answers;

        /// Echoes each request (a bincode `u64`), the smaller ones later, eight at a time: the
        /// answers must still come in order. `u64::MAX` ends the stream unanswered.
        async fn forward_write_stream(
            &self,
            request: Request<Streaming<RaftPayload>>,
        ) -> Result<Response<Answers>, Status> {
            self.stream_attempts.fetch_add(1, Ordering::SeqCst);
            if !self.stream {
                return Err(Status::unimplemented("no ForwardWriteStream in this build"));
            }
            self.streams_opened.fetch_add(1, Ordering::SeqCst);
            let answers = request
                .into_inner()
                .take_while(|payload| {
                    let last = payload.as_ref().is_ok_and(|p| {
                        bincode::deserialize::<u64>(&p.data).is_ok_and(|v| v == u64::MAX)
                    });
                    futures::future::ready(!last)
                })
                .map(|payload| async move {
                    let payload = payload?;
                    let value: u64 = bincode::deserialize(&payload.data).unwrap_or(0);
                    tokio::time::sleep(Duration::from_millis(20u64.saturating_sub(value))).await;
                    Ok(payload)
                })
                .buffered(8);
            Ok(Response::new(Box::pin(answers)))
        }
        async fn read_index(
            &self,
            _: Request<RaftPayload>,
        ) -> Result<Response<RaftPayload>, Status> {
            unused()
        }
        async fn forward_membership(
            &self,
            _: Request<RaftPayload>,
        ) -> Result<Response<RaftPayload>, Status> {
            unused()
        }
        async fn forward_heartbeat(
            &self,
            _: Request<RaftPayload>,
        ) -> Result<Response<RaftPayload>, Status> {
            unused()
        }
        async fn node_usage(
            &self,
            _: Request<RaftPayload>,
        ) -> Result<Response<RaftPayload>, Status> {
            unused()
        }
        async fn pre_vote(&self, _: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
            unused()
        }
    }

    /// Serves `follower` on a loopback port; its address.
    async fn serve(follower: Follower) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(RaftServiceServer::new(follower))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        addr
    }

    /// Serves `follower` on a loopback port; openraft's connection to it.
    async fn connect_to(follower: Follower) -> RaftConn {
        let addr = serve(follower).await;
        Network::new(Peers::default())
            .new_client(2, &BasicNode { addr })
            .await
    }

    const FORWARD_STREAM: (&str, OpenStream) = ("ForwardWriteStream", |mut c, r| {
        Box::pin(async move { c.forward_write_stream(r).await })
    });

    async fn forward(peers: &Peers, addr: &str, value: u64) -> Result<u64, PeerError> {
        forward_within(peers, addr, value, Duration::from_secs(10)).await
    }

    async fn forward_within(
        peers: &Peers,
        addr: &str,
        value: u64,
        timeout: Duration,
    ) -> Result<u64, PeerError> {
        peers
            .call_streamed(
                addr,
                FORWARD_STREAM,
                &value,
                timeout,
                |mut c, r| async move { c.forward_write(r).await },
            )
            .await
    }

    #[tokio::test]
    async fn a_call_that_gave_up_leaves_the_next_its_own_answer() {
        let follower = follower(true);
        let (peers, addr) = (Peers::default(), serve(follower.clone()).await);
        assert_eq!(forward(&peers, &addr, 1).await.expect("answer"), 1);
        // 0 takes the follower 20 ms to answer; its caller gives up after 2.
        let late = forward_within(&peers, &addr, 0, Duration::from_millis(2)).await;
        assert!(matches!(late, Err(PeerError::Failed { .. })), "{late:?}");
        assert_eq!(forward(&peers, &addr, 7).await.expect("answer"), 7);
        assert_eq!(follower.streams_opened.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn streamed_calls_share_one_stream_and_each_gets_its_own_answer() {
        let follower = follower(true);
        let (peers, addr) = (Peers::default(), serve(follower.clone()).await);
        let answers = futures::future::join_all((0..20).map(|v| forward(&peers, &addr, v))).await;
        let answers: Vec<u64> = answers.into_iter().map(|a| a.expect("answer")).collect();
        assert_eq!(answers, (0..20).collect::<Vec<u64>>());
        assert_eq!(follower.streams_opened.load(Ordering::SeqCst), 1);
        assert_eq!(follower.unary_calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_broken_stream_fails_its_calls_and_the_next_call_opens_another() {
        let follower = follower(true);
        let (peers, addr) = (Peers::default(), serve(follower.clone()).await);
        assert_eq!(forward(&peers, &addr, 1).await.expect("answer"), 1);
        // Failed at once, not left to run out its time.
        let broken = tokio::time::timeout(Duration::from_secs(5), forward(&peers, &addr, u64::MAX))
            .await
            .expect("failed before its deadline");
        assert!(
            matches!(&broken, Err(PeerError::Failed { reason, .. }) if reason.contains("ended")),
            "{broken:?}"
        );
        assert_eq!(forward(&peers, &addr, 2).await.expect("answer"), 2);
        assert_eq!(follower.streams_opened.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_peer_without_the_streamed_call_gets_unary_calls() {
        let follower = follower(false);
        let (peers, addr) = (Peers::default(), serve(follower.clone()).await);
        for v in 0..3 {
            assert_eq!(forward(&peers, &addr, v).await.expect("answer"), v);
        }
        assert_eq!(follower.unary_calls.load(Ordering::SeqCst), 3);
        assert_eq!(
            follower.stream_attempts.load(Ordering::SeqCst),
            1,
            "asks for the stream once, then only unary calls"
        );
    }

    fn follower(stream: bool) -> Follower {
        Follower {
            stream,
            slow_term: 1,
            stream_attempts: Arc::default(),
            streams_opened: Arc::default(),
            unary_calls: Arc::default(),
        }
    }

    fn append(term: u64) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(term, 1),
            prev_log_id: None,
            entries: Vec::new(),
            leader_commit: None,
        }
    }

    fn generous() -> RPCOption {
        RPCOption::new(Duration::from_secs(10))
    }

    #[tokio::test]
    async fn a_call_that_openraft_abandoned_does_not_answer_the_next() {
        let follower = follower(true);
        let mut conn = connect_to(follower.clone()).await;
        // openraft drops a replication call that outlives its own deadline; the answer to it
        // still comes, later, on the same stream.
        let abandoned = tokio::time::timeout(
            Duration::from_millis(200),
            conn.append_entries(append(1), generous()),
        )
        .await;
        assert!(abandoned.is_err(), "the slow call should have been cut off");
        let answer = conn
            .append_entries(append(2), generous())
            .await
            .expect("answer");
        assert_eq!(
            answer,
            AppendEntriesResponse::HigherVote(Vote::new_committed(2, 1))
        );
        assert_eq!(follower.streams_opened.load(Ordering::SeqCst), 2);
        // The new stream carries the calls after it.
        let answer = conn
            .append_entries(append(3), generous())
            .await
            .expect("answer");
        assert_eq!(
            answer,
            AppendEntriesResponse::HigherVote(Vote::new_committed(3, 1))
        );
        assert_eq!(follower.streams_opened.load(Ordering::SeqCst), 2);
        assert_eq!(follower.unary_calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_call_past_its_deadline_fails_and_the_next_gets_its_own_answer() {
        let follower = follower(true);
        let mut conn = connect_to(follower.clone()).await;
        let late = conn
            .append_entries(append(1), RPCOption::new(Duration::from_millis(200)))
            .await;
        assert!(matches!(late, Err(RPCError::Network(_))), "{late:?}");
        let answer = conn
            .append_entries(append(2), generous())
            .await
            .expect("answer");
        assert_eq!(
            answer,
            AppendEntriesResponse::HigherVote(Vote::new_committed(2, 1))
        );
    }

    #[tokio::test]
    async fn a_replica_without_the_stream_gets_unary_calls() {
        let follower = follower(false);
        let mut conn = connect_to(follower.clone()).await;
        for term in 2..5 {
            let answer = conn
                .append_entries(append(term), generous())
                .await
                .expect("answer");
            assert_eq!(
                answer,
                AppendEntriesResponse::HigherVote(Vote::new_committed(term, 1))
            );
        }
        assert_eq!(follower.unary_calls.load(Ordering::SeqCst), 3);
        assert_eq!(
            follower.stream_attempts.load(Ordering::SeqCst),
            1,
            "asks for the stream once, then only unary calls"
        );
    }
}
