//! Heartbeats and usage samples: soft state the leader keeps in memory (its failure
//! detector), never in the Raft log. Any replica takes a worker's heartbeat; a follower
//! forwards the heartbeats it receives to the leader in batches. A worker that heartbeats the
//! leader itself is answered and told which follower to heartbeat next
//! ([`HEARTBEAT_TO_METADATA_KEY`]), so at scale the leader takes batches, not requests: a
//! heartbeat taken directly cost the leader ~48 us of CPU (a whole gRPC request), a forwarded
//! one ~8 us (`heartbeats --workers 10000`, BENCHMARKS.md).

use std::{sync::atomic::Ordering, time::Duration};

use dllm_proto::pb;

use super::{forwarding::forward_through, Replica};
use crate::{
    error::ApiError,
    forward::{HeartbeatAnswer, Proto, UsageAnswer, UsageQuery, WireError},
    liveness::{Heard, Sample},
    state::NodeStatus,
};

/// A heartbeat as the leader reads it: the same protobuf as `HeartbeatRequest` (the same
/// tags, so a follower's batch of `HeartbeatRequest`s decodes as these), with the usage sample
/// left encoded, kept so by the failure detector ([`Sample`]) and decoded only when asked
/// for: decoding and later dropping an 8-GPU sample (10 allocations each way) was ~20% of the
/// leader's profile; keeping it encoded measured 12% less leader CPU per heartbeat.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EncodedHeartbeat {
    /// The node's id.
    #[prost(string, tag = "1")]
    pub node_id: String,
    /// Its `NodeUsage`, encoded.
    #[prost(bytes = "vec", optional, tag = "2")]
    pub usage: Option<Vec<u8>>,
}

impl From<pb::HeartbeatRequest> for EncodedHeartbeat {
    fn from(request: pb::HeartbeatRequest) -> Self {
        Self {
            node_id: request.node_id,
            usage: request.usage.map(|u| prost::Message::encode_to_vec(&u)),
        }
    }
}

/// Metadata key of a heartbeat answer from the leader naming the follower (its address) the
/// worker should heartbeat from now on.
pub const HEARTBEAT_TO_METADATA_KEY: &str = "x-dllm-heartbeat-to";

/// Metadata key of a `ForwardHeartbeat` call naming the follower (its Raft id) that forwards.
pub const FORWARDED_BY_METADATA_KEY: &str = "x-dllm-forwarded-by";

/// How recently (in heartbeat intervals) a follower must have forwarded heartbeats to the
/// leader for the leader to send workers to it: proof that the path from that follower to the
/// leader works now, which replication progress alone would not give (an idle cluster's log
/// does not move, so a dead follower looks as caught up as a live one).
const FORWARDER_FRESH_INTERVALS: u32 = 2;

/// The follower `node_id` should heartbeat, among `followers` (addresses, in a stable order):
/// picked by a hash of the node id, as workers pick their first seed, so the workers the
/// leader sends away spread evenly; `None` without followers.
fn follower_for<'a>(node_id: &str, followers: &'a [String]) -> Option<&'a String> {
    // FNV-1a: stable across runs and builds.
    let hash = node_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    followers.get((hash % followers.len().max(1) as u64) as usize)
}

