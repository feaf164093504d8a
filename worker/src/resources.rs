//! What this host has and how busy it is: CPU and memory from sysinfo, GPUs from NVML
//! (nvml-wrapper loads the driver library at run time, so no driver is a normal case), or
//! simulated GPUs for hosts without them.

use std::time::Instant;

use dllm_proto::pb;
use nvml_wrapper::{enum_wrappers::device::TemperatureSensor, Nvml};
use tracing::{info, warn};

const MIB: u64 = 1024 * 1024;

/// One simulated GPU.
#[derive(Clone, Debug, PartialEq)]
pub struct SimulatedGpu {
    /// Product name.
    pub name: String,
    /// Memory, MiB.
    pub memory_mb: i64,
    /// Stable UUID derived from the node id and the GPU's index.
    pub uuid: String,
}

/// Parses `2x81559:NVIDIA H100 80GB HBM3;1x24576:NVIDIA L4`.
///
/// # Errors
/// A message saying which group is malformed.
pub fn parse_simulated_gpus(node_id: &str, spec: &str) -> Result<Vec<SimulatedGpu>, String> {
    let mut gpus = Vec::new();
    for group in spec.split(';').map(str::trim).filter(|g| !g.is_empty()) {
        let bad = || format!("{group:?} is not COUNTxMIB:NAME, e.g. 2x81559:NVIDIA H100 80GB HBM3");
        let (count, rest) = group.split_once('x').ok_or_else(bad)?;
        let (memory, name) = rest.split_once(':').ok_or_else(bad)?;
        let count: usize = count.trim().parse().map_err(|_| bad())?;
        let memory_mb: i64 = memory.trim().parse().map_err(|_| bad())?;
        if count == 0 || count > 64 || memory_mb <= 0 || name.trim().is_empty() {
            return Err(bad());
        }
        for _ in 0..count {
            let index = gpus.len();
            let uuid = uuid::Uuid::new_v5(
                &uuid::Uuid::NAMESPACE_OID,
                format!("dllm-simulated-gpu/{node_id}/{index}").as_bytes(),
            );
            gpus.push(SimulatedGpu {
                name: name.trim().to_string(),
                memory_mb,
                uuid: format!("GPU-{uuid}"),
            });
        }
    }
    if gpus.len() > 64 {
        return Err(format!("{} GPUs; the limit is 64", gpus.len()));
    }
    if gpus.is_empty() {
        return Err("lists no GPU".to_string());
    }
    Ok(gpus)
}

enum Gpus {
    // Boxed: the NVML handle holds the whole function table of the driver library.
    Nvml(Box<Nvml>),
    Simulated(Vec<SimulatedGpu>),
    None,
}

/// Reads the host's resources and usage.
pub struct Probe {
    system: sysinfo::System,
    gpus: Gpus,
    started: Instant,
}

/// Why the host cannot be read at all.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the host's CPU and memory: {0}")]
pub struct ProbeError(String);

impl Probe {
    /// Opens sysinfo and, unless `simulated` is given, NVML. A missing or failing NVIDIA
    /// driver is logged once and leaves the node without GPUs.
    ///
    /// # Errors
    /// [`ProbeError`] when sysinfo cannot read this host.
    pub fn open(simulated: Option<Vec<SimulatedGpu>>) -> Result<Self, ProbeError> {
        let mut system = sysinfo::System::new().map_err(|e| ProbeError(e.to_string()))?;
        system.refresh_cpu_all();
        system.refresh_memory();
        let gpus = match simulated {
            Some(sim) => {
                info!(count = sim.len(), "using simulated GPUs");
                Gpus::Simulated(sim)
            }
            None => match Nvml::init() {
                Ok(nvml) => match nvml.device_count() {
                    Ok(n) => {
                        info!(count = n, "NVML found GPUs");
                        Gpus::Nvml(Box::new(nvml))
                    }
                    Err(e) => {
                        warn!(error = %e, "NVML is loaded but cannot count GPUs; running without GPUs");
                        Gpus::None
                    }
                },
                Err(e) => {
                    info!(reason = %e, "no NVIDIA driver found (NVML unavailable); running without GPUs");
                    Gpus::None
                }
            },
        };
        Ok(Self {
            system,
            gpus,
            started: Instant::now(),
        })
    }

