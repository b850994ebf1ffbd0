//! Marathon's REST API (`/v2`), the subset its clients and deploy jobs use, served by
//! every node over berth's own operations — see docs/api.md, "Marathon /v2".
//!
//! Apps (`GET/POST /v2/apps`, `GET/PUT/DELETE /v2/apps/{id}`, `/restart`,
//! `/versions`, `/versions/{v}`, `/tasks`), `GET /v2/tasks`, `GET/DELETE
//! /v2/deployments`, `GET /v2/info`, `GET /v2/leader`, `GET /ping`. Marathon's rules
//! where they are observable: `PUT` is a partial update by default
//! (`?partialUpdate=false` replaces), creates a missing app, and is refused with 409
//! while the app is in a rollout unless `?force=true`; `PUT {"version": V}` rolls back
//! to V; errors are `{"message", "details"}` with 422 for an invalid app. App ids are
//! paths (`/team/shop`); the translation of fields is in [`model`].

pub mod model;

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, delete, get};
use axum::{Json, Router};
use serde_json::{json, Value};

use self::model::{app_json, berth_id, deployment_id, deployment_json, normalize_id, spec_json, task_json, version_id};
use super::http::{query_values, request_id, RawBody};
use super::Node;
use crate::error::ApiError;
use crate::state::apps::spec::AppSpec;
use crate::state::apps::App;

type Ctx = State<Arc<Node>>;

/// The Marathon API version these endpoints follow (`GET /v2/info`).
const MARATHON_VERSION: &str = "1.11.0";

/// An error in Marathon's shape: `{"message", "details"?}`.
pub struct MarathonError {
    status: StatusCode,
    body: Value,
}

impl MarathonError {
    fn new(status: u16, message: impl Into<String>) -> Self {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        MarathonError { status, body: json!({ "message": message.into() }) }
    }

    /// 422 with one detail, as Marathon reports an invalid app.
    fn invalid(e: model::Invalid) -> Self {
        MarathonError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            body: json!({
                "message": format!("Object is not valid: {}: {}", e.path, e.error),
                "details": [{"path": e.path, "errors": [e.error]}],
            }),
        }
    }
}

impl From<ApiError> for MarathonError {
    fn from(e: ApiError) -> Self {
        let status = match (e.status, e.code.as_str()) {
            (400, "invalid_json" | "invalid_request") => 400,
            (400, _) => 422,
            (s, _) => s,
        };
        MarathonError::new(status, e.message)
    }
}

impl IntoResponse for MarathonError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

type MResult = Result<Response, MarathonError>;

/// An app as `PUT` finds it.
struct Found {
    berth: String,
    json: Value,
    /// (Marathon version id, berth version).
    versions: Vec<(String, u64)>,
    /// Marathon says `maximumOverCapacity` as a fraction of the instances; a partial
    /// update that does not touch `upgradeStrategy` keeps berth's own, or a scale would
    /// round it into a new version (and restart everything).
    upgrade: crate::state::apps::spec::Upgrade,
}

pub fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/ping", get(|| async { "pong" }))
        .route("/v2/info", get(info))
        .route("/v2/leader", get(leader))
        .route("/v2/apps", get(list_apps).post(create_app))
        .route("/v2/apps/{*path}", any(app_path))
        .route("/v2/tasks", get(tasks))
        .route("/v2/deployments", get(deployments))
        .route("/v2/deployments/{id}", delete(cancel_deployment))
}

