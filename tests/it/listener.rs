//! Before login: pending handshakes and connections not logged in are capped in total and per
//! client address; behind a trusted proxy the client address is what `X-Forwarded-For` or the
//! PROXY header says; shutdown does not wait for connections that never logged in.

use crate::harness::*;
use crate::stuck_clients::{health, log_in_on};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// A TCP connection to `to` from the loopback address `from` (127.0.0.0/8 is all local).
pub async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::new(from.parse().unwrap(), 0)).unwrap();
    within(s.connect(to)).await.unwrap()
}

/// A WebSocket upgrade over `io` (no login), with an `X-Forwarded-For` header when given;
/// `Err(status)` when the server answered without upgrading.
pub async fn upgrade_on<S: AsyncRead + AsyncWrite + Unpin>(
    server: &TestServer,
    io: S,
    forwarded_for: Option<&str>,
) -> Result<WebSocketStream<S>, u16> {
    upgrade_url(&server.url(), io, forwarded_for).await
}

/// [`upgrade_on`] for the server at `url`.
pub async fn upgrade_url<S: AsyncRead + AsyncWrite + Unpin>(
    url: &str,
    io: S,
    forwarded_for: Option<&str>,
) -> Result<WebSocketStream<S>, u16> {
    let mut req = url.into_client_request().unwrap();
    let h = req.headers_mut();
    h.insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(tidings::protocol::SUBPROTOCOL),
    );
    if let Some(xff) = forwarded_for {
        h.insert("X-Forwarded-For", HeaderValue::from_str(xff).unwrap());
    }
    match within(tokio_tungstenite::client_async(req, io)).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
        Err(e) => panic!("upgrade failed without an HTTP answer: {e}"),
    }
}

/// Everything the server sends on `s` until it closes it (a reset ends it too).
async fn answer(mut s: TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    buf
}

fn is_503_or_nothing(answer: &[u8]) -> bool {
    answer.is_empty() || answer.starts_with(b"HTTP/1.1 503 ")
}

#[tokio::test]
async fn two_thousand_slow_handshakes_from_one_address_do_not_keep_others_out() {
    // Long timeouts: what ends the attackers' connections here is the cap, nothing else.
    let mut server = TestServer::start_with(|c| {
        c.handshake_timeout_ms = 120_000;
        c.login_timeout_ms = 120_000;
    })
    .await;
    let stats = server.running().app.stats.clone();
    let addr = server.running().addr;
    let per_ip = server.config.max_pending_handshakes_per_ip;
    assert_eq!(per_ip, 256, "the documented default");

    // The probe: 1,000 slowloris heads that never end and 1,000 silent connections.
    let (closed_tx, mut closed_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut attackers = Vec::new();
    for i in 0..2000 {
        let mut s = connect_from("127.0.0.2", addr).await;
        if i % 2 == 0 {
            let _ = s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n").await;
        }
        let tx = closed_tx.clone();
        attackers.push(tokio::spawn(async move {
            let _ = tx.send(answer(s).await);
        }));
    }
    let refused = 2000 - per_ip;
    for _ in 0..refused {
        let a = within(closed_rx.recv()).await.unwrap();
        assert!(is_503_or_nothing(&a), "{}", String::from_utf8_lossy(&a));
    }
    within(stats.refused_handshakes.wait_for(refused as u64)).await;
    assert_eq!(stats.pending_handshakes.get(), per_ip as u64);

    // Others are served meanwhile.
    let alice = server.client("alice").await;
    let mut bob = server.client("bob").await;
    let d = within(alice.create_direct("bob")).await.unwrap();
    event(&mut bob).await;
    within(alice.send_text(&d.id, "still here")).await.unwrap();
    assert_eq!(text(&message(&mut bob).await), "still here");
    let (status, h) = health(addr).await;
    assert_eq!(status, 200, "{h}");
    assert_eq!(
        h["pending_handshakes"],
        per_ip + 1,
        "the held ones and this one: {h}"
    );
    assert_eq!(h["refused_handshakes"], refused, "{h}");

    // Upgraded connections that do not log in: capped per address too (256 by default).
    let per_ip_logins = server.config.max_pending_logins_per_ip;
    let mut silent = Vec::new();
    for _ in 0..per_ip_logins {
        let tcp = connect_from("127.0.0.3", addr).await;
        silent.push(upgrade_on(&server, tcp, None).await.expect("under the cap"));
    }
    for _ in 0..2 {
        let tcp = connect_from("127.0.0.3", addr).await;
        assert_eq!(upgrade_on(&server, tcp, None).await.err(), Some(503));
    }
    assert_eq!(stats.pending_logins.get(), per_ip_logins as u64);
    assert_eq!(stats.refused_logins.get(), 2);
    // A login gives its place back.
    let tcp = connect_from("127.0.0.4", addr).await;
    let carol = log_in_on(&server, "carol", tcp).await;
    assert_eq!(stats.pending_logins.get(), per_ip_logins as u64);
    // (A logged-in client that does not answer its close would be waited for.)
    drop(carol);

    // Shutdown waits neither for the held handshakes nor for the silent WebSockets, which
    // never answer a close (close_timeout_ms is 5 s, and stop took that before).
    let started = Instant::now();
    within(server.server.take().unwrap().stop())
        .await
        .expect("clean stop");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "stop took {:?}",
        started.elapsed()
    );
    for _ in 0..per_ip {
        within(closed_rx.recv()).await.unwrap();
    }
    drop(silent);
}

