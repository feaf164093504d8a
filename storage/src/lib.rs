//! How dllm's bytes survive.
//!
//! Each control-plane replica keeps everything openraft must not lose in one directory:
//!
//! - [`LogStore`] implements [`openraft::storage::RaftLogStorage`]: the log entries, the vote,
//!   the committed log id and the last purged log id, in a sled database (tree `log`: entries
//!   keyed by big-endian index; tree `meta`: the rest). Appends are made durable by one flush
//!   per group of appends before openraft is told they are (`flusher.rs`: sled's flush, then an
//!   `fdatasync` of sled's files, since sled's own flush does not survive power loss); votes
//!   and truncations are flushed before they return.
//! - [`StateMachine`] implements [`openraft::storage::RaftStateMachine`] for any [`AppData`]:
//!   the application's state lives in memory, and snapshots of it are persisted in their own
//!   file ([`SNAPSHOT_FILE`]). A restart loads the latest snapshot and openraft re-applies the
//!   log tail up to the saved committed index.
//!
//! The meaning of the state (what a command does) belongs to the caller, through [`AppData`];
//! this crate only knows how to keep it.
//!
//! [`backup`] is the file format of a saved state (`dllm snapshot save`, `--restore-from`);
//! [`recovery`] restores an empty store from one, or forces a surviving replica's store into
//! a one-voter cluster (`--force-new-cluster`).
//!
//! [`open`] opens or creates the store and checks that everything in it decodes and fits
//! together, so a damaged data directory fails loudly at start instead of being silently reset.

// openraft dictates StorageError as the error type of every storage call; boxing it here
// would only move the allocation.
#![allow(clippy::result_large_err)]

pub mod backup;
mod error;
mod flusher;
mod log_store;
pub mod recovery;
mod state_machine;

use std::{io::Cursor, path::Path};

pub use error::OpenError;
pub use log_store::LogStore;
use openraft::{BasicNode, Entry, RaftTypeConfig};
pub use state_machine::{AppData, StateHandle, StateMachine};

/// The openraft type configurations this store can keep: u64 node ids, [`BasicNode`] nodes,
/// plain [`Entry`] log entries and in-memory snapshot buffers.
pub trait StoreTypeConfig:
    RaftTypeConfig<NodeId = u64, Node = BasicNode, Entry = Entry<Self>, SnapshotData = Cursor<Vec<u8>>>
{
}

impl<T> StoreTypeConfig for T where
    T: RaftTypeConfig<
        NodeId = u64,
        Node = BasicNode,
        Entry = Entry<T>,
        SnapshotData = Cursor<Vec<u8>>,
    >
{
}

/// Tunables of the store.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Upper bound of sled's page cache, in bytes. sled's default (1 GiB) is far more than a
    /// control plane needs; a small cache keeps each replica's memory use modest.
    pub cache_capacity_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            cache_capacity_bytes: 32 * 1024 * 1024,
        }
    }
}

/// The file (inside the store directory) that holds the latest snapshot. It is written apart
/// from sled (to a temporary file, synced, renamed into place), so writing a large snapshot
/// never holds up the log's flushes, which share sled's one flush path.
pub const SNAPSHOT_FILE: &str = "state-snapshot.bin";

/// Opens (or creates) the store in `dir` and returns its two halves.
///
/// Everything already in the store is checked once here (vote, committed id, purge point,
/// that the log's entries decode and have no hole, the latest snapshot), so a damaged store is
/// reported now, naming the file or directory.
///
/// # Errors
/// [`OpenError`] when sled cannot open the directory, or what is in it does not decode or does
/// not fit together.
pub fn open<C, S>(
    dir: &Path,
    options: &StoreOptions,
) -> Result<(LogStore<C>, StateMachine<C, S>), OpenError>
where
    C: StoreTypeConfig,
    S: AppData<C>,
{
    let log = LogStore::open(dir, options.cache_capacity_bytes)?;
    let sm = StateMachine::open(dir.join(SNAPSHOT_FILE))?;
    // A node saves a vote of a term before it takes any entry of that term, so a snapshot of
    // entries of a term newer than the saved vote means sled lost records it had made durable
    // (it reads damage as the torn end of its log and recovers only what comes before).
    if let Some(snapshot) = sm.snapshot_last_log_id() {
        let vote = log.saved_vote()?;
        let vote_term = vote.map_or(0, |v| v.leader_id().get_term());
        if vote_term < snapshot.leader_id.get_term() {
            return Err(OpenError::Inconsistent {
                path: dir.to_path_buf(),
                what: format!(
                    "the snapshot {} holds entries up to {snapshot}, but the saved vote is {}: \
                     sled recovered only part of its files",
                    dir.join(SNAPSHOT_FILE).display(),
                    vote.map_or("none".to_string(), |v| v.to_string()),
                ),
            });
        }
    }
    Ok((log, sm))
}

#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;
