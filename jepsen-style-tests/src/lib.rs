//! # berth-jepsen: clusters to break and to measure
//!
//! - [`cluster`]: starts a cluster of real `berth agent` processes on loopback and
//!   controls them (kill, stop, pause). The chaos suite (issue 5) adds network
//!   namespaces and partitions on top.
//! - [`mod@bench`] and `berth-bench` (src/bin): benchmarks that print one JSON line per
//!   measured system and configuration, side by side with their anchor (etcd for IPAM
//!   and failover) (`docs/benchmarks.md`).
//! - [`history`] and [`checker`]: histories of invoke/ok/fail/info events and the
//!   checkers that judge them — linearizability of registers (Wing-Gong-Lowe search,
//!   per key), IPAM uniqueness and durability, set durability — each tested on
//!   known-valid and doctored histories.
//! - `berth-jepsen` (src/main.rs): the chaos runner — nemeses on a timeline, workloads,
//!   reports (`docs/chaos.md`).
//! - [`interrupt`]: a run stopped by SIGINT or SIGTERM stops the clusters it started.

pub mod bench;
pub mod checker;
pub mod cluster;
pub mod history;
pub mod interrupt;
pub mod netns;
pub mod report;
