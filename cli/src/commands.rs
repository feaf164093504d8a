//! The operator commands: `status`, `nodes`, `models`, `exec` (and what `watch` and the TUI
//! share with them: JSON forms, the GPU summary, local times); aligned tables for people,
//! `--output json` for scripts.

use dllm_proto::pb;
use serde_json::{json, Value};

use crate::client::{CallError, Cluster};

/// How results are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns.
    Table,
    /// One JSON document.
    Json,
}

/// The local time of day of a Unix-ms time, `14:03:07` (the `TZ` variable, else
/// `/etc/localtime`).
pub fn local_time(ms: i64) -> String {
    use chrono::TimeZone;
    match chrono::Local.timestamp_millis_opt(ms) {
        chrono::LocalResult::Single(t) | chrono::LocalResult::Ambiguous(t, _) => {
            t.format("%H:%M:%S").to_string()
        }
        chrono::LocalResult::None => "--:--:--".to_string(),
    }
}

/// Formats rows as aligned columns (first row is the header).
pub fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    rows.iter()
        .map(|row| {
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect();
            cells.join("  ").trim_end().to_string() + "\n"
        })
        .collect()
}

/// "healthy" and friends, as JSON.
pub fn node_json(n: &pb::NodeInfo) -> Value {
    let r = n.resources.clone().unwrap_or_default();
    json!({
        "node_id": n.node_id, "address": n.address, "port": n.port, "status": n.status,
        "last_seen": n.last_seen, "cpu_cores": r.cpu_cores, "memory_mb": r.memory_mb,
        "max_layers": r.max_layers, "used_layers": r.used_layers,
        "gpus": r.gpus.iter().map(|g| json!({"name": g.name, "memory_mb": g.memory_mb, "uuid": g.uuid})).collect::<Vec<_>>(),
    })
}

/// A model, as JSON.
pub fn model_json(m: &pb::ModelInfo) -> Value {
    json!({
        "id": m.id, "name": m.name, "version": m.version, "layer_count": m.layer_count,
        "file_path": m.file_path, "size_bytes": m.size_bytes,
        "node_assignments": m.node_assignments, "placement_status": m.placement_status,
        "pending_reason": m.pending_reason,
    })
}

/// Cluster metrics, as JSON.
pub fn metrics_json(m: &pb::ClusterMetrics) -> Value {
    json!({
        "total_nodes": m.total_nodes, "healthy_nodes": m.healthy_nodes,
        "total_memory_mb": m.total_memory_mb, "available_memory_mb": m.available_memory_mb,
        "total_gpus": m.total_gpus, "total_layers": m.total_layers,
        "allocated_layers": m.allocated_layers, "cluster_utilization": m.cluster_utilization,
    })
}

/// A node's GPUs as placement sees them: `2x NVIDIA H100 80G` (count, model, memory each),
/// kinds joined by `+`; `none` without GPUs.
pub fn gpu_summary(r: &pb::ResourceInfo) -> String {
    let mut kinds: Vec<(&str, i64, usize)> = Vec::new();
    for g in &r.gpus {
        match kinds
            .iter_mut()
            .find(|(name, mb, _)| *name == g.name && *mb == g.memory_mb)
        {
            Some(kind) => kind.2 += 1,
            None => kinds.push((&g.name, g.memory_mb, 1)),
        }
    }
    if kinds.is_empty() {
        return "none".to_string();
    }
    kinds
        .iter()
        .map(|(name, mb, n)| {
            let name = if name.is_empty() { "GPU" } else { name };
            format!("{n}x {name} {}G", (mb + 512) / 1024)
        })
        .collect::<Vec<_>>()
        .join(" + ")
}

/// Node rows for a table.
pub fn node_rows(nodes: &[pb::NodeInfo]) -> Vec<Vec<String>> {
    let mut rows = vec![["NODE", "STATUS", "ADDRESS", "GPUS", "RAM_MB", "LAYERS"]
        .map(String::from)
        .to_vec()];
    for n in nodes {
        let r = n.resources.clone().unwrap_or_default();
        rows.push(vec![
            n.node_id.clone(),
            n.status.clone(),
            format!("{}:{}", n.address, n.port),
            gpu_summary(&r),
            r.memory_mb.to_string(),
            format!("{}/{}", r.used_layers, r.max_layers),
        ]);
    }
    rows
}

/// Model rows for a table.
pub fn model_rows(models: &[pb::ModelInfo]) -> Vec<Vec<String>> {
    let mut rows = vec![["MODEL", "LAYERS", "SIZE_MB", "STATUS", "PLACEMENT"]
        .map(String::from)
        .to_vec()];
    for m in models {
        let placement = if m.placement_status == "pending" {
            m.pending_reason.clone()
        } else {
            m.node_assignments.join(" ")
        };
        rows.push(vec![
            m.id.clone(),
            m.layer_count.to_string(),
            (m.size_bytes >> 20).to_string(),
            m.placement_status.clone(),
            placement,
        ]);
    }
    rows
}

