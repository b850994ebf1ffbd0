//! The gRPC server: Raft (node to node), the public `Cluster` and `Ipam` services, and
//! the `Internal` service (bootstrap probe, write forwarding, read index).
//!
//! The public services check the caller's API token (`authorization: Bearer <token>`
//! metadata) as the HTTP API does (`server::auth`); Raft and `Internal` are node to
//! node (with TLS: a node certificate of the cluster CA, `crate::tls`).

use std::sync::Arc;

use berth_proto::berth as pb;
use berth_proto::berth::cluster_server::{Cluster, ClusterServer};
use berth_proto::berth::internal_server::{Internal, InternalServer};
use berth_proto::berth::ipam_server::{Ipam, IpamServer};
use berth_raft::connections::MAX_MESSAGE_BYTES;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

use super::auth::{as_caller, check_grpc, Need};
use super::ops::{AllocationInput, ClusterView, MemberInput, PoolInput};
use super::proposer::{LeaderCall, LeaderReply, LeaderRequest};
use super::Node;
use crate::error::ApiError;
use crate::state::ipam::PoolInfo;
use crate::state::tokens::Role;

/// Serves gRPC until `stop`. With TLS (`crate::tls`) the port speaks only TLS, and
/// Raft and `Internal` answer only callers with a node certificate of the cluster CA.
pub async fn serve(node: Arc<Node>, listener: TcpListener, stop: CancellationToken) {
    let svc = Svc(node.clone());
    let tls = node.tls.clone();
    // Node to node only: with TLS, the caller must be a node.
    let node_only = move |req: Request<()>| match &tls {
        Some(tls) => tls.require_node(req),
        None => Ok(req),
    };
    let router = tonic::transport::Server::builder()
        // A peer paused for a few seconds (a GC or VM stall, SIGSTOP) comes back to a
        // queue of requests its peers sent and cancelled on their timeouts — Raft
        // heartbeats every 40–50 ms. hyper's rapid-reset guard (20 such streams) then
        // tears the connection down with GOAWAY `too_many_resets` at the very moment
        // of recovery (seen in a CI run); 1,000 keeps it up across a 20 s pause and
        // still bounds what a client can queue.
        .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_RESETS))
        .add_service(InterceptedService::new(node.raft_service(), node_only.clone()))
        .add_service(InterceptedService::new(
            InternalServer::new(svc.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            node_only,
        ))
        .add_service(ClusterServer::new(svc.clone()))
        .add_service(IpamServer::new(svc));
    // Raft replication links share the port (`berth_raft::link`): told apart by
    // their preface, or with TLS by ALPN.
    let (raft, gate) = (node.raft.clone(), node.raft_gate());
    let result = match &node.tls {
        Some(tls) => {
            let link_stop = stop.clone();
            let link = move |s: tokio_rustls::server::TlsStream<tokio::net::TcpStream>| {
                berth_raft::link::keepalive(s.get_ref().0);
                let (r, w) = berth_raft::link::split_io(s);
                tokio::spawn(berth_raft::link::serve_until(r, w, raft.clone(), Some(gate.clone()), link_stop.clone()));
            };
            let incoming = tls.grpc_incoming(listener, stop.clone(), link);
            router.serve_with_incoming_shutdown(incoming, stop.cancelled_owned()).await
        }
        None => {
            // No Nagle (set by `link::accept`, under `sniff`): a small reply held back
            // for a delayed ACK costs 40 ms. (The builder's `tcp_nodelay` applies only to listeners tonic
            // binds itself.)
            let incoming = berth_raft::link::sniff(listener, raft, Some(gate), stop.clone());
            router.serve_with_incoming_shutdown(incoming, stop.cancelled_owned()).await
        }
    };
    if let Err(e) = result {
        tracing::error!(error = %e, "gRPC server failed");
    }
}

/// Streams a client may reset before the server accepted them, per connection.
const MAX_PENDING_RESETS: usize = 1000;

#[derive(Clone)]
struct Svc(Arc<Node>);

const ADMIN: Need = Need::Role(Role::Admin);
const DEPLOY: Need = Need::Role(Role::Deploy);

fn rid(s: String) -> Option<String> {
    if s.is_empty() {
        None
    } else {
        Some(s)
    }
}

fn opt(s: String) -> Option<String> {
    rid(s)
}

fn cluster_pb(v: ClusterView) -> pb::ClusterInfo {
    pb::ClusterInfo {
        leader: v.leader.unwrap_or(0),
        term: v.term,
        members: v
            .members
            .into_iter()
            .map(|m| pb::Member { id: m.id, grpc: m.grpc, http: m.http.unwrap_or_default(), voter: m.voter })
            .collect(),
    }
}

