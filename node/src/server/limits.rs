//! The per-client request rate limit of the HTTP API (`--rate-limit`): a token bucket
//! per client — the API token when the request carries a valid one, else the source
//! address — refilled at the configured rate and holding twice that (a burst of two
//! seconds' worth). An empty bucket answers 429 `rate_limited` with `Retry-After`.
//!
//! Each node limits what it serves itself (no cluster-wide count: that would cost a
//! Raft round per request). Not limited: the probes and the UI's files (`Need::Public`),
//! and a log or exec request another node proxied (it was counted where it came in).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Beyond this many clients tracked, full buckets (idle clients) are forgotten.
const MAX_TRACKED: usize = 10_000;

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The buckets of one node.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

/// Who is counted: the token, else the address — an IPv6 client by its /64, the
/// block one host is given (rotating addresses inside it buys nothing).
pub fn client_key(token: Option<&str>, addr: Option<IpAddr>) -> String {
    match (token, addr) {
        (Some(id), _) => format!("token:{id}"),
        (None, Some(IpAddr::V6(ip))) => {
            let s = ip.segments();
            format!("addr:{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        (None, Some(ip)) => format!("addr:{ip}"),
        (None, None) => "addr:unknown".to_string(),
    }
}

impl RateLimiter {
    pub fn new(rate: f64) -> Self {
        RateLimiter { rate, burst: (2.0 * rate).max(1.0), buckets: Mutex::new(HashMap::new()) }
    }

    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Takes one request from `key`'s bucket: Ok, or how long until one is available.
    pub fn take(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_TRACKED && !buckets.contains_key(key) {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < burst);
            if buckets.len() >= MAX_TRACKED / 2 {
                // Still crowded (many clients busy at once): start over rather than
                // scan on every new client. Everyone gets a full bucket once — lenient
                // for a moment, bounded in memory and time.
                buckets.clear();
            }
        }
        let b = buckets.entry(key.to_string()).or_insert(Bucket { tokens: self.burst, at: now });
        let refill = now.saturating_duration_since(b.at).as_secs_f64() * self.rate;
        b.tokens = (b.tokens + refill).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / self.rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_the_rate() {
        let l = RateLimiter::new(5.0);
        let t0 = Instant::now();
        for _ in 0..10 {
            assert!(l.take("a", t0).is_ok());
        }
        let wait = l.take("a", t0).unwrap_err();
        assert!(wait > Duration::from_millis(150) && wait <= Duration::from_millis(200), "{wait:?}");
        assert!(l.take("b", t0).is_ok(), "another client has its own bucket");
        assert!(l.take("a", t0 + Duration::from_millis(200)).is_ok(), "refilled at 5/s");
        assert!(l.take("a", t0 + Duration::from_millis(200)).is_err());
        assert_eq!(client_key(Some("abc"), None), "token:abc");
        assert_eq!(client_key(None, Some("10.0.0.1".parse().unwrap())), "addr:10.0.0.1");
        let v6 = |s: &str| client_key(None, Some(s.parse().unwrap()));
        assert_eq!(v6("2001:db8:1:2:aaaa::1"), v6("2001:db8:1:2:bbbb::9"), "one /64, one bucket");
        assert_ne!(v6("2001:db8:1:2::1"), v6("2001:db8:1:3::1"));
    }

    #[test]
    fn idle_clients_are_forgotten() {
        let l = RateLimiter::new(1000.0);
        let t0 = Instant::now();
        for i in 0..MAX_TRACKED {
            l.take(&format!("c{i}"), t0).unwrap();
        }
        l.take("new", t0 + Duration::from_secs(1)).unwrap();
        assert_eq!(l.buckets.lock().unwrap().len(), 1, "full buckets are dropped");
    }

    #[test]
    fn a_crowd_of_busy_clients_stays_bounded() {
        let l = RateLimiter::new(1.0);
        let t0 = Instant::now();
        for i in 0..3 * MAX_TRACKED {
            let _ = l.take(&format!("c{i}"), t0);
        }
        assert!(l.buckets.lock().unwrap().len() <= MAX_TRACKED, "never more than MAX_TRACKED clients kept");
    }
}
