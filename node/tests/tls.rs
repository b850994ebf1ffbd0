//! Mutual TLS between nodes, through the real binary: certificates from `berth ca`,
//! a 3-node cluster that forms and replicates over TLS, the HTTPS API (the CLI with
//! `--ca-cert`, and without it), log and exec proxied between nodes over TLS with the
//! node's certificate, node-only gRPC services refusing a caller without a node
//! certificate, a node of another CA and a plain-text node kept out — each refusal
//! logged with its reason — and a node refusing to start with files that are not its;
//! and a running cluster moved to a new CA by `SIGHUP`s, without a restart.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use berth_proto::berth::cluster_client::ClusterClient;
use berth_proto::berth::internal_client::InternalClient;
use berth_proto::berth::{GetClusterRequest, ProbeRequest};
use serde_json::json;
use support::{served_app, Cluster, BERTH};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

const FORM: Duration = Duration::from_secs(20);

/// Runs `berth` with `args`; panics unless it succeeds.
fn ok(args: &[&str]) -> String {
    let out = Command::new(BERTH).args(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "berth {args:?}: {err}");
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A CA in `dir` with node certificates for `ids` (valid for 127.0.0.1).
fn make_ca(dir: &Path, ids: &[u64]) {
    ok(&["ca", "init", "--dir", path(dir)]);
    for id in ids {
        ok(&["ca", "issue", "--id", &id.to_string(), "--dir", path(dir), "--host", "127.0.0.1"]);
    }
}

fn tls_flags(dir: &Path, id: u64) -> Vec<String> {
    let f = |name: String| dir.join(name).to_str().unwrap().to_string();
    vec![
        "--tls-cert".into(),
        f(format!("node-{id}.pem")),
        "--tls-key".into(),
        f(format!("node-{id}.key")),
        "--tls-ca".into(),
        f("ca.pem".into()),
    ]
}

/// A gRPC channel to `addr` over TLS trusting `ca`, with `identity` as the client
/// certificate when given.
async fn grpc(addr: &str, ca: &Path, identity: Option<(&Path, &Path)>) -> Channel {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()))
        .domain_name("node.berth");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(std::fs::read(cert).unwrap(), std::fs::read(key).unwrap()));
    }
    Endpoint::from_shared(format!("https://{addr}")).unwrap().tls_config(tls).unwrap().connect().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_speak_mutual_tls_and_keep_out_whoever_has_no_certificate_of_the_cluster() {
    berth_node::tls::install_provider();
    let certs = tempfile::tempdir().unwrap();
    let (ca_dir, rogue_dir) = (certs.path().join("ca"), certs.path().join("rogue"));
    make_ca(&ca_dir, &[1, 2, 3, 5]);
    make_ca(&rogue_dir, &[4]);
    let ca = ca_dir.join("ca.pem");

    let mut c = Cluster::start_each(3, |id| tls_flags(&ca_dir, id));
    c.http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&ca).unwrap()).unwrap())
        .tls_built_in_root_certs(false)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let leader = c.wait_leader(FORM).await;
    assert!(c.url(1).starts_with("https://"));
    c.create_pool(leader, "lan", 73).await;
    c.wait_hosts(leader, 3).await;

    // Replicated over TLS: an app runs; exec and logs are proxied over HTTPS by a node
    // that is not the instance's host (its certificate vouches for it there).
    let (s, v) = c.req(leader, reqwest::Method::PUT, "/v1/apps/web", Some(served_app("web", 1, "lan")), None).await;
    assert_eq!(s, 201, "{v}");
    let (host, inst) = c
        .eventually(Duration::from_secs(30), "web's instance running", || async {
            let (_, v) = c.get(1, "/v1/instances?app=web").await;
            let i = v.as_array()?.first()?.clone();
            (i["state"] == "running").then(|| (i["host"].as_u64().unwrap(), i["id"].as_str().unwrap().to_string()))
        })
        .await;
    let via = if host == 1 { 2 } else { 1 };
    let (s, v) = c.post(via, &format!("/v1/instances/{inst}/exec"), json!({"cmd": ["/bin/echo", "over-tls"]})).await;
    assert_eq!(s, 200, "exec via node {via} on host {host}: {v}");
    assert!(v["output"].as_str().unwrap().contains("over-tls"), "{v}");
    let logs = c.http.get(format!("{}/v1/instances/{inst}/logs?tail=5", c.url(via))).send().await.unwrap();
    assert_eq!(logs.status(), 200, "logs proxied over TLS");

    // The CLI: with the CA, it works; without, it says what to give it.
    let out = ok(&["--addr", &c.url(2), "--ca-cert", path(&ca), "cluster"]);
    assert!(out.contains(&format!("leader {leader}")), "{out}");
    let out = Command::new(BERTH).args(["--addr", &c.url(2), "cluster"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("UnknownIssuer") && err.contains("--ca-cert"), "{err}");

    // Plain HTTP to the HTTPS API gets nowhere, and the node says why.
    let plain = reqwest::Client::new().get(format!("http://127.0.0.1:{}/v1/cluster", c.nodes[&3].http)).send().await;
    assert!(plain.is_err() || plain.unwrap().status() != 200);
    c.eventually(Duration::from_secs(5), "node 3 logs the plain-text client", || async {
        c.log_of(3).contains("not TLS").then_some(())
    })
    .await;

    // gRPC: TLS without a client certificate reaches the public services (tokens are
    // their guard) but not the node-only ones; a certificate of another CA not even TLS.
    let addr = c.nodes[&1].grpc_addr();
    let ch = grpc(&addr, &ca, None).await;
    let info = ClusterClient::new(ch.clone()).get_cluster(GetClusterRequest { stale: true }).await.unwrap();
    assert_eq!(info.into_inner().members.len(), 3);
    let err = InternalClient::new(ch).probe(ProbeRequest { from: 99 }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("node_certificate_required"), "{err:?}");
    let node5 = (ca_dir.join("node-5.pem"), ca_dir.join("node-5.key"));
    let ch = grpc(&addr, &ca, Some((&node5.0, &node5.1))).await;
    let reply = InternalClient::new(ch).probe(ProbeRequest { from: 5 }).await.unwrap().into_inner();
    assert_eq!(reply.id, 1, "a node certificate of the CA passes");
    let rogue = (rogue_dir.join("node-4.pem"), rogue_dir.join("node-4.key"));
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(&ca).unwrap()))
        .identity(Identity::from_pem(std::fs::read(&rogue.0).unwrap(), std::fs::read(&rogue.1).unwrap()))
        .domain_name("node.berth");
    let ep = Endpoint::from_shared(format!("https://{addr}")).unwrap().tls_config(tls).unwrap();
    let refused = match ep.connect().await {
        Err(_) => true,
        Ok(ch) => InternalClient::new(ch).probe(ProbeRequest { from: 4 }).await.is_err(),
    };
    assert!(refused, "a certificate of another CA is refused");
    c.eventually(Duration::from_secs(5), "node 1 logs the foreign certificate", || async {
        c.log_of(1).contains("the client's certificate is not signed by this cluster's CA").then_some(())
    })
    .await;

    // Replication ran on links over TLS (no leader fell back to gRPC for a peer), and
    // a link offered without a node certificate is closed unanswered, and logged.
    for id in 1..=3 {
        let log = c.log_of(id);
        assert!(!log.contains("does not speak berth-raft links"), "node {id} fell back to gRPC: {log}");
    }
    let mut roots = rustls::RootCertStore::empty();
    use rustls_pki_types::pem::PemObject;
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&std::fs::read(&ca).unwrap()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    config.alpn_protocols = vec![berth_raft::link::ALPN.to_vec()];
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("node.berth").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)).connect(name, tcp).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(berth_raft::link::ALPN), "the node offers links");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tls.write_all(berth_raft::link::PREFACE).await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut answer)).await;
    assert!(read.is_ok() && answer.is_empty(), "closed without an answer: {read:?} {answer:?}");
    c.eventually(Duration::from_secs(5), "node 1 logs the link without a node certificate", || async {
        c.log_of(1).contains("a Raft link without a node certificate").then_some(())
    })
    .await;

    // A node of another CA, and a node without TLS, never join: both sides say why.
    c.add_node(4, &tls_flags(&rogue_dir, 4).iter().map(String::as_str).collect::<Vec<_>>());
    c.add_node(6, &[]);
    c.eventually(Duration::from_secs(10), "node 4 says the cluster refuses it", || async {
        c.log_of(4).contains("TLS: the peer refuses this node").then_some(())
    })
    .await;
    let log4 = c.log_of(4);
    assert!(log4.contains("UnknownIssuer"), "{log4}");
    c.eventually(Duration::from_secs(10), "a member logs the plain-text node", || async {
        [1, 2, 3].iter().any(|id| c.log_of(*id).contains("what=\"gRPC\" reason=\"not TLS")).then_some(())
    })
    .await;
    let (_, cluster) = c.get(leader, "/v1/cluster").await;
    let ids: Vec<u64> = cluster["members"].as_array().unwrap().iter().map(|m| m["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, [1, 2, 3], "{cluster}");
    let (_, hosts) = c.get(leader, "/v1/hosts").await;
    assert_eq!(hosts.as_array().unwrap().len(), 3, "{hosts}");

    // Files that are not the node's: it exits at once naming the file and the fault.
    let start = |id: &str, flags: Vec<String>| {
        let dir = certs.path().join(format!("data-{id}-{}", flags.len()));
        let out = Command::new(BERTH)
            .args(["agent", "--id", id])
            .args(["--listen", &format!("127.0.0.1:{}", support::free_port())])
            .args(["--http", &format!("127.0.0.1:{}", support::free_port())])
            .args(["--peers", &format!("{id}=127.0.0.1:1")])
            .arg("--data-dir")
            .arg(&dir)
            .args(flags)
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    let (code, err) = start("2", tls_flags(&ca_dir, 1));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("node-1.pem is for [\"node-1.berth\"], not this node (node-2.berth)"), "{err}");
    let mut mixed = tls_flags(&rogue_dir, 4);
    mixed[5] = path(&ca).to_string();
    let (code, err) = start("4", mixed);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("is not a node certificate of the CA") && err.contains("UnknownIssuer"), "{err}");
    let (code, err) = start("1", tls_flags(&ca_dir, 1)[..2].to_vec());
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("missing --tls-key, --tls-ca"), "{err}");
}

