//! The wire: generated protobuf types plus the few conversions that touch bytes.
//!
//! Everything that turns bytes into typed frames, or typed frames into bytes, lives here, so
//! the rest of the server works on types only.

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message as _;
use std::sync::{Arc, OnceLock};
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// Types generated from `proto/tidings/v1/*.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/tidings.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/tidings.v1.serde.rs"));
}

pub use pb::{ClientFrame, ServerFrame};

/// The WebSocket subprotocol of this dialect.
pub const SUBPROTOCOL: &str = "tidings.v1";

/// The subprotocol of its JSON form: the same frames in the proto3 JSON mapping, one per text
/// message.
pub const JSON_SUBPROTOCOL: &str = "tidings.v1.json";

/// How a native connection encodes its frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// Protobuf, one frame per binary message (`tidings.v1`).
    Binary,
    /// The proto3 JSON mapping, one frame per text message (`tidings.v1.json`).
    Json,
}

impl Wire {
    /// Its subprotocol.
    pub fn subprotocol(self) -> &'static str {
        match self {
            Wire::Binary => SUBPROTOCOL,
            Wire::Json => JSON_SUBPROTOCOL,
        }
    }
}

/// Field number of `ServerFrame.message` (see frames.proto).
const SERVER_FRAME_MESSAGE_FIELD: u32 = 100;

