//! Forming the cluster with no manual step and no special node.
//!
//! A node with no Raft state probes its `--peers`. Once a majority (itself included) is
//! reachable and **none** of them holds Raft state, it initializes Raft with the
//! `--peers` membership: the first `--voters` of them vote (only those initialize);
//! the leader's autopilot adds the others as learners. Several nodes may do this at
//! once: openraft documents that initializing several nodes with an *identical*
//! membership is safe (the vote elects one leader), which is why the membership is
//! built from `--peers` alone and why nodes whose lists differ refuse to bootstrap
//! together.
//!
//! If any reachable peer already holds state, the cluster exists: this node waits to
//! be contacted by the leader (a restarted node, a late starter, or a node being added
//! with `POST /v1/cluster/members`). A node restarted with its data dir never probes.
//!
//! A node with an empty data dir that a peer knows as registered was **wiped**: it
//! may have forgotten a vote it cast, and voting again in that term could elect two
//! leaders, and a leader that finds a follower's log gone backwards stops. It exits
//! with an error naming the fix (remove the id, rejoin with a new one). Until a probe
//! round in which a majority answered has settled that question, it refuses every
//! Raft request.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use berth_proto::berth::internal_client::InternalClient;
use berth_proto::berth::ProbeRequest;
use berth_raft::Node as RaftNode;

use super::Node;

const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
const PROBE_INTERVAL: Duration = Duration::from_millis(200);

pub async fn run(node: Arc<Node>) {
    let mut warned_exists = false;
    // Why each peer did not answer, and when that was logged: logged again when the
    // reason changes, at most every 10 s.
    let mut unanswered: BTreeMap<u64, (String, std::time::Instant)> = BTreeMap::new();
    // A node that started with Raft state serves Raft at once (see `Node::start`).
    let mut checked = *node.raft_open.borrow();
    loop {
        match node.raft.is_initialized().await {
            Ok(true) if checked => return,
            Ok(_) => {}
            Err(_) => return, // Raft stopped
        }
        let others: Vec<(u64, String)> =
            node.config.peers.iter().filter(|(id, _)| **id != node.id).map(|(id, a)| (*id, a.clone())).collect();
        let probes = others.iter().map(|(id, addr)| probe(&node, *id, addr));
        let replies = futures::future::join_all(probes).await;
        let mine = node.peers_canonical();
        let replies: Vec<_> = others
            .iter()
            .zip(replies)
            .filter_map(|((id, addr), r)| match r {
                Ok(reply) => {
                    unanswered.remove(id);
                    Some(reply)
                }
                Err(why) => {
                    let now = std::time::Instant::now();
                    let quiet = unanswered
                        .get(id)
                        .is_some_and(|(last, at)| *last == why || now.duration_since(*at) < Duration::from_secs(10));
                    if !quiet {
                        log_unanswered(*id, addr, &why, node.tls.is_some());
                        unanswered.insert(*id, (why, now));
                    }
                    None
                }
            })
            .collect();
        if !checked {
            if let Some(r) = replies.iter().find(|r| r.initialized && r.knows_you) {
                // It has held Raft state before (it registered), and has none now.
                node.fail(format!(
                    "node {} has an empty data dir, but node {} knows it as a member that held state: its data dir was \
                     wiped, and it may have forgotten a vote it cast. It will not rejoin under this id: remove it \
                     (berth cluster remove {}) and start it with a new --id",
                    node.id, r.id, node.id
                ));
                return;
            }
            // Not wiped, as far as a majority knows (any quorum it could ever take part
            // in includes one of them): it takes part from now on.
            if (replies.len() + 1) * 2 > node.config.peers.len() {
                node.raft_open.send_replace(true);
                node.refresh_raft_gate();
                checked = true;
            }
        }
        let mut reachable = 1; // this node
        let mut exists = false;
        for r in replies {
            if r.peers_digest != mine {
                tracing::error!(peer = r.id, theirs = %r.peers_digest, ours = %mine,
                    "peer has a different --peers list; not bootstrapping with it");
                continue;
            }
            reachable += 1;
            exists |= r.initialized;
        }
        if exists {
            if !warned_exists {
                tracing::info!("the cluster already exists; waiting for the leader to contact this node");
                warned_exists = true;
            }
        } else if reachable * 2 > node.config.peers.len() && node.config.voters.contains(&node.id) {
            // The first `--voters` peers vote; the leader adds the others as learners.
            let members: BTreeMap<u64, RaftNode> = node
                .config
                .peers
                .iter()
                .filter(|(id, _)| node.config.voters.contains(id))
                .map(|(id, addr)| (*id, RaftNode { addr: addr.clone() }))
                .collect();
            tracing::info!(
                reachable,
                peers = node.config.peers.len(),
                "a majority is reachable; initializing the cluster"
            );
            match node.raft.initialize(members).await {
                Ok(()) => return,
                // Another node got there first and replicated to us: fine.
                Err(e) => tracing::info!(error = %e, "initialize not needed"),
            }
        }
        tokio::select! {
            _ = node.stopping() => return,
            _ = tokio::time::sleep(PROBE_INTERVAL) => {}
        }
    }
}

/// Logs why peer `id` did not answer a probe; a TLS mismatch, which will not pass by
/// itself, as a warning with what to check.
fn log_unanswered(id: u64, addr: &str, why: &str, tls: bool) {
    if why.contains("certificate") || why.contains("TLS") || why.contains("tls") {
        tracing::warn!(peer = id, %addr, reason = %why, "TLS: the peer refuses this node, or this node the peer");
    } else if !tls && why.contains("frame with invalid size") {
        // What a plain HTTP/2 client reads from a TLS server.
        tracing::warn!(peer = id, %addr, reason = %why,
            "the peer seems to speak TLS and this node runs without --tls-cert: it cannot join");
    } else {
        tracing::info!(peer = id, %addr, reason = %why, "peer does not answer yet");
    }
}

/// Asks peer `id` at `addr` what it holds; Err says why it did not answer.
async fn probe(node: &Node, id: u64, addr: &str) -> Result<berth_proto::berth::ProbeReply, String> {
    let channel = node.connections.get(addr).map_err(|e| e.to_string())?;
    let mut req = tonic::Request::new(ProbeRequest { from: node.id });
    req.set_timeout(PROBE_TIMEOUT);
    let reply = tokio::time::timeout(PROBE_TIMEOUT, InternalClient::new(channel).probe(req))
        .await
        .map_err(|_| "no answer within 500 ms".to_string())?
        .map_err(|s| status_chain(&s))?
        .into_inner();
    if reply.id != id {
        tracing::error!(expected = id, got = reply.id, %addr, "a different node answers at this peer's address");
        return Err(format!("node {} answers there", reply.id));
    }
    Ok(reply)
}

/// A gRPC status with the errors beneath it (a TLS failure is a few levels down).
fn status_chain(s: &tonic::Status) -> String {
    let mut out = s.message().to_string();
    let mut source = std::error::Error::source(s);
    while let Some(e) = source {
        let text = e.to_string();
        if !out.contains(&text) {
            out = format!("{out}: {text}");
        }
        let inner = crate::tls::innermost_io(e);
        if !std::ptr::addr_eq(inner, e) {
            let text = inner.to_string();
            if !out.contains(&text) {
                out = format!("{out}: {text}");
            }
        }
        source = e.source();
    }
    out
}
