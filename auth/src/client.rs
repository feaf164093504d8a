//! How every dllm client reaches a server: plaintext, or TLS against the cluster CA (with
//! its own certificate when it has one), and a JWT on every request when it has one. The
//! CLI, the TUI, workers, replicas (to each other), the benchmarks and the fault runs all
//! make their channels here.

use std::time::Duration;

use dllm_proto::client::Channel;
use tonic::transport::Endpoint;

use crate::tls::{ClientTls, Connector};

/// A client's credentials.
#[derive(Clone, Default)]
pub struct ClientAuth {
    /// TLS, when the servers use it.
    pub tls: Option<ClientTls>,
    /// `Bearer <jwt>` for every request, when the client has a token.
    pub authorization: Option<http::HeaderValue>,
}

/// Why a client's credentials cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ClientAuthError {
    /// The TLS files do not load.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The token cannot go in a header.
    #[error("--token: not a token (it must be printable ASCII)")]
    Token,
}

impl ClientAuth {
    /// Plaintext, no token.
    pub fn plaintext() -> Self {
        Self::default()
    }

    /// Credentials from the usual flags: `--tls-ca` (TLS on), `--tls-cert`/`--tls-key`
    /// (a client certificate), `--token` (a JWT).
    ///
    /// # Errors
    /// [`ClientAuthError`] naming the flag whose file or value is unusable.
    pub fn from_flags(
        ca: Option<&std::path::Path>,
        cert: Option<&std::path::Path>,
        key: Option<&std::path::Path>,
        token: Option<&str>,
    ) -> Result<Self, ClientAuthError> {
        let tls = match ca {
            Some(ca) => Some(crate::tls::client(crate::tls::TlsFiles {
                ca: ca.to_path_buf(),
                cert: cert.map(|p| p.to_path_buf()),
                key: key.map(|p| p.to_path_buf()),
            })?),
            None => None,
        };
        let authorization = match token.map(str::trim).filter(|t| !t.is_empty()) {
            Some(token) => Some(
                http::HeaderValue::from_str(&format!("Bearer {token}"))
                    .map_err(|_| ClientAuthError::Token)?,
            ),
            None => None,
        };
        Ok(Self { tls, authorization })
    }

    /// Whether this client speaks TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The endpoint for `addr` (`host:port`); TLS, when on, is made by the connector, so the
    /// URI stays `http://`.
    ///
    /// # Errors
    /// When `addr` is not a valid authority.
    pub fn endpoint(&self, addr: &str) -> Result<Endpoint, tonic::transport::Error> {
        Endpoint::from_shared(format!("http://{addr}"))
    }

    /// A channel that connects on first use (and reconnects on its own).
    pub fn connect_lazy(&self, endpoint: Endpoint) -> Channel {
        let channel = match &self.tls {
            Some(tls) => endpoint.connect_with_connector_lazy(Connector::new(tls.clone())),
            None => endpoint.connect_lazy(),
        };
        dllm_proto::client::connect_with(channel, self.authorization.clone())
    }

    /// A channel, connected now.
    ///
    /// # Errors
    /// When the server cannot be reached (or the TLS handshake fails).
    pub async fn connect(&self, endpoint: Endpoint) -> Result<Channel, tonic::transport::Error> {
        let channel = match &self.tls {
            Some(tls) => {
                endpoint
                    .connect_with_connector(Connector::new(tls.clone()))
                    .await?
            }
            None => endpoint.connect().await?,
        };
        Ok(dllm_proto::client::connect_with(
            channel,
            self.authorization.clone(),
        ))
    }

    /// [`ClientAuth::connect`] to `addr` with a connect timeout.
    ///
    /// # Errors
    /// As [`ClientAuth::connect`].
    pub async fn connect_to(
        &self,
        addr: &str,
        timeout: Duration,
    ) -> Result<Channel, tonic::transport::Error> {
        let endpoint = self.endpoint(addr)?.connect_timeout(timeout);
        self.connect(endpoint).await
    }
}
