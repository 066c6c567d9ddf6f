//! What LeanCloud commands cost the server, and what they are charged: `conv/query` within
//! its budget of steps and off the async threads; delivery acks.

use crate::harness::*;
use crate::leancloud::lc_server_with;
use crate::leancloud_wire::{Lc, cmd, op_of, open_since_patches};
use crate::rate_limits::group_of_101;
use tidings::leancloud::LcProtocol;
use tidings::leancloud::pb::{self as lc, CommandType as Cmd, GenericCommand, OpType as Op};
use tidings::protocol::pb;

/// `count` groups of alice's with a 7,900-byte attribute `x` of `a`s: the rows a hostile
/// `$regex` is slowest on.
async fn groups_with_long_attributes(server: &TestServer, count: usize) -> Vec<String> {
    let native = server.client("alice").await;
    let mut ids = Vec::new();
    for n in 0..count {
        let g = within(native.create(pb::CreateConversation {
            kind: pb::ConversationKind::Group as i32,
            members: vec!["bob".into()],
            name: format!("g{n}"),
            attributes: [("x".to_owned(), "a".repeat(7_900))].into(),
            ..Default::default()
        }))
        .await
        .unwrap();
        ids.push(g.id);
        // Whatever the rate limits, a second refills a creation's cost.
        server.clock.advance(1_000);
    }
    ids
}

/// A `conv/query` of `x` against `a*` 127 times then `b`: about six million regex steps a row.
fn hostile_query(peer: &str) -> GenericCommand {
    let pattern = format!("{}b", "a*".repeat(127));
    GenericCommand {
        peer_id: Some(peer.into()),
        conv_message: Some(lc::ConvCommand {
            r#where: Some(lc::JsonObjectMessage {
                data: serde_json::json!({"x": {"$regex": pattern}}).to_string(),
            }),
            limit: Some(10),
            ..Default::default()
        }),
        ..cmd(Cmd::Conv, Some(Op::Query))
    }
}

fn count(peer: &str, cid: &str) -> GenericCommand {
    GenericCommand {
        peer_id: Some(peer.into()),
        conv_message: Some(lc::ConvCommand {
            cid: Some(cid.into()),
            ..Default::default()
        }),
        ..cmd(Cmd::Conv, Some(Op::Count))
    }
}

/// A query whose matching would take more than `leancloud_query_steps_max` steps (a regex of
/// stars over long attributes: seconds of CPU) is refused with 4301 and a reason once it has
/// spent them, and the steps it took are charged to the user afterwards: here the whole
/// burst, so the next request waits for the bucket to refill.
#[tokio::test]
async fn a_query_over_its_steps_is_refused_and_charged_for_them() {
    let server = lc_server_with(|c| {
        c.rate_limit_user_per_sec = 45;
        c.rate_limit_user_burst = 45;
    })
    .await;
    let groups = groups_with_long_attributes(&server, 20).await;
    let mut c = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    c.opened("alice", None).await;
    // A full bucket: 45 tokens.
    server.clock.advance(1_000);
    let r = c.request(hostile_query("alice")).await;
    let e = r.error_message.expect("refused");
    assert_eq!(e.code, 4301, "{e:?}");
    let reason = format!("{} {}", e.reason, e.detail.unwrap_or_default());
    assert!(reason.contains("steps"), "{reason}");
    // 5 for the query, 40 for its 4,000,000 steps: nothing is left.
    let e = c.request(count("alice", &groups[0])).await.error_message;
    assert_eq!(e.map(|e| e.code), Some(4113));
    // A second refills one token: the bucket owed nothing more.
    server.clock.advance(1_000);
    let r = c.request(count("alice", &groups[0])).await;
    assert!(r.error_message.is_none(), "{r:?}");
    // Ordinary queries over the same rows answer (nothing matches: rows this long do not fit
    // a frame the test's decoder takes).
    for condition in [
        serde_json::json!({"x": {"$regex": "^b"}}),
        serde_json::json!({"name": {"$regex": "zz", "$options": "i"}}),
    ] {
        server.clock.advance(1_000);
        let r = c
            .request(GenericCommand {
                peer_id: Some("alice".into()),
                conv_message: Some(lc::ConvCommand {
                    r#where: Some(lc::JsonObjectMessage {
                        data: condition.to_string(),
                    }),
                    limit: Some(100),
                    ..Default::default()
                }),
                ..cmd(Cmd::Conv, Some(Op::Query))
            })
            .await;
        let rows = r.conv_message.expect("rows").results.unwrap().data;
        assert_eq!(rows, "[]", "{condition}");
    }
}

/// A query's matching runs off the async threads: while one takes seconds (a budget raised
/// far above the default), another socket's heartbeats go on being answered, never waiting
/// for it.
#[tokio::test]
async fn a_long_query_does_not_hold_up_other_sockets() {
    let server = lc_server_with(|c| c.leancloud_query_steps_max = 20_000_000).await;
    groups_with_long_attributes(&server, 4).await;
    let mut a = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    a.opened("alice", None).await;
    let mut b = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    b.opened("bob", None).await;
    let started = std::time::Instant::now();
    let mut query = tokio::spawn(async move {
        let r = a.request(hostile_query("alice")).await;
        (r, started.elapsed())
    });
    // Heartbeats one after another until the query is answered; the longest wait for one.
    let (mut last, mut longest, mut echoes) = (started, std::time::Duration::ZERO, 0);
    let (r, query_took) = within(async {
        loop {
            tokio::select! {
                done = &mut query => break done.unwrap(),
                echo = b.request(cmd(Cmd::Echo, None)) => {
                    assert_eq!(echo.cmd, Some(Cmd::Echo as i32));
                    longest = longest.max(last.elapsed());
                    last = std::time::Instant::now();
                    echoes += 1;
                }
            }
        }
    })
    .await;
    assert_eq!(r.error_message.map(|e| e.code), Some(4301));
    assert!(
        longest * 4 < query_took,
        "{echoes} heartbeats, the longest took {longest:?}; the query {query_took:?}"
    );
}

