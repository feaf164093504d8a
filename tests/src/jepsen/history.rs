//! The history: every client operation as an invocation and a completion, every nemesis
//! action, and sampled Raft and placement state, as JSON lines a person can read and the
//! checkers re-read (`dllm-jepsen check HISTORY`).

use std::{
    collections::BTreeMap,
    io::{BufRead, BufWriter, Write},
    path::Path,
    sync::Mutex,
    time::Instant,
};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// A client operation, as invoked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "kebab-case")]
pub enum Op {
    /// RegisterWithCluster of `node` with `port` (ports are unique per write in a run).
    Register { node: String, port: u32 },
    /// LeaveCluster of `node`.
    Leave { node: String },
    /// Heartbeat for `node` (recorded; the leader answers from memory, not checked).
    Heartbeat { node: String },
    /// GetNodeInfo of `node`.
    ReadNode { node: String },
    /// `model add` of `model` with `layers` layers (layer counts differ per write).
    AddModel { model: String, layers: u32 },
    /// `model remove` of `model`.
    RemoveModel { model: String },
    /// GetModelList.
    ReadModels,
}

/// What a node looked like to a reader: the port of the registration it saw, and whether
/// the node had left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeView {
    /// Port of the registration.
    pub port: u32,
    /// Status "left".
    pub left: bool,
}

/// What a successful operation returned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "ret", rename_all = "kebab-case")]
pub enum Ret {
    /// The write was applied.
    Done,
    /// The write was refused definitely: the node or model does not exist.
    NotFound,
    /// The write was refused definitely: the model already exists.
    Exists,
    /// A node read: `None` when the node is unknown.
    Node { node: Option<NodeView> },
    /// A model list read: layer count by model id.
    Models { models: BTreeMap<String, u32> },
}

/// A model as sampled for the placement checker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelSample {
    /// Model id.
    pub id: String,
    /// Layer count.
    pub layers: u32,
    /// Placement entries "node:first-last" (empty while pending).
    pub placement: Vec<String>,
}

/// A node as sampled for the placement checker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSample {
    /// Node id.
    pub id: String,
    /// Status string.
    pub status: String,
    /// Layer capacity.
    pub max_layers: u32,
}

/// One history line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Event {
    /// A client invoked `op` against replica slot `replica`.
    Invoke {
        t_ns: u64,
        process: u64,
        replica: usize,
        op: Op,
    },
    /// The operation of `process` completed successfully.
    Ok { t_ns: u64, process: u64, ret: Ret },
    /// The operation definitely did not take effect.
    Fail {
        t_ns: u64,
        process: u64,
        error: String,
    },
    /// The outcome is unknown (timeout, unavailable): it may take effect at any time later.
    Info {
        t_ns: u64,
        process: u64,
        error: String,
    },
    /// A fault was injected or healed.
    Nemesis {
        t_ns: u64,
        action: String,
        detail: String,
    },
    /// What one replica said about its Raft state (recorded when it changes).
    Raft {
        t_ns: u64,
        replica: u64,
        term: u64,
        role: String,
        leader: u64,
    },
    /// A placement snapshot (GetModelList, then GetNodeList). `settled` after the heal.
    Placement {
        t_ns: u64,
        settled: bool,
        models: Vec<ModelSample>,
        nodes: Vec<NodeSample>,
    },
}

/// Appends events to a JSON-lines file and keeps them in memory for the checkers.
pub struct Recorder {
    start: Instant,
    inner: Mutex<(BufWriter<std::fs::File>, Vec<Event>)>,
}

impl Recorder {
    /// Creates (truncates) `path`.
    ///
    /// # Errors
    /// When the file cannot be created.
    pub fn create(path: &Path) -> Result<Self> {
        let file = std::fs::File::create(path)
            .with_context(|| format!("create history {}", path.display()))?;
        Ok(Self {
            start: Instant::now(),
            inner: Mutex::new((BufWriter::new(file), Vec::new())),
        })
    }

    /// Nanoseconds since the run started (monotonic).
    pub fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Records `event`.
    pub fn record(&self, event: Event) {
        let mut inner = self.inner.lock().expect("history lock");
        let line = serde_json::to_string(&event).expect("events serialize");
        let _ = writeln!(inner.0, "{line}");
        inner.1.push(event);
    }

    /// Records a nemesis action, also printed for the person watching.
    pub fn nemesis(&self, action: &str, detail: impl Into<String>) {
        let detail = detail.into();
        let t_ns = self.now();
        eprintln!("[{:>7.3}s] nemesis {action}: {detail}", t_ns as f64 / 1e9);
        self.record(Event::Nemesis {
            t_ns,
            action: action.to_string(),
            detail,
        });
    }

    /// Flushes the file and returns every event so far.
    pub fn events(&self) -> Vec<Event> {
        let mut inner = self.inner.lock().expect("history lock");
        let _ = inner.0.flush();
        inner.1.clone()
    }
}

/// Reads a history file.
///
/// # Errors
/// When the file cannot be read or a line is not an event.
pub fn load(path: &Path) -> Result<Vec<Event>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("open history {}", path.display()))?;
    std::io::BufReader::new(file)
        .lines()
        .enumerate()
        .filter(|(_, l)| !matches!(l, Ok(l) if l.trim().is_empty()))
        .map(|(i, line)| {
            let line = line?;
            serde_json::from_str(&line).with_context(|| format!("line {}: {line}", i + 1))
        })
        .collect()
}

/// How one operation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completion {
    /// Returned `Ret` at the time.
    Ok(u64, Ret),
    /// Definitely not applied.
    Fail,
    /// Unknown; also an invocation with no completion in the history.
    Info,
}

/// An invocation paired with its completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompletedOp {
    /// Client process.
    pub process: u64,
    /// Invocation time.
    pub call: u64,
    /// The operation.
    pub op: Op,
    /// How it ended.
    pub completion: Completion,
}

/// Pairs invocations with completions (a process has one operation open at a time).
pub fn operations(events: &[Event]) -> Vec<CompletedOp> {
    let mut open: BTreeMap<u64, usize> = BTreeMap::new();
    let mut ops: Vec<CompletedOp> = Vec::new();
    for event in events {
        match event {
            Event::Invoke {
                t_ns, process, op, ..
            } => {
                open.insert(*process, ops.len());
                ops.push(CompletedOp {
                    process: *process,
                    call: *t_ns,
                    op: op.clone(),
                    completion: Completion::Info,
                });
            }
            Event::Ok { t_ns, process, ret } => {
                if let Some(i) = open.remove(process) {
                    ops[i].completion = Completion::Ok(*t_ns, ret.clone());
                }
            }
            Event::Fail { process, .. } => {
                if let Some(i) = open.remove(process) {
                    ops[i].completion = Completion::Fail;
                }
            }
            Event::Info { process, .. } => {
                open.remove(process);
            }
            _ => {}
        }
    }
    ops
}
