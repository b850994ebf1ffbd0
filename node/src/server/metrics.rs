//! `GET /metrics`: the Prometheus text exposition format (version 0.0.4), through the
//! `prometheus` crate's registry and encoder.
//!
//! Every node serves its own view. Counters and the request histogram are kept as
//! things happen; gauges are read at scrape time from Raft's metrics and this node's
//! replica of the state — each an O(1) or O(pools + hosts) read: instances by state
//! come from a count the state keeps per change, never a scan of every instance.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `berth_raft_term` | gauge | |
//! | `berth_raft_last_log_index`, `berth_raft_commit_index` (known to this node), `berth_raft_cluster_commit_index` (the quorum's, as last reported by the leader), `berth_raft_applied_index`, `berth_raft_snapshot_index`, `berth_raft_purged_index` (the last entry dropped from the log: a follower behind it catches up by snapshot) | gauge | |
//! | `berth_raft_apply_lag` (commit − applied entries) | gauge | |
//! | `berth_apply_wait_max_seconds` (the longest an apply waited for the state's lock — readers, snapshots — since the node started) | gauge | |
//! | `berth_raft_is_leader`, `berth_raft_leader_id` (0: none known) | gauge | |
//! | `berth_raft_leader_changes_total` (a new leader seen by this node) | counter | |
//! | `berth_raft_voters`, `berth_raft_learners` | gauge | |
//! | `berth_http_request_duration_seconds` | histogram | `route` (the path template), `method`, `code` |
//! | `berth_instances` | gauge | `state` |
//! | `berth_apps`, `berth_deployments`, `berth_deployments_blocked` | gauge | |
//! | `berth_pool_addresses`, `berth_pool_used_addresses` | gauge | `pool` |
//! | `berth_hosts` | gauge | `state` (up, down, draining) |
//! | `berth_auth_refused_total` (401/403 for a token, HTTP and gRPC) | counter | `code` |
//! | `berth_rate_limited_total` (429) | counter | |
//! | `berth_read_index_rounds_total` (read-index rounds this node ran for linearizable reads: concurrent reads share one, `server::coalesce`) | counter | |
//! | `berth_disk_free_bytes`, `berth_disk_usable` (the data dir) | gauge | |

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use berth_raft::openraft::type_config::async_runtime::WatchReceiver;
use berth_raft::stages::{self, Step};
use berth_raft::typ;
use prometheus::{
    Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use super::Node;
use crate::error::ApiError;
use crate::state::nodes::HostState;
use crate::state::State as Replicated;

/// Latency buckets, seconds: a local read takes well under a millisecond, a write one
/// Raft round, a `?wait` up to the client's timeout.
const BUCKETS: [f64; 14] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// A node's registry and the metrics kept as things happen.
pub struct Metrics {
    registry: Registry,
    requests: HistogramVec,
    leader_changes: IntCounter,
    term: IntGauge,
    last_log: IntGauge,
    committed: IntGauge,
    cluster_committed: IntGauge,
    applied: IntGauge,
    snapshot: IntGauge,
    purged: IntGauge,
    apply_lag: IntGauge,
    apply_wait_max: Gauge,
    is_leader: IntGauge,
    leader_id: IntGauge,
    voters: IntGauge,
    learners: IntGauge,
    instances: IntGaugeVec,
    apps: IntGauge,
    deployments: IntGauge,
    blocked: IntGauge,
    pool_size: IntGaugeVec,
    pool_used: IntGaugeVec,
    hosts: IntGaugeVec,
    contact_age: Gauge,
    fence_after: Gauge,
    disk_free: IntGauge,
    disk_usable: IntGauge,
    /// Requests refused for their token (HTTP and gRPC), by error code.
    pub auth_refused: IntCounterVec,
    /// Requests refused with 429.
    pub rate_limited: IntCounter,
    read_rounds: IntCounter,
    /// With TLS only (not in the registry: a node without TLS shows no expiry).
    tls_expiry: IntGauge,
    /// `SIGHUP` reloads of the TLS files, by result (`ok`, `refused`); with TLS only.
    pub tls_reloads: IntCounterVec,
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("a valid metric name");
    registry.register(Box::new(g.clone())).expect("registered once");
    g
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, label: &str) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), &[label]).expect("a valid metric name");
    registry.register(Box::new(g.clone())).expect("registered once");
    g
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let requests = HistogramVec::new(
            HistogramOpts::new("berth_http_request_duration_seconds", "HTTP API requests by route, method and status")
                .buckets(BUCKETS.to_vec()),
            &["route", "method", "code"],
        )
        .expect("a valid metric");
        r.register(Box::new(requests.clone())).expect("registered once");
        let leader_changes =
            IntCounter::new("berth_raft_leader_changes_total", "times this node saw a new leader").expect("valid");
        r.register(Box::new(leader_changes.clone())).expect("registered once");
        let seconds = |name: &str, help: &str| {
            let g = Gauge::new(name, help).expect("a valid metric name");
            r.register(Box::new(g.clone())).expect("registered once");
            g
        };
        let contact_age = seconds(
            "berth_leader_contact_age_seconds",
            "time since this host was last in contact with a leader that a quorum follows",
        );
        let fence_after = seconds(
            "berth_fence_after_seconds",
            "contact age at which this host fences its sticky-IP instances (half its host deadline)",
        );
        let auth_refused = IntCounterVec::new(
            Opts::new("berth_auth_refused_total", "requests refused for their API token (401/403), by error code"),
            &["code"],
        )
        .expect("a valid metric");
        r.register(Box::new(auth_refused.clone())).expect("registered once");
        let rate_limited =
            IntCounter::new("berth_rate_limited_total", "requests refused with 429 (--rate-limit)").expect("valid");
        r.register(Box::new(rate_limited.clone())).expect("registered once");
        let read_rounds = IntCounter::new(
            "berth_read_index_rounds_total",
            "read-index rounds run for linearizable reads (concurrent reads share one)",
        )
        .expect("valid");
        r.register(Box::new(read_rounds.clone())).expect("registered once");
        let disk_free = gauge(&r, "berth_disk_free_bytes", "free bytes on the data dir's filesystem (last look)");
        let disk_usable = gauge(
            &r,
            "berth_disk_usable",
            "1 while the data dir takes writes; 0 when full (under --min-free-disk-mb) or read-only",
        );
        Metrics {
            tls_expiry: IntGauge::new(
                "berth_tls_certificate_expiry_timestamp_seconds",
                "when the TLS certificate this node presents expires (Unix seconds)",
            )
            .expect("valid"),
            tls_reloads: {
                let c = IntCounterVec::new(
                    Opts::new("berth_tls_reloads_total", "reloads of the TLS files on SIGHUP, by result (ok, refused)"),
                    &["result"],
                )
                .expect("valid");
                // Both series from the start: a family without one cannot be encoded.
                for result in ["ok", "refused"] {
                    c.with_label_values(&[result]);
                }
                c
            },
            disk_free,
            disk_usable,
            auth_refused,
            rate_limited,
            read_rounds,
            contact_age,
            fence_after,
            requests,
            leader_changes,
            term: gauge(&r, "berth_raft_term", "current Raft term"),
            last_log: gauge(&r, "berth_raft_last_log_index", "index of the last entry in this node's log"),
            committed: gauge(&r, "berth_raft_commit_index", "index of the last entry this node knows committed"),
            cluster_committed: gauge(
                &r,
                "berth_raft_cluster_commit_index",
                "the quorum's commit index as the leader last reported it",
            ),
            applied: gauge(&r, "berth_raft_applied_index", "index of the last entry applied to the state"),
            snapshot: gauge(&r, "berth_raft_snapshot_index", "index the last snapshot covers"),
            purged: gauge(
                &r,
                "berth_raft_purged_index",
                "index of the last entry dropped from this node's log (a follower behind it catches up by snapshot)",
            ),
            apply_lag: gauge(&r, "berth_raft_apply_lag", "entries committed but not yet applied"),
            apply_wait_max: seconds(
                "berth_apply_wait_max_seconds",
                "the longest an apply waited for the state's lock (readers, snapshots) since the node started",
            ),
            is_leader: gauge(&r, "berth_raft_is_leader", "1 while this node leads"),
            leader_id: gauge(&r, "berth_raft_leader_id", "the leader this node knows of (0: none)"),
            voters: gauge(&r, "berth_raft_voters", "voters in the membership"),
            learners: gauge(&r, "berth_raft_learners", "learners (non-voting members)"),
            instances: gauge_vec(&r, "berth_instances", "instances by state", "state"),
            apps: gauge(&r, "berth_apps", "apps"),
            deployments: gauge(&r, "berth_deployments", "rollouts in progress"),
            blocked: gauge(&r, "berth_deployments_blocked", "rollouts that cannot go on (see GET /v1/deployments)"),
            pool_size: gauge_vec(&r, "berth_pool_addresses", "addresses a pool hands out", "pool"),
            pool_used: gauge_vec(&r, "berth_pool_used_addresses", "addresses of a pool allocated", "pool"),
            hosts: gauge_vec(&r, "berth_hosts", "registered hosts by state", "state"),
            registry: r,
        }
    }

    /// Counts a new leader.
    pub fn leader_changed(&self) {
        self.leader_changes.inc();
    }

    /// Records one answered request.
    pub fn observe(&self, route: &str, method: &str, code: u16, seconds: f64) {
        let code = code.to_string();
        self.requests.with_label_values(&[route, method, code.as_str()]).observe(seconds);
    }

    /// The exposition, gauges read now.
    pub fn render(&self, node: &Node) -> Result<String, String> {
        let m = node.raft.metrics().borrow_watched().clone();
        let index = |l: Option<&typ::LogId<Replicated>>| l.map_or(0, |l| l.index as i64);
        let committed = index(m.local_committed.as_ref());
        self.cluster_committed.set(index(m.cluster_committed.as_ref()));
        let applied = index(m.last_applied.as_ref());
        self.term.set(m.current_term as i64);
        self.last_log.set(m.last_log_index.unwrap_or(0) as i64);
        self.committed.set(committed);
        self.applied.set(applied);
        self.snapshot.set(index(m.snapshot.as_ref()));
        self.purged.set(index(m.purged.as_ref()));
        self.apply_lag.set((committed - applied).max(0));
        self.apply_wait_max.set(node.state.apply_wait_max().as_secs_f64());
        self.read_rounds.inc_by(node.proposer.read_rounds().saturating_sub(self.read_rounds.get()));
        self.is_leader.set(i64::from(m.current_leader == Some(node.id)));
        self.leader_id.set(m.current_leader.unwrap_or(0) as i64);
        let membership = m.membership_config.membership();
        let voters = membership.voter_ids().count();
        self.voters.set(voters as i64);
        self.learners.set(membership.learner_ids().count() as i64);
        self.contact_age.set(node.contact.silent_for().as_secs_f64());
        self.fence_after.set(node.timing().fence_after().as_secs_f64());
        self.disk_free.set(i64::try_from(node.disk.free_bytes()).unwrap_or(i64::MAX));
        self.disk_usable.set(i64::from(node.disk.problem().is_none()));
        {
            let replica = node.state.read();
            let s = &replica.state;
            for (state, n) in s.apps.count_by_state() {
                self.instances.with_label_values(&[state.as_str()]).set(n as i64);
            }
            self.apps.set(s.apps.apps.len() as i64);
            let rollouts = s.apps.apps.values().filter_map(|a| a.deployment.as_ref());
            let (mut n, mut blocked) = (0, 0);
            for d in rollouts {
                n += 1;
                blocked += i64::from(d.blocked.is_some());
            }
            self.deployments.set(n);
            self.blocked.set(blocked);
            // Pools come and go: the labelled series are rebuilt, not left stale.
            self.pool_size.reset();
            self.pool_used.reset();
            for p in s.ipam.pools() {
                self.pool_size.with_label_values(&[p.name.as_str()]).set(p.size() as i64);
                self.pool_used.with_label_values(&[p.name.as_str()]).set(p.used() as i64);
            }
            let mut by_state = [0i64; 3];
            for id in s.nodes.registered.keys().filter(|id| !s.nodes.retired.contains(id)) {
                by_state[match s.nodes.state(*id) {
                    HostState::Up => 0,
                    HostState::Down => 1,
                    HostState::Draining => 2,
                }] += 1;
            }
            for (name, n) in ["up", "down", "draining"].into_iter().zip(by_state) {
                self.hosts.with_label_values(&[name]).set(n);
            }
        }
        let mut families = self.registry.gather();
        if let Some(tls) = &node.tls {
            use prometheus::core::Collector;
            self.tls_expiry.set(tls.not_after());
            families.extend(self.tls_expiry.collect());
            families.extend(self.tls_reloads.collect());
        }
        TextEncoder::new().encode_to_string(&families).map_err(|e| e.to_string())
    }
}

