//! What an operator's tools read from live processes: `/metrics` pages that promtool and a
//! second parser accept, `/readyz` that follows quorum and registration, gRPC health on a
//! worker's port, and JSON log lines.

use std::{process::Command, time::Duration};

use dllm_tests::{init_tracing, wait_for, Cluster};
use tracing::info;

/// GET `path` on `addr` over HTTP/1.0: the status code and the body, or `None` when nothing
/// answers.
async fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n");
    s.write_all(request.as_bytes()).await.ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

/// Waits until `path` on `addr` answers `code`; returns the body.
async fn wait_code(addr: &str, path: &str, code: u16, timeout: Duration) -> String {
    wait_for(
        &format!("{path} on {addr} to answer {code}"),
        timeout,
        || async {
            get(addr, path)
                .await
                .filter(|(c, _)| *c == code)
                .map(|(_, body)| body)
        },
    )
    .await
}

/// Lints `page` with `promtool check metrics`, as CI does (Debian's `prometheus` package);
/// without promtool here, says so and checks nothing.
fn promtool_accepts(what: &str, page: &str) {
    use std::io::Write;
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        println!("promtool is not installed: {what} not linted (CI installs it)");
        return;
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(page.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool runs");
    assert!(
        out.status.success(),
        "promtool rejects the {what} page: {}{}\n{page}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
}

/// Checks `page` with a parser other than promtool (prometheus-parse) and by its `# TYPE`
/// lines: every sample belongs to a typed family, a counter's name ends in `_total`, and a
/// histogram has `_bucket` (up to `+Inf`), `_sum` and `_count` samples. Returns the parse.
fn parse_checked(what: &str, page: &str) -> prometheus_parse::Scrape {
    let lines = page.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("the page parses");
    let mut types = std::collections::BTreeMap::new();
    for line in page.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(
                types.insert(name, kind).is_none(),
                "{what}: {name} typed twice"
            );
        }
    }
    for line in page
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name = line.split(['{', ' ']).next().expect("a name");
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(f) == Some(&"histogram"))
            })
            .unwrap_or(name);
        let kind = types
            .get(family)
            .unwrap_or_else(|| panic!("{what}: {name} has no TYPE"));
        if *kind == "counter" {
            assert!(name.ends_with("_total"), "{what}: counter {name}");
        }
    }
    for (name, _) in types.iter().filter(|(_, k)| **k == "histogram") {
        for suffix in ["_bucket{", "_sum{", "_count{"] {
            assert!(
                page.contains(&format!("\n{name}{suffix}")),
                "{what}: histogram {name} has no {suffix}"
            );
        }
        assert!(
            page.contains("le=\"+Inf\""),
            "{what}: {name} has no +Inf bucket"
        );
    }
    scrape
}

/// The sample of `metric` whose labels include every pair of `labels`.
fn find<'s>(
    scrape: &'s prometheus_parse::Scrape,
    metric: &str,
    labels: &[(&str, &str)],
) -> Option<&'s prometheus_parse::Sample> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
}

/// A replica's `/metrics` passes promtool and a second parser and counts gRPC calls by
/// method and code under grpc-ecosystem's names; `/healthz` is 200; `/readyz` is 200 while
/// the replica has a leader and has applied what it knows committed, and turns 503, with a
/// reason, on a leader whose two followers are killed (no quorum), then 200 again once
/// they are back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_pages_lint_and_readiness_follows_quorum() {
    init_tracing();
    let mut cluster = Cluster::start_with_metrics(3, &[]);
    let leader = cluster.wait_leader(&[1, 2, 3]).await;
    let ports: std::collections::BTreeMap<u64, String> = cluster
        .replicas
        .iter()
        .map(|(id, r)| (*id, r.metrics.clone().expect("a metrics port")))
        .collect();
    let metrics = |id: u64| ports[&id].clone();
    let wait = Duration::from_secs(30);
    for id in [1, 2, 3] {
        wait_code(&metrics(id), "/readyz", 200, wait).await;
        let (code, _) = get(&metrics(id), "/healthz")
            .await
            .expect("healthz answers");
        assert_eq!(code, 200, "replica {id} is alive");
    }

    info!("--- the leader's page, after one unary call");
    cluster.replica_status(leader).await.expect("status");
    let (_, page) = get(&metrics(leader), "/metrics").await.expect("metrics");
    promtool_accepts("replica", &page);
    let scrape = parse_checked("replica", &page);
    let status = [
        ("grpc_type", "unary"),
        ("grpc_service", "distributed_llm.AdminService"),
        ("grpc_method", "GetReplicaStatus"),
    ];
    let ok = [status.as_slice(), &[("grpc_code", "OK")]].concat();
    assert!(
        find(&scrape, "grpc_server_handled_total", &ok).is_some(),
        "GetReplicaStatus counted as OK:\n{page}"
    );
    assert!(
        find(&scrape, "grpc_server_started_total", &status).is_some(),
        "GetReplicaStatus counted as started:\n{page}"
    );
    assert!(
        page.contains("grpc_server_handling_seconds_count{grpc_type=\"unary\",grpc_service=\"distributed_llm.AdminService\",grpc_method=\"GetReplicaStatus\"}"),
        "GetReplicaStatus timed:\n{page}"
    );
    assert!(
        find(&scrape, "distributed_llm_raft_is_leader", &[]).is_some_and(|s| matches!(
            s.value,
            prometheus_parse::Value::Gauge(v) if v == 1.0
        )),
        "the leader says it leads:\n{page}"
    );

    info!("--- the leader loses its quorum");
    let followers: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
    for id in &followers {
        cluster.replica(*id).kill();
    }
    let why = wait_code(&metrics(leader), "/readyz", 503, wait).await;
    assert!(why.starts_with("not ready: "), "a reason: {why:?}");
    info!(reason = %why.trim_end(), "the leader is not ready");
    let (code, _) = get(&metrics(leader), "/healthz").await.expect("healthz");
    assert_eq!(code, 200, "alive without a quorum");

    info!("--- the followers come back");
    for id in &followers {
        cluster.restart(*id);
    }
    for id in [1, 2, 3] {
        wait_code(&metrics(id), "/readyz", 200, wait).await;
    }
}

