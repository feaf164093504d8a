//! The security flags every dllm server takes (`--tls-ca`, `--tls-cert`, `--tls-key`,
//! `--trust-domain`, `--insecure`), flattened into each binary's clap `Args`, and their
//! validation: TLS files come as a set, and plaintext is allowed only on loopback unless the
//! operator says `--insecure`.

use std::{net::SocketAddr, path::PathBuf};

use dllm_util::config::ConfigError;

use crate::tls::TlsFiles;

/// The flags.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct SecurityArgs {
    /// The cluster CA's certificate (PEM). With --tls-cert and --tls-key, the server speaks
    /// only TLS and every caller must present a certificate of this CA or a token.
    #[arg(long, env = "DLLM_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// This process's certificate (PEM), signed by the cluster CA; re-read when it changes.
    #[arg(long, env = "DLLM_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM); re-read when it changes.
    #[arg(long, env = "DLLM_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// The trust domain certificates and tokens must name (spiffe://<domain>/<role>/<name>).
    #[arg(long, env = "DLLM_TRUST_DOMAIN", default_value = crate::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// Serve plaintext, with no authentication, on a non-loopback address (not for a shared
    /// network).
    #[arg(long, env = "DLLM_INSECURE", default_value_t = false, num_args = 0..=1,
          default_missing_value = "true", action = clap::ArgAction::Set)]
    pub insecure: bool,
}

/// Validated security settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Security {
    /// The TLS files, when TLS is on.
    pub tls: Option<TlsFiles>,
    /// The trust domain.
    pub trust_domain: String,
    /// `--insecure` was given.
    pub insecure: bool,
}

impl SecurityArgs {
    /// Validates the flags for a server that listens on `listen`.
    ///
    /// # Errors
    /// [`ConfigError`] naming the flag: a TLS file without the others, or plaintext on a
    /// non-loopback address without `--insecure`.
    pub fn resolve(self, listen: SocketAddr) -> Result<Security, ConfigError> {
        let tls = match (self.tls_ca, self.tls_cert, self.tls_key) {
            (None, None, None) => None,
            (Some(ca), Some(cert), Some(key)) => Some(TlsFiles {
                ca,
                cert: Some(cert),
                key: Some(key),
            }),
            (ca, cert, _) => {
                let missing = if ca.is_none() {
                    "tls-ca"
                } else if cert.is_none() {
                    "tls-cert"
                } else {
                    "tls-key"
                };
                return Err(ConfigError::invalid(
                    missing,
                    "--tls-ca, --tls-cert and --tls-key go together",
                ));
            }
        };
        if self.trust_domain.is_empty() || self.trust_domain.contains('/') {
            return Err(ConfigError::invalid(
                "trust-domain",
                "must be a name without '/' (e.g. dllm.example.com)",
            ));
        }
        if tls.is_none() {
            crate::plaintext_allowed(listen, self.insecure)
                .map_err(|reason| ConfigError::invalid("insecure", reason))?;
        }
        Ok(Security {
            tls,
            trust_domain: self.trust_domain,
            insecure: self.insecure,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(ca: bool, cert: bool, key: bool, insecure: bool) -> SecurityArgs {
        SecurityArgs {
            tls_ca: ca.then(|| "ca.crt".into()),
            tls_cert: cert.then(|| "a.crt".into()),
            tls_key: key.then(|| "a.key".into()),
            trust_domain: crate::DEFAULT_TRUST_DOMAIN.into(),
            insecure,
        }
    }

    #[test]
    fn plaintext_only_on_loopback_unless_insecure() {
        let lo: SocketAddr = "127.0.0.1:8080".parse().expect("addr");
        let any: SocketAddr = "0.0.0.0:8080".parse().expect("addr");
        assert!(args(false, false, false, false).resolve(lo).is_ok());
        let refused = args(false, false, false, false)
            .resolve(any)
            .expect_err("plaintext on 0.0.0.0");
        assert!(refused.to_string().contains("--insecure"), "{refused}");
        assert!(args(false, false, false, true).resolve(any).is_ok());
        let tls = args(true, true, true, false)
            .resolve(any)
            .expect("TLS anywhere");
        assert!(tls.tls.is_some());
        let partial = args(true, true, false, false)
            .resolve(lo)
            .expect_err("no key");
        assert!(partial.to_string().contains("--tls-key"), "{partial}");
    }
}
