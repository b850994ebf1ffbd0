//! Scenario tests of apply: a transcript of requests and what each returned.

use std::net::Ipv4Addr;

use berth_raft::StateMachine;

use super::*;

fn req(id: &str, at_ms: u64, cmd: Command) -> Request {
    Request { id: id.into(), at_ms, cmd }
}

fn create_lan() -> Command {
    Command::CreatePool {
        name: "lan".into(),
        subnet: "10.99.0.0/24".parse().unwrap(),
        gateway: Some("10.99.0.1".parse().unwrap()),
        range: Some("10.99.0.16/30".parse().unwrap()),
    }
}

fn allocate() -> Command {
    Command::Allocate { pool: "lan".into(), owner: "web".into(), ip: None }
}

fn ip_of(r: &Response) -> String {
    match &r.0 {
        Ok(Reply::Allocation(a)) => a.ip.clone(),
        other => panic!("not an allocation: {other:?}"),
    }
}

#[test]
fn a_retried_request_is_applied_once_and_answered_the_same() {
    let mut s = State::default();
    s.apply(1, req("p", 10, create_lan()));
    let first = s.apply(2, req("r1", 11, allocate()));
    // The client timed out and retried through another node: Raft carries it again.
    let again = s.apply(3, req("r1", 12, allocate()));
    assert_eq!(first, again);
    assert_eq!(s.ipam.pool("lan").unwrap().used(), 1, "applied once");
    let other = s.apply(4, req("r2", 13, allocate()));
    assert_ne!(ip_of(&first), ip_of(&other));
}

#[test]
fn a_retried_failure_is_answered_with_the_same_failure() {
    let mut s = State::default();
    s.apply(1, req("p", 10, create_lan()));
    for i in 0..4 {
        s.apply(2 + i, req(&format!("a{i}"), 10, allocate()));
    }
    let full = s.apply(10, req("x", 10, allocate()));
    assert_eq!(full.0.as_ref().unwrap_err().code, "pool_exhausted");
    s.apply(11, req("rel", 10, Command::Release { pool: "lan".into(), ip: "10.99.0.16".parse().unwrap() }));
    // The retry of "x" must not now succeed behind the client's back.
    assert_eq!(s.apply(12, req("x", 10, allocate())), full);
    assert_eq!(ip_of(&s.apply(13, req("y", 10, allocate()))), "10.99.0.16");
}

#[test]
fn the_replicated_clock_never_goes_backwards() {
    let mut s = State::default();
    s.apply(1, req("a", 1_000, create_lan()));
    s.apply(2, req("b", 500, allocate())); // a new leader with a slow clock
    assert_eq!(s.clock_ms, 1_000);
    let a = s.ipam.pool("lan").unwrap().allocation(Ipv4Addr::new(10, 99, 0, 16)).unwrap();
    assert_eq!(a.at_ms, 1_000);
}

#[test]
fn snapshot_and_restore_give_the_same_state_and_dedup_record() {
    let mut s = State::default();
    s.apply(1, req("p", 10, create_lan()));
    let first = s.apply(2, req("r1", 11, allocate()));
    let bytes = s.snapshot().unwrap();
    let mut t = State::default();
    t.restore(&bytes).unwrap();
    assert_eq!(t.apply(3, req("r1", 12, allocate())), first, "dedup survives the snapshot");
    assert_eq!(ip_of(&t.apply(4, req("r2", 12, allocate()))), "10.99.0.17");
    assert_eq!(t.applied_index, 4);
}

#[test]
fn restore_rejects_garbage() {
    let mut s = State::default();
    assert!(s.restore(b"not a snapshot").is_err());
}