/// A worker with `--metrics-listen` and `--log-format json`: its `/metrics` passes promtool
/// and a second parser; its gRPC port answers `grpc.health.v1` SERVING and reflection;
/// `/readyz` is 200 once it has registered and 503 once the cluster stops answering its
/// heartbeats; every line of its log is a JSON object. The Grafana dashboard reads only
/// names these pages show.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_health_metrics_and_json_logs() {
    init_tracing();
    let mut cluster = Cluster::start_with_metrics(1, &[]);
    cluster.wait_leader(&[1]).await;
    let replica_metrics = cluster.replicas[&1].metrics.clone().expect("metrics port");
    let metrics = format!("127.0.0.1:{}", dllm_tests::free_port());
    let worker = cluster.start_worker(
        "w-observed",
        "1x24576:NVIDIA L4",
        &["--metrics-listen", &metrics, "--log-format", "json"],
    );
    let wait = Duration::from_secs(30);
    wait_code(&metrics, "/readyz", 200, wait).await;

    info!("--- /metrics");
    let ch = dllm_tests::channel(&worker.addr).await.expect("connect");
    let health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    let (_, page) = get(&metrics, "/metrics").await.expect("metrics");
    promtool_accepts("worker", &page);
    let scrape = parse_checked("worker", &page);
    assert!(
        find(
            &scrape,
            "distributed_llm_worker_gpu_memory_total_bytes",
            &[("gpu", "0")]
        )
        .is_some_and(|s| matches!(
            s.value,
            prometheus_parse::Value::Gauge(v) if v == 24576.0 * 1024.0 * 1024.0
        )),
        "the simulated GPU's memory in bytes:\n{page}"
    );

    info!("--- gRPC health and reflection on the worker's port");
    for service in ["", "distributed_llm.NodeService"] {
        let answer = health
            .clone()
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health check")
            .into_inner();
        assert_eq!(
            answer.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service:?}"
        );
    }
    let services = list_services(ch).await;
    assert!(
        services.iter().any(|s| s == "distributed_llm.NodeService"),
        "{services:?}"
    );
    let (_, page) = get(&metrics, "/metrics").await.expect("metrics");
    assert!(
        page.contains("grpc_server_handled_total{grpc_type=\"unary\",grpc_service=\"grpc.health.v1.Health\",grpc_method=\"Check\",grpc_code=\"OK\"} 2"),
        "the health checks counted:\n{page}"
    );

    let (_, replica_page) = get(&replica_metrics, "/metrics").await.expect("metrics");
    dashboard_reads_real_names(&[&page, &replica_page]);

    info!("--- the cluster goes away");
    cluster.replica(1).kill();
    let why = wait_code(&metrics, "/readyz", 503, wait).await;
    assert!(why.contains("has not answered"), "{why:?}");

    info!("--- JSON logs");
    let log = std::fs::read_to_string(cluster.dir().join("worker-w-observed.log")).expect("log");
    let mut messages = Vec::new();
    for line in log.lines().filter(|l| !l.is_empty()) {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
        assert!(value["level"].is_string(), "{line}");
        messages.push(value["message"].as_str().unwrap_or_default().to_string());
    }
    assert!(
        messages.iter().any(|m| m.starts_with("joined the cluster")),
        "{messages:?}"
    );
    assert!(!log.contains('\u{1b}'), "no colour codes in a log file");
}

/// Every metric the Grafana dashboard (`deploy/grafana/dllm.json`) queries is on one of
/// `pages`, except families that show only once they have a sample (a denial, a model, a
/// follower, a snapshot).
fn dashboard_reads_real_names(pages: &[&str]) {
    const SHOWN_LATER: &[&str] = &[
        "distributed_llm_auth_denials_total",
        "distributed_llm_worker_auth_denials_total",
        "distributed_llm_model_placed",
        "distributed_llm_raft_replication_lag_entries",
        "distributed_llm_raft_snapshot_index",
    ];
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/grafana/dllm.json");
    let text = std::fs::read_to_string(path).expect("the dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let mut queried = std::collections::BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("expr");
            let words = expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'));
            queried.extend(
                words
                    .filter(|w| w.starts_with("distributed_llm_") || w.starts_with("grpc_server_"))
                    .map(str::to_string),
            );
        }
    }
    assert!(queried.len() > 20, "{queried:?}");
    for name in queried {
        let shown = pages
            .iter()
            .any(|p| p.contains(&format!("\n{name}{{")) || p.contains(&format!("\n{name} ")));
        assert!(
            shown || SHOWN_LATER.contains(&name.as_str()),
            "the dashboard queries {name}, which no page shows"
        );
    }
}

/// The services the reflection v1 endpoint at `ch` lists.
async fn list_services(ch: tonic::transport::Channel) -> Vec<String> {
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = ServerReflectionClient::new(ch)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection")
        .into_inner();
    let answer = answers
        .message()
        .await
        .expect("answer")
        .expect("one answer");
    match answer.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("not a service list: {other:?}"),
    }
}
