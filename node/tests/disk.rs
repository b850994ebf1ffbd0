//! A full or read-only data dir, through the real binary: three nodes, each on its own
//! small tmpfs. The leader's disk is filled past the reserve: it hands leadership
//! over, refuses writes with a clear error, stays alive, and the cluster goes on
//! without it; space freed, it catches up and takes writes again. The same with its
//! filesystem remounted read-only. Nothing acknowledged is lost, and the data dir
//! opens again after a restart. Needs root (mount); skipped with the reason otherwise.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use support::Cluster;

const WITHIN: Duration = Duration::from_secs(15);

/// The tmpfs mounts, unmounted when dropped (after the cluster: declared first).
struct Mounts(Vec<PathBuf>);

impl Drop for Mounts {
    fn drop(&mut self) {
        // Every layer (a read-only one may sit on top if the test failed midway).
        for m in &self.0 {
            for _ in 0..3 {
                let quiet = Command::new("umount").arg("-l").arg(m).stderr(std::process::Stdio::null()).status();
                if !quiet.is_ok_and(|s| s.success()) {
                    break;
                }
            }
        }
    }
}

fn mount_tmpfs(dir: &Path, size_mb: u64) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let out = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size_mb}m"), "tmpfs"])
        .arg(dir)
        .output()
        .map_err(|e| format!("cannot run mount: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    Ok(())
}

/// Remounts `dir` read-only or read-write; waits while files are open for writing there
/// (the node's fence guard outlives a stopped node for a moment, its log open).
fn remount(dir: &Path, mode: &str) {
    let deadline = std::time::Instant::now() + WITHIN;
    loop {
        let out = Command::new("mount").args(["-o", &format!("remount,{mode}")]).arg(dir).output().unwrap();
        if out.status.success() {
            return;
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(std::time::Instant::now() < deadline, "remount {mode} {}: {err}", dir.display());
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn mount_ro_over(dir: &Path) {
    let ok = Command::new("mount").args(["-t", "tmpfs", "-o", "ro,size=1m", "tmpfs"]).arg(dir).status().unwrap();
    assert!(ok.success(), "mount a read-only tmpfs over {}", dir.display());
}

fn free_bytes(dir: &Path) -> u64 {
    let out = Command::new("df").args(["-B1", "--output=avail"]).arg(dir).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().nth(1).unwrap().trim().parse().unwrap()
}

/// Fills `dir`'s filesystem until `leave` bytes are free.
fn fill(dir: &Path, leave: u64) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![7u8; 1 << 20];
    let mut left = free_bytes(dir).saturating_sub(leave);
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n]).unwrap();
        left -= n as u64;
    }
    f.sync_all().unwrap();
    path
}

