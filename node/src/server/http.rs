//! The HTTP API (`docs/api.md`): JSON under `/v1`, errors always
//! `{"error": {"code", "message"}}` with the status of [`ApiError`].

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use utoipa::{OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::{IdempotencyKey, InstancesQuery, LogsQuery, Stale};
use super::ops::{AllocationInput, ClusterView, MemberInput, PoolInput, SnapshotView};
use super::Node;
use crate::error::ApiError;
use crate::state::ipam::{AllocationInfo, PoolInfo};
use crate::tls::PeerInfo;

/// The largest request body accepted (413 beyond).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// The most log lines `?tail=N` may ask for: a tail is found by reading back from the
/// end (the process runtime reads at most the last 4 MiB, Docker counts lines), so a
/// bigger N is a mistake; `tail=all` streams everything from the start.
pub const MAX_LOG_TAIL: usize = 100_000;
/// The longest `Idempotency-Key` accepted.
pub const MAX_IDEMPOTENCY_KEY: usize = 128;

type Ctx = State<Arc<Node>>;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(super::openapi::ErrorBody::from(&self))).into_response()
    }
}

/// A JSON body: 413 when too large, 400 naming the problem (unknown field, bad value,
/// bad syntax) otherwise. The Content-Type is not insisted on.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let RawBody(bytes) = RawBody::from_request(req, state).await?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// A request body as bytes: 413 when too large.
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        Bytes::from_request(req, state).await.map(RawBody).map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(413, "too_large", format!("the request body is larger than {MAX_BODY_BYTES} bytes"))
            } else {
                ApiError::invalid("invalid_request", format!("cannot read the request body: {e}"))
            }
        })
    }
}

/// Parses a JSON request body into `T`, with an error naming what is wrong.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid("invalid_json", "the request body is empty; a JSON object is expected"));
    }
    serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::invalid("invalid_request", e.to_string()),
        _ => ApiError::invalid("invalid_json", format!("the body is not valid JSON: {e}")),
    })
}

/// The value of query parameter `key`, if present (`?key` alone gives "").
pub(crate) fn query_param<'a>(query: &'a Option<String>, key: &str) -> Option<&'a str> {
    query
        .as_deref()?
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// Every value of query parameter `key`, percent-decoded (`?embed=a&embed=b`;
/// `?recurse` alone gives ""). The adapters' clients send encoded and repeated keys.
pub(crate) fn query_values(query: &Option<String>, key: &str) -> Vec<String> {
    let q = query.as_deref().unwrap_or("");
    form_urlencoded::parse(q.as_bytes()).filter(|(k, _)| k == key).map(|(_, v)| v.into_owned()).collect()
}

/// Reads a boolean query parameter (absent: false).
pub(crate) fn flag(query: &Option<String>, key: &str) -> Result<bool, ApiError> {
    match query_param(query, key) {
        None => Ok(false),
        Some("true" | "1" | "") => Ok(true),
        Some("false" | "0") => Ok(false),
        Some(other) => Err(ApiError::invalid("invalid_request", format!("{key}: {other:?} is not true or false"))),
    }
}

/// The request id of a write: the client's `Idempotency-Key`, if it sent one.
pub(crate) fn request_id(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    match headers.get("idempotency-key") {
        None => Ok(None),
        Some(v) => {
            let s = v
                .to_str()
                .ok()
                .filter(|s| s.bytes().all(|b| b.is_ascii_graphic()))
                .ok_or_else(|| ApiError::invalid("invalid_request", "Idempotency-Key is not visible ASCII"))?;
            if s.is_empty() || s.len() > MAX_IDEMPOTENCY_KEY {
                return Err(ApiError::invalid(
                    "invalid_request",
                    format!("Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters"),
                ));
            }
            Ok(Some(format!("key:{s}")))
        }
    }
}

fn parse_id(s: &str) -> Result<u64, ApiError> {
    s.parse().map_err(|_| ApiError::invalid("invalid_request", format!("{s:?} is not a node id")))
}

