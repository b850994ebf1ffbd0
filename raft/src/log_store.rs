//! The Raft log, vote and commit pointer on a [`LogDisk`]: berth's append-only
//! [`Wal`](crate::wal::Wal) by default, or a [`KvStore`].

use std::collections::{btree_map, BTreeMap};
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use openraft::alias::{EntryOf, LogIdOf, VoteOf};
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader, RaftTypeConfig};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec;
use crate::kv::{KvError, KvStore};
use crate::locks::lock;
use crate::log_disk::{KvLog, LogDisk, LogOp, Meta};
use crate::stages::{self, Step};

/// openraft's [`RaftLogStorage`] over any [`LogDisk`], with a group-committing writer.
///
/// Every write goes, in the order openraft issues it, to one writer thread, which takes
/// whatever has queued up since its last commit and writes it as **one** transaction:
/// under load one fsync covers many appends (group commit), and at any load the
/// thread hand-over costs one wake-up, not the runtime hand-over of a blocking call on
/// an async worker. What waits for what:
///
/// - [`append`](RaftLogStorage::append) returns as soon as its entries are queued and
///   readable (they wait in an in-memory tail until written); its callback reports them flushed
///   once the commit that holds them is durable. openraft replicates entries once they
///   are submitted, so a leader's own fsync overlaps the round trip to its followers —
///   as Raft allows (thesis §10.2.1) — instead of preceding it.
/// - the vote, a truncation and a purge are durable before the call returns.
/// - the commit pointer is written lazily: it waits, without waking the writer, for the
///   next durable write to carry it, and is written on its own (lazily: no sync) only
///   after [`LAZY_HOLD`] without one or when the store closes. That is safe only because berth turns openraft's leader
///   restore off (`enable_leader_restore`, see `save_committed`).
///
/// - a **follower's** append (entries another node led: [`LogStore::for_node`]) is
///   written on the calling thread, without the writer, when the writer is idle, the
///   append is small and the disk is fast ([`INLINE_BYTES`], [`INLINE_SLOW`]): the
///   follower answers only once its entries are durable, so its thread has nothing
///   better to do meanwhile, and the two thread wake-ups of the hand-over leave its
///   answer's path. A leader's own entries always go through the writer — its flush
///   overlaps the round trip to its followers.
///
/// A write that fails fails every call of its group; openraft stops the node on a
/// storage error, and nothing it was told is flushed was not.
pub struct LogStore<C: RaftTypeConfig> {
    pointer: Arc<Pointer>,
    tail: Arc<Mutex<Tail<C>>>,
    writer: Arc<Writer>,
    appended: AppendedBytes,
    /// Whether an entry was led by another node (appends of such entries may be written
    /// inline); none: every append goes through the writer.
    foreign: Option<Foreign<C>>,
}

/// Tells an entry another node led ([`LogStore::for_node`]).
type Foreign<C> = Arc<dyn Fn(&<C as RaftTypeConfig>::Entry) -> bool + Send + Sync>;

/// Bytes of encoded entries appended to a [`LogStore`] since it was opened (what the
/// snapshot policy weighs against the size of the last snapshot).
#[derive(Clone, Default)]
pub struct AppendedBytes(Arc<AtomicU64>);

impl AppendedBytes {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl<C: RaftTypeConfig> Clone for LogStore<C> {
    fn clone(&self) -> Self {
        Self {
            pointer: self.pointer.clone(),
            tail: self.tail.clone(),
            writer: self.writer.clone(),
            appended: self.appended.clone(),
            foreign: self.foreign.clone(),
        }
    }
}

/// The writer thread's queue, and the thread. Dropped with the last clone of the
/// store: the queue is closed, written out, and the thread joined — so the store's
/// file is closed when the store is gone, and can be opened again.
struct Writer {
    io: Arc<Io>,
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The disk as the writer thread and inline appends share it: one write at a time, in
/// queue order.
struct Io {
    disk: Arc<dyn LogDisk>,
    /// Held for each write to the disk.
    writing: Mutex<()>,
    /// Jobs queued and not yet completed (their callbacks not yet run).
    queued: AtomicUsize,
    /// How long the last durable write took, in µs.
    last_write_us: AtomicU64,
}

impl Io {
    fn write(&self, ops: Vec<LogOp>, durable: bool) -> Result<(), KvError> {
        let _writing = lock(&self.writing);
        self.write_locked(ops, durable)
    }

