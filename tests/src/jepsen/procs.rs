//! Process control: the replica and worker processes of a run, how to reach a replica
//! (its address, a channel, its status), starting them, and which slot leads.

use std::{collections::BTreeMap, process::Command, time::Duration};

use anyhow::Result;
use dllm_auth::{certs, client::ClientAuth, Role, DEFAULT_TRUST_DOMAIN};
use dllm_proto::{
    client::Channel,
    pb::{self, admin_service_client::AdminServiceClient},
};

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

pub(super) fn channel(auth: &ClientAuth, address: &str, timeout: Duration) -> Result<Channel> {
    let endpoint = auth
        .endpoint(address)?
        .connect_timeout(Duration::from_millis(500))
        .timeout(timeout);
    Ok(auth.connect_lazy(endpoint))
}

/// Every address a replica or worker of a run is reached at (the certificates' host names).
fn all_hosts() -> Vec<String> {
    (1..=SLOTS)
        .map(net::replica_ip)
        .chain([net::HUB_ADDR.to_string()])
        .collect()
}

/// The certificates of a secure run: made once per run, in `dir`.
pub(super) struct Certs {
    pub(super) dir: std::path::PathBuf,
    pub(super) signer: dllm_auth::token::Signer,
}

impl Certs {
    /// A new CA, the founding replicas' certificates and the token key, in `dir`.
    pub(super) fn create(dir: &std::path::Path) -> Result<Self> {
        certs::init(dir, &all_hosts(), SLOTS as u32, DEFAULT_TRUST_DOMAIN)?;
        let signer =
            dllm_auth::token::Signer::from_pem(&std::fs::read(dir.join(certs::JWT_SIGNING_KEY))?)
                .map_err(anyhow::Error::msg)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            signer,
        })
    }

    /// `--tls-ca`, `--tls-cert`, `--tls-key` for `role`/`name`, issuing its certificate
    /// the first time.
    pub(super) fn flags(&self, role: Role, name: &str) -> Result<Vec<String>> {
        let stem = certs::file_stem(role, name);
        let (cert, key) = (
            self.dir.join(format!("{stem}.crt")),
            self.dir.join(format!("{stem}.key")),
        );
        if !cert.exists() {
            certs::issue(&self.dir, role, name, DEFAULT_TRUST_DOMAIN, &all_hosts())?;
        }
        let path = |p: &std::path::Path| p.display().to_string();
        Ok(vec![
            "--tls-ca".into(),
            path(&self.dir.join(certs::CA_CERT)),
            "--tls-cert".into(),
            path(&cert),
            "--tls-key".into(),
            path(&key),
        ])
    }

    /// The harness's own credentials: an admin certificate.
    pub(super) fn admin(&self) -> Result<ClientAuth> {
        let flags = self.flags(Role::Admin, "jepsen")?;
        Ok(ClientAuth::from_flags(
            Some(flags[1].as_ref()),
            Some(flags[3].as_ref()),
            Some(flags[5].as_ref()),
            None,
        )?)
    }

    /// `Bearer <token>` of a worker token for `node`, an hour long.
    pub(super) fn worker_token(
        &self,
        node: &str,
    ) -> Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_secs();
        let (token, _) = self
            .signer
            .sign(DEFAULT_TRUST_DOMAIN, Role::Worker, node, now, 3600)
            .ok()?;
        format!("Bearer {token}").parse().ok()
    }
}

pub(super) async fn status(auth: &ClientAuth, slot: usize) -> Option<pb::ReplicaStatusResponse> {
    let ch = channel(auth, &addr(slot), Duration::from_millis(400)).ok()?;
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
            .args(self.security_flags(Role::Replica, &r.id.to_string()))
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
        .args(self.security_flags(Role::Worker, &w.node_id))
        .env("RUST_LOG", "info");
        let log = self
            .config
            .out_dir
            .join("logs")
            .join(format!("{}.log", w.node_id));
        w.process = Some(ChildProcess::spawn(&w.node_id, cmd, log));
    }

    /// The TLS flags of `role`/`name` in a secure run (and the token key for replicas);
    /// `--insecure` otherwise, since the run's addresses are not loopback.
    fn security_flags(&self, role: Role, name: &str) -> Vec<String> {
        let Some(certs) = &self.certs else {
            return vec!["--insecure".into()];
        };
        let mut flags = certs
            .flags(role, name)
            .unwrap_or_else(|e| panic!("certificate for {role}/{name}: {e}"));
        if role == Role::Replica {
            flags.push("--jwt-public-key".into());
            flags.push(certs.dir.join(certs::JWT_PUBLIC_KEY).display().to_string());
        }
        flags
    }

    /// The slot of the leader the running replicas agree on.
    pub(super) async fn leader_slot(&self) -> Option<usize> {
        let mut votes: BTreeMap<u64, usize> = BTreeMap::new();
        let mut ids: BTreeMap<u64, usize> = BTreeMap::new();
        for slot in 1..=SLOTS {
            if let Some(s) = status(&self.auth, slot).await {
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
