//! Checkers over a history: linearizability per key (WGL), no lost acknowledged writes,
//! Raft election safety, placement invariants.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::{
    history::{
        operations, CompletedOp, Completion, Event, ModelSample, NodeSample, NodeView, Op, Ret,
    },
    wgl,
};

/// Search budget per key; past it the key's verdict is "unknown", which fails the run.
pub const MAX_STEPS_PER_KEY: u64 = 5_000_000;

/// One checker's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// Checker name.
    pub checker: String,
    /// Whether it passed.
    pub valid: bool,
    /// What it looked at and, when invalid, what is wrong.
    pub detail: String,
}

/// A node's state in the sequential specification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeState {
    /// Never registered.
    Absent,
    /// Registered (possibly left).
    Present(NodeView),
}

/// The sequential specification of one node id.
pub struct NodeModel;

/// Input of [`NodeModel`].
#[derive(Debug, Clone)]
pub enum NodeInput {
    /// Register with a port.
    Register(u32),
    /// Leave.
    Leave,
    /// Read.
    Read,
}

impl wgl::Model for NodeModel {
    type State = NodeState;
    type Input = NodeInput;
    type Output = Ret;

    fn init(&self) -> NodeState {
        NodeState::Absent
    }

    fn step(&self, s: &NodeState, input: &NodeInput, out: Option<&Ret>) -> Vec<NodeState> {
        let registered = |port| NodeState::Present(NodeView { port, left: false });
        let left = match s {
            NodeState::Present(v) => Some(NodeState::Present(NodeView { left: true, ..*v })),
            NodeState::Absent => None,
        };
        match (input, out) {
            (NodeInput::Register(port), None) => vec![*s, registered(*port)],
            (NodeInput::Register(port), Some(Ret::Done)) => vec![registered(*port)],
            (NodeInput::Leave, None) => std::iter::once(*s).chain(left).collect(),
            (NodeInput::Leave, Some(Ret::Done)) => left.into_iter().collect(),
            (NodeInput::Leave, Some(Ret::NotFound)) => match s {
                NodeState::Absent => vec![*s],
                NodeState::Present(_) => vec![],
            },
            (NodeInput::Read, Some(Ret::Node { node })) => {
                let seen = node.map_or(NodeState::Absent, NodeState::Present);
                if seen == *s {
                    vec![*s]
                } else {
                    vec![]
                }
            }
            _ => vec![],
        }
    }
}

/// The sequential specification of one model id: its layer count while it exists.
pub struct ModelModel;

/// Input of [`ModelModel`].
#[derive(Debug, Clone)]
pub enum ModelInput {
    /// Add with a layer count.
    Add(u32),
    /// Remove.
    Remove,
    /// Read (`None`: absent from the list).
    Read(Option<u32>),
}

impl wgl::Model for ModelModel {
    type State = Option<u32>;
    type Input = ModelInput;
    type Output = Ret;

    fn init(&self) -> Option<u32> {
        None
    }

    fn step(&self, s: &Option<u32>, input: &ModelInput, out: Option<&Ret>) -> Vec<Option<u32>> {
        match (input, out, s) {
            (ModelInput::Add(n), None, None) => vec![None, Some(*n)],
            (ModelInput::Remove, None, Some(_)) => vec![*s, None],
            (ModelInput::Add(_) | ModelInput::Remove, None, _) => vec![*s],
            (ModelInput::Add(n), Some(Ret::Done), None) => vec![Some(*n)],
            (ModelInput::Add(_), Some(Ret::Exists), Some(_)) => vec![*s],
            (ModelInput::Remove, Some(Ret::Done), Some(_)) => vec![None],
            (ModelInput::Remove, Some(Ret::NotFound), None) => vec![None],
            (ModelInput::Read(seen), Some(_), _) if seen == s => vec![*s],
            _ => vec![],
        }
    }
}

