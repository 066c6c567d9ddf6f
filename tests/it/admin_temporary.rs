//! Customer-service handling of temporary conversations through the admin API: the backend
//! moves members in and out within the 10-member limit, keeps status, assignee and tags in
//! the attributes, moves the deadline, ends a chat, and lists the open ones.

use crate::admin::{admin_server, api, ok};
use crate::harness::*;
use serde_json::{Value, json};
use tidings::protocol::pb::ConversationEventKind as Ev;

async fn open_chat(server: &TestServer, agent: &str, visitor: &str) -> String {
    let c = ok(
        server,
        "POST",
        &format!("/v1/conversations?as={agent}"),
        Some(json!({"kind": "temporary", "members": [visitor], "ttl_secs": 3600, "unique": true})),
    )
    .await;
    c["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn the_backend_transfers_a_visitor_and_keeps_the_chats_attributes() {
    let server = admin_server().await;
    let (mut visitor, _) = server.login("visitor").await;
    let (mut agent1, _) = server.login("agent-1").await;
    let (mut agent2, _) = server.login("agent-2").await;
    let id = open_chat(&server, "agent-1", "visitor").await;
    event(&mut visitor).await;
    event(&mut agent1).await;

    // Clients may not change who is in a temporary conversation; the backend may.
    let r = api(
        &server,
        "POST",
        &format!("/v1/conversations/{id}/members?as=agent-1"),
        Some(json!({"members": ["agent-2"]})),
    )
    .await;
    assert_eq!(r.status_code(), (409, Some(8)), "{}", r.body);
    let c = ok(
        &server,
        "POST",
        &format!("/v1/conversations/{id}/members"),
        Some(json!({"members": ["agent-2"]})),
    )
    .await;
    assert_eq!(c["member_count"], 3);
    assert_eq!(c["members"], json!(["agent-1", "agent-2", "visitor"]));
    let e = event(&mut agent2).await;
    assert_eq!(
        (e.kind, e.by.as_str(), e.members.clone()),
        (
            Ev::MembersAdded as i32,
            "system",
            vec!["agent-2".to_owned()]
        )
    );
    let e = event(&mut visitor).await;
    assert_eq!(e.kind, Ev::MembersAdded as i32);
    event(&mut agent1).await;
    // The new member reads the chat as the others do, deadline included.
    let (_, welcome) = server.login("agent-2").await;
    assert_eq!(
        welcome.unread(&id).map(|e| e.expires_at),
        Some(c["expires_at"].as_i64().unwrap())
    );

    // The first agent hands over and leaves.
    let c = ok(
        &server,
        "POST",
        &format!("/v1/conversations/{id}/members/remove"),
        Some(json!({"members": ["agent-1"]})),
    )
    .await;
    assert_eq!(c["members"], json!(["agent-2", "visitor"]));
    let e = event(&mut agent1).await;
    assert_eq!(e.kind, Ev::MembersRemoved as i32);
    let e = event(&mut visitor).await;
    assert_eq!(
        (e.kind, e.members.clone()),
        (Ev::MembersRemoved as i32, vec!["agent-1".to_owned()])
    );
    let r = api(
        &server,
        "GET",
        &format!("/v1/conversations/{id}?as=agent-1"),
        None,
    )
    .await;
    assert_eq!(r.status_code(), (403, Some(6)));
    // `unique` follows the members: the new pair's chat is this one.
    let again = ok(
        &server,
        "POST",
        "/v1/conversations?as=agent-2",
        Some(json!({"kind": "temporary", "members": ["visitor"], "unique": true})),
    )
    .await;
    assert_eq!(again["id"].as_str(), Some(id.as_str()));

    // At most max_temporary_members (10), and never empty.
    let many: Vec<String> = (0..9).map(|i| format!("supervisor-{i}")).collect();
    let r = api(
        &server,
        "POST",
        &format!("/v1/conversations/{id}/members"),
        Some(json!({ "members": many })),
    )
    .await;
    assert_eq!(r.status_code(), (422, Some(3)), "{}", r.body);
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("max_temporary_members is 10")
    );
    let r = api(
        &server,
        "POST",
        &format!("/v1/conversations/{id}/members/remove"),
        Some(json!({"members": ["agent-2", "visitor"]})),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);

    // Status, assignee and tags are the chat's attributes, set by the backend only.
    let r = api(
        &server,
        "PATCH",
        &format!("/v1/conversations/{id}?as=visitor"),
        Some(json!({"set_attributes": {"status": "solved"}})),
    )
    .await;
    assert_eq!(r.status_code(), (409, Some(8)));
    let c = ok(
        &server,
        "PATCH",
        &format!("/v1/conversations/{id}"),
        Some(json!({"set_attributes": {"status": "waiting", "assignee": "agent-2", "tags": "billing,urgent"}})),
    )
    .await;
    assert_eq!(c["attributes"]["assignee"], "agent-2");
    let e = event(&mut visitor).await;
    assert_eq!(e.kind, Ev::Updated as i32);
    assert_eq!(
        e.conversation
            .unwrap()
            .attributes
            .get("status")
            .map(String::as_str),
        Some("waiting")
    );
}

