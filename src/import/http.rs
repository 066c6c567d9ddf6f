//! A minimal HTTP/1.1 JSON client for imports (GET only), on the hyper the server already
//! uses. Plain `http://` only: no TLS stack is built in yet (see docs/leancloud.md, Import).

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use std::time::Duration;

/// A base URL: `http://host[:port][/prefix]`.
#[derive(Debug, Clone)]
pub struct Base {
    host: String,
    port: u16,
    prefix: String,
}

impl Base {
    pub fn parse(url: &str) -> anyhow::Result<Base> {
        if url.starts_with("https://") {
            bail!(
                "{url}: https is not built in yet; reach the API through a local TLS proxy \
                 (an http:// URL), or import the console's exported files"
            );
        }
        let Some(rest) = url.strip_prefix("http://") else {
            bail!("{url}: expected an http:// URL");
        };
        let (authority, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
                h.trim_start_matches('[').trim_end_matches(']'),
                p.parse().with_context(|| format!("{url}: bad port"))?,
            ),
            _ => (authority, 80),
        };
        if host.is_empty() {
            bail!("{url}: no host");
        }
        Ok(Base {
            host: host.to_owned(),
            port,
            prefix: prefix.to_owned(),
        })
    }

    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Percent-encodes a query component.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Attempts per request; 429 (rate limited) and connection failures are retried.
const ATTEMPTS: u32 = 6;

/// GETs `path` with `query` and `headers`; the body must be JSON.
pub async fn get_json(
    base: &Base,
    path: &str,
    query: &[(&str, String)],
    headers: &[(&str, String)],
) -> anyhow::Result<serde_json::Value> {
    let q: Vec<String> = query
        .iter()
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect();
    let uri = if q.is_empty() {
        format!("{}{path}", base.prefix)
    } else {
        format!("{}{path}?{}", base.prefix, q.join("&"))
    };
    let mut wait = Duration::from_millis(500);
    let mut attempt = 1;
    loop {
        match get_once(base, &uri, headers).await {
            Ok((status, body)) if status.is_success() => {
                return serde_json::from_slice(&body)
                    .with_context(|| format!("GET {path}: the answer is not JSON"));
            }
            Ok((status, _)) if status.as_u16() == 429 && attempt < ATTEMPTS => {}
            Ok((status, body)) => {
                let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
                bail!("GET {path}: {status}: {text}");
            }
            Err(e) if attempt < ATTEMPTS => {
                eprintln!("GET {path}: {e:#}; retrying");
            }
            Err(e) => return Err(e.context(format!("GET {path}"))),
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 4).min(Duration::from_secs(60));
        attempt += 1;
    }
}

async fn get_once(
    base: &Base,
    uri: &str,
    headers: &[(&str, String)],
) -> anyhow::Result<(hyper::StatusCode, Bytes)> {
    let stream = tokio::net::TcpStream::connect((base.host.as_str(), base.port))
        .await
        .with_context(|| format!("connecting to {}", base.authority()))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = hyper::Request::get(uri)
        .header(hyper::header::HOST, base.authority())
        .header(hyper::header::ACCEPT, "application/json");
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let res = sender
        .send_request(req.body(Empty::<Bytes>::new())?)
        .await?;
    let status = res.status();
    let body = res.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bases_and_encodes() {
        let b = Base::parse("http://127.0.0.1:8080/api/").unwrap();
        assert_eq!(
            (b.host.as_str(), b.port, b.prefix.as_str()),
            ("127.0.0.1", 8080, "/api")
        );
        let b = Base::parse("http://example.com").unwrap();
        assert_eq!((b.port, b.prefix.as_str()), (80, ""));
        assert!(Base::parse("https://example.com").is_err());
        assert!(Base::parse("ftp://x").is_err());
        assert_eq!(encode(r#"{"a":1} x"#), "%7B%22a%22%3A1%7D%20x");
    }
}
