//! AppendEntries as the transport sends them: cut to a byte budget (openraft bounds
//! them by entry count only), and a commit-only request riding on the next one.

mod common;

use std::time::{Duration, Instant};

use berth_raft::network::{fit_entries, ride_commits};
use berth_raft::openraft::raft::AppendEntriesRequest;
use berth_raft::openraft::testing::log_id;
use berth_raft::openraft::{Entry, EntryPayload, Vote};
use berth_raft::TypeConfig;
use common::{Journal, Put};
use futures::StreamExt;

type C = TypeConfig<Journal>;

/// `n` entries of about `bytes` bytes each, after index 10.
fn request(n: u64, bytes: usize) -> AppendEntriesRequest<C> {
    AppendEntriesRequest {
        vote: Vote::new_committed(1, 1),
        prev_log_id: Some(log_id::<C>(1, 1, 10)),
        entries: (11..11 + n)
            .map(|i| Entry { log_id: log_id::<C>(1, 1, i), payload: EntryPayload::Normal(Put("x".repeat(bytes))) })
            .collect(),
        leader_commit: Some(log_id::<C>(1, 1, 10)),
    }
}

#[test]
fn a_request_within_the_budget_is_sent_whole() {
    let mut rpc = request(10, 1000);
    assert_eq!(fit_entries(&mut rpc, 1 << 20).unwrap(), None);
    assert_eq!(rpc.entries.len(), 10);
}

#[test]
fn a_large_request_is_cut_to_a_prefix_that_fits() {
    let mut rpc = request(10, 1000);
    let last = fit_entries(&mut rpc, 3500).unwrap();
    assert_eq!(rpc.entries.len(), 3, "three entries of ~1 KB fit 3.5 KB");
    assert_eq!(last, Some(log_id::<C>(1, 1, 13)));
    assert_eq!(rpc.prev_log_id, Some(log_id::<C>(1, 1, 10)), "the prefix starts where the request did");
}

#[test]
fn one_entry_larger_than_the_budget_is_still_sent() {
    let mut rpc = request(3, 10_000);
    let last = fit_entries(&mut rpc, 1000).unwrap();
    assert_eq!(rpc.entries.len(), 1);
    assert_eq!(last, Some(log_id::<C>(1, 1, 11)));
}

/// A request at log position `prev` carrying `entries` after it, and commit `commit`.
fn at(prev: u64, entries: u64, commit: u64) -> AppendEntriesRequest<C> {
    AppendEntriesRequest {
        vote: Vote::new_committed(1, 1),
        prev_log_id: Some(log_id::<C>(1, 1, prev)),
        entries: (prev + 1..=prev + entries)
            .map(|i| Entry { log_id: log_id::<C>(1, 1, i), payload: EntryPayload::Normal(Put(i.to_string())) })
            .collect(),
        leader_commit: Some(log_id::<C>(1, 1, commit)),
    }
}

/// What the stream yields next, within `within` (None: nothing came).
async fn next_within<S: futures::Stream<Item = AppendEntriesRequest<C>> + Unpin>(
    s: &mut S,
    within: Duration,
) -> Option<AppendEntriesRequest<C>> {
    tokio::time::timeout(within, s.next()).await.ok().flatten()
}

/// A request's log position, entry count and commit index.
fn key(r: Option<AppendEntriesRequest<C>>) -> Option<(u64, usize, u64)> {
    r.map(|r| (r.prev_log_id.unwrap().index, r.entries.len(), r.leader_commit.unwrap().index))
}

const LONG: Duration = Duration::from_secs(30);
const SOON: Duration = Duration::from_secs(5);

#[tokio::test]
async fn a_commit_only_request_rides_on_the_next_at_the_same_position() {
    let (tx, rx) = futures::channel::mpsc::unbounded();
    let mut s = Box::pin(ride_commits(rx, LONG));
    tx.unbounded_send(at(10, 1, 10)).unwrap();
    assert_eq!(key(next_within(&mut s, SOON).await), Some((10, 1, 10)));
    // Entry 11 committed: the commit-only request waits; entry 12 comes and carries it.
    tx.unbounded_send(at(11, 0, 11)).unwrap();
    tx.unbounded_send(at(11, 1, 11)).unwrap();
    assert_eq!(key(next_within(&mut s, SOON).await), Some((11, 1, 11)), "one message, with the commit");
    // Two commit-only requests in a row both ride on the entry after them.
    tx.unbounded_send(at(12, 0, 12)).unwrap();
    tx.unbounded_send(at(12, 0, 12)).unwrap();
    tx.unbounded_send(at(12, 2, 12)).unwrap();
    assert_eq!(key(next_within(&mut s, SOON).await), Some((12, 2, 12)));
}

#[tokio::test]
async fn a_request_at_another_position_does_not_carry_it() {
    let (tx, rx) = futures::channel::mpsc::unbounded();
    let mut s = Box::pin(ride_commits(rx, LONG));
    tx.unbounded_send(at(10, 1, 10)).unwrap();
    tx.unbounded_send(at(11, 0, 11)).unwrap();
    tx.unbounded_send(at(9, 2, 11)).unwrap();
    for want in [(10, 1, 10), (11, 0, 11), (9, 2, 11)] {
        assert_eq!(key(next_within(&mut s, SOON).await), Some(want), "each sent, in order");
    }
}

#[tokio::test]
async fn alone_a_commit_only_request_goes_after_the_window_or_at_the_end() {
    let window = Duration::from_millis(100);
    let (tx, rx) = futures::channel::mpsc::unbounded();
    let mut s = Box::pin(ride_commits(rx, window));
    // The session's first request is never held, entry-less or not.
    tx.unbounded_send(at(10, 0, 10)).unwrap();
    assert_eq!(key(next_within(&mut s, SOON).await), Some((10, 0, 10)));
    tx.unbounded_send(at(10, 0, 11)).unwrap();
    let t = Instant::now();
    assert_eq!(key(next_within(&mut s, SOON).await), Some((10, 0, 11)));
    assert!(t.elapsed() >= window, "held for the window: {:?}", t.elapsed());
    // When the session ends, the one held back goes at once.
    let (tx, rx) = futures::channel::mpsc::unbounded();
    let mut s = Box::pin(ride_commits(rx, LONG));
    tx.unbounded_send(at(10, 1, 10)).unwrap();
    tx.unbounded_send(at(11, 0, 11)).unwrap();
    drop(tx);
    assert_eq!(key(next_within(&mut s, SOON).await), Some((10, 1, 10)));
    assert_eq!(key(next_within(&mut s, SOON).await), Some((11, 0, 11)));
    assert!(next_within(&mut s, SOON).await.is_none());
}
