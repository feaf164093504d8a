//! The dllm wire contract.
//!
//! - [`pb`]: the public API of `node.proto` (package `distributed_llm`): NodeService,
//!   DiscoveryService, TUIService and the additive AdminService.
//! - [`raft`]: internal replica-to-replica traffic of `raft.proto`
//!   (package `distributed_llm.raft`), bincode payloads framed by gRPC.
//! - [`client`]: the client side of the transport, shared by every dllm binary.
//! - [`server`]: the server side: when answers go compressed.
//! - [`metrics`]: the stable metric names of `GetMetrics`/`StreamMetrics` and how a usage
//!   sample renders into them; part of the contract like the messages.
//! - [`view`]: a client's copy of the cluster kept from `StreamUpdates`, whole lists or
//!   deltas.
//! - [`FILE_DESCRIPTOR_SET`]: both files' descriptors, for gRPC server reflection.
//!
//! This crate stays thin: conversion into validated domain types happens in the crates
//! that own those types.

pub mod client;
pub mod metrics;
pub mod server;
pub mod view;

/// Generated code for `node.proto`.
pub mod pb {
    tonic::include_proto!("distributed_llm");
}

/// Generated code for `raft.proto`.
pub mod raft {
    tonic::include_proto!("distributed_llm.raft");
}

/// Encoded `FileDescriptorSet` of every proto file, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("dllm_descriptor");
