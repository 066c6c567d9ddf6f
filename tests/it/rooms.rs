//! System conversations (created by the backend, subscribed to by users, broadcasts stored)
//! and chat rooms (joined and left freely, messages to the members online, nothing stored),
//! and timed mutes that end by themselves, through the native protocol and the admin API.

use crate::admin::{admin_server, api, ok};
use crate::harness::*;
use serde_json::json;
use tidings::client::Client;
use tidings::protocol::pb::{self, ConversationEventKind as Ev, ConversationKind, ErrorCode};

async fn event_of(c: &mut Client, want: Ev) -> pb::ConversationEvent {
    loop {
        if let pb::server_frame::Body::ConversationEvent(e) = push(c).await
            && e.kind == want as i32
        {
            return e;
        }
    }
}

/// The next message push, skipping other pushes.
async fn next_message(c: &mut Client) -> pb::Message {
    loop {
        if let pb::server_frame::Body::Message(m) = push(c).await {
            return m;
        }
    }
}

fn code<T: std::fmt::Debug>(r: Result<T, tidings::client::ClientError>) -> ErrorCode {
    r.expect_err("must be refused")
        .code()
        .expect("a reply error")
}

async fn broadcast(server: &TestServer, id: &str, text: &str) -> serde_json::Value {
    ok(
        server,
        "POST",
        &format!("/v1/system-conversations/{id}/messages?by=news"),
        Some(json!({ "text": text })),
    )
    .await
}

#[tokio::test]
async fn a_timed_mute_ends_at_its_deadline_with_an_event_also_across_a_restart() {
    let mut server = TestServer::start().await;
    let alice = server.client("alice").await;
    let mut bob = server.client("bob").await;
    let mut carol = server.client("carol").await;
    let id = within(alice.create_group("team", &["bob", "carol", "dave"]))
        .await
        .unwrap()
        .id;
    within(alice.mute_members(&id, &["bob"], 60)).await.unwrap();
    event_of(&mut bob, Ev::MembersMuted).await;
    event_of(&mut carol, Ev::MembersMuted).await;
    assert_eq!(
        code(within(bob.send_text(&id, "hi")).await),
        ErrorCode::ErrorMuted
    );

    server.clock.advance(60_000);
    let ended = event_of(&mut bob, Ev::MembersUnmuted).await;
    assert_eq!(
        (ended.by.as_str(), ended.members.clone()),
        ("", vec!["bob".into()])
    );
    assert!(ended.user_seq > 0, "logged for the member");
    let seen = event_of(&mut carol, Ev::MembersUnmuted).await;
    assert_eq!(seen.user_seq, 0, "live for the others");
    within(bob.send_text(&id, "free")).await.unwrap();
    let entry = within(bob.get_list_entry(&id)).await.unwrap();
    assert_eq!(entry.muted_until, 0);

    // Lifted before its deadline: no event at the old deadline. dave's mute, ending at the
    // same moment and swept after carol's, is the next thing carol hears.
    within(alice.mute_members(&id, &["carol", "dave"], 30))
        .await
        .unwrap();
    event_of(&mut carol, Ev::MembersMuted).await;
    within(alice.unmute_members(&id, &["carol"])).await.unwrap();
    event_of(&mut carol, Ev::MembersUnmuted).await;
    server.clock.advance(30_000);
    let next = event(&mut carol).await;
    assert_eq!(
        (next.kind, next.members.clone()),
        (Ev::MembersUnmuted as i32, vec!["dave".into()])
    );

    // A mute set before a restart ends after it; the offline member gets it at login.
    within(alice.mute_members(&id, &["dave"], 10))
        .await
        .unwrap();
    event_of(&mut carol, Ev::MembersMuted).await;
    drop((alice, bob, carol));
    server.restart().await;
    let mut carol = server.client("carol").await;
    server.clock.advance(10_000);
    let e = event_of(&mut carol, Ev::MembersUnmuted).await;
    assert_eq!(
        (e.by.as_str(), e.members.clone()),
        ("", vec!["dave".into()])
    );
    let (_dave, welcome) = server.login("dave").await;
    let last = welcome.events.last().expect("replayed");
    assert_eq!(
        (last.kind, last.members.clone()),
        (Ev::MembersUnmuted as i32, vec!["dave".into()])
    );
}

