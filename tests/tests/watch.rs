//! `dllm watch` against a real cluster: what it prints, when it prints nothing, and how it
//! ends when the cluster goes away; and the delta streams it reads, through a leader change.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc, Arc, Mutex,
    },
    time::Duration,
};

use dllm_proto::{pb, view::ClusterView};
use dllm_tests::{
    binary, dllm_at as dllm, init_tracing, register_all, wait_for, Cluster, FAST_LIVENESS,
};
use futures::StreamExt;
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

/// Follows a delta stream of nodes and models on `endpoints` in turn, applying each update to
/// `view`; when a stream breaks it subscribes again on the next endpoint, and the new
/// stream's whole lists replace what the view held. A delta before its whole list fails the
/// test.
async fn follow_deltas(
    endpoints: Vec<String>,
    view: Arc<Mutex<ClusterView>>,
    streams: Arc<AtomicUsize>,
) {
    for endpoint in endpoints.iter().cycle() {
        let Ok(Ok(ch)) =
            tokio::time::timeout(Duration::from_secs(2), dllm_tests::channel(endpoint)).await
        else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let mut c = dllm_tests::Clients::over(ch);
        let request = pb::UpdateStreamRequest {
            requester_id: "delta-test".into(),
            interval_seconds: 1,
            update_types: vec!["nodes".into(), "models".into()],
            deltas: true,
        };
        let Ok(stream) = c.tui.stream_updates(request).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        streams.fetch_add(1, Ordering::SeqCst);
        let mut stream = stream.into_inner();
        let mut whole = Vec::new();
        while let Ok(Some(Ok(u))) =
            tokio::time::timeout(Duration::from_secs(5), stream.next()).await
        {
            if !u.delta {
                whole.push(u.update_type.clone());
            }
            assert!(
                whole.contains(&u.update_type),
                "a delta before its whole list: {u:?}"
            );
            if u.update_type == "models"
                && (!u.models.is_empty() || !u.removed_model_ids.is_empty() || !u.delta)
            {
                info!(
                    "{endpoint}: models delta={} {:?} removed {:?}",
                    u.delta,
                    u.models.iter().map(|m| &m.id).collect::<Vec<_>>(),
                    u.removed_model_ids
                );
            }
            view.lock().unwrap().apply(u).expect("applies");
        }
    }
}

fn model_ids(models: &[pb::ModelInfo]) -> Vec<String> {
    models
        .iter()
        .map(|m| format!("{}:{}", m.id, m.placement_status))
        .collect()
}

/// What a view or a whole list says of the nodes (all but last_seen, which a delta refreshes
/// every 30 s) and the models.
fn described(
    nodes: Vec<pb::NodeInfo>,
    models: Vec<pb::ModelInfo>,
) -> (Vec<pb::NodeInfo>, Vec<pb::ModelInfo>) {
    let mut nodes: Vec<pb::NodeInfo> = nodes
        .into_iter()
        .map(|n| pb::NodeInfo { last_seen: 0, ..n })
        .collect();
    nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    (nodes, models)
}

