//! The admin HTTP API: a real server with the API on port 0, a real HTTP client, and
//! WebSocket clients that see what the backend's calls do.

use crate::harness::*;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use std::net::SocketAddr;
use tidings::protocol::pb;
use tidings::protocol::pb::server_frame::Body as Rep;

pub const KEY: &str = "admin-key-0123456789abcdef0123456789abcdef";
const OLD_KEY: &str = "admin-key-previous-0123456789abcdef012345";

pub async fn admin_server() -> TestServer {
    TestServer::start_with(|c| {
        c.admin_listen = "127.0.0.1:0".into();
        c.admin_api_keys = vec![KEY.into(), OLD_KEY.into()];
    })
    .await
}

pub fn admin_addr(server: &TestServer) -> SocketAddr {
    server.running().admin_addr.expect("the admin API is on")
}

/// One HTTP/1.1 exchange: status, a header's value, and the body as JSON (`Null` if empty or
/// not JSON).
pub struct Reply {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Value,
    /// The body as it came.
    pub raw: bytes::Bytes,
    /// The body as text (lossy UTF-8).
    pub text: String,
}

impl Reply {
    /// The HTTP status and the error body's `code` (`None` when there is none).
    pub fn status_code(&self) -> (u16, Option<i64>) {
        (self.status, self.body["code"].as_i64())
    }
}

pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<Vec<u8>>,
) -> Reply {
    http_with(addr, method, path, key, &[], body).await
}