impl Replica {
    /// Notes that follower `id` forwarded heartbeats to this replica (as leader) just now.
    pub fn forwarded_by(&self, id: u64) {
        self.forwarders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tokio::time::Instant::now());
    }

    /// The followers a worker heartbeating this replica may be sent to, while it leads: those
    /// in the membership that forwarded heartbeats here recently, by id.
    fn heartbeat_followers(&self) -> Vec<String> {
        let fresh: Duration = self.config.liveness.interval * FORWARDER_FRESH_INTERVALS;
        let now = tokio::time::Instant::now();
        let ids: Vec<u64> = self
            .forwarders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(id, at)| **id != self.id && now.saturating_duration_since(**at) < fresh)
            .map(|(id, _)| *id)
            .collect();
        if ids.is_empty() {
            return Vec::new();
        }
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        if m.state != openraft::ServerState::Leader {
            return Vec::new();
        }
        let membership = m.membership_config.membership();
        ids.iter()
            .filter_map(|id| membership.get_node(id).map(|n| n.addr.clone()))
            .collect()
    }

    /// Records heartbeats on this replica, which must be the leader, and answers each.
    /// Writes nothing: a node that was unhealthy or offline is made healthy by the next
    /// liveness tick, batched with every other transition. A follower's batch costs one state
    /// read and one lock of the failure detector for all of its heartbeats.
    pub fn leader_heartbeats(&self, requests: Vec<EncodedHeartbeat>) -> Vec<HeartbeatAnswer> {
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
                .map(|mut request: EncodedHeartbeat| {
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
                    let answer = Ok(Proto(pb::HeartbeatResponse {
                        status: node.status.as_str().to_string(),
                        assignments: s
                            .assignments_of(&request.node_id)
                            .map(|(model_id, r)| pb::LayerAssignment {
                                model_id: model_id.to_string(),
                                first_layer: r.first,
                                last_layer: r.last,
                            })
                            .collect(),
                        heartbeat_interval_ms: interval_ms,
                        cluster_id: cluster_id.clone(),
                    }));
                    heard.push((
                        request.node_id,
                        node.generation,
                        node.status,
                        request
                            .usage
                            .take()
                            .and_then(|u| Sample::from_encoded(u).ok()),
                    ));
                    answer
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
    /// and the leader's cost per heartbeat stays small. With the answer, when this replica
    /// leads and has followers that forward: the address of the one the worker should
    /// heartbeat from now on.
    ///
    /// # Errors
    /// `NOT_FOUND` for an unknown or left node; `UNAVAILABLE` without a leader.
    pub async fn heartbeat(
        &self,
        request: pb::HeartbeatRequest,
    ) -> Result<(pb::HeartbeatResponse, Option<String>), ApiError> {
        let led = std::sync::atomic::AtomicBool::new(false);
        let node_id = request.node_id.clone();
        let answer = self
            .at_leader(
                self.config.request_timeout,
                "heartbeat",
                || {
                    led.store(true, Ordering::Relaxed);
                    let answer = self
                        .leader_heartbeats(vec![request.clone().into()])
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
        let elsewhere = if led.load(Ordering::Relaxed) {
            follower_for(&node_id, &self.heartbeat_followers()).cloned()
        } else {
            None
        };
        Ok((answer.0, elsewhere))
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
                sample: detector.usage(&id).map(Proto),
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
                    |id| detector.free_memory_of(id),
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

#[cfg(test)]
mod tests {
    use dllm_proto::pb;

    use super::{follower_for, EncodedHeartbeat};
    use crate::{forward::Proto, liveness::Sample};

    /// A follower's batch of `HeartbeatRequest`s (as it goes on the wire) reads on the leader
    /// as `EncodedHeartbeat`s: the same node ids, and usage samples that decode to what the
    /// workers sent. A heartbeat without a sample has none.
    #[test]
    fn a_forwarded_batch_reads_with_its_samples_left_encoded() {
        let usage = pb::NodeUsage {
            timestamp: 7,
            memory_used_mb: 1_000,
            memory_total_mb: 4_000,
            gpus: vec![pb::GpuUsage {
                index: 0,
                uuid: "GPU-0".into(),
                memory_used_mb: 5,
                ..Default::default()
            }],
            ..Default::default()
        };
        let batch = vec![
            Proto(pb::HeartbeatRequest {
                node_id: "w1".into(),
                usage: Some(usage.clone()),
            }),
            Proto(pb::HeartbeatRequest {
                node_id: "w2".into(),
                usage: None,
            }),
        ];
        let bytes = bincode::serialize(&batch).expect("encodes");
        let read: Vec<Proto<EncodedHeartbeat>> = bincode::deserialize(&bytes).expect("decodes");
        assert_eq!(read[0].0.node_id, "w1");
        let sample = Sample::from_encoded(read[0].0.usage.clone().expect("a sample"))
            .expect("a valid sample");
        assert_eq!(
            sample.decode(),
            usage,
            "the sample decodes to what was sent"
        );
        assert_eq!(
            Sample::from(&usage),
            sample,
            "the same sample as one taken decoded"
        );
        assert_eq!(read[1].0.node_id, "w2");
        assert_eq!(read[1].0.usage, None, "no sample sent, none read");
        assert_eq!(
            EncodedHeartbeat::from(batch[0].0.clone()),
            read[0].0,
            "a heartbeat taken directly reads the same"
        );
    }

    /// The leader sends each worker to one follower, always the same for a node id, and
    /// spreads a fleet evenly over its followers; with none, it sends no one anywhere.
    #[test]
    fn workers_are_sent_to_followers_evenly_and_stably() {
        let followers = vec!["a:1".to_string(), "b:1".to_string()];
        assert_eq!(
            follower_for("w1", &[]),
            None,
            "no follower: the worker stays"
        );
        let to_a = (0..10_000)
            .filter(|i| follower_for(&format!("hb-{i:06}"), &followers) == Some(&followers[0]))
            .count();
        assert!(
            (4_500..=5_500).contains(&to_a),
            "{to_a} of 10,000 workers sent to the first of two followers"
        );
        assert_eq!(
            follower_for("w1", &followers),
            follower_for("w1", &followers),
            "the same node goes to the same follower"
        );
    }
}