    /// A write while `writing` is held.
    fn write_locked(&self, ops: Vec<LogOp>, durable: bool) -> Result<(), KvError> {
        let started = std::time::Instant::now();
        let result = self.disk.write(ops, durable);
        if durable {
            self.last_write_us.store(started.elapsed().as_micros().min(u128::from(u64::MAX)) as u64, Ordering::Relaxed);
        }
        result
    }
}

/// A follower writes an append inline only if its encoded entries are at most this
/// many bytes (a plan of thousands of placements goes to the writer: its write would
/// hold the node's runtime thread)...
pub const INLINE_BYTES: u64 = 64 * 1024;
/// ...and only while the last durable write took less than this (a slow or busy disk:
/// the writer thread waits for it, not the runtime).
pub const INLINE_SLOW: std::time::Duration = std::time::Duration::from_millis(2);

impl Drop for Writer {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Entries appended but possibly not yet written, readable meanwhile; and the last
/// ones written, kept decoded ([`Recent`]).
struct Tail<C: RaftTypeConfig> {
    entries: BTreeMap<u64, C::Entry>,
    /// While a truncation is on its way to the store: entries the store still holds
    /// from this index on are gone.
    cut: Option<u64>,
    recent: Recent<C>,
}

/// The last entries written, as they were appended: the state machine reads each
/// entry right after it commits (soon after it was written), and replication to a
/// follower a little behind reads the last few — from here instead of a read and a
/// decode from the disk. Bounded by [`RECENT_ENTRIES`] and [`RECENT_BYTES`] (encoded),
/// oldest out first; truncated and purged with the log.
struct Recent<C: RaftTypeConfig> {
    entries: BTreeMap<u64, (C::Entry, u64)>,
    bytes: u64,
}

/// At most this many written entries are kept in [`Recent`]...
const RECENT_ENTRIES: usize = 1024;
/// ...and at most this many of their encoded bytes.
const RECENT_BYTES: u64 = 8 * 1024 * 1024;

impl<C: RaftTypeConfig> Recent<C> {
    fn insert(&mut self, index: u64, entry: C::Entry, bytes: u64) {
        if let Some((_, old)) = self.entries.insert(index, (entry, bytes)) {
            self.bytes -= old;
        }
        self.bytes += bytes;
        while self.entries.len() > RECENT_ENTRIES || self.bytes > RECENT_BYTES {
            let Some((_, (_, b))) = self.entries.pop_first() else { break };
            self.bytes -= b;
        }
    }

    /// Keeps the entries below `index` only.
    fn cut(&mut self, index: u64) {
        self.bytes -= self.entries.split_off(&index).values().map(|(_, b)| b).sum::<u64>();
    }

    /// Keeps the entries from `index` on only.
    fn keep_from(&mut self, index: u64) {
        let keep = self.entries.split_off(&index);
        self.entries = keep;
        self.bytes = self.entries.values().map(|(_, b)| b).sum();
    }
}

type Done = Box<dyn FnOnce(Result<(), KvError>) + Send>;

/// One durable write, queued for the writer thread, and what to tell when it is done.
struct Job {
    ops: Vec<LogOp>,
    done: Done,
}

/// At most this many bytes go into one group transaction (one scheduler plan can be
/// tens of megabytes; a group of them should not hold every appender waiting).
const GROUP_BYTES: usize = 64 * 1024 * 1024;

/// How long the commit pointer may wait in its slot for a durable write to ride along
/// with before it is written on its own.
pub const LAZY_HOLD: std::time::Duration = std::time::Duration::from_millis(100);

/// The commit pointer waiting for a write to ride along with, and since when (the
/// first pointer held: later ones replace it, the wait does not restart).
#[derive(Default)]
struct Pointer(Mutex<Option<(LogOp, std::time::Instant)>>);

impl Pointer {
    fn set(&self, op: LogOp) {
        let mut p = lock(&self.0);
        let since = p.as_ref().map_or_else(std::time::Instant::now, |(_, since)| *since);
        *p = Some((op, since));
    }

