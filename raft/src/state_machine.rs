//! The contract between the Raft layer and the state it replicates.

use std::fmt::Debug;
use std::io;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// A deterministic state machine replicated by Raft.
///
/// Three methods, one contract (after toyDB's `raft::State`):
///
/// - [`apply`](Self::apply) is called once per committed command, in log order, on every
///   node. It must be **deterministic**: the same state and command give the same new
///   state and response on every node — no clock, no randomness, no I/O. Whatever
///   varies (a timestamp, an id) is put *into* the command by the proposer. An outcome
///   the application considers an error (a pool is exhausted) is a normal `Response`,
///   replicated like any other. A bug that cannot apply a command must panic: carrying
///   on would let the replicas diverge.
/// - [`snapshot`](Self::snapshot) serializes the whole state; [`restore`](Self::restore)
///   replaces the state with a snapshot's. `restore(snapshot())` must give an equal
///   state, and the snapshot must include everything apply reads (including the
///   deduplication state of retried commands).
/// - `Clone` must be **cheap** — built from persistent (copy-on-write) collections, it
///   costs what the small parts of the state cost, not its size: a snapshot clones the
///   state under the read lock, then serializes the copy while apply goes on.
pub trait StateMachine: Default + Clone + Send + Sync + 'static {
    /// A command in the Raft log.
    type Command: Clone + Debug + std::fmt::Display + Send + Sync + Serialize + DeserializeOwned + 'static;
    /// What applying a command returns to its proposer. `Default` answers the entries
    /// that carry no command (leader blanks, membership changes).
    type Response: Clone + Debug + Default + Send + Sync + Serialize + DeserializeOwned + 'static;

    /// Applies one committed command at log position `index`.
    fn apply(&mut self, index: u64, command: Self::Command) -> Self::Response;

    /// Whether applying `command` may take long (milliseconds or more): such entries
    /// are applied off the async worker, so the node's Raft heartbeats go on; the
    /// others inline, which is cheaper. Default: none is.
    fn is_heavy(_command: &Self::Command) -> bool {
        false
    }

    /// Whether `command` is of no interest to the node's watchers of the state (see
    /// [`StateHandle::subscribe_changes`](crate::StateHandle::subscribe_changes)): they
    /// are not woken when only quiet commands were applied. Default: none is quiet.
    fn is_quiet(_command: &Self::Command) -> bool {
        false
    }

    /// Serializes the whole state.
    fn snapshot(&self) -> io::Result<Vec<u8>>;

    /// Replaces the whole state with the one `data` holds.
    fn restore(&mut self, data: &[u8]) -> io::Result<()>;
}
