//! Allocation order, exhaustion, release and reuse — deterministic, no Raft.

use super::*;

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}
fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn lan() -> Ipam {
    let mut ipam = Ipam::default();
    let r = ipam.create_pool("lan", net("10.99.0.0/24"), Some(ip("10.99.0.1")), Some(net("10.99.0.16/28")));
    assert!(r.0.is_ok());
    ipam
}

fn alloc(ipam: &mut Ipam, owner: &str) -> Result<String, String> {
    match ipam.allocate("lan", owner, None, 0).0 {
        Ok(Reply::Allocation(a)) => Ok(a.ip),
        Ok(other) => panic!("unexpected {other:?}"),
        Err(e) => Err(e.code),
    }
}

#[test]
fn allocates_lowest_free_address_of_the_range_in_order() {
    let mut ipam = lan();
    let got: Vec<_> = (0..3).map(|i| alloc(&mut ipam, &format!("o{i}")).unwrap()).collect();
    assert_eq!(got, ["10.99.0.16", "10.99.0.17", "10.99.0.18"]);
}

#[test]
fn range_of_16_is_exhausted_after_16_and_says_so() {
    let mut ipam = lan();
    for _ in 0..16 {
        alloc(&mut ipam, "x").unwrap();
    }
    assert_eq!(alloc(&mut ipam, "x"), Err("pool_exhausted".into()));
    let p = ipam.pool("lan").unwrap().info();
    assert_eq!((p.size, p.used), (16, 16));
}

#[test]
fn whole_subnet_skips_network_broadcast_and_gateway() {
    let mut ipam = Ipam::default();
    ipam.create_pool("p", net("192.0.2.0/29"), Some(ip("192.0.2.1")), None);
    let mut got = Vec::new();
    while let Response(Ok(Reply::Allocation(a))) = ipam.allocate("p", "o", None, 0) {
        got.push(a.ip);
    }
    // .0 network, .1 gateway, .7 broadcast
    assert_eq!(got, ["192.0.2.2", "192.0.2.3", "192.0.2.4", "192.0.2.5", "192.0.2.6"]);
    assert_eq!(ipam.pool("p").unwrap().size(), 5);
}

#[test]
fn released_addresses_are_reused_lowest_first() {
    let mut ipam = lan();
    for _ in 0..5 {
        alloc(&mut ipam, "x").unwrap();
    }
    ipam.release("lan", ip("10.99.0.19")).0.unwrap();
    ipam.release("lan", ip("10.99.0.17")).0.unwrap();
    assert_eq!(alloc(&mut ipam, "y").unwrap(), "10.99.0.17");
    assert_eq!(alloc(&mut ipam, "y").unwrap(), "10.99.0.19");
    assert_eq!(alloc(&mut ipam, "y").unwrap(), "10.99.0.21");
}

#[test]
fn explicit_addresses_are_honoured_and_skipped_later() {
    let mut ipam = lan();
    let r = ipam.allocate("lan", "pinned", Some(ip("10.99.0.17")), 0);
    assert!(r.0.is_ok());
    assert_eq!(alloc(&mut ipam, "a").unwrap(), "10.99.0.16");
    assert_eq!(alloc(&mut ipam, "b").unwrap(), "10.99.0.18", "17 is taken");
    // An explicit address far above the mark leaves the gap free.
    ipam.allocate("lan", "far", Some(ip("10.99.0.30")), 0).0.unwrap();
    assert_eq!(alloc(&mut ipam, "c").unwrap(), "10.99.0.19");
}

#[test]
fn explicit_address_errors_are_classified() {
    let mut ipam = lan();
    let e = ipam.allocate("lan", "x", Some(ip("10.99.0.1")), 0).0.unwrap_err();
    assert_eq!((e.kind, e.code.as_str()), (super::super::command::ErrorKind::Invalid, "address_not_in_pool"));
    let e = ipam.allocate("lan", "x", Some(ip("10.99.0.200")), 0).0.unwrap_err();
    assert_eq!(e.code, "address_not_in_pool");
    ipam.allocate("lan", "x", Some(ip("10.99.0.20")), 0).0.unwrap();
    let e = ipam.allocate("lan", "y", Some(ip("10.99.0.20")), 0).0.unwrap_err();
    assert_eq!(e.code, "address_in_use");
    assert!(e.message.contains("\"x\""), "{}", e.message);
}

#[test]
fn release_of_unknown_address_or_pool_is_not_found() {
    let mut ipam = lan();
    assert_eq!(ipam.release("lan", ip("10.99.0.16")).0.unwrap_err().code, "allocation_not_found");
    assert_eq!(ipam.release("wan", ip("10.99.0.16")).0.unwrap_err().code, "pool_not_found");
    assert_eq!(ipam.allocate("wan", "x", None, 0).0.unwrap_err().code, "pool_not_found");
}

#[test]
fn pool_creation_is_idempotent_and_rejects_conflicts() {
    let mut ipam = lan();
    let again = ipam.create_pool("lan", net("10.99.0.0/24"), Some(ip("10.99.0.1")), Some(net("10.99.0.16/28")));
    assert!(matches!(again.0, Ok(Reply::Pool { created: false, .. })));
    let other = ipam.create_pool("lan", net("10.98.0.0/24"), None, None);
    assert_eq!(other.0.unwrap_err().code, "pool_exists");
    let overlap = ipam.create_pool("lan2", net("10.99.0.128/25"), None, None);
    assert_eq!(overlap.0.unwrap_err().code, "subnet_overlap");
    let wider = ipam.create_pool("lan3", net("10.0.0.0/8"), None, None);
    assert_eq!(wider.0.unwrap_err().code, "subnet_overlap");
}

#[test]
fn pools_with_allocations_cannot_be_deleted() {
    let mut ipam = lan();
    alloc(&mut ipam, "x").unwrap();
    assert_eq!(ipam.delete_pool("lan").0.unwrap_err().code, "pool_in_use");
    ipam.release("lan", ip("10.99.0.16")).0.unwrap();
    ipam.delete_pool("lan").0.unwrap();
    assert_eq!(ipam.delete_pool("lan").0.unwrap_err().code, "pool_not_found");
}

#[test]
fn large_pool_allocation_stays_fast_and_exact() {
    // A /12 as in the C1M benchmark: allocating 100k and releasing every 7th keeps the
    // lowest-free order exact.
    let mut ipam = Ipam::default();
    ipam.create_pool("big", net("100.64.0.0/12"), None, None);
    let mut ips = Vec::new();
    for _ in 0..100_000 {
        match ipam.allocate("big", "o", None, 0).0 {
            Ok(Reply::Allocation(a)) => ips.push(a.ip.parse::<Ipv4Addr>().unwrap()),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(ips[0], ip("100.64.0.1"));
    let mut released: Vec<_> = ips.iter().step_by(7).copied().collect();
    for a in &released {
        ipam.release("big", *a).0.unwrap();
    }
    released.sort();
    for want in released {
        match ipam.allocate("big", "o", None, 0).0 {
            Ok(Reply::Allocation(a)) => assert_eq!(a.ip, want.to_string()),
            other => panic!("{other:?}"),
        }
    }
}
