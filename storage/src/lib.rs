//! How dllm's bytes survive.
//!
//! Each control-plane replica keeps everything openraft must not lose in one directory:
//!
//! - [`LogStore`] implements [`openraft::storage::RaftLogStorage`]: the log entries, the vote,
//!   the committed log id and the last purged log id, as checksummed records in append-only
//!   segment files under `raft-log/` (see `wal.rs` for the format and why it is crash-safe).
//!   Appends are made durable by one `fdatasync` per group of appends before openraft is told
//!   they are; votes and truncations are synced before they return. Earlier versions kept the
//!   log in sled; such a log is moved over once, on open.
//! - [`SledStateMachine`] implements [`openraft::storage::RaftStateMachine`] for any
//!   [`AppData`]: the application's state lives in memory, and snapshots of it are persisted in
//!   their own file ([`SNAPSHOT_FILE`]; sled's tree `snapshot` in older stores is still read).
//!   A restart loads the latest snapshot and openraft re-applies the log tail up to the saved
//!   committed index.
//!
//! The meaning of the state (what a command does) belongs to the caller, through [`AppData`];
//! this crate only knows how to keep it.
//!
//! [`open`] opens or creates the database and checks that everything in it decodes, so a
//! corrupted data directory fails loudly at start instead of being silently reset.

// openraft dictates StorageError as the error type of every storage call; boxing it here
// would only move the allocation.
#![allow(clippy::result_large_err)]

mod error;
mod log_store;
mod state_machine;
mod wal;

use std::{io::Cursor, path::Path};

pub use error::OpenError;
pub use log_store::LogStore;
use openraft::{BasicNode, Entry, RaftTypeConfig};
pub use state_machine::{AppData, SledStateMachine, StateHandle};

/// The openraft type configurations this store can keep: u64 node ids, [`BasicNode`] nodes,
/// plain [`Entry`] log entries and in-memory snapshot buffers.
pub trait SledTypeConfig:
    RaftTypeConfig<NodeId = u64, Node = BasicNode, Entry = Entry<Self>, SnapshotData = Cursor<Vec<u8>>>
{
}

impl<T> SledTypeConfig for T where
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
    /// Size at which the Raft log starts a new segment file.
    pub log_segment_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            cache_capacity_bytes: 32 * 1024 * 1024,
            log_segment_bytes: wal::SEGMENT_BYTES,
        }
    }
}

/// The file (inside the store directory) that holds the latest snapshot. It is written apart
/// from sled (to a temporary file, synced, renamed into place), so writing a large snapshot
/// never holds up the log's flushes, which share sled's one flush path.
pub const SNAPSHOT_FILE: &str = "state-snapshot.bin";

/// The directory (inside the store directory) of the Raft log's segment files.
pub const LOG_DIR: &str = "raft-log";

/// Opens (or creates) the store in `dir` and returns its two halves.
///
/// Everything already in the store is decoded once here (vote, committed id, last log entry,
/// latest snapshot), so a damaged store is reported now, with what was damaged.
///
/// # Errors
/// [`OpenError`] when the directory cannot be opened by sled or what is in it does not decode.
pub fn open<C, S>(
    dir: &Path,
    options: &StoreOptions,
) -> Result<(LogStore<C>, SledStateMachine<C, S>), OpenError>
where
    C: SledTypeConfig,
    S: AppData<C>,
{
    let config = sled::Config::new()
        .path(dir)
        .cache_capacity(options.cache_capacity_bytes);
    // sled may panic instead of returning an error on some kinds of damage; either way the
    // caller gets an error that names the directory.
    let db = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config.open()))
        .map_err(|_| OpenError::Panicked {
            path: dir.to_path_buf(),
        })?
        .map_err(|source| OpenError::Sled {
            path: dir.to_path_buf(),
            source,
        })?;
    let log_dir = dir.join(LOG_DIR);
    log_store::migrate_from_sled(&db, &log_dir, S::upgrade_legacy_entry)?;
    let log = LogStore::open(&log_dir, options.log_segment_bytes)?;
    let sm = SledStateMachine::open(db, dir.join(SNAPSHOT_FILE))?;
    Ok((log, sm))
}

#[cfg(test)]
mod test_support;
