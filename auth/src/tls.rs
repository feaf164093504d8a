//! TLS with rustls (ring; no OpenSSL) for every dllm server and client, with the CA,
//! certificate and key files re-read when they change: each new handshake uses the files as
//! they are then (checked at most once a second), so rotating a certificate needs no restart.
//! Connections already open keep the certificate they were made with.
//!
//! Servers ask every client for a certificate signed by the cluster CA but also accept a
//! client without one, which must then present a JWT (see [`crate::layer`]). Clients always
//! verify the server against the CA, and present their own certificate when they have one.

use std::{
    path::{Path, PathBuf},
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant, SystemTime},
};

use futures::Stream;
use hyper_util::rt::TokioIo;
use rustls::{server::WebPkiClientVerifier, ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};

use crate::identity::Role;

/// How long a TLS handshake may take before the connection is dropped (a handshake takes
/// milliseconds; this bounds how long a connection that sends nothing holds a slot).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// How many handshakes a server runs at once; further connections wait in the kernel's
/// accept queue, so a flood of connections costs bounded memory and CPU. Large enough that
/// an idle-connection flood must hold thousands of sockets open to stall accepting (each for
/// at most [`HANDSHAKE_TIMEOUT`]); a per-source limit would be the next step.
pub const MAX_HANDSHAKES: usize = 1024;

/// How often the files are looked at (their modification time and size), at most.
const RECHECK: Duration = Duration::from_secs(1);

/// Why TLS could not be set up from the files.
#[derive(Debug, thiserror::Error)]
#[error("{flag} {path}: {reason}")]
pub struct TlsError {
    /// The flag that names the file.
    pub flag: &'static str,
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub reason: String,
}

/// The PEM files of one side of a TLS connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The cluster CA's certificate (`--tls-ca`).
    pub ca: PathBuf,
    /// This process's certificate chain (`--tls-cert`); optional for a client with a token.
    pub cert: Option<PathBuf>,
    /// Its private key (`--tls-key`).
    pub key: Option<PathBuf>,
}

impl TlsFiles {
    fn paths(&self) -> Vec<&Path> {
        let mut paths = vec![self.ca.as_path()];
        paths.extend(self.cert.as_deref());
        paths.extend(self.key.as_deref());
        paths
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca: &Path) -> Result<RootCertStore, TlsError> {
    let err = |reason: String| TlsError {
        flag: "--tls-ca",
        path: ca.to_path_buf(),
        reason,
    };
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no certificate in the file".into()));
    }
    for cert in certs {
        roots.add(cert).map_err(|e| err(e.to_string()))?;
    }
    Ok(roots)
}

type Pair = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

