//! One task per instance placed on this host: start it, watch it, check its health,
//! restart it with backoff when it exits or stays unhealthy, stop it when asked — and
//! report every change for the placement epoch it acts on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::health::check_once;
use super::runtime::{Runtime, Task};
use crate::state::apps::{Health, InstanceState};
use crate::state::Report;

/// First restart delay; doubles up to [`MAX_BACKOFF`], and resets after a run of
/// [`STABLE_RUN`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
pub const STABLE_RUN: Duration = Duration::from_secs(60);

pub struct Supervisor {
    pub epoch: u64,
    /// None: keep running; Some(grace): stop, SIGKILL after `grace`.
    stop: watch::Sender<Option<Duration>>,
    grace: Duration,
    pub done: tokio::task::JoinHandle<()>,
}

impl Supervisor {
    /// Starts supervising `task`; `adopt` is the handle of an already running instance.
    pub fn spawn(
        rt: Arc<dyn Runtime>,
        host: u64,
        task: Task,
        adopt: Option<String>,
        reports: mpsc::UnboundedSender<Report>,
    ) -> Self {
        let (stop, stop_rx) = watch::channel(None);
        let epoch = task.epoch;
        let grace = Duration::from_secs(task.spec.stop_grace_s);
        let done = tokio::spawn(run(rt, host, task, adopt, stop_rx, reports));
        Supervisor { epoch, stop, grace, done }
    }

    /// Asks the instance to stop (SIGTERM, grace, SIGKILL) and the task to end.
    pub fn stop(&self) {
        let grace = self.grace;
        self.stop.send_if_modified(|s| {
            if s.is_none() {
                *s = Some(grace);
                true
            } else {
                false
            }
        });
    }

    /// Stops the instance at once (SIGKILL): fencing.
    pub fn kill(&self) {
        let _ = self.stop.send(Some(Duration::ZERO));
    }

    pub fn stopping(&self) -> bool {
        self.stop.borrow().is_some()
    }
}

struct Reporter {
    host: u64,
    task: Task,
    tx: mpsc::UnboundedSender<Report>,
    restarts: u32,
}

impl Reporter {
    fn send(&self, state: InstanceState, health: Health, message: Option<String>) {
        let _ = self.tx.send(Report {
            id: self.task.instance.clone(),
            host: self.host,
            epoch: self.task.epoch,
            state,
            health,
            message,
            restarts: self.restarts,
        });
    }
}

enum Outcome {
    Stop,
    Exited(String),
    Unhealthy(String),
}

/// Resolves once a stop was asked for.
async fn stopped(stop: &mut watch::Receiver<Option<Duration>>) {
    let _ = stop.wait_for(|s| s.is_some()).await.map(|_| ());
}

async fn sleep_or_stop(d: Duration, stop: &mut watch::Receiver<Option<Duration>>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = stopped(stop) => true,
    }
}

async fn run(
    rt: Arc<dyn Runtime>,
    host: u64,
    task: Task,
    mut adopt: Option<String>,
    mut stop: watch::Receiver<Option<Duration>>,
    tx: mpsc::UnboundedSender<Report>,
) {
    let mut r = Reporter { host, task: task.clone(), tx, restarts: 0 };
    let grace = Duration::from_secs(task.spec.stop_grace_s);
    let check = task.spec.health_check.clone();
    let mut backoff = FIRST_BACKOFF;
    loop {
        let stop_asked = stop.borrow().is_some();
        if stop_asked {
            r.send(InstanceState::Stopped, Health::Unknown, None);
            return;
        }
        let handle = match adopt.take() {
            Some(h) => h,
            None => {
                r.send(InstanceState::Starting, Health::Unknown, None);
                match rt.start(&task).await {
                    Ok(h) => h,
                    Err(e) => {
                        tracing::warn!(instance = %task.instance, error = %e, "start failed");
                        r.restarts += 1;
                        r.send(InstanceState::Failed, Health::Unknown, Some(e.to_string()));
                        if sleep_or_stop(backoff, &mut stop).await {
                            r.send(InstanceState::Stopped, Health::Unknown, None);
                            return;
                        }
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                }
            }
        };
        tracing::info!(instance = %task.instance, epoch = task.epoch, handle = %handle, "running");
        let started = Instant::now();
        r.send(InstanceState::Running, Health::Unknown, None);

        let mut health = Health::Unknown;
        let mut failures = 0u32;
        let mut next_check = check.as_ref().map(|c| tokio::time::Instant::now() + Duration::from_secs(c.grace_s));
        let outcome = loop {
            let check_at = next_check.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                exit = rt.wait(&handle) => break Outcome::Exited(exit.message),
                _ = stopped(&mut stop) => break Outcome::Stop,
                _ = tokio::time::sleep_until(check_at), if next_check.is_some() => {
                    let hc = check.as_ref().expect("next_check implies a check");
                    match check_once(&rt, &handle, &task, hc).await {
                        Ok(()) => {
                            failures = 0;
                            if health != Health::Healthy {
                                health = Health::Healthy;
                                r.send(InstanceState::Running, health, None);
                            }
                        }
                        Err(why) => {
                            failures += 1;
                            if failures >= hc.max_failures {
                                break Outcome::Unhealthy(format!("{failures} health checks failed, last: {why}"));
                            }
                        }
                    }
                    next_check = Some(tokio::time::Instant::now() + Duration::from_secs(hc.interval_s));
                }
            }
        };
        match outcome {
            Outcome::Stop => {
                r.send(InstanceState::Stopping, health, None);
                // The grace asked for: the spec's, or none when fencing.
                let grace = stop.borrow().unwrap_or(grace);
                if let Err(e) = rt.stop(&handle, grace).await {
                    tracing::warn!(instance = %task.instance, error = %e, "stop failed");
                }
                rt.remove(&task.instance, &handle).await;
                r.send(InstanceState::Stopped, Health::Unknown, None);
                return;
            }
            Outcome::Exited(msg) => {
                tracing::info!(instance = %task.instance, %msg, "instance exited; restarting");
                rt.remove(&task.instance, &handle).await;
                r.restarts += 1;
                r.send(InstanceState::Failed, Health::Unknown, Some(msg));
            }
            Outcome::Unhealthy(msg) => {
                tracing::info!(instance = %task.instance, %msg, "instance unhealthy; replacing");
                r.restarts += 1;
                r.send(InstanceState::Running, Health::Unhealthy, Some(msg));
                let _ = rt.stop(&handle, grace).await;
                rt.remove(&task.instance, &handle).await;
            }
        }
        if started.elapsed() >= STABLE_RUN {
            backoff = FIRST_BACKOFF;
        }
        if sleep_or_stop(backoff, &mut stop).await {
            r.send(InstanceState::Stopped, Health::Unknown, None);
            return;
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
