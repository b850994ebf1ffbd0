//! The set checker: every acknowledged add (a deploy of an app) is present in the final
//! read; an unknown one may be present or not; nothing is present that was never added.

use std::collections::BTreeSet;

use serde_json::Value;

use super::Verdict;
use crate::history::{Call, Kind};

pub fn check(calls: &[Call]) -> Verdict {
    let acked: BTreeSet<String> = calls
        .iter()
        .filter(|c| c.f == "add" && c.outcome == Kind::Ok)
        .filter_map(|c| c.input.as_str().map(str::to_string))
        .collect();
    let attempted: BTreeSet<String> = calls
        .iter()
        .filter(|c| c.f == "add" && c.outcome != Kind::Fail)
        .filter_map(|c| c.input.as_str().map(str::to_string))
        .collect();
    let Some(fin) = calls.iter().rev().find(|c| c.f == "final-read" && c.outcome == Kind::Ok) else {
        return Verdict::bad("set", acked.len(), "no final read".into(), vec![]);
    };
    let present: BTreeSet<String> = fin
        .output
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default();
    if let Some(lost) = acked.difference(&present).next() {
        return Verdict::bad(
            "set",
            acked.len(),
            format!("acknowledged {lost:?} is missing at the end"),
            vec![format!("present: {} of {} acknowledged", present.len(), acked.len())],
        );
    }
    if let Some(phantom) = present.difference(&attempted).next() {
        return Verdict::bad("set", acked.len(), format!("{phantom:?} is present but was never added"), vec![]);
    }
    Verdict::ok("set", acked.len())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn c(f: &str, input: Value, output: Value, outcome: Kind) -> Call {
        Call { process: 1, f: f.into(), key: None, input, output, invoke_ns: 0, complete_ns: Some(1), outcome }
    }

    #[test]
    fn acknowledged_adds_must_survive_unknown_ones_may() {
        let ok = vec![
            c("add", json!("a"), Value::Null, Kind::Ok),
            c("add", json!("b"), Value::Null, Kind::Info),
            c("final-read", Value::Null, json!(["a"]), Kind::Ok),
        ];
        assert!(check(&ok).valid);
        let lost = vec![c("add", json!("a"), Value::Null, Kind::Ok), c("final-read", Value::Null, json!([]), Kind::Ok)];
        assert!(!check(&lost).valid);
        let phantom =
            vec![c("add", json!("a"), Value::Null, Kind::Fail), c("final-read", Value::Null, json!(["a"]), Kind::Ok)];
        assert!(!check(&phantom).valid);
    }
}
