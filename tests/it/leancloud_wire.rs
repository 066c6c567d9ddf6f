//! The LeanCloud dialect at the wire: a hand-driven LeanCloud client (this crate's codec over a
//! real WebSocket) for what the SDK scripts cannot easily show: device-tag conflicts between
//! sockets, session tokens, will messages, goaway, limits and malformed frames, and a native
//! client and a LeanCloud client in one conversation.

use crate::harness::*;
use crate::leancloud::{APP_ID, MASTER_KEY, lc_server_with, leancloud_server};
use crate::leancloud_http::notifications;
use futures_util::{SinkExt, StreamExt};
use tidings::leancloud::pb::{self as lc, CommandType as Cmd, GenericCommand, OpType as Op};
use tidings::leancloud::{FrameRef, LcProtocol, WireFrame};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A LeanCloud socket driven by hand.
pub(crate) struct Lc {
    ws: Ws,
    p: LcProtocol,
    next_i: i32,
    /// Pushes read while waiting for a reply.
    pushes: Vec<GenericCommand>,
}

/// How a socket ended.
#[derive(Debug)]
enum End {
    Closed(Option<u16>),
}

pub(crate) fn cmd(c: Cmd, op: Option<Op>) -> GenericCommand {
    GenericCommand {
        cmd: Some(c as i32),
        op: op.map(|o| o as i32),
        ..Default::default()
    }
}

/// A signed `session/open` of `peer` asking for the patches since `last_patch_time`.
pub(crate) fn open_since_patches(peer: &str, last_patch_time: i64) -> GenericCommand {
    let t = tidings::clock::Clock::now_ms(&tidings::clock::SystemClock);
    let s = tidings::leancloud::sign::login_signature(MASTER_KEY, APP_ID, peer, t, "nonce");
    GenericCommand {
        app_id: Some(APP_ID.into()),
        peer_id: Some(peer.into()),
        session_message: Some(lc::SessionCommand {
            t: Some(t),
            n: Some("nonce".into()),
            s: Some(s),
            last_patch_time: Some(last_patch_time),
            ..Default::default()
        }),
        ..cmd(Cmd::Session, Some(Op::Open))
    }
}

pub(crate) fn op_of(c: &GenericCommand) -> (Option<Cmd>, Option<Op>) {
    (
        c.cmd.and_then(|x| Cmd::try_from(x).ok()),
        c.op.and_then(|x| Op::try_from(x).ok()),
    )
}

impl Lc {
    pub(crate) async fn connect(server: &TestServer, p: LcProtocol) -> Lc {
        let mut req = format!("ws://{}/", server.running().addr)
            .into_client_request()
            .unwrap();
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", p.token().parse().unwrap());
        let (ws, resp) = within(tokio_tungstenite::connect_async(req)).await.unwrap();
        assert_eq!(
            resp.headers().get("Sec-WebSocket-Protocol").unwrap(),
            p.token()
        );
        Lc {
            ws,
            p,
            next_i: 1,
            pushes: Vec::new(),
        }
    }

    pub(crate) async fn send(&mut self, c: &GenericCommand) {
        let m = match tidings::leancloud::encode(self.p, c) {
            WireFrame::Binary(b) => WsMessage::Binary(b),
            WireFrame::Text(t) => WsMessage::Text(t.into()),
        };
        within(self.ws.send(m)).await.unwrap();
    }

    /// The next command, or how the socket ended.
    async fn recv(&mut self) -> Result<GenericCommand, End> {
        loop {
            match within(self.ws.next()).await {
                Some(Ok(WsMessage::Binary(b))) => {
                    // What the server sends may be larger than a command it reads (a `logs`
                    // page of long messages).
                    let decoded = tidings::leancloud::decode(self.p, FrameRef::Binary(&b))
                        .unwrap_or_else(|_| prost::Message::decode(&b[..]).unwrap());
                    return Ok(decoded);
                }
                Some(Ok(WsMessage::Text(t))) => {
                    return Ok(
                        tidings::leancloud::decode(self.p, FrameRef::Text(t.as_str())).unwrap(),
                    );
                }
                Some(Ok(WsMessage::Close(f))) => {
                    return Err(End::Closed(f.map(|f| u16::from(f.code))));
                }
                Some(Ok(_)) => continue,
                None | Some(Err(_)) => return Err(End::Closed(None)),
            }
        }
    }

    /// Sends `c` with a fresh `i` and returns the reply (pushes meanwhile are kept).
    pub(crate) async fn request(&mut self, mut c: GenericCommand) -> GenericCommand {
        let i = self.next_i;
        self.next_i += 1;
        c.i = Some(i);
        self.send(&c).await;
        loop {
            let got = self.recv().await.expect("open socket");
            if got.i == Some(i) {
                return got;
            }
            self.pushes.push(got);
        }
    }

    /// The reply to the command sent with `i`, whenever it comes (what else comes meanwhile is
    /// kept with the pushes).
    pub(crate) async fn reply_to(&mut self, i: i32) -> GenericCommand {
        if let Some(at) = self.pushes.iter().position(|c| c.i == Some(i)) {
            return self.pushes.remove(at);
        }
        loop {
            let got = self.recv().await.expect("open socket");
            if got.i == Some(i) {
                return got;
            }
            self.pushes.push(got);
        }
    }

    /// The pushes read so far while waiting for replies, taken.
    pub(crate) fn take_pushes(&mut self) -> Vec<GenericCommand> {
        std::mem::take(&mut self.pushes)
    }

    /// The next push (kept ones first).
    async fn push(&mut self) -> GenericCommand {
        if !self.pushes.is_empty() {
            return self.pushes.remove(0);
        }
        self.recv().await.expect("open socket")
    }

    /// A signed `session/open`; returns the reply.
    pub(crate) async fn open(&mut self, peer: &str, tag: Option<&str>) -> GenericCommand {
        let t = tidings::clock::Clock::now_ms(&tidings::clock::SystemClock);
        let s = tidings::leancloud::sign::login_signature(MASTER_KEY, APP_ID, peer, t, "nonce");
        self.request(GenericCommand {
            app_id: Some(APP_ID.into()),
            peer_id: Some(peer.into()),
            session_message: Some(lc::SessionCommand {
                t: Some(t),
                n: Some("nonce".into()),
                s: Some(s),
                tag: tag.map(Into::into),
                ua: Some("tidings-test".into()),
                ..Default::default()
            }),
            ..cmd(Cmd::Session, Some(Op::Open))
        })
        .await
    }

    /// A `read` up to message `mid` of `cid` (no reply), then a request behind it, so the read
    /// has been handled when this returns.
    pub(crate) async fn send_read(&mut self, peer: &str, cid: &str, mid: &str) {
        self.send(&GenericCommand {
            peer_id: Some(peer.into()),
            read_message: Some(lc::ReadCommand {
                convs: vec![lc::ReadTuple {
                    cid: cid.into(),
                    mid: Some(mid.into()),
                    timestamp: None,
                }],
                ..Default::default()
            }),
            ..cmd(Cmd::Read, None)
        })
        .await;
        self.request(GenericCommand {
            peer_id: Some(peer.into()),
            logs_message: Some(lc::LogsCommand {
                cid: Some(cid.into()),
                l: Some(1),
                ..Default::default()
            }),
            ..cmd(Cmd::Logs, None)
        })
        .await;
    }

    pub(crate) async fn opened(&mut self, peer: &str, tag: Option<&str>) -> lc::SessionCommand {
        let r = self.open(peer, tag).await;
        assert_eq!(op_of(&r), (Some(Cmd::Session), Some(Op::Opened)), "{r:?}");
        r.session_message.unwrap()
    }

    pub(crate) async fn start(&mut self, peer: &str, members: &[&str]) -> String {
        self.start_conv(
            peer,
            lc::ConvCommand {
                m: members.iter().map(|m| m.to_string()).collect(),
                ..Default::default()
            },
        )
        .await
    }

    /// `conv/start` as `peer`; the new conversation's id.
    pub(crate) async fn start_conv(&mut self, peer: &str, conv: lc::ConvCommand) -> String {
        let r = self
            .request(GenericCommand {
                peer_id: Some(peer.into()),
                conv_message: Some(conv),
                ..cmd(Cmd::Conv, Some(Op::Start))
            })
            .await;
        r.conv_message.unwrap().cid.unwrap()
    }

    pub(crate) async fn direct(
        &mut self,
        peer: &str,
        cid: &str,
        msg: &str,
        will: bool,
    ) -> lc::AckCommand {
        let r = self
            .request(GenericCommand {
                peer_id: Some(peer.into()),
                direct_message: Some(lc::DirectCommand {
                    cid: Some(cid.into()),
                    msg: Some(msg.into()),
                    will: will.then_some(true),
                    ..Default::default()
                }),
                ..cmd(Cmd::Direct, None)
            })
            .await;
        r.ack_message.unwrap()
    }

    /// Waits for the next push of this kind for `peer`, skipping others.
    pub(crate) async fn push_of(&mut self, c: Cmd, op: Option<Op>, peer: &str) -> GenericCommand {
        loop {
            let p = self.push().await;
            if op_of(&p) == (Some(c), op) && p.peer_id.as_deref() == Some(peer) {
                assert_eq!(p.service, Some(2), "IM pushes carry service 2");
                return p;
            }
        }
    }

