//! The one way into the replicated state: [`Request`]s carrying a [`Command`].
//!
//! Variants are append-only: a new kind of change is a new variant at the end, never a
//! changed one, because old log entries and snapshots must keep decoding.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::apps::{AppSpec, Health, InstanceState};
use super::ipam::{AllocationInfo, PoolInfo};
use super::nodes::{HostState, NodeInfo};

/// A command as it sits in the Raft log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    /// The client's id for this operation (an `Idempotency-Key`, or one the API node
    /// chose). A request whose id was already applied is answered from the recorded
    /// response instead of being applied again. Empty: no deduplication.
    pub id: String,
    /// Wall-clock milliseconds, stamped by the leader when it proposes the request.
    /// Apply reads time only from here (deterministic on every replica).
    pub at_ms: u64,
    pub cmd: Command,
}

/// Every change to the replicated state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Command {
    /// A node announces its addresses and what it offers as a host.
    RegisterNode(NodeInfo),
    /// A node left the cluster for good: its id may never be used again.
    RetireNode {
        id: u64,
    },
    /// Creates an IP pool.
    CreatePool {
        name: String,
        subnet: Ipv4Net,
        gateway: Option<Ipv4Addr>,
        range: Option<Ipv4Net>,
    },
    /// Deletes an IP pool with no allocations.
    DeletePool {
        name: String,
    },
    /// Allocates an address of `pool` to `owner`: `ip` if given, else the lowest free
    /// address — chosen here, inside apply, from the state every replica has.
    Allocate {
        pool: String,
        owner: String,
        ip: Option<Ipv4Addr>,
    },
    /// Releases an allocated address.
    Release {
        pool: String,
        ip: Ipv4Addr,
    },
    /// Creates an app, or a new version of it (a rollout), or scales it when only
    /// `instances` changed. The spec was validated by the proposer.
    PutApp {
        spec: AppSpec,
    },
    /// Sets the desired number of instances.
    ScaleApp {
        id: String,
        instances: u32,
    },
    /// Deletes an app: its instances stop, then release their IPs.
    DeleteApp {
        id: String,
    },
    /// A new version with the spec of `version` (default: the one before the current).
    RollbackApp {
        id: String,
        version: Option<u64>,
    },
    /// The scheduler's decisions, batched.
    ApplyPlan(Plan),
    /// What an agent observed of an instance it runs, for placement `epoch`.
    ReportInstance(Report),
    /// The leader's verdict on a host's liveness.
    SetHostState {
        id: u64,
        state: HostState,
    },
    /// Stops a rollout by rolling back to the version it started from.
    CancelDeployment {
        app: String,
    },
    /// Writes a register (a small replicated key/value cell; `value` is JSON text).
    RegisterWrite {
        key: String,
        value: String,
    },
    /// Compare-and-set of a register: `to` if it holds `from` (absent: JSON `null`).
    RegisterCas {
        key: String,
        from: String,
        to: String,
    },
    /// Drains a host (its instances move elsewhere), or makes it eligible again.
    SetDraining {
        id: u64,
        draining: bool,
    },
    /// Adds an event webhook (it gets the events after this entry's).
    AddWebhook {
        url: String,
        app: Option<String>,
        types: Vec<String>,
    },
    RemoveWebhook {
        id: u64,
    },
    /// The leader delivered a webhook's events up to `upto`; `error` if the last
    /// attempt failed.
    WebhookProgress {
        id: u64,
        upto: u64,
        error: Option<String>,
    },
    /// A rolling restart: a new version with the current spec whose rollout replaces
    /// every instance (in place, same IPs, as `upgrade` allows), Marathon's
    /// `POST /v2/apps/{id}/restart`.
    RestartApp {
        id: String,
    },
    /// Adds an API token (its secret's hash only; see [`super::tokens`]).
    CreateToken(super::tokens::Token),
    /// Revokes an API token.
    RevokeToken {
        id: String,
    },
    /// Creates an app that must not exist yet (Marathon's `POST /v2/apps`). Refused
    /// at apply (`app_exists`), so of two racing creations exactly one succeeds —
    /// a check before proposing could let both through, the second as a new version.
    CreateApp {
        spec: AppSpec,
    },
}

