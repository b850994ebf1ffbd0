//! A pool of reusable gRPC channels, one per peer address.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::link::Links;

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
/// With TLS, every channel dials `https://` with the node's client certificate.
///
/// Replication has links of its own ([`Links`], `crate::link`), dialed the same way.
#[derive(Default)]
pub struct Connections {
    channels: Mutex<HashMap<String, Channel>>,
    tls: Option<ClientTlsConfig>,
    links: Arc<Links>,
}

impl Connections {
    pub fn new() -> Self {
        Self::default()
    }

    /// Channels over TLS with `tls` (the cluster CA, this node's identity), and
    /// replication links dialed with `links` (TLS too).
    pub fn with_tls(tls: ClientTlsConfig, links: Links) -> Self {
        Connections { channels: Default::default(), tls: Some(tls), links: Arc::new(links) }
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
        let endpoint = match &self.tls {
            None => Endpoint::from_shared(format!("http://{addr}"))?,
            Some(tls) => Endpoint::from_shared(format!("https://{addr}"))?.tls_config(tls.clone())?,
        };
        let channel = endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .connect_lazy();
        map.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }
}
