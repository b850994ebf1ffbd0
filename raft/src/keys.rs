//! The key layout shared by the log store and the snapshot store in one [`KvStore`].
//!
//! | key | value |
//! |---|---|
//! | `l` + index (u64, big endian) | a log entry |
//! | `m/vote` | the vote |
//! | `m/committed` | the last committed log id (optional in Raft; saves a replay after restart) |
//! | `m/purged` | the last purged log id |
//! | `s/meta`, `s/data` | the current snapshot, written in one batch |
//!
//! [`KvStore`]: crate::kv::KvStore

pub const LOG_PREFIX: u8 = b'l';
pub const VOTE: &[u8] = b"m/vote";
pub const COMMITTED: &[u8] = b"m/committed";
pub const PURGED: &[u8] = b"m/purged";
pub const SNAPSHOT_META: &[u8] = b"s/meta";
pub const SNAPSHOT_DATA: &[u8] = b"s/data";

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
