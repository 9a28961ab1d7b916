//! Which address other nodes should dial for this node's peer listener.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs, UdpSocket};

use crate::error::{Error, Result};

/// The address to advertise for a listener bound to `listen` (with its real
/// port). A configured `peer_advertise` wins; a specific listen IP is used
/// as is; an unspecified one (`0.0.0.0`, `::`) — which would make every
/// peer dial itself — is replaced by the local interface address that
/// routes to the Redis host (found by connecting a UDP socket, which sends
/// nothing). If there is none, a config error asks for `peer_advertise`.
pub(crate) fn advertise_addr(
    listen: SocketAddr,
    configured: Option<&str>,
    redis_host: &str,
    redis_port: u16,
) -> Result<String> {
    if let Some(addr) = configured {
        return Ok(addr.to_string());
    }
    if !listen.ip().is_unspecified() {
        return Ok(listen.to_string());
    }
    let ip = route_to(listen, redis_host, redis_port).map_err(|why| {
        Error::config(
            "peer_advertise",
            format!(
                "peer_listen {listen} is an unspecified address, which peers cannot dial, \
                 and no local address routing to Redis at {redis_host}:{redis_port} was \
                 found ({why}); set peer_advertise to the address other nodes should dial"
            ),
        )
    })?;
    let addr = SocketAddr::new(ip, listen.port()).to_string();
    log::info!("peer listener on {listen} advertises {addr} (the interface that reaches Redis)");
    Ok(addr)
}

/// The local address the system would send from towards Redis.
fn route_to(listen: SocketAddr, host: &str, port: u16) -> std::result::Result<IpAddr, String> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    // Connecting to port 0 is refused by some systems; any port finds the route.
    let targets = (host, port.max(1))
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host:?}: {e}"))?;
    let mut last = format!("{host:?} has no address");
    for target in targets {
        // A v4 listener cannot be reached over v6; a `::` one takes both.
        if listen.is_ipv4() && target.is_ipv6() {
            last = format!("{host:?} resolves only to IPv6, the listener is IPv4");
            continue;
        }
        let local: IpAddr = if target.is_ipv4() {
            Ipv4Addr::UNSPECIFIED.into()
        } else {
            Ipv6Addr::UNSPECIFIED.into()
        };
        let found = UdpSocket::bind((local, 0))
            .and_then(|s| s.connect(target).and_then(|()| s.local_addr()));
        match found {
            Ok(a) if !a.ip().is_unspecified() => return Ok(a.ip()),
            Ok(_) => last = format!("no route to {target}"),
            Err(e) => last = format!("no route to {target}: {e}"),
        }
    }
    Err(last)
}

/// Host and port of the Redis server a URL names; for a unix socket,
/// loopback (every node that shares the socket shares this host).
pub(crate) fn redis_endpoint(url: &str) -> (String, u16) {
    use redis::{ConnectionAddr, IntoConnectionInfo};
    match url.into_connection_info().map(|i| i.addr().clone()) {
        Ok(ConnectionAddr::Tcp(host, port)) => (host, port),
        Ok(ConnectionAddr::TcpTls { host, port, .. }) => (host, port),
        _ => ("127.0.0.1".to_string(), 6379),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_and_specific_addresses_are_kept() {
        let any: SocketAddr = "0.0.0.0:7400".parse().unwrap();
        assert_eq!(
            advertise_addr(any, Some("10.0.0.5:7400"), "127.0.0.1", 6379).unwrap(),
            "10.0.0.5:7400"
        );
        let lo: SocketAddr = "127.0.0.1:7400".parse().unwrap();
        assert_eq!(
            advertise_addr(lo, None, "192.0.2.1", 6379).unwrap(),
            "127.0.0.1:7400"
        );
    }

    #[test]
    fn an_unspecified_listen_address_becomes_the_route_to_redis() {
        let any: SocketAddr = "0.0.0.0:7400".parse().unwrap();
        assert_eq!(
            advertise_addr(any, None, "127.0.0.1", 6379).unwrap(),
            "127.0.0.1:7400"
        );
        let err = advertise_addr(any, None, "no-such-host.invalid", 6379).unwrap_err();
        assert!(err.to_string().contains("peer_advertise"), "{err}");
    }

    #[test]
    fn redis_endpoints_come_from_the_url() {
        assert_eq!(
            redis_endpoint("redis://user:pw@db.example:6380/2"),
            ("db.example".to_string(), 6380)
        );
        assert_eq!(redis_endpoint("rediss://db.example/").1, 6379);
        assert_eq!(redis_endpoint("redis+unix:///tmp/r.sock").0, "127.0.0.1");
    }
}
