//! Failure detection from worker heartbeats, on the leader, in memory (Nomad's design).
//!
//! A heartbeat only updates this replica's memory: the time it arrived and the usage it
//! carried. Nothing reaches the Raft log unless a node's status changes:
//! - silent for `unhealthy_after` intervals: `healthy` -> `unhealthy`;
//! - silent for `offline_after` intervals: -> `offline`;
//! - heard from again within the unhealthy threshold: `unhealthy`/`offline` -> `healthy`.
//!
//! Silence is counted from the later of the node's last heartbeat and the moment this replica
//! became leader plus a grace period, so a failover (which loses the old leader's memory and
//! stalls heartbeats for an election) never turns into a wave of false failures. A node this
//! leader has not heard from yet starts its clock when the leader first sees it, and a
//! re-registration (a new generation) restarts it.

use std::{collections::HashMap, time::Duration};

use dllm_proto::pb;
use tokio::time::Instant;

use crate::state::{Node, NodeStatus, StatusChange};

/// Failure detector thresholds.
#[derive(Clone, Copy, Debug)]
pub struct LivenessConfig {
    /// How often workers are asked to heartbeat.
    pub interval: Duration,
    /// Missed intervals before `unhealthy`.
    pub unhealthy_after: u32,
    /// Missed intervals before `offline`.
    pub offline_after: u32,
    /// Extra time a new leader gives every node before counting silence.
    pub failover_grace: Duration,
}

impl LivenessConfig {
    /// Silence after which a node is unhealthy.
    pub fn unhealthy_timeout(&self) -> Duration {
        self.interval * self.unhealthy_after
    }

    /// Silence after which a node is offline.
    pub fn offline_timeout(&self) -> Duration {
        self.interval * self.offline_after
    }
}

/// What this leader knows about one node beyond the replicated state.
#[derive(Debug)]
struct Tracked {
    generation: u64,
    last_contact: Instant,
    last_contact_ms: Option<i64>,
    usage: Option<pb::NodeUsage>,
    /// A transition proposed and not yet seen applied, so it is not proposed twice.
    pending: Option<NodeStatus>,
}

/// The detector's state; time is passed in so tests can drive it.
#[derive(Debug)]
pub struct Detector {
    config: LivenessConfig,
    tracked: HashMap<String, Tracked>,
    leader_since: Option<Instant>,
}

impl Detector {
    /// A detector that is not leading.
    pub fn new(config: LivenessConfig) -> Self {
        Self {
            config,
            tracked: HashMap::new(),
            leader_since: None,
        }
    }

    /// The thresholds.
    pub fn config(&self) -> &LivenessConfig {
        &self.config
    }

    /// Whether this replica is acting as leader for liveness.
    pub fn leading(&self) -> bool {
        self.leader_since.is_some()
    }

    /// Starts detecting: forget everything (another leader may have heard from nodes since)
    /// and begin the grace period.
    pub fn become_leader(&mut self, now: Instant) {
        self.tracked.clear();
        self.leader_since = Some(now);
    }

    /// Stops detecting and drops the soft state.
    pub fn step_down(&mut self) {
        self.tracked.clear();
        self.leader_since = None;
    }

