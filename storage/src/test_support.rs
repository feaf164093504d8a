//! A small key-value application used to test the store on its own: openraft's storage
//! conformance suite, and a crash test that SIGKILLs a writer mid-append.

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

use crate::{open, AppData, LogStore, SledStateMachine, StoreOptions};

openraft::declare_raft_types!(
    pub Kv:
        D = (String, String),
        R = Option<String>,
);

/// The test application: a map; each command sets a key and answers its previous value.
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct KvData(BTreeMap<String, String>);

impl AppData<Kv> for KvData {
    fn apply(&mut self, _log_id: &LogId<u64>, (key, value): (String, String)) -> Option<String> {
        self.0.insert(key, value)
    }
}

/// Builds a fresh store in a new temporary directory per suite case.
struct Builder;

impl StoreBuilder<Kv, LogStore<Kv>, SledStateMachine<Kv, KvData>, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<
        (
            tempfile::TempDir,
            LogStore<Kv>,
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
const CHILD_PLANTED_BUG_ENV: &str = "DLLM_STORAGE_CRASH_CHILD_PLANTED_BUG";

/// The child half of the crash tests: appends one entry at a time and prints `acked <index>`
/// only after the append returned, until it is killed. With the planted bug it acknowledges
/// each entry at once and writes what it acknowledged every 5 seconds (a write-behind buffer),
/// which is what a store that acks before its write would do; the kill comes well before.
#[test]
#[ignore = "child process of the crash tests"]
fn crash_child() {
    use std::io::Write;
    let dir = std::env::var(CHILD_DIR_ENV).expect("run only by the crash tests");
    let planted_bug = std::env::var_os(CHILD_PLANTED_BUG_ENV).is_some();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut stdout = std::io::stdout().lock();
        let (log, _sm) =
            open::<Kv, KvData>(Path::new(&dir), &StoreOptions::default()).expect("open store");
        let mut behind = Vec::new();
        let mut written_at = std::time::Instant::now();
        for index in 1.. {
            if planted_bug {
                behind.push(entry(index));
                if written_at.elapsed() > std::time::Duration::from_secs(5) {
                    log.append_durably(behind.drain(..)).await.expect("append");
                    written_at = std::time::Instant::now();
                }
            } else {
                log.append_durably([entry(index)]).await.expect("append");
            }
            writeln!(stdout, "acked {index}").expect("stdout");
            stdout.flush().expect("stdout");
        }
    });
}

