//! Apps, their versions, their instances and rollouts, in the replicated state.
//!
//! - An **app** has a current spec version and a desired instance count. Every change
//!   of the spec is a new version (at least [`MAX_VERSIONS`] kept); scaling is not.
//! - An **instance** lives from its creation to its removal and keeps its id and its
//!   sticky IP the whole time: a restart, an upgrade to a new version (updated in
//!   place) or a move to another host all keep them. The IP is released only when the
//!   instance is removed (scale down, delete, or a surge instance after a rollout).
//! - Every change of where or what an instance runs bumps its **epoch**. Agents report
//!   with the epoch they acted on; a report for an older epoch is ignored, so a slow
//!   agent can never overwrite a newer placement (field notes: host side effects follow
//!   committed entries, checked with an assignment epoch).

pub mod apply;
pub mod spec;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

pub use self::spec::AppSpec;

/// Versions kept per app (the contract asks for at least 50).
pub const MAX_VERSIONS: usize = 100;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Version {
    pub version: u64,
    pub created_at: u64,
    pub spec: AppSpec,
    /// A restart: its rollout replaces instances of older versions even where they run
    /// this very spec (which otherwise are only relabelled).
    #[serde(default)]
    pub restart: bool,
}

/// A rollout from one version to another.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Deployment {
    pub id: u64,
    pub app: String,
    pub from: Option<u64>,
    pub to: u64,
    pub started_at: u64,
    /// Why the rollout cannot go on, when it cannot (the scheduler's verdict).
    pub blocked: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct App {
    pub id: String,
    /// The current version.
    pub version: u64,
    /// Desired number of instances.
    pub instances: u32,
    pub versions: VecDeque<Version>,
    pub created_at: u64,
    pub updated_at: u64,
    pub deployment: Option<Deployment>,
    /// Why some instances cannot be placed, from the scheduler's last plan.
    pub pending_reason: Option<String>,
}

impl App {
    pub fn spec(&self) -> &AppSpec {
        &self.current().spec
    }

    pub fn current(&self) -> &Version {
        self.versions.iter().rev().find(|v| v.version == self.version).expect("the current version is always kept")
    }

    pub fn version(&self, v: u64) -> Option<&Version> {
        self.versions.iter().find(|x| x.version == v)
    }

    /// A new version and its rollout (deployment `deployment`) from the current one.
    fn roll_to(&mut self, spec: AppSpec, at: u64, restart: bool, deployment: u64) -> u64 {
        let from = self.version;
        let to = self.push_version(spec, at, restart);
        self.deployment = Some(Deployment {
            id: deployment,
            app: self.id.clone(),
            from: Some(from),
            to,
            started_at: at,
            blocked: None,
        });
        to
    }

