//! A minimal HTTP/1.1 client for imports (GET JSON, and JSON calls to an admin API) and
//! webhooks (POST, over a kept-alive [`Connection`]), on the hyper the server already uses,
//! with `https://` through the rustls the server's TLS uses (Mozilla's roots from
//! `webpki-roots`, plus any CA certificates given).

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

/// TLS client settings: Mozilla's roots, and the certificates of `extra_ca_pem`.
fn client_config(extra_ca_pem: Option<&[u8]>) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(pem) = extra_ca_pem {
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(pem) {
            roots
                .add(cert.context("a CA certificate does not parse")?)
                .context("a CA certificate is not usable")?;
            added += 1;
        }
        if added == 0 {
            bail!("the CA file holds no PEM certificate");
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A base URL: `http[s]://host[:port][/prefix]`.
#[derive(Clone)]
pub struct Base {
    host: String,
    port: u16,
    prefix: String,
    /// `https://`: how to make the TLS connection.
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for Base {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        write!(f, "{scheme}://{}{}", self.authority(), self.prefix)
    }
}

impl Base {
    /// Parses `url`; an `https://` one trusts Mozilla's roots and the certificates of
    /// `extra_ca_pem` (PEM, e.g. a company proxy's CA).
    pub fn parse(url: &str, extra_ca_pem: Option<&[u8]>) -> anyhow::Result<Base> {
        let (rest, https) = match (url.strip_prefix("https://"), url.strip_prefix("http://")) {
            (Some(rest), _) => (rest, true),
            (None, Some(rest)) => (rest, false),
            _ => bail!("{url}: expected an http:// or https:// URL"),
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
            _ => (authority, if https { 443 } else { 80 }),
        };
        if host.is_empty() {
            bail!("{url}: no host");
        }
        let tls = if https {
            Some(Arc::new(client_config(extra_ca_pem)?))
        } else {
            None
        };
        Ok(Base {
            host: host.to_owned(),
            port,
            prefix: prefix.to_owned(),
            tls,
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

/// The TLS handshake failed (the certificate did not verify, no common protocol): not retried.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TlsFailed(String);

/// The largest JSON answer an import reads (a page of history).
const MAX_JSON_ANSWER: usize = 256 << 20;

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
        match send_once(
            base,
            hyper::Method::GET,
            &uri,
            headers,
            Bytes::new(),
            MAX_JSON_ANSWER,
        )
        .await
        {
            Ok((status, body)) if status.is_success() => {
                return serde_json::from_slice(&body)
                    .with_context(|| format!("GET {path}: the answer is not JSON"));
            }
            Ok((status, _)) if status.as_u16() == 429 && attempt < ATTEMPTS => {}
            Ok((status, body)) => {
                let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
                bail!("GET {path}: {status}: {text}");
            }
            // A certificate that does not verify will not verify on a retry either.
            Err(e) if e.downcast_ref::<TlsFailed>().is_some() => return Err(e),
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

/// Sends a JSON request (`body`, when given) to `path` and reads a JSON answer (`Null` when
/// it is empty or not JSON), whatever its status. Connection failures, 429 and 503 are retried
/// as [`get_json`] retries them, so use it for requests that are safe to repeat.
pub async fn call_json(
    base: &Base,
    method: hyper::Method,
    path: &str,
    headers: &[(&str, String)],
    body: Option<&serde_json::Value>,
) -> anyhow::Result<(hyper::StatusCode, serde_json::Value)> {
    let uri = format!("{}{path}", base.prefix);
    let mut headers = headers.to_vec();
    let bytes = match body {
        Some(b) => {
            headers.push(("content-type", "application/json".into()));
            Bytes::from(serde_json::to_vec(b)?)
        }
        None => Bytes::new(),
    };
    let mut wait = Duration::from_millis(500);
    let mut attempt = 1;
    loop {
        let sent = send_once(
            base,
            method.clone(),
            &uri,
            &headers,
            bytes.clone(),
            MAX_JSON_ANSWER,
        )
        .await;
        match sent {
            Ok((status, _)) if matches!(status.as_u16(), 429 | 503) && attempt < ATTEMPTS => {}
            Ok((status, answer)) => {
                return Ok((
                    status,
                    serde_json::from_slice(&answer).unwrap_or(serde_json::Value::Null),
                ));
            }
            Err(e) if e.downcast_ref::<TlsFailed>().is_some() => return Err(e),
            Err(e) if attempt < ATTEMPTS => eprintln!("{method} {path}: {e:#}; retrying"),
            Err(e) => return Err(e.context(format!("{method} {path}"))),
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 4).min(Duration::from_secs(60));
        attempt += 1;
    }
}

/// POSTs `body` to `path` (under the base's prefix) once, within `timeout`; returns the status
/// and at most the first 64 KiB of the answer. For webhooks, which retry on their own terms.
pub async fn post(
    base: &Base,
    path: &str,
    headers: &[(&str, String)],
    body: Bytes,
    timeout: Duration,
) -> anyhow::Result<(hyper::StatusCode, Bytes)> {
    let uri = match format!("{}{path}", base.prefix) {
        u if u.is_empty() => "/".to_owned(),
        u => u,
    };
    match tokio::time::timeout(
        timeout,
        send_once(base, hyper::Method::POST, &uri, headers, body, 64 << 10),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => bail!("no answer within {} ms", timeout.as_millis()),
    }
}

/// One kept-alive HTTP/1.1 connection to a base, opened when first needed and again whenever
/// it was closed or failed: requests go one at a time, each after the answer to the last.
pub struct Connection {
    base: Base,
    sender: Option<Sender>,
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

impl Connection {
    pub fn new(base: Base) -> Connection {
        Connection { base, sender: None }
    }

    /// POSTs `body` to `path` (under the base's prefix), within `timeout` (connecting
    /// included); returns the status and at most the first 64 KiB of the answer. A request
    /// that fails on a connection kept from before (the peer closed it while it was idle) is
    /// sent once more on a new one, within the same timeout: use it for requests that are safe
    /// to repeat. After a failure or a timeout the connection is closed.
    pub async fn post(
        &mut self,
        path: &str,
        headers: &[(&str, String)],
        body: Bytes,
        timeout: Duration,
    ) -> anyhow::Result<(hyper::StatusCode, Bytes)> {
        let uri = match format!("{}{path}", self.base.prefix) {
            u if u.is_empty() => "/".to_owned(),
            u => u,
        };
        let sent = tokio::time::timeout(timeout, async {
            if let Some(sender) = self.sender.as_mut()
                && sender.ready().await.is_ok()
            {
                let req = request(&self.base, hyper::Method::POST, &uri, headers, body.clone())?;
                match sender.send_request(req).await {
                    Ok(res) => return read_answer(res, 64 << 10).await,
                    // Closed while idle: a new connection.
                    Err(_) => self.sender = None,
                }
            }
            let sender = self.sender.insert(connect(&self.base).await?);
            let req = request(&self.base, hyper::Method::POST, &uri, headers, body)?;
            exchange(sender, req, 64 << 10).await
        })
        .await;
        match sent {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => {
                self.sender = None;
                Err(e)
            }
            Err(_) => {
                // The answer may still come: not on this connection.
                self.sender = None;
                bail!("no answer within {} ms", timeout.as_millis())
            }
        }
    }
}

async fn send_once(
    base: &Base,
    method: hyper::Method,
    uri: &str,
    headers: &[(&str, String)],
    body: Bytes,
    max_answer: usize,
) -> anyhow::Result<(hyper::StatusCode, Bytes)> {
    let mut sender = connect(base).await?;
    exchange(
        &mut sender,
        request(base, method, uri, headers, body)?,
        max_answer,
    )
    .await
}

/// A new connection to `base` (TLS for `https://`).
async fn connect(base: &Base) -> anyhow::Result<Sender> {
    let stream = tokio::net::TcpStream::connect((base.host.as_str(), base.port))
        .await
        .with_context(|| format!("connecting to {}", base.authority()))?;
    let _ = stream.set_nodelay(true);
    match &base.tls {
        None => handshake(stream).await,
        Some(config) => {
            let name = ServerName::try_from(base.host.clone())
                .with_context(|| format!("{}: not a server name", base.host))?;
            let tls = tokio_rustls::TlsConnector::from(config.clone())
                .connect(name, stream)
                .await
                .map_err(|e| TlsFailed(format!("TLS with {}: {e}", base.authority())))?;
            handshake(tls).await
        }
    }
}

fn request(
    base: &Base,
    method: hyper::Method,
    uri: &str,
    headers: &[(&str, String)],
    body: Bytes,
) -> anyhow::Result<hyper::Request<Full<Bytes>>> {
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(uri)
        .header(hyper::header::HOST, base.authority())
        .header(hyper::header::ACCEPT, "application/json");
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    Ok(req.body(Full::new(body))?)
}

/// Sends `req` and reads the answer (at most `max_answer` bytes of it).
async fn exchange(
    sender: &mut Sender,
    req: hyper::Request<Full<Bytes>>,
    max_answer: usize,
) -> anyhow::Result<(hyper::StatusCode, Bytes)> {
    read_answer(sender.send_request(req).await?, max_answer).await
}

/// The status and body (at most `max_answer` bytes) of an answer.
async fn read_answer(
    res: hyper::Response<hyper::body::Incoming>,
    max_answer: usize,
) -> anyhow::Result<(hyper::StatusCode, Bytes)> {
    let status = res.status();
    // The status decides; of a longer body only the first `max_answer` bytes are read (an
    // endpoint that echoes what it got must not turn a 200 into a failure), and the rest is
    // left unread, which closes the connection.
    let mut body = res.into_body();
    let mut out = bytes::BytesMut::new();
    while out.len() < max_answer {
        let Some(frame) = body.frame().await else {
            break;
        };
        let frame = frame.map_err(|e| anyhow::anyhow!("reading the answer: {e}"))?;
        if let Ok(data) = frame.into_data() {
            out.extend_from_slice(&data[..data.len().min(max_answer - out.len())]);
        }
    }
    Ok((status, out.freeze()))
}

/// An HTTP/1.1 connection over `io`, driven by its own task.
async fn handshake<T>(io: T) -> anyhow::Result<Sender>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bases_and_encodes() {
        let b = Base::parse("http://127.0.0.1:8080/api/", None).unwrap();
        assert_eq!(
            (b.host.as_str(), b.port, b.prefix.as_str()),
            ("127.0.0.1", 8080, "/api")
        );
        let b = Base::parse("http://example.com", None).unwrap();
        assert_eq!((b.port, b.prefix.as_str()), (80, ""));
        let b = Base::parse("https://example.com/1.1", None).unwrap();
        assert_eq!((b.port, b.tls.is_some()), (443, true));
        assert!(Base::parse("https://example.com", Some(b"not pem")).is_err());
        assert!(Base::parse("ftp://x", None).is_err());
        assert_eq!(encode(r#"{"a":1} x"#), "%7B%22a%22%3A1%7D%20x");
    }
}
