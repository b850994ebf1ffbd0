//! `berth ipam`.

use clap::{Args, Subcommand};
use serde_json::json;

use super::client::{seg, CliError, Client};
use super::output::{print, Output};
use crate::state::ipam::{AllocationInfo, PoolInfo};

#[derive(Debug, Args)]
pub struct IpamArgs {
    #[command(subcommand)]
    action: IpamAction,
}

#[derive(Debug, Subcommand)]
enum IpamAction {
    /// List pools with their size and use.
    Pools,
    /// Create a pool.
    Create {
        /// Pool name (a DNS label).
        name: String,
        /// The subnet, e.g. 10.99.0.0/24.
        #[arg(long)]
        subnet: String,
        /// The gateway (never allocated).
        #[arg(long)]
        gateway: Option<String>,
        /// The part of the subnet to allocate from, e.g. 10.99.0.16/28.
        #[arg(long)]
        range: Option<String>,
    },
    /// Delete a pool that has no allocations.
    Delete { name: String },
    /// Allocate an address: the lowest free one, or --ip.
    Allocate {
        pool: String,
        /// Who holds the address (any text).
        #[arg(long, default_value = "cli")]
        owner: String,
        /// A specific address of the pool.
        #[arg(long)]
        ip: Option<String>,
    },
    /// Release an address.
    Release { pool: String, ip: String },
    /// List the allocations of a pool.
    Allocations { pool: String },
}

fn pool_rows(pools: &[PoolInfo]) -> Vec<Vec<String>> {
    pools
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                p.subnet.clone(),
                p.gateway.clone().unwrap_or_else(|| "-".into()),
                p.range.clone().unwrap_or_else(|| "-".into()),
                p.size.to_string(),
                p.used.to_string(),
            ]
        })
        .collect()
}

const POOL_HEADER: [&str; 6] = ["NAME", "SUBNET", "GATEWAY", "RANGE", "SIZE", "USED"];

pub async fn run(client: &Client, output: Output, args: IpamArgs) -> Result<(), CliError> {
    match args.action {
        IpamAction::Pools => {
            let pools: Vec<PoolInfo> = client.get("/v1/ipam/pools").await?;
            print(output, &pools, &POOL_HEADER, pool_rows(&pools));
        }
        IpamAction::Create { name, subnet, gateway, range } => {
            let pool: PoolInfo = client
                .post("/v1/ipam/pools", &json!({"name": name, "subnet": subnet, "gateway": gateway, "range": range}))
                .await?;
            print(output, &pool, &POOL_HEADER, pool_rows(std::slice::from_ref(&pool)));
        }
        IpamAction::Delete { name } => client.delete(&format!("/v1/ipam/pools/{}", seg(&name))).await?,
        IpamAction::Allocate { pool, owner, ip } => {
            let a: AllocationInfo = client
                .post(&format!("/v1/ipam/pools/{}/allocations", seg(&pool)), &json!({"owner": owner, "ip": ip}))
                .await?;
            match output {
                Output::Table => println!("{}", a.ip),
                Output::Json => print(output, &a, &[], vec![]),
            }
        }
        IpamAction::Release { pool, ip } => {
            client.delete(&format!("/v1/ipam/pools/{}/allocations/{}", seg(&pool), seg(&ip))).await?
        }
        IpamAction::Allocations { pool } => {
            let list: Vec<AllocationInfo> = client.get(&format!("/v1/ipam/pools/{}/allocations", seg(&pool))).await?;
            let rows = list.iter().map(|a| vec![a.ip.clone(), a.owner.clone()]).collect();
            print(output, &list, &["IP", "OWNER"], rows);
        }
    }
    Ok(())
}
