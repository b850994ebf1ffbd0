//! # The host agent
//!
//! Every node runs one. It does not poll the leader: it watches its **local replica**
//! for instances placed on its host and converges the runtime to it — start what is
//! missing, stop what is no longer wanted here, replace what changed epoch — on every
//! applied change and once a second. What it observes goes back as reports (the
//! server's reporter proposes them through the leader).
//!
//! Side effects follow committed state only: the agent acts on what its replica has
//! applied, and every report carries the placement epoch it acted on, so a late report
//! from a host that lost an instance cannot overwrite its new placement.
//!
//! After an agent restart, instances still running are found through the runtime
//! ([`Runtime::existing`]) and adopted when their epoch is still the placed one —
//! nothing is started twice or restarted needlessly; strays are stopped.

pub mod dispatch;
pub mod docker;
pub mod guard;
pub mod health;
pub mod process;
pub mod runtime;
pub mod shim;
pub mod supervisor;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_raft::StateHandle;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use self::runtime::{Existing, Runtime, Task};
use self::supervisor::Supervisor;
use crate::state::apps::spec::AppSpec;
use crate::state::apps::{Desired, Health, Instance, InstanceState};
use crate::state::{Report, State};

/// The agent of one host.
pub struct Agent {
    pub host: u64,
    pub runtime: Arc<dyn Runtime>,
    pub state: StateHandle<State>,
    pub reports: mpsc::UnboundedSender<Report>,
    /// Stop every instance when the agent exits (`berth dev`); otherwise they keep
    /// running and the next agent adopts them.
    pub stop_instances_on_exit: bool,
    /// When this node last knew a leader with a quorum, caught up with it.
    pub contact: Arc<Contact>,
    /// When to fence: a host out of contact with a leader (one that has a quorum) for
    /// `timing.fence_after()` kills its instances that hold a sticky IP and starts
    /// none until contact is back. The leader marks a host down only after its
    /// deadline (twice as long) and only then places its instances — with the same
    /// IPs — elsewhere, so an address is never live on two hosts, even in a partition
    /// ("I am leader" is not a fencing token; field notes). The argument, with its
    /// margins, is in `crate::timing`.
    pub timing: crate::timing::HostTiming,
}

/// When this host was last **in contact**: a leader that a quorum follows answered it,
/// and its replica had applied that leader's commit index by then (for the leader
/// itself: a quorum acknowledged it, and it has applied its read index of the term).
///
/// The agent acts on its replica only while in contact. A replica that is behind — a
/// node that restarts (its commit pointer is written lazily, so it may start further
/// back than it was), or one whose partition just healed — could show an instance
/// here that was moved away meanwhile; starting it would put its IP live twice.
pub struct Contact {
    started: Instant,
    last: std::sync::Mutex<Option<Instant>>,
    /// Renewed with every contact, for the fence guard ([`guard`]).
    lease: Option<guard::Lease>,
}

impl Default for Contact {
    fn default() -> Self {
        Self::new(None)
    }
}

impl Contact {
    pub fn new(lease: Option<guard::Lease>) -> Self {
        Self { started: Instant::now(), last: std::sync::Mutex::new(None), lease }
    }

    /// Records contact as of `at` (never moves back), and renews the guard's lease.
    pub fn record(&self, at: Instant) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|l| at > l) {
            *last = Some(at);
            if let Some(lease) = &self.lease {
                lease.renew(at);
            }
        }
    }

    /// Whether there was contact since the node started.
    pub fn ever(&self) -> bool {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// How long since the last contact (since the start, if none yet).
    pub fn silent_for(&self) -> Duration {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).unwrap_or(self.started).elapsed()
    }
}

/// What the replica wants of one instance on this host.
struct Wanted {
    instance: Instance,
    task: Task,
}

pub fn task_for(state: &State, i: &Instance) -> Task {
    let spec =
        state.apps.apps.get(&i.app).and_then(|a| a.version(i.version)).map(|v| v.spec.clone()).unwrap_or_else(|| {
            AppSpec {
                // The app is gone (deleted); only the stop path needs this.
                id: i.app.clone(),
                image: None,
                cmd: Vec::new(),
                instances: 0,
                cpus: i.cpus,
                mem_mb: i.mem_mb,
                env: Default::default(),
                labels: Default::default(),
                network: None,
                port: None,
                health_check: None,
                constraints: Vec::new(),
                upgrade: Default::default(),
                unreachable: Default::default(),
                stop_grace_s: 10,
            }
        });
    let pool = i.pool.as_deref().and_then(|p| state.ipam.pool(p).ok());
    Task {
        instance: i.id.clone(),
        app: i.app.clone(),
        version: i.version,
        epoch: i.epoch,
        spec,
        ip: i.ip,
        pool: i.pool.clone(),
        subnet: pool.map(|p| p.subnet.to_string()),
        gateway: pool.and_then(|p| p.gateway),
    }
}

impl Agent {
    fn wanted(&self) -> Vec<Wanted> {
        let replica = self.state.read();
        let s = &replica.state;
        s.apps.on_host(self.host).map(|i| Wanted { instance: i.clone(), task: task_for(s, i) }).collect()
    }

    fn report_stopped(&self, i: &Instance) {
        let _ = self.reports.send(Report {
            id: i.id.clone(),
            host: self.host,
            epoch: i.epoch,
            state: InstanceState::Stopped,
            health: Health::Unknown,
            message: None,
            restarts: i.restarts,
        });
    }

