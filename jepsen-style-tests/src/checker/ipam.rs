//! The IPAM checker: an address is never held by two owners at once, and every
//! acknowledged allocation is present at the end unless it was released.
//!
//! Operations: `allocate` (input: owner; output: `{"ip", "owner"}`), `release`
//! (input: `{"ip"}`), and one `final-read` (output: every `{"ip", "owner"}` of the
//! pool after the cluster healed).
//!
//! Double allocation is judged only where it is certain: allocation A of address X
//! completed before allocation B (also of X) was invoked, and no release of X by A's
//! holder was invoked before B completed. Then both held X at the same time.

use std::collections::BTreeMap;

use serde_json::Value;

use super::Verdict;
use crate::history::{Call, Kind};

fn ip_of(v: &Value) -> Option<String> {
    v.get("ip").and_then(Value::as_str).map(str::to_string)
}

pub fn check(calls: &[Call]) -> Verdict {
    let allocs: Vec<&Call> = calls.iter().filter(|c| c.f == "allocate" && c.outcome == Kind::Ok).collect();
    let releases: Vec<&Call> = calls.iter().filter(|c| c.f == "release" && c.outcome != Kind::Fail).collect();
    let checked = allocs.len() + releases.len();
    let mut by_ip: BTreeMap<String, Vec<&Call>> = BTreeMap::new();
    for a in &allocs {
        if let Some(ip) = ip_of(&a.output) {
            by_ip.entry(ip).or_default().push(a);
        }
    }
    // Per address: releases by invocation time, allocations by invocation time.
    let mut rel_by_ip: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for r in &releases {
        if let Some(ip) = ip_of(&r.input) {
            rel_by_ip.entry(ip).or_default().push(r.invoke_ns);
        }
    }
    for v in rel_by_ip.values_mut() {
        v.sort_unstable();
    }
    for list in by_ip.values_mut() {
        list.sort_by_key(|c| c.invoke_ns);
    }
    for (ip, list) in &by_ip {
        let rel: &[u64] = rel_by_ip.get(ip).map(Vec::as_slice).unwrap_or(&[]);
        for b in list {
            let b_done = b.complete_ns.unwrap_or(u64::MAX);
            // The last release invoked before B completed: an allocation A invoked
            // after it, and completed before B began, held the address with B.
            let last_release = rel.partition_point(|t| *t <= b_done).checked_sub(1).map(|i| rel[i]);
            let from = match last_release {
                Some(r) => list.partition_point(|a| a.invoke_ns <= r),
                None => 0,
            };
            for a in &list[from..] {
                if a.invoke_ns >= b.invoke_ns {
                    break;
                }
                let a_done = a.complete_ns.unwrap_or(u64::MAX);
                if a_done < b.invoke_ns {
                    return Verdict::bad(
                        "ipam-unique",
                        checked,
                        format!("{ip} was held by {} and {} at the same time", a.output["owner"], b.output["owner"]),
                        vec![
                            format!("process {} allocate -> {} [{}..{}]", a.process, a.output, a.invoke_ns, a_done),
                            format!("process {} allocate -> {} [{}..{}]", b.process, b.output, b.invoke_ns, b_done),
                        ],
                    );
                }
            }
        }
    }
    // The final read: acknowledged and never (possibly) released allocations are there.
    let Some(fin) = calls.iter().rev().find(|c| c.f == "final-read" && c.outcome == Kind::Ok) else {
        return Verdict::bad("ipam-unique", checked, "no final read of the pool".into(), vec![]);
    };
    let present: BTreeMap<String, String> = fin
        .output
        .as_array()
        .map(|a| a.iter().filter_map(|x| Some((ip_of(x)?, x.get("owner")?.as_str()?.to_string()))).collect())
        .unwrap_or_default();
    for a in &allocs {
        let Some(ip) = ip_of(&a.output) else { continue };
        let owner = a.output["owner"].as_str().unwrap_or("");
        let maybe_released = rel_by_ip.get(&ip).and_then(|r| r.last()).is_some_and(|t| *t >= a.invoke_ns);
        let taken_again = by_ip[&ip].last().is_some_and(|b| b.invoke_ns > a.invoke_ns);
        if !maybe_released && !taken_again && present.get(&ip).map(String::as_str) != Some(owner) {
            return Verdict::bad(
                "ipam-unique",
                checked,
                format!("acknowledged allocation of {ip} to {owner:?} is lost"),
                vec![
                    format!("process {} allocate -> {}", a.process, a.output),
                    format!("final read: {:?}", present.get(&ip)),
                ],
            );
        }
    }
    Verdict::ok("ipam-unique", checked)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn call(p: u64, f: &str, input: Value, output: Value, t0: u64, t1: u64, outcome: Kind) -> Call {
        Call { process: p, f: f.into(), key: None, input, output, invoke_ns: t0, complete_ns: Some(t1), outcome }
    }

    fn alloc(p: u64, ip: &str, owner: &str, t0: u64, t1: u64) -> Call {
        call(p, "allocate", json!(owner), json!({"ip": ip, "owner": owner}), t0, t1, Kind::Ok)
    }

    fn fin(list: Value, t: u64) -> Call {
        call(99, "final-read", Value::Null, list, t, t + 1, Kind::Ok)
    }

    #[test]
    fn distinct_addresses_and_a_complete_final_read_pass() {
        let h = vec![
            alloc(1, "10.0.0.2", "a", 1, 2),
            alloc(2, "10.0.0.3", "b", 1, 3),
            fin(json!([{"ip": "10.0.0.2", "owner": "a"}, {"ip": "10.0.0.3", "owner": "b"}]), 10),
        ];
        assert!(check(&h).valid);
    }

    #[test]
    fn the_same_address_twice_without_release_is_caught() {
        let h = vec![alloc(1, "10.0.0.2", "a", 1, 2), alloc(2, "10.0.0.2", "b", 3, 4), fin(json!([]), 10)];
        let v = check(&h);
        assert!(!v.valid);
        assert!(v.anomaly.unwrap().contains("held by \"a\" and \"b\""));
    }

    #[test]
    fn reuse_after_a_release_is_fine() {
        let h = vec![
            alloc(1, "10.0.0.2", "a", 1, 2),
            call(1, "release", json!({"ip": "10.0.0.2"}), Value::Null, 3, 4, Kind::Ok),
            alloc(2, "10.0.0.2", "b", 5, 6),
            fin(json!([{"ip": "10.0.0.2", "owner": "b"}]), 10),
        ];
        assert!(check(&h).valid);
    }

    #[test]
    fn concurrent_allocations_cannot_be_judged_double() {
        // Overlapping in time: not certain that both held it at once (one may have been
        // released by an unknown release); only the certain case is an anomaly.
        let h = vec![
            alloc(1, "10.0.0.2", "a", 1, 5),
            call(3, "release", json!({"ip": "10.0.0.2"}), Value::Null, 2, 3, Kind::Info),
            alloc(2, "10.0.0.2", "b", 4, 6),
            fin(json!([{"ip": "10.0.0.2", "owner": "b"}]), 10),
        ];
        assert!(check(&h).valid);
    }

    #[test]
    fn a_lost_acknowledged_allocation_is_caught() {
        let h = vec![alloc(1, "10.0.0.2", "a", 1, 2), fin(json!([]), 10)];
        let v = check(&h);
        assert!(!v.valid);
        assert!(v.anomaly.unwrap().contains("lost"));
    }

    #[test]
    fn a_missing_final_read_is_an_error() {
        assert!(!check(&[alloc(1, "10.0.0.2", "a", 1, 2)]).valid);
    }
}
