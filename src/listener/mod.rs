//! What happens to a connection before HTTP: the accept (with a descriptor reserve), the caps
//! on connections that have not logged in yet, the PROXY protocol header of a trusted proxy,
//! and TLS.

pub mod accept;
pub mod admission;
pub mod proxy;
pub mod tls;

use bytes::{Buf, Bytes};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// A connection's byte stream, whatever is under it (TCP, TLS).
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// A stream whose first bytes were read already (looking for a PROXY header): they are read
/// again first.
pub struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Bytes, inner: S) -> Prefixed<S> {
        Prefixed { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.prefix.has_remaining() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Why the first bytes of a connection were refused.
#[derive(Debug, thiserror::Error)]
pub enum FirstBytes {
    #[error(transparent)]
    Proxy(#[from] proxy::ProxyError),
    #[error("a PROXY header from a peer not in trusted_proxies")]
    Untrusted,
    #[error("closed before its first bytes")]
    Closed,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads the PROXY header a trusted proxy must send first (`required`), or checks that an
/// untrusted peer sends none. Returns the header (when required) and the bytes read past it.
pub async fn read_proxy_header<S: AsyncRead + Unpin>(
    stream: &mut S,
    required: bool,
) -> Result<(Option<proxy::Header>, Bytes), FirstBytes> {
    let mut buf = Vec::with_capacity(256);
    loop {
        if required {
            match proxy::parse(&buf)? {
                proxy::Parsed::Done(h, len) => {
                    return Ok((Some(h), Bytes::from(buf).slice(len..)));
                }
                proxy::Parsed::Incomplete => {}
            }
        } else if !buf.is_empty() {
            if !proxy::looks_like_header(&buf) {
                return Ok((None, Bytes::from(buf)));
            }
            if buf.len() >= 6 {
                return Err(FirstBytes::Untrusted);
            }
        }
        // Read no further than a header can reach, 256 bytes at a time.
        let want = (proxy::MAX_HEADER + 1 - buf.len()).min(256);
        let start = buf.len();
        buf.resize(start + want, 0);
        let n = stream.read(&mut buf[start..]).await?;
        buf.truncate(start + n);
        if n == 0 {
            return Err(FirstBytes::Closed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_header_is_read_and_the_bytes_after_it_are_kept() {
        let mut input: &[u8] = b"PROXY TCP4 203.0.113.7 10.0.0.1 5 6\r\nGET / HTTP/1.1\r\n";
        let (h, rest) = read_proxy_header(&mut input, true).await.unwrap();
        assert!(matches!(h, Some(proxy::Header::Proxied { .. })));
        let mut p = Prefixed::new(rest, input);
        let mut all = String::new();
        p.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "GET / HTTP/1.1\r\n");

        let mut plain: &[u8] = b"GET / HTTP/1.1\r\n";
        assert!(matches!(
            read_proxy_header(&mut plain, true).await,
            Err(FirstBytes::Proxy(proxy::ProxyError::Missing))
        ));
        let mut plain: &[u8] = b"GET / HTTP/1.1\r\n";
        let (h, rest) = read_proxy_header(&mut plain, false).await.unwrap();
        assert!(h.is_none());
        assert_eq!(&rest[..], b"GET / HTTP/1.1\r\n");
        let mut sneaky: &[u8] = b"PROXY TCP4 1.2.3.4 10.0.0.1 5 6\r\n";
        assert!(matches!(
            read_proxy_header(&mut sneaky, false).await,
            Err(FirstBytes::Untrusted)
        ));
        let mut endless: &[u8] = &[b'P'; 10];
        assert!(matches!(
            read_proxy_header(&mut endless, true).await,
            Err(FirstBytes::Proxy(
                proxy::ProxyError::V1Malformed | proxy::ProxyError::Missing
            ))
        ));
    }
}
