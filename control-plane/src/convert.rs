//! Wire types become validated domain types here, and domain types become wire types.
//! Every validation failure names the proto field it is about.

use dllm_proto::pb;

use crate::{
    error::ApiError,
    state::{ClusterState, Gpu, Model, Node, NodeSpec, NodeStatus, Placement, Resources},
};

/// Longest node id accepted.
pub const MAX_NODE_ID_LEN: usize = 128;
/// Longest host name accepted (DNS limit).
pub const MAX_ADDRESS_LEN: usize = 253;
/// Most GPUs one node may report.
pub const MAX_GPUS: usize = 64;
/// Longest GPU name or UUID accepted.
pub const MAX_GPU_TEXT_LEN: usize = 256;
/// Most seed nodes one registration may list.
pub const MAX_SEED_NODES: usize = 64;
/// Longest free-text field (reasons, requester ids) accepted.
pub const MAX_TEXT_LEN: usize = 256;

/// Checks a node id: 1 to 128 characters of `[A-Za-z0-9._-]`.
///
/// # Errors
/// `INVALID_ARGUMENT` naming `field`.
pub fn node_id(field: &str, id: &str) -> Result<String, ApiError> {
    if id.is_empty() {
        return Err(ApiError::invalid(field, "must not be empty"));
    }
    if id.len() > MAX_NODE_ID_LEN {
        return Err(ApiError::invalid(
            field,
            format!("is {} bytes long; the limit is {MAX_NODE_ID_LEN}", id.len()),
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(ApiError::invalid(
            field,
            format!("contains {c:?}; only letters, digits, '.', '_' and '-' are allowed"),
        ));
    }
    Ok(id.to_string())
}

/// Checks a free-text field's length.
///
/// # Errors
/// `INVALID_ARGUMENT` naming `field`.
pub fn text(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
    if value.len() > max {
        return Err(ApiError::invalid(
            field,
            format!("is {} bytes long; the limit is {max}", value.len()),
        ));
    }
    Ok(())
}

fn address(field: &str, value: &str) -> Result<String, ApiError> {
    if value.is_empty() {
        return Err(ApiError::invalid(field, "must not be empty"));
    }
    text(field, value, MAX_ADDRESS_LEN)?;
    if let Some(c) = value.chars().find(|c| {
        !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']' | '_' | '%'))
    }) {
        return Err(ApiError::invalid(
            field,
            format!("contains {c:?}; expected a host name or an IP address"),
        ));
    }
    Ok(value.to_string())
}

fn non_negative(field: &str, value: i64) -> Result<(), ApiError> {
    if value < 0 {
        return Err(ApiError::invalid(
            field,
            format!("must be >= 0, got {value}"),
        ));
    }
    Ok(())
}

impl TryFrom<pb::ResourceInfo> for Resources {
    type Error = ApiError;

    /// `used_layers` is decided by placement, never by the node, so it is not taken from here.
    fn try_from(r: pb::ResourceInfo) -> Result<Self, ApiError> {
        non_negative("resources.cpu_cores", r.cpu_cores)?;
        non_negative("resources.memory_mb", r.memory_mb)?;
        non_negative("resources.max_layers", r.max_layers.into())?;
        if r.gpus.len() > MAX_GPUS {
            return Err(ApiError::invalid(
                "resources.gpus",
                format!("lists {} GPUs; the limit is {MAX_GPUS}", r.gpus.len()),
            ));
        }
        let gpus = r
            .gpus
            .into_iter()
            .enumerate()
            .map(|(i, g)| {
                text(
                    &format!("resources.gpus[{i}].name"),
                    &g.name,
                    MAX_GPU_TEXT_LEN,
                )?;
                text(
                    &format!("resources.gpus[{i}].uuid"),
                    &g.uuid,
                    MAX_GPU_TEXT_LEN,
                )?;
                non_negative(&format!("resources.gpus[{i}].memory_mb"), g.memory_mb)?;
                Ok(Gpu {
                    name: g.name,
                    memory_mb: g.memory_mb,
                    uuid: g.uuid,
                })
            })
            .collect::<Result<_, ApiError>>()?;
        Ok(Resources {
            cpu_cores: r.cpu_cores,
            memory_mb: r.memory_mb,
            gpus,
            max_layers: r.max_layers,
        })
    }
}

impl TryFrom<pb::ClusterJoinRequest> for NodeSpec {
    type Error = ApiError;

    fn try_from(req: pb::ClusterJoinRequest) -> Result<Self, ApiError> {
        let node_id = node_id("node_id", &req.node_id)?;
        let address = address("address", &req.address)?;
        let port = u16::try_from(req.port)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| {
                ApiError::invalid("port", format!("must be 1 to 65535, got {}", req.port))
            })?;
        if req.seed_nodes.len() > MAX_SEED_NODES {
            return Err(ApiError::invalid(
                "seed_nodes",
                format!(
                    "lists {}; the limit is {MAX_SEED_NODES}",
                    req.seed_nodes.len()
                ),
            ));
        }
        for (i, seed) in req.seed_nodes.iter().enumerate() {
            text(&format!("seed_nodes[{i}]"), seed, MAX_ADDRESS_LEN + 6)?;
        }
        let resources = req
            .resources
            .ok_or_else(|| ApiError::invalid("resources", "is required"))?
            .try_into()?;
        Ok(NodeSpec {
            node_id,
            address,
            port,
            resources,
        })
    }
}

