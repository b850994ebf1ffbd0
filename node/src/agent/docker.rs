//! The docker runtime: an app with `image` runs as a container on the local Docker
//! engine (bollard), attached to the pool's macvlan network with the instance's sticky
//! IP passed explicitly.
//!
//! - Everything berth creates carries labels (`berth.node`, `berth.app`,
//!   `berth.instance`, `berth.version`, `berth.epoch`, and `berth.ip` for a sticky IP,
//!   which the fence guard kills by); the agent only ever lists, stops
//!   or removes containers with its own `berth.node`, so several nodes can share one
//!   engine (tests, `berth dev`).
//! - One Docker network per pool, `berth-POOL`: macvlan on `--macvlan-parent` (bridge
//!   mode), created if missing, reused if present. Docker's own allocator is confined
//!   to the gateway's /32 (which it never hands out), so it can never give a container
//!   an address berth did not choose (Docker's macvlan IPAM is host-local: two hosts
//!   would hand out the same address, moby#49921). berth's replicated IPAM is the only
//!   allocator.
//! - No image is pulled: a missing image is a start failure reported on the instance.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use async_trait::async_trait;
use bollard::models::{
    ContainerCreateBody, EndpointIpamConfig, EndpointSettings, HostConfig, Ipam, IpamConfig, NetworkCreateRequest,
    NetworkingConfig,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, InspectContainerOptions, InspectNetworkOptions, ListContainersOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder, StopContainerOptionsBuilder, WaitContainerOptions,
};
use bollard::Docker;
use futures::StreamExt;

use super::runtime::{Existing, Exit, LogStream, Runtime, RuntimeError, Task};

pub struct DockerRuntime {
    /// Connected (and API version negotiated) on first use, so a node starts even
    /// while its engine is down; until then every operation fails as `Unavailable`,
    /// which the agent reports on the instances.
    docker: tokio::sync::OnceCell<Docker>,
    host: u64,
    /// The parent interface of macvlan networks.
    parent: String,
    /// Network creation, one at a time (instances of a pool start together).
    networks: tokio::sync::Mutex<()>,
}

fn unavailable(e: bollard::errors::Error) -> RuntimeError {
    RuntimeError::Unavailable(e.to_string())
}

fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(e, bollard::errors::Error::DockerResponseServerError { status_code: 404, .. })
}

/// The network of pool `pool`.
pub fn network_name(pool: &str) -> String {
    format!("berth-{pool}")
}

impl DockerRuntime {
    pub fn new(host: u64, parent: String) -> Self {
        DockerRuntime { docker: tokio::sync::OnceCell::new(), host, parent, networks: Default::default() }
    }

    /// The engine client, connecting on first use.
    async fn client(&self) -> Result<&Docker, RuntimeError> {
        self.docker
            .get_or_try_init(|| async {
                let docker = Docker::connect_with_local_defaults().map_err(unavailable)?;
                let docker = docker.negotiate_version().await.map_err(unavailable)?;
                docker.ping().await.map_err(unavailable)?;
                Ok(docker)
            })
            .await
    }

    /// Whether the local engine answers.
    pub async fn available(&self) -> bool {
        self.client().await.is_ok()
    }

    fn container_name(&self, instance: &str) -> String {
        format!("berth-{}-{instance}", self.host)
    }

