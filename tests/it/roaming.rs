//! Message roaming: every history parameter, one-way deletes, recall and edit, receipts and
//! exact unread counts across devices, and all of it across a restart.

use crate::harness::*;
use tidings::client::{Client, ClientError};
use tidings::protocol::message_id;
use tidings::protocol::parse_conversation_id;
use tidings::protocol::pb::server_frame::Body as Rep;
use tidings::protocol::pb::{self, ErrorCode, HistoryDirection, MessageUpdateKind, ReceiptKind};

fn code(e: ClientError) -> ErrorCode {
    e.code()
        .unwrap_or_else(|| panic!("not a server error: {e}"))
}

fn seqs(p: &pb::MessagePage) -> Vec<u64> {
    p.messages.iter().map(|m| m.seq).collect()
}

async fn fetch(c: &Client, req: pb::FetchHistory) -> pb::MessagePage {
    within(c.fetch_history(req)).await.unwrap()
}

/// Follows `next_cursor` to the end; returns every page's seqs.
async fn walk(c: &Client, mut req: pb::FetchHistory) -> Vec<Vec<u64>> {
    let mut pages = Vec::new();
    loop {
        let p = fetch(c, req.clone()).await;
        pages.push(seqs(&p));
        if !p.has_more {
            assert!(p.next_cursor.is_empty());
            return pages;
        }
        req.cursor = p.next_cursor;
    }
}

fn range(a: u64, b: u64) -> Vec<u64> {
    (a..=b).collect()
}

/// Sends ten messages: seqs 1–3 at time T, 4–6 at T+10 (equal timestamps), 7–10 at T+20;
/// odd seqs have type 1, even seqs type 2. Returns T.
async fn ten(server: &TestServer, c: &Client, id: &str) -> i64 {
    let t = server.clock_now();
    for seq in 1..=10u64 {
        if seq == 4 || seq == 7 {
            server.clock.advance(10);
        }
        let ack = within(c.send(pb::SendMessage {
            conversation_id: id.into(),
            r#type: if seq % 2 == 1 { 1 } else { 2 },
            content: format!("m{seq}").into_bytes().into(),
            ..Default::default()
        }))
        .await
        .unwrap();
        assert_eq!(ack.seq, seq);
    }
    t
}

