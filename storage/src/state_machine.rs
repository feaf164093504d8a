//! The state machine half: the application's state in memory, its latest snapshot in a file
//! beside sled.

use std::{
    io::{Cursor, Write},
    path::{Path, PathBuf},
    sync::{Arc, RwLock, RwLockReadGuard},
};

use openraft::{
    storage::{RaftStateMachine, Snapshot},
    EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership,
};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::{OpenError, StoreTypeConfig};

/// The application's replicated state: a plain data structure that applies commands
/// deterministically. Everything that varies between replicas (clocks, randomness) must be
/// decided before a command is proposed and carried inside it.
///
/// `Clone` should be cheap (persistent collections): a snapshot copies the state under the
/// lock and encodes the copy while apply goes on.
pub trait AppData<C: StoreTypeConfig>:
    Clone + Default + Serialize + DeserializeOwned + Send + Sync + 'static
{
    /// Applies one committed command and returns what the proposer is answered.
    fn apply(&mut self, log_id: &LogId<u64>, command: C::D) -> C::R;
}

/// What is applied so far, behind a lock shared with readers.
#[derive(Default)]
struct Applied<S> {
    last_applied: Option<LogId<u64>>,
    last_membership: StoredMembership<u64, openraft::BasicNode>,
    data: S,
}

/// A persisted snapshot: its metadata and the encoded [`AppData`].
#[derive(Serialize, Deserialize)]
pub(crate) struct StoredSnapshot {
    pub(crate) meta: SnapshotMeta<u64, openraft::BasicNode>,
    pub(crate) data: Vec<u8>,
}

/// Read access to the applied application state, for serving queries.
pub struct StateHandle<S> {
    applied: Arc<RwLock<Applied<S>>>,
}

impl<S> Clone for StateHandle<S> {
    fn clone(&self) -> Self {
        Self {
            applied: self.applied.clone(),
        }
    }
}

impl<S> StateHandle<S> {
    /// Runs `f` on the current state. Keep `f` short: apply waits while it runs.
    pub fn read<T>(&self, f: impl FnOnce(&S) -> T) -> T {
        f(&self.lock().data)
    }

    /// A copy of the state with the id of the last log entry it reflects, taken together
    /// under the lock (O(1) for persistent collections).
    pub fn copy(&self) -> (Option<LogId<u64>>, S)
    where
        S: Clone,
    {
        let applied = self.lock();
        (applied.last_applied, applied.data.clone())
    }

    /// Index of the last applied log entry, if any.
    pub fn last_applied_index(&self) -> Option<u64> {
        self.lock().last_applied.map(|id| id.index)
    }

    fn lock(&self) -> RwLockReadGuard<'_, Applied<S>> {
        // A panic while holding the lock leaves the state as it was before the panicking
        // apply started writing, because apply only writes after decoding succeeds.
        self.applied.read().unwrap_or_else(|e| e.into_inner())
    }
}

/// The state machine half of the store. Cheap to clone; clones share the state.
pub struct StateMachine<C, S> {
    applied: Arc<RwLock<Applied<S>>>,
    /// Where the latest snapshot is written.
    snapshot_path: Arc<PathBuf>,
    _c: std::marker::PhantomData<fn() -> C>,
}

impl<C, S> Clone for StateMachine<C, S> {
    fn clone(&self) -> Self {
        Self {
            applied: self.applied.clone(),
            snapshot_path: self.snapshot_path.clone(),
            _c: std::marker::PhantomData,
        }
    }
}

