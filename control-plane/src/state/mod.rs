//! The replicated cluster state: a plain data structure that applies [`Command`]s
//! deterministically, independent of gRPC and of Raft.
//!
//! Everything that differs between replicas (the clock, random ids) is decided by the
//! proposer and carried inside the command, so every replica computes the same state from the
//! same log.

mod command;
mod holdings;
pub mod invariants;
mod node;

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

pub use command::{Command, EncodedCommand, Outcome, PlacementChange, Rejection, StatusChange};
pub use holdings::Holdings;
pub use node::{
    layer_mb, Gpu, Model, ModelSpec, Node, NodeSpec, NodeStatus, Placement, Range, Resources,
};
use serde::{Deserialize, Serialize};

/// imbl's persistent hash map with foldhash instead of SipHash (imbl's default): every
/// registration, heartbeat, failure-detector look and retried request hashes a key, and
/// nothing depends on the order (a process's seed is random either way).
pub type PersistentMap<K, V> =
    imbl::GenericHashMap<K, V, foldhash::fast::RandomState, imbl::shared_ptr::DefaultSharedPtr>;

/// The nodes by id. A hash map, not an ordered one: registrations and the failure detector
/// look nodes up by id all the time, and with 100,000+ ids an ordered map's dozen or so string
/// comparisons per lookup (each chasing a pointer to the key) cost ~6% of a replica's CPU in
/// the writes benchmark; listing, which sorts, is rare.
pub type NodeMap = PersistentMap<String, Node>;

/// The authoritative state of the cluster as of some log index.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(from = "holdings::Stored")]
pub struct ClusterState {
    /// Generated once, by the first leader, when the cluster formed.
    pub cluster_id: Option<String>,
    /// Every node ever registered, including those that left, by node_id.
    ///
    /// The maps are persistent (structure-sharing): a copy of the whole state is O(1), so a
    /// snapshot captures it without holding up apply while it is encoded, and a planner's
    /// scratch copy costs nothing until it writes. Encoded like a map. Nodes are hashed, not
    /// ordered (see [`NodeMap`]); whatever lists them sorts ([`ClusterState::members`]).
    pub nodes: NodeMap,
    /// Every registered model, by id.
    pub models: imbl::OrdMap<String, Model>,
    /// Outcomes of the most recent client requests, for answering retries. Shared until
    /// written, so scratch copies of the state (placement planning) do not copy it.
    #[serde(default)]
    pub requests: Arc<RecentRequests>,
    /// Revoked client token ids (`jti`), with when they were revoked (Unix ms). Kept for
    /// good: an id is a few dozen bytes, and a token's expiry is not known here.
    #[serde(default)]
    pub revoked_tokens: imbl::OrdMap<String, i64>,
    /// Which nodes changed, for the leader's failure detector and delta streams. Not
    /// part of the state's value: not encoded, and equal in every copy.
    #[serde(skip)]
    pub node_changes: NodeChanges,
    /// Which models hold layers on each node, kept by apply from `models` (derived: not
    /// encoded, rebuilt on decoding; see [`holdings`]).
    #[serde(skip)]
    pub holdings: Holdings,
}

/// The ids of the nodes whose record changed (status, generation, layers), in apply order: a
/// hint that lets the leader's failure detector look at just those nodes on each sweep
/// instead of at every node, and a delta stream send just those. Copies of the state share one feed. A state decoded from a snapshot starts a new
/// feed, and a reader that fell more than [`NodeChanges::CAPACITY`] ids behind is told to
/// look at everything; a hint about a node that did not change costs one look, nothing else.
#[derive(Clone, Default)]
pub struct NodeChanges(Arc<Mutex<ChangeLog>>);

#[derive(Default)]
struct ChangeLog {
    /// Ids pushed so far; `ids` holds the last of them.
    end: u64,
    ids: VecDeque<String>,
}

impl NodeChanges {
    /// Ids kept for a reader that is behind (about 3 MiB when full). The detector reads
    /// several times a second, and a sweep held up by a slow write still finds its place
    /// at tens of thousands of changes per second.
    pub const CAPACITY: usize = 65_536;

    fn log(&self) -> std::sync::MutexGuard<'_, ChangeLog> {
        // Pushing and reading cannot panic half way, so a poisoned lock is still consistent.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that `node_id` changed.
    pub fn push(&self, node_id: &str) {
        let mut log = self.log();
        if log.ids.len() == Self::CAPACITY {
            log.ids.pop_front();
        }
        log.ids.push_back(node_id.to_string());
        log.end += 1;
    }

    /// The position after the last id pushed.
    pub fn end(&self) -> u64 {
        self.log().end
    }

    /// The ids pushed after position `from`, and the position after them; `None` when some
    /// of them were dropped (the reader must look at every node).
    pub fn since(&self, from: u64) -> Option<(Vec<String>, u64)> {
        let log = self.log();
        let behind = usize::try_from(log.end.checked_sub(from)?).ok()?;
        if behind > log.ids.len() {
            return None;
        }
        let skip = log.ids.len() - behind;
        Some((log.ids.iter().skip(skip).cloned().collect(), log.end))
    }