/// A scheduling plan: what the leader's scheduler decided from one view of the state.
/// Apply re-checks every item against the current state (hosts up, resources free,
/// instance unchanged) and skips what no longer holds, so a plan computed on a slightly
/// older view can never over-commit a host.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Plan {
    /// New instances, placed on `host` when given (else pending).
    pub creates: Vec<NewInstance>,
    /// Pending or lost instances placed on a host.
    pub places: Vec<(String, u64)>,
    /// Instances upgraded in place to a version (they keep id and IP).
    pub upgrades: Vec<(String, u64)>,
    /// Instances asked to stop (then removed when their agent reports them stopped).
    pub stops: Vec<String>,
    /// Instances removed at once (never placed, or their host is down).
    pub removes: Vec<String>,
    /// Instances taken off a host that is down (their app's `unreachable` wait is
    /// over) or draining, to be placed again (usually by `places` of the same plan).
    pub moves: Vec<String>,
    /// Per app: why instances stay pending (None: all placed).
    pub reasons: Vec<(String, Option<String>)>,
    /// Rollouts that are complete: (app, deployment id).
    pub finished: Vec<(String, u64)>,
    /// Why a rollout cannot go on (None: it moves again): (app, deployment id, why).
    pub blocked: Vec<(String, u64, Option<String>)>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.creates.is_empty()
            && self.places.is_empty()
            && self.upgrades.is_empty()
            && self.stops.is_empty()
            && self.removes.is_empty()
            && self.moves.is_empty()
            && self.reasons.is_empty()
            && self.finished.is_empty()
            && self.blocked.is_empty()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NewInstance {
    pub app: String,
    pub version: u64,
    pub host: Option<u64>,
    pub surge: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub id: String,
    pub host: u64,
    pub epoch: u64,
    pub state: InstanceState,
    pub health: Health,
    pub message: Option<String>,
    pub restarts: u32,
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ", self.id)?;
        match &self.cmd {
            Command::RegisterNode(n) => write!(f, "register-node {}", n.id),
            Command::RetireNode { id } => write!(f, "retire-node {id}"),
            Command::CreatePool { name, subnet, .. } => write!(f, "create-pool {name} {subnet}"),
            Command::DeletePool { name } => write!(f, "delete-pool {name}"),
            Command::Allocate { pool, owner, ip } => write!(f, "allocate {pool} {owner:?} {ip:?}"),
            Command::Release { pool, ip } => write!(f, "release {pool} {ip}"),
            Command::PutApp { spec } => write!(f, "put-app {}", spec.id),
            Command::CreateApp { spec } => write!(f, "create-app {}", spec.id),
            Command::ScaleApp { id, instances } => write!(f, "scale {id} {instances}"),
            Command::DeleteApp { id } => write!(f, "delete-app {id}"),
            Command::RollbackApp { id, version } => write!(f, "rollback {id} {version:?}"),
            Command::ApplyPlan(p) => write!(
                f,
                "plan +{} place {} upgrade {} stop {} remove {}",
                p.creates.len(),
                p.places.len(),
                p.upgrades.len(),
                p.stops.len(),
                p.removes.len()
            ),
            Command::ReportInstance(r) => write!(f, "report {} {:?}/{:?}", r.id, r.state, r.health),
            Command::SetHostState { id, state } => write!(f, "host {id} {state:?}"),
            Command::CancelDeployment { app } => write!(f, "cancel-deployment {app}"),
            Command::RegisterWrite { key, value } => write!(f, "register-write {key} {value}"),
            Command::RegisterCas { key, from, to } => write!(f, "register-cas {key} {from} {to}"),
            Command::SetDraining { id, draining } => write!(f, "host {id} draining={draining}"),
            Command::AddWebhook { url, .. } => write!(f, "add-webhook {url}"),
            Command::RemoveWebhook { id } => write!(f, "remove-webhook {id}"),
            Command::WebhookProgress { id, upto, error } => write!(f, "webhook {id} upto {upto} error={error:?}"),
            Command::RestartApp { id } => write!(f, "restart-app {id}"),
            Command::CreateToken(t) => write!(f, "create-token {} {}", t.id, t.role.as_str()),
            Command::RevokeToken { id } => write!(f, "revoke-token {id}"),
        }
    }
}

/// What applying a command produced: a reply, or an error that is part of the
/// replicated outcome (the same on every replica).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Response(pub Result<Reply, DomainError>);

impl Default for Response {
    fn default() -> Self {
        Response(Ok(Reply::Done))
    }
}

/// A successful outcome.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum Reply {
    Done,
    /// A pool; `created` is false when an identical pool already existed.
    Pool {
        pool: PoolInfo,
        created: bool,
    },
    Allocation(AllocationInfo),
    /// An app after a change: its current version; `created` for a new app.
    App {
        id: String,
        version: u64,
        created: bool,
    },
    /// A register's value after a write (JSON text).
    Register {
        value: String,
    },
    /// A webhook after it was added or removed.
    Webhook(super::webhooks::Webhook),
    /// A token after it was created or revoked.
    Token(super::tokens::Token),
}

/// The class of a [`DomainError`]; the API maps each to one status code.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request does not fit the state (an address outside the pool): 400.
    Invalid,
    /// Something named does not exist: 404.
    NotFound,
    /// The state forbids it (exists, in use, retired): 409.
    Conflict,
}

/// A replicated refusal, with a stable machine-readable `code`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DomainError {
    pub kind: ErrorKind,
    pub code: String,
    pub message: String,
}

impl DomainError {
    pub fn new(kind: ErrorKind, code: &str, message: impl Into<String>) -> Self {
        Self { kind, code: code.to_string(), message: message.into() }
    }
    pub fn not_found(code: &str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, code, message)
    }
    pub fn conflict(code: &str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, code, message)
    }
    pub fn invalid(code: &str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, code, message)
    }
}

impl fmt::Display for DomainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// Labels as a sorted map (deterministic snapshots and output).
pub type Labels = BTreeMap<String, String>;
