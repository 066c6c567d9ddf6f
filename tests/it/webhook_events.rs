//! The webhook events that cost work of their own (reads, presence, offline recipients; sent
//! only to endpoints that name them) and `conversation.expired` with the transcript.

use crate::admin::ok;
use crate::harness::*;
use crate::webhooks::{Hit, Receiver, webhook_server};
use serde_json::{Value, json};

/// Events from `rx` until `n` of the types in `types` have come (others are skipped).
async fn events_of(rx: &mut Receiver, types: &[&str], n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    while out.len() < n {
        let hit = rx.next().await;
        if hit.status >= 300 {
            continue;
        }
        out.extend(
            Hit::events(&hit)
                .into_iter()
                .filter(|e| types.contains(&e["type"].as_str().unwrap())),
        );
    }
    out
}

#[tokio::test]
async fn offline_recipients_reads_and_presence_reach_the_endpoint_that_names_them() {
    let mut rx = Receiver::start(200).await;
    let events = ["message.offline_recipients", "message.read", "user.*"];
    let server = webhook_server(&rx, &events, |_| {}).await;
    let g = ok(
        &server,
        "POST",
        "/v1/conversations?as=alice",
        Some(json!({"kind": "group", "members": ["bob", "carol", "dave"]})),
    )
    .await;
    let id = g["id"].as_str().unwrap().to_owned();
    // Carol mutes the conversation, then goes; alice and dave stay.
    let (carol, _) = server.login("carol").await;
    within(carol.set_muted(&id, true)).await.unwrap();
    drop(carol);
    within(server.running().app.stats.sessions_closed.wait_for(1)).await;
    let (alice, _) = server.login("alice").await;
    let (_dave, _) = server.login("dave").await;
    let presence = events_of(&mut rx, &["user.online", "user.offline"], 4).await;
    let seen: Vec<(&str, &str)> = presence
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap(),
                e["data"]["user"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("user.online", "carol"),
            ("user.offline", "carol"),
            ("user.online", "alice"),
            ("user.online", "dave")
        ]
    );

    let ack = within(alice.send(tidings::protocol::pb::SendMessage {
        conversation_id: id.clone(),
        content: "@bob look".into(),
        mentions: vec!["bob".into()],
        ..Default::default()
    }))
    .await
    .unwrap();
    let e = events_of(&mut rx, &["message.offline_recipients"], 1).await;
    let data = &e[0]["data"];
    assert_eq!(
        (
            data["conversation_id"].as_str(),
            data["message_id"].as_str()
        ),
        (Some(id.as_str()), Some(ack.message_id.as_str()))
    );
    assert_eq!(
        (data["sender"].as_str(), data["seq"].as_u64()),
        (Some("alice"), Some(1))
    );
    assert_eq!(
        (data["count"].as_u64(), data["listed"].as_bool()),
        (Some(2), Some(true))
    );
    assert_eq!(
        data["recipients"],
        json!([
            {"user": "bob", "muted": false, "mentioned": true},
            {"user": "carol", "muted": true, "mentioned": false}
        ])
    );

    // Bob comes and reads it.
    let (bob, _) = server.login("bob").await;
    within(bob.mark_read(&id, 1)).await.unwrap();
    // (Presence events are queued apart from the change that follows them: no order between
    // the two.)
    let mut e = events_of(&mut rx, &["message.read", "user.online"], 2).await;
    e.sort_by_key(|e| e["type"].as_str().unwrap().to_owned());
    assert_eq!(
        (e[1]["type"].as_str(), e[1]["data"]["user"].as_str()),
        (Some("user.online"), Some("bob"))
    );
    assert_eq!(e[0]["type"], "message.read");
    assert_eq!(
        e[0]["data"],
        json!({"conversation_id": id, "user": "bob", "read_seq": 1, "message_id": ack.message_id})
    );

    // Above webhook_offline_recipients_max members, a count only.
    let mut rx2 = Receiver::start(200).await;
    let small = webhook_server(&rx2, &["message.offline_recipients"], |c| {
        c.webhook_offline_recipients_max = 2;
    })
    .await;
    let g = ok(
        &small,
        "POST",
        "/v1/conversations?as=alice",
        Some(json!({"kind": "group", "members": ["bob", "carol"]})),
    )
    .await;
    ok(
        &small,
        "POST",
        &format!(
            "/v1/conversations/{}/messages?as=alice",
            g["id"].as_str().unwrap()
        ),
        Some(json!({"text": "hi"})),
    )
    .await;
    let e = events_of(&mut rx2, &["message.offline_recipients"], 1).await;
    assert_eq!(
        (
            e[0]["data"]["count"].as_u64(),
            e[0]["data"]["listed"].as_bool()
        ),
        (Some(2), Some(false))
    );
    assert!(e[0]["data"].get("recipients").is_none());
}

