//! Durability under `kill -9`: a child process appends log entries as fast as it can
//! and prints each acknowledged index; the parent kills it with SIGKILL mid-stream,
//! reopens the store and checks that every acknowledged entry is there, intact.
//!
//! The child is this same test binary, re-run with `BERTH_CRASH_CHILD` set.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_raft::kv::Backend;
use berth_raft::openraft::entry::RaftEntry;
use berth_raft::openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use berth_raft::openraft::testing::log_id;
use berth_raft::openraft::{Entry, EntryPayload, RaftLogReader};
use berth_raft::TypeConfig;
use common::{Journal, Put};

type C = TypeConfig<Journal>;

const CHILD_ENV: &str = "BERTH_CRASH_CHILD";

fn entry(index: u64) -> berth_raft::typ::Entry<Journal> {
    Entry { log_id: log_id::<C>(1, 1, index), payload: EntryPayload::Normal(Put(format!("value-{index}"))) }
}

/// The child: append entries in batches of 1..=8 forever, printing each acked index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_writer_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return; // only meaningful when run by the parent below
    };
    let (backend, dir) = spec.split_once(':').unwrap();
    let (_kv, mut store) = common::open_log(backend.parse().unwrap(), std::path::Path::new(dir));
    let state = store.get_log_state().await.unwrap();
    let mut next = state.last_log_id.map(|l| l.index() + 1).unwrap_or(1);
    let mut batch = 1;
    loop {
        let entries: Vec<_> = (next..next + batch).map(entry).collect();
        store.blocking_append(entries).await.unwrap();
        // Only now is the batch acknowledged.
        println!("acked {}", next + batch - 1);
        next += batch;
        batch = batch % 8 + 1;
    }
}

fn crash_once(backend: Backend, dir: &std::path::Path, run_for: Duration) -> u64 {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args(["--exact", "crash_writer_child", "--nocapture", "--test-threads", "1"])
        .env(CHILD_ENV, format!("{backend}:{}", dir.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(n) = line.strip_prefix("acked ") {
                if tx.send(n.parse::<u64>().unwrap()).is_err() {
                    break;
                }
            }
        }
    });
    let start = Instant::now();
    let mut acked = 0;
    while start.elapsed() < run_for || acked == 0 {
        if let Ok(n) = rx.recv_timeout(Duration::from_secs(20)) {
            acked = acked.max(n);
        } else {
            panic!("the writer child acknowledged nothing for 20 s");
        }
    }
    // SIGKILL: no destructor, no flush, mid-write.
    child.kill().unwrap();
    child.wait().unwrap();
    while let Ok(n) = rx.try_recv() {
        acked = acked.max(n);
    }
    acked
}

async fn check_all_acked_present(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let mut total_acked = 0;
    for round in 0..4 {
        let acked = crash_once(backend, dir.path(), Duration::from_millis(300 + round * 150));
        assert!(acked >= total_acked, "{backend}: acked went backwards");
        total_acked = acked;
        let (_kv, mut store) = common::open_log(backend, dir.path());
        let entries = store.try_get_log_entries(1..=acked).await.unwrap();
        assert_eq!(entries.len() as u64, acked, "{backend} round {round}: acknowledged entries lost");
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(e.index(), i as u64 + 1);
            match &e.payload {
                EntryPayload::Normal(Put(v)) => assert_eq!(v, &format!("value-{}", i + 1)),
                other => panic!("{backend}: entry {} corrupted: {other:?}", i + 1),
            }
        }
        // Anything after the last ack may or may not be there, but it must decode.
        store.try_get_log_entries(acked + 1..).await.unwrap();
    }
    eprintln!("{backend}: {total_acked} entries acknowledged across 4 kills, none lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_append_only_log_keeps_every_acknowledged_entry_across_kill_9() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    check_all_acked_present(Backend::Redb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_keeps_every_acknowledged_entry_across_kill_9() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    check_all_acked_present(Backend::Sled).await;
}