async fn put(c: &Cluster, via: u64, key: &str, value: u64) -> (u16, Value) {
    c.req(via, Method::PUT, &format!("/v1/registers/{key}"), Some(json!({ "value": value })), None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_or_read_only_disk_refuses_writes_hands_over_and_recovers() {
    let mut c = Cluster::create(&[1, 2, 3], |_| vec!["--min-free-disk-mb".into(), "16".into()]);
    let mut mounts = Mounts(vec![]);
    for id in [1, 2, 3] {
        let dir = c.data_dir(id);
        if let Err(e) = mount_tmpfs(&dir, 64) {
            eprintln!("SKIPPED: cannot mount a tmpfs for the data dir ({e}); needs root");
            return;
        }
        mounts.0.push(dir);
    }
    for id in [1, 2, 3] {
        c.spawn(id);
    }
    let leader = c.wait_leader(WITHIN).await;
    for i in 0..20 {
        let (s, v) = put(&c, leader, &format!("before-{i}"), i).await;
        assert_eq!(s, 200, "{v}");
    }
    let dir = c.data_dir(leader);

    // Full: under the 16 MiB reserve.
    let filler = fill(&dir, 8 << 20);
    let other = c
        .eventually(WITHIN, "another node leads", || async {
            let id = [1, 2, 3].into_iter().find(|i| *i != leader)?;
            let (_, v) = c.get(id, "/v1/cluster?stale=true").await;
            v["leader"].as_u64().filter(|l| *l != leader)
        })
        .await;
    let (s, v) = c
        .eventually(WITHIN, "the full node refuses writes", || async {
            let (s, v) = put(&c, leader, "during", 1).await;
            (s == 503 && v["error"]["code"] == "disk_full").then_some((s, v))
        })
        .await;
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains(&dir.display().to_string()) && msg.contains("--min-free-disk-mb"), "{s} {v}");
    assert!(msg.contains("nothing was applied"), "{v}");
    let (s, v) = c.get(leader, "/readyz").await;
    assert_eq!((s, v["error"]["code"].as_str()), (503, Some("disk_full")), "{v}");
    let metrics = c.http.get(format!("{}/metrics", c.url(leader))).send().await.unwrap().text().await.unwrap();
    assert!(metrics.lines().any(|l| l == "berth_disk_usable 0"), "{metrics}");
    // The cluster goes on without it.
    for i in 0..20 {
        let (s, v) = put(&c, other, &format!("while-full-{i}"), i).await;
        assert_eq!(s, 200, "{v}");
    }
    assert!(c.nodes[&leader].child.is_some() && c.log_of(leader).contains("the data dir is not writable"));

    // Space back: it catches up (the writes it missed) and takes writes again.
    std::fs::remove_file(&filler).unwrap();
    c.eventually(WITHIN, "the node is ready again", || async {
        (c.get(leader, "/readyz").await.0 == 200).then_some(())
    })
    .await;
    let (_, v) = c.get(leader, "/v1/registers/while-full-19?stale=true").await;
    assert_eq!(v["value"], 19, "caught up: {v}");
    let (s, v) = put(&c, leader, "after-full", 1).await;
    assert_eq!(s, 200, "{v}");

    // Read-only under a running node: Linux refuses to remount a filesystem with files
    // open for writing (EBUSY), so a read-only tmpfs is mounted over the data dir — what
    // the node reaches by path (statvfs, the probe file) is then read-only.
    mount_ro_over(&dir);
    c.eventually(WITHIN, "the read-only node refuses writes", || async {
        let (s, v) = put(&c, leader, "during-ro", 1).await;
        (s == 503 && v["error"]["code"] == "disk_read_only").then_some(())
    })
    .await;
    let other = c.wait_leader_among(&[1, 2, 3].into_iter().filter(|i| *i != leader).collect::<Vec<_>>(), WITHIN).await;
    let (s, v) = put(&c, other, "while-ro", 7).await;
    assert_eq!(s, 200, "{v}");
    let ok = Command::new("umount").arg(&dir).status().unwrap().success();
    assert!(ok, "umount the read-only layer");
    c.eventually(WITHIN, "the node is ready after the remount", || async {
        (c.get(leader, "/readyz").await.0 == 200).then_some(())
    })
    .await;

    // A node that starts on a read-only data dir exits at once, saying so.
    assert!(c.stop(leader).success());
    remount(&dir, "ro");
    c.spawn(leader);
    let child = c.nodes.get_mut(&leader).unwrap().child.as_mut().unwrap();
    let deadline = std::time::Instant::now() + WITHIN;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "the node on a read-only data dir did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!status.success());
    let log = c.log_of(leader);
    assert!(log.contains("is unusable") && log.contains("Read-only file system"), "{log}");
    remount(&dir, "rw");

    // Nothing acknowledged is lost, and the data dir opens again after a restart.
    c.spawn(leader);
    c.eventually(WITHIN, "the restarted node is ready", || async {
        (c.get(leader, "/readyz").await.0 == 200).then_some(())
    })
    .await;
    for key in ["before-19", "while-full-19", "after-full", "while-ro"] {
        let (s, v) = c.get(leader, &format!("/v1/registers/{key}")).await;
        assert_eq!(s, 200, "{key}: {v}");
    }
}