/// A validated [`pb::ResourceFilter`]; the default passes every node.
#[derive(Clone, Debug, Default)]
pub struct ResourceFilter {
    min_memory_mb: i64,
    min_gpus: i32,
    min_free_layers: i32,
}

impl ResourceFilter {
    /// Validates a wire filter found at `field`.
    ///
    /// # Errors
    /// `INVALID_ARGUMENT` for a negative bound.
    pub fn parse(field: &str, f: Option<pb::ResourceFilter>) -> Result<Self, ApiError> {
        let Some(f) = f else {
            return Ok(Self::default());
        };
        non_negative(&format!("{field}.min_memory_mb"), f.min_memory_mb)?;
        non_negative(&format!("{field}.min_gpus"), f.min_gpus.into())?;
        non_negative(
            &format!("{field}.min_free_layers"),
            f.min_free_layers.into(),
        )?;
        Ok(Self {
            min_memory_mb: f.min_memory_mb,
            min_gpus: f.min_gpus,
            min_free_layers: f.min_free_layers,
        })
    }

    /// Whether `node` passes.
    pub fn matches(&self, node: &Node) -> bool {
        node.resources.memory_mb >= self.min_memory_mb
            && node.resources.gpus.len() as i64 >= i64::from(self.min_gpus)
            && node.resources.max_layers - node.used_layers >= self.min_free_layers
    }
}

/// A validated [`pb::NodeFilter`].
#[derive(Clone, Debug, Default)]
pub struct NodeFilter {
    statuses: Vec<NodeStatus>,
    resources: ResourceFilter,
}

