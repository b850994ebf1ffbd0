//! Marathon's app JSON and berth's app spec, both ways (pure: no I/O, unit-tested).
//!
//! What maps (docs/api.md, "Marathon /v2"): `id` (a path such as `/team/shop`, kept in
//! the label `marathon.id`; the berth id joins its parts with `-`), `cmd` (run by
//! `/bin/sh -c`) or `args`, `container.docker.image`, `instances`, `cpus`, `mem`,
//! `env`, `labels`, `constraints`, one entry of `healthChecks` (HTTP, TCP, COMMAND),
//! `upgradeStrategy`, `unreachableStrategy`, `taskKillGracePeriodSeconds`, and
//! `networks` (a `container` network names the IP pool). Fields that are Mesos's
//! business (disk, uris, backoff, roles…) are accepted and have no effect; a field
//! that would change behaviour berth does not have (volumes, privileged, secrets, a
//! forced pull) is refused, naming it. Unknown fields are refused as well.

use std::collections::BTreeMap;

use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::state::apps::spec::AppSpec;
use crate::state::apps::{App, Health, Instance, InstanceState, Version};
use crate::state::State;

/// The label that keeps an app's Marathon id.
pub const ID_LABEL: &str = "marathon.id";
/// Marathon's defaults where berth's differ.
const DEFAULT_CPUS: f64 = 1.0;
const DEFAULT_MEM: f64 = 128.0;

/// A validation failure: Marathon's `details` entry (`path` like `/healthChecks/0`).
#[derive(Debug, Clone, PartialEq)]
pub struct Invalid {
    pub path: String,
    pub error: String,
}

fn invalid(path: &str, error: impl Into<String>) -> Invalid {
    Invalid { path: path.to_string(), error: error.into() }
}