/// Runs the writer child, SIGKILLs it after 300 acknowledgements, reopens the store and
/// checks that every acknowledged entry is there and intact. Returns how many were acked, or
/// what was lost.
async fn crash_and_check(planted_bug: bool) -> Result<u64, String> {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cmd = std::process::Command::new(std::env::current_exe().expect("test binary"));
    cmd.args([
        "--ignored",
        "--exact",
        "test_support::crash_child",
        "--nocapture",
    ])
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

    let (mut log, _sm) = open::<Kv, KvData>(dir.path(), &StoreOptions::default())
        .map_err(|e| format!("the store does not reopen after SIGKILL: {e}"))?;
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

/// A process SIGKILLed in the middle of appending restarts with every entry whose append had
/// returned (been acknowledged) before the kill, each intact.
#[tokio::test]
async fn kill_9_keeps_acknowledged_entries() {
    let acked = crash_and_check(false)
        .await
        .expect("no acknowledged entry is lost");
    assert!(acked >= 300);
}

/// The crash checker catches a planted bug: a store that acknowledges before flushing loses
/// acknowledged entries to SIGKILL, and the checker says so.
#[tokio::test]
async fn crash_checker_catches_ack_before_flush() {
    let lost = crash_and_check(true).await;
    assert!(
        lost.is_err(),
        "the checker missed the planted bug: {lost:?}"
    );
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

/// A built snapshot lives in its own file and is what a reopened store starts from; a purge
/// hides the purged entries at once (the deletion runs in the background) and the purge point
/// survives a reopen.
///
/// Each half runs on its own runtime: dropping the first ends the store's background tasks
/// (which hold the database open), possibly before the purge deleted anything.
#[test]
fn snapshot_file_and_purge_survive_reopen() {
    use openraft::{storage::RaftStateMachine, RaftLogReader, RaftSnapshotBuilder};

    let dir = tempfile::tempdir().expect("temp dir");
    let runtime = || tokio::runtime::Runtime::new().expect("runtime");
    runtime().block_on(async {
        let (mut log, mut sm) =
            open::<Kv, KvData>(dir.path(), &StoreOptions::default()).expect("open");
        log.append_durably((1..=20).map(entry))
            .await
            .expect("append");
        sm.apply((1..=20).map(entry)).await.expect("apply");
        let snapshot = sm.build_snapshot().await.expect("build");
        assert_eq!(snapshot.meta.last_log_id.map(|l| l.index), Some(20));
        assert!(dir.path().join(crate::SNAPSHOT_FILE).is_file());
        log.purge(LogId::new(CommittedLeaderId::new(1, 1), 15))
            .await
            .expect("purge");
        let left = log.try_get_log_entries(0..=20).await.expect("read");
        assert_eq!(
            left.first().map(|e| e.log_id.index),
            Some(16),
            "purged entries are gone for readers at once"
        );
        let state = log.get_log_state().await.expect("state");
        assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(15));
        assert_eq!(state.last_log_id.map(|l| l.index), Some(20));
    });
    runtime().block_on(async {
        let (mut log, mut sm) =
            open::<Kv, KvData>(dir.path(), &StoreOptions::default()).expect("reopen");
        let (applied, _) = sm.applied_state().await.expect("applied");
        assert_eq!(
            applied.map(|l| l.index),
            Some(20),
            "restarts from the snapshot"
        );
        let state = sm.state().read(|d| d.0.len());
        assert_eq!(state, 20, "the snapshot's data is back");
        let log_state = log.get_log_state().await.expect("state");
        assert_eq!(log_state.last_purged_log_id.map(|l| l.index), Some(15));
        let left = log.try_get_log_entries(0..=20).await.expect("read");
        assert_eq!(left.len(), 5);
    });
}

/// Opens the store at `dir` once sled's lock on it is free: sled releases it from its
/// background threads some time after the last handle of an earlier open is dropped (up to
/// 10 s; any other error at once).
fn open_when_unlocked(
    dir: &std::path::Path,
) -> Result<(LogStore<Kv>, SledStateMachine<Kv, KvData>), crate::OpenError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match open::<Kv, KvData>(dir, &StoreOptions::default()) {
            Err(e)
                if format!("{e:?}").contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

/// A store whose log an older version kept in sled opens with that log, vote, committed id and
/// purge point moved into the segment log, once; reopening again gives the same.
#[test]
fn a_log_kept_in_sled_is_moved_over() {
    use openraft::{RaftLogReader, Vote};

    let dir = tempfile::tempdir().expect("temp dir");
    let vote = Vote::new(4, 2);
    let committed = Some(LogId::new(CommittedLeaderId::new(1, 1), 30));
    let purged = Some(LogId::new(CommittedLeaderId::new(1, 1), 10));
    {
        // The old layout: entries by big-endian index in tree `log`, the rest in tree `meta`;
        // purged entries that the old background purge had not deleted yet are still there.
        let db = sled::open(dir.path()).expect("sled");
        let log = db.open_tree("log").expect("tree");
        let meta = db.open_tree("meta").expect("tree");
        for index in 5..=40 {
            let bytes = bincode::serialize(&entry(index)).expect("encode");
            log.insert(index.to_be_bytes(), bytes).expect("insert");
        }
        meta.insert("vote", bincode::serialize(&vote).expect("encode"))
            .expect("insert");
        meta.insert("committed", bincode::serialize(&committed).expect("encode"))
            .expect("insert");
        meta.insert("last_purged", bincode::serialize(&purged).expect("encode"))
            .expect("insert");
        db.flush().expect("flush");
    }
    for round in ["first open", "second open"] {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        runtime.block_on(async {
            let (mut log, _sm) = open_when_unlocked(dir.path()).expect(round);
            assert_eq!(log.read_vote().await.expect("vote"), Some(vote), "{round}");
            assert_eq!(log.read_committed().await.expect("c"), committed, "{round}");
            let state = log.get_log_state().await.expect("state");
            assert_eq!(state.last_purged_log_id, purged, "{round}");
            assert_eq!(state.last_log_id.map(|l| l.index), Some(40), "{round}");
            let entries = log.try_get_log_entries(0..=100).await.expect("read");
            let indexes: Vec<u64> = entries.iter().map(|e| e.log_id.index).collect();
            assert_eq!(indexes, (11..=40).collect::<Vec<_>>(), "{round}");
            assert!(
                matches!(&entries[0].payload, EntryPayload::Normal((k, _)) if k == "key-11"),
                "{round}"
            );
        });
    }
    let db = sled::open(dir.path()).expect("sled");
    assert!(
        db.open_tree("log").expect("tree").is_empty(),
        "the sled copy is emptied"
    );
}
