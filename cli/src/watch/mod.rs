//! `dllm watch`: what changes in the cluster, as it changes. It follows `StreamUpdates` on
//! one endpoint (whole lists, then deltas), reports only the differences ([`changes`]), one
//! line each with the local time (or, with `--output json`, one JSON object each), and when
//! the stream breaks it says so on stderr and tries the endpoints in turn, as the TUI does.
//! When none gives a stream for `--give-up-after` seconds it exits 1 saying what each
//! endpoint said; an endpoint that refuses the request itself (a bad `--types`, no
//! permission) ends it at once.

mod changes;

use std::{process::ExitCode, time::Duration};

use changes::{Change, Seen};
use dllm_proto::pb;
use futures::StreamExt;
use serde_json::json;
use tokio::time::Instant;

use crate::{
    client::Cluster,
    commands::{local_time, model_json, node_json, Output},
    layers,
};

/// `dllm watch` flags.
#[derive(clap::Args, Debug)]
pub struct WatchArgs {
    /// Seconds between updates; metrics come at this interval, a change the cluster applies
    /// is sent at once anyway.
    #[arg(long, default_value_t = 2)]
    interval: i32,
    /// Update types: nodes, models, metrics [default: all].
    #[arg(long, value_delimiter = ',')]
    types: Vec<String>,
    /// Exit 1 after this many seconds without a stream from any endpoint.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    give_up_after: u64,
}

/// Why a stream stopped.
enum Stop {
    /// Worth trying again (the next endpoint, or later).
    Retry(String),
    /// The request itself was refused: trying again cannot help.
    Refused(String),
}

