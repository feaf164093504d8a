//! `dllm watch` against a real cluster: what it prints, when it prints nothing, and how it
//! ends when the cluster goes away.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use dllm_tests::{binary, dllm_at as dllm, init_tracing, wait_for, Cluster};
use tracing::info;

/// Starts `dllm` with `args`, its stdout and stderr read line by line on threads of their
/// own; the lines come over the two receivers as they are printed.
fn spawn_dllm(
    args: &[&str],
    envs: &[(&str, &str)],
) -> (
    std::process::Child,
    mpsc::Receiver<String>,
    mpsc::Receiver<String>,
) {
    let mut child = Command::new(binary("dllm"))
        .args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start dllm");
    let read = |pipe: Box<dyn std::io::Read + Send>| {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        rx
    };
    let out = read(Box::new(child.stdout.take().expect("stdout")));
    let err = read(Box::new(child.stderr.take().expect("stderr")));
    (child, out, err)
}

/// The first line with `want` among those in `seen`, or else the next to come within
/// `timeout`; every line read is kept in `seen` (so lines can be awaited in any order).
fn line_with(
    rx: &mpsc::Receiver<String>,
    want: &str,
    timeout: Duration,
    seen: &mut Vec<String>,
) -> String {
    if let Some(line) = seen.iter().find(|l| l.contains(want)) {
        return line.clone();
    }
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                seen.push(line.clone());
                if line.contains(want) {
                    return line;
                }
            }
            Err(e) => panic!("no line with {want:?} within {timeout:?} ({e}); seen: {seen:#?}"),
        }
    }
}

/// Seconds since midnight of `HH:MM:SS`.
fn clock_seconds(hms: &str) -> i64 {
    let parts: Vec<i64> = hms
        .split(':')
        .map(|p| {
            p.parse()
                .unwrap_or_else(|_| panic!("HH:MM:SS, got {hms:?}"))
        })
        .collect();
    assert_eq!(parts.len(), 3, "HH:MM:SS, got {hms:?}");
    parts[0] * 3600 + parts[1] * 60 + parts[2]
}

