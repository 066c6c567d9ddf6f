//! The server-side conversation list: stable paging while messages arrive, incremental sync
//! with tombstones, NetEase-style keys, private ext, pins, removal from the list and deletion
//! for everyone, and all of it across a restart.

use crate::harness::*;
use std::collections::{HashMap, HashSet};
use tidings::client::Client;
use tidings::protocol::pb::server_frame::Body as Rep;
use tidings::protocol::pb::{self, ConversationEventKind as Ev, ConversationKind, ErrorCode};

/// A small deterministic generator (the seed is printed, so a failure can be replayed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn ids(entries: &[pb::ListEntry]) -> Vec<String> {
    entries.iter().map(|e| e.conversation_id.clone()).collect()
}

fn list(limit: u32) -> pb::ListConversations {
    pb::ListConversations {
        limit,
        ..Default::default()
    }
}

async fn all(c: &Client, req: pb::ListConversations) -> Vec<pb::ListEntry> {
    within(c.list_all(req)).await.unwrap()
}

fn code(e: tidings::client::ClientError) -> ErrorCode {
    e.code()
        .unwrap_or_else(|| panic!("not a server error: {e}"))
}

/// Pages through 300 conversations with random page sizes while messages keep arriving (some
/// at the same millisecond, so activity times tie). Every page walk must return each
/// conversation that existed at its first page exactly once, and the entries that did not move
/// during the walk must come in list order: newest activity first, ties by id, newest first.
#[tokio::test]
async fn paging_never_repeats_or_skips_while_messages_arrive() {
    let server = TestServer::start().await;
    let alice = server.client("alice").await;
    let bob = server.client("bob").await;
    let seed = std::env::var("LIST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| server.clock_now() as u64 | 1);
    eprintln!("LIST_SEED={seed}");
    let mut rng = Rng(seed);

    let mut convs = Vec::new();
    for i in 0..300 {
        let g = within(alice.create_group(&format!("g{i}"), &["bob"]))
            .await
            .unwrap();
        convs.push(g.id);
        if rng.below(3) == 0 {
            server.clock.advance(1);
        }
    }
    // Some history so activity differs from creation, with ties.
    for _ in 0..200 {
        let c = &convs[rng.below(convs.len() as u64) as usize];
        within(bob.send_text(c, "x")).await.unwrap();
        if rng.below(2) == 0 {
            server.clock.advance(1);
        }
    }
    let everyone: HashSet<String> = convs.iter().cloned().collect();

    for walk in 0..4 {
        let mut seen: Vec<pb::ListEntry> = Vec::new();
        let mut moved = HashSet::new();
        let mut req = list(1 + rng.below(40) as u32);
        loop {
            let page = within(alice.list_conversations(req.clone())).await.unwrap();
            assert!(page.entries.len() <= req.limit as usize);
            seen.extend(page.entries);
            if !page.has_more {
                assert!(page.next_cursor.is_empty());
                break;
            }
            // Between pages: messages to random conversations, sometimes at the same ms.
            for _ in 0..rng.below(6) {
                let c = convs[rng.below(convs.len() as u64) as usize].clone();
                within(bob.send_text(&c, "between pages")).await.unwrap();
                moved.insert(c);
                if rng.below(2) == 0 {
                    server.clock.advance(1);
                }
            }
            req = pb::ListConversations {
                cursor: page.next_cursor,
                limit: 1 + rng.below(40) as u32,
                ..Default::default()
            };
        }
        let got = ids(&seen);
        let unique: HashSet<String> = got.iter().cloned().collect();
        assert_eq!(unique.len(), got.len(), "walk {walk}: an entry repeated");
        assert_eq!(unique, everyone, "walk {walk}: an entry was skipped");
        let still: Vec<&pb::ListEntry> = seen
            .iter()
            .filter(|e| !moved.contains(&e.conversation_id))
            .collect();
        for w in still.windows(2) {
            let (a, b) = (w[0], w[1]);
            assert!(
                (a.last_activity, &a.conversation_id) > (b.last_activity, &b.conversation_id),
                "walk {walk}: out of order: {} ({}) before {} ({})",
                a.conversation_id,
                a.last_activity,
                b.conversation_id,
                b.last_activity
            );
        }
        assert!(seen.iter().all(|e| !e.deleted));
    }

    // A cursor whose snapshot is gone (restart) continues after its last entry.
    let first = within(alice.list_conversations(list(10))).await.unwrap();
    let mut server = server;
    server.restart().await;
    let alice = server.client("alice").await;
    let rest = all(
        &alice,
        pb::ListConversations {
            cursor: first.next_cursor,
            limit: 100,
            ..Default::default()
        },
    )
    .await;
    let mut got = ids(&first.entries);
    got.extend(ids(&rest));
    assert_eq!(
        got.len(),
        300,
        "no entry repeated or lost across the restart"
    );
    assert_eq!(got.iter().collect::<HashSet<_>>().len(), 300);
}

#[tokio::test]
async fn entries_carry_their_fields_and_limits_are_enforced() {
    let server = TestServer::start().await;
    let (mut alice, _) = server.login("alice").await;
    let bob = server.client("bob").await;
    let d = within(alice.create_direct("bob")).await.unwrap();
    let g = within(alice.create_group("team", &["bob"])).await.unwrap();
    let t = within(alice.create_temporary(&["bob"], 600, false))
        .await
        .unwrap();
    server.clock.advance(5);
    within(bob.send_text(&d.id, "hi alice")).await.unwrap();
    assert_eq!(message(&mut alice).await.seq, 1);

    let entries = all(&alice, list(0)).await;
    assert_eq!(
        ids(&entries),
        vec![d.id.clone(), t.id.clone(), g.id.clone()]
    );
    let direct = &entries[0];
    assert_eq!(direct.kind, ConversationKind::Direct as i32);
    assert_eq!(direct.peer, "bob");
    assert_eq!(direct.unread, 1);
    assert_eq!(text(direct.last_message.as_ref().unwrap()), "hi alice");
    assert_eq!(direct.last_activity, server.clock_now());
    let temp = &entries[1];
    assert_eq!(temp.expires_at, t.expires_at);
    assert_eq!(entries[2].name, "team");
    assert!(entries[2].last_message.is_none());

    // Filters: kind, last message left out.
    let only = all(
        &alice,
        pb::ListConversations {
            kind: ConversationKind::Group as i32,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(ids(&only), vec![g.id.clone()]);
    let bare = all(
        &alice,
        pb::ListConversations {
            omit_last_message: true,
            ..Default::default()
        },
    )
    .await;
    assert!(bare.iter().all(|e| e.last_message.is_none()));

    // Page size: default 20, maximum 100.
    let e = within(alice.list_conversations(list(101)))
        .await
        .unwrap_err();
    assert_eq!(code(e), ErrorCode::ErrorLimitExceeded);
    for i in 0..22 {
        within(alice.create_group(&format!("more{i}"), &["bob"]))
            .await
            .unwrap();
    }
    let page = within(alice.list_conversations(list(0))).await.unwrap();
    assert_eq!((page.entries.len(), page.has_more), (20, true));
    let e = within(alice.list_conversations(pb::ListConversations {
        cursor: "not a cursor".into(),
        ..Default::default()
    }))
    .await
    .unwrap_err();
    assert_eq!(code(e), ErrorCode::ErrorInvalidArgument);
}

#[tokio::test]
async fn a_time_window_and_an_entry_cap_apply_only_when_configured() {
    let server = TestServer::start_with(|c| {
        c.list_max_age_secs = 7 * 86_400;
        c.list_max_entries = 3;
    })
    .await;
    let alice = server.client("alice").await;
    // The clock moves by days: a token that outlives them.
    within(alice.refresh_token(&server.long_token("alice")))
        .await
        .unwrap();
    let old = within(alice.create_group("old", &["bob"])).await.unwrap();
    server.clock.advance(8 * 86_400_000);
    let mut fresh = Vec::new();
    for i in 0..4 {
        fresh.push(
            within(alice.create_group(&format!("n{i}"), &["bob"]))
                .await
                .unwrap()
                .id,
        );
        server.clock.advance(1);
    }
    let got = ids(&all(&alice, list(0)).await);
    fresh.reverse();
    assert_eq!(got, fresh[..3].to_vec(), "newest 3 within 7 days");
    assert!(!got.contains(&old.id));
}

#[tokio::test]
async fn incremental_sync_returns_changes_and_tombstones() {
    let mut server = TestServer::start().await;
    let alice = server.client("alice").await;
    let bob = server.client("bob").await;
    let a = within(alice.create_group("a", &["bob"])).await.unwrap();
    let b = within(bob.create_group("b", &["alice"])).await.unwrap();
    let c = within(alice.create_group("c", &["bob"])).await.unwrap();
    let d = within(bob.create_group("d", &["alice"])).await.unwrap();
    server.clock.advance(10);
    let since = server.clock_now();
    server.clock.advance(10);

    within(bob.send_text(&a.id, "new")).await.unwrap();
    within(alice.pin(&c.id, true)).await.unwrap();
    within(alice.delete_list_entries(std::slice::from_ref(&b.id), false))
        .await
        .unwrap();
    within(bob.remove_members(&d.id, &["alice"])).await.unwrap();

    let check = |entries: Vec<pb::ListEntry>| {
        let by: HashMap<String, pb::ListEntry> = entries
            .into_iter()
            .map(|e| (e.conversation_id.clone(), e))
            .collect();
        assert_eq!(by.len(), 4, "{by:?}");
        assert!(!by[&a.id].deleted && by[&a.id].unread == 1);
        assert!(!by[&c.id].deleted && by[&c.id].pinned);
        assert!(by[&b.id].deleted, "removed from the list: a tombstone");
        assert!(by[&d.id].deleted, "removed from the group: a tombstone");
        assert!(by.values().all(|e| e.updated_at > since));
    };
    let req = pb::ListConversations {
        updated_after: since,
        ..Default::default()
    };
    check(all(&alice, req.clone()).await);
    // Without updated_after there are no tombstones; updated_before bounds from above.
    let full = all(&alice, list(0)).await;
    assert_eq!(
        ids(&full).into_iter().collect::<HashSet<_>>(),
        [a.id.clone(), c.id.clone()].into_iter().collect()
    );
    let before = all(
        &alice,
        pb::ListConversations {
            updated_before: since,
            ..Default::default()
        },
    )
    .await;
    assert!(before.is_empty(), "everything changed after `since`");

    server.restart().await;
    let alice = server.client("alice").await;
    check(all(&alice, req).await);
}

#[tokio::test]
async fn entries_by_netease_keys() {
    let server = TestServer::start().await;
    let alice = server.client("alice").await;
    let d = within(alice.create_direct("bob")).await.unwrap();
    let g = within(alice.create_group("g1", &["bob"])).await.unwrap();
    let e = within(alice.get_list_entry("p2p|bob")).await.unwrap();
    assert_eq!(
        (e.conversation_id.as_str(), e.peer.as_str()),
        (d.id.as_str(), "bob")
    );
    assert_eq!(
        within(alice.get_list_entry(&format!("team|{}", g.id)))
            .await
            .unwrap()
            .conversation_id,
        g.id
    );
    assert_eq!(
        within(alice.get_list_entry(&format!("super_team|{}", g.id)))
            .await
            .unwrap()
            .conversation_id,
        g.id
    );
    assert_eq!(
        within(alice.get_list_entry(&d.id)).await.unwrap().peer,
        "bob"
    );
    for (key, want) in [
        ("p2p|carol", ErrorCode::ErrorConversationNotFound),
        ("team|nope", ErrorCode::ErrorConversationNotFound),
        ("chatroom|x", ErrorCode::ErrorInvalidArgument),
    ] {
        let e = within(alice.get_list_entry(key)).await.unwrap_err();
        assert_eq!(code(e), want, "{key}");
    }
    let carol = server.client("carol").await;
    let e = within(carol.get_list_entry(&g.id)).await.unwrap_err();
    assert_eq!(code(e), ErrorCode::ErrorNotAMember);
}

#[tokio::test]
async fn private_ext_is_the_owners_upsert_and_reaches_their_devices() {
    let mut server = TestServer::start().await;
    let (alice, _) = server.login_device("alice", "phone", 0).await;
    let (mut alice_pc, _) = server.login_device("alice", "pc", 0).await;
    let (mut bob, _) = server.login("bob").await;
    let d = within(alice.create_direct("bob")).await.unwrap();
    event(&mut alice_pc).await;
    event(&mut bob).await;

    let e = within(alice.set_entry_ext("p2p|bob", "{\"draft\":\"hi\"}"))
        .await
        .unwrap();
    assert_eq!(e.ext, "{\"draft\":\"hi\"}");
    match push(&mut alice_pc).await {
        Rep::ListEntryChanged(c) => assert_eq!(c.entry.unwrap().ext, e.ext),
        other => panic!("expected ListEntryChanged, got {other:?}"),
    }
    assert_no_push(&mut bob).await;
    assert_eq!(within(bob.get_list_entry(&d.id)).await.unwrap().ext, "");

    // Upsert: an entry removed from the list comes back with its ext, and no last message.
    within(alice.delete_list_entries(std::slice::from_ref(&d.id), false))
        .await
        .unwrap();
    assert!(all(&alice, list(0)).await.is_empty());
    let e = within(alice.set_entry_ext(&d.id, "back")).await.unwrap();
    assert!(!e.deleted && e.last_message.is_none());
    assert_eq!(ids(&all(&alice, list(0)).await), vec![d.id.clone()]);

    let big = "x".repeat(1025);
    let err = within(alice.set_entry_ext(&d.id, &big)).await.unwrap_err();
    assert_eq!(code(err), ErrorCode::ErrorLimitExceeded);

    server.restart().await;
    let alice = server.client("alice").await;
    assert_eq!(
        within(alice.get_list_entry("p2p|bob")).await.unwrap().ext,
        "back"
    );
}

#[tokio::test]
async fn pins_are_capped_ordered_and_synced() {
    let mut server = TestServer::start_with(|c| c.max_pinned = 3).await;
    let (alice, _) = server.login("alice").await;
    let (mut alice_pc, _) = server.login("alice").await;
    let mut gs = Vec::new();
    for i in 0..4 {
        gs.push(
            within(alice.create_group(&format!("g{i}"), &["bob"]))
                .await
                .unwrap()
                .id,
        );
        event(&mut alice_pc).await;
    }
    for g in &gs[..3] {
        server.clock.advance(1);
        let e = within(alice.pin(g, true)).await.unwrap();
        assert!(e.pinned && e.pinned_at == server.clock_now());
        match push(&mut alice_pc).await {
            Rep::ListEntryChanged(c) => assert!(c.entry.unwrap().pinned),
            other => panic!("expected ListEntryChanged, got {other:?}"),
        }
    }
    let err = within(alice.pin(&gs[3], true)).await.unwrap_err();
    assert_eq!(code(err), ErrorCode::ErrorLimitExceeded);
    // Pinning again keeps the first pin time.
    let again = within(alice.pin(&gs[0], true)).await.unwrap();
    assert_eq!(again.pinned_at, server.clock_now() - 2);
    let pinned = pb::ListConversations {
        pinned_only: true,
        ..Default::default()
    };
    let want = vec![gs[2].clone(), gs[1].clone(), gs[0].clone()];
    assert_eq!(ids(&all(&alice, pinned.clone()).await), want);
    // Unpin frees a slot.
    within(alice.pin(&gs[1], false)).await.unwrap();
    within(alice.pin(&gs[3], true)).await.unwrap();

    server.restart().await;
    let alice = server.client("alice").await;
    assert_eq!(
        ids(&all(&alice, pinned).await),
        vec![gs[3].clone(), gs[2].clone(), gs[0].clone()]
    );
    let (_, welcome) = server.login("alice").await;
    assert!(
        welcome.unread(&gs[3]).unwrap().pinned_at > 0,
        "pins in the login summary"
    );
}

#[tokio::test]
async fn deleting_from_my_list_is_one_way_and_undone_by_the_next_message() {
    let mut server = TestServer::start().await;
    let (alice, _) = server.login("alice").await;
    let (mut alice_pc, _) = server.login("alice").await;
    let (bob, _) = server.login("bob").await;
    let d = within(alice.create_direct("bob")).await.unwrap();
    let g = within(alice.create_group("g", &["bob"])).await.unwrap();
    event(&mut alice_pc).await;
    event(&mut alice_pc).await;
    for i in 0..3 {
        within(bob.send_text(&d.id, &format!("d{i}")))
            .await
            .unwrap();
        within(bob.send_text(&g.id, &format!("g{i}")))
            .await
            .unwrap();
    }
    for _ in 0..6 {
        message(&mut alice_pc).await;
    }

    within(alice.delete_list_entries(&["p2p|bob".to_string(), g.id.clone()], false))
        .await
        .unwrap();
    match push(&mut alice_pc).await {
        Rep::ListEntriesDeleted(x) => {
            assert_eq!(x.conversation_ids, vec![d.id.clone(), g.id.clone()])
        }
        other => panic!("expected ListEntriesDeleted, got {other:?}"),
    }
    assert!(all(&alice, list(0)).await.is_empty());
    let e = within(alice.get_list_entry(&d.id)).await.unwrap_err();
    assert_eq!(code(e), ErrorCode::ErrorConversationNotFound);
    // Unpinning a removed entry leaves it removed.
    let e = within(alice.pin(&d.id, false)).await.unwrap_err();
    assert_eq!(code(e), ErrorCode::ErrorConversationNotFound);
    assert!(all(&alice, list(0)).await.is_empty());
    assert_eq!(all(&bob, list(0)).await.len(), 2, "bob's list is untouched");
    assert_eq!(
        within(alice.history(&d.id, 0, 10))
            .await
            .unwrap()
            .messages
            .len(),
        3,
        "without clear_history the messages stay"
    );

    // Batch limits.
    let e = within(alice.delete_list_entries(&[], false))
        .await
        .unwrap_err();
    assert_eq!(code(e), ErrorCode::ErrorInvalidArgument);
    let many: Vec<String> = (0..101).map(|_| d.id.clone()).collect();
    let e = within(alice.delete_list_entries(&many, false))
        .await
        .unwrap_err();
    assert_eq!(code(e), ErrorCode::ErrorLimitExceeded);

    server.restart().await;
    let alice = server.client("alice").await;
    let bob = server.client("bob").await;
    assert!(
        all(&alice, list(0)).await.is_empty(),
        "still deleted after restart"
    );
    within(bob.send_text(&d.id, "again")).await.unwrap();
    let back = all(&alice, list(0)).await;
    assert_eq!(
        ids(&back),
        vec![d.id.clone()],
        "the next message brings it back"
    );
    assert_eq!(back[0].unread, 4);

    // With clear_history the caller's history is gone too; bob's is not.
    within(alice.delete_list_entries(std::slice::from_ref(&d.id), true))
        .await
        .unwrap();
    within(bob.send_text(&d.id, "fresh")).await.unwrap();
    let h = within(alice.history(&d.id, 0, 10)).await.unwrap();
    assert_eq!(
        h.messages.iter().map(text).collect::<Vec<_>>(),
        vec!["fresh"]
    );
    assert_eq!(
        within(bob.history(&d.id, 0, 10))
            .await
            .unwrap()
            .messages
            .len(),
        5
    );
    let e = within(alice.get_list_entry(&d.id)).await.unwrap();
    assert_eq!(e.unread, 1, "cleared messages are not unread");
}

#[tokio::test]
async fn deleting_for_everyone_with_and_without_purge() {
    let mut server = TestServer::start().await;
    let (alice, _) = server.login("alice").await;
    let (mut bob, _) = server.login("bob").await;
    let g = within(alice.create_group("g", &["bob", "carol"]))
        .await
        .unwrap();
    let d = within(alice.create_direct("bob")).await.unwrap();
    let g2 = within(alice.create_group("g2", &["bob"])).await.unwrap();
    for _ in 0..3 {
        event(&mut bob).await;
    }
    for c in [&g.id, &d.id, &g2.id] {
        within(alice.send_text(c, "hello")).await.unwrap();
        message(&mut bob).await;
    }

    // Only the owner of a group; either member of a direct conversation.
    let e = within(bob.delete_conversation(&g.id, false))
        .await
        .unwrap_err();
    assert_eq!(code(e), ErrorCode::ErrorPermissionDenied);
    let carol = server.client("carol").await;
    let e = within(carol.delete_conversation(&d.id, false))
        .await
        .unwrap_err();
    assert_eq!(code(e), ErrorCode::ErrorNotAMember);

    within(alice.delete_conversation(&g.id, false))
        .await
        .unwrap();
    let ev = event(&mut bob).await;
    assert_eq!(
        (ev.kind, ev.conversation_id.as_str()),
        (Ev::Deleted as i32, g.id.as_str())
    );
    within(bob.delete_conversation(&d.id, true)).await.unwrap();
    within(alice.delete_conversation(&g2.id, true))
        .await
        .unwrap();
    let ev = event(&mut bob).await;
    assert_eq!(ev.kind, Ev::Deleted as i32);

    let gone = |e: tidings::client::ClientError| code(e) == ErrorCode::ErrorConversationNotFound;
    for c in [&g.id, &d.id, &g2.id] {
        assert!(gone(within(bob.get_conversation(c)).await.unwrap_err()));
        assert!(gone(within(bob.history(c, 0, 10)).await.unwrap_err()));
        assert!(gone(within(alice.send_text(c, "x")).await.unwrap_err()));
        assert!(gone(within(carol.get_list_entry(c)).await.unwrap_err()));
    }
    assert!(all(&bob, list(0)).await.is_empty());

    server.restart().await;
    let (bob, welcome) = server.login("bob").await;
    assert!(welcome.summary.entries.is_empty());
    assert!(welcome.events.iter().any(|e| e.kind == Ev::Deleted as i32));
    for c in [&g.id, &d.id, &g2.id] {
        assert!(gone(within(bob.get_conversation(c)).await.unwrap_err()));
    }
    // A new direct conversation between the same pair is a new one.
    let again = within(bob.create_direct("alice")).await.unwrap();
    assert_ne!(again.id, d.id);

    // The store keeps the messages of the unpurged group and none of the purged ones.
    server.server.take().unwrap().stop().await.unwrap();
    let store = tidings::store::open(
        &server.config.store_engine,
        &server.config.data_dir,
        1 << 20,
    )
    .unwrap();
    let num = |id: &str| tidings::protocol::parse_conversation_id(id).unwrap();
    assert!(store.last_message(num(&g.id)).unwrap().is_some());
    assert!(store.last_message(num(&d.id)).unwrap().is_none());
    assert!(store.last_message(num(&g2.id)).unwrap().is_none());
}

/// A list long enough to be kept in memory (`store::list_cache`, from 128 entries) follows
/// every change to its entries: messages, pins, one-way removal and the message that brings an
/// entry back, leaving, being added, deletion with and without purge, incremental sync's
/// tombstones, and a restart.
#[tokio::test]
async fn a_long_list_kept_in_memory_follows_every_change() {
    let mut server = TestServer::start().await;
    let alice = server.client("alice").await;
    let bob = server.client("bob").await;
    let n = tidings::store::list_cache::MIN_ROWS + 2;
    // Newest first, as the list orders them (each created a millisecond after the last).
    let mut expected: Vec<String> = Vec::new();
    for i in 0..n {
        let id = alice
            .create_group(&format!("g{i}"), &["bob"])
            .await
            .unwrap()
            .id;
        expected.insert(0, id);
        server.clock.advance(1);
    }
    let g: Vec<String> = expected.iter().rev().cloned().collect();
    let check = |expected: &Vec<String>, entries: Vec<pb::ListEntry>, step: &str| {
        assert_eq!(&ids(&entries), expected, "{step}");
    };
    check(&expected, all(&alice, list(100)).await, "created");

    // A message moves an entry to the top (no per-user record is written for alice).
    bob.send_text(&g[0], "hi").await.unwrap();
    server.clock.advance(1);
    expected.retain(|id| *id != g[0]);
    expected.insert(0, g[0].clone());
    check(&expected, all(&alice, list(100)).await, "message");

    // A pin: in the pinned listing, and the full one keeps its order.
    alice.pin(&g[5], true).await.unwrap();
    server.clock.advance(1);
    let pinned = all(
        &alice,
        pb::ListConversations {
            limit: 100,
            pinned_only: true,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(ids(&pinned), [g[5].clone()]);
    check(&expected, all(&alice, list(100)).await, "pin");

    // Removed from alice's list one-way; the next message brings it back on top.
    alice
        .delete_list_entries(std::slice::from_ref(&g[0]), false)
        .await
        .unwrap();
    server.clock.advance(1);
    expected.retain(|id| *id != g[0]);
    check(
        &expected,
        all(&alice, list(100)).await,
        "removed from the list",
    );
    bob.send_text(&g[0], "again").await.unwrap();
    server.clock.advance(1);
    expected.insert(0, g[0].clone());
    check(
        &expected,
        all(&alice, list(100)).await,
        "back with a message",
    );

    // Leaving; being added to a new group; deletion for everyone, with and without purge.
    let before_leave = server.clock_now();
    server.clock.advance(1);
    alice.leave(&g[1]).await.unwrap();
    server.clock.advance(1);
    expected.retain(|id| *id != g[1]);
    check(&expected, all(&alice, list(100)).await, "left");
    let new = bob.create_group("new", &["alice"]).await.unwrap().id;
    server.clock.advance(1);
    expected.insert(0, new.clone());
    check(&expected, all(&alice, list(100)).await, "added");
    alice.delete_conversation(&g[3], true).await.unwrap();
    server.clock.advance(1);
    expected.retain(|id| *id != g[3]);
    check(
        &expected,
        all(&alice, list(100)).await,
        "deleted with purge",
    );
    alice.delete_conversation(&g[4], false).await.unwrap();
    server.clock.advance(1);
    expected.retain(|id| *id != g[4]);
    check(&expected, all(&alice, list(100)).await, "deleted");

    // Incremental sync sees the left conversation as a tombstone.
    let changed = all(
        &alice,
        pb::ListConversations {
            limit: 100,
            updated_after: before_leave,
            ..Default::default()
        },
    )
    .await;
    let left = changed
        .iter()
        .find(|e| e.conversation_id == g[1])
        .expect("a tombstone for the left conversation");
    assert!(left.deleted);

    // The same after a restart, from the store.
    drop((alice, bob));
    server.restart().await;
    let alice = server.client("alice").await;
    check(&expected, all(&alice, list(100)).await, "after a restart");
}

/// Counts the reads of conversation records and newest messages.
#[derive(Default)]
struct HeadReads(std::sync::atomic::AtomicUsize);

impl crate::spied_store::Watch for HeadReads {
    fn read(&self, what: &'static str) {
        if matches!(what, "conversation" | "last_message") {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

impl HeadReads {
    fn take(&self) -> usize {
        self.0.swap(0, std::sync::atomic::Ordering::SeqCst)
    }
}

/// After a restart no conversation is in memory: the first listing reads each one's record
/// and newest message from the store, and keeps what the list needs of it, so the next ones
/// read only the page's entries. What is kept follows messages, deletion and expiry.
#[tokio::test]
async fn a_list_after_a_restart_reads_each_conversation_once_and_follows_changes() {
    let reads = std::sync::Arc::new(HeadReads::default());
    let mut server = crate::spied_store::spied_server(reads.clone(), |_| {}).await;
    let alice = server.client("alice").await;
    let bob = server.client("bob").await;
    const N: usize = 40;
    let mut expected: Vec<String> = Vec::new();
    for i in 0..N {
        let id = bob
            .create_group(&format!("g{i}"), &["alice"])
            .await
            .unwrap()
            .id;
        bob.send_text(&id, "hello").await.unwrap();
        expected.insert(0, id);
        server.clock.advance(1);
    }
    let temp = bob
        .create_temporary(&["alice"], 60, false)
        .await
        .unwrap()
        .id;
    server.clock.advance(1);
    expected.insert(0, temp.clone());
    drop((alice, bob));
    server.restart().await;
    let alice = server.client("alice").await;
    let bob = server.client("bob").await;

    let page = |limit| {
        let alice = &alice;
        async move {
            ids(&within(alice.list_conversations(list(limit)))
                .await
                .unwrap()
                .entries)
        }
    };
    let at_login = reads.take();
    assert_eq!(page(10).await, expected[..10], "first listing");
    let first = reads.take();
    assert_eq!(page(10).await, expected[..10], "second listing");
    let again = reads.take();
    eprintln!("reads: login {at_login}, first {first}, again {again}");
    assert!(
        at_login + first >= N,
        "the store is read for every conversation once"
    );
    assert!(
        again <= 2 * 10,
        "only the page's entries are read again: {again}"
    );

    // A message in a conversation not in memory loads it: its entry moves to the top.
    let g = expected[N - 1].clone();
    bob.send_text(&g, "news").await.unwrap();
    server.clock.advance(1);
    expected.retain(|id| *id != g);
    expected.insert(0, g.clone());
    assert_eq!(all(&alice, list(100)).await.len(), N + 1);
    assert_eq!(
        ids(&all(&alice, list(100)).await),
        expected,
        "after a message"
    );

    // Deleted for everyone: gone from the list.
    let d = expected[5].clone();
    bob.delete_conversation(&d, true).await.unwrap();
    expected.retain(|id| *id != d);
    assert_eq!(
        ids(&all(&alice, list(100)).await),
        expected,
        "after a deletion"
    );

    // The temporary conversation ends at its deadline, whether or not it was swept yet.
    server.clock.advance(61_000);
    expected.retain(|id| *id != temp);
    assert_eq!(ids(&all(&alice, list(100)).await), expected, "after expiry");
}

/// Loaded conversations publish what the list orders by as they change, so a list of them
/// reads no conversation's state; after a restart it is read from the store instead. Both
/// must give the same entries after every kind of change that moves or alters one.
#[tokio::test]
async fn a_list_of_loaded_conversations_reads_as_after_a_restart() {
    let mut server = TestServer::start().await;
    let alice = server.client("alice").await;
    let bob = server.client("bob").await;
    let mut g = Vec::new();
    for i in 0..8 {
        let id = bob
            .create_group(&format!("g{i}"), &["alice"])
            .await
            .unwrap()
            .id;
        g.push(id);
        server.clock.advance(1);
    }
    bob.send_text(&g[1], "one").await.unwrap();
    server.clock.advance(1);
    bob.set_mute_all(&g[2], true).await.unwrap();
    server.clock.advance(1);
    bob.transfer_ownership(&g[3], "alice").await.unwrap();
    server.clock.advance(1);
    alice.send_text(&g[4], "two").await.unwrap();
    server.clock.advance(1);
    bob.delete_conversation(&g[5], false).await.unwrap();
    server.clock.advance(1);
    alice.leave(&g[6]).await.unwrap();
    server.clock.advance(1);
    let temp = bob
        .create_temporary(&["alice"], 60, false)
        .await
        .unwrap()
        .id;
    bob.send_text(&temp, "three").await.unwrap();
    server.clock.advance(1);
    bob.send_text(&g[0], "four").await.unwrap();
    server.clock.advance(1);
    bob.set_mute_all(&g[1], true).await.unwrap();
    server.clock.advance(1);

    let before = all(&alice, list(100)).await;
    assert_eq!(
        ids(&before),
        [&g[0], &temp, &g[4], &g[1], &g[7], &g[3], &g[2]].map(|s| s.clone()),
        "newest message or joining first; the deleted and the left group gone"
    );
    drop((alice, bob));
    server.restart().await;
    let alice = server.client("alice").await;
    assert_eq!(all(&alice, list(100)).await, before);
}

/// Counts the decodes of a user's whole list of entries.
#[derive(Default)]
struct ListDecodes(std::sync::atomic::AtomicUsize);

impl crate::spied_store::Watch for ListDecodes {
    fn read(&self, what: &'static str) {
        if what == "user_conversations" {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

/// Pinning counts the caller's pins from the list rows the store keeps: pin churn decodes
/// the caller's list of entries at most once, and the cap still holds.
#[tokio::test]
async fn pinning_counts_pins_without_decoding_the_list_each_time() {
    let decodes = std::sync::Arc::new(ListDecodes::default());
    let server = crate::spied_store::spied_server(decodes.clone(), |c| c.max_pinned = 3).await;
    let alice = server.client("alice").await;
    let mut gs = Vec::new();
    for i in 0..6 {
        let name = format!("g{i}");
        gs.push(
            within(alice.create_group(&name, &["bob"]))
                .await
                .unwrap()
                .id,
        );
    }
    let before = decodes.0.load(std::sync::atomic::Ordering::SeqCst);
    for _ in 0..5 {
        for g in &gs[..3] {
            within(alice.pin(g, true)).await.unwrap();
        }
        let err = within(alice.pin(&gs[3], true)).await.unwrap_err();
        assert_eq!(code(err), ErrorCode::ErrorLimitExceeded);
        for g in &gs[..3] {
            within(alice.pin(g, false)).await.unwrap();
        }
    }
    let after = decodes.0.load(std::sync::atomic::Ordering::SeqCst);
    assert!(after - before <= 1, "{} decodes", after - before);
}

const HOUR: i64 = 3_600_000;

/// Tombstones older than `list_tombstone_retention_secs` are swept (a newer one, or one
/// written again, stays), and an incremental sync from before the retention is refused; a
/// restart keeps both.
#[tokio::test]
async fn list_tombstones_older_than_the_retention_are_swept_and_older_syncs_refused() {
    let mut server = TestServer::start_with(|c| {
        c.list_tombstone_retention_secs = 86_400;
        c.admin_listen = "127.0.0.1:0".into();
        c.admin_api_keys = vec![crate::admin::KEY.into()];
    })
    .await;
    let sweeps = |server: &TestServer, n: u64| {
        let stats = server.running().app.stats.clone();
        async move { within(stats.tombstone_sweeps.wait_for(n)).await }
    };
    let tombstones = |server: &TestServer, user: &str| {
        let mut t = server.running().app.store.tombstones(user).unwrap();
        t.sort();
        t
    };
    sweeps(&server, 1).await;
    let alice = server.client("alice").await;
    let bob = server.client("bob").await;
    let deleted = within(alice.create_group("deleted", &["bob"]))
        .await
        .unwrap();
    let removed = within(alice.create_group("removed", &["bob"]))
        .await
        .unwrap();
    let again = within(alice.create_group("again", &["bob"])).await.unwrap();
    server.clock.advance(10);
    let t_old = server.clock_now();
    within(alice.delete_conversation(&deleted.id, true))
        .await
        .unwrap();
    within(alice.remove_members(&removed.id, &["bob"]))
        .await
        .unwrap();
    within(bob.leave(&again.id)).await.unwrap();
    assert_eq!(tombstones(&server, "bob").len(), 3);
    assert_eq!(tombstones(&server, "alice").len(), 1);

    // Half a day on: bob joins `again` and leaves it again, and a new group is deleted.
    server.clock.advance(12 * HOUR);
    sweeps(&server, 2).await;
    // (Tokens outlive no half day.)
    let alice = server.client("alice").await;
    let bob = server.client("bob").await;
    within(alice.add_members(&again.id, &["bob"]))
        .await
        .unwrap();
    within(bob.leave(&again.id)).await.unwrap();
    let fresh = within(alice.create_group("fresh", &["bob"])).await.unwrap();
    within(alice.delete_conversation(&fresh.id, false))
        .await
        .unwrap();
    let t_new = server.clock_now();
    assert_eq!(server.running().app.stats.list_tombstones_swept.get(), 0);

    // A day after the first ones: they go, the newer ones stay.
    server.clock.advance(13 * HOUR);
    sweeps(&server, 3).await;
    let nums = |entries: &[(u64, i64)]| entries.iter().map(|(_, at)| *at).collect::<Vec<_>>();
    assert_eq!(nums(&tombstones(&server, "bob")), vec![t_new, t_new]);
    assert_eq!(nums(&tombstones(&server, "alice")), vec![t_new]);
    assert_eq!(server.running().app.stats.list_tombstones_swept.get(), 3);
    let m = crate::admin::metrics_of(&server).await;
    assert_eq!(m["tidings_list_tombstones_swept_total"], 3.0);

    let want = [again.id.clone(), fresh.id.clone()];
    sync_around_the_retention(&server, t_old, t_new, &want).await;
    drop((alice, bob));
    server.restart().await;
    sweeps(&server, 1).await;
    assert_eq!(tombstones(&server, "bob").len(), 2);
    sync_around_the_retention(&server, t_old, t_new, &want).await;
}

/// bob's sync from `t_old`, before the retention, is refused; from `t_new`, within it, it
/// returns the tombstones of `want`.
async fn sync_around_the_retention(server: &TestServer, t_old: i64, t_new: i64, want: &[String]) {
    let bob = server.client("bob").await;
    let e = within(bob.list_conversations(pb::ListConversations {
        updated_after: t_old - 1,
        ..Default::default()
    }))
    .await
    .unwrap_err();
    assert_eq!(code(e), ErrorCode::ErrorWindowExpired);
    let since = all(
        &bob,
        pb::ListConversations {
            updated_after: t_new - 1,
            ..Default::default()
        },
    )
    .await;
    let mut got: Vec<(String, bool)> = since
        .iter()
        .map(|e| (e.conversation_id.clone(), e.deleted))
        .collect();
    got.sort();
    let mut want: Vec<(String, bool)> = want.iter().map(|id| (id.clone(), true)).collect();
    want.sort();
    assert_eq!(got, want);
}

/// bob's login replay from `cursor`: the seqs replayed and whether older ones were left out.
async fn replay(server: &TestServer, cursor: u64) -> (Vec<u64>, bool) {
    let (_, w) = server.login_device("bob", "d", cursor).await;
    (
        w.events.iter().map(|e| e.user_seq).collect(),
        w.ok.events_truncated,
    )
}

/// Logged user events older than the retention are swept, every one of them: a log the sweep
/// empties goes on above the highest seq it took, so no seq is handed out twice and nothing is
/// kept for a user id no one uses again. A login from before the oldest kept, or below the
/// floor of an emptied log, is told `events_truncated`.
#[tokio::test]
async fn user_events_older_than_the_retention_are_swept_and_replays_say_so() {
    let mut server = TestServer::start_with(|c| c.list_tombstone_retention_secs = 86_400).await;
    let sweeps = |server: &TestServer, n: u64| {
        let stats = server.running().app.stats.clone();
        async move { within(stats.tombstone_sweeps.wait_for(n)).await }
    };
    let logged = |server: &TestServer| {
        server
            .running()
            .app
            .store
            .user_events_page(None, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|(u, seq, _)| (u.to_string(), seq))
            .collect::<Vec<_>>()
    };
    sweeps(&server, 1).await;
    let alice = server.client("alice").await;
    for name in ["g1", "g2"] {
        within(alice.create_group(name, &["bob", "nobody-ever"]))
            .await
            .unwrap();
    }
    assert_eq!(replay(&server, 0).await, (vec![1, 2], false));

    // A day on: all of them go, the newest too.
    server.clock.advance(25 * HOUR);
    sweeps(&server, 2).await;
    assert_eq!(server.running().app.stats.user_events_swept.get(), 6);
    assert_eq!(logged(&server), vec![]);
    // The empty log stands at the floor: a device that saw everything is not told of a
    // truncation, one that saw less is.
    assert_eq!(replay(&server, 2).await, (vec![], false));
    assert_eq!(replay(&server, 1).await, (vec![], true));
    let (_, w) = server.login_device("bob", "d", 2).await;
    assert_eq!(w.ok.event_cursor, 2);
    // The next event goes on above the floor, after a restart too.
    drop(alice);
    server.restart().await;
    sweeps(&server, 1).await;
    let alice = server.client("alice").await;
    within(alice.create_group("g3", &["bob"])).await.unwrap();
    assert_eq!(replay(&server, 2).await, (vec![3], false));
    assert_eq!(replay(&server, 1).await, (vec![3], true));
    assert_eq!(replay(&server, 0).await, (vec![3], true));

    // Once the made-up member's groups are gone and a retention has passed, nothing of theirs
    // is left.
    let list = within(alice.list_conversations(Default::default()))
        .await
        .unwrap();
    for entry in list.entries {
        within(alice.delete_conversation(&entry.conversation_id, true))
            .await
            .unwrap();
    }
    server.clock.advance(25 * HOUR);
    sweeps(&server, 2).await;
    assert!(
        logged(&server).iter().all(|(u, _)| u != "nobody-ever"),
        "{:?}",
        logged(&server)
    );
}

/// A login from before the oldest event `event_log_retention` keeps is told
/// `events_truncated`, however few events are left.
#[tokio::test]
async fn a_replay_from_before_the_kept_events_is_truncated() {
    let server = TestServer::start_with(|c| {
        c.event_log_retention = 2;
        c.max_login_replay_events = 2;
    })
    .await;
    let alice = server.client("alice").await;
    for name in ["g1", "g2", "g3"] {
        within(alice.create_group(name, &["bob"])).await.unwrap();
    }
    assert_eq!(replay(&server, 0).await, (vec![2, 3], true));
    assert_eq!(replay(&server, 1).await, (vec![2, 3], false));
}
