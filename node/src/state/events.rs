//! The event log: what changed, in Raft order.
//!
//! Events are derived inside apply from what a command changed (an app created, a
//! rollout blocked, an instance running on a new host, a host down), so every replica
//! derives the same events with the same ids, and the last [`RETAINED`] of them are
//! part of the replicated state (and of snapshots). Any node serves the same stream
//! (`GET /v1/events`), and a client resumes on any node with `Last-Event-ID`. Event
//! ids are consecutive; an event also carries the Raft index of the entry that
//! produced it and the leader's timestamp of that entry.
//!
//! Instance events come from [`super::apps::Apps`], which notes every instance whose
//! visible fields change; a command that changes more than [`MAX_INSTANCE_EVENTS`]
//! instances (a large deploy) yields one `instances_changed` summary per app instead
//! of an event per instance — the list is one `GET /v1/instances` away.
//!
//! Storage uses plain (externally tagged) enums: the snapshot codec is not
//! self-describing. [`Event::to_json`] gives the API's shape, `{"id", "index", "at",
//! "type", ...fields}`.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::apps::{split_id, Health, InstanceState};
use super::nodes::HostState;
use super::{Command, State};

/// Events kept in the state (older ones are dropped; a client that resumes from
/// before them is told so by an `events_dropped` event).
pub const RETAINED: usize = 10_000;
/// Instance events per command beyond which they are summarized per app.
pub const MAX_INSTANCE_EVENTS: usize = 1_000;

/// One event. Variants are append-only (snapshots must keep decoding).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum EventKind {
    AppCreated {
        app: String,
        version: u64,
    },
    /// A new version (a spec change, a rollback).
    AppUpdated {
        app: String,
        version: u64,
    },
    AppScaled {
        app: String,
        instances: u32,
    },
    AppDeleted {
        app: String,
    },
    DeploymentStarted {
        app: String,
        deployment: u64,
        from_version: Option<u64>,
        to_version: u64,
    },
    DeploymentFinished {
        app: String,
        deployment: u64,
        to_version: u64,
    },
    /// Ended without finishing: superseded by a newer version, cancelled, app deleted.
    DeploymentCancelled {
        app: String,
        deployment: u64,
    },
    /// The rollout cannot go on (`reason`), or moves again (`reason` None).
    DeploymentBlocked {
        app: String,
        deployment: u64,
        reason: Option<String>,
    },
    InstanceChanged {
        app: String,
        instance: String,
        version: u64,
        host: Option<u64>,
        ip: Option<Ipv4Addr>,
        state: InstanceState,
        health: Health,
        message: Option<String>,
    },
    InstanceRemoved {
        app: String,
        instance: String,
    },
    /// `count` instance changes of `app` in one command, too many to list.
    InstancesChanged {
        app: String,
        count: u64,
    },
    HostRegistered {
        host: u64,
    },
    HostChanged {
        host: u64,
        state: HostState,
    },
    HostRemoved {
        host: u64,
    },
    PoolCreated {
        pool: String,
    },
    PoolDeleted {
        pool: String,
    },
}

/// The event types, as the API names them (`EventKind::name`).
pub const TYPES: [&str; 17] = [
    "app_created",
    "app_updated",
    "app_scaled",
    "app_deleted",
    "deployment_started",
    "deployment_finished",
    "deployment_cancelled",
    "deployment_blocked",
    "deployment_unblocked",
    "instance_changed",
    "instance_removed",
    "instances_changed",
    "host_registered",
    "host_changed",
    "host_removed",
    "pool_created",
    "pool_deleted",
];