#[tokio::test]
async fn every_history_parameter() {
    let mut server = TestServer::start().await;
    let alice = server.client("alice").await;
    let g = within(alice.create_group("g", &["bob"])).await.unwrap();
    let t = ten(&server, &alice, &g.id).await;
    let num = parse_conversation_id(&g.id).unwrap();
    let id = |seq| message_id(num, seq);
    let q = |f: &dyn Fn(&mut pb::FetchHistory)| {
        let mut r = pb::FetchHistory {
            conversation_id: g.id.clone(),
            limit: 100,
            ..Default::default()
        };
        f(&mut r);
        r
    };
    let old = HistoryDirection::OldestFirst as i32;

    // Defaults: newest first, pages come back in ascending seq, cursor and has_more.
    let p = fetch(&alice, q(&|r| r.limit = 0)).await;
    assert_eq!(seqs(&p), range(1, 10), "default limit 20 covers all ten");
    assert!(!p.has_more && p.next_cursor.is_empty());
    assert_eq!(
        walk(&alice, q(&|r| r.limit = 4)).await,
        vec![range(7, 10), range(3, 6), range(1, 2)]
    );
    assert_eq!(
        walk(
            &alice,
            q(&|r| {
                r.limit = 4;
                r.direction = old;
            })
        )
        .await,
        vec![range(1, 4), range(5, 8), range(9, 10)]
    );

    // Start from a seq, exclusive (default) or inclusive, both directions.
    let cases: Vec<(pb::FetchHistory, Vec<u64>)> = vec![
        (
            q(&|r| {
                r.start_seq = 5;
            }),
            range(1, 4),
        ),
        (
            q(&|r| {
                r.start_seq = 5;
                r.start_inclusive = true;
            }),
            range(1, 5),
        ),
        (
            q(&|r| {
                r.start_seq = 5;
                r.direction = old;
            }),
            range(6, 10),
        ),
        (
            q(&|r| {
                r.start_seq = 5;
                r.start_inclusive = true;
                r.direction = old;
            }),
            range(5, 10),
        ),
        // The legacy shorthand.
        (q(&|r| r.before_seq = 5), range(1, 4)),
        // Start from a time alone: before it (newest first) or after it (oldest first).
        (q(&|r| r.start_time = t + 10), range(1, 3)),
        (
            q(&|r| {
                r.start_time = t + 10;
                r.start_inclusive = true;
            }),
            range(1, 6),
        ),
        (
            q(&|r| {
                r.start_time = t + 10;
                r.direction = old;
            }),
            range(7, 10),
        ),
        (
            q(&|r| {
                r.start_time = t + 10;
                r.start_inclusive = true;
                r.direction = old;
            }),
            range(4, 10),
        ),
        // Time plus message id: pins one message among equal timestamps.
        (
            q(&|r| {
                r.start_time = t + 10;
                r.start_message_id = id(5);
            }),
            range(1, 4),
        ),
        (
            q(&|r| {
                r.start_time = t + 10;
                r.start_message_id = id(5);
                r.start_inclusive = true;
            }),
            range(1, 5),
        ),
        (
            q(&|r| {
                r.start_time = t + 10;
                r.start_message_id = id(5);
                r.direction = old;
            }),
            range(6, 10),
        ),
        // End bounds, exclusive and inclusive, by seq, time and message id.
        (q(&|r| r.end_seq = 3), range(4, 10)),
        (
            q(&|r| {
                r.end_seq = 3;
                r.end_inclusive = true;
            }),
            range(3, 10),
        ),
        (q(&|r| r.end_time = t + 10), range(7, 10)),
        (
            q(&|r| {
                r.end_time = t + 10;
                r.end_inclusive = true;
            }),
            range(4, 10),
        ),
        (
            q(&|r| {
                r.end_time = t + 10;
                r.direction = old;
            }),
            range(1, 3),
        ),
        (
            q(&|r| {
                r.end_time = t + 10;
                r.end_inclusive = true;
                r.direction = old;
            }),
            range(1, 6),
        ),
        (
            q(&|r| {
                r.end_message_id = id(5);
                r.direction = old;
            }),
            range(1, 4),
        ),
        (
            q(&|r| {
                r.start_seq = 9;
                r.end_seq = 2;
                r.start_inclusive = true;
                r.end_inclusive = true;
            }),
            range(2, 9),
        ),
        // Times outside the history: empty, not an error.
        (q(&|r| r.start_time = t - 1), vec![]),
        (
            q(&|r| {
                r.start_time = t + 1000;
                r.direction = old;
            }),
            vec![],
        ),
    ];
    for (i, (req, want)) in cases.iter().enumerate() {
        let p = fetch(&alice, req.clone()).await;
        assert_eq!(seqs(&p), *want, "case {i}: {req:?}");
        assert!(!p.has_more, "case {i}");
    }

    // A type filter pages over matching messages only.
    assert_eq!(
        walk(
            &alice,
            q(&|r| {
                r.types = vec![2];
                r.limit = 2;
            })
        )
        .await,
        vec![vec![8, 10], vec![4, 6], vec![2]]
    );

    // Bad input.
    let e = within(alice.fetch_history(q(&|r| r.limit = 101)))
        .await
        .unwrap_err();
    assert_eq!(code(e), ErrorCode::ErrorLimitExceeded);
    let e = within(alice.fetch_history(q(&|r| r.cursor = "zz".into())))
        .await
        .unwrap_err();
    assert_eq!(code(e), ErrorCode::ErrorInvalidArgument);
    let e = within(alice.fetch_history(q(&|r| r.cursor = "o3".into())))
        .await
        .unwrap_err();
    assert_eq!(
        code(e),
        ErrorCode::ErrorInvalidArgument,
        "cursor of the other direction"
    );
    let e = within(alice.fetch_history(q(&|r| r.start_message_id = message_id(num + 1, 1))))
        .await
        .unwrap_err();
    assert_eq!(code(e), ErrorCode::ErrorMessageNotFound);

    // A page that hits the scan bound is short, with has_more and a cursor to go on.
    server.restart().await;
    let alice = server.client("alice").await;
    let p = fetch(
        &alice,
        q(&|r| {
            r.start_time = t + 10;
            r.start_message_id = id(5);
            r.start_inclusive = true;
        }),
    )
    .await;
    assert_eq!(seqs(&p), range(1, 5), "after a restart");
    server.config.history_scan_max = 3;
    server.restart().await;
    let alice = server.client("alice").await;
    assert_eq!(
        walk(&alice, q(&|r| r.types = vec![2])).await,
        vec![vec![8, 10], vec![6], vec![2, 4], vec![]],
        "three examined per page"
    );
}