/// Runs a call forwarded by another node (`Internal.Propose`, `Internal.ProposeStream`)
/// here, as this node's leader, within the caller's `timeout` if it gave one; answers
/// the encoded `Result<LeaderReply, ApiError>`.
async fn run_forwarded(node: &Node, command: &[u8], timeout: Option<std::time::Duration>) -> Result<Vec<u8>, Status> {
    let call: LeaderRequest =
        berth_raft::codec::decode(command).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let budget = match call.call {
        LeaderCall::Write(_) => super::proposer::WRITE_DEADLINE,
        _ => super::proposer::MEMBERSHIP_DEADLINE,
    };
    let budget = timeout.map_or(budget, |t| t.min(budget));
    let result: Result<LeaderReply, ApiError> = node.proposer.execute(call, budget).await;
    berth_raft::codec::encode(&result).map_err(|e| Status::internal(e.to_string()))
}

fn pool_pb(p: PoolInfo) -> pb::Pool {
    pb::Pool {
        name: p.name,
        subnet: p.subnet,
        gateway: p.gateway.unwrap_or_default(),
        range: p.range.unwrap_or_default(),
        size: p.size,
        used: p.used,
    }
}

#[tonic::async_trait]
impl Internal for Svc {
    async fn probe(&self, r: Request<pb::ProbeRequest>) -> Result<Response<pb::ProbeReply>, Status> {
        let initialized = self.0.raft.is_initialized().await.map_err(|e| Status::unavailable(e.to_string()))?;
        let from = r.get_ref().from;
        let knows_you = {
            let nodes = &self.0.state.read().state.nodes;
            nodes.registered.contains_key(&from) || nodes.retired.contains(&from)
        };
        Ok(Response::new(pb::ProbeReply {
            id: self.0.id,
            initialized,
            peers_digest: self.0.peers_canonical(),
            knows_you,
        }))
    }

    async fn propose(&self, request: Request<pb::ProposeRequest>) -> Result<Response<pb::ProposeReply>, Status> {
        let result = run_forwarded(&self.0, &request.get_ref().command, None).await?;
        Ok(Response::new(pb::ProposeReply { result }))
    }

    type ProposeStreamStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::ForwardReply, Status>> + Send>>;

    /// Each forwarded call runs as its own task as it arrives; replies go back as the
    /// calls finish. A call that cannot be run (its command does not decode) is
    /// answered with the error in place of a result, and the stream goes on.
    async fn propose_stream(
        &self,
        request: Request<tonic::Streaming<pb::ForwardRequest>>,
    ) -> Result<Response<Self::ProposeStreamStream>, Status> {
        let mut incoming = request.into_inner();
        let node = self.0.clone();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Result<pb::ForwardReply, Status>>();
        tokio::spawn(async move {
            while let Ok(Some(call)) = incoming.message().await {
                let (node, tx) = (node.clone(), tx.clone());
                tokio::spawn(async move {
                    let timeout = (call.timeout_ms > 0).then(|| std::time::Duration::from_millis(call.timeout_ms));
                    let result = match run_forwarded(&node, &call.command, timeout).await {
                        Ok(result) => result,
                        Err(status) => berth_raft::codec::encode(&Err::<LeaderReply, _>(ApiError::internal(format!(
                            "the forwarded call failed on the leader: {}",
                            status.message()
                        ))))
                        .unwrap_or_default(),
                    };
                    let _ = tx.send(Ok(pb::ForwardReply { id: call.id, result }));
                });
            }
        });
        let replies = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
        Ok(Response::new(Box::pin(replies)))
    }

    async fn heartbeat(&self, r: Request<pb::HeartbeatRequest>) -> Result<Response<pb::HeartbeatReply>, Status> {
        self.0.liveness.record(r.get_ref().host);
        // Only a leader that a quorum still follows keeps hosts from fencing themselves.
        match super::leader::quorum_age(&self.0) {
            Some(age) if age < crate::timing::QUORUM_FRESH => {
                use berth_raft::openraft::type_config::async_runtime::WatchReceiver;
                let (committed, last_log, term) = {
                    let m = self.0.raft.metrics();
                    let m = m.borrow_watched();
                    (m.cluster_committed.as_ref().map(|l| l.index).unwrap_or(0), m.last_log_index, m.current_term)
                };
                // A new leader's commit index may be behind its predecessor's until the
                // noop of its term commits; its log's tail never is. Until it is ready,
                // a host must have applied that far to count as caught up.
                let ready = self.0.leader_ready.load(std::sync::atomic::Ordering::SeqCst) == term;
                let committed = if ready { committed } else { last_log.unwrap_or(0).max(committed) };
                Ok(Response::new(pb::HeartbeatReply { committed }))
            }
            Some(_) => Err(Status::unavailable("no_quorum: this leader has not heard from a quorum")),
            None => Err(Status::unavailable("not_leader: this node is not the leader")),
        }
    }

