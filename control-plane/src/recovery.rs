//! Backups and disaster recovery: what `AdminService.SaveSnapshot` writes, and what a replica
//! does at start with `--restore-from` or `--force-new-cluster`, before Raft runs.
//!
//! - **Save**: a linearizable read (ReadIndex), then an O(1) copy of the applied state, which
//!   reflects every write acknowledged before the call; encoded as openraft's snapshots
//!   encode it and wrapped in the checksummed file format of `dllm_storage::backup`.
//! - **Restore** (like `etcdutl snapshot restore`): every founding replica of the new
//!   cluster, started on an empty data directory with the same file and `--initial-cluster`,
//!   begins from a snapshot of the saved state with that membership. The file is read and
//!   checked whole (magic, version, lengths, SHA-256, the state decodes) before anything is
//!   written, so a damaged or foreign file leaves the directory untouched. The restored state
//!   drops the saved cluster id: the new cluster's first leader gives it a new one.
//! - **Force a new cluster** (like etcd's `--force-new-cluster`): a survivor's store becomes
//!   a one-voter cluster of itself that keeps every entry in its log
//!   (`dllm_storage::recovery::force_new_cluster`); the others are added back with
//!   AddReplica.

use std::{collections::BTreeMap, path::PathBuf};

use dllm_storage::{
    backup::{self, BackupFile, BackupHeader},
    recovery,
};
use openraft::{BasicNode, CommittedLeaderId, LogId};
use tracing::{info, warn};

use crate::{
    config::{Config, ConfigError},
    error::ApiError,
    raft_types::{LogStore, StateMachine},
    replica::{Replica, StartError},
    state::ClusterState,
};

/// The recovery flags of `dllm-control-plane`, flattened into [`crate::config::Args`].
#[derive(clap::Args, Debug, Clone, Default)]
pub struct RecoveryArgs {
    /// Start a new cluster holding the state in this snapshot file (`dllm snapshot save`).
    /// Needs an empty data directory and --initial-cluster; give every founding replica the
    /// same file. A restart with the same file starts from the data directory.
    #[arg(long, env = "DLLM_RESTORE_FROM", value_name = "FILE")]
    pub restore_from: Option<PathBuf>,
    /// Disaster recovery after the loss of a quorum: make this surviving replica a cluster
    /// of one voter that keeps its state and log, then add replicas back with AddReplica.
    /// Writes it never received are lost. Remove the flag once it has started.
    #[arg(long, env = "DLLM_FORCE_NEW_CLUSTER", default_value_t = false, num_args = 0..=1,
          default_missing_value = "true", action = clap::ArgAction::Set)]
    pub force_new_cluster: bool,
}

/// What a replica does to its store before Raft starts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Recovery {
    /// Nothing: open the store as it is.
    #[default]
    None,
    /// `--restore-from`.
    RestoreFrom(PathBuf),
    /// `--force-new-cluster`.
    ForceNewCluster,
}

impl RecoveryArgs {
    /// Validates the flags against this replica's id and `--initial-cluster`.
    ///
    /// # Errors
    /// [`ConfigError`] naming the flag: both given, or a restore into a replica that is not
    /// a founding member.
    pub fn resolve(
        self,
        id: u64,
        initial_cluster: &BTreeMap<u64, String>,
    ) -> Result<Recovery, ConfigError> {
        match (self.restore_from, self.force_new_cluster) {
            (Some(_), true) => Err(ConfigError::invalid(
                "force-new-cluster",
                "cannot be combined with --restore-from",
            )),
            (Some(_), false) if !initial_cluster.contains_key(&id) => Err(ConfigError::invalid(
                "restore-from",
                format!("needs --initial-cluster listing this replica ({id}=host:port): the restored cluster's members"),
            )),
            (Some(path), false) => Ok(Recovery::RestoreFrom(path)),
            (None, true) => Ok(Recovery::ForceNewCluster),
            (None, false) => Ok(Recovery::None),
        }
    }
}

/// Most bytes in one `SnapshotChunk`, well under gRPC's 4 MiB message limit.
pub const CHUNK_BYTES: usize = 1024 * 1024;

