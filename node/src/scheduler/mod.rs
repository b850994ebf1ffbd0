//! # The scheduler: business logic over an immutable view, returning a plan
//!
//! [`plan`] reads the committed state and decides, for every app: how many instances to
//! create or stop, which instances to upgrade in place during a rollout, and on which
//! host each unplaced instance goes. It performs no I/O and proposes nothing — the
//! leader's loop (`server::leader`) proposes the returned [`Plan`] as one command, and
//! apply re-checks each item (Nomad's scheduler/plan-applier split). That makes it
//! testable without Raft: the tests build a `State` and look at the plan.
//!
//! ## Placement
//!
//! A host is a candidate for an instance when it is up, runs the app's runtime
//! (`docker` for apps with an image, `process` otherwise), has the cpus and memory free
//! (reserved, never over-committed) and satisfies every constraint (Marathon's
//! operators: [`constraints`]). Among candidates, instances spread: the host with the
//! fewest instances of this app first, then the least loaded (cpu share), then the
//! lowest id. An instance no host can take stays pending, and the app says why.
//!
//! ## Rollouts
//!
//! A new version rolls over the instances **in place** — each keeps its id and sticky
//! IP — while at least `ceil(instances × min_healthy)` stay healthy. When no instance
//! can go down, up to `max_surge` extra instances of the new version are started first;
//! they are stopped (releasing their IPs) once every instance runs the new version and
//! is healthy. A surge instance is created only where it can be placed at once: one
//! that cannot (`hostname UNIQUE` on hosts that all run an instance, no free cpus)
//! would hold an IP and free nothing — Marathon's deadlock. Then the rollout goes on in
//! place as far as `min_healthy` allows, and when that allows nothing either, the
//! deployment records exactly why it is stuck (`Deployment::blocked`) until something
//! changes: a new version (say, a lower `min_healthy`), a rollback or cancel (which
//! relabel instances already running the target's spec, restarting nothing), a new
//! host, a scale. Scaling down stops the youngest instances first.
//!
//! The scheduler keeps no state of its own: a new leader plans from the replicated
//! state and so continues any rollout where the old one left it.

pub mod constraints;

use std::collections::{BTreeMap, BTreeSet};

use crate::state::apps::spec::parse_constraints;
use crate::state::apps::{App, Desired, Instance, InstanceState, Tally, Usage};
use crate::state::nodes::{HostState, NodeInfo};
use crate::state::{NewInstance, Plan, State};

/// Free resources and per-app counts while a plan is being built.
struct Hosts<'a> {
    /// Up hosts, by id.
    info: BTreeMap<u64, &'a NodeInfo>,
    /// Reserved, including what this plan already placed.
    used: BTreeMap<u64, Usage>,
}

impl<'a> Hosts<'a> {
    fn new(state: &'a State) -> Self {
        let info: BTreeMap<u64, &NodeInfo> = state
            .nodes
            .registered
            .iter()
            .filter(|(id, _)| state.nodes.state(**id) == HostState::Up)
            .map(|(id, i)| (*id, i))
            .collect();
        let used = info.keys().map(|h| (*h, state.apps.usage(*h))).collect();
        Hosts { info, used }
    }
}

/// Why hosts were turned down for one instance, for the app's pending reason.
#[derive(Default)]
struct Refusals {
    runtime: usize,
    cpus: usize,
    mem: usize,
    constraint: BTreeMap<String, usize>,
}

impl Refusals {
    fn explain(&self, app: &str, runtime: &str, cpus: f64, mem_mb: u64, hosts: usize) -> String {
        if hosts == 0 {
            return format!("no host is up to run {app}");
        }
        let mut parts = Vec::new();
        if self.runtime > 0 {
            parts.push(format!("{} host(s) do not run the {runtime} runtime", self.runtime));
        }
        if self.cpus > 0 {
            parts.push(format!("{} host(s) lack cpus (need {cpus})", self.cpus));
        }
        if self.mem > 0 {
            parts.push(format!("{} host(s) lack memory (need {mem_mb} MiB)", self.mem));
        }
        for (c, n) in &self.constraint {
            parts.push(format!("{n} host(s) fail constraint {c}"));
        }
        format!("no host can take an instance of {app}: {}", parts.join("; "))
    }
}