    async fn read_index(&self, _: Request<pb::ReadIndexRequest>) -> Result<Response<pb::ReadIndexReply>, Status> {
        let index = self.0.proposer.read_index_here(super::proposer::READ_DEADLINE).await?;
        Ok(Response::new(pb::ReadIndexReply { index }))
    }
}

#[tonic::async_trait]
impl Cluster for Svc {
    async fn get_cluster(&self, r: Request<pb::GetClusterRequest>) -> Result<Response<pb::ClusterInfo>, Status> {
        check_grpc(&self.0, &r, Need::Read).await?;
        Ok(Response::new(cluster_pb(self.0.cluster_view(r.get_ref().stale).await?)))
    }

    async fn add_member(&self, r: Request<pb::AddMemberRequest>) -> Result<Response<pb::ClusterInfo>, Status> {
        let caller = check_grpc(&self.0, &r, ADMIN).await?;
        let r = r.into_inner();
        let view = as_caller(&caller, ADMIN, self.0.add_member(MemberInput { id: r.id, grpc: r.grpc, voter: r.voter }))
            .await?;
        Ok(Response::new(cluster_pb(view)))
    }

    async fn remove_member(&self, r: Request<pb::RemoveMemberRequest>) -> Result<Response<pb::ClusterInfo>, Status> {
        let caller = check_grpc(&self.0, &r, ADMIN).await?;
        Ok(Response::new(cluster_pb(as_caller(&caller, ADMIN, self.0.remove_member(r.get_ref().id)).await?)))
    }
}

#[tonic::async_trait]
impl Ipam for Svc {
    async fn create_pool(&self, r: Request<pb::CreatePoolRequest>) -> Result<Response<pb::Pool>, Status> {
        let caller = check_grpc(&self.0, &r, ADMIN).await?;
        let r = r.into_inner();
        let input = PoolInput { name: r.name, subnet: r.subnet, gateway: opt(r.gateway), range: opt(r.range) };
        let (pool, _) = as_caller(&caller, ADMIN, self.0.create_pool(input, rid(r.request_id))).await?;
        Ok(Response::new(pool_pb(pool)))
    }

    async fn list_pools(&self, r: Request<pb::ListPoolsRequest>) -> Result<Response<pb::ListPoolsReply>, Status> {
        check_grpc(&self.0, &r, Need::Read).await?;
        let pools = self.0.list_pools(r.get_ref().stale).await?;
        Ok(Response::new(pb::ListPoolsReply { pools: pools.into_iter().map(pool_pb).collect() }))
    }

    async fn delete_pool(&self, r: Request<pb::DeletePoolRequest>) -> Result<Response<pb::DeletePoolReply>, Status> {
        let caller = check_grpc(&self.0, &r, ADMIN).await?;
        let r = r.into_inner();
        as_caller(&caller, ADMIN, self.0.delete_pool(&r.name, rid(r.request_id))).await?;
        Ok(Response::new(pb::DeletePoolReply {}))
    }

    async fn allocate(&self, r: Request<pb::AllocateRequest>) -> Result<Response<pb::Allocation>, Status> {
        let caller = check_grpc(&self.0, &r, DEPLOY).await?;
        let r = r.into_inner();
        let input = AllocationInput { owner: r.owner, ip: opt(r.ip) };
        let a = as_caller(&caller, DEPLOY, self.0.allocate(&r.pool, input, rid(r.request_id))).await?;
        Ok(Response::new(pb::Allocation { ip: a.ip, owner: a.owner }))
    }

    async fn list_allocations(
        &self,
        r: Request<pb::ListAllocationsRequest>,
    ) -> Result<Response<pb::ListAllocationsReply>, Status> {
        check_grpc(&self.0, &r, Need::Read).await?;
        let r = r.into_inner();
        let list = self.0.list_allocations(&r.pool, r.stale).await?;
        Ok(Response::new(pb::ListAllocationsReply {
            allocations: list.into_iter().map(|a| pb::Allocation { ip: a.ip, owner: a.owner }).collect(),
        }))
    }

    async fn release(&self, r: Request<pb::ReleaseRequest>) -> Result<Response<pb::ReleaseReply>, Status> {
        let caller = check_grpc(&self.0, &r, DEPLOY).await?;
        let r = r.into_inner();
        as_caller(&caller, DEPLOY, self.0.release(&r.pool, &r.ip, rid(r.request_id))).await?;
        Ok(Response::new(pb::ReleaseReply {}))
    }
}
