//! `failover`: repeated `kill -9` of the leader; unavailability per kill, berth side by
//! side with etcd (defaults: 100 ms heartbeat, 1 s election timeout).
//!
//! During each round a writer sends one write every 5 ms to a survivor, each on its
//! own (so a write stuck with the dead leader does not delay the next). The
//! unavailability of a kill is the time from the last write acknowledged before the
//! kill to the first acknowledgement of a write sent after it. The killed node is
//! restarted from its data dir and the cluster settles before the next round.
//!
//! `--idle SECS` then runs both systems without faults and counts elections (term
//! changes): a calm cluster elects nobody.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;

use super::etcd::EtcdCluster;
use super::{emit, round, Latencies};
use crate::cluster::Cluster;

/// A system under test.
enum Sys {
    Berth(Cluster, reqwest::Client),
    Etcd(EtcdCluster),
}

impl Sys {
    fn name(&self) -> &'static str {
        match self {
            Sys::Berth(..) => "berth",
            Sys::Etcd(_) => "etcd",
        }
    }

    async fn leader(&self) -> Result<u64> {
        match self {
            Sys::Berth(c, http) => c.wait_leader(http, Duration::from_secs(30)).await,
            Sys::Etcd(e) => e.leader(Duration::from_secs(30)).await,
        }
    }

    fn ids(&self) -> Vec<u64> {
        match self {
            Sys::Berth(c, _) => c.nodes.keys().copied().collect(),
            Sys::Etcd(e) => e.ids(),
        }
    }

    fn kill(&mut self, id: u64) {
        match self {
            Sys::Berth(c, _) => c.kill(id),
            Sys::Etcd(e) => e.kill(id),
        }
    }

    fn restart(&mut self, id: u64) -> Result<()> {
        match self {
            Sys::Berth(c, _) => c.spawn(id),
            Sys::Etcd(e) => e.spawn(id),
        }
    }

    /// The current term as member `id` sees it.
    async fn term(&self, id: u64) -> Result<u64> {
        match self {
            Sys::Berth(c, http) => {
                let v: serde_json::Value =
                    http.get(format!("{}/v1/cluster?stale=true", c.url(id))).send().await?.json().await?;
                v["term"].as_u64().context("no term in /v1/cluster")
            }
            Sys::Etcd(e) => Ok(e.client(id).await?.status().await?.raft_term),
        }
    }

    /// A writer bound to member `id`: a function from a sequence number to one write.
    async fn writer(&self, id: u64) -> Result<Writer> {
        Ok(match self {
            Sys::Berth(c, http) => {
                Writer::Berth(http.clone(), format!("{}/v1/ipam/pools/failover/allocations", c.url(id)))
            }
            Sys::Etcd(e) => Writer::Etcd(e.client(id).await?),
        })
    }
}

#[derive(Clone)]
enum Writer {
    Berth(reqwest::Client, String),
    Etcd(super::etcd::Etcd),
}

impl Writer {
    async fn write(self, seq: u64) -> Result<()> {
        match self {
            Writer::Berth(http, url) => {
                let r = http.post(url).json(&json!({"owner": format!("w{seq}")})).send().await?;
                if r.status().as_u16() != 201 {
                    bail!("{}", r.status());
                }
            }
            Writer::Etcd(mut c) => c.put(b"/failover", seq.to_string().as_bytes()).await?,
        }
        Ok(())
    }
}

