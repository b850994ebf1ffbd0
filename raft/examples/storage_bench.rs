//! Measures the storage backends the way Raft uses them: durable appends of log
//! entries, one batch per commit, and the time to reopen a store.
//!
//! `cargo run --release -p berth-raft --example storage_bench [-- ENTRIES]`
//!
//! Prints one JSON object per backend and batch size (see docs/storage.md).

use std::time::Instant;

use berth_raft::kv::{self, Backend, WriteBatch};

fn main() {
    let entries: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(2000);
    let payload = vec![0xabu8; 200]; // about one IPAM command entry
    for backend in [Backend::Redb, Backend::Sled] {
        for batch in [1u64, 16, 128] {
            let dir = tempfile::tempdir().unwrap();
            let store = kv::open(backend, dir.path()).unwrap();
            let mut latencies = Vec::new();
            let start = Instant::now();
            let mut i = 0;
            while i < entries {
                let mut b = WriteBatch::new();
                for j in i..(i + batch).min(entries) {
                    b.put(berth_raft::keys::log(j), payload.clone());
                }
                let t = Instant::now();
                store.write(b).unwrap();
                latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                i += batch;
            }
            let secs = start.elapsed().as_secs_f64();
            latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());
            let p = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
            let disk = store.disk_usage();
            drop(store);
            let t = Instant::now();
            let reopened = kv::open(backend, dir.path()).unwrap();
            let n = reopened.scan(&berth_raft::keys::log(0), &berth_raft::keys::log_end()).unwrap().len();
            let reopen_ms = t.elapsed().as_secs_f64() * 1000.0;
            assert_eq!(n as u64, entries);
            println!(
                "{{\"backend\":\"{backend}\",\"batch\":{batch},\"entries\":{entries},\"entries_per_s\":{:.0},\"commits_per_s\":{:.0},\"commit_p50_ms\":{:.3},\"commit_p99_ms\":{:.3},\"disk_bytes\":{disk},\"reopen_and_scan_ms\":{reopen_ms:.1}}}",
                entries as f64 / secs,
                latencies.len() as f64 / secs,
                p(0.5),
                p(0.99),
            );
        }
    }
}
