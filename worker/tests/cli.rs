//! The `dllm-worker` binary refuses bad configuration with a message naming the flag and a
//! non-zero exit, before doing anything.

use std::process::Command;

#[test]
fn bad_config_names_the_flag() {
    let cases: [(&[&str], &str); 4] = [
        (
            &["--node-id", "w1", "--listen", "127.0.0.1:0"],
            "--seed-nodes",
        ),
        (
            &[
                "--node-id",
                "bad id",
                "--listen",
                "127.0.0.1:0",
                "--seed-nodes",
                "a:1",
            ],
            "--node-id",
        ),
        (
            &[
                "--node-id",
                "w1",
                "--listen",
                "127.0.0.1:0",
                "--seed-nodes",
                "a:1",
                "--simulate-gpus",
                "lots",
            ],
            "--simulate-gpus",
        ),
        (
            &[
                "--node-id",
                "w1",
                "--listen",
                "127.0.0.1:0",
                "--seed-nodes",
                "a:1",
                "--heartbeat-interval",
                "0s",
            ],
            "--heartbeat-interval",
        ),
    ];
    for (args, flag) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_dllm-worker"))
            .args(args)
            .output()
            .expect("run dllm-worker");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} must fail");
        assert!(
            stderr.contains(flag),
            "{args:?}: {stderr:?} should name {flag}"
        );
    }
}
