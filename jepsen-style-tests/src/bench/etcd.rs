//! etcd, the anchor of the `ipam` and `failover` scenarios: a cluster of `etcd`
//! processes on loopback (Debian's `etcd-server`, default durability and timeouts) and
//! a small client for the parts of its v3 gRPC API the benchmarks use.
//!
//! The messages below are written by hand against etcd's public wire format (package
//! `etcdserverpb`; only the fields used here), so building the harness needs no `protoc`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;

use super::free_port;

/// The `etcd` binary: `$ETCD_BIN`, or `etcd` on the PATH.
pub fn binary() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("ETCD_BIN") {
        return Ok(PathBuf::from(p));
    }
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = PathBuf::from(dir).join("etcd");
        if p.exists() {
            return Ok(p);
        }
    }
    bail!("no etcd binary on the PATH: install Debian's etcd-server (apt-get install etcd-server) or set ETCD_BIN")
}

struct Member {
    name: String,
    client_url: String,
    peer_url: String,
    child: Option<Child>,
}

/// A cluster of etcd members on loopback, each with its own data dir.
pub struct EtcdCluster {
    binary: PathBuf,
    dir: tempfile::TempDir,
    members: BTreeMap<u64, Member>,
    initial: String,
    /// `GOMAXPROCS` of every member (none: Go's default, one per CPU).
    gomaxprocs: Option<usize>,
}

impl EtcdCluster {
    /// Starts `n` members (ids 1..=n) as shipped and waits until one is leader.
    pub async fn start(n: u64) -> Result<EtcdCluster> {
        Self::start_with(n, None).await
    }

    /// Starts `n` members that share this host's CPUs as berth's nodes do
    /// (`GOMAXPROCS` = CPUs / members, at least 1: `berth_node::worker_share`).
    pub async fn start_shared(n: u64) -> Result<EtcdCluster> {
        Self::start_with(n, Some(berth_node::worker_share(n))).await
    }

    async fn start_with(n: u64, gomaxprocs: Option<usize>) -> Result<EtcdCluster> {
        let binary = binary()?;
        let dir = tempfile::tempdir()?;
        let mut members = BTreeMap::new();
        for id in 1..=n {
            members.insert(
                id,
                Member {
                    name: format!("e{id}"),
                    client_url: format!("http://127.0.0.1:{}", free_port()?),
                    peer_url: format!("http://127.0.0.1:{}", free_port()?),
                    child: None,
                },
            );
        }
        let initial = members.values().map(|m| format!("{}={}", m.name, m.peer_url)).collect::<Vec<_>>().join(",");
        let mut c = EtcdCluster { binary, dir, members, initial, gomaxprocs };
        for id in 1..=n {
            c.spawn(id)?;
        }
        c.leader(Duration::from_secs(30)).await?;
        Ok(c)
    }

