//! `berth dev`: a whole local cluster in one command.
//!
//! Starts `--nodes` real `berth agent` processes on loopback (gRPC 127.0.0.1:7401..,
//! HTTP 127.0.0.1:7481..), each with its own data dir and log file under `--data-dir`,
//! waits until they elect a leader, prints where the API is, and on Ctrl-C stops them
//! with SIGTERM (leaders hand over first) and waits. Starting it again with the same
//! data dir brings back the same cluster with all its state.

use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use berth_cluster_config::Runtime;
use clap::Args;
use tokio::process::{Child, Command};

#[derive(Debug, Args)]
pub struct DevArgs {
    /// How many nodes (1 to 9).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=9))]
    nodes: u64,
    /// Where the nodes keep their data and logs.
    #[arg(long, default_value = ".berth-dev")]
    data_dir: PathBuf,
    /// Runtime of the nodes: docker when a Docker engine answers (its hosts run process
    /// apps too), else process.
    #[arg(long)]
    runtime: Option<Runtime>,
    /// Parent interface of the macvlan networks (docker runtime; default: the
    /// interface of the default route).
    #[arg(long)]
    macvlan_parent: Option<String>,
    /// Start from empty data dirs (deletes the previous dev cluster's state).
    #[arg(long)]
    fresh: bool,
    /// Mutual TLS between the nodes and HTTPS on the API, with a CA and certificates
    /// made in DATA_DIR/tls (kept across runs).
    #[arg(long)]
    tls: bool,
}

/// The dev cluster's CA and node certificates in `dir` (made when missing): the
/// agent flags of each node.
fn dev_tls(dir: &std::path::Path, ids: &[u64]) -> Result<Vec<Vec<String>>, String> {
    let (ca, _) = crate::tls::ca_files(dir);
    if !ca.exists() {
        crate::tls::init_ca(dir, 3650)?;
    }
    let mut flags = Vec::new();
    for &id in ids {
        let (cert, key) = crate::tls::node_files(dir, id);
        if !cert.exists() {
            crate::tls::issue(dir, id, &["127.0.0.1".into(), "localhost".into()], 825, dir, true)?;
        }
        let s = |p: &std::path::Path| p.display().to_string();
        flags.push(vec!["--tls-cert".into(), s(&cert), "--tls-key".into(), s(&key), "--tls-ca".into(), s(&ca)]);
    }
    Ok(flags)
}

fn kill(child: &Child, signal: i32) {
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) on a pid we spawned and still hold.
        unsafe {
            libc::kill(pid as i32, signal);
        }
    }
}

fn tail(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join("\n")
}

/// Whether a Docker engine answers on this machine.
async fn docker_answers() -> bool {
    let Ok(docker) = bollard::Docker::connect_with_local_defaults() else { return false };
    matches!(tokio::time::timeout(Duration::from_secs(2), docker.ping()).await, Ok(Ok(_)))
}

