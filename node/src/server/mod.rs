//! # The node: one `berth agent` process
//!
//! [`Node::start`] brings a node up in an order that fails early and clearly: lock the
//! data dir, open the store, bind both listeners (a port in use is reported before
//! anything else runs), build Raft, serve gRPC and HTTP, then run the background tasks
//! — bootstrap (form the cluster once a majority of `--peers` is reachable) and
//! registration (announce this node's HTTP address and resources in the replicated
//! state). [`Node::shutdown`] hands leadership over first when this node leads, then
//! stops Raft and the servers.

pub mod auth;
pub mod bootstrap;
pub mod coalesce;
pub mod consul;
pub mod disk;
pub mod dns;
pub mod docker_ipam;
pub mod events;
pub mod forward;
pub mod grpc;
pub mod http;
pub mod leader;
pub mod limits;
pub mod marathon;
pub mod metrics;
pub mod network;
pub mod openapi;
pub mod ops;
pub mod proposer;
pub mod snapshots;
pub mod ui;
pub mod webhooks;
pub mod workloads;

use std::collections::BTreeMap;
use std::fs::File;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use berth_cluster_config::{ValidConfig, DEFAULT_ELECTION_TIMEOUT_MS, DEFAULT_HEARTBEAT_MS};
use berth_raft::openraft::type_config::async_runtime::WatchReceiver;
use berth_raft::openraft::{Config as RaftConfig, SnapshotPolicy};
use berth_raft::{kv, typ, Connections, LogStore, Network, RaftService, SmStore, StateHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use self::proposer::Proposer;
use crate::agent::dispatch::Dispatch;
use crate::agent::docker::DockerRuntime;
use crate::agent::process::ProcessRuntime;
use crate::agent::runtime::Runtime;
use crate::agent::Agent;
use crate::state::nodes::NodeInfo;
use crate::state::{Command, State};

/// A failure to start, with one line that says what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("data dir {path} is unusable: {reason}")]
    DataDir { path: String, reason: String },
    #[error("data dir {path} is in use by another berth process")]
    Locked { path: String },
    #[error("cannot listen on {addr} ({what}): {reason}")]
    Bind { addr: SocketAddr, what: &'static str, reason: String },
    #[error("cannot listen on unix socket {path} (--docker-ipam-socket): {reason}")]
    BindSocket { path: String, reason: String },
    #[error("cannot start Raft: {0}")]
    Raft(String),
    #[error("{0}")]
    Runtime(String),
    #[error("TLS: {0}")]
    Tls(String),
}

/// Why Raft is refused before bootstrap's check.
const NOT_CHECKED: &str = "not serving Raft yet: this node has not checked that its data dir was not wiped";

/// A running node.
pub struct Node {
    pub id: u64,
    pub config: ValidConfig,
    pub raft: typ::Raft<State>,
    pub state: StateHandle<State>,
    pub proposer: Proposer,
    pub connections: Arc<Connections>,
    /// The addresses actually bound (a port 0 in the config becomes the real one).
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// When each host last heartbeat (used while this node leads).
    pub liveness: leader::Liveness,
    /// The runtime of this host's agent.
    pub runtime: Arc<dyn Runtime>,
    /// For proxying (logs, exec) to other nodes' HTTP APIs: with TLS, it presents this
    /// node's certificate and accepts only a node certificate of the cluster CA.
    pub http_client: reqwest::Client,
    /// What `/metrics` reports.
    pub metrics: metrics::Metrics,
    /// Mutual TLS between nodes and HTTPS on the API (`--tls-cert`…), if configured.
    pub tls: Option<Arc<crate::tls::NodeTls>>,
    /// The per-client request rate limit (`--rate-limit`), if any.
    pub rate_limiter: Option<limits::RateLimiter>,
    /// When this host was last in contact with a leader, caught up (for fencing).
    pub contact: Arc<crate::agent::Contact>,
    /// The term in which this node, as leader, has applied its read index (0: none):
    /// its replica is then as new as the cluster's.
    pub leader_ready: std::sync::atomic::AtomicU64,
    /// Whether this node serves Raft requests (see `bootstrap`).
    pub raft_open: tokio::sync::watch::Sender<bool>,
    /// Why Raft requests are refused now, if they are: not yet checked (`raft_open`),
    /// or the disk is not usable. Kept by [`Node::refresh_raft_gate`].
    raft_gate: tokio::sync::watch::Sender<Option<String>>,
    /// The data dir's disk (`disk`): free space, read-only, and what is wrong.
    pub disk: Arc<disk::Disk>,
    /// Set when the node cannot go on (a wiped data dir): why, for the process to exit.
    failed: tokio::sync::watch::Sender<Option<String>>,
    shutdown: CancellationToken,
    /// Stops the agent; cancelled before the servers so that instances stopping on
    /// exit can still report.
    agent_stop: CancellationToken,
    tasks: tokio::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    _lock: File,
}

/// With TLS, the node's `SIGHUP`s: registered before any server starts (from then on a
/// `SIGHUP` no longer ends the process). Without TLS none (a `SIGHUP` ends the
/// process, as it always did).
fn tls_hangups(node: &Node) -> Option<tokio::signal::unix::Signal> {
    use tokio::signal::unix::{signal, SignalKind};
    node.tls.as_ref()?;
    signal(SignalKind::hangup())
        .map_err(|e| tracing::warn!(error = %e, "cannot watch for SIGHUP: TLS files are reloaded only by a restart"))
        .ok()
}

/// Reads the node's TLS files again at every `SIGHUP` until shutdown
/// ([`crate::tls::NodeTls::reload`]).
async fn reload_tls_on_hangup(node: Arc<Node>, hangups: Option<tokio::signal::unix::Signal>) {
    let (Some(tls), Some(mut hangups)) = (node.tls.clone(), hangups) else { return };
    loop {
        tokio::select! {
            _ = node.stopping() => return,
            got = hangups.recv() => if got.is_none() { return },
        }
        match tls.reload() {
            Ok(not_after) => {
                node.metrics.tls_reloads.with_label_values(&["ok"]).inc();
                let expires = time::OffsetDateTime::from_unix_timestamp(not_after)
                    .map_or(not_after.to_string(), |t| t.to_string());
                tracing::info!(%expires, "SIGHUP: TLS files reloaded; new connections use them");
            }
            Err(e) => {
                node.metrics.tls_reloads.with_label_values(&["refused"]).inc();
                tracing::error!(error = %e, "SIGHUP: TLS files refused; the ones in use stay");
            }
        }
    }
}

/// `--snapshot-logs`: the fewest entries between two snapshots.
fn snapshot_min_entries(cfg: &ValidConfig) -> u64 {
    cfg.raft.snapshot_logs.unwrap_or(5000)
}

fn raft_config(cfg: &ValidConfig) -> Result<RaftConfig, StartError> {
    let snapshot_logs = snapshot_min_entries(cfg);
    RaftConfig {
        cluster_name: "berth".into(),
        heartbeat_interval: cfg.raft.heartbeat_ms.unwrap_or(DEFAULT_HEARTBEAT_MS),
        election_timeout_min: cfg.raft.election_timeout_min_ms.unwrap_or(DEFAULT_ELECTION_TIMEOUT_MS.0),
        election_timeout_max: cfg.raft.election_timeout_max_ms.unwrap_or(DEFAULT_ELECTION_TIMEOUT_MS.1),
        // berth asks for snapshots itself, weighing the log's bytes against the
        // state's (`snapshots`).
        snapshot_policy: SnapshotPolicy::Never,
        // Keep some log behind a snapshot so a briefly lagging follower catches up from
        // the log, not a whole snapshot; but less than the snapshot interval so that a
        // long-lost one does need the snapshot path (exercised by tests).
        max_in_snapshot_log_to_keep: (snapshot_logs / 2).min(1000),
        // `max_payload_entries` stays openraft's default (300 entries per AppendEntries):
        // a message is also cut to a byte budget (`berth_raft::network::APPEND_BUDGET_BYTES`), since one
        // scheduler plan can be tens of megabytes.
        // A node that was partitioned or restarted asks before it disrupts a leader.
        enable_pre_vote: Some(true),
        // Standard Raft: a restarted leader is elected anew. Required by the lazily
        // written commit pointer (see `berth_raft::LogStore::save_committed`).
        enable_leader_restore: Some(false),
        ..Default::default()
    }
    .validate()
    .map_err(|e| StartError::Raft(e.to_string()))
}

fn lock_data_dir(dir: &std::path::Path) -> Result<File, StartError> {
    let unusable = |reason: String| StartError::DataDir { path: dir.display().to_string(), reason };
    std::fs::create_dir_all(dir).map_err(|e| unusable(e.to_string()))?;
    let probe = dir.join(".write-test");
    std::fs::write(&probe, b"ok").map_err(|e| unusable(format!("not writable: {e}")))?;
    let _ = std::fs::remove_file(&probe);
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("LOCK"))
        .map_err(|e| unusable(e.to_string()))?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(std::fs::TryLockError::WouldBlock) => Err(StartError::Locked { path: dir.display().to_string() }),
        Err(std::fs::TryLockError::Error(e)) => Err(unusable(e.to_string())),
    }
}

