//! The conformance suite every storage engine must pass unchanged. Each engine's test module
//! calls [`run`] with a function that opens that engine in a directory.

use super::{Counter, Direction, Op, Store, UserId};
use crate::protocol::pb::{
    ConversationEvent, ConversationKind, ConversationRecord, MemberRecord, Message,
    UserConversationRecord,
};
use prost::Message as _;
use std::path::Path;

/// Opens an engine in a directory (the same directory again means reopen).
pub type Open<'a> = &'a dyn Fn(&Path) -> Box<dyn Store>;

/// Runs every check, each on a fresh directory.
pub fn run(open: Open<'_>) {
    for (name, check) in [
        ("records round-trip and delete", records as fn(Open<'_>)),
        ("message ranges", message_ranges),
        ("user ids are length-prefixed", user_prefixes),
        ("user events paging", user_events),
        ("patch index: time order, moves, purge", patch_index),
        ("aliases: lookup, purge", aliases),
        ("messages purged by range (retention)", message_purge),
        ("dedup entries and event logs purged in parts", part_purge),
        ("webhook outbox, cursors, dead letters", outbox),
        ("by-kind index and conversation event logs", kinds_and_logs),
        ("everything survives reopen", reopen),
        (
            "list state: tombstones, one-way deletes, receipts",
            list_state,
        ),
        ("tombstones paged and expired", tombstone_expiry),
        ("user events paged and expired", user_event_expiry),
    ] {
        eprintln!("conformance: {name}");
        check(open);
    }
}

fn u(s: &str) -> UserId {
    UserId::from(s)
}

fn msg(conv: u64, seq: u64) -> bytes::Bytes {
    bytes::Bytes::from(
        Message {
            seq,
            conversation_id: conv.to_string(),
            server_time: seq as i64 * 10,
            ..Default::default()
        }
        .encode_to_vec(),
    )
}

fn records(open: Open<'_>) {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let rec = ConversationRecord {
        kind: ConversationKind::Group as i32,
        name: "g".into(),
        owner: "alice".into(),
        ..Default::default()
    };
    s.commit(&[
        Op::PutConversation {
            conv: 1,
            record: rec.clone(),
        },
        Op::PutMember {
            conv: 1,
            user: u("alice"),
            record: MemberRecord {
                joined_at: 5,
                join_order: 1,
                ..Default::default()
            },
        },
        Op::PutMember {
            conv: 1,
            user: u("bob"),
            record: MemberRecord {
                joined_at: 6,
                join_order: 2,
                role: crate::protocol::pb::MemberRole::Manager as i32,
                muted_until: 77,
            },
        },
        Op::PutUserConversation {
            user: u("alice"),
            conv: 1,
            record: UserConversationRecord {
                muted: true,
                joined_at: 5,
                ext: "mine".into(),
                pinned_at: 9,
                ..Default::default()
            },
        },
        Op::PutUserConversation {
            user: u("alice"),
            conv: 2,
            record: UserConversationRecord::default(),
        },
        Op::PutReadSeq {
            user: u("alice"),
            conv: 1,
            seq: 9,
        },
        Op::PutDedup {
            conv: 1,
            sender: u("alice"),
            client_id: "c1".into(),
            seq: 3,
        },
        Op::PutDirect {
            a: u("zed"),
            b: u("amy"),
            conv: 7,
        },
        Op::SetCounter {
            counter: Counter::Conversation,
            value: 42,
        },
    ])
    .unwrap();
    assert_eq!(s.conversation(1).unwrap(), Some(rec));
    assert_eq!(s.conversation(2).unwrap(), None);
    let mut members: Vec<_> = s
        .members(1)
        .unwrap()
        .into_iter()
        .map(|(u, r)| (u.to_string(), r.join_order, r.role, r.muted_until))
        .collect();
    members.sort();
    assert_eq!(
        members,
        vec![("alice".into(), 1, 0, 0), ("bob".into(), 2, 1, 77)]
    );
    assert_eq!(s.member(1, "bob").unwrap().map(|r| r.muted_until), Some(77));
    assert_eq!(s.member(1, "carol").unwrap(), None);
    assert_eq!(s.member(2, "alice").unwrap(), None);
    let convs = s.user_conversations("alice").unwrap();
    assert_eq!(convs.iter().map(|c| c.0).collect::<Vec<_>>(), vec![1, 2]);
    assert!(convs[0].1.muted);
    assert!(s.user_conversation("alice", 1).unwrap().unwrap().muted);
    assert_eq!(s.user_conversation("alice", 3).unwrap(), None);
    assert_eq!(s.read_seq("alice", 1).unwrap(), 9);
    assert_eq!(s.read_seq("alice", 2).unwrap(), 0);
    assert_eq!(s.dedup(1, "alice", "c1").unwrap(), Some(3));
    assert_eq!(s.dedup(1, "alice", "c2").unwrap(), None);
    assert_eq!(s.dedup(2, "alice", "c1").unwrap(), None);
    assert_eq!(s.direct("amy", "zed").unwrap(), Some(7));
    assert_eq!(s.direct("zed", "amy").unwrap(), Some(7));
    assert_eq!(s.counter(Counter::Conversation).unwrap(), 42);

    s.commit(&[
        Op::DeleteMember {
            conv: 1,
            user: u("bob"),
        },
        Op::DeleteUserConversation {
            user: u("alice"),
            conv: 2,
        },
        Op::DeleteReadSeq {
            user: u("alice"),
            conv: 1,
        },
    ])
    .unwrap();
    assert_eq!(s.members(1).unwrap().len(), 1);
    assert_eq!(s.user_conversations("alice").unwrap().len(), 1);
    assert_eq!(s.read_seq("alice", 1).unwrap(), 0);
}

fn message_ranges(open: Open<'_>) {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    assert_eq!(s.last_message(5).unwrap(), None);
    let ops: Vec<Op> = (1..=30)
        .map(|seq| Op::PutMessage {
            conv: 5,
            seq,
            message: msg(5, seq),
        })
        .collect();
    s.commit(&ops).unwrap();
    // A neighbouring conversation must never leak into 5's ranges.
    s.commit(&[
        Op::PutMessage {
            conv: 6,
            seq: 1,
            message: msg(6, 1),
        },
        Op::PutMessage {
            conv: 4,
            seq: 99,
            message: msg(4, 99),
        },
    ])
    .unwrap();
    let seqs = |v: Vec<Message>| v.into_iter().map(|m| m.seq).collect::<Vec<_>>();
    assert_eq!(s.last_message(5).unwrap().unwrap().seq, 30);
    assert_eq!(s.message(5, 7).unwrap().unwrap().server_time, 70);
    assert_eq!(s.message(5, 31).unwrap(), None);
    assert_eq!(
        seqs(
            s.messages(5, 11, u64::MAX, Direction::Ascending, 5)
                .unwrap()
        ),
        vec![11, 12, 13, 14, 15]
    );
    assert_eq!(
        seqs(s.messages(5, 0, 11, Direction::Descending, 3).unwrap()),
        vec![10, 9, 8]
    );
    assert_eq!(
        seqs(
            s.messages(5, 28, u64::MAX, Direction::Ascending, 100)
                .unwrap()
        ),
        vec![28, 29, 30]
    );
    assert_eq!(
        seqs(
            s.messages(5, 0, u64::MAX, Direction::Descending, 2)
                .unwrap()
        ),
        vec![30, 29]
    );
    assert!(
        s.messages(5, 10, 10, Direction::Ascending, 5)
            .unwrap()
            .is_empty()
    );
    assert!(
        s.messages(5, 1, 5, Direction::Ascending, 0)
            .unwrap()
            .is_empty()
    );
}

fn user_prefixes(open: Open<'_>) {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.commit(&[
        Op::PutUserConversation {
            user: u("al"),
            conv: 1,
            record: UserConversationRecord::default(),
        },
        Op::PutUserConversation {
            user: u("alice"),
            conv: 2,
            record: UserConversationRecord::default(),
        },
        Op::PutUserEvent {
            user: u("alice"),
            seq: 1,
            event: ConversationEvent {
                user_seq: 1,
                ..Default::default()
            },
        },
    ])
    .unwrap();
    assert_eq!(
        s.user_conversations("al")
            .unwrap()
            .iter()
            .map(|c| c.0)
            .collect::<Vec<_>>(),
        vec![1]
    );
    assert_eq!(
        s.user_conversations("alice")
            .unwrap()
            .iter()
            .map(|c| c.0)
            .collect::<Vec<_>>(),
        vec![2]
    );
    assert_eq!(s.last_user_event_seq("al").unwrap(), 0);
    assert_eq!(s.user_events_after("al", 0, 10).unwrap().0.len(), 0);
}

