//! # berth-cluster-config: the node configuration schema
//!
//! Every flag of `berth agent` has a key in the TOML file given by `--config`; a flag
//! on the command line wins over the file. This crate owns the schema ([`NodeConfig`]),
//! the `--peers` syntax ([`parse_peers`]) and the validation that turns a merged
//! configuration into a [`ValidConfig`] — or into one clear error naming the key.
//!
//! Ready-made files live beside this crate: `examples/node.toml` (every key, commented)
//! and `local-3/` (a 3-node cluster on loopback).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A configuration error: what is wrong, naming the flag or key.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("bad config file {path}: {reason}")]
    Parse { path: String, reason: String },
    #[error("{key}: {reason}")]
    Invalid { key: &'static str, reason: String },
    #[error("missing {key} (give --{flag} or `{key}` in the config file)")]
    Missing { key: &'static str, flag: &'static str },
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key, reason: reason.into() }
}

/// Which runtime the host's agent runs instances with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// Containers on the local Docker engine, on macvlan networks.
    Docker,
    /// Local processes (apps without `image`).
    #[default]
    Process,
}

impl std::str::FromStr for Runtime {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "docker" => Ok(Runtime::Docker),
            "process" => Ok(Runtime::Process),
            other => Err(format!("unknown runtime {other:?} (expected docker or process)")),
        }
    }
}

impl std::fmt::Display for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Runtime::Docker => "docker",
            Runtime::Process => "process",
        })
    }
}

/// How the node writes its logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("unknown log format {other:?} (expected text or json)")),
        }
    }
}

/// Raft heartbeat interval by default, in ms.
pub const DEFAULT_HEARTBEAT_MS: u64 = 40;
/// Raft election timeout range by default, in ms. A follower refuses votes for
/// `election_timeout_max` after its leader's last heartbeat (openraft's leader lease),
/// so the first candidate after a leader dies usually loses and the second wins: a
/// failover takes about two timeouts. 100–200 ms keeps that under 400 ms at the
/// median (docs/benchmarks.md); pre-vote and the lease keep a follower that misses a
/// few heartbeats from disturbing a healthy leader.
pub const DEFAULT_ELECTION_TIMEOUT_MS: (u64, u64) = (100, 200);

/// Raft timing and snapshot tuning (`[raft]` in the file). Defaults:
/// [`DEFAULT_HEARTBEAT_MS`], [`DEFAULT_ELECTION_TIMEOUT_MS`] and at least 5000 entries
/// between snapshots.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RaftTuning {
    pub heartbeat_ms: Option<u64>,
    pub election_timeout_min_ms: Option<u64>,
    pub election_timeout_max_ms: Option<u64>,
    /// The fewest entries between two snapshots (which also wait until the log took in
    /// as many bytes as the last snapshot had; the log before one is then purged).
    pub snapshot_logs: Option<u64>,
}