    fn push_version(&mut self, spec: AppSpec, at: u64, restart: bool) -> u64 {
        let version = self.versions.back().map(|v| v.version).unwrap_or(0) + 1;
        self.versions.push_back(Version { version, created_at: at, spec, restart });
        while self.versions.len() > MAX_VERSIONS {
            self.versions.pop_front();
        }
        self.version = version;
        self.updated_at = at;
        version
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum InstanceState {
    Pending,
    Starting,
    Running,
    Stopping,
    Stopped,
    Failed,
    Lost,
}

impl InstanceState {
    /// Every state, in declaration order (`ALL[s as usize] == s`).
    pub const ALL: [InstanceState; 7] = [
        InstanceState::Pending,
        InstanceState::Starting,
        InstanceState::Running,
        InstanceState::Stopping,
        InstanceState::Stopped,
        InstanceState::Failed,
        InstanceState::Lost,
    ];

    /// The name the API uses.
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Pending => "pending",
            InstanceState::Starting => "starting",
            InstanceState::Running => "running",
            InstanceState::Stopping => "stopping",
            InstanceState::Stopped => "stopped",
            InstanceState::Failed => "failed",
            InstanceState::Lost => "lost",
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Unknown,
    Healthy,
    Unhealthy,
}

/// What the cluster wants of an instance.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Desired {
    Run,
    Stop,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Instance {
    pub id: String,
    pub app: String,
    /// The n-th instance ever created for this app id (ids are never reused).
    pub index: u64,
    pub version: u64,
    pub host: Option<u64>,
    pub ip: Option<Ipv4Addr>,
    /// The pool `ip` came from.
    pub pool: Option<String>,
    pub state: InstanceState,
    pub health: Health,
    pub desired: Desired,
    pub epoch: u64,
    /// Created for a rollout beyond the desired count; removed when it is done.
    pub surge: bool,
    pub created_at: u64,
    pub updated_at: u64,
    pub message: Option<String>,
    pub restarts: u32,
    /// The cpus and memory reserved on `host` (from the spec it runs).
    pub cpus: f64,
    pub mem_mb: u64,
}

impl Instance {
    /// Running and, if the app has a health check, passing it.
    pub fn is_healthy(&self, has_check: bool) -> bool {
        self.desired == Desired::Run
            && self.state == InstanceState::Running
            && if has_check { self.health == Health::Healthy } else { self.health != Health::Unhealthy }
    }

    /// Whether the instance holds resources on its host.
    pub fn reserves(&self) -> bool {
        self.host.is_some() && !matches!(self.state, InstanceState::Stopped | InstanceState::Lost)
    }

    /// The host it holds resources on, and how much.
    fn reservation(&self) -> Option<(u64, Usage)> {
        let host = self.host.filter(|_| self.reserves())?;
        Some((host, Usage::of(self.cpus, self.mem_mb)))
    }

    /// What an `instance_changed` event shows, but the message.
    fn visible(&self) -> (Option<u64>, Option<Ipv4Addr>, u64, InstanceState, Health) {
        (self.host, self.ip, self.version, self.state, self.health)
    }

    /// What the derived indexes of [`Apps`] know of this instance.
    fn indexed(&self) -> Indexed {
        Indexed {
            host: self.host,
            reservation: self.reservation(),
            state: self.state,
            tallied: (self.desired == Desired::Run).then(|| Tallied {
                surge: self.surge,
                version: self.version,
                host: self.host,
                healthy: [self.is_healthy(false), self.is_healthy(true)],
                unplaced: self.host.is_none() && matches!(self.state, InstanceState::Pending | InstanceState::Lost),
            }),
        }
    }
}

/// An instance as the derived indexes see it.
#[derive(Clone, Copy, PartialEq)]
struct Indexed {
    host: Option<u64>,
    reservation: Option<(u64, Usage)>,
    state: InstanceState,
    /// What its app's [`Tally`] counts of it, if it is desired running.
    tallied: Option<Tallied>,
}

/// An instance desired running, as its app's [`Tally`] counts it.
#[derive(Clone, Copy, PartialEq)]
struct Tallied {
    surge: bool,
    version: u64,
    host: Option<u64>,
    /// [`Instance::is_healthy`] without and with a health check.
    healthy: [bool; 2],
    unplaced: bool,
}

/// A count one up (`add`) or down.
fn step<N: Copy + std::ops::Add<Output = N> + std::ops::Sub<Output = N> + From<u8>>(n: &mut N, add: bool) {
    *n = if add { *n + N::from(1) } else { *n - N::from(1) };
}

/// `map[key]` one up or down; a count down to zero leaves the map.
fn step_keyed<N>(map: &mut BTreeMap<u64, N>, key: u64, add: bool)
where
    N: Copy + Eq + Default + std::ops::Add<Output = N> + std::ops::Sub<Output = N> + From<u8>,
{
    let n = map.entry(key).or_default();
    step(n, add);
    if *n == N::default() {
        map.remove(&key);
    }
}

/// What the scheduler needs to know of one app's instances desired running, kept up to
/// date change by change (derived like `Apps::by_host`): a round over a settled app
/// of a million instances reads these counts instead of the instances, so it costs
/// what changed, not the app's size.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Tally {
    /// Instances desired running.
    pub live: u64,
    /// Of those, surge instances.
    pub surge: u64,
    /// Of those, per version.
    pub versions: BTreeMap<u64, u64>,
    /// Of those, per host they are placed on.
    pub hosts: BTreeMap<u64, u32>,
    /// Of those, healthy ([`Instance::is_healthy`]) for an app without (0) and with (1)
    /// a health check.
    pub healthy: [u64; 2],
    /// Of those, the indexes of the instances that wait for a host (pending or lost).
    pub unplaced: BTreeSet<u64>,
}

impl Tally {
    fn count(&mut self, index: u64, t: &Tallied, add: bool) {
        step(&mut self.live, add);
        if t.surge {
            step(&mut self.surge, add);
        }
        step_keyed(&mut self.versions, t.version, add);
        if let Some(h) = t.host {
            step_keyed(&mut self.hosts, h, add);
        }
        for (n, healthy) in self.healthy.iter_mut().zip(t.healthy) {
            if healthy {
                step(n, add);
            }
        }
        if t.unplaced {
            if add {
                self.unplaced.insert(index);
            } else {
                self.unplaced.remove(&index);
            }
        }
    }
}

/// Resources reserved on a host. Cpus are counted in integer millionths, so the sum
/// kept up to date change by change and the sum rebuilt from a snapshot are exactly
/// equal: with floating point, a replica restored from a snapshot (summing in another
/// order) could differ in the last bit from one that followed every entry, and judge
/// a placement at the boundary differently — replicas must never diverge.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub micro_cpus: u64,
    pub mem_mb: u64,
}

