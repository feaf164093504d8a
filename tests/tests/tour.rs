//! README's "5-minute tour", followed line by line in tmux as a newcomer would: `dllm dev` in
//! one window, the tour's commands in a shell in another (with `dllm` aliased to the built
//! binary), each checked for what the tour promises, including the kill step and the repair
//! it promises. The commands come from README itself, so the tour and this test cannot drift.
//!
//! It uses the tour's own ports (8080 and up): it is the only test in this binary.

use std::{process::Command, time::Duration};

use dllm_tests::{binary, init_tracing, wait_for};
use tracing::info;

fn tmux(args: &[&str]) -> std::process::Output {
    Command::new("tmux")
        .args(args)
        .output()
        .expect("tmux is installed (scripts/test.sh installs it)")
}

/// The tour's commands, comments and the terminal notes dropped.
fn tour_commands() -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let start = readme.find("## A 5-minute tour").expect("the tour");
    let block = readme[start..]
        .split("```bash\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("the tour's code block");
    block
        .lines()
        .map(|l| l.split(" # ").next().unwrap_or_default().trim().to_string())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

struct Tmux(String);

impl Tmux {
    fn window(&self, name: &str) -> String {
        format!("{}:{name}", self.0)
    }

    fn send(&self, window: &str, keys: &[&str]) {
        let target = self.window(window);
        let mut args = vec!["send-keys", "-t", &target];
        args.extend_from_slice(keys);
        assert!(tmux(&args).status.success(), "send-keys {keys:?}");
    }

    /// Everything the window has shown, its history included.
    fn text(&self, window: &str) -> String {
        let out = tmux(&[
            "capture-pane",
            "-p",
            "-J",
            "-S",
            "-",
            "-t",
            &self.window(window),
        ]);
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// Waits until `window` shows `want` after `from` (a length of [`Tmux::text`] earlier).
    async fn see(&self, window: &str, from: usize, want: &str, secs: u64) -> String {
        wait_for(
            &format!("{want:?} in the {window} window"),
            Duration::from_secs(secs),
            || {
                let text = self.text(window);
                let tail = text.get(from..).unwrap_or(&text).to_string();
                async move { tail.contains(want).then_some(tail) }
            },
        )
        .await
    }

    /// Runs `line` in the shell window and waits for it to end; what it printed, and its
    /// exit status.
    async fn run(&self, line: &str, secs: u64) -> (String, i32) {
        let from = self.text("ops").len();
        // Written split in the command, so only its output matches.
        let step = from % 100_000;
        let marker = format!("tour-step-{step}-done");
        let echo = format!("echo \"tour-step-{step}\"\"-done $?\"");
        self.send("ops", &[&format!("{line}; {echo}"), "Enter"]);
        let tail = self.see("ops", from, &format!("{marker} "), secs).await;
        let (out, status) = tail.rsplit_once(&format!("{marker} ")).expect("the marker");
        let status = status
            .split_whitespace()
            .next()
            .unwrap_or("")
            .parse()
            .unwrap_or(-1);
        (out.to_string(), status)
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = tmux(&["kill-session", "-t", &self.0]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_tour() {
    init_tracing();
    let commands = tour_commands();
    let expected_start = [
        "cargo run --release -p dllm-cli -- dev",
        "alias dllm=target/release/dllm",
    ];
    assert_eq!(
        commands[..2],
        expected_start,
        "the tour starts as this test does"
    );
    let dllm = binary("dllm");
    let session = Tmux(format!("dllm-tour-{}", std::process::id()));
    let data = tempfile::tempdir().expect("tmp");
    // Terminal 1: the dev cluster, with the built binary (what `cargo run` would run), in a
    // shell that outlives it (its last words stay on screen).
    let out = tmux(&[
        "new-session",
        "-d",
        "-s",
        &session.0,
        "-n",
        "dev",
        "-x",
        "160",
        "-y",
        "50",
        "bash --norc --noprofile",
    ]);
    assert!(out.status.success(), "{out:?}");
    session.send(
        "dev",
        &[
            &format!("cd {} && {} dev", data.path().display(), dllm.display()),
            "Enter",
        ],
    );
    session.see("dev", 0, "Ctrl-C stops the cluster", 120).await;
    // Terminal 2: a shell.
    let out = tmux(&[
        "new-window",
        "-d",
        "-t",
        &session.0,
        "-n",
        "ops",
        "bash --norc --noprofile",
    ]);
    assert!(out.status.success(), "{out:?}");

    let mut rest = commands[2..].iter();
    let mut next = |starts: &str| {
        let line = rest
            .next()
            .unwrap_or_else(|| panic!("the tour goes on with {starts:?}"));
        assert!(
            line.starts_with(starts),
            "the tour's next step is {line:?}, not {starts:?}"
        );
        line.clone()
    };
    let (_, code) = session
        .run(&format!("alias dllm={}", dllm.display()), 10)
        .await;
    assert_eq!(code, 0);

    info!("--- status, nodes, models");
    let (out, code) = session.run(&next("dllm status"), 30).await;
    assert!(code == 0 && out.contains("3 healthy of 3 members"), "{out}");
    let (out, code) = session.run(&next("dllm nodes"), 30).await;
    assert!(code == 0, "{out}");
    for w in ["worker-1", "worker-2", "worker-3", "H100"] {
        assert!(out.contains(w), "{w}: {out}");
    }
    let (out, code) = session.run(&next("dllm models"), 30).await;
    assert!(
        code == 0 && out.contains("demo-70b") && out.contains("placed"),
        "{out}"
    );

    info!("--- the TUI");
    let tui = next("dllm tui");
    session.send("ops", &[&tui, "Enter"]);
    let screen = session
        .see("ops", 0, "1 Nodes │ 2 Models │ 3 Cluster", 30)
        .await;
    session.send("ops", &["q"]);
    let (_, code) = session.run("true", 10).await;
    assert_eq!(code, 0, "the TUI quit: {screen}");

    info!("--- a model added");
    let (out, code) = session.run(&next("dllm exec model add mistral"), 30).await;
    assert!(code == 0 && out.contains("mistral"), "{out}");

    info!("--- a worker killed: dllm dev reports it and goes on");
    let (_, code) = session
        .run(&next("pkill -KILL -f 'node-id worker-1'"), 10)
        .await;
    assert_eq!(code, 0, "pkill found worker-1");
    session.see("dev", 0, "worker-1 exited", 30).await;

    info!("--- watch: unhealthy, then offline, and its layers move");
    let watch = next("dllm watch");
    let from = session.text("ops").len();
    session.send("ops", &[&watch, "Enter"]);
    session
        .see("ops", from, "worker-1: healthy -> unhealthy", 60)
        .await;
    session
        .see("ops", from, "worker-1: unhealthy -> offline", 60)
        .await;
    let moved = session.see("ops", from, "worker-1 ->", 60).await;
    assert!(moved.contains("layers"), "{moved}");
    session.send("ops", &["C-c"]);
    let (_, code) = session.run("true", 10).await;
    assert_eq!(code, 0);

    info!("--- drain worker-2: it ends with no layers");
    let (out, code) = session.run(&next("dllm exec drain worker-2"), 30).await;
    assert_eq!(code, 0, "{out}");
    let used = |node: &'static str| {
        let dllm = dllm.clone();
        async move {
            let out = Command::new(&dllm)
                .args(["--output", "json", "nodes"])
                .output()
                .ok()?;
            let nodes: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            nodes
                .as_array()?
                .iter()
                .find(|n| n["node_id"] == node)
                .and_then(|n| n["used_layers"].as_i64())
        }
    };
    wait_for(
        "worker-2 to hold no layers",
        Duration::from_secs(30),
        || async { (used("worker-2").await == Some(0)).then_some(()) },
    )
    .await;

    info!("--- rebalance settles in one call");
    let (out, code) = session.run(&next("dllm exec rebalance"), 30).await;
    assert!(code == 0 && out.contains("rebalanced"), "{out}");
    let models = || {
        let out = Command::new(&dllm)
            .args(["--output", "json", "models"])
            .output()
            .expect("dllm models");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let before = models();
    let (_, code) = session.run("dllm exec rebalance", 30).await;
    assert_eq!(code, 0);
    assert_eq!(models(), before, "a second rebalance moves nothing");

    info!("--- JSON for scripts, and the metrics");
    let (out, code) = session.run(&next("dllm --output json nodes"), 30).await;
    assert!(code == 0 && out.contains("[{"), "{out}");
    let (out, code) = session
        .run(&next("curl -s localhost:8180/metrics"), 30)
        .await;
    assert!(
        code == 0 && out.contains("distributed_llm_raft_term"),
        "{out}"
    );
    assert!(rest.next().is_none(), "every step of the tour was followed");

    info!("--- Ctrl-C stops it all");
    session.send("dev", &["C-c"]);
    session
        .see("dev", 0, "stopped; data and logs are in", 60)
        .await;
}
