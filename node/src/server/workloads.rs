//! The app, instance, host and deployment operations of the API (HTTP and CLI), and
//! the views they answer with.

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::Node;
use crate::error::ApiError;
use crate::state::apps::spec::AppSpec;
use crate::state::apps::{App, Deployment, Health, Instance, InstanceState};
use crate::state::nodes::HostState;
use crate::state::{Command, Reply, State};

/// Milliseconds since the epoch as RFC 3339.
pub fn time(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct DeploymentView {
    pub id: u64,
    pub app: String,
    pub from_version: Option<u64>,
    pub to_version: u64,
    pub started_at: String,
    /// Instances already at `to_version` and healthy.
    pub updated: usize,
    pub total: u32,
    /// Why the rollout cannot go on, when it is stuck (it still can be rolled back or
    /// cancelled, or unblocked by a new version, a scale or a new host).
    pub blocked: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct AppView {
    pub id: String,
    pub version: u64,
    /// Desired number of instances.
    pub instances: u32,
    /// Instances placed on a host.
    pub placed: usize,
    pub running: usize,
    pub healthy: usize,
    pub created_at: String,
    pub updated_at: String,
    pub deployment: Option<DeploymentView>,
    /// Why instances are pending, when they are.
    pub pending_reason: Option<String>,
    pub spec: AppSpec,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct VersionView {
    pub version: u64,
    pub created_at: String,
    pub spec: AppSpec,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct InstanceView {
    pub id: String,
    pub app: String,
    pub version: u64,
    pub host: Option<u64>,
    pub ip: Option<String>,
    pub state: InstanceState,
    pub health: Health,
    pub restarts: u32,
    pub message: Option<String>,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct HostView {
    pub id: u64,
    pub state: HostState,
    pub runtime: String,
    pub cpus: f64,
    pub mem_mb: u64,
    pub cpus_used: f64,
    pub mem_mb_used: u64,
    pub instances: usize,
    pub labels: BTreeMap<String, String>,
    pub http: String,
    /// Silence after which the leader declares this host down (its `--host-deadline-s`).
    pub deadline_s: f64,
}

/// The body of `POST /v1/instances/{id}/exec`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecInput {
    pub cmd: Vec<String>,
    /// Seconds before the command is abandoned (default 30).
    #[serde(default)]
    pub timeout_s: Option<u64>,
}

/// What `POST /v1/instances/{id}/exec` answers.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExecOutput {
    pub exit_code: i64,
    pub output: String,
}

/// The body of `POST /v1/apps/{id}/scale`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScaleInput {
    #[schema(maximum = 1_000_000)]
    pub instances: u32,
}

/// The body of `POST /v1/apps/{id}/rollback` (empty: the previous version).
#[derive(Debug, Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackInput {
    #[serde(default)]
    pub version: Option<u64>,
}

fn host_view(s: &State, n: &crate::state::nodes::NodeInfo) -> HostView {
    let (cpus_used, mem_mb_used) = s.host_usage(n.id);
    HostView {
        id: n.id,
        state: s.nodes.state(n.id),
        runtime: n.runtime.clone(),
        cpus: n.cpus,
        mem_mb: n.mem_mb,
        cpus_used: (cpus_used * 1000.0).round() / 1000.0,
        mem_mb_used,
        instances: s.apps.on_host(n.id).count(),
        labels: n.labels.clone(),
        http: n.http.clone(),
        deadline_s: n.host_deadline_ms as f64 / 1000.0,
    }
}

fn deployment_view(state: &State, app: &App, d: &Deployment) -> DeploymentView {
    let has_check = app.spec().health_check.is_some();
    DeploymentView {
        id: d.id,
        app: d.app.clone(),
        from_version: d.from,
        to_version: d.to,
        started_at: time(d.started_at),
        updated: state
            .apps
            .instances_of(&app.id)
            .filter(|i| !i.surge && i.version == d.to && i.is_healthy(has_check))
            .count(),
        total: app.instances,
        blocked: d.blocked.clone(),
    }
}

pub fn app_view(state: &State, app: &App) -> AppView {
    let has_check = app.spec().health_check.is_some();
    let live: Vec<&Instance> = state.apps.instances_of(&app.id).collect();
    let mut spec = app.spec().clone();
    spec.instances = app.instances;
    AppView {
        id: app.id.clone(),
        version: app.version,
        instances: app.instances,
        placed: live.iter().filter(|i| i.host.is_some()).count(),
        running: live.iter().filter(|i| i.state == InstanceState::Running).count(),
        healthy: live.iter().filter(|i| i.is_healthy(has_check)).count(),
        created_at: time(app.created_at),
        updated_at: time(app.updated_at),
        deployment: app.deployment.as_ref().map(|d| deployment_view(state, app, d)),
        pending_reason: app.pending_reason.clone(),
        spec,
    }
}

pub fn instance_view(i: &Instance) -> InstanceView {
    InstanceView {
        id: i.id.clone(),
        app: i.app.clone(),
        version: i.version,
        host: i.host,
        ip: i.ip.map(|ip| ip.to_string()),
        state: i.state,
        health: i.health,
        restarts: i.restarts,
        message: i.message.clone(),
        created_at: time(i.created_at),
    }
}

fn app_not_found(id: &str) -> ApiError {
    ApiError::not_found("app_not_found", format!("no app named {id:?}"))
}

/// Parses and checks an app spec sent for app `id` (JSON). A body without `id` takes
/// the path's.
pub fn parse_spec(id: &str, body: &[u8]) -> Result<AppSpec, ApiError> {
    let mut value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid("invalid_json", format!("the body is not valid JSON: {e}")))?;
    let obj =
        value.as_object_mut().ok_or_else(|| ApiError::invalid("invalid_spec", "the app spec must be a JSON object"))?;
    match obj.get("id") {
        None => {
            obj.insert("id".into(), serde_json::Value::String(id.to_string()));
        }
        Some(serde_json::Value::String(s)) if s == id => {}
        Some(other) => {
            return Err(ApiError::invalid("invalid_spec", format!("id: {other} does not match the path's {id:?}")));
        }
    }
    let bytes = serde_json::to_vec(&value).map_err(|e| ApiError::internal(e.to_string()))?;
    let spec = AppSpec::from_json(&bytes).map_err(|e| ApiError::invalid("invalid_spec", e))?;
    spec.validate().map_err(|e| ApiError::invalid("invalid_spec", e))?;
    Ok(spec)
}

