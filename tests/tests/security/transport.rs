//! The transport: plaintext and foreign certificates at a TLS port, a certificate reissued
//! without a restart, a restarted replica, plaintext off loopback, the message size limit.

use super::*;

/// Connects to `addr` with `auth` and asks for the replica status, within 10 s: `Ok` with the
/// error when the connection failed (at connect, or the call failed in the transport), `Err`
/// when the server answered anything.
async fn connection_fails(auth: &ClientAuth, addr: &str) -> Result<String, String> {
    let attempt = async {
        let ch = match channel_with(auth, addr).await {
            Ok(ch) => ch,
            Err(e) => return Ok(format!("connect: {e}")),
        };
        match Probe::GetReplicaStatus.call(&ch).await {
            Ok(()) => Err("answered OK".to_string()),
            Err(e)
                if std::error::Error::source(&e)
                    .is_some_and(|s| s.downcast_ref::<tonic::transport::Error>().is_some()) =>
            {
                Ok(format!("call: {e:?}"))
            }
            Err(e) => Err(format!("answered {e:?}")),
        }
    };
    tokio::time::timeout(Duration::from_secs(10), attempt)
        .await
        .map_err(|_| "no outcome in 10 s (hung)".to_string())?
}

/// A client certificate of this cluster's CA and trust domain that has expired fails its
/// handshake like a foreign one; a TLS client at a plaintext port fails cleanly too; both
/// servers keep serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_and_tls_to_a_plaintext_port_fail_cleanly() {
    init_tracing();
    let (cluster, metrics, addr) = one_secure_replica().await;

    info!("--- an admin certificate of this CA that expired in 2021");
    let dir = cluster.certs_dir();
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).expect("CA file");
    let ca_key = rcgen::KeyPair::from_pem(&read(certs::CA_KEY)).expect("CA key");
    let issuer = rcgen::Issuer::from_ca_cert_pem(&read(certs::CA_CERT), ca_key).expect("CA");
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        dllm_auth::identity::spiffe_uri(TRUST_DOMAIN, Role::Admin, "expired")
            .as_str()
            .try_into()
            .expect("uri"),
    )];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let cert = params.signed_by(&key, &issuer).expect("sign");
    let expired_dir = tempfile::tempdir().expect("temp dir");
    let (cert_path, key_path) = (
        expired_dir.path().join("expired.crt"),
        expired_dir.path().join("expired.key"),
    );
    std::fs::write(&cert_path, cert.pem()).expect("write");
    std::fs::write(&key_path, key.serialize_pem()).expect("write");
    let expired = ClientAuth::from_flags(
        Some(&dir.join(certs::CA_CERT)),
        Some(&cert_path),
        Some(&key_path),
        None,
    )
    .expect("credentials");
    let before = denials(&metrics).await;
    let failed = connection_fails(&expired, &addr)
        .await
        .unwrap_or_else(|e| panic!("an expired certificate: {e}"));
    info!(%failed, "expired certificate refused");
    wait_denials(&metrics, &before, &[("tls_handshake", 1)]).await;
    cluster
        .replica_status(1)
        .await
        .unwrap_or_else(|e| panic!("the admin is still answered: {e:?}\n{}", cluster.logs()));

    info!("--- TLS to a plaintext port");
    let plain = Cluster::start(1, &[]);
    plain.wait_leader(&[1]).await;
    let failed = connection_fails(&cluster.admin(), &plain.addr(1))
        .await
        .unwrap_or_else(|e| panic!("TLS to a plaintext port: {e}"));
    info!(%failed, "TLS to plaintext failed");
    plain.replica_status(1).await.unwrap_or_else(|e| {
        panic!(
            "the plaintext replica still serves: {e:?}\n{}",
            plain.logs()
        )
    });
}

