//! berth's append-only Raft log: the default [`LogDisk`].
//!
//! A B-tree store commits an append as a transaction — a dozen page writes and an
//! fsync, 70–90 µs of CPU on each node (docs/benchmarks.md, session 13) — though a log
//! only ever grows at its end. Here a group of log operations is **one frame** written
//! with one `pwrite` at the end of a preallocated segment file, then one `fdatasync`
//! if the group is durable. Where everything is:
//!
//! - `<dir>/<seq as 16 hex digits>.wal`: segments, numbered from 1, each preallocated
//!   to [`SEGMENT_BYTES`] (`fallocate`, so a write does not grow the file and the
//!   `fdatasync` has no size to flush; a frame larger than a segment grows its file).
//!   A segment starts with a 16-byte header (magic `BERTHWAL`, version) and then
//!   holds frames back to back; the rest is zeros.
//! - A frame is `len: u32 LE`, `crc: u32 LE`, then `len` bytes of operations (an entry,
//!   the vote, the commit pointer, a truncation, a purge; [`LogOp`]). The CRC is a
//!   CRC-32 over the length and the payload, **chained**: seeded with the previous
//!   frame's CRC (the first frame of a segment with the segment's number). So a frame
//!   is valid only after the very frames that preceded it when it was written: bytes
//!   left behind by a frame that was written but never made durable before a crash
//!   cannot be read back as valid once new frames overwrite the start of the region.
//! - Every segment begins with a frame of the state as it was when the segment was
//!   created (vote, commit pointer, last purge), in the file before it is renamed into
//!   place, so any suffix of the segments is a whole log: segments whose every entry is
//!   purged are deleted, oldest first, after the purge is durable.
//! - A segment left for the next gets an end marker (a zero length where its next
//!   frame would go) and is synced first: what a crash left behind its last frame is
//!   never read as a frame of a segment that has a successor.
//!
//! Reading back (at open): segments in order, frames in order, each applied to an
//! in-memory index (entry index → segment, offset, length; the vote, pointer and purge
//! as bytes). In the last segment the first zero length, short frame or CRC mismatch
//! is the end — what a crash left half-written, never acknowledged — and writing
//! resumes there. Anywhere else it is corruption, and the log refuses to open.
//! Entries are read from the files with `pread` (the page cache holds the recent
//! ones; the log store keeps the entries it has not yet written in memory anyway).
//!
//! Why it is safe: a durable write returns only after `fdatasync` of the segment it
//! wrote, and a new segment is started only after the previous one was synced, so an
//! acknowledged frame never sits behind a torn one. Segment files appear by an atomic
//! rename of a synced temporary file, and the directory is synced after.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::keys;
use crate::kv::{KvError, KvStore, WriteBatch};
use crate::locks::lock;
use crate::log_disk::{LogDisk, LogOp, Meta};

/// The size a segment is preallocated to.
pub const SEGMENT_BYTES: u64 = 16 << 20;
const MAGIC: &[u8; 8] = b"BERTHWAL";
const VERSION: u32 = 1;
const HEADER: u64 = 16;
const FRAME_HEADER: u64 = 8;

const ENTRY: u8 = 1;
const VOTE: u8 = 2;
const COMMITTED: u8 = 3;
const TRUNCATE: u8 = 4;
const PURGE: u8 = 5;

/// The append-only log (module docs).
pub struct Wal {
    dir: PathBuf,
    segment_bytes: u64,
    writer: Mutex<Writer>,
    index: Mutex<Index>,
}

/// Where the next frame goes. Held for a whole write: writes are serialized.
struct Writer {
    file: Arc<File>,
    seq: u64,
    /// Where the segment's own frames begin (after its state): a segment holding no
    /// more than its state is not rotated away from, whatever comes.
    start: u64,
    pos: u64,
    crc: u32,
    /// Set by the first failed write: the segment's end is then unknown, and every
    /// later write fails too (openraft stops the node at the first).
    failed: Option<String>,
}

/// What the log holds, for readers.
#[derive(Default)]
struct Index {
    /// Oldest first; the last is being written. Numbers are consecutive.
    segments: VecDeque<Segment>,
    entries: BTreeMap<u64, Loc>,
    vote: Option<Vec<u8>>,
    committed: Option<Vec<u8>>,
    purged: Option<(u64, Vec<u8>)>,
}

