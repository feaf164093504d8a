//! The gRPC services a replica serves, one file per service. Each handler validates its
//! request into domain types (`crate::convert`), goes through [`crate::replica::Replica`] for
//! writes and linearizable reads, and maps errors with `From<ApiError> for Status`.

pub(crate) mod admin;
pub mod commands;
mod discovery;
mod first_members;
mod node;
mod paging;
mod raft;
mod streams;
mod tui;
mod updates;

pub use admin::AdminApi;
pub use discovery::DiscoveryApi;
pub use node::NodeApi;
pub use raft::RaftApi;
pub use tui::TuiApi;