/// Chooses a host for one instance of `app`, or says why none fits. `counts` holds the
/// app's instances per host (updated on success).
fn choose_host(
    hosts: &mut Hosts<'_>,
    app: &App,
    constraints: &[constraints::Compiled],
    counts: &mut BTreeMap<u64, u32>,
) -> Result<u64, String> {
    let spec = app.spec();
    let runtime = spec.runtime();
    let need = Usage::of(spec.cpus, spec.mem_mb);
    let mut refusals = Refusals::default();
    let mut best: Option<(u32, f64, u64)> = None;
    for (id, info) in &hosts.info {
        if !info.runs(runtime) {
            refusals.runtime += 1;
            continue;
        }
        let used = hosts.used[id];
        if !used.cpus_fit(need, info.cpus) {
            refusals.cpus += 1;
            continue;
        }
        if !used.mem_fits(need, info.mem_mb) {
            refusals.mem += 1;
            continue;
        }
        if let Some(failed) = constraints.iter().find(|k| !k.allows(*id, info, &hosts.info, counts)) {
            *refusals.constraint.entry(failed.describe()).or_default() += 1;
            continue;
        }
        let key = (counts.get(id).copied().unwrap_or(0), used.cpus() / info.cpus.max(1e-9), *id);
        if best.is_none_or(|b| key.0 < b.0 || (key.0 == b.0 && (key.1 < b.1 || (key.1 == b.1 && key.2 < b.2)))) {
            best = Some(key);
        }
    }
    match best {
        Some((_, _, h)) => {
            *counts.entry(h).or_default() += 1;
            hosts.used.get_mut(&h).expect("candidate is up").add(need);
            Ok(h)
        }
        None => Err(refusals.explain(&app.id, runtime, spec.cpus, spec.mem_mb, hosts.info.len())),
    }
}

/// The hosts that can take one more instance of a constraint-free app, in the order
/// [`choose_host`] ranks them — fewest instances of the app, least loaded (cpu share),
/// lowest id — so placing is O(log hosts) instead of a scan of every host (what makes
/// a million placements on 5,000 hosts take seconds, not minutes). It picks exactly
/// what the scan would: within a plan resources only shrink, so a host that cannot
/// take an instance now cannot take a later one either, and is simply left out.
struct Ranked {
    /// (instances of the app, cpu share as ordered bits, host id). Shares are
    /// non-negative, and non-negative f64s order like their bit patterns.
    order: BTreeSet<(u32, u64, u64)>,
    /// What one instance of the app reserves.
    need: Usage,
}

impl Ranked {
    fn key(hosts: &Hosts<'_>, counts: &BTreeMap<u64, u32>, id: u64) -> (u32, u64, u64) {
        let share = hosts.used[&id].cpus() / hosts.info[&id].cpus.max(1e-9);
        (counts.get(&id).copied().unwrap_or(0), share.max(0.0).to_bits(), id)
    }

    fn fits(hosts: &Hosts<'_>, id: u64, need: Usage) -> bool {
        let info = hosts.info[&id];
        hosts.used[&id].fits(need, info.cpus, info.mem_mb)
    }

    fn new(hosts: &Hosts<'_>, app: &App, counts: &BTreeMap<u64, u32>) -> Ranked {
        let spec = app.spec();
        let need = Usage::of(spec.cpus, spec.mem_mb);
        let order = hosts
            .info
            .iter()
            .filter(|(id, info)| info.runs(spec.runtime()) && Self::fits(hosts, **id, need))
            .map(|(id, _)| Self::key(hosts, counts, *id))
            .collect();
        Ranked { order, need }
    }

    /// The best host, updated as taken; None when no host fits.
    fn take(&mut self, hosts: &mut Hosts<'_>, counts: &mut BTreeMap<u64, u32>) -> Option<u64> {
        let (_, _, id) = self.order.pop_first()?;
        *counts.entry(id).or_default() += 1;
        hosts.used.get_mut(&id).expect("ranked hosts are up").add(self.need);
        if Self::fits(hosts, id, self.need) {
            self.order.insert(Self::key(hosts, counts, id));
        }
        Some(id)
    }
}

