//! The Raft transport end to end: three openraft nodes in this process, each serving
//! `proto/raft.proto` on loopback over tonic, replicating on links (`berth_raft::link`)
//! on the same port — or, to a peer that serves gRPC only (an older berth), through
//! `StreamAppend`.

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
    connections: Arc<Connections>,
    _dir: tempfile::TempDir,
}

fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

async fn peer(id: u64, addr: std::net::SocketAddr, append_budget: u64, dials: Dials) -> Peer {
    let dir = tempfile::tempdir().unwrap();
    let kv = kv::open(Backend::Redb, &dir.path().join("raft")).unwrap();
    let sm = SmStore::open(kv.clone()).unwrap();
    let state = sm.handle();
    let config =
        Config { heartbeat_interval: 50, election_timeout_min: 300, election_timeout_max: 600, ..Default::default() };
    let connections = Arc::new(Connections::new());
    let mut network = Network::new(id, connections.clone()).with_append_budget(append_budget);
    if dials == Dials::GrpcOnly {
        network = network.grpc_only();
    }
    let raft = Raft::new(id, Arc::new(config.validate().unwrap()), network, LogStore::new(kv), sm).await.unwrap();
    Peer { raft, state, addr, connections, _dir: dir }
}

/// How a peer replicates to the others.
#[derive(Clone, Copy, PartialEq)]
enum Dials {
    /// On links, as berth does.
    Links,
    /// Over gRPC only, as a berth before links did.
    GrpcOnly,
}

/// How a peer serves its port.
#[derive(Clone, Copy, PartialEq)]
enum Serves {
    /// gRPC and replication links, as berth does.
    Links,
    /// gRPC only, as a berth before links did.
    GrpcOnly,
}

