//! `berth token`: API tokens (`docs/api.md`, "Tokens").

use clap::{Args, Subcommand};
use serde::Deserialize;
use serde_json::json;

use super::client::{seg, CliError, Client};
use super::output::{print, Output};

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    action: TokenAction,
}

#[derive(Debug, Subcommand)]
enum TokenAction {
    /// Create a token and print it (shown this once). The first one must be admin;
    /// from then on writes need a token.
    Create {
        /// admin (everything), deploy (apps, instances, allocations) or read-only.
        #[arg(long, value_parser = ["admin", "deploy", "read-only"])]
        role: String,
        /// What it is for (default: the role and its id).
        #[arg(long)]
        name: Option<String>,
        /// Print the token only (`export BERTH_TOKEN=$(berth token create --role deploy -q)`).
        #[arg(short, long)]
        quiet: bool,
    },
    /// List tokens (never their secrets).
    List,
    /// Revoke a token, by its id (or the whole token).
    Revoke { id: String },
    /// Show the token this command sends.
    Whoami,
}

#[derive(Debug, Deserialize, serde::Serialize)]
struct TokenView {
    id: String,
    name: String,
    role: String,
    created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token: Option<String>,
}

const HEADER: [&str; 4] = ["ID", "NAME", "ROLE", "CREATED"];

fn rows(list: &[TokenView]) -> Vec<Vec<String>> {
    list.iter().map(|t| vec![t.id.clone(), t.name.clone(), t.role.clone(), t.created_at.clone()]).collect()
}

pub async fn run(client: Client, output: Output, args: TokenArgs) -> Result<(), CliError> {
    match args.action {
        TokenAction::Create { role, name, quiet } => {
            // The secret is never stored, so a repeat could not answer it: no key.
            let client = client.without_idempotency_key();
            let t: TokenView = client.post("/v1/tokens", &json!({"role": role, "name": name})).await?;
            let secret = t.token.clone().unwrap_or_default();
            if quiet {
                println!("{secret}");
            } else if output == Output::Json {
                print(output, &t, &[], vec![]);
            } else {
                print(output, &t, &HEADER, rows(std::slice::from_ref(&t)));
                println!("\ntoken: {secret}");
                eprintln!("Keep it now: it is shown this once. Send it with --token or BERTH_TOKEN.");
            }
        }
        TokenAction::List => {
            let list: Vec<TokenView> = client.get("/v1/tokens").await?;
            print(output, &list, &HEADER, rows(&list));
        }
        TokenAction::Revoke { id } => {
            let t: TokenView = client.call(reqwest::Method::DELETE, &format!("/v1/tokens/{}", seg(&id)), None).await?;
            print(output, &t, &HEADER, rows(std::slice::from_ref(&t)));
        }
        TokenAction::Whoami => {
            let t: TokenView = client.get("/v1/tokens/self").await?;
            print(output, &t, &HEADER, rows(std::slice::from_ref(&t)));
        }
    }
    Ok(())
}
