//! The process runtime: an app without `image` runs its `cmd` as a local process.
//!
//! Each instance gets a directory `DATA_DIR/instances/ID/` holding `output.log` (stdout
//! and stderr, appended across restarts) and `pid` (pid, process start time and the
//! placement epoch). Processes run in their own process group, so a signal reaches the
//! whole tree, and they survive the agent: a restarted agent finds them through their
//! pid files (checking the start time, so a reused pid is never mistaken for ours) and
//! adopts them instead of starting them again.

use std::collections::HashMap;
use std::io::SeekFrom;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::watch;

use super::runtime::{Existing, Exit, LogStream, Runtime, RuntimeError, Task};

#[derive(Debug, Serialize, Deserialize)]
struct PidFile {
    pid: i32,
    start_time: u64,
    epoch: u64,
    instance: String,
    /// The sticky IP the instance was started with.
    #[serde(default)]
    ip: Option<Ipv4Addr>,
}

pub struct ProcessRuntime {
    dir: PathBuf,
    host: u64,
    /// handle (pid) → the exit, once known.
    exits: Mutex<HashMap<String, watch::Receiver<Option<Exit>>>>,
}

/// The start time of `pid` (clock ticks since boot), from /proc; None if it is gone.
pub(crate) fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    // Fields after the command: state is field 3; starttime is field 22.
    after.split_whitespace().nth(19)?.parse().ok()
}

pub(crate) fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rfind(')').map(|i| s[i + 2..].starts_with('Z')))
        .unwrap_or(true)
}

fn signal_group(pid: i32, sig: i32) {
    // SAFETY: kill(2) on the process group we created for the instance.
    unsafe {
        libc::kill(-pid, sig);
    }
}

impl ProcessRuntime {
    pub fn new(dir: PathBuf, host: u64) -> Self {
        ProcessRuntime { dir, host, exits: Mutex::new(HashMap::new()) }
    }

    fn instance_dir(&self, instance: &str) -> PathBuf {
        self.dir.join(instance)
    }

    /// Watches a process that is not our child (adopted) until it is gone.
    fn watch_adopted(&self, pid: i32, started: u64) -> watch::Receiver<Option<Exit>> {
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            loop {
                if start_time(pid) != Some(started) || is_zombie(pid) {
                    let _ = tx.send(Some(Exit { code: None, message: "the process exited".into() }));
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        rx
    }

    fn exit_rx(&self, handle: &str) -> Option<watch::Receiver<Option<Exit>>> {
        self.exits.lock().unwrap().get(handle).cloned()
    }

    async fn wait_exit(&self, handle: &str, timeout: Duration) -> bool {
        let Some(mut rx) = self.exit_rx(handle) else { return true };
        let reached =
            tokio::time::timeout(timeout, rx.wait_for(|e| e.is_some())).await.map(|r| r.is_ok()).unwrap_or(false);
        reached
    }
}

async fn read_tail(path: &Path, tail: usize) -> std::io::Result<(Vec<u8>, u64)> {
    let mut f = tokio::fs::File::open(path).await?;
    let len = f.metadata().await?.len();
    // Read at most the last 4 MiB to find the tail.
    let start = len.saturating_sub(4 * 1024 * 1024);
    f.seek(SeekFrom::Start(start)).await?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).await?;
    let mut cut = buf.len();
    let mut lines = 0;
    let body = if buf.ends_with(b"\n") { &buf[..buf.len() - 1] } else { &buf[..] };
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            lines += 1;
            if lines == tail {
                cut = i + 1;
                break;
            }
        }
        if i == 0 {
            cut = 0;
        }
    }
    if tail == 0 {
        cut = buf.len();
    } else if lines < tail {
        cut = 0;
    }
    Ok((buf[cut..].to_vec(), len))
}

