//! Process control: the replica and worker processes of a run, how to reach a replica
//! (its address, a channel, its status), starting them, and which slot leads.

use std::{collections::BTreeMap, process::Command, time::Duration};

use anyhow::Result;
use dllm_proto::pb::{self, admin_service_client::AdminServiceClient};
use tonic::transport::Channel;

use super::{
    net,
    run::{Run, SLOTS},
};
use crate::ChildProcess;

/// Port every replica serves gRPC and Raft on, inside its namespace.
const REPLICA_PORT: u16 = 7000;
/// The request budget of every replica, below the client's deadline (flags added to
/// [`crate::FAST_LIVENESS`]).
const REQUEST_BUDGET: &[&str] = &["--request-timeout-ms", "2000"];
/// Snapshots and purges turn over every few hundred entries, so kills and restarts land on
/// every stage of them (a purge point written with its entries not yet deleted, a snapshot
/// ahead of the durable log).
const STORAGE_CHURN: &[&str] = &["--snapshot-logs", "300"];

pub(super) struct ReplicaProc {
    pub(super) id: u64,
    pub(super) founding: bool,
    pub(super) process: Option<ChildProcess>,
    pub(super) paused: bool,
}

pub(super) struct WorkerProc {
    pub(super) node_id: String,
    pub(super) port: u16,
    pub(super) process: Option<ChildProcess>,
    pub(super) drained: bool,
}

pub(super) struct Procs {
    pub(super) replicas: BTreeMap<usize, ReplicaProc>,
    pub(super) workers: Vec<WorkerProc>,
    pub(super) next_id: u64,
}

pub(super) fn addr(slot: usize) -> String {
    format!("{}:{REPLICA_PORT}", net::replica_ip(slot))
}

pub(super) fn channel(address: &str, timeout: Duration) -> Result<Channel> {
    Ok(Channel::from_shared(format!("http://{address}"))?
        .connect_timeout(Duration::from_millis(500))
        .timeout(timeout)
        .connect_lazy())
}

pub(super) async fn status(slot: usize) -> Option<pb::ReplicaStatusResponse> {
    let ch = channel(&addr(slot), Duration::from_millis(400)).ok()?;
    AdminServiceClient::new(ch)
        .get_replica_status(pb::ReplicaStatusRequest {})
        .await
        .ok()
        .map(tonic::Response::into_inner)
}

impl Run {
    pub(super) fn spawn_replica(&self, slot: usize, r: &mut ReplicaProc) {
        let data = self
            .config
            .out_dir
            .join("data")
            .join(format!("slot{slot}-id{}", r.id));
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &net::replica_ns(slot)])
            .arg(&self.cp_bin)
            .args([
                "--id",
                &r.id.to_string(),
                "--listen",
                &addr(slot),
                "--data-dir",
            ])
            .arg(&data)
            .args(crate::FAST_LIVENESS)
            .args(REQUEST_BUDGET)
            .args(STORAGE_CHURN)
            .env("RUST_LOG", "info,openraft=warn");
        if r.founding {
            cmd.args(["--initial-cluster", &self.initial_cluster]);
        }
        if let Some(bug) = &self.config.planted_bug {
            cmd.env("DLLM_PLANTED_BUG", bug);
        }
        let log = self
            .config
            .out_dir
            .join("logs")
            .join(format!("replica-slot{slot}.log"));
        r.process = Some(ChildProcess::spawn(&format!("replica {}", r.id), cmd, log));
        r.paused = false;
    }

    pub(super) fn spawn_worker(&self, w: &mut WorkerProc) {
        let seeds = (1..=SLOTS).map(addr).collect::<Vec<_>>().join(",");
        let mut cmd = Command::new(self.config.bin_dir.join("dllm-worker"));
        cmd.args([
            "--node-id",
            &w.node_id,
            "--listen",
            &format!("{}:{}", net::HUB_ADDR, w.port),
            "--seed-nodes",
            &seeds,
            "--simulate-gpus",
            "1x16384:SIM GPU",
        ])
        .env("RUST_LOG", "info");
        let log = self
            .config
            .out_dir
            .join("logs")
            .join(format!("{}.log", w.node_id));
        w.process = Some(ChildProcess::spawn(&w.node_id, cmd, log));
    }

    /// The slot of the leader the running replicas agree on.
    pub(super) async fn leader_slot(&self) -> Option<usize> {
        let mut votes: BTreeMap<u64, usize> = BTreeMap::new();
        let mut ids: BTreeMap<u64, usize> = BTreeMap::new();
        for slot in 1..=SLOTS {
            if let Some(s) = status(slot).await {
                ids.insert(s.answered_by, slot);
                if s.leader_id != 0 {
                    *votes.entry(s.leader_id).or_default() += 1;
                }
            }
        }
        let (leader, n) = votes.into_iter().max_by_key(|(_, n)| *n)?;
        (n * 2 > SLOTS).then_some(())?;
        ids.get(&leader).copied()
    }
}
