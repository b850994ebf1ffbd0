//! The CLI against a real cluster: tables, `-o json`, `--addr` fallback, errors.

mod support;

use std::process::Command;
use std::time::Duration;

use support::{Cluster, BERTH};

fn berth(addr: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BERTH).arg("--addr").arg(addr).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_manages_pools_and_falls_back_to_the_next_node() {
    let c = Cluster::start(3, &[]);
    c.wait_leader(Duration::from_secs(20)).await;
    // The first address refuses connections: the CLI moves on to the next.
    let addr = format!("http://127.0.0.1:1,{}", c.url(2));
    let (code, out, err) =
        berth(&addr, &["ipam", "create", "lan", "--subnet", "198.18.20.0/24", "--range", "198.18.20.8/29"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("NAME"), "{out}");
    let (code, out, _) = berth(&addr, &["ipam", "allocate", "lan", "--owner", "cli-test"]);
    assert_eq!((code, out.trim()), (0, "198.18.20.8"));
    let (code, out, _) = berth(&c.url(3), &["ipam", "allocations", "lan", "-o", "json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v, serde_json::json!([{"ip": "198.18.20.8", "owner": "cli-test"}]));
    let (code, out, _) = berth(&c.url(1), &["cluster"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("leader "), "{out}");
    assert_eq!(out.lines().filter(|l| l.contains("voter")).count(), 3, "{out}");

    // An API error: non-zero exit, one line naming the problem and its code.
    let (code, _, err) = berth(&c.url(1), &["ipam", "release", "lan", "198.18.20.9"]);
    assert_ne!(code, 0);
    assert_eq!(err, "berth: 198.18.20.9 is not allocated in pool lan (allocation_not_found)");
    let (code, _, err) = berth("http://127.0.0.1:1", &["ipam", "pools"]);
    assert_ne!(code, 0);
    assert!(err.starts_with("berth: no node answered: http://127.0.0.1:1 (connection refused)"), "{err}");
}
