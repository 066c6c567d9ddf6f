//! Which web pages may open a WebSocket: the `Origin` check made before an upgrade.
//!
//! Browsers send every WebSocket upgrade with cookies and the page's `Origin`, and do not apply
//! CORS to it, so without this check any site a user visits could open a connection to the
//! server from the user's browser. Allowed: upgrades without `Origin` (mobile apps, servers,
//! command-line clients: whatever is not a browser), an `Origin` whose host and port are the
//! request's `Host` (a page served by the same host) when that host is one of the server's own
//! names, and the configured `allowed_origins`.
//!
//! The server's own names are IP literals, `localhost` (and `*.localhost`), and the host of
//! `public_url`. Any other name in `Host` may be an attacker's: with DNS rebinding, a page on
//! `evil.example` makes its own name resolve to this server, and then its requests carry
//! `Origin: http://evil.example:7400` and `Host: evil.example:7400`, the same host. So for a name
//! that is not known to be ours, same host proves nothing, and only `allowed_origins` decides.
//!
//! A request with more than one `Origin` (or `Host`) header is refused: which one a check, a
//! proxy and a browser would each believe is anyone's guess.

use std::fmt;

/// One `allowed_origins` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    /// `*`: any origin.
    Any,
    /// `null`: the opaque origin of sandboxed frames and `file:` pages.
    Null,
    /// `scheme://host[:port]`, or with `subdomains`, `scheme://*.host[:port]`: any name ending
    /// in `.host`, at any depth, but not `host` itself.
    Site {
        scheme: String,
        host: String,
        port: Option<u16>,
        subdomains: bool,
    },
}

/// Why an `allowed_origins` entry does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadPattern(&'static str);

impl fmt::Display for BadPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for BadPattern {}

/// A parsed `Origin` header: `scheme://host[:port]`, lower case.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Origin {
    scheme: String,
    host: String,
    port: Option<u16>,
}

impl Pattern {
    /// Parses one entry: `*`, `null`, `scheme://host[:port]` or `scheme://*.host[:port]`.
    pub fn parse(entry: &str) -> Result<Pattern, BadPattern> {
        match entry {
            "*" => return Ok(Pattern::Any),
            "null" => return Ok(Pattern::Null),
            _ => {}
        }
        let Some((scheme, rest)) = entry.split_once("://") else {
            return Err(BadPattern(
                "give the scheme too, e.g. https://app.example.com or https://*.example.com",
            ));
        };
        if rest.ends_with('/') || rest.contains(['/', '?', '#', '@']) {
            return Err(BadPattern(
                "an origin is scheme://host[:port], without a path (drop the trailing /)",
            ));
        }
        let (host, subdomains) = match rest.strip_prefix("*.") {
            Some(h) => (h, true),
            None => (rest, false),
        };
        let (host, port) = split_host_port(host).ok_or(BadPattern("bad host or port"))?;
        if !valid_scheme(scheme) {
            return Err(BadPattern("bad scheme"));
        }
        if host.is_empty() || host.contains('*') || !valid_host(&host) {
            return Err(BadPattern(
                "bad host (a wildcard may only be the first label: https://*.example.com)",
            ));
        }
        Ok(Pattern::Site {
            scheme: scheme.to_ascii_lowercase(),
            host,
            port,
            subdomains,
        })
    }

    fn matches(&self, origin: Option<&Origin>) -> bool {
        match (self, origin) {
            (Pattern::Any, _) => true,
            (Pattern::Null, None) => true,
            (Pattern::Null, Some(_)) | (Pattern::Site { .. }, None) => false,
            (
                Pattern::Site {
                    scheme,
                    host,
                    port,
                    subdomains,
                },
                Some(o),
            ) => {
                let host_ok = if *subdomains {
                    o.host
                        .strip_suffix(host.as_str())
                        .and_then(|h| h.strip_suffix('.'))
                        .is_some_and(|h| !h.is_empty())
                } else {
                    o.host == *host
                };
                *scheme == o.scheme
                    && host_ok
                    && port.or(default_port(scheme)) == o.port.or(default_port(&o.scheme))
            }
        }
    }
}

