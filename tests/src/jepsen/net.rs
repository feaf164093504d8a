//! The test network: one Linux network namespace per replica, joined by veth pairs to a
//! bridge in a hub namespace where the harness, its clients and the workers live. Faults are
//! nftables rules inside the replicas' namespaces, so a partition is real packet loss at the
//! kernel, as Jepsen does with iptables.
//!
//! Every name starts with [`PREFIX`]; addresses are `10.213.0.0/24`, which exist only inside
//! these namespaces. [`Net::setup`] removes leftovers of a crashed run first; dropping the
//! [`Net`] tears everything down.

use std::{collections::BTreeSet, fs::File, process::Command};

use anyhow::{bail, Context, Result};

/// Prefix of every namespace this harness creates.
pub const PREFIX: &str = "dllmj-";
/// The hub namespace: the bridge, the clients and the workers.
pub const HUB: &str = "dllmj-hub";
/// The hub's address on the bridge (clients and workers use it).
pub const HUB_ADDR: &str = "10.213.0.254";

/// The namespace of replica slot `slot` (1-based).
pub fn replica_ns(slot: usize) -> String {
    format!("{PREFIX}r{slot}")
}

/// The address of replica slot `slot`.
pub fn replica_ip(slot: usize) -> String {
    format!("10.213.0.{slot}")
}

/// Runs `ip`/`nft` style commands and fails with their stderr.
fn sh(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program).args(args).output().with_context(|| {
        format!("run {program} (is it installed? .ci/run installs iproute2 and nftables)")
    })?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Namespaces left by earlier runs.
fn leftovers() -> Result<Vec<String>> {
    Ok(sh("ip", &["netns", "list"])?
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(PREFIX))
        .map(String::from)
        .collect())
}

/// Kills every process inside namespace `ns` (but this one) and deletes the namespace.
fn remove_namespace(ns: &str) {
    let me = std::process::id().to_string();
    if let Ok(pids) = sh("ip", &["netns", "pids", ns]) {
        for pid in pids.split_whitespace().filter(|p| *p != me) {
            if let Ok(pid) = pid.parse::<i32>() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
    let _ = sh("ip", &["netns", "del", ns]);
}

/// Inbound packet filter of one replica.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Drop everything from these replica slots.
    pub drop_from: BTreeSet<usize>,
    /// Drop this percentage of packets from every other replica (0 = none).
    pub loss_percent: u32,
}

/// The namespaces and the bridge; torn down on drop.
pub struct Net {
    slots: usize,
    torn_down: bool,
}

impl Net {
    /// Checks for root and the tools, removes leftovers, creates the hub with its bridge and
    /// `slots` replica namespaces.
    ///
    /// # Errors
    /// Without root, without `ip`/`nft`, or when the kernel refuses.
    pub fn setup(slots: usize) -> Result<Self> {
        if !nix::unistd::geteuid().is_root() {
            bail!("dllm-jepsen needs root: it creates network namespaces, veth pairs and nftables rules");
        }
        sh("nft", &["--version"])?;
        for ns in leftovers()? {
            eprintln!("removing namespace {ns} left by an earlier run");
            remove_namespace(&ns);
        }
        let net = Self {
            slots,
            torn_down: false,
        };
        sh("ip", &["netns", "add", HUB])?;
        sh("ip", &["-n", HUB, "link", "set", "lo", "up"])?;
        sh("ip", &["-n", HUB, "link", "add", "br0", "type", "bridge"])?;
        sh(
            "ip",
            &[
                "-n",
                HUB,
                "addr",
                "add",
                &format!("{HUB_ADDR}/24"),
                "dev",
                "br0",
            ],
        )?;
        sh("ip", &["-n", HUB, "link", "set", "br0", "up"])?;
        for slot in 1..=slots {
            let ns = replica_ns(slot);
            let port = format!("r{slot}");
            sh("ip", &["netns", "add", &ns])?;
            sh("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
            sh(
                "ip",
                &[
                    "link", "add", &port, "netns", HUB, "type", "veth", "peer", "name", "eth0",
                    "netns", &ns,
                ],
            )?;
            sh(
                "ip",
                &["-n", HUB, "link", "set", &port, "master", "br0", "up"],
            )?;
            sh(
                "ip",
                &[
                    "-n",
                    &ns,
                    "addr",
                    "add",
                    &format!("{}/24", replica_ip(slot)),
                    "dev",
                    "eth0",
                ],
            )?;
            sh("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
            nft(&ns, "add table inet dllmj")?;
            nft(
                &ns,
                "add chain inet dllmj input { type filter hook input priority 0; policy accept; }",
            )?;
        }
        Ok(net)
    }

    /// Moves the calling thread into the hub namespace. Call it before any other thread is
    /// started (before the async runtime): threads started later inherit it, so every socket
    /// the harness opens is on the bridge.
    ///
    /// # Errors
    /// When the namespace cannot be entered.
    pub fn enter_hub(&self) -> Result<()> {
        let file = File::open(format!("/run/netns/{HUB}")).context("open the hub namespace")?;
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
            .context("setns into the hub")?;
        Ok(())
    }

    /// Kills what runs in the namespaces and deletes them.
    pub fn teardown(&mut self) {
        if self.torn_down {
            return;
        }
        self.torn_down = true;
        for slot in 1..=self.slots {
            remove_namespace(&replica_ns(slot));
        }
        remove_namespace(HUB);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Replaces replica `slot`'s inbound filter (`slots` replicas in all).
///
/// # Errors
/// When nft fails.
pub fn set_filter(slots: usize, slot: usize, filter: &Filter) -> Result<()> {
    let ns = replica_ns(slot);
    let mut script = String::from("flush chain inet dllmj input\n");
    if !filter.drop_from.is_empty() {
        let set: Vec<String> = filter.drop_from.iter().map(|s| replica_ip(*s)).collect();
        script += &format!(
            "add rule inet dllmj input ip saddr {{ {} }} drop\n",
            set.join(", ")
        );
    }
    if filter.loss_percent > 0 {
        let peers: Vec<String> = (1..=slots).filter(|s| *s != slot).map(replica_ip).collect();
        script += &format!(
            "add rule inet dllmj input ip saddr {{ {} }} numgen random mod 100 < {} drop\n",
            peers.join(", "),
            filter.loss_percent
        );
    }
    nft_script(&ns, &script)
}

/// Removes every filter of `slots` replicas.
///
/// # Errors
/// When nft fails.
pub fn heal(slots: usize) -> Result<()> {
    for slot in 1..=slots {
        set_filter(slots, slot, &Filter::default())?;
    }
    Ok(())
}

fn nft(ns: &str, rule: &str) -> Result<()> {
    let mut args = vec!["netns", "exec", ns, "nft"];
    args.extend(rule.split(' '));
    sh("ip", &args).map(drop)
}

fn nft_script(ns: &str, script: &str) -> Result<()> {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("run nft")?;
    child
        .stdin
        .take()
        .context("nft stdin")?
        .write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "nft in {ns} failed: {}\n{script}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
