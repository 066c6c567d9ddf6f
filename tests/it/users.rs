//! What belongs to users through the native protocol: blocking between users (direct
//! conversations refused, groups unaffected) and profiles (limits, where they show, and who is
//! told of a change: those who share a conversation with the user, and nobody else).

use crate::harness::*;
use tidings::client::Client;
use tidings::protocol::pb::{self, ErrorCode};

async fn code<T: std::fmt::Debug>(
    f: impl std::future::Future<Output = Result<T, tidings::client::ClientError>>,
) -> ErrorCode {
    within(f)
        .await
        .expect_err("the request must be refused")
        .code()
        .expect("a reply error")
}

/// The next push that is a profile change, skipping conversation events and messages.
async fn profile_push(c: &mut Client) -> pb::Profile {
    loop {
        if let pb::server_frame::Body::ProfileChanged(p) = push(c).await {
            return p.profile.expect("a profile");
        }
    }
}

#[tokio::test]
async fn a_blocked_user_cannot_open_or_write_a_direct_conversation_but_groups_go_on() {
    let mut server = TestServer::start().await;
    let alice = server.client("alice").await;
    let mut bob = server.client("bob").await;
    let direct = within(alice.create_direct("bob")).await.unwrap();
    let group = within(alice.create_group("team", &["bob"])).await.unwrap();
    within(alice.send_text(&direct.id, "before")).await.unwrap();

    within(bob.block_user("alice")).await.unwrap();
    // Alice's messages in the direct conversation are refused, stored or transient.
    assert_eq!(
        code(alice.send_text(&direct.id, "hi?")).await,
        ErrorCode::ErrorBlocked
    );
    assert_eq!(
        code(alice.send(pb::SendMessage {
            conversation_id: direct.id.clone(),
            content: "typing".into(),
            transient: true,
            ..Default::default()
        }))
        .await,
        ErrorCode::ErrorBlocked
    );
    assert_eq!(
        code(alice.set_will_text(&direct.id, "bye")).await,
        ErrorCode::ErrorBlocked
    );
    // Bob may still write to her; the group is unaffected.
    within(bob.send_text(&direct.id, "I can still talk"))
        .await
        .unwrap();
    within(alice.send_text(&group.id, "in the group"))
        .await
        .unwrap();
    loop {
        if let pb::server_frame::Body::Message(m) = push(&mut bob).await
            && m.conversation_id == group.id
        {
            assert_eq!(text(&m), "in the group");
            break;
        }
    }

    // No new direct conversation from a blocked user.
    let carol = server.client("carol").await;
    within(carol.block_user("alice")).await.unwrap();
    assert_eq!(
        code(alice.create_direct("carol")).await,
        ErrorCode::ErrorBlocked
    );
    // The other way round is allowed (carol blocks, she is not blocked).
    let cd = within(carol.create_direct("dave")).await.unwrap();
    assert_eq!(cd.member_count, 2);

    let list = within(bob.list_blocked_users("", 0)).await.unwrap();
    assert_eq!(list.users.len(), 1);
    assert_eq!(list.users[0].user_id, "alice");
    assert!(list.users[0].blocked_at > 0);

    server.restart().await;
    let alice = server.client("alice").await;
    let bob = server.client("bob").await;
    assert_eq!(
        code(alice.send_text(&direct.id, "after a restart?")).await,
        ErrorCode::ErrorBlocked
    );
    within(bob.unblock_user("alice")).await.unwrap();
    within(alice.send_text(&direct.id, "thanks")).await.unwrap();
    assert!(
        within(bob.list_blocked_users("", 0))
            .await
            .unwrap()
            .users
            .is_empty()
    );
}

#[tokio::test]
async fn whom_a_user_blocks_is_capped_and_pages() {
    let server = TestServer::start_with(|c| c.max_blocked_users = 3).await;
    let bob = server.client("bob").await;
    for u in ["u1", "u2", "u3"] {
        within(bob.block_user(u)).await.unwrap();
    }
    // Blocking again is no change; a fourth is over the cap.
    within(bob.block_user("u2")).await.unwrap();
    let err = within(bob.block_user("u4")).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::ErrorLimitExceeded));
    assert!(err.to_string().contains("max_blocked_users"), "{err}");
    assert_eq!(
        code(bob.block_user("bob")).await,
        ErrorCode::ErrorInvalidArgument
    );
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = within(bob.list_blocked_users(&cursor, 2)).await.unwrap();
        seen.extend(page.users.iter().map(|u| u.user_id.clone()));
        if !page.has_more {
            break;
        }
        cursor = page.next_cursor;
    }
    seen.sort();
    assert_eq!(seen, vec!["u1", "u2", "u3"]);
}

