//! Admin pages of large items: bounded by bytes (`admin_page_max_bytes`), their cursors going
//! on where the bytes cut them; dead-letter pages and replays bounded the same way.

use crate::admin::{admin_server, group_of_alice_and_bob, ok};
use crate::harness::within;
use crate::webhooks::{Receiver, webhook_server};
use serde_json::{Value, json};
use std::collections::HashSet;

/// Bytes of text in each large message: about 70 of them make the default 4 MiB bound.
const BIG: usize = 60_000;
const DEFAULT_PAGE_BYTES: usize = 4 << 20;

fn big_text(i: usize) -> String {
    let head = format!("m{i:03}-");
    head.clone() + &"x".repeat(BIG - head.len())
}

/// Pages through `path` (which has a query already) by its cursors until `has_more` is false,
/// checking that every page holds something and at most the default bound of text (`text` of
/// each item in `key`). Returns the `id`s of the items in page order, and how many pages.
async fn walk(
    server: &crate::harness::TestServer,
    path: &str,
    key: &str,
    text: fn(&Value) -> &Value,
    id: fn(&Value) -> &Value,
) -> (Vec<String>, usize) {
    let (mut seen, mut cursor, mut pages) = (Vec::new(), String::new(), 0);
    loop {
        let mut at = path.to_owned();
        if !cursor.is_empty() {
            at += &format!("&cursor={cursor}");
        }
        let page = ok(server, "GET", &at, None).await;
        let items = page[key].as_array().unwrap();
        assert!(!items.is_empty());
        let bytes: usize = items
            .iter()
            .map(|i| text(i).as_str().unwrap_or("").len())
            .sum();
        assert!(
            bytes <= DEFAULT_PAGE_BYTES,
            "a page of {} items, {bytes} bytes of text",
            items.len()
        );
        pages += 1;
        seen.extend(items.iter().map(|i| id(i).as_str().unwrap().to_owned()));
        if page["has_more"] != json!(true) {
            return (seen, pages);
        }
        cursor = page["next_cursor"].as_str().unwrap().to_owned();
    }
}

#[tokio::test]
async fn a_history_page_of_large_messages_stops_at_the_byte_bound_and_its_cursor_goes_on() {
    let server = admin_server().await;
    let g = group_of_alice_and_bob(&server).await;
    let n = 90;
    let mut sent = Vec::new();
    for i in 0..n {
        let ack = ok(
            &server,
            "POST",
            &format!("/v1/conversations/{g}/messages"),
            Some(json!({ "text": big_text(i) })),
        )
        .await;
        sent.push(ack["message_id"].as_str().unwrap().to_owned());
    }
    for oldest_first in [false, true] {
        let path = format!("/v1/conversations/{g}/messages?limit=100&oldest_first={oldest_first}");
        let (seen, pages) = walk(&server, &path, "messages", |m| &m["text"], |m| &m["id"]).await;
        assert!(pages >= 2, "{pages} pages");
        let unique: HashSet<&String> = seen.iter().collect();
        assert_eq!(unique.len(), seen.len(), "no message comes twice");
        let mut expected = sent.clone();
        if !oldest_first {
            // Each page is oldest first within itself; pages go newest to oldest.
            let mut got = seen.clone();
            got.sort();
            expected.sort();
            assert_eq!(got, expected);
        } else {
            assert_eq!(seen, expected);
        }
    }
}

#[tokio::test]
async fn a_conversation_list_page_of_large_last_messages_stops_at_the_byte_bound() {
    let server = admin_server().await;
    let n = 80;
    let mut groups = HashSet::new();
    for i in 0..n {
        let g = group_of_alice_and_bob(&server).await;
        ok(
            &server,
            "POST",
            &format!("/v1/conversations/{g}/messages"),
            Some(json!({ "text": big_text(i) })),
        )
        .await;
        groups.insert(g);
    }
    let (seen, pages) = walk(
        &server,
        "/v1/users/bob/conversations?limit=100",
        "entries",
        |e| &e["last_message"]["text"],
        |e| &e["conversation_id"],
    )
    .await;
    assert!(pages >= 2);
    let unique: HashSet<String> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len());
    assert_eq!(unique, groups);

    // The unread summary is cut the same way, with the list's cursor to go on.
    let unread = ok(&server, "GET", "/v1/users/bob/unread", None).await;
    let entries = unread["entries"].as_array().unwrap();
    let bytes: usize = entries
        .iter()
        .map(|e| e["last_message"]["text"].as_str().unwrap_or("").len())
        .sum();
    assert!(bytes <= DEFAULT_PAGE_BYTES, "{} entries", entries.len());
    let cursor = unread["next_cursor"].as_str().unwrap();
    assert!(!cursor.is_empty());
    let mut seen: Vec<String> = entries
        .iter()
        .map(|e| e["conversation_id"].as_str().unwrap().to_owned())
        .collect();
    let rest = ok(
        &server,
        "GET",
        &format!("/v1/users/bob/conversations?limit=100&cursor={cursor}"),
        None,
    )
    .await;
    assert_eq!(rest["has_more"], false);
    seen.extend(
        rest["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["conversation_id"].as_str().unwrap().to_owned()),
    );
    assert_eq!(seen.len(), n);
    assert_eq!(seen.into_iter().collect::<HashSet<_>>(), groups);
}