async fn bind(addr: SocketAddr, what: &'static str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|e| bind_failed(addr, what, e))
}

fn bind_failed(addr: SocketAddr, what: &'static str, e: std::io::Error) -> StartError {
    let reason = if e.kind() == std::io::ErrorKind::AddrInUse { "the port is in use".into() } else { e.to_string() };
    StartError::Bind { addr, what, reason }
}

/// The interface of the default route (from /proc/net/route).
fn default_route_interface() -> Option<String> {
    let routes = std::fs::read_to_string("/proc/net/route").ok()?;
    routes.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 2 && f[1] == "00000000").then(|| f[0].to_string())
    })
}

/// CPUs and memory of this machine, for hosts that do not say.
fn detect_resources() -> (f64, u64) {
    let cpus = std::thread::available_parallelism().map(|n| n.get() as f64).unwrap_or(1.0);
    let mem_mb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb / 1024)
        .unwrap_or(1024);
    (cpus, mem_mb)
}

impl Node {
    /// Starts a node. Returns once it serves; the cluster may still be forming.
    pub async fn start(config: ValidConfig) -> Result<Arc<Node>, StartError> {
        let tls = match &config.tls {
            Some(files) => Some(Arc::new(crate::tls::NodeTls::load(files, config.id).map_err(StartError::Tls)?)),
            None => None,
        };
        let lock = lock_data_dir(&config.data_dir)?;
        let backend: kv::Backend = config
            .storage
            .parse()
            .map_err(|e: String| StartError::DataDir { path: config.data_dir.display().to_string(), reason: e })?;
        let store = kv::open(backend, &config.data_dir.join("raft"))
            .map_err(|e| StartError::DataDir { path: config.data_dir.display().to_string(), reason: e.to_string() })?;
        // Snapshots in a store of their own: writing one must not hold up the log.
        let snapshots = kv::open(backend, &config.data_dir.join("snapshot"))
            .map_err(|e| StartError::DataDir { path: config.data_dir.display().to_string(), reason: e.to_string() })?;
        let grpc_listener = bind(config.listen, "--listen, gRPC").await?;
        let http_listener = bind(config.http, "--http").await?;
        let consul_listener = match config.consul_listen {
            Some(addr) => Some(bind(addr, "--consul-listen").await?),
            None => None,
        };
        let dns_sockets = match config.dns_listen {
            Some(addr) => Some(dns::bind(addr).await.map_err(|e| bind_failed(addr, "--dns-listen", e))?),
            None => None,
        };
        let ipam_socket = match &config.docker_ipam_socket {
            Some(path) => Some(
                docker_ipam::bind(path)
                    .map_err(|e| StartError::BindSocket { path: path.display().to_string(), reason: e.to_string() })?,
            ),
            None => None,
        };
        let grpc_addr = grpc_listener.local_addr().map_err(|e| StartError::Raft(e.to_string()))?;
        let http_addr = http_listener.local_addr().map_err(|e| StartError::Raft(e.to_string()))?;

        let sm = SmStore::<State>::open_with_snapshots(snapshots, store.clone()).map_err(|e| StartError::DataDir {
            path: config.data_dir.display().to_string(),
            reason: format!("cannot restore the last snapshot: {e}"),
        })?;
        let state = sm.handle();
        let connections = Arc::new(match &tls {
            Some(t) => t.connections(),
            None => Connections::new(),
        });
        let http_client = match &tls {
            Some(t) => t.peer_http_client().map_err(StartError::Tls)?,
            None => reqwest::Client::new(),
        };
        let log_disk =
            berth_raft::log_disk::open::<berth_raft::TypeConfig<State>>(backend, &config.data_dir.join("raft"), store)
                .map_err(|e| StartError::DataDir {
                    path: config.data_dir.display().to_string(),
                    reason: e.to_string(),
                })?;
        let log = LogStore::on(log_disk).for_node(config.id);
        let appended = log.appended_bytes();
        let raft = typ::Raft::<State>::new(
            config.id,
            Arc::new(raft_config(&config)?),
            Network::new(config.id, connections.clone()),
            log,
            sm,
        )
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;
        // A node with Raft state serves Raft at once; one without waits for
        // `bootstrap` to check that it is new, not wiped.
        let initialized = raft.is_initialized().await.map_err(|e| StartError::Raft(e.to_string()))?;
        let (raft_open, _) = tokio::sync::watch::channel(initialized);
        // Closed from the first moment for a node that bootstrap has yet to check.
        let (raft_gate, _) = tokio::sync::watch::channel((!initialized).then(|| NOT_CHECKED.to_string()));
        let disk = Arc::new(disk::Disk::new(&config.data_dir, config.min_free_disk));

        let proposer = Proposer::new(config.id, raft.clone(), state.clone(), connections.clone(), disk.clone());
        let (runtime, macvlan_parent) =
            build_runtime(config.id, &config.data_dir, config.runtime, config.macvlan_parent.clone())?;
        // The fence guard: kills sticky-IP instances should this process die or freeze.
        let mut guard_args = vec![
            "--id".to_string(),
            config.id.to_string(),
            "--data-dir".into(),
            config.data_dir.display().to_string(),
            "--runtime".into(),
            config.runtime.to_string(),
        ];
        if let Some(p) = &macvlan_parent {
            guard_args.extend(["--macvlan-parent".to_string(), p.clone()]);
        }
        crate::agent::guard::spawn(&config.data_dir, &guard_args).map_err(|e| StartError::DataDir {
            path: config.data_dir.display().to_string(),
            reason: format!("cannot start the fence guard: {e}"),
        })?;
        let timing = crate::timing::HostTiming::new(config.host_deadline);
        let lease = crate::agent::guard::Lease::new(&config.data_dir, timing.fence_after());
        let rate_limiter = config.rate_limit.map(limits::RateLimiter::new);
        let node = Arc::new(Node {
            id: config.id,
            config,
            raft: raft.clone(),
            state,
            proposer,
            connections,
            grpc_addr,
            http_addr,
            liveness: Default::default(),
            runtime: runtime.clone(),
            http_client,
            metrics: Default::default(),
            rate_limiter,
            tls,
            contact: Arc::new(crate::agent::Contact::new(Some(lease))),
            leader_ready: Default::default(),
            raft_open,
            raft_gate,
            disk,
            failed: Default::default(),
            shutdown: CancellationToken::new(),
            agent_stop: CancellationToken::new(),
            tasks: Default::default(),
            _lock: lock,
        });

        let (reports_tx, reports_rx) = tokio::sync::mpsc::unbounded_channel();
        let hangups = tls_hangups(&node);
        let tasks = vec![
            tokio::spawn(grpc::serve(node.clone(), grpc_listener, node.shutdown.clone())),
            tokio::spawn(http::serve(node.clone(), http_listener, node.shutdown.clone())),
            match consul_listener {
                Some(l) => tokio::spawn(consul::serve(node.clone(), l, node.shutdown.clone())),
                None => tokio::spawn(async {}),
            },
            match ipam_socket {
                Some(l) => {
                    let path = node.config.docker_ipam_socket.clone().unwrap_or_default();
                    tokio::spawn(docker_ipam::serve(node.clone(), l, path, node.shutdown.clone()))
                }
                None => tokio::spawn(async {}),
            },
            match dns_sockets {
                Some((udp, tcp)) => tokio::spawn(dns::serve(node.clone(), udp, tcp, node.shutdown.clone())),
                None => tokio::spawn(async {}),
            },
            tokio::spawn(bootstrap::run(node.clone())),
            tokio::spawn(disk::run(node.clone())),
            tokio::spawn(register(node.clone())),
            tokio::spawn(leader::run(node.clone())),
            tokio::spawn(snapshots::run(node.clone(), appended, snapshot_min_entries(&node.config))),
            tokio::spawn(leader::heartbeat(node.clone())),
            tokio::spawn(metrics::watch_leader(node.clone())),
            tokio::spawn(reload_tls_on_hangup(node.clone(), hangups)),
            tokio::spawn(leader::report(node.clone(), reports_rx)),
            match macvlan_parent {
                Some(parent) => tokio::spawn(network::run(node.clone(), parent)),
                None => tokio::spawn(async {}),
            },
            // The agent is the last task: shutdown stops it first.
            tokio::spawn(
                Agent {
                    host: node.id,
                    runtime,
                    state: node.state.clone(),
                    reports: reports_tx,
                    stop_instances_on_exit: node.config.stop_instances_on_exit,
                    contact: node.contact.clone(),
                    timing: node.timing(),
                }
                .run(node.agent_stop.clone()),
            ),
        ];
        node.refresh_raft_gate();
        *node.tasks.lock().await = tasks;
        tracing::info!(id = node.id, grpc = %grpc_addr, http = %http_addr, "node started");
        Ok(node)
    }

