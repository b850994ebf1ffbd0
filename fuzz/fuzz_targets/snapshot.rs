//! Restoring a snapshot (a follower's InstallSnapshot, a node's restart): bytes that
//! are not a snapshot are an error, never a panic. A state restored from any bytes
//! snapshots to bytes that restore again, to a state of the same encoded size.
//!
//! Not the same bytes: the fuzzer found (within a minute) that two snapshots of one
//! state can differ, because the dedup record is a `HashMap` whose iteration order is
//! seeded per map. Replicas hold equal states, not byte-equal snapshots; nothing in
//! berth compares snapshot bytes (docs/fuzzing.md).
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
