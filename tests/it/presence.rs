//! Presence (queries and subscriptions, several devices) and will messages.

use crate::harness::*;
use bytes::Bytes;
use tidings::client::Client;
use tidings::protocol::pb::{self, client_frame::Body as Req, server_frame::Body as Rep};

async fn presence_change(c: &mut Client) -> (String, bool) {
    match push(c).await {
        Rep::PresenceChange(p) => (p.user_id, p.online),
        other => panic!("expected a presence change, got {other:?}"),
    }
}

#[tokio::test]
async fn presence_is_per_user_across_devices_and_subscribers_hear_of_changes() {
    let server = TestServer::start().await;
    let mut alice = server.client("alice").await;
    let g = within(alice.create_group("g", &["bob", "carol"]))
        .await
        .unwrap();
    let t = within(alice.create_temporary(&["bob"], 3600, false))
        .await
        .unwrap();
    within(alice.subscribe_presence(&g.id)).await.unwrap();
    assert_eq!(
        within(alice.online_members(&g.id)).await.unwrap(),
        vec!["alice"]
    );

    let (bob_phone, _) = server.login_device("bob", "phone", 0).await;
    assert_eq!(presence_change(&mut alice).await, ("bob".into(), true));
    let (bob_web, _) = server.login_device("bob", "web", 0).await;
    assert_no_push(&mut alice).await; // bob was online already
    assert_eq!(
        within(alice.online_members(&g.id)).await.unwrap(),
        vec!["alice", "bob"]
    );
    assert_eq!(
        within(bob_web.online_members(&t.id)).await.unwrap(),
        vec!["alice", "bob"]
    );

    // One device leaves: bob is still online.
    within(bob_phone.logout()).await.unwrap();
    within(bob_phone.closed()).await;
    assert_no_push(&mut alice).await;
    // The last one leaves: offline.
    bob_web.disconnect();
    within(bob_web.closed()).await;
    assert_eq!(presence_change(&mut alice).await, ("bob".into(), false));
    assert_eq!(
        within(alice.online_members(&g.id)).await.unwrap(),
        vec!["alice"]
    );

    // Non-members may neither ask nor subscribe; unsubscribing stops the pushes.
    let eve = server.client("eve").await;
    assert!(within(eve.online_members(&g.id)).await.is_err());
    assert!(within(eve.subscribe_presence(&g.id)).await.is_err());
    within(alice.unsubscribe_presence(&g.id)).await.unwrap();
    let _carol = server.client("carol").await;
    assert_no_push(&mut alice).await;
}

async fn set_will(raw: &mut Raw, conv: &str, text: &str) {
    let body = Req::SetWill(pb::SetWill {
        conversation_id: conv.into(),
        r#type: 1,
        content: Bytes::from(text.to_owned()),
        ..Default::default()
    });
    assert!(matches!(raw.request(body).await, Rep::Ok(_)));
}

#[tokio::test]
async fn a_dropped_socket_sends_the_last_will_set() {
    let server = TestServer::start().await;
    let mut bob = server.client("bob").await;
    let owner = server.client("owner").await;
    let g = within(owner.create_group("g", &["alice", "bob"]))
        .await
        .unwrap();
    event(&mut bob).await;

    let mut alice = Raw::login(&server, "alice").await;
    set_will(&mut alice, &g.id, "first").await;
    set_will(&mut alice, &g.id, "I am gone").await;
    drop(alice); // the TCP connection ends without a close frame

    let m = message(&mut bob).await;
    assert_eq!(
        (m.sender.as_str(), text(&m).as_str(), m.seq),
        ("alice", "I am gone", 1)
    );
    // Persisted, in seq order, exactly once.
    let stored = within(owner.sync_all(&g.id, 0)).await.unwrap();
    assert_eq!(
        stored.iter().map(text).collect::<Vec<_>>(),
        vec!["I am gone"]
    );
    assert_eq!(within(owner.send_text(&g.id, "next")).await.unwrap().seq, 2);
}