impl NodeFilter {
    /// Validates a wire filter.
    ///
    /// # Errors
    /// `INVALID_ARGUMENT` for an unknown status or a negative bound.
    pub fn parse(f: Option<pb::NodeFilter>) -> Result<Self, ApiError> {
        let Some(f) = f else {
            return Ok(Self::default());
        };
        let statuses = f
            .statuses
            .iter()
            .enumerate()
            .map(|(i, s)| {
                NodeStatus::parse(s).ok_or_else(|| {
                    let valid: Vec<_> = NodeStatus::ALL.iter().map(|s| s.as_str()).collect();
                    ApiError::invalid(
                        format!("filter.statuses[{i}]"),
                        format!("{s:?} is not one of {}", valid.join(", ")),
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            statuses,
            resources: ResourceFilter::parse("filter.resources", f.resources)?,
        })
    }

    /// Whether `node` passes.
    pub fn matches(&self, node: &Node) -> bool {
        (self.statuses.is_empty() || self.statuses.contains(&node.status))
            && self.resources.matches(node)
    }
}

/// The wire form of a node.
pub fn node_info(node: &Node) -> pb::NodeInfo {
    pb::NodeInfo {
        node_id: node.node_id.clone(),
        address: node.address.clone(),
        port: node.port.into(),
        resources: Some(pb::ResourceInfo {
            cpu_cores: node.resources.cpu_cores,
            memory_mb: node.resources.memory_mb,
            gpus: node
                .resources
                .gpus
                .iter()
                .map(|g| pb::GpuInfo {
                    name: g.name.clone(),
                    memory_mb: g.memory_mb,
                    uuid: g.uuid.clone(),
                })
                .collect(),
            max_layers: node.resources.max_layers,
            used_layers: node.used_layers,
        }),
        status: node.status.as_str().to_string(),
        last_seen: node.last_seen_ms,
    }
}

/// A model's ranges as `node:first-last`, in layer order: the pipeline a forward pass
/// follows, one hop per change of node.
pub fn pipeline(ranges: &[crate::state::Range]) -> Vec<String> {
    let mut ranges: Vec<&crate::state::Range> = ranges.iter().collect();
    ranges.sort_by_key(|r| r.first);
    ranges
        .into_iter()
        .map(|r| format!("{}:{}-{}", r.node_id, r.first, r.last))
        .collect()
}

/// The wire form of a model.
pub fn model_info(model: &Model) -> pb::ModelInfo {
    let spec = &model.spec;
    let (placement_status, pending_reason) = match &model.placement {
        Placement::Placed(_) => ("placed", String::new()),
        Placement::Pending(reason) => ("pending", reason.clone()),
    };
    pb::ModelInfo {
        id: spec.id.clone(),
        name: spec.name.clone(),
        version: spec.version.clone(),
        layer_count: spec.layer_count,
        file_path: spec.file_path.clone(),
        size_bytes: spec.size_bytes,
        node_assignments: pipeline(model.ranges()),
        placement_status: placement_status.to_string(),
        pending_reason,
    }
}

/// Aggregates over the member nodes. `free_memory_mb` is the leader's latest usage sample per
/// node: a healthy node counts its free memory as available when it has reported one, its
/// whole memory otherwise.
pub fn cluster_metrics(
    state: &ClusterState,
    free_memory_mb: &std::collections::BTreeMap<String, i64>,
) -> pb::ClusterMetrics {
    let mut m = pb::ClusterMetrics::default();
    for node in state.members_unordered() {
        m.total_nodes += 1;
        m.total_memory_mb += node.resources.memory_mb;
        m.total_gpus += node.resources.gpus.len() as i32;
        m.total_layers += node.resources.max_layers;
        m.allocated_layers += node.used_layers;
        if node.status == NodeStatus::Healthy {
            m.healthy_nodes += 1;
        }
    }
    m.available_memory_mb = available_memory_mb(state.members_unordered(), |id| {
        free_memory_mb.get(id).copied()
    });
    if m.total_layers > 0 {
        m.cluster_utilization = m.allocated_layers as f32 / m.total_layers as f32;
    }
    m
}

/// The free host memory of the healthy ones of `nodes` summed: `free` of each, or all of its
/// memory where `free` has no sample.
pub fn available_memory_mb<'a>(
    nodes: impl Iterator<Item = &'a Node>,
    free: impl Fn(&str) -> Option<i64>,
) -> i64 {
    nodes
        .filter(|n| n.status == NodeStatus::Healthy)
        .map(|n| free(&n.node_id).unwrap_or(n.resources.memory_mb))
        .sum()
}

/// Validates a heartbeat.
///
/// # Errors
/// `INVALID_ARGUMENT` naming the bad field.
pub fn heartbeat(req: &pb::HeartbeatRequest) -> Result<(), ApiError> {
    node_id("node_id", &req.node_id)?;
    if let Some(u) = &req.usage {
        if u.gpus.len() > MAX_GPUS {
            return Err(ApiError::invalid(
                "usage.gpus",
                format!("lists {} GPUs; the limit is {MAX_GPUS}", u.gpus.len()),
            ));
        }
        for (i, g) in u.gpus.iter().enumerate() {
            text(&format!("usage.gpus[{i}].uuid"), &g.uuid, MAX_GPU_TEXT_LEN)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join() -> pb::ClusterJoinRequest {
        pb::ClusterJoinRequest {
            node_id: "agent-1".into(),
            address: "10.1.2.3".into(),
            port: 9000,
            resources: Some(pb::ResourceInfo {
                cpu_cores: 8,
                memory_mb: 1024,
                gpus: vec![],
                max_layers: 10,
                used_layers: 0,
            }),
            seed_nodes: vec![],
            skip_existing_nodes: false,
        }
    }

    fn field_of(result: Result<NodeSpec, ApiError>) -> String {
        match result {
            Err(ApiError::InvalidArgument { field, .. }) => field,
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        }
    }

    #[test]
    fn valid_join_converts() {
        let spec = NodeSpec::try_from(join()).expect("valid");
        assert_eq!(spec.node_id, "agent-1");
        assert_eq!(spec.port, 9000);
    }

    #[test]
    fn bad_fields_are_named() {
        type Mutation = Box<dyn Fn(&mut pb::ClusterJoinRequest)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|r| r.node_id.clear()), "node_id"),
            (Box::new(|r| r.node_id = "x".repeat(129)), "node_id"),
            (Box::new(|r| r.node_id = "a b".into()), "node_id"),
            (Box::new(|r| r.address.clear()), "address"),
            (Box::new(|r| r.address = "a".repeat(300)), "address"),
            (Box::new(|r| r.address = "evil host".into()), "address"),
            (Box::new(|r| r.port = 0), "port"),
            (Box::new(|r| r.port = 70000), "port"),
            (Box::new(|r| r.resources = None), "resources"),
            (
                Box::new(|r| r.resources.as_mut().unwrap().memory_mb = -1),
                "resources.memory_mb",
            ),
            (
                Box::new(|r| r.resources.as_mut().unwrap().gpus = vec![pb::GpuInfo::default(); 65]),
                "resources.gpus",
            ),
            (
                Box::new(|r| {
                    r.resources.as_mut().unwrap().gpus = vec![pb::GpuInfo {
                        name: "n".repeat(300),
                        ..Default::default()
                    }]
                }),
                "resources.gpus[0].name",
            ),
        ];
        for (mutate, field) in cases {
            let mut req = join();
            mutate(&mut req);
            assert_eq!(field_of(NodeSpec::try_from(req)), field);
        }
    }

    #[test]
    fn unknown_status_filter_is_rejected() {
        let err = NodeFilter::parse(Some(pb::NodeFilter {
            statuses: vec!["healthy".into(), "sleepy".into()],
            resources: None,
        }))
        .expect_err("sleepy is not a status");
        assert!(err.to_string().starts_with("filter.statuses[1]"), "{err}");
    }
}
