//! Opening the log: sled's database, the checks that refuse a damaged one, and the marker
//! file that tells a damaged database from a new one.

use std::{
    marker::PhantomData,
    path::Path,
    sync::{Arc, Mutex},
};

use openraft::{LogId, Vote};
use serde::de::DeserializeOwned;

use super::{key, Inner, LogStore, KEY_COMMITTED, KEY_PURGED, KEY_VOTE};
use crate::{
    flusher::{Flusher, Job},
    OpenError, StoreTypeConfig,
};

/// Written into `meta` when the store is created, before anything else.
const KEY_CREATED: &[u8] = b"created";

/// A file beside sled's, written once the store is created (after [`KEY_CREATED`] is durable).
/// sled takes damage it finds in its files for the torn end of its log and recovers what
/// comes before it, which for damage near the start is nothing: it opens as an empty
/// database. This file says the store held something, so that is refused as damage instead of
/// starting a replica with no vote and no log.
pub(crate) const CREATED_FILE: &str = "store-created";

/// Where builds before the sled log kept the Raft log. Such a directory is refused rather than
/// opened as a fresh store.
const SEGMENT_LOG_DIR: &str = "raft-log";

/// How long [`open_when_unlocked`] waits for sled's lock.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens sled's database, waiting up to [`LOCK_WAIT`] for its lock: sled releases it from its
/// own threads, sometimes a moment after the last handle of an earlier open in this process is
/// dropped (a tool or test that opened a stopped replica's store, then restarts it). A process
/// that holds the directory still gets the error, after the wait.
fn open_when_unlocked(config: &sled::Config, dir: &Path) -> Result<sled::Db, OpenError> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        // sled may panic instead of returning an error on some kinds of damage; either way the
        // caller gets an error naming the directory.
        let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config.open()))
            .map_err(|_| OpenError::Panicked {
                path: dir.to_path_buf(),
            })?;
        match opened {
            Ok(db) => return Ok(db),
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(source) => {
                return Err(OpenError::Sled {
                    path: dir.to_path_buf(),
                    source,
                })
            }
        }
    }
}

/// What [`check`] found in an existing store.
struct Checked {
    committed: Option<LogId<u64>>,
    purged: Option<LogId<u64>>,
    /// Whether entries at or below the purge point are still there to delete.
    leftovers: bool,
}

/// Decodes every record of the store and checks that they fit together: each entry under its
/// own index, no hole between the purge point and the last entry.
fn check<C: StoreTypeConfig>(
    dir: &Path,
    log: &sled::Tree,
    meta: &sled::Tree,
) -> Result<Checked, OpenError> {
    let read = |what| {
        move |source| OpenError::Read {
            path: dir.to_path_buf(),
            what,
            source,
        }
    };
    let corrupt = |what| {
        move |source| OpenError::Corrupt {
            path: dir.to_path_buf(),
            what,
            source,
        }
    };
    fn decode_meta<T: DeserializeOwned>(
        meta: &sled::Tree,
        key: &[u8],
        read: impl FnOnce(sled::Error) -> OpenError,
        corrupt: impl FnOnce(bincode::Error) -> OpenError,
    ) -> Result<Option<T>, OpenError> {
        meta.get(key)
            .map_err(read)?
            .map(|bytes| bincode::deserialize(&bytes).map_err(corrupt))
            .transpose()
    }
    decode_meta::<Vote<u64>>(meta, KEY_VOTE, read("vote"), corrupt("vote"))?;
    let committed = decode_meta::<Option<LogId<u64>>>(
        meta,
        KEY_COMMITTED,
        read("committed log id"),
        corrupt("committed log id"),
    )?
    .flatten();
    let purged = decode_meta::<Option<LogId<u64>>>(
        meta,
        KEY_PURGED,
        read("last purged log id"),
        corrupt("last purged log id"),
    )?
    .flatten();
    let inconsistent = |what: String| OpenError::Inconsistent {
        path: dir.to_path_buf(),
        what,
    };
    let mut leftovers = false;
    let mut last: Option<u64> = None;
    for item in log.iter() {
        let (k, bytes) = item.map_err(read("log entry"))?;
        let entry: C::Entry = bincode::deserialize(&bytes).map_err(corrupt("log entry"))?;
        let index = entry.log_id.index;
        if k.as_ref() != key(index) {
            return Err(inconsistent(format!(
                "entry {index} is stored under key {k:?}"
            )));
        }
        if purged.is_some_and(|p| index <= p.index) {
            leftovers = true;
            continue;
        }
        let expected = last.map(|l| l + 1).or(purged.map(|p| p.index + 1));
        if expected.is_some_and(|e| e != index) {
            return Err(inconsistent(format!(
                "entry {index} follows {}: entries are missing",
                expected.map_or(0, |e| e - 1)
            )));
        }
        last = Some(index);
    }
    Ok(Checked {
        committed,
        purged,
        leftovers,
    })
}

