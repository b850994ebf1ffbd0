//! The converge checker: over samples of what really runs on every host (read from the
//! machine, not from berth), an IP is never live on two hosts at once, and an instance
//! is never missing for longer than the host deadline + 3 s after the fault that made
//! it go missing (or 3 s without a fault).
//!
//! Faults compound: a fault that begins while an instance is missing and still within
//! its budget (the leader cut off while the instance waits out a dead host's deadline,
//! or the host it moved to killed in turn) may delay its return by up to one more
//! deadline — a new leader gives every host a fresh deadline when it takes over. So
//! the budget runs from the last such fault, but never past `2 × deadline + 3 s` after
//! the first: the bound the host-loss benchmark holds berth to after a leader change.
//! A stream of faults cannot stretch it further.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::Verdict;
use crate::report::Fault;

/// What ran at one moment: (host, instance, sticky IP) per live instance process.
#[derive(Debug, Clone)]
pub struct Sample {
    pub t_ns: u64,
    pub live: Vec<(u64, String, Option<String>)>,
}

fn secs(ns: u64) -> String {
    format!("{:.2}s", ns as f64 / 1e9)
}

/// `expected`: the instance ids that must be live; `deadline`: the hosts' deadline.
pub fn check(samples: &[Sample], faults: &[Fault], expected: &BTreeSet<String>, deadline: Duration) -> Verdict {
    const NAME: &str = "converge";
    let grace = (deadline + Duration::from_secs(3)).as_nanos() as u64;
    let mut missing_since: BTreeMap<&str, u64> = BTreeMap::new();
    for s in samples {
        let mut by_ip: BTreeMap<&str, BTreeSet<(u64, &str)>> = BTreeMap::new();
        let mut live: BTreeSet<&str> = BTreeSet::new();
        for (host, instance, ip) in &s.live {
            live.insert(instance);
            if let Some(ip) = ip {
                by_ip.entry(ip).or_default().insert((*host, instance));
            }
        }
        for (ip, on) in &by_ip {
            let hosts: Vec<u64> = on.iter().map(|(h, _)| *h).collect::<BTreeSet<u64>>().into_iter().collect();
            if hosts.len() > 1 {
                return Verdict::bad(
                    NAME,
                    samples.len(),
                    format!("IP {ip} live on hosts {hosts:?} at once at {}", secs(s.t_ns)),
                    on.iter().map(|(h, i)| format!("host {h}: {i}")).collect(),
                );
            }
        }
        for id in expected {
            if live.contains(id.as_str()) {
                missing_since.remove(id.as_str());
                continue;
            }
            let since = *missing_since.entry(id).or_insert(s.t_ns);
            let (allowed, why) = budget(faults, since, grace, deadline);
            if s.t_ns > allowed {
                return Verdict::bad(
                    NAME,
                    samples.len(),
                    format!(
                        "instance {id} not live on any host from {} to {} ({why}): past the deadline + 3 s",
                        secs(since),
                        secs(s.t_ns)
                    ),
                    vec![format!("live at {}: {:?}", secs(s.t_ns), s.live)],
                );
            }
        }
    }
    if let Some(last) = samples.last() {
        let live: BTreeSet<&str> = last.live.iter().map(|(_, i, _)| i.as_str()).collect();
        if let Some(gone) = expected.iter().find(|i| !live.contains(i.as_str())) {
            return Verdict::bad(NAME, samples.len(), format!("instance {gone} is not live at the end"), vec![]);
        }
    }
    Verdict::ok(NAME, samples.len())
}

