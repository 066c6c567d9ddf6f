//! The LeanCloud dialect, driven by LeanCloud's own unmodified JS SDK (npm `leancloud-realtime`,
//! installed from `tests/leancloud/package-lock.json`) in Node, against a real server.

use crate::harness::*;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const APP_ID: &str = "tidings-test-app";
pub const MASTER_KEY: &str = "leancloud-master-key-for-tests";

fn sdk_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/leancloud")
}

/// Installs the SDK from the lock file once (`npm ci`), if it is not there yet.
pub fn install_sdk() {
    npm_ci_once(
        &sdk_dir(),
        &[
            "leancloud-realtime",
            "leancloud-realtime-v4",
            "playwright-core",
        ],
    );
}

/// A server with the LeanCloud dialect on.
pub async fn leancloud_server() -> TestServer {
    lc_server_with(|_| {}).await
}

/// A server with the LeanCloud dialect on (the tests' app id and master key), changed by
/// `tweak`.
pub async fn lc_server_with(tweak: impl FnOnce(&mut tidings::config::Config)) -> TestServer {
    TestServer::start_with(|c| {
        c.leancloud_app_id = Some(APP_ID.into());
        c.leancloud_master_key = Some(MASTER_KEY.into());
        tweak(c);
    })
    .await
}

/// Runs one SDK script against `server` with SDK 5; fails the test with its output unless it
/// passes.
pub async fn run_sdk(server: &TestServer, script: &str, mode: &str) -> String {
    run_sdk_package(server, script, mode, "leancloud-realtime").await
}

/// The same with the SDK package named (`leancloud-realtime-v4` is 4.3.1, under an alias).
///
/// A script may ask for the server's clock to move: it prints `@@ advance <ms>` and waits for
/// `ok` on its standard input, which comes once the clock has moved.
pub async fn run_sdk_package(server: &TestServer, script: &str, mode: &str, sdk: &str) -> String {
    run_sdk_env(server, script, mode, sdk, &[]).await
}