#[tokio::test]
async fn a_page_of_open_temporary_conversations_stops_at_the_byte_bound() {
    let server = admin_server().await;
    let n = 80;
    let mut chats = HashSet::new();
    for i in 0..n {
        let c = ok(
            &server,
            "POST",
            "/v1/conversations?as=agent",
            Some(json!({"kind": "temporary", "members": [format!("visitor-{i}")]})),
        )
        .await;
        let id = c["id"].as_str().unwrap().to_owned();
        ok(
            &server,
            "POST",
            &format!("/v1/conversations/{id}/messages"),
            Some(json!({ "text": big_text(i) })),
        )
        .await;
        chats.insert(id);
    }
    let (seen, pages) = walk(
        &server,
        "/v1/temporary-conversations?member=agent&limit=100",
        "conversations",
        |c| &c["last_message"]["text"],
        |c| &c["conversation"]["id"],
    )
    .await;
    assert!(pages >= 2);
    assert_eq!(seen.len(), n);
    assert_eq!(seen.into_iter().collect::<HashSet<_>>(), chats);
}

/// The events of a webhook body.
fn events_of(body: &str) -> Vec<Value> {
    let v: Value = serde_json::from_str(body).unwrap();
    v["events"].as_array().unwrap().clone()
}

#[tokio::test]
async fn dead_letter_pages_and_replays_stay_within_their_byte_bounds() {
    let mut rx = Receiver::start(500).await;
    let server = webhook_server(&rx, &["message.*"], |c| c.webhook_max_attempts = 1).await;
    let g = group_of_alice_and_bob(&server).await;
    let n = 60;
    for i in 0..n {
        ok(
            &server,
            "POST",
            &format!("/v1/conversations/{g}/messages"),
            Some(json!({ "text": big_text(i) })),
        )
        .await;
    }
    within(
        server
            .running()
            .app
            .stats
            .webhook_dead_letters
            .wait_for(n as u64),
    )
    .await;

    // Pages: each within the bound, the last seq carried on, none lost or repeated.
    let mut texts = Vec::new();
    let mut after = 0u64;
    let mut pages = 0;
    loop {
        let r = crate::admin::api(
            &server,
            "GET",
            &format!("/v1/webhooks/crm/dead-letters?limit=1000&after={after}"),
            None,
        )
        .await;
        assert_eq!(r.status, 200);
        let events = r.body["events"].as_array().unwrap();
        if events.is_empty() {
            break;
        }
        assert!(
            r.raw.len() <= DEFAULT_PAGE_BYTES + BIG * 3,
            "a page of {} events, {} bytes",
            events.len(),
            r.raw.len()
        );
        pages += 1;
        texts.extend(
            events
                .iter()
                .map(|e| e["data"]["message"]["text"].as_str().unwrap()[..4].to_owned()),
        );
        after = r.body["next_after"].as_u64().unwrap();
    }
    assert!(pages >= 2, "{pages} pages");
    let expected: Vec<String> = (0..n).map(|i| format!("m{i:03}")).collect();
    assert_eq!(texts, expected);

    // A replay POSTs within webhook_batch_max_bytes; called again, it goes on with the rest.
    rx.answer(200);
    let max = server.running().app.config.webhook_batch_max_bytes;
    let mut replayed = Vec::new();
    loop {
        let r = ok(
            &server,
            "POST",
            "/v1/webhooks/crm/dead-letters/replay?limit=1000",
            None,
        )
        .await;
        let count = r["replayed"].as_u64().unwrap() as usize;
        if count == 0 {
            break;
        }
        let mut got = 0;
        while got < count {
            // The failed first attempts came before.
            let hit = loop {
                let h = rx.next().await;
                if h.header("webhook-id").starts_with("replay_crm_") {
                    break h;
                }
            };
            assert!(
                hit.body.len() <= max,
                "a replay POST of {} bytes",
                hit.body.len()
            );
            for e in events_of(&hit.body) {
                replayed.push(e["data"]["message"]["text"].as_str().unwrap()[..4].to_owned());
                got += 1;
            }
        }
    }
    assert_eq!(replayed, expected);
    let dead = ok(&server, "GET", "/v1/webhooks/crm/dead-letters", None).await;
    assert_eq!(dead["events"], json!([]));
}
