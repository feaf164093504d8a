//! What `deploy/` ships is usable as it is: the example TOML configs hold only settings each
//! binary knows, with values its flags take, and the systemd units pass `systemd-analyze
//! verify` (where systemd is installed; CI's machine has it).

use std::process::Command;

use clap::CommandFactory;

fn deploy(file: &str) -> String {
    format!("{}/../deploy/{file}", env!("CARGO_MANIFEST_DIR"))
}

fn load<A: CommandFactory + clap::FromArgMatches>(config: &str) -> A {
    dllm_util::layered::try_load_from::<A, _, _>(A::command(), ["x", "--config", &deploy(config)])
        .unwrap_or_else(|e| panic!("deploy/{config}: {e}"))
}

#[test]
fn example_configs_parse_as_the_binaries_flags() {
    let cp: dllm_control_plane::config::Args = load("config/control-plane.toml");
    let cp = format!("{cp:?}");
    for value in [
        "cp1:8080",
        "/var/lib/dllm/raft",
        "replica-1.key",
        "jwt-signing.pub",
    ] {
        assert!(cp.contains(value), "{value} read from the file: {cp}");
    }
    let worker: dllm_worker::config::Args = load("config/worker.toml");
    let worker = format!("{worker:?}");
    for value in ["gpu-1", "cp3:8080", "gpu-1.key"] {
        assert!(
            worker.contains(value),
            "{value} read from the file: {worker}"
        );
    }
}

#[test]
fn systemd_units_verify() {
    let Ok(probe) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("systemd-analyze is not installed: the units are not verified here");
        return;
    };
    assert!(probe.status.success());
    let dir = tempfile::tempdir().expect("tmp");
    let dllm = dllm_tests::binary("dllm");
    for (unit, sub) in [
        ("dllm-control-plane.service", "control-plane"),
        ("dllm-worker.service", "worker"),
    ] {
        let text = std::fs::read_to_string(deploy(&format!("systemd/{unit}"))).expect(unit);
        let exec = format!("ExecStart=/usr/local/bin/dllm {sub} --config /etc/dllm/");
        assert!(text.contains(&exec), "{unit} runs the one binary");
        for needed in [
            "KillSignal=SIGTERM",
            "TimeoutStopSec=",
            "Restart=on-failure",
            "User=dllm",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
        ] {
            assert!(text.contains(needed), "{unit} has {needed}");
        }
        // verify checks that ExecStart's program exists: the one this build made.
        let path = dir.path().join(unit);
        let text = text.replace("/usr/local/bin/dllm", &dllm.display().to_string());
        std::fs::write(&path, text).expect("write");
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&path)
            .output()
            .expect("systemd-analyze verify");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let own: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains(unit) || l.contains("Unknown"))
            .collect();
        assert!(out.status.success() && own.is_empty(), "{unit}: {stderr}");
    }
}
