//! The `Origin` check before a WebSocket upgrade: no `Origin` (apps, servers) and the server's own
//! host are allowed, other origins only when `allowed_origins` names them; the rest get 403,
//! whichever dialect they ask for.

use crate::harness::*;
use crate::leancloud::{APP_ID, MASTER_KEY};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// Upgrades to `server` offering `subprotocol`, with these `Origin` and `Host` headers (`Host`
/// defaults to the server's address); the HTTP status the server answered.
async fn upgrade_status(
    server: &TestServer,
    subprotocol: &str,
    origin: Option<&str>,
    host: Option<&str>,
) -> u16 {
    let mut req = server.url().into_client_request().unwrap();
    let h = req.headers_mut();
    h.insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_str(subprotocol).unwrap(),
    );
    if let Some(o) = origin {
        h.insert("Origin", HeaderValue::from_str(o).unwrap());
    }
    if let Some(host) = host {
        h.insert("Host", HeaderValue::from_str(host).unwrap());
    }
    match within(tokio_tungstenite::connect_async(req)).await {
        Ok((_, resp)) => resp.status().as_u16(),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("upgrade failed without an HTTP answer: {e}"),
    }
}

async fn native(server: &TestServer, origin: Option<&str>) -> u16 {
    upgrade_status(server, tidings::protocol::SUBPROTOCOL, origin, None).await
}

#[tokio::test]
async fn by_default_only_clients_without_origin_and_pages_of_the_same_host_upgrade() {
    let server = TestServer::start().await;
    let port = server.running().addr.port();
    // Apps and servers send no Origin.
    assert_eq!(native(&server, None).await, 101);
    // A page served by this host and port.
    assert_eq!(
        native(&server, Some(&format!("http://127.0.0.1:{port}"))).await,
        101
    );
    // Anyone else.
    assert_eq!(native(&server, Some("https://evil.example")).await, 403);
    assert_eq!(native(&server, Some("null")).await, 403);
    // Same host, another port: another origin.
    assert_eq!(
        native(&server, Some(&format!("http://127.0.0.1:{}", port + 1))).await,
        403
    );
    // Not an origin at all.
    assert_eq!(native(&server, Some("evil.example")).await, 403);
    // Nothing was counted as a connection.
    assert_eq!(server.running().app.stats.connections_open.get(), 0);
    let c = server.client("alice").await;
    within(c.ping()).await.unwrap();
}

/// Upgrades with every `Origin` and `Host` value given (each header repeated when given twice).
async fn upgrade_with(server: &TestServer, origins: &[&str], hosts: &[&str]) -> u16 {
    let mut req = server.url().into_client_request().unwrap();
    let h = req.headers_mut();
    h.insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(tidings::protocol::SUBPROTOCOL),
    );
    if !hosts.is_empty() {
        h.remove("Host");
    }
    for (name, values) in [("Origin", origins), ("Host", hosts)] {
        for v in values {
            h.append(name, HeaderValue::from_str(v).unwrap());
        }
    }
    match within(tokio_tungstenite::connect_async(req)).await {
        Ok((_, resp)) => resp.status().as_u16(),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("upgrade failed without an HTTP answer: {e}"),
    }
}

