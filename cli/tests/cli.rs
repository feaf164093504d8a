//! The `dllm` binary without a cluster: clear errors and exit codes.

use std::process::Command;

fn dllm(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_dllm"))
        .args(args)
        .env_remove("DLLM_ENDPOINTS")
        .output()
        .expect("run dllm")
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
        .env("DLLM_DEV_SKIP_BUILD", "1")
        .output()
        .expect("run dllm dev");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("port {port}")), "{stderr}");
}
