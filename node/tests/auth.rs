//! API tokens and the rate limit, through the real binary: a 3-node cluster, the CLI
//! (`berth token`, `--token`, `BERTH_TOKEN`), raw HTTP on every node, Marathon's
//! `Authorization: token=`, gRPC metadata, the exec proxy passing the caller's token
//! on, revocation reaching every node, secrets never written to disk, and a node with
//! `--require-token-for-reads --rate-limit`.

mod support;

use std::process::Command;
use std::time::Duration;

use berth_proto::berth::ipam_client::IpamClient;
use berth_proto::berth::{AllocateRequest, CreatePoolRequest};
use reqwest::Method;
use serde_json::{json, Value};
use sha2::Digest;
use support::{berth, served_app, Cluster, BERTH};

const FORM: Duration = Duration::from_secs(20);

/// `method path` on node `id` with `auth` as the Authorization header: (status, body,
/// the WWW-Authenticate and Retry-After headers).
async fn call(
    c: &Cluster,
    id: u64,
    method: Method,
    path: &str,
    body: Option<Value>,
    auth: Option<&str>,
) -> (u16, Value, Option<String>, Option<String>) {
    let mut r = c.http.request(method, format!("{}{}", c.url(id), path));
    if let Some(b) = body {
        r = r.json(&b);
    }
    if let Some(a) = auth {
        r = r.header("authorization", a);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    let header = |n: &str| resp.headers().get(n).map(|v| v.to_str().unwrap().to_string());
    let (www, retry) = (header("www-authenticate"), header("retry-after"));
    let v = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap_or(Value::Null);
    (status, v, www, retry)
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

/// Every file under `dir`, read whole.
fn files(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else if let Ok(b) = std::fs::read(&p) {
            out.push((p, b));
        }
    }
    out
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_guard_writes_on_every_node_and_every_api() {
    let c = Cluster::start_each(3, |id| {
        if id == 3 {
            vec!["--require-token-for-reads".into(), "--rate-limit".into(), "20".into()]
        } else {
            vec![]
        }
    });
    let leader = c.wait_leader(FORM).await;
    c.create_pool(leader, "lan", 71).await;
    c.wait_hosts(leader, 3).await;
    let (u1, u2) = (c.url(1), c.url(2));

    // Open until the first token: anyone writes, and the first token must be admin.
    let (s, _, _, _) = call(&c, 2, Method::PUT, "/v1/registers/open", Some(json!({"value": 1})), None).await;
    assert_eq!(s, 200, "no token exists: the API is open");
    let (code, _, err) = berth(&u2, &["token", "create", "--role", "deploy"]);
    assert_eq!(code, 1);
    assert!(err.contains("first_token_must_be_admin"), "{err}");
    let (code, admin, err) = berth(&u2, &["token", "create", "--role", "admin", "--name", "ops", "-q"]);
    assert_eq!(code, 0, "{err}");
    let admin = admin.trim().to_string();
    assert!(admin.starts_with("berth_"), "{admin}");

    // The new token works at once on another node.
    let (s, list, _, _) = call(&c, 1, Method::GET, "/v1/tokens", None, Some(&bearer(&admin))).await;
    assert_eq!(s, 200, "{list}");
    assert_eq!(list[0]["name"], "ops");
    assert_eq!(list[0]["role"], "admin");
    assert!(list[0].get("token").is_none() && !list.to_string().contains(&admin[20..]), "no secret in lists");

    // Writes now need a token, on every node; reads stay open (nodes 1 and 2).
    for id in [1, 2] {
        let (s, v, www, _) = call(&c, id, Method::PUT, "/v1/registers/x", Some(json!({"value": 1})), None).await;
        assert_eq!((s, v["error"]["code"].as_str()), (401, Some("unauthenticated")), "{v}");
        assert_eq!(www.as_deref(), Some("Bearer realm=\"berth\""));
        let (s, _, _, _) = call(&c, id, Method::GET, "/v1/apps", None, None).await;
        assert_eq!(s, 200);
    }
    let (code, _, err) = berth(&u1, &["scale", "nope", "2"]);
    assert_eq!(code, 1);
    assert!(err.contains("unauthenticated"), "the CLI names the refusal: {err}");

    // Admin makes deploy and read-only tokens (BERTH_TOKEN, JSON output).
    let make = |role: &str| {
        let out = Command::new(BERTH)
            .args(["--addr", &u1, "token", "create", "--role", role, "-o", "json"])
            .env("BERTH_TOKEN", &admin)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["role"], role);
        (v["id"].as_str().unwrap().to_string(), v["token"].as_str().unwrap().to_string())
    };
    let (deploy_id, deploy) = make("deploy");
    let (_, reader) = make("read-only");

    // deploy: apps, instances; not tokens, pools or hosts.
    let app = served_app("web", 1, "lan");
    let (s, v, _, _) = call(&c, 2, Method::PUT, "/v1/apps/web", Some(app), Some(&bearer(&deploy))).await;
    assert_eq!(s, 201, "{v}");
    for (m, p, b) in [
        (Method::POST, "/v1/tokens", json!({"role": "read-only"})),
        (Method::POST, "/v1/ipam/pools", json!({"name": "x", "subnet": "10.9.0.0/24"})),
        (Method::POST, "/v1/hosts/1/drain", json!(null)),
    ] {
        let (s, v, _, _) = call(&c, 1, m, p, Some(b), Some(&bearer(&deploy))).await;
        assert_eq!((s, v["error"]["code"].as_str()), (403, Some("forbidden")), "{p}: {v}");
        assert!(v["error"]["message"].as_str().unwrap().contains("needs admin"), "{v}");
    }
    // read-only reads, never writes.
    let (s, v, _, _) =
        call(&c, 1, Method::PUT, "/v1/registers/x", Some(json!({"value": 2})), Some(&bearer(&reader))).await;
    assert_eq!((s, v["error"]["code"].as_str()), (403, Some("forbidden")), "{v}");
    let (s, me, _, _) = call(&c, 1, Method::GET, "/v1/tokens/self", None, Some(&bearer(&reader))).await;
    assert_eq!((s, me["role"].as_str()), (200, Some("read-only")), "{me}");
    // A wrong secret, a malformed token: 401 invalid_token, even for a read.
    let forged = format!("{}{}", &deploy[..deploy.len() - 1], if deploy.ends_with('0') { '1' } else { '0' });
    for bad in [bearer(&forged), bearer("berth_nonsense"), "Digest x".to_string()] {
        let (s, v, _, _) = call(&c, 2, Method::GET, "/v1/apps", None, Some(&bad)).await;
        assert_eq!((s, v["error"]["code"].as_str()), (401, Some("invalid_token")), "{bad}: {v}");
    }

    // Marathon clients send `Authorization: token=…` and get Marathon's error shape.
    let mapp = json!({"id": "/m", "cmd": "sleep 1000", "instances": 0, "cpus": 0.01, "mem": 16});
    let (s, v, _, _) = call(&c, 1, Method::POST, "/v2/apps", Some(mapp.clone()), None).await;
    assert_eq!(s, 401);
    assert!(v["message"].as_str().unwrap().contains("API tokens"), "{v}");
    let (s, v, _, _) = call(&c, 1, Method::POST, "/v2/apps", Some(mapp), Some(&format!("token={deploy}"))).await;
    assert_eq!(s, 201, "{v}");

    // gRPC: the token in `authorization` metadata.
    let grpc = format!("http://{}", c.nodes[&2].grpc_addr());
    let mut ipam = IpamClient::connect(grpc).await.unwrap();
    let alloc =
        || AllocateRequest { pool: "lan".into(), owner: "grpc".into(), ip: String::new(), request_id: String::new() };
    let err = ipam.allocate(alloc()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    let mut with = tonic::Request::new(alloc());
    with.metadata_mut().insert("authorization", bearer(&deploy).parse().unwrap());
    assert!(ipam.allocate(with).await.is_ok());
    let mut pool = tonic::Request::new(CreatePoolRequest {
        name: "g".into(),
        subnet: "10.8.0.0/24".into(),
        gateway: String::new(),
        range: String::new(),
        request_id: String::new(),
    });
    pool.metadata_mut().insert("authorization", bearer(&deploy).parse().unwrap());
    assert_eq!(ipam.create_pool(pool).await.unwrap_err().code(), tonic::Code::PermissionDenied);

    // exec through a node that is not the instance's host: the token goes along.
    let (host, inst) = c
        .eventually(Duration::from_secs(30), "web's instance running", || async {
            let (_, v, _, _) = call(&c, 1, Method::GET, "/v1/instances?app=web", None, None).await;
            let i = v.as_array()?.first()?.clone();
            (i["state"] == "running").then(|| (i["host"].as_u64().unwrap(), i["id"].as_str().unwrap().to_string()))
        })
        .await;
    let via = if host == 1 { 2 } else { 1 };
    let exec = json!({"cmd": ["/bin/echo", "hi"]});
    let path = format!("/v1/instances/{inst}/exec");
    let (s, v, _, _) = call(&c, via, Method::POST, &path, Some(exec.clone()), Some(&bearer(&deploy))).await;
    assert_eq!(s, 200, "exec via node {via} on host {host}: {v}");
    assert!(v["output"].as_str().unwrap().contains("hi"), "{v}");
    let (s, _, _, _) = call(&c, via, Method::POST, &path, Some(exec), Some(&bearer(&reader))).await;
    assert_eq!(s, 403);

    // The node with --require-token-for-reads: reads need a token; probes never do.
    let (s, v, _, _) = call(&c, 3, Method::GET, "/v1/apps", None, None).await;
    assert_eq!((s, v["error"]["code"].as_str()), (401, Some("unauthenticated")), "{v}");
    let (s, _, _, _) = call(&c, 3, Method::GET, "/v1/apps", None, Some(&bearer(&reader))).await;
    assert_eq!(s, 200);
    for p in ["/healthz", "/metrics", "/ui/", "/v1/openapi.json"] {
        let (s, _, _, _) = call(&c, 3, Method::GET, p, None, None).await;
        assert_eq!(s, 200, "{p} stays open");
    }
    // … and its rate limit: 20/s with bursts of 40, per token.
    let mut limited = None;
    for _ in 0..100 {
        let (s, v, _, retry) = call(&c, 3, Method::GET, "/v1/apps?stale", None, Some(&bearer(&reader))).await;
        if s == 429 {
            limited = Some((v, retry));
            break;
        }
        assert_eq!(s, 200, "{v}");
    }
    let (v, retry) = limited.expect("100 requests at once exceed a burst of 40");
    assert_eq!(v["error"]["code"], "rate_limited", "{v}");
    assert_eq!(retry.as_deref(), Some("1"));
    let (s, _, _, _) = call(&c, 3, Method::GET, "/healthz", None, None).await;
    assert_eq!(s, 200, "probes are not limited");
    let (s, _, _, _) = call(&c, 3, Method::GET, "/v1/apps?stale", None, Some(&bearer(&deploy))).await;
    assert_eq!(s, 200, "another token has its own bucket");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (s, _, _, _) = call(&c, 3, Method::GET, "/v1/apps?stale", None, Some(&bearer(&reader))).await;
    assert_eq!(s, 200, "the bucket refills");
    let metrics = c.http.get(format!("{}/metrics", c.url(3))).send().await.unwrap().text().await.unwrap();
    assert!(metrics.lines().any(|l| l.starts_with("berth_rate_limited_total ") && !l.ends_with(" 0")), "{metrics}");

    // Revoke the deploy token (CLI, by id): refused on every node soon after.
    let out =
        Command::new(BERTH).args(["--addr", &u2, "token", "revoke", &deploy_id]).env("BERTH_TOKEN", &admin).output();
    assert!(out.unwrap().status.success());
    for id in [1, 2, 3] {
        c.eventually(Duration::from_secs(5), "the revocation applied", || async {
            let (s, _, _, _) =
                call(&c, id, Method::PUT, "/v1/registers/x", Some(json!({"value": 3})), Some(&bearer(&deploy))).await;
            (s == 401).then_some(())
        })
        .await;
    }
    // The last admin token stays while other tokens exist.
    let (code, _, err) = {
        let id = admin.split('_').nth(1).unwrap();
        let out = Command::new(BERTH).args(["--addr", &u1, "token", "revoke", id]).env("BERTH_TOKEN", &admin).output();
        let out = out.unwrap();
        (out.status.code(), (), String::from_utf8_lossy(&out.stderr).to_string())
    };
    assert_eq!(code, Some(1));
    assert!(err.contains("last_admin_token"), "{err}");

    // Only hashes reach the disk: no secret in any node's data dir (log, snapshots).
    for id in [1, 2, 3] {
        let (s, v, _, _) = call(&c, id, Method::POST, "/v1/cluster/snapshot", None, Some(&bearer(&admin))).await;
        assert_eq!(s, 200, "{v}");
        let all = files(&c.data_dir(id));
        // What is there instead: the hash (so the search below does look where tokens are).
        let hash = sha2::Sha256::digest(admin.rsplit('_').next().unwrap().as_bytes());
        let hash: String = hash.iter().map(|b| format!("{b:02x}")).collect();
        assert!(all.iter().any(|(_, b)| contains(b, &hash)), "node {id}: the admin token's hash is not on disk");
        for (secret, what) in [(&admin, "admin"), (&deploy, "deploy"), (&reader, "read-only")] {
            let s = secret.rsplit('_').next().unwrap();
            assert!(!all.iter().any(|(_, b)| contains(b, s)), "node {id}: the {what} secret is on disk");
        }
    }
}