impl EventKind {
    /// The type name (`type` in the JSON, `event:` in the SSE stream).
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::AppCreated { .. } => "app_created",
            EventKind::AppUpdated { .. } => "app_updated",
            EventKind::AppScaled { .. } => "app_scaled",
            EventKind::AppDeleted { .. } => "app_deleted",
            EventKind::DeploymentStarted { .. } => "deployment_started",
            EventKind::DeploymentFinished { .. } => "deployment_finished",
            EventKind::DeploymentCancelled { .. } => "deployment_cancelled",
            EventKind::DeploymentBlocked { reason: Some(_), .. } => "deployment_blocked",
            EventKind::DeploymentBlocked { reason: None, .. } => "deployment_unblocked",
            EventKind::InstanceChanged { .. } => "instance_changed",
            EventKind::InstanceRemoved { .. } => "instance_removed",
            EventKind::InstancesChanged { .. } => "instances_changed",
            EventKind::HostRegistered { .. } => "host_registered",
            EventKind::HostChanged { .. } => "host_changed",
            EventKind::HostRemoved { .. } => "host_removed",
            EventKind::PoolCreated { .. } => "pool_created",
            EventKind::PoolDeleted { .. } => "pool_deleted",
        }
    }

    /// The app this event is about, if any (what `?app=` filters on).
    pub fn app(&self) -> Option<&str> {
        match self {
            EventKind::AppCreated { app, .. }
            | EventKind::AppUpdated { app, .. }
            | EventKind::AppScaled { app, .. }
            | EventKind::AppDeleted { app }
            | EventKind::DeploymentStarted { app, .. }
            | EventKind::DeploymentFinished { app, .. }
            | EventKind::DeploymentCancelled { app, .. }
            | EventKind::DeploymentBlocked { app, .. }
            | EventKind::InstanceChanged { app, .. }
            | EventKind::InstanceRemoved { app, .. }
            | EventKind::InstancesChanged { app, .. } => Some(app),
            _ => None,
        }
    }

    /// The fields of the JSON form (beside id, index, at and type).
    fn fields(&self) -> Value {
        match self {
            EventKind::AppCreated { app, version } | EventKind::AppUpdated { app, version } => {
                json!({"app": app, "version": version})
            }
            EventKind::AppScaled { app, instances } => json!({"app": app, "instances": instances}),
            EventKind::AppDeleted { app } => json!({"app": app}),
            EventKind::DeploymentStarted { app, deployment, from_version, to_version } => {
                json!({"app": app, "deployment": deployment, "from_version": from_version, "to_version": to_version})
            }
            EventKind::DeploymentFinished { app, deployment, to_version } => {
                json!({"app": app, "deployment": deployment, "to_version": to_version})
            }
            EventKind::DeploymentCancelled { app, deployment } => json!({"app": app, "deployment": deployment}),
            EventKind::DeploymentBlocked { app, deployment, reason } => {
                json!({"app": app, "deployment": deployment, "reason": reason})
            }
            EventKind::InstanceChanged { app, instance, version, host, ip, state, health, message } => json!({
                "app": app, "instance": instance, "version": version, "host": host, "ip": ip,
                "state": state, "health": health, "message": message,
            }),
            EventKind::InstanceRemoved { app, instance } => json!({"app": app, "instance": instance}),
            EventKind::InstancesChanged { app, count } => json!({"app": app, "count": count}),
            EventKind::HostRegistered { host } | EventKind::HostRemoved { host } => json!({"host": host}),
            EventKind::HostChanged { host, state } => json!({"host": host, "state": state}),
            EventKind::PoolCreated { pool } | EventKind::PoolDeleted { pool } => json!({"pool": pool}),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    /// Consecutive from 1.
    pub id: u64,
    /// The Raft index of the entry that produced it.
    pub index: u64,
    /// The entry's leader timestamp (ms since the epoch).
    pub at: u64,
    pub kind: EventKind,
}

impl Event {
    /// `{"id", "index", "at" (RFC 3339), "type", ...fields}`.
    pub fn to_json(&self) -> Value {
        let mut v = self.kind.fields();
        let o = v.as_object_mut().expect("fields are an object");
        o.insert("id".into(), json!(self.id));
        o.insert("index".into(), json!(self.index));
        o.insert("at".into(), json!(crate::server::workloads::time(self.at)));
        o.insert("type".into(), json!(self.kind.name()));
        v
    }
}

/// What a stream or a webhook reads after `after` when the events it missed are no
/// longer kept: `{"type": "events_dropped", "after", "oldest"}`.
pub fn dropped(after: u64, oldest: u64) -> Value {
    json!({"type": "events_dropped", "after": after, "oldest": oldest,
           "message": format!("events {} to {} are no longer kept; re-read the state (GET /v1/apps, /v1/instances)", after + 1, oldest.saturating_sub(1))})
}

/// The retained events.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Events {
    /// The id of the last event (0: none yet).
    pub last: u64,
    /// Persistent: a snapshot's copy is O(1).
    #[serde(deserialize_with = "super::persistent::vector")]
    ring: imbl::Vector<Event>,
}

