//! A Docker remote IPAM plugin over berth's replicated ledger, on a unix socket
//! (`--docker-ipam-socket /run/docker/plugins/berth.sock`): `docker network create
//! --ipam-driver berth --subnet ...` and `docker run --network ...` allocate from and
//! release to the same pools as berth's apps, through any node (docs/api.md, "Docker
//! IPAM plugin").
//!
//! Docker's plugin protocol: JSON POSTs, `Plugin.Activate` then `IpamDriver.*`;
//! errors are `{"Err": "..."}` with a non-200 status. A network's pool is the berth
//! pool with its subnet, created (named `docker-A-B-C-D-N`) when there is none; the
//! gateway Docker asks for is allocated like any address (owner `docker-gateway`),
//! container addresses with owner `docker` (plus the endpoint's MAC when Docker gives
//! it). Releasing a network's pool deletes it only if the plugin created it and it
//! is empty. IPv6 and pools without `--subnet` are refused, saying so.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;

use super::http::RawBody;
use super::ops::{AllocationInput, PoolInput};
use super::Node;
use crate::error::ApiError;

/// The prefix of pools the plugin created (and so may delete).
const CREATED: &str = "docker-";

type Ctx = State<Arc<Node>>;

struct PluginError(String);

impl From<ApiError> for PluginError {
    fn from(e: ApiError) -> Self {
        PluginError(format!("berth: {} ({})", e.message, e.code))
    }
}

impl IntoResponse for PluginError {
    fn into_response(self) -> Response {
        (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({ "Err": self.0 }))).into_response()
    }
}

type PResult = Result<Json<Value>, PluginError>;

pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/Plugin.Activate", post(|| async { Json(json!({"Implements": ["IpamDriver"]})) }))
        .route(
            "/IpamDriver.GetCapabilities",
            post(|| async { Json(json!({"RequiresMACAddress": false, "RequiresRequestReplay": false})) }),
        )
        .route(
            "/IpamDriver.GetDefaultAddressSpaces",
            post(|| async { Json(json!({"LocalDefaultAddressSpace": "berth", "GlobalDefaultAddressSpace": "berth"})) }),
        )
        .route("/IpamDriver.RequestPool", post(request_pool))
        .route("/IpamDriver.ReleasePool", post(release_pool))
        .route("/IpamDriver.RequestAddress", post(request_address))
        .route("/IpamDriver.ReleaseAddress", post(release_address))
        .fallback(|| async { PluginError("berth's IPAM plugin does not serve that call".into()) })
        .with_state(node)
}

/// Serves the plugin on `listener` (bound at `path`) until `stop`, then removes the
/// socket file so Docker does not keep trying a dead plugin.
pub async fn serve(
    node: Arc<Node>,
    listener: tokio::net::UnixListener,
    path: std::path::PathBuf,
    stop: CancellationToken,
) {
    let result = axum::serve(listener, router(node)).with_graceful_shutdown(stop.cancelled_owned()).await;
    if let Err(e) = result {
        tracing::error!(error = %e, "docker IPAM plugin server failed");
    }
    let _ = std::fs::remove_file(&path);
}

/// Binds the plugin's socket, replacing a stale one, creating its directory.
pub fn bind(path: &std::path::Path) -> std::io::Result<tokio::net::UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    tokio::net::UnixListener::bind(path)
}

