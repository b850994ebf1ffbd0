//! Where the Raft log lands: the few operations [`LogStore`](crate::LogStore) writes,
//! and the disks that take them.
//!
//! The log store speaks in Raft terms — an entry, the vote, the commit pointer, a
//! truncation, a purge — and a [`LogDisk`] stores them:
//!
//! | disk | used with `--storage` | how |
//! |---|---|---|
//! | [`Wal`](crate::wal::Wal) | `redb` (the default) | berth's append-only log: CRC-chained frames in preallocated segment files, one `pwrite` + `fdatasync` per group |
//! | [`KvLog`] | `sled`, `memory` | one key per entry in the backend's ordered store, one transaction per group |
//!
//! Snapshots stay in the backend's store in every case (`sm_store`).

use std::path::Path;
use std::sync::Arc;

use openraft::alias::LogIdOf;
use openraft::RaftTypeConfig;
use serde::de::DeserializeOwned;

use crate::keys;
use crate::kv::{Backend, KvError, KvStore, WriteBatch};

/// One write of the log store. A group of them is written in order; after a crash a
/// prefix of a group may survive (never a later operation without the earlier ones) —
/// which is all Raft needs, since nothing of a group is acknowledged before all of it
/// is durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogOp {
    /// The encoded entry at `index` (replacing any entry there).
    Entry { index: u64, bytes: Vec<u8> },
    /// The encoded vote.
    Vote(Vec<u8>),
    /// The encoded commit pointer.
    Committed(Vec<u8>),
    /// Every entry from this index on is gone.
    TruncateFrom(u64),
    /// Every entry up to and including `upto` is gone; `log_id` is the encoded last
    /// purged log id.
    Purge { upto: u64, log_id: Vec<u8> },
}

impl LogOp {
    /// Roughly the bytes the operation carries (what group sizes are weighed by).
    pub fn bytes(&self) -> usize {
        match self {
            LogOp::Entry { bytes, .. } => 8 + bytes.len(),
            LogOp::Vote(b) | LogOp::Committed(b) => b.len(),
            LogOp::TruncateFrom(_) => 8,
            LogOp::Purge { log_id, .. } => 8 + log_id.len(),
        }
    }
}

/// One of the small records kept beside the entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Meta {
    Vote,
    Committed,
    Purged,
}

/// Durable storage of the Raft log. Calls block; the log store calls `write` from its
/// one writer thread only, and the reads from anywhere.
pub trait LogDisk: Send + Sync + 'static {
    /// Writes `ops` in order. Durable: on disk when this returns `Ok`. Lazy: readable at
    /// once, durable with the next durable write (a crash may lose it, whole or a
    /// suffix of it, with any lazy write after it).
    fn write(&self, ops: Vec<LogOp>, durable: bool) -> Result<(), KvError>;
    /// The last value written of `which`.
    fn meta(&self, which: Meta) -> Result<Option<Vec<u8>>, KvError>;
    /// The encoded entries with `start <= index < end` (no end: to the last), in order.
    fn entries(&self, start: u64, end: Option<u64>) -> Result<Vec<(u64, Vec<u8>)>, KvError>;
    /// The encoded entry with the greatest index below `end` (no end: the last), if any.
    fn last_entry(&self, end: Option<u64>) -> Result<Option<Vec<u8>>, KvError>;
}

/// The log in an ordered key-value store: one key per entry (`keys`), one transaction
/// per group.
pub struct KvLog(pub Arc<dyn KvStore>);

fn meta_key(which: Meta) -> &'static [u8] {
    match which {
        Meta::Vote => keys::VOTE,
        Meta::Committed => keys::COMMITTED,
        Meta::Purged => keys::PURGED,
    }
}

impl LogDisk for KvLog {
    fn write(&self, ops: Vec<LogOp>, durable: bool) -> Result<(), KvError> {
        let mut batch = WriteBatch::new();
        for op in ops {
            match op {
                LogOp::Entry { index, bytes } => batch.put(keys::log(index), bytes),
                LogOp::Vote(b) => batch.put(keys::VOTE.to_vec(), b),
                LogOp::Committed(b) => batch.put(keys::COMMITTED.to_vec(), b),
                LogOp::TruncateFrom(from) => batch.delete_range(keys::log(from), keys::log_end()),
                // The pointer and the deletion in one transaction: after a crash the
                // log never has a hole below a pointer that does not explain it.
                LogOp::Purge { upto, log_id } => batch
                    .put(keys::PURGED.to_vec(), log_id)
                    .delete_range(keys::log(0), keys::log(upto.saturating_add(1))),
            };
        }
        if durable {
            self.0.write(batch)
        } else {
            self.0.write_lazy(batch)
        }
    }

    fn meta(&self, which: Meta) -> Result<Option<Vec<u8>>, KvError> {
        self.0.get(meta_key(which))
    }

    fn entries(&self, start: u64, end: Option<u64>) -> Result<Vec<(u64, Vec<u8>)>, KvError> {
        let end = end.map_or_else(keys::log_end, keys::log);
        Ok(self.0.scan(&keys::log(start), &end)?.into_iter().map(|(k, v)| (keys::log_index(&k), v)).collect())
    }

    fn last_entry(&self, end: Option<u64>) -> Result<Option<Vec<u8>>, KvError> {
        let end = end.map_or_else(keys::log_end, keys::log);
        Ok(self.0.last(&keys::log(0), &end)?.map(|(_, v)| v))
    }
}

/// The log disk of `backend` for a node whose Raft store (the backend's store in
/// `dir`) is `kv`: the [`Wal`](crate::wal::Wal) in `dir/wal` with redb — taking over,
/// once, a log that an earlier version kept in `kv` — and `kv` itself otherwise.
pub fn open<C>(backend: Backend, dir: &Path, kv: Arc<dyn KvStore>) -> Result<Arc<dyn LogDisk>, KvError>
where
    C: RaftTypeConfig,
    LogIdOf<C>: DeserializeOwned,
{
    let purged_index = |b: &[u8]| crate::codec::decode::<LogIdOf<C>>(b).map(|id| id.index());
    Ok(match backend {
        Backend::Redb => Arc::new(crate::wal::Wal::open_taking_over(&dir.join("wal"), &kv, purged_index)?),
        Backend::Sled | Backend::Memory => Arc::new(KvLog(kv)),
    })
}
