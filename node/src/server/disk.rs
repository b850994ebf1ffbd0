//! The data dir's disk: full or read-only must not crash the node, lose or corrupt
//! anything, or stall the cluster.
//!
//! A storage error inside openraft is fatal (its contract: the node stops, and a
//! half-written log is never trusted). So berth keeps the node from reaching one: a
//! guard looks at the data dir's filesystem every half second — free space against
//! the reserve `--min-free-disk-mb`, the read-only flag — and writes, syncs and removes
//! a probe file every 5 s (a directory that lost its write permission, an I/O error).
//! When the disk is not usable, the node, in this order:
//!
//! 1. refuses writes taken through its API (503 `disk_full` or `disk_read_only`,
//!    naming the data dir and what is wrong — nothing is applied, so a client may
//!    send it to another node), and as leader refuses forwarded ones;
//! 2. hands leadership to the most up-to-date voter if it leads, and stops standing
//!    for election (and sending heartbeats: should the handover fail, the followers
//!    elect a leader among themselves);
//! 3. refuses Raft requests (as unavailable): the leader treats it as unreachable and
//!    commits with the others, as with any down follower; nothing is appended to its
//!    log.
//!
//! Reads keep working from its replica (linearizable ones wait for a commit index it
//! can no longer reach, and time out with 503). When the disk is usable again — free
//! space back above the reserve plus a quarter (so it does not flap), writable — it
//! takes Raft requests again, catches up from the leader (or a snapshot), stands for
//! election, and takes writes. The reserve is what covers the bytes in flight during
//! the half second before the guard notices: a single write that lands in a full
//! disk anyway still stops the node (exit, data dir intact: redb's commits are
//! atomic), and it restarts like any crashed node.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::Node;

/// How often the filesystem is looked at.
const CHECK_EVERY: Duration = Duration::from_millis(500);
/// How often a probe file is written (a write that fails for another reason).
const PROBE_EVERY: Duration = Duration::from_secs(5);

/// What is wrong with the data dir's disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `disk_full` or `disk_read_only`.
    pub code: &'static str,
    pub message: String,
}

/// The disk's state, shared: the guard writes it, the API and Raft read it.
pub struct Disk {
    dir: PathBuf,
    reserve: u64,
    problem: watch::Sender<Option<Problem>>,
    free: AtomicU64,
}

impl Disk {
    pub fn new(dir: &Path, reserve_bytes: u64) -> Self {
        Disk {
            dir: dir.to_path_buf(),
            reserve: reserve_bytes,
            problem: watch::channel(None).0,
            free: AtomicU64::new(0),
        }
    }

    /// What is wrong now, if anything.
    pub fn problem(&self) -> Option<Problem> {
        self.problem.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Option<Problem>> {
        self.problem.subscribe()
    }

    /// Free bytes at the last look.
    pub fn free_bytes(&self) -> u64 {
        self.free.load(Ordering::Relaxed)
    }

    /// Looks at the disk once; `probe` also writes a probe file.
    fn check(&self, probe: bool) -> Option<Problem> {
        let dir = self.dir.display();
        let (free, read_only) = match statvfs(&self.dir) {
            Ok(v) => v,
            Err(e) => return Some(Problem { code: "disk_read_only", message: format!("cannot stat {dir}: {e}") }),
        };
        self.free.store(free, Ordering::Relaxed);
        if read_only {
            return Some(Problem { code: "disk_read_only", message: format!("{dir} is on a read-only filesystem") });
        }
        // Once full, usable again only with a quarter of the reserve to spare.
        let wanted = match self.problem.borrow().as_ref() {
            Some(p) if p.code == "disk_full" => self.reserve + self.reserve / 4,
            _ => self.reserve,
        };
        if free < wanted {
            return Some(Problem {
                code: "disk_full",
                message: format!(
                    "{dir} has {} MiB free, under the {} MiB reserve (--min-free-disk-mb)",
                    free >> 20,
                    self.reserve >> 20
                ),
            });
        }
        if probe {
            if let Err(e) = write_probe(&self.dir) {
                let code = if e.raw_os_error() == Some(libc::ENOSPC) { "disk_full" } else { "disk_read_only" };
                return Some(Problem { code, message: format!("{dir} cannot be written: {e}") });
            }
        }
        None
    }
}

/// Free bytes for an unprivileged writer, and whether the filesystem is read-only.
fn statvfs(dir: &Path) -> std::io::Result<(u64, bool)> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "a NUL in the path"))?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and a statvfs struct to fill, both alive for the call.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)] // the field types differ between libc targets
    let free = st.f_bavail as u64 * st.f_frsize as u64;
    Ok((free, st.f_flag & libc::ST_RDONLY != 0))
}

