//! Applying the app commands. Each function is deterministic: time comes from
//! `State::clock_ms`, and every check uses only the replicated state.

use super::{AppSpec, Desired, Health, Instance, InstanceState, Usage};
use crate::state::command::{DomainError, NewInstance, Plan, Reply, Report, Response};
use crate::state::nodes::HostState;
use crate::state::State;

fn host_not_found(id: u64) -> DomainError {
    DomainError::not_found("host_not_found", format!("no host {id}"))
}

fn app_not_found(id: &str) -> DomainError {
    DomainError::not_found("app_not_found", format!("no app named {id:?}"))
}

/// What placing an instance of a version needs: (runtime, cpus, mem_mb).
fn needs(spec: &AppSpec) -> (&'static str, f64, u64) {
    (spec.runtime(), spec.cpus, spec.mem_mb)
}

impl State {
    /// Resources reserved on `host`: (cpus, mem_mb).
    pub fn host_usage(&self, host: u64) -> (f64, u64) {
        let u = self.apps.usage(host);
        (u.cpus(), u.mem_mb)
    }

    /// Whether `host` is up, runs `runtime` and can take `cpus`/`mem_mb` more.
    pub fn host_fits(&self, host: u64, runtime: &str, cpus: f64, mem_mb: u64) -> bool {
        let Some(info) = self.nodes.registered.get(&host) else {
            return false;
        };
        self.nodes.state(host) == HostState::Up
            && info.runs(runtime)
            && self.apps.usage(host).fits(Usage::of(cpus, mem_mb), info.cpus, info.mem_mb)
    }

    /// [`Command::CreateApp`]: [`Self::put_app`] for an app that does not exist yet.
    pub(crate) fn create_app(&mut self, spec: AppSpec) -> Response {
        if self.apps.apps.contains_key(&spec.id) {
            return Response(Err(DomainError::conflict("app_exists", format!("app {} already exists", spec.id))));
        }
        self.put_app(spec)
    }

    pub(crate) fn put_app(&mut self, spec: AppSpec) -> Response {
        if let Some(net) = &spec.network {
            if self.ipam.pool(&net.pool).is_err() {
                return Response(Err(DomainError::invalid(
                    "invalid_spec",
                    format!("network.pool: no pool named {:?}", net.pool),
                )));
            }
        }
        let id = spec.id.clone();
        let (version, created) = self.apps.put(spec, self.clock_ms);
        Response(Ok(Reply::App { id, version, created }))
    }

    pub(crate) fn scale_app(&mut self, id: &str, instances: u32) -> Response {
        let now = self.clock_ms;
        match self.apps.apps.get_mut(id) {
            None => Response(Err(app_not_found(id))),
            Some(app) => {
                app.instances = instances;
                app.updated_at = now;
                Response(Ok(Reply::App { id: id.to_string(), version: app.version, created: false }))
            }
        }
    }

    pub(crate) fn rollback_app(&mut self, id: &str, version: Option<u64>) -> Response {
        let Some(app) = self.apps.apps.get(id) else {
            return Response(Err(app_not_found(id)));
        };
        let target = match version {
            Some(v) => app.version(v).cloned().ok_or_else(|| {
                DomainError::not_found(
                    "version_not_found",
                    format!("app {id:?} has no version {v} (kept: the last {})", super::MAX_VERSIONS),
                )
            }),
            None => app.versions.iter().rev().find(|v| v.version < app.version).cloned().ok_or_else(|| {
                DomainError::conflict("no_previous_version", format!("app {id:?} has only one version"))
            }),
        };
        let target = match target {
            Ok(t) => t,
            Err(e) => return Response(Err(e)),
        };
        // Scaling is not versioned: a rollback restores the spec, not the count.
        let mut spec = target.spec;
        spec.instances = app.instances;
        if &spec == app.spec() || spec.same_but_instances(app.spec()) {
            return Response(Err(DomainError::conflict(
                "already_current",
                format!("version {} of {id:?} has the current spec", target.version),
            )));
        }
        self.put_app(spec)
    }