type NodeOp = wgl::Operation<NodeInput, Ret>;
/// Per-key histories for model `M`.
type KeyHistories<M> =
    BTreeMap<String, Vec<wgl::Operation<<M as wgl::Model>::Input, <M as wgl::Model>::Output>>>;
type ModelOp = wgl::Operation<ModelInput, Ret>;

fn ret_time(c: &Completion) -> Option<u64> {
    match c {
        Completion::Ok(t, _) => Some(*t),
        _ => None,
    }
}

fn output(c: &Completion) -> Option<Ret> {
    match c {
        Completion::Ok(_, r) => Some(r.clone()),
        _ => None,
    }
}

/// Splits the client operations into per-key histories. Failed operations (definitely not
/// applied) and reads without an answer constrain nothing and are left out; heartbeats are
/// not modelled.
pub fn per_key(
    ops: &[CompletedOp],
) -> (
    BTreeMap<String, Vec<NodeOp>>,
    BTreeMap<String, Vec<ModelOp>>,
) {
    let mut nodes: BTreeMap<String, Vec<NodeOp>> = BTreeMap::new();
    let mut models: BTreeMap<String, Vec<ModelOp>> = BTreeMap::new();
    let model_keys: BTreeSet<String> = ops
        .iter()
        .filter_map(|o| match &o.op {
            Op::AddModel { model, .. } | Op::RemoveModel { model } => Some(model.clone()),
            _ => None,
        })
        .collect();
    for o in ops {
        if o.completion == Completion::Fail {
            continue;
        }
        let ret = ret_time(&o.completion);
        let out = output(&o.completion);
        let node_op = |input| NodeOp {
            client: o.process,
            call: o.call,
            ret,
            input,
            output: out.clone(),
        };
        match &o.op {
            Op::Register { node, port } => nodes
                .entry(node.clone())
                .or_default()
                .push(node_op(NodeInput::Register(*port))),
            Op::Leave { node } => nodes
                .entry(node.clone())
                .or_default()
                .push(node_op(NodeInput::Leave)),
            Op::ReadNode { node } if out.is_some() => nodes
                .entry(node.clone())
                .or_default()
                .push(node_op(NodeInput::Read)),
            Op::AddModel { model, layers } => {
                models.entry(model.clone()).or_default().push(ModelOp {
                    client: o.process,
                    call: o.call,
                    ret,
                    input: ModelInput::Add(*layers),
                    output: out.clone(),
                })
            }
            Op::RemoveModel { model } => models.entry(model.clone()).or_default().push(ModelOp {
                client: o.process,
                call: o.call,
                ret,
                input: ModelInput::Remove,
                output: out.clone(),
            }),
            Op::ReadModels => {
                if let Some(Ret::Models { models: seen }) = &out {
                    for key in &model_keys {
                        models.entry(key.clone()).or_default().push(ModelOp {
                            client: o.process,
                            call: o.call,
                            ret,
                            input: ModelInput::Read(seen.get(key).copied()),
                            output: out.clone(),
                        });
                    }
                }
            }
            Op::ReadNode { .. } | Op::Heartbeat { .. } => {}
        }
    }
    (nodes, models)
}

fn describe<I: std::fmt::Debug, O: std::fmt::Debug>(op: &wgl::Operation<I, O>) -> String {
    format!(
        "process {} {:?} -> {} [{:.3}s..{}]",
        op.client,
        op.input,
        op.output
            .as_ref()
            .map_or("indeterminate".to_string(), |o| format!("{o:?}")),
        op.call as f64 / 1e9,
        op.ret
            .map_or("?".to_string(), |r| format!("{:.3}s", r as f64 / 1e9))
    )
}

