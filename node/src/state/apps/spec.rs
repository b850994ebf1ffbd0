//! The app spec (`contract.md`): parsing with unknown fields refused, and validation
//! that names the path of every invalid value.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// An app as users write it (JSON or YAML).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AppSpec {
    /// A DNS label.
    #[schema(pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]
    pub id: String,
    /// A container image (docker runtime); without it, `cmd` runs as a host process.
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub cmd: Vec<String>,
    #[serde(default = "defaults::instances")]
    #[schema(maximum = 1_000_000)]
    pub instances: u32,
    #[serde(default = "defaults::cpus")]
    pub cpus: f64,
    #[serde(default = "defaults::mem_mb")]
    pub mem_mb: u64,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub network: Option<Network>,
    /// The port the app serves on, at each instance's IP: what upstream feeds (Consul
    /// KV and health for nginx-upsync) announce. Default: the health check's port.
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
    #[serde(default)]
    pub constraints: Vec<Vec<String>>,
    #[serde(default)]
    pub upgrade: Upgrade,
    #[serde(default = "defaults::stop_grace_s")]
    pub stop_grace_s: u64,
    #[serde(default)]
    pub unreachable: Unreachable,
}

/// What happens to instances whose host is declared down (Marathon's
/// `unreachableStrategy`, Nomad's `disconnect`): placed elsewhere, with their IPs,
/// `reschedule_after_s` after the host went down (default: at once), or — with
/// `reschedule: false` — kept on their host, `lost`, until it comes back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Unreachable {
    #[serde(default = "defaults::reschedule")]
    pub reschedule: bool,
    #[serde(default)]
    pub reschedule_after_s: u64,
}

impl Default for Unreachable {
    fn default() -> Self {
        Unreachable { reschedule: true, reschedule_after_s: 0 }
    }
}

/// `network: {pool: lan}`: one sticky IP per instance from the pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Network {
    pub pool: String,
}

/// One of `http`, `tcp`, `cmd`, with timing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    #[serde(default)]
    pub http: Option<HttpCheck>,
    #[serde(default)]
    pub tcp: Option<TcpCheck>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default = "defaults::interval_s")]
    pub interval_s: u64,
    #[serde(default = "defaults::timeout_s")]
    pub timeout_s: u64,
    #[serde(default = "defaults::grace_s")]
    pub grace_s: u64,
    #[serde(default = "defaults::max_failures")]
    pub max_failures: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpCheck {
    pub port: u16,
    #[serde(default = "defaults::path")]
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TcpCheck {
    pub port: u16,
}

/// How a spec change rolls over the instances.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Upgrade {
    /// The fraction of `instances` that must stay healthy during a rollout.
    #[serde(default = "defaults::min_healthy")]
    pub min_healthy: f64,
    /// How many instances beyond `instances` a rollout may add.
    #[serde(default = "defaults::max_surge")]
    pub max_surge: u32,
}

impl Default for Upgrade {
    fn default() -> Self {
        Upgrade { min_healthy: defaults::min_healthy(), max_surge: defaults::max_surge() }
    }
}

mod defaults {
    pub fn instances() -> u32 {
        1
    }
    pub fn cpus() -> f64 {
        0.1
    }
    pub fn mem_mb() -> u64 {
        64
    }
    pub fn stop_grace_s() -> u64 {
        10
    }
    pub fn interval_s() -> u64 {
        2
    }
    pub fn timeout_s() -> u64 {
        1
    }
    pub fn grace_s() -> u64 {
        5
    }
    pub fn max_failures() -> u32 {
        3
    }
    pub fn path() -> String {
        "/".into()
    }
    pub fn min_healthy() -> f64 {
        1.0
    }
    pub fn max_surge() -> u32 {
        1
    }
    pub fn reschedule() -> bool {
        true
    }
}

/// Most instances one app may ask for (a node may allow fewer:
/// `--max-instances-per-app`).
pub const MAX_INSTANCES: u32 = berth_cluster_config::MAX_INSTANCES_PER_APP;

/// The largest spec accepted, as JSON: every version is kept in the replicated state
/// (and in every snapshot), so a spec is configuration, not a place for data.
pub const MAX_SPEC_BYTES: usize = 64 * 1024;

