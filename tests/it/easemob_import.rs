//! `tidings import easemob`, run as the real binary against a real server's admin API on port
//! 0, from the committed history files in tests/fixtures/easemob-history: conversations mapped
//! (direct chats to direct conversations, group chats to groups under their Easemob ids, chat
//! rooms not imported), messages kept with their Easemob ids, and a second run changing nothing.

use crate::admin::{KEY, admin_addr, admin_server, ok};
use crate::harness::*;
use serde_json::{Value, json};
use std::process::Command;

const GROUP: &str = "169432768208897";

async fn import_easemob(server: &TestServer, key: &str) -> (bool, String) {
    let fixtures = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/easemob-history"
    );
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidings"));
    cmd.args([
        "import",
        "easemob",
        "--admin-url",
        &format!("http://{}", admin_addr(server)),
        "--admin-key",
        key,
        "--batch",
        "2",
        fixtures,
    ])
    .env_remove("TIDINGS_LOG");
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// (id, sender, time, type, text) of a conversation's whole history, oldest first.
async fn history(server: &TestServer, conv: &str) -> Vec<(String, String, i64, i64, String)> {
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
                m["sender"].as_str().unwrap().to_owned(),
                m["server_time"].as_i64().unwrap(),
                m["type"].as_i64().unwrap(),
                m["text"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

async fn direct(server: &TestServer, a: &str, b: &str) -> String {
    let c = ok(
        server,
        "POST",
        &format!("/v1/conversations?as={a}"),
        Some(json!({"kind": "direct", "members": [b]})),
    )
    .await;
    c["id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn easemob_history_files_are_imported_through_the_admin_api_once() {
    let server = admin_server().await;

    // A wrong key stops it at once, with the reason.
    let (done, err) = import_easemob(&server, "not-the-key-0123456789abcdef0123456789").await;
    assert!(!done, "{err}");
    assert!(err.contains("401"), "{err}");

    let (done, err) = import_easemob(&server, KEY).await;
    assert!(done, "{err}");
    assert!(
        err.contains(
            "read 10 records; imported 3 conversations (0 were there already), 7 messages \
             (1 were there already); 2 not imported"
        ),
        "{err}"
    );
    assert!(
        err.contains("not imported: 1001186954423734296: a chat room message"),
        "{err}"
    );
    assert!(
        err.contains("not imported: 1001186954423734297: a command (cmd) message"),
        "{err}"
    );

    let ab = direct(&server, "bob", "alice").await;
    let expected_ab = vec![
        (
            "1001186954423734292".to_owned(),
            "alice".to_owned(),
            1_600_000_000_000,
            0,
            "hi bob".to_owned(),
        ),
        (
            "1001186954423734293".to_owned(),
            "bob".to_owned(),
            1_600_000_060_000,
            0,
            "hello alice".to_owned(),
        ),
        (
            "1001186954423738001".to_owned(),
            "alice".to_owned(),
            1_600_003_600_000,
            2,
            r#"{"addr":"Trailhead parking","lat":39.9053,"lng":116.36302,"type":"loc"}"#.to_owned(),
        ),
    ];
    assert_eq!(history(&server, &ab).await, expected_ab);
    // ext became attributes: strings as they are, other values as JSON.
    let page = ok(
        &server,
        "GET",
        &format!("/v1/conversations/{ab}/messages?oldest_first=true&limit=1"),
        None,
    )
    .await;
    assert_eq!(
        page["messages"][0]["attributes"],
        json!({"em_ignore_notification": "true", "topic": "hiking"})
    );

    // The group keeps its Easemob id; its senders are its members, the first the owner.
    let g = ok(&server, "GET", &format!("/v1/conversations/{GROUP}"), None).await;
    assert_eq!(
        (
            g["kind"].as_str(),
            g["owner"].as_str(),
            g["member_count"].as_u64()
        ),
        (Some("group"), Some("carol"), Some(3))
    );
    assert_eq!(g["created_at"], 1_600_000_120_000i64);
    let expected_group: Vec<(String, i64)> = history(&server, GROUP)
        .await
        .into_iter()
        .map(|m| (m.1, m.3))
        .collect();
    assert_eq!(
        expected_group,
        [
            ("carol".to_owned(), 0),
            ("alice".to_owned(), 1),
            ("bob".to_owned(), 6)
        ]
    );
    let ca = direct(&server, "alice", "carol").await;
    assert_eq!(history(&server, &ca).await.len(), 1);

    // A native client reads the direct chat and names a message by its Easemob id.
    let (alice, _) = server.login("alice").await;
    let page = within(alice.fetch_history(tidings::protocol::pb::FetchHistory {
        conversation_id: ab.clone(),
        end_message_id: "1001186954423734293".into(),
        end_inclusive: true,
        ..Default::default()
    }))
    .await
    .unwrap();
    let ids: Vec<&str> = page.messages.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["1001186954423734293", "1001186954423738001"]);

    // Run again: nothing new, nothing changed.
    let (done, err) = import_easemob(&server, KEY).await;
    assert!(done, "{err}");
    assert!(
        err.contains(
            "imported 0 conversations (3 were there already), 0 messages (8 were there \
             already); 2 not imported"
        ),
        "{err}"
    );
    assert_eq!(history(&server, &ab).await, expected_ab);
    let group: Value = ok(&server, "GET", &format!("/v1/conversations/{GROUP}"), None).await;
    assert_eq!(group["last_seq"], 3);
}
