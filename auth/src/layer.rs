//! The tower layer every dllm gRPC server puts in front of its services: it finds who the
//! caller is (the client certificate's SPIFFE identity, or a JWT in `authorization: Bearer`),
//! checks the roles table, and either passes the request on with a [`Caller`] in its
//! extensions or answers `UNAUTHENTICATED` / `PERMISSION_DENIED` itself. Every denial is
//! logged (who, which RPC, why; never the token) and counted by reason.

use std::{
    collections::BTreeMap,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use tonic::{transport::server::TcpConnectInfo, Status};

use crate::{
    identity::{self, Identity, Via},
    policy::{self, Access, Caller},
    token::{TokenError, Verifier},
    unix_now,
};

/// Denials by reason, for the servers' metrics.
#[derive(Clone, Debug, Default)]
pub struct Denials(Arc<Mutex<BTreeMap<&'static str, u64>>>);

impl Denials {
    /// Counts one denial (or failed handshake) for `reason`.
    pub fn count(&self, reason: &'static str) {
        *self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(reason)
            .or_default() += 1;
    }

    /// Encodes the counter family `name` (shown as `name_total`) by `reason`.
    ///
    /// # Errors
    /// When the encoder's writer fails.
    pub fn write(
        &self,
        encoder: &mut prometheus_client::encoding::DescriptorEncoder,
        name: &str,
    ) -> std::fmt::Result {
        dllm_util::metrics::write_counters(
            encoder,
            name,
            "Requests and TLS handshakes refused, by reason",
            self.snapshot()
                .into_iter()
                .map(|(reason, n)| (vec![("reason", reason.to_string())], n as f64)),
        )
    }

    /// Every reason seen so far with its count.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(r, n)| (*r, *n))
            .collect()
    }
}

/// Identities already proven, by the SHA-256 of the credential (a token, or a certificate
/// the TLS handshake verified): a worker sends the same token or certificate with every
/// heartbeat, and an EdDSA verification or an X.509 parse per request would cost the
/// replicas more than the heartbeat itself. An entry ends with its token or certificate; the cache
/// is emptied when it reaches [`IdentityCache::CAPACITY`] entries. Revocation is checked on
/// every request, cached or not.
#[derive(Default)]
pub struct IdentityCache(Mutex<std::collections::HashMap<[u8; 32], Proven>>);

/// A proven identity, and until when (Unix seconds: the token's `exp`, the certificate's
/// end of validity).
type Proven = (Identity, Option<u64>);

impl IdentityCache {
    /// Most identities kept.
    pub const CAPACITY: usize = 200_000;

    fn key(credential: &[u8]) -> [u8; 32] {
        let digest = ring::digest::digest(&ring::digest::SHA256, credential);
        let mut key = [0u8; 32];
        key.copy_from_slice(digest.as_ref());
        key
    }

    fn get(&self, key: &[u8; 32], now: u64) -> Option<Identity> {
        let cache = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match cache.get(key) {
            Some((id, until)) if until.is_none_or(|u| now < u) => Some(id.clone()),
            _ => None,
        }
    }

    fn put(&self, key: [u8; 32], id: Identity, until: Option<u64>) {
        let mut cache = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= Self::CAPACITY {
            cache.clear();
        }
        cache.insert(key, (id, until));
    }
}

/// Whether a token id has been revoked (the control plane answers from its replicated
/// state; a worker has no revocations of its own).
pub type Revoked = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// What a server checks callers with.
pub struct Guard {
    /// Off: every caller is [`Caller::Unchecked`] (plaintext on loopback, or `--insecure`).
    pub enforce: bool,
    /// The trust domain client certificates must name.
    pub trust_domain: String,
    /// Token verification; `None`: tokens are refused.
    pub tokens: Option<Verifier>,
    /// Revoked token ids.
    pub revoked: Revoked,
    /// Denials by reason.
    pub denials: Denials,
    /// Identities already proven.
    pub cache: IdentityCache,
}

/// Why a request was denied: the status, and the reason label for metrics.
struct Denied(Status, &'static str);

impl Guard {
    fn caller<B>(&self, request: &http::Request<B>) -> Result<Identity, Denied> {
        if let Some(value) = request.headers().get(http::header::AUTHORIZATION) {
            let token = value
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .ok_or_else(|| {
                    Denied(
                        Status::unauthenticated("authorization: expected `Bearer <token>`"),
                        "token_malformed",
                    )
                })?;
            let Some(verifier) = &self.tokens else {
                return Err(Denied(
                    Status::unauthenticated("this server accepts no tokens (no --jwt-public-key)"),
                    "token_not_accepted",
                ));
            };
            let token = token.trim();
            let key = IdentityCache::key(token.as_bytes());
            let id = match self.cache.get(&key, unix_now()) {
                Some(id) => id,
                None => {
                    let (id, exp) = verifier
                        .verify_until(token)
                        .map_err(|e| Denied(Status::unauthenticated(e.to_string()), e.label()))?;
                    self.cache.put(key, id.clone(), Some(exp));
                    id
                }
            };
            if let Via::Token { jti } = &id.via {
                if (self.revoked)(jti) {
                    let e = TokenError::Revoked;
                    return Err(Denied(Status::unauthenticated(e.to_string()), e.label()));
                }
            }
            return Ok(id);
        }
        let certs = request
            .extensions()
            .get::<tonic::transport::server::TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|info| info.peer_certs());
        match certs.as_deref().and_then(|c| c.first()) {
            Some(cert) => {
                // A connection outlives the handshake that verified its certificate: the
                // identity ends when the certificate does, whatever the connection does.
                let key = IdentityCache::key(cert.as_ref());
                if let Some(id) = self.cache.get(&key, unix_now()) {
                    return Ok(id);
                }
                let (id, not_after) = identity::certificate_identity(cert, &self.trust_domain)
                    .map_err(|e| Denied(Status::unauthenticated(e), "certificate_identity"))?;
                if unix_now() >= not_after {
                    return Err(Denied(
                        Status::unauthenticated("the client certificate has expired"),
                        "certificate_expired",
                    ));
                }
                self.cache.put(key, id.clone(), Some(not_after));
                Ok(id)
            }
            None => Err(Denied(
                Status::unauthenticated(
                    "no credentials: present a client certificate of this cluster or `authorization: Bearer <token>`",
                ),
                "no_credentials",
            )),
        }
    }

    /// The caller of `request`, or why it may not call its method.
    fn check<B>(&self, request: &http::Request<B>) -> Result<Caller, Denied> {
        if !self.enforce {
            return Ok(Caller::Unchecked);
        }
        let path = request.uri().path();
        let access = policy::access(path);
        if access == Some(Access::Public) {
            return Ok(Caller::Unchecked);
        }
        let id = self.caller(request)?;
        match access {
            Some(Access::Roles(roles)) if roles.contains(&id.role) => {
                Ok(Caller::Known(id, self.denials.clone()))
            }
            Some(Access::Roles(roles)) => Err(Denied(
                Status::permission_denied(format!(
                    "{path} needs the role {}; {} has {}",
                    policy::names(roles),
                    id.name,
                    id.role
                )),
                "role",
            )),
            _ => Err(Denied(
                Status::permission_denied(format!("{path} is not an RPC of this server")),
                "unknown_rpc",
            )),
        }
    }
}

/// Puts a [`Guard`] in front of a server's services.
#[derive(Clone)]
pub struct AuthLayer(pub Arc<Guard>);

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            guard: self.0.clone(),
        }
    }
}

/// The service [`AuthLayer`] wraps around a server's router.
#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    guard: Arc<Guard>,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for AuthService<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Default + Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        match self.guard.check(&request) {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
                Box::pin(self.inner.call(request))
            }
            Err(Denied(status, reason)) => {
                let peer = request
                    .extensions()
                    .get::<tonic::transport::server::TlsConnectInfo<TcpConnectInfo>>()
                    .and_then(|i| i.get_ref().remote_addr())
                    .or_else(|| {
                        request
                            .extensions()
                            .get::<TcpConnectInfo>()
                            .and_then(|i| i.remote_addr())
                    });
                tracing::warn!(
                    rpc = request.uri().path(),
                    peer = ?peer,
                    reason,
                    message = status.message(),
                    "request denied"
                );
                self.guard.denials.count(reason);
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}