    /// Kills the instances left running by an earlier agent that hold a sticky IP (or
    /// that the replica does not know): fencing before this node was ever in contact.
    async fn fence_adopted(&self, adoptable: &mut HashMap<String, Existing>) {
        let doomed: Vec<String> = {
            let replica = self.state.read();
            adoptable
                .keys()
                .filter(|id| replica.state.apps.instance(id).is_none_or(|i| i.ip.is_some()))
                .cloned()
                .collect()
        };
        for id in doomed {
            if let Some(e) = adoptable.remove(&id) {
                tracing::warn!(instance = %id, "fencing an instance left running: no leader contact since start");
                let _ = self.runtime.stop(&e.handle, Duration::ZERO).await;
                self.runtime.remove(&id, &e.handle).await;
            }
        }
    }

    /// Runs until `stop` is cancelled.
    pub async fn run(self, stop: CancellationToken) {
        let mut adoptable: HashMap<String, Existing> = match self.runtime.existing().await {
            Ok(list) => list.into_iter().map(|e| (e.instance.clone(), e)).collect(),
            Err(e) => {
                tracing::error!(error = %e, "cannot list running instances");
                HashMap::new()
            }
        };
        if !adoptable.is_empty() {
            tracing::info!(count = adoptable.len(), "found instances left running by an earlier agent");
        }
        let mut sups: HashMap<String, Supervisor> = HashMap::new();
        let mut stopped_reported: HashSet<(String, u64)> = HashSet::new();
        let mut applied = self.state.subscribe_changes();
        let mut first = true;
        let mut fenced = false;
        loop {
            let silent = self.contact.silent_for();
            let fence_after = self.timing.fence_after();
            if !fenced && silent > fence_after {
                tracing::warn!(
                    silent_ms = silent.as_millis() as u64,
                    "no leader contact: fencing (killing instances with sticky IPs)"
                );
                fenced = true;
            } else if fenced && silent < fence_after / 2 {
                tracing::warn!("leader contact restored: unfencing");
                fenced = false;
            }
            if !self.contact.ever() {
                // Not caught up with the cluster since this node started: what the
                // replica says may be stale, so nothing starts or stops on its word.
                // Instances left running keep running — unless contact does not come,
                // and then those with sticky IPs are fenced like any others.
                if fenced {
                    self.fence_adopted(&mut adoptable).await;
                }
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
                continue;
            }
            let wanted = self.wanted();
            let ids: HashSet<&str> = wanted.iter().map(|w| w.instance.id.as_str()).collect();
            for w in &wanted {
                let i = &w.instance;
                if fenced && i.ip.is_some() {
                    if let Some(s) = sups.get(&i.id) {
                        s.kill();
                    }
                    if let Some(e) = adoptable.remove(&i.id) {
                        let _ = self.runtime.stop(&e.handle, Duration::ZERO).await;
                        self.runtime.remove(&i.id, &e.handle).await;
                    }
                    continue;
                }
                let sup = sups.get(&i.id);
                match (i.desired, sup) {
                    (Desired::Stop, Some(s)) => s.stop(),
                    (Desired::Stop, None) => {
                        if let Some(e) = adoptable.remove(&i.id) {
                            let s = Supervisor::spawn(
                                self.runtime.clone(),
                                self.host,
                                w.task.clone(),
                                Some(e.handle),
                                self.reports.clone(),
                            );
                            s.stop();
                            sups.insert(i.id.clone(), s);
                        } else if stopped_reported.insert((i.id.clone(), i.epoch)) {
                            self.report_stopped(i);
                        }
                    }
                    (Desired::Run, Some(s)) if s.epoch == i.epoch && !s.stopping() => {}
                    (Desired::Run, Some(s)) => {
                        // A new epoch (upgrade) or a restart request: stop the old run
                        // first; the new one starts once it is gone.
                        s.stop();
                    }
                    (Desired::Run, None) => {
                        let adopt = match adoptable.remove(&i.id) {
                            Some(e) if e.epoch == i.epoch => Some(e.handle),
                            Some(e) => {
                                tracing::info!(instance = %i.id, old = e.epoch, new = i.epoch, "replacing an instance of an older placement");
                                let _ =
                                    self.runtime.stop(&e.handle, Duration::from_secs(w.task.spec.stop_grace_s)).await;
                                self.runtime.remove(&i.id, &e.handle).await;
                                None
                            }
                            None => None,
                        };
                        let s = Supervisor::spawn(
                            self.runtime.clone(),
                            self.host,
                            w.task.clone(),
                            adopt,
                            self.reports.clone(),
                        );
                        sups.insert(i.id.clone(), s);
                    }
                }
            }
            for (id, s) in &sups {
                if !ids.contains(id.as_str()) {
                    // Moved to another host, or removed.
                    s.stop();
                }
            }
            sups.retain(|_, s| !s.done.is_finished());
            if first {
                first = false;
                for (id, e) in adoptable.drain() {
                    tracing::info!(instance = %id, "stopping a stray instance no longer placed here");
                    let _ = self.runtime.stop(&e.handle, Duration::from_secs(10)).await;
                    self.runtime.remove(&id, &e.handle).await;
                }
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = applied.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
        if self.stop_instances_on_exit {
            for s in sups.values() {
                s.stop();
            }
            for (_, s) in sups {
                let _ = tokio::time::timeout(Duration::from_secs(15), s.done).await;
            }
        }
    }
}
