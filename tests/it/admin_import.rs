//! Importing history through the admin API (`POST /v1/conversations/{id}/messages/import`,
//! `POST /v1/imports/conversations`) and exporting it as JSON lines
//! (`GET /v1/conversations/{id}/export`): a real server, a real HTTP client, native clients
//! that read, recall and edit imported messages by the ids they came with, and a restart.

use crate::admin::{admin_server, api, ok};
use crate::harness::*;
use serde_json::{Value, json};
use tidings::protocol::pb;

const T0: i64 = 1_600_000_000_000;

fn msg(id: &str, sender: &str, at: i64, text: &str) -> Value {
    json!({"message_id": id, "sender": sender, "server_time": at, "text": text})
}

async fn import(server: &TestServer, conv: &str, messages: Vec<Value>) -> Value {
    ok(
        server,
        "POST",
        &format!("/v1/conversations/{conv}/messages/import"),
        Some(json!({ "messages": messages })),
    )
    .await
}

/// The backend's unfiltered history, oldest first: (id, seq, sender, time, text).
async fn history(server: &TestServer, conv: &str) -> Vec<(String, u64, String, i64, String)> {
    let page = ok(
        server,
        "GET",
        &format!("/v1/conversations/{conv}/messages?oldest_first=true&limit=100"),
        None,
    )
    .await;
    page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["id"].as_str().unwrap().to_owned(),
                m["seq"].as_u64().unwrap(),
                m["sender"].as_str().unwrap().to_owned(),
                m["server_time"].as_i64().unwrap(),
                m["text"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn failures(r: &Value) -> Vec<(String, i64)> {
    r["failed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["message_id"].as_str().unwrap().to_owned(),
                f["code"].as_i64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn imported_messages_keep_ids_senders_and_times_and_are_named_by_those_ids() {
    let mut server = admin_server().await;
    let c = ok(
        &server,
        "POST",
        "/v1/conversations?as=alice",
        Some(json!({"kind": "direct", "members": ["bob"]})),
    )
    .await;
    let conv = c["id"].as_str().unwrap().to_owned();

    // Out of time order in the request, a repeat, and a bad sender: stored in time order
    // (equal times in the order given), the repeat once, the bad one refused on its own.
    let r = import(
        &server,
        &conv,
        vec![
            msg("em-2", "bob", T0 + 2_000, "second"),
            msg("em-1", "alice", T0 + 1_000, "first"),
            msg("em-3", "alice", T0 + 2_000, "third"),
            msg("em-1", "alice", T0 + 1_000, "first again"),
            msg("em-x", "", T0 + 2_500, "bad sender"),
        ],
    )
    .await;
    assert_eq!(
        (r["imported"].as_u64(), r["duplicates"].as_u64()),
        (Some(3), Some(1)),
        "{r}"
    );
    assert_eq!(failures(&r), [("em-x".to_owned(), 2)]);
    assert_eq!(r["last_seq"], 3);
    let expected = vec![
        (
            "em-1".to_owned(),
            1,
            "alice".to_owned(),
            T0 + 1_000,
            "first".to_owned(),
        ),
        (
            "em-2".to_owned(),
            2,
            "bob".to_owned(),
            T0 + 2_000,
            "second".to_owned(),
        ),
        (
            "em-3".to_owned(),
            3,
            "alice".to_owned(),
            T0 + 2_000,
            "third".to_owned(),
        ),
    ];
    assert_eq!(history(&server, &conv).await, expected);

    // The same request again changes nothing.
    let again = import(
        &server,
        &conv,
        vec![
            msg("em-2", "bob", T0 + 2_000, "second"),
            msg("em-1", "alice", T0 + 1_000, "first"),
            msg("em-3", "alice", T0 + 2_000, "third"),
        ],
    )
    .await;
    assert_eq!(
        (again["imported"].as_u64(), again["duplicates"].as_u64()),
        (Some(0), Some(3))
    );
    assert_eq!(history(&server, &conv).await, expected);

    // The import continues in a later call; a message older than the newest is refused
    // (67), so seqs never go back in time. One sent a moment ago can be edited and recalled
    // by its sender within the windows, by the id it came with.
    let recent = server.clock_now() - 1_000;
    let r = import(
        &server,
        &conv,
        vec![
            msg("em-0", "bob", T0, "too old"),
            msg("em-4", "alice", recent, "fresh"),
        ],
    )
    .await;
    assert_eq!(r["imported"], 1, "{r}");
    assert_eq!(failures(&r), [("em-0".to_owned(), 67)]);
    let r = import(&server, &conv, vec![msg("em-00", "bob", T0, "old")]).await;
    assert_eq!(
        (r["imported"].as_u64(), r["last_seq"].as_u64()),
        (Some(0), Some(4))
    );
    assert_eq!(failures(&r), [("em-00".to_owned(), 67)]);

    // Imported history counts as read (mark_read defaults to true).
    let unread = ok(&server, "GET", "/v1/users/bob/unread", None).await;
    let entry = unread["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["conversation_id"] == conv.as_str())
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(entry["unread"], 0, "bob's unread: {unread}");

    // Native clients read by those ids: a page from em-2 on, oldest first.
    let (alice, _) = server.login("alice").await;
    let (bob, _) = server.login("bob").await;
    let page = within(bob.fetch_history(pb::FetchHistory {
        conversation_id: conv.clone(),
        start_message_id: "em-2".into(),
        start_inclusive: true,
        direction: pb::HistoryDirection::OldestFirst as i32,
        ..Default::default()
    }))
    .await
    .unwrap();
    let ids: Vec<&str> = page.messages.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["em-2", "em-3", "em-4"]);
    let edited = within(alice.edit_text(&conv, "em-4", "fresh, edited"))
        .await
        .unwrap();
    assert_eq!((edited.id.as_str(), edited.seq), ("em-4", 4));
    // bob may not recall alice's message; alice may, by its imported id.
    assert!(within(bob.recall(&conv, "em-4")).await.is_err());
    let recalled = within(alice.recall(&conv, "em-4")).await.unwrap();
    assert!(recalled.recalled && recalled.id == "em-4");
    // Old ones are past the windows for users; the backend edits and recalls them by id.
    let r = api(
        &server,
        "PATCH",
        &format!("/v1/conversations/{conv}/messages/em-2?as=bob"),
        Some(json!({"text": "late edit"})),
    )
    .await;
    assert_eq!(r.status_code(), (409, Some(14)));
    let m = ok(
        &server,
        "PATCH",
        &format!("/v1/conversations/{conv}/messages/em-2"),
        Some(json!({"text": "second, edited"})),
    )
    .await;
    assert_eq!(
        (m["id"].as_str(), m["seq"].as_u64()),
        (Some("em-2"), Some(2))
    );
    let m = ok(
        &server,
        "POST",
        &format!("/v1/conversations/{conv}/messages/em-1/recall"),
        None,
    )
    .await;
    assert_eq!(m["recalled"], true);

    // Once a message is sent here, the import is over: 409, code 66.
    let ack = within(bob.send_text(&conv, "hello from tidings"))
        .await
        .unwrap();
    assert_eq!(ack.seq, 5);
    assert_ne!(ack.message_id, "em-5");
    let r = api(
        &server,
        "POST",
        &format!("/v1/conversations/{conv}/messages/import"),
        Some(json!({"messages": [msg("em-5", "bob", recent + 1, "late")]})),
    )
    .await;
    assert_eq!(r.status_code(), (409, Some(66)), "{}", r.body);
    drop((alice, bob));

    // After a restart the ids still name the messages.
    server.restart().await;
    let h = history(&server, &conv).await;
    let ids: Vec<&str> = h.iter().map(|m| m.0.as_str()).collect();
    assert_eq!(ids[..4], ["em-1", "em-2", "em-3", "em-4"]);
    assert_eq!(h[4].1, 5);
    let m = ok(
        &server,
        "POST",
        &format!("/v1/conversations/{conv}/messages/em-3/recall"),
        None,
    )
    .await;
    assert_eq!(
        (m["id"].as_str(), m["recalled"].as_bool()),
        (Some("em-3"), Some(true))
    );
    let r = api(
        &server,
        "POST",
        &format!("/v1/conversations/{conv}/messages/import"),
        Some(json!({"messages": [msg("em-6", "bob", recent + 2, "later")]})),
    )
    .await;
    assert_eq!(r.status_code(), (409, Some(66)));
}

#[tokio::test]
async fn an_imported_group_is_created_once_under_its_old_id() {
    let server = admin_server().await;
    let body = json!({"conversation_id": "169432768208897", "members": ["carol", "alice", "bob"],
                      "owner": "alice", "name": "hikers", "created_at": T0});
    let r = api(
        &server,
        "POST",
        "/v1/imports/conversations",
        Some(body.clone()),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let c = &r.body["conversation"];
    assert_eq!(
        (c["id"].as_str(), c["kind"].as_str(), c["owner"].as_str()),
        (Some("169432768208897"), Some("group"), Some("alice"))
    );
    assert_eq!(
        (c["created_at"].as_i64(), c["member_count"].as_u64()),
        (Some(T0), Some(3))
    );
    let r = api(&server, "POST", "/v1/imports/conversations", Some(body)).await;
    assert_eq!((r.status, r.body["created"].as_bool()), (200, Some(false)));

    // Without mark_read the imported messages are unread.
    let r = ok(
        &server,
        "POST",
        "/v1/conversations/169432768208897/messages/import",
        Some(json!({"messages": [msg("g-1", "carol", T0 + 10, "hi all")], "mark_read": false})),
    )
    .await;
    assert_eq!(
        (r["imported"].as_u64(), r["reads"].as_u64()),
        (Some(1), Some(0))
    );
    let unread = ok(&server, "GET", "/v1/users/bob/unread", None).await;
    assert_eq!(unread["entries"][0]["unread"], 1, "{unread}");
    let (carol, _) = server.login("carol").await;
    let page = within(carol.history("169432768208897", 0, 10))
        .await
        .unwrap();
    assert_eq!(page.messages[0].id, "g-1");

    // An id shaped like a tidings id, a list key or a temporary id, and no members: 400.
    for bad in [
        json!({"conversation_id": "0000000000000001", "members": ["alice"]}),
        json!({"conversation_id": "x", "members": []}),
        json!({"conversation_id": "has space", "members": ["alice"]}),
        // Shapes the ids and list keys give a meaning to.
        json!({"conversation_id": "p2p|zed", "members": ["alice"]}),
        json!({"conversation_id": "a|b", "members": ["alice"]}),
        json!({"conversation_id": "_tmp:abc", "members": ["alice"]}),
    ] {
        let r = api(&server, "POST", "/v1/imports/conversations", Some(bad)).await;
        assert_eq!(r.status_code(), (400, Some(2)), "{}", r.body);
    }
}

#[tokio::test]
async fn imports_are_bounded_and_refused_where_no_history_is_kept() {
    let server = admin_server().await;
    let room = ok(
        &server,
        "POST",
        "/v1/conversations?as=alice",
        Some(json!({"kind": "chat_room", "name": "lobby"})),
    )
    .await;
    let group = ok(
        &server,
        "POST",
        "/v1/conversations?as=alice",
        Some(json!({"kind": "group", "members": ["bob"]})),
    )
    .await;
    let path = |c: &Value| {
        format!(
            "/v1/conversations/{}/messages/import",
            c["id"].as_str().unwrap()
        )
    };
    let one = json!({"messages": [msg("x-1", "alice", T0, "hi")]});
    let r = api(&server, "POST", &path(&room), Some(one.clone())).await;
    assert_eq!(r.status_code(), (409, Some(8)), "{}", r.body);
    let r = api(
        &server,
        "POST",
        "/v1/conversations/0000000000000999/messages/import",
        Some(one.clone()),
    )
    .await;
    assert_eq!(r.status_code(), (404, Some(5)));
    // Over import_max_messages (1000 by default): 422, nothing stored.
    let many: Vec<Value> = (0..1001)
        .map(|i| msg(&format!("x-{i}"), "alice", T0 + i, "m"))
        .collect();
    let r = api(
        &server,
        "POST",
        &path(&group),
        Some(json!({"messages": many})),
    )
    .await;
    assert_eq!(r.status_code(), (422, Some(3)));
    for bad in [
        json!({"messages": [{"message_id": "x-1", "sender": "alice"}]}),
        json!({"messages": [], "extra": 1}),
    ] {
        let r = api(&server, "POST", &path(&group), Some(bad)).await;
        assert_eq!(r.status_code(), (400, Some(2)));
    }
    // Ids shaped like tidings ids, times in the future or before the epoch, bad base64: each
    // refused on its own.
    let future = server.clock_now() + 60_000;
    let r = ok(
        &server,
        "POST",
        &path(&group),
        Some(json!({"messages": [
            msg("00000000000000010000000000000001", "alice", T0, "id"),
            msg("x-2", "alice", future, "future"),
            msg("x-3", "alice", -5, "old"),
            {"message_id": "x-4", "sender": "alice", "server_time": T0, "content": "%%%"},
        ]})),
    )
    .await;
    assert_eq!(r["imported"], 0);
    let codes: Vec<i64> = failures(&r).into_iter().map(|f| f.1).collect();
    assert_eq!(codes, [2, 2, 2, 2]);
    assert_eq!(r["last_seq"], 0);
}

#[tokio::test]
async fn an_export_is_json_lines_sliced_by_time_and_paged() {
    let server = admin_server().await;
    let conv = crate::admin::group_of_alice_and_bob(&server).await;
    // 250 messages a second apart, one recalled.
    let messages: Vec<Value> = (0..250)
        .map(|i| {
            let mut m = msg(
                &format!("m-{i}"),
                ["alice", "bob"][i % 2],
                T0 + i as i64 * 1_000,
                &format!("n{i}"),
            );
            if i == 7 {
                m["recalled"] = json!(true);
            }
            m
        })
        .collect();
    assert_eq!(import(&server, &conv, messages).await["imported"], 250);

    let export = |query: String| {
        let server = &server;
        let conv = conv.clone();
        async move {
            let r = api(
                server,
                "GET",
                &format!("/v1/conversations/{conv}/export?{query}"),
                None,
            )
            .await;
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.raw));
            assert_eq!(r.headers["content-type"], "application/x-ndjson");
            let lines: Vec<Value> = std::str::from_utf8(&r.raw)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            let next = r
                .headers
                .get("x-next-cursor")
                .map(|v| v.to_str().unwrap().to_owned());
            (lines, next)
        }
    };
    // Everything, in one page (default limit 1000): oldest first, the recall kept as one.
    let (all, next) = export(String::new()).await;
    assert_eq!((all.len(), next), (250, None));
    assert_eq!(all[0]["id"], "m-0");
    assert_eq!(all[249]["seq"], 250);
    assert_eq!(
        (all[7]["recalled"].as_bool(), all[7]["text"].as_str()),
        (Some(true), Some(""))
    );
    assert_eq!(all[8]["text"], "n8");

    // [from, to): messages 10..=209, in pages of 64 (more than one history page each).
    let (from, to) = (T0 + 10_000, T0 + 210_000);
    let mut seen = Vec::new();
    let mut cursor = String::new();
    let mut pages = 0;
    loop {
        let (lines, next) = export(format!("from={from}&to={to}&limit=64&cursor={cursor}")).await;
        pages += 1;
        assert!(lines.len() <= 64);
        seen.extend(lines.iter().map(|l| l["id"].as_str().unwrap().to_owned()));
        match next {
            Some(n) => cursor = n,
            None => break,
        }
    }
    let want: Vec<String> = (10..210).map(|i| format!("m-{i}")).collect();
    assert_eq!(seen, want);
    assert_eq!(pages, 4);

    // Bounds: limit over export_max_messages, an empty slice, from after to.
    let r = api(
        &server,
        "GET",
        &format!("/v1/conversations/{conv}/export?limit=10001"),
        None,
    )
    .await;
    assert_eq!(r.status_code(), (422, Some(3)));
    let r = api(
        &server,
        "GET",
        &format!("/v1/conversations/{conv}/export?from=5&to=5"),
        None,
    )
    .await;
    assert_eq!(r.status_code(), (400, Some(2)));
    let (none, next) = export(format!("from={}", T0 + 10_000_000)).await;
    assert_eq!((none.len(), next), (0, None));
    // As a user: a non-member is refused.
    let r = api(
        &server,
        "GET",
        &format!("/v1/conversations/{conv}/export?as=mallory"),
        None,
    )
    .await;
    assert_eq!(r.status_code(), (403, Some(6)));
}

#[tokio::test]
async fn read_events_name_imported_messages_by_their_imported_ids_after_a_restart_too() {
    use crate::webhooks::{Hit, Receiver, webhook_server};
    let mut rx = Receiver::start(200).await;
    let mut server = webhook_server(&rx, &["message.read"], |_| {}).await;
    let c = ok(
        &server,
        "POST",
        "/v1/conversations?as=alice",
        Some(json!({"kind": "direct", "members": ["bob"]})),
    )
    .await;
    let conv = c["id"].as_str().unwrap().to_owned();
    let r = ok(
        &server,
        "POST",
        &format!("/v1/conversations/{conv}/messages/import"),
        Some(json!({"mark_read": false, "messages": [
            msg("r-1", "alice", T0, "one"),
            msg("r-2", "alice", T0 + 1, "two"),
            msg("r-3", "alice", T0 + 2, "three"),
        ]})),
    )
    .await;
    assert_eq!(r["imported"], 3);
    let read_ids = async |rx: &mut Receiver| loop {
        let hit = rx.next().await;
        if hit.status >= 300 {
            continue;
        }
        if let Some(e) = Hit::events(&hit)
            .into_iter()
            .find(|e| e["type"] == "message.read")
        {
            break e["data"]["message_id"].as_str().unwrap().to_owned();
        }
    };
    let (bob, _) = server.login("bob").await;
    within(bob.mark_read(&conv, 1)).await.unwrap();
    assert_eq!(read_ids(&mut rx).await, "r-1");
    // bob hides r-2 for himself, by its imported id.
    within(bob.delete_messages(&conv, &["r-2".to_owned()]))
        .await
        .unwrap();
    let page = within(bob.history(&conv, 0, 10)).await.unwrap();
    let ids: Vec<&str> = page.messages.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["r-1", "r-3"]);
    let ack = within(bob.send_text(&conv, "new here")).await.unwrap();
    assert_eq!(ack.seq, 4);
    drop(bob);

    // After a restart the run of imported seqs is found again (alice has read nothing; bob's
    // send read everything for him).
    server.restart().await;
    let (alice, _) = server.login("alice").await;
    within(alice.mark_read(&conv, 3)).await.unwrap();
    assert_eq!(read_ids(&mut rx).await, "r-3");
    within(alice.mark_read(&conv, 4)).await.unwrap();
    assert_eq!(read_ids(&mut rx).await, ack.message_id);
}

/// Bytes after which a page of either export ends: the conversation export's 4 MiB, and the
/// default of `user_export_page_max_bytes`.
pub const EXPORT_PAGE_BYTES: usize = 4 << 20;

/// A server whose admin API takes import bodies of large messages.
pub async fn large_body_server(tweak: impl FnOnce(&mut tidings::config::Config)) -> TestServer {
    TestServer::start_with(|c| {
        c.admin_listen = "127.0.0.1:0".into();
        c.admin_api_keys = vec![crate::admin::KEY.into()];
        c.admin_max_body_bytes = 8 << 20;
        tweak(c);
    })
    .await
}

/// Imports `n` messages of 60,000 bytes each (under `max_message_bytes`, 64 KiB) from
/// `sender` into `conv`, 50 a call; their ids, oldest first.
pub async fn import_large(server: &TestServer, conv: &str, sender: &str, n: usize) -> Vec<String> {
    let ids: Vec<String> = (0..n).map(|i| format!("big-{i:04}")).collect();
    for (batch, chunk) in ids.chunks(50).enumerate() {
        let messages: Vec<Value> = chunk
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let text = format!("{id}:{}", "x".repeat(60_000 - id.len() - 1));
                msg(id, sender, T0 + (batch * 50 + i) as i64 * 1_000, &text)
            })
            .collect();
        assert_eq!(
            import(server, conv, messages).await["imported"],
            chunk.len()
        );
    }
    ids
}

