//! Reaching the cluster: try each endpoint in turn until one answers, and when none does,
//! say which endpoints were tried and what each said.

use std::{future::Future, time::Duration};

use dllm_proto::client::Channel;
use dllm_proto::pb::{
    admin_service_client::AdminServiceClient, discovery_service_client::DiscoveryServiceClient,
    node_service_client::NodeServiceClient, tui_service_client::TuiServiceClient,
};
use tonic::codec::CompressionEncoding;

/// The default endpoints: the cluster `dllm dev` starts.
pub const DEFAULT_ENDPOINTS: &str = "127.0.0.1:8080,127.0.0.1:8081,127.0.0.1:8082";

/// Clients of every service on one endpoint.
#[derive(Clone)]
pub struct Clients {
    /// NodeService.
    pub node: NodeServiceClient<Channel>,
    /// DiscoveryService.
    pub discovery: DiscoveryServiceClient<Channel>,
    /// TUIService.
    pub tui: TuiServiceClient<Channel>,
    /// AdminService.
    pub admin: AdminServiceClient<Channel>,
}

/// Why a call to the cluster failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No endpoint answered (each one with what it said).
    #[error("no control-plane endpoint answered:\n{}", .0.iter().map(|(e, why)| format!("  {e}: {why}")).collect::<Vec<_>>().join("\n"))]
    Unreachable(Vec<(String, String)>),
    /// An endpoint answered with an error.
    #[error("{endpoint}: {}", .status.message())]
    Refused {
        /// Who answered.
        endpoint: String,
        /// What it said.
        status: tonic::Status,
    },
}

/// Connects to `endpoint` (host:port).
///
/// # Errors
/// When the endpoint is malformed or does not accept a connection within 2 s.
pub async fn connect(endpoint: &str) -> Result<Clients, String> {
    let channel = dllm_proto::client::connect(
        tonic::transport::Channel::from_shared(format!("http://{endpoint}"))
            .map_err(|e| e.to_string())?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(15))
            .connect()
            .await
            .map_err(|e| format!("cannot connect ({e})"))?,
    );
    let gz = CompressionEncoding::Gzip;
    Ok(Clients {
        node: NodeServiceClient::new(channel.clone()).accept_compressed(gz),
        discovery: DiscoveryServiceClient::new(channel.clone()).accept_compressed(gz),
        tui: TuiServiceClient::new(channel.clone()).accept_compressed(gz),
        admin: AdminServiceClient::new(channel).accept_compressed(gz),
    })
}

/// Runs `call` against each endpoint in turn until one gives an answer; an `UNAVAILABLE`
/// answer (no leader there) or a failed connection moves on to the next.
///
/// # Errors
/// [`CallError`]: what every endpoint said, or the first real refusal.
pub async fn first_answer<T, F, Fut>(endpoints: &[String], mut call: F) -> Result<T, CallError>
where
    F: FnMut(Clients) -> Fut,
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    let mut tried = Vec::new();
    for endpoint in endpoints {
        let clients = match connect(endpoint).await {
            Ok(c) => c,
            Err(why) => {
                tried.push((endpoint.clone(), why));
                continue;
            }
        };
        match call(clients).await {
            Ok(value) => return Ok(value),
            Err(status) if status.code() == tonic::Code::Unavailable => tried.push((
                endpoint.clone(),
                format!("unavailable: {}", status.message()),
            )),
            Err(status) => {
                return Err(CallError::Refused {
                    endpoint: endpoint.clone(),
                    status,
                })
            }
        }
    }
    Err(CallError::Unreachable(tried))
}

/// Parses `host:port,host:port`.
pub fn parse_endpoints(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}
