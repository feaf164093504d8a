//! The `dllm` binary without a cluster: clear errors and exit codes, and the certificates
//! and tokens it makes.

use std::{path::Path, process::Command};

use dllm_auth::{Role, DEFAULT_TRUST_DOMAIN};

/// Runs `dllm` with none of the user's DLLM_* settings.
fn dllm(args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dllm"));
    for var in [
        "DLLM_ENDPOINTS",
        "DLLM_TLS_CA",
        "DLLM_TLS_CERT",
        "DLLM_TLS_KEY",
        "DLLM_TOKEN",
        "DLLM_TRUST_DOMAIN",
        "DLLM_JWT_SIGNING_KEY",
    ] {
        cmd.env_remove(var);
    }
    cmd.args(args).output().expect("run dllm")
}

/// Runs `dllm` and expects it to succeed; its stdout.
fn dllm_ok(args: &[&str]) -> String {
    let out = dllm(args);
    assert!(
        out.status.success(),
        "dllm {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn s(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 temp path")
}

/// With no endpoint answering, a command fails and says which endpoints it tried and what
/// each said.
#[test]
fn unreachable_endpoints_are_listed() {
    let a = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let b = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let (pa, pb) = (
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    );
    drop((a, b));
    let endpoints = format!("127.0.0.1:{pa},127.0.0.1:{pb}");
    let out = dllm(&["--endpoints", &endpoints, "status"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no control-plane endpoint answered"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("127.0.0.1:{pa}")) && stderr.contains(&format!("127.0.0.1:{pb}")),
        "{stderr}"
    );
}

/// `dllm snapshot status` refuses a file that is not a snapshot, naming it, and `dllm
/// snapshot save` with no endpoint answering lists them and writes nothing.
#[test]
fn snapshot_commands_refuse_without_writing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let foreign = dir.path().join("notes.txt");
    std::fs::write(&foreign, "not a snapshot").expect("write");
    let out = dllm(&["snapshot", "status", s(&foreign)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(s(&foreign)) && stderr.contains("not a dllm snapshot file"),
        "{stderr}"
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind")
        .port();
    let target = dir.path().join("backup.snap");
    let endpoint = format!("127.0.0.1:{port}");
    let out = dllm(&["--endpoints", &endpoint, "snapshot", "save", s(&target)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&endpoint), "{stderr}");
    assert!(!target.exists(), "nothing is written");
}

/// The cluster flags are listed only where they apply: `dllm nodes --help` and `dllm --help`
/// show `--endpoints`, the credentials and `--output`; the commands that reach no cluster do
/// not (`token` keeps `--output`, for `token create --output json`); both places for the flag
/// are still taken, and `http://` endpoints too.
#[test]
fn cluster_flags_show_only_where_they_apply() {
    let cluster_flags = [
        "--endpoints",
        "--tls-ca",
        "--tls-cert",
        "--tls-key",
        "--token ",
    ];
    for args in [
        &["dev", "--help"][..],
        &["certs", "init", "--help"],
        &["certs", "--help"],
        &["token", "create", "--help"],
        &["help", "dev"],
    ] {
        let help = dllm_ok(args);
        for flag in cluster_flags {
            assert!(!help.contains(flag), "dllm {args:?} lists {flag}:\n{help}");
        }
        let has_output = help.contains("--output");
        assert_eq!(
            has_output,
            args[0] == "token",
            "dllm {args:?} and --output:\n{help}"
        );
    }
    for args in [&["nodes", "--help"][..], &["--help"], &["watch", "--help"]] {
        let help = dllm_ok(args);
        for flag in cluster_flags.iter().chain(&["--output"]) {
            assert!(help.contains(flag), "dllm {args:?} lacks {flag}:\n{help}");
        }
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    for args in [
        ["--endpoints", &endpoint, "nodes"],
        ["nodes", "--endpoints", &endpoint],
    ] {
        let out = dllm(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!("  127.0.0.1:{port}: cannot connect")),
            "the flag is taken in either place, scheme stripped: {args:?}: {stderr}"
        );
    }
}

/// `dllm dev` refuses to start when one of its ports is taken, naming the port.
#[test]
fn dev_names_a_taken_port() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().unwrap().port();
    let out = Command::new(env!("CARGO_BIN_EXE_dllm"))
        .args([
            "dev",
            "--base-port",
            &port.to_string(),
            "--replicas",
            "1",
            "--workers",
            "0",
        ])
        .output()
        .expect("run dllm dev");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("port {port}")), "{stderr}");
}

