//! Replication's own transport: AppendEntries sessions as length-prefixed frames on
//! a TCP (or TLS) connection, instead of a gRPC stream.
//!
//! Over gRPC every replication message crosses two extra tasks on each side — hyper's
//! task that pipes a streaming body into h2, and h2's connection task that owns the
//! socket — and h2's stream bookkeeping (flow-control windows, a lock per frame).
//! Here the task that produces a message writes it to the socket, and the task that
//! consumes one reads it from the socket: on the leader, openraft's request stream
//! is polled by a writer task of ours and its replication task reads the answers
//! itself; on a follower, the link's task reads a request, hands it to openraft's
//! core and writes the answer. Everything else — votes, snapshots, leadership transfer,
//! forwarded writes — stays on gRPC.
//!
//! **Wire.** A link opens with a 16-byte preface from the dialing node
//! ([`PREFACE`]) answered by [`ACCEPTED`]; with TLS, the ALPN protocol [`ALPN`] is
//! negotiated too, and only a node certificate of the cluster's CA is served (the
//! node crate checks that). Then frames: a kind byte, a big-endian `u32` length, the
//! payload (bincode, [`crate::codec`]). A session is the dialer's `Request` frames
//! ended by its `End`; the other side answers each request with a `Reply`, in order,
//! then its own `End` — empty when it took every request, or a code and a reason when
//! it stopped early (its Raft gate closed, a request did not decode). A link whose
//! session ended cleanly on both sides goes back to a pool for the next session (one
//! per heartbeat, every 50 ms or so); any other end closes it.
//!
//! **Versions.** The port is shared with gRPC: the serving node tells the two apart
//! by the preface (HTTP/2's starts `PRI *`) or by ALPN. A peer that does not speak
//! links (an older berth: it answers the preface with an HTTP/2 error, or refuses the
//! ALPN protocol) is noted as such for [`LEGACY_RETRY`], and replication to it goes
//! over gRPC meanwhile — a rolling upgrade keeps replicating. A connection lost before
//! the answer (mid-handshake, a peer restarting) is only a failed dial.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{FutureExt, Stream};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_rustls::rustls;
use tokio_util::sync::CancellationToken;

use openraft::errors::RaftError;

use crate::codec;
use crate::connections::{CONNECT_TIMEOUT, MAX_MESSAGE_BYTES};
use crate::locks::lock;
use crate::stages::{self, Step};
use crate::state_machine::StateMachine;
use crate::type_config::typ::{AppendReply, Raft};

/// What a dialing node sends first.
pub const PREFACE: &[u8; 16] = b"BERTH-RAFT/1\r\n\r\n";
/// What a node that serves links answers to it.
pub const ACCEPTED: &[u8; 16] = b"BERTH-RAFT/1 OK\n";
/// The TLS application protocol of a link.
pub const ALPN: &[u8] = b"berth-raft/1";
/// How long a peer found not to speak links is dialed over gRPC only. Short: a node
/// that shuts down while a link is being opened looks the same (the connection
/// closes before the answer), and it may be back, speaking links, seconds later.
pub const LEGACY_RETRY: Duration = Duration::from_secs(10);
/// Idle links kept per peer (a replication session and a heartbeat at a time need two).
const IDLE_PER_PEER: usize = 4;

/// Frame kinds.
pub const REQUEST: u8 = 1;
pub const REPLY: u8 = 2;
pub const END: u8 = 3;

/// Why the serving side ended a session early, as its `End` frame says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// It does not take Raft requests now (its gate is closed): the dialer backs off.
    Unavailable = 1,
    /// A request it could not decode.
    Invalid = 2,
}

/// Bytes a link's reading half takes in at once: under load, many frames per read.
const READ_BUFFER: usize = 64 * 1024;

/// The reading half of a link, buffered: a frame's header and payload in one read.
pub type Reader = BufReader<Box<dyn AsyncRead + Send + Unpin>>;
/// The writing half.
pub type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// Turns TCP keep-alive on for a link: probes after 10 s of silence, every 5 s, three
/// unanswered ones close it. A link may carry nothing for long (a replication session
/// between writes, a pooled link), and a peer that vanished without closing it — a
/// host powered off, a partition that outlived the close — would otherwise hold its
/// socket and task at this end for good.
pub fn keepalive(tcp: &TcpStream) {
    let ka = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(10))
        .with_interval(Duration::from_secs(5))
        .with_retries(3);
    if let Err(e) = socket2::SockRef::from(tcp).set_tcp_keepalive(&ka) {
        tracing::debug!(error = %e, "cannot turn TCP keep-alive on for a link");
    }
}

