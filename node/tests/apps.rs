//! Apps on a real cluster with the process runtime: deploy through a follower,
//! constraints, scaling, rolling updates with min_healthy, rollback, failover during a
//! rollout, sticky IPs across restarts, delete, invalid specs.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use support::{berth, Cluster};

const FORM: Duration = Duration::from_secs(20);
const CONVERGE: Duration = Duration::from_secs(40);

/// A process that prints its identity and exits cleanly on SIGTERM.
fn app(id: &str, n: u32, extra: Value) -> Value {
    let mut spec = json!({
        "id": id,
        "cmd": ["/bin/sh", "-c", "trap 'echo stopping; exit 0' TERM; while true; do echo \"tick $BERTH_INSTANCE $BERTH_IP v=$V\"; sleep 0.3 & wait $!; done"],
        "instances": n,
        "cpus": 0.1,
        "mem_mb": 16,
        "env": {"V": "1"},
        "stop_grace_s": 3,
        "health_check": {"cmd": ["/bin/sh", "-c", "test -n \"$BERTH_INSTANCE\""], "interval_s": 1, "timeout_s": 1, "grace_s": 0, "max_failures": 2},
    });
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    spec
}

async fn put(c: &Cluster, via: u64, spec: &Value) -> (u16, Value) {
    let id = spec["id"].as_str().unwrap();
    c.req(via, Method::PUT, &format!("/v1/apps/{id}"), Some(spec.clone()), None).await
}

async fn instances(c: &Cluster, via: u64, app: &str) -> Vec<Value> {
    let (s, v) = c.get(via, &format!("/v1/instances?app={app}")).await;
    assert_eq!(s, 200, "{v}");
    v.as_array().unwrap().clone()
}

/// Waits until `app` has exactly `n` instances, all running and healthy at `version`.
async fn converged(c: &Cluster, via: u64, app: &str, n: usize, version: u64) -> Vec<Value> {
    c.eventually(CONVERGE, &format!("{app}: {n} healthy instances at v{version}"), || async {
        let (s, a) = c.get(via, &format!("/v1/apps/{app}")).await;
        if s != 200 || !a["deployment"].is_null() {
            return None;
        }
        let list = instances(c, via, app).await;
        let ok = list.len() == n
            && list.iter().all(|i| i["state"] == "running" && i["health"] == "healthy" && i["version"] == version);
        ok.then_some(list)
    })
    .await
}

async fn pool(c: &Cluster, via: u64, octet: u8) {
    let body = json!({"name": "lan", "subnet": format!("198.18.{octet}.0/24"), "gateway": format!("198.18.{octet}.1")});
    let (s, v) = c.post(via, "/v1/ipam/pools", body).await;
    assert_eq!(s, 201, "{v}");
}

