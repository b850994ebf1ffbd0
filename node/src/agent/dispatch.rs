//! A host with the docker runtime runs process apps too: [`Dispatch`] sends an
//! instance to Docker when its app has an `image`, else to the process runtime. Handles
//! are tagged with the runtime that owns them (`docker:ID`, `process:PID`).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::runtime::{Existing, Exit, LogStream, Runtime, RuntimeError, Task};

pub struct Dispatch {
    pub process: Arc<dyn Runtime>,
    pub docker: Arc<dyn Runtime>,
    /// Where the process runtime keeps its instances (to tell whose logs are whose).
    pub process_dir: std::path::PathBuf,
}

const DOCKER: &str = "docker:";
const PROCESS: &str = "process:";

impl Dispatch {
    fn for_task(&self, task: &Task) -> (&Arc<dyn Runtime>, &'static str) {
        if task.spec.image.is_some() {
            (&self.docker, DOCKER)
        } else {
            (&self.process, PROCESS)
        }
    }

    /// The runtime owning `handle`, and the handle it knows.
    fn for_handle<'a>(&self, handle: &'a str) -> (&Arc<dyn Runtime>, &'a str) {
        match handle.strip_prefix(DOCKER) {
            Some(h) => (&self.docker, h),
            None => (&self.process, handle.strip_prefix(PROCESS).unwrap_or(handle)),
        }
    }
}

#[async_trait]
impl Runtime for Dispatch {
    fn name(&self) -> &'static str {
        "docker"
    }

    async fn existing(&self) -> Result<Vec<Existing>, RuntimeError> {
        let mut all = Vec::new();
        for (rt, tag) in [(&self.process, PROCESS), (&self.docker, DOCKER)] {
            match rt.existing().await {
                Ok(list) => all.extend(list.into_iter().map(|mut e| {
                    e.handle = format!("{tag}{}", e.handle);
                    e
                })),
                // An engine that is down must not hide the processes.
                Err(e) => tracing::warn!(runtime = rt.name(), error = %e, "cannot list running instances"),
            }
        }
        Ok(all)
    }

    async fn start(&self, task: &Task) -> Result<String, RuntimeError> {
        let (rt, tag) = self.for_task(task);
        rt.start(task).await.map(|h| format!("{tag}{h}"))
    }

    async fn wait(&self, handle: &str) -> Exit {
        let (rt, h) = self.for_handle(handle);
        rt.wait(h).await
    }

    async fn stop(&self, handle: &str, grace: Duration) -> Result<(), RuntimeError> {
        let (rt, h) = self.for_handle(handle);
        rt.stop(h, grace).await
    }

    async fn remove(&self, instance: &str, handle: &str) {
        let (rt, h) = self.for_handle(handle);
        rt.remove(instance, h).await
    }

    async fn check_address(&self, handle: &str, task: &Task) -> IpAddr {
        let (rt, h) = self.for_handle(handle);
        rt.check_address(h, task).await
    }

    async fn check_cmd(
        &self,
        handle: &str,
        task: &Task,
        cmd: &[String],
        timeout: Duration,
    ) -> Result<bool, RuntimeError> {
        let (rt, h) = self.for_handle(handle);
        rt.check_cmd(h, task, cmd, timeout).await
    }

    async fn exec(&self, task: &Task, cmd: &[String], timeout: Duration) -> Result<(i64, Vec<u8>), RuntimeError> {
        self.for_task(task).0.exec(task, cmd, timeout).await
    }

    async fn logs(&self, instance: &str, tail: usize, follow: bool) -> Result<LogStream, RuntimeError> {
        // A process instance has an output file; otherwise it is a container.
        if self.process_dir.join(instance).join("output.log").exists() {
            self.process.logs(instance, tail, follow).await
        } else {
            self.docker.logs(instance, tail, follow).await
        }
    }
}