/// `dllm certs init` writes the CA, a certificate and key per replica and the token key
/// pair, prints the next steps, and refuses to run twice into the same folder.
#[test]
fn certs_init_writes_a_cluster_once() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("certs");
    let stdout = dllm_ok(&[
        "certs",
        "init",
        "--dir",
        s(&dir),
        "--hosts",
        "10.1.2.3,cp.example",
        "--replicas",
        "2",
    ]);
    for file in [
        "ca.crt",
        "ca.key",
        "replica-1.crt",
        "replica-1.key",
        "replica-2.crt",
        "replica-2.key",
        "jwt-signing.key",
        "jwt-signing.pub",
    ] {
        assert!(dir.join(file).is_file(), "{file} written");
    }
    assert!(
        !dir.join("replica-3.crt").exists(),
        "two replicas asked for"
    );
    assert!(
        stdout.contains("10.1.2.3, cp.example, localhost, 127.0.0.1"),
        "{stdout}"
    );
    assert!(stdout.contains("dllm certs issue"), "next steps: {stdout}");

    let again = dllm(&["certs", "init", "--dir", s(&dir)]);
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert_eq!(again.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("ca.key") && stderr.contains("refusing"),
        "{stderr}"
    );
}

/// `dllm certs issue` writes DIR/NAME.crt and .key, signed by the folder's CA and naming
/// the role and name; unknown roles are refused listing the known ones.
#[test]
fn certs_issue_writes_a_certificate_naming_its_holder() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    dllm_ok(&["certs", "init", "--dir", s(dir), "--replicas", "1"]);
    let stdout = dllm_ok(&[
        "certs",
        "issue",
        "--dir",
        s(dir),
        "--role",
        "worker",
        "--name",
        "worker-7",
        "--hosts",
        "10.0.0.7",
    ]);
    assert!(
        stdout.contains("dllm-worker --node-id worker-7"),
        "{stdout}"
    );
    let der = {
        use rustls_pki_types::{pem::PemObject, CertificateDer};
        CertificateDer::from_pem_file(dir.join("worker-7.crt")).expect("a PEM certificate")
    };
    let id = dllm_auth::identity::from_certificate(&der, DEFAULT_TRUST_DOMAIN).expect("identity");
    assert_eq!((id.role, id.name.as_str()), (Role::Worker, "worker-7"));
    dllm_auth::tls::server_config(&dllm_auth::tls::TlsFiles {
        ca: dir.join("ca.crt"),
        cert: Some(dir.join("worker-7.crt")),
        key: Some(dir.join("worker-7.key")),
    })
    .expect("the worker's certificate serves");

    let stdout = dllm_ok(&[
        "certs",
        "issue",
        "--dir",
        s(dir),
        "--role",
        "viewer",
        "--name",
        "grafana",
    ]);
    assert!(stdout.contains("export DLLM_TLS_CA="), "{stdout}");

    let out = dllm(&[
        "certs",
        "issue",
        "--dir",
        s(dir),
        "--role",
        "root",
        "--name",
        "x",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "a usage error: {stderr}");
    assert!(
        stderr.contains("viewer, operator, admin, worker"),
        "{stderr}"
    );
}

