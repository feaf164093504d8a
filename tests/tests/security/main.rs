//! Security across processes: real replicas with mutual TLS and tokens (`Cluster::start_secure`)
//! and the callers a cluster meets. Who may call what (the roles table, a worker acting only
//! for its own node), token revocation and forgery, what a TLS port does with plaintext or a
//! certificate of another CA, certificate rotation without a restart, a restarted replica,
//! the refusal to serve plaintext off loopback, and the message size limit.

use std::{
    collections::{BTreeMap, BTreeSet},
    process::{Command, Stdio},
    sync::Arc,
    time::Duration,
};

use dllm_auth::{
    certs,
    client::ClientAuth,
    policy::{self, Access},
    tls::TlsFiles,
    Role,
};
use dllm_proto::{
    pb::{self, discovery_service_client::DiscoveryServiceClient},
    raft::{raft_service_client::RaftServiceClient, RaftPayload},
};
use dllm_tests::{
    binary, cert_hosts, channel, channel_with, clients, clients_with, free_port, init_tracing,
    join_request, replica_status, unix_now, wait_for, AuthChannel, ChildProcess, Clients, Cluster,
    TRUST_DOMAIN,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::{Code, Status};
use tracing::info;

mod roles;
use roles::Probe;
mod tokens;
mod transport;

/// A secure one-replica cluster serving `/metrics`, once it leads: the cluster, the metrics
/// address and the replica's address.
async fn one_secure_replica() -> (Cluster, String, String) {
    let metrics = format!("127.0.0.1:{}", free_port());
    let cluster = Cluster::start_secure(1, &["--metrics-listen", &metrics]);
    cluster.wait_leader(&[1]).await;
    let addr = cluster.addr(1);
    (cluster, metrics, addr)
}

/// How long a token made for a test lives.
const HOUR: Duration = Duration::from_secs(3600);

/// GET /metrics on `addr`: the auth denial counters by reason.
async fn denials(addr: &str) -> BTreeMap<String, u64> {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to /metrics");
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .expect("request /metrics");
    let mut body = String::new();
    s.read_to_string(&mut body).await.expect("read /metrics");
    body.lines()
        .filter_map(|l| l.strip_prefix("distributed_llm_auth_denials_total{reason=\""))
        .filter_map(|l| {
            let (reason, rest) = l.split_once("\"}")?;
            Some((reason.to_string(), rest.trim().parse::<f64>().ok()? as u64))
        })
        .collect()
}

/// Waits until every reason in `more` has been counted at least that many times more than
/// in `before`.
async fn wait_denials(
    metrics: &str,
    before: &BTreeMap<String, u64>,
    more: &[(&str, u64)],
) -> BTreeMap<String, u64> {
    wait_for(
        &format!("/metrics to count the denials {more:?} (before: {before:?})"),
        Duration::from_secs(10),
        || async move {
            let now = denials(metrics).await;
            more.iter()
                .all(|(r, n)| now.get(*r).copied().unwrap_or(0) >= before.get(*r).unwrap_or(&0) + n)
                .then_some(now)
        },
    )
    .await
}

/// A second cluster's files (another CA and token key, the same trust domain), in a
/// folder of its own.
fn other_cluster() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    certs::init(dir.path(), &cert_hosts(), 1, TRUST_DOMAIN).expect("another cluster's certs");
    dir
}
