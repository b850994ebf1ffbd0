//! Histories: what every client asked and what it was told, in order.
//!
//! Each operation appears twice: an `invoke` when the client sends it, then exactly one
//! completion — `ok` (it happened), `fail` (it certainly did not happen) or `info` (the
//! outcome is unknown: a timeout, a broken connection, a 503 `no_quorum` on a write).
//! Checkers must allow an `info` operation to have happened or not.

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Invoke,
    Ok,
    Fail,
    Info,
}

/// One event of a history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The client (logical process) that issued the operation; one operation at a time
    /// per process.
    pub process: u64,
    pub kind: Kind,
    /// `read`, `write`, `cas`, `allocate`, `release`, `deploy`, `final-read`...
    pub f: String,
    /// The register or app the operation is about, if any.
    #[serde(default)]
    pub key: Option<String>,
    /// The operation's value: what was written, read, or allocated.
    #[serde(default)]
    pub value: Value,
    /// Nanoseconds since the start of the run.
    pub time_ns: u64,
    /// The node the client talked to.
    #[serde(default)]
    pub node: Option<u64>,
    #[serde(default)]
    pub error: Option<String>,
}

/// An operation with its invocation and completion paired.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub process: u64,
    pub f: String,
    pub key: Option<String>,
    /// The value sent with the invocation.
    pub input: Value,
    /// The value the completion carried (what a read saw, the address allocated...).
    pub output: Value,
    pub invoke_ns: u64,
    /// None for operations that never completed (treated as `info`).
    pub complete_ns: Option<u64>,
    pub outcome: Kind,
}

/// Pairs every invocation with its process's next completion. An invocation left
/// without one counts as `info`.
pub fn pair(events: &[Event]) -> Vec<Call> {
    let mut open: std::collections::HashMap<u64, usize> = Default::default();
    let mut calls: Vec<Call> = Vec::new();
    for e in events {
        match e.kind {
            Kind::Invoke => {
                open.insert(e.process, calls.len());
                calls.push(Call {
                    process: e.process,
                    f: e.f.clone(),
                    key: e.key.clone(),
                    input: e.value.clone(),
                    output: Value::Null,
                    invoke_ns: e.time_ns,
                    complete_ns: None,
                    outcome: Kind::Info,
                });
            }
            kind => {
                if let Some(i) = open.remove(&e.process) {
                    let c = &mut calls[i];
                    c.outcome = kind;
                    c.output = e.value.clone();
                    c.complete_ns = Some(e.time_ns);
                }
            }
        }
    }
    calls
}

/// Reads a history written as JSON lines.
pub fn read_jsonl(text: &str) -> Result<Vec<Event>, serde_json::Error> {
    text.lines().filter(|l| !l.trim().is_empty()).map(serde_json::from_str).collect()
}