#[tokio::test]
async fn a_system_conversation_is_subscribed_to_broadcast_to_and_left() {
    let mut server = admin_server().await;
    let created = ok(
        &server,
        "POST",
        "/v1/system-conversations?by=news",
        Some(json!({"name": "News", "attributes": {"topic": "releases"}})),
    )
    .await;
    assert_eq!(created["kind"], "system");
    assert_eq!(created["owner"], "");
    let id = created["id"].as_str().unwrap().to_owned();
    // Users cannot create one.
    let alice = server.client("alice").await;
    let refused = within(alice.create(pb::CreateConversation {
        kind: ConversationKind::System as i32,
        name: "mine".into(),
        ..Default::default()
    }))
    .await;
    assert_eq!(code(refused), ErrorCode::ErrorPermissionDenied);

    // Anyone subscribes; the subscriber's other device hears of it; nobody else does.
    let (mut alice2, _) = server.login_device("alice", "tablet", 0).await;
    let mut bob = server.client("bob").await;
    let conv = within(alice.join_conversation(&id)).await.unwrap();
    assert_eq!(conv.kind, ConversationKind::System as i32);
    assert_eq!(conv.member_count, 1);
    let e = event_of(&mut alice2, Ev::MembersAdded).await;
    assert_eq!(e.members, vec!["alice"]);
    within(bob.join_conversation(&id)).await.unwrap();
    // Joining again is no change.
    within(bob.join_conversation(&id)).await.unwrap();
    assert_eq!(
        within(bob.get_conversation(&id))
            .await
            .unwrap()
            .member_count,
        2
    );

    // Broadcasts reach every subscriber and are stored.
    let ack = broadcast(&server, &id, "v1.0 is out").await;
    assert_eq!(ack["seq"], 1);
    let m = next_message(&mut bob).await;
    assert_eq!(
        (text(&m), m.sender.as_str(), m.seq),
        ("v1.0 is out".into(), "news", 1)
    );
    assert_eq!(text(&next_message(&mut alice2).await), "v1.0 is out");
    let page = within(bob.history(&id, 0, 10)).await.unwrap();
    assert_eq!(page.messages.len(), 1);

    // Subscribers neither send nor see each other.
    assert_eq!(
        code(within(bob.send_text(&id, "hello?")).await),
        ErrorCode::ErrorPermissionDenied
    );
    assert_eq!(
        code(within(bob.list_members(&id, "", 0)).await),
        ErrorCode::ErrorPermissionDenied
    );
    assert_eq!(
        code(within(bob.add_members(&id, &["carol"])).await),
        ErrorCode::ErrorPermissionDenied
    );
    // The backend cannot broadcast into an ordinary group it is not in.
    let group = within(alice.create_group("g", &["bob"])).await.unwrap().id;
    let r = api(
        &server,
        "POST",
        &format!("/v1/system-conversations/{group}/messages"),
        Some(json!({"text": "x"})),
    )
    .await;
    assert_eq!(r.status, 403);

    // The list entry and unread count work as for a group, also after a restart.
    drop((alice, alice2, bob));
    broadcast(&server, &id, "v1.1 is out").await;
    server.restart().await;
    let (bob, welcome) = server.login("bob").await;
    let unread = welcome.unread(&id).expect("listed");
    assert_eq!((unread.unread, unread.last_seq), (2, 2));
    within(bob.mark_read(&id, 2)).await.unwrap();
    let entry = within(bob.get_list_entry(&id)).await.unwrap();
    assert_eq!(
        (entry.unread, entry.kind),
        (0, ConversationKind::System as i32)
    );

    // Unsubscribing: the entry leaves the list, later broadcasts do not come.
    let mut bob = bob;
    within(bob.leave(&id)).await.unwrap();
    assert!(within(bob.get_list_entry(&id)).await.is_err());
    broadcast(&server, &id, "v1.2").await;
    assert_no_push(&mut bob).await;
    let (_alice, welcome) = server.login("alice").await;
    assert_eq!(welcome.unread(&id).unwrap().unread, 3);

    // The subscriber cap.
    let server = TestServer::start_with(|c| {
        c.admin_listen = "127.0.0.1:0".into();
        c.admin_api_keys = vec![crate::admin::KEY.into()];
        c.max_system_subscribers = 1;
    })
    .await;
    let id = ok(&server, "POST", "/v1/system-conversations", Some(json!({}))).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let a = server.client("a").await;
    let b = server.client("b").await;
    within(a.join_conversation(&id)).await.unwrap();
    assert_eq!(
        code(within(b.join_conversation(&id)).await),
        ErrorCode::ErrorLimitExceeded
    );
}

