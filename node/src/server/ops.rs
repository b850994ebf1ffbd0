//! The operations of the API, shared by the HTTP and gRPC front ends: input checks,
//! then a linearizable read or a write through the leader.

use std::net::Ipv4Addr;
use std::str::FromStr;

use berth_raft::openraft::type_config::async_runtime::WatchReceiver;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::Node;
use crate::error::ApiError;
use crate::state::ipam::{AllocationInfo, PoolInfo};
use crate::state::{Command, Reply, Response};

/// `GET /v1/cluster`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct ClusterView {
    pub leader: Option<u64>,
    pub term: u64,
    pub members: Vec<MemberView>,
}

/// `POST /v1/cluster/snapshot`: the snapshot this node built.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct SnapshotView {
    /// The last log index it covers.
    pub index: u64,
    /// From the request until it was built and stored.
    pub ms: u64,
}

/// How long `POST /v1/cluster/snapshot` waits for the snapshot.
const SNAPSHOT_WAIT: std::time::Duration = std::time::Duration::from_secs(300);
/// How long `POST /v1/cluster/snapshot` waits for a build before asking again.
const SNAPSHOT_RETRIGGER: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct MemberView {
    pub id: u64,
    pub grpc: String,
    pub http: Option<String>,
    pub voter: bool,
}

/// The body of `POST /v1/ipam/pools`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolInput {
    #[schema(pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]
    pub name: String,
    /// IPv4 CIDR, e.g. `10.1.0.0/24`.
    #[schema(pattern = "^([0-9]{1,3}\\.){3}[0-9]{1,3}/[0-9]{1,2}$")]
    pub subnet: String,
    /// An address of the subnet, never allocated.
    #[serde(default)]
    #[schema(format = Ipv4)]
    pub gateway: Option<String>,
    /// A CIDR inside the subnet to allocate from (default: all of it).
    #[serde(default)]
    #[schema(pattern = "^([0-9]{1,3}\\.){3}[0-9]{1,3}/[0-9]{1,2}$")]
    pub range: Option<String>,
}

/// The body of `POST /v1/ipam/pools/{pool}/allocations`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AllocationInput {
    /// Who holds the address: any text of at most 256 bytes.
    #[schema(max_length = 256)]
    pub owner: String,
    /// A specific address instead of the lowest free one.
    #[serde(default)]
    #[schema(format = Ipv4)]
    pub ip: Option<String>,
}

/// The body of `POST /v1/cluster/members`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemberInput {
    pub id: u64,
    pub grpc: String,
    #[serde(default)]
    pub voter: bool,
}

fn check_register_key(key: &str) -> Result<(), ApiError> {
    if key.is_empty() || key.len() > 128 {
        return Err(ApiError::invalid("invalid_request", "register keys are 1 to 128 characters"));
    }
    Ok(())
}

/// The body of `PUT /v1/registers/{key}`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterWrite {
    pub value: serde_json::Value,
}

/// The body of `POST /v1/registers/{key}/cas`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterCas {
    pub from: serde_json::Value,
    pub to: serde_json::Value,
}

/// Longest owner text accepted.
pub const MAX_OWNER_BYTES: usize = 256;

/// Whether `s` is a DNS label: `[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?`.
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

fn parse_net(field: &str, s: &str) -> Result<Ipv4Net, ApiError> {
    let net = Ipv4Net::from_str(s.trim()).map_err(|_| {
        ApiError::invalid("invalid_pool", format!("{field}: {s:?} is not an IPv4 CIDR such as 10.99.0.0/24"))
    })?;
    if net.trunc() != net {
        return Err(ApiError::invalid(
            "invalid_pool",
            format!("{field}: {s} has host bits set; did you mean {}?", net.trunc()),
        ));
    }
    Ok(net)
}

fn parse_ip(field: &str, code: &str, s: &str) -> Result<Ipv4Addr, ApiError> {
    Ipv4Addr::from_str(s.trim()).map_err(|_| ApiError::invalid(code, format!("{field}: {s:?} is not an IPv4 address")))
}

/// Checks a pool definition and turns it into the command that creates it.
pub fn pool_command(input: PoolInput) -> Result<Command, ApiError> {
    if !is_dns_label(&input.name) {
        return Err(ApiError::invalid(
            "invalid_pool",
            format!("name: {:?} must be a DNS label ([a-z0-9]([a-z0-9-]{{0,61}}[a-z0-9])?)", input.name),
        ));
    }
    let subnet = parse_net("subnet", &input.subnet)?;
    if subnet.prefix_len() > 30 {
        return Err(ApiError::invalid(
            "invalid_pool",
            format!("subnet: {subnet} is too small for a pool (at most /30)"),
        ));
    }
    let gateway = match input.gateway.as_deref().filter(|g| !g.is_empty()) {
        None => None,
        Some(g) => {
            let g = parse_ip("gateway", "invalid_pool", g)?;
            if !subnet.contains(&g) || g == subnet.network() || g == subnet.broadcast() {
                return Err(ApiError::invalid(
                    "invalid_pool",
                    format!("gateway: {g} is not a host address of subnet {subnet}"),
                ));
            }
            Some(g)
        }
    };
    let range = match input.range.as_deref().filter(|r| !r.is_empty()) {
        None => None,
        Some(r) => {
            let r = parse_net("range", r)?;
            if !subnet.contains(&r) {
                return Err(ApiError::invalid("invalid_pool", format!("range: {r} is not inside subnet {subnet}")));
            }
            Some(r)
        }
    };
    Ok(Command::CreatePool { name: input.name, subnet, gateway, range })
}

