//! The metric vocabulary of the API: the stable names `GetMetrics` and `StreamMetrics` answer,
//! on a worker (live) and on a control-plane replica (from the node's last heartbeat).
//! Both render a [`pb::NodeUsage`] sample through [`render`], so the two can never disagree.
//! Per-GPU series carry the labels `gpu` (index) and `uuid`.

use crate::pb;

/// Every metric name with its unit, in the order answers list them.
pub const METRICS: &[(&str, &str)] = &[
    ("cpu_usage_percent", "percent"),
    ("memory_used_mb", "MiB"),
    ("memory_total_mb", "MiB"),
    ("gpu_utilization_percent", "percent"),
    ("gpu_memory_used_mb", "MiB"),
    ("gpu_memory_total_mb", "MiB"),
    ("gpu_temperature_celsius", "celsius"),
    ("layers_used", "count"),
    ("layers_max", "count"),
    ("uptime_seconds", "seconds"),
];

/// The first name in `names` that is not a metric, with its position.
pub fn unknown_name(names: &[String]) -> Option<(usize, &str)> {
    names
        .iter()
        .enumerate()
        .find(|(_, n)| !METRICS.iter().any(|(m, _)| m == n))
        .map(|(i, n)| (i, n.as_str()))
}

/// Every valid name, comma-separated, for error messages.
pub fn valid_names() -> String {
    METRICS
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

fn value(name: &str, unit: &str, v: f64, gpu: Option<&pb::GpuUsage>) -> pb::MetricValue {
    let mut labels = std::collections::HashMap::new();
    if let Some(g) = gpu {
        labels.insert("gpu".to_string(), g.index.to_string());
        labels.insert("uuid".to_string(), g.uuid.clone());
    }
    pb::MetricValue {
        name: name.to_string(),
        value: v,
        unit: unit.to_string(),
        labels,
    }
}

/// The metrics of one usage sample, restricted to `names` (all when empty). `layers_max` is
/// the node's capacity, which the sample does not carry.
pub fn render(usage: &pb::NodeUsage, layers_max: i32, names: &[String]) -> Vec<pb::MetricValue> {
    let mut out = Vec::new();
    for (name, unit) in METRICS {
        if !names.is_empty() && !names.iter().any(|n| n == name) {
            continue;
        }
        let per_gpu = |f: fn(&pb::GpuUsage) -> f64| -> Vec<pb::MetricValue> {
            usage
                .gpus
                .iter()
                .map(|g| value(name, unit, f(g), Some(g)))
                .collect()
        };
        match *name {
            "cpu_usage_percent" => {
                out.push(value(name, unit, usage.cpu_usage_percent.into(), None))
            }
            "memory_used_mb" => out.push(value(name, unit, usage.memory_used_mb as f64, None)),
            "memory_total_mb" => out.push(value(name, unit, usage.memory_total_mb as f64, None)),
            "gpu_utilization_percent" => out.extend(per_gpu(|g| g.utilization_percent.into())),
            "gpu_memory_used_mb" => out.extend(per_gpu(|g| g.memory_used_mb as f64)),
            "gpu_memory_total_mb" => out.extend(per_gpu(|g| g.memory_total_mb as f64)),
            "gpu_temperature_celsius" => out.extend(per_gpu(|g| g.temperature_celsius.into())),
            "layers_used" => out.push(value(name, unit, usage.used_layers.into(), None)),
            "layers_max" => out.push(value(name, unit, layers_max.into(), None)),
            "uptime_seconds" => out.push(value(name, unit, usage.uptime_seconds as f64, None)),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_metric_with_per_gpu_labels() {
        let usage = pb::NodeUsage {
            gpus: vec![
                pb::GpuUsage {
                    index: 0,
                    uuid: "GPU-a".into(),
                    ..Default::default()
                },
                pb::GpuUsage {
                    index: 1,
                    uuid: "GPU-b".into(),
                    memory_used_mb: 7,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let all = render(&usage, 10, &[]);
        // 6 node-level metrics + 4 per-GPU metrics x 2 GPUs.
        assert_eq!(all.len(), 6 + 4 * 2);
        let used = render(&usage, 10, &["gpu_memory_used_mb".into()]);
        assert_eq!(used.len(), 2);
        assert_eq!(used[1].labels["gpu"], "1");
        assert_eq!(used[1].value, 7.0);
    }

    #[test]
    fn unknown_names_are_found() {
        assert_eq!(
            unknown_name(&["layers_used".into(), "bogus".into()]),
            Some((1, "bogus"))
        );
        assert_eq!(unknown_name(&[]), None);
    }
}
