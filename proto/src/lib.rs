//! berth's protobuf definitions and the tonic/prost code generated from them.
//!
//! - [`raft`]: the node-to-node Raft transport (`proto/raft.proto`).
//! - [`berth`]: the cluster's gRPC API (`proto/berth.proto`): cluster membership, IPAM,
//!   and the internal node-to-node calls (bootstrap probe, write forwarding, read index).
//!
//! The code is generated at build time by `protox` + `tonic-prost-build`; no system
//! `protoc` is needed.

/// The Raft transport between nodes.
pub mod raft {
    tonic::include_proto!("berth.raft.v1");
}

/// berth's gRPC API.
pub mod berth {
    tonic::include_proto!("berth.v1");
}