/// An HTTPS client trusting only `cas`, with no connection from before.
fn client_trusting(cas: &[&[u8]]) -> reqwest::Client {
    let mut b = reqwest::Client::builder().tls_built_in_root_certs(false).timeout(Duration::from_secs(30));
    for pem in cas {
        b = b.add_root_certificate(reqwest::Certificate::from_pem(pem).unwrap());
    }
    b.build().unwrap()
}

/// How often node `id` has logged `what`.
fn logged(c: &Cluster, id: u64, what: &str) -> usize {
    c.log_of(id).matches(what).count()
}

/// An operator's CA rotation on a running cluster, each step a file change and a
/// `SIGHUP` per node: the new CA trusted beside the old, then new certificates, then
/// the new CA alone — no node refuses another on the way. Every new connection uses the new files (a client trusting only the
/// new CA reaches each node, writes commit, a node restarted with its new files is let
/// back in by peers that never restarted); a certificate of the old CA is refused
/// from then on; files that fail a check are refused with the reason, and the node
/// serves on with the ones it has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_cluster_moves_to_a_new_ca_by_sighup() {
    berth_node::tls::install_provider();
    let certs = tempfile::tempdir().unwrap();
    let (ca_dir, new_dir) = (certs.path().join("ca"), certs.path().join("new"));
    make_ca(&ca_dir, &[1, 2, 3, 5]);
    make_ca(&new_dir, &[1, 2, 3]);
    let ca = ca_dir.join("ca.pem");
    let (old_pem, new_pem) = (std::fs::read(&ca).unwrap(), std::fs::read(new_dir.join("ca.pem")).unwrap());
    let mut c = Cluster::start_each(3, |id| tls_flags(&ca_dir, id));
    c.http = client_trusting(&[&old_pem, &new_pem]);
    let leader = c.wait_leader(FORM).await;
    c.create_pool(leader, "lan", 74).await;
    // A TLS node's metrics before any reload: both reload series at 0, the expiry ahead.
    let r = c.http.get(format!("{}/metrics", c.url(1))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    for result in ["ok", "refused"] {
        assert!(text.contains(&format!("berth_tls_reloads_total{{result=\"{result}\"}} 0")), "{text}");
    }
    let expiry: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("berth_tls_certificate_expiry_timestamp_seconds "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no expiry in {text}"));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!(expiry > now + 30.0 * 86_400.0, "{expiry} vs {now}");
    const RELOADED: &str = "SIGHUP: TLS files reloaded";
    let hangup_all = |c: &Cluster| {
        for id in 1..=3 {
            c.hangup(id);
        }
    };
    let reloaded = |times: usize| {
        let c = &c;
        async move {
            c.eventually(Duration::from_secs(10), "every node reloaded", || async {
                (1..=3).all(|id| logged(c, id, RELOADED) == times).then_some(())
            })
            .await
        }
    };

    // The three steps of docs/operations.md: both CAs trusted, the new certificates,
    // the new CA alone.
    std::fs::write(&ca, [old_pem.as_slice(), new_pem.as_slice()].concat()).unwrap();
    hangup_all(&c);
    reloaded(1).await;
    for id in 1..=3 {
        for ext in ["pem", "key"] {
            let name = format!("node-{id}.{ext}");
            std::fs::copy(new_dir.join(&name), ca_dir.join(&name)).unwrap();
        }
    }
    hangup_all(&c);
    reloaded(2).await;
    std::fs::write(&ca, &new_pem).unwrap();
    hangup_all(&c);
    reloaded(3).await;
    for id in 1..=3 {
        let log = c.log_of(id);
        assert!(!log.contains("connection refused (TLS)"), "no node refused another during the move: {log}");
    }

    // New connections: only the new CA is needed to reach each node, and writes commit.
    let fresh = client_trusting(&[&new_pem]);
    for id in 1..=3 {
        let r = fresh.get(format!("{}/v1/cluster", c.url(id))).send().await;
        assert_eq!(r.map(|r| r.status().as_u16()).map_err(|e| format!("{e:?}")), Ok(200), "node {id}");
    }
    let leader_url = c.url(leader);
    let allocate = |owner: &'static str| {
        let (fresh, url) = (fresh.clone(), leader_url.clone());
        async move {
            let r = fresh.post(format!("{url}/v1/ipam/pools/lan/allocations")).json(&json!({"owner": owner}));
            r.send().await.unwrap().status().as_u16()
        }
    };
    assert_eq!(allocate("after-rotation").await, 201);
    let text = fresh.get(format!("{}/metrics", c.url(1))).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("berth_tls_reloads_total{result=\"ok\"} 3"), "{text}");
    assert!(text.contains("berth_tls_certificate_expiry_timestamp_seconds "), "{text}");

    // A node certificate of the old CA no longer reaches the node-only services.
    let old5 = (ca_dir.join("node-5.pem"), ca_dir.join("node-5.key"));
    let ep = Endpoint::from_shared(format!("https://{}", c.nodes[&1].grpc_addr())).unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&new_pem))
        .identity(Identity::from_pem(std::fs::read(&old5.0).unwrap(), std::fs::read(&old5.1).unwrap()))
        .domain_name("node.berth");
    let refused = match ep.tls_config(tls).unwrap().connect().await {
        Err(_) => true,
        Ok(ch) => InternalClient::new(ch).probe(ProbeRequest { from: 5 }).await.is_err(),
    };
    assert!(refused, "a certificate of the old CA is refused after the rotation");
    c.eventually(Duration::from_secs(5), "node 1 says why it refused the old CA's certificate", || async {
        c.log_of(1).contains("the client's certificate is not signed by this cluster's CA").then_some(())
    })
    .await;

    // A node restarted on its new files is let back in by peers that only reloaded,
    // and catches up.
    let follower = if leader == 2 { 3 } else { 2 };
    c.kill(follower);
    assert_eq!(allocate("while-down").await, 201);
    c.spawn(follower);
    c.eventually(Duration::from_secs(30), "the restarted node has both allocations", || async {
        let r = fresh.get(format!("{}/v1/ipam/pools/lan/allocations", c.url(follower))).send().await.ok()?;
        let v: serde_json::Value = r.json().await.ok()?;
        (v.as_array()?.len() == 2).then_some(())
    })
    .await;

    // Files that fail a check: refused with the reason, the node serves on.
    let other = if follower == 3 { 2 } else { 3 };
    std::fs::write(ca_dir.join(format!("node-{other}.pem")), "garbage").unwrap();
    c.hangup(other);
    c.eventually(Duration::from_secs(10), "the refusal is logged", || async {
        c.log_of(other).contains("SIGHUP: TLS files refused").then_some(())
    })
    .await;
    let log = c.log_of(other);
    assert!(log.contains("--tls-cert") && log.contains("no PEM certificate"), "{log}");
    let r = client_trusting(&[&new_pem]).get(format!("{}/v1/cluster", c.url(other))).send().await.unwrap();
    assert_eq!(r.status(), 200, "node {other} serves on with the files it had");
}
