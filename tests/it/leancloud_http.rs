//! The LeanCloud dialect's HTTP side: the router `/v1/route` that SDKs given only a `server`
//! base use to find the WebSocket, and CORS for browser apps on other origins. Plain HTTP/1.1
//! over a TCP socket, and LeanCloud's own JS SDK discovering the server through the router.

use crate::harness::*;
use crate::leancloud::{APP_ID, MASTER_KEY, leancloud_server, run_sdk};
use std::collections::HashMap;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One HTTP/1.1 answer: status, headers (names lower-case; repeated ones joined with ", ")
/// and body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    pub fn json(&self) -> serde_json::Value {
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{self:?}"
        );
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {self:?}"))
    }
}

/// `GET /1.1/rtm/notifications` for `client_id` from `start_ts`, signed with the session token
/// `st` of the app [`APP_ID`].
pub async fn notifications(addr: SocketAddr, client_id: &str, start_ts: i64, st: &str) -> Answer {
    let target = format!("/1.1/rtm/notifications?client_id={client_id}&start_ts={start_ts}");
    let headers = [("X-LC-Id", APP_ID), ("X-LC-IM-Session-Token", st)];
    request(addr, "GET", &target, &headers).await
}

/// Sends `method target` with `headers` (a `Host` of its own or the server's address) on a
/// fresh connection and reads the whole answer.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> Answer {
    let mut text = format!("{method} {target} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        text.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        text.push_str(&format!("{k}: {v}\r\n"));
    }
    text.push_str("\r\n");
    let raw = within(async {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(text.as_bytes()).await.expect("write");
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.expect("read");
        raw
    })
    .await;
    let raw = String::from_utf8(raw).expect("a UTF-8 answer");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a complete head");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a status line: {raw}"));
    let mut headers = HashMap::<String, String>::new();
    for line in lines {
        let (k, v) = line.split_once(':').expect("a header line");
        headers
            .entry(k.trim().to_ascii_lowercase())
            .and_modify(|old| *old = format!("{old}, {}", v.trim()))
            .or_insert_with(|| v.trim().to_owned());
    }
    Answer {
        status,
        headers,
        body: body.to_owned(),
    }
}

fn route_target(app_id: &str) -> String {
    format!("/v1/route?appId={app_id}&secure=true&_t=1767225600000")
}

fn route_answer(url: &str) -> serde_json::Value {
    serde_json::json!({"groupId": "g0", "server": url, "secondary": url, "ttl": 3600})
}

#[tokio::test]
async fn route_answers_ws_and_the_host_header_without_public_url() {
    let server = leancloud_server().await;
    let addr = server.running().addr;
    // As the SDK asks: secure=true, a cache-busting _t, no Origin (Node).
    let a = request(addr, "GET", &route_target(APP_ID), &[]).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.json(), route_answer(&format!("ws://{addr}/")));
    assert_eq!(a.header("access-control-allow-origin"), Some("*"));
    assert_eq!(a.header("cache-control"), Some("no-store"));
    // The Host the client used is what it gets back (the bind address may be unreachable),
    // secure=1 and no secure alike, and from a browser page the Origin is allowed by name.
    for (target, host) in [
        (
            format!("/v1/route?appId={APP_ID}&secure=1"),
            "chat.example.com",
        ),
        (format!("/v1/route?_t=5&appId={APP_ID}"), "[::1]:8080"),
    ] {
        let a = request(
            addr,
            "GET",
            &target,
            &[("Host", host), ("Origin", "https://app.example.com")],
        )
        .await;
        assert_eq!(a.status, 200, "{a:?}");
        assert_eq!(a.json(), route_answer(&format!("ws://{host}/")));
        assert_eq!(
            a.header("access-control-allow-origin"),
            Some("https://app.example.com")
        );
        assert_eq!(a.header("vary"), Some("Origin"));
    }
    // A Host that is not a host is not echoed into the URL.
    let a = request(addr, "GET", &route_target(APP_ID), &[("Host", "a/b@c")]).await;
    assert_eq!(a.status, 400, "{a:?}");
    assert!(a.json()["error"].as_str().unwrap().contains("public_url"));
}

#[tokio::test]
async fn route_answers_public_url_verbatim_with_a_root_path_when_it_has_none() {
    for (public, answered) in [
        ("wss://chat.example.com", "wss://chat.example.com/"),
        (
            "wss://chat.example.com:8443/ws",
            "wss://chat.example.com:8443/ws",
        ),
        ("ws://10.0.0.7:7400/", "ws://10.0.0.7:7400/"),
    ] {
        let server = TestServer::start_with(|c| {
            c.leancloud_app_id = Some(APP_ID.into());
            c.leancloud_master_key = Some(MASTER_KEY.into());
            c.public_url = Some(public.into());
        })
        .await;
        let addr = server.running().addr;
        // Whatever the Host and secure say.
        for target in [
            route_target(APP_ID),
            format!("/v1/route?appId={APP_ID}&secure=false"),
        ] {
            let a = request(addr, "GET", &target, &[("Host", "internal:1")]).await;
            assert_eq!(a.status, 200, "{a:?}");
            assert_eq!(a.json(), route_answer(answered), "{public}");
        }
    }
}

