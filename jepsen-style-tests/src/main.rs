//! berth-jepsen: runs berth on several nodes, breaks them, and judges the history.
//!
//! `cargo build --release --bin berth && cargo run --release -p berth-jepsen -- --nodes 5 --workload ipam --nemesis kill,pause --time 60`
//!
//! This build runs nodes as processes on loopback with the faults that need no root:
//! `kill` (SIGKILL of a random node, then a restart), `kill-leader`, `pause`
//! (SIGSTOP/SIGCONT). Partitions in network namespaces are the next step (docs/chaos.md).
//! Every fault is healed at the end and the cluster converges before the final reads.
//! Each run writes a report folder; the exit status is non-zero when a checker fails.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use berth_jepsen::checker::{self, Verdict};
use berth_jepsen::cluster::Cluster;
use berth_jepsen::history::{pair, Event, Kind};
use berth_jepsen::report::{self, Fault};
use clap::Parser;
use serde_json::{json, Value};

#[derive(Parser, Debug)]
#[command(name = "berth-jepsen")]
struct Args {
    /// Nodes in the cluster (3 or 5).
    #[arg(long, default_value_t = 5)]
    nodes: u64,
    /// Workloads, comma separated: ipam, register, set, converge (apps with sticky IPs;
    /// the checker reads what really runs on every host).
    #[arg(long, default_value = "ipam", value_delimiter = ',')]
    workload: Vec<String>,
    /// Nemeses, comma separated: kill, kill-leader, pause, restart-all, partition,
    /// partition-leader, partition-ring, partition-bridge, host-loss (a node killed, or
    /// cut off when namespaces allow, for longer than the host deadline), disk-full (a
    /// node's data dir, a tmpfs of its own, filled past its reserve), tls-reload (with
    /// --tls: a node's certificate renewed and reloaded by SIGHUP, sometimes after files
    /// that fail the checks; the node must serve on and present the new one), or none.
    /// Partitions and disk-full need root.
    #[arg(long, default_value = "kill,pause", value_delimiter = ',')]
    nemesis: Vec<String>,
    /// Seconds of workload (and faults) per workload.
    #[arg(long, default_value_t = 60)]
    time: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    clients: u64,
    /// register: read the local replica (`?stale=true`) — the checker must then fail
    /// when a stale read happens.
    #[arg(long)]
    stale_reads: bool,
    /// A short smoke of every workload with every nemesis (what CI runs).
    #[arg(long)]
    quick: bool,
    /// Where reports go (one folder per run).
    #[arg(long, default_value = "target/chaos")]
    out: PathBuf,
    /// Random seed (default: from the clock; printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Nodes run mutual TLS (certificates from `berth ca`) and serve HTTPS.
    #[arg(long)]
    tls: bool,
}

const NEMESES: [&str; 12] = [
    "kill",
    "kill-leader",
    "pause",
    "restart-all",
    "membership",
    "partition",
    "partition-leader",
    "partition-ring",
    "partition-bridge",
    "host-loss",
    "disk-full",
    "tls-reload",
];

/// How the cluster is started: namespaces when they can be had, a tmpfs per node when
/// the `disk-full` nemesis runs (root as well), TLS when asked.
fn options(args: &Args, nemeses: &[String], namespaces: bool) -> berth_jepsen::cluster::Options {
    berth_jepsen::cluster::Options {
        namespaces,
        tls: args.tls,
        disks: namespaces && nemeses.iter().any(|n| n == "disk-full"),
    }
}

/// How long `host-loss` keeps a node away: past every host deadline the suite uses, so
/// the cluster declares it down and moves its instances.
const HOST_LOSS: Duration = Duration::from_secs(8);

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[derive(Clone)]
struct Recorder {
    start: Instant,
    events: Arc<Mutex<Vec<Event>>>,
}

impl Recorder {
    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
    fn push(
        &self,
        (process, node): (u64, u64),
        kind: Kind,
        f: &str,
        key: Option<String>,
        value: Value,
        error: Option<String>,
    ) {
        let e = Event { process, kind, f: f.into(), key, value, time_ns: self.now(), node: Some(node), error };
        self.events.lock().unwrap().push(e);
    }
}

