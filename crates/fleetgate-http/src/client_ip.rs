//! The client's address: the TCP peer, or, when the peer is a trusted proxy, the right-most
//! untrusted address in `X-Forwarded-For` (the left part of that header is client-supplied and
//! can be forged, so it is never read past the first untrusted hop).

use http::HeaderMap;
use ipnet::IpNet;
use std::net::IpAddr;

#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
}

impl TrustedProxies {
    pub fn new(nets: Vec<IpNet>) -> Self {
        TrustedProxies { nets }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.nets.iter().any(|n| n.contains(&ip))
    }

    /// The client address for a request that arrived from `peer`.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if self.nets.is_empty() || !self.contains(peer) {
            return peer;
        }
        let mut client = peer;
        for value in headers.get_all("x-forwarded-for").iter().rev() {
            let Ok(text) = value.to_str() else { return client };
            for hop in text.rsplit(',') {
                match parse_hop(hop) {
                    Some(ip) if self.contains(ip) => client = ip,
                    Some(ip) => return ip,
                    None => return client,
                }
            }
        }
        client
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is; anything else unchanged.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    // "1.2.3.4:5678" or "[::1]:5678"
    hop.parse::<std::net::SocketAddr>().ok().map(|s| canonical(s.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_the_header_says() {
        let t = TrustedProxies::new(vec!["10.0.0.0/8".parse().unwrap()]);
        let peer: IpAddr = "203.0.113.9".parse().unwrap();
        assert_eq!(t.client_ip(peer, &headers(&["1.1.1.1"])), peer);
        assert_eq!(TrustedProxies::default().client_ip(peer, &headers(&["1.1.1.1"])), peer);
    }

    #[test]
    fn walks_trusted_hops_from_the_right() {
        let t = TrustedProxies::new(vec!["10.0.0.0/8".parse().unwrap(), "127.0.0.1/32".parse().unwrap()]);
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        let h = headers(&["6.6.6.6, 198.51.100.7", "10.1.2.3"]);
        assert_eq!(t.client_ip(peer, &h), "198.51.100.7".parse::<IpAddr>().unwrap());
        // Garbage stops the walk at the last trusted hop.
        assert_eq!(
            t.client_ip(peer, &headers(&["not-an-ip, 10.0.0.5"])),
            "10.0.0.5".parse::<IpAddr>().unwrap()
        );
        assert_eq!(t.client_ip(peer, &HeaderMap::new()), peer);
    }
}