    pub(crate) fn restart_app(&mut self, id: &str) -> Response {
        match self.apps.restart(id, self.clock_ms) {
            Some(version) => Response(Ok(Reply::App { id: id.to_string(), version, created: false })),
            None => Response(Err(app_not_found(id))),
        }
    }

    pub(crate) fn delete_app(&mut self, id: &str) -> Response {
        if self.apps.apps.remove(id).is_none() {
            return Response(Err(app_not_found(id)));
        }
        let ids: Vec<String> = self.apps.instances_of(id).map(|i| i.id.clone()).collect();
        for i in ids {
            self.stop_instance(&i);
        }
        Response(Ok(Reply::Done))
    }

    pub(crate) fn cancel_deployment(&mut self, app: &str) -> Response {
        let Some(a) = self.apps.apps.get(app) else {
            return Response(Err(app_not_found(app)));
        };
        let Some(d) = a.deployment.clone() else {
            return Response(Err(DomainError::not_found(
                "deployment_not_found",
                format!("app {app:?} has no rollout in progress"),
            )));
        };
        match d.from {
            Some(from) => self.rollback_app(app, Some(from)),
            None => {
                Response(Err(DomainError::conflict("no_previous_version", "the rollout has no version to go back to")))
            }
        }
    }

    /// Asks an instance to stop; one that never ran, or whose host is down (and so
    /// fenced), is removed at once.
    fn stop_instance(&mut self, id: &str) {
        let now = self.clock_ms;
        let down = self
            .apps
            .instance(id)
            .and_then(|i| i.host)
            .is_some_and(|h| self.nodes.is_down(h) || self.nodes.is_gone(h, now));
        let placed = self.apps.update(id, |inst| {
            inst.desired = Desired::Stop;
            inst.updated_at = now;
            if inst.host.is_some() {
                inst.state = InstanceState::Stopping;
            }
            inst.host.is_some()
        });
        if placed == Some(false) || down {
            self.remove_instance(id);
        }
    }

    /// Takes an instance off a host that is down or draining, to be placed elsewhere
    /// with the same id and IP (a new epoch: the old host's copy is stale).
    fn evict(&mut self, id: &str) {
        let Some(host) = self.apps.instance(id).filter(|i| i.desired == Desired::Run).and_then(|i| i.host) else {
            return;
        };
        let now = self.clock_ms;
        let down = self.nodes.is_down(host) || self.nodes.is_gone(host, now);
        if !down && !self.nodes.draining.contains(&host) {
            return;
        }
        self.apps.update(id, |inst| {
            inst.host = None;
            inst.epoch += 1;
            inst.health = Health::Unknown;
            inst.updated_at = now;
            if down {
                inst.state = InstanceState::Lost;
            } else {
                inst.state = InstanceState::Pending;
                inst.message = Some(format!("moving off draining host {host}"));
            }
        });
    }

    /// Removes an instance and releases its sticky IP.
    fn remove_instance(&mut self, id: &str) {
        if let Some(inst) = self.apps.remove(id) {
            if let (Some(pool), Some(ip)) = (inst.pool, inst.ip) {
                let _ = self.ipam.release(&pool, ip);
            }
        }
    }

    /// Gives an instance its sticky IP if its app wants one and it has none yet.
    fn ensure_ip(&mut self, id: &str) -> Result<(), String> {
        let now = self.clock_ms;
        let Some(inst) = self.apps.instance(id) else {
            return Ok(());
        };
        if inst.ip.is_some() {
            return Ok(());
        }
        let pool = self
            .apps
            .apps
            .get(&inst.app)
            .and_then(|a| a.version(inst.version))
            .and_then(|v| v.spec.network.as_ref().map(|n| n.pool.clone()));
        let Some(pool) = pool else { return Ok(()) };
        let owner = format!("instance:{id}");
        let ip =
            self.ipam.pool_mut_for_apply(&pool).and_then(|p| p.allocate(&owner, None, now)).map_err(|e| e.message)?;
        self.apps.update(id, |inst| {
            inst.ip = Some(ip);
            inst.pool = Some(pool);
        });
        Ok(())
    }

