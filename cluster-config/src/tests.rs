use super::*;

fn base() -> NodeConfig {
    NodeConfig {
        id: Some(1),
        data_dir: Some("/tmp/x".into()),
        listen: Some("127.0.0.1:7401".into()),
        http: Some("127.0.0.1:7481".into()),
        peers: Some(Peers::List("1=127.0.0.1:7401,2=127.0.0.1:7402,3=127.0.0.1:7403".into())),
        ..Default::default()
    }
}

#[test]
fn peers_list_parses_in_id_order() {
    let p = parse_peers("2=10.0.0.2:7401, 1=node1:7401").unwrap();
    assert_eq!(
        p.into_iter().collect::<Vec<_>>(),
        vec![(1, "node1:7401".to_string()), (2, "10.0.0.2:7401".to_string())]
    );
}

#[test]
fn bad_peers_lists_are_rejected_with_the_reason() {
    for (input, needle) in [
        ("1=a:1,1=b:2", "appears twice"),
        ("x=a:1", "not a positive integer"),
        ("0=a:1", "reserved"),
        ("1=a", "not host:port"),
        ("1=a:99999", "no valid port"),
        ("1:a:1", "not id=host:port"),
        ("", "empty"),
    ] {
        let err = parse_peers(input).unwrap_err().to_string();
        assert!(err.contains(needle), "{input:?}: {err}");
        assert!(err.starts_with("peers:"), "{err}");
    }
}

#[test]
fn valid_config_gets_defaults() {
    let v = base().validate().unwrap();
    assert_eq!(v.id, 1);
    assert_eq!(v.storage, "redb");
    assert_eq!(v.runtime, Runtime::Process);
    assert_eq!(v.peers.len(), 3);
}

#[test]
fn the_host_deadline_defaults_to_10_s_and_refuses_what_fencing_cannot_honour() {
    assert_eq!(base().validate().unwrap().host_deadline, std::time::Duration::from_secs(10));
    let mut c = base();
    c.host_deadline_s = Some(7.5);
    assert_eq!(c.validate().unwrap().host_deadline, std::time::Duration::from_millis(7500));
    for bad in [0.0, 5.9, f64::NAN, 1e9] {
        let mut c = base();
        c.host_deadline_s = Some(bad);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("host_deadline_s") && e.contains("fences itself"), "{e}");
    }
}

#[test]
fn the_first_peers_vote_three_by_default() {
    let v = base().validate().unwrap();
    assert_eq!(v.voters, [1, 2, 3].into());
    let mut five = base();
    five.peers = Some(Peers::List((1..=5).map(|i| format!("{i}=h{i}:1")).collect::<Vec<_>>().join(",")));
    assert_eq!(five.clone().validate().unwrap().voters, [1, 2, 3].into());
    five.voters = Some(5);
    assert_eq!(five.clone().validate().unwrap().voters.len(), 5);
    five.voters = Some(4);
    assert!(five.validate().unwrap_err().to_string().contains("voters: 4 is not 1, 3, 5 or 7"));
}

#[test]
fn id_must_be_in_peers() {
    let mut c = base();
    c.id = Some(9);
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("id 9 is not in the peers list"), "{err}");
}

#[test]
fn missing_required_keys_name_the_flag() {
    let mut c = base();
    c.listen = None;
    assert_eq!(c.validate().unwrap_err().to_string(), "missing listen (give --listen or `listen` in the config file)");
}

#[test]
fn flags_win_over_the_file_and_labels_merge() {
    let file = NodeConfig::from_toml(
        r#"
        id = 1
        data_dir = "/var/lib/berth"
        listen = "127.0.0.1:7401"
        http = "127.0.0.1:7481"
        peers = { 1 = "127.0.0.1:7401" }
        labels = { rack = "r1", zone = "a" }
        [raft]
        snapshot_logs = 100
        "#,
    )
    .unwrap();
    let flags = NodeConfig {
        http: Some("127.0.0.1:9999".into()),
        labels: Some([("rack".to_string(), "r2".to_string())].into()),
        ..Default::default()
    };
    let v = file.merged_with(flags).validate().unwrap();
    assert_eq!(v.http.to_string(), "127.0.0.1:9999");
    assert_eq!(v.labels["rack"], "r2");
    assert_eq!(v.labels["zone"], "a");
    assert_eq!(v.raft.snapshot_logs, Some(100));
}

#[test]
fn unknown_keys_in_the_file_are_named() {
    let err = NodeConfig::from_toml("id = 1\nlisten_addr = \"x\"\n").unwrap_err();
    assert!(err.contains("listen_addr"), "{err}");
    assert!(err.contains("line 2"), "{err}");
}

#[test]
fn shipped_example_and_local_cluster_files_are_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let example = NodeConfig::from_file(&dir.join("examples/node.toml")).unwrap();
    example.validate().unwrap();
    for i in 1..=3 {
        let c = NodeConfig::from_file(&dir.join(format!("local-3/node{i}.toml"))).unwrap();
        let v = c.validate().unwrap();
        assert_eq!(v.id, i);
        assert_eq!(v.peers.len(), 3);
    }
}

#[test]
fn bad_raft_timing_is_rejected() {
    let mut c = base();
    c.raft = Some(RaftTuning { heartbeat_ms: Some(200), ..Default::default() });
    assert!(c.validate().unwrap_err().to_string().contains("heartbeat_ms"));
}

#[test]
fn the_consul_feed_address_is_optional_and_must_be_its_own() {
    assert_eq!(base().validate().unwrap().consul_listen, None);
    let on = NodeConfig { consul_listen: Some("127.0.0.1:8500".into()), ..base() };
    assert_eq!(on.validate().unwrap().consul_listen.unwrap().to_string(), "127.0.0.1:8500");
    let clash = NodeConfig { consul_listen: Some("127.0.0.1:7481".into()), ..base() };
    assert!(clash.validate().unwrap_err().to_string().contains("consul_listen"));
    let bad = NodeConfig { consul_listen: Some("nowhere".into()), ..base() };
    assert!(bad.validate().unwrap_err().to_string().contains("consul_listen"));
    let dns = NodeConfig { dns_listen: Some("127.0.0.1:8600".into()), ..base() };
    assert_eq!(dns.validate().unwrap().dns_listen.unwrap().to_string(), "127.0.0.1:8600");
    let clash = NodeConfig { dns_listen: Some("127.0.0.1:7401".into()), ..base() };
    assert!(clash.validate().unwrap_err().to_string().contains("dns_listen"));
}

#[test]
fn worker_threads_are_checked_and_nodes_sharing_a_host_get_their_share() {
    let mut c = base();
    c.worker_threads = Some(4);
    assert!(c.validate().is_ok());
    for bad in [0, MAX_WORKER_THREADS + 1] {
        let mut c = base();
        c.worker_threads = Some(bad);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("worker_threads") && e.contains(&bad.to_string()), "{e}");
    }
    let from_toml = NodeConfig::from_toml("worker_threads = 3").unwrap();
    assert_eq!(from_toml.worker_threads, Some(3));
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert_eq!(worker_share(1), cpus);
    assert_eq!(worker_share(cpus as u64 * 4), 1, "never none");
    assert_eq!(worker_share(0), cpus);
}
