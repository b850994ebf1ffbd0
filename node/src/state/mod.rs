//! # The replicated domain state
//!
//! Everything the cluster must agree on lives in [`State`], replicated by Raft through
//! `berth-raft`: the node registry, the IP ledger, and (with the next issues) apps,
//! versions, instances and placements. There is one way in — a [`Request`] carrying a
//! [`Command`] — and apply is a `match` calling one small function per variant
//! (Nomad's FSM shape).
//!
//! ## Invariants
//!
//! - Apply is deterministic: no clock (time comes from the leader-stamped
//!   [`Request::at_ms`]), no randomness, no I/O.
//! - A request id is applied at most once within the dedup window (see [`dedup`]).
//! - An address is allocated to at most one owner at a time: allocation chooses the
//!   address inside apply ([`ipam`]).
//! - The replicated clock never goes backwards, even across leaders with skewed clocks.

pub mod apps;
pub mod command;
pub mod dedup;
pub mod events;
pub mod ipam;
pub mod nodes;
pub mod persistent;
pub mod tokens;
pub mod webhooks;

use std::collections::BTreeMap;
use std::io;

use berth_raft::StateMachine;
use serde::{Deserialize, Serialize};

use self::apps::Apps;
pub use self::command::{Command, DomainError, ErrorKind, NewInstance, Plan, Reply, Report, Request, Response};
use self::dedup::Dedup;
use self::ipam::Ipam;
use self::nodes::Nodes;

/// The whole replicated state.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct State {
    /// The replicated clock: the largest leader timestamp applied so far (ms).
    pub clock_ms: u64,
    /// The index of the last applied command.
    pub applied_index: u64,
    pub nodes: Nodes,
    pub ipam: Ipam,
    pub apps: Apps,
    /// Registers: small replicated cells (the chaos suite's linearizability workload).
    pub registers: BTreeMap<String, String>,
    dedup: Dedup,
    /// The last events (`events`), derived in apply.
    pub events: events::Events,
    pub webhooks: webhooks::Webhooks,
    /// API tokens (hashes only).
    pub tokens: tokens::Tokens,
}

impl State {
    fn dispatch(&mut self, cmd: Command) -> Response {
        let now = self.clock_ms;
        match cmd {
            Command::RegisterNode(info) => self.nodes.register(info),
            Command::RetireNode { id } => self.retire_node(id),
            Command::CreatePool { name, subnet, gateway, range } => {
                self.ipam.create_pool(&name, subnet, gateway, range)
            }
            Command::DeletePool { name } => self.ipam.delete_pool(&name),
            Command::Allocate { pool, owner, ip } => self.ipam.allocate(&pool, &owner, ip, now),
            Command::Release { pool, ip } => self.ipam.release(&pool, ip),
            Command::PutApp { spec } => self.put_app(spec),
            Command::CreateApp { spec } => self.create_app(spec),
            Command::ScaleApp { id, instances } => self.scale_app(&id, instances),
            Command::DeleteApp { id } => self.delete_app(&id),
            Command::RollbackApp { id, version } => self.rollback_app(&id, version),
            Command::RestartApp { id } => self.restart_app(&id),
            Command::ApplyPlan(plan) => self.apply_plan(plan),
            Command::ReportInstance(report) => self.report_instance(report),
            Command::SetHostState { id, state } => self.set_host_state(id, state),
            Command::CancelDeployment { app } => self.cancel_deployment(&app),
            Command::SetDraining { id, draining } => self.set_draining(id, draining),
            Command::AddWebhook { url, app, types } => self.webhooks.add(url, app, types, now, self.events.last),
            Command::RemoveWebhook { id } => self.webhooks.remove(id),
            Command::WebhookProgress { id, upto, error } => self.webhooks.progress(id, upto, error, now),
            Command::CreateToken(token) => self.tokens.create(token, now),
            Command::RevokeToken { id } => self.tokens.revoke(&id),
            Command::RegisterWrite { key, value } => {
                self.registers.insert(key, value.clone());
                Response(Ok(Reply::Register { value }))
            }
            Command::RegisterCas { key, from, to } => {
                let current = self.registers.get(&key).map(String::as_str).unwrap_or("null");
                if current == from {
                    self.registers.insert(key, to.clone());
                    Response(Ok(Reply::Register { value: to }))
                } else {
                    Response(Err(DomainError::conflict(
                        "cas_mismatch",
                        format!("register {key:?} holds {current}, not {from}"),
                    )))
                }
            }
        }
    }

    /// How many request ids the dedup window holds.
    pub fn dedup_len(&self) -> usize {
        self.dedup.len()
    }
}

impl StateMachine for State {
    type Command = Request;
    type Response = Response;

    /// Plans that place or change many instances.
    fn is_heavy(req: &Request) -> bool {
        match &req.cmd {
            Command::ApplyPlan(p) => p.places.len() + p.creates.len() + p.stops.len() + p.upgrades.len() > 256,
            _ => false,
        }
    }

    /// The IP ledger's, the registers', webhook progress and tokens: no agent, scheduler or
    /// registration loop acts on them (whoever allocates gets the address in the reply),
    /// and they make no events.
    fn is_quiet(req: &Request) -> bool {
        matches!(
            req.cmd,
            Command::Allocate { .. }
                | Command::Release { .. }
                | Command::RegisterWrite { .. }
                | Command::RegisterCas { .. }
                | Command::WebhookProgress { .. }
                | Command::CreateToken(_)
                | Command::RevokeToken { .. }
        )
    }

    fn apply(&mut self, index: u64, req: Request) -> Response {
        berth_raft::stages::mark(berth_raft::stages::Step::Apply);
        self.clock_ms = self.clock_ms.max(req.at_ms);
        self.applied_index = index;
        let fp = if req.id.is_empty() { 0 } else { dedup::fingerprint(&req.cmd) };
        match self.dedup.check(&req.id, fp) {
            dedup::Seen::New => {}
            dedup::Seen::Repeat(previous) => {
                tracing::debug!(%index, id = %req.id, "duplicate request answered from the dedup record");
                return previous.clone();
            }
            dedup::Seen::Reused => {
                let key = req.id.strip_prefix("key:").unwrap_or(&req.id);
                return Response(Err(DomainError::conflict(
                    "idempotency_key_reused",
                    format!(
                        "Idempotency-Key {key:?} was used for a different request in the last {} minutes; \
                         a new request needs a new key",
                        dedup::WINDOW_MS / 60_000
                    ),
                )));
            }
        }
        let before = events::Before::note(self, &req.cmd);
        let response = self.dispatch(req.cmd);
        for kind in before.events(self) {
            self.events.push(index, self.clock_ms, kind);
        }
        self.dedup.record(&req.id, fp, self.clock_ms, &response);
        response
    }

    fn snapshot(&self) -> io::Result<Vec<u8>> {
        berth_raft::codec::encode(self)
    }

    fn restore(&mut self, data: &[u8]) -> io::Result<()> {
        *self = berth_raft::codec::decode(data)?;
        self.apps.rebuild_index();
        Ok(())
    }
}

#[cfg(test)]
mod tests;