impl Events {
    pub fn push(&mut self, index: u64, at: u64, kind: EventKind) {
        self.last += 1;
        self.ring.push_back(Event { id: self.last, index, at, kind });
        if self.ring.len() > RETAINED {
            self.ring.pop_front();
        }
    }

    /// The id of the oldest event kept (`last + 1` when none is).
    pub fn oldest(&self) -> u64 {
        self.ring.front().map_or(self.last + 1, |e| e.id)
    }

    /// Up to `max` events after id `after`, oldest first.
    pub fn after(&self, after: u64, max: usize) -> impl Iterator<Item = &Event> {
        let skip = after.saturating_sub(self.oldest().saturating_sub(1)) as usize;
        self.ring.iter().skip(skip).take(max)
    }
}

/// What a command may change beyond instances, noted before it is applied.
pub struct Before {
    apps: Vec<(String, Option<AppMark>)>,
    hosts: Vec<(u64, HostMark)>,
    pools: Vec<(String, bool)>,
    /// Rollouts the command (a plan) says are complete.
    finished: Vec<(String, u64)>,
}

#[derive(Clone, PartialEq)]
struct AppMark {
    version: u64,
    instances: u32,
    deployment: Option<(u64, Option<u64>, u64, Option<String>)>,
}

#[derive(Clone, Copy, PartialEq)]
struct HostMark {
    registered: bool,
    state: HostState,
    retired: bool,
}

fn app_mark(state: &State, id: &str) -> Option<AppMark> {
    state.apps.apps.get(id).map(|a| AppMark {
        version: a.version,
        instances: a.instances,
        deployment: a.deployment.as_ref().map(|d| (d.id, d.from, d.to, d.blocked.clone())),
    })
}

fn host_mark(state: &State, id: u64) -> HostMark {
    HostMark {
        registered: state.nodes.registered.contains_key(&id),
        state: state.nodes.state(id),
        retired: state.nodes.retired.contains(&id),
    }
}

impl Before {
    /// Notes what `cmd` may change, from the state before it is applied.
    pub fn note(state: &State, cmd: &Command) -> Before {
        let mut b = Before { apps: Vec::new(), hosts: Vec::new(), pools: Vec::new(), finished: Vec::new() };
        let mut app = |id: &str| b.apps.push((id.to_string(), app_mark(state, id)));
        match cmd {
            Command::PutApp { spec } | Command::CreateApp { spec } => app(&spec.id),
            Command::ScaleApp { id, .. }
            | Command::DeleteApp { id }
            | Command::RollbackApp { id, .. }
            | Command::RestartApp { id } => app(id),
            Command::CancelDeployment { app: id } => app(id),
            Command::ApplyPlan(p) => {
                let mut ids: Vec<&str> = p.finished.iter().map(|(a, _)| a.as_str()).collect();
                ids.extend(p.blocked.iter().map(|(a, _, _)| a.as_str()));
                ids.sort_unstable();
                ids.dedup();
                for id in ids {
                    app(id);
                }
                b.finished = p.finished.clone();
            }
            Command::RegisterNode(info) => b.hosts.push((info.id, host_mark(state, info.id))),
            Command::RetireNode { id } | Command::SetHostState { id, .. } | Command::SetDraining { id, .. } => {
                b.hosts.push((*id, host_mark(state, *id)))
            }
            Command::CreatePool { name, .. } | Command::DeletePool { name } => {
                b.pools.push((name.clone(), state.ipam.pool(name).is_ok()))
            }
            _ => {}
        }
        b
    }

