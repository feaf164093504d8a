//! Heartbeats and usage samples: soft state the leader keeps in memory (its failure
//! detector), never in the Raft log. Any replica takes a worker's heartbeat; a follower
//! forwards the heartbeats it receives to the leader in batches.

use std::sync::atomic::Ordering;

use dllm_proto::pb;

use super::{forwarding::forward_through, Replica};
use crate::{
    error::ApiError,
    forward::{HeartbeatAnswer, Proto, UsageAnswer, UsageQuery, WireError},
    liveness::Heard,
    state::NodeStatus,
};

impl Replica {
    /// Records heartbeats on this replica, which must be the leader, and answers each.
    /// Writes nothing: a node that was unhealthy or offline is made healthy by the next
    /// liveness tick, batched with every other transition. A follower's batch costs one state
    /// read and one lock of the failure detector for all of its heartbeats.
    pub fn leader_heartbeats(&self, requests: Vec<pb::HeartbeatRequest>) -> Vec<HeartbeatAnswer> {
        if let Err(e) = self.leading() {
            return requests.iter().map(|_| Err(e.clone())).collect();
        }
        self.heartbeats
            .fetch_add(requests.len() as u64, Ordering::Relaxed);
        let now = tokio::time::Instant::now();
        let now_ms = dllm_util::clock::now_ms();
        let interval_ms = self.config.liveness.interval.as_millis() as i32;
        // The detector is updated after the state's lock is released (see
        // `sweep_statuses`): heard from (the node's id, generation and status, its usage
        // sample).
        let mut heard = Vec::with_capacity(requests.len());
        let answers = self.state.read(|s| {
            let cluster_id = s.cluster_id.clone().unwrap_or_default();
            requests
                .into_iter()
                .map(|mut request| {
                    let Some(node) = s
                        .nodes
                        .get(&request.node_id)
                        .filter(|n| n.status != NodeStatus::Left)
                    else {
                        return Err(WireError::NotFound {
                            kind: "node".into(),
                            id: request.node_id,
                        });
                    };
                    heard.push((
                        node.node_id.clone(),
                        node.generation,
                        node.status,
                        request.usage.take(),
                    ));
                    Ok(Proto(pb::HeartbeatResponse {
                        status: node.status.as_str().to_string(),
                        assignments: s
                            .models
                            .values()
                            .flat_map(|m| {
                                m.ranges()
                                    .iter()
                                    .filter(|r| r.node_id == request.node_id)
                                    .map(|r| pb::LayerAssignment {
                                        model_id: m.spec.id.clone(),
                                        first_layer: r.first,
                                        last_layer: r.last,
                                    })
                            })
                            .collect(),
                        heartbeat_interval_ms: interval_ms,
                        cluster_id: cluster_id.clone(),
                    }))
                })
                .collect()
        });
        let mut detector = self.detector();
        for (node_id, generation, status, usage) in heard {
            let node = Heard {
                node_id: &node_id,
                generation,
                status,
            };
            detector.heard(node, usage, now, now_ms);
        }
        answers
    }

    /// A heartbeat, carried to the leader: recorded here when this replica leads, otherwise
    /// queued and forwarded together with the other heartbeats this follower received
    /// meanwhile (one `ForwardHeartbeat` call per batch), so workers can heartbeat any replica
    /// and the leader's cost per heartbeat stays small.
    ///
    /// # Errors
    /// `NOT_FOUND` for an unknown or left node; `UNAVAILABLE` without a leader.
    pub async fn heartbeat(
        &self,
        request: pb::HeartbeatRequest,
    ) -> Result<pb::HeartbeatResponse, ApiError> {
        let answer = self
            .at_leader(
                self.config.request_timeout,
                "heartbeat",
                || {
                    let answer = self
                        .leader_heartbeats(vec![request.clone()])
                        .pop()
                        .unwrap_or_else(|| Err(WireError::Internal("no heartbeat answer".into())));
                    std::future::ready(answer)
                },
                |addr, timeout| {
                    let queue = self.heartbeat_forwarder.clone();
                    forward_through(queue, addr, Proto(request.clone()), timeout)
                },
            )
            .await?;
        Ok(answer.0)
    }

    /// Answers a question about the soft state; leader only.
    pub async fn leader_usage(&self, query: UsageQuery) -> Result<UsageAnswer, WireError> {
        self.leading()?;
        // Taken before the detector's lock (the state's is never held under it).
        let nodes = match query {
            UsageQuery::AvailableMemory => Some(self.state.read(|s| s.nodes.clone())),
            _ => None,
        };
        let detector = self.detector();
        Ok(match query {
            UsageQuery::Node(id) => UsageAnswer {
                sample: detector.usage(&id).cloned().map(Proto),
                last_contact_ms: detector
                    .last_contact(&id)
                    .map(|ms| (id.clone(), ms))
                    .into_iter()
                    .collect(),
                ..Default::default()
            },
            UsageQuery::LastSeen(ids) => UsageAnswer {
                last_contact_ms: ids
                    .into_iter()
                    .filter_map(|id| Some((id.clone(), detector.last_contact(&id)?)))
                    .collect(),
                ..Default::default()
            },
            UsageQuery::AvailableMemory => UsageAnswer {
                available_memory_mb: Some(crate::convert::available_memory_mb(
                    nodes.iter().flat_map(|n| n.values()),
                    |id| {
                        let u = detector.usage(id)?;
                        Some((u.memory_total_mb - u.memory_used_mb).max(0))
                    },
                )),
                ..Default::default()
            },
            UsageQuery::Fleet => UsageAnswer {
                free_memory_mb: detector.free_memory().into_iter().collect(),
                last_contact_ms: detector
                    .last_contacts()
                    .map(|(id, ms)| (id.to_string(), ms))
                    .collect(),
                ..Default::default()
            },
        })
    }

    /// `nodes` with `last_seen` the leader's last contact where that is later than the
    /// replicated value (registrations only; heartbeats are not in the log), asking the
    /// leader about these nodes only.
    ///
    /// # Errors
    /// `UNAVAILABLE` without a leader.
    pub async fn with_last_seen(
        &self,
        nodes: Vec<pb::NodeInfo>,
    ) -> Result<Vec<pb::NodeInfo>, ApiError> {
        if nodes.is_empty() {
            return Ok(nodes);
        }
        let ids = nodes.iter().map(|n| n.node_id.clone()).collect();
        let seen = self.usage(UsageQuery::LastSeen(ids)).await?;
        Ok(nodes.into_iter().map(|n| seen.with_last_seen(n)).collect())
    }

    /// The leader's answer to a question about its soft state (a node's latest usage
    /// sample, free memory per node, last contacts).
    ///
    /// # Errors
    /// `UNAVAILABLE` without a leader.
    pub async fn usage(&self, query: UsageQuery) -> Result<UsageAnswer, ApiError> {
        self.at_leader(
            self.config.request_timeout,
            "usage",
            || self.leader_usage(query.clone()),
            |addr, timeout| {
                let (peers, query) = (self.peers.clone(), query.clone());
                async move {
                    peers
                        .call(&addr, &query, timeout, |mut c, r| async move {
                            c.node_usage(r).await
                        })
                        .await
                }
            },
        )
        .await
    }
}
