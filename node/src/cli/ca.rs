//! `berth ca`: the cluster CA and node certificates (`crate::tls`, docs/operations.md
//! "TLS"). Runs locally: it needs no node, only the CA's directory.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::client::CliError;

#[derive(Debug, Args)]
pub struct CaArgs {
    #[command(subcommand)]
    action: CaAction,
}

#[derive(Debug, Subcommand)]
enum CaAction {
    /// Make a new cluster CA: DIR/ca.pem (give it to every node as --tls-ca) and
    /// DIR/ca.key (keep it off the nodes). Refuses to replace an existing one.
    Init {
        /// Where the CA lives.
        #[arg(long, default_value = "berth-ca")]
        dir: PathBuf,
        /// How long the CA is valid, in days.
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// Issue node N's certificate and key (node-N.pem, node-N.key): --tls-cert and
    /// --tls-key of the node started with --id N.
    Issue {
        /// The node id the certificate is for.
        #[arg(long)]
        id: u64,
        /// Where the CA lives.
        #[arg(long, default_value = "berth-ca")]
        dir: PathBuf,
        /// A name or IP address clients use to reach this node's API (HTTPS checks
        /// it); repeat or separate with commas.
        #[arg(long = "host", value_delimiter = ',')]
        hosts: Vec<String>,
        /// Where to write the files (default: the CA's directory).
        #[arg(long)]
        out: Option<PathBuf>,
        /// How long the certificate is valid, in days.
        #[arg(long, default_value_t = 825)]
        days: u32,
        /// Replace the node's existing files.
        #[arg(long)]
        force: bool,
    },
}

pub fn run(args: CaArgs) -> Result<(), CliError> {
    match args.action {
        CaAction::Init { dir, days } => {
            let (cert, key) = crate::tls::init_ca(&dir, days).map_err(CliError::Other)?;
            println!("CA certificate: {}  (every node: --tls-ca; the CLI: --ca-cert)", cert.display());
            println!("CA key:         {}  (keep it off the nodes)", key.display());
        }
        CaAction::Issue { id, dir, hosts, out, days, force } => {
            let out = out.unwrap_or_else(|| dir.clone());
            let (cert, key) = crate::tls::issue(&dir, id, &hosts, days, &out, force).map_err(CliError::Other)?;
            println!("node {id} certificate: {}  (--tls-cert)", cert.display());
            println!("node {id} key:         {}  (--tls-key)", key.display());
        }
    }
    Ok(())
}
