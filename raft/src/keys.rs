//! The key layout shared by the log store and the snapshot store in one [`KvStore`].
//!
//! | key | value |
//! |---|---|
//! | `l` + index (u64, big endian) | a log entry |
//! | `m/vote` | the vote |
//! | `m/committed` | the last committed log id (optional in Raft; saves a replay after restart) |
//! | `m/purged` | the last purged log id |
//! | `s/meta` | the current snapshot's meta |
//! | `s/chunks` | (generation, count) of its data's chunks |
//! | `s/c/` + generation (u64, big endian) + n (u32, big endian) | chunk `n` of a snapshot's data |
//! | `s/data` | a snapshot's data in one value (data dirs of earlier versions) |
//!
//! A snapshot's chunks are written first, each durably on its own, then its meta and
//! chunk count with the removal of the older chunks in one batch: a crash leaves the
//! old snapshot or the new one, and no single write flushes the whole snapshot.
//!
//! [`KvStore`]: crate::kv::KvStore

pub const LOG_PREFIX: u8 = b'l';
pub const VOTE: &[u8] = b"m/vote";
pub const COMMITTED: &[u8] = b"m/committed";
pub const PURGED: &[u8] = b"m/purged";
pub const SNAPSHOT_META: &[u8] = b"s/meta";
pub const SNAPSHOT_DATA: &[u8] = b"s/data";
pub const SNAPSHOT_CHUNKS: &[u8] = b"s/chunks";
const SNAPSHOT_CHUNK_PREFIX: &[u8] = b"s/c/";

/// The key of chunk `n` of the snapshot data of generation `generation`.
pub fn snapshot_chunk(generation: u64, n: u32) -> Vec<u8> {
    let mut k = SNAPSHOT_CHUNK_PREFIX.to_vec();
    k.extend_from_slice(&generation.to_be_bytes());
    k.extend_from_slice(&n.to_be_bytes());
    k
}

/// The key of the log entry at `index`.
pub fn log(index: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(LOG_PREFIX);
    k.extend_from_slice(&index.to_be_bytes());
    k
}

/// The first key after every log entry.
pub fn log_end() -> Vec<u8> {
    vec![LOG_PREFIX + 1]
}

/// The index of a log key.
pub fn log_index(key: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&key[1..9]);
    u64::from_be_bytes(b)
}

#[cfg(test)]
mod tests {
    #[test]
    fn log_keys_sort_by_index() {
        assert!(super::log(1) < super::log(2));
        assert!(super::log(255) < super::log(256));
        assert!(super::log(u64::MAX) < super::log_end());
        assert_eq!(super::log_index(&super::log(123_456)), 123_456);
    }
}
