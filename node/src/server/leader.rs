//! Leader-only work: the scheduler loop and host liveness.
//!
//! Both start when this node becomes leader and stop when it stops being leader
//! (SwarmKit's `becomeLeader`/`becomeFollower`). Everything they decide is proposed
//! as commands; nothing here touches a host.
//!
//! **Liveness** is soft state: agents heartbeat the leader (every tenth of their
//! deadline, at most every second); a host silent for its deadline (`--host-deadline-s`,
//! announced in its registration: `crate::timing`) is marked down by a command, and its
//! instances are placed elsewhere with their IPs, as each app's `unreachable` policy
//! says. A new leader gives every host a fresh deadline from the moment it took over —
//! seconds, not Nomad's 5-minute grace (nomad#1747) — and a host that heartbeats again
//! is marked up.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_raft::openraft::Instant as _;

use crate::scheduler;
use crate::server::Node;
use crate::state::nodes::HostState;
use crate::state::{Command, Plan};
use crate::timing::HostTiming;

/// At most this many new (and this many moved) instances per proposed plan: one Raft
/// entry of ~3 MB (~20 MB with the longest app ids); AppendEntries messages are cut
/// to a byte budget, so entry size is bounded only by the gRPC message limit. Bigger
/// rounds mean fewer of the per-round passes over an app's instances (C1M: 10
/// rounds instead of 50).
const MAX_PLAN_ITEMS: usize = 100_000;
/// The scheduler runs on every applied change, and at least this often.
const TICK: Duration = Duration::from_millis(500);

/// When each host was last heard from (meaningful on the leader only).
#[derive(Default)]
pub struct Liveness {
    seen: Mutex<HashMap<u64, Instant>>,
    /// When this node last became leader: a host not heard from since counts as
    /// silent since then (it may have registered after the leader took over).
    since: Mutex<Option<Instant>>,
}

impl Liveness {
    pub fn record(&self, host: u64) {
        self.seen.lock().unwrap().insert(host, Instant::now());
    }

    fn reset(&self, hosts: impl Iterator<Item = u64>) {
        let now = Instant::now();
        *self.since.lock().unwrap() = Some(now);
        let mut seen = self.seen.lock().unwrap();
        seen.clear();
        for h in hosts {
            seen.insert(h, now);
        }
    }

    fn silent_for(&self, host: u64) -> Duration {
        let since = self.since.lock().unwrap().map(|t| t.elapsed()).unwrap_or(Duration::ZERO);
        self.seen.lock().unwrap().get(&host).map(|t| t.elapsed()).unwrap_or(since)
    }
}

