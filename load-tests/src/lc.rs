//! The LeanCloud dialect on the generator's side: a connection that opens a session the way
//! LeanCloud's SDKs do (subprotocol `lc.protobuf2.3`, or `lc.proto2base64.3`; a `session/open`
//! signed with the master key, as an app backend's signature factory signs it), creates
//! conversations with `conv/start` and `conv/add`, and, on the hot path, sends `direct` with
//! a request serial `i`, waits for its `ack`, and reads `direct` pushes.
//!
//! Messages are what the JS SDK's `TextMessage` sends, a typed message
//! `{"_lctype":-1,"_lctext":TEXT}`, padded to `--message-bytes` in all. The text starts with
//! the intended send time as 16 hex digits, so delivery latency is measured as in the native
//! scenarios (the native content carries it as its first 8 bytes).
//!
//! Like the native scenarios, receivers send no delivery acks (the JS SDK would batch one per
//! push back to the server).

use crate::params::Params;
use crate::raw::{Codec, Seen, Ws, now_ns};
use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use std::fmt::Write as _;
use tidings::leancloud::pb::{self as lc, CommandType as Cmd, GenericCommand, OpType as Op};
use tidings::leancloud::{LcProtocol, MAX_COMMAND_BYTES, WireFrame};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// How sessions are opened: subprotocol, app id, and the key that signs `session/open`.
#[derive(Clone, Debug)]
pub struct Setup {
    pub protocol: LcProtocol,
    pub app_id: String,
    /// `None`: no signature (servers in `insecure_dev` mode accept that).
    pub master_key: Option<String>,
}

impl Setup {
    pub fn from_params(p: &Params) -> Setup {
        Setup {
            protocol: if p.lc_base64 {
                LcProtocol::Base64V3
            } else {
                LcProtocol::ProtobufV3
            },
            app_id: p.lc_app_id.clone(),
            master_key: p.lc_master_key.clone(),
        }
    }
}

/// A command of family `cmd`, operation `op`.
pub fn command(cmd: Cmd, op: Option<Op>) -> GenericCommand {
    GenericCommand {
        cmd: Some(cmd as i32),
        op: op.map(|o| o as i32),
        ..Default::default()
    }
}

/// A signed `session/open` for `peer` (without its `i`), made before the clock starts, as the
/// native token is minted before the native login is timed.
pub fn open_command(setup: &Setup, peer: &str, nonce: &str) -> GenericCommand {
    let t = (now_ns() / 1_000_000) as i64;
    let s = setup
        .master_key
        .as_deref()
        .map(|key| tidings::leancloud::sign::login_signature(key, &setup.app_id, peer, t, nonce));
    GenericCommand {
        app_id: Some(setup.app_id.clone()),
        peer_id: Some(peer.to_owned()),
        session_message: Some(lc::SessionCommand {
            t: s.is_some().then_some(t),
            n: s.is_some().then(|| nonce.to_owned()),
            s,
            ua: Some("tidings-load".into()),
            ..Default::default()
        }),
        ..command(Cmd::Session, Some(Op::Open))
    }
}

/// A command as the WebSocket message `p` sends it in.
pub fn frame(p: LcProtocol, c: &GenericCommand) -> WsMessage {
    match tidings::leancloud::encode(p, c) {
        WireFrame::Binary(b) => WsMessage::Binary(b),
        WireFrame::Text(t) => WsMessage::Text(t.into()),
    }
}

/// A received WebSocket message as a command (`None`: not a data frame of `p`'s kind, or not a
/// command). Unlike the server's decoder this has no size limit: pushes may be larger than
/// what clients may send.
pub fn parse(p: LcProtocol, m: &WsMessage) -> Option<GenericCommand> {
    match m {
        WsMessage::Binary(b) if !p.is_base64() => GenericCommand::decode(b.as_ref()).ok(),
        WsMessage::Text(t) if p.is_base64() => {
            GenericCommand::decode(base64_decode(t.as_str())?.as_slice()).ok()
        }
        _ => None,
    }
}

fn kind(c: &GenericCommand) -> (Option<Cmd>, Option<Op>) {
    (
        c.cmd.and_then(|x| Cmd::try_from(x).ok()),
        c.op.and_then(|x| Op::try_from(x).ok()),
    )
}

