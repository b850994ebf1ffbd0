//! Host loss on a real cluster with the process runtime: a killed host's instances are
//! fenced by its guard and come back elsewhere with their IPs, never live twice; a
//! pause shorter than the deadline moves nothing; a returning host runs nothing of
//! what moved away.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::Cluster;

const FORM: Duration = Duration::from_secs(20);
/// The deadline these tests run with (the shortest allowed): fencing after 3 s.
const DEADLINE: &str = "6";

fn sticky_app(id: &str, n: u32) -> Value {
    json!({
        "id": id,
        "cmd": ["/bin/sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.3 & wait $!; done"],
        "instances": n,
        "cpus": 0.1,
        "mem_mb": 16,
        "stop_grace_s": 2,
        "network": {"pool": "lan"},
    })
}

async fn start(octet: u8) -> (Cluster, u64) {
    let c = Cluster::start(3, &["--host-deadline-s", DEADLINE]);
    let leader = c.wait_leader(FORM).await;
    c.create_pool(leader, "lan", octet).await;
    (c, leader)
}

/// (host, ip) per instance once all `n` run.
async fn running(c: &Cluster, via: u64, app: &str, n: usize) -> BTreeMap<String, (u64, String)> {
    c.eventually(Duration::from_secs(40), &format!("{n} instances of {app} running"), || async {
        let (s, v) = c.get(via, &format!("/v1/instances?app={app}")).await;
        let list = v.as_array().cloned().unwrap_or_default();
        let ok = s == 200 && list.len() == n && list.iter().all(|i| i["state"] == "running");
        ok.then(|| {
            list.iter()
                .map(|i| {
                    let host = i["host"].as_u64().unwrap();
                    (i["id"].as_str().unwrap().to_string(), (host, i["ip"].as_str().unwrap().to_string()))
                })
                .collect()
        })
    })
    .await
}

/// Panics if some instance (so its sticky IP) has live processes on two hosts.
fn assert_never_live_twice(c: &Cluster) {
    let mut hosts: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for (node, instance, _) in c.instance_pids() {
        hosts.entry(instance).or_default().insert(node);
    }
    for (instance, on) in hosts {
        assert!(on.len() == 1, "{instance} (and its IP) is live on hosts {on:?}");
    }
}