/// A constraint, parsed (Marathon's operators).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Constraint {
    /// Every instance on a different value of the field.
    Unique { field: String },
    /// Only on hosts whose field equals the value (or, without a value, all on one value).
    Cluster { field: String, value: Option<String> },
    /// Only where the field matches the regex (whole value).
    Like { field: String, regex: String },
    /// Only where the field does not match the regex.
    Unlike { field: String, regex: String },
    /// Spread evenly over the field's values (`groups`: how many values to expect).
    GroupBy { field: String, groups: Option<u32> },
    /// At most `max` instances per value of the field.
    MaxPer { field: String, max: u32 },
}

impl Constraint {
    /// The constraint as users wrote it, for messages.
    pub fn describe(&self) -> String {
        let parts: Vec<String> = match self {
            Constraint::Unique { field } => vec![field.clone(), "UNIQUE".into()],
            Constraint::Cluster { field, value } => {
                let mut v = vec![field.clone(), "CLUSTER".into()];
                v.extend(value.clone());
                v
            }
            Constraint::Like { field, regex } => vec![field.clone(), "LIKE".into(), regex.clone()],
            Constraint::Unlike { field, regex } => {
                vec![field.clone(), "UNLIKE".into(), regex.clone()]
            }
            Constraint::GroupBy { field, groups } => {
                let mut v = vec![field.clone(), "GROUP_BY".into()];
                v.extend(groups.map(|g| g.to_string()));
                v
            }
            Constraint::MaxPer { field, max } => {
                vec![field.clone(), "MAX_PER".into(), max.to_string()]
            }
        };
        format!("[{}]", parts.iter().map(|p| format!("{p:?}")).collect::<Vec<_>>().join(", "))
    }
}

/// Parses the constraints of a spec; errors carry the path (`constraints[1]: ...`).
pub fn parse_constraints(raw: &[Vec<String>]) -> Result<Vec<Constraint>, String> {
    raw.iter().enumerate().map(|(i, c)| parse_constraint(c).map_err(|e| format!("constraints[{i}]: {e}"))).collect()
}

fn parse_constraint(c: &[String]) -> Result<Constraint, String> {
    let (field, op) = match c {
        [f, op, ..] => (f.clone(), op.as_str()),
        _ => return Err("a constraint is [field, OPERATOR] or [field, OPERATOR, value]".into()),
    };
    if field.is_empty() {
        return Err("the field is empty".into());
    }
    let value = c.get(2).cloned();
    if c.len() > 3 {
        return Err("a constraint has at most 3 elements".into());
    }
    let need = |v: Option<String>| v.ok_or_else(|| format!("{op} needs a value"));
    let regex = |v: Option<String>| -> Result<String, String> {
        let r = need(v)?;
        regex::Regex::new(&format!("^(?:{r})$")).map_err(|e| format!("{r:?} is not a valid regex: {e}"))?;
        Ok(r)
    };
    let number = |v: &str| v.parse::<u32>().map_err(|_| format!("{op} value {v:?} is not a positive integer"));
    Ok(match op {
        "UNIQUE" => {
            if value.is_some() {
                return Err("UNIQUE takes no value".into());
            }
            Constraint::Unique { field }
        }
        "CLUSTER" => Constraint::Cluster { field, value },
        "LIKE" => Constraint::Like { field, regex: regex(value)? },
        "UNLIKE" => Constraint::Unlike { field, regex: regex(value)? },
        "GROUP_BY" => Constraint::GroupBy {
            field,
            groups: match value {
                Some(v) => Some(number(&v)?).filter(|g| *g > 0),
                None => None,
            },
        },
        "MAX_PER" => {
            let max = number(&need(value)?)?;
            if max == 0 {
                return Err("MAX_PER needs a value of at least 1".into());
            }
            Constraint::MaxPer { field, max }
        }
        other => {
            return Err(format!(
                "unknown operator {other:?} (expected UNIQUE, CLUSTER, LIKE, UNLIKE, GROUP_BY or MAX_PER)"
            ))
        }
    })
}

fn is_dns_label(s: &str) -> bool {
    crate::server::ops::is_dns_label(s)
}

impl AppSpec {
    /// Parses a JSON body; unknown fields and wrong types are errors naming their path.
    pub fn from_json(bytes: &[u8]) -> Result<AppSpec, String> {
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        serde_path_to_error::deserialize(de).map_err(|e| path_error(e.path().to_string(), e.inner().to_string()))
    }

