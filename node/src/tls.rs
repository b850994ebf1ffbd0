//! TLS: the cluster CA (`berth ca init`, `berth ca issue`) and each node's mutual TLS.
//!
//! ## The model (Nomad's, with berth's names)
//!
//! One CA per cluster, kept by its operators (its key never goes on a node). Every node
//! gets a certificate from it carrying two DNS names: `node.berth`, the *role* every
//! peer checks, and `node-N.berth`, the identity a node checks against its own `--id`
//! at start. With `--tls-cert`, `--tls-key` and `--tls-ca`:
//!
//! - the gRPC port speaks only TLS. Raft and `Internal` (bootstrap probes, write
//!   forwarding, read index) answer only a client that presented a certificate of the
//!   cluster CA valid for `node.berth`; the public `Cluster` and `Ipam` services take
//!   TLS without a client certificate (users authenticate with API tokens);
//! - a node dials its peers over TLS with its own certificate, and accepts a peer only
//!   if the peer's certificate chains to the CA and is valid for `node.berth` (so a
//!   stolen certificate of some other CA, or a plain-text node, is refused whatever its
//!   address);
//! - the HTTP API is HTTPS (same certificate); a log or exec request proxied to the
//!   instance's host goes over it with the node's certificate as the client's.
//!
//! A connection refused at the handshake is logged on the refusing node with the peer's
//! address and the reason ("not TLS", "its certificate is not signed by the cluster
//! CA", "expired"), at most once per address every 10 s. Each node checks its own files
//! at start and exits naming the file and what is wrong with it.
//!
//! Certificates are ECDSA P-256 (rcgen), TLS is rustls with the ring provider.
//!
//! `SIGHUP` reloads the three files ([`NodeTls::reload`]): every configuration above
//! resolves its certificate and checks peers through one shared material, swapped
//! whole when new files pass every check made at start — the next handshake uses
//! them; files that fail keep the material in use. No TLS session is ever resumed (a
//! resumed handshake checks no certificate: a CA dropped by a reload would still let
//! its certificates in). Not done: revocation lists (a leaked key is cut off by moving
//! the cluster to a new CA and a rolling restart, docs/operations.md).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

/// The name every node certificate carries and every peer checks: the role.
pub const NODE_NAME: &str = "node.berth";

/// The name that ties a certificate to one node id.
pub fn node_name(id: u64) -> String {
    format!("node-{id}.berth")
}

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// rustls's ring provider. rustls 0.23.48 deprecates it for lacking post-quantum key
/// exchange (X25519MLKEM768, which only its aws-lc-rs provider has); berth keeps ring —
/// what tonic and reqwest here are built with — rather than add aws-lc's C build. A
/// cluster's own links with classical ECDHE are the trade-off, written down here.
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Makes ring the process's rustls provider, for the libraries (tonic, reqwest) that
/// build their own configurations. Idempotent.
pub fn install_provider() {
    let _ = Arc::unwrap_or_clone(provider()).install_default();
}

fn read(flag: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{flag} {}: {e}", path.display()))
}

fn certs(flag: &str, path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{flag} {}: not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{flag} {}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

/// The first certificate of a PEM file, DER-encoded (a node's own, for tools that
/// check which one a node presents).
pub fn first_certificate(path: &Path) -> Result<Vec<u8>, String> {
    let pem = read("certificate", path)?;
    Ok(certs("certificate", path, &pem)?.swap_remove(0).to_vec())
}

/// The DNS names a certificate is valid for (its subject alternative names).
pub fn dns_names(der: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else { return vec![] };
    let Ok(Some(san)) = cert.subject_alternative_name() else { return vec![] };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
        .collect()
}

/// Whether a certificate (its chain already verified against the CA) names a node.
fn is_node_cert(der: &CertificateDer<'_>) -> bool {
    let Ok(cert) = webpki::EndEntityCert::try_from(der) else { return false };
    let name = ServerName::try_from(NODE_NAME).expect("a valid DNS name");
    cert.verify_is_valid_for_subject_name(&name).is_ok()
}

/// Whether the client of a TLS connection presented a node certificate.
fn peer_is_node(stream: &TlsStream<TcpStream>) -> bool {
    stream.get_ref().1.peer_certificates().and_then(|c| c.first()).is_some_and(is_node_cert)
}

/// Who is at the other end of an API connection: the address, and whether it proved
/// to be a node of this cluster (a client certificate of the CA; never on plain HTTP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerInfo {
    pub addr: SocketAddr,
    pub node: bool,
}

