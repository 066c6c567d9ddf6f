//! Demo mode and the browser pages of `web/`: `serve --demo` serves the embedded pages and mints
//! tokens (and nothing of it exists without `--demo`); the committed `web/dist` is what its
//! sources build to, and they type-check; and the pages work in Chromium (Playwright drives
//! Debian's package through `web/test/browser.mjs`, against the real binary it starts).

use crate::harness::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use tidings::client::Client;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn web_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("web")
}

/// One HTTP/1.1 request on a fresh connection: the status, the head and the body.
async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String, String) {
    let raw = within(async {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.expect("write");
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.expect("read");
        raw
    })
    .await;
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").expect("a complete head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    (status, head.to_ascii_lowercase(), body.to_owned())
}

async fn demo_token(addr: std::net::SocketAddr, user: &str) -> String {
    let (status, _, body) = http(
        addr,
        "POST",
        "/demo/token",
        &format!(r#"{{"user":"{user}"}}"#),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["token"].as_str().expect("a token").to_owned()
}

#[tokio::test]
async fn demo_mode_serves_the_pages_and_mints_tokens_that_die_with_the_process() {
    let mut server = TestServer::start_with(|c| {
        c.demo = true;
        c.jwt_hs256_secret = None;
    })
    .await;
    let addr = server.running().addr;

    let (status, head, body) = http(addr, "GET", "/demo/", "").await;
    assert_eq!(status, 200);
    assert!(head.contains("content-type: text/html"), "{head}");
    assert!(head.contains("frame-ancestors 'self'"), "{head}");
    assert!(body.contains("demo.js"), "{body}");
    let (status, head, _) = http(addr, "GET", "/widget/widget.js", "").await;
    assert_eq!(status, 200);
    assert!(head.contains("content-type: text/javascript"), "{head}");
    // The widget's chat is framed by other sites; the console is not.
    let (_, head, _) = http(addr, "GET", "/widget/chat.html", "").await;
    assert!(head.contains("frame-ancestors *"), "{head}");
    let (_, head, _) = http(addr, "GET", "/widget/agent.html", "").await;
    assert!(head.contains("frame-ancestors 'self'"), "{head}");
    let (status, head, _) = http(addr, "GET", "/demo", "").await;
    assert_eq!(status, 301);
    assert!(head.contains("location: /demo/"), "{head}");
    assert_eq!(http(addr, "GET", "/demo/missing.js", "").await.0, 404);
    assert_eq!(http(addr, "POST", "/demo/", "").await.0, 405);

    // Tokens for any valid user id; bad requests get a typed answer.
    let token = demo_token(addr, "alice").await;
    let c = within(Client::connect(&server.url())).await.unwrap();
    let ok = within(c.login(&token, "", 0))
        .await
        .expect("the token logs in");
    assert_eq!(ok.user_id, "alice");
    for (body, status) in [
        (r#"{"user":""}"#, 400),
        (r#"{"user":"a|b"}"#, 400),
        (r#"{"name":"alice"}"#, 400),
        ("not json", 400),
    ] {
        let (got, _, answer) = http(addr, "POST", "/demo/token", body).await;
        assert_eq!(got, status, "{body}: {answer}");
        assert!(answer.contains("\"error\""), "{answer}");
    }
    let big = format!(r#"{{"user":"{}"}}"#, "x".repeat(2000));
    assert_eq!(http(addr, "POST", "/demo/token", &big).await.0, 413);
    assert_eq!(http(addr, "GET", "/demo/token", "").await.0, 405);

    // The secret was made at start: after a restart the old token is refused.
    drop(c);
    server.restart().await;
    let c = within(Client::connect(&server.url())).await.unwrap();
    assert!(
        within(c.login(&token, "", 0)).await.is_err(),
        "a token of the previous process"
    );
    let fresh = demo_token(server.running().addr, "alice").await;
    let c = within(Client::connect(&server.url())).await.unwrap();
    within(c.login(&fresh, "", 0))
        .await
        .expect("a fresh token logs in");
}

#[tokio::test]
async fn without_demo_mode_the_pages_and_the_token_endpoint_do_not_exist() {
    let server = TestServer::start().await;
    let addr = server.running().addr;
    for (method, path) in [
        ("GET", "/demo/"),
        ("GET", "/widget/widget.js"),
        ("GET", "/widget/agent.html"),
        ("POST", "/demo/token"),
    ] {
        assert_eq!(
            http(addr, method, path, r#"{"user":"alice"}"#).await.0,
            404,
            "{path}"
        );
    }
}

#[tokio::test]
async fn demo_mode_refuses_an_address_other_machines_reach_unless_told() {
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::task::spawn_blocking({
        let data = dir.path().join("data");
        move || {
            Command::new(env!("CARGO_BIN_EXE_tidings"))
                .args(["serve", "--demo", "--listen", "0.0.0.0:0", "--data-dir"])
                .arg(data)
                .env_remove("TIDINGS_JWT_HS256_SECRET")
                .output()
                .unwrap()
        }
    });
    let out = within(out).await.unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("--demo-public"), "{err}");
    // `--demo-public` alone means nothing.
    let out = Command::new(env!("CARGO_BIN_EXE_tidings"))
        .args(["serve", "--demo-public"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// `npm ci` in `web/` and in the SDK (whose source the pages bundle; through the SDK tests'
/// own install, so the two never run in one directory at once), once, when missing.
fn install() {
    crate::sdk_typescript::install();
    npm_ci_once(&web_dir(), &["esbuild"]);
}

#[test]
fn the_committed_pages_are_what_their_sources_build_to_and_they_type_check() {
    install();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("dist");
    run_in(
        &web_dir(),
        "node",
        &["build.mjs", "--outdir", out.to_str().unwrap()],
        &[],
    );
    let fresh = files_under(&out);
    let committed = files_under(&web_dir().join("dist"));
    assert!(!fresh.is_empty());
    let stale: Vec<_> = fresh
        .keys()
        .chain(committed.keys())
        .filter(|k| fresh.get(*k) != committed.get(*k))
        .collect();
    assert!(
        stale.is_empty(),
        "web/dist differs from what web/src builds to ({stale:?}): run `npm run build` in web/ \
         and commit the result"
    );
    // What the binary embeds is that directory, file for file.
    let embedded: Vec<_> = tidings::demo::asset_paths().map(PathBuf::from).collect();
    assert_eq!(embedded, committed.keys().cloned().collect::<Vec<_>>());
    run_in(&web_dir(), "npx", &["tsc", "--noEmit"], &[]);
}

#[test]
fn the_pages_work_in_chromium() {
    install();
    let shots = tempfile::Builder::new()
        .prefix("tidings-web-screenshots-")
        .tempdir()
        .unwrap()
        .keep();
    let out = Command::new("node")
        .args(["test/browser.mjs"])
        .current_dir(web_dir())
        .env("TIDINGS_BIN", env!("CARGO_BIN_EXE_tidings"))
        .env("SHOTS_DIR", &shots)
        .output()
        .expect("node must be installed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    // The folder of screenshots, for people to look at.
    println!("{stdout}");
    assert!(
        out.status.success() && stdout.contains("all passed"),
        "browser scenarios failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
