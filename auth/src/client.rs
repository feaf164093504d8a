//! How every dllm client reaches a server: plaintext, or TLS against the cluster CA (with
//! its own certificate when it has one), and a JWT on every request when it has one. The
//! CLI, the TUI, workers, replicas (to each other), the benchmarks and the fault runs all
//! make their channels here.

use std::time::Duration;

use dllm_proto::client::Channel;
use tonic::transport::Endpoint;

use crate::{
    identity::Role,
    tls::{ClientTls, Connector},
};

/// A client's credentials.
#[derive(Clone)]
pub struct ClientAuth {
    /// TLS, when the servers use it.
    pub tls: Option<ClientTls>,
    /// `Bearer <jwt>` for every request, when the client has a token.
    pub authorization: Option<http::HeaderValue>,
    /// The roles a server's certificate may name (TLS only): a replica, unless the client
    /// also talks to workers ([`ClientAuth::serving`]).
    pub server_roles: &'static [Role],
}

impl Default for ClientAuth {
    fn default() -> Self {
        Self {
            tls: None,
            authorization: None,
            server_roles: &[Role::Replica],
        }
    }
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
    /// A token would go in plaintext to a non-loopback address.
    #[error("{0}")]
    Plaintext(String),
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
            Some(token) => {
                let mut value = http::HeaderValue::from_str(&format!("Bearer {token}"))
                    .map_err(|_| ClientAuthError::Token)?;
                // Kept out of Debug output and HPACK's dynamic table.
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        Ok(Self {
            tls,
            authorization,
            ..Self::default()
        })
    }

    /// Refuses to send a token in plaintext to anything but loopback: an endpoint that
    /// turned out to be a TLS port (or an impostor) would get it in the clear.
    ///
    /// # Errors
    /// A message naming `--tls-ca` and the endpoint.
    pub fn check_endpoint(&self, addr: &str) -> Result<(), String> {
        if self.tls.is_some() || self.authorization.is_none() {
            return Ok(());
        }
        let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if loopback {
            Ok(())
        } else {
            Err(format!(
                "{addr}: refusing to send a token without TLS to an address that is not loopback; give --tls-ca"
            ))
        }
    }

    /// The same credentials, for servers whose certificates name one of `roles` (a client of
    /// a worker's own port expects a worker).
    pub fn serving(mut self, roles: &'static [Role]) -> Self {
        self.server_roles = roles;
        self
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
            Some(tls) => {
                endpoint.connect_with_connector_lazy(Connector::new(tls.clone(), self.server_roles))
            }
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
                    .connect_with_connector(Connector::new(tls.clone(), self.server_roles))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A token goes in plaintext only to loopback; with TLS, or without a token, anywhere.
    #[test]
    fn a_token_never_goes_in_plaintext_off_loopback() {
        let token = ClientAuth::from_flags(None, None, None, Some("t")).expect("auth");
        for ok in ["127.0.0.1:8080", "localhost:8080", "[::1]:8080"] {
            assert!(token.check_endpoint(ok).is_ok(), "{ok}");
        }
        for refused in ["cp1:8080", "10.0.0.1:8080", "[2001:db8::1]:8080"] {
            let e = token.check_endpoint(refused).expect_err(refused);
            assert!(e.contains("--tls-ca"), "{e}");
        }
        assert!(ClientAuth::plaintext().check_endpoint("cp1:8080").is_ok());
        let header = token.authorization.expect("a header");
        assert!(header.is_sensitive(), "kept out of Debug and HPACK tables");
    }
}
