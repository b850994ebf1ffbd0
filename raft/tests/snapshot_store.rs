//! Snapshots in a store of their own: a data dir that kept its snapshot in the log's
//! store (before they were split) still restores from it, and the first snapshot
//! written to the new store clears the old one; a snapshot is built from a clone of
//! the state, so what it holds is the state at the clone.

mod common;

use std::sync::Arc;

use berth_raft::kv::{KvStore, MemStore, WriteBatch};
use berth_raft::openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use berth_raft::{codec, keys, typ, SmStore, StateMachine};
use common::Journal;

fn legacy_snapshot(log: &Arc<dyn KvStore>, items: &[&str]) {
    let state = Journal { items: items.iter().enumerate().map(|(i, s)| (i as u64 + 1, s.to_string())).collect() };
    let meta = typ::SnapshotMeta::<Journal> { last_log_id: None, last_membership: Default::default() };
    let mut batch = WriteBatch::new();
    batch.put(keys::SNAPSHOT_META.to_vec(), codec::encode(&meta).unwrap());
    batch.put(keys::SNAPSHOT_DATA.to_vec(), state.snapshot().unwrap());
    log.write(batch).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_data_dir_restores_from_the_log_store_until_a_new_snapshot_is_written() {
    let log: Arc<dyn KvStore> = Arc::new(MemStore::default());
    let snapshots: Arc<dyn KvStore> = Arc::new(MemStore::default());
    legacy_snapshot(&log, &["a", "b"]);

    let mut sm = SmStore::<Journal>::open_with_snapshots(snapshots.clone(), log.clone()).unwrap();
    let items: Vec<String> = sm.handle().read().state.items.iter().map(|(_, s)| s.clone()).collect();
    assert_eq!(items, ["a", "b"], "restored from the log's store");
    let current = sm.get_current_snapshot().await.unwrap().expect("the legacy snapshot is the current one");
    assert_eq!(codec::decode::<Journal>(&current.snapshot).unwrap().items.len(), 2);

    let mut builder = sm.get_snapshot_builder().await;
    let built = builder.build_snapshot().await.unwrap();
    assert_eq!(codec::decode::<Journal>(&built.snapshot).unwrap().items.len(), 2);
    assert!(snapshots.get(keys::SNAPSHOT_CHUNKS).unwrap().is_some(), "written to the snapshot store");
    assert!(log.get(keys::SNAPSHOT_META).unwrap().is_none(), "the legacy meta is cleared");
    assert!(log.get(keys::SNAPSHOT_DATA).unwrap().is_none(), "the legacy data is cleared");

    // A restart reads the new store.
    let sm = SmStore::<Journal>::open_with_snapshots(snapshots, log).unwrap();
    assert_eq!(sm.handle().read().state.items.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_node_has_no_snapshot_in_either_store() {
    let log: Arc<dyn KvStore> = Arc::new(MemStore::default());
    let snapshots: Arc<dyn KvStore> = Arc::new(MemStore::default());
    let mut sm = SmStore::<Journal>::open_with_snapshots(snapshots, log).unwrap();
    assert!(sm.get_current_snapshot().await.unwrap().is_none());
    assert!(sm.handle().read().state.items.is_empty());
    assert_eq!(sm.handle().apply_wait_max(), std::time::Duration::ZERO);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_snapshot_is_stored_in_chunks_and_the_older_chunks_go() {
    let log: Arc<dyn KvStore> = Arc::new(MemStore::default());
    let snapshots: Arc<dyn KvStore> = Arc::new(MemStore::default());
    // ~10 MiB of state: three chunks of 4 MiB.
    let big = "x".repeat(10 << 20);
    legacy_snapshot(&log, &[big.as_str(), "tail"]);
    let mut sm = SmStore::<Journal>::open_with_snapshots(snapshots.clone(), log.clone()).unwrap();
    let chunks = |store: &Arc<dyn KvStore>| store.scan(b"s/c/", b"s/c0").unwrap();
    for generation in 1..=2u64 {
        let built = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
        let stored = chunks(&snapshots);
        assert_eq!(stored.len(), 3, "generation {generation}: only its own chunks are kept");
        assert!(stored.iter().all(|(k, _)| k[4..12] == generation.to_be_bytes()), "generation {generation}");
        let current = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.snapshot, built.snapshot, "the stored data is what was built");
    }
    let sm = SmStore::<Journal>::open_with_snapshots(snapshots, log).unwrap();
    let items: Vec<String> = sm.handle().read().state.items.iter().map(|(_, s)| s.clone()).collect();
    assert_eq!(items, [big, "tail".to_string()]);
}
