//! The `dllm` command against real clusters: `dllm dev` end to end, and the TUI driven
//! through tmux (`send-keys`, `capture-pane`), as a person would use them.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use dllm_tests::{binary, dllm_at as dllm, init_tracing, wait_for, Cluster};
use tracing::info;

/// A base port with 120 free ports above it (dev uses BASE.., BASE+10.., BASE+100..), all
/// below the kernel's ephemeral range: a port in that range can be taken at any moment by an
/// outgoing connection or a `bind(0)` of a test running beside this one (CI saw `dllm dev`
/// refuse a base from `free_port()` that way).
fn free_base() -> u16 {
    use rand::Rng;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (lo, hi) = (10_000u16, ephemeral_low.saturating_sub(130).max(10_200));
    let mut rng = rand::thread_rng();
    loop {
        let base = rng.gen_range(lo..hi);
        if (0..120).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
}

/// `dllm dev` starts replicas and workers, registers the demo model, and the operator
/// commands see it all; a killed worker is reported, the rest go on, and `restart worker-1`
/// on its stdin starts it again; Ctrl-C (SIGINT) stops the workers (they leave), then the
/// replicas, and says where the data is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_cluster_and_operator_commands() {
    init_tracing();
    let base = free_base();
    let data = tempfile::tempdir().expect("tmp");
    // One binary is all a user needs: a copy of `dllm` alone in a folder, with no cargo on
    // PATH, starts the whole cluster by running itself.
    let alone = tempfile::tempdir().expect("tmp");
    let lone_dllm = alone.path().join("dllm");
    std::fs::copy(binary("dllm"), &lone_dllm).expect("copy dllm");
    let mut command = Command::new(&lone_dllm);
    command
        .args(["dev", "--base-port", &base.to_string(), "--workers", "2"])
        .arg("--data-dir")
        .arg(data.path())
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env_remove("CARGO")
        .env_remove("CARGO_TARGET_DIR")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // A child forked meanwhile by another test's thread may still hold the copy's write
    // descriptor (until it execs): the kernel then refuses to run the file (ETXTBSY) until
    // that child has exec'd, which takes milliseconds.
    let mut dev = wait_for(
        "the copied dllm to be runnable",
        Duration::from_secs(10),
        || {
            let spawned = match command.spawn() {
                Ok(child) => Some(child),
                Err(e) if e.raw_os_error() == Some(nix::libc::ETXTBSY) => None,
                Err(e) => panic!("start dllm dev: {e}"),
            };
            async move { spawned }
        },
    )
    .await;
    let mut typed = dev.stdin.take().expect("stdin");
    let (tx, rx) = mpsc::channel();
    let stdout = dev.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // stderr is read on its own thread so a failed start can say why, and so dev never blocks
    // on a full pipe; its lines also come over `err_rx` as they are written.
    let stderr = dev.stderr.take().expect("stderr");
    let (err_tx, err_rx) = mpsc::channel();
    let stderr_lines = std::thread::spawn(move || {
        let mut all = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = err_tx.send(line.clone());
            all.push(line);
        }
        all.join("\n")
    });
    let mut printed = Vec::new();
    let up = loop {
        match rx.recv_timeout(Duration::from_secs(90)) {
            Ok(line) => {
                let done = line.contains("Ctrl-C stops the cluster");
                printed.push(line);
                if done {
                    break true;
                }
            }
            Err(_) => break false,
        }
    };
    if !up {
        let _ = dev.kill();
        let status = dev.wait();
        let stderr = stderr_lines.join().unwrap_or_default();
        panic!("dllm dev did not come up ({status:?}): stdout {printed:?}\nstderr:\n{stderr}");
    }
    let printed = printed.join("\n");
    assert!(
        printed.contains("demo model: model demo-70b added and placed"),
        "{printed}"
    );
    let endpoints = format!("127.0.0.1:{base},127.0.0.1:{}", base + 1);

    info!("--- operator commands");
    let out = dllm(&endpoints, &["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text.contains("2 healthy of 2 members") && text.contains("1 placed"),
        "{text}"
    );
    let out = dllm(&endpoints, &["nodes", "--output", "json"]);
    let nodes: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(nodes.as_array().map(Vec::len), Some(2), "{nodes}");
    let out = dllm(&endpoints, &["models"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("demo-70b"),
        "{out:?}"
    );
    let out = dllm(&endpoints, &["exec", "drain", "nobody"]);
    assert_eq!(out.status.code(), Some(1), "refusals exit 1: {out:?}");
    let out = dllm(&endpoints, &["exec", "drain"]);
    assert_eq!(out.status.code(), Some(2), "usage errors exit 2: {out:?}");
    let metrics = reqwest_like(&format!("127.0.0.1:{}", base + 100));
    assert!(metrics.contains("distributed_llm_raft_term"), "{metrics}");
    assert!(
        metrics.contains("distributed_llm_model_placed{model=\"demo-70b\"} 1"),
        "{metrics}"
    );

    info!("--- a worker killed: reported, the rest go on, restarted on request");
    let pid = |name: &str, port: u16| {
        let out = Command::new("pgrep")
            .args(["-f", &format!("node-id {name} --listen 127.0.0.1:{port}")])
            .output()
            .expect("pgrep");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .and_then(|p| p.parse::<i32>().ok())
    };
    let victim = pid("worker-1", base + 10).expect("worker-1 runs");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("SIGKILL worker-1");
    let reported = loop {
        let line = err_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("dllm dev reports the exit");
        if line.contains("worker-1 exited") {
            break line;
        }
    };
    assert!(
        reported.contains("SIGKILL") && reported.contains("worker-1.log"),
        "{reported}"
    );
    assert!(
        dev.try_wait().expect("try_wait").is_none(),
        "dllm dev goes on"
    );
    use std::io::Write as _;
    writeln!(typed, "restart worker-1").expect("type a line");
    let restarted = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("dllm dev answers");
        if line.contains("worker-1 started again") {
            break line;
        }
    };
    assert!(
        pid("worker-1", base + 10).is_some_and(|p| p != victim),
        "{restarted}"
    );
    wait_for(
        "both workers healthy again",
        Duration::from_secs(30),
        || async {
            let out = dllm(&endpoints, &["status"]);
            String::from_utf8_lossy(&out.stdout)
                .contains("2 healthy of 2 members")
                .then_some(())
        },
    )
    .await;

    info!("--- Ctrl-C");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(dev.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("SIGINT");
    let status = dev.wait().expect("dllm dev exits");
    let stderr = stderr_lines.join().expect("stderr reader");
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("data and logs are in {}", data.path().display())),
        "{stderr}"
    );
    // Workers were stopped while the replicas answered: each left without a complaint.
    let log = std::fs::read_to_string(data.path().join("worker-2.log")).expect("worker-2.log");
    assert!(
        log.contains("left the cluster") && !log.contains("leave failed"),
        "{log}"
    );
    assert!(
        !log.contains('\u{1b}'),
        "plain text, no colour codes: {log}"
    );
    let leftover = Command::new("pgrep")
        .args(["-f", &format!("127.0.0.1:{base}")])
        .output()
        .expect("pgrep");
    assert!(
        leftover.stdout.is_empty(),
        "children still running: {leftover:?}"
    );
}

