//! Prometheus metrics of a replica, served as text on `--metrics-listen` at `/metrics`:
//! Raft (term, leader, indexes, replication lag per follower), gRPC requests (count and
//! latency histogram per method and status code), heartbeats received, nodes by status,
//! layers allocated and total, and each model's placement state. Names use the
//! `distributed_llm_` prefix.

use std::{
    collections::BTreeMap,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use dllm_proto::metrics::write_family;

use crate::{
    replica::Replica,
    state::{NodeStatus, Placement},
};

/// Upper bounds (seconds) of the latency histogram buckets.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

#[derive(Default)]
struct Series {
    count: u64,
    sum: f64,
    buckets: Vec<u64>,
}

/// Request counts and latencies per (gRPC method, status code).
#[derive(Default)]
pub struct RpcMetrics {
    /// By method, then status code.
    series: Mutex<BTreeMap<String, BTreeMap<i32, Series>>>,
}

impl RpcMetrics {
    fn record(&self, method: &str, code: i32, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        // The method's name is allocated once, the first time it is seen.
        if !series.contains_key(method) {
            series.insert(method.to_string(), BTreeMap::new());
        }
        let by_code = series.get_mut(method).expect("inserted above");
        let s = by_code.entry(code).or_insert_with(|| Series {
            buckets: vec![0; BUCKETS.len()],
            ..Default::default()
        });
        s.count += 1;
        s.sum += secs;
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound {
                s.buckets[i] += 1;
            }
        }
    }

    fn write(&self, out: &mut String) {
        let nested = self.series.lock().unwrap_or_else(|e| e.into_inner());
        let labels = |method: &str, code: i32| -> Vec<(String, String)> {
            vec![
                ("method".to_string(), method.to_string()),
                (
                    "code".to_string(),
                    format!("{:?}", tonic::Code::from_i32(code)),
                ),
            ]
        };
        let all = || {
            nested
                .iter()
                .flat_map(|(m, by_code)| by_code.iter().map(move |(c, s)| (m.as_str(), *c, s)))
        };
        write_family(
            out,
            "distributed_llm_grpc_requests_total",
            "counter",
            "gRPC requests served, by method and status code",
            all().map(|(m, c, s)| (labels(m, c), s.count as f64)),
        );
        let mut buckets = Vec::new();
        for (m, c, s) in all() {
            for (i, bound) in BUCKETS.iter().enumerate() {
                let mut l = labels(m, c);
                l.push(("le".to_string(), bound.to_string()));
                buckets.push((l, s.buckets[i] as f64));
            }
            let mut l = labels(m, c);
            l.push(("le".to_string(), "+Inf".to_string()));
            buckets.push((l, s.count as f64));
        }
        write_family(
            out,
            "distributed_llm_grpc_request_duration_seconds_bucket",
            "histogram",
            "gRPC request latency to response headers, by method and status code",
            buckets,
        );
        write_family(
            out,
            "distributed_llm_grpc_request_duration_seconds_sum",
            "counter",
            "Sum of gRPC request latencies",
            all().map(|(m, c, s)| (labels(m, c), s.sum)),
        );
    }
}

/// A tower layer that records every request in [`RpcMetrics`]. The status code is the
/// `grpc-status` of the response headers (trailers-only answers: every error of a unary
/// call); answers that carry it in trailers count as OK.
#[derive(Clone)]
pub struct RpcMetricsLayer(pub Arc<RpcMetrics>);

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetricsService {
            inner,
            metrics: self.0.clone(),
        }
    }
}

/// The service [`RpcMetricsLayer`] wraps around the gRPC router.
#[derive(Clone)]
pub struct RpcMetricsService<S> {
    inner: S,
    metrics: Arc<RpcMetrics>,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for RpcMetricsService<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let method = request.uri().path().to_string();
        let started = Instant::now();
        let metrics = self.metrics.clone();
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await;
            let code = match &response {
                Ok(r) => r
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
                Err(_) => tonic::Code::Unknown as i32,
            };
            metrics.record(&method, code, started.elapsed());
            response
        })
    }
}