    async fn closed(&mut self) -> Option<u16> {
        loop {
            match self.recv().await {
                Ok(_) => continue,
                Err(End::Closed(code)) => return code,
            }
        }
    }
}

#[tokio::test]
async fn a_newer_login_with_the_same_tag_closes_only_that_client() {
    let server = leancloud_server().await;
    let mut first = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    first.opened("alice", Some("Mobile")).await;
    first.opened("bob", None).await;
    let mut second = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    second.opened("alice", Some("Mobile")).await;

    let closed = first.push_of(Cmd::Session, Some(Op::Closed), "alice").await;
    let s = closed.session_message.unwrap();
    assert_eq!(s.code, Some(4111));
    assert_eq!(s.reason.as_deref(), Some("SESSION_CONFLICT"));
    // The socket and its other client live on.
    let pong = first.request(cmd(Cmd::Echo, None)).await;
    assert_eq!(op_of(&pong).0, Some(Cmd::Echo));
    let cid = first.start("bob", &["bob", "carol"]).await;
    assert!(
        first
            .direct("bob", &cid, "still here", false)
            .await
            .uid
            .is_some()
    );
    // Alice is no longer open on the first socket: a command for her there is refused.
    let refused = first
        .request(GenericCommand {
            peer_id: Some("alice".into()),
            ..cmd(Cmd::Conv, Some(Op::Count))
        })
        .await;
    assert_eq!(refused.error_message.unwrap().code, 4105);
    // Another tag, or none, does not conflict.
    let mut third = Lc::connect(&server, LcProtocol::Base64V3).await;
    third.opened("alice", Some("Desktop")).await;
    assert_no_lc_push(&mut second).await;
}

/// Proves no push is pending: an echo round trip follows anything already queued.
async fn assert_no_lc_push(c: &mut Lc) {
    c.request(cmd(Cmd::Echo, None)).await;
    assert!(c.pushes.is_empty(), "unexpected pushes: {:?}", c.pushes);
}

#[tokio::test]
async fn session_tokens_resume_and_bad_ones_get_4112() {
    let server = leancloud_server().await;
    let mut a = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    let s = a.opened("alice", Some("Mobile")).await;
    let st = s.st.expect("st");
    assert!(s.st_ttl.unwrap() > 0);
    drop(a);

    let resume = |st: String| GenericCommand {
        app_id: Some(APP_ID.into()),
        peer_id: Some("alice".into()),
        session_message: Some(lc::SessionCommand {
            r: Some(true),
            st: Some(st),
            ..Default::default()
        }),
        ..cmd(Cmd::Session, Some(Op::Open))
    };
    let mut b = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    let r = b.request(resume(st.clone())).await;
    assert_eq!(op_of(&r), (Some(Cmd::Session), Some(Op::Opened)), "{r:?}");
    // The token remembers the tag: a login with it replaces the resumed session.
    let mut c = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    c.opened("alice", Some("Mobile")).await;
    let closed = b.push_of(Cmd::Session, Some(Op::Closed), "alice").await;
    assert_eq!(closed.session_message.unwrap().code, Some(4111));

    // Tampered, for another client, or refreshed-then-reused by the wrong peer: 4112.
    let mut d = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    let tampered = st.replacen('.', "0.", 1);
    let mut other = resume(st.clone());
    other.peer_id = Some("mallory".into());
    for bad in [resume(tampered), resume("garbage".into()), other] {
        let r = d.request(bad).await;
        assert_eq!(op_of(&r), (Some(Cmd::Session), Some(Op::Closed)));
        assert_eq!(r.session_message.unwrap().code, Some(4112));
    }
    // Expired (the server's clock moves past the token's lifetime).
    server
        .clock
        .advance(server.config.leancloud_session_token_ttl_secs as i64 * 1000 + 1);
    let r = d.request(resume(st)).await;
    assert_eq!(r.session_message.unwrap().code, Some(4112));
}

/// A resume (`r: true` with `st`) continues its login: it replaces a stale session of the same
/// device, but when a later login took the device tag over, the resume is refused with 4111
/// and the later login stays.
#[tokio::test]
async fn a_resume_whose_device_was_taken_over_gets_4111_and_the_later_login_stays() {
    let server = leancloud_server().await;
    let resume = |st: String| GenericCommand {
        app_id: Some(APP_ID.into()),
        peer_id: Some("alice".into()),
        session_message: Some(lc::SessionCommand {
            r: Some(true),
            st: Some(st),
            ..Default::default()
        }),
        ..cmd(Cmd::Session, Some(Op::Open))
    };
    let mut phone = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    let first = phone.opened("alice", Some("Mobile")).await.st.unwrap();
    // A later login on another phone with the same tag takes over.
    server.clock.advance(1000);
    let mut other = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    let second = other.opened("alice", Some("Mobile")).await.st.unwrap();
    let closed = phone.push_of(Cmd::Session, Some(Op::Closed), "alice").await;
    assert_eq!(closed.session_message.unwrap().code, Some(4111));
    // The first phone reconnects with its token: refused, and the other phone stays.
    server.clock.advance(1000);
    let mut back = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    let r = back.request(resume(first)).await;
    assert_eq!(op_of(&r), (Some(Cmd::Session), Some(Op::Closed)), "{r:?}");
    assert_eq!(r.session_message.unwrap().code, Some(4111));
    assert_no_lc_push(&mut other).await;
    // The other phone's own token (its connection dropped uncleanly, say) resumes and
    // replaces the stale session.
    let mut again = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    let r = again.request(resume(second.clone())).await;
    assert_eq!(op_of(&r), (Some(Cmd::Session), Some(Op::Opened)), "{r:?}");
    let closed = other.push_of(Cmd::Session, Some(Op::Closed), "alice").await;
    assert_eq!(closed.session_message.unwrap().code, Some(4111));
    // A refreshed token continues the same login.
    let refreshed = again
        .request(GenericCommand {
            peer_id: Some("alice".into()),
            ..cmd(Cmd::Session, Some(Op::Refresh))
        })
        .await
        .session_message
        .unwrap()
        .st
        .unwrap();
    assert_ne!(refreshed, second);
    let mut last = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    let r = last.request(resume(refreshed)).await;
    assert_eq!(op_of(&r), (Some(Cmd::Session), Some(Op::Opened)), "{r:?}");
}

#[tokio::test]
async fn open_refuses_other_apps_bad_signatures_and_bad_ids() {
    let server = leancloud_server().await;
    let mut c = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    // Nothing but open and echo before a session exists.
    let r = c.request(cmd(Cmd::Conv, Some(Op::Count))).await;
    assert_eq!(r.error_message.unwrap().code, 4105);

    let mut bad = GenericCommand {
        app_id: Some("another-app".into()),
        peer_id: Some("alice".into()),
        ..cmd(Cmd::Session, Some(Op::Open))
    };
    let r = c.request(bad.clone()).await;
    assert_eq!(r.session_message.unwrap().code, Some(4100));
    bad.app_id = Some(APP_ID.into());
    let r = c.request(bad.clone()).await;
    assert_eq!(r.session_message.unwrap().code, Some(4102), "unsigned");
    bad.session_message = Some(lc::SessionCommand {
        t: Some(tidings::clock::Clock::now_ms(&server.clock)),
        n: Some("n".into()),
        s: Some("00".repeat(20)),
        ..Default::default()
    });
    let r = c.request(bad).await;
    assert_eq!(
        r.session_message.unwrap().code,
        Some(4102),
        "wrong signature"
    );
    for id in ["", "a|b", "tab\there", &"x".repeat(65)] {
        let r = c.open(id, None).await;
        assert_eq!(r.session_message.unwrap().code, Some(4103), "{id:?}");
    }
    // An old signature is refused too.
    server
        .clock
        .advance(server.config.leancloud_signature_ttl_secs as i64 * 1000 + 60_000);
    let r = c.open("alice", None).await;
    assert_eq!(
        r.session_message.unwrap().code,
        Some(4102),
        "stale signature"
    );
}

#[tokio::test]
async fn a_will_is_sent_when_the_socket_drops_and_dropped_on_close() {
    let server = leancloud_server().await;
    let mut bob = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    bob.opened("bob", None).await;
    let mut alice = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    alice.opened("alice", None).await;
    let cid = alice.start("alice", &["alice", "bob"]).await;
    bob.push_of(Cmd::Conv, Some(Op::Joined), "bob").await;

    let ack = alice.direct("alice", &cid, "gone for now", true).await;
    assert!(ack.code.is_none() && ack.t.is_some(), "{ack:?}");
    assert_no_lc_push(&mut bob).await;
    // An abrupt drop: the will goes out as alice's message.
    drop(alice);
    let will = bob.push_of(Cmd::Direct, None, "bob").await;
    let d = will.direct_message.unwrap();
    assert_eq!(d.msg.as_deref(), Some("gone for now"));
    assert_eq!(d.from_peer_id.as_deref(), Some("alice"));

    // A will then a clean session/close: nothing is sent.
    let mut alice = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    alice.opened("alice", None).await;
    alice.direct("alice", &cid, "never", true).await;
    let r = alice
        .request(GenericCommand {
            peer_id: Some("alice".into()),
            ..cmd(Cmd::Session, Some(Op::Close))
        })
        .await;
    assert_eq!(op_of(&r), (Some(Cmd::Session), Some(Op::Closed)));
    drop(alice);
    assert_no_lc_push(&mut bob).await;
}

