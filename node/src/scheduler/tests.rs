//! Scheduler scenarios without Raft: a state is built with the same apply functions the
//! cluster uses, the plan is computed and applied, and the outcome is checked.

use std::collections::BTreeMap;

use berth_raft::StateMachine;

use crate::state::{Command, Plan, Report, Request, State};

/// [`super::plan`], checked against a plan in which every app takes the full pass: the
/// steady path must decide exactly what the full one does.
pub(crate) fn plan(state: &State) -> Plan {
    let fast = super::plan(state);
    let full = super::plan_with(state, usize::MAX, state.clock_ms, false);
    assert_eq!(fast, full, "the steady path planned differently from the full pass");
    fast
}
use crate::state::apps::spec::AppSpec;
use crate::state::apps::{Desired, Health, Instance, InstanceState};
use crate::state::nodes::{HostState, NodeInfo};

/// A state driven by hand: hosts, deploys, scheduler rounds, agent reports (also used
/// by other modules' tests that need a populated state).
pub(crate) struct World {
    pub(crate) s: State,
    index: u64,
}

impl World {
    pub(crate) fn new() -> Self {
        World { s: State::default(), index: 0 }
    }

    pub(crate) fn apply(&mut self, cmd: Command) -> crate::state::Response {
        self.index += 1;
        let r = self.s.apply(self.index, Request { id: String::new(), at_ms: self.index, cmd });
        assert!(self.s.apps.indexes_are_exact(), "the derived indexes drifted at entry {}", self.index);
        r
    }

    /// Creates pool `lan` (198.18.0.0/24).
    pub(crate) fn lan(&mut self) {
        let r = self.apply(Command::CreatePool {
            name: "lan".into(),
            subnet: "198.18.0.0/24".parse().unwrap(),
            gateway: None,
            range: None,
        });
        assert!(r.0.is_ok(), "{r:?}");
    }

    pub(crate) fn host(&mut self, id: u64, runtime: &str, cpus: f64, mem_mb: u64, labels: &[(&str, &str)]) {
        let info = NodeInfo {
            id,
            grpc: format!("h{id}:7401"),
            http: format!("h{id}:7481"),
            runtime: runtime.into(),
            cpus,
            mem_mb,
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            host_deadline_ms: 10_000,
        };
        assert!(self.apply(Command::RegisterNode(info)).0.is_ok());
    }

    pub(crate) fn deploy(&mut self, json: &str) {
        let spec = AppSpec::from_json(json.as_bytes()).unwrap();
        spec.validate().unwrap();
        let r = self.apply(Command::PutApp { spec });
        assert!(r.0.is_ok(), "{r:?}");
    }

    /// Plans and applies until nothing changes (at most `rounds`).
    pub(crate) fn settle(&mut self, rounds: usize) {
        for _ in 0..rounds {
            let p = plan(&self.s);
            if p.is_empty() {
                return;
            }
            self.apply(Command::ApplyPlan(p));
        }
    }

    /// Every agent reports its starting instances running and healthy.
    pub(crate) fn run_all(&mut self) {
        let reports: Vec<Report> = self
            .s
            .apps
            .instances()
            .filter(|i| i.host.is_some())
            .map(|i| Report {
                id: i.id.clone(),
                host: i.host.unwrap(),
                epoch: i.epoch,
                state: if i.desired == crate::state::apps::Desired::Stop {
                    InstanceState::Stopped
                } else {
                    InstanceState::Running
                },
                health: Health::Healthy,
                message: None,
                restarts: 0,
            })
            .collect();
        for r in reports {
            self.apply(Command::ReportInstance(r));
        }
    }

    fn hosts_of(&self, app: &str) -> Vec<Option<u64>> {
        self.s.apps.instances_of(app).map(|i| i.host).collect()
    }

    fn per_host(&self, app: &str) -> BTreeMap<u64, usize> {
        let mut m = BTreeMap::new();
        for h in self.hosts_of(app).into_iter().flatten() {
            *m.entry(h).or_default() += 1;
        }
        m
    }

    fn reason(&self, app: &str) -> Option<String> {
        self.s.apps.apps[app].pending_reason.clone()
    }
}

