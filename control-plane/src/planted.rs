//! Deliberately broken behaviours for proving that the fault-test suite catches bugs.
//!
//! Compiled only with the `planted-bugs` feature (never in release builds) and switched on at
//! run time by `DLLM_PLANTED_BUG=<name>[,<name>...]`. `dllm-jepsen --planted-bug` runs a
//! binary built with this feature and must report an anomaly for each bug.

use std::sync::OnceLock;

/// Reads answer from the local state machine without asking the leader for a read index, so
/// a partitioned or lagging replica serves state older than acknowledged writes.
pub const STALE_READS: &str = "stale-reads";

/// RegisterWithCluster answers success before the registration is committed (the write goes
/// on in the background and may be lost, or seen late).
pub const EARLY_ACK: &str = "early-ack";

/// Every planted bug this build knows.
pub const ALL: &[&str] = &[STALE_READS, EARLY_ACK];

/// Whether `bug` was switched on for this process.
pub fn enabled(bug: &str) -> bool {
    static ON: OnceLock<Vec<String>> = OnceLock::new();
    ON.get_or_init(|| {
        let on: Vec<String> = std::env::var("DLLM_PLANTED_BUG")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|b| !b.is_empty())
            .map(String::from)
            .collect();
        for bug in &on {
            if ALL.contains(&bug.as_str()) {
                tracing::warn!(
                    bug,
                    "PLANTED BUG switched on: this replica is deliberately broken"
                );
            } else {
                tracing::error!(bug, known = ?ALL, "unknown planted bug ignored");
            }
        }
        on
    })
    .iter()
    .any(|b| b == bug)
}