fn identity(cert: &Path, key: &Path) -> Result<Pair, TlsError> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError {
            flag: "--tls-cert",
            path: cert.to_path_buf(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError {
            flag: "--tls-cert",
            path: cert.to_path_buf(),
            reason: "no certificate in the file".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError {
        flag: "--tls-key",
        path: key.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok((certs, key))
}

/// The server side's rustls configuration from `files` (which must name a certificate and
/// key).
///
/// # Errors
/// [`TlsError`] naming the file that is missing, unreadable or does not fit.
pub fn server_config(files: &TlsFiles) -> Result<ServerConfig, TlsError> {
    let (Some(cert), Some(key)) = (&files.cert, &files.key) else {
        return Err(TlsError {
            flag: "--tls-cert",
            path: PathBuf::new(),
            reason: "a server needs --tls-cert and --tls-key with --tls-ca".into(),
        });
    };
    let roots = Arc::new(roots(&files.ca)?);
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError {
            flag: "--tls-ca",
            path: files.ca.clone(),
            reason: e.to_string(),
        })?;
    let (certs, key_der) = identity(cert, key)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError {
            flag: "--tls-cert",
            path: cert.clone(),
            reason: e.to_string(),
        })?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key_der)
        .map_err(|e| TlsError {
            flag: "--tls-key",
            path: key.clone(),
            reason: format!("does not fit the certificate: {e}"),
        })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The client side's rustls configuration from `files`.
///
/// # Errors
/// [`TlsError`] naming the file that is missing, unreadable or does not fit.
pub fn client_config(files: &TlsFiles) -> Result<ClientConfig, TlsError> {
    let roots = roots(&files.ca)?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError {
            flag: "--tls-ca",
            path: files.ca.clone(),
            reason: e.to_string(),
        })?
        .with_root_certificates(roots);
    let mut config = match (&files.cert, &files.key) {
        (Some(cert), Some(key)) => {
            let (certs, key_der) = identity(cert, key)?;
            builder
                .with_client_auth_cert(certs, key_der)
                .map_err(|e| TlsError {
                    flag: "--tls-key",
                    path: key.clone(),
                    reason: format!("does not fit the certificate: {e}"),
                })?
        }
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), None) | (None, Some(cert)) => {
            return Err(TlsError {
                flag: "--tls-cert",
                path: cert.clone(),
                reason: "--tls-cert and --tls-key go together".into(),
            })
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A configuration rebuilt from its files whenever they change.
pub struct Reloading<T> {
    files: TlsFiles,
    build: fn(&TlsFiles) -> Result<T, TlsError>,
    current: Mutex<Current<T>>,
}

struct Current<T> {
    stamp: Vec<Option<(SystemTime, u64)>>,
    checked: Instant,
    config: Arc<T>,
}

fn stamp(files: &TlsFiles) -> Vec<Option<(SystemTime, u64)>> {
    files
        .paths()
        .into_iter()
        .map(|p| {
            let m = std::fs::metadata(p).ok()?;
            Some((m.modified().ok()?, m.len()))
        })
        .collect()
}

impl<T> Reloading<T> {
    /// Loads the configuration now.
    ///
    /// # Errors
    /// [`TlsError`] when the files do not make a configuration.
    pub fn load(
        files: TlsFiles,
        build: fn(&TlsFiles) -> Result<T, TlsError>,
    ) -> Result<Self, TlsError> {
        let stamp = stamp(&files);
        let config = Arc::new(build(&files)?);
        Ok(Self {
            files,
            build,
            current: Mutex::new(Current {
                stamp,
                checked: Instant::now(),
                config,
            }),
        })
    }

    /// The configuration for a new handshake: rebuilt first if the files changed. Files
    /// caught mid-rotation (a key that does not fit its certificate yet) keep the previous
    /// configuration until they make a whole one.
    pub fn current(&self) -> Arc<T> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if current.checked.elapsed() >= RECHECK {
            current.checked = Instant::now();
            let now = stamp(&self.files);
            if now != current.stamp {
                match (self.build)(&self.files) {
                    Ok(config) => {
                        tracing::info!(files = ?self.files, "TLS files changed; new handshakes use them");
                        current.config = Arc::new(config);
                        current.stamp = now;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "TLS files changed but do not load; keeping the previous ones")
                    }
                }
            }
        }
        current.config.clone()
    }
}

/// A server's TLS: its configuration, re-read on change.
pub type ServerTls = Arc<Reloading<ServerConfig>>;
/// A client's TLS: its configuration, re-read on change.
pub type ClientTls = Arc<Reloading<ClientConfig>>;

/// Loads a server's TLS from its files.
///
/// # Errors
/// As [`server_config`].
pub fn server(files: TlsFiles) -> Result<ServerTls, TlsError> {
    Reloading::load(files, server_config).map(Arc::new)
}

/// Loads a client's TLS from its files.
///
/// # Errors
/// As [`client_config`].
pub fn client(files: TlsFiles) -> Result<ClientTls, TlsError> {
    Reloading::load(files, client_config).map(Arc::new)
}

/// A TLS connection a server accepted.
pub type TlsStream = tokio_rustls::server::TlsStream<TcpStream>;

