//! Getting things done by the leader, from any node.
//!
//! Callers never look for the leader. [`Proposer::call_leader`] runs a [`LeaderCall`]
//! on this node when it leads, or forwards it over gRPC (`Internal.Propose`) to the node
//! it believes leads; the receiving node only ever executes locally (one hop), and
//! answers `not_leader` when it does not lead any more, so the caller looks again.
//! Everything is bounded by a deadline: with no leader or no quorum the caller gets a
//! 503 within [`WRITE_DEADLINE`], never a hang.
//!
//! Retries are safe: a write carries its request id through every retry and hop, and
//! the state machine applies an id once (`state::dedup`). A write that times out has an
//! unknown outcome — it may still commit — and the error says so.
//!
//! Reads are linearizable by read-index (Raft thesis §6.4): the leader confirms it still
//! leads with a round of heartbeats and returns its commit index; a follower waits until
//! its own replica has applied that index, then reads locally.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_proto::berth::internal_client::InternalClient;
use berth_proto::berth::ReadIndexRequest;
use berth_raft::openraft::errors::{ClientWriteError, RaftError};
use berth_raft::openraft::raft::ReadPolicy;
use berth_raft::openraft::type_config::async_runtime::WatchReceiver;
use berth_raft::openraft::ChangeMembers;
use berth_raft::{typ, Connections, Node, StateHandle};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::state::{Command, Request, Response, State};

/// How long a write may take, leader search and forwarding included.
pub const WRITE_DEADLINE: Duration = Duration::from_secs(3);
/// How long a linearizable read may wait for the leader's confirmation and for this
/// replica to catch up.
pub const READ_DEADLINE: Duration = Duration::from_secs(3);
/// Membership changes wait for a new learner to catch up, which can take longer.
pub const MEMBERSHIP_DEADLINE: Duration = Duration::from_secs(60);

/// Work that only the leader can do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum LeaderCall {
    /// Propose a request to the Raft log and return what applying it answered.
    Write(Box<Request>),
    /// Add a learner (waiting until it caught up), then promote it when `voter`.
    AddMember { id: u64, grpc: String, voter: bool },
    /// Remove a member; its id is retired for good.
    RemoveMember { id: u64 },
}

/// A [`LeaderCall`] as it travels to the leader, with what the API caller behind it
/// proved (None for the node's own work: agent reports, plans, registration).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaderRequest {
    pub call: LeaderCall,
    pub credentials: Option<super::auth::Credentials>,
}

/// The leader's answer to a [`LeaderCall`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum LeaderReply {
    Write(Response),
    Membership,
}

pub struct Proposer {
    id: u64,
    raft: typ::Raft<State>,
    state: StateHandle<State>,
    connections: Arc<Connections>,
    /// Membership changes run one at a time (openraft also refuses overlapping ones).
    membership: tokio::sync::Mutex<()>,
    boot: u64,
    counter: AtomicU64,
    /// This node's disk (`server::disk`): writes are refused while it is not usable.
    disk: Arc<super::disk::Disk>,
    /// Concurrent linearizable reads share read-index rounds (`server::coalesce`).
    read_rounds: super::coalesce::Coalesced<Result<u64, ApiError>>,
    /// Calls forwarded to the leader, on one stream to the leader (`server::forward`).
    forwarder: super::forward::Forwarder,
}

/// Wall-clock milliseconds since the epoch (what the leader stamps on requests).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn not_leader() -> ApiError {
    ApiError::unavailable("not_leader", "this node is not the leader")
}

fn no_quorum(what: &str, d: Duration) -> ApiError {
    ApiError::unavailable(
        "no_quorum",
        format!(
            "{what} did not complete within {} ms: the leader cannot reach a majority. \
             A write's outcome is unknown; retry it with the same Idempotency-Key",
            d.as_millis()
        ),
    )
}

