//! `etcd-best`: the strongest etcd-backed allocator we know how to write, through the
//! maintained `etcd-client` crate, as the anchor that the `ipam` goals are set against.
//!
//! Each client has a connection of its own to one member (clients spread over the
//! members, the first one on the leader), starts at a random address and probes
//! linearly: a linearizable `get` of the address's key, and when it is free a
//! transaction that creates the key only if it still does not exist (create revision
//! 0). Random starts make concurrent clients almost never meet, so nearly every
//! allocation is one read and one write — no shared "last allocated" key that every
//! client must move (the design of the `etcd` row), no chase after it.
//!
//! Built only with the `etcd-best` feature: the crate compiles etcd's protobuf files
//! with `protoc` (Debian's `protobuf-compiler`), which berth's own build does not need.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use etcd_client::{Client, Compare, CompareOp, ConnectOptions, Txn, TxnOp};

/// One client: its own connection, its own random sequence.
pub struct BestClient {
    client: Client,
    rng: u64,
}

impl BestClient {
    /// A client of member `endpoint` only, seeded by `seed` (any value).
    pub async fn connect(endpoint: &str, seed: u64) -> Result<BestClient> {
        let opts = ConnectOptions::new().with_connect_timeout(Duration::from_secs(2));
        let client = Client::connect([endpoint], Some(opts))
            .await
            .with_context(|| format!("etcd-client cannot connect to {endpoint}"))?;
        // splitmix64 of the seed: distinct, non-zero xorshift states per client.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Ok(BestClient { client, rng: (z ^ (z >> 31)) | 1 })
    }

    fn random(&mut self) -> u64 {
        // xorshift64
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// Allocates one address of `pool` (addresses 1..=`size`) to `owner`; returns the
    /// conflicts met on the way (taken addresses read or lost races).
    pub async fn allocate(&mut self, pool: &str, size: u64, owner: &str) -> Result<u64> {
        let mut n = self.random() % size + 1;
        for conflicts in 0..size {
            let key = format!("/ipam/{pool}/ip/{n}");
            let free = self.client.get(key.as_str(), None).await?.kvs().is_empty();
            if free {
                let txn = Txn::new()
                    .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(key.as_str(), owner, None)]);
                if self.client.txn(txn).await?.succeeded() {
                    return Ok(conflicts);
                }
            }
            n = n % size + 1;
        }
        bail!("pool {pool} exhausted")
    }
}

/// A connection per client: client `c` to `endpoints[c % endpoints.len()]` (the
/// caller orders them from the leader, as every `ipam` system's clients are spread).
pub async fn clients(endpoints: &[String], clients: usize, seed: u64) -> Result<Vec<BestClient>> {
    let mut out = Vec::with_capacity(clients);
    for c in 0..clients {
        out.push(BestClient::connect(&endpoints[c % endpoints.len()], seed ^ (c as u64) << 20).await?);
    }
    Ok(out)
}
