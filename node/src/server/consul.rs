//! A Consul-compatible upstream feed: what nginx-upsync-module and Consul clients read
//! to route to an app's instances, served on `--consul-listen` (docs/api.md, "Consul
//! feed").
//!
//! - `GET /v1/kv/upstreams/{app}?recurse` — one key per instance,
//!   `upstreams/APP/IP:PORT`, its value (base64, as Consul sends it) nginx-upsync's
//!   server parameters `{"weight":1,"max_fails":2,"fail_timeout":10,"down":0|1}`
//!   (`down` while the instance is not healthy); `?keys` lists the keys only; a key
//!   alone (no `recurse`) is that entry. 404 when there is none — the module then keeps
//!   the servers it had, as it does with Consul.
//! - `GET /v1/health/service/{app}` (`?passing`) and `GET /v1/catalog/service/{app}`.
//! - `GET /v1/status/leader`.
//!
//! Every answer carries `X-Consul-Index`, and `?index=N&wait=D` blocks (long poll) while
//! N is still the index of what the request would return, up to D (default 5 min, at
//! most 10). The index of a view is the Raft applied index at which this node first
//! saw it as it is now: it changes exactly when the answer does, so a watcher wakes
//! only for a real change. (Per node: another node may number the same answer
//! differently, which makes a client that switches nodes fetch once more, as Consul's
//! own servers do after a leader change.)
//!
//! nginx-upsync-module speaks HTTP/1.0, matches the header name `X-Consul-Index`
//! case-sensitively and reads the body up to the connection's close: this listener is
//! served by hyper with title-case header names (axum's own server lowercases them),
//! and hyper closes an HTTP/1.0 connection after its answer, with a `Content-Length`.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine as _;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::Node;
use crate::state::apps::{App, Instance};

/// The longest a blocking query waits (Consul's limit), and its default.
const MAX_WAIT: Duration = Duration::from_secs(600);
const DEFAULT_WAIT: Duration = Duration::from_secs(300);
/// The KV prefix berth serves.
const PREFIX: &str = "upstreams/";

/// The feed's state: the index each view was last seen to change at.
pub struct Feed {
    node: Arc<Node>,
    seen: Mutex<HashMap<String, (u64, u64)>>,
}

type Ctx = State<Arc<Feed>>;

pub fn router(node: Arc<Node>) -> Router {
    let feed = Arc::new(Feed { node, seen: Mutex::new(HashMap::new()) });
    Router::new()
        .route("/v1/kv/{*key}", get(kv))
        .route("/v1/health/service/{app}", get(health))
        .route("/v1/catalog/service/{app}", get(catalog))
        .route("/v1/status/leader", get(leader))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "berth serves /v1/kv/upstreams/, /v1/health/service/, /v1/catalog/service/ and /v1/status/leader\n",
            )
        })
        .with_state(feed)
}

/// How long a client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves the feed until `stop`: HTTP/1 with title-case header names.
pub async fn serve(node: Arc<Node>, listener: TcpListener, stop: CancellationToken) {
    let app = router(node);
    while let Some((stream, _)) = berth_raft::link::accept(&listener, &stop, "consul feed").await {
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let stop = stop.clone();
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .title_case_headers(true)
                // A client that opens a connection and never finishes its headers is
                // dropped instead of holding a task forever.
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::pin!(conn);
            let done = tokio::select! {
                r = conn.as_mut() => Some(r),
                _ = stop.cancelled() => None,
            };
            // At shutdown: answer the request in flight (a held blocking query returns
            // at once when the node stops), then close — never cut a response short.
            let r = match done {
                Some(r) => r,
                None => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = r {
                tracing::debug!(error = %e, "consul feed connection");
            }
        });
    }
}

/// The first value of query parameter `key` (`?recurse` alone gives "").
fn param(query: &Option<String>, key: &str) -> Option<String> {
    super::http::query_values(query, key).into_iter().next()
}

/// Consul's duration syntax: `10s`, `5m`, `1m30s`, `500ms`, or bare seconds.
fn parse_wait(s: &str) -> Result<Duration, String> {
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(rest.len());
        let (n, tail) = rest.split_at(digits);
        let n: f64 = n.parse().map_err(|_| format!("wait: {s:?} is not a duration such as 30s or 5m"))?;
        if !n.is_finite() {
            return Err(format!("wait: {s:?} is not a duration such as 30s or 5m"));
        }
        let unit = tail.find(|c: char| c.is_ascii_digit()).unwrap_or(tail.len());
        let (u, tail) = tail.split_at(unit);
        let scale = match u {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(format!("wait: {s:?} is not a duration such as 30s or 5m")),
        };
        // Anything past the longest wait is the longest wait (and never overflows).
        let secs = (n * scale).min(MAX_WAIT.as_secs_f64());
        total = total.saturating_add(Duration::from_secs_f64(secs)).min(MAX_WAIT);
        rest = tail;
    }
    Ok(total)
}