impl Proposer {
    pub fn new(
        id: u64,
        raft: typ::Raft<State>,
        state: StateHandle<State>,
        connections: Arc<Connections>,
        disk: Arc<super::disk::Disk>,
    ) -> Self {
        let boot = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let membership = tokio::sync::Mutex::new(());
        let (counter, read_rounds) = (AtomicU64::new(0), Default::default());
        Self {
            id,
            raft,
            state,
            connections,
            membership,
            boot,
            counter,
            disk,
            read_rounds,
            forwarder: Default::default(),
        }
    }

    /// Refuses work while this node's disk is not usable: as the node a client asked
    /// (`disk_full`, `disk_read_only`), or as the leader (`leader_disk_full`: the
    /// asking node retries while leadership moves on).
    fn disk_usable(&self, as_leader: bool) -> Result<(), ApiError> {
        let Some(p) = self.disk.problem() else { return Ok(()) };
        let (code, whose) = if as_leader { ("leader_disk_full", "leader") } else { (p.code, "node") };
        Err(ApiError::unavailable(
            code,
            format!("{whose} {} cannot take writes ({}): {}; nothing was applied", self.id, p.code, p.message),
        ))
    }

    /// A request id unique across the cluster: node id, boot time, counter.
    pub fn new_request_id(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("n{}-{:x}-{n}", self.id, self.boot)
    }

    /// Proposes `cmd` through the leader and returns what applying it answered.
    /// `request_id` (an Idempotency-Key) makes retries of the same operation safe.
    pub async fn write(&self, cmd: Command, request_id: Option<String>) -> Result<Response, ApiError> {
        let req = Request { id: request_id.unwrap_or_else(|| self.new_request_id()), at_ms: 0, cmd };
        match self.call_leader(LeaderCall::Write(Box::new(req)), WRITE_DEADLINE).await? {
            LeaderReply::Write(r) => Ok(r),
            other => Err(ApiError::internal(format!("unexpected leader reply {other:?}"))),
        }
    }

    /// Proposes `cmd` here, as the leader of `term`, and never forwards it: for the
    /// leader's own decisions (plans, host liveness verdicts), which hold only in the
    /// term they were made in. A leader deposed meanwhile gets `not_leader`; its
    /// successor decides again from its own view (a paused and resumed leader's
    /// view of host liveness is stale: every host looks silent to it).
    pub async fn write_in_term(&self, cmd: Command, term: u64) -> Result<Response, ApiError> {
        if self.raft.metrics().borrow_watched().current_term != term {
            return Err(not_leader());
        }
        let req = Request { id: self.new_request_id(), at_ms: 0, cmd };
        match self
            .execute(LeaderRequest { call: LeaderCall::Write(Box::new(req)), credentials: None }, WRITE_DEADLINE)
            .await?
        {
            LeaderReply::Write(r) => Ok(r),
            other => Err(ApiError::internal(format!("unexpected leader reply {other:?}"))),
        }
    }

    /// Adds a member (or promotes a learner); returns once committed.
    pub async fn add_member(&self, id: u64, grpc: String, voter: bool) -> Result<(), ApiError> {
        self.call_leader(LeaderCall::AddMember { id, grpc, voter }, MEMBERSHIP_DEADLINE).await.map(|_| ())
    }

    /// Removes a member; returns once committed.
    pub async fn remove_member(&self, id: u64) -> Result<(), ApiError> {
        self.call_leader(LeaderCall::RemoveMember { id }, MEMBERSHIP_DEADLINE).await.map(|_| ())
    }

    /// The current leader, waiting for one until `deadline`.
    async fn wait_for_leader(&self, deadline: Instant) -> Result<u64, ApiError> {
        let mut rx = self.raft.metrics();
        loop {
            if let Some(l) = rx.borrow_and_update().current_leader {
                return Ok(l);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, rx.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => return Err(ApiError::unavailable("shutting_down", "this node is shutting down")),
                Err(_) => {
                    return Err(ApiError::unavailable(
                        "no_leader",
                        "the cluster has no leader (no majority of voters can reach each other)",
                    ))
                }
            }
        }
    }

