//! The dllm control plane: what the replicated bytes mean and how clients reach them.
//!
//! - [`state`]: the cluster state machine (nodes, models) and its commands; plain data,
//!   unit-tested without Raft or gRPC.
//! - [`raft_types`]: the openraft type configuration and the state as openraft's application
//!   data; storage comes from `dllm-storage`.
//! - [`replica`]: one Raft replica and the paths that take writes and linearizable reads to
//!   the leader ([`forward`] holds what crosses between replicas for that), one concern per
//!   file: routing, proposing, group commit, forwarding, heartbeats, leader duties,
//!   membership and [`replica::election`] (pre-vote, a fresh timeout per round).
//! - [`liveness`]: the leader's in-memory failure detector fed by worker heartbeats.
//! - [`placement`]: where layers go (the leader's planner; the state machine re-checks).
//! - [`network`]: Raft traffic to peers over gRPC on reused channels.
//! - [`api`]: the gRPC services; [`convert`] turns wire types into validated domain types and
//!   back; [`error`] maps every failure onto one gRPC status.
//! - [`observability`]: what `--metrics-listen` shows (`/metrics`) and when the replica is
//!   ready (`/readyz`).
//! - [`recovery`]: backups (`SaveSnapshot`), `--restore-from` and `--force-new-cluster`.
//! - [`config`]: the flags, each default written once, validated before start.
//! - [`server`]: transport setup and [`server::run`], which `main` and tests call alike;
//!   [`entry`]: the command line of `dllm-control-plane` and `dllm control-plane`.
//!
//! What a replica shares with the worker (the environment and TOML layers under the flags, the
//! clock, logging, signals, the `/metrics` listener) is in `dllm-util`.

// openraft's error types (ConfigError, RaftError, StorageError) are large by design and are
// what its API returns; boxing them at every call would only move the allocation.
#![allow(clippy::result_large_err)]

pub mod api;
pub mod config;
pub mod convert;
pub mod entry;
pub mod error;
pub mod forward;
pub mod liveness;
pub mod network;
pub mod observability;
pub mod placement;
#[cfg(feature = "planted-bugs")]
pub mod planted;
pub mod raft_types;
pub mod recovery;
pub mod replica;
pub mod server;
pub mod state;
