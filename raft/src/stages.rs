//! Where one write's time goes: opt-in timestamps of the steps on a write's path, in
//! every process of a cluster (the client's too), for `berth-bench ipam --stages`.
//!
//! Off unless the process starts with `BERTH_STAGES=<dir>` in its environment: then
//! each [`mark`] records its [`Step`] and the system-wide monotonic clock
//! (`CLOCK_MONOTONIC`, comparable across the processes of one machine), and a
//! background thread appends them every [`FLUSH_EVERY`] to `<dir>/<pid>.stages`, one
//! `step nanoseconds` line each. Off, a mark costs one load of an initialized
//! `OnceLock` and a branch. Recording holds a mutex per mark: meant for one client at
//! a time, where it moves a write's latency by a few percent, not for load.
//!
//! A process that records more than [`MAX_PENDING`] marks between two flushes drops
//! the rest of them, and says so once on stderr.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use crate::locks::lock;

/// The steps of a write's path that are marked, in path order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Step {
    /// The client sends its request (the bench's client).
    ClientSend = 0,
    /// The request reaches the node's outermost HTTP layer.
    HttpIn = 1,
    /// The log store is handed entries this node leads.
    Append = 2,
    /// A request frame is handed to a follower's link (before the write).
    FrameOut = 3,
    /// A request frame is read from the leader's link.
    FrameIn = 4,
    /// The log store is handed entries another node led (a follower's append).
    FollowerAppend = 5,
    /// An append is durable (its flush report is sent).
    Durable = 6,
    /// A reply frame is handed to the leader's link (before the write).
    ReplyOut = 7,
    /// A reply frame is read from a follower.
    ReplyIn = 8,
    /// The state machine applies a command.
    Apply = 9,
    /// The response leaves the node's outermost HTTP layer.
    HttpOut = 10,
    /// The client has the response.
    ClientDone = 11,
}

impl Step {
    pub const ALL: [Step; 12] = [
        Step::ClientSend,
        Step::HttpIn,
        Step::Append,
        Step::FrameOut,
        Step::FrameIn,
        Step::FollowerAppend,
        Step::Durable,
        Step::ReplyOut,
        Step::ReplyIn,
        Step::Apply,
        Step::HttpOut,
        Step::ClientDone,
    ];

    pub fn from_u8(n: u8) -> Option<Step> {
        Step::ALL.get(usize::from(n)).copied()
    }
}

/// The environment variable that turns recording on: the directory to write to.
pub const ENV: &str = "BERTH_STAGES";
/// How often the recorded marks are appended to the file.
pub const FLUSH_EVERY: Duration = Duration::from_millis(200);
/// At most this many marks wait between two flushes.
pub const MAX_PENDING: usize = 1 << 22;

struct Recorder {
    pending: Mutex<Vec<(Step, u64)>>,
    dropped: AtomicBool,
}

static RECORDER: OnceLock<Option<&'static Recorder>> = OnceLock::new();

/// The system-wide monotonic clock, in nanoseconds.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec as u64)
}

fn recorder() -> Option<&'static Recorder> {
    *RECORDER.get_or_init(|| {
        let dir = PathBuf::from(std::env::var_os(ENV)?);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            eprintln!("{ENV}: cannot create {}: {e}; not recording", dir.display());
            return None;
        }
        let path = dir.join(format!("{}.stages", std::process::id()));
        let rec: &'static Recorder =
            Box::leak(Box::new(Recorder { pending: Mutex::new(Vec::new()), dropped: AtomicBool::new(false) }));
        let spawned = std::thread::Builder::new().name("berth-stages".into()).spawn(move || loop {
            std::thread::sleep(FLUSH_EVERY);
            let marks = std::mem::take(&mut *lock(&rec.pending));
            if marks.is_empty() {
                continue;
            }
            let mut text = String::with_capacity(marks.len() * 20);
            for (step, ns) in marks {
                text.push_str(&format!("{} {ns}\n", step as u8));
            }
            let written = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .and_then(|mut f| f.write_all(text.as_bytes()));
            if let Err(e) = written {
                eprintln!("{ENV}: cannot write {}: {e}; recording stops", path.display());
                return;
            }
        });
        match spawned {
            Ok(_) => Some(rec),
            Err(e) => {
                eprintln!("{ENV}: cannot start the writer thread: {e}; not recording");
                None
            }
        }
    })
}

/// Records `step` now, when recording is on (`BERTH_STAGES`).
#[inline]
pub fn mark(step: Step) {
    if let Some(rec) = recorder() {
        let ns = now_ns();
        let mut pending = lock(&rec.pending);
        if pending.len() < MAX_PENDING {
            pending.push((step, ns));
        } else if !rec.dropped.swap(true, Ordering::Relaxed) {
            eprintln!("{ENV}: over {MAX_PENDING} marks between two flushes; dropping marks");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_round_trip_through_their_numbers() {
        for (i, s) in Step::ALL.iter().enumerate() {
            assert_eq!(*s as u8 as usize, i);
            assert_eq!(Step::from_u8(i as u8), Some(*s));
        }
        assert_eq!(Step::from_u8(Step::ALL.len() as u8), None);
    }

    #[test]
    fn the_clock_moves_forward() {
        let a = now_ns();
        std::thread::sleep(Duration::from_millis(1));
        assert!(now_ns() >= a + 1_000_000);
    }
}
