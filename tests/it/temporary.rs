//! Temporary conversations: limits, unique, events, refusals, expiry (also across restarts),
//! and the disk space they leave behind.

use crate::harness::*;
use std::sync::Arc;
use tidings::protocol::parse_conversation_id;
use tidings::protocol::pb::{self, ConversationEventKind as Ev, ConversationKind, ErrorCode};

const DAY_MS: i64 = 86_400_000;

fn members(n: usize) -> Vec<String> {
    (1..n).map(|i| format!("guest{i}")).collect()
}

#[tokio::test]
async fn limits_defaults_and_ids() {
    let server = TestServer::start().await;
    let agent = server.client("agent").await;

    let nine = members(10);
    let refs: Vec<&str> = nine.iter().map(String::as_str).collect();
    let t = within(agent.create_temporary(&refs, 0, false))
        .await
        .unwrap();
    assert!(t.id.starts_with("_tmp:"), "{}", t.id);
    assert_eq!(t.kind, ConversationKind::Temporary as i32);
    assert_eq!(t.member_count, 10);
    assert_eq!(
        t.members.len(),
        10,
        "temporary conversations list their members"
    );
    assert_eq!(
        t.expires_at,
        t.created_at + DAY_MS,
        "default TTL is one day"
    );

    let ten = members(11);
    let refs: Vec<&str> = ten.iter().map(String::as_str).collect();
    let err = within(agent.create_temporary(&refs, 0, false))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::ErrorLimitExceeded));
    assert!(
        err.to_string().contains("max_temporary_members is 10"),
        "{err}"
    );

    let max = within(agent.create_temporary(&["a"], 2_592_000, false))
        .await
        .unwrap();
    assert_eq!(max.expires_at, max.created_at + 30 * DAY_MS);
    let err = within(agent.create_temporary(&["a"], 2_592_001, false))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::ErrorLimitExceeded));
    assert!(
        err.to_string()
            .contains("temporary_ttl_max_secs is 2592000"),
        "{err}"
    );

    let short = within(agent.create_temporary(&["a"], 60, false))
        .await
        .unwrap();
    assert_eq!(short.expires_at, short.created_at + 60_000);
}

#[tokio::test]
async fn unique_returns_the_live_conversation_of_the_same_members() {
    let server = TestServer::start().await;
    let agent = server.client("agent").await;
    let customer = server.client("customer").await;
    let a = within(agent.create_temporary(&["customer"], 60, true))
        .await
        .unwrap();
    let b = within(customer.create_temporary(&["agent"], 60, true))
        .await
        .unwrap();
    assert_eq!(a.id, b.id, "same member set, from either side");
    let c = within(agent.create_temporary(&["customer"], 60, false))
        .await
        .unwrap();
    assert_ne!(c.id, a.id, "without unique, a new one");
    let d = within(agent.create_temporary(&["customer", "supervisor"], 60, true))
        .await
        .unwrap();
    assert_ne!(d.id, c.id, "another member set, another conversation");

    server.clock.advance(61_000);
    let e = within(agent.create_temporary(&["customer"], 60, true))
        .await
        .unwrap();
    assert!(
        e.id != a.id && e.id != c.id,
        "an expired one is never returned"
    );
}

#[tokio::test]
async fn create_events_carry_the_expiry_to_online_and_offline_members() {
    let server = TestServer::start().await;
    let agent = server.client("agent").await;
    let mut online = server.client("online").await;
    let t = within(agent.create_temporary(&["online", "offline"], 3600, false))
        .await
        .unwrap();
    let e = event(&mut online).await;
    assert_eq!(Ev::try_from(e.kind).unwrap(), Ev::Created);
    assert_eq!(e.conversation.as_ref().unwrap().expires_at, t.expires_at);

    let (_offline, w) = server.login("offline").await;
    assert_eq!(w.events.len(), 1);
    assert_eq!(
        w.events[0].conversation.as_ref().unwrap().expires_at,
        t.expires_at
    );
    assert_eq!(w.unread(&t.id).unwrap().expires_at, t.expires_at);
}

