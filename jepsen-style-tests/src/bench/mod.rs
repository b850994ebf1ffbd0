//! The pieces `berth-bench` is built from: latency statistics, CPU accounting of
//! processes, an etcd cluster to measure against, and one module per scenario.
//!
//! Every scenario prints one JSON object per line per measured system and
//! configuration (fields at least `scenario`, `system`, `clients`, `ops_per_s`,
//! `p50_ms`, `p99_ms`) and a last line with the ratio to the anchor.

pub mod contact;
pub mod deploy;
pub mod etcd;
#[cfg(feature = "etcd-best")]
pub mod etcd_best;
pub mod failover;
pub mod floor;
pub mod hostloss;
pub mod ipam;
pub mod mixed;
pub mod placement;
pub mod rounds;
pub mod stages;

use std::time::Duration;

use serde_json::Value;

/// Latencies of one measured configuration.
#[derive(Default, Clone)]
pub struct Latencies {
    ms: Vec<f64>,
}

impl Latencies {
    pub fn push(&mut self, d: Duration) {
        self.ms.push(d.as_secs_f64() * 1000.0);
    }

    pub fn extend(&mut self, other: Latencies) {
        self.ms.extend(other.ms);
    }

    pub fn len(&self) -> usize {
        self.ms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ms.is_empty()
    }

    /// The `q` quantile (0.0..=1.0), nearest rank; 0 when empty.
    pub fn quantile(&self, q: f64) -> f64 {
        if self.ms.is_empty() {
            return 0.0;
        }
        let mut v = self.ms.clone();
        v.sort_by(f64::total_cmp);
        let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
        v[rank - 1]
    }

    pub fn max(&self) -> f64 {
        self.ms.iter().copied().fold(0.0, f64::max)
    }
}

/// Creates IP pool `name` of `subnet` through the node at `url`.
pub async fn create_pool(http: &reqwest::Client, url: &str, name: &str, subnet: &str) -> anyhow::Result<()> {
    let r = http
        .post(format!("{url}/v1/ipam/pools"))
        .json(&serde_json::json!({"name": name, "subnet": subnet}))
        .send()
        .await?;
    if !r.status().is_success() {
        anyhow::bail!("cannot create pool {name}: {}", r.text().await?);
    }
    Ok(())
}

/// Rounds to `digits` decimals, for readable JSON.
pub fn round(x: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (x * m).round() / m
}

/// Prints one result line.
pub fn emit(v: Value) {
    println!("{v}");
}

/// CPU time (user + system) a process has used so far, in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: fields are counted after its ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after ')'.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some(ticks as f64 / hz.max(1) as f64)
}

/// Total CPU seconds of several processes (those that are gone count as 0).
pub fn cpu_total(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|p| cpu_seconds(*p)).sum()
}

/// Resident memory of a process, in MiB.
pub fn rss_mb(pid: u32) -> Option<f64> {
    status_mb(pid, "VmRSS:")
}

/// The most resident memory process `pid` has held since it started, in MiB.
pub fn peak_rss_mb(pid: u32) -> Option<f64> {
    status_mb(pid, "VmHWM:")
}

fn status_mb(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status.lines().find(|l| l.starts_with(field))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// One HTTP call to a node; the JSON answer, or an error naming the URL and status.
pub async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let mut req = http.request(method, &url);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await?;
    let status = r.status();
    let text = r.text().await?;
    if !status.is_success() {
        anyhow::bail!("{url}: {status} {text}");
    }
    Ok(if text.is_empty() { Value::Null } else { serde_json::from_str(&text)? })
}

/// A free TCP port on loopback.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_use_the_nearest_rank() {
        let mut l = Latencies::default();
        assert_eq!(l.quantile(0.5), 0.0);
        for ms in 1..=100 {
            l.push(Duration::from_millis(ms));
        }
        assert_eq!(l.quantile(0.5), 50.0);
        assert_eq!(l.quantile(0.99), 99.0);
        assert_eq!(l.quantile(1.0), 100.0);
        assert_eq!(l.max(), 100.0);
    }

    #[test]
    fn cpu_time_of_this_process_is_readable() {
        let t = cpu_seconds(std::process::id()).expect("own /proc/self/stat");
        assert!(t >= 0.0);
        assert!(rss_mb(std::process::id()).unwrap() > 0.0);
    }
}
