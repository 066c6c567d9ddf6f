//! The backend's data lifecycle and request metrics: `/metrics` request, frame and session
//! counts by dialect, a user's data deleted and exported, history retention by age. A real
//! server on port 0, real clients of both dialects, a real store on disk.

use crate::admin::{KEY, admin_addr, api, metrics_of, ok};
use crate::harness::*;
use crate::leancloud_wire::Lc;
use serde_json::{Value, json};
use tidings::leancloud::LcProtocol;
use tidings::leancloud::pb::{self as lc, CommandType as Cmd, GenericCommand};
use tidings::protocol::pb;
use tidings::protocol::pb::client_frame::Body as Req;
use tidings::protocol::pb::server_frame::Body as Rep;

/// A server with the admin API and the LeanCloud dialect on, changed by `tweak`.
async fn server_with(tweak: impl FnOnce(&mut tidings::config::Config)) -> TestServer {
    crate::leancloud::lc_server_with(|c| {
        c.admin_listen = "127.0.0.1:0".into();
        c.admin_api_keys = vec![KEY.into()];
        tweak(c);
    })
    .await
}

fn count(m: &std::collections::HashMap<String, f64>, key: &str) -> f64 {
    m.get(key).copied().unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_count_requests_by_kind_and_code_frames_and_sessions_by_dialect() {
    let server = server_with(|_| {}).await;
    let before = metrics_of(&server).await;
    let native_login = r#"tidings_requests_total{dialect="native",type="login",code="ok"}"#;
    assert_eq!(count(&before, native_login), 0.0);
    assert_eq!(
        count(&before, r#"tidings_dialect_sessions{dialect="native"}"#),
        0.0
    );

    let mut alice = Raw::login(&server, "alice").await;
    let missing = alice
        .request(Req::FetchHistory(pb::FetchHistory {
            conversation_id: "00000000000000ff".into(),
            ..Default::default()
        }))
        .await;
    assert!(matches!(missing, Rep::Error(_)), "{missing:?}");
    let pong = alice.request(Req::Ping(pb::Ping {})).await;
    assert!(matches!(pong, Rep::Pong(_)));

    let mut bob = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    bob.opened("bob", None).await;
    bob.start("bob", &["alice"]).await;
    let refused = bob
        .request(GenericCommand {
            peer_id: Some("bob".into()),
            logs_message: Some(lc::LogsCommand {
                cid: Some("00000000000000ff".into()),
                ..Default::default()
            }),
            ..crate::leancloud_wire::cmd(Cmd::Logs, None)
        })
        .await;
    assert_eq!(refused.error_message.map(|e| e.code), Some(4303));

    let after = metrics_of(&server).await;
    assert_eq!(count(&after, native_login), 1.0);
    assert_eq!(
        count(
            &after,
            r#"tidings_requests_total{dialect="native",type="fetch_history",code="ERROR_CONVERSATION_NOT_FOUND"}"#
        ),
        1.0
    );
    assert_eq!(
        count(
            &after,
            r#"tidings_requests_total{dialect="native",type="ping",code="ok"}"#
        ),
        1.0
    );
    assert_eq!(
        count(
            &after,
            r#"tidings_requests_total{dialect="leancloud",type="session.open",code="ok"}"#
        ),
        1.0
    );
    assert_eq!(
        count(
            &after,
            r#"tidings_requests_total{dialect="leancloud",type="conv.start",code="ok"}"#
        ),
        1.0
    );
    // Login, history, ping: three frames in; their answers, the welcome and the new
    // conversation's event out.
    assert_eq!(
        count(&after, r#"tidings_frames_in_total{dialect="native"}"#),
        3.0
    );
    assert!(count(&after, r#"tidings_bytes_in_total{dialect="native"}"#) > 3.0);
    assert!(count(&after, r#"tidings_frames_out_total{dialect="native"}"#) >= 4.0);
    assert_eq!(
        count(
            &after,
            r#"tidings_requests_total{dialect="leancloud",type="logs",code="4303"}"#
        ),
        1.0
    );
    assert_eq!(
        count(&after, r#"tidings_frames_in_total{dialect="leancloud"}"#),
        3.0
    );
    assert!(count(&after, r#"tidings_bytes_out_total{dialect="leancloud"}"#) > 0.0);
    assert_eq!(
        count(&after, r#"tidings_dialect_sessions{dialect="native"}"#),
        1.0
    );
    assert_eq!(
        count(&after, r#"tidings_dialect_sessions{dialect="leancloud"}"#),
        1.0
    );
    // The labels are a closed set: no user or conversation id in any of them.
    for key in after
        .keys()
        .filter(|k| k.starts_with("tidings_requests_total"))
    {
        assert!(
            !key.contains("alice") && !key.contains("bob") && !key.contains("00000000"),
            "{key}"
        );
    }
}

/// A keyed GET whose answer is not one JSON value: status and body text.
async fn get_text(server: &TestServer, path: &str) -> (u16, String) {
    let r = crate::admin::http(admin_addr(server), "GET", path, Some(KEY), None).await;
    (r.status, r.text)
}

/// Messages of a conversation as the backend reads them (unfiltered).
async fn history(server: &TestServer, conv: &str) -> Vec<Value> {
    let page = ok(
        server,
        "GET",
        &format!("/v1/conversations/{conv}/messages?limit=100&oldest_first=true"),
        None,
    )
    .await;
    page["messages"].as_array().unwrap().clone()
}

/// alice owns a group with bob and carol and has a direct conversation with bob, a
/// profile, a block; both conversations hold messages of hers and of bob's.
async fn alice_and_friends(server: &TestServer) -> (String, String) {
    let group = ok(
        server,
        "POST",
        "/v1/conversations?as=alice",
        Some(json!({"kind": "group", "members": ["bob", "carol"], "name": "trip"})),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let direct = ok(
        server,
        "POST",
        "/v1/conversations?as=alice",
        Some(json!({"kind": "direct", "members": ["bob"]})),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for (conv, who, text) in [
        (&group, "alice", "my address is 1 Main St"),
        (&group, "bob", "thanks"),
        (&group, "alice", "call me on 555-0100"),
        (&direct, "alice", "a secret"),
        (&direct, "bob", "kept"),
    ] {
        ok(
            server,
            "POST",
            &format!("/v1/conversations/{conv}/messages?as={who}"),
            Some(json!({"text": text})),
        )
        .await;
    }
    ok(
        server,
        "PATCH",
        "/v1/users/alice/profile",
        Some(json!({"display_name": "Alice A.", "set_fields": {"phone": "555-0100"}})),
    )
    .await;
    ok(
        server,
        "POST",
        "/v1/users/alice/blocks",
        Some(json!({"user_id": "carol"})),
    )
    .await;
    (group, direct)
}

/// A group alice wrote `text` in and was then removed from (by bob, its owner; carol wrote
/// "hi" after her): nothing of it is in her list.
async fn a_group_alice_left(server: &TestServer, text: &str) -> String {
    let former = ok(
        server,
        "POST",
        "/v1/conversations?as=bob",
        Some(json!({"kind": "group", "members": ["alice", "carol"], "name": "old"})),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for (who, text) in [("alice", text), ("carol", "hi")] {
        ok(
            server,
            "POST",
            &format!("/v1/conversations/{former}/messages?as={who}"),
            Some(json!({"text": text})),
        )
        .await;
    }
    ok(
        server,
        "POST",
        &format!("/v1/conversations/{former}/members/remove?as=bob"),
        Some(json!({"members": ["alice"]})),
    )
    .await;
    former
}

#[tokio::test]
async fn deleting_a_user_empties_their_messages_and_removes_their_records_in_steps() {
    let mut server = server_with(|c| c.user_delete_step_max = 3).await;
    let (group, direct) = alice_and_friends(&server).await;
    // A group alice wrote in and was removed from before: nothing of hers is in her list.
    let former = a_group_alice_left(&server, "my old number").await;
    let mut alice = Raw::login(&server, "alice").await;
    let (mut bob, _) = server.login("bob").await;

    // Small steps: the call answers `done: false` and a cursor until everything is gone.
    let mut cursor = String::new();
    let mut calls = 0;
    let (mut emptied, mut left, mut closed) = (0, 0, 0);
    loop {
        calls += 1;
        assert!(calls < 20, "the deletion makes progress");
        let step = ok(
            &server,
            "DELETE",
            &format!("/v1/users/alice?cursor={cursor}"),
            None,
        )
        .await;
        emptied += step["messages_emptied"].as_u64().unwrap();
        left += step["conversations_left"].as_u64().unwrap();
        closed += step["sessions_closed"].as_u64().unwrap();
        if step["done"].as_bool().unwrap() {
            assert_eq!(step["cursor"], "");
            break;
        }
        cursor = step["cursor"].as_str().unwrap().to_owned();
        assert!(!cursor.is_empty());
    }
    assert!(calls > 2, "{calls} calls: the bound held");
    assert_eq!((emptied, left, closed), (4, 2, 1));
    assert_eq!(
        alice.close_code().await,
        Some(pb::CloseCode::CloseKicked as u16)
    );
    // bob's devices heard of the emptied messages as recalls.
    let mut recalled = 0;
    while recalled < 4 {
        if let Rep::MessageUpdated(u) = push(&mut bob).await {
            assert_eq!(u.kind, pb::MessageUpdateKind::Recalled as i32);
            let m = u.message.unwrap();
            assert_eq!(m.sender, "alice");
            assert!(m.content.is_empty());
            recalled += 1;
        }
    }

    for round in ["before the restart", "after it"] {
        let group_messages = history(&server, &group).await;
        assert_eq!(group_messages.len(), 3, "{round}");
        for m in &group_messages {
            if m["sender"] == "alice" {
                assert_eq!(m["recalled"], true, "{round}: {m}");
                assert_eq!(m["content"], "", "{round}: {m}");
            } else {
                assert_eq!(m["text"], "thanks", "{round}: {m}");
            }
        }
        let former_messages = history(&server, &former).await;
        assert_eq!(former_messages[0]["recalled"], true, "{round}");
        assert_eq!(former_messages[0]["sender"], "alice", "{round}");
        assert_eq!(former_messages[1]["text"], "hi", "{round}");
        let direct_messages = history(&server, &direct).await;
        assert_eq!(direct_messages[0]["recalled"], true, "{round}");
        assert_eq!(direct_messages[1]["text"], "kept", "{round}");
        // The group passed to the longest-standing member; alice is in nothing.
        let g = ok(&server, "GET", &format!("/v1/conversations/{group}"), None).await;
        assert_eq!(g["owner"], "bob", "{round}");
        assert_eq!(g["member_count"], 2, "{round}");
        let list = ok(&server, "GET", "/v1/users/alice/conversations", None).await;
        assert_eq!(list["entries"], json!([]), "{round}");
        let profile = ok(&server, "GET", "/v1/users/alice/profile", None).await;
        assert_eq!(profile["updated_at"], 0, "{round}");
        assert_eq!(profile["fields"], json!({}), "{round}");
        let blocks = ok(&server, "GET", "/v1/users/alice/blocks", None).await;
        assert_eq!(blocks["users"], json!([]), "{round}");
        // bob keeps the direct conversation and its history.
        let bobs = ok(&server, "GET", "/v1/users/bob/conversations", None).await;
        assert_eq!(bobs["entries"].as_array().unwrap().len(), 3, "{round}");
        server.restart().await;
    }

    // Idempotent: a second deletion (which walks every conversation again) finds nothing to do.
    let mut cursor = String::new();
    for call in 0.. {
        assert!(call < 20, "the second deletion makes progress");
        let again = ok(
            &server,
            "DELETE",
            &format!("/v1/users/alice?cursor={cursor}"),
            None,
        )
        .await;
        assert_eq!(again["messages_emptied"], 0);
        assert_eq!(again["conversations_left"], 0);
        if again["done"] == true {
            break;
        }
        cursor = again["cursor"].as_str().unwrap().to_owned();
    }
    // A new direct conversation between the same ids starts afresh.
    let fresh = ok(
        &server,
        "POST",
        "/v1/conversations?as=bob",
        Some(json!({"kind": "direct", "members": ["alice"]})),
    )
    .await;
    assert_ne!(fresh["id"], direct.as_str());
    assert!(
        history(&server, fresh["id"].as_str().unwrap())
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn deleting_a_user_can_keep_their_messages() {
    let server = server_with(|c| c.user_delete_keep_messages = true).await;
    let (group, _) = alice_and_friends(&server).await;
    let step = ok(&server, "DELETE", "/v1/users/alice", None).await;
    assert_eq!(step["done"], true);
    assert_eq!(step["messages_emptied"], 0);
    let texts: Vec<Value> = history(&server, &group)
        .await
        .iter()
        .map(|m| m["text"].clone())
        .collect();
    assert_eq!(
        texts,
        vec![
            json!("my address is 1 Main St"),
            json!("thanks"),
            json!("call me on 555-0100")
        ]
    );
    let list = ok(&server, "GET", "/v1/users/alice/conversations", None).await;
    assert_eq!(list["entries"], json!([]));
    // Bad input is a typed error.
    let bad = api(&server, "DELETE", "/v1/users/alice?cursor=zz", None).await;
    assert_eq!(bad.status_code(), (400, Some(2)));
}

#[tokio::test]
async fn a_users_export_is_json_lines_in_bounded_pages() {
    let server = server_with(|c| c.user_export_page_max = 2).await;
    let (group, direct) = alice_and_friends(&server).await;
    a_group_alice_left(&server, "from a group I left").await;
    let mut lines: Vec<Value> = Vec::new();
    let mut cursor = String::new();
    let mut pages = 0;
    let mut cursors = Vec::new();
    loop {
        pages += 1;
        assert!(pages < 20);
        let (status, text) =
            get_text(&server, &format!("/v1/users/alice/export?cursor={cursor}")).await;
        cursors.push(cursor.clone());
        assert_eq!(status, 200, "{text}");
        let page: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        // Up to two data lines, then where to go on.
        assert!(page.len() <= 3, "{text}");
        let last = page.last().unwrap().clone();
        lines.extend(page[..page.len() - 1].iter().cloned());
        match last["type"].as_str().unwrap() {
            "next" => cursor = last["cursor"].as_str().unwrap().to_owned(),
            "end" => break,
            other => panic!("{other}"),
        }
    }
    assert!(pages >= 3, "{pages}");
    assert_eq!(lines[0]["type"], "profile");
    assert_eq!(lines[0]["display_name"], "Alice A.");
    let convs: Vec<&Value> = lines
        .iter()
        .filter(|l| l["type"] == "conversation")
        .collect();
    assert_eq!(convs.len(), 2);
    let g = convs
        .iter()
        .find(|c| c["conversation_id"] == group.as_str())
        .unwrap();
    assert_eq!(
        (g["kind"].as_str(), g["role"].as_str()),
        (Some("group"), Some("owner"))
    );
    let d = convs
        .iter()
        .find(|c| c["conversation_id"] == direct.as_str())
        .unwrap();
    assert_eq!(d["kind"], "direct");
    let texts: Vec<&str> = lines
        .iter()
        .filter(|l| l["type"] == "message")
        .map(|l| {
            assert_eq!(l["message"]["sender"], "alice");
            l["message"]["text"].as_str().unwrap()
        })
        .collect();
    // Direct conversations first, then groups, the newest first; oldest first in each.
    assert_eq!(
        texts,
        vec![
            "a secret",
            "from a group I left",
            "my address is 1 Main St",
            "call me on 555-0100"
        ]
    );
    // A cursor that is not from an export is refused, and so is one of alice's export for
    // another user's.
    let bad = api(&server, "GET", "/v1/users/alice/export?cursor=nope", None).await;
    assert_eq!(bad.status_code(), (400, Some(2)));
    for cursor in cursors.iter().filter(|c| !c.is_empty()) {
        let path = format!("/v1/users/bob/export?cursor={cursor}");
        assert_eq!(
            api(&server, "GET", &path, None).await.status_code(),
            (400, Some(2))
        );
    }
}

#[tokio::test]
async fn a_users_export_of_large_messages_ends_each_page_at_the_byte_bound() {
    use crate::admin_import::{assert_ended_at_the_bound, import_large, large_body_server};
    let server = large_body_server(|_| {}).await;
    let group = crate::admin::group_of_alice_and_bob(&server).await;
    // 200 messages of 60 KB: 12 MB, far under user_export_page_max lines.
    let ids = import_large(&server, &group, "alice", 200).await;

    let mut seen = Vec::new();
    let mut cursor = String::new();
    let mut pages = 0;
    let mut cursors = Vec::new();
    loop {
        pages += 1;
        assert!(pages < 20);
        let (status, text) =
            get_text(&server, &format!("/v1/users/alice/export?cursor={cursor}")).await;
        cursors.push(cursor.clone());
        assert_eq!(status, 200, "{text}");
        let (trailer, data) = text
            .lines()
            .collect::<Vec<&str>>()
            .split_last()
            .map(|(t, d)| (t.to_string(), d.to_vec()))
            .unwrap();
        let trailer: Value = serde_json::from_str(&trailer).unwrap();
        let next = match trailer["type"].as_str().unwrap() {
            "next" => Some(trailer["cursor"].as_str().unwrap().to_owned()),
            "end" => None,
            other => panic!("{other}"),
        };
        assert_ended_at_the_bound(&data, next.is_none());
        for line in data {
            let l: Value = serde_json::from_str(line).unwrap();
            if l["type"] == "message" {
                seen.push(l["message"]["id"].as_str().unwrap().to_owned());
            }
        }
        match next {
            Some(n) => cursor = n,
            None => break,
        }
    }
    // Every message once, in order, over as many pages as 12 MB needs.
    assert_eq!(seen, ids);
    assert!(pages >= 3, "{pages}");
}

/// Holds, while armed, every read of a conversation's messages (at most 30 s, so a server
/// that blocks the test's own progress does not hang it for ever).
#[derive(Default)]
struct HoldMessageReads {
    /// Armed, and how many reads are being held.
    state: std::sync::Mutex<(bool, usize)>,
    changed: std::sync::Condvar,
}

impl HoldMessageReads {
    fn set_armed(&self, armed: bool) {
        self.state.lock().unwrap().0 = armed;
        self.changed.notify_all();
    }

    fn held(&self) -> usize {
        self.state.lock().unwrap().1
    }

    /// Waits (off the runtime) until a read is being held.
    async fn holding(self: &std::sync::Arc<Self>) {
        let hold = self.clone();
        within(tokio::task::spawn_blocking(move || {
            let st = hold.state.lock().unwrap();
            let _st = hold.changed.wait_while(st, |st| st.1 == 0).unwrap();
        }))
        .await
        .unwrap();
    }
}

impl crate::spied_store::Watch for HoldMessageReads {
    fn read(&self, what: &'static str) {
        if what != "messages" {
            return;
        }
        let mut st = self.state.lock().unwrap();
        if !st.0 {
            return;
        }
        st.1 += 1;
        self.changed.notify_all();
        let timeout = std::time::Duration::from_secs(30);
        let (mut st, _) = self
            .changed
            .wait_timeout_while(st, timeout, |st| st.0)
            .unwrap();
        st.1 -= 1;
        self.changed.notify_all();
    }
}

/// Both exports read the store off the async workers: with the runtime's only worker thread,
/// a WebSocket request is answered while an export's read of messages is held.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_websocket_request_is_answered_while_an_export_reads() {
    let hold = std::sync::Arc::new(HoldMessageReads::default());
    let server = crate::spied_store::spied_server(hold.clone(), |c| {
        c.admin_listen = "127.0.0.1:0".into();
        c.admin_api_keys = vec![KEY.into()];
    })
    .await;
    let group = crate::admin::group_of_alice_and_bob(&server).await;
    send_as_alice(&server, &group, "hello").await;
    let mut bob = Raw::login(&server, "bob").await;
    for path in [
        format!("/v1/conversations/{group}/export"),
        "/v1/users/alice/export".to_owned(),
    ] {
        hold.set_armed(true);
        let addr = admin_addr(&server);
        let export =
            tokio::spawn(
                async move { crate::admin::http(addr, "GET", &path, Some(KEY), None).await },
            );
        hold.holding().await;
        let pong = bob.request(Req::Ping(pb::Ping {})).await;
        assert!(matches!(pong, Rep::Pong(_)), "{pong:?}");
        assert_eq!(
            hold.held(),
            1,
            "the export's read was let go before the answer"
        );
        hold.set_armed(false);
        let r = within(export).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text);
        assert!(r.text.contains("hello"), "{}", r.text);
    }
}

const HOUR: i64 = 3_600_000;

/// Sends `text` into `conv` as alice; its seq.
async fn send_as_alice(server: &TestServer, conv: &str, text: &str) -> u64 {
    ok(
        server,
        "POST",
        &format!("/v1/conversations/{conv}/messages?as=alice"),
        Some(json!({ "text": text })),
    )
    .await["seq"]
        .as_u64()
        .unwrap()
}

/// Messages of a page of native history.
fn seqs_of(r: Rep) -> (Vec<u64>, bool) {
    match r {
        Rep::MessagePage(p) => (p.messages.iter().map(|m| m.seq).collect(), p.has_more),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn history_older_than_the_retention_is_swept_away_and_seqs_go_on() {
    let mut server = server_with(|c| {
        c.history_retention_days = 1;
        c.history_retention_batch = 2;
    })
    .await;
    let sweeps = |server: &TestServer, n: u64| {
        let stats = server.running().app.stats.clone();
        async move { within(stats.history_sweeps.wait_for(n)).await }
    };
    sweeps(&server, 1).await;
    let group = crate::admin::group_of_alice_and_bob(&server).await;
    let t0 = server.clock_now();
    let with_id = json!({"text": "old-1", "client_message_id": "c-1"});
    let path = format!("/v1/conversations/{group}/messages?as=alice");
    assert_eq!(
        ok(&server, "POST", &path, Some(with_id.clone())).await["seq"],
        1
    );
    for text in ["old-2", "old-3"] {
        send_as_alice(&server, &group, text).await;
    }
    server.clock.advance(12 * HOUR);
    sweeps(&server, 2).await;
    assert_eq!(send_as_alice(&server, &group, "mid").await, 4);
    assert_eq!(
        history(&server, &group).await.len(),
        4,
        "nothing was due yet"
    );

    // A day after the first three: they go (two commits of two and one), "mid" stays.
    server.clock.advance(13 * HOUR);
    sweeps(&server, 3).await;
    let left = history(&server, &group).await;
    assert_eq!(left.len(), 1);
    assert_eq!(
        (left[0]["seq"].as_u64(), left[0]["text"].as_str()),
        (Some(4), Some("mid"))
    );
    let m = metrics_of(&server).await;
    assert_eq!(m["tidings_history_messages_deleted_total"], 3.0);
    // A retry of a swept send gets its first seq, not a new message.
    let retry = ok(&server, "POST", &path, Some(with_id)).await;
    assert_eq!(
        (retry["seq"].as_u64(), retry["duplicate"].as_bool()),
        (Some(1), Some(true))
    );
    // Readers start after the deleted range, by seq and by time, and are never told of it.
    let mut bob = Raw::login(&server, "bob").await;
    let fetch = |r: pb::FetchHistory| {
        Req::FetchHistory(pb::FetchHistory {
            conversation_id: group.clone(),
            limit: 10,
            ..r
        })
    };
    let oldest_first = pb::HistoryDirection::OldestFirst as i32;
    let (seqs, more) = seqs_of(
        bob.request(fetch(pb::FetchHistory {
            direction: oldest_first,
            start_seq: 1,
            start_inclusive: true,
            ..Default::default()
        }))
        .await,
    );
    assert_eq!((seqs, more), (vec![4], false));
    let (seqs, _) = seqs_of(
        bob.request(fetch(pb::FetchHistory {
            direction: oldest_first,
            start_time: t0,
            start_inclusive: true,
            ..Default::default()
        }))
        .await,
    );
    assert_eq!(seqs, vec![4]);
    let (seqs, more) = seqs_of(
        bob.request(fetch(pb::FetchHistory {
            before_seq: 4,
            ..Default::default()
        }))
        .await,
    );
    assert_eq!((seqs, more), (vec![], false));
    let unread = ok(&server, "GET", "/v1/users/bob/unread", None).await;
    assert_eq!(unread["entries"][0]["unread"], 1, "{unread}");

    // Everything old: the conversation keeps its last seq, and the next message follows it,
    // after a restart too.
    server.clock.advance(12 * HOUR);
    sweeps(&server, 4).await;
    assert!(history(&server, &group).await.is_empty());
    let conv = ok(&server, "GET", &format!("/v1/conversations/{group}"), None).await;
    assert_eq!(conv["last_seq"], 4);
    let unread = ok(&server, "GET", "/v1/users/bob/unread", None).await;
    assert_eq!(unread["entries"][0]["unread"], 0, "{unread}");
    server.restart().await;
    sweeps(&server, 1).await;
    assert_eq!(send_as_alice(&server, &group, "after").await, 5);
    let left = history(&server, &group).await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["seq"], 5);
}

#[tokio::test]
async fn deleting_a_user_takes_them_out_of_temporary_conversations() {
    let server = server_with(|_| {}).await;
    let temporary = |by: &'static str, member: &'static str| {
        let server = &server;
        async move {
            ok(
                server,
                "POST",
                &format!("/v1/conversations?as={by}"),
                Some(json!({"kind": "temporary", "members": [member], "ttl_secs": 3600})),
            )
            .await["id"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    // A chat with an agent, who stays; a chat alice is alone in by now, which ends.
    let with_agent = temporary("agent-7", "alice").await;
    let alone = temporary("alice", "bob").await;
    ok(
        &server,
        "POST",
        &format!("/v1/conversations/{alone}/members/remove"),
        Some(json!({"members": ["bob"]})),
    )
    .await;
    let step = ok(&server, "DELETE", "/v1/users/alice", None).await;
    assert_eq!(
        (step["done"].as_bool(), step["conversations_left"].as_u64()),
        (Some(true), Some(2))
    );
    let kept = ok(
        &server,
        "GET",
        &format!("/v1/conversations/{with_agent}"),
        None,
    )
    .await;
    assert_eq!(kept["member_count"], 1);
    let members = ok(
        &server,
        "GET",
        &format!("/v1/conversations/{with_agent}/members"),
        None,
    )
    .await;
    assert_eq!(members["members"], json!(["agent-7"]));
    let ended = api(&server, "GET", &format!("/v1/conversations/{alone}"), None).await;
    assert_eq!(ended.status, 410);
}

/// With the default `user_delete_step_max` (10,000 units, a leave 100), one call leaves at
/// most 100 conversations, however many the user is in: a user in 150 groups takes two.
#[tokio::test]
async fn one_deletion_call_leaves_at_most_a_hundred_conversations() {
    let server = server_with(|_| {}).await;
    let alice = server.client("alice").await;
    for n in 0..150 {
        within(alice.create_group(&format!("g{n}"), &["bob"]))
            .await
            .unwrap();
    }
    drop(alice);
    let step = ok(&server, "DELETE", "/v1/users/alice", None).await;
    assert_eq!(step["conversations_left"], 100, "{step}");
    assert_eq!(step["done"], false, "{step}");
    let cursor = step["cursor"].as_str().unwrap().to_owned();
    let step = ok(
        &server,
        "DELETE",
        &format!("/v1/users/alice?cursor={cursor}"),
        None,
    )
    .await;
    assert_eq!(step["conversations_left"], 50, "{step}");
}

/// `user`'s deletion, one call from `cursor`: the step answered.
async fn delete_step(server: &TestServer, user: &str, cursor: &str) -> Value {
    ok(
        server,
        "DELETE",
        &format!("/v1/users/{user}?cursor={cursor}"),
        None,
    )
    .await
}

/// `user`'s deletion from `cursor` until its cursor names the message walk (`m.`).
async fn delete_until_messages(server: &TestServer, user: &str, mut cursor: String) -> String {
    for _ in 0..50 {
        let step = delete_step(server, user, &cursor).await;
        assert_eq!(step["done"], false, "{step}");
        cursor = step["cursor"].as_str().unwrap().to_owned();
        if cursor.starts_with("m.") {
            return cursor;
        }
    }
    panic!("no cursor of the message walk: {cursor}");
}

async fn members(server: &TestServer, conv: &str) -> Vec<Value> {
    let page = ok(
        server,
        "GET",
        &format!("/v1/conversations/{conv}/members"),
        None,
    )
    .await;
    page["members"].as_array().unwrap().clone()
}

/// A deletion cursor is bound to its user: a made-up one, or one of another user's deletion,
/// never answers `done` while the user is still a member somewhere; and a deletion whose user
/// was taken into a conversation meanwhile is not done until they are out of it again.
#[tokio::test]
async fn a_deletion_cursor_belongs_to_its_user_and_done_means_no_memberships() {
    let server = server_with(|c| c.user_delete_step_max = 1).await;
    let mut groups = Vec::new();
    for (user, n) in [("victim", 3), ("other", 1)] {
        for i in 0..n {
            let g = ok(
                &server,
                "POST",
                &format!("/v1/conversations?as={user}"),
                Some(json!({"kind": "group", "members": ["w1"]})),
            )
            .await;
            let id = g["id"].as_str().unwrap().to_owned();
            ok(
                &server,
                "POST",
                &format!("/v1/conversations/{id}/messages?as={user}"),
                Some(json!({"text": format!("secret {i}")})),
            )
            .await;
            if user == "victim" {
                groups.push(id);
            }
        }
    }
    let still_there = |ms: &[Value]| ms.iter().any(|m| m == "victim" || m["user_id"] == "victim");

    // Made up, in the shape of a cursor of the message walk: from the start, not done.
    let step = delete_step(&server, "victim", "m.2.ffffffffffffffff.ffffffffffffffff").await;
    assert_eq!(step["done"], false, "{step}");
    assert!(still_there(&members(&server, &groups[2]).await));
    // Made up with a tag, or another user's: refused.
    let forged = "m.2.ffffffffffffffff.ffffffffffffffff.0123456789abcdef";
    let r = api(
        &server,
        "DELETE",
        &format!("/v1/users/victim?cursor={forged}"),
        None,
    )
    .await;
    assert_eq!(r.status_code(), (400, Some(2)), "{}", r.body);
    let theirs = delete_until_messages(&server, "other", String::new()).await;
    let r = api(
        &server,
        "DELETE",
        &format!("/v1/users/victim?cursor={theirs}"),
        None,
    )
    .await;
    assert_eq!(r.status_code(), (400, Some(2)), "{}", r.body);
    assert!(still_there(&members(&server, &groups[2]).await));

    // Taken into a group while its messages are walked: not done until out of it again.
    let cursor = delete_until_messages(&server, "victim", String::new()).await;
    for g in &groups {
        assert!(!still_there(&members(&server, g).await), "{g}");
    }
    let late = ok(
        &server,
        "POST",
        "/v1/conversations?as=w1",
        Some(json!({"kind": "group", "members": ["victim"]})),
    )
    .await;
    let late = late["id"].as_str().unwrap().to_owned();
    let mut cursor = cursor;
    let mut done = false;
    for _ in 0..100 {
        let step = delete_step(&server, "victim", &cursor).await;
        if step["done"] == true {
            done = true;
            break;
        }
        cursor = step["cursor"].as_str().unwrap().to_owned();
    }
    assert!(done, "the deletion finishes");
    assert!(!still_there(&members(&server, &late).await));
    for g in &groups {
        let texts: Vec<Value> = history(&server, g)
            .await
            .iter()
            .map(|m| m["text"].clone())
            .collect();
        assert!(
            !texts
                .iter()
                .any(|t| t.as_str().is_some_and(|t| t.starts_with("secret"))),
            "{texts:?}"
        );
    }
}