/// The same with environment variables for the script.
pub async fn run_sdk_env(
    server: &TestServer,
    script: &str,
    mode: &str,
    sdk: &str,
    env: &[(&str, String)],
) -> String {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::process::Stdio;
    install_sdk();
    let addr = server.running().addr;
    let mut cmd = Command::new("node");
    cmd.arg(script)
        .args([
            &format!("ws://{addr}/"),
            &format!("http://{addr}"),
            APP_ID,
            MASTER_KEY,
            mode,
        ])
        .env("LC_SDK", sdk)
        .envs(env.iter().map(|(k, v)| (k, v.as_str())))
        .current_dir(sdk_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let clock = server.clock.clone();
    let (ok, stdout, stderr) = within(tokio::task::spawn_blocking(move || {
        let mut child = cmd
            .spawn()
            .expect("node must be installed to run the LeanCloud SDK tests");
        let mut stdin = child.stdin.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let errors = std::thread::spawn(move || {
            let mut e = String::new();
            let _ = stderr.read_to_string(&mut e);
            e
        });
        let mut out = String::new();
        for line in BufReader::new(child.stdout.take().unwrap()).lines() {
            let line = line.unwrap();
            if let Some(ms) = line.strip_prefix("@@ advance ") {
                clock.advance(ms.trim().parse().expect("@@ advance <ms>"));
                writeln!(stdin, "ok").unwrap();
            }
            out.push_str(&line);
            out.push('\n');
        }
        let status = child.wait().unwrap();
        (status.success(), out, errors.join().unwrap_or_default())
    }))
    .await
    .unwrap();
    assert!(ok, "{script} ({mode}, {sdk}) failed:\n{stdout}{stderr}");
    assert!(stdout.contains("all passed"), "{stdout}");
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leancloud_sdk_opens_creates_sends_and_reads_history_in_binary_mode() {
    let server = leancloud_server().await;
    run_sdk(&server, "basic.mjs", "binary").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leancloud_sdk_does_the_same_in_base64_mode() {
    let server = leancloud_server().await;
    run_sdk(&server, "basic.mjs", "base64").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leancloud_sdk_recalls_edits_reads_updates_and_manages_members() {
    let server = leancloud_server().await;
    run_sdk(&server, "conversations.mjs", "binary").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leancloud_sdk_4_3_1_does_the_same() {
    let server = leancloud_server().await;
    run_sdk_package(&server, "basic.mjs", "binary", "leancloud-realtime-v4").await;
    let server = leancloud_server().await;
    run_sdk_package(
        &server,
        "conversations.mjs",
        "base64",
        "leancloud-realtime-v4",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leancloud_sdk_queries_conversations_with_its_conditions() {
    let server = leancloud_server().await;
    run_sdk(&server, "query.mjs", "binary").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leancloud_sdk_sees_a_temporary_conversation_expire() {
    let server = leancloud_server().await;
    run_sdk(&server, "expire.mjs", "binary").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leancloud_client_catches_up_on_edits_recalls_and_events_it_missed_while_offline() {
    let server = leancloud_server().await;
    run_sdk(&server, "offline.mjs", "binary").await;
    let server = leancloud_server().await;
    run_sdk_package(&server, "offline.mjs", "base64", "leancloud-realtime-v4").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversation_signatures_are_required_when_configured() {
    let server = TestServer::start_with(|c| {
        c.leancloud_app_id = Some(APP_ID.into());
        c.leancloud_master_key = Some(MASTER_KEY.into());
        c.leancloud_conversation_signatures = true;
    })
    .await;
    run_sdk(&server, "signatures.mjs", "binary").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leancloud_sdk_manages_roles_muted_members_and_the_blacklist() {
    let server = leancloud_server().await;
    run_sdk(&server, "groups.mjs", "binary").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leancloud_sdk_4_3_1_manages_roles_muted_members_and_the_blacklist() {
    let server = leancloud_server().await;
    run_sdk_package(&server, "groups.mjs", "base64", "leancloud-realtime-v4").await;
}

/// A server with the LeanCloud dialect and the admin API on, and the script's admin settings;
/// its webhook endpoint (`rx`) takes what subscribers write to system conversations.
async fn leancloud_admin_server(
    rx: &crate::webhooks::Receiver,
) -> (TestServer, Vec<(&'static str, String)>) {
    let server = crate::webhooks::webhook_server(rx, &["system.message_received"], |c| {
        c.leancloud_app_id = Some(APP_ID.into());
        c.leancloud_master_key = Some(MASTER_KEY.into());
    })
    .await;
    let env = vec![
        (
            "LC_ADMIN_URL",
            format!("http://{}", crate::admin::admin_addr(&server)),
        ),
        ("LC_ADMIN_KEY", crate::admin::KEY.to_owned()),
    ];
    (server, env)
}

/// Waits for the `system.message_received` event of the message the script printed as
/// `system-message <id>`, and checks it.
async fn the_backend_got_the_system_message(rx: &mut crate::webhooks::Receiver, stdout: &str) {
    let id = stdout
        .lines()
        .find_map(|l| l.strip_prefix("system-message "))
        .expect("the script names the message it wrote");
    loop {
        let hit = rx.next().await;
        let events = crate::webhooks::Hit::events(&hit);
        if let Some(e) = events
            .iter()
            .find(|e| e["type"] == "system.message_received")
        {
            let m = &e["data"]["message"];
            assert_eq!(m["id"], id);
            assert_eq!(m["sender"], "alice");
            let text: serde_json::Value =
                serde_json::from_str(m["text"].as_str().unwrap()).unwrap();
            assert_eq!(text["_lctext"], "my order is late");
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leancloud_sdk_subscribes_to_system_conversations_and_joins_chat_rooms() {
    let mut rx = crate::webhooks::Receiver::start(200).await;
    let (server, env) = leancloud_admin_server(&rx).await;
    let out = run_sdk_env(&server, "rooms.mjs", "binary", "leancloud-realtime", &env).await;
    the_backend_got_the_system_message(&mut rx, &out).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leancloud_sdk_4_3_1_subscribes_to_system_conversations_and_joins_chat_rooms() {
    let mut rx = crate::webhooks::Receiver::start(200).await;
    let (server, env) = leancloud_admin_server(&rx).await;
    let out = run_sdk_env(
        &server,
        "rooms.mjs",
        "base64",
        "leancloud-realtime-v4",
        &env,
    )
    .await;
    the_backend_got_the_system_message(&mut rx, &out).await;
}

#[test]
fn a_guessable_master_key_is_refused_and_leancloud_style_keys_pass() {
    let with = |key: &str| tidings::config::Config {
        jwt_hs256_secret: Some(SECRET.into()),
        leancloud_app_id: Some(APP_ID.into()),
        leancloud_master_key: Some(key.into()),
        ..Default::default()
    };
    // Each falls to a few offline HMAC tries against one signature or session token.
    for key in [
        "",
        "x",
        "master-key",
        "Xk29LmQp4Rz8Tn1",
        "aaaaaaaaaaaaaaaaaaaaaaaa",
        "abababababababababababab",
        "abcdefghijklmnopqrstuvwx",
        "aaaaaaaabbbbbbbb",
        "change-me-change-me-change-me",
    ] {
        let e = with(key).validate().expect_err(key).to_string();
        assert!(
            e.contains("leancloud_master_key") && e.contains("tidings secret"),
            "{key:?}: {e}"
        );
    }
    // LeanCloud's own master keys (24 random letters and digits), 16 random hex digits, the
    // tests' key and `tidings secret`'s output keep working.
    for key in [
        "O9kLd3VfQx7mPzR2sT6uWy1A",
        "hV4nB8cJ0gK5eY2rT7wQ3zXm",
        "3f9a0c7e12b84d6a",
        MASTER_KEY,
        "5f1e0b8a2c9d4e7f6a3b0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f",
    ] {
        with(key)
            .validate()
            .unwrap_or_else(|e| panic!("{key:?}: {e}"));
    }
    // From the environment, as `serve` reads it.
    let env = [
        ("TIDINGS_JWT_HS256_SECRET", SECRET),
        ("TIDINGS_LEANCLOUD_APP_ID", APP_ID),
        ("TIDINGS_LEANCLOUD_MASTER_KEY", "x"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()));
    let e = tidings::config::Config::load(None, env, &[])
        .expect_err("refused")
        .to_string();
    assert!(e.contains("at least 16"), "{e}");
}
