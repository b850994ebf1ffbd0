//! A linearizability checker for registers (read / write / compare-and-set), in the
//! style of Knossos: Wing & Gong's search with Lowe's memoisation, per key.
//!
//! An operation may take effect at one instant between its invocation and its
//! completion. The search linearizes operations one at a time: the candidates are the
//! operations not yet linearized that were invoked before every pending `ok` operation
//! returned (an operation that returned must come first). A candidate is legal when
//! the register model accepts it (a read sees the current value, a CAS its expected
//! one). `fail` operations never happened and are dropped; `info` operations never
//! returned: they may be linearized anywhere after their invocation, or never (their
//! reads carry no value and are dropped). The history is linearizable when every `ok`
//! operation can be placed. Visited (set of linearized operations, register value)
//! pairs are remembered, which keeps the search polynomial for the concurrency levels
//! the workloads use.

use std::collections::{BTreeMap, HashSet};

use serde_json::Value;

use super::Verdict;
use crate::history::{Call, Kind};

/// One register operation, ready for the search.
#[derive(Debug, Clone)]
struct Op {
    f: F,
    invoke: u64,
    /// u64::MAX for operations that never returned.
    ret: u64,
    must: bool,
    text: String,
}

#[derive(Debug, Clone)]
enum F {
    Read(Value),
    Write(Value),
    Cas(Value, Value),
}

fn to_op(c: &Call) -> Option<Op> {
    let f = match (c.f.as_str(), c.outcome) {
        (_, Kind::Fail) => return None,
        // An unknown read tells nothing.
        ("read", Kind::Info | Kind::Invoke) => return None,
        ("read", _) => F::Read(c.output.clone()),
        ("write", _) => F::Write(c.input.clone()),
        ("cas", _) => {
            F::Cas(c.input.get(0).cloned().unwrap_or(Value::Null), c.input.get(1).cloned().unwrap_or(Value::Null))
        }
        _ => return None,
    };
    let must = c.outcome == Kind::Ok;
    Some(Op {
        f,
        invoke: c.invoke_ns,
        ret: if must { c.complete_ns.unwrap_or(u64::MAX) } else { u64::MAX },
        must,
        text: format!(
            "process {} {} {} -> {:?} {} [{}..{}]",
            c.process,
            c.f,
            c.input,
            c.outcome,
            c.output,
            c.invoke_ns,
            c.complete_ns.map(|t| t.to_string()).unwrap_or_else(|| "?".into())
        ),
    })
}

/// Checks every key's register history; the verdict names the first key that fails.
pub fn check(calls: &[Call], initial: Value) -> Verdict {
    let mut by_key: BTreeMap<String, Vec<Op>> = BTreeMap::new();
    for c in calls {
        if let (Some(k), Some(op)) = (&c.key, to_op(c)) {
            by_key.entry(k.clone()).or_default().push(op);
        }
    }
    // An unknown write (or CAS) whose value nobody ever observed can be dropped: if it
    // happened, its value was overwritten before anyone looked, so leaving it out
    // accepts exactly the same histories — and keeps the search from trying it at every
    // position. (The workloads write unique values.)
    for ops in by_key.values_mut() {
        let observed: HashSet<String> = ops
            .iter()
            .filter_map(|o| match &o.f {
                F::Read(v) => Some(v.to_string()),
                F::Cas(from, _) => Some(from.to_string()),
                F::Write(_) => None,
            })
            .collect();
        ops.retain(|o| match &o.f {
            F::Write(v) | F::Cas(_, v) if !o.must => observed.contains(&v.to_string()),
            _ => true,
        });
    }
    let checked = by_key.values().map(Vec::len).sum();
    for (key, ops) in &by_key {
        if let Err((anomaly, excerpt)) = check_key(ops, initial.clone()) {
            return Verdict::bad("linearizable", checked, format!("key {key:?}: {anomaly}"), excerpt);
        }
    }
    Verdict::ok("linearizable", checked)
}

/// Bits of linearized operations.
type Set = Vec<u64>;

fn has(s: &Set, i: usize) -> bool {
    s[i / 64] & (1 << (i % 64)) != 0
}

fn with(s: &Set, i: usize) -> Set {
    let mut t = s.clone();
    t[i / 64] |= 1 << (i % 64);
    t
}

/// The search budget: beyond it a history is reported as unknown (invalid).
const MAX_STATES: usize = 2_000_000;