async fn serve(p: &Peer, how: Serves) {
    let service = RaftService::server(p.raft.clone());
    let listener = tokio::net::TcpListener::bind(p.addr).await.unwrap();
    let router = tonic::transport::Server::builder().add_service(service);
    match how {
        Serves::Links => {
            let stop = tokio_util::sync::CancellationToken::new();
            let incoming = berth_raft::link::sniff(listener, p.raft.clone(), None, stop);
            tokio::spawn(async move { router.serve_with_incoming(incoming).await.unwrap() });
        }
        Serves::GrpcOnly => {
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            tokio::spawn(async move { router.serve_with_incoming(incoming).await.unwrap() });
        }
    }
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
async fn a_follower_catches_up_over_links_cut_to_the_byte_budget() {
    catch_up(Serves::Links, Dials::Links).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_serves_grpc_only_catches_up_over_streams() {
    catch_up(Serves::GrpcOnly, Dials::Links).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_replicates_over_grpc_only_reaches_followers_that_serve_links() {
    catch_up(Serves::Links, Dials::GrpcOnly).await;
}

/// Node 3 is down while 60 ~1 KiB entries commit, then comes up serving `node3` and
/// catches up; against a 4 KiB budget every catch-up request is cut to a few entries,
/// and each cut ends its session. Every peer replicates as `dials` says.
async fn catch_up(node3: Serves, dials: Dials) {
    let mut peers = Vec::new();
    for id in 1..=3 {
        peers.push(peer(id, free_addr(), 4096, dials).await);
    }
    // Node 3 is down: nothing listens at its address yet.
    serve(&peers[0], Serves::Links).await;
    serve(&peers[1], Serves::Links).await;
    let members: BTreeMap<u64, Node> =
        peers.iter().zip(1..).map(|(p, id)| (id, Node::new(p.addr.to_string()))).collect();
    peers[0].raft.initialize(members).await.unwrap();
    let leader_id = until("a leader", Duration::from_secs(10), || {
        peers[0].raft.metrics().borrow_watched().current_leader.filter(|l| *l != 3)
    })
    .await;
    let leader = &peers[leader_id as usize - 1].raft;
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
    serve(&peers[2], node3).await;
    let applied = leader.metrics().borrow_watched().last_applied.map(|l| l.index).unwrap();
    until("node 3 to catch up", Duration::from_secs(30), || (peers[2].state.applied_index() >= applied).then_some(()))
        .await;
    assert_eq!(peers[2].state.read().state, want, "the follower's journal is the leader's");

    // And a write now reaches all three through the open sessions.
    leader.client_write(Put("after".into())).await.unwrap();
    for p in &peers {
        until("the last write everywhere", Duration::from_secs(10), || {
            p.state.read().state.items.last().is_some_and(|(_, v)| v == "after").then_some(())
        })
        .await;
    }

    // Sessions reuse links: a heartbeat is a session of its own every 50 ms, and each
    // cut above ended one, yet the leader opened only a few links per peer (the link
    // under a session, one for a heartbeat meanwhile). To the gRPC-only peer it opens
    // none: it learns that the peer does not speak links and uses gRPC for a while.
    let links = peers[leader_id as usize - 1].connections.links();
    let opened = |addr: std::net::SocketAddr| links.opened(&addr.to_string());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let other = peers.iter().position(|p| p.addr != peers[leader_id as usize - 1].addr && p.addr != peers[2].addr);
    let other = peers[other.unwrap()].addr;
    if dials == Dials::GrpcOnly {
        assert_eq!((opened(other), opened(peers[2].addr)), (0, 0), "no links when replicating over gRPC only");
        return;
    }
    assert!((1..=4).contains(&opened(other)), "links dialed to a follower: {}", opened(other));
    match node3 {
        Serves::Links => assert!(opened(peers[2].addr) <= 8, "links dialed to node 3: {}", opened(peers[2].addr)),
        Serves::GrpcOnly => {
            assert_eq!(opened(peers[2].addr), 0, "no link to a gRPC-only peer");
            assert!(links.is_legacy(&peers[2].addr.to_string()), "a gRPC-only peer is known as such");
        }
    }
}

/// A session keeps one request in flight (`network::IN_FLIGHT`): the next is taken
/// from openraft — with whatever entries gathered meanwhile — only once the follower
/// answered. Checked against a hand-written follower on the link protocol.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_session_sends_the_next_request_only_after_an_answer() {
    use berth_raft::link::{self, Reader, Writer};
    use berth_raft::openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
    use berth_raft::openraft::raft::AppendEntriesRequest;
    use berth_raft::openraft::testing::log_id;
    use berth_raft::openraft::{Entry, EntryPayload, Vote};
    use futures::StreamExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let request = |prev: u64| AppendEntriesRequest::<C> {
        vote: Vote::new_committed(1, 1),
        prev_log_id: Some(log_id::<C>(1, 1, prev)),
        entries: vec![Entry {
            log_id: log_id::<C>(1, 1, prev + 1),
            payload: EntryPayload::Normal(Put(prev.to_string())),
        }],
        leader_commit: None,
    };
    let (tx, rx) = futures::channel::mpsc::unbounded();
    for prev in 10..13 {
        tx.unbounded_send(request(prev)).unwrap();
    }
    let mut network = Network::<Journal>::new(1, Arc::new(Connections::new()));
    let follower = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let (mut r, mut w): (Reader, Writer) = link::split_tcp(tcp);
        let mut preface = [0u8; 16];
        r.read_exact(&mut preface).await.unwrap();
        assert_eq!(&preface, link::PREFACE);
        w.write_all(link::ACCEPTED).await.unwrap();
        let mut got = Vec::new();
        for _ in 0..3 {
            let (kind, payload) = link::read_frame(&mut r).await.unwrap();
            assert_eq!(kind, link::REQUEST);
            let req: AppendEntriesRequest<C> = berth_raft::codec::decode(&payload).unwrap();
            got.push(req.prev_log_id.unwrap().index);
            // Nothing more comes while this one is unanswered.
            let more = tokio::time::timeout(Duration::from_millis(300), link::read_frame(&mut r)).await;
            assert!(more.is_err(), "a second request in flight after {got:?}");
            let answer: berth_raft::typ::AppendReply<Journal> =
                Ok(Ok(Some(log_id::<C>(1, 1, req.prev_log_id.unwrap().index + 1))));
            link::write_frame(&mut w, link::REPLY, &berth_raft::codec::encode(&answer).unwrap()).await.unwrap();
        }
        got
    });
    let mut conn = network.new_client(2, &Node::new(addr.to_string())).await;
    let mut replies = conn.stream_append(rx, RPCOption::new(Duration::from_secs(5))).await.unwrap();
    for want in 11..14 {
        let got = replies.next().await.unwrap().unwrap().unwrap();
        assert_eq!(got.map(|l| l.index), Some(want));
    }
    assert_eq!(follower.await.unwrap(), [10, 11, 12], "one at a time, in order");
    drop(tx);
}