fn check_keys<M: wgl::Model>(
    model: &M,
    kind: &str,
    keys: &KeyHistories<M>,
    problems: &mut Vec<String>,
) -> usize {
    let mut checked = 0;
    for (key, ops) in keys {
        checked += ops.len();
        match wgl::check(model, ops, MAX_STEPS_PER_KEY) {
            wgl::Verdict::Linearizable => {}
            wgl::Verdict::Unknown => problems.push(format!(
                "{kind} {key}: unknown (search budget of {MAX_STEPS_PER_KEY} steps exceeded over {} ops)",
                ops.len()
            )),
            wgl::Verdict::NotLinearizable { longest, stuck } => {
                let tail: Vec<String> = longest
                    .iter()
                    .rev()
                    .take(4)
                    .rev()
                    .map(|i| format!("    {}", describe(&ops[*i])))
                    .collect();
                let stuck: Vec<String> = stuck
                    .iter()
                    .map(|i| format!("    {}", describe(&ops[*i])))
                    .collect();
                problems.push(format!(
                    "{kind} {key}: not linearizable after {} of {} ops; last linearized:\n{}\n  none of these can go next:\n{}",
                    longest.len(),
                    ops.len(),
                    tail.join("\n"),
                    stuck.join("\n")
                ));
            }
        }
    }
    checked
}

/// Linearizability of every node id and model id.
pub fn linearizability(events: &[Event]) -> Verdict {
    let ops = operations(events);
    let (nodes, models) = per_key(&ops);
    let mut problems = Vec::new();
    let n = check_keys(&NodeModel, "node", &nodes, &mut problems);
    let m = check_keys(&ModelModel, "model", &models, &mut problems);
    let shown = 5;
    if problems.len() > shown {
        let more = problems.len() - shown;
        problems.truncate(shown);
        problems.push(format!("... and {more} more keys"));
    }
    Verdict {
        checker: "linearizable".into(),
        valid: problems.is_empty(),
        detail: if problems.is_empty() {
            format!(
                "{} node keys ({n} ops) and {} model keys ({m} ops) linearizable",
                nodes.len(),
                models.len()
            )
        } else {
            problems.join("\n")
        },
    }
}

/// No lost acknowledged writes: for every key whose last write was acknowledged and
/// overlapped no other write, the final reads (process >= `final_process`) show it.
pub fn lost_writes(events: &[Event], final_process: u64) -> Verdict {
    let ops = operations(events);
    let key = |op: &Op| match op {
        Op::Register { node, .. } | Op::Leave { node } => Some(format!("node {node}")),
        Op::AddModel { model, .. } | Op::RemoveModel { model } => Some(format!("model {model}")),
        _ => None,
    };
    let mut writes: BTreeMap<String, Vec<&CompletedOp>> = BTreeMap::new();
    for o in ops.iter().filter(|o| o.completion != Completion::Fail) {
        if let Some(k) = key(&o.op) {
            writes.entry(k).or_default().push(o);
        }
    }
    // What the final reads saw, by key.
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for o in ops.iter().filter(|o| o.process >= final_process) {
        match (&o.op, &o.completion) {
            (Op::ReadNode { node }, Completion::Ok(_, Ret::Node { node: v })) => {
                seen.entry(format!("node {node}"))
                    .or_default()
                    .push(format!("{v:?}"));
            }
            (Op::ReadModels, Completion::Ok(_, Ret::Models { models })) => {
                for k in writes.keys().filter_map(|k| k.strip_prefix("model ")) {
                    seen.entry(format!("model {k}"))
                        .or_default()
                        .push(format!("{:?}", models.get(k).copied()));
                }
            }
            _ => {}
        }
    }
    let mut checked = 0;
    let mut problems = Vec::new();
    for (k, ws) in &writes {
        let Some(last) = ws.iter().max_by_key(|o| o.call) else {
            continue;
        };
        let Completion::Ok(_, ret) = &last.completion else {
            continue; // the last write is indeterminate: either outcome is allowed
        };
        let alone = ws.iter().all(|o| {
            std::ptr::eq(*o, *last) || ret_time(&o.completion).is_some_and(|t| t < last.call)
        });
        if !alone {
            continue;
        }
        let expected = match (&last.op, ret) {
            (Op::Register { port, .. }, Ret::Done) => format!(
                "{:?}",
                Some(NodeView {
                    port: *port,
                    left: false
                })
            ),
            (Op::AddModel { layers, .. }, Ret::Done) => format!("{:?}", Some(*layers)),
            (Op::RemoveModel { .. }, Ret::Done) => format!("{:?}", None::<u32>),
            _ => continue, // leaves and refusals: covered by the linearizability checker
        };
        let Some(finals) = seen.get(k) else {
            problems.push(format!("{k}: no final read"));
            continue;
        };
        checked += 1;
        if let Some(bad) = finals.iter().find(|v| **v != expected) {
            problems.push(format!(
                "{k}: acknowledged {:?} at {:.3}s but the final read shows {bad}",
                last.op,
                last.call as f64 / 1e9
            ));
        }
    }
    Verdict {
        checker: "no-lost-writes".into(),
        valid: problems.is_empty(),
        detail: if problems.is_empty() {
            format!("{checked} keys whose last write was acknowledged alone: all present in the final reads")
        } else {
            problems.join("\n")
        },
    }
}

