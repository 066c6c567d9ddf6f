//! `tidings import leancloud`, run as the real binary: from a fixture server that answers like
//! LeanCloud's REST API, and from committed exported files. The imported store is then served
//! and read by a native client and a LeanCloud client.

use crate::harness::*;
use crate::leancloud::{APP_ID, MASTER_KEY};
use crate::leancloud_wire::{Lc, cmd};
use bytes::Bytes;
use http_body_util::Full;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tidings::leancloud::LcProtocol;
use tidings::leancloud::pb::{self as lc, CommandType as Cmd};
use tidings::protocol::pb;

const GROUP: &str = "5a5d7432c3422b31ed845e75";
const LONG: &str = "5a5d7432c3422b31ed845e76";
const ROOM: &str = "5a5d7432c3422b31ed845e77";
/// Messages in `LONG`: more than two pages of 1000.
const LONG_COUNT: usize = 2500;
const T0: i64 = 1_600_000_000_000;

/// What the fixture server holds, and how it was asked.
struct Fixture {
    conversations: Vec<Value>,
    /// Per conversation, oldest first.
    messages: HashMap<String, Vec<Value>>,
    requests: AtomicUsize,
    refused: AtomicUsize,
}

fn msg_id(conv: &str, i: usize) -> String {
    // LeanCloud message ids are 22 characters of URL-safe base64.
    format!("{}{i:08}", &conv[16..]).replace('e', "E") + "Qx_-Zw"
}

fn fixture() -> Fixture {
    let conversations = vec![
        json!({"objectId": GROUP, "name": "team", "m": ["alice", "bob", "carol"], "c": "alice",
               "createdAt": "2020-09-13T12:26:40.000Z", "updatedAt": "2020-09-14T12:26:40.000Z",
               "topic": "rust", "unique": false}),
        json!({"objectId": LONG, "m": ["alice", "bob"], "c": "bob", "unique": true,
               "createdAt": "2020-09-13T12:30:00.000Z", "updatedAt": "2020-09-13T12:30:00.000Z"}),
        json!({"objectId": ROOM, "name": "lobby", "m": [], "c": "alice", "tr": true,
               "createdAt": "2020-09-13T12:00:00.000Z", "updatedAt": "2020-09-13T12:00:00.000Z"}),
    ];
    let item = |conv: &str, i: usize, from: &str, at: i64, data: &str, bin: bool| {
        json!({"timestamp": at, "conv-id": conv, "data": data, "from": from,
               "msg-id": msg_id(conv, i), "is-conv": true, "is-room": false, "to": conv,
               "bin": bin, "from-ip": "127.0.0.1"})
    };
    let mut messages = HashMap::new();
    messages.insert(
        GROUP.to_owned(),
        vec![
            item(
                GROUP,
                1,
                "alice",
                T0 + 1000,
                r#"{"_lctype":-1,"_lctext":"hello"}"#,
                false,
            ),
            // "AAEC/w==" is the bytes 0, 1, 2, 255.
            item(GROUP, 2, "bob", T0 + 2000, "AAEC/w==", true),
            // Two messages in one millisecond keep the order they were sent in.
            item(GROUP, 3, "carol", T0 + 3000, "plain text", false),
            item(
                GROUP,
                4,
                "alice",
                T0 + 3000,
                r#"{"_lctype":-2,"_lcfile":{"url":"u"}}"#,
                false,
            ),
        ],
    );
    messages.insert(
        LONG.to_owned(),
        (1..=LONG_COUNT)
            .map(|i| {
                let from = if i % 2 == 0 { "alice" } else { "bob" };
                let text = format!(r#"{{"_lctype":-1,"_lctext":"m{i}"}}"#);
                item(LONG, i, from, T0 + 10_000 + i as i64 * 7, &text, false)
            })
            .collect(),
    );
    Fixture {
        conversations,
        messages,
        requests: AtomicUsize::new(0),
        refused: AtomicUsize::new(0),
    }
}

fn query_of(uri: &hyper::Uri) -> HashMap<String, String> {
    let decode = |s: &str| {
        let mut out = Vec::new();
        let b = s.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                i += 3;
            } else {
                out.push(if b[i] == b'+' { b' ' } else { b[i] });
                i += 1;
            }
        }
        String::from_utf8(out).unwrap()
    };
    uri.query()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// The answer of LeanCloud's REST API, as far as the import uses it.