    /// The GPUs as the cluster should know them.
    pub fn gpus(&self) -> Vec<pb::GpuInfo> {
        match &self.gpus {
            Gpus::None => Vec::new(),
            Gpus::Simulated(sim) => sim
                .iter()
                .map(|g| pb::GpuInfo {
                    name: g.name.clone(),
                    memory_mb: g.memory_mb,
                    uuid: g.uuid.clone(),
                })
                .collect(),
            Gpus::Nvml(nvml) => {
                let count = nvml.device_count().unwrap_or(0);
                (0..count)
                    .filter_map(|i| {
                        let d = nvml
                            .device_by_index(i)
                            .map_err(|e| warn!(index = i, error = %e, "cannot open GPU"))
                            .ok()?;
                        Some(pb::GpuInfo {
                            name: d.name().unwrap_or_default(),
                            memory_mb: d.memory_info().map(|m| (m.total / MIB) as i64).unwrap_or(0),
                            uuid: d.uuid().unwrap_or_default(),
                        })
                    })
                    .collect()
            }
        }
    }

    /// The resources to register with. `max_layers` defaults to one layer per GiB of GPU
    /// memory, or of host memory when there are no GPUs, and at least 1.
    pub fn resources(&self, max_layers: Option<i32>) -> pb::ResourceInfo {
        let gpus = self.gpus();
        let memory_mb = (self.system.total_memory() / MIB) as i64;
        let gpu_memory_mb: i64 = gpus.iter().map(|g| g.memory_mb).sum();
        let basis = if gpus.is_empty() {
            memory_mb
        } else {
            gpu_memory_mb
        };
        pb::ResourceInfo {
            cpu_cores: self.system.cpus().len() as i64,
            memory_mb,
            gpus,
            max_layers: max_layers
                .unwrap_or_else(|| (basis / 1024).clamp(1, i32::MAX as i64) as i32),
            used_layers: 0,
        }
    }