    /// Puts `op` back unless a newer pointer came meanwhile.
    fn restore(&self, op: LogOp, since: std::time::Instant) {
        let mut p = lock(&self.0);
        if p.is_none() {
            *p = Some((op, since));
        }
    }
}

/// The writer thread: one durable write per group of queued jobs; completions run in
/// queue order after the write.
///
/// The commit pointer (openraft saves it after every commit) is not a job: it waits in
/// a slot ([`Pointer`]) without waking the writer, goes into the next group's write,
/// or is written on its own once it has waited [`LAZY_HOLD`] (the writer looks at the
/// slot at least that often), or when the queue closes. At one write at a time that
/// saves a write per entry (the append, then the pointer, became the append with the
/// previous pointer) and, since session 13, the writer's wake-up for each pointer.
///
/// The slot is read **before** the group is taken from the queue: the entries a pointer
/// names were queued before openraft saved it, so they are in this group or an earlier
/// one — a pointer never becomes durable ahead of its entries. A group cut short by
/// [`GROUP_BYTES`] leaves the pointer for the next one.
fn write_loop(io: Arc<Io>, jobs: mpsc::Receiver<Job>, pointer: Arc<Pointer>) {
    let write_alone = |op: LogOp| {
        if let Err(e) = io.write(vec![op], false) {
            tracing::error!(error = %e, "the Raft log's lazy write failed");
        }
    };
    loop {
        let wait = lock(&pointer.0).as_ref().map_or(LAZY_HOLD, |(_, since)| LAZY_HOLD.saturating_sub(since.elapsed()));
        let first = match jobs.recv_timeout(wait) {
            Ok(job) => Some(job),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                if let Some((op, _)) = lock(&pointer.0).take() {
                    write_alone(op);
                }
                return;
            }
        };
        // The pointer first, then the queue (the ordering argument above).
        let held = lock(&pointer.0).take();
        let first = match first.map_or_else(|| jobs.try_recv().ok(), Some) {
            Some(job) => job,
            // Nothing queued after the pointer was taken: every entry it names is
            // written. Due, it is written alone; else it waits on.
            None => {
                match held {
                    Some((op, since)) if since.elapsed() >= LAZY_HOLD => write_alone(op),
                    Some((op, since)) => pointer.restore(op, since),
                    None => {}
                }
                continue;
            }
        };
        let mut bytes = op_bytes(&first.ops);
        let mut group = vec![first];
        let mut cut = bytes >= GROUP_BYTES;
        while !cut {
            match jobs.try_recv() {
                Ok(job) => {
                    bytes += op_bytes(&job.ops);
                    group.push(job);
                    cut = bytes >= GROUP_BYTES;
                }
                Err(_) => break,
            }
        }
        let mut ops = Vec::new();
        for job in &mut group {
            ops.append(&mut job.ops);
        }
        match held {
            Some((op, since)) if cut => pointer.restore(op, since),
            Some((op, _)) => ops.push(op),
            None => {}
        }
        let result = io.write(ops, true);
        if let Err(e) = &result {
            tracing::error!(error = %e, jobs = group.len(), "the Raft log write failed");
        }
        let jobs_done = group.len();
        for job in group {
            (job.done)(result.clone());
        }
        io.queued.fetch_sub(jobs_done, Ordering::SeqCst);
    }
}

fn op_bytes(ops: &[LogOp]) -> usize {
    ops.iter().map(LogOp::bytes).sum()
}

fn writer_stopped() -> io::Error {
    io::Error::other("the Raft log writer has stopped")
}

impl<C: RaftTypeConfig> LogStore<C> {
    /// A log store with one key per entry in `kv` ([`KvLog`]).
    pub fn new(kv: Arc<dyn KvStore>) -> Self {
        Self::on(Arc::new(KvLog(kv)))
    }

