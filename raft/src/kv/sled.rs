//! The sled 0.34 backend.
//!
//! Kept because berth was first specified with sled, and so that its behaviour can be
//! measured side by side with redb (`docs/storage.md`). It is not the default: sled's
//! `flush()` uses `sync_file_range` on Linux, which does not flush the disk's write
//! cache (sled #1452), and corruption after an abrupt stop has been reported
//! (sled #1509, #1533). Both are open upstream; sled 0.34.7 is the last stable release.

use std::path::Path;

use super::{KvError, KvStore, Op, Pair, WriteBatch};

/// A [`KvStore`] on one sled tree. A [`write`](KvStore::write) is one atomic
/// `apply_batch` followed by `flush()`.
pub struct SledStore {
    db: sled::Db,
}

fn io(e: impl std::fmt::Display) -> KvError {
    KvError::Io(e.to_string())
}

impl SledStore {
    /// Opens (or creates) the sled database in directory `path`.
    pub fn open(path: &Path) -> Result<Self, KvError> {
        let db = sled::Config::new()
            .path(path)
            .open()
            .map_err(|e| KvError::Open { path: path.display().to_string(), reason: e.to_string() })?;
        Ok(Self { db })
    }
}

impl KvStore for SledStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        Ok(self.db.get(key).map_err(io)?.map(|v| v.to_vec()))
    }

    fn scan(&self, start: &[u8], end: &[u8]) -> Result<Vec<Pair>, KvError> {
        if start >= end {
            return Ok(Vec::new());
        }
        self.db.range(start..end).map(|item| item.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(io)).collect()
    }

    fn last(&self, start: &[u8], end: &[u8]) -> Result<Option<Pair>, KvError> {
        if start >= end {
            return Ok(None);
        }
        match self.db.range(start..end).next_back() {
            None => Ok(None),
            Some(item) => item.map(|(k, v)| Some((k.to_vec(), v.to_vec()))).map_err(io),
        }
    }

    fn write(&self, batch: WriteBatch) -> Result<(), KvError> {
        self.apply(batch)?;
        self.db.flush().map_err(io)?;
        Ok(())
    }

    fn write_lazy(&self, batch: WriteBatch) -> Result<(), KvError> {
        self.apply(batch)
    }

    fn disk_usage(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

impl SledStore {
    /// Applies `batch` atomically, without flushing.
    fn apply(&self, batch: WriteBatch) -> Result<(), KvError> {
        let mut b = sled::Batch::default();
        // Keys this batch put so far: a range delete later in the batch must remove
        // them too (the log writer groups an append and a truncation into one batch).
        let mut put = std::collections::BTreeSet::new();
        for op in batch.ops {
            match op {
                Op::Put(k, v) => {
                    put.insert(k.clone());
                    b.insert(k, v)
                }
                Op::Delete(k) => {
                    put.remove(&k);
                    b.remove(k)
                }
                Op::DeleteRange(start, end) => {
                    if start < end {
                        // sled has no range delete: the keys are read and removed in the
                        // same atomic batch. The log store only range-deletes what
                        // nothing writes concurrently (it owns its key space).
                        for item in self.db.range(start.as_slice()..end.as_slice()).keys() {
                            b.remove(item.map_err(io)?);
                        }
                        let doomed: Vec<Vec<u8>> = put.range(start.clone()..end).cloned().collect();
                        for k in doomed {
                            put.remove(&k);
                            b.remove(k);
                        }
                    }
                }
            }
        }
        self.db.apply_batch(b).map_err(io)
    }
}
