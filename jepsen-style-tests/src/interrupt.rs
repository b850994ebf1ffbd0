//! A run cut short by SIGINT or SIGTERM still stops what it started.
//!
//! The clusters, etcd members and network namespaces a run starts are stopped by their
//! `Drop`s. A signal's default action ends the process without running any of them,
//! leaving `berth agent` processes (and their instances) behind. [`until_signalled`]
//! races the run against the two signals: on one, the run's future is dropped and the
//! run ends with an error naming the signal. `main` returns it, and the runtime's
//! shutdown drops the tasks the run spawned — the clusters they share go with the last
//! of them — before the process exits.

use std::future::Future;

use anyhow::{bail, Result};
use tokio::signal::unix::{signal, SignalKind};

/// Runs `work` to its end, or until SIGINT or SIGTERM: then drops it and fails naming
/// the signal (return it from `main` so that the runtime drops the run's tasks).
pub async fn until_signalled<T>(work: impl Future<Output = Result<T>>) -> Result<T> {
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        done = work => done,
        _ = int.recv() => bail!("interrupted by SIGINT: the processes this run started are stopped"),
        _ = term.recv() => bail!("stopped by SIGTERM: the processes this run started are stopped"),
    }
}