fn ips(list: &[Value]) -> BTreeMap<String, String> {
    list.iter().map(|i| (i["id"].as_str().unwrap().to_string(), i["ip"].as_str().unwrap_or("").to_string())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_through_a_follower_places_instances_only_where_constraints_allow() {
    // Labels per node: two in rack r1, one in r2.
    let c = Cluster::start_each(3, |id| vec!["--label".into(), format!("rack={}", if id < 3 { "r1" } else { "r2" })]);
    let leader = c.wait_leader(FORM).await;
    let follower = c.ids().into_iter().find(|i| *i != leader).unwrap();
    pool(&c, follower, 30).await;
    c.wait_hosts(follower, 3).await;

    let spec = app("web", 4, json!({"constraints": [["rack", "CLUSTER", "r1"]], "network": {"pool": "lan"}}));
    let (s, v) = put(&c, follower, &spec).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!((v["id"].as_str(), v["version"].as_u64(), v["instances"].as_u64()), (Some("web"), Some(1), Some(4)));
    let list = converged(&c, follower, "web", 4, 1).await;
    let hosts: BTreeMap<u64, usize> = list.iter().fold(BTreeMap::new(), |mut m, i| {
        *m.entry(i["host"].as_u64().unwrap()).or_default() += 1;
        m
    });
    assert_eq!(hosts, BTreeMap::from([(1, 2), (2, 2)]), "rack r1 only, spread evenly");
    // Every instance has its own address, and a real process on its host.
    let addrs: BTreeSet<String> = ips(&list).into_values().collect();
    assert_eq!(addrs.len(), 4);
    let running: BTreeSet<(u64, String)> = c.instance_pids().into_iter().map(|(n, i, _)| (n, i)).collect();
    for i in &list {
        assert!(running.contains(&(i["host"].as_u64().unwrap(), i["id"].as_str().unwrap().to_string())), "{i}");
    }
    // The hosts' view shows what is reserved.
    let (_, hosts) = c.get(3, "/v1/hosts").await;
    let h1 = hosts.as_array().unwrap().iter().find(|h| h["id"] == 1).unwrap();
    assert_eq!(h1["mem_mb_used"], json!(32));
    assert_eq!(h1["labels"]["rack"], json!("r1"));

    // Logs through a node that does not run the instance.
    let on1 = list.iter().find(|i| i["host"] == 1).unwrap()["id"].as_str().unwrap().to_string();
    let text = c
        .eventually(FORM, "log output", || async {
            let r = c.http.get(format!("{}/v1/instances/{on1}/logs?tail=5", c.url(3))).send().await.ok()?;
            let t = r.text().await.ok()?;
            t.contains(&format!("tick {on1}")).then_some(t)
        })
        .await;
    assert!(text.lines().count() <= 5, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_up_and_down_stops_the_youngest_and_their_processes() {
    let c = Cluster::start(3, &[]);
    c.wait_leader(FORM).await;
    pool(&c, 1, 31).await;
    let (s, v) = put(&c, 2, &app("web", 2, json!({"network": {"pool": "lan"}}))).await;
    assert_eq!(s, 201, "{v}");
    converged(&c, 3, "web", 2, 1).await;
    let (s, v) = c.post(3, "/v1/apps/web/scale", json!({"instances": 5})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["version"], json!(1), "scaling is not a new version");
    converged(&c, 1, "web", 5, 1).await;
    let (s, _) = c.post(1, "/v1/apps/web/scale", json!({"instances": 2})).await;
    assert_eq!(s, 200);
    let left = converged(&c, 2, "web", 2, 1).await;
    let ids: Vec<&str> = left.iter().map(|i| i["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["web-1", "web-2"], "the youngest were stopped");
    c.eventually(FORM, "only two instance processes left", || async { (c.instance_pids().len() == 2).then_some(()) })
        .await;
    let (_, allocs) = c.get(1, "/v1/ipam/pools/lan/allocations").await;
    assert_eq!(allocs.as_array().unwrap().len(), 2, "IPs of stopped instances released: {allocs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_rolls_over_with_min_healthy_and_a_rollback_restores_the_old_spec() {
    let c = Cluster::start(3, &[]);
    c.wait_leader(FORM).await;
    pool(&c, 1, 32).await;
    let spec1 = app("web", 3, json!({"network": {"pool": "lan"}, "upgrade": {"min_healthy": 1.0, "max_surge": 1}}));
    put(&c, 1, &spec1).await;
    let v1 = converged(&c, 2, "web", 3, 1).await;

    let mut spec2 = spec1.clone();
    spec2["env"]["V"] = json!("2");
    let (s, v) = put(&c, 2, &spec2).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["version"], json!(2));
    // During the rollout, never fewer than 3 healthy instances.
    let min_seen = std::sync::atomic::AtomicUsize::new(usize::MAX);
    let min_seen = &min_seen;
    let v2 = c
        .eventually(CONVERGE, "rollout to v2", || async {
            let (_, a) = c.get(3, "/v1/apps/web?stale=true").await;
            let list = instances(&c, 3, "web").await;
            let healthy = list.iter().filter(|i| i["state"] == "running" && i["health"] == "healthy").count();
            min_seen.fetch_min(healthy, std::sync::atomic::Ordering::Relaxed);
            let done = a["deployment"].is_null()
                && list.len() == 3
                && list.iter().all(|i| i["version"] == 2 && i["health"] == "healthy");
            done.then_some(list)
        })
        .await;
    let min_seen = min_seen.load(std::sync::atomic::Ordering::Relaxed);
    assert!(min_seen >= 3, "min_healthy 1.0 violated: {min_seen} healthy at some point");
    assert_eq!(ips(&v2), ips(&v1), "every instance kept its id and IP");

    let (s, v) = c.req(3, Method::POST, "/v1/apps/web/rollback", None, None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["version"], json!(3));
    assert_eq!(v["spec"]["env"]["V"], json!("1"));
    let v3 = converged(&c, 1, "web", 3, 3).await;
    assert_eq!(ips(&v3), ips(&v1));
    let (_, versions) = c.get(2, "/v1/apps/web/versions").await;
    let envs: Vec<&str> =
        versions.as_array().unwrap().iter().map(|v| v["spec"]["env"]["V"].as_str().unwrap()).collect();
    assert_eq!(envs, ["1", "2", "1"]);
    // The processes run the restored spec.
    let on = v3[0]["id"].as_str().unwrap().to_string();
    c.eventually(FORM, "v=1 output after the rollback", || async {
        let t =
            c.http.get(format!("{}/v1/instances/{on}/logs?tail=1", c.url(2))).send().await.ok()?.text().await.ok()?;
        t.contains("v=1").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_completes_when_the_leader_is_killed_mid_rollout() {
    let mut c = Cluster::start(3, &[]);
    let leader = c.wait_leader(FORM).await;
    let spec1 = app("web", 2, json!({"upgrade": {"min_healthy": 0.5, "max_surge": 1}}));
    put(&c, leader, &spec1).await;
    converged(&c, leader, "web", 2, 1).await;
    let mut spec2 = spec1.clone();
    spec2["env"]["V"] = json!("2");
    let (s, _) = put(&c, leader, &spec2).await;
    assert_eq!(s, 200);
    c.kill(leader);
    let rest = c.running();
    let new = c.wait_leader_among(&rest, FORM).await;
    assert_ne!(new, leader);
    // Instances on the dead host are moved after its heartbeat deadline.
    let list = c
        .eventually(Duration::from_secs(60), "the rollout completes on the survivors", || async {
            let (s, a) = c.get(new, "/v1/apps/web").await;
            let list = instances(&c, new, "web").await;
            let done = s == 200
                && a["deployment"].is_null()
                && list.len() == 2
                && list.iter().all(|i| i["version"] == 2 && i["health"] == "healthy" && i["host"] != leader);
            done.then_some(list)
        })
        .await;
    assert_eq!(list.len(), 2);
    let (_, hosts) = c.get(new, "/v1/hosts").await;
    let dead = hosts.as_array().unwrap().iter().find(|h| h["id"] == leader).unwrap();
    assert_eq!(dead["state"], json!("down"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_keeps_its_ip_when_its_process_is_killed_and_restarted() {
    let c = Cluster::start(3, &[]);
    c.wait_leader(FORM).await;
    pool(&c, 1, 33).await;
    put(&c, 1, &app("web", 2, json!({"network": {"pool": "lan"}}))).await;
    let before = converged(&c, 2, "web", 2, 1).await;
    let (_, victim, pid) = c.instance_pids().into_iter().find(|(_, i, _)| i == "web-1").unwrap();
    // SAFETY: kill(2) on a test's own instance process.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    let after = c
        .eventually(CONVERGE, "the killed instance restarted", || async {
            let list = instances(&c, 3, "web").await;
            let i = list.iter().find(|i| i["id"] == victim.as_str())?;
            (i["restarts"].as_u64() >= Some(1) && i["state"] == "running").then_some(list)
        })
        .await;
    assert_eq!(ips(&after), ips(&before));
    let new_pid = c.instance_pids().into_iter().find(|(_, i, _)| i == "web-1").unwrap().2;
    assert_ne!(new_pid, pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_app_stops_every_process_and_releases_every_ip() {
    let c = Cluster::start(3, &[]);
    c.wait_leader(FORM).await;
    pool(&c, 1, 34).await;
    put(&c, 1, &app("web", 3, json!({"network": {"pool": "lan"}}))).await;
    converged(&c, 2, "web", 3, 1).await;
    assert_eq!(c.instance_pids().len(), 3);
    let (s, v) = c.req(2, Method::DELETE, "/v1/apps/web", None, None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["id"], json!("web"));
    let (s, _) = c.get(3, "/v1/apps/web").await;
    assert_eq!(s, 404);
    c.eventually(CONVERGE, "every instance gone and every IP released", || async {
        let (_, allocs) = c.get(1, "/v1/ipam/pools/lan/allocations").await;
        let (_, list) = c.get(1, "/v1/instances").await;
        let done = c.instance_pids().is_empty()
            && allocs.as_array().is_some_and(|a| a.is_empty())
            && list.as_array().is_some_and(|a| a.is_empty());
        done.then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_specs_are_refused_naming_the_field() {
    let c = Cluster::start(3, &[]);
    let leader = c.wait_leader(FORM).await;
    let f = c.ids().into_iter().find(|i| *i != leader).unwrap();
    let cases = [
        (json!({"id": "web", "cmd": ["x"], "colour": "red"}), "unknown field `colour`"),
        (json!({"id": "web", "cmd": ["x"], "cpus": 0}), "cpus:"),
        (json!({"id": "web", "cmd": ["x"], "health_check": {"tcp": {"port": 0}}}), "health_check.tcp.port"),
        (json!({"id": "web", "cmd": ["x"], "health_check": {"http": {"port": 80, "pth": "/"}}}), "unknown field `pth`"),
        (
            json!({"id": "web", "cmd": ["x"], "constraints": [["rack", "NEAR", "x"]]}),
            "constraints[0]: unknown operator",
        ),
        (json!({"id": "web"}), "cmd: required"),
        (json!({"id": "web", "cmd": ["x"], "instances": -1}), "instances: invalid value"),
        (json!({"id": "web", "cmd": ["x"], "network": {"pool": "nope"}}), "network.pool: no pool named"),
        (json!({"id": "other", "cmd": ["x"]}), "id: \"other\" does not match"),
    ];
    for (spec, needle) in cases {
        let (s, v) = c.req(f, Method::PUT, "/v1/apps/web", Some(spec.clone()), None).await;
        assert_eq!(s, 400, "{spec}: {v}");
        assert_eq!(v["error"]["code"], json!("invalid_spec"), "{v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(needle), "{needle:?} not in {msg:?}");
    }
    let (s, v) = c.get(f, "/v1/apps/nope").await;
    assert_eq!((s, v["error"]["code"].as_str()), (404, Some("app_not_found")));
    let (s, v) = c.post(f, "/v1/apps/nope/scale", json!({"instances": 2})).await;
    assert_eq!((s, v["error"]["code"].as_str()), (404, Some("app_not_found")));
    let (s, v) = c.post(f, "/v1/apps/nope/scale", json!({"count": 2})).await;
    assert_eq!((s, v["error"]["code"].as_str()), (400, Some("invalid_request")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_rollout_is_listed_and_cancelling_it_rolls_back() {
    let c = Cluster::start(3, &[]);
    c.wait_leader(FORM).await;
    let spec1 = app("web", 2, json!({"upgrade": {"min_healthy": 1.0, "max_surge": 1}}));
    put(&c, 1, &spec1).await;
    let v1 = converged(&c, 2, "web", 2, 1).await;
    // Version 2 never becomes healthy: the rollout cannot take a v1 instance down.
    let mut spec2 = spec1.clone();
    spec2["health_check"]["cmd"] = json!(["/bin/false"]);
    let (s, _) = put(&c, 1, &spec2).await;
    assert_eq!(s, 200);
    let d = c
        .eventually(FORM, "the rollout is listed", || async {
            let (_, v) = c.get(3, "/v1/deployments").await;
            v.as_array().and_then(|a| a.first().cloned())
        })
        .await;
    assert_eq!(
        (d["app"].as_str(), d["from_version"].as_u64(), d["to_version"].as_u64()),
        (Some("web"), Some(1), Some(2))
    );
    // The old instances keep serving meanwhile.
    let healthy_v1 =
        instances(&c, 2, "web").await.iter().filter(|i| i["version"] == 1 && i["health"] == "healthy").count();
    assert_eq!(healthy_v1, 2);
    let (s, v) = c.req(2, Method::DELETE, &format!("/v1/deployments/{}", d["id"]), None, None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["version"], json!(3));
    let v3 = converged(&c, 3, "web", 2, 3).await;
    assert_eq!(ips(&v3).keys().collect::<Vec<_>>(), ips(&v1).keys().collect::<Vec<_>>(), "the same instances");
    let (_, list) = c.get(1, "/v1/deployments").await;
    assert_eq!(list, json!([]));
}

/// (instance id, host, ip) of each instance.
fn placements(list: &[Value]) -> BTreeSet<(String, u64, String)> {
    list.iter()
        .map(|i| (i["id"].as_str().unwrap().into(), i["host"].as_u64().unwrap(), i["ip"].as_str().unwrap_or("").into()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_that_cannot_surge_says_why_rolls_back_and_replaces_in_place_when_allowed() {
    // Marathon's deadlock: UNIQUE on hosts that all run an instance, no room to surge.
    let c = Cluster::start(3, &[]);
    c.wait_leader(FORM).await;
    pool(&c, 1, 38).await;
    let spec1 = app("web", 3, json!({"network": {"pool": "lan"}, "constraints": [["hostname", "UNIQUE"]]}));
    put(&c, 1, &spec1).await;
    let v1 = converged(&c, 2, "web", 3, 1).await;
    let pids = c.instance_pids();

    // min_healthy 1.0 (the default) forbids replacing in place: stuck, and it says why.
    let mut spec2 = spec1.clone();
    spec2["env"]["V"] = json!("2");
    assert_eq!(put(&c, 1, &spec2).await.0, 200);
    let why = c
        .eventually(FORM, "the rollout says it is stuck", || async {
            let (_, a) = c.get(3, "/v1/apps/web").await;
            a["deployment"]["blocked"].as_str().map(String::from)
        })
        .await;
    for part in ["3 instance(s) run an older version", "min_healthy 1 keeps 3 of 3", "UNIQUE", "berth rollback web"] {
        assert!(why.contains(part), "{part:?} missing from {why:?}");
    }
    let (code, out, err) = berth(&c.url(2), &["apps"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("v1 → v2 (0/3, stuck)") && out.contains("min_healthy"), "{out}");
    let list = instances(&c, 1, "web").await;
    assert_eq!(placements(&list), placements(&v1), "nothing moved, no surge instance waits");
    assert_eq!(c.allocations(1, "lan").await.len(), 3, "no IP is held for a surge that cannot run");

    // A rollback ends it at once, restarting nothing.
    let (code, out, err) = berth(&c.url(3), &["rollback", "web"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("web"), "{out}");
    converged(&c, 1, "web", 3, 3).await;
    assert_eq!(c.instance_pids(), pids, "the same processes run on");

    // Allowed to go down to 2 of 3, the rollout replaces each instance on its own host.
    let mut spec4 = spec2.clone();
    spec4["upgrade"] = json!({"min_healthy": 0.6, "max_surge": 1});
    assert_eq!(put(&c, 2, &spec4).await.0, 200);
    let v4 = converged(&c, 3, "web", 3, 4).await;
    assert_eq!(placements(&v4), placements(&v1), "same ids, hosts and IPs");
    assert_eq!(c.allocations(1, "lan").await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_cut_off_from_the_majority_fences_its_sticky_ip_instances() {
    let c = Cluster::start(3, &[]);
    c.wait_leader(FORM).await;
    pool(&c, 1, 35).await;
    put(&c, 1, &app("web", 3, json!({"network": {"pool": "lan"}, "constraints": [["hostname", "UNIQUE"]]}))).await;
    let before = converged(&c, 2, "web", 3, 1).await;
    let on1 = before.iter().find(|i| i["host"] == 1).unwrap()["id"].as_str().unwrap().to_string();
    // Node 1 alone: the two others stop answering.
    c.pause(2);
    c.pause(3);
    c.eventually(Duration::from_secs(20), "node 1 kills its sticky-IP instance", || async {
        (!c.instance_pids().iter().any(|(n, i, _)| *n == 1 && *i == on1)).then_some(())
    })
    .await;
    // The agent and its fence guard both act on the same timeout; the agent says so.
    c.eventually(Duration::from_secs(5), "node 1 says it fenced", || async {
        c.log_of(1).contains("fencing").then_some(())
    })
    .await;
    c.resume(2);
    c.resume(3);
    // Back in contact: everything runs again, every address on exactly one instance.
    let after = converged(&c, 3, "web", 3, 1).await;
    assert_eq!(ips(&after), ips(&before));
    c.eventually(FORM, "three instance processes again", || async {
        let pids = c.instance_pids();
        (pids.len() == 3 && pids.iter().map(|(_, i, _)| i).collect::<BTreeSet<_>>().len() == 3).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_host_starts_nothing_its_stale_replica_shows_until_it_caught_up() {
    let mut c = Cluster::start(3, &[]);
    c.wait_leader(FORM).await;
    pool(&c, 1, 36).await;
    put(&c, 1, &app("web", 2, json!({"network": {"pool": "lan"}, "constraints": [["hostname", "UNIQUE"]]}))).await;
    let before = converged(&c, 1, "web", 2, 1).await;
    // A host that holds an instance, and is not the leader (so the others keep a quorum).
    let leader = c.wait_leader(FORM).await;
    let moved = before.iter().find(|i| i["host"].as_u64() != Some(leader)).unwrap();
    let (host, id, ip) =
        (moved["host"].as_u64().unwrap(), moved["id"].as_str().unwrap().to_string(), moved["ip"].clone());
    // The host crashes with its instance; the cluster moves the instance, IP and all.
    let pids: Vec<i32> = c.instance_pids().into_iter().filter(|(n, _, _)| *n == host).map(|(_, _, p)| p).collect();
    c.kill(host);
    for pid in pids {
        // SAFETY: kill(2) of a process group this test's cluster started.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
    c.eventually(Duration::from_secs(40), "the instance runs elsewhere with its IP", || async {
        let list = instances(&c, leader, "web").await;
        let i = list.iter().find(|i| i["id"] == id.as_str())?;
        (i["host"].as_u64() != Some(host) && i["state"] == "running" && i["ip"] == ip).then_some(())
    })
    .await;
    // It restarts while it cannot reach the others: its replica still places the
    // instance on it, and nothing may start on that word.
    let others: Vec<u64> = c.ids().into_iter().filter(|n| *n != host).collect();
    for n in &others {
        c.pause(*n);
    }
    c.spawn(host);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let started = |c: &Cluster| c.instance_pids().iter().any(|(n, i, _)| *n == host && *i == id);
    assert!(!started(&c), "a host out of contact since its start started an instance from its stale replica");
    for n in &others {
        c.resume(*n);
    }
    // Back in contact, it catches up: the instance stays where it moved.
    let after = converged(&c, host, "web", 2, 1).await;
    let i = after.iter().find(|i| i["id"] == id.as_str()).unwrap();
    assert_ne!(i["host"].as_u64(), Some(host));
    assert_eq!(i["ip"], ip);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!started(&c), "the moved instance was started on its old host");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_cluster_is_its_own_quorum_and_never_fences_itself() {
    let c = Cluster::start(1, &[]);
    c.wait_leader(FORM).await;
    pool(&c, 1, 37).await;
    put(&c, 1, &app("solo", 1, json!({"network": {"pool": "lan"}}))).await;
    let before = converged(&c, 1, "solo", 1, 1).await;
    let pid = |c: &Cluster| c.instance_pids().first().map(|(_, _, p)| *p);
    let first = pid(&c).expect("the instance process runs");
    // Well past the 5 s after which a host without contact fences itself.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(pid(&c), Some(first), "the sticky-IP instance was killed");
    assert!(!c.log_of(1).contains("fencing"), "a lone node fenced itself:\n{}", c.log_of(1));
    assert_eq!(ips(&converged(&c, 1, "solo", 1, 1).await), ips(&before));
}