/// One kill: returns the unavailability it caused.
async fn round_once(sys: &mut Sys) -> Result<Duration> {
    let leader = sys.leader().await?;
    let survivor = *sys.ids().iter().find(|id| **id != leader).context("one node only")?;
    let writer = sys.writer(survivor).await?;
    // (invoked, acknowledged) of every successful write.
    let acks: Arc<Mutex<Vec<(Instant, Instant)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pump = {
        let (acks, stop) = (acks.clone(), stop.clone());
        tokio::spawn(async move {
            let mut seq = 0;
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tick.tick().await;
                seq += 1;
                let (w, acks) = (writer.clone(), acks.clone());
                tokio::spawn(async move {
                    let invoked = Instant::now();
                    if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(10), w.write(seq)).await {
                        acks.lock().unwrap().push((invoked, Instant::now()));
                    }
                });
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed_at = Instant::now();
    sys.kill(leader);
    let deadline = killed_at + Duration::from_secs(60);
    let first_after = loop {
        let first = acks.lock().unwrap().iter().filter(|(inv, _)| *inv >= killed_at).map(|(_, ack)| *ack).min();
        if let Some(t) = first {
            break t;
        }
        if Instant::now() > deadline {
            bail!("{}: no write acknowledged within 60 s of killing the leader", sys.name());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = pump.await;
    let last_before = acks.lock().unwrap().iter().map(|(_, ack)| *ack).filter(|ack| *ack < killed_at).max();
    let last_before = last_before.context("no write acknowledged before the kill")?;
    sys.restart(leader)?;
    // Let the restarted node catch up and the cluster settle before the next kill.
    tokio::time::sleep(Duration::from_secs(2)).await;
    sys.leader().await?;
    Ok(first_after - last_before)
}

async fn measure(sys: &mut Sys, kills: usize) -> Result<Latencies> {
    let mut lat = Latencies::default();
    for i in 0..kills {
        let d = round_once(sys).await.with_context(|| format!("{} kill {}", sys.name(), i + 1))?;
        lat.push(d);
    }
    emit(json!({
        "scenario": "failover", "system": sys.name(), "clients": 1, "kills": kills,
        "ops_per_s": null, "p50_ms": round(lat.quantile(0.5), 1), "p99_ms": round(lat.quantile(0.99), 1),
        "max_ms": round(lat.max(), 1),
    }));
    Ok(lat)
}

async fn berth(flags: &[String]) -> Result<Sys> {
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let cluster = Cluster::start(3, &flags)?;
    let http = reqwest::Client::new();
    let leader = cluster.wait_leader(&http, Duration::from_secs(30)).await?;
    super::create_pool(&http, &cluster.url(leader), "failover", "10.128.0.0/12").await?;
    Ok(Sys::Berth(cluster, http))
}

/// Elections (term changes seen by any member) during `secs` without faults.
async fn idle_elections(sys: &Sys, secs: u64) -> Result<u64> {
    let ids = sys.ids();
    let mut before = 0;
    for id in &ids {
        before = before.max(sys.term(*id).await?);
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let mut after = 0;
    for id in &ids {
        after = after.max(sys.term(*id).await?);
    }
    Ok(after - before)
}

/// The scenario. `flags` are passed to every berth node (e.g. timeouts to compare).
pub async fn run(kills: usize, idle_secs: u64, vs_etcd: bool, flags: &[String]) -> Result<()> {
    let mut b = berth(flags).await?;
    let bl = measure(&mut b, kills).await?;
    let mut anchor = None;
    if vs_etcd {
        let mut e = Sys::Etcd(EtcdCluster::start(3).await?);
        anchor = Some(measure(&mut e, kills).await?);
    }
    if let Some(el) = &anchor {
        emit(json!({
            "scenario": "failover", "anchor": "etcd", "goal": "berth p50 < 400 ms, p99 < 1 s",
            "p50_ratio": round(bl.quantile(0.5) / el.quantile(0.5).max(f64::MIN_POSITIVE), 2),
            "p99_ratio": round(bl.quantile(0.99) / el.quantile(0.99).max(f64::MIN_POSITIVE), 2),
        }));
    }
    if idle_secs > 0 {
        // Fresh clusters, both idle at once for the same wall-clock time.
        drop(b);
        let b = berth(flags).await?;
        let e = if vs_etcd { Some(Sys::Etcd(EtcdCluster::start(3).await?)) } else { None };
        let (be, ee) = tokio::join!(idle_elections(&b, idle_secs), async {
            match &e {
                Some(e) => Some(idle_elections(e, idle_secs).await),
                None => None,
            }
        });
        emit(json!({"scenario": "failover-idle", "system": "berth", "seconds": idle_secs, "elections": be?}));
        if let Some(ee) = ee {
            emit(json!({"scenario": "failover-idle", "system": "etcd", "seconds": idle_secs, "elections": ee?}));
        }
    }
    Ok(())
}