impl Node {
    /// Views count over every instance of the app: off the async worker (see
    /// `berth_raft::blocking::run`), as a million instances take a while.
    fn read_app(&self, id: &str) -> Result<AppView, ApiError> {
        berth_raft::blocking::run(|| {
            let r = self.state.read();
            let app = r.state.apps.apps.get(id).ok_or_else(|| app_not_found(id))?;
            Ok(app_view(&r.state, app))
        })
    }

    /// Runs an app command through the leader, then answers with the app as this
    /// replica sees it once it caught up.
    async fn app_write(&self, cmd: Command, request_id: Option<String>) -> Result<(AppView, bool), ApiError> {
        let reply = self.proposer.write(cmd, request_id).await?.0.map_err(ApiError::from)?;
        let (id, created) = match reply {
            Reply::App { id, created, .. } => (id, created),
            other => return Err(ApiError::internal(format!("unexpected reply {other:?}"))),
        };
        self.proposer.linearize().await?;
        Ok((self.read_app(&id)?, created))
    }

    /// Refuses more instances than this node's `--max-instances-per-app` allows.
    fn check_instances(&self, code: &str, instances: u32) -> Result<(), ApiError> {
        let limit = self.config.max_instances_per_app;
        if instances > limit {
            return Err(ApiError::invalid(
                code,
                format!("instances: {instances} is more than this cluster allows per app ({limit}, --max-instances-per-app)"),
            ));
        }
        Ok(())
    }

