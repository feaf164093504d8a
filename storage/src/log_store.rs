//! The Raft log, vote and committed id in sled.

use std::{
    fmt::Debug,
    marker::PhantomData,
    ops::RangeBounds,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, OnceLock,
    },
};

use openraft::{
    storage::{LogFlushed, LogState, RaftLogStorage},
    LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote,
};
use serde::{de::DeserializeOwned, Serialize};

use crate::{OpenError, SledTypeConfig};

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged";

/// Someone waiting for appended entries to reach the disk.
enum Waiter<C: SledTypeConfig> {
    /// openraft's completion callback of an append.
    Raft(LogFlushed<C>),
    /// A caller of [`SledLogStore::append_durably`].
    Caller(tokio::sync::oneshot::Sender<Result<(), String>>),
}

/// The log half of the store. Cheap to clone: clones share the same sled trees, which is how
/// openraft's log reader and the log writer see the same data.
///
/// Appends are group-committed: [`RaftLogStorage::append`] writes the entries to sled and
/// returns at once, and a flusher task makes everything written so far durable with one
/// flush, then completes every append that was waiting for it. So while one fsync runs,
/// openraft keeps appending, and the next fsync covers all of those appends at once; no
/// append is reported durable before a flush that started after it was written.
pub struct SledLogStore<C: SledTypeConfig> {
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
    /// The last committed log id openraft saved, for status reporting.
    committed: Arc<Mutex<Option<LogId<u64>>>>,
    /// The flusher's queue, started on first use (it needs the async runtime).
    flusher: Arc<OnceLock<tokio::sync::mpsc::UnboundedSender<Waiter<C>>>>,
    /// One past the last purged index: entries below it are gone as far as readers are
    /// concerned, even while the background purge is still deleting them.
    purged_next: Arc<AtomicU64>,
    _c: PhantomData<fn() -> C>,
}

impl<C: SledTypeConfig> Clone for SledLogStore<C> {
    fn clone(&self) -> Self {
        Self {
            db: self.db.clone(),
            log: self.log.clone(),
            meta: self.meta.clone(),
            committed: self.committed.clone(),
            flusher: self.flusher.clone(),
            purged_next: self.purged_next.clone(),
            _c: PhantomData,
        }
    }
}