    /// Parses YAML (or JSON, which is YAML).
    pub fn from_yaml(text: &str) -> Result<AppSpec, String> {
        let de = serde_yaml::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| path_error(e.path().to_string(), e.inner().to_string()))
    }

    /// Checks every value; the error names the field's path.
    pub fn validate(&self) -> Result<(), String> {
        if !is_dns_label(&self.id) {
            return Err(format!("id: {:?} must be a DNS label ([a-z0-9]([a-z0-9-]{{0,61}}[a-z0-9])?)", self.id));
        }
        match &self.image {
            Some(i) if i.trim().is_empty() => return Err("image: is empty".into()),
            None if self.cmd.is_empty() => {
                return Err("cmd: required when there is no image (the app runs as a host process)".into())
            }
            _ => {}
        }
        if let Some((i, _)) = self.cmd.iter().enumerate().find(|(_, c)| c.contains('\0')) {
            return Err(format!("cmd[{i}]: contains a NUL byte"));
        }
        if self.image.is_none() && self.cmd[0].is_empty() {
            return Err("cmd[0]: the program is empty".into());
        }
        let size = serde_json::to_vec(self).map_or(usize::MAX, |b| b.len());
        if size > MAX_SPEC_BYTES {
            return Err(format!(
                "the spec is {size} bytes as JSON, more than {MAX_SPEC_BYTES} (every version is kept in the replicated \
                 state; pass large data as a file or an image, not in env or labels)"
            ));
        }
        if self.instances > MAX_INSTANCES {
            return Err(format!("instances: {} is more than {MAX_INSTANCES}", self.instances));
        }
        if !(self.cpus.is_finite() && self.cpus > 0.0 && self.cpus <= 1024.0) {
            return Err(format!("cpus: {} must be a number in (0, 1024]", self.cpus));
        }
        if self.mem_mb == 0 || self.mem_mb > 16 * 1024 * 1024 {
            return Err(format!("mem_mb: {} must be between 1 and 16777216", self.mem_mb));
        }
        for k in self.env.keys() {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(format!("env.{k}: not a valid variable name"));
            }
        }
        for (k, v) in &self.env {
            if v.contains('\0') {
                return Err(format!("env.{k}: contains a NUL byte"));
            }
        }
        for k in self.labels.keys() {
            if k.is_empty() || k.len() > 128 {
                return Err(format!("labels.{k}: keys are 1 to 128 characters"));
            }
        }
        if let Some(n) = &self.network {
            if !is_dns_label(&n.pool) {
                return Err(format!("network.pool: {:?} is not a pool name", n.pool));
            }
        }
        if self.port == Some(0) {
            return Err("port: must be 1 to 65535".into());
        }
        if let Some(h) = &self.health_check {
            let kinds = [h.http.is_some(), h.tcp.is_some(), h.cmd.is_some()].iter().filter(|b| **b).count();
            if kinds != 1 {
                return Err("health_check: exactly one of http, tcp or cmd".into());
            }
            if let Some(http) = &h.http {
                if http.port == 0 {
                    return Err("health_check.http.port: must be 1 to 65535".into());
                }
                if !http.path.starts_with('/') {
                    return Err(format!("health_check.http.path: {:?} must start with /", http.path));
                }
            }
            if h.tcp.as_ref().is_some_and(|t| t.port == 0) {
                return Err("health_check.tcp.port: must be 1 to 65535".into());
            }
            if h.cmd.as_ref().is_some_and(|c| c.is_empty() || c[0].is_empty()) {
                return Err("health_check.cmd: needs a program".into());
            }
            if h.interval_s == 0 {
                return Err("health_check.interval_s: must be at least 1".into());
            }
            if h.timeout_s == 0 || h.timeout_s > h.interval_s.max(1) * 10 {
                return Err("health_check.timeout_s: must be at least 1".into());
            }
            if h.max_failures == 0 {
                return Err("health_check.max_failures: must be at least 1".into());
            }
        }
        parse_constraints(&self.constraints)?;
        if !(self.upgrade.min_healthy.is_finite() && (0.0..=1.0).contains(&self.upgrade.min_healthy)) {
            return Err(format!("upgrade.min_healthy: {} must be between 0 and 1", self.upgrade.min_healthy));
        }
        if self.upgrade.min_healthy >= 1.0 && self.upgrade.max_surge == 0 && self.instances > 0 {
            return Err(
                "upgrade: min_healthy 1.0 with max_surge 0 can never roll over; allow a surge or lower min_healthy"
                    .into(),
            );
        }
        if !self.unreachable.reschedule && self.unreachable.reschedule_after_s > 0 {
            return Err("unreachable.reschedule_after_s: has no effect with reschedule: false".into());
        }
        if self.unreachable.reschedule_after_s > 7 * 86_400 {
            return Err(format!(
                "unreachable.reschedule_after_s: {} is more than a week; use reschedule: false to never move",
                self.unreachable.reschedule_after_s
            ));
        }
        if self.stop_grace_s > 3600 {
            return Err(format!("stop_grace_s: {} is more than an hour", self.stop_grace_s));
        }
        Ok(())
    }

    /// The runtime this app needs.
    pub fn runtime(&self) -> &'static str {
        if self.image.is_some() {
            "docker"
        } else {
            "process"
        }
    }

    /// Whether `other` differs only in `instances` (a scale, not a new version).
    /// The port upstream feeds announce: `port`, else the health check's (http or tcp).
    pub fn serving_port(&self) -> Option<u16> {
        self.port.or_else(|| {
            let h = self.health_check.as_ref()?;
            h.http.as_ref().map(|c| c.port).or(h.tcp.as_ref().map(|c| c.port))
        })
    }

    pub fn same_but_instances(&self, other: &AppSpec) -> bool {
        let mut a = self.clone();
        a.instances = other.instances;
        &a == other
    }
}

