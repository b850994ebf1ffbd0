//! openraft's storage conformance suite against every backend.

mod common;

use berth_raft::kv::{self, Backend};
use berth_raft::openraft::testing::log::{StoreBuilder, Suite};
use berth_raft::openraft::StorageError;
use berth_raft::{LogStore, SmStore, TypeConfig};
use common::Journal;

type C = TypeConfig<Journal>;

/// A backend, and whether snapshots go to a store of their own (as a node keeps them).
struct Builder(Backend, bool);

impl StoreBuilder<C, LogStore<C>, SmStore<Journal>, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore<C>, SmStore<Journal>), StorageError<C>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let (kv, log) = common::open_log(self.0, &dir.path().join("raft"));
        let sm = if self.1 {
            let snapshots = kv::open(self.0, &dir.path().join("snapshot")).expect("open snapshot store");
            SmStore::open_with_snapshots(snapshots, kv.clone()).expect("open state machine")
        } else {
            SmStore::open(kv.clone()).expect("open state machine")
        };
        Ok((dir, log, sm))
    }
}

async fn suite(backend: Backend) {
    for own_snapshot_store in [false, true] {
        Suite::test_all(Builder(backend, own_snapshot_store))
            .await
            .unwrap_or_else(|e| panic!("{backend} (snapshots in their own store: {own_snapshot_store}): {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_append_only_log_with_redb_snapshots_passes_openraft_suite() {
    suite(Backend::Redb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_store_passes_openraft_suite() {
    suite(Backend::Sled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_passes_openraft_suite() {
    suite(Backend::Memory).await;
}
