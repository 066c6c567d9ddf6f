//! LeanCloud's browser SDK bundle, unmodified, in headless Chromium (Debian's package): it finds
//! the server through `/v1/route` from another origin (so CORS), opens two clients, creates a
//! conversation and delivers a message. `tests/leancloud/browser/` holds the page and the
//! Playwright driver.

use crate::harness::*;
use crate::leancloud::{APP_ID, MASTER_KEY};
use std::path::{Path, PathBuf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn sdk_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/leancloud")
}

/// Serves the page and the SDK bundle from another origin than the server's.
async fn serve_page() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = stream.read(&mut buf).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]);
                let path = request.split_whitespace().nth(1).unwrap_or("/");
                let (file, kind) = match path.split('?').next() {
                    Some("/") => ("browser/index.html", "text/html"),
                    Some("/im-browser.js") => (
                        "node_modules/leancloud-realtime/dist/im-browser.js",
                        "text/javascript",
                    ),
                    _ => ("", ""),
                };
                let (status, body) = match std::fs::read(sdk_dir().join(file)) {
                    Ok(body) if !file.is_empty() => ("200 OK", body),
                    _ => ("404 Not Found", b"not found".to_vec()),
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(&body).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leancloud_browser_sdk_works_in_chromium_across_origins() {
    crate::leancloud::install_sdk();
    let page = serve_page().await;
    // The page's origin must be allowed, as a deployment's web app would be.
    let server = TestServer::start_with(|c| {
        c.leancloud_app_id = Some(APP_ID.into());
        c.leancloud_master_key = Some(MASTER_KEY.into());
        c.allowed_origins = vec![format!("http://{page}")];
    })
    .await;
    let url = format!(
        "http://{page}/?server=http://{}&app={APP_ID}&key={MASTER_KEY}",
        server.running().addr
    );
    let mut cmd = std::process::Command::new("node");
    cmd.args(["browser/run.mjs", &url]).current_dir(sdk_dir());
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(90),
        tokio::task::spawn_blocking(move || cmd.output()),
    )
    .await
    .expect("the browser run finishes")
    .unwrap()
    .expect("node must be installed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("all passed"),
        "browser run failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