/// Flushes sled once for every group of waiters that queued up meanwhile. Ends when every
/// store clone (every sender) is gone.
async fn flush_loop<C: SledTypeConfig>(
    db: sled::Db,
    mut queue: tokio::sync::mpsc::UnboundedReceiver<Waiter<C>>,
) {
    let mut waiters = Vec::new();
    while queue.recv_many(&mut waiters, 65_536).await > 0 {
        // Every waiter's entries were written before it was queued, so before this flush.
        let result = db.flush_async().await.map(drop).map_err(|e| e.to_string());
        for waiter in waiters.drain(..) {
            match waiter {
                Waiter::Raft(callback) => {
                    callback.log_io_completed(result.clone().map_err(std::io::Error::other));
                }
                Waiter::Caller(done) => {
                    let _ = done.send(result.clone());
                }
            }
        }
    }
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, bincode::Error> {
    bincode::deserialize(bytes)
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, bincode::Error> {
    bincode::serialize(value)
}

impl<C: SledTypeConfig> SledLogStore<C> {
    pub(crate) fn open(db: sled::Db) -> Result<Self, OpenError> {
        let tree = |name: &'static str| {
            db.open_tree(name)
                .map_err(|source| OpenError::Read { what: name, source })
        };
        let store = Self {
            log: tree("log")?,
            meta: tree("meta")?,
            db,
            committed: Arc::default(),
            flusher: Arc::default(),
            purged_next: Arc::default(),
            _c: PhantomData,
        };
        store.check()?;
        // check() has just decoded it, so reading it again cannot fail on content.
        let committed = store
            .read_meta::<Option<LogId<u64>>>(KEY_COMMITTED)
            .ok()
            .flatten()
            .flatten();
        *store.committed.lock().unwrap_or_else(|e| e.into_inner()) = committed;
        let purged = store
            .read_meta::<Option<LogId<u64>>>(KEY_LAST_PURGED)
            .ok()
            .flatten()
            .flatten();
        store
            .purged_next
            .store(purged.map_or(0, |id| id.index + 1), Ordering::Release);
        Ok(store)
    }

    /// Decodes every metadata record and both ends of the log.
    fn check(&self) -> Result<(), OpenError> {
        for (key, what) in [
            (KEY_VOTE, "vote"),
            (KEY_COMMITTED, "committed log id"),
            (KEY_LAST_PURGED, "last purged log id"),
        ] {
            let bytes = self
                .meta
                .get(key)
                .map_err(|source| OpenError::Read { what, source })?;
            if let Some(bytes) = bytes {
                if key == KEY_VOTE {
                    decode::<Vote<u64>>(&bytes)
                        .map_err(|source| OpenError::Corrupt { what, source })?;
                } else {
                    decode::<Option<LogId<u64>>>(&bytes)
                        .map_err(|source| OpenError::Corrupt { what, source })?;
                }
            }
        }
        let what = "log entry";
        for end in [self.log.first(), self.log.last()] {
            if let Some((_, bytes)) = end.map_err(|source| OpenError::Read { what, source })? {
                decode::<C::Entry>(&bytes).map_err(|source| OpenError::Corrupt { what, source })?;
            }
        }
        Ok(())
    }

    fn read_meta<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageIOError<u64>> {
        let bytes = self.meta.get(key).map_err(|e| StorageIOError::read(&e))?;
        bytes
            .map(|b| decode(&b))
            .transpose()
            .map_err(|e| StorageIOError::read(&e))
    }

    /// The highest log index known committed on this replica.
    pub fn committed_index(&self) -> Option<u64> {
        self.committed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map(|id| id.index)
    }

    /// Flushes everything written so far to disk.
    ///
    /// # Errors
    /// When sled cannot flush.
    pub async fn flush(&self) -> Result<(), std::io::Error> {
        self.db
            .flush_async()
            .await
            .map(|_| ())
            .map_err(std::io::Error::other)
    }

    /// The flusher's queue; starts the flusher task on first use.
    fn flusher(&self) -> &tokio::sync::mpsc::UnboundedSender<Waiter<C>> {
        self.flusher.get_or_init(|| {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(flush_loop::<C>(self.db.clone(), rx));
            tx
        })
    }

    /// Writes `entries` to sled (readable at once, durable at the next flush).
    fn write_entries<I>(&self, entries: I) -> Result<(), std::io::Error>
    where
        I: IntoIterator<Item = C::Entry>,
    {
        let mut batch = sled::Batch::default();
        for entry in entries {
            let bytes = encode(&entry).map_err(std::io::Error::other)?;
            batch.insert(&index_key(entry.log_id.index), bytes);
        }
        self.log.apply_batch(batch).map_err(std::io::Error::other)
    }

    /// Writes `entries` and returns once they are on disk, through the same group-commit
    /// flusher that completes openraft's appends (so crash tests drive that path).
    ///
    /// # Errors
    /// When an entry does not encode or sled fails to write or flush.
    pub async fn append_durably<I>(&self, entries: I) -> Result<(), std::io::Error>
    where
        I: IntoIterator<Item = C::Entry>,
    {
        self.write_entries(entries)?;
        let (done, durable) = tokio::sync::oneshot::channel();
        self.flusher()
            .send(Waiter::Caller(done))
            .map_err(|_| std::io::Error::other("the log flusher has stopped"))?;
        durable
            .await
            .map_err(|_| std::io::Error::other("the log flusher has stopped"))?
            .map_err(std::io::Error::other)
    }

    /// Writes `entries` without flushing: the planted bug of the crash checker's own test.
    #[cfg(test)]
    pub(crate) fn append_unflushed<I>(&self, entries: I) -> Result<(), std::io::Error>
    where
        I: IntoIterator<Item = C::Entry>,
    {
        self.write_entries(entries)
    }

    /// Removes every log entry whose index is in `range`, then flushes.
    async fn remove_range(
        &self,
        range: impl RangeBounds<[u8; 8]> + Send + 'static,
    ) -> Result<(), std::io::Error> {
        // sled's calls block; thousands of deletions run on a blocking thread.
        let log = self.log.clone();
        tokio::task::spawn_blocking(move || {
            let mut batch = sled::Batch::default();
            for key in log.range(range).keys() {
                batch.remove(key.map_err(std::io::Error::other)?);
            }
            log.apply_batch(batch).map_err(std::io::Error::other)
        })
        .await
        .map_err(std::io::Error::other)??;
        self.flush().await
    }
}

impl<C: SledTypeConfig> RaftLogReader<C> for SledLogStore<C> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<C::Entry>, StorageError<u64>> {
        use std::ops::Bound;
        // Entries below the purge point may still be on disk (the purge deletes them in the
        // background); they are never returned.
        let floor = self.purged_next.load(Ordering::Acquire);
        let first = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let start = Bound::Included(index_key(first.max(floor)));
        let end = match range.end_bound() {
            Bound::Included(i) => Bound::Included(index_key(*i)),
            Bound::Excluded(i) => Bound::Excluded(index_key(*i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        self.log
            .range((start, end))
            .values()
            .map(|bytes| {
                let bytes = bytes.map_err(|e| StorageIOError::read_logs(&e))?;
                decode::<C::Entry>(&bytes).map_err(|e| StorageIOError::read_logs(&e).into())
            })
            .collect()
    }
}

impl<C: SledTypeConfig> RaftLogStorage<C> for SledLogStore<C> {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, StorageError<u64>> {
        let last_purged_log_id: Option<LogId<u64>> = self.read_meta(KEY_LAST_PURGED)?.flatten();
        let last = self
            .log
            .last()
            .map_err(|e| StorageIOError::read_logs(&e))?
            .map(|(_, bytes)| decode::<C::Entry>(&bytes))
            .transpose()
            .map_err(|e| StorageIOError::read_logs(&e))?
            .map(|entry| entry.log_id);
        // An entry at or below the purge point may not be deleted yet; it does not count.
        let last = last.filter(|l| last_purged_log_id.is_none_or(|p| l.index > p.index));
        Ok(LogState {
            last_purged_log_id,
            last_log_id: last.or(last_purged_log_id),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError<u64>> {
        let bytes = encode(vote).map_err(|e| StorageIOError::write_vote(&e))?;
        self.meta
            .insert(KEY_VOTE, bytes)
            .map_err(|e| StorageIOError::write_vote(&e))?;
        self.flush()
            .await
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError<u64>> {
        Ok(self.read_meta(KEY_VOTE)?)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<u64>>,
    ) -> Result<(), StorageError<u64>> {
        // Not flushed on its own: a committed id that is lost in a crash only means the tail is
        // re-applied after the leader re-confirms it. The next log flush carries it anyway.
        let bytes = encode(&committed).map_err(|e| StorageIOError::write(&e))?;
        self.meta
            .insert(KEY_COMMITTED, bytes)
            .map_err(|e| StorageIOError::write(&e))?;
        *self.committed.lock().unwrap_or_else(|e| e.into_inner()) = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, StorageError<u64>> {
        Ok(self.read_meta(KEY_COMMITTED)?.flatten())
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
        match self.write_entries(entries) {
            Ok(()) => {
                // Completed by the flusher once a flush that began after this write is done.
                if let Err(rejected) = self.flusher().send(Waiter::Raft(callback)) {
                    if let Waiter::Raft(callback) = rejected.0 {
                        callback.log_io_completed(Err(std::io::Error::other(
                            "the log flusher has stopped",
                        )));
                    }
                    return Err(StorageIOError::write_logs(&std::io::Error::other(
                        "the log flusher has stopped",
                    ))
                    .into());
                }
                Ok(())
            }
            Err(e) => {
                let storage_error = StorageIOError::write_logs(&e);
                callback.log_io_completed(Err(e));
                Err(storage_error.into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        self.remove_range(index_key(log_id.index)..)
            .await
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        // openraft awaits this inside its core task, so it only records the purge point;
        // deleting thousands of entries happens in the background. Readers skip everything
        // at or below the point at once. The point is made durable before any entry goes, so
        // a crash in between leaves a store that still agrees with itself (and the next purge
        // deletes whatever is left).
        let bytes = encode(&Some(log_id)).map_err(|e| StorageIOError::write(&e))?;
        self.meta
            .insert(KEY_LAST_PURGED, bytes)
            .map_err(|e| StorageIOError::write(&e))?;
        self.purged_next
            .fetch_max(log_id.index + 1, Ordering::AcqRel);
        let store = self.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let result = match store.flush().await {
                Ok(()) => store.remove_range(..=index_key(log_id.index)).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => tracing::debug!(
                    upto = log_id.index,
                    ms = started.elapsed().as_millis() as u64,
                    "purged the log"
                ),
                Err(e) => {
                    tracing::warn!(upto = log_id.index, error = %e, "purging the log failed; the next purge retries")
                }
            }
        });
        Ok(())
    }
}