    /// Whether `other` is this feed (and not one started since, by a snapshot).
    pub fn same(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl PartialEq for NodeChanges {
    /// A feed is not part of the state's value.
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl std::fmt::Debug for NodeChanges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeChanges {{ end: {} }}", self.end())
    }
}

/// The outcomes of the last [`RecentRequests::CAPACITY`] client requests by request id.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RecentRequests {
    // Persistent collections (encoded like `VecDeque` and `HashMap`): copying them for a
    // snapshot is O(1).
    order: imbl::Vector<u128>,
    outcomes: PersistentMap<u128, Outcome>,
}

impl RecentRequests {
    /// Requests remembered. A retry comes within one request budget (seconds), so this
    /// covers far more writes than can commit meanwhile at the measured write rates.
    pub const CAPACITY: usize = 100_000;

    /// The outcome recorded for `request_id`.
    pub fn get(&self, request_id: u128) -> Option<&Outcome> {
        self.outcomes.get(&request_id)
    }

    fn record(&mut self, request_id: u128, outcome: Outcome) {
        if self.outcomes.insert(request_id, outcome).is_none() {
            self.order.push_back(request_id);
        }
        while self.order.len() > Self::CAPACITY {
            if let Some(old) = self.order.pop_front() {
                self.outcomes.remove(&old);
            }
        }
    }

    /// How many requests are remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

impl ClusterState {
    /// Applies one command; the answer tells the proposer what happened.
    pub fn apply(&mut self, command: Command) -> Outcome {
        match command {
            Command::Batch(commands) => {
                Outcome::Batch(commands.into_iter().map(|c| self.apply(c)).collect())
            }
            Command::Once {
                request_id,
                command,
            } => {
                if let Some(outcome) = self.requests.get(request_id) {
                    return outcome.clone();
                }
                let outcome = self.apply(*command);
                Arc::make_mut(&mut self.requests).record(request_id, outcome.clone());
                outcome
            }
            Command::SetClusterId { cluster_id } => {
                let id = self.cluster_id.get_or_insert(cluster_id);
                Outcome::ClusterId {
                    cluster_id: id.clone(),
                }
            }
            Command::RegisterNode { spec, now_ms } => self.register(spec, now_ms),
            Command::LeaveNode { node_id, now_ms } => self.leave(&node_id, now_ms),
            Command::SetNodeStatuses { changes } => self.set_statuses(changes),
            Command::AddModel { spec, placement } => self.add_model(spec, placement),
            Command::RemoveModel { id } => self.remove_model(&id),
            Command::SetPlacements { changes } => self.set_placements(changes),
            Command::SetDrain { node_id, drain } => self.set_drain(&node_id, drain),
            Command::RevokeToken { jti, now_ms } => Outcome::TokenRevoked {
                already: self.revoked_tokens.insert(jti, now_ms).is_some(),
            },
        }
    }

    fn add_model(&mut self, spec: ModelSpec, placement: Placement) -> Outcome {
        if self.models.contains_key(&spec.id) {
            return Outcome::Rejected(Rejection::ModelExists(spec.id));
        }
        // A plan made on a state that changed before it applied waits for the next repair,
        // which places it against the current state.
        let placement = match placement {
            Placement::Placed(ranges) => {
                match invariants::check_placement(self, &spec, &ranges, &[]) {
                    Ok(()) => Placement::Placed(ranges),
                    Err(e) => {
                        Placement::Pending(format!("placement plan was stale ({e}); replanning"))
                    }
                }
            }
            pending => pending,
        };
        let id = spec.id.clone();
        let ranges = match &placement {
            Placement::Placed(ranges) => ranges.clone(),
            Placement::Pending(_) => Vec::new(),
        };
        self.models.insert(
            id.clone(),
            Model {
                spec,
                placement,
                epoch: 1,
            },
        );
        self.reassign(&id, &[], &ranges);
        Outcome::ModelAdded
    }

    fn remove_model(&mut self, id: &str) -> Outcome {
        let Some(model) = self.models.remove(id) else {
            return Outcome::Rejected(Rejection::UnknownModel(id.to_string()));
        };
        self.reassign(id, model.ranges(), &[]);
        Outcome::ModelRemoved
    }

    fn set_placements(&mut self, changes: Vec<PlacementChange>) -> Outcome {
        let mut applied = 0;
        let mut skipped = Vec::new();
        for change in changes {
            let Some(model) = self.models.get(&change.model_id) else {
                skipped.push(format!("model {} no longer exists", change.model_id));
                continue;
            };
            if model.epoch != change.epoch {
                skipped.push(format!("model {}: stale plan", change.model_id));
                continue;
            }
            if let Placement::Placed(ranges) = &change.placement {
                if let Err(e) =
                    invariants::check_placement(self, &model.spec, ranges, model.ranges())
                {
                    skipped.push(e);
                    continue;
                }
            }
            let model = self
                .models
                .get_mut(&change.model_id)
                .expect("checked above");
            let old = std::mem::replace(&mut model.placement, change.placement);
            model.epoch += 1;
            let new = model.ranges().to_vec();
            let old = match old {
                Placement::Placed(ranges) => ranges,
                Placement::Pending(_) => Vec::new(),
            };
            self.reassign(&change.model_id, &old, &new);
            applied += 1;
        }
        Outcome::PlacementsChanged { applied, skipped }
    }