/// What the file's header counts in `state`: nodes, models, placed layer ranges, revoked
/// tokens.
pub fn counts(state: &ClusterState) -> Vec<(String, u64)> {
    let placements: usize = state.models.values().map(|m| m.ranges().len()).sum();
    vec![
        ("nodes".into(), state.nodes.len() as u64),
        ("models".into(), state.models.len() as u64),
        ("placements".into(), placements as u64),
        ("revoked_tokens".into(), state.revoked_tokens.len() as u64),
    ]
}

/// A backup file of the cluster state as of now: every write acknowledged before the call
/// is in it.
///
/// # Errors
/// `UNAVAILABLE` without a leader or quorum for the read index; `INTERNAL` when the state
/// does not encode.
pub async fn save(replica: &Replica) -> Result<Vec<u8>, ApiError> {
    replica.linearize().await?;
    let (last, state) = replica.local_state().copy();
    let saved_by = replica.id;
    let (bytes, header) = tokio::task::spawn_blocking(move || {
        let data = bincode::serialize(&state)?;
        let header = BackupHeader {
            cluster_id: state.cluster_id.clone(),
            last_index: last.map_or(0, |l| l.index),
            last_term: last.map_or(0, |l| l.leader_id.term),
            saved_by,
            saved_at_ms: dllm_util::clock::now_ms(),
            counts: counts(&state),
        };
        Ok::<_, bincode::Error>((backup::encode(&header, &data), header))
    })
    .await
    .map_err(|e| ApiError::Internal(format!("encoding the snapshot stopped: {e}")))?
    .map_err(|e| ApiError::Internal(format!("the state does not encode: {e}")))?;
    info!(
        index = header.last_index,
        term = header.last_term,
        bytes = bytes.len(),
        counts = ?header.counts,
        "snapshot saved for a backup"
    );
    Ok(bytes)
}

/// Reads the backup file at `path` and decodes the state in it; nothing is written.
///
/// # Errors
/// What is wrong with the file, as a sentence: unreadable, foreign, another format version,
/// truncated, damaged (checksum), or a state this version cannot decode.
pub fn load(path: &std::path::Path) -> Result<(BackupFile, ClusterState), String> {
    let file = backup::read(path).map_err(|e| e.to_string())?;
    let state = bincode::deserialize(&file.data).map_err(|e| {
        format!("the state in it does not decode (saved by an incompatible version?): {e}")
    })?;
    Ok((file, state))
}

/// Carries out `--restore-from`, before the store is opened: checks the file whole, then
/// makes the empty store begin as its state with `--initial-cluster` as the membership.
///
/// # Errors
/// [`StartError::Restore`] naming the file or the directory; the data directory is left as
/// it was.
pub fn restore(config: &Config, path: &std::path::Path) -> Result<(), StartError> {
    let refuse = |reason: String| StartError::Restore {
        path: path.to_path_buf(),
        reason,
    };
    let (file, mut state) = load(path).map_err(refuse)?;
    let store = config.data_dir.join("raft");
    let checksum = file.checksum_hex();
    let empty = recovery::is_empty(&config.data_dir)
        .map_err(|e| refuse(format!("cannot list {}: {e}", config.data_dir.display())))?;
    if !empty {
        if recovery::restored_from(&store).as_deref() == Some(checksum.as_str()) {
            info!(file = %path.display(), "the data directory was restored from this file before; starting from it");
            return Ok(());
        }
        return Err(refuse(format!(
            "the data directory {} is not empty; a restore starts a new cluster on empty data \
             directories (remove it, or start without --restore-from)",
            config.data_dir.display()
        )));
    }
    let original_cluster = state.cluster_id.take();
    let data = bincode::serialize(&state).map_err(|e| refuse(e.to_string()))?;
    // Term 0 (no vote is saved yet) and the saved index, never 0: a replica that called
    // initialize instead holds entry (0, 0) and must not match the restored state's id.
    let at = LogId::new(CommittedLeaderId::new(0, 0), file.header.last_index.max(1));
    recovery::restore(
        &store,
        at,
        recovery::voters(&config.initial_cluster),
        data,
        &checksum,
    )
    .map_err(|e| refuse(e.to_string()))?;
    warn!(
        file = %path.display(),
        sha256 = %checksum,
        saved_index = file.header.last_index,
        saved_by = file.header.saved_by,
        counts = ?file.header.counts,
        from_cluster = original_cluster.as_deref().unwrap_or("-"),
        members = ?config.initial_cluster,
        "restored the data directory from a snapshot file: a new cluster (with a new cluster id) starts from its state"
    );
    Ok(())
}

