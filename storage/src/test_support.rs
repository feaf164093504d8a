//! Helpers of the store's tests (`tests.rs`): a small key-value application, a builder for
//! openraft's storage conformance suite, and the SIGKILL crash checker.

use std::{
    collections::BTreeMap,
    io::{BufRead, Cursor},
    path::Path,
};

use openraft::{
    storage::RaftLogStorage, testing::StoreBuilder, CommittedLeaderId, Entry, EntryPayload, LogId,
    StorageError,
};
use serde::{Deserialize, Serialize};

use crate::{open, AppData, LogStore, OpenError, StateMachine, StoreOptions};

openraft::declare_raft_types!(
    pub Kv:
        D = (String, String),
        R = Option<String>,
);

/// The test application: a map; each command sets a key and answers its previous value.
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct KvData(pub BTreeMap<String, String>);

impl AppData<Kv> for KvData {
    fn apply(&mut self, _log_id: &LogId<u64>, (key, value): (String, String)) -> Option<String> {
        self.0.insert(key, value)
    }
}

/// Builds a fresh store in a new temporary directory per suite case.
pub struct Builder;

impl StoreBuilder<Kv, LogStore<Kv>, StateMachine<Kv, KvData>, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore<Kv>, StateMachine<Kv, KvData>), StorageError<u64>>
    {
        let dir = tempfile::tempdir().expect("create a temp dir");
        let (log, sm) = open(dir.path(), &StoreOptions::default()).expect("open a fresh store");
        Ok((dir, log, sm))
    }
}

/// Log entry `index` of term 1, with a value whose length varies with the index.
pub fn entry(index: u64) -> Entry<Kv> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal((format!("key-{index}"), "v".repeat(index as usize % 512))),
    }
}

/// The log id of [`entry`] `index`.
pub fn log_id(index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(1, 1), index)
}

/// Opens the store in `dir` with the default options.
pub fn open_kv(dir: &Path) -> Result<(LogStore<Kv>, StateMachine<Kv, KvData>), OpenError> {
    open::<Kv, KvData>(dir, &StoreOptions::default())
}

/// Bytes in the files under `dir`, recursively.
pub fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("list")
        .flatten()
        .map(|entry| {
            let meta = entry.metadata().expect("metadata");
            if meta.is_dir() {
                dir_size(&entry.path())
            } else {
                meta.len()
            }
        })
        .sum()
}

/// The environment variable that makes `tests::crash_child` run, naming its store.
pub const CHILD_DIR_ENV: &str = "DLLM_STORAGE_CRASH_CHILD_DIR";
/// The environment variable that plants the ack-before-write bug in `tests::crash_child`.
pub const CHILD_PLANTED_BUG_ENV: &str = "DLLM_STORAGE_CRASH_CHILD_PLANTED_BUG";

/// Runs the writer child (`tests::crash_child`), SIGKILLs it after 300 acknowledgements,
/// reopens the store and checks that every acknowledged entry is there and intact. Returns how
/// many were acked, or what was lost.
pub async fn crash_and_check(planted_bug: bool) -> Result<u64, String> {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cmd = std::process::Command::new(std::env::current_exe().expect("test binary"));
    cmd.args(["--ignored", "--exact", "tests::crash_child", "--nocapture"])
        .env(CHILD_DIR_ENV, dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    if planted_bug {
        cmd.env(CHILD_PLANTED_BUG_ENV, "1");
    }
    let mut child = cmd.spawn().expect("spawn the writer");
    let stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut acked = 0u64;
    let mut killed = false;
    for line in stdout.lines() {
        let Ok(line) = line else { break };
        if let Some(index) = line.strip_prefix("acked ") {
            acked = index.parse().expect("an index");
            if acked >= 300 && !killed {
                // Kill mid-stream: the writer is busy appending the next entry right now.
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(child.id() as i32),
                    nix::sys::signal::Signal::SIGKILL,
                )
                .expect("kill the writer");
                killed = true;
            }
        }
    }
    // Lines printed before the kill are still read above, so `acked` is the last
    // acknowledgement the writer made.
    let status = child.wait().expect("wait for the writer");
    assert!(
        killed,
        "writer exited on its own ({status}) after {acked} acks"
    );

    let (mut log, _sm) =
        open_kv(dir.path()).map_err(|e| format!("the store does not reopen after SIGKILL: {e}"))?;
    let state = log.get_log_state().await.expect("log state");
    let last = state.last_log_id.map(|id| id.index).unwrap_or(0);
    if last < acked {
        return Err(format!(
            "acknowledged up to {acked} but the log ends at {last}"
        ));
    }
    let mut reader = log.get_log_reader().await;
    let entries = openraft::RaftLogReader::try_get_log_entries(&mut reader, 1..=acked)
        .await
        .expect("read back");
    if entries.len() as u64 != acked {
        return Err(format!(
            "{} of {acked} acknowledged entries are there",
            entries.len()
        ));
    }
    for (i, got) in entries.iter().enumerate() {
        let want = entry(i as u64 + 1);
        let same = got.log_id == want.log_id
            && matches!((&got.payload, &want.payload),
                (EntryPayload::Normal(g), EntryPayload::Normal(w)) if g == w);
        if !same {
            return Err(format!("entry {} is not what was written", i + 1));
        }
    }
    Ok(acked)
}