/// Acks refused with 4113 so far (they have no reply: counted, not answered).
fn refused_acks(server: &TestServer) -> u64 {
    server
        .running()
        .app
        .stats
        .traffic
        .requests()
        .iter()
        .filter(|r| r.dialect == "leancloud" && r.kind == "ack" && r.code == "4113")
        .map(|r| r.count)
        .sum()
}

/// When alice received the newest message of `cid`, as bob sees it (0: never).
fn delivered_at(server: &TestServer, cid: &str) -> i64 {
    let bob = tidings::registry::Caller::user("bob".into(), 0);
    let times = server
        .running()
        .app
        .registry
        .receipt_times(&bob, cid)
        .unwrap();
    times.iter().find(|(u, ..)| u == "alice").unwrap().1
}

/// A delivery ack, by message id or up to a time, costs what the native `AckDelivered` does
/// (it moves a position, or looks the time up in the history). Over the limit it is dropped
/// (it has no reply) and counted as refused; once the bucket refills, the next one counts.
#[tokio::test]
async fn delivery_acks_are_charged_and_dropped_over_the_limit() {
    let server = lc_server_with(|c| {
        c.rate_limit_connection_per_sec = 10;
        c.rate_limit_connection_burst = 10;
    })
    .await;
    let mut c = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    c.opened("alice", None).await;
    let cid = c.start("alice", &["alice", "bob"]).await; // 5 tokens
    let bob = server.client("bob").await;
    let mut sent = Vec::new();
    for n in 0..3 {
        sent.push(within(bob.send_text(&cid, &format!("m{n}"))).await.unwrap());
    }
    let ack = |mid: Option<String>, tots: Option<i64>| GenericCommand {
        peer_id: Some("alice".into()),
        ack_message: Some(lc::AckCommand {
            cid: Some(cid.clone()),
            mid,
            tots,
            ..Default::default()
        }),
        ..cmd(Cmd::Ack, None)
    };
    let count = GenericCommand {
        peer_id: Some("alice".into()),
        conv_message: Some(lc::ConvCommand {
            cid: Some(cid.clone()),
            ..Default::default()
        }),
        ..cmd(Cmd::Conv, Some(Op::Count))
    };
    // Four tokens for acks of the first message (by id) and a count behind them.
    for _ in 0..4 {
        c.send(&ack(Some(sent[0].message_id.clone()), None)).await;
    }
    assert!(c.request(count.clone()).await.error_message.is_none());
    assert_eq!(refused_acks(&server), 0);
    assert_eq!(delivered_at(&server, &cid), sent[0].server_time);
    // The bucket is empty: an ack of the newest message, by id then by time, is dropped.
    c.send(&ack(Some(sent[2].message_id.clone()), None)).await;
    c.send(&ack(None, Some(sent[2].server_time))).await;
    let e = c.request(count.clone()).await.error_message;
    assert_eq!(e.map(|e| e.code), Some(4113));
    assert_eq!(refused_acks(&server), 2);
    assert_eq!(delivered_at(&server, &cid), sent[0].server_time);
    // An ack naming nothing does nothing, and costs nothing.
    c.send(&ack(None, None)).await;
    server.clock.advance(200);
    c.send(&ack(None, Some(sent[2].server_time))).await;
    let r = c.request(count).await;
    assert!(r.error_message.is_none(), "{r:?}");
    assert_eq!(refused_acks(&server), 2);
    assert_eq!(delivered_at(&server, &cid), sent[2].server_time);
}