/// A boolean parameter as Marathon clients send it (`true`, `True`, `1`).
fn param_flag(query: &Option<String>, key: &str) -> bool {
    query_values(query, key).last().is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

fn embeds_tasks(query: &Option<String>) -> bool {
    query_values(query, "embed").iter().any(|e| e == "apps.tasks" || e == "app.tasks")
}

fn no_app(id: &str) -> MarathonError {
    MarathonError::new(404, format!("App '{id}' does not exist"))
}

/// The JSON body of a write: 400 in Marathon's shape when it is not JSON.
fn body_json(body: &[u8]) -> Result<Value, MarathonError> {
    serde_json::from_slice(body).map_err(|e| MarathonError {
        status: StatusCode::BAD_REQUEST,
        body: json!({"message": "Invalid JSON", "details": [{"path": "/", "errors": [e.to_string()]}]}),
    })
}

/// The berth spec of a Marathon app body for Marathon id `id`, checked as berth checks
/// every spec.
fn spec_for(body: Value, id: &str) -> Result<AppSpec, MarathonError> {
    let app = model::parse(body).map_err(MarathonError::invalid)?;
    if let Some(given) = &app.id {
        let given = normalize_id(given).map_err(MarathonError::invalid)?;
        if given != id {
            return Err(MarathonError::invalid(model::Invalid {
                path: "/id".into(),
                error: format!("{given} does not match the path's {id}"),
            }));
        }
    }
    let spec = model::to_spec(&app, id).map_err(MarathonError::invalid)?;
    let bytes = serde_json::to_vec(&spec).map_err(|e| MarathonError::new(500, e.to_string()))?;
    let spec = AppSpec::from_json(&bytes).map_err(|e| MarathonError::new(422, e))?;
    spec.validate().map_err(|e| MarathonError::new(422, e))?;
    Ok(spec)
}

/// Reads the replica after a read barrier (linearizable, as berth's reads), off the
/// async worker like the `/v1` views (`berth_raft::blocking::run`): `/v2/apps` and
/// `/v2/tasks` walk every instance, which at a million takes a while.
async fn read<T>(node: &Node, f: impl FnOnce(&crate::state::State) -> T) -> Result<T, MarathonError> {
    node.read_barrier(false).await?;
    Ok(berth_raft::blocking::run(|| f(&node.state.read().state)))
}

/// The app berth keeps for Marathon id `id`; 404 when there is none, 409 when its berth
/// id belongs to an app with another Marathon id (`/a/b` and `/a-b` share `a-b`).
fn find<'a>(state: &'a crate::state::State, id: &str) -> Result<Option<&'a App>, MarathonError> {
    match state.apps.apps.get(&berth_id(id)) {
        None => Ok(None),
        Some(app) if model::marathon_id(app.spec()) == id => Ok(Some(app)),
        Some(app) => Err(MarathonError::new(
            409,
            format!("{id} maps to berth app {:?}, which is {}", app.id, model::marathon_id(app.spec())),
        )),
    }
}

/// 409 while an app is in a rollout, unless forced: Marathon's deployment lock.
fn unlocked(app: &App, force: bool) -> Result<(), MarathonError> {
    match &app.deployment {
        Some(d) if !force => Err(MarathonError {
            status: StatusCode::CONFLICT,
            body: json!({
                "message": format!(
                    "App is locked by one or more deployments. Override with the option '?force=true'. \
                     View details at '/v2/deployments/{}'.", d.id),
                "deployments": [{"id": d.id.to_string()}],
            }),
        }),
        _ => Ok(()),
    }
}

/// `{"deploymentId", "version"}` for app `berth` as the replica sees it now.
fn deployment_answer(state: &crate::state::State, berth: &str, status: StatusCode) -> MResult {
    let app = state.apps.apps.get(berth).ok_or_else(|| no_app(berth))?;
    let id = deployment_id(state, app).unwrap_or_else(|| format!("scale-{berth}"));
    Ok((status, Json(json!({"deploymentId": id, "version": version_id(app.current())}))).into_response())
}