/// The host name of `public_url` (`ws[s]://host[:port][/path]`), lower case: one of the
/// server's own names for the same-host rule.
pub fn own_name(public_url: Option<&str>) -> Option<String> {
    let rest = public_url?.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    split_host_port(authority).map(|(h, _)| h)
}

/// Whether `host` (lower case, IPv6 in brackets) is a name no one else can make this server
/// answer to: an IP literal, `localhost` or a `.localhost` name, or `own` (see [`own_name`]).
fn ours(host: &str, own: Option<&str>) -> bool {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse::<std::net::IpAddr>().is_ok()
        || host == "localhost"
        || host.ends_with(".localhost")
        || own == Some(host)
}

/// Whether an upgrade with these `Origin` and `Host` header values (every occurrence of each)
/// may proceed. `own`: the host of `public_url` ([`own_name`]).
pub fn allowed(
    origins: &[&[u8]],
    hosts: &[&[u8]],
    patterns: &[Pattern],
    own: Option<&str>,
) -> bool {
    let origin = match origins {
        [] => return true,
        [one] => *one,
        _ => return false,
    };
    let host = match hosts {
        [] => None,
        [one] => Some(*one),
        _ => return false,
    };
    let Ok(origin) = std::str::from_utf8(origin) else {
        return false;
    };
    let parsed = if origin == "null" {
        None
    } else {
        match parse_origin(origin) {
            Some(o) => Some(o),
            None => return false,
        }
    };
    if let Some(o) = &parsed
        && let Some(host) = host.and_then(|h| std::str::from_utf8(h).ok())
        && same_host(o, host, own)
    {
        return true;
    }
    patterns.iter().any(|p| p.matches(parsed.as_ref()))
}

/// The origin's host and port are the `Host` header's (a missing port being the origin
/// scheme's default), and that host is one of ours (see [`ours`]).
fn same_host(o: &Origin, host: &str, own: Option<&str>) -> bool {
    let Some((h, port)) = split_host_port(host) else {
        return false;
    };
    let origin_port = o.port.or(default_port(&o.scheme));
    h == o.host
        && ours(&h, own)
        && origin_port.is_some()
        && port.or(default_port(&o.scheme)) == origin_port
}

fn parse_origin(s: &str) -> Option<Origin> {
    let (scheme, rest) = s.split_once("://")?;
    if !valid_scheme(scheme) || rest.contains(['/', '?', '#', '@', '*']) {
        return None;
    }
    let (host, port) = split_host_port(rest)?;
    if host.is_empty() || !valid_host(&host) {
        return None;
    }
    Some(Origin {
        scheme: scheme.to_ascii_lowercase(),
        host,
        port,
    })
}

/// `host[:port]` or `[v6]:port`, the host in lower case.
fn split_host_port(s: &str) -> Option<(String, Option<u16>)> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        (format!("[{v6}]"), port)
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (s.to_owned(), None),
        }
    };
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => Some(p.parse().ok()?),
        Some(_) => return None,
    };
    Some((host.to_ascii_lowercase(), port))
}

fn valid_scheme(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
}

