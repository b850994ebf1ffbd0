//! The docker runtime against the real Docker engine: containers on a macvlan network
//! (a veth end on a test bridge as the parent) with their sticky IPs, replaced with the
//! same IP when killed, rolled over and back keeping IPs, adopted after an agent
//! restart, strays removed, logs through another node; a drained host's container and
//! a lost host's (agent killed: its fence guard kills the container) move to another
//! host with their IPs, never on two running containers at once.
//!
//! Needs root, a Docker engine and a static busybox (Debian's `busybox-static`) for
//! the test image, which is built locally with `docker import` (no pulls). Without
//! them the test says why and does nothing. One test function: the phases share one
//! engine, and node ids 71..73 keep its containers apart from everything else.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use support::{ensure_image, missing_capability, sh, Cluster, IMAGE};

const CONVERGE: Duration = Duration::from_secs(60);

/// A bridge and a veth pair whose one end is the macvlan parent; removed on drop.
struct Lan {
    bridge: String,
    parent: String,
}

impl Lan {
    fn new() -> Lan {
        let tag = std::process::id() % 100_000;
        let lan = Lan { bridge: format!("bbr{tag}"), parent: format!("bvp{tag}") };
        sh(&format!(
            "ip link add {b} type bridge && ip link set {b} up && \
             ip link add {p} type veth peer name {p}x && ip link set {p}x master {b} && \
             ip link set {p} up && ip link set {p}x up",
            b = lan.bridge,
            p = lan.parent
        ))
        .expect("create the test LAN");
        lan
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        let _ = sh(&format!("ip link del {}", self.parent));
        let _ = sh(&format!("ip link del {}", self.bridge));
    }
}

fn containers() -> BTreeMap<String, (String, String)> {
    // name → (id, ip) for every container of nodes 71..73.
    let mut out = BTreeMap::new();
    for node in 71..=73 {
        let ids = sh(&format!("docker ps -q --filter label=berth.node={node}")).unwrap_or_default();
        for id in ids.split_whitespace() {
            let info = sh(&format!(
                "docker inspect -f '{{{{.Name}}}} {{{{range .NetworkSettings.Networks}}}}{{{{.IPAddress}}}}{{{{end}}}}' {id}"
            ))
            .unwrap_or_default();
            let mut parts = info.split_whitespace();
            let name = parts.next().unwrap_or("").trim_start_matches('/').to_string();
            out.insert(name, (id.to_string(), parts.next().unwrap_or("").to_string()));
        }
    }
    out
}

/// Removes what this test (or an earlier, interrupted run of it) left in the engine:
/// containers of nodes 71..73 and berth networks of test pools (Docker refuses a
/// network whose subnet overlaps another's).
fn cleanup() {
    for node in 71..=73 {
        let _ = sh(&format!("docker ps -aq --filter label=berth.node={node} | xargs -r docker rm -f >/dev/null"));
    }
    let _ = sh("docker network ls -q --filter label=berth.test | xargs -r docker network rm >/dev/null 2>&1");
    let _ = sh("for n in $(docker network ls --format '{{.Name}}' | grep '^berth-lan'); do docker network rm $n >/dev/null 2>&1; done");
    let _ = sh("for l in $(ip -o link show | grep -o 'bs-lan[0-9]*'); do ip link del $l; done");
}

async fn instances(c: &Cluster, via: u64) -> Vec<Value> {
    let (s, v) = c.get(via, "/v1/instances?app=web").await;
    assert_eq!(s, 200, "{v}");
    v.as_array().unwrap().clone()
}

async fn converged(c: &Cluster, via: u64, n: usize, version: u64) -> Vec<Value> {
    c.eventually(CONVERGE, &format!("{n} healthy containers at v{version}"), || async {
        let (_, a) = c.get(via, "/v1/apps/web").await;
        let list = instances(c, via).await;
        let ok = a["deployment"].is_null()
            && list.len() == n
            && list.iter().all(|i| i["state"] == "running" && i["health"] == "healthy" && i["version"] == version);
        ok.then_some(list)
    })
    .await
}

