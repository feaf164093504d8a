//! The load of the `heartbeats` scenario: one shard of the simulated workers (a contiguous
//! range of their ids), each heartbeating once per interval, spread evenly over time, over a
//! few shared connections per replica. Like a real worker (`worker/src/agent.rs`), each starts
//! at the replica its node id hashes to and moves to the one a heartbeat answer names (the
//! leader names a follower). The scenario runs one shard in its own process, or
//! several in child processes (`dllm-bench hb-generate`, hidden), each printing its
//! [`Load`] as one JSON line, so that the offered load is not bounded by one process.
//!
//! A heartbeat costs the generator as little as the scenario can make it: each worker's
//! request is encoded once, before the run, and sent as those bytes (and its token, under
//! `--tls`, made once); each sender task keeps its heartbeats in flight as futures of its own
//! and records latencies locally, with no task spawned, no channel and no allocation per
//! heartbeat beyond what gRPC itself does.

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use bytes::{BufMut, Bytes};
use dllm_proto::{client::Channel, pb};
use futures::{stream::FuturesUnordered, StreamExt};
use prost::Message;
use serde_json::{json, Value};
use tonic::{
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    codegen::http::uri::PathAndQuery,
    metadata::{Ascii, MetadataValue},
    Status,
};

use crate::{common, stats::Latencies};

/// Connections one generator process opens per replica.
const CHANNELS_PER_REPLICA: usize = 4;
/// Tasks that schedule heartbeats in one generator process; each owns a slice of its workers.
const SENDERS: usize = 64;
/// Most heartbeats one generator process keeps outstanding (a stalled leader would otherwise
/// pile them up); a sender at its share waits for an answer before sending the next, and a
/// heartbeat more than an interval behind its time is skipped (the worker's next one is due),
/// not sent in a burst: the report says what was offered and what was skipped.
const MAX_IN_FLIGHT: usize = 4096;
/// How often each worker heartbeats.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// One shard of the fleet and when to heartbeat.
#[derive(Clone, Debug)]
pub struct Shard {
    /// Replica addresses to send to: each worker starts at the one its id hashes to.
    pub addrs: Vec<String>,
    /// The first worker (`hb-{first:06}`) and how many.
    pub first: usize,
    pub count: usize,
    /// When to start heartbeating; measured from `start + warmup` for `duration`.
    pub start: Instant,
    pub warmup: Duration,
    pub duration: Duration,
}

/// What one shard measured.
#[derive(Default)]
pub struct Load {
    /// Heartbeats sent within the measured window.
    pub sent: u64,
    /// Heartbeats due within the window and skipped, the generator more than an interval
    /// behind (at its in-flight cap).
    pub skipped: u64,
    /// Latencies of those answered.
    pub latencies: Latencies,
    /// Those that failed.
    pub errors: u64,
    /// Answers that named another replica to heartbeat (all through the run).
    pub moved: u64,
}

impl Load {
    /// As one JSON object (latencies in microseconds), what a child prints.
    pub fn to_json(&self) -> Value {
        json!({
            "sent": self.sent,
            "skipped": self.skipped,
            "moved": self.moved,
            "errors": self.errors,
            "latencies_us": self.latencies.micros(),
        })
    }

    /// Reads what [`Load::to_json`] wrote.
    pub fn from_json(v: &Value) -> anyhow::Result<Self> {
        let field = |name: &str| {
            v.get(name)
                .and_then(Value::as_u64)
                .ok_or_else(|| anyhow::anyhow!("generator report without {name}"))
        };
        let mut latencies = Latencies::default();
        for us in v
            .get("latencies_us")
            .and_then(Value::as_array)
            .ok_or_else(|| anyhow::anyhow!("generator report without latencies_us"))?
        {
            latencies.push(Duration::from_micros(us.as_u64().unwrap_or(0)));
        }
        Ok(Self {
            sent: field("sent")?,
            skipped: field("skipped")?,
            moved: field("moved")?,
            errors: field("errors")?,
            latencies,
        })
    }