/// A TLS port answers plaintext and a client certificate of another CA by failing that
/// connection's handshake (counted as `tls_handshake` in /metrics), not with an answer and
/// not by hanging; the replica keeps serving everyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_and_foreign_certificates_fail_the_handshake() {
    init_tracing();
    let (cluster, metrics, addr) = one_secure_replica().await;
    let before = denials(&metrics).await;

    info!("--- plaintext to the TLS port");
    let failed = connection_fails(&ClientAuth::plaintext(), &addr)
        .await
        .unwrap_or_else(|e| panic!("plaintext to the TLS port: {e}"));
    info!(%failed, "plaintext refused");
    wait_denials(&metrics, &before, &[("tls_handshake", 1)]).await;

    info!("--- an admin certificate of another CA (same trust domain)");
    let other = other_cluster();
    let (cert, key) = certs::issue(
        other.path(),
        Role::Admin,
        "intruder",
        TRUST_DOMAIN,
        &cert_hosts(),
    )
    .expect("issue in the other cluster");
    let foreign = ClientAuth::from_flags(
        Some(&cluster.certs_dir().join(certs::CA_CERT)),
        Some(&cert),
        Some(&key),
        None,
    )
    .expect("credentials");
    let before = denials(&metrics).await;
    let failed = connection_fails(&foreign, &addr)
        .await
        .unwrap_or_else(|e| panic!("a certificate of another CA: {e}"));
    info!(%failed, "foreign certificate refused");
    wait_denials(&metrics, &before, &[("tls_handshake", 1)]).await;

    info!("--- the replica still serves");
    assert!(cluster.replicas[&1].pid().is_some(), "replica 1 runs");
    cluster
        .replica_status(1)
        .await
        .unwrap_or_else(|e| panic!("the admin is still answered: {e:?}\n{}", cluster.logs()));
}

/// The certificate a TLS server at `addr` presents to a new connection (DER), as a client
/// trusting `ca` sees it.
async fn served_certificate(addr: &str, ca: &std::path::Path) -> Option<Vec<u8>> {
    let config = dllm_auth::tls::client_config(&TlsFiles {
        ca: ca.to_path_buf(),
        cert: None,
        key: None,
    })
    .expect("client TLS");
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").expect("server name");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .ok()?;
    Some(tls.get_ref().1.peer_certificates()?.first()?.to_vec())
}

fn certificate_file(path: &std::path::Path) -> Vec<u8> {
    use rustls_pki_types::{pem::PemObject, CertificateDer};
    CertificateDer::from_pem_file(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_vec()
}

/// Re-issuing a running replica's certificate (a new key, the same file names) takes effect
/// for new connections within a few seconds, with no restart; the replica keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reissued_certificate_is_served_without_a_restart() {
    init_tracing();
    let cluster = Cluster::start_secure(1, &[]);
    cluster.wait_leader(&[1]).await;
    let addr = cluster.addr(1);
    let ca = cluster.certs_dir().join(certs::CA_CERT);
    let file = cluster.certs_dir().join("replica-1.crt");
    let pid = cluster.replicas[&1].pid();

    let old = served_certificate(&addr, &ca)
        .await
        .expect("a TLS handshake with replica 1");
    assert_eq!(
        old,
        certificate_file(&file),
        "replica 1 serves replica-1.crt"
    );

    info!("--- re-issue replica 1's certificate while it runs");
    let (cert, _) = certs::issue(
        cluster.certs_dir(),
        Role::Replica,
        "1",
        TRUST_DOMAIN,
        &cert_hosts(),
    )
    .expect("re-issue");
    assert_eq!(cert, file, "a replica's certificate is renewed in place");
    let new = certificate_file(&file);
    assert_ne!(new, old, "a new certificate");

    info!("--- new connections see it");
    wait_for(
        "replica 1 to present the new certificate",
        Duration::from_secs(10),
        || {
            let (addr, ca, new) = (addr.clone(), ca.clone(), new.clone());
            async move { (served_certificate(&addr, &ca).await? == new).then_some(()) }
        },
    )
    .await;
    assert_eq!(
        cluster.replicas[&1].pid(),
        pid,
        "replica 1 was not restarted"
    );
    cluster
        .replica_status(1)
        .await
        .expect("replica 1 answers over the new certificate");
}