    /// The base URL of another node's HTTP API at `http` (host:port): `https://` when
    /// the cluster runs TLS.
    pub fn peer_url(&self, http: &str) -> String {
        format!("{}://{http}", if self.tls.is_some() { "https" } else { "http" })
    }

    /// The Raft service for this node's gRPC server.
    pub fn raft_service(&self) -> berth_proto::raft::raft_server::RaftServer<RaftService<State>> {
        RaftService::with_gate(self.raft.clone(), Some(self.raft_gate()))
    }

    /// Why Raft requests are refused now, if they are (gRPC and replication links).
    pub fn raft_gate(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.raft_gate.subscribe()
    }

    /// Recomputes why Raft requests are refused (bootstrap's check, the disk); call
    /// after either changes.
    pub fn refresh_raft_gate(&self) {
        // Computed inside the channel's lock: two callers (bootstrap, the disk guard)
        // cannot interleave read and send and leave a stale reason last.
        self.raft_gate.send_if_modified(|r| {
            let reason = if !*self.raft_open.borrow() {
                Some(NOT_CHECKED.to_string())
            } else {
                self.disk.problem().map(|p| format!("{}: node {} cannot write its log: {}", p.code, self.id, p.message))
            };
            let changed = *r != reason;
            *r = reason;
            changed
        });
    }

