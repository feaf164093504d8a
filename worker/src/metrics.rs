//! What a worker shows on `--metrics-listen`: `/metrics` and `/readyz`.
//!
//! `/metrics`: a fresh usage sample (`distributed_llm_worker_<metric>` for every name of
//! `dllm_proto::metrics::METRICS`, in bytes for the `_mb` ones, e.g.
//! `distributed_llm_worker_gpu_memory_used_bytes`; per GPU with labels `gpu` and `uuid`), the status the
//! cluster last reported, auth denials by reason, and the gRPC server metrics (`grpc_server_*`).
//!
//! `/readyz` ([`readiness`]): ready while the worker is registered with the cluster and the
//! cluster answered it within [`READY_INTERVALS`] heartbeat intervals.

use std::sync::Arc;

use dllm_auth::layer::Denials;
use dllm_util::{
    clock::now_ms,
    grpc_metrics::GrpcMetrics,
    metrics::{write_gauges, FnCollector, Sample},
};
use prometheus_client::{encoding::DescriptorEncoder, registry::Registry};

use crate::agent::{Shared, View};

/// Heartbeat intervals without an answer after which a worker is not ready: the control
/// plane's default `--unhealthy-after`, so a worker stops taking traffic about when the
/// cluster stops counting it healthy.
pub const READY_INTERVALS: u32 = 3;

/// The registry of a worker's `/metrics` and the gRPC server metrics in it.
pub fn registry(shared: Shared, denials: Denials) -> (Registry, Arc<GrpcMetrics>) {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(FnCollector(move |e: &mut DescriptorEncoder| {
        write(e, &shared, &denials)
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

fn write(e: &mut DescriptorEncoder, shared: &Shared, denials: &Denials) -> std::fmt::Result {
    denials.write(e, "distributed_llm_worker_auth_denials")?;
    let usage = shared.sample();
    let (max, status) = {
        let view = shared.view();
        let max = view.node.resources.as_ref().map_or(0, |r| r.max_layers);
        (max, view.status.clone())
    };
    for (name, unit) in dllm_proto::metrics::METRICS {
        let (shown, scale) = prometheus_name(name);
        let samples: Vec<Sample> = dllm_proto::metrics::render(&usage, max, &[name.to_string()])
            .into_iter()
            .map(|mut m| {
                let labels = ["gpu", "uuid"]
                    .into_iter()
                    .filter_map(|key| Some((key, m.labels.remove(key)?)))
                    .collect();
                (labels, m.value * scale)
            })
            .collect();
        let help = match scale {
            1.0 => format!("{name} ({unit})"),
            _ => format!("{name} in bytes"),
        };
        write_gauges(
            e,
            &format!("distributed_llm_worker_{shown}"),
            &help,
            samples,
        )?;
    }
    write_gauges(
        e,
        "distributed_llm_worker_status",
        "1 for the status the cluster last reported for this worker",
        [(vec![("status", status)], 1.0)],
    )
}

/// The Prometheus name of an API metric, and the factor to its unit: Prometheus wants base
/// units (promtool refuses `_mb`), so `memory_used_mb` is `memory_used_bytes`.
fn prometheus_name(name: &str) -> (String, f64) {
    match name.strip_suffix("_mb") {
        Some(base) => (format!("{base}_bytes"), 1024.0 * 1024.0),
        None => (name.to_string(), 1.0),
    }
}

/// Whether the worker should get traffic, else why not: registered with the cluster
/// (it has joined and the cluster has not forgotten it) and answered by it within
/// [`READY_INTERVALS`] heartbeat intervals (the interval the control plane asks for).
///
/// # Errors
/// The reason, one short line.
pub fn readiness(view: &View, now_ms: i64) -> Result<(), String> {
    if view.status == "joining" {
        return Err("not registered with the cluster yet".into());
    }
    let limit = (view.heartbeat_interval * READY_INTERVALS).as_millis() as i64;
    let silent = now_ms - view.last_seen;
    if silent > limit {
        return Err(format!(
            "the cluster has not answered a heartbeat for {silent} ms (limit {limit} ms)"
        ));
    }
    Ok(())
}

/// [`readiness`] of the worker now.
///
/// # Errors
/// As [`readiness`].
pub fn ready_now(shared: &Shared) -> Result<(), String> {
    readiness(&shared.view(), now_ms())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Ready once registered and while answered within three intervals; not before joining,
    /// and not after the cluster falls silent.
    #[test]
    fn ready_while_registered_and_answered() {
        let mut view = View {
            status: "joining".into(),
            heartbeat_interval: Duration::from_secs(1),
            ..Default::default()
        };
        let err = readiness(&view, 10_000).expect_err("joining");
        assert!(err.contains("not registered"), "{err}");
        view.status = "healthy".into();
        view.last_seen = 10_000;
        assert_eq!(
            readiness(&view, 13_000),
            Ok(()),
            "three intervals is still ready"
        );
        let err = readiness(&view, 13_001).expect_err("silent");
        assert!(err.contains("3001 ms"), "{err}");
    }
}
