//! What a replica shows on `--metrics-listen`: `/metrics` and `/readyz`.
//!
//! `/metrics`: Raft (term, leader, indexes, replication lag per follower), heartbeats
//! received, nodes by status, layers allocated and total, each model's placement state and
//! auth denials by reason, all read from the replica at scrape time and named
//! `distributed_llm_*`; and the gRPC server metrics (`grpc_server_*`,
//! `dllm_util::grpc_metrics`).
//!
//! `/readyz` ([`readiness`]): ready while the replica knows a leader it trusts (a leader
//! itself: one a quorum acknowledged within the leader lease) and has applied everything it
//! knows committed.

use std::sync::Arc;

use dllm_auth::layer::Denials;
use dllm_util::{
    grpc_metrics::GrpcMetrics,
    metrics::{write_counters, write_gauges, FnCollector, Sample},
};
use prometheus_client::{encoding::DescriptorEncoder, registry::Registry};

use crate::{
    replica::Replica,
    state::{NodeStatus, Placement},
};

/// The registry of a replica's `/metrics` and the gRPC server metrics in it, which the
/// server's layer counts into.
pub fn registry(replica: Arc<Replica>, denials: Denials) -> (Registry, Arc<GrpcMetrics>) {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(FnCollector(move |e: &mut DescriptorEncoder| {
        write(e, &replica, &denials)
    })));
    let grpc = GrpcMetrics::register(
        &mut registry,
        &[
            dllm_proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ],
    );
    (registry, grpc)
}

/// Whether the replica should get traffic, else why not: it knows a leader and does not
/// hold it lost (the election task's view: silent past the election timeout); when it is the
/// leader, a quorum acknowledged it within the leader lease (`--election-timeout-max-ms`),
/// so a leader cut off from its followers is not ready; and it has applied up to the commit
/// index it knows.
///
/// # Errors
/// The reason, one short line.
pub fn readiness(replica: &Replica) -> Result<(), String> {
    let status = replica.status();
    if status.leader_id == 0 {
        return Err("no leader known".into());
    }
    if *replica.leader_lost().borrow() {
        return Err(format!(
            "leader {} silent past the election timeout",
            status.leader_id
        ));
    }
    if status.leader_id == replica.id {
        let lease = replica.config().election_timeout.1;
        let acked = replica.raft.metrics().borrow().millis_since_quorum_ack;
        match acked {
            Some(ms) if u128::from(ms) <= lease.as_millis() => {}
            Some(ms) => {
                return Err(format!(
                    "leading, but no quorum acknowledged it for {ms} ms"
                ))
            }
            None => return Err("leading, but no quorum has acknowledged it yet".into()),
        }
    }
    let (applied, committed) = (
        status.applied_index.unwrap_or(0),
        status.commit_index.unwrap_or(0),
    );
    if applied < committed {
        return Err(format!(
            "applied index {applied} is behind the commit index {committed}"
        ));
    }
    Ok(())
}

/// The replica's own families, read at scrape time.
fn write(out: &mut DescriptorEncoder, replica: &Replica, denials: &Denials) -> std::fmt::Result {
    denials.write(out, "distributed_llm_auth_denials")?;
    let status = replica.status();
    let one = |v: u64| -> Vec<Sample> { vec![(vec![], v as f64)] };
    let raft: [(&str, &str, Option<u64>); 7] = [
        ("term", "Current Raft term", Some(status.term)),
        (
            "leader_id",
            "Raft id of the current leader, 0 when none",
            Some(status.leader_id),
        ),
        (
            "is_leader",
            "1 when this replica leads",
            Some(u64::from(status.leader_id == status.answered_by)),
        ),
        (
            "commit_index",
            "Highest log index known committed",
            status.commit_index,
        ),
        (
            "applied_index",
            "Highest log index applied",
            status.applied_index,
        ),
        (
            "last_log_index",
            "Highest log index in the log",
            status.last_log_index,
        ),
        (
            "snapshot_index",
            "Last log index in the latest snapshot",
            status.snapshot_index,
        ),
    ];
    for (name, help, value) in raft {
        let name = format!("distributed_llm_raft_{name}");
        write_gauges(out, &name, help, value.map(one).unwrap_or_default())?;
    }
    let lag: Vec<Sample> = {
        let metrics = replica.raft.metrics();
        let m = metrics.borrow();
        let last = m.last_log_index.unwrap_or(0);
        m.replication
            .as_ref()
            .map(|r| {
                r.iter()
                    .filter(|(id, _)| **id != replica.id)
                    .map(|(id, matched)| {
                        let lag = last.saturating_sub(matched.map(|l| l.index).unwrap_or(0));
                        (vec![("follower", id.to_string())], lag as f64)
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    write_gauges(
        out,
        "distributed_llm_raft_replication_lag_entries",
        "Log entries each follower is behind the leader (on the leader only)",
        lag,
    )?;
    write_counters(
        out,
        "distributed_llm_heartbeats_received",
        "Worker heartbeats handled by this replica as leader",
        one(replica.heartbeats_received()),
    )?;
    let (by_status, allocated, total, models) = replica.local_state().read(|s| {
        let by_status: Vec<Sample> = NodeStatus::ALL
            .iter()
            .map(|st| {
                let n = s.nodes.values().filter(|n| n.status == *st).count();
                (vec![("status", st.as_str().to_string())], n as f64)
            })
            .collect();
        let members = || s.members_unordered();
        let allocated: i64 = members().map(|n| i64::from(n.used_layers)).sum();
        let total: i64 = members().map(|n| i64::from(n.resources.max_layers)).sum();
        let models: Vec<Sample> = s
            .models
            .values()
            .map(|m| {
                let placed = matches!(m.placement, Placement::Placed(_));
                (
                    vec![("model", m.spec.id.clone())],
                    f64::from(u8::from(placed)),
                )
            })
            .collect();
        (by_status, allocated, total, models)
    });
    write_gauges(
        out,
        "distributed_llm_nodes",
        "Nodes by status, as this replica has applied",
        by_status,
    )?;
    write_gauges(
        out,
        "distributed_llm_layers_allocated",
        "Layers placed on member nodes",
        [(vec![], allocated as f64)],
    )?;
    write_gauges(
        out,
        "distributed_llm_layers_capacity",
        "Sum of max_layers over member nodes",
        [(vec![], total as f64)],
    )?;
    write_gauges(
        out,
        "distributed_llm_model_placed",
        "1 when the model is placed, 0 while pending",
        models,
    )
}
