//! The Raft log's files: an append-only log of checksummed records in numbered segment files.
//!
//! A Raft log is only ever appended to, cut at its end (a follower's conflicting suffix) or cut
//! at its start (a purge after a snapshot), so it needs no tree, no page cache and no garbage
//! collector: the bytes of an append go to the end of the newest segment with one `pwrite`,
//! and one `fdatasync` makes every append before it durable. An in-memory index maps each log
//! index to where its entry lies, so reads are one `pread` per run of neighbouring entries.
//!
//! # Files
//! `<dir>/<id>.seg` (id zero-padded to 20 digits), each starting with [`MAGIC`] and then
//! records: `len: u32 LE | crc32(len): u32 LE | crc32: u32 LE | kind: u8 | body`, where `len`
//! counts the kind byte and the body and the second CRC covers both. The length has its own
//! check so that a damaged length is reported as damage, not taken for a record torn by a crash.
//! Kinds:
//!
//! - entry: the bincode of an openraft `Entry` (which starts with its `LogId`, so replay decodes
//!   only that prefix);
//! - vote, committed, purged: the bincode of the value, the newest record wins;
//! - truncate: a little-endian u64; entries at and above it are gone.
//!
//! # Why this is crash-safe
//! - An append is acknowledged only after an `fdatasync` of the newest segment that began
//!   after the append's `pwrite`. Before a new segment is created the old one is synced, so a
//!   sync of the newest segment covers everything written before it.
//! - The newest segment's file is allocated ahead of its records (zeros that are not a
//!   record); a closed segment is cut to its last record before the sync that closes it, so
//!   only the newest segment ever ends in such zeros, and replay cuts them off there.
//! - A new segment starts with the current vote, committed id and purge point, and the
//!   directory is synced after it is created, so deleting older segments never loses state.
//! - Segments are deleted only when no live entry lies in them, oldest first, after the purge
//!   record that made them dead is durable; a crash in between leaves a suffix of segments that
//!   replays to the same log.
//! - Segments are deleted only below a limit taken before a sync, so only what purges and
//!   truncations covered by that sync made dead goes; a sync that reports success after the
//!   log failed elsewhere (a roll's sync of the same file) still fails its waiters.
//! - On open, the unsynced tail of the newest segment that a crash tore (a record cut short,
//!   garbage that ends the file, or a record with a never-written, all-zero sector from pages
//!   written back out of order) is cut off and the cut synced; none of it was acknowledged.
//!   Damage anywhere else is an error, never a silent reset. Writing then goes on in a fresh
//!   segment with a whole, synced head, so a head torn by a crash is never the one that holds
//!   the vote when older segments are deleted.

use std::{
    collections::VecDeque,
    fs::{File, OpenOptions},
    io,
    os::{fd::AsRawFd, unix::fs::FileExt},
    path::{Path, PathBuf},
    sync::Arc,
};

use nix::{errno::Errno, fcntl::FallocateFlags};
use openraft::{LogId, Vote};
use serde::Serialize;

use crate::OpenError;

/// The first bytes of every segment file.
pub(crate) const MAGIC: &[u8; 8] = b"dllmlog1";
/// Length, its CRC, the record's CRC and kind in front of every record body.
const HEADER: u64 = 13;
/// A segment is closed once it holds this much; the newest one may grow past it by one batch.
pub(crate) const SEGMENT_BYTES: u64 = 32 << 20;
/// The newest segment's file is extended this much ahead of its records (capped at the segment
/// size), so that an append writes inside the file instead of growing it: an `fdatasync` then
/// has no file size to commit to the filesystem's journal (on ext4 with three replicas on one
/// disk, p50 ~360 -> ~220 us per sync).
const PREALLOCATE_BYTES: u64 = 4 << 20;
/// No record is larger than this; a larger length is damage.
const MAX_RECORD: u32 = 1 << 30;

const KIND_ENTRY: u8 = 1;
const KIND_VOTE: u8 = 2;
const KIND_COMMITTED: u8 = 3;
const KIND_PURGED: u8 = 4;
const KIND_TRUNCATE: u8 = 5;

/// Where one live entry lies.
#[derive(Clone, Copy, Debug)]
struct Loc {
    log_id: LogId<u64>,
    segment: u64,
    /// Offset of the entry's bytes (after the record header) in the segment.
    offset: u64,
    len: u32,
}

