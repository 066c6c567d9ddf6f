//! The client's address behind a proxy: which peers are trusted (`trusted_proxies`), the
//! PROXY protocol header (v1 text and v2 binary) such a peer sends first, and
//! `X-Forwarded-For`.

use std::net::{IpAddr, SocketAddr};

/// An address or network: `192.0.2.1`, `10.0.0.0/8`, `2001:db8::/32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    len: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let net: IpAddr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IP address"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let len = match len {
            Some(l) => l
                .parse::<u8>()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| format!("prefix length {l:?} is not 0..={max}"))?,
            None => max,
        };
        Ok(Cidr { net, len })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - self.len as u32).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - self.len as u32).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// IPv4-mapped IPv6 addresses (what a dual-stack listener sees) as IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The peers whose word on the client's address is taken.
#[derive(Debug, Clone, Default)]
pub struct Trusted(Vec<Cidr>);

impl Trusted {
    pub fn parse(entries: &[String]) -> Result<Trusted, String> {
        entries
            .iter()
            .map(|e| Cidr::parse(e.trim()).map_err(|m| format!("trusted_proxies entry {e:?}: {m}")))
            .collect::<Result<_, _>>()
            .map(Trusted)
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }

    /// The client's address given the trusted `peer`'s `X-Forwarded-For` values (in header
    /// order): the rightmost entry that is not a trusted proxy. Entries are walked from the
    /// right while they are trusted; one that does not parse ends the walk at the last address
    /// walked. All trusted: the leftmost. `peer` itself when it is not trusted.
    pub fn client_from_forwarded<'a>(
        &self,
        peer: IpAddr,
        forwarded_for: impl Iterator<Item = &'a str>,
    ) -> IpAddr {
        if !self.contains(peer) {
            return peer;
        }
        let entries: Vec<&str> = forwarded_for.flat_map(|v| v.split(',')).collect();
        let mut client = peer;
        for entry in entries.iter().rev() {
            let Some(ip) = parse_forwarded_entry(entry.trim()) else {
                break;
            };
            client = canonical(ip);
            if !self.contains(client) {
                break;
            }
        }
        client
    }
}

/// One `X-Forwarded-For` entry: `192.0.2.1`, `192.0.2.1:5000`, `2001:db8::1`,
/// `[2001:db8::1]` or `[2001:db8::1]:5000`.
fn parse_forwarded_entry(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        if after.is_empty() || after.strip_prefix(':')?.parse::<u16>().is_ok() {
            return ip.parse().ok();
        }
        return None;
    }
    s.parse::<SocketAddr>().ok().map(|a| a.ip())
}

/// The v2 header's first 12 bytes.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Longest v1 header, CRLF included (the specification's bound).
const V1_MAX: usize = 107;
/// Longest v2 header this server reads: 16 bytes and up to this much of addresses and TLVs.
/// Proxies send a few dozen bytes of TLVs at most.
pub const V2_MAX_PAYLOAD: usize = 2048;

/// What a PROXY header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// The connection's original source (and destination, unused).
    Proxied { source: SocketAddr },
    /// `LOCAL` (v2) or `UNKNOWN` (v1): the proxy's own connection (health checks); the peer's
    /// address stands.
    Local,
}

/// Why a PROXY header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("no PROXY protocol header")]
    Missing,
    #[error("PROXY v1 header longer than 107 bytes")]
    V1TooLong,
    #[error("malformed PROXY v1 header")]
    V1Malformed,
    #[error("unsupported PROXY v2 version or command")]
    V2BadVersion,
    #[error("unsupported PROXY v2 address family or protocol")]
    V2BadFamily,
    #[error("PROXY v2 header too short for its addresses")]
    V2Short,
    #[error("PROXY v2 header longer than this server reads")]
    V2TooLong,
}

/// What the first bytes of a connection are, as far as PROXY headers go.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed to tell.
    Incomplete,
    /// A header of `len` bytes.
    Done(Header, usize),
}

