//! The Raft log, vote and committed id, in the append-only log of [`crate::wal`].

use std::{
    fmt::Debug,
    marker::PhantomData,
    ops::RangeBounds,
    path::Path,
    sync::{mpsc, Arc, Mutex, MutexGuard},
};

use openraft::{
    storage::{LogFlushed, LogState, RaftLogStorage},
    LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote,
};

use crate::{
    wal::{self, Batch, Wal},
    OpenError, SledTypeConfig,
};

/// Work for the sync thread.
enum Job<C: SledTypeConfig> {
    /// openraft's completion callback of an append.
    Raft(LogFlushed<C>),
    /// A caller waiting for everything written so far to be durable.
    Caller(tokio::sync::oneshot::Sender<Result<(), String>>),
    /// Delete the segments a purge left without live entries, after the next sync.
    Collect,
}

/// The log half of the store. Cheap to clone: clones share one log, which is how openraft's
/// log reader and the log writer see the same data.
///
/// Appends are group-committed: [`RaftLogStorage::append`] writes the entries to the newest
/// segment file and returns at once, and a sync thread makes everything written so far durable
/// with one `fdatasync`, then completes every append that was waiting for it. So while one
/// sync runs, openraft keeps appending, and the next sync covers all of those appends at once;
/// no append is reported durable before a sync that started after it was written.
pub struct LogStore<C: SledTypeConfig> {
    wal: Arc<Mutex<Wal>>,
    /// The sync thread's queue. The thread ends when every clone of the store is gone.
    jobs: Arc<Mutex<mpsc::Sender<Job<C>>>>,
    _c: PhantomData<fn() -> C>,
}

impl<C: SledTypeConfig> Clone for LogStore<C> {
    fn clone(&self) -> Self {
        Self {
            wal: self.wal.clone(),
            jobs: self.jobs.clone(),
            _c: PhantomData,
        }
    }
}

/// Syncs the log once for every group of jobs that queued up meanwhile.
fn sync_loop<C: SledTypeConfig>(wal: Arc<Mutex<Wal>>, jobs: mpsc::Receiver<Job<C>>) {
    let mut batch = Vec::new();
    while let Ok(job) = jobs.recv() {
        batch.push(job);
        batch.extend(jobs.try_iter());
        // Every job's writes happened before it was queued, so before this look at which file
        // is the newest; syncing that one covers them all. The vendored openraft relies on
        // that order (vendor/openraft/DLLM-PATCH.md): a vote or truncation made durable here
        // makes every append before it durable too, and callbacks complete in queue order.
        // What may be deleted is decided now, before the sync: only what the purges and
        // truncations written so far made dead, since the sync covers exactly those.
        let collect = batch.iter().any(|job| matches!(job, Job::Collect));
        let (file, failed, dead_below) = {
            let wal = lock(&wal);
            (wal.active_file(), wal.failed(), wal.dead_below())
        };
        let mut result = match failed {
            Some(e) => Err(e),
            None => file.sync_data().map_err(|e| e.to_string()),
        };
        {
            let mut wal = lock(&wal);
            match &result {
                Err(e) => wal.fail(e),
                // A roll may have failed to sync this same file meanwhile; the kernel reports
                // such an error once, so this sync may have said Ok for lost pages.
                Ok(()) => {
                    if let Some(e) = wal.failed() {
                        result = Err(e);
                    }
                }
            }
        }
        if result.is_ok() && collect {
            let (dead, dir) = {
                let mut wal = lock(&wal);
                (wal.take_dead(dead_below), wal.dir().to_path_buf())
            };
            let removed = !dead.is_empty();
            for path in dead {
                match std::fs::remove_file(&path) {
                    Ok(()) => {
                        tracing::debug!(path = %path.display(), "removed a purged log segment")
                    }
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "cannot remove a purged log segment")
                    }
                }
            }
            // Not needed for safety (replay handles a segment that comes back), but keeps the
            // deletions in order on filesystems that would not.
            if removed {
                if let Err(e) = wal::sync_dir(&dir) {
                    tracing::warn!(error = %e, "cannot sync the log directory after removing segments");
                }
            }
        }
        for job in batch.drain(..) {
            match job {
                Job::Raft(callback) => {
                    callback.log_io_completed(result.clone().map_err(std::io::Error::other));
                }
                Job::Caller(done) => {
                    let _ = done.send(result.clone());
                }
                Job::Collect => {}
            }
        }
    }
}

fn lock(wal: &Mutex<Wal>) -> MutexGuard<'_, Wal> {
    wal.lock().unwrap_or_else(|e| e.into_inner())
}

fn stopped() -> std::io::Error {
    std::io::Error::other("the log's sync thread has stopped")
}