    fn track<'a>(
        tracked: &'a mut HashMap<String, Tracked>,
        node: &Node,
        now: Instant,
    ) -> &'a mut Tracked {
        // Look up before inserting: `entry` would allocate a copy of the id on every call,
        // and this runs for every heartbeat and for every node on every sweep.
        if !tracked.contains_key(&node.node_id) {
            tracked.insert(
                node.node_id.clone(),
                Tracked {
                    generation: node.generation,
                    last_contact: now,
                    last_contact_ms: None,
                    usage: None,
                    pending: None,
                },
            );
        }
        let t = tracked.get_mut(&node.node_id).expect("inserted just above");
        if t.generation != node.generation {
            t.generation = node.generation;
            t.last_contact = now;
            t.pending = None;
        }
        t
    }

    /// Records a heartbeat from `node` (a member, as the replicated state has it). Nothing
    /// is decided here: the next sweep turns an unhealthy or offline node that is heard from
    /// again back to healthy, batched with every other transition of that tick, so a burst of
    /// recoveries is one Raft entry, not one per node.
    pub fn heartbeat(
        &mut self,
        node: &Node,
        usage: Option<pb::NodeUsage>,
        now: Instant,
        now_ms: i64,
    ) {
        let t = Self::track(&mut self.tracked, node, now);
        t.last_contact = now;
        t.last_contact_ms = Some(now_ms);
        if usage.is_some() {
            t.usage = usage;
        }
    }

    /// Finds the nodes whose silence crossed a threshold. `nodes` is every node in the
    /// replicated state; nodes that left are forgotten.
    pub fn sweep<'a>(
        &mut self,
        nodes: impl IntoIterator<Item = &'a Node>,
        now: Instant,
    ) -> Vec<StatusChange> {
        let Some(since) = self.leader_since else {
            return Vec::new();
        };
        let counting_from = since + self.config.failover_grace;
        let mut changes = Vec::new();
        let mut members = Vec::new();
        for node in nodes {
            if node.status == NodeStatus::Left {
                continue;
            }
            members.push(node.node_id.as_str());
            let t = Self::track(&mut self.tracked, node, now);
            if t.pending.is_some_and(|p| p == node.status) {
                t.pending = None;
            }
            // Heard from (by this leader) within the unhealthy threshold: healthy again.
            let heard_recently = t.last_contact_ms.is_some()
                && now.saturating_duration_since(t.last_contact) < self.config.unhealthy_timeout();
            if matches!(node.status, NodeStatus::Unhealthy | NodeStatus::Offline) && heard_recently
            {
                if t.pending != Some(NodeStatus::Healthy) {
                    t.pending = Some(NodeStatus::Healthy);
                    changes.push(StatusChange {
                        node_id: node.node_id.clone(),
                        generation: node.generation,
                        from: node.status,
                        to: NodeStatus::Healthy,
                        last_seen_ms: t.last_contact_ms,
                    });
                }
                continue;
            }
            if !matches!(node.status, NodeStatus::Healthy | NodeStatus::Unhealthy) {
                continue;
            }
            let silent = now.saturating_duration_since(t.last_contact.max(counting_from));
            let target = if silent >= self.config.offline_timeout() {
                NodeStatus::Offline
            } else if silent >= self.config.unhealthy_timeout() {
                NodeStatus::Unhealthy
            } else {
                continue;
            };
            if target == node.status || t.pending == Some(target) {
                continue;
            }
            t.pending = Some(target);
            changes.push(StatusChange {
                node_id: node.node_id.clone(),
                generation: node.generation,
                from: node.status,
                to: target,
                last_seen_ms: t.last_contact_ms,
            });
        }
        // Every member is tracked now; only when more are tracked did some leave, and only
        // then is the (allocating) cleanup worth it.
        if self.tracked.len() > members.len() {
            let members: std::collections::HashSet<&str> = members.into_iter().collect();
            self.tracked.retain(|id, _| members.contains(id.as_str()));
        }
        changes
    }

    /// Forgets pending transitions that did not commit, so the next sweep proposes again.
    pub fn abandon(&mut self, changes: &[StatusChange]) {
        for c in changes {
            if let Some(t) = self.tracked.get_mut(&c.node_id) {
                if t.pending == Some(c.to) {
                    t.pending = None;
                }
            }
        }
    }

    /// The latest usage sample of a node, if this leader has one.
    pub fn usage(&self, node_id: &str) -> Option<&pb::NodeUsage> {
        self.tracked.get(node_id).and_then(|t| t.usage.as_ref())
    }

    /// Free host memory (MiB) of every node with a usage sample.
    pub fn free_memory(&self) -> HashMap<String, i64> {
        self.tracked
            .iter()
            .filter_map(|(id, t)| {
                let u = t.usage.as_ref()?;
                Some((id.clone(), (u.memory_total_mb - u.memory_used_mb).max(0)))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