/// Whether `buf`, the first bytes of a connection, could be (the start of) a PROXY header.
/// `false` as soon as a byte rules both versions out.
pub fn looks_like_header(buf: &[u8]) -> bool {
    let v1 = b"PROXY ";
    let n = buf.len().min(v1.len());
    let m = buf.len().min(V2_SIGNATURE.len());
    buf[..n] == v1[..n] || buf[..m] == V2_SIGNATURE[..m]
}

/// Parses a PROXY header at the start of `buf`. Never reads past what it needs: the bytes
/// after `len` belong to the connection.
pub fn parse(buf: &[u8]) -> Result<Parsed, ProxyError> {
    if !looks_like_header(buf) {
        return Err(ProxyError::Missing);
    }
    if buf.len() < 6 {
        return Ok(Parsed::Incomplete);
    }
    if buf.starts_with(b"PROXY ") {
        parse_v1(buf)
    } else {
        parse_v2(buf)
    }
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, ProxyError> {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Err(ProxyError::V1TooLong)
        } else {
            Ok(Parsed::Incomplete)
        };
    };
    let line = std::str::from_utf8(&buf[6..end]).map_err(|_| ProxyError::V1Malformed)?;
    let mut parts = line.split(' ');
    let header = match parts.next() {
        Some("UNKNOWN") => Header::Local,
        Some(proto @ ("TCP4" | "TCP6")) => {
            let mut field = || parts.next().ok_or(ProxyError::V1Malformed);
            let (src, _dst, sport, _dport) = (field()?, field()?, field()?, field()?);
            if parts.next().is_some() {
                return Err(ProxyError::V1Malformed);
            }
            let ip: IpAddr = src.parse().map_err(|_| ProxyError::V1Malformed)?;
            if ip.is_ipv4() != (proto == "TCP4") {
                return Err(ProxyError::V1Malformed);
            }
            let port = parse_port(sport)?;
            Header::Proxied {
                source: SocketAddr::new(ip, port),
            }
        }
        _ => return Err(ProxyError::V1Malformed),
    };
    Ok(Parsed::Done(header, end + 2))
}

fn parse_port(s: &str) -> Result<u16, ProxyError> {
    // No sign, no leading zeros (the specification's form).
    if s.is_empty() || s.len() > 5 || (s.len() > 1 && s.starts_with('0')) {
        return Err(ProxyError::V1Malformed);
    }
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ProxyError::V1Malformed);
    }
    s.parse().map_err(|_| ProxyError::V1Malformed)
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, ProxyError> {
    if buf.len() < 16 {
        return Ok(Parsed::Incomplete);
    }
    let ver_cmd = buf[12];
    let fam = buf[13];
    let len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::V2BadVersion);
    }
    if len > V2_MAX_PAYLOAD {
        return Err(ProxyError::V2TooLong);
    }
    if buf.len() < 16 + len {
        return Ok(Parsed::Incomplete);
    }
    let payload = &buf[16..16 + len];
    let header = match ver_cmd & 0x0f {
        0 => Header::Local,
        1 => match fam {
            // TCP over IPv4, TCP over IPv6.
            0x11 => {
                let a = payload.get(..12).ok_or(ProxyError::V2Short)?;
                let ip = std::net::Ipv4Addr::new(a[0], a[1], a[2], a[3]);
                Header::Proxied {
                    source: SocketAddr::new(ip.into(), u16::from_be_bytes([a[8], a[9]])),
                }
            }
            0x21 => {
                let a = payload.get(..36).ok_or(ProxyError::V2Short)?;
                let mut src = [0u8; 16];
                src.copy_from_slice(&a[..16]);
                let ip = std::net::Ipv6Addr::from(src);
                Header::Proxied {
                    source: SocketAddr::new(ip.into(), u16::from_be_bytes([a[32], a[33]])),
                }
            }
            // UNSPEC, UDP, unix sockets: no address for a TCP client; the peer's stands (as
            // the specification asks of a receiver that does not use a family).
            f if f >> 4 <= 3 && f & 0x0f <= 2 => Header::Local,
            _ => return Err(ProxyError::V2BadFamily),
        },
        _ => return Err(ProxyError::V2BadVersion),
    };
    Ok(Parsed::Done(header, 16 + len))
}

