//! openraft's state-machine storage for any [`StateMachine`]: the state lives in
//! memory, snapshots live on disk.
//!
//! This is the model of Nomad's and Consul's FSMs: the replicated state is an in-memory
//! structure; its durability comes from the Raft log plus periodic snapshots. A
//! snapshot's data is written to a [`KvStore`] in chunks, then its meta with the switch
//! to the new chunks in one atomic batch, so a crash leaves either the old snapshot or
//! the new one — a store of its own ([`SmStore::open_with_snapshots`]), not the log's:
//! writing a 200 MB snapshot holds a store's write transaction for most of a second,
//! and the log's appends (every commit) must not wait behind it. On start, the last snapshot is
//! restored and openraft re-applies the committed log after it, up to the commit
//! pointer the log store persisted (lazily: the rest comes from the leader; a
//! linearizable read waits for it through the read index, the agent through contact).
//!
//! Snapshots never make apply wait for long (measured in `docs/benchmarks.md`): the
//! state is *cloned* under the read lock — cheap, its big collections are persistent
//! (copy-on-write) — and the copy is serialized and stored off the lock and off the
//! async workers. A snapshot installed from the leader is decoded off the lock too,
//! swapped in under it, and the replaced state is dropped after the lock is released.
//! How long apply ever waited for the lock is kept ([`StateHandle::apply_wait_max`]).

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use tokio::sync::watch;

use crate::kv::{KvStore, WriteBatch};
use crate::state_machine::StateMachine;
use crate::type_config::typ::{LogId, Snapshot, SnapshotMeta, StoredMembership};
use crate::type_config::TypeConfig;
use crate::{blocking, codec, keys};

/// The replicated state and the Raft bookkeeping that goes with it.
pub struct Replica<SM: StateMachine> {
    /// The application state.
    pub state: SM,
    /// The last log entry applied to `state`.
    pub last_applied: Option<LogId<SM>>,
    /// The last membership applied.
    pub membership: StoredMembership<SM>,
}

impl<SM: StateMachine> Replica<SM> {
    /// The index of the last applied entry (0 before anything is applied).
    pub fn applied_index(&self) -> u64 {
        self.last_applied.as_ref().map(|l| l.index).unwrap_or(0)
    }
}

struct Shared<SM: StateMachine> {
    replica: RwLock<Replica<SM>>,
    /// Where snapshots are kept.
    kv: Arc<dyn KvStore>,
    /// Where an older data dir kept its snapshot (the log's store), when that is
    /// another store: read until a snapshot is written to `kv`, then cleared.
    legacy: RwLock<Option<Arc<dyn KvStore>>>,
    applied: watch::Sender<u64>,
    /// The last applied index at which a command that is not
    /// [quiet](StateMachine::is_quiet), a membership or a snapshot was applied.
    changed: watch::Sender<u64>,
    /// The longest an apply (or a snapshot install) waited for the replica's write
    /// lock, in microseconds, since the node started.
    apply_wait_max_us: AtomicU64,
    /// Bytes of the last snapshot this node built, installed or restored.
    snapshot_bytes: AtomicU64,
}

/// The state machine store handed to openraft, and (through [`SmStore::handle`]) the
/// read side used by the rest of the node.
pub struct SmStore<SM: StateMachine> {
    shared: Arc<Shared<SM>>,
}

impl<SM: StateMachine> Clone for SmStore<SM> {
    fn clone(&self) -> Self {
        Self { shared: self.shared.clone() }
    }
}

/// A read-only view of the local replica, shared by the API, the scheduler and the
/// agent. Reads see every entry this node has applied.
pub struct StateHandle<SM: StateMachine> {
    shared: Arc<Shared<SM>>,
}

impl<SM: StateMachine> Clone for StateHandle<SM> {
    fn clone(&self) -> Self {
        Self { shared: self.shared.clone() }
    }
}