/// How a reply maps to an outcome: a definite answer, or unknown.
fn outcome(status: u16) -> Kind {
    match status {
        200..=299 => Kind::Ok,
        400..=499 => Kind::Fail,
        _ => Kind::Info,
    }
}

async fn request(http: &reqwest::Client, method: reqwest::Method, url: String, body: Option<Value>) -> (u16, Value) {
    request_within(http, method, url, body, Duration::from_secs(5)).await
}

async fn request_within(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    body: Option<Value>,
    timeout: Duration,
) -> (u16, Value) {
    let mut r = http.request(method, url).timeout(timeout);
    if let Some(b) = body {
        r = r.json(&b);
    }
    match r.send().await {
        Ok(resp) => {
            let s = resp.status().as_u16();
            (s, resp.json::<Value>().await.unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

async fn client(
    workload: String,
    process: u64,
    cluster: Arc<Mutex<Cluster>>,
    rec: Recorder,
    deadline: Instant,
    seed: u64,
    stale: bool,
) {
    let http = cluster.lock().unwrap().http_client();
    let mut rng = Rng(seed | 1);
    let mut held: Vec<String> = Vec::new();
    let mut n = 0u64;
    let mut last: Value = Value::Null;
    let mut last_len = 0;
    while Instant::now() < deadline {
        // A node that refuses connections (killed, removed) answers at once: pause a
        // little after an unknown outcome instead of hammering it.
        let backoff = {
            let events = rec.events.lock().unwrap();
            let b = events.len() > last_len
                && events.iter().rev().find(|e| e.process == process).is_some_and(|e| e.kind == Kind::Info);
            last_len = events.len();
            b
        };
        if backoff {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        n += 1;
        // A random current member: membership changes add and remove nodes.
        let urls = cluster.lock().unwrap().clone_view().urls;
        let (&node_id, base) = urls.iter().nth(rng.below(urls.len() as u64) as usize).expect("a cluster has members");
        match workload.as_str() {
            "ipam" => {
                if held.is_empty() || rng.below(10) < 7 {
                    let owner = format!("p{process}-{n}");
                    rec.push((process, node_id), Kind::Invoke, "allocate", None, json!(owner), None);
                    let (s, v) = request(
                        &http,
                        reqwest::Method::POST,
                        format!("{base}/v1/ipam/pools/chaos/allocations"),
                        Some(json!({"owner": owner})),
                    )
                    .await;
                    let k = outcome(s);
                    if k == Kind::Ok {
                        held.push(v["ip"].as_str().unwrap_or("").to_string());
                    }
                    rec.push(
                        (process, node_id),
                        k,
                        "allocate",
                        None,
                        if k == Kind::Ok { v.clone() } else { Value::Null },
                        (k != Kind::Ok).then(|| format!("{s} {v}")),
                    );
                } else {
                    let ip = held.swap_remove(rng.below(held.len() as u64) as usize);
                    rec.push((process, node_id), Kind::Invoke, "release", None, json!({"ip": ip}), None);
                    let (s, v) = request(
                        &http,
                        reqwest::Method::DELETE,
                        format!("{base}/v1/ipam/pools/chaos/allocations/{ip}"),
                        None,
                    )
                    .await;
                    let k = outcome(s);
                    if k == Kind::Info {
                        // Unknown: it may still be held; never released twice by us.
                    }
                    rec.push(
                        (process, node_id),
                        k,
                        "release",
                        None,
                        json!({"ip": ip}),
                        (k != Kind::Ok).then(|| format!("{s} {v}")),
                    );
                }
            }
            "register" => {
                let key = format!("k{}", rng.below(3));
                let dice = rng.below(10);
                if dice < 5 {
                    rec.push((process, node_id), Kind::Invoke, "read", Some(key.clone()), Value::Null, None);
                    let q = if stale { "?stale=true" } else { "" };
                    let (s, v) =
                        request(&http, reqwest::Method::GET, format!("{base}/v1/registers/{key}{q}"), None).await;
                    // A read changes nothing: an unanswered one is simply unknown.
                    let k = if s == 200 { Kind::Ok } else { Kind::Info };
                    if k == Kind::Ok {
                        last = v["value"].clone();
                    }
                    rec.push((process, node_id), k, "read", Some(key), v["value"].clone(), None);
                } else if dice < 8 {
                    let value = json!(process * 1_000_000 + n);
                    rec.push((process, node_id), Kind::Invoke, "write", Some(key.clone()), value.clone(), None);
                    let (s, v) = request(
                        &http,
                        reqwest::Method::PUT,
                        format!("{base}/v1/registers/{key}"),
                        Some(json!({"value": value})),
                    )
                    .await;
                    let k = outcome(s);
                    rec.push(
                        (process, node_id),
                        k,
                        "write",
                        Some(key),
                        value,
                        (k != Kind::Ok).then(|| format!("{s} {v}")),
                    );
                } else {
                    let to = json!(process * 1_000_000 + n);
                    let input = json!([last.clone(), to.clone()]);
                    rec.push((process, node_id), Kind::Invoke, "cas", Some(key.clone()), input.clone(), None);
                    let (s, v) = request(
                        &http,
                        reqwest::Method::POST,
                        format!("{base}/v1/registers/{key}/cas"),
                        Some(json!({"from": last, "to": to})),
                    )
                    .await;
                    let k = outcome(s);
                    rec.push(
                        (process, node_id),
                        k,
                        "cas",
                        Some(key),
                        input,
                        (k != Kind::Ok).then(|| format!("{s} {v}")),
                    );
                }
            }
            "set" => {
                let app = format!("s{process}-{n}");
                rec.push((process, node_id), Kind::Invoke, "add", None, json!(app), None);
                let body = json!({"id": app, "cmd": ["true"], "instances": 0});
                let (s, v) = request(&http, reqwest::Method::PUT, format!("{base}/v1/apps/{app}"), Some(body)).await;
                let k = outcome(s);
                rec.push((process, node_id), k, "add", None, json!(app), (k != Kind::Ok).then(|| format!("{s} {v}")));
            }
            other => {
                eprintln!("unknown workload {other}");
                return;
            }
        }
    }
}

/// The groups of a partition nemesis (nodes in different groups cannot talk).
/// `ring` is a majorities ring expressed as groups of cut pairs.
fn partition_groups(kind: &str, ids: &[u64], leader: u64, rng: &mut Rng) -> Vec<std::collections::BTreeSet<u64>> {
    use std::collections::BTreeSet;
    let mut shuffled = ids.to_vec();
    for i in (1..shuffled.len()).rev() {
        shuffled.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let half = shuffled.len() / 2;
    match kind {
        "partition-leader" => {
            vec![BTreeSet::from([leader]), ids.iter().copied().filter(|i| *i != leader).collect()]
        }
        "partition-bridge" => {
            // Two sides that only the middle node joins.
            let left: BTreeSet<u64> = shuffled[..half].iter().copied().collect();
            let right: BTreeSet<u64> = shuffled[half + 1..].iter().copied().collect();
            vec![left, right]
        }
        _ => vec![shuffled[..half].iter().copied().collect(), shuffled[half..].iter().copied().collect()],
    }
}

/// A ring of majorities: nodes in a ring, each cut from the nodes more than n/4 steps
/// away, so every node sees a majority but no two majorities are the same (for 5
/// nodes: each node keeps its two neighbours; for 3: one link is cut).
fn ring_cuts(ids: &[u64]) -> Vec<(u64, u64)> {
    let n = ids.len();
    let keep = (n / 2).max(1) / 2 + usize::from(n / 2 == 1);
    let mut cuts = Vec::new();
    for i in 0..n {
        for j in i + 1..n {
            let d = (j - i).min(n - (j - i));
            if d > keep.max(1) {
                cuts.push((ids[i], ids[j]));
            }
        }
    }
    if cuts.is_empty() && n >= 3 {
        cuts.push((ids[0], ids[n - 1]));
    }
    cuts
}

/// What the nemesis did: its faults, and what it saw go wrong that no history shows
/// (a node that did not take renewed certificates, say).
#[derive(Default)]
struct NemesisRun {
    faults: Vec<Fault>,
    problems: Vec<String>,
}

impl NemesisRun {
    /// The nemesis's own verdict when it saw something go wrong.
    fn verdict(&self) -> Option<Verdict> {
        let first = self.problems.first()?;
        Some(Verdict {
            checker: "nemesis",
            valid: false,
            checked: self.faults.len(),
            anomaly: Some(first.clone()),
            excerpt: self.problems.clone(),
        })
    }
}

/// The certificate node `id` presents to a new connection (DER).
async fn presented(cluster: &Mutex<Cluster>, id: u64) -> Result<Vec<u8>> {
    let (url, builder) = {
        let c = cluster.lock().unwrap();
        (c.url(id), c.http_builder())
    };
    let client = builder.tls_info(true).timeout(Duration::from_secs(2)).build()?;
    let r = client.get(format!("{url}/healthz")).send().await?;
    let info = r.extensions().get::<reqwest::tls::TlsInfo>().context("no TLS on the connection")?;
    Ok(info.peer_certificate().context("no certificate presented")?.to_vec())
}

/// `tls-reload` on node `target`: once it serves (a node just restarted by an
/// earlier fault may still be starting), with `refused_first` files that fail the
/// checks and a `SIGHUP` (the node must serve on); then — whatever happened before —
/// a renewed certificate and a `SIGHUP` (the node must present it within 5 s). The
/// node's files are always left renewed and valid.
async fn reload_certificate(cluster: &Mutex<Cluster>, target: u64, refused_first: bool) -> Result<()> {
    let until = Instant::now() + Duration::from_secs(10);
    while let Err(e) = presented(cluster, target).await {
        if Instant::now() >= until {
            return Err(e.context("not serving before the reload"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let refused = if refused_first {
        let sent = {
            let c = cluster.lock().unwrap();
            c.break_certificate(target).and_then(|()| c.hangup(target))
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        match sent {
            Ok(()) => presented(cluster, target).await.map(|_| ()).context("serving after refusing bad files"),
            Err(e) => Err(e),
        }
    } else {
        Ok(())
    };
    let new = {
        let c = cluster.lock().unwrap();
        let new = c.renew_certificate(target)?;
        c.hangup(target)?;
        new
    };
    refused?;
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let now = presented(cluster, target).await;
        match now {
            Ok(der) if der == new => return Ok(()),
            _ if Instant::now() < until => tokio::time::sleep(Duration::from_millis(100)).await,
            Ok(_) => bail!("still presents its old certificate 5 s after the SIGHUP"),
            Err(e) => return Err(e.context("no connection 5 s after the SIGHUP")),
        }
    }
}

/// The nemesis: a fault every few seconds, healed before the next; all healed at the end.
async fn nemesis(
    cluster: Arc<Mutex<Cluster>>,
    size: u64,
    kinds: Vec<String>,
    rec: Recorder,
    deadline: Instant,
    seed: u64,
    http: reqwest::Client,
) -> NemesisRun {
    let mut rng = Rng(seed ^ 0x9e37_79b9_7f4a_7c15);
    let mut run = NemesisRun::default();
    // Ids are never reused: nodes added by membership changes take the next one.
    let mut next_id = size + 1;
    if kinds.is_empty() {
        return run;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    while Instant::now() + Duration::from_secs(3) < deadline {
        let kind = kinds[rng.below(kinds.len() as u64) as usize].clone();
        let ids: Vec<u64> = cluster.lock().unwrap().nodes.keys().copied().collect();
        let target = match kind.as_str() {
            "kill-leader" | "partition-leader" => {
                let c = cluster.lock().unwrap().clone_view();
                c.leader(&http).await.unwrap_or(ids[0])
            }
            _ => ids[rng.below(ids.len() as u64) as usize],
        };
        let start = rec.now();
        let hold = Duration::from_millis(1500 + rng.below(2000));
        match kind.as_str() {
            "kill" | "kill-leader" => {
                cluster.lock().unwrap().kill(target);
                tokio::time::sleep(hold).await;
                let _ = cluster.lock().unwrap().spawn(target);
            }
            "host-loss" => {
                // Dead, or alive and cut off from everyone: either way lost.
                let isolated = rng.below(2) == 0 && {
                    let c = cluster.lock().unwrap();
                    let others: std::collections::BTreeSet<u64> =
                        ids.iter().copied().filter(|i| *i != target).collect();
                    c.net.as_ref().is_some_and(|net| net.partition(&[[target].into(), others]).is_ok())
                };
                if !isolated {
                    cluster.lock().unwrap().kill(target);
                }
                tokio::time::sleep(HOST_LOSS).await;
                if isolated {
                    if let Some(net) = &cluster.lock().unwrap().net {
                        let _ = net.heal();
                    }
                } else {
                    let _ = cluster.lock().unwrap().spawn(target);
                }
            }
            p if p.starts_with("partition") => {
                let groups = partition_groups(p, &ids, target, &mut rng);
                let applied = {
                    let c = cluster.lock().unwrap();
                    match &c.net {
                        Some(net) if p == "partition-ring" => {
                            ring_cuts(&ids).into_iter().try_for_each(|(a, b)| net.cut(a, b)).map_err(|e| e.to_string())
                        }
                        Some(net) => net.partition(&groups).map_err(|e| e.to_string()),
                        None => Err("partitions need namespaces".into()),
                    }
                };
                if let Err(e) = applied {
                    eprintln!("nemesis {p}: {e}");
                }
                tokio::time::sleep(hold).await;
                let c = cluster.lock().unwrap();
                if let Some(net) = &c.net {
                    let _ = net.heal();
                }
            }
            "membership" => {
                // Remove a member for good, then add a new node under a new id as a
                // learner and promote it (ids are never reused). A cluster left short
                // by an earlier change that failed half-way only gets its node back.
                let view = cluster.lock().unwrap().clone_view();
                let Some(via) = view.urls.keys().copied().find(|i| *i != target) else { continue };
                let url = view.urls[&via].clone();
                // Membership changes wait for commits (and a learner's catch-up): the
                // API allows them a minute.
                let slow = Duration::from_secs(65);
                let short = (view.urls.len() as u64) < size;
                let s = if short {
                    200
                } else {
                    request_within(
                        &http,
                        reqwest::Method::DELETE,
                        format!("{url}/v1/cluster/members/{target}"),
                        None,
                        slow,
                    )
                    .await
                    .0
                };
                if s == 200 {
                    if !short {
                        cluster.lock().unwrap().remove_node(target);
                    }
                    let (s, v) = request(&http, reqwest::Method::GET, format!("{url}/v1/cluster"), None).await;
                    let members: Vec<String> = if s == 200 {
                        v["members"]
                            .as_array()
                            .map(|a| {
                                a.iter().map(|m| format!("{}={}", m["id"], m["grpc"].as_str().unwrap_or(""))).collect()
                            })
                            .unwrap_or_default()
                    } else {
                        Vec::new()
                    };
                    let new_id = next_id;
                    next_id += 1;
                    if !members.is_empty() {
                        let grpc = cluster.lock().unwrap().add_node(new_id, &members.join(","));
                        if let Err(e) = &grpc {
                            eprintln!("nemesis membership: starting {new_id}: {e:#}");
                        }
                        if let Ok(grpc) = grpc {
                            for voter in [false, true] {
                                let (s, v) = request_within(
                                    &http,
                                    reqwest::Method::POST,
                                    format!("{url}/v1/cluster/members"),
                                    Some(json!({"id": new_id, "grpc": grpc, "voter": voter})),
                                    slow,
                                )
                                .await;
                                if s != 200 {
                                    eprintln!("nemesis membership: adding {new_id} (voter {voter}): {s} {v}");
                                    break;
                                }
                            }
                        }
                    }
                } else {
                    eprintln!("nemesis membership: removing {target} answered {s}");
                }
                tokio::time::sleep(hold).await;
            }
            "restart-all" => {
                // Every node at once (a power cut): they come back from their disks.
                {
                    let mut c = cluster.lock().unwrap();
                    for id in &ids {
                        c.kill(*id);
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                let mut c = cluster.lock().unwrap();
                for id in &ids {
                    let _ = c.spawn(*id);
                }
            }
            "disk-full" => {
                // The node's data dir fills past its reserve; space comes back after.
                let filled = cluster.lock().unwrap().fill_disk(target);
                if let Err(e) = filled {
                    eprintln!("nemesis disk-full: {e:#}");
                }
                tokio::time::sleep(hold).await;
                cluster.lock().unwrap().free_disk(target);
            }
            "tls-reload" => {
                let refused_first = rng.below(2) == 0;
                if let Err(e) = reload_certificate(&cluster, target, refused_first).await {
                    run.problems
                        .push(format!("tls-reload of node {target} (refused files first: {refused_first}): {e:#}"));
                }
                tokio::time::sleep(hold).await;
            }
            "pause" => {
                let pid = cluster.lock().unwrap().pid(target);
                if let Some(pid) = pid {
                    // SAFETY: kill(2) on a node process of this run.
                    unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
                    tokio::time::sleep(hold).await;
                    unsafe { libc::kill(pid as i32, libc::SIGCONT) };
                }
            }
            _ => {}
        }
        run.faults.push(Fault { fault: kind, node: Some(target), start_ns: start, end_ns: rec.now() });
        tokio::time::sleep(Duration::from_millis(1000 + rng.below(1500))).await;
    }
    run
}

/// Every node running again (resumed, or restarted).
fn heal(cluster: &Mutex<Cluster>) {
    let mut c = cluster.lock().unwrap();
    let ids: Vec<u64> = c.nodes.keys().copied().collect();
    for id in ids {
        c.free_disk(id);
        if let Some(pid) = c.pid(id) {
            // SAFETY: kill(2) on a node process of this run.
            unsafe { libc::kill(pid as i32, libc::SIGCONT) };
        } else {
            let _ = c.spawn(id);
        }
    }
}

/// The hosts' deadline in the converge workload (the shortest allowed: runs are short).
const CONVERGE_DEADLINE: Duration = Duration::from_secs(6);

/// `converge`: an app with sticky IPs on every host while the nemesis runs; every
/// 200 ms the instance processes alive on each host are read from the machine.
async fn run_converge(args: &Args, nemeses: &[String], seed: u64, namespaces: bool) -> Result<Vec<Verdict>> {
    let deadline_flag = CONVERGE_DEADLINE.as_secs().to_string();
    let flags = ["--snapshot-logs", "200", "--host-deadline-s", deadline_flag.as_str(), "--runtime", "process"];
    let cluster = Cluster::start_with(args.nodes, &flags, options(args, nemeses, namespaces))?;
    let http = cluster.http_client();
    let leader = cluster.wait_members(&http, Duration::from_secs(30)).await?;
    let url = cluster.url(leader);
    let (s, v) = request(
        &http,
        reqwest::Method::POST,
        format!("{url}/v1/ipam/pools"),
        Some(json!({"name": "conv", "subnet": "198.18.64.0/24"})),
    )
    .await;
    if s != 201 {
        bail!("cannot create the pool: {s} {v}");
    }
    let n = (args.nodes * 2) as usize;
    let spec = json!({
        "id": "conv",
        "cmd": ["/bin/sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.5 & wait $!; done"],
        "instances": n, "cpus": 0.01, "mem_mb": 8, "stop_grace_s": 1, "network": {"pool": "conv"},
    });
    let (s, v) = request(&http, reqwest::Method::PUT, format!("{url}/v1/apps/conv"), Some(spec)).await;
    if s != 201 {
        bail!("cannot deploy: {s} {v}");
    }
    let started = Instant::now();
    let expected: std::collections::BTreeSet<String> = loop {
        let live = cluster.live_instances();
        if live.len() == n {
            break live.into_iter().map(|l| l.instance).collect();
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("{n} instances did not start: {live:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let rec = Recorder { start: Instant::now(), events: Default::default() };
    let deadline = Instant::now() + Duration::from_secs(args.time);
    let cluster = Arc::new(Mutex::new(cluster));
    let nem =
        tokio::spawn(nemesis(cluster.clone(), args.nodes, nemeses.to_vec(), rec.clone(), deadline, seed, http.clone()));
    let mut samples = Vec::new();
    let sample = |samples: &mut Vec<berth_jepsen::checker::converge::Sample>| {
        let live = cluster.lock().unwrap().live_instances();
        let t_ns = rec.now();
        let value = json!(live.iter().map(|l| json!([l.host, l.instance, l.ip])).collect::<Vec<_>>());
        rec.push((0, 0), Kind::Invoke, "observe", None, Value::Null, None);
        rec.push((0, 0), Kind::Ok, "observe", None, value, None);
        samples.push(berth_jepsen::checker::converge::Sample {
            t_ns,
            live: live.into_iter().map(|l| (l.host, l.instance, l.ip)).collect(),
        });
    };
    while Instant::now() < deadline {
        sample(&mut samples);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let run = nem.await.unwrap_or_default();
    let faults = &run.faults;
    heal(&cluster);
    // Time for the last fault's consequences: the deadline + 3 s, and a little more.
    let settle = Instant::now() + CONVERGE_DEADLINE + Duration::from_secs(5);
    while Instant::now() < settle {
        sample(&mut samples);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let verdict = berth_jepsen::checker::converge::check(&samples, faults, &expected, CONVERGE_DEADLINE);
    let events = rec.events.lock().unwrap().clone();
    let calls = pair(&events);
    let dir = args.out.join(format!("converge-{}-{seed}", nemeses.join("+")));
    let verdicts: Vec<Verdict> = std::iter::once(verdict).chain(run.verdict()).collect();
    report::write(&dir, &events, faults, &verdicts, &calls)?;
    println!(
        "{}",
        json!({"workload": "converge", "nemesis": nemeses, "nodes": args.nodes, "seconds": args.time,
               "samples": samples.len(), "instances": n, "faults": faults.len(), "valid": verdicts[0].valid,
               "anomaly": verdicts[0].anomaly, "nemesis_problems": run.problems, "report": dir})
    );
    Ok(verdicts)
}

async fn final_read(http: &reqwest::Client, view: &berth_jepsen::cluster::View, path: &str) -> Option<Value> {
    for _ in 0..60 {
        for u in view.urls.values() {
            let (s, v) = request(http, reqwest::Method::GET, format!("{u}{path}"), None).await;
            if s == 200 {
                return Some(v);
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    None
}

async fn run_one(args: &Args, workload: &str, nemeses: &[String], seed: u64) -> Result<Vec<Verdict>> {
    let namespaces = match berth_jepsen::netns::unavailable() {
        None => true,
        Some(why) => {
            if nemeses.iter().any(|n| n.starts_with("partition") || n == "disk-full") {
                bail!("partition and disk-full nemeses need root (namespaces, tmpfs mounts): {why}");
            }
            eprintln!("berth-jepsen: nodes on loopback ({why}); faults: kill, pause");
            false
        }
    };
    if workload == "converge" {
        return run_converge(args, nemeses, seed, namespaces).await;
    }
    let cluster = Cluster::start_with(args.nodes, &["--snapshot-logs", "200"], options(args, nemeses, namespaces))?;
    let http = cluster.http_client();
    cluster.wait_members(&http, Duration::from_secs(30)).await?;
    let urls: Vec<String> = cluster.nodes.keys().map(|id| cluster.url(*id)).collect();
    if workload == "ipam" {
        let (s, v) = request(
            &http,
            reqwest::Method::POST,
            format!("{}/v1/ipam/pools", urls[0]),
            Some(json!({"name": "chaos", "subnet": "198.18.0.0/16"})),
        )
        .await;
        if s != 201 {
            bail!("cannot create the pool: {s} {v}");
        }
    }
    let rec = Recorder { start: Instant::now(), events: Default::default() };
    let deadline = Instant::now() + Duration::from_secs(args.time);
    let cluster = Arc::new(Mutex::new(cluster));
    let nem =
        tokio::spawn(nemesis(cluster.clone(), args.nodes, nemeses.to_vec(), rec.clone(), deadline, seed, http.clone()));
    let clients: Vec<_> = (0..args.clients)
        .map(|p| {
            tokio::spawn(client(
                workload.to_string(),
                p,
                cluster.clone(),
                rec.clone(),
                deadline,
                seed.wrapping_add(p * 7919),
                args.stale_reads,
            ))
        })
        .collect();
    for c in clients {
        let _ = c.await;
    }
    let run = nem.await.unwrap_or_default();
    let faults = &run.faults;
    // Heal: every node running, a leader, then the final reads.
    heal(&cluster);
    let view = cluster.lock().unwrap().clone_view();
    view.leader(&http).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let fin = match workload {
        "ipam" => final_read(&http, &view, "/v1/ipam/pools/chaos/allocations").await,
        "set" => final_read(&http, &view, "/v1/apps").await.map(|v| {
            json!(v.as_array().map(|a| a.iter().map(|x| x["id"].clone()).collect::<Vec<_>>()).unwrap_or_default())
        }),
        _ => Some(Value::Null),
    };
    if workload != "register" {
        rec.push((u64::MAX, 0), Kind::Invoke, "final-read", None, Value::Null, None);
        match &fin {
            Some(v) => rec.push((u64::MAX, 0), Kind::Ok, "final-read", None, v.clone(), None),
            None => {
                rec.push((u64::MAX, 0), Kind::Info, "final-read", None, Value::Null, Some("no node answered".into()))
            }
        }
    }
    let events = rec.events.lock().unwrap().clone();
    let calls = pair(&events);
    let verdict = match workload {
        "ipam" => checker::ipam::check(&calls),
        "register" => checker::linearizable::check(&calls, Value::Null),
        "set" => checker::set::check(&calls),
        other => bail!("unknown workload {other}"),
    };
    let dir = args.out.join(format!("{workload}-{}-{seed}", nemeses.join("+")));
    let verdicts: Vec<Verdict> = std::iter::once(verdict).chain(run.verdict()).collect();
    report::write(&dir, &events, faults, &verdicts, &calls)?;
    let ops = calls.iter().filter(|c| c.process != u64::MAX).count();
    let ok = calls.iter().filter(|c| c.process != u64::MAX && c.outcome == Kind::Ok).count();
    println!(
        "{}",
        json!({"workload": workload, "nemesis": nemeses, "nodes": args.nodes, "seconds": args.time, "ops": ops, "ok": ok,
               "faults": faults.len(), "valid": verdicts[0].valid, "anomaly": verdicts[0].anomaly,
               "nemesis_problems": run.problems, "report": dir})
    );
    Ok(verdicts)
}

#[tokio::main]
async fn main() -> Result<()> {
    berth_jepsen::interrupt::until_signalled(run(Args::parse())).await
}

async fn run(mut args: Args) -> Result<()> {
    for n in &args.nemesis {
        if n != "none" && !NEMESES.contains(&n.as_str()) {
            bail!("unknown nemesis {n:?} (available: {})", NEMESES.join(", "));
        }
        if n == "tls-reload" && !args.tls {
            bail!("the tls-reload nemesis renews the nodes' certificates: it needs --tls");
        }
    }
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
    });
    eprintln!("berth-jepsen: seed {seed}");
    let nemeses: Vec<String> = args.nemesis.iter().filter(|n| *n != "none").cloned().collect();
    let mut verdicts = Vec::new();
    if args.quick {
        args.time = 8;
        args.nodes = 3;
        args.clients = 4;
        for w in ["ipam", "register", "set", "converge"] {
            let all: Vec<String> = if berth_jepsen::netns::unavailable().is_none() {
                NEMESES.iter().filter(|n| args.tls || **n != "tls-reload").map(|s| s.to_string()).collect()
            } else {
                vec!["kill".into(), "kill-leader".into(), "pause".into(), "restart-all".into()]
            };
            verdicts.extend(run_one(&args, w, &all, seed).await?);
        }
    } else {
        for w in args.workload.clone() {
            verdicts.extend(run_one(&args, &w, &nemeses, seed).await?);
        }
    }
    let failed: Vec<&Verdict> = verdicts.iter().filter(|v| !v.valid).collect();
    if failed.is_empty() {
        println!("{} passed, 0 failed", verdicts.len());
        Ok(())
    } else {
        for v in &failed {
            eprintln!("{}: {}", v.checker, v.anomaly.clone().unwrap_or_default());
            for l in &v.excerpt {
                eprintln!("  {l}");
            }
        }
        println!("{} passed, {} failed", verdicts.len() - failed.len(), failed.len());
        std::process::exit(1);
    }
}
