//! `ipam`: allocations per second, latency and CPU per committed allocation, berth
//! side by side with etcd doing the job the way etcd-backed IPAM plugins do.
//!
//! berth: `POST /v1/ipam/pools/{pool}/allocations` on a 3-node cluster (redb, fsync
//! on), each client pinned to one node (followers forward to the leader).
//!
//! etcd: 3 members, default durability. An allocation is the classic optimistic
//! claim of CNI/libnetwork-style plugins: read the pool's "last allocated" hint, then
//! a transaction that creates `ip/<n>` only if it does not exist (create revision 0)
//! and moves the hint; on conflict the transaction's else branch returns the current
//! hint and the client tries the next free candidate. Every client chases the same
//! next address, so under concurrency most claims conflict — that is the design being
//! measured. As a best case for etcd, `etcd-random` claims random addresses instead
//! (almost no conflicts, at the price of no lowest-free order), with the same
//! transaction.
//!
//! The three nodes (and the three members) share this host's CPUs. berth's nodes take
//! their share of them, as `berth dev`'s do (`--worker-threads` = CPUs / nodes, at
//! least 1; the harness's `Cluster`). etcd runs as shipped; its best design runs once
//! more with `GOMAXPROCS` set the same way (`etcd-best-shared`), and the anchor is the
//! best etcd row at each client count.
//!
//! At one client the run also measures this machine's floor (`floor`): three copies
//! of each write, two of them durable before the answer, with no software around it —
//! how far above the anchor any system could get on these cores and this disk.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use berth_raft::stages::{self, Step};
use serde_json::json;

use super::etcd::{pb, Etcd, EtcdCluster};
use super::floor;
use super::{cpu_total, create_pool, emit, round, Latencies};
use crate::cluster::Cluster;

/// Addresses per pool (a /14): more than any run allocates.
const POOL_SIZE: u64 = 1 << 18;

/// What one configuration measured.
struct Measured {
    ops: u64,
    failed: u64,
    conflicts: u64,
    secs: f64,
    cpu_s: f64,
    lat: Latencies,
}

impl Measured {
    fn line(&self, system: &str, clients: usize) -> serde_json::Value {
        let ops = self.ops.max(1) as f64;
        json!({
            "scenario": "ipam", "system": system, "clients": clients, "ops": self.ops, "failed": self.failed,
            "ops_per_s": round(self.ops as f64 / self.secs, 0),
            "p50_ms": round(self.lat.quantile(0.5), 2), "p99_ms": round(self.lat.quantile(0.99), 2),
            "cpu_ms_per_op": round(self.cpu_s * 1000.0 / ops, 3),
            "conflicts_per_op": round(self.conflicts as f64 / ops, 2),
        })
    }
}