fn user_events(open: Open<'_>) {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    assert_eq!(s.last_user_event_seq("bob").unwrap(), 0);
    let ops: Vec<Op> = (1..=10)
        .map(|seq| Op::PutUserEvent {
            user: u("bob"),
            seq,
            event: ConversationEvent {
                user_seq: seq,
                ..Default::default()
            },
        })
        .collect();
    s.commit(&ops).unwrap();
    let seqs = |(v, t): (Vec<ConversationEvent>, bool)| {
        (v.into_iter().map(|e| e.user_seq).collect::<Vec<_>>(), t)
    };
    assert_eq!(s.last_user_event_seq("bob").unwrap(), 10);
    assert_eq!(
        seqs(s.user_events_after("bob", 7, 10).unwrap()),
        (vec![8, 9, 10], false)
    );
    assert_eq!(
        seqs(s.user_events_after("bob", 0, 3).unwrap()),
        (vec![8, 9, 10], true)
    );
    assert_eq!(
        seqs(s.user_events_after("bob", 7, 3).unwrap()),
        (vec![8, 9, 10], false)
    );
    assert_eq!(
        seqs(s.user_events_after("bob", 10, 3).unwrap()),
        (vec![], false)
    );
}

fn reopen(open: Open<'_>) {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path());
        s.commit(&[
            Op::PutMessage {
                conv: 3,
                seq: 1,
                message: msg(3, 1),
            },
            Op::PutReadSeq {
                user: u("x"),
                conv: 3,
                seq: 1,
            },
            Op::SetCounter {
                counter: Counter::Conversation,
                value: 3,
            },
        ])
        .unwrap();
        s.flush().unwrap();
        assert!(s.size_on_disk().unwrap() > 0);
    }
    let s = open(dir.path());
    assert_eq!(s.last_message(3).unwrap().unwrap().seq, 1);
    assert_eq!(s.read_seq("x", 3).unwrap(), 1);
    assert_eq!(s.counter(Counter::Conversation).unwrap(), 3);
}

