//! `contact`: how long the hosts of the majority are out of contact with a leader when
//! the leader is cut off (`partition-leader`), beside the fence timeout they would
//! fence their sticky-IP instances at (half the host deadline).
//!
//! Each node runs in its own network namespace. A trial waits for a calm cluster (every
//! node a member, every host in contact within the last 1.5 s), cuts the leader off from the others, and
//! reads every other node's `berth_leader_contact_age_seconds` from `/metrics` every
//! 25 ms until each has been in contact since the cut. A host's **gap** is the largest
//! contact age it reported: the silence its agent saw, from its last contact before
//! the cut (up to one heartbeat interval earlier) to its first with the new leader.
//! A gap past the fence timeout means the host fenced its instances for nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;

use super::{emit, round, Latencies};
use crate::cluster::Cluster;

/// A node's contact age from its `/metrics`.
async fn contact_age(http: &reqwest::Client, url: &str) -> Result<f64> {
    let text = http.get(format!("{url}/metrics")).send().await?.text().await?;
    text.lines()
        .find_map(|l| l.strip_prefix("berth_leader_contact_age_seconds "))
        .context("no berth_leader_contact_age_seconds in /metrics")?
        .trim()
        .parse()
        .context("contact age is not a number")
}

/// Waits until every node in `ids` is a member (voter or learner: autopilot adds
/// them one at a time after the start) and was in contact within the last `within`.
async fn calm(c: &Cluster, http: &reqwest::Client, ids: &[u64], within: f64) -> Result<()> {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let members = match http.get(format!("{}/v1/cluster", c.url(ids[0]))).send().await {
            Ok(r) => r.json::<serde_json::Value>().await.ok().and_then(|v| v["members"].as_array().map(|m| m.len())),
            Err(_) => None,
        };
        let mut all = members == Some(ids.len());
        for id in ids {
            all &= contact_age(http, &c.url(*id)).await.is_ok_and(|a| a < within);
        }
        if all {
            return Ok(());
        }
        if Instant::now() > until {
            bail!("the hosts {ids:?} were not all in contact within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn run(trials: usize, nodes: u64, deadline_s: f64) -> Result<()> {
    if let Some(why) = crate::netns::unavailable() {
        bail!("the contact bench needs network namespaces: {why}");
    }
    let deadline = deadline_s.to_string();
    let c = Cluster::start_in(nodes, &["--host-deadline-s", &deadline, "--runtime", "process"], true)?;
    let net = c.net.as_ref().context("namespaces")?;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
    let ids: Vec<u64> = c.nodes.keys().copied().collect();
    let fence_after = deadline_s / 2.0;
    let (mut gaps, mut first_contact, mut fenced) = (Latencies::default(), Latencies::default(), 0);
    for trial in 0..trials {
        let leader = c.wait_leader(&http, Duration::from_secs(30)).await?;
        calm(&c, &http, &ids, 1.5).await?;
        let others: BTreeSet<u64> = ids.iter().copied().filter(|i| *i != leader).collect();
        net.partition(&[[leader].into(), others.clone()])?;
        let cut = Instant::now();
        let mut gap: BTreeMap<u64, f64> = others.iter().map(|i| (*i, 0.0)).collect();
        let mut back: BTreeMap<u64, f64> = BTreeMap::new();
        while back.len() < others.len() {
            if cut.elapsed() > Duration::from_secs_f64(deadline_s * 3.0) {
                let _ = net.heal();
                bail!(
                    "trial {trial}: hosts {:?} had no contact {} s after the leader was cut off",
                    gap,
                    deadline_s * 3.0
                );
            }
            let waiting: Vec<u64> = others.iter().copied().filter(|i| !back.contains_key(i)).collect();
            for id in &waiting {
                let asked = cut.elapsed().as_secs_f64();
                let Ok(age) = contact_age(&http, &c.url(*id)).await else { continue };
                let g = gap.get_mut(id).expect("every other node");
                *g = g.max(age);
                // In contact since the cut: its last contact is younger than the cut.
                if age < asked {
                    back.insert(*id, asked - age);
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        net.heal()?;
        let worst = gap.values().copied().fold(0.0, f64::max);
        let first = back.values().copied().fold(0.0, f64::max);
        let over = gap.values().filter(|g| **g >= fence_after).count();
        fenced += over;
        gaps.push(Duration::from_secs_f64(worst));
        first_contact.push(Duration::from_secs_f64(first));
        emit(json!({
            "scenario": "contact", "system": "berth", "trial": trial, "leader": leader,
            "worst_gap_ms": round(worst * 1000.0, 1), "last_first_contact_ms": round(first * 1000.0, 1),
            "hosts_past_fence": over,
        }));
    }
    emit(json!({
        "scenario": "contact", "system": "berth", "trials": trials, "nodes": nodes, "deadline_s": deadline_s,
        "fence_after_s": fence_after,
        "gap_p50_ms": round(gaps.quantile(0.5), 1), "gap_p99_ms": round(gaps.quantile(0.99), 1),
        "gap_max_ms": round(gaps.max(), 1),
        "first_contact_p50_ms": round(first_contact.quantile(0.5), 1),
        "first_contact_p99_ms": round(first_contact.quantile(0.99), 1),
        "hosts_past_fence": fenced,
        "gap_p99_over_fence": round(gaps.quantile(0.99) / 1000.0 / fence_after, 3),
    }));
    Ok(())
}