/// `cpus` in millionths (the unit every capacity check uses).
pub fn micro_cpus(cpus: f64) -> u64 {
    (cpus.max(0.0) * 1e6).round() as u64
}

impl Usage {
    pub fn of(cpus: f64, mem_mb: u64) -> Usage {
        Usage { micro_cpus: micro_cpus(cpus), mem_mb }
    }

    pub fn cpus(&self) -> f64 {
        self.micro_cpus as f64 / 1e6
    }

    /// Whether a host of `cpus`/`mem_mb` with this usage can take `need` more.
    pub fn fits(&self, need: Usage, cpus: f64, mem_mb: u64) -> bool {
        self.cpus_fit(need, cpus) && self.mem_fits(need, mem_mb)
    }

    pub fn cpus_fit(&self, need: Usage, cpus: f64) -> bool {
        self.micro_cpus.saturating_add(need.micro_cpus) <= micro_cpus(cpus)
    }

    pub fn mem_fits(&self, need: Usage, mem_mb: u64) -> bool {
        self.mem_mb.saturating_add(need.mem_mb) <= mem_mb
    }

    pub fn add(&mut self, u: Usage) {
        self.micro_cpus += u.micro_cpus;
        self.mem_mb += u.mem_mb;
    }

    fn sub(&mut self, u: Usage) {
        self.micro_cpus = self.micro_cpus.saturating_sub(u.micro_cpus);
        self.mem_mb = self.mem_mb.saturating_sub(u.mem_mb);
    }
}