/// The configuration file's schema; also what the command-line flags fill in. Every
/// field is optional here; [`NodeConfig::validate`] says what is required.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's id (`--id`); must appear in `peers`.
    pub id: Option<u64>,
    /// Where the node keeps its Raft log and snapshots (`--data-dir`).
    pub data_dir: Option<PathBuf>,
    /// gRPC address: Raft and the gRPC API (`--listen`).
    pub listen: Option<String>,
    /// HTTP API address (`--http`).
    pub http: Option<String>,
    /// Where to serve the Consul-compatible upstream feed for nginx-upsync-module and
    /// Consul clients (`--consul-listen`, e.g. 127.0.0.1:8500); off when absent.
    pub consul_listen: Option<String>,
    /// Where to answer DNS for `APP.berth` and `INSTANCE.APP.berth`, UDP and TCP
    /// (`--dns-listen`, e.g. 127.0.0.1:8600); off when absent.
    pub dns_listen: Option<String>,
    /// Serve Docker's remote IPAM plugin protocol on this unix socket
    /// (`--docker-ipam-socket`, normally /run/docker/plugins/berth.sock, which makes
    /// `--ipam-driver berth` work); off when absent.
    pub docker_ipam_socket: Option<PathBuf>,
    /// The initial cluster, `id=host:port,...` (`--peers`), or a table `{1 = "host:port"}`.
    pub peers: Option<Peers>,
    /// `docker` or `process` (`--runtime`).
    pub runtime: Option<Runtime>,
    /// The parent interface of macvlan networks (`--macvlan-parent`).
    pub macvlan_parent: Option<String>,
    /// `redb` (default) or `sled` (`--storage`).
    pub storage: Option<String>,
    /// Host labels for constraints (`--label key=value`, repeated).
    pub labels: Option<BTreeMap<String, String>>,
    /// CPUs this host offers (`--cpus`; detected when absent).
    pub cpus: Option<f64>,
    /// Memory this host offers in MiB (`--mem-mb`; detected when absent).
    pub mem_mb: Option<u64>,
    /// `text` or `json` (`--log-format`).
    pub log_format: Option<LogFormat>,
    /// Raft tuning.
    pub raft: Option<RaftTuning>,
    /// Stop every instance when the agent exits (`--stop-instances-on-exit`; `berth dev`
    /// sets it). By default instances keep running and the next agent adopts them.
    pub stop_instances_on_exit: Option<bool>,
    /// Seconds of silence after which the leader declares this host down and moves its
    /// instances (`--host-deadline-s`, default 10, at least 6); the host fences its
    /// sticky-IP instances after half of it.
    pub host_deadline_s: Option<f64>,
    /// How many of the `peers` vote (`--voters`: 1, 3, 5 or 7; default 3, or all when
    /// fewer): the first ones in id order; the rest join as learners.
    pub voters: Option<usize>,
    /// Seconds a voter must be dead before the autopilot replaces it with a healthy
    /// learner (`--autopilot-dead-after-s`, default 30).
    pub autopilot_dead_after_s: Option<f64>,
    /// The most instances an app may ask for through this node's API
    /// (`--max-instances-per-app`, default and at most 1000000): a deploy or scale
    /// beyond it is refused with a 400 naming the limit. Set the same on every node.
    pub max_instances_per_app: Option<u32>,
    /// Whether reads need an API token too, once tokens exist
    /// (`--require-token-for-reads`; default false: reads stay open, writes need one).
    pub require_token_for_reads: Option<bool>,
    /// Requests per second each client (a token, else a source address) may send to
    /// this node's HTTP API, with bursts of twice that; beyond, 429 (`--rate-limit`;
    /// default 0: no limit).
    pub rate_limit: Option<f64>,
    /// This node's certificate, PEM (`--tls-cert`, from `berth ca issue`). With
    /// `tls_key` and `tls_ca`: mutual TLS between nodes and HTTPS on the API.
    pub tls_cert: Option<PathBuf>,
    /// Its private key, PEM (`--tls-key`).
    pub tls_key: Option<PathBuf>,
    /// The cluster CA's certificate, PEM (`--tls-ca`): peers must present a
    /// certificate it signed.
    pub tls_ca: Option<PathBuf>,
    /// Free space (MiB) the data dir's filesystem must keep (`--min-free-disk-mb`,
    /// default 64): under it the node refuses writes and Raft until space returns.
    pub min_free_disk_mb: Option<u64>,
    /// Threads of the node's async runtime (`--worker-threads`, default: one per CPU).
    /// Nodes sharing a host (`berth dev`, the test harnesses) take their share: one
    /// thread per core each on a small host wakes fewer threads per request.
    pub worker_threads: Option<usize>,
}

/// The most `worker_threads` a node takes.
pub const MAX_WORKER_THREADS: usize = 256;

/// The `worker_threads` of each of `nodes` nodes sharing this host: its CPUs divided
/// among them, at least one.
pub fn worker_share(nodes: u64) -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cpus / nodes.max(1) as usize).max(1)
}

/// The three files of a node's TLS setup, all given.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// `min_free_disk_mb` when none is given.
pub const DEFAULT_MIN_FREE_DISK_MB: u64 = 64;

/// The highest `max_instances_per_app` (and its default).
pub const MAX_INSTANCES_PER_APP: u32 = 1_000_000;

/// `peers` in the file: the flag's string form, or a table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Peers {
    List(String),
    Table(BTreeMap<String, String>),
}

