//! `berth deploy`, `apps`, `ps`, `scale`, `rollback`, `logs`, `hosts`.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use futures::StreamExt;
use serde_json::json;

use super::client::{seg, CliError, Client};
use super::output::{print, Output};
use crate::server::workloads::{AppView, HostView, InstanceView};
use crate::state::apps::spec::AppSpec;

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// The app spec, YAML or JSON (`-` for standard input).
    #[arg(short = 'f', long = "file")]
    file: PathBuf,
    /// Wait for the rollout, showing its progress; exit non-zero if it fails.
    #[arg(long)]
    wait: bool,
    /// How long --wait waits, in seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

#[derive(Debug, Args)]
pub struct PsArgs {
    /// Only this app's instances.
    app: Option<String>,
}

#[derive(Debug, Args)]
pub struct ScaleArgs {
    app: String,
    instances: u32,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    app: String,
    /// The version to go back to (default: the one before the current).
    #[arg(long = "to")]
    to: Option<u64>,
}

#[derive(Debug, Args)]
pub struct RestartArgs {
    app: String,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// APP (every instance) or APP/INSTANCE (an index such as 2, or a full id).
    target: String,
    /// Keep streaming new output.
    #[arg(short = 'f', long)]
    follow: bool,
    /// Only the last N lines.
    #[arg(long)]
    tail: Option<usize>,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// APP/INSTANCE (an index such as 2, or a full id).
    target: String,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true)]
    cmd: Vec<String>,
}

/// `APP/INSTANCE` → the instance id.
fn instance_id(target: &str) -> Result<String, CliError> {
    match target.split_once('/') {
        Some((app, i)) if i.chars().all(|c| c.is_ascii_digit()) && !i.is_empty() => Ok(format!("{app}-{i}")),
        Some((_, i)) if !i.is_empty() => Ok(i.to_string()),
        _ => Err(CliError::Other(format!("{target:?} is not APP/INSTANCE"))),
    }
}

pub async fn exec(client: &Client, args: ExecArgs) -> Result<(), CliError> {
    let id = instance_id(&args.target)?;
    let out: crate::server::workloads::ExecOutput =
        client.post(&format!("/v1/instances/{}/exec", seg(&id)), &json!({"cmd": args.cmd})).await?;
    print!("{}", out.output);
    let _ = std::io::stdout().flush();
    match out.exit_code {
        0 => Ok(()),
        c => Err(CliError::Exit(u8::try_from(c).unwrap_or(1).max(1))),
    }
}

fn read_spec(path: &PathBuf) -> Result<AppSpec, CliError> {
    let text = if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).map_err(|e| CliError::Other(e.to_string()))?;
        s
    } else {
        std::fs::read_to_string(path).map_err(|e| CliError::Other(format!("cannot read {}: {e}", path.display())))?
    };
    let spec = AppSpec::from_yaml(&text).map_err(|e| CliError::Other(format!("{}: {e}", path.display())))?;
    spec.validate().map_err(|e| CliError::Other(format!("{}: {e}", path.display())))?;
    Ok(spec)
}

fn app_rows(apps: &[AppView]) -> Vec<Vec<String>> {
    apps.iter()
        .map(|a| {
            vec![
                a.id.clone(),
                a.version.to_string(),
                a.instances.to_string(),
                a.running.to_string(),
                a.healthy.to_string(),
                a.deployment
                    .as_ref()
                    .map(|d| {
                        let stuck = if d.blocked.is_some() { ", stuck" } else { "" };
                        format!(
                            "v{} → v{} ({}/{}{stuck})",
                            d.from_version.unwrap_or(0),
                            d.to_version,
                            d.updated,
                            d.total
                        )
                    })
                    .unwrap_or_else(|| "-".into()),
                a.deployment
                    .as_ref()
                    .and_then(|d| d.blocked.clone())
                    .or_else(|| a.pending_reason.clone())
                    .unwrap_or_default(),
            ]
        })
        .collect()
}

const APP_HEADER: [&str; 7] = ["ID", "VERSION", "INSTANCES", "RUNNING", "HEALTHY", "ROLLOUT", "WAITING ON"];

