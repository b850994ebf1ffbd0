//! # berth-node: the `berth` binary
//!
//! One binary on every host. Bottom-up:
//!
//! - [`state`]: the replicated domain state — one `Command` enum, deterministic apply
//!   (node registry, IP ledger; apps and placements next).
//! - [`server`]: a running node — Raft (from `berth-raft`), bootstrap, the proposer that
//!   reaches the leader from any node, and the HTTP and gRPC front ends.
//! - [`error`]: API errors, one status and one stable code each.
//! - [`timing`]: host-loss timing (deadline, fencing, heartbeats) and why an IP is
//!   never live twice.
//! - [`tls`]: the cluster CA and mutual TLS between nodes.
//! - [`cli`]: the command line: `berth agent`, `berth dev`, and the client commands
//!   that talk to the HTTP API.
//!
//! See `docs/architecture.md` for the whole picture.

pub mod agent;
pub mod cli;
pub mod error;
pub mod scheduler;
pub mod server;
pub mod state;
pub mod timing;
pub mod tls;
pub use berth_cluster_config::worker_share;
