//! The Raft network: openraft's [`RaftNetworkV2`] over tonic.
//!
//! Each message is bincode-encoded (see [`crate::codec`]) into the envelopes of
//! `proto/raft.proto`. Errors are classified the way openraft's backoff needs (#778,
//! #462): a peer that refuses or drops connections is [`Unreachable`] (openraft backs
//! off), a deadline is a [`Timeout`], anything else a [`NetworkError`] (retried soon).

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_proto::raft::raft_client::RaftClient;
use berth_proto::raft::{snapshot_chunk, RaftMessage, SnapshotChunk};
use futures::{Stream, StreamExt};
use openraft::base::{BoxFuture, BoxStream};
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Timeout, Unreachable};
use openraft::network::{RPCOption, RPCTypes, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{AnyError, OptionalSend};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::Notify;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::codec;
use crate::connections::{Connections, MAX_MESSAGE_BYTES};
use crate::link::{self, Dial, Link, Links};
use crate::locks::lock;
use crate::state_machine::StateMachine;
use crate::type_config::typ::{Snapshot, Vote};
use crate::type_config::{Node, NodeId, TypeConfig};

/// Bytes of snapshot data per streamed chunk.
const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;

/// Bytes of entries per AppendEntries message: a quarter of [`MAX_MESSAGE_BYTES`].
/// openraft bounds a message by entry count only; one scheduler plan can be tens of
/// megabytes, so a catching-up follower could be sent more than the limit allows.
pub const APPEND_BUDGET_BYTES: u64 = MAX_MESSAGE_BYTES as u64 / 4;

/// Bytes per second a peer is assumed to take in and make durable, at the least.
const MIN_THROUGHPUT_BYTES_PER_S: f64 = 50e6;

/// Time allowed for `bytes` on top of openraft's deadline. openraft gives an
/// AppendEntries the heartbeat interval (40 ms); a follower that is behind by a few
/// scheduler plans must receive and fsync megabytes, which takes longer — with the bare
/// deadline every attempt can time out and the follower never catch up (the likely
/// cause of C1M runs whose watched follower showed no placement for ten minutes).
fn transfer_time(bytes: usize) -> Duration {
    Duration::from_secs_f64(bytes as f64 / MIN_THROUGHPUT_BYTES_PER_S)
}

/// Cuts `rpc`'s entries to the longest prefix (never empty) whose encoding fits
/// `budget` bytes; returns the last log id sent when it cut. The caller reports a
/// `PartialSuccess` up to it, and openraft sends the rest next: a follower's commit
/// index is bounded by what it holds, so a cut never commits an entry it lacks.
pub fn fit_entries<SM: StateMachine>(
    rpc: &mut AppendEntriesRequest<TypeConfig<SM>>,
    budget: u64,
) -> Result<Option<crate::type_config::typ::LogId<SM>>, std::io::Error> {
    if codec::encoded_len(&*rpc)? <= budget {
        return Ok(None);
    }
    let mut total = 0;
    let mut keep = 0;
    for e in &rpc.entries {
        total += codec::encoded_len(e)?;
        if keep > 0 && total > budget {
            break;
        }
        keep += 1;
    }
    if keep == rpc.entries.len() {
        return Ok(None);
    }
    rpc.entries.truncate(keep);
    Ok(rpc.entries.last().map(|e| e.log_id))
}

/// What a replication stream's two halves share: the deadlines of the requests sent
/// and not answered yet (oldest first), why the sending half stopped early, and
/// whether the receiving half has ended.
#[derive(Default)]
struct Unanswered {
    deadlines: Mutex<Deadlines>,
    /// Woken when a request is sent (the receiving half then has a deadline to keep).
    sent: Notify,
    failed: Mutex<Option<String>>,
    /// Set (and `closing` woken) once the receiving half has ended or was dropped: the
    /// session is over, and the sending half must take no more of openraft's
    /// requests. (HTTP/2 keeps sending a request body after its response stream was
    /// dropped, and openraft's request stream shares its state with the next session.)
    closed: AtomicBool,
    closing: Notify,
    /// Woken when an answer comes (the sending half may be waiting for room in the
    /// window, [`IN_FLIGHT`]).
    answer: Notify,
}

#[derive(Default)]
struct Deadlines {
    due: VecDeque<Instant>,
    /// When the follower can have taken in everything sent so far: it answers in
    /// order, so a request's time to arrive adds to that of the ones before it.
    busy_until: Option<Instant>,
}

impl Unanswered {
    /// Notes a request of `bytes` sent now: due `ttl` after the follower can have
    /// received it and the ones before it.
    fn push(&self, bytes: usize, ttl: Duration) {
        {
            let mut d = lock(&self.deadlines);
            let now = Instant::now();
            let busy = d.busy_until.map_or(now, |b| b.max(now)) + transfer_time(bytes);
            d.busy_until = Some(busy);
            d.due.push_back(busy + ttl);
        }
        self.sent.notify_one();
    }
    fn oldest(&self) -> Option<Instant> {
        lock(&self.deadlines).due.front().copied()
    }
    fn answered(&self) {
        lock(&self.deadlines).due.pop_front();
        self.answer.notify_one();
    }
    fn in_flight(&self) -> usize {
        lock(&self.deadlines).due.len()
    }
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.closing.notify_one();
    }
}

