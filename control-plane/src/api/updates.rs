//! What one `StreamUpdates` stream sends: whole lists, or, when the client asked for
//! `deltas`, the first lists whole and then only what changed ([`delta`]).
//!
//! A [`Subscription`] keeps the nodes and models it last sent as the state's own persistent
//! maps: holding them costs nothing until the state moves on, and then only the changed parts
//! are kept twice. Nodes and models go at every interval and promptly when an entry is
//! applied; metrics only at the interval, computed once per replica for every stream that
//! shares the same nodes and second ([`MetricsCache`]).
//!
//! `last_seen` is soft state on the leader that moves with every heartbeat; sending it as it
//! moves would send the fleet every second. A delta lists a node whole when its record
//! changes, and, while it is a member, its id and last_seen alone (`ClusterUpdate.last_seen`)
//! about every [`delta::LAST_SEEN_REFRESH_S`] seconds, each time with the leader's last
//! contact. So a delta costs the changes plus a few dozen bytes for 1/30 of the fleet per
//! second.

pub mod delta;

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc, Mutex,
};

use dllm_proto::pb;
use dllm_util::clock::now_ms;

use crate::{
    convert,
    error::ApiError,
    forward::{UsageAnswer, UsageQuery},
    replica::Replica,
    state::{ClusterState, NodeMap},
};
use delta::{compose, Sent};

/// The update types StreamUpdates knows.
pub const UPDATE_TYPES: &[&str] = &["nodes", "models", "metrics"];

/// One stream's types and what it sent last.
pub struct Subscription {
    replica: Arc<Replica>,
    metrics: Arc<MetricsCache>,
    types: Vec<String>,
    deltas: bool,
    sent: Sent,
}

impl Subscription {
    /// A stream of `types` (already checked, each once) from `replica`, sharing `metrics`
    /// with the replica's other streams.
    pub fn new(
        replica: Arc<Replica>,
        metrics: Arc<MetricsCache>,
        types: Vec<String>,
        deltas: bool,
    ) -> Self {
        Self {
            replica,
            metrics,
            types,
            deltas,
            sent: Sent::default(),
        }
    }

    /// The next update of each type, all from one linearizable read; metrics only when
    /// `timer` (the interval's turn, not a prompt for an applied entry).
    ///
    /// # Errors
    /// `UNAVAILABLE` without a leader or quorum.
    pub async fn next(&mut self, timer: bool) -> Result<Vec<pb::ClusterUpdate>, ApiError> {
        let timestamp = now_ms();
        let types: Vec<String> = self
            .types
            .iter()
            .filter(|t| timer || *t != "metrics")
            .cloned()
            .collect();
        if types.is_empty() {
            // A metrics-only stream prompted by an applied entry: nothing to send.
            return Ok(Vec::new());
        }
        let wants = |t: &str| types.iter().any(|x| x == t);
        let whole_nodes = wants("nodes") && (!self.deltas || self.sent.nodes.is_none());
        // The fleet's last contacts and free memory where a whole list needs them anyway;
        // otherwise metrics ask the leader for one sum, once a second per replica.
        let fleet = match whole_nodes || (!self.deltas && wants("metrics")) {
            true => Some(self.replica.usage(UsageQuery::Fleet).await?),
            false => None,
        };
        let second = timestamp.div_euclid(1000);
        let available = match (&fleet, wants("metrics")) {
            (None, true) => Some(self.metrics.available(&self.replica, second).await?),
            _ => None,
        };
        let (deltas, sent, cache) = (self.deltas, &self.sent, &self.metrics);
        let (mut updates, sent) = self
            .replica
            .read(|s| {
                compose(s, &types, deltas, sent, timestamp, |s| {
                    match (&fleet, available) {
                        (Some(f), _) => convert::cluster_metrics(s, &f.free_memory_mb),
                        (None, available) => cache.metrics(s, available.unwrap_or_default()),
                    }
                })
            })
            .await?;
        if let Some(u) = updates.iter_mut().find(|u| u.update_type == "nodes") {
            add_last_contacts(&self.replica, u, fleet).await?;
        }
        if self.deltas {
            self.sent = sent;
        }
        Ok(updates)
    }
}

/// Sets the nodes' last_seen in `u` to the leader's last contact where that is later: from
/// the fleet's for a whole list, else asked for the nodes in the delta only.
async fn add_last_contacts(
    replica: &Replica,
    u: &mut pb::ClusterUpdate,
    fleet: Option<UsageAnswer>,
) -> Result<(), ApiError> {
    let contact = match (u.delta, fleet) {
        (false, Some(fleet)) => fleet.last_contact_ms,
        _ => {
            let ids = u.nodes.iter().map(|n| n.node_id.clone());
            let ids: Vec<String> = ids.chain(u.last_seen.keys().cloned()).collect();
            if ids.is_empty() {
                return Ok(());
            }
            replica
                .usage(UsageQuery::LastSeen(ids))
                .await?
                .last_contact_ms
        }
    };
    for n in &mut u.nodes {
        if let Some(&ms) = contact.get(&n.node_id) {
            n.last_seen = n.last_seen.max(ms);
        }
    }
    for (id, seen) in &mut u.last_seen {
        if let Some(&ms) = contact.get(id) {
            *seen = (*seen).max(ms);
        }
    }
    Ok(())
}

/// The cluster metrics of delta streams, shared by a replica's streams: the leader's
/// available-memory sum asked once a second, and the metrics computed once per state of the
/// nodes and that sum. Metrics are a soft figure (usage samples), so streams agreeing on
/// one per second is what they need.
#[derive(Default)]
pub struct MetricsCache {
    /// The last sum and the second it was asked in.
    available: Mutex<Option<(i64, i64)>>,
    /// Whether a stream is asking the leader now.
    asking: AtomicBool,
    metrics: Mutex<Option<(NodeMap, i64, pb::ClusterMetrics)>>,
}

impl MetricsCache {
    /// The leader's sum of the healthy members' free memory, as of `second`. One stream asks
    /// at a time (no lock is held while it does); the others take the last sum meanwhile, so
    /// a slow leader holds up one stream, not all of them.
    async fn available(&self, replica: &Replica, second: i64) -> Result<i64, ApiError> {
        let last = *self.available.lock().unwrap_or_else(|e| e.into_inner());
        match last {
            Some((at, mb)) if at == second => return Ok(mb),
            Some((_, mb)) if self.asking.swap(true, Ordering::AcqRel) => return Ok(mb),
            _ => {}
        }
        self.asking.store(true, Ordering::Release);
        let answer = replica.usage(UsageQuery::AvailableMemory).await;
        self.asking.store(false, Ordering::Release);
        let mb = answer?.available_memory_mb.unwrap_or_default();
        *self.available.lock().unwrap_or_else(|e| e.into_inner()) = Some((second, mb));
        Ok(mb)
    }

    /// The metrics of `s` with `available` memory, computed once per nodes and sum.
    fn metrics(&self, s: &ClusterState, available: i64) -> pb::ClusterMetrics {
        let mut held = self.metrics.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((nodes, mb, m)) = held.as_ref() {
            if nodes.ptr_eq(&s.nodes) && *mb == available {
                return *m;
            }
        }
        let mut m = convert::cluster_metrics(s, &Default::default());
        m.available_memory_mb = available;
        *held = Some((s.nodes.clone(), available, m));
        m
    }
}
