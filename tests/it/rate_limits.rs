//! Request rate limits: a connection's and a user's token buckets, charged by the cost of each
//! request, refusing with `ERROR_RATE_LIMITED` and when to retry; the same buckets for the
//! LeanCloud dialect. The server's clock is driven, so refills need no waiting.

use crate::harness::*;
use tidings::client::{Client, ClientError};
use tidings::protocol::pb::{self, client_frame::Body as Req, server_frame::Body as Rep};

fn get(id: &str) -> Req {
    Req::GetConversation(pb::GetConversation {
        conversation_id: id.into(),
    })
}

fn list() -> Req {
    Req::ListConversations(pb::ListConversations {
        limit: 20,
        ..Default::default()
    })
}

/// The retry time of a rate-limited reply, or `None` for any other reply.
fn limited(rep: &Rep) -> Option<u64> {
    match rep {
        Rep::Error(e) if e.code == pb::ErrorCode::ErrorRateLimited as i32 => {
            assert!(e.message.contains("retry after"), "{e:?}");
            Some(e.retry_after_ms)
        }
        _ => None,
    }
}

#[tokio::test]
async fn a_connection_over_its_rate_is_refused_with_when_to_retry_and_then_served() {
    let server = TestServer::start_with(|c| {
        c.rate_limit_connection_per_sec = 10;
        c.rate_limit_connection_burst = 20;
        c.rate_limit_user_per_sec = 0;
    })
    .await;
    let alice = server.client("alice").await;
    let id = alice.create_group("g", &["bob"]).await.unwrap().id;
    drop(alice);
    let mut raw = Raw::login(&server, "alice").await;
    // The burst: 20 light requests pass, the 21st is refused for the 100 ms one token takes.
    for n in 0..20 {
        let rep = raw.request(get(&id)).await;
        assert!(limited(&rep).is_none(), "request {n}: {rep:?}");
    }
    assert_eq!(limited(&raw.request(get(&id)).await), Some(100));
    // Refused requests cost nothing: after 100 ms exactly one more fits.
    server.clock.advance(100);
    assert!(limited(&raw.request(get(&id)).await).is_none());
    assert_eq!(limited(&raw.request(get(&id)).await), Some(100));
    // A list page costs 20 tokens: two seconds of refill.
    server.clock.advance(1_000);
    assert_eq!(limited(&raw.request(list()).await), Some(1_000));
    server.clock.advance(1_000);
    assert!(matches!(
        raw.request(list()).await,
        Rep::ConversationList(_)
    ));
    // A ping costs one token too.
    server.clock.advance(2_000);
    for n in 0..20 {
        let rep = raw.request(Req::Ping(pb::Ping {})).await;
        assert!(matches!(rep, Rep::Pong(_)), "ping {n}: {rep:?}");
    }
    assert_eq!(
        limited(&raw.request(Req::Ping(pb::Ping {})).await),
        Some(100)
    );
    // Another connection has its own bucket.
    let bob = server.client("bob").await;
    bob.get_conversation(&id).await.unwrap();
}

/// The probe's shape: one user lists a 5,000-entry conversation list over four connections as
/// fast as replies come. The user's bucket holds them all to its rate; another user is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_listing_over_four_connections_shares_one_bucket() {
    let server = TestServer::start_with(|c| {
        c.rate_limit_connection_per_sec = 1_000;
        c.rate_limit_connection_burst = 1_000;
        c.rate_limit_user_per_sec = 200;
        c.rate_limit_user_burst = 400;
    })
    .await;
    five_thousand_groups_of_alice_and_bob(&server).await;
    let mut conns = Vec::new();
    for _ in 0..4 {
        conns.push(Raw::login(&server, "alice").await);
    }
    // The logins cost 80; two seconds refill the bucket.
    server.clock.advance(2_000);
    // 400 tokens of burst at 20 a page: 20 pages pass, whichever connection asks.
    let mut served = 0;
    let mut refused = 0;
    for round in 0..10 {
        for c in conns.iter_mut() {
            match c.request(list()).await {
                Rep::ConversationList(l) => {
                    assert_eq!(l.entries.len(), 20, "round {round}");
                    assert!(l.has_more);
                    served += 1;
                }
                rep => {
                    assert!(limited(&rep).is_some(), "{rep:?}");
                    refused += 1;
                }
            }
        }
    }
    assert_eq!((served, refused), (20, 20));
    // Bob is not alice.
    let bob = server.client("bob").await;
    let page = bob
        .list_conversations(pb::ListConversations {
            limit: 20,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.entries.len(), 20);
    // Alice's refill: 200 tokens a second.
    server.clock.advance(1_000);
    let served_after: usize = {
        let mut n = 0;
        for c in conns.iter_mut() {
            for _ in 0..5 {
                if matches!(c.request(list()).await, Rep::ConversationList(_)) {
                    n += 1;
                }
            }
        }
        n
    };
    assert_eq!(served_after, 10);
}

#[tokio::test]
async fn the_client_library_surfaces_the_refusal_as_a_typed_error() {
    let server = TestServer::start_with(|c| {
        c.rate_limit_connection_per_sec = 1;
        c.rate_limit_connection_burst = 1;
    })
    .await;
    let alice = server.client("alice").await;
    let id = alice.create_group("g", &["bob"]).await;
    // Create cost 5 of a bucket of 1: charged as the whole bucket, so it passed; now empty.
    let id = id.unwrap().id;
    match alice.get_conversation(&id).await {
        Err(e @ ClientError::Server { .. }) => {
            assert_eq!(e.code(), Some(pb::ErrorCode::ErrorRateLimited));
        }
        other => panic!("expected a rate-limit refusal, got {other:?}"),
    }
}

