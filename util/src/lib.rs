//! Server plumbing that `dllm-control-plane` and `dllm-worker` share, so that each is written
//! once: nothing here knows what a replica or a worker is.
//!
//! - [`clock`]: the wall clock in Unix milliseconds.
//! - [`net`]: binding a listener with an error that names its flag.
//! - [`metrics`]: the Prometheus `/metrics` HTTP listener around a render function.
//! - [`logging`]: the `tracing` subscriber every binary installs.
//! - [`shutdown`]: the one place SIGINT and SIGTERM become a cancelled token.
//! - [`node`]: the NodeService answers that both a replica and a worker give.

pub mod clock;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod node;
pub mod shutdown;