    /// Marks the node as unable to go on; the process exits with `reason`.
    pub fn fail(&self, reason: String) {
        tracing::error!(%reason, "this node cannot go on");
        self.failed.send_replace(Some(reason));
    }

    /// Waits until the node [fails](Self::fail); returns why.
    pub async fn failed(&self) -> String {
        let mut rx = self.failed.subscribe();
        let reason = rx.wait_for(|f| f.is_some()).await.map(|f| f.clone());
        match reason {
            Ok(f) => f.unwrap_or_default(),
            Err(_) => std::future::pending().await,
        }
    }

    /// The canonical form of the peers list (what bootstrap compares between nodes).
    pub fn peers_canonical(&self) -> String {
        canonical_peers(&self.config.peers)
    }

    /// What this node announces about itself in the replicated state.
    pub fn info(&self) -> NodeInfo {
        let (cpus, mem_mb) = detect_resources();
        NodeInfo {
            id: self.id,
            grpc: self.config.peers.get(&self.id).cloned().unwrap_or_else(|| self.grpc_addr.to_string()),
            http: self.http_addr.to_string(),
            runtime: self.config.runtime.to_string(),
            cpus: self.config.cpus.unwrap_or(cpus),
            mem_mb: self.config.mem_mb.unwrap_or(mem_mb),
            labels: self.config.labels.clone(),
            host_deadline_ms: self.config.host_deadline.as_millis() as u64,
        }
    }