/// Chooses a host for one instance: through `ranked` for apps without constraints
/// (built on first use), else by [`choose_host`]'s scan, which also explains a refusal.
fn pick(
    hosts: &mut Hosts<'_>,
    app: &App,
    constraints: &[constraints::Compiled],
    counts: &mut BTreeMap<u64, u32>,
    ranked: &mut Option<Ranked>,
) -> Result<u64, String> {
    if constraints.is_empty() {
        let r = ranked.get_or_insert_with(|| Ranked::new(hosts, app, counts));
        if let Some(h) = r.take(hosts, counts) {
            return Ok(h);
        }
    }
    choose_host(hosts, app, constraints, counts)
}

/// Computes what should change, from one view of the committed state.
pub fn plan(state: &State) -> Plan {
    plan_limited(state, usize::MAX, state.clock_ms)
}

/// Like [`plan`], placing at most `max` instances (new or moved); the rest waits for the
/// next round. Bounds both the work of one round and the size of one Raft entry.
/// `now_ms` (wall-clock ms, the leader's) decides when an app's `unreachable` wait for a
/// down host is over.
pub fn plan_limited(state: &State, max: usize, now_ms: u64) -> Plan {
    plan_with(state, max, now_ms, true)
}

/// [`plan_limited`]; with `steady` false every app takes the full pass — what every
/// round cost before the steady path: the tests check that both give the same plan,
/// and `berth-bench rounds` times both.
pub fn plan_with(state: &State, max: usize, now_ms: u64, steady: bool) -> Plan {
    let mut plan = Plan::default();
    let mut hosts = Hosts::new(state);
    for app in state.apps.apps.values() {
        plan_app(state, app, &mut hosts, &mut plan, max, now_ms, steady);
    }
    plan
}

/// Plans one app: the steady path when nothing of it waits on a rollout, a surge or a
/// troubled host (what it costs is what changed), else the full pass over its instances.
fn plan_app(state: &State, app: &App, hosts: &mut Hosts<'_>, plan: &mut Plan, max: usize, now_ms: u64, steady: bool) {
    let empty = Tally::default();
    let tally = state.apps.tally(&app.id).unwrap_or(&empty);
    let settled = steady
        && tally.surge == 0
        && tally.versions.keys().all(|v| *v == app.version)
        && !state.nodes.troubled().any(|h| tally.hosts.contains_key(&h));
    if settled {
        plan_steady(state, app, tally, hosts, plan, max);
    } else {
        plan_full(state, app, hosts, plan, max, now_ms);
    }
}

/// [`plan_full`] for an app whose instances desired running all run its current
/// version, none a surge, none on a host that is down or draining: no rollout, move or
/// eviction is possible, so what is left — scaling, placing instances that wait for a
/// host, finishing a deployment — is read off the app's [`Tally`] and the few
/// instances concerned, never a pass over all of them. The same plan as the full
/// pass (the scheduler's tests run both and compare).
fn plan_steady(state: &State, app: &App, tally: &Tally, hosts: &mut Hosts<'_>, plan: &mut Plan, max: usize) {
    let spec = app.spec();
    let want = u64::from(app.instances);
    let has_check = spec.health_check.is_some();
    let mut counts = tally.hosts.clone();
    // Scale down: the youngest go first.
    let excess = tally.live.saturating_sub(want) as usize;
    let stopping: Vec<&Instance> =
        state.apps.instances_of(&app.id).rev().filter(|i| i.desired == Desired::Run).take(excess).collect();
    let creates = want.saturating_sub(tally.live) as usize;
    let stopped_healthy = stopping.iter().filter(|i| i.is_healthy(has_check)).count() as u64;
    let ready = tally.healthy[usize::from(has_check)] - stopped_healthy == tally.live - stopping.len() as u64;
    if ready && creates == 0 {
        if let Some(d) = &app.deployment {
            plan.finished.push((app.id.clone(), d.id));
        }
    }
    for i in &stopping {
        uncount(&mut counts, i);
    }
    let stopping: BTreeSet<String> = stopping.iter().map(|i| i.id.clone()).collect();
    plan.stops.extend(stopping.iter().cloned());
    let unplaced: Vec<&Instance> = tally
        .unplaced
        .iter()
        .filter_map(|index| state.apps.instance_at(&app.id, *index))
        .filter(|i| !stopping.contains(&i.id))
        .collect();
    let compiled = compile(spec);
    let mut placing = Placing { app, compiled: &compiled, counts, ranked: None, max };
    let placed = placing.place(hosts, plan, &unplaced, &[], creates);
    conclude(app, plan, placed.reason, None);
}