#[tokio::test]
async fn limits_and_malformed_frames_close_only_their_socket() {
    let server = leancloud_server().await;
    let mut bystander = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    bystander.opened("bystander", None).await;

    let mut big = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    within(big.ws.send(WsMessage::Binary(vec![0u8; 6000].into())))
        .await
        .unwrap();
    assert_eq!(big.closed().await, Some(4109));

    let mut garbage = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    within(garbage.ws.send(WsMessage::Binary(vec![0xff; 40].into())))
        .await
        .unwrap();
    assert_eq!(garbage.closed().await, Some(1007));

    let mut wrong_kind = Lc::connect(&server, LcProtocol::Base64V3).await;
    within(wrong_kind.ws.send(WsMessage::Binary(vec![8, 14].into())))
        .await
        .unwrap();
    assert_eq!(wrong_kind.closed().await, Some(1003));

    // On the base64 form, text that is not base64 and text that is not even UTF-8 (which
    // tungstenite refuses before the codec sees it) close alike: 1007, invalid payload data.
    use tokio_tungstenite::tungstenite::protocol::frame::{Frame, coding};
    let not_utf8 = Frame::message(
        &b"CAE\xff\xfe"[..],
        coding::OpCode::Data(coding::Data::Text),
        true,
    );
    for m in [
        WsMessage::Text("!!not base64".into()),
        WsMessage::Frame(not_utf8),
    ] {
        let mut text = Lc::connect(&server, LcProtocol::Base64V3).await;
        text.opened("texter", None).await;
        let shown = format!("{m:?}");
        within(text.ws.send(m)).await.unwrap();
        assert_eq!(text.closed().await, Some(1007), "{shown}");
    }

    // An unknown command with a serial is answered, and the socket stays.
    let mut odd = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    within(odd.ws.send(WsMessage::Binary(vec![8, 99, 40, 7].into())))
        .await
        .unwrap();
    let r = odd.recv().await.unwrap();
    assert_eq!(r.i, Some(7));
    assert_eq!(op_of(&r).0, Some(Cmd::Error));
    odd.request(cmd(Cmd::Echo, None)).await;

    assert_no_lc_push(&mut bystander).await;
}

#[tokio::test]
async fn no_session_open_in_time_closes_with_4108() {
    let server = lc_server_with(|c| {
        c.login_timeout_ms = 200;
    })
    .await;
    let mut c = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    // Echoes do not count as logging in.
    c.request(cmd(Cmd::Echo, None)).await;
    assert_eq!(c.closed().await, Some(4108));
}

#[tokio::test]
async fn draining_sends_goaway_then_closes() {
    let server = leancloud_server().await;
    let mut c = Lc::connect(&server, LcProtocol::Base64V3).await;
    c.opened("alice", None).await;
    server.running().shutdown();
    let goaway = c.recv().await.unwrap();
    assert_eq!(op_of(&goaway).0, Some(Cmd::Goaway));
    assert_eq!(c.closed().await, Some(1001));
}