fn list_state(open: Open<'_>) {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.commit(&[
        Op::PutConversation {
            conv: 7,
            record: ConversationRecord::default(),
        },
        Op::PutMember {
            conv: 7,
            user: u("al"),
            record: MemberRecord::default(),
        },
        Op::PutDirect {
            a: u("al"),
            b: u("bo"),
            conv: 7,
        },
        Op::PutTombstone {
            user: u("al"),
            conv: 3,
            at: 1234,
        },
        Op::PutTombstone {
            user: u("alice"),
            conv: 4,
            at: 99,
        },
        Op::PutHidden {
            user: u("al"),
            conv: 7,
            seq: 2,
        },
        Op::PutHidden {
            user: u("al"),
            conv: 7,
            seq: 5,
        },
        Op::PutHidden {
            user: u("al"),
            conv: 8,
            seq: 1,
        },
        Op::PutReceiptWanted {
            conv: 7,
            seq: 3,
            sender: u("bo"),
        },
        Op::PutReceiptWanted {
            conv: 7,
            seq: 9,
            sender: u("al"),
        },
    ])
    .unwrap();
    assert_eq!(s.tombstones("al").unwrap(), vec![(3, 1234)]);
    assert_eq!(s.hidden_seqs("al", 7, 1, 100).unwrap(), vec![2, 5]);
    assert_eq!(s.hidden_seqs("al", 7, 3, 5).unwrap(), Vec::<u64>::new());
    assert_eq!(
        s.receipts_wanted(7, 1, 10).unwrap(),
        vec![(3, u("bo")), (9, u("al"))]
    );
    assert_eq!(s.receipts_wanted(7, 4, 9).unwrap(), vec![]);
    assert_eq!(s.last_receipt_wanted(7).unwrap(), 9);
    assert_eq!(s.last_receipt_wanted(8).unwrap(), 0);
    s.commit(&[
        Op::DeleteTombstone {
            user: u("al"),
            conv: 3,
        },
        Op::DeleteDirect {
            a: u("bo"),
            b: u("al"),
        },
        Op::PurgeConversation { conv: 7 },
    ])
    .unwrap();
    assert!(s.tombstones("al").unwrap().is_empty());
    assert_eq!(s.tombstones("alice").unwrap(), vec![(4, 99)]);
    assert_eq!(s.direct("al", "bo").unwrap(), None);
    assert!(s.hidden_seqs("al", 7, 0, u64::MAX).unwrap().is_empty());
    assert_eq!(s.hidden_seqs("al", 8, 0, u64::MAX).unwrap(), vec![1]);
    assert!(s.receipts_wanted(7, 0, u64::MAX).unwrap().is_empty());
    assert_eq!(s.last_receipt_wanted(7).unwrap(), 0);
}