/// A walk reads the store a few messages at a time (what the page still needs, at least 16):
/// pages of every size step over long runs of messages the caller deleted, in both directions,
/// and each ends where the next begins.
#[tokio::test]
async fn pages_of_every_size_walk_over_long_runs_of_deleted_messages() {
    let server = TestServer::start().await;
    let alice = server.client("alice").await;
    let bob = server.client("bob").await;
    let d = within(alice.create_direct("bob")).await.unwrap();
    for i in 1..=150u64 {
        within(bob.send(pb::SendMessage {
            conversation_id: d.id.clone(),
            content: format!("m{i}").into_bytes().into(),
            ..Default::default()
        }))
        .await
        .unwrap();
    }
    let num = parse_conversation_id(&d.id).unwrap();
    // Two runs of 40 hidden messages (longer than the smallest read), and every seventh.
    let hidden: Vec<u64> = (21..=60)
        .chain(91..=130)
        .chain((1..=150).filter(|s| s % 7 == 0))
        .collect();
    let ids: Vec<String> = hidden.iter().map(|&s| message_id(num, s)).collect();
    for part in ids.chunks(50) {
        within(alice.delete_messages(&d.id, part)).await.unwrap();
    }
    let visible: Vec<u64> = (1..=150).filter(|s| !hidden.contains(s)).collect();
    for limit in [1u32, 5, 15, 16, 17, 50, 100] {
        for oldest_first in [false, true] {
            let req = pb::FetchHistory {
                conversation_id: d.id.clone(),
                limit,
                direction: if oldest_first {
                    HistoryDirection::OldestFirst as i32
                } else {
                    HistoryDirection::NewestFirst as i32
                },
                ..Default::default()
            };
            let pages = walk(&alice, req).await;
            let last = pages.len() - 1;
            for (i, p) in pages.iter().enumerate() {
                assert!(
                    p.len() == limit as usize || (i == last && p.len() <= limit as usize),
                    "limit {limit}, oldest first {oldest_first}: page {i} holds {}",
                    p.len()
                );
            }
            let got: Vec<u64> = if oldest_first {
                pages.into_iter().flatten().collect()
            } else {
                pages.into_iter().rev().flatten().collect()
            };
            assert_eq!(got, visible, "limit {limit}, oldest first {oldest_first}");
        }
    }
}