/// A `read` may name many conversations, each a read position to store: the ones beyond the
/// first cost a token each of the user's bucket, charged after it (it has no reply to refuse).
#[tokio::test]
async fn a_read_naming_many_conversations_is_charged_for_each() {
    let server = lc_server_with(user_bucket(10, 40)).await;
    let mut c = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    c.opened("alice", None).await;
    server.clock.advance(10_000);
    let cid = c.start("alice", &["alice", "bob"]).await; // 5 of 40
    let count = GenericCommand {
        peer_id: Some("alice".into()),
        conv_message: Some(lc::ConvCommand {
            cid: Some(cid.clone()),
            ..Default::default()
        }),
        ..cmd(Cmd::Conv, Some(Op::Count))
    };
    let read = |n: usize| GenericCommand {
        peer_id: Some("alice".into()),
        read_message: Some(lc::ReadCommand {
            convs: (0..n)
                .map(|_| lc::ReadTuple {
                    cid: cid.clone(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
        ..cmd(Cmd::Read, None)
    };
    // 35 left: a read of one conversation costs 1, a count 1.
    c.send(&read(1)).await;
    assert!(c.request(count.clone()).await.error_message.is_none());
    // 33 left: a read naming 40 costs 40, and the bucket is 7 below empty.
    c.send(&read(40)).await;
    let e = c.request(count.clone()).await.error_message;
    assert_eq!(e.map(|e| e.code), Some(4113));
    server.clock.advance(800);
    let r = c.request(count).await;
    assert!(r.error_message.is_none(), "{r:?}");
}

/// `groups` groups of alice's with bob, each with `per_group` messages of `size` bytes (the
/// last group created is the most recently active); their ids, oldest first.
async fn groups_with_unread(
    server: &TestServer,
    groups: usize,
    per_group: usize,
    size: usize,
) -> Vec<String> {
    let native = server.client("alice").await;
    let mut ids = Vec::new();
    for n in 0..groups {
        // Whatever the rate limits, a second refills what the login, a group and its messages
        // cost.
        server.clock.advance(1_000);
        let g = within(native.create(pb::CreateConversation {
            kind: pb::ConversationKind::Group as i32,
            members: vec!["bob".into()],
            name: format!("g{n}"),
            ..Default::default()
        }))
        .await
        .unwrap();
        for m in 0..per_group {
            let text = format!("{n}.{m}:{}", "x".repeat(size));
            within(native.send_text(&g.id, &text)).await.unwrap();
        }
        ids.push(g.id);
    }
    ids
}

/// Opens bob with `lc.protobuf2.1`; the offline messages of the catch-up (the heartbeat
/// answered after it shows it is all there: nothing is read before it is written).
/// Bob's `logs` request for the newest message of `cid`.
fn last_message(cid: &str) -> GenericCommand {
    GenericCommand {
        peer_id: Some("bob".into()),
        logs_message: Some(lc::LogsCommand {
            cid: Some(cid.into()),
            l: Some(1),
            ..Default::default()
        }),
        ..cmd(Cmd::Logs, None)
    }
}

async fn open_v1(server: &TestServer) -> (Lc, Vec<lc::DirectCommand>) {
    let mut bob = Lc::connect(server, LcProtocol::ProtobufV1).await;
    bob.opened("bob", None).await;
    bob.request(cmd(Cmd::Echo, None)).await;
    let offline = bob
        .take_pushes()
        .into_iter()
        .filter_map(|p| p.direct_message)
        .inspect(|d| assert_eq!(d.offline, Some(true)))
        .collect();
    (bob, offline)
}

/// The `n.m` a message of [`groups_with_unread`] starts with (it went out as a LeanCloud text
/// message).
fn label(d: &lc::DirectCommand) -> String {
    let m: serde_json::Value = serde_json::from_str(d.msg.as_deref().unwrap()).unwrap();
    m["_lctext"].as_str().unwrap()[..3].to_owned()
}

/// What one protocol-1 open answers is bounded: by `leancloud_offline_bytes_max` (the newest
/// messages of the most recently active conversations, as many as fit) and by
/// `leancloud_offline_messages_max`. Where it cuts, the last message sent says `hasMore`, and
/// the rest are there for `logs`.
#[tokio::test]
async fn a_protocol_1_open_answers_a_bounded_catch_up_and_says_there_is_more() {
    // Bytes: 4 groups of 5 messages of 2,000 bytes, with room for 3.
    let server = lc_server_with(|c| c.leancloud_offline_bytes_max = 7_000).await;
    let groups = groups_with_unread(&server, 4, 5, 2_000).await;
    let (mut bob, offline) = open_v1(&server).await;
    let texts: Vec<String> = offline.iter().map(label).collect();
    assert_eq!(texts, ["3.2", "3.3", "3.4"]);
    let bytes: usize = offline.iter().map(|d| d.msg.as_ref().unwrap().len()).sum();
    assert!(bytes <= 7_000, "{bytes}");
    assert!(offline.iter().all(|d| d.has_more == Some(true)));
    assert!(offline.iter().all(|d| d.cid.as_deref() == Some(&groups[3])));
    // The older messages are in the history.
    let r = bob
        .request(GenericCommand {
            peer_id: Some("bob".into()),
            logs_message: Some(lc::LogsCommand {
                cid: Some(groups[3].clone()),
                mid: offline[0].id.clone(),
                t: offline[0].timestamp,
                l: Some(10),
                ..Default::default()
            }),
            ..cmd(Cmd::Logs, None)
        })
        .await;
    assert_eq!(r.logs_message.unwrap().logs.len(), 2);

    // Messages: 4 groups of 3 small ones, with room for 7: all of the newest two groups, the
    // newest one of the third.
    let server = lc_server_with(|c| c.leancloud_offline_messages_max = 7).await;
    groups_with_unread(&server, 4, 3, 10).await;
    let (_bob, offline) = open_v1(&server).await;
    let texts: Vec<String> = offline.iter().map(label).collect();
    assert_eq!(texts, ["3.0", "3.1", "3.2", "2.0", "2.1", "2.2", "1.2"]);
    assert!(offline.iter().all(|d| d.has_more == Some(true)));

    // Within both bounds: all of it, the last one saying there is no more.
    let server = lc_server_with(|_| {}).await;
    groups_with_unread(&server, 2, 2, 10).await;
    let (_bob, offline) = open_v1(&server).await;
    let more: Vec<Option<bool>> = offline.iter().map(|d| d.has_more).collect();
    assert_eq!(more, [Some(true), Some(true), Some(true), Some(false)]);
}

/// The messages a protocol-1 open reads are charged to the user after it, a token per 20:
/// 60 cost 3, so a `logs` page (5) no longer fits where it would without them.
#[tokio::test]
async fn a_protocol_1_open_is_charged_for_the_messages_it_reads() {
    let server = lc_server_with(|c| {
        c.rate_limit_user_per_sec = 25;
        c.rate_limit_user_burst = 25;
    })
    .await;
    let groups = groups_with_unread(&server, 3, 20, 10).await;
    server.clock.advance(1_000);
    let logs = last_message(&groups[0]);
    // 25 tokens: 20 for the open, 3 for its 60 messages.
    let (mut bob, offline) = open_v1(&server).await;
    assert_eq!(offline.len(), 60);
    let e = bob.request(logs.clone()).await.error_message;
    assert_eq!(e.map(|e| e.code), Some(4113));
    // A protocol-3 open reads no messages: it leaves 5.
    server.clock.advance(1_000);
    let mut again = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    again.opened("bob", None).await;
    let r = again.request(logs).await;
    assert!(r.error_message.is_none(), "{r:?}");
}

/// The catch-ups that look at every conversation of the client's are charged afterwards, a
/// token per 100 conversations, on top of their price: with 500 groups, missed notifications
/// cost 5 + 5, and an open with `lastPatchTime` 20 + 5.
#[tokio::test]
async fn catch_ups_over_all_the_conversations_are_charged_by_their_number() {
    use crate::leancloud_http::notifications;
    let server = lc_server_with(|c| {
        c.rate_limit_user_per_sec = 40;
        c.rate_limit_user_burst = 40;
    })
    .await;
    let groups = groups_with_unread(&server, 500, 0, 0).await;
    let mut c = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    let st = c.opened("bob", None).await.st.unwrap();
    server.clock.advance(1_000);
    // 40 tokens: four answers of 10.
    let addr = server.running().addr;
    for n in 0..4 {
        let a = notifications(addr, "bob", 0, &st).await;
        assert_eq!(a.status, 200, "answer {n}: {a:?}");
    }
    let a = notifications(addr, "bob", 0, &st).await;
    assert_eq!(a.status, 429, "{a:?}");

    // 40 tokens: an open with `lastPatchTime` (25) leaves 15, three `logs` pages.
    server.clock.advance(1_000);
    let mut c = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    let r = c.request(open_since_patches("bob", 1)).await;
    assert_eq!(
        (r.cmd, r.op),
        (Some(Cmd::Session as i32), Some(Op::Opened as i32)),
        "{r:?}"
    );
    let logs = last_message(&groups[0]);
    for n in 0..3 {
        let r = c.request(logs.clone()).await;
        assert!(r.error_message.is_none(), "page {n}: {r:?}");
    }
    let e = c.request(logs).await.error_message;
    assert_eq!(e.map(|e| e.code), Some(4113));
}

/// What an open of bob's with `lastPatchTime` `since` replays, read up to the reply of a
/// request made behind it: the ids of the patched messages, and the newest patch time.
async fn replayed(server: &TestServer, since: i64, cid: &str) -> (Vec<String>, Option<i64>) {
    server.clock.advance(1_000);
    let mut c = Lc::connect(server, LcProtocol::ProtobufV3).await;
    let r = c.request(open_since_patches("bob", since)).await;
    assert_eq!(op_of(&r), (Some(Cmd::Session), Some(Op::Opened)), "{r:?}");
    // The catch-up is written before anything else the socket sends.
    c.request(last_message(cid)).await;
    let (mut mids, mut newest) = (Vec::new(), None);
    for p in c.take_pushes() {
        if op_of(&p) == (Some(Cmd::Patch), Some(Op::Modify)) {
            let p = p.patch_message.unwrap();
            newest = newest.max(p.last_patch_time);
            mids.extend(p.patches.into_iter().map(|i| i.mid.unwrap()));
        }
    }
    (mids, newest)
}

/// The edits and recalls an open with `lastPatchTime` replays stop at
/// `leancloud_offline_bytes_max` too. LeanCloud's replay has no "more" flag: the patches of
/// one millisecond go together, so the replay ends before a millisecond it cannot send whole,
/// and the next open, from the newest patch time the client got, replays the rest. Every
/// patch comes once.
#[tokio::test]
async fn a_patch_replay_stops_at_its_bytes_and_the_next_open_gets_the_rest() {
    let server = lc_server_with(|c| c.leancloud_offline_bytes_max = 3_000).await;
    let alice = server.client("alice").await;
    let mut bob = server.client("bob").await;
    let team = within(alice.create_group("team", &["bob"])).await.unwrap();
    let text = |n: usize| format!("{n}{}", "x".repeat(800));
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(
            within(alice.send_text(&team.id, &text(n)))
                .await
                .unwrap()
                .message_id,
        );
    }
    // Edited in four milliseconds, the third and fourth in the same one: about 900 bytes
    // each as stored, three fit in 3,000.
    for (n, id) in ids.iter().enumerate() {
        if n != 3 {
            server.clock.advance(1);
        }
        within(alice.edit_text(&team.id, id, &text(n + 10)))
            .await
            .unwrap();
    }
    // Every edit has been pushed to whoever was online: none is pushed to the opens below.
    let mut updated = 0;
    while updated < ids.len() {
        if let pb::server_frame::Body::MessageUpdated(_) = push(&mut bob).await {
            updated += 1;
        }
    }
    let (first, newest) = replayed(&server, 1, &team.id).await;
    assert_eq!(first, ids[..2], "the third millisecond does not fit whole");
    let (rest, newest) = replayed(&server, newest.unwrap(), &team.id).await;
    assert_eq!(rest, ids[2..]);
    let (none, _) = replayed(&server, newest.unwrap(), &team.id).await;
    assert!(none.is_empty(), "{none:?}");
}

/// A `patch/modify` pushes each edit to every member, as the send did: each patch beyond the
/// first costs a token more, and each its audience after it, one token per 50 members. Four
/// edits in a group of 101 cost 1 + 3 + 4 × 2: three such commands take 36 of 40 tokens, the
/// fourth goes 8 below empty.
#[tokio::test]
async fn a_patch_is_charged_for_each_edit_and_the_members_it_goes_to() {
    let server = lc_server_with(user_bucket(10, 40)).await;
    let cid = group_of_101(&server).await;
    let mut c = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    c.opened("alice", None).await;
    server.clock.advance(10_000);
    let mut mids = Vec::new();
    for n in 0..4 {
        let ack = c.direct("alice", &cid, &format!("m{n}"), false).await;
        mids.push(ack.uid.unwrap());
    }
    let patch = |n: usize| GenericCommand {
        peer_id: Some("alice".into()),
        patch_message: Some(lc::PatchCommand {
            patches: mids
                .iter()
                .map(|mid| lc::PatchItem {
                    cid: Some(cid.clone()),
                    mid: Some(mid.clone()),
                    data: Some(format!("edit {n}")),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
        ..cmd(Cmd::Patch, Some(Op::Modify))
    };
    server.clock.advance(10_000);
    for n in 0..4 {
        let r = c.request(patch(n)).await;
        assert_eq!(op_of(&r), (Some(Cmd::Patch), Some(Op::Modified)), "{r:?}");
    }
    let count = count("alice", &cid);
    let e = c.request(count.clone()).await.error_message;
    assert_eq!(e.map(|e| e.code), Some(4113));
    server.clock.advance(900);
    let r = c.request(count).await;
    assert!(r.error_message.is_none(), "{r:?}");
}

/// A `conv/update`, and a `join()` and `quit()` of a user who was no member, are pushed to
/// every member of the group: besides its own 5 tokens each costs one token more per 50
/// members, after it, as on the native door. In a group of 101 each costs 7: three take a
/// bucket of 20 to -1, and the next request waits.
#[tokio::test]
async fn group_changes_are_charged_by_the_members_they_go_to() {
    let server = lc_server_with(user_bucket(10, 20)).await;
    let cid = group_of_101(&server).await;
    let mut c = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    c.opened("alice", None).await;
    c.opened("mallory", None).await;
    let conv = |peer: &str, op: Op, m: &[&str], name: Option<&str>| GenericCommand {
        peer_id: Some(peer.into()),
        conv_message: Some(lc::ConvCommand {
            cid: Some(cid.clone()),
            m: m.iter().map(|m| m.to_string()).collect(),
            attr: name.map(|name| lc::JsonObjectMessage {
                data: serde_json::json!({ "name": name }).to_string(),
            }),
            ..Default::default()
        }),
        ..cmd(Cmd::Conv, Some(op))
    };
    let rounds = [
        (
            "alice",
            [
                conv("alice", Op::Update, &[], Some("n0")),
                conv("alice", Op::Update, &[], Some("n1")),
                conv("alice", Op::Update, &[], Some("n2")),
            ],
        ),
        (
            "mallory",
            [
                conv("mallory", Op::Add, &["mallory"], None),
                conv("mallory", Op::Remove, &["mallory"], None),
                conv("mallory", Op::Add, &["mallory"], None),
            ],
        ),
    ];
    for (peer, changes) in rounds {
        server.clock.advance(10_000);
        for change in changes {
            let r = c.request(change).await;
            assert!(r.error_message.is_none(), "{peer}: {r:?}");
        }
        let e = c.request(count(peer, &cid)).await.error_message;
        assert_eq!(e.map(|e| e.code), Some(4113), "{peer}");
    }
}

/// A `logs` page costs one token more per 64 KiB of the messages it returns, as stored: ten
/// messages of 32 KiB cost 5 + 5, so two pages take what an open (20) leaves of 40, where
/// four pages of short messages fit.
#[tokio::test]
async fn a_logs_page_is_charged_by_its_bytes() {
    let server = lc_server_with(user_bucket(10, 40)).await;
    let large = groups_with_unread(&server, 1, 10, 32 << 10).await.remove(0);
    server.clock.advance(10_000);
    let small = groups_with_unread(&server, 1, 10, 10).await.remove(0);
    server.clock.advance(10_000);
    let logs = |cid: &str| GenericCommand {
        peer_id: Some("bob".into()),
        logs_message: Some(lc::LogsCommand {
            cid: Some(cid.into()),
            l: Some(10),
            ..Default::default()
        }),
        ..cmd(Cmd::Logs, None)
    };
    for (cid, pages) in [(&small, 4), (&large, 2)] {
        let mut c = Lc::connect(&server, LcProtocol::ProtobufV3).await;
        c.opened("bob", None).await;
        for n in 0..pages {
            let r = c.request(logs(cid)).await;
            assert_eq!(r.logs_message.map(|l| l.logs.len()), Some(10), "page {n}");
        }
        let e = c.request(logs(cid)).await.error_message;
        assert_eq!(e.map(|e| e.code), Some(4113));
        server.clock.advance(10_000);
    }
}

/// The edits an open with `lastPatchTime` replays are charged after it by their bytes, as
/// `logs` pages are: sixteen messages edited to 60,000 bytes are 14 tokens on top of the
/// open's 20, so of 40 one `logs` page (5) is left, not four.
#[tokio::test]
async fn a_patch_replay_is_charged_by_its_bytes() {
    let server = lc_server_with(user_bucket(40, 40)).await;
    let alice = server.client("alice").await;
    server.clock.advance(1_000);
    let cid = within(alice.create_group("g", &["bob"])).await.unwrap().id;
    let bulk = "x".repeat(60_000);
    for _ in 0..16 {
        server.clock.advance(1_000);
        let ack = within(alice.send_text(&cid, "short")).await.unwrap();
        within(alice.edit_text(&cid, &ack.message_id, &bulk))
            .await
            .unwrap();
    }
    server.clock.advance(1_000);
    let mut c = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    let r = c.request(open_since_patches("bob", 1)).await;
    assert_eq!(
        (r.cmd, r.op),
        (Some(Cmd::Session as i32), Some(Op::Opened as i32)),
        "{r:?}"
    );
    let logs = last_message(&cid);
    let r = c.request(logs.clone()).await;
    assert!(r.error_message.is_none(), "{r:?}");
    // Every edit, replayed (one made just before the open may also come live).
    let replayed: std::collections::HashSet<String> = c
        .take_pushes()
        .into_iter()
        .filter(|p| op_of(p) == (Some(Cmd::Patch), Some(Op::Modify)))
        .flat_map(|p| p.patch_message.unwrap().patches)
        .map(|i| i.mid.unwrap())
        .collect();
    assert_eq!(replayed.len(), 16);
    let e = c.request(logs).await.error_message;
    assert_eq!(e.map(|e| e.code), Some(4113));
}

/// Bob's `conv/query` for his own conversations, `skip` rows in.
fn bobs_conversations(skip: i32) -> GenericCommand {
    bobs_conversations_limited(skip, 100)
}

fn bobs_conversations_limited(skip: i32, limit: i32) -> GenericCommand {
    bobs_conversations_sorted(skip, limit, None)
}

fn bobs_conversations_sorted(skip: i32, limit: i32, sort: Option<&str>) -> GenericCommand {
    GenericCommand {
        peer_id: Some("bob".into()),
        conv_message: Some(lc::ConvCommand {
            r#where: Some(lc::JsonObjectMessage {
                data: serde_json::json!({"m": "bob"}).to_string(),
            }),
            skip: Some(skip),
            limit: Some(limit),
            sort: sort.map(str::to_owned),
            ..Default::default()
        }),
        ..cmd(Cmd::Conv, Some(Op::Query))
    }
}

/// A `conv/query` answer stops before the row that would take it past
/// `leancloud_query_bytes_max` (1 MiB), the rest reached with `skip`, and costs one token more
/// per 64 KiB of the rows it built: twenty groups whose last message is 60,000 bytes answer 17
/// rows (about 1 MiB), then the other 3, each query building all twenty (5 + 18 tokens), and of
/// the 32 tokens an open leaves of 70 (20, and 18 for the last messages its `unread` push
/// carries) nothing is left.
#[tokio::test]
async fn a_query_answer_is_bounded_and_charged_by_its_bytes() {
    let server = lc_server_with(user_bucket(70, 70)).await;
    groups_with_unread(&server, 20, 1, 60_000).await;
    let mut c = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    c.opened("bob", None).await;
    let rows = |r: GenericCommand| -> (usize, usize) {
        let data = r.conv_message.expect("rows").results.unwrap().data;
        let rows: Vec<serde_json::Value> = serde_json::from_str(&data).unwrap();
        (rows.len(), data.len())
    };
    let (first, bytes) = rows(c.request(bobs_conversations(0)).await);
    assert_eq!(first, 17, "{bytes} bytes");
    assert!(bytes <= 1 << 20, "{bytes} bytes");
    let (rest, _) = rows(c.request(bobs_conversations(17)).await);
    assert_eq!(rest, 3);
    let e = c.request(bobs_conversations(0)).await.error_message;
    assert_eq!(e.map(|e| e.code), Some(4113));
}

/// A `conv/query` is charged for every row it built, answered or not, and builds whole rows
/// (the member's last message, read from the store) only for what it answers, unless its
/// condition or sort looks at the last message. Twenty groups whose last message is 60,000
/// bytes: a query answering one row costs about 5 tokens; sorted by `-lm` it reads all twenty
/// last messages (about 18 tokens more), so of the 25 tokens an open leaves, a third query
/// finds too few.
#[tokio::test]
async fn a_query_is_charged_for_the_rows_it_built_not_only_those_it_answered() {
    let server = lc_server_with(user_bucket(63, 63)).await;
    groups_with_unread(&server, 20, 1, 60_000).await;
    let mut c = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    c.opened("bob", None).await;
    let answered = |r: GenericCommand| -> Vec<serde_json::Value> {
        let data = r.conv_message.expect("rows").results.unwrap().data;
        serde_json::from_str(&data).unwrap()
    };
    let light = answered(c.request(bobs_conversations_limited(0, 1)).await);
    assert_eq!(light.len(), 1);
    let msg = light[0]["msg"].as_str().map_or(0, str::len);
    assert!(msg >= 60_000, "made whole: {msg}");
    let by_last = answered(
        c.request(bobs_conversations_sorted(0, 1, Some("-lm")))
            .await,
    );
    assert_eq!(by_last.len(), 1);
    let e = c
        .request(bobs_conversations_limited(0, 1))
        .await
        .error_message;
    assert_eq!(e.map(|e| e.code), Some(4113));
}

/// Missed notifications stop at `leancloud_offline_bytes_max` of events (as stored; here 256
/// KiB), never inside a millisecond, with `hasMore`; asking again from the newest `serverTs`
/// answers the rest. Each answer costs one token more per 64 KiB of its events.
#[tokio::test]
async fn missed_notifications_are_bounded_and_charged_by_their_bytes() {
    use crate::leancloud_http::notifications;
    let server = lc_server_with(|c| {
        user_bucket(38, 38)(c);
        c.leancloud_offline_bytes_max = 256 << 10;
    })
    .await;
    let alice = server.client("alice").await;
    server.clock.advance(1_000);
    let g = within(alice.create_group("g", &["bob"])).await.unwrap().id;
    let names: Vec<String> = (0..100)
        .map(|n| format!("{n:03}{}", "u".repeat(117)))
        .collect();
    let users: Vec<&str> = names.iter().map(String::as_str).collect();
    // Thirty events naming 100 users of 120 bytes (about 12 KB each), each in its millisecond.
    for n in 0..30 {
        server.clock.advance(1_000);
        if n % 2 == 0 {
            within(alice.add_members(&g, &users)).await.unwrap();
        } else {
            within(alice.remove_members(&g, &users)).await.unwrap();
        }
    }
    server.clock.advance(1_000);
    let mut c = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    let st = c.opened("bob", None).await.st.unwrap();
    let addr = server.running().addr;
    let mut seen = Vec::new();
    let mut after = 0;
    let mut answers = 0;
    loop {
        let a = notifications(addr, "bob", after, &st).await;
        assert_eq!(a.status, 200, "{a:?}");
        answers += 1;
        let body = a.json();
        let list = body["notifications"].as_array().unwrap().clone();
        let changes = list
            .iter()
            .filter(|n| n["m"].as_array().is_some_and(|m| m.len() == 100));
        seen.extend(changes.map(|n| n["serverTs"].as_i64().unwrap()));
        after = list.last().unwrap()["serverTs"].as_i64().unwrap();
        if body["hasMore"] != true {
            break;
        }
        assert!(answers < 10, "{answers} answers");
    }
    assert_eq!(answers, 2);
    let distinct: std::collections::BTreeSet<i64> = seen.iter().copied().collect();
    assert_eq!((seen.len(), distinct.len()), (30, 30));
    // 38 - 20 for the open, - 5 - 3 for about 250 KB, - 5 - 1 for the other 120 KB: 4 left.
    let a = notifications(addr, "bob", after, &st).await;
    assert_eq!(a.status, 429, "{a:?}");
}

/// A `conv/query` is charged a token per 500 member records it reads from the store to load
/// the conversations it looks at, as it loads them, and refused (4113) before the next load
/// once the user is in debt: after a restart, bob's query over ten groups of 1,000 members
/// (2.002 tokens each) loads eight of them with the 15 tokens its 5 left, and is refused; the
/// eight stay loaded, so the query asked again loads the other two and is answered.
#[tokio::test]
async fn a_query_is_charged_for_the_members_it_loads_and_refused_once_in_debt() {
    let mut server = lc_server_with(|_| {}).await;
    let alice = server.client("alice").await;
    let names: Vec<String> = (1..1000).map(|n| format!("member-{n}")).collect();
    let members: Vec<&str> = names.iter().map(String::as_str).chain(["bob"]).collect();
    for n in 0..10 {
        within(alice.create_group(&format!("g{n}"), &members))
            .await
            .unwrap();
    }
    drop(alice);
    // Twenty tokens, refilled one a second on the test's clock, which stands still.
    user_bucket(1, 20)(&mut server.config);
    server.restart().await;
    let mut c = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    c.opened("bob", None).await;
    server.clock.advance(30_000);
    let stats = server.running().app.stats.clone();
    // Cold: 15 - 8 × 2.002 is below empty, and the ninth load is refused.
    assert_eq!(query(&mut c).await, Some(4113));
    assert_eq!(stats.conversations_loaded.get(), 8);
    // Again, from a full bucket: two loads, then 20 - 5 - 4.004 leaves room for two more.
    server.clock.advance(30_000);
    assert_eq!(query(&mut c).await, None);
    assert_eq!(stats.conversations_loaded.get(), 10);
    assert_eq!(query(&mut c).await, None);
    assert_eq!(query(&mut c).await, None);
    assert_eq!(query(&mut c).await, Some(4113));
}

/// `conv/is_member` and `blacklist/check_block` name up to 1,000 conversations each: they
/// answer from what is loaded or from the stored record (and member key) of each, loading
/// none, and are charged a token per 100 records they read. After a restart, with ten groups
/// of 1,000 members of bob's (the first blocking mallory) and 190 made-up ids named, mallory
/// is told she is in none and blocked by the first, bob that he is in all ten; nothing is
/// loaded, and mallory paid 1 + 2 and 5 + 2 tokens.
#[tokio::test]
async fn is_member_and_check_block_load_nothing_and_pay_for_what_they_read() {
    let mut server = lc_server_with(|_| {}).await;
    let alice = server.client("alice").await;
    let names: Vec<String> = (1..999).map(|n| format!("member-{n}")).collect();
    let members: Vec<&str> = names.iter().map(String::as_str).chain(["bob"]).collect();
    let mut ids = Vec::new();
    for n in 0..10 {
        let g = within(alice.create_group(&format!("g{n}"), &members))
            .await
            .unwrap();
        ids.push(g.id);
    }
    within(alice.block_members(&ids[0], &["mallory"]))
        .await
        .unwrap();
    drop(alice);
    user_bucket(1, 20)(&mut server.config);
    server.restart().await;
    let stats = server.running().app.stats.clone();
    let mut c = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    c.opened("mallory", None).await;
    server.clock.advance(30_000);
    let named: Vec<String> = ids
        .iter()
        .cloned()
        .chain((1_000..1_190).map(tidings::protocol::conversation_id))
        .collect();
    let answers = is_member(&mut c, "mallory", &named)
        .await
        .expect("answered");
    assert_eq!(answers.len(), 200);
    assert!(answers.values().all(|v| v == false), "{answers:?}");
    let r = c
        .request(GenericCommand {
            peer_id: Some("mallory".into()),
            blacklist_message: Some(lc::BlacklistCommand {
                to_cids: named.clone(),
                ..Default::default()
            }),
            ..cmd(Cmd::Blacklist, Some(Op::CheckBlock))
        })
        .await;
    let blocked = r.blacklist_message.expect("answered").blocked_cids;
    assert_eq!(blocked, [ids[0].clone()]);
    assert_eq!(stats.conversations_loaded.get(), 0);
    // 20 - 3 - 7 = 10 tokens left: ten more light requests.
    for n in 0..10 {
        assert!(
            is_member(&mut c, "mallory", &ids[..1]).await.is_ok(),
            "request {n}"
        );
    }
    assert_eq!(
        is_member(&mut c, "mallory", &ids[..1]).await.unwrap_err(),
        4113
    );
    c.opened("bob", None).await;
    server.clock.advance(30_000);
    let answers = is_member(&mut c, "bob", &ids).await.expect("answered");
    assert!(ids.iter().all(|id| answers[id] == true), "{answers:?}");
}

/// `conv/is_member` as `peer`: the answer by id, or the error code.
async fn is_member(
    c: &mut Lc,
    peer: &str,
    ids: &[String],
) -> Result<serde_json::Map<String, serde_json::Value>, i32> {
    let r = c
        .request(GenericCommand {
            peer_id: Some(peer.into()),
            conv_message: Some(lc::ConvCommand {
                cids: ids.to_vec(),
                ..Default::default()
            }),
            ..cmd(Cmd::Conv, Some(Op::IsMember))
        })
        .await;
    if let Some(e) = r.error_message {
        return Err(e.code);
    }
    let data = r.conv_message.unwrap().results.unwrap().data;
    match serde_json::from_str(&data).unwrap() {
        serde_json::Value::Object(m) => Ok(m),
        other => panic!("{other}"),
    }
}

async fn query(c: &mut Lc) -> Option<i32> {
    let r = c.request(bobs_conversations_limited(0, 1)).await;
    r.error_message.map(|e| e.code)
}

/// Queries admitted together (here two on one connection, each admitted for its 5 tokens
/// while the bucket still held 20) run one after another, each charged when done: one whose
/// turn comes while the user is in debt is refused with 4113 instead of running.
#[tokio::test]
async fn a_query_whose_turn_comes_while_its_user_is_in_debt_does_not_run() {
    let mut server = lc_server_with(|_| {}).await;
    groups_with_unread(&server, 20, 1, 60_000).await;
    user_bucket(1, 20)(&mut server.config);
    server.restart().await;
    let mut c = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    c.opened("bob", None).await;
    server.clock.advance(60_000);
    // Every turn at CPU-heavy work is held, so both queries are admitted and wait.
    let app = server.running().app.clone();
    let turns = u32::try_from(app.cpu_work.available_permits()).unwrap();
    let held = app.cpu_work.acquire_many(turns).await.unwrap();
    for i in [1001, 1002] {
        let mut q = bobs_conversations_sorted(0, 20, Some("-lm"));
        q.i = Some(i);
        c.send(&q).await;
    }
    // Commands are read in order: once the echo is answered, both queries were admitted.
    let echo = c.request(cmd(Cmd::Echo, None)).await;
    assert_eq!(op_of(&echo).0, Some(Cmd::Echo));
    drop(held);
    // The first builds 20 rows of 60,000-byte messages (about 18 tokens): the user is in debt.
    let first = c.reply_to(1001).await;
    assert!(first.conv_message.is_some(), "{first:?}");
    let second = c.reply_to(1002).await.error_message.unwrap();
    assert_eq!(second.code, 4113);
    // It says when a query fits again, as the next query is told.
    let next = c
        .request(bobs_conversations_sorted(0, 20, Some("-lm")))
        .await
        .error_message
        .unwrap();
    assert_eq!(next.code, 4113);
    assert_eq!(second.detail, next.detail);
}
