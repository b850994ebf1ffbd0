//! Host networking for the docker runtime: a host shim per pool that has instances on
//! this host (see `agent::shim`), with its address reserved in the replicated IPAM so
//! no instance ever gets it.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use ipnet::Ipv4Net;

use super::ops::AllocationInput;
use super::Node;
use crate::agent::shim;

/// Keeps a shim for every pool used on this host, for the life of the node.
pub async fn run(node: Arc<Node>, parent: String) {
    let owner = format!("shim:node-{}", node.id);
    let mut ready: HashSet<String> = HashSet::new();
    let mut applied = node.state.subscribe_changes();
    loop {
        let wanted: Vec<(String, Ipv4Net, Option<String>)> = {
            let r = node.state.read();
            let s = &r.state;
            // Containers only: a process instance's IP is not on any macvlan.
            let pools: HashSet<&str> = s
                .apps
                .on_host(node.id)
                .filter(|i| {
                    s.apps.apps.get(&i.app).and_then(|a| a.version(i.version)).is_some_and(|v| v.spec.image.is_some())
                })
                .filter_map(|i| i.pool.as_deref())
                .collect();
            pools
                .into_iter()
                .filter(|p| !ready.contains(*p))
                .filter_map(|p| s.ipam.pool(p).ok())
                .map(|p| {
                    let mine = p.allocations().find(|(_, a)| a.owner == owner).map(|(ip, _)| ip.to_string());
                    (p.name.clone(), p.subnet, mine)
                })
                .collect()
        };
        for (pool, subnet, mine) in wanted {
            let ip = match mine {
                Some(ip) => ip,
                None => {
                    let input = AllocationInput { owner: owner.clone(), ip: None };
                    match node.allocate(&pool, input, Some(format!("shim-{}-{pool}", node.id))).await {
                        Ok(a) => a.ip,
                        Err(e) => {
                            tracing::warn!(%pool, error = %e, "cannot reserve the shim address");
                            continue;
                        }
                    }
                }
            };
            let Ok(ip) = ip.parse() else { continue };
            match shim::ensure(&parent, &pool, ip, subnet).await {
                Ok(name) => {
                    tracing::debug!(%pool, %name, "host shim ready");
                    ready.insert(pool);
                }
                Err(e) => tracing::warn!(%pool, error = %e, "host shim not ready"),
            }
        }
        tokio::select! {
            _ = node.stopping() => return,
            _ = applied.changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}
