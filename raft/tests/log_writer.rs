//! The log store's writer thread, observed through a store whose writes wait at a gate:
//! appended entries are readable before they are durable, and reported flushed only
//! after; queued writes share one transaction; the commit pointer never waits for the
//! disk; a truncation hides the entries it removes at once; the last entries written
//! are read back without the disk.

mod common;

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use berth_raft::kv::{KvError, KvStore, MemStore, Pair, WriteBatch};
use berth_raft::openraft::storage::{IOFlushed, RaftLogStorage};
use berth_raft::openraft::testing::log_id;
use berth_raft::openraft::type_config::TypeConfigExt;
use berth_raft::openraft::{Entry, EntryPayload, RaftLogReader};
use berth_raft::{LogStore, TypeConfig};
use common::{Journal, Put};

type C = TypeConfig<Journal>;

/// A [`MemStore`] whose writes wait while the gate is closed, and which counts the
/// transactions it commits, durable and lazy.
#[derive(Default)]
struct Gated {
    inner: MemStore,
    closed: Mutex<bool>,
    opened: Condvar,
    durable: Mutex<Vec<usize>>,
    lazy: Mutex<usize>,
    scans: Mutex<usize>,
}

impl Gated {
    fn set_closed(&self, closed: bool) {
        *self.closed.lock().unwrap() = closed;
        self.opened.notify_all();
    }
    fn wait_open(&self) {
        let mut closed = self.closed.lock().unwrap();
        while *closed {
            closed = self.opened.wait(closed).unwrap();
        }
    }
    /// The number of operations in each durable transaction so far.
    fn durable_writes(&self) -> Vec<usize> {
        self.durable.lock().unwrap().clone()
    }
}

impl KvStore for Gated {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        self.inner.get(key)
    }
    fn scan(&self, start: &[u8], end: &[u8]) -> Result<Vec<Pair>, KvError> {
        *self.scans.lock().unwrap() += 1;
        self.inner.scan(start, end)
    }
    fn last(&self, start: &[u8], end: &[u8]) -> Result<Option<Pair>, KvError> {
        self.inner.last(start, end)
    }
    fn write(&self, batch: WriteBatch) -> Result<(), KvError> {
        self.wait_open();
        self.durable.lock().unwrap().push(batch.ops.len());
        self.inner.write(batch)
    }
    fn write_lazy(&self, batch: WriteBatch) -> Result<(), KvError> {
        self.wait_open();
        *self.lazy.lock().unwrap() += 1;
        self.inner.write(batch)
    }
}

fn entry(term: u64, index: u64) -> berth_raft::typ::Entry<Journal> {
    Entry { log_id: log_id::<C>(term, 1, index), payload: EntryPayload::Normal(Put(format!("{term}-{index}"))) }
}

/// Appends `entries`; the task returned ends with the flush report.
async fn append(
    store: &mut LogStore<C>,
    entries: Vec<berth_raft::typ::Entry<Journal>>,
) -> tokio::task::JoinHandle<std::io::Result<()>> {
    let (tx, rx) = C::oneshot();
    store.append(entries, IOFlushed::signal(tx)).await.unwrap();
    tokio::spawn(async move { rx.await.expect("the flush report") })
}

