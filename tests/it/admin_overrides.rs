//! What the backend may override through the admin API (calls without `as`): sending as the
//! system into any conversation, silently or not; recalling and editing any message however
//! old, with earlier versions kept for audit when configured; reading history unfiltered;
//! and one-way deletes made for a user.

use crate::admin::{KEY, api, ok};
use crate::harness::*;
use serde_json::{Value, json};
use tidings::protocol::pb::server_frame::Body as Rep;

async fn server_with(tweak: impl FnOnce(&mut tidings::config::Config)) -> TestServer {
    TestServer::start_with(|c| {
        c.admin_listen = "127.0.0.1:0".into();
        c.admin_api_keys = vec![KEY.into()];
        tweak(c);
    })
    .await
}

async fn group(server: &TestServer, owner: &str, members: &[&str]) -> String {
    let g = ok(
        server,
        "POST",
        &format!("/v1/conversations?as={owner}"),
        Some(json!({"kind": "group", "members": members})),
    )
    .await;
    g["id"].as_str().unwrap().to_owned()
}

fn entry<'a>(list: &'a Value, id: &str) -> &'a Value {
    list["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["conversation_id"] == id)
        .unwrap_or_else(|| panic!("{id} not listed: {list}"))
}

fn order(list: &Value) -> Vec<String> {
    list["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["conversation_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn the_backend_sends_as_the_system_and_silently_moves_no_list() {
    let mut server = server_with(|_| {}).await;
    let older = group(&server, "alice", &["bob"]).await;
    server.clock.advance(1000);
    let newer = group(&server, "carol", &["bob"]).await;
    server.clock.advance(1000);
    let (mut bob, _) = server.login("bob").await;

    // The system is no member, yet speaks; a retry is answered from the first send.
    let path = format!("/v1/conversations/{older}/messages");
    let send = json!({"text": "Your order shipped", "client_message_id": "notice-1"});
    let ack = ok(&server, "POST", &path, Some(send.clone())).await;
    let m = message(&mut bob).await;
    assert_eq!(
        (m.sender.as_str(), text(&m).as_str()),
        ("system", "Your order shipped")
    );
    let again = ok(&server, "POST", &path, Some(send)).await;
    assert_eq!(
        (again["seq"].clone(), again["duplicate"].as_bool()),
        (ack["seq"].clone(), Some(true))
    );
    let list = ok(&server, "GET", "/v1/users/bob/conversations", None).await;
    assert_eq!(order(&list), [older.clone(), newer.clone()]);
    assert_eq!(entry(&list, &older)["unread"], 1);
    // Users may not send silently.
    let r = api(
        &server,
        "POST",
        &format!("{path}?as=alice"),
        Some(json!({"text": "x", "silent": true})),
    )
    .await;
    assert_eq!(r.status_code(), (403, Some(7)));

    // Bob reads it; then `newer` gets activity, and a silent notice goes into `older`.
    ok(
        &server,
        "POST",
        &format!("/v1/conversations/{newer}/messages?as=carol"),
        Some(json!({"text": "hi bob"})),
    )
    .await;
    message(&mut bob).await;
    server.clock.advance(1000);
    let silent = ok(
        &server,
        "POST",
        &path,
        Some(json!({"text": "Terms updated", "silent": true})),
    )
    .await;
    let m = message(&mut bob).await;
    assert_eq!(m.seq, silent["seq"].as_u64().unwrap());
    let check = |list: &Value| {
        // `older` stays below `newer`, with its one unread, and the notice in its history.
        assert_eq!(order(list), [newer.clone(), older.clone()], "{list}");
        assert_eq!(entry(list, &older)["unread"], 1, "{list}");
        assert_eq!(entry(list, &older)["last_seq"], 2);
        assert_eq!(entry(list, &older)["last_message"]["text"], "Terms updated");
    };
    check(&ok(&server, "GET", "/v1/users/bob/conversations", None).await);
    // The same read from the store, after a restart.
    drop(bob);
    server.restart().await;
    check(&ok(&server, "GET", "/v1/users/bob/conversations", None).await);
    let (_, welcome) = server.login("bob").await;
    assert_eq!(welcome.unread(&older).map(|e| e.unread), Some(1));

    // A message that counts moves the entry up and is the second unread, not the third.
    ok(
        &server,
        "POST",
        &format!("{path}?as=alice"),
        Some(json!({"text": "did you see?"})),
    )
    .await;
    let list = ok(&server, "GET", "/v1/users/bob/conversations", None).await;
    assert_eq!(order(&list), [older.clone(), newer.clone()]);
    assert_eq!(entry(&list, &older)["unread"], 2);
    // Reading up to the silent one leaves one unread.
    let (bob, _) = server.login("bob").await;
    within(bob.mark_read(&older, 2)).await.unwrap();
    let list = ok(&server, "GET", "/v1/users/bob/conversations", None).await;
    assert_eq!(entry(&list, &older)["unread"], 1);
}

#[tokio::test]
async fn the_backend_recalls_and_edits_any_message_and_keeps_earlier_versions() {
    let mut server = server_with(|c| {
        c.keep_message_versions = true;
        c.recall_window_secs = 60;
        c.edit_window_secs = 60;
    })
    .await;
    let id = group(&server, "alice", &["bob"]).await;
    let (mut bob, _) = server.login("bob").await;
    let ack = ok(
        &server,
        "POST",
        &format!("/v1/conversations/{id}/messages?as=alice"),
        Some(json!({"text": "my card is 4111 1111"})),
    )
    .await;
    message(&mut bob).await;
    let mid = ack["message_id"].as_str().unwrap();
    server.clock.advance(3_600_000);
    // Past the windows the sender can do nothing; the backend can.
    let r = api(
        &server,
        "PATCH",
        &format!("/v1/conversations/{id}/messages/{mid}?as=alice"),
        Some(json!({"text": "redacted"})),
    )
    .await;
    assert_eq!(r.status_code(), (409, Some(14)));
    let edited = ok(
        &server,
        "PATCH",
        &format!("/v1/conversations/{id}/messages/{mid}"),
        Some(json!({"text": "my card is [redacted]"})),
    )
    .await;
    assert_eq!(
        (edited["edit_count"].as_u64(), edited["sender"].as_str()),
        (Some(1), Some("alice"))
    );
    match push(&mut bob).await {
        Rep::MessageUpdated(u) => {
            assert_eq!(text(u.message.as_ref().unwrap()), "my card is [redacted]")
        }
        other => panic!("expected an update, got {other:?}"),
    }
    let recalled = ok(
        &server,
        "POST",
        &format!("/v1/conversations/{id}/messages/{mid}/recall"),
        None,
    )
    .await;
    assert_eq!(recalled["recalled"], true);
    match push(&mut bob).await {
        Rep::MessageUpdated(u) => assert!(u.message.unwrap().recalled),
        other => panic!("expected a recall, got {other:?}"),
    }
    // Every earlier version is kept, for the backend's eyes only, across a restart.
    let versions_path = format!("/v1/conversations/{id}/messages/{mid}/versions");
    let r = api(&server, "GET", &format!("{versions_path}?as=alice"), None).await;
    assert_eq!(r.status_code(), (403, Some(7)));
    server.restart().await;
    let v = ok(&server, "GET", &versions_path, None).await;
    let texts: Vec<&str> = v["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["my card is 4111 1111", "my card is [redacted]"]);
    assert_eq!(
        (
            v["current"]["recalled"].as_bool(),
            v["current"]["text"].as_str()
        ),
        (Some(true), Some(""))
    );

    // Without the setting nothing is kept.
    let plain = server_with(|_| {}).await;
    let id = group(&plain, "alice", &["bob"]).await;
    let ack = ok(
        &plain,
        "POST",
        &format!("/v1/conversations/{id}/messages?as=alice"),
        Some(json!({"text": "one"})),
    )
    .await;
    let mid = ack["message_id"].as_str().unwrap();
    ok(
        &plain,
        "PATCH",
        &format!("/v1/conversations/{id}/messages/{mid}"),
        Some(json!({"text": "two"})),
    )
    .await;
    let v = ok(
        &plain,
        "GET",
        &format!("/v1/conversations/{id}/messages/{mid}/versions"),
        None,
    )
    .await;
    assert_eq!(
        (
            v["versions"].as_array().unwrap().len(),
            v["current"]["text"].as_str()
        ),
        (0, Some("two"))
    );
}

#[tokio::test]
async fn moderation_reads_every_message_and_one_way_deletes_stay_the_users() {
    let server = server_with(|_| {}).await;
    let id = group(&server, "alice", &["bob"]).await;
    let path = format!("/v1/conversations/{id}/messages");
    let mut ids = Vec::new();
    for t in ["one", "two", "three"] {
        let ack = ok(
            &server,
            "POST",
            &format!("{path}?as=alice"),
            Some(json!({"text": t})),
        )
        .await;
        ids.push(ack["message_id"].as_str().unwrap().to_owned());
    }
    let (mut phone, _) = server.login_device("bob", "phone", 0).await;
    // Bob deletes "two" for himself; his phone hears of it.
    ok(
        &server,
        "POST",
        &format!("{path}/delete?as=bob"),
        Some(json!({"message_ids": [ids[1]]})),
    )
    .await;
    match push(&mut phone).await {
        Rep::MessagesDeleted(d) => assert_eq!(d.message_ids, vec![ids[1].clone()]),
        other => panic!("expected MessagesDeleted, got {other:?}"),
    }
    let texts = |page: &Value| -> Vec<String> {
        page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["text"].as_str().unwrap().to_owned())
            .collect()
    };
    let bobs = ok(
        &server,
        "GET",
        &format!("{path}?as=bob&oldest_first=true"),
        None,
    )
    .await;
    assert_eq!(texts(&bobs), ["one", "three"]);
    let alices = ok(
        &server,
        "GET",
        &format!("{path}?as=alice&oldest_first=true"),
        None,
    )
    .await;
    assert_eq!(texts(&alices), ["one", "two", "three"]);
    // Bob also clears everything; the backend still reads it all.
    ok(
        &server,
        "POST",
        &format!("{path}/delete?as=bob"),
        Some(json!({"before_time": server.clock_now(), "inclusive": true})),
    )
    .await;
    let bobs = ok(&server, "GET", &format!("{path}?as=bob"), None).await;
    assert_eq!(texts(&bobs), Vec::<String>::new());
    let all = ok(&server, "GET", &format!("{path}?oldest_first=true"), None).await;
    assert_eq!(texts(&all), ["one", "two", "three"]);
    // A one-way delete is the user's own: it needs `as`, and bad input is refused.
    let r = api(
        &server,
        "POST",
        &format!("{path}/delete"),
        Some(json!({"message_ids": [ids[0]]})),
    )
    .await;
    assert_eq!(r.status, 400);
    let r = api(
        &server,
        "POST",
        &format!("{path}/delete?as=bob"),
        Some(json!({})),
    )
    .await;
    assert_eq!(r.status_code(), (400, Some(2)));
    // Outsiders read nothing; the backend reads any conversation's details.
    let r = api(&server, "GET", &format!("{path}?as=mallory"), None).await;
    assert_eq!(r.status, 403);
    let c = ok(&server, "GET", &format!("/v1/conversations/{id}"), None).await;
    assert_eq!(c["member_count"], 2);
}
