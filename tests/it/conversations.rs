//! Creating conversations, membership changes and their events, who may do what.

use crate::harness::*;
use tidings::protocol::pb::{self, ConversationEventKind as Ev, ConversationKind, ErrorCode};

fn kind(e: &pb::ConversationEvent) -> Ev {
    Ev::try_from(e.kind).unwrap()
}

#[tokio::test]
async fn a_direct_conversation_is_unique_per_pair() {
    let server = TestServer::start().await;
    let alice = server.client("alice").await;
    let mut bob = server.client("bob").await;

    let c1 = within(alice.create_direct("bob")).await.unwrap();
    assert_eq!(c1.kind, ConversationKind::Direct as i32);
    assert_eq!(c1.members, vec!["alice", "bob"]);
    assert_eq!(c1.member_count, 2);
    let created = event(&mut bob).await;
    assert_eq!(kind(&created), Ev::Created);
    assert_eq!(created.conversation_id, c1.id);
    assert_eq!(created.by, "alice");
    assert!(created.user_seq > 0, "creation is logged for the invitee");

    // Again, from either side: the same conversation, and no second event.
    assert_eq!(within(alice.create_direct("bob")).await.unwrap().id, c1.id);
    assert_eq!(within(bob.create_direct("alice")).await.unwrap().id, c1.id);
    assert_no_push(&mut bob).await;

    // A different pair is a different conversation.
    assert_ne!(
        within(alice.create_direct("carol")).await.unwrap().id,
        c1.id
    );

    for members in [
        vec![],
        vec!["alice".to_string()],
        vec!["bob".into(), "carol".into()],
    ] {
        let err = within(alice.create(pb::CreateConversation {
            kind: ConversationKind::Direct as i32,
            members,
            ..Default::default()
        }))
        .await
        .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::ErrorInvalidArgument));
    }
}

#[tokio::test]
async fn concurrent_direct_creates_give_one_conversation() {
    let server = TestServer::start().await;
    let alice = server.client("alice").await;
    let bob = server.client("bob").await;
    let (a, b) = tokio::join!(alice.create_direct("bob"), bob.create_direct("alice"));
    assert_eq!(a.unwrap().id, b.unwrap().id);
}

#[tokio::test]
async fn group_create_events_reach_online_members_now_and_offline_members_at_login() {
    let server = TestServer::start().await;
    let (alice, _) = server.login_device("alice", "phone", 0).await;
    let (mut alice_web, _) = server.login_device("alice", "web", 0).await;
    let mut bob = server.client("bob").await;

    let mut attrs = std::collections::BTreeMap::new();
    attrs.insert("topic".to_string(), "launch".to_string());
    let g = within(alice.create(pb::CreateConversation {
        kind: ConversationKind::Group as i32,
        members: vec!["bob".into(), "carol".into(), "bob".into()],
        name: "team".into(),
        attributes: attrs.clone(),
        ..Default::default()
    }))
    .await
    .unwrap();
    assert_eq!(g.kind, ConversationKind::Group as i32);
    assert_eq!(g.name, "team");
    assert_eq!(g.attributes, attrs);
    assert_eq!(g.owner, "alice");
    assert_eq!(
        g.member_count, 3,
        "duplicates are merged, the creator included"
    );

    for c in [&mut bob, &mut alice_web] {
        let e = event(c).await;
        assert_eq!(kind(&e), Ev::Created);
        assert_eq!(e.conversation.as_ref().unwrap().name, "team");
    }
    assert_no_push(&mut bob).await;

    // carol was offline: the create event is waiting for her next login.
    let (_carol, w) = server.login("carol").await;
    assert_eq!(w.events.len(), 1);
    assert_eq!(kind(&w.events[0]), Ev::Created);
    assert_eq!(w.events[0].conversation_id, g.id);
    assert_eq!(w.ok.event_cursor, w.events[0].user_seq);
    assert_eq!(w.unread(&g.id).map(|e| e.unread), Some(0));

    // A device that already saw it does not get it again.
    let (_carol2, w2) = server
        .login_device("carol", "tablet", w.ok.event_cursor)
        .await;
    assert!(w2.events.is_empty());
}