/// What a node's three TLS files hold, read and checked ([`Material::read`]).
struct Material {
    /// This node's chain and key, as presented to peers and API clients.
    certified: Arc<CertifiedKey>,
    /// Accepts a client certificate of the CA (and a client without one).
    client_verifier: Arc<dyn ClientCertVerifier>,
    /// Accepts a server certificate of the CA.
    server_verifier: Arc<WebPkiServerVerifier>,
    /// When this node's certificate expires (Unix seconds).
    not_after: i64,
}

impl Material {
    /// Reads and checks `files` for node `id`: the certificate chains to the CA, is a
    /// node certificate (`node.berth`), is node `id`'s, and matches the key.
    fn read(files: &berth_cluster_config::TlsFiles, id: u64) -> Result<Material, String> {
        let ca_pem = read("--tls-ca", &files.ca)?;
        let cert_pem = read("--tls-cert", &files.cert)?;
        let key_pem = read("--tls-key", &files.key)?;
        let mut roots = RootCertStore::empty();
        for ca in certs("--tls-ca", &files.ca, &ca_pem)? {
            roots.add(ca).map_err(|e| format!("--tls-ca {}: not a usable CA certificate: {e}", files.ca.display()))?;
        }
        let roots = Arc::new(roots);
        let chain = certs("--tls-cert", &files.cert, &cert_pem)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| format!("--tls-key {}: no PEM private key in it ({e})", files.key.display()))?;

        // The certificate must be one the peers accept: signed by this CA, in date,
        // for the node role, both as a server and as a client.
        let server_verifier = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| format!("--tls-ca {}: {e}", files.ca.display()))?;
        let role = ServerName::try_from(NODE_NAME).expect("a valid DNS name");
        let not_ours = |e: rustls::Error| {
            format!(
                "--tls-cert {} is not a node certificate of the CA in --tls-ca {}: {e}",
                files.cert.display(),
                files.ca.display()
            )
        };
        server_verifier.verify_server_cert(&chain[0], &chain[1..], &role, &[], UnixTime::now()).map_err(not_ours)?;
        let client_verifier = WebPkiClientVerifier::builder_with_provider(roots, provider())
            .allow_unauthenticated()
            .build()
            .map_err(|e| format!("--tls-ca {}: {e}", files.ca.display()))?;
        client_verifier.verify_client_cert(&chain[0], &chain[1..], UnixTime::now()).map_err(not_ours)?;
        let names = dns_names(&chain[0]);
        if !names.contains(&node_name(id)) {
            let theirs: Vec<&String> = names.iter().filter(|n| n.starts_with("node-")).collect();
            return Err(format!(
                "--tls-cert {} is for {theirs:?}, not this node ({}): issue one with `berth ca issue --id {id}`",
                files.cert.display(),
                node_name(id)
            ));
        }
        let not_after = x509_parser::parse_x509_certificate(&chain[0])
            .map(|(_, c)| c.validity().not_after.timestamp())
            .map_err(|e| format!("--tls-cert {}: {e}", files.cert.display()))?;
        let certified = CertifiedKey::from_der(chain, key, &provider()).map_err(|e| {
            format!("--tls-key {} does not go with --tls-cert {}: {e}", files.key.display(), files.cert.display())
        })?;
        Ok(Material { certified: Arc::new(certified), client_verifier, server_verifier, not_after })
    }
}

/// The material in use. Every TLS configuration of the node (the gRPC and HTTP
/// servers, the links, gRPC channels and HTTP proxies it dials) reads it at each
/// handshake, so a reload ([`NodeTls::reload`]) takes effect on the next connection;
/// those already open carry on (TLS checks certificates at the handshake only).
struct Current {
    material: RwLock<Arc<Material>>,
    /// Handshake signatures are checked with the provider's algorithms, whatever the
    /// CA.
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl Current {
    fn new(material: Material) -> Current {
        let algorithms = provider().signature_verification_algorithms;
        Current { material: RwLock::new(Arc::new(material)), algorithms }
    }

    fn get(&self) -> Arc<Material> {
        self.material.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The handshake-signature checks both verifiers share (client certificates checked
/// by the servers, server certificates by the dialers).
macro_rules! signature_checks {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.algorithms.supported_schemes()
        }
    };
}

/// Never prints the key.
impl std::fmt::Debug for Current {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Current").finish_non_exhaustive()
    }
}

impl ResolvesServerCert for Current {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get().certified.clone())
    }
}

impl ResolvesClientCert for Current {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.get().certified.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A client certificate is checked against the CA in use; none is asked for by name
/// (no root hints: a node has one certificate to offer, and an API client without one
/// is let in to show its token).
impl ClientCertVerifier for Current {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.get().client_verifier.verify_client_cert(end_entity, intermediates, now)
    }

    signature_checks!();
}