#[tokio::test]
async fn a_heartbeat_timeout_sends_the_will_too() {
    let server = TestServer::start_with(|c| {
        c.ping_interval_ms = 100;
        c.idle_timeout_ms = 400;
    })
    .await;
    let mut bob = server.client("bob").await;
    let d = within(bob.create_direct("alice")).await.unwrap();
    let mut alice = Raw::login(&server, "alice").await;
    set_will(&mut alice, &d.id, "timed out").await;
    // alice stops reading, so she never answers the server's pings.
    let m = message(&mut bob).await;
    assert_eq!(
        (m.sender.as_str(), text(&m).as_str()),
        ("alice", "timed out")
    );
    assert_eq!(
        alice.close_code().await,
        Some(pb::CloseCode::CloseIdleTimeout as i32 as u16)
    );
}

#[tokio::test]
async fn a_clean_logout_or_close_discards_the_will() {
    let server = TestServer::start().await;
    let mut bob = server.client("bob").await;
    let d = within(bob.create_direct("alice")).await.unwrap();
    let stats = server.running().app.stats.clone();

    let alice = server.client("alice").await;
    within(alice.set_will_text(&d.id, "never sent"))
        .await
        .unwrap();
    within(alice.logout()).await.unwrap();
    within(alice.closed()).await;

    let alice = server.client("alice").await;
    within(alice.set_will_text(&d.id, "never sent either"))
        .await
        .unwrap();
    alice.disconnect(); // a close frame, like a browser tab closing
    within(alice.closed()).await;

    let mut alice = Raw::login(&server, "alice").await;
    set_will(&mut alice, &d.id, "cleared").await;
    assert!(matches!(
        alice
            .request(Req::ClearWill(pb::ClearWill {
                conversation_id: d.id.clone()
            }))
            .await,
        Rep::Ok(_)
    ));
    let closed = stats.sessions_closed.get();
    drop(alice);
    within(stats.sessions_closed.wait_for(closed + 1)).await;

    // Wills are sent before a session's close completes, so by now any would be queued.
    assert_no_push(&mut bob).await;
    assert_eq!(stats.wills_sent.get(), 0);
    assert!(within(bob.sync_all(&d.id, 0)).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_will_for_a_conversation_you_are_not_in_is_refused() {
    let server = TestServer::start().await;
    let owner = server.client("owner").await;
    let g = within(owner.create_group("g", &[])).await.unwrap();
    let eve = server.client("eve").await;
    let err = within(eve.set_will_text(&g.id, "x")).await.unwrap_err();
    assert_eq!(err.code(), Some(pb::ErrorCode::ErrorNotAMember));
}

/// A subscriber who is removed or leaves hears nothing more of the conversation's members,
/// not even of members added after he went; the members still in do.
#[tokio::test]
async fn presence_subscriptions_end_with_membership() {
    for leaves in [false, true] {
        let server = TestServer::start().await;
        let alice = server.client("alice").await;
        let g = within(alice.create_group("g", &["bob", "dave"]))
            .await
            .unwrap();
        let mut bob = server.client("bob").await;
        let mut dave = server.client("dave").await;
        within(bob.subscribe_presence(&g.id)).await.unwrap();
        within(dave.subscribe_presence(&g.id)).await.unwrap();

        if leaves {
            within(bob.leave(&g.id)).await.unwrap();
        } else {
            within(alice.remove_members(&g.id, &["bob"])).await.unwrap();
            event(&mut bob).await;
        }
        event(&mut dave).await;
        within(alice.add_members(&g.id, &["carol"])).await.unwrap();
        event(&mut dave).await;

        // Presence changes are queued before the login reply, so this login is the event.
        let _carol = server.client("carol").await;
        assert_eq!(presence_change(&mut dave).await, ("carol".into(), true));
        assert_no_push(&mut bob).await;
    }
}

/// Reads every push already queued for `c` (a ping round trip comes after them).
async fn drain(c: &mut Client) {
    within(c.ping()).await.expect("ping");
    while c.try_next_push().is_some() {}
}

async fn presence_push(c: &mut Client) -> pb::PresenceChange {
    match push(c).await {
        Rep::PresenceChange(p) => p,
        other => panic!("expected a presence change, got {other:?}"),
    }
}

/// A user in many groups with a subscriber costs that subscriber one push per change, not one
/// per group (2,000 groups made 2,000 pushes per login and logout, and the subscriber was cut
/// as a slow consumer): with an outbox of 32 frames, alice, subscribed to 300 groups she
/// shares with bob, hears bob come and go once each, naming the 300 and no other.
#[tokio::test]
async fn a_subscriber_sharing_many_groups_hears_one_push_per_change() {
    const GROUPS: usize = 300;
    let server = TestServer::start_with(|c| c.outbox_frames = 32).await;
    let mut alice = server.client("alice").await;
    let mut shared = Vec::new();
    for _ in 0..GROUPS / 50 {
        let made = futures_util::future::join_all(
            (0..50).map(|_| within(alice.create_group("g", &["bob"]))),
        )
        .await;
        shared.extend(made.into_iter().map(|g| g.unwrap().id));
    }
    // Subscribed, but bob is not in it; and one with bob that alice did not subscribe to.
    let without_bob = within(alice.create_group("h", &["carol"])).await.unwrap();
    within(alice.create_group("i", &["bob"])).await.unwrap();
    for id in shared.iter().chain([&without_bob.id]) {
        within(alice.subscribe_presence(id)).await.unwrap();
    }
    drain(&mut alice).await;
    shared.sort();

    let (bob, _) = server.login_device("bob", "phone", 0).await;
    let p = presence_push(&mut alice).await;
    assert_eq!((p.user_id.as_str(), p.online), ("bob", true));
    assert_eq!(p.conversation_ids, shared);
    assert_eq!(p.conversation_id, shared[0]);
    assert_no_push(&mut alice).await;

    bob.disconnect();
    within(bob.closed()).await;
    let p = presence_push(&mut alice).await;
    assert_eq!((p.user_id.as_str(), p.online), ("bob", false));
    assert_eq!(p.conversation_ids, shared);
    assert_no_push(&mut alice).await;
}

/// A session holds at most `max_presence_subscriptions_per_session` subscriptions; ones it
/// drops, or that end with membership, make room; a new session starts with none.
#[tokio::test]
async fn presence_subscriptions_per_session_are_bounded() {
    let server = TestServer::start_with(|c| c.max_presence_subscriptions_per_session = 2).await;
    let alice = server.client("alice").await;
    let owner = server.client("owner").await;
    let mut g = Vec::new();
    for _ in 0..4 {
        g.push(
            within(owner.create_group("g", &["alice", "bob"]))
                .await
                .unwrap()
                .id,
        );
    }
    within(alice.subscribe_presence(&g[0])).await.unwrap();
    within(alice.subscribe_presence(&g[1])).await.unwrap();
    let err = within(alice.subscribe_presence(&g[2])).await.unwrap_err();
    assert_eq!(err.code(), Some(pb::ErrorCode::ErrorLimitExceeded));
    assert!(
        err.to_string()
            .contains("max_presence_subscriptions_per_session is 2"),
        "{err}"
    );
    // One held again is no new subscription.
    within(alice.subscribe_presence(&g[1])).await.unwrap();

    // Unsubscribing makes room.
    within(alice.unsubscribe_presence(&g[0])).await.unwrap();
    within(alice.subscribe_presence(&g[2])).await.unwrap();
    // So does a subscription ending with the membership (removed, then the group deleted).
    assert!(within(alice.subscribe_presence(&g[3])).await.is_err());
    within(owner.remove_members(&g[1], &["alice"]))
        .await
        .unwrap();
    within(alice.subscribe_presence(&g[3])).await.unwrap();
    within(owner.delete_conversation(&g[2], false))
        .await
        .unwrap();
    within(alice.subscribe_presence(&g[0])).await.unwrap();
    assert!(within(alice.subscribe_presence(&g[1])).await.is_err());

    // Another session of the same user has its own.
    let (mut web, _) = server.login_device("alice", "web", 0).await;
    within(web.subscribe_presence(&g[0])).await.unwrap();
    within(web.subscribe_presence(&g[3])).await.unwrap();
    drain(&mut web).await;
    // And both hear bob.
    let _bob = server.client("bob").await;
    let p = presence_push(&mut web).await;
    assert_eq!(p.conversation_ids, {
        let mut ids = vec![g[0].clone(), g[3].clone()];
        ids.sort();
        ids
    });
}
