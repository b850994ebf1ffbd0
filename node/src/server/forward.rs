//! Writes forwarded to the leader on one stream (`Internal.ProposeStream`).
//!
//! A node that is not the leader hands each API write (and membership call) to the
//! leader. As a unary gRPC call each one opened an HTTP/2 stream of its own — headers
//! and data out, headers, data and trailers back. Here a node keeps one long-lived
//! stream to the leader: every call is a data frame tagged with an id, runs on
//! the leader as soon as it arrives (many at once), and its reply — carrying the id —
//! comes back as soon as it finishes.
//!
//! When the stream fails (the leader went away, the connection broke), every call
//! waiting on it fails as `Unavailable`, and the next call opens a new stream. The
//! caller (`Proposer::call_leader`) then looks for the leader again and resends the
//! same request; a write keeps its request id, so one that was applied before the
//! failure is not applied twice (the state machine's dedup window).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_proto::berth::internal_client::InternalClient;
use berth_proto::berth::{ForwardReply, ForwardRequest};
use berth_raft::connections::MAX_MESSAGE_BYTES;
use berth_raft::locks::lock;
use tokio::sync::{mpsc, oneshot};
use tonic::transport::Channel;
use tonic::Status;

type Reply = Result<Vec<u8>, Status>;

/// The calls of one stream that wait for their replies; `None` once the stream ended
/// (nothing may wait on it any more).
type Waiting = Mutex<Option<HashMap<u64, oneshot::Sender<Reply>>>>;

/// One stream to one leader address.
struct Link {
    calls: mpsc::UnboundedSender<ForwardRequest>,
    waiting: Arc<Waiting>,
}

impl Link {
    /// Opens the stream on `channel`; a task reads the replies for as long as it lasts.
    fn open(channel: Channel) -> Link {
        let (calls, queue) = mpsc::unbounded_channel::<ForwardRequest>();
        let waiting: Arc<Waiting> = Arc::new(Mutex::new(Some(HashMap::new())));
        let reader = waiting.clone();
        tokio::spawn(async move {
            let outbound = futures::stream::unfold(queue, |mut q| async move { q.recv().await.map(|c| (c, q)) });
            let mut client = InternalClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES);
            let ended = match client.propose_stream(outbound).await {
                Err(status) => status,
                Ok(replies) => {
                    let mut replies = replies.into_inner();
                    loop {
                        match replies.message().await {
                            Ok(Some(ForwardReply { id, result })) => {
                                let waiter = lock(&reader).as_mut().and_then(|w| w.remove(&id));
                                if let Some(w) = waiter {
                                    let _ = w.send(Ok(result));
                                }
                            }
                            Ok(None) => break Status::unavailable("the leader ended the forwarding stream"),
                            Err(status) => break status,
                        }
                    }
                }
            };
            let stranded = lock(&reader).take().unwrap_or_default();
            let status = if ended.code() == tonic::Code::Unavailable {
                ended
            } else {
                Status::unavailable(format!("the forwarding stream to the leader failed: {}", ended.message()))
            };
            for (_, w) in stranded {
                let _ = w.send(Err(status.clone()));
            }
        });
        Link { calls, waiting }
    }

    fn is_open(&self) -> bool {
        lock(&self.waiting).is_some()
    }
}

/// This node's forwarding stream to the leader it last forwarded to, opened on first
/// use, again after it fails, and anew when the leader moves (the old one closes once
/// its calls in flight have their answers).
#[derive(Default)]
pub struct Forwarder {
    link: Mutex<Option<(String, Arc<Link>)>>,
    next_id: AtomicU64,
}

impl Forwarder {
    /// Sends `command` (an encoded `LeaderRequest`) to the leader at `addr` and waits
    /// up to `left` for its encoded result. `Unavailable` when the stream failed
    /// before the reply came, `DeadlineExceeded` when `left` ran out.
    pub async fn call(&self, addr: &str, channel: Channel, command: Vec<u8>, left: Duration) -> Reply {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let link = {
            let mut current = lock(&self.link);
            match current.as_ref() {
                Some((a, l)) if a == addr && l.is_open() => l.clone(),
                _ => {
                    let l = Arc::new(Link::open(channel));
                    *current = Some((addr.to_string(), l.clone()));
                    l
                }
            }
        };
        {
            let mut waiting = lock(&link.waiting);
            let Some(w) = waiting.as_mut() else {
                return Err(Status::unavailable("the forwarding stream to the leader has just failed"));
            };
            w.insert(id, tx);
        }
        // At least 1 ms: 0 would read as "no limit given" on the leader.
        let timeout_ms = u64::try_from(left.as_millis()).unwrap_or(u64::MAX).max(1);
        if link.calls.send(ForwardRequest { id, command, timeout_ms }).is_err() {
            lock(&link.waiting).as_mut().and_then(|w| w.remove(&id));
            return Err(Status::unavailable("the forwarding stream to the leader has just failed"));
        }
        match tokio::time::timeout(left, rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => Err(Status::unavailable("the forwarding stream to the leader ended")),
            Err(_) => {
                lock(&link.waiting).as_mut().and_then(|w| w.remove(&id));
                Err(Status::deadline_exceeded("no reply from the leader in time"))
            }
        }
    }
}