    /// This host's deadline, fence timeout and heartbeat interval (`--host-deadline-s`).
    pub fn timing(&self) -> crate::timing::HostTiming {
        crate::timing::HostTiming::new(self.config.host_deadline)
    }

    /// Resolves when shutdown has begun.
    pub async fn stopping(&self) {
        self.shutdown.cancelled().await
    }

    /// Stops the node: leadership is handed to the most up-to-date voter first (when
    /// this node leads), so the cluster does not wait out an election timeout.
    pub async fn shutdown(&self) {
        let mut tasks = std::mem::take(&mut *self.tasks.lock().await);
        // The agent goes first (it is the last task): instances it stops on exit can
        // still report through Raft.
        self.agent_stop.cancel();
        if let Some(agent) = tasks.pop() {
            let _ = tokio::time::timeout(Duration::from_secs(30), agent).await;
        }
        if self.config.stop_instances_on_exit {
            // Nothing left to guard. Otherwise the guard stays: the instances outlive
            // this process, and past the lease nobody else would fence them.
            crate::agent::guard::stop(&self.config.data_dir);
        }
        if self.raft.is_leader() {
            self.transfer_leadership("shutdown").await;
        }
        self.shutdown.cancel();
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(3), t).await;
        }
        tracing::info!(id = self.id, "node stopped");
    }

    /// Hands leadership to the most up-to-date other voter, waiting up to 1 s for it.
    pub(crate) async fn transfer_leadership(&self, why: &str) {
        let metrics = self.raft.metrics().borrow_watched().clone();
        let voters: Vec<u64> = metrics.membership_config.membership().voter_ids().filter(|v| *v != self.id).collect();
        let best = metrics.replication.as_ref().and_then(|r| {
            voters.iter().max_by_key(|v| r.get(v).and_then(|l| l.as_ref()).map(|l| l.index).unwrap_or(0)).copied()
        });
        let Some(to) = best else { return };
        tracing::info!(to, why, "transferring leadership");
        if self.raft.trigger().transfer_leader(to).await.is_err() {
            return;
        }
        let mut rx = self.raft.metrics();
        let moved = async {
            while rx.borrow_watched().current_leader == Some(self.id) {
                if rx.changed().await.is_err() {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), moved).await;
    }
}