#[tokio::test]
async fn chat_room_members_join_and_leave_during_sends_and_nothing_is_stored() {
    let server = TestServer::start_with(|c| c.max_chat_room_members = 3).await;
    let mut alice = server.client("alice").await;
    let mut bob = server.client("bob").await;
    let mut carol = server.client("carol").await;
    let mut dave = server.client("dave").await;
    let room = within(alice.create(pb::CreateConversation {
        kind: ConversationKind::ChatRoom as i32,
        name: "lobby".into(),
        ..Default::default()
    }))
    .await
    .unwrap();
    assert_eq!((room.member_count, room.owner.as_str()), (1, "alice"));
    let id = room.id;
    within(bob.join_conversation(&id)).await.unwrap();
    within(carol.join_conversation(&id)).await.unwrap();
    // Full: at most max_chat_room_members.
    assert_eq!(
        code(within(dave.join_conversation(&id)).await),
        ErrorCode::ErrorLimitExceeded
    );
    // The members there are told of each join, live; the joiner is not told of itself.
    let joined = |e: pb::ConversationEvent| (e.kind, e.by, e.members, e.user_seq);
    let added = |who: &str| (Ev::MembersAdded as i32, who.into(), vec![who.into()], 0);
    assert_eq!(joined(event(&mut alice).await), added("bob"));
    assert_eq!(joined(event(&mut alice).await), added("carol"));
    assert_eq!(joined(event(&mut bob).await), added("carol"));
    assert_no_push(&mut carol).await;

    let ack = within(alice.send_text(&id, "one")).await.unwrap();
    assert_eq!(ack.seq, 0, "not stored");
    assert_eq!(text(&message(&mut bob).await), "one");
    assert_eq!(text(&message(&mut carol).await), "one");

    // carol leaves during the sends, dave takes her place; the others hear both.
    within(carol.leave(&id)).await.unwrap();
    let left = |who: &str| (Ev::Left as i32, who.into(), vec![who.into()], 0);
    assert_eq!(joined(event(&mut alice).await), left("carol"));
    assert_eq!(joined(event(&mut bob).await), left("carol"));
    within(dave.join_conversation(&id)).await.unwrap();
    assert_eq!(joined(event(&mut bob).await), added("dave"));
    within(bob.send_text(&id, "two")).await.unwrap();
    assert_eq!(text(&message(&mut dave).await), "two");
    assert_no_push(&mut carol).await;
    assert_eq!(within(carol.count_members(&id)).await.unwrap(), 3);
    // A non-member cannot send.
    assert_eq!(
        code(within(carol.send_text(&id, "x")).await),
        ErrorCode::ErrorNotAMember
    );

    // Nothing stored: no history, no list entry, no invitations.
    let page = within(alice.history(&id, 0, 10)).await.unwrap();
    assert!(page.messages.is_empty());
    let list = within(alice.list_all(pb::ListConversations::default()))
        .await
        .unwrap();
    assert!(list.iter().all(|e| e.conversation_id != id));
    assert_eq!(
        code(within(alice.add_members(&id, &["erin"])).await),
        ErrorCode::ErrorNotAllowedForKind
    );
    assert_eq!(
        code(within(bob.set_muted(&id, true)).await),
        ErrorCode::ErrorNotAllowedForKind
    );

    // A member whose last session ends leaves the room: the count is live, the others hear
    // it.
    within(alice.subscribe_presence(&id)).await.unwrap();
    dave.disconnect();
    drop(dave);
    let gone = event_of(&mut bob, Ev::Left).await;
    assert_eq!(gone.members, vec!["dave"]);
    loop {
        if let pb::server_frame::Body::PresenceChange(p) = push(&mut alice).await
            && p.user_id == "dave"
            && !p.online
        {
            break;
        }
    }
    assert_eq!(within(alice.count_members(&id)).await.unwrap(), 2);
    let online = within(alice.online_members(&id)).await.unwrap();
    assert_eq!(online, vec!["alice", "bob"]);
}

#[tokio::test]
async fn a_large_chat_room_does_not_announce_joins_and_leaves() {
    let server = TestServer::start_with(|c| c.chat_room_member_events_max = 2).await;
    let mut alice = server.client("alice").await;
    let bob = server.client("bob").await;
    let carol = server.client("carol").await;
    let id = within(alice.create(pb::CreateConversation {
        kind: ConversationKind::ChatRoom as i32,
        ..Default::default()
    }))
    .await
    .unwrap()
    .id;
    within(bob.join_conversation(&id)).await.unwrap();
    assert_eq!(
        event_of(&mut alice, Ev::MembersAdded).await.members,
        vec!["bob"]
    );
    // A third member makes the room larger than chat_room_member_events_max: nobody is told
    // of the join, nor of the leave.
    within(carol.join_conversation(&id)).await.unwrap();
    within(carol.leave(&id)).await.unwrap();
    assert_no_push(&mut alice).await;
    assert_eq!(within(alice.count_members(&id)).await.unwrap(), 2);
    // Back within the bound, leaves are told again.
    within(bob.leave(&id)).await.unwrap();
    assert_eq!(event_of(&mut alice, Ev::Left).await.members, vec!["bob"]);
}

#[tokio::test]
async fn a_chat_room_passes_on_at_most_its_message_rate() {
    let server = TestServer::start_with(|c| c.chat_room_messages_per_sec = 2).await;
    let alice = server.client("alice").await;
    let room = within(alice.create(pb::CreateConversation {
        kind: ConversationKind::ChatRoom as i32,
        ..Default::default()
    }))
    .await
    .unwrap();
    within(alice.send_text(&room.id, "1")).await.unwrap();
    within(alice.send_text(&room.id, "2")).await.unwrap();
    let e = within(alice.send_text(&room.id, "3")).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::ErrorRateLimited));
    server.clock.advance(1_000);
    within(alice.send_text(&room.id, "4")).await.unwrap();
}