fn unexpected(r: Reply) -> ApiError {
    ApiError::internal(format!("unexpected reply {r:?}"))
}

fn outcome(r: Response) -> Result<Reply, ApiError> {
    r.0.map_err(ApiError::from)
}

impl Node {
    /// Waits for a linearizable read unless `stale` (read the local replica as it is).
    pub(crate) async fn read_barrier(&self, stale: bool) -> Result<(), ApiError> {
        if stale {
            Ok(())
        } else {
            self.proposer.linearize().await
        }
    }

    /// Builds a snapshot of this node's replica now, covering everything it has
    /// applied (and lets openraft purge the log behind it, as its policy would), e.g.
    /// before a backup of the data dir or to measure the cost with a big state.
    pub async fn snapshot_now(&self) -> Result<SnapshotView, ApiError> {
        if let Some(p) = self.disk.problem() {
            // Writing a snapshot to that disk would be a storage error: fatal.
            return Err(ApiError::unavailable(p.code, format!("node {}: {}; no snapshot taken", self.id, p.message)));
        }
        let started = std::time::Instant::now();
        let target = self.state.applied_index();
        // openraft drops a trigger while a build is under way (the snapshot policy's, or
        // another request's), and that build may cover less than `target`: ask again
        // until a snapshot covers it.
        let covered =
            |m: &berth_raft::typ::RaftMetrics<crate::state::State>| m.snapshot.is_some_and(|s| s.index >= target);
        loop {
            self.raft.trigger().snapshot().await.map_err(|e| ApiError::unavailable("raft_stopped", e.to_string()))?;
            let left = SNAPSHOT_WAIT.saturating_sub(started.elapsed());
            let round = left.min(SNAPSHOT_RETRIGGER);
            match self.raft.wait(Some(round)).metrics(covered, "snapshot built").await {
                Ok(m) => {
                    let index = m.snapshot.map(|s| s.index).unwrap_or(0);
                    return Ok(SnapshotView { index, ms: started.elapsed().as_millis() as u64 });
                }
                Err(e) if round == left => {
                    return Err(ApiError::unavailable("snapshot_timeout", format!("snapshot not built: {e}")));
                }
                Err(_) => continue,
            }
        }
    }

