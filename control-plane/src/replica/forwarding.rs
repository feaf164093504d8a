//! A follower's side of forwarding: requests for the leader queue up and go to it in batches,
//! one call (or one message on a long-lived stream) per batch, so the follower-to-leader hop
//! costs one request per batch instead of one per client request. Requests travel as types;
//! `network.rs` encodes them at the wire.

use std::{collections::BTreeMap, future::Future, time::Duration};

use dllm_proto::{
    client::Channel,
    raft::{raft_service_client::RaftServiceClient, RaftPayload},
};
use serde::{de::DeserializeOwned, Serialize};

use super::batching::{run_batches, Tasks, MAX_GROUP};
use crate::network::{OpenStream, PeerError, Peers};

/// A request to forward: the leader's address, the request, the time left, and where the
/// leader's answer (or why none came) goes.
pub(super) type Pending<T, A> = (
    String,
    T,
    Duration,
    tokio::sync::oneshot::Sender<Result<A, String>>,
);

/// How long a follower gathers heartbeats before forwarding them to the leader in one call.
pub(super) const HEARTBEAT_LINGER: Duration = Duration::from_millis(5);

/// Most forwarded calls in flight from one replica, per kind of request. Two: while one batch
/// commits in the leader's current group, the next can wait in the leader's queue for the
/// following group, so a follower's writes reach every group; more only splits the same
/// writes into more, smaller calls. Measured on the 2-core bench VM against 4 (alternated
/// runs): 256 clients +6-21% ops/s, 64 clients +0-3.5% (one outlier the other way), less
/// replica CPU per write in 7 of 8 pairs; 1 in flight was no better than 2.
const MAX_FORWARDS_IN_FLIGHT: usize = 2;

/// Batched forwarding on followers: requests that queue up while earlier forwards are in
/// flight go to the leader in one call (`call`: `ForwardWrite` or `ForwardHeartbeat`; a list of
/// requests, answered by a list), or as one message on `stream` when given.
pub(super) async fn run_forwarder<T, A, C, CF>(
    peers: Peers,
    queue: tokio::sync::mpsc::Receiver<Pending<T, A>>,
    linger: Duration,
    stream: Option<(&'static str, OpenStream)>,
    tasks: Tasks,
    call: C,
) where
    T: Serialize + Send + Sync + 'static,
    A: DeserializeOwned + Send + 'static,
    C: Fn(RaftServiceClient<Channel>, tonic::Request<RaftPayload>) -> CF
        + Clone
        + Send
        + Sync
        + 'static,
    CF: Future<Output = Result<tonic::Response<RaftPayload>, tonic::Status>> + Send,
{
    run_batches(
        queue,
        MAX_GROUP,
        MAX_FORWARDS_IN_FLIGHT,
        linger,
        tasks,
        move |mut jobs: Vec<Pending<T, A>>| {
            let (peers, call) = (peers.clone(), call.clone());
            async move {
                let mut by_leader: BTreeMap<String, Vec<Pending<T, A>>> = BTreeMap::new();
                for job in jobs.drain(..) {
                    by_leader.entry(job.0.clone()).or_default().push(job);
                }
                let calls = by_leader
                    .into_iter()
                    .map(|(addr, jobs)| forward_batch(&peers, addr, jobs, stream, call.clone()));
                futures::future::join_all(calls).await;
            }
        },
    )
    .await;
}

/// Queues `request` for batched forwarding to the leader at `addr` and waits for its answer.
pub(super) async fn forward_through<T, A>(
    queue: tokio::sync::mpsc::Sender<Pending<T, A>>,
    addr: String,
    request: T,
    timeout: Duration,
) -> Result<A, PeerError> {
    let failed = |reason: String| PeerError::Failed {
        addr: addr.clone(),
        reason,
    };
    let (answer, answered) = tokio::sync::oneshot::channel();
    queue
        .send((addr.clone(), request, timeout, answer))
        .await
        .map_err(|_| failed("replica shutting down".into()))?;
    answered
        .await
        .map_err(|_| failed("replica shutting down".into()))?
        .map_err(failed)
}

/// Sends one batch to the leader at `addr` and hands each request its answer (or the reason
/// none came), in order.
async fn forward_batch<T, A, C, CF>(
    peers: &Peers,
    addr: String,
    jobs: Vec<Pending<T, A>>,
    stream: Option<(&'static str, OpenStream)>,
    call: C,
) where
    T: Serialize,
    A: DeserializeOwned,
    C: FnOnce(RaftServiceClient<Channel>, tonic::Request<RaftPayload>) -> CF,
    CF: Future<Output = Result<tonic::Response<RaftPayload>, tonic::Status>>,
{
    let timeout = jobs
        .iter()
        .map(|j| j.2)
        .min()
        .unwrap_or(Duration::from_secs(1));
    let (requests, answers): (Vec<T>, Vec<_>) = jobs
        .into_iter()
        .map(|(_, r, _, answer)| (r, answer))
        .unzip();
    let result = match stream {
        Some(stream) => {
            peers
                .call_streamed(&addr, stream, &requests, timeout, call)
                .await
        }
        None => peers.call(&addr, &requests, timeout, call).await,
    };
    let result: Result<Vec<A>, String> = result.map_err(|e| e.to_string());
    match result {
        Ok(results) if results.len() == answers.len() => {
            for (result, answer) in results.into_iter().zip(answers) {
                let _ = answer.send(Ok(result));
            }
        }
        Ok(results) => {
            let e = format!(
                "{addr} answered {} of {} forwarded requests",
                results.len(),
                answers.len()
            );
            for answer in answers {
                let _ = answer.send(Err(e.clone()));
            }
        }
        Err(e) => {
            for answer in answers {
                let _ = answer.send(Err(e.clone()));
            }
        }
    }
}