fn answer(f: &Fixture, req: &hyper::Request<hyper::body::Incoming>) -> (u16, Value) {
    f.requests.fetch_add(1, Ordering::SeqCst);
    let h = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    };
    if h("x-lc-id") != APP_ID || h("x-lc-key") != format!("{MASTER_KEY},master") {
        f.refused.fetch_add(1, Ordering::SeqCst);
        return (401, json!({"code": 401, "error": "Unauthorized."}));
    }
    let q = query_of(req.uri());
    let limit: usize = q.get("limit").map_or(100, |l| l.parse().unwrap());
    assert!(limit <= 1000, "the documented maximum is 1000");
    let path = req.uri().path();
    if path == "/1.1/classes/_Conversation" {
        assert_eq!(q.get("order").map(String::as_str), Some("objectId"));
        let after = q.get("where").map(|w| {
            let w: Value = serde_json::from_str(w).unwrap();
            w["objectId"]["$gt"].as_str().unwrap().to_owned()
        });
        let mut rows = f.conversations.clone();
        rows.sort_by(|a, b| a["objectId"].as_str().cmp(&b["objectId"].as_str()));
        let rows: Vec<Value> = rows
            .into_iter()
            .filter(|r| {
                after
                    .as_deref()
                    .is_none_or(|a| r["objectId"].as_str().unwrap() > a)
            })
            .take(limit)
            .collect();
        return (200, json!({ "results": rows }));
    }
    if let Some(cid) = path
        .strip_prefix("/1.2/rtm/conversations/")
        .and_then(|p| p.strip_suffix("/messages"))
    {
        let all = f.messages.get(cid).cloned().unwrap_or_default();
        // Newest first, strictly before (timestamp, msgid) when given.
        let start = match (q.get("timestamp"), q.get("msgid")) {
            (Some(t), Some(m)) => all
                .iter()
                .position(|v| {
                    v["timestamp"].as_i64().unwrap().to_string() == *t && v["msg-id"] == *m
                })
                .expect("msgid names a message"),
            (None, None) => all.len(),
            _ => panic!("msgid needs timestamp"),
        };
        let page: Vec<Value> = all[..start].iter().rev().take(limit).cloned().collect();
        return (200, Value::Array(page));
    }
    (404, json!({"code": 404, "error": "not found"}))
}

/// Serves the fixture on 127.0.0.1:0; returns its base URL.
async fn serve(f: Arc<Fixture>) -> String {
    serve_with(f, None).await
}

/// The fixture server, over TLS when `tls` is given (then `https://localhost:…`).
async fn serve_with(f: Arc<Fixture>, tls: Option<tokio_rustls::TlsAcceptor>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let url = match &tls {
        Some(_) => format!("https://localhost:{}", addr.port()),
        None => format!("http://{addr}"),
    };
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let f = f.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let (status, body) = answer(&f, &req);
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            hyper::Response::builder()
                                .status(status)
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(body.to_string())))
                                .unwrap(),
                        )
                    }
                });
                let http = hyper::server::conn::http1::Builder::new();
                let _ = match tls {
                    None => {
                        http.serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                            .await
                    }
                    Some(acceptor) => {
                        // A client that refuses the certificate ends here.
                        let Ok(stream) = acceptor.accept(stream).await else {
                            return;
                        };
                        http.serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                            .await
                    }
                };
            });
        }
    });
    url
}

