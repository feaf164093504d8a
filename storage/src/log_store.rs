//! The Raft log, vote, committed id and purge point in sled: entries in tree `log` keyed by
//! big-endian index (so a range scan reads them in order), the rest in tree `meta`.

use std::{
    fmt::Debug,
    marker::PhantomData,
    ops::{Bound, RangeBounds},
    path::PathBuf,
    sync::{Arc, Mutex},
};

use openraft::{
    storage::{LogFlushed, LogState, RaftLogStorage},
    LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote,
};
use serde::Serialize;

use crate::{
    flusher::{Flusher, Job},
    StoreTypeConfig,
};

mod open;

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_PURGED: &[u8] = b"last_purged";

/// The log half of the store. Cheap to clone: clones share one database, which is how
/// openraft's log reader and the log writer see the same data.
///
/// Appends are group-committed: [`RaftLogStorage::append`] inserts the entries into sled (one
/// batch, readable at once) and returns, and the flusher thread makes everything inserted so
/// far durable with one flush, then completes every append that was waiting for it. So while
/// one flush runs, openraft keeps appending, and the next flush covers all of those appends at
/// once; no append is reported durable before a flush that started after it was inserted.
pub struct LogStore<C: StoreTypeConfig> {
    inner: Arc<Inner<C>>,
}

struct Inner<C: StoreTypeConfig> {
    /// First, so that it is dropped (its thread joined) before the trees.
    flusher: Flusher<C>,
    /// The data directory, for error messages.
    dir: PathBuf,
    log: sled::Tree,
    meta: sled::Tree,
    /// The last committed log id saved, for status reporting.
    committed: Mutex<Option<LogId<u64>>>,
    /// The last purged log id: entries at or below it are gone for readers, even while the
    /// flusher is still deleting them.
    purged: Mutex<Option<LogId<u64>>>,
    _c: PhantomData<fn() -> C>,
}

impl<C: StoreTypeConfig> Clone for LogStore<C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

fn key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, std::io::Error> {
    bincode::serialize(value).map_err(std::io::Error::other)
}

fn stopped() -> std::io::Error {
    std::io::Error::other("the log's flusher thread has stopped")
}

fn locked<T>(value: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    value.lock().unwrap_or_else(|e| e.into_inner())
}

impl<C: StoreTypeConfig> LogStore<C> {
    /// The highest log index known committed on this replica.
    pub fn committed_index(&self) -> Option<u64> {
        locked(&self.inner.committed).map(|id| id.index)
    }

    /// The store's directory.
    pub fn dir(&self) -> &std::path::Path {
        &self.inner.dir
    }

    /// Makes everything written so far durable, through the same flusher thread that completes
    /// openraft's appends.
    ///
    /// # Errors
    /// When the flush fails or failed before.
    pub async fn flush(&self) -> Result<(), std::io::Error> {
        let (done, durable) = tokio::sync::oneshot::channel();
        self.inner
            .flusher
            .send(Job::Caller(done))
            .map_err(|_| stopped())?;
        durable
            .await
            .map_err(|_| stopped())?
            .map_err(std::io::Error::other)
    }

    /// Inserts `entries` as one batch (readable at once, durable at the next flush).
    fn insert_entries<I>(&self, entries: I) -> Result<(), std::io::Error>
    where
        I: IntoIterator<Item = C::Entry>,
    {
        let mut batch = sled::Batch::default();
        for entry in entries {
            batch.insert(&key(entry.log_id.index), encode(&entry)?);
        }
        self.inner
            .log
            .apply_batch(batch)
            .map_err(std::io::Error::other)
    }

    /// Writes `entries` and returns once they are on disk, through the same group-commit flush
    /// that completes openraft's appends (so crash tests drive that path).
    ///
    /// # Errors
    /// When an entry does not encode, or the write or flush fails.
    pub async fn append_durably<I>(&self, entries: I) -> Result<(), std::io::Error>
    where
        I: IntoIterator<Item = C::Entry>,
    {
        self.insert_entries(entries)?;
        self.flush().await
    }

    /// How many entries the log tree holds, purged or not.
    #[cfg(test)]
    pub(crate) fn inner_log_len(&self) -> usize {
        self.inner.log.len()
    }

