//! The files a secure cluster needs, made by `dllm certs`: a cluster CA, a certificate per
//! replica and per client, and the key pair that signs and verifies JWTs. No OpenSSL: rcgen
//! (ECDSA P-256 certificates, an Ed25519 token key).
//!
//! Every certificate names its holder with a SPIFFE URI SAN
//! ([`spiffe_uri`]), which is what servers read the caller's role from. Certificates that
//! a server presents (replicas, workers) also carry DNS and IP SANs for the names clients dial.

use std::{
    io::Write,
    net::IpAddr,
    path::{Path, PathBuf},
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::pem::PemObject;

use crate::identity::{parse_spiffe, spiffe_uri, Role};

/// The CA's certificate, in the certificate folder.
pub const CA_CERT: &str = "ca.crt";
/// The CA's private key.
pub const CA_KEY: &str = "ca.key";
/// The Ed25519 private key `dllm token create` signs with (PKCS#8 PEM).
pub const JWT_SIGNING_KEY: &str = "jwt-signing.key";
/// Its public key, which replicas verify tokens with (`--jwt-public-key`).
pub const JWT_PUBLIC_KEY: &str = "jwt-signing.pub";

/// How long the CA is valid, in years.
const CA_YEARS: i32 = 10;
/// How long every other certificate is valid, in years.
const LEAF_YEARS: i32 = 1;

/// Why certificates could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    /// The file is there already and must not be replaced.
    #[error("{0} exists; refusing to overwrite it (move the folder aside, or use another --dir)")]
    Exists(PathBuf),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The CA's files do not load.
    #[error("{path}: {reason}")]
    Ca {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A value the caller gave cannot go in a certificate.
    #[error("{flag} {value:?}: {reason}")]
    Invalid {
        /// The flag that gave it.
        flag: &'static str,
        /// The value.
        value: String,
        /// Why not.
        reason: String,
    },
    /// rcgen could not make a key or a certificate.
    #[error("cannot make {what}: {source}")]
    Generate {
        /// The key or certificate.
        what: String,
        /// What rcgen said.
        source: rcgen::Error,
    },
}

fn generate(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> CertsError {
    let what = what.into();
    move |source| CertsError::Generate { what, source }
}

/// Makes a new cluster's files in `dir` (created if missing): `ca.crt`/`ca.key` (a
/// self-signed CA, 10 years), `replica-<i>.crt`/`.key` for i in 1..=`replicas` (1 year;
/// URI SAN `spiffe://<trust_domain>/replica/<i>`, DNS/IP SANs `hosts` plus `localhost` and
/// `127.0.0.1`; server and client use, since replicas call each other), and
/// `jwt-signing.key`/`jwt-signing.pub` (Ed25519, for tokens). Keys are written mode 0600.
///
/// # Errors
/// [`CertsError::Exists`] when `dir/ca.key` exists (a cluster's CA is never replaced by
/// accident); [`CertsError::Invalid`] for a host that is neither an IP address nor a DNS
/// name; [`CertsError::Io`] when a file cannot be written.
pub fn init(
    dir: &Path,
    hosts: &[String],
    replicas: u32,
    trust_domain: &str,
) -> Result<(), CertsError> {
    let ca_key_path = dir.join(CA_KEY);
    if ca_key_path.exists() {
        return Err(CertsError::Exists(ca_key_path));
    }
    let server_sans = server_sans(hosts)?;
    for i in 1..=replicas {
        check_name(trust_domain, Role::Replica, &i.to_string())?;
    }
    std::fs::create_dir_all(dir).map_err(|source| CertsError::Io {
        path: dir.to_path_buf(),
        source,
    })?;

    let ca_key = KeyPair::generate().map_err(generate("the CA key"))?;
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = name("dllm cluster CA", trust_domain);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut ca_params, CA_YEARS);
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(generate("the CA certificate"))?;
    write_key(&ca_key_path, &ca_key.serialize_pem())?;
    write_public(&dir.join(CA_CERT), &ca_cert.pem())?;
    let issuer = Issuer::new(ca_params, ca_key);

    for i in 1..=replicas {
        let id = i.to_string();
        let (cert, key) = leaf(&issuer, trust_domain, Role::Replica, &id, &server_sans)?;
        let stem = file_stem(Role::Replica, &id);
        write_key(&dir.join(format!("{stem}.key")), &key)?;
        write_public(&dir.join(format!("{stem}.crt")), &cert)?;
    }

    let jwt = KeyPair::generate_for(&rcgen::PKCS_ED25519).map_err(generate("the JWT key"))?;
    write_key(&dir.join(JWT_SIGNING_KEY), &jwt.serialize_pem())?;
    write_public(&dir.join(JWT_PUBLIC_KEY), &jwt.public_key_pem())?;
    Ok(())
}

/// Issues a certificate for `role`/`name` signed by the CA in `dir`, written to
/// `dir/<name>.crt` and `dir/<name>.key`, or `replica-<name>.*` for a replica as [`init`]
/// names them (replacing them if they are this role and name's, so it also renews; another
/// holder's files are never replaced). Its
/// URI SAN is `spiffe://<trust_domain>/<role>/<name>`; it is for client use, and for a worker
/// or replica (which serve gRPC too) also for server use with the DNS/IP SANs `hosts` plus
/// `localhost` and `127.0.0.1`. A worker's name is its node id.
///
/// # Errors
/// [`CertsError::Ca`] when `dir/ca.crt` or `dir/ca.key` do not load;
/// [`CertsError::Invalid`] for a name a server would not accept, or one that would replace
/// the CA's, the token key's or another holder's files; [`CertsError::Io`] when a file cannot be written.
pub fn issue(
    dir: &Path,
    role: Role,
    name: &str,
    trust_domain: &str,
    hosts: &[String],
) -> Result<(PathBuf, PathBuf), CertsError> {
    check_name(trust_domain, role, name)?;
    let reserved = [CA_CERT, CA_KEY, JWT_SIGNING_KEY, JWT_PUBLIC_KEY];
    let stem = file_stem(role, name);
    let (cert_path, key_path) = (
        dir.join(format!("{stem}.crt")),
        dir.join(format!("{stem}.key")),
    );
    if reserved
        .iter()
        .any(|r| dir.join(r) == cert_path || dir.join(r) == key_path)
    {
        return Err(CertsError::Invalid {
            flag: "--name",
            value: name.to_string(),
            reason: "would replace the CA's or the token key's files".into(),
        });
    }
    if let Some(holder) = other_holder(&cert_path, trust_domain, role, name) {
        return Err(CertsError::Invalid {
            flag: "--name",
            value: name.to_string(),
            reason: format!(
                "{} holds {holder}'s certificate; only the same role and name is renewed in place (remove those files first to reuse the name, or choose another --name)",
                cert_path.display()
            ),
        });
    }
    let sans = match role {
        Role::Worker | Role::Replica => server_sans(hosts)?,
        _ => Vec::new(),
    };
    let issuer = load_issuer(dir)?;
    let (cert, key) = leaf(&issuer, trust_domain, role, name, &sans)?;
    write_key(&key_path, &key)?;
    write_public(&cert_path, &cert)?;
    Ok((cert_path, key_path))
}

/// Who else holds the certificate at `path`, if it is there and is not `role`/`name`'s
/// (an unreadable file counts as someone else's: it is not replaced either).
fn other_holder(path: &Path, trust_domain: &str, role: Role, name: &str) -> Option<String> {
    let pem = std::fs::read(path).ok()?;
    let holder = rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
        .next()
        .and_then(Result::ok)
        .and_then(|der| crate::identity::from_certificate(&der, trust_domain).ok());
    match holder {
        Some(id) if id.role == role && id.name == name => None,
        Some(id) => Some(format!("{}/{}", id.role, id.name)),
        None => Some("another holder (not a certificate of this trust domain)".into()),
    }
}

/// The name of `role`/`name`'s files in the certificate folder, without the extension:
/// `replica-<id>` for a replica, the name for everyone else.
pub fn file_stem(role: Role, name: &str) -> String {
    match role {
        Role::Replica => format!("replica-{name}"),
        _ => name.to_string(),
    }
}

/// The CA in `dir`, ready to sign.
fn load_issuer(dir: &Path) -> Result<Issuer<'static, KeyPair>, CertsError> {
    let read = |file: &str| {
        let path = dir.join(file);
        std::fs::read_to_string(&path).map_err(|e| CertsError::Ca {
            path,
            reason: format!("{e} (make the CA with `dllm certs init`)"),
        })
    };
    let (cert_pem, key_pem) = (read(CA_CERT)?, read(CA_KEY)?);
    let key = KeyPair::from_pem(&key_pem).map_err(|e| CertsError::Ca {
        path: dir.join(CA_KEY),
        reason: format!("not a private key: {e}"),
    })?;
    Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| CertsError::Ca {
        path: dir.join(CA_CERT),
        reason: format!("not a CA certificate: {e}"),
    })
}