async fn info(State(node): Ctx) -> MResult {
    let cluster = node.cluster_view(true).await?;
    let leader = cluster.leader.and_then(|l| cluster.members.iter().find(|m| m.id == l)).and_then(|m| m.http.clone());
    let me = node.id;
    Ok(Json(json!({
        "name": "berth",
        "version": MARATHON_VERSION,
        "buildref": format!("berth {}", env!("CARGO_PKG_VERSION")),
        "elected": leader.is_some(),
        "leader": leader,
        "frameworkId": "berth",
        "marathon_config": {"framework_name": "berth", "ha": true, "hostname": format!("berth-node-{me}")},
        "zookeeper_config": {},
        "http_config": {},
    }))
    .into_response())
}

async fn leader(State(node): Ctx) -> MResult {
    // This node's view: a linearizable read would fail, not answer 404, without one.
    let cluster = node.cluster_view(true).await?;
    let leader = cluster.leader.and_then(|l| cluster.members.iter().find(|m| m.id == l)).and_then(|m| m.http.clone());
    match leader {
        Some(l) => Ok(Json(json!({ "leader": l })).into_response()),
        None => Err(MarathonError::new(404, "There is no leader")),
    }
}

async fn list_apps(State(node): Ctx, RawQuery(q): RawQuery) -> MResult {
    let embed = embeds_tasks(&q);
    let id_filter = query_values(&q, "id").pop();
    let cmd_filter = query_values(&q, "cmd").pop();
    let apps = read(&node, |s| {
        s.apps
            .apps
            .values()
            .filter(|a| id_filter.as_ref().is_none_or(|f| model::marathon_id(a.spec()).contains(f.as_str())))
            .map(|a| app_json(s, a, embed))
            .filter(|a| cmd_filter.as_ref().is_none_or(|f| a["cmd"].as_str().is_some_and(|c| c.contains(f.as_str()))))
            .collect::<Vec<Value>>()
    })
    .await?;
    Ok(Json(json!({ "apps": apps })).into_response())
}

async fn create_app(State(node): Ctx, headers: HeaderMap, RawBody(body): RawBody) -> MResult {
    let body = body_json(&body)?;
    let id = match body.get("id").and_then(Value::as_str) {
        Some(id) => normalize_id(id).map_err(MarathonError::invalid)?,
        None => return Err(MarathonError::invalid(model::Invalid { path: "/id".into(), error: "is required".into() })),
    };
    let exists = || MarathonError::new(409, format!("An app with id [{id}] already exists."));
    // Also tells an id that maps onto another app's (`find`); the creation itself is
    // refused at apply if the app appeared meanwhile.
    if read(&node, |s| find(s, &id).map(|a| a.is_some())).await?? {
        return Err(exists());
    }
    let spec = spec_for(body, &id)?;
    let berth = spec.id.clone();
    match node.create_app(spec, request_id(&headers)?).await {
        Err(e) if e.code == "app_exists" => return Err(exists()),
        r => r?,
    };
    let replica = node.state.read();
    let app = replica.state.apps.apps.get(&berth).ok_or_else(|| no_app(&id))?;
    Ok((StatusCode::CREATED, Json(app_json(&replica.state, app, false))).into_response())
}

