//! Deduplication of retried requests, inside the replicated state.
//!
//! A client that times out does not know whether its write committed; it retries with
//! the same request id, possibly through another node. Raft may then carry the command
//! twice. The state machine remembers the response of every request id it applied
//! within a window and answers a repeat from memory (Raft paper §8; openraft's
//! `client_write` docs). The record lives in the state, so it is in every snapshot and
//! identical on every replica; expiry uses the leader-stamped clock, never the local one.

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::command::Response;

/// How long a request id is remembered (by the replicated clock).
pub const WINDOW_MS: u64 = 15 * 60 * 1000;
/// At most this many ids are remembered; the oldest go first.
pub const MAX_ENTRIES: usize = 200_000;

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Dedup {
    responses: HashMap<String, (u64, Response)>,
    order: VecDeque<(u64, String)>,
}

impl Dedup {
    /// The recorded response of request `id`, if it was applied within the window.
    pub fn get(&self, id: &str) -> Option<&Response> {
        if id.is_empty() {
            return None;
        }
        self.responses.get(id).map(|(_, r)| r)
    }

    /// Records the response of request `id`, applied at replicated time `now_ms`, and
    /// forgets what fell out of the window.
    pub fn record(&mut self, id: &str, now_ms: u64, response: &Response) {
        if id.is_empty() {
            return;
        }
        self.responses.insert(id.to_string(), (now_ms, response.clone()));
        self.order.push_back((now_ms, id.to_string()));
        while let Some((at, front)) = self.order.front() {
            let expired = at.saturating_add(WINDOW_MS) < now_ms || self.order.len() > MAX_ENTRIES;
            if !expired {
                break;
            }
            if self.responses.get(front).map(|(t, _)| t) == Some(at) {
                self.responses.remove(front);
            }
            self.order.pop_front();
        }
    }

    pub fn len(&self) -> usize {
        self.responses.len()
    }

    pub fn is_empty(&self) -> bool {
        self.responses.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::command::Reply;

    #[test]
    fn remembers_within_the_window_and_forgets_after() {
        let mut d = Dedup::default();
        let r = Response(Ok(Reply::Done));
        d.record("a", 1_000, &r);
        assert_eq!(d.get("a"), Some(&r));
        d.record("b", 1_000 + WINDOW_MS, &r);
        assert!(d.get("a").is_some(), "exactly at the window edge it is kept");
        d.record("c", 1_001 + WINDOW_MS, &r);
        assert!(d.get("a").is_none());
        assert!(d.get("b").is_some());
    }

    #[test]
    fn empty_ids_are_never_deduplicated() {
        let mut d = Dedup::default();
        d.record("", 1, &Response(Ok(Reply::Done)));
        assert!(d.get("").is_none());
        assert!(d.is_empty());
    }
}