/// Ends the sending half when the receiving half's state is dropped — whichever way
/// the session ended.
struct CloseOnDrop(Arc<Unanswered>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// How long an entry-less AppendEntries (a new commit index) waits for the next request
/// of its session to ride on.
///
/// openraft sends each follower an entry-less request as soon as an entry commits, to
/// tell it the new commit index. Under a steady stream of writes the next entry
/// follows within this window and carries the same (or a newer) commit index, so the
/// entry-less one is dropped ([`ride_commits`]): one message, one wake-up and one
/// answer fewer per follower per write, and the follower applies the committed entry
/// while its log writer syncs the next one instead of in a round of its own — which,
/// on a busy host, competed for the CPU with the leader's answer to the client. When
/// writes stop, a follower therefore learns the last commit within this window of the
/// leader's last commit change (a commit-only request that replaces another starts the
/// window again; commits stop advancing once what was sent is acknowledged).
/// Heartbeats and read-index rounds are single-request sessions and never wait, and
/// carry the commit index themselves.
pub const COMMIT_RIDE: Duration = Duration::from_millis(1);

/// openraft's requests of one replication session, an entry-less request dropped
/// when the next one, within `window`, has the same vote and `prev_log_id`.
///
/// Sound because the follower answers the later request exactly as it would the
/// earlier one as far as the earlier one goes (the same log position is checked; the
/// commit index carried is at least as new: openraft's is monotonic), and openraft
/// reads answers cumulatively (an answer acknowledges every request up to the log id
/// it matched). The session's first request is never held: it is a probe, or what a
/// new leader needs acknowledged before its lease lets it take writes. A request that
/// did not ride is held for the next poll; when openraft ends the session, the one held
/// back is sent at once. (When the follower's side ends it, the sending half takes no more:
/// the session is over, and the next one — or a heartbeat — carries the commit.)
pub fn ride_commits<C, S>(input: S, window: Duration) -> impl Stream<Item = AppendEntriesRequest<C>>
where
    C: openraft::RaftTypeConfig,
    S: Stream<Item = AppendEntriesRequest<C>> + Unpin,
{
    // The input, a request taken from it that did not ride on the one before, whether
    // one went out yet.
    futures::stream::unfold(Some((input, None, false)), move |state| async move {
        let (mut input, mut next, sent): (S, Option<AppendEntriesRequest<C>>, bool) = state?;
        let mut req = match next.take() {
            Some(req) => req,
            None => input.next().await?,
        };
        while sent && req.entries.is_empty() {
            let follower = tokio::select! {
                biased;
                f = input.next() => f,
                () = tokio::time::sleep(window) => break,
            };
            match follower {
                None => return Some((req, None)),
                Some(f) if f.vote == req.vote && f.prev_log_id == req.prev_log_id => req = f,
                Some(f) => {
                    next = Some(f);
                    break;
                }
            }
        }
        Some((req, Some((input, next, true))))
    })
}

/// Requests of a session sent and not yet answered, at most. openraft builds a
/// request when it is asked for the next one, with every entry there is by then: while
/// one is in flight, entries gather for the next instead of going out a few at a time
/// — under load fewer, larger requests, answers and follower flushes (on links, which
/// take a message to the follower sooner than h2 did, unbounded pipelining sent 1.5×
/// the messages and flushes per allocation and lost 18 % at 256 clients; a window of
/// one beat two and unbounded at every client count, docs/benchmarks.md, session 16).
/// A lagging follower still catches up at full speed: each request then carries up
/// to [`APPEND_BUDGET_BYTES`]. The price: the sending half learns that openraft ended
/// a session only when it may ask for the next request, so a session's end (on a
/// link, its `End`) follows its last answer by a round trip — a heartbeat, a session
/// of one request, completes in two round trips instead of one (well under a
/// millisecond on a LAN; openraft allows it the heartbeat interval). Replication
/// sessions proper last until openraft changes course, so this is not per write.
pub const IN_FLIGHT: usize = 1;

/// The sending half of a replication stream: openraft's requests ([`ride_commits`]),
/// each cut to the byte budget and encoded, its deadline noted. A request that had to
/// be cut is the session's last: the follower answers with the entries it took, and
/// openraft sends the rest in a new session (as with a `PartialSuccess` of the unary
/// call). Nothing is lost with it: a request is only held back behind an entry-less
/// one, and those are never cut.
fn outbound<SM: StateMachine, S>(
    input: S,
    budget: u64,
    ttl: Duration,
    unanswered: Arc<Unanswered>,
) -> impl Stream<Item = Vec<u8>>
where
    S: Stream<Item = AppendEntriesRequest<TypeConfig<SM>>> + Send + Unpin + 'static,
{
    let input = Box::pin(ride_commits(input, COMMIT_RIDE));
    futures::stream::unfold(Some(input), move |input| {
        let unanswered = unanswered.clone();
        async move {
            let mut input = input?;
            while unanswered.in_flight() >= IN_FLIGHT {
                tokio::select! {
                    biased;
                    () = unanswered.closing.notified() => return None,
                    () = unanswered.answer.notified() => {}
                }
            }
            if unanswered.closed.load(Ordering::SeqCst) {
                return None;
            }
            let mut req = tokio::select! {
                biased;
                () = unanswered.closing.notified() => return None,
                req = input.next() => req?,
            };
            let encoded = fit_entries(&mut req, budget).and_then(|cut| Ok((cut, codec::encode(&req)?)));
            match encoded {
                Ok((cut, payload)) => {
                    unanswered.push(payload.len(), ttl);
                    Some((payload, cut.is_none().then_some(input)))
                }
                Err(e) => {
                    *lock(&unanswered.failed) = Some(e.to_string());
                    None
                }
            }
        }
    })
}

/// The receiving half: the follower's answers in request order. Each must come by its
/// request's deadline (none is due while nothing is unanswered: the leader has nothing
/// to send); a late one, a transport error or a fatal answer ends the session with the
/// error openraft backs off on. `replies` is the transport's: each answer's bytes, and
/// its end when the follower ended the session cleanly.
fn inbound<SM: StateMachine, R>(
    replies: R,
    unanswered: Arc<Unanswered>,
    timeout: Timeout<TypeConfig<SM>>,
) -> impl Stream<Item = Result<StreamAppendResult<TypeConfig<SM>>, RpcError<SM>>>
where
    R: Stream<Item = Result<Vec<u8>, RpcError<SM>>> + Unpin,
{
    let guard = CloseOnDrop(unanswered.clone());
    futures::stream::unfold(Some((replies, guard)), move |state| {
        let (unanswered, timeout) = (unanswered.clone(), timeout.clone());
        async move {
            let (mut replies, guard) = state?;
            let next = loop {
                let oldest = unanswered.oldest();
                tokio::select! {
                    biased;
                    m = replies.next() => break m,
                    () = tokio::time::sleep_until(oldest.unwrap_or_else(Instant::now)), if oldest.is_some() => {
                        return Some((Err(RPCError::Timeout(timeout)), None));
                    }
                    () = unanswered.sent.notified(), if oldest.is_none() => continue,
                }
            };
            match next {
                Some(Err(e)) => Some((Err(e), None)),
                None => lock(&unanswered.failed).take().map(|e| (Err(network(&e)), None)),
                Some(Ok(payload)) => {
                    unanswered.answered();
                    let reply: crate::type_config::typ::AppendReply<SM> = match codec::decode(&payload) {
                        Ok(r) => r,
                        Err(e) => return Some((Err(network(&e)), None)),
                    };
                    match reply {
                        Ok(Ok(matching)) => Some((Ok(Ok(matching)), Some((replies, guard)))),
                        // A conflict or a higher vote ends the session (openraft's rule).
                        Ok(Err(refused)) => Some((Ok(Err(refused)), None)),
                        // The follower's Raft has stopped.
                        Err(fatal) => Some((Err(RPCError::Unreachable(Unreachable::new(&fatal))), None)),
                    }
                }
            }
        }
    })
}

/// A transport failure openraft retries soon.
fn network<SM: StateMachine>(e: &dyn std::fmt::Display) -> RpcError<SM> {
    RPCError::Network(NetworkError::new(&AnyError::error(e.to_string())))
}

/// One replication session on a link (`crate::link`): a task writes openraft's
/// requests as they come; the answers are read where openraft polls for them. A
/// session that ends cleanly on both sides puts the link back in the pool.
fn link_session<SM: StateMachine, S>(
    link: Link,
    links: Arc<Links>,
    addr: String,
    input: S,
    budget: u64,
    ttl: Duration,
    timeout: Timeout<TypeConfig<SM>>,
) -> impl Stream<Item = Result<StreamAppendResult<TypeConfig<SM>>, RpcError<SM>>>
where
    S: Stream<Item = AppendEntriesRequest<TypeConfig<SM>>> + Send + Unpin + 'static,
{
    let Link { reader, mut writer } = link;
    let unanswered = Arc::new(Unanswered::default());
    let requests = outbound::<SM, S>(input, budget, ttl, unanswered.clone());
    let (back_tx, back_rx) = tokio::sync::oneshot::channel();
    let sending = unanswered.clone();
    tokio::spawn(async move {
        if let Err(e) = link::write_frames(&mut writer, link::REQUEST, requests.map(Ok)).await {
            lock(&sending.failed).get_or_insert_with(|| format!("sending to the follower: {e}"));
            // Wakes the receiving half, which may be waiting for a deadline only.
            sending.sent.notify_one();
            return;
        }
        let clean = !sending.closed.load(Ordering::SeqCst) && lock(&sending.failed).is_none();
        if clean && link::write_frame(&mut writer, link::END, &[]).await.is_ok() {
            let _ = back_tx.send(writer);
        }
    });
    let replies = futures::stream::unfold(Some((reader, back_rx)), move |state| {
        let (links, addr) = (links.clone(), addr.clone());
        async move {
            let (mut reader, back_rx) = state?;
            match link::read_frame(&mut reader).await {
                Ok((link::REPLY, payload)) => Some((Ok(payload), Some((reader, back_rx)))),
                Ok((link::END, body)) => match link::parse_end(&body) {
                    None => {
                        // Both sides ended cleanly: the link serves the next session.
                        if let Ok(writer) = back_rx.await {
                            links.put_back(&addr, Link { reader, writer });
                        }
                        None
                    }
                    Some((link::Stop::Unavailable, why)) => {
                        Some((Err(RPCError::Unreachable(Unreachable::new(&AnyError::error(why)))), None))
                    }
                    Some((link::Stop::Invalid, why)) => Some((Err(network::<SM>(&why)), None)),
                },
                Ok((kind, _)) => Some((Err(network::<SM>(&format!("unexpected frame kind {kind} on a link"))), None)),
                Err(e) => Some((Err(network::<SM>(&format!("the link to the follower: {e}"))), None)),
            }
        }
    });
    inbound::<SM, _>(Box::pin(replies), unanswered, timeout)
}

/// Creates [`Connection`]s to peers, sharing one channel per address.
pub struct Network<SM> {
    id: NodeId,
    connections: Arc<Connections>,
    append_budget: u64,
    links: bool,
    _sm: std::marker::PhantomData<fn() -> SM>,
}

impl<SM> Network<SM> {
    pub fn new(id: NodeId, connections: Arc<Connections>) -> Self {
        Self { id, connections, append_budget: APPEND_BUDGET_BYTES, links: true, _sm: std::marker::PhantomData }
    }

    /// The same, replicating over gRPC only, never on links (what a berth before links
    /// did; tests of the gRPC path and of mixed versions).
    pub fn grpc_only(mut self) -> Self {
        self.links = false;
        self
    }

    /// The same, with AppendEntries cut to `bytes` instead of [`APPEND_BUDGET_BYTES`]
    /// (tests make cuts happen with small entries).
    pub fn with_append_budget(mut self, bytes: u64) -> Self {
        self.append_budget = bytes;
        self
    }
}

impl<SM: StateMachine> RaftNetworkFactory<TypeConfig<SM>> for Network<SM> {
    type Network = Connection<SM>;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> Self::Network {
        Connection {
            id: self.id,
            target,
            addr: node.addr.clone(),
            channel: self.connections.get(&node.addr).map_err(|e| e.to_string()),
            links: self.links.then(|| self.connections.links().clone()),
            append_budget: self.append_budget,
            _sm: std::marker::PhantomData,
        }
    }
}

/// The link from this node to one peer.
pub struct Connection<SM> {
    id: NodeId,
    target: NodeId,
    addr: String,
    channel: Result<Channel, String>,
    /// Replication links, unless this network replicates over gRPC only.
    links: Option<Arc<Links>>,
    append_budget: u64,
    _sm: std::marker::PhantomData<fn() -> SM>,
}

type RpcError<SM, E = openraft::errors::Infallible> = RPCError<TypeConfig<SM>, E>;

/// Maps a gRPC failure to the error class openraft acts on.
fn classify<SM: StateMachine>(status: tonic::Status) -> RpcError<SM> {
    match status.code() {
        // Connection refused or reset, or the peer's Raft has stopped.
        tonic::Code::Unavailable => RPCError::Unreachable(Unreachable::new(&status)),
        _ => RPCError::Network(NetworkError::new(&status)),
    }
}

impl<SM: StateMachine> Connection<SM> {
    fn client(&self) -> Result<RaftClient<Channel>, RpcError<SM>> {
        match &self.channel {
            Ok(ch) => Ok(RaftClient::new(ch.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES)),
            Err(e) => Err(RPCError::Unreachable(Unreachable::new(&AnyError::error(format!(
                "bad address {:?} of node {}: {e}",
                self.addr, self.target
            ))))),
        }
    }

    fn timeout(&self, action: RPCTypes, timeout: Duration) -> Timeout<TypeConfig<SM>> {
        Timeout { action, id: self.id, target: self.target, timeout }
    }

    /// One unary call: encode `req`, send it with a deadline, decode the
    /// `Result<Resp, RaftError>` the peer answered.
    async fn unary<Req, Resp, F, Fut>(
        &self,
        action: RPCTypes,
        req: &Req,
        option: &RPCOption,
        call: F,
    ) -> Result<Resp, RpcError<SM>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        F: FnOnce(RaftClient<Channel>, RaftMessage) -> Fut,
        Fut: Future<Output = Result<tonic::Response<RaftMessage>, tonic::Status>>,
    {
        let payload = codec::encode(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let client = self.client()?;
        let ttl = option.hard_ttl() + transfer_time(payload.len());
        let reply = match tokio::time::timeout(ttl, call(client, RaftMessage { payload })).await {
            Err(_) => return Err(RPCError::Timeout(self.timeout(action, ttl))),
            Ok(Err(status)) => return Err(classify::<SM>(status)),
            Ok(Ok(r)) => r.into_inner(),
        };
        let result: Result<Resp, openraft::errors::RaftError<TypeConfig<SM>>> =
            codec::decode(&reply.payload).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        // The only error a peer's Raft returns here is `Fatal`: it has stopped.
        result.map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))
    }
}

