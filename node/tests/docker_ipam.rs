//! berth as Docker's IPAM plugin, with the real engine: a node serves the plugin on
//! /run/docker/plugins/berth.sock; `docker network create --ipam-driver berth
//! --subnet` makes (or adopts) a berth pool and takes its gateway from the ledger;
//! `docker run --network` gets its address from the replicated ledger (seen through
//! another node's API, never given twice, also beside berth's own allocations);
//! removing the container and the network releases them and the pool the plugin
//! made. Bad requests (no subnet) fail with berth's reason in Docker's error.
//!
//! Needs root, a Docker engine and busybox-static (the test image); says why and
//! passes without them.

mod support;

use std::time::Duration;

use serde_json::json;
use support::{ensure_image, missing_capability, sh, Cluster, IMAGE};

const SOCKET: &str = "/run/docker/plugins/berth.sock";
const NET: &str = "berth-ipam-test";
const SUBNET: &str = "198.18.93.0/24";

fn cleanup() {
    let _ = sh("docker ps -aq --filter label=berth.ipam-test | xargs -r docker rm -f >/dev/null 2>&1");
    let _ = sh(&format!("docker network rm {NET} >/dev/null 2>&1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_networks_and_containers_take_their_addresses_from_berth() {
    if let Some(why) = missing_capability() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    if std::path::Path::new(SOCKET).exists() && std::os::unix::net::UnixStream::connect(SOCKET).is_ok() {
        eprintln!("SKIPPED: another berth plugin already serves {SOCKET}");
        return;
    }
    ensure_image();
    cleanup();
    let c =
        Cluster::start_each(3, |id| if id == 3 { vec!["--docker-ipam-socket".into(), SOCKET.into()] } else { vec![] });
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    // An address berth's own users hold already: Docker must never get it.
    let (s, v) = c.post(leader, "/v1/ipam/pools", json!({"name": "shared", "subnet": SUBNET})).await;
    assert_eq!(s, 201, "{v}");
    let (s, v) =
        c.post(1, "/v1/ipam/pools/shared/allocations", json!({"owner": "berth-app", "ip": "198.18.93.2"})).await;
    assert_eq!(s, 201, "{v}");

    let net = sh(&format!("docker network create --ipam-driver berth --subnet {SUBNET} {NET}"));
    assert!(net.is_ok(), "docker network create: {net:?}\n{}", c.log_of(3));
    // Docker asked for a gateway; the ledger gave it (the lowest free address).
    let allocations = c.allocations(2, "shared").await;
    assert!(allocations.contains(&("198.18.93.1".to_string(), "docker-gateway".to_string())), "{allocations:?}");

    let mut ips = Vec::new();
    for n in 0..2 {
        let id = sh(&format!(
            "docker run -d --label berth.ipam-test=1 --name berth-ipam-{n} --network {NET} {IMAGE} sleep 300"
        ))
        .expect("docker run on the berth network");
        let ip = sh(&format!(
            "docker inspect -f '{{{{range .NetworkSettings.Networks}}}}{{{{.IPAddress}}}}{{{{end}}}}' {id}"
        ))
        .unwrap();
        ips.push(ip);
    }
    let allocations = c.allocations(1, "shared").await;
    for ip in &ips {
        assert!(allocations.iter().any(|(a, owner)| a == ip && owner.starts_with("docker")), "{ip} in {allocations:?}");
        assert_ne!(ip, "198.18.93.2", "an address berth had given out");
    }
    assert_ne!(ips[0], ips[1]);

    // Teardown gives everything back; the adopted pool stays (the plugin did not make it).
    sh("docker ps -aq --filter label=berth.ipam-test | xargs -r docker rm -f >/dev/null").unwrap();
    sh(&format!("docker network rm {NET}")).unwrap();
    let left = c.allocations(1, "shared").await;
    assert_eq!(left, vec![("198.18.93.2".to_string(), "berth-app".to_string())], "only berth's own is left");

    // A pool the plugin makes is removed with its network.
    let other = "198.18.94.0/24";
    sh(&format!("docker network create --ipam-driver berth --subnet {other} {NET}")).expect("a new subnet");
    let (_, pools) = c.get(1, "/v1/ipam/pools").await;
    assert!(pools.as_array().unwrap().iter().any(|p| p["name"] == "docker-198-18-94-0-24"), "{pools}");
    sh(&format!("docker network rm {NET}")).unwrap();
    let (_, pools) = c.get(1, "/v1/ipam/pools").await;
    assert!(!pools.as_array().unwrap().iter().any(|p| p["subnet"] == other), "{pools}");

    // Docker shows berth's reason when it refuses.
    let err = sh(&format!("docker network create --ipam-driver berth {NET}")).unwrap_err();
    assert!(err.contains("berth picks no subnets"), "{err}");
    cleanup();
}