/// `dllm watch` against a real cluster (reached through `http://` endpoints, as an etcdctl
/// user types them): it prints the state once, then nothing while nothing changes; a drained
/// node's status change and its layers moving to the other worker each get one line,
/// stamped with the local time of day (a time zone of UTC+5 is set to tell it from UTC),
/// and as one JSON object each with `--output json`; when the cluster is gone it says so on
/// stderr and exits 1 after `--give-up-after`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_changes_with_local_times() {
    init_tracing();
    let mut cluster = Cluster::start(3, &[]);
    cluster.wait_leader(&[1, 2, 3]).await;
    let _w1 = cluster.start_worker("watch-1", "1x81920:NVIDIA H100", &[]);
    let _w2 = cluster.start_worker("watch-2", "1x81920:NVIDIA H100", &[]);
    let endpoints = cluster
        .replicas
        .values()
        .map(|r| format!("http://{}", r.addr))
        .collect::<Vec<_>>()
        .join(",");
    wait_for("both workers healthy", Duration::from_secs(30), || {
        let out = dllm(&endpoints, &["status"]);
        let up = String::from_utf8_lossy(&out.stdout).contains("2 healthy of 2 members");
        async move { up.then_some(()) }
    })
    .await;
    let out = Command::new(binary("dllm"))
        .args(["nodes", "--endpoints", &endpoints])
        .output()
        .expect("dllm nodes");
    let nodes = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && nodes.contains("1x NVIDIA H100 80G"),
        "--endpoints after the command, and the GPUs listed: {out:?}"
    );
    let out = dllm(
        &endpoints,
        &[
            "exec", "model", "add", "demo", "--layers", "8", "--size", "1G",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    // The model fits on one worker (placement uses the fewest): which one holds it.
    let holder: String = wait_for("demo placed", Duration::from_secs(30), || {
        let out = dllm(&endpoints, &["models", "--output", "json"]);
        let models: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let holder = models[0]["node_assignments"][0]
            .as_str()
            .and_then(|a| a.split(':').next())
            .map(str::to_string);
        async move { holder }
    })
    .await;
    let other = if holder == "watch-1" {
        "watch-2"
    } else {
        "watch-1"
    };

    info!("--- the first state, then silence while nothing changes");
    let watch_args = |output: &'static str| {
        vec![
            "--endpoints".to_string(),
            endpoints.clone(),
            "--output".into(),
            output.into(),
            "watch".into(),
            "--interval".into(),
            "1".into(),
            "--give-up-after".into(),
            "5".into(),
        ]
    };
    let args = watch_args("table");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let tz = [("TZ", "DLLM-5")];
    let (mut watch, out, err) = spawn_dllm(&args, &tz);
    let json_args = watch_args("json");
    let json_args: Vec<&str> = json_args.iter().map(String::as_str).collect();
    let (mut json_watch, json_out, _json_err) = spawn_dllm(&json_args, &tz);
    let mut seen = Vec::new();
    let mut said = Vec::new();
    line_with(&err, "streaming from", Duration::from_secs(30), &mut said);
    let first = Duration::from_secs(10);
    line_with(
        &out,
        "nodes: watch-1 healthy, watch-2 healthy",
        first,
        &mut seen,
    );
    line_with(&out, "models: demo placed, layers 0-", first, &mut seen);
    line_with(&out, "metrics: 2/2 nodes healthy, 8/", first, &mut seen);
    // The cluster is settled (both workers healthy, the model placed, each kind reported
    // once), so nothing may be printed while the server sends its snapshot every second: a
    // window of five intervals must pass with no line (a watch that reprints its state, as
    // it used to, prints within the first).
    let window = Duration::from_secs(5);
    let started = std::time::Instant::now();
    match out.recv_timeout(window) {
        Err(mpsc::RecvTimeoutError::Timeout) => {}
        other => panic!(
            "printed {other:?} after {:?} with nothing changing; before: {seen:#?}",
            started.elapsed()
        ),
    }

    info!("--- a drained node: its status and its layers moving, in local time");
    let out_drain = dllm(&endpoints, &["exec", "drain", &holder]);
    assert!(out_drain.status.success(), "{out_drain:?}");
    let status = line_with(
        &out,
        &format!("node {holder}: healthy -> draining"),
        first,
        &mut seen,
    );
    let moved = line_with(&out, "demo: layers ", first, &mut seen);
    assert!(moved.ends_with(&format!(" {holder} -> {other}")), "{moved}");
    // UTC+5: the printed time of day is the UTC one plus five hours.
    let utc = dllm_tests::unix_now() as i64 % 86_400;
    let local = (utc + 5 * 3600) % 86_400;
    for line in [&status, &moved] {
        let (time, _) = line.split_once(' ').expect("a time, then the change");
        let off = (clock_seconds(time) - local).rem_euclid(86_400);
        assert!(
            off.min(86_400 - off) <= 60,
            "{line:?}: not the local time (expected about {local} s after midnight)"
        );
    }
    let event = loop {
        let line = json_out
            .recv_timeout(first)
            .expect("the JSON watch reports the move");
        let v: serde_json::Value = serde_json::from_str(&line).expect("one JSON object a line");
        if v["event"] == "layers_moved" {
            break v;
        }
    };
    assert_eq!(
        (
            event["model"].as_str(),
            event["from"].as_str(),
            event["to"].as_str()
        ),
        (Some("demo"), Some(holder.as_str()), Some(other)),
        "{event}"
    );

    info!("--- the cluster gone: said on stderr, then exit 1");
    let ids: Vec<u64> = cluster.replicas.keys().copied().collect();
    for id in ids {
        cluster.replica(id).kill();
    }
    line_with(&err, "reconnecting", Duration::from_secs(20), &mut said);
    let gave_up = line_with(&err, "giving up", Duration::from_secs(30), &mut said);
    assert!(
        gave_up.contains("no endpoint gave updates for 5 s"),
        "{gave_up}"
    );
    let code = wait_for("dllm watch to exit", Duration::from_secs(10), || {
        let code = watch.try_wait().expect("try_wait").map(|s| s.code());
        async move { code }
    })
    .await;
    assert_eq!(code, Some(1), "stderr: {said:#?}");
    let _ = json_watch.kill();
    let _ = json_watch.wait();
}