/// `dllm token create` prints only a JWT on stdout, which the public key from
/// `dllm certs init` verifies for the cluster's trust domain and no other.
#[test]
fn token_create_prints_a_token_the_public_key_verifies() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    dllm_ok(&["certs", "init", "--dir", s(dir), "--replicas", "1"]);
    let key = dir.join("jwt-signing.key");
    let public = std::fs::read(dir.join("jwt-signing.pub")).expect("public key");
    let verifier = |td: &str| {
        dllm_auth::token::Verifier::new(td, std::slice::from_ref(&public)).expect("verifier")
    };

    let stdout = dllm_ok(&[
        "token",
        "create",
        "--signing-key",
        s(&key),
        "--role",
        "operator",
        "--subject",
        "alice",
        "--ttl",
        "1h",
    ]);
    let token = stdout.trim();
    assert_eq!(token.lines().count(), 1, "only the token: {stdout}");
    assert_eq!(
        token.split('.').count(),
        3,
        "header.payload.signature: {token}"
    );
    let id = verifier(DEFAULT_TRUST_DOMAIN)
        .verify(token)
        .expect("verifies");
    assert_eq!((id.role, id.name.as_str()), (Role::Operator, "alice"));
    assert!(
        verifier("other.test").verify(token).is_err(),
        "another cluster refuses it"
    );

    let json = dllm_ok(&[
        "token",
        "create",
        "--signing-key",
        s(&key),
        "--role",
        "viewer",
        "--subject",
        "ci",
        "--ttl",
        "30m",
        "--trust-domain",
        "other.test",
        "--output",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&json).expect("one JSON document");
    let token = v["token"].as_str().expect("token");
    let id = verifier("other.test").verify(token).expect("verifies");
    assert_eq!(
        id.via,
        dllm_auth::identity::Via::Token {
            jti: v["jti"].as_str().expect("jti").to_string()
        }
    );
    assert_eq!(
        v["expires_at"].as_u64().expect("exp") - v["issued_at"].as_u64().expect("iat"),
        1800
    );

    for (flag, value) in [("--ttl", "0h"), ("--ttl", "soon"), ("--role", "replica")] {
        let mut args = vec![
            "token",
            "create",
            "--signing-key",
            s(&key),
            "--role",
            "admin",
            "--subject",
            "x",
        ];
        args.extend([flag, value]);
        let out = dllm(&args);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}");
    }
    let out = dllm(&[
        "token",
        "create",
        "--signing-key",
        s(&dir.join("ca.crt")),
        "--role",
        "admin",
        "--subject",
        "x",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--signing-key"), "{stderr}");
}

/// An `https://` endpoint without `--tls-ca` is refused naming the flag; with the CA and a
/// certificate, unreachable endpoints are still listed one by one.
#[test]
fn https_endpoints_need_the_ca_and_tls_failures_are_listed() {
    let out = dllm(&["--endpoints", "https://127.0.0.1:1", "status"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--tls-ca"), "{stderr}");

    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    dllm_ok(&["certs", "init", "--dir", s(dir), "--replicas", "1"]);
    dllm_ok(&[
        "certs",
        "issue",
        "--dir",
        s(dir),
        "--role",
        "admin",
        "--name",
        "me",
    ]);
    let free = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = free.local_addr().expect("addr").port();
    drop(free);
    let endpoints = format!("https://127.0.0.1:{port},http://localhost:{port}");
    let out = dllm(&[
        "--endpoints",
        &endpoints,
        "--tls-ca",
        s(&dir.join("ca.crt")),
        "--tls-cert",
        s(&dir.join("me.crt")),
        "--tls-key",
        s(&dir.join("me.key")),
        "nodes",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("127.0.0.1:{port}: cannot connect"))
            && stderr.contains(&format!("localhost:{port}: cannot connect")),
        "{stderr}"
    );

    let out = dllm(&["--tls-cert", s(&dir.join("me.crt")), "status"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--tls-cert needs --tls-ca"), "{stderr}");
}

/// `--help` shows examples; `exec --help` lists the commands ExecuteCommand takes; the node
/// commands take their own flags (`dllm control-plane --help` is the replica's).
#[test]
fn help_shows_examples_commands_and_node_flags() {
    let help = dllm_ok(&["--help"]);
    assert!(
        help.contains("Examples:") && help.contains("dllm exec drain"),
        "{help}"
    );
    for sub in ["control-plane", "worker"] {
        assert!(help.contains(sub), "{sub} listed: {help}");
    }
    let exec = dllm_ok(&["exec", "--help"]);
    for command in ["model add", "member remove", "token revoke", "rebalance"] {
        assert!(exec.contains(command), "{command} in exec --help: {exec}");
    }
    let cp = dllm_ok(&["control-plane", "--help"]);
    assert!(
        cp.contains("Usage: dllm control-plane") && cp.contains("--initial-cluster"),
        "{cp}"
    );
    let worker = dllm_ok(&["worker", "--help"]);
    assert!(
        worker.contains("Usage: dllm worker") && worker.contains("--seed-nodes"),
        "{worker}"
    );
    let bad = dllm(&["worker", "--no-such-flag"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--no-such-flag"));
}