pub async fn deploy(client: &Client, output: Output, args: DeployArgs) -> Result<(), CliError> {
    let spec = read_spec(&args.file)?;
    let app: AppView = client
        .call(reqwest::Method::PUT, &format!("/v1/apps/{}", seg(&spec.id)), Some(&serde_json::to_value(&spec).unwrap()))
        .await?;
    if !args.wait {
        print(output, &app, &APP_HEADER, app_rows(std::slice::from_ref(&app)));
        return Ok(());
    }
    let version = app.version;
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let tty = std::io::stderr().is_terminal();
    let mut pending_since: Option<Instant> = None;
    let mut last_line = String::new();
    loop {
        let app: AppView = client.get(&format!("/v1/apps/{}", seg(&spec.id))).await?;
        let instances: Vec<InstanceView> = client.get(&format!("/v1/instances?app={}", seg(&spec.id))).await?;
        let updated = instances
            .iter()
            .filter(|i| {
                i.version == version
                    && i.health != crate::state::apps::Health::Unhealthy
                    && i.state == crate::state::apps::InstanceState::Running
            })
            .count();
        let want = app.instances as usize;
        let width = 30;
        let filled = (updated.min(want) * width).checked_div(want).unwrap_or(width);
        let line = format!(
            "{} [{}{}] {}/{} running v{} ({} healthy)",
            spec.id,
            "#".repeat(filled),
            ".".repeat(width - filled),
            updated.min(want),
            want,
            version,
            app.healthy
        );
        if tty {
            eprint!("\r{line}");
        } else if line != last_line {
            eprintln!("{line}");
        }
        last_line = line;
        if app.version != version {
            eprintln!();
            return Err(CliError::Other(format!("the app moved on to version {} during the rollout", app.version)));
        }
        if app.deployment.is_none() && app.healthy >= want && updated >= want {
            if tty {
                eprintln!();
            }
            print(output, &app, &APP_HEADER, app_rows(std::slice::from_ref(&app)));
            return Ok(());
        }
        let blocked = app.deployment.as_ref().and_then(|d| d.blocked.as_ref());
        if let Some(reason) = blocked.or(app.pending_reason.as_ref()) {
            let since = *pending_since.get_or_insert_with(Instant::now);
            if since.elapsed() > Duration::from_secs(15) {
                eprintln!();
                return Err(CliError::Other(match blocked {
                    Some(why) => why.clone(),
                    None => format!("the rollout is stuck: {reason}"),
                }));
            }
        } else {
            pending_since = None;
        }
        if let Some(bad) = instances
            .iter()
            .find(|i| i.version == version && i.restarts >= 3 && i.state != crate::state::apps::InstanceState::Running)
        {
            eprintln!();
            return Err(CliError::Other(format!(
                "instance {} keeps failing ({} restarts): {}",
                bad.id,
                bad.restarts,
                bad.message.clone().unwrap_or_default()
            )));
        }
        if Instant::now() > deadline {
            eprintln!();
            return Err(CliError::Other(format!("the rollout did not finish within {} s", args.timeout)));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub async fn apps(client: &Client, output: Output) -> Result<(), CliError> {
    let apps: Vec<AppView> = client.get("/v1/apps").await?;
    print(output, &apps, &APP_HEADER, app_rows(&apps));
    Ok(())
}

pub async fn ps(client: &Client, output: Output, args: PsArgs) -> Result<(), CliError> {
    let path = match &args.app {
        Some(a) => format!("/v1/instances?app={}", seg(a)),
        None => "/v1/instances".into(),
    };
    let list: Vec<InstanceView> = client.get(&path).await?;
    let rows = list
        .iter()
        .map(|i| {
            vec![
                i.id.clone(),
                format!("v{}", i.version),
                i.host.map(|h| h.to_string()).unwrap_or_else(|| "-".into()),
                i.ip.clone().unwrap_or_else(|| "-".into()),
                format!("{:?}", i.state).to_lowercase(),
                format!("{:?}", i.health).to_lowercase(),
                i.restarts.to_string(),
                i.message.clone().unwrap_or_default(),
            ]
        })
        .collect();
    print(output, &list, &["ID", "VERSION", "HOST", "IP", "STATE", "HEALTH", "RESTARTS", "MESSAGE"], rows);
    Ok(())
}

pub async fn scale(client: &Client, output: Output, args: ScaleArgs) -> Result<(), CliError> {
    let app: AppView =
        client.post(&format!("/v1/apps/{}/scale", seg(&args.app)), &json!({"instances": args.instances})).await?;
    print(output, &app, &APP_HEADER, app_rows(std::slice::from_ref(&app)));
    Ok(())
}

pub async fn rollback(client: &Client, output: Output, args: RollbackArgs) -> Result<(), CliError> {
    let body = match args.to {
        Some(v) => json!({"version": v}),
        None => json!({}),
    };
    let app: AppView = client.post(&format!("/v1/apps/{}/rollback", seg(&args.app)), &body).await?;
    print(output, &app, &APP_HEADER, app_rows(std::slice::from_ref(&app)));
    Ok(())
}

pub async fn restart(client: &Client, output: Output, args: RestartArgs) -> Result<(), CliError> {
    let app: AppView = client.post(&format!("/v1/apps/{}/restart", seg(&args.app)), &json!({})).await?;
    print(output, &app, &APP_HEADER, app_rows(std::slice::from_ref(&app)));
    Ok(())
}

fn host_rows(hosts: &[HostView]) -> Vec<Vec<String>> {
    hosts
        .iter()
        .map(|h| {
            vec![
                h.id.to_string(),
                format!("{:?}", h.state).to_lowercase(),
                h.runtime.clone(),
                format!("{}/{}", h.cpus_used, h.cpus),
                format!("{}/{}", h.mem_mb_used, h.mem_mb),
                h.instances.to_string(),
                h.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","),
            ]
        })
        .collect()
}

const HOST_HEADER: [&str; 7] = ["ID", "STATE", "RUNTIME", "CPUS", "MEM_MB", "INSTANCES", "LABELS"];

pub async fn hosts(client: &Client, output: Output) -> Result<(), CliError> {
    let hosts: Vec<HostView> = client.get("/v1/hosts").await?;
    print(output, &hosts, &HOST_HEADER, host_rows(&hosts));
    Ok(())
}

#[derive(Debug, Args)]
pub struct DrainArgs {
    /// The host (node id).
    host: u64,
    /// Make the host eligible again instead.
    #[arg(long)]
    undo: bool,
}

pub async fn drain(client: &Client, output: Output, args: DrainArgs) -> Result<(), CliError> {
    let action = if args.undo { "eligible" } else { "drain" };
    let host: HostView = client.post(&format!("/v1/hosts/{}/{action}", args.host), &json!({})).await?;
    print(output, &host, &HOST_HEADER, host_rows(std::slice::from_ref(&host)));
    Ok(())
}

pub async fn logs(client: &Client, args: LogsArgs) -> Result<(), CliError> {
    let (app, which) = match args.target.split_once('/') {
        Some((a, i)) => (a.to_string(), Some(i.to_string())),
        None => (args.target.clone(), None),
    };
    let ids: Vec<String> = match which {
        Some(i) if i.chars().all(|c| c.is_ascii_digit()) => vec![format!("{app}-{i}")],
        Some(i) => vec![i],
        None => {
            let list: Vec<InstanceView> = client.get(&format!("/v1/instances?app={}", seg(&app))).await?;
            let placed: Vec<String> = list.into_iter().filter(|i| i.host.is_some()).map(|i| i.id).collect();
            if placed.is_empty() {
                return Err(CliError::Other(format!("app {app} has no running instance")));
            }
            placed
        }
    };
    let mut query = vec![];
    if args.follow {
        query.push("follow=true".to_string());
    }
    if let Some(t) = args.tail {
        query.push(format!("tail={t}"));
    }
    let q = query.join("&");
    let prefix = ids.len() > 1;
    let mut streams = Vec::new();
    for id in &ids {
        let resp = client.stream(&format!("/v1/instances/{}/logs?{q}", seg(id))).await?;
        let tag = id.clone();
        streams.push(resp.bytes_stream().map(move |chunk| (tag.clone(), chunk)).boxed());
    }
    let mut all = futures::stream::select_all(streams);
    let mut out = std::io::stdout();
    let mut partial: std::collections::HashMap<String, Vec<u8>> = Default::default();
    while let Some((id, chunk)) = all.next().await {
        let chunk = chunk.map_err(|e| CliError::Other(format!("the log stream broke: {e}")))?;
        if !prefix {
            let _ = out.write_all(&chunk);
            let _ = out.flush();
            continue;
        }
        let buf = partial.entry(id.clone()).or_default();
        buf.extend_from_slice(&chunk);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let _ = write!(out, "[{id}] ");
            let _ = out.write_all(&line);
        }
        let _ = out.flush();
    }
    for (id, rest) in partial {
        if !rest.is_empty() {
            let _ = write!(out, "[{id}] ");
            let _ = out.write_all(&rest);
            let _ = writeln!(out);
        }
    }
    Ok(())
}