#[tokio::test]
async fn membership_changes_and_their_events() {
    let server = TestServer::start().await;
    let alice = server.client("alice").await;
    let (mut bob, _) = server.login_device("bob", "phone", 0).await;
    let (mut bob_web, _) = server.login_device("bob", "web", 0).await;
    let mut carol = server.client("carol").await;

    let g = within(alice.create_group("g", &["bob"])).await.unwrap();
    event(&mut bob).await;
    event(&mut bob_web).await;

    // Add: the new member gets a logged event, the others a live one.
    let after = within(alice.add_members(&g.id, &["carol", "bob"]))
        .await
        .unwrap();
    assert_eq!(after.member_count, 3);
    let e = event(&mut carol).await;
    assert_eq!(
        (kind(&e), e.members.clone()),
        (Ev::MembersAdded, vec!["carol".to_string()])
    );
    assert!(e.user_seq > 0);
    let e = event(&mut bob).await;
    assert_eq!((kind(&e), e.user_seq), (Ev::MembersAdded, 0));
    event(&mut bob_web).await;
    assert_eq!(within(bob.count_members(&g.id)).await.unwrap(), 3);

    // Only the owner removes others.
    let err = within(bob.remove_members(&g.id, &["carol"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::ErrorPermissionDenied));
    let err = within(alice.remove_members(&g.id, &["zed"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::ErrorInvalidArgument));
    within(alice.remove_members(&g.id, &["carol"]))
        .await
        .unwrap();
    let e = event(&mut carol).await;
    assert_eq!(
        (kind(&e), e.members.clone()),
        (Ev::MembersRemoved, vec!["carol".to_string()])
    );
    assert_eq!(kind(&event(&mut bob).await), Ev::MembersRemoved);
    event(&mut bob_web).await;
    let err = within(carol.get_conversation(&g.id)).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::ErrorNotAMember));

    // Any member updates name and attributes; the others hear of it.
    let updated = within(bob.update(pb::UpdateConversation {
        conversation_id: g.id.clone(),
        name: Some("renamed".into()),
        set_attributes: [("k".to_string(), "v".to_string())].into(),
        remove_attributes: vec![],
    }))
    .await
    .unwrap();
    assert_eq!(updated.name, "renamed");
    let mut alice = alice;
    let e = event(&mut alice).await;
    assert_eq!(kind(&e), Ev::Updated);
    assert_eq!(
        e.conversation
            .unwrap()
            .attributes
            .get("k")
            .map(String::as_str),
        Some("v")
    );
    assert_eq!(kind(&event(&mut bob_web).await), Ev::Updated);
    assert_no_push(&mut bob).await;

    // Mute is per user, and the user's other devices are told.
    within(bob.set_muted(&g.id, true)).await.unwrap();
    assert!(within(bob.get_conversation(&g.id)).await.unwrap().muted);
    assert!(!within(alice.get_conversation(&g.id)).await.unwrap().muted);
    let e = event(&mut bob_web).await;
    assert_eq!(kind(&e), Ev::Muted);
    assert!(e.conversation.unwrap().muted);

    // The owner leaves: ownership passes to the longest-standing member.
    within(alice.leave(&g.id)).await.unwrap();
    let e = event(&mut bob).await;
    assert_eq!(
        (kind(&e), e.members.clone()),
        (Ev::Left, vec!["alice".to_string()])
    );
    assert_eq!(e.conversation.unwrap().owner, "bob");
    assert_eq!(
        within(bob.get_conversation(&g.id)).await.unwrap().owner,
        "bob"
    );
    assert_eq!(
        within(alice.send_text(&g.id, "hi"))
            .await
            .unwrap_err()
            .code(),
        Some(ErrorCode::ErrorNotAMember)
    );

    // Direct conversations have fixed members.
    let d = within(bob.create_direct("carol")).await.unwrap();
    for err in [
        within(bob.add_members(&d.id, &["dave"])).await.unwrap_err(),
        within(bob.remove_members(&d.id, &["carol"]))
            .await
            .unwrap_err(),
        within(bob.leave(&d.id)).await.unwrap_err(),
    ] {
        assert_eq!(err.code(), Some(ErrorCode::ErrorNotAllowedForKind), "{err}");
    }
}