    /// Places `id` on `host` if the host can take it now.
    fn place(&mut self, id: &str, host: u64) -> bool {
        let Some(inst) = self.apps.instance(id) else {
            return false;
        };
        if inst.host.is_some() || inst.desired != Desired::Run {
            return false;
        }
        let Some((runtime, cpus, mem_mb)) =
            self.apps.apps.get(&inst.app).and_then(|a| a.version(inst.version)).map(|v| needs(&v.spec))
        else {
            return false;
        };
        if !self.host_fits(host, runtime, cpus, mem_mb) {
            return false;
        }
        if let Err(reason) = self.ensure_ip(id) {
            self.apps.update(id, |i| i.message = Some(reason));
            return false;
        }
        let now = self.clock_ms;
        self.apps.update(id, |inst| {
            inst.host = Some(host);
            inst.epoch += 1;
            inst.state = InstanceState::Starting;
            inst.health = Health::Unknown;
            inst.cpus = cpus;
            inst.mem_mb = mem_mb;
            inst.message = None;
            inst.updated_at = now;
        });
        true
    }

    fn create(&mut self, n: &NewInstance) {
        let Some(app) = self.apps.apps.get(&n.app) else {
            return;
        };
        let Some((_, cpus, mem_mb)) = app.version(n.version).map(|v| needs(&v.spec)) else {
            return;
        };
        let (id, index) = self.apps.next_instance_id(&n.app);
        let now = self.clock_ms;
        self.apps.insert(Instance {
            id: id.clone(),
            app: n.app.clone(),
            index,
            version: n.version,
            host: None,
            ip: None,
            pool: None,
            state: InstanceState::Pending,
            health: Health::Unknown,
            desired: Desired::Run,
            epoch: 0,
            surge: n.surge,
            created_at: now,
            updated_at: now,
            message: None,
            restarts: 0,
            cpus,
            mem_mb,
        });
        match n.host {
            Some(h) => {
                self.place(&id, h);
            }
            None => {
                // Pending; the IP is taken now so the instance shows it from the start.
                if let Err(reason) = self.ensure_ip(&id) {
                    self.apps.update(&id, |i| i.message = Some(reason));
                }
            }
        }
    }

    fn upgrade(&mut self, id: &str, version: u64) {
        let Some(inst) = self.apps.instance(id) else {
            return;
        };
        if inst.desired != Desired::Run || inst.version == version {
            return;
        }
        let Some((spec, restart)) =
            self.apps.apps.get(&inst.app).and_then(|a| a.version(version)).map(|v| (v.spec.clone(), v.restart))
        else {
            return;
        };
        let now = self.clock_ms;
        let same = self
            .apps
            .apps
            .get(&inst.app)
            .and_then(|a| a.version(inst.version))
            .is_some_and(|v| v.spec.same_but_instances(&spec));
        if same && !restart {
            // The very spec it runs (a rollback, a cancelled rollout): a new label only.
            self.apps.update(id, |inst| {
                inst.version = version;
                inst.updated_at = now;
            });
            return;
        }
        let host = inst.host;
        // Detached, the instance reserves nothing; it goes back on its host if the new
        // spec fits there, else it moves (keeping its id and IP).
        self.apps.update(id, |inst| {
            inst.version = version;
            inst.epoch += 1;
            inst.health = Health::Unknown;
            inst.updated_at = now;
            inst.restarts = 0;
            inst.state = InstanceState::Pending;
            inst.cpus = spec.cpus;
            inst.mem_mb = spec.mem_mb;
            inst.host = None;
        });
        if let Some(h) = host {
            if self.host_fits(h, spec.runtime(), spec.cpus, spec.mem_mb) {
                self.apps.update(id, |inst| {
                    inst.host = Some(h);
                    inst.state = InstanceState::Starting;
                });
            }
        }
        // A new pool in the new version: the instance gets an address from it.
        let wants_pool = spec.network.as_ref().map(|n| n.pool.clone());
        let Some(inst) = self.apps.instance(id) else { return };
        if inst.pool != wants_pool {
            if let (Some(pool), Some(ip)) = (inst.pool.clone(), inst.ip) {
                let _ = self.ipam.release(&pool, ip);
            }
            self.apps.update(id, |inst| {
                inst.pool = None;
                inst.ip = None;
            });
            let _ = self.ensure_ip(id);
        }
    }

