//! Reaching the cluster: the endpoints and credentials every cluster command shares, trying
//! each endpoint in turn until one answers, and when none does, saying which endpoints were
//! tried and what each said.
//!
//! Endpoints are `host:port`, `http://host:port` or `https://host:port`. The scheme only
//! says what the user expects: TLS is on exactly when `--tls-ca` is given (so `http://` with
//! `--tls-ca` still uses TLS), and `https://` without `--tls-ca` is refused rather than
//! silently sent in plaintext.

use std::{future::Future, path::PathBuf, time::Duration};

use dllm_auth::client::ClientAuth;
use dllm_proto::client::Channel;
use dllm_proto::pb::{
    admin_service_client::AdminServiceClient, discovery_service_client::DiscoveryServiceClient,
    node_service_client::NodeServiceClient, tui_service_client::TuiServiceClient,
};
use tonic::codec::CompressionEncoding;

/// The default endpoints: the cluster `dllm dev` starts.
pub const DEFAULT_ENDPOINTS: &str = "127.0.0.1:8080,127.0.0.1:8081,127.0.0.1:8082";

/// How long connecting to one endpoint may take before the next is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// The credentials flags of every command that talks to the cluster.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct CredentialFlags {
    /// The cluster CA's certificate: connect with TLS and verify servers against it.
    #[arg(long, global = true, help_heading = crate::CLUSTER_HEADING, env = "DLLM_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// This client's certificate, for mutual TLS (with --tls-key and --tls-ca).
    #[arg(long, global = true, help_heading = crate::CLUSTER_HEADING, env = "DLLM_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// This client's private key (with --tls-cert).
    #[arg(long, global = true, help_heading = crate::CLUSTER_HEADING, env = "DLLM_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// A JWT (`dllm token create`) sent with every request.
    #[arg(
        long,
        global = true,
        help_heading = crate::CLUSTER_HEADING,
        env = "DLLM_TOKEN",
        hide_env_values = true,
        value_name = "JWT"
    )]
    pub token: Option<String>,
}

/// Why the endpoint or credential flags cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FlagError {
    /// `--endpoints` is empty.
    #[error("--endpoints lists no endpoint")]
    NoEndpoint,
    /// An `https://` endpoint, but no CA to verify it with.
    #[error("--endpoints {0}: https:// needs --tls-ca (the cluster CA's certificate, `ca.crt` from `dllm certs init`)")]
    HttpsWithoutCa(String),
    /// A scheme other than http:// or https://.
    #[error("--endpoints {0}: write host:port, http://host:port or https://host:port")]
    Scheme(String),
    /// A client certificate or key without the CA to verify servers with.
    #[error("{0} needs --tls-ca (the cluster CA's certificate)")]
    NeedsCa(&'static str),
    /// The TLS files or the token cannot be used.
    #[error(transparent)]
    Auth(#[from] dllm_auth::client::ClientAuthError),
}

/// The cluster as this command reaches it: endpoints to try in order, and its credentials.
#[derive(Clone)]
pub struct Cluster {
    /// `host:port` each.
    pub endpoints: Vec<String>,
    /// TLS and token, or plaintext.
    pub auth: ClientAuth,
}

impl Cluster {
    /// From `--endpoints` and the credential flags.
    ///
    /// # Errors
    /// [`FlagError`] naming the flag that cannot be used.
    pub fn from_flags(endpoints: &str, flags: &CredentialFlags) -> Result<Self, FlagError> {
        if flags.tls_ca.is_none() {
            if flags.tls_cert.is_some() {
                return Err(FlagError::NeedsCa("--tls-cert"));
            }
            if flags.tls_key.is_some() {
                return Err(FlagError::NeedsCa("--tls-key"));
            }
        }
        let endpoints = parse_endpoints(endpoints, flags.tls_ca.is_some())?;
        let auth = ClientAuth::from_flags(
            flags.tls_ca.as_deref(),
            flags.tls_cert.as_deref(),
            flags.tls_key.as_deref(),
            flags.token.as_deref(),
        )?;
        Ok(Self { endpoints, auth })
    }

    /// Connects to one endpoint (`host:port`).
    ///
    /// # Errors
    /// What went wrong, when the endpoint is malformed or does not accept a connection (or
    /// a TLS handshake) within 2 s.
    pub async fn connect(&self, endpoint: &str) -> Result<Clients, String> {
        self.auth.check_endpoint(endpoint)?;
        let target = self
            .auth
            .endpoint(endpoint)
            .map_err(|e| chain(&e))?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(CALL_TIMEOUT);
        let channel = self
            .auth
            .connect(target)
            .await
            .map_err(|e| format!("cannot connect ({})", chain(&e)))?;
        let gz = CompressionEncoding::Gzip;
        Ok(Clients {
            node: NodeServiceClient::new(channel.clone()).accept_compressed(gz),
            discovery: DiscoveryServiceClient::new(channel.clone()).accept_compressed(gz),
            tui: TuiServiceClient::new(channel.clone()).accept_compressed(gz),
            admin: AdminServiceClient::new(channel).accept_compressed(gz),
        })
    }

    /// Runs `call` against each endpoint in turn until one gives an answer; an
    /// `UNAVAILABLE` answer (no leader there) or a failed connection moves on to the next.
    ///
    /// # Errors
    /// [`CallError`]: what every endpoint said, or the first real refusal.
    pub async fn first_answer<T, F, Fut>(&self, mut call: F) -> Result<T, CallError>
    where
        F: FnMut(Clients) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let mut tried = Vec::new();
        for endpoint in &self.endpoints {
            let clients = match self.connect(endpoint).await {
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
                        hint: self.hint(&status),
                        status,
                    })
                }
            }
        }
        Err(CallError::Unreachable(tried))
    }

    /// What to try when a server says who we are is not enough.
    fn hint(&self, status: &tonic::Status) -> &'static str {
        match status.code() {
            tonic::Code::Unauthenticated
                if !self.auth.is_tls() && self.auth.authorization.is_none() =>
            {
                " (no credentials given: see --tls-ca, --tls-cert, --tls-key and --token)"
            }
            tonic::Code::PermissionDenied => {
                " (the certificate or token's role may not do this; see `dllm certs issue --role`)"
            }
            // A plaintext client talking to a TLS port sees only a broken HTTP/2 connection.
            tonic::Code::Internal | tonic::Code::Unknown
                if !self.auth.is_tls() && status.message().contains("h2 protocol error") =>
            {
                " (is the cluster using TLS? give --tls-ca, or an https:// endpoint)"
            }
            _ => "",
        }
    }
}

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
    #[error("{endpoint}: {}{hint}", .status.message())]
    Refused {
        /// Who answered.
        endpoint: String,
        /// What it said.
        status: tonic::Status,
        /// What to try, when there is an obvious next step.
        hint: &'static str,
    },
}

