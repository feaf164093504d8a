//! The client side of `StreamUpdates` with `deltas`: a [`ClusterView`] holds the nodes and
//! models a stream has described so far and applies each [`pb::ClusterUpdate`] to them,
//! whole or delta, so every client (the TUI, `dllm watch`, the benchmarks, the tests)
//! reads a stream the same way.

use std::collections::BTreeMap;

use crate::pb;

/// The cluster as one stream has described it: nodes and models by id, and the last
/// metrics. A whole list replaces what is held; a delta changes only what it names.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterView {
    /// Nodes by id; `None` until the first "nodes" update.
    pub nodes: Option<BTreeMap<String, pb::NodeInfo>>,
    /// Models by id; `None` until the first "models" update.
    pub models: Option<BTreeMap<String, pb::ModelInfo>>,
    /// The last metrics.
    pub metrics: Option<pb::ClusterMetrics>,
}

/// What one update changed in a [`ClusterView`]: the entries before and after, by id.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Applied {
    /// The first list of its type (nothing to compare with).
    #[default]
    First,
    /// Nodes that changed: `(before, after)`, `None` where absent.
    Nodes(Vec<(Option<pb::NodeInfo>, Option<pb::NodeInfo>)>),
    /// Models that changed: `(before, after)`, `None` where absent.
    Models(Vec<(Option<pb::ModelInfo>, Option<pb::ModelInfo>)>),
    /// New metrics, and the ones before.
    Metrics(Option<pb::ClusterMetrics>),
}

/// A delta arrived before the whole list it changes: the stream is not one this client can
/// follow (it should reconnect).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeltaWithoutBase(pub String);

impl std::fmt::Display for DeltaWithoutBase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "a {} delta came before the whole list", self.0)
    }
}

impl std::error::Error for DeltaWithoutBase {}

impl ClusterView {
    /// Applies one update and says what it changed. A whole list is compared with what was
    /// held, so a reconnect reports what changed while the stream was down; a delta reports
    /// just the entries it names that differ. A delta's newer last_seen values (`last_seen`)
    /// are applied and not reported.
    ///
    /// # Errors
    /// A delta for a type that has no whole list yet.
    pub fn apply(&mut self, u: pb::ClusterUpdate) -> Result<Applied, DeltaWithoutBase> {
        match u.update_type.as_str() {
            "nodes" => {
                let removed = u.removed_node_ids;
                let entries = u.nodes.into_iter().map(|n| (n.node_id.clone(), n));
                let applied = apply(&mut self.nodes, u.delta, entries, removed, "nodes")?;
                // Newer last_seen of unchanged nodes: applied, not reported.
                if let (true, Some(nodes)) = (u.delta, self.nodes.as_mut()) {
                    for (id, ms) in u.last_seen {
                        if let Some(n) = nodes.get_mut(&id) {
                            n.last_seen = n.last_seen.max(ms);
                        }
                    }
                }
                Ok(match applied {
                    Some(c) => Applied::Nodes(c),
                    None => Applied::First,
                })
            }
            "models" => {
                let removed = u.removed_model_ids;
                let entries = u.models.into_iter().map(|m| (m.id.clone(), m));
                apply(&mut self.models, u.delta, entries, removed, "models").map(|c| match c {
                    Some(c) => Applied::Models(c),
                    None => Applied::First,
                })
            }
            _ => Ok(Applied::Metrics(std::mem::replace(
                &mut self.metrics,
                u.metrics,
            ))),
        }
    }

    /// The nodes held, by id (empty before the first list).
    pub fn node_list(&self) -> Vec<&pb::NodeInfo> {
        self.nodes.iter().flat_map(|n| n.values()).collect()
    }

    /// The models held, by id (empty before the first list).
    pub fn model_list(&self) -> Vec<&pb::ModelInfo> {
        self.models.iter().flat_map(|m| m.values()).collect()
    }
}

/// Before and after of each entry an update changed.
type Changes<T> = Vec<(Option<T>, Option<T>)>;

