//! Clients that stop reading: every write must make progress within `write_timeout_ms`, and
//! shutdown ends within `shutdown_grace_ms` + `close_timeout_ms` whatever the clients do.

use crate::harness::*;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};
use tidings::protocol::pb::{self, client_frame::Body as Req, server_frame::Body as Rep};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// `GET path` on a fresh connection: the status and the body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let raw = within(async {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("write");
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.expect("read");
        raw
    })
    .await;
    let raw = String::from_utf8(raw).expect("a UTF-8 answer");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a complete head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a status line: {raw}"));
    (status, body.to_owned())
}

/// `/healthz` as JSON, with its status.
pub async fn health(addr: std::net::SocketAddr) -> (u16, serde_json::Value) {
    let (status, body) = http_get(addr, "/healthz").await;
    let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    (status, json)
}

/// A WebSocket client whose TCP receive window is tiny, so the server's writes to it stall as
/// soon as it stops reading.
pub type Stuck = WebSocketStream<TcpStream>;

/// A TCP connection with a receive buffer of `bytes`.
async fn small_window(server: &TestServer, bytes: u32) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(bytes).unwrap();
    within(socket.connect(server.running().addr)).await.unwrap()
}

/// Connects with a 4 KiB receive buffer and logs `user` in by hand, reading up to the summary.
pub async fn stuck_client(server: &TestServer, user: &str) -> Stuck {
    let tcp = small_window(server, 4096).await;
    log_in_on(server, user, tcp).await
}

/// Logs `user` in by hand over `io`, reading up to the summary.
pub async fn log_in_on<S: AsyncRead + AsyncWrite + Unpin>(
    server: &TestServer,
    user: &str,
    io: S,
) -> WebSocketStream<S> {
    let mut req = server.url().into_client_request().unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(tidings::protocol::SUBPROTOCOL),
    );
    let (mut ws, _) = within(tokio_tungstenite::client_async(req, io))
        .await
        .unwrap();
    send(
        &mut ws,
        1,
        Req::Login(pb::Login {
            token: server.token(user),
            ..Default::default()
        }),
    )
    .await;
    loop {
        if let Some(Rep::UnreadSummary(_)) = read(&mut ws).await.body {
            return ws;
        }
    }
}

pub async fn send<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    id: u64,
    body: Req,
) {
    let frame = pb::ClientFrame {
        id,
        body: Some(body),
    };
    within(ws.send(WsMessage::Binary(tidings::protocol::encode(&frame))))
        .await
        .unwrap();
}

pub async fn read<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
) -> pb::ServerFrame {
    match within(ws.next()).await {
        Some(Ok(WsMessage::Binary(b))) => tidings::protocol::decode_server(&b).unwrap(),
        other => panic!("expected a binary frame, got {other:?}"),
    }
}

/// A group of `user` and alice holding 20 messages of 60 KiB: every history page is 1.2 MB.
/// Returns alice's client (still connected) and the group's id.
pub async fn big_history(server: &TestServer, user: &str) -> (tidings::client::Client, String) {
    let alice = server.client("alice").await;
    let g = within(alice.create_group("big", &[user])).await.unwrap();
    let payload = Bytes::from(vec![b'x'; 60 << 10]);
    for _ in 0..20 {
        within(alice.send(pb::SendMessage {
            conversation_id: g.id.clone(),
            content: payload.clone(),
            ..Default::default()
        }))
        .await
        .unwrap();
    }
    (alice, g.id)
}

