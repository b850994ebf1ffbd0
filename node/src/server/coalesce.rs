//! Concurrent callers share one round of an idempotent query — without ever being
//! answered by a round that began before they asked.
//!
//! What it is for: linearizable reads. Each needs the leader's read index, confirmed
//! by a quorum (a heartbeat round), taken **after** the read arrived: an index taken
//! earlier could miss a write acknowledged in between. One round per read costs the
//! leader a quorum round trip each; a flood of reads (or of API tokens this node does
//! not know, each checked against a fresh replica — `auth`) would cost it one each.
//! Coalesced, a node has at most one round in flight, and every read that arrived
//! while it ran shares the next one: rounds per second are bounded by the round trip,
//! not by the request rate (etcd batches its ReadIndex requests the same way).
//!
//! The rule: rounds are numbered as they start; a caller notes the number of the last
//! round started when it arrives and takes the outcome of a later one. Rounds run one
//! at a time (a FIFO lock held for the round); a caller that gets the lock finds the
//! round it needs already done, or runs it. A caller dropped mid-round (its client
//! went away, or its own deadline passed — callers bound their wait themselves)
//! releases the lock, and the next waiter runs the round.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};

/// Shares rounds of a query among concurrent callers (module docs).
pub struct Coalesced<T> {
    /// Rounds started.
    started: AtomicU64,
    /// The last finished round: its number and outcome. Held while a round runs.
    last: tokio::sync::Mutex<Option<(u64, T)>>,
}

impl<T: Clone> Default for Coalesced<T> {
    fn default() -> Self {
        Self { started: AtomicU64::new(0), last: tokio::sync::Mutex::new(None) }
    }
}

impl<T: Clone> Coalesced<T> {
    /// Rounds started so far.
    pub fn rounds(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    /// The outcome of a round of `round` that started after this call did: one that
    /// another caller ran, or else this caller runs it.
    pub async fn run<F, Fut>(&self, round: F) -> T
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = T>,
    {
        let need = self.started.load(Ordering::SeqCst) + 1;
        let mut last = self.last.lock().await;
        if let Some((n, out)) = &*last {
            if *n >= need {
                return out.clone();
            }
        }
        let n = self.started.fetch_add(1, Ordering::SeqCst) + 1;
        let out = round().await;
        *last = Some((n, out.clone()));
        out
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::Coalesced;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_concurrent_callers_share_a_few_rounds() {
        let c = Arc::new(Coalesced::<u64>::default());
        let rounds = Arc::new(AtomicU64::new(0));
        let calls = (0..200).map(|_| {
            let (c, rounds) = (c.clone(), rounds.clone());
            tokio::spawn(async move {
                c.run(|| async {
                    let n = rounds.fetch_add(1, Ordering::SeqCst) + 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    n
                })
                .await
            })
        });
        let outs: Vec<u64> = futures::future::join_all(calls).await.into_iter().map(|r| r.unwrap()).collect();
        let rounds = rounds.load(Ordering::SeqCst);
        assert!(rounds <= 4, "{rounds} rounds for 200 callers");
        assert!(outs.iter().all(|o| (1..=rounds).contains(o)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_caller_never_gets_a_round_that_began_before_it_asked() {
        let c = Arc::new(Coalesced::<u64>::default());
        let rounds = Arc::new(AtomicU64::new(0));
        let release = Arc::new(tokio::sync::Notify::new());
        let round = |rounds: Arc<AtomicU64>, release: Arc<tokio::sync::Notify>| async move {
            let n = rounds.fetch_add(1, Ordering::SeqCst) + 1;
            release.notified().await;
            n
        };
        // A runs round 1, which waits.
        let a = tokio::spawn({
            let (c, r, n) = (c.clone(), rounds.clone(), release.clone());
            async move { c.run(|| round(r, n)).await }
        });
        while rounds.load(Ordering::SeqCst) < 1 {
            tokio::task::yield_now().await;
        }
        // B asks while round 1 is in flight: it must wait for round 2.
        let b = tokio::spawn({
            let (c, r, n) = (c.clone(), rounds.clone(), release.clone());
            async move { c.run(|| round(r, n)).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        release.notify_one();
        assert_eq!(a.await.unwrap(), 1);
        while rounds.load(Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
        }
        release.notify_one();
        assert_eq!(b.await.unwrap(), 2, "B was answered by a round older than its request");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_caller_dropped_mid_round_lets_the_next_one_run_it() {
        let c = Arc::new(Coalesced::<u64>::default());
        let stuck = tokio::spawn({
            let c = c.clone();
            async move { c.run(std::future::pending::<u64>).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let next = tokio::spawn({
            let c = c.clone();
            async move { c.run(|| async { 7 }).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        stuck.abort();
        assert_eq!(tokio::time::timeout(Duration::from_secs(5), next).await.unwrap().unwrap(), 7);
    }
}
