//! Durable ordered key-value storage behind one small trait.
//!
//! Raft needs very little from a disk: ordered keys (the log is keyed by index), an
//! atomic batch (append + truncate, or snapshot meta + data, land together or not at
//! all) and a durable commit (when [`KvStore::write`] returns, the batch survives a
//! power cut). Everything above this trait — the log store, the snapshot store — is
//! written once and runs on every backend:
//!
//! | backend | durable commit | notes |
//! |---|---|---|
//! | [`RedbStore`] (default) | `fsync` at every write transaction commit | pure Rust, stable file format, crash-safe by design |
//! | [`SledStore`] | `flush()` after the batch | sled 0.34's flush uses `sync_file_range`, which does not flush the disk's write cache (sled #1452); corruption after abrupt stops is reported (#1509, #1533) |
//! | [`MemStore`] | none (memory) | the in-memory twin for tests |
//!
//! See `docs/storage.md` for the measurements behind the default.

mod memory;
mod redb;
mod sled;

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

pub use self::memory::MemStore;
pub use self::redb::RedbStore;
pub use self::sled::SledStore;

/// An error of the storage backend. Raft treats every one as fatal: the node stops
/// rather than carry on with a log it can no longer trust.
#[derive(Debug, Clone, thiserror::Error)]
pub enum KvError {
    #[error("cannot open the store at {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("storage I/O failed: {0}")]
    Io(String),
}

impl From<KvError> for std::io::Error {
    fn from(e: KvError) -> Self {
        std::io::Error::other(e.to_string())
    }
}

/// One operation of a [`WriteBatch`].
#[derive(Debug, Clone)]
pub enum Op {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
    /// Deletes every key in `[start, end)`.
    DeleteRange(Vec<u8>, Vec<u8>),
}

/// Operations applied atomically, in order, by [`KvStore::write`].
#[derive(Debug, Clone, Default)]
pub struct WriteBatch {
    pub ops: Vec<Op>,
}

impl WriteBatch {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> &mut Self {
        self.ops.push(Op::Put(key.into(), value.into()));
        self
    }
    pub fn delete(&mut self, key: impl Into<Vec<u8>>) -> &mut Self {
        self.ops.push(Op::Delete(key.into()));
        self
    }
    pub fn delete_range(&mut self, start: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>) -> &mut Self {
        self.ops.push(Op::DeleteRange(start.into(), end.into()));
        self
    }
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
    /// The bytes of keys and values the batch carries.
    pub fn bytes(&self) -> usize {
        self.ops
            .iter()
            .map(|op| match op {
                Op::Put(k, v) => k.len() + v.len(),
                Op::Delete(k) => k.len(),
                Op::DeleteRange(a, b) => a.len() + b.len(),
            })
            .sum()
    }
    /// Moves `other`'s operations after this batch's.
    pub fn append(&mut self, other: &mut WriteBatch) {
        self.ops.append(&mut other.ops);
    }
}

/// A key-value pair read from a store.
pub type Pair = (Vec<u8>, Vec<u8>);

/// Durable, ordered key-value storage.
///
/// Calls are blocking (callers in async code go through
/// [`crate::blocking::run`]). Implementations are shared between threads.
pub trait KvStore: Send + Sync + 'static {
    /// The value of `key`, if any.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError>;
    /// Every pair with `start <= key < end`, in key order.
    fn scan(&self, start: &[u8], end: &[u8]) -> Result<Vec<Pair>, KvError>;
    /// The pair with the greatest key in `[start, end)`, if any.
    fn last(&self, start: &[u8], end: &[u8]) -> Result<Option<Pair>, KvError>;
    /// Applies `batch` atomically and durably: when this returns `Ok`, every operation is
    /// on disk; after a crash, either all of them are there or none.
    fn write(&self, batch: WriteBatch) -> Result<(), KvError>;
    /// Applies `batch` atomically, visible to reads at once, without waiting for the
    /// disk: it becomes durable with the next [`write`](Self::write). A crash may lose
    /// it — whole, with any lazy batch after it — but never a durable batch, and never
    /// part of one. Default: as durable as `write`.
    fn write_lazy(&self, batch: WriteBatch) -> Result<(), KvError> {
        self.write(batch)
    }
    /// Bytes the store occupies on disk (0 in memory).
    fn disk_usage(&self) -> u64 {
        0
    }
}

/// Which backend a node stores its log and snapshots in (`--storage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// redb: durable at every commit. The default.
    #[default]
    Redb,
    /// sled 0.34: the store berth was first specified with; see the module doc.
    Sled,
    /// Memory only: nothing survives the process. Tests and benchmarks only.
    Memory,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Redb => "redb",
            Backend::Sled => "sled",
            Backend::Memory => "memory",
        })
    }
}

impl FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "redb" => Ok(Backend::Redb),
            "sled" => Ok(Backend::Sled),
            "memory" => Ok(Backend::Memory),
            other => Err(format!("unknown storage backend {other:?} (expected redb, sled or memory)")),
        }
    }
}

/// Opens the store of `backend` in directory `dir` (created if missing).
pub fn open(backend: Backend, dir: &Path) -> Result<Arc<dyn KvStore>, KvError> {
    let open_err = |reason: String| KvError::Open { path: dir.display().to_string(), reason };
    if backend != Backend::Memory {
        std::fs::create_dir_all(dir).map_err(|e| open_err(e.to_string()))?;
    }
    Ok(match backend {
        Backend::Redb => Arc::new(RedbStore::open(&dir.join("berth.redb"))?),
        Backend::Sled => Arc::new(SledStore::open(&dir.join("sled"))?),
        Backend::Memory => Arc::new(MemStore::default()),
    })
}

#[cfg(test)]
mod tests;
