//! The one way into the replicated state: [`Request`]s carrying a [`Command`].
//!
//! Variants are append-only: a new kind of change is a new variant at the end, never a
//! changed one, because old log entries and snapshots must keep decoding.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::ipam::{AllocationInfo, PoolInfo};
use super::nodes::NodeInfo;

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
    RetireNode { id: u64 },
    /// Creates an IP pool.
    CreatePool {
        name: String,
        subnet: Ipv4Net,
        gateway: Option<Ipv4Addr>,
        range: Option<Ipv4Net>,
    },
    /// Deletes an IP pool with no allocations.
    DeletePool { name: String },
    /// Allocates an address of `pool` to `owner`: `ip` if given, else the lowest free
    /// address — chosen here, inside apply, from the state every replica has.
    Allocate {
        pool: String,
        owner: String,
        ip: Option<Ipv4Addr>,
    },
    /// Releases an allocated address.
    Release { pool: String, ip: Ipv4Addr },
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
        Self {
            kind,
            code: code.to_string(),
            message: message.into(),
        }
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
