//! `hostloss`: `kill -9` a host running instances with sticky IPs; the time until every
//! one of them runs on another host with its IP, beside the host deadline
//! (`--host-deadline-s`) it cannot beat — the leader must wait that long before moving
//! anything, or an IP could be live twice.
//!
//! Two kinds of trials: a follower host (goal: deadline + 3 s at p99), and the leader's
//! own host (goal: 2 × deadline + 3 s: a new leader is elected, then gives every host
//! a fresh deadline). Each trial reads what really runs on every host (the process
//! runtime's pid files against /proc) every 50 ms and counts any IP live on two hosts.
//! The killed node is restarted and the instances spread again (scale to 0 and back)
//! before the next trial.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use reqwest::Method;
use serde_json::{json, Value};

use super::{call, emit, round, Latencies};
use crate::cluster::Cluster;

const APP: &str = "hostloss";

/// (host, ip, state) per instance, from `url`.
async fn placements(http: &reqwest::Client, url: &str) -> Result<BTreeMap<String, (u64, String, String)>> {
    let v = call(http, Method::GET, format!("{url}/v1/instances?app={APP}"), None).await?;
    let list = v.as_array().cloned().unwrap_or_default();
    Ok(list
        .iter()
        .map(|i| {
            (
                i["id"].as_str().unwrap_or("").to_string(),
                (
                    i["host"].as_u64().unwrap_or(0),
                    i["ip"].as_str().unwrap_or("").to_string(),
                    i["state"].as_str().unwrap_or("").to_string(),
                ),
            )
        })
        .collect())
}

/// Waits until all `n` instances run; their placements.
async fn all_running(
    http: &reqwest::Client,
    url: &str,
    n: usize,
    within: Duration,
) -> Result<BTreeMap<String, (u64, String, String)>> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(p) = placements(http, url).await {
            if p.len() == n && p.values().all(|(h, _, s)| *h > 0 && s == "running") {
                return Ok(p);
            }
        }
        if Instant::now() > deadline {
            bail!("the {n} instances did not all run within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn host_up(http: &reqwest::Client, url: &str, host: u64) -> bool {
    let Ok(v) = call(http, Method::GET, format!("{url}/v1/hosts"), None).await else { return false };
    v.as_array().is_some_and(|a| a.iter().any(|h| h["id"] == host && h["state"] == "up"))
}

pub async fn run(trials: usize, leader_trials: usize, deadline_s: f64, instances: u32) -> Result<()> {
    let deadline = deadline_s.to_string();
    let mut c = Cluster::start(3, &["--host-deadline-s", &deadline, "--runtime", "process"])?;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
    let leader = c.wait_leader(&http, Duration::from_secs(30)).await?;
    let url = c.url(leader);
    call(&http, Method::POST, format!("{url}/v1/ipam/pools"), Some(json!({"name": "lan", "subnet": "198.18.50.0/24"})))
        .await?;
    let spec = json!({
        "id": APP,
        "cmd": ["/bin/sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.5 & wait $!; done"],
        "instances": instances,
        "cpus": 0.01,
        "mem_mb": 8,
        "stop_grace_s": 1,
        "network": {"pool": "lan"},
    });
    call(&http, Method::PUT, format!("{url}/v1/apps/{APP}"), Some(spec)).await?;
    all_running(&http, &url, instances as usize, Duration::from_secs(60)).await?;

    let mut results: BTreeMap<&str, (Latencies, usize)> = BTreeMap::new();
    for trial in 0..trials + leader_trials {
        let kind = if trial < trials { "host" } else { "leader" };
        let leader = c.wait_leader(&http, Duration::from_secs(30)).await?;
        let ids: Vec<u64> = c.nodes.keys().copied().collect();
        // Spread the instances again so the victim runs its share.
        let url = c.url(leader);
        for n in [0, instances] {
            call(&http, Method::POST, format!("{url}/v1/apps/{APP}/scale"), Some(json!({"instances": n}))).await?;
        }
        let before = all_running(&http, &url, instances as usize, Duration::from_secs(60)).await?;
        let followers: Vec<u64> = ids.iter().copied().filter(|i| *i != leader).collect();
        let victim = if kind == "leader" { leader } else { followers[trial % followers.len()] };
        let lost: BTreeMap<&String, &String> =
            before.iter().filter(|(_, (h, _, _))| *h == victim).map(|(id, (_, ip, _))| (id, ip)).collect();
        if lost.is_empty() {
            bail!("trial {trial}: host {victim} runs no instance after the spread: {before:?}");
        }
        let survivor = *ids.iter().find(|i| **i != victim).unwrap();
        let surl = c.url(survivor);
        c.kill(victim);
        let killed = Instant::now();
        let mut twice = 0;
        let took = loop {
            if !c.ips_live_twice().is_empty() {
                twice += 1;
            }
            if let Ok(now) = placements(&http, &surl).await {
                let moved = lost.iter().all(|(id, ip)| {
                    now.get(*id).is_some_and(|(h, nip, s)| *h != victim && *h > 0 && nip == *ip && s == "running")
                });
                if moved {
                    break killed.elapsed();
                }
            }
            if killed.elapsed() > Duration::from_secs_f64(deadline_s * 3.0 + 30.0) {
                let now = placements(&http, &surl).await.ok();
                bail!("trial {trial}: the instances {lost:?} of host {victim} did not run elsewhere in time: {now:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        emit(json!({
            "scenario": "hostloss", "system": "berth", "kind": kind, "trial": trial, "host": victim,
            "instances_moved": lost.len(), "ms": round(took.as_secs_f64() * 1000.0, 1), "ips_live_twice": twice,
        }));
        let r = results.entry(kind).or_default();
        r.0.push(took);
        r.1 += twice;
        c.spawn(victim)?;
        let until = Instant::now() + Duration::from_secs(60);
        while !host_up(&http, &surl, victim).await {
            if Instant::now() > until {
                bail!("host {victim} did not come back up");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    for (kind, (lat, twice)) in &results {
        let goal = if *kind == "leader" { 2.0 * deadline_s + 3.0 } else { deadline_s + 3.0 };
        let summary: Value = json!({
            "scenario": "hostloss", "system": "berth", "kind": kind, "trials": lat.len(),
            "instances": instances, "deadline_s": deadline_s, "goal_p99_s": goal,
            "p50_ms": round(lat.quantile(0.5), 1), "p99_ms": round(lat.quantile(0.99), 1),
            "max_ms": round(lat.max(), 1), "ips_live_twice": twice,
            "p99_over_deadline": round(lat.quantile(0.99) / 1000.0 / deadline_s, 3),
            "meets_goal": lat.quantile(0.99) / 1000.0 <= goal && *twice == 0,
        });
        emit(summary);
    }
    Ok(())
}