/// The connections `listener` accepts, after their TLS handshake (with TCP_NODELAY, each
/// handshake on its own task, at most [`HANDSHAKE_TIMEOUT`] long, at most
/// [`MAX_HANDSHAKES`] at a time). A failed handshake
/// (plaintext on this port, a certificate from another CA, an expired one) drops that
/// connection, is logged at debug and counted in `failed` (`tls_handshake`,
/// `tls_handshake_timeout`), and the server goes on. Ends when the returned stream is
/// dropped.
pub fn incoming(
    listener: TcpListener,
    tls: ServerTls,
    failed: crate::layer::Denials,
) -> impl Stream<Item = Result<TlsStream, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let permit = tokio::select! {
                () = tx.closed() => return,
                permit = handshakes.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
            };
            let accepted = tokio::select! {
                () = tx.closed() => return,
                accepted = listener.accept() => accepted,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
            let (tx, failed) = (tx.clone(), failed.clone());
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
                drop(permit);
                match handshake {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        failed.count("tls_handshake");
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        failed.count("tls_handshake_timeout");
                    }
                }
            });
        }
    });
    tokio_stream_from(rx)
}

fn tokio_stream_from<T>(mut rx: tokio::sync::mpsc::Receiver<T>) -> impl Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// A tonic connector that dials TCP and makes a TLS connection with the client's current
/// configuration, verifying the server's name (host or IP) against the CA, and then that
/// the server's certificate names one of the roles expected of it (a replica for the
/// control plane): a worker's certificate, valid for its own host and loopback, cannot pose
/// as a replica.
#[derive(Clone)]
pub struct Connector {
    tls: ClientTls,
    server_roles: &'static [Role],
}

impl Connector {
    /// A connector using `tls` to servers whose certificates name one of `server_roles`.
    pub fn new(tls: ClientTls, server_roles: &'static [Role]) -> Self {
        Self { tls, server_roles }
    }
}

/// The role the server's certificate (the first of `certs`) names, in any trust domain:
/// the chain was verified against the cluster CA already, which is what ties it to the
/// cluster.
fn server_role(certs: Option<&[CertificateDer<'_>]>) -> Result<Role, String> {
    let der = certs
        .and_then(|c| c.first())
        .ok_or("the server sent no certificate")?;
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("unreadable server certificate: {e}"))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("unreadable subject alternative names: {e}"))?
        .ok_or("the server certificate has no subject alternative name")?;
    san.value
        .general_names
        .iter()
        .find_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) => {
                let domain = uri.strip_prefix("spiffe://")?.split('/').next()?;
                crate::identity::parse_spiffe(uri, domain).map(|(role, _)| role)
            }
            _ => None,
        })
        .ok_or_else(|| "the server certificate names no spiffe://<domain>/<role>/<name>".into())
}

/// Refuses a server whose certificate does not name one of `roles`.
fn check_server_role(
    certs: Option<&[CertificateDer<'_>]>,
    roles: &[Role],
) -> Result<(), std::io::Error> {
    let refused = |m: String| std::io::Error::new(std::io::ErrorKind::PermissionDenied, m);
    match server_role(certs) {
        Ok(role) if roles.contains(&role) => Ok(()),
        Ok(role) => Err(refused(format!(
            "the server's certificate is a {role}'s, not a {}'s",
            crate::policy::names(roles)
        ))),
        Err(e) => Err(refused(e)),
    }
}

impl tower::Service<http::Uri> for Connector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let (config, roles) = (self.tls.current(), self.server_roles);
        Box::pin(async move {
            let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
            let host = uri
                .host()
                .ok_or_else(|| invalid(format!("{uri}: no host")))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().unwrap_or(443);
            let name = ServerName::try_from(host.clone())
                .map_err(|e| invalid(format!("{host}: not a server name: {e}")))?;
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            check_server_role(tls.get_ref().1.peer_certificates(), roles)?;
            Ok(TokioIo::new(tls))
        })
    }
}