/// An error and its causes on one line: tonic's transport errors say little at the top
/// ("transport error") and what happened (refused, a certificate from another CA) below.
fn chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        source = e.source();
    }
    out
}

/// Parses `--endpoints`: comma-separated `host:port`, `http://host:port` or
/// `https://host:port`, into `host:port` each. `tls` is whether `--tls-ca` was given.
///
/// # Errors
/// [`FlagError`] for an empty list, an unknown scheme, or `https://` without TLS.
pub fn parse_endpoints(value: &str, tls: bool) -> Result<Vec<String>, FlagError> {
    let mut endpoints = Vec::new();
    for raw in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let address = match raw.split_once("://") {
            None => raw,
            Some((scheme, rest)) => match scheme.to_ascii_lowercase().as_str() {
                "http" => rest,
                "https" if tls => rest,
                "https" => return Err(FlagError::HttpsWithoutCa(raw.to_string())),
                _ => return Err(FlagError::Scheme(raw.to_string())),
            },
        };
        let address = address.trim_end_matches('/');
        if address.is_empty() || address.contains('/') {
            return Err(FlagError::Scheme(raw.to_string()));
        }
        endpoints.push(address.to_string());
    }
    if endpoints.is_empty() {
        return Err(FlagError::NoEndpoint);
    }
    Ok(endpoints)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Schemes are stripped; `https://` needs `--tls-ca`; anything else is refused naming
    /// `--endpoints`.
    #[test]
    fn endpoints_take_an_optional_scheme() {
        assert_eq!(
            parse_endpoints(" a:1, http://b:2 ,,HTTP://c:3/", false).expect("plain"),
            ["a:1", "b:2", "c:3"]
        );
        assert_eq!(
            parse_endpoints("https://a:1,http://b:2,c:3", true).expect("tls"),
            ["a:1", "b:2", "c:3"],
            "with --tls-ca, http:// is TLS too"
        );
        let err = parse_endpoints("a:1,https://b:2", false).expect_err("https without CA");
        assert!(
            matches!(err, FlagError::HttpsWithoutCa(ref e) if e == "https://b:2"),
            "{err}"
        );
        assert!(err.to_string().contains("--tls-ca"), "{err}");
        for bad in ["grpc://a:1", "http://", "http://a:1/path"] {
            let err = parse_endpoints(bad, true).expect_err(bad).to_string();
            assert!(err.starts_with("--endpoints"), "{bad}: {err}");
        }
        assert!(matches!(
            parse_endpoints(" , ", true),
            Err(FlagError::NoEndpoint)
        ));
    }

    /// A certificate or key alone is refused, naming the flag; no flags is plaintext.
    #[test]
    fn credentials_need_the_ca() {
        let flags = CredentialFlags {
            tls_cert: Some("c.crt".into()),
            tls_key: Some("c.key".into()),
            ..Default::default()
        };
        let err = Cluster::from_flags("a:1", &flags).err().expect("no CA");
        assert!(
            err.to_string().starts_with("--tls-cert needs --tls-ca"),
            "{err}"
        );
        let cluster = Cluster::from_flags("a:1", &CredentialFlags::default()).expect("plain");
        assert!(!cluster.auth.is_tls() && cluster.auth.authorization.is_none());
        let flags = CredentialFlags {
            token: Some("a.b.c".into()),
            ..Default::default()
        };
        let cluster = Cluster::from_flags("a:1", &flags).expect("token");
        assert_eq!(
            cluster.auth.authorization.expect("header").to_str().ok(),
            Some("Bearer a.b.c")
        );
    }
}