/// Refuses `--force-new-cluster` on a data directory with no store, before opening it would
/// create one.
///
/// # Errors
/// [`StartError::Recovery`] with [`recovery::RecoveryError::NothingToRecover`].
pub fn check_survivor(config: &Config) -> Result<(), StartError> {
    let store = config.data_dir.join("raft");
    match recovery::is_empty(&store) {
        Ok(false) => Ok(()),
        Ok(true) => Err(recovery::RecoveryError::NothingToRecover { path: store }.into()),
        Err(source) => Err(recovery::RecoveryError::Io {
            path: store,
            source,
        }
        .into()),
    }
}

/// Carries out `--force-new-cluster` on the opened store, before Raft starts on it.
///
/// # Errors
/// [`StartError::Recovery`]: nothing to recover, already forced, or a storage failure.
pub async fn force_new_cluster(
    config: &Config,
    log: &LogStore,
    sm: &StateMachine,
) -> Result<(), StartError> {
    warn!(
        id = config.id,
        data_dir = %config.data_dir.display(),
        "--force-new-cluster: making this replica a cluster of one voter from its own state and log"
    );
    let forced =
        recovery::force_new_cluster(log, sm, config.id, BasicNode::new(&config.advertise)).await?;
    warn!(
        applied_before = ?forced.applied_before.map(|l| l.index),
        committed_before = ?forced.committed_before.map(|l| l.index),
        last_log_before = ?forced.last_before.map(|l| l.index),
        applied_from_log = forced.applied_from_log,
        new_index = forced.new_log_id.index,
        new_term = forced.new_log_id.leader_id.term,
        "--force-new-cluster: done. This replica is the only voter and keeps every entry it \
         held; writes committed by the others that it never received are lost. Add replicas \
         back with `dllm exec member add <id> <host:port>`, and remove --force-new-cluster \
         before the next restart (a second force is refused)"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;
    use dllm_util::layered::try_load_from;

    use super::*;
    use crate::config::Args;

    fn resolve(argv: &[&str]) -> Result<Config, ConfigError> {
        let argv = [
            "dllm-control-plane",
            "--id=1",
            "--listen=127.0.0.1:8080",
            "--data-dir=d",
        ]
        .into_iter()
        .chain(argv.iter().copied());
        try_load_from::<Args, _, _>(Args::command(), argv)
            .expect("parses")
            .resolve()
    }

    /// The flags reach the configuration; a restore needs this replica in
    /// `--initial-cluster`, and the two cannot be combined; each refusal names its flag.
    #[test]
    fn recovery_flags_resolve_and_errors_name_the_flag() {
        assert_eq!(resolve(&[]).expect("valid").recovery, Recovery::None);
        assert_eq!(
            resolve(&["--force-new-cluster"]).expect("valid").recovery,
            Recovery::ForceNewCluster
        );
        let members = "--initial-cluster=1=127.0.0.1:8080,2=127.0.0.1:8081";
        assert_eq!(
            resolve(&["--restore-from=b.snap", members])
                .expect("valid")
                .recovery,
            Recovery::RestoreFrom("b.snap".into())
        );
        let err = resolve(&["--restore-from=b.snap"]).expect_err("no members");
        assert!(err.to_string().starts_with("--restore-from"), "{err}");
        let err =
            resolve(&["--restore-from=b.snap", "--force-new-cluster", members]).expect_err("both");
        assert!(err.to_string().starts_with("--force-new-cluster"), "{err}");
    }
}
