//! The client's address as throttles and audit logs should see it. Behind a
//! gateway or an ingress every call arrives from the proxy, so the address a
//! trusted proxy forwards in `x-forwarded-for` is used instead; a header from
//! anyone else is ignored, since a client can write whatever it likes there.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;
use std::sync::Arc;

use http::HeaderMap;

/// Set by proxies: `client, proxy1, proxy2` (each hop appends its peer).
pub const FORWARDED_FOR_HEADER: &str = "x-forwarded-for";
static FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static(FORWARDED_FOR_HEADER);

/// Entries of `x-forwarded-for` examined at most, nearest first; a longer
/// chain of trusted proxies ends there, so a hostile header costs bounded
/// work.
const MAX_HOPS: usize = 16;

/// An address block, e.g. `10.0.0.0/8` or `fd00::/8`; a bare address is a
/// block of one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// The first address of the block.
    fn lowest(&self) -> IpAddr {
        match self.network {
            IpAddr::V4(network) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4((u32::from(network) & mask).into())
            }
            IpAddr::V6(network) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(network) & mask).into())
            }
        }
    }

    pub fn contains(&self, address: IpAddr) -> bool {
        match (self.network, canonical(address)) {
            (IpAddr::V4(network), IpAddr::V4(address)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(network) & mask == u32::from(address) & mask
            }
            (IpAddr::V6(network), IpAddr::V6(address)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(network) & mask == u128::from(address) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network = canonical(
            address
                .parse::<IpAddr>()
                .map_err(|_| format!("{text:?} is not an address or CIDR block"))?,
        );
        let most = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => most,
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .filter(|prefix| (1..=most).contains(prefix))
                .ok_or_else(|| {
                    format!(
                        "{text:?}: the prefix length must be 1..={most} (trusting every address would let anyone claim any)"
                    )
                })?,
        };
        let block = Cidr { network, prefix };
        let lowest = block.lowest();
        if lowest != network {
            return Err(format!(
                "{text:?} has bits set past its prefix: did you mean {lowest}/{prefix}?"
            ));
        }
        Ok(block)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`, what a dual-stack socket
/// reports) are the IPv4 address they carry.
pub fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// The block a rate limit counts as one client: an IPv4 address, or an IPv6
/// /64 (one subscriber usually holds a whole /64, so per-address counting
/// would give them 2^64 tries).
pub fn rate_limit_key(address: IpAddr) -> String {
    match client_network(address) {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(network) => format!("{network}/64"),
    }
}

/// What a per-client limit counts: an IPv4 address, or an IPv6 client's /64.
pub(crate) fn client_network(address: IpAddr) -> IpAddr {
    match canonical(address) {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & (u128::MAX << 64))),
    }
}

/// The wider block an IPv6 client's /64 sits in, a /48 (one site), for a
/// second, looser limit: one holder of a /48 has 65 536 /64s. `None` for
/// IPv4, where neighbouring addresses are usually other customers.
pub fn rate_limit_block(address: IpAddr) -> Option<String> {
    match canonical(address) {
        IpAddr::V4(_) => None,
        IpAddr::V6(v6) => {
            let network = Ipv6Addr::from(u128::from(v6) & (u128::MAX << 80));
            Some(format!("{network}/48"))
        }
    }
}

/// Peers whose `x-forwarded-for` is believed (`--trusted-proxies`).
/// Empty by default: then the TCP peer is the client.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    blocks: Arc<[Cidr]>,
}

impl TrustedProxies {
    /// A comma-separated list of addresses and CIDR blocks; empty is none.
    pub fn parse(text: &str) -> Result<Self, String> {
        let blocks = text
            .split(',')
            .map(str::trim)
            .filter(|block| !block.is_empty())
            .map(Cidr::from_str)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TrustedProxies {
            blocks: blocks.into(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    pub fn trusts(&self, address: IpAddr) -> bool {
        self.blocks.iter().any(|block| block.contains(address))
    }

    /// The client behind `peer`: the peer itself unless it is a trusted
    /// proxy; then the nearest address in `x-forwarded-for` that is not a
    /// trusted proxy (the entries left of it could have been written by the
    /// client). A malformed header is ignored rather than half-believed.
    pub fn client_address(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if !self.trusts(peer) {
            return peer;
        }
        // Nearest hop first: each proxy appends the peer it saw. Split on
        // raw bytes, so a byte a client smuggled into its own part of the
        // header cannot spoil the part the proxy wrote.
        let hops = headers
            .get_all(&FORWARDED_FOR)
            .iter()
            .rev()
            .flat_map(|value| value.as_bytes().rsplit(|&b| b == b','));
        let mut client = peer;
        for hop in hops.take(MAX_HOPS) {
            let Some(address) = parse_hop(hop) else {
                return peer;
            };
            client = address;
            if !self.trusts(client) {
                break;
            }
        }
        client
    }
}

/// One `x-forwarded-for` entry: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`,
/// `[2001:db8::1]` or `[2001:db8::1]:5678`, as proxies write them.
fn parse_hop(hop: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(hop).ok()?.trim();
    let address = if let Some(bracketed) = text.strip_prefix('[') {
        let (inner, rest) = bracketed.split_once(']')?;
        if !(rest.is_empty() || rest.strip_prefix(':')?.parse::<u16>().is_ok()) {
            return None;
        }
        inner.parse::<Ipv6Addr>().ok().map(IpAddr::V6)?
    } else if let Ok(address) = text.parse::<IpAddr>() {
        address
    } else {
        IpAddr::V4(*text.parse::<std::net::SocketAddrV4>().ok()?.ip())
    };
    Some(canonical(address))
}

impl fmt::Display for TrustedProxies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let blocks: Vec<String> = self.blocks.iter().map(Cidr::to_string).collect();
        f.write_str(&blocks.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn forwarded(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(FORWARDED_FOR_HEADER, value.parse().unwrap());
        headers
    }

    #[test]
    fn blocks_parse_and_contain() {
        let proxies = TrustedProxies::parse("10.0.0.0/8, 192.168.1.7 ,fd00::/8").unwrap();
        assert!(proxies.trusts(ip("10.200.3.4")));
        assert!(proxies.trusts(ip("::ffff:10.1.1.1")), "mapped IPv4");
        assert!(proxies.trusts(ip("192.168.1.7")));
        assert!(!proxies.trusts(ip("192.168.1.8")));
        assert!(proxies.trusts(ip("fd12::1")));
        assert!(!proxies.trusts(ip("fe80::1")));
        assert!(!proxies.trusts(ip("11.0.0.1")));
        assert!(TrustedProxies::parse("").unwrap().is_empty());
        assert!(!proxies.is_empty());
        assert!(TrustedProxies::parse("fd00::/64").is_ok());
        let half = TrustedProxies::parse("0.0.0.0/1").unwrap();
        assert!(half.trusts(ip("8.8.8.8")));
        assert!(!half.trusts(ip("200.0.0.1")));
        assert!(!half.trusts(ip("::2")));
        assert!(
            TrustedProxies::parse("10.0.0.1/8")
                .unwrap_err()
                .contains("did you mean 10.0.0.0/8?")
        );
        for bad in [
            "10.0.0.0/33",
            "fd00::/129",
            "proxy.local",
            "10.0.0.0/x",
            "10.0.0/8",
            "0.0.0.0/0",
            "::/0",
            "fd00::1/8",
            "10.1.0.4/16",
            "fd00::4/64",
        ] {
            assert!(TrustedProxies::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(proxies.to_string(), "10.0.0.0/8,192.168.1.7/32,fd00::/8");
    }

    #[test]
    fn the_header_counts_only_from_a_trusted_peer() {
        let proxies = TrustedProxies::parse("10.0.0.0/8").unwrap();
        let headers = forwarded("203.0.113.9");
        assert_eq!(
            proxies.client_address(ip("198.51.100.1"), &headers),
            ip("198.51.100.1")
        );
        assert_eq!(
            proxies.client_address(ip("10.0.0.5"), &headers),
            ip("203.0.113.9")
        );
        let none = TrustedProxies::default();
        assert_eq!(
            none.client_address(ip("10.0.0.5"), &headers),
            ip("10.0.0.5")
        );
        assert_eq!(
            proxies.client_address(ip("10.0.0.5"), &HeaderMap::new()),
            ip("10.0.0.5"),
            "no header: the proxy itself"
        );
    }

    #[test]
    fn the_nearest_untrusted_hop_is_the_client() {
        let proxies = TrustedProxies::parse("10.0.0.0/8").unwrap();
        // The client wrote "1.2.3.4" itself; the ingress appended its peer.
        let headers = forwarded("1.2.3.4, 203.0.113.9, 10.0.0.7");
        assert_eq!(
            proxies.client_address(ip("10.0.0.5"), &headers),
            ip("203.0.113.9")
        );
        let mut two = forwarded("1.2.3.4");
        two.append(FORWARDED_FOR_HEADER, "203.0.113.9".parse().unwrap());
        assert_eq!(
            proxies.client_address(ip("10.0.0.5"), &two),
            ip("203.0.113.9")
        );
        // Every hop trusted: the farthest one.
        let internal = forwarded("10.1.1.1, 10.0.0.7");
        assert_eq!(
            proxies.client_address(ip("10.0.0.5"), &internal),
            ip("10.1.1.1")
        );
        for garbage in ["not-an-ip", "1.2.3.4, ", "[1.2.3.4]", "2001:db8::1:80:", ""] {
            assert_eq!(
                proxies.client_address(ip("10.0.0.5"), &forwarded(garbage)),
                ip("10.0.0.5"),
                "{garbage:?}"
            );
        }
    }

    #[test]
    fn proxies_forms_with_ports_and_brackets_are_read() {
        let proxies = TrustedProxies::parse("10.0.0.0/8").unwrap();
        for (header, client) in [
            ("203.0.113.9:4711", "203.0.113.9"),
            ("[2001:db8::7]", "2001:db8::7"),
            ("[2001:db8::7]:443", "2001:db8::7"),
            ("2001:db8::7", "2001:db8::7"),
            (" ::ffff:203.0.113.9 ", "203.0.113.9"),
        ] {
            assert_eq!(
                proxies.client_address(ip("10.0.0.5"), &forwarded(header)),
                ip(client),
                "{header}"
            );
        }
    }

    #[test]
    fn a_byte_the_client_smuggled_in_does_not_spoil_the_proxys_entry() {
        let proxies = TrustedProxies::parse("10.0.0.0/8").unwrap();
        let mut headers = HeaderMap::new();
        let value = http::HeaderValue::from_bytes(b"1.2.3.4\xff, 203.0.113.9").unwrap();
        headers.insert(FORWARDED_FOR_HEADER, value);
        assert_eq!(
            proxies.client_address(ip("10.0.0.5"), &headers),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn ipv6_clients_are_limited_per_64() {
        assert_eq!(rate_limit_key(ip("203.0.113.9")), "203.0.113.9");
        assert_eq!(rate_limit_key(ip("::ffff:203.0.113.9")), "203.0.113.9");
        assert_eq!(
            rate_limit_key(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd")),
            "2001:db8:1:2::/64"
        );
        assert_eq!(
            rate_limit_key(ip("2001:db8:1:2::1")),
            rate_limit_key(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            rate_limit_key(ip("2001:db8:1:2::1")),
            rate_limit_key(ip("2001:db8:1:3::1"))
        );
        assert_eq!(rate_limit_block(ip("203.0.113.9")), None);
        assert_eq!(
            rate_limit_block(ip("2001:db8:1:2::1")).as_deref(),
            Some("2001:db8:1::/48")
        );
        assert_eq!(
            rate_limit_block(ip("2001:db8:1:ffff::1")),
            rate_limit_block(ip("2001:db8:1:2::1"))
        );
    }
}