/// A configuration with every required key present and every value checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidConfig {
    pub id: u64,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub http: SocketAddr,
    pub consul_listen: Option<SocketAddr>,
    pub dns_listen: Option<SocketAddr>,
    pub docker_ipam_socket: Option<PathBuf>,
    /// Node id to gRPC address, as given (host:port).
    pub peers: BTreeMap<u64, String>,
    pub runtime: Runtime,
    pub macvlan_parent: Option<String>,
    pub storage: String,
    pub labels: BTreeMap<String, String>,
    pub cpus: Option<f64>,
    pub mem_mb: Option<u64>,
    pub log_format: LogFormat,
    pub raft: RaftTuning,
    pub stop_instances_on_exit: bool,
    pub host_deadline: std::time::Duration,
    /// The ids that vote from the start (the first `voters` peers).
    pub voters: std::collections::BTreeSet<u64>,
    pub autopilot_dead_after: std::time::Duration,
    pub max_instances_per_app: u32,
    pub require_token_for_reads: bool,
    /// Requests per second per client (None: no limit).
    pub rate_limit: Option<f64>,
    /// Mutual TLS between nodes, HTTPS on the API (None: plain).
    pub tls: Option<TlsFiles>,
    /// Bytes the data dir's filesystem must keep free.
    pub min_free_disk: u64,
}

/// The shortest `host_deadline_s`: fencing at half of it must leave room for a leader's
/// quorum freshness (1.5 s) and the kill (`node/src/timing.rs`).
pub const MIN_HOST_DEADLINE_S: f64 = 6.0;
/// `host_deadline_s` when none is given.
pub const DEFAULT_HOST_DEADLINE_S: f64 = 10.0;

/// Parses `1=127.0.0.1:7401,2=127.0.0.1:7402`. Ids are positive and unique; every
/// address is `host:port`.
pub fn parse_peers(s: &str) -> Result<BTreeMap<u64, String>, ConfigError> {
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) =
            part.split_once('=').ok_or_else(|| invalid("peers", format!("{part:?} is not id=host:port")))?;
        insert_peer(&mut out, id, addr)?;
    }
    if out.is_empty() {
        return Err(invalid("peers", "the list is empty"));
    }
    Ok(out)
}

fn insert_peer(out: &mut BTreeMap<u64, String>, id: &str, addr: &str) -> Result<(), ConfigError> {
    let id: u64 =
        id.trim().parse().map_err(|_| invalid("peers", format!("node id {id:?} is not a positive integer")))?;
    if id == 0 {
        return Err(invalid("peers", "node id 0 is reserved; ids start at 1"));
    }
    let addr = addr.trim();
    check_host_port("peers", addr)?;
    if out.insert(id, addr.to_string()).is_some() {
        return Err(invalid("peers", format!("node id {id} appears twice")));
    }
    Ok(())
}

fn check_host_port(key: &'static str, addr: &str) -> Result<(), ConfigError> {
    let (host, port) = addr.rsplit_once(':').ok_or_else(|| invalid(key, format!("{addr:?} is not host:port")))?;
    if host.is_empty() {
        return Err(invalid(key, format!("{addr:?} has no host")));
    }
    port.parse::<u16>().map_err(|_| invalid(key, format!("{addr:?} has no valid port")))?;
    Ok(())
}

fn socket(key: &'static str, s: &str) -> Result<SocketAddr, ConfigError> {
    s.parse().map_err(|_| invalid(key, format!("{s:?} is not an ip:port address")))
}

