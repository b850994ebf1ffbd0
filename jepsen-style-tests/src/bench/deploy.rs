//! `deploy`: time from `PUT /v1/apps` of a 1-instance app on a macvlan pool to the
//! API reporting the container running with its IP, side by side with `docker run` of
//! the same image on the same Docker network with a fixed `--ip`, in the same run.
//!
//! Needs root (macvlan), a Docker engine and a static busybox: the image is built with
//! `docker import` (no pulls); the macvlan parent is one end of a veth pair on a bridge
//! of its own. berth runs as a 3-node cluster with the docker runtime.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::call;
use super::{emit, round, Latencies};
use crate::cluster::Cluster;
use crate::netns::sh;

const IMAGE: &str = "berth-bench/busybox:1";
/// The resources of both containers: berth turns an app's `cpus`/`mem_mb` into Docker's
/// CPU quota and memory limit, and `docker run` gets the same flags. (The quota
/// matters: under `cpus: 0.01` the container's own start-up is throttled to seconds.)
const CPUS: f64 = 0.5;
const MEM_MB: u64 = 32;

/// Why the scenario cannot run here, if it cannot.
fn missing() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (macvlan links need CAP_NET_ADMIN)".into());
    }
    if sh("docker info --format '{{.ServerVersion}}'").is_err() {
        return Some("no Docker engine answers".into());
    }
    if sh("command -v busybox").is_err() {
        return Some("no static busybox to build the image (apt-get install busybox-static)".into());
    }
    None
}

fn ensure_image() -> Result<()> {
    if sh(&format!("docker image inspect {IMAGE} >/dev/null 2>&1")).is_ok() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    sh(&format!(
        "mkdir -p {r}/bin && cp \"$(command -v busybox)\" {r}/bin/busybox && ln -s busybox {r}/bin/sleep && \
         tar -C {r} -c . | docker import - {IMAGE} >/dev/null",
        r = dir.path().display()
    ))
    .map(drop)
}

/// The bridge and veth pair of the run; removed on drop.
struct Lan {
    bridge: String,
    parent: String,
}

impl Lan {
    fn new() -> Result<Lan> {
        let tag = std::process::id() % 100_000;
        let lan = Lan { bridge: format!("bdb{tag}"), parent: format!("bdv{tag}") };
        sh(&format!(
            "ip link add {b} type bridge && ip link set {b} up && ip link add {p} type veth peer name {p}x && \
             ip link set {p}x master {b} && ip link set {p} up && ip link set {p}x up",
            b = lan.bridge,
            p = lan.parent
        ))?;
        Ok(lan)
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        let _ = sh(&format!("ip link del {}", self.parent));
        let _ = sh(&format!("ip link del {}", self.bridge));
    }
}