/// At most one leader per term, from every replica's own reports.
pub fn election_safety(events: &[Event]) -> Verdict {
    let mut leaders: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    let mut samples = 0;
    for e in events {
        if let Event::Raft {
            replica,
            term,
            role,
            leader,
            ..
        } = e
        {
            samples += 1;
            if role == "leader" {
                leaders.entry(*term).or_default().insert(*replica);
            }
            if *leader != 0 {
                leaders.entry(*term).or_default().insert(*leader);
            }
        }
    }
    let bad: Vec<String> = leaders
        .iter()
        .filter(|(_, l)| l.len() > 1)
        .map(|(t, l)| format!("term {t}: leaders {l:?}"))
        .collect();
    Verdict {
        checker: "one-leader-per-term".into(),
        valid: bad.is_empty(),
        detail: if bad.is_empty() {
            format!(
                "{} terms with a leader over {samples} state changes",
                leaders.len()
            )
        } else {
            bad.join("\n")
        },
    }
}

/// Parses "node:first-last".
fn parse_range(entry: &str) -> Option<(String, u32, u32)> {
    let (node, range) = entry.rsplit_once(':')?;
    let (a, b) = range.split_once('-')?;
    Some((node.to_string(), a.parse().ok()?, b.parse().ok()?))
}

/// Problems with one placement snapshot: a layer on two workers or on none (of a placed
/// model), a worker over capacity, and when `settled`, a layer on a worker that is not
/// healthy.
pub fn placement_problems(
    models: &[ModelSample],
    nodes: &[NodeSample],
    settled: bool,
) -> Vec<String> {
    let mut problems = Vec::new();
    let nodes: BTreeMap<&str, &NodeSample> = nodes.iter().map(|n| (n.id.as_str(), n)).collect();
    let mut load: BTreeMap<String, u32> = BTreeMap::new();
    for m in models.iter().filter(|m| !m.placement.is_empty()) {
        let mut owner: Vec<Option<String>> = vec![None; m.layers as usize];
        for entry in &m.placement {
            let Some((node, first, last)) = parse_range(entry) else {
                problems.push(format!("model {}: unreadable placement {entry:?}", m.id));
                continue;
            };
            for layer in first..=last {
                match owner.get_mut(layer as usize) {
                    None => problems.push(format!("model {}: layer {layer} out of range", m.id)),
                    Some(Some(other)) => problems.push(format!(
                        "model {}: layer {layer} on both {other} and {node}",
                        m.id
                    )),
                    Some(slot) => *slot = Some(node.clone()),
                }
            }
            *load.entry(node.clone()).or_default() += last.saturating_sub(first) + 1;
            if settled {
                match nodes.get(node.as_str()) {
                    Some(n) if n.status == "healthy" => {}
                    Some(n) => problems.push(format!(
                        "model {}: layers {first}-{last} on {node}, which is {}",
                        m.id, n.status
                    )),
                    None => problems.push(format!(
                        "model {}: layers {first}-{last} on unknown node {node}",
                        m.id
                    )),
                }
            }
        }
        if let Some(layer) = owner.iter().position(Option::is_none) {
            problems.push(format!(
                "model {}: placed but layer {layer} has no worker",
                m.id
            ));
        }
    }
    for (node, used) in load {
        if let Some(n) = nodes.get(node.as_str()) {
            if used > n.max_layers {
                problems.push(format!(
                    "node {node}: {used} layers over its capacity {}",
                    n.max_layers
                ));
            }
        }
    }
    problems
}