/// A new key and a certificate for `role`/`name` signed by `issuer`, both PEM. With
/// `server_sans` it is for server use too.
fn leaf(
    issuer: &Issuer<'_, KeyPair>,
    trust_domain: &str,
    role: Role,
    name: &str,
    server_sans: &[SanType],
) -> Result<(String, String), CertsError> {
    let what = format!("the certificate of {role}/{name}");
    let key = KeyPair::generate().map_err(generate(what.clone()))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = self::name(&format!("{role} {name}"), trust_domain);
    let uri = spiffe_uri(trust_domain, role, name);
    params.subject_alt_names = vec![SanType::URI(uri.as_str().try_into().map_err(
        |e: rcgen::Error| CertsError::Invalid {
            flag: "--name",
            value: name.to_string(),
            reason: e.to_string(),
        },
    )?)];
    params.subject_alt_names.extend_from_slice(server_sans);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    if !server_sans.is_empty() {
        params
            .extended_key_usages
            .push(ExtendedKeyUsagePurpose::ServerAuth);
    }
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, LEAF_YEARS);
    let cert = params.signed_by(&key, issuer).map_err(generate(what))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A server would refuse a certificate whose name it cannot read back, so none is issued.
fn check_name(trust_domain: &str, role: Role, name: &str) -> Result<(), CertsError> {
    let invalid = |flag: &'static str, value: &str, reason: &str| CertsError::Invalid {
        flag,
        value: value.to_string(),
        reason: reason.to_string(),
    };
    let domain_ok = !trust_domain.is_empty()
        && trust_domain
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-.".contains(c));
    if !domain_ok {
        return Err(invalid(
            "--trust-domain",
            trust_domain,
            "letters, digits, '-' and '.' only",
        ));
    }
    match parse_spiffe(&spiffe_uri(trust_domain, role, name), trust_domain) {
        Some(_) => Ok(()),
        None => Err(invalid(
            "--name",
            name,
            "1 to 256 characters: letters, digits and - _ . : only",
        )),
    }
}

