//! The in-memory twin of the durable stores, for tests.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Mutex;

use super::{KvError, KvStore, Op, Pair, WriteBatch};

/// A [`KvStore`] in a `BTreeMap`. Batches are atomic (one lock); nothing is durable.
#[derive(Debug, Default)]
pub struct MemStore {
    map: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
}

fn range(start: &[u8], end: &[u8]) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    (Bound::Included(start.to_vec()), Bound::Excluded(end.to_vec()))
}

impl KvStore for MemStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        Ok(self.map.lock().unwrap().get(key).cloned())
    }

    fn scan(&self, start: &[u8], end: &[u8]) -> Result<Vec<Pair>, KvError> {
        if start >= end {
            return Ok(Vec::new());
        }
        let map = self.map.lock().unwrap();
        Ok(map.range(range(start, end)).map(|(k, v)| (k.clone(), v.clone())).collect())
    }

    fn last(&self, start: &[u8], end: &[u8]) -> Result<Option<Pair>, KvError> {
        if start >= end {
            return Ok(None);
        }
        let map = self.map.lock().unwrap();
        Ok(map.range(range(start, end)).next_back().map(|(k, v)| (k.clone(), v.clone())))
    }

    fn write(&self, batch: WriteBatch) -> Result<(), KvError> {
        let mut map = self.map.lock().unwrap();
        for op in batch.ops {
            match op {
                Op::Put(k, v) => {
                    map.insert(k, v);
                }
                Op::Delete(k) => {
                    map.remove(&k);
                }
                Op::DeleteRange(start, end) => {
                    if start < end {
                        let doomed: Vec<_> = map.range(range(&start, &end)).map(|(k, _)| k.clone()).collect();
                        for k in doomed {
                            map.remove(&k);
                        }
                    }
                }
            }
        }
        Ok(())
    }
}
