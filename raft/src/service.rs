//! The server side of the Raft network: tonic handlers that hand each message to the
//! local openraft instance.

use std::pin::Pin;

use berth_proto::raft::raft_server::{Raft as RaftRpc, RaftServer};
use berth_proto::raft::{snapshot_chunk, RaftMessage, SnapshotChunk};
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::watch;
use tonic::{Request, Response, Status, Streaming};

use crate::codec;
use crate::connections::MAX_MESSAGE_BYTES;
use crate::locks::lock;
use crate::state_machine::StateMachine;
use crate::type_config::typ::{Raft, Snapshot, SnapshotMeta, Vote};

/// Serves `proto/raft.proto` for one node.
pub struct RaftService<SM: StateMachine> {
    raft: Raft<SM>,
    gate: Option<watch::Receiver<Option<String>>>,
}

impl<SM: StateMachine> RaftService<SM> {
    /// The tonic service, with berth's message size limits.
    pub fn server(raft: Raft<SM>) -> RaftServer<Self> {
        Self::with_gate(raft, None)
    }

    /// The same, refusing every Raft request (as unavailable, with the reason) while
    /// `gate` holds a reason: a node that cannot yet tell a fresh start from a wiped
    /// data dir must not take part — a wiped voter has forgotten the vote it cast in
    /// its last term, and a leader that finds a follower's log gone backwards stops
    /// (openraft refuses log reversion) — nor one whose disk cannot take the entries.
    pub fn with_gate(raft: Raft<SM>, gate: Option<watch::Receiver<Option<String>>>) -> RaftServer<Self> {
        RaftServer::new(Self { raft, gate })
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }
}

impl<SM: StateMachine> RaftService<SM> {
    fn open(&self) -> Result<(), Status> {
        closed(self.gate.as_ref())
    }
}

/// Unavailable, with the reason, while `gate` holds one.
fn closed(gate: Option<&watch::Receiver<Option<String>>>) -> Result<(), Status> {
    match refusal(gate) {
        Some(reason) => Err(Status::unavailable(reason)),
        None => Ok(()),
    }
}

/// Why `gate` refuses Raft requests now, if it does (gRPC and links alike).
pub(crate) fn refusal(gate: Option<&watch::Receiver<Option<String>>>) -> Option<String> {
    gate.and_then(|g| g.borrow().clone())
}

/// The replies of a `StreamAppend` call.
pub type ReplyStream = Pin<Box<dyn Stream<Item = Result<RaftMessage, Status>> + Send>>;

/// The requests of a `StreamAppend` call, decoded, until the caller ends the stream or
/// something goes wrong: a message that does not decode, a transport error, or the
/// gate closing mid-stream (the disk filled up). What went wrong is left in `failed`,
/// for the reply stream to end with once the requests taken so far are answered.
fn append_requests<SM: StateMachine>(
    incoming: Streaming<RaftMessage>,
    gate: Option<watch::Receiver<Option<String>>>,
    failed: std::sync::Arc<std::sync::Mutex<Option<Status>>>,
) -> impl Stream<Item = openraft::raft::AppendEntriesRequest<crate::TypeConfig<SM>>> + Send + 'static {
    futures::stream::unfold(Some(incoming), move |incoming| {
        let (gate, failed) = (gate.clone(), failed.clone());
        async move {
            let mut incoming = incoming?;
            let next = match incoming.message().await {
                Ok(None) => return None,
                Ok(Some(m)) => closed(gate.as_ref()).and_then(|()| decode(&m)),
                Err(status) => Err(status),
            };
            match next {
                Ok(req) => Some((req, Some(incoming))),
                Err(status) => {
                    *lock(&failed) = Some(status);
                    None
                }
            }
        }
    })
}

fn decode<T: DeserializeOwned>(m: &RaftMessage) -> Result<T, Status> {
    codec::decode(&m.payload).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn reply<T: Serialize>(value: &T) -> Result<Response<RaftMessage>, Status> {
    let payload = codec::encode(value).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(RaftMessage { payload }))
}

#[tonic::async_trait]
impl<SM: StateMachine> RaftRpc for RaftService<SM> {
    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        self.open()?;
        let req = decode(request.get_ref())?;
        reply(&self.raft.vote(req).await)
    }

    async fn pre_vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        self.open()?;
        let req = decode(request.get_ref())?;
        reply(&self.raft.pre_vote(req).await)
    }

    async fn append_entries(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        self.open()?;
        let req = decode(request.get_ref())?;
        reply(&self.raft.append_entries(req).await)
    }

    type StreamAppendStream = ReplyStream;

    /// Replication as one stream per session: each request goes to openraft as it
    /// arrives (pipelined: the next is taken while earlier ones are written), each
    /// reply is sent once its entries are durable, in request order.
    async fn stream_append(&self, request: Request<Streaming<RaftMessage>>) -> Result<Response<ReplyStream>, Status> {
        self.open()?;
        let failed = std::sync::Arc::new(std::sync::Mutex::new(None));
        let requests = append_requests::<SM>(request.into_inner(), self.gate.clone(), failed.clone());
        let replies = self.raft.stream_append(requests).map(|r| {
            let payload = codec::encode(&r).map_err(|e| Status::internal(e.to_string()))?;
            Ok(RaftMessage { payload })
        });
        // After the last reply: why the requests stopped, if they did not just end.
        let why = futures::stream::once(async move { lock(&failed).take() }).filter_map(|f| async move { f.map(Err) });
        Ok(Response::new(Box::pin(replies.chain(why))))
    }

    async fn transfer_leader(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        self.open()?;
        let req = decode(request.get_ref())?;
        let res = self.raft.handle_transfer_leader(req).await.map_err(openraft::errors::RaftError::<_>::Fatal);
        reply(&res)
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftMessage>, Status> {
        self.open()?;
        let mut stream = request.into_inner();
        let mut head: Option<(Vote<SM>, SnapshotMeta<SM>)> = None;
        let mut data = Vec::new();
        while let Some(chunk) = stream.message().await? {
            match chunk.kind {
                Some(snapshot_chunk::Kind::Meta(m)) => {
                    head = Some(codec::decode(&m).map_err(|e| Status::invalid_argument(e.to_string()))?)
                }
                Some(snapshot_chunk::Kind::Data(d)) => data.extend_from_slice(&d),
                None => return Err(Status::invalid_argument("empty snapshot chunk")),
            }
        }
        let (vote, meta) = head.ok_or_else(|| Status::invalid_argument("snapshot stream without meta"))?;
        let snapshot = Snapshot::<SM> { meta, snapshot: data };
        reply(&self.raft.install_full_snapshot(vote, snapshot).await)
    }
}
