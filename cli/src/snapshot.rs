//! `dllm snapshot save FILE`: a backup of the whole cluster state (AdminService.SaveSnapshot,
//! admin only), checked and written durably; `dllm snapshot status FILE`: checks a file
//! offline and says what it holds. `dllm-control-plane --restore-from FILE` starts a new
//! cluster from one.

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use anyhow::Context;
use dllm_proto::pb;
use dllm_storage::backup::{self, BackupFile};
use serde_json::json;

use crate::{client::Cluster, commands::Output};

/// `dllm snapshot` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum SnapshotCmd {
    /// Save the cluster state as of now (every acknowledged write is in it) to FILE.
    Save {
        /// Where to write it (replaced if it exists).
        file: PathBuf,
    },
    /// Check FILE (magic, version, lengths, SHA-256) and print what it holds.
    Status {
        /// The snapshot file.
        file: PathBuf,
    },
}

/// Carries out `cmd`; returns what to print.
///
/// # Errors
/// When no endpoint answers, the answer does not check out, the file cannot be written, or
/// (status) the file is damaged or foreign.
pub async fn run(
    cmd: SnapshotCmd,
    cluster: impl FnOnce() -> anyhow::Result<Cluster>,
    output: Output,
) -> anyhow::Result<String> {
    match cmd {
        SnapshotCmd::Save { file } => {
            let cluster = cluster()?;
            let bytes = cluster
                .first_answer(|mut c| async move {
                    let mut stream = c
                        .admin
                        .save_snapshot(pb::SaveSnapshotRequest {})
                        .await?
                        .into_inner();
                    let mut bytes = Vec::new();
                    while let Some(chunk) = stream.message().await? {
                        bytes.extend_from_slice(&chunk.data);
                    }
                    Ok(bytes)
                })
                .await?;
            let decoded = backup::decode(&bytes)
                .context("the snapshot the cluster sent does not check out; nothing written")?;
            write_durably(&file, &bytes).with_context(|| format!("writing {}", file.display()))?;
            Ok(summary("saved", &file, &decoded, bytes.len(), output))
        }
        SnapshotCmd::Status { file } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let decoded =
                backup::decode(&bytes).with_context(|| format!("{} is refused", file.display()))?;
            Ok(summary("verified", &file, &decoded, bytes.len(), output))
        }
    }
}

/// Writes `bytes` to `path` so that a crash leaves the old file or the whole new one: a
/// temporary file beside it, synced, renamed over it, and the directory synced.
fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".part");
    let tmp = PathBuf::from(tmp);
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)?.sync_all()
}

/// What a file holds, for people or as JSON.
fn summary(verb: &str, path: &Path, file: &BackupFile, len: usize, output: Output) -> String {
    let h = &file.header;
    match output {
        Output::Json => {
            let counts: serde_json::Map<String, serde_json::Value> = h
                .counts
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect();
            format!(
                "{}\n",
                json!({
                    "file": path.display().to_string(), "index": h.last_index, "term": h.last_term,
                    "cluster_id": h.cluster_id, "saved_by": h.saved_by, "saved_at_ms": h.saved_at_ms,
                    "counts": counts, "bytes": len, "sha256": file.checksum_hex(),
                })
            )
        }
        Output::Table => {
            let counts: Vec<String> = h.counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
            format!(
                "{verb} {}: index {}, term {}, {}, {len} bytes\nsha256 {}\ncluster {}, saved by replica {} at {} (Unix ms)\n",
                path.display(),
                h.last_index,
                h.last_term,
                counts.join(", "),
                file.checksum_hex(),
                h.cluster_id.as_deref().unwrap_or("-"),
                h.saved_by,
                h.saved_at_ms,
            )
        }
    }
}