fn tombstone_expiry(open: Open<'_>) {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let put = |user: &str, conv, at| Op::PutTombstone {
        user: u(user),
        conv,
        at,
    };
    let expire = |user: &str, conv, before| Op::ExpireTombstone {
        user: u(user),
        conv,
        before,
    };
    s.commit(&[
        put("al", 1, 10),
        put("al", 2, 50),
        put("alice", 1, 10),
        put("bo", 3, 10),
        put("bo", 4, 10),
    ])
    .unwrap();
    // Every user's, in key order (a user id is length-prefixed: "al" < "bo" < "alice").
    let all = s.tombstones_after(None, usize::MAX).unwrap();
    let keys: Vec<(String, u64, i64)> = all
        .iter()
        .map(|(u, c, at)| (u.to_string(), *c, *at))
        .collect();
    assert_eq!(
        keys,
        vec![
            ("al".into(), 1, 10),
            ("al".into(), 2, 50),
            ("bo".into(), 3, 10),
            ("bo".into(), 4, 10),
            ("alice".into(), 1, 10),
        ]
    );
    assert_eq!(s.tombstones_after(None, 2).unwrap(), all[..2].to_vec());
    assert_eq!(
        s.tombstones_after(Some(("al", 2)), 2).unwrap(),
        all[2..4].to_vec()
    );
    assert!(
        s.tombstones_after(Some(("alice", 1)), 9)
            .unwrap()
            .is_empty()
    );
    // Due: deleted; newer: kept; absent: nothing written; written again earlier in the same
    // commit (a later leave), or deleted there (a join): kept, or left deleted.
    s.commit(&[
        expire("al", 1, 20),
        expire("al", 2, 20),
        expire("al", 9, 20),
        put("bo", 3, 30),
        expire("bo", 3, 20),
        Op::DeleteTombstone {
            user: u("bo"),
            conv: 4,
        },
        expire("bo", 4, 20),
    ])
    .unwrap();
    assert_eq!(s.tombstones("al").unwrap(), vec![(2, 50)]);
    assert_eq!(s.tombstones("bo").unwrap(), vec![(3, 30)]);
    assert_eq!(s.tombstones("alice").unwrap(), vec![(1, 10)]);
    // A tombstone put after the expiry in the same commit stays.
    s.commit(&[expire("alice", 1, 20), put("alice", 1, 15)])
        .unwrap();
    assert_eq!(s.tombstones("alice").unwrap(), vec![(1, 15)]);
}

