//! The clients: random operations against random replicas, each recorded in the history
//! with its outcome, the final reads of every key after the heal, and the `dllm` commands
//! (`execute_command`) the run and the nemeses send.

use std::{
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use dllm_proto::pb::{
    self, discovery_service_client::DiscoveryServiceClient, node_service_client::NodeServiceClient,
    tui_service_client::TuiServiceClient,
};
use rand::{rngs::StdRng, Rng, SeedableRng};
use tonic::Code;

use super::{
    history::{Event, NodeView, Op, Ret},
    net,
    run::{Run, FINAL_PROCESS, SLOTS},
};

impl Run {
    pub(super) async fn command(
        &self,
        slot: usize,
        command: &str,
        args: &[String],
    ) -> Result<pb::CommandResponse, tonic::Status> {
        TuiServiceClient::new(self.channels[slot - 1].clone())
            .execute_command(pb::CommandRequest {
                requester_id: "dllm-jepsen".into(),
                command: command.into(),
                args: args.to_vec(),
                options: Default::default(),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// One client: random operations on a small, moving window of keys against random
    /// replicas until the deadline.
    pub(super) async fn client(&self, process: u64, deadline: Instant) {
        let mut rng =
            StdRng::seed_from_u64(self.config.seed.wrapping_mul(1000).wrapping_add(process));
        let mut process = process;
        while Instant::now() < deadline {
            let n = self.counter.fetch_add(1, Ordering::SeqCst);
            let window = n / 150;
            let node = format!("jn{window}-{}", rng.gen_range(0..3));
            let model = format!("jm{window}-{}", rng.gen_range(0..2));
            let slot = rng.gen_range(1..=SLOTS);
            let op = match rng.gen_range(0..100) {
                0..=19 => Op::Register {
                    node,
                    port: 1000 + u32::try_from(n % 60_000).unwrap_or(0),
                },
                20..=29 => Op::Leave { node },
                30..=37 => Op::Heartbeat { node },
                38..=62 => Op::ReadNode { node },
                63..=74 => Op::AddModel {
                    model,
                    layers: rng.gen_range(1..=6),
                },
                75..=82 => Op::RemoveModel { model },
                _ => Op::ReadModels,
            };
            if self.invoke(process, slot, op).await {
                // Its outcome is unknown: like Jepsen, continue as a new process.
                process += self.config.clients as u64;
            }
            tokio::time::sleep(Duration::from_millis(rng.gen_range(0..20))).await;
        }
    }

    /// Performs and records one operation; returns whether its outcome is unknown.
    async fn invoke(&self, process: u64, slot: usize, op: Op) -> bool {
        self.history.record(Event::Invoke {
            t_ns: self.history.now(),
            process,
            replica: slot,
            op: op.clone(),
        });
        let ch = self.channels[slot - 1].clone();
        let is_write = !matches!(
            op,
            Op::ReadNode { .. } | Op::ReadModels | Op::Heartbeat { .. }
        );
        let result: Result<Ret, tonic::Status> = match &op {
            Op::Register { node, port } => {
                let mut req = join_request(node, 0);
                req.port = i32::try_from(*port).unwrap_or(1);
                DiscoveryServiceClient::new(ch)
                    .register_with_cluster(self.as_node(node, req))
                    .await
                    .map(|_| Ret::Done)
            }
            Op::Leave { node } => match DiscoveryServiceClient::new(ch)
                .leave_cluster(pb::ClusterLeaveRequest {
                    node_id: node.clone(),
                    reason: "jepsen".into(),
                })
                .await
            {
                Ok(_) => Ok(Ret::Done),
                Err(e) if e.code() == Code::NotFound => Ok(Ret::NotFound),
                Err(e) => Err(e),
            },
            Op::Heartbeat { node } => match DiscoveryServiceClient::new(ch)
                .heartbeat(self.as_node(
                    node,
                    pb::HeartbeatRequest {
                        node_id: node.clone(),
                        usage: None,
                    },
                ))
                .await
            {
                Ok(_) => Ok(Ret::Done),
                Err(e) if e.code() == Code::NotFound => Ok(Ret::NotFound),
                Err(e) => Err(e),
            },
            Op::ReadNode { node } => match NodeServiceClient::new(ch)
                .get_node_info(pb::NodeInfoRequest {
                    node_id: node.clone(),
                })
                .await
            {
                Ok(r) => Ok(Ret::Node {
                    node: r.into_inner().node.map(|n| NodeView {
                        port: u32::try_from(n.port).unwrap_or(0),
                        left: n.status == "left",
                    }),
                }),
                Err(e) if e.code() == Code::NotFound => Ok(Ret::Node { node: None }),
                Err(e) => Err(e),
            },
            Op::AddModel { model, layers } => {
                let args: Vec<String> = vec![
                    "add".into(),
                    model.clone(),
                    "--layers".into(),
                    layers.to_string(),
                    "--size".into(),
                    format!("{layers}G"),
                ];
                self.command(slot, "model", &args)
                    .await
                    .and_then(|r| match r.exit_code {
                        0 => Ok(Ret::Done),
                        1 if r.error.contains("already exists") => Ok(Ret::Exists),
                        2 => Err(tonic::Status::invalid_argument(r.error)),
                        _ => Err(tonic::Status::unavailable(r.error)),
                    })
            }
            Op::RemoveModel { model } => {
                let args = vec!["remove".to_string(), model.clone()];
                self.command(slot, "model", &args)
                    .await
                    .and_then(|r| match r.exit_code {
                        0 => Ok(Ret::Done),
                        1 if r.error.contains("not found") => Ok(Ret::NotFound),
                        2 => Err(tonic::Status::invalid_argument(r.error)),
                        _ => Err(tonic::Status::unavailable(r.error)),
                    })
            }
            Op::ReadModels => TuiServiceClient::new(ch)
                .get_model_list(pb::ModelListRequest::default())
                .await
                .map(|r| Ret::Models {
                    models: r
                        .into_inner()
                        .models
                        .into_iter()
                        .filter(|m| m.id.starts_with("jm"))
                        .map(|m| (m.id, u32::try_from(m.layer_count).unwrap_or(0)))
                        .collect(),
                }),
        };
        let t_ns = self.history.now();
        match result {
            Ok(ret) => {
                self.history.record(Event::Ok { t_ns, process, ret });
                false
            }
            // A refusal before anything was proposed, or a read: nothing happened.
            Err(e) if !is_write || e.code() == Code::InvalidArgument => {
                self.history.record(Event::Fail {
                    t_ns,
                    process,
                    error: format!("{:?}: {}", e.code(), e.message()),
                });
                false
            }
            Err(e) => {
                self.history.record(Event::Info {
                    t_ns,
                    process,
                    error: format!("{:?}: {}", e.code(), e.message()),
                });
                true
            }
        }
    }

    /// Reads every key ever used through every replica, after the heal.
    pub(super) async fn final_reads(&self) {
        let used = self.counter.load(Ordering::SeqCst);
        let windows = used / 150 + 1;
        for slot in 1..=SLOTS {
            let process = FINAL_PROCESS + slot as u64;
            for w in 0..windows {
                for i in 0..3 {
                    self.invoke(
                        process,
                        slot,
                        Op::ReadNode {
                            node: format!("jn{w}-{i}"),
                        },
                    )
                    .await;
                }
            }
            self.invoke(process, slot, Op::ReadModels).await;
        }
    }
}

pub(super) fn describe_command(r: &Result<pb::CommandResponse, tonic::Status>) -> String {
    match r {
        Ok(r) if r.exit_code == 0 => r.output.lines().next().unwrap_or("ok").to_string(),
        Ok(r) => format!("exit {}: {}", r.exit_code, r.error),
        Err(e) => format!("{:?}: {}", e.code(), e.message()),
    }
}

pub(super) fn join_request(node_id: &str, _gpus: usize) -> pb::ClusterJoinRequest {
    pb::ClusterJoinRequest {
        node_id: node_id.to_string(),
        address: net::HUB_ADDR.to_string(),
        port: 9000,
        resources: Some(pb::ResourceInfo {
            cpu_cores: 1,
            memory_mb: 1024,
            gpus: vec![],
            max_layers: 0,
            used_layers: 0,
        }),
        seed_nodes: vec![],
        skip_existing_nodes: false,
    }
}
