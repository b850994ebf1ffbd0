//! A cluster of real `berth agent` processes on loopback, for tests.
//!
//! Each node gets free ports, its own data dir and a log file; the cluster can kill
//! (SIGKILL), stop (SIGTERM), pause (SIGSTOP), resume and restart nodes. Dropping the
//! cluster kills every node. Waits are bounded polls of the public API, never fixed
//! sleeps.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BERTH: &str = env!("CARGO_BIN_EXE_berth");

/// Runs the CLI against `addr`: (exit code, stdout, stderr trimmed).
pub fn berth(addr: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BERTH).arg("--addr").arg(addr).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

/// The Python that drives the real clients (`BERTH_PYTHON`, default `python3`).
pub fn python() -> String {
    std::env::var("BERTH_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Whether that Python has `module`. When not, the test part says so and is skipped —
/// unless `BERTH_REQUIRE_CLIENTS` is set (CI installs the clients), when it fails.
pub fn has_python_module(module: &str) -> bool {
    let found = Command::new(python()).args(["-c", &format!("import {module}")]).output();
    let ok = found.as_ref().is_ok_and(|o| o.status.success());
    if !ok {
        let why = match found {
            Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
            Err(e) => e.to_string(),
        };
        assert!(
            std::env::var("BERTH_REQUIRE_CLIENTS").is_err(),
            "BERTH_REQUIRE_CLIENTS is set but {} cannot import {module}: {why}",
            python()
        );
        eprintln!("SKIPPED: {} cannot import {module} ({why})", python());
    }
    ok
}

/// A process app that serves nothing but says it does: `port` 8080, IPs from `pool`,
/// healthy as soon as it runs.
pub fn served_app(id: &str, instances: u32, pool: &str) -> Value {
    serde_json::json!({
        "id": id,
        "cmd": ["/bin/sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.5 & wait $!; done"],
        "instances": instances, "cpus": 0.01, "mem_mb": 16, "stop_grace_s": 1, "port": 8080,
        "network": {"pool": pool},
        "health_check": {"cmd": ["/bin/true"], "interval_s": 1, "timeout_s": 1, "grace_s": 0, "max_failures": 2},
    })
}

/// A port free for a node to bind (TCP and UDP), chosen below the kernel's ephemeral
/// range (32768–60999 by default): a port from that range, checked free and released,
/// can be taken by any outgoing connection before the node binds it — which made a
/// node of a test fail to start now and then. Each test process walks its own stretch.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = (std::process::id() % 1000) * 20;
    loop {
        let port = 10_000 + ((base + NEXT.fetch_add(1, Ordering::Relaxed)) % 20_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

pub struct NodeProc {
    pub id: u64,
    pub grpc: u16,
    pub http: u16,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub child: Option<Child>,
    pub extra: Vec<String>,
}

impl NodeProc {
    /// The node's API: `https://` when it runs with `--tls-cert`.
    pub fn url(&self) -> String {
        let scheme = if self.extra.iter().any(|f| f == "--tls-cert") { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.http)
    }
    pub fn grpc_addr(&self) -> String {
        format!("127.0.0.1:{}", self.grpc)
    }
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub nodes: BTreeMap<u64, NodeProc>,
    pub peers: String,
    pub http: reqwest::Client,
    /// Environment set on every node process (beside the inherited one).
    pub env: Vec<(String, String)>,
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) on a child process we spawned.
    unsafe {
        libc::kill(pid, sig);
    }
}

impl Cluster {
    /// Starts `n` nodes (ids 1..=n) with the same `--peers`, plus `extra` flags.
    pub fn start(n: u64, extra: &[&str]) -> Cluster {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        Self::start_each(n, |_| extra.clone())
    }

    /// Starts `n` nodes with per-node extra flags.
    pub fn start_each(n: u64, extra: impl Fn(u64) -> Vec<String>) -> Cluster {
        Self::start_ids(&(1..=n).collect::<Vec<_>>(), extra)
    }

    /// Starts nodes with the given ids and per-node extra flags.
    pub fn start_ids(ids: &[u64], extra: impl Fn(u64) -> Vec<String>) -> Cluster {
        Self::start_ids_env(ids, extra, &[])
    }

    /// A cluster of nodes with the given ids and per-node extra flags, none started
    /// yet (`spawn` each): for a test that prepares their data dirs first.
    pub fn create(ids: &[u64], extra: impl Fn(u64) -> Vec<String>) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let mut nodes = BTreeMap::new();
        for &id in ids {
            let flags = extra(id);
            let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
            nodes.insert(id, Self::new_proc(&dir, id, &flags));
        }
        let peers = Self::peers_of(&nodes);
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
        Cluster { dir, nodes, peers, http, env: vec![] }
    }

    /// Starts nodes with the given ids, per-node extra flags and environment variables.
    pub fn start_ids_env(ids: &[u64], extra: impl Fn(u64) -> Vec<String>, env: &[(&str, &str)]) -> Cluster {
        let mut c = Self::create(ids, extra);
        c.env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        for &id in ids {
            c.spawn(id);
        }
        c
    }

    fn new_proc(dir: &tempfile::TempDir, id: u64, extra: &[&str]) -> NodeProc {
        NodeProc {
            id,
            grpc: free_port(),
            http: free_port(),
            data_dir: dir.path().join(format!("node{id}")),
            log: dir.path().join(format!("node{id}.log")),
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn peers_of(nodes: &BTreeMap<u64, NodeProc>) -> String {
        nodes.values().map(|n| format!("{}={}", n.id, n.grpc_addr())).collect::<Vec<_>>().join(",")
    }

    /// Adds a node that is not part of the initial cluster (its `--peers` lists the
    /// cluster plus itself, so it does not bootstrap) and starts it.
    pub fn add_node(&mut self, id: u64, extra: &[&str]) {
        let p = Self::new_proc(&self.dir, id, extra);
        let peers = format!("{},{}={}", self.peers, id, p.grpc_addr());
        self.nodes.insert(id, p);
        self.spawn_with_peers(id, &peers);
    }

    pub fn spawn(&mut self, id: u64) {
        let peers = self.peers.clone();
        self.spawn_with_peers(id, &peers);
    }

    fn spawn_with_peers(&mut self, id: u64, peers: &str) {
        let n = self.nodes.get_mut(&id).unwrap();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&n.log).unwrap();
        let child = Command::new(BERTH)
            .arg("agent")
            .args(["--id", &id.to_string()])
            .arg("--data-dir")
            .arg(&n.data_dir)
            .args(["--listen", &n.grpc_addr()])
            .args(["--http", &format!("127.0.0.1:{}", n.http)])
            .args(["--peers", peers])
            .args(&n.extra)
            .env("RUST_LOG", std::env::var("BERTH_TEST_NODE_LOG").unwrap_or_else(|_| "info,openraft=warn".into()))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        n.child = Some(child);
    }

    pub fn kill(&mut self, id: u64) {
        let n = self.nodes.get_mut(&id).unwrap();
        if let Some(mut c) = n.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self, id: u64) -> std::process::ExitStatus {
        let n = self.nodes.get_mut(&id).unwrap();
        let mut c = n.child.take().expect("node running");
        signal(c.id() as i32, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("node {id} did not stop within 15 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pause(&self, id: u64) {
        signal(self.nodes[&id].pid().unwrap(), libc::SIGSTOP);
    }

    pub fn resume(&self, id: u64) {
        signal(self.nodes[&id].pid().unwrap(), libc::SIGCONT);
    }

    /// SIGHUP: a node with TLS reads its files again.
    pub fn hangup(&self, id: u64) {
        signal(self.nodes[&id].pid().unwrap(), libc::SIGHUP);
    }

    pub fn url(&self, id: u64) -> String {
        self.nodes[&id].url()
    }

    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    pub fn running(&self) -> Vec<u64> {
        self.nodes.values().filter(|n| n.child.is_some()).map(|n| n.id).collect()
    }

    pub fn log_of(&self, id: u64) -> String {
        std::fs::read_to_string(&self.nodes[&id].log).unwrap_or_default()
    }

    /// `method path` on node `id`: (status, JSON body or Null).
    pub async fn req(
        &self,
        id: u64,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        key: Option<&str>,
    ) -> (u16, Value) {
        let mut r = self.http.request(method, format!("{}{}", self.url(id), path));
        if let Some(b) = body {
            r = r.json(&b);
        }
        if let Some(k) = key {
            r = r.header("Idempotency-Key", k);
        }
        match r.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let bytes = resp.bytes().await.unwrap_or_default();
                let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                (status, v)
            }
            Err(e) => (0, Value::String(e.to_string())),
        }
    }

    pub async fn get(&self, id: u64, path: &str) -> (u16, Value) {
        self.req(id, reqwest::Method::GET, path, None, None).await
    }

    pub async fn post(&self, id: u64, path: &str, body: Value) -> (u16, Value) {
        self.req(id, reqwest::Method::POST, path, Some(body), None).await
    }

    /// Waits until every running node (or those in `among`) reports the same leader,
    /// and returns it.
    pub async fn wait_leader(&self, within: Duration) -> u64 {
        self.wait_leader_among(&self.running(), within).await
    }

    pub async fn wait_leader_among(&self, among: &[u64], within: Duration) -> u64 {
        let deadline = Instant::now() + within;
        loop {
            let mut leaders = Vec::new();
            let mut views = Vec::new();
            for id in among {
                let (s, v) = self.get(*id, "/v1/cluster?stale=true").await;
                leaders.push(if s == 200 { v["leader"].as_u64() } else { None });
                // Term and members of each node: what a failure needs to be understood.
                views.push(format!("node {id}: {s} {v}"));
            }
            if let Some(Some(l)) = leaders.first() {
                if leaders.iter().all(|x| *x == Some(*l)) && among.contains(l) {
                    return *l;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader among {among:?} within {within:?}: {leaders:?}\n{}",
                views.join("\n")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls `f` until it returns Some, or panics with `what` after `within`.
    pub async fn eventually<T, F, Fut>(&self, within: Duration, what: &str, mut f: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + within;
        loop {
            if let Some(v) = f().await {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out after {within:?} waiting for: {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `n` hosts have registered, as node `via` sees it.
    pub async fn wait_hosts(&self, via: u64, n: usize) {
        self.eventually(Duration::from_secs(20), &format!("{n} hosts registered"), || async {
            let (_, hosts) = self.get(via, "/v1/hosts").await;
            (hosts.as_array().map_or(0, Vec::len) == n).then_some(())
        })
        .await;
    }

    /// Creates pool `name` with `size` addresses (a /24 with a range) through node `via`.
    pub async fn create_pool(&self, via: u64, name: &str, third_octet: u8) {
        let body = serde_json::json!({
            "name": name,
            "subnet": format!("198.18.{third_octet}.0/24"),
            "gateway": format!("198.18.{third_octet}.1"),
        });
        let (s, v) = self.post(via, "/v1/ipam/pools", body).await;
        assert_eq!(s, 201, "create pool: {v}");
    }

    /// Allocations of `pool` as (ip, owner), read linearizably through `via`.
    pub async fn allocations(&self, via: u64, pool: &str) -> Vec<(String, String)> {
        let (s, v) = self.get(via, &format!("/v1/ipam/pools/{pool}/allocations")).await;
        assert_eq!(s, 200, "{v}");
        v.as_array()
            .unwrap()
            .iter()
            .map(|a| (a["ip"].as_str().unwrap().to_string(), a["owner"].as_str().unwrap().to_string()))
            .collect()
    }
}

impl Cluster {
    /// (node, instance, pid) of every instance process the nodes' agents started, from
    /// their pid files.
    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.nodes[&id].data_dir.clone()
    }

    /// The pid of node `id`'s fence guard while it runs.
    pub fn guard_pid(&self, id: u64) -> Option<i32> {
        let text = std::fs::read_to_string(self.nodes[&id].data_dir.join("fence-guard.pid")).ok()?;
        let pid: i32 = text.split_whitespace().next()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        (!stat.contains(") Z")).then_some(pid)
    }

    pub fn instance_pids(&self) -> Vec<(u64, String, i32)> {
        let mut out = Vec::new();
        for n in self.nodes.values() {
            let Ok(entries) = std::fs::read_dir(n.data_dir.join("instances")) else { continue };
            for e in entries.flatten() {
                let Ok(text) = std::fs::read_to_string(e.path().join("pid")) else { continue };
                let Ok(v) = serde_json::from_str::<Value>(&text) else { continue };
                let pid = v["pid"].as_i64().unwrap_or(0) as i32;
                let alive = std::path::Path::new(&format!("/proc/{pid}")).exists()
                    && !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z");
                if pid > 0 && alive {
                    out.push((n.id, v["instance"].as_str().unwrap_or("").to_string(), pid));
                }
            }
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in self.nodes.values_mut() {
            if let Some(mut c) = n.child.take() {
                signal(c.id() as i32, libc::SIGCONT);
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        // Instances run in their own process groups and outlive a killed agent; so do
        // the fence guards.
        for (_, _, pid) in self.instance_pids() {
            signal(-pid, libc::SIGKILL);
        }
        for id in self.ids() {
            if let Some(pid) = self.guard_pid(id) {
                signal(pid, libc::SIGKILL);
            }
        }
        if std::thread::panicking() {
            for n in self.nodes.values() {
                let log = std::fs::read_to_string(&n.log).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                if let Some(dir) = std::env::var_os("BERTH_TEST_KEEP_LOGS") {
                    let _ = std::fs::write(std::path::Path::new(&dir).join(format!("node{}.log", n.id)), &log);
                }
                eprintln!("---- node {} log (last 30 lines) ----", n.id);
                for l in &lines[lines.len().saturating_sub(30)..] {
                    eprintln!("{l}");
                }
            }
        }
    }
}

/// The image the Docker tests run, built locally by [`ensure_image`].
pub const IMAGE: &str = "berth-test/busybox:1";

/// Runs a shell command: its stdout, or an error naming it and its stderr.
pub fn sh(cmd: &str) -> Result<String, String> {
    let out = Command::new("sh").args(["-c", cmd]).output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!("{cmd}: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Why a Docker test cannot run here, if it cannot.
pub fn missing_capability() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (macvlan links need CAP_NET_ADMIN)".into());
    }
    if sh("docker info --format '{{.ServerVersion}}'").is_err() {
        return Some("no Docker engine answers".into());
    }
    if sh("command -v busybox").is_err() {
        return Some("no static busybox to build the test image (apt-get install busybox-static)".into());
    }
    None
}

/// Builds the test image from the host's static busybox: `docker import`, no pull.
pub fn ensure_image() {
    if sh(&format!("docker image inspect {IMAGE} >/dev/null 2>&1")).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    sh(&format!(
        "mkdir -p {r}/bin && cp \"$(command -v busybox)\" {r}/bin/busybox && \
         for a in sh httpd sleep echo cat ls true false test wget nc kill ps; do ln -s busybox {r}/bin/$a; done && \
         tar -C {r} -c . | docker import - {IMAGE} >/dev/null",
        r = root.display()
    ))
    .expect("build the test image");
}