#[tokio::test]
async fn route_refuses_another_app_id_with_404_app_not_available() {
    let server = leancloud_server().await;
    let addr = server.running().addr;
    let other = format!("{APP_ID}-other");
    for target in [
        route_target(&other),
        route_target(""),
        "/v1/route?secure=true".to_owned(),
        "/v1/route".to_owned(),
        // Percent-decoding happens before the comparison, not instead of it.
        route_target("tidings%2Dtest%2Dapp%2"),
    ] {
        let a = request(
            addr,
            "GET",
            &target,
            &[("Origin", "https://app.example.com")],
        )
        .await;
        assert_eq!(a.status, 404, "{target}: {a:?}");
        assert_eq!(
            a.json(),
            serde_json::json!({"code": 4100, "error": "APP_NOT_AVAILABLE"})
        );
        // A browser app can read why.
        assert_eq!(
            a.header("access-control-allow-origin"),
            Some("https://app.example.com")
        );
    }
    // The same id percent-encoded is the same id.
    let a = request(addr, "GET", &route_target("tidings%2Dtest-app"), &[]).await;
    assert_eq!(a.status, 200, "{a:?}");
    // Only GET (and preflights).
    let a = request(
        addr,
        "POST",
        &route_target(APP_ID),
        &[("Content-Length", "0")],
    )
    .await;
    assert_eq!(a.status, 405, "{a:?}");
    assert_eq!(a.header("allow"), Some("GET, OPTIONS"));
}

#[tokio::test]
async fn preflights_are_allowed_with_the_leancloud_headers() {
    let server = leancloud_server().await;
    let addr = server.running().addr;
    let asked = "x-lc-id,x-lc-key,x-lc-im-session-token,x-lc-ua,content-type";
    let a = request(
        addr,
        "OPTIONS",
        &route_target(APP_ID),
        &[
            ("Origin", "https://app.example.com"),
            ("Access-Control-Request-Method", "GET"),
            ("Access-Control-Request-Headers", asked),
        ],
    )
    .await;
    assert_eq!(a.status, 204, "{a:?}");
    assert_eq!(a.body, "");
    assert_eq!(
        a.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(
        a.header("access-control-allow-methods"),
        Some("GET, POST, OPTIONS")
    );
    assert_eq!(a.header("access-control-allow-headers"), Some(asked));
    assert_eq!(a.header("access-control-max-age"), Some("86400"));
    assert_eq!(
        a.header("vary"),
        Some("Origin, Access-Control-Request-Headers")
    );
    // Without Origin or a header list: any origin, LeanCloud's headers.
    let a = request(addr, "OPTIONS", "/v1/route", &[]).await;
    assert_eq!(a.status, 204, "{a:?}");
    assert_eq!(a.header("access-control-allow-origin"), Some("*"));
    assert_eq!(
        a.header("access-control-allow-headers"),
        Some("X-LC-Id, X-LC-Key, X-LC-IM-Session-Token, X-LC-UA, Content-Type")
    );
    // Other paths are not LeanCloud endpoints.
    let a = request(addr, "OPTIONS", "/healthz", &[("Origin", "https://x")]).await;
    assert_eq!(a.status, 404, "{a:?}");
    assert_eq!(a.header("access-control-allow-origin"), None);
}

#[tokio::test]
async fn route_is_an_unknown_path_when_the_dialect_is_off() {
    let server =
        TestServer::start_with(|c| c.public_url = Some("wss://chat.example.com".into())).await;
    let addr = server.running().addr;
    for method in ["GET", "OPTIONS"] {
        let a = request(
            addr,
            method,
            &route_target(APP_ID),
            &[("Origin", "https://x")],
        )
        .await;
        assert_eq!(a.status, 404, "{method}: {a:?}");
        assert_eq!(a.body, "not found\n");
        assert_eq!(a.header("access-control-allow-origin"), None);
    }
    // The rest of the listener is as before.
    let a = request(addr, "GET", "/healthz", &[]).await;
    assert_eq!(a.status, 200, "{a:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leancloud_sdk_finds_the_websocket_through_v1_route() {
    let server = leancloud_server().await;
    let out = run_sdk(&server, "route.mjs", "binary").await;
    assert!(out.contains("ok - the SDK asked /v1/route"), "{out}");
}

#[tokio::test]
async fn member_roles_need_the_clients_session_token() {
    let server = leancloud_server().await;
    let addr = server.running().addr;
    let target = "/1.1/classes/_ConversationMemberInfo?where=%7B%22cid%22%3A%220000000000000001%22%7D&client_id=alice";
    let r = request(addr, "GET", target, &[]).await;
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(r.json()["code"], 4103);
    let r = request(addr, "GET", target, &[("X-LC-IM-Session-Token", "forged")]).await;
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(r.json()["code"], 4112);
    let r = request(
        addr,
        "GET",
        "/1.1/classes/_ConversationMemberInfo",
        &[("X-LC-Id", "another-app")],
    )
    .await;
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(r.json()["code"], 4100);
}
