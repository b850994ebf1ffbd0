//! Measures the log disks the way Raft uses them: durable appends of log entries, one
//! group per durable write, and the time to reopen the log and read it back.
//!
//! `cargo run --release -p berth-raft --example storage_bench [-- ENTRIES]`
//!
//! Prints one JSON object per log disk and group size (see docs/storage.md): berth's
//! append-only log (the default, with `--storage redb`), and one key per entry in redb
//! (the default before it) and in sled.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use berth_raft::kv::{self, Backend};
use berth_raft::log_disk::{KvLog, LogDisk, LogOp};
use berth_raft::wal::Wal;

fn open(disk: &str, dir: &Path) -> Arc<dyn LogDisk> {
    match disk {
        "wal" => Arc::new(Wal::open(dir).unwrap()),
        "redb" => Arc::new(KvLog(kv::open(Backend::Redb, dir).unwrap())),
        _ => Arc::new(KvLog(kv::open(Backend::Sled, dir).unwrap())),
    }
}

/// Bytes allocated on disk by every file under `dir` (a preallocated segment counts whole).
fn disk_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                disk_bytes(&e.path())
            } else {
                m.blocks() * 512
            }
        })
        .sum()
}

fn main() {
    let entries: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(2000);
    let payload = vec![0xabu8; 200]; // about one IPAM command entry
    for disk in ["wal", "redb", "sled"] {
        for batch in [1u64, 16, 128] {
            let dir = tempfile::tempdir().unwrap();
            let log = open(disk, dir.path());
            let mut latencies = Vec::new();
            let start = Instant::now();
            let mut i = 1;
            while i <= entries {
                let ops = (i..(i + batch).min(entries + 1))
                    .map(|index| LogOp::Entry { index, bytes: payload.clone() })
                    .collect();
                let t = Instant::now();
                log.write(ops, true).unwrap();
                latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                i += batch;
            }
            let secs = start.elapsed().as_secs_f64();
            latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());
            let p = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
            drop(log);
            let bytes = disk_bytes(dir.path());
            let t = Instant::now();
            let n = open(disk, dir.path()).entries(0, None).unwrap().len();
            let reopen_ms = t.elapsed().as_secs_f64() * 1000.0;
            assert_eq!(n as u64, entries);
            println!(
                "{{\"disk\":\"{disk}\",\"batch\":{batch},\"entries\":{entries},\"entries_per_s\":{:.0},\"writes_per_s\":{:.0},\"write_p50_ms\":{:.3},\"write_p99_ms\":{:.3},\"disk_bytes\":{bytes},\"reopen_and_read_ms\":{reopen_ms:.1}}}",
                entries as f64 / secs,
                latencies.len() as f64 / secs,
                p(0.5),
                p(0.99),
            );
        }
    }
}
