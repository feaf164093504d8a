//! Transport setup, in one place: the one gRPC server of a replica with every service on one
//! port, compression, reflection, health, and the request hook where authentication will go.

use std::{future::Future, pin::Pin, sync::Arc};

use dllm_auth::layer::{AuthLayer, Denials, Guard};

use dllm_proto::{pb, raft::raft_service_server::RaftServiceServer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::codec::CompressionEncoding;
use tonic_health::ServingStatus;
use tracing::{info, warn};

use crate::{
    api::{AdminApi, DiscoveryApi, NodeApi, RaftApi, TuiApi},
    config::Config,
    network::{MAX_RAFT_MESSAGE_BYTES, PEER_KEEPALIVE},
    observability,
    replica::{Replica, ShutdownError, StartError},
};

/// Why a replica stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// It could not start.
    #[error(transparent)]
    Start(#[from] StartError),
    /// The gRPC server failed.
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// Reflection could not be set up from the descriptor sets.
    #[error("gRPC reflection setup failed: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The replica did not stop cleanly.
    #[error(transparent)]
    Shutdown(#[from] ShutdownError),
    /// The metrics listener could not be bound.
    #[error(transparent)]
    MetricsBind(#[from] dllm_util::net::BindError),
    /// The TLS files do not load.
    #[error(transparent)]
    Tls(#[from] dllm_auth::tls::TlsError),
    /// A `--jwt-public-key` file does not load.
    #[error("--jwt-public-key {0}")]
    JwtKey(String),
}

/// A verifier of client tokens signed by any of `keys` (PEM files).
fn token_verifier(
    trust_domain: &str,
    keys: &[std::path::PathBuf],
) -> Result<dllm_auth::token::Verifier, RunError> {
    let pems = keys
        .iter()
        .map(|path| {
            std::fs::read(path).map_err(|e| RunError::JwtKey(format!("{}: {e}", path.display())))
        })
        .collect::<Result<Vec<_>, _>>()?;
    dllm_auth::token::Verifier::new(trust_domain, &pems).map_err(RunError::JwtKey)
}

/// Services whose health follows the replica's: SERVING while a leader is known.
const HEALTH_SERVICES: &[&str] = &[
    "",
    "distributed_llm.NodeService",
    "distributed_llm.DiscoveryService",
    "distributed_llm.TUIService",
    "distributed_llm.AdminService",
];

/// Keeps `grpc.health.v1` in step with leadership: NOT_SERVING while no leader is known.
async fn track_health(replica: Arc<Replica>, reporter: tonic_health::server::HealthReporter) {
    let mut metrics = replica.raft.metrics();
    let mut lost = replica.leader_lost();
    let stop = replica.stopping();
    let mut last = None;
    loop {
        let status = if metrics.borrow().current_leader.is_some() && !*lost.borrow() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        if last != Some(status) {
            for service in HEALTH_SERVICES {
                reporter.set_service_status(*service, status).await;
            }
            last = Some(status);
        }
        tokio::select! {
            () = stop.cancelled() => return,
            changed = metrics.changed() => if changed.is_err() { return },
            changed = lost.changed() => if changed.is_err() { return },
        }
    }
}

/// Runs a replica on `listener` until `shutdown` is cancelled, then stops accepting, drains
/// in-flight requests for up to the configured shutdown timeout, shuts Raft down and flushes
/// the store.
///
/// # Errors
/// [`RunError`] when the replica cannot start, the server fails, or shutdown is not clean.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let drain = config.shutdown_timeout;
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(dllm_util::metrics::bind(addr).await?),
        None => None,
    };
    let security = config.security.clone();
    let tls = security
        .tls
        .clone()
        .map(dllm_auth::tls::server)
        .transpose()?;
    let tokens = match config.jwt_public_keys.as_slice() {
        [] => None,
        keys => Some(token_verifier(&security.trust_domain, keys)?),
    };
    if tls.is_none() && !config.listen.ip().is_loopback() {
        warn!(listen = %config.listen, "--insecure: serving plaintext with no authentication; anyone who reaches this port can change the cluster");
    }
    let replica = Replica::start(config).await?;
    let denials = Denials::default();
    let revoked = {
        let state = replica.local_state().clone();
        Arc::new(move |jti: &str| state.read(|s| s.revoked_tokens.contains_key(jti)))
    };
    let guard = Arc::new(Guard {
        enforce: tls.is_some(),
        trust_domain: security.trust_domain.clone(),
        tokens,
        revoked,
        denials: denials.clone(),
        cache: Default::default(),
    });
    let (registry, grpc_metrics) = observability::registry(replica.clone(), denials.clone());
    if let Some(listener) = metrics_listener {
        let shown = replica.clone();
        let ready: dllm_util::metrics::Readiness =
            Arc::new(move || observability::readiness(&shown));
        replica.spawn(dllm_util::metrics::serve(
            listener,
            Arc::new(registry),
            ready,
            shutdown.clone(),
        ));
    }
    info!(
        id = replica.id,
        listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        "replica serving"
    );

    let (reporter, health) = tonic_health::server::health_reporter();
    replica.spawn(track_health(replica.clone(), reporter));

    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(dllm_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let gzip = CompressionEncoding::Gzip;
    let router = tonic::transport::Server::builder()
        // Pings on every connection, so that a peer gone silent (a partition, a host that
        // died without closing its connections) ends the long-lived Raft streams it held.
        .http2_keepalive_interval(Some(PEER_KEEPALIVE))
        .http2_keepalive_timeout(Some(PEER_KEEPALIVE))
        // Every request passes here: metrics, the size-limit status, then authentication
        // and roles (`dllm_auth::layer`).
        .trace_fn(|req| tracing::debug_span!("rpc", path = %req.uri().path()))
        .layer(dllm_util::grpc_metrics::GrpcMetricsLayer(grpc_metrics))
        .layer(dllm_util::grpc::SizeLimitLayer)
        .layer(AuthLayer(guard))
        .add_service(health)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?)
        .add_service(
            pb::node_service_server::NodeServiceServer::new(NodeApi::new(
                replica.clone(),
                shutdown.clone(),
            ))
            .accept_compressed(gzip)
            .send_compressed(gzip),
        )
        .add_service(
            pb::discovery_service_server::DiscoveryServiceServer::new(DiscoveryApi::new(
                replica.clone(),
            ))
            .accept_compressed(gzip)
            .send_compressed(gzip),
        )
        .add_service(
            pb::tui_service_server::TuiServiceServer::new(TuiApi::new(
                replica.clone(),
                shutdown.clone(),
            ))
            .accept_compressed(gzip)
            .send_compressed(gzip),
        )
        .add_service(
            pb::admin_service_server::AdminServiceServer::new(AdminApi::new(replica.clone()))
                .accept_compressed(gzip)
                .send_compressed(gzip),
        )
        .add_service(
            RaftServiceServer::new(RaftApi::new(replica.clone(), shutdown.clone()))
                .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES),
        );

    // Accepted connections get TCP_NODELAY here: Server::tcp_nodelay only applies to
    // listeners tonic binds itself, and without it small answers wait out delayed ACKs
    // (a 40 ms tail on every request path).
    let signal = shutdown.clone().cancelled_owned();
    let serve: Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>> = match tls
    {
        Some(tls) => {
            let incoming = dllm_auth::tls::incoming(listener, tls, denials.clone());
            Box::pin(router.serve_with_incoming_shutdown(incoming, signal))
        }
        None => Box::pin(router.serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            signal,
        )),
    };
    let mut serve = serve;
    tokio::select! {
        result = &mut serve => result?,
        _ = shutdown.cancelled() => {
            info!(?drain, "shutting down: no new connections, draining in-flight requests");
            match tokio::time::timeout(drain, &mut serve).await {
                Ok(result) => result?,
                Err(_) => warn!(?drain, "requests still in flight after the drain timeout; stopping anyway"),
            }
        }
    }
    replica.shutdown(drain).await?;
    info!("replica stopped cleanly");
    Ok(())
}