/// The runtime of a host: processes, or containers and processes (`Dispatch`); with
/// the macvlan parent the docker runtime uses.
pub fn build_runtime(
    id: u64,
    data_dir: &std::path::Path,
    kind: berth_cluster_config::Runtime,
    macvlan_parent: Option<String>,
) -> Result<(Arc<dyn Runtime>, Option<String>), StartError> {
    let process_dir = data_dir.join("instances");
    match kind {
        berth_cluster_config::Runtime::Process => Ok((Arc::new(ProcessRuntime::new(process_dir, id)), None)),
        berth_cluster_config::Runtime::Docker => {
            let Some(parent) = macvlan_parent.or_else(default_route_interface) else {
                return Err(StartError::Runtime(
                    "no default route to take the macvlan parent from; give --macvlan-parent".into(),
                ));
            };
            let runtime = Dispatch {
                process: Arc::new(ProcessRuntime::new(process_dir.clone(), id)),
                docker: Arc::new(DockerRuntime::new(id, parent.clone())),
                process_dir,
            };
            Ok((Arc::new(runtime), Some(parent)))
        }
    }
}

/// `1=a:1,2=b:2` in id order.
pub fn canonical_peers(peers: &BTreeMap<u64, String>) -> String {
    peers.iter().map(|(id, a)| format!("{id}={a}")).collect::<Vec<_>>().join(",")
}

/// Keeps this node's registration in the replicated state current: announces its
/// addresses and resources once a leader exists, and again if the state ever differs.
async fn register(node: Arc<Node>) {
    let info = node.info();
    let mut applied = node.state.subscribe_changes();
    let request_id = format!("register-{}-{}", node.id, node.proposer.new_request_id());
    loop {
        let current = node.state.read().state.nodes.registered.get(&node.id).cloned();
        if current.as_ref() == Some(&info) {
            tokio::select! {
                _ = node.stopping() => return,
                _ = applied.changed() => continue,
            }
        }
        if node.state.read().state.nodes.retired.contains(&node.id) {
            tracing::error!(id = node.id, "this node id was removed from the cluster; it will not rejoin");
            return;
        }
        let result = tokio::select! {
            _ = node.stopping() => return,
            r = node.proposer.write(Command::RegisterNode(info.clone()), Some(request_id.clone())) => r,
        };
        match result {
            Ok(r) => match r.0 {
                Ok(_) => tracing::info!(id = node.id, http = %info.http, "registered"),
                Err(e) => {
                    tracing::error!(error = %e, "registration refused");
                    return;
                }
            },
            Err(e) => {
                tracing::debug!(error = %e, "registration not possible yet");
                tokio::select! {
                    _ = node.stopping() => return,
                    _ = tokio::time::sleep(Duration::from_millis(300)) => {}
                }
            }
        }
    }
}