/// A peer's server certificate is checked against the CA in use for the node role
/// (`node.berth`) whatever address it was dialled at: an HTTP proxy reaches a host by
/// IP, and every node is equally a node.
impl ServerCertVerifier for Current {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let role = ServerName::try_from(NODE_NAME).expect("a valid DNS name");
        self.get().server_verifier.verify_server_cert(end_entity, intermediates, &role, ocsp, now)
    }

    signature_checks!();
}

/// A node's TLS: its files, the material they held when last read, and the
/// configurations built on it.
pub struct NodeTls {
    files: berth_cluster_config::TlsFiles,
    id: u64,
    current: Arc<Current>,
    grpc_server: Arc<ServerConfig>,
    http_server: Arc<ServerConfig>,
    peer_client: rustls::ClientConfig,
    /// Refusals logged lately, by peer address and reason (at most one line per 10 s
    /// each).
    refusals: Mutex<HashMap<(IpAddr, String), Instant>>,
}

/// Never prints the key.
impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTls").finish_non_exhaustive()
    }
}

impl NodeTls {
    /// Reads and checks `files` for node `id` (`Material::read`) and builds the
    /// node's TLS configurations on them.
    pub fn load(files: &berth_cluster_config::TlsFiles, id: u64) -> Result<NodeTls, String> {
        let current = Arc::new(Current::new(Material::read(files, id)?));
        // No session resumption, either way: a resumed handshake checks no certificate
        // (the server restores the client's chain from the ticket), so after a reload
        // that dropped a CA its certificates would still get in. Connections between
        // nodes are few and long-lived; an API client pays one full handshake per
        // connection.
        let server = |alpn: &[&[u8]]| -> Result<Arc<ServerConfig>, String> {
            let mut c = ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_client_cert_verifier(current.clone())
                .with_cert_resolver(current.clone());
            c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            c.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
            c.send_tls13_tickets = 0;
            Ok(Arc::new(c))
        };
        // gRPC, and Raft replication links (`berth_raft::link`) on the same port.
        let grpc_server = server(&[b"h2", berth_raft::link::ALPN])?;
        let http_server = server(&[b"h2", b"http/1.1"])?;
        let mut peer_client = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(current.clone())
            .with_client_cert_resolver(current.clone());
        peer_client.resumption = rustls::client::Resumption::disabled();
        Ok(NodeTls {
            files: files.clone(),
            id,
            current,
            grpc_server,
            http_server,
            peer_client,
            refusals: Default::default(),
        })
    }

    /// Reads the files again (`SIGHUP`): when they pass every check [`NodeTls::load`]
    /// makes, the next handshakes — accepted and dialed — use them; otherwise the
    /// material in use stays and the error names the file and the fault. Returns
    /// the new certificate's expiry (Unix seconds).
    pub fn reload(&self) -> Result<i64, String> {
        let fresh = Arc::new(Material::read(&self.files, self.id)?);
        let not_after = fresh.not_after;
        *self.current.material.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(not_after)
    }

    /// When the certificate in use expires (Unix seconds).
    pub fn not_after(&self) -> i64 {
        self.current.get().not_after
    }

    /// How this node dials its peers' gRPC ports and replication links: its
    /// certificate, and only a node certificate of the CA accepted at the other end.
    pub fn connections(&self) -> berth_raft::Connections {
        berth_raft::Connections::with_tls(&self.peer_client, NODE_NAME).expect("NODE_NAME is a valid DNS name")
    }

    /// An HTTP client for peers' APIs (log and exec proxies): this node's certificate,
    /// and only a node certificate of the CA accepted at the other end.
    pub fn peer_http_client(&self) -> Result<reqwest::Client, String> {
        reqwest::Client::builder()
            .use_preconfigured_tls(self.peer_client.clone())
            .build()
            .map_err(|e| format!("cannot build the peer HTTP client: {e}"))
    }

