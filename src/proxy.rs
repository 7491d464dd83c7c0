//! Who the client is: the TCP peer, or, when the peer is a `--trusted-proxy`, the
//! address it forwards. Only trusted peers' forwarding headers are believed.

use crate::http::Request;
use std::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client {
    pub ip: IpAddr,
    /// The address came from a proxy's header (so loopback exemptions don't apply).
    pub forwarded: bool,
    /// The client used https: our own TLS, or a trusted proxy's `X-Forwarded-Proto`.
    pub https: bool,
    /// The TCP peer is a `--trusted-proxy` (whether or not it forwarded an address).
    pub trusted_peer: bool,
}

/// `X-Forwarded-For`'s rightmost entry that is not itself a trusted proxy, else
/// `X-Real-IP`, else the peer.
pub fn client(req: &Request, peer: IpAddr, tls: bool, trusted: &[IpAddr]) -> Client {
    let trusted_peer = trusted.contains(&canonical(peer));
    let direct = Client { ip: peer, forwarded: false, https: tls, trusted_peer };
    if !trusted_peer {
        return direct;
    }
    let https = tls || req.header_str("x-forwarded-proto").is_some_and(|p| p.trim().eq_ignore_ascii_case("https"));
    let from_xff = req
        .headers_named("x-forwarded-for")
        .flat_map(|v| v.split(|&b| b == b','))
        .filter_map(|entry| std::str::from_utf8(entry).ok()?.trim().parse::<IpAddr>().ok())
        .map(canonical)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .find(|ip| !trusted.contains(ip));
    let real_ip = || req.header_str("x-real-ip").and_then(|v| v.trim().parse::<IpAddr>().ok()).map(canonical);
    match from_xff.or_else(real_ip) {
        Some(ip) => Client { ip, forwarded: true, https, trusted_peer },
        None => Client { https, ..direct },
    }
}

/// IPv4-mapped IPv6 addresses compare as the IPv4 address they carry.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> Request {
        Request {
            method: "GET".into(),
            target: "/".into(),
            minor_version: 1,
            headers: headers.iter().map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())).collect(),
            body: vec![],
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn untrusted_peers_headers_are_ignored() {
        let r = req(&[("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-Proto", "https")]);
        assert_eq!(
            client(&r, ip("10.0.0.9"), false, &[ip("127.0.0.1")]),
            Client { ip: ip("10.0.0.9"), forwarded: false, https: false, trusted_peer: false }
        );
    }

    #[test]
    fn rightmost_untrusted_entry_wins() {
        let trusted = [ip("127.0.0.1"), ip("10.0.0.2")];
        let r = req(&[("X-Forwarded-For", "6.6.6.6, 203.0.113.7"), ("X-Forwarded-For", "10.0.0.2")]);
        let c = client(&r, ip("127.0.0.1"), false, &trusted);
        assert_eq!((c.ip, c.forwarded), (ip("203.0.113.7"), true));
        let r = req(&[("X-Real-IP", "198.51.100.4"), ("X-Forwarded-Proto", "https")]);
        let c = client(&r, ip("::ffff:127.0.0.1"), false, &trusted);
        assert_eq!(c, Client { ip: ip("198.51.100.4"), forwarded: true, https: true, trusted_peer: true });
        let c = client(&req(&[("X-Forwarded-For", "garbage")]), ip("127.0.0.1"), false, &trusted);
        assert_eq!((c.ip, c.forwarded), (ip("127.0.0.1"), false));
    }
}