#[tokio::test]
async fn the_backend_moves_a_chats_deadline_and_ends_it() {
    let server = admin_server().await;
    let (mut visitor, _) = server.login("visitor").await;
    let id = open_chat(&server, "agent", "visitor").await;
    event(&mut visitor).await;
    let now = server.clock_now();

    // Only the backend moves a deadline, within temporary_ttl_max_secs.
    let r = api(
        &server,
        "PATCH",
        &format!("/v1/conversations/{id}?as=agent"),
        Some(json!({"ttl_secs": 60})),
    )
    .await;
    assert_eq!(r.status_code(), (403, Some(7)));
    let r = api(
        &server,
        "PATCH",
        &format!("/v1/conversations/{id}"),
        Some(json!({"ttl_secs": 2_592_001})),
    )
    .await;
    assert_eq!(r.status, 400);
    // Longer: the hour becomes two, in the conversation and in every member's list.
    let c = ok(
        &server,
        "PATCH",
        &format!("/v1/conversations/{id}"),
        Some(json!({"ttl_secs": 7200})),
    )
    .await;
    assert_eq!(c["expires_at"].as_i64(), Some(now + 7_200_000));
    let e = event(&mut visitor).await;
    assert_eq!(
        (e.kind, e.conversation.unwrap().expires_at),
        (Ev::Updated as i32, now + 7_200_000)
    );
    let list = ok(&server, "GET", "/v1/users/visitor/conversations", None).await;
    assert_eq!(
        list["entries"][0]["expires_at"].as_i64(),
        Some(now + 7_200_000)
    );
    // Past the first deadline it lives on.
    server.clock.advance(3_700_000);
    ok(
        &server,
        "POST",
        &format!("/v1/conversations/{id}/messages?as=agent"),
        Some(json!({"text": "still here"})),
    )
    .await;
    message(&mut visitor).await;
    // Shorter: a minute from now, and the sweep ends it then.
    ok(
        &server,
        "PATCH",
        &format!("/v1/conversations/{id}"),
        Some(json!({"ttl_secs": 60})),
    )
    .await;
    event(&mut visitor).await;
    server.clock.advance(60_000);
    within(server.running().app.stats.conversations_expired.wait_for(1)).await;
    let e = event(&mut visitor).await;
    assert_eq!((e.kind, e.by.as_str()), (Ev::Expired as i32, ""));

    // Ending one now: the members are told who ended it, and it is gone.
    let other = open_chat(&server, "agent", "visitor").await;
    assert_ne!(other, id);
    event(&mut visitor).await;
    let r = api(
        &server,
        "POST",
        &format!("/v1/conversations/{other}/end?as=agent"),
        None,
    )
    .await;
    assert_eq!(r.status_code(), (403, Some(7)));
    ok(
        &server,
        "POST",
        &format!("/v1/conversations/{other}/end"),
        None,
    )
    .await;
    let e = event(&mut visitor).await;
    assert_eq!(
        (e.kind, e.by.as_str(), e.conversation_id.as_str()),
        (Ev::Expired as i32, "system", other.as_str())
    );
    let r = api(&server, "GET", &format!("/v1/conversations/{other}"), None).await;
    assert_eq!(r.status_code(), (410, Some(12)));
    // A group does not end.
    let g = ok(
        &server,
        "POST",
        "/v1/conversations?as=agent",
        Some(json!({"kind": "group", "members": ["visitor"]})),
    )
    .await;
    let r = api(
        &server,
        "POST",
        &format!("/v1/conversations/{}/end", g["id"].as_str().unwrap()),
        None,
    )
    .await;
    assert_eq!(r.status_code(), (409, Some(8)));
}

