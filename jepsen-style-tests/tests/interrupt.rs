//! `berth-bench` stopped by SIGTERM mid-run stops the cluster it started: no `berth
//! agent` outlives it.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The pids of the live processes whose parent is `parent`, with their names.
fn children(parent: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // pid (comm) state ppid ...: comm may hold spaces, so split after its ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        let mut rest = stat[close + 1..].split_whitespace();
        let (state, ppid) = (rest.next(), rest.next().and_then(|p| p.parse::<u32>().ok()));
        if ppid == Some(parent) && state != Some("Z") {
            out.push((pid, stat[open + 1..close].to_string()));
        }
    }
    out
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

#[test]
fn a_bench_stopped_by_sigterm_stops_its_cluster() {
    let mut bench = Command::new(env!("CARGO_BIN_EXE_berth-bench"))
        .args(["ipam", "--clients", "1", "--secs", "120"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("berth-bench starts");
    // The three nodes of its cluster, once it has started them.
    let deadline = Instant::now() + Duration::from_secs(60);
    let nodes = loop {
        let nodes: Vec<u32> =
            children(bench.id()).into_iter().filter(|(_, name)| name == "berth").map(|(pid, _)| pid).collect();
        if nodes.len() == 3 {
            break nodes;
        }
        assert!(Instant::now() < deadline, "berth-bench did not start its 3 nodes: {:?}", children(bench.id()));
        assert!(bench.try_wait().unwrap().is_none(), "berth-bench ended before its cluster was up");
        std::thread::sleep(Duration::from_millis(100));
    };
    // Let it get into its measurement, then stop it.
    std::thread::sleep(Duration::from_secs(2));
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(bench.id() as i32, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = bench.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "berth-bench did not end within 30 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut bench.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "a stopped run must not exit 0: {stderr}");
    assert!(stderr.contains("SIGTERM"), "the error names the signal: {stderr}");
    let left: Vec<u32> = nodes.into_iter().filter(|p| alive(*p)).collect();
    assert!(left.is_empty(), "nodes outlived the bench: {left:?}");
}