/// [`http`] with more request headers.
pub async fn http_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> Reply {
    within(async {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", addr.to_string());
        if let Some(k) = key {
            req = req.header("authorization", format!("Bearer {k}"));
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let req = req
            .body(Full::new(bytes::Bytes::from(body.unwrap_or_default())))
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        Reply {
            status,
            headers,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            raw: bytes.clone(),
            text: String::from_utf8_lossy(&bytes).into_owned(),
        }
    })
    .await
}

/// A keyed JSON call.
pub async fn api(server: &TestServer, method: &str, path: &str, body: Option<Value>) -> Reply {
    http(
        admin_addr(server),
        method,
        path,
        Some(KEY),
        body.map(|b| b.to_string().into_bytes()),
    )
    .await
}

/// The id of a new group of alice and bob, created through the admin API as alice.
pub async fn group_of_alice_and_bob(server: &TestServer) -> String {
    let c = ok(
        server,
        "POST",
        "/v1/conversations?as=alice",
        Some(serde_json::json!({"kind": "group", "members": ["bob"]})),
    )
    .await;
    c["id"].as_str().unwrap().to_owned()
}

/// A keyed call that must succeed; its body.
pub async fn ok(server: &TestServer, method: &str, path: &str, body: Option<Value>) -> Value {
    let r = api(server, method, path, body).await;
    assert!(
        r.status == 200 || r.status == 201,
        "{method} {path}: {} {}",
        r.status,
        r.body
    );
    r.body
}

#[tokio::test]
async fn without_a_valid_key_every_call_is_401_and_health_needs_none() {
    let server = admin_server().await;
    let addr = admin_addr(&server);
    let body = || Some(br#"{"user":"alice"}"#.to_vec());
    for key in [
        None,
        Some("wrong"),
        Some(&KEY[..KEY.len() - 1]),
        Some(&format!("{KEY}x")[..]),
    ] {
        let r = http(addr, "POST", "/v1/tokens", key, body()).await;
        assert_eq!(r.status, 401, "{key:?}");
        assert_eq!(
            r.body,
            json!({"code": 15, "message": "a valid API key is required (Authorization: Bearer <key>)"})
        );
        assert_eq!(r.headers["www-authenticate"], "Bearer");
    }
    // Not found and 401 look the same without a key: nothing about the API is revealed.
    let r = http(addr, "GET", "/v1/nothing-here", None, None).await;
    assert_eq!(r.status, 401);
    // Both configured keys work (one being rotated out).
    for key in [KEY, OLD_KEY] {
        let r = http(addr, "POST", "/v1/tokens", Some(key), body()).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let r = http(addr, "GET", "/livez", None, None).await;
    assert_eq!((r.status, r.body), (200, json!({"status": "ok"})));
    let r = http(addr, "GET", "/readyz", None, None).await;
    assert_eq!((r.status, r.body), (200, json!({"status": "ok"})));
    // The public listener answers them too.
    let public = server.running().addr;
    assert_eq!(http(public, "GET", "/livez", None, None).await.status, 200);
    assert_eq!(http(public, "GET", "/readyz", None, None).await.status, 200);
}

#[tokio::test]
async fn bad_requests_get_typed_errors() {
    let server = TestServer::start_with(|c| {
        c.admin_listen = "127.0.0.1:0".into();
        c.admin_api_keys = vec![KEY.into()];
        c.admin_max_body_bytes = 1000;
    })
    .await;
    let addr = admin_addr(&server);
    let call = |m: &'static str, p: &'static str, b: &'static [u8]| async move {
        http(addr, m, p, Some(KEY), Some(b.to_vec())).await
    };
    let r = call("POST", "/v1/tokens", b"{not json").await;
    assert_eq!(r.status_code(), (400, Some(2)));
    assert!(r.body["message"].as_str().unwrap().starts_with("bad JSON"));
    let r = call("POST", "/v1/tokens", br#"{"user":"a","extra":1}"#).await;
    assert_eq!(r.status, 400, "unknown fields are refused: {}", r.body);
    let r = call("POST", "/v1/tokens", br#"{"user":""}"#).await;
    assert_eq!(r.status_code(), (400, Some(2)));
    // Invisible characters and a leading combining mark, as at login.
    for body in [
        br#"{"user":"alice\ufe0f"}"#.as_slice(),
        br#"{"user":"\u3164"}"#,
        br#"{"user":"\u0301alice"}"#,
    ] {
        let r = call("POST", "/v1/tokens", body).await;
        assert_eq!(r.status_code(), (400, Some(2)), "{}", r.body);
    }
    let r = call("POST", "/v1/tokens", br#"{"user":"a","ttl_secs":2592001}"#).await;
    assert_eq!(r.status, 400);
    let big = format!(r#"{{"user":"{}"}}"#, "a".repeat(2000));
    let r = http(
        addr,
        "POST",
        "/v1/tokens",
        Some(KEY),
        Some(big.into_bytes()),
    )
    .await;
    assert_eq!(r.status_code(), (413, Some(3)));
    let r = call("GET", "/v1/nothing-here", b"").await;
    assert_eq!(r.status_code(), (404, Some(1)));
    // An acting user is required where only a user can act (a create), and must be a valid
    // user id wherever one is named.
    let r = call("POST", "/v1/conversations", br#"{"kind":"group"}"#).await;
    assert_eq!(r.status, 400);
    assert!(r.body["message"].as_str().unwrap().contains("?as="));
    let r = http(addr, "GET", "/v1/conversations/x?as=%0A", Some(KEY), None).await;
    assert_eq!(r.status, 400);
    let r = http(
        addr,
        "GET",
        "/v1/conversations/nope?as=alice",
        Some(KEY),
        None,
    )
    .await;
    assert_eq!(r.status_code(), (404, Some(5)));
    // Presence: at most 100 users.
    let many: Vec<String> = (0..101).map(|i| format!("u{i}")).collect();
    let path = format!("/v1/presence?users={}", many.join(","));
    let r = http(addr, "GET", &path, Some(KEY), None).await;
    assert_eq!(r.status_code(), (422, Some(3)));
}

#[tokio::test]
async fn a_backend_opens_a_customer_service_chat_and_speaks_as_the_agent() {
    let server = admin_server().await;
    let (mut visitor, _) = server.login("visitor-1").await;
    let conv = ok(
        &server,
        "POST",
        "/v1/conversations?as=agent-7",
        Some(
            json!({"kind": "temporary", "members": ["visitor-1"], "ttl_secs": 600, "unique": true}),
        ),
    )
    .await;
    let id = conv["id"].as_str().unwrap().to_owned();
    assert_eq!(conv["kind"], "temporary");
    assert_eq!(conv["member_count"], 2);
    assert!(conv["expires_at"].as_i64().unwrap() > server.clock_now());
    // The visitor hears of it.
    let e = event(&mut visitor).await;
    assert_eq!(e.conversation_id, id);
    // `unique`: the same pair gets the same conversation.
    let again = ok(
        &server,
        "POST",
        "/v1/conversations?as=agent-7",
        Some(json!({"kind": "temporary", "members": ["visitor-1"], "unique": true})),
    )
    .await;
    assert_eq!(again["id"], conv["id"]);

    let path = format!("/v1/conversations/{id}/messages?as=agent-7");
    let send = json!({"text": "Hello, how can I help?", "client_message_id": "m-1"});
    let ack = ok(&server, "POST", &path, Some(send.clone())).await;
    assert_eq!(
        (ack["seq"].as_u64(), ack["duplicate"].as_bool()),
        (Some(1), Some(false))
    );
    let m = message(&mut visitor).await;
    assert_eq!(
        (text(&m).as_str(), m.sender.as_str()),
        ("Hello, how can I help?", "agent-7")
    );
    // A retry is answered with the first send's ack, and nothing is sent twice.
    let dup = ok(&server, "POST", &path, Some(send)).await;
    assert_eq!(
        (dup["seq"].as_u64(), dup["duplicate"].as_bool()),
        (Some(1), Some(true))
    );
    assert_eq!(dup["message_id"], ack["message_id"]);
    // Bytes, as base64.
    let bin = ok(
        &server,
        "POST",
        &path,
        Some(json!({"content": "AAEC", "type": 7})),
    )
    .await;
    let m = message(&mut visitor).await;
    assert_eq!((m.content.as_ref(), m.r#type), (&[0u8, 1, 2][..], 7));
    assert_eq!(bin["seq"], 2);

    // The visitor answers; the backend reads the history as the agent.
    visitor.send_text(&id, "My order is late").await.unwrap();
    let page = ok(
        &server,
        "GET",
        &format!("{path}&limit=10&oldest_first=true"),
        None,
    )
    .await;
    let texts: Vec<_> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].clone())
        .collect();
    assert_eq!(
        texts,
        [
            json!("Hello, how can I help?"),
            json!("\u{0}\u{1}\u{2}"),
            json!("My order is late")
        ]
    );
    assert_eq!(page["messages"][1]["content"], "AAEC");
    assert_eq!(page["has_more"], false);
    // Someone outside the chat may not read it.
    let r = api(
        &server,
        "GET",
        &format!("/v1/conversations/{id}/messages?as=mallory"),
        None,
    )
    .await;
    assert_eq!(r.status_code(), (403, Some(6)));

    // The agent's list and unread counts, as the backend sees them.
    let list = ok(
        &server,
        "GET",
        "/v1/users/agent-7/conversations?limit=5",
        None,
    )
    .await;
    let entry = &list["entries"][0];
    assert_eq!(
        (entry["conversation_id"].as_str(), entry["kind"].as_str()),
        (Some(id.as_str()), Some("temporary"))
    );
    assert_eq!(entry["unread"], 1);
    assert_eq!(entry["last_message"]["text"], "My order is late");
    let unread = ok(&server, "GET", "/v1/users/agent-7/unread", None).await;
    assert_eq!(unread["entries"][0]["unread"], 1);

    // Recall and edit as the agent reach the visitor.
    let first = ack["message_id"].as_str().unwrap();
    let edited = ok(
        &server,
        "PATCH",
        &format!("/v1/conversations/{id}/messages/{first}?as=agent-7"),
        Some(json!({"text": "Hello! How can I help?"})),
    )
    .await;
    assert_eq!(edited["edit_count"], 1);
    match push(&mut visitor).await {
        Rep::MessageUpdated(u) => {
            assert_eq!(text(u.message.as_ref().unwrap()), "Hello! How can I help?")
        }
        other => panic!("expected an update, got {other:?}"),
    }
    let recalled = ok(
        &server,
        "POST",
        &format!("/v1/conversations/{id}/messages/{first}/recall?as=agent-7"),
        None,
    )
    .await;
    assert_eq!(recalled["recalled"], true);
    match push(&mut visitor).await {
        Rep::MessageUpdated(u) => assert!(u.message.unwrap().recalled),
        other => panic!("expected a recall, got {other:?}"),
    }
    // Only the sender may recall: the visitor's message is not the agent's.
    let theirs = page["messages"][2]["id"].as_str().unwrap();
    let r = api(
        &server,
        "POST",
        &format!("/v1/conversations/{id}/messages/{theirs}/recall?as=agent-7"),
        None,
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.body);

    // Deleted for everyone: the visitor is told.
    ok(
        &server,
        "DELETE",
        &format!("/v1/conversations/{id}?as=agent-7&purge=true"),
        None,
    )
    .await;
    let e = event(&mut visitor).await;
    assert_eq!(
        (e.kind, e.conversation_id.as_str()),
        (pb::ConversationEventKind::Deleted as i32, id.as_str())
    );
}

#[tokio::test]
async fn groups_are_created_changed_and_paged_as_their_members_would() {
    let server = admin_server().await;
    let g = ok(
        &server,
        "POST",
        "/v1/conversations?as=owner",
        Some(json!({"kind": "group", "name": "team", "members": ["a", "b"], "attributes": {"topic": "x"}})),
    )
    .await;
    let id = g["id"].as_str().unwrap();
    assert_eq!(
        (g["owner"].as_str(), g["member_count"].as_u64()),
        (Some("owner"), Some(3))
    );
    let got = ok(
        &server,
        "GET",
        &format!("/v1/conversations/{id}?as=a"),
        None,
    )
    .await;
    assert_eq!(got["attributes"], json!({"topic": "x"}));
    let added = ok(
        &server,
        "POST",
        &format!("/v1/conversations/{id}/members?as=owner"),
        Some(json!({"members": ["c", "d"]})),
    )
    .await;
    assert_eq!(added["member_count"], 5);
    // A member may not remove others (the owner may).
    let r = api(
        &server,
        "POST",
        &format!("/v1/conversations/{id}/members/remove?as=a"),
        Some(json!({"members": ["b"]})),
    )
    .await;
    assert_eq!(r.status_code(), (403, Some(7)));
    let removed = ok(
        &server,
        "POST",
        &format!("/v1/conversations/{id}/members/remove?as=owner"),
        Some(json!({"members": ["b"]})),
    )
    .await;
    assert_eq!(removed["member_count"], 4);
    let page1 = ok(
        &server,
        "GET",
        &format!("/v1/conversations/{id}/members?as=owner&limit=3"),
        None,
    )
    .await;
    assert_eq!(page1["members"], json!(["a", "c", "d"]));
    assert_eq!(page1["has_more"], true);
    let cursor = page1["next_cursor"].as_str().unwrap();
    let page2 = ok(
        &server,
        "GET",
        &format!("/v1/conversations/{id}/members?as=owner&limit=3&cursor={cursor}"),
        None,
    )
    .await;
    assert_eq!(page2["members"], json!(["owner"]));
    let updated = ok(
        &server,
        "PATCH",
        &format!("/v1/conversations/{id}?as=owner"),
        Some(json!({"name": "core team", "set_attributes": {"level": "2"}, "remove_attributes": ["topic"]})),
    )
    .await;
    assert_eq!(
        (updated["name"].as_str(), &updated["attributes"]),
        (Some("core team"), &json!({"level": "2"}))
    );
    // Direct conversations are idempotent on the pair.
    let d1 = ok(
        &server,
        "POST",
        "/v1/conversations?as=a",
        Some(json!({"kind": "direct", "members": ["c"]})),
    )
    .await;
    let d2 = ok(
        &server,
        "POST",
        "/v1/conversations?as=c",
        Some(json!({"kind": "direct", "members": ["a"]})),
    )
    .await;
    assert_eq!(d1["id"], d2["id"]);
    let r = api(
        &server,
        "POST",
        "/v1/conversations?as=a",
        Some(json!({"kind": "channel"})),
    )
    .await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn presence_disconnect_and_minted_tokens() {
    let server = admin_server().await;
    let (phone, _) = server.login_device("alice", "phone", 0).await;
    let (_laptop, _) = server.login_device("alice", "laptop", 0).await;
    let p = ok(&server, "GET", "/v1/presence?users=alice,bob", None).await;
    assert_eq!(
        p["users"],
        json!([{"user": "alice", "online": true, "sessions": 2}, {"user": "bob", "online": false, "sessions": 0}])
    );
    let r = ok(
        &server,
        "POST",
        "/v1/users/alice/disconnect",
        Some(json!({"device": "phone"})),
    )
    .await;
    assert_eq!(r["closed"], 1);
    assert_eq!(within(phone.closed()).await.code, Some(4012));
    // The laptop stays; the phone's session is gone from presence once it has closed.
    within(server.running().app.stats.sessions_closed.wait_for(1)).await;
    let p = ok(&server, "GET", "/v1/presence?users=alice", None).await;
    assert_eq!(p["users"][0]["sessions"], 1);
    let r = ok(&server, "POST", "/v1/users/nobody/disconnect", None).await;
    assert_eq!(r["closed"], 0);

    // A minted token logs in, for the lifetime asked.
    let t = ok(
        &server,
        "POST",
        "/v1/tokens",
        Some(json!({"user": "bob", "ttl_secs": 60})),
    )
    .await;
    assert_eq!(
        t["expires_at"].as_i64().unwrap(),
        (server.clock_now() / 1000 + 60) * 1000
    );
    let bob = tidings::client::Client::connect(&server.url())
        .await
        .unwrap();
    let ok_login = bob
        .login(t["token"].as_str().unwrap(), "", 0)
        .await
        .unwrap();
    assert_eq!(ok_login.user_id, "bob");
}

#[tokio::test]
async fn without_keys_the_api_is_not_served_and_short_keys_are_refused() {
    let server = TestServer::start_with(|c| c.admin_listen = "127.0.0.1:0".into()).await;
    assert!(server.running().admin_addr.is_none());
    let mut config = server.config.clone();
    config.admin_api_keys = vec!["short".into()];
    let e = config.validate().unwrap_err().to_string();
    assert!(
        e.contains("admin_api_keys") && e.contains("tidings secret"),
        "{e}"
    );
    // Long enough but guessable, by the rule of jwt_hs256_secret; next to a good key too.
    for weak in [
        "a".repeat(32),
        "change-me".repeat(4),
        "0123456789abcdefghijklmnopqrstuvwxyz".into(),
        "abababababababababababababababab".into(),
    ] {
        config.admin_api_keys = vec![KEY.into(), weak.clone()];
        let e = config.validate().expect_err(&weak).to_string();
        assert!(
            e.contains("admin_api_keys") && e.contains("too easy to guess"),
            "{weak}: {e}"
        );
        config.jwt_hs256_secret = Some(weak.clone());
        config.admin_api_keys = vec![KEY.into()];
        assert!(config.validate().is_err(), "the same rule as the secret");
        config.jwt_hs256_secret = server.config.jwt_hs256_secret.clone();
    }
    config.admin_api_keys = vec![KEY.into(), OLD_KEY.into()];
    config.validate().unwrap();
}

/// The samples of a Prometheus text exposition: `name{labels}` → value. Fails on a line that
/// is neither a comment nor a sample.
fn samples(text: &str) -> std::collections::HashMap<String, f64> {
    let mut out = std::collections::HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (key, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line:?}"));
        let name = key.split('{').next().unwrap();
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{line:?}"
        );
        let v: f64 = value.parse().unwrap_or_else(|_| panic!("{line:?}"));
        out.insert(key.to_owned(), v);
    }
    out
}

pub async fn metrics_of(server: &TestServer) -> std::collections::HashMap<String, f64> {
    let addr = admin_addr(server);
    let text = within(async {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let req = hyper::Request::get("/metrics")
            .header("host", addr.to_string())
            .body(Full::new(bytes::Bytes::new()))
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    })
    .await;
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(
        !text.contains("secret-user"),
        "no user id in metrics: {text}"
    );
    samples(&text)
}

#[tokio::test]
async fn metrics_are_prometheus_text_and_move_with_the_work() {
    let server = admin_server().await;
    let before = metrics_of(&server).await;
    assert_eq!(before["tidings_messages_committed_total"], 0.0);
    assert_eq!(before["tidings_sessions"], 0.0);
    assert!(before["tidings_process_resident_memory_bytes"] > 0.0);
    assert!(before["tidings_process_open_fds"] > 0.0);

    let (mut peer, _) = server.login("secret-user").await;
    let g = ok(
        &server,
        "POST",
        "/v1/conversations?as=sender",
        Some(json!({"kind": "group", "members": ["secret-user"]})),
    )
    .await;
    event(&mut peer).await;
    let path = format!(
        "/v1/conversations/{}/messages?as=sender",
        g["id"].as_str().unwrap()
    );
    for i in 0..3 {
        ok(
            &server,
            "POST",
            &path,
            Some(json!({"text": format!("m{i}")})),
        )
        .await;
        message(&mut peer).await;
    }
    let after = metrics_of(&server).await;
    assert_eq!(after["tidings_messages_committed_total"], 3.0);
    assert_eq!(after["tidings_send_ack_seconds_count"], 3.0);
    assert_eq!(after["tidings_sessions"], 1.0);
    assert_eq!(after["tidings_sessions_logged_in_total"], 1.0);
    // Three messages, each to the group's two members.
    assert_eq!(after["tidings_fanout_users_count"], 3.0);
    assert_eq!(after["tidings_fanout_users_sum"], 6.0);
    assert!(after["tidings_store_commits_total"] >= 4.0);
    assert!(after["tidings_store_commit_seconds_count"] >= 4.0);
    assert!(after[r#"tidings_send_ack_seconds_bucket{le="+Inf"}"#] == 3.0);
}

#[tokio::test]
async fn the_checked_in_openapi_document_is_what_the_code_generates() {
    let server = admin_server().await;
    let r = http(admin_addr(&server), "GET", "/openapi.json", None, None).await;
    assert_eq!(r.status, 200);
    let checked_in = include_str!("../../docs/openapi.json");
    assert!(
        tidings::admin::openapi::document() == checked_in
            && r.body == serde_json::from_str::<Value>(checked_in).unwrap(),
        "docs/openapi.json is stale: regenerate it with `cargo run -- openapi > docs/openapi.json`"
    );
    assert_eq!(r.body["openapi"], "3.1.0");
    // Every endpoint the admin tests call is in it.
    for path in [
        "/v1/tokens",
        "/v1/presence",
        "/v1/conversations",
        "/v1/conversations/{id}/messages",
        "/v1/users/{user}/disconnect",
    ] {
        assert!(r.body["paths"].get(path).is_some(), "{path}");
    }
}

/// The Grafana dashboard in deploy/ charts only metrics the server exports.
#[tokio::test]
async fn the_dashboard_charts_only_exported_metrics() {
    let server = admin_server().await;
    let exported = metrics_of(&server).await;
    let base = |sample: &str| sample.split('{').next().unwrap().to_owned();
    let names: std::collections::HashSet<String> = exported.keys().map(|k| base(k)).collect();
    let dashboard: Value =
        serde_json::from_str(include_str!("../../deploy/grafana-dashboard.json")).unwrap();
    let mut charted = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for (i, _) in expr.match_indices("tidings_") {
                let name: String = expr[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                assert!(names.contains(&name), "{name} is not exported");
                charted += 1;
            }
        }
    }
    assert!(charted >= 20, "{charted}");
}

/// A request whose body stalls is answered `408` within `handshake_timeout_ms` and its
/// connection closed, so stalled backends cannot hold the admin listener's connections.
#[tokio::test]
async fn a_stalled_request_body_is_answered_408_and_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start_with(|c| {
        c.admin_listen = "127.0.0.1:0".into();
        c.admin_api_keys = vec![KEY.into()];
        c.handshake_timeout_ms = 300;
    })
    .await;
    let mut s = tokio::net::TcpStream::connect(admin_addr(&server))
        .await
        .unwrap();
    let head = format!(
        "POST /v1/conversations?as=alice HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\n\
         content-type: application/json\r\ncontent-length: 100\r\n\r\n{{"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    // Everything the server sends until it closes the connection.
    let mut got = Vec::new();
    within(s.read_to_end(&mut got)).await.unwrap();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("handshake_timeout_ms"), "{text}");
}

/// Names and profile text set through the admin API follow the rule every front door does.
#[tokio::test]
async fn admin_names_and_profiles_refuse_control_bidi_and_format_characters() {
    let server = admin_server().await;
    let addr = admin_addr(&server);
    let call = |m: &'static str, p: String, b: Value| async move {
        http(addr, m, &p, Some(KEY), Some(b.to_string().into_bytes())).await
    };
    let ok = call(
        "POST",
        "/v1/conversations?as=alice".into(),
        serde_json::json!({"kind": "group", "members": ["bob"], "name": "plain"}),
    )
    .await;
    assert_eq!(ok.status, 201, "{}", ok.body);
    let id = ok.body["id"].as_str().unwrap().to_owned();
    for bad in crate::conversations::BAD_NAMES {
        for (m, path, body) in [
            (
                "POST",
                "/v1/conversations?as=alice".to_owned(),
                serde_json::json!({"kind": "group", "members": ["bob"], "name": bad}),
            ),
            (
                "PATCH",
                format!("/v1/conversations/{id}"),
                serde_json::json!({"name": bad}),
            ),
            (
                "PATCH",
                format!("/v1/conversations/{id}"),
                serde_json::json!({"set_attributes": {*bad: "v"}}),
            ),
            (
                "PATCH",
                "/v1/users/alice/profile".to_owned(),
                serde_json::json!({"display_name": bad}),
            ),
        ] {
            let shown = format!("{m} {path} {body}");
            let r = call(m, path, body).await;
            assert_eq!(r.status_code(), (400, Some(2)), "{shown}: {}", r.body);
        }
    }
    let r = http(
        addr,
        "GET",
        &format!("/v1/conversations/{id}"),
        Some(KEY),
        None,
    )
    .await;
    assert_eq!(r.body["name"], "plain", "{}", r.body);
}

/// A list setting in `--set` or an environment variable may be a TOML list: the keys in
/// `admin_api_keys=["k1", "k2"]` are `k1` and `k2`, not the text with its brackets and quotes.
/// Something in brackets that is no TOML list is refused with a message that says how to write it.
#[tokio::test]
async fn list_settings_take_a_toml_list_from_set_and_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let list = format!("admin_api_keys=[\"{KEY}\", \"{OLD_KEY}\"]");
    let server = Binary::serve(&dir.path().join("a"), &["admin_listen=127.0.0.1:0", &list]);
    let admin = server.admin_addr.expect("the admin API is served");
    for key in [KEY, OLD_KEY] {
        let r = http(
            admin,
            "GET",
            "/v1/users/alice/conversations",
            Some(key),
            None,
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    server.signal(libc::SIGTERM);
    assert!(server.wait().await.0.success());

    let env_list = format!("[\"{KEY}\"]");
    let server = Binary::serve_env(
        &dir.path().join("b"),
        &["admin_listen=127.0.0.1:0"],
        &[("TIDINGS_ADMIN_API_KEYS", &env_list)],
    );
    let admin = server.admin_addr.expect("the admin API is served");
    let r = http(
        admin,
        "GET",
        "/v1/users/alice/conversations",
        Some(KEY),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    server.signal(libc::SIGTERM);
    assert!(server.wait().await.0.success());

    // Brackets without a TOML list inside: refused, not taken as a key.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tidings"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("c"))
        .args(["--set", "admin_listen=127.0.0.1:0", "--set"])
        .arg(format!("admin_api_keys=[{KEY}]"))
        .env("TIDINGS_JWT_HS256_SECRET", SECRET)
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("not a TOML one"), "{err}");
    // The value may be a secret: the refusal does not repeat it.
    assert!(!err.contains(KEY), "{err}");
}
