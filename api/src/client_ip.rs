//! Which client a request comes from, for the per-client rate limit and the access log: the
//! peer's address, or, when the peer is a trusted reverse proxy, the address the proxies
//! recorded in `X-Forwarded-For`.
//!
//! Only trusted proxies are believed: anyone can send `X-Forwarded-For`, so with no trusted
//! proxy configured (the default) the header is ignored, and behind trusted ones the client
//! is the right-most address that is not itself a trusted proxy (the left part of the header
//! is whatever the client wrote).

use std::net::IpAddr;
use std::str::FromStr;

use axum::extract::Request;
use axum::http::HeaderMap;

/// An address block: an address and how many leading bits of it count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpBlock {
    base: IpAddr,
    prefix_bits: u8,
}

impl IpBlock {
    /// Returns true if and only if `ip` lies in this block (IPv4-mapped IPv6 addresses count
    /// as their IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.base, canonical(ip)) {
            (IpAddr::V4(base), IpAddr::V4(ip)) => {
                prefix_matches(&base.octets(), &ip.octets(), self.prefix_bits)
            }
            (IpAddr::V6(base), IpAddr::V6(ip)) => {
                prefix_matches(&base.octets(), &ip.octets(), self.prefix_bits)
            }
            _ => false,
        }
    }
}

impl FromStr for IpBlock {
    type Err = String;

    /// Parses `ADDRESS` (one host) or `ADDRESS/BITS` (`10.0.0.0/8`, `fd00::/8`).
    fn from_str(text: &str) -> Result<IpBlock, String> {
        let refuse = || format!("{text:?} is not an IP address or CIDR block (e.g. 10.0.0.0/8)");
        let (address, bits) = match text.trim().split_once('/') {
            Some((address, bits)) => (address, Some(bits)),
            None => (text.trim(), None),
        };
        let base = canonical(address.parse::<IpAddr>().map_err(|_| refuse())?);
        let max_bits = if base.is_ipv4() { 32 } else { 128 };
        let prefix_bits = match bits {
            None => max_bits,
            Some(bits) => bits
                .parse::<u8>()
                .ok()
                .filter(|&b| b <= max_bits)
                .ok_or_else(refuse)?,
        };
        Ok(IpBlock { base, prefix_bits })
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

fn prefix_matches(base: &[u8], ip: &[u8], prefix_bits: u8) -> bool {
    let whole = usize::from(prefix_bits / 8);
    let rest = prefix_bits % 8;
    if base[..whole] != ip[..whole] {
        return false;
    }
    rest == 0 || {
        let mask = 0xffu8 << (8 - rest);
        base[whole] & mask == ip[whole] & mask
    }
}

/// The client of a request: the peer address, unless the peer is in `trusted`; then the
/// right-most `X-Forwarded-For` entry that is not in `trusted` (or the left-most entry if
/// every one is trusted). A header that does not parse leaves the peer as the client.
pub fn resolve(peer: IpAddr, headers: &HeaderMap, trusted: &[IpBlock]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|block| block.contains(ip));
    if trusted.is_empty() || !is_trusted(peer) {
        return peer;
    }
    let mut client = peer;
    // Several headers count as one list, in order (RFC 9110, section 5.3).
    let values: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    for entry in values.iter().rev().flat_map(|v| v.rsplit(',')) {
        let Ok(ip) = entry.trim().parse::<IpAddr>() else {
            return client;
        };
        client = canonical(ip);
        if !is_trusted(client) {
            break;
        }
    }
    client
}

/// The client address of `req` (see [`resolve`]), if the server recorded the peer.
pub fn of_request(req: &Request, trusted: &[IpBlock]) -> Option<IpAddr> {
    crate::handlers::client_addr(req).map(|peer| resolve(peer.ip(), req.headers(), trusted))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn blocks(list: &[&str]) -> Vec<IpBlock> {
        list.iter().map(|b| b.parse().expect("a block")).collect()
    }

    #[track_caller]
    fn check(peer: &str, forwarded: &[&str], trusted: &[&str], expect: &str) {
        let mut headers = HeaderMap::new();
        for value in forwarded {
            headers.append(
                "x-forwarded-for",
                HeaderValue::from_str(value).expect("a header"),
            );
        }
        let peer: IpAddr = peer.parse().expect("an address");
        let got = resolve(peer, &headers, &blocks(trusted));
        assert_eq!(got, expect.parse::<IpAddr>().expect("an address"));
    }

    #[test]
    fn the_header_counts_only_from_a_trusted_peer() {
        check("203.0.113.9", &["198.51.100.1"], &[], "203.0.113.9");
        check(
            "203.0.113.9",
            &["198.51.100.1"],
            &["10.0.0.0/8"],
            "203.0.113.9",
        );
        check(
            "10.1.2.3",
            &["198.51.100.1"],
            &["10.0.0.0/8"],
            "198.51.100.1",
        );
        check("10.1.2.3", &[], &["10.0.0.0/8"], "10.1.2.3");
    }

    #[test]
    fn the_client_is_the_right_most_untrusted_entry() {
        // A client that forges the left part does not choose its own address.
        check(
            "10.0.0.1",
            &["1.1.1.1, 198.51.100.7, 10.0.0.2"],
            &["10.0.0.0/8"],
            "198.51.100.7",
        );
        check(
            "10.0.0.1",
            &["1.1.1.1", "198.51.100.7"],
            &["10.0.0.0/8"],
            "198.51.100.7",
        );
        check(
            "10.0.0.1",
            &["10.0.0.3, 10.0.0.2"],
            &["10.0.0.0/8"],
            "10.0.0.3",
        );
        check(
            "10.0.0.1",
            &["garbage, 198.51.100.7"],
            &["10.0.0.1"],
            "198.51.100.7",
        );
        check("10.0.0.1", &["garbage"], &["10.0.0.1"], "10.0.0.1");
        check(
            "::ffff:10.0.0.1",
            &["2001:db8::5"],
            &["10.0.0.1"],
            "2001:db8::5",
        );
    }

    #[test]
    fn blocks_parse_and_match_by_prefix() {
        let block: IpBlock = "192.168.16.0/20".parse().expect("a block");
        assert!(block.contains("192.168.31.255".parse().expect("ip")));
        assert!(!block.contains("192.168.32.0".parse().expect("ip")));
        let v6: IpBlock = "fd00::/8".parse().expect("a block");
        assert!(v6.contains("fd12::1".parse().expect("ip")));
        assert!(!v6.contains("fe80::1".parse().expect("ip")));
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "10.0.0/8",
            "example.org",
            "10.0.0.0/x",
        ] {
            assert!(bad.parse::<IpBlock>().is_err(), "{bad:?}");
        }
    }
}
