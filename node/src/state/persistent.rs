//! Decoding the state's persistent (`imbl`) collections safely.
//!
//! imbl's own `Deserialize` sizes its buffer from the length the input claims, so a
//! snapshot with a forged length panics with a capacity overflow (or asks for
//! terabytes) instead of failing — found by the `snapshot` fuzz target. These decode
//! through std's collections, whose `Deserialize` never trusts a claimed length, and
//! then build the persistent one. The encoding is unchanged (a map is a map, a
//! sequence a sequence). Use as `#[serde(deserialize_with = "persistent::…")]`.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Deserializer};

/// An `imbl::OrdMap`.
pub fn ord_map<'de, D, K, V>(d: D) -> Result<imbl::OrdMap<K, V>, D::Error>
where
    D: Deserializer<'de>,
    K: Deserialize<'de> + Ord + Clone,
    V: Deserialize<'de> + Clone,
{
    Ok(BTreeMap::<K, V>::deserialize(d)?.into_iter().collect())
}

/// An `imbl::OrdMap` of `imbl::OrdMap`s.
pub fn ord_map_of_ord_maps<'de, D, K, K2, V>(d: D) -> Result<imbl::OrdMap<K, imbl::OrdMap<K2, V>>, D::Error>
where
    D: Deserializer<'de>,
    K: Deserialize<'de> + Ord + Clone,
    K2: Deserialize<'de> + Ord + Clone,
    V: Deserialize<'de> + Clone,
{
    let outer = BTreeMap::<K, BTreeMap<K2, V>>::deserialize(d)?;
    Ok(outer.into_iter().map(|(k, inner)| (k, inner.into_iter().collect::<imbl::OrdMap<K2, V>>())).collect())
}

/// An `imbl::OrdSet`.
pub fn ord_set<'de, D, T>(d: D) -> Result<imbl::OrdSet<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Ord + Clone,
{
    Ok(BTreeSet::<T>::deserialize(d)?.into_iter().collect())
}

/// An `imbl::Vector`.
pub fn vector<'de, D, T>(d: D) -> Result<imbl::Vector<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Clone,
{
    Ok(Vec::<T>::deserialize(d)?.into_iter().collect())
}
