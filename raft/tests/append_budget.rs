//! AppendEntries are cut to a byte budget (openraft bounds them by entry count only).

mod common;

use berth_raft::network::fit_entries;
use berth_raft::openraft::raft::AppendEntriesRequest;
use berth_raft::openraft::testing::log_id;
use berth_raft::openraft::{Entry, EntryPayload, Vote};
use berth_raft::TypeConfig;
use common::{Journal, Put};

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
