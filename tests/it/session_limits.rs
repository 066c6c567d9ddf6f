//! What one user may hold in the server's memory: will messages per session (count and bytes)
//! and live sessions per user, LeanCloud clients included.

use crate::harness::*;
use crate::leancloud::{APP_ID, MASTER_KEY};
use bytes::Bytes;
use futures_util::future::join_all;
use futures_util::{SinkExt, StreamExt};
use tidings::client::{Client, ClientError};
use tidings::leancloud::pb::{self as lc, CommandType as Cmd, GenericCommand, OpType as Op};
use tidings::leancloud::{FrameRef, LcProtocol, WireFrame};
use tidings::protocol::pb;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// The probe: 8 sessions of one user, a 60 KB will in each of 2,000 groups.
const SESSIONS: usize = 8;
const GROUPS: usize = 2_000;
const WILL_BYTES: usize = 60 << 10;

/// Resident memory of a process, bytes (`VmRSS` in `/proc/<pid>/status`).
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

fn will(conv: &str, content: Bytes) -> pb::client_frame::Body {
    pb::client_frame::Body::SetWill(pb::SetWill {
        conversation_id: conv.into(),
        r#type: 1,
        content,
        ..Default::default()
    })
}

/// Sets a will in every one of `convs` (32 requests in flight at a time); returns how many were
/// accepted and the refusals.
async fn set_wills(c: &Client, convs: &[String], content: &Bytes) -> (usize, Vec<ClientError>) {
    let mut accepted = 0;
    let mut refused = Vec::new();
    for chunk in convs.chunks(32) {
        let replies = join_all(chunk.iter().map(|id| c.request(will(id, content.clone())))).await;
        for r in replies {
            match r {
                Ok(_) => accepted += 1,
                Err(e) => refused.push(e),
            }
        }
    }
    (accepted, refused)
}