    /// Accepts TLS connections on `listener` until `stop`: each handshake runs on its
    /// own (a slow or hostile client holds up no one), refusals are logged, and the
    /// connections that passed come out of the returned channel.
    fn accept(
        self: &Arc<Self>,
        listener: TcpListener,
        http: bool,
        stop: CancellationToken,
    ) -> mpsc::Receiver<(TlsStream<TcpStream>, PeerInfo)> {
        let (tx, rx) = mpsc::channel(64);
        let acceptor =
            tokio_rustls::TlsAcceptor::from(if http { &self.http_server } else { &self.grpc_server }.clone());
        let what = if http { "HTTP API" } else { "gRPC" };
        let tls = self.clone();
        tokio::spawn(async move {
            while let Some((tcp, addr)) = berth_raft::link::accept(&listener, &stop, what).await {
                let (acceptor, tx, tls) = (acceptor.clone(), tx.clone(), tls.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let peer = PeerInfo { addr, node: peer_is_node(&stream) };
                            let _ = tx.send((stream, peer)).await;
                        }
                        Ok(Err(e)) => tls.refused(addr, what, &explain(&e)),
                        Err(_) => tls.refused(addr, what, "the TLS handshake took over 10 s"),
                    }
                });
            }
        });
        rx
    }

    /// The gRPC port's connections, for tonic's `serve_with_incoming_shutdown`. Those
    /// that negotiated the replication link protocol go to `link` instead — from a
    /// node certificate of the CA only; anyone else's is refused and closed.
    pub fn grpc_incoming(
        self: &Arc<Self>,
        listener: TcpListener,
        stop: CancellationToken,
        link: impl Fn(TlsStream<TcpStream>) + Send + 'static,
    ) -> impl futures::Stream<Item = Result<TlsStream<TcpStream>, std::io::Error>> {
        let rx = self.accept(listener, false, stop);
        let tls = self.clone();
        futures::stream::unfold((rx, link, tls), |(mut rx, link, tls)| async move {
            loop {
                let (s, peer) = rx.recv().await?;
                if s.get_ref().1.alpn_protocol() != Some(berth_raft::link::ALPN) {
                    return Some((Ok(s), (rx, link, tls)));
                }
                if peer.node {
                    link(s);
                } else {
                    tls.refused(peer.addr, "Raft link", "a Raft link without a node certificate of the cluster CA");
                }
            }
        })
    }

    /// The HTTP API's listener, for `axum::serve`.
    pub fn http_listener(self: &Arc<Self>, listener: TcpListener, stop: CancellationToken) -> TlsListener {
        let local = listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        TlsListener { rx: self.accept(listener, true, stop), local }
    }

    /// Logs a refused connection or call, at most once per address and reason every
    /// 10 s (a peer retrying every heartbeat does not flood the log).
    pub fn refused(&self, addr: SocketAddr, what: &str, why: &str) {
        let now = Instant::now();
        let mut seen = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
        let key = (addr.ip(), why.to_string());
        if seen.get(&key).is_some_and(|t| now.duration_since(*t) < Duration::from_secs(10)) {
            return;
        }
        if seen.len() > 4096 {
            seen.retain(|_, t| now.duration_since(*t) < Duration::from_secs(10));
        }
        seen.insert(key, now);
        tracing::warn!(peer = %addr, what, reason = why, "connection refused (TLS)");
    }

    /// Checks that a call to a node-only gRPC service (Raft, Internal) comes from a
    /// node: a client certificate of the CA, valid for `node.berth`.
    #[allow(clippy::result_large_err)]
    pub fn require_node(&self, req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if req.peer_certs().and_then(|c| c.first().cloned()).is_some_and(|c| is_node_cert(&c)) {
            return Ok(req);
        }
        if let Some(addr) = req.remote_addr() {
            self.refused(addr, "gRPC", "a call to a node-only service without a node certificate of the cluster CA");
        }
        Err(tonic::Status::unauthenticated(
            "node_certificate_required: Raft and node-to-node calls need a node certificate of this cluster's CA",
        ))
    }
}

/// The error an `io::Error` wraps, however deep (`io::Error::source` skips it: a
/// TLS failure inside a connect error is found only this way); `e` itself otherwise.
pub fn innermost_io<'a>(e: &'a (dyn std::error::Error + 'static)) -> &'a (dyn std::error::Error + 'static) {
    let mut inner = e;
    while let Some(i) = inner.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
        inner = i;
    }
    inner
}

/// Says why a TLS handshake failed, in an operator's words.
fn explain(e: &std::io::Error) -> String {
    let Some(inner) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return e.to_string();
    };
    match inner {
        rustls::Error::InvalidMessage(_) => {
            "not TLS (a node or client without TLS? this node runs with --tls-cert)".to_string()
        }
        rustls::Error::InvalidCertificate(c) => {
            let what = match c {
                rustls::CertificateError::UnknownIssuer | rustls::CertificateError::BadSignature => {
                    "is not signed by this cluster's CA (--tls-ca)".to_string()
                }
                rustls::CertificateError::Expired | rustls::CertificateError::ExpiredContext { .. } => {
                    "has expired".to_string()
                }
                rustls::CertificateError::NotValidYet | rustls::CertificateError::NotValidYetContext { .. } => {
                    "is not valid yet (clock skew?)".to_string()
                }
                other => format!("is not valid: {other:?}"),
            };
            format!("the client's certificate {what}")
        }
        rustls::Error::AlertReceived(
            rustls::AlertDescription::UnknownCA
            | rustls::AlertDescription::BadCertificate
            | rustls::AlertDescription::CertificateUnknown,
        ) => "the client does not trust this node's certificate (a client without the cluster CA: --ca-cert?)"
            .to_string(),
        other => other.to_string(),
    }
}

