//! A cluster of `berth agent` processes on loopback, for benchmarks and chaos runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::bench::free_port;

/// The `berth` binary next to this one (same cargo profile), or `$BERTH_BIN`.
pub fn berth_binary() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("BERTH_BIN") {
        return Ok(PathBuf::from(p));
    }
    let me = std::env::current_exe()?;
    let sibling = me.with_file_name("berth");
    if sibling.exists() {
        return Ok(sibling);
    }
    bail!(
        "no berth binary at {}: build it first (cargo build --release --bin berth) or set BERTH_BIN",
        sibling.display()
    )
}

/// One node process.
pub struct Proc {
    pub id: u64,
    /// The `--peers` this node starts with (nodes added later list themselves too).
    pub peers: Option<String>,
    pub grpc: String,
    pub http: String,
    pub data_dir: PathBuf,
    pub child: Option<Child>,
}

/// A cluster of nodes with ids 1..=n.
pub struct Cluster {
    /// The namespaces the nodes run in (None: loopback).
    pub net: Option<crate::netns::Net>,
    pub binary: PathBuf,
    pub dir: tempfile::TempDir,
    pub nodes: BTreeMap<u64, Proc>,
    pub peers: String,
    pub extra: Vec<String>,
    /// With TLS: the cluster CA's certificate (`berth ca` made it and every node's in
    /// `dir/ca`); nodes run mutual TLS and serve HTTPS.
    pub ca: Option<reqwest::Certificate>,
    /// Each node's data dir is a tmpfs of its own (`DISK_MB`), so one node's disk can
    /// be filled (the `disk-full` nemesis). Needs root.
    pub disks: bool,
}

/// What a cluster is started with beyond its flags.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Each node in its own network namespace (root).
    pub namespaces: bool,
    /// Mutual TLS between the nodes, HTTPS on their APIs.
    pub tls: bool,
    /// Each data dir on its own small tmpfs, the nodes' disk reserve at `RESERVE_MB`
    /// (root).
    pub disks: bool,
}

/// The size of a node's tmpfs with `Options::disks`.
pub const DISK_MB: u64 = 192;
/// The nodes' `--min-free-disk-mb` with `Options::disks`.
pub const RESERVE_MB: u64 = 16;

impl Cluster {
    /// Starts `n` nodes with `extra` flags each, on loopback.
    pub fn start(n: u64, extra: &[&str]) -> Result<Cluster> {
        Self::start_in(n, extra, false)
    }

    /// Starts `n` nodes, each in its own network namespace when `namespaces`.
    pub fn start_in(n: u64, extra: &[&str], namespaces: bool) -> Result<Cluster> {
        Self::start_with(n, extra, Options { namespaces, ..Default::default() })
    }

    /// Starts `n` nodes with `extra` flags each and `opts`.
    pub fn start_with(n: u64, extra: &[&str], opts: Options) -> Result<Cluster> {
        let (namespaces, tls) = (opts.namespaces, opts.tls);
        let binary = berth_binary()?;
        let dir = tempfile::tempdir()?;
        let ids: Vec<u64> = (1..=n).collect();
        let net = if namespaces { Some(crate::netns::Net::create(&ids)?) } else { None };
        let mut nodes = BTreeMap::new();
        for id in 1..=n {
            let (grpc, http) = match &net {
                Some(net) => (format!("{}:7401", net.ip(id)), format!("{}:7481", net.ip(id))),
                None => (format!("127.0.0.1:{}", free_port()?), format!("127.0.0.1:{}", free_port()?)),
            };
            nodes.insert(
                id,
                Proc { id, peers: None, grpc, http, data_dir: dir.path().join(format!("node{id}")), child: None },
            );
        }
        let peers = nodes.values().map(|p| format!("{}={}", p.id, p.grpc)).collect::<Vec<_>>().join(",");
        let mut extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        // The nodes share this host's CPUs, as `berth dev`'s do.
        if !extra.iter().any(|f| f == "--worker-threads") {
            extra.extend(["--worker-threads".to_string(), berth_node::worker_share(n).to_string()]);
        }
        if opts.disks {
            extra.extend(["--min-free-disk-mb".to_string(), RESERVE_MB.to_string()]);
        }
        let mut c = Cluster { net, binary, dir, nodes, peers, extra, ca: None, disks: opts.disks };
        if opts.disks {
            for id in 1..=n {
                c.mount_disk(id)?;
            }
        }
        if tls {
            c.berth(&["ca", "init", "--dir"], &[])?;
            let pem = std::fs::read(c.ca_dir().join("ca.pem"))?;
            c.ca = Some(reqwest::Certificate::from_pem(&pem)?);
            for id in 1..=n {
                c.issue(id)?;
            }
        }
        for id in 1..=n {
            c.spawn(id)?;
        }
        Ok(c)
    }

