//! The agent reaches the machine only through [`Runtime`] (SwarmKit's executor idea):
//! the process runtime here, Docker next to it, and fakes in tests.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;

use crate::state::apps::AppSpec;

/// Everything a runtime needs to run one instance.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    pub instance: String,
    pub app: String,
    pub version: u64,
    pub epoch: u64,
    pub spec: AppSpec,
    pub ip: Option<Ipv4Addr>,
    pub pool: Option<String>,
    /// The pool's subnet and gateway (the docker runtime builds its network from them).
    pub subnet: Option<String>,
    pub gateway: Option<Ipv4Addr>,
}

impl Task {
    /// The environment an instance sees: the spec's `env` plus `BERTH_*` facts.
    pub fn env(&self, host: u64) -> BTreeMap<String, String> {
        let mut env = self.spec.env.clone();
        env.insert("BERTH_APP".into(), self.app.clone());
        env.insert("BERTH_INSTANCE".into(), self.instance.clone());
        env.insert("BERTH_VERSION".into(), self.version.to_string());
        env.insert("BERTH_HOST".into(), host.to_string());
        if let Some(ip) = self.ip {
            env.insert("BERTH_IP".into(), ip.to_string());
        }
        env
    }
}

/// An instance a runtime found running when the agent started.
#[derive(Debug, Clone, PartialEq)]
pub struct Existing {
    pub instance: String,
    pub epoch: u64,
    pub handle: String,
    /// It holds a sticky IP (what fencing kills).
    pub sticky: bool,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Exit {
    pub code: Option<i32>,
    pub message: String,
}

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum RuntimeError {
    /// The instance cannot start as specified (no such program, missing image...).
    #[error("{0}")]
    Start(String),
    /// The runtime itself does not answer (the Docker engine is down...).
    #[error("runtime unavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Other(String),
}

pub type LogStream = Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>>;

#[async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// `process` or `docker`.
    fn name(&self) -> &'static str;
    /// Instances left running by an earlier agent on this host.
    async fn existing(&self) -> Result<Vec<Existing>, RuntimeError>;
    /// Starts the instance; returns its handle.
    async fn start(&self, task: &Task) -> Result<String, RuntimeError>;
    /// Waits until the instance stops.
    async fn wait(&self, handle: &str) -> Exit;
    /// Stops it: SIGTERM, then SIGKILL after `grace`.
    async fn stop(&self, handle: &str, grace: Duration) -> Result<(), RuntimeError>;
    /// Cleans up what a stopped instance left (the container, the pid file).
    async fn remove(&self, instance: &str, handle: &str);
    /// Where health checks reach the instance.
    async fn check_address(&self, handle: &str, task: &Task) -> IpAddr;
    /// Runs a health-check command for the instance; Ok(true) when it passed.
    async fn check_cmd(
        &self,
        handle: &str,
        task: &Task,
        cmd: &[String],
        timeout: Duration,
    ) -> Result<bool, RuntimeError>;
    /// Runs `cmd` in the instance's environment (inside its container, or beside its
    /// process); returns the exit code and the combined output.
    async fn exec(&self, task: &Task, cmd: &[String], timeout: Duration) -> Result<(i64, Vec<u8>), RuntimeError>;
    /// The instance's output: the last `tail` lines, then (with `follow`) what comes.
    async fn logs(&self, instance: &str, tail: usize, follow: bool) -> Result<LogStream, RuntimeError>;
}