/// The status of an upgrade request written by hand with these header lines (each ending in
/// CRLF) besides the WebSocket ones.
async fn raw_upgrade(server: &TestServer, headers: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = within(tokio::net::TcpStream::connect(server.running().addr))
        .await
        .unwrap();
    let req = format!(
        "GET /ws HTTP/1.1\r\n{headers}Connection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Protocol: {}\r\n\r\n",
        tidings::protocol::SUBPROTOCOL
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = [0u8; 12];
    within(s.read_exact(&mut head)).await.unwrap();
    let line = String::from_utf8_lossy(&head).into_owned();
    line[9..12].parse().unwrap_or_else(|_| panic!("{line:?}"))
}

#[tokio::test]
async fn same_host_counts_only_for_the_servers_own_names_not_a_rebound_one() {
    // DNS rebinding: evil.example now resolves to this server, so its page's requests carry
    // its own name in both headers.
    let server = TestServer::start().await;
    let port = server.running().addr.port();
    let evil = format!("evil.example:{port}");
    let evil_page = format!("http://{evil}");
    assert_eq!(upgrade_with(&server, &[&evil_page], &[&evil]).await, 403);
    // IP literals and localhost are ours.
    let local = format!("localhost:{port}");
    assert_eq!(
        upgrade_with(&server, &[&format!("http://{local}")], &[&local]).await,
        101
    );
    let v4 = format!("127.0.0.1:{port}");
    assert_eq!(
        upgrade_with(&server, &[&format!("http://{v4}")], &[&v4]).await,
        101
    );
    // So is public_url's host: a page served through the same name, also behind a TLS proxy
    // (Host without a port, https origin on 443).
    let server =
        TestServer::start_with(|c| c.public_url = Some("wss://chat.example.com".into())).await;
    assert_eq!(
        upgrade_with(
            &server,
            &["https://chat.example.com"],
            &["chat.example.com"]
        )
        .await,
        101
    );
    assert_eq!(
        upgrade_with(
            &server,
            &["http://chat.example.com"],
            &["chat.example.com:8443"]
        )
        .await,
        403
    );
    assert_eq!(
        upgrade_with(&server, &["https://evil.example"], &["evil.example"]).await,
        403
    );
    // A rebound name that allowed_origins names is allowed, as any listed origin is.
    let server =
        TestServer::start_with(|c| c.allowed_origins = vec!["https://evil.example".into()]).await;
    assert_eq!(
        upgrade_with(&server, &["https://evil.example"], &["evil.example"]).await,
        101
    );
}

#[tokio::test]
async fn two_origin_or_two_host_headers_are_refused() {
    let server = TestServer::start_with(|c| {
        c.allowed_origins = vec!["https://app.example.org".into()];
        c.public_url = Some("wss://chat.example.com".into());
    })
    .await;
    let ok = "https://app.example.org";
    assert_eq!(upgrade_with(&server, &[ok], &[]).await, 101);
    // Whichever of the two a check believed, one of them is allowed.
    assert_eq!(
        upgrade_with(&server, &[ok, "https://evil.example"], &[]).await,
        403
    );
    assert_eq!(
        upgrade_with(&server, &["https://evil.example", ok], &[]).await,
        403
    );
    assert_eq!(upgrade_with(&server, &[ok, ok], &[]).await, 403);
    // Two Host headers (written by hand: the WebSocket client sends one).
    let same = "https://chat.example.com";
    let two_hosts = format!("Host: chat.example.com\r\nHost: evil.example\r\nOrigin: {same}\r\n");
    assert_eq!(raw_upgrade(&server, &two_hosts).await, 403);
    let one_host = format!("Host: chat.example.com\r\nOrigin: {same}\r\n");
    assert_eq!(raw_upgrade(&server, &one_host).await, 101);
    // Without an Origin (not a browser) the rule has nothing to check.
    assert_eq!(upgrade_with(&server, &[], &[]).await, 101);
}

#[tokio::test]
async fn allowed_origins_names_exact_origins_and_subdomain_patterns_with_their_scheme() {
    let server = TestServer::start_with(|c| {
        c.allowed_origins = vec![
            "https://app.example.org".into(),
            "https://*.example.com".into(),
            "http://localhost:3000".into(),
        ]
    })
    .await;
    for (origin, status) in [
        ("https://app.example.org", 101),
        ("https://app.example.org:443", 101),
        ("https://app.example.org:8443", 403),
        ("http://app.example.org", 403),
        ("https://other.example.org", 403),
        ("https://a.example.com", 101),
        ("https://a.b.example.com", 101),
        ("https://example.com", 403),
        ("http://a.example.com", 403),
        ("https://a.example.com.evil.io", 403),
        ("https://evilexample.com", 403),
        ("http://localhost:3000", 101),
        ("http://localhost:3001", 403),
        ("null", 403),
    ] {
        assert_eq!(native(&server, Some(origin)).await, status, "{origin}");
    }
    assert_eq!(native(&server, None).await, 101);
}

#[tokio::test]
async fn null_and_any_origin_only_when_listed() {
    let server = TestServer::start_with(|c| c.allowed_origins = vec!["null".into()]).await;
    assert_eq!(native(&server, Some("null")).await, 101);
    assert_eq!(native(&server, Some("https://evil.example")).await, 403);
    let server = TestServer::start_with(|c| c.allowed_origins = vec!["*".into()]).await;
    assert_eq!(native(&server, Some("https://evil.example")).await, 101);
    assert_eq!(native(&server, Some("null")).await, 101);
}

#[tokio::test]
async fn leancloud_upgrades_from_other_origins_get_403_too() {
    let server = TestServer::start_with(|c| {
        c.leancloud_app_id = Some(APP_ID.into());
        c.leancloud_master_key = Some(MASTER_KEY.into());
        c.allowed_origins = vec!["https://app.example.com".into()];
    })
    .await;
    let lc = |origin| upgrade_status(&server, "lc.protobuf2.3", origin, None);
    assert_eq!(lc(None).await, 101);
    assert_eq!(lc(Some("https://app.example.com")).await, 101);
    assert_eq!(lc(Some("https://evil.example")).await, 403);
    assert_eq!(lc(Some("null")).await, 403);
}

#[tokio::test]
async fn a_malformed_allowed_origins_entry_stops_the_server_from_starting() {
    for bad in ["example.com", "*.example.com", "https://app.example.com/"] {
        let config = tidings::config::Config {
            listen: "127.0.0.1:0".into(),
            jwt_hs256_secret: Some(SECRET.into()),
            allowed_origins: vec![bad.into()],
            ..Default::default()
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("allowed_origins"), "{bad}: {err}");
    }
    // From the environment or --set: one string, split at commas.
    let loaded = tidings::config::Config::load(
        None,
        vec![(
            "TIDINGS_ALLOWED_ORIGINS".to_owned(),
            "https://a.example.com, https://*.example.org".to_owned(),
        )],
        &[],
    )
    .unwrap();
    assert_eq!(
        loaded.config.allowed_origins,
        ["https://a.example.com", "https://*.example.org"]
    );
}
