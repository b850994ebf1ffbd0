//! Restoring a snapshot (a follower's InstallSnapshot, a node's restart): bytes that
//! are not a snapshot are an error, never a panic. A state restored from any bytes
//! snapshots to bytes that restore again, to a state of the same encoded size.
//!
//! (Sizes, not bytes: the dedup record was a `HashMap` whose snapshots of one state
//! could differ in order; it is ordered now, but nothing in berth compares snapshot
//! bytes — replicas hold equal states. docs/fuzzing.md.)
#![no_main]

use berth_node::state::State;
use berth_raft::state_machine::StateMachine;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut state = State::default();
    if state.restore(data).is_ok() {
        let bytes = state.snapshot().expect("a restored state snapshots");
        let mut again = State::default();
        again.restore(&bytes).expect("its own snapshot restores");
        let second = again.snapshot().expect("snapshots");
        assert_eq!(second.len(), bytes.len(), "restore → snapshot changed the state's size");
    }
});