impl<SM: StateMachine> StateHandle<SM> {
    /// Locks the replica for reading. Keep the guard short: apply waits for it.
    ///
    /// When the lock is taken (an apply of a large batch), the wait happens off the
    /// async worker ([`blocking::run`]): with two cores, two readers parked on the lock
    /// would otherwise stall every task of the node — Raft heartbeats included — and
    /// cost the cluster its leader.
    pub fn read(&self) -> RwLockReadGuard<'_, Replica<SM>> {
        match self.shared.replica.try_read() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                blocking::run(|| self.shared.replica.read().unwrap_or_else(|p| p.into_inner()))
            }
        }
    }

    /// Bytes of the last snapshot this node built, installed or restored (0: none).
    pub fn snapshot_bytes(&self) -> u64 {
        self.shared.snapshot_bytes.load(Ordering::Relaxed)
    }

    /// The index of the last applied entry.
    pub fn applied_index(&self) -> u64 {
        *self.shared.applied.borrow()
    }

    /// A receiver that changes every time entries are applied (the value is the last
    /// applied index). The agent and read waiters use it instead of polling.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.applied.subscribe()
    }

    /// A receiver that changes when entries that are not all
    /// [quiet](StateMachine::is_quiet) are applied (the value is the last applied index
    /// then). For the node's long-running watchers — the agent, the scheduler — which
    /// would otherwise wake for every IP allocation, each a few context switches.
    pub fn subscribe_changes(&self) -> watch::Receiver<u64> {
        self.shared.changed.subscribe()
    }

    /// The longest any apply waited for the replica's lock since the node started
    /// (readers and snapshots hold it; this is how long they ever stalled apply).
    pub fn apply_wait_max(&self) -> Duration {
        Duration::from_micros(self.shared.apply_wait_max_us.load(Ordering::Relaxed))
    }

    /// Waits until the replica has applied `index`, or `timeout` passes. Returns
    /// whether it has.
    pub async fn wait_applied(&self, index: u64, timeout: std::time::Duration) -> bool {
        let mut rx = self.subscribe();
        let reached = tokio::time::timeout(timeout, rx.wait_for(|applied| *applied >= index)).await;
        matches!(reached, Ok(Ok(_)))
    }
}

impl<SM: StateMachine> SmStore<SM> {
    /// Opens the state machine with its snapshots in `kv` (the log's store), restoring
    /// the last snapshot stored there.
    pub fn open(kv: Arc<dyn KvStore>) -> io::Result<Self> {
        Self::open_stores(kv, None)
    }

    /// Opens the state machine with its snapshots in a store of their own, restoring
    /// the last snapshot — from `snapshots`, or else from `log` (where data dirs of
    /// earlier versions kept it; cleared there once a snapshot is written).
    pub fn open_with_snapshots(snapshots: Arc<dyn KvStore>, log: Arc<dyn KvStore>) -> io::Result<Self> {
        Self::open_stores(snapshots, Some(log))
    }

    fn open_stores(kv: Arc<dyn KvStore>, legacy: Option<Arc<dyn KvStore>>) -> io::Result<Self> {
        let mut replica =
            Replica { state: SM::default(), last_applied: None, membership: StoredMembership::<SM>::default() };
        let legacy = match legacy {
            Some(l) if l.get(keys::SNAPSHOT_META)?.is_some() => Some(l),
            _ => None,
        };
        let mut snapshot_bytes = 0;
        if let Some((meta, data)) = load(&kv, legacy.as_ref())? {
            snapshot_bytes = data.len() as u64;
            let meta: SnapshotMeta<SM> = codec::decode(&meta)?;
            replica.state.restore(&data)?;
            replica.last_applied = meta.last_log_id;
            replica.membership = meta.last_membership.clone();
        }
        let applied = replica.applied_index();
        let (applied_tx, _) = watch::channel(applied);
        let (changed_tx, _) = watch::channel(applied);
        let shared = Shared {
            replica: RwLock::new(replica),
            kv,
            legacy: RwLock::new(legacy),
            applied: applied_tx,
            changed: changed_tx,
            apply_wait_max_us: AtomicU64::new(0),
            snapshot_bytes: AtomicU64::new(snapshot_bytes),
        };
        Ok(Self { shared: Arc::new(shared) })
    }

    /// The read side of this store.
    pub fn handle(&self) -> StateHandle<SM> {
        StateHandle { shared: self.shared.clone() }
    }