/// The `/v1` routes, each registered with its OpenAPI description (`openapi.rs`).
fn v1() -> OpenApiRouter<Arc<Node>> {
    OpenApiRouter::with_openapi(super::openapi::ApiDoc::openapi())
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(get_cluster))
        .routes(routes!(add_member))
        .routes(routes!(snapshot))
        .routes(routes!(remove_member))
        .routes(routes!(create_pool, list_pools))
        .routes(routes!(delete_pool))
        .routes(routes!(allocate, list_allocations))
        .routes(routes!(release))
        .routes(routes!(apps::list))
        .routes(routes!(apps::put, apps::get, apps::delete))
        .routes(routes!(apps::scale))
        .routes(routes!(apps::rollback))
        .routes(routes!(apps::restart))
        .routes(routes!(apps::versions))
        .routes(routes!(apps::instances))
        .routes(routes!(apps::logs))
        .routes(routes!(apps::exec))
        .routes(routes!(apps::hosts))
        .routes(routes!(apps::drain))
        .routes(routes!(apps::eligible))
        .routes(routes!(apps::deployments))
        .routes(routes!(apps::cancel_deployment))
        .routes(routes!(super::events::serve))
        .routes(routes!(super::webhooks::create, super::webhooks::list))
        .routes(routes!(super::webhooks::delete))
        .routes(routes!(registers::read, registers::write))
        .routes(routes!(registers::cas))
        .routes(routes!(super::auth::create, super::auth::list))
        .routes(routes!(super::auth::whoami))
        .routes(routes!(super::auth::revoke))
}

/// The `/v1` routes and their OpenAPI document (every operation with the error shape).
fn v1_parts() -> (Router<Arc<Node>>, utoipa::openapi::OpenApi) {
    let (routes, mut doc) = v1().split_for_parts();
    super::openapi::add_error_responses(&mut doc);
    (routes, doc)
}

/// The OpenAPI document of the `/v1` API, as served at `/v1/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    v1_parts().1
}

pub fn router(node: Arc<Node>) -> Router {
    let (routes, doc) = v1_parts();
    let doc = super::openapi::for_node(&doc, &node.config);
    let doc = Bytes::from(serde_json::to_vec_pretty(&doc).expect("the OpenAPI document serializes"));
    routes
        .route("/metrics", get(super::metrics::serve))
        .route(
            "/v1/openapi.json",
            get(move || async move { ([(axum::http::header::CONTENT_TYPE, "application/json")], doc) }),
        )
        .merge(super::marathon::routes())
        .merge(super::ui::routes())
        .fallback(|| async { ApiError::not_found("no_route", "no such endpoint; see docs/api.md") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(405, "method_not_allowed", "this endpoint does not take that method")
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(node.clone(), super::auth::guard))
        .layer(axum::middleware::from_fn_with_state(node.clone(), super::metrics::track))
        .with_state(node)
}

/// Serves the API until `stop`: HTTPS when the node runs TLS (`crate::tls`), else
/// plain HTTP. Handlers see the caller as `ConnectInfo<PeerInfo>`.
pub async fn serve(node: Arc<Node>, listener: TcpListener, stop: CancellationToken) {
    let app = router(node.clone()).into_make_service_with_connect_info::<PeerInfo>();
    let result = match &node.tls {
        Some(tls) => {
            let listener = tls.http_listener(listener, stop.clone());
            axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await
        }
        None => {
            let listener = crate::tls::PlainListener(listener);
            axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await
        }
    };
    if let Err(e) = result {
        tracing::error!(error = %e, "HTTP server failed");
    }
}

#[utoipa::path(get, path = "/healthz", tag = "cluster", responses((status = 200, description = "The process is up", body = Status)))]
async fn healthz() -> Json<Status> {
    Json(Status { status: "up" })
}

#[utoipa::path(get, path = "/readyz", tag = "cluster", responses((status = 200, description = "The node knows a leader and has applied what it committed", body = Ready)))]
async fn readyz(State(node): Ctx) -> Result<impl IntoResponse, ApiError> {
    node.ready().await?;
    Ok(Json(Ready { status: "ready", applied: node.state.applied_index() }))
}

#[utoipa::path(get, path = "/v1/cluster", tag = "cluster", params(Stale), responses((status = 200, body = ClusterView)))]
async fn get_cluster(State(node): Ctx, stale: Stale) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(node.cluster_view(stale.get()).await?))
}