fn body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, PluginError> {
    serde_json::from_slice(bytes).map_err(|e| PluginError(format!("berth: not a plugin request: {e}")))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RequestPool {
    #[serde(default)]
    pool: String,
    #[serde(default)]
    sub_pool: String,
    #[serde(default, rename = "V6")]
    v6: bool,
}

async fn request_pool(State(node): Ctx, RawBody(b): RawBody) -> PResult {
    let r: RequestPool = body(&b)?;
    if r.v6 {
        return Err(PluginError("berth pools are IPv4 only".into()));
    }
    if r.pool.is_empty() {
        return Err(PluginError(
            "berth picks no subnets: give the network one (docker network create --subnet)".into(),
        ));
    }
    let subnet: ipnet::Ipv4Net =
        r.pool.parse().map_err(|_| PluginError(format!("{:?} is not an IPv4 CIDR", r.pool)))?;
    let existing = node.list_pools(false).await?.into_iter().find(|p| p.subnet == subnet.to_string());
    let name = match existing {
        Some(p) => p.name,
        None => {
            let name = format!("{CREATED}{}", subnet.to_string().replace(['.', '/'], "-"));
            let range = (!r.sub_pool.is_empty()).then(|| r.sub_pool.clone());
            let input = PoolInput { name: name.clone(), subnet: subnet.to_string(), gateway: None, range };
            // Idempotent by itself: an identical pool is answered as it is.
            node.create_pool(input, None).await?;
            name
        }
    };
    Ok(Json(json!({"PoolID": name, "Pool": subnet.to_string(), "Data": {}})))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ReleasePool {
    #[serde(rename = "PoolID")]
    pool_id: String,
}

async fn release_pool(State(node): Ctx, RawBody(b): RawBody) -> PResult {
    let r: ReleasePool = body(&b)?;
    if r.pool_id.starts_with(CREATED) && node.list_allocations(&r.pool_id, false).await?.is_empty() {
        match node.delete_pool(&r.pool_id, None).await {
            Ok(()) => {}
            Err(e) if e.status == 404 || e.code == "pool_in_use" => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RequestAddress {
    #[serde(rename = "PoolID")]
    pool_id: String,
    #[serde(default)]
    address: String,
    /// Null when Docker has none.
    #[serde(default)]
    options: Option<Map<String, Value>>,
}

async fn request_address(State(node): Ctx, RawBody(b): RawBody) -> PResult {
    let r: RequestAddress = body(&b)?;
    let options = r.options.unwrap_or_default();
    let gateway = options.get("RequestAddressType").and_then(Value::as_str) == Some("com.docker.network.gateway");
    let mac = options.get("com.docker.network.endpoint.macaddress").and_then(Value::as_str);
    let owner = match (gateway, mac) {
        (true, _) => "docker-gateway".to_string(),
        (false, Some(mac)) => format!("docker {mac}"),
        (false, None) => "docker".to_string(),
    };
    let ip = (!r.address.is_empty()).then(|| r.address.clone());
    let pool = node.list_pools(false).await?.into_iter().find(|p| p.name == r.pool_id);
    let Some(pool) = pool else { return Err(PluginError(format!("berth: no pool {:?}", r.pool_id))) };
    let prefix = pool.subnet.split_once('/').map_or("32", |(_, len)| len).to_string();
    // A pool with a gateway of its own (a berth pool Docker adopted): that is the
    // network's gateway — reserved in the ledger, never allocated, never released.
    if let (true, Some(gw)) = (gateway, pool.gateway.as_deref()) {
        if ip.as_deref().is_some_and(|asked| asked.split('/').next() != Some(gw)) {
            return Err(PluginError(format!(
                "berth: pool {} has gateway {gw}; give the network that one or none",
                pool.name
            )));
        }
        return Ok(Json(json!({"Address": format!("{gw}/{prefix}"), "Data": {}})));
    }
    let a = node.allocate(&r.pool_id, AllocationInput { owner, ip }, None).await?;
    Ok(Json(json!({"Address": format!("{}/{prefix}", a.ip), "Data": {}})))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ReleaseAddress {
    #[serde(rename = "PoolID")]
    pool_id: String,
    address: String,
}

async fn release_address(State(node): Ctx, RawBody(b): RawBody) -> PResult {
    let r: ReleaseAddress = body(&b)?;
    let ip = r.address.split('/').next().unwrap_or("");
    // Only what Docker holds: a retried release of an address that berth has since
    // given to someone else must not free theirs. (Read, then release: the window
    // between is one round trip; a conditional release in the ledger would close it.)
    let held = node.list_allocations(&r.pool_id, false).await;
    let docker_owns = match &held {
        Ok(list) => list.iter().any(|a| a.ip == ip && a.owner.starts_with("docker")),
        Err(e) if e.status == 404 => false,
        Err(e) => return Err(e.clone().into()),
    };
    if !docker_owns {
        return Ok(Json(json!({})));
    }
    match node.release(&r.pool_id, ip, None).await {
        // Docker releases what it may have released before (a retried teardown).
        Ok(()) => Ok(Json(json!({}))),
        Err(e) if e.status == 404 => Ok(Json(json!({}))),
        Err(e) => Err(e.into()),
    }
}