    /// The gRPC address of node `id`, from the Raft membership.
    fn grpc_addr(&self, id: u64) -> Option<String> {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        m.membership_config.membership().get_node(&id).map(|n| n.addr.clone())
    }

    /// Runs `call` on the leader, wherever it is, until `budget` runs out.
    pub async fn call_leader(&self, call: LeaderCall, budget: Duration) -> Result<LeaderReply, ApiError> {
        self.disk_usable(false)?;
        // The API request this runs for (if any): the leader checks its token again,
        // on its own state — this node's replica may be behind a revocation.
        let request = LeaderRequest { call, credentials: super::auth::current() };
        let deadline = Instant::now() + budget;
        let mut last_err = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(last_err.unwrap_or_else(|| no_quorum("the request", budget)));
            }
            let leader = self.wait_for_leader(deadline).await?;
            let result = if leader == self.id {
                self.execute(request.clone(), left).await
            } else {
                self.forward(leader, &request, left).await
            };
            match result {
                Ok(r) => return Ok(r),
                // The leader moved, is unreachable, or is handing over (its disk is
                // not usable): look again, a little later.
                Err(e) if e.code == "not_leader" || e.code == "unreachable" || e.code == "leader_disk_full" => {
                    last_err = Some(if e.code == "unreachable" {
                        ApiError::unavailable("no_leader", format!("the leader is unreachable: {}", e.message))
                    } else {
                        e
                    });
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn forward(&self, leader: u64, call: &LeaderRequest, left: Duration) -> Result<LeaderReply, ApiError> {
        let addr = self
            .grpc_addr(leader)
            .ok_or_else(|| ApiError::unavailable("unreachable", format!("no address for leader {leader}")))?;
        let channel = self
            .connections
            .get(&addr)
            .map_err(|e| ApiError::unavailable("unreachable", format!("bad address {addr}: {e}")))?;
        let command = berth_raft::codec::encode(call).map_err(|e| ApiError::internal(e.to_string()))?;
        match self.forwarder.call(&addr, channel, command, left).await {
            Err(status) => Err(match status.code() {
                tonic::Code::Unavailable => ApiError::unavailable("unreachable", status.message().to_string()),
                tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => no_quorum("the forwarded request", left),
                _ => ApiError::internal(format!("leader {leader} failed: {}", status.message())),
            }),
            Ok(result) => {
                let result: Result<LeaderReply, ApiError> =
                    berth_raft::codec::decode(&result).map_err(|e| ApiError::internal(e.to_string()))?;
                result
            }
        }
    }

    /// Runs `call` here, if this node leads. Never forwards (the other side of
    /// `forward`).
    pub async fn execute(&self, request: LeaderRequest, left: Duration) -> Result<LeaderReply, ApiError> {
        if !self.raft.is_leader() {
            return Err(not_leader());
        }
        self.disk_usable(true)?;
        if let Some(c) = &request.credentials {
            super::auth::check_on_leader(&self.state.read().state, c)?;
        }
        match request.call {
            LeaderCall::Write(mut req) => {
                req.at_ms = now_ms();
                match tokio::time::timeout(left, self.raft.client_write(*req)).await {
                    Err(_) => Err(no_quorum("the write", left)),
                    Ok(Ok(resp)) => Ok(LeaderReply::Write(resp.data)),
                    Ok(Err(e)) => Err(client_write_error(e)),
                }
            }
            LeaderCall::AddMember { id, grpc, voter } => {
                let _one_at_a_time = self.membership.lock().await;
                self.add_member_here(id, grpc, voter, left).await?;
                Ok(LeaderReply::Membership)
            }
            LeaderCall::RemoveMember { id } => {
                let _one_at_a_time = self.membership.lock().await;
                self.remove_member_here(id, left).await?;
                Ok(LeaderReply::Membership)
            }
        }
    }

    fn membership_sets(&self) -> (BTreeSet<u64>, BTreeSet<u64>, std::collections::BTreeMap<u64, String>) {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let nodes: std::collections::BTreeMap<u64, String> =
            membership.nodes().map(|(id, n)| (*id, n.addr.clone())).collect();
        let learners = nodes.keys().filter(|id| !voters.contains(id)).copied().collect();
        (voters, learners, nodes)
    }

    async fn add_member_here(&self, id: u64, grpc: String, voter: bool, left: Duration) -> Result<(), ApiError> {
        if id == 0 {
            return Err(ApiError::invalid("invalid_member", "node id 0 is reserved; ids start at 1"));
        }
        if self.state.read().state.nodes.retired.contains(&id) {
            return Err(ApiError::conflict(
                "id_retired",
                format!("node id {id} was removed from the cluster and cannot be used again; give the node a new id"),
            ));
        }
        let (voters, _learners, nodes) = self.membership_sets();
        match nodes.get(&id) {
            Some(addr) if addr != &grpc => {
                return Err(ApiError::conflict(
                    "member_exists",
                    format!("node {id} is already a member with gRPC address {addr}"),
                ))
            }
            Some(_) => {}
            None => {
                let fut = self.raft.add_learner(id, Node { addr: grpc.clone() }, true);
                match tokio::time::timeout(left, fut).await {
                    Err(_) => return Err(no_quorum("adding the learner", left)),
                    Ok(Err(e)) => return Err(client_write_error(e)),
                    Ok(Ok(_)) => {}
                }
            }
        }
        if voter && !voters.contains(&id) {
            let change = ChangeMembers::AddVoterIds([id].into());
            match tokio::time::timeout(left, self.raft.change_membership(change, false)).await {
                Err(_) => return Err(no_quorum("promoting the learner", left)),
                Ok(Err(e)) => return Err(client_write_error(e)),
                Ok(Ok(_)) => {}
            }
        }
        self.wait_membership(left, |voters, nodes| nodes.contains_key(&id) && (!voter || voters.contains(&id))).await
    }

    /// One step of the **autopilot** (Consul's and Nomad's), on the leader: at most one
    /// membership change per call, never while another runs. In order: a `--peers`
    /// node that is not a member yet joins as a learner; a healthy learner is promoted
    /// while there are fewer than `want` voters, or when a voter has been dead for
    /// long (the voter set grows by one first, so a majority stays as safe as before);
    /// then the dead voter is demoted to learner (it may come back, and vote again
    /// only if promoted). `dead` and `healthy` judge a node by its heartbeats and,
    /// for `healthy`, by how far its log lags. Returns what it changed.
    pub async fn autopilot(
        &self,
        peers: &std::collections::BTreeMap<u64, String>,
        want: usize,
        retired: &BTreeSet<u64>,
        dead: impl Fn(u64) -> bool,
        healthy: impl Fn(u64) -> bool,
    ) -> Result<Option<String>, ApiError> {
        let Ok(_one_at_a_time) = self.membership.try_lock() else { return Ok(None) };
        let left = Duration::from_secs(10);
        let (voters, learners, nodes) = self.membership_sets();
        if let Some((id, addr)) = peers.iter().find(|(id, _)| !nodes.contains_key(id) && !retired.contains(id)) {
            let fut = self.raft.add_learner(*id, Node { addr: addr.clone() }, false);
            return match tokio::time::timeout(left, fut).await {
                Err(_) => Err(no_quorum("adding the learner", left)),
                Ok(Err(e)) => Err(client_write_error(e)),
                Ok(Ok(_)) => Ok(Some(format!("node {id} joined as a learner"))),
            };
        }
        let dead_voter = voters.iter().copied().find(|v| *v != self.id && dead(*v));
        let promote = learners.iter().copied().find(|l| healthy(*l));
        let change = match (dead_voter, promote) {
            (_, Some(l)) if voters.len() < want => {
                Some((ChangeMembers::AddVoterIds([l].into()), format!("learner {l} promoted to voter")))
            }
            (Some(v), Some(l)) if voters.len() <= want => Some((
                ChangeMembers::AddVoterIds([l].into()),
                format!("learner {l} promoted to voter in place of dead voter {v}"),
            )),
            (Some(v), _) if voters.len() > want => {
                Some((ChangeMembers::RemoveVoters([v].into()), format!("dead voter {v} demoted to learner")))
            }
            _ => None,
        };
        let Some((change, what)) = change else { return Ok(None) };
        match tokio::time::timeout(left, self.raft.change_membership(change, true)).await {
            Err(_) => Err(no_quorum("changing the voters", left)),
            Ok(Err(e)) => Err(client_write_error(e)),
            Ok(Ok(_)) => Ok(Some(what)),
        }
    }

    async fn remove_member_here(&self, id: u64, left: Duration) -> Result<(), ApiError> {
        let (voters, learners, _) = self.membership_sets();
        if !voters.contains(&id) && !learners.contains(&id) {
            return Err(ApiError::not_found("member_not_found", format!("node {id} is not a member")));
        }
        if voters.contains(&id) && voters.len() == 1 {
            return Err(ApiError::conflict("last_voter", format!("node {id} is the last voter")));
        }
        // Retire the id first: if the removal then fails, the id is merely unusable,
        // never reusable while it still holds a vote.
        let retire = Request { id: format!("retire-{id}"), at_ms: now_ms(), cmd: Command::RetireNode { id } };
        match tokio::time::timeout(left, self.raft.client_write(retire)).await {
            Err(_) => return Err(no_quorum("retiring the node id", left)),
            Ok(Err(e)) => return Err(client_write_error(e)),
            Ok(Ok(_)) => {}
        }
        let change = if voters.contains(&id) {
            ChangeMembers::RemoveVoters([id].into())
        } else {
            ChangeMembers::RemoveNodes([id].into())
        };
        match tokio::time::timeout(left, self.raft.change_membership(change, false)).await {
            Err(_) => return Err(no_quorum("removing the member", left)),
            Ok(Err(e)) => return Err(client_write_error(e)),
            Ok(Ok(_)) => {}
        }
        self.wait_membership(left, |voters, nodes| !voters.contains(&id) && !nodes.contains_key(&id)).await
    }

    /// Waits until the committed membership (a uniform config, not a joint one)
    /// satisfies `done`: the caller's next read then sees the change.
    async fn wait_membership(
        &self,
        left: Duration,
        done: impl Fn(&BTreeSet<u64>, &std::collections::BTreeMap<u64, String>) -> bool,
    ) -> Result<(), ApiError> {
        let deadline = Instant::now() + left;
        let mut rx = self.raft.metrics();
        loop {
            let ok = {
                let m = rx.borrow_watched();
                let membership = m.committed_membership_config.membership();
                let uniform = membership.get_joint_config().len() == 1;
                let voters: BTreeSet<u64> = membership.voter_ids().collect();
                let nodes = membership.nodes().map(|(id, n)| (*id, n.addr.clone())).collect();
                uniform && done(&voters, &nodes)
            };
            if ok {
                return Ok(());
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() || tokio::time::timeout(remaining, rx.changed()).await.is_err() {
                return Err(no_quorum("committing the membership change", left));
            }
        }
    }

    /// Waits until a read on this node's replica would be linearizable: until it has
    /// applied a read index the leader confirmed after this call began. Concurrent
    /// calls share the confirmation (`server::coalesce`).
    pub async fn linearize(&self) -> Result<(), ApiError> {
        let deadline = Instant::now() + READ_DEADLINE;
        // Bounded by this read's own deadline, however long the round it queued
        // behind took (one without a quorum takes its whole deadline).
        let index = match tokio::time::timeout(READ_DEADLINE, self.read_rounds.run(|| self.read_index())).await {
            Ok(index) => index?,
            Err(_) => return Err(no_quorum("the linearizable read", READ_DEADLINE)),
        };
        if self.state.wait_applied(index, deadline.saturating_duration_since(Instant::now())).await {
            return Ok(());
        }
        Err(ApiError::unavailable(
            "replica_behind",
            format!("this node has not applied index {index} yet; retry, or read with ?stale=true"),
        ))
    }

    /// Read-index rounds run for [`Self::linearize`] since the node started.
    pub fn read_rounds(&self) -> u64 {
        self.read_rounds.rounds()
    }

    /// One read-index round: the index the leader, wherever it is, confirms with a
    /// quorum now.
    async fn read_index(&self) -> Result<u64, ApiError> {
        let deadline = Instant::now() + READ_DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(no_quorum("the linearizable read", READ_DEADLINE));
            }
            let leader = self.wait_for_leader(deadline).await?;
            let index = if leader == self.id {
                match self.read_index_here(left).await {
                    Ok(i) => i,
                    Err(e) if e.code == "not_leader" => continue,
                    Err(e) => return Err(e),
                }
            } else {
                match self.read_index_remote(leader, left).await {
                    Ok(i) => i,
                    Err(e) if e.code == "not_leader" || e.code == "unreachable" => {
                        tokio::time::sleep(Duration::from_millis(25)).await;
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            };
            return Ok(index);
        }
    }

    /// The leader's side of a read-index: confirm leadership with a quorum, return
    /// the index a reader must have applied.
    pub async fn read_index_here(&self, left: Duration) -> Result<u64, ApiError> {
        if !self.raft.is_leader() {
            return Err(not_leader());
        }
        match tokio::time::timeout(left, self.raft.get_read_linearizer(ReadPolicy::ReadIndex)).await {
            Err(_) => Err(no_quorum("confirming leadership", left)),
            Ok(Ok(lin)) => Ok(lin.read_log_id().index()),
            Ok(Err(RaftError::APIError(_))) => Err(not_leader()),
            Ok(Err(RaftError::Fatal(f))) => Err(ApiError::unavailable("shutting_down", f.to_string())),
        }
    }

    async fn read_index_remote(&self, leader: u64, left: Duration) -> Result<u64, ApiError> {
        let addr = self
            .grpc_addr(leader)
            .ok_or_else(|| ApiError::unavailable("unreachable", format!("no address for leader {leader}")))?;
        let channel = self.connections.get(&addr).map_err(|e| ApiError::unavailable("unreachable", e.to_string()))?;
        let mut req = tonic::Request::new(ReadIndexRequest {});
        req.set_timeout(left);
        match tokio::time::timeout(left, InternalClient::new(channel).read_index(req)).await {
            Err(_) => Err(no_quorum("the read index", left)),
            Ok(Ok(r)) => Ok(r.into_inner().index),
            Ok(Err(s)) if s.code() == tonic::Code::Unavailable => {
                if s.message().starts_with("not_leader") {
                    Err(not_leader())
                } else {
                    Err(ApiError::unavailable("unreachable", s.message().to_string()))
                }
            }
            Ok(Err(s)) => Err(ApiError::unavailable("no_quorum", s.message().to_string())),
        }
    }
}

fn client_write_error(
    e: RaftError<berth_raft::TypeConfig<State>, ClientWriteError<berth_raft::TypeConfig<State>>>,
) -> ApiError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => not_leader(),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            ApiError::conflict("membership_change_refused", e.to_string())
        }
        RaftError::APIError(other) => ApiError::conflict("membership_change_refused", other.to_string()),
        RaftError::Fatal(f) => ApiError::unavailable("shutting_down", format!("raft stopped: {f}")),
    }
}
