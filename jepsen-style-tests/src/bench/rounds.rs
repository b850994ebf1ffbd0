//! `rounds`: what one scheduler round costs on a big steady state, in process.
//!
//! The state is built with the apply functions every replica runs: `hosts` simulated
//! hosts, one app of `instances` instances (each with an IP of a /12), placed by the
//! scheduler's own plans and reported running. Then each change below is applied to
//! the settled state and the round that follows is timed (`scheduler::plan_limited`,
//! as the leader calls it, with the leader's 100,000-item bound), several times each:
//!
//! - `idle`: nothing changed (the leader plans on every tick);
//! - `scale-up-1` / `scale-down-1`: the app by one instance;
//! - `instance-failed`: one instance reported failed (its agent restarts it);
//! - `new-app`: a 1-instance app deployed beside it;
//! - `host-down`: a host declared down: its ~`instances/hosts` instances lose it and
//!   are placed elsewhere with their IPs.
//!
//! The goal (issue 15): a steady-state cluster of 1M instances plans one change in
//! < 5 ms.

use std::time::Instant;

use anyhow::{bail, Result};
use berth_node::scheduler;
use berth_node::state::apps::spec::AppSpec;
use berth_node::state::apps::{Desired, Health, InstanceState};
use berth_node::state::nodes::HostState;
use berth_node::state::{Command, Report, Request, State};
use berth_raft::StateMachine;
use serde_json::json;

use super::placement::simulated_host;
use super::{emit, round, Latencies};

/// The leader's bound on the items of one plan (`server::leader`).
const MAX_PLAN_ITEMS: usize = 100_000;

struct World {
    s: State,
    index: u64,
}

impl World {
    fn apply(&mut self, cmd: Command) -> Result<()> {
        self.index += 1;
        let r = self.s.apply(self.index, Request { id: String::new(), at_ms: self.index, cmd });
        match r.0 {
            Ok(_) => Ok(()),
            Err(e) => bail!("apply refused: {e:?}"),
        }
    }

    fn plan(&self) -> berth_node::state::Plan {
        scheduler::plan_limited(&self.s, MAX_PLAN_ITEMS, self.s.clock_ms)
    }

    /// The plan with every app taking the full pass (the planner before the steady
    /// path): the anchor of this scenario.
    fn plan_full(&self) -> berth_node::state::Plan {
        scheduler::plan_with(&self.s, MAX_PLAN_ITEMS, self.s.clock_ms, false)
    }

    /// Plans and applies until the plan is empty.
    fn settle(&mut self) -> Result<usize> {
        for rounds in 0..1000 {
            let p = self.plan();
            if p.is_empty() {
                return Ok(rounds);
            }
            self.apply(Command::ApplyPlan(p))?;
        }
        bail!("the scheduler did not settle in 1000 rounds")
    }

    /// Every placed instance that is not running yet reports running, every stopping
    /// one stopped (and goes).
    fn run_all(&mut self) -> Result<()> {
        let reports: Vec<Report> = self
            .s
            .apps
            .instances()
            .filter(|i| i.host.is_some() && (i.state != InstanceState::Running || i.desired == Desired::Stop))
            .map(|i| Report {
                id: i.id.clone(),
                host: i.host.expect("placed"),
                epoch: i.epoch,
                state: if i.desired == Desired::Stop { InstanceState::Stopped } else { InstanceState::Running },
                health: Health::Healthy,
                message: None,
                restarts: 0,
            })
            .collect();
        for r in reports {
            self.apply(Command::ReportInstance(r))?;
        }
        Ok(())
    }

