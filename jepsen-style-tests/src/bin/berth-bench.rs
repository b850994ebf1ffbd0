//! berth-bench: measured figures, side by side with an anchor, printed as one JSON
//! object per line (see `berth_jepsen::bench` and `docs/benchmarks.md`).
//!
//! `cargo build --release --bin berth && cargo run --release -p berth-jepsen --bin berth-bench -- SCENARIO [--vs etcd]`
//! (with `--features etcd-best` for the `etcd-best` row of `ipam --vs etcd`; it needs
//! `protoc`, Debian's `protobuf-compiler` and `libprotobuf-dev`).

use anyhow::{bail, Result};
use berth_jepsen::bench;
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "berth-bench")]
struct Args {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Anchor {
    Etcd,
}

#[derive(Subcommand)]
enum Scenario {
    /// IP allocations per second, latency and CPU per allocation (anchor: etcd).
    Ipam {
        /// Concurrent clients, comma separated; each count is one measured configuration.
        #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
        clients: Vec<usize>,
        /// Seconds per configuration.
        #[arg(long, default_value_t = 10.0)]
        secs: f64,
        /// Measure the anchor in the same run.
        #[arg(long)]
        vs: Option<Anchor>,
        /// At one client, also report where an allocation's time goes, step by step
        /// across the client, the leader and the faster follower (every process
        /// records timestamps: allocations run a few percent slower).
        #[arg(long)]
        stages: bool,
    },
    /// Leader kill -9, unavailability per kill (anchor: etcd); then elections while idle.
    Failover {
        #[arg(long, default_value_t = 30)]
        kills: usize,
        /// Then this many seconds without faults, counting elections (0: skip).
        #[arg(long, default_value_t = 0)]
        idle: u64,
        #[arg(long)]
        vs: Option<Anchor>,
        /// Extra flags for every berth node (e.g. `--election-timeout-ms=100-200`).
        #[arg(long, allow_hyphen_values = true)]
        berth_flag: Vec<String>,
    },
    /// kill -9 of a host running instances with sticky IPs: time until all run
    /// elsewhere with their IPs, p50/p99 beside the host deadline (goal: deadline + 3 s;
    /// 2 × deadline + 3 s when the host was the leader).
    Hostloss {
        /// Trials killing a follower host (at least 20 for the record).
        #[arg(long, default_value_t = 20)]
        trials: usize,
        /// Then trials killing the leader's host.
        #[arg(long, default_value_t = 20)]
        leader_trials: usize,
        /// The hosts' --host-deadline-s.
        #[arg(long, default_value_t = 10.0)]
        deadline_s: f64,
        /// Instances of the one app (spread over 3 hosts).
        #[arg(long, default_value_t = 6)]
        instances: u32,
    },
    /// The leader cut off from the other nodes (namespaces): how long each other host
    /// is out of contact with a leader, beside the fence timeout (half the deadline).
    Contact {
        #[arg(long, default_value_t = 20)]
        trials: usize,
        #[arg(long, default_value_t = 5)]
        nodes: u64,
        /// The hosts' --host-deadline-s.
        #[arg(long, default_value_t = 6.0)]
        deadline_s: f64,
    },
    /// Scheduler throughput: placements per second committed through Raft (anchor:
    /// Nomad's published C1M figure).
    Placement {
        /// Simulated hosts.
        #[arg(long, default_value_t = 5000)]
        hosts: u64,
        /// Instances of the one app.
        #[arg(long, default_value_t = 1_000_000)]
        instances: u32,
        /// Then measure the footprint of the placed state: snapshot time and size,
        /// restart-to-serving of a node from it.
        #[arg(long)]
        footprint: bool,
    },
    /// Deploys, scaling, IP allocations and reads at once on one cluster of simulated
    /// hosts: p50/p99/max per kind of operation.
    Mixed {
        #[arg(long, default_value_t = 100)]
        hosts: u64,
        /// Apps the deploy and scale clients change in turn.
        #[arg(long, default_value_t = 8)]
        apps: usize,
        #[arg(long, default_value_t = 16)]
        alloc_clients: usize,
        #[arg(long, default_value_t = 16)]
        read_clients: usize,
        #[arg(long, default_value_t = 20.0)]
        secs: f64,
    },
    /// What one scheduler round costs after one change to a big steady state, in
    /// process (goal: < 5 ms at 1M instances).
    Rounds {
        #[arg(long, default_value_t = 5000)]
        hosts: u64,
        #[arg(long, default_value_t = 1_000_000)]
        instances: u32,
        /// Rounds timed per kind of change.
        #[arg(long, default_value_t = 20)]
        times: usize,
    },
    /// Latency from PUT /v1/apps of a 1-instance app on a macvlan pool to the container
    /// running with its IP (anchor: `docker run` of the same image on the same network).
    Deploy {
        /// Deploys with each (at least 30 for the record).
        #[arg(long, default_value_t = 30)]
        runs: usize,
    },
}

fn main() -> Result<()> {
    let scenario = Args::parse().scenario;
    // `ipam --stages`: every process of the run records its marks into one directory
    // (`berth_raft::stages`); the variable is set here, before any thread exists, and
    // the nodes inherit it.
    let stages = match &scenario {
        Scenario::Ipam { stages: true, .. } => {
            let dir = tempfile::Builder::new().prefix("berth-stages").tempdir()?;
            std::env::set_var(berth_raft::stages::ENV, dir.path());
            Some(dir)
        }
        _ => None,
    };
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(berth_jepsen::interrupt::until_signalled(run(scenario, stages.as_ref().map(|d| d.path()))))
}

async fn run(scenario: Scenario, stages: Option<&std::path::Path>) -> Result<()> {
    match scenario {
        Scenario::Ipam { clients, secs, vs, stages: _ } => {
            if clients.is_empty() || clients.contains(&0) {
                bail!("--clients needs positive counts");
            }
            if stages.is_some() && !clients.contains(&1) {
                bail!("--stages follows one client's allocations: give --clients 1 (or a list with 1)");
            }
            bench::ipam::run(&clients, secs, vs == Some(Anchor::Etcd), stages).await
        }
        Scenario::Failover { kills, idle, vs, berth_flag } => {
            bench::failover::run(kills, idle, vs == Some(Anchor::Etcd), &berth_flag).await
        }
        Scenario::Placement { hosts, instances, footprint } => {
            let (mut cluster, beats) = bench::placement::run(hosts, instances).await?;
            let measured = if footprint { bench::placement::footprint(&mut cluster, instances).await } else { Ok(()) };
            beats.stop().await;
            measured
        }
        Scenario::Contact { trials, nodes, deadline_s } => {
            if trials == 0 || nodes < 3 {
                bail!("--trials needs at least one trial and --nodes at least 3");
            }
            bench::contact::run(trials, nodes, deadline_s).await
        }
        Scenario::Mixed { hosts, apps, alloc_clients, read_clients, secs } => {
            if hosts == 0 || apps == 0 || alloc_clients == 0 || read_clients == 0 || secs <= 0.0 {
                bail!("--hosts, --apps, --alloc-clients, --read-clients and --secs need positive values");
            }
            bench::mixed::run(hosts, apps, alloc_clients, read_clients, secs).await
        }
        Scenario::Rounds { hosts, instances, times } => {
            if hosts == 0 || instances == 0 || times == 0 {
                bail!("--hosts, --instances and --times need positive values");
            }
            if u64::from(instances) + 2 > 1 << 20 {
                bail!("--instances: at most {} fit the /12 pool", (1u64 << 20) - 2);
            }
            tokio::task::block_in_place(|| bench::rounds::run(hosts, instances, times))
        }
        Scenario::Deploy { runs } => bench::deploy::run(runs).await,
        Scenario::Hostloss { trials, leader_trials, deadline_s, instances } => {
            if trials + leader_trials == 0 || instances < 3 {
                bail!("--trials/--leader-trials need at least one trial and --instances at least 3");
            }
            bench::hostloss::run(trials, leader_trials, deadline_s, instances).await
        }
    }
}
