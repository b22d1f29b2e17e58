//! Which addresses a ring member binds and advertises, and what it is called.
//!
//! Every address comes from the flags; when they leave it open, a process listening on
//! loopback advertises `127.0.0.1`, so a laptop cluster never leaks the machine's own address
//! into the ring. Only a process bound to every interface advertises its default-route
//! address, as Mimir does.

use std::net::{IpAddr, Ipv4Addr};

/// An address flag that is not an IP address.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AddressError(String);

/// A listen address flag: empty means every interface.
pub fn parse_bind(addr: &str) -> Result<IpAddr, AddressError> {
    if addr.is_empty() {
        return Ok(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    }
    addr.parse()
        .map_err(|_| AddressError(format!("listen address {addr:?} is not an IP address")))
}

/// What to advertise for a listener on `bind`, unless `explicit` says.
pub fn advertise_ip(explicit: &str, bind: IpAddr) -> Result<IpAddr, AddressError> {
    if !explicit.is_empty() {
        return explicit.parse().map_err(|_| {
            AddressError(format!(
                "advertise address {explicit:?} is not an IP address"
            ))
        });
    }
    Ok(if bind.is_loopback() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else if !bind.is_unspecified() {
        bind
    } else {
        default_route_ip()
    })
}

/// The address of the interface with the default route, found without sending anything (a
/// UDP "connect" only picks a route).
fn default_route_ip() -> IpAddr {
    std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| {
            s.connect("192.0.2.1:9")?;
            s.local_addr()
        })
        .map(|a| a.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// The host's name: the default instance id, as Mimir's.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "norn".to_string())
}

/// A gossip node name unique to this process: two processes on one host (and a restart and
/// its predecessor) must not share one.
pub fn unique_node_name() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{}-{:08x}",
        hostname(),
        nanos ^ std::process::id().rotate_left(16)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_advertises_loopback_and_explicit_wins() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(advertise_ip("", lo).unwrap(), lo);
        let other: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(advertise_ip("", other).unwrap(), other);
        assert_eq!(
            advertise_ip("10.9.9.9", lo).unwrap().to_string(),
            "10.9.9.9"
        );
        assert!(advertise_ip("not-an-ip", lo).is_err());
        assert_eq!(parse_bind("").unwrap(), IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        assert!(parse_bind("x").is_err());
    }
}
