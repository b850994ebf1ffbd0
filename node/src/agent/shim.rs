//! The host shim: a macvlan link on the same parent as a pool's containers, so the host
//! itself reaches them (a macvlan child cannot talk to its parent directly). Created
//! with rtnetlink: link `bs-POOL` in bridge mode, an address reserved from the pool
//! (never handed to an instance), up, and a route to the pool's subnet through it.
//! Idempotent: an existing link is reused (several nodes sharing one network namespace
//! — tests, `berth dev` — share one shim).

use std::net::Ipv4Addr;

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::link::MacVlanMode;
use rtnetlink::{Handle, LinkMacVlan, RouteMessageBuilder};

/// The shim link's name for `pool` (interface names are at most 15 bytes).
pub fn shim_name(pool: &str) -> String {
    if pool.len() <= 12 {
        return format!("bs-{pool}");
    }
    // Long pool names: a prefix and a stable hash keep names unique and short.
    let h = pool.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
    format!("bs-{}{:04x}", &pool[..8], h & 0xffff)
}

async fn index_of(handle: &Handle, name: &str) -> Result<Option<u32>, String> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(msg)) => Ok(Some(msg.header.index)),
        Ok(None) => Ok(None),
        // "No such device" comes back as an error.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// Makes sure the shim of `pool` exists on `parent` with address `addr` and a route
/// to `subnet`. Returns the shim's name.
pub async fn ensure(parent: &str, pool: &str, addr: Ipv4Addr, subnet: Ipv4Net) -> Result<String, String> {
    let (connection, handle, _) = rtnetlink::new_connection().map_err(|e| format!("netlink: {e}"))?;
    let conn = tokio::spawn(connection);
    let result = ensure_with(&handle, parent, pool, addr, subnet).await;
    conn.abort();
    result
}

async fn ensure_with(
    handle: &Handle,
    parent: &str,
    pool: &str,
    addr: Ipv4Addr,
    subnet: Ipv4Net,
) -> Result<String, String> {
    let name = shim_name(pool);
    let index = match index_of(handle, &name).await? {
        Some(i) => i,
        None => {
            let parent_index = index_of(handle, parent)
                .await?
                .ok_or_else(|| format!("the macvlan parent interface {parent:?} does not exist on this host"))?;
            let link = LinkMacVlan::new(&name, parent_index, MacVlanMode::Bridge).up().build();
            match handle.link().add(link).execute().await {
                Ok(()) => {}
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => {}
                Err(e) => return Err(format!("cannot create shim {name} on {parent}: {e}")),
            }
            let index = index_of(handle, &name).await?.ok_or_else(|| format!("shim {name} vanished"))?;
            match handle.address().add(index, addr.into(), 32).execute().await {
                Ok(()) => {}
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => {}
                Err(e) => return Err(format!("cannot give shim {name} address {addr}: {e}")),
            }
            tracing::info!(shim = %name, %parent, %addr, "host shim created");
            index
        }
    };
    let route = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(subnet.network(), subnet.prefix_len())
        .output_interface(index)
        .build();
    handle
        .route()
        .add(route)
        .replace()
        .execute()
        .await
        .map_err(|e| format!("cannot route {subnet} through shim {name}: {e}"))?;
    Ok(name)
}

#[cfg(test)]
mod tests {
    #[test]
    fn shim_names_fit_an_interface_name() {
        assert_eq!(super::shim_name("lan"), "bs-lan");
        let long = super::shim_name("a-very-long-pool-name");
        assert!(long.len() <= 15, "{long}");
        assert_ne!(long, super::shim_name("a-very-long-pool-other"));
    }
}
