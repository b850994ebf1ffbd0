use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use super::{segment_name, Wal, FRAME_HEADER, HEADER};
use crate::kv::{KvStore, MemStore, RedbStore};
use crate::log_disk::{KvLog, LogDisk, LogOp, Meta};

fn entry(index: u64, tag: &str) -> LogOp {
    LogOp::Entry { index, bytes: format!("{tag}-{index}").into_bytes() }
}

/// Everything a disk holds: entries, the three metas, the last entry.
type Contents = (Vec<(u64, Vec<u8>)>, [Option<Vec<u8>>; 3], Option<Vec<u8>>);

/// Everything a disk holds, for comparing two.
fn contents(d: &dyn LogDisk) -> Contents {
    (
        d.entries(0, None).unwrap(),
        [Meta::Vote, Meta::Committed, Meta::Purged].map(|m| d.meta(m).unwrap()),
        d.last_entry(None).unwrap(),
    )
}

/// A small deterministic generator (xorshift), so a failure replays.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Random groups of log writes, each one a Raft log could see: appends of entries of
/// varied sizes, truncations and purges above the purge point, votes and pointers.
struct Writes {
    rng: Rng,
    next: u64,
    purged: u64,
}

impl Writes {
    fn new(seed: u64) -> Self {
        Writes { rng: Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)), next: 1, purged: 0 }
    }

    fn group(&mut self, step: usize) -> Vec<LogOp> {
        let mut ops = Vec::new();
        match self.rng.below(10) {
            0 if self.next > self.purged + 2 => {
                self.next = self.purged + 1 + self.rng.below(self.next - self.purged - 1);
                ops.push(LogOp::TruncateFrom(self.next));
            }
            1 if self.next > self.purged + 3 => {
                self.purged += 1 + self.rng.below(self.next - self.purged - 3);
                ops.push(LogOp::Purge { upto: self.purged, log_id: format!("p{}", self.purged).into_bytes() });
            }
            2 => ops.push(LogOp::Vote(format!("v{step}").into_bytes())),
            3 => ops.push(LogOp::Committed(format!("c{step}").into_bytes())),
            _ => {}
        }
        for _ in 0..=self.rng.below(4) {
            ops.push(LogOp::Entry { index: self.next, bytes: vec![step as u8; 20 + self.rng.below(60) as usize] });
            self.next += 1;
        }
        ops
    }
}

#[test]
fn the_log_holds_what_the_key_value_log_holds_across_reopens_and_segments() {
    // Random appends, truncations, purges, votes and pointers, written to the WAL (tiny
    // segments, reopened now and then) and to the key-value log that is its model.
    for seed in 1..=6u64 {
        let dir = tempfile::tempdir().unwrap();
        let model = KvLog(Arc::new(MemStore::default()));
        let mut wal = Wal::open_with(dir.path(), 4096).unwrap();
        let mut writes = Writes::new(seed);
        for step in 0..600 {
            let mut ops = Vec::new();
            for _ in 0..=writes.rng.below(3) {
                ops.extend(writes.group(step));
            }
            let durable = writes.rng.below(4) != 0;
            model.write(ops.clone(), durable).unwrap();
            wal.write(ops, durable).unwrap();
            assert_eq!(contents(&wal), contents(&model), "seed {seed}, step {step}");
            let (from, to) = (writes.purged + 1, writes.next);
            assert_eq!(wal.entries(from, Some(to)).unwrap(), model.entries(from, Some(to)).unwrap());
            if writes.rng.below(40) == 0 {
                wal.write(Vec::new(), true).unwrap();
                drop(wal);
                wal = Wal::open_with(dir.path(), 4096).unwrap();
                assert_eq!(contents(&wal), contents(&model), "seed {seed}, after reopening at step {step}");
            }
        }
        assert!(wal.segments() < 40, "purged segments are deleted (seed {seed}: {} left)", wal.segments());
        let files = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(files, wal.segments(), "one file per live segment");
    }
}