/// `GET /metrics`.
pub async fn serve(State(node): State<Arc<Node>>) -> Result<Response, ApiError> {
    let text = node.metrics.render(&node).map_err(|e| ApiError::new(500, "internal", e))?;
    Ok(([(CONTENT_TYPE, prometheus::TEXT_FORMAT)], text).into_response())
}

/// Middleware: times every request under its route template (`/v1/apps/{id}`, never
/// the concrete path: the label set stays small), `unmatched` for no route.
pub async fn track(State(node): State<Arc<Node>>, req: Request, next: Next) -> Response {
    stages::mark(Step::HttpIn);
    let route = req.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str()).to_string();
    let method = req.method().as_str().to_string();
    let started = Instant::now();
    let response = next.run(req).await;
    stages::mark(Step::HttpOut);
    node.metrics.observe(&route, &method, response.status().as_u16(), started.elapsed().as_secs_f64());
    response
}

/// Counts leader changes as this node sees them: each (term, leader) with a leader.
///
/// Watches openraft's server metrics (vote, role, leader, membership), not the full
/// metrics, which change with every entry appended or applied: this task would
/// otherwise wake for each write on every node.
pub async fn watch_leader(node: Arc<Node>) {
    use berth_raft::openraft::vote::RaftLeaderId;
    let mut rx = node.raft.server_metrics();
    let mut last = None;
    loop {
        let seen = {
            let m = rx.borrow_and_update();
            m.current_leader.map(|l| (m.vote.leader_id().term(), l))
        };
        if seen.is_some() && seen != last {
            node.metrics.leader_changed();
            last = seen;
        }
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            () = node.stopping() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::state::apps::InstanceState;

    #[test]
    fn instance_states_are_listed_once_each_in_order() {
        for (i, s) in InstanceState::ALL.iter().enumerate() {
            assert_eq!(*s as usize, i);
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }
}
