//! Who a caller is: a role and a name, from a client certificate's SPIFFE URI SAN
//! (`spiffe://<trust-domain>/<role>/<name>`) or from a JWT's claims.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The built-in roles. Their permissions are fixed (see [`crate::policy`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Every read.
    Viewer,
    /// Viewer, plus models, drain/undrain, rebalance, leave of any node.
    Operator,
    /// Operator, plus replica membership and token revocation.
    Admin,
    /// Joins, heartbeats and leaves as its own node id only, plus the reads a worker needs.
    Worker,
    /// Raft traffic between replicas; nobody else may call `RaftService`.
    Replica,
}

impl Role {
    /// Every role, for tables and tests.
    pub const ALL: [Role; 5] = [
        Role::Viewer,
        Role::Operator,
        Role::Admin,
        Role::Worker,
        Role::Replica,
    ];

    /// The role's name, as in URIs, tokens and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
            Role::Worker => "worker",
            Role::Replica => "replica",
        }
    }

    /// The role named `s`, if any.
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// What it may do.
    pub role: Role,
    /// Who it is: a worker's node id, a replica's id, a person's or tool's name.
    pub name: String,
    /// How it proved it.
    pub via: Via,
}

/// How a caller proved its identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Via {
    /// A client certificate signed by the cluster CA.
    Certificate,
    /// A JWT, with its id (for revocation).
    Token {
        /// The token's `jti`.
        jti: String,
    },
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let how = match &self.via {
            Via::Certificate => "certificate",
            Via::Token { .. } => "token",
        };
        write!(f, "{}/{} ({how})", self.role, self.name)
    }
}

/// The URI SAN that names `role`/`name` in `trust_domain`.
pub fn spiffe_uri(trust_domain: &str, role: Role, name: &str) -> String {
    format!("spiffe://{trust_domain}/{role}/{name}")
}

/// Reads `spiffe://<trust_domain>/<role>/<name>`; `None` for another trust domain, an
/// unknown role, or anything else.
pub fn parse_spiffe(uri: &str, trust_domain: &str) -> Option<(Role, String)> {
    let rest = uri.strip_prefix("spiffe://")?;
    let (domain, path) = rest.split_once('/')?;
    if domain != trust_domain {
        return None;
    }
    let (role, name) = path.split_once('/')?;
    let role = Role::parse(role)?;
    let valid = !name.is_empty()
        && name.len() <= 256
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
    valid.then(|| (role, name.to_string()))
}

/// The identity a verified client certificate (DER) carries: its first SPIFFE URI SAN in
/// `trust_domain`.
///
/// # Errors
/// A reason when the certificate cannot be parsed or names no identity of this cluster.
pub fn from_certificate(der: &[u8], trust_domain: &str) -> Result<Identity, String> {
    certificate_identity(der, trust_domain).map(|(id, _)| id)
}

/// As [`from_certificate`], with the end of the certificate's validity (Unix seconds), so a
/// cached identity ends with its certificate.
///
/// # Errors
/// As [`from_certificate`].
pub fn certificate_identity(der: &[u8], trust_domain: &str) -> Result<(Identity, u64), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("unreadable client certificate: {e}"))?;
    let not_after = u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0);
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("unreadable subject alternative names: {e}"))?
        .ok_or("the client certificate has no subject alternative name")?;
    san.value
        .general_names
        .iter()
        .find_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) => parse_spiffe(uri, trust_domain),
            _ => None,
        })
        .map(|(role, name)| {
            (
                Identity {
                    role,
                    name,
                    via: Via::Certificate,
                },
                not_after,
            )
        })
        .ok_or_else(|| {
            format!(
                "the client certificate names no spiffe://{trust_domain}/<role>/<name> identity"
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_uris_round_trip_and_foreign_ones_are_refused() {
        let uri = spiffe_uri("dllm.test", Role::Worker, "gpu-7");
        assert_eq!(uri, "spiffe://dllm.test/worker/gpu-7");
        assert_eq!(
            parse_spiffe(&uri, "dllm.test"),
            Some((Role::Worker, "gpu-7".into()))
        );
        assert_eq!(parse_spiffe(&uri, "other.test"), None, "another cluster");
        for bad in [
            "spiffe://dllm.test/root/x",
            "spiffe://dllm.test/worker/",
            "spiffe://dllm.test/worker",
            "https://dllm.test/worker/x",
            "spiffe://dllm.test/worker/a b",
        ] {
            assert_eq!(parse_spiffe(bad, "dllm.test"), None, "{bad}");
        }
    }
}