#[async_trait]
impl Runtime for ProcessRuntime {
    fn name(&self) -> &'static str {
        "process"
    }

    async fn existing(&self) -> Result<Vec<Existing>, RuntimeError> {
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return Ok(out) };
        for e in entries.flatten() {
            let Ok(text) = std::fs::read_to_string(e.path().join("pid")) else { continue };
            let Ok(pf) = serde_json::from_str::<PidFile>(&text) else { continue };
            if start_time(pf.pid) == Some(pf.start_time) && !is_zombie(pf.pid) {
                let rx = self.watch_adopted(pf.pid, pf.start_time);
                self.exits.lock().unwrap().insert(pf.pid.to_string(), rx);
                out.push(Existing {
                    instance: pf.instance,
                    epoch: pf.epoch,
                    handle: pf.pid.to_string(),
                    sticky: pf.ip.is_some(),
                });
            } else {
                let _ = std::fs::remove_file(e.path().join("pid"));
            }
        }
        Ok(out)
    }

    async fn start(&self, task: &Task) -> Result<String, RuntimeError> {
        let dir = self.instance_dir(&task.instance);
        std::fs::create_dir_all(&dir)
            .map_err(|e| RuntimeError::Other(format!("cannot create {}: {e}", dir.display())))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("output.log"))
            .map_err(|e| RuntimeError::Other(format!("cannot open the log: {e}")))?;
        let err_log = log.try_clone().map_err(|e| RuntimeError::Other(e.to_string()))?;
        let (program, args) =
            task.spec.cmd.split_first().ok_or_else(|| RuntimeError::Start("the app has no cmd".into()))?;
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()))
            .envs(task.env(self.host))
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err_log))
            .process_group(0)
            .kill_on_drop(false);
        let mut child = cmd.spawn().map_err(|e| RuntimeError::Start(format!("cannot start {program:?}: {e}")))?;
        let pid = child.id().ok_or_else(|| RuntimeError::Start("the process exited at once".into()))? as i32;
        let pf = PidFile {
            pid,
            start_time: start_time(pid).unwrap_or(0),
            epoch: task.epoch,
            instance: task.instance.clone(),
            ip: task.ip,
        };
        let _ = std::fs::write(dir.join("pid"), serde_json::to_vec(&pf).unwrap_or_default());
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            let exit = match child.wait().await {
                Ok(s) => Exit {
                    code: s.code(),
                    message: match s.code() {
                        Some(c) => format!("exited with code {c}"),
                        None => format!(
                            "killed by signal {}",
                            std::os::unix::process::ExitStatusExt::signal(&s).unwrap_or(0)
                        ),
                    },
                },
                Err(e) => Exit { code: None, message: format!("cannot wait for the process: {e}") },
            };
            let _ = tx.send(Some(exit));
        });
        self.exits.lock().unwrap().insert(pid.to_string(), rx);
        Ok(pid.to_string())
    }

    async fn wait(&self, handle: &str) -> Exit {
        let Some(mut rx) = self.exit_rx(handle) else {
            return Exit { code: None, message: "unknown process".into() };
        };
        let exit = rx.wait_for(|e| e.is_some()).await.map(|e| e.clone());
        match exit {
            Ok(e) => e.expect("waited for Some"),
            Err(_) => Exit { code: None, message: "the process watcher stopped".into() },
        }
    }

    async fn stop(&self, handle: &str, grace: Duration) -> Result<(), RuntimeError> {
        let pid: i32 = handle.parse().map_err(|_| RuntimeError::Other(format!("bad handle {handle}")))?;
        signal_group(pid, libc::SIGTERM);
        if !self.wait_exit(handle, grace).await {
            tracing::info!(pid, "still running after the stop grace; SIGKILL");
            signal_group(pid, libc::SIGKILL);
            self.wait_exit(handle, Duration::from_secs(5)).await;
        }
        // Leftovers of the group (children that ignored SIGTERM) go too.
        signal_group(pid, libc::SIGKILL);
        Ok(())
    }

    async fn remove(&self, instance: &str, handle: &str) {
        let _ = std::fs::remove_file(self.instance_dir(instance).join("pid"));
        self.exits.lock().unwrap().remove(handle);
    }

    async fn check_address(&self, _handle: &str, _task: &Task) -> IpAddr {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    }

    async fn check_cmd(
        &self,
        _handle: &str,
        task: &Task,
        cmd: &[String],
        timeout: Duration,
    ) -> Result<bool, RuntimeError> {
        let (program, args) = cmd.split_first().ok_or_else(|| RuntimeError::Other("empty check command".into()))?;
        let mut c = tokio::process::Command::new(program);
        c.args(args)
            .envs(task.env(self.host))
            .current_dir(self.instance_dir(&task.instance))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        match tokio::time::timeout(timeout, c.status()).await {
            Ok(Ok(s)) => Ok(s.success()),
            Ok(Err(e)) => Err(RuntimeError::Other(format!("cannot run the check {program:?}: {e}"))),
            Err(_) => Ok(false),
        }
    }

    async fn exec(&self, task: &Task, cmd: &[String], timeout: Duration) -> Result<(i64, Vec<u8>), RuntimeError> {
        let (program, args) = cmd.split_first().ok_or_else(|| RuntimeError::Other("empty command".into()))?;
        let dir = self.instance_dir(&task.instance);
        let mut c = tokio::process::Command::new(program);
        c.args(args)
            .envs(task.env(self.host))
            .current_dir(if dir.exists() { dir } else { std::env::temp_dir() })
            .stdin(Stdio::null())
            .kill_on_drop(true);
        match tokio::time::timeout(timeout, c.output()).await {
            Err(_) => Err(RuntimeError::Other(format!("{program:?} did not finish within {}s", timeout.as_secs()))),
            Ok(Err(e)) => Err(RuntimeError::Start(format!("cannot run {program:?}: {e}"))),
            Ok(Ok(out)) => {
                let mut output = out.stdout;
                output.extend_from_slice(&out.stderr);
                Ok((out.status.code().map(i64::from).unwrap_or(-1), output))
            }
        }
    }

    async fn logs(&self, instance: &str, tail: usize, follow: bool) -> Result<LogStream, RuntimeError> {
        let path = self.instance_dir(instance).join("output.log");
        let (head, offset) = match read_tail(&path, tail).await {
            Ok(x) => x,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Vec::new(), 0),
            Err(e) => return Err(RuntimeError::Other(format!("cannot read {}: {e}", path.display()))),
        };
        let first = futures::stream::once(async move { Ok(bytes::Bytes::from(head)) });
        if !follow {
            return Ok(Box::pin(first));
        }
        let rest = futures::stream::unfold(offset, move |mut offset| {
            let path = path.clone();
            async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let Ok(mut f) = tokio::fs::File::open(&path).await else { continue };
                    let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
                    if len < offset {
                        offset = 0; // truncated
                    }
                    if len == offset {
                        continue;
                    }
                    if f.seek(SeekFrom::Start(offset)).await.is_err() {
                        continue;
                    }
                    let mut buf = vec![0; (len - offset).min(1024 * 1024) as usize];
                    match f.read_exact(&mut buf).await {
                        Ok(_) => {
                            offset += buf.len() as u64;
                            return Some((Ok(bytes::Bytes::from(buf)), offset));
                        }
                        Err(e) => return Some((Err(e), offset)),
                    }
                }
            }
        });
        Ok(Box::pin(futures::StreamExt::chain(first, rest)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tail_returns_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        std::fs::write(&p, "a\nb\nc\nd\n").unwrap();
        assert_eq!(read_tail(&p, 2).await.unwrap().0, b"c\nd\n");
        assert_eq!(read_tail(&p, 10).await.unwrap().0, b"a\nb\nc\nd\n");
        assert_eq!(read_tail(&p, 0).await.unwrap().0, b"");
        std::fs::write(&p, "x\ny").unwrap();
        assert_eq!(read_tail(&p, 1).await.unwrap().0, b"y");
    }
}
