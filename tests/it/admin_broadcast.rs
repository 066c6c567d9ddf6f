//! Broadcasts of a system message to many users and conversations, idempotent by their id,
//! and creates made with an `Idempotency-Key`.

use crate::admin::{KEY, Reply, admin_addr, admin_server, api, http_with, ok};
use crate::harness::*;
use serde_json::{Value, json};
use tidings::protocol::pb::ConversationEventKind as Ev;

#[tokio::test]
async fn a_broadcast_reaches_each_user_and_conversation_once() {
    let server = admin_server().await;
    let (mut alice, _) = server.login("alice").await;
    let (mut bob, _) = server.login("bob").await;
    let (mut carol, _) = server.login("carol").await;
    let g = ok(
        &server,
        "POST",
        "/v1/conversations?as=dave",
        Some(json!({"kind": "group", "members": ["carol"]})),
    )
    .await;
    let g = g["id"].as_str().unwrap().to_owned();
    event(&mut carol).await;

    let body = |users: Value| {
        json!({
            "broadcast_id": "maintenance-1",
            "users": users,
            "conversations": [g, "0000000000000999"],
            "text": "Maintenance at 2am",
        })
    };
    let r = ok(
        &server,
        "POST",
        "/v1/broadcasts",
        Some(body(json!(["alice", "bob", "system"]))),
    )
    .await;
    assert_eq!(
        (r["sent"].as_u64(), r["duplicates"].as_u64()),
        (Some(3), Some(0)),
        "{r}"
    );
    let failed: Vec<(&str, i64)> = r["failed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["target"].as_str().unwrap(), f["code"].as_i64().unwrap()))
        .collect();
    assert_eq!(
        failed,
        [("conversation:0000000000000999", 5), ("user:system", 2)]
    );
    // Each user hears of their conversation with the system, then the message.
    for c in [&mut alice, &mut bob] {
        let e = event(c).await;
        assert_eq!(e.kind, Ev::Created as i32);
        let m = message(c).await;
        assert_eq!(
            (m.sender.as_str(), text(&m).as_str()),
            ("system", "Maintenance at 2am")
        );
        assert_eq!(m.conversation_id, e.conversation_id);
    }
    let m = message(&mut carol).await;
    assert_eq!(
        (m.sender.as_str(), m.conversation_id.as_str()),
        ("system", g.as_str())
    );
    let list = ok(&server, "GET", "/v1/users/alice/conversations", None).await;
    assert_eq!(list["entries"][0]["peer"], "system");

    // Sent again, with one more user: only the new one gets it.
    let r = ok(
        &server,
        "POST",
        "/v1/broadcasts",
        Some(body(json!(["alice", "bob", "erin"]))),
    )
    .await;
    assert_eq!(
        (r["sent"].as_u64(), r["duplicates"].as_u64()),
        (Some(1), Some(3)),
        "{r}"
    );
    assert_no_push(&mut alice).await;
    assert_no_push(&mut carol).await;
    let (_, erin) = server.login("erin").await;
    assert_eq!(erin.summary.entries.len(), 1);
    assert_eq!(erin.summary.entries[0].unread, 1);

    // Bad requests.
    let r = api(
        &server,
        "POST",
        "/v1/broadcasts",
        Some(json!({"broadcast_id": "", "users": ["a"], "text": "x"})),
    )
    .await;
    assert_eq!(r.status, 400);
    let r = api(
        &server,
        "POST",
        "/v1/broadcasts",
        Some(json!({"broadcast_id": "b", "text": "x"})),
    )
    .await;
    assert_eq!(r.status, 400);
    let small = TestServer::start_with(|c| {
        c.admin_listen = "127.0.0.1:0".into();
        c.admin_api_keys = vec![KEY.into()];
        c.broadcast_max_targets = 2;
    })
    .await;
    let r = api(
        &small,
        "POST",
        "/v1/broadcasts",
        Some(json!({"broadcast_id": "b", "users": ["a", "b", "c"], "text": "x"})),
    )
    .await;
    assert_eq!(r.status_code(), (422, Some(3)));
}

async fn keyed_create(server: &TestServer, key: &str, body: Value) -> Reply {
    http_with(
        admin_addr(server),
        "POST",
        "/v1/conversations?as=alice",
        Some(KEY),
        &[("idempotency-key", key)],
        Some(body.to_string().into_bytes()),
    )
    .await
}

#[tokio::test]
async fn a_create_with_an_idempotency_key_happens_once() {
    let mut server = TestServer::start_with(|c| {
        c.admin_listen = "127.0.0.1:0".into();
        c.admin_api_keys = vec![KEY.into()];
        c.idempotency_ttl_secs = 60;
    })
    .await;
    let (mut bob, _) = server.login("bob").await;
    let group = json!({"kind": "group", "name": "team", "members": ["bob"]});
    let first = keyed_create(&server, "k-1", group.clone()).await;
    assert_eq!(first.status, 201, "{}", first.body);
    event(&mut bob).await;
    let again = keyed_create(&server, "k-1", group.clone()).await;
    assert_eq!((again.status, &again.body["id"]), (201, &first.body["id"]));
    assert_no_push(&mut bob).await;
    // The key is the request's: another request under it is refused.
    let other = keyed_create(
        &server,
        "k-1",
        json!({"kind": "group", "members": ["carol"]}),
    )
    .await;
    assert_eq!(
        (other.status, other.body["code"].as_i64()),
        (400, Some(2)),
        "{}",
        other.body
    );
    // Another key is another create.
    let second = keyed_create(&server, "k-2", group.clone()).await;
    assert_ne!(second.body["id"], first.body["id"]);
    event(&mut bob).await;
    // Kept across a restart, for idempotency_ttl_secs.
    server.restart().await;
    let again = keyed_create(&server, "k-1", group.clone()).await;
    assert_eq!((again.status, &again.body["id"]), (201, &first.body["id"]));
    server.clock.advance(60_000);
    let later = keyed_create(&server, "k-1", group.clone()).await;
    assert_eq!(later.status, 201);
    assert_ne!(later.body["id"], first.body["id"]);
    // Temporary and direct creates take one too.
    let t = json!({"kind": "temporary", "members": ["bob"]});
    let a = keyed_create(&server, "t-1", t.clone()).await;
    let b = keyed_create(&server, "t-1", t).await;
    assert_eq!(a.body["id"], b.body["id"]);
    let d = keyed_create(
        &server,
        "d-1",
        json!({"kind": "direct", "members": ["bob"]}),
    )
    .await;
    assert_eq!(d.status, 201);
    // Keys are printable ASCII, at most 255 bytes.
    let long = "k".repeat(256);
    let r = keyed_create(&server, &long, group).await;
    assert_eq!(r.status, 400);
}