fn segment(dir: &Path, seq: u64) -> std::fs::File {
    OpenOptions::new().read(true).write(true).open(dir.join(segment_name(seq))).unwrap()
}

/// The file offsets of the frames of segment 1, read from the headers.
fn frames(dir: &Path) -> Vec<(u64, u64)> {
    let f = segment(dir, 1);
    let mut out = Vec::new();
    let mut pos = HEADER;
    loop {
        let mut head = [0u8; 4];
        f.read_exact_at(&mut head, pos).unwrap();
        let len = u32::from_le_bytes(head) as u64;
        if len == 0 {
            return out;
        }
        out.push((pos, len));
        pos += FRAME_HEADER + len;
    }
}

#[test]
fn a_torn_last_frame_is_dropped_and_writing_resumes_there() {
    let dir = tempfile::tempdir().unwrap();
    {
        let wal = Wal::open(dir.path()).unwrap();
        for i in 1..=3 {
            wal.write(vec![entry(i, "a")], true).unwrap();
        }
    }
    let f = frames(dir.path());
    assert_eq!(f.len(), 3);
    // A crash in the middle of the third frame: its second half never reached the disk.
    let (pos, len) = f[2];
    segment(dir.path(), 1).write_all_at(&vec![0; (len / 2) as usize], pos + FRAME_HEADER + len / 2).unwrap();
    let wal = Wal::open(dir.path()).unwrap();
    assert_eq!(wal.entries(0, None).unwrap(), vec![(1, b"a-1".to_vec()), (2, b"a-2".to_vec())]);
    wal.write(vec![entry(3, "b"), entry(4, "b")], true).unwrap();
    drop(wal);
    let wal = Wal::open(dir.path()).unwrap();
    let got: Vec<u64> = wal.entries(0, None).unwrap().into_iter().map(|(i, _)| i).collect();
    assert_eq!(got, vec![1, 2, 3, 4]);
    assert_eq!(wal.last_entry(None).unwrap(), Some(b"b-4".to_vec()));
}

#[test]
fn a_frame_left_behind_by_a_crash_is_not_read_back_after_new_frames() {
    let dir = tempfile::tempdir().unwrap();
    {
        let wal = Wal::open(dir.path()).unwrap();
        for (i, tag) in [(1, "a"), (2, "x"), (3, "x")] {
            wal.write(vec![entry(i, tag)], true).unwrap();
        }
    }
    // The crash: frame 2 torn, frame 3 intact behind it (written, never acknowledged).
    let f = frames(dir.path());
    let (pos, _) = f[1];
    segment(dir.path(), 1).write_all_at(b"garbage!", pos + FRAME_HEADER).unwrap();
    let wal = Wal::open(dir.path()).unwrap();
    assert_eq!(wal.entries(0, None).unwrap().len(), 1);
    // A new frame of exactly the torn one's size: the old frame 3 now sits right behind
    // a valid frame, but its CRC chains to the frame it was written after.
    wal.write(vec![entry(2, "y")], true).unwrap();
    drop(wal);
    assert_eq!(frames(dir.path())[1], f[1], "the new frame took the torn one's place");
    let wal = Wal::open(dir.path()).unwrap();
    assert_eq!(wal.entries(0, None).unwrap(), vec![(1, b"a-1".to_vec()), (2, b"y-2".to_vec())]);
}

