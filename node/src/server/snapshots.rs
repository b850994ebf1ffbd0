//! When a node takes a snapshot of its replica.
//!
//! A snapshot costs the size of the state — it serializes and writes all of it —
//! while the log it replaces grows with what the cluster is told. openraft's own
//! policy counts entries only: with it, a node holding a million instances (a
//! snapshot of ~200 MB) would write 200 MB every 5,000 IP allocations, on every node.
//! berth's rule weighs both sides: a snapshot is due once
//!
//! - at least `--snapshot-logs` entries were applied since the last one (5,000 by
//!   default), **and**
//! - the log took in at least as many bytes since then as the last snapshot had.
//!
//! Each snapshot is at most the last one plus what the state gained since; the last
//! one is bounded by the log bytes taken in since (the rule), and the gain by what
//! those entries carry (an allocation adds its record, its dedup reply and its event:
//! a few times its entry's bytes). So snapshots write a small constant times what the
//! log takes in — O(1) per log byte, whatever the state's size: the rule of Redis's
//! AOF rewrite at 100 % growth — and the log a restart replays is about the state's
//! size at most. Measured (`tests/cluster.rs`): 240 allocations with a floor of 10
//! entries take 3 snapshots per node, not 24. A small state (the chaos suite's) snapshots every
//! `--snapshot-logs` entries as before. `POST /v1/cluster/snapshot` takes one at once,
//! whatever the rule says.

use std::sync::Arc;
use std::time::Duration;

use berth_raft::openraft::type_config::async_runtime::WatchReceiver as _;
use berth_raft::AppendedBytes;

use crate::server::Node;

/// How often the rule is checked.
const CHECK: Duration = Duration::from_millis(200);
/// After a snapshot was asked for: how long to wait for it before asking again.
const BUILD_WAIT: Duration = Duration::from_secs(30);

/// Whether a snapshot is due: `entries` applied and `log_bytes` appended since the
/// last one, which had `last_bytes` (0: none yet).
pub fn due(min_entries: u64, entries: u64, log_bytes: u64, last_bytes: u64) -> bool {
    entries >= min_entries && log_bytes >= last_bytes
}

/// Runs for the life of the node: asks openraft for a snapshot whenever [`due`].
pub async fn run(node: Arc<Node>, appended: AppendedBytes, min_entries: u64) {
    let mut metrics = node.raft.metrics();
    // Where the log counter stood when the last snapshot was taken (or at start: the
    // counter starts with the process, the entries replayed are not in it).
    let mut snapshot_at = metrics.borrow_watched().snapshot.map(|l| l.index);
    let mut base = appended.get();
    let mut asked: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = node.stopping() => return,
            _ = tokio::time::sleep(CHECK) => {}
        }
        let (applied, snapshot) = {
            let m = metrics.borrow_and_update();
            (m.last_applied.map(|l| l.index).unwrap_or(0), m.snapshot.map(|l| l.index))
        };
        if snapshot != snapshot_at {
            (snapshot_at, base, asked) = (snapshot, appended.get(), None);
        }
        if asked.is_some_and(|at| at.elapsed() < BUILD_WAIT) || node.disk.problem().is_some() {
            continue;
        }
        let entries = applied.saturating_sub(snapshot_at.unwrap_or(0));
        let (log_bytes, last_bytes) = (appended.get().saturating_sub(base), node.state.snapshot_bytes());
        if due(min_entries, entries, log_bytes, last_bytes) {
            tracing::debug!(entries, log_bytes, last_bytes, "snapshot due");
            if node.raft.trigger().snapshot().await.is_err() {
                return;
            }
            asked = Some(tokio::time::Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::due;

    #[test]
    fn a_small_state_snapshots_every_min_entries() {
        assert!(!due(5000, 4999, 10 << 20, 4096));
        assert!(due(5000, 5000, 1 << 20, 4096));
        // The first snapshot: nothing to weigh against.
        assert!(due(5000, 5000, 0, 0));
    }

    #[test]
    fn a_big_state_waits_for_as_many_log_bytes_as_it_has() {
        let state = 200 << 20;
        // Many entries, but the log holds a fraction of the state: not yet.
        assert!(!due(5000, 100_000, 30 << 20, state));
        assert!(due(5000, 700_000, state, state));
    }

    #[test]
    fn snapshots_write_a_constant_times_what_the_log_took_in() {
        // Simulate a growing state: each entry appends 300 log bytes and adds 100
        // bytes of state (gain per log byte g = 1/3: at most 1 + g times the log). Count what snapshots write against what the log took in.
        let (min, entry_bytes, growth) = (5000u64, 300u64, 100u64);
        let (mut state, mut last, mut since_entries, mut since_bytes) = (0u64, 0u64, 0u64, 0u64);
        let (mut log_total, mut snap_total, mut snapshots) = (0u64, 0u64, 0u64);
        for _ in 0..2_000_000u64 {
            state += growth;
            since_entries += 1;
            since_bytes += entry_bytes;
            log_total += entry_bytes;
            if due(min, since_entries, since_bytes, last) {
                snap_total += state;
                snapshots += 1;
                last = state;
                (since_entries, since_bytes) = (0, 0);
            }
        }
        assert!(snap_total * 3 <= log_total * 4, "{snap_total} > 4/3 × {log_total}");
        // Entry counting alone would have taken 400 snapshots; the rule takes far fewer.
        assert!(snapshots < 100, "{snapshots} snapshots");
    }
}