    /// Creates the pool's macvlan network unless it exists.
    async fn ensure_network(&self, task: &Task) -> Result<Option<String>, RuntimeError> {
        let docker = self.client().await?;
        let (Some(pool), Some(subnet)) = (&task.pool, &task.subnet) else { return Ok(None) };
        let name = network_name(pool);
        let _one_at_a_time = self.networks.lock().await;
        match docker.inspect_network(&name, None::<InspectNetworkOptions>).await {
            Ok(_) => return Ok(Some(name)),
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(unavailable(e)),
        }
        if !std::path::Path::new("/sys/class/net").join(&self.parent).exists() {
            return Err(RuntimeError::Start(format!(
                "the macvlan parent interface {:?} does not exist on this host (--macvlan-parent)",
                self.parent
            )));
        }
        let gateway = task.gateway.map(|g| g.to_string());
        let confined = gateway.as_ref().map(|g| format!("{g}/32"));
        let req = NetworkCreateRequest {
            name: name.clone(),
            driver: Some("macvlan".into()),
            options: Some(HashMap::from([
                ("parent".to_string(), self.parent.clone()),
                ("macvlan_mode".to_string(), "bridge".to_string()),
            ])),
            ipam: Some(Ipam {
                driver: Some("default".into()),
                config: Some(vec![IpamConfig {
                    subnet: Some(subnet.clone()),
                    gateway: gateway.clone(),
                    ip_range: confined,
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            labels: Some(HashMap::from([("berth.pool".to_string(), pool.clone())])),
            ..Default::default()
        };
        match docker.create_network(req).await {
            Ok(_) => {
                tracing::info!(network = %name, parent = %self.parent, %subnet, "macvlan network created");
                Ok(Some(name))
            }
            // Another node sharing this engine may have created it meanwhile.
            Err(_) if docker.inspect_network(&name, None::<InspectNetworkOptions>).await.is_ok() => Ok(Some(name)),
            Err(e) => Err(RuntimeError::Start(format!(
                "cannot create macvlan network {name} on parent {:?}: {e}",
                self.parent
            ))),
        }
    }
}

#[async_trait]
impl Runtime for DockerRuntime {
    fn name(&self) -> &'static str {
        "docker"
    }

    async fn existing(&self) -> Result<Vec<Existing>, RuntimeError> {
        let docker = self.client().await?;
        let filters = HashMap::from([("label".to_string(), vec![format!("berth.node={}", self.host)])]);
        let opts = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
        let list = docker.list_containers(Some(opts)).await.map_err(unavailable)?;
        let mut out = Vec::new();
        for c in list {
            let id = c.id.clone().unwrap_or_default();
            let labels = c.labels.clone().unwrap_or_default();
            let running =
                c.state.as_ref().map(|s| format!("{s:?}").to_lowercase().contains("running")).unwrap_or(false);
            match (labels.get("berth.instance"), labels.get("berth.epoch").and_then(|e| e.parse().ok())) {
                (Some(instance), Some(epoch)) if running => {
                    let sticky = labels.contains_key("berth.ip");
                    out.push(Existing { instance: instance.clone(), epoch, handle: id, sticky })
                }
                _ => {
                    let _ = docker
                        .remove_container(&id, Some(RemoveContainerOptionsBuilder::default().force(true).build()))
                        .await;
                }
            }
        }
        Ok(out)
    }

    async fn start(&self, task: &Task) -> Result<String, RuntimeError> {
        let docker = self.client().await?;
        let image = task.spec.image.clone().ok_or_else(|| RuntimeError::Start("the app has no image".into()))?;
        let network = self.ensure_network(task).await?;
        let name = self.container_name(&task.instance);
        // A leftover of an earlier run under the same name goes first.
        let _ =
            docker.remove_container(&name, Some(RemoveContainerOptionsBuilder::default().force(true).build())).await;
        let mut labels = HashMap::from([
            ("berth.node".to_string(), self.host.to_string()),
            ("berth.app".to_string(), task.app.clone()),
            ("berth.instance".to_string(), task.instance.clone()),
            ("berth.version".to_string(), task.version.to_string()),
            ("berth.epoch".to_string(), task.epoch.to_string()),
        ]);
        if let Some(ip) = task.ip {
            labels.insert("berth.ip".to_string(), ip.to_string());
        }
        let mut all_labels: HashMap<String, String> = task.spec.labels.clone().into_iter().collect();
        all_labels.extend(labels);
        let env: Vec<String> = task.env(self.host).into_iter().map(|(k, v)| format!("{k}={v}")).collect();
        let networking = match (&network, task.ip) {
            (Some(net), Some(ip)) => Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(
                    net.clone(),
                    EndpointSettings {
                        ipam_config: Some(EndpointIpamConfig {
                            ipv4_address: Some(ip.to_string()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                )])),
            }),
            _ => None,
        };
        let body = ContainerCreateBody {
            image: Some(image.clone()),
            cmd: if task.spec.cmd.is_empty() { None } else { Some(task.spec.cmd.clone()) },
            env: Some(env),
            labels: Some(all_labels),
            stop_timeout: Some(task.spec.stop_grace_s as i64),
            host_config: Some(HostConfig {
                nano_cpus: Some((task.spec.cpus * 1e9) as i64),
                memory: Some((task.spec.mem_mb * 1024 * 1024) as i64),
                network_mode: network.clone(),
                ..Default::default()
            }),
            networking_config: networking,
            ..Default::default()
        };
        let opts = CreateContainerOptionsBuilder::default().name(&name).build();
        let created = docker.create_container(Some(opts), body).await.map_err(|e| match &e {
            bollard::errors::Error::DockerResponseServerError { status_code: 404, .. } => {
                RuntimeError::Start(format!("image {image:?} is not on this host (berth does not pull): {e}"))
            }
            _ => RuntimeError::Start(format!("cannot create the container: {e}")),
        })?;
        if let Err(e) = docker.start_container(&created.id, None).await {
            let _ = docker
                .remove_container(&created.id, Some(RemoveContainerOptionsBuilder::default().force(true).build()))
                .await;
            return Err(RuntimeError::Start(format!("cannot start the container: {e}")));
        }
        Ok(created.id)
    }

    async fn wait(&self, handle: &str) -> Exit {
        let docker = match self.client().await {
            Ok(d) => d,
            Err(e) => return Exit { code: None, message: e.to_string() },
        };
        let mut stream = docker.wait_container(handle, None::<WaitContainerOptions>);
        match stream.next().await {
            Some(Ok(r)) => {
                Exit { code: Some(r.status_code as i32), message: format!("exited with code {}", r.status_code) }
            }
            // bollard reports a non-zero exit as an error carrying the code.
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, error })) => {
                Exit { code: Some(code as i32), message: format!("exited with code {code} {error}").trim().to_string() }
            }
            Some(Err(e)) => Exit { code: None, message: format!("lost the container: {e}") },
            None => Exit { code: None, message: "the container is gone".into() },
        }
    }

