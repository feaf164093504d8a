//! Disaster recovery on a stopped replica's store, before Raft starts:
//!
//! - [`restore`]: an empty store begins as a snapshot of a saved state, with the new
//!   cluster's membership, so every founding replica of a restored cluster starts from the
//!   same state and log id (like `etcdutl snapshot restore`).
//! - [`force_new_cluster`]: a surviving replica's store becomes a one-voter cluster of itself
//!   that keeps everything in its log (like etcd's `--force-new-cluster`).

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Cursor,
    path::{Path, PathBuf},
};

use openraft::{
    storage::{RaftLogStorage, RaftStateMachine},
    BasicNode, CommittedLeaderId, EntryPayload, LogId, Membership, RaftLogReader, SnapshotMeta,
    StorageError, StoredMembership, Vote,
};

use crate::{
    state_machine::{write_atomically, StoredSnapshot},
    AppData, LogStore, StateMachine, StoreTypeConfig, SNAPSHOT_FILE,
};

/// Written beside a restored store: the checksum of the file it was restored from, so that a
/// restart that still names the same `--restore-from` file starts normally.
pub const RESTORED_FILE: &str = "restored-from";
/// Written beside a store forced into a new cluster, so that a restart that still has
/// `--force-new-cluster` is refused instead of dropping the replicas added since.
pub const FORCED_FILE: &str = "forced-new-cluster";

/// Why a store could not be restored or forced into a new cluster.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    /// A restore into a store that already holds something.
    #[error("{path} is not empty; a restore needs an empty data directory")]
    NotEmpty {
        /// The store directory.
        path: PathBuf,
    },
    /// `--force-new-cluster` on a store with no state.
    #[error("{path} holds no Raft state to recover; --force-new-cluster needs the data directory of a surviving replica")]
    NothingToRecover {
        /// The store directory.
        path: PathBuf,
    },
    /// `--force-new-cluster` on a store that was already forced.
    #[error("{path} was already forced into a new cluster ({what}); remove --force-new-cluster, since forcing again would drop the replicas added since (delete {path} only to force once more)")]
    AlreadyForced {
        /// The marker file.
        path: PathBuf,
        /// What it says.
        what: String,
    },
    /// A file could not be written or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The store failed while being rewritten.
    #[error("the store failed: {0}")]
    Storage(#[from] StorageError<u64>),
    /// The state does not encode.
    #[error("the state does not encode: {0}")]
    Encode(#[from] bincode::Error),
}

/// The membership of `members`, all voters.
pub fn voters(members: &BTreeMap<u64, String>) -> Membership<u64, BasicNode> {
    let ids: BTreeSet<u64> = members.keys().copied().collect();
    let nodes: BTreeMap<u64, BasicNode> = members
        .iter()
        .map(|(id, addr)| (*id, BasicNode::new(addr)))
        .collect();
    Membership::new(vec![ids], nodes)
}

/// Makes the empty store directory `dir` begin as the encoded state `data`, applied up to
/// `last_log_id`, with `membership`; `origin` (the backup's checksum) is written to
/// [`RESTORED_FILE`] once the snapshot is durable.
///
/// The snapshot is written (atomically) before sled creates anything, so a crash leaves an
/// empty directory or the whole restored state, and a restart with the same file finds
/// [`RESTORED_FILE`] and goes on from the store instead.
///
/// # Errors
/// [`RecoveryError::NotEmpty`] when `dir` holds anything; [`RecoveryError::Io`] when a file
/// cannot be written.
pub fn restore(
    dir: &Path,
    last_log_id: LogId<u64>,
    membership: Membership<u64, BasicNode>,
    data: Vec<u8>,
    origin: &str,
) -> Result<(), RecoveryError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RecoveryError::Io { path, source }
    };
    if !is_empty(dir).map_err(io(dir))? {
        return Err(RecoveryError::NotEmpty {
            path: dir.to_path_buf(),
        });
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let stored = StoredSnapshot {
        meta: SnapshotMeta {
            last_log_id: Some(last_log_id),
            last_membership: StoredMembership::new(Some(last_log_id), membership),
            snapshot_id: format!("restored-{}-{}", last_log_id.index, data.len()),
        },
        data,
    };
    let snapshot = dir.join(SNAPSHOT_FILE);
    write_atomically(&snapshot, &bincode::serialize(&stored)?).map_err(io(&snapshot))?;
    let marker = dir.join(RESTORED_FILE);
    write_atomically(&marker, format!("{origin}\n").as_bytes()).map_err(io(&marker))?;
    Ok(())
}

/// The checksum the store in `dir` was restored from, if it was restored.
pub fn restored_from(dir: &Path) -> Option<String> {
    std::fs::read_to_string(dir.join(RESTORED_FILE))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Whether `dir` is missing or holds nothing.
///
/// # Errors
/// When it exists but cannot be listed.
pub fn is_empty(dir: &Path) -> std::io::Result<bool> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e),
    }
}