    fn insert_meta<T: Serialize>(&self, key: &[u8], value: &T) -> Result<(), std::io::Error> {
        self.inner
            .meta
            .insert(key, encode(value)?)
            .map(drop)
            .map_err(std::io::Error::other)
    }
}

impl<C: StoreTypeConfig> RaftLogReader<C> for LogStore<C> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<C::Entry>, StorageError<u64>> {
        // Entries at or below the purge point may still be there (the flusher deletes them
        // after the purge returned); they are never returned.
        let floor = locked(&self.inner.purged).map_or(0, |p| p.index + 1);
        let from = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let to = match range.end_bound() {
            Bound::Included(i) => Bound::Included(key(*i)),
            Bound::Excluded(i) => Bound::Excluded(key(*i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        self.inner
            .log
            .range((Bound::Included(key(from.max(floor))), to))
            .values()
            .map(|bytes| {
                let bytes = bytes.map_err(|e| StorageIOError::read_logs(&e))?;
                bincode::deserialize(&bytes).map_err(|e| StorageIOError::read_logs(&e).into())
            })
            .collect()
    }
}

impl<C: StoreTypeConfig> RaftLogStorage<C> for LogStore<C> {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, StorageError<u64>> {
        let purged = *locked(&self.inner.purged);
        let last = self
            .inner
            .log
            .last()
            .map_err(|e| StorageIOError::read_logs(&e))?
            // An entry's encoding starts with its log id.
            .map(|(_, bytes)| bincode::deserialize::<LogId<u64>>(&bytes))
            .transpose()
            .map_err(|e| StorageIOError::read_logs(&e))?;
        // An entry at or below the purge point may not be deleted yet; it does not count.
        let last = last.filter(|l| purged.is_none_or(|p| l.index > p.index));
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last.or(purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError<u64>> {
        self.insert_meta(KEY_VOTE, vote)
            .map_err(|e| StorageIOError::write_vote(&e))?;
        self.flush()
            .await
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError<u64>> {
        let bytes = self
            .inner
            .meta
            .get(KEY_VOTE)
            .map_err(|e| StorageIOError::read_vote(&e))?;
        bytes
            .map(|b| bincode::deserialize(&b))
            .transpose()
            .map_err(|e| StorageIOError::read_vote(&e).into())
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<u64>>,
    ) -> Result<(), StorageError<u64>> {
        // Not flushed on its own: a committed id lost in a crash only means the tail is
        // re-applied after the leader re-confirms it. The next flush carries it anyway.
        self.insert_meta(KEY_COMMITTED, &committed)
            .map_err(|e| StorageIOError::write(&e))?;
        *locked(&self.inner.committed) = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, StorageError<u64>> {
        Ok(*locked(&self.inner.committed))
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<C>,
    ) -> Result<(), StorageError<u64>>
    where
        I: IntoIterator<Item = C::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        if let Err(e) = self.insert_entries(entries) {
            let storage_error = StorageIOError::write_logs(&e);
            callback.log_io_completed(Err(e));
            return Err(storage_error.into());
        }
        // Completed by the flusher once a flush that began after this insert is done.
        if let Err(Job::Raft(callback)) = self.inner.flusher.send(Job::Raft(callback)) {
            callback.log_io_completed(Err(stopped()));
            return Err(StorageIOError::write_logs(&stopped()).into());
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        // Only a follower's unflushed or uncommitted suffix: a few entries.
        let mut batch = sled::Batch::default();
        for k in self.inner.log.range(key(log_id.index)..).keys() {
            batch.remove(k.map_err(|e| StorageIOError::write_logs(&e))?);
        }
        self.inner
            .log
            .apply_batch(batch)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        self.flush()
            .await
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        // openraft awaits this in its core task, so it only records the point (readers skip
        // everything at or below it at once) and leaves deleting thousands of entries to the
        // flusher. The point is written before any entry goes, and sled recovers a prefix of
        // what was written, so a crash in between leaves a store that agrees with itself; open
        // deletes what is left.
        self.insert_meta(KEY_PURGED, &Some(log_id))
            .map_err(|e| StorageIOError::write(&e))?;
        {
            let mut purged = locked(&self.inner.purged);
            *purged = (*purged).max(Some(log_id));
        }
        self.inner
            .flusher
            .send(Job::Purge(log_id.index))
            .map_err(|_| StorageIOError::write_logs(&stopped()))?;
        Ok(())
    }
}
