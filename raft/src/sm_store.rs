//! openraft's state-machine storage for any [`StateMachine`]: the state lives in
//! memory, snapshots live on disk.
//!
//! This is the model of Nomad's and Consul's FSMs: the replicated state is an in-memory
//! structure; its durability comes from the Raft log plus periodic snapshots. A
//! snapshot (meta + data) is written to the [`KvStore`] in one atomic batch, so a crash
//! leaves either the old snapshot or the new one. On start, the last snapshot is
//! restored and openraft re-applies the committed log after it, up to the commit
//! pointer the log store persisted (lazily: the rest comes from the leader; a
//! linearizable read waits for it through the read index, the agent through contact).
//!
//! Trade-off, measured in `docs/benchmarks.md`: `snapshot()` runs under the read lock,
//! so apply waits while a snapshot is serialized. For berth's state sizes this is a
//! short pause; a copy-on-write state would remove it.

use std::io;
use std::sync::{Arc, RwLock, RwLockReadGuard};

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
    kv: Arc<dyn KvStore>,
    applied: watch::Sender<u64>,
    /// The last applied index at which a command that is not
    /// [quiet](StateMachine::is_quiet), a membership or a snapshot was applied.
    changed: watch::Sender<u64>,
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

    /// Waits until the replica has applied `index`, or `timeout` passes. Returns
    /// whether it has.
    pub async fn wait_applied(&self, index: u64, timeout: std::time::Duration) -> bool {
        let mut rx = self.subscribe();
        let reached = tokio::time::timeout(timeout, rx.wait_for(|applied| *applied >= index)).await;
        matches!(reached, Ok(Ok(_)))
    }
}

impl<SM: StateMachine> SmStore<SM> {
    /// Opens the state machine over `kv`, restoring the last snapshot stored there.
    pub fn open(kv: Arc<dyn KvStore>) -> io::Result<Self> {
        let mut replica =
            Replica { state: SM::default(), last_applied: None, membership: StoredMembership::<SM>::default() };
        if let Some(meta) = kv.get(keys::SNAPSHOT_META)? {
            let meta: SnapshotMeta<SM> = codec::decode(&meta)?;
            let data = kv
                .get(keys::SNAPSHOT_DATA)?
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "snapshot meta without snapshot data"))?;
            replica.state.restore(&data)?;
            replica.last_applied = meta.last_log_id;
            replica.membership = meta.last_membership.clone();
        }
        let applied = replica.applied_index();
        let (applied_tx, _) = watch::channel(applied);
        let (changed_tx, _) = watch::channel(applied);
        let shared = Shared { replica: RwLock::new(replica), kv, applied: applied_tx, changed: changed_tx };
        Ok(Self { shared: Arc::new(shared) })
    }

    /// The read side of this store.
    pub fn handle(&self) -> StateHandle<SM> {
        StateHandle { shared: self.shared.clone() }
    }

    fn write_lock(&self) -> std::sync::RwLockWriteGuard<'_, Replica<SM>> {
        self.shared.replica.write().unwrap_or_else(|p| p.into_inner())
    }

    fn persist_snapshot(&self, meta: &SnapshotMeta<SM>, data: &[u8]) -> io::Result<()> {
        let mut batch = WriteBatch::new();
        batch.put(keys::SNAPSHOT_META.to_vec(), codec::encode(meta)?);
        batch.put(keys::SNAPSHOT_DATA.to_vec(), data.to_vec());
        let kv = self.shared.kv.clone();
        blocking::run(move || kv.write(batch))?;
        Ok(())
    }
}

impl<SM: StateMachine> RaftSnapshotBuilder<TypeConfig<SM>> for SmStore<SM> {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<Snapshot<SM>, io::Error> {
        let started = std::time::Instant::now();
        let (meta, data) = {
            let replica = self.shared.replica.read().unwrap_or_else(|p| p.into_inner());
            let data = replica.state.snapshot()?;
            let meta =
                SnapshotMeta::<SM> { last_log_id: replica.last_applied, last_membership: replica.membership.clone() };
            (meta, data)
        };
        self.persist_snapshot(&meta, &data)?;
        tracing::info!(
            index = meta.last_log_id.as_ref().map(|l| l.index).unwrap_or(0),
            bytes = data.len(),
            ms = started.elapsed().as_millis() as u64,
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
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta<SM>, snapshot: Vec<u8>) -> Result<(), io::Error> {
        let mut state = SM::default();
        state.restore(&snapshot)?;
        self.persist_snapshot(meta, &snapshot)?;
        let index = {
            let mut replica = self.write_lock();
            replica.state = state;
            replica.last_applied = meta.last_log_id;
            replica.membership = meta.last_membership.clone();
            replica.applied_index()
        };
        tracing::info!(index, bytes = snapshot.len(), "snapshot installed");
        self.shared.applied.send_replace(index);
        self.shared.changed.send_replace(index);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<SM>>, io::Error> {
        let kv = self.shared.kv.clone();
        let (meta, data) = blocking::run(move || -> io::Result<_> {
            Ok((kv.get(keys::SNAPSHOT_META)?, kv.get(keys::SNAPSHOT_DATA)?))
        })?;
        match (meta, data) {
            (Some(meta), Some(data)) => Ok(Some(Snapshot::<SM> { meta: codec::decode(&meta)?, snapshot: data })),
            _ => Ok(None),
        }
    }
}