/// The serving side of a link, against a hand-written dialer and a real follower: a
/// request openraft refuses (its `prev_log_id` is not in the log) is answered with the
/// conflict and the follower's `End`; what the dialer sends before its own `End` is
/// read and dropped, and the link carries the next session, whose request is taken.
/// A request that does not decode ends the session with `Invalid` and closes the link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_served_link_answers_a_conflict_ends_the_session_and_carries_the_next() {
    use berth_raft::link::{self, Reader, Stop, Writer};
    use berth_raft::openraft::raft::{AppendEntriesRequest, StreamAppendError};
    use berth_raft::openraft::testing::log_id;
    use berth_raft::openraft::{Entry, EntryPayload, Vote};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    type Answer = berth_raft::typ::AppendReply<Journal>;
    let follower = peer(2, free_addr(), 1 << 20, Dials::Links).await;
    serve(&follower, Serves::Links).await;
    let request = |prev: Option<u64>| {
        let index = prev.map_or(0, |p| p + 1);
        berth_raft::codec::encode(&AppendEntriesRequest::<C> {
            vote: Vote::new_committed(1, 1),
            prev_log_id: prev.map(|p| log_id::<C>(1, 1, p)),
            entries: vec![Entry { log_id: log_id::<C>(1, 1, index), payload: EntryPayload::Normal(Put("x".into())) }],
            leader_commit: None,
        })
        .unwrap()
    };
    let (mut r, mut w): (Reader, Writer) =
        link::split_tcp(tokio::net::TcpStream::connect(follower.addr).await.unwrap());
    w.write_all(link::PREFACE).await.unwrap();
    let mut accepted = [0u8; 16];
    r.read_exact(&mut accepted).await.unwrap();
    assert_eq!(&accepted, link::ACCEPTED);
    let answer = |payload: &[u8]| berth_raft::codec::decode::<Answer>(payload).unwrap();

    // Entry 6 after entry 5, which the empty log does not hold: a conflict at 5.
    link::write_frame(&mut w, link::REQUEST, &request(Some(5))).await.unwrap();
    let (kind, payload) = link::read_frame(&mut r).await.unwrap();
    assert_eq!(kind, link::REPLY);
    match answer(&payload) {
        Ok(Err(StreamAppendError::Conflict(at))) => assert_eq!(at, log_id::<C>(1, 1, 5)),
        other => panic!("want a conflict at 5, got {other:?}"),
    }
    assert_eq!(link::read_frame(&mut r).await.unwrap(), (link::END, Vec::new()), "the follower ends the session");
    // Sent before the dialer heard of the conflict: dropped, unanswered.
    link::write_frame(&mut w, link::REQUEST, &request(Some(6))).await.unwrap();
    link::write_frame(&mut w, link::END, &[]).await.unwrap();

    // The next session on the same link: the log's first entry (index 0) is taken,
    // then both sides end.
    link::write_frame(&mut w, link::REQUEST, &request(None)).await.unwrap();
    let (kind, payload) = link::read_frame(&mut r).await.unwrap();
    assert_eq!(kind, link::REPLY, "the dropped request had no answer");
    assert_eq!(answer(&payload).unwrap().unwrap(), Some(log_id::<C>(1, 1, 0)));
    link::write_frame(&mut w, link::END, &[]).await.unwrap();
    assert_eq!(link::read_frame(&mut r).await.unwrap(), (link::END, Vec::new()));
    until("the entry in the follower's log", Duration::from_secs(5), || {
        follower.raft.metrics().borrow_watched().last_log_index
    })
    .await;

    // A request that does not decode: the session ends with why, and the link closes.
    link::write_frame(&mut w, link::REQUEST, b"not bincode").await.unwrap();
    let (kind, body) = link::read_frame(&mut r).await.unwrap();
    assert_eq!(kind, link::END);
    assert_eq!(link::parse_end(&body).map(|(code, _)| code), Some(Stop::Invalid));
    let closed = link::read_frame(&mut r).await;
    assert!(closed.is_err(), "the link closes after an invalid request: {closed:?}");
}