/// The DNS and IP SANs of a certificate a server presents: `hosts`, `localhost` and
/// `127.0.0.1`, each once.
fn server_sans(hosts: &[String]) -> Result<Vec<SanType>, CertsError> {
    let mut sans: Vec<SanType> = Vec::new();
    let all = hosts
        .iter()
        .map(|h| h.trim())
        .filter(|h| !h.is_empty())
        .chain(["localhost", "127.0.0.1"]);
    for host in all {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let san = match host.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => {
                let valid = host.split('.').all(|label| {
                    !label.is_empty()
                        && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                });
                if !valid {
                    return Err(CertsError::Invalid {
                        flag: "--hosts",
                        value: host.to_string(),
                        reason: "neither an IP address nor a DNS name".into(),
                    });
                }
                SanType::DnsName(host.try_into().map_err(|e: rcgen::Error| {
                    CertsError::Invalid {
                        flag: "--hosts",
                        value: host.to_string(),
                        reason: e.to_string(),
                    }
                })?)
            }
        };
        if !sans.contains(&san) {
            sans.push(san);
        }
    }
    Ok(sans)
}

/// Writes a private key readable by its owner only (mode 0600, also when the file was
/// there with a wider mode).
fn write_key(path: &Path, pem: &str) -> Result<(), CertsError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let io = |source| CertsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(io)?;
    file.write_all(pem.as_bytes()).map_err(io)
}

