//! The nemeses that change who is in the cluster: a replica removed and replaced by a fresh
//! one (new id, empty disk), workers killed and restarted or drained and undrained; and
//! their repair (`ensure_members`, `undrain`), which the heal reuses.

use std::time::Duration;

use dllm_proto::pb::{self, admin_service_client::AdminServiceClient};
use rand::{rngs::StdRng, Rng};

use super::{
    clients::describe_command,
    procs::{addr, status},
    run::{Run, SLOTS},
};

impl Run {
    /// Removes a replica, wipes it, and adds a fresh one (new id) on its address.
    pub(super) async fn membership(&self, rng: &mut StdRng) {
        let (slot, kind) = self.pick_target(rng).await;
        let old = self.procs.lock().await.replicas[&slot].id;
        let others: Vec<usize> = (1..=SLOTS).filter(|s| *s != slot).collect();
        let mut removed = false;
        for s in &others {
            let r = AdminServiceClient::new(self.channels[s - 1].clone())
                .remove_replica(pb::RemoveReplicaRequest { id: old })
                .await;
            match r {
                Ok(_) => {
                    removed = true;
                    break;
                }
                Err(e) => self.history.nemesis(
                    "membership-error",
                    format!("RemoveReplica {old} via slot {s}: {e}"),
                ),
            }
        }
        if !removed {
            return;
        }
        let new_id = {
            let mut procs = self.procs.lock().await;
            let id = procs.next_id;
            procs.next_id += 1;
            let r = procs.replicas.get_mut(&slot).expect("slot");
            if let Some(mut p) = r.process.take() {
                p.kill();
            }
            r.id = id;
            r.founding = false;
            self.spawn_replica(slot, r);
            id
        };
        self.history.nemesis(
            "membership",
            format!("removed replica {old} ({kind}) from slot {slot}; started replica {new_id} there with an empty disk"),
        );
        self.ensure_members().await;
    }

    /// Adds every slot's replica that is not a voter (after a membership change).
    pub(super) async fn ensure_members(&self) {
        let want: Vec<(usize, u64)> = {
            let procs = self.procs.lock().await;
            procs.replicas.iter().map(|(s, r)| (*s, r.id)).collect()
        };
        for _ in 0..100 {
            let mut missing = Vec::new();
            let Some(leader) = self.leader_slot().await else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            let Some(st) = status(&self.auth, leader).await else {
                continue;
            };
            for (slot, id) in &want {
                let voter = st
                    .replicas
                    .iter()
                    .any(|r| r.id == *id && r.role != "learner");
                if !voter {
                    missing.push((*slot, *id));
                }
            }
            if missing.is_empty() {
                return;
            }
            for (slot, id) in missing {
                let r = AdminServiceClient::new(self.channels[leader - 1].clone())
                    .add_replica(pb::AddReplicaRequest {
                        id,
                        address: addr(slot),
                    })
                    .await;
                match r {
                    Ok(_) => self
                        .history
                        .nemesis("restore", format!("added replica {id} in slot {slot}")),
                    Err(e) => self
                        .history
                        .nemesis("membership-error", format!("AddReplica {id}: {e}")),
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub(super) async fn worker_churn(&self, rng: &mut StdRng, hold: Duration) {
        let n = self.procs.lock().await.workers.len();
        if n == 0 {
            return;
        }
        let i = rng.gen_range(0..n);
        if rng.gen_bool(0.5) {
            let id = {
                let mut procs = self.procs.lock().await;
                let w = &mut procs.workers[i];
                if let Some(mut p) = w.process.take() {
                    p.kill();
                }
                w.node_id.clone()
            };
            self.history
                .nemesis("kill-worker", format!("SIGKILL worker {id}"));
            tokio::time::sleep(hold).await;
            let mut procs = self.procs.lock().await;
            let w = &mut procs.workers[i];
            self.spawn_worker(w);
            self.history
                .nemesis("restore", format!("restarted worker {id}"));
        } else {
            let id = self.procs.lock().await.workers[i].node_id.clone();
            let slot = rng.gen_range(1..=SLOTS);
            let r = self.command(slot, "drain", std::slice::from_ref(&id)).await;
            self.history
                .nemesis("drain", format!("drain {id}: {}", describe_command(&r)));
            // Undone whatever the answer: a drain that failed for want of a reply (a lagging
            // replica, a partition) may still have committed, and undrain of a node that is
            // not draining is accepted as done.
            self.procs.lock().await.workers[i].drained = true;
            tokio::time::sleep(hold).await;
            self.undrain(i).await;
        }
    }

    pub(super) async fn undrain(&self, i: usize) {
        let id = self.procs.lock().await.workers[i].node_id.clone();
        for _ in 0..50 {
            for slot in 1..=SLOTS {
                let r = self
                    .command(slot, "undrain", std::slice::from_ref(&id))
                    .await;
                let done =
                    matches!(&r, Ok(r) if r.exit_code == 0 || r.error.contains("only draining"));
                if done {
                    self.procs.lock().await.workers[i].drained = false;
                    self.history
                        .nemesis("restore", format!("undrain {id}: {}", describe_command(&r)));
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
