//! A pool of reusable gRPC channels, one per peer address.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::link::Links;

/// TLS for gRPC channels: the client configuration (its certificate resolver and
/// verifier may change what they present and accept between handshakes) and the name
/// the peer's certificate is checked for.
#[derive(Clone)]
pub struct ChannelTls {
    config: Arc<rustls::ClientConfig>,
    name: rustls::pki_types::ServerName<'static>,
}

/// The largest gRPC message berth sends or accepts (Raft batches, snapshot chunks).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// How long a connection attempt to a peer may take before the peer counts as
/// unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// gRPC channels to peers, created lazily and shared.
///
/// A tonic `Channel` is a handle to one HTTP/2 connection that reconnects by itself, so
/// one per address serves every request to that peer — Raft replication, write
/// forwarding, read-index calls — without a connection per RPC.
///
/// With TLS, every channel dials through [`ChannelTls`]: this crate's own handshake
/// (tokio-rustls) with the node's configuration, read at each connection — a node
/// that reloads its certificates (`SIGHUP`) dials with the new ones from its next
/// connection on.
///
/// Replication has links of its own ([`Links`], `crate::link`), dialed the same way.
#[derive(Default)]
pub struct Connections {
    channels: Mutex<HashMap<String, Channel>>,
    tls: Option<ChannelTls>,
    links: Arc<Links>,
}

impl Connections {
    pub fn new() -> Self {
        Self::default()
    }

    /// Channels and replication links over TLS with `config` (the cluster CA, this
    /// node's identity), the peer's certificate checked for `server_name`; each with
    /// its own ALPN protocol (`h2`, [`crate::link::ALPN`]).
    pub fn with_tls(
        config: &rustls::ClientConfig,
        server_name: &str,
    ) -> Result<Self, rustls::pki_types::InvalidDnsNameError> {
        let links = Links::with_tls(config, server_name)?;
        let name = rustls::pki_types::ServerName::try_from(server_name.to_string())?;
        let mut config = config.clone();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let tls = ChannelTls { config: Arc::new(config), name };
        Ok(Connections { channels: Default::default(), tls: Some(tls), links: Arc::new(links) })
    }

    /// The replication links to peers.
    pub fn links(&self) -> &Arc<Links> {
        &self.links
    }

    /// The channel to `addr` (`host:port`), created on first use. Fails only for an
    /// address that is not a valid URI authority.
    pub fn get(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let mut map = self.channels.lock().unwrap();
        if let Some(c) = map.get(addr) {
            return Ok(c.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))?
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        let channel = match &self.tls {
            None => endpoint.connect_timeout(CONNECT_TIMEOUT).connect_lazy(),
            // The connector times its two steps itself, each as a link's dial does.
            Some(tls) => endpoint.connect_with_connector_lazy(tls.clone()),
        };
        map.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }
}

/// Dials a peer for a gRPC channel: TCP (no Nagle), then TLS with the configuration
/// as it is at this moment; each step within [`CONNECT_TIMEOUT`], as a link's dial.
impl tower::Service<http::Uri> for ChannelTls {
    type Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let tls = self.clone();
        Box::pin(async move {
            let addr = uri.authority().map(|a| a.to_string()).ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{uri}: no host:port to dial"))
            })?;
            let timed_out = |what: &str| std::io::Error::new(std::io::ErrorKind::TimedOut, format!("{addr}: {what}"));
            let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&addr))
                .await
                .map_err(|_| timed_out("no TCP connection within the connect timeout"))??;
            tcp.set_nodelay(true)?;
            let handshake = tokio_rustls::TlsConnector::from(tls.config).connect(tls.name, tcp);
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, handshake)
                .await
                .map_err(|_| timed_out("no TLS handshake within the connect timeout"))??;
            Ok(hyper_util::rt::TokioIo::new(stream))
        })
    }
}