    /// The replica's write lock; how long it took to get is noted (the longest wait).
    fn write_lock(&self) -> RwLockWriteGuard<'_, Replica<SM>> {
        let asked = Instant::now();
        let guard = self.shared.replica.write().unwrap_or_else(|p| p.into_inner());
        let waited = asked.elapsed().as_micros().min(u128::from(u64::MAX)) as u64;
        self.shared.apply_wait_max_us.fetch_max(waited, Ordering::Relaxed);
        guard
    }

    /// Stores a snapshot: its data in chunks of [`SNAPSHOT_CHUNK`] bytes, each written
    /// durably on its own, then its meta, its chunk count and the removal of the older
    /// snapshot's chunks in one batch (see [`keys`]). One durable write of the whole
    /// snapshot would flush hundreds of megabytes at once, and every fsync of the
    /// log on the same disk would wait behind it; a chunk at a time, it waits behind
    /// a few megabytes at most.
    fn persist_snapshot(&self, meta: &SnapshotMeta<SM>, data: &[u8]) -> io::Result<()> {
        let meta = codec::encode(meta)?;
        let kv = self.shared.kv.clone();
        blocking::run(|| -> io::Result<()> {
            let generation = match kv.get(keys::SNAPSHOT_CHUNKS)? {
                Some(v) => codec::decode::<(u64, u32)>(&v)?.0 + 1,
                None => 1,
            };
            let chunks: Vec<&[u8]> = if data.is_empty() { vec![data] } else { data.chunks(SNAPSHOT_CHUNK).collect() };
            let count = u32::try_from(chunks.len())
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "snapshot too large to store"))?;
            for (n, chunk) in (0..count).zip(&chunks) {
                let mut batch = WriteBatch::new();
                batch.put(keys::snapshot_chunk(generation, n), chunk.to_vec());
                kv.write(batch)?;
            }
            let mut batch = WriteBatch::new();
            batch
                .put(keys::SNAPSHOT_META.to_vec(), meta)
                .put(keys::SNAPSHOT_CHUNKS.to_vec(), codec::encode(&(generation, count))?)
                .delete(keys::SNAPSHOT_DATA.to_vec())
                .delete_range(keys::snapshot_chunk(0, 0), keys::snapshot_chunk(generation, 0));
            Ok(kv.write(batch)?)
        })?;
        self.shared.snapshot_bytes.store(data.len() as u64, Ordering::Relaxed);
        // The new snapshot is durable: the one an older data dir kept in the log's
        // store is of no more use.
        let legacy = self.shared.legacy.write().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(log) = legacy {
            let mut clear = WriteBatch::new();
            clear.delete(keys::SNAPSHOT_META.to_vec()).delete(keys::SNAPSHOT_DATA.to_vec());
            blocking::run(move || log.write(clear))?;
        }
        Ok(())
    }
}

/// Bytes of snapshot data per durable write.
const SNAPSHOT_CHUNK: usize = 4 << 20;

/// The stored snapshot (meta, data): from `kv`, else from `legacy`. The data is in
/// chunks, or (written by an earlier version) in one value.
fn load(kv: &Arc<dyn KvStore>, legacy: Option<&Arc<dyn KvStore>>) -> io::Result<Option<(Vec<u8>, Vec<u8>)>> {
    let missing = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    for store in std::iter::once(kv).chain(legacy) {
        if let Some(meta) = store.get(keys::SNAPSHOT_META)? {
            let data = match store.get(keys::SNAPSHOT_CHUNKS)? {
                Some(v) => {
                    let (generation, count) = codec::decode::<(u64, u32)>(&v)?;
                    // Room for every chunk at once (each is SNAPSHOT_CHUNK but the
                    // last): a buffer grown by doubling reallocates at every growth
                    // (glibc moves one this large with `mremap`, so the gain is
                    // small: docs/benchmarks.md, session 18). A count too large to
                    // reserve (a damaged store) just grows as it reads, and fails at
                    // the missing chunk below.
                    let mut data = Vec::new();
                    let _ = data.try_reserve_exact((count as usize).saturating_mul(SNAPSHOT_CHUNK));
                    for n in 0..count {
                        let chunk = store.get(&keys::snapshot_chunk(generation, n))?.ok_or_else(|| {
                            missing(format!("snapshot chunk {n} of {count} (generation {generation}) is missing"))
                        })?;
                        data.extend_from_slice(&chunk);
                    }
                    data
                }
                None => store
                    .get(keys::SNAPSHOT_DATA)?
                    .ok_or_else(|| missing("snapshot meta without snapshot data".into()))?,
            };
            return Ok(Some((meta, data)));
        }
    }
    Ok(None)
}

impl<SM: StateMachine> RaftSnapshotBuilder<TypeConfig<SM>> for SmStore<SM> {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<Snapshot<SM>, io::Error> {
        let started = Instant::now();
        // Only the clone happens under the lock (cheap: see `StateMachine`'s contract).
        let (meta, frozen) = {
            let replica = self.shared.replica.read().unwrap_or_else(|p| p.into_inner());
            let meta =
                SnapshotMeta::<SM> { last_log_id: replica.last_applied, last_membership: replica.membership.clone() };
            (meta, replica.state.clone())
        };
        let locked_ms = started.elapsed().as_secs_f64() * 1000.0;
        // Serializing a big state takes seconds: off the async worker.
        let data = blocking::run(move || frozen.snapshot())?;
        self.persist_snapshot(&meta, &data)?;
        tracing::info!(
            index = meta.last_log_id.as_ref().map(|l| l.index).unwrap_or(0),
            bytes = data.len(),
            ms = started.elapsed().as_millis() as u64,
            locked_ms,
            "snapshot built"
        );
        Ok(Snapshot::<SM> { meta, snapshot: data })
    }
}