#[tokio::test]
async fn one_way_deletes_by_ids_and_by_time() {
    let mut server = TestServer::start().await;
    let (alice, _) = server.login("alice").await;
    let (mut alice_pc, _) = server.login("alice").await;
    let bob = server.client("bob").await;
    let d = within(alice.create_direct("bob")).await.unwrap();
    event(&mut alice_pc).await;
    let t = ten(&server, &bob, &d.id).await;
    for _ in 0..10 {
        message(&mut alice_pc).await;
    }
    let num = parse_conversation_id(&d.id).unwrap();
    let id = |seq| message_id(num, seq);

    within(alice.delete_messages(&d.id, &[id(2), id(4)]))
        .await
        .unwrap();
    match push(&mut alice_pc).await {
        Rep::MessagesDeleted(x) => assert_eq!(x.message_ids, vec![id(2), id(4)]),
        other => panic!("expected MessagesDeleted, got {other:?}"),
    }
    let mine = within(alice.history(&d.id, 0, 100)).await.unwrap();
    assert_eq!(seqs(&mine), vec![1, 3, 5, 6, 7, 8, 9, 10]);
    let synced = within(alice.sync_all(&d.id, 0)).await.unwrap();
    assert_eq!(synced.len(), 8, "catch-up skips them too");
    assert_eq!(
        seqs(&within(bob.history(&d.id, 0, 100)).await.unwrap()),
        range(1, 10),
        "only the caller stops seeing them"
    );

    // Everything before a time: strictly before by default, at it too with `inclusive`.
    within(alice.delete_messages_before(&d.id, t + 10, false))
        .await
        .unwrap();
    assert_eq!(
        seqs(&within(alice.history(&d.id, 0, 100)).await.unwrap()),
        vec![5, 6, 7, 8, 9, 10]
    );
    within(alice.delete_messages_before(&d.id, t + 10, true))
        .await
        .unwrap();
    assert_eq!(
        seqs(&within(alice.history(&d.id, 0, 100)).await.unwrap()),
        range(7, 10)
    );

    // Limits and arguments.
    let fifty_one: Vec<String> = (1..=51).map(|s| id(s % 10 + 1)).collect();
    let e = within(alice.delete_messages(&d.id, &fifty_one))
        .await
        .unwrap_err();
    assert_eq!(code(e), ErrorCode::ErrorLimitExceeded);
    assert!(e_text(&alice, &d.id, &fifty_one).await.contains("50"));
    within(alice.delete_messages(&d.id, &fifty_one[..50]))
        .await
        .expect("50 ids are allowed");
    let e = within(alice.delete_messages(&d.id, &[])).await.unwrap_err();
    assert_eq!(code(e), ErrorCode::ErrorInvalidArgument);
    let e = within(alice.delete_messages(&d.id, &[id(11)]))
        .await
        .unwrap_err();
    assert_eq!(code(e), ErrorCode::ErrorMessageNotFound);
    let e = within(alice.delete_messages(&d.id, &["nonsense".into()]))
        .await
        .unwrap_err();
    assert_eq!(code(e), ErrorCode::ErrorMessageNotFound);

    // Those 50 ids covered every message: nothing visible is left, so the entry leaves
    // alice's list (her other device is told); bob's entry stays.
    assert!(entries(&alice).await.is_empty());
    loop {
        match push(&mut alice_pc).await {
            Rep::MessagesDeleted(_) => continue,
            Rep::ListEntriesDeleted(x) => {
                assert_eq!(x.conversation_ids, vec![d.id.clone()]);
                break;
            }
            other => panic!("expected ListEntriesDeleted, got {other:?}"),
        }
    }
    assert_eq!(entries(&bob).await.len(), 1);

    server.restart().await;
    let alice = server.client("alice").await;
    let bob = server.client("bob").await;
    assert!(
        within(alice.history(&d.id, 0, 100))
            .await
            .unwrap()
            .messages
            .is_empty()
    );
    assert_eq!(
        within(bob.history(&d.id, 0, 100))
            .await
            .unwrap()
            .messages
            .len(),
        10
    );
    within(bob.send_text(&d.id, "still there?")).await.unwrap();
    let back = entries(&alice).await;
    assert_eq!(back.len(), 1, "a new message brings the entry back");
    assert_eq!(text(back[0].last_message.as_ref().unwrap()), "still there?");
    assert_eq!(back[0].unread, 1);
}

async fn entries(c: &Client) -> Vec<pb::ListEntry> {
    within(c.list_all(pb::ListConversations::default()))
        .await
        .unwrap()
}

async fn e_text(c: &Client, id: &str, ids: &[String]) -> String {
    match within(c.delete_messages(id, ids)).await.unwrap_err() {
        ClientError::Server { message, .. } => message,
        other => panic!("{other}"),
    }
}

fn updated(r: Rep) -> (i32, pb::Message) {
    match r {
        Rep::MessageUpdated(u) => (u.kind, u.message.unwrap()),
        other => panic!("expected MessageUpdated, got {other:?}"),
    }
}