/// Writes a certificate or public key.
fn write_public(path: &Path, pem: &str) -> Result<(), CertsError> {
    std::fs::write(path, pem).map_err(|source| CertsError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn name(common_name: &str, trust_domain: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, trust_domain);
    dn.push(DnType::CommonName, common_name);
    dn
}

/// Valid from the start of today (UTC), so that a clock a little behind still accepts it,
/// for `years`.
fn set_validity(params: &mut CertificateParams, years: i32) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now;
    params.not_after = now + time::Duration::days(365 * i64::from(years));
}

#[cfg(test)]
mod tests {
    use std::{os::unix::fs::PermissionsExt, sync::Arc};

    use rustls_pki_types::{pem::PemObject, CertificateDer, ServerName};

    use super::*;
    use crate::tls::{client_config, server_config, TlsFiles};

    const TD: &str = "dllm.test";

    fn hosts() -> Vec<String> {
        vec!["10.0.0.5".into(), "cp-1.example".into(), " ".into()]
    }

    fn files(dir: &Path, name: &str) -> TlsFiles {
        TlsFiles {
            ca: dir.join(CA_CERT),
            cert: Some(dir.join(format!("{name}.crt"))),
            key: Some(dir.join(format!("{name}.key"))),
        }
    }

    fn identity_of(cert: &Path) -> (Role, String) {
        let der = CertificateDer::from_pem_file(cert).expect("a PEM certificate");
        let id = crate::identity::from_certificate(&der, TD).expect("a SPIFFE identity");
        (id.role, id.name)
    }

    /// `init` writes a CA, one certificate per replica and the token key pair; keys are
    /// readable by their owner only; every certificate loads into the TLS configurations the
    /// servers and clients use and names its holder; the token keys sign and verify.
    #[test]
    fn init_writes_a_cluster_the_tls_and_token_code_loads() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("certs");
        init(&dir, &hosts(), 3, TD).expect("init");
        for file in [CA_CERT, CA_KEY, JWT_SIGNING_KEY, JWT_PUBLIC_KEY] {
            assert!(dir.join(file).is_file(), "{file} written");
        }
        for key in [CA_KEY, JWT_SIGNING_KEY, "replica-1.key", "replica-3.key"] {
            let mode = std::fs::metadata(dir.join(key))
                .expect("key")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{key} is private");
        }
        for i in 1..=3 {
            let name = format!("replica-{i}");
            server_config(&files(&dir, &name)).expect("a replica certificate serves");
            client_config(&files(&dir, &name)).expect("and is a client of the others");
            assert_eq!(
                identity_of(&dir.join(format!("{name}.crt"))),
                (Role::Replica, i.to_string())
            );
        }
        assert!(!dir.join("replica-4.crt").exists(), "only as many as asked");