/// `/v2/apps/{id}[/restart|/versions[/{v}]|/tasks]`: app ids hold `/`, so the suffix
/// is told apart here, as Marathon does.
async fn app_path(
    State(node): Ctx,
    method: Method,
    headers: HeaderMap,
    Path(path): Path<String>,
    RawQuery(q): RawQuery,
    RawBody(body): RawBody,
) -> MResult {
    let path = path.trim_matches('/');
    let (id, rest) = match path.rsplit_once('/') {
        Some((id, last @ ("restart" | "versions" | "tasks"))) => (id, vec![last]),
        _ => match path.rsplit_once("/versions/") {
            Some((id, v)) if !v.contains('/') => (id, vec!["versions", v]),
            _ => (path, vec![]),
        },
    };
    let id = normalize_id(id).map_err(MarathonError::invalid)?;
    match (method, rest.as_slice()) {
        (Method::GET, []) => {
            let embed = embeds_tasks(&q);
            let app = read(&node, |s| find(s, &id).map(|a| a.map(|a| app_json(s, a, embed)))).await??;
            Ok(Json(json!({ "app": app.ok_or_else(|| no_app(&id))? })).into_response())
        }
        (Method::PUT, []) => update_app(&node, &id, &q, &headers, &body).await,
        (Method::DELETE, []) => {
            let berth = read(&node, |s| -> Result<(String, String), MarathonError> {
                let app = find(s, &id)?.ok_or_else(|| no_app(&id))?;
                unlocked(app, param_flag(&q, "force"))?;
                Ok((app.id.clone(), version_id(app.current())))
            })
            .await??;
            node.delete_app(&berth.0, request_id(&headers)?).await?;
            Ok(Json(json!({"deploymentId": format!("delete-{}", berth.0), "version": berth.1})).into_response())
        }
        (Method::POST, ["restart"]) => {
            let berth = read(&node, |s| -> Result<String, MarathonError> {
                let app = find(s, &id)?.ok_or_else(|| no_app(&id))?;
                unlocked(app, param_flag(&q, "force"))?;
                Ok(app.id.clone())
            })
            .await??;
            node.restart_app(&berth, request_id(&headers)?).await?;
            deployment_answer(&node.state.read().state, &berth, StatusCode::OK)
        }
        (Method::GET, ["versions"]) => {
            let versions = read(&node, |s| {
                find(s, &id).map(|a| a.map(|a| a.versions.iter().rev().map(version_id).collect::<Vec<_>>()))
            })
            .await??
            .ok_or_else(|| no_app(&id))?;
            Ok(Json(json!({ "versions": versions })).into_response())
        }
        (Method::GET, ["versions", v]) => {
            let found = read(&node, |s| -> Result<Option<Value>, MarathonError> {
                let app = find(s, &id)?.ok_or_else(|| no_app(&id))?;
                Ok(app.versions.iter().find(|x| version_id(x) == *v).map(|x| {
                    let mut m = spec_json(&x.spec, x.spec.instances);
                    m.insert("version".into(), json!(version_id(x)));
                    Value::Object(m)
                }))
            })
            .await??;
            let app =
                found.ok_or_else(|| MarathonError::new(404, format!("App '{id}' does not exist in version {v}")))?;
            Ok(Json(app).into_response())
        }
        (Method::GET, ["tasks"]) => {
            let tasks = read(&node, |s| {
                find(s, &id).map(|a| {
                    a.map(|a| {
                        s.apps.instances_of(&a.id).filter(|i| i.host.is_some()).map(|i| task_json(s, a, i)).collect()
                    })
                })
            })
            .await??
            .ok_or_else(|| no_app(&id))?;
            let tasks: Vec<Value> = tasks;
            Ok(Json(json!({ "tasks": tasks })).into_response())
        }
        (m, r) => Err(MarathonError::new(
            405,
            format!(
                "{m} /v2/apps/{{id}}{} is not served (see docs/api.md, Marathon /v2)",
                r.first().map_or(String::new(), |r| format!("/{r}"))
            ),
        )),
    }
}