    /// Starts (or restarts, from its data dir) member `id`.
    pub fn spawn(&mut self, id: u64) -> Result<()> {
        let m = self.members.get_mut(&id).context("no such etcd member")?;
        let data = self.dir.path().join(&m.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{}.log", m.name)))?;
        let mut cmd = Command::new(&self.binary);
        if let Some(g) = self.gomaxprocs {
            cmd.env("GOMAXPROCS", g.to_string());
        }
        let child = cmd
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &m.client_url, "--advertise-client-urls", &m.client_url])
            .args(["--listen-peer-urls", &m.peer_url, "--initial-advertise-peer-urls", &m.peer_url])
            .args(["--initial-cluster", &self.initial, "--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "berth-bench", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", self.binary.display()))?;
        m.child = Some(child);
        Ok(())
    }

    /// SIGKILL of member `id`.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut c) = self.members.get_mut(&id).and_then(|m| m.child.take()) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn ids(&self) -> Vec<u64> {
        self.members.keys().copied().collect()
    }

    pub fn pids(&self) -> Vec<u32> {
        self.members.values().filter_map(|m| m.child.as_ref().map(|c| c.id())).collect()
    }

    pub fn endpoint(&self, id: u64) -> String {
        self.members[&id].client_url.clone()
    }

    /// A client of member `id` only (no balancing: the benchmarks pick the member).
    pub async fn client(&self, id: u64) -> Result<Etcd> {
        Etcd::connect(&self.endpoint(id)).await
    }

    /// The member that is leader, as seen by the running members, waiting up to `within`.
    pub async fn leader(&self, within: Duration) -> Result<u64> {
        let deadline = Instant::now() + within;
        loop {
            for (id, m) in &self.members {
                if m.child.is_none() {
                    continue;
                }
                let Ok(mut c) = Etcd::connect(&m.client_url).await else { continue };
                let Ok(Ok(s)) = tokio::time::timeout(Duration::from_millis(500), c.status()).await else { continue };
                if s.leader != 0 && s.header.as_ref().is_some_and(|h| h.member_id == s.leader) {
                    return Ok(*id);
                }
            }
            if Instant::now() > deadline {
                bail!("no etcd leader within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for id in self.ids() {
            self.kill(id);
        }
    }
}

/// The etcd v3 messages the benchmarks use (field numbers of etcd's `rpc.proto`).
pub mod pb {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ResponseHeader {
        #[prost(uint64, tag = "1")]
        pub cluster_id: u64,
        #[prost(uint64, tag = "2")]
        pub member_id: u64,
        #[prost(int64, tag = "3")]
        pub revision: i64,
        #[prost(uint64, tag = "4")]
        pub raft_term: u64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct KeyValue {
        #[prost(bytes = "vec", tag = "1")]
        pub key: Vec<u8>,
        #[prost(int64, tag = "2")]
        pub create_revision: i64,
        #[prost(int64, tag = "3")]
        pub mod_revision: i64,
        #[prost(bytes = "vec", tag = "5")]
        pub value: Vec<u8>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RangeRequest {
        #[prost(bytes = "vec", tag = "1")]
        pub key: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub range_end: Vec<u8>,
        #[prost(int64, tag = "3")]
        pub limit: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RangeResponse {
        #[prost(message, optional, tag = "1")]
        pub header: Option<ResponseHeader>,
        #[prost(message, repeated, tag = "2")]
        pub kvs: Vec<KeyValue>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PutRequest {
        #[prost(bytes = "vec", tag = "1")]
        pub key: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub value: Vec<u8>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PutResponse {
        #[prost(message, optional, tag = "1")]
        pub header: Option<ResponseHeader>,
    }

    /// `Compare.CompareTarget.CREATE`
    pub const TARGET_CREATE: i32 = 1;
    /// `Compare.CompareResult.EQUAL`
    pub const RESULT_EQUAL: i32 = 0;

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Compare {
        #[prost(int32, tag = "1")]
        pub result: i32,
        #[prost(int32, tag = "2")]
        pub target: i32,
        #[prost(bytes = "vec", tag = "3")]
        pub key: Vec<u8>,
        #[prost(oneof = "TargetUnion", tags = "4, 5, 6")]
        pub target_union: Option<TargetUnion>,
    }

    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum TargetUnion {
        #[prost(int64, tag = "4")]
        Version(i64),
        #[prost(int64, tag = "5")]
        CreateRevision(i64),
        #[prost(int64, tag = "6")]
        ModRevision(i64),
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RequestOp {
        #[prost(oneof = "Request", tags = "1, 2")]
        pub request: Option<Request>,
    }

    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Request {
        #[prost(message, tag = "1")]
        Range(RangeRequest),
        #[prost(message, tag = "2")]
        Put(PutRequest),
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ResponseOp {
        #[prost(oneof = "Response", tags = "1, 2")]
        pub response: Option<Response>,
    }

    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Response {
        #[prost(message, tag = "1")]
        Range(RangeResponse),
        #[prost(message, tag = "2")]
        Put(PutResponse),
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TxnRequest {
        #[prost(message, repeated, tag = "1")]
        pub compare: Vec<Compare>,
        #[prost(message, repeated, tag = "2")]
        pub success: Vec<RequestOp>,
        #[prost(message, repeated, tag = "3")]
        pub failure: Vec<RequestOp>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TxnResponse {
        #[prost(message, optional, tag = "1")]
        pub header: Option<ResponseHeader>,
        #[prost(bool, tag = "2")]
        pub succeeded: bool,
        #[prost(message, repeated, tag = "3")]
        pub responses: Vec<ResponseOp>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StatusRequest {}

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StatusResponse {
        #[prost(message, optional, tag = "1")]
        pub header: Option<ResponseHeader>,
        #[prost(string, tag = "2")]
        pub version: String,
        #[prost(uint64, tag = "4")]
        pub leader: u64,
        #[prost(uint64, tag = "6")]
        pub raft_term: u64,
    }
}

/// A client of one etcd member.
#[derive(Clone)]
pub struct Etcd {
    grpc: tonic::client::Grpc<Channel>,
}

impl Etcd {
    pub async fn connect(url: &str) -> Result<Etcd> {
        let channel = Channel::from_shared(url.to_string())?.connect_timeout(Duration::from_secs(1)).connect().await?;
        Ok(Etcd { grpc: tonic::client::Grpc::new(channel) })
    }

    async fn call<Q, R>(&mut self, path: &'static str, req: Q) -> Result<R, tonic::Status>
    where
        Q: prost::Message + Send + Sync + 'static,
        R: prost::Message + Default + Send + Sync + 'static,
    {
        self.grpc.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let codec = tonic_prost::ProstCodec::<Q, R>::default();
        Ok(self.grpc.unary(tonic::Request::new(req), PathAndQuery::from_static(path), codec).await?.into_inner())
    }

    /// Linearizable read of one key.
    pub async fn get(&mut self, key: &[u8]) -> Result<Option<pb::KeyValue>, tonic::Status> {
        let req = pb::RangeRequest { key: key.to_vec(), ..Default::default() };
        let r: pb::RangeResponse = self.call("/etcdserverpb.KV/Range", req).await?;
        Ok(r.kvs.into_iter().next())
    }

    pub async fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), tonic::Status> {
        let req = pb::PutRequest { key: key.to_vec(), value: value.to_vec() };
        let _: pb::PutResponse = self.call("/etcdserverpb.KV/Put", req).await?;
        Ok(())
    }

    pub async fn txn(&mut self, req: pb::TxnRequest) -> Result<pb::TxnResponse, tonic::Status> {
        self.call("/etcdserverpb.KV/Txn", req).await
    }

    pub async fn status(&mut self) -> Result<pb::StatusResponse, tonic::Status> {
        self.call("/etcdserverpb.Maintenance/Status", pb::StatusRequest {}).await
    }
}
