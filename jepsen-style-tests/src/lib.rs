//! # berth-jepsen: clusters to break and to measure
//!
//! - [`cluster`]: starts a cluster of real `berth agent` processes on loopback and
//!   controls them (kill, stop, pause). The chaos suite (issue 5) adds network
//!   namespaces and partitions on top.
//! - `berth-bench` (src/bin): benchmarks that print one JSON line per measured system
//!   and configuration (`docs/benchmarks.md`).
//! - `berth-jepsen` (src/main.rs): the chaos suite — not built yet.

pub mod cluster;