pub async fn run(args: DevArgs) -> ExitCode {
    let runtime = match args.runtime {
        Some(r) => r,
        None if docker_answers().await => Runtime::Docker,
        None => Runtime::Process,
    };
    if args.fresh && args.data_dir.exists() {
        if let Err(e) = std::fs::remove_dir_all(&args.data_dir) {
            eprintln!("berth: cannot remove {}: {e}", args.data_dir.display());
            return ExitCode::FAILURE;
        }
    }
    if let Err(e) = std::fs::create_dir_all(&args.data_dir) {
        eprintln!("berth: cannot create {}: {e}", args.data_dir.display());
        return ExitCode::FAILURE;
    }
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("berth: cannot find the berth binary: {e}");
            return ExitCode::FAILURE;
        }
    };
    let ids: Vec<u64> = (1..=args.nodes).collect();
    let tls_dir = args.data_dir.join("tls");
    let tls_flags = match args.tls.then(|| dev_tls(&tls_dir, &ids)).transpose() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("berth: {e}");
            return ExitCode::FAILURE;
        }
    };
    let scheme = if args.tls { "https" } else { "http" };
    let peers = ids.iter().map(|i| format!("{i}=127.0.0.1:{}", 7400 + i)).collect::<Vec<_>>().join(",");
    let mut children = Vec::new();
    println!("berth dev: {} node(s) on loopback, {} runtime, data in {}", args.nodes, runtime, args.data_dir.display());
    for &i in &ids {
        let log = args.data_dir.join(format!("node{i}.log"));
        let file = match std::fs::OpenOptions::new().create(true).append(true).open(&log) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("berth: cannot open {}: {e}", log.display());
                return ExitCode::FAILURE;
            }
        };
        let child = Command::new(&exe)
            .arg("agent")
            .args(["--id", &i.to_string()])
            .arg("--data-dir")
            .arg(args.data_dir.join(format!("node{i}")))
            .args(["--listen", &format!("127.0.0.1:{}", 7400 + i)])
            .args(["--http", &format!("127.0.0.1:{}", 7480 + i)])
            .args(["--peers", &peers])
            .args(["--runtime", &runtime.to_string()])
            .args(args.macvlan_parent.iter().flat_map(|p| ["--macvlan-parent".to_string(), p.clone()]))
            .arg("--stop-instances-on-exit")
            .args(["--worker-threads", &berth_cluster_config::worker_share(args.nodes).to_string()])
            .args(tls_flags.as_ref().map(|f| f[i as usize - 1].clone()).unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .kill_on_drop(true)
            .spawn();
        match child {
            Ok(c) => children.push((i, c, log)),
            Err(e) => {
                eprintln!("berth: cannot start node {i}: {e}");
                return ExitCode::FAILURE;
            }
        }
        println!(
            "  node {i}: HTTP {scheme}://127.0.0.1:{}  gRPC 127.0.0.1:{}  log {}",
            7480 + i,
            7400 + i,
            args.data_dir.join(format!("node{i}.log")).display()
        );
    }

    // Wait for a leader, watching for nodes that die at start (a port in use...).
    let ca_pem = crate::tls::ca_files(&tls_dir).0;
    let client = match args.tls {
        true => {
            let ca = std::fs::read(&ca_pem).ok().and_then(|p| reqwest::Certificate::from_pem(&p).ok());
            reqwest::Client::builder().add_root_certificate(ca.expect("the CA just made")).build().expect("a client")
        }
        false => reqwest::Client::new(),
    };
    let started = Instant::now();
    let mut announced = false;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).expect("SIGINT");
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM");
    // The terminal closing stops the cluster too (with TLS the nodes take a SIGHUP as
    // a reload: they would outlive this process).
    let mut sighup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).expect("SIGHUP");
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let code = loop {
        tokio::select! {
            _ = sigint.recv() => break ExitCode::SUCCESS,
            _ = sigterm.recv() => break ExitCode::SUCCESS,
            _ = sighup.recv() => break ExitCode::SUCCESS,
            _ = tick.tick() => {}
        }
        let mut dead = None;
        for (i, c, log) in children.iter_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                dead = Some((*i, status, log.clone()));
            }
        }
        if let Some((i, status, log)) = dead {
            eprintln!("berth: node {i} exited ({status}); the end of {}:\n{}", log.display(), tail(&log));
            break ExitCode::FAILURE;
        }
        if !announced {
            let url = format!("{scheme}://127.0.0.1:7481/v1/cluster?stale=true");
            if let Ok(r) = client.get(url).timeout(Duration::from_millis(500)).send().await {
                if let Ok(v) = r.json::<serde_json::Value>().await {
                    if let Some(leader) = v.get("leader").and_then(|l| l.as_u64()) {
                        println!(
                            "cluster ready in {} ms: leader is node {leader}\n\
                             API: {scheme}://127.0.0.1:7481 (any node serves it)   try: berth cluster\n\
                             Ctrl-C stops the cluster.",
                            started.elapsed().as_millis()
                        );
                        if args.tls {
                            println!(
                                "TLS: export BERTH_ADDR=https://127.0.0.1:7481 BERTH_CA_CERT={}",
                                ca_pem.canonicalize().unwrap_or(ca_pem.clone()).display()
                            );
                        }
                        announced = true;
                    }
                }
            }
        }
    };
    println!("stopping {} node(s)...", children.len());
    for (_, c, _) in &children {
        kill(c, libc::SIGTERM);
    }
    for (i, c, _) in children.iter_mut() {
        match tokio::time::timeout(Duration::from_secs(10), c.wait()).await {
            Ok(_) => {}
            Err(_) => {
                eprintln!("berth: node {i} did not stop in 10 s; killing it");
                kill(c, libc::SIGKILL);
                let _ = c.wait().await;
            }
        }
    }
    println!("stopped");
    code
}
