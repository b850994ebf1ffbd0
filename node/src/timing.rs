//! # Host-loss timing: one deadline, everything else derived
//!
//! A host is declared **down** by the leader after [`HostTiming::deadline`] of silence
//! (`--host-deadline-s`, default 10 s); only then are its instances placed elsewhere,
//! with their sticky IPs. Before that can happen the host has **fenced** itself: its
//! agent kills every instance holding a sticky IP once it has been out of contact for
//! [`HostTiming::fence_after`] (half the deadline). Every duration here is measured on
//! one machine's monotonic clock (`Instant`); no two clocks are ever compared.
//!
//! ## Why an IP is never live on two hosts
//!
//! Let `s` be the send time (the host's clock) of the last heartbeat that a leader `L`
//! answered and after which the host caught up with `L`'s commit index — the host's
//! last **contact**. The host's agent kills its sticky-IP instances by
//! `s + fence_after + kill`, where `kill` is how long a SIGKILL (or a container kill)
//! takes, and starts none until contact is back.
//!
//! - **The same leader reassigns.** `L` recorded the heartbeat when it arrived, at
//!   `r ≥ s`, and declares the host down no earlier than `r + deadline`. Reassignment
//!   needs `fence_after + kill < deadline`.
//! - **A new leader `L'` reassigns.** `L` answers heartbeats only while a quorum
//!   acknowledged it within [`QUORUM_FRESH`], so `s` is at most `QUORUM_FRESH` after
//!   `L`'s last quorum acknowledgement `Q`. `L'` was elected by a quorum that includes a
//!   node that acknowledged `L` at `Q` or later, so `L'` took over after `Q`, and it
//!   gives every host a fresh deadline from the moment it took over (having applied
//!   everything committed before). Reassignment needs
//!   `QUORUM_FRESH + fence_after + kill < deadline`.
//! - **The host is the leader** and is cut off: its contact is its last quorum
//!   acknowledgement `Q`; any new leader took over after `Q` — the second case.
//!
//! With `fence_after = deadline / 2`, [`MIN_DEADLINE`] (6 s) leaves
//! `3 s − QUORUM_FRESH (1.5 s) = 1.5 s` for the kill and for the two clocks' rate
//! difference; the default of 10 s leaves 3.5 s. A returning host acts
//! again only once it is in contact, i.e. after it has applied the placements that moved
//! its instances away — so it stops them rather than restart them. The margin between
//! fencing and reassignment is what the chaos suite's `converge` workload checks.
//!
//! ## Blips
//!
//! A host that is merely slow or paused (a stopped VM, a long GC) does not lose its
//! instances for nothing: a silence shorter than `fence_after` changes nothing at all;
//! one shorter than the deadline moves nothing — the host stays up, its instances keep
//! their placement, and those with a sticky IP, fenced meanwhile, start again in place
//! once contact is back. Only a host silent past its deadline is declared down.

use std::time::Duration;

/// The shortest deadline the timing argument above holds for.
pub const MIN_DEADLINE: Duration = Duration::from_secs(6);
/// The deadline when none is configured.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);
/// How recent a leader's last quorum acknowledgement must be for it to answer
/// heartbeats (and so to keep hosts from fencing themselves).
pub const QUORUM_FRESH: Duration = Duration::from_millis(1500);

/// The timing of one host, derived from its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostTiming {
    deadline: Duration,
}

impl Default for HostTiming {
    fn default() -> Self {
        HostTiming { deadline: DEFAULT_DEADLINE }
    }
}

impl HostTiming {
    /// The timing for `deadline`, which must be at least [`MIN_DEADLINE`] (the config
    /// refuses less).
    pub fn new(deadline: Duration) -> Self {
        HostTiming { deadline: deadline.max(MIN_DEADLINE) }
    }

    /// Silence after which the leader declares the host down.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// Silence after which the host kills its sticky-IP instances.
    pub fn fence_after(&self) -> Duration {
        self.deadline / 2
    }

    /// How often the host heartbeats the leader: a tenth of the deadline, at most 1 s.
    pub fn heartbeat_interval(&self) -> Duration {
        (self.deadline / 10).min(Duration::from_secs(1))
    }

    /// A down host heard from this recently is up again.
    pub fn back_within(&self) -> Duration {
        self.heartbeat_interval() * 3
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fence_always_comes_before_reassignment_with_room_for_the_kill() {
        for secs in [6, 7, 10, 30, 300] {
            let t = HostTiming::new(Duration::from_secs(secs));
            let fenced_by = QUORUM_FRESH + t.fence_after();
            assert!(fenced_by + Duration::from_millis(1500) <= t.deadline(), "deadline {secs} s");
            assert!(t.fence_after() >= t.heartbeat_interval() * 3, "several heartbeats before fencing");
        }
        assert_eq!(HostTiming::new(Duration::from_secs(1)).deadline(), MIN_DEADLINE);
        let d = HostTiming::default();
        assert_eq!((d.fence_after(), d.heartbeat_interval()), (Duration::from_secs(5), Duration::from_secs(1)));
    }
}
