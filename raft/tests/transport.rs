//! The Raft transport end to end: three openraft nodes in this process, each serving
//! `proto/raft.proto` on loopback over tonic, replicating through `StreamAppend`.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_raft::kv::{self, Backend};
use berth_raft::openraft::type_config::async_runtime::WatchReceiver;
use berth_raft::openraft::{Config, Raft};
use berth_raft::{Connections, LogStore, Network, Node, RaftService, SmStore, StateHandle, TypeConfig};
use common::{Journal, Put};

type C = TypeConfig<Journal>;

struct Peer {
    raft: Raft<C, SmStore<Journal>>,
    state: StateHandle<Journal>,
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

async fn peer(id: u64, addr: std::net::SocketAddr, append_budget: u64) -> Peer {
    let dir = tempfile::tempdir().unwrap();
    let kv = kv::open(Backend::Redb, &dir.path().join("raft")).unwrap();
    let sm = SmStore::open(kv.clone()).unwrap();
    let state = sm.handle();
    let config =
        Config { heartbeat_interval: 50, election_timeout_min: 300, election_timeout_max: 600, ..Default::default() };
    let network = Network::new(id, Arc::new(Connections::new())).with_append_budget(append_budget);
    let raft = Raft::new(id, Arc::new(config.validate().unwrap()), network, LogStore::new(kv), sm).await.unwrap();
    Peer { raft, state, addr, _dir: dir }
}

fn serve(p: &Peer) {
    let service = RaftService::server(p.raft.clone());
    let addr = p.addr;
    tokio::spawn(async move { tonic::transport::Server::builder().add_service(service).serve(addr).await.unwrap() });
}

async fn until<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_catches_up_over_streams_cut_to_the_byte_budget() {
    // ~1 KiB entries against a 4 KiB budget: every catch-up request is cut to a few
    // entries, and each cut ends its stream session.
    let mut peers = Vec::new();
    for id in 1..=3 {
        peers.push(peer(id, free_addr(), 4096).await);
    }
    // Node 3 is down: nothing listens at its address yet.
    serve(&peers[0]);
    serve(&peers[1]);
    let members: BTreeMap<u64, Node> =
        peers.iter().zip(1..).map(|(p, id)| (id, Node::new(p.addr.to_string()))).collect();
    peers[0].raft.initialize(members).await.unwrap();
    let leader = until("a leader", Duration::from_secs(10), || {
        peers[0].raft.metrics().borrow_watched().current_leader.filter(|l| *l != 3)
    })
    .await;
    let leader = &peers[leader as usize - 1].raft;
    // A new leader takes writes once a quorum has acknowledged it (its lease): its
    // first entry applied says so.
    until("the leader's first entry applied", Duration::from_secs(10), || {
        leader.metrics().borrow_watched().last_applied.filter(|l| l.index >= 1)
    })
    .await;
    for i in 0..60 {
        let r = leader
            .client_write(Put(format!("{i}:{}", "x".repeat(1000))))
            .await
            .unwrap_or_else(|e| panic!("write {i}: {e:?}"));
        assert_eq!(r.data, i + 1, "each write applied once, in order");
    }
    let want = peers[0].state.read().state.clone();
    assert_eq!(want.items.len(), 60);

    // Node 3 comes up and catches up: ~20 cut requests, each its own session.
    serve(&peers[2]);
    let applied = leader.metrics().borrow_watched().last_applied.map(|l| l.index).unwrap();
    until("node 3 to catch up", Duration::from_secs(30), || (peers[2].state.applied_index() >= applied).then_some(()))
        .await;
    assert_eq!(peers[2].state.read().state, want, "the follower's journal is the leader's");

    // And a write now reaches all three through the open streams.
    leader.client_write(Put("after".into())).await.unwrap();
    for p in &peers {
        until("the last write everywhere", Duration::from_secs(10), || {
            p.state.read().state.items.last().is_some_and(|(_, v)| v == "after").then_some(())
        })
        .await;
    }
}