#[tokio::test]
async fn native_and_leancloud_clients_share_a_conversation() {
    let server = leancloud_server().await;
    let mut native = server.client("alice").await;
    let mut bob = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    bob.opened("bob", None).await;
    let team = within(native.create_group("team", &["bob"])).await.unwrap();
    let joined = bob.push_of(Cmd::Conv, Some(Op::Joined), "bob").await;
    assert_eq!(
        joined.conv_message.unwrap().init_by.as_deref(),
        Some("alice")
    );

    // A native text reaches LeanCloud as a typed text message.
    let ack = within(native.send_text(&team.id, "hi from native"))
        .await
        .unwrap();
    let d = bob
        .push_of(Cmd::Direct, None, "bob")
        .await
        .direct_message
        .unwrap();
    let typed: serde_json::Value = serde_json::from_str(d.msg.as_deref().unwrap()).unwrap();
    assert_eq!(typed["_lctype"], -1);
    assert_eq!(typed["_lctext"], "hi from native");
    assert_eq!(d.id.as_deref(), Some(ack.message_id.as_str()));
    assert_eq!(d.conv_type, Some(1), "a group's messages carry convType 1");

    // A LeanCloud file message reaches the native client byte for byte.
    let file = r#"{"_lctype":-6,"_lcfile":{"objId":"5f1","url":"https://files.example/a.pdf","metaData":{"size":1024}},"_lctext":"the report"}"#;
    bob.direct("bob", &team.id, file, false).await;
    let m = message(&mut native).await;
    assert_eq!(m.r#type, -6);
    assert_eq!(&m.content[..], file.as_bytes());
    assert_eq!(m.sender, "bob");

    // A native recall reaches LeanCloud as a -127 patch.
    within(native.recall(&team.id, &ack.message_id))
        .await
        .unwrap();
    let patch = bob
        .push_of(Cmd::Patch, Some(Op::Modify), "bob")
        .await
        .patch_message
        .unwrap();
    let item = &patch.patches[0];
    assert_eq!(item.mid.as_deref(), Some(ack.message_id.as_str()));
    assert_eq!(item.recall, Some(true));
    assert_eq!(item.data.as_deref(), Some(r#"{"_lctype":-127}"#));

    // History from either side holds the same messages.
    let logs = bob
        .request(GenericCommand {
            peer_id: Some("bob".into()),
            logs_message: Some(lc::LogsCommand {
                cid: Some(team.id.clone()),
                ..Default::default()
            }),
            ..cmd(Cmd::Logs, None)
        })
        .await
        .logs_message
        .unwrap()
        .logs;
    assert_eq!(logs.len(), 2);
    assert_eq!(logs[1].data.as_deref(), Some(file));
    let page = within(native.history(&team.id, 0, 10)).await.unwrap();
    assert_eq!(page.messages.len(), 2);
    assert!(page.messages[0].recalled);
}

/// `mentionAll` (@all) is kept in both directions, and marks the members' unread entries as
/// mentioned.
#[tokio::test]
async fn mention_all_crosses_dialects_and_marks_the_unread_entries() {
    let server = leancloud_server().await;
    let mut native = server.client("alice").await;
    let mut bob = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    bob.opened("bob", None).await;
    let team = within(native.create_group("team", &["bob", "carol"]))
        .await
        .unwrap();
    bob.push_of(Cmd::Conv, Some(Op::Joined), "bob").await;

    within(native.send(tidings::protocol::pb::SendMessage {
        conversation_id: team.id.clone(),
        content: "@all hi".into(),
        mention_all: true,
        mentions: vec!["bob".into()],
        ..Default::default()
    }))
    .await
    .unwrap();
    let d = bob
        .push_of(Cmd::Direct, None, "bob")
        .await
        .direct_message
        .unwrap();
    assert_eq!(d.mention_all, Some(true));
    assert_eq!(d.mention_pids, ["bob"]);

    // Carol was away: her unread entry says she was mentioned.
    let mut carol = Lc::connect(&server, LcProtocol::Base64V3).await;
    carol.opened("carol", None).await;
    let unread = carol.push_of(Cmd::Unread, None, "carol").await;
    let t = &unread.unread_message.unwrap().convs[0];
    assert_eq!((t.unread, t.mentioned), (1, Some(true)));

    // From LeanCloud to native, and into history on both sides.
    let r = bob
        .request(GenericCommand {
            peer_id: Some("bob".into()),
            direct_message: Some(lc::DirectCommand {
                cid: Some(team.id.clone()),
                msg: Some("everyone, look".into()),
                mention_all: Some(true),
                ..Default::default()
            }),
            ..cmd(Cmd::Direct, None)
        })
        .await;
    assert!(r.ack_message.unwrap().uid.is_some());
    let m = message(&mut native).await;
    assert!(m.mention_all);
    assert!(m.mentions.is_empty());
    let page = within(native.history(&team.id, 0, 10)).await.unwrap();
    assert_eq!(
        page.messages
            .iter()
            .map(|m| m.mention_all)
            .collect::<Vec<_>>(),
        [true, true]
    );
    let logs = carol
        .request(GenericCommand {
            peer_id: Some("carol".into()),
            logs_message: Some(lc::LogsCommand {
                cid: Some(team.id.clone()),
                ..Default::default()
            }),
            ..cmd(Cmd::Logs, None)
        })
        .await
        .logs_message
        .unwrap()
        .logs;
    assert_eq!(
        logs.iter().map(|l| l.mention_all).collect::<Vec<_>>(),
        [Some(true), Some(true)]
    );
}

/// A delivery step that overlaps a LeanCloud client's open may push a message its catch-up
/// already counted: the client gets it once.
#[tokio::test]
async fn a_push_repeating_what_the_open_counted_is_skipped() {
    use tidings::hub::{Delivery, Recipients};
    let server = leancloud_server().await;
    let mut alice = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    alice.opened("alice", None).await;
    let cid = alice.start("alice", &["alice", "bob"]).await;
    alice.direct("alice", &cid, "one", false).await;
    let native = server.client("alice").await;
    let one = within(native.history(&cid, 0, 10)).await.unwrap().messages[0].clone();

    // Bob opens while a delivery step is under way; the step then hands out the message his
    // unread count covers.
    let hub = &server.running().app.hub;
    hub.step_begins();
    let mut bob = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    bob.opened("bob", None).await;
    let unread = bob.push_of(Cmd::Unread, None, "bob").await;
    assert_eq!(unread.unread_message.unwrap().convs[0].unread, 1);
    hub.deliver(&Delivery {
        to: Recipients::User("bob".into()),
        frame: tidings::protocol::message_push_from_encoded(
            &prost::Message::encode_to_vec(&one),
            tidings::protocol::pb::ConversationKind::Group,
        ),
        user_seq: 0,
        except_session: 0,
    });
    hub.step_ends();

    // What bob gets next is the next message, not the repeat.
    alice.direct("alice", &cid, "two", false).await;
    let d = bob
        .push_of(Cmd::Direct, None, "bob")
        .await
        .direct_message
        .unwrap();
    assert_eq!(d.msg.as_deref(), Some("two"));
}

#[tokio::test]
async fn pushed_messages_carry_their_conversations_conv_type() {
    let server = leancloud_server().await;
    let mut bob = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    bob.opened("bob", None).await;
    let mut carol = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    carol.opened("carol", None).await;
    // A chat room (`transient`), joined by carol: convType 2.
    let room = bob
        .start_conv(
            "bob",
            lc::ConvCommand {
                transient: Some(true),
                ..Default::default()
            },
        )
        .await;
    carol
        .request(GenericCommand {
            peer_id: Some("carol".into()),
            conv_message: Some(lc::ConvCommand {
                cid: Some(room.clone()),
                m: vec!["carol".into()],
                ..Default::default()
            }),
            ..cmd(Cmd::Conv, Some(Op::Add))
        })
        .await;
    bob.direct("bob", &room, "to the room", false).await;
    let d = carol
        .push_of(Cmd::Direct, None, "carol")
        .await
        .direct_message
        .unwrap();
    assert_eq!(d.conv_type, Some(2));
    // A temporary conversation: convType 4.
    let temp = bob
        .start_conv(
            "bob",
            lc::ConvCommand {
                m: vec!["carol".into()],
                temp_conv: Some(true),
                ..Default::default()
            },
        )
        .await;
    bob.direct("bob", &temp, "just us", false).await;
    let d = carol
        .push_of(Cmd::Direct, None, "carol")
        .await
        .direct_message
        .unwrap();
    assert_eq!(
        (d.cid.as_deref(), d.conv_type),
        (Some(temp.as_str()), Some(4))
    );
}

#[tokio::test]
async fn an_expired_temporary_conversation_answers_4303_without_a_reason() {
    let server = leancloud_server().await;
    let mut c = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    c.opened("alice", None).await;
    let r = c
        .request(GenericCommand {
            conv_message: Some(lc::ConvCommand {
                m: vec!["alice".into(), "bob".into()],
                temp_conv: Some(true),
                temp_conv_ttl: Some(60),
                ..Default::default()
            }),
            ..cmd(Cmd::Conv, Some(Op::Start))
        })
        .await;
    let started = r.conv_message.unwrap();
    let cid = started.cid.unwrap();
    assert!(cid.starts_with("_tmp:"));
    assert_eq!(started.temp_conv_ttl, Some(60));
    assert!(c.direct("alice", &cid, "hi", false).await.uid.is_some());

    server.clock.advance(61_000);
    let ack = c.direct("alice", &cid, "too late", false).await;
    assert_eq!(ack.code, Some(4303));
    assert_eq!(
        ack.reason, None,
        "no reason, so the SDK says TEMPORARY_CONVERSATION_EXPIRED"
    );
    let rows = c
        .request(GenericCommand {
            conv_message: Some(lc::ConvCommand {
                temp_conv_ids: vec![cid.clone()],
                ..Default::default()
            }),
            ..cmd(Cmd::Conv, Some(Op::Query))
        })
        .await
        .conv_message
        .unwrap()
        .results
        .unwrap()
        .data;
    assert_eq!(
        rows, "[]",
        "an expired temporary conversation is simply absent"
    );
}

#[tokio::test]
async fn opening_pushes_the_unread_counts() {
    let server = leancloud_server().await;
    let mut alice = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    alice.opened("alice", None).await;
    let cid = alice.start("alice", &["alice", "bob"]).await;
    let first = alice.direct("alice", &cid, "one", false).await;
    let second = alice.direct("alice", &cid, "two", false).await;
    assert!(first.uid.is_some());

    let mut bob = Lc::connect(&server, LcProtocol::Base64V3).await;
    bob.opened("bob", None).await;
    let unread = bob.push_of(Cmd::Unread, None, "bob").await;
    let u = unread.unread_message.unwrap();
    assert!(u.notif_time.is_some());
    assert_eq!(u.convs.len(), 1);
    let t = &u.convs[0];
    assert_eq!(t.cid, cid);
    assert_eq!(t.unread, 2);
    assert_eq!(t.mid, second.uid);
    assert_eq!(t.from.as_deref(), Some("alice"));
    assert_eq!(t.data.as_deref(), Some("two"));
    assert_eq!(t.conv_type, Some(1));
}

/// The `unread` push is bounded like the native summary: conversations among the first
/// `login_summary_max` of the list (the most recently active).
#[tokio::test]
async fn the_unread_push_covers_the_most_recent_login_summary_max_conversations() {
    let server = lc_server_with(|c| {
        c.login_summary_max = 2;
    })
    .await;
    let mut alice = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    alice.opened("alice", None).await;
    let mut cids = Vec::new();
    for _ in 0..3 {
        let cid = alice.start("alice", &["alice", "bob"]).await;
        assert!(alice.direct("alice", &cid, "hi", false).await.uid.is_some());
        server.clock.advance(1_000);
        cids.push(cid);
    }
    let mut bob = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    bob.opened("bob", None).await;
    let u = bob
        .push_of(Cmd::Unread, None, "bob")
        .await
        .unread_message
        .unwrap();
    let mut got: Vec<&str> = u.convs.iter().map(|t| t.cid.as_str()).collect();
    got.sort();
    let mut newest = vec![cids[1].as_str(), cids[2].as_str()];
    newest.sort();
    assert_eq!(got, newest);
}

#[tokio::test]
async fn protocol_1_clients_get_their_offline_messages_instead_of_counts() {
    let server = leancloud_server().await;
    let mut alice = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    alice.opened("alice", None).await;
    let cid = alice.start("alice", &["alice", "bob"]).await;
    for text in ["one", "two", "three"] {
        alice.direct("alice", &cid, text, false).await;
    }
    let mut bob = Lc::connect(&server, LcProtocol::ProtobufV1).await;
    bob.opened("bob", None).await;
    let mut got = Vec::new();
    while got.len() < 3 {
        let p = bob.push().await;
        assert_ne!(op_of(&p).0, Some(Cmd::Unread), "{p:?}");
        if op_of(&p).0 == Some(Cmd::Direct) {
            let d = p.direct_message.unwrap();
            assert_eq!(d.offline, Some(true));
            got.push((d.msg.unwrap(), d.has_more));
        }
    }
    assert_eq!(
        got,
        [
            ("one".to_string(), Some(true)),
            ("two".to_string(), Some(true)),
            ("three".to_string(), Some(false))
        ]
    );
    assert_no_lc_push(&mut bob).await;
}

async fn query_rows(c: &mut Lc, peer: &str, by_id: Option<&str>, temp: Option<&str>) -> String {
    let conv_message = lc::ConvCommand {
        r#where: by_id.map(|id| lc::JsonObjectMessage {
            data: serde_json::json!({ "objectId": id }).to_string(),
        }),
        temp_conv_ids: temp.into_iter().map(Into::into).collect(),
        ..Default::default()
    };
    c.request(GenericCommand {
        peer_id: Some(peer.into()),
        conv_message: Some(conv_message),
        ..cmd(Cmd::Conv, Some(Op::Query))
    })
    .await
    .conv_message
    .unwrap()
    .results
    .unwrap()
    .data
}

#[tokio::test]
async fn open_groups_show_metadata_to_leancloud_clients_only() {
    for open in [true, false] {
        let server = lc_server_with(|c| {
            c.leancloud_open_conversations = open;
        })
        .await;
        let mut c = Lc::connect(&server, LcProtocol::ProtobufV3).await;
        c.opened("alice", None).await;
        c.opened("carol", None).await;
        let group = c.start("alice", &["alice", "bob"]).await;
        let temp = c
            .request(GenericCommand {
                peer_id: Some("alice".into()),
                conv_message: Some(lc::ConvCommand {
                    m: vec!["alice".into(), "bob".into()],
                    temp_conv: Some(true),
                    ..Default::default()
                }),
                ..cmd(Cmd::Conv, Some(Op::Start))
            })
            .await
            .conv_message
            .unwrap()
            .cid
            .unwrap();

        let rows: serde_json::Value =
            serde_json::from_str(&query_rows(&mut c, "carol", Some(&group), None).await).unwrap();
        if open {
            assert_eq!(rows[0]["objectId"], group);
            assert_eq!(rows[0]["m"], serde_json::json!(["alice", "bob"]));
        } else {
            assert_eq!(rows, serde_json::json!([]));
        }
        // Temporary conversations and messages never.
        assert_eq!(query_rows(&mut c, "carol", None, Some(&temp)).await, "[]");
        let logs = c
            .request(GenericCommand {
                peer_id: Some("carol".into()),
                logs_message: Some(lc::LogsCommand {
                    cid: Some(group.clone()),
                    ..Default::default()
                }),
                ..cmd(Cmd::Logs, None)
            })
            .await;
        assert!(logs.error_message.is_some(), "{logs:?}");
        // The native protocol shows non-members nothing, whatever the setting.
        let native = server.client("carol").await;
        let err = within(native.get_conversation(&group)).await.unwrap_err();
        assert_eq!(
            err.code(),
            Some(tidings::protocol::pb::ErrorCode::ErrorNotAMember)
        );
        let err = within(native.add_members(&group, &["carol"]))
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Some(tidings::protocol::pb::ErrorCode::ErrorNotAMember)
        );
    }
}