#[test]
fn corruption_before_the_last_segment_or_a_missing_segment_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let wal = Wal::open_with(dir.path(), 256).unwrap();
        for i in 1..=40 {
            wal.write(vec![entry(i, "a")], true).unwrap();
        }
        assert!(wal.segments() > 3);
    }
    // A flipped byte in the first frame of segment 2.
    let f = segment(dir.path(), 2);
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, HEADER + FRAME_HEADER).unwrap();
    f.write_all_at(&[b[0] ^ 0xff], HEADER + FRAME_HEADER).unwrap();
    let err = Wal::open_with(dir.path(), 256).err().expect("a corrupt segment").to_string();
    assert!(err.contains("corrupt"), "{err}");
    f.write_all_at(&b, HEADER + FRAME_HEADER).unwrap();
    Wal::open_with(dir.path(), 256).unwrap();
    std::fs::remove_file(dir.path().join(segment_name(3))).unwrap();
    let err = Wal::open_with(dir.path(), 256).err().expect("a missing segment").to_string();
    assert!(err.contains("missing"), "{err}");
}

#[test]
fn a_log_kept_in_the_store_is_taken_over_once() {
    let dir = tempfile::tempdir().unwrap();
    let kv: Arc<dyn KvStore> = Arc::new(RedbStore::open(&dir.path().join("berth.redb")).unwrap());
    let old = KvLog(kv.clone());
    let mut ops: Vec<LogOp> = (1..=20).map(|i| entry(i, "old")).collect();
    ops.push(LogOp::Vote(b"vote".to_vec()));
    ops.push(LogOp::Committed(b"c".to_vec()));
    ops.push(LogOp::Purge { upto: 7, log_id: 7u64.to_le_bytes().to_vec() });
    old.write(ops, true).unwrap();
    let expected = contents(&old);
    let index = |b: &[u8]| Ok(u64::from_le_bytes(b.try_into().unwrap()));
    let wal_dir = dir.path().join("wal");
    let wal = Wal::open_taking_over(&wal_dir, &kv, index).unwrap();
    assert_eq!(contents(&wal), expected);
    assert_eq!(contents(&old), (vec![], [None, None, None], None), "the store's copy is gone");
    wal.write(vec![entry(21, "new")], true).unwrap();
    drop(wal);
    // Opened again: the log, not a second takeover.
    let wal = Wal::open_taking_over(&wal_dir, &kv, index).unwrap();
    assert_eq!(wal.entries(8, None).unwrap().len(), 14);
    assert!(!dir.path().join("wal.new").exists());
}

/// The files of a log directory, by name.
type Files = std::collections::BTreeMap<String, Vec<u8>>;

fn read_files(dir: &Path) -> Files {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap()))
        .collect()
}

#[test]
fn after_a_power_cut_the_log_is_what_some_write_since_the_last_sync_left() {
    for seed in 1..=8 {
        power_cuts(seed);
    }
}

