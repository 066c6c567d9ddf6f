//! A minimal webhook receiver for the suite's webhook runs: HTTP/1.1 on loopback, keep-alive,
//! answers every POST `204` (at once, or after a given delay, as a remote endpoint would) and
//! counts the events it was given, once each (by event
//! id; a batch sent again after a timeout is counted as repeats). The server's cost of
//! webhooks is what is measured, so the receiver does as little as it can.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A running receiver.
pub struct Receiver {
    pub addr: std::net::SocketAddr,
    /// Distinct events received.
    pub events: Arc<AtomicU64>,
    /// Events received again (the same id).
    pub repeats: Arc<AtomicU64>,
    /// POSTs received.
    pub posts: Arc<AtomicU64>,
}

impl Receiver {
    /// A receiver answering each POST `answer_after` after it has read it.
    pub async fn start(answer_after: std::time::Duration) -> anyhow::Result<Receiver> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let events = Arc::new(AtomicU64::new(0));
        let repeats = Arc::new(AtomicU64::new(0));
        let posts = Arc::new(AtomicU64::new(0));
        let seen = Arc::new(Mutex::new(HashSet::new()));
        let (e, r, p) = (events.clone(), repeats.clone(), posts.clone());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let (e, r, p, seen) = (e.clone(), r.clone(), p.clone(), seen.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::with_capacity(64 << 10);
                    let mut chunk = vec![0u8; 64 << 10];
                    loop {
                        // Headers, then a body of content-length bytes.
                        let head_end = loop {
                            if let Some(i) = find(&buf, b"\r\n\r\n") {
                                break i + 4;
                            }
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        };
                        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        while buf.len() < head_end + len {
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let body = &buf[head_end..head_end + len];
                        let (mut new, mut again) = (0, 0);
                        {
                            let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
                            for id in event_ids(body) {
                                if seen.insert(id) {
                                    new += 1;
                                } else {
                                    again += 1;
                                }
                            }
                        }
                        e.fetch_add(new, Ordering::Relaxed);
                        r.fetch_add(again, Ordering::Relaxed);
                        p.fetch_add(1, Ordering::Relaxed);
                        buf.drain(..head_end + len);
                        if !answer_after.is_zero() {
                            tokio::time::sleep(answer_after).await;
                        }
                        if s.write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        Ok(Receiver {
            addr,
            events,
            repeats,
            posts,
        })
    }
}

/// The event ids in a body: each `"id":"<digits>"` followed by the event's `type` or
/// `timestamp` key (a message's or a conversation's id is followed by other keys).
fn event_ids(body: &[u8]) -> impl Iterator<Item = u64> + '_ {
    const ID: &[u8] = b"\"id\":\"";
    body.windows(ID.len())
        .enumerate()
        .filter(|(_, w)| *w == ID)
        .filter_map(|(i, _)| {
            let rest = &body[i + ID.len()..];
            let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
            let after = &rest[digits..];
            let event =
                after.starts_with(b"\",\"type\":") || after.starts_with(b"\",\"timestamp\":");
            (digits > 0 && event)
                .then(|| std::str::from_utf8(&rest[..digits]).ok()?.parse().ok())
                .flatten()
        })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `tidings_webhook_events_written_total` from the server's `/metrics` (on its admin
/// listener `admin`): the events it has put in its webhook outbox.
pub async fn events_written(admin: std::net::SocketAddr) -> anyhow::Result<u64> {
    let text = tokio::task::spawn_blocking(move || metrics(admin)).await??;
    text.lines()
        .find_map(|l| l.strip_prefix("tidings_webhook_events_written_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .ok_or_else(|| anyhow::anyhow!("/metrics has no tidings_webhook_events_written_total"))
}

/// The push encodings the server has made, by form (`tidings_push_encodings_total{form}`).
/// Blocking: a run reads it at its go, from the synchronous gate.
pub fn push_encodings(
    admin: std::net::SocketAddr,
) -> anyhow::Result<std::collections::BTreeMap<String, u64>> {
    Ok(metrics(admin)?
        .lines()
        .filter_map(|l| l.strip_prefix("tidings_push_encodings_total{form=\""))
        .filter_map(|l| {
            let (form, rest) = l.split_once('"')?;
            let v = rest.split_whitespace().last()?.parse::<f64>().ok()?;
            Some((form.to_string(), v as u64))
        })
        .collect())
}

/// The server's `/metrics` page, from its admin listener `admin` (blocking).
fn metrics(admin: std::net::SocketAddr) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(admin)?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: tidings\r\nconnection: close\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    Ok(text)
}

/// An address on loopback where nothing listens (a dead endpoint).
pub fn dead_address() -> anyhow::Result<std::net::SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_event_ids_in_either_key_order() {
        let body = br#"{"events":[{"id":"7","type":"message.created","timestamp":1,"data":{"message":{"id":"0000000000000001","conversation_id":"1"}}},{"data":{"conversation":{"id":"12","kind":"group"}},"id":"8","timestamp":2,"type":"conversation.created"}]}"#;
        assert_eq!(super::event_ids(body).collect::<Vec<_>>(), [7, 8]);
    }
}
