//! The dllm worker: a stateless agent on a GPU host.
//!
//! - [`config`]: the flags, each default written once, validated before start.
//! - [`resources`]: CPU and memory from sysinfo, GPUs from NVML (or simulated ones).
//! - [`agent`]: join, heartbeat, re-join, leave; the worker's [`agent::View`] of itself.
//! - [`api`]: the worker's own NodeService (itself, its peers, live metrics).
//! - [`run`]: wires them on one listener until shutdown; `main` and tests call it alike;
//!   [`entry`]: the command line of `dllm-worker` and `dllm worker`.
//!
//! What the worker shares with a control-plane replica (the environment and TOML layers under
//! the flags, the clock, logging, signals, the `/metrics` listener) is in `dllm-util`.

pub mod agent;
pub mod api;
pub mod config;
pub mod entry;
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
}

/// The worker's Prometheus exposition: a fresh usage sample and its status in the cluster.
fn metrics_text(shared: &agent::Shared, denials: &Denials) -> String {
    let usage = shared.sample();
    let view = shared.view();
    let max = view.node.resources.as_ref().map_or(0, |r| r.max_layers);
    let mut out = String::new();
    denials.render(&mut out, "distributed_llm_worker_auth_denials_total");
    dllm_proto::metrics::write_usage(&mut out, "distributed_llm_worker_", &usage, max);
    dllm_proto::metrics::write_family(
        &mut out,
        "distributed_llm_worker_status",
        "gauge",
        "1 for the status the cluster last reported for this worker",
        [(vec![("status".to_string(), view.status.clone())], 1.0)],
    );
    out
}

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
    let metrics_task = match config.metrics_listen {
        Some(addr) => {
            let listener = dllm_util::metrics::bind(addr).await?;
            let (shared, denied) = (shared.clone(), denials.clone());
            let text = move || metrics_text(&shared, &denied);
            Some(tokio::spawn(dllm_util::metrics::serve(
                listener,
                text,
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
    // Transport setup, in one place.
    let gzip = CompressionEncoding::Gzip;
    let router = tonic::transport::Server::builder()
        .trace_fn(|req| tracing::debug_span!("rpc", path = %req.uri().path()))
        .layer(dllm_util::grpc::SizeLimitLayer)
        .layer(AuthLayer(guard))
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