/// Apps, instances and the counters that make instance ids unique forever.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Apps {
    /// Persistent maps here and below (apps, instances, `by_host`): the state's clone
    /// that a snapshot serializes is O(1) in their size.
    #[serde(deserialize_with = "crate::state::persistent::ord_map")]
    pub apps: imbl::OrdMap<String, App>,
    /// Every instance, by app id, then by its index (`web-12` is `["web"][12]`): a
    /// lookup compares the few app ids as strings, then integers, and an app's
    /// instances come in creation order without sorting — what a million instances
    /// need. Private: every change goes through [`Apps::insert`], [`Apps::update`]
    /// and [`Apps::remove`], which keep the derived indexes below exact.
    #[serde(deserialize_with = "crate::state::persistent::ord_map_of_ord_maps")]
    instances: imbl::OrdMap<String, imbl::OrdMap<u64, Instance>>,
    /// Per app id: instances ever created (survives deletion of the app).
    pub counters: BTreeMap<String, u64>,
    pub next_deployment: u64,
    /// Instance ids per host: an index derived from `instances` (never serialized,
    /// rebuilt on restore), so listing a host's instances (its agent, the host views)
    /// costs its own instances, not all.
    #[serde(skip)]
    by_host: imbl::OrdMap<u64, imbl::OrdSet<String>>,
    /// Resources reserved per host: derived from `instances` like `by_host`, so a
    /// placement's capacity check is O(1), not a sum over the host's instances.
    #[serde(skip)]
    usage: HashMap<u64, Usage>,
    /// Instances per state (`InstanceState as usize`), derived like `by_host`: what
    /// `/metrics` reports without a scan of a million instances.
    #[serde(skip)]
    by_state: [u64; InstanceState::ALL.len()],
    /// Per app id, its instances desired running counted for the scheduler ([`Tally`]),
    /// derived like `by_host`.
    #[serde(skip)]
    tallies: HashMap<String, Tally>,
    /// Instances whose visible fields changed (or that came or went) in the command
    /// being applied, for its events (`crate::state::events`); at most
    /// `MAX_INSTANCE_EVENTS`, the rest counted per app in `touched_beyond`.
    #[serde(skip)]
    touched: Vec<String>,
    #[serde(skip)]
    touched_beyond: BTreeMap<String, u64>,
}

impl Apps {
    /// A new app, or a new version of an existing one. Returns (version, created).
    pub fn put(&mut self, spec: AppSpec, at: u64) -> (u64, bool) {
        match self.apps.get_mut(&spec.id) {
            None => {
                let mut app = App {
                    id: spec.id.clone(),
                    version: 0,
                    instances: spec.instances,
                    versions: VecDeque::new(),
                    created_at: at,
                    updated_at: at,
                    deployment: None,
                    pending_reason: None,
                };
                let v = app.push_version(spec, at, false);
                self.apps.insert(app.id.clone(), app);
                (v, true)
            }
            Some(app) => {
                let current = app.spec().clone();
                if current.same_but_instances(&spec) {
                    // A scale, not a new version; the stored spec keeps its count. (A
                    // spec equal to the stored one scales too: back to its count.)
                    if app.instances != spec.instances {
                        app.instances = spec.instances;
                        app.updated_at = at;
                    }
                    return (app.version, false);
                }
                app.instances = spec.instances;
                self.next_deployment += 1;
                (app.roll_to(spec, at, false, self.next_deployment), false)
            }
        }
    }

    /// A rolling restart of app `id`: a new version with its spec, every instance
    /// replaced. Its new version, or None for an unknown app.
    pub fn restart(&mut self, id: &str, at: u64) -> Option<u64> {
        let app = self.apps.get_mut(id)?;
        let spec = app.spec().clone();
        self.next_deployment += 1;
        Some(app.roll_to(spec, at, true, self.next_deployment))
    }

    /// Every instance, by app id, then in creation order.
    pub fn instances(&self) -> impl Iterator<Item = &Instance> {
        self.instances.values().flat_map(|of_app| of_app.values())
    }

    /// Instance `id` (`APP-INDEX`).
    pub fn instance(&self, id: &str) -> Option<&Instance> {
        let (app, index) = split_id(id)?;
        self.instances.get(app)?.get(&index).filter(|i| i.id == id)
    }

    fn instance_mut(&mut self, id: &str) -> Option<&mut Instance> {
        let (app, index) = split_id(id)?;
        self.instances.get_mut(app)?.get_mut(&index).filter(|i| i.id == id)
    }

