//! The `dllm-control-plane` binary refuses bad configuration and damaged data directories
//! with a message and a non-zero exit, before serving anything.

use std::{
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

fn run(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dllm-control-plane"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start dllm-control-plane");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("dllm-control-plane {args:?} kept running instead of refusing to start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").to_string()
}

/// Each bad setting is named by its flag in the error, and the exit status is non-zero.
#[test]
fn bad_config_names_the_flag() {
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().to_str().expect("utf-8 path");
    let addr = free_addr();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--listen", &addr, "--data-dir", data], "--id"),
        (
            vec!["--id", "0", "--listen", &addr, "--data-dir", data],
            "--id",
        ),
        (
            vec!["--id", "1", "--listen", "localhost", "--data-dir", data],
            "--listen",
        ),
        (vec!["--id", "1", "--listen", &addr], "--data-dir"),
        (
            vec![
                "--id",
                "1",
                "--listen",
                &addr,
                "--data-dir",
                data,
                "--initial-cluster",
                "1=nowhere",
            ],
            "--initial-cluster",
        ),
    ];
    for (args, flag) in cases {
        let out = run(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} must fail");
        assert!(
            stderr.contains(flag),
            "{args:?}: {stderr:?} should name {flag}"
        );
    }
}

/// A data directory whose store files are garbage stops the replica with an error that says
/// so; it is never reset to an empty store.
#[test]
fn damaged_data_dir_refuses_to_start() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = dir.path().join("raft");
    std::fs::create_dir_all(&store).expect("mkdir");
    std::fs::write(store.join("conf"), b"not a sled config at all").expect("write");
    std::fs::write(store.join("db"), vec![0x5Au8; 8192]).expect("write");
    let addr = free_addr();
    let out = run(&[
        "--id",
        "1",
        "--listen",
        &addr,
        "--data-dir",
        dir.path().to_str().expect("utf-8 path"),
        "--initial-cluster",
        &format!("1={addr}"),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a damaged store must not start: {stderr}"
    );
    assert!(
        stderr.contains("data directory"),
        "the error names the data directory: {stderr}"
    );
    assert_eq!(
        std::fs::read(store.join("conf")).expect("conf still there"),
        b"not a sled config at all",
        "the damaged files are left as they were"
    );
}