#[tokio::test]
async fn recall_and_edit_within_their_windows() {
    let mut server = TestServer::start_with(|c| c.max_edits = 2).await;
    let (alice, _) = server.login("alice").await;
    let (mut alice_pc, _) = server.login("alice").await;
    let (mut bob, _) = server.login("bob").await;
    // The clock moves by a day: tokens that outlive it.
    for (c, user) in [(&alice, "alice"), (&alice_pc, "alice"), (&bob, "bob")] {
        within(c.refresh_token(&server.long_token(user)))
            .await
            .unwrap();
    }
    let g = within(alice.create_group("g", &["bob"])).await.unwrap();
    event(&mut alice_pc).await;
    event(&mut bob).await;
    let first = within(alice.send_text(&g.id, "helo")).await.unwrap();
    message(&mut alice_pc).await;
    message(&mut bob).await;

    // Edit: the sender only; members and the sender's other devices are told.
    let e = within(bob.edit_text(&g.id, &first.message_id, "hijack"))
        .await
        .unwrap_err();
    assert_eq!(code(e), ErrorCode::ErrorPermissionDenied);
    server.clock.advance(1000);
    let m = within(alice.edit_text(&g.id, &first.message_id, "hello"))
        .await
        .unwrap();
    assert_eq!(
        (text(&m).as_str(), m.edit_count, m.edited_at),
        ("hello", 1, server.clock_now())
    );
    for c in [&mut bob, &mut alice_pc] {
        let (kind, m) = updated(push(c).await);
        assert_eq!(
            (kind, text(&m).as_str()),
            (MessageUpdateKind::Edited as i32, "hello")
        );
    }
    let h = within(bob.history(&g.id, 0, 10)).await.unwrap();
    assert_eq!(
        (text(&h.messages[0]).as_str(), h.messages[0].edit_count),
        ("hello", 1)
    );
    let entry = within(bob.get_list_entry(&g.id)).await.unwrap();
    assert_eq!(
        text(entry.last_message.as_ref().unwrap()),
        "hello",
        "the list follows"
    );
    within(alice.edit_text(&g.id, &first.message_id, "hello!"))
        .await
        .unwrap();
    let e = within(alice.edit_text(&g.id, &first.message_id, "third"))
        .await
        .unwrap_err();
    assert_eq!(code(e), ErrorCode::ErrorLimitExceeded, "max_edits = 2");

    // Recall within 120 s; the tombstone keeps id, seq and sender.
    server.clock.advance(118_000);
    let r = within(alice.recall(&g.id, &first.message_id))
        .await
        .unwrap();
    assert!(r.recalled && r.content.is_empty() && r.recalled_at == server.clock_now());
    updated(push(&mut bob).await);
    let (kind, m) = updated(push(&mut bob).await);
    assert_eq!((kind, m.seq), (MessageUpdateKind::Recalled as i32, 1));
    let h = within(bob.history(&g.id, 0, 10)).await.unwrap();
    assert!(h.messages[0].recalled && h.messages[0].content.is_empty());
    let entry = within(bob.get_list_entry(&g.id)).await.unwrap();
    assert!(
        entry.last_message.unwrap().recalled,
        "the list shows the recall"
    );
    // Recalling again returns the tombstone; editing it is refused.
    assert!(
        within(alice.recall(&g.id, &first.message_id))
            .await
            .unwrap()
            .recalled
    );
    let e = within(alice.edit_text(&g.id, &first.message_id, "x"))
        .await
        .unwrap_err();
    assert_eq!(code(e), ErrorCode::ErrorMessageNotFound);

    // Past the recall window (120 s) but inside the edit window (1 day).
    let second = within(alice.send_text(&g.id, "late")).await.unwrap();
    server.clock.advance(121_000);
    let e = within(alice.recall(&g.id, &second.message_id))
        .await
        .unwrap_err();
    assert_eq!(code(e), ErrorCode::ErrorWindowExpired);
    within(alice.edit_text(&g.id, &second.message_id, "later"))
        .await
        .unwrap();
    server.clock.advance(86_400_000);
    let e = within(alice.edit_text(&g.id, &second.message_id, "too late"))
        .await
        .unwrap_err();
    assert_eq!(code(e), ErrorCode::ErrorWindowExpired);
    let e = within(alice.recall(&g.id, &message_id(0, 99)))
        .await
        .unwrap_err();
    assert_eq!(code(e), ErrorCode::ErrorMessageNotFound);

    server.restart().await;
    let bob = server.client("bob").await;
    let h = within(bob.history(&g.id, 0, 10)).await.unwrap();
    assert!(h.messages[0].recalled);
    assert_eq!(
        (text(&h.messages[1]).as_str(), h.messages[1].edit_count),
        ("later", 1)
    );
}