    /// The cluster as this node's replica sees it (after a read barrier unless stale).
    pub async fn cluster_view(&self, stale: bool) -> Result<ClusterView, ApiError> {
        self.read_barrier(stale).await?;
        let metrics = self.raft.metrics().borrow_watched().clone();
        let replica = self.state.read();
        // The membership this replica has applied: after the read barrier it includes
        // every committed change (Raft's metrics may publish a little later). Before
        // anything is applied, the log's effective membership.
        let membership = if replica.membership.membership().nodes().next().is_some() {
            replica.membership.membership().clone()
        } else {
            metrics.membership_config.membership().clone()
        };
        let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, n)| MemberView {
                id: *id,
                grpc: n.addr.clone(),
                http: replica.state.nodes.registered.get(id).map(|r| r.http.clone()),
                voter: voters.contains(id),
            })
            .collect();
        Ok(ClusterView { leader: metrics.current_leader, term: metrics.current_term, members })
    }

    pub async fn create_pool(
        &self,
        input: PoolInput,
        request_id: Option<String>,
    ) -> Result<(PoolInfo, bool), ApiError> {
        let cmd = pool_command(input)?;
        match outcome(self.proposer.write(cmd, request_id).await?)? {
            Reply::Pool { pool, created } => Ok((pool, created)),
            other => Err(unexpected(other)),
        }
    }

    pub async fn list_pools(&self, stale: bool) -> Result<Vec<PoolInfo>, ApiError> {
        self.read_barrier(stale).await?;
        Ok(self.state.read().state.ipam.pools().map(|p| p.info()).collect())
    }

    pub async fn delete_pool(&self, name: &str, request_id: Option<String>) -> Result<(), ApiError> {
        outcome(self.proposer.write(Command::DeletePool { name: name.to_string() }, request_id).await?).map(|_| ())
    }

    pub async fn allocate(
        &self,
        pool: &str,
        input: AllocationInput,
        request_id: Option<String>,
    ) -> Result<AllocationInfo, ApiError> {
        if input.owner.len() > MAX_OWNER_BYTES {
            return Err(ApiError::invalid("invalid_allocation", format!("owner: longer than {MAX_OWNER_BYTES} bytes")));
        }
        let ip = match input.ip.as_deref().filter(|s| !s.is_empty()) {
            Some(s) => Some(parse_ip("ip", "invalid_allocation", s)?),
            None => None,
        };
        let cmd = Command::Allocate { pool: pool.to_string(), owner: input.owner, ip };
        match outcome(self.proposer.write(cmd, request_id).await?)? {
            Reply::Allocation(a) => Ok(a),
            other => Err(unexpected(other)),
        }
    }

    pub async fn list_allocations(&self, pool: &str, stale: bool) -> Result<Vec<AllocationInfo>, ApiError> {
        self.read_barrier(stale).await?;
        let replica = self.state.read();
        let pool = replica.state.ipam.pool(pool)?;
        Ok(pool.allocations().map(|(ip, a)| AllocationInfo { ip: ip.to_string(), owner: a.owner.clone() }).collect())
    }

    pub async fn release(&self, pool: &str, ip: &str, request_id: Option<String>) -> Result<(), ApiError> {
        let ip = parse_ip("ip", "invalid_allocation", ip)?;
        outcome(self.proposer.write(Command::Release { pool: pool.to_string(), ip }, request_id).await?).map(|_| ())
    }

    pub async fn add_member(&self, input: MemberInput) -> Result<ClusterView, ApiError> {
        if input.id == 0 {
            return Err(ApiError::invalid("invalid_member", "id: 0 is reserved; node ids start at 1"));
        }
        berth_cluster_config::parse_peers(&format!("{}={}", input.id, input.grpc))
            .map_err(|e| ApiError::invalid("invalid_member", format!("grpc: {e}")))?;
        self.proposer.add_member(input.id, input.grpc, input.voter).await?;
        self.cluster_view(false).await
    }

    pub async fn remove_member(&self, id: u64) -> Result<ClusterView, ApiError> {
        self.proposer.remove_member(id).await?;
        self.cluster_view(false).await
    }

    /// A register's value (JSON; `null` when never written).
    pub async fn read_register(&self, key: &str, stale: bool) -> Result<serde_json::Value, ApiError> {
        check_register_key(key)?;
        self.read_barrier(stale).await?;
        let text = self.state.read().state.registers.get(key).cloned();
        Ok(text.and_then(|t| serde_json::from_str(&t).ok()).unwrap_or(serde_json::Value::Null))
    }

    pub async fn write_register(
        &self,
        key: &str,
        value: &serde_json::Value,
        request_id: Option<String>,
    ) -> Result<(), ApiError> {
        check_register_key(key)?;
        let cmd = Command::RegisterWrite { key: key.into(), value: value.to_string() };
        outcome(self.proposer.write(cmd, request_id).await?).map(|_| ())
    }

    pub async fn cas_register(
        &self,
        key: &str,
        from: &serde_json::Value,
        to: &serde_json::Value,
        request_id: Option<String>,
    ) -> Result<(), ApiError> {
        check_register_key(key)?;
        let cmd = Command::RegisterCas { key: key.into(), from: from.to_string(), to: to.to_string() };
        outcome(self.proposer.write(cmd, request_id).await?).map(|_| ())
    }

    /// Ready: a leader is known and a read barrier passes within the read deadline.
    pub async fn ready(&self) -> Result<(), ApiError> {
        if let Some(p) = self.disk.problem() {
            return Err(ApiError::unavailable(p.code, format!("node {}: {}", self.id, p.message)));
        }
        self.proposer.linearize().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(subnet: &str, gateway: Option<&str>, range: Option<&str>) -> PoolInput {
        PoolInput {
            name: "lan".into(),
            subnet: subnet.into(),
            gateway: gateway.map(Into::into),
            range: range.map(Into::into),
        }
    }

    #[test]
    fn dns_labels() {
        for ok in ["a", "shop", "a-1", "0abc", &"x".repeat(63)] {
            assert!(is_dns_label(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "Shop", "a_b", "a.b", &"x".repeat(64)] {
            assert!(!is_dns_label(bad), "{bad}");
        }
    }

    #[test]
    fn pool_input_errors_name_the_field() {
        let cases = [
            (pool("10.99.0.0/33", None, None), "subnet:"),
            (pool("10.99.0.5/24", None, None), "did you mean 10.99.0.0/24"),
            (pool("10.99.0.0/31", None, None), "too small"),
            (pool("10.99.0.0/24", Some("10.98.0.1"), None), "gateway:"),
            (pool("10.99.0.0/24", Some("10.99.0.0"), None), "gateway:"),
            (pool("10.99.0.0/24", Some("nope"), None), "gateway:"),
            (pool("10.99.0.0/24", None, Some("10.98.0.0/28")), "range:"),
        ];
        for (input, needle) in cases {
            let e = pool_command(input.clone()).unwrap_err();
            assert_eq!(e.status, 400);
            assert!(e.message.contains(needle), "{input:?}: {}", e.message);
        }
        let mut bad_name = pool("10.99.0.0/24", None, None);
        bad_name.name = "LAN".into();
        assert!(pool_command(bad_name).unwrap_err().message.starts_with("name:"));
    }

    #[test]
    fn valid_pool_input_becomes_a_command() {
        let c = pool_command(pool("10.99.0.0/24", Some("10.99.0.1"), Some("10.99.0.16/28"))).unwrap();
        assert!(matches!(c, Command::CreatePool { gateway: Some(_), range: Some(_), .. }));
    }
}
