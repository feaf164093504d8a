//! A small key-value application used to test the store on its own: openraft's storage
//! conformance suite, and a crash test that SIGKILLs a writer mid-append.

use std::{
    collections::BTreeMap,
    io::{BufRead, Cursor},
    path::Path,
    time::Duration,
};

use openraft::{
    storage::RaftLogStorage, testing::StoreBuilder, CommittedLeaderId, Entry, EntryPayload, LogId,
    StorageError,
};
use serde::{Deserialize, Serialize};

use crate::{open, AppData, SledLogStore, SledStateMachine, StoreOptions};

openraft::declare_raft_types!(
    pub Kv:
        D = (String, String),
        R = Option<String>,
);

/// The test application: a map; each command sets a key and answers its previous value.
#[derive(Default, Serialize, Deserialize)]
pub struct KvData(BTreeMap<String, String>);

impl AppData<Kv> for KvData {
    fn apply(&mut self, _log_id: &LogId<u64>, (key, value): (String, String)) -> Option<String> {
        self.0.insert(key, value)
    }
}

/// Builds a fresh store in a new temporary directory per suite case.
struct Builder;

impl StoreBuilder<Kv, SledLogStore<Kv>, SledStateMachine<Kv, KvData>, tempfile::TempDir>
    for Builder
{
    async fn build(
        &self,
    ) -> Result<
        (
            tempfile::TempDir,
            SledLogStore<Kv>,
            SledStateMachine<Kv, KvData>,
        ),
        StorageError<u64>,
    > {
        let dir = tempfile::tempdir().expect("create a temp dir");
        let (log, sm) = open(dir.path(), &StoreOptions::default()).expect("open a fresh store");
        Ok((dir, log, sm))
    }
}

/// openraft's storage conformance suite passes against the sled store.
#[test]
fn openraft_storage_suite() -> Result<(), StorageError<u64>> {
    openraft::testing::Suite::test_all(Builder)
}

fn entry(index: u64) -> Entry<Kv> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal((format!("key-{index}"), "v".repeat(index as usize % 512))),
    }
}

const CHILD_DIR_ENV: &str = "DLLM_STORAGE_CRASH_CHILD_DIR";

/// The child half of [`kill_9_keeps_acknowledged_entries`]: appends one entry at a time and
/// prints `acked <index>` only after the append returned, until it is killed.
#[test]
#[ignore = "child process of kill_9_keeps_acknowledged_entries"]
fn crash_child() {
    use std::io::Write;
    let dir = std::env::var(CHILD_DIR_ENV).expect("run only by kill_9_keeps_acknowledged_entries");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let (log, _sm) =
            open::<Kv, KvData>(Path::new(&dir), &StoreOptions::default()).expect("open store");
        let mut stdout = std::io::stdout().lock();
        for index in 1.. {
            log.append_durably([entry(index)]).await.expect("append");
            writeln!(stdout, "acked {index}").expect("stdout");
            stdout.flush().expect("stdout");
        }
    });
}

/// A process SIGKILLed in the middle of appending restarts with every entry whose append had
/// returned (been acknowledged) before the kill, each intact.
#[tokio::test]
async fn kill_9_keeps_acknowledged_entries() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut child = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--ignored",
            "--exact",
            "test_support::crash_child",
            "--nocapture",
        ])
        .env(CHILD_DIR_ENV, dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn the writer");
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

    // sled holds a lock file briefly after an unclean exit on some systems; retry the open.
    let mut reopened = None;
    for _ in 0..50 {
        match open::<Kv, KvData>(dir.path(), &StoreOptions::default()) {
            Ok(store) => {
                reopened = Some(store);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let (mut log, _sm) = reopened.expect("the store reopens after SIGKILL");
    let state = log.get_log_state().await.expect("log state");
    let last = state.last_log_id.expect("a last log id").index;
    assert!(
        last >= acked,
        "acknowledged up to {acked} but the log ends at {last}"
    );
    let mut reader = log.get_log_reader().await;
    let entries = openraft::RaftLogReader::try_get_log_entries(&mut reader, 1..=acked)
        .await
        .expect("read back");
    assert_eq!(
        entries.len() as u64,
        acked,
        "every acknowledged entry is there"
    );
    for (i, got) in entries.iter().enumerate() {
        let want = entry(i as u64 + 1);
        assert_eq!(got.log_id, want.log_id, "entry {} has its log id", i + 1);
        match (&got.payload, &want.payload) {
            (EntryPayload::Normal(g), EntryPayload::Normal(w)) => {
                assert_eq!(g, w, "entry {} is intact", i + 1)
            }
            _ => panic!("entry {} has the wrong payload kind", i + 1),
        }
    }
}

/// A store whose files are overwritten with garbage fails to open with an error; it is never
/// silently reset to empty.
#[test]
fn damaged_store_is_an_error_not_a_reset() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(async {
            let (log, _sm) =
                open::<Kv, KvData>(dir.path(), &StoreOptions::default()).expect("open");
            log.append_durably((1..=50).map(entry))
                .await
                .expect("append");
        });
    }
    for file in std::fs::read_dir(dir.path()).expect("list").flatten() {
        if file.path().is_file() {
            std::fs::write(file.path(), vec![0xA5u8; 4096]).expect("damage a file");
        }
    }
    let result = open::<Kv, KvData>(dir.path(), &StoreOptions::default());
    assert!(
        result.is_err(),
        "a damaged store must not open as if it were fine"
    );
}