    /// Adds an instance (replacing one of the same id). Its id must be
    /// `{app}-{index}`, as [`Apps::next_instance_id`] makes them.
    pub fn insert(&mut self, inst: Instance) {
        debug_assert_eq!(split_id(&inst.id), Some((inst.app.as_str(), inst.index)), "instance id is app-index");
        self.remove(&inst.id);
        self.index(&inst.id, None, Some(inst.indexed()));
        self.touch(&inst.id);
        self.instances.entry(inst.app.clone()).or_default().insert(inst.index, inst);
    }

    /// Changes instance `id` through `f`, keeping the indexes current; None if there is
    /// no such instance. Every change of an instance goes through here.
    pub fn update<R>(&mut self, id: &str, f: impl FnOnce(&mut Instance) -> R) -> Option<R> {
        let inst = self.instance_mut(id)?;
        let before = inst.indexed();
        let (seen, message) = (inst.visible(), inst.message.clone());
        let r = f(inst);
        debug_assert_eq!(inst.id, id, "an instance's id (its key) never changes");
        let after = inst.indexed();
        let changed = inst.visible() != seen || inst.message != message;
        if after != before {
            self.index(id, Some(before), Some(after));
        }
        if changed {
            self.touch(id);
        }
        Some(r)
    }

    /// Removes instance `id`.
    pub fn remove(&mut self, id: &str) -> Option<Instance> {
        let (app, index) = split_id(id)?;
        let of_app = self.instances.get_mut(app)?;
        if of_app.get(&index)?.id != id {
            return None;
        }
        let inst = of_app.remove(&index)?;
        if of_app.is_empty() {
            self.instances.remove(app);
        }
        self.index(id, Some(inst.indexed()), None);
        self.touch(id);
        Some(inst)
    }

    /// Notes that instance `id` changed in the command being applied.
    fn touch(&mut self, id: &str) {
        if self.touched.len() < super::events::MAX_INSTANCE_EVENTS {
            self.touched.push(id.to_string());
        } else if let Some((app, _)) = split_id(id) {
            match self.touched_beyond.get_mut(app) {
                Some(n) => *n += 1,
                None => {
                    self.touched_beyond.insert(app.to_string(), 1);
                }
            }
        }
    }

    /// The instances the command being applied changed (each once, in the order first
    /// changed), and per app how many more changes there were beyond those; both are
    /// cleared.
    pub fn take_touched(&mut self) -> (Vec<String>, BTreeMap<String, u64>) {
        let mut seen = std::collections::HashSet::new();
        let mut ids = std::mem::take(&mut self.touched);
        ids.retain(|id| seen.insert(id.clone()));
        (ids, std::mem::take(&mut self.touched_beyond))
    }

    /// Moves `id` in the indexes from what it was (None: new) to what it is (None:
    /// removed).
    fn index(&mut self, id: &str, before: Option<Indexed>, after: Option<Indexed>) {
        let (host, reservation) = before.map_or((None, None), |b| (b.host, b.reservation));
        let (new_host, new_reservation) = after.map_or((None, None), |a| (a.host, a.reservation));
        let (tallied, new_tallied) = (before.and_then(|b| b.tallied), after.and_then(|a| a.tallied));
        if tallied != new_tallied {
            self.tally_change(id, tallied, new_tallied);
        }
        if let Some(b) = before {
            self.by_state[b.state as usize] -= 1;
        }
        if let Some(a) = after {
            self.by_state[a.state as usize] += 1;
        }
        if host != new_host {
            if let Some(old) = host {
                if let Some(set) = self.by_host.get_mut(&old) {
                    set.remove(id);
                    if set.is_empty() {
                        self.by_host.remove(&old);
                    }
                }
            }
            if let Some(h) = new_host {
                self.by_host.entry(h).or_default().insert(id.to_string());
            }
        }
        if reservation != new_reservation {
            if let Some((h, u)) = reservation {
                let used = self.usage.entry(h).or_default();
                used.sub(u);
                if *used == Usage::default() {
                    self.usage.remove(&h);
                }
            }
            if let Some((h, u)) = new_reservation {
                self.usage.entry(h).or_default().add(u);
            }
        }
    }