#[tokio::test]
async fn the_total_pending_handshake_cap_holds_across_addresses_with_a_503() {
    let server = TestServer::start_with(|c| {
        c.handshake_timeout_ms = 120_000;
        c.max_pending_handshakes = 50;
        c.max_pending_handshakes_per_ip = 20;
    })
    .await;
    let stats = server.running().app.stats.clone();
    let addr = server.running().addr;
    let mut held = Vec::new();
    let mut refused = Vec::new();
    for ip in ["127.0.0.5", "127.0.0.6", "127.0.0.7"] {
        for _ in 0..20 {
            let s = connect_from(ip, addr).await;
            // In order: the 51st connection is the first one over.
            if held.len() < 50 {
                within(stats.pending_handshakes.wait_for(held.len() as u64 + 1)).await;
                held.push(s);
            } else {
                refused.push(s);
            }
        }
    }
    for s in refused {
        let a = within(answer(s)).await;
        assert!(
            a.starts_with(b"HTTP/1.1 503 "),
            "{}",
            String::from_utf8_lossy(&a)
        );
    }
    assert_eq!(stats.refused_handshakes.get(), 10);
    // One goes: there is room for one more.
    drop(held.pop());
    within(stats.pending_handshakes.wait_for_at_most(49)).await;
    let _ = within(health(addr)).await;
}

#[tokio::test]
async fn forwarded_for_from_a_trusted_proxy_is_the_client_address_for_the_caps() {
    let server = TestServer::start_with(|c| {
        c.trusted_proxies = vec!["127.0.0.1".into()];
        c.max_pending_logins_per_ip = 2;
    })
    .await;
    let addr = server.running().addr;
    let proxy = || connect_from("127.0.0.1", addr);
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(
            upgrade_on(&server, proxy().await, Some("203.0.113.7"))
                .await
                .unwrap(),
        );
    }
    // The same client again: over its cap, whatever a client put on the left.
    assert_eq!(
        upgrade_on(&server, proxy().await, Some("203.0.113.7"))
            .await
            .err(),
        Some(503)
    );
    assert_eq!(
        upgrade_on(&server, proxy().await, Some("198.51.100.1, 203.0.113.7"))
            .await
            .err(),
        Some(503)
    );
    // Another client behind the same proxy is not.
    held.push(
        upgrade_on(&server, proxy().await, Some("203.0.113.8"))
            .await
            .unwrap(),
    );
    // An untrusted peer's header is ignored: it counts as itself.
    let untrusted = || connect_from("127.0.0.9", addr);
    for _ in 0..2 {
        held.push(
            upgrade_on(&server, untrusted().await, Some("203.0.113.7"))
                .await
                .unwrap(),
        );
    }
    assert_eq!(
        upgrade_on(&server, untrusted().await, Some("203.0.113.99"))
            .await
            .err(),
        Some(503)
    );
    // Logged in through the proxy: served as usual.
    let mut c = log_in_on(&server, "alice", proxy().await).await;
    crate::stuck_clients::send(
        &mut c,
        2,
        tidings::protocol::pb::client_frame::Body::Ping(Default::default()),
    )
    .await;
    crate::stuck_clients::read(&mut c).await;
}