#[utoipa::path(post, path = "/v1/cluster/snapshot", tag = "cluster", responses((status = 200, description = "The snapshot this node built", body = SnapshotView)))]
async fn snapshot(State(node): Ctx) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(node.snapshot_now().await?))
}

#[utoipa::path(post, path = "/v1/cluster/members", tag = "cluster", request_body = MemberInput, responses((status = 200, body = ClusterView)))]
async fn add_member(State(node): Ctx, JsonBody(input): JsonBody<MemberInput>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(node.add_member(input).await?))
}

#[utoipa::path(delete, path = "/v1/cluster/members/{id}", tag = "cluster", params(("id" = u64, Path, description = "Node id")), responses((status = 200, body = ClusterView)))]
async fn remove_member(State(node): Ctx, Path(id): Path<String>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(node.remove_member(parse_id(&id)?).await?))
}

#[utoipa::path(post, path = "/v1/ipam/pools", tag = "ipam", request_body = PoolInput, params(IdempotencyKey), responses((status = 201, description = "Created", body = PoolInfo), (status = 200, description = "The same pool existed already", body = PoolInfo)))]
async fn create_pool(
    State(node): Ctx,
    headers: HeaderMap,
    JsonBody(input): JsonBody<PoolInput>,
) -> Result<impl IntoResponse, ApiError> {
    let (pool, created) = node.create_pool(input, request_id(&headers)?).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(pool)))
}

#[utoipa::path(get, path = "/v1/ipam/pools", tag = "ipam", params(Stale), responses((status = 200, body = Vec<PoolInfo>)))]
async fn list_pools(State(node): Ctx, stale: Stale) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(node.list_pools(stale.get()).await?))
}

#[utoipa::path(delete, path = "/v1/ipam/pools/{pool}", tag = "ipam", params(("pool" = String, Path, pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", description = "Pool name"), IdempotencyKey), responses((status = 204, description = "Deleted")))]
async fn delete_pool(
    State(node): Ctx,
    headers: HeaderMap,
    Path(pool): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    node.delete_pool(&pool, request_id(&headers)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/ipam/pools/{pool}/allocations", tag = "ipam", request_body = AllocationInput, params(("pool" = String, Path, pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", description = "Pool name"), IdempotencyKey), responses((status = 201, body = AllocationInfo)))]
async fn allocate(
    State(node): Ctx,
    headers: HeaderMap,
    Path(pool): Path<String>,
    JsonBody(input): JsonBody<AllocationInput>,
) -> Result<impl IntoResponse, ApiError> {
    let a = node.allocate(&pool, input, request_id(&headers)?).await?;
    Ok((StatusCode::CREATED, Json(a)))
}

#[utoipa::path(get, path = "/v1/ipam/pools/{pool}/allocations", tag = "ipam", params(("pool" = String, Path, pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", description = "Pool name"), Stale), responses((status = 200, body = Vec<AllocationInfo>)))]
async fn list_allocations(
    State(node): Ctx,
    Path(pool): Path<String>,
    stale: Stale,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(node.list_allocations(&pool, stale.get()).await?))
}

