//! # The fence guard: a dead man's switch for sticky IPs
//!
//! Fencing (`crate::timing`) is done by the agent — but an agent that crashed, was
//! OOM-killed or `kill -9`ed fences nothing, while its instances, which outlive it by
//! design (a restarted agent adopts them), keep running. After the host's deadline the
//! leader places them elsewhere with the same IPs: without a guard, an IP would then be
//! live twice.
//!
//! So every node starts a **fence guard** next to itself: a small process of the same
//! binary (`berth fence-guard`, in its own session) that does one thing. The agent
//! keeps a **lease** in `DATA_DIR/fence.lease` — the time (`CLOCK_BOOTTIME`, which
//! also runs while the machine is suspended, and is the same clock for both processes)
//! until which it may run sticky-IP instances: its last contact plus the fence timeout,
//! renewed on every contact. Once the lease has expired, the guard kills every instance
//! with a sticky IP on this host, whatever the agent is doing — dead, frozen or fine
//! (then it fenced them already). It exits when its agent is gone and nothing it
//! guards runs any more; a starting agent replaces the guard an earlier one left.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::runtime::Runtime;

/// Nanoseconds of `CLOCK_BOOTTIME`.
fn boottime_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe {
        libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts);
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The lease file of a data dir.
pub fn lease_path(data_dir: &Path) -> PathBuf {
    data_dir.join("fence.lease")
}

fn guard_pid_path(data_dir: &Path) -> PathBuf {
    data_dir.join("fence-guard.pid")
}

/// The agent's side of the lease.
#[derive(Debug)]
pub struct Lease {
    path: PathBuf,
    valid_for: Duration,
}

impl Lease {
    pub fn new(data_dir: &Path, valid_for: Duration) -> Self {
        Lease { path: lease_path(data_dir), valid_for }
    }

    /// Extends the lease to `contact + valid_for` (never shortens it). Written to a
    /// temporary file and renamed, so the guard never reads half a lease.
    pub fn renew(&self, contact: Instant) {
        let until =
            boottime_ns().saturating_sub(contact.elapsed().as_nanos() as u64) + self.valid_for.as_nanos() as u64;
        if read_lease(&self.path).is_some_and(|held| held >= until) {
            return;
        }
        let tmp = self.path.with_extension("tmp");
        let written = std::fs::write(&tmp, until.to_string()).and_then(|_| std::fs::rename(&tmp, &self.path));
        if let Err(e) = written {
            // Not renewed: the guard fences at the old expiry — safe, if needless.
            tracing::warn!(error = %e, path = %self.path.display(), "cannot renew the fence lease");
        }
    }
}

fn read_lease(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The start time of live process `pid`, to tell it from a later one reusing its pid.
fn start_time(pid: i32) -> Option<u64> {
    super::process::start_time(pid).filter(|_| !super::process::is_zombie(pid))
}

/// Kills the guard recorded in `data_dir`, if it still runs.
fn kill_recorded(data_dir: &Path) {
    let recorded = std::fs::read_to_string(guard_pid_path(data_dir)).ok().and_then(|t| {
        let (p, s) = t.trim().split_once(' ')?;
        Some((p.parse::<i32>().ok()?, s.parse::<u64>().ok()?))
    });
    if let Some((pid, started)) = recorded {
        if start_time(pid) == Some(started) {
            // SAFETY: kill(2) on the guard an agent of this data dir started.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// Starts this node's guard (replacing one an earlier agent left). `args` are the
/// flags that rebuild this node's runtime in the guard.
pub fn spawn(data_dir: &Path, args: &[String]) -> std::io::Result<()> {
    kill_recorded(data_dir);
    let log = std::fs::OpenOptions::new().create(true).append(true).open(data_dir.join("fence-guard.log"))?;
    let me = std::process::id();
    let child = std::process::Command::new(std::env::current_exe()?)
        .arg("fence-guard")
        .args(args)
        .arg("--agent-pid")
        .arg(me.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()?;
    let pid = child.id() as i32;
    // Not waited for: it outlives us on purpose (reaped by init if we die first).
    std::mem::forget(child);
    std::fs::write(guard_pid_path(data_dir), format!("{pid} {}", start_time(pid).unwrap_or(0)))?;
    Ok(())
}

/// Kills the guard of this data dir (a clean exit that also stops every instance).
pub fn stop(data_dir: &Path) {
    kill_recorded(data_dir);
    let _ = std::fs::remove_file(guard_pid_path(data_dir));
}

/// The guard's loop: until its agent is gone and nothing sticky runs.
pub async fn run(runtime: Arc<dyn Runtime>, data_dir: &Path, agent_pid: i32) {
    let lease = lease_path(data_dir);
    let agent_started = start_time(agent_pid);
    tracing::info!(agent_pid, "fence guard watching {}", lease.display());
    loop {
        let expired = read_lease(&lease).is_none_or(|until| boottime_ns() > until);
        if expired {
            match runtime.existing().await {
                Ok(list) => {
                    let sticky: Vec<_> = list.into_iter().filter(|e| e.sticky).collect();
                    let agent_alive = agent_started.is_some() && start_time(agent_pid) == agent_started;
                    if sticky.is_empty() && !agent_alive {
                        tracing::info!("agent gone and nothing left to fence: the guard exits");
                        return;
                    }
                    for e in &sticky {
                        tracing::warn!(instance = %e.instance, agent_alive, "fence lease expired: fenced by the guard");
                        let _ = runtime.stop(&e.handle, Duration::ZERO).await;
                    }
                }
                Err(e) => tracing::error!(error = %e, "cannot list instances to fence; retrying"),
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_runs_from_the_contact_and_never_shortens() {
        let dir = tempfile::tempdir().unwrap();
        let lease = Lease::new(dir.path(), Duration::from_secs(5));
        lease.renew(Instant::now());
        let first = read_lease(&lease_path(dir.path())).unwrap();
        let left = first - boottime_ns();
        assert!(left > 4_900_000_000 && left <= 5_000_000_000, "{left}");
        lease.renew(Instant::now() - Duration::from_secs(3));
        assert_eq!(read_lease(&lease_path(dir.path())).unwrap(), first, "an older contact does not shorten it");
    }
}
