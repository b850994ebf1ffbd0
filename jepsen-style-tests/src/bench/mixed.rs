//! `mixed`: deploys, scaling, IP allocations and reads at once, on one 3-node cluster
//! with simulated hosts (as `placement`: registered, heartbeating, nothing runs), p50,
//! p99 and max per kind of operation.
//!
//! Concurrently, for `secs`:
//! - `deploy`: one client changing the spec of one of `apps` apps in turn (`PUT
//!   /v1/apps/{id}`, a new version and a rollout of its 4 instances);
//! - `scale`: one client scaling one of the apps in turn to 2–8 instances (`POST
//!   /v1/apps/{id}/scale`);
//! - `allocate`: `alloc_clients` clients allocating IPs (`POST
//!   /v1/ipam/pools/mix/allocations`);
//! - `read`: `read_clients` clients reading an app (`GET /v1/apps/{id}`, linearizable)
//!   and its instances (`GET /v1/instances?app=`) in turn.
//!
//! Clients spread over the three nodes (followers forward writes and check reads with
//! the leader). Every write is answered once committed and applied; the scheduler
//! places the instances the deploys and scales ask for meanwhile.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::json;

use super::placement::simulate_hosts;
use super::{create_pool, emit, round, Latencies};
use crate::cluster::Cluster;

/// One kind of operation: its clients' latencies and failures.
#[derive(Default)]
struct Tally {
    lat: Latencies,
    failed: u64,
    last_error: Option<String>,
}

/// The operation `op` of client `c` at its `seq`th turn; Err names what failed.
async fn one(
    http: &reqwest::Client,
    url: &str,
    op: &str,
    c: usize,
    seq: u64,
    apps: usize,
) -> Result<reqwest::StatusCode> {
    let app = format!("mix{}", (c as u64 + seq) % apps as u64);
    let r = match op {
        "deploy" => {
            let spec = json!({"id": app, "cmd": ["sleep", (seq % 1000).to_string()], "instances": 4,
                              "cpus": 0.01, "mem_mb": 1, "network": {"pool": "mix"}});
            http.put(format!("{url}/v1/apps/{app}")).json(&spec).send().await?
        }
        "scale" => {
            let n = 2 + seq % 7;
            http.post(format!("{url}/v1/apps/{app}/scale")).json(&json!({"instances": n})).send().await?
        }
        "allocate" => {
            http.post(format!("{url}/v1/ipam/pools/mix/allocations"))
                .json(&json!({"owner": format!("c{c}-{seq}")}))
                .send()
                .await?
        }
        _ if seq.is_multiple_of(2) => http.get(format!("{url}/v1/apps/{app}")).send().await?,
        _ => http.get(format!("{url}/v1/instances?app={app}")).send().await?,
    };
    let status = r.status();
    if !status.is_success() {
        bail!("{op}: {status} {}", r.text().await.unwrap_or_default());
    }
    // The whole answer counts (reads of a few instances: small).
    r.bytes().await?;
    Ok(status)
}

/// The scenario.
pub async fn run(hosts: u64, apps: usize, alloc_clients: usize, read_clients: usize, secs: f64) -> Result<()> {
    let cluster = Cluster::start(3, &["--cpus", "0.001", "--mem-mb", "1"])?;
    let http = reqwest::Client::builder().pool_max_idle_per_host(256).build()?;
    let leader = cluster.wait_leader(&http, Duration::from_secs(30)).await?;
    let beats = simulate_hosts(&cluster, &http, leader, hosts).await?;
    let url = cluster.url(leader);
    create_pool(&http, &url, "mix", "100.64.0.0/12").await?;
    // Every app exists before the clock starts (scale needs one; reads too).
    for a in 0..apps {
        // (Client `a` at turn `apps` names app `a`.)
        one(&http, &url, "deploy", a, apps as u64, apps).await?;
    }
    let urls: Arc<Vec<String>> = Arc::new(cluster.nodes.keys().map(|id| cluster.url(*id)).collect());
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let kinds = [("deploy", 1), ("scale", 1), ("allocate", alloc_clients), ("read", read_clients)];
    let mut tasks = Vec::new();
    for (op, clients) in kinds {
        for c in 0..clients {
            let (http, urls) = (http.clone(), urls.clone());
            tasks.push(tokio::spawn(async move {
                let mut t = Tally::default();
                let url = &urls[c % urls.len()];
                let mut seq = 0;
                while Instant::now() < end {
                    seq += 1;
                    let started = Instant::now();
                    match one(&http, url, op, c, seq, apps).await {
                        Ok(_) => t.lat.push(started.elapsed()),
                        Err(e) => {
                            t.failed += 1;
                            t.last_error = Some(e.to_string());
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
                (op, t)
            }));
        }
    }
    let mut by_op: std::collections::BTreeMap<&str, Tally> = Default::default();
    for task in tasks {
        let (op, t) = task.await?;
        let all = by_op.entry(op).or_default();
        all.lat.extend(t.lat);
        all.failed += t.failed;
        all.last_error = all.last_error.take().or(t.last_error);
    }
    beats.stop().await;
    for (op, clients) in kinds {
        let t = &by_op[op];
        emit(json!({
            "scenario": "mixed", "system": "berth", "op": op, "clients": clients, "ops": t.lat.len(),
            "ops_per_s": round(t.lat.len() as f64 / secs, 0), "failed": t.failed, "last_error": t.last_error,
            "p50_ms": round(t.lat.quantile(0.5), 2), "p99_ms": round(t.lat.quantile(0.99), 2),
            "max_ms": round(t.lat.max(), 2),
        }));
    }
    Ok(())
}
