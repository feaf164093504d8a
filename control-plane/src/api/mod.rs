//! The gRPC services a replica serves, one file per service. Each handler validates its
//! request into domain types (`crate::convert`), goes through [`crate::replica::Replica`] for
//! writes and linearizable reads, and maps errors with `From<ApiError> for Status`.

pub(crate) mod admin;
mod commands;
mod discovery;
mod node;
mod raft;
mod streams;
mod tui;

pub use admin::AdminApi;
pub use discovery::DiscoveryApi;
pub use node::NodeApi;
pub use raft::RaftApi;
pub use tui::TuiApi;

/// Unix milliseconds now. Decided by the replica that proposes a command and carried in it.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