#[tokio::test]
async fn member_lists_page_with_a_cursor() {
    let server = TestServer::start().await;
    let owner = server.client("owner").await;
    let others: Vec<String> = (0..24).map(|i| format!("user{i:02}")).collect();
    let refs: Vec<&str> = others.iter().map(String::as_str).collect();
    let g = within(owner.create_group("big", &refs)).await.unwrap();
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = within(owner.list_members(&g.id, &cursor, 10))
            .await
            .unwrap();
        assert!(page.members.len() <= 10);
        seen.extend(page.members);
        if !page.has_more {
            break;
        }
        cursor = page.next_cursor;
    }
    let mut expected: Vec<String> = others.clone();
    expected.push("owner".into());
    expected.sort();
    assert_eq!(seen, expected);
    let err = within(owner.list_members(&g.id, "", 5000))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::ErrorLimitExceeded));
}

#[tokio::test]
async fn non_members_are_refused_everything() {
    let server = TestServer::start().await;
    let alice = server.client("alice").await;
    let mut eve = server.client("eve").await;
    let g = within(alice.create_group("private", &["bob"]))
        .await
        .unwrap();
    within(alice.send_text(&g.id, "secret")).await.unwrap();

    let id = g.id.as_str();
    let errors = vec![
        within(eve.get_conversation(id)).await.unwrap_err(),
        within(eve.send_text(id, "let me in")).await.unwrap_err(),
        within(eve.sync(id, 0, 10)).await.unwrap_err(),
        within(eve.history(id, 0, 10)).await.unwrap_err(),
        within(eve.add_members(id, &["eve"])).await.unwrap_err(),
        within(eve.mark_read(id, 1)).await.unwrap_err(),
        within(eve.count_members(id)).await.unwrap_err(),
        within(eve.list_members(id, "", 0)).await.unwrap_err(),
        within(eve.set_muted(id, true)).await.unwrap_err(),
        within(eve.leave(id)).await.unwrap_err(),
    ];
    for e in errors {
        assert_eq!(e.code(), Some(ErrorCode::ErrorNotAMember), "{e}");
    }
    for bad in ["0000000000000999", "nonsense", ""] {
        let e = within(eve.get_conversation(bad)).await.unwrap_err();
        assert_eq!(
            e.code(),
            Some(ErrorCode::ErrorConversationNotFound),
            "{bad}"
        );
    }
    assert_no_push(&mut eve).await;
}