/// Standard base64 (padding optional), as the `proto2base64` subprotocols use it.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let s = s.as_bytes();
    let s = s.strip_suffix(b"==").or(s.strip_suffix(b"=")).unwrap_or(s);
    if s.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let mut acc = 0u32;
        for (k, c) in chunk.iter().enumerate() {
            acc |= value(*c)? << (18 - 6 * k);
        }
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

/// The start of every message this generator sends (a JS SDK `TextMessage`).
const TEXT_PREFIX: &str = r#"{"_lctype":-1,"_lctext":""#;
const TEXT_SUFFIX: &str = r#""}"#;
/// The shortest message: the JSON around 16 hex digits of send time.
pub const MIN_MESSAGE_BYTES: usize = TEXT_PREFIX.len() + 16 + TEXT_SUFFIX.len();

/// A text message stamped with `stamp_ns`, `size` bytes long (at least [`MIN_MESSAGE_BYTES`]).
pub fn text_message(stamp_ns: u64, size: usize) -> String {
    let size = size.max(MIN_MESSAGE_BYTES);
    let mut m = String::with_capacity(size);
    m.push_str(TEXT_PREFIX);
    let _ = write!(m, "{stamp_ns:016x}");
    m.extend(std::iter::repeat_n('x', size - MIN_MESSAGE_BYTES));
    m.push_str(TEXT_SUFFIX);
    m
}

/// The send time a message's text starts with, if it has one.
pub fn stamp_of(msg: &str) -> Option<u64> {
    let text = match msg.strip_prefix(TEXT_PREFIX) {
        Some(t) => t,
        // The same message with its keys in another order.
        None => {
            let key = r#""_lctext":""#;
            &msg[msg.find(key)? + key.len()..]
        }
    };
    u64::from_str_radix(text.get(..16)?, 16).ok()
}

/// Splits `members` into runs whose `conv/start` or `conv/add` stays well under the 5,000
/// bytes a client may send (the server closes the socket over larger commands).
pub fn member_chunks(members: &[String]) -> Vec<Vec<String>> {
    // Room for the envelope (cmd, op, i, peerId, cid) and 3 bytes of framing per id.
    let budget = MAX_COMMAND_BYTES - 500;
    let mut out: Vec<Vec<String>> = Vec::new();
    let mut used = usize::MAX;
    for m in members {
        let cost = m.len() + 3;
        if used.saturating_add(cost) > budget {
            out.push(Vec::new());
            used = 0;
        }
        out.last_mut().expect("pushed above").push(m.clone());
        used += cost;
    }
    out
}

/// An open LeanCloud session (one `peerId` per socket).
pub struct Lc {
    ws: Ws,
    p: LcProtocol,
    next_i: i32,
    pub peer: String,
}