#[tokio::test]
async fn messages_work_and_membership_changes_are_refused() {
    let server = TestServer::start().await;
    let agent = server.client("agent").await;
    let mut customer = server.client("customer").await;
    let t = within(agent.create_temporary(&["customer"], 3600, false))
        .await
        .unwrap();
    event(&mut customer).await;

    let ack = within(agent.send_text(&t.id, "how can I help?"))
        .await
        .unwrap();
    assert_eq!(message(&mut customer).await.seq, ack.seq);
    within(agent.send(pb::SendMessage {
        conversation_id: t.id.clone(),
        transient: true,
        ..Default::default()
    }))
    .await
    .unwrap();
    assert!(message(&mut customer).await.transient);
    assert_eq!(within(customer.sync_all(&t.id, 0)).await.unwrap().len(), 1);
    assert_eq!(
        within(customer.history(&t.id, 0, 5))
            .await
            .unwrap()
            .messages
            .len(),
        1
    );
    within(customer.mark_read(&t.id, 1)).await.unwrap();
    assert_eq!(within(customer.count_members(&t.id)).await.unwrap(), 2);
    assert_eq!(
        within(customer.online_members(&t.id)).await.unwrap(),
        vec!["agent", "customer"]
    );

    let refused = vec![
        within(agent.add_members(&t.id, &["x"])).await.unwrap_err(),
        within(agent.remove_members(&t.id, &["customer"]))
            .await
            .unwrap_err(),
        within(agent.leave(&t.id)).await.unwrap_err(),
        within(agent.set_muted(&t.id, true)).await.unwrap_err(),
        within(agent.update(pb::UpdateConversation {
            conversation_id: t.id.clone(),
            name: Some("x".into()),
            ..Default::default()
        }))
        .await
        .unwrap_err(),
    ];
    for e in refused {
        assert_eq!(e.code(), Some(ErrorCode::ErrorNotAllowedForKind), "{e}");
    }
}

#[tokio::test]
async fn at_the_deadline_everything_goes_and_later_requests_get_the_expired_error() {
    let server = TestServer::start().await;
    let agent = server.client("agent").await;
    let mut customer = server.client("customer").await;
    let t = within(agent.create_temporary(&["customer"], 60, false))
        .await
        .unwrap();
    let keep = within(agent.create_temporary(&["customer"], 3600, false))
        .await
        .unwrap();
    event(&mut customer).await;
    event(&mut customer).await;
    for i in 0..5 {
        within(agent.send_text(&t.id, &format!("m{i}")))
            .await
            .unwrap();
        message(&mut customer).await;
    }
    let num = parse_conversation_id(&t.id).unwrap();
    let store = server.running().app.store.clone();
    assert!(store.last_message(num).unwrap().is_some());

    server.clock.advance(60_000);
    // The members online at that moment are told.
    let e = event(&mut customer).await;
    assert_eq!(
        (Ev::try_from(e.kind).unwrap(), e.conversation_id.as_str()),
        (Ev::Expired, t.id.as_str())
    );
    within(server.running().app.stats.conversations_expired.wait_for(1)).await;

    // Gone from disk: conversation, messages, members' entries.
    assert!(store.conversation(num).unwrap().is_none());
    assert!(store.last_message(num).unwrap().is_none());
    assert!(store.members(num).unwrap().is_empty());
    assert!(
        store
            .user_conversations("customer")
            .unwrap()
            .iter()
            .all(|(c, _)| *c != num)
    );
    let (_c2, w) = server.login("customer").await;
    assert!(w.unread(&t.id).is_none());
    assert!(w.unread(&keep.id).is_some(), "the other one lives on");

    // Every later request: the distinct expired error.
    let expired = Some(ErrorCode::ErrorTemporaryConversationExpired);
    assert_eq!(
        within(agent.get_conversation(&t.id))
            .await
            .unwrap_err()
            .code(),
        expired
    );
    assert_eq!(
        within(agent.send_text(&t.id, "late"))
            .await
            .unwrap_err()
            .code(),
        expired
    );
    assert_eq!(
        within(customer.sync(&t.id, 0, 10))
            .await
            .unwrap_err()
            .code(),
        expired
    );
    assert_eq!(
        within(customer.set_will_text(&t.id, "x"))
            .await
            .unwrap_err()
            .code(),
        expired
    );
    // An id that was never issued is simply not found.
    let never = within(agent.get_conversation("_tmp:00000000000fffff"))
        .await
        .unwrap_err();
    assert_eq!(never.code(), Some(ErrorCode::ErrorConversationNotFound));
}