    /// Times the round after `change`, `times` times (settling in between, untimed).
    fn measure(&mut self, name: &str, times: usize, mut change: impl FnMut(&mut World) -> Result<()>) -> Result<()> {
        let (mut lat, mut full) = (Latencies::default(), Latencies::default());
        let mut items = 0;
        for _ in 0..times {
            change(self)?;
            let t = Instant::now();
            let before = self.plan_full();
            full.push(t.elapsed());
            let t = Instant::now();
            let p = self.plan();
            lat.push(t.elapsed());
            if p != before {
                bail!("{name}: the steady path planned differently from the full pass");
            }
            items += p.creates.len() + p.places.len() + p.stops.len() + p.upgrades.len();
            self.apply(Command::ApplyPlan(p))?;
            self.settle()?;
            self.run_all()?;
            self.settle()?;
        }
        emit(json!({
            "scenario": "rounds", "system": "berth", "change": name, "rounds": times,
            "instances": self.s.apps.instances().count(), "plan_items_per_round": items / times.max(1),
            "p50_ms": round(lat.quantile(0.5), 3), "p99_ms": round(lat.quantile(0.99), 3), "max_ms": round(lat.max(), 3),
            "full_pass_p50_ms": round(full.quantile(0.5), 3), "full_pass_max_ms": round(full.max(), 3),
            "goal": "< 5 ms per round for one change at 1M instances",
        }));
        Ok(())
    }
}

fn spec(id: &str, instances: u32) -> Result<AppSpec> {
    let spec = json!({"id": id, "cmd": ["sleep", "1000"], "instances": instances, "cpus": 0.01, "mem_mb": 1,
                      "network": {"pool": "bench"}});
    let spec = AppSpec::from_json(spec.to_string().as_bytes()).map_err(anyhow::Error::msg)?;
    spec.validate().map_err(anyhow::Error::msg)?;
    Ok(spec)
}

/// What a snapshot of this state costs: the clone taken under the state's read lock
/// (all apply waits for), then the serialization of the copy (off the lock).
fn snapshot(s: &State) -> Result<()> {
    let mut locked = Latencies::default();
    let mut copies = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        copies.push(s.clone());
        locked.push(t.elapsed());
    }
    let t = Instant::now();
    let bytes = copies[0].snapshot()?;
    let serialize_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    drop(copies);
    emit(json!({"scenario": "rounds", "phase": "snapshot", "instances": s.apps.instances().count(),
                "clone_under_lock_max_ms": round(locked.max(), 3), "serialize_s": round(serialize_s, 2),
                "bytes": bytes.len(), "drop_copies_ms": round(t.elapsed().as_secs_f64() * 1000.0, 1),
                "goal": "applies never wait > 50 ms for a snapshot"}));
    Ok(())
}

/// The scenario.
pub fn run(hosts: u64, instances: u32, times: usize) -> Result<()> {
    let mut w = World { s: State::default(), index: 0 };
    let built = Instant::now();
    w.apply(Command::CreatePool {
        name: "bench".into(),
        subnet: "100.64.0.0/12".parse()?,
        gateway: None,
        range: None,
    })?;
    for id in 1..=hosts {
        w.apply(Command::RegisterNode(simulated_host(1000 + id)))?;
    }
    w.apply(Command::PutApp { spec: spec("bench", instances)? })?;
    let rounds = w.settle()?;
    w.run_all()?;
    w.settle()?;
    emit(json!({"scenario": "rounds", "phase": "built", "hosts": hosts, "instances": instances,
                "placement_rounds": rounds, "seconds": round(built.elapsed().as_secs_f64(), 1)}));

    snapshot(&w.s)?;
    w.measure("idle", times, |_| Ok(()))?;
    let mut n = instances;
    w.measure("scale-up-1", times, |w| {
        n += 1;
        w.apply(Command::ScaleApp { id: "bench".into(), instances: n })
    })?;
    w.measure("scale-down-1", times, |w| {
        n -= 1;
        w.apply(Command::ScaleApp { id: "bench".into(), instances: n })
    })?;
    let mut k = 0;
    w.measure("instance-failed", times, |w| {
        k += 1;
        let i = w.s.apps.instances().nth(k * 997 % instances as usize).expect("instances").clone();
        w.apply(Command::ReportInstance(Report {
            id: i.id.clone(),
            host: i.host.expect("placed"),
            epoch: i.epoch,
            state: InstanceState::Failed,
            health: Health::Unhealthy,
            message: Some("bench".into()),
            restarts: 0,
        }))
    })?;
    let mut a = 0;
    w.measure("new-app", times, |w| {
        a += 1;
        w.apply(Command::PutApp { spec: spec(&format!("small{a}"), 1)? })
    })?;
    let mut h = 0;
    w.measure("host-down", times.min(5), |w| {
        h += 1;
        let id = 1000 + h;
        w.apply(Command::SetHostState { id, state: HostState::Down })
    })?;
    Ok(())
}