/// Both halves of a plain TCP connection (no lock between them).
pub fn split_tcp(tcp: TcpStream) -> (Reader, Writer) {
    let (r, w) = tcp.into_split();
    (BufReader::with_capacity(READ_BUFFER, Box::new(r)), Box::new(w))
}

/// Both halves of any other stream (TLS).
pub fn split_io<T: AsyncRead + AsyncWrite + Send + Unpin + 'static>(io: T) -> (Reader, Writer) {
    let (r, w) = tokio::io::split(io);
    (BufReader::with_capacity(READ_BUFFER, Box::new(r)), Box::new(w))
}

/// Writes one frame with one write (and flushes it: TLS buffers).
pub async fn write_frame(w: &mut Writer, kind: u8, payload: &[u8]) -> io::Result<()> {
    let len =
        u32::try_from(payload.len()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a frame over 4 GiB"))?;
    let mut frame = Vec::with_capacity(5 + payload.len());
    frame.push(kind);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(payload);
    // Marked before the write: a loopback write returns after the peer may have read
    // it, and the marks keep cause before effect.
    match kind {
        REQUEST => stages::mark(Step::FrameOut),
        REPLY => stages::mark(Step::ReplyOut),
        _ => {}
    }
    w.write_all(&frame).await?;
    w.flush().await
}

/// Writes `payloads` as frames of `kind`, each as it comes, until they end.
pub async fn write_frames<S>(w: &mut Writer, kind: u8, payloads: S) -> io::Result<()>
where
    S: Stream<Item = io::Result<Vec<u8>>>,
{
    futures::pin_mut!(payloads);
    while let Some(payload) = futures::StreamExt::next(&mut payloads).await {
        write_frame(w, kind, &payload?).await?;
    }
    Ok(())
}

/// Reads one frame: its kind and payload. A clean end of the stream before a frame
/// starts is `UnexpectedEof` like any other.
pub async fn read_frame(r: &mut Reader) -> io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    r.read_exact(&mut head).await?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_MESSAGE_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes, over the {MAX_MESSAGE_BYTES}-byte limit"),
        ));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    match head[0] {
        REQUEST => stages::mark(Step::FrameIn),
        REPLY => stages::mark(Step::ReplyIn),
        _ => {}
    }
    Ok((head[0], payload))
}

/// The body of an `End` frame.
fn end_body(stop: Option<(Stop, String)>) -> Vec<u8> {
    match stop {
        None => Vec::new(),
        Some((code, reason)) => {
            let mut b = vec![code as u8];
            b.extend_from_slice(reason.as_bytes());
            b
        }
    }
}

/// Reads an `End` frame's body back.
pub fn parse_end(body: &[u8]) -> Option<(Stop, String)> {
    let (&code, reason) = body.split_first()?;
    let code = if code == Stop::Unavailable as u8 { Stop::Unavailable } else { Stop::Invalid };
    Some((code, String::from_utf8_lossy(reason).into_owned()))
}

/// Whether a failed TLS handshake was refused by TLS itself (an alert, a certificate,
/// no common protocol: rustls' error inside), not cut short by the connection.
fn is_tls_refusal(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
}

/// An open link: both halves, the preface exchanged.
pub struct Link {
    pub reader: Reader,
    pub writer: Writer,
}

impl Link {
    /// Whether a pooled link still looks usable: nothing to read on it (a peer that
    /// restarted has closed it: end of stream, or a reset).
    fn idle_and_open(&mut self) -> bool {
        self.reader.buffer().is_empty() && self.reader.fill_buf().now_or_never().is_none()
    }
}

/// What dialing a peer gave.
pub enum Dial {
    Link(Link),
    /// The peer does not speak links: use gRPC.
    Legacy,
    /// It could not be reached.
    Failed(io::Error),
}