/// One berth deploy: PUT, then poll until the instance runs with its IP.
async fn berth_once(http: &reqwest::Client, url: &str, app: &str, pool: &str) -> Result<Duration> {
    let spec = json!({
        "id": app, "image": IMAGE, "cmd": ["/bin/sleep", "3600"], "instances": 1,
        "cpus": CPUS, "mem_mb": MEM_MB, "network": {"pool": pool}, "stop_grace_s": 1,
    });
    let t0 = Instant::now();
    call(http, reqwest::Method::PUT, format!("{url}/v1/apps/{app}"), Some(spec)).await?;
    loop {
        let v = call(http, reqwest::Method::GET, format!("{url}/v1/instances?app={app}&stale=true"), None).await?;
        if let Some(i) = v.as_array().and_then(|a| a.first()) {
            if i["state"] == "running" && i["ip"].is_string() {
                return Ok(t0.elapsed());
            }
            if i["state"] == "failed" {
                bail!("{app} failed: {}", i["message"]);
            }
        }
        if t0.elapsed() > Duration::from_secs(60) {
            bail!("{app} not running after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// One `docker run -d` on the pool's network with an address berth set aside for it.
async fn docker_once(http: &reqwest::Client, url: &str, pool: &str, i: usize) -> Result<Duration> {
    let a = call(
        http,
        reqwest::Method::POST,
        format!("{url}/v1/ipam/pools/{pool}/allocations"),
        Some(json!({"owner": "bench:docker-run"})),
    )
    .await?;
    let ip = a["ip"].as_str().context("no ip")?.to_string();
    let name = format!("berth-bench-run-{i}");
    let t0 = Instant::now();
    let run = tokio::process::Command::new("docker")
        .args(["run", "-d", "--network", &format!("berth-{pool}"), "--ip", &ip, "--name", &name])
        .args(["--cpus", &CPUS.to_string(), "--memory", &format!("{MEM_MB}m"), IMAGE])
        .args(["/bin/sleep", "3600"])
        .output()
        .await?;
    let took = t0.elapsed();
    let _ = sh(&format!("docker rm -f {name} >/dev/null 2>&1"));
    call(http, reqwest::Method::DELETE, format!("{url}/v1/ipam/pools/{pool}/allocations/{ip}"), None).await?;
    if !run.status.success() {
        bail!("docker run: {}", String::from_utf8_lossy(&run.stderr).trim());
    }
    Ok(took)
}

/// The scenario: `runs` deploys with each, alternating.
pub async fn run(runs: usize) -> Result<()> {
    if let Some(why) = missing() {
        bail!("the deploy scenario cannot run here: {why}");
    }
    ensure_image()?;
    let lan = Lan::new()?;
    let pool = format!("dep{}", std::process::id() % 100_000);
    let flags = ["--runtime", "docker", "--macvlan-parent", lan.parent.as_str(), "--stop-instances-on-exit"];
    let cluster = Cluster::start(3, &flags)?;
    let http = reqwest::Client::new();
    let leader = cluster.wait_leader(&http, Duration::from_secs(30)).await?;
    let url = cluster.url(leader);
    call(
        &http,
        reqwest::Method::POST,
        format!("{url}/v1/ipam/pools"),
        Some(json!({"name": pool, "subnet": "198.18.210.0/24", "gateway": "198.18.210.1"})),
    )
    .await?;
    let (mut berth, mut docker) = (Latencies::default(), Latencies::default());
    let result: Result<()> = async {
        for i in 0..runs {
            let app = format!("dep{i}");
            // berth first on the first round: it creates the Docker network both use.
            if i % 2 == 0 {
                berth.push(berth_once(&http, &url, &app, &pool).await?);
                docker.push(docker_once(&http, &url, &pool, i).await?);
            } else {
                docker.push(docker_once(&http, &url, &pool, i).await?);
                berth.push(berth_once(&http, &url, &app, &pool).await?);
            }
            call(&http, reqwest::Method::DELETE, format!("{url}/v1/apps/{app}"), None).await?;
        }
        Ok(())
    }
    .await;
    // Let the agents stop and remove what was deployed before the cluster goes.
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let v = call(&http, reqwest::Method::GET, format!("{url}/v1/instances"), None).await.unwrap_or(Value::Null);
        if v.as_array().is_some_and(|a| a.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(cluster);
    let _ = sh(&format!("docker network rm berth-{pool} >/dev/null 2>&1"));
    result?;
    for (system, l) in [("berth", &berth), ("docker run", &docker)] {
        emit(json!({
            "scenario": "deploy", "system": system, "clients": 1, "runs": l.len(), "ops_per_s": null,
            "p50_ms": round(l.quantile(0.5), 1), "p99_ms": round(l.quantile(0.99), 1), "max_ms": round(l.max(), 1),
        }));
    }
    emit(json!({
        "scenario": "deploy", "anchor": "docker run", "goal": "berth's overhead under 50 ms at the median",
        "overhead_p50_ms": round(berth.quantile(0.5) - docker.quantile(0.5), 1),
        "ratio_p50": round(berth.quantile(0.5) / docker.quantile(0.5).max(f64::MIN_POSITIVE), 2),
    }));
    Ok(())
}