#[tokio::test]
async fn an_ended_chat_reaches_the_endpoint_with_its_transcript() {
    let mut rx = Receiver::start(200).await;
    let server = webhook_server(&rx, &["conversation.expired"], |_| {}).await;
    let chat = |ttl: u32| {
        let server = &server;
        async move {
            let c = ok(
                server,
                "POST",
                "/v1/conversations?as=agent",
                Some(json!({"kind": "temporary", "members": ["visitor"], "ttl_secs": ttl})),
            )
            .await;
            let id = c["id"].as_str().unwrap().to_owned();
            for (who, t) in [
                ("visitor", "my order is late"),
                ("agent", "let me check"),
                ("visitor", "thanks"),
            ] {
                ok(
                    server,
                    "POST",
                    &format!("/v1/conversations/{id}/messages?as={who}"),
                    Some(json!({"text": t})),
                )
                .await;
            }
            id
        }
    };
    let texts = |e: &Value| -> Vec<String> {
        e["data"]["transcript"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["text"].as_str().unwrap().to_owned())
            .collect()
    };
    // Ended by the backend.
    let id = chat(3600).await;
    ok(
        &server,
        "POST",
        &format!("/v1/conversations/{id}/end"),
        None,
    )
    .await;
    let e = events_of(&mut rx, &["conversation.expired"], 1).await;
    assert_eq!(
        (
            e[0]["data"]["conversation_id"].as_str(),
            e[0]["data"]["by"].as_str()
        ),
        (Some(id.as_str()), Some("system"))
    );
    assert_eq!(texts(&e[0]), ["my order is late", "let me check", "thanks"]);
    assert_eq!(e[0]["data"]["transcript"][1]["sender"], "agent");
    assert_eq!(
        (
            e[0]["data"]["transcript_complete"].as_bool(),
            e[0]["data"]["message_count"].as_u64()
        ),
        (Some(true), Some(3))
    );
    // At its deadline, by the sweep.
    let id = chat(60).await;
    server.clock.advance(60_000);
    let e = events_of(&mut rx, &["conversation.expired"], 1).await;
    assert_eq!(
        (
            e[0]["data"]["conversation_id"].as_str(),
            e[0]["data"]["by"].as_str()
        ),
        (Some(id.as_str()), Some(""))
    );
    assert_eq!(texts(&e[0]).len(), 3);

    // A transcript over webhook_transcript_max_bytes is cut, oldest kept.
    let mut rx2 = Receiver::start(200).await;
    let small = webhook_server(&rx2, &["conversation.expired"], |c| {
        c.webhook_transcript_max_bytes = 100;
    })
    .await;
    let c = ok(
        &small,
        "POST",
        "/v1/conversations?as=agent",
        Some(json!({"kind": "temporary", "members": ["visitor"]})),
    )
    .await;
    let id = c["id"].as_str().unwrap();
    for t in ["first message", "second message", "third message"] {
        ok(
            &small,
            "POST",
            &format!("/v1/conversations/{id}/messages?as=agent"),
            Some(json!({"text": t})),
        )
        .await;
    }
    ok(&small, "POST", &format!("/v1/conversations/{id}/end"), None).await;
    let e = events_of(&mut rx2, &["conversation.expired"], 1).await;
    let got = texts(&e[0]);
    assert!(!got.is_empty() && got.len() < 3, "{got:?}");
    assert_eq!(got[0], "first message");
    assert_eq!(
        (
            e[0]["data"]["transcript_complete"].as_bool(),
            e[0]["data"]["message_count"].as_u64()
        ),
        (Some(false), Some(3))
    );
}

#[tokio::test]
async fn a_subscribers_message_to_a_system_conversation_goes_to_the_backend_only() {
    use tidings::protocol::pb::ErrorCode;
    let mut rx = Receiver::start(200).await;
    let server = webhook_server(&rx, &["system.message_received"], |_| {}).await;
    let created = ok(
        &server,
        "POST",
        "/v1/system-conversations?by=support",
        Some(json!({"name": "Support"})),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let (alice, _) = server.login("alice").await;
    let (mut bob, _) = server.login("bob").await;
    within(alice.join_conversation(&id)).await.unwrap();
    within(bob.join_conversation(&id)).await.unwrap();
    // Alice's other device subscribes with her: it must not get her message either.
    let (mut tablet, _) = server.login_device("alice", "tablet", 0).await;

    let ack = within(alice.send_text(&id, "my order is late"))
        .await
        .unwrap();
    assert_eq!(ack.seq, 0, "not stored in the conversation");
    assert!(!ack.message_id.is_empty());
    let e = events_of(&mut rx, &["system.message_received"], 1).await;
    let m = &e[0]["data"]["message"];
    assert_eq!(
        (
            m["id"].as_str(),
            m["conversation_id"].as_str(),
            m["sender"].as_str(),
            m["text"].as_str(),
            m["seq"].as_u64()
        ),
        (
            Some(ack.message_id.as_str()),
            Some(id.as_str()),
            Some("alice"),
            Some("my order is late"),
            Some(0)
        )
    );
    // Nobody else hears of it, and it is not in the history.
    assert_no_push(&mut bob).await;
    assert_no_push(&mut tablet).await;
    assert!(
        within(bob.history(&id, 0, 10))
            .await
            .unwrap()
            .messages
            .is_empty()
    );
    assert!(
        within(alice.history(&id, 0, 10))
            .await
            .unwrap()
            .messages
            .is_empty()
    );
    // A non-subscriber may not write to it.
    let (carol, _) = server.login("carol").await;
    let refused = within(carol.send_text(&id, "me too")).await;
    assert_eq!(
        refused.expect_err("refused").code(),
        Some(ErrorCode::ErrorNotAMember)
    );

    // With the setting off, a subscriber's send is refused as before.
    let server = webhook_server(&rx, &["system.message_received"], |c| {
        c.system_conversation_messages = false;
    })
    .await;
    let created = ok(
        &server,
        "POST",
        "/v1/system-conversations?by=support",
        Some(json!({"name": "Support"})),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let (alice, _) = server.login("alice").await;
    within(alice.join_conversation(&id)).await.unwrap();
    let refused = within(alice.send_text(&id, "hello?")).await;
    assert_eq!(
        refused.expect_err("refused").code(),
        Some(ErrorCode::ErrorPermissionDenied)
    );
}