impl Lc {
    /// Connects with `setup`'s subprotocol and the same socket settings as the native
    /// connections (16 KiB buffers, no Nagle).
    pub async fn connect(url: &str, p: LcProtocol) -> anyhow::Result<Ws> {
        let mut req = url.into_client_request()?;
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", p.token().parse()?);
        let cfg = WebSocketConfig::default()
            .read_buffer_size(16 << 10)
            .write_buffer_size(16 << 10);
        let (ws, resp) = tokio_tungstenite::connect_async_with_config(req, Some(cfg), true).await?;
        let echoed = resp
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok());
        anyhow::ensure!(
            echoed == Some(p.token()),
            "the server did not accept {} (is leancloud_app_id set?)",
            p.token()
        );
        Ok(ws)
    }

    /// Connects and sends `open` (from [`open_command`]); returns once `session/opened` came.
    pub async fn open(url: &str, p: LcProtocol, open: GenericCommand) -> anyhow::Result<Lc> {
        let peer = open.peer_id.clone().unwrap_or_default();
        let ws = Lc::connect(url, p).await?;
        let mut c = Lc {
            ws,
            p,
            next_i: 1,
            peer,
        };
        let r = c.request(open).await?;
        match kind(&r) {
            (Some(Cmd::Session), Some(Op::Opened)) => Ok(c),
            _ => {
                let s = r.session_message.unwrap_or_default();
                anyhow::bail!(
                    "session/open refused: {} {}",
                    s.code.unwrap_or(0),
                    s.reason.unwrap_or_default()
                )
            }
        }
    }

    async fn next_command(&mut self) -> anyhow::Result<GenericCommand> {
        loop {
            match self.ws.next().await {
                Some(Ok(WsMessage::Close(f))) => anyhow::bail!("closed by server: {f:?}"),
                Some(Ok(m)) => {
                    if let Some(c) = parse(self.p, &m) {
                        return Ok(c);
                    }
                }
                Some(Err(e)) => return Err(e.into()),
                None => anyhow::bail!("connection ended"),
            }
        }
    }

    /// Sends `c` with the next `i` and returns the reply; pushes meanwhile are skipped. An
    /// `error` reply, or an `ack` with a code, is an error.
    pub async fn request(&mut self, mut c: GenericCommand) -> anyhow::Result<GenericCommand> {
        let i = self.next_i;
        self.next_i += 1;
        c.i = Some(i);
        self.ws.send(frame(self.p, &c)).await?;
        loop {
            let r = self.next_command().await?;
            if r.i != Some(i) {
                continue;
            }
            if let Some(e) = &r.error_message {
                anyhow::bail!("error {} {}: {:?}", e.code, e.reason, e.detail);
            }
            if let Some(code) = r.ack_message.as_ref().and_then(|a| a.code) {
                anyhow::bail!("ack with code {code}");
            }
            return Ok(r);
        }
    }

    /// `conv/start` with `members` (the caller is added by the server); returns the `cid`.
    pub async fn start(&mut self, members: Vec<String>, unique: bool) -> anyhow::Result<String> {
        let r = self
            .request(GenericCommand {
                peer_id: Some(self.peer.clone()),
                conv_message: Some(lc::ConvCommand {
                    m: members,
                    unique: unique.then_some(true),
                    ..Default::default()
                }),
                ..command(Cmd::Conv, Some(Op::Start))
            })
            .await?;
        let k = kind(&r);
        r.conv_message
            .and_then(|c| c.cid)
            .ok_or_else(|| anyhow::anyhow!("conv/start: no cid in {k:?}"))
    }

    /// `conv/add` of `members` to `cid`.
    pub async fn add(&mut self, cid: &str, members: Vec<String>) -> anyhow::Result<()> {
        let n = members.len();
        let r = self
            .request(GenericCommand {
                peer_id: Some(self.peer.clone()),
                conv_message: Some(lc::ConvCommand {
                    cid: Some(cid.to_owned()),
                    m: members,
                    ..Default::default()
                }),
                ..command(Cmd::Conv, Some(Op::Add))
            })
            .await?;
        let c = r.conv_message.unwrap_or_default();
        anyhow::ensure!(
            c.failed_pids.is_empty() && c.allowed_pids.len() == n,
            "conv/add: {} of {n} allowed, failed {:?}",
            c.allowed_pids.len(),
            c.failed_pids
        );
        Ok(())
    }

    /// A group of the caller and `others`: `conv/start` with the first chunk, `conv/add` for
    /// the rest (see [`member_chunks`]).
    pub async fn group(&mut self, others: &[String]) -> anyhow::Result<String> {
        let mut chunks = member_chunks(others).into_iter();
        let cid = self.start(chunks.next().unwrap_or_default(), false).await?;
        for chunk in chunks {
            self.add(&cid, chunk).await?;
        }
        Ok(cid)
    }

    /// The JS SDK's heartbeat: `echo`, answered with `echo`.
    pub async fn echo(&mut self) -> anyhow::Result<()> {
        self.request(command(Cmd::Echo, None)).await.map(|_| ())
    }

    /// Holds the session (reading, so the server's pings are answered) until `stop` turns
    /// true, then checks that it still answers an `echo`.
    pub async fn hold(mut self, mut stop: watch::Receiver<bool>) -> bool {
        while !*stop.borrow_and_update() {
            tokio::select! {
                _ = stop.changed() => {}
                m = self.ws.next() => match m {
                    Some(Ok(WsMessage::Close(_))) | Some(Err(_)) | None => return false,
                    Some(Ok(_)) => {}
                },
            }
        }
        let ok = self.echo().await.is_ok();
        let _ = self.ws.close(None).await;
        ok
    }

    /// The socket and the hot-path codec, for [`crate::raw::drive_with`].
    pub fn into_parts(self) -> (Ws, LcCodec) {
        (
            self.ws,
            LcCodec {
                p: self.p,
                next_i: self.next_i,
                peer: self.peer,
            },
        )
    }
}