    /// A fresh usage sample. `used_layers` is what the cluster assigned.
    pub fn sample(&mut self, used_layers: i32, now_ms: i64) -> pb::NodeUsage {
        self.system.refresh_cpu_usage();
        self.system.refresh_memory();
        let gpus = match &self.gpus {
            Gpus::None => Vec::new(),
            // Simulated GPUs carry no load: they report idle, empty and cold.
            Gpus::Simulated(sim) => sim
                .iter()
                .enumerate()
                .map(|(i, g)| pb::GpuUsage {
                    index: i as u32,
                    uuid: g.uuid.clone(),
                    memory_total_mb: g.memory_mb,
                    ..Default::default()
                })
                .collect(),
            Gpus::Nvml(nvml) => (0..nvml.device_count().unwrap_or(0))
                .filter_map(|i| {
                    let d = nvml.device_by_index(i).ok()?;
                    let memory = d.memory_info().ok();
                    Some(pb::GpuUsage {
                        index: i,
                        uuid: d.uuid().unwrap_or_default(),
                        utilization_percent: d
                            .utilization_rates()
                            .map(|u| u.gpu as f32)
                            .unwrap_or(0.0),
                        memory_used_mb: memory.as_ref().map(|m| (m.used / MIB) as i64).unwrap_or(0),
                        memory_total_mb: memory
                            .as_ref()
                            .map(|m| (m.total / MIB) as i64)
                            .unwrap_or(0),
                        temperature_celsius: d
                            .temperature(TemperatureSensor::Gpu)
                            .map(|t| t as f32)
                            .unwrap_or(0.0),
                    })
                })
                .collect(),
        };
        pb::NodeUsage {
            timestamp: now_ms,
            cpu_usage_percent: self.system.global_cpu_usage(),
            memory_used_mb: (self.system.used_memory() / MIB) as i64,
            memory_total_mb: (self.system.total_memory() / MIB) as i64,
            gpus,
            used_layers,
            uptime_seconds: self.started.elapsed().as_secs() as i64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simulated_gpus_parse_with_stable_uuids() {
        let a = parse_simulated_gpus("w1", "2x81559:NVIDIA H100 80GB HBM3;1x24576:NVIDIA L4")
            .expect("valid");
        assert_eq!(a.len(), 3);
        assert_eq!(a[0].name, "NVIDIA H100 80GB HBM3");
        assert_eq!(a[2].memory_mb, 24576);
        let b = parse_simulated_gpus("w1", "2x81559:NVIDIA H100 80GB HBM3;1x24576:NVIDIA L4")
            .expect("valid");
        assert_eq!(a, b, "UUIDs are stable");
        let other = parse_simulated_gpus("w2", "1x1:G").expect("valid");
        assert_ne!(other[0].uuid, a[0].uuid, "UUIDs differ between nodes");
        assert!(parse_simulated_gpus("w1", "0x1:G").is_err());
        assert!(parse_simulated_gpus("w1", "1x1").is_err());
    }

    /// Without an NVIDIA driver (as on CI) the probe opens and reports no GPUs; with
    /// simulated GPUs it reports those.
    #[test]
    fn probe_opens_without_a_driver() {
        let probe = Probe::open(None).expect("probe");
        let r = probe.resources(None);
        assert!(r.cpu_cores >= 1 && r.memory_mb > 0 && r.max_layers >= 1);
        let sim = parse_simulated_gpus("w", "2x2048:G").expect("valid");
        let mut probe = Probe::open(Some(sim)).expect("probe");
        let r = probe.resources(None);
        assert_eq!(r.gpus.len(), 2);
        assert_eq!(r.max_layers, 4, "one layer per GiB of GPU memory");
        let u = probe.sample(3, 42);
        assert_eq!((u.gpus.len(), u.used_layers, u.timestamp), (2, 3, 42));
    }

    /// On a host with an NVIDIA driver, the probe reads the same GPUs as `nvidia-smi`:
    /// `cargo test -p dllm-worker -- --ignored nvml` (scripts/gpu-check.sh runs it on a GPU
    /// machine, together with a cluster and a real GPU load).
    #[test]
    #[ignore = "needs an NVIDIA GPU, its driver and nvidia-smi"]
    fn nvml_probe_matches_nvidia_smi() {
        let out = std::process::Command::new("nvidia-smi")
            .args([
                "--query-gpu=uuid,name,memory.total,memory.used,temperature.gpu",
                "--format=csv,noheader,nounits",
            ])
            .output()
            .expect("nvidia-smi runs");
        assert!(out.status.success(), "nvidia-smi failed: {out:?}");
        let text = String::from_utf8(out.stdout).expect("utf-8");
        let smi: Vec<Vec<String>> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.split(',').map(|f| f.trim().to_string()).collect())
            .collect();
        assert!(!smi.is_empty(), "nvidia-smi lists no GPU");
        let mut probe = Probe::open(None).expect("probe");
        let gpus = probe.gpus();
        assert_eq!(
            gpus.len(),
            smi.len(),
            "NVML and nvidia-smi count the same GPUs"
        );
        let usage = probe.sample(0, 1);
        assert_eq!(usage.gpus.len(), smi.len());
        for ((gpu, used), row) in gpus.iter().zip(&usage.gpus).zip(&smi) {
            let num = |i: usize| row[i].parse::<i64>().expect("a number");
            assert_eq!(gpu.uuid, row[0]);
            assert_eq!(gpu.name, row[1]);
            assert!((gpu.memory_mb - num(2)).abs() <= 1, "{gpu:?} vs {row:?}");
            assert_eq!(used.uuid, gpu.uuid);
            assert_eq!(used.memory_total_mb, gpu.memory_mb);
            assert!(
                (used.memory_used_mb - num(3)).abs() <= 256,
                "{used:?} vs {row:?}"
            );
            assert!(
                used.temperature_celsius > 0.0
                    && (used.temperature_celsius - num(4) as f32).abs() <= 10.0,
                "{used:?} vs {row:?}"
            );
        }
        let total: i64 = gpus.iter().map(|g| g.memory_mb).sum();
        assert_eq!(probe.resources(None).max_layers as i64, total / 1024);
    }
}
