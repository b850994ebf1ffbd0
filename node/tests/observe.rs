//! What operators watch: `/metrics` on every node (checked with `promtool check
//! metrics` when it is installed, and by value against the API); the event stream
//! (SSE, resumable on any node), its webhooks and `berth events`.

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use reqwest::Method;
use serde_json::json;
use support::Cluster;

const FORM: Duration = Duration::from_secs(20);

/// One sample of the text exposition: name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// Parses the Prometheus text format (what the checks below need of it: samples with
/// quoted label values that hold no `"` or `,`).
fn parse(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value: {line}"));
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), BTreeMap::new()),
            Some((name, rest)) => {
                let inner = rest.strip_suffix('}').unwrap_or_else(|| panic!("unclosed labels: {line}"));
                let labels = inner
                    .split(',')
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        let (k, v) = p.split_once('=').unwrap_or_else(|| panic!("bad label: {line}"));
                        (k.to_string(), v.trim_matches('"').to_string())
                    })
                    .collect();
                (name.to_string(), labels)
            }
        };
        out.push((name, labels, value));
    }
    out
}

/// The sum of the samples of `name` whose labels include `labels`; None if none.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<f64> = samples
        .iter()
        .filter(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v)))
        .map(|(_, _, v)| *v)
        .collect();
    (!matching.is_empty()).then(|| matching.iter().sum())
}

async fn scrape(c: &Cluster, id: u64) -> (String, Vec<Sample>) {
    let r = c.http.get(format!("{}/metrics", c.url(id))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let ct = r.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("text/plain") && ct.contains("version=0.0.4"), "{ct}");
    let text = r.text().await.unwrap();
    let samples = parse(&text);
    (text, samples)
}

