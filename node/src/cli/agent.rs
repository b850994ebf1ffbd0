//! `berth agent`: run a node.

use std::path::PathBuf;
use std::process::ExitCode;

use berth_cluster_config::{LogFormat, NodeConfig, Peers, RaftTuning, Runtime};
use clap::Args;

use crate::server::Node;

/// Every flag also has a key in the `--config` file; flags win.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// This node's id: a positive integer, unique, never reused.
    #[arg(long)]
    id: Option<u64>,
    /// Directory for the Raft log and snapshots; reuse it to rejoin with all state.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// gRPC address (Raft and the gRPC API), e.g. 127.0.0.1:7401.
    #[arg(long)]
    listen: Option<String>,
    /// HTTP API address, e.g. 127.0.0.1:7481.
    #[arg(long)]
    http: Option<String>,
    /// Serve the Consul-compatible upstream feed (nginx-upsync-module, Consul clients)
    /// here, e.g. 127.0.0.1:8500 (default: off).
    #[arg(long)]
    consul_listen: Option<String>,
    /// Answer DNS for APP.berth and INSTANCE.APP.berth here, UDP and TCP, e.g.
    /// 127.0.0.1:8600 (default: off).
    #[arg(long)]
    dns_listen: Option<String>,
    /// Serve Docker's IPAM plugin protocol on this unix socket, normally
    /// /run/docker/plugins/berth.sock (then `docker network create --ipam-driver berth`
    /// allocates from berth's pools; default: off).
    #[arg(long)]
    docker_ipam_socket: Option<PathBuf>,
    /// The initial cluster, the same on every node: 1=host:port,2=host:port,...
    #[arg(long)]
    peers: Option<String>,
    /// How this host runs instances: docker or process.
    #[arg(long)]
    runtime: Option<Runtime>,
    /// Parent interface of macvlan networks (docker runtime).
    #[arg(long)]
    macvlan_parent: Option<String>,
    /// Storage backend: redb (default) or sled.
    #[arg(long)]
    storage: Option<String>,
    /// A host label for placement constraints, key=value (repeatable).
    #[arg(long = "label", value_parser = berth_cluster_config::parse_label)]
    labels: Vec<(String, String)>,
    /// CPUs this host offers (default: detected).
    #[arg(long)]
    cpus: Option<f64>,
    /// Memory this host offers, MiB (default: detected).
    #[arg(long)]
    mem_mb: Option<u64>,
    /// TOML file with any of the keys above (see cluster-config/examples/node.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Log format: text or json.
    #[arg(long)]
    log_format: Option<LogFormat>,
    /// The fewest Raft entries between two snapshots; a snapshot also waits until the
    /// log took in as many bytes as the last one had [default: 5000].
    #[arg(long)]
    snapshot_logs: Option<u64>,
    /// Raft heartbeat interval in ms.
    #[arg(long)]
    heartbeat_ms: Option<u64>,
    /// Raft election timeout range in ms, MIN-MAX (default 100-200).
    #[arg(long, value_parser = parse_range)]
    election_timeout_ms: Option<(u64, u64)>,
    /// Stop every instance when this agent exits (default: leave them running; the
    /// next agent adopts them).
    #[arg(long)]
    stop_instances_on_exit: bool,
    /// Seconds of silence after which this host is declared down and its instances move
    /// (default 10, at least 6); it fences its sticky-IP instances after half of it.
    #[arg(long)]
    host_deadline_s: Option<f64>,
    /// How many of the peers vote (1, 3, 5 or 7; default 3, or all when fewer): the
    /// first in id order; the rest replicate as learners.
    #[arg(long)]
    voters: Option<usize>,
    /// Seconds a voter must be dead before a healthy learner replaces it (default 30).
    #[arg(long)]
    autopilot_dead_after_s: Option<f64>,
    /// The most instances an app may ask for through this node (default and at most
    /// 1000000); set the same on every node.
    #[arg(long)]
    max_instances_per_app: Option<u32>,
    /// Once API tokens exist, reads need one too (by default only writes do).
    #[arg(long)]
    require_token_for_reads: bool,
    /// Requests per second each client (a token, else an address) may send to this
    /// node's HTTP API, bursts of twice that; beyond, 429 (default 0: no limit).
    #[arg(long, value_name = "PER_SECOND")]
    rate_limit: Option<f64>,
    /// Threads of the node's async runtime (default: one per CPU). Nodes sharing a
    /// host take their share (`berth dev` gives each CPUs / nodes, at least 1).
    #[arg(long, value_name = "N")]
    worker_threads: Option<usize>,
    /// This node's certificate (PEM, from `berth ca issue`). With --tls-key and
    /// --tls-ca: mutual TLS between nodes, HTTPS on the API.
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// The cluster CA's certificate (PEM): peers must present a certificate it signed.
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// Free space the data dir's filesystem must keep, in MiB (default 64): under it
    /// the node refuses writes and Raft (and hands leadership over) until space returns.
    #[arg(long, value_name = "MIB")]
    min_free_disk_mb: Option<u64>,
}