impl<C: StoreTypeConfig, S: AppData<C>> StateMachine<C, S> {
    /// Loads the latest snapshot from `snapshot_path`, if there is one.
    pub(crate) fn open(snapshot_path: PathBuf) -> Result<Self, OpenError> {
        let bytes = match std::fs::read(&snapshot_path) {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(OpenError::SnapshotFile {
                    path: snapshot_path,
                    source,
                })
            }
        };
        let mut applied = Applied::<S>::default();
        if let Some(bytes) = bytes {
            let corrupt = |source| OpenError::Corrupt {
                path: snapshot_path.clone(),
                what: "snapshot",
                source,
            };
            let stored: StoredSnapshot = bincode::deserialize(&bytes).map_err(corrupt)?;
            applied.data = bincode::deserialize(&stored.data).map_err(corrupt)?;
            applied.last_applied = stored.meta.last_log_id;
            applied.last_membership = stored.meta.last_membership;
        }
        Ok(Self {
            applied: Arc::new(RwLock::new(applied)),
            snapshot_path: Arc::new(snapshot_path),
            _c: std::marker::PhantomData,
        })
    }

    /// The last log id the latest snapshot covers: what is applied, before openraft applies
    /// anything (called by [`crate::open`]).
    pub(crate) fn snapshot_last_log_id(&self) -> Option<LogId<u64>> {
        self.applied
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .last_applied
    }

    /// A read handle on the applied state.
    pub fn state(&self) -> StateHandle<S> {
        StateHandle {
            applied: self.applied.clone(),
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Applied<S>> {
        self.applied.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes `stored` the latest snapshot, durably: written to a temporary file, synced,
    /// renamed over the old one, and the directory synced, on a blocking thread. A crash at
    /// any point leaves the old snapshot or the new one, never a torn file.
    async fn persist_snapshot(&self, stored: &StoredSnapshot) -> Result<(), StorageError<u64>> {
        let signature = Some(stored.meta.signature());
        let bytes = bincode::serialize(stored)
            .map_err(|e| StorageIOError::write_snapshot(signature.clone(), &e))?;
        let path = self.snapshot_path.clone();
        tokio::task::spawn_blocking(move || write_atomically(&path, &bytes))
            .await
            .map_err(|e| StorageIOError::write_snapshot(signature.clone(), &e))?
            .map_err(|e| StorageIOError::write_snapshot(signature, &e))?;
        Ok(())
    }

    fn load_snapshot(&self) -> Result<Option<StoredSnapshot>, StorageError<u64>> {
        let bytes = match std::fs::read(self.snapshot_path.as_path()) {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(StorageIOError::read_snapshot(None, &e).into()),
        };
        bytes
            .map(|b| bincode::deserialize(&b))
            .transpose()
            .map_err(|e| StorageIOError::read_snapshot(None, &e).into())
    }
}

/// Bytes written between syncs of a snapshot file.
const SNAPSHOT_SYNC_CHUNK: usize = 4 * 1024 * 1024;

/// Replaces `path` with `bytes` so that a crash leaves either the old file or the new one.
///
/// The file is synced every [`SNAPSHOT_SYNC_CHUNK`] bytes rather than once at the end: one
/// sync of tens of MiB of dirty pages would also hold up the log's next fsync (the
/// filesystem's journal commit waits for them), stalling every write for its duration.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut file = std::fs::File::create(&tmp)?;
        for chunk in bytes.chunks(SNAPSHOT_SYNC_CHUNK) {
            file.write_all(chunk)?;
            file.sync_data()?;
        }
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

impl<C: StoreTypeConfig, S: AppData<C>> RaftSnapshotBuilder<C> for StateMachine<C, S> {
    async fn build_snapshot(&mut self) -> Result<Snapshot<C>, StorageError<u64>> {
        let started = std::time::Instant::now();
        // Copy under the lock (cheap), encode the copy on a blocking thread: apply and readers
        // are not held up while tens of MiB are encoded.
        let (last_applied, last_membership, copy) = {
            let applied = self.applied.read().unwrap_or_else(|e| e.into_inner());
            (
                applied.last_applied,
                applied.last_membership.clone(),
                applied.data.clone(),
            )
        };
        let data = tokio::task::spawn_blocking(move || bincode::serialize(&copy))
            .await
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        let snapshot_id = match last_applied {
            Some(id) => format!("{}-{}-{}", id.leader_id, id.index, data.len()),
            None => format!("empty-{}", data.len()),
        };
        let (meta, data) = (
            SnapshotMeta {
                last_log_id: last_applied,
                last_membership,
                snapshot_id,
            },
            data,
        );
        let serialized = started.elapsed();
        let stored = StoredSnapshot { meta, data };
        self.persist_snapshot(&stored).await?;
        tracing::info!(
            bytes = stored.data.len(),
            serialize_ms = serialized.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "snapshot built"
        );
        Ok(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        })
    }
}

impl<C: StoreTypeConfig, S: AppData<C>> RaftStateMachine<C> for StateMachine<C, S>
where
    C::R: Default,
{
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<
        (
            Option<LogId<u64>>,
            StoredMembership<u64, openraft::BasicNode>,
        ),
        StorageError<u64>,
    > {
        let applied = self.applied.read().unwrap_or_else(|e| e.into_inner());
        Ok((applied.last_applied, applied.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<C::R>, StorageError<u64>>
    where
        I: IntoIterator<Item = C::Entry> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        let mut applied = self.write();
        let mut responses = Vec::new();
        for entry in entries {
            applied.last_applied = Some(entry.log_id);
            let response = match entry.payload {
                EntryPayload::Blank => C::R::default(),
                EntryPayload::Normal(command) => applied.data.apply(&entry.log_id, command),
                EntryPayload::Membership(membership) => {
                    applied.last_membership = StoredMembership::new(Some(entry.log_id), membership);
                    C::R::default()
                }
            };
            responses.push(response);
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<u64>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<u64>> {
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: snapshot.into_inner(),
        };
        let data: S = bincode::deserialize(&stored.data)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        // Persist first: once the state below is replaced, openraft may purge the log behind
        // the snapshot, and a restart must find the snapshot that covers it.
        self.persist_snapshot(&stored).await?;
        let mut applied = self.write();
        applied.data = data;
        applied.last_applied = meta.last_log_id;
        applied.last_membership = meta.last_membership.clone();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<C>>, StorageError<u64>> {
        Ok(self.load_snapshot()?.map(|stored| Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        }))
    }
}
