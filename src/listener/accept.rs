//! Accepting connections when the process runs out of file descriptors.
//!
//! At the limit `accept` fails (EMFILE, ENFILE) and the connection stays in the kernel's
//! queue, its client waiting for an answer that never comes. So the listener keeps a few
//! descriptors in reserve (`/dev/null` opened at start): when `accept` fails for want of
//! descriptors, it lets the reserve go, accepts what is queued, answers each with
//! `503 {"status":"overloaded",…}` and closes it at once (a health check sees the node is
//! full, a client sees a refusal instead of a hang), then takes the reserve back and backs off
//! (100 ms, doubling up to 1 s) before accepting again. One log line a second at most says
//! how many accepts failed.

use crate::stats::Stats;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};

/// Descriptors held in reserve.
const RESERVE: usize = 8;
/// Most queued connections answered per round at the limit (the round runs on the accept
/// task; the rest wait for the next round).
const DRAIN_MAX: usize = 1024;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
const LOG_EVERY: Duration = Duration::from_secs(1);

/// The answer at the descriptor limit.
pub const OVERLOADED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\nconnection: close\r\ncontent-length: 59\r\n\r\n\
{\"status\":\"overloaded\",\"reason\":\"out of file descriptors\"}\n";

/// The answer over a pending-handshake cap.
pub const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: text/plain\r\nconnection: close\r\ncontent-length: 36\r\n\r\n\
too many pending connections; retry\n";

/// A listener with a descriptor reserve and backoff.
pub struct Acceptor {
    listener: TcpListener,
    stats: Arc<Stats>,
    reserve: Vec<std::fs::File>,
    backoff: Duration,
    /// Failed accepts and connections refused at the limit not yet logged.
    failed: u64,
    refused: u64,
    last_log: Option<Instant>,
    /// Whether accepts have been failing (for the line when they work again).
    failing: bool,
}

impl Acceptor {
    pub fn new(listener: TcpListener, stats: Arc<Stats>) -> Acceptor {
        let mut a = Acceptor {
            listener,
            stats,
            reserve: Vec::new(),
            backoff: BACKOFF_MIN,
            failed: 0,
            refused: 0,
            last_log: None,
            failing: false,
        };
        a.refill();
        a
    }

    fn refill(&mut self) {
        while self.reserve.len() < RESERVE {
            match std::fs::File::open("/dev/null") {
                Ok(f) => self.reserve.push(f),
                Err(_) => break,
            }
        }
    }

    /// The next connection. Errors are handled here (backed off, logged, counted).
    pub async fn next(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            match self.listener.accept().await {
                Ok(conn) => {
                    if self.failing {
                        self.failing = false;
                        self.backoff = BACKOFF_MIN;
                        tracing::info!(
                            failed_accepts = self.failed,
                            refused_overloaded = self.refused,
                            "accepting connections again"
                        );
                        (self.failed, self.refused, self.last_log) = (0, 0, None);
                        self.refill();
                    }
                    return conn;
                }
                Err(e) => self.failed_accept(e).await,
            }
        }
    }

    async fn failed_accept(&mut self, e: std::io::Error) {
        // A connection reset before it was accepted: nothing is wrong here.
        if matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset
        ) {
            return;
        }
        self.stats.accept_failures.inc();
        self.failed += 1;
        self.failing = true;
        if is_out_of_descriptors(&e) {
            self.reserve.clear();
            self.refuse_queued();
            self.refill();
        }
        if self.last_log.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
            tracing::warn!(
                error = %e,
                failed_accepts = self.failed,
                refused_overloaded = self.refused,
                backoff_ms = self.backoff.as_millis() as u64,
                "accept failing{}",
                if is_out_of_descriptors(&e) {
                    " (out of file descriptors: new connections get 503 until some close; \
                     raise the limit, see the README)"
                } else {
                    ""
                }
            );
            (self.failed, self.refused) = (0, 0);
            self.last_log = Some(Instant::now());
        }
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }

    /// Accepts what is queued, with the descriptors the reserve freed, and answers each with
    /// 503 at once.
    fn refuse_queued(&mut self) {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        for _ in 0..DRAIN_MAX {
            match self.listener.poll_accept(&mut cx) {
                std::task::Poll::Ready(Ok((stream, _))) => {
                    refuse_now(&stream, Some(OVERLOADED));
                    self.refused += 1;
                    self.stats.refused_overloaded.inc();
                }
                _ => break,
            }
        }
    }
}

fn is_out_of_descriptors(e: &std::io::Error) -> bool {
    #[cfg(unix)]
    {
        matches!(e.raw_os_error(), Some(errno::EMFILE | errno::ENFILE))
    }
    #[cfg(not(unix))]
    {
        let _ = e;
        false
    }
}

/// The same numbers on Linux, the BSDs and macOS.
#[cfg(unix)]
mod errno {
    pub const EMFILE: i32 = 24;
    pub const ENFILE: i32 = 23;
}

/// Answers `stream` with `response` (when given) and closes it, without waiting: reads what
/// has arrived of the request first, so that closing does not reset the connection under the
/// answer. For refusals: the answer is small enough for any socket buffer.
pub fn refuse_now(stream: &TcpStream, response: Option<&[u8]>) {
    let mut buf = [0u8; 4096];
    for _ in 0..4 {
        match stream.try_read(&mut buf) {
            Ok(n) if n == buf.len() => continue,
            _ => break,
        }
    }
    if let Some(r) = response {
        let _ = stream.try_write(r);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_canned_answers_have_the_right_length() {
        for answer in [super::OVERLOADED, super::BUSY] {
            let text = std::str::from_utf8(answer).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
            assert!(
                head.contains(&format!("content-length: {}", body.len())),
                "{text}"
            );
        }
        let overloaded = std::str::from_utf8(super::OVERLOADED).unwrap();
        let body = overloaded.split_once("\r\n\r\n").unwrap().1;
        serde_json::from_str::<serde_json::Value>(body).unwrap();
    }
}
