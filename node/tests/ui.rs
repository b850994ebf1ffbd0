//! The web UI (`/ui`) in headless Chromium, driven by Selenium as a person would use it
//! (`tests/ui_client.py`): a 3-node cluster with a running app, and the page on a
//! follower reads apps, instances with their IPs, hosts, pools, deployments and live
//! events, and deploys, scales, restarts, rolls back, cancels a stuck rollout, drains
//! a host and shows berth's error messages — each checked against the API.
//!
//! Needs Debian's `chromium` and `chromium-driver` and `selenium` from PyPI (CI
//! installs them); without them the test says so and passes, unless
//! `BERTH_REQUIRE_CLIENTS=1`. With `BERTH_UI_SCREENSHOTS=DIR` the screenshots go to
//! DIR (the ones in `docs/ui/` were made so); else to a temporary directory.

mod support;

use std::process::Command;
use std::time::Duration;

use support::{has_python_module, python, served_app, Cluster};

fn has_chromium() -> bool {
    let missing: Vec<&str> = ["/usr/bin/chromium", "/usr/bin/chromedriver"]
        .into_iter()
        .filter(|p| !std::path::Path::new(p).exists())
        .collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var("BERTH_REQUIRE_CLIENTS").is_err(),
        "BERTH_REQUIRE_CLIENTS is set but {missing:?} are missing (apt-get install chromium chromium-driver)"
    );
    eprintln!("SKIPPED: {missing:?} missing (apt-get install chromium chromium-driver)");
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_ui_shows_the_cluster_and_deploys_scales_restarts_and_rolls_back() {
    if !has_python_module("selenium") || !has_chromium() {
        return;
    }
    let c = Cluster::start(3, &[]);
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    c.create_pool(leader, "lan", 62).await;
    c.wait_hosts(leader, 3).await;
    let (s, v) = c.req(leader, reqwest::Method::PUT, "/v1/apps/web", Some(served_app("web", 2, "lan")), None).await;
    assert_eq!(s, 201, "{v}");
    c.eventually(Duration::from_secs(30), "web healthy", || async {
        let (_, app) = c.get(leader, "/v1/apps/web").await;
        (app["healthy"] == 2).then_some(())
    })
    .await;

    let tmp = tempfile::tempdir().unwrap();
    let shots = std::env::var("BERTH_UI_SCREENSHOTS").unwrap_or_else(|_| tmp.path().to_str().unwrap().to_string());
    std::fs::create_dir_all(&shots).unwrap();
    let follower = c.ids().into_iter().find(|i| *i != leader).unwrap();
    let url = c.url(follower);
    let spec = served_app("api", 1, "lan").to_string();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/ui_client.py");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .arg(script)
            .args([&url, "lan", &shots])
            .env("BERTH_UI_SPEC", spec)
            .output()
            .expect("run the UI client")
    })
    .await
    .unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the UI client failed:\n{said}\nnode {follower}'s log:\n{}", c.log_of(follower));
    assert!(said.contains("all checks passed"), "{said}");
}
