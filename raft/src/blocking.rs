//! Running blocking storage calls from async code.

/// Runs `f`, a blocking call (a disk write with fsync), from async code without
/// stalling the other tasks of a multi-threaded runtime: `block_in_place` hands this
/// worker's queue to another thread while `f` runs. The call stays *inline* — the
/// caller's I/O ordering is preserved, which the Raft log relies on (openraft serializes
/// vote and log I/O and expects each call to have happened when it returns). On a
/// current-thread runtime there is no other worker to hand over to; `f` just runs.
pub fn run<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}