/// The LeanCloud hot path: `direct {cid, msg}` with `i`; `ack {uid, t}` (or `ack {code}`, or
/// `error`) answers it; `direct` pushes without `i` are deliveries.
pub struct LcCodec {
    p: LcProtocol,
    next_i: i32,
    peer: String,
}

impl LcCodec {
    pub fn new(p: LcProtocol, peer: &str) -> LcCodec {
        LcCodec {
            p,
            next_i: 1,
            peer: peer.to_owned(),
        }
    }
}

impl Codec for LcCodec {
    fn send(&mut self, conv: &str, stamp_ns: u64, size: usize) -> (u64, WsMessage) {
        let i = self.next_i;
        // Serials are positive int32s; a connection never sends two billion in one run, but
        // wrapping keeps them valid if it did.
        self.next_i = if i == i32::MAX { 1 } else { i + 1 };
        let c = GenericCommand {
            i: Some(i),
            peer_id: Some(self.peer.clone()),
            direct_message: Some(lc::DirectCommand {
                cid: Some(conv.to_owned()),
                msg: Some(text_message(stamp_ns, size)),
                ..Default::default()
            }),
            ..command(Cmd::Direct, None)
        };
        (i as u64, frame(self.p, &c))
    }

    fn seen(&self, m: &WsMessage) -> Seen {
        let Some(c) = parse(self.p, m) else {
            return Seen::Other;
        };
        let (cmd, i) = (c.cmd.and_then(|x| Cmd::try_from(x).ok()), c.i);
        match (cmd, i) {
            (Some(Cmd::Direct), None) => match &c.direct_message {
                Some(d) if d.offline != Some(true) => {
                    Seen::Delivered(d.msg.as_deref().and_then(stamp_of))
                }
                _ => Seen::Other,
            },
            (Some(Cmd::Ack), Some(i)) => match &c.ack_message {
                Some(a) if a.code.is_none() && a.uid.is_some() => Seen::Acked(i as u64),
                _ => Seen::Failed(i as u64),
            },
            (Some(Cmd::Error), Some(i)) => Seen::Failed(i as u64),
            _ => Seen::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidings::leancloud::{FrameRef, decode};

    const BOTH: [LcProtocol; 2] = [LcProtocol::ProtobufV3, LcProtocol::Base64V3];

    /// What the server's decoder makes of a frame the generator sends.
    fn server_reads(p: LcProtocol, m: &WsMessage) -> GenericCommand {
        let f = match m {
            WsMessage::Binary(b) => FrameRef::Binary(b),
            WsMessage::Text(t) => FrameRef::Text(t.as_str()),
            other => panic!("not a data frame: {other:?}"),
        };
        decode(p, f).expect("the server decodes it")
    }

    fn setup(p: LcProtocol) -> Setup {
        Setup {
            protocol: p,
            app_id: "app".into(),
            master_key: Some("master-key".into()),
        }
    }

    #[test]
    fn text_messages_carry_their_stamp_and_size() {
        for size in [0, MIN_MESSAGE_BYTES, 100, 1000] {
            let m = text_message(0x0123_4567_89ab_cdef, size);
            assert_eq!(m.len(), size.max(MIN_MESSAGE_BYTES));
            let v: serde_json::Value = serde_json::from_str(&m).unwrap();
            assert_eq!(v["_lctype"], -1);
            assert!(
                v["_lctext"]
                    .as_str()
                    .unwrap()
                    .starts_with("0123456789abcdef")
            );
            assert_eq!(stamp_of(&m), Some(0x0123_4567_89ab_cdef));
        }
        // The same message with its keys in the other order (serde_json's), or without a stamp.
        let stamp = now_ns();
        let reordered = format!(r#"{{"_lctext":"{stamp:016x}xxxx","_lctype":-1}}"#);
        assert_eq!(stamp_of(&reordered), Some(stamp));
        assert_eq!(stamp_of(r#"{"_lctype":-1,"_lctext":"hello"}"#), None);
        assert_eq!(stamp_of("plain text"), None);
    }

    #[test]
    fn sends_are_directs_the_server_decodes() {
        for p in BOTH {
            let mut codec = LcCodec::new(p, "alice");
            let stamp = now_ns();
            let (i1, f1) = codec.send("conv-1", stamp, 100);
            let (i2, _) = codec.send("conv-1", stamp, 100);
            assert_eq!((i1, i2), (1, 2));
            assert_eq!(matches!(f1, WsMessage::Text(_)), p.is_base64());
            let c = server_reads(p, &f1);
            assert_eq!(kind(&c), (Some(Cmd::Direct), None));
            assert_eq!(c.i, Some(1));
            assert_eq!(c.peer_id.as_deref(), Some("alice"));
            let d = c.direct_message.unwrap();
            assert_eq!(d.cid.as_deref(), Some("conv-1"));
            let msg = d.msg.unwrap();
            assert_eq!(msg.len(), 100);
            assert_eq!(stamp_of(&msg), Some(stamp));
            // Plain sends: no receipts, not transient, no will.
            assert_eq!((d.r, d.transient, d.will), (None, None, None));
        }
        let mut codec = LcCodec::new(LcProtocol::ProtobufV3, "a");
        codec.next_i = i32::MAX;
        assert_eq!(codec.send("c", 0, 0).0, i32::MAX as u64);
        assert_eq!(
            codec.send("c", 0, 0).0,
            1,
            "serials wrap to 1, never 0 or negative"
        );
    }

    #[test]
    fn session_open_is_signed_as_the_server_checks() {
        for p in BOTH {
            let s = setup(p);
            let open = open_command(&s, "peer-1", "nonce-7");
            let c = server_reads(p, &frame(p, &open));
            assert_eq!(kind(&c), (Some(Cmd::Session), Some(Op::Open)));
            assert_eq!(c.app_id.as_deref(), Some("app"));
            assert_eq!(c.peer_id.as_deref(), Some("peer-1"));
            let sm = c.session_message.unwrap();
            let t = sm.t.unwrap();
            assert!((t - (now_ns() / 1_000_000) as i64).abs() < 60_000);
            assert_eq!(sm.n.as_deref(), Some("nonce-7"));
            let want = tidings::leancloud::sign::login_signature(
                "master-key",
                "app",
                "peer-1",
                t,
                "nonce-7",
            );
            assert_eq!(sm.s.as_deref(), Some(want.as_str()));
        }
        // Without a key (insecure_dev servers): no signature fields at all.
        let unsigned = open_command(
            &Setup {
                master_key: None,
                ..setup(LcProtocol::ProtobufV3)
            },
            "p",
            "n",
        )
        .session_message
        .unwrap();
        assert_eq!((unsigned.s, unsigned.t, unsigned.n), (None, None, None));
    }

    /// A command as the server would push it in `p`'s framing.
    fn pushed(p: LcProtocol, c: &GenericCommand) -> WsMessage {
        frame(p, c)
    }

    #[test]
    fn acks_errors_and_pushes_are_told_apart() {
        for p in BOTH {
            let codec = LcCodec::new(p, "bob");
            let ack = GenericCommand {
                i: Some(7),
                ack_message: Some(lc::AckCommand {
                    uid: Some("m1".into()),
                    t: Some(1),
                    ..Default::default()
                }),
                ..command(Cmd::Ack, None)
            };
            assert_eq!(codec.seen(&pushed(p, &ack)), Seen::Acked(7));
            let refused = GenericCommand {
                i: Some(8),
                ack_message: Some(lc::AckCommand {
                    code: Some(4401),
                    reason: Some("INVALID_MESSAGING_TARGET".into()),
                    ..Default::default()
                }),
                ..command(Cmd::Ack, None)
            };
            assert_eq!(codec.seen(&pushed(p, &refused)), Seen::Failed(8));
            let error = GenericCommand {
                i: Some(9),
                error_message: Some(lc::ErrorCommand {
                    code: 4105,
                    reason: "SESSION_REQUIRED".into(),
                    ..Default::default()
                }),
                ..command(Cmd::Error, None)
            };
            assert_eq!(codec.seen(&pushed(p, &error)), Seen::Failed(9));
            // A push: the server's envelope (peerId, service 2) around a direct.
            let stamp = now_ns();
            let direct = |msg: &str, offline: Option<bool>| GenericCommand {
                peer_id: Some("bob".into()),
                service: Some(2),
                direct_message: Some(lc::DirectCommand {
                    cid: Some("c".into()),
                    id: Some("m2".into()),
                    from_peer_id: Some("alice".into()),
                    timestamp: Some(1),
                    msg: Some(msg.into()),
                    offline,
                    ..Default::default()
                }),
                ..command(Cmd::Direct, None)
            };
            let msg = text_message(stamp, 100);
            assert_eq!(
                codec.seen(&pushed(p, &direct(&msg, None))),
                Seen::Delivered(Some(stamp))
            );
            assert_eq!(
                codec.seen(&pushed(p, &direct("hi", None))),
                Seen::Delivered(None),
                "a message without a stamp still counts as delivered"
            );
            assert_eq!(
                codec.seen(&pushed(p, &direct(&msg, Some(true)))),
                Seen::Other,
                "offline catch-up is not a live delivery"
            );
            // Other pushes, and replies to something else.
            let joined = GenericCommand {
                peer_id: Some("bob".into()),
                conv_message: Some(lc::ConvCommand {
                    cid: Some("c".into()),
                    ..Default::default()
                }),
                ..command(Cmd::Conv, Some(Op::Joined))
            };
            assert_eq!(codec.seen(&pushed(p, &joined)), Seen::Other);
            let echo = GenericCommand {
                i: Some(3),
                ..command(Cmd::Echo, None)
            };
            assert_eq!(codec.seen(&pushed(p, &echo)), Seen::Other);
            // Frames of the other kind, and garbage.
            let other = if p.is_base64() {
                LcProtocol::ProtobufV3
            } else {
                LcProtocol::Base64V3
            };
            assert_eq!(codec.seen(&pushed(other, &ack)), Seen::Other);
            assert_eq!(codec.seen(&WsMessage::Text("!!".into())), Seen::Other);
            assert_eq!(
                codec.seen(&WsMessage::Binary(vec![0xff, 0xff].into())),
                Seen::Other
            );
        }
    }

    #[test]
    fn base64_decodes_what_the_codec_encodes() {
        for len in 0..40u8 {
            let bytes: Vec<u8> = (0..len).map(|b| b.wrapping_mul(37)).collect();
            let c = GenericCommand {
                peer_id: Some(String::from_utf8_lossy(&bytes).into_owned()),
                ..command(Cmd::Echo, None)
            };
            let WsMessage::Text(t) = frame(LcProtocol::Base64V3, &c) else {
                panic!("base64 frames are text");
            };
            let raw = base64_decode(t.as_str()).unwrap();
            assert_eq!(raw, c.encode_to_vec());
            // Unpadded input decodes too.
            assert_eq!(
                base64_decode(t.as_str().trim_end_matches('=')).unwrap(),
                raw
            );
        }
        assert_eq!(base64_decode("TWFu").unwrap(), b"Man");
        assert_eq!(base64_decode("TWE=").unwrap(), b"Ma");
        assert_eq!(base64_decode("TQ==").unwrap(), b"M");
        assert_eq!(base64_decode("").unwrap(), b"");
        for bad in ["T", "TWFuT", "TW!u", "TW-u"] {
            assert_eq!(base64_decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn member_chunks_fit_the_command_limit() {
        let members: Vec<String> = (0..1000)
            .map(|i| format!("18f3a2b4c5d6e7-fanout-{i}"))
            .collect();
        let chunks = member_chunks(&members);
        assert!(chunks.len() > 1);
        assert_eq!(chunks.concat(), members, "every member once, in order");
        for chunk in chunks {
            let add = GenericCommand {
                i: Some(i32::MAX),
                peer_id: Some("18f3a2b4c5d6e7-fanout-0".into()),
                conv_message: Some(lc::ConvCommand {
                    cid: Some("0123456789abcdef0123456789abcdef".into()),
                    m: chunk,
                    ..Default::default()
                }),
                ..command(Cmd::Conv, Some(Op::Add))
            };
            let n = add.encode_to_vec().len();
            assert!(n <= MAX_COMMAND_BYTES, "{n} bytes");
        }
        assert!(member_chunks(&[]).is_empty());
    }
}
