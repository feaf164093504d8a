//! The group commit: one thread makes sled's writes durable, once for every group of waiters
//! that queued while the previous flush ran, and then completes all of them.
//!
//! # Why a flush here survives power loss
//! sled's own `flush` writes its IO buffers to the file `db` with `pwrite` and
//! `sync_file_range(WAIT_BEFORE | WRITE | WAIT_AFTER)`. That puts the bytes in the device's
//! write cache but persists no metadata (a file that grew has its new size and extents only in
//! the filesystem's journal, uncommitted), sends no cache flush to the device, and is not a
//! data-integrity operation at all on copy-on-write filesystems (sled issues 1452 and 1351).
//! sled also writes values too large for its segments to `blobs/<lsn>` without any sync, and
//! writes `conf` without one. So each flush here is sled's flush followed by an `fdatasync` of
//! `db`, an `fdatasync` of every blob file created since the last flush, and an `fsync` of the
//! directories whose entries changed (new blobs, sled's renamed `snap.*` files). `fdatasync`
//! commits the metadata needed to read the data back and flushes the device cache, so once it
//! returns everything sled wrote before it is on stable storage.

use std::{
    collections::BTreeSet,
    ffi::OsString,
    fs::File,
    path::{Path, PathBuf},
    sync::{mpsc, Mutex},
    thread::JoinHandle,
};

use openraft::storage::LogFlushed;

use crate::{OpenError, StoreTypeConfig};

/// Work for the flusher thread.
pub(crate) enum Job<C: StoreTypeConfig> {
    /// openraft's completion callback of an append.
    Raft(LogFlushed<C>),
    /// A caller waiting for everything written so far to be durable.
    Caller(tokio::sync::oneshot::Sender<Result<(), String>>),
    /// Delete the entries at and below this index from the log tree (their purge point is
    /// already written), after the current group is completed.
    Purge(u64),
}

/// The flusher thread and its queue. Dropping it ends the thread and waits for it, so that
/// sled's files are closed (and its lock released) by the time the last store handle is gone.
pub(crate) struct Flusher<C: StoreTypeConfig> {
    jobs: Mutex<Option<mpsc::Sender<Job<C>>>>,
    thread: Option<JoinHandle<()>>,
}

impl<C: StoreTypeConfig> Flusher<C> {
    /// Syncs what sled wrote before the store was opened (sled writes `conf` unsynced, and
    /// creates files and directories) and starts the thread.
    pub(crate) fn start(db: sled::Db, log: sled::Tree, dir: &Path) -> Result<Self, OpenError> {
        let mut files =
            SledFiles::open(dir).map_err(|(path, source)| OpenError::Io { path, source })?;
        files
            .sync_all()
            .map_err(|(path, source)| OpenError::Io { path, source })?;
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("raft-log-flush".into())
            .spawn(move || run::<C>(db, log, files, rx))
            .map_err(|source| OpenError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        Ok(Self {
            jobs: Mutex::new(Some(tx)),
            thread: Some(thread),
        })
    }

    /// Queues `job`; gives it back when the thread has stopped.
    pub(crate) fn send(&self, job: Job<C>) -> Result<(), Job<C>> {
        match &*self.jobs.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(jobs) => jobs.send(job).map_err(|e| e.0),
            None => Err(job),
        }
    }
}

