//! Errors of opening a store.

use std::path::PathBuf;

/// Why a store could not be opened. Each variant says what is wrong and where, so an operator
/// can decide between restoring the directory and replacing the replica.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// sled refused to open the directory (permissions, damaged files, another process).
    #[error("cannot open the data directory {path}: {source}")]
    Sled {
        /// The data directory.
        path: PathBuf,
        /// What sled said.
        source: sled::Error,
    },
    /// sled panicked while opening the directory, which it does on some kinds of damage.
    #[error("the data directory {path} is damaged: the storage engine failed while opening it")]
    Panicked {
        /// The data directory.
        path: PathBuf,
    },
    /// sled failed while reading the store.
    #[error("cannot read {what} from the data directory: {source}")]
    Read {
        /// Which record.
        what: &'static str,
        /// What sled said.
        source: sled::Error,
    },
    /// The snapshot file could not be read.
    #[error("cannot read the snapshot file {path}: {source}")]
    SnapshotFile {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A record in the store does not decode: the directory is damaged or was written by an
    /// incompatible version.
    #[error("the data directory holds an undecodable {what}: {source}")]
    Corrupt {
        /// Which record.
        what: &'static str,
        /// What the decoder said.
        source: bincode::Error,
    },
    /// A file of the Raft log cannot be read, created or written.
    #[error("cannot use the Raft log file {path}: {source}")]
    Log {
        /// The file or directory.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A record of the Raft log does not check out, and not where a crash could have torn it
    /// (the end of the newest segment).
    #[error("the Raft log file {path} is damaged at byte {offset}: {what}")]
    LogDamaged {
        /// The segment file.
        path: PathBuf,
        /// Where the bad record starts.
        offset: u64,
        /// What is wrong with it.
        what: String,
    },
}
