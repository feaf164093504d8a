//! The dllm worker: a stateless agent on a GPU host.
//!
//! - [`config`]: the flags, each default written once, validated before start.
//! - [`resources`]: CPU and memory from sysinfo, GPUs from NVML (or simulated ones).
//! - [`agent`]: join, heartbeat, re-join, leave; the worker's [`agent::View`] of itself.
//! - [`api`]: the worker's own NodeService (itself, its peers, live metrics).
//! - [`peers`]: the other members, fetched from the control plane when asked.
//! - [`metrics`]: what `--metrics-listen` shows (`/metrics`) and when the worker is ready
//!   (`/readyz`).
//! - [`run`]: wires them on one listener, with health and reflection, until shutdown; `main`
//!   and tests call it alike; [`entry`]: the command line of `dllm-worker` and `dllm worker`.
//!
//! What the worker shares with a control-plane replica (the environment and TOML layers under
//! the flags, the clock, logging, signals, the `/metrics` listener) is in `dllm-util`.

pub mod agent;
pub mod api;
pub mod config;
pub mod entry;
pub mod metrics;
pub mod peers;
pub mod resources;

use std::sync::Arc;

use dllm_auth::layer::{AuthLayer, Denials, Guard};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::codec::CompressionEncoding;
use tracing::info;

/// Why a worker stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The host could not be read.
    #[error(transparent)]
    Probe(#[from] resources::ProbeError),
    /// The metrics listener could not be bound.
    #[error(transparent)]
    MetricsBind(#[from] dllm_util::net::BindError),
    /// The gRPC server failed.
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// The TLS files do not load.
    #[error(transparent)]
    Tls(#[from] dllm_auth::tls::TlsError),
    /// The credentials for the control plane do not load.
    #[error(transparent)]
    ClientAuth(#[from] dllm_auth::client::ClientAuthError),
    /// Reflection could not be set up from the descriptor sets.
    #[error("gRPC reflection setup failed: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// The service whose health the worker reports (besides the server's, "").
const NODE_SERVICE: &str = "distributed_llm.NodeService";

/// Runs the worker on `listener` until `shutdown` is cancelled; then it leaves the cluster
/// and stops serving.
///
/// # Errors
/// [`RunError`] when the host cannot be read or the server fails.
pub async fn run(
    config: config::Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let probe = resources::Probe::open(config.simulate_gpus.clone())?;
    let shared = agent::Shared::new(&config, probe);
    let denials = Denials::default();
    let (registry, grpc_metrics) = metrics::registry(shared.clone(), denials.clone());
    let metrics_task = match config.metrics_listen {
        Some(addr) => {
            let listener = dllm_util::metrics::bind(addr).await?;
            let watched = shared.clone();
            let ready: dllm_util::metrics::Readiness =
                Arc::new(move || metrics::ready_now(&watched));
            Some(tokio::spawn(dllm_util::metrics::serve(
                listener,
                Arc::new(registry),
                ready,
                shutdown.clone(),
            )))
        }
        None => None,
    };
    info!(node_id = %config.node_id, seeds = ?config.seed_nodes, "worker starting");

    let client_auth = config.client.load()?;
    let tls = config
        .security
        .tls
        .clone()
        .map(dllm_auth::tls::server)
        .transpose()?;
    if tls.is_none() && !config.listen.ip().is_loopback() {
        tracing::warn!(listen = %config.listen, "--insecure: serving plaintext with no authentication");
    }
    // The worker's own port: certificates of the cluster CA only (it verifies no tokens).
    let guard = Arc::new(Guard {
        enforce: tls.is_some(),
        trust_domain: config.security.trust_domain.clone(),
        tokens: None,
        revoked: Arc::new(|_: &str| false),
        denials: denials.clone(),
        cache: Default::default(),
    });
    let agent = tokio::spawn(agent::run(
        config,
        shared.clone(),
        client_auth,
        shutdown.clone(),
    ));
    // Transport setup, in one place. Health: SERVING while the server runs (readiness for
    // traffic from the cluster is /readyz on the metrics listener).
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status(NODE_SERVICE, tonic_health::ServingStatus::Serving)
        .await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(dllm_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let gzip = CompressionEncoding::Gzip;
    let router = tonic::transport::Server::builder()
        .trace_fn(|req| tracing::debug_span!("rpc", path = %req.uri().path()))
        .layer(dllm_util::grpc_metrics::GrpcMetricsLayer(grpc_metrics))
        .layer(dllm_util::grpc::SizeLimitLayer)
        .layer(AuthLayer(guard))
        .add_service(health)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?)
        .add_service(
            dllm_proto::pb::node_service_server::NodeServiceServer::new(api::WorkerNodeApi::new(
                shared,
                shutdown.clone(),
            ))
            .accept_compressed(gzip)
            .send_compressed(gzip),
        );
    let signal = shutdown.clone().cancelled_owned();
    let served = match tls {
        Some(tls) => {
            let incoming = dllm_auth::tls::incoming(listener, tls, denials.clone());
            router.serve_with_incoming_shutdown(incoming, signal).await
        }
        // TCP_NODELAY on accepted connections (see the control plane's server).
        None => {
            router
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                    signal,
                )
                .await
        }
    };
    // The agent leaves the cluster once shutdown is cancelled.
    let _ = agent.await;
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
    served?;
    info!("worker stopped");
    Ok(())
}