/// Takes an instance out of its app's per-host counts.
fn uncount(counts: &mut BTreeMap<u64, u32>, i: &Instance) {
    if let Some(c) = i.host.and_then(|h| counts.get_mut(&h)) {
        *c = c.saturating_sub(1);
    }
}

/// One app's placements in a round.
struct Placing<'p> {
    app: &'p App,
    compiled: &'p [constraints::Compiled],
    /// The app's instances per host, as this plan leaves them.
    counts: BTreeMap<u64, u32>,
    ranked: Option<Ranked>,
    /// At most this many places and creates in the plan.
    max: usize,
}

/// What [`Placing::place`] did.
struct Placed<'i> {
    /// Why an instance found no host, if one did not.
    reason: Option<String>,
    /// The instances that found one.
    placed: BTreeSet<&'i str>,
    /// Of those, how many left a host (moves).
    moved: usize,
}

impl Placing<'_> {
    fn pick(&mut self, hosts: &mut Hosts<'_>) -> Result<u64, String> {
        pick(hosts, self.app, self.compiled, &mut self.counts, &mut self.ranked)
    }

    /// Places the instances without a host, then those leaving one (down past their
    /// app's wait, or draining), then creates `creates` new ones — a scale-up during a
    /// rollout is wanted for good, a surge only helps the rollout along, so it never
    /// takes the place a new instance needs (surges come after, in [`plan_full`]).
    fn place<'i>(
        &mut self,
        hosts: &mut Hosts<'_>,
        plan: &mut Plan,
        unplaced: &[&'i Instance],
        leaving: &[&'i Instance],
        creates: usize,
    ) -> Placed<'i> {
        let mut done = Placed { reason: None, placed: BTreeSet::new(), moved: 0 };
        for i in unplaced.iter().chain(leaving) {
            if plan.places.len() >= self.max {
                break;
            }
            match self.pick(hosts) {
                Ok(h) => {
                    if i.host.is_some() {
                        plan.moves.push(i.id.clone());
                        done.moved += 1;
                    }
                    plan.places.push((i.id.clone(), h));
                    done.placed.insert(i.id.as_str());
                }
                Err(r) => {
                    done.reason = Some(r);
                    break;
                }
            }
        }
        // A surge instance that lost its host and finds no other is of no use either.
        if done.reason.is_some() {
            plan.stops.extend(
                unplaced.iter().filter(|i| i.surge && !done.placed.contains(i.id.as_str())).map(|i| i.id.clone()),
            );
        }
        // Only what this round can take (a million-instance deploy creates `max` a round).
        let room = self.max.saturating_sub(plan.creates.len());
        for _ in 0..creates.min(room) {
            let mut n = NewInstance { app: self.app.id.clone(), version: self.app.version, host: None, surge: false };
            if done.reason.is_none() {
                match self.pick(hosts) {
                    Ok(h) => n.host = Some(h),
                    Err(r) => done.reason = Some(r),
                }
            }
            plan.creates.push(n);
        }
        done
    }
}

/// Records the app's verdict: why its deployment is stuck (`stuck`), or else why
/// instances wait for a host (`reason`), each only when it changed.
fn conclude(app: &App, plan: &mut Plan, mut reason: Option<String>, stuck: Option<String>) {
    match &app.deployment {
        Some(d) => {
            if stuck != d.blocked {
                plan.blocked.push((app.id.clone(), d.id, stuck));
            }
        }
        None => reason = reason.or(stuck),
    }
    if reason != app.pending_reason {
        plan.reasons.push((app.id.clone(), reason));
    }
}