fn user_event_expiry(open: Open<'_>) {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let put = |user: &str, seq, at| Op::PutUserEvent {
        user: u(user),
        seq,
        event: ConversationEvent {
            server_time: at,
            user_seq: seq,
            ..Default::default()
        },
    };
    let expire = |user: &str, seq, before| Op::ExpireUserEvent {
        user: u(user),
        seq,
        before,
    };
    s.commit(&[
        put("al", 1, 10),
        put("al", 2, 50),
        put("bo", 1, 10),
        put("bo", 2, 10),
    ])
    .unwrap();
    let all = s.user_events_page(None, usize::MAX).unwrap();
    let keys: Vec<(String, u64, i64)> = all
        .iter()
        .map(|(u, seq, at)| (u.to_string(), *seq, *at))
        .collect();
    assert_eq!(
        keys,
        vec![
            ("al".into(), 1, 10),
            ("al".into(), 2, 50),
            ("bo".into(), 1, 10),
            ("bo".into(), 2, 10),
        ]
    );
    assert_eq!(
        s.user_events_page(Some(("al", 2)), 1).unwrap(),
        all[2..3].to_vec()
    );
    // Due: deleted; newer: kept; put again earlier in the same commit: kept.
    s.commit(&[
        expire("al", 1, 20),
        expire("al", 2, 20),
        put("bo", 2, 30),
        expire("bo", 2, 20),
        expire("bo", 9, 20),
    ])
    .unwrap();
    let left: Vec<(String, u64)> = s
        .user_events_page(None, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|(u, seq, _)| (u.to_string(), seq))
        .collect();
    assert_eq!(
        left,
        vec![("al".into(), 2), ("bo".into(), 1), ("bo".into(), 2)]
    );
    // The floor is the highest seq expired; a log the expiry empties goes on above it.
    assert_eq!(s.counter(Counter::UserEventFloor).unwrap(), 1);
    assert_eq!(s.last_user_event_seq("al").unwrap(), 2);
    s.commit(&[expire("al", 2, 60), expire("bo", 1, 20)])
        .unwrap();
    assert_eq!(s.counter(Counter::UserEventFloor).unwrap(), 2);
    assert_eq!(s.last_user_event_seq("al").unwrap(), 2);
    assert_eq!(s.last_user_event_seq("bo").unwrap(), 2);
    assert_eq!(s.last_user_event_seq("cy").unwrap(), 2);
    // It never goes down.
    s.commit(&[put("cy", 3, 10)]).unwrap();
    s.commit(&[expire("cy", 3, 20), expire("bo", 2, 20)])
        .unwrap();
    assert_eq!(s.counter(Counter::UserEventFloor).unwrap(), 3);
    s.commit(&[put("cy", 1, 10)]).unwrap();
    s.commit(&[expire("cy", 1, 20)]).unwrap();
    assert_eq!(s.counter(Counter::UserEventFloor).unwrap(), 3);
    // bo's 2, written again at 30, was not due.
    let left: Vec<u64> = s
        .user_events_page(None, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|(_, seq, _)| seq)
        .collect();
    assert_eq!(left, vec![2]);
    assert_eq!(s.last_user_event_seq("bo").unwrap(), 2);
}

fn patch_index(open: Open<'_>) {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let put = |conv, at, seq| Op::PutPatch { conv, at, seq };
    s.commit(&[
        put(1, 300, 2),
        put(1, 100, 5),
        put(1, 200, 1),
        put(2, 150, 1),
    ])
    .unwrap();
    assert_eq!(
        s.patches_after(1, 0, 10).unwrap(),
        vec![(100, 5), (200, 1), (300, 2)]
    );
    assert_eq!(
        s.patches_after(1, 100, 10).unwrap(),
        vec![(200, 1), (300, 2)]
    );
    assert_eq!(s.patches_after(1, 0, 1).unwrap(), vec![(100, 5)]);
    // A message patched again moves to its new time.
    s.commit(&[
        Op::DeletePatch {
            conv: 1,
            at: 100,
            seq: 5,
        },
        put(1, 400, 5),
    ])
    .unwrap();
    assert_eq!(
        s.patches_after(1, 0, 10).unwrap(),
        vec![(200, 1), (300, 2), (400, 5)]
    );
    s.commit(&[Op::PurgeConversation { conv: 1 }]).unwrap();
    assert_eq!(s.patches_after(1, 0, 10).unwrap(), vec![]);
    assert_eq!(s.patches_after(2, 0, 10).unwrap(), vec![(150, 1)]);
}

