//! `berth cluster`.

use clap::{Args, Subcommand};
use serde_json::json;

use super::client::{CliError, Client};
use super::output::{print, Output};
use crate::server::ops::ClusterView;

#[derive(Debug, Args)]
pub struct ClusterArgs {
    #[command(subcommand)]
    action: Option<ClusterAction>,
    /// Read this node's local replica instead of a linearizable read.
    #[arg(long)]
    stale: bool,
}

#[derive(Debug, Subcommand)]
enum ClusterAction {
    /// Add a node as a learner (it must be running), or promote a learner with --voter.
    Add {
        /// The new node's id (never a removed node's id).
        id: u64,
        /// Its gRPC address, host:port.
        grpc: String,
        /// Make it a voter once it has caught up.
        #[arg(long)]
        voter: bool,
    },
    /// Remove a node from the cluster for good.
    Remove { id: u64 },
}

pub async fn run(client: &Client, output: Output, args: ClusterArgs) -> Result<(), CliError> {
    let view: ClusterView = match args.action {
        None => client.get(if args.stale { "/v1/cluster?stale=true" } else { "/v1/cluster" }).await?,
        Some(ClusterAction::Add { id, grpc, voter }) => {
            client.post("/v1/cluster/members", &json!({"id": id, "grpc": grpc, "voter": voter})).await?
        }
        Some(ClusterAction::Remove { id }) => {
            client.call(reqwest::Method::DELETE, &format!("/v1/cluster/members/{id}"), None).await?
        }
    };
    if output == Output::Table {
        match view.leader {
            Some(l) => println!("leader {l}, term {}", view.term),
            None => println!("no leader, term {}", view.term),
        }
    }
    let rows = view
        .members
        .iter()
        .map(|m| {
            vec![
                m.id.to_string(),
                if m.voter { "voter" } else { "learner" }.to_string(),
                m.grpc.clone(),
                m.http.clone().unwrap_or_else(|| "-".into()),
                if view.leader == Some(m.id) { "*" } else { "" }.to_string(),
            ]
        })
        .collect();
    print(output, &view, &["ID", "ROLE", "GRPC", "HTTP", "LEADER"], rows);
    Ok(())
}
