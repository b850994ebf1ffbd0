//! # berth-raft: openraft glue, generic over the state machine it replicates
//!
//! This crate turns openraft into a replicated-state-machine library for berth's node
//! crate. From the bottom up:
//!
//! - [`kv`]: durable ordered key-value storage behind one small trait — ordered keys,
//!   atomic batch, durable commit — with two real backends (redb, the default; sled)
//!   and an in-memory twin for tests. Snapshots live there.
//! - [`log_disk`] and [`wal`]: where the Raft log lands — berth's append-only log
//!   ([`wal::Wal`], the default: CRC-chained frames in preallocated segments, one
//!   `pwrite` and one `fdatasync` per group) or one key per entry in a
//!   [`kv::KvStore`] ([`log_disk::KvLog`], with sled and in memory).
//! - [`log_store`]: openraft's log storage (entries, vote, commit pointer) over a
//!   [`log_disk::LogDisk`], written by one group-committing writer thread.
//! - [`state_machine`]: the three-method trait an application implements
//!   (apply / snapshot / restore), with its determinism contract.
//! - [`sm_store`]: openraft's state-machine storage for any [`StateMachine`]: the state
//!   in memory, snapshots persisted atomically; plus the read handle the application
//!   uses ([`StateHandle`]).
//! - [`network`] and [`service`]: the Raft transport over tonic/gRPC, client and server,
//!   with channel reuse ([`connections`]) and openraft's error classes; replication
//!   itself runs on [`link`]s — framed TCP (or TLS) connections on the same port —
//!   with gRPC as the fallback for peers that do not speak them.
//! - [`type_config`]: `TypeConfig<SM>` and the `typ` aliases.
//! - [`stages`]: opt-in timestamps of the steps on a write's path, across processes
//!   (`BERTH_STAGES`, read by `berth-bench ipam --stages`).
//!
//! ## Invariants
//!
//! - A storage error is fatal: openraft stops the node (field notes; openraft's storage
//!   contract). Nothing here retries a failed write.
//! - `append` reports its entries flushed only once the durable commit that holds
//!   them returned ([`log_store`]: one writer thread, group commit); the vote, a
//!   truncation and a purge are durable before their calls return. The commit pointer
//!   is written lazily, which is safe only with openraft's leader restore off.
//! - Apply is deterministic and runs in log order; snapshot meta and data are written
//!   in one atomic batch.
//!
//! ## Caveats / not done
//!
//! - Snapshots are built and sent whole (in memory, streamed in 1 MiB chunks). Fine for
//!   berth's state sizes (tens of MB at a million instances); a streaming snapshot
//!   format would be needed beyond that.
//! - The Raft transport assumes every node runs the same berth version (bincode inside
//!   protobuf envelopes; see `proto/raft.proto`).

pub mod blocking;
pub mod codec;
pub mod connections;
pub mod keys;
pub mod kv;
pub mod link;
pub mod locks;
pub mod log_disk;
pub mod log_store;
pub mod network;
pub mod service;
pub mod sm_store;
pub mod stages;
pub mod state_machine;
pub mod type_config;
pub mod wal;

pub use connections::Connections;
pub use log_store::{AppendedBytes, LogStore};
pub use network::Network;
pub use openraft;
pub use service::RaftService;
pub use sm_store::{Replica, SmStore, StateHandle};
pub use state_machine::StateMachine;
pub use type_config::{typ, Node, NodeId, TypeConfig};
