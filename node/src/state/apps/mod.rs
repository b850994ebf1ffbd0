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

use std::collections::{BTreeMap, BTreeSet, VecDeque};
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
}

/// A rollout from one version to another.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Deployment {
    pub id: u64,
    pub app: String,
    pub from: Option<u64>,
    pub to: u64,
    pub started_at: u64,
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

    fn push_version(&mut self, spec: AppSpec, at: u64) -> u64 {
        let version = self.versions.back().map(|v| v.version).unwrap_or(0) + 1;
        self.versions.push_back(Version { version, created_at: at, spec });
        while self.versions.len() > MAX_VERSIONS {
            self.versions.pop_front();
        }
        self.version = version;
        self.updated_at = at;
        version
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
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

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
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
}

/// Apps, instances and the counters that make instance ids unique forever.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Apps {
    pub apps: BTreeMap<String, App>,
    pub instances: BTreeMap<String, Instance>,
    /// Per app id: instances ever created (survives deletion of the app).
    pub counters: BTreeMap<String, u64>,
    pub next_deployment: u64,
    /// Instance ids per host: an index derived from `instances` (never serialized,
    /// rebuilt on restore), so a host's usage costs its own instances, not all.
    #[serde(skip)]
    by_host: BTreeMap<u64, BTreeSet<String>>,
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
                let v = app.push_version(spec, at);
                self.apps.insert(app.id.clone(), app);
                (v, true)
            }
            Some(app) => {
                let current = app.spec().clone();
                if current == spec {
                    return (app.version, false);
                }
                app.instances = spec.instances;
                if current.same_but_instances(&spec) {
                    // A scale, not a new version; the stored spec keeps its count.
                    app.updated_at = at;
                    return (app.version, false);
                }
                let from = app.version;
                let v = app.push_version(spec, at);
                self.next_deployment += 1;
                app.deployment = Some(Deployment {
                    id: self.next_deployment,
                    app: app.id.clone(),
                    from: Some(from),
                    to: v,
                    started_at: at,
                });
                (v, false)
            }
        }
    }

    /// Moves instance `id` to `host` (None: off any host), keeping the index current.
    /// Every change of an instance's host goes through here.
    pub fn set_host(&mut self, id: &str, host: Option<u64>) {
        let Some(inst) = self.instances.get_mut(id) else { return };
        if let Some(old) = inst.host {
            if let Some(set) = self.by_host.get_mut(&old) {
                set.remove(id);
                if set.is_empty() {
                    self.by_host.remove(&old);
                }
            }
        }
        inst.host = host;
        if let Some(h) = host {
            self.by_host.entry(h).or_default().insert(id.to_string());
        }
    }

    /// Removes instance `id` (and its index entry).
    pub fn remove(&mut self, id: &str) -> Option<Instance> {
        self.set_host(id, None);
        self.instances.remove(id)
    }

    /// Instances placed on `host`.
    pub fn on_host(&self, host: u64) -> impl Iterator<Item = &Instance> {
        self.by_host.get(&host).into_iter().flatten().filter_map(|id| self.instances.get(id))
    }

    /// Rebuilds the derived index (after a snapshot was restored).
    pub fn rebuild_index(&mut self) {
        self.by_host.clear();
        for (id, i) in &self.instances {
            if let Some(h) = i.host {
                self.by_host.entry(h).or_default().insert(id.clone());
            }
        }
    }

    /// The next instance id of `app`.
    pub fn next_instance_id(&mut self, app: &str) -> (String, u64) {
        let n = self.counters.entry(app.to_string()).or_insert(0);
        *n += 1;
        (format!("{app}-{n}"), *n)
    }

    /// Instances of `app` in index order.
    pub fn instances_of<'a>(&'a self, app: &'a str) -> impl Iterator<Item = &'a Instance> + 'a {
        let prefix = format!("{app}-");
        self.instances
            .range(prefix.clone()..)
            .take_while(move |(k, _)| k.starts_with(&prefix))
            .map(|(_, i)| i)
            .filter(move |i| i.app == app)
    }
}