/// Creates [`CREATED_FILE`] durably.
fn write_created_file(path: &Path) -> Result<(), OpenError> {
    let io = |source| OpenError::Io {
        path: path.to_path_buf(),
        source,
    };
    std::fs::write(
        path,
        "A dllm Raft store lives here: if sled's files beside this one open empty, they are damaged.\n",
    )
    .map_err(io)?;
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|f| f.sync_all())
            .map_err(io)?;
    }
    Ok(())
}

impl<C: StoreTypeConfig> LogStore<C> {
    /// Opens (or creates) the sled database in `dir`, checks everything in it
    /// (see [`crate::open`]) and starts the flusher thread.
    pub(crate) fn open(dir: &Path, cache_capacity_bytes: u64) -> Result<Self, OpenError> {
        // sled may panic on a damaged page while the store is checked.
        let panicked = |_| OpenError::Panicked {
            path: dir.to_path_buf(),
        };
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_capacity_bytes);
        let db = open_when_unlocked(&config, dir)?;
        let tree = |name: &'static str| {
            db.open_tree(name).map_err(|source| OpenError::Read {
                path: dir.to_path_buf(),
                what: name,
                source,
            })
        };
        let (log, meta) = (tree("log")?, tree("meta")?);
        let created_file = dir.join(CREATED_FILE);
        let inconsistent = |what: String| OpenError::Inconsistent {
            path: dir.to_path_buf(),
            what,
        };
        let read = |what| {
            move |source| OpenError::Read {
                path: dir.to_path_buf(),
                what,
                source,
            }
        };
        if dir.join(SEGMENT_LOG_DIR).exists() {
            return Err(inconsistent(format!(
                "it holds a Raft log in segment files ({SEGMENT_LOG_DIR}/) written by an \
                 earlier development build, which this version does not read; move the \
                 directory away"
            )));
        }
        if meta
            .get(KEY_CREATED)
            .map_err(read("store marker"))?
            .is_none()
        {
            if created_file.exists() {
                return Err(inconsistent(format!(
                    "sled's files hold nothing, but {} says the store was created before: \
                     sled found its files damaged and recovered none of them",
                    created_file.display()
                )));
            }
            meta.insert(KEY_CREATED, &[1u8])
                .map_err(read("store marker"))?;
        }
        let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            check::<C>(dir, &log, &meta)
        }))
        .map_err(panicked)??;
        db.flush().map_err(read("store marker"))?;
        // Syncs what sled wrote, the marker too, before the file that says it is there.
        let flusher = Flusher::start(db, log.clone(), dir)?;
        if !created_file.exists() {
            write_created_file(&created_file)?;
        }
        if let (true, Some(purged)) = (checked.leftovers, checked.purged) {
            // A crash came between a purge and the deletion it queued.
            let _ = flusher.send(Job::Purge(purged.index));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                flusher,
                dir: dir.to_path_buf(),
                log,
                meta,
                committed: Mutex::new(checked.committed),
                purged: Mutex::new(checked.purged),
                _c: PhantomData,
            }),
        })
    }

    /// The saved vote, read at open (after [`check`] decoded it once).
    pub(crate) fn saved_vote(&self) -> Result<Option<Vote<u64>>, OpenError> {
        let bytes = self
            .inner
            .meta
            .get(KEY_VOTE)
            .map_err(|source| OpenError::Read {
                path: self.inner.dir.clone(),
                what: "vote",
                source,
            })?;
        bytes
            .map(|b| bincode::deserialize(&b))
            .transpose()
            .map_err(|source| OpenError::Corrupt {
                path: self.inner.dir.clone(),
                what: "vote",
                source,
            })
    }
}