fn path_error(path: String, inner: String) -> String {
    // serde's message ends with " at line L column C"; keep it, it helps in files.
    if path.is_empty() || path == "." {
        return inner;
    }
    // serde_yaml already prefixes nested errors with the parent's path.
    let parent = path.rsplit_once('.').map(|(p, _)| format!("{p}: "));
    let own = format!("{path}: ");
    let inner = inner
        .strip_prefix(own.as_str())
        .or_else(|| parent.as_deref().and_then(|p| inner.strip_prefix(p)))
        .unwrap_or(&inner);
    format!("{path}: {inner}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
id: shop
image: test/busybox:1
cmd: ["/bin/httpd", "-f", "-p", "80"]
instances: 3
cpus: 0.25
mem_mb: 128
env: {MODE: test}
labels: {team: checkout}
network: {pool: lan}
health_check:
  http: {port: 80, path: /}
  interval_s: 2
  timeout_s: 1
  grace_s: 5
  max_failures: 3
constraints: [["hostname", "UNIQUE"], ["rack", "CLUSTER", "r1"]]
upgrade: {min_healthy: 1.0, max_surge: 1}
stop_grace_s: 10
unreachable: {reschedule_after_s: 30}
"#;

    #[test]
    fn the_contract_example_parses_and_validates() {
        let spec = AppSpec::from_yaml(GOOD).unwrap();
        spec.validate().unwrap();
        assert_eq!(spec.instances, 3);
        assert_eq!(spec.runtime(), "docker");
        let again = AppSpec::from_json(serde_json::to_string(&spec).unwrap().as_bytes()).unwrap();
        assert_eq!(again, spec);
    }

    #[test]
    fn unknown_fields_are_named_with_their_path() {
        let e = AppSpec::from_yaml(&GOOD.replace("grace_s: 5", "grace_s: 5\n  retries: 2")).unwrap_err();
        assert!(e.starts_with("health_check.retries: unknown field `retries`"), "{e}");
        let e = AppSpec::from_yaml("id: a\ncmd: [x]\ninstances: three\n").unwrap_err();
        assert!(e.starts_with("instances: invalid type"), "{e}");
        assert!(!e.contains("instances: instances"), "{e}");
        let e = AppSpec::from_json(br#"{"id":"a","cmd":["x"],"colour":"red"}"#).unwrap_err();
        assert!(e.contains("unknown field `colour`"), "{e}");
        let e = AppSpec::from_json(br#"{"id":"a","cmd":["x"],"instances":"three"}"#).unwrap_err();
        assert!(e.starts_with("instances: invalid type"), "{e}");
        let e =
            AppSpec::from_json(br#"{"id":"a","cmd":["x"],"health_check":{"http":{"port":80,"pth":"/"}}}"#).unwrap_err();
        assert!(e.starts_with("health_check.http.pth: unknown field `pth`"), "{e}");
    }

    #[test]
    fn invalid_values_are_named_with_their_path() {
        let base = || AppSpec::from_yaml(GOOD).unwrap();
        type Mutation = Box<dyn Fn(&mut AppSpec)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|s| s.id = "Shop".into()), "id:"),
            (Box::new(|s| s.cpus = 0.0), "cpus:"),
            (Box::new(|s| s.mem_mb = 0), "mem_mb:"),
            (Box::new(|s| s.instances = MAX_INSTANCES + 1), "instances:"),
            (Box::new(|s| _ = s.env.insert("BLOB".into(), "x".repeat(MAX_SPEC_BYTES))), "the spec is "),
            (
                Box::new(|s| {
                    s.image = None;
                    s.cmd.clear();
                }),
                "cmd: required",
            ),
            (
                Box::new(|s| s.constraints = vec![vec!["rack".into(), "NEAR".into()]]),
                "constraints[0]: unknown operator",
            ),
            (
                Box::new(|s| s.constraints.push(vec!["rack".into(), "LIKE".into()])),
                "constraints[2]: LIKE needs a value",
            ),
            (Box::new(|s| s.constraints = vec![vec!["rack".into(), "LIKE".into(), "(".into()]]), "not a valid regex"),
            (
                Box::new(|s| s.constraints = vec![vec!["rack".into(), "MAX_PER".into(), "0".into()]]),
                "MAX_PER needs a value of at least 1",
            ),
            (
                Box::new(|s| s.health_check.as_mut().unwrap().tcp = Some(TcpCheck { port: 1 })),
                "health_check: exactly one",
            ),
            (
                Box::new(|s| s.health_check.as_mut().unwrap().http.as_mut().unwrap().path = "x".into()),
                "health_check.http.path",
            ),
            (Box::new(|s| s.upgrade.min_healthy = 1.5), "upgrade.min_healthy"),
            (Box::new(|s| s.upgrade.max_surge = 0), "upgrade: min_healthy 1.0 with max_surge 0"),
            (Box::new(|s| s.network = Some(Network { pool: "Bad Pool".into() })), "network.pool"),
            (
                Box::new(|s| s.unreachable = Unreachable { reschedule: false, reschedule_after_s: 5 }),
                "unreachable.reschedule_after_s: has no effect",
            ),
            (Box::new(|s| s.unreachable.reschedule_after_s = 10_000_000), "unreachable.reschedule_after_s"),
        ];
        for (mutate, needle) in cases {
            let mut s = base();
            mutate(&mut s);
            let e = s.validate().unwrap_err();
            assert!(e.contains(needle), "{needle:?} not in {e:?}");
        }
    }

    #[test]
    fn constraints_parse_to_marathon_operators() {
        let raw = vec![
            vec!["hostname".into(), "UNIQUE".into()],
            vec!["rack".into(), "CLUSTER".into(), "r1".into()],
            vec!["rack".into(), "GROUP_BY".into(), "3".into()],
            vec!["zone".into(), "MAX_PER".into(), "2".into()],
            vec!["host".into(), "UNLIKE".into(), "db.*".into()],
        ];
        let c = parse_constraints(&raw).unwrap();
        assert_eq!(c[0], Constraint::Unique { field: "hostname".into() });
        assert_eq!(c[2], Constraint::GroupBy { field: "rack".into(), groups: Some(3) });
        assert_eq!(c[3].describe(), r#"["zone", "MAX_PER", "2"]"#);
    }

    #[test]
    fn defaults_fill_a_minimal_process_app() {
        let s = AppSpec::from_json(br#"{"id":"sleeper","cmd":["sleep","1000"]}"#).unwrap();
        s.validate().unwrap();
        assert_eq!((s.instances, s.cpus, s.mem_mb, s.stop_grace_s), (1, 0.1, 64, 10));
        assert_eq!(s.runtime(), "process");
        assert_eq!(s.upgrade, Upgrade { min_healthy: 1.0, max_surge: 1 });
    }
}

#[cfg(test)]
mod examples {
    #[test]
    fn every_shipped_example_spec_is_valid() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "yaml") {
                let spec = super::AppSpec::from_yaml(&std::fs::read_to_string(&p).unwrap())
                    .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                spec.validate().unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                n += 1;
            }
        }
        assert!(n >= 2, "examples found: {n}");
    }
}