#[tokio::test]
async fn a_request_after_the_deadline_is_refused_even_before_the_sweep() {
    let server = TestServer::start().await;
    let agent = server.client("agent").await;
    let t = within(agent.create_temporary(&["c"], 60, false))
        .await
        .unwrap();
    server.clock.advance(60_000);
    // No waiting for the sweep: the deadline alone decides.
    let err = within(agent.send_text(&t.id, "too late"))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(ErrorCode::ErrorTemporaryConversationExpired)
    );
}

#[tokio::test]
async fn a_restart_keeps_the_original_deadline() {
    let mut server = TestServer::start().await;
    let t = {
        let agent = server.client("agent").await;
        within(agent.create_temporary(&["customer"], 3600, false))
            .await
            .unwrap()
    };
    server.clock.advance(1_800_000);
    server.restart().await;
    let agent = server.client("agent").await;
    let again = within(agent.get_conversation(&t.id)).await.unwrap();
    assert_eq!(again.expires_at, t.expires_at);
    within(agent.send_text(&t.id, "still here")).await.unwrap();
    server.clock.advance(1_800_000);
    within(server.running().app.stats.conversations_expired.wait_for(1)).await;
    let err = within(agent.get_conversation(&t.id)).await.unwrap_err();
    assert_eq!(
        err.code(),
        Some(ErrorCode::ErrorTemporaryConversationExpired)
    );
}

#[tokio::test]
async fn a_conversation_that_expired_while_the_server_was_down_is_gone_at_start() {
    let mut server = TestServer::start().await;
    let t = {
        let agent = server.client("agent").await;
        let t = within(agent.create_temporary(&["customer"], 60, false))
            .await
            .unwrap();
        within(agent.send_text(&t.id, "before")).await.unwrap();
        t
    };
    server.server.take().unwrap().stop().await.unwrap();
    server.clock.advance(120_000);
    let restarted = tidings::server::start(server.config.clone(), Arc::new(server.clock.clone()))
        .await
        .unwrap();
    server.server = Some(restarted);
    within(server.running().app.stats.conversations_expired.wait_for(1)).await;
    let num = parse_conversation_id(&t.id).unwrap();
    assert!(
        server
            .running()
            .app
            .store
            .conversation(num)
            .unwrap()
            .is_none()
    );
    assert!(
        server
            .running()
            .app
            .store
            .last_message(num)
            .unwrap()
            .is_none()
    );
    let agent = server.client("agent").await;
    let err = within(agent.sync(&t.id, 0, 10)).await.unwrap_err();
    assert_eq!(
        err.code(),
        Some(ErrorCode::ErrorTemporaryConversationExpired)
    );
}

/// Creates `n` temporary conversations with a message each, then expires them all.
async fn churn(server: &TestServer, agent: &tidings::client::Client, n: usize) {
    let ids: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
    for chunk in ids.chunks(64) {
        let creates = chunk
            .iter()
            .map(|c| async move { agent.create_temporary(&[c.as_str()], 60, false).await });
        for t in futures_util::future::join_all(creates).await {
            within(agent.send_text(&t.unwrap().id, "hello, how can we help?"))
                .await
                .unwrap();
        }
    }
    let stats = &server.running().app.stats;
    let before = stats.conversations_expired.get();
    server.clock.advance(60_000);
    within(stats.conversations_expired.wait_for(before + n as u64)).await;
}

#[tokio::test]
async fn the_disk_space_of_expired_conversations_is_reused() {
    let server = TestServer::start().await;
    let agent = server.client("agent").await;
    let store = server.running().app.store.clone();
    let round = 2_500;
    let mut sizes = Vec::new();
    for _ in 0..4 {
        churn(&server, &agent, round).await;
        store.flush().unwrap();
        sizes.push(store.size_on_disk().unwrap());
    }
    eprintln!(
        "bytes on disk after each round of {round} temporary conversations created and expired: {sizes:?}"
    );
    // Nothing of them is left to read...
    assert!(store.next_expiries(1).unwrap().is_empty());
    assert!(store.user_conversations("agent").unwrap().is_empty());
    // ...and the space is reused. Never reusing it would need about four times the first
    // round's size by now; the engine may grow its file in steps, so allow one doubling.
    let (first, last) = (sizes[0], sizes[3]);
    assert!(
        last <= 2 * first + (1 << 20),
        "disk grew from {first} to {last} bytes over the churn: {sizes:?}"
    );
}