fn valid_host(h: &str) -> bool {
    h.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._[]:".contains(&b))
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWN: Option<&str> = Some("chat.example.com");

    fn check(origin: &str, host: &str, patterns: &[&str]) -> bool {
        let patterns: Vec<_> = patterns
            .iter()
            .map(|p| Pattern::parse(p).unwrap())
            .collect();
        allowed(&[origin.as_bytes()], &[host.as_bytes()], &patterns, OWN)
    }

    #[test]
    fn same_host_defaults_and_ports() {
        assert!(check("https://chat.example.com", "chat.example.com", &[]));
        assert!(check(
            "https://chat.example.com",
            "chat.example.com:443",
            &[]
        ));
        assert!(check(
            "http://Chat.Example.com:8080",
            "chat.example.com:8080",
            &[]
        ));
        assert!(check("http://127.0.0.1:7400", "127.0.0.1:7400", &[]));
        assert!(check("http://localhost:7400", "localhost:7400", &[]));
        assert!(check(
            "http://app.localhost:7400",
            "app.localhost:7400",
            &[]
        ));
        // A name that is not ours: DNS rebinding could point it here.
        assert!(!check("http://evil.example:7400", "evil.example:7400", &[]));
        assert!(!check(
            "http://localhost.evil.example",
            "localhost.evil.example",
            &[]
        ));
        assert!(check(
            "http://evil.example:7400",
            "evil.example:7400",
            &["http://evil.example:7400"]
        ));
        assert!(!check(
            "http://chat.example.com:8081",
            "chat.example.com:8080",
            &[]
        ));
        assert!(!check(
            "http://chat.example.com",
            "chat.example.com:8080",
            &[]
        ));
        assert!(!check("https://evil.example", "chat.example.com", &[]));
        assert!(check("http://[::1]:7400", "[::1]:7400", &[]));
        assert!(!check("null", "chat.example.com", &[]));
    }

    #[test]
    fn patterns() {
        let list = [
            "https://app.example.com",
            "https://*.example.org",
            "http://localhost:3000",
        ];
        assert!(check("https://app.example.com", "x", &list));
        assert!(check("https://app.example.com:443", "x", &list));
        assert!(!check("http://app.example.com", "x", &list));
        assert!(!check("https://app.example.com:8443", "x", &list));
        assert!(check("https://a.example.org", "x", &list));
        assert!(check("https://a.b.example.org", "x", &list));
        assert!(!check("https://example.org", "x", &list));
        assert!(!check("https://evilexample.org", "x", &list));
        assert!(!check("http://a.example.org", "x", &list));
        assert!(check("http://localhost:3000", "x", &list));
        assert!(!check("http://localhost:3001", "x", &list));
        assert!(!check("null", "x", &list));
        assert!(check("null", "x", &["null"]));
        assert!(check("https://anything.example", "x", &["*"]));
        assert!(!check("https://app.example.com/", "x", &list));
        assert!(!check("garbage", "x", &list));
    }

    #[test]
    fn one_origin_and_one_host_at_most() {
        let (good, evil) = (
            &b"https://chat.example.com"[..],
            &b"https://evil.example"[..],
        );
        let host = &b"chat.example.com"[..];
        let any = [Pattern::Any];
        assert!(allowed(&[good], &[host], &[], OWN));
        assert!(!allowed(&[good, good], &[host], &[], OWN));
        assert!(!allowed(&[evil, good], &[host], &any, OWN));
        assert!(!allowed(&[good, evil], &[host], &[], OWN));
        assert!(!allowed(&[good], &[host, host], &[], OWN));
        assert!(allowed(&[], &[host, host], &[], OWN));
    }

    #[test]
    fn own_names() {
        assert_eq!(
            own_name(Some("wss://Chat.Example.com/ws")).as_deref(),
            Some("chat.example.com")
        );
        assert_eq!(
            own_name(Some("ws://chat.example.com:8080")).as_deref(),
            Some("chat.example.com")
        );
        assert_eq!(
            own_name(Some("wss://[::1]:8443/")).as_deref(),
            Some("[::1]")
        );
        assert_eq!(own_name(None), None);
    }

    #[test]
    fn bad_entries() {
        for bad in [
            "example.com",
            "*.example.com",
            "https://app.example.com/",
            "https://a.*.example.com",
            "https://*example.com",
            "https://app.example.com:port",
            "https://",
            "1http://x",
        ] {
            assert!(Pattern::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Pattern::parse("capacitor://localhost").is_ok());
    }
}