    pub(crate) fn apply_plan(&mut self, plan: Plan) -> Response {
        for id in &plan.removes {
            if let Some(i) = self.apps.instance(id) {
                // Only instances that hold nothing on a live host may go at once.
                let host_down = i.host.is_none_or(|h| self.nodes.is_down(h));
                if host_down {
                    self.remove_instance(id);
                }
            }
        }
        for id in &plan.stops {
            self.stop_instance(id);
        }
        for id in &plan.moves {
            self.evict(id);
        }
        for (id, v) in &plan.upgrades {
            self.upgrade(id, *v);
        }
        for (id, h) in &plan.places {
            self.place(id, *h);
        }
        for n in &plan.creates {
            self.create(n);
        }
        for (app, reason) in plan.reasons {
            if let Some(a) = self.apps.apps.get_mut(&app) {
                a.pending_reason = reason;
            }
        }
        for (app, deployment, why) in plan.blocked {
            if let Some(d) = self.apps.apps.get_mut(&app).and_then(|a| a.deployment.as_mut()) {
                if d.id == deployment {
                    d.blocked = why;
                }
            }
        }
        for (app, deployment) in plan.finished {
            if let Some(a) = self.apps.apps.get_mut(&app) {
                if a.deployment.as_ref().map(|d| d.id) == Some(deployment) {
                    a.deployment = None;
                }
            }
        }
        Response(Ok(Reply::Done))
    }

    pub(crate) fn report_instance(&mut self, r: Report) -> Response {
        let now = self.clock_ms;
        let Some(inst) = self.apps.instance(&r.id) else {
            return Response(Ok(Reply::Done));
        };
        if inst.epoch != r.epoch || inst.host != Some(r.host) {
            // A report about an older placement: the instance has moved on.
            return Response(Ok(Reply::Done));
        }
        if inst.desired == Desired::Stop && matches!(r.state, InstanceState::Stopped | InstanceState::Failed) {
            self.remove_instance(&r.id);
            return Response(Ok(Reply::Done));
        }
        let stopping = inst.desired == Desired::Stop && r.state != InstanceState::Stopped;
        self.apps.update(&r.id, |inst| {
            inst.health = r.health;
            inst.updated_at = now;
            if !stopping {
                // (Stopping ones keep showing `stopping` until the agent says it stopped.)
                inst.state = r.state;
                inst.message = r.message;
                inst.restarts = r.restarts;
            }
        });
        Response(Ok(Reply::Done))
    }