    fn set_drain(&mut self, node_id: &str, drain: bool) -> Outcome {
        let Some(node) = self.nodes.get_mut(node_id) else {
            return Outcome::Rejected(Rejection::UnknownNode(node_id.to_string()));
        };
        match (drain, node.status) {
            (true, NodeStatus::Draining) | (false, NodeStatus::Healthy) => Outcome::DrainSet,
            (true, NodeStatus::Healthy | NodeStatus::Unhealthy) => {
                node.status = NodeStatus::Draining;
                self.node_changes.push(node_id);
                Outcome::DrainSet
            }
            (false, NodeStatus::Draining) => {
                node.status = NodeStatus::Healthy;
                self.node_changes.push(node_id);
                Outcome::DrainSet
            }
            (_, status) => Outcome::Rejected(Rejection::NotAllowed(format!(
                "node {node_id} is {}; only healthy or unhealthy nodes can be drained, only draining ones undrained",
                status.as_str()
            ))),
        }
    }

    fn register(&mut self, spec: NodeSpec, now_ms: i64) -> Outcome {
        self.node_changes.push(&spec.node_id);
        match self.nodes.get_mut(&spec.node_id) {
            Some(node) => {
                node.address = spec.address;
                node.port = spec.port;
                node.resources = spec.resources;
                node.status = NodeStatus::Healthy;
                node.last_seen_ms = now_ms;
                node.generation += 1;
                Outcome::Registered { created: false }
            }
            None => {
                let node = Node {
                    node_id: spec.node_id.clone(),
                    address: spec.address,
                    port: spec.port,
                    resources: spec.resources,
                    used_layers: 0,
                    status: NodeStatus::Healthy,
                    last_seen_ms: now_ms,
                    registered_at_ms: now_ms,
                    generation: 1,
                };
                self.nodes.insert(spec.node_id, node);
                Outcome::Registered { created: true }
            }
        }
    }

    fn set_statuses(&mut self, changes: Vec<StatusChange>) -> Outcome {
        let mut applied = 0;
        for change in changes {
            let Some(node) = self.nodes.get_mut(&change.node_id) else {
                continue;
            };
            if node.generation != change.generation
                || node.status != change.from
                || change.to == NodeStatus::Left
            {
                continue;
            }
            node.status = change.to;
            if let Some(ms) = change.last_seen_ms {
                node.last_seen_ms = node.last_seen_ms.max(ms);
            }
            self.node_changes.push(&change.node_id);
            applied += 1;
        }
        Outcome::StatusesChanged { applied }
    }

    fn leave(&mut self, node_id: &str, now_ms: i64) -> Outcome {
        match self.nodes.get_mut(node_id) {
            None => Outcome::Rejected(Rejection::UnknownNode(node_id.to_string())),
            Some(node) if node.status == NodeStatus::Left => Outcome::Left { already: true },
            Some(node) => {
                node.status = NodeStatus::Left;
                node.last_seen_ms = now_ms;
                self.node_changes.push(node_id);
                Outcome::Left { already: false }
            }
        }
    }

    /// A copy to plan on: applying commands to it changes nothing else, not even the change
    /// feed (it gets its own), so readers of the real state's feed are not sent hints about
    /// plans.
    pub fn scratch_copy(&self) -> Self {
        let mut copy = self.clone();
        copy.node_changes = NodeChanges::default();
        copy
    }

    /// Nodes that count as members (every node that has not left), by node id.
    pub fn members(&self) -> impl Iterator<Item = &Node> {
        self.nodes_by_id()
            .into_iter()
            .filter(|n| n.status != NodeStatus::Left)
    }

    /// Members in no particular order, for sums and counts (no sort).
    pub fn members_unordered(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values().filter(|n| n.status != NodeStatus::Left)
    }

    /// Every node, including those that left, by node id.
    pub fn nodes_by_id(&self) -> Vec<&Node> {
        let mut nodes: Vec<&Node> = self.nodes.values().collect();
        nodes.sort_unstable_by(|a, b| a.node_id.cmp(&b.node_id));
        nodes
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    //! States and specs for unit tests here and in the crate's other modules.

    use super::{Gpu, NodeSpec, Resources};

    /// A node with one H100 and `memory_mb` of RAM.
    pub(crate) fn spec(id: &str, memory_mb: i64) -> NodeSpec {
        NodeSpec {
            node_id: id.to_string(),
            address: "10.0.0.1".to_string(),
            port: 9000,
            resources: Resources {
                cpu_cores: 8,
                memory_mb,
                gpus: vec![Gpu {
                    name: "NVIDIA H100 80GB HBM3".to_string(),
                    memory_mb: 81559,
                    uuid: format!("GPU-{id}"),
                }],
                max_layers: 40,
            },
        }
    }
}

#[cfg(test)]
mod tests;
