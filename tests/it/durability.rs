//! What is acked survives: restarts, graceful shutdown, the real binary and SIGTERM.

use crate::harness::*;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tidings::client::Client;
use tidings::protocol::pb;

#[tokio::test]
async fn a_restart_keeps_conversations_members_history_and_read_positions() {
    let mut server = TestServer::start().await;
    let (g, d, before_history) = {
        let alice = server.client("alice").await;
        let bob = server.client("bob").await;
        let g = within(alice.create_group("team", &["bob", "carol"]))
            .await
            .unwrap();
        let d = within(alice.create_direct("bob")).await.unwrap();
        for i in 0..12 {
            within(alice.send_text(&g.id, &format!("m{i}")))
                .await
                .unwrap();
        }
        within(bob.send_text(&d.id, "direct")).await.unwrap();
        within(bob.mark_read(&g.id, 4)).await.unwrap();
        within(bob.set_muted(&g.id, true)).await.unwrap();
        within(alice.remove_members(&g.id, &["carol"]))
            .await
            .unwrap();
        let h = within(alice.history(&g.id, 0, 100)).await.unwrap();
        (g, d, h)
    };
    server.restart().await;

    let alice = server.client("alice").await;
    let (bob, w) = server.login("bob").await;
    let ge = w.unread(&g.id).unwrap();
    assert_eq!(
        (ge.unread, ge.read_seq, ge.last_seq, ge.muted),
        (8, 4, 12, true)
    );
    assert_eq!(w.unread(&d.id).unwrap().unread, 0);
    let g2 = within(bob.get_conversation(&g.id)).await.unwrap();
    assert_eq!(
        (
            g2.name.as_str(),
            g2.owner.as_str(),
            g2.member_count,
            g2.muted,
            g2.last_seq
        ),
        ("team", "alice", 2, true, 12)
    );
    assert_eq!(
        within(alice.history(&g.id, 0, 100)).await.unwrap(),
        before_history
    );
    assert_eq!(within(alice.create_direct("bob")).await.unwrap().id, d.id);
    assert_eq!(
        within(alice.send_text(&g.id, "after restart"))
            .await
            .unwrap()
            .seq,
        13
    );
    let (carol, _) = server.login("carol").await;
    assert!(within(carol.get_conversation(&g.id)).await.is_err());
    // New conversations never reuse a number.
    let fresh = within(alice.create_group("new", &[])).await.unwrap();
    assert!(fresh.id != g.id && fresh.id != d.id);
}

#[tokio::test]
async fn graceful_shutdown_loses_no_acked_message() {
    let mut server = TestServer::start().await;
    let alice = server.client("alice").await;
    let g = within(alice.create_group("g", &["s0", "s1", "s2", "s3"]))
        .await
        .unwrap();
    let enough = Arc::new(tokio::sync::Notify::new());
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..4 {
        let (client, _) = server.login(&format!("s{i}")).await;
        let (id, enough, stop) = (g.id.clone(), enough.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut acked = BTreeMap::new();
            let mut n = 0u64;
            // Keep 8 sends in flight until the server goes away.
            loop {
                let texts: Vec<String> = (0..8).map(|k| format!("s{i}-{}", n + k)).collect();
                let batch = texts.iter().map(|t| client.send_text(&id, t));
                let results = futures_util::future::join_all(batch).await;
                n += 8;
                let mut failed = false;
                for r in results {
                    match r {
                        Ok(a) => {
                            acked.insert(a.seq, a.message_id);
                        }
                        Err(_) => failed = true,
                    }
                }
                if acked.len() >= 40 {
                    enough.notify_one();
                }
                if failed || stop.load(Ordering::Relaxed) {
                    break;
                }
            }
            (acked, client.closed().await)
        }));
    }
    within(enough.notified()).await;
    server.running().shutdown();
    stop.store(true, Ordering::Relaxed);
    let mut acked = BTreeMap::new();
    for t in tasks {
        let (a, closed) = within(t).await.unwrap();
        assert_eq!(
            closed.code,
            Some(1001),
            "sessions are closed with going-away"
        );
        acked.extend(a);
    }
    assert!(acked.len() >= 40);
    server.server.take().unwrap().wait().await.unwrap();
    let restarted = tidings::server::start(server.config.clone(), Arc::new(server.clock.clone()))
        .await
        .unwrap();
    server.server = Some(restarted);
    let alice = server.client("alice").await;
    let stored = within(alice.sync_all(&g.id, 0)).await.unwrap();
    let max = stored.last().map(|m| m.seq).unwrap_or(0);
    assert_eq!(
        stored.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (1..=max).collect::<Vec<_>>(),
        "gapless"
    );
    for (seq, id) in &acked {
        let m = stored
            .get(*seq as usize - 1)
            .unwrap_or_else(|| panic!("acked seq {seq} lost"));
        assert_eq!(&m.id, id);
    }
}

