//! What operations see: `/healthz` answers 503 `draining` for as long as the drain lasts,
//! counts logged-in sessions and open connections, and counts malformed frames; the log has a
//! start line, one line per connection opened (at its first login) and closed (rate-limited for
//! connections that never logged in), and a drain line with true counts.

use crate::harness::*;
use crate::stuck_clients::health;
use std::time::Instant;
use tidings::client::{Client, ClientError};
use tokio_tungstenite::tungstenite::Message as WsMessage;

#[tokio::test]
async fn health_answers_503_draining_while_a_connection_drains_and_upgrades_are_refused() {
    // A close handshake the client never answers keeps the drain going up to close_timeout_ms.
    let mut server = TestServer::start_with(|c| c.close_timeout_ms = 15_000).await;
    let stats = server.running().app.stats.clone();
    let addr = server.running().addr;
    let mut silent = Raw::login(&server, "alice").await;
    let bob = server.client("bob").await;

    server.running().shutdown();
    // Both hear 1001; bob answers the close, alice does not.
    assert_eq!(silent.close_code().await, Some(1001));
    assert_eq!(within(bob.closed()).await.code, Some(1001));
    within(stats.connections_open.wait_for_at_most(1)).await;

    let (status, h) = health(addr).await;
    assert_eq!(status, 503, "{h}");
    assert_eq!(h["status"], "draining", "{h}");
    assert_eq!(h["connections"], 1, "alice's close is still pending: {h}");
    assert_eq!(h["sessions"], 0, "no session serves any more: {h}");
    // A new WebSocket is refused while draining.
    match within(Client::connect(&server.url())).await {
        Err(ClientError::Connect(tokio_tungstenite::tungstenite::Error::Http(r))) => {
            assert_eq!(r.status(), 503)
        }
        Err(e) => panic!("expected 503, got {e}"),
        Ok(_) => panic!("upgraded while draining"),
    }
    // Health again on the same kind of connection: still answering.
    assert_eq!(health(addr).await.0, 503);

    // alice goes; the drain ends and the listener closes.
    drop(silent);
    let start = Instant::now();
    within(server.server.take().unwrap().wait())
        .await
        .expect("clean stop");
    assert!(
        start.elapsed() < std::time::Duration::from_secs(10),
        "the drain ended when the last connection did, not at close_timeout_ms"
    );
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn healthz_counts_logged_in_sessions_and_open_connections() {
    let server = TestServer::start().await;
    let stats = server.running().app.stats.clone();
    let addr = server.running().addr;
    let (status, h) = health(addr).await;
    assert_eq!(status, 200);
    assert_eq!(
        (h["sessions"].clone(), h["connections"].clone()),
        (0.into(), 0.into())
    );

    // Connected, not logged in: a connection, no session.
    let anonymous = within(Client::connect(&server.url())).await.unwrap();
    within(stats.connections_open.wait_for(1)).await;
    let (_, h) = health(addr).await;
    assert_eq!(
        (h["sessions"].clone(), h["connections"].clone()),
        (0.into(), 1.into()),
        "{h}"
    );

    let alice = server.client("alice").await;
    let (_, h) = health(addr).await;
    assert_eq!(
        (h["sessions"].clone(), h["connections"].clone()),
        (1.into(), 2.into()),
        "{h}"
    );

    let mut others = Vec::new();
    for i in 0..5 {
        others.push(server.client(&format!("user{i}")).await);
    }
    let (_, h) = health(addr).await;
    assert_eq!(
        (h["sessions"].clone(), h["connections"].clone()),
        (6.into(), 7.into()),
        "{h}"
    );

    // They go: the counts follow.
    drop(others);
    drop(anonymous);
    within(stats.connections_open.wait_for_at_most(1)).await;
    let (_, h) = health(addr).await;
    assert_eq!(
        (h["sessions"].clone(), h["connections"].clone()),
        (1.into(), 1.into()),
        "{h}"
    );
    within(alice.ping()).await.unwrap();
}

#[tokio::test]
async fn malformed_frames_are_counted() {
    let server = TestServer::start().await;
    let stats = server.running().app.stats.clone();
    // Before login, after login, and a text frame.
    let early = within(Client::connect(&server.url())).await.unwrap();
    early.send_raw(vec![0x0a, 0xff]);
    within(early.closed()).await;
    let late = server.client("alice").await;
    late.send_raw(vec![0xff, 0xff, 0xff]);
    within(late.closed()).await;
    let texter = server.client("bob").await;
    texter.send_ws(WsMessage::Text("{}".into()));
    within(texter.closed()).await;
    within(stats.malformed_frames.wait_for(3)).await;
    let (_, h) = health(server.running().addr).await;
    assert_eq!(h["malformed_frames"], 3, "{h}");
}

/// The value of `name=` in a log line (text format), without quotes.
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let at = line.find(&format!(" {name}="))? + name.len() + 2;
    let rest = &line[at..];
    let end = if let Some(quoted) = rest.strip_prefix('"') {
        quoted.find('"')? + 2
    } else if rest.starts_with('[') {
        rest.find(']')? + 1
    } else {
        rest.find(' ').unwrap_or(rest.len())
    };
    Some(rest[..end].trim_matches('"'))
}