impl<SM: StateMachine> RaftStateMachine<TypeConfig<SM>> for SmStore<SM> {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId<SM>>, StoredMembership<SM>), io::Error> {
        let replica = self.shared.replica.read().unwrap_or_else(|p| p.into_inner());
        Ok((replica.last_applied, replica.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig<SM>>, io::Error>> + Unpin + OptionalSend,
    {
        // Collect first: the replica lock is a std lock and is never held across an await.
        let mut batch = Vec::new();
        while let Some(item) = entries.try_next().await? {
            batch.push(item);
        }
        if batch.is_empty() {
            return Ok(());
        }
        // What someone waits for goes before the bookkeeping. A batch nobody on this
        // node waits for (a follower's) is applied after the node's ready tasks — its
        // answer to the leader, woken by the same flush report that committed these —
        // and the callers of a batch that answers some run before openraft hears of
        // the apply. tokio runs a woken task next, before the one that was woken
        // earlier: without the yields the state machine ran first.
        let answers = batch.iter().any(|(_, r)| r.is_some());
        if !answers {
            tokio::task::yield_now().await;
        }
        // A batch with a heavy entry (a plan placing thousands of instances) is applied
        // off the async worker, so the node's other tasks — Raft heartbeats — go on;
        // the rest inline, which costs no thread hand-over.
        let heavy = batch.iter().any(|(e, _)| matches!(&e.payload, EntryPayload::Normal(c) if SM::is_heavy(c)));
        let notable = batch.iter().any(|(e, _)| match &e.payload {
            EntryPayload::Blank => false,
            EntryPayload::Normal(c) => !SM::is_quiet(c),
            EntryPayload::Membership(_) => true,
        });
        let apply = || {
            let mut replies = Vec::with_capacity(batch.len());
            let mut replica = self.write_lock();
            for (entry, responder) in batch {
                let index = entry.log_id.index;
                let response = match entry.payload {
                    EntryPayload::Blank => SM::Response::default(),
                    EntryPayload::Normal(cmd) => replica.state.apply(index, cmd),
                    EntryPayload::Membership(m) => {
                        replica.membership = StoredMembership::<SM>::new(Some(entry.log_id), m);
                        SM::Response::default()
                    }
                };
                replica.last_applied = Some(entry.log_id);
                if let Some(r) = responder {
                    replies.push((r, response));
                }
            }
            (replies, replica.applied_index())
        };
        let (replies, last_index) = if heavy { blocking::run(apply) } else { apply() };
        self.shared.applied.send_replace(last_index);
        if notable {
            self.shared.changed.send_replace(last_index);
        }
        for (responder, response) in replies {
            responder.send(response);
        }
        if answers {
            tokio::task::yield_now().await;
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta<SM>, snapshot: Vec<u8>) -> Result<(), io::Error> {
        // Decoding a big snapshot takes seconds: off the lock and the async worker.
        let state = blocking::run(|| -> io::Result<SM> {
            let mut state = SM::default();
            state.restore(&snapshot)?;
            Ok(state)
        })?;
        self.persist_snapshot(meta, &snapshot)?;
        let (index, replaced) = {
            let mut replica = self.write_lock();
            let replaced = std::mem::replace(&mut replica.state, state);
            replica.last_applied = meta.last_log_id;
            replica.membership = meta.last_membership.clone();
            (replica.applied_index(), replaced)
        };
        // Freeing the old state (as big) neither under the lock nor on the worker.
        blocking::run(move || drop(replaced));
        tracing::info!(index, bytes = snapshot.len(), "snapshot installed");
        self.shared.applied.send_replace(index);
        self.shared.changed.send_replace(index);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<SM>>, io::Error> {
        let kv = self.shared.kv.clone();
        let legacy = self.shared.legacy.read().unwrap_or_else(|p| p.into_inner()).clone();
        match blocking::run(move || load(&kv, legacy.as_ref()))? {
            Some((meta, data)) => Ok(Some(Snapshot::<SM> { meta: codec::decode(&meta)?, snapshot: data })),
            None => Ok(None),
        }
    }
}