fn aliases(open: Open<'_>) {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let record = |alias: &str| ConversationRecord {
        kind: ConversationKind::Group as i32,
        alias: alias.into(),
        ..Default::default()
    };
    let lc = "5a5d7432c3422b31ed845e75";
    let other = "5a5d7432c3422b31ed845e76";
    s.commit(&[
        Op::PutConversation {
            conv: 1,
            record: record(lc),
        },
        Op::PutConversationAlias {
            alias: lc.into(),
            conv: 1,
        },
        Op::PutMessageAlias {
            conv: 1,
            alias: "vdkGm4dtRNmhQ5gqUTFBiA".into(),
            seq: 1,
        },
        Op::PutMessageAlias {
            conv: 1,
            alias: "vdkGm4dtRNmhQ5gqUTFBiB".into(),
            seq: 2,
        },
        Op::PutConversation {
            conv: 2,
            record: record(other),
        },
        Op::PutConversationAlias {
            alias: other.into(),
            conv: 2,
        },
        Op::PutMessageAlias {
            conv: 2,
            alias: "vdkGm4dtRNmhQ5gqUTFBiA".into(),
            seq: 7,
        },
    ])
    .unwrap();
    assert_eq!(s.conversation_alias(lc).unwrap(), Some(1));
    assert_eq!(s.conversation_alias(other).unwrap(), Some(2));
    assert_eq!(s.conversation_alias("5a5d7432").unwrap(), None);
    assert_eq!(
        s.message_alias(1, "vdkGm4dtRNmhQ5gqUTFBiB").unwrap(),
        Some(2)
    );
    assert_eq!(
        s.message_alias(2, "vdkGm4dtRNmhQ5gqUTFBiA").unwrap(),
        Some(7)
    );
    assert_eq!(s.message_alias(1, "vdkGm4dtRNmhQ5gqUTFBi").unwrap(), None);
    s.commit(&[Op::PurgeConversation { conv: 1 }]).unwrap();
    assert_eq!(s.conversation_alias(lc).unwrap(), None);
    assert_eq!(s.message_alias(1, "vdkGm4dtRNmhQ5gqUTFBiA").unwrap(), None);
    assert_eq!(s.conversation_alias(other).unwrap(), Some(2));
    assert_eq!(
        s.message_alias(2, "vdkGm4dtRNmhQ5gqUTFBiA").unwrap(),
        Some(7)
    );
    // Written and purged in one commit: nothing is left.
    s.commit(&[
        Op::PutConversation {
            conv: 3,
            record: record("5a5d7432c3422b31ed845e77"),
        },
        Op::PutConversationAlias {
            alias: "5a5d7432c3422b31ed845e77".into(),
            conv: 3,
        },
        Op::PutMessageAlias {
            conv: 3,
            alias: "m".into(),
            seq: 1,
        },
        Op::PurgeConversation { conv: 3 },
    ])
    .unwrap();
    assert_eq!(
        s.conversation_alias("5a5d7432c3422b31ed845e77").unwrap(),
        None
    );
    assert_eq!(s.message_alias(3, "m").unwrap(), None);
}

fn outbox(open: Open<'_>) {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    assert_eq!(s.last_outbox_seq().unwrap(), 0);
    assert_eq!(s.webhook_cursor("crm").unwrap(), 0);
    let rec = |n: u8| bytes::Bytes::from(vec![n; 3]);
    s.commit(&[
        Op::PutOutbox {
            seq: 1,
            record: rec(1),
        },
        Op::PutOutbox {
            seq: 2,
            record: rec(2),
        },
        Op::PutOutbox {
            seq: 300,
            record: rec(3),
        },
        Op::PutWebhookCursor {
            endpoint: "crm".into(),
            seq: 1,
        },
        Op::PutDeadLetter {
            endpoint: "crm".into(),
            seq: 2,
            record: rec(2),
        },
        Op::PutDeadLetter {
            endpoint: "crmx".into(),
            seq: 1,
            record: rec(9),
        },
    ])
    .unwrap();
    assert_eq!(s.last_outbox_seq().unwrap(), 300);
    let after = |a: u64, l: usize| s.outbox_after(a, l).unwrap();
    assert_eq!(
        after(0, 10),
        vec![(1, vec![1; 3]), (2, vec![2; 3]), (300, vec![3; 3])]
    );
    assert_eq!(after(1, 1), vec![(2, vec![2; 3])]);
    assert_eq!(after(300, 10), vec![]);
    assert_eq!(s.webhook_cursor("crm").unwrap(), 1);
    assert_eq!(s.webhook_cursor("cr").unwrap(), 0);
    // One endpoint's dead letters never run into another's with a longer name.
    assert_eq!(s.dead_letters("crm", 0, 10).unwrap(), vec![(2, vec![2; 3])]);
    assert_eq!(
        s.dead_letters("crmx", 0, 10).unwrap(),
        vec![(1, vec![9; 3])]
    );
    assert_eq!(s.dead_letters("crm", 2, 10).unwrap(), vec![]);
    s.commit(&[
        Op::DeleteOutbox { seq: 1 },
        Op::DeleteDeadLetter {
            endpoint: "crm".into(),
            seq: 2,
        },
    ])
    .unwrap();
    assert_eq!(after(0, 10).len(), 2);
    assert_eq!(s.dead_letters("crm", 0, 10).unwrap(), vec![]);
    assert_eq!(s.last_outbox_seq().unwrap(), 300);
}