/// The threads that serve connections: by default one fewer than the CPUs (the writer thread
/// has the last one), at least one; `worker_threads` sets them. The start line says how many.
#[tokio::test]
async fn the_binary_serves_on_one_worker_fewer_than_its_cpus_unless_told() {
    let dir = tempfile::tempdir().unwrap();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let default = cpus.saturating_sub(1).max(1).to_string();
    for (sets, want) in [(vec![], default.as_str()), (vec!["worker_threads=3"], "3")] {
        let server = Binary::serve(&dir.path().join("data"), &sets);
        let alice = server.client("alice").await;
        within(alice.ping()).await.unwrap();
        server.signal(libc::SIGTERM);
        let (status, log) = server.wait().await;
        assert!(status.success(), "exit status {status}");
        let start = log
            .iter()
            .find(|l| l.contains("listening"))
            .expect("a start line");
        assert_eq!(field(start, "workers"), Some(want), "{start}");
    }
}

#[tokio::test]
async fn the_binary_logs_its_start_each_connection_and_true_drain_counts() {
    let dir = tempfile::tempdir().unwrap();
    let server = Binary::serve(&dir.path().join("data"), &["log_kind_lines_per_sec=1"]);
    let alice = server.client("alice").await;
    // One connection that never logs in, one with bad frames (a burst of 20).
    let anonymous = within(Client::connect(&server.url())).await.unwrap();
    let started = Instant::now();
    for _ in 0..20 {
        let c = within(Client::connect(&server.url())).await.unwrap();
        c.send_raw(vec![0xff, 0xff]);
        within(c.closed()).await;
    }
    let burst_secs = started.elapsed().as_secs();
    within(alice.ping()).await.unwrap();

    server.signal(libc::SIGTERM);
    assert_eq!(within(alice.closed()).await.code, Some(1001));
    assert_eq!(within(anonymous.closed()).await.code, Some(1001));
    let (status, log) = server.wait().await;
    assert!(status.success(), "exit status {status}");
    let all = log.join("\n");

    let start = log
        .iter()
        .find(|l| l.contains("listening"))
        .expect("a start line");
    assert_eq!(
        field(start, "version"),
        Some(env!("CARGO_PKG_VERSION")),
        "{start}"
    );
    assert_eq!(field(start, "auth"), Some("jwt-hs256"), "{start}");
    assert_eq!(field(start, "store_engine"), Some("redb"), "{start}");
    assert!(
        field(start, "data_dir").is_some_and(|d| d.ends_with("data")),
        "{start}"
    );

    let drain = log
        .iter()
        .find(|l| l.contains("draining sessions"))
        .expect("a drain line");
    assert_eq!(field(drain, "sessions"), Some("1"), "alice: {drain}");
    assert_eq!(
        field(drain, "connections"),
        Some("2"),
        "alice and the anonymous one: {drain}"
    );

    // A connection's open line comes with its first login: only alice's.
    let opened: Vec<&String> = log
        .iter()
        .filter(|l| l.contains("connection opened"))
        .collect();
    assert_eq!(opened.len(), 1, "{all}");
    let l = opened[0];
    assert!(
        field(l, "peer").is_some_and(|p| p.starts_with("127.0.0.1:")),
        "{l}"
    );
    assert_eq!(field(l, "dialect"), Some("tidings.v1"), "{l}");
    assert_eq!(field(l, "user"), Some("alice"), "{l}");
    assert!(field(l, "login_ms").is_some(), "{l}");
    let closed: Vec<&String> = log
        .iter()
        .filter(|l| l.contains("connection closed peer="))
        .collect();
    // The 21 that never logged in are rate-limited (one line a second here); the rest are
    // counted, the last second's count written at shutdown.
    let unannounced = closed
        .iter()
        .filter(|l| field(l, "users") == Some("[]"))
        .count();
    let held: u64 = log
        .iter()
        .filter(|l| {
            l.contains("log lines suppressed")
                && field(l, "kind") == Some("connection closed before login")
        })
        .map(|l| field(l, "suppressed").unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(unannounced as u64 + held, 21, "{all}");
    assert!(unannounced as u64 <= burst_secs + 3, "{all}");
    assert_eq!(closed.len(), 1 + unannounced, "{all}");
    let alice_closed = closed
        .iter()
        .find(|l| field(l, "users") == Some("[\"alice\"]"))
        .unwrap_or_else(|| panic!("alice's close line: {all}"));
    assert_eq!(field(alice_closed, "close"), Some("1001"), "{alice_closed}");
    assert!(
        field(alice_closed, "duration_ms").is_some(),
        "{alice_closed}"
    );
    assert!(field(alice_closed, "peer").is_some(), "{alice_closed}");
    assert!(field(alice_closed, "devices").is_some(), "{alice_closed}");
    for l in closed.iter().filter(|l| field(l, "users") == Some("[]")) {
        assert!(matches!(field(l, "close"), Some("4004" | "1001")), "{l}");
    }

    // 20 malformed frames, at most one line a second (and one more for a second boundary).
    let malformed = log
        .iter()
        .filter(|l| l.contains("malformed frame; closing"))
        .count();
    assert!(malformed >= 1, "{all}");
    assert!(
        malformed as u64 <= burst_secs + 2,
        "{malformed} malformed-frame lines in {burst_secs} s: {all}"
    );
}