#[utoipa::path(delete, path = "/v1/ipam/pools/{pool}/allocations/{ip}", tag = "ipam", params(("pool" = String, Path, pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", description = "Pool name"), ("ip" = String, Path, format = Ipv4, description = "The address"), IdempotencyKey), responses((status = 204, description = "Released")))]
async fn release(
    State(node): Ctx,
    headers: HeaderMap,
    Path((pool, ip)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    node.release(&pool, &ip, request_id(&headers)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /healthz`.
#[derive(Serialize, ToSchema)]
struct Status {
    /// Always `up`.
    status: &'static str,
}

/// `GET /readyz`.
#[derive(Serialize, ToSchema)]
struct Ready {
    /// Always `ready` (not ready is a 503).
    status: &'static str,
    /// The last log index this node applied.
    applied: u64,
}

/// Registers: tiny replicated cells with read, write and compare-and-set (used by the
/// chaos suite's linearizability workload).
mod registers {
    use super::*;
    use crate::server::ops::{RegisterCas, RegisterWrite};

    /// A register and its value.
    #[derive(Serialize, ToSchema)]
    pub struct RegisterView {
        pub key: String,
        /// Any JSON value; `null` when never written.
        pub value: serde_json::Value,
    }

    #[utoipa::path(get, path = "/v1/registers/{key}", operation_id = "read_register", tag = "registers", params(("key" = String, Path, min_length = 1, max_length = 128, description = "Register key"), Stale), responses((status = 200, body = RegisterView)))]
    pub async fn read(State(node): Ctx, Path(key): Path<String>, stale: Stale) -> Result<impl IntoResponse, ApiError> {
        let value = node.read_register(&key, stale.get()).await?;
        Ok(Json(RegisterView { key, value }))
    }

    #[utoipa::path(put, path = "/v1/registers/{key}", operation_id = "write_register", tag = "registers", request_body = RegisterWrite, params(("key" = String, Path, min_length = 1, max_length = 128, description = "Register key"), IdempotencyKey), responses((status = 200, body = RegisterView)))]
    pub async fn write(
        State(node): Ctx,
        headers: HeaderMap,
        Path(key): Path<String>,
        JsonBody(input): JsonBody<RegisterWrite>,
    ) -> Result<impl IntoResponse, ApiError> {
        node.write_register(&key, &input.value, request_id(&headers)?).await?;
        Ok(Json(RegisterView { key, value: input.value }))
    }

    #[utoipa::path(post, path = "/v1/registers/{key}/cas", operation_id = "cas_register", tag = "registers", request_body = RegisterCas, params(("key" = String, Path, min_length = 1, max_length = 128, description = "Register key"), IdempotencyKey), responses((status = 200, description = "Swapped", body = RegisterView)))]
    pub async fn cas(
        State(node): Ctx,
        headers: HeaderMap,
        Path(key): Path<String>,
        JsonBody(input): JsonBody<RegisterCas>,
    ) -> Result<impl IntoResponse, ApiError> {
        node.cas_register(&key, &input.from, &input.to, request_id(&headers)?).await?;
        Ok(Json(RegisterView { key, value: input.to }))
    }
}

/// Handlers of the app, instance, host and deployment endpoints.
mod apps {
    use super::*;
    use crate::server::workloads::{
        parse_spec, AppView, DeploymentView, ExecInput, ExecOutput, HostView, InstanceView, RollbackInput, ScaleInput,
        VersionView,
    };
    use crate::state::apps::spec::AppSpec;

    #[utoipa::path(put, path = "/v1/apps/{id}", operation_id = "put_app", tag = "apps", request_body(content = AppSpec, description = "The app spec (docs/spec.md); `id` may be left out"), params(("id" = String, Path, pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", description = "App id"), IdempotencyKey), responses((status = 201, description = "Created", body = AppView), (status = 200, description = "Updated (a new version when the spec changed)", body = AppView)))]
    pub async fn put(
        State(node): Ctx,
        headers: HeaderMap,
        Path(id): Path<String>,
        RawBody(body): RawBody,
    ) -> Result<impl IntoResponse, ApiError> {
        let spec = parse_spec(&id, &body)?;
        let (view, created) = node.put_app(spec, request_id(&headers)?).await?;
        Ok((if created { StatusCode::CREATED } else { StatusCode::OK }, Json(view)))
    }

    #[utoipa::path(get, path = "/v1/apps/{id}", operation_id = "get_app", tag = "apps", params(("id" = String, Path, pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", description = "App id"), Stale), responses((status = 200, body = AppView)))]
    pub async fn get(State(node): Ctx, Path(id): Path<String>, stale: Stale) -> Result<impl IntoResponse, ApiError> {
        Ok(Json(node.get_app(&id, stale.get()).await?))
    }

    #[utoipa::path(get, path = "/v1/apps", operation_id = "list_apps", tag = "apps", params(Stale), responses((status = 200, body = Vec<AppView>)))]
    pub async fn list(State(node): Ctx, stale: Stale) -> Result<impl IntoResponse, ApiError> {
        Ok(Json(node.list_apps(stale.get()).await?))
    }

    #[utoipa::path(delete, path = "/v1/apps/{id}", operation_id = "delete_app", tag = "apps", params(("id" = String, Path, pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", description = "App id"), IdempotencyKey), responses((status = 200, description = "Deleted: its instances stop and release their addresses", body = AppView)))]
    pub async fn delete(
        State(node): Ctx,
        headers: HeaderMap,
        Path(id): Path<String>,
    ) -> Result<impl IntoResponse, ApiError> {
        Ok(Json(node.delete_app(&id, request_id(&headers)?).await?))
    }

    #[utoipa::path(post, path = "/v1/apps/{id}/scale", operation_id = "scale_app", tag = "apps", request_body = ScaleInput, params(("id" = String, Path, pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", description = "App id"), IdempotencyKey), responses((status = 200, body = AppView)))]
    pub async fn scale(
        State(node): Ctx,
        headers: HeaderMap,
        Path(id): Path<String>,
        JsonBody(input): JsonBody<ScaleInput>,
    ) -> Result<impl IntoResponse, ApiError> {
        Ok(Json(node.scale_app(&id, input.instances, request_id(&headers)?).await?))
    }

    #[utoipa::path(post, path = "/v1/apps/{id}/rollback", operation_id = "rollback_app", tag = "apps", request_body(content = Option<RollbackInput>, description = "Empty: the previous version"), params(("id" = String, Path, pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", description = "App id"), IdempotencyKey), responses((status = 200, body = AppView)))]
    pub async fn rollback(
        State(node): Ctx,
        headers: HeaderMap,
        Path(id): Path<String>,
        RawBody(body): RawBody,
    ) -> Result<impl IntoResponse, ApiError> {
        // No body, or `null`: the previous version.
        let input: RollbackInput = if body.iter().all(u8::is_ascii_whitespace) {
            RollbackInput::default()
        } else {
            parse_json::<Option<RollbackInput>>(&body)?.unwrap_or_default()
        };
        Ok(Json(node.rollback_app(&id, input.version, request_id(&headers)?).await?))
    }

    #[utoipa::path(post, path = "/v1/apps/{id}/restart", operation_id = "restart_app", tag = "apps", params(("id" = String, Path, pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", description = "App id"), IdempotencyKey), responses((status = 200, description = "A rolling restart began", body = AppView)))]
    pub async fn restart(
        State(node): Ctx,
        headers: HeaderMap,
        Path(id): Path<String>,
    ) -> Result<impl IntoResponse, ApiError> {
        Ok(Json(node.restart_app(&id, request_id(&headers)?).await?))
    }

    #[utoipa::path(get, path = "/v1/apps/{id}/versions", operation_id = "app_versions", tag = "apps", params(("id" = String, Path, pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", description = "App id"), Stale), responses((status = 200, body = Vec<VersionView>)))]
    pub async fn versions(
        State(node): Ctx,
        Path(id): Path<String>,
        stale: Stale,
    ) -> Result<impl IntoResponse, ApiError> {
        Ok(Json(node.app_versions(&id, stale.get()).await?))
    }

    #[utoipa::path(get, path = "/v1/instances", operation_id = "list_instances", tag = "instances", params(InstancesQuery), responses((status = 200, body = Vec<InstanceView>)))]
    pub async fn instances(State(node): Ctx, RawQuery(q): RawQuery) -> Result<impl IntoResponse, ApiError> {
        let app = query_param(&q, "app").filter(|a| !a.is_empty());
        Ok(Json(node.list_instances(app, flag(&q, "stale")?).await?))
    }

    #[utoipa::path(get, path = "/v1/hosts", operation_id = "list_hosts", tag = "hosts", params(Stale), responses((status = 200, body = Vec<HostView>)))]
    pub async fn hosts(State(node): Ctx, stale: Stale) -> Result<impl IntoResponse, ApiError> {
        Ok(Json(node.list_hosts(stale.get()).await?))
    }

    fn host_id(id: &str) -> Result<u64, ApiError> {
        id.parse().map_err(|_| ApiError::invalid("invalid_request", format!("{id:?} is not a host id")))
    }

    #[utoipa::path(post, path = "/v1/hosts/{id}/drain", operation_id = "drain_host", tag = "hosts", params(("id" = u64, Path, description = "Host (node) id"), IdempotencyKey), responses((status = 200, body = HostView)))]
    pub async fn drain(
        State(node): Ctx,
        headers: HeaderMap,
        Path(id): Path<String>,
    ) -> Result<impl IntoResponse, ApiError> {
        Ok(Json(node.set_draining(host_id(&id)?, true, request_id(&headers)?).await?))
    }

    #[utoipa::path(post, path = "/v1/hosts/{id}/eligible", operation_id = "make_host_eligible", tag = "hosts", params(("id" = u64, Path, description = "Host (node) id"), IdempotencyKey), responses((status = 200, body = HostView)))]
    pub async fn eligible(
        State(node): Ctx,
        headers: HeaderMap,
        Path(id): Path<String>,
    ) -> Result<impl IntoResponse, ApiError> {
        Ok(Json(node.set_draining(host_id(&id)?, false, request_id(&headers)?).await?))
    }

    #[utoipa::path(get, path = "/v1/deployments", operation_id = "list_deployments", tag = "apps", params(Stale), responses((status = 200, body = Vec<DeploymentView>)))]
    pub async fn deployments(State(node): Ctx, stale: Stale) -> Result<impl IntoResponse, ApiError> {
        Ok(Json(node.list_deployments(stale.get()).await?))
    }

    #[utoipa::path(delete, path = "/v1/deployments/{id}", operation_id = "cancel_deployment", tag = "apps", params(("id" = u64, Path, description = "Deployment id"), IdempotencyKey), responses((status = 200, description = "Cancelled: the app rolls back to the version before", body = AppView)))]
    pub async fn cancel_deployment(
        State(node): Ctx,
        headers: HeaderMap,
        Path(id): Path<String>,
    ) -> Result<impl IntoResponse, ApiError> {
        let id: u64 =
            id.parse().map_err(|_| ApiError::invalid("invalid_request", format!("{id:?} is not a deployment id")))?;
        Ok(Json(node.cancel_deployment(id, request_id(&headers)?).await?))
    }

    /// Where instance `id` runs: None when on this node, else the HTTP address of its
    /// host, to proxy to. A request already proxied once is never proxied again (the
    /// replicas may briefly disagree about where an instance is).
    fn remote_host(node: &Node, id: &str, headers: &HeaderMap) -> Result<Option<String>, ApiError> {
        let (inst, http) = node.instance_location(id)?;
        let Some(host) = inst.host else {
            return Err(ApiError::conflict(
                "instance_not_placed",
                format!("instance {id} runs on no host (it is {:?})", inst.state),
            ));
        };
        if host == node.id {
            return Ok(None);
        }
        if headers.contains_key("x-berth-proxied") {
            return Err(ApiError::conflict(
                "instance_moved",
                format!("instance {id} is not on node {} any more", node.id),
            ));
        }
        http.map(Some)
            .ok_or_else(|| ApiError::unavailable("host_unknown", format!("host {host} has not registered its address")))
    }

    /// The headers of a request proxied to another node: the mark that it was, and the
    /// caller's token (the host checks it again).
    fn forwarded(headers: &HeaderMap, from: u64) -> reqwest::header::HeaderMap {
        let mut out = reqwest::header::HeaderMap::new();
        out.insert("x-berth-proxied", from.into());
        if let Some(auth) = headers.get(axum::http::header::AUTHORIZATION) {
            if let Ok(v) = reqwest::header::HeaderValue::from_bytes(auth.as_bytes()) {
                out.insert(reqwest::header::AUTHORIZATION, v);
            }
        }
        out
    }

    /// Runs a command in the instance; proxied to the host that runs it.
    #[utoipa::path(post, path = "/v1/instances/{id}/exec", operation_id = "exec_instance", tag = "instances", request_body = ExecInput, params(("id" = String, Path, description = "Instance id")), responses((status = 200, body = ExecOutput)))]
    pub async fn exec(
        State(node): Ctx,
        headers: HeaderMap,
        Path(id): Path<String>,
        RawBody(body): RawBody,
    ) -> Result<Response, ApiError> {
        let input: ExecInput = parse_json(&body)?;
        let Some(http) = remote_host(&node, &id, &headers)? else {
            return Ok(Json(node.exec_here(&id, &input).await?).into_response());
        };
        let resp = node
            .http_client
            .post(format!("{}/v1/instances/{id}/exec", node.peer_url(&http)))
            .headers(forwarded(&headers, node.id))
            .body(body)
            .send()
            .await
            .map_err(|e| {
                ApiError::unavailable("host_unreachable", format!("the host at {http} does not answer: {e}"))
            })?;
        let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        let bytes = resp.bytes().await.unwrap_or_default();
        Ok((status, [(axum::http::header::CONTENT_TYPE, "application/json")], bytes).into_response())
    }

    /// The instance's output, streamed; proxied to the host that runs it.
    #[utoipa::path(get, path = "/v1/instances/{id}/logs", operation_id = "instance_logs", tag = "instances", params(("id" = String, Path, description = "Instance id"), LogsQuery), responses((status = 200, description = "The output, as text", content_type = "text/plain", body = String)))]
    pub async fn logs(
        State(node): Ctx,
        headers: HeaderMap,
        Path(id): Path<String>,
        RawQuery(q): RawQuery,
    ) -> Result<Response, ApiError> {
        let follow = flag(&q, "follow")?;
        let tail = match query_param(&q, "tail") {
            None | Some("all") => usize::MAX,
            Some(t) => match t.parse::<usize>() {
                Ok(n) if n <= MAX_LOG_TAIL => n,
                Ok(n) => {
                    return Err(ApiError::invalid(
                        "invalid_request",
                        format!("tail: {n} is more than {MAX_LOG_TAIL} lines; ask for `all` to stream everything"),
                    ))
                }
                Err(_) => return Err(ApiError::invalid("invalid_request", format!("tail: {t:?} is not a number"))),
            },
        };
        let text = [(axum::http::header::CONTENT_TYPE, "text/plain; charset=utf-8")];
        let Some(http) = remote_host(&node, &id, &headers)? else {
            let stream = node.runtime.logs(&id, tail, follow).await.map_err(|e| ApiError::internal(e.to_string()))?;
            return Ok((text, axum::body::Body::from_stream(stream)).into_response());
        };
        let url = format!("{}/v1/instances/{id}/logs?{}", node.peer_url(&http), q.unwrap_or_default());
        let resp = node.http_client.get(&url).headers(forwarded(&headers, node.id)).send().await.map_err(|e| {
            ApiError::unavailable("host_unreachable", format!("the host at {http} does not answer: {e}"))
        })?;
        let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        let body = axum::body::Body::from_stream(resp.bytes_stream());
        Ok((status, text, body).into_response())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_query_parses() {
        let stale = |q: Option<&str>| flag(&q.map(str::to_string), "stale");
        assert!(!stale(None).unwrap());
        assert!(stale(Some("stale=true")).unwrap());
        assert!(stale(Some("a=b&stale")).unwrap());
        assert!(!stale(Some("stale=false")).unwrap());
        assert_eq!(stale(Some("stale=maybe")).unwrap_err().status, 400);
    }

    #[test]
    fn json_errors_name_the_problem() {
        let e = parse_json::<PoolInput>(br#"{"name":"a","subnet":"10.0.0.0/24","colour":1}"#).unwrap_err();
        assert_eq!((e.status, e.code.as_str()), (400, "invalid_request"));
        assert!(e.message.contains("unknown field `colour`"), "{}", e.message);
        let e = parse_json::<PoolInput>(br#"{"name":"a""#).unwrap_err();
        assert_eq!(e.code, "invalid_json");
        let e = parse_json::<PoolInput>(b"  ").unwrap_err();
        assert!(e.message.contains("empty"));
        let e = parse_json::<PoolInput>(br#"{"name":"a"}"#).unwrap_err();
        assert!(e.message.contains("missing field `subnet`"), "{}", e.message);
    }

    #[test]
    fn idempotency_keys_are_namespaced_and_bounded() {
        let mut h = HeaderMap::new();
        assert_eq!(request_id(&h).unwrap(), None);
        h.insert("idempotency-key", "abc".parse().unwrap());
        assert_eq!(request_id(&h).unwrap().as_deref(), Some("key:abc"));
        h.insert("idempotency-key", "x".repeat(200).parse().unwrap());
        assert_eq!(request_id(&h).unwrap_err().status, 400);
        h.insert("idempotency-key", "a b".parse().unwrap());
        assert_eq!(request_id(&h).unwrap_err().status, 400, "a space is not visible ASCII");
    }
}