impl NodeConfig {
    /// Reads a TOML file. Unknown keys are an error naming the key.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::Read { path: path.display().to_string(), reason: e.to_string() })?;
        Self::from_toml(&text).map_err(|reason| ConfigError::Parse { path: path.display().to_string(), reason })
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.message().to_string() + &span_hint(text, e.span()))
    }

    /// `self` with every key `flags` sets replaced by the flag's value.
    pub fn merged_with(mut self, flags: NodeConfig) -> NodeConfig {
        macro_rules! take {
            ($($f:ident),*) => { $( if flags.$f.is_some() { self.$f = flags.$f; } )* };
        }
        take!(
            id,
            data_dir,
            listen,
            http,
            consul_listen,
            dns_listen,
            docker_ipam_socket,
            peers,
            runtime,
            macvlan_parent,
            storage,
            cpus,
            mem_mb,
            log_format,
            stop_instances_on_exit,
            host_deadline_s,
            voters,
            autopilot_dead_after_s,
            max_instances_per_app,
            require_token_for_reads,
            rate_limit,
            tls_cert,
            tls_key,
            tls_ca,
            min_free_disk_mb,
            worker_threads
        );
        if let Some(labels) = flags.labels {
            let mut merged = self.labels.take().unwrap_or_default();
            merged.extend(labels);
            self.labels = Some(merged);
        }
        if let Some(r) = flags.raft {
            let mut base = self.raft.take().unwrap_or_default();
            macro_rules! take_raft {
                ($($f:ident),*) => { $( if r.$f.is_some() { base.$f = r.$f; } )* };
            }
            take_raft!(heartbeat_ms, election_timeout_min_ms, election_timeout_max_ms, snapshot_logs);
            self.raft = Some(base);
        }
        self
    }

    /// Checks every value and fills defaults.
    pub fn validate(self) -> Result<ValidConfig, ConfigError> {
        let id = self.id.ok_or(ConfigError::Missing { key: "id", flag: "id" })?;
        if id == 0 {
            return Err(invalid("id", "0 is reserved; node ids start at 1"));
        }
        let data_dir = self.data_dir.ok_or(ConfigError::Missing { key: "data_dir", flag: "data-dir" })?;
        let listen =
            socket("listen", self.listen.as_deref().ok_or(ConfigError::Missing { key: "listen", flag: "listen" })?)?;
        let http = socket("http", self.http.as_deref().ok_or(ConfigError::Missing { key: "http", flag: "http" })?)?;
        if http == listen {
            return Err(invalid("http", format!("{http} is also the gRPC --listen address")));
        }
        let consul_listen = self.consul_listen.as_deref().map(|a| socket("consul_listen", a)).transpose()?;
        if let Some(c) = consul_listen.filter(|c| *c == http || *c == listen) {
            return Err(invalid("consul_listen", format!("{c} is also the --http or --listen address")));
        }
        // DNS takes UDP and TCP on its port; only TCP clashes with the others.
        let dns_listen = self.dns_listen.as_deref().map(|a| socket("dns_listen", a)).transpose()?;
        if let Some(d) = dns_listen.filter(|d| *d == http || *d == listen || Some(*d) == consul_listen) {
            return Err(invalid("dns_listen", format!("{d} is also the --http, --listen or --consul-listen address")));
        }
        let peers = match self.peers.ok_or(ConfigError::Missing { key: "peers", flag: "peers" })? {
            Peers::List(s) => parse_peers(&s)?,
            Peers::Table(t) => {
                let mut out = BTreeMap::new();
                for (k, v) in &t {
                    insert_peer(&mut out, k, v)?;
                }
                if out.is_empty() {
                    return Err(invalid("peers", "the list is empty"));
                }
                out
            }
        };
        if !peers.contains_key(&id) {
            return Err(invalid(
                "peers",
                format!("this node's id {id} is not in the peers list (ids: {:?})", peers.keys().collect::<Vec<_>>()),
            ));
        }
        let storage = self.storage.unwrap_or_else(|| "redb".into());
        if !matches!(storage.as_str(), "redb" | "sled" | "memory") {
            return Err(invalid("storage", format!("{storage:?} is not redb or sled")));
        }
        if let Some(c) = self.cpus {
            if !(c.is_finite() && c > 0.0) {
                return Err(invalid("cpus", format!("{c} is not a positive number")));
            }
        }
        if self.mem_mb == Some(0) {
            return Err(invalid("mem_mb", "must be positive"));
        }
        let labels = self.labels.unwrap_or_default();
        for k in labels.keys() {
            if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c)) {
                return Err(invalid("labels", format!("label key {k:?} must be [A-Za-z0-9-_./]+")));
            }
        }
        let raft = self.raft.unwrap_or_default();
        let min = raft.election_timeout_min_ms.unwrap_or(DEFAULT_ELECTION_TIMEOUT_MS.0);
        let max = raft.election_timeout_max_ms.unwrap_or(DEFAULT_ELECTION_TIMEOUT_MS.1);
        let hb = raft.heartbeat_ms.unwrap_or(DEFAULT_HEARTBEAT_MS);
        if hb == 0 || min <= hb || max <= min {
            return Err(invalid(
                "raft",
                format!(
                    "need 0 < heartbeat_ms ({hb}) < election_timeout_min_ms ({min}) < election_timeout_max_ms ({max})"
                ),
            ));
        }
        if raft.snapshot_logs == Some(0) {
            return Err(invalid("raft.snapshot_logs", "must be positive"));
        }
        let deadline = self.host_deadline_s.unwrap_or(DEFAULT_HOST_DEADLINE_S);
        if !(deadline.is_finite() && (MIN_HOST_DEADLINE_S..=86_400.0).contains(&deadline)) {
            return Err(invalid(
                "host_deadline_s",
                format!(
                    "{deadline} is not between {MIN_HOST_DEADLINE_S} and 86400 seconds (a host fences itself after half \
                     the deadline, which must leave room for the leader's 1.5 s quorum check and the kill)"
                ),
            ));
        }
        let want = self.voters.unwrap_or(3.min(peers.len()));
        if ![1, 3, 5, 7].contains(&want) && want != peers.len() {
            return Err(invalid(
                "voters",
                format!("{want} is not 1, 3, 5 or 7 (an even number of voters adds no safety)"),
            ));
        }
        if want > peers.len() {
            return Err(invalid("voters", format!("{want} voters but only {} peers", peers.len())));
        }
        let voters = peers.keys().take(want).copied().collect();
        let dead_after = self.autopilot_dead_after_s.unwrap_or(30.0);
        if !(dead_after.is_finite() && (1.0..=86_400.0).contains(&dead_after)) {
            return Err(invalid("autopilot_dead_after_s", format!("{dead_after} is not between 1 and 86400 seconds")));
        }
        let max_instances_per_app = self.max_instances_per_app.unwrap_or(MAX_INSTANCES_PER_APP);
        if !(1..=MAX_INSTANCES_PER_APP).contains(&max_instances_per_app) {
            return Err(invalid(
                "max_instances_per_app",
                format!("{max_instances_per_app} is not between 1 and {MAX_INSTANCES_PER_APP}"),
            ));
        }
        if let Some(n) = self.worker_threads.filter(|n| !(1..=MAX_WORKER_THREADS).contains(n)) {
            return Err(invalid("worker_threads", format!("{n} is not between 1 and {MAX_WORKER_THREADS}")));
        }
        let rate_limit = match self.rate_limit {
            None => None,
            Some(0.0) => None,
            Some(r) if r.is_finite() && (0.1..=1_000_000.0).contains(&r) => Some(r),
            Some(r) => {
                return Err(invalid(
                    "rate_limit",
                    format!("{r} is not 0 (no limit) or between 0.1 and 1000000 requests per second"),
                ))
            }
        };
        let tls = match (self.tls_cert, self.tls_key, self.tls_ca) {
            (None, None, None) => None,
            (Some(cert), Some(key), Some(ca)) => Some(TlsFiles { cert, key, ca }),
            (cert, key, ca) => {
                let missing: Vec<&str> =
                    [("--tls-cert", cert.is_none()), ("--tls-key", key.is_none()), ("--tls-ca", ca.is_none())]
                        .into_iter()
                        .filter_map(|(f, m)| m.then_some(f))
                        .collect();
                return Err(invalid(
                    "tls",
                    format!("TLS needs all of --tls-cert, --tls-key and --tls-ca; missing {}", missing.join(", ")),
                ));
            }
        };
        let min_free_disk_mb = self.min_free_disk_mb.unwrap_or(DEFAULT_MIN_FREE_DISK_MB);
        if min_free_disk_mb > 1 << 20 {
            return Err(invalid("min_free_disk_mb", format!("{min_free_disk_mb} is over 1048576 (1 TiB)")));
        }
        Ok(ValidConfig {
            id,
            data_dir,
            listen,
            http,
            consul_listen,
            dns_listen,
            docker_ipam_socket: self.docker_ipam_socket,
            peers,
            runtime: self.runtime.unwrap_or_default(),
            macvlan_parent: self.macvlan_parent,
            storage,
            labels,
            cpus: self.cpus,
            mem_mb: self.mem_mb,
            log_format: self.log_format.unwrap_or_default(),
            raft,
            stop_instances_on_exit: self.stop_instances_on_exit.unwrap_or(false),
            host_deadline: std::time::Duration::from_secs_f64(deadline),
            voters,
            autopilot_dead_after: std::time::Duration::from_secs_f64(dead_after),
            max_instances_per_app,
            require_token_for_reads: self.require_token_for_reads.unwrap_or(false),
            rate_limit,
            tls,
            min_free_disk: min_free_disk_mb << 20,
        })
    }
}

/// Parses one `--label key=value`.
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("label {s:?} is not key=value"))?;
    if k.is_empty() {
        return Err(format!("label {s:?} has an empty key"));
    }
    Ok((k.to_string(), v.to_string()))
}

fn span_hint(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(r) => {
            let line = text[..r.start.min(text.len())].matches('\n').count() + 1;
            format!(" (line {line})")
        }
        None => String::new(),
    }
}

#[cfg(test)]
mod tests;