    /// Adds another shard's measurements.
    pub fn merge(&mut self, other: Load) {
        self.sent += other.sent;
        self.skipped += other.skipped;
        self.moved += other.moved;
        self.errors += other.errors;
        self.latencies.extend(other.latencies);
    }
}

/// The id of simulated worker `i`.
pub fn worker_id(i: usize) -> String {
    format!("hb-{i:06}")
}

/// A usage sample like a real 8-GPU worker's (`worker/src/metrics.rs`).
fn usage(i: usize) -> pb::NodeUsage {
    pb::NodeUsage {
        timestamp: 0,
        cpu_usage_percent: 12.5,
        memory_used_mb: 65536 + i as i64,
        memory_total_mb: 2 * 1024 * 1024,
        gpus: (0..8)
            .map(|g| pb::GpuUsage {
                index: g,
                uuid: format!("GPU-{g}"),
                utilization_percent: 80.0,
                memory_used_mb: 60000,
                memory_total_mb: 81559,
                temperature_celsius: 61.0,
            })
            .collect(),
        used_layers: 0,
        uptime_seconds: 1,
    }
}

/// A worker's heartbeat as it goes on the wire, made once: its encoding, and its token under
/// `--tls`; and the replica it sends to (an index into [`Shard::addrs`]).
struct Prepared {
    request: Bytes,
    token: Option<MetadataValue<Ascii>>,
    target: AtomicUsize,
}

fn prepare(i: usize, replicas: usize) -> Prepared {
    let id = worker_id(i);
    // As the worker picks its first seed: FNV-1a of its node id.
    let hash = id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let request = pb::HeartbeatRequest {
        node_id: id.clone(),
        usage: Some(usage(i)),
    };
    Prepared {
        request: request.encode_to_vec().into(),
        token: common::worker_token(&id),
        target: AtomicUsize::new((hash % replicas.max(1) as u64) as usize),
    }
}

/// Sends already encoded requests and decodes `HeartbeatResponse`s.
#[derive(Clone, Copy, Default)]
struct Preencoded;

impl Codec for Preencoded {
    type Encode = Bytes;
    type Decode = pb::HeartbeatResponse;
    type Encoder = Self;
    type Decoder = Self;

    fn encoder(&mut self) -> Self {
        *self
    }

    fn decoder(&mut self) -> Self {
        *self
    }
}

impl Encoder for Preencoded {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Preencoded {
    type Item = pb::HeartbeatResponse;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        pb::HeartbeatResponse::decode(src)
            .map(Some)
            .map_err(|e| Status::internal(e.to_string()))
    }
}

/// Connections to each replica of [`Shard::addrs`].
struct Replicas {
    addrs: Vec<String>,
    channels: Vec<Vec<Channel>>,
}

/// One heartbeat of `worker` over sender `s`'s connection to its replica, answered (whether
/// the answer moved the worker: a replica it names is where its next heartbeat goes) or
/// failed.
async fn heartbeat(replicas: &Replicas, s: usize, worker: &Prepared) -> Result<bool, Status> {
    let to = replicas.channels[worker.target.load(Ordering::Relaxed)].as_slice();
    let channel = to[s % to.len()].clone();
    let mut client = tonic::client::Grpc::new(channel)
        .accept_compressed(tonic::codec::CompressionEncoding::Gzip);
    let mut request = tonic::Request::new(worker.request.clone());
    if let Some(token) = &worker.token {
        request
            .metadata_mut()
            .insert("authorization", token.clone());
    }
    client
        .ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    client
        .unary(
            request,
            PathAndQuery::from_static("/distributed_llm.DiscoveryService/Heartbeat"),
            Preencoded,
        )
        .await
        .map(|answer| {
            let named = answer
                .metadata()
                .get(HEARTBEAT_TO)
                .and_then(|v| v.to_str().ok())
                .and_then(|addr| replicas.addrs.iter().position(|a| a == addr));
            if let Some(i) = named {
                worker.target.store(i, Ordering::Relaxed);
            }
            named.is_some()
        })
}