/// Runs `dllm watch` until interrupted, or until no endpoint answers for `--give-up-after`.
///
/// # Errors
/// Never at present; the exit code says how it ended.
pub async fn run(cluster: &Cluster, args: WatchArgs, output: Output) -> anyhow::Result<ExitCode> {
    let give_up = Duration::from_secs(args.give_up_after);
    // Snapshots come every interval; three missed ones mean the replica is stuck.
    let silence = Duration::from_secs(3 * args.interval.max(1) as u64 + 5);
    let mut seen = Seen::default();
    let mut tried: Vec<(String, String)> = Vec::new();
    let mut down_since = Instant::now();
    let mut next = 0usize;
    let mut was_live = false;
    loop {
        let endpoint = cluster.endpoints[next % cluster.endpoints.len()].clone();
        let stop = follow(cluster, &endpoint, &args, silence, |update| {
            if !std::mem::replace(&mut was_live, true) || !tried.is_empty() {
                eprintln!(
                    "{} dllm watch: streaming from {endpoint}",
                    local_time(update.timestamp)
                );
                tried.clear();
            }
            let timestamp = update.timestamp;
            for change in seen.update(update).map_err(|e| e.to_string())? {
                println!("{}", render(&change, timestamp, output));
            }
            Ok(())
        })
        .await;
        let why = match stop {
            (Stop::Refused(why), _) => {
                eprintln!("dllm watch: {endpoint}: {why}");
                return Ok(ExitCode::FAILURE);
            }
            (Stop::Retry(why), streamed) => {
                if streamed {
                    down_since = Instant::now();
                    eprintln!(
                        "{} dllm watch: lost {endpoint} ({why}); reconnecting",
                        local_time(dllm_util::clock::now_ms())
                    );
                }
                why
            }
        };
        tried.retain(|(e, _)| *e != endpoint);
        tried.push((endpoint, why));
        next += 1;
        if down_since.elapsed() >= give_up {
            eprintln!(
                "dllm watch: no endpoint gave updates for {} s, giving up:\n{}",
                give_up.as_secs(),
                tried
                    .iter()
                    .map(|(e, why)| format!("  {e}: {why}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            return Ok(ExitCode::FAILURE);
        }
        if next.is_multiple_of(cluster.endpoints.len()) {
            // A full round failed: pause before the next, so a dead cluster is not hammered.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Follows the stream on `endpoint`, handing each update to `each`, until it stops; says why
/// and whether any update came.
async fn follow(
    cluster: &Cluster,
    endpoint: &str,
    args: &WatchArgs,
    silence: Duration,
    mut each: impl FnMut(pb::ClusterUpdate) -> Result<(), String>,
) -> (Stop, bool) {
    let mut clients = match cluster.connect(endpoint).await {
        Ok(c) => c,
        Err(why) => return (Stop::Retry(why), false),
    };
    let request = pb::UpdateStreamRequest {
        requester_id: "dllm-watch".into(),
        interval_seconds: args.interval,
        update_types: args.types.clone(),
        deltas: true,
    };
    let mut stream = match clients.tui.stream_updates(request).await {
        Ok(s) => s.into_inner(),
        Err(s) => {
            use tonic::Code::*;
            let why = format!("{:?}: {}", s.code(), s.message());
            return match s.code() {
                InvalidArgument | PermissionDenied | Unauthenticated | Unimplemented => {
                    (Stop::Refused(why), false)
                }
                _ => (Stop::Retry(why), false),
            };
        }
    };
    let mut streamed = false;
    loop {
        match tokio::time::timeout(silence, stream.next()).await {
            Ok(Some(Ok(update))) => {
                streamed = true;
                if let Err(why) = each(update) {
                    return (Stop::Retry(why), streamed);
                }
            }
            Ok(Some(Err(s))) => return (Stop::Retry(s.message().to_string()), streamed),
            Ok(None) => return (Stop::Retry("stream ended".into()), streamed),
            Err(_) => {
                let why = format!("no update for {} s", silence.as_secs());
                return (Stop::Retry(why), streamed);
            }
        }
    }
}

/// "unplaced" for layers on no node.
fn holder(node: &Option<String>) -> &str {
    node.as_deref().unwrap_or("unplaced")
}

/// "0-45 worker-1, 46-79 worker-2", or why a model is pending.
fn placement(m: &pb::ModelInfo) -> String {
    if m.placement_status == "pending" {
        return format!("pending: {}", m.pending_reason);
    }
    let ranges = layers::ranges(&m.node_assignments);
    let by: Vec<String> = ranges
        .iter()
        .map(|r| format!("{} {}", layers::span(r.first, r.last), r.node))
        .collect();
    format!("{}, layers {}", m.placement_status, by.join(", "))
}

/// One change as a line: `14:03:07 demo-70b: layers 0-20 worker-1 -> worker-3`, or as one
/// JSON object with the same facts and `event` naming the kind.
pub fn render(change: &Change, timestamp_ms: i64, output: Output) -> String {
    let time = local_time(timestamp_ms);
    if output == Output::Json {
        let mut v = match change {
            Change::Nodes(nodes) => {
                json!({"event": "nodes", "nodes": nodes.iter().map(node_json).collect::<Vec<_>>()})
            }
            Change::Models(models) => {
                json!({"event": "models", "models": models.iter().map(model_json).collect::<Vec<_>>()})
            }
            Change::NodeJoined { node, status } => {
                json!({"event": "node_joined", "node": node, "status": status})
            }
            Change::NodeGone { node } => json!({"event": "node_gone", "node": node}),
            Change::NodeStatus { node, from, to } => {
                json!({"event": "node_status", "node": node, "from": from, "to": to})
            }
            Change::ModelAdded(m) => json!({"event": "model_added", "model": model_json(m)}),
            Change::ModelRemoved { model } => json!({"event": "model_removed", "model": model}),
            Change::ModelStatus {
                model,
                from,
                to,
                reason,
            } => json!({"event": "model_status", "model": model, "from": from, "to": to,
                        "pending_reason": reason}),
            Change::LayersMoved {
                model,
                first,
                last,
                from,
                to,
            } => json!({"event": "layers_moved", "model": model, "first": first, "last": last,
                        "from": from, "to": to}),
            Change::Metrics(h) => json!({"event": "metrics",
                "healthy_nodes": h.healthy_nodes, "total_nodes": h.total_nodes,
                "allocated_layers": h.allocated_layers, "total_layers": h.total_layers,
                "total_gpus": h.total_gpus}),
        };
        v["time"] = json!(time);
        v["timestamp_ms"] = json!(timestamp_ms);
        return v.to_string();
    }
    let text = match change {
        Change::Nodes(nodes) if nodes.is_empty() => "nodes: none".to_string(),
        Change::Nodes(nodes) => {
            let by: Vec<String> = nodes
                .iter()
                .map(|n| format!("{} {}", n.node_id, n.status))
                .collect();
            format!("nodes: {}", by.join(", "))
        }
        Change::Models(models) if models.is_empty() => "models: none".to_string(),
        Change::Models(models) => {
            let by: Vec<String> = models
                .iter()
                .map(|m| format!("{} {}", m.id, placement(m)))
                .collect();
            format!("models: {}", by.join("; "))
        }
        Change::NodeJoined { node, status } => format!("node {node} joined ({status})"),
        Change::NodeGone { node } => format!("node {node} is no longer listed"),
        Change::NodeStatus { node, from, to } => format!("node {node}: {from} -> {to}"),
        Change::ModelAdded(m) => format!("model {} added ({})", m.id, placement(m)),
        Change::ModelRemoved { model } => format!("model {model} removed"),
        Change::ModelStatus {
            model,
            from,
            to,
            reason,
        } if to == "pending" => format!("model {model}: {from} -> {to} ({reason})"),
        Change::ModelStatus {
            model, from, to, ..
        } => format!("model {model}: {from} -> {to}"),
        Change::LayersMoved {
            model,
            first,
            last,
            from,
            to,
        } => format!(
            "{model}: layers {} {} -> {}",
            layers::span(*first, *last),
            holder(from),
            holder(to)
        ),
        Change::Metrics(h) => format!(
            "metrics: {}/{} nodes healthy, {}/{} layers allocated, {} gpus",
            h.healthy_nodes, h.total_nodes, h.allocated_layers, h.total_layers, h.total_gpus
        ),
    };
    format!("{time} {text}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A layer move reads as the issue asks; JSON carries the same facts and the kind.
    #[test]
    fn changes_render_as_lines_and_json() {
        let moved = Change::LayersMoved {
            model: "demo-70b".into(),
            first: 0,
            last: 20,
            from: Some("worker-1".into()),
            to: Some("worker-3".into()),
        };
        let line = render(&moved, 0, Output::Table);
        let (time, text) = line.split_once(' ').expect("time, then text");
        assert_eq!(time.len(), 8, "HH:MM:SS: {line}");
        assert_eq!(text, "demo-70b: layers 0-20 worker-1 -> worker-3");
        let v: serde_json::Value =
            serde_json::from_str(&render(&moved, 5, Output::Json)).expect("json");
        assert_eq!(v["event"], "layers_moved");
        assert_eq!(v["from"], "worker-1");
        assert_eq!(v["last"], 20);
        assert_eq!(v["timestamp_ms"], 5);
        let unplaced = Change::LayersMoved {
            model: "m".into(),
            first: 3,
            last: 3,
            from: Some("w".into()),
            to: None,
        };
        assert!(render(&unplaced, 0, Output::Table).ends_with("m: layers 3 w -> unplaced"));
    }
}