fn ids(page: &Value) -> Vec<String> {
    page["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["conversation"]["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn the_backend_lists_open_chats_newest_activity_first() {
    let server = admin_server().await;
    let a = open_chat(&server, "agent-1", "visitor-a").await;
    server.clock.advance(1000);
    let b = open_chat(&server, "agent-1", "visitor-b").await;
    server.clock.advance(1000);
    let c = open_chat(&server, "agent-2", "visitor-c").await;
    server.clock.advance(1000);
    // `a` has the newest message, so it leads; `c` was created after `b`.
    let send = format!("/v1/conversations/{a}/messages?as=visitor-a");
    ok(&server, "POST", &send, Some(json!({"text": "hello?"}))).await;
    let all = ok(&server, "GET", "/v1/temporary-conversations", None).await;
    assert_eq!(ids(&all), [a.clone(), c.clone(), b.clone()]);
    assert_eq!(all["conversations"][0]["last_message"]["text"], "hello?");
    assert_eq!(
        all["conversations"][0]["last_activity"].as_i64(),
        Some(server.clock_now())
    );
    assert!(all["conversations"][1]["last_message"].is_null());
    assert_eq!(all["has_more"], false);
    // One member's chats.
    let mine = ok(
        &server,
        "GET",
        "/v1/temporary-conversations?member=agent-1",
        None,
    )
    .await;
    assert_eq!(ids(&mine), [a.clone(), b.clone()]);
    // Pages, each after the last one's cursor.
    let p1 = ok(&server, "GET", "/v1/temporary-conversations?limit=2", None).await;
    assert_eq!(
        (ids(&p1), p1["has_more"].as_bool()),
        (vec![a.clone(), c.clone()], Some(true))
    );
    let cursor = p1["next_cursor"].as_str().unwrap();
    let p2 = ok(
        &server,
        "GET",
        &format!("/v1/temporary-conversations?limit=2&cursor={cursor}"),
        None,
    )
    .await;
    assert_eq!(
        (ids(&p2), p2["has_more"].as_bool()),
        (vec![b.clone()], Some(false))
    );
    // Ended or expired chats are not open.
    ok(&server, "POST", &format!("/v1/conversations/{c}/end"), None).await;
    server.clock.advance(3_600_000);
    let none = ok(&server, "GET", "/v1/temporary-conversations", None).await;
    assert_eq!(ids(&none), Vec::<String>::new());
    // Bounded: past admin_temporary_scan_max an unfiltered listing is refused.
    let small = TestServer::start_with(|c| {
        c.admin_listen = "127.0.0.1:0".into();
        c.admin_api_keys = vec![crate::admin::KEY.into()];
        c.admin_temporary_scan_max = 1;
    })
    .await;
    open_chat(&small, "agent", "v1").await;
    open_chat(&small, "agent", "v2").await;
    let r = api(&small, "GET", "/v1/temporary-conversations", None).await;
    assert_eq!(r.status_code(), (422, Some(3)), "{}", r.body);
    let r = api(&small, "GET", "/v1/temporary-conversations?cursor=zz", None).await;
    assert_eq!(r.status, 400);
}

/// A temporary conversation's id holds a `:`, which HTTP clients often escape: the API decodes
/// `%XX` in path segments, and answers a malformed escape with 400.
#[tokio::test]
async fn a_temporary_conversations_id_may_be_percent_escaped_in_the_path() {
    let server = admin_server().await;
    let id = open_chat(&server, "agent-1", "visitor").await;
    assert!(id.starts_with("_tmp:"), "{id}");
    let escaped = id.replace(':', "%3A");
    let c = ok(
        &server,
        "GET",
        &format!("/v1/conversations/{escaped}"),
        None,
    )
    .await;
    assert_eq!(c["id"], id.as_str());
    let r = api(&server, "GET", "/v1/conversations/_tmp%3", None).await;
    assert_eq!(r.status_code(), (400, Some(2)), "{}", r.body);
}