/// Until when an instance missing since `since` may stay missing, and why: from the
/// fault that made it go missing (the last one that began by then), extended by each
/// fault that begins while it is missing and within budget, up to one more deadline.
fn budget(faults: &[Fault], since: u64, grace: u64, deadline: Duration) -> (u64, String) {
    let Some(cause) = faults.iter().filter(|f| f.start_ns <= since).max_by_key(|f| f.start_ns) else {
        return (since + Duration::from_secs(3).as_nanos() as u64, "without a fault".into());
    };
    let cap = cause.start_ns + grace + deadline.as_nanos() as u64;
    let mut allowed = cause.start_ns + grace;
    let mut why = format!("after {} of node {:?} at {}", cause.fault, cause.node, secs(cause.start_ns));
    let mut later: Vec<&Fault> = faults.iter().filter(|f| f.start_ns > since).collect();
    later.sort_by_key(|f| f.start_ns);
    for f in later {
        if f.start_ns >= allowed {
            break;
        }
        allowed = (f.start_ns + grace).min(cap);
        why.push_str(&format!(", then {} of node {:?} at {}", f.fault, f.node, secs(f.start_ns)));
    }
    (allowed, why)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t_s: f64, live: &[(u64, &str, &str)]) -> Sample {
        Sample {
            t_ns: (t_s * 1e9) as u64,
            live: live.iter().map(|(h, i, ip)| (*h, i.to_string(), Some(ip.to_string()))).collect(),
        }
    }

    fn fault(at_s: f64) -> Fault {
        Fault { fault: "kill".into(), node: Some(1), start_ns: (at_s * 1e9) as u64, end_ns: (at_s * 1e9) as u64 + 1 }
    }

    #[test]
    fn an_ip_on_two_hosts_or_an_instance_lost_too_long_fails_and_a_timely_move_passes() {
        let expected: BTreeSet<String> = ["a".to_string()].into();
        let d = Duration::from_secs(6);
        let moved = [s(0.0, &[(1, "a", "10.0.0.1")]), s(8.0, &[]), s(8.5, &[(2, "a", "10.0.0.1")])];
        assert!(check(&moved, &[fault(0.5)], &expected, d).valid);
        let late = [s(0.0, &[(1, "a", "10.0.0.1")]), s(1.0, &[]), s(9.6, &[]), s(10.0, &[(2, "a", "10.0.0.1")])];
        let v = check(&late, &[fault(0.5)], &expected, d);
        assert!(!v.valid && v.anomaly.unwrap().contains("past the deadline + 3 s"));
        let twice = [s(0.0, &[(1, "a", "10.0.0.1"), (2, "a", "10.0.0.1")])];
        let v = check(&twice, &[], &expected, d);
        assert!(!v.valid && v.anomaly.unwrap().contains("IP 10.0.0.1 live on hosts [1, 2]"));
        let never_back = [s(0.0, &[(1, "a", "10.0.0.1")]), s(1.0, &[])];
        assert!(!check(&never_back, &[fault(0.5)], &expected, d).valid, "missing at the end");
    }

    #[test]
    fn a_fault_while_missing_extends_the_budget_by_at_most_one_deadline() {
        let expected: BTreeSet<String> = ["a".to_string()].into();
        let d = Duration::from_secs(6);
        // Missing after a kill at 0.5 s (budget 9.5 s); the leader is cut at 5 s: 14 s.
        // Samples every 50 ms would see it missing until just before it is back.
        let back_at =
            |t: f64| [s(0.0, &[(1, "a", "10.0.0.1")]), s(1.0, &[]), s(t - 0.05, &[]), s(t, &[(2, "a", "10.0.0.1")])];
        let faults = [fault(0.5), fault(5.0)];
        assert!(!check(&back_at(10.0), &[fault(0.5)], &expected, d).valid, "one fault: 9.5 s");
        assert!(check(&back_at(13.9), &faults, &expected, d).valid, "compounded: 14 s");
        assert!(!check(&back_at(14.1), &faults, &expected, d).valid);
        // A fault after the budget ran out extends nothing.
        assert!(!check(&back_at(10.0), &[fault(0.5), fault(9.8)], &expected, d).valid);
        // A stream of faults stops at the cap: 0.5 + 2 × 6 + 3 = 15.5 s.
        let stream: Vec<Fault> = (0..10).map(|i| fault(0.5 + 2.0 * i as f64)).collect();
        assert!(check(&back_at(15.4), &stream, &expected, d).valid);
        let v = check(&back_at(15.6), &stream, &expected, d);
        assert!(!v.valid && v.anomaly.unwrap().contains("then kill"));
    }
}
