//! Hosts in network namespaces: each node gets its own namespace and address
//! (198.19.T.N/24), joined by veth pairs to a bridge; the harness reaches them from the
//! root namespace through the bridge (198.19.T.254). Partitions are `iptables` DROP
//! rules inside the namespaces; healing flushes them. Needs root, `ip` and `iptables`.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Runs a shell command; its trimmed stdout, or an error with its stderr.
pub fn sh(cmd: &str) -> Result<String> {
    let out = Command::new("sh").args(["-c", cmd]).output().with_context(|| cmd.to_string())?;
    if !out.status.success() {
        bail!("{cmd}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Why namespaces cannot be used here, if they cannot.
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    for tool in ["ip", "iptables"] {
        if sh(&format!("command -v {tool} >/dev/null")).is_err() {
            return Some(format!("no {tool} command"));
        }
    }
    None
}

/// The namespaces, veths and bridge of one run; removed on drop.
pub struct Net {
    pub tag: u32,
    pub bridge: String,
    pub nodes: BTreeMap<u64, String>,
}

impl Net {
    pub fn ns(&self, id: u64) -> String {
        format!("bj{}n{id}", self.tag)
    }

    pub fn ip(&self, id: u64) -> String {
        format!("198.19.{}.{id}", self.tag)
    }

    /// Builds the bridge and one namespace per node id (ids 1..=250).
    pub fn create(ids: &[u64]) -> Result<Net> {
        let tag = 20 + std::process::id() % 200;
        let bridge = format!("bj{tag}");
        let mut net = Net { tag, bridge: bridge.clone(), nodes: BTreeMap::new() };
        let _ = sh(&format!("ip link del {bridge} 2>/dev/null"));
        sh(&format!(
            "ip link add {bridge} type bridge && ip addr add 198.19.{tag}.254/24 dev {bridge} && ip link set {bridge} up"
        ))?;
        // Docker sets FORWARD to DROP, and bridged frames go through iptables.
        sh(&format!("iptables -I FORWARD -i {bridge} -o {bridge} -j ACCEPT"))?;
        for &id in ids {
            net.add(id)?;
        }
        Ok(net)
    }

    /// Adds the host of node `id` (a namespace with its veth into the bridge), unless
    /// it exists: nodes added by membership changes get theirs on demand.
    pub fn add(&mut self, id: u64) -> Result<()> {
        if self.nodes.contains_key(&id) {
            return Ok(());
        }
        if !(1..=250).contains(&id) {
            bail!("node id {id} has no address in 198.19.{}.0/24 (ids 1..=250)", self.tag);
        }
        let (ns, tag, bridge) = (self.ns(id), self.tag, &self.bridge);
        let _ = sh(&format!("ip netns del {ns} 2>/dev/null"));
        sh(&format!(
            "ip netns add {ns} && ip link add bj{tag}v{id} type veth peer name bj{tag}p{id} && \
             ip link set bj{tag}v{id} master {bridge} up && ip link set bj{tag}p{id} netns {ns} && \
             ip -n {ns} link set bj{tag}p{id} name eth0 && ip -n {ns} addr add 198.19.{tag}.{id}/24 dev eth0 && \
             ip -n {ns} link set eth0 up && ip -n {ns} link set lo up"
        ))?;
        self.nodes.insert(id, ns);
        Ok(())
    }

    /// Cuts every link between `a` and `b` (both directions, in both namespaces).
    pub fn cut(&self, a: u64, b: u64) -> Result<()> {
        for (x, y) in [(a, b), (b, a)] {
            let (ns, peer) = (self.ns(x), self.ip(y));
            sh(&format!(
                "ip netns exec {ns} iptables -A INPUT -s {peer} -j DROP && ip netns exec {ns} iptables -A OUTPUT -d {peer} -j DROP"
            ))?;
        }
        Ok(())
    }

    /// Splits the nodes into the given groups: nodes in different groups cannot talk.
    pub fn partition(&self, groups: &[BTreeSet<u64>]) -> Result<()> {
        for (i, g) in groups.iter().enumerate() {
            for h in &groups[i + 1..] {
                for a in g {
                    for b in h {
                        self.cut(*a, *b)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Removes every partition.
    pub fn heal(&self) -> Result<()> {
        for ns in self.nodes.values() {
            sh(&format!("ip netns exec {ns} iptables -F"))?;
        }
        Ok(())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for (id, ns) in &self.nodes {
            let _ = sh(&format!("ip netns del {ns}"));
            let _ = sh(&format!("ip link del bj{}v{id} 2>/dev/null", self.tag));
        }
        let _ = sh(&format!("iptables -D FORWARD -i {b} -o {b} -j ACCEPT", b = self.bridge));
        let _ = sh(&format!("ip link del {}", self.bridge));
    }
}