struct Segment {
    seq: u64,
    file: Arc<File>,
    /// The greatest entry index written in it (0: none): deletable once purged.
    max_index: u64,
}

/// Where an encoded entry is.
#[derive(Debug, Clone, Copy)]
struct Loc {
    seq: u64,
    off: u64,
    len: u32,
}

fn io_err(what: impl std::fmt::Display, e: impl std::fmt::Display) -> KvError {
    KvError::Io(format!("{what}: {e}"))
}

fn segment_name(seq: u64) -> String {
    format!("{seq:016x}.wal")
}

fn seed(seq: u64) -> u32 {
    crc32fast::hash(&seq.to_le_bytes())
}

fn chain(prev: u32, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new_with_initial(prev);
    h.update(&(payload.len() as u32).to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// Encodes `ops` as a frame's payload.
fn encode(ops: &[LogOp]) -> Result<Vec<u8>, KvError> {
    let mut out = Vec::with_capacity(ops.iter().map(|o| o.bytes() + 13).sum());
    let len = |b: &[u8]| -> Result<[u8; 4], KvError> {
        u32::try_from(b.len())
            .map(u32::to_le_bytes)
            .map_err(|_| KvError::Io(format!("a log record of {} bytes is too large", b.len())))
    };
    for op in ops {
        match op {
            LogOp::Entry { index, bytes } => {
                out.push(ENTRY);
                out.extend_from_slice(&index.to_le_bytes());
                out.extend_from_slice(&len(bytes)?);
                out.extend_from_slice(bytes);
            }
            LogOp::Vote(b) | LogOp::Committed(b) => {
                out.push(if matches!(op, LogOp::Vote(_)) { VOTE } else { COMMITTED });
                out.extend_from_slice(&len(b)?);
                out.extend_from_slice(b);
            }
            LogOp::TruncateFrom(from) => {
                out.push(TRUNCATE);
                out.extend_from_slice(&from.to_le_bytes());
            }
            LogOp::Purge { upto, log_id } => {
                out.push(PURGE);
                out.extend_from_slice(&upto.to_le_bytes());
                out.extend_from_slice(&len(log_id)?);
                out.extend_from_slice(log_id);
            }
        }
    }
    if out.len() as u64 > u32::MAX as u64 - FRAME_HEADER {
        return Err(KvError::Io(format!("a log write of {} bytes is too large", out.len())));
    }
    Ok(out)
}

/// One operation read back from a payload; `Entry` holds the entry's offset in it.
enum Parsed<'a> {
    Entry { index: u64, at: usize, len: u32 },
    Vote(&'a [u8]),
    Committed(&'a [u8]),
    Truncate(u64),
    Purge(u64, &'a [u8]),
}

/// Reads a payload's operations; `None` if it is malformed (a CRC-valid frame never
/// is, short of a bug).
fn parse(payload: &[u8]) -> Option<Vec<Parsed<'_>>> {
    let mut out = Vec::new();
    let mut at = 0;
    let u64_at = |at: usize| payload.get(at..at + 8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
    let u32_at = |at: usize| payload.get(at..at + 4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")));
    while at < payload.len() {
        let tag = payload[at];
        at += 1;
        let op = match tag {
            ENTRY => {
                let index = u64_at(at)?;
                let len = u32_at(at + 8)?;
                let start = at + 12;
                payload.get(start..start + len as usize)?;
                at = start + len as usize;
                Parsed::Entry { index, at: start, len }
            }
            VOTE | COMMITTED => {
                let len = u32_at(at)? as usize;
                let b = payload.get(at + 4..at + 4 + len)?;
                at += 4 + len;
                if tag == VOTE {
                    Parsed::Vote(b)
                } else {
                    Parsed::Committed(b)
                }
            }
            TRUNCATE => {
                let from = u64_at(at)?;
                at += 8;
                Parsed::Truncate(from)
            }
            PURGE => {
                let upto = u64_at(at)?;
                let len = u32_at(at + 8)? as usize;
                let b = payload.get(at + 12..at + 12 + len)?;
                at += 12 + len;
                Parsed::Purge(upto, b)
            }
            _ => return None,
        };
        out.push(op);
    }
    Some(out)
}

impl Index {
    /// Applies a frame whose payload starts at file offset `off` of segment `seq`.
    fn apply(&mut self, seq: u64, off: u64, payload: &[u8]) -> Result<(), KvError> {
        let ops = parse(payload).ok_or_else(|| {
            KvError::Io(format!("segment {} holds a malformed frame at offset {off}", segment_name(seq)))
        })?;
        for op in ops {
            match op {
                Parsed::Entry { index, at, len } => {
                    self.entries.insert(index, Loc { seq, off: off + at as u64, len });
                    if let Some(s) = self.segments.back_mut().filter(|s| s.seq == seq) {
                        s.max_index = s.max_index.max(index);
                    }
                }
                Parsed::Vote(b) => self.vote = Some(b.to_vec()),
                Parsed::Committed(b) => self.committed = Some(b.to_vec()),
                Parsed::Truncate(from) => drop(self.entries.split_off(&from)),
                Parsed::Purge(upto, b) => {
                    self.entries = match upto.checked_add(1) {
                        Some(keep) => self.entries.split_off(&keep),
                        None => BTreeMap::new(),
                    };
                    self.purged = Some((upto, b.to_vec()));
                }
            }
        }
        Ok(())
    }

    /// The state a new segment starts with.
    fn state(&self) -> Vec<LogOp> {
        let mut ops = Vec::new();
        if let Some(v) = &self.vote {
            ops.push(LogOp::Vote(v.clone()));
        }
        if let Some(c) = &self.committed {
            ops.push(LogOp::Committed(c.clone()));
        }
        if let Some((upto, id)) = &self.purged {
            ops.push(LogOp::Purge { upto: *upto, log_id: id.clone() });
        }
        ops
    }

    fn file(&self, seq: u64) -> Option<Arc<File>> {
        let first = self.segments.front()?.seq;
        self.segments.get(seq.checked_sub(first)? as usize).map(|s| s.file.clone())
    }

    /// Segments, oldest first and not the last, whose every entry is purged.
    fn purgeable(&self) -> Vec<u64> {
        let Some((upto, _)) = self.purged else { return Vec::new() };
        let n = self.segments.len().saturating_sub(1);
        self.segments.iter().take(n).take_while(|s| s.max_index <= upto).map(|s| s.seq).collect()
    }
}

/// Allocates `len` bytes to `file` (so writes into them need not grow it).
fn preallocate(file: &File, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain system call on a descriptor this function borrows.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len as libc::off_t) };
    match rc {
        0 => Ok(()),
        // A filesystem without fallocate: a sparse file is as correct, only slower.
        libc::EOPNOTSUPP | libc::EINVAL => file.set_len(len),
        // Less room than a segment: a sparse one takes blocks as frames arrive, so a
        // node whose disk is nearly full (past berth's reserve, refusing API writes)
        // still follows the log for as long as there is room for what it writes.
        libc::ENOSPC => {
            tracing::warn!("no room to preallocate a Raft log segment; it grows as it is written");
            file.set_len(len)
        }
        e => Err(std::io::Error::from_raw_os_error(e)),
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// One frame: header and payload, and the CRC the next frame chains to.
fn frame(prev: u32, payload: &[u8]) -> (Vec<u8>, u32) {
    let crc = chain(prev, payload);
    let mut out = Vec::with_capacity(payload.len() + FRAME_HEADER as usize);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(payload);
    (out, crc)
}

/// Creates segment `seq` in `dir` beginning with a frame of `state` (none if empty):
/// header and state written, preallocated, synced, then renamed into place — a
/// segment file is never seen half-made, nor without the state it starts with.
/// Returns the file and where its next frame goes, with the CRC to chain to.
fn create_segment(dir: &Path, seq: u64, bytes: u64, state: &[u8]) -> Result<(File, u64, u32), KvError> {
    let path = dir.join(segment_name(seq));
    let tmp = dir.join(format!("{}.tmp", segment_name(seq)));
    let err = |e: std::io::Error| io_err(format_args!("cannot create the log segment {}", path.display()), e);
    let mut f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&tmp).map_err(err)?;
    let mut head = Vec::with_capacity(HEADER as usize + FRAME_HEADER as usize + state.len());
    head.extend_from_slice(MAGIC);
    head.extend_from_slice(&VERSION.to_le_bytes());
    head.extend_from_slice(&0u32.to_le_bytes());
    let mut crc = seed(seq);
    if !state.is_empty() {
        let (bytes, next) = frame(crc, state);
        head.extend_from_slice(&bytes);
        crc = next;
    }
    f.write_all(&head).map_err(err)?;
    preallocate(&f, bytes.max(head.len() as u64)).map_err(err)?;
    f.sync_all().map_err(err)?;
    fs::rename(&tmp, &path).map_err(err)?;
    sync_dir(dir).map_err(err)?;
    Ok((f, head.len() as u64, crc))
}

/// A segment read back: its frames applied to `index`; where its valid frames end, the
/// CRC there, and whether what follows is a torn frame (not just zeros or the end).
fn replay(index: &mut Index, seq: u64, data: &[u8], path: &Path) -> Result<(u64, u32, bool), KvError> {
    if data.len() < HEADER as usize
        || &data[..8] != MAGIC
        || u32::from_le_bytes(data[8..12].try_into().expect("4 bytes")) != VERSION
    {
        return Err(KvError::Open {
            path: path.display().to_string(),
            reason: "not a berth log segment of this version (bad header)".into(),
        });
    }
    let mut pos = HEADER as usize;
    let mut crc = seed(seq);
    loop {
        let Some(head) = data.get(pos..pos + FRAME_HEADER as usize) else { return Ok((pos as u64, crc, false)) };
        let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes")) as usize;
        let want = u32::from_le_bytes(head[4..].try_into().expect("4 bytes"));
        if len == 0 {
            return Ok((pos as u64, crc, false));
        }
        let start = pos + FRAME_HEADER as usize;
        let Some(payload) = data.get(start..start + len) else { return Ok((pos as u64, crc, true)) };
        let got = chain(crc, payload);
        if got != want {
            return Ok((pos as u64, crc, true));
        }
        index.apply(seq, start as u64, payload)?;
        crc = got;
        pos = start + len;
    }
}

impl Wal {
    /// Opens the log in `dir`, creating it (and the directory) if there is none.
    pub fn open(dir: &Path) -> Result<Wal, KvError> {
        Self::open_with(dir, SEGMENT_BYTES)
    }

    /// [`open`](Self::open) with segments of `segment_bytes` (tests use small ones).
    pub fn open_with(dir: &Path, segment_bytes: u64) -> Result<Wal, KvError> {
        let open_err = |reason: String| KvError::Open { path: dir.display().to_string(), reason };
        if !dir.exists() {
            fs::create_dir_all(dir).map_err(|e| open_err(e.to_string()))?;
            if let Some(parent) = dir.parent() {
                sync_dir(parent).map_err(|e| open_err(e.to_string()))?;
            }
        }
        let mut seqs = Vec::new();
        for item in fs::read_dir(dir).map_err(|e| open_err(e.to_string()))? {
            let name = item.map_err(|e| open_err(e.to_string()))?.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".wal.tmp") {
                // A segment whose creation a crash interrupted: never written to.
                fs::remove_file(dir.join(name.as_ref())).map_err(|e| open_err(e.to_string()))?;
            } else if let Some(seq) =
                name.strip_suffix(".wal").filter(|s| s.len() == 16).and_then(|s| u64::from_str_radix(s, 16).ok())
            {
                seqs.push(seq);
            }
        }
        seqs.sort_unstable();
        if let Some(w) = seqs.windows(2).find(|w| w[1] != w[0] + 1) {
            return Err(open_err(format!(
                "log segment {} is missing (found {} and {})",
                segment_name(w[0] + 1),
                segment_name(w[0]),
                segment_name(w[1])
            )));
        }
        let mut index = Index::default();
        let mut writer = None;
        for (i, &seq) in seqs.iter().enumerate() {
            let path = dir.join(segment_name(seq));
            let mut file =
                OpenOptions::new().read(true).write(true).open(&path).map_err(|e| open_err(e.to_string()))?;
            let mut data = Vec::new();
            file.read_to_end(&mut data).map_err(|e| open_err(e.to_string()))?;
            let file = Arc::new(file);
            index.segments.push_back(Segment { seq, file: file.clone(), max_index: 0 });
            let (pos, crc, torn) = replay(&mut index, seq, &data, &path)?;
            let last = i + 1 == seqs.len();
            if torn && !last {
                return Err(KvError::Open {
                    path: path.display().to_string(),
                    reason: format!("the log segment is corrupt at offset {pos} (a later segment follows)"),
                });
            }
            if torn {
                tracing::warn!(segment = %path.display(), offset = pos, "the Raft log ends in a frame a crash left unfinished; it was never acknowledged and is dropped");
            }
            if last {
                writer = Some(Writer { file, seq, start: HEADER, pos, crc, failed: None });
            }
        }
        let writer = match writer {
            Some(w) => w,
            None => {
                let (file, pos, crc) = create_segment(dir, 1, segment_bytes, &[])?;
                let file = Arc::new(file);
                index.segments.push_back(Segment { seq: 1, file: file.clone(), max_index: 0 });
                Writer { file, seq: 1, start: pos, pos, crc, failed: None }
            }
        };
        Ok(Wal { dir: dir.to_path_buf(), segment_bytes, writer: Mutex::new(writer), index: Mutex::new(index) })
    }

    /// Opens the log in `dir`; if there is none yet and `kv` holds a log (a data dir of
    /// a version that kept its log in the store), the new log takes it over first — in
    /// a temporary directory renamed into place once durable — and the store's copy is
    /// deleted (also after a crash between the two).
    ///
    /// `purged_index` reads the index of an encoded purged log id.
    pub fn open_taking_over(
        dir: &Path,
        kv: &Arc<dyn KvStore>,
        purged_index: impl Fn(&[u8]) -> std::io::Result<u64>,
    ) -> Result<Wal, KvError> {
        let open_err = |reason: String| KvError::Open { path: dir.display().to_string(), reason };
        let in_store = kv.get(keys::VOTE)?.is_some() || kv.last(&keys::log(0), &keys::log_end())?.is_some();
        if !dir.exists() && in_store {
            let tmp = dir.with_extension("new");
            if tmp.exists() {
                fs::remove_dir_all(&tmp).map_err(|e| open_err(e.to_string()))?;
            }
            {
                let wal = Wal::open(&tmp)?;
                let disk = crate::log_disk::KvLog(kv.clone());
                let mut ops = Vec::new();
                if let Some(v) = disk.meta(Meta::Vote)? {
                    ops.push(LogOp::Vote(v));
                }
                if let Some(c) = disk.meta(Meta::Committed)? {
                    ops.push(LogOp::Committed(c));
                }
                if let Some(p) = disk.meta(Meta::Purged)? {
                    let upto = purged_index(&p).map_err(|e| open_err(format!("cannot read the purged log id: {e}")))?;
                    ops.push(LogOp::Purge { upto, log_id: p });
                }
                wal.write(std::mem::take(&mut ops), true)?;
                let mut batch = Vec::new();
                let mut bytes = 0;
                for (index, entry) in disk.entries(0, None)? {
                    bytes += entry.len();
                    batch.push(LogOp::Entry { index, bytes: entry });
                    if bytes >= 4 << 20 {
                        wal.write(std::mem::take(&mut batch), false)?;
                        bytes = 0;
                    }
                }
                wal.write(batch, true)?;
            }
            fs::rename(&tmp, dir).map_err(|e| open_err(e.to_string()))?;
            if let Some(parent) = dir.parent() {
                sync_dir(parent).map_err(|e| open_err(e.to_string()))?;
            }
            tracing::info!(dir = %dir.display(), "the Raft log moved from the store to its own append-only log");
        }
        if in_store && dir.exists() {
            let mut batch = WriteBatch::new();
            batch
                .delete(keys::VOTE.to_vec())
                .delete(keys::COMMITTED.to_vec())
                .delete(keys::PURGED.to_vec())
                .delete_range(keys::log(0), keys::log_end());
            kv.write(batch)?;
        }
        Wal::open(dir)
    }

    /// Starts the next segment, beginning with the state. The current one first gets an
    /// end marker (a zero length where its next frame would go: whatever a crash left
    /// beyond its last frame — the rest of a torn frame that writing resumed over — can
    /// then never be read as a frame once a later segment exists) and is synced.
    fn rotate(&self, w: &mut Writer) -> Result<(), KvError> {
        w.file.write_all_at(&[0; FRAME_HEADER as usize], w.pos).map_err(|e| io_err("cannot end the log segment", e))?;
        w.file.sync_data().map_err(|e| io_err("cannot sync the log segment", e))?;
        let seq = w.seq + 1;
        let state = encode(&lock(&self.index).state())?;
        let (file, pos, crc) = create_segment(&self.dir, seq, self.segment_bytes, &state)?;
        let file = Arc::new(file);
        {
            let mut ix = lock(&self.index);
            ix.segments.push_back(Segment { seq, file: file.clone(), max_index: 0 });
            if !state.is_empty() {
                ix.apply(seq, HEADER + FRAME_HEADER, &state)?;
            }
        }
        *w = Writer { file, seq, start: pos, pos, crc, failed: None };
        Ok(())
    }

    fn write_locked(&self, w: &mut Writer, ops: Vec<LogOp>, durable: bool) -> Result<(), KvError> {
        let payload = encode(&ops)?;
        // A length of zero ends a segment: an empty write is no frame at all.
        if !payload.is_empty() {
            if w.pos + FRAME_HEADER + payload.len() as u64 > self.segment_bytes && w.pos > w.start {
                self.rotate(w)?;
            }
            let (buf, crc) = frame(w.crc, &payload);
            w.file.write_all_at(&buf, w.pos).map_err(|e| io_err("cannot write the Raft log", e))?;
            lock(&self.index).apply(w.seq, w.pos + FRAME_HEADER, &payload)?;
            w.pos += buf.len() as u64;
            w.crc = crc;
        }
        if durable {
            w.file.sync_data().map_err(|e| io_err("cannot sync the Raft log", e))?;
            self.delete_purged();
        }
        Ok(())
    }

    /// Deletes the segments whose every entry is purged, oldest first; one that cannot
    /// be deleted stays (with those after it), to be tried again after the next purge.
    fn delete_purged(&self) {
        let doomed = lock(&self.index).purgeable();
        for seq in doomed {
            let path = self.dir.join(segment_name(seq));
            // Each deletion durable before the next: whatever a crash undoes, the
            // segments left are consecutive (open refuses a gap).
            let removed = match fs::remove_file(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                other => other,
            };
            if let Err(e) = removed.and_then(|()| sync_dir(&self.dir)) {
                tracing::warn!(segment = %path.display(), error = %e, "cannot delete a purged log segment");
                return;
            }
            lock(&self.index).segments.pop_front();
        }
    }

    /// The number of segment files (tests and metrics).
    pub fn segments(&self) -> usize {
        lock(&self.index).segments.len()
    }

    fn read(&self, locs: Vec<(u64, Loc, Option<Arc<File>>)>) -> Result<Vec<(u64, Vec<u8>)>, KvError> {
        locs.into_iter()
            .map(|(index, loc, file)| {
                let file = file.ok_or_else(|| KvError::Io(format!("log segment {} is gone", segment_name(loc.seq))))?;
                let mut buf = vec![0; loc.len as usize];
                file.read_exact_at(&mut buf, loc.off).map_err(|e| io_err("cannot read the Raft log", e))?;
                Ok((index, buf))
            })
            .collect()
    }
}

impl LogDisk for Wal {
    fn write(&self, ops: Vec<LogOp>, durable: bool) -> Result<(), KvError> {
        let mut w = lock(&self.writer);
        if let Some(e) = &w.failed {
            return Err(KvError::Io(format!("the Raft log failed earlier: {e}")));
        }
        let result = self.write_locked(&mut w, ops, durable);
        if let Err(e) = &result {
            w.failed = Some(e.to_string());
        }
        result
    }

    fn meta(&self, which: Meta) -> Result<Option<Vec<u8>>, KvError> {
        let ix = lock(&self.index);
        Ok(match which {
            Meta::Vote => ix.vote.clone(),
            Meta::Committed => ix.committed.clone(),
            Meta::Purged => ix.purged.as_ref().map(|(_, id)| id.clone()),
        })
    }

    fn entries(&self, start: u64, end: Option<u64>) -> Result<Vec<(u64, Vec<u8>)>, KvError> {
        let locs = {
            let ix = lock(&self.index);
            let range = match end {
                Some(e) if e <= start => return Ok(Vec::new()),
                Some(e) => ix.entries.range(start..e),
                None => ix.entries.range(start..),
            };
            range.map(|(i, l)| (*i, *l, ix.file(l.seq))).collect()
        };
        self.read(locs)
    }

    fn last_entry(&self, end: Option<u64>) -> Result<Option<Vec<u8>>, KvError> {
        let loc = {
            let ix = lock(&self.index);
            let last = match end {
                Some(e) => ix.entries.range(..e).next_back(),
                None => ix.entries.last_key_value(),
            };
            last.map(|(i, l)| (*i, *l, ix.file(l.seq)))
        };
        Ok(self.read(loc.into_iter().collect())?.pop().map(|(_, b)| b))
    }
}

#[cfg(test)]
mod tests;