fn parse_range(s: &str) -> Result<(u64, u64), String> {
    let (a, b) = s.split_once('-').ok_or_else(|| format!("{s:?} is not MIN-MAX"))?;
    let a = a.trim().parse().map_err(|_| format!("{a:?} is not a number"))?;
    let b = b.trim().parse().map_err(|_| format!("{b:?} is not a number"))?;
    Ok((a, b))
}

impl AgentArgs {
    fn to_config(&self) -> NodeConfig {
        let raft = if self.snapshot_logs.is_some() || self.heartbeat_ms.is_some() || self.election_timeout_ms.is_some()
        {
            Some(RaftTuning {
                heartbeat_ms: self.heartbeat_ms,
                election_timeout_min_ms: self.election_timeout_ms.map(|r| r.0),
                election_timeout_max_ms: self.election_timeout_ms.map(|r| r.1),
                snapshot_logs: self.snapshot_logs,
            })
        } else {
            None
        };
        NodeConfig {
            id: self.id,
            data_dir: self.data_dir.clone(),
            listen: self.listen.clone(),
            http: self.http.clone(),
            consul_listen: self.consul_listen.clone(),
            dns_listen: self.dns_listen.clone(),
            docker_ipam_socket: self.docker_ipam_socket.clone(),
            peers: self.peers.clone().map(Peers::List),
            runtime: self.runtime,
            macvlan_parent: self.macvlan_parent.clone(),
            storage: self.storage.clone(),
            labels: if self.labels.is_empty() { None } else { Some(self.labels.iter().cloned().collect()) },
            cpus: self.cpus,
            mem_mb: self.mem_mb,
            log_format: self.log_format,
            raft,
            stop_instances_on_exit: self.stop_instances_on_exit.then_some(true),
            host_deadline_s: self.host_deadline_s,
            voters: self.voters,
            autopilot_dead_after_s: self.autopilot_dead_after_s,
            max_instances_per_app: self.max_instances_per_app,
            require_token_for_reads: self.require_token_for_reads.then_some(true),
            rate_limit: self.rate_limit,
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            tls_ca: self.tls_ca.clone(),
            min_free_disk_mb: self.min_free_disk_mb,
            worker_threads: self.worker_threads,
        }
    }
}

/// Sets up `tracing` on stderr. `RUST_LOG` overrides the default filter.
pub fn init_logging(format: LogFormat, id: u64) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,openraft=warn,sled=warn,h2=warn,tower=warn,hyper=warn"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    tracing::debug!(node = id, "logging initialized");
}

impl AgentArgs {
    /// The runtime's thread count the flag or the config file asks for (the runtime
    /// starts before the configuration is checked: a file that cannot be read or a
    /// count out of range leaves the default here, and `run` reports it).
    pub fn worker_threads(&self) -> Option<usize> {
        let n = match (self.worker_threads, &self.config) {
            (Some(n), _) => Some(n),
            (None, Some(path)) => NodeConfig::from_file(path).ok().and_then(|c| c.worker_threads),
            (None, None) => None,
        };
        n.filter(|n| (1..=berth_cluster_config::MAX_WORKER_THREADS).contains(n))
    }
}

pub async fn run(args: AgentArgs) -> ExitCode {
    let file = match &args.config {
        Some(path) => match NodeConfig::from_file(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("berth: {e}");
                return ExitCode::from(2);
            }
        },
        None => NodeConfig::default(),
    };
    let config = match file.merged_with(args.to_config()).validate() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("berth: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(config.log_format, config.id);
    let node = match Node::start(config).await {
        Ok(n) => n,
        Err(e) => {
            eprintln!("berth: {e}");
            return ExitCode::FAILURE;
        }
    };
    tokio::select! {
        _ = wait_for_signal() => {
            tracing::info!("signal received; shutting down");
            node.shutdown().await;
            ExitCode::SUCCESS
        }
        reason = node.failed() => {
            eprintln!("berth: {reason}");
            node.shutdown().await;
            ExitCode::FAILURE
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// `berth fence-guard`: what rebuilds the node's runtime, and whose lease to watch.
#[derive(Debug, Args)]
pub struct GuardArgs {
    #[arg(long)]
    id: u64,
    #[arg(long)]
    data_dir: PathBuf,
    #[arg(long)]
    runtime: Runtime,
    #[arg(long)]
    macvlan_parent: Option<String>,
    /// The agent process this guard backs up.
    #[arg(long)]
    agent_pid: i32,
}

pub async fn run_guard(args: GuardArgs) -> ExitCode {
    init_logging(LogFormat::Text, args.id);
    match crate::server::build_runtime(args.id, &args.data_dir, args.runtime, args.macvlan_parent) {
        Ok((runtime, _)) => {
            crate::agent::guard::run(runtime, &args.data_dir, args.agent_pid).await;
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("berth: fence guard: {e}");
            ExitCode::FAILURE
        }
    }
}