/// `conv/query` as `peer` with a `where` condition; the rows answered (at most 100).
async fn query_where(c: &mut Lc, peer: &str, condition: serde_json::Value) -> serde_json::Value {
    query_limited(c, peer, condition, 100).await
}

/// `conv/query` as `peer` with a `where` condition and a `limit`; the rows answered.
async fn query_limited(
    c: &mut Lc,
    peer: &str,
    condition: serde_json::Value,
    limit: i32,
) -> serde_json::Value {
    let r = c
        .request(GenericCommand {
            peer_id: Some(peer.into()),
            conv_message: Some(lc::ConvCommand {
                r#where: Some(lc::JsonObjectMessage {
                    data: condition.to_string(),
                }),
                limit: Some(limit),
                ..Default::default()
            }),
            ..cmd(Cmd::Conv, Some(Op::Query))
        })
        .await;
    serde_json::from_str(&r.conv_message.unwrap().results.unwrap().data).unwrap()
}

fn ids(rows: &serde_json::Value) -> Vec<String> {
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| r["objectId"].as_str().unwrap().to_owned())
        .collect()
}

/// A condition that names neither ids nor members walks the conversations anyone may find,
/// newest first, at most `leancloud_query_scan_max` of them: open groups, chat rooms (alone
/// for `tr: true`), never direct or temporary conversations. A non-member's row says when the
/// last message was sent (`lm`), not what it was. With groups not open, the client's own.
#[tokio::test]
async fn a_query_without_members_walks_what_anyone_may_find_newest_first() {
    for open in [true, false] {
        let server = lc_server_with(|c| {
            c.leancloud_query_scan_max = 3;
            c.leancloud_open_conversations = open;
        })
        .await;
        let mut c = Lc::connect(&server, LcProtocol::ProtobufV3).await;
        c.opened("alice", None).await;
        c.opened("carol", None).await;
        let room = c
            .start_conv(
                "alice",
                lc::ConvCommand {
                    transient: Some(true),
                    ..Default::default()
                },
            )
            .await;
        let mut groups = Vec::new();
        for _ in 0..4 {
            groups.push(c.start("alice", &["alice", "bob"]).await);
        }
        // Newer still: a direct conversation (native) and a temporary one.
        let native = server.client("alice").await;
        within(native.create_direct("bob")).await.unwrap();
        c.start_conv(
            "alice",
            lc::ConvCommand {
                m: vec!["alice".into(), "carol".into()],
                temp_conv: Some(true),
                ..Default::default()
            },
        )
        .await;
        let ack = c.direct("alice", &groups[3], "hello", false).await;
        assert!(ack.uid.is_some(), "{ack:?}");

        let everything = serde_json::json!({});
        let rows = query_where(&mut c, "carol", everything.clone()).await;
        let rooms = query_where(&mut c, "carol", serde_json::json!({"tr": true})).await;
        assert_eq!(ids(&rooms), vec![room.clone()], "open: {open}");
        if !open {
            // Groups are not open: what carol is in (the temporary conversation), and rooms.
            assert_eq!(rows.as_array().unwrap().len(), 2, "{rows}");
            assert_eq!(rows[0]["temp"], true, "{rows}");
            assert_eq!(rows[1]["objectId"], room.as_str(), "{rows}");
            continue;
        }
        // The newest three groups; the room is older than them, the others never listed.
        assert_eq!(
            ids(&rows),
            vec![groups[3].clone(), groups[2].clone(), groups[1].clone()]
        );
        // Carol is no member: when the last message was sent, not what it was.
        assert_eq!(rows[0]["lm"]["__type"], "Date", "{rows}");
        assert!(rows[0].get("msg").is_none(), "{rows}");
        assert!(rows[1].get("lm").is_none(), "{rows}");
        // A member sees the message.
        let mine = query_where(&mut c, "alice", serde_json::json!({"objectId": groups[3]})).await;
        assert_eq!(mine[0]["msg_from"], "alice", "{mine}");
        assert_eq!(mine[0]["lm"], rows[0]["lm"], "{mine}");
        // Ids are looked at up to the cap too.
        let pinned = query_where(
            &mut c,
            "carol",
            serde_json::json!({"objectId": {"$in": groups}}),
        )
        .await;
        assert_eq!(
            ids(&pinned),
            vec![groups[0].clone(), groups[1].clone(), groups[2].clone()]
        );
        // Sorted by `lm`, the active group comes first even for a non-member.
        let newest = [groups[1].clone(), groups[2].clone(), groups[3].clone()];
        let q: serde_json::Value = {
            let r = c
                .request(GenericCommand {
                    peer_id: Some("carol".into()),
                    conv_message: Some(lc::ConvCommand {
                        r#where: Some(lc::JsonObjectMessage {
                            data: serde_json::json!({"objectId": {"$in": newest}}).to_string(),
                        }),
                        sort: Some("-lm".into()),
                        limit: Some(1),
                        ..Default::default()
                    }),
                    ..cmd(Cmd::Conv, Some(Op::Query))
                })
                .await;
            serde_json::from_str(&r.conv_message.unwrap().results.unwrap().data).unwrap()
        };
        assert_eq!(ids(&q), vec![groups[3].clone()]);
        // A deleted group leaves the walk at once.
        let admin = within(native.delete_conversation(&groups[3], false)).await;
        assert!(admin.is_ok(), "{admin:?}");
        let rows = query_where(&mut c, "carol", everything).await;
        assert_eq!(
            ids(&rows),
            vec![groups[2].clone(), groups[1].clone(), groups[0].clone()]
        );
    }
}

#[tokio::test]
async fn a_socket_holds_at_most_leancloud_max_clients_per_socket_clients() {
    let server = lc_server_with(|c| {
        c.leancloud_max_clients_per_socket = 3;
    })
    .await;
    let mut c = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    for peer in ["a", "b", "c"] {
        c.opened(peer, None).await;
    }
    let r = c.open("d", None).await;
    assert_eq!(r.session_message.unwrap().code, Some(4113));
    // Reopening one already open is not a new client; closing one makes room.
    c.opened("a", None).await;
    c.request(GenericCommand {
        peer_id: Some("b".into()),
        ..cmd(Cmd::Session, Some(Op::Close))
    })
    .await;
    c.opened("d", None).await;
}

#[tokio::test]
async fn a_socket_whose_clients_all_closed_does_not_live_on() {
    let server = lc_server_with(|c| {
        c.ping_interval_ms = 100;
        c.idle_timeout_ms = 400;
    })
    .await;
    let mut c = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    c.opened("alice", None).await;
    c.request(GenericCommand {
        peer_id: Some("alice".into()),
        ..cmd(Cmd::Session, Some(Op::Close))
    })
    .await;
    // tungstenite answers the server's pings while this reads, so only the rule above ends it.
    assert_eq!(c.closed().await, Some(4108));
}

/// A store written by format 1 (before the version key) is upgraded when the server starts:
/// its data reads as before, and the edits and recalls it holds are in the new patch index, so
/// a client whose `lastPatchTime` is older gets them replayed.
#[tokio::test]
async fn a_format_1_store_is_upgraded_at_start_and_its_old_edits_replay() {
    old_store_upgrades_and_replays("store-v1").await;
}

/// The same for a store written by format 2 (before aliases): it opens as format 3 with its
/// data, patch index included, as format 2 wrote it.
#[tokio::test]
async fn a_format_2_store_is_upgraded_at_start_and_its_old_edits_replay() {
    old_store_upgrades_and_replays("store-v2").await;
}

/// The same for a store written by format 3 (before the webhook outbox).
#[tokio::test]
async fn a_format_3_store_is_upgraded_at_start_and_its_old_edits_replay() {
    old_store_upgrades_and_replays("store-v3").await;
}

/// The same for a store written by format 4 (before user blocks and profiles).
#[tokio::test]
async fn a_format_4_store_is_upgraded_at_start_and_its_old_edits_replay() {
    old_store_upgrades_and_replays("store-v4").await;
}