    /// A log store on `disk`, with its writer thread (which ends when the last clone of
    /// the store is dropped, once the queue is written).
    pub fn on(disk: Arc<dyn LogDisk>) -> Self {
        let (jobs, queue) = mpsc::channel();
        let io = Arc::new(Io {
            disk,
            writing: Mutex::new(()),
            queued: AtomicUsize::new(0),
            last_write_us: AtomicU64::new(0),
        });
        let pointer = Arc::new(Pointer::default());
        let (writer_io, writer_pointer) = (io.clone(), pointer.clone());
        let thread = std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || write_loop(writer_io, queue, writer_pointer))
            .expect("cannot start the Raft log writer thread");
        let writer = Arc::new(Writer { io, jobs: Some(jobs), thread: Some(thread) });
        let tail = Arc::new(Mutex::new(Tail {
            entries: BTreeMap::new(),
            cut: None,
            recent: Recent { entries: BTreeMap::new(), bytes: 0 },
        }));
        Self { pointer, tail, writer, appended: AppendedBytes::default(), foreign: None }
    }

    /// The count of bytes appended through this store (and its clones).
    pub fn appended_bytes(&self) -> AppendedBytes {
        self.appended.clone()
    }

    fn tail(&self) -> std::sync::MutexGuard<'_, Tail<C>> {
        lock(&self.tail)
    }

    fn submit(&self, ops: Vec<LogOp>, done: Done) -> io::Result<()> {
        let jobs = self.writer.jobs.as_ref().ok_or_else(writer_stopped)?;
        self.writer.io.queued.fetch_add(1, Ordering::SeqCst);
        jobs.send(Job { ops, done }).map_err(|_| {
            self.writer.io.queued.fetch_sub(1, Ordering::SeqCst);
            writer_stopped()
        })
    }

    /// Writes `ops` on this thread and returns what the write returned, if nothing is
    /// queued for the writer and the disk is fast; else hands `ops` back.
    ///
    /// Order: queued jobs hold `queued` above zero until written and reported, and a job
    /// queued while this write holds `writing` waits for it — so an inline write never
    /// overtakes a queued one, nor is overtaken. The commit pointer waiting in its slot
    /// rides along: every entry it names was appended before it was saved, and all of
    /// those are written (nothing is queued) or in `ops`.
    fn write_inline(&self, mut ops: Vec<LogOp>) -> Result<Result<(), KvError>, Vec<LogOp>> {
        let io = &self.writer.io;
        if io.last_write_us.load(Ordering::Relaxed) >= INLINE_SLOW.as_micros() as u64 {
            return Err(ops);
        }
        // Never waits: a write under way (the writer's, or the pointer written alone)
        // sends this one to the writer too.
        let writing = match io.writing.try_lock() {
            Ok(w) => w,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return Err(ops),
        };
        if io.queued.load(Ordering::SeqCst) != 0 {
            return Err(ops);
        }
        if let Some((op, _)) = lock(&self.pointer.0).take() {
            ops.push(op);
        }
        let result = io.write_locked(ops, true);
        drop(writing);
        if let Err(e) = &result {
            tracing::error!(error = %e, "the Raft log write failed");
        }
        Ok(result)
    }

