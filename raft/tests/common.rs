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