/// Sends 50 FetchHistory requests for whole pages (about 60 MB of replies), without reading.
pub async fn fetch_50_pages(ws: &mut Stuck, conversation: &str) {
    for id in 100..150 {
        let fetch = pb::FetchHistory {
            conversation_id: conversation.to_owned(),
            limit: 20,
            ..Default::default()
        };
        send(ws, id, Req::FetchHistory(fetch)).await;
    }
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_within_the_write_timeout() {
    let server = TestServer::start_with(|c| c.write_timeout_ms = 1000).await;
    let stats = server.running().app.stats.clone();
    let (_alice, conv) = big_history(&server, "carol").await;
    let mut carol = stuck_client(&server, "carol").await;
    let (_, h) = health(server.running().addr).await;
    assert_eq!(h["sessions"], 2, "{h}");

    fetch_50_pages(&mut carol, &conv).await;
    let sent = Instant::now();
    // Well before the idle timeout (60 s) and any ping (25 s): only the stalled write ends it.
    within(stats.sessions_closed.wait_for(1)).await;
    let took = sent.elapsed();
    within(stats.connections_open.wait_for_at_most(1)).await;
    assert!(
        took < Duration::from_millis(1000 + 3000),
        "closed {took:?} after the requests, write_timeout_ms is 1000"
    );
    assert_eq!(stats.write_timeouts.get(), 1);
    let (status, h) = health(server.running().addr).await;
    assert_eq!(status, 200);
    assert_eq!(h["sessions"], 1, "only alice is left: {h}");
    assert_eq!(h["connections"], 1, "{h}");
    // She reconnects and reads normally.
    let carol = server.client("carol").await;
    let page = within(carol.request(Req::FetchHistory(pb::FetchHistory {
        conversation_id: conv,
        limit: 20,
        ..Default::default()
    })))
    .await
    .unwrap();
    assert!(matches!(page, Rep::MessagePage(p) if p.messages.len() == 20));
}

/// A socket that reads at most 16 KiB at a time and pauses 10 ms after each read: a client on
/// a link of at most 1.6 MB/s.
struct SlowLink {
    io: TcpStream,
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl AsyncRead for SlowLink {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Some(p) = &mut self.pause {
            ready!(p.as_mut().poll(cx));
            self.pause = None;
        }
        let mut chunk = [0u8; 32 << 10];
        let n = chunk.len().min(buf.remaining());
        let mut small = ReadBuf::new(&mut chunk[..n]);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut small))?;
        buf.put_slice(small.filled());
        self.pause = Some(Box::pin(tokio::time::sleep(Duration::from_millis(10))));
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for SlowLink {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[tokio::test]
async fn a_slow_reader_is_not_cut_off_while_its_replies_make_progress() {
    // A 1.2 MB page takes most of a second to go out over this link, several times the write
    // timeout; as long as bytes keep moving the connection stays. (Counting bytes written into
    // the socket rather than bytes the client received cut this client off: the server's send
    // buffer grows to megabytes and goes quiet for seconds.)
    let server = TestServer::start_with(|c| c.write_timeout_ms = 200).await;
    let stats = server.running().app.stats.clone();
    let (_alice, conv) = big_history(&server, "dave").await;
    let link = SlowLink {
        io: small_window(&server, 64 << 10).await,
        pause: None,
    };
    let mut dave = log_in_on(&server, "dave", link).await;
    for id in 100..106 {
        let fetch = pb::FetchHistory {
            conversation_id: conv.clone(),
            limit: 20,
            ..Default::default()
        };
        send(&mut dave, id, Req::FetchHistory(fetch)).await;
    }
    let start = Instant::now();
    let mut pages = 0;
    while pages < 6 {
        match read(&mut dave).await.body {
            Some(Rep::MessagePage(p)) => {
                assert_eq!(p.messages.len(), 20);
                pages += 1;
            }
            // The push of alice's last message may reach dave's new session after its ack.
            Some(Rep::Message(_)) => {}
            other => panic!("expected a page, got {other:?}"),
        }
    }
    let took = start.elapsed();
    assert!(
        took > Duration::from_millis(2 * 200),
        "the link was not slow enough to test anything: {took:?}"
    );
    assert_eq!(stats.write_timeouts.get(), 0);
    assert_eq!(stats.sessions_closed.get(), 0, "read in {took:?}");
}

#[tokio::test]
async fn stop_returns_within_grace_and_close_timeout_while_a_client_is_stuck() {
    let mut server = TestServer::start_with(|c| {
        c.write_timeout_ms = 60_000;
        c.shutdown_grace_ms = 500;
        c.close_timeout_ms = 500;
    })
    .await;
    let (_alice, conv) = big_history(&server, "carol").await;
    let mut carol = stuck_client(&server, "carol").await;
    fetch_50_pages(&mut carol, &conv).await;
    // The first page arriving shows the server is serving the requests; carol reads no more.
    assert!(matches!(
        read(&mut carol).await.body,
        Some(Rep::MessagePage(_))
    ));

    let running = server.server.take().unwrap();
    let start = Instant::now();
    let stopped = tokio::time::timeout(Duration::from_secs(8), running.stop()).await;
    let took = start.elapsed();
    assert!(stopped.is_ok(), "stop() still running after {took:?}");
    stopped.unwrap().expect("clean stop");
    assert!(
        took < Duration::from_millis(500 + 500 + 1500),
        "stop took {took:?}; grace 500 ms + close 500 ms"
    );
    drop(carol);
}