fn kinds_and_logs(open: Open<'_>) {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let put = |conv, kind: ConversationKind, deleted_at| Op::PutConversation {
        conv,
        record: ConversationRecord {
            kind: kind as i32,
            deleted_at,
            ..Default::default()
        },
    };
    let group = ConversationKind::Group as i32;
    s.commit(&[
        put(1, ConversationKind::Group, 0),
        put(2, ConversationKind::Direct, 0),
        put(3, ConversationKind::Group, 0),
        put(4, ConversationKind::ChatRoom, 0),
        put(5, ConversationKind::Group, 0),
    ])
    .unwrap();
    assert_eq!(
        s.conversations_of_kind(group, u64::MAX, 10).unwrap(),
        vec![5, 3, 1]
    );
    assert_eq!(s.conversations_of_kind(group, 5, 10).unwrap(), vec![3, 1]);
    assert_eq!(
        s.conversations_of_kind(group, u64::MAX, 2).unwrap(),
        vec![5, 3]
    );
    assert_eq!(
        s.conversations_of_kind(ConversationKind::ChatRoom as i32, u64::MAX, 10)
            .unwrap(),
        vec![4]
    );
    assert!(
        s.conversations_of_kind(-1, u64::MAX, 10)
            .unwrap()
            .is_empty()
    );
    // Marked deleted, or purged (also when written in the same commit): out of the index.
    s.commit(&[put(3, ConversationKind::Group, 77)]).unwrap();
    s.commit(&[
        put(6, ConversationKind::Group, 0),
        Op::PurgeConversation { conv: 6 },
        Op::PurgeConversation { conv: 5 },
    ])
    .unwrap();
    assert_eq!(
        s.conversations_of_kind(group, u64::MAX, 10).unwrap(),
        vec![1]
    );

    let event = |t| ConversationEvent {
        server_time: t,
        ..Default::default()
    };
    assert!(s.conversation_events_after(1, 0, 10).unwrap().is_empty());
    assert_eq!(s.last_conversation_event_seq(1).unwrap(), 0);
    s.commit(&[
        Op::PutConversationEvent {
            conv: 1,
            seq: 1,
            event: event(10),
        },
        Op::PutConversationEvent {
            conv: 1,
            seq: 2,
            event: event(20),
        },
        Op::PutConversationEvent {
            conv: 1,
            seq: 3,
            event: event(30),
        },
        Op::PutConversationEvent {
            conv: 2,
            seq: 1,
            event: event(15),
        },
    ])
    .unwrap();
    let times = |conv, after, limit| -> Vec<i64> {
        s.conversation_events_after(conv, after, limit)
            .unwrap()
            .iter()
            .map(|e| e.server_time)
            .collect()
    };
    assert_eq!(times(1, 0, 10), vec![10, 20, 30]);
    assert_eq!(times(1, 10, 10), vec![20, 30]);
    assert_eq!(times(1, 30, 10), Vec::<i64>::new());
    assert_eq!(times(1, 0, 2), vec![20, 30]);
    assert_eq!(times(1, 0, 0), Vec::<i64>::new());
    assert_eq!(times(2, 0, 10), vec![15]);
    assert_eq!(s.last_conversation_event_seq(1).unwrap(), 3);
    s.commit(&[Op::DeleteConversationEvent { conv: 1, seq: 1 }])
        .unwrap();
    assert_eq!(times(1, 0, 10), vec![20, 30]);
    s.commit(&[Op::PurgeConversation { conv: 1 }]).unwrap();
    assert!(times(1, 0, 10).is_empty());
    assert_eq!(times(2, 0, 10), vec![15]);
}