/// `promtool check metrics` on the exposition: the format and Prometheus' naming
/// rules. None when promtool is not installed (CI installs it).
fn promtool(text: &str) -> Option<Result<(), String>> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Some(if out.status.success() { Ok(()) } else { Err(said) })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_serves_prometheus_metrics_that_match_the_api() {
    let mut c = Cluster::start(3, &[]);
    let leader = c.wait_leader(FORM).await;
    c.create_pool(leader, "lan", 61).await;
    let app = json!({"id": "web", "cmd": ["sleep", "1000"], "instances": 3, "cpus": 0.1, "mem_mb": 16, "network": {"pool": "lan"}});
    let (s, v) = c.req(leader, Method::PUT, "/v1/apps/web", Some(app), None).await;
    assert_eq!(s, 201, "{v}");
    c.eventually(Duration::from_secs(30), "3 running", || async {
        let (_, v) = c.get(leader, "/v1/instances?app=web").await;
        let list = v.as_array()?.clone();
        (list.len() == 3 && list.iter().all(|i| i["state"] == "running")).then_some(())
    })
    .await;
    let (_, cluster) = c.get(leader, "/v1/cluster").await;
    let (_, pools) = c.get(leader, "/v1/ipam/pools").await;
    let lan = pools.as_array().unwrap().iter().find(|p| p["name"] == "lan").unwrap().clone();

    let mut leaders = 0.0;
    for id in c.ids() {
        // Each node's replica catches up with what was read through the leader — and
        // with every host's registration (three running instances need not be on
        // three hosts, so they do not say that the third host has reported yet).
        let (text, m) = c
            .eventually(Duration::from_secs(10), "the replica caught up", || async {
                let (text, m) = scrape(&c, id).await;
                let running = value(&m, "berth_instances", &[("state", "running")]) == Some(3.0);
                let hosts = value(&m, "berth_hosts", &[("state", "up")]) == Some(3.0);
                (running && hosts).then_some((text, m))
            })
            .await;
        match promtool(&text) {
            Some(Ok(())) => {}
            Some(Err(e)) => panic!("promtool check metrics failed on node {id}: {e}\n{text}"),
            None => eprintln!("promtool not installed: the exposition is checked by parsing only"),
        }
        assert_eq!(value(&m, "berth_raft_term", &[]), cluster["term"].as_f64(), "node {id}");
        assert_eq!(value(&m, "berth_raft_leader_id", &[]), Some(leader as f64));
        leaders += value(&m, "berth_raft_is_leader", &[]).unwrap();
        let committed = value(&m, "berth_raft_commit_index", &[]).unwrap();
        let applied = value(&m, "berth_raft_applied_index", &[]).unwrap();
        assert!(committed > 0.0 && applied > 0.0 && applied <= value(&m, "berth_raft_last_log_index", &[]).unwrap());
        assert_eq!(value(&m, "berth_raft_apply_lag", &[]), Some((committed - applied).max(0.0)));
        assert_eq!(value(&m, "berth_raft_voters", &[]), Some(3.0));
        assert_eq!(value(&m, "berth_raft_learners", &[]), Some(0.0));
        assert!(value(&m, "berth_raft_leader_changes_total", &[]).unwrap() >= 1.0);
        assert_eq!(value(&m, "berth_instances", &[]), Some(3.0), "all states together");
        assert_eq!(value(&m, "berth_apps", &[]), Some(1.0));
        assert_eq!(value(&m, "berth_pool_addresses", &[("pool", "lan")]), lan["size"].as_f64());
        // No macvlan parent, so no host shims: only the instances hold addresses.
        assert_eq!(value(&m, "berth_pool_used_addresses", &[("pool", "lan")]), Some(3.0));
        assert_eq!(value(&m, "berth_hosts", &[("state", "up")]), Some(3.0));
        assert_eq!(value(&m, "berth_hosts", &[("state", "down")]), Some(0.0));
    }
    assert_eq!(leaders, 1.0, "exactly one node says it leads");

    // Latency by route template, method and status, as a histogram.
    let (_, m) = scrape(&c, leader).await;
    let route = [("route", "/v1/apps/{id}"), ("method", "PUT"), ("code", "201")];
    assert_eq!(value(&m, "berth_http_request_duration_seconds_count", &route), Some(1.0));
    let inf = [("route", "/v1/apps/{id}"), ("method", "PUT"), ("code", "201"), ("le", "+Inf")];
    assert_eq!(value(&m, "berth_http_request_duration_seconds_bucket", &inf), Some(1.0));
    assert!(value(&m, "berth_http_request_duration_seconds_sum", &route).unwrap() > 0.0);
    let (s, _) = c.get(leader, "/v1/no-such-thing").await;
    assert_eq!(s, 404);
    let (_, m) = scrape(&c, leader).await;
    assert_eq!(
        value(&m, "berth_http_request_duration_seconds_count", &[("route", "unmatched"), ("code", "404")]),
        Some(1.0),
        "an unknown path is counted under one label, never its own"
    );

    // A pool goes: its series go. The leader dies: the others count a new leader.
    let (s, _) = c.req(leader, Method::DELETE, "/v1/apps/web", None, None).await;
    assert_eq!(s, 200);
    let survivor = c.ids().into_iter().find(|i| *i != leader).unwrap();
    let before = value(&scrape(&c, survivor).await.1, "berth_raft_leader_changes_total", &[]).unwrap();
    c.kill(leader);
    let new_leader = c.wait_leader(FORM).await;
    let (_, m) = scrape(&c, survivor).await;
    assert!(value(&m, "berth_raft_leader_changes_total", &[]).unwrap() > before);
    assert_eq!(value(&m, "berth_raft_leader_id", &[]), Some(new_leader as f64));
    c.eventually(Duration::from_secs(30), "the pool is deleted and its series gone", || async {
        let (s, _) = c.req(new_leader, Method::DELETE, "/v1/ipam/pools/lan", None, None).await;
        let (_, m) = scrape(&c, survivor).await;
        ((s == 200 || s == 404) && value(&m, "berth_pool_addresses", &[("pool", "lan")]).is_none()).then_some(())
    })
    .await;
}

/// (id, type, data) of every event of an SSE stream, collected in the background.
type Seen = std::sync::Arc<std::sync::Mutex<Vec<(u64, String, serde_json::Value)>>>;

fn follow(url: String, last_event_id: Option<u64>) -> Seen {
    use futures::StreamExt;
    let seen: Seen = Default::default();
    let out = seen.clone();
    tokio::spawn(async move {
        let mut req = reqwest::Client::new().get(url);
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id.to_string());
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.headers()["content-type"], "text/event-stream");
        let mut body = r.bytes_stream();
        let mut buf = String::new();
        while let Some(Ok(chunk)) = body.next().await {
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buf.find("\n\n") {
                let block: String = buf.drain(..end + 2).collect();
                let (mut id, mut kind, mut data) = (None, String::new(), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().parse().ok();
                    } else if let Some(v) = line.strip_prefix("event:") {
                        kind = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim());
                    }
                }
                if let Some(id) = id {
                    out.lock().unwrap().push((id, kind, serde_json::from_str(&data).unwrap()));
                }
            }
        }
    });
    seen
}