/// The whole exposition of a replica.
pub fn render(replica: &Replica, rpc: &RpcMetrics, denials: &dllm_auth::layer::Denials) -> String {
    let mut out = String::new();
    denials.render(&mut out, "distributed_llm_auth_denials_total");
    let none = Vec::new;
    let status = replica.status();
    let gauge = |out: &mut String, name: &str, help: &str, v: Option<u64>| {
        if let Some(v) = v {
            write_family(out, name, "gauge", help, [(none(), v as f64)]);
        }
    };
    gauge(
        &mut out,
        "distributed_llm_raft_term",
        "Current Raft term",
        Some(status.term),
    );
    gauge(
        &mut out,
        "distributed_llm_raft_leader_id",
        "Raft id of the current leader, 0 when none",
        Some(status.leader_id),
    );
    gauge(
        &mut out,
        "distributed_llm_raft_is_leader",
        "1 when this replica leads",
        Some(u64::from(status.leader_id == status.answered_by)),
    );
    gauge(
        &mut out,
        "distributed_llm_raft_commit_index",
        "Highest log index known committed",
        status.commit_index,
    );
    gauge(
        &mut out,
        "distributed_llm_raft_applied_index",
        "Highest log index applied",
        status.applied_index,
    );
    gauge(
        &mut out,
        "distributed_llm_raft_last_log_index",
        "Highest log index in the log",
        status.last_log_index,
    );
    gauge(
        &mut out,
        "distributed_llm_raft_snapshot_index",
        "Last log index in the latest snapshot",
        status.snapshot_index,
    );
    let lag: Vec<(Vec<(String, String)>, f64)> = {
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
                        (vec![("follower".to_string(), id.to_string())], lag as f64)
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    write_family(
        &mut out,
        "distributed_llm_raft_replication_lag_entries",
        "gauge",
        "Log entries each follower is behind the leader (on the leader only)",
        lag,
    );
    write_family(
        &mut out,
        "distributed_llm_heartbeats_received_total",
        "counter",
        "Worker heartbeats handled by this replica as leader",
        [(none(), replica.heartbeats_received() as f64)],
    );
    let (by_status, allocated, total, models) = replica.local_state().read(|s| {
        let by_status: Vec<(NodeStatus, usize)> = NodeStatus::ALL
            .iter()
            .map(|st| (*st, s.nodes.values().filter(|n| n.status == *st).count()))
            .collect();
        let members = || s.members_unordered();
        let allocated: i64 = members().map(|n| i64::from(n.used_layers)).sum();
        let total: i64 = members().map(|n| i64::from(n.resources.max_layers)).sum();
        let models: Vec<(String, bool)> = s
            .models
            .values()
            .map(|m| {
                (
                    m.spec.id.clone(),
                    matches!(m.placement, Placement::Placed(_)),
                )
            })
            .collect();
        (by_status, allocated, total, models)
    });
    write_family(
        &mut out,
        "distributed_llm_nodes",
        "gauge",
        "Nodes by status, as this replica has applied",
        by_status.iter().map(|(st, n)| {
            (
                vec![("status".to_string(), st.as_str().to_string())],
                *n as f64,
            )
        }),
    );
    write_family(
        &mut out,
        "distributed_llm_layers_allocated",
        "gauge",
        "Layers placed on member nodes",
        [(none(), allocated as f64)],
    );
    write_family(
        &mut out,
        "distributed_llm_layers_total",
        "gauge",
        "Sum of max_layers over member nodes",
        [(none(), total as f64)],
    );
    write_family(
        &mut out,
        "distributed_llm_model_placed",
        "gauge",
        "1 when the model is placed, 0 while pending",
        models.iter().map(|(id, placed)| {
            (
                vec![("model".to_string(), id.clone())],
                f64::from(u8::from(*placed)),
            )
        }),
    );
    rpc.write(&mut out);
    out
}