fn message_purge(open: Open<'_>) {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let aliased = |seq: u64| {
        bytes::Bytes::from(
            Message {
                id: format!("vendor-{seq}"),
                seq,
                server_time: seq as i64 * 10,
                edited_at: if seq == 2 { 500 } else { 0 },
                ..Default::default()
            }
            .encode_to_vec(),
        )
    };
    let mut ops = Vec::new();
    for seq in 1..=4 {
        ops.push(Op::PutMessage {
            conv: 3,
            seq,
            message: aliased(seq),
        });
        ops.push(Op::PutMessageAlias {
            conv: 3,
            alias: format!("vendor-{seq}"),
            seq,
        });
        ops.push(Op::PutReceiptWanted {
            conv: 3,
            seq,
            sender: u("alice"),
        });
        ops.push(Op::PutSilent { conv: 3, seq });
        ops.push(Op::PutMessageVersion {
            conv: 3,
            seq,
            version: 0,
            message: aliased(seq),
        });
    }
    ops.push(Op::PutPatch {
        conv: 3,
        at: 500,
        seq: 2,
    });
    // A neighbour that must not be touched.
    ops.push(Op::PutMessage {
        conv: 4,
        seq: 1,
        message: msg(4, 1),
    });
    s.commit(&ops).unwrap();
    s.commit(&[Op::PurgeMessages {
        conv: 3,
        from: 1,
        through: 3,
    }])
    .unwrap();
    let seqs = |v: Vec<Message>| v.into_iter().map(|m| m.seq).collect::<Vec<_>>();
    assert_eq!(
        seqs(
            s.messages(3, 0, u64::MAX, Direction::Ascending, 10)
                .unwrap()
        ),
        vec![4]
    );
    assert_eq!(s.message_alias(3, "vendor-2").unwrap(), None);
    assert_eq!(s.message_alias(3, "vendor-4").unwrap(), Some(4));
    assert_eq!(
        s.receipts_wanted(3, 0, u64::MAX)
            .unwrap()
            .into_iter()
            .map(|(seq, _)| seq)
            .collect::<Vec<_>>(),
        vec![4]
    );
    assert_eq!(s.silent_seqs(3, 0, u64::MAX).unwrap(), vec![4]);
    assert!(s.message_versions(3, 2).unwrap().is_empty());
    assert_eq!(s.message_versions(3, 4).unwrap().len(), 1);
    assert!(s.patches_after(3, 0, 10).unwrap().is_empty());
    assert_eq!(s.message(4, 1).unwrap().unwrap().seq, 1);
    // An empty range deletes nothing.
    s.commit(&[Op::PurgeMessages {
        conv: 3,
        from: 5,
        through: 4,
    }])
    .unwrap();
    assert_eq!(s.last_message(3).unwrap().unwrap().seq, 4);
}

fn part_purge(open: Open<'_>) {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let mut ops = Vec::new();
    for conv in [3, 4] {
        for k in 0..3 {
            ops.push(Op::PutDedup {
                conv,
                sender: u("alice"),
                client_id: format!("c{k}"),
                seq: k + 1,
            });
            ops.push(Op::PutConversationEvent {
                conv,
                seq: k + 1,
                event: ConversationEvent::default(),
            });
        }
    }
    s.commit(&ops).unwrap();
    assert_eq!(s.conversation_part_entries(3, 10).unwrap(), 6);
    assert_eq!(s.conversation_part_entries(3, 4).unwrap(), 4);
    // The dedup entries go first, then the event log.
    s.commit(&[Op::PurgeConversationPart { conv: 3, limit: 2 }])
        .unwrap();
    assert_eq!(s.dedup(3, "alice", "c1").unwrap(), None);
    assert_eq!(s.dedup(3, "alice", "c2").unwrap(), Some(3));
    assert_eq!(s.last_conversation_event_seq(3).unwrap(), 3);
    s.commit(&[Op::PurgeConversationPart { conv: 3, limit: 2 }])
        .unwrap();
    assert_eq!(s.dedup(3, "alice", "c2").unwrap(), None);
    assert_eq!(s.conversation_part_entries(3, 10).unwrap(), 2);
    s.commit(&[Op::PurgeConversationPart { conv: 3, limit: 5 }])
        .unwrap();
    assert_eq!(s.conversation_part_entries(3, 10).unwrap(), 0);
    assert_eq!(s.last_conversation_event_seq(3).unwrap(), 0);
    // The neighbour is untouched.
    assert_eq!(s.conversation_part_entries(4, 10).unwrap(), 6);
}
