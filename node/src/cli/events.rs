//! `berth events`: the event stream (`GET /v1/events`), followed across reconnects and
//! nodes: after a dropped connection it resumes after the last event it printed.

use std::time::Duration;

use clap::Args;
use futures::StreamExt;
use serde_json::Value;

use super::client::{seg, CliError, Client};
use super::output::Output;

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only this app's events.
    #[arg(long)]
    app: Option<String>,
    /// Start after this event id (0: every event kept); default: from now.
    #[arg(long)]
    since: Option<u64>,
    /// Print the kept events (after --since, default all) and exit.
    #[arg(long)]
    no_follow: bool,
}

/// One event as a line: id, time, type, then its fields.
fn line(v: &Value) -> String {
    let fields: Vec<String> = v
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, x)| !matches!(k.as_str(), "id" | "index" | "at" | "type") && !x.is_null())
        .map(|(k, x)| format!("{k}={}", x.as_str().map_or_else(|| x.to_string(), str::to_string)))
        .collect();
    let s = |k: &str| v[k].as_str().map_or_else(|| v[k].to_string(), str::to_string);
    format!("{:>7}  {}  {:<22} {}", s("id"), s("at"), s("type"), fields.join(" "))
}

fn show(output: Output, v: &Value) {
    match output {
        Output::Json => println!("{v}"),
        Output::Table => println!("{}", line(v)),
    }
}

pub async fn events(client: &Client, output: Output, args: EventsArgs) -> Result<(), CliError> {
    let app = args.app.as_deref().map(|a| format!("&app={}", seg(a))).unwrap_or_default();
    if args.no_follow {
        let list: Vec<Value> =
            client.get(&format!("/v1/events?follow=false&since={}{app}", args.since.unwrap_or(0))).await?;
        for v in &list {
            show(output, v);
        }
        return Ok(());
    }
    let mut cursor = args.since;
    loop {
        let since = cursor.map(|c| format!("&since={c}")).unwrap_or_default();
        let resp = match client.stream(&format!("/v1/events?follow=true{since}{app}")).await {
            Ok(r) => r,
            Err(e @ CliError::Api { .. }) => return Err(e),
            Err(e) => {
                eprintln!("berth: {e}; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut body = resp.bytes_stream();
        let mut buf = String::new();
        while let Some(Ok(chunk)) = body.next().await {
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buf.find("\n\n") {
                let block: String = buf.drain(..end + 2).collect();
                let data: String =
                    block.lines().filter_map(|l| l.strip_prefix("data:")).map(str::trim).collect::<Vec<_>>().join("");
                let Ok(v) = serde_json::from_str::<Value>(&data) else { continue };
                if let Some(id) = v["id"].as_u64().or_else(|| v["oldest"].as_u64().map(|o| o - 1)) {
                    cursor = Some(id);
                }
                show(output, &v);
            }
        }
        eprintln!("berth: the event stream ended; resuming after event {}", cursor.unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
