//! The sampler: every replica's Raft state (recorded on change) and the placement, polled
//! while the run goes on; and the health and placement probes the run waits on.

use std::{collections::BTreeMap, sync::atomic::Ordering, time::Duration};

use dllm_proto::pb::{self, tui_service_client::TuiServiceClient};

use super::{
    history::{Event, ModelSample, NodeSample},
    procs::status,
    run::{Run, SLOTS},
};

impl Run {
    pub(super) async fn workers_healthy(&self) -> Option<()> {
        let wanted: Vec<String> = {
            let procs = self.procs.lock().await;
            procs
                .workers
                .iter()
                .filter(|w| w.process.is_some())
                .map(|w| w.node_id.clone())
                .collect()
        };
        for ch in &self.channels {
            let Ok(list) = TuiServiceClient::new(ch.clone())
                .get_node_list(pb::NodeListRequest::default())
                .await
            else {
                continue;
            };
            let nodes = list.into_inner().nodes;
            return wanted
                .iter()
                .all(|w| {
                    nodes
                        .iter()
                        .any(|n| &n.node_id == w && n.status == "healthy")
                })
                .then_some(());
        }
        None
    }

    pub(super) async fn placement_sample(&self) -> Option<(Vec<ModelSample>, Vec<NodeSample>)> {
        for ch in &self.channels {
            let mut tui = TuiServiceClient::new(ch.clone());
            let Ok(models) = tui.get_model_list(pb::ModelListRequest::default()).await else {
                continue;
            };
            let Ok(nodes) = tui.get_node_list(pb::NodeListRequest::default()).await else {
                continue;
            };
            let models = models
                .into_inner()
                .models
                .into_iter()
                .map(|m| ModelSample {
                    id: m.id,
                    layers: u32::try_from(m.layer_count).unwrap_or(0),
                    placement: m.node_assignments,
                })
                .collect();
            let nodes = nodes
                .into_inner()
                .nodes
                .into_iter()
                .map(|n| NodeSample {
                    id: n.node_id,
                    status: n.status,
                    max_layers: n
                        .resources
                        .map_or(0, |r| u32::try_from(r.max_layers).unwrap_or(0)),
                })
                .collect();
            return Some((models, nodes));
        }
        None
    }

    /// Samples every replica's Raft state (recorded on change) and the placement.
    pub(super) async fn sampler(&self) {
        let mut last: BTreeMap<u64, (u64, String, u64)> = BTreeMap::new();
        let mut tick = 0u64;
        while !self.stop.load(Ordering::SeqCst) {
            for slot in 1..=SLOTS {
                let Some(s) = status(&self.auth, slot).await else {
                    continue;
                };
                let role = s
                    .replicas
                    .iter()
                    .find(|r| r.id == s.answered_by)
                    .map_or("unknown".to_string(), |r| r.role.clone());
                let now = (s.term, role.clone(), s.leader_id);
                if last.get(&s.answered_by) != Some(&now) {
                    last.insert(s.answered_by, now);
                    self.history.record(Event::Raft {
                        t_ns: self.history.now(),
                        replica: s.answered_by,
                        term: s.term,
                        role,
                        leader: s.leader_id,
                    });
                }
            }
            if tick.is_multiple_of(5) {
                if let Some((models, nodes)) = self.placement_sample().await {
                    self.history.record(Event::Placement {
                        t_ns: self.history.now(),
                        settled: false,
                        models,
                        nodes,
                    });
                }
            }
            tick += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