#[tokio::test]
async fn limits_are_errors_that_name_the_limit() {
    let server = TestServer::start_with(|c| {
        c.max_group_members = 3;
        c.max_message_bytes = 1000;
        c.max_name_bytes = 10;
    })
    .await;
    let alice = server.client("alice").await;
    let err = within(alice.create_group("g", &["b", "c", "d"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::ErrorLimitExceeded));
    assert!(err.to_string().contains("max_group_members"), "{err}");
    let err = within(alice.create_group("a very long name", &["b"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::ErrorLimitExceeded));
    let g = within(alice.create_group("g", &["b", "c"])).await.unwrap();
    let err = within(alice.add_members(&g.id, &["d"])).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::ErrorLimitExceeded));
    let err = within(alice.send_text(&g.id, &"x".repeat(1001)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::ErrorMessageTooLarge));
    let err = within(alice.sync(&g.id, 0, 101)).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::ErrorLimitExceeded));
    let err = within(alice.create(pb::CreateConversation {
        kind: 99,
        ..Default::default()
    }))
    .await
    .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::ErrorInvalidArgument));
    within(alice.send_text(&g.id, &"x".repeat(1000)))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_unique_group_of_the_same_members_is_found_again_also_after_a_restart() {
    let mut server = TestServer::start().await;
    let alice = server.client("alice").await;
    let unique = |members: &[&str]| pb::CreateConversation {
        kind: ConversationKind::Group as i32,
        members: members.iter().map(|m| m.to_string()).collect(),
        name: "team".into(),
        unique: true,
        ..Default::default()
    };
    let first = within(alice.create(unique(&["bob", "carol"])))
        .await
        .unwrap();
    assert!(first.unique);
    // Same members (order and the creator named or not do not matter): the same group.
    let again = within(alice.create(unique(&["carol", "bob", "alice"])))
        .await
        .unwrap();
    assert_eq!(again.id, first.id);
    // A plain create, or another member set, makes a new group.
    let plain = within(alice.create_group("team", &["bob", "carol"]))
        .await
        .unwrap();
    assert_ne!(plain.id, first.id);
    assert!(!plain.unique);
    let other = within(alice.create(unique(&["bob"]))).await.unwrap();
    assert_ne!(other.id, first.id);

    // Another member asking for the same set finds it too, after a restart.
    server.restart().await;
    let bob = server.client("bob").await;
    let from_bob = within(bob.create(unique(&["alice", "carol"])))
        .await
        .unwrap();
    assert_eq!(from_bob.id, first.id);
    // Once a member left, the set differs: a new unique group.
    let carol = server.client("carol").await;
    within(carol.leave(&first.id)).await.unwrap();
    let alice = server.client("alice").await;
    let after = within(alice.create(unique(&["bob", "carol"])))
        .await
        .unwrap();
    assert_ne!(after.id, first.id);
}

/// Names other members are shown as text, with the bidi override that shows `gnp.exe` as
/// `exe.png`, NUL, line breaks and invisible characters: refused like in user ids.
pub const BAD_NAMES: &[&str] = &[
    "a\0b",
    "evil\u{202e}gnp.exe",
    "line\nbreak",
    "tab\there",
    "\u{1b}[31mred",
    "zero\u{200b}width",
    "\u{feff}bom",
    "a\u{2066}b\u{2069}",
    "rtl\u{200f}mark",
    "line\u{2028}separator",
];

/// Names in every script, with emoji sequences (zero-width joiners, variation selectors, tag
/// characters) and the zero-width non-joiner Persian needs: accepted.
pub const GOOD_NAMES: &[&str] = &[
    "Team 🚀",
    "👩‍👩‍👧 family",
    "❤️ love",
    "🏴\u{e0067}\u{e0062}\u{e0073}\u{e0063}\u{e0074}\u{e007f} Scotland",
    "می\u{200c}خواهم",
    "مرحبا שלום",
    "東京 チーム",
    "",
];