/// A webhook receiver that answers 500 to its first `fail` requests.
async fn receiver(fail: usize) -> (String, Seen, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let got: Seen = Default::default();
    let attempts = std::sync::Arc::new(AtomicUsize::new(0));
    let (g, a) = (got.clone(), attempts.clone());
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
            let (g, a) = (g.clone(), a.clone());
            async move {
                if a.fetch_add(1, Ordering::SeqCst) < fail {
                    return axum::http::StatusCode::INTERNAL_SERVER_ERROR;
                }
                let id = headers["x-berth-delivery"].to_str().unwrap().parse().unwrap();
                let kind = headers["x-berth-event"].to_str().unwrap().to_string();
                g.lock().unwrap().push((id, kind, serde_json::from_str(&body).unwrap()));
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, got, attempts)
}

fn snapshot(s: &Seen) -> Vec<(u64, String, serde_json::Value)> {
    s.lock().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stream_in_raft_order_resume_anywhere_and_reach_webhooks() {
    let mut c = Cluster::start(3, &[]);
    let leader = c.wait_leader(FORM).await;
    let f = c.ids().into_iter().find(|i| *i != leader).unwrap();

    // Bad webhooks and bad resumes are refused, naming what is wrong.
    for (body, what) in [
        (json!({"url": "ftp://x/"}), "http://"),
        (json!({"url": "http:///nohost"}), "host"),
        (json!({"url": "http://h/", "events": ["nope"]}), "nope"),
        (json!({"url": "http://h/", "colour": 1}), "colour"),
    ] {
        let (s, v) = c.post(f, "/v1/webhooks", body).await;
        assert_eq!(s, 400, "{v}");
        assert!(v["error"]["message"].as_str().unwrap().contains(what), "{v}");
    }
    let (s, v) = c.req(f, Method::DELETE, "/v1/webhooks/999", None, None).await;
    assert_eq!((s, v["error"]["code"].as_str()), (404, Some("webhook_not_found")), "{v}");
    let (s, v) = c.get(f, "/v1/events?follow=false&since=x").await;
    assert_eq!(s, 400, "{v}");

    let (url, got, attempts) = receiver(2).await;
    let (s, hook) = c.post(f, "/v1/webhooks", json!({"url": url, "app": "web"})).await;
    assert_eq!(s, 201, "{hook}");
    let stream = follow(format!("{}/v1/events?since=0", c.url(f)), None);

    c.create_pool(leader, "lan", 62).await;
    let app = json!({"id": "web", "cmd": ["sleep", "1000"], "instances": 2, "cpus": 0.1, "mem_mb": 16, "network": {"pool": "lan"}});
    let (s, v) = c.req(leader, Method::PUT, "/v1/apps/web", Some(app), None).await;
    assert_eq!(s, 201, "{v}");
    let (s, _) = c.post(leader, "/v1/apps/web/scale", json!({"instances": 1})).await;
    assert_eq!(s, 200);
    let seen = c
        .eventually(Duration::from_secs(30), "the stream shows the deploy and the scale-down", || async {
            let seen = snapshot(&stream);
            let running = seen.iter().any(|(_, t, v)| t == "instance_changed" && v["state"] == "running");
            let removed = seen.iter().any(|(_, t, _)| t == "instance_removed");
            (running && removed).then_some(seen)
        })
        .await;
    let ids: Vec<u64> = seen.iter().map(|(id, _, _)| *id).collect();
    assert_eq!(ids, (1..=ids.len() as u64).collect::<Vec<_>>(), "consecutive ids from the first");
    let index: Vec<u64> = seen.iter().map(|(_, _, v)| v["index"].as_u64().unwrap()).collect();
    assert!(index.windows(2).all(|w| w[0] <= w[1]), "in Raft order: {index:?}");
    for t in ["host_registered", "pool_created", "app_created", "app_scaled", "instance_changed", "instance_removed"] {
        assert!(seen.iter().any(|(_, k, _)| k == t), "no {t} in {seen:?}");
    }
    assert!(seen.iter().all(|(_, k, v)| v["type"] == k.as_str()));

    // The same events, with the same ids, from another node; resumed after any id,
    // by `since` or by `Last-Event-ID`; filtered by app.
    let mid = ids[ids.len() / 2];
    let other = c.ids().into_iter().find(|i| *i != f).unwrap();
    let (s, list) = c.get(other, &format!("/v1/events?follow=false&since={mid}")).await;
    assert_eq!(s, 200, "{list}");
    let list = list.as_array().unwrap().clone();
    assert_eq!(list[0]["id"].as_u64(), Some(mid + 1));
    for e in &list {
        if let Some((_, _, v)) = seen.iter().find(|(id, _, _)| Some(*id) == e["id"].as_u64()) {
            assert_eq!(v, e, "every node has the same event under the same id");
        }
    }
    let resumed = follow(format!("{}/v1/events", c.url(other)), Some(mid));
    let first = c
        .eventually(Duration::from_secs(10), "the resumed stream", || async { snapshot(&resumed).first().cloned() })
        .await;
    assert_eq!(first.0, mid + 1, "Last-Event-ID resumes right after it");
    let (_, only_web) = c.get(other, "/v1/events?follow=false&since=0&app=web").await;
    let only_web = only_web.as_array().unwrap().clone();
    assert!(!only_web.is_empty() && only_web.iter().all(|e| e["app"] == "web"), "{only_web:?}");

    // The webhook got web's events in order, after two failures were retried.
    c.eventually(Duration::from_secs(30), "the webhook caught up", || async {
        let got: Vec<u64> = snapshot(&got).iter().map(|(id, _, _)| *id).collect();
        let want: Vec<u64> = only_web.iter().map(|e| e["id"].as_u64().unwrap()).collect();
        (got == want).then_some(())
    })
    .await;
    assert!(attempts.load(std::sync::atomic::Ordering::SeqCst) >= only_web.len() + 2);
    // The progress of a round is replicated after the round: the listing catches up
    // with what the receiver already has.
    let hooks = c
        .eventually(Duration::from_secs(10), "the listing shows the webhook recovered", || async {
            let (_, hooks) = c.get(f, "/v1/webhooks").await;
            hooks[0]["last_error"].is_null().then_some(hooks)
        })
        .await;
    assert_eq!(hooks[0]["id"], hook["id"]);
    assert_eq!(hooks[0]["failing_since"], serde_json::Value::Null, "{hooks}");

    // A new leader goes on delivering where the old one stopped (at least once).
    c.kill(leader);
    let leader = c.wait_leader(FORM).await;
    let (s, _) = c.post(leader, "/v1/apps/web/scale", json!({"instances": 3})).await;
    assert_eq!(s, 200);
    c.eventually(Duration::from_secs(30), "events after the failover reach the webhook", || async {
        let got = snapshot(&got);
        let scaled = got.iter().any(|(_, t, v)| t == "app_scaled" && v["instances"] == 3);
        let ids: Vec<u64> = got.iter().map(|(id, _, _)| *id).collect();
        assert!(ids.windows(2).all(|w| w[0] <= w[1]), "in order, repeats allowed: {ids:?}");
        scaled.then_some(())
    })
    .await;
    let (s, _) = c.req(leader, Method::DELETE, &format!("/v1/webhooks/{}", hook["id"]), None, None).await;
    assert_eq!(s, 200);

    // The CLI: a line per event, or JSON lines.
    let (code, out, err) = support::berth(&c.url(leader), &["events", "--no-follow", "--app", "web"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().any(|l| l.contains("app_scaled") && l.contains("instances=3")), "{out}");
    let (code, out, err) = support::berth(&c.url(leader), &["-o", "json", "events", "--no-follow", "--since", "1"]);
    assert_eq!(code, 0, "{err}");
    let ids: Vec<u64> =
        out.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].as_u64().unwrap()).collect();
    assert_eq!(ids.first(), Some(&2), "{out}");
    let (code, _, err) = support::berth(&c.url(leader), &["events", "--since", "x"]);
    assert_ne!(code, 0);
    assert!(err.contains("--since"), "{err}");
}