/// The same for a store written by format 5 (before kept message versions and silent
/// messages).
#[tokio::test]
async fn a_format_5_store_is_upgraded_at_start_and_its_old_edits_replay() {
    old_store_upgrades_and_replays("store-v5").await;
}

/// The same for a store written by format 6 (before the by-kind index and the conversations'
/// event logs).
#[tokio::test]
async fn a_format_6_store_is_upgraded_at_start_and_its_old_edits_replay() {
    old_store_upgrades_and_replays("store-v6").await;
}

async fn old_store_upgrades_and_replays(fixture: &str) {
    let dir = tempfile::tempdir().unwrap();
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(fixture)
        .join("tidings.redb");
    std::fs::copy(fixture, dir.path().join("tidings.redb")).unwrap();
    let data_dir = dir.path().to_path_buf();
    let server = TestServer::start_with(|c| {
        c.data_dir = data_dir;
        c.leancloud_app_id = Some(APP_ID.into());
        c.leancloud_master_key = Some(MASTER_KEY.into());
    })
    .await;
    let mut c = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    let r = c.request(open_since_patches("bob", 1)).await;
    assert_eq!(op_of(&r), (Some(Cmd::Session), Some(Op::Opened)), "{r:?}");
    let p = c.push_of(Cmd::Patch, Some(Op::Modify), "bob").await;
    let patches = p.patch_message.unwrap().patches;
    let got: Vec<(String, Option<bool>, Option<String>)> = patches
        .into_iter()
        .map(|p| (p.mid.unwrap(), p.recall, p.data))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "00000000000000010000000000000002".into(),
                Some(false),
                Some(r#"{"_lctext":"two, edited","_lctype":-1}"#.into())
            ),
            (
                "00000000000000010000000000000003".into(),
                Some(true),
                Some(r#"{"_lctype":-127}"#.into())
            ),
        ]
    );
    // The history is what format 1 stored.
    let r = c
        .request(GenericCommand {
            peer_id: Some("bob".into()),
            logs_message: Some(lc::LogsCommand {
                cid: Some("0000000000000001".into()),
                l: Some(10),
                ..Default::default()
            }),
            ..cmd(Cmd::Logs, None)
        })
        .await;
    let logs = r.logs_message.unwrap().logs;
    assert_eq!(logs.len(), 4, "{logs:?}");
    assert_eq!(
        logs[3].data.as_deref(),
        Some(r#"{"_lctext":"four","_lctype":-1}"#)
    );
    // The upgrade indexed the old group: a client in none finds it without naming it.
    c.opened("dave", None).await;
    let rows = query_where(&mut c, "dave", serde_json::json!({})).await;
    assert_eq!(ids(&rows), vec!["0000000000000001".to_owned()], "{rows}");
}

/// LeanCloud clients are charged to the same buckets: a send over the limit is acked with 4116
/// `MESSAGE_SENT_QUOTA_EXCEEDED`, another command answered 4113 `APP_QUOTA_EXCEEDED`, both
/// saying when to retry; the server's clock moving on lets them through again.
#[tokio::test]
async fn leancloud_commands_over_the_rate_limit_are_refused_with_4116_and_4113() {
    let server = lc_server_with(|c| {
        c.rate_limit_connection_per_sec = 10;
        c.rate_limit_connection_burst = 10;
    })
    .await;
    let mut c = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    c.opened("alice", None).await;
    let cid = c.start("alice", &["alice", "bob"]).await; // 5 tokens
    for n in 0..5 {
        let ack = c.direct("alice", &cid, "hi", false).await;
        assert!(ack.uid.is_some(), "send {n}: {ack:?}");
    }
    let ack = c.direct("alice", &cid, "one too many", false).await;
    assert_eq!(ack.code, Some(4116), "{ack:?}");
    let count = GenericCommand {
        peer_id: Some("alice".into()),
        conv_message: Some(lc::ConvCommand {
            cid: Some(cid.clone()),
            ..Default::default()
        }),
        ..cmd(Cmd::Conv, Some(Op::Count))
    };
    let e = c.request(count.clone()).await.error_message.unwrap();
    assert_eq!(e.code, 4113, "{e:?}");
    assert!(e.detail.unwrap_or_default().contains("retry after 100 ms"));
    server.clock.advance(100);
    let r = c.request(count).await;
    assert!(r.error_message.is_none(), "{r:?}");
    // Echo (the SDK's heartbeat) costs the connection one token, not the user: a flood of
    // them is refused with 4113 like the rest, also before any client is open.
    server.clock.advance(1_000);
    for _ in 0..10 {
        assert_eq!(
            op_of(&c.request(cmd(Cmd::Echo, None)).await).0,
            Some(Cmd::Echo)
        );
    }
    let e = c.request(cmd(Cmd::Echo, None)).await.error_message.unwrap();
    assert_eq!(e.code, 4113, "{e:?}");
    let mut fresh = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    for _ in 0..10 {
        fresh.request(cmd(Cmd::Echo, None)).await;
    }
    let e = fresh
        .request(cmd(Cmd::Echo, None))
        .await
        .error_message
        .unwrap();
    assert_eq!(e.code, 4113, "{e:?}");
}

/// `/1.1/rtm/notifications` reads the client's event log: each answer is charged to the user's
/// request bucket like a page of history; over it, 429 with 4113 `APP_QUOTA_EXCEEDED`.
#[tokio::test]
async fn missed_notifications_are_charged_to_the_users_rate_limit() {
    let server = lc_server_with(|c| {
        c.rate_limit_user_per_sec = 5;
        c.rate_limit_user_burst = 10;
    })
    .await;
    let mut c = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    let st = c.opened("alice", None).await.st.unwrap();
    // Opening costs a login (the whole burst of 10); two seconds refill it.
    server.clock.advance(2_000);
    let addr = server.running().addr;
    for n in 0..2 {
        let a = notifications(addr, "alice", 0, &st).await;
        assert_eq!(a.status, 200, "answer {n}: {a:?}");
    }
    let a = notifications(addr, "alice", 0, &st).await;
    assert_eq!(a.status, 429, "{a:?}");
    assert_eq!(a.json()["code"], 4113);
    server.clock.advance(1_000);
    let a = notifications(addr, "alice", 0, &st).await;
    assert_eq!(a.status, 200, "{a:?}");
}

#[tokio::test]
async fn a_backend_disconnecting_a_user_closes_only_their_client_with_4115() {
    let server = TestServer::start_with(|c| {
        c.leancloud_app_id = Some(crate::leancloud::APP_ID.into());
        c.leancloud_master_key = Some(crate::leancloud::MASTER_KEY.into());
        c.admin_listen = "127.0.0.1:0".into();
        c.admin_api_keys = vec![crate::admin::KEY.into()];
    })
    .await;
    let mut socket = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    socket.opened("alice", None).await;
    socket.opened("bob", None).await;
    let r = crate::admin::ok(&server, "POST", "/v1/users/alice/disconnect", None).await;
    assert_eq!(r["closed"], 1);
    let closed = socket
        .push_of(Cmd::Session, Some(Op::Closed), "alice")
        .await;
    let s = closed.session_message.unwrap();
    assert_eq!(
        (s.code, s.reason.as_deref()),
        (Some(4115), Some("KICKED_BY_APP"))
    );
    // Bob's client on the same socket lives on.
    let pong = socket.request(cmd(Cmd::Echo, None)).await;
    assert_eq!(op_of(&pong).0, Some(Cmd::Echo));
    assert_no_lc_push(&mut socket).await;
}

/// `session/open` is a login: charged to the user's bucket like a native one (its unread push is
/// a page of the list); over it the client is not opened (`session/closed` 4113
/// `APP_QUOTA_EXCEEDED`, when to retry in `detail`), and the socket and its other clients stay.
#[tokio::test]
async fn session_opens_over_the_users_rate_limit_are_refused_with_4113() {
    let server = lc_server_with(|c| {
        c.rate_limit_user_per_sec = 200;
        c.rate_limit_user_burst = 400;
    })
    .await;
    let mut c = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    c.opened("bob", None).await;
    // 400 tokens at 20 a login: 20 opens of alice pass (each open of an open client starts it
    // afresh), the 21st is refused for the 100 ms 20 tokens take.
    for n in 0..20 {
        let r = c.open("alice", None).await;
        assert_eq!(
            op_of(&r),
            (Some(Cmd::Session), Some(Op::Opened)),
            "open {n}: {r:?}"
        );
    }
    let r = c.open("alice", None).await;
    assert_eq!(op_of(&r), (Some(Cmd::Session), Some(Op::Closed)), "{r:?}");
    let s = r.session_message.unwrap();
    assert_eq!(s.code, Some(4113), "{s:?}");
    assert!(
        s.detail.unwrap_or_default().contains("retry after 100 ms"),
        "when to retry"
    );
    // Bob, another user on the same socket, is served.
    let r = c.request(GenericCommand {
        peer_id: Some("bob".into()),
        ..cmd(Cmd::Echo, None)
    });
    assert_eq!(op_of(&r.await).0, Some(Cmd::Echo));
    server.clock.advance(100);
    c.opened("alice", None).await;
}