/// Plans one app from a pass over all its instances.
fn plan_full(state: &State, app: &App, hosts: &mut Hosts<'_>, plan: &mut Plan, max: usize, now_ms: u64) {
    let spec = app.spec();
    let target = app.version;
    let want = app.instances as usize;
    let has_check = spec.health_check.is_some();
    let compiled = compile(spec);

    // In index order (oldest first), as the state keeps them.
    let live: Vec<&Instance> = state.apps.instances_of(&app.id).filter(|i| i.desired == Desired::Run).collect();
    let mut counts = state.apps.tally(&app.id).map(|t| t.hosts.clone()).unwrap_or_default();
    let (mut core, surge): (Vec<&Instance>, Vec<&Instance>) = live.iter().partition(|i| !i.surge);

    // Scale down: the youngest go first.
    let mut stopping: BTreeSet<String> = BTreeSet::new();
    while core.len() > want {
        let youngest = core.pop().expect("len > want >= 0");
        stopping.insert(youngest.id.clone());
    }
    let creates = want.saturating_sub(core.len());

    // Instances on a down host whose app waits (`unreachable`) stay out of everything
    // until their host returns or the wait is over; then they move.
    let down_since = |i: &Instance| i.host.and_then(|h| state.nodes.down_since.get(&h).copied());
    let wait = &spec.unreachable;
    // The leader's clock, never behind the replicated one.
    let now = now_ms.max(state.clock_ms);
    let due = |i: &Instance| {
        let gone = i.host.is_some_and(|h| state.nodes.is_gone(h, now));
        gone || down_since(i)
            .is_some_and(|at| wait.reschedule && now >= at.saturating_add(wait.reschedule_after_s * 1000))
    };
    let waiting = |i: &Instance| down_since(i).is_some();
    let on_draining = |i: &Instance| i.host.is_some_and(|h| state.nodes.state(h) == HostState::Draining);

    // Rollout, and moves off draining hosts: both replace a running instance.
    let old: Vec<&Instance> = core.iter().copied().filter(|i| i.version != target && !waiting(i)).collect();
    let leaving: Vec<&Instance> = core.iter().copied().filter(|i| i.version == target && on_draining(i)).collect();
    let healthy = live.iter().filter(|i| !stopping.contains(&i.id) && i.is_healthy(has_check)).count();
    let min_healthy = ((want as f64) * spec.upgrade.min_healthy).ceil() as usize;
    // Surge instances of a superseded version are of no use.
    for s in &surge {
        if s.version != target {
            stopping.insert(s.id.clone());
        }
    }
    let live_surge = surge.iter().filter(|s| s.version == target).count();
    let mut moving = 0;
    let mut surges_wanted = 0;
    let mut held = 0;
    let mut held_leaving = 0;
    let mut upgrades: Vec<&Instance> = Vec::new();
    let mut to_move: Vec<&Instance> = Vec::new();
    if !old.is_empty() || !leaving.is_empty() {
        // Instances of a version with the target's very spec (a rollback to what they
        // run, a cancelled rollout) only change their label: no restart, no cost —
        // unless the target is a restart, which replaces them all.
        let restart = app.version(target).is_some_and(|v| v.restart);
        let (same, old): (Vec<&Instance>, Vec<&Instance>) = old
            .iter()
            .partition(|i| !restart && app.version(i.version).is_some_and(|v| v.spec.same_but_instances(spec)));
        upgrades.extend(&same);
        // Instances that are not healthy anyway are replaced at no cost.
        let (sick_old, well_old): (Vec<&Instance>, Vec<&Instance>) = old.iter().partition(|i| !i.is_healthy(has_check));
        let (sick_leaving, well_leaving): (Vec<&Instance>, Vec<&Instance>) =
            leaving.iter().partition(|i| !i.is_healthy(has_check));
        upgrades.extend(&sick_old);
        to_move.extend(&sick_leaving);
        // Then as many as min_healthy allows: moves off draining hosts first, then
        // upgrades in place (same id, IP and host).
        let mut budget = healthy.saturating_sub(min_healthy);
        for i in well_leaving.iter().chain(&well_old) {
            if budget == 0 {
                held += 1;
                held_leaving += usize::from(i.version == target);
            } else if i.version == target {
                to_move.push(i);
                budget -= 1;
            } else {
                upgrades.push(i);
                budget -= 1;
            }
        }
        // The rest wait for surge instances, each placed now or not created at all: a
        // pending surge holds an IP and frees nothing.
        if held > 0 {
            surges_wanted = (spec.upgrade.max_surge as usize).saturating_sub(live_surge).min(held);
        }
    }
    for i in &upgrades {
        plan.upgrades.push((i.id.clone(), target));
    }
    moving += upgrades.len();
    let all_ready = core.iter().all(|i| i.is_healthy(has_check)) && creates == 0;
    if old.is_empty() && all_ready {
        if leaving.is_empty() {
            for s in &surge {
                stopping.insert(s.id.clone());
            }
        }
        if let Some(d) = &app.deployment {
            plan.finished.push((app.id.clone(), d.id));
        }
    }
    for i in stopping.iter().filter_map(|id| state.apps.instance(id)) {
        uncount(&mut counts, i);
    }
    plan.stops.extend(stopping.iter().cloned());

    let unplaced: Vec<&Instance> = live
        .iter()
        .copied()
        .filter(|i| i.host.is_none() && !stopping.contains(&i.id))
        .filter(|i| matches!(i.state, InstanceState::Pending | InstanceState::Lost))
        .collect();
    let leaving: Vec<&Instance> =
        live.iter().copied().filter(|i| due(i) && !stopping.contains(&i.id)).chain(to_move.iter().copied()).collect();
    let mut placing = Placing { app, compiled: &compiled, counts, ranked: None, max };
    let Placed { reason, placed, moved } = placing.place(hosts, plan, &unplaced, &leaving, creates);
    moving += moved;
    let mut surge_refused = None;
    for k in 0..surges_wanted {
        if plan.creates.len() >= max {
            break;
        }
        // A surge for an instance leaving a draining host is of use only if that
        // instance can still move once the surge runs: the host it will need is
        // reserved first (in this plan's bookkeeping), or there is no surge — under
        // `hostname UNIQUE` the surge would otherwise take the very host the move
        // needs and the drain would wait on it forever.
        let reserving = k < held_leaving;
        let room = if reserving { placing.pick(hosts).map(drop) } else { Ok(()) };
        match room.and_then(|()| placing.pick(hosts)) {
            Ok(h) => {
                plan.creates.push(NewInstance { app: app.id.clone(), version: target, host: Some(h), surge: true });
                moving += 1;
            }
            Err(r) => {
                let why = if reserving { " once a host is kept for the move off the draining host" } else { "" };
                surge_refused = Some(format!("{r}{why}"));
                break;
            }
        }
    }

    // A rollout (or a drain) is stuck when nothing of it moves this round and nothing
    // it started is still on its way to healthy: it says why, until it moves again.
    let on_the_way = !placed.is_empty()
        || live.iter().any(|i| {
            i.version == target
                && !stopping.contains(&i.id)
                && !i.is_healthy(has_check)
                && i.host.is_some()
                && !waiting(i)
        });
    let stuck = (held > 0 && moving == 0 && !on_the_way).then(|| {
        let surge_why = match &surge_refused {
            Some(r) => format!("no surge instance can be placed ({r})"),
            None if spec.upgrade.max_surge == 0 => "upgrade.max_surge 0 allows no surge instance".to_string(),
            None => format!("all {live_surge} surge instance(s) allowed by upgrade.max_surge are in use"),
        };
        let what = match &app.deployment {
            Some(_) if !old.is_empty() => {
                format!("rollout of {} to version {target} is stuck: {held} instance(s) run an older version", app.id)
            }
            _ => format!("moving {} off draining hosts is stuck: {held} instance(s) are still there", app.id),
        };
        format!(
            "{what}, upgrade.min_healthy {} keeps {min_healthy} of {want} healthy so none can be moved or replaced in place, \
             and {surge_why}; lower upgrade.min_healthy, make room for a surge, or roll back (berth rollback {})",
            spec.upgrade.min_healthy, app.id
        )
    });
    conclude(app, plan, reason, stuck);
}

/// An app's constraints, ready to test hosts against (the spec was validated).
fn compile(spec: &crate::state::apps::AppSpec) -> Vec<constraints::Compiled> {
    parse_constraints(&spec.constraints).unwrap_or_default().iter().map(constraints::Compiled::new).collect()
}

/// Whether some host other than `except` — up, not draining — could run `app` at all:
/// its runtime, and constraints that do not depend on where instances already are.
pub fn runs_anywhere_but(state: &State, app: &App, except: u64) -> bool {
    let spec = app.spec();
    let compiled = compile(spec);
    let up: BTreeMap<u64, &NodeInfo> = state
        .nodes
        .registered
        .iter()
        .filter(|(id, _)| **id != except && state.nodes.state(**id) == HostState::Up)
        .map(|(id, i)| (*id, i))
        .collect();
    let none = BTreeMap::new();
    up.iter().any(|(id, info)| info.runs(spec.runtime()) && compiled.iter().all(|k| k.allows(*id, info, &up, &none)))
}

#[cfg(test)]
pub(crate) mod tests;
