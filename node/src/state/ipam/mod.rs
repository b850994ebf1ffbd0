//! The replicated IP ledger: pools and their allocations.
//!
//! Allocation happens inside apply: the address is chosen from the state every replica
//! has, so two nodes can never hand out the same one (the failure of Docker's
//! host-local macvlan IPAM, moby#49921). The rule is simple and deterministic: **the
//! lowest free address of the pool's range**, where the subnet's network and broadcast
//! addresses and the gateway are never free.
//!
//! Finding the lowest free address is O(log n): a pool keeps a high-water mark `next`
//! (every address below it has been handed out at least once) and the set of released
//! addresses below the mark. The lowest free address is the smallest released one, or
//! else the first address at or above the mark that is neither allocated nor reserved.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::command::{DomainError, Reply, Response};

/// One allocated address.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Allocation {
    pub owner: String,
    pub at_ms: u64,
}

/// A pool of addresses.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pool {
    pub name: String,
    pub subnet: Ipv4Net,
    pub gateway: Option<Ipv4Addr>,
    /// The part of the subnet berth allocates from, as given (None: the whole subnet).
    pub range: Option<Ipv4Net>,
    /// Persistent, like `free_below`: a snapshot's copy of a million allocations is
    /// O(1) (see `State`).
    #[serde(deserialize_with = "crate::state::persistent::ord_map")]
    allocations: imbl::OrdMap<u32, Allocation>,
    /// Released addresses below `next`.
    #[serde(deserialize_with = "crate::state::persistent::ord_set")]
    free_below: imbl::OrdSet<u32>,
    /// The high-water mark: the next address never yet handed out (u64: may pass the end).
    next: u64,
}

/// A pool as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct PoolInfo {
    pub name: String,
    pub subnet: String,
    pub gateway: Option<String>,
    pub range: Option<String>,
    pub size: u64,
    pub used: u64,
}

/// An allocation as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct AllocationInfo {
    pub ip: String,
    pub owner: String,
}

impl Pool {
    fn new(name: String, subnet: Ipv4Net, gateway: Option<Ipv4Addr>, range: Option<Ipv4Net>) -> Self {
        let mut pool = Pool {
            name,
            subnet,
            gateway,
            range,
            allocations: Default::default(),
            free_below: Default::default(),
            next: 0,
        };
        pool.next = pool.first() as u64;
        pool
    }

    /// The first and last allocatable addresses (as integers).
    fn bounds(&self) -> (u32, u32) {
        let s = self.subnet.trunc();
        let (mut lo, mut hi) = (u32::from(s.network()), u32::from(s.broadcast()));
        if s.prefix_len() <= 30 {
            // The network and broadcast addresses are never hosts.
            lo += 1;
            hi -= 1;
        }
        if let Some(r) = self.range {
            let r = r.trunc();
            lo = lo.max(u32::from(r.network()));
            hi = hi.min(u32::from(r.broadcast()));
        }
        (lo, hi)
    }

    fn first(&self) -> u32 {
        self.bounds().0
    }

    fn reserved(&self, ip: u32) -> bool {
        self.gateway.map(u32::from) == Some(ip)
    }

    /// Whether `ip` is an allocatable address of this pool.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let (lo, hi) = self.bounds();
        let ip = u32::from(ip);
        lo <= ip && ip <= hi && !self.reserved(ip)
    }

    /// How many addresses the pool can hand out.
    pub fn size(&self) -> u64 {
        let (lo, hi) = self.bounds();
        if lo > hi {
            return 0;
        }
        let n = (hi - lo) as u64 + 1;
        match self.gateway.map(u32::from) {
            Some(g) if lo <= g && g <= hi => n - 1,
            _ => n,
        }
    }

    pub fn used(&self) -> u64 {
        self.allocations.len() as u64
    }

    pub fn info(&self) -> PoolInfo {
        PoolInfo {
            name: self.name.clone(),
            subnet: self.subnet.to_string(),
            gateway: self.gateway.map(|g| g.to_string()),
            range: self.range.map(|r| r.to_string()),
            size: self.size(),
            used: self.used(),
        }
    }

    /// Allocations in address order.
    pub fn allocations(&self) -> impl Iterator<Item = (Ipv4Addr, &Allocation)> {
        self.allocations.iter().map(|(ip, a)| (Ipv4Addr::from(*ip), a))
    }

    /// The allocation of `ip`, if any.
    pub fn allocation(&self, ip: Ipv4Addr) -> Option<&Allocation> {
        self.allocations.get(&u32::from(ip))
    }

    /// The lowest free address, without taking it.
    fn lowest_free(&self) -> Option<u32> {
        if let Some(ip) = self.free_below.get_min() {
            return Some(*ip);
        }
        let (_, hi) = self.bounds();
        let mut n = self.next;
        while n <= hi as u64 {
            let ip = n as u32;
            if !self.reserved(ip) && !self.allocations.contains_key(&ip) {
                return Some(ip);
            }
            n += 1;
        }
        None
    }

    fn take(&mut self, ip: u32, allocation: Allocation) {
        if (ip as u64) < self.next {
            self.free_below.remove(&ip);
        } else if ip as u64 == self.next {
            self.next += 1;
        } else {
            // An explicit address above the mark: the addresses skipped on the way
            // stay free; the mark moves over allocated ones lazily in `lowest_free`.
        }
        self.allocations.insert(ip, allocation);
        // Keep `next` past any run of allocated/reserved addresses it now points at.
        let (_, hi) = self.bounds();
        while self.next <= hi as u64 {
            let n = self.next as u32;
            if self.allocations.contains_key(&n) || self.reserved(n) {
                self.next += 1;
            } else {
                break;
            }
        }
    }

    /// Allocates `ip`, or the lowest free address, to `owner`.
    pub fn allocate(&mut self, owner: &str, ip: Option<Ipv4Addr>, at_ms: u64) -> Result<Ipv4Addr, DomainError> {
        let chosen = match ip {
            Some(ip) => {
                if !self.contains(ip) {
                    return Err(DomainError::invalid(
                        "address_not_in_pool",
                        format!("{ip} is not an allocatable address of pool {}", self.name),
                    ));
                }
                let n = u32::from(ip);
                if let Some(a) = self.allocations.get(&n) {
                    return Err(DomainError::conflict(
                        "address_in_use",
                        format!("{ip} of pool {} is allocated to {:?}", self.name, a.owner),
                    ));
                }
                n
            }
            None => self.lowest_free().ok_or_else(|| {
                DomainError::conflict("pool_exhausted", format!("pool {} has no free address", self.name))
            })?,
        };
        self.take(chosen, Allocation { owner: owner.to_string(), at_ms });
        Ok(Ipv4Addr::from(chosen))
    }

    /// Releases `ip`.
    pub fn release(&mut self, ip: Ipv4Addr) -> Result<(), DomainError> {
        let n = u32::from(ip);
        if self.allocations.remove(&n).is_none() {
            return Err(DomainError::not_found(
                "allocation_not_found",
                format!("{ip} is not allocated in pool {}", self.name),
            ));
        }
        if (n as u64) < self.next {
            self.free_below.insert(n);
        }
        Ok(())
    }
}