/// `conv/query` over 100,000 groups: a condition that names neither ids nor members looks at
/// the newest `leancloud_query_scan_max` (1000) and no further, whatever it asks; ids reach
/// any of them. Prints how long each query took, cold (conversations read from the store)
/// and again (in memory): docs/leancloud.md quotes a run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_over_100000_groups_looks_at_the_newest_scan_max() {
    use tidings::protocol::pb::{ConversationKind, ConversationRecord, MemberRecord};
    use tidings::store::{Counter, Op, UserId};
    const GROUPS: u64 = 100_000;
    let dir = tempfile::tempdir().unwrap();
    let seeding = std::time::Instant::now();
    {
        let store = tidings::store::open("redb", dir.path(), 64 << 20).unwrap();
        let all: Vec<u64> = (1..=GROUPS).collect();
        for chunk in all.chunks(10_000) {
            let ops: Vec<Op> = chunk
                .iter()
                .flat_map(|&n| {
                    [
                        Op::PutConversation {
                            conv: n,
                            record: ConversationRecord {
                                kind: ConversationKind::Group as i32,
                                name: format!("g{n}"),
                                owner: format!("u{n}"),
                                created_at: n as i64,
                                ..Default::default()
                            },
                        },
                        Op::PutMember {
                            conv: n,
                            user: UserId::from(format!("u{n}")),
                            record: MemberRecord {
                                joined_at: n as i64,
                                join_order: 1,
                                ..Default::default()
                            },
                        },
                    ]
                })
                .collect();
            store.commit(&ops).unwrap();
        }
        store
            .commit(&[Op::SetCounter {
                counter: Counter::Conversation,
                value: GROUPS,
            }])
            .unwrap();
        store.flush().unwrap();
    }
    eprintln!("seeded {GROUPS} groups in {:?}", seeding.elapsed());
    let data_dir = dir.path().to_path_buf();
    let server = TestServer::start_with(|c| {
        c.data_dir = data_dir;
        c.leancloud_app_id = Some(APP_ID.into());
        c.leancloud_master_key = Some(MASTER_KEY.into());
    })
    .await;
    let mut c = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    c.opened("dave", None).await;
    let id = |n: u64| format!("{n:016x}");
    let newest: Vec<String> = (0..10).map(|k| id(GROUPS - k)).collect();
    let cases = [
        ("everything (the first 10)", serde_json::json!({}), newest),
        (
            "a name among the newest 1000",
            serde_json::json!({"name": format!("g{}", GROUPS - 500)}),
            vec![id(GROUPS - 500)],
        ),
        (
            "a name older than the newest 1000",
            serde_json::json!({"name": "g1"}),
            vec![],
        ),
        (
            "a regex nothing matches",
            serde_json::json!({"name": {"$regex": "^nothing"}}),
            vec![],
        ),
        (
            "the oldest by id",
            serde_json::json!({"objectId": id(1)}),
            vec![id(1)],
        ),
    ];
    for round in ["cold", "warm"] {
        for (what, condition, want) in &cases {
            let started = std::time::Instant::now();
            let rows = query_limited(&mut c, "dave", condition.clone(), 10).await;
            let took = started.elapsed();
            assert_eq!(&ids(&rows), want, "{what}");
            eprintln!("conv/query over {GROUPS} groups, {what}, {round}: {took:?}");
        }
    }
}

/// What the other members of a client's groups went through reaches it through
/// `/1.1/rtm/notifications` from each conversation's own log, merged with the client's own
/// log, oldest first: others joining (`members_joined`), leaving or removed (`members_left`),
/// updates; never its own joining again, nothing from before it joined. A conversation keeps
/// its newest `conversation_event_log_retention` events, answered back to
/// `conversation_event_log_max_age_secs`.
#[tokio::test]
async fn missed_notifications_carry_what_others_did_from_the_conversations_logs() {
    use tidings::clock::Clock;
    let server = lc_server_with(|c| {
        c.conversation_event_log_retention = 3;
        c.conversation_event_log_max_age_secs = 3600;
    })
    .await;
    let mut c = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    c.opened("alice", None).await;
    let st = c.opened("bob", None).await.st.unwrap();
    let group = c.start("alice", &["alice", "carol"]).await;
    let rename = |name: &str| GenericCommand {
        peer_id: Some("alice".into()),
        conv_message: Some(lc::ConvCommand {
            cid: Some(group.clone()),
            attr: Some(lc::JsonObjectMessage {
                data: serde_json::json!({ "name": name }).to_string(),
            }),
            ..Default::default()
        }),
        ..cmd(Cmd::Conv, Some(Op::Update))
    };
    let members = |op: Op, who: &[&str]| GenericCommand {
        peer_id: Some("alice".into()),
        conv_message: Some(lc::ConvCommand {
            cid: Some(group.clone()),
            m: who.iter().map(|m| m.to_string()).collect(),
            ..Default::default()
        }),
        ..cmd(Cmd::Conv, Some(op))
    };
    // Before bob is in: not his to hear.
    server.clock.advance(10);
    c.request(rename("before bob")).await;
    server.clock.advance(10);
    c.request(members(Op::Add, &["bob"])).await;
    let since = server.clock.now_ms();
    for (n, step) in [
        members(Op::Add, &["dave", "erin"]),
        rename("one"),
        rename("two"),
        members(Op::Remove, &["erin"]),
    ]
    .into_iter()
    .enumerate()
    {
        server.clock.advance(10);
        let r = c.request(step).await;
        assert!(r.error_message.is_none(), "step {n}: {r:?}");
    }
    let addr = server.running().addr;
    let st = st.as_str();
    let fetch = |after: i64| async move {
        let a = notifications(addr, "bob", after, st).await;
        assert_eq!(a.status, 200, "{a:?}");
        let v: serde_json::Value = serde_json::from_str(&a.body).unwrap();
        v["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                let name = n["attr"]["data"]
                    .as_str()
                    .and_then(|a| serde_json::from_str::<serde_json::Value>(a).ok())
                    .map(|a| a["name"].as_str().unwrap_or_default().to_owned());
                (
                    n["op"].as_str().unwrap().to_owned(),
                    n["m"].clone(),
                    name.unwrap_or_default(),
                )
            })
            .collect::<Vec<_>>()
    };
    let none = serde_json::Value::Null;
    // The log kept the newest three: dave and erin joining is gone.
    assert_eq!(
        fetch(since).await,
        vec![
            ("updated".into(), none.clone(), "one".into()),
            ("updated".into(), none.clone(), "two".into()),
            (
                "members_left".into(),
                serde_json::json!(["erin"]),
                String::new()
            ),
        ],
        "from the time bob joined"
    );
    // From the start: bob's own joining comes from his own log, once; dave and erin joining
    // is out of the conversation's log by now (three newer events), the rename before bob
    // joined was never his.
    let all = fetch(0).await;
    assert_eq!(
        all.iter().map(|(op, ..)| op.as_str()).collect::<Vec<_>>(),
        vec!["joined", "updated", "updated", "members_left"],
        "{all:?}"
    );
    // Older than conversation_event_log_max_age_secs: no longer answered.
    server.clock.advance(3_600_000);
    assert_eq!(
        fetch(since)
            .await
            .iter()
            .map(|(op, ..)| op.as_str())
            .collect::<Vec<_>>(),
        Vec::<&str>::new()
    );
}

/// `conv/check_shutup` as `peer` (`m`: whom to ask about; none: the client itself).
async fn check_shutup(c: &mut Lc, peer: &str, cid: &str, m: &[&str]) -> GenericCommand {
    c.request(GenericCommand {
        peer_id: Some(peer.into()),
        conv_message: Some(lc::ConvCommand {
            cid: Some(cid.into()),
            m: m.iter().map(|u| u.to_string()).collect(),
            ..Default::default()
        }),
        ..cmd(Cmd::Conv, Some(Op::CheckShutup))
    })
    .await
}

/// `blacklist/check_block` as `peer`.
async fn check_block(c: &mut Lc, peer: &str, b: lc::BlacklistCommand) -> GenericCommand {
    c.request(GenericCommand {
        peer_id: Some(peer.into()),
        blacklist_message: Some(b),
        ..cmd(Cmd::Blacklist, Some(Op::CheckBlock))
    })
    .await
}

