//! The registry of nodes: addresses and host resources, and retired ids.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::command::{DomainError, Labels, Reply, Response};

/// What a node announces about itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeInfo {
    pub id: u64,
    pub grpc: String,
    pub http: String,
    /// `docker` or `process`.
    pub runtime: String,
    pub cpus: f64,
    pub mem_mb: u64,
    pub labels: Labels,
    /// The host's `--host-deadline-s`, in ms: the leader declares this host down only
    /// after this much silence, because the host fences itself after half of it (see
    /// `timing`) — each host's own deadline, so nodes configured differently stay safe.
    pub host_deadline_ms: u64,
}

/// A host's liveness, decided by the leader from heartbeats.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HostState {
    #[default]
    Up,
    Down,
    /// Takes no new instances, and its instances move elsewhere (`berth drain`).
    Draining,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Nodes {
    pub registered: BTreeMap<u64, NodeInfo>,
    /// Liveness of registered hosts (absent: up).
    pub states: BTreeMap<u64, HostState>,
    /// Ids of nodes removed from the cluster. Never reused: a wiped node rejoining
    /// under its old id could form a second quorum (openraft's membership docs).
    pub retired: BTreeSet<u64>,
    /// When each down host was declared down (replicated ms); for a retired host, when
    /// it counts as down: its removal plus its deadline (it may still run until it
    /// noticed and fenced itself).
    pub down_since: BTreeMap<u64, u64>,
    /// Hosts an operator drains: up or down, they take no instances.
    pub draining: BTreeSet<u64>,
}

impl NodeInfo {
    /// The host's address: its HTTP API's without the port (what Marathon's task
    /// `host` and Consul's node `Address` report).
    pub fn address(&self) -> &str {
        self.http.rsplit_once(':').map_or(self.http.as_str(), |(a, _)| a)
    }

    /// Whether this host runs apps of `runtime`: a docker host runs process apps too.
    pub fn runs(&self, runtime: &str) -> bool {
        self.runtime == runtime || runtime == "process"
    }
}

impl Nodes {
    pub fn register(&mut self, info: NodeInfo) -> Response {
        if self.retired.contains(&info.id) {
            return Response(Err(DomainError::conflict(
                "id_retired",
                format!("node id {} was removed from the cluster and cannot be used again", info.id),
            )));
        }
        self.registered.insert(info.id, info);
        Response(Ok(Reply::Done))
    }

    /// The state of host `id`: `down` if the leader said so, else `draining` if an
    /// operator drains it, else `up`.
    pub fn state(&self, id: u64) -> HostState {
        if self.is_down(id) {
            HostState::Down
        } else if self.draining.contains(&id) {
            HostState::Draining
        } else {
            HostState::Up
        }
    }

    /// Whether the leader declared host `id` down.
    pub fn is_down(&self, id: u64) -> bool {
        self.states.get(&id) == Some(&HostState::Down)
    }

    /// Whether host `id` was removed from the cluster and, as of `now`, has had its
    /// deadline to fence itself: what ran there may run elsewhere.
    pub fn is_gone(&self, id: u64, now: u64) -> bool {
        self.retired.contains(&id) && self.down_since.get(&id).is_some_and(|at| now >= *at)
    }

    /// Hosts that are not simply up: down (or retired, counted as down), or draining.
    /// Instances there may have to wait or move; everywhere else they stay.
    pub fn troubled(&self) -> impl Iterator<Item = u64> + '_ {
        let down = self.states.iter().filter(|(_, s)| **s == HostState::Down).map(|(id, _)| *id);
        self.down_since.keys().copied().chain(self.draining.iter().copied()).chain(down)
    }

    pub fn retire(&mut self, id: u64) -> Response {
        self.registered.remove(&id);
        self.states.remove(&id);
        self.draining.remove(&id);
        self.retired.insert(id);
        Response(Ok(Reply::Done))
    }
}
