//! The Consul feed (`--consul-listen`) against its consumers: `python-consul` from PyPI
//! (`tests/consul_client.py`: KV keys, values, `?keys`, 404s, health, catalog, a
//! blocking query woken by a scale), and the exact exchange nginx-upsync-module has
//! with Consul (HTTP/1.0, `?recurse&index=N`, a case-sensitive `X-Consul-Index`, the
//! body up to the close), sent by hand since the module cannot be built here.
//!
//! python-consul comes from `BERTH_PYTHON` (default `python3`); CI installs it. Without
//! it that part says so and is skipped, unless `BERTH_REQUIRE_CLIENTS=1`.

mod support;

use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use support::{free_port, has_python_module, python, served_app, Cluster};

/// One request as nginx-upsync-module sends it; (status line, header block, body).
fn upsync_get(addr: &str, path: &str, index: u64) -> (String, String, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let host = addr.split(':').next().unwrap();
    write!(s, "GET {path}?recurse&index={index} HTTP/1.0\r\nHost: {host}\r\nAccept: */*\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    // The module reads until the server closes.
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a header block");
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status.to_string(), headers.to_string(), body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_clients_and_nginx_upsync_read_an_apps_upstreams() {
    let consul_port = free_port();
    let c = Cluster::start_each(3, |id| {
        if id == 1 {
            vec!["--consul-listen".into(), format!("127.0.0.1:{consul_port}")]
        } else {
            vec![]
        }
    });
    let addr = format!("127.0.0.1:{consul_port}");
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    c.create_pool(leader, "lan", 79).await;
    let spec = served_app("web", 2, "lan");
    let (s, v) = c.req(2, reqwest::Method::PUT, "/v1/apps/web", Some(spec), None).await;
    assert_eq!(s, 201, "{v}");
    c.eventually(Duration::from_secs(30), "2 healthy instances", || async {
        let (_, list) = c.get(1, "/v1/instances?app=web").await;
        let healthy = list.as_array()?.iter().filter(|i| i["health"] == "healthy").count();
        (healthy == 2).then_some(())
    })
    .await;

    // nginx-upsync-module's exchange, byte for byte as it parses it.
    let a = addr.clone();
    let (status, headers, body) =
        tokio::task::spawn_blocking(move || upsync_get(&a, "/v1/kv/upstreams/web", 0)).await.unwrap();
    assert!(status.ends_with(" 200 OK"), "the module checks the reason phrase: {status}");
    let index_line = headers.lines().find(|l| l.starts_with("X-Consul-Index: ")).unwrap_or_else(|| {
        panic!("no X-Consul-Index header in exactly that case (the module compares case-sensitively):\n{headers}")
    });
    let index: u64 = index_line["X-Consul-Index: ".len()..].trim().parse().unwrap();
    assert!(index >= 1, "0 would read as 'unchanged' to the module");
    assert!(headers.lines().any(|l| l.starts_with("Content-Length: ")), "a length, not chunks:\n{headers}");
    assert!(!headers.to_ascii_lowercase().contains("transfer-encoding"), "{headers}");
    assert!(headers.lines().count() <= 10, "the module has room for 20 headers: {headers}");
    let entries: Vec<Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(entries.len(), 2, "{body}");
    for e in &entries {
        let key = e["Key"].as_str().unwrap();
        let server = key.rsplit('/').next().unwrap();
        let (ip, port) = server.split_once(':').expect("the last key part is IP:port");
        assert!(ip.parse::<std::net::Ipv4Addr>().is_ok() && port == "8080", "{key}");
        assert!(key.starts_with("upstreams/web/"), "{key}");
        assert!(e["Value"].is_string(), "a base64 value: {e}");
    }
    // The same index again: the request is held (the module waits for a change).
    let a = addr.clone();
    let held = tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        let r = upsync_get(&a, "/v1/kv/upstreams/web", index);
        (started.elapsed(), r)
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!held.is_finished(), "a blocking query at the current index returned at once");
    let (s, v) = c.post(3, "/v1/apps/web/scale", json!({"instances": 1})).await;
    assert_eq!(s, 200, "{v}");
    let (took, (status, headers, body)) = held.await.unwrap();
    assert!(took < Duration::from_secs(20), "held for {took:?}");
    assert!(status.ends_with(" 200 OK"), "{status}");
    let later: u64 = headers.lines().find_map(|l| l.strip_prefix("X-Consul-Index: ")).unwrap().trim().parse().unwrap();
    assert!(later > index, "a new index: {later} after {index}");
    let _: Vec<Value> = serde_json::from_str(&body).unwrap();
    let (s, v) = c.post(3, "/v1/apps/web/scale", json!({"instances": 2})).await;
    assert_eq!(s, 200, "{v}");
    c.eventually(Duration::from_secs(30), "2 healthy instances again", || async {
        let (_, list) = c.get(1, "/v1/instances?app=web").await;
        let healthy = list.as_array()?.iter().filter(|i| i["health"] == "healthy" && i["state"] == "running").count();
        (healthy == 2 && list.as_array()?.len() == 2).then_some(())
    })
    .await;

    // An unknown app: 404 with an index (the module keeps its servers, as with Consul).
    let a = addr.clone();
    let (status, headers, _) =
        tokio::task::spawn_blocking(move || upsync_get(&a, "/v1/kv/upstreams/nope", 0)).await.unwrap();
    assert!(status.contains(" 404 "), "{status}");
    assert!(headers.contains("X-Consul-Index: "), "{headers}");

    if has_python_module("consul") {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/consul_client.py");
        let berth = c.url(2);
        let port = consul_port.to_string();
        let out = tokio::task::spawn_blocking(move || {
            Command::new(python()).args([script, "127.0.0.1", &port, &berth]).output().expect("run python-consul")
        })
        .await
        .unwrap();
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && said.contains("all checks passed"), "python-consul failed:\n{said}");
    }
}