/// Runs `tidings` with `args` on `data_dir`; returns (success, stderr).
async fn tidings(data_dir: &Path, args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidings"));
    cmd.args(args)
        .arg("--set")
        .arg(format!("data_dir={}", data_dir.display()))
        .env_remove("TIDINGS_LOG");
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The store's dump, to compare runs byte for byte.
async fn dump(data_dir: &Path, dir: &Path, name: &str) -> Vec<u8> {
    let out = dir.join(name);
    let (ok, err) = tidings(
        data_dir,
        &["store", "export", "--out", out.to_str().unwrap()],
    )
    .await;
    assert!(ok, "{err}");
    std::fs::read(out).unwrap()
}

async fn serve_store(data_dir: &Path) -> TestServer {
    let data_dir = data_dir.to_path_buf();
    TestServer::start_with(|c| {
        c.data_dir = data_dir;
        c.leancloud_app_id = Some(APP_ID.into());
        c.leancloud_master_key = Some(MASTER_KEY.into());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_from_the_rest_api_keeps_leancloud_ids_and_marks_everything_read() {
    let f = Arc::new(fixture());
    let url = serve(f.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");

    // The master key is checked: a wrong one imports nothing.
    let (ok, err) = tidings(
        &dir.path().join("other"),
        &[
            "import",
            "leancloud",
            "--url",
            &url,
            "--app-id",
            APP_ID,
            "--master-key",
            "nope",
        ],
    )
    .await;
    assert!(!ok && err.contains("401"), "{err}");
    assert!(f.refused.load(Ordering::SeqCst) > 0);

    let args = [
        "import",
        "leancloud",
        "--url",
        &url,
        "--app-id",
        APP_ID,
        "--master-key",
        MASTER_KEY,
    ];
    let (ok, err) = tidings(&data, &args).await;
    assert!(ok, "{err}");
    assert!(
        err.contains(&format!(
            "imported 2 conversations (0 were there already), {} messages",
            LONG_COUNT + 4
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("not imported: {ROOM}: a chat room")),
        "{err}"
    );
    let first = dump(&data, dir.path(), "first.dump").await;

    // Again: nothing new, nothing changed (and the history is not fetched again).
    let before = f.requests.load(Ordering::SeqCst);
    let (ok, err) = tidings(&data, &args).await;
    assert!(ok, "{err}");
    assert!(
        err.contains("imported 0 conversations (2 were there already), 0 messages"),
        "{err}"
    );
    // One conversation page, one history page per conversation.
    assert_eq!(f.requests.load(Ordering::SeqCst) - before, 3);
    assert_eq!(dump(&data, dir.path(), "second.dump").await, first);

    let server = serve_store(&data).await;
    let (alice, welcome) = server.login("alice").await;
    // Everything imported counts as read.
    for id in [GROUP, LONG] {
        let e = welcome.unread(id).unwrap_or_else(|| panic!("{id} listed"));
        assert_eq!(e.unread, 0, "{id}");
    }
    // Found by its LeanCloud id, which is its id; its number id resolves to it too.
    let g = alice.get_conversation(GROUP).await.unwrap();
    assert_eq!(g.id, GROUP);
    assert_eq!(g.name, "team");
    assert_eq!(g.owner, "alice");
    assert_eq!(g.member_count, 3);
    assert_eq!(
        g.attributes.get("topic").map(String::as_str),
        Some("\"rust\"")
    );
    assert_eq!(g.created_at, 1_600_000_000_000);
    let by_number = alice.get_conversation("0000000000000001").await.unwrap();
    assert_eq!(by_number.id, GROUP);
    let long = alice.get_conversation(LONG).await.unwrap();
    assert_eq!((long.owner.as_str(), long.unique), ("bob", true));

    // History in order, with LeanCloud ids, times and content as stored there.
    let page = alice.history(GROUP, 0, 10).await.unwrap();
    let got: Vec<(u64, String, String, i64, i32)> = page
        .messages
        .iter()
        .map(|m| {
            (
                m.seq,
                m.id.clone(),
                m.sender.clone(),
                m.server_time,
                m.r#type,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (1, msg_id(GROUP, 1), "alice".into(), T0 + 1000, -1),
            (2, msg_id(GROUP, 2), "bob".into(), T0 + 2000, 0),
            (3, msg_id(GROUP, 3), "carol".into(), T0 + 3000, 0),
            (4, msg_id(GROUP, 4), "alice".into(), T0 + 3000, -2),
        ]
    );
    assert_eq!(
        &page.messages[0].content[..],
        br#"{"_lctype":-1,"_lctext":"hello"}"#
    );
    assert_eq!(&page.messages[1].content[..], &[0u8, 1, 2, 255]);
    assert!(page.messages[1].attributes.contains_key("lc.binary"));
    assert!(page.messages.iter().all(|m| m.conversation_id == GROUP));

    // The long one: every page in order.
    let mut seqs = Vec::new();
    let mut before = 0;
    loop {
        let page = alice.history(LONG, before, 100).await.unwrap();
        for m in page.messages.iter().rev() {
            assert_eq!(m.id, msg_id(LONG, m.seq as usize));
            seqs.push(m.seq);
        }
        if !page.has_more {
            break;
        }
        before = page.messages[0].seq;
    }
    seqs.reverse();
    assert_eq!(seqs, (1..=LONG_COUNT as u64).collect::<Vec<_>>());

    // A new message gets the next seq; bob has one unread.
    let ack = alice.send_text(LONG, "after the move").await.unwrap();
    assert_eq!(ack.seq, LONG_COUNT as u64 + 1);
    let (_bob, welcome) = server.login("bob").await;
    assert_eq!(welcome.unread(LONG).unwrap().unread, 1);
    assert_eq!(welcome.unread(GROUP).unwrap().unread, 0);

    // A LeanCloud client: the same ids; history paged from a LeanCloud message id.
    let mut c = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    c.opened("bob", None).await;

    // Receipts in an imported conversation reach LeanCloud clients, with the message's id.
    let mut alice_lc = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    alice_lc.opened("alice", None).await;
    let ack = alice
        .send(pb::SendMessage {
            conversation_id: LONG.into(),
            r#type: 1,
            content: Bytes::from_static(b"tell me"),
            want_receipts: true,
            ..Default::default()
        })
        .await
        .unwrap();
    c.send_read("bob", LONG, &ack.message_id).await;
    // Reading implies delivery: a delivery receipt, then the read one.
    for read in [None, Some(true)] {
        let rcp = alice_lc
            .push_of(Cmd::Rcp, None, "alice")
            .await
            .rcp_message
            .unwrap();
        assert_eq!(rcp.cid.as_deref(), Some(LONG));
        assert_eq!(rcp.id.as_deref(), Some(ack.message_id.as_str()));
        assert_eq!(rcp.read, read);
    }
    let logs = |t: Option<i64>, mid: Option<String>| GenericCommand {
        peer_id: Some("bob".into()),
        logs_message: Some(lc::LogsCommand {
            cid: Some(GROUP.into()),
            t,
            mid,
            l: Some(2),
            ..Default::default()
        }),
        ..cmd(Cmd::Logs, None)
    };
    let r = c.request(logs(None, None)).await;
    let items = r.logs_message.unwrap().logs;
    let ids: Vec<String> = items.iter().map(|l| l.msg_id.clone().unwrap()).collect();
    assert_eq!(ids, vec![msg_id(GROUP, 3), msg_id(GROUP, 4)]);
    let r = c
        .request(logs(Some(T0 + 3000), Some(msg_id(GROUP, 3))))
        .await;
    let items = r.logs_message.unwrap().logs;
    let got: Vec<(String, Option<bool>, String)> = items
        .iter()
        .map(|l| {
            (
                l.msg_id.clone().unwrap(),
                l.bin,
                l.data.clone().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (
                msg_id(GROUP, 1),
                None,
                r#"{"_lctype":-1,"_lctext":"hello"}"#.into()
            ),
            (msg_id(GROUP, 2), Some(true), "AAEC/w==".into()),
        ]
    );
    drop(c);
    let mut server = server;
    server.server.take().unwrap().stop().await.unwrap();

    // Once messages were sent here, a later import adds nothing to that conversation.
    let (ok, err) = tidings(&data, &args).await;
    assert!(ok, "{err}");
    assert!(
        err.contains(&format!(
            "not imported: {LONG}: messages were sent in this conversation"
        )),
        "{err}"
    );
}

use tidings::leancloud::pb::GenericCommand;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_from_exported_files_sets_read_positions_from_the_read_data() {
    let files = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/leancloud-export");
    let arg = |n: &str| files.join(n).to_str().unwrap().to_owned();
    let (conversations, messages, reads) = (
        arg("_Conversation.jsonl"),
        arg("messages.jsonl"),
        arg("reads.jsonl"),
    );
    let args = [
        "import",
        "leancloud",
        "--conversations",
        &conversations,
        "--messages",
        &messages,
        "--reads",
        &reads,
    ];
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (ok, err) = tidings(&data, &args).await;
    assert!(ok, "{err}");
    assert!(
        err.contains("imported 1 conversations (0 were there already), 3 messages"),
        "{err}"
    );
    assert!(
        err.contains("5f1a2b3c4d5e6f7081920a02: a chat room"),
        "{err}"
    );
    let first = dump(&data, dir.path(), "first.dump").await;
    let (ok, err) = tidings(&data, &args).await;
    assert!(ok, "{err}");
    assert!(
        err.contains(
            "imported 0 conversations (1 were there already), 0 messages (3 were there already)"
        ),
        "{err}"
    );
    assert_eq!(dump(&data, dir.path(), "second.dump").await, first);

    let id = "5f1a2b3c4d5e6f7081920a01";
    let server = serve_store(&data).await;
    let (bob, welcome) = server.login("bob").await;
    let e = welcome.unread(id).unwrap();
    assert_eq!((e.unread, e.read_seq, e.last_seq), (2, 1, 3));
    let (_, welcome) = server.login("carol").await;
    assert_eq!(welcome.unread(id).unwrap().unread, 0);
    let page = bob.history(id, 0, 10).await.unwrap();
    let texts: Vec<&str> = page
        .messages
        .iter()
        .map(|m| std::str::from_utf8(&m.content).unwrap())
        .collect();
    assert_eq!(
        texts,
        vec![
            r#"{"_lctype":-1,"_lctext":"first"}"#,
            r#"{"_lctype":-1,"_lctext":"second"}"#,
            r#"{"_lctype":-1,"_lctext":"third"}"#
        ]
    );
    // Reading by a LeanCloud message id (native: mark_read takes seqs; the LeanCloud `read`
    // names the message).
    let mut c = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    c.opened("bob", None).await;
    c.send_read("bob", id, "Xq1Zr5bZR0CKm1JdCZ1ytx").await;
    let (_, welcome) = server.login("bob").await;
    assert_eq!(welcome.unread(id).unwrap().unread, 1);
}

/// LeanCloud's API is HTTPS: the importer speaks it, trusting Mozilla's roots and the CA
/// certificates given with `--ca-cert`; a server whose certificate it cannot verify is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_over_https_verifies_the_server_certificate() {
    use base64::Engine;
    let pki = crate::tls::TestPki::new("leancloud fixture");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    pki.write(&cert, &key);
    let acceptor = tidings::listener::tls::Acceptor::load(&cert, &key)
        .unwrap()
        .get();
    let f = Arc::new(fixture());
    let url = serve_with(f.clone(), Some(acceptor)).await;
    let ca = dir.path().join("ca.pem");
    let b64 = base64::engine::general_purpose::STANDARD.encode(&pki.ca);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    std::fs::write(
        &ca,
        format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            lines.join("\n")
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let base = [
        "import",
        "leancloud",
        "--url",
        &url,
        "--app-id",
        APP_ID,
        "--master-key",
        MASTER_KEY,
    ];
    // The test CA is not among Mozilla's roots.
    let (ok, err) = tidings(&data, &base).await;
    assert!(!ok && err.contains("TLS"), "{err}");
    assert_eq!(f.requests.load(Ordering::SeqCst), 0);
    let ca_arg = ca.to_str().unwrap();
    let with_ca: Vec<&str> = base.iter().copied().chain(["--ca-cert", ca_arg]).collect();
    let (ok, err) = tidings(&data, &with_ca).await;
    assert!(ok, "{err}");
    assert!(
        err.contains("imported 2 conversations (0 were there already)"),
        "{err}"
    );
}

/// The same import against a running server, through its admin API: the same conversations,
/// ids, history and read positions; a second run changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_into_a_running_server_goes_through_the_admin_api() {
    let f = Arc::new(fixture());
    let url = serve(f.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(|c| {
        c.admin_listen = "127.0.0.1:0".into();
        c.admin_api_keys = vec![crate::admin::KEY.into()];
        c.leancloud_app_id = Some(APP_ID.into());
        c.leancloud_master_key = Some(MASTER_KEY.into());
    })
    .await;
    let admin = format!("http://{}", server.running().admin_addr.unwrap());
    let args = [
        "import",
        "leancloud",
        "--url",
        &url,
        "--app-id",
        APP_ID,
        "--master-key",
        MASTER_KEY,
        "--admin-url",
        &admin,
        "--admin-key",
        crate::admin::KEY,
    ];
    // (The data directory is not opened: the running server's store is locked.)
    let (ok, err) = tidings(&dir.path().join("unused"), &args).await;
    assert!(ok, "{err}");
    assert!(
        err.contains(&format!(
            "imported 2 conversations (0 were there already), {} messages",
            LONG_COUNT + 4
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("not imported: {ROOM}: a chat room")),
        "{err}"
    );
    let (ok, err) = tidings(&dir.path().join("unused"), &args).await;
    assert!(ok, "{err}");
    assert!(
        err.contains(&format!(
            "imported 0 conversations (2 were there already), 0 messages ({} were there already)",
            LONG_COUNT + 4
        )),
        "{err}"
    );

    let (alice, welcome) = server.login("alice").await;
    for id in [GROUP, LONG] {
        let e = welcome.unread(id).unwrap_or_else(|| panic!("{id} listed"));
        assert_eq!(e.unread, 0, "{id}: everything imported counts as read");
    }
    let g = alice.get_conversation(GROUP).await.unwrap();
    assert_eq!(
        (g.id.as_str(), g.name.as_str(), g.owner.as_str()),
        (GROUP, "team", "alice")
    );
    let page = alice.history(GROUP, 0, 10).await.unwrap();
    let got: Vec<(u64, String, String, i64)> = page
        .messages
        .iter()
        .map(|m| (m.seq, m.id.clone(), m.sender.clone(), m.server_time))
        .collect();
    assert_eq!(
        got,
        vec![
            (1, msg_id(GROUP, 1), "alice".into(), T0 + 1000),
            (2, msg_id(GROUP, 2), "bob".into(), T0 + 2000),
            (3, msg_id(GROUP, 3), "carol".into(), T0 + 3000),
            (4, msg_id(GROUP, 4), "alice".into(), T0 + 3000),
        ]
    );
    assert_eq!(&page.messages[1].content[..], &[0u8, 1, 2, 255]);
    let ack = alice.send_text(LONG, "after the move").await.unwrap();
    assert_eq!(ack.seq, LONG_COUNT as u64 + 1);
}