/// What one request reads: Some(JSON) when found.
type View = Option<Value>;

/// The instances an app routes to: placed, wanted, with an IP.
fn routed<'a>(state: &'a crate::state::State, app: &'a App) -> impl Iterator<Item = &'a Instance> + 'a {
    state
        .apps
        .instances_of(&app.id)
        .filter(|i| i.desired == crate::state::apps::Desired::Run && i.host.is_some() && i.ip.is_some())
}

fn kv_view(state: &crate::state::State, key: &str, recurse: bool, keys_only: bool) -> View {
    let rest = key.strip_prefix(PREFIX)?;
    let (app_id, entry) = match rest.split_once('/') {
        Some((a, e)) => (a, e),
        None => (rest, ""),
    };
    let app = state.apps.apps.get(app_id)?;
    let port = app.spec().serving_port()?;
    let has_check = app.spec().health_check.is_some();
    let mut entries: Vec<(String, u8)> = routed(state, app)
        .map(|i| {
            let ip = i.ip.expect("routed instances have an IP");
            (format!("{PREFIX}{app_id}/{ip}:{port}"), u8::from(!i.is_healthy(has_check)))
        })
        .collect();
    entries.sort();
    let wanted: Vec<(String, u8)> = if recurse || keys_only {
        entries.into_iter().filter(|(k, _)| k.starts_with(key)).collect()
    } else {
        entries.into_iter().filter(|(k, _)| k == key && !entry.is_empty()).collect()
    };
    if wanted.is_empty() {
        return None;
    }
    if keys_only {
        return Some(json!(wanted.into_iter().map(|(k, _)| k).collect::<Vec<_>>()));
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    Some(json!(wanted
        .into_iter()
        .map(|(k, down)| {
            let value = format!(r#"{{"weight":1,"max_fails":2,"fail_timeout":10,"down":{down}}}"#);
            json!({"Key": k, "Value": b64.encode(value), "Flags": 0, "LockIndex": 0, "CreateIndex": 0, "ModifyIndex": 0})
        })
        .collect::<Vec<_>>()))
}

/// (node name, node address) of a host.
fn host_of(state: &crate::state::State, i: &Instance) -> (String, String) {
    let h = i.host.unwrap_or(0);
    let addr = state.nodes.registered.get(&h).map(|n| n.address().to_string()).unwrap_or_default();
    (format!("berth-host-{h}"), addr)
}

fn health_view(state: &crate::state::State, app_id: &str, passing_only: bool) -> View {
    let app = state.apps.apps.get(app_id)?;
    let port = app.spec().serving_port().unwrap_or(0);
    let has_check = app.spec().health_check.is_some();
    let list: Vec<Value> = routed(state, app)
        .filter(|i| !passing_only || i.is_healthy(has_check))
        .map(|i| {
            let (node, addr) = host_of(state, i);
            let status = if i.is_healthy(has_check) { "passing" } else { "critical" };
            json!({
                "Node": {"ID": node, "Node": node, "Address": addr, "Datacenter": "berth", "Meta": {}},
                "Service": {
                    "ID": i.id, "Service": app_id, "Tags": [], "Address": i.ip.map(|ip| ip.to_string()),
                    "Port": port, "Meta": {"version": i.version.to_string()},
                },
                "Checks": [{
                    "Node": node, "CheckID": format!("service:{}", i.id), "Name": "berth instance health",
                    "Status": status, "Output": i.message.clone().unwrap_or_default(),
                    "ServiceID": i.id, "ServiceName": app_id,
                }],
            })
        })
        .collect();
    Some(json!(list))
}

fn catalog_view(state: &crate::state::State, app_id: &str) -> View {
    let app = state.apps.apps.get(app_id)?;
    let port = app.spec().serving_port().unwrap_or(0);
    let list: Vec<Value> = routed(state, app)
        .map(|i| {
            let (node, addr) = host_of(state, i);
            json!({
                "ID": node, "Node": node, "Address": addr, "Datacenter": "berth",
                "ServiceID": i.id, "ServiceName": app_id, "ServiceTags": [],
                "ServiceAddress": i.ip.map(|ip| ip.to_string()), "ServicePort": port, "ServiceMeta": {},
            })
        })
        .collect();
    Some(json!(list))
}

impl Feed {
    /// The index of `view` under `name`: unchanged while the view is, else the applied
    /// index now (never lower than before, never 0). Only views that exist are
    /// remembered — a client asking for made-up keys or a deleted app grows nothing —
    /// so a missing view is numbered by the applied index.
    fn index(&self, name: &str, view: &View) -> u64 {
        let mut seen = berth_raft::locks::lock(&self.seen);
        let applied = self.node.state.applied_index().max(1);
        let Some(v) = view else {
            seen.remove(name);
            return applied;
        };
        let mut h = std::collections::hash_map::DefaultHasher::new();
        v.to_string().hash(&mut h);
        let hash = h.finish();
        let entry = seen.entry(name.to_string()).or_insert((hash, applied));
        if entry.0 != hash {
            *entry = (hash, applied.max(entry.1 + 1));
        }
        entry.1
    }

    /// Answers `read` of the replica, blocking while `?index` is still current.
    async fn answer(&self, name: String, q: &Option<String>, read: impl Fn(&crate::state::State) -> View) -> Response {
        let wait = match param(q, "wait").map(|w| parse_wait(&w)).transpose() {
            Ok(w) => w.unwrap_or(DEFAULT_WAIT).min(MAX_WAIT),
            Err(e) => return (StatusCode::BAD_REQUEST, e).into_response(),
        };
        let known = match param(q, "index").map(|i| i.parse::<u64>()).transpose() {
            Ok(i) => i.unwrap_or(0),
            Err(_) => return (StatusCode::BAD_REQUEST, "index: not a number").into_response(),
        };
        if param(q, "stale").is_none() {
            if let Err(e) = self.node.read_barrier(false).await {
                return (StatusCode::from_u16(e.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE), e.message)
                    .into_response();
            }
        }
        let until = tokio::time::Instant::now() + wait;
        let mut changes = self.node.state.subscribe_changes();
        loop {
            changes.borrow_and_update();
            let view = read(&self.node.state.read().state);
            let index = self.index(&name, &view);
            if known == 0 || known != index || tokio::time::Instant::now() >= until {
                return self.respond(view, index);
            }
            tokio::select! {
                _ = self.node.stopping() => return self.respond(view, index),
                _ = tokio::time::sleep_until(until) => {}
                changed = changes.changed() => if changed.is_err() { return self.respond(view, index) },
            }
        }
    }

    fn respond(&self, view: View, index: u64) -> Response {
        let mut r = match view {
            Some(v) => Json(v).into_response(),
            None => StatusCode::NOT_FOUND.into_response(),
        };
        let known_leader = {
            use berth_raft::openraft::type_config::async_runtime::WatchReceiver;
            self.node.raft.metrics().borrow_watched().current_leader.is_some()
        };
        let h = r.headers_mut();
        h.insert("x-consul-index", HeaderValue::from(index));
        h.insert("x-consul-knownleader", HeaderValue::from_static(if known_leader { "true" } else { "false" }));
        h.insert("x-consul-lastcontact", HeaderValue::from_static("0"));
        r
    }
}

async fn kv(State(feed): Ctx, Path(key): Path<String>, RawQuery(q): RawQuery) -> Response {
    let recurse = param(&q, "recurse").is_some();
    let keys_only = param(&q, "keys").is_some();
    let name = format!("kv:{key}:{recurse}:{keys_only}");
    feed.answer(name, &q, move |s| kv_view(s, &key, recurse, keys_only)).await
}

async fn health(State(feed): Ctx, Path(app): Path<String>, RawQuery(q): RawQuery) -> Response {
    let passing = param(&q, "passing").is_some_and(|p| p != "false" && p != "0");
    let name = format!("health:{app}:{passing}");
    feed.answer(name, &q, move |s| health_view(s, &app, passing)).await
}

async fn catalog(State(feed): Ctx, Path(app): Path<String>, RawQuery(q): RawQuery) -> Response {
    let name = format!("catalog:{app}");
    feed.answer(name, &q, move |s| catalog_view(s, &app)).await
}

async fn leader(State(feed): Ctx) -> Response {
    use berth_raft::openraft::type_config::async_runtime::WatchReceiver;
    let addr = {
        let m = feed.node.raft.metrics();
        let m = m.borrow_watched();
        m.current_leader.and_then(|l| m.membership_config.membership().get_node(&l).map(|n| n.addr.clone()))
    };
    Json(addr.unwrap_or_default()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_parse_as_consul_writes_them() {
        assert_eq!(parse_wait("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_wait("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_wait("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_wait("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_wait("7").unwrap(), Duration::from_secs(7));
        assert!(parse_wait("soon").is_err());
        assert!(parse_wait("5x").is_err());
        assert_eq!(parse_wait("99999999999999999999s").unwrap(), MAX_WAIT, "clamped, no panic");
        assert_eq!(parse_wait("9999999999999999m9999999999999999m").unwrap(), MAX_WAIT);
    }
}
