//! The command line. Its `///` docs are the help text.
//!
//! `berth agent` runs a node; `berth dev` runs a local cluster; every other command is
//! a client of the HTTP API on `--addr` (comma-separated node URLs, tried in order
//! until one answers).

mod agent;
mod apps;
mod ca;
mod client;
mod cluster;
mod dev;
mod events;
mod ipam;
mod output;
mod tokens;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use self::client::{CliError, Client};
pub use self::output::Output;

/// berth: a container cluster in one binary — Raft-replicated IP pools, apps and
/// placements, sticky LAN IPs.
#[derive(Debug, Parser)]
#[command(name = "berth", version, propagate_version = true)]
pub struct Cli {
    /// Node URLs to talk to, comma separated; the next one is tried when a node is down.
    #[arg(long, global = true, env = "BERTH_ADDR", value_delimiter = ',', default_value = "http://127.0.0.1:7481")]
    pub addr: Vec<String>,

    /// The cluster CA's certificate, to trust `https://` nodes (`berth ca init`).
    #[arg(long, global = true, env = "BERTH_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<std::path::PathBuf>,

    /// The API token, once the cluster has tokens (`berth token create`).
    #[arg(long, global = true, env = "BERTH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Output of listing commands: a table, or JSON.
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,

    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Run a berth node on this host.
    Agent(Box<agent::AgentArgs>),
    /// Run a local cluster (3 nodes on loopback by default) until Ctrl-C.
    Dev(dev::DevArgs),
    /// Show the cluster (leader, term, members), or change its membership.
    Cluster(cluster::ClusterArgs),
    /// IP pools and allocations.
    Ipam(ipam::IpamArgs),
    /// Create or update an app from a spec file (YAML or JSON).
    Deploy(apps::DeployArgs),
    /// List apps.
    Apps,
    /// List instances (of one app).
    Ps(apps::PsArgs),
    /// Set an app's number of instances.
    Scale(apps::ScaleArgs),
    /// Roll an app back to an earlier version (a new version with the old spec).
    Rollback(apps::RollbackArgs),
    /// Restart an app's instances, one rollout as its `upgrade` allows (same IPs).
    Restart(apps::RestartArgs),
    /// Show (and follow) the output of an app's instances, from any node.
    Logs(apps::LogsArgs),
    /// List hosts with their resources and state.
    Hosts,
    /// Drain a host: its instances move elsewhere (as min_healthy allows) and new work
    /// avoids it; `--undo` makes it eligible again.
    Drain(apps::DrainArgs),
    /// Run a command in an instance (its container, or beside its process), from any node.
    Exec(apps::ExecArgs),
    /// Follow the cluster's events (apps, rollouts, instances, hosts), from any node.
    Events(events::EventsArgs),
    /// API tokens: create (admin, deploy or read-only), list, revoke.
    Token(tokens::TokenArgs),
    /// The cluster CA and node certificates for mutual TLS (local; needs no node).
    Ca(ca::CaArgs),
    /// Print a shell completion script: `berth completions bash > /etc/bash_completion.d/berth`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// (Started by `berth agent`.) Kill this host's sticky-IP instances once the
    /// agent's fence lease expires.
    #[command(hide = true)]
    FenceGuard(agent::GuardArgs),
}

/// Parses the command line and runs the command. Errors are one line on stderr.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            // One clear line, not clap's usage block.
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or("invalid arguments").trim_start_matches("error: ");
            eprintln!("berth: {first} (see berth --help)");
            return ExitCode::from(2);
        }
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Cmd::Agent(args) = &cli.command {
        if let Some(n) = args.worker_threads() {
            builder.worker_threads(n);
        }
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berth: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> ExitCode {
    crate::tls::install_provider();
    let ca = match cli.ca_cert.as_deref().map(client::read_ca).transpose() {
        Ok(ca) => ca,
        Err(e) => {
            eprintln!("berth: {e}");
            return ExitCode::from(2);
        }
    };
    let client = Client::new(&cli.addr, cli.token.as_deref(), ca);
    let out = cli.output;
    let result = match cli.command {
        Cmd::Agent(args) => return agent::run(*args).await,
        Cmd::Dev(args) => return dev::run(args).await,
        Cmd::FenceGuard(args) => return agent::run_guard(args).await,
        Cmd::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "berth", &mut std::io::stdout());
            return ExitCode::SUCCESS;
        }
        Cmd::Cluster(args) => cluster::run(&client, out, args).await,
        Cmd::Ipam(args) => ipam::run(&client, out, args).await,
        Cmd::Deploy(args) => apps::deploy(&client, out, args).await,
        Cmd::Apps => apps::apps(&client, out).await,
        Cmd::Ps(args) => apps::ps(&client, out, args).await,
        Cmd::Scale(args) => apps::scale(&client, out, args).await,
        Cmd::Rollback(args) => apps::rollback(&client, out, args).await,
        Cmd::Restart(args) => apps::restart(&client, out, args).await,
        Cmd::Logs(args) => apps::logs(&client, args).await,
        Cmd::Hosts => apps::hosts(&client, out).await,
        Cmd::Drain(args) => apps::drain(&client, out, args).await,
        Cmd::Exec(args) => apps::exec(&client, args).await,
        Cmd::Events(args) => events::events(&client, out, args).await,
        Cmd::Token(args) => tokens::run(client, out, args).await,
        Cmd::Ca(args) => ca::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Exit(code)) => ExitCode::from(code),
        Err(e) => {
            eprintln!("berth: {e}");
            ExitCode::FAILURE
        }
    }
}
