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
    /// sled panicked while opening or reading the directory, which it does on some kinds of
    /// damage.
    #[error("the data directory {path} is damaged: the storage engine failed while reading it")]
    Panicked {
        /// The data directory.
        path: PathBuf,
    },
    /// sled failed while reading the store (it reports damage it finds on the way here too).
    #[error("cannot read the {what} from the data directory {path}: {source}")]
    Read {
        /// The data directory.
        path: PathBuf,
        /// Which record.
        what: &'static str,
        /// What sled said.
        source: sled::Error,
    },
    /// A file or directory of the store cannot be synced or created.
    #[error("cannot sync {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The snapshot file could not be read.
    #[error("cannot read the snapshot file {path}: {source}")]
    SnapshotFile {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A record does not decode: the file is damaged or was written by an incompatible
    /// version.
    #[error("{path} holds an undecodable {what}: {source}")]
    Corrupt {
        /// The data directory or snapshot file.
        path: PathBuf,
        /// Which record.
        what: &'static str,
        /// What the decoder said.
        source: bincode::Error,
    },
    /// The records decode but do not fit together (a hole in the log, an entry under the wrong
    /// key, a log that ends before its committed id): the store lost part of what it held.
    #[error("the Raft log in {path} is damaged: {what}")]
    Inconsistent {
        /// The data directory.
        path: PathBuf,
        /// What does not fit.
        what: String,
    },
}
