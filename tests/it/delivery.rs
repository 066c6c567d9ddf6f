//! Messages reach every device of every member, in order, once; offline members catch up.

use crate::harness::*;
use bytes::Bytes;
use std::collections::HashSet;
use tidings::protocol::pb::{self, server_frame::Body as Rep};

#[tokio::test]
async fn direct_and_group_messages_reach_every_device() {
    let server = TestServer::start().await;
    let (mut alice_phone, _) = server.login_device("alice", "phone", 0).await;
    let (mut alice_web, _) = server.login_device("alice", "web", 0).await;
    let (mut bob_phone, _) = server.login_device("bob", "phone", 0).await;
    let (mut bob_web, _) = server.login_device("bob", "web", 0).await;

    let d = within(alice_phone.create_direct("bob")).await.unwrap();
    for c in [&mut alice_web, &mut bob_phone, &mut bob_web] {
        event(c).await;
    }
    let ack = within(alice_phone.send_text(&d.id, "hello bob"))
        .await
        .unwrap();
    assert_eq!(ack.seq, 1);
    assert!(!ack.message_id.is_empty());
    assert!(ack.server_time > 0);
    for c in [&mut bob_phone, &mut bob_web, &mut alice_web] {
        let m = message(c).await;
        assert_eq!(
            (m.seq, m.sender.as_str(), text(&m)),
            (1, "alice", "hello bob".into())
        );
        assert_eq!(m.id, ack.message_id);
        assert_eq!(m.conversation_id, d.id);
    }
    // The sending device gets the ack, not a copy.
    assert_no_push(&mut alice_phone).await;

    let mut carol = server.client("carol").await;
    let g = within(carol.create_group("g", &["alice", "bob"]))
        .await
        .unwrap();
    for c in [
        &mut alice_phone,
        &mut alice_web,
        &mut bob_phone,
        &mut bob_web,
    ] {
        event(c).await;
    }
    let sent = within(carol.send(pb::SendMessage {
        conversation_id: g.id.clone(),
        r#type: 7,
        content: Bytes::from_static(b"\x00binary\xff"),
        attributes: [("a".to_string(), "b".to_string())].into(),
        mentions: vec!["bob".into()],
        ..Default::default()
    }))
    .await
    .unwrap();
    for c in [
        &mut alice_phone,
        &mut alice_web,
        &mut bob_phone,
        &mut bob_web,
    ] {
        let m = message(c).await;
        assert_eq!(m.seq, sent.seq);
        assert_eq!(m.r#type, 7);
        assert_eq!(&m.content[..], b"\x00binary\xff");
        assert_eq!(m.attributes.get("a").map(String::as_str), Some("b"));
        assert_eq!(m.mentions, vec!["bob"]);
    }
    assert_no_push(&mut carol).await;
}

#[tokio::test]
async fn an_offline_member_catches_up_in_order_with_exact_unread_counts() {
    let server = TestServer::start().await;
    let alice = server.client("alice").await;
    let g = within(alice.create_group("g", &["bob"])).await.unwrap();
    let d = within(alice.create_direct("bob")).await.unwrap();
    for i in 1..=30 {
        within(alice.send_text(&g.id, &format!("g{i}")))
            .await
            .unwrap();
    }
    for i in 1..=5 {
        within(alice.send_text(&d.id, &format!("d{i}")))
            .await
            .unwrap();
    }

    // bob was never online: his summary tells where everything stands.
    let (bob_phone, w) = server.login_device("bob", "phone", 0).await;
    let ge = w.unread(&g.id).expect("group in summary");
    assert_eq!((ge.unread, ge.last_seq, ge.read_seq), (30, 30, 0));
    assert_eq!(text(ge.last_message.as_ref().unwrap()), "g30");
    let de = w.unread(&d.id).expect("direct in summary");
    assert_eq!((de.unread, de.last_seq), (5, 5));
    // The sender's own messages are not unread for her.
    let (_a2, aw) = server.login_device("alice", "tablet", 0).await;
    assert_eq!(aw.unread(&g.id).unwrap().unread, 0);

    // Catch-up: every message once, in order, paging by seq.
    let all = within(bob_phone.sync_all(&g.id, 0)).await.unwrap();
    assert_eq!(
        all.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (1..=30).collect::<Vec<_>>()
    );
    assert_eq!(
        all.iter().map(text).collect::<Vec<_>>(),
        (1..=30).map(|i| format!("g{i}")).collect::<Vec<_>>()
    );
    // A device that had seen up to 10 gets exactly the rest.
    let rest = within(bob_phone.sync_all(&g.id, 10)).await.unwrap();
    assert_eq!(rest.first().map(|m| m.seq), Some(11));
    assert_eq!(rest.len(), 20);
    let page = within(bob_phone.sync(&g.id, 0, 7)).await.unwrap();
    assert_eq!((page.messages.len(), page.has_more), (7, true));

    // History: the newest page first, returned in ascending seq, with has_more.
    let h = within(bob_phone.history(&g.id, 0, 5)).await.unwrap();
    assert_eq!(
        h.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![26, 27, 28, 29, 30]
    );
    assert!(h.has_more);
    let h = within(bob_phone.history(&g.id, 3, 5)).await.unwrap();
    assert_eq!(
        h.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert!(!h.has_more);

    // Reading moves the count for every device.
    let (mut bob_web, _) = server.login_device("bob", "web", 0).await;
    within(bob_phone.mark_read(&g.id, 25)).await.unwrap();
    match push(&mut bob_web).await {
        Rep::ReadPosition(r) => assert_eq!(
            (r.conversation_id, r.read_seq, r.unread),
            (g.id.clone(), 25, 5)
        ),
        other => panic!("expected read position, got {other:?}"),
    }
    within(bob_phone.mark_read(&g.id, 3)).await.unwrap(); // backwards: no-op
    within(bob_phone.mark_read(&g.id, 1000)).await.unwrap(); // clamped to 30
    match push(&mut bob_web).await {
        Rep::ReadPosition(r) => assert_eq!((r.read_seq, r.unread), (30, 0)),
        other => panic!("expected read position, got {other:?}"),
    }
    assert_no_push(&mut bob_web).await;
    within(alice.send_text(&g.id, "one more")).await.unwrap();
    message(&mut bob_web).await;
    let (_b3, w3) = server.login_device("bob", "tablet", 0).await;
    assert_eq!(w3.unread(&g.id).unwrap().unread, 1);
    assert_eq!(w3.unread(&d.id).unwrap().unread, 5);
}

#[tokio::test]
async fn a_retry_with_the_same_client_id_returns_the_first_result() {
    let server = TestServer::start().await;
    let alice = server.client("alice").await;
    let mut bob = server.client("bob").await;
    let d = within(alice.create_direct("bob")).await.unwrap();
    event(&mut bob).await;
    let msg = |cid: &str| pb::SendMessage {
        conversation_id: d.id.clone(),
        client_message_id: cid.into(),
        content: Bytes::from_static(b"once"),
        ..Default::default()
    };

    let first = within(alice.send(msg("c-1"))).await.unwrap();
    assert!(!first.duplicate);
    let again = within(alice.send(msg("c-1"))).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(
        (again.seq, &again.message_id, again.server_time),
        (first.seq, &first.message_id, first.server_time)
    );

    // Concurrent retries, all in flight at once: one stored copy.
    let acks = within(futures_util::future::join_all(
        (0..6).map(|_| alice.send(msg("c-2"))),
    ))
    .await;
    let acks: Vec<_> = acks.into_iter().map(Result::unwrap).collect();
    assert!(
        acks.iter()
            .all(|a| a.seq == acks[0].seq && a.message_id == acks[0].message_id)
    );
    assert_eq!(acks.iter().filter(|a| !a.duplicate).count(), 1);

    // The same client id from another sender is another message.
    let from_bob = within(bob.send(msg("c-1"))).await.unwrap();
    assert!(!from_bob.duplicate);

    let seqs: Vec<u64> = vec![message(&mut bob).await.seq, message(&mut bob).await.seq];
    assert_eq!(seqs, vec![1, 2]);
    assert_no_push(&mut bob).await;
    let all = within(alice.sync_all(&d.id, 0)).await.unwrap();
    assert_eq!(all.len(), 3);
}

#[tokio::test]
async fn eight_concurrent_senders_get_gapless_seqs_and_everyone_sees_one_order() {
    const SENDERS: usize = 8;
    const EACH: usize = 40;
    let server = TestServer::start().await;
    let names: Vec<String> = (0..SENDERS).map(|i| format!("sender{i}")).collect();
    let owner = server.client("listener0").await;
    let mut members: Vec<&str> = names.iter().map(String::as_str).collect();
    members.push("listener1");
    let g = within(owner.create_group("busy", &members)).await.unwrap();
    let mut listeners = vec![owner, server.client("listener1").await];

    let mut tasks = Vec::new();
    for name in &names {
        let client = server.client(name).await;
        let id = g.id.clone();
        let name = name.clone();
        tasks.push(tokio::spawn(async move {
            let texts: Vec<String> = (0..EACH).map(|i| format!("{name}:{i}")).collect();
            let sends = texts.iter().map(|t| client.send_text(&id, t));
            futures_util::future::join_all(sends)
                .await
                .into_iter()
                .map(|r| r.unwrap().seq)
                .collect::<Vec<_>>()
        }));
    }
    let mut acked: Vec<u64> = Vec::new();
    for t in tasks {
        acked.extend(within(t).await.unwrap());
    }
    acked.sort_unstable();
    let total = (SENDERS * EACH) as u64;
    assert_eq!(
        acked,
        (1..=total).collect::<Vec<_>>(),
        "acked seqs are gapless and unique"
    );

    let mut orders = Vec::new();
    for l in &mut listeners {
        let mut got = Vec::new();
        while got.len() < total as usize {
            match push(l).await {
                Rep::Message(m) => got.push((m.seq, text(&m))),
                Rep::ConversationEvent(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(
            got.iter().map(|g| g.0).collect::<Vec<_>>(),
            (1..=total).collect::<Vec<_>>()
        );
        orders.push(got);
    }
    assert_eq!(orders[0], orders[1], "every member sees the same order");
    // Every message arrived exactly once.
    let distinct: HashSet<_> = orders[0].iter().map(|g| g.1.clone()).collect();
    assert_eq!(distinct.len(), total as usize);
}

#[tokio::test]
async fn transient_messages_reach_online_members_only_and_are_not_stored() {
    let server = TestServer::start().await;
    let alice = server.client("alice").await;
    let mut bob = server.client("bob").await;
    let g = within(alice.create_group("g", &["bob", "carol"]))
        .await
        .unwrap();
    event(&mut bob).await;
    let ack = within(alice.send(pb::SendMessage {
        conversation_id: g.id.clone(),
        content: Bytes::from_static(b"typing"),
        transient: true,
        ..Default::default()
    }))
    .await
    .unwrap();
    assert_eq!(ack.seq, 0);
    let m = message(&mut bob).await;
    assert!(m.transient);
    assert_eq!((m.seq, text(&m)), (0, "typing".into()));
    assert!(
        within(alice.history(&g.id, 0, 10))
            .await
            .unwrap()
            .messages
            .is_empty()
    );
    let (carol, w) = server.login("carol").await;
    assert_eq!(w.unread(&g.id).unwrap().unread, 0);
    assert!(within(carol.sync_all(&g.id, 0)).await.unwrap().is_empty());
    // The next stored message still gets seq 1.
    assert_eq!(
        within(alice.send_text(&g.id, "stored")).await.unwrap().seq,
        1
    );
}

/// On one connection, the ack of a send goes out before the push of any later message of the
/// conversation: a client never sees seq n+1 arrive while its own n is still unacknowledged
/// (which would look like a gap). Two members send into one group at once, many messages in
/// flight each; the raw frame order on one of them is checked.
#[tokio::test]
async fn a_send_is_acked_before_any_later_message_of_the_conversation_is_pushed() {
    const EACH: usize = 300;
    const WINDOW: usize = 16;
    let server = TestServer::start().await;
    let bob = server.client("bob").await;
    let g = within(bob.create_group("race", &["alice"])).await.unwrap();
    let mut alice = Raw::login(&server, "alice").await;

    let id = g.id.clone();
    let other = tokio::spawn(async move {
        let texts: Vec<String> = (0..EACH).map(|i| format!("b{i}")).collect();
        for chunk in texts.chunks(WINDOW) {
            let sends = chunk.iter().map(|t| bob.send_text(&id, t));
            for r in futures_util::future::join_all(sends).await {
                r.unwrap();
            }
        }
    });

    let send = |i: usize| {
        pb::client_frame::Body::SendMessage(pb::SendMessage {
            conversation_id: g.id.clone(),
            client_message_id: format!("a{i}"),
            r#type: 1,
            content: Bytes::from(format!("a{i}")),
            ..Default::default()
        })
    };
    let (mut sent, mut acked) = (0, 0);
    let mut pushed = 0;
    // The highest seq pushed so far, and every ack's seq with the highest push seen before it.
    let mut highest_push = 0;
    let mut acks = Vec::new();
    while sent < WINDOW {
        alice.send(send(sent)).await;
        sent += 1;
    }
    while acked < EACH || pushed < EACH {
        let f = alice.read().await;
        match f.body {
            Some(Rep::SendAck(a)) => {
                acks.push((a.seq, highest_push));
                acked += 1;
                if sent < EACH {
                    alice.send(send(sent)).await;
                    sent += 1;
                }
            }
            Some(Rep::Message(m)) => {
                highest_push = highest_push.max(m.seq);
                pushed += 1;
            }
            Some(Rep::Error(e)) => panic!("send refused: {e:?}"),
            _ => {}
        }
    }
    within(other).await.unwrap();
    let late: Vec<_> = acks.iter().filter(|(seq, seen)| seen > seq).collect();
    assert!(
        late.is_empty(),
        "acks that came after a push of a later message (seq, highest push before it): {late:?}"
    );
    assert_eq!(acks.len(), EACH);
}

/// A delivery step that overlaps a login may push a message the login's unread summary
/// already counted: the session does not get it again.
#[tokio::test]
async fn a_push_repeating_what_the_login_summary_counted_is_skipped() {
    use tidings::hub::{Delivery, Recipients};
    let server = TestServer::start().await;
    let alice = server.client("alice").await;
    let g = within(alice.create_group("g", &["bob"])).await.unwrap();
    within(alice.send_text(&g.id, "one")).await.unwrap();
    let one = within(alice.history(&g.id, 0, 10)).await.unwrap().messages[0].clone();

    // Bob logs in while a delivery step is under way; the step then hands out the message his
    // summary counts.
    let hub = &server.running().app.hub;
    hub.step_begins();
    let (mut bob, welcome) = server.login("bob").await;
    assert_eq!(welcome.unread(&g.id).map(|e| e.last_seq), Some(1));
    hub.deliver(&Delivery {
        to: Recipients::User("bob".into()),
        frame: tidings::protocol::message_push_from_encoded(
            &prost::Message::encode_to_vec(&one),
            pb::ConversationKind::Group,
        ),
        user_seq: 0,
        except_session: 0,
    });
    hub.step_ends();

    // What bob gets next is the next message, not the repeat.
    within(alice.send_text(&g.id, "two")).await.unwrap();
    let m = message(&mut bob).await;
    assert_eq!((text(&m), m.seq), ("two".to_owned(), 2));
}

/// A conversation's messages find its members' sessions as they are at each send: sessions
/// that log in, replace another or join between two messages get the later one.
#[tokio::test]
async fn each_message_reaches_the_sessions_live_when_it_is_sent() {
    let server = TestServer::start().await;
    let alice = server.client("alice").await;
    let (mut bob_phone, _) = server.login_device("bob", "phone", 0).await;
    let g = within(alice.create_group("g", &["bob", "carol"]))
        .await
        .unwrap();
    event(&mut bob_phone).await;
    within(alice.send_text(&g.id, "one")).await.unwrap();
    assert_eq!(text(&message(&mut bob_phone).await), "one");

    // Logged in after the first message.
    let (mut bob_web, _) = server.login_device("bob", "web", 0).await;
    let (mut carol, _) = server.login_device("carol", "phone", 0).await;
    within(alice.send_text(&g.id, "two")).await.unwrap();
    for c in [&mut bob_phone, &mut bob_web, &mut carol] {
        assert_eq!(text(&message(c).await), "two");
    }

    // A new phone session replaces the old one.
    let (mut bob_phone2, _) = server.login_device("bob", "phone", 0).await;
    within(alice.send_text(&g.id, "three")).await.unwrap();
    for c in [&mut bob_phone2, &mut bob_web, &mut carol] {
        assert_eq!(text(&message(c).await), "three");
    }

    // A member added after the messages so far.
    let (mut dave, _) = server.login_device("dave", "phone", 0).await;
    within(alice.add_members(&g.id, &["dave"])).await.unwrap();
    event(&mut dave).await;
    for c in [&mut bob_phone2, &mut bob_web, &mut carol] {
        event(c).await;
    }
    within(alice.send_text(&g.id, "four")).await.unwrap();
    for c in [&mut bob_phone2, &mut bob_web, &mut carol, &mut dave] {
        assert_eq!(text(&message(c).await), "four");
    }
}

/// Frames of every length a WebSocket header can state (7 bits, 16 bits, 64 bits) reach the
/// recipient whole and in order, in one burst when they are queued together.
#[tokio::test]
async fn pushes_of_every_frame_length_arrive_whole() {
    let server = TestServer::start().await;
    let alice = server.client("alice").await;
    let (mut bob, _) = server.login_device("bob", "phone", 0).await;
    let g = within(alice.create_group("g", &["bob"])).await.unwrap();
    event(&mut bob).await;
    let sizes = [0, 1, 40, 60, 125, 126, 200, 65_000, 65_400, 65_536];
    let sends = sizes.map(|n| {
        alice.send(pb::SendMessage {
            conversation_id: g.id.clone(),
            content: Bytes::from(vec![b'x'; n]),
            ..Default::default()
        })
    });
    for ack in futures_util::future::join_all(sends).await {
        ack.unwrap();
    }
    let mut got = Vec::new();
    for _ in sizes {
        let m = message(&mut bob).await;
        assert!(m.content.iter().all(|&b| b == b'x'));
        got.push((m.seq, m.content.len()));
    }
    let seqs: Vec<u64> = got.iter().map(|&(s, _)| s).collect();
    assert_eq!(
        seqs,
        (1..=sizes.len() as u64).collect::<Vec<_>>(),
        "in seq order"
    );
    let mut lengths: Vec<usize> = got.iter().map(|&(_, n)| n).collect();
    lengths.sort();
    assert_eq!(lengths, sizes);
}