/// A replica stopped with SIGTERM and started again still demands credentials (and still
/// refuses a token revoked before it stopped): restarting does not fall back to plaintext.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_replica_still_demands_credentials() {
    init_tracing();
    let mut cluster = Cluster::start_secure(1, &[]);
    cluster.wait_leader(&[1]).await;
    let (revoked, claims) = cluster.token(Role::Viewer, "bob", HOUR);
    let answer = dllm_tests::clients_with(&cluster.admin(), &cluster.addr(1))
        .await
        .tui
        .execute_command(pb::CommandRequest {
            command: "token".into(),
            args: vec!["revoke".into(), claims.jti.clone()],
            ..Default::default()
        })
        .await
        .expect("revoke")
        .into_inner();
    assert_eq!(answer.exit_code, 0, "{answer:?}");

    info!("--- SIGTERM and restart");
    let status = cluster.replica(1).terminate();
    assert!(status.success(), "a clean stop: {status:?}");
    cluster.restart(1);
    cluster.wait_leader(&[1]).await;
    let addr = cluster.addr(1);

    info!("--- it still demands credentials");
    let ch = channel_with(&cluster.anonymous(), &addr)
        .await
        .expect("connect");
    let e = Probe::GetNodeList
        .call(&ch)
        .await
        .expect_err("no credentials after a restart");
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    if let Err(answered) = connection_fails(&ClientAuth::plaintext(), &addr).await {
        panic!("plaintext after a restart: {answered}");
    }
    let ch = channel_with(&cluster.token_auth(&revoked), &addr)
        .await
        .expect("connect");
    let e = Probe::GetNodeList
        .call(&ch)
        .await
        .expect_err("the revoked token after a restart");
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("revoked"), "{e:?}");
    let (fresh, _) = cluster.token(Role::Viewer, "bob", HOUR);
    let ch = channel_with(&cluster.token_auth(&fresh), &addr)
        .await
        .expect("connect");
    Probe::GetNodeList
        .call(&ch)
        .await
        .expect("a good token after a restart");
}

/// `dllm-control-plane` on a non-loopback address without TLS exits non-zero, saying to
/// give TLS or `--insecure`; with `--insecure` it starts and serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_off_loopback_needs_insecure() {
    init_tracing();
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let here = format!("127.0.0.1:{port}");
    let args = |data: &str| -> Vec<String> {
        [
            "--id",
            "1",
            "--listen",
            &format!("0.0.0.0:{port}"),
            "--advertise",
            &here,
            "--initial-cluster",
            &format!("1={here}"),
            "--data-dir",
            &dir.path().join(data).display().to_string(),
        ]
        .map(String::from)
        .to_vec()
    };

    info!("--- without TLS or --insecure: refused");
    let mut child = Command::new(binary("dllm-control-plane"))
        .args(args("refused"))
        .env_remove("DLLM_INSECURE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start dllm-control-plane");
    let status = wait_for(
        "dllm-control-plane to refuse to start",
        Duration::from_secs(15),
        || {
            let exited = child.try_wait().expect("wait");
            async move { exited }
        },
    )
    .await;
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().expect("stderr"), &mut stderr)
        .expect("read stderr");
    assert!(!status.success(), "it exits non-zero: {status:?}\n{stderr}");
    assert!(
        stderr.contains("--insecure"),
        "the error names --insecure: {stderr}"
    );

    info!("--- with --insecure: it serves");
    let mut cmd = Command::new(binary("dllm-control-plane"));
    cmd.args(args("insecure")).arg("--insecure");
    let mut insecure = ChildProcess::spawn("insecure replica", cmd, dir.path().join("cp.log"));
    wait_for(
        "the --insecure replica to answer",
        Duration::from_secs(30),
        || {
            let here = here.clone();
            async move { replica_status(&here).await.ok() }
        },
    )
    .await;
    assert!(insecure.is_running(), "it keeps running");
    insecure.kill();
}

/// A request over the 4 MiB message limit (tonic's default decode limit) is answered
/// RESOURCE_EXHAUSTED, compressed or not; one just under it reaches validation; the replica
/// keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_request_is_resource_exhausted() {
    init_tracing();
    let cluster = Cluster::start(1, &[]);
    cluster.wait_leader(&[1]).await;
    let addr = cluster.addr(1);
    let with_address = |bytes: usize| {
        let mut request = join_request("big", 1);
        request.address = "x".repeat(bytes);
        request
    };
    const MIB: usize = 1 << 20;

    info!("--- 5 MiB, uncompressed and gzip");
    let mut plain = DiscoveryServiceClient::new(channel(&addr).await.expect("connect"));
    let e = plain
        .register_with_cluster(with_address(5 * MIB))
        .await
        .expect_err("5 MiB uncompressed");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    let mut gzip = clients(&addr).await;
    let e = gzip
        .discovery
        .register_with_cluster(with_address(5 * MIB))
        .await
        .expect_err("5 MiB gzip");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");

    info!("--- just under the limit: an ordinary validation error");
    let e = plain
        .register_with_cluster(with_address(4 * MIB - 1024))
        .await
        .expect_err("an address of 4 MiB is not an address");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

    info!("--- the replica still serves");
    plain
        .register_with_cluster(join_request("small", 1))
        .await
        .expect("an ordinary registration");
}