#[tokio::test]
async fn names_and_attribute_keys_refuse_control_bidi_and_format_characters() {
    let server = TestServer::start().await;
    let alice = server.client("alice").await;
    let g = within(alice.create_group("plain", &["bob"])).await.unwrap();
    let refused = |e: tidings::client::ClientError, what: &str| {
        assert_eq!(
            e.code(),
            Some(ErrorCode::ErrorInvalidArgument),
            "{what}: {e}"
        );
        assert!(e.to_string().contains("U+"), "{what}: {e}");
    };
    for bad in BAD_NAMES {
        let e = within(alice.create_group(bad, &["bob"])).await.unwrap_err();
        refused(e, &format!("create {bad:?}"));
        let e = within(alice.update(pb::UpdateConversation {
            conversation_id: g.id.clone(),
            name: Some((*bad).into()),
            ..Default::default()
        }))
        .await
        .unwrap_err();
        refused(e, &format!("rename {bad:?}"));
        let e = within(alice.update(pb::UpdateConversation {
            conversation_id: g.id.clone(),
            set_attributes: [((*bad).to_string(), "v".to_string())].into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
        refused(e, &format!("attribute key {bad:?}"));
        let e = within(alice.create(pb::CreateConversation {
            kind: ConversationKind::Group as i32,
            members: vec!["bob".into()],
            attributes: [((*bad).to_string(), "v".to_string())].into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
        refused(e, &format!("create with attribute key {bad:?}"));
    }
    // Nothing changed.
    let now = within(alice.get_conversation(&g.id)).await.unwrap();
    assert_eq!(now.name, "plain");
    assert!(now.attributes.is_empty());

    for good in GOOD_NAMES {
        let c = within(alice.create_group(good, &["bob"])).await.unwrap();
        assert_eq!(c.name, *good);
        let c = within(alice.update(pb::UpdateConversation {
            conversation_id: g.id.clone(),
            name: Some((*good).into()),
            // Values are the app's data: anything goes.
            set_attributes: [((*good).to_string(), "a\0\u{202e}b".to_string())].into(),
            ..Default::default()
        }))
        .await
        .unwrap();
        assert_eq!(c.name, *good);
    }
}

/// A change naming many users logs each of them a copy of its event that names only that user
/// and carries no attributes, so what one user's log keeps (and a new device replays) does not
/// grow with the request. The members told live get the event whole.
#[tokio::test]
async fn each_logged_copy_of_a_membership_event_names_only_its_user() {
    use prost::Message as _;
    let server = TestServer::start().await;
    let alice = server.client("alice").await;
    let (mut bob, _) = server.login_device("bob", "phone", 0).await;
    let names: Vec<String> = (0..40).map(|n| format!("user-{n:0>95}")).collect();
    let (first, later): (Vec<&str>, Vec<&str>) = {
        let all: Vec<&str> = names.iter().map(String::as_str).collect();
        (all[..20].to_vec(), all[20..].to_vec())
    };
    let attributes: std::collections::BTreeMap<String, String> =
        [("note".to_string(), "v".repeat(4000))].into();
    let mut members: Vec<String> = first.iter().map(|m| m.to_string()).collect();
    members.push("bob".into());
    let g = within(alice.create(pb::CreateConversation {
        kind: ConversationKind::Group as i32,
        members,
        name: "big".into(),
        attributes: attributes.clone(),
        ..Default::default()
    }))
    .await
    .unwrap();
    assert_eq!(g.attributes, attributes);
    let created = event(&mut bob).await;
    assert_eq!(kind(&created), Ev::Created);

    within(alice.add_members(&g.id, &later)).await.unwrap();
    let added = event(&mut bob).await;
    assert_eq!(kind(&added), Ev::MembersAdded);
    assert_eq!(added.members, later, "a member told live hears whom");
    assert_eq!(added.conversation.unwrap().attributes, attributes);
    within(alice.remove_members(&g.id, &later)).await.unwrap();
    let removed = event(&mut bob).await;
    assert_eq!(kind(&removed), Ev::MembersRemoved);
    assert_eq!(removed.members, later);

    // What the request named (2,000 bytes of ids and 4,000 of attributes) is in no copy.
    let small = |e: &pb::ConversationEvent| {
        assert!(
            e.conversation.as_ref().unwrap().attributes.is_empty(),
            "{e:?}"
        );
        assert!(e.encoded_len() < 1000, "{} bytes", e.encoded_len());
    };
    let (_created, w) = server.login_device(first[3], "new", 0).await;
    assert_eq!(w.events.len(), 1);
    assert_eq!(kind(&w.events[0]), Ev::Created);
    assert_eq!(w.events[0].conversation.as_ref().unwrap().name, "big");
    small(&w.events[0]);
    let (_added, w) = server.login_device(later[7], "new", 0).await;
    let kinds: Vec<Ev> = w.events.iter().map(kind).collect();
    assert_eq!(kinds, [Ev::MembersAdded, Ev::MembersRemoved]);
    for e in &w.events {
        assert_eq!(e.members, [later[7]], "the copy names its own user only");
        assert_eq!(e.by, "alice");
        small(e);
    }
    // Bob's copy of the create carries no attributes either; the conversation has them.
    small(&created);
    let got = within(bob.get_conversation(&g.id)).await.unwrap();
    assert_eq!(got.attributes, attributes);
}