/// Links to peers: the idle ones, the peers that do not speak links, and how to dial.
#[derive(Default)]
pub struct Links {
    tls: Option<(Arc<rustls::ClientConfig>, rustls::pki_types::ServerName<'static>)>,
    idle: Mutex<HashMap<String, Vec<Link>>>,
    legacy: Mutex<HashMap<String, Instant>>,
    opened: Mutex<HashMap<String, u64>>,
    /// Peers a dial is under way to: one at a time each (a paused peer's kernel
    /// still accepts connections, and every heartbeat would start another).
    dialing: Mutex<std::collections::HashSet<String>>,
}

impl Links {
    /// Plain TCP links.
    pub fn new() -> Self {
        Self::default()
    }

    /// TLS links with `config` (this node's certificate, the cluster's CA), checking
    /// the peer's certificate for `server_name`; the ALPN protocols are set to [`ALPN`].
    pub fn with_tls(
        config: &rustls::ClientConfig,
        server_name: &str,
    ) -> Result<Self, rustls::pki_types::InvalidDnsNameError> {
        let name = rustls::pki_types::ServerName::try_from(server_name.to_string())?;
        let mut config = config.clone();
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(Links { tls: Some((Arc::new(config), name)), ..Default::default() })
    }

    /// A link to `addr`: an idle one, or a new one; `None` when none was ready within
    /// `within`. A dial that takes longer is left to finish in the background (its
    /// link joins the pool) — as a gRPC channel keeps connecting after the call that
    /// started it gave up.
    pub async fn open(self: &Arc<Self>, addr: &str, within: Duration) -> Option<Dial> {
        if self.is_legacy(addr) {
            return Some(Dial::Legacy);
        }
        loop {
            let Some(mut link) = lock(&self.idle).get_mut(addr).and_then(|v| v.pop()) else { break };
            if link.idle_and_open() {
                return Some(Dial::Link(link));
            }
        }
        if !lock(&self.dialing).insert(addr.to_string()) {
            // The dial under way puts its link in the pool.
            tokio::time::sleep(within).await;
            let link = lock(&self.idle).get_mut(addr).and_then(|v| v.pop());
            return link.map(Dial::Link);
        }
        let (links, target) = (self.clone(), addr.to_string());
        let (tx, rx) = oneshot::channel();
        tokio::spawn(async move {
            let dial = links.dial(&target).await;
            lock(&links.dialing).remove(&target);
            match dial {
                Dial::Legacy => {
                    lock(&links.legacy).insert(target.clone(), Instant::now() + LEGACY_RETRY);
                    tracing::info!(peer = %target, "peer does not speak berth-raft links: replicating to it over gRPC");
                }
                Dial::Link(_) => *lock(&links.opened).entry(target.clone()).or_default() += 1,
                Dial::Failed(_) => {}
            }
            if let Err(Dial::Link(link)) = tx.send(dial) {
                links.put_back(&target, link);
            }
        });
        tokio::time::timeout(within, rx).await.ok().and_then(Result::ok)
    }

    /// How many links to `addr` were opened so far.
    pub fn opened(&self, addr: &str) -> u64 {
        lock(&self.opened).get(addr).copied().unwrap_or(0)
    }

    /// Whether `addr` was found not to speak links (and is dialed over gRPC for now).
    pub fn is_legacy(&self, addr: &str) -> bool {
        lock(&self.legacy).get(addr).is_some_and(|until| Instant::now() < *until)
    }

    /// Keeps a link whose session ended cleanly for the next session to `addr`.
    pub fn put_back(&self, addr: &str, link: Link) {
        let mut idle = lock(&self.idle);
        let v = idle.entry(addr.to_string()).or_default();
        if v.len() < IDLE_PER_PEER {
            v.push(link);
        }
    }