impl<C: SledTypeConfig> LogStore<C> {
    /// Opens the log in `dir` (see [`crate::open`], which also brings over a log that an older
    /// version kept in sled).
    pub(crate) fn open(dir: &Path, segment_bytes: u64) -> Result<Self, OpenError> {
        let wal = Arc::new(Mutex::new(Wal::open(dir, segment_bytes)?));
        let (tx, rx) = mpsc::channel();
        let thread_wal = wal.clone();
        std::thread::Builder::new()
            .name("raft-log-sync".into())
            .spawn(move || sync_loop::<C>(thread_wal, rx))
            .map_err(|source| OpenError::Log {
                path: dir.to_path_buf(),
                source,
            })?;
        Ok(Self {
            wal,
            jobs: Arc::new(Mutex::new(tx)),
            _c: PhantomData,
        })
    }

    fn wal(&self) -> MutexGuard<'_, Wal> {
        lock(&self.wal)
    }

    fn send(&self, job: Job<C>) -> Result<(), Job<C>> {
        self.jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(job)
            .map_err(|e| e.0)
    }

    /// The highest log index known committed on this replica.
    pub fn committed_index(&self) -> Option<u64> {
        self.wal().committed().map(|id| id.index)
    }

    /// Makes everything written so far durable, through the same sync thread that completes
    /// openraft's appends.
    ///
    /// # Errors
    /// When the sync fails or failed before.
    pub async fn flush(&self) -> Result<(), std::io::Error> {
        let (done, durable) = tokio::sync::oneshot::channel();
        self.send(Job::Caller(done)).map_err(|_| stopped())?;
        durable
            .await
            .map_err(|_| stopped())?
            .map_err(std::io::Error::other)
    }

    /// Writes `entries` (readable at once, durable at the next sync).
    fn write_entries<I>(&self, entries: I) -> Result<(), std::io::Error>
    where
        I: IntoIterator<Item = C::Entry>,
    {
        // Encoded before taking the lock, so readers wait only for the write itself.
        let mut batch = Batch::default();
        for entry in entries {
            batch.push(entry.log_id, &entry)?;
        }
        if batch.is_empty() {
            return Ok(());
        }
        self.wal().append(&batch)
    }

    /// Writes `entries` and returns once they are on disk, through the same group-commit sync
    /// that completes openraft's appends (so crash tests drive that path).
    ///
    /// # Errors
    /// When an entry does not encode, would leave a hole, or the write or sync fails.
    pub async fn append_durably<I>(&self, entries: I) -> Result<(), std::io::Error>
    where
        I: IntoIterator<Item = C::Entry>,
    {
        self.write_entries(entries)?;
        self.flush().await
    }
}

impl<C: SledTypeConfig> RaftLogReader<C> for LogStore<C> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<C::Entry>, StorageError<u64>> {
        use std::ops::Bound;
        let from = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let to = match range.end_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(0) => return Ok(Vec::new()),
            Bound::Excluded(i) => i - 1,
            Bound::Unbounded => u64::MAX,
        };
        // Only where the entries lie is looked up under the lock; the reads happen after it.
        // Written bytes never change, so a concurrent truncation or purge cannot tear them.
        let runs = self.wal().locate(from, to);
        let mut entries = Vec::new();
        for run in runs {
            run.read(|bytes| {
                entries.push(bincode::deserialize(bytes).map_err(std::io::Error::other)?);
                Ok(())
            })
            .map_err(|e| StorageIOError::read_logs(&e))?;
        }
        Ok(entries)
    }
}