impl<SM: StateMachine> RaftNetworkV2<TypeConfig<SM>> for Connection<SM> {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig<SM>>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig<SM>>, RpcError<SM>> {
        let cut = fit_entries(&mut rpc, self.append_budget).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let resp = self
            .unary(RPCTypes::AppendEntries, &rpc, &option, |mut c, m| async move { c.append_entries(m).await })
            .await?;
        Ok(match (resp, cut) {
            (AppendEntriesResponse::Success, Some(last)) => AppendEntriesResponse::PartialSuccess(Some(last)),
            (resp, _) => resp,
        })
    }

    /// One replication session: on a link to the follower (`crate::link`), or — for a
    /// peer that does not speak links — one `StreamAppend` call, as HTTP/2 data frames
    /// on one stream. Either way with [`IN_FLIGHT`] requests unanswered at most.
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<'s, Result<BoxStream<'s, Result<StreamAppendResult<TypeConfig<SM>>, RpcError<SM>>>, RpcError<SM>>>
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig<SM>>> + OptionalSend + Unpin + 'static,
    {
        Box::pin(async move {
            let ttl = option.hard_ttl();
            let timeout = self.timeout(RPCTypes::AppendEntries, ttl);
            if let Some(links) = &self.links {
                match links.open(&self.addr, ttl).await {
                    None => return Err(RPCError::Timeout(timeout)),
                    Some(Dial::Failed(e)) => return Err(RPCError::Unreachable(Unreachable::new(&e))),
                    Some(Dial::Link(link)) => {
                        let (links, addr) = (links.clone(), self.addr.clone());
                        let s = link_session::<SM, S>(link, links, addr, input, self.append_budget, ttl, timeout);
                        let replies: BoxStream<'s, _> = Box::pin(s);
                        return Ok(replies);
                    }
                    Some(Dial::Legacy) => {}
                }
            }
            let mut client = self.client()?;
            let unanswered = Arc::new(Unanswered::default());
            let requests = outbound::<SM, S>(input, self.append_budget, ttl, unanswered.clone())
                .map(|payload| RaftMessage { payload });
            // The call is open once the follower's response headers arrive.
            let replies = match tokio::time::timeout(ttl, client.stream_append(requests)).await {
                Err(_) => return Err(RPCError::Timeout(timeout)),
                Ok(Err(status)) => return Err(classify::<SM>(status)),
                Ok(Ok(r)) => r.into_inner(),
            };
            let replies = replies.map(|r| r.map(|m| m.payload).map_err(classify::<SM>));
            let replies: BoxStream<'s, _> = inbound::<SM, _>(replies, unanswered, timeout).boxed();
            Ok(replies)
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig<SM>>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig<SM>>, RpcError<SM>> {
        self.unary(RPCTypes::Vote, &rpc, &option, |mut c, m| async move { c.vote(m).await }).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig<SM>>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig<SM>>, RpcError<SM>> {
        self.unary(RPCTypes::Vote, &rpc, &option, |mut c, m| async move { c.pre_vote(m).await }).await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig<SM>>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig<SM>>, RpcError<SM>> {
        self.unary(RPCTypes::TransferLeader, &req, &option, |mut c, m| async move { c.transfer_leader(m).await }).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote<SM>,
        snapshot: Snapshot<SM>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig<SM>>, StreamingError<TypeConfig<SM>>> {
        let meta =
            codec::encode(&(&vote, &snapshot.meta)).map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        let mut chunks = vec![SnapshotChunk { kind: Some(snapshot_chunk::Kind::Meta(meta)) }];
        chunks.extend(
            snapshot
                .snapshot
                .chunks(SNAPSHOT_CHUNK_BYTES)
                .map(|c| SnapshotChunk { kind: Some(snapshot_chunk::Kind::Data(c.to_vec())) }),
        );
        let mut client = self.client().map_err(|e| match e {
            RPCError::Unreachable(u) => StreamingError::Unreachable(u),
            other => StreamingError::Network(NetworkError::new(&other)),
        })?;
        let ttl = option.hard_ttl().max(Duration::from_secs(10));
        let send = client.install_snapshot(futures::stream::iter(chunks));
        let reply = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            r = tokio::time::timeout(ttl, send) => r,
        };
        let reply = match reply {
            Err(_) => return Err(StreamingError::Timeout(self.timeout(RPCTypes::InstallSnapshot, ttl))),
            Ok(Err(status)) if status.code() == tonic::Code::Unavailable => {
                return Err(StreamingError::Unreachable(Unreachable::new(&status)))
            }
            Ok(Err(status)) => return Err(StreamingError::Network(NetworkError::new(&status))),
            Ok(Ok(r)) => r.into_inner(),
        };
        let result: Result<SnapshotResponse<TypeConfig<SM>>, openraft::errors::Fatal<TypeConfig<SM>>> =
            codec::decode(&reply.payload).map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| StreamingError::Unreachable(Unreachable::new(&e)))
    }
}