/// `dllm status`: leader, replicas, node and model counts, utilization.
///
/// # Errors
/// When no endpoint answers.
pub async fn status(cluster: &Cluster, output: Output) -> Result<String, CallError> {
    let (replicas, info) = cluster
        .first_answer(|mut c| async move {
            let replicas = c
                .admin
                .get_replica_status(pb::ReplicaStatusRequest {})
                .await?
                .into_inner();
            let info = c
                .discovery
                .get_cluster_info(pb::ClusterInfoRequest {
                    requester_id: "dllm-cli".into(),
                })
                .await?
                .into_inner();
            Ok((replicas, info))
        })
        .await?;
    let m = info.metrics.unwrap_or_default();
    let placed = info
        .models
        .iter()
        .filter(|m| m.placement_status == "placed")
        .count();
    if output == Output::Json {
        return Ok(json!({
            "cluster_id": info.cluster_id,
            "leader": {"id": replicas.leader_id, "address": replicas.leader_address},
            "term": replicas.term,
            "replicas": replicas.replicas.iter().map(|r| json!({"id": r.id, "address": r.address, "role": r.role})).collect::<Vec<_>>(),
            "nodes": info.nodes.len(),
            "models": {"placed": placed, "pending": info.models.len() - placed},
            "metrics": metrics_json(&m),
        })
        .to_string()
            + "\n");
    }
    let mut out = format!(
        "cluster   {}\nleader    replica {} ({}), term {}\nnodes     {} healthy of {} members\nmodels    {placed} placed, {} pending\nlayers    {}/{} allocated ({:.1}%)\nmemory    {} MiB available of {} MiB\ngpus      {}\n\n",
        info.cluster_id,
        replicas.leader_id,
        replicas.leader_address,
        replicas.term,
        m.healthy_nodes,
        m.total_nodes,
        info.models.len() - placed,
        m.allocated_layers,
        m.total_layers,
        m.cluster_utilization * 100.0,
        m.available_memory_mb,
        m.total_memory_mb,
        m.total_gpus,
    );
    let mut rows = vec![["REPLICA", "ADDRESS", "ROLE"].map(String::from).to_vec()];
    rows.extend(
        replicas
            .replicas
            .iter()
            .map(|r| vec![r.id.to_string(), r.address.clone(), r.role.clone()]),
    );
    out.push_str(&table(&rows));
    Ok(out)
}

/// `dllm nodes`.
///
/// # Errors
/// When no endpoint answers.
pub async fn nodes(cluster: &Cluster, output: Output) -> Result<String, CallError> {
    let list = cluster
        .first_answer(|mut c| async move {
            Ok(c.tui
                .get_node_list(pb::NodeListRequest {
                    requester_id: "dllm-cli".into(),
                    include_metrics: false,
                    filter: None,
                    ..Default::default()
                })
                .await?
                .into_inner()
                .nodes)
        })
        .await?;
    Ok(match output {
        Output::Json => Value::Array(list.iter().map(node_json).collect()).to_string() + "\n",
        Output::Table => table(&node_rows(&list)),
    })
}

/// `dllm models`.
///
/// # Errors
/// When no endpoint answers.
pub async fn models(cluster: &Cluster, output: Output) -> Result<String, CallError> {
    let list = cluster
        .first_answer(|mut c| async move {
            Ok(c.tui
                .get_model_list(pb::ModelListRequest {
                    requester_id: "dllm-cli".into(),
                })
                .await?
                .into_inner()
                .models)
        })
        .await?;
    Ok(match output {
        Output::Json => Value::Array(list.iter().map(model_json).collect()).to_string() + "\n",
        Output::Table => table(&model_rows(&list)),
    })
}

/// `dllm exec <command> [args]`: the answer and the exit code to pass through.
///
/// # Errors
/// When no endpoint answers.
pub async fn exec(
    cluster: &Cluster,
    command: &str,
    args: &[String],
) -> Result<pb::CommandResponse, CallError> {
    cluster
        .first_answer(|mut c| {
            let request = pb::CommandRequest {
                requester_id: "dllm-cli".into(),
                command: command.to_string(),
                args: args.to_vec(),
                options: Default::default(),
            };
            async move { Ok(c.tui.execute_command(request).await?.into_inner()) }
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align() {
        let t = table(&[
            vec!["A".into(), "LONG HEADER".into()],
            vec!["wide cell".into(), "x".into()],
        ]);
        assert_eq!(t, "A          LONG HEADER\nwide cell  x\n");
    }

    /// GPUs are summed up by kind, with the memory of each, which is what placement uses.
    #[test]
    fn gpus_are_summarised_by_kind() {
        let gpu = |name: &str, memory_mb| pb::GpuInfo {
            name: name.into(),
            memory_mb,
            ..Default::default()
        };
        let r = pb::ResourceInfo {
            gpus: vec![
                gpu("NVIDIA H100", 81920),
                gpu("NVIDIA H100", 81920),
                gpu("NVIDIA L4", 24576),
            ],
            ..Default::default()
        };
        assert_eq!(gpu_summary(&r), "2x NVIDIA H100 80G + 1x NVIDIA L4 24G");
        assert_eq!(gpu_summary(&pb::ResourceInfo::default()), "none");
    }
}
