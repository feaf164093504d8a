//! The backup file: a snapshot of the application state written by `dllm snapshot save` and
//! read by `--restore-from`, checksummed, so that a damaged or foreign file is refused whole
//! instead of half-loaded.
//!
//! The state inside is the same bincode encoding openraft's snapshots carry (the `data` of a
//! [`crate::StateMachine`] snapshot); the file wraps it:
//!
//! | offset | bytes | what |
//! | --- | --- | --- |
//! | 0 | 8 | magic `DLLMSNAP` |
//! | 8 | 4 | format version, little-endian u32 ([`FORMAT_VERSION`]) |
//! | 12 | 4 | header length H, little-endian u32 |
//! | 16 | H | [`BackupHeader`], bincode |
//! | 16+H | 8 | state length D, little-endian u64 |
//! | 24+H | D | the state, bincode (as in a Raft snapshot) |
//! | 24+H+D | 32 | SHA-256 of every byte before it |
//!
//! Lengths are checked against the file's size before the checksum, and the checksum before
//! anything is decoded.

use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The first eight bytes of every backup file.
pub const MAGIC: &[u8; 8] = b"DLLMSNAP";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Bytes of the checksum at the end.
const CHECKSUM_LEN: usize = 32;
/// Magic, version and header length.
const PREFIX_LEN: usize = 16;

/// What a backup file says about the state it holds, readable without decoding the state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupHeader {
    /// The id of the cluster the state was saved from, when it had one.
    pub cluster_id: Option<String>,
    /// Index of the last log entry the state reflects.
    pub last_index: u64,
    /// Term of that entry.
    pub last_term: u64,
    /// The replica that saved it.
    pub saved_by: u64,
    /// When it was saved, Unix milliseconds.
    pub saved_at_ms: i64,
    /// What the state holds, by kind (`nodes`, `models`, `placements`), for people.
    pub counts: Vec<(String, u64)>,
}

/// A decoded, verified backup file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupFile {
    /// Its header.
    pub header: BackupHeader,
    /// The encoded state.
    pub data: Vec<u8>,
    /// The SHA-256 that closes the file (verified).
    pub checksum: [u8; CHECKSUM_LEN],
}

impl BackupFile {
    /// The checksum in hex, as `dllm snapshot` prints it.
    pub fn checksum_hex(&self) -> String {
        hex(&self.checksum)
    }
}

/// Why a backup file was refused. Nothing of a refused file is used.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// It does not start with [`MAGIC`]: not a dllm snapshot file.
    #[error(
        "not a dllm snapshot file (it does not start with {:?})",
        String::from_utf8_lossy(MAGIC)
    )]
    Foreign,
    /// A format version this build does not read.
    #[error("snapshot file format version {found} is not supported (this build reads version {FORMAT_VERSION})")]
    Version {
        /// The version in the file.
        found: u32,
    },
    /// The file ends before its lengths say it should: cut short.
    #[error("the file is truncated: {len} bytes, but its lengths say {expected}")]
    Truncated {
        /// Its size.
        len: u64,
        /// The size its lengths give (at least).
        expected: u64,
    },
    /// Bytes after the checksum.
    #[error("the file is damaged: {extra} bytes follow its checksum")]
    Trailing {
        /// How many.
        extra: u64,
    },
    /// The content does not match its checksum.
    #[error("the file is damaged: its SHA-256 is {actual}, but it says {expected}")]
    Checksum {
        /// What the file says.
        expected: String,
        /// What its bytes give.
        actual: String,
    },
    /// The header does not decode although the checksum matches (a bug in the writer).
    #[error("the file's header does not decode: {0}")]
    Header(bincode::Error),
}

/// Encodes `header` and the encoded state `data` as a backup file.
///
/// # Panics
/// Never: a header always encodes, and one over 4 GiB is not possible with the counts it holds.
pub fn encode(header: &BackupHeader, data: &[u8]) -> Vec<u8> {
    let header_bytes = bincode::serialize(header).expect("a header always encodes");
    let header_len = u32::try_from(header_bytes.len()).expect("a header under 4 GiB");
    let mut out =
        Vec::with_capacity(PREFIX_LEN + header_bytes.len() + 8 + data.len() + CHECKSUM_LEN);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&header_len.to_le_bytes());
    out.extend_from_slice(&header_bytes);
    out.extend_from_slice(&(data.len() as u64).to_le_bytes());
    out.extend_from_slice(data);
    let checksum = Sha256::digest(&out);
    out.extend_from_slice(&checksum);
    out
}

/// Checks and decodes a backup file: magic, version, lengths, checksum, header, in that
/// order.
///
/// # Errors
/// [`BackupError`] saying which check failed.
pub fn decode(bytes: &[u8]) -> Result<BackupFile, BackupError> {
    let len = bytes.len() as u64;
    let truncated = |expected: u64| BackupError::Truncated { len, expected };
    let magic_len = bytes.len().min(MAGIC.len());
    if bytes[..magic_len] != MAGIC[..magic_len] {
        return Err(BackupError::Foreign);
    }
    if bytes.len() < PREFIX_LEN {
        return Err(truncated(PREFIX_LEN as u64));
    }
    let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let version = word(8);
    if version != FORMAT_VERSION {
        return Err(BackupError::Version { found: version });
    }
    let header_end = PREFIX_LEN as u64 + u64::from(word(12));
    let data_start = header_end + 8;
    if len < data_start {
        return Err(truncated(data_start + CHECKSUM_LEN as u64));
    }
    let (header_end, data_start) = (header_end as usize, data_start as usize);
    let data_len = u64::from_le_bytes(bytes[header_end..data_start].try_into().expect("8 bytes"));
    let expected = (data_start as u64)
        .checked_add(data_len)
        .and_then(|n| n.checked_add(CHECKSUM_LEN as u64))
        .ok_or(truncated(u64::MAX))?;
    if len < expected {
        return Err(truncated(expected));
    }
    if len > expected {
        return Err(BackupError::Trailing {
            extra: len - expected,
        });
    }
    let body_end = bytes.len() - CHECKSUM_LEN;
    let actual = Sha256::digest(&bytes[..body_end]);
    let checksum: [u8; CHECKSUM_LEN] = bytes[body_end..].try_into().expect("32 bytes");
    if actual.as_slice() != checksum {
        return Err(BackupError::Checksum {
            expected: hex(&checksum),
            actual: hex(&actual),
        });
    }
    let header =
        bincode::deserialize(&bytes[PREFIX_LEN..header_end]).map_err(BackupError::Header)?;
    Ok(BackupFile {
        header,
        data: bytes[data_start..body_end].to_vec(),
        checksum,
    })
}

/// Reads and decodes the backup file at `path`.
///
/// # Errors
/// [`BackupError::Read`] when it cannot be read, otherwise as [`decode`].
pub fn read(path: &Path) -> Result<BackupFile, BackupError> {
    let bytes = std::fs::read(path).map_err(|source| BackupError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    decode(&bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests;