    pub(crate) fn set_host_state(&mut self, id: u64, state: HostState) -> Response {
        if !self.nodes.registered.contains_key(&id) {
            return Response(Err(host_not_found(id)));
        }
        let now = self.clock_ms;
        match state {
            HostState::Draining => return self.set_draining(id, true),
            HostState::Up => {
                self.nodes.states.insert(id, HostState::Up);
                self.nodes.down_since.remove(&id);
                // Instances that waited on their host: a new epoch re-confirms the
                // placement, so the agent (re)starts them as the replica now says.
                let waited: Vec<String> = self
                    .apps
                    .on_host(id)
                    .filter(|i| i.state == InstanceState::Lost && i.desired == Desired::Run)
                    .map(|i| i.id.clone())
                    .collect();
                for iid in waited {
                    self.apps.update(&iid, |inst| {
                        inst.epoch += 1;
                        inst.state = InstanceState::Starting;
                        inst.message = None;
                        inst.updated_at = now;
                    });
                }
            }
            HostState::Down => {
                if self.nodes.is_down(id) {
                    return Response(Ok(Reply::Done));
                }
                self.nodes.states.insert(id, HostState::Down);
                self.nodes.down_since.insert(id, now);
                let on_host: Vec<(String, bool, bool)> = self
                    .apps
                    .on_host(id)
                    .map(|i| {
                        let at_once = self
                            .apps
                            .apps
                            .get(&i.app)
                            .map(|a| a.spec().unreachable.clone())
                            .is_none_or(|u| u.reschedule && u.reschedule_after_s == 0);
                        (i.id.clone(), i.desired == Desired::Stop, at_once)
                    })
                    .collect();
                for (iid, stopped, at_once) in on_host {
                    if stopped {
                        self.remove_instance(&iid);
                    } else if at_once {
                        // Lost: the scheduler places it again, with the same id and IP.
                        self.evict(&iid);
                        self.apps.update(&iid, |inst| inst.message = Some(format!("host {id} went down")));
                    } else {
                        // Its app waits (`unreachable`): it stays on its host, lost.
                        self.apps.update(&iid, |inst| {
                            inst.state = InstanceState::Lost;
                            inst.health = Health::Unknown;
                            inst.message = Some(format!("host {id} went down"));
                            inst.updated_at = now;
                        });
                    }
                }
            }
        }
        Response(Ok(Reply::Done))
    }

    /// Removes node `id` for good. Its instances are `lost` and stay on it for its
    /// deadline — the node may still be running them until it noticed that it is no
    /// longer a member and fenced itself — then the scheduler moves them (whatever
    /// their app's `unreachable` policy: the host never comes back).
    pub(crate) fn retire_node(&mut self, id: u64) -> Response {
        let deadline = self.nodes.registered.get(&id).map(|i| i.host_deadline_ms).unwrap_or(10_000);
        let now = self.clock_ms;
        let r = self.nodes.retire(id);
        if r.0.is_err() {
            return r;
        }
        // Saturating: apply runs on every replica and must never overflow, whatever a
        // command's clock says (found by the `grpc` fuzz target, docs/fuzzing.md).
        self.nodes.down_since.insert(id, now.saturating_add(deadline));
        let on_host: Vec<String> = self.apps.on_host(id).map(|i| i.id.clone()).collect();
        for iid in on_host {
            self.apps.update(&iid, |inst| {
                inst.state = InstanceState::Lost;
                inst.health = Health::Unknown;
                inst.message = Some(format!("host {id} was removed from the cluster"));
                inst.updated_at = now;
            });
        }
        r
    }

    /// Drains host `id` (`draining`: it takes nothing new and its instances move
    /// elsewhere, as `min_healthy` allows) or makes it eligible again. Refused when
    /// some app running there has no other host that could run it at all.
    pub(crate) fn set_draining(&mut self, id: u64, draining: bool) -> Response {
        if !self.nodes.registered.contains_key(&id) {
            return Response(Err(host_not_found(id)));
        }
        if draining && !self.nodes.draining.contains(&id) {
            let apps: std::collections::BTreeSet<&str> = self.apps.on_host(id).map(|i| i.app.as_str()).collect();
            for app in apps {
                let Some(a) = self.apps.apps.get(app) else { continue };
                if !crate::scheduler::runs_anywhere_but(self, a, id) {
                    return Response(Err(DomainError::conflict(
                        "last_host",
                        format!(
                            "host {id} is the last host that can run {app:?} (runtime {}, constraints {:?}); \
                             draining it would leave the app nowhere to go",
                            a.spec().runtime(),
                            a.spec().constraints
                        ),
                    )));
                }
            }
        }
        if draining {
            self.nodes.draining.insert(id);
        } else {
            self.nodes.draining.remove(&id);
        }
        Response(Ok(Reply::Done))
    }
}