#[tokio::test]
async fn a_profile_change_reaches_those_who_share_a_conversation_and_nobody_else() {
    let mut server = TestServer::start().await;
    let alice = server.client("alice").await;
    let mut alice_tablet = server.client("alice").await;
    let mut bob = server.client("bob").await;
    let mut carol = server.client("carol").await;
    let mut dave = server.client("dave").await;
    let group = within(alice.create_group("team", &["bob"])).await.unwrap();
    let direct = within(carol.create_direct("alice")).await.unwrap();
    // Dave shares nothing with alice (only a conversation with bob).
    within(dave.create_direct("bob")).await.unwrap();

    let mut fields = std::collections::BTreeMap::new();
    fields.insert("title".to_string(), "captain".to_string());
    let p = within(alice.set_profile(pb::SetProfile {
        display_name: Some("Alice A.".into()),
        avatar_url: Some("https://img.example/alice.png".into()),
        set_fields: fields,
        ..Default::default()
    }))
    .await
    .unwrap();
    assert_eq!(p.user_id, "alice");
    assert_eq!(p.updated_at, server.clock_now());
    for c in [&mut bob, &mut carol, &mut alice_tablet] {
        let got = profile_push(c).await;
        assert_eq!(got.display_name, "Alice A.");
        assert_eq!(got.fields["title"], "captain");
    }
    // Dave gets nothing: after his own pending events, no profile push.
    loop {
        within(dave.ping()).await.unwrap();
        match dave.try_next_push() {
            Some(f) => assert!(
                !matches!(f.body, Some(pb::server_frame::Body::ProfileChanged(_))),
                "dave must not hear of it"
            ),
            None => break,
        }
    }

    // Where profiles show: member lists, a direct entry's peer, presence, and by id.
    let members = within(bob.list_members(&group.id, "", 0)).await.unwrap();
    let info = members.infos.iter().find(|i| i.user_id == "alice").unwrap();
    assert_eq!(info.profile.as_ref().unwrap().display_name, "Alice A.");
    let entry = within(carol.get_list_entry(&direct.id)).await.unwrap();
    assert_eq!(entry.peer, "alice");
    assert_eq!(
        entry.peer_profile.unwrap().avatar_url,
        "https://img.example/alice.png"
    );
    match within(
        bob.request(pb::client_frame::Body::QueryPresence(pb::QueryPresence {
            conversation_id: group.id.clone(),
        })),
    )
    .await
    .unwrap()
    {
        pb::server_frame::Body::Presence(r) => {
            let i = r.online.iter().position(|u| u == "alice").unwrap();
            assert_eq!(r.profiles[i].display_name, "Alice A.");
        }
        other => panic!("{other:?}"),
    }
    let got = within(dave.get_profiles(&["alice", "nobody"]))
        .await
        .unwrap();
    assert_eq!(got[0].display_name, "Alice A.");
    assert_eq!((got[1].user_id.as_str(), got[1].updated_at), ("nobody", 0));

    // A partial change keeps the rest; it survives a restart.
    within(alice.set_profile(pb::SetProfile {
        remove_fields: vec!["title".into()],
        ..Default::default()
    }))
    .await
    .unwrap();
    server.restart().await;
    let bob = server.client("bob").await;
    let got = within(bob.get_profiles(&["alice"])).await.unwrap();
    assert_eq!(got[0].display_name, "Alice A.");
    assert!(got[0].fields.is_empty());
}

#[tokio::test]
async fn profiles_are_held_to_their_limits() {
    let server = TestServer::start().await;
    let alice = server.client("alice").await;
    for (req, limit) in [
        (
            pb::SetProfile {
                display_name: Some("x".repeat(129)),
                ..Default::default()
            },
            "max_display_name_bytes",
        ),
        (
            pb::SetProfile {
                avatar_url: Some("x".repeat(1025)),
                ..Default::default()
            },
            "max_avatar_url_bytes",
        ),
        (
            pb::SetProfile {
                set_fields: [("k".to_string(), "v".repeat(1024))].into(),
                ..Default::default()
            },
            "max_profile_fields_bytes",
        ),
    ] {
        let err = within(alice.set_profile(req)).await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::ErrorLimitExceeded));
        assert!(err.to_string().contains(limit), "{err}");
    }
    let got = within(alice.get_profiles(&["alice"])).await.unwrap();
    assert_eq!(got[0].updated_at, 0, "nothing was stored");
}

/// Profile display names, avatar URLs and field keys follow the rule of conversation names.
#[tokio::test]
async fn profile_text_refuses_control_bidi_and_format_characters() {
    let server = TestServer::start().await;
    let alice = server.client("alice").await;
    for bad in crate::conversations::BAD_NAMES {
        for req in [
            pb::SetProfile {
                display_name: Some((*bad).into()),
                ..Default::default()
            },
            pb::SetProfile {
                avatar_url: Some(format!("https://example.com/{bad}.png")),
                ..Default::default()
            },
            pb::SetProfile {
                set_fields: [((*bad).to_string(), "v".to_string())].into(),
                ..Default::default()
            },
        ] {
            let shown = format!("{req:?}");
            assert_eq!(
                code(alice.set_profile(req)).await,
                ErrorCode::ErrorInvalidArgument,
                "{shown}"
            );
        }
    }
    let got = within(alice.get_profiles(&["alice"])).await.unwrap();
    assert!(got[0].display_name.is_empty() && got[0].fields.is_empty());
    for good in crate::conversations::GOOD_NAMES {
        let p = within(alice.set_profile(pb::SetProfile {
            display_name: Some((*good).into()),
            set_fields: [("nick".to_string(), "a\0\u{202e}b".to_string())].into(),
            ..Default::default()
        }))
        .await
        .unwrap();
        assert_eq!(p.display_name, *good);
    }
}