    /// Queues `op` and waits until it is durable.
    async fn write_durable(&self, op: LogOp) -> io::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(vec![op], Box::new(move |r| drop(tx.send(r))))?;
        rx.await.map_err(|_| writer_stopped())?.map_err(io::Error::from)
    }

    fn get_meta<T: DeserializeOwned>(&self, which: Meta) -> io::Result<Option<T>> {
        match self.writer.io.disk.meta(which)? {
            None => Ok(None),
            Some(bytes) => codec::decode(&bytes).map(Some),
        }
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
    EntryOf<C>: Serialize + DeserializeOwned + Clone,
    VoteOf<C>: Serialize + DeserializeOwned,
{
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<C::Entry>, io::Error> {
        let Some((start, end)) = bounds(&range) else {
            return Ok(Vec::new());
        };
        // The tail first, then the store: an entry written in between is in both (the
        // tail's copy wins), never in neither.
        let (mut pending, cut) = {
            let tail = self.tail();
            let range = match end {
                Some(e) if e <= start => return Ok(Vec::new()),
                Some(e) => (Bound::Included(start), Bound::Excluded(e)),
                None => (Bound::Included(start), Bound::Unbounded),
            };
            // Written ones first: an entry still waiting to be written replaces one
            // written at its index (never the case after a truncation, which cuts both).
            let mut found: BTreeMap<u64, C::Entry> =
                tail.recent.entries.range(range).map(|(i, (e, _))| (*i, e.clone())).collect();
            found.extend(tail.entries.range(range).map(|(i, e)| (*i, e.clone())));
            (found, tail.cut)
        };
        // Replication mostly reads what was just appended, the state machine what was
        // just written: all in the tail.
        if let (Some(e), Some((&first, _))) = (end, pending.first_key_value()) {
            if first == start && pending.len() as u64 == e - start {
                return Ok(pending.into_values().collect());
            }
        }
        let mut out = Vec::new();
        for (index, value) in self.writer.io.disk.entries(start, end)? {
            if let Some(entry) = pending.remove(&index) {
                out.push(entry);
            } else if cut.is_none_or(|c| index < c) {
                out.push(codec::decode::<EntryOf<C>>(&value)?);
            }
        }
        // What the tail holds beyond the store.
        out.extend(pending.into_values());
        out.sort_by_key(|e| e.index());
        Ok(out)
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<C>>, io::Error> {
        self.get_meta(Meta::Vote)
    }
}

impl<C> RaftLogStorage<C> for LogStore<C>
where
    C: RaftTypeConfig,
    EntryOf<C>: Serialize + DeserializeOwned + Clone,
    VoteOf<C>: Serialize + DeserializeOwned,
    LogIdOf<C>: Serialize + DeserializeOwned,
{
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, io::Error> {
        let last_purged_log_id: Option<LogIdOf<C>> = self.get_meta(Meta::Purged)?;
        let (tail_last, cut) = {
            let tail = self.tail();
            (tail.entries.last_key_value().map(|(_, e)| e.log_id()), tail.cut)
        };
        let stored_last = match self.writer.io.disk.last_entry(cut)? {
            Some(v) => Some(codec::decode::<EntryOf<C>>(&v)?.log_id()),
            None => None,
        };
        let last_log_id = match (tail_last, stored_last) {
            (Some(t), Some(s)) => Some(if t.index() >= s.index() { t } else { s }),
            (t, s) => t.or(s).or_else(|| last_purged_log_id.clone()),
        };
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<C>) -> Result<(), io::Error> {
        self.write_durable(LogOp::Vote(codec::encode(vote)?)).await
    }

    /// Lazy: the pointer rides along with the next durable write, so after a power cut
    /// it can come back older than it was. Raft treats the commit index as volatile, and
    /// berth can too because it turns openraft's leader restore off
    /// (`enable_leader_restore: false`, in the node's Raft config): with it on, a
    /// leader that restarts with its vote still committed resumes its term without an
    /// election and reuses its first entry of the term as the "noop", and a
    /// linearizable read waits only for `max(noop, committed)` — the persisted pointer
    /// is then the only lower bound of the read index, and a stale one serves stale
    /// reads (the chaos suite's restart-all nemesis found exactly that; docs/chaos.md,
    /// "A bug the suite found"). With restore off, a restarted leader is elected anew
    /// and commits a noop of its new term, which bounds every read.
    ///
    /// What a stale pointer still costs: after a restart the replica starts further
    /// back and catches up from the leader. The node's agent does not act on its
    /// replica before it has caught up with the leader's commit (`agent::Agent`).
    async fn save_committed(&mut self, committed: Option<LogIdOf<C>>) -> Result<(), io::Error> {
        self.pointer.set(LogOp::Committed(codec::encode(&committed)?));
        Ok(())
    }

    /// The pointer is never written ahead of the entries it names (`write_loop`); should
    /// one be found beyond the log anyway, it is dropped with a warning — openraft
    /// re-applies up to the pointer at start, and would stop on the missing entries,
    /// while a pointer known to nobody only means learning the commit from the leader.
    async fn read_committed(&mut self) -> Result<Option<LogIdOf<C>>, io::Error> {
        let committed = self.get_meta::<Option<LogIdOf<C>>>(Meta::Committed)?.flatten();
        if let Some(c) = &committed {
            let last = self.get_log_state().await?.last_log_id;
            if last.as_ref().is_none_or(|l| l.index() < c.index()) {
                tracing::warn!(committed = c.index(), last = ?last.map(|l| l.index()), "the saved commit pointer is beyond the log; ignored");
                return Ok(None);
            }
        }
        Ok(committed)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<C>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = C::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<C::Entry> = entries.into_iter().collect();
        let mut ops = Vec::with_capacity(entries.len());
        let mut ids = Vec::with_capacity(entries.len());
        let mut bytes = 0;
        for entry in &entries {
            let encoded = codec::encode(entry)?;
            bytes += encoded.len() as u64;
            ids.push((entry.log_id(), encoded.len() as u64));
            ops.push(LogOp::Entry { index: entry.index(), bytes: encoded });
        }
        self.appended.0.fetch_add(bytes, Ordering::Relaxed);
        let foreign = match (&self.foreign, entries.first()) {
            (Some(foreign), Some(first)) => foreign(first),
            _ => false,
        };
        stages::mark(if foreign { Step::FollowerAppend } else { Step::Append });
        let inline = foreign && bytes <= INLINE_BYTES;
        {
            let mut tail = self.tail();
            for entry in entries {
                tail.entries.insert(entry.index(), entry);
            }
        }
        let tail = self.tail.clone();
        let done: Done = Box::new(move |result| {
            if result.is_ok() {
                stages::mark(Step::Durable);
                // Written: the store serves them from now on (the last ones from
                // `recent`). Only these very entries leave the tail (a later append,
                // or a truncation, may have replaced or removed one).
                let mut guard = lock(&tail);
                let tail = &mut *guard;
                for (id, bytes) in ids {
                    if let btree_map::Entry::Occupied(e) = tail.entries.entry(id.index()) {
                        if e.get().log_id() == id {
                            tail.recent.insert(id.index(), e.remove(), bytes);
                        }
                    }
                }
            }
            callback.io_completed(result.map_err(io::Error::from));
        });
        let ops = if inline {
            match self.write_inline(ops) {
                Ok(result) => {
                    done(result);
                    return Ok(());
                }
                Err(ops) => ops,
            }
        } else {
            ops
        };
        self.submit(ops, done)
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogIdOf<C>>) -> Result<(), io::Error> {
        let from = match last_log_id {
            Some(id) => id.index() + 1,
            None => 0,
        };
        tracing::debug!(from, "truncate log");
        {
            let mut tail = self.tail();
            tail.entries.split_off(&from);
            tail.recent.cut(from);
            tail.cut = Some(tail.cut.map_or(from, |c| c.min(from)));
        }
        let result = self.write_durable(LogOp::TruncateFrom(from)).await;
        self.tail().cut = None;
        result
    }

    async fn purge(&mut self, log_id: LogIdOf<C>) -> Result<(), io::Error> {
        tracing::debug!(upto = log_id.index(), "purge log");
        // The purge pointer and the deletion are one operation: after a crash the log
        // never has a hole below a pointer that does not explain it.
        self.write_durable(LogOp::Purge { upto: log_id.index(), log_id: codec::encode(&log_id)? }).await?;
        let mut tail = self.tail();
        let keep = tail.entries.split_off(&(log_id.index() + 1));
        tail.entries = keep;
        tail.recent.keep_from(log_id.index() + 1);
        Ok(())
    }
}

impl<SM: crate::StateMachine> LogStore<crate::TypeConfig<SM>> {
    /// This store is node `id`'s: appends of entries another node led — what a follower
    /// receives — are written inline when they can be (see [`LogStore`]).
    pub fn for_node(mut self, id: u64) -> Self {
        self.foreign = Some(Arc::new(move |e: &crate::typ::Entry<SM>| e.log_id.leader_id.node_id != id));
        self
    }
}
