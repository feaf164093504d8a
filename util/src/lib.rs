//! Server plumbing that `dllm-control-plane` and `dllm-worker` share, so that each is written
//! once: nothing here knows what a replica or a worker is.
//!
//! - [`config`]: the typed [`config::ConfigError`] that names the flag, and the parsing helpers
//!   both binaries validate with (host:port, ip:port, durations).
//! - [`layered`]: flags over `DLLM_*` environment over the `--config` TOML file over the
//!   defaults written once in each binary's clap `Args`.
//! - [`clock`]: the wall clock in Unix milliseconds.
//! - [`net`]: binding a listener with an error that names its flag.
//! - [`metrics`]: the `--metrics-listen` HTTP listener (`/metrics` from a Prometheus
//!   registry, `/healthz`, `/readyz`) and helpers for metrics read at scrape time.
//! - [`grpc_metrics`]: the gRPC server metrics (started, handled by code, handling time).
//! - [`logging`]: the `tracing` subscriber every binary installs (`--log-format`).
//! - [`shutdown`]: the one place SIGINT and SIGTERM become a cancelled token.
//! - [`entry`]: how a node's command line ends (a runtime, the listener, serving until a
//!   signal; an error as one line and exit code 1).
//! - [`grpc`]: the status of an over-size request (`RESOURCE_EXHAUSTED`).
//! - [`node`]: the NodeService answers that both a replica and a worker give.

pub mod clock;
pub mod config;
pub mod entry;
pub mod grpc;
pub mod grpc_metrics;
pub mod layered;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod node;
pub mod shutdown;