    async fn dial(&self, addr: &str) -> Dial {
        let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => return Dial::Failed(e),
            Err(_) => return Dial::Failed(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
        };
        // No Nagle: a small answer held back for a delayed ACK costs 40 ms.
        let _ = tcp.set_nodelay(true);
        keepalive(&tcp);
        let (mut reader, mut writer) = match &self.tls {
            None => split_tcp(tcp),
            Some((config, name)) => {
                let connector = tokio_rustls::TlsConnector::from(config.clone());
                match tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name.clone(), tcp)).await {
                    Err(_) => return Dial::Failed(io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out")),
                    // A peer that refuses the ALPN protocol (or TLS as we do it) may
                    // be an older berth; gRPC will say what is wrong if it is not. A
                    // connection lost mid-handshake (a peer restarting) is a failed
                    // dial like any other, not a reason to leave links for
                    // `LEGACY_RETRY`.
                    Ok(Err(e)) => {
                        tracing::debug!(peer = addr, error = %e, "link TLS handshake failed");
                        return if is_tls_refusal(&e) { Dial::Legacy } else { Dial::Failed(e) };
                    }
                    Ok(Ok(tls)) if tls.get_ref().1.alpn_protocol() != Some(ALPN) => return Dial::Legacy,
                    Ok(Ok(tls)) => split_io(tls),
                }
            }
        };
        let hello = async {
            write_frame_raw(&mut writer, PREFACE).await?;
            let mut answer = [0u8; 16];
            reader.read_exact(&mut answer).await.map(|_| answer)
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, hello).await {
            Err(_) => Dial::Failed(io::Error::new(io::ErrorKind::TimedOut, "no answer to the link preface")),
            Ok(Ok(answer)) if &answer == ACCEPTED => Dial::Link(Link { reader, writer }),
            // HTTP/2 (an older berth) answers with a frame of its own, or closes.
            Ok(Ok(_)) => Dial::Legacy,
            Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => Dial::Legacy,
            Ok(Err(e)) => Dial::Failed(e),
        }
    }
}

async fn write_frame_raw(w: &mut Writer, bytes: &[u8]) -> io::Result<()> {
    w.write_all(bytes).await?;
    w.flush().await
}

/// Serves one link from a peer until it closes: the preface, then sessions, each
/// request handed to openraft as it is read and answered once durable. While `gate`
/// holds a reason, a session is ended with it (as the gRPC service refuses with
/// `unavailable`).
pub async fn serve<SM: StateMachine>(
    mut reader: Reader,
    mut writer: Writer,
    raft: Raft<SM>,
    gate: Option<watch::Receiver<Option<String>>>,
) -> io::Result<()> {
    let mut preface = [0u8; 16];
    tokio::time::timeout(CONNECT_TIMEOUT, reader.read_exact(&mut preface))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no link preface"))??;
    if &preface != PREFACE {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "not a berth-raft link preface"));
    }
    write_frame_raw(&mut writer, ACCEPTED).await?;
    loop {
        // The first frame of the next session; a link may idle in the dialer's pool.
        let (kind, payload) = match read_frame(&mut reader).await {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        };
        match kind {
            REQUEST => {}
            // A session without requests.
            END => {
                write_frame(&mut writer, END, &[]).await?;
                continue;
            }
            k => return Err(io::Error::new(io::ErrorKind::InvalidData, format!("unexpected frame kind {k}"))),
        }
        match session(&mut reader, &mut writer, &raft, gate.as_ref(), payload).await? {
            // The dialer's `End` was read: the link may carry its next session.
            Ended::Clean => {}
            Ended::Stopped(stop) => {
                write_frame(&mut writer, END, &end_body(Some(stop))).await?;
                return Ok(());
            }
            Ended::Gone => return Ok(()),
        }
    }
}

/// How a session served on a link ended.
enum Ended {
    /// Both sides sent their `End`.
    Clean,
    /// This side stops early, for the reason its `End` gives; the link closes.
    Stopped((Stop, String)),
    /// The dialer went away: there is no one to tell.
    Gone,
}