/// A PROXY v2 header for a TCP/IPv4 connection from `src`.
fn proxy_v2(src: SocketAddr) -> Vec<u8> {
    let SocketAddr::V4(src) = src else {
        panic!("IPv4 only")
    };
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&src.ip().octets());
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&src.port().to_be_bytes());
    h.extend_from_slice(&7400u16.to_be_bytes());
    h
}

#[tokio::test]
async fn proxy_protocol_headers_from_trusted_peers_name_the_client() {
    let server = TestServer::start_with(|c| {
        c.trusted_proxies = vec!["127.0.0.1".into()];
        c.proxy_protocol = true;
        c.max_pending_logins_per_ip = 1;
    })
    .await;
    let stats = server.running().app.stats.clone();
    let addr = server.running().addr;
    let via = |header: Vec<u8>| async move {
        let mut s = connect_from("127.0.0.1", addr).await;
        s.write_all(&header).await.unwrap();
        s
    };
    // v1: logged in and served.
    let mut c = log_in_on(
        &server,
        "alice",
        via(b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 7400\r\n".to_vec()).await,
    )
    .await;
    crate::stuck_clients::send(
        &mut c,
        2,
        tidings::protocol::pb::client_frame::Body::Ping(Default::default()),
    )
    .await;
    crate::stuck_clients::read(&mut c).await;
    // v2: the client's address counts, not the proxy's.
    let _held = upgrade_on(
        &server,
        via(proxy_v2("198.51.100.1:1".parse().unwrap())).await,
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        upgrade_on(
            &server,
            via(proxy_v2("198.51.100.1:2".parse().unwrap())).await,
            None
        )
        .await
        .err(),
        Some(503),
        "one pending login per address"
    );
    let _other = upgrade_on(
        &server,
        via(b"PROXY TCP4 198.51.100.2 127.0.0.1 1 7400\r\n".to_vec()).await,
        None,
    )
    .await
    .unwrap();

    // A trusted peer without a header, or with a broken one: closed without an answer.
    let refused_before = stats.refused_handshakes.get();
    for first in [
        &b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"PROXY TCP4 nonsense\r\n",
    ] {
        let a = within(answer(via(first.to_vec()).await)).await;
        assert!(a.is_empty(), "{}", String::from_utf8_lossy(&a));
    }
    // An untrusted peer may not send one; without one it is served directly.
    let mut s = connect_from("127.0.0.2", addr).await;
    s.write_all(b"PROXY TCP4 203.0.113.9 127.0.0.1 1 7400\r\n")
        .await
        .unwrap();
    assert!(within(answer(s)).await.is_empty());
    assert_eq!(stats.refused_handshakes.get(), refused_before + 3);
    let mut s = connect_from("127.0.0.2", addr).await;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let a = within(answer(s)).await;
    assert!(
        a.starts_with(b"HTTP/1.1 200 "),
        "{}",
        String::from_utf8_lossy(&a)
    );
}

#[tokio::test]
async fn at_the_file_descriptor_limit_connections_are_refused_not_hung_and_health_comes_back() {
    use std::os::unix::process::CommandExt;
    const LIMIT: libc::rlim_t = 64;
    const CONNECTIONS: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    let server = Binary::serve_with(
        &dir.path().join("data"),
        &[
            "max_pending_handshakes=100000",
            "max_pending_handshakes_per_ip=100000",
            "handshake_timeout_ms=120000",
        ],
        &[],
        |cmd| {
            // SAFETY: only setrlimit, async-signal-safe, between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    let r = libc::rlimit {
                        rlim_cur: LIMIT,
                        rlim_max: LIMIT,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        },
    );
    let addr: SocketAddr = server.addr.parse().unwrap();
    let started = Instant::now();

    // Silent connections hold descriptors until the server has none left.
    let (closed_tx, mut closed_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut load = Vec::new();
    for _ in 0..CONNECTIONS {
        let s = within(TcpStream::connect(addr)).await.unwrap();
        let tx = closed_tx.clone();
        load.push(tokio::spawn(async move {
            let _ = tx.send(answer(s).await);
        }));
    }
    // The server cannot hold more than LIMIT: the others are answered and closed, not hung.
    let mut overloaded = 0;
    for _ in 0..CONNECTIONS - LIMIT as usize {
        let a = within(closed_rx.recv()).await.unwrap();
        assert!(is_503_or_nothing(&a), "{}", String::from_utf8_lossy(&a));
        overloaded += usize::from(!a.is_empty());
    }
    assert!(overloaded > 0, "no connection got the 503");
    // A health check at the limit gets an answer: 503, overloaded. (A reset may beat the
    // answer when the request arrives after the refusal closed the socket: asked again.)
    let (status, h) = within(async {
        loop {
            if let Some(answer) = try_health(addr).await {
                return answer;
            }
        }
    })
    .await;
    assert_eq!(
        (status, h["status"].as_str()),
        (503, Some("overloaded")),
        "{h}"
    );

    // The load goes: health comes back.
    for task in &load {
        task.abort();
    }
    let h = within(async {
        loop {
            match try_health(addr).await {
                Some((200, h)) => return h,
                Some((_, h)) => assert_eq!(h["status"], "overloaded", "{h}"),
                None => {}
            }
        }
    })
    .await;
    assert!(h["accept_failures"].as_u64().unwrap() > 0, "{h}");
    assert!(h["refused_overloaded"].as_u64().unwrap() > 0, "{h}");
    // And clients are served again.
    let alice = server.client("alice").await;
    within(alice.ping()).await.unwrap();

    server.signal(libc::SIGTERM);
    let (status, log) = server.wait().await;
    assert!(status.success(), "{}", log.join("\n"));
    let failing = log.iter().filter(|l| l.contains("accept failing")).count();
    let secs = started.elapsed().as_secs() as usize;
    assert!(
        (1..=secs + 2).contains(&failing),
        "{failing} accept-failure lines in {secs} s:\n{}",
        log.join("\n")
    );
}

/// `/healthz` on a fresh connection; `None` when the connection was reset before an answer.
async fn try_health(addr: SocketAddr) -> Option<(u16, serde_json::Value)> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.ok()?;
    let raw = String::from_utf8(raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let status = head.get(9..12)?.parse().ok()?;
    Some((status, serde_json::from_str(body).ok()?))
}

#[tokio::test]
async fn silent_and_slow_handshakes_end_at_the_handshake_timeout() {
    let server = TestServer::start_with(|c| c.handshake_timeout_ms = 300).await;
    let stats = server.running().app.stats.clone();
    let addr = server.running().addr;
    let silent = connect_from("127.0.0.1", addr).await;
    let mut slow = connect_from("127.0.0.1", addr).await;
    slow.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    within(stats.pending_handshakes.wait_for(2)).await;
    let started = Instant::now();
    within(answer(silent)).await;
    within(answer(slow)).await;
    within(stats.pending_handshakes.wait_for_at_most(0)).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn the_connection_log_names_the_client_a_trusted_proxy_forwarded() {
    let dir = tempfile::tempdir().unwrap();
    let server = Binary::serve(&dir.path().join("data"), &["trusted_proxies=127.0.0.1"]);
    let addr: SocketAddr = server.addr.parse().unwrap();
    let tcp = connect_from("127.0.0.1", addr).await;
    let mut ws = upgrade_url(&server.url(), tcp, Some("198.51.100.1, 203.0.113.7"))
        .await
        .unwrap();
    log_in_raw(&mut ws, "alice").await;
    let line = server.wait_log("connection opened");
    assert!(line.contains("peer=203.0.113.7"), "{line}");
    // An untrusted peer's header is not believed, in the log either.
    let tcp = connect_from("127.0.0.2", addr).await;
    let mut ws2 = upgrade_url(&server.url(), tcp, Some("203.0.113.8"))
        .await
        .unwrap();
    log_in_raw(&mut ws2, "bob").await;
    let line = server.wait_log("connection opened");
    assert!(line.contains("peer=127.0.0.2:"), "{line}");
    drop((ws, ws2));
    // And one that never logs in, still waiting at SIGTERM: its close line names it too.
    let tcp = connect_from("127.0.0.3", addr).await;
    let _ws3 = upgrade_url(&server.url(), tcp, Some("203.0.113.9"))
        .await
        .unwrap();
    server.signal(libc::SIGTERM);
    let (status, log) = server.wait().await;
    assert!(
        status.success(),
        "{status:?}; the server's log:\n{}",
        log.join("\n")
    );
    let closed = |peer: &str| {
        log.iter()
            .any(|l| l.contains("connection closed") && l.contains(&format!("peer={peer}")))
    };
    assert!(closed("203.0.113.7"), "{}", log.join("\n"));
    assert!(closed("127.0.0.3:"), "{}", log.join("\n"));
}

/// Logs `user` in on a raw native connection to a [`Binary`] (tokens from the shared test
/// secret) and reads up to the unread summary.
async fn log_in_raw<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>, user: &str) {
    use tidings::protocol::pb::{client_frame::Body as Req, server_frame::Body as Rep};
    let config = tidings::config::Config {
        jwt_hs256_secret: Some(SECRET.into()),
        ..Default::default()
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let token = tidings::auth::mint(&config, user, 3600, now, false).unwrap();
    let login = tidings::protocol::pb::Login {
        token,
        ..Default::default()
    };
    crate::stuck_clients::send(ws, 1, Req::Login(login)).await;
    while !matches!(
        within(crate::stuck_clients::read(ws)).await.body,
        Some(Rep::UnreadSummary(_))
    ) {}
}

#[tokio::test]
async fn sigterm_as_soon_as_the_server_listens_drains_and_exits_cleanly() {
    // The signal handlers are in place before the listening line: a SIGTERM right after it
    // (a supervisor's health-gated restart, a test) stops the server as any SIGTERM does, not
    // by the signal's default action.
    for _ in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let server = Binary::serve(&dir.path().join("data"), &[]);
        server.signal(libc::SIGTERM);
        let (status, log) = server.wait().await;
        assert!(
            status.success(),
            "{status:?}; the server's log:\n{}",
            log.join("\n")
        );
        assert!(
            log.iter().any(|l| l.contains("store flushed; stopped")),
            "{}",
            log.join("\n")
        );
    }
}

#[tokio::test]
async fn shutdown_does_not_wait_for_a_proxy_header_in_progress() {
    let mut server = TestServer::start_with(|c| {
        c.trusted_proxies = vec!["127.0.0.1".into()];
        c.proxy_protocol = true;
        c.handshake_timeout_ms = 600_000;
        c.shutdown_grace_ms = 200;
        c.close_timeout_ms = 200;
    })
    .await;
    let stats = server.running().app.stats.clone();
    let mut silent = TcpStream::connect(server.running().addr).await.unwrap();
    within(stats.pending_handshakes.wait_for(1)).await;
    within(server.server.take().unwrap().stop()).await.unwrap();
    let mut buf = Vec::new();
    let _ = within(silent.read_to_end(&mut buf)).await;
    assert!(buf.is_empty());
}