    /// Moves `id` in its app's tally from what it was to what it is.
    fn tally_change(&mut self, id: &str, before: Option<Tallied>, after: Option<Tallied>) {
        let Some((app, index)) = split_id(id) else { return };
        if !self.tallies.contains_key(app) {
            self.tallies.insert(app.to_string(), Tally::default());
        }
        let tally = self.tallies.get_mut(app).expect("just inserted");
        if let Some(b) = before {
            tally.count(index, &b, false);
        }
        if let Some(a) = after {
            tally.count(index, &a, true);
        }
        if *tally == Tally::default() {
            self.tallies.remove(app);
        }
    }

    /// The instances of `app` desired running, counted ([`Tally`]).
    pub fn tally(&self, app: &str) -> Option<&Tally> {
        self.tallies.get(app)
    }

    /// Instances placed on `host`.
    pub fn on_host(&self, host: u64) -> impl Iterator<Item = &Instance> {
        self.by_host.get(&host).into_iter().flatten().filter_map(|id| self.instance(id))
    }

    /// Resources reserved on `host`.
    pub fn usage(&self, host: u64) -> Usage {
        self.usage.get(&host).copied().unwrap_or_default()
    }

    /// Whether the indexes kept up to date change by change equal rebuilt ones.
    #[cfg(test)]
    pub fn indexes_are_exact(&self) -> bool {
        let mut fresh = self.clone();
        fresh.rebuild_index();
        fresh.by_host == self.by_host
            && fresh.usage == self.usage
            && fresh.by_state == self.by_state
            && fresh.tallies == self.tallies
    }

    /// How many instances are in each state.
    pub fn count_by_state(&self) -> impl Iterator<Item = (InstanceState, u64)> + '_ {
        InstanceState::ALL.into_iter().map(|s| (s, self.by_state[s as usize]))
    }

    /// Rebuilds the derived indexes (after a snapshot was restored).
    pub fn rebuild_index(&mut self) {
        self.by_host.clear();
        self.usage.clear();
        self.by_state = Default::default();
        self.tallies.clear();
        for i in self.instances.values().flat_map(|of_app| of_app.values()) {
            self.by_state[i.state as usize] += 1;
            if let Some(t) = i.indexed().tallied {
                self.tallies.entry(i.app.clone()).or_default().count(i.index, &t, true);
            }
            if let Some(h) = i.host {
                self.by_host.entry(h).or_default().insert(i.id.clone());
            }
            if let Some((h, u)) = i.reservation() {
                self.usage.entry(h).or_default().add(u);
            }
        }
    }

    /// The next instance id of `app`.
    pub fn next_instance_id(&mut self, app: &str) -> (String, u64) {
        let n = self.counters.entry(app.to_string()).or_insert(0);
        *n += 1;
        (format!("{app}-{n}"), *n)
    }

    /// Instance `index` of `app`.
    pub fn instance_at(&self, app: &str, index: u64) -> Option<&Instance> {
        self.instances.get(app)?.get(&index)
    }

    /// Instances of `app` in index (creation) order.
    pub fn instances_of<'a>(&'a self, app: &'a str) -> impl DoubleEndedIterator<Item = &'a Instance> + 'a {
        self.instances.get(app).into_iter().flat_map(|of_app| of_app.values())
    }
}

/// `web-12` → (`web`, 12). App ids may hold dashes; the index follows the last one.
pub(crate) fn split_id(id: &str) -> Option<(&str, u64)> {
    let (app, index) = id.rsplit_once('-')?;
    Some((app, index.parse().ok()?))
}
