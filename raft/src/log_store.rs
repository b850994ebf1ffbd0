//! The Raft log, vote and commit pointer on a [`KvStore`].

use std::fmt::Debug;
use std::io;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::alias::{EntryOf, LogIdOf, VoteOf};
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader, RaftTypeConfig};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::kv::{KvStore, WriteBatch};
use crate::{blocking, codec, keys};

/// openraft's [`RaftLogStorage`] over any [`KvStore`].
///
/// Every mutation is one durable [`KvStore::write`], done inline (see
/// [`blocking::run`]) so that I/O happens in exactly the order openraft issues it. An
/// `append` reports completion through its callback only after the batch is on disk,
/// as openraft's storage contract requires; openraft already hands us entries in
/// batches, so under load one fsync covers many entries.
pub struct LogStore<C> {
    kv: Arc<dyn KvStore>,
    _c: PhantomData<fn() -> C>,
}

impl<C> Clone for LogStore<C> {
    fn clone(&self) -> Self {
        Self { kv: self.kv.clone(), _c: PhantomData }
    }
}

impl<C> LogStore<C> {
    pub fn new(kv: Arc<dyn KvStore>) -> Self {
        Self { kv, _c: PhantomData }
    }
}

impl<C: RaftTypeConfig> LogStore<C> {
    fn get_meta<T: DeserializeOwned>(&self, key: &[u8]) -> io::Result<Option<T>> {
        match self.kv.get(key)? {
            None => Ok(None),
            Some(bytes) => codec::decode(&bytes).map(Some),
        }
    }

    fn put_meta<T: Serialize>(&self, key: &[u8], value: &T) -> io::Result<()> {
        let mut batch = WriteBatch::new();
        batch.put(key.to_vec(), codec::encode(value)?);
        let kv = self.kv.clone();
        blocking::run(move || kv.write(batch))?;
        Ok(())
    }
}

fn bounds(range: &impl RangeBounds<u64>) -> Option<(u64, Option<u64>)> {
    let start = match range.start_bound() {
        Bound::Included(&x) => x,
        Bound::Excluded(&x) => x.checked_add(1)?,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&x) => x.checked_add(1),
        Bound::Excluded(&x) => Some(x),
        Bound::Unbounded => None,
    };
    Some((start, end))
}

impl<C> RaftLogReader<C> for LogStore<C>
where
    C: RaftTypeConfig,
    EntryOf<C>: Serialize + DeserializeOwned,
    VoteOf<C>: Serialize + DeserializeOwned,
{
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<C::Entry>, io::Error> {
        let Some((start, end)) = bounds(&range) else {
            return Ok(Vec::new());
        };
        let end_key = match end {
            Some(e) => keys::log(e),
            None => keys::log_end(),
        };
        let pairs = self.kv.scan(&keys::log(start), &end_key)?;
        pairs.iter().map(|(_, v)| codec::decode::<EntryOf<C>>(v)).collect()
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<C>>, io::Error> {
        self.get_meta(keys::VOTE)
    }
}

impl<C> RaftLogStorage<C> for LogStore<C>
where
    C: RaftTypeConfig,
    EntryOf<C>: Serialize + DeserializeOwned,
    VoteOf<C>: Serialize + DeserializeOwned,
    LogIdOf<C>: Serialize + DeserializeOwned,
{
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, io::Error> {
        let last_purged_log_id: Option<LogIdOf<C>> = self.get_meta(keys::PURGED)?;
        let last = self.kv.last(&keys::log(0), &keys::log_end())?;
        let last_log_id = match last {
            Some((_, v)) => Some(codec::decode::<EntryOf<C>>(&v)?.log_id()),
            None => last_purged_log_id.clone(),
        };
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<C>) -> Result<(), io::Error> {
        self.put_meta(keys::VOTE, vote)
    }

    /// Durable, like every other write here — and it must be, though Raft calls the
    /// commit index volatile. openraft lets a leader that restarts with its vote still
    /// committed resume its term without an election, and then reuses its first entry
    /// of the term as the "noop": a linearizable read waits for
    /// `max(noop, committed)`, so after a crash of every node the persisted committed
    /// pointer is the only lower bound of the read index. Written lazily (an experiment
    /// with redb `Durability::None`), it came back stale after a power cut and reads
    /// missed acknowledged writes — the chaos suite's restart-all nemesis found it
    /// within seconds (docs/chaos.md, "A bug the suite found").
    async fn save_committed(&mut self, committed: Option<LogIdOf<C>>) -> Result<(), io::Error> {
        self.put_meta(keys::COMMITTED, &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<C>>, io::Error> {
        Ok(self.get_meta::<Option<LogIdOf<C>>>(keys::COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<C>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = C::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = WriteBatch::new();
        for entry in entries {
            batch.put(keys::log(entry.index()), codec::encode(&entry)?);
        }
        let kv = self.kv.clone();
        let res = blocking::run(move || kv.write(batch)).map_err(io::Error::from);
        match res {
            Ok(()) => {
                callback.io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.io_completed(Err(io::Error::new(e.kind(), e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogIdOf<C>>) -> Result<(), io::Error> {
        let from = match last_log_id {
            Some(id) => id.index() + 1,
            None => 0,
        };
        tracing::debug!(from, "truncate log");
        let mut batch = WriteBatch::new();
        batch.delete_range(keys::log(from), keys::log_end());
        let kv = self.kv.clone();
        blocking::run(move || kv.write(batch))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogIdOf<C>) -> Result<(), io::Error> {
        tracing::debug!(upto = log_id.index(), "purge log");
        // The purge pointer and the deletion land in one batch: after a crash the log
        // never has a hole below a pointer that does not explain it.
        let mut batch = WriteBatch::new();
        batch.put(keys::PURGED.to_vec(), codec::encode(&log_id)?);
        batch.delete_range(keys::log(0), keys::log(log_id.index() + 1));
        let kv = self.kv.clone();
        blocking::run(move || kv.write(batch))?;
        Ok(())
    }
}