fn check_key(ops: &[Op], initial: Value) -> Result<(), (String, Vec<String>)> {
    let n = ops.len();
    let must_total = ops.iter().filter(|o| o.must).count();
    let mut seen: HashSet<(Set, String)> = HashSet::new();
    let mut stack: Vec<(Set, Value, usize)> = vec![(vec![0; n.div_ceil(64).max(1)], initial, 0)];
    // The furthest the search got, for the report.
    let mut best: (usize, Set) = (0, vec![0; n.div_ceil(64).max(1)]);
    while let Some((done, value, must_done)) = stack.pop() {
        if must_done == must_total {
            return Ok(());
        }
        if !seen.insert((done.clone(), value.to_string())) {
            continue;
        }
        if seen.len() > MAX_STATES {
            return Err(("the search exceeded its budget; the history could not be checked".into(), Vec::new()));
        }
        if must_done > best.0 {
            best = (must_done, done.clone());
        }
        // Every op not linearized must wait for the earliest pending return.
        let horizon = (0..n).filter(|i| !has(&done, *i) && ops[*i].must).map(|i| ops[i].ret).min().unwrap_or(u64::MAX);
        for i in (0..n).filter(|i| !has(&done, *i) && ops[*i].invoke < horizon) {
            let next = match &ops[i].f {
                F::Read(v) if *v == value => Some(value.clone()),
                F::Read(_) => None,
                F::Write(v) => Some(v.clone()),
                F::Cas(from, to) if *from == value => Some(to.clone()),
                F::Cas(..) => {
                    // A CAS that failed is reported as `fail` and dropped; an `ok` CAS
                    // must have matched. An unknown one may simply not have happened.
                    None
                }
            };
            if let Some(v) = next {
                stack.push((with(&done, i), v, must_done + usize::from(ops[i].must)));
            }
        }
    }
    // Not linearizable: show the operations that could not be placed after the
    // furthest point the search reached.
    let (placed, done) = best;
    let horizon = (0..n).filter(|i| !has(&done, *i) && ops[*i].must).map(|i| ops[i].ret).min().unwrap_or(u64::MAX);
    let mut excerpt: Vec<(u64, String)> = (0..n)
        .filter(|i| !has(&done, *i) && ops[*i].invoke <= horizon)
        .map(|i| (ops[i].invoke, ops[i].text.clone()))
        .collect();
    excerpt.sort();
    Err((
        format!("no linearization: after {placed} operations, none of the next ones fits the register"),
        excerpt.into_iter().take(12).map(|(_, t)| t).collect(),
    ))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::history::{pair, Event};

    /// Builds a history from (process, kind, f, value, time) tuples on key "k".
    fn h(events: &[(u64, &str, &str, Value, u64)]) -> Vec<Call> {
        let evs: Vec<Event> = events
            .iter()
            .map(|(p, k, f, v, t)| Event {
                process: *p,
                kind: match *k {
                    "invoke" => Kind::Invoke,
                    "ok" => Kind::Ok,
                    "fail" => Kind::Fail,
                    _ => Kind::Info,
                },
                f: f.to_string(),
                key: Some("k".into()),
                value: v.clone(),
                time_ns: *t,
                node: None,
                error: None,
            })
            .collect();
        pair(&evs)
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let calls = h(&[
            (1, "invoke", "write", json!(1), 1),
            (1, "ok", "write", json!(1), 2),
            (1, "invoke", "read", json!(null), 3),
            (1, "ok", "read", json!(1), 4),
            (1, "invoke", "cas", json!([1, 2]), 5),
            (1, "ok", "cas", json!([1, 2]), 6),
            (1, "invoke", "read", json!(null), 7),
            (1, "ok", "read", json!(2), 8),
        ]);
        assert!(check(&calls, json!(null)).valid);
    }

    #[test]
    fn concurrent_reads_may_see_either_side_of_a_write() {
        let calls = h(&[
            (1, "invoke", "write", json!(1), 1),
            (2, "invoke", "read", json!(null), 2),
            (3, "invoke", "read", json!(null), 3),
            (2, "ok", "read", json!(0), 4),
            (3, "ok", "read", json!(1), 5),
            (1, "ok", "write", json!(1), 6),
        ]);
        assert!(check(&calls, json!(0)).valid);
    }

    #[test]
    fn a_stale_read_after_a_completed_write_is_caught() {
        let calls = h(&[
            (1, "invoke", "write", json!(1), 1),
            (1, "ok", "write", json!(1), 2),
            (2, "invoke", "read", json!(null), 3),
            (2, "ok", "read", json!(0), 4),
        ]);
        let v = check(&calls, json!(0));
        assert!(!v.valid);
        assert!(v.anomaly.unwrap().contains("key \"k\""));
        assert!(v.excerpt.iter().any(|l| l.contains("read")), "{:?}", v.excerpt);
    }

    #[test]
    fn reads_going_back_in_time_are_caught() {
        // 1 then 2 written; one reader sees 2 then, strictly later, 1.
        let calls = h(&[
            (1, "invoke", "write", json!(1), 1),
            (1, "ok", "write", json!(1), 2),
            (1, "invoke", "write", json!(2), 3),
            (2, "invoke", "read", json!(null), 4),
            (2, "ok", "read", json!(2), 5),
            (3, "invoke", "read", json!(null), 6),
            (3, "ok", "read", json!(1), 7),
            (1, "ok", "write", json!(2), 8),
        ]);
        assert!(!check(&calls, json!(0)).valid);
    }

    #[test]
    fn an_unknown_write_may_or_may_not_have_happened() {
        let seen = h(&[
            (1, "invoke", "write", json!(5), 1),
            (1, "info", "write", json!(5), 2),
            (2, "invoke", "read", json!(null), 10),
            (2, "ok", "read", json!(5), 11),
        ]);
        assert!(check(&seen, json!(0)).valid, "it happened");
        let unseen = h(&[
            (1, "invoke", "write", json!(5), 1),
            (1, "info", "write", json!(5), 2),
            (2, "invoke", "read", json!(null), 10),
            (2, "ok", "read", json!(0), 11),
        ]);
        assert!(check(&unseen, json!(0)).valid, "it did not");
    }

    #[test]
    fn many_unknown_writes_nobody_saw_do_not_blow_up_the_search() {
        // 40 timed-out writes, then reads that see only an acknowledged write.
        let mut evs = vec![(0, "invoke", "write", json!(1), 1), (0, "ok", "write", json!(1), 2)];
        for p in 1..=40u64 {
            evs.push((p, "invoke", "write", json!(100 + p), 3));
            evs.push((p, "info", "write", json!(100 + p), 4));
        }
        evs.push((50, "invoke", "read", json!(null), 5));
        evs.push((50, "ok", "read", json!(1), 6));
        let v = check(&h(&evs), json!(0));
        assert!(v.valid, "{v:?}");
        // One of them was seen: it must be placed before the read that saw it.
        let mut evs2 = evs.clone();
        evs2.push((51, "invoke", "read", json!(null), 7));
        evs2.push((51, "ok", "read", json!(120), 8));
        assert!(check(&h(&evs2), json!(0)).valid);
    }

    #[test]
    fn failed_operations_never_happened() {
        let calls = h(&[
            (1, "invoke", "write", json!(5), 1),
            (1, "fail", "write", json!(5), 2),
            (2, "invoke", "read", json!(null), 3),
            (2, "ok", "read", json!(5), 4),
        ]);
        assert!(!check(&calls, json!(0)).valid, "a read cannot see a failed write");
    }

    #[test]
    fn an_ok_cas_must_have_matched() {
        let calls = h(&[(1, "invoke", "cas", json!([3, 4]), 1), (1, "ok", "cas", json!([3, 4]), 2)]);
        assert!(!check(&calls, json!(0)).valid);
    }

    #[test]
    fn many_concurrent_processes_stay_tractable() {
        // 8 processes, 400 operations, every write distinct, reads consistent.
        let mut evs = Vec::new();
        let mut t = 0;
        let mut current = 0;
        for round in 0..50 {
            for p in 0..8u64 {
                t += 1;
                if p == 0 {
                    evs.push((p, "invoke", "write", json!(round + 1), t));
                } else {
                    evs.push((p, "invoke", "read", json!(null), t));
                }
            }
            current = round + 1;
            for p in 0..8u64 {
                t += 1;
                if p == 0 {
                    evs.push((p, "ok", "write", json!(current), t));
                } else {
                    // Concurrent with the write: either value is fine; use the new one.
                    evs.push((p, "ok", "read", json!(current), t));
                }
            }
        }
        let _ = current;
        let calls = h(&evs);
        assert!(check(&calls, json!(0)).valid);
    }
}
