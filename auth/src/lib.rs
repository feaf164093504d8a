//! Who may call what in a dllm cluster.
//!
//! - [`flags`]: the security flags every server takes, and their validation.
//! - [`client`]: how every dllm client connects: plaintext or TLS, with a token or not.
//! - [`certs`]: the files a secure cluster needs (`dllm certs init` / `issue`): the cluster
//!   CA, certificates naming their holder's role, the token signing key pair.
//! - [`tls`]: rustls configurations for servers and clients from PEM files, re-read when the
//!   files change; the TLS acceptor loop for servers and the connector for tonic channels.
//! - [`identity`]: roles, identities, and the SPIFFE URI SAN
//!   (`spiffe://<trust-domain>/<role>/<name>`) a certificate names its holder with.
//! - [`token`]: EdDSA JWTs: signing (`dllm token create`) and verification (replicas).
//! - [`policy`]: the table of which roles may call each RPC, and the finer checks handlers
//!   make (per ExecuteCommand command, a worker acting only for itself).
//! - [`layer`]: the tower layer that authenticates every request, applies the table, and
//!   logs and counts denials.
//!
//! Loopback servers without TLS check nobody (the API reference's `grpcurl -plaintext`
//! examples and `dllm dev` work as they are); a server on any other address needs TLS or an
//! explicit `--insecure` ([`plaintext_allowed`]).

pub mod certs;
pub mod client;
pub mod flags;
pub mod identity;
pub mod layer;
pub mod policy;
pub mod tls;
pub mod token;

pub use identity::{Identity, Role};

/// The trust domain when none is configured.
pub const DEFAULT_TRUST_DOMAIN: &str = "dllm.local";

/// The wall clock in Unix seconds (token and certificate times).
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Whether a server may listen on `addr` without TLS: only on loopback, unless the operator
/// said `--insecure`.
///
/// # Errors
/// A message naming `--insecure` (and the TLS flags) when it may not.
pub fn plaintext_allowed(addr: std::net::SocketAddr, insecure: bool) -> Result<(), String> {
    if addr.ip().is_loopback() || insecure {
        Ok(())
    } else {
        Err(format!(
            "refusing to serve plaintext on {addr}, which is not a loopback address: give \
             --tls-ca, --tls-cert and --tls-key (see `dllm certs init`), or --insecure to \
             serve without TLS or authentication anyway"
        ))
    }
}