/// Placement invariants in every sampled state, and the settled ones after the heal.
pub fn placement(events: &[Event]) -> Verdict {
    let mut problems = Vec::new();
    let mut samples = 0;
    let mut settled_samples = 0;
    for e in events {
        if let Event::Placement {
            t_ns,
            settled,
            models,
            nodes,
        } = e
        {
            samples += 1;
            settled_samples += usize::from(*settled);
            for p in placement_problems(models, nodes, *settled) {
                problems.push(format!("at {:.3}s: {p}", *t_ns as f64 / 1e9));
            }
        }
    }
    if settled_samples == 0 {
        problems.push("no settled placement sample after the heal".into());
    }
    Verdict {
        checker: "placement".into(),
        valid: problems.is_empty(),
        detail: if problems.is_empty() {
            format!("{samples} snapshots ({settled_samples} after the heal) keep the invariants")
        } else {
            problems.join("\n")
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invoke(t: u64, p: u64, op: Op) -> Event {
        Event::Invoke {
            t_ns: t,
            process: p,
            replica: 1,
            op,
        }
    }
    fn ok(t: u64, p: u64, ret: Ret) -> Event {
        Event::Ok {
            t_ns: t,
            process: p,
            ret,
        }
    }
    fn reg(port: u32) -> Op {
        Op::Register {
            node: "n".into(),
            port,
        }
    }
    fn read() -> Op {
        Op::ReadNode { node: "n".into() }
    }
    fn saw(port: u32) -> Ret {
        Ret::Node {
            node: Some(NodeView { port, left: false }),
        }
    }

    #[test]
    fn stale_node_read_is_caught() {
        let good = vec![
            invoke(1, 1, reg(7)),
            ok(2, 1, Ret::Done),
            invoke(3, 2, read()),
            ok(4, 2, saw(7)),
        ];
        assert!(linearizability(&good).valid);
        let stale = vec![
            invoke(1, 1, reg(7)),
            ok(2, 1, Ret::Done),
            invoke(3, 2, read()),
            ok(4, 2, Ret::Node { node: None }),
        ];
        let v = linearizability(&stale);
        assert!(!v.valid, "{v:?}");
        assert!(v.detail.contains("node n"), "{}", v.detail);
    }

    #[test]
    fn indeterminate_register_may_show_up_later() {
        let h = vec![
            invoke(1, 1, reg(7)),
            Event::Info {
                t_ns: 2,
                process: 1,
                error: "timeout".into(),
            },
            invoke(3, 2, read()),
            ok(4, 2, Ret::Node { node: None }),
            invoke(5, 2, read()),
            ok(6, 2, saw(7)),
        ];
        assert!(linearizability(&h).valid);
    }

    #[test]
    fn model_add_answering_exists_for_an_absent_model_is_caught() {
        let add = |layers| Op::AddModel {
            model: "m".into(),
            layers,
        };
        let h = vec![
            invoke(1, 1, add(3)),
            ok(2, 1, Ret::Exists),
            invoke(3, 1, Op::ReadModels),
            ok(
                4,
                1,
                Ret::Models {
                    models: BTreeMap::new(),
                },
            ),
        ];
        assert!(!linearizability(&h).valid);
        let h = vec![
            invoke(1, 1, add(3)),
            ok(2, 1, Ret::Done),
            invoke(3, 2, add(4)),
            ok(5, 2, Ret::Exists),
            invoke(6, 1, Op::ReadModels),
            ok(
                7,
                1,
                Ret::Models {
                    models: [("m".to_string(), 3)].into(),
                },
            ),
        ];
        assert!(linearizability(&h).valid);
    }

    /// A real anomaly the suite found (seed 13, membership changes): two clients' `model add`
    /// both answered "already exists" for a model that one of them had just added; the
    /// leader-side retry of a committed-but-unanswered write was applied twice. Fixed by
    /// request ids (`Command::Once`); the recorded history stays caught.
    #[test]
    fn recorded_double_apply_is_caught() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures")
            .join("retry-answered-exists.jsonl");
        let events = crate::jepsen::history::load(&path).expect("fixture");
        let v = linearizability(&events);
        assert!(!v.valid, "{v:?}");
        assert!(v.detail.contains("model jm8-0"), "{}", v.detail);
    }

    #[test]
    fn lost_write_is_caught() {
        let h = vec![
            invoke(1, 1, reg(7)),
            ok(2, 1, Ret::Done),
            invoke(3, 1000, read()),
            ok(4, 1000, Ret::Node { node: None }),
        ];
        assert!(!lost_writes(&h, 1000).valid);
        let h = vec![
            invoke(1, 1, reg(7)),
            ok(2, 1, Ret::Done),
            invoke(3, 1000, read()),
            ok(4, 1000, saw(7)),
        ];
        assert!(lost_writes(&h, 1000).valid);
    }

    #[test]
    fn two_leaders_in_one_term_are_caught() {
        let raft = |replica, term, role: &str, leader| Event::Raft {
            t_ns: 0,
            replica,
            term,
            role: role.into(),
            leader,
        };
        let good = vec![
            raft(1, 2, "leader", 1),
            raft(2, 2, "follower", 1),
            raft(2, 3, "leader", 2),
        ];
        assert!(election_safety(&good).valid);
        let bad = vec![raft(1, 2, "leader", 1), raft(2, 2, "leader", 2)];
        assert!(!election_safety(&bad).valid);
        let bad = vec![raft(1, 2, "follower", 1), raft(3, 2, "follower", 2)];
        assert!(!election_safety(&bad).valid);
    }

    #[test]
    fn placement_problems_are_found() {
        let node = |id: &str, status: &str| NodeSample {
            id: id.into(),
            status: status.into(),
            max_layers: 4,
        };
        let model = |placement: &[&str]| ModelSample {
            id: "m".into(),
            layers: 6,
            placement: placement.iter().map(|s| s.to_string()).collect(),
        };
        let nodes = vec![
            node("a", "healthy"),
            node("b", "healthy"),
            node("c", "offline"),
        ];
        assert!(placement_problems(&[model(&["a:0-2", "b:3-5"])], &nodes, true).is_empty());
        assert_eq!(
            placement_problems(&[model(&["a:0-3", "b:3-5"])], &nodes, false).len(),
            1
        );
        assert_eq!(
            placement_problems(&[model(&["a:0-1", "b:3-5"])], &nodes, false).len(),
            1
        );
        assert_eq!(
            placement_problems(&[model(&["a:0-5"])], &nodes, false).len(),
            1
        );
        assert!(placement_problems(&[model(&["a:0-2", "c:3-5"])], &nodes, false).is_empty());
        assert_eq!(
            placement_problems(&[model(&["a:0-2", "c:3-5"])], &nodes, true).len(),
            1
        );
        assert!(placement_problems(&[model(&[])], &nodes, true).is_empty());
    }
}