/// Runs for the life of the node; leads whenever this node is leader.
///
/// One `lead` per term: a leader deposed and elected again (a pause, a partition
/// that heals) starts over — catches up, resets liveness, marks the new term ready —
/// however briefly it was away.
pub async fn run(node: Arc<Node>) {
    use berth_raft::openraft::type_config::async_runtime::WatchReceiver as _;
    // Role and leader changes only (not every applied entry).
    let mut server = node.raft.server_metrics();
    loop {
        if let Some(term) = leading_term(&node) {
            tracing::info!(id = node.id, term, "leader: scheduler and liveness started");
            lead(&node, term).await;
            tracing::info!(id = node.id, term, "scheduler and liveness stopped");
        }
        tokio::select! {
            _ = node.stopping() => return,
            changed = server.changed() => {
                if changed.is_err() {
                    tracing::error!(id = node.id, "Raft has stopped; no more scheduling from this node");
                    return;
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

/// The term this node leads in, if it leads and may. A leader whose disk is not
/// usable leads nothing (`server::disk`): its proposals could not be stored, and it
/// is handing over.
fn leading_term(node: &Node) -> Option<u64> {
    use berth_raft::openraft::type_config::async_runtime::WatchReceiver;
    if node.disk.problem().is_some() {
        return None;
    }
    let m = node.raft.metrics();
    let m = m.borrow_watched();
    (m.current_leader == Some(node.id)).then_some(m.current_term)
}

/// Waits until this leader's replica has applied its read index — everything
/// committed before its term included — and marks the term ready (see
/// [`Node::leader_ready`]). False if it lost leadership or its quorum meanwhile.
async fn catch_up(node: &Node, term: u64) -> bool {
    let deadline = crate::server::proposer::READ_DEADLINE;
    match node.proposer.read_index_here(deadline).await {
        Ok(index) if node.state.wait_applied(index, deadline).await => {
            if leading_term(node) != Some(term) {
                return false;
            }
            node.leader_ready.store(term, std::sync::atomic::Ordering::SeqCst);
            true
        }
        Ok(index) => {
            tracing::warn!(index, "the new leader did not apply its read index in time");
            false
        }
        Err(e) => {
            tracing::debug!(error = %e, "the new leader cannot confirm its read index");
            false
        }
    }
}

async fn lead(node: &Arc<Node>, term: u64) {
    // Plan only on a replica as new as the cluster's.
    if !catch_up(node, term).await {
        return;
    }
    let hosts: Vec<u64> = node.state.read().state.nodes.registered.keys().copied().collect();
    node.liveness.reset(hosts.into_iter());
    let pilot = tokio::spawn(autopilot(node.clone()));
    let _stop_pilot = AbortOnDrop(pilot);
    let _stop_hooks = AbortOnDrop(tokio::spawn(crate::server::webhooks::deliver(node.clone())));
    let mut applied = node.state.subscribe_changes();
    let mut last_plan: Option<(Plan, Instant)> = None;
    loop {
        // Also stops autopilot and webhook delivery (their tasks end with this one).
        // Leading again in a later term is a new leadership (`run`).
        if leading_term(node) != Some(term) {
            return;
        }
        for (host, state) in liveness_verdicts(node) {
            tracing::warn!(host, ?state, "host liveness changed");
            if let Err(e) = node.proposer.write_in_term(Command::SetHostState { id: host, state }, term).await {
                tracing::debug!(error = %e, "cannot record host state");
            }
        }
        // Planning a large round takes a while: off the async worker (see blocking::run).
        let plan = berth_raft::blocking::run(|| {
            let replica = node.state.read();
            scheduler::plan_limited(&replica.state, MAX_PLAN_ITEMS, crate::server::proposer::now_ms())
        });
        // The same plan again right away means apply refused part of it (state moved
        // under the scheduler): propose it again only after a pause.
        let repeat = last_plan.as_ref().is_some_and(|(p, at)| p == &plan && at.elapsed() < Duration::from_secs(2));
        if !plan.is_empty() && !repeat {
            last_plan = Some((plan.clone(), Instant::now()));
            if let Err(e) = node.proposer.write_in_term(Command::ApplyPlan(plan), term).await {
                tracing::debug!(error = %e, "plan not committed");
            }
        }
        tokio::select! {
            _ = node.stopping() => return,
            _ = applied.changed() => {}
            _ = tokio::time::sleep(TICK) => {}
        }
    }
}

/// Aborts a task when dropped (the autopilot ends with the leadership that runs it).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The autopilot while this node leads: learners for `--peers` that are not members,
/// and a healthy learner in place of a voter dead for `--autopilot-dead-after-s`.
async fn autopilot(node: Arc<Node>) {
    use berth_raft::openraft::type_config::async_runtime::WatchReceiver;
    /// A learner this far behind the leader's log is not healthy enough to vote.
    const MAX_LAG: u64 = 1000;
    let want = node.config.voters.len();
    loop {
        tokio::select! {
            _ = node.stopping() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let (last, matched) = {
            let m = node.raft.metrics();
            let m = m.borrow_watched();
            let matched: HashMap<u64, u64> = m
                .replication
                .as_ref()
                .map(|r| r.iter().map(|(id, l)| (*id, l.as_ref().map(|l| l.index).unwrap_or(0))).collect())
                .unwrap_or_default();
            (m.last_log_index.unwrap_or(0), matched)
        };
        let retired = node.state.read().state.nodes.retired.clone();
        let dead_after = node.config.autopilot_dead_after;
        let result = node
            .proposer
            .autopilot(
                &node.config.peers,
                want,
                &retired,
                |id| node.liveness.silent_for(id) > dead_after,
                |id| {
                    node.liveness.silent_for(id) < Duration::from_secs(3)
                        && matched.get(&id).is_some_and(|m| last.saturating_sub(*m) <= MAX_LAG)
                },
            )
            .await;
        match result {
            Ok(Some(what)) => tracing::warn!("autopilot: {what}"),
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, "autopilot: no change"),
        }
    }
}

/// Hosts whose liveness differs from what the state says.
fn liveness_verdicts(node: &Node) -> Vec<(u64, HostState)> {
    let replica = node.state.read();
    let nodes = &replica.state.nodes;
    let mut out = Vec::new();
    for (id, info) in &nodes.registered {
        let silent = node.liveness.silent_for(*id);
        // The host's own deadline: it fences itself after half of it.
        let timing = HostTiming::new(Duration::from_millis(info.host_deadline_ms));
        let down = nodes.is_down(*id);
        if !down && silent > timing.deadline() {
            out.push((*id, HostState::Down));
        } else if down && silent < timing.back_within() {
            out.push((*id, HostState::Up));
        }
    }
    out
}

/// How long ago a quorum last acknowledged this node as leader (None: not leader).
pub fn quorum_age(node: &Node) -> Option<Duration> {
    use berth_raft::openraft::type_config::async_runtime::WatchReceiver;
    let m = node.raft.metrics();
    let m = m.borrow_watched();
    if m.current_leader != Some(node.id) {
        return None;
    }
    // The only voter is its own quorum (openraft does not refresh the acknowledgement
    // time of a single-voter cluster, which then fenced itself 5 s after it started).
    let mut voters = m.membership_config.membership().voter_ids();
    if voters.next() == Some(node.id) && voters.next().is_none() {
        return Some(Duration::ZERO);
    }
    Some(m.last_quorum_acked.as_ref().map(|t| t.elapsed()).unwrap_or(Duration::MAX))
}

/// Every node: tell the leader this host is alive.
///
/// Once per heartbeat interval while in contact. A host out of contact is counting
/// down to fencing itself, so it does not wait out the interval: a failed heartbeat is
/// retried after a quarter of it, and a change of leader (or of this node's role) is
/// acted on at once — an answer still awaited from the old leader is dropped. That
/// keeps the silence a leader partition costs at about the election plus one round
/// trip, well inside the fence timeout (`berth-bench contact`).
pub async fn heartbeat(node: Arc<Node>) {
    use berth_raft::openraft::type_config::async_runtime::WatchReceiver as _;
    let interval = node.timing().heartbeat_interval();
    let retry = interval / 4;
    // Role and leader changes only (not every applied entry).
    let mut server = node.raft.server_metrics();
    loop {
        server.borrow_and_update();
        let in_contact = tokio::select! {
            _ = node.stopping() => return,
            ok = beat(&node, interval) => ok,
            changed = server.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        };
        tokio::select! {
            _ = node.stopping() => return,
            _ = tokio::time::sleep(if in_contact { interval } else { retry }) => {}
            changed = server.changed(), if !in_contact => if changed.is_err() { return },
        }
    }
}

/// One heartbeat to the leader this node knows of; whether it made contact.
async fn beat(node: &Node, interval: Duration) -> bool {
    use berth_proto::berth::internal_client::InternalClient;
    use berth_proto::berth::HeartbeatRequest;
    use berth_raft::openraft::type_config::async_runtime::WatchReceiver;
    let (leader, term, addr) = {
        let m = node.raft.metrics();
        let m = m.borrow_watched();
        let addr = m.current_leader.and_then(|l| m.membership_config.membership().get_node(&l).map(|n| n.addr.clone()));
        (m.current_leader, m.current_term, addr)
    };
    match leader {
        Some(l) if l == node.id => {
            node.liveness.record(node.id);
            // A leader is in contact while a quorum acknowledges it — once its
            // replica caught up in this term.
            let ready = node.leader_ready.load(std::sync::atomic::Ordering::SeqCst) == term;
            let acked_at = quorum_age(node).and_then(|age| std::time::Instant::now().checked_sub(age));
            match (ready, acked_at) {
                (true, Some(at)) => {
                    node.contact.record(at);
                    true
                }
                _ => false,
            }
        }
        Some(_) => {
            let Some(ch) = addr.and_then(|a| node.connections.get(&a).ok()) else { return false };
            let mut req = tonic::Request::new(HeartbeatRequest { host: node.id });
            req.set_timeout(interval);
            let sent = std::time::Instant::now();
            let Ok(reply) = InternalClient::new(ch).heartbeat(req).await else { return false };
            // In contact as of the request, once the replica has applied what the
            // leader had committed.
            let committed = reply.into_inner().committed;
            let caught_up = node.state.wait_applied(committed, interval).await;
            if caught_up {
                node.contact.record(sent);
            }
            caught_up
        }
        None => false,
    }
}

/// Every node: proposes what the agent observed, latest report per instance first.
pub async fn report(node: Arc<Node>, mut rx: tokio::sync::mpsc::UnboundedReceiver<crate::state::Report>) {
    let mut pending: std::collections::BTreeMap<String, crate::state::Report> = Default::default();
    loop {
        if pending.is_empty() {
            tokio::select! {
                _ = node.stopping() => return,
                r = rx.recv() => match r {
                    Some(r) => { pending.insert(r.id.clone(), r); }
                    None => return,
                }
            }
        }
        while let Ok(r) = rx.try_recv() {
            pending.insert(r.id.clone(), r);
        }
        let Some((id, r)) = pending.pop_first() else { continue };
        if let Err(e) = node.proposer.write(Command::ReportInstance(r.clone()), None).await {
            tracing::debug!(error = %e, instance = %id, "report not committed; retrying");
            pending.entry(id).or_insert(r);
            tokio::select! {
                _ = node.stopping() => return,
                _ = tokio::time::sleep(Duration::from_millis(300)) => {}
            }
        }
    }
}
