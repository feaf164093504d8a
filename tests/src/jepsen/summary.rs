//! What a run did and found: the [`Summary`] (operation counts, faults, recovery times,
//! verdicts), its human-readable rendering, and how a run's history is counted into it.

use std::{collections::BTreeMap, path::PathBuf};

use serde::Serialize;

use super::{checks::Verdict, history::Event, nemesis::Nemesis, run::Run};

/// Counts of one operation kind.
#[derive(Debug, Default, Clone, Serialize)]
pub struct OpCounts {
    /// Acknowledged.
    pub ok: u64,
    /// Definitely not applied.
    pub fail: u64,
    /// Unknown outcome.
    pub info: u64,
}

/// What a run did and found.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Seed.
    pub seed: u64,
    /// Nemeses enabled.
    pub nemeses: Vec<Nemesis>,
    /// Planted bug, if any.
    pub planted_bug: Option<String>,
    /// Operations by kind.
    pub ops: BTreeMap<String, OpCounts>,
    /// Faults injected, by action.
    pub faults: BTreeMap<String, u64>,
    /// Seconds from the heal to: an agreed leader, an acknowledged write, healthy workers,
    /// a placement that passes the settled check.
    pub recovery_s: BTreeMap<String, f64>,
    /// Checker verdicts.
    pub verdicts: Vec<Verdict>,
    /// All checkers passed.
    pub valid: bool,
    /// The history file.
    pub history: PathBuf,
}

impl Summary {
    /// A human-readable report.
    pub fn render(&self) -> String {
        let mut s = format!(
            "seed {}  nemeses [{}]{}\n",
            self.seed,
            self.nemeses
                .iter()
                .map(|n| n.name())
                .collect::<Vec<_>>()
                .join(","),
            self.planted_bug
                .as_ref()
                .map_or(String::new(), |b| format!("  PLANTED BUG {b}"))
        );
        s += &format!("{:<14}{:>8}{:>8}{:>8}\n", "operation", "ok", "fail", "info");
        for (f, c) in &self.ops {
            s += &format!("{f:<14}{:>8}{:>8}{:>8}\n", c.ok, c.fail, c.info);
        }
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(k, v)| format!("{k} x{v}"))
            .collect();
        s += &format!(
            "faults: {}\n",
            if faults.is_empty() {
                "none".into()
            } else {
                faults.join(", ")
            }
        );
        let rec: Vec<String> = self
            .recovery_s
            .iter()
            .map(|(k, v)| format!("{k} {v:.2}s"))
            .collect();
        s += &format!("after heal: {}\n", rec.join(", "));
        for v in &self.verdicts {
            s += &format!(
                "{:<22}{}  {}\n",
                v.checker,
                if v.valid { "ok     " } else { "INVALID" },
                v.detail.replace('\n', "\n                         ")
            );
        }
        s += &format!(
            "{}  history: {}\n",
            if self.valid { "VALID" } else { "ANOMALY FOUND" },
            self.history.display()
        );
        s
    }
}

impl Run {
    pub(super) fn summary(
        &self,
        events: &[Event],
        verdicts: Vec<Verdict>,
        recovery: BTreeMap<String, f64>,
    ) -> Summary {
        let mut ops: BTreeMap<String, OpCounts> = BTreeMap::new();
        let mut faults: BTreeMap<String, u64> = BTreeMap::new();
        let mut open: BTreeMap<u64, String> = BTreeMap::new();
        for e in events {
            match e {
                Event::Invoke { process, op, .. } => {
                    let f = serde_json::to_value(op)
                        .ok()
                        .and_then(|v| v.get("f").and_then(|f| f.as_str()).map(String::from))
                        .unwrap_or_default();
                    open.insert(*process, f);
                }
                Event::Ok { process, .. } => {
                    if let Some(f) = open.remove(process) {
                        ops.entry(f).or_default().ok += 1;
                    }
                }
                Event::Fail { process, .. } => {
                    if let Some(f) = open.remove(process) {
                        ops.entry(f).or_default().fail += 1;
                    }
                }
                Event::Info { process, .. } => {
                    if let Some(f) = open.remove(process) {
                        ops.entry(f).or_default().info += 1;
                    }
                }
                Event::Nemesis { action, .. }
                    if !action.starts_with("heal")
                        && !action.starts_with("restore")
                        && !action.ends_with("-error") =>
                {
                    *faults.entry(action.clone()).or_default() += 1;
                }
                _ => {}
            }
        }
        let valid = verdicts.iter().all(|v| v.valid);
        Summary {
            seed: self.config.seed,
            nemeses: self.config.nemeses.iter().copied().collect(),
            planted_bug: self.config.planted_bug.clone(),
            ops,
            faults,
            recovery_s: recovery,
            verdicts,
            valid,
            history: self.config.out_dir.join("history.jsonl"),
        }
    }
}