    pub async fn put_app(&self, spec: AppSpec, request_id: Option<String>) -> Result<(AppView, bool), ApiError> {
        self.check_instances("invalid_spec", spec.instances)?;
        self.app_write(Command::PutApp { spec }, request_id).await
    }

    /// Creates an app; `app_exists` (409) if there is one with its id already.
    pub async fn create_app(&self, spec: AppSpec, request_id: Option<String>) -> Result<AppView, ApiError> {
        self.check_instances("invalid_spec", spec.instances)?;
        Ok(self.app_write(Command::CreateApp { spec }, request_id).await?.0)
    }

    pub async fn scale_app(&self, id: &str, instances: u32, request_id: Option<String>) -> Result<AppView, ApiError> {
        self.check_instances("invalid_request", instances)?;
        let cmd = Command::ScaleApp { id: id.to_string(), instances };
        Ok(self.app_write(cmd, request_id).await?.0)
    }

    pub async fn rollback_app(
        &self,
        id: &str,
        version: Option<u64>,
        request_id: Option<String>,
    ) -> Result<AppView, ApiError> {
        let cmd = Command::RollbackApp { id: id.to_string(), version };
        Ok(self.app_write(cmd, request_id).await?.0)
    }

    /// A rolling restart: every instance replaced (in place, same IPs) as the app's
    /// `upgrade` allows.
    pub async fn restart_app(&self, id: &str, request_id: Option<String>) -> Result<AppView, ApiError> {
        Ok(self.app_write(Command::RestartApp { id: id.to_string() }, request_id).await?.0)
    }

    pub async fn delete_app(&self, id: &str, request_id: Option<String>) -> Result<AppView, ApiError> {
        self.proposer.linearize().await?;
        let view = self.read_app(id)?;
        self.proposer.write(Command::DeleteApp { id: id.to_string() }, request_id).await?.0.map_err(ApiError::from)?;
        Ok(view)
    }

    pub async fn get_app(&self, id: &str, stale: bool) -> Result<AppView, ApiError> {
        self.read_barrier(stale).await?;
        self.read_app(id)
    }

    pub async fn list_apps(&self, stale: bool) -> Result<Vec<AppView>, ApiError> {
        self.read_barrier(stale).await?;
        berth_raft::blocking::run(|| {
            let r = self.state.read();
            Ok(r.state.apps.apps.values().map(|a| app_view(&r.state, a)).collect())
        })
    }

    pub async fn app_versions(&self, id: &str, stale: bool) -> Result<Vec<VersionView>, ApiError> {
        self.read_barrier(stale).await?;
        let r = self.state.read();
        let app = r.state.apps.apps.get(id).ok_or_else(|| app_not_found(id))?;
        Ok(app
            .versions
            .iter()
            .map(|v| VersionView { version: v.version, created_at: time(v.created_at), spec: v.spec.clone() })
            .collect())
    }

    pub async fn list_instances(&self, app: Option<&str>, stale: bool) -> Result<Vec<InstanceView>, ApiError> {
        self.read_barrier(stale).await?;
        berth_raft::blocking::run(|| {
            let r = self.state.read();
            // By app, then creation order: the order the state keeps them in.
            let list: Vec<&Instance> = match app {
                Some(a) => {
                    if !r.state.apps.apps.contains_key(a) && r.state.apps.instances_of(a).next().is_none() {
                        return Err(app_not_found(a));
                    }
                    r.state.apps.instances_of(a).collect()
                }
                None => r.state.apps.instances().collect(),
            };
            Ok(list.into_iter().map(instance_view).collect())
        })
    }

    pub async fn list_hosts(&self, stale: bool) -> Result<Vec<HostView>, ApiError> {
        self.read_barrier(stale).await?;
        let r = self.state.read();
        Ok(r.state.nodes.registered.values().map(|n| host_view(&r.state, n)).collect())
    }