impl<C: StoreTypeConfig> Drop for Flusher<C> {
    fn drop(&mut self) {
        // Closing the queue ends the thread once it has completed what was queued.
        drop(self.jobs.lock().unwrap_or_else(|e| e.into_inner()).take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Flushes once for every group of jobs that queued up meanwhile, until the queue closes.
fn run<C: StoreTypeConfig>(
    db: sled::Db,
    log: sled::Tree,
    mut files: SledFiles,
    jobs: mpsc::Receiver<Job<C>>,
) {
    // After a failed sync the kernel may have dropped dirty pages, so nothing written since
    // the last good flush can be trusted: every later flush fails too.
    let mut failed: Option<String> = None;
    let mut group = Vec::new();
    while let Ok(job) = jobs.recv() {
        group.push(job);
        group.extend(jobs.try_iter());
        // Every job's writes were inserted into sled before it was queued, so before this
        // flush, which persists everything sled took before it (in order: sled recovers a
        // prefix of its log). The vendored openraft relies on that (vendor/openraft/
        // DLLM-PATCH.md): a vote or truncation made durable here makes every append queued
        // before it durable too, and callbacks complete in queue order.
        let result = match &failed {
            Some(e) => Err(e.clone()),
            None => db
                .flush()
                .map_err(|e| format!("sled flush: {e}"))
                .and_then(|_| {
                    files
                        .sync_changed()
                        .map_err(|(path, e)| format!("sync of {}: {e}", path.display()))
                }),
        };
        if let Err(e) = &result {
            tracing::error!(error = %e, "the Raft log cannot be made durable; the store fails from now on");
            failed = Some(e.clone());
        }
        let mut purge = None;
        for job in group.drain(..) {
            match job {
                Job::Raft(callback) => {
                    callback.log_io_completed(result.clone().map_err(std::io::Error::other));
                }
                Job::Caller(done) => {
                    let _ = done.send(result.clone());
                }
                Job::Purge(upto) => purge = purge.max(Some(upto)),
            }
        }
        // After the group is answered: deleting thousands of entries should not hold up the
        // appends in it. The deletions are durable with the next flush (or sled's own).
        if let Some(upto) = purge {
            if let Err(e) = remove_upto(&log, upto) {
                tracing::warn!(upto, error = %e, "deleting purged log entries failed; the next purge retries");
            }
        }
    }
}

/// Deletes every entry at or below `upto` from the log tree, as one batch.
fn remove_upto(log: &sled::Tree, upto: u64) -> sled::Result<()> {
    let mut batch = sled::Batch::default();
    for key in log.range(..=upto.to_be_bytes()).keys() {
        batch.remove(key?);
    }
    log.apply_batch(batch)
}

/// sled's files and what of them was last synced.
struct SledFiles {
    dir: PathBuf,
    db: File,
    blobs: PathBuf,
    /// Names in `dir` as of its last sync.
    dir_names: BTreeSet<OsString>,
    /// Names in `blobs/` as of its last sync (each of those files synced).
    blob_names: BTreeSet<OsString>,
}

type SyncError = (PathBuf, std::io::Error);

fn names(dir: &Path) -> Result<BTreeSet<OsString>, SyncError> {
    let err = |e| (dir.to_path_buf(), e);
    std::fs::read_dir(dir)
        .map_err(err)?
        .map(|entry| entry.map(|e| e.file_name()).map_err(err))
        .collect()
}

fn sync_path(path: &Path) -> Result<(), SyncError> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| (path.to_path_buf(), e))
}

impl SledFiles {
    fn open(dir: &Path) -> Result<Self, SyncError> {
        let db = dir.join("db");
        Ok(Self {
            db: File::open(&db).map_err(|e| (db, e))?,
            dir: dir.to_path_buf(),
            blobs: dir.join("blobs"),
            dir_names: BTreeSet::new(),
            blob_names: BTreeSet::new(),
        })
    }

    /// Syncs every file and directory of the store once (at open).
    fn sync_all(&mut self) -> Result<(), SyncError> {
        sync_path(&self.dir.join("conf"))?;
        self.db.sync_all().map_err(|e| (self.dir.join("db"), e))?;
        self.sync_changed()?;
        if let Some(parent) = self.dir.parent() {
            // The store directory may have just been created.
            sync_path(parent)?;
        }
        Ok(())
    }

    /// Makes what sled's last flush wrote durable: `db`, new blob files, and the directories
    /// whose entries changed since their last sync.
    fn sync_changed(&mut self) -> Result<(), SyncError> {
        let blob_names = names(&self.blobs)?;
        if blob_names != self.blob_names {
            for name in blob_names.difference(&self.blob_names) {
                let path = self.blobs.join(name);
                match File::open(&path).and_then(|f| f.sync_data()) {
                    // Collected by sled meanwhile: nothing points to it any more.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    other => other.map_err(|e| (path, e))?,
                }
            }
            sync_path(&self.blobs)?;
            self.blob_names = blob_names;
        }
        self.db.sync_data().map_err(|e| (self.dir.join("db"), e))?;
        let dir_names = names(&self.dir)?;
        if dir_names != self.dir_names {
            sync_path(&self.dir)?;
            self.dir_names = dir_names;
        }
        Ok(())
    }
}
