//! Binding a listener, with an error that says which flag asked for the address.

use std::net::SocketAddr;

use tokio::net::TcpListener;

/// A listener that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("--{flag} {addr}: cannot bind: {source}")]
pub struct BindError {
    /// The flag that named the address, e.g. `metrics-listen`.
    pub flag: &'static str,
    /// The address.
    pub addr: SocketAddr,
    /// What the OS said.
    pub source: std::io::Error,
}

/// Binds `addr`, which the flag `--{flag}` set.
///
/// # Errors
/// [`BindError`] naming the flag when the address is taken or not this host's.
pub async fn bind(flag: &'static str, addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { flag, addr, source })
}