/// An app as Marathon clients send it. `Option<IgnoredAny>`: accepted, no effect.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MarathonApp {
    pub id: Option<String>,
    pub cmd: Option<String>,
    pub args: Option<Vec<String>>,
    pub container: Option<Container>,
    pub instances: Option<u32>,
    pub cpus: Option<f64>,
    pub mem: Option<f64>,
    pub env: Option<BTreeMap<String, Value>>,
    pub labels: Option<BTreeMap<String, String>>,
    pub constraints: Option<Vec<Vec<Value>>>,
    pub health_checks: Option<Vec<HealthCheck>>,
    pub upgrade_strategy: Option<UpgradeStrategy>,
    pub unreachable_strategy: Option<Value>,
    pub task_kill_grace_period_seconds: Option<u64>,
    pub networks: Option<Vec<Network>>,
    pub ip_address: Option<IpAddress>,
    pub port_definitions: Option<Vec<PortDefinition>>,
    pub ports: Option<Vec<u16>>,
    pub secrets: Option<BTreeMap<String, Value>>,
    /// Read by `PUT` only: roll back to this version.
    pub version: Option<String>,
    pub disk: Option<IgnoredAny>,
    pub gpus: Option<IgnoredAny>,
    pub backoff_seconds: Option<IgnoredAny>,
    pub backoff_factor: Option<IgnoredAny>,
    pub max_launch_delay_seconds: Option<IgnoredAny>,
    pub uris: Option<IgnoredAny>,
    pub fetch: Option<IgnoredAny>,
    pub store_urls: Option<IgnoredAny>,
    pub user: Option<IgnoredAny>,
    pub executor: Option<IgnoredAny>,
    pub accepted_resource_roles: Option<IgnoredAny>,
    pub role: Option<IgnoredAny>,
    pub require_ports: Option<IgnoredAny>,
    pub dependencies: Option<IgnoredAny>,
    pub kill_selection: Option<IgnoredAny>,
    pub readiness_checks: Option<IgnoredAny>,
    pub readiness_check_results: Option<IgnoredAny>,
    pub residency: Option<IgnoredAny>,
    pub task_rate_limit: Option<IgnoredAny>,
    // Read-only fields a client may send back after a GET.
    pub version_info: Option<IgnoredAny>,
    pub tasks_running: Option<IgnoredAny>,
    pub tasks_staged: Option<IgnoredAny>,
    pub tasks_healthy: Option<IgnoredAny>,
    pub tasks_unhealthy: Option<IgnoredAny>,
    pub deployments: Option<IgnoredAny>,
    pub tasks: Option<IgnoredAny>,
    pub last_task_failure: Option<IgnoredAny>,
    pub task_stats: Option<IgnoredAny>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Container {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub docker: Option<Docker>,
    pub port_mappings: Option<Vec<PortMapping>>,
    pub volumes: Option<Vec<Value>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Docker {
    pub image: Option<String>,
    pub network: Option<String>,
    pub port_mappings: Option<Vec<PortMapping>>,
    pub parameters: Option<Vec<Value>>,
    pub privileged: Option<bool>,
    pub force_pull_image: Option<bool>,
    pub pull_config: Option<IgnoredAny>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortMapping {
    pub container_port: Option<u16>,
    pub host_port: Option<IgnoredAny>,
    pub service_port: Option<IgnoredAny>,
    pub protocol: Option<IgnoredAny>,
    pub name: Option<IgnoredAny>,
    pub labels: Option<IgnoredAny>,
    pub network_names: Option<IgnoredAny>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortDefinition {
    pub port: Option<u16>,
    pub protocol: Option<IgnoredAny>,
    pub name: Option<IgnoredAny>,
    pub labels: Option<IgnoredAny>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HealthCheck {
    pub protocol: Option<String>,
    pub path: Option<String>,
    pub port: Option<u16>,
    pub port_index: Option<usize>,
    /// `{"value": "..."}` (Marathon) or a string (older clients).
    pub command: Option<Value>,
    pub grace_period_seconds: Option<u64>,
    pub interval_seconds: Option<u64>,
    pub timeout_seconds: Option<u64>,
    pub max_consecutive_failures: Option<u32>,
    pub delay_seconds: Option<IgnoredAny>,
    pub ignore_http1xx: Option<IgnoredAny>,
    pub ip_protocol: Option<IgnoredAny>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpgradeStrategy {
    pub minimum_health_capacity: Option<f64>,
    pub maximum_over_capacity: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Network {
    pub mode: Option<String>,
    pub name: Option<String>,
    pub labels: Option<IgnoredAny>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IpAddress {
    pub network_name: Option<String>,
    pub groups: Option<IgnoredAny>,
    pub labels: Option<IgnoredAny>,
    pub discovery: Option<IgnoredAny>,
}

/// Parses a Marathon app body, naming the field at fault.
pub fn parse(value: Value) -> Result<MarathonApp, Invalid> {
    serde_json::from_value(value).map_err(|e| invalid("/", e.to_string()))
}

/// A Marathon app id (`/team/shop`, `shop`, `/a.b`) as an absolute path, checked
/// against Marathon's rules for its parts.
pub fn normalize_id(id: &str) -> Result<String, Invalid> {
    let trimmed = id.trim_matches('/');
    let ok_label = |l: &str| {
        !l.is_empty()
            && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if trimmed.is_empty() || !trimmed.split('/').all(|part| part.split('.').all(ok_label)) {
        return Err(invalid(
            "/id",
            format!(
                "{id:?} is not a valid app id: path parts of lowercase letters, digits and hyphens, \
                 optionally dot-separated, not starting or ending with a hyphen"
            ),
        ));
    }
    Ok(format!("/{trimmed}"))
}

/// The berth id of a Marathon id: its parts joined with `-` (`/team/shop` → `team-shop`).
pub fn berth_id(marathon_id: &str) -> String {
    marathon_id.trim_matches('/').replace(['/', '.'], "-")
}

/// The Marathon id of a berth app: the one it was created with, else `/` + its id.
pub fn marathon_id(spec: &AppSpec) -> String {
    spec.labels.get(ID_LABEL).cloned().unwrap_or_else(|| format!("/{}", spec.id))
}

/// The app's port `index` (container port mappings, else port definitions, else
/// `ports`); the first is the app's `port`, what upstream feeds announce.
fn port_at(app: &MarathonApp, index: usize) -> Option<u16> {
    let container = app.container.as_ref();
    let mappings = container
        .and_then(|c| c.port_mappings.as_ref())
        .or_else(|| container.and_then(|c| c.docker.as_ref()).and_then(|d| d.port_mappings.as_ref()));
    let port = match mappings {
        Some(m) => m.get(index).and_then(|m| m.container_port),
        None => match &app.port_definitions {
            Some(d) => d.get(index).and_then(|d| d.port),
            None => app.ports.as_ref().and_then(|p| p.get(index).copied()),
        },
    };
    port.filter(|p| *p != 0)
}

fn port_of(app: &MarathonApp, hc: &HealthCheck, path: &str) -> Result<u16, Invalid> {
    if let Some(p) = hc.port {
        return Ok(p);
    }
    let index = hc.port_index.unwrap_or(0);
    port_at(app, index).ok_or_else(|| {
        invalid(
            path,
            format!(
                "portIndex {index} names no port: give the check a `port`, or the app the \
                 portDefinitions or container portMappings it indexes (berth has no random ports)"
            ),
        )
    })
}

fn health_check(app: &MarathonApp, checks: &[HealthCheck]) -> Result<Option<Value>, Invalid> {
    let Some(hc) = checks.first() else { return Ok(None) };
    if checks.len() > 1 {
        return Err(invalid("/healthChecks", format!("berth runs one health check per app, not {}", checks.len())));
    }
    let path = "/healthChecks/0";
    let protocol = hc.protocol.as_deref().unwrap_or("HTTP");
    let mut check = Map::new();
    match protocol {
        "HTTP" | "MESOS_HTTP" => {
            let port = port_of(app, hc, path)?;
            check.insert("http".into(), json!({"port": port, "path": hc.path.clone().unwrap_or_else(|| "/".into())}));
        }
        "TCP" | "MESOS_TCP" => {
            check.insert("tcp".into(), json!({"port": port_of(app, hc, path)?}));
        }
        "COMMAND" => {
            let cmd = match &hc.command {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Object(o)) => match o.get("value") {
                    Some(Value::String(s)) => s.clone(),
                    _ => return Err(invalid(&format!("{path}/command"), "needs a string `value`")),
                },
                _ => return Err(invalid(&format!("{path}/command"), "a COMMAND check needs `command.value`")),
            };
            check.insert("cmd".into(), json!(["/bin/sh", "-c", cmd]));
        }
        other => {
            return Err(invalid(
                &format!("{path}/protocol"),
                format!("{other:?} is not supported: HTTP, TCP, COMMAND (or MESOS_HTTP, MESOS_TCP)"),
            ))
        }
    }
    // Marathon's defaults, not berth's.
    check.insert("grace_s".into(), json!(hc.grace_period_seconds.unwrap_or(300)));
    check.insert("interval_s".into(), json!(hc.interval_seconds.unwrap_or(60)));
    check.insert("timeout_s".into(), json!(hc.timeout_seconds.unwrap_or(20)));
    check.insert("max_failures".into(), json!(hc.max_consecutive_failures.unwrap_or(3)));
    Ok(Some(Value::Object(check)))
}

/// The pool an app's instances take their IPs from, if any.
fn pool(app: &MarathonApp) -> Result<Option<String>, Invalid> {
    if let Some(name) = app.ip_address.as_ref().and_then(|i| i.network_name.clone()) {
        return Ok(Some(name));
    }
    let mut pools = app.networks.iter().flatten().filter(|n| n.mode.as_deref().unwrap_or("container") == "container");
    match (pools.next(), pools.next()) {
        (None, _) => Ok(None),
        (Some(_), Some(_)) => Err(invalid("/networks", "berth gives an instance one network (one IP pool)")),
        (Some(n), None) => {
            n.name.clone().map(Some).ok_or_else(|| invalid("/networks/0/name", "a container network needs a name"))
        }
    }
}

/// The berth spec (as berth's spec JSON, checked by its parser) of a Marathon app.
pub fn to_spec(app: &MarathonApp, id: &str) -> Result<Value, Invalid> {
    let refuse = |path: &str, why: &str| Err(invalid(path, why));
    let mut spec = Map::new();
    spec.insert("id".into(), json!(berth_id(id)));
    let docker = app.container.as_ref().and_then(|c| c.docker.as_ref());
    if let Some(c) = &app.container {
        if c.volumes.as_ref().is_some_and(|v| !v.is_empty()) {
            return refuse("/container/volumes", "berth mounts no volumes");
        }
        if let Some(kind) = c.kind.as_deref().filter(|k| *k != "DOCKER" && *k != "MESOS") {
            return Err(invalid("/container/type", format!("{kind:?} is not DOCKER or MESOS")));
        }
    }
    if let Some(d) = docker {
        if d.privileged == Some(true) {
            return refuse("/container/docker/privileged", "berth runs no privileged containers");
        }
        if d.force_pull_image == Some(true) {
            return refuse("/container/docker/forcePullImage", "berth never pulls images: load them on the hosts");
        }
        if d.parameters.as_ref().is_some_and(|p| !p.is_empty()) {
            return refuse("/container/docker/parameters", "berth passes no extra docker parameters");
        }
        if let Some(image) = &d.image {
            spec.insert("image".into(), json!(image));
        }
    }
    if app.secrets.as_ref().is_some_and(|s| !s.is_empty()) {
        return refuse("/secrets", "berth has no secret store");
    }
    match (&app.cmd, &app.args) {
        (Some(_), Some(args)) if !args.is_empty() => {
            return refuse("/cmd", "give either cmd or args, not both");
        }
        (Some(cmd), _) => {
            spec.insert("cmd".into(), json!(["/bin/sh", "-c", cmd]));
        }
        (None, Some(args)) => {
            spec.insert("cmd".into(), json!(args));
        }
        (None, None) if spec.contains_key("image") => {}
        (None, None) => return refuse("/cmd", "an app needs cmd, args or container.docker.image"),
    }
    let instances = app.instances.unwrap_or(1);
    spec.insert("instances".into(), json!(instances));
    spec.insert("cpus".into(), json!(app.cpus.unwrap_or(DEFAULT_CPUS)));
    let mem = app.mem.unwrap_or(DEFAULT_MEM);
    if !(mem.is_finite() && mem > 0.0) {
        return Err(invalid("/mem", format!("{mem} is not a positive number of MiB")));
    }
    spec.insert("mem_mb".into(), json!(mem.ceil() as u64));
    let mut env = Map::new();
    for (k, v) in app.env.iter().flatten() {
        match v {
            Value::String(s) => env.insert(k.clone(), json!(s)),
            _ => return Err(invalid(&format!("/env/{k}"), "berth takes string values only (no secret references)")),
        };
    }
    spec.insert("env".into(), Value::Object(env));
    let mut labels: BTreeMap<String, String> = app.labels.clone().unwrap_or_default();
    // Only a path the berth id does not spell already is kept (`/shop` is `shop`).
    if id != format!("/{}", berth_id(id)) {
        labels.insert(ID_LABEL.into(), id.to_string());
    }
    spec.insert("labels".into(), json!(labels));
    let mut constraints = Vec::new();
    for (i, c) in app.constraints.iter().flatten().enumerate() {
        let parts: Option<Vec<String>> = c.iter().map(|p| p.as_str().map(String::from)).collect();
        constraints.push(parts.ok_or_else(|| invalid(&format!("/constraints/{i}"), "parts must be strings"))?);
    }
    spec.insert("constraints".into(), json!(constraints));
    if let Some(check) = health_check(app, app.health_checks.as_deref().unwrap_or(&[]))? {
        spec.insert("health_check".into(), check);
    }
    if let Some(u) = &app.upgrade_strategy {
        let min = u.minimum_health_capacity.unwrap_or(1.0);
        let over = u.maximum_over_capacity.unwrap_or(1.0);
        if !(0.0..=1.0).contains(&over) {
            return Err(invalid("/upgradeStrategy/maximumOverCapacity", format!("{over} is not between 0 and 1")));
        }
        // Marathon's fraction of the instance count, as of this version.
        let surge = if over > 0.0 { ((over * f64::from(instances)).ceil() as u32).max(1) } else { 0 };
        spec.insert("upgrade".into(), json!({"min_healthy": min, "max_surge": surge}));
    }
    match &app.unreachable_strategy {
        None => {}
        Some(Value::String(s)) if s == "disabled" => {
            spec.insert("unreachable".into(), json!({"reschedule": false}));
        }
        Some(Value::Object(o)) => {
            let after = o.get("inactiveAfterSeconds").map(|v| {
                v.as_u64().ok_or_else(|| {
                    invalid("/unreachableStrategy/inactiveAfterSeconds", "is not a whole number of seconds")
                })
            });
            let after = after.transpose()?.unwrap_or(0);
            spec.insert("unreachable".into(), json!({"reschedule_after_s": after}));
        }
        Some(other) => {
            return Err(invalid("/unreachableStrategy", format!("{other} is not \"disabled\" or an object")));
        }
    }
    if let Some(s) = app.task_kill_grace_period_seconds {
        spec.insert("stop_grace_s".into(), json!(s));
    }
    if let Some(p) = pool(app)? {
        spec.insert("network".into(), json!({"pool": p}));
    }
    if let Some(port) = port_at(app, 0) {
        spec.insert("port".into(), json!(port));
    }
    Ok(Value::Object(spec))
}

/// Marathon's version id of a berth version: its creation time with microseconds that
/// end in the version number, so two versions made in one millisecond stay apart.
pub fn version_id(v: &Version) -> String {
    let t = super::super::workloads::time(v.created_at);
    format!("{}{:03}Z", t.trim_end_matches('Z'), v.version % 1000)
}

/// A berth spec as Marathon's app JSON (configuration fields only).
pub fn spec_json(spec: &AppSpec, instances: u32) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("id".into(), json!(marathon_id(spec)));
    match spec.cmd.as_slice() {
        [sh, c, cmd] if sh == "/bin/sh" && c == "-c" => {
            m.insert("cmd".into(), json!(cmd));
        }
        [] => {}
        args => {
            m.insert("args".into(), json!(args));
        }
    }
    if let Some(image) = &spec.image {
        m.insert(
            "container".into(),
            json!({"type": "DOCKER", "docker": {"image": image, "forcePullImage": false, "privileged": false}}),
        );
    }
    m.insert("instances".into(), json!(instances));
    m.insert("cpus".into(), json!(spec.cpus));
    m.insert("mem".into(), json!(spec.mem_mb));
    m.insert("disk".into(), json!(0));
    m.insert("env".into(), json!(spec.env));
    let labels: BTreeMap<&String, &String> = spec.labels.iter().filter(|(k, _)| *k != ID_LABEL).collect();
    m.insert("labels".into(), json!(labels));
    m.insert("constraints".into(), json!(spec.constraints));
    let checks: Vec<Value> = spec
        .health_check
        .iter()
        .map(|h| {
            let mut c = json!({
                "gracePeriodSeconds": h.grace_s,
                "intervalSeconds": h.interval_s,
                "timeoutSeconds": h.timeout_s,
                "maxConsecutiveFailures": h.max_failures,
            });
            if let Some(http) = &h.http {
                c["protocol"] = json!("HTTP");
                c["port"] = json!(http.port);
                c["path"] = json!(http.path);
            } else if let Some(tcp) = &h.tcp {
                c["protocol"] = json!("TCP");
                c["port"] = json!(tcp.port);
            } else if let Some(cmd) = &h.cmd {
                let value = match cmd.as_slice() {
                    [sh, c, v] if sh == "/bin/sh" && c == "-c" => v.clone(),
                    other => other.join(" "),
                };
                c["protocol"] = json!("COMMAND");
                c["command"] = json!({ "value": value });
            }
            c
        })
        .collect();
    m.insert("healthChecks".into(), json!(checks));
    let over = if instances == 0 {
        f64::from(spec.upgrade.max_surge.min(1))
    } else {
        (f64::from(spec.upgrade.max_surge) / f64::from(instances)).min(1.0)
    };
    m.insert(
        "upgradeStrategy".into(),
        json!({"minimumHealthCapacity": spec.upgrade.min_healthy, "maximumOverCapacity": over}),
    );
    let unreachable = if spec.unreachable.reschedule {
        let after = spec.unreachable.reschedule_after_s;
        json!({"inactiveAfterSeconds": after, "expungeAfterSeconds": after})
    } else {
        json!("disabled")
    };
    m.insert("unreachableStrategy".into(), unreachable);
    m.insert("taskKillGracePeriodSeconds".into(), json!(spec.stop_grace_s));
    let networks = match &spec.network {
        Some(n) => json!([{"mode": "container", "name": n.pool}]),
        None => json!([{"mode": "host"}]),
    };
    m.insert("networks".into(), networks);
    if let Some(port) = spec.port {
        m.insert("portDefinitions".into(), json!([{"port": port, "protocol": "tcp"}]));
    }
    m
}

/// Marathon's task state of an instance.
fn task_state(i: &Instance) -> &'static str {
    match i.state {
        InstanceState::Pending => "TASK_STAGING",
        InstanceState::Starting => "TASK_STARTING",
        InstanceState::Running => "TASK_RUNNING",
        InstanceState::Stopping => "TASK_KILLING",
        InstanceState::Stopped => "TASK_FINISHED",
        InstanceState::Failed => "TASK_FAILED",
        InstanceState::Lost => "TASK_UNREACHABLE",
    }
}

/// An instance as a Marathon task (only placed instances are tasks).
pub fn task_json(state: &State, app: &App, i: &Instance) -> Value {
    let host = i.host.and_then(|h| state.nodes.registered.get(&h));
    // Marathon's `host` is the agent's address; berth's hosts are known by their API's.
    let address = host.map(|h| h.address().to_string());
    let version = app.version(i.version).map(version_id);
    let has_check = app.spec().health_check.is_some();
    let checks = if has_check {
        json!([{
            "alive": i.health == Health::Healthy,
            "taskId": i.id,
            "consecutiveFailures": u32::from(i.health == Health::Unhealthy),
        }])
    } else {
        json!([])
    };
    let started = (i.state == InstanceState::Running).then(|| super::super::workloads::time(i.updated_at));
    json!({
        "id": i.id,
        "appId": marathon_id(app.spec()),
        "host": address,
        "slaveId": i.host.map(|h| format!("berth-host-{h}")),
        "ipAddresses": i.ip.iter().map(|ip| json!({"ipAddress": ip.to_string(), "protocol": "IPv4"})).collect::<Vec<_>>(),
        "ports": [],
        "servicePorts": [],
        "stagedAt": super::super::workloads::time(i.created_at),
        "startedAt": started,
        "state": task_state(i),
        "version": version,
        "healthCheckResults": checks,
    })
}

/// An app as Marathon's app JSON, with its counts, version and deployments.
pub fn app_json(state: &State, app: &App, embed_tasks: bool) -> Value {
    let mut m = spec_json(app.spec(), app.instances);
    let has_check = app.spec().health_check.is_some();
    let live: Vec<&Instance> = state.apps.instances_of(&app.id).collect();
    let running = live.iter().filter(|i| i.state == InstanceState::Running).count();
    let healthy = live.iter().filter(|i| has_check && i.is_healthy(true)).count();
    let unhealthy = live.iter().filter(|i| i.health == Health::Unhealthy).count();
    let staged = live.iter().filter(|i| matches!(i.state, InstanceState::Pending | InstanceState::Starting)).count();
    let current = app.current();
    m.insert("version".into(), json!(version_id(current)));
    m.insert(
        "versionInfo".into(),
        json!({
            "lastScalingAt": super::super::workloads::time(app.updated_at.max(current.created_at)),
            "lastConfigChangeAt": super::super::workloads::time(current.created_at),
        }),
    );
    m.insert("tasksRunning".into(), json!(running));
    m.insert("tasksHealthy".into(), json!(healthy));
    m.insert("tasksUnhealthy".into(), json!(unhealthy));
    m.insert("tasksStaged".into(), json!(staged));
    let deployments: Vec<Value> = deployment_id(state, app).map(|id| json!({ "id": id })).into_iter().collect();
    m.insert("deployments".into(), json!(deployments));
    if embed_tasks {
        let tasks: Vec<Value> = live.iter().filter(|i| i.host.is_some()).map(|i| task_json(state, app, i)).collect();
        m.insert("tasks".into(), json!(tasks));
    }
    Value::Object(m)
}

/// The Marathon deployment an app is in, if any: its rollout (`"7"`), or — Marathon
/// deploys a scale too — `scale-APP` while fewer instances run than it wants.
pub fn deployment_id(state: &State, app: &App) -> Option<String> {
    if let Some(d) = &app.deployment {
        return Some(d.id.to_string());
    }
    let running = state.apps.instances_of(&app.id).filter(|i| i.state == InstanceState::Running && !i.surge).count();
    (running != app.instances as usize).then(|| format!("scale-{}", app.id))
}

/// Marathon's deployment JSON for an app in a deployment.
pub fn deployment_json(state: &State, app: &App) -> Option<Value> {
    let id = deployment_id(state, app)?;
    let action = if app.deployment.is_some() { "RestartApplication" } else { "ScaleApplication" };
    let step = json!({"actions": [{"action": action, "app": marathon_id(app.spec())}]});
    Some(json!({
        "id": id,
        "version": version_id(app.current()),
        "affectedApps": [marathon_id(app.spec())],
        "affectedPods": [],
        "steps": [step],
        "currentActions": [{"action": action, "app": marathon_id(app.spec()), "readinessCheckResults": []}],
        "currentStep": 1,
        "totalSteps": 1,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_of(v: Value) -> Result<AppSpec, String> {
        let app = parse(v).map_err(|e| format!("{}: {}", e.path, e.error))?;
        let id = normalize_id(app.id.as_deref().unwrap_or("")).map_err(|e| e.error)?;
        let spec = to_spec(&app, &id).map_err(|e| format!("{}: {}", e.path, e.error))?;
        let spec = AppSpec::from_json(&serde_json::to_vec(&spec).unwrap())?;
        spec.validate()?;
        Ok(spec)
    }

    #[test]
    fn a_marathon_app_maps_onto_a_spec_and_back() {
        let spec = spec_of(json!({
            "id": "/team/shop",
            "cmd": "python3 -m http.server 8080",
            "container": {"type": "DOCKER", "docker": {"image": "test/web:1", "forcePullImage": false},
                          "portMappings": [{"containerPort": 8080, "protocol": "tcp"}]},
            "instances": 3, "cpus": 0.25, "mem": 64.5,
            "env": {"MODE": "test"}, "labels": {"team": "shop"},
            "constraints": [["hostname", "UNIQUE"]],
            "healthChecks": [{"protocol": "HTTP", "path": "/health", "portIndex": 0, "gracePeriodSeconds": 5}],
            "upgradeStrategy": {"minimumHealthCapacity": 0.5, "maximumOverCapacity": 0.34},
            "unreachableStrategy": {"inactiveAfterSeconds": 30, "expungeAfterSeconds": 60},
            "networks": [{"mode": "container", "name": "lan"}],
            "disk": 0, "uris": [], "backoffSeconds": 1
        }))
        .unwrap();
        assert_eq!(spec.id, "team-shop");
        assert_eq!(spec.cmd, ["/bin/sh", "-c", "python3 -m http.server 8080"]);
        assert_eq!(spec.image.as_deref(), Some("test/web:1"));
        assert_eq!((spec.instances, spec.cpus, spec.mem_mb), (3, 0.25, 65));
        let hc = spec.health_check.as_ref().unwrap();
        assert_eq!(hc.http.as_ref().map(|h| (h.port, h.path.as_str())), Some((8080, "/health")));
        assert_eq!((hc.grace_s, hc.interval_s, hc.max_failures), (5, 60, 3));
        assert_eq!((spec.upgrade.min_healthy, spec.upgrade.max_surge), (0.5, 2));
        assert_eq!(spec.unreachable.reschedule_after_s, 30);
        assert_eq!(spec.network.as_ref().unwrap().pool, "lan");
        assert_eq!(spec.port, Some(8080), "the first port mapping is the app's port");
        let back = spec_json(&spec, 3);
        assert_eq!(back["id"], "/team/shop");
        assert_eq!(back["cmd"], "python3 -m http.server 8080");
        assert_eq!(back["labels"], json!({"team": "shop"}), "the id label stays inside");
        assert_eq!(back["container"]["docker"]["image"], "test/web:1");
        assert_eq!(back["healthChecks"][0]["port"], 8080);
        assert_eq!(back["networks"], json!([{"mode": "container", "name": "lan"}]));
        assert!(
            !spec_of(json!({"id": "a", "cmd": "x", "unreachableStrategy": "disabled"})).unwrap().unreachable.reschedule
        );
        let args = spec_of(json!({"id": "/a.b", "args": ["/bin/sleep", "9"]})).unwrap();
        assert_eq!((args.id.as_str(), args.cmd.len(), args.cpus, args.mem_mb), ("a-b", 2, 1.0, 128));
        assert_eq!(spec_json(&args, 1)["args"], json!(["/bin/sleep", "9"]));
    }

    #[test]
    fn what_berth_cannot_honour_is_refused_naming_the_field() {
        let err = |v: Value| spec_of(v).unwrap_err();
        assert!(err(json!({"id": "a", "cmd": "x", "bogus": 1})).contains("unknown field `bogus`"));
        assert!(err(json!({"id": "a", "cmd": "x", "args": ["y"]})).starts_with("/cmd"));
        assert!(err(json!({"id": "a"})).contains("needs cmd, args or container.docker.image"));
        assert!(err(json!({"id": "a", "container": {"docker": {"image": "i", "forcePullImage": true}}}))
            .starts_with("/container/docker/forcePullImage"));
        assert!(err(json!({"id": "a", "cmd": "x", "container": {"volumes": [{"containerPath": "/d"}]}}))
            .starts_with("/container/volumes"));
        assert!(err(json!({"id": "a", "cmd": "x", "healthChecks": [{"protocol": "HTTP"}]})).contains("portIndex 0"));
        assert!(err(json!({"id": "a", "cmd": "x", "healthChecks": [{"port": 1}, {"port": 2}]}))
            .contains("one health check"));
        assert!(err(json!({"id": "a", "cmd": "x", "env": {"S": {"secret": "x"}}})).starts_with("/env/S"));
        assert!(err(json!({"id": "/Bad", "cmd": "x"})).contains("not a valid app id"));
        assert!(err(json!({"id": "/-a", "cmd": "x"})).contains("not a valid app id"));
        assert!(err(json!({"id": "a", "cmd": "x", "upgradeStrategy": {"maximumOverCapacity": 2}}))
            .starts_with("/upgradeStrategy"));
        assert!(err(json!({"id": "a", "cmd": "x", "cpus": -1})).contains("cpus"));
    }

    #[test]
    fn ids_and_versions_are_stable() {
        assert_eq!(normalize_id("shop").unwrap(), "/shop");
        assert_eq!(normalize_id("//team/shop/").unwrap(), "/team/shop");
        assert_eq!(berth_id("/team/web.v2"), "team-web-v2");
        let spec = AppSpec::from_json(br#"{"id": "a", "cmd": ["x"]}"#).unwrap();
        let v = |version, created_at| Version { version, created_at, spec: spec.clone(), restart: false };
        assert_eq!(version_id(&v(7, 1_700_000_000_123)), "2023-11-14T22:13:20.123007Z");
        assert_ne!(version_id(&v(1, 5)), version_id(&v(2, 5)), "same millisecond, different versions");
    }
}
