//! A tiny state machine for the storage tests: a list of applied strings.

use std::fmt;
use std::io;

use berth_raft::StateMachine;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Put(pub String);

impl fmt::Display for Put {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "put {}", self.0)
    }
}

#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
pub struct Journal {
    pub items: Vec<(u64, String)>,
}

impl StateMachine for Journal {
    type Command = Put;
    type Response = u64;

    fn apply(&mut self, index: u64, command: Put) -> u64 {
        self.items.push((index, command.0));
        self.items.len() as u64
    }

    fn snapshot(&self) -> io::Result<Vec<u8>> {
        berth_raft::codec::encode(self)
    }

    fn restore(&mut self, data: &[u8]) -> io::Result<()> {
        *self = berth_raft::codec::decode(data)?;
        Ok(())
    }
}

/// The log store a node of `backend` keeps in `dir` (the append-only log with redb),
/// with the backend's store.
#[allow(dead_code)] // not every test binary opens a log
pub fn open_log(
    backend: berth_raft::kv::Backend,
    dir: &std::path::Path,
) -> (std::sync::Arc<dyn berth_raft::kv::KvStore>, berth_raft::LogStore<berth_raft::TypeConfig<Journal>>) {
    let kv = berth_raft::kv::open(backend, dir).expect("open store");
    let disk =
        berth_raft::log_disk::open::<berth_raft::TypeConfig<Journal>>(backend, dir, kv.clone()).expect("open log");
    (kv, berth_raft::LogStore::on(disk))
}
