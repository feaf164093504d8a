//! The invariants every placement must keep, checked by the state machine before it applies
//! one, and by the tests after every step:
//! - a placed model's ranges are contiguous, ordered, and cover each layer exactly once;
//! - a node that gains layers is healthy; a node keeps layers only while healthy or
//!   unhealthy (offline, draining and left nodes hold none after repair);
//! - a node that gains layers stays within its `max_layers` and its layer memory.

use std::collections::{BTreeMap, HashMap};

use super::{ClusterState, ModelSpec, NodeStatus, Range};

/// Layers and MiB each node holds across every model except `except`.
pub fn usage_by_node(state: &ClusterState, except: Option<&str>) -> HashMap<String, (i64, i64)> {
    let mut usage: HashMap<String, (i64, i64)> = HashMap::new();
    for model in state.models.values() {
        if Some(model.spec.id.as_str()) == except {
            continue;
        }
        let mb = model.spec.layer_mb();
        for r in model.ranges() {
            let u = usage.entry(r.node_id.clone()).or_default();
            u.0 += i64::from(r.len());
            u.1 += i64::from(r.len()) * mb;
        }
    }
    usage
}

/// Layers per node in `ranges`, by node id. Ordered: [`check_placement`] reports the first
/// node that breaks an invariant, and its sentence goes into the replicated state (a pending
/// reason, a skipped change), so every replica must meet the nodes in the same order.
pub fn layers_by_node(ranges: &[Range]) -> BTreeMap<&str, i64> {
    let mut by_node: BTreeMap<&str, i64> = BTreeMap::new();
    for r in ranges {
        *by_node.entry(r.node_id.as_str()).or_default() += i64::from(r.len());
    }
    by_node
}

/// Checks that `ranges` is a valid placement of `spec` given the rest of `state`, where
/// `previous` is what the model held before (empty for a new model).
///
/// # Errors
/// A sentence saying which invariant breaks.
pub fn check_placement(
    state: &ClusterState,
    spec: &ModelSpec,
    ranges: &[Range],
    previous: &[Range],
) -> Result<(), String> {
    let id = &spec.id;
    let mut next = 0;
    for r in ranges {
        if r.first != next || r.last < r.first {
            return Err(format!(
                "model {id}: ranges must cover layers 0..{} contiguously; {}:{}-{} does not follow layer {}",
                spec.layer_count - 1,
                r.node_id,
                r.first,
                r.last,
                next - 1
            ));
        }
        next = r.last + 1;
    }
    if next != spec.layer_count {
        return Err(format!(
            "model {id}: ranges cover {next} of {} layers",
            spec.layer_count
        ));
    }
    let before = layers_by_node(previous);
    let mb = spec.layer_mb();
    for (node_id, layers) in layers_by_node(ranges) {
        let node = state
            .nodes
            .get(node_id)
            .ok_or_else(|| format!("model {id}: node {node_id} is not registered"))?;
        let gains = layers > before.get(node_id).copied().unwrap_or(0);
        if gains && node.status != NodeStatus::Healthy {
            return Err(format!(
                "model {id}: node {node_id} is {} and cannot take layers",
                node.status.as_str()
            ));
        }
        if !node.status.may_hold_layers() {
            return Err(format!(
                "model {id}: node {node_id} is {} and cannot hold layers",
                node.status.as_str()
            ));
        }
        if gains {
            let (other_layers, other_mb) = state.usage_of(node_id, Some(id));
            if other_layers + layers > i64::from(node.resources.max_layers) {
                return Err(format!(
                    "model {id}: node {node_id} would hold {} layers, over its max_layers {}",
                    other_layers + layers,
                    node.resources.max_layers
                ));
            }
            let budget = node.resources.layer_memory_mb();
            if other_mb + layers * mb > budget {
                return Err(format!(
                    "model {id}: node {node_id} would need {} MiB for layers, over its {budget} MiB",
                    other_mb + layers * mb
                ));
            }
        }
    }
    Ok(())
}

/// Checks every invariant of the whole state at rest (for tests): placements are valid
/// coverings, no node is over capacity, `used_layers` is the sum of the ranges, and the
/// holdings index is what the models say.
///
/// # Errors
/// The first broken invariant.
pub fn check_state(state: &ClusterState) -> Result<(), String> {
    if state.holdings != super::holdings::rebuild(&state.models) {
        return Err(format!(
            "holdings {:?} but the models place layers as {:?}",
            state.holdings,
            super::holdings::rebuild(&state.models)
        ));
    }
    for model in state.models.values() {
        if let super::Placement::Placed(ranges) = &model.placement {
            check_placement(state, &model.spec, ranges, ranges)?;
        }
    }
    let usage = usage_by_node(state, None);
    for node in state.nodes.values() {
        let (layers, mb) = usage.get(&node.node_id).copied().unwrap_or_default();
        if i64::from(node.used_layers) != layers {
            return Err(format!(
                "node {}: used_layers {} but its ranges hold {layers}",
                node.node_id, node.used_layers
            ));
        }
        if node.status.may_hold_layers() {
            if layers > i64::from(node.resources.max_layers) {
                return Err(format!(
                    "node {}: {layers} layers over max_layers",
                    node.node_id
                ));
            }
            if mb > node.resources.layer_memory_mb() {
                return Err(format!(
                    "node {}: {mb} MiB of layers over its memory",
                    node.node_id
                ));
            }
        }
    }
    Ok(())
}