/// What [`force_new_cluster`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forced {
    /// What the store had applied before (its snapshot and committed entries).
    pub applied_before: Option<LogId<u64>>,
    /// The committed id the store had saved.
    pub committed_before: Option<LogId<u64>>,
    /// The last entry of its log.
    pub last_before: Option<LogId<u64>>,
    /// Entries of the log applied now, committed or not.
    pub applied_from_log: usize,
    /// The log id the new cluster starts after.
    pub new_log_id: LogId<u64>,
}

/// Makes an opened store (before Raft starts on it) a one-voter cluster of `id` at `node`:
/// every entry in its log is applied (those past the committed id too: an entry in a
/// replica's log may have been committed by the others, and Raft itself would commit them all
/// were this replica elected), then the state becomes a snapshot at a fresh term with the new
/// membership, the vote moves to that term, and the log behind it is purged.
///
/// Each step leaves a store that opens: the vote comes first (a higher vote alone changes
/// nothing), then the snapshot (which covers the whole log), then the purge.
///
/// # Errors
/// [`RecoveryError::NothingToRecover`] for a store with no log and no snapshot,
/// [`RecoveryError::AlreadyForced`] when it was forced before, or what the store says.
pub async fn force_new_cluster<C, S>(
    log: &LogStore<C>,
    sm: &StateMachine<C, S>,
    id: u64,
    node: BasicNode,
) -> Result<Forced, RecoveryError>
where
    C: StoreTypeConfig,
    C::R: Default,
    S: AppData<C>,
{
    let dir = log.dir();
    let marker = dir.join(FORCED_FILE);
    if let Ok(what) = std::fs::read_to_string(&marker) {
        return Err(RecoveryError::AlreadyForced {
            path: marker,
            what: what.trim().to_string(),
        });
    }
    let (mut log, mut sm) = (log.clone(), sm.clone());
    let (applied_before, mut data) = sm.state().copy();
    let state = log.get_log_state().await?;
    let committed_before = log.read_committed().await?;
    let vote = log.read_vote().await?;
    let Some(last_before) = state.last_log_id.max(applied_before) else {
        return Err(RecoveryError::NothingToRecover {
            path: dir.to_path_buf(),
        });
    };
    let start = applied_before.map_or(0, |a| a.index + 1);
    let entries = log.try_get_log_entries(start..).await?;
    // Only a tail that follows what was applied belongs to this replica's history: indexes
    // one after another, terms never going down (a Raft log's terms only rise). A tail that
    // does not (a crash between a snapshot's install and the truncation of a conflicting
    // tail) is dropped with the rest of the log below.
    let mut applied_from_log = 0;
    let (mut next, mut term_so_far) = (start, applied_before.map_or(0, |a| a.leader_id.term));
    for entry in entries {
        if entry.log_id.index != next || entry.log_id.leader_id.term < term_so_far {
            tracing::warn!(
                at = %entry.log_id,
                "the log's tail does not follow what was applied; it is dropped, not applied"
            );
            break;
        }
        (next, term_so_far) = (next + 1, entry.log_id.leader_id.term);
        if let EntryPayload::Normal(command) = entry.payload {
            data.apply(&entry.log_id, command);
        }
        applied_from_log += 1;
    }
    let term = vote
        .map_or(0, |v| v.leader_id().get_term())
        .max(last_before.leader_id.term)
        + 1;
    // Past every index the store holds, so the purge below leaves nothing behind.
    let last_index = state
        .last_log_id
        .map_or(0, |l| l.index)
        .max(applied_before.map_or(0, |a| a.index));
    let new_log_id = LogId::new(CommittedLeaderId::new(term, id), last_index + 1);
    log.save_vote(&Vote::new(term, id)).await?;
    let meta = SnapshotMeta {
        last_log_id: Some(new_log_id),
        last_membership: StoredMembership::new(
            Some(new_log_id),
            Membership::new(vec![BTreeSet::from([id])], BTreeMap::from([(id, node)])),
        ),
        snapshot_id: format!("forced-{term}-{}", new_log_id.index),
    };
    let bytes = bincode::serialize(&data)?;
    sm.install_snapshot(&meta, Box::new(Cursor::new(bytes)))
        .await?;
    log.purge(new_log_id).await?;
    log.save_committed(Some(new_log_id)).await?;
    log.flush().await.map_err(|source| RecoveryError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let forced = Forced {
        applied_before,
        committed_before,
        last_before: state.last_log_id,
        applied_from_log,
        new_log_id,
    };
    let note = format!(
        "at {new_log_id}; before: applied {applied_before:?}, committed {committed_before:?}, last log entry {:?}",
        state.last_log_id
    );
    write_atomically(&marker, format!("{note}\n").as_bytes()).map_err(|source| {
        RecoveryError::Io {
            path: marker.clone(),
            source,
        }
    })?;
    Ok(forced)
}

#[cfg(test)]
mod tests;