        let pem = |f: &str| std::fs::read(dir.join(f)).expect("read");
        let signer = crate::token::Signer::from_pem(&pem(JWT_SIGNING_KEY)).expect("signer");
        let verifier = crate::token::Verifier::new(TD, &[pem(JWT_PUBLIC_KEY)]).expect("verifier");
        let (token, _) = signer
            .sign(TD, Role::Viewer, "alice", crate::unix_now(), 60)
            .expect("sign");
        let id = verifier
            .verify(&token)
            .expect("the pair verifies its own tokens");
        assert_eq!((id.role, id.name.as_str()), (Role::Viewer, "alice"));
    }

    /// A cluster's CA is never replaced by accident: a second `init` into the same folder
    /// fails naming `ca.key`, and leaves the files as they were.
    #[test]
    fn init_refuses_to_overwrite_a_ca_key() {
        let tmp = tempfile::tempdir().expect("tempdir");
        init(tmp.path(), &[], 1, TD).expect("first init");
        let before = std::fs::read(tmp.path().join(CA_CERT)).expect("ca");
        let err = init(tmp.path(), &[], 1, TD).expect_err("second init");
        assert!(
            matches!(&err, CertsError::Exists(p) if p.ends_with(CA_KEY)),
            "{err}"
        );
        assert!(err.to_string().contains("ca.key"), "{err}");
        assert_eq!(
            std::fs::read(tmp.path().join(CA_CERT)).expect("ca"),
            before,
            "the CA is unchanged"
        );
    }

    /// `issue` signs with the folder's CA: a worker's certificate serves and calls, a
    /// viewer's calls; each names its role and name.
    #[test]
    fn issued_certificates_load_and_name_their_holder() {
        let tmp = tempfile::tempdir().expect("tempdir");
        init(tmp.path(), &hosts(), 1, TD).expect("init");
        let (cert, key) =
            issue(tmp.path(), Role::Worker, "worker-1", TD, &hosts()).expect("issue worker");
        assert_eq!(
            (cert.clone(), key),
            (
                tmp.path().join("worker-1.crt"),
                tmp.path().join("worker-1.key")
            )
        );
        assert_eq!(identity_of(&cert), (Role::Worker, "worker-1".into()));
        server_config(&files(tmp.path(), "worker-1")).expect("a worker serves");
        client_config(&files(tmp.path(), "worker-1")).expect("and calls");

        let (cert, _) = issue(tmp.path(), Role::Viewer, "alice", TD, &[]).expect("issue viewer");
        assert_eq!(identity_of(&cert), (Role::Viewer, "alice".into()));
        client_config(&files(tmp.path(), "alice")).expect("a viewer calls");

        // A replica added later is named as `init` names the first ones.
        let (cert, _) = issue(tmp.path(), Role::Replica, "2", TD, &hosts()).expect("issue replica");
        assert_eq!(cert, tmp.path().join("replica-2.crt"));
        server_config(&files(tmp.path(), "replica-2")).expect("a new replica serves");

        // Reissuing renews in place.
        let cert = tmp.path().join("alice.crt");
        let before = std::fs::read(&cert).expect("read");
        issue(tmp.path(), Role::Viewer, "alice", TD, &[]).expect("reissue");
        assert_ne!(
            std::fs::read(&cert).expect("read"),
            before,
            "a new certificate"
        );
        assert_eq!(identity_of(&cert), (Role::Viewer, "alice".into()));

        // The same name for another role would replace alice's files: refused, kept.
        let err = issue(tmp.path(), Role::Admin, "alice", TD, &[]).expect_err("collision");
        assert!(err.to_string().contains("viewer/alice"), "{err}");
        assert_eq!(identity_of(&cert), (Role::Viewer, "alice".into()));
        std::fs::write(&cert, "not a certificate").expect("write");
        let err = issue(tmp.path(), Role::Viewer, "alice", TD, &[]).expect_err("unreadable");
        assert!(err.to_string().starts_with("--name"), "{err}");
    }

    /// Names a server could not read back, names that would replace the CA or token key,
    /// bad hosts and a folder without a CA are refused, naming the flag or file.
    #[test]
    fn issue_refuses_bad_names_hosts_and_a_missing_ca() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let err = issue(tmp.path(), Role::Viewer, "bob", TD, &[]).expect_err("no CA yet");
        assert!(err.to_string().contains("ca.crt"), "{err}");
        init(tmp.path(), &[], 1, TD).expect("init");
        for bad in ["", "a b", "x/y", "ca", "jwt-signing"] {
            let err = issue(tmp.path(), Role::Viewer, bad, TD, &[]).expect_err(bad);
            assert!(err.to_string().starts_with("--name"), "{bad}: {err}");
        }
        let err =
            issue(tmp.path(), Role::Worker, "w", TD, &["bad host!".into()]).expect_err("bad host");
        assert!(err.to_string().starts_with("--hosts"), "{err}");
        let err = issue(tmp.path(), Role::Viewer, "v", "bad/domain", &[]).expect_err("domain");
        assert!(err.to_string().starts_with("--trust-domain"), "{err}");
    }

    /// A replica and a worker (certificates from the same `init`) complete a mutual TLS
    /// handshake by name and by IP address, and the replica reads the worker's identity from
    /// it; a certificate from another cluster's CA is refused.
    #[tokio::test]
    async fn a_replica_and_a_worker_complete_a_mutual_handshake() {
        let tmp = tempfile::tempdir().expect("tempdir");
        init(tmp.path(), &hosts(), 1, TD).expect("init");
        issue(tmp.path(), Role::Worker, "worker-1", TD, &[]).expect("issue");
        let other = tempfile::tempdir().expect("tempdir");
        init(other.path(), &[], 0, TD).expect("other init");
        issue(other.path(), Role::Worker, "worker-1", TD, &[]).expect("other issue");

        let server = Arc::new(server_config(&files(tmp.path(), "replica-1")).expect("server"));
        let client = Arc::new(client_config(&files(tmp.path(), "worker-1")).expect("client"));
        for host in ["localhost", "127.0.0.1", "10.0.0.5", "cp-1.example"] {
            let name = ServerName::try_from(host.to_string()).expect("server name");
            let peer = handshake(server.clone(), client.clone(), name)
                .await
                .unwrap_or_else(|e| panic!("{host}: {e}"));
            assert_eq!(peer, (Role::Worker, "worker-1".into()), "{host}");
        }
        let name = ServerName::try_from("elsewhere.example").expect("server name");
        assert!(
            handshake(server.clone(), client, name).await.is_err(),
            "a name not in the replica's certificate"
        );

        let mut foreign = files(other.path(), "worker-1");
        foreign.ca = tmp.path().join(CA_CERT);
        let foreign = Arc::new(client_config(&foreign).expect("client"));
        let name = ServerName::try_from("localhost").expect("server name");
        assert!(
            handshake(server, foreign, name).await.is_err(),
            "a client certificate from another CA"
        );
    }

    /// A client's connector checks the role the server's certificate names: a worker's
    /// certificate (valid for loopback) is refused where a replica is expected.
    #[tokio::test]
    async fn a_client_refuses_a_server_of_another_role() {
        use tower::Service;
        let tmp = tempfile::tempdir().expect("tempdir");
        init(tmp.path(), &hosts(), 1, TD).expect("init");
        issue(tmp.path(), Role::Worker, "worker-1", TD, &[]).expect("issue");
        issue(tmp.path(), Role::Viewer, "v", TD, &[]).expect("issue");
        let client = crate::tls::client(files(tmp.path(), "v")).expect("client");
        for (server, expected, ok) in [
            ("worker-1", &[Role::Replica][..], false),
            ("worker-1", &[Role::Replica, Role::Worker][..], true),
            ("replica-1", &[Role::Replica][..], true),
        ] {
            let tls = crate::tls::server(files(tmp.path(), server)).expect("server");
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let uri: http::Uri = format!("http://{}", listener.local_addr().expect("addr"))
                .parse()
                .expect("uri");
            let accept = async move {
                let (tcp, _) = listener.accept().await.expect("accept");
                tokio_rustls::TlsAcceptor::from(tls.current())
                    .accept(tcp)
                    .await
                    .map(drop)
            };
            let mut connector = crate::tls::Connector::new(client.clone(), expected);
            let (connected, _) = tokio::join!(connector.call(uri), accept);
            match connected {
                Ok(_) => assert!(ok, "{server} accepted as {expected:?}"),
                Err(e) => {
                    assert!(!ok, "{server} as {expected:?}: {e}");
                    assert!(e.to_string().contains("not a replica's"), "{e}");
                }
            }
        }
    }

    /// Runs a handshake over an in-memory pipe; the identity the server saw.
    async fn handshake(
        server: Arc<rustls::ServerConfig>,
        client: Arc<rustls::ClientConfig>,
        name: ServerName<'static>,
    ) -> Result<(Role, String), String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (a, b) = tokio::io::duplex(64 * 1024);
        let accept = async {
            let mut tls = tokio_rustls::TlsAcceptor::from(server)
                .accept(a)
                .await
                .map_err(|e| format!("server: {e}"))?;
            let der = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first().cloned())
                .ok_or("no client certificate")?;
            let mut byte = [0u8; 1];
            tls.read_exact(&mut byte).await.map_err(|e| e.to_string())?;
            let id = crate::identity::from_certificate(&der, TD)?;
            Ok::<_, String>((id.role, id.name))
        };
        let connect = async {
            let mut tls = tokio_rustls::TlsConnector::from(client)
                .connect(name, b)
                .await
                .map_err(|e| format!("client: {e}"))?;
            tls.write_all(b"x").await.map_err(|e| e.to_string())?;
            tls.flush().await.map_err(|e| e.to_string())?;
            Ok::<_, String>(tls)
        };
        let (accepted, connected) = tokio::join!(accept, connect);
        let _stream = connected?;
        accepted
    }
}