/// Checks a page of JSON lines against the byte bound: it ended at the first line that
/// reached the bound (everything before its last data line is under it), and, unless it is
/// the last page, it did reach it. `data` holds the page's data lines, without a trailer.
pub fn assert_ended_at_the_bound(data: &[&str], last_page: bool) {
    let bytes = |lines: &[&str]| lines.iter().map(|l| l.len() + 1).sum::<usize>();
    let Some((_, before)) = data.split_last() else {
        assert!(last_page, "a page with more after it holds a line");
        return;
    };
    assert!(
        bytes(before) < EXPORT_PAGE_BYTES,
        "{} bytes before the page's last line",
        bytes(before)
    );
    assert!(
        last_page || bytes(data) >= EXPORT_PAGE_BYTES,
        "a page of {} bytes ended before the bound",
        bytes(data)
    );
}

#[tokio::test]
async fn an_export_of_large_messages_ends_each_page_at_4_mib() {
    let server = large_body_server(|_| {}).await;
    let conv = crate::admin::group_of_alice_and_bob(&server).await;
    // 200 messages of 60 KB: 12 MB, far more than a page of 4 MiB, in two history pages.
    let ids = import_large(&server, &conv, "alice", 200).await;

    let mut seen = Vec::new();
    let mut cursor = String::new();
    let mut pages = 0;
    loop {
        pages += 1;
        assert!(pages < 20);
        let r = api(
            &server,
            "GET",
            &format!("/v1/conversations/{conv}/export?cursor={cursor}"),
            None,
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let next = r
            .headers
            .get("x-next-cursor")
            .map(|v| v.to_str().unwrap().to_owned());
        let data: Vec<&str> = r.text.lines().collect();
        assert_ended_at_the_bound(&data, next.is_none());
        for line in data {
            let m: Value = serde_json::from_str(line).unwrap();
            seen.push(m["id"].as_str().unwrap().to_owned());
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

/// A group imported without `created_at` was created at the time of the import, and is in its
/// members' lists and unread summaries before any message is; so is one whose time is 0
/// (imported so by earlier versions).
#[tokio::test]
async fn an_imported_group_without_a_time_is_listed_at_once() {
    let server = admin_server().await;
    let before = server.clock_now();
    let r = ok(
        &server,
        "POST",
        "/v1/imports/conversations",
        Some(json!({"conversation_id": "notime", "members": ["newbie", "o1"]})),
    )
    .await;
    assert_eq!(
        r["conversation"]["created_at"].as_i64(),
        Some(before),
        "{r}"
    );
    // The clock at the epoch: an import that knew no time, as earlier versions stored it.
    server.clock.set(0);
    let r = ok(
        &server,
        "POST",
        "/v1/imports/conversations",
        Some(json!({"conversation_id": "epoch", "members": ["newbie", "o2"]})),
    )
    .await;
    server.clock.set(before);
    assert_eq!(r["conversation"]["created_at"].as_i64(), Some(0), "{r}");

    let ids = |v: &Value| -> Vec<String> {
        let mut ids: Vec<String> = v["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["conversation_id"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids
    };
    let list = ok(&server, "GET", "/v1/users/newbie/conversations", None).await;
    assert_eq!(ids(&list), ["epoch", "notime"], "{list}");
    let unread = ok(&server, "GET", "/v1/users/newbie/unread", None).await;
    assert_eq!(ids(&unread), ["epoch", "notime"], "{unread}");
    let (newbie, _) = server.login("newbie").await;
    let page = within(newbie.list_all(pb::ListConversations::default()))
        .await
        .unwrap();
    let mut listed: Vec<String> = page.iter().map(|e| e.conversation_id.clone()).collect();
    listed.sort();
    assert_eq!(listed, ["epoch", "notime"]);
}
