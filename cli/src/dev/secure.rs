//! `dllm dev --secure`: the dev cluster with mutual TLS and roles. Before anything starts,
//! a CA and certificates go to `<data-dir>/certs`: one per replica, one per worker (named
//! after its node id), and an `admin` one that `dllm dev` itself, and the user's `dllm`
//! commands, call the cluster with.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
};

use anyhow::Context;
use dllm_auth::{certs, client::ClientAuth, Role, DEFAULT_TRUST_DOMAIN};

/// The certificate the dev cluster's own calls, and the printed exports, use.
const ADMIN: &str = "admin";
/// Names the replicas and workers are dialled by.
const HOSTS: [&str; 2] = ["127.0.0.1", "localhost"];

/// A secure dev cluster's certificate folder.
#[derive(Debug)]
pub struct Secure {
    dir: PathBuf,
    trust_domain: String,
}

impl Secure {
    /// Makes the files for `replicas` replicas and the `workers` (node ids) in `dir`: a new
    /// CA there, or the one a previous run with the same `--data-dir` left, whose
    /// certificates are then renewed.
    ///
    /// # Errors
    /// When a file cannot be written, or the folder holds a CA that does not load.
    pub fn prepare(dir: PathBuf, replicas: u32, workers: &[String]) -> anyhow::Result<Self> {
        let td = DEFAULT_TRUST_DOMAIN;
        let hosts: Vec<String> = HOSTS.map(String::from).to_vec();
        if dir.join(certs::CA_KEY).exists() {
            for id in 1..=replicas {
                certs::issue(&dir, Role::Replica, &id.to_string(), td, &hosts)?;
            }
        } else {
            certs::init(&dir, &hosts, replicas, td)?;
        }
        for name in workers {
            certs::issue(&dir, Role::Worker, name, td, &hosts)
                .with_context(|| format!("the certificate of {name}"))?;
        }
        certs::issue(&dir, Role::Admin, ADMIN, td, &[])?;
        Ok(Self {
            dir,
            trust_domain: td.to_string(),
        })
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn tls_args(&self, stem: &str) -> Vec<OsString> {
        vec![
            "--tls-ca".into(),
            self.file(certs::CA_CERT).into(),
            "--tls-cert".into(),
            self.file(&format!("{stem}.crt")).into(),
            "--tls-key".into(),
            self.file(&format!("{stem}.key")).into(),
            "--trust-domain".into(),
            self.trust_domain.clone().into(),
        ]
    }

    /// The flags replica `id` serves and calls the others with.
    pub fn replica_args(&self, id: usize) -> Vec<OsString> {
        let mut args = self.tls_args(&certs::file_stem(Role::Replica, &id.to_string()));
        args.extend([
            "--jwt-public-key".into(),
            self.file(certs::JWT_PUBLIC_KEY).into(),
        ]);
        args
    }

    /// The flags worker `name` serves and calls the replicas with.
    pub fn worker_args(&self, name: &str) -> Vec<OsString> {
        self.tls_args(&certs::file_stem(Role::Worker, name))
    }

    fn admin_files(&self) -> [PathBuf; 3] {
        [
            self.file(certs::CA_CERT),
            self.file(&format!("{ADMIN}.crt")),
            self.file(&format!("{ADMIN}.key")),
        ]
    }

    /// The admin's credentials, for `dllm dev`'s own calls.
    ///
    /// # Errors
    /// When the files just written do not load.
    pub fn admin_auth(&self) -> anyhow::Result<ClientAuth> {
        let [ca, cert, key] = self.admin_files();
        Ok(ClientAuth::from_flags(
            Some(&ca),
            Some(&cert),
            Some(&key),
            None,
        )?)
    }

    /// The lines that make `dllm` commands in a shell use the admin certificate.
    pub fn exports(&self) -> String {
        let [ca, cert, key] = self.admin_files();
        [
            ("DLLM_TLS_CA", ca),
            ("DLLM_TLS_CERT", cert),
            ("DLLM_TLS_KEY", key),
        ]
        .iter()
        .map(|(var, path)| format!("  export {var}={}\n", shell_quote(path)))
        .collect()
    }

    /// grpcurl's flags for the admin certificate.
    pub fn grpcurl_flags(&self) -> String {
        let [ca, cert, key] = self.admin_files().map(|p| shell_quote(&p));
        format!("-cacert {ca} -cert {cert} -key {key}")
    }
}

/// `path` as one shell word.
fn shell_quote(path: &Path) -> String {
    let s = path.display().to_string();
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@".contains(c))
    {
        s
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Replicas get the CA, their own certificate, the token public key and the trust
    /// domain; workers the CA and the certificate named after their node id; every file
    /// named exists; the admin credentials load.
    #[test]
    fn replicas_and_workers_get_their_own_files() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("my certs");
        let secure = Secure::prepare(dir.clone(), 2, &["worker-1".into(), "worker-2".into()])
            .expect("prepare");
        let text = |args: Vec<OsString>| -> Vec<String> {
            args.into_iter()
                .map(|a| a.to_string_lossy().replace(&*dir.to_string_lossy(), "D"))
                .collect()
        };
        assert_eq!(
            text(secure.replica_args(2)),
            [
                "--tls-ca",
                "D/ca.crt",
                "--tls-cert",
                "D/replica-2.crt",
                "--tls-key",
                "D/replica-2.key",
                "--trust-domain",
                DEFAULT_TRUST_DOMAIN,
                "--jwt-public-key",
                "D/jwt-signing.pub",
            ]
        );
        assert_eq!(
            text(secure.worker_args("worker-1")),
            [
                "--tls-ca",
                "D/ca.crt",
                "--tls-cert",
                "D/worker-1.crt",
                "--tls-key",
                "D/worker-1.key",
                "--trust-domain",
                DEFAULT_TRUST_DOMAIN,
            ]
        );
        for args in [secure.replica_args(1), secure.worker_args("worker-2")] {
            for path in args.iter().filter(|a| a.to_string_lossy().contains('/')) {
                assert!(Path::new(path).is_file(), "{path:?} exists");
            }
        }
        secure.admin_auth().expect("the admin credentials load");
        let exports = secure.exports();
        assert!(
            exports.contains(&format!(
                "export DLLM_TLS_CERT='{}/admin.crt'",
                dir.display()
            )),
            "quoted, since the folder has a space: {exports}"
        );

        // A second run with the same data dir keeps the CA and renews the rest.
        let ca = std::fs::read(dir.join(certs::CA_CERT)).expect("ca");
        Secure::prepare(dir.clone(), 3, &[]).expect("prepare again");
        assert_eq!(std::fs::read(dir.join(certs::CA_CERT)).expect("ca"), ca);
        assert!(
            dir.join("replica-3.crt").is_file(),
            "a replica more this time"
        );
    }
}