    async fn stop(&self, handle: &str, grace: Duration) -> Result<(), RuntimeError> {
        let docker = self.client().await?;
        let opts = StopContainerOptionsBuilder::default().t(grace.as_secs() as i32).build();
        match docker.stop_container(handle, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 304, .. }) => Ok(()),
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn remove(&self, _instance: &str, handle: &str) {
        let Ok(docker) = self.client().await else { return };
        let _ =
            docker.remove_container(handle, Some(RemoveContainerOptionsBuilder::default().force(true).build())).await;
    }

    async fn check_address(&self, handle: &str, task: &Task) -> IpAddr {
        let docker = match self.client().await {
            Ok(d) => d,
            Err(_) => return IpAddr::V4(task.ip.unwrap_or(Ipv4Addr::LOCALHOST)),
        };
        if let Some(ip) = task.ip {
            return IpAddr::V4(ip);
        }
        // No pool: the address on Docker's default bridge.
        let ip = docker
            .inspect_container(handle, None::<InspectContainerOptions>)
            .await
            .ok()
            .and_then(|c| c.network_settings)
            .and_then(|n| n.networks)
            .and_then(|nets| nets.values().find_map(|e| e.ip_address.clone()))
            .and_then(|s| s.parse().ok());
        ip.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
    }

    async fn check_cmd(
        &self,
        handle: &str,
        _task: &Task,
        cmd: &[String],
        timeout: Duration,
    ) -> Result<bool, RuntimeError> {
        let docker = self.client().await?;
        let out = tokio::time::timeout(timeout, exec(docker, handle, cmd)).await;
        match out {
            Err(_) => Ok(false),
            Ok(Ok((code, _))) => Ok(code == 0),
            Ok(Err(e)) => Err(e),
        }
    }

    async fn exec(&self, task: &Task, cmd: &[String], timeout: Duration) -> Result<(i64, Vec<u8>), RuntimeError> {
        let docker = self.client().await?;
        let name = self.container_name(&task.instance);
        match tokio::time::timeout(timeout, exec(docker, &name, cmd)).await {
            Err(_) => Err(RuntimeError::Other(format!("the command did not finish within {}s", timeout.as_secs()))),
            Ok(r) => r,
        }
    }

    async fn logs(&self, instance: &str, tail: usize, follow: bool) -> Result<LogStream, RuntimeError> {
        let docker = self.client().await?;
        let name = self.container_name(instance);
        let tail = if tail == usize::MAX { "all".to_string() } else { tail.to_string() };
        let opts = LogsOptionsBuilder::default().stdout(true).stderr(true).follow(follow).tail(&tail).build();
        let stream = docker
            .logs(&name, Some(opts))
            .map(|r| r.map(|o| o.into_bytes()).map_err(|e| std::io::Error::other(e.to_string())));
        Ok(Box::pin(stream))
    }
}

/// Runs `cmd` in a container; returns its exit code and output.
pub async fn exec(docker: &Docker, container: &str, cmd: &[String]) -> Result<(i64, Vec<u8>), RuntimeError> {
    use bollard::exec::{CreateExecOptions, StartExecResults};
    let created = docker
        .create_exec(
            container,
            CreateExecOptions {
                cmd: Some(cmd.to_vec()),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await
        .map_err(unavailable)?;
    let mut output = Vec::new();
    if let StartExecResults::Attached { output: mut stream, .. } =
        docker.start_exec(&created.id, None).await.map_err(unavailable)?
    {
        while let Some(Ok(chunk)) = stream.next().await {
            output.extend_from_slice(&chunk.into_bytes());
        }
    }
    let code = docker.inspect_exec(&created.id).await.map_err(unavailable)?.exit_code.unwrap_or(-1);
    Ok((code, output))
}