/// `StreamUpdates` with `deltas`, followed by clients that apply them: nodes join, leave and
/// fall unhealthy then offline (they never heartbeat), models come and go, and the leader is
/// SIGKILLed in the middle. A stream on a follower carries on through the leader change; a
/// stream on the leader breaks, and its client resumes on another replica from a new whole
/// list. Both clients' lists end equal to what GetNodeList and GetModelList answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_streams_keep_the_whole_lists_through_a_leader_change() {
    init_tracing();
    let mut cluster = Cluster::start(3, FAST_LIVENESS);
    let leader = cluster.wait_leader(&[1, 2, 3]).await;
    let survivors: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
    let addrs: std::collections::HashMap<u64, String> = [1, 2, 3]
        .into_iter()
        .map(|id| (id, cluster.addr(id)))
        .collect();
    let addr = |id: u64| addrs[&id].clone();
    let (on_follower, on_leader) = (
        Arc::new(Mutex::new(ClusterView::default())),
        Arc::new(Mutex::new(ClusterView::default())),
    );
    let streams = Arc::new(AtomicUsize::new(0));
    let follower_task = tokio::spawn(follow_deltas(
        vec![addr(survivors[0]), addr(survivors[1])],
        on_follower.clone(),
        streams.clone(),
    ));
    let leader_task = tokio::spawn(follow_deltas(
        vec![addr(leader), addr(survivors[1]), addr(survivors[0])],
        on_leader.clone(),
        streams.clone(),
    ));
    let endpoints = format!("{},{}", addr(survivors[0]), addr(survivors[1]));

    info!("--- joins, leaves, a model, nodes falling offline");
    let mut c = dllm_tests::clients(&addr(survivors[0])).await;
    register_all(&mut c, &cluster, "before-", 0..20).await;
    for id in ["before-3", "before-7", "before-11"] {
        c.discovery
            .leave_cluster(pb::ClusterLeaveRequest {
                node_id: id.into(),
                ..Default::default()
            })
            .await
            .expect("leave");
    }
    let out = dllm(
        &endpoints,
        &[
            "exec", "model", "add", "m1", "--layers", "4", "--size", "1G",
        ],
    );
    assert!(out.status.success(), "{out:?}");

    info!("--- kill leader {leader}");
    cluster.replica(leader).kill();
    cluster.wait_leader(&survivors).await;
    let mut c = dllm_tests::clients(&addr(survivors[1])).await;
    register_all(&mut c, &cluster, "after-", 0..10).await;
    c.discovery
        .leave_cluster(pb::ClusterLeaveRequest {
            node_id: "after-2".into(),
            ..Default::default()
        })
        .await
        .expect("leave");
    for args in [
        &[
            "exec", "model", "add", "m2", "--layers", "2", "--size", "1G",
        ][..],
        &["exec", "model", "remove", "m1"][..],
    ] {
        let out = dllm(&endpoints, args);
        assert!(out.status.success(), "{out:?}");
    }

    info!("--- both clients' lists equal the whole lists");
    wait_for(
        "the clients' lists to match",
        Duration::from_secs(60),
        || {
            let (a, b, addr) = (on_follower.clone(), on_leader.clone(), addr(survivors[0]));
            async move {
                let mut c = dllm_tests::clients(&addr).await;
                let nodes = c
                    .tui
                    .get_node_list(pb::NodeListRequest::default())
                    .await
                    .ok()?
                    .into_inner()
                    .nodes;
                let models = c
                    .tui
                    .get_model_list(pb::ModelListRequest::default())
                    .await
                    .ok()?
                    .into_inner()
                    .models;
                // Wait until the cluster has settled: every node that never heartbeats is offline.
                if nodes
                    .iter()
                    .any(|n| n.status != "offline" && n.status != "left")
                {
                    return None;
                }
                let want = described(nodes, models);
                let held = |v: &Arc<Mutex<ClusterView>>| {
                    let v = v.lock().unwrap();
                    described(
                        v.node_list().into_iter().cloned().collect(),
                        v.model_list().into_iter().cloned().collect(),
                    )
                };
                let (a, b) = (held(&a), held(&b));
                if a != want || b != want {
                    let ids = |l: &[pb::NodeInfo]| {
                        l.iter()
                            .map(|n| format!("{}:{}", n.node_id, n.status))
                            .collect::<Vec<_>>()
                    };
                    info!(
                        "not yet:\n want {:?}\n follower's {:?}\n leader's {:?}\n models {:?} {:?} {:?}",
                        ids(&want.0),
                        ids(&a.0),
                        ids(&b.0),
                        model_ids(&want.1),
                        model_ids(&a.1),
                        model_ids(&b.1)
                    );
                }
                (a == want && b == want).then_some(())
            }
        },
    )
    .await;
    let view = on_follower.lock().unwrap().clone();
    assert_eq!(view.node_list().len(), 30);
    assert_eq!(view.model_list().len(), 1);
    assert!(
        streams.load(Ordering::SeqCst) >= 3,
        "the leader's client subscribed again"
    );
    follower_task.abort();
    leader_task.abort();
}