/// The next receipt pushed to `c` (messages pushed meanwhile are passed over).
async fn receipt(c: &mut Client) -> pb::Receipt {
    loop {
        match push(c).await {
            Rep::Receipt(r) => return r,
            Rep::Message(_) => continue,
            other => panic!("expected a receipt, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn receipts_and_exact_unread_counts_on_two_devices() {
    let mut server = TestServer::start_with(|c| c.receipt_max_members = 3).await;
    let (mut alice, _) = server.login("alice").await;
    let (bob_phone, _) = server.login_device("bob", "phone", 0).await;
    let (mut bob_pc, _) = server.login_device("bob", "pc", 0).await;
    let d = within(alice.create_direct("bob")).await.unwrap();
    event(&mut bob_pc).await;
    let send = |text: &'static str, want: bool| pb::SendMessage {
        conversation_id: d.id.clone(),
        r#type: 1,
        content: text.as_bytes().to_vec().into(),
        want_receipts: want,
        ..Default::default()
    };
    for i in 0..3 {
        within(alice.send(send(["a", "b", "c"][i], true)))
            .await
            .unwrap();
    }

    // A device acknowledges delivery up to 2; reading 3 on the other device implies delivery.
    within(bob_phone.ack_delivered(&d.id, 2)).await.unwrap();
    let r = receipt(&mut alice).await;
    assert_eq!(
        (r.user_id.as_str(), r.kind, r.seq),
        ("bob", ReceiptKind::Delivered as i32, 2)
    );
    within(bob_pc.mark_read(&d.id, 3)).await.unwrap();
    let r = receipt(&mut alice).await;
    assert_eq!((r.kind, r.seq), (ReceiptKind::Delivered as i32, 3));
    let r = receipt(&mut alice).await;
    assert_eq!(
        (r.kind, r.seq, r.at),
        (ReceiptKind::Read as i32, 3, server.clock_now())
    );
    // Acknowledging again, or backwards, tells nobody.
    within(bob_phone.ack_delivered(&d.id, 1)).await.unwrap();
    assert_no_push(&mut alice).await;

    // The reader's other device gets the read position.
    let mut bob_phone = bob_phone;
    loop {
        match push(&mut bob_phone).await {
            Rep::Message(_) | Rep::ConversationEvent(_) => continue,
            Rep::ReadPosition(p) => {
                assert_eq!((p.read_seq, p.unread), (3, 0));
                break;
            }
            other => panic!("expected ReadPosition, got {other:?}"),
        }
    }

    // Without want_receipts nobody is told.
    within(alice.send(send("quiet", false))).await.unwrap();
    within(bob_pc.mark_read(&d.id, 4)).await.unwrap();
    assert_no_push(&mut alice).await;

    // Replying reads what came before: a read receipt for alice's message 5.
    within(alice.send(send("e", true))).await.unwrap();
    within(bob_pc.send_text(&d.id, "reply")).await.unwrap();
    let r = receipt(&mut alice).await;
    assert_eq!((r.kind, r.seq), (ReceiptKind::Read as i32, 5));

    // Receipts only in conversations up to receipt_max_members.
    let big = within(alice.create_group("big", &["bob", "carol", "dave"]))
        .await
        .unwrap();
    let e = within(alice.send(pb::SendMessage {
        conversation_id: big.id.clone(),
        want_receipts: true,
        ..Default::default()
    }))
    .await
    .unwrap_err();
    assert_eq!(code(e), ErrorCode::ErrorLimitExceeded);

    // Concurrent sends and reads: the counts are exact afterwards, in the list and at login.
    let sends = (0..40).map(|_| alice.send_text(&d.id, "burst"));
    let reads = (0..40).map(|i| bob_phone.mark_read(&d.id, 6 + i));
    let (acks, reads) = tokio::join!(
        within(futures_util::future::join_all(sends)),
        within(futures_util::future::join_all(reads))
    );
    assert!(acks.iter().all(Result::is_ok) && reads.iter().all(Result::is_ok));
    let last = 46;
    within(bob_pc.mark_read(&d.id, 30)).await.unwrap();
    let read = within(bob_pc.get_list_entry(&d.id)).await.unwrap().read_seq;
    assert!(read >= 30);
    let want = (last - read) as u32;
    for c in [&bob_pc, &bob_phone] {
        let e = within(c.get_list_entry(&d.id)).await.unwrap();
        assert_eq!((e.last_seq, e.unread), (last, want));
    }
    let (_, welcome) = server.login("bob").await;
    assert_eq!(welcome.unread(&d.id).unwrap().unread, want);

    server.restart().await;
    let (bob, welcome) = server.login("bob").await;
    assert_eq!(welcome.unread(&d.id).unwrap().unread, want);
    assert_eq!(
        within(bob.get_list_entry(&d.id)).await.unwrap().unread,
        want
    );
    within(bob.mark_read(&d.id, last)).await.unwrap();
    assert_eq!(within(bob.get_list_entry(&d.id)).await.unwrap().unread, 0);
}

/// An edit is held to the limit of a send: content plus the attributes the message keeps.
#[tokio::test]
async fn an_edit_cannot_grow_a_message_past_max_message_bytes() {
    let server = TestServer::start().await;
    let alice = server.client("alice").await;
    let d = within(alice.create_direct("bob")).await.unwrap();
    let limit = server.config.max_message_bytes;
    assert_eq!(limit, 65_536);
    let attributes = [("k".to_string(), "v".repeat(99))].into_iter().collect(); // 100 bytes
    let sent = within(alice.send(pb::SendMessage {
        conversation_id: d.id.clone(),
        r#type: 1,
        content: vec![b'a'; limit - 100].into(),
        attributes,
        ..Default::default()
    }))
    .await
    .unwrap();
    let edit = |len: usize| {
        alice.request(pb::client_frame::Body::EditMessage(pb::EditMessage {
            conversation_id: d.id.clone(),
            message_id: sent.message_id.clone(),
            content: vec![b'b'; len].into(),
            ..Default::default()
        }))
    };

    match within(edit(limit)).await {
        Ok(_) => panic!("an edit to {limit} bytes plus 100 of attributes was accepted"),
        Err(e) => assert_eq!(code(e), ErrorCode::ErrorMessageTooLarge),
    }
    let kept = within(alice.sync_all(&d.id, 0)).await.unwrap();
    assert_eq!((kept[0].content[0], kept[0].edit_count), (b'a', 0));

    // Exactly the limit, attributes included, is fine.
    let Rep::MessageReply(r) = within(edit(limit - 100)).await.unwrap() else {
        panic!("expected a message reply");
    };
    let m = r.message.unwrap();
    assert_eq!(
        (m.content.len(), m.attributes["k"].len()),
        (limit - 100, 99)
    );
}

/// Found while adding the fuzz targets: a cursor whose first character is more than one
/// byte long made the server split it inside that character and panic, which ended the
/// connection's task without a close frame (and without leaving the hub).
#[tokio::test]
async fn a_history_cursor_starting_with_a_multibyte_character_is_an_invalid_argument() {
    let server = TestServer::start().await;
    let alice = server.client("alice").await;
    let g = within(alice.create_group("g", &["bob"])).await.unwrap();
    within(alice.send_text(&g.id, "one")).await.unwrap();
    for cursor in ["é", "é1", "€", "n€", "\u{10348}"] {
        let req = pb::FetchHistory {
            conversation_id: g.id.clone(),
            cursor: cursor.into(),
            ..Default::default()
        };
        let e = within(alice.fetch_history(req)).await.unwrap_err();
        assert_eq!(code(e), ErrorCode::ErrorInvalidArgument, "{cursor:?}");
    }
    // The session is still there.
    within(alice.ping()).await.unwrap();
}
