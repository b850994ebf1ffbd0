//! How Raft messages and stored records are encoded: bincode (serde), in one place.
//!
//! Both the network (node to node, same binary) and the disk (the log, the vote, the
//! snapshot meta) use it. bincode is positional and compact; openraft's serde forms are
//! written to suit positional formats (see its `SnapshotMeta` wire note).

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Encodes `value`.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, std::io::Error> {
    bincode::serialize(value).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// The length [`encode`] would produce, without encoding.
pub fn encoded_len<T: Serialize + ?Sized>(value: &T) -> Result<u64, std::io::Error> {
    bincode::serialized_size(value).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Decodes a `T`; malformed bytes are an `InvalidData` error naming what was expected.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, std::io::Error> {
    bincode::deserialize(bytes).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("cannot decode {}: {e}", std::any::type_name::<T>()),
        )
    })
}
