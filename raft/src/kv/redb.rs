//! The redb backend: one table of byte keys to byte values in one file.

use std::path::Path;

use redb::{Database, Durability, ReadableDatabase, TableDefinition};

use super::{KvError, KvStore, Op, Pair, WriteBatch};

const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("berth");

/// A [`KvStore`] on redb. Every [`write`](KvStore::write) is one write transaction
/// committed with redb's default durability (`Immediate`: fsync before commit returns);
/// a [`write_lazy`](KvStore::write_lazy) one committed with `Durability::None`.
pub struct RedbStore {
    db: Database,
    path: std::path::PathBuf,
}

fn io(e: impl std::fmt::Display) -> KvError {
    KvError::Io(e.to_string())
}

impl RedbStore {
    /// Opens (or creates) the database file at `path`.
    pub fn open(path: &Path) -> Result<Self, KvError> {
        let db = Database::create(path)
            .map_err(|e| KvError::Open { path: path.display().to_string(), reason: e.to_string() })?;
        // Make sure the table exists so readers never see "table does not exist".
        let tx = db.begin_write().map_err(io)?;
        tx.open_table(TABLE).map_err(io)?;
        tx.commit().map_err(io)?;
        Ok(Self { db, path: path.to_path_buf() })
    }
}

impl KvStore for RedbStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        let tx = self.db.begin_read().map_err(io)?;
        let table = tx.open_table(TABLE).map_err(io)?;
        Ok(table.get(key).map_err(io)?.map(|v| v.value().to_vec()))
    }

    fn scan(&self, start: &[u8], end: &[u8]) -> Result<Vec<Pair>, KvError> {
        if start >= end {
            return Ok(Vec::new());
        }
        let tx = self.db.begin_read().map_err(io)?;
        let table = tx.open_table(TABLE).map_err(io)?;
        let mut out = Vec::new();
        for item in table.range(start..end).map_err(io)? {
            let (k, v) = item.map_err(io)?;
            out.push((k.value().to_vec(), v.value().to_vec()));
        }
        Ok(out)
    }

    fn last(&self, start: &[u8], end: &[u8]) -> Result<Option<Pair>, KvError> {
        if start >= end {
            return Ok(None);
        }
        let tx = self.db.begin_read().map_err(io)?;
        let table = tx.open_table(TABLE).map_err(io)?;
        let mut range = table.range(start..end).map_err(io)?;
        match range.next_back() {
            None => Ok(None),
            Some(item) => {
                let (k, v) = item.map_err(io)?;
                Ok(Some((k.value().to_vec(), v.value().to_vec())))
            }
        }
    }

    fn write(&self, batch: WriteBatch) -> Result<(), KvError> {
        self.commit(batch, Durability::Immediate)
    }

    /// redb's `Durability::None`: the transaction is visible at once and made durable
    /// by the next `Immediate` commit.
    fn write_lazy(&self, batch: WriteBatch) -> Result<(), KvError> {
        self.commit(batch, Durability::None)
    }

    fn disk_usage(&self) -> u64 {
        std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0)
    }
}

impl RedbStore {
    fn commit(&self, batch: WriteBatch, durability: Durability) -> Result<(), KvError> {
        let mut tx = self.db.begin_write().map_err(io)?;
        tx.set_durability(durability).map_err(io)?;
        {
            let mut table = tx.open_table(TABLE).map_err(io)?;
            for op in batch.ops {
                match op {
                    Op::Put(k, v) => {
                        table.insert(k.as_slice(), v.as_slice()).map_err(io)?;
                    }
                    Op::Delete(k) => {
                        table.remove(k.as_slice()).map_err(io)?;
                    }
                    Op::DeleteRange(start, end) => {
                        if start < end {
                            table.retain_in(start.as_slice()..end.as_slice(), |_, _| false).map_err(io)?;
                        }
                    }
                }
            }
        }
        tx.commit().map_err(io)
    }
}