/// The HTTP API's TLS connections as an axum listener.
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, PeerInfo)>,
    local: SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = PeerInfo;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // Stopped: no more connections; the server's graceful shutdown ends it.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<PeerInfo> {
        Ok(PeerInfo { addr: self.local, node: false })
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>> for PeerInfo {
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        *stream.remote_addr()
    }
}

/// The HTTP API's plain connections as an axum listener (no Nagle: a small response
/// held back for a delayed ACK costs 40 ms).
pub struct PlainListener(pub TcpListener);

impl axum::serve::Listener for PlainListener {
    type Io = TcpStream;
    type Addr = PeerInfo;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok((tcp, addr)) => {
                    if let Err(e) = tcp.set_nodelay(true) {
                        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                    }
                    return (tcp, PeerInfo { addr, node: false });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "HTTP API: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<PeerInfo> {
        Ok(PeerInfo { addr: self.0.local_addr()?, node: false })
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, PlainListener>> for PeerInfo {
    fn connect_info(stream: axum::serve::IncomingStream<'_, PlainListener>) -> Self {
        *stream.remote_addr()
    }
}

// ---- the CA ----

/// The CA's files in `dir`.
pub fn ca_files(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("ca.pem"), dir.join("ca.key"))
}

/// A node's files in `dir`.
pub fn node_files(dir: &Path, id: u64) -> (PathBuf, PathBuf) {
    (dir.join(format!("node-{id}.pem")), dir.join(format!("node-{id}.key")))
}

fn validity(days: u32) -> Result<(time::OffsetDateTime, time::OffsetDateTime), String> {
    if days == 0 || days > 36_500 {
        return Err(format!("--days {days}: between 1 and 36500"));
    }
    let now = time::OffsetDateTime::now_utc();
    // An hour back: a peer whose clock is a little behind still accepts it.
    Ok((now - time::Duration::hours(1), now + time::Duration::days(i64::from(days))))
}

/// Writes `text` to `path` (refusing to replace a file unless `replace`), readable
/// by its owner only when `secret`: into a new temporary file with those permissions,
/// synced, then renamed over `path` — a replaced key never keeps looser permissions,
/// and a crash leaves the old file or the new one, never half of one.
fn write_new(path: &Path, text: &str, secret: bool, replace: bool) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |e: std::io::Error| format!("{}: {e}", path.display());
    if !replace && path.exists() {
        return Err(format!("{} exists; not replaced", path.display()));
    }
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(err)?;
    let written = f.write_all(text.as_bytes()).and_then(|_| f.sync_all());
    let renamed = written.and_then(|_| {
        if replace {
            std::fs::rename(&tmp, path)
        } else {
            // Never over a file that appeared meanwhile.
            std::fs::hard_link(&tmp, path).and_then(|_| std::fs::remove_file(&tmp))
        }
    });
    renamed.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        match e.kind() {
            std::io::ErrorKind::AlreadyExists => format!("{} exists; not replaced", path.display()),
            _ => err(e),
        }
    })
}

/// `berth ca init`: a new cluster CA in `dir` (`ca.pem`, `ca.key`); refuses to
/// replace one.
pub fn init_ca(dir: &Path, days: u32) -> Result<(PathBuf, PathBuf), String> {
    let (not_before, not_after) = validity(days)?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let (cert_path, key_path) = ca_files(dir);
    if cert_path.exists() || key_path.exists() {
        return Err(format!("{} already holds a CA (ca.pem / ca.key); not replaced", dir.display()));
    }
    let key = rcgen::KeyPair::generate().map_err(|e| format!("cannot make a key: {e}"))?;
    let mut params = rcgen::CertificateParams::default();
    // A random serial in the name too: two clusters' CAs never look alike.
    let mut tag = [0u8; 4];
    getrandom::fill(&mut tag).map_err(|e| format!("the OS random generator failed: {e}"))?;
    let tag: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    params.distinguished_name.push(rcgen::DnType::CommonName, format!("berth cluster CA {tag}"));
    params.distinguished_name.push(rcgen::DnType::OrganizationName, "berth");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = not_before;
    params.not_after = not_after;
    let cert = params.self_signed(&key).map_err(|e| format!("cannot sign the CA: {e}"))?;
    write_new(&key_path, &key.serialize_pem(), true, false)?;
    write_new(&cert_path, &cert.pem(), false, false)?;
    Ok((cert_path, key_path))
}