async fn host_state(c: &Cluster, via: u64, host: u64) -> String {
    let (_, v) = c.get(via, "/v1/hosts").await;
    v.as_array()
        .and_then(|a| a.iter().find(|h| h["id"] == host))
        .and_then(|h| h["state"].as_str())
        .unwrap_or("")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_host_is_fenced_by_its_guard_and_its_instances_move_with_their_ips() {
    let (mut c, leader) = start(40).await;
    let (s, v) = c.req(leader, reqwest::Method::PUT, "/v1/apps/web", Some(sticky_app("web", 6)), None).await;
    assert_eq!(s, 201, "{v}");
    let before = running(&c, leader, "web", 6).await;
    let victim = *c.ids().iter().find(|id| **id != leader).unwrap();
    let on_victim: BTreeSet<&String> = before.iter().filter(|(_, (h, _))| *h == victim).map(|(i, _)| i).collect();
    assert!(!on_victim.is_empty(), "spread puts instances on every host: {before:?}");
    assert!(c.guard_pid(victim).is_some(), "every node starts a fence guard");

    // kill -9: the agent cannot fence; its instances outlive it, until the guard acts.
    let killed = Instant::now();
    c.kill(victim);
    assert!(c.instance_pids().iter().any(|(n, _, _)| *n == victim), "instances outlive the agent");
    c.eventually(Duration::from_secs(30), "the lost instances run elsewhere", || async {
        assert_never_live_twice(&c);
        let (_, v) = c.get(leader, "/v1/instances?app=web").await;
        let list = v.as_array().cloned().unwrap_or_default();
        let moved = list.len() == 6 && list.iter().all(|i| i["state"] == "running" && i["host"] != victim);
        moved.then_some(())
    })
    .await;
    let took = killed.elapsed();
    assert!(
        !c.instance_pids().iter().any(|(n, _, _)| *n == victim),
        "the guard killed the dead agent's sticky-IP instances"
    );
    let guard_log = std::fs::read_to_string(c.data_dir(victim).join("fence-guard.log")).unwrap_or_default();
    assert!(guard_log.contains("fenced by the guard"), "{guard_log}");
    let moved = running(&c, leader, "web", 6).await;
    for (id, (host, ip)) in &moved {
        assert_eq!(ip, &before[id].1, "{id} keeps its IP");
        assert_ne!(*host, victim);
    }
    assert_eq!(host_state(&c, leader, victim).await, "down");
    eprintln!("moved in {took:?} (deadline {DEADLINE} s)");
    c.eventually(Duration::from_secs(10), "the guard exits once nothing is left to fence", || async {
        c.guard_pid(victim).is_none().then_some(())
    })
    .await;

    // The host returns: up again, and it runs nothing of what moved away.
    c.spawn(victim);
    c.eventually(FORM, "the host is up again", || async {
        (host_state(&c, leader, victim).await == "up").then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_never_live_twice(&c);
    assert_eq!(running(&c, leader, "web", 6).await, moved, "nothing moves back or twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_shorter_than_the_deadline_moves_nothing() {
    let (c, leader) = start(41).await;
    c.req(leader, reqwest::Method::PUT, "/v1/apps/web", Some(sticky_app("web", 3)), None).await;
    let before = running(&c, leader, "web", 3).await;
    let pids_before = c.instance_pids();
    let victim = *c.ids().iter().find(|id| **id != leader).unwrap();

    // Shorter than the fence timeout (3 s): nothing at all happens.
    c.pause(victim);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.resume(victim);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(c.instance_pids(), pids_before, "the same processes run on");
    assert_eq!(running(&c, leader, "web", 3).await, before);

    // Longer than the fence timeout, shorter than the deadline (6 s): the host is never
    // declared down and nothing moves; its sticky-IP instance is fenced meanwhile and
    // starts again in place.
    c.pause(victim);
    let paused = Instant::now();
    while paused.elapsed() < Duration::from_millis(4500) {
        assert_eq!(host_state(&c, leader, victim).await, "up", "a blip is not a host loss");
        assert_never_live_twice(&c);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    c.resume(victim);
    let after = running(&c, leader, "web", 3).await;
    assert_eq!(after, before, "same hosts, same IPs");
    assert_eq!(host_state(&c, leader, victim).await, "up");
    assert!(!c.log_of(leader).contains("host liveness changed"), "the leader never changed its verdict");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_that_never_reschedules_waits_for_its_host_and_runs_there_again() {
    let (mut c, leader) = start(42).await;
    let mut spec = sticky_app("db", 3);
    spec["constraints"] = json!([["hostname", "UNIQUE"]]);
    spec["unreachable"] = json!({"reschedule": false});
    c.req(leader, reqwest::Method::PUT, "/v1/apps/db", Some(spec), None).await;
    let before = running(&c, leader, "db", 3).await;
    let victim = *c.ids().iter().find(|id| **id != leader).unwrap();
    c.kill(victim);
    c.eventually(Duration::from_secs(20), "the host is declared down", || async {
        (host_state(&c, leader, victim).await == "down").then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, v) = c.get(leader, "/v1/instances?app=db").await;
    let on_victim: Vec<&Value> = v.as_array().unwrap().iter().filter(|i| i["host"] == victim).collect();
    assert_eq!(on_victim.len(), 1, "it stays on its host: {v}");
    assert_eq!(on_victim[0]["state"], "lost");
    assert_eq!(v.as_array().unwrap().len(), 3, "and nothing replaces it");
    assert_never_live_twice(&c);
    c.spawn(victim);
    assert_eq!(running(&c, leader, "db", 3).await, before, "back on its host with its IP");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_host_empties_as_min_healthy_allows_and_bad_drains_are_refused() {
    let (c, leader) = start(43).await;
    let mut spec = sticky_app("web", 4);
    spec["upgrade"] = json!({"min_healthy": 0.75, "max_surge": 1});
    c.req(leader, reqwest::Method::PUT, "/v1/apps/web", Some(spec), None).await;
    let mut pinned = sticky_app("pinned", 1);
    pinned["constraints"] = json!([["hostname", "LIKE", "1"]]);
    c.req(leader, reqwest::Method::PUT, "/v1/apps/pinned", Some(pinned), None).await;
    let before = running(&c, leader, "web", 4).await;
    running(&c, leader, "pinned", 1).await;

    // Bad drains: an unknown host, the last host that can run an app.
    let (s, v) = c.post(2, "/v1/hosts/9/drain", json!({})).await;
    assert_eq!((s, v["error"]["code"].as_str()), (404, Some("host_not_found")), "{v}");
    let (s, v) = c.post(2, "/v1/hosts/x/drain", json!({})).await;
    assert_eq!((s, v["error"]["code"].as_str()), (400, Some("invalid_request")), "{v}");
    let (s, v) = c.post(3, "/v1/hosts/1/drain", json!({})).await;
    assert_eq!((s, v["error"]["code"].as_str()), (409, Some("last_host")), "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("pinned"), "{v}");

    let victim = 2;
    let (code, out, err) = support::berth(&c.url(3), &["drain", "2"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("draining"), "{out}");
    let after = c
        .eventually(Duration::from_secs(30), "nothing runs on the drained host", || async {
            let now = running(&c, leader, "web", 4).await;
            now.values().all(|(h, _)| *h != victim).then_some(now)
        })
        .await;
    for (id, (_, ip)) in &after {
        assert_eq!(ip, &before[id].1, "{id} keeps its IP");
    }
    assert_eq!(host_state(&c, leader, victim).await, "draining");
    assert_never_live_twice(&c);
    let (code, out, err) = support::berth(&c.url(1), &["drain", "--undo", "2"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(" up "), "{out}");
}