/// Applies a whole list or a delta to `held`; `None` for the first whole list.
fn apply<T: Clone + PartialEq>(
    held: &mut Option<BTreeMap<String, T>>,
    delta: bool,
    entries: impl Iterator<Item = (String, T)>,
    removed: Vec<String>,
    kind: &str,
) -> Result<Option<Changes<T>>, DeltaWithoutBase> {
    if delta {
        let Some(map) = held.as_mut() else {
            return Err(DeltaWithoutBase(kind.to_string()));
        };
        let mut changes = Vec::new();
        for (id, entry) in entries {
            let before = map.insert(id, entry.clone());
            if before.as_ref() != Some(&entry) {
                changes.push((before, Some(entry)));
            }
        }
        for id in removed {
            if let Some(before) = map.remove(&id) {
                changes.push((Some(before), None));
            }
        }
        return Ok(Some(changes));
    }
    let now: BTreeMap<String, T> = entries.collect();
    let Some(before) = held.replace(now) else {
        return Ok(None);
    };
    let now = held.as_ref().expect("just set");
    let mut changes: Changes<T> = now
        .iter()
        .filter(|(id, e)| before.get(*id) != Some(e))
        .map(|(id, e)| (before.get(id).cloned(), Some(e.clone())))
        .collect();
    changes.extend(
        before
            .into_iter()
            .filter(|(id, _)| !now.contains_key(id))
            .map(|(_, e)| (Some(e), None)),
    );
    Ok(Some(changes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, status: &str) -> pb::NodeInfo {
        pb::NodeInfo {
            node_id: id.into(),
            status: status.into(),
            ..Default::default()
        }
    }

    fn nodes(delta: bool, list: &[pb::NodeInfo], removed: &[&str]) -> pb::ClusterUpdate {
        pb::ClusterUpdate {
            update_type: "nodes".into(),
            nodes: list.to_vec(),
            delta,
            removed_node_ids: removed.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_delta_changes_only_what_it_names() {
        let mut view = ClusterView::default();
        let first = view.apply(nodes(
            false,
            &[node("a", "healthy"), node("b", "healthy")],
            &[],
        ));
        assert_eq!(first, Ok(Applied::First));
        let changed = view
            .apply(nodes(
                true,
                &[node("b", "offline"), node("c", "healthy")],
                &["a"],
            ))
            .unwrap();
        assert_eq!(
            changed,
            Applied::Nodes(vec![
                (Some(node("b", "healthy")), Some(node("b", "offline"))),
                (None, Some(node("c", "healthy"))),
                (Some(node("a", "healthy")), None),
            ])
        );
        let ids: Vec<&str> = view
            .node_list()
            .iter()
            .map(|n| n.node_id.as_str())
            .collect();
        assert_eq!(ids, ["b", "c"]);
        // Naming a node again unchanged is no change.
        let same = view
            .apply(nodes(true, &[node("c", "healthy")], &[]))
            .unwrap();
        assert_eq!(same, Applied::Nodes(vec![]));
        // A newer last_seen is applied (an older one, or one for an unknown node, is not).
        let mut seen = nodes(true, &[], &[]);
        seen.last_seen = [("b".to_string(), 9_000), ("zz".to_string(), 1)].into();
        assert_eq!(view.apply(seen).unwrap(), Applied::Nodes(vec![]));
        let mut older = nodes(true, &[], &[]);
        older.last_seen = [("b".to_string(), 5_000)].into();
        view.apply(older).unwrap();
        let b = &view.nodes.as_ref().unwrap()["b"];
        assert_eq!(b.last_seen, 9_000);
        assert_eq!(view.node_list().len(), 2);
    }

    #[test]
    fn a_whole_list_after_a_reconnect_reports_what_changed_meanwhile() {
        let mut view = ClusterView::default();
        view.apply(nodes(
            false,
            &[node("a", "healthy"), node("b", "healthy")],
            &[],
        ))
        .unwrap();
        let changed = view
            .apply(nodes(
                false,
                &[node("b", "healthy"), node("c", "draining")],
                &[],
            ))
            .unwrap();
        assert_eq!(
            changed,
            Applied::Nodes(vec![
                (None, Some(node("c", "draining"))),
                (Some(node("a", "healthy")), None),
            ])
        );
    }

    #[test]
    fn a_delta_before_any_whole_list_is_refused() {
        let mut view = ClusterView::default();
        let err = view.apply(nodes(true, &[node("a", "healthy")], &[]));
        assert_eq!(err, Err(DeltaWithoutBase("nodes".into())));
        assert_eq!(view, ClusterView::default());
    }
}
