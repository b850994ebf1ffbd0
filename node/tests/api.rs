//! The HTTP and gRPC APIs as a client sees them: contract error shapes and codes,
//! forwarding from followers, the gRPC services.

mod support;

use std::time::Duration;

use berth_proto::berth::cluster_client::ClusterClient;
use berth_proto::berth::ipam_client::IpamClient;
use berth_proto::berth::{AllocateRequest, CreatePoolRequest, GetClusterRequest, ListAllocationsRequest};
use reqwest::Method;
use serde_json::json;
use support::Cluster;

const FORM: Duration = Duration::from_secs(20);

fn assert_error(status: u16, body: &serde_json::Value, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"]["code"].as_str(), Some(want_code), "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_errors_follow_the_contract() {
    let c = Cluster::start(3, &[]);
    let leader = c.wait_leader(FORM).await;
    let follower = c.ids().into_iter().find(|i| *i != leader).unwrap();
    let f = follower;

    // Pool creation through a follower (forwarded), then idempotent re-creation.
    let pool = json!({"name": "lan", "subnet": "198.18.7.0/24", "gateway": "198.18.7.1", "range": "198.18.7.16/30"});
    let (s, v) = c.post(f, "/v1/ipam/pools", pool.clone()).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(
        v,
        json!({"name": "lan", "subnet": "198.18.7.0/24", "gateway": "198.18.7.1", "range": "198.18.7.16/30", "size": 4, "used": 0})
    );
    let (s, _) = c.post(f, "/v1/ipam/pools", pool).await;
    assert_eq!(s, 200, "identical pool again: 200, not a second pool");

    let (s, v) = c.post(f, "/v1/ipam/pools", json!({"name": "lan", "subnet": "198.18.8.0/24"})).await;
    assert_error(s, &v, 409, "pool_exists");
    let (s, v) = c.post(f, "/v1/ipam/pools", json!({"name": "b", "subnet": "198.18.7.0/25"})).await;
    assert_error(s, &v, 409, "subnet_overlap");
    let (s, v) = c.post(f, "/v1/ipam/pools", json!({"name": "c", "subnet": "198.18.9.0/24", "mask": 1})).await;
    assert_error(s, &v, 400, "invalid_request");
    assert!(v["error"]["message"].as_str().unwrap().contains("mask"));
    let (s, v) = c.post(f, "/v1/ipam/pools", json!({"name": "c", "subnet": "300.1.1.0/24"})).await;
    assert_error(s, &v, 400, "invalid_pool");
    let (s, v) = c.req(f, Method::POST, "/v1/ipam/pools", None, None).await;
    assert_error(s, &v, 400, "invalid_json");

    // Allocation until exhaustion.
    for i in 0..4 {
        let (s, v) = c.post(f, "/v1/ipam/pools/lan/allocations", json!({"owner": format!("o{i}")})).await;
        assert_eq!(s, 201, "{v}");
        assert_eq!(v["ip"], json!(format!("198.18.7.{}", 16 + i)));
    }
    let (s, v) = c.post(f, "/v1/ipam/pools/lan/allocations", json!({"owner": "x"})).await;
    assert_error(s, &v, 409, "pool_exhausted");
    assert_eq!(v["error"]["message"], json!("pool lan has no free address"));

    let (s, v) = c.post(f, "/v1/ipam/pools/wan/allocations", json!({"owner": "x"})).await;
    assert_error(s, &v, 404, "pool_not_found");
    let (s, v) = c.req(f, Method::DELETE, "/v1/ipam/pools/lan/allocations/198.18.7.99", None, None).await;
    assert_error(s, &v, 404, "allocation_not_found");
    let (s, v) = c.req(f, Method::DELETE, "/v1/ipam/pools/lan/allocations/not-an-ip", None, None).await;
    assert_error(s, &v, 400, "invalid_allocation");
    let (s, _) = c.req(f, Method::DELETE, "/v1/ipam/pools/lan/allocations/198.18.7.17", None, None).await;
    assert_eq!(s, 204);
    let (s, v) = c.post(f, "/v1/ipam/pools/lan/allocations", json!({"owner": "again"})).await;
    assert_eq!((s, v["ip"].as_str()), (201, Some("198.18.7.17")), "released address reused");

    // Pools listing shows use.
    let (s, v) = c.get(f, "/v1/ipam/pools").await;
    assert_eq!(s, 200);
    assert_eq!(v[0]["used"], json!(4));

    // Unknown route, wrong method.
    let (s, v) = c.get(f, "/v1/nothing").await;
    assert_error(s, &v, 404, "no_route");
    let (s, v) = c.req(f, Method::PUT, "/v1/ipam/pools", None, None).await;
    assert_error(s, &v, 405, "method_not_allowed");
    let (s, v) = c.get(f, "/v1/cluster?stale=perhaps").await;
    assert_error(s, &v, 400, "invalid_request");
    // Limits, each named.
    let (s, v) = c.get(f, "/v1/instances/web-1/logs?tail=100001").await;
    assert_error(s, &v, 400, "invalid_request");
    assert!(v["error"]["message"].as_str().unwrap().contains("100000 lines"), "{v}");
    let blob = json!({"cmd": ["/bin/true"], "env": {"BLOB": "x".repeat(70 * 1024)}});
    let (s, v) = c.req(f, Method::PUT, "/v1/apps/big", Some(blob), None).await;
    assert_error(s, &v, 400, "invalid_spec");
    assert!(v["error"]["message"].as_str().unwrap().contains("more than 65536"), "{v}");
    let (s, v) =
        c.req(f, Method::PUT, "/v1/apps/many", Some(json!({"cmd": ["/bin/true"], "instances": 1_000_001})), None).await;
    assert_error(s, &v, 400, "invalid_spec");
    // Too large: last, because the server closes a connection whose body it refused.
    // (The server may close the connection while the client still sends: then the
    // client sees a broken pipe instead of the answer, and tries again.)
    let big = "x".repeat(2 * 1024 * 1024);
    let mut answer = (0, serde_json::Value::Null);
    for _ in 0..5 {
        answer = c.post(f, "/v1/ipam/pools/lan/allocations", json!({"owner": big})).await;
        if answer.0 != 0 {
            break;
        }
    }
    assert_error(answer.0, &answer.1, 413, "too_large");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_idempotency_key_applies_once_through_any_node() {
    let c = Cluster::start(3, &[]);
    c.wait_leader(FORM).await;
    c.create_pool(1, "lan", 10).await;
    let mut ips = Vec::new();
    for via in [1, 2, 3, 1] {
        let (s, v) = c
            .req(via, Method::POST, "/v1/ipam/pools/lan/allocations", Some(json!({"owner": "once"})), Some("key-1"))
            .await;
        assert_eq!(s, 201, "{v}");
        ips.push(v["ip"].as_str().unwrap().to_string());
    }
    assert!(ips.iter().all(|ip| ip == &ips[0]), "{ips:?}");
    assert_eq!(c.allocations(2, "lan").await.len(), 1);
    // The same key on a different request (other arguments, another operation) is
    // refused: answering the allocation's outcome to it would claim a write that never ran.
    let (s, v) =
        c.req(2, Method::POST, "/v1/ipam/pools/lan/allocations", Some(json!({"owner": "other"})), Some("key-1")).await;
    assert_error(s, &v, 409, "idempotency_key_reused");
    let (s, v) = c.req(3, Method::PUT, "/v1/registers/r", Some(json!({"value": 1})), Some("key-1")).await;
    assert_error(s, &v, 409, "idempotency_key_reused");
    assert!(v["error"]["message"].as_str().unwrap().contains("\"key-1\""), "{v}");
    let (s, v) = c.get(1, "/v1/registers/r").await;
    assert_eq!((s, &v["value"]), (200, &serde_json::Value::Null), "the refused write did not apply: {v}");
    assert_eq!(c.allocations(1, "lan").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_api_serves_the_same_operations_on_any_node() {
    let c = Cluster::start(3, &[]);
    let leader = c.wait_leader(FORM).await;
    let follower = c.ids().into_iter().find(|i| *i != leader).unwrap();
    let url = format!("http://{}", c.nodes[&follower].grpc_addr());
    let mut ipam = IpamClient::connect(url.clone()).await.unwrap();
    let pool = ipam
        .create_pool(CreatePoolRequest {
            name: "g".into(),
            subnet: "198.18.11.0/24".into(),
            gateway: "198.18.11.1".into(),
            range: String::new(),
            request_id: "create-g".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pool.size, 253);
    let a = ipam
        .allocate(AllocateRequest {
            pool: "g".into(),
            owner: "grpc".into(),
            ip: String::new(),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a.ip, "198.18.11.2");
    let err = ipam
        .allocate(AllocateRequest {
            pool: "nope".into(),
            owner: "grpc".into(),
            ip: String::new(),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(err.message().starts_with("pool_not_found:"), "{}", err.message());
    let list =
        ipam.list_allocations(ListAllocationsRequest { pool: "g".into(), stale: false }).await.unwrap().into_inner();
    assert_eq!(list.allocations.len(), 1);

    let mut cluster = ClusterClient::connect(url).await.unwrap();
    let info = cluster.get_cluster(GetClusterRequest { stale: false }).await.unwrap().into_inner();
    assert_eq!(info.leader, leader);
    assert_eq!(info.members.len(), 3);

    // And the HTTP API sees what gRPC wrote.
    let (s, v) = c.get(leader, "/v1/ipam/pools/g/allocations").await;
    assert_eq!(s, 200);
    assert_eq!(v, json!([{"ip": "198.18.11.2", "owner": "grpc"}]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_read_write_and_compare_and_set_from_any_node() {
    let c = Cluster::start(3, &[]);
    c.wait_leader(FORM).await;
    let (s, v) = c.get(1, "/v1/registers/x").await;
    assert_eq!((s, &v["value"]), (200, &json!(null)));
    let (s, _) = c.req(2, Method::PUT, "/v1/registers/x", Some(json!({"value": 1})), None).await;
    assert_eq!(s, 200);
    let (s, v) = c.get(3, "/v1/registers/x").await;
    assert_eq!((s, &v["value"]), (200, &json!(1)));
    let (s, _) = c.post(1, "/v1/registers/x/cas", json!({"from": 1, "to": 2})).await;
    assert_eq!(s, 200);
    let (s, v) = c.post(3, "/v1/registers/x/cas", json!({"from": 1, "to": 3})).await;
    assert_error(s, &v, 409, "cas_mismatch");
    let (_, v) = c.get(2, "/v1/registers/x").await;
    assert_eq!(v["value"], json!(2));
    let (s, _) = c.post(2, "/v1/registers/y/cas", json!({"from": null, "to": "a"})).await;
    assert_eq!(s, 200, "an absent register holds null");
}