    /// Drains host `id` (`draining`: its instances move elsewhere as `min_healthy`
    /// allows, new work avoids it), or makes it eligible again.
    pub async fn set_draining(
        &self,
        id: u64,
        draining: bool,
        request_id: Option<String>,
    ) -> Result<HostView, ApiError> {
        self.proposer.write(Command::SetDraining { id, draining }, request_id).await?.0.map_err(ApiError::from)?;
        self.proposer.linearize().await?;
        let r = self.state.read();
        let n = r
            .state
            .nodes
            .registered
            .get(&id)
            .ok_or_else(|| ApiError::not_found("host_not_found", format!("no host {id}")))?;
        Ok(host_view(&r.state, n))
    }

    pub async fn list_deployments(&self, stale: bool) -> Result<Vec<DeploymentView>, ApiError> {
        self.read_barrier(stale).await?;
        let r = self.state.read();
        Ok(r.state
            .apps
            .apps
            .values()
            .filter_map(|a| a.deployment.as_ref().map(|d| deployment_view(&r.state, a, d)))
            .collect())
    }

    /// Cancels rollout `id`: rolls the app back to the version it started from.
    pub async fn cancel_deployment(&self, id: u64, request_id: Option<String>) -> Result<AppView, ApiError> {
        self.proposer.linearize().await?;
        let app = {
            let r = self.state.read();
            r.state
                .apps
                .apps
                .values()
                .find(|a| a.deployment.as_ref().map(|d| d.id) == Some(id))
                .map(|a| a.id.clone())
                .ok_or_else(|| ApiError::not_found("deployment_not_found", format!("no rollout {id} in progress")))?
        };
        Ok(self.app_write(Command::CancelDeployment { app }, request_id).await?.0)
    }

    /// Runs a command in an instance on this host.
    pub async fn exec_here(&self, id: &str, input: &ExecInput) -> Result<ExecOutput, ApiError> {
        if input.cmd.is_empty() || input.cmd[0].is_empty() {
            return Err(ApiError::invalid("invalid_request", "cmd: needs a program"));
        }
        let task = {
            let r = self.state.read();
            let i = r
                .state
                .apps
                .instance(id)
                .ok_or_else(|| ApiError::not_found("instance_not_found", format!("no instance {id:?}")))?;
            crate::agent::task_for(&r.state, i)
        };
        let timeout = Duration::from_secs(input.timeout_s.unwrap_or(30).clamp(1, 3600));
        let (exit_code, out) = self.runtime.exec(&task, &input.cmd, timeout).await.map_err(|e| match e {
            crate::agent::runtime::RuntimeError::Unavailable(m) => ApiError::unavailable("runtime_unavailable", m),
            other => ApiError::conflict("exec_failed", other.to_string()),
        })?;
        Ok(ExecOutput { exit_code, output: String::from_utf8_lossy(&out).into_owned() })
    }

    /// The instance (by id) and the HTTP address of the host that runs it.
    pub fn instance_location(&self, id: &str) -> Result<(Instance, Option<String>), ApiError> {
        let r = self.state.read();
        let i = r
            .state
            .apps
            .instance(id)
            .cloned()
            .ok_or_else(|| ApiError::not_found("instance_not_found", format!("no instance {id:?}")))?;
        let http = i.host.and_then(|h| r.state.nodes.registered.get(&h)).map(|n| n.http.clone());
        Ok((i, http))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_ids_come_from_the_path_and_must_match() {
        let s = parse_spec("web", br#"{"cmd":["sleep","1"]}"#).unwrap();
        assert_eq!(s.id, "web");
        let e = parse_spec("web", br#"{"id":"api","cmd":["sleep","1"]}"#).unwrap_err();
        assert!(e.message.starts_with("id: \"api\" does not match"), "{}", e.message);
        let e = parse_spec("web", br#"{"cmd":["sleep","1"],"cpus":-1}"#).unwrap_err();
        assert_eq!((e.status, e.code.as_str()), (400, "invalid_spec"));
        assert!(e.message.starts_with("cpus:"), "{}", e.message);
        let e = parse_spec("web", br#"[1]"#).unwrap_err();
        assert!(e.message.contains("JSON object"));
    }

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(time(0), "1970-01-01T00:00:00.000Z");
    }
}