fn ips(list: &[Value]) -> BTreeMap<String, String> {
    list.iter().map(|i| (i["id"].as_str().unwrap().to_string(), i["ip"].as_str().unwrap().to_string())).collect()
}

/// Waits until instance `before` runs healthy on another host with its IP, checking
/// every 200 ms that no IP is on two running containers; returns its new view.
async fn moved_with_its_ip(c: &Cluster, via: u64, before: &Value) -> Value {
    let id = before["id"].as_str().unwrap();
    let deadline = std::time::Instant::now() + CONVERGE;
    loop {
        let mut seen = BTreeMap::new();
        for (name, (_, ip)) in containers() {
            if let Some(other) = seen.insert(ip.clone(), name.clone()) {
                panic!("IP {ip} live twice: containers {other} and {name}");
            }
        }
        let list = instances(c, via).await;
        let (_, app) = c.get(via, "/v1/apps/web").await;
        if let Some(i) = list.iter().find(|i| i["id"] == id) {
            let there = format!("berth-{}-{id}", i["host"]);
            if i["host"] != before["host"]
                && i["state"] == "running"
                && i["health"] == "healthy"
                && seen.get(before["ip"].as_str().unwrap()) == Some(&there)
            {
                return i.clone();
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{id} did not move with its IP within {CONVERGE:?}: containers {seen:?}\ninstances {list:?}\napp {app}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_get_their_sticky_ips_on_macvlan_and_keep_them() {
    if let Some(why) = missing_capability() {
        eprintln!("SKIPPED containers_get_their_sticky_ips_on_macvlan_and_keep_them: {why}");
        return;
    }
    ensure_image();
    let lan = Lan::new();
    let pool = format!("lan{}", std::process::id() % 100_000);
    cleanup();
    let mut c = Cluster::start_ids(&[71, 72, 73], |_| {
        vec!["--runtime".into(), "docker".into(), "--macvlan-parent".into(), lan.parent.clone()]
    });
    c.wait_leader(Duration::from_secs(20)).await;
    let (s, v) =
        c.post(71, "/v1/ipam/pools", json!({"name": pool, "subnet": "198.18.60.0/24", "gateway": "198.18.60.1"})).await;
    assert_eq!(s, 201, "{v}");

    // Three HTTP servers, one per host.
    let spec = |v: &str| {
        json!({
            "id": "web",
            "image": IMAGE,
            "cmd": ["/bin/sh", "-c", format!("trap 'echo bye; exit 0' TERM; echo started {v} $BERTH_INSTANCE; mkdir -p /www; echo $BERTH_INSTANCE > /www/index.html; httpd -f -p 80 -h /www & wait $!")],
            "instances": 3,
            "cpus": 0.1,
            "mem_mb": 32,
            "network": {"pool": pool},
            "health_check": {"http": {"port": 80, "path": "/"}, "interval_s": 1, "timeout_s": 1, "grace_s": 0, "max_failures": 3},
            "constraints": [["hostname", "UNIQUE"]],
            "upgrade": {"min_healthy": 0.5, "max_surge": 1},
            "stop_grace_s": 5,
        })
    };
    let (s, v) = c.req(72, Method::PUT, "/v1/apps/web", Some(spec("v1")), None).await;
    assert_eq!(s, 201, "{v}");
    let v1 = converged(&c, 73, 3, 1).await;
    let running = containers();
    assert_eq!(running.len(), 3, "{running:?}");
    for i in &v1 {
        let name = format!("berth-{}-{}", i["host"], i["id"].as_str().unwrap());
        let (_, ip) = running.get(&name).unwrap_or_else(|| panic!("no container {name} in {running:?}"));
        assert_eq!(ip, i["ip"].as_str().unwrap(), "the container has the instance's sticky IP");
    }
    // The host reaches every container at its IP, through the shim (the HTTP health
    // checks above already did).
    for i in &v1 {
        let body = reqwest::get(format!("http://{}/", i["ip"].as_str().unwrap())).await.unwrap().text().await.unwrap();
        assert_eq!(body.trim(), i["id"].as_str().unwrap());
    }
    let shim = sh(&format!("ip -o addr show dev bs-{pool}")).unwrap();
    assert!(shim.contains("198.18.60."), "the shim has an address of the pool: {shim}");
    let (_, allocs) = c.get(71, &format!("/v1/ipam/pools/{pool}/allocations")).await;
    assert!(allocs.as_array().unwrap().iter().any(|a| a["owner"].as_str().unwrap().starts_with("shim:")), "{allocs}");
    let net = sh(&format!("docker network inspect berth-{pool} -f '{{{{.Driver}}}} {{{{index .Options \"parent\"}}}} {{{{json .IPAM.Config}}}}'")).unwrap();
    assert!(net.starts_with(&format!("macvlan {}", lan.parent)), "{net}");
    assert!(net.contains("\"IPRange\":\"198.18.60.1/32\""), "Docker's allocator is confined: {net}");

    // docker kill: replaced, same IP.
    let victim = v1[0]["id"].as_str().unwrap().to_string();
    let name = format!("berth-{}-{victim}", v1[0]["host"]);
    let old_id = running[&name].0.clone();
    sh(&format!("docker kill {name} >/dev/null")).unwrap();
    c.eventually(CONVERGE, "the killed container is replaced", || async {
        let now = containers();
        let list = instances(&c, 71).await;
        let i = list.iter().find(|i| i["id"] == victim.as_str())?;
        let replaced = now.get(&name).is_some_and(|(id, ip)| id != &old_id && ip == v1[0]["ip"].as_str().unwrap());
        (replaced && i["state"] == "running").then_some(())
    })
    .await;

    // Rolling update keeps the IPs; rollback too.
    let (s, _) = c.req(71, Method::PUT, "/v1/apps/web", Some(spec("v2")), None).await;
    assert_eq!(s, 200);
    let v2 = converged(&c, 72, 3, 2).await;
    assert_eq!(ips(&v2), ips(&v1));
    let (s, _) = c.req(73, Method::POST, "/v1/apps/web/rollback", None, None).await;
    assert_eq!(s, 200);
    let v3 = converged(&c, 71, 3, 3).await;
    assert_eq!(ips(&v3), ips(&v1));

    // Logs through a node that does not run the container.
    let on71 = v3.iter().find(|i| i["host"] == 71).unwrap()["id"].as_str().unwrap().to_string();
    c.eventually(CONVERGE, "logs through node 72", || async {
        let t = c
            .http
            .get(format!("{}/v1/instances/{on71}/logs?tail=5", c.url(72)))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        t.contains(&format!("started v1 {on71}")).then_some(())
    })
    .await;

    // Agent restart with containers running: nothing restarted; a stray is removed.
    let before = containers();
    sh(&format!(
        "docker run -d --name berth-71-ghost-1 --label berth.node=71 --label berth.instance=ghost-1 \
         --label berth.epoch=1 {IMAGE} sleep 1000 >/dev/null"
    ))
    .unwrap();
    c.kill(71);
    c.spawn(71);
    c.eventually(CONVERGE, "the stray container is removed", || async {
        (!containers().contains_key("berth-71-ghost-1")).then_some(())
    })
    .await;
    converged(&c, 73, 3, 3).await;
    assert_eq!(containers(), before, "no container was restarted or duplicated");

    // exec through a node that may not run it; the command's exit code is passed on.
    let one = v3[0]["id"].as_str().unwrap().to_string();
    let (s, v) = c.post(73, &format!("/v1/instances/{one}/exec"), json!({"cmd": ["cat", "/www/index.html"]})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!((v["exit_code"].as_i64(), v["output"].as_str().map(str::trim)), (Some(0), Some(one.as_str())));
    let out = std::process::Command::new(support::BERTH)
        .args([
            "--addr",
            &c.url(72),
            "exec",
            &format!("web/{}", one.trim_start_matches("web-")),
            "--",
            "sh",
            "-c",
            "exit 3",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));

    // Stop grace: the server traps SIGTERM and exits 0 within stop_grace_s (not killed).
    let since = sh("date +%s").unwrap();
    let (s, _) = c.post(71, "/v1/apps/web/scale", json!({"instances": 2})).await;
    assert_eq!(s, 200);
    let youngest = v3
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .max_by_key(|id| id.trim_start_matches("web-").parse::<u64>().unwrap())
        .unwrap();
    let code = c
        .eventually(CONVERGE, "the youngest container stopped", || async {
            let until = sh("date +%s").ok()?;
            let codes = sh(&format!(
                "docker events --since {since} --until {until} --filter label=berth.instance={youngest} --filter event=die --format '{{{{index .Actor.Attributes \"exitCode\"}}}}'"
            ))
            .ok()?;
            codes.lines().last().map(str::to_string)
        })
        .await;
    assert_eq!(code, "0", "stopped cleanly by SIGTERM, not SIGKILL");
    converged(&c, 72, 2, 3).await;

    // Drain a host: its container moves to the free host with its IP, and no IP is on
    // two running containers at any moment.
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    let two = converged(&c, leader, 2, 3).await;
    let mover = two.iter().find(|i| i["host"] != leader).unwrap_or(&two[0]).clone();
    let from = mover["host"].as_u64().unwrap();
    let (s, v) = c.post(leader, &format!("/v1/hosts/{from}/drain"), json!({})).await;
    assert_eq!(s, 200, "{v}");
    let moved = moved_with_its_ip(&c, leader, &mover).await;
    assert_ne!(moved["host"], from);
    let (s, v) = c.post(leader, &format!("/v1/hosts/{from}/eligible"), json!({})).await;
    assert_eq!(s, 200, "{v}");

    // Host loss: kill -9 the agent of a host that is not the leader. Its fence guard
    // kills the container when the lease runs out; the leader moves the instance to
    // the free host with the same IP after the deadline — never live twice.
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    let two = converged(&c, leader, 2, 3).await;
    let victim = two.iter().find(|i| i["host"] != leader).expect("an instance off the leader").clone();
    let lost = victim["host"].as_u64().unwrap();
    c.kill(lost);
    let moved = moved_with_its_ip(&c, leader, &victim).await;
    assert_ne!(moved["host"], lost);
    let fenced = sh(&format!(
        "docker ps -q --filter label=berth.node={lost} --filter label=berth.instance={}",
        victim["id"].as_str().unwrap()
    ))
    .unwrap();
    assert!(fenced.is_empty(), "the lost host's container was fenced: {fenced}");
    // The host comes back: its stale container is removed, nothing moves back.
    c.spawn(lost);
    c.eventually(CONVERGE, "the returning host removes its stale container", || async {
        let left = sh(&format!(
            "docker ps -aq --filter label=berth.node={lost} --filter label=berth.instance={}",
            victim["id"].as_str().unwrap()
        ))
        .ok()?;
        left.is_empty().then_some(())
    })
    .await;
    let after = converged(&c, leader, 2, 3).await;
    assert_eq!(ips(&after), ips(&two), "every instance kept its IP");

    // A missing image: the instance fails with the reason; nothing crashes.
    let (s, v) = c
        .req(
            73,
            Method::PUT,
            "/v1/apps/ghost",
            Some(json!({"id": "ghost", "image": "berth-test/absent:1", "cmd": ["true"]})),
            None,
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let msg = c
        .eventually(CONVERGE, "the missing image is reported", || async {
            let (_, v) = c.get(71, "/v1/instances?app=ghost").await;
            let i = v.as_array()?.first()?.clone();
            (i["state"] == "failed").then(|| i["message"].as_str().unwrap_or("").to_string())
        })
        .await;
    assert!(msg.contains("berth-test/absent:1") && msg.contains("not on this host"), "{msg}");
    let (s, _) = c.req(73, Method::DELETE, "/v1/apps/ghost", None, None).await;
    assert_eq!(s, 200);

    // Delete: every container goes, every IP is released.
    let (s, _) = c.req(72, Method::DELETE, "/v1/apps/web", None, None).await;
    assert_eq!(s, 200);
    c.eventually(CONVERGE, "containers removed and IPs released", || async {
        let (_, allocs) = c.get(71, &format!("/v1/ipam/pools/{pool}/allocations")).await;
        let only_shims =
            allocs.as_array().is_some_and(|a| a.iter().all(|x| x["owner"].as_str().unwrap().starts_with("shim:")));
        (containers().is_empty() && only_shims).then_some(())
    })
    .await;
    drop(c);
    cleanup();
}