fn limit_refusal(e: &ClientError, setting: &str) -> bool {
    matches!(e, ClientError::Server { code: pb::ErrorCode::ErrorLimitExceeded, message }
        if message.contains(setting))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_cannot_fill_the_server_with_wills_or_sessions() {
    let dir = tempfile::tempdir().unwrap();
    // The memory caps are what is tested: the request rate limits (which would also slow
    // this probe down) are off.
    let server = Binary::serve(
        &dir.path().join("data"),
        &[
            "rate_limit_connection_per_sec=0",
            "rate_limit_user_per_sec=0",
        ],
    );
    let pid = server.pid();

    // Logged in one after another: the hub orders a user's sessions by login, and which one is
    // the oldest matters below.
    let mut sessions = Vec::with_capacity(SESSIONS);
    for _ in 0..SESSIONS {
        sessions.push(server.client("hoarder").await);
    }
    // 2,000 groups of one member, the hoarder.
    let mut groups = Vec::with_capacity(GROUPS);
    for chunk in (0..GROUPS).collect::<Vec<_>>().chunks(64) {
        let names: Vec<String> = chunk.iter().map(|i| format!("g{i}")).collect();
        let created = join_all(names.iter().map(|n| sessions[0].create_group(n, &[]))).await;
        groups.extend(created.into_iter().map(|g| g.unwrap().id));
    }
    let before = rss(pid);

    // Every session tries a 60 KB will in every group.
    let content = Bytes::from(vec![b'w'; WILL_BYTES]);
    // Not `within`: 16,000 requests of 60 KB take longer than its 20 s in a debug build when
    // nothing refuses them (before the caps).
    let all = join_all(sessions.iter().map(|c| set_wills(c, &groups, &content)));
    let results = tokio::time::timeout(std::time::Duration::from_secs(600), all)
        .await
        .expect("the wills within 10 minutes");
    let after = rss(pid);
    let accepted: Vec<usize> = results.iter().map(|r| r.0).collect();
    println!(
        "server RSS {} MiB before {SESSIONS} x {GROUPS} wills of {WILL_BYTES} bytes, {} MiB after; \
         accepted per session: {accepted:?}",
        before >> 20,
        after >> 20
    );

    // 256 KiB per session hold four 60 KB wills; the rest are refused, naming the setting.
    let per_session = (256 << 10) / (WILL_BYTES + groups[0].len());
    for (accepted, refused) in &results {
        assert_eq!(*accepted, per_session);
        assert_eq!(refused.len(), GROUPS - per_session);
        assert!(
            refused
                .iter()
                .all(|e| limit_refusal(e, "max_will_bytes_per_session")),
            "{:?}",
            refused.first()
        );
    }
    // The probe took the server from 28 MB to 1.06 GB; what the caps allow is 8 x 256 KiB.
    assert!(
        after < before + (64 << 20),
        "server RSS grew from {before} to {after} bytes"
    );

    // Small wills: at most 16 per session; replacing one at the cap is fine, ClearWill frees one.
    let small = server.client("hoarder").await;
    let tiny = Bytes::from_static(b"bye");
    let (accepted, refused) = set_wills(&small, &groups[..17], &tiny).await;
    assert_eq!(accepted, 16);
    assert!(
        limit_refusal(&refused[0], "max_wills_per_session"),
        "{refused:?}"
    );
    within(small.request(will(&groups[0], Bytes::from_static(b"replaced"))))
        .await
        .expect("replacing a will at the cap");
    within(small.clear_will(&groups[0])).await.unwrap();
    within(small.request(will(&groups[16], tiny.clone())))
        .await
        .expect("a will after ClearWill made room");

    // Sessions 10 to 16 are fine; the 17th closes the oldest (the first of the eight above)
    // with CLOSE_SESSION_LIMIT, whose wills are discarded, as on a replacement.
    let mut more = Vec::new();
    for _ in 0..7 {
        more.push(server.client("hoarder").await);
    }
    for c in sessions.iter().chain([&small]).chain(&more) {
        within(c.ping()).await.expect("16 sessions live");
    }
    let seventeenth = server.client("hoarder").await;
    let closed = within(sessions[0].closed()).await;
    assert_eq!(
        closed.code,
        Some(pb::CloseCode::CloseSessionLimit as u16),
        "{closed:?}"
    );
    within(seventeenth.ping()).await.unwrap();
    // No will of the closed session was sent: the hoarder's other sessions would get it.
    let mut second = sessions.into_iter().nth(1).unwrap();
    while let Some(p) = second.try_next_push() {
        assert!(
            !matches!(p.body, Some(pb::server_frame::Body::Message(_))),
            "{p:?}"
        );
    }
    assert_no_push(&mut second).await;

    server.signal(libc::SIGTERM);
    let (status, _) = server.wait().await;
    assert!(status.success());
}

// ---- LeanCloud: a LeanCloud client's sessions count too ----

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A LeanCloud socket driven by hand (binary protobuf, `lc.protobuf2.3`).
struct Lc {
    ws: Ws,
    next_i: i32,
}

fn cmd(c: Cmd, op: Option<Op>) -> GenericCommand {
    GenericCommand {
        cmd: Some(c as i32),
        op: op.map(|o| o as i32),
        ..Default::default()
    }
}

impl Lc {
    async fn connect(server: &TestServer) -> Lc {
        let p = LcProtocol::ProtobufV3;
        let mut req = format!("ws://{}/", server.running().addr)
            .into_client_request()
            .unwrap();
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", p.token().parse().unwrap());
        let (ws, _) = within(tokio_tungstenite::connect_async(req)).await.unwrap();
        Lc { ws, next_i: 1 }
    }

    /// The next command (panics if the socket closes).
    async fn recv(&mut self) -> GenericCommand {
        loop {
            match within(self.ws.next()).await {
                Some(Ok(WsMessage::Binary(b))) => {
                    let p = LcProtocol::ProtobufV3;
                    return tidings::leancloud::decode(p, FrameRef::Binary(&b)).unwrap();
                }
                Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => {}
                other => panic!("expected a command, got {other:?}"),
            }
        }
    }

    /// Sends `c` with a fresh `i`; returns the reply and the pushes read before it.
    async fn request(&mut self, mut c: GenericCommand) -> (GenericCommand, Vec<GenericCommand>) {
        let i = self.next_i;
        self.next_i += 1;
        c.i = Some(i);
        let WireFrame::Binary(b) = tidings::leancloud::encode(LcProtocol::ProtobufV3, &c) else {
            unreachable!("a binary protocol")
        };
        within(self.ws.send(WsMessage::Binary(b))).await.unwrap();
        let mut pushes = Vec::new();
        loop {
            let got = self.recv().await;
            if got.i == Some(i) {
                return (got, pushes);
            }
            pushes.push(got);
        }
    }

    async fn open(&mut self, peer: &str) {
        let t = tidings::clock::Clock::now_ms(&tidings::clock::SystemClock);
        let s = tidings::leancloud::sign::login_signature(MASTER_KEY, APP_ID, peer, t, "n");
        let (r, _) = self
            .request(GenericCommand {
                app_id: Some(APP_ID.into()),
                peer_id: Some(peer.into()),
                session_message: Some(lc::SessionCommand {
                    t: Some(t),
                    n: Some("n".into()),
                    s: Some(s),
                    ..Default::default()
                }),
                ..cmd(Cmd::Session, Some(Op::Open))
            })
            .await;
        assert_eq!(r.op, Some(Op::Opened as i32), "{r:?}");
    }
}

#[tokio::test]
async fn leancloud_sessions_count_toward_the_session_limit_and_wills_are_capped() {
    let server = TestServer::start_with(|c| {
        c.leancloud_app_id = Some(APP_ID.into());
        c.leancloud_master_key = Some(MASTER_KEY.into());
        c.max_sessions_per_user = 3;
        c.max_will_bytes_per_session = 1024;
    })
    .await;
    // Carol's oldest session is a LeanCloud client, on a socket that also carries dave.
    let mut socket = Lc::connect(&server).await;
    socket.open("carol").await;
    socket.open("dave").await;

    // A LeanCloud will over max_will_bytes_per_session: a failed ack (4301), documented.
    let erin = server.client("erin").await;
    let g = within(erin.create_group("team", &["carol", "dave"]))
        .await
        .unwrap();
    let direct = |msg: String| GenericCommand {
        peer_id: Some("carol".into()),
        direct_message: Some(lc::DirectCommand {
            cid: Some(g.id.clone()),
            msg: Some(msg),
            will: Some(true),
            ..Default::default()
        }),
        ..cmd(Cmd::Direct, None)
    };
    let (ack, _) = socket.request(direct("x".repeat(2048))).await;
    let ack = ack.ack_message.unwrap();
    assert_eq!(ack.code, Some(4301), "{ack:?}");
    let (ack, _) = socket.request(direct("see you".into())).await;
    assert_eq!(ack.ack_message.unwrap().code, None);

    // Two native sessions make three; a third native one closes the LeanCloud client only.
    let a = server.client("carol").await;
    let b = server.client("carol").await;
    within(a.ping()).await.unwrap();
    let c = server.client("carol").await;
    // The close was queued for the socket before that login was answered, and a socket writes
    // what is queued before it reads the next command: it comes before the echo's reply.
    let (_, pushes) = socket.request(cmd(Cmd::Echo, None)).await;
    let closed = pushes
        .into_iter()
        .find(|p| p.op == Some(Op::Closed as i32) && p.peer_id.as_deref() == Some("carol"))
        .expect("carol's LeanCloud client was closed");
    assert_eq!(closed.session_message.unwrap().code, Some(4111));
    // The socket and dave live on; carol's native sessions too.
    let (r, _) = socket
        .request(GenericCommand {
            peer_id: Some("dave".into()),
            conv_message: Some(lc::ConvCommand {
                cid: Some(g.id.clone()),
                ..Default::default()
            }),
            ..cmd(Cmd::Conv, Some(Op::Count))
        })
        .await;
    assert!(r.error_message.is_none(), "{r:?}");
    for s in [&a, &b, &c] {
        within(s.ping()).await.unwrap();
    }
    // The next native login closes the oldest native session with CLOSE_SESSION_LIMIT.
    let d = server.client("carol").await;
    assert_eq!(
        within(a.closed()).await.code,
        Some(pb::CloseCode::CloseSessionLimit as u16)
    );
    within(d.ping()).await.unwrap();
}