/// Runs `clients` loops of `op` for `secs`; `op(client, seq)` returns the conflicts it
/// met, or an error for a failed allocation.
async fn drive<F, Fut>(clients: usize, secs: f64, pids: &[u32], op: F) -> Measured
where
    F: Fn(usize, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<u64>> + Send,
{
    let conflicts = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let cpu0 = cpu_total(pids);
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (op, conflicts, failed) = (op.clone(), conflicts.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Latencies::default();
            let mut seq = 0;
            while Instant::now() < end {
                seq += 1;
                let t = Instant::now();
                match op(c, seq).await {
                    Ok(n) => {
                        lat.push(t.elapsed());
                        conflicts.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            lat
        }));
    }
    let mut lat = Latencies::default();
    for t in tasks {
        if let Ok(l) = t.await {
            lat.extend(l);
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    Measured {
        ops: lat.len() as u64,
        failed: failed.load(Ordering::Relaxed),
        conflicts: conflicts.load(Ordering::Relaxed),
        secs,
        cpu_s: cpu_total(pids) - cpu0,
        lat,
    }
}

/// The nodes' items in id order, rotated to start at the leader: client `c` is pinned
/// to item `c % n`, so one client talks to the leader (with either system) and more
/// spread evenly, whichever node won the election.
fn from_leader<T>(mut items: Vec<(u64, T)>, leader: u64) -> Vec<T> {
    items.sort_by_key(|(id, _)| *id);
    let at = items.iter().position(|(id, _)| *id == leader).unwrap_or(0);
    items.rotate_left(at);
    items.into_iter().map(|(_, t)| t).collect()
}

/// Subnet of the `i`th configuration's pool: 10.64.0.0/14, 10.68.0.0/14, ...
fn subnet(i: usize) -> String {
    format!("10.{}.0.0/14", 64 + 4 * (i % 32))
}

/// One client's `GET`s of `url` for `secs`, each waited for: the HTTP round trip alone.
async fn http_round_trips(http: &reqwest::Client, url: &str, secs: f64) -> Result<floor::OneClient> {
    let (mut lat, t0) = (Latencies::default(), Instant::now());
    let end = t0 + Duration::from_secs_f64(secs);
    while Instant::now() < end {
        let t = Instant::now();
        let r = http.get(url).send().await?;
        if !r.status().is_success() {
            bail!("{url}: {}", r.status());
        }
        lat.push(t.elapsed());
    }
    Ok(floor::OneClient { secs: t0.elapsed().as_secs_f64(), lat })
}

async fn berth_level(
    cluster: &Cluster,
    http: &reqwest::Client,
    i: usize,
    clients: usize,
    secs: f64,
) -> Result<Measured> {
    let leader = cluster.wait_leader(http, Duration::from_secs(30)).await?;
    let pool = format!("b{i}-{clients}");
    create_pool(http, &cluster.url(leader), &pool, &subnet(i)).await?;
    let urls = from_leader(cluster.nodes.keys().map(|id| (*id, cluster.url(*id))).collect(), leader);
    let pids: Vec<u32> = cluster.nodes.keys().filter_map(|id| cluster.pid(*id)).collect();
    let http = http.clone();
    Ok(drive(clients, secs, &pids, move |c, seq| {
        let url = format!("{}/v1/ipam/pools/{pool}/allocations", urls[c % urls.len()]);
        let http = http.clone();
        async move {
            stages::mark(Step::ClientSend);
            let r = http.post(url).json(&json!({"owner": format!("c{c}-{seq}")})).send().await?;
            stages::mark(Step::ClientDone);
            if r.status().as_u16() != 201 {
                bail!("allocation failed: {}", r.status());
            }
            Ok(0)
        }
    })
    .await)
}

/// How an etcd client picks the address it tries to claim.
#[derive(Clone, Copy)]
enum Probe {
    /// The address after the pool's "last allocated" hint (CNI host-local style).
    Hint,
    /// A random address, seeded per client and operation.
    Random(u64),
}

/// One etcd allocation: pick a candidate, claim it if still free, else pick again.
async fn etcd_allocate(client: &mut Etcd, pool: &str, owner: String, probe: Probe) -> Result<u64> {
    let hint_key = format!("/ipam/{pool}/last").into_bytes();
    let mut last: u64 = match probe {
        Probe::Hint => match client.get(&hint_key).await? {
            Some(kv) => std::str::from_utf8(&kv.value)?.parse()?,
            None => 0,
        },
        Probe::Random(_) => 0,
    };
    let mut rng = match probe {
        Probe::Random(seed) => seed | 1,
        Probe::Hint => 0,
    };
    for conflicts in 0..POOL_SIZE {
        let n = match probe {
            Probe::Hint => last % POOL_SIZE + 1,
            Probe::Random(_) => {
                // xorshift64
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng % POOL_SIZE + 1
            }
        };
        let key = format!("/ipam/{pool}/ip/{n}").into_bytes();
        let req = pb::TxnRequest {
            compare: vec![pb::Compare {
                result: pb::RESULT_EQUAL,
                target: pb::TARGET_CREATE,
                key: key.clone(),
                target_union: Some(pb::TargetUnion::CreateRevision(0)),
            }],
            success: vec![
                pb::RequestOp { request: Some(pb::Request::Put(pb::PutRequest { key, value: owner.clone().into() })) },
                pb::RequestOp {
                    request: Some(pb::Request::Put(pb::PutRequest {
                        key: hint_key.clone(),
                        value: n.to_string().into_bytes(),
                    })),
                },
            ],
            failure: vec![pb::RequestOp {
                request: Some(pb::Request::Range(pb::RangeRequest { key: hint_key.clone(), ..Default::default() })),
            }],
        };
        let r = client.txn(req).await?;
        if r.succeeded {
            return Ok(conflicts);
        }
        // Taken: move past both it and the hint someone else has advanced.
        let hint = r.responses.into_iter().find_map(|op| match op.response {
            Some(pb::Response::Range(rr)) => rr.kvs.into_iter().next(),
            _ => None,
        });
        let hint: u64 = hint.and_then(|kv| std::str::from_utf8(&kv.value).ok()?.parse().ok()).unwrap_or(0);
        last = n.max(hint);
    }
    bail!("pool {pool} exhausted")
}

async fn etcd_level(etcd: &EtcdCluster, i: usize, clients: usize, secs: f64, random: bool) -> Result<Measured> {
    let leader = etcd.leader(Duration::from_secs(30)).await?;
    let mut conns = Vec::new();
    for id in etcd.ids() {
        conns.push((id, etcd.client(id).await?));
    }
    let conns = from_leader(conns, leader);
    let pool = format!("e{i}-{clients}-{random}");
    let pids = etcd.pids();
    Ok(drive(clients, secs, &pids, move |c, seq| {
        // gRPC multiplexes: one channel per member, shared by the clients pinned to it.
        let mut client = conns[c % conns.len()].clone();
        let pool = pool.clone();
        let probe = if random { Probe::Random((c as u64) << 32 | seq) } else { Probe::Hint };
        async move { etcd_allocate(&mut client, &pool, format!("c{c}-{seq}"), probe).await }
    })
    .await)
}

/// `etcd-best` at one client count (see [`super::etcd_best`]).
#[cfg(feature = "etcd-best")]
async fn etcd_best_level(etcd: &EtcdCluster, i: usize, clients: usize, secs: f64) -> Result<Option<Measured>> {
    let leader = etcd.leader(Duration::from_secs(30)).await?;
    let endpoints = from_leader(etcd.ids().into_iter().map(|id| (id, etcd.endpoint(id))).collect(), leader);
    let conns = super::etcd_best::clients(&endpoints, clients, i as u64).await?;
    let conns: Arc<Vec<tokio::sync::Mutex<super::etcd_best::BestClient>>> =
        Arc::new(conns.into_iter().map(tokio::sync::Mutex::new).collect());
    let pool = format!("best{i}-{clients}");
    Ok(Some(
        drive(clients, secs, &etcd.pids(), move |c, seq| {
            let (conns, pool) = (conns.clone(), pool.clone());
            // Each client locks only its own connection: never contended.
            async move { conns[c].lock().await.allocate(&pool, POOL_SIZE, &format!("c{c}-{seq}")).await }
        })
        .await,
    ))
}

#[cfg(not(feature = "etcd-best"))]
async fn etcd_best_level(_: &EtcdCluster, _: usize, _: usize, _: f64) -> Result<Option<Measured>> {
    Ok(None)
}

/// The scenario: each client count in turn, berth then the etcd designs; the goal is
/// set against the best etcd row at each count (highest throughput). With `stages`
/// (the directory `BERTH_STAGES` names, set before this process and its nodes
/// started), berth's one-client levels also report where an allocation's time went
/// (`bench::stages`).
pub async fn run(levels: &[usize], secs: f64, vs_etcd: bool, stages: Option<&std::path::Path>) -> Result<()> {
    let cluster = Cluster::start(3, &[])?;
    let etcd = if vs_etcd { Some(EtcdCluster::start(3).await?) } else { None };
    // The best design once more, its members sharing the CPUs as berth's nodes do
    // (`--worker-threads`, GOMAXPROCS): the anchor is the better of the two.
    let shared = if vs_etcd && cfg!(feature = "etcd-best") { Some(EtcdCluster::start_shared(3).await?) } else { None };
    if vs_etcd && cfg!(not(feature = "etcd-best")) {
        emit(json!({"scenario": "ipam", "system": "etcd-best", "skipped":
            "berth-bench was built without the etcd-best feature (it needs protoc: apt-get install protobuf-compiler; \
             then cargo build --release -p berth-jepsen --features etcd-best)"}));
    }
    let http = reqwest::Client::builder().pool_max_idle_per_host(1024).build()?;
    let mut ratios = Vec::new();
    for (i, &clients) in levels.iter().enumerate() {
        let from = stages::now_ns();
        let b = berth_level(&cluster, &http, i, clients, secs).await?;
        emit(b.line("berth", clients));
        if let (Some(dir), 1) = (stages, clients) {
            // The nodes append their marks every FLUSH_EVERY: wait for the last ones.
            let to = stages::now_ns();
            tokio::time::sleep(stages::FLUSH_EVERY * 2).await;
            // A breakdown that cannot be made says why, and the run goes on.
            let stages = super::stages::read(dir, from, to)
                .and_then(|marks| super::stages::breakdown(&marks, std::process::id()))
                .map_or_else(|e| json!({"error": format!("{e:#}")}), |b| b.to_json());
            emit(json!({"scenario": "ipam", "system": "berth", "clients": 1, "stages": stages}));
        }
        let Some(etcd) = &etcd else { continue };
        let mut rows = vec![("etcd", etcd_level(etcd, i, clients, secs, false).await?)];
        emit(rows[0].1.line("etcd", clients));
        rows.push(("etcd-random", etcd_level(etcd, i, clients, secs, true).await?));
        emit(rows[1].1.line("etcd-random", clients));
        if let Some(best) = etcd_best_level(etcd, i, clients, secs).await? {
            emit(best.line("etcd-best", clients));
            rows.push(("etcd-best", best));
        }
        if let Some(shared) = &shared {
            if let Some(best) = etcd_best_level(shared, i, clients, secs).await? {
                emit(best.line("etcd-best-shared", clients));
                rows.push(("etcd-best-shared", best));
            }
        }
        let per_s = |m: &Measured| m.ops as f64 / m.secs;
        let (anchor, a) = rows.iter().max_by(|x, y| per_s(&x.1).total_cmp(&per_s(&y.1))).expect("rows");
        // At one client, the machine's own floor beside them (`floor`): how far above
        // the anchor any system could get here; and the ceiling for one that serves
        // this HTTP API: the floor with its client's bare round trip (`floor-hop`)
        // replaced by an HTTP one through berth's server that does nothing (`http`).
        let floor = if clients == 1 {
            let short = secs.min(3.0);
            let f = tokio::task::spawn_blocking(move || {
                let dir = tempfile::tempdir()?;
                floor::measure(dir.path(), secs)
            })
            .await??;
            let hop = tokio::task::spawn_blocking(move || floor::hop(short)).await??;
            let leader = cluster.wait_leader(&http, Duration::from_secs(30)).await?;
            let http_rt = http_round_trips(&http, &format!("{}/healthz", cluster.url(leader)), short).await?;
            for (system, m) in [("floor", &f), ("floor-hop", &hop), ("http", &http_rt)] {
                emit(json!({
                    "scenario": "ipam", "system": system, "clients": 1, "ops": m.lat.len(),
                    "ops_per_s": round(m.lat.len() as f64 / m.secs, 0),
                    "p50_ms": round(m.lat.quantile(0.5), 3), "p99_ms": round(m.lat.quantile(0.99), 3),
                }));
            }
            // Mean cycles in µs: what the throughput at one client is the inverse of.
            let (a_us, b_us) = (1e6 / per_s(a).max(f64::MIN_POSITIVE), 1e6 / per_s(&b).max(f64::MIN_POSITIVE));
            let (f_us, hop_us, http_us) = (f.cycle_us(), hop.cycle_us(), http_rt.cycle_us());
            let ceiling_us = f_us - hop_us + http_us;
            Some(json!({
                "floor_ratio": round(a_us / f_us, 2),
                "berth_of_floor": round(f_us / b_us, 2),
                "hop_us": round(hop_us, 1),
                "http_us": round(http_us, 1),
                "ceiling_ratio": round(a_us / ceiling_us, 2),
                "berth_of_ceiling": round(ceiling_us / b_us, 2),
                "berth_above_ceiling_us": round(b_us - ceiling_us, 1),
                "for_3x_us": round(a_us / 3.0 - ceiling_us, 1),
            }))
        } else {
            None
        };
        let mut p99 = serde_json::Map::new();
        let mut cpu = serde_json::Map::new();
        for (name, m) in std::iter::once(("berth", &b)).chain(rows.iter().map(|(n, m)| (*n, m))) {
            p99.insert(name.into(), json!(round(m.lat.quantile(0.99), 2)));
            cpu.insert(name.into(), json!(round(m.cpu_s * 1000.0 / m.ops.max(1) as f64, 3)));
        }
        ratios.push(json!({
            "clients": clients,
            "anchor": anchor,
            "throughput_ratio": round(per_s(&b) / per_s(a).max(f64::MIN_POSITIVE), 2),
            "p99_at_or_below_anchor": b.lat.quantile(0.99) <= a.lat.quantile(0.99),
            "p99_ms": p99,
            "cpu_ms_per_op": cpu,
            "floor": floor,
        }));
    }
    if vs_etcd {
        emit(json!({"scenario": "ipam", "anchor": "the best etcd row at each client count",
                    "goal": "berth >= 3x its throughput at equal or lower p99", "ratios": ratios}));
    }
    Ok(())
}