#[test]
fn restore_rejects_a_forged_length_instead_of_panicking() {
    // Found by the `snapshot` fuzz target: a map claiming 2^60-odd entries made the
    // persistent map's own decoder ask for that capacity (a capacity-overflow panic).
    let mut forged = vec![0u8; 72];
    forged[7] = 0x08;
    forged[8] = 0x9a;
    forged[10] = 0x29;
    forged[11] = 0x86;
    forged[13] = 0x40;
    forged[69..72].copy_from_slice(&[0x86, 0x76, 0x79]);
    assert!(State::default().restore(&forged).is_err());
    // Every length prefix of a real snapshot forged to the maximum: an error, never a panic.
    let mut s = State::default();
    s.apply(1, req("a", 1, create_lan()));
    s.apply(2, req("b", 2, allocate()));
    let bytes = s.snapshot().unwrap();
    for at in 0..bytes.len().saturating_sub(8) {
        let mut b = bytes.clone();
        b[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        let _ = State::default().restore(&b);
    }
}

#[test]
fn retired_node_ids_cannot_register_again() {
    let mut s = State::default();
    let info = nodes::NodeInfo {
        id: 4,
        grpc: "127.0.0.1:7404".into(),
        http: "127.0.0.1:7484".into(),
        runtime: "process".into(),
        cpus: 2.0,
        mem_mb: 1024,
        labels: Default::default(),
        host_deadline_ms: 10_000,
    };
    assert!(s.apply(1, req("a", 1, Command::RegisterNode(info.clone()))).0.is_ok());
    s.apply(2, req("b", 1, Command::RetireNode { id: 4 }));
    let again = s.apply(3, req("c", 1, Command::RegisterNode(info)));
    assert_eq!(again.0.unwrap_err().code, "id_retired");
    assert!(!s.nodes.registered.contains_key(&4));
}

#[test]
fn retiring_a_node_at_the_end_of_time_saturates_instead_of_overflowing() {
    // Found by the `grpc` fuzz target: `now + deadline` overflowed (a panic with
    // overflow checks, a wrapped deadline without).
    let mut s = State::default();
    assert!(s.apply(1, req("a", u64::MAX - 1, Command::RetireNode { id: 9 })).0.is_ok());
    assert_eq!(s.nodes.down_since.get(&9), Some(&u64::MAX));
}

#[test]
fn commands_with_every_optional_field_roundtrip_through_the_log_encoding() {
    // bincode is positional: a serde attribute that skips fields (skip_serializing_if)
    // would make entries undecodable. Every command must survive the log encoding.
    let full = apps::spec::AppSpec::from_yaml(
        r#"
id: shop
image: test/busybox:1
cmd: ["/bin/httpd"]
network: {pool: lan}
health_check: {http: {port: 80}}
constraints: [["hostname", "UNIQUE"]]
"#,
    )
    .unwrap();
    let mut bare = full.clone();
    bare.image = None;
    bare.network = None;
    bare.health_check = None;
    for spec in [full, bare] {
        let req = req("x", 1, Command::PutApp { spec: spec.clone() });
        let bytes = berth_raft::codec::encode(&req).unwrap();
        let back: Request = berth_raft::codec::decode(&bytes).unwrap();
        match back.cmd {
            Command::PutApp { spec: s } => assert_eq!(s, spec),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn putting_the_stored_spec_after_a_scale_scales_back() {
    let mut s = State::default();
    let spec = crate::state::apps::AppSpec::from_json(br#"{"id": "web", "cmd": ["x"], "instances": 2}"#).unwrap();
    assert!(s.apply(1, req("a", 1, Command::PutApp { spec: spec.clone() })).0.is_ok());
    s.apply(2, req("b", 2, Command::ScaleApp { id: "web".into(), instances: 3 }));
    assert_eq!(s.apps.apps["web"].instances, 3);
    // The very spec of version 1 (instances 2): a scale back to 2, not a no-op.
    s.apply(3, req("c", 3, Command::PutApp { spec }));
    let app = &s.apps.apps["web"];
    assert_eq!((app.instances, app.version, app.deployment.is_none()), (2, 1, true));
}

#[test]
fn creating_an_app_that_exists_is_refused_and_changes_nothing() {
    let mut s = State::default();
    let spec = crate::state::apps::AppSpec::from_json(br#"{"id": "web", "cmd": ["x"], "instances": 2}"#).unwrap();
    let first = s.apply(1, req("a", 1, Command::CreateApp { spec: spec.clone() })).0;
    assert!(matches!(first, Ok(Reply::App { created: true, version: 1, .. })), "{first:?}");
    // A second creation, racing the first or not: refused, the app as it was.
    let mut other = spec.clone();
    other.instances = 5;
    let second = s.apply(2, req("b", 2, Command::CreateApp { spec: other })).0;
    assert_eq!(second.unwrap_err().code, "app_exists");
    let app = &s.apps.apps["web"];
    assert_eq!((app.instances, app.version), (2, 1));
}