/// A login costs like a list page (its unread summary is one), charged to the user: logging in
/// and out in a loop is no way around the list's price. The refused login gets
/// `ERROR_RATE_LIMITED` with when to retry, then the close 1013 (try again later); it opened no
/// session. The summary holds at most `login_summary_max` entries, the most recent, with the
/// list cursor for the rest.
#[tokio::test]
async fn logins_are_charged_to_the_user_and_push_a_bounded_summary() {
    let server = TestServer::start_with(|c| {
        c.rate_limit_connection_per_sec = 1_000;
        c.rate_limit_connection_burst = 1_000;
        c.rate_limit_user_per_sec = 200;
        c.rate_limit_user_burst = 400;
        c.login_summary_max = 100;
    })
    .await;
    // 150 groups of alice, 50 at a time (250 tokens), the clock moving on in between.
    let setup = server.client("alice").await;
    let names: Vec<String> = (0..150).map(|n| format!("g{n:03}")).collect();
    for chunk in names.chunks(50) {
        for r in
            futures_util::future::join_all(chunk.iter().map(|n| setup.create_group(n, &["bob"])))
                .await
        {
            r.unwrap();
        }
        server.clock.advance(2_000);
    }
    drop(setup);
    server.clock.advance(2_000);

    // The summary: the 100 most recently active, newest first, and a cursor for the rest.
    let (alice, welcome) = server.login("alice").await;
    let summary = welcome.summary;
    assert_eq!(summary.entries.len(), 100);
    assert_eq!(summary.entries[0].conversation_id, newest_id(&alice).await);
    assert!(!summary.list_cursor.is_empty());
    let page = alice
        .list_conversations(pb::ListConversations {
            cursor: summary.list_cursor.clone(),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.entries.len(), 50);
    assert!(!page.has_more);
    let mut ids: Vec<String> = summary
        .entries
        .iter()
        .map(|e| e.conversation_id.clone())
        .chain(page.entries.iter().map(|e| e.conversation_id.clone()))
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(
        ids.len(),
        150,
        "summary and list together: every entry once"
    );
    drop(alice);
    server.clock.advance(2_000);

    // Log in and out in a loop: 400 tokens at 20 a login (the login above was refilled).
    for n in 0..20 {
        let c = within(Client::connect(&server.url())).await.unwrap();
        let ok = within(c.login(&server.token("alice"), "", 0)).await;
        assert!(ok.is_ok(), "login {n}: {ok:?}");
        within(c.logout()).await.unwrap();
        within(c.closed()).await;
    }
    let c = within(Client::connect(&server.url())).await.unwrap();
    let rep = c.request(Req::Login(pb::Login {
        token: server.token("alice"),
        ..Default::default()
    }));
    match within(rep).await {
        Err(e) => assert_eq!(e.code(), Some(pb::ErrorCode::ErrorRateLimited), "{e:?}"),
        Ok(rep) => panic!("login {rep:?}"),
    }
    let closed = within(c.closed()).await;
    assert_eq!(closed.code, Some(1013), "{closed:?}");
    assert_eq!(
        server.running().app.hub.session_count(),
        0,
        "no session was opened"
    );
    // With the retry time given (checked on a raw connection).
    let mut raw = Raw::connect(&server).await;
    let rep = raw
        .request(Req::Login(pb::Login {
            token: server.token("alice"),
            ..Default::default()
        }))
        .await;
    assert_eq!(limited(&rep), Some(100));
    // Bob is not alice; and alice gets in when the time given has passed.
    server.client("bob").await;
    server.clock.advance(100);
    server.client("alice").await;
}

/// The id of the first entry of the caller's list (the most recently active).
async fn newest_id(c: &Client) -> String {
    let page = c
        .list_conversations(pb::ListConversations {
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    page.entries[0].conversation_id.clone()
}

/// A filtered history page that examines many messages to return few costs what it examined:
/// one token per 50 messages beyond the page, charged to the user afterwards (the probe: a
/// type filter matching nothing walked `history_scan_max` messages for a page's cost).
#[tokio::test]
async fn a_history_walk_is_charged_for_the_messages_it_examined() {
    let server = TestServer::start_with(user_bucket(10, 20)).await;
    let bob = server.client("bob").await;
    server.clock.advance(10_000);
    let id = bob.create_group("g", &["alice"]).await.unwrap().id;
    server.clock.advance(10_000);
    for i in 0..510 {
        bob.send_text(&id, &format!("m{i}")).await.unwrap();
        server.clock.advance(100);
    }
    server.clock.advance(10_000);
    let mut raw = Raw::login(&server, "alice").await;
    server.clock.advance(10_000);
    let fetch = |types: Vec<i32>| {
        Req::FetchHistory(pb::FetchHistory {
            conversation_id: id.clone(),
            limit: 10,
            types,
            ..Default::default()
        })
    };
    // Unfiltered pages cost 5 each: four fit in the burst of 20.
    for n in 0..4 {
        let rep = raw.request(fetch(vec![])).await;
        assert!(matches!(rep, Rep::MessagePage(_)), "page {n}: {rep:?}");
    }
    assert_eq!(limited(&raw.request(fetch(vec![])).await), Some(500));
    server.clock.advance(2_000);
    // A filter matching nothing examines all 510 messages: 5 + 10 tokens. The second walk
    // leaves the bucket 10 below empty: the next page waits 1.5 s.
    for n in 0..2 {
        let rep = raw.request(fetch(vec![12_345])).await;
        assert!(
            matches!(&rep, Rep::MessagePage(h) if h.messages.is_empty()),
            "walk {n}: {rep:?}"
        );
    }
    assert_eq!(limited(&raw.request(fetch(vec![])).await), Some(1_500));
    server.clock.advance(1_500);
    assert!(matches!(
        raw.request(fetch(vec![])).await,
        Rep::MessagePage(_)
    ));
}

/// Sends an encoded `ClientFrame` of id `id` as it is and reads until its reply.
async fn request_bytes(raw: &mut Raw, id: u64, bytes: Vec<u8>) -> Rep {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    within(raw.ws.send(Message::Binary(bytes.into())))
        .await
        .unwrap();
    loop {
        let f = raw.read().await;
        if f.id == id {
            return f.body.expect("reply body");
        }
    }
}

/// A ping with 80 KB of unknown fields took 0.47 ms to decode, and pings were free: a client
/// could keep a core busy with them. Now a flood of pings (or token refreshes) is refused like
/// any request once its connection's bucket is empty, and only that connection's: the same
/// user's other connection and another user ping and send as before.
#[tokio::test]
async fn a_flood_of_pings_is_refused_on_its_connection_only() {
    let server = TestServer::start_with(|c| {
        c.rate_limit_connection_per_sec = 10;
        c.rate_limit_connection_burst = 20;
        c.rate_limit_user_per_sec = 10;
        // Two logins of 20 each, and the sends below.
        c.rate_limit_user_burst = 60;
    })
    .await;
    let bob = server.client("bob").await;
    let id = bob.create_group("g", &["alice"]).await.unwrap().id;
    let mut flood = Raw::login(&server, "alice").await;
    let other = server.client("alice").await;
    // Padded like the probe's: unknown fields are skipped, but not for free.
    let padded = |n: u64| {
        let mut bytes = tidings::protocol::encode(&pb::ClientFrame {
            id: n,
            body: Some(Req::Ping(pb::Ping {})),
        })
        .to_vec();
        // Field 1000, length-delimited, 60 KB: unknown to ClientFrame.
        bytes.extend([0xc2, 0x3e, 0xe0, 0xd4, 0x03]);
        bytes.extend(std::iter::repeat_n(b'x', 60_000));
        bytes
    };
    let (mut pongs, mut refused) = (0, 0);
    for n in 1..=200u64 {
        match request_bytes(&mut flood, n, padded(n)).await {
            Rep::Pong(_) => pongs += 1,
            rep => {
                assert!(limited(&rep).is_some(), "{rep:?}");
                refused += 1;
            }
        }
    }
    // The burst of 20 (the clock stands still), not the user's bucket: that stays full.
    assert_eq!((pongs, refused), (20, 180));
    let refresh = Req::RefreshToken(pb::RefreshToken {
        token: server.token("alice"),
    });
    assert!(limited(&flood.request(refresh).await).is_some());
    within(other.ping()).await.unwrap();
    for _ in 0..15 {
        within(other.send_text(&id, "still here")).await.unwrap();
    }
    within(bob.ping()).await.unwrap();
    // The flooding connection itself is served again once its bucket refills.
    server.clock.advance(100);
    assert!(matches!(
        flood.request(Req::Ping(pb::Ping {})).await,
        Rep::Pong(_)
    ));
}

/// A profile change is pushed to everyone who lists the user: besides its own cost it is
/// charged 1 token per 50 of them, after the change. Alice in a 1,000-member group pays
/// 5 + 20 a change: four of them take a 100-token burst.
#[tokio::test]
async fn a_profile_change_is_charged_by_the_users_it_is_pushed_to() {
    let server = TestServer::start_with(user_bucket(10, 100)).await;
    let members: Vec<String> = (1..1000).map(|n| format!("u{n}")).collect();
    let members: Vec<&str> = members.iter().map(String::as_str).collect();
    let mut raw = Raw::login(&server, "alice").await;
    let id = match raw
        .request(Req::CreateConversation(pb::CreateConversation {
            kind: pb::ConversationKind::Group as i32,
            members: members.iter().map(|m| m.to_string()).collect(),
            name: "all".into(),
            ..Default::default()
        }))
        .await
    {
        Rep::Conversation(c) => c.conversation.unwrap().id,
        other => panic!("{other:?}"),
    };
    // A full bucket (the create of 1,000 members took 5 + 100 of it).
    server.clock.advance(20_000);
    for n in 0..4 {
        let rep = raw
            .request(Req::SetProfile(pb::SetProfile {
                display_name: Some(format!("Alice {n}")),
                ..Default::default()
            }))
            .await;
        assert!(matches!(rep, Rep::Profile(_)), "change {n}: {rep:?}");
    }
    // Nothing is left: a light request waits for one token, 100 ms.
    assert_eq!(limited(&raw.request(get(&id)).await), Some(100));
    server.clock.advance(100);
    assert!(limited(&raw.request(get(&id)).await).is_none());
}

fn text(id: &str) -> Req {
    Req::SendMessage(pb::SendMessage {
        conversation_id: id.into(),
        r#type: 1,
        content: "hi".into(),
        ..Default::default()
    })
}

/// A message is pushed to every member online, so a user's send costs one token more per 50
/// members, charged after it: a typing notice to a group of 101 costs 3, to a pair 1.
#[tokio::test]
async fn a_send_is_charged_by_the_members_it_goes_to() {
    let server = TestServer::start_with(user_bucket(10, 20)).await;
    let members: Vec<String> = (1..100).map(|n| format!("u{n}")).collect();
    let members: Vec<&str> = members.iter().map(String::as_str).collect();
    let bob = server.client("bob").await;
    let mut all = members.clone();
    all.push("alice");
    server.clock.advance(10_000);
    let big = bob.create_group("big", &all).await.unwrap().id;
    server.clock.advance(10_000);
    let pair = bob.create_group("pair", &["alice"]).await.unwrap().id;
    let mut raw = Raw::login(&server, "alice").await;
    for transient in [false, true] {
        let send = |id: &str| {
            let mut r = text(id);
            if let Req::SendMessage(m) = &mut r {
                m.transient = transient;
            }
            r
        };
        // A full bucket of 20: six sends of 3, the seventh leaves it at -1.
        server.clock.advance(10_000);
        for n in 0..7 {
            let rep = raw.request(send(&big)).await;
            assert!(matches!(rep, Rep::SendAck(_)), "send {n}: {rep:?}");
        }
        assert_eq!(limited(&raw.request(send(&big)).await), Some(200));
        // To two members a send costs one token: twenty fit.
        server.clock.advance(10_000);
        for n in 0..20 {
            let rep = raw.request(send(&pair)).await;
            assert!(matches!(rep, Rep::SendAck(_)), "pair send {n}: {rep:?}");
        }
        assert_eq!(limited(&raw.request(send(&pair)).await), Some(100));
    }
}

/// A membership change writes for every user it names: besides its own cost it is charged
/// 1 token per 10 of them, after the change, and for the bytes of its event, which names them
/// all and goes to each of them (and the members): about 1.1 KB to 202 users, 3 tokens.
/// Adding 200 users costs 5 + 20 + 3, and so does removing them: two rounds take 112 of a
/// 100-token burst, so the bucket ends 12 below empty.
#[tokio::test]
async fn a_membership_change_is_charged_by_the_users_it_names() {
    let server = TestServer::start_with(user_bucket(10, 100)).await;
    let mut raw = Raw::login(&server, "alice").await;
    let id = match raw
        .request(Req::CreateConversation(pb::CreateConversation {
            kind: pb::ConversationKind::Group as i32,
            members: vec!["bob".into()],
            name: "team".into(),
            ..Default::default()
        }))
        .await
    {
        Rep::Conversation(c) => c.conversation.unwrap().id,
        other => panic!("{other:?}"),
    };
    let users: Vec<String> = (0..200).map(|n| format!("u{n}")).collect();
    // A full bucket.
    server.clock.advance(10_000);
    for round in 0..2 {
        let rep = raw
            .request(Req::AddMembers(pb::AddMembers {
                conversation_id: id.clone(),
                members: users.clone(),
            }))
            .await;
        assert!(matches!(rep, Rep::Conversation(_)), "add {round}: {rep:?}");
        let rep = raw
            .request(Req::RemoveMembers(pb::RemoveMembers {
                conversation_id: id.clone(),
                members: users.clone(),
            }))
            .await;
        assert!(
            matches!(rep, Rep::Conversation(_)),
            "remove {round}: {rep:?}"
        );
    }
    // 12 below empty: a light request waits for 13 tokens, 1.3 s.
    assert_eq!(limited(&raw.request(get(&id)).await), Some(1_300));
    server.clock.advance(1_300);
    assert!(limited(&raw.request(get(&id)).await).is_none());
}

/// A unique group create of a user in 5,000 conversations looks through them for the group of
/// its members: charged after it, a token per 100 conversations looked at (the creator's and
/// one other member's), on top of the create's 5. Repeated as fast as replies come, the
/// creates are refused with when to retry after the bucket's worth; another user is served;
/// and each served create finds the group the first one made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_group_creates_are_charged_for_the_conversations_looked_through() {
    let server = TestServer::start_with(|c| {
        c.rate_limit_connection_per_sec = 1_000;
        c.rate_limit_connection_burst = 1_000;
        c.rate_limit_user_per_sec = 200;
        c.rate_limit_user_burst = 400;
    })
    .await;
    five_thousand_groups_of_alice_and_bob(&server).await;
    let unique = |members: &[&str]| {
        Req::CreateConversation(pb::CreateConversation {
            kind: pb::ConversationKind::Group as i32,
            members: members.iter().map(|m| m.to_string()).collect(),
            unique: true,
            ..Default::default()
        })
    };
    let mut alice = Raw::login(&server, "alice").await;
    let mut bob = Raw::login(&server, "bob").await;
    server.clock.advance(2_000);
    // 400 tokens at 5 + 50 a create: seven leave 15, the eighth goes 40 below empty, the
    // ninth waits for 45 tokens.
    let mut ids = Vec::new();
    let retry = loop {
        match alice.request(unique(&["carol", "dave"])).await {
            Rep::Conversation(c) => ids.push(c.conversation.unwrap().id),
            rep => break limited(&rep).unwrap_or_else(|| panic!("{rep:?}")),
        }
        assert!(ids.len() <= 8, "{} creates served", ids.len());
    };
    assert_eq!((ids.len(), retry), (8, 225));
    ids.dedup();
    assert_eq!(ids.len(), 1, "every create found the first one's group");
    // Bob's bucket is his own: his unique create of another set is served.
    let rep = bob.request(unique(&["erin"])).await;
    assert!(matches!(rep, Rep::Conversation(_)), "{rep:?}");
    // Once the time given has passed, alice's create is served and finds the group again.
    server.clock.advance(225);
    match alice.request(unique(&["dave", "carol", "alice"])).await {
        Rep::Conversation(c) => assert_eq!(c.conversation.unwrap().id, ids[0]),
        rep => panic!("{rep:?}"),
    }
}

/// A group of bob, alice and 99 others (101 members: a message to it costs 1 + 2 tokens),
/// made a refill later.
pub(crate) async fn group_of_101(server: &TestServer) -> String {
    let members: Vec<String> = (1..100).map(|n| format!("u{n}")).collect();
    let mut all: Vec<&str> = members.iter().map(String::as_str).collect();
    all.push("alice");
    let bob = server.client("bob").await;
    server.clock.advance(10_000);
    bob.create_group("big", &all).await.unwrap().id
}

/// An edit or a recall is pushed to every member, like the send it changes: it costs one
/// token more per 50 members, charged after it. In a group of 101 an edit costs 3, and so
/// does a recall.
#[tokio::test]
async fn an_edit_or_recall_is_charged_by_the_members_it_goes_to() {
    let server = TestServer::start_with(user_bucket(10, 20)).await;
    let big = group_of_101(&server).await;
    let mut raw = Raw::login(&server, "alice").await;
    server.clock.advance(10_000);
    let mut ids = Vec::new();
    for n in 0..7 {
        match raw.request(text(&big)).await {
            Rep::SendAck(a) => ids.push(a.message_id),
            rep => panic!("send {n}: {rep:?}"),
        }
    }
    let edit = |id: &str, n: usize| {
        Req::EditMessage(pb::EditMessage {
            conversation_id: big.clone(),
            message_id: id.into(),
            content: format!("edit {n}").into(),
            ..Default::default()
        })
    };
    let recall = |id: &str| {
        Req::RecallMessage(pb::RecallMessage {
            conversation_id: big.clone(),
            message_id: id.into(),
        })
    };
    // A full bucket of 20: six edits of 3, the seventh leaves it at -1.
    server.clock.advance(10_000);
    for n in 0..7 {
        let rep = raw.request(edit(&ids[0], n)).await;
        assert!(matches!(rep, Rep::MessageReply(_)), "edit {n}: {rep:?}");
    }
    assert_eq!(limited(&raw.request(edit(&ids[0], 7)).await), Some(200));
    // The same for recalls, of each of the seven messages.
    server.clock.advance(10_000);
    for (n, id) in ids.iter().enumerate() {
        let rep = raw.request(recall(id)).await;
        assert!(matches!(rep, Rep::MessageReply(_)), "recall {n}: {rep:?}");
    }
    assert_eq!(limited(&raw.request(recall(&ids[0])).await), Some(200));
    // Recalling a recalled message tells nobody: one token.
    server.clock.advance(10_000);
    for n in 0..20 {
        let rep = raw.request(recall(&ids[0])).await;
        assert!(
            matches!(rep, Rep::MessageReply(_)),
            "repeated recall {n}: {rep:?}"
        );
    }
    assert_eq!(limited(&raw.request(recall(&ids[0])).await), Some(100));
}

/// Asserts a request was served.
fn served(rep: &Rep, what: &str) {
    assert!(!matches!(rep, Rep::Error(_)), "{what}: {rep:?}");
}

/// A group change is pushed to every member, like a send: besides its own 5 tokens it costs
/// one token more per 50 members, charged after it. In a group of 101 a change costs 7: from
/// a full bucket of 20, three leave it at -1 and a fourth waits 600 ms. The same for a name
/// update, mute-all, a role, a mute and their undoing.
#[tokio::test]
async fn a_group_change_is_charged_by_the_members_it_goes_to() {
    let server = TestServer::start_with(user_bucket(10, 20)).await;
    let big = group_of_101(&server).await;
    server.clock.advance(10_000);
    let mut raw = Raw::login(&server, "bob").await;
    let id = || big.clone();
    type Change<'a> = Box<dyn Fn(usize) -> Req + 'a>;
    let changes: Vec<(&str, Change)> = vec![
        (
            "update",
            Box::new(|n| {
                Req::UpdateConversation(pb::UpdateConversation {
                    conversation_id: id(),
                    name: Some(format!("name {n}")),
                    ..Default::default()
                })
            }),
        ),
        (
            "mute-all",
            Box::new(|n| {
                Req::SetMuteAll(pb::SetMuteAll {
                    conversation_id: id(),
                    muted: n % 2 == 0,
                })
            }),
        ),
        (
            "role",
            Box::new(|n| {
                let role = if n % 2 == 0 {
                    pb::MemberRole::Manager
                } else {
                    pb::MemberRole::Member
                };
                Req::SetMemberRole(pb::SetMemberRole {
                    conversation_id: id(),
                    members: vec!["u1".into()],
                    role: role as i32,
                })
            }),
        ),
        (
            "mute",
            Box::new(|n| {
                if n % 2 == 0 {
                    Req::MuteMembers(pb::MuteMembers {
                        conversation_id: id(),
                        members: vec!["u2".into()],
                        duration_secs: 0,
                    })
                } else {
                    Req::UnmuteMembers(pb::UnmuteMembers {
                        conversation_id: id(),
                        members: vec!["u2".into()],
                    })
                }
            }),
        ),
    ];
    for (what, change) in &changes {
        server.clock.advance(10_000);
        for n in 0..3 {
            served(&raw.request(change(n)).await, &format!("{what} {n}"));
        }
        assert_eq!(limited(&raw.request(change(3)).await), Some(600), "{what}");
    }
}

/// A group change is charged by the bytes it pushes too: its event carries the group's name
/// and attributes to every member, one token more per 64 KiB in all. An 8,000-byte attribute
/// pushed to 101 members is about 800 KB, 12 tokens: the update costs 5 + 2 + 12, and so does
/// every change after it while the attribute is there. From a full bucket of 20, one leaves
/// 1 token and the next waits 400 ms (where without the bytes it would leave 13).
#[tokio::test]
async fn a_group_change_is_charged_by_the_bytes_it_pushes() {
    let server = TestServer::start_with(user_bucket(10, 20)).await;
    let big = group_of_101(&server).await;
    server.clock.advance(10_000);
    let mut raw = Raw::login(&server, "bob").await;
    server.clock.advance(10_000);
    let update = Req::UpdateConversation(pb::UpdateConversation {
        conversation_id: big.clone(),
        set_attributes: [("k".to_string(), "x".repeat(8000))].into(),
        ..Default::default()
    });
    served(&raw.request(update).await, "update");
    let mute_all = |muted| {
        Req::SetMuteAll(pb::SetMuteAll {
            conversation_id: big.clone(),
            muted,
        })
    };
    assert_eq!(limited(&raw.request(mute_all(true)).await), Some(400));
    server.clock.advance(10_000);
    served(&raw.request(mute_all(true)).await, "mute-all");
    assert_eq!(limited(&raw.request(mute_all(false)).await), Some(400));
}

/// A user who is no member joins an open group and leaves it: each is pushed to the members
/// and costs 5 + 2 in a group of 101, as any change to it does.
#[tokio::test]
async fn joining_and_leaving_a_large_open_group_is_charged_by_its_members() {
    let server = TestServer::start_with(user_bucket(10, 20)).await;
    let big = group_of_101(&server).await;
    let mut raw = Raw::login(&server, "mallory").await;
    let join = Req::JoinConversation(pb::JoinConversation {
        conversation_id: big.clone(),
    });
    let leave = Req::LeaveConversation(pb::LeaveConversation {
        conversation_id: big.clone(),
    });
    server.clock.advance(10_000);
    served(&raw.request(join.clone()).await, "join");
    served(&raw.request(leave.clone()).await, "leave");
    served(&raw.request(join).await, "join again");
    assert_eq!(limited(&raw.request(leave).await), Some(600));
}

/// A page of history or catch-up costs one token more per 64 KiB of messages it returns (as
/// stored), charged after it: a page of ten 32 KiB messages costs 5 + 5, so two take a
/// burst of 20, where four pages of short messages do.
#[tokio::test]
async fn a_history_page_is_charged_by_its_bytes() {
    let server = TestServer::start_with(user_bucket(10, 20)).await;
    let bob = server.client("bob").await;
    server.clock.advance(10_000);
    let large = bob.create_group("large", &["alice"]).await.unwrap().id;
    server.clock.advance(10_000);
    let small = bob.create_group("small", &["alice"]).await.unwrap().id;
    let bulk = "x".repeat(32 << 10);
    for i in 0..10 {
        server.clock.advance(1_000);
        bob.send_text(&large, &bulk).await.unwrap();
        server.clock.advance(1_000);
        bob.send_text(&small, &format!("m{i}")).await.unwrap();
    }
    let mut raw = Raw::login(&server, "alice").await;
    let fetch = |id: &str| {
        Req::FetchHistory(pb::FetchHistory {
            conversation_id: id.into(),
            limit: 10,
            ..Default::default()
        })
    };
    let sync = |id: &str| {
        Req::SyncMessages(pb::SyncMessages {
            conversation_id: id.into(),
            after_seq: 0,
            limit: 10,
        })
    };
    let page_of = |rep: &Rep, n: usize| match rep {
        Rep::MessagePage(p) => assert_eq!(p.messages.len(), 10, "page {n}"),
        rep => panic!("page {n}: {rep:?}"),
    };
    for request in [fetch, sync] {
        // Short messages: four pages of 5 take the burst.
        server.clock.advance(10_000);
        for n in 0..4 {
            page_of(&raw.request(request(&small)).await, n);
        }
        assert_eq!(limited(&raw.request(request(&small)).await), Some(500));
        // 320 KiB and more a page: 5 + 5 tokens, two take the burst.
        server.clock.advance(10_000);
        for n in 0..2 {
            page_of(&raw.request(request(&large)).await, n);
        }
        assert_eq!(limited(&raw.request(request(&large)).await), Some(500));
    }
}

/// Work charged after it is done is paid in full, below empty by up to a minute of refill
/// (one burst, when that is more): a page of thirty 60,000-byte messages (about 27 tokens of
/// bytes) costs more than a burst of 10 and is charged all of it; a page of a hundred (about
/// 90) stops at a minute of refill, 60 tokens below empty.
#[tokio::test]
async fn work_charged_afterwards_is_paid_in_full_up_to_a_minute_of_refill() {
    let server = TestServer::start_with(user_bucket(1, 10)).await;
    let bob = server.client("bob").await;
    server.clock.advance(10_000);
    let g = bob.create_group("large", &["alice"]).await.unwrap().id;
    let bulk = "x".repeat(60_000);
    for _ in 0..100 {
        server.clock.advance(10_000);
        bob.send_text(&g, &bulk).await.unwrap();
    }
    let mut raw = Raw::login(&server, "alice").await;
    let fetch = |limit: u32| {
        Req::FetchHistory(pb::FetchHistory {
            conversation_id: g.clone(),
            limit,
            ..Default::default()
        })
    };
    server.clock.advance(120_000);
    assert!(limited(&raw.request(fetch(30)).await).is_none());
    // One burst below empty would make the next page wait 15 s at most.
    let wait = limited(&raw.request(fetch(1)).await).expect("in debt");
    assert!((25_000..=40_000).contains(&wait), "{wait}");
    server.clock.advance(120_000);
    assert!(limited(&raw.request(fetch(100)).await).is_none());
    assert_eq!(limited(&raw.request(fetch(1)).await), Some(65_000));
}

/// A login replays the user's logged events since the cursor it gives (at most
/// `max_login_replay_events`): besides the login's 20 tokens it costs one more per 64 KiB of
/// them, charged after it.
#[tokio::test]
async fn a_login_replay_is_charged_by_its_bytes() {
    let server = TestServer::start_with(user_bucket(1_000, 400)).await;
    // 1,000 logged events of alice's: added to and removed from a group 500 times.
    let owner = server.client("owner").await;
    let id = owner
        .create_group(&"n".repeat(256), &["bob"])
        .await
        .unwrap()
        .id;
    for _ in 0..500 {
        server.clock.advance(20);
        owner.add_members(&id, &["alice"]).await.unwrap();
        owner.remove_members(&id, &["alice"]).await.unwrap();
    }
    drop(owner);
    server.clock.advance(10_000);
    let (alice, welcome) = server.login("alice").await;
    drop(alice);
    assert_eq!(welcome.events.len(), 1_000);
    let bytes: usize = welcome.events.iter().map(prost::Message::encoded_len).sum();
    let extra = bytes / (64 << 10);
    assert!(extra >= 5, "{bytes} bytes of events");
    // With the clock standing still, a full bucket of 400 serves logins while 20 are left.
    let served = |extra: usize| {
        let (mut left, mut n) = (400, 0);
        while left >= 20 {
            left -= 20 + extra as i64;
            n += 1;
        }
        n
    };
    server.clock.advance(10_000);
    let n = logins_until_limited(&server, "alice").await;
    assert_eq!(n, served(extra));
    // Bob, with no events, logs in 20 times on a full bucket.
    let n = logins_until_limited(&server, "bob").await;
    assert_eq!(n, served(0));
}

/// A will is its user's own message: sent when their connection drops, it is charged to them
/// for its audience as their send would be (1 token per 50 members, after it). Alice's bucket
/// of 25 after a login (20) and a will (1) holds 4; the will to 101 members takes 2 more, so
/// her next login waits for 18 tokens, not 16.
#[tokio::test]
async fn a_will_is_charged_to_its_user_for_its_audience() {
    let server = TestServer::start_with(user_bucket(10, 25)).await;
    let big = group_of_101(&server).await;
    server.clock.advance(10_000);
    let mut bob = server.client("bob").await;
    server.clock.advance(10_000);
    let mut alice = Raw::login(&server, "alice").await;
    let will = Req::SetWill(pb::SetWill {
        conversation_id: big.clone(),
        r#type: 1,
        content: "gone".into(),
        ..Default::default()
    });
    assert!(matches!(alice.request(will).await, Rep::Ok(_)));
    drop(alice);
    let m = message(&mut bob).await;
    assert_eq!(
        (m.sender.as_str(), crate::harness::text(&m).as_str()),
        ("alice", "gone")
    );
    // Counted once the send, and its charge, are over.
    within(server.running().app.stats.wills_sent.wait_for(1)).await;
    let mut raw = Raw::connect(&server).await;
    let rep = raw
        .request(Req::Login(pb::Login {
            token: server.token("alice"),
            ..Default::default()
        }))
        .await;
    assert_eq!(limited(&rep), Some(1_800));
}

/// A page of the conversation list carries each entry's last message, and so does the unread
/// summary a login pushes: besides their 20 tokens they cost one more per 64 KiB of them,
/// charged after. Ten entries whose last messages are 32 KiB cost 20 + 5: four pages (or
/// logins) take a burst of 100, where five of short messages do.
#[tokio::test]
async fn list_pages_and_logins_are_charged_by_the_last_messages_they_carry() {
    let server = TestServer::start_with(user_bucket(10, 100)).await;
    let bob = server.client("bob").await;
    let bulk = "x".repeat(32 << 10);
    for n in 0..10 {
        server.clock.advance(1_000);
        let large = bob
            .create_group(&format!("a{n}"), &["alice"])
            .await
            .unwrap();
        bob.send_text(&large.id, &bulk).await.unwrap();
        server.clock.advance(1_000);
        let small = bob
            .create_group(&format!("c{n}"), &["carol"])
            .await
            .unwrap();
        bob.send_text(&small.id, "short").await.unwrap();
    }
    let list = || {
        Req::ListConversations(pb::ListConversations {
            limit: 10,
            ..Default::default()
        })
    };
    let login = |user: &str| {
        Req::Login(pb::Login {
            token: server.token(user),
            ..Default::default()
        })
    };
    for (user, served) in [("carol", 5), ("alice", 4)] {
        let mut raw = Raw::login(&server, user).await;
        server.clock.advance(10_000);
        for n in 0..served {
            let rep = raw.request(list()).await;
            assert!(
                matches!(&rep, Rep::ConversationList(p) if p.entries.len() == 10),
                "{user} page {n}: {rep:?}"
            );
        }
        assert_eq!(limited(&raw.request(list()).await), Some(2_000), "{user}");
        server.clock.advance(10_000);
        for n in 0..served {
            let mut raw = Raw::connect(&server).await;
            let rep = raw.request(login(user)).await;
            assert!(matches!(rep, Rep::LoginOk(_)), "{user} login {n}: {rep:?}");
        }
        let mut raw = Raw::connect(&server).await;
        assert_eq!(
            limited(&raw.request(login(user)).await),
            Some(2_000),
            "{user}"
        );
    }
}

/// 5,000 groups of alice and bob, created by alice 80 at a time (400 tokens, a user burst of
/// the tests that call it), the server's clock moving on between batches so the bucket refills.
async fn five_thousand_groups_of_alice_and_bob(server: &TestServer) {
    let setup = server.client("alice").await;
    server.clock.advance(2_000); // the login's 20 tokens
    let names: Vec<String> = (0..5_000).map(|n| format!("g{n}")).collect();
    for chunk in names.chunks(80) {
        for r in
            futures_util::future::join_all(chunk.iter().map(|n| setup.create_group(n, &["bob"])))
                .await
        {
            r.unwrap();
        }
        server.clock.advance(2_000);
    }
}

/// How many logins of `user`, each on a new connection, are served until one is rate-limited
/// (at most 20).
async fn logins_until_limited(server: &TestServer, user: &str) -> usize {
    let mut n = 0;
    loop {
        let mut raw = Raw::connect(server).await;
        let rep = raw
            .request(Req::Login(pb::Login {
                token: server.token(user),
                ..Default::default()
            }))
            .await;
        match rep {
            Rep::LoginOk(_) => n += 1,
            rep => {
                assert!(limited(&rep).is_some(), "{rep:?}");
                return n;
            }
        }
        assert!(n <= 20, "{n} logins served");
    }
}

/// `count` groups of `owner` with 999 other members each (`extra` among them): 1,000 member
/// records to load.
async fn groups_of_a_thousand(
    server: &TestServer,
    owner: &str,
    extra: &str,
    count: usize,
) -> Vec<String> {
    let owner = server.client(owner).await;
    let names: Vec<String> = (1..999).map(|n| format!("member-{n}")).collect();
    let members: Vec<&str> = names.iter().map(String::as_str).chain([extra]).collect();
    let mut ids = Vec::new();
    for n in 0..count {
        let g = within(owner.create_group(&format!("g{n}"), &members))
            .await
            .unwrap();
        ids.push(g.id);
    }
    ids
}

/// Loading a conversation from the store for a user's request is charged to that user, one
/// token per 500 member records, whatever the request and whether it is then served: after a
/// restart, a non-member's GetConversation of a group of 1,000 members costs 1 + 2.002 tokens
/// and is answered `ERROR_NOT_A_MEMBER`, so a bucket of 20 lets seven through and the user is
/// then in debt; the groups their refused requests name stay unloaded. Once loaded, the same
/// request costs its one token.
#[tokio::test]
async fn a_request_that_loads_a_conversation_is_charged_for_its_members() {
    let mut server = TestServer::start().await;
    let ids = groups_of_a_thousand(&server, "owner", "bob", 10).await;
    // Twenty tokens, refilled one a second on the test's clock, which stands still.
    user_bucket(1, 20)(&mut server.config);
    server.restart().await;
    let stats = server.running().app.stats.clone();
    let mut raw = Raw::login(&server, "mallory").await;
    server.clock.advance(30_000);
    for (n, id) in ids[..7].iter().enumerate() {
        match raw.request(get(id)).await {
            Rep::Error(e) if e.code == pb::ErrorCode::ErrorNotAMember as i32 => {}
            rep => panic!("request {n}: {rep:?}"),
        }
    }
    // 20 - 7 × 3.002 = -1.014: a token is 2.014 s away.
    assert_eq!(limited(&raw.request(get(&ids[7])).await), Some(2_014));
    assert_eq!(stats.conversations_loaded.get(), 7);
    // Loaded: a token each.
    server.clock.advance(30_000);
    for _ in 0..20 {
        assert!(limited(&raw.request(get(&ids[0])).await).is_none());
    }
    assert!(limited(&raw.request(get(&ids[0])).await).is_some());
    // The members load the same way, and pay the same.
    let mut bob = Raw::login(&server, "bob").await;
    server.clock.advance(30_000);
    for (n, id) in ids[7..].iter().enumerate() {
        assert!(
            matches!(raw_ok(bob.request(get(id)).await), Rep::Conversation(_)),
            "request {n}"
        );
    }
    assert_eq!(stats.conversations_loaded.get(), 10);
    // 20 - 3 × 3.002 = 10.994: ten more light requests fit.
    for _ in 0..10 {
        assert!(limited(&bob.request(get(&ids[0])).await).is_none());
    }
    assert!(limited(&bob.request(get(&ids[0])).await).is_some());
}

/// A reply that is not a rate-limit refusal.
fn raw_ok(rep: Rep) -> Rep {
    assert!(limited(&rep).is_none(), "{rep:?}");
    rep
}