#[tokio::test]
async fn check_shutup_and_check_block_answer_who_is_muted_and_blocked() {
    let server = leancloud_server().await;
    let alice = server.client("alice").await;
    let mut lc = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    lc.opened("bob", None).await;
    lc.opened("carol", None).await;
    let team = within(alice.create_group("team", &["bob", "carol"]))
        .await
        .unwrap()
        .id;
    let other = within(alice.create_group("other", &["carol"]))
        .await
        .unwrap()
        .id;

    // Nobody muted: the answer names nobody.
    let r = check_shutup(&mut lc, "bob", &team, &[]).await;
    assert_eq!(op_of(&r), (Some(Cmd::Conv), Some(Op::CheckResult)), "{r:?}");
    assert!(r.conv_message.unwrap().m.is_empty());
    // Bob muted for a minute: he is told so, and so is carol when she asks about him.
    within(alice.mute_members(&team, &["bob"], 60))
        .await
        .unwrap();
    let r = check_shutup(&mut lc, "bob", &team, &[]).await;
    assert_eq!(r.conv_message.unwrap().m, vec!["bob"]);
    let r = check_shutup(&mut lc, "carol", &team, &["bob", "carol"]).await;
    assert_eq!(r.conv_message.unwrap().m, vec!["bob"]);
    // The mute ends by the clock.
    server.clock.advance(60_000);
    loop {
        let r = check_shutup(&mut lc, "bob", &team, &[]).await;
        if r.conv_message.unwrap().m.is_empty() {
            break;
        }
    }
    // Mute-all silences plain members (LeanCloud has no push for it: the client learns it
    // from a refused send, 4563, or by asking).
    lc.pushes.clear();
    within(alice.set_mute_all(&team, true)).await.unwrap();
    let r = check_shutup(&mut lc, "carol", &team, &[]).await;
    assert_eq!(r.conv_message.unwrap().m, vec!["carol"]);
    let ack = lc.direct("carol", &team, "may I?", false).await;
    assert_eq!(ack.code, Some(4563));
    lc.request(cmd(Cmd::Echo, None)).await;
    // (Bob's mute and its end may still be on their way: pushes follow the acks.)
    assert!(
        lc.pushes.iter().all(|p| {
            let about_bob = p.peer_id.as_deref() == Some("bob")
                || p.conv_message.as_ref().is_some_and(|c| c.m == ["bob"]);
            about_bob
                && matches!(
                    op_of(p).1,
                    Some(
                        Op::Shutuped | Op::MembersShutuped | Op::Unshutuped | Op::MembersUnshutuped
                    )
                )
        }),
        "mute-all has no LeanCloud push: {:?}",
        lc.pushes
    );
    within(alice.set_mute_all(&team, false)).await.unwrap();
    // A non-member may not ask.
    let r = check_shutup(&mut lc, "bob", &other, &[]).await;
    assert_eq!(op_of(&r), (Some(Cmd::Error), None), "{r:?}");

    // The blacklist: which of these clients the conversation blocks, and which of these
    // conversations block the client itself.
    within(alice.block_members(&team, &["mallory"]))
        .await
        .unwrap();
    let r = check_block(
        &mut lc,
        "bob",
        lc::BlacklistCommand {
            src_cid: Some(team.clone()),
            to_pids: vec!["mallory".into(), "carol".into()],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        op_of(&r),
        (Some(Cmd::Blacklist), Some(Op::CheckResult)),
        "{r:?}"
    );
    assert_eq!(r.blacklist_message.unwrap().blocked_pids, vec!["mallory"]);
    within(alice.block_members(&other, &["carol"]))
        .await
        .unwrap();
    let r = check_block(
        &mut lc,
        "carol",
        lc::BlacklistCommand {
            src_pid: Some("carol".into()),
            to_cids: vec![team.clone(), other.clone(), "nosuch".into()],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        r.blacklist_message.unwrap().blocked_cids,
        vec![other.clone()]
    );
    // Only about oneself.
    let r = check_block(
        &mut lc,
        "bob",
        lc::BlacklistCommand {
            src_pid: Some("carol".into()),
            to_cids: vec![other.clone()],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(op_of(&r), (Some(Cmd::Error), None), "{r:?}");
}

#[tokio::test]
async fn an_ownership_moving_away_from_the_client_is_notified_once() {
    use tidings::clock::Clock;
    let server = leancloud_server().await;
    let mut c = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    let st = c.opened("alice", None).await.st.unwrap();
    let group = c.start("alice", &["alice", "bob", "carol"]).await;
    server.clock.advance(10);
    let since = server.clock.now_ms();
    server.clock.advance(10);
    // Alice, on a native connection, hands the group to bob: the event is in her own log
    // (she is the former owner) and in the group's (the others were told).
    let native = server.client("alice").await;
    within(native.transfer_ownership(&group, "bob"))
        .await
        .unwrap();
    let addr = server.running().addr;
    let target = format!("/1.1/rtm/notifications?client_id=alice&start_ts={since}");
    let headers = [("X-LC-IM-Session-Token", st.as_str())];
    let a = crate::leancloud_http::request(addr, "GET", &target, &headers).await;
    assert_eq!(a.status, 200, "{a:?}");
    let v: serde_json::Value = serde_json::from_str(&a.body).unwrap();
    let got: Vec<(String, serde_json::Value)> = v["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["op"].as_str().unwrap().to_owned(), n["info"].clone()))
        .collect();
    assert_eq!(
        got,
        vec![(
            "member_info_changed".to_owned(),
            serde_json::json!({"pid": "bob", "role": "Owner"})
        )]
    );
}

/// A conversation name or attribute key with a control, bidi or format character is refused
/// through `conv/start` and `conv/update` as natively (4301, nothing changed).
#[tokio::test]
async fn leancloud_names_refuse_control_bidi_and_format_characters() {
    let server = leancloud_server().await;
    let mut c = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    c.opened("alice", None).await;
    let group = c.start("alice", &["alice", "bob"]).await;
    let with_attr = |op: Op, cid: Option<&str>, attr: serde_json::Value| GenericCommand {
        peer_id: Some("alice".into()),
        conv_message: Some(lc::ConvCommand {
            cid: cid.map(str::to_owned),
            m: vec!["bob".into()],
            attr: Some(lc::JsonObjectMessage {
                data: attr.to_string(),
            }),
            ..Default::default()
        }),
        ..cmd(Cmd::Conv, Some(op))
    };
    for bad in crate::conversations::BAD_NAMES {
        for (op, cid) in [(Op::Start, None), (Op::Update, Some(group.as_str()))] {
            for attr in [
                serde_json::json!({ "name": bad }),
                serde_json::json!({ *bad: 1 }),
            ] {
                let r = c.request(with_attr(op, cid, attr.clone())).await;
                assert_eq!(op_of(&r), (Some(Cmd::Error), None), "{op:?} {attr}: {r:?}");
                let e = r.error_message.unwrap();
                assert_eq!(e.code, 4301, "{op:?} {attr}");
                assert!(e.detail.unwrap_or_default().contains("U+"), "{op:?} {attr}");
            }
        }
    }
    let good = crate::conversations::GOOD_NAMES[1];
    let r = c
        .request(with_attr(
            Op::Update,
            Some(&group),
            serde_json::json!({ "name": good }),
        ))
        .await;
    assert_eq!(op_of(&r), (Some(Cmd::Conv), Some(Op::Updated)), "{r:?}");
}

/// The rows `peer`'s `conv/query` with condition `condition` answers.
async fn rows_where(
    c: &mut Lc,
    peer: &str,
    condition: serde_json::Value,
) -> Vec<serde_json::Value> {
    let data = c
        .request(GenericCommand {
            peer_id: Some(peer.into()),
            conv_message: Some(lc::ConvCommand {
                r#where: Some(lc::JsonObjectMessage {
                    data: condition.to_string(),
                }),
                ..Default::default()
            }),
            ..cmd(Cmd::Conv, Some(Op::Query))
        })
        .await
        .conv_message
        .expect("rows")
        .results
        .unwrap()
        .data;
    serde_json::from_str(&data).unwrap()
}

/// A row's `m` carries the first `member_page_max` members, but conditions on `m` hold
/// against the whole membership: in a group of 31 with a page of 10, a member past the page
/// finds it by naming themselves, and `$size`, `$all`, `$in`, `$ne` and `$nin` see all 31.
#[tokio::test]
async fn query_conditions_on_members_see_the_whole_membership() {
    let server = lc_server_with(|c| {
        c.member_page_max = 10;
        c.member_page_default = 10;
    })
    .await;
    let names: Vec<String> = (0..30).map(|n| format!("u{n:02}")).collect();
    let members: Vec<&str> = names.iter().map(String::as_str).collect();
    let native = server.client("alice").await;
    let g = within(native.create_group("big", &members))
        .await
        .unwrap()
        .id;
    let mut c = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    c.opened("u25", None).await;
    let found = rows_where(&mut c, "u25", serde_json::json!({"m": "u25"})).await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["objectId"], g.as_str());
    assert_eq!(found[0]["m"].as_array().map(Vec::len), Some(10));
    for (condition, rows) in [
        (serde_json::json!({"m": {"$size": 31}}), 1),
        (serde_json::json!({"m": {"$size": 10}}), 0),
        (serde_json::json!({"m": {"$all": ["alice", "u29"]}}), 1),
        (serde_json::json!({"m": {"$in": ["nobody", "u29"]}}), 1),
        (serde_json::json!({"m": {"$ne": "u29"}}), 0),
        (serde_json::json!({"m": {"$nin": ["u29"]}}), 0),
        (serde_json::json!({"m": {"$regex": "^u2[7-9]$"}}), 1),
        (serde_json::json!({"m": {"$gt": "u28"}}), 1),
    ] {
        let mut condition = condition;
        condition["objectId"] = g.clone().into();
        let found = rows_where(&mut c, "u25", condition.clone()).await;
        assert_eq!(found.len(), rows, "{condition}");
    }
}