/// One session, from its `first` request: each request is read, handed to openraft
/// (`Raft::append_entries`, on this task: the request goes to the Raft core without a
/// task of its own between, and the answer comes back here to be written) and
/// answered, until the dialer's `End`. One request at a time: the dialer sends the next
/// only once this one is answered ([`crate::network::IN_FLIGHT`]); a dialer that sent
/// more would find them read, in order, once each is answered. An answer openraft ends
/// the session with (a conflict, a higher vote, its core stopped) is followed by this
/// side's `End`, then [`drain`]ed.
async fn session<SM: StateMachine>(
    reader: &mut Reader,
    writer: &mut Writer,
    raft: &Raft<SM>,
    gate: Option<&watch::Receiver<Option<String>>>,
    first: Vec<u8>,
) -> io::Result<Ended> {
    let mut payload = first;
    loop {
        if let Some(reason) = crate::service::refusal(gate) {
            return Ok(Ended::Stopped((Stop::Unavailable, reason)));
        }
        let req: openraft::raft::AppendEntriesRequest<crate::TypeConfig<SM>> = match codec::decode(&payload) {
            Ok(req) => req,
            Err(e) => return Ok(Ended::Stopped((Stop::Invalid, e.to_string()))),
        };
        let (prev, last) = (req.prev_log_id, req.entries.last().map(|e| e.log_id).or(req.prev_log_id));
        let reply: AppendReply<SM> = match raft.append_entries(req).await {
            Ok(answer) => Ok(answer.into_stream_result(prev, last)),
            Err(RaftError::Fatal(fatal)) => Err(fatal),
            Err(RaftError::APIError(never)) => match never {},
        };
        write_frame(writer, REPLY, &codec::encode(&reply)?).await?;
        // openraft ends a session at any answer but a match (`Raft::stream_append`).
        if !matches!(reply, Ok(Ok(_))) {
            write_frame(writer, END, &[]).await?;
            return Ok(drain(reader).await);
        }
        payload = match read_frame(reader).await {
            Ok((REQUEST, p)) => p,
            Ok((END, _)) => {
                write_frame(writer, END, &[]).await?;
                return Ok(Ended::Clean);
            }
            Ok((k, _)) => return Ok(Ended::Stopped((Stop::Invalid, format!("unexpected frame kind {k}")))),
            Err(_) => return Ok(Ended::Gone),
        };
    }
}

/// The rest of a session this side has ended: what the dialer sent before it heard of
/// the end is read and dropped, up to its `End` (the link then carries the next
/// session). Anything else closes the link: this side's `End` is already sent.
async fn drain(reader: &mut Reader) -> Ended {
    loop {
        match read_frame(reader).await {
            Ok((REQUEST, _)) => {}
            Ok((END, _)) => return Ended::Clean,
            Ok(_) | Err(_) => return Ended::Gone,
        }
    }
}

/// The plain connections of a port shared by gRPC and links: each connection that
/// opens with [`PREFACE`] is served as a link (until `stop`), the others come out of
/// the returned stream for tonic. Reading the first bytes of a connection runs on its
/// own task (a silent client holds up no one).
pub fn sniff<SM: StateMachine>(
    listener: TcpListener,
    raft: Raft<SM>,
    gate: Option<watch::Receiver<Option<String>>>,
    stop: CancellationToken,
) -> impl Stream<Item = io::Result<TcpStream>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        while let Some((tcp, _)) = accept(&listener, &stop, "gRPC").await {
            let (tx, raft, gate, stop) = (tx.clone(), raft.clone(), gate.clone(), stop.clone());
            tokio::spawn(async move {
                match opens_with_preface(&tcp).await {
                    Ok(true) => {
                        keepalive(&tcp);
                        let (r, w) = split_tcp(tcp);
                        serve_until(r, w, raft, gate, stop).await;
                    }
                    Ok(false) => {
                        let _ = tx.send(tcp).await;
                    }
                    Err(_) => {}
                }
            });
        }
    });
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|s| (Ok(s), rx)) })
}

/// [`serve`]s a link until it closes or `stop` is cancelled; how it ended is logged
/// at debug level (a peer closing its links is routine).
pub async fn serve_until<SM: StateMachine>(
    reader: Reader,
    writer: Writer,
    raft: Raft<SM>,
    gate: Option<watch::Receiver<Option<String>>>,
    stop: CancellationToken,
) {
    tokio::select! {
        () = stop.cancelled() => {}
        r = serve(reader, writer, raft, gate) => if let Err(e) = r {
            tracing::debug!(error = %e, "Raft link closed");
        },
    }
}