/// Writes, syncs and removes a small file in `dir`.
fn write_probe(dir: &Path) -> std::io::Result<()> {
    use std::io::Write;
    let path = dir.join(".disk-probe");
    let result = std::fs::File::create(&path).and_then(|mut f| {
        f.write_all(&[0u8; 512])?;
        f.sync_all()
    });
    let _ = std::fs::remove_file(&path);
    result
}

/// Watches the disk for the node's life and acts on every change.
pub async fn run(node: Arc<Node>) {
    let mut last_probe: Option<Instant> = None;
    loop {
        // While something is wrong, probe on every look: a failure only the probe sees
        // (an I/O error, a lost permission) must not pass for cured between probes.
        let probe = node.disk.problem().is_some() || last_probe.is_none_or(|t| t.elapsed() >= PROBE_EVERY);
        if probe {
            last_probe = Some(Instant::now());
        }
        let disk = node.disk.clone();
        let now: Option<Problem> = tokio::task::spawn_blocking(move || disk.check(probe)).await.unwrap_or_default();
        let code = |p: &Option<Problem>| p.as_ref().map(|p| p.code);
        if code(&now) != code(&node.disk.problem()) {
            changed(&node, now).await;
        } else if now.is_some() {
            // Same trouble, fresher figures (free MiB) for the errors the API gives.
            node.disk.problem.send_replace(now);
        }
        tokio::select! {
            _ = node.stopping() => return,
            _ = tokio::time::sleep(CHECK_EVERY) => {}
        }
    }
}

async fn changed(node: &Arc<Node>, now: Option<Problem>) {
    let was = node.disk.problem.send_replace(now.clone());
    match (&was, &now) {
        (_, Some(p)) => {
            tracing::error!(code = p.code, problem = %p.message,
                "the data dir is not writable: refusing writes and Raft, handing leadership over");
            // No elections, and — should the handover below fail — no heartbeats
            // either: the followers then elect a leader among themselves.
            node.raft.runtime_config().elect(false);
            node.raft.runtime_config().heartbeat(false);
            node.refresh_raft_gate();
            if node.raft.is_leader() {
                node.transfer_leadership("the data dir's disk is not usable").await;
            }
        }
        (Some(p), None) => {
            tracing::info!(was = %p.message, "the data dir is writable again: catching up, taking writes");
            node.refresh_raft_gate();
            node.raft.runtime_config().heartbeat(true);
            node.raft.runtime_config().elect(true);
        }
        (None, None) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reserve_larger_than_the_disk_is_full_and_needs_a_quarter_more_to_clear() {
        let dir = tempfile::tempdir().unwrap();
        let ok = Disk::new(dir.path(), 0);
        assert_eq!(ok.check(true), None);
        assert!(ok.free_bytes() > 0);
        let free = ok.free_bytes();

        let full = Disk::new(dir.path(), u64::MAX / 2);
        let p = full.check(false).unwrap();
        assert_eq!(p.code, "disk_full");
        assert!(p.message.contains("under the") && p.message.contains("--min-free-disk-mb"), "{}", p.message);

        // Hysteresis: with free space between reserve and reserve × 1.25, a full disk
        // stays full, a usable one stays usable.
        let reserve = free / 10 * 9;
        let edge = Disk::new(dir.path(), reserve);
        assert_eq!(edge.check(false), None);
        edge.problem.send_replace(Some(p));
        assert_eq!(edge.check(false).map(|p| p.code), Some("disk_full"));
    }

    #[test]
    fn an_unwritable_dir_is_caught_by_the_probe() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("gone");
        let d = Disk::new(&missing, 0);
        let p = d.check(true).unwrap();
        assert!(p.message.contains("gone"), "{}", p.message);
    }
}