async fn indexes(store: &mut LogStore<C>, range: std::ops::Range<u64>) -> Vec<(u64, String)> {
    store
        .try_get_log_entries(range)
        .await
        .unwrap()
        .into_iter()
        .map(|e| match e.payload {
            EntryPayload::Normal(Put(v)) => (e.log_id.index, v),
            other => panic!("unexpected payload {other:?}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_are_readable_at_once_and_reported_flushed_only_once_written() {
    let kv = Arc::new(Gated::default());
    let mut store = LogStore::<C>::new(kv.clone());
    kv.set_closed(true);
    let flushed = append(&mut store, (1..=3).map(|i| entry(1, i)).collect()).await;
    assert_eq!(indexes(&mut store, 1..4).await.len(), 3, "appended entries are readable before they are written");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!flushed.is_finished(), "not reported flushed while the write waits");
    assert!(kv.durable_writes().is_empty());
    kv.set_closed(false);
    flushed.await.unwrap().unwrap();
    assert_eq!(kv.durable_writes(), vec![3]);
    // Now served by the store itself.
    let state = store.get_log_state().await.unwrap();
    assert_eq!(state.last_log_id.map(|l| l.index()), Some(3));
    assert_eq!(indexes(&mut store, 1..4).await, vec![(1, "1-1".into()), (2, "1-2".into()), (3, "1-3".into())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_queued_behind_a_slow_one_share_one_transaction() {
    let kv = Arc::new(Gated::default());
    let mut store = LogStore::<C>::new(kv.clone());
    kv.set_closed(true);
    let first = append(&mut store, vec![entry(1, 1)]).await;
    // The writer has taken the first append and waits at the gate; these queue up.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut rest = Vec::new();
    for i in 2..=5 {
        rest.push(append(&mut store, vec![entry(1, i)]).await);
    }
    store.save_committed(Some(log_id::<C>(1, 1, 1))).await.unwrap();
    kv.set_closed(false);
    first.await.unwrap().unwrap();
    for r in rest {
        r.await.unwrap().unwrap();
    }
    // One transaction for the first append; one for the four queued appends and the
    // commit pointer, durable because appends are.
    assert_eq!(kv.durable_writes(), vec![1, 5]);
    assert_eq!(*kv.lazy.lock().unwrap(), 0);
    assert_eq!(indexes(&mut store, 1..6).await.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_commit_pointer_is_written_lazily_without_waiting() {
    let kv = Arc::new(Gated::default());
    let mut store = LogStore::<C>::new(kv.clone());
    append(&mut store, vec![entry(1, 1)]).await.await.unwrap().unwrap();
    kv.set_closed(true);
    // Returns although the store cannot write now.
    tokio::time::timeout(Duration::from_secs(1), store.save_committed(Some(log_id::<C>(1, 1, 1))))
        .await
        .expect("save_committed waits for nobody")
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    kv.set_closed(false);
    // A vote is durable on return, and takes the held pointer into its transaction.
    store.save_vote(&berth_raft::openraft::Vote::new(2, 1)).await.unwrap();
    assert_eq!(*kv.lazy.lock().unwrap(), 0, "no transaction of its own");
    assert_eq!(kv.durable_writes(), vec![1, 2], "the append, then the vote with the pointer");
    assert_eq!(store.read_committed().await.unwrap(), Some(log_id::<C>(1, 1, 1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_commit_pointer_is_written_after_the_hold_or_when_the_store_closes() {
    let kv = Arc::new(Gated::default());
    let mut store = LogStore::<C>::new(kv.clone());
    append(&mut store, vec![entry(1, 1)]).await.await.unwrap().unwrap();
    store.save_committed(Some(log_id::<C>(1, 1, 1))).await.unwrap();
    tokio::time::sleep(berth_raft::log_store::LAZY_HOLD / 2).await;
    assert_eq!(*kv.lazy.lock().unwrap(), 0, "held for a durable write to ride along with");
    tokio::time::sleep(berth_raft::log_store::LAZY_HOLD * 3).await;
    assert_eq!(*kv.lazy.lock().unwrap(), 1, "then written on its own");
    assert_eq!(store.read_committed().await.unwrap(), Some(log_id::<C>(1, 1, 1)));

    // Held when the last clone of the store goes: written before the writer ends.
    append(&mut store, vec![entry(1, 2)]).await.await.unwrap().unwrap();
    store.save_committed(Some(log_id::<C>(1, 1, 2))).await.unwrap();
    drop(store);
    assert_eq!(*kv.lazy.lock().unwrap(), 2);
    let mut again = LogStore::<C>::new(kv.clone());
    assert_eq!(again.read_committed().await.unwrap(), Some(log_id::<C>(1, 1, 2)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_pointer_beyond_the_log_is_not_read_back() {
    let kv = Arc::new(Gated::default());
    let mut store = LogStore::<C>::new(kv.clone());
    append(&mut store, vec![entry(1, 1)]).await.await.unwrap().unwrap();
    // What the writer never does (a pointer ahead of its entries), made by hand.
    store.save_committed(Some(log_id::<C>(1, 1, 5))).await.unwrap();
    drop(store);
    let mut again = LogStore::<C>::new(kv.clone());
    assert_eq!(again.read_committed().await.unwrap(), None, "openraft would re-apply up to a missing entry");
    again.save_committed(Some(log_id::<C>(1, 1, 1))).await.unwrap();
    drop(again);
    assert_eq!(LogStore::<C>::new(kv).read_committed().await.unwrap(), Some(log_id::<C>(1, 1, 1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncation_hides_the_removed_entries_before_it_is_written() {
    let kv = Arc::new(Gated::default());
    let mut store = LogStore::<C>::new(kv.clone());
    append(&mut store, (1..=5).map(|i| entry(1, i)).collect()).await.await.unwrap().unwrap();
    kv.set_closed(true);
    // Entries 6..=7 wait unwritten; then a new leader's log replaces everything after 4.
    let _pending = append(&mut store, vec![entry(1, 6), entry(1, 7)]).await;
    let mut truncating = store.clone();
    let truncation = tokio::spawn(async move { truncating.truncate_after(Some(log_id::<C>(1, 1, 4))).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!truncation.is_finished(), "a truncation is durable before it returns");
    let seen: Vec<u64> = indexes(&mut store, 1..10).await.into_iter().map(|(i, _)| i).collect();
    assert_eq!(seen, vec![1, 2, 3, 4], "entry 5 (written) and 6..=7 (queued) are gone for readers at once");
    kv.set_closed(false);
    truncation.await.unwrap().unwrap();
    append(&mut store, vec![entry(2, 5)]).await.await.unwrap().unwrap();
    assert_eq!(indexes(&mut store, 4..10).await, vec![(4, "1-4".into()), (5, "2-5".into())]);
    let state = store.get_log_state().await.unwrap();
    assert_eq!(state.last_log_id, Some(log_id::<C>(2, 1, 5)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_entries_written_are_read_back_without_the_disk() {
    let kv = Arc::new(Gated::default());
    let mut store = LogStore::<C>::new(kv.clone());
    for group in 0..40 {
        let entries = (group * 50 + 1..=group * 50 + 50).map(|i| entry(1, i)).collect();
        append(&mut store, entries).await.await.unwrap().unwrap();
    }
    let scans = || *kv.scans.lock().unwrap();
    let before = scans();
    let want = |r: std::ops::Range<u64>| r.map(|i| (i, format!("1-{i}"))).collect::<Vec<_>>();
    assert_eq!(indexes(&mut store, 1990..2001).await, want(1990..2001));
    assert_eq!(scans(), before, "the last ones written come from memory");
    // Beyond what memory keeps (a bounded number): from the disk, the same entries.
    assert_eq!(indexes(&mut store, 1..11).await, want(1..11));
    assert_eq!(indexes(&mut store, 900..1100).await, want(900..1100));
    assert!(scans() > before);
    // Truncated and purged with the log.
    store.truncate_after(Some(log_id::<C>(1, 1, 1997))).await.unwrap();
    assert_eq!(indexes(&mut store, 1990..2001).await, want(1990..1998));
    append(&mut store, vec![entry(2, 1998)]).await.await.unwrap().unwrap();
    store.purge(log_id::<C>(1, 1, 1995)).await.unwrap();
    let got = indexes(&mut store, 1996..2001).await;
    assert_eq!(got, vec![(1996, "1-1996".into()), (1997, "1-1997".into()), (1998, "2-1998".into())]);
}

/// An entry led by node 2: what node 1 receives as a follower.
fn from_leader_2(term: u64, index: u64, payload: String) -> berth_raft::typ::Entry<Journal> {
    Entry { log_id: log_id::<C>(term, 2, index), payload: EntryPayload::Normal(Put(payload)) }
}

/// Appends on node 1's store and tells whether the append was reported flushed by the
/// time it returned, and how long it took.
async fn append_timed(store: &mut LogStore<C>, entries: Vec<berth_raft::typ::Entry<Journal>>) -> (bool, Duration) {
    let (tx, mut rx) = C::oneshot();
    let started = std::time::Instant::now();
    store.append(entries, IOFlushed::signal(tx)).await.unwrap();
    let took = started.elapsed();
    (rx.try_recv().is_ok(), took)
}

/// Opens the gate after `after`, from a thread of its own (so a test that wrongly
/// blocks on the gate ends, and fails on its timing).
fn open_after(kv: &Arc<Gated>, after: Duration) -> std::thread::JoinHandle<()> {
    let kv = kv.clone();
    std::thread::spawn(move || {
        std::thread::sleep(after);
        kv.set_closed(false);
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followers_append_is_written_before_the_call_returns_a_leaders_is_not() {
    let kv = Arc::new(Gated::default());
    let mut store = LogStore::<C>::new(kv.clone()).for_node(1);
    store.save_committed(Some(log_id::<C>(1, 2, 1))).await.unwrap();
    let (flushed, _) =
        append_timed(&mut store, vec![from_leader_2(1, 1, "a".into()), from_leader_2(1, 2, "b".into())]).await;
    assert!(flushed, "a follower's append is durable when append returns");
    assert_eq!(kv.durable_writes(), vec![3], "both entries and the waiting commit pointer, in one write");
    // Entries this node led go through the writer: the call returns before the write.
    kv.set_closed(true);
    let gate = open_after(&kv, Duration::from_millis(300));
    let (flushed, took) = append_timed(&mut store, vec![entry(2, 3)]).await;
    assert!(!flushed && took < Duration::from_millis(200), "a leader's append does not wait for its write");
    gate.join().unwrap();
    assert_eq!(indexes(&mut store, 1..4).await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followers_append_queues_behind_a_write_under_way_and_keeps_the_order() {
    let kv = Arc::new(Gated::default());
    let mut store = LogStore::<C>::new(kv.clone()).for_node(1);
    kv.set_closed(true);
    let first = append(&mut store, vec![entry(1, 1)]).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let gate = open_after(&kv, Duration::from_millis(500));
    let (flushed, took) = append_timed(&mut store, vec![from_leader_2(2, 2, "x".into())]).await;
    assert!(
        !flushed && took < Duration::from_millis(300),
        "queued behind the writer, not written past it nor waiting for it"
    );
    gate.join().unwrap();
    first.await.unwrap().unwrap();
    // Written after the first, in a transaction of its own (it was queued while the
    // first was under way).
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(kv.durable_writes(), vec![1, 1]);
    assert_eq!(indexes(&mut store, 1..3).await, vec![(1, "1-1".into()), (2, "x".into())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_append_or_a_slow_disk_sends_a_followers_append_to_the_writer() {
    let kv = Arc::new(Gated::default());
    let mut store = LogStore::<C>::new(kv.clone()).for_node(1);
    // Larger than INLINE_BYTES: to the writer, even with the writer idle.
    kv.set_closed(true);
    let gate = open_after(&kv, Duration::from_millis(300));
    let big = "p".repeat(berth_raft::log_store::INLINE_BYTES as usize + 1);
    let (flushed, took) = append_timed(&mut store, vec![from_leader_2(1, 1, big)]).await;
    assert!(!flushed && took < Duration::from_millis(200), "a large append is not written inline");
    gate.join().unwrap();
    // That write took ~300 ms (> INLINE_SLOW): the next small one goes to the writer too.
    tokio::time::sleep(Duration::from_millis(50)).await;
    kv.set_closed(true);
    let gate = open_after(&kv, Duration::from_millis(300));
    let (flushed, took) = append_timed(&mut store, vec![from_leader_2(1, 2, "s".into())]).await;
    assert!(!flushed && took < Duration::from_millis(200), "after a slow write, appends go to the writer");
    gate.join().unwrap();
    // A fast write since: inline again.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let fast = append(&mut store, vec![from_leader_2(1, 3, "f".into())]).await;
    fast.await.unwrap().unwrap();
    let (flushed, _) = append_timed(&mut store, vec![from_leader_2(1, 4, "g".into())]).await;
    assert!(flushed, "inline again once the disk is fast");
    assert_eq!(indexes(&mut store, 2..5).await.len(), 3);
}