/// `PUT /v2/apps/{id}`: a rollback (`{"version": V}`), a partial update (default), a
/// replacement (`?partialUpdate=false`), or a create.
async fn update_app(node: &Node, id: &str, q: &Option<String>, headers: &HeaderMap, body: &[u8]) -> MResult {
    let body = body_json(body)?;
    let Value::Object(patch) = body else {
        return Err(MarathonError::new(400, "the body must be a JSON object"));
    };
    let force = param_flag(q, "force");
    let partial = query_values(q, "partialUpdate").last().is_none_or(|v| !v.eq_ignore_ascii_case("false"));
    let current = read(node, |s| -> Result<Option<Found>, MarathonError> {
        let Some(app) = find(s, id)? else { return Ok(None) };
        unlocked(app, force)?;
        let versions = app.versions.iter().map(|v| (version_id(v), v.version)).collect();
        Ok(Some(Found {
            berth: app.id.clone(),
            json: Value::Object(spec_json(app.spec(), app.instances)),
            versions,
            upgrade: app.spec().upgrade.clone(),
        }))
    })
    .await??;
    let rid = request_id(headers)?;
    if let Some(v) = patch.get("version").and_then(Value::as_str) {
        let Found { berth, versions, .. } = current.ok_or_else(|| no_app(id))?;
        let target = versions.iter().find(|(s, _)| s == v).map(|(_, n)| *n);
        let target =
            target.ok_or_else(|| MarathonError::new(404, format!("App '{id}' does not exist in version {v}")))?;
        node.rollback_app(&berth, Some(target), rid).await?;
        return deployment_answer(&node.state.read().state, &berth, StatusCode::OK);
    }
    let created = current.is_none();
    let keep_upgrade =
        current.as_ref().filter(|_| partial && !patch.contains_key("upgradeStrategy")).map(|f| f.upgrade.clone());
    let merged = match current {
        Some(Found { json: Value::Object(mut base), .. }) if partial => {
            // cmd and args replace each other, as do the two ways of naming a network.
            if patch.contains_key("cmd") || patch.contains_key("args") {
                base.remove("cmd");
                base.remove("args");
            }
            if patch.contains_key("ipAddress") {
                base.remove("networks");
            }
            base.extend(patch);
            Value::Object(base)
        }
        _ => Value::Object(patch),
    };
    let mut spec = spec_for(merged, id)?;
    if let Some(upgrade) = keep_upgrade {
        spec.upgrade = upgrade;
        spec.validate().map_err(|e| MarathonError::new(422, e))?;
    }
    let berth = spec.id.clone();
    node.put_app(spec, rid).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    deployment_answer(&node.state.read().state, &berth, status)
}

async fn tasks(State(node): Ctx, RawQuery(q): RawQuery) -> MResult {
    let status = query_values(&q, "status").pop();
    let tasks = read(&node, |s| {
        let mut out = Vec::new();
        for app in s.apps.apps.values() {
            for i in s.apps.instances_of(&app.id).filter(|i| i.host.is_some()) {
                let t = task_json(s, app, i);
                let wanted = match status.as_deref() {
                    Some("running") => t["state"] == "TASK_RUNNING",
                    Some("staging") => t["state"] == "TASK_STAGING" || t["state"] == "TASK_STARTING",
                    _ => true,
                };
                if wanted {
                    out.push(t);
                }
            }
        }
        out
    })
    .await?;
    Ok(Json(json!({ "tasks": tasks })).into_response())
}

async fn deployments(State(node): Ctx) -> MResult {
    let list = read(&node, |s| s.apps.apps.values().filter_map(|a| deployment_json(s, a)).collect::<Vec<_>>()).await?;
    Ok(Json(list).into_response())
}

/// `DELETE /v2/deployments/{id}`: a rollout is cancelled by rolling back (with or
/// without `?force=true`: berth never leaves an app between two versions on purpose).
async fn cancel_deployment(
    State(node): Ctx,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> MResult {
    let Ok(n) = id.parse::<u64>() else {
        let why = if id.starts_with("scale-") {
            "a scale cannot be cancelled; scale the app again".to_string()
        } else {
            format!("DeploymentPlan {id} does not exist")
        };
        return Err(MarathonError::new(if id.starts_with("scale-") { 409 } else { 404 }, why));
    };
    let view = node.cancel_deployment(n, request_id(&headers)?).await.map_err(|e| {
        if e.status == 404 {
            MarathonError::new(404, format!("DeploymentPlan {id} does not exist"))
        } else {
            e.into()
        }
    })?;
    if param_flag(&q, "force") {
        return Ok(StatusCode::ACCEPTED.into_response());
    }
    deployment_answer(&node.state.read().state, &view.id, StatusCode::OK)
}