/// Longest PROXY header this server reads.
pub const MAX_HEADER: usize = 16 + V2_MAX_PAYLOAD;

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_match_their_networks() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains("10.1.200.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.0.9".parse().unwrap()));
        let one = Cidr::parse("192.0.2.1").unwrap();
        assert!(one.contains("192.0.2.1".parse().unwrap()));
        assert!(!one.contains("192.0.2.2".parse().unwrap()));
        let all = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains("2001:db8:1::5".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        assert!(
            Cidr::parse("::/0")
                .unwrap()
                .contains("::1".parse().unwrap())
        );
        for bad in [
            "",
            "10.0.0.0/33",
            "10.0.0/8",
            "::/129",
            "x",
            "10.0.0.0/-1",
            "10.0.0.0/",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn forwarded_for_takes_the_rightmost_untrusted_entry_from_a_trusted_peer_only() {
        let t = Trusted::parse(&["10.0.0.0/8".into(), "192.0.2.9".into()]).unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let proxy = ip("10.0.0.1");
        let of = |vals: &[&str]| t.client_from_forwarded(proxy, vals.iter().copied());
        assert_eq!(of(&["203.0.113.7"]), ip("203.0.113.7"));
        // A client-supplied entry on the left is not believed.
        assert_eq!(of(&["1.1.1.1, 203.0.113.7, 10.0.0.2"]), ip("203.0.113.7"));
        assert_eq!(
            of(&["1.1.1.1", "203.0.113.7, 192.0.2.9"]),
            ip("203.0.113.7")
        );
        assert_eq!(of(&["[2001:db8::7]:443"]), ip("2001:db8::7"));
        assert_eq!(of(&["203.0.113.7:5000"]), ip("203.0.113.7"));
        assert_eq!(of(&[]), proxy, "no header: the proxy itself");
        assert_eq!(
            of(&["10.0.0.3, 10.0.0.2"]),
            ip("10.0.0.3"),
            "all trusted: leftmost"
        );
        assert_eq!(
            of(&["203.0.113.7, garbage"]),
            proxy,
            "unparsable stops the walk"
        );
        assert_eq!(of(&["unknown, 10.0.0.5"]), ip("10.0.0.5"));
        // An untrusted peer's header is ignored.
        assert_eq!(
            t.client_from_forwarded(ip("198.51.100.1"), ["203.0.113.7"].into_iter()),
            ip("198.51.100.1")
        );
    }

    #[test]
    fn v1_headers_parse_and_bad_ones_are_typed_errors() {
        let h = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 7400\r\nGET / HTTP/1.1\r\n";
        let Parsed::Done(Header::Proxied { source }, len) = parse(h).unwrap() else {
            panic!()
        };
        assert_eq!(source, sa("203.0.113.7:51234"));
        assert_eq!(&h[len..len + 3], b"GET");
        let h6 = b"PROXY TCP6 2001:db8::7 2001:db8::1 443 7400\r\n";
        assert_eq!(
            parse(h6).unwrap(),
            Parsed::Done(
                Header::Proxied {
                    source: sa("[2001:db8::7]:443")
                },
                h6.len()
            )
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n").unwrap(),
            Parsed::Done(Header::Local, 15)
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN ffff::1 ::1 1 2\r\n").unwrap(),
            Parsed::Done(Header::Local, 31)
        );
        for partial in [&b"PRO"[..], b"PROXY TCP4 203.0.113.7 10.0", b"\r\n\r\n\0\r"] {
            assert_eq!(parse(partial).unwrap(), Parsed::Incomplete, "{partial:?}");
        }
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(ProxyError::Missing));
        assert_eq!(
            parse(b"\x16\x03\x01"),
            Err(ProxyError::Missing),
            "a TLS hello"
        );
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat();
        assert_eq!(parse(&long), Err(ProxyError::V1TooLong));
        for bad in [
            &b"PROXY TCP4 203.0.113.7 10.0.0.1 51234\r\n"[..],
            b"PROXY TCP4 2001:db8::7 10.0.0.1 1 2\r\n",
            b"PROXY TCP4 203.0.113.7 10.0.0.1 051234 7400\r\n",
            b"PROXY TCP4 203.0.113.7 10.0.0.1 65536 7400\r\n",
            b"PROXY TCP4 203.0.113.7 10.0.0.1 +1 7400\r\n",
            b"PROXY TCP4 203.0.113.7 10.0.0.1 1 2 3\r\n",
            b"PROXY TCP4  203.0.113.7 10.0.0.1 1 2\r\n",
            b"PROXY UDP4 203.0.113.7 10.0.0.1 1 2\r\n",
            b"PROXY \xff\r\n",
        ] {
            assert_eq!(parse(bad), Err(ProxyError::V1Malformed), "{bad:?}");
        }
    }

    #[test]
    fn any_bytes_parse_to_an_answer_without_panicking() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let prefixes: [&[u8]; 3] = [b"PROXY ", &V2_SIGNATURE, b""];
        for round in 0..20_000 {
            let mut buf = prefixes[round % 3].to_vec();
            let len = (next() % 300) as usize;
            // Mostly header-like bytes, so the parser gets deep.
            let alphabet = b"PROXY TCP46UNKNOWN0123456789.:abcdef \r\n";
            for _ in 0..len {
                let r = next();
                buf.push(if r % 4 == 0 {
                    r as u8
                } else {
                    alphabet[(r >> 8) as usize % alphabet.len()]
                });
            }
            if let Ok(Parsed::Done(_, n)) = parse(&buf) {
                assert!(n <= buf.len());
            }
        }
    }

    fn v2(cmd: u8, fam: u8, payload: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | cmd);
        h.push(fam);
        h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        h.extend_from_slice(payload);
        h
    }

    #[test]
    fn v2_headers_parse_and_bad_ones_are_typed_errors() {
        let mut p4 = vec![203, 0, 113, 7, 10, 0, 0, 1];
        p4.extend_from_slice(&51234u16.to_be_bytes());
        p4.extend_from_slice(&7400u16.to_be_bytes());
        // A TLV after the addresses is skipped.
        p4.extend_from_slice(&[0x04, 0x00, 0x01, 0x00]);
        let mut h = v2(1, 0x11, &p4);
        let n = h.len();
        h.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(
            parse(&h).unwrap(),
            Parsed::Done(
                Header::Proxied {
                    source: sa("203.0.113.7:51234")
                },
                n
            )
        );
        for cut in 1..n {
            assert_eq!(parse(&h[..cut]).unwrap(), Parsed::Incomplete, "{cut}");
        }
        let mut p6 = "2001:db8::7"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets()
            .to_vec();
        p6.extend_from_slice(&[0; 16]);
        p6.extend_from_slice(&443u16.to_be_bytes());
        p6.extend_from_slice(&7400u16.to_be_bytes());
        let h6 = v2(1, 0x21, &p6);
        assert_eq!(
            parse(&h6).unwrap(),
            Parsed::Done(
                Header::Proxied {
                    source: sa("[2001:db8::7]:443")
                },
                h6.len()
            )
        );
        assert_eq!(
            parse(&v2(0, 0, &[])).unwrap(),
            Parsed::Done(Header::Local, 16)
        );
        assert_eq!(parse(&v2(1, 0x11, &[1, 2, 3])), Err(ProxyError::V2Short));
        assert_eq!(
            parse(&v2(1, 0x31, &[0; 216])).unwrap(),
            Parsed::Done(Header::Local, 16 + 216),
            "a unix socket's addresses are not used"
        );
        assert_eq!(parse(&v2(1, 0x55, &[0; 16])), Err(ProxyError::V2BadFamily));
        assert_eq!(parse(&v2(1, 0x13, &[0; 16])), Err(ProxyError::V2BadFamily));
        assert_eq!(parse(&v2(2, 0x11, &p4)), Err(ProxyError::V2BadVersion));
        let mut bad_ver = v2(1, 0x11, &p4);
        bad_ver[12] = 0x11;
        assert_eq!(parse(&bad_ver), Err(ProxyError::V2BadVersion));
        let mut huge = v2(1, 0x11, &[]);
        huge[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        assert_eq!(parse(&huge), Err(ProxyError::V2TooLong));
    }
}