#[tokio::test]
async fn the_binary_serves_health_mints_tokens_and_drains_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let server = Binary::serve(&dir.path().join("data"), &[]);
    let addr = server.addr.clone();

    let mut http = std::net::TcpStream::connect(&addr).unwrap();
    http.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    http.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("\"status\":\"ok\""), "{resp}");
    // Transparent huge pages are off for the process (see main.rs: they cost a tenth of the
    // CPU in clearing pages the allocator takes back).
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
    if let Some(line) = status.lines().find(|l| l.starts_with("THP_enabled:")) {
        assert_eq!(line.split_whitespace().nth(1), Some("0"), "{line}");
    }

    let out = Command::new(env!("CARGO_BIN_EXE_tidings"))
        .args(["token", "--user", "alice"])
        .env("TIDINGS_JWT_HS256_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();

    let client = within(Client::connect(&server.url())).await.unwrap();
    let ok: pb::LoginOk = within(client.login(&token, "", 0)).await.unwrap();
    assert_eq!(ok.user_id, "alice");
    let g = within(client.create_group("g", &[])).await.unwrap();
    within(client.send_text(&g.id, "before sigterm"))
        .await
        .unwrap();

    server.signal(libc::SIGTERM);
    assert_eq!(within(client.closed()).await.code, Some(1001));
    let (status, log) = server.wait().await;
    assert!(status.success(), "exit status {status}");
    assert!(log.join("\n").contains("store flushed"), "{log:?}");
}

#[tokio::test]
async fn the_sled_engine_keeps_history_across_a_restart_and_a_changed_engine_is_refused() {
    let mut server = TestServer::start_with(|c| c.store_engine = "sled".into()).await;
    let g = {
        let alice = server.client("alice").await;
        let g = within(alice.create_group("g", &["bob"])).await.unwrap();
        for i in 0..5 {
            within(alice.send_text(&g.id, &format!("m{i}")))
                .await
                .unwrap();
        }
        g
    };
    server.restart().await;
    let bob = server.client("bob").await;
    assert_eq!(within(bob.sync_all(&g.id, 0)).await.unwrap().len(), 5);
    server.server.take().unwrap().stop().await.unwrap();

    let mut redb = server.config.clone();
    redb.store_engine = "redb".into();
    let err = tidings::server::start(redb, Arc::new(server.clock.clone()))
        .await
        .err()
        .expect("must refuse");
    assert!(err.to_string().contains("holds a sled store"), "{err}");
}

/// Commits fail once `fail` is set (a full or broken disk).
struct Failing {
    fail: AtomicBool,
}

impl crate::spied_store::Watch for Failing {
    fn commit(&self, _ops: &[tidings::store::Op]) -> Result<(), tidings::store::StoreError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(tidings::store::StoreError::Engine(
                "injected: no space left on device".into(),
            ));
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_failing_store_refuses_writes_and_stops_the_server_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = tidings::config::Config {
        listen: "127.0.0.1:0".into(),
        data_dir: dir.path().join("data"),
        jwt_hs256_secret: Some(SECRET.into()),
        ..Default::default()
    };
    let inner = tidings::store::open("redb", &config.data_dir, 8 << 20).unwrap();
    let failing = Arc::new(Failing {
        fail: AtomicBool::new(false),
    });
    let store = crate::spied_store::Spied::new(inner, failing.clone());
    let server = tidings::server::start_with(
        config.clone(),
        Arc::new(tidings::clock::SystemClock),
        Some(Arc::new(store)),
    )
    .await
    .unwrap();
    let token = tidings::auth::mint(
        &config,
        "alice",
        600,
        tidings::clock::Clock::now_ms(&tidings::clock::SystemClock),
        false,
    )
    .unwrap();
    let alice = within(Client::connect(&format!("ws://{}/ws", server.addr)))
        .await
        .unwrap();
    within(alice.login(&token, "", 0)).await.unwrap();
    let g = within(alice.create_group("g", &[])).await.unwrap();
    within(alice.send_text(&g.id, "stored")).await.unwrap();

    failing.fail.store(true, Ordering::SeqCst);
    let err = within(alice.send_text(&g.id, "not stored"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(pb::ErrorCode::ErrorUnavailable), "{err}");
    // The server shuts itself down (memory may be ahead of the disk) and says why.
    assert_eq!(within(alice.closed()).await.code, Some(1001));
    let result = within(server.wait()).await;
    assert!(
        result.is_err(),
        "a store failure must not look like a clean stop"
    );
}

/// A Kubernetes Service named `tidings` puts `TIDINGS_PORT=tcp://…` into every pod: a variable
/// that names no setting is logged as a warning, and the server starts.
#[tokio::test]
async fn the_binary_starts_with_unknown_tidings_variables_and_warns_of_them() {
    let dir = tempfile::tempdir().unwrap();
    let server = Binary::serve_env(
        &dir.path().join("data"),
        &[],
        &[("TIDINGS_PORT", "tcp://10.0.0.1:7400")],
    );
    let client = server.client("alice").await;
    within(client.ping()).await.unwrap();

    server.signal(libc::SIGTERM);
    let (status, log) = server.wait().await;
    assert!(status.success(), "exit status {status}");
    assert!(
        log.iter()
            .any(|l| l.contains("WARN") && l.contains("TIDINGS_PORT")),
        "{log:?}"
    );
}