fn power_cuts(seed: u64) {
    // A power cut keeps what was synced and, of what was written after, any mix of
    // new, old and garbage 512-byte sectors. The log must open and hold exactly the
    // state after one of the writes between the last durable one and the cut —
    // never less than the last durable write, never a half-applied one — and go on.
    const SEGMENT: u64 = 1024;
    let live = tempfile::tempdir().unwrap();
    let model = KvLog(Arc::new(MemStore::default()));
    let wal = Wal::open_with(live.path(), SEGMENT).unwrap();
    let mut writes = Writes::new(seed ^ 0x5EED);
    let mut states = vec![contents(&model)];
    let mut snaps = vec![read_files(live.path())];
    let mut last_durable = 0;
    let mut cuts = 0;
    for step in 1..=400usize {
        let ops = writes.group(step);
        let durable = writes.rng.below(3) != 0;
        wal.write(ops.clone(), durable).unwrap();
        model.write(ops, durable).unwrap();
        states.push(contents(&model));
        snaps.push(read_files(live.path()));
        if durable {
            last_durable = step;
        }
        if step % 5 != 0 {
            continue;
        }
        // The cut, right after this write.
        cuts += 1;
        let now = &snaps[step];
        let last = now.keys().filter(|n| n.ends_with(".wal")).max().unwrap().clone();
        let mut disk = now.clone();
        // Every segment but the last was synced when the next one began; the last
        // holds what the last durable write left, plus a mix of what came after.
        let synced = snaps[last_durable].get(&last).cloned().unwrap_or_else(|| {
            let mut fresh = now[&last].clone();
            fresh[HEADER as usize..].fill(0);
            fresh
        });
        let cur = disk.get_mut(&last).unwrap();
        for (i, sector) in cur.chunks_mut(512).enumerate() {
            let base = &synced[i * 512..(i * 512 + sector.len()).min(synced.len())];
            if base != sector {
                // A sector is written whole or not at all (the disk's atomic unit;
                // the "powersafe overwrite" etcd's WAL and SQLite assume): one that
                // held synced bytes is old or new. One that held nothing yet may
                // also come back as garbage.
                let fresh = base.iter().all(|b| *b == 0);
                match writes.rng.below(if fresh { 3 } else { 2 }) {
                    0 => {}
                    1 => sector[..base.len()].copy_from_slice(base),
                    _ => sector.iter_mut().for_each(|b| *b = writes.rng.below(256) as u8),
                }
            }
        }
        // Deletions since the last sync of the directory may be undone, newest first.
        let gone: Vec<&String> = snaps[last_durable].keys().filter(|n| !now.contains_key(*n)).collect();
        for name in gone.iter().rev().take(writes.rng.below(gone.len() as u64 + 1) as usize) {
            disk.insert((*name).clone(), snaps[last_durable][*name].clone());
        }
        let crashed = tempfile::tempdir().unwrap();
        for (name, bytes) in &disk {
            std::fs::write(crashed.path().join(name), bytes).unwrap();
        }
        let back =
            Wal::open_with(crashed.path(), SEGMENT).unwrap_or_else(|e| panic!("seed {seed}, cut after {step}: {e}"));
        let got = contents(&back);
        let k = (last_durable..=step)
            .find(|k| states[*k] == got)
            .unwrap_or_else(|| {
                panic!(
                    "seed {seed}, cut after write {step} (last durable {last_durable}): not any state between\n got {:?}\n durable {:?}\n now {:?}\n files {:?} / {:?}",
                    got.0.iter().map(|e| e.0).collect::<Vec<_>>(),
                    states[last_durable].0.iter().map(|e| e.0).collect::<Vec<_>>(),
                    states[step].0.iter().map(|e| e.0).collect::<Vec<_>>(),
                    disk.keys().collect::<Vec<_>>(),
                    now.keys().collect::<Vec<_>>(),
                )
            });
        // And it goes on from there: a model holding what came back, then writes
        // enough to start new segments over whatever the cut left behind the end.
        let model = KvLog(Arc::new(MemStore::default()));
        let mut ops: Vec<LogOp> =
            got.0.iter().map(|(index, bytes)| LogOp::Entry { index: *index, bytes: bytes.clone() }).collect();
        let [vote, committed, purged] = got.1.clone();
        ops.extend(vote.map(LogOp::Vote));
        ops.extend(committed.map(LogOp::Committed));
        let mut more = Writes::new(seed + step as u64);
        if let Some(p) = purged {
            more.purged = std::str::from_utf8(&p[1..]).unwrap().parse().unwrap();
            ops.push(LogOp::Purge { upto: more.purged, log_id: p });
        }
        more.next = got.0.last().map_or(more.purged + 1, |(i, _)| i + 1);
        model.write(ops, true).unwrap();
        for n in 0..30 {
            let ops = more.group(1000 + n);
            model.write(ops.clone(), true).unwrap();
            back.write(ops, n % 3 == 0).unwrap();
        }
        back.write(Vec::new(), true).unwrap();
        drop(back);
        let again = Wal::open_with(crashed.path(), SEGMENT)
            .unwrap_or_else(|e| panic!("seed {seed}, cut after {step}, back at {k}, then written on: {e}"));
        assert_eq!(contents(&again), contents(&model), "seed {seed}, cut after {step}, back at {k}, then written on");
    }
    assert!(cuts >= 80 && wal.segments() >= 1);
}