/// The metadata key of a heartbeat answer naming the replica to heartbeat from now on.
const HEARTBEAT_TO: &str = "x-dllm-heartbeat-to";

/// Runs one shard until its window ends and every heartbeat sent in it is answered.
pub async fn generate(shard: Shard) -> Load {
    let workers: Vec<Prepared> = (shard.first..shard.first + shard.count)
        .map(|i| prepare(i, shard.addrs.len()))
        .collect();
    let replicas = std::sync::Arc::new(Replicas {
        addrs: shard.addrs.clone(),
        channels: shard
            .addrs
            .iter()
            .map(|a| {
                (0..CHANNELS_PER_REPLICA)
                    .map(|_| common::channel(a))
                    .collect()
            })
            .collect(),
    });
    let workers = std::sync::Arc::new(workers);
    let per_sender = shard.count.div_ceil(SENDERS).max(1);
    let tasks: Vec<_> = (0..SENDERS)
        .map(|s| {
            let (workers, shard, replicas) = (workers.clone(), shard.clone(), replicas.clone());
            tokio::spawn(async move {
                let mine =
                    (s * per_sender).min(workers.len())..((s + 1) * per_sender).min(workers.len());
                send(&workers[mine], &replicas, &shard, s).await
            })
        })
        .collect();
    let mut load = Load::default();
    for t in tasks {
        load.merge(t.await.unwrap_or_default());
    }
    load
}

/// One sender's loop: its `workers` spread evenly over the interval, and the senders over
/// the first interval.
async fn send(workers: &[Prepared], replicas: &Replicas, shard: &Shard, s: usize) -> Load {
    let mut load = Load::default();
    if workers.is_empty() {
        return load;
    }
    let measure_from = shard.start + shard.warmup;
    let end = tokio::time::Instant::from_std(measure_from + shard.duration);
    let gap = INTERVAL / workers.len() as u32;
    let mut next =
        tokio::time::Instant::from_std(shard.start) + INTERVAL * s as u32 / SENDERS as u32;
    let cap = (MAX_IN_FLIGHT / SENDERS).max(1);
    let mut in_flight = FuturesUnordered::new();
    let record = |load: &mut Load, (t, answer): (Instant, Result<bool, Status>)| {
        if matches!(answer, Ok(true)) {
            load.moved += 1;
        }
        if t >= measure_from {
            match answer {
                Ok(_) => load.latencies.push(t.elapsed()),
                Err(_) => load.errors += 1,
            }
        }
    };
    let mut i = 0;
    while next <= end && tokio::time::Instant::now() < end {
        if in_flight.len() >= cap {
            if let Some(done) = in_flight.next().await {
                record(&mut load, done);
            }
            continue;
        }
        tokio::select! {
            biased;
            Some(done) = in_flight.next(), if !in_flight.is_empty() => record(&mut load, done),
            () = tokio::time::sleep_until(next) => {
                let now = tokio::time::Instant::now();
                if now >= end {
                    break;
                }
                if now > next + INTERVAL {
                    // More than an interval behind: skip to the heartbeats due in the last
                    // interval.
                    let behind = (now - INTERVAL - next).as_nanos() / gap.as_nanos().max(1) + 1;
                    if now >= measure_from.into() {
                        load.skipped += behind as u64;
                    }
                    next += gap * behind as u32;
                    i = (i + behind as usize) % workers.len();
                    continue;
                }
                let worker = &workers[i];
                let t = Instant::now();
                if t >= measure_from {
                    load.sent += 1;
                }
                in_flight.push(async move { (t, heartbeat(replicas, s, worker).await) });
                i = (i + 1) % workers.len();
                next += gap;
            }
        }
    }
    while let Some(done) = in_flight.next().await {
        record(&mut load, done);
    }
    load
}