/// A frame that could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("malformed frame: {0}")]
pub struct DecodeError(#[from] prost::DecodeError);

/// Decodes one client frame.
pub fn decode_client(bytes: &[u8]) -> Result<ClientFrame, DecodeError> {
    Ok(ClientFrame::decode(bytes)?)
}

/// A JSON frame that could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("malformed JSON frame: {0}")]
pub struct JsonError(#[from] serde_json::Error);

/// Decodes one client frame in the JSON form.
pub fn decode_client_json(text: &str) -> Result<ClientFrame, JsonError> {
    Ok(serde_json::from_str(text)?)
}

/// Decodes one server frame in the JSON form.
pub fn decode_server_json(text: &str) -> Result<ServerFrame, JsonError> {
    Ok(serde_json::from_str(text)?)
}

/// Encodes a frame in the JSON form.
pub fn encode_json<M: serde::Serialize>(m: &M) -> Utf8Bytes {
    // The generated impls only fail on maps with non-string keys, which the protocol has not.
    Utf8Bytes::from(serde_json::to_string(m).expect("protocol types serialize to JSON"))
}

/// Decodes one server frame.
pub fn decode_server(bytes: &[u8]) -> Result<ServerFrame, DecodeError> {
    Ok(ServerFrame::decode(bytes)?)
}

/// Encodes any frame or record.
pub fn encode<M: prost::Message>(m: &M) -> Bytes {
    Bytes::from(m.encode_to_vec())
}

/// Builds a reply frame.
pub fn reply(id: u64, body: pb::server_frame::Body) -> ServerFrame {
    ServerFrame {
        id,
        body: Some(body),
    }
}

/// A push on its way to sessions of any dialect: the typed event (the native protocol's types
/// are the domain model), encoded at most once per dialect that receives it. Sessions share one
/// `Arc<Push>`; the first session of a dialect to write it fills that dialect's encoding.
#[derive(Debug)]
pub struct Push {
    event: PushEvent,
    native: OnceLock<Bytes>,
    /// The JSON form's `ServerFrame` (id 0).
    json: OnceLock<Utf8Bytes>,
    /// The LeanCloud dialect's encoding where it does not depend on the recipient (`None`
    /// inside: no LeanCloud form).
    pub leancloud: OnceLock<Option<Bytes>>,
}

/// What a push carries.
#[derive(Debug)]
pub enum PushEvent {
    /// A message, as its encoded `pb::Message` (the bytes that are stored), and the kind of
    /// its conversation (`ConversationKind`; dialects that present kinds differently need it).
    Message(Bytes, i32),
    /// Any other server push (boxed: most pushes are messages, and the body is large).
    Other(Box<pb::server_frame::Body>),
    /// To a session on a shared connection: a newer login on the same device replaced it.
    /// Native sessions are closed by their kick instead and never see it.
    Replaced,
    /// To a session on a shared connection: the app's backend disconnected it (native
    /// sessions are closed with `CLOSE_KICKED` instead and never see it).
    Kicked,
}

impl Push {
    /// The event.
    pub fn event(&self) -> &PushEvent {
        &self.event
    }

    /// The encoded native `ServerFrame` (id 0).
    pub fn native(&self) -> &Bytes {
        self.native_filling(&mut false)
    }

    /// [`Push::native`], setting `filled` when this call is the one that encoded it.
    pub fn native_filling(&self, filled: &mut bool) -> &Bytes {
        self.native.get_or_init(|| {
            *filled = true;
            self.encode_native()
        })
    }

    fn encode_native(&self) -> Bytes {
        match &self.event {
            PushEvent::Message(m, _) => message_frame_from_encoded(m),
            PushEvent::Other(body) => {
                let mut buf = BytesMut::with_capacity(body.encoded_len());
                body.encode(&mut buf);
                buf.freeze()
            }
            PushEvent::Replaced | PushEvent::Kicked => Bytes::new(),
        }
    }

    /// The `ServerFrame` (id 0) in the JSON form.
    pub fn json(&self) -> &Utf8Bytes {
        self.json_filling(&mut false)
    }

    /// [`Push::json`], setting `filled` when this call is the one that encoded it.
    pub fn json_filling(&self, filled: &mut bool) -> &Utf8Bytes {
        self.json.get_or_init(|| {
            *filled = true;
            let body = match &self.event {
                PushEvent::Message(..) => self.message().map(pb::server_frame::Body::Message),
                PushEvent::Other(body) => Some(body.as_ref().clone()),
                PushEvent::Replaced | PushEvent::Kicked => return Utf8Bytes::default(),
            };
            encode_json(&ServerFrame { id: 0, body })
        })
    }

    /// The conversation id and seq of the message this push carries, read from its encoding
    /// without decoding the rest (`None`: not a message push, or undecodable).
    pub fn message_position(&self) -> Option<(&str, u64)> {
        use prost::encoding::{WireType, decode_key, decode_varint};
        let PushEvent::Message(encoded, _) = &self.event else {
            return None;
        };
        let mut buf: &[u8] = encoded;
        let (mut conversation, mut seq) = ("", 0);
        while !buf.is_empty() {
            let (field, wire) = decode_key(&mut buf).ok()?;
            match wire {
                WireType::Varint => {
                    let v = decode_varint(&mut buf).ok()?;
                    if field == 3 {
                        seq = v;
                    }
                }
                WireType::LengthDelimited => {
                    let len = usize::try_from(decode_varint(&mut buf).ok()?).ok()?;
                    let bytes = buf.get(..len)?;
                    if field == 2 {
                        conversation = std::str::from_utf8(bytes).ok()?;
                    }
                    buf = &buf[len..];
                }
                WireType::SixtyFourBit => buf = buf.get(8..)?,
                WireType::ThirtyTwoBit => buf = buf.get(4..)?,
                WireType::StartGroup | WireType::EndGroup => return None,
            }
        }
        Some((conversation, seq))
    }

    /// The message this push carries, decoded (`None`: not a message push, or undecodable).
    pub fn message(&self) -> Option<pb::Message> {
        match &self.event {
            PushEvent::Message(m, _) => pb::Message::decode(m.as_ref()).ok(),
            PushEvent::Other(body) => match body.as_ref() {
                pb::server_frame::Body::Message(m) => Some(m.clone()),
                _ => None,
            },
            PushEvent::Replaced | PushEvent::Kicked => None,
        }
    }
}

/// The notice to a session on a shared connection that it was replaced.
pub fn replaced() -> Arc<Push> {
    Arc::new(Push {
        event: PushEvent::Replaced,
        native: OnceLock::new(),
        json: OnceLock::new(),
        leancloud: OnceLock::new(),
    })
}

/// The notice to a session on a shared connection that the app's backend disconnected it.
pub fn kicked() -> Arc<Push> {
    Arc::new(Push {
        event: PushEvent::Kicked,
        native: OnceLock::new(),
        json: OnceLock::new(),
        leancloud: OnceLock::new(),
    })
}

/// Builds a push (a frame with id 0) from its body.
pub fn push(body: pb::server_frame::Body) -> Arc<Push> {
    Arc::new(Push {
        event: PushEvent::Other(Box::new(body)),
        native: OnceLock::new(),
        json: OnceLock::new(),
        leancloud: OnceLock::new(),
    })
}

/// A message push from the message's stored encoding: the native frame wraps those bytes
/// without decoding or re-encoding them. `kind`: its conversation's.
pub fn message_push_from_encoded(encoded_message: &[u8], kind: pb::ConversationKind) -> Arc<Push> {
    Arc::new(Push {
        event: PushEvent::Message(Bytes::copy_from_slice(encoded_message), kind as i32),
        native: OnceLock::new(),
        json: OnceLock::new(),
        leancloud: OnceLock::new(),
    })
}

/// Wraps an already encoded `Message` into a `ServerFrame { message }`.
fn message_frame_from_encoded(encoded_message: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(encoded_message.len() + 8);
    prost::encoding::encode_key(
        SERVER_FRAME_MESSAGE_FIELD,
        prost::encoding::WireType::LengthDelimited,
        &mut buf,
    );
    prost::encoding::encode_varint(encoded_message.len() as u64, &mut buf);
    buf.put_slice(encoded_message);
    buf.freeze()
}

/// Internal numbers of temporary conversations have this bit set; their wire ids carry the
/// [`TEMPORARY_PREFIX`]. The two kinds never share a number, so an issued `_tmp:` id that is no
/// longer stored is known to have expired.
pub const TEMPORARY_BIT: u64 = 1 << 63;

/// Wire prefix of temporary conversation ids (what LeanCloud clients expect).
pub const TEMPORARY_PREFIX: &str = "_tmp:";

/// Conversation ids on the wire: 16 lower-case hex digits of the internal number, after
/// `_tmp:` for temporary conversations.
pub fn conversation_id(num: u64) -> String {
    if num & TEMPORARY_BIT != 0 {
        format!("{TEMPORARY_PREFIX}{:016x}", num & !TEMPORARY_BIT)
    } else {
        format!("{num:016x}")
    }
}

/// Parses a wire conversation id; `None` for anything this server never issued.
pub fn parse_conversation_id(id: &str) -> Option<u64> {
    let (hex, bit) = match id.strip_prefix(TEMPORARY_PREFIX) {
        Some(rest) => (rest, TEMPORARY_BIT),
        None => (id, 0),
    };
    if hex.len() != 16
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    let n = u64::from_str_radix(hex, 16).ok()?;
    (n & TEMPORARY_BIT == 0).then_some(n | bit)
}

/// Whether message `m` mentions `user`: named in its mentions, or any member but the sender
/// when it mentions everyone.
pub fn mentions(m: &pb::Message, user: &str) -> bool {
    (m.mention_all && m.sender != user) || m.mentions.iter().any(|u| u == user)
}

/// Message ids: the conversation and seq, so a message id alone locates the message.
pub fn message_id(conv: u64, seq: u64) -> String {
    format!("{conv:016x}{seq:016x}")
}

/// The conversation number and seq of a stored message id (`None`: not one).
pub fn parse_message_id(id: &str) -> Option<(u64, u64)> {
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let conv = u64::from_str_radix(&id[..16], 16).ok()?;
    let seq = u64::from_str_radix(&id[16..], 16).ok()?;
    (seq > 0).then_some((conv, seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_round_trip() {
        let id = message_id(TEMPORARY_BIT | 5, 42);
        assert_eq!(parse_message_id(&id), Some((TEMPORARY_BIT | 5, 42)));
        assert_eq!(parse_message_id("zz"), None);
        assert_eq!(parse_message_id(&message_id(1, 0)), None);
        assert_eq!(parse_message_id(&"g".repeat(32)), None);
    }

    #[test]
    fn a_mention_of_all_mentions_everyone_but_the_sender() {
        let m = pb::Message {
            sender: "alice".into(),
            mentions: vec!["carol".into()],
            ..Default::default()
        };
        assert!(mentions(&m, "carol") && !mentions(&m, "bob"));
        let all = pb::Message {
            mention_all: true,
            ..m
        };
        assert!(mentions(&all, "bob") && mentions(&all, "carol") && !mentions(&all, "alice"));
    }

    #[test]
    fn a_message_push_tells_its_position_without_a_decode() {
        let m = pb::Message {
            id: "x".into(),
            conversation_id: "0000000000000007".into(),
            seq: 300,
            sender: "alice".into(),
            r#type: -3,
            content: Bytes::from_static(b"\x02\x10hello"),
            attributes: [("seq".to_string(), "9".to_string())].into(),
            mentions: vec!["bob".into()],
            server_time: -1,
            ..Default::default()
        };
        let p = message_push_from_encoded(&m.encode_to_vec(), pb::ConversationKind::Group);
        assert_eq!(p.message_position(), Some(("0000000000000007", 300)));
        let transient = pb::Message { seq: 0, ..m };
        let p = message_push_from_encoded(&transient.encode_to_vec(), pb::ConversationKind::Group);
        assert_eq!(p.message_position(), Some(("0000000000000007", 0)));
        let p = message_push_from_encoded(&[0x12, 0x05, b'a'], pb::ConversationKind::Group);
        assert_eq!(p.message_position(), None, "a length past the end");
        assert_eq!(replaced().message_position(), None);
    }

    #[test]
    fn push_from_encoded_matches_prost() {
        let m = pb::Message {
            id: "x".into(),
            seq: 7,
            content: Bytes::from_static(b"hello"),
            ..Default::default()
        };
        let via_prost = encode(&ServerFrame {
            id: 0,
            body: Some(pb::server_frame::Body::Message(m.clone())),
        });
        let from_encoded =
            message_push_from_encoded(&m.encode_to_vec(), pb::ConversationKind::Group);
        assert_eq!(from_encoded.native(), &via_prost);
        assert_eq!(from_encoded.message(), Some(m.clone()));
        let other = push(pb::server_frame::Body::Message(m.clone()));
        assert_eq!(other.native(), &via_prost);
        // The JSON form of either is the frame's, decoding back to the same frame.
        let frame = ServerFrame {
            id: 0,
            body: Some(pb::server_frame::Body::Message(m)),
        };
        let json = encode_json(&frame);
        assert_eq!(from_encoded.json(), &json);
        assert_eq!(other.json(), &json);
        assert_eq!(decode_server_json(&json).unwrap(), frame);
        assert!(json.as_str().contains(r#""seq":"7""#), "{}", json.as_str());
        assert!(json.as_str().contains(r#""content":"aGVsbG8=""#));
    }

    #[test]
    fn conversation_ids_round_trip_and_reject_foreign() {
        assert_eq!(parse_conversation_id(&conversation_id(0xabc)), Some(0xabc));
        for bad in [
            "",
            "abc",
            "000000000000000G",
            "000000000000000A",
            "0000000000000000a",
        ] {
            assert_eq!(parse_conversation_id(bad), None, "{bad}");
        }
    }
}
