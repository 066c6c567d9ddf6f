//! Online backups through the admin API: a running server writes a consistent dump, which
//! `tidings store import` (the real binary) restores into a new data directory.

use crate::admin::{KEY, admin_server, api, ok};
use crate::harness::*;
use serde_json::json;

#[tokio::test]
async fn a_running_server_backs_up_and_the_backup_restores() {
    let backups = tempfile::tempdir().unwrap();
    let dir = backups.path().to_path_buf();
    let server = TestServer::start_with(|c| {
        c.admin_listen = "127.0.0.1:0".into();
        c.admin_api_keys = vec![KEY.into()];
        c.backup_dir = Some(dir);
    })
    .await;
    let g = ok(
        &server,
        "POST",
        "/v1/conversations?as=alice",
        Some(json!({"kind": "group", "name": "kept", "members": ["bob"]})),
    )
    .await;
    let id = g["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/conversations/{id}/messages");
    for t in ["one", "two", "three"] {
        ok(
            &server,
            "POST",
            &format!("{path}?as=alice"),
            Some(json!({"text": t})),
        )
        .await;
    }
    // Sends go on while it is written; what was acknowledged before the call is in it.
    let sending = {
        let url = server.url();
        let token = server.token("bob");
        let id = id.clone();
        tokio::spawn(async move {
            let bob = tidings::client::Client::connect(&url).await.unwrap();
            bob.login(&token, "", 0).await.unwrap();
            for i in 0..50 {
                bob.send_text(&id, &format!("during {i}")).await.unwrap();
            }
        })
    };
    let b = ok(&server, "POST", "/v1/backups", None).await;
    within(sending).await.unwrap();
    let file = std::path::PathBuf::from(b["file"].as_str().unwrap());
    assert!(file.starts_with(backups.path()), "{file:?}");
    assert_eq!(
        b["bytes"].as_u64(),
        Some(std::fs::metadata(&file).unwrap().len())
    );
    assert!(b["entries"].as_u64().unwrap() > 5);
    // Only whole backups are left in the directory.
    let names: Vec<String> = std::fs::read_dir(backups.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");

    // Restored by the binary into a new data directory, it serves what was backed up.
    let restored = tempfile::tempdir().unwrap();
    let data = restored.path().join("data");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tidings"))
        .args(["store", "import", "--in"])
        .arg(&file)
        .arg("--set")
        .arg(format!("data_dir={}", data.display()))
        .env("TIDINGS_JWT_HS256_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let copy = TestServer::start_with(|c| {
        c.admin_listen = "127.0.0.1:0".into();
        c.admin_api_keys = vec![KEY.into()];
        c.data_dir = data;
    })
    .await;
    let page = ok(
        &copy,
        "GET",
        &format!("{path}?oldest_first=true&limit=100"),
        None,
    )
    .await;
    let texts: Vec<&str> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert!(texts.len() >= 3, "{texts:?}");
    assert_eq!(texts[..3], ["one", "two", "three"]);
    // Whatever of the concurrent sends it holds, it holds without a gap.
    assert!(
        texts[3..]
            .iter()
            .enumerate()
            .all(|(i, t)| *t == format!("during {i}")),
        "{texts:?}"
    );
    let c = ok(&copy, "GET", &format!("/v1/conversations/{id}"), None).await;
    assert_eq!(c["name"], "kept");

    // Off without a backup_dir.
    let plain = admin_server().await;
    let r = api(&plain, "POST", "/v1/backups", None).await;
    assert_eq!(r.status_code(), (409, Some(8)));
}