pub(crate) fn process_app(id: &str, n: u32, extra: &str) -> String {
    format!(r#"{{"id":"{id}","cmd":["sleep","100"],"instances":{n},"cpus":0.5,"mem_mb":100{extra}}}"#)
}

#[test]
fn instances_are_found_by_id_and_listed_in_creation_order() {
    let mut w = World::new();
    w.host(1, "process", 64.0, 65536, &[]);
    // Dashed app ids whose names are prefixes of one another.
    w.deploy(&process_app("my-app", 12, ""));
    w.deploy(&process_app("my-app-2", 1, ""));
    w.settle(3);
    let indexes: Vec<u64> = w.s.apps.instances_of("my-app").map(|i| i.index).collect();
    assert_eq!(indexes, (1..=12).collect::<Vec<_>>());
    assert_eq!(w.s.apps.instances_of("my-app-2").count(), 1);
    assert_eq!(w.s.apps.instance("my-app-10").map(|i| i.app.as_str()), Some("my-app"));
    assert_eq!(w.s.apps.instance("my-app-2-1").map(|i| i.app.as_str()), Some("my-app-2"));
    for id in ["my-app-010", "my-app-13", "my-app", "my-app-", "other-1", "my-app-x", ""] {
        assert!(w.s.apps.instance(id).is_none(), "{id:?} is no instance");
    }
    assert_eq!(w.s.apps.instances().count(), 13);
}

#[test]
fn instances_spread_over_hosts_fewest_first() {
    let mut w = World::new();
    for h in 1..=3 {
        w.host(h, "process", 4.0, 4096, &[]);
    }
    w.deploy(&process_app("web", 6, ""));
    w.settle(3);
    assert_eq!(w.per_host("web"), BTreeMap::from([(1, 2), (2, 2), (3, 2)]));
    assert_eq!(w.reason("web"), None);
}

#[test]
fn resources_are_never_over_committed_and_the_reason_is_given() {
    let mut w = World::new();
    w.host(1, "process", 1.0, 4096, &[]);
    w.host(2, "process", 1.0, 150, &[]);
    w.deploy(&process_app("web", 4, ""));
    w.settle(3);
    // host 1: two of 0.5 cpu; host 2: memory for one of 100 MiB.
    assert_eq!(w.per_host("web"), BTreeMap::from([(1, 2), (2, 1)]));
    let pending = w.s.apps.instances_of("web").filter(|i| i.host.is_none()).count();
    assert_eq!(pending, 1);
    let reason = w.reason("web").unwrap();
    assert!(reason.contains("1 host(s) lack cpus (need 0.5)"), "{reason}");
    assert!(reason.contains("1 host(s) lack memory (need 100 MiB)"), "{reason}");
    for h in [1, 2] {
        let (c, m) = w.s.host_usage(h);
        let info = &w.s.nodes.registered[&h];
        assert!(c <= info.cpus && m <= info.mem_mb);
    }
}

#[test]
fn runtime_must_fit() {
    let mut w = World::new();
    w.host(1, "process", 4.0, 4096, &[]);
    w.deploy(r#"{"id":"box","image":"test/busybox:1","cmd":["sleep","1"]}"#);
    w.settle(3);
    assert_eq!(w.hosts_of("box"), vec![None]);
    assert!(w.reason("box").unwrap().contains("1 host(s) do not run the docker runtime"));
}

#[test]
fn a_docker_host_runs_process_apps_too() {
    let mut w = World::new();
    w.host(1, "docker", 4.0, 4096, &[]);
    w.deploy(&process_app("web", 1, ""));
    w.deploy(r#"{"id":"box","image":"test/busybox:1","cmd":["sleep","1"]}"#);
    w.settle(3);
    assert_eq!(w.hosts_of("web"), vec![Some(1)]);
    assert_eq!(w.hosts_of("box"), vec![Some(1)]);
}

#[test]
fn no_hosts_at_all_says_so() {
    let mut w = World::new();
    w.deploy(&process_app("web", 1, ""));
    w.settle(2);
    assert_eq!(w.reason("web").unwrap(), "no host is up to run web");
}

#[test]
fn every_constraint_operator_places_as_marathon_does() {
    struct Case {
        constraint: &'static str,
        n: u32,
        want: BTreeMap<u64, usize>,
        pending: usize,
    }
    let cases = [
        Case {
            constraint: r#"[["hostname","UNIQUE"]]"#,
            n: 5,
            want: BTreeMap::from([(1, 1), (2, 1), (3, 1), (4, 1)]),
            pending: 1,
        },
        Case { constraint: r#"[["rack","CLUSTER","r1"]]"#, n: 3, want: BTreeMap::from([(1, 2), (2, 1)]), pending: 0 },
        Case { constraint: r#"[["rack","LIKE","r[2]"]]"#, n: 2, want: BTreeMap::from([(3, 1), (4, 1)]), pending: 0 },
        Case { constraint: r#"[["rack","UNLIKE","r1"]]"#, n: 2, want: BTreeMap::from([(3, 1), (4, 1)]), pending: 0 },
        Case { constraint: r#"[["rack","MAX_PER","1"]]"#, n: 3, want: BTreeMap::from([(1, 1), (3, 1)]), pending: 1 },
        Case {
            constraint: r#"[["rack","GROUP_BY"]]"#,
            n: 4,
            want: BTreeMap::from([(1, 1), (2, 1), (3, 1), (4, 1)]),
            pending: 0,
        },
        Case { constraint: r#"[["rack","CLUSTER"]]"#, n: 3, want: BTreeMap::from([(1, 2), (2, 1)]), pending: 0 },
        Case { constraint: r#"[["zone","UNIQUE"]]"#, n: 1, want: BTreeMap::new(), pending: 1 },
    ];
    for c in cases {
        let mut w = World::new();
        w.host(1, "process", 8.0, 8192, &[("rack", "r1")]);
        w.host(2, "process", 8.0, 8192, &[("rack", "r1")]);
        w.host(3, "process", 8.0, 8192, &[("rack", "r2")]);
        w.host(4, "process", 8.0, 8192, &[("rack", "r2")]);
        w.deploy(&process_app("web", c.n, &format!(r#","constraints":{}"#, c.constraint)));
        w.settle(4);
        assert_eq!(w.per_host("web"), c.want, "{}", c.constraint);
        let pending = w.hosts_of("web").iter().filter(|h| h.is_none()).count();
        assert_eq!(pending, c.pending, "{}", c.constraint);
        if c.pending > 0 {
            let r = w.reason("web").unwrap();
            assert!(r.contains("fail constraint"), "{}: {r}", c.constraint);
        }
    }
}

#[test]
fn group_by_spreads_evenly_over_values() {
    let mut w = World::new();
    w.host(1, "process", 8.0, 8192, &[("rack", "r1")]);
    w.host(2, "process", 8.0, 8192, &[("rack", "r1")]);
    w.host(3, "process", 8.0, 8192, &[("rack", "r2")]);
    w.deploy(&process_app("web", 6, r#","constraints":[["rack","GROUP_BY"]]"#));
    w.settle(4);
    let per = w.per_host("web");
    assert_eq!(per[&1] + per[&2], 3, "{per:?}");
    assert_eq!(per[&3], 3, "{per:?}");
}

#[test]
fn scale_down_stops_the_youngest_first_and_releases_their_ips() {
    let mut w = World::new();
    w.lan();
    w.host(1, "process", 8.0, 8192, &[]);
    w.deploy(&process_app("web", 4, r#","network":{"pool":"lan"}"#));
    w.settle(3);
    w.run_all();
    assert_eq!(w.s.ipam.pool("lan").unwrap().used(), 4);
    w.apply(Command::ScaleApp { id: "web".into(), instances: 2 });
    w.settle(3);
    let stopping: Vec<u64> =
        w.s.apps.instances_of("web").filter(|i| i.state == InstanceState::Stopping).map(|i| i.index).collect();
    assert_eq!(stopping, vec![3, 4]);
    w.run_all(); // agents report the stopped ones
    let left: Vec<u64> = w.s.apps.instances_of("web").map(|i| i.index).collect();
    assert_eq!(left, vec![1, 2]);
    assert_eq!(w.s.ipam.pool("lan").unwrap().used(), 2);
}

#[test]
fn a_rollout_keeps_ids_and_ips_and_never_drops_below_min_healthy() {
    let mut w = World::new();
    w.lan();
    for h in 1..=3 {
        w.host(h, "process", 8.0, 8192, &[]);
    }
    w.deploy(&process_app("web", 3, r#","network":{"pool":"lan"}"#));
    w.settle(3);
    w.run_all();
    let before: BTreeMap<String, Option<std::net::Ipv4Addr>> =
        w.s.apps.instances_of("web").map(|i| (i.id.clone(), i.ip)).collect();

    w.deploy(&process_app("web", 3, r#","network":{"pool":"lan"},"env":{"V":"2"}"#));
    let mut rounds = 0;
    while w.s.apps.apps["web"].deployment.is_some() {
        rounds += 1;
        assert!(rounds < 20, "the rollout did not finish");
        let p = plan(&w.s);
        w.apply(Command::ApplyPlan(p));
        // Invariant at every step: at least 3 healthy instances (min_healthy 1.0).
        let healthy = w.s.apps.instances_of("web").filter(|i| i.is_healthy(false)).count();
        assert!(healthy >= 3, "only {healthy} healthy during the rollout");
        w.run_all();
    }
    let after: BTreeMap<String, Option<std::net::Ipv4Addr>> =
        w.s.apps.instances_of("web").map(|i| (i.id.clone(), i.ip)).collect();
    assert_eq!(after, before, "ids and IPs survive the upgrade; surge instances are gone");
    assert!(w.s.apps.instances_of("web").all(|i| i.version == 2));
    assert_eq!(w.s.ipam.pool("lan").unwrap().used(), 3, "surge IPs released");
}

#[test]
fn a_lost_host_moves_instances_with_their_ips() {
    let mut w = World::new();
    w.lan();
    w.host(1, "process", 8.0, 8192, &[]);
    w.host(2, "process", 8.0, 8192, &[]);
    w.deploy(&process_app("web", 2, r#","network":{"pool":"lan"}"#));
    w.settle(3);
    w.run_all();
    let on_1 = w.s.apps.instances_of("web").find(|i| i.host == Some(1)).unwrap().clone();
    w.apply(Command::SetHostState { id: 1, state: HostState::Down });
    let lost = w.s.apps.instance(&on_1.id).unwrap();
    assert_eq!((lost.state, lost.host), (InstanceState::Lost, None));
    w.settle(3);
    let moved = w.s.apps.instance(&on_1.id).unwrap();
    assert_eq!(moved.host, Some(2));
    assert_eq!(moved.ip, on_1.ip, "the sticky IP follows the instance");
    assert!(moved.epoch > on_1.epoch);
}

#[test]
fn host_usage_survives_a_snapshot_restore() {
    let mut w = World::new();
    w.host(1, "process", 8.0, 8192, &[]);
    w.host(2, "process", 8.0, 8192, &[]);
    w.deploy(&process_app("web", 5, ""));
    w.settle(3);
    let before: Vec<(f64, u64)> = [1, 2].iter().map(|h| w.s.host_usage(*h)).collect();
    let mut t = State::default();
    t.restore(&w.s.snapshot().unwrap()).unwrap();
    let after: Vec<(f64, u64)> = [1, 2].iter().map(|h| t.host_usage(*h)).collect();
    assert_eq!(before, after);
    assert_eq!(t.apps.on_host(1).count() + t.apps.on_host(2).count(), 5);
}

#[test]
fn reports_for_an_older_placement_are_ignored() {
    let mut w = World::new();
    w.host(1, "process", 8.0, 8192, &[]);
    w.host(2, "process", 8.0, 8192, &[]);
    w.deploy(&process_app("web", 1, ""));
    w.settle(3);
    let i = w.s.apps.instance("web-1").unwrap().clone();
    w.apply(Command::SetHostState { id: i.host.unwrap(), state: HostState::Down });
    w.settle(3);
    // The old host's agent, late, reports the instance running under the old epoch.
    w.apply(Command::ReportInstance(Report {
        id: i.id.clone(),
        host: i.host.unwrap(),
        epoch: i.epoch,
        state: InstanceState::Running,
        health: Health::Healthy,
        message: None,
        restarts: 0,
    }));
    let now = w.s.apps.instance("web-1").unwrap();
    assert_ne!(now.host, i.host);
    assert_eq!(now.state, InstanceState::Starting);
}

#[test]
fn delete_stops_everything_then_releases_every_ip() {
    let mut w = World::new();
    w.lan();
    w.host(1, "process", 8.0, 8192, &[]);
    w.deploy(&process_app("web", 3, r#","network":{"pool":"lan"}"#));
    w.settle(3);
    w.run_all();
    w.apply(Command::DeleteApp { id: "web".into() });
    assert!(w.s.apps.instances_of("web").all(|i| i.state == InstanceState::Stopping));
    w.run_all();
    assert_eq!(w.s.apps.instances_of("web").count(), 0);
    assert_eq!(w.s.ipam.pool("lan").unwrap().used(), 0);
}

#[test]
fn rollback_restores_the_previous_spec_as_a_new_version() {
    let mut w = World::new();
    w.host(1, "process", 8.0, 8192, &[]);
    w.deploy(&process_app("web", 1, r#","env":{"V":"1"}"#));
    w.deploy(&process_app("web", 1, r#","env":{"V":"2"}"#));
    assert_eq!(w.s.apps.apps["web"].version, 2);
    w.apply(Command::RollbackApp { id: "web".into(), version: None });
    let app = &w.s.apps.apps["web"];
    assert_eq!(app.version, 3);
    assert_eq!(app.spec().env["V"], "1");
    let r = w.apply(Command::RollbackApp { id: "web".into(), version: Some(9) });
    assert_eq!(r.0.unwrap_err().code, "version_not_found");
}

#[test]
fn the_ranked_fast_path_places_exactly_as_the_scan_does() {
    // The same world twice: an app without constraints takes the ranked path; the same
    // app with a constraint every host passes takes the scan. Hosts differ in size and
    // start with uneven load, so every tie-breaker (count, cpu share, id) matters, and
    // some hosts fill up along the way.
    let build = |constraint: &str| {
        let mut w = World::new();
        for h in 1..=12u64 {
            let runtime = if h % 4 == 0 { "docker" } else { "process" };
            w.host(h, runtime, 1.0 + (h % 3) as f64, 300 + 100 * (h % 5), &[]);
        }
        w.deploy(&process_app("base", 7, ""));
        w.settle(3);
        w.deploy(&format!(r#"{{"id":"web","cmd":["sleep","1"],"instances":90,"cpus":0.25,"mem_mb":60{constraint}}}"#));
        w.settle(3);
        w
    };
    let ranked = build("");
    let scanned = build(r#","constraints":[["hostname","UNLIKE","none"]]"#);
    assert_eq!(ranked.hosts_of("web"), scanned.hosts_of("web"));
    assert_eq!(ranked.reason("web"), scanned.reason("web"));
    assert!(ranked.reason("web").is_some(), "the hosts are meant to fill up");
    assert!(ranked.hosts_of("web").iter().filter(|h| h.is_some()).count() > 10);
}

/// Rolls `app` until its deployment ends, nothing changes, or `rounds` pass; checks
/// at every step that `min` instances stay healthy.
fn roll(w: &mut World, app: &str, min: usize, rounds: usize) {
    for _ in 0..rounds {
        if w.s.apps.apps[app].deployment.is_none() {
            return;
        }
        let p = plan(&w.s);
        if p.is_empty() {
            return;
        }
        w.apply(Command::ApplyPlan(p));
        let healthy = w.s.apps.instances_of(app).filter(|i| i.is_healthy(false)).count();
        assert!(healthy >= min, "only {healthy} healthy during the rollout (at least {min} wanted)");
        w.run_all();
    }
}

#[test]
fn a_rollout_that_cannot_surge_replaces_in_place_as_min_healthy_allows() {
    let mut w = three_hosts_with_lan();
    let unique = r#","network":{"pool":"lan"},"constraints":[["hostname","UNIQUE"]],"upgrade":{"min_healthy":0.6,"max_surge":1}"#;
    w.deploy(&process_app("web", 3, unique));
    w.settle(3);
    w.run_all();
    let before: BTreeMap<String, (Option<u64>, Option<std::net::Ipv4Addr>)> =
        w.s.apps.instances_of("web").map(|i| (i.id.clone(), (i.host, i.ip))).collect();
    w.deploy(&process_app("web", 3, &format!("{unique},\"env\":{{\"V\":\"2\"}}")));
    roll(&mut w, "web", 2, 20);
    assert!(w.s.apps.apps["web"].deployment.is_none(), "the rollout finished");
    let after: BTreeMap<String, (Option<u64>, Option<std::net::Ipv4Addr>)> =
        w.s.apps.instances_of("web").map(|i| (i.id.clone(), (i.host, i.ip))).collect();
    assert_eq!(after, before, "each instance was replaced on its own host with its own IP");
    assert!(w.s.apps.instances_of("web").all(|i| i.version == 2 && !i.surge));
    assert_eq!(w.s.ipam.pool("lan").unwrap().used(), 3, "no surge instance ever held an IP");
}

#[test]
fn a_rollout_min_healthy_forbids_says_exactly_why_and_rollback_ends_it() {
    let mut w = three_hosts_with_lan();
    let unique = r#","network":{"pool":"lan"},"constraints":[["hostname","UNIQUE"]]"#;
    w.deploy(&process_app("web", 3, unique));
    w.settle(3);
    w.run_all();
    w.deploy(&process_app("web", 3, &format!("{unique},\"env\":{{\"V\":\"2\"}}")));
    roll(&mut w, "web", 3, 5);
    let d = w.s.apps.apps["web"].deployment.clone().expect("the rollout cannot finish");
    let why = d.blocked.expect("and says why");
    for part in [
        "stuck",
        "3 instance(s) run an older version",
        "min_healthy 1 keeps 3 of 3",
        r#"fail constraint ["hostname", "UNIQUE"]"#,
        "berth rollback web",
    ] {
        assert!(why.contains(part), "{part:?} missing from {why:?}");
    }
    assert_eq!(w.s.apps.instances_of("web").count(), 3, "no pending surge instance");
    assert_eq!(w.s.ipam.pool("lan").unwrap().used(), 3, "no IP held for nothing");
    assert!(w.s.apps.instances_of("web").all(|i| i.version == 1));

    // A rollback (here: the cancel) relabels what runs, restarting nothing.
    let epochs: Vec<u64> = w.s.apps.instances_of("web").map(|i| i.epoch).collect();
    assert!(w.apply(Command::CancelDeployment { app: "web".into() }).0.is_ok());
    roll(&mut w, "web", 3, 5);
    assert!(w.s.apps.apps["web"].deployment.is_none(), "the rollback finished");
    assert!(w.s.apps.instances_of("web").all(|i| i.version == 3));
    assert_eq!(w.s.apps.instances_of("web").map(|i| i.epoch).collect::<Vec<_>>(), epochs, "nothing restarted");
}

#[test]
fn a_restart_replaces_every_instance_in_place_with_its_ip() {
    let mut w = three_hosts_with_lan();
    let unique = r#","network":{"pool":"lan"},"constraints":[["hostname","UNIQUE"]],"upgrade":{"min_healthy":0.6,"max_surge":1}"#;
    w.deploy(&process_app("web", 3, unique));
    w.settle(3);
    w.run_all();
    let before: BTreeMap<String, (Option<u64>, Option<std::net::Ipv4Addr>, u64)> =
        w.s.apps.instances_of("web").map(|i| (i.id.clone(), (i.host, i.ip, i.epoch))).collect();
    assert!(w.apply(Command::RestartApp { id: "web".into() }).0.is_ok());
    assert!(w.apply(Command::RestartApp { id: "nope".into() }).0.is_err(), "an unknown app");
    assert_eq!(w.s.apps.apps["web"].version, 2, "a restart is a new version");
    roll(&mut w, "web", 2, 20);
    assert!(w.s.apps.apps["web"].deployment.is_none(), "the restart finished");
    for i in w.s.apps.instances_of("web") {
        let (host, ip, epoch) = before[&i.id];
        assert_eq!((i.host, i.ip, i.version), (host, ip, 2), "{} restarted on its host with its IP", i.id);
        assert!(i.epoch > epoch, "{} was restarted, not relabelled", i.id);
    }
}

#[test]
fn a_stuck_rollout_moves_again_when_a_host_joins() {
    let mut w = World::new();
    for h in 1..=2 {
        w.host(h, "process", 8.0, 8192, &[]);
    }
    let unique = r#","constraints":[["hostname","UNIQUE"]]"#;
    w.deploy(&process_app("web", 2, unique));
    w.settle(3);
    w.run_all();
    w.deploy(&process_app("web", 2, &format!("{unique},\"env\":{{\"V\":\"2\"}}")));
    roll(&mut w, "web", 2, 5);
    assert!(w.s.apps.apps["web"].deployment.as_ref().unwrap().blocked.is_some());
    w.host(3, "process", 8.0, 8192, &[]);
    roll(&mut w, "web", 2, 20);
    assert!(w.s.apps.apps["web"].deployment.is_none(), "the surge found room and the rollout finished");
    assert!(w.s.apps.instances_of("web").all(|i| i.version == 2 && !i.surge));
    assert_eq!(w.s.apps.instances_of("web").count(), 2);
}

fn three_hosts_with_lan() -> World {
    let mut w = World::new();
    w.lan();
    for h in 1..=3 {
        w.host(h, "process", 8.0, 8192, &[]);
    }
    w
}

#[test]
fn an_app_that_waits_for_its_host_moves_only_when_the_wait_is_over() {
    let mut w = three_hosts_with_lan();
    let lan = r#","network":{"pool":"lan"},"constraints":[["hostname","UNIQUE"]]"#;
    w.deploy(&process_app("wait", 2, &format!(r#"{lan},"unreachable":{{"reschedule_after_s":30}}"#)));
    w.deploy(&process_app("never", 2, &format!(r#"{lan},"unreachable":{{"reschedule":false}}"#)));
    w.settle(3);
    w.run_all();
    let host = w.s.apps.instances_of("wait").next().unwrap().host.unwrap();
    let never_on = w.s.apps.instances_of("never").find(|i| i.host == Some(host)).cloned();
    w.apply(Command::SetHostState { id: host, state: HostState::Down });
    let down_at = w.s.nodes.down_since[&host];
    let lost: Vec<_> = w.s.apps.instances().filter(|i| i.host == Some(host)).cloned().collect();
    assert!(!lost.is_empty() && lost.iter().all(|i| i.state == InstanceState::Lost), "lost, still on their host");

    // Before the wait is over: nothing moves, nothing replaces them.
    let p = super::plan_limited(&w.s, usize::MAX, down_at + 29_000);
    assert!(p.moves.is_empty() && p.creates.is_empty() && p.places.is_empty(), "{p:?}");
    // After it: the waiting app's instance moves with its IP; the other one stays.
    let p = super::plan_limited(&w.s, usize::MAX, down_at + 30_000);
    let waited = lost.iter().find(|i| i.app == "wait").unwrap();
    assert_eq!(p.moves, vec![waited.id.clone()]);
    w.apply(Command::ApplyPlan(p));
    let moved = w.s.apps.instance(&waited.id).unwrap();
    assert!(moved.host.is_some_and(|h| h != host) && moved.ip == waited.ip && moved.epoch > waited.epoch);
    if let Some(n) = never_on {
        assert_eq!(w.s.apps.instance(&n.id).unwrap().host, Some(host), "reschedule: false never moves");
        // Its host returns: the instance is placed there again, in a new epoch.
        w.apply(Command::SetHostState { id: host, state: HostState::Up });
        let back = w.s.apps.instance(&n.id).unwrap();
        assert_eq!((back.host, back.state, back.ip), (Some(host), InstanceState::Starting, n.ip));
        assert!(back.epoch > n.epoch);
    }
}

#[test]
fn a_drain_moves_instances_as_min_healthy_allows_and_new_work_avoids_the_host() {
    let mut w = three_hosts_with_lan();
    w.deploy(&process_app("web", 4, r#","network":{"pool":"lan"},"upgrade":{"min_healthy":0.75,"max_surge":0}"#));
    w.settle(3);
    w.run_all();
    let before: BTreeMap<String, Option<std::net::Ipv4Addr>> =
        w.s.apps.instances_of("web").map(|i| (i.id.clone(), i.ip)).collect();
    assert!(w.apply(Command::SetDraining { id: 1, draining: true }).0.is_ok());
    assert_eq!(w.s.nodes.state(1), HostState::Draining);
    for _ in 0..10 {
        let p = plan(&w.s);
        if p.is_empty() {
            break;
        }
        assert!(p.moves.len() <= 1, "one at a time: 3 of 4 must stay healthy");
        w.apply(Command::ApplyPlan(p));
        let healthy = w.s.apps.instances_of("web").filter(|i| i.is_healthy(false)).count();
        assert!(healthy >= 3, "only {healthy} healthy during the drain");
        w.run_all();
    }
    assert_eq!(w.per_host("web").get(&1), None, "nothing left on the drained host");
    let after: BTreeMap<String, Option<std::net::Ipv4Addr>> =
        w.s.apps.instances_of("web").map(|i| (i.id.clone(), i.ip)).collect();
    assert_eq!(after, before, "the same instances with the same IPs");
    w.deploy(&process_app("more", 3, ""));
    w.settle(3);
    assert_eq!(w.per_host("more").get(&1), None, "new work avoids a draining host");
    // Eligible again: it takes work again.
    assert!(w.apply(Command::SetDraining { id: 1, draining: false }).0.is_ok());
    w.apply(Command::ScaleApp { id: "more".into(), instances: 6 });
    w.settle(3);
    assert!(w.per_host("more").contains_key(&1));
}

#[test]
fn a_drain_that_min_healthy_forbids_says_why_and_the_last_host_cannot_be_drained() {
    let mut w = three_hosts_with_lan();
    w.deploy(&process_app("web", 3, r#","constraints":[["hostname","UNIQUE"]]"#));
    w.deploy(&process_app("pinned", 1, r#","constraints":[["hostname","LIKE","2"]]"#));
    w.settle(3);
    w.run_all();
    let e = w.apply(Command::SetDraining { id: 2, draining: true }).0.unwrap_err();
    assert_eq!(e.code, "last_host");
    assert!(e.message.contains("\"pinned\""), "{}", e.message);
    assert_eq!(w.apply(Command::SetDraining { id: 9, draining: true }).0.unwrap_err().code, "host_not_found");

    assert!(w.apply(Command::SetDraining { id: 1, draining: true }).0.is_ok());
    w.settle(5);
    let why = w.reason("web").expect("the drain says why it cannot go on");
    assert!(why.contains("moving web off draining hosts is stuck") && why.contains("UNIQUE"), "{why}");
    assert_eq!(w.per_host("web").get(&1), Some(&1), "min_healthy 1.0 keeps it running meanwhile");
}

/// Drains host 1 of `web` (2 instances, `hostname UNIQUE`, min_healthy 0.6: both must
/// stay healthy, max_surge 1) until nothing changes; every round at least 2 healthy.
/// Returns the plans and the instance that was on host 1.
fn drain_unique_pair(w: &mut World) -> (Vec<Plan>, Instance) {
    w.deploy(&process_app(
        "web",
        2,
        r#","network":{"pool":"lan"},"constraints":[["hostname","UNIQUE"]],"upgrade":{"min_healthy":0.6,"max_surge":1}"#,
    ));
    w.settle(3);
    w.run_all();
    let leaving = w.s.apps.instances_of("web").find(|i| i.host == Some(1)).expect("one on host 1 (lowest id)").clone();
    assert!(w.apply(Command::SetDraining { id: 1, draining: true }).0.is_ok());
    let mut plans = Vec::new();
    for _ in 0..10 {
        let p = plan(&w.s);
        if p.is_empty() {
            break;
        }
        plans.push(p.clone());
        w.apply(Command::ApplyPlan(p));
        let healthy = w.s.apps.instances_of("web").filter(|i| i.is_healthy(false)).count();
        assert!(healthy >= 2, "only {healthy} healthy during the drain");
        w.run_all();
    }
    (plans, leaving)
}

#[test]
fn a_drain_surges_only_where_the_move_still_finds_a_host() {
    // Three hosts: the one free host is the only place the move can go, so a surge
    // there would block the move forever. No surge; the drain says why.
    let mut w = three_hosts_with_lan();
    let (plans, _) = drain_unique_pair(&mut w);
    assert!(plans.iter().all(|p| p.creates.is_empty()), "no surge that takes the move's host: {plans:?}");
    let why = w.reason("web").expect("the drain says why it waits");
    assert!(why.contains("moving web off draining hosts is stuck") && why.contains("kept for the move"), "{why}");
    assert_eq!(w.per_host("web").get(&1), Some(&1), "still running there meanwhile");

    // Four hosts: a surge on one free host, the move to the other with the IP, then
    // the surge goes.
    let mut w = three_hosts_with_lan();
    w.host(4, "process", 8.0, 8192, &[]);
    let (plans, leaving) = drain_unique_pair(&mut w);
    assert_eq!(plans.iter().map(|p| p.creates.len()).sum::<usize>(), 1, "one surge");
    assert_eq!(plans.iter().map(|p| p.moves.len()).sum::<usize>(), 1);
    assert_eq!(w.per_host("web").get(&1), None, "the host is empty");
    let left: Vec<_> = w.s.apps.instances_of("web").filter(|i| i.desired == Desired::Run).collect();
    assert_eq!(left.len(), 2, "the surge is gone: {left:?}");
    assert!(left.iter().all(|i| !i.surge));
    let moved = w.s.apps.instance(&leaving.id).unwrap();
    assert!(moved.host.is_some_and(|h| h != 1) && moved.ip == leaving.ip, "moved with its IP: {moved:?}");
    assert_eq!(w.reason("web"), None);
}

#[test]
fn instances_of_a_removed_node_move_once_it_had_its_deadline_to_fence() {
    let mut w = three_hosts_with_lan();
    w.deploy(&process_app("web", 3, r#","network":{"pool":"lan"},"unreachable":{"reschedule":false}"#));
    w.settle(3);
    w.run_all();
    let on_3 = w.s.apps.instances_of("web").find(|i| i.host == Some(3)).unwrap().clone();
    w.apply(Command::RetireNode { id: 3 });
    let movable_at = w.s.nodes.down_since[&3];
    assert_eq!(w.s.apps.instance(&on_3.id).unwrap().state, InstanceState::Lost);
    assert!(super::plan_limited(&w.s, usize::MAX, movable_at - 1).moves.is_empty(), "not before its deadline");
    let p = super::plan_limited(&w.s, usize::MAX, movable_at);
    assert_eq!(p.moves, vec![on_3.id.clone()], "then even an app that never reschedules moves: the host is gone");
    w.index = w.index.max(movable_at);
    w.apply(Command::ApplyPlan(p));
    let moved = w.s.apps.instance(&on_3.id).unwrap();
    assert!(moved.host.is_some_and(|h| h != 3) && moved.ip == on_3.ip);
}

#[test]
fn a_scale_up_in_a_stuck_rollout_still_places_the_new_instances() {
    let mut w = three_hosts_with_lan();
    let unique = r#","network":{"pool":"lan"},"constraints":[["hostname","UNIQUE"]],"upgrade":{"min_healthy":0.5,"max_surge":0}"#;
    w.deploy(&process_app("web", 2, unique));
    w.settle(3);
    w.run_all();
    let strict = r#","network":{"pool":"lan"},"constraints":[["hostname","UNIQUE"]],"upgrade":{"min_healthy":1.0,"max_surge":1},"env":{"V":"2"}"#;
    w.deploy(&process_app("web", 3, strict));
    roll(&mut w, "web", 2, 10);
    let placed: Vec<(String, Option<u64>, bool)> =
        w.s.apps.instances_of("web").map(|i| (i.id.clone(), i.host, i.surge)).collect();
    // The new instance takes the free host, not a surge: the rollout is then stuck, and
    // says so, but the app has its 3 instances.
    assert_eq!(placed.iter().filter(|(_, h, surge)| h.is_some() && !surge).count(), 3, "{placed:?}");
    assert!(placed.iter().all(|(_, _, surge)| !surge), "no surge instance: {placed:?}");
    let why = w.s.apps.apps["web"].deployment.as_ref().and_then(|d| d.blocked.clone()).expect("stuck, and says why");
    assert!(why.contains("no surge instance can be placed"), "{why}");
}

#[test]
fn the_steady_path_plans_what_the_full_pass_plans_through_random_histories() {
    // Every `plan` of these tests compares the two; here random histories of deploys,
    // scales, reports, host failures, drains and new hosts drive both through the
    // states a cluster goes through.
    for seed in 1..=12u64 {
        let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let mut w = World::new();
        w.lan();
        let mut hosts = 3;
        for h in 1..=hosts {
            w.host(h, "process", 4.0, 4096, &[("rack", if h % 2 == 0 { "a" } else { "b" })]);
        }
        for _ in 0..250 {
            let app = ["web", "api", "db"][next(3) as usize];
            match next(9) {
                0 => {
                    let extra = match next(3) {
                        0 => r#","network":{"pool":"lan"}"#.to_string(),
                        1 => format!(r#","upgrade":{{"min_healthy":0.5,"max_surge":{}}}"#, next(3)),
                        _ => r#","constraints":[["hostname","UNIQUE"]]"#.to_string(),
                    };
                    let spec = process_app(app, next(6) as u32, &extra).replace("100\"]", &format!("{}\"]", next(3)));
                    w.deploy(&spec);
                }
                1 => {
                    w.apply(Command::ScaleApp { id: app.into(), instances: next(7) as u32 });
                }
                2 | 3 => {
                    let p = plan(&w.s);
                    w.apply(Command::ApplyPlan(p));
                }
                4 => {
                    let placed: Vec<Instance> = w.s.apps.instances().filter(|i| i.host.is_some()).cloned().collect();
                    if let Some(i) = placed.get(next(placed.len().max(1) as u64) as usize) {
                        let state =
                            [InstanceState::Running, InstanceState::Failed, InstanceState::Starting][next(3) as usize];
                        let health = [Health::Healthy, Health::Unhealthy, Health::Unknown][next(3) as usize];
                        w.apply(Command::ReportInstance(Report {
                            id: i.id.clone(),
                            host: i.host.unwrap(),
                            epoch: i.epoch,
                            state,
                            health,
                            message: None,
                            restarts: 0,
                        }));
                    }
                }
                5 => {
                    let state = [HostState::Down, HostState::Up][next(2) as usize];
                    w.apply(Command::SetHostState { id: 1 + next(hosts), state });
                }
                6 => {
                    w.apply(Command::SetDraining { id: 1 + next(hosts), draining: next(2) == 0 });
                }
                7 => {
                    if next(4) == 0 {
                        hosts += 1;
                        w.host(hosts, "process", 4.0, 4096, &[]);
                    } else {
                        w.run_all();
                    }
                }
                _ => {
                    if next(5) == 0 {
                        w.apply(Command::DeleteApp { id: app.into() });
                    } else {
                        w.settle(4);
                    }
                }
            }
        }
        w.settle(10);
    }
}