/// Every pool, by name.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Ipam {
    pools: BTreeMap<String, Pool>,
}

fn pool_not_found(name: &str) -> DomainError {
    DomainError::not_found("pool_not_found", format!("no pool named {name:?}"))
}

impl Ipam {
    pub fn pool(&self, name: &str) -> Result<&Pool, DomainError> {
        self.pools.get(name).ok_or_else(|| pool_not_found(name))
    }

    /// A pool to change from another part of apply (sticky IPs of instances).
    pub(crate) fn pool_mut_for_apply(&mut self, name: &str) -> Result<&mut Pool, DomainError> {
        self.pool_mut(name)
    }

    fn pool_mut(&mut self, name: &str) -> Result<&mut Pool, DomainError> {
        self.pools.get_mut(name).ok_or_else(|| pool_not_found(name))
    }

    pub fn pools(&self) -> impl Iterator<Item = &Pool> {
        self.pools.values()
    }

    /// Creates a pool. The same request again is answered with the existing pool
    /// (`created: false`); a different pool of that name, or a subnet overlapping
    /// another pool's, is a conflict (Docker refuses overlapping subnets on a host too).
    pub fn create_pool(
        &mut self,
        name: &str,
        subnet: Ipv4Net,
        gateway: Option<Ipv4Addr>,
        range: Option<Ipv4Net>,
    ) -> Response {
        if let Some(existing) = self.pools.get(name) {
            if existing.subnet == subnet && existing.gateway == gateway && existing.range == range {
                return Response(Ok(Reply::Pool { pool: existing.info(), created: false }));
            }
            return Response(Err(DomainError::conflict(
                "pool_exists",
                format!("pool {name:?} exists with subnet {}", existing.subnet),
            )));
        }
        if let Some(other) =
            self.pools.values().find(|p| p.subnet.contains(&subnet.network()) || subnet.contains(&p.subnet.network()))
        {
            return Response(Err(DomainError::conflict(
                "subnet_overlap",
                format!("subnet {subnet} overlaps pool {:?} ({})", other.name, other.subnet),
            )));
        }
        let pool = Pool::new(name.to_string(), subnet, gateway, range);
        let info = pool.info();
        self.pools.insert(name.to_string(), pool);
        Response(Ok(Reply::Pool { pool: info, created: true }))
    }

    pub fn delete_pool(&mut self, name: &str) -> Response {
        let pool = match self.pool(name) {
            Ok(p) => p,
            Err(e) => return Response(Err(e)),
        };
        if pool.used() > 0 {
            return Response(Err(DomainError::conflict(
                "pool_in_use",
                format!("pool {name:?} still has {} allocations", pool.used()),
            )));
        }
        self.pools.remove(name);
        Response(Ok(Reply::Done))
    }

    pub fn allocate(&mut self, pool: &str, owner: &str, ip: Option<Ipv4Addr>, at_ms: u64) -> Response {
        let result = self.pool_mut(pool).and_then(|p| p.allocate(owner, ip, at_ms));
        Response(result.map(|ip| Reply::Allocation(AllocationInfo { ip: ip.to_string(), owner: owner.to_string() })))
    }

    pub fn release(&mut self, pool: &str, ip: Ipv4Addr) -> Response {
        Response(self.pool_mut(pool).and_then(|p| p.release(ip)).map(|_| Reply::Done))
    }
}

#[cfg(test)]
mod tests;