/// GET /metrics over a plain TCP socket (HTTP/1.0), to avoid an HTTP client dependency.
fn reqwest_like(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to /metrics");
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .expect("request");
    let mut body = String::new();
    s.read_to_string(&mut body).expect("response");
    body
}

fn tmux(args: &[&str]) -> std::process::Output {
    Command::new("tmux")
        .args(args)
        .output()
        .expect("tmux is installed (apt-get install tmux; .ci/run does)")
}

fn screen(session: &str) -> String {
    String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", session]).stdout).to_string()
}

/// `dllm tui` in an 80x24 tmux pane: every tab title is whole, the Nodes tab lists the worker
/// live with its GPU model, `2` shows the models, `:ping` runs a command and shows its answer,
/// a long answer (a mistyped command: the error, then the help) is shown from its start and
/// scrolls to its end, the stream survives the replica it reads from being killed
/// (reconnecting to another), the data is marked stale once every replica is gone, and `q`
/// quits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tui_in_tmux() {
    init_tracing();
    let mut cluster = Cluster::start(3, &[]);
    cluster.wait_leader(&[1, 2, 3]).await;
    let _worker = cluster.start_worker("tui-worker", "1x81920:NVIDIA H100", &[]);
    let endpoints = cluster.seeds();
    let session = format!("dllm-tui-{}", std::process::id());
    let command = format!("{} tui --endpoints {endpoints}", binary("dllm").display());
    let out = tmux(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "80",
        "-y",
        "24",
        &command,
    ]);
    assert!(out.status.success(), "{out:?}");
    struct Kill(String);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = Command::new("tmux")
                .args(["kill-session", "-t", &self.0])
                .output();
        }
    }
    let _guard = Kill(session.clone());
    let see = |want: &'static str| {
        let session = session.clone();
        async move {
            wait_for(
                &format!("{want:?} on the TUI screen"),
                Duration::from_secs(30),
                || {
                    let s = screen(&session);
                    async move { s.contains(want).then_some(s) }
                },
            )
            .await
        }
    };
    let s = see("tui-worker").await;
    assert!(s.contains("healthy") && s.contains("live:"), "{s}");
    assert!(
        s.contains("1 Nodes │ 2 Models │ 3 Cluster"),
        "tab titles whole at 80 columns: {s}"
    );
    assert!(
        s.contains("1x NVIDIA H100 80G"),
        "GPU model and memory: {s}"
    );
    tmux(&["send-keys", "-t", &session, "2"]);
    see("Models (0)").await;
    tmux(&["send-keys", "-t", &session, ":", "ping", "Enter"]);
    see("pong from replica").await;

    info!("--- a long answer scrolls");
    tmux(&["send-keys", "-t", &session, ":", "modle add x", "Enter"]);
    let s = see("did you mean").await;
    assert!(
        s.contains("(PgUp/PgDn)") && !s.contains("(exit 2)"),
        "the answer's start, and a scroll hint: {s}"
    );
    tmux(&["send-keys", "-t", &session, "End"]);
    let s = see("(exit 2)").await;
    assert!(!s.contains("did you mean"), "scrolled to the end: {s}");
    tmux(&["send-keys", "-t", &session, "Home"]);
    see("did you mean").await;
    tmux(&["send-keys", "-t", &session, "?"]);
    see("Keys").await;
    tmux(&["send-keys", "-t", &session, "x", "1"]);
    see("Nodes (1)").await;

    info!("--- kill the replica the TUI streams from");
    let s = screen(&session);
    let live = cluster
        .replicas
        .values()
        .find(|r| s.contains(&format!("live: {}", r.addr)))
        .map(|r| r.id)
        .expect("the TUI names the endpoint it streams from");
    cluster.replica(live).kill();
    // Up to a minute: a new stream that gives no update (the survivors still electing, on a
    // loaded 2-core CI machine) costs the TUI 10 s before it tries the next replica, and the
    // screen it last showed says why if it never gets there.
    let last = std::sync::Mutex::new(String::new());
    let moved = tokio::time::timeout(
        Duration::from_secs(60),
        wait_for(
            "the TUI to stream from another replica",
            Duration::from_secs(120),
            || {
                let s = screen(&session);
                let dead = cluster.addr(live);
                *last.lock().unwrap() = s.clone();
                async move {
                    (s.contains("live:") && !s.contains(&format!("live: {dead}"))).then_some(s)
                }
            },
        ),
    )
    .await
    .unwrap_or_else(|_| {
        panic!(
            "the TUI did not stream from another replica within 60 s; its screen:\n{}",
            last.lock().unwrap()
        )
    });
    assert!(moved.contains("tui-worker"), "{moved}");

    info!("--- every replica gone: the data is marked stale");
    let ids: Vec<u64> = cluster.replicas.keys().copied().collect();
    for id in ids {
        cluster.replica(id).kill();
    }
    let s = see("disconnected: data from").await;
    assert!(s.contains("Nodes (1) (stale)"), "{s}");

    tmux(&["send-keys", "-t", &session, "q"]);
    wait_for("the TUI to quit", Duration::from_secs(10), || {
        let gone = !tmux(&["has-session", "-t", &session]).status.success();
        async move { gone.then_some(()) }
    })
    .await;
}
