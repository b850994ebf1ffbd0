//! The Marathon `/v2` adapter against the client deploy jobs use: the `marathon`
//! package from PyPI drives a real 3-node cluster (process runtime) through
//! `tests/marathon_client.py` — create, tasks with their IPs from any node, a partial
//! update rolled out in place, scale, restart, versions and rollback, a stuck rollout
//! that locks the app and is cancelled, 422s and 404s, delete. And racing
//! creations of one app: exactly one 201, the others 409.
//!
//! The client comes from `BERTH_PYTHON` (default `python3`); CI installs it
//! (`pip install marathon==0.13.0`). Without it the test says so and passes, unless
//! `BERTH_REQUIRE_CLIENTS=1` (set by `.ci/run`), when it fails.

mod support;

use std::process::Command;
use std::time::Duration;

use support::{has_python_module, python, Cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_marathon_client_deploys_scales_restarts_and_rolls_back() {
    if !has_python_module("marathon") {
        return;
    }
    let c = Cluster::start(3, &[]);
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    c.create_pool(leader, "lan", 77).await;
    c.wait_hosts(leader, 3).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/marathon_client.py");
    let urls: Vec<String> = c.ids().iter().map(|id| c.url(*id)).collect();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python()).arg(script).arg("lan").args(&urls).output().expect("run the marathon client")
    })
    .await
    .unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the marathon client failed:\n{said}\nnode 1's log:\n{}", c.log_of(1));
    assert!(said.contains("all checks passed"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_racing_creations_of_one_app_exactly_one_succeeds() {
    let c = Cluster::start(3, &[]);
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    // Six creations at once through all three nodes, each with its own count: each
    // passes the existence check before any is applied.
    let posts = (0..6u64).map(|i| {
        let body = serde_json::json!({"id": "/race/web", "cmd": "sleep 1000", "instances": i + 1});
        let c = &c;
        async move { (i + 1, c.post(i % 3 + 1, "/v2/apps", body).await) }
    });
    let results = futures::future::join_all(posts).await;
    let created: Vec<u64> = results.iter().filter(|(_, (s, _))| *s == 201).map(|(n, _)| *n).collect();
    assert_eq!(created.len(), 1, "exactly one creation succeeds: {results:?}");
    for (_, (s, v)) in results.iter().filter(|(_, (s, _))| *s != 201) {
        assert_eq!(*s, 409, "{v}");
        assert_eq!(v["message"], "An app with id [/race/web] already exists.", "{v}");
    }
    // The app is the one whose creation was acknowledged, at its first version.
    let (s, v) = c.get(leader, "/v2/apps/race/web").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["app"]["instances"], created[0], "{v}");
    let (s, v) = c.get(leader, "/v1/apps/race-web").await;
    assert_eq!((s, v["version"].as_u64()), (200, Some(1)), "{v}");
}
