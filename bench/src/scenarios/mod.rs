//! One module per scenario; each returns its results as JSON and prints a table.

pub mod failover;
pub mod heartbeats;
pub mod join_storm;
pub mod memory;
pub mod placement;
pub mod reconnect;
pub mod recovery;
pub mod watch;
pub mod writes;