    /// The events of the command, from the state after it: apps and rollouts, then
    /// hosts and pools, then instances.
    pub fn events(self, state: &mut State) -> Vec<EventKind> {
        let mut out = Vec::new();
        for (id, before) in &self.apps {
            let after = app_mark(state, id);
            if after == *before {
                continue;
            }
            let app = || id.clone();
            match (before, &after) {
                (None, Some(a)) => out.push(EventKind::AppCreated { app: app(), version: a.version }),
                (Some(_), None) => out.push(EventKind::AppDeleted { app: app() }),
                (Some(b), Some(a)) if a.version != b.version => {
                    out.push(EventKind::AppUpdated { app: app(), version: a.version })
                }
                (Some(b), Some(a)) if a.instances != b.instances => {
                    out.push(EventKind::AppScaled { app: app(), instances: a.instances })
                }
                _ => {}
            }
            let was = before.as_ref().and_then(|b| b.deployment.clone());
            let is = after.as_ref().and_then(|a| a.deployment.clone());
            match (&was, &is) {
                (Some(w), Some(i)) if w.0 == i.0 => {
                    if w.3 != i.3 {
                        out.push(EventKind::DeploymentBlocked { app: app(), deployment: i.0, reason: i.3.clone() });
                    }
                    continue;
                }
                _ => {}
            }
            if let Some((d, _, to, _)) = was {
                if self.finished.iter().any(|(a, f)| a == id && *f == d) {
                    out.push(EventKind::DeploymentFinished { app: app(), deployment: d, to_version: to });
                } else {
                    out.push(EventKind::DeploymentCancelled { app: app(), deployment: d });
                }
            }
            if let Some((d, from, to, _)) = is {
                out.push(EventKind::DeploymentStarted {
                    app: app(),
                    deployment: d,
                    from_version: from,
                    to_version: to,
                });
            }
        }
        for (id, before) in &self.hosts {
            let after = host_mark(state, *id);
            if after.registered && !before.registered {
                out.push(EventKind::HostRegistered { host: *id });
            }
            if after.retired && !before.retired {
                out.push(EventKind::HostRemoved { host: *id });
            } else if after.state != before.state && after.registered {
                out.push(EventKind::HostChanged { host: *id, state: after.state });
            }
        }
        for (name, existed) in self.pools {
            match (existed, state.ipam.pool(&name).is_ok()) {
                (false, true) => out.push(EventKind::PoolCreated { pool: name }),
                (true, false) => out.push(EventKind::PoolDeleted { pool: name }),
                _ => {}
            }
        }
        let (ids, beyond) = state.apps.take_touched();
        if beyond.is_empty() {
            for id in ids {
                out.push(match state.apps.instance(&id) {
                    Some(i) => EventKind::InstanceChanged {
                        app: i.app.clone(),
                        instance: id,
                        version: i.version,
                        host: i.host,
                        ip: i.ip,
                        state: i.state,
                        health: i.health,
                        message: i.message.clone(),
                    },
                    None => {
                        let app = split_id(&id).map_or(id.as_str(), |(a, _)| a).to_string();
                        EventKind::InstanceRemoved { app, instance: id }
                    }
                });
            }
        } else {
            let mut counts = beyond;
            for id in &ids {
                if let Some((app, _)) = split_id(id) {
                    *counts.entry(app.to_string()).or_default() += 1;
                }
            }
            out.extend(counts.into_iter().map(|(app, count)| EventKind::InstancesChanged { app, count }));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_consecutive_and_old_events_are_dropped() {
        let mut e = Events::default();
        assert_eq!((e.oldest(), e.after(0, 10).count()), (1, 0));
        for i in 0..(RETAINED as u64 + 5) {
            e.push(i + 1, 0, EventKind::PoolCreated { pool: format!("p{i}") });
        }
        assert_eq!(e.last, RETAINED as u64 + 5);
        assert_eq!(e.oldest(), 6);
        let ids: Vec<u64> = e.after(0, 3).map(|x| x.id).collect();
        assert_eq!(ids, vec![6, 7, 8], "from the oldest kept");
        let ids: Vec<u64> = e.after(100, 2).map(|x| x.id).collect();
        assert_eq!(ids, vec![101, 102]);
        assert_eq!(e.after(e.last, 10).count(), 0);
    }

    #[test]
    fn every_type_is_listed_and_the_json_carries_it() {
        let kinds = [
            EventKind::DeploymentBlocked { app: "a".into(), deployment: 1, reason: Some("x".into()) },
            EventKind::DeploymentBlocked { app: "a".into(), deployment: 1, reason: None },
            EventKind::HostChanged { host: 2, state: HostState::Draining },
        ];
        for k in kinds {
            assert!(TYPES.contains(&k.name()));
            let v = Event { id: 3, index: 9, at: 0, kind: k.clone() }.to_json();
            assert_eq!((v["type"].as_str(), v["id"].as_u64(), v["index"].as_u64()), (Some(k.name()), Some(3), Some(9)));
        }
    }
}