    /// Mounts node `id`'s tmpfs on its data dir.
    fn mount_disk(&self, id: u64) -> Result<()> {
        let dir = &self.nodes[&id].data_dir;
        std::fs::create_dir_all(dir)?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={DISK_MB}m"), "tmpfs"])
            .arg(dir)
            .output()
            .context("cannot run mount")?;
        if !out.status.success() {
            bail!("cannot mount a tmpfs on {}: {}", dir.display(), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    }

    fn filler(&self, id: u64) -> Option<PathBuf> {
        Some(self.nodes.get(&id)?.data_dir.join("disk-full-filler"))
    }

    /// Fills node `id`'s disk until half its reserve is left: the node must refuse
    /// writes and Raft, hand leadership over, and stay alive.
    pub fn fill_disk(&self, id: u64) -> Result<()> {
        use std::io::Write;
        let path = self.filler(id).context("no such node")?;
        let dir = path.parent().context("a data dir")?;
        let out = Command::new("df").args(["-B1", "--output=avail"]).arg(dir).output()?;
        let avail: u64 = String::from_utf8_lossy(&out.stdout).lines().nth(1).unwrap_or("0").trim().parse()?;
        let mut left = avail.saturating_sub((RESERVE_MB << 20) / 2);
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
        let chunk = vec![0x5au8; 1 << 20];
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            f.write_all(&chunk[..n])?;
            left -= n as u64;
        }
        f.sync_all()?;
        Ok(())
    }

    /// Gives node `id` its space back.
    pub fn free_disk(&self, id: u64) {
        if let Some(p) = self.filler(id) {
            let _ = std::fs::remove_file(p);
        }
    }

    fn ca_dir(&self) -> PathBuf {
        self.dir.path().join("ca")
    }

    /// Runs `berth ARGS... <ca dir> MORE...` and fails with its stderr.
    fn berth(&self, args: &[&str], more: &[&str]) -> Result<()> {
        let out = Command::new(&self.binary).args(args).arg(self.ca_dir()).args(more).output()?;
        if !out.status.success() {
            bail!("berth {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    }

    /// Issues node `id`'s certificate, valid for the address its API listens on.
    fn issue(&self, id: u64) -> Result<()> {
        let host = self.nodes[&id].http.rsplit_once(':').map(|(h, _)| h.to_string()).unwrap_or_default();
        self.berth(&["ca", "issue", "--id", &id.to_string(), "--host", &host, "--dir"], &[])
    }

    /// Sends node `id` a `SIGHUP` (with TLS: it reads its files again).
    pub fn hangup(&self, id: u64) -> Result<()> {
        let pid = self.pid(id).context("the node is not running")?;
        // SAFETY: kill(2) on a node process of this run.
        if unsafe { libc::kill(pid as i32, libc::SIGHUP) } != 0 {
            bail!("SIGHUP to node {id}: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Puts a certificate file that fails every check in node `id`'s place.
    pub fn break_certificate(&self, id: u64) -> Result<()> {
        self.ca.as_ref().context("the cluster runs without TLS")?;
        Ok(std::fs::write(self.ca_dir().join(format!("node-{id}.pem")), "not a certificate")?)
    }

    /// Renews node `id`'s certificate (the same CA, a new key); the new certificate
    /// (DER).
    pub fn renew_certificate(&self, id: u64) -> Result<Vec<u8>> {
        self.ca.as_ref().context("the cluster runs without TLS")?;
        let host = self.nodes[&id].http.rsplit_once(':').map(|(h, _)| h.to_string()).unwrap_or_default();
        self.berth(&["ca", "issue", "--id", &id.to_string(), "--host", &host, "--dir"], &["--force"])?;
        berth_node::tls::first_certificate(&self.ca_dir().join(format!("node-{id}.pem"))).map_err(anyhow::Error::msg)
    }

    /// An HTTP client for this cluster's APIs (trusting its CA when it runs TLS).
    pub fn http_builder(&self) -> reqwest::ClientBuilder {
        let b = reqwest::Client::builder();
        match &self.ca {
            Some(ca) => b.add_root_certificate(ca.clone()).tls_built_in_root_certs(false),
            None => b,
        }
    }

    /// [`Self::http_builder`], built.
    pub fn http_client(&self) -> reqwest::Client {
        self.http_builder().build().expect("an HTTP client")
    }

    /// Adds node `id` (not part of the initial cluster), started with `peers` (the
    /// cluster's members and itself), so it waits to be added rather than bootstrap.
    pub fn add_node(&mut self, id: u64, members: &str) -> Result<String> {
        if let Some(net) = &mut self.net {
            net.add(id)?;
        }
        let (grpc, http) = match &self.net {
            Some(net) => (format!("{}:7401", net.ip(id)), format!("{}:7481", net.ip(id))),
            None => (format!("127.0.0.1:{}", free_port()?), format!("127.0.0.1:{}", free_port()?)),
        };
        let data_dir = self.dir.path().join(format!("node{id}"));
        let peers = format!("{members},{id}={grpc}");
        self.nodes.insert(id, Proc { id, peers: Some(peers.clone()), grpc: grpc.clone(), http, data_dir, child: None });
        if self.disks {
            self.mount_disk(id)?;
        }
        if self.ca.is_some() {
            self.issue(id)?;
        }
        self.spawn_with(id, &peers)?;
        Ok(grpc)
    }

    /// Forgets node `id` (it was removed from the cluster), killing it.
    pub fn remove_node(&mut self, id: u64) {
        self.kill(id);
        self.nodes.remove(&id);
    }

    pub fn spawn(&mut self, id: u64) -> Result<()> {
        let peers = self.nodes.get(&id).and_then(|p| p.peers.clone()).unwrap_or_else(|| self.peers.clone());
        self.spawn_with(id, &peers)
    }

    fn spawn_with(&mut self, id: u64, peers: &str) -> Result<()> {
        let log_path = self.dir.path().join(format!("node{id}.log"));
        let ca = self.ca_dir();
        let tls: Vec<PathBuf> = match self.ca {
            Some(_) => {
                let f = |flag: &str, file: String| [PathBuf::from(flag), ca.join(file)];
                [
                    f("--tls-cert", format!("node-{id}.pem")),
                    f("--tls-key", format!("node-{id}.key")),
                    f("--tls-ca", "ca.pem".into()),
                ]
                .concat()
            }
            None => vec![],
        };
        let p = self.nodes.get_mut(&id).context("no such node")?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
        let mut cmd = match &self.net {
            // `ip netns exec` execs the program: the child's pid is the node's.
            Some(net) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &net.ns(id)]).arg(&self.binary);
                c
            }
            None => Command::new(&self.binary),
        };
        let child = cmd
            .arg("agent")
            .args(["--id", &id.to_string()])
            .arg("--data-dir")
            .arg(&p.data_dir)
            .args(["--listen", &p.grpc, "--http", &p.http, "--peers", peers])
            .args(&self.extra)
            .args(&tls)
            .env("RUST_LOG", std::env::var("BERTH_NODE_LOG").unwrap_or_else(|_| "warn".into()))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", self.binary.display()))?;
        p.child = Some(child);
        Ok(())
    }

    /// SIGKILL.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut c) = self.nodes.get_mut(&id).and_then(|p| p.child.take()) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn pid(&self, id: u64) -> Option<u32> {
        self.nodes.get(&id)?.child.as_ref().map(|c| c.id())
    }

    pub fn url(&self, id: u64) -> String {
        format!("{}://{}", if self.ca.is_some() { "https" } else { "http" }, self.nodes[&id].http)
    }

    pub fn log_path(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node{id}.log"))
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Waits until a node answers with a leader; returns it.
    pub async fn wait_leader(&self, http: &reqwest::Client, within: Duration) -> Result<u64> {
        let deadline = Instant::now() + within;
        loop {
            for id in self.nodes.keys() {
                if self.nodes[id].child.is_none() {
                    continue;
                }
                let url = format!("{}/v1/cluster?stale=true", self.url(*id));
                if let Ok(r) = http.get(&url).timeout(Duration::from_millis(500)).send().await {
                    if let Ok(v) = r.json::<serde_json::Value>().await {
                        if let Some(l) = v["leader"].as_u64() {
                            if self.nodes.get(&l).is_some_and(|p| p.child.is_some()) {
                                return Ok(l);
                            }
                        }
                    }
                }
            }
            if Instant::now() > deadline {
                bail!("no leader within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the leader's membership holds every running node, as a voter or a
    /// learner (nodes join through the autopilot a little after a leader is elected):
    /// faults that change membership or pick a node by id start from the whole
    /// cluster. Returns the leader.
    pub async fn wait_members(&self, http: &reqwest::Client, within: Duration) -> Result<u64> {
        let deadline = Instant::now() + within;
        let want: std::collections::BTreeSet<u64> =
            self.nodes.iter().filter(|(_, n)| n.child.is_some()).map(|(id, _)| *id).collect();
        let mut seen = std::collections::BTreeSet::new();
        loop {
            let leader = self.wait_leader(http, deadline.saturating_duration_since(Instant::now())).await?;
            let url = format!("{}/v1/cluster", self.url(leader));
            if let Ok(r) = http.get(&url).timeout(Duration::from_millis(500)).send().await {
                if let Ok(v) = r.json::<serde_json::Value>().await {
                    seen = v["members"]
                        .as_array()
                        .map(|m| m.iter().filter_map(|m| m["id"].as_u64()).collect())
                        .unwrap_or_default();
                    if want.is_subset(&seen) {
                        return Ok(leader);
                    }
                }
            }
            if Instant::now() > deadline {
                bail!("the members are {seen:?}, not yet all of {want:?}, after {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The addresses of a cluster's nodes, to ask from async code without holding the
/// cluster.
#[derive(Clone)]
pub struct View {
    pub urls: BTreeMap<u64, String>,
}

impl View {
    /// The leader some node reports, waiting up to 30 s for one.
    pub async fn leader(&self, http: &reqwest::Client) -> Option<u64> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            for url in self.urls.values() {
                if let Ok(r) =
                    http.get(format!("{url}/v1/cluster?stale=true")).timeout(Duration::from_millis(500)).send().await
                {
                    if let Ok(v) = r.json::<serde_json::Value>().await {
                        if let Some(l) = v["leader"].as_u64() {
                            return Some(l);
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }
}

impl Cluster {
    pub fn clone_view(&self) -> View {
        View { urls: self.nodes.keys().map(|id| (*id, self.url(*id))).collect() }
    }
}

/// What really runs on one host: an instance process alive on it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Live {
    pub host: u64,
    pub instance: String,
    pub ip: Option<String>,
    pub pid: i32,
}

/// The start time of a live (not zombie) process, from /proc.
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    if after.starts_with('Z') {
        return None;
    }
    after.split_whitespace().nth(19)?.parse().ok()
}

impl Cluster {
    /// Every instance process alive on any host, read from the machine — the process
    /// runtime's pid files (pid, start time, instance, sticky IP) checked against
    /// /proc — not from what berth reports. Nodes removed from the cluster count too:
    /// what they left running is still live.
    pub fn live_instances(&self) -> Vec<Live> {
        let mut out = Vec::new();
        let Ok(dirs) = std::fs::read_dir(self.dir.path()) else { return out };
        for d in dirs.flatten() {
            let name = d.file_name().to_string_lossy().to_string();
            let Some(host) = name.strip_prefix("node").and_then(|n| n.parse::<u64>().ok()) else { continue };
            let Ok(entries) = std::fs::read_dir(d.path().join("instances")) else { continue };
            for e in entries.flatten() {
                let Ok(text) = std::fs::read_to_string(e.path().join("pid")) else { continue };
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else { continue };
                let pid = v["pid"].as_i64().unwrap_or(0) as i32;
                if pid > 0 && v["start_time"].as_u64().is_some() && start_time(pid) == v["start_time"].as_u64() {
                    out.push(Live {
                        host,
                        instance: v["instance"].as_str().unwrap_or("").to_string(),
                        ip: v["ip"].as_str().map(String::from),
                        pid,
                    });
                }
            }
        }
        out.sort();
        out
    }

    /// IPs that are live on more than one host right now, with the hosts.
    pub fn ips_live_twice(&self) -> Vec<(String, Vec<u64>)> {
        let mut by_ip: BTreeMap<String, std::collections::BTreeSet<u64>> = BTreeMap::new();
        for l in self.live_instances() {
            if let Some(ip) = l.ip {
                by_ip.entry(ip).or_default().insert(l.host);
            }
        }
        by_ip.into_iter().filter(|(_, h)| h.len() > 1).map(|(ip, h)| (ip, h.into_iter().collect())).collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in self.nodes.values_mut() {
            if let Some(mut c) = p.child.take() {
                // SAFETY: kill(2) on our own child.
                unsafe { libc::kill(c.id() as i32, libc::SIGCONT) };
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        // Instances and fence guards outlive their agents by design.
        for l in self.live_instances() {
            // SAFETY: kill(2) on the process group of an instance our nodes started.
            unsafe { libc::kill(-l.pid, libc::SIGKILL) };
        }
        for p in self.nodes.values() {
            let guard = std::fs::read_to_string(p.data_dir.join("fence-guard.pid")).unwrap_or_default();
            if let Some(pid) = guard.split_whitespace().next().and_then(|s| s.parse::<i32>().ok()) {
                if start_time(pid).is_some() {
                    // SAFETY: kill(2) on the guard our node started.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        if self.disks {
            for p in self.nodes.values() {
                let _ = Command::new("umount").arg("-l").arg(&p.data_dir).stderr(Stdio::null()).status();
            }
        }
        // `net` drops after the processes: namespaces go last.
    }
}