struct Segment {
    id: u64,
    path: PathBuf,
    file: Arc<File>,
}

/// Entries encoded outside the log's lock, ready to be written with one call.
#[derive(Default)]
pub(crate) struct Batch {
    buf: Vec<u8>,
    /// Each entry's id, the offset of its bytes in `buf`, and their length.
    items: Vec<(LogId<u64>, usize, u32)>,
}

impl Batch {
    /// Adds `entry`, whose id is `log_id`, encoded with bincode.
    pub(crate) fn push<E: Serialize>(&mut self, log_id: LogId<u64>, entry: &E) -> io::Result<()> {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; HEADER as usize]);
        bincode::serialize_into(&mut self.buf, entry).map_err(io::Error::other)?;
        self.seal(start, log_id)
    }

    /// Adds an entry that is already encoded.
    pub(crate) fn push_encoded(&mut self, log_id: LogId<u64>, bytes: &[u8]) -> io::Result<()> {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; HEADER as usize]);
        self.buf.extend_from_slice(bytes);
        self.seal(start, log_id)
    }

    fn seal(&mut self, start: usize, log_id: LogId<u64>) -> io::Result<()> {
        let body = self.buf.len() - start - HEADER as usize;
        let len = u32::try_from(body + 1)
            .ok()
            .filter(|l| *l <= MAX_RECORD)
            .ok_or_else(|| io::Error::other(format!("a log entry of {body} bytes is too large")))?;
        self.buf[start + 12] = KIND_ENTRY;
        let crc = crc32fast::hash(&self.buf[start + 12..]);
        self.buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
        self.buf[start + 4..start + 8]
            .copy_from_slice(&crc32fast::hash(&len.to_le_bytes()).to_le_bytes());
        self.buf[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
        self.items.push((log_id, start + HEADER as usize, len - 1));
        Ok(())
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// How many bytes the batch will write.
    pub(crate) fn len_bytes(&self) -> usize {
        self.buf.len()
    }
}

fn record(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(HEADER as usize + body.len());
    let len = (body.len() as u32 + 1).to_le_bytes();
    buf.extend_from_slice(&len);
    buf.extend_from_slice(&crc32fast::hash(&len).to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&[kind]);
    crc.update(body);
    buf.extend_from_slice(&crc.finalize().to_le_bytes());
    buf.push(kind);
    buf.extend_from_slice(body);
    buf
}

fn encode<T: Serialize>(value: &T) -> io::Result<Vec<u8>> {
    bincode::serialize(value).map_err(io::Error::other)
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.seg"))
}

/// Makes the directory's entries (files created, renamed or removed in it) durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A run of neighbouring entries in one segment, read with one `pread`.
pub(crate) struct ReadRun {
    file: Arc<File>,
    start: u64,
    /// (offset from `start`, length) of each entry in the run.
    entries: Vec<(usize, usize)>,
    end: u64,
}

impl ReadRun {
    /// Reads the run and hands each entry's bytes to `each`.
    pub(crate) fn read(&self, mut each: impl FnMut(&[u8]) -> io::Result<()>) -> io::Result<()> {
        let mut buf = vec![0; (self.end - self.start) as usize];
        self.file.read_exact_at(&mut buf, self.start)?;
        for &(at, len) in &self.entries {
            each(&buf[at..at + len])?;
        }
        Ok(())
    }
}

/// The log: its segment files and what replaying them gave. Not synchronized; the store keeps
/// it behind a mutex.
pub(crate) struct Wal {
    dir: PathBuf,
    /// Oldest first; the last one is the one written to.
    segments: VecDeque<Segment>,
    /// Where the next record goes in the newest segment.
    end: u64,
    /// Live entries, contiguous indexes, oldest first.
    entries: VecDeque<Loc>,
    vote: Option<Vote<u64>>,
    committed: Option<LogId<u64>>,
    purged: Option<LogId<u64>>,
    segment_bytes: u64,
    /// Where the newest segment's head (magic, vote, committed, purge point) ends.
    head_end: u64,
    /// The newest segment's file length: `end` plus zeros allocated ahead of it.
    allocated: u64,
    /// Whether the filesystem takes `fallocate`; without it files grow with each append.
    preallocate: bool,
    /// Set when a write or sync failed: after a failed `fdatasync` the kernel may have dropped
    /// the dirty pages, so nothing written since the last good sync can be trusted.
    failed: Option<String>,
}

impl Wal {
    /// Opens the log in `dir`, creating it when missing, and replays every segment.
    ///
    /// # Errors
    /// [`OpenError::Log`] when a file cannot be read or created, [`OpenError::LogDamaged`]
    /// when a record does not check out anywhere but at the torn end of the newest segment.
    pub(crate) fn open(dir: &Path, segment_bytes: u64) -> Result<Self, OpenError> {
        let io_err = |source| OpenError::Log {
            path: dir.to_path_buf(),
            source,
        };
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(io_err)?;
            if let Some(parent) = dir.parent() {
                sync_dir(parent).map_err(io_err)?;
            }
        }
        let mut ids = Vec::new();
        for file in std::fs::read_dir(dir).map_err(io_err)? {
            let name = file.map_err(io_err)?.file_name();
            let name = name.to_string_lossy();
            if let Some(id) = name
                .strip_suffix(".seg")
                .and_then(|s| s.parse::<u64>().ok())
            {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        let mut wal = Self {
            dir: dir.to_path_buf(),
            segments: VecDeque::new(),
            end: 0,
            entries: VecDeque::new(),
            vote: None,
            committed: None,
            purged: None,
            segment_bytes,
            head_end: 0,
            allocated: 0,
            preallocate: true,
            failed: None,
        };
        if ids.is_empty() {
            wal.create_segment(1).map_err(io_err)?;
            return Ok(wal);
        }
        for (i, &id) in ids.iter().enumerate() {
            let path = segment_path(dir, id);
            let newest = i + 1 == ids.len();
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|source| OpenError::Log {
                    path: path.clone(),
                    source,
                })?;
            wal.segments.push_back(Segment {
                id,
                path,
                file: Arc::new(file),
            });
            wal.end = wal.replay(newest)?;
        }
        if let Err(what) = wal.check_start() {
            let first = wal.segments.front().expect("a segment").path.clone();
            return Err(OpenError::LogDamaged {
                path: first,
                offset: 0,
                what,
            });
        }
        // Writing goes on in a new segment whose head is whole and durable: the newest one
        // may have been cut inside its head by a crash, and then the vote and the purge point
        // live only in older segments, which a later purge may delete.
        wal.roll().map_err(io_err)?;
        Ok(wal)
    }

    /// Replays the newest segment in `self.segments`; returns where its valid records end.
    fn replay(&mut self, newest: bool) -> Result<u64, OpenError> {
        let segment = self.segments.back().expect("a segment was just added");
        let (id, path, file) = (segment.id, segment.path.clone(), segment.file.clone());
        let bytes = std::fs::read(&path).map_err(|source| OpenError::Log {
            path: path.clone(),
            source,
        })?;
        let damaged = |offset: u64, what: String| OpenError::LogDamaged {
            path: path.clone(),
            offset,
            what,
        };
        let all_zero = bytes.iter().all(|b| *b == 0);
        let torn_magic = (bytes.len() < MAGIC.len() && MAGIC.starts_with(&bytes)) || all_zero;
        if newest && torn_magic {
            // Created, but the crash came before its first bytes were durable.
            file.set_len(0)
                .and_then(|()| file.write_all_at(MAGIC, 0))
                .and_then(|()| file.sync_all())
                .map_err(|source| OpenError::Log {
                    path: path.clone(),
                    source,
                })?;
            return Ok(MAGIC.len() as u64);
        }
        if !bytes.starts_with(MAGIC) {
            return Err(damaged(0, "not a dllm log segment".into()));
        }
        // Where the written bytes of the newest segment end: it is allocated ahead of its
        // records, so its file runs on in zeros that were never written. A record that fails
        // to parse is judged against this end, as if the file stopped there (as it did before
        // space was allocated ahead): otherwise every bad record near the end would have
        // those zeros "in it" or "after it" and pass for a torn one, and damage to records
        // that were synced would be cut off quietly instead of refused.
        let written_end = if newest {
            bytes
                .iter()
                .rposition(|b| *b != 0)
                .map_or(0, |last| last + 1)
        } else {
            bytes.len()
        };
        let mut at = MAGIC.len();
        while at < bytes.len() {
            match parse(&bytes[at..]) {
                Ok((kind, body)) => {
                    let body_at = (at as u64) + HEADER;
                    self.apply(id, kind, body, body_at)
                        .map_err(|what| damaged(at as u64, what))?;
                    at += HEADER as usize + body.len();
                }
                Err(what) => {
                    // Space allocated ahead of the records and never written (or written and
                    // lost with the unsynced tail: unacknowledged either way) is cut quietly.
                    let unwritten = newest && bytes[at..].iter().all(|b| *b == 0);
                    // A crash tears only what was written after the last sync, at the end of
                    // the newest segment: a record that runs past the written end, garbage
                    // that is the last written bytes, or a record with a sector of zeros in it
                    // (pages of the unsynced tail written back out of order leave
                    // never-written sectors reading as zeros, possibly before records that did
                    // reach the disk; all of that tail was unacknowledged).
                    let written = &bytes[..written_end.max(at)];
                    let in_written = match parse(&written[at..]) {
                        Err(what) => what,
                        // Cannot happen (fewer bytes do not mend a record); judge it as bad.
                        Ok(_) => Torn::Bad,
                    };
                    let torn = unwritten
                        || newest
                            && (in_written == Torn::Short
                                || in_written == Torn::BadLast
                                || has_zero_sector(written, at));
                    if !torn {
                        return Err(damaged(at as u64, format!("{what:?} record")));
                    }
                    if !unwritten {
                        tracing::warn!(
                            path = %path.display(),
                            offset = at,
                            dropped_bytes = bytes.len() - at,
                            "cutting off a record torn by a crash at the end of the log"
                        );
                    }
                    // Durable before anything is written after it: once a newer segment
                    // exists, damage here would no longer count as a torn tail.
                    file.set_len(at as u64)
                        .and_then(|()| file.sync_all())
                        .map_err(|source| OpenError::Log {
                            path: path.clone(),
                            source,
                        })?;
                    break;
                }
            }
        }
        Ok(at as u64)
    }

    /// Applies one replayed record.
    fn apply(&mut self, segment: u64, kind: u8, body: &[u8], offset: u64) -> Result<(), String> {
        let decode_err = |e: bincode::Error| e.to_string();
        match kind {
            KIND_ENTRY => {
                // An entry's encoding starts with its log id.
                let log_id: LogId<u64> = bincode::deserialize(body).map_err(decode_err)?;
                self.place(Loc {
                    log_id,
                    segment,
                    offset,
                    len: body.len() as u32,
                })
            }
            KIND_VOTE => {
                self.vote = Some(bincode::deserialize(body).map_err(decode_err)?);
                Ok(())
            }
            KIND_COMMITTED => {
                self.committed = bincode::deserialize(body).map_err(decode_err)?;
                Ok(())
            }
            KIND_PURGED => {
                self.forget_upto(bincode::deserialize(body).map_err(decode_err)?);
                Ok(())
            }
            KIND_TRUNCATE => {
                let index = u64::from_le_bytes(
                    body.try_into()
                        .map_err(|_| "a truncate record is not 8 bytes".to_string())?,
                );
                self.forget_from(index);
                Ok(())
            }
            other => Err(format!("unknown record kind {other}")),
        }
    }

    /// Adds a replayed entry to the index: a repeated index replaces the entries from there
    /// on, an index at or below the purge point is ignored, and a gap after an entry is
    /// refused. The first entry may start past the purge point replayed so far: the segments
    /// before it were deleted because of a purge whose record comes later (the check that no
    /// gap is left is made once everything is replayed, in [`Self::check_start`]).
    fn place(&mut self, loc: Loc) -> Result<(), String> {
        let index = loc.log_id.index;
        if self.purged.is_some_and(|p| index <= p.index) {
            return Ok(());
        }
        if let Some(last) = self.entries.back() {
            if index > last.log_id.index + 1 {
                return Err(format!(
                    "entry {index} would leave a hole after {}",
                    last.log_id.index
                ));
            }
        }
        self.forget_from(index);
        self.entries.push_back(loc);
        Ok(())
    }

    /// After replay: the live entries start right after the purge point.
    fn check_start(&self) -> Result<(), String> {
        match (self.entries.front(), self.purged) {
            (Some(first), Some(p)) if first.log_id.index != p.index + 1 => Err(format!(
                "the log starts at entry {} but is purged only up to {}",
                first.log_id.index, p.index
            )),
            _ => Ok(()),
        }
    }

    /// Whether an entry at `index` may be written next: no gap after the last entry (or after
    /// the purge point when there is none).
    fn check_next(&self, index: u64) -> Result<(), String> {
        let next = match (self.entries.back(), self.purged) {
            (Some(last), _) => Some(last.log_id.index + 1),
            (None, Some(p)) => Some(p.index + 1),
            (None, None) => None,
        };
        match next {
            Some(next) if index > next => Err(format!(
                "entry {index} would leave a hole after {}",
                next - 1
            )),
            _ => Ok(()),
        }
    }

    /// Drops the entries at and above `index`.
    fn forget_from(&mut self, index: u64) {
        while self.entries.back().is_some_and(|l| l.log_id.index >= index) {
            self.entries.pop_back();
        }
    }

    /// Records the purge point and drops the entries at and below it.
    fn forget_upto(&mut self, log_id: LogId<u64>) {
        if self.purged.is_none_or(|p| p.index < log_id.index) {
            self.purged = Some(log_id);
        }
        while self
            .entries
            .front()
            .is_some_and(|l| l.log_id.index <= log_id.index)
        {
            self.entries.pop_front();
        }
    }

    fn active(&self) -> &Segment {
        self.segments.back().expect("the log always has a segment")
    }

    /// The file the next sync must cover (see the module docs for why one is enough).
    pub(crate) fn active_file(&self) -> Arc<File> {
        self.active().file.clone()
    }

    fn check_failed(&self) -> io::Result<()> {
        match &self.failed {
            Some(e) => Err(io::Error::other(format!(
                "the log failed earlier and takes no more writes: {e}"
            ))),
            None => Ok(()),
        }
    }

    /// Remembers a failed sync; every later write and sync fails.
    pub(crate) fn fail(&mut self, error: &str) {
        self.failed.get_or_insert_with(|| error.to_string());
    }

    /// The error of an earlier failed write or sync, if any.
    pub(crate) fn failed(&self) -> Option<String> {
        self.failed.clone()
    }

    /// Starts a new segment: everything in the old one is made durable before the new one
    /// exists. A failure here leaves the log unusable until a restart (which rolls again).
    fn roll(&mut self) -> io::Result<()> {
        // A closed segment ends with its last record: only the newest may hold unwritten
        // space (replay takes zeros anywhere else for damage).
        let file = &self.active().file;
        let sealed = if self.allocated > self.end {
            file.set_len(self.end).and_then(|()| file.sync_all())
        } else {
            file.sync_data()
        };
        if let Err(e) = sealed {
            self.fail(&e.to_string());
            return Err(e);
        }
        let id = self.active().id + 1;
        if let Err(e) = self.create_segment(id) {
            self.fail(&e.to_string());
            return Err(e);
        }
        Ok(())
    }

    /// Creates segment `id` with the current vote, committed id and purge point at its start,
    /// and makes both the file and its directory entry durable.
    fn create_segment(&mut self, id: u64) -> io::Result<()> {
        let path = segment_path(&self.dir, id);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        let mut head = MAGIC.to_vec();
        if let Some(vote) = &self.vote {
            head.extend(record(KIND_VOTE, &encode(vote)?));
        }
        head.extend(record(KIND_COMMITTED, &encode(&self.committed)?));
        if let Some(purged) = &self.purged {
            head.extend(record(KIND_PURGED, &encode(purged)?));
        }
        file.write_all_at(&head, 0)?;
        file.sync_data()?;
        sync_dir(&self.dir)?;
        self.segments.push_back(Segment {
            id,
            path,
            file: Arc::new(file),
        });
        self.end = head.len() as u64;
        self.head_end = self.end;
        self.allocated = self.end;
        Ok(())
    }

    /// Makes the newest segment's file at least `upto` long, allocating up to
    /// [`PREALLOCATE_BYTES`] ahead (not past the segment size) so that the appends after this
    /// one do not change the file's size. A filesystem without `fallocate` just grows the file
    /// with each write.
    fn allocate(&mut self, upto: u64) -> io::Result<()> {
        if upto <= self.allocated || !self.preallocate {
            return Ok(());
        }
        let target = upto.max((self.allocated + PREALLOCATE_BYTES).min(self.segment_bytes));
        let fd = self.active().file.as_raw_fd();
        let len = (target - self.allocated) as nix::libc::off_t;
        match nix::fcntl::fallocate(
            fd,
            FallocateFlags::empty(),
            self.allocated as nix::libc::off_t,
            len,
        ) {
            Ok(()) => {
                self.allocated = target;
                Ok(())
            }
            // A disk too full to allocate ahead may still take this append: write it into
            // the file as it is (the write fails on its own if it does not fit), and try to
            // allocate again with the next one.
            Err(Errno::ENOSPC) if target > upto => Ok(()),
            Err(Errno::EOPNOTSUPP | Errno::ENOSYS) => {
                tracing::info!(dir = %self.dir.display(), "the filesystem cannot preallocate; log files grow with each append");
                self.preallocate = false;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Writes `bytes` at the end of the newest segment, first starting a new segment when the
    /// newest is full. Readable at once; durable after the next sync.
    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.check_failed()?;
        if self.end > self.head_end && self.end + bytes.len() as u64 > self.segment_bytes {
            self.roll()?;
        }
        self.allocate(self.end + bytes.len() as u64)?;
        let file = &self.active().file;
        if let Err(e) = file.write_all_at(bytes, self.end) {
            // Do not leave half a record where the next one goes.
            let _ = file.set_len(self.end);
            self.allocated = self.end;
            return Err(e);
        }
        self.end += bytes.len() as u64;
        self.allocated = self.allocated.max(self.end);
        Ok(())
    }

    /// Appends encoded entries. They must continue the log without a gap; an index already in
    /// the log replaces it and everything after it; entries at or below the purge point are
    /// written but not kept (as on replay).
    pub(crate) fn append(&mut self, batch: &Batch) -> io::Result<()> {
        let Some(&(first, _, _)) = batch.items.first() else {
            return Ok(());
        };
        self.check_next(first.index).map_err(io::Error::other)?;
        if let Some(w) = batch
            .items
            .windows(2)
            .find(|w| w[1].0.index != w[0].0.index + 1)
        {
            return Err(io::Error::other(format!(
                "entries {} and {} in one append are not consecutive",
                w[0].0.index, w[1].0.index
            )));
        }
        self.write(&batch.buf)?;
        let segment = self.active().id;
        let start = self.end - batch.buf.len() as u64;
        for &(log_id, at, len) in &batch.items {
            if self.purged.is_some_and(|p| log_id.index <= p.index) {
                continue;
            }
            self.forget_from(log_id.index);
            self.entries.push_back(Loc {
                log_id,
                segment,
                offset: start + at as u64,
                len,
            });
        }
        Ok(())
    }

    pub(crate) fn save_vote(&mut self, vote: &Vote<u64>) -> io::Result<()> {
        self.write(&record(KIND_VOTE, &encode(vote)?))?;
        self.vote = Some(*vote);
        Ok(())
    }

    pub(crate) fn save_committed(&mut self, committed: Option<LogId<u64>>) -> io::Result<()> {
        self.write(&record(KIND_COMMITTED, &encode(&committed)?))?;
        self.committed = committed;
        Ok(())
    }

    /// Removes the entries at and above `index`.
    pub(crate) fn truncate(&mut self, index: u64) -> io::Result<()> {
        self.write(&record(KIND_TRUNCATE, &index.to_le_bytes()))?;
        self.forget_from(index);
        Ok(())
    }

    /// Removes the entries at and below `log_id`. Their files go in [`Self::take_dead`], once
    /// this record is durable.
    pub(crate) fn purge(&mut self, log_id: LogId<u64>) -> io::Result<()> {
        self.write(&record(KIND_PURGED, &encode(&log_id)?))?;
        self.forget_upto(log_id);
        Ok(())
    }

    /// The id below which no segment holds a live entry now (never the newest segment). Taken
    /// before a sync, so the purge or truncation that made them dead is covered by it.
    pub(crate) fn dead_below(&self) -> u64 {
        self.entries.front().map_or(self.active().id, |l| l.segment)
    }

    /// Takes out the segments, oldest first, with ids below `limit` (from [`Self::dead_below`]
    /// before a sync that has since completed), never the newest.
    pub(crate) fn take_dead(&mut self, limit: u64) -> Vec<PathBuf> {
        let mut dead = Vec::new();
        while self.segments.len() > 1 && self.segments[0].id < limit {
            dead.extend(self.segments.pop_front().map(|s| s.path));
        }
        dead
    }

    /// The log's directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Syncs the newest segment (enough for everything written, see the module docs).
    pub(crate) fn sync(&mut self) -> io::Result<()> {
        self.check_failed()?;
        let result = self.active().file.sync_data();
        if let Err(e) = &result {
            self.fail(&e.to_string());
        }
        result
    }

    pub(crate) fn vote(&self) -> Option<Vote<u64>> {
        self.vote
    }

    pub(crate) fn committed(&self) -> Option<LogId<u64>> {
        self.committed
    }

    pub(crate) fn purged(&self) -> Option<LogId<u64>> {
        self.purged
    }

    pub(crate) fn last_log_id(&self) -> Option<LogId<u64>> {
        self.entries.back().map(|l| l.log_id).or(self.purged)
    }

    /// Where the live entries with indexes in `from..=to` lie, in runs to read.
    pub(crate) fn locate(&self, from: u64, to: u64) -> Vec<ReadRun> {
        let mut runs: Vec<ReadRun> = Vec::new();
        let Some(first) = self.entries.front().map(|l| l.log_id.index) else {
            return runs;
        };
        let from = from.max(first);
        if to < from {
            return runs;
        }
        let skip = (from - first) as usize;
        let take = (to - from).saturating_add(1).min(usize::MAX as u64) as usize;
        let mut seg_at = 0;
        for loc in self.entries.iter().skip(skip).take(take) {
            let end = loc.offset + u64::from(loc.len);
            if let Some(run) = runs.last_mut() {
                let same_file = self.segments[seg_at].id == loc.segment;
                if same_file && run.end + HEADER == loc.offset {
                    run.entries
                        .push(((loc.offset - run.start) as usize, loc.len as usize));
                    run.end = end;
                    continue;
                }
            }
            while self.segments[seg_at].id != loc.segment {
                seg_at += 1;
            }
            runs.push(ReadRun {
                file: self.segments[seg_at].file.clone(),
                start: loc.offset,
                entries: vec![(0, loc.len as usize)],
                end,
            });
        }
        runs
    }

    /// How many segment files the log has (for tests and status).
    #[cfg(test)]
    pub(crate) fn segment_count(&self) -> usize {
        self.segments.len()
    }
}

impl Drop for Wal {
    /// A log closed in order leaves no unwritten space behind (a crash may; replay cuts it).
    fn drop(&mut self) {
        if self.allocated > self.end {
            if let Some(segment) = self.segments.back() {
                let _ = segment.file.set_len(self.end);
            }
        }
    }
}

/// Whether the record starting at `at` (or, when its header is bad, the next 4 KiB) holds a
/// 512-byte sector, aligned in the file, that is all zeros.
fn has_zero_sector(bytes: &[u8], at: usize) -> bool {
    let end = match parse_len(&bytes[at..]) {
        Some(len) => at + 12 + len,
        None => at + 4096,
    }
    .min(bytes.len());
    let first = at / 512 * 512;
    (first..end).step_by(512).any(|sector| {
        let from = sector.max(at);
        let to = (sector + 512).min(end);
        from < to && bytes[from..to].iter().all(|b| *b == 0)
    })
}

/// The record length in a header whose length check holds.
fn parse_len(bytes: &[u8]) -> Option<usize> {
    let len = u32::from_le_bytes(bytes.get(0..4)?.try_into().ok()?);
    let check = u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?);
    (crc32fast::hash(&len.to_le_bytes()) == check && len > 0 && len <= MAX_RECORD)
        .then_some(len as usize)
}

/// Why a record does not parse.
#[derive(Debug, PartialEq, Eq)]
enum Torn {
    /// It runs past the end of the file.
    Short,
    /// Its checksum or length is wrong and it ends exactly at the end of the file.
    BadLast,
    /// Its checksum or length is wrong and more follows it.
    Bad,
}

/// Parses the record at the start of `bytes`: its kind and body.
fn parse(bytes: &[u8]) -> Result<(u8, &[u8]), Torn> {
    if bytes.len() < HEADER as usize {
        return Err(Torn::Short);
    }
    let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let (len, len_crc, crc) = (word(0), word(4), word(8));
    if crc32fast::hash(&bytes[0..4]) != len_crc || len == 0 || len > MAX_RECORD {
        return Err(Torn::Bad);
    }
    let end = 12 + len as usize;
    if bytes.len() < end {
        return Err(Torn::Short);
    }
    if crc32fast::hash(&bytes[12..end]) != crc {
        return Err(if bytes.len() == end {
            Torn::BadLast
        } else {
            Torn::Bad
        });
    }
    Ok((bytes[12], &bytes[13..end]))
}

#[cfg(test)]
mod tests;
