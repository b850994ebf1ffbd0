//! Deduplication of retried requests, inside the replicated state.
//!
//! A client that times out does not know whether its write committed; it retries with
//! the same request id, possibly through another node. Raft may then carry the command
//! twice. The state machine remembers the response of every request id it applied
//! within a window and answers a repeat from memory (Raft paper §8; openraft's
//! `client_write` docs). The record lives in the state, so it is in every snapshot and
//! identical on every replica; expiry uses the leader-stamped clock, never the local one.
//!
//! Each record keeps a fingerprint of the command too: a key reused for a *different*
//! command (another operation, or other arguments) is refused with
//! `idempotency_key_reused` instead of answering the first command's outcome to a
//! request that never ran — the rule of Stripe's API and of the IETF
//! `Idempotency-Key` draft. The fingerprint is FNV-1a over the command's bincode
//! encoding: a fixed algorithm, so replicas of different builds agree.

use serde::{Deserialize, Serialize};

use super::command::{Command, Response};

/// How long a request id is remembered (by the replicated clock).
pub const WINDOW_MS: u64 = 15 * 60 * 1000;
/// At most this many ids are remembered; the oldest go first.
pub const MAX_ENTRIES: usize = 200_000;

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Dedup {
    /// Request id → (applied at, fingerprint of its command, response). Persistent
    /// (a snapshot's copy is O(1)) and ordered (the same snapshot bytes on every node).
    #[serde(deserialize_with = "super::persistent::ord_map")]
    responses: imbl::OrdMap<String, (u64, u64, Response)>,
    #[serde(deserialize_with = "super::persistent::vector")]
    order: imbl::Vector<(u64, String)>,
}

/// What the record says of a request.
#[derive(Debug, PartialEq)]
pub enum Seen<'a> {
    /// Not applied within the window (or no id): apply it.
    New,
    /// The same command was applied: answer its response.
    Repeat(&'a Response),
    /// The id was used for a different command.
    Reused,
}

/// The fingerprint of a command (FNV-1a 64 of its bincode encoding).
pub fn fingerprint(cmd: &Command) -> u64 {
    let bytes = bincode::serialize(cmd).unwrap_or_default();
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

impl Dedup {
    /// Whether request `id` with a command of fingerprint `fp` was applied within the
    /// window.
    pub fn check(&self, id: &str, fp: u64) -> Seen<'_> {
        if id.is_empty() {
            return Seen::New;
        }
        match self.responses.get(id) {
            None => Seen::New,
            Some((_, f, r)) if *f == fp => Seen::Repeat(r),
            Some(_) => Seen::Reused,
        }
    }

    /// Records the response of request `id` (command fingerprint `fp`), applied at
    /// replicated time `now_ms`, and forgets what fell out of the window.
    pub fn record(&mut self, id: &str, fp: u64, now_ms: u64, response: &Response) {
        if id.is_empty() {
            return;
        }
        self.responses.insert(id.to_string(), (now_ms, fp, response.clone()));
        self.order.push_back((now_ms, id.to_string()));
        while let Some((at, front)) = self.order.front() {
            let expired = at.saturating_add(WINDOW_MS) < now_ms || self.order.len() > MAX_ENTRIES;
            if !expired {
                break;
            }
            if self.responses.get(front).map(|(t, _, _)| t) == Some(at) {
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
        d.record("a", 7, 1_000, &r);
        assert_eq!(d.check("a", 7), Seen::Repeat(&r));
        d.record("b", 7, 1_000 + WINDOW_MS, &r);
        assert_eq!(d.check("a", 7), Seen::Repeat(&r), "exactly at the window edge it is kept");
        d.record("c", 7, 1_001 + WINDOW_MS, &r);
        assert_eq!(d.check("a", 7), Seen::New);
        assert_eq!(d.check("b", 7), Seen::Repeat(&r));
    }

    #[test]
    fn empty_ids_are_never_deduplicated() {
        let mut d = Dedup::default();
        d.record("", 7, 1, &Response(Ok(Reply::Done)));
        assert_eq!(d.check("", 7), Seen::New);
        assert!(d.is_empty());
    }

    #[test]
    fn a_key_reused_for_another_command_is_told_apart() {
        let write = Command::RegisterWrite { key: "k".into(), value: "1".into() };
        let other = Command::RegisterWrite { key: "k".into(), value: "2".into() };
        let scale = Command::ScaleApp { id: "k".into(), instances: 1 };
        assert_eq!(fingerprint(&write), fingerprint(&write.clone()));
        assert_ne!(fingerprint(&write), fingerprint(&other));
        assert_ne!(fingerprint(&write), fingerprint(&scale));
        let mut d = Dedup::default();
        let r = Response(Ok(Reply::Done));
        d.record("a", fingerprint(&write), 1, &r);
        assert_eq!(d.check("a", fingerprint(&write)), Seen::Repeat(&r));
        assert_eq!(d.check("a", fingerprint(&other)), Seen::Reused);
        assert_eq!(d.check("a", fingerprint(&scale)), Seen::Reused);
    }
}