/// The next connection on `listener`, without Nagle (a small reply held back for a
/// delayed ACK costs 40 ms); `None` once `stop` is cancelled. A failed accept (out of
/// file descriptors, say) is logged, naming `what` listens, and retried shortly.
pub async fn accept(
    listener: &TcpListener,
    stop: &CancellationToken,
    what: &str,
) -> Option<(TcpStream, std::net::SocketAddr)> {
    loop {
        tokio::select! {
            () = stop.cancelled() => return None,
            r = listener.accept() => match r {
                Ok((tcp, addr)) => {
                    let _ = tcp.set_nodelay(true);
                    return Some((tcp, addr));
                }
                Err(e) => {
                    tracing::warn!(error = %e, what, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// Whether a new connection's first bytes are [`PREFACE`]: `false` as soon as they
/// differ (an HTTP/2 client's preface starts `PRI *`, one byte will do).
async fn opens_with_preface(tcp: &TcpStream) -> io::Result<bool> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 16];
    loop {
        let n = tokio::time::timeout_at(deadline, tcp.peek(&mut buf))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "nothing sent"))??;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if buf[..n] != PREFACE[..n] {
            return Ok(false);
        }
        if n == PREFACE.len() {
            return Ok(true);
        }
        // Part of the preface so far: `peek` would return the same bytes at once.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (a.unwrap(), b.unwrap().0)
    }

    #[tokio::test]
    async fn frames_round_trip_and_an_oversized_one_is_refused() {
        let (a, b) = pair().await;
        let (_, mut w) = split_tcp(a);
        let (mut r, _) = split_tcp(b);
        write_frame(&mut w, REQUEST, b"one").await.unwrap();
        write_frame(&mut w, END, &end_body(Some((Stop::Unavailable, "disk full".into())))).await.unwrap();
        write_frame(&mut w, END, &end_body(None)).await.unwrap();
        assert_eq!(read_frame(&mut r).await.unwrap(), (REQUEST, b"one".to_vec()));
        let (kind, body) = read_frame(&mut r).await.unwrap();
        assert_eq!((kind, parse_end(&body)), (END, Some((Stop::Unavailable, "disk full".to_string()))));
        let (kind, body) = read_frame(&mut r).await.unwrap();
        assert_eq!((kind, parse_end(&body)), (END, None));
        // A header announcing more than the limit: refused before anything is allocated.
        let mut head = vec![REQUEST];
        head.extend_from_slice(&(MAX_MESSAGE_BYTES as u32 + 1).to_be_bytes());
        write_frame_raw(&mut w, &head).await.unwrap();
        let e = read_frame(&mut r).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        drop(w);
        let e = read_frame(&mut r).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
    }

    #[tokio::test]
    async fn a_link_is_told_from_http2_by_its_first_bytes() {
        let (mut a, b) = pair().await;
        a.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
        assert!(!opens_with_preface(&b).await.unwrap(), "HTTP/2 goes to tonic");
        let mut left = [0u8; 24];
        b.peek(&mut left).await.unwrap();
        assert_eq!(&left[..3], b"PRI", "nothing of it was consumed");

        let (mut a, b) = pair().await;
        // The preface in two pieces.
        a.write_all(&PREFACE[..5]).await.unwrap();
        let sniffed = tokio::spawn(async move { opens_with_preface(&b).await.unwrap() });
        tokio::time::sleep(Duration::from_millis(20)).await;
        a.write_all(&PREFACE[5..]).await.unwrap();
        assert!(sniffed.await.unwrap(), "a link's preface, even split");

        let (a, b) = pair().await;
        drop(a);
        assert_eq!(opens_with_preface(&b).await.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn links_probe_a_silent_peer() {
        let (a, _b) = pair().await;
        keepalive(&a);
        let sock = socket2::SockRef::from(&a);
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(10));
        assert_eq!(sock.tcp_keepalive_interval().unwrap(), Duration::from_secs(5));
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), 3);
    }

    #[tokio::test]
    async fn a_pooled_link_closed_by_its_peer_is_not_reused() {
        let (a, b) = pair().await;
        let (reader, writer) = split_tcp(a);
        let mut link = Link { reader, writer };
        assert!(link.idle_and_open(), "an open, quiet link");
        drop(b);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!link.idle_and_open(), "the peer closed it");
    }
}