impl<C: SledTypeConfig> RaftLogStorage<C> for LogStore<C> {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, StorageError<u64>> {
        let wal = self.wal();
        Ok(LogState {
            last_purged_log_id: wal.purged(),
            last_log_id: wal.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError<u64>> {
        self.wal()
            .save_vote(vote)
            .map_err(|e| StorageIOError::write_vote(&e))?;
        self.flush()
            .await
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError<u64>> {
        Ok(self.wal().vote())
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<u64>>,
    ) -> Result<(), StorageError<u64>> {
        // Not synced on its own: a committed id lost in a crash only means the tail is
        // re-applied after the leader re-confirms it. The next sync carries it anyway.
        self.wal()
            .save_committed(committed)
            .map_err(|e| StorageIOError::write(&e).into())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, StorageError<u64>> {
        Ok(self.wal().committed())
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
        if let Err(e) = self.write_entries(entries) {
            let storage_error = StorageIOError::write_logs(&e);
            callback.log_io_completed(Err(e));
            return Err(storage_error.into());
        }
        // Completed by the sync thread once a sync that began after this write is done.
        if let Err(Job::Raft(callback)) = self.send(Job::Raft(callback)) {
            callback.log_io_completed(Err(stopped()));
            return Err(StorageIOError::write_logs(&stopped()).into());
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        self.wal()
            .truncate(log_id.index)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        self.flush()
            .await
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        // Readers stop seeing the purged entries at once; the files that hold nothing else are
        // deleted by the sync thread after the purge record is durable.
        self.wal()
            .purge(log_id)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        self.send(Job::Collect)
            .map_err(|_| StorageIOError::write_logs(&stopped()))?;
        Ok(())
    }
}

/// Brings a log that an older version kept in sled (trees `log` and `meta`) over into the
/// segment log at `dir`, once: it is written to a scratch directory, synced and renamed into
/// place, so a crash leaves either no new log (and the migration runs again) or a whole one.
/// Each entry goes through `upgrade` (the application's [`crate::AppData::upgrade_legacy_entry`])
/// on the way. The sled trees are emptied afterwards.
///
/// # Errors
/// When sled cannot be read, a record does not decode, or the new log cannot be written.
pub(crate) fn migrate_from_sled(
    db: &sled::Db,
    dir: &Path,
    upgrade: fn(&[u8]) -> Result<Vec<u8>, String>,
) -> Result<(), OpenError> {
    let tree = |name: &'static str| {
        db.open_tree(name)
            .map_err(|source| OpenError::Read { what: name, source })
    };
    let (log, meta) = (tree("log")?, tree("meta")?);
    let sled_has_log = !(log.is_empty() && meta.is_empty());
    if sled_has_log && !dir.exists() {
        let io_err = |source| OpenError::Log {
            path: dir.to_path_buf(),
            source,
        };
        let scratch = dir.with_extension("migrating");
        if scratch.exists() {
            std::fs::remove_dir_all(&scratch).map_err(io_err)?;
        }
        let mut wal = Wal::open(&scratch, wal::SEGMENT_BYTES)?;
        let get = |key: &'static str| {
            meta.get(key).map_err(|source| OpenError::Read {
                what: "log metadata",
                source,
            })
        };
        let corrupt = |what| move |source| OpenError::Corrupt { what, source };
        if let Some(bytes) = get("vote")? {
            let vote: Vote<u64> = bincode::deserialize(&bytes).map_err(corrupt("vote"))?;
            wal.save_vote(&vote).map_err(io_err)?;
        }
        if let Some(bytes) = get("committed")? {
            let committed: Option<LogId<u64>> =
                bincode::deserialize(&bytes).map_err(corrupt("committed log id"))?;
            wal.save_committed(committed).map_err(io_err)?;
        }
        let mut purged = None;
        if let Some(bytes) = get("last_purged")? {
            let id: Option<LogId<u64>> =
                bincode::deserialize(&bytes).map_err(corrupt("last purged log id"))?;
            if let Some(id) = id {
                wal.purge(id).map_err(io_err)?;
                purged = Some(id.index);
            }
        }
        let mut batch = Batch::default();
        for item in log.iter() {
            let (_, bytes) = item.map_err(|source| OpenError::Read {
                what: "log entry",
                source,
            })?;
            // An entry's encoding starts with its log id.
            let log_id: LogId<u64> = bincode::deserialize(&bytes).map_err(corrupt("log entry"))?;
            if purged.is_some_and(|p| log_id.index <= p) {
                continue; // the old store deleted purged entries in the background
            }
            let bytes = upgrade(&bytes).map_err(|what| OpenError::LogDamaged {
                path: dir.to_path_buf(),
                offset: log_id.index,
                what: format!("log entry {} cannot be upgraded: {what}", log_id.index),
            })?;
            batch.push_encoded(log_id, &bytes).map_err(io_err)?;
            if batch.len_bytes() > 4 << 20 {
                wal.append(&batch).map_err(io_err)?;
                batch = Batch::default();
            }
        }
        wal.append(&batch).map_err(io_err)?;
        wal.sync().map_err(io_err)?;
        drop(wal);
        std::fs::rename(&scratch, dir).map_err(io_err)?;
        if let Some(parent) = dir.parent() {
            wal::sync_dir(parent).map_err(io_err)?;
        }
        tracing::info!(entries = log.len(), dir = %dir.display(), "moved the Raft log out of sled");
    }
    if sled_has_log {
        // Moved (now or by a run that crashed before this point): the old copy goes.
        let clear =
            |t: &sled::Tree, what| t.clear().map_err(|source| OpenError::Read { what, source });
        clear(&log, "log entry")?;
        clear(&meta, "log metadata")?;
        db.flush().map_err(|source| OpenError::Read {
            what: "log metadata",
            source,
        })?;
    }
    Ok(())
}