/// `berth ca issue`: node `id`'s certificate and key, signed by the CA in `ca_dir`,
/// written to `out`. `hosts` are extra names or addresses API clients use to reach
/// the node (HTTPS checks them); the node names are always in.
pub fn issue(
    ca_dir: &Path,
    id: u64,
    hosts: &[String],
    days: u32,
    out: &Path,
    replace: bool,
) -> Result<(PathBuf, PathBuf), String> {
    if id == 0 {
        return Err("--id 0: node ids start at 1".into());
    }
    let (not_before, not_after) = validity(days)?;
    let (ca_cert, ca_key) = ca_files(ca_dir);
    let ca_cert_pem = std::fs::read_to_string(&ca_cert)
        .map_err(|e| format!("{}: {e} (make a CA with `berth ca init`)", ca_cert.display()))?;
    let ca_key_pem = std::fs::read_to_string(&ca_key).map_err(|e| format!("{}: {e}", ca_key.display()))?;
    let ca_key = rcgen::KeyPair::from_pem(&ca_key_pem).map_err(|e| format!("{}: {e}", ca_key.display()))?;
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_cert_pem, ca_key)
        .map_err(|e| format!("{}: not a CA certificate: {e}", ca_cert.display()))?;

    let mut names = vec![NODE_NAME.to_string(), node_name(id)];
    names.extend(hosts.iter().cloned());
    let mut params = rcgen::CertificateParams::default();
    for name in &names {
        let bad = || format!("--host {name}: not a DNS name or an IP address");
        let san = match name.parse::<IpAddr>() {
            Ok(ip) => rcgen::SanType::IpAddress(ip),
            // What a client will check it against: a syntactically valid DNS name.
            Err(_) => match ServerName::try_from(name.as_str()) {
                Ok(ServerName::DnsName(_)) => rcgen::SanType::DnsName(name.clone().try_into().map_err(|_| bad())?),
                _ => return Err(bad()),
            },
        };
        params.subject_alt_names.push(san);
    }
    params.distinguished_name.push(rcgen::DnType::CommonName, format!("berth node {id}"));
    params.distinguished_name.push(rcgen::DnType::OrganizationName, "berth");
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages =
        vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = not_before;
    params.not_after = not_after;
    let key = rcgen::KeyPair::generate().map_err(|e| format!("cannot make a key: {e}"))?;
    let cert = params.signed_by(&key, &issuer).map_err(|e| format!("cannot sign: {e}"))?;
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let (cert_path, key_path) = node_files(out, id);
    write_new(&key_path, &key.serialize_pem(), true, replace)?;
    write_new(&cert_path, &cert.pem(), false, replace)?;
    Ok((cert_path, key_path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_cluster_config::TlsFiles;

    fn files(dir: &Path, id: u64) -> TlsFiles {
        let (cert, key) = node_files(dir, id);
        TlsFiles { cert, key, ca: ca_files(dir).0 }
    }

    #[test]
    fn a_ca_issues_node_certificates_that_load_for_their_node_only() {
        install_provider();
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path(), 30).unwrap();
        assert!(init_ca(dir.path(), 30).unwrap_err().contains("already holds a CA"));
        issue(dir.path(), 2, &["127.0.0.1".into(), "api.example".into()], 30, dir.path(), false).unwrap();
        assert!(issue(dir.path(), 2, &[], 30, dir.path(), false).unwrap_err().contains("exists"));
        let tls = NodeTls::load(&files(dir.path(), 2), 2).unwrap();
        let der = tls.current.get().certified.cert[0].clone();
        assert!(is_node_cert(&der));
        assert_eq!(dns_names(&der), ["node.berth", "node-2.berth", "api.example"]);
        // The key is the owner's only, also when replaced over a looser file.
        use std::os::unix::fs::PermissionsExt;
        let key = node_files(dir.path(), 2).1;
        assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        issue(dir.path(), 2, &["127.0.0.1".into(), "api.example".into()], 30, dir.path(), true).unwrap();
        assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);

        let err = NodeTls::load(&files(dir.path(), 2), 3).unwrap_err();
        assert!(err.contains("not this node (node-3.berth)"), "{err}");

        // Another CA's certificate is not a node certificate of this one.
        let other = tempfile::tempdir().unwrap();
        init_ca(other.path(), 30).unwrap();
        issue(other.path(), 2, &[], 30, other.path(), false).unwrap();
        let mut mixed = files(other.path(), 2);
        mixed.ca = ca_files(dir.path()).0;
        let err = NodeTls::load(&mixed, 2).unwrap_err();
        assert!(err.contains("is not a node certificate of the CA") && err.contains("UnknownIssuer"), "{err}");

        // A key that does not go with the certificate.
        let mut wrong_key = files(dir.path(), 2);
        wrong_key.key = node_files(other.path(), 2).1;
        let err = NodeTls::load(&wrong_key, 2).unwrap_err();
        assert!(err.contains("does not go with"), "{err}");

        // Files that are not there, or not PEM.
        let mut missing = files(dir.path(), 2);
        missing.cert = dir.path().join("nope.pem");
        assert!(NodeTls::load(&missing, 2).unwrap_err().starts_with("--tls-cert"));
        let mut garbage = files(dir.path(), 2);
        garbage.ca = node_files(dir.path(), 2).1; // a key, not a certificate
        assert!(NodeTls::load(&garbage, 2).unwrap_err().contains("no PEM certificate"));
        assert!(validity(0).is_err() && issue(dir.path(), 0, &[], 1, dir.path(), true).is_err());
        let err = issue(dir.path(), 4, &["not a name!".into()], 30, dir.path(), false).unwrap_err();
        assert!(err.contains("--host not a name!"), "{err}");
    }

    /// The certificate a handshake with `acceptor` shows the client, and the one the
    /// client (`client`) showed the server. The server then writes a byte and the
    /// client reads it: any session ticket sent is taken in by the client's config.
    async fn handshake(
        acceptor: Arc<ServerConfig>,
        client: Arc<rustls::ClientConfig>,
    ) -> Result<(CertificateDer<'static>, Option<CertificateDer<'static>>), String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut s = tokio_rustls::TlsAcceptor::from(acceptor).accept(tcp).await.map_err(|e| e.to_string())?;
            let shown = s.get_ref().1.peer_certificates().and_then(|c| c.first().cloned());
            s.write_all(b"k").await.map_err(|e| e.to_string())?;
            s.flush().await.map_err(|e| e.to_string())?;
            Ok::<_, String>(shown)
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from(NODE_NAME).unwrap();
        let client = async {
            let mut c = tokio_rustls::TlsConnector::from(client).connect(name, tcp).await.map_err(|e| e.to_string())?;
            let mut byte = [0u8; 1];
            c.read_exact(&mut byte).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(c.get_ref().1.peer_certificates().unwrap()[0].clone().into_owned())
        };
        let (shown_to_client, shown_to_server) = (client.await, server.await.unwrap());
        let shown_to_server = shown_to_server?;
        Ok((shown_to_client?, shown_to_server))
    }

    /// The configuration a node dials its peers with.
    fn client_of(tls: &NodeTls) -> Arc<rustls::ClientConfig> {
        Arc::new(tls.peer_client.clone())
    }

    fn pem_cert(path: &Path) -> CertificateDer<'static> {
        CertificateDer::from_pem_file(path).unwrap()
    }

    /// A reload takes effect at the next handshake, on both ends (the certificate
    /// this node shows as a server and as a client, and the CA it checks peers
    /// against); files that fail a check change nothing and the error names them.
    #[tokio::test]
    async fn a_reload_takes_effect_at_the_next_handshake_and_a_refused_one_changes_nothing() {
        install_provider();
        let (dir, next) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        init_ca(dir.path(), 30).unwrap();
        issue(dir.path(), 1, &[], 30, dir.path(), false).unwrap();
        let f = files(dir.path(), 1);
        let tls = NodeTls::load(&f, 1).unwrap();
        let first = pem_cert(&f.cert);
        let (shown, as_client) = handshake(tls.http_server.clone(), client_of(&tls)).await.unwrap();
        assert_eq!((&shown, as_client.as_ref()), (&first, Some(&first)));

        // The same CA, a new certificate that lives longer.
        let before = tls.not_after();
        issue(dir.path(), 1, &[], 60, dir.path(), true).unwrap();
        let second = pem_cert(&f.cert);
        assert_ne!(first, second);
        assert!(tls.reload().unwrap() > before + 29 * 86_400);
        let (shown, as_client) = handshake(tls.grpc_server.clone(), client_of(&tls)).await.unwrap();
        assert_eq!((&shown, as_client.as_ref()), (&second, Some(&second)));

        // Refused: not PEM, another node's, a key that is not the certificate's. The
        // certificate in use stays, and so does its expiry.
        let expiry = tls.not_after();
        let keep = |what: &str, err: String| {
            assert!(err.contains(what), "{err}");
            assert_eq!(tls.not_after(), expiry);
        };
        std::fs::write(&f.cert, "not a certificate").unwrap();
        keep("--tls-cert", tls.reload().unwrap_err());
        issue(dir.path(), 2, &[], 30, dir.path(), false).unwrap();
        std::fs::copy(node_files(dir.path(), 2).0, &f.cert).unwrap();
        keep("not this node (node-1.berth)", tls.reload().unwrap_err());
        init_ca(next.path(), 30).unwrap();
        issue(next.path(), 1, &[], 30, next.path(), false).unwrap();
        std::fs::copy(node_files(next.path(), 1).0, &f.cert).unwrap();
        keep("is not a node certificate of the CA", tls.reload().unwrap_err());
        issue(dir.path(), 1, &[], 30, dir.path(), true).unwrap();
        std::fs::copy(node_files(next.path(), 1).1, &f.key).unwrap();
        keep("does not go with", tls.reload().unwrap_err());
        let (shown, _) = handshake(tls.http_server.clone(), client_of(&tls)).await.unwrap();
        assert_eq!(shown, second, "the refused files were never used");

        // A new CA, as an operator rolls one out: trusted beside the old one first
        // (a peer not yet moved still gets in), then the new certificate with the new
        // CA alone — a peer of the old CA is refused from the next handshake on.
        issue(dir.path(), 1, &[], 30, dir.path(), true).unwrap();
        let old_peer = NodeTls::load(&files(dir.path(), 2), 2).unwrap();
        let other = tempfile::tempdir().unwrap();
        init_ca(other.path(), 30).unwrap();
        issue(other.path(), 1, &[], 30, other.path(), false).unwrap();
        let (old_ca, new_ca) = (std::fs::read(&f.ca).unwrap(), std::fs::read(ca_files(other.path()).0).unwrap());
        std::fs::write(&f.ca, [old_ca.as_slice(), new_ca.as_slice()].concat()).unwrap();
        tls.reload().unwrap();
        // One client configuration for the old peer throughout (as a node keeps one):
        // were resumption on, its ticket from now would get it in after the rotation.
        let old_peer_client = client_of(&old_peer);
        let (_, as_client) = handshake(tls.grpc_server.clone(), old_peer_client.clone()).await.unwrap();
        assert_eq!(as_client, Some(pem_cert(&files(dir.path(), 2).cert)), "the old CA's peer is let in");
        let (cert, key) = node_files(other.path(), 1);
        std::fs::copy(&cert, &f.cert).unwrap();
        std::fs::copy(key, &f.key).unwrap();
        std::fs::write(&f.ca, &new_ca).unwrap();
        tls.reload().unwrap();
        let third = pem_cert(&cert);
        let (shown, as_client) = handshake(tls.http_server.clone(), client_of(&tls)).await.unwrap();
        assert_eq!((&shown, as_client.as_ref()), (&third, Some(&third)));
        // The old peer's certificate, by a client that trusts this node: refused here.
        let f2 = files(dir.path(), 2);
        let old_identity = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(tls.current.clone())
            .with_client_auth_cert(vec![pem_cert(&f2.cert)], PrivateKeyDer::from_pem_file(&f2.key).unwrap())
            .unwrap();
        let err = handshake(tls.grpc_server.clone(), Arc::new(old_identity)).await.unwrap_err();
        assert!(err.contains("UnknownIssuer"), "{err}");
        // The old peer itself, with the configuration it connected with before.
        let err = handshake(tls.grpc_server.clone(), old_peer_client).await.unwrap_err();
        assert!(err.contains("UnknownCA") || err.contains("certificate"), "{err}");
    }

    /// A link dial over TLS to a peer that cuts the connection mid-handshake (as one
    /// restarting does) fails like any dial and is tried again at once; a peer whose
    /// TLS refuses the link protocol (an older berth) is replicated to over gRPC for
    /// `LEGACY_RETRY`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_a_refusal_in_tls_sends_a_peer_to_grpc() {
        use berth_raft::link::Dial;
        install_provider();
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path(), 30).unwrap();
        issue(dir.path(), 1, &[], 30, dir.path(), false).unwrap();
        let tls = Arc::new(NodeTls::load(&files(dir.path(), 1), 1).unwrap());
        let within = std::time::Duration::from_secs(5);

        let cutting = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let cut_addr = cutting.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = cutting.accept().await {
                // Reads the client's hello, then goes away without a word.
                let mut buf = [0u8; 64];
                let _ = tokio::io::AsyncReadExt::read(&mut tcp, &mut buf).await;
                drop(tcp);
            }
        });
        let links = tls.connections().links().clone();
        for _ in 0..2 {
            match links.open(&cut_addr, within).await {
                Some(Dial::Failed(_)) => {}
                Some(Dial::Legacy) => panic!("a connection cut mid-handshake took the peer for an older berth"),
                Some(Dial::Link(_)) => panic!("no link can open through a cut connection"),
                None => panic!("the dial did not end within {within:?}"),
            }
            assert!(!links.is_legacy(&cut_addr));
        }

        // A TLS server that offers HTTP only: no common ALPN protocol.
        let older = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let older_addr = older.local_addr().unwrap().to_string();
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.http_server.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = older.accept().await {
                let _ = acceptor.accept(tcp).await;
            }
        });
        assert!(matches!(links.open(&older_addr, within).await, Some(Dial::Legacy)));
        assert!(links.is_legacy(&older_addr));
    }
}
