//! Bytes ⇄ [`GenericCommand`] for the LeanCloud dialect: the subprotocol a client asked for, the
//! frames that subprotocol uses, the inbound size limit, and the error and close codes the SDKs
//! know by number and name.
//!
//! One WebSocket message is one `GenericCommand`, no length prefix, no batching. The `protobuf2`
//! subprotocols send it as binary frames; `proto2base64` sends the same bytes base64-encoded in
//! text frames, both ways (for runtimes without binary frames: old WeChat mini-programs, C#).

use std::fmt;

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use bytes::Bytes;
use prost::Message as _;

use super::pb::{CommandType, GenericCommand, OpType};

/// Largest command a client may send: 5000 bytes of protobuf, counted after base64 decoding in
/// text mode. The Swift SDK refuses to send more (`serializedData.count <= 5000`, on the
/// serialized command before any framing) and LeanCloud's docs say the server rejects larger
/// ones with 4109 `FRAME_TOO_LONG`. Outbound commands have no such limit (history pages and
/// unread summaries are larger).
pub const MAX_COMMAND_BYTES: usize = 5000;

/// Longest base64 text that can hold [`MAX_COMMAND_BYTES`] (padded): 6668 characters. Anything
/// longer is too large whatever it decodes to, so it is refused before decoding allocates. The
/// WebSocket's own message limit must allow at least this much, or oversized commands are cut
/// off by the transport instead of being answered with 4109.
pub const MAX_TEXT_CHARS: usize = MAX_COMMAND_BYTES.div_ceil(3) * 4;

/// Standard alphabet; padding optional on input (clients differ), always written on output.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A LeanCloud subprotocol: `lc.<format>.<version>`.
///
/// The format decides the frames (binary protobuf or base64 text). The version decides how a
/// client catches up after login: `.3` gets unread counts, `.1` gets its offline messages
/// replayed. Every SDK offers exactly one token, and the server must echo it or the SDK gives up
/// on the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LcProtocol {
    /// `lc.protobuf2.3`: what current JS, Swift, ObjC and Java SDKs offer.
    ProtobufV3,
    /// `lc.proto2base64.3`: JS with `noBinary: true`, the C#/Unity SDK, WeChat mini-programs.
    Base64V3,
    /// `lc.protobuf2.1`: JS v4 with `pushOfflineMessages`, Swift/ObjC with unread counts off.
    ProtobufV1,
    /// `lc.proto2base64.1`: JS v4 with both `noBinary` and `pushOfflineMessages` (the SDK
    /// builds the token from the two options independently).
    Base64V1,
}

impl LcProtocol {
    /// Every supported subprotocol.
    pub const ALL: [LcProtocol; 4] = [
        LcProtocol::ProtobufV3,
        LcProtocol::Base64V3,
        LcProtocol::ProtobufV1,
        LcProtocol::Base64V1,
    ];

    /// The token as offered in `Sec-WebSocket-Protocol`, and as echoed back.
    pub const fn token(self) -> &'static str {
        match self {
            LcProtocol::ProtobufV3 => "lc.protobuf2.3",
            LcProtocol::Base64V3 => "lc.proto2base64.3",
            LcProtocol::ProtobufV1 => "lc.protobuf2.1",
            LcProtocol::Base64V1 => "lc.proto2base64.1",
        }
    }

    /// The subprotocol a token names. Exact and case-sensitive: the SDK's WebSocket checks the
    /// echo byte for byte against what it offered. `lc.protobuf2.2` (defined by ObjC, never
    /// offered by it) is not supported.
    pub fn from_token(token: &str) -> Option<LcProtocol> {
        LcProtocol::ALL.into_iter().find(|p| p.token() == token)
    }

    /// Base64 text frames (`true`) or binary protobuf frames (`false`).
    pub const fn is_base64(self) -> bool {
        matches!(self, LcProtocol::Base64V3 | LcProtocol::Base64V1)
    }

    /// After login, `.3` clients get an `unread` summary (counts plus the last message per
    /// conversation) and fetch history themselves; `.1` clients instead get their offline
    /// messages pushed as `direct { offline: true, hasMore }`.
    pub const fn pushes_unread_counts(self) -> bool {
        matches!(self, LcProtocol::ProtobufV3 | LcProtocol::Base64V3)
    }
}

impl fmt::Display for LcProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.token())
    }
}

/// What the handshake settled on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// The subprotocol the connection speaks.
    pub protocol: LcProtocol,
    /// The `Sec-WebSocket-Protocol` value to answer with. `None` when the choice came from the
    /// query string: a client that offered no header must not get one back.
    pub echo: Option<&'static str>,
}

/// Picks the subprotocol of an upgrade request.
///
/// `offered` are the request's `Sec-WebSocket-Protocol` header values (every header line; each
/// a comma-separated list): the first supported token wins, in the client's order. Failing
/// that, `query` (the URL's query string, with or without the `?`) may name one as
/// `subprotocol=…`: JS v4 in WeChat mini-programs and the C#/Unity SDK cannot set the header.
/// `None`: nothing supported was offered, so the upgrade should be refused.
pub fn negotiate<'a>(
    offered: impl IntoIterator<Item = &'a str>,
    query: Option<&str>,
) -> Option<Negotiated> {
    let from_header = offered
        .into_iter()
        .flat_map(|v| v.split(','))
        .find_map(|t| LcProtocol::from_token(t.trim()));
    if let Some(protocol) = from_header {
        return Some(Negotiated {
            protocol,
            echo: Some(protocol.token()),
        });
    }
    query
        .and_then(query_subprotocol)
        .map(|protocol| Negotiated {
            protocol,
            echo: None,
        })
}

/// The first supported `subprotocol=` parameter of a query string.
fn query_subprotocol(query: &str) -> Option<LcProtocol> {
    let query = query.strip_prefix('?').unwrap_or(query);
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .filter(|(key, _)| *key == "subprotocol")
        .find_map(|(_, value)| LcProtocol::from_token(&crate::percent::decode(value, false)?))
}

/// An encoded command, ready to be sent as one WebSocket message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WireFrame {
    /// A binary message (`protobuf2` subprotocols).
    Binary(Bytes),
    /// A text message (`proto2base64` subprotocols).
    Text(String),
}

impl WireFrame {
    /// Borrows this frame as decoder input.
    pub fn as_frame_ref(&self) -> FrameRef<'_> {
        match self {
            WireFrame::Binary(b) => FrameRef::Binary(b),
            WireFrame::Text(t) => FrameRef::Text(t),
        }
    }
}

/// A received WebSocket data message, borrowed (so the caller's buffer is not copied).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameRef<'a> {
    /// A binary message.
    Binary(&'a [u8]),
    /// A text message.
    Text(&'a str),
}

/// Why a received frame is not a command.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// Over [`MAX_COMMAND_BYTES`] of protobuf. `frame_len` is the frame as received (bytes, or
    /// base64 characters).
    #[error("frame of length {frame_len} holds more than {MAX_COMMAND_BYTES} bytes of command")]
    TooLarge {
        /// Length of the received frame.
        frame_len: usize,
    },
    /// A binary frame on a base64 connection, or a text frame on a binary one.
    #[error("{protocol} expects {} frames", if protocol.is_base64() { "text" } else { "binary" })]
    WrongFrameType {
        /// The connection's subprotocol.
        protocol: LcProtocol,
    },
    /// Text that is not base64 (standard alphabet; padding optional).
    #[error("malformed base64: {0}")]
    Base64(#[from] base64::DecodeError),
    /// Bytes that are not a `GenericCommand`.
    #[error("malformed command: {0}")]
    Protobuf(#[from] prost::DecodeError),
    /// A well-formed message without `cmd`: every command names its family.
    #[error("command without cmd")]
    MissingCmd {
        /// The request serial, if the frame had one.
        i: Option<i32>,
    },
    /// A `cmd` value outside `CommandType`. Rejected here because prost would read it back as
    /// the default (`session`).
    #[error("unknown cmd {cmd}")]
    UnknownCmd {
        /// The value received.
        cmd: i32,
        /// The request serial, if the frame had one.
        i: Option<i32>,
    },
    /// An `op` value outside `OpType` (prost would read it back as `open`).
    #[error("unknown op {op}")]
    UnknownOp {
        /// The value received.
        op: i32,
        /// The request serial, if the frame had one.
        i: Option<i32>,
    },
}

impl CodecError {
    /// The LeanCloud error this corresponds to, where the protocol names one.
    pub fn error_code(&self) -> Option<ErrorCode> {
        match self {
            CodecError::TooLarge { .. } => Some(ErrorCode::FrameTooLong),
            _ => None,
        }
    }

    /// The WebSocket close code for ending the connection over this error: 4109 for size (what
    /// LeanCloud uses), else RFC 6455's 1003 (unsupported data) for a wrong frame type and 1007
    /// (invalid payload) for undecodable content. The SDKs reconnect after any of these.
    pub fn close_code(&self) -> u16 {
        match self {
            CodecError::TooLarge { .. } => CloseCode::FrameTooLong.code(),
            CodecError::WrongFrameType { .. } => 1003,
            _ => 1007,
        }
    }

    /// The request serial of a command whose envelope decoded but named no known `cmd`/`op`:
    /// the session can answer that request with an error instead of closing.
    pub fn request_id(&self) -> Option<i32> {
        match self {
            CodecError::MissingCmd { i }
            | CodecError::UnknownCmd { i, .. }
            | CodecError::UnknownOp { i, .. } => *i,
            _ => None,
        }
    }
}

/// Decodes one received frame of a connection speaking `protocol`.
///
/// Checks, in order: the frame type the subprotocol uses, the size limit (before decoding, so an
/// oversized frame costs no allocation), the encoding, and that `cmd` (and `op`, if present)
/// are values the schema knows. Never panics, whatever the input.
pub fn decode(protocol: LcProtocol, frame: FrameRef<'_>) -> Result<GenericCommand, CodecError> {
    let command = match (protocol.is_base64(), frame) {
        (false, FrameRef::Binary(bytes)) => {
            if bytes.len() > MAX_COMMAND_BYTES {
                return Err(CodecError::TooLarge {
                    frame_len: bytes.len(),
                });
            }
            GenericCommand::decode(bytes)?
        }
        (true, FrameRef::Text(text)) => {
            let too_large = CodecError::TooLarge {
                frame_len: text.len(),
            };
            if text.len() > MAX_TEXT_CHARS {
                return Err(too_large);
            }
            let bytes = BASE64.decode(text)?;
            if bytes.len() > MAX_COMMAND_BYTES {
                return Err(too_large);
            }
            GenericCommand::decode(bytes.as_slice())?
        }
        _ => return Err(CodecError::WrongFrameType { protocol }),
    };
    check_envelope(&command)?;
    Ok(command)
}

/// `cmd` present and known, `op` absent or known.
fn check_envelope(command: &GenericCommand) -> Result<(), CodecError> {
    let i = command.i;
    match command.cmd {
        None => return Err(CodecError::MissingCmd { i }),
        Some(cmd) if CommandType::try_from(cmd).is_err() => {
            return Err(CodecError::UnknownCmd { cmd, i });
        }
        Some(_) => {}
    }
    if let Some(op) = command.op
        && OpType::try_from(op).is_err()
    {
        return Err(CodecError::UnknownOp { op, i });
    }
    Ok(())
}

/// Encodes a command as a frame of `protocol`.
pub fn encode(protocol: LcProtocol, command: &GenericCommand) -> WireFrame {
    frame_encoded(protocol, Bytes::from(command.encode_to_vec()))
}

/// Frames an already encoded command, so a push encoded once can go to connections of either
/// format.
pub fn frame_encoded(protocol: LcProtocol, encoded: Bytes) -> WireFrame {
    if protocol.is_base64() {
        WireFrame::Text(BASE64.encode(&encoded))
    } else {
        WireFrame::Binary(encoded)
    }
}

/// Defines [`ErrorCode`] from one table, so number and name cannot drift apart.
macro_rules! error_codes {
    ($($(#[$doc:meta])* $variant:ident = $code:literal, $reason:literal;)*) => {
        /// LeanCloud's error codes (the subset the supported SDK features meet).
        ///
        /// Sent as `ErrorCommand`/`AckCommand`/`SessionCommand` `code` with [`ErrorCode::reason`]
        /// as `reason`: the JS SDK uses the reason as the error's name and message, and its
        /// tests match on these upper-case names.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $($(#[$doc])* $variant,)*
        }

        impl ErrorCode {
            /// Every code, in numeric order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The number on the wire.
            pub const fn code(self) -> i32 {
                match self {
                    $(ErrorCode::$variant => $code,)*
                }
            }

            /// The constant name, used as `reason` on the wire.
            pub const fn reason(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $reason,)*
                }
            }

            /// The code with this number, if it is one of these.
            pub const fn from_code(code: i32) -> Option<ErrorCode> {
                match code {
                    $($code => Some(ErrorCode::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

error_codes! {
    /// The app is disabled; also a close code that stops the JS SDK from reconnecting.
    AppNotAvailable = 4100, "APP_NOT_AVAILABLE";
    /// Bad login signature.
    SignatureFailed = 4102, "SIGNATURE_FAILED";
    /// Bad client id (over 64 characters); also a fatal close code.
    InvalidLogin = 4103, "INVALID_LOGIN";
    /// A command other than `session/open` before any session is open.
    SessionRequired = 4105, "SESSION_REQUIRED";
    /// Idle connection closed.
    ReadTimeout = 4107, "READ_TIMEOUT";
    /// No `session/open` in time.
    LoginTimeout = 4108, "LOGIN_TIMEOUT";
    /// A command over [`MAX_COMMAND_BYTES`].
    FrameTooLong = 4109, "FRAME_TOO_LONG";
    /// Origin not allowed; a fatal close code.
    InvalidOrigin = 4110, "INVALID_ORIGIN";
    /// Replaced by a newer login with the same device tag.
    SessionConflict = 4111, "SESSION_CONFLICT";
    /// Resume with an unknown or expired session token.
    SessionTokenExpired = 4112, "SESSION_TOKEN_EXPIRED";
    /// App quota exceeded.
    AppQuotaExceeded = 4113, "APP_QUOTA_EXCEEDED";
    /// Kicked by the app's backend.
    KickedByApp = 4115, "KICKED_BY_APP";
    /// Message rate quota exceeded.
    MessageSentQuotaExceeded = 4116, "MESSAGE_SENT_QUOTA_EXCEEDED";
    /// Server-side failure.
    InternalError = 4200, "INTERNAL_ERROR";
    /// A conversation operation failed.
    ConversationApiFailed = 4301, "CONVERSATION_API_FAILED";
    /// Bad conversation signature.
    ConversationSignatureFailed = 4302, "CONVERSATION_SIGNATURE_FAILED";
    /// No such conversation; also the answer for expired temporary conversations.
    ConversationNotFound = 4303, "CONVERSATION_NOT_FOUND";
    /// Member limit reached.
    ConversationFull = 4304, "CONVERSATION_FULL";
    /// Refused by an app hook.
    ConversationRejectedByApp = 4305, "CONVERSATION_REJECTED_BY_APP";
    /// The conversation cannot be changed (e.g. temporary ones).
    ConversationReadOnly = 4307, "CONVERSATION_READ_ONLY";
    /// Update by a non-member.
    ConversationUpdateRejected = 4309, "CONVERSATION_UPDATE_REJECTED";
    /// History read by a non-member.
    ConversationLogRejected = 4312, "CONVERSATION_LOG_REJECTED";
    /// The operation needs membership.
    ConversationMembershipRequired = 4317, "CONVERSATION_MEMBERSHIP_REQUIRED";
    /// Role too low.
    ConversationOperationUnauthorized = 4320, "CONVERSATION_OPERATION_UNAUTHORIZED";
    /// Temporary conversation expired. Clients derive it from 4303; the server sends 4303.
    TemporaryConversationExpired = 4323, "TEMPORARY_CONVERSATION_EXPIRED";
    /// The operation needs the owner.
    ConversationNeedOwner = 4324, "CONVERSATION_NEED_OWNER";
    /// Message sent by a non-member.
    InvalidMessagingTarget = 4401, "INVALID_MESSAGING_TARGET";
    /// Message refused by an app hook.
    MessageRejectedByApp = 4402, "MESSAGE_REJECTED_BY_APP";
    /// Edit or recall of someone else's message.
    MessageOwnershipRequired = 4403, "MESSAGE_OWNERSHIP_REQUIRED";
    /// No such message.
    MessageNotFound = 4404, "MESSAGE_NOT_FOUND";
    /// Editing is off.
    MessageEditDisabled = 4406, "MESSAGE_EDIT_DISABLED";
    /// Recall is off.
    MessageRecallDisabled = 4407, "MESSAGE_RECALL_DISABLED";
    /// Content changed by the censorship filter.
    MessageModifiedByCensorship = 4408, "MESSAGE_MODIFIED_BY_CENSORSHIP";
    /// The blacklist feature is off.
    BlacklistFeatureDisabled = 4544, "BLACKLIST_FEATURE_DISABLED";
    /// Blocked by the conversation.
    BlockedByConv = 4548, "BLOCKED_BY_CONV";
    /// Muted member. The name keeps LeanCloud's spelling: clients match on it.
    Silienced = 4563, "SILIENCED";
}

/// WebSocket close codes LeanCloud servers use.
///
/// The JS SDK treats [`CloseCode::is_fatal`] ones as final (an error event, no reconnect) and
/// reconnects, with backoff, after any other code. Conflicts and kicks are not closes: they are
/// `session/closed` pushes with [`ErrorCode::SessionConflict`] or [`ErrorCode::KickedByApp`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// 4100: the app is disabled.
    AppNotAvailable,
    /// 4103: bad client id.
    InvalidLogin,
    /// 4107: idle too long.
    ReadTimeout,
    /// 4108: no `session/open` in time.
    LoginTimeout,
    /// 4109: a command over [`MAX_COMMAND_BYTES`].
    FrameTooLong,
    /// 4110: origin not allowed.
    InvalidOrigin,
}

impl CloseCode {
    /// The error code with the same number and name.
    pub const fn error_code(self) -> ErrorCode {
        match self {
            CloseCode::AppNotAvailable => ErrorCode::AppNotAvailable,
            CloseCode::InvalidLogin => ErrorCode::InvalidLogin,
            CloseCode::ReadTimeout => ErrorCode::ReadTimeout,
            CloseCode::LoginTimeout => ErrorCode::LoginTimeout,
            CloseCode::FrameTooLong => ErrorCode::FrameTooLong,
            CloseCode::InvalidOrigin => ErrorCode::InvalidOrigin,
        }
    }

    /// The close code on the wire.
    pub const fn code(self) -> u16 {
        // Every LeanCloud code is in 4000..=4999, the range RFC 6455 leaves to applications.
        self.error_code().code() as u16
    }

    /// The close reason: the constant name, as in error replies.
    pub const fn reason(self) -> &'static str {
        self.error_code().reason()
    }

    /// Whether the JS SDK gives up instead of reconnecting.
    pub const fn is_fatal(self) -> bool {
        matches!(
            self,
            CloseCode::AppNotAvailable | CloseCode::InvalidLogin | CloseCode::InvalidOrigin
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leancloud::pb::{self, logs_command::QueryDirection};

    const ALL: [LcProtocol; 4] = LcProtocol::ALL;
    const CID: &str = "65a1b2c3d4e5f60718293a4b";
    const UUID: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn decode_bin(bytes: &[u8]) -> Result<GenericCommand, CodecError> {
        decode(LcProtocol::ProtobufV3, FrameRef::Binary(bytes))
    }

    fn round_trip(protocol: LcProtocol, command: &GenericCommand) -> GenericCommand {
        let frame = encode(protocol, command);
        match (&frame, protocol.is_base64()) {
            (WireFrame::Text(_), true) | (WireFrame::Binary(_), false) => {}
            _ => panic!("{protocol} encoded as {frame:?}"),
        }
        decode(protocol, frame.as_frame_ref()).unwrap()
    }

    fn command(cmd: CommandType) -> GenericCommand {
        GenericCommand {
            cmd: Some(cmd as i32),
            ..Default::default()
        }
    }

    /// A command touching many field kinds: strings, ints, negative ints, bools, bytes,
    /// repeated strings, nested and repeated messages.
    fn rich_command() -> GenericCommand {
        GenericCommand {
            cmd: Some(CommandType::Conv as i32),
            op: Some(OpType::Started as i32),
            peer_id: Some("alice".into()),
            i: Some(i32::MAX),
            service: Some(2),
            server_ts: Some(1_716_800_000_123),
            conv_message: Some(pb::ConvCommand {
                m: vec!["alice".into(), "bob".into()],
                cid: Some("_tmp:abc".into()),
                temp_conv_ttl: Some(3600),
                failed_pids: vec![pb::ErrorCommand {
                    code: ErrorCode::ConversationFull.code(),
                    reason: ErrorCode::ConversationFull.reason().into(),
                    pids: vec!["carol".into()],
                    ..Default::default()
                }],
                attr: Some(pb::JsonObjectMessage {
                    data: r#"{"name":"ünïcødé"}"#.into(),
                }),
                ..Default::default()
            }),
            direct_message: Some(pb::DirectCommand {
                binary_msg: Some(Bytes::from_static(&[0, 1, 2, 255])),
                mention_pids: vec!["bob".into()],
                conv_type: Some(-4),
                ..Default::default()
            }),
            logs_message: Some(pb::LogsCommand {
                lctype: Some(-1),
                direction: Some(QueryDirection::New as i32),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn every_mode_round_trips() {
        let c = rich_command();
        for p in ALL {
            assert_eq!(round_trip(p, &c), c, "{p}");
        }
    }

    #[test]
    fn frames_are_binary_protobuf_or_its_base64() {
        let c = rich_command();
        let WireFrame::Binary(bin) = encode(LcProtocol::ProtobufV3, &c) else {
            panic!("binary expected");
        };
        assert_eq!(bin, c.encode_to_vec());
        let WireFrame::Text(text) = encode(LcProtocol::Base64V3, &c) else {
            panic!("text expected");
        };
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(&text)
                .unwrap(),
            bin
        );
        assert_eq!(text.len() % 4, 0, "always padded");
        assert_eq!(
            frame_encoded(LcProtocol::Base64V1, bin.clone()),
            WireFrame::Text(text)
        );
    }

    #[test]
    fn unset_optionals_stay_unset() {
        // A delivery receipt: Java reads any `read` present as a read receipt.
        let mut c = command(CommandType::Rcp);
        c.rcp_message = Some(pb::RcpCommand {
            id: Some("m1".into()),
            cid: Some(CID.into()),
            t: Some(5),
            from: Some("bob".into()),
            read: None,
        });
        let encoded = c.encode_to_vec();
        // The rcp body is id, cid, t, from: no field 4 (tag 0x20).
        let body = &c.rcp_message.as_ref().unwrap().encode_to_vec();
        assert!(!body.contains(&0x20), "{body:02x?}");
        assert!(encoded.ends_with(body));
        for p in ALL {
            let back = round_trip(p, &c);
            assert_eq!(back.rcp_message.unwrap().read, None);
            assert_eq!(back.i, None);
            assert_eq!(back.op, None);
            assert_eq!(back.peer_id, None);
            assert_eq!(back.ack_message, None);
        }
        // A successful ack carries no `code` (JS and Java treat its presence as failure).
        let mut ack = command(CommandType::Ack);
        ack.ack_message = Some(pb::AckCommand {
            uid: Some("m1".into()),
            t: Some(1),
            ..Default::default()
        });
        let back = round_trip(LcProtocol::ProtobufV3, &ack)
            .ack_message
            .unwrap();
        assert_eq!((back.code, back.reason), (None, None));
        // An absent `direction` reads as the schema default, OLD, without becoming present.
        let mut logs = command(CommandType::Logs);
        logs.logs_message = Some(pb::LogsCommand::default());
        let back = round_trip(LcProtocol::ProtobufV3, &logs)
            .logs_message
            .unwrap();
        assert_eq!(back.direction, None);
        assert_eq!(back.direction(), QueryDirection::Old);
    }

    #[test]
    fn explicit_defaults_stay_present() {
        let mut c = command(CommandType::Session);
        c.op = Some(OpType::Open as i32);
        c.i = Some(0);
        c.service = Some(0);
        c.app_id = Some(String::new());
        c.session_message = Some(pb::SessionCommand {
            r: Some(false),
            config_bitmap: Some(0),
            ..Default::default()
        });
        c.rcp_message = Some(pb::RcpCommand {
            read: Some(false),
            ..Default::default()
        });
        c.ack_message = Some(pb::AckCommand {
            code: Some(0),
            ..Default::default()
        });
        c.direct_message = Some(pb::DirectCommand {
            msg: Some(String::new()),
            binary_msg: Some(Bytes::new()),
            transient: Some(false),
            ..Default::default()
        });
        // Empty sub-messages are present too.
        c.presence_message = Some(pb::PresenceCommand::default());
        for p in ALL {
            let back = round_trip(p, &c);
            assert_eq!(back, c, "{p}");
            assert_eq!(back.cmd, Some(0));
            assert_eq!(back.i, Some(0));
            assert_eq!(back.rcp_message.unwrap().read, Some(false));
            assert_eq!(back.ack_message.unwrap().code, Some(0));
            let d = back.direct_message.unwrap();
            assert_eq!(d.binary_msg, Some(Bytes::new()));
            assert_eq!(d.transient, Some(false));
        }
    }

    #[test]
    fn required_fields_are_always_written_and_not_insisted_on() {
        // `unread: 0` is how other devices learn a conversation was read: it must be on the wire.
        let t = pb::UnreadTuple {
            cid: CID.into(),
            unread: 0,
            ..Default::default()
        };
        assert!(t.encode_to_vec().ends_with(&[0x10, 0x00]));
        // An error without `reason` still decodes (as the SDKs do), with an empty reason.
        let frame = hex("0807ba06020801"); // error { errorMessage { code: 1 } }
        let e = decode_bin(&frame).unwrap().error_message.unwrap();
        assert_eq!((e.code, e.reason.as_str()), (1, ""));
    }

    /// Frames of the recorded trace (reference, Appendix A), assembled field by field from the
    /// reference's tables with the trace's values (ids, tokens and times filled in: the trace
    /// gives no raw bytes), in field order as the SDKs write them. Each must decode to those
    /// fields and re-encode to the same bytes, which pins numbers, wire types and field order.
    fn trace_frame(chunks: &[&str]) -> GenericCommand {
        let bytes = hex(&chunks.concat());
        let c = decode_bin(&bytes).unwrap();
        assert_eq!(c.encode_to_vec(), bytes, "re-encoding differs");
        c
    }

    #[test]
    fn decodes_the_trace_session_frames() {
        // => session/open
        let c = trace_frame(&[
            "0800",                               // cmd: session
            "1001",                               // op: open
            "1a0f73656c66686f73742d6170702d6964", // appId: "selfhost-app-id"
            "2205616c696365",                     // peerId: "alice"
            "2801",                               // i: 1
            "b20643",                             // sessionMessage (67 bytes)
            "220d6a732f352e302e302d72632e38",     //   ua: "js/5.0.0-rc.8"
            "2800",                               //   r: false
            "3a24", //   deviceId: "0f8fad5b-d9cb-469f-a165-70867728950e"
            "30663866616435622d643963622d343639662d613136352d3730383637373238",
            "39353065",
            "900180a084cafb31", //   lastPatchTime: 1716800000000
            "9801bb01",         //   configBitmap: 187
        ]);
        assert_eq!((c.cmd(), c.op()), (CommandType::Session, OpType::Open));
        assert_eq!(c.app_id.as_deref(), Some("selfhost-app-id"));
        assert_eq!((c.peer_id.as_deref(), c.i), (Some("alice"), Some(1)));
        let s = c.session_message.unwrap();
        assert_eq!(s.ua.as_deref(), Some("js/5.0.0-rc.8"));
        assert_eq!(s.r, Some(false));
        assert_eq!(s.device_id.as_deref(), Some(UUID));
        assert_eq!(s.last_patch_time, Some(1_716_800_000_000));
        assert_eq!(s.config_bitmap, Some(187));
        assert_eq!((s.tag, s.st, s.t), (None, None, None));

        // <= session/opened
        let c = trace_frame(&[
            "0800",                             // cmd: session
            "1005",                             // op: opened
            "2205616c696365",                   // peerId: "alice"
            "2801",                             // i: 1
            "48fba084cafb31",                   // serverTs: 1716800000123
            "b20614",                           // sessionMessage (20 bytes)
            "520e73742d746f6b656e2d616c696365", //   st: "st-token-alice"
            "5880a305",                         //   stTtl: 86400
        ]);
        assert_eq!((c.op(), c.i), (OpType::Opened, Some(1)));
        assert_eq!(c.server_ts, Some(1_716_800_000_123));
        let s = c.session_message.unwrap();
        assert_eq!(s.st.as_deref(), Some("st-token-alice"));
        assert_eq!(s.st_ttl, Some(86_400));

        // => session/query
        let c = trace_frame(&[
            "0800",             // cmd: session
            "1007",             // op: query
            "2205616c696365",   // peerId: "alice"
            "280d",             // i: 13
            "b2060d",           // sessionMessage (13 bytes)
            "4203626f62",       //   sessionPeerIds: "bob"
            "42066e6f626f6479", //   sessionPeerIds: "nobody"
        ]);
        assert_eq!(c.op(), OpType::Query);
        let s = c.session_message.unwrap();
        assert_eq!(s.session_peer_ids, ["bob", "nobody"]);

        // => echo, the JS heartbeat
        let c = trace_frame(&[
            "080e", // cmd: echo
            "2814", // i: 20
        ]);
        assert_eq!((c.cmd(), c.op, c.i), (CommandType::Echo, None, Some(20)));
    }

    #[test]
    fn decodes_the_trace_conversation_frames() {
        // => conv/start
        let c = trace_frame(&[
            "0801",           // cmd: conv
            "101e",           // op: start
            "2205616c696365", // peerId: "alice"
            "2803",           // i: 3
            "f20630",         // convMessage (48 bytes)
            "0a05616c696365", //   m: "alice"
            "0a03626f62",     //   m: "bob"
            "1801",           //   unique: true
            "ba061f",         //   attr (31 bytes)
            "0a1d",           //     data: {"color":"red","name":"demo"}
            "7b22636f6c6f72223a22726564222c226e616d65223a2264656d6f227d",
        ]);
        assert_eq!(
            (c.cmd(), c.op(), c.i),
            (CommandType::Conv, OpType::Start, Some(3))
        );
        let conv = c.conv_message.unwrap();
        assert_eq!(conv.m, ["alice", "bob"]);
        assert_eq!(conv.unique, Some(true));
        assert_eq!(conv.attr.unwrap().data, r#"{"color":"red","name":"demo"}"#);
        assert_eq!((conv.transient, conv.temp_conv), (None, None));

        // <= conv/joined, a push: no i
        let c = trace_frame(&[
            "0801",       // cmd: conv
            "1020",       // op: joined
            "2203626f62", // peerId: "bob"
            "4002",       // service: 2
            "f20621",     // convMessage (33 bytes)
            "2218",       //   cid: "65a1b2c3d4e5f60718293a4b"
            "363561316232633364346535663630373138323933613462",
            "3205616c696365", //   initBy: "alice"
        ]);
        assert_eq!((c.op(), c.i, c.service), (OpType::Joined, None, Some(2)));
        let conv = c.conv_message.unwrap();
        assert_eq!(
            (conv.cid.as_deref(), conv.init_by.as_deref()),
            (Some(CID), Some("alice"))
        );

        // => conv/start of a temporary conversation
        let c = trace_frame(&[
            "0801",           // cmd: conv
            "101e",           // op: start
            "2205616c696365", // peerId: "alice"
            "2804",           // i: 4
            "f2061c",         // convMessage (28 bytes)
            "0a05616c696365", //   m: "alice"
            "0a03626f62",     //   m: "bob"
            "1801",           //   unique: true
            "d80101",         //   tempConv: true
            "e001901c",       //   tempConvTTL: 3600
            "ba0604",         //   attr (4 bytes)
            "0a027b7d",       //     data: "{}"
        ]);
        let conv = c.conv_message.unwrap();
        assert_eq!(
            (conv.temp_conv, conv.temp_conv_ttl),
            (Some(true), Some(3600))
        );
        assert_eq!(conv.attr.unwrap().data, "{}");
    }

    #[test]
    fn decodes_the_trace_message_frames() {
        // => direct
        let c = trace_frame(&[
            "0802",           // cmd: direct
            "2205616c696365", // peerId: "alice"
            "2807",           // i: 7
            "c20666",         // directMessage (102 bytes)
            "0a22",           //   msg: {"_lctext":"hello 1","_lctype":-1}
            "7b225f6c6374657874223a2268656c6c6f2031222c225f6c6374797065223a2d",
            "317d",
            "5001", //   r: true
            "5a18", //   cid: "65a1b2c3d4e5f60718293a4b"
            "363561316232633364346535663630373138323933613462",
            "7224", //   dt: "0f8fad5b-d9cb-469f-a165-70867728950e"
            "30663866616435622d643963622d343639662d613136352d3730383637373238",
            "39353065",
        ]);
        assert_eq!((c.cmd(), c.op, c.i), (CommandType::Direct, None, Some(7)));
        let d = c.direct_message.unwrap();
        assert_eq!(
            d.msg.as_deref(),
            Some(r#"{"_lctext":"hello 1","_lctype":-1}"#)
        );
        assert_eq!(
            (d.r, d.cid.as_deref(), d.dt.as_deref()),
            (Some(true), Some(CID), Some(UUID))
        );
        assert_eq!((d.transient, d.will, d.binary_msg), (None, None, None));

        // <= ack, the reply: no code
        let c = trace_frame(&[
            "0803",                 // cmd: ack
            "2205616c696365",       // peerId: "alice"
            "2807",                 // i: 7
            "ca0611",               // ackMessage (17 bytes)
            "28e8a784cafb31",       //   t: 1716800001000
            "32086d73672d30303031", //   uid: "msg-0001"
        ]);
        let a = c.ack_message.unwrap();
        assert_eq!(
            (a.t, a.uid.as_deref()),
            (Some(1_716_800_001_000), Some("msg-0001"))
        );
        assert_eq!(a.code, None);

        // <= direct, the push to bob
        let c = trace_frame(&[
            "0802",       // cmd: direct
            "2203626f62", // peerId: "bob"
            "4002",       // service: 2
            "c20659",     // directMessage (89 bytes)
            "0a22",       //   msg: {"_lctext":"hello 1","_lctype":-1}
            "7b225f6c6374657874223a2268656c6c6f2031222c225f6c6374797065223a2d",
            "317d",
            "1a05616c696365", //   fromPeerId: "alice"
            "20e8a784cafb31", //   timestamp: 1716800001000
            "5a18",           //   cid: "65a1b2c3d4e5f60718293a4b"
            "363561316232633364346535663630373138323933613462",
            "62086d73672d30303031", //   id: "msg-0001"
            "b00101",               //   convType: 1
        ]);
        let d = c.direct_message.unwrap();
        assert_eq!(d.from_peer_id.as_deref(), Some("alice"));
        assert_eq!((d.id.as_deref(), d.conv_type), (Some("msg-0001"), Some(1)));

        // => ack of a range, from bob: no i
        let c = trace_frame(&[
            "0803",       // cmd: ack
            "2203626f62", // peerId: "bob"
            "ca0628",     // ackMessage (40 bytes)
            "2218",       //   cid: "65a1b2c3d4e5f60718293a4b"
            "363561316232633364346535663630373138323933613462",
            "38e8a784cafb31", //   fromts: 1716800001000
            "40e8a784cafb31", //   tots: 1716800001000
        ]);
        assert_eq!(c.i, None);
        let a = c.ack_message.unwrap();
        assert_eq!(
            (a.fromts, a.tots),
            (Some(1_716_800_001_000), Some(1_716_800_001_000))
        );

        // <= rcp, a delivery receipt: `read` absent
        let c = trace_frame(&[
            "0804",                 // cmd: rcp
            "2205616c696365",       // peerId: "alice"
            "4002",                 // service: 2
            "e20630",               // rcpMessage (48 bytes)
            "0a086d73672d30303031", //   id: "msg-0001"
            "1218",                 //   cid: "65a1b2c3d4e5f60718293a4b"
            "363561316232633364346535663630373138323933613462",
            "18dcab84cafb31", //   t: 1716800001500
            "2a03626f62",     //   from: "bob"
        ]);
        let r = c.rcp_message.unwrap();
        assert_eq!((r.read, r.from.as_deref()), (None, Some("bob")));

        // <= rcp, a read receipt
        let c = trace_frame(&[
            "0804",                 // cmd: rcp
            "2205616c696365",       // peerId: "alice"
            "4002",                 // service: 2
            "e20632",               // rcpMessage (50 bytes)
            "0a086d73672d30303031", //   id: "msg-0001"
            "1218",                 //   cid: "65a1b2c3d4e5f60718293a4b"
            "363561316232633364346535663630373138323933613462",
            "18d0af84cafb31", //   t: 1716800002000
            "2001",           //   read: true
            "2a03626f62",     //   from: "bob"
        ]);
        assert_eq!(c.rcp_message.unwrap().read, Some(true));
    }

    #[test]
    fn decodes_the_trace_history_read_patch_unread_frames() {
        // => logs toward newer messages, text only (a negative int32 takes 10 bytes)
        let c = trace_frame(&[
            "0806",           // cmd: logs
            "2205616c696365", // peerId: "alice"
            "2809",           // i: 9
            "ea062b",         // logsMessage (43 bytes)
            "0a18",           //   cid: "65a1b2c3d4e5f60718293a4b"
            "363561316232633364346535663630373138323933613462",
            "100a",                   //   l: 10
            "2000",                   //   t: 0
            "5002",                   //   direction: NEW
            "68ffffffffffffffffff01", //   lctype: -1
        ]);
        let l = c.logs_message.unwrap();
        assert_eq!((l.l, l.limit, l.t), (Some(10), None, Some(0)));
        assert_eq!((l.direction(), l.lctype), (QueryDirection::New, Some(-1)));

        // => read, no i
        let c = trace_frame(&[
            "080b",       // cmd: read
            "2203626f62", // peerId: "bob"
            "da062d",     // readMessage (45 bytes)
            "1a2b",       //   convs (43 bytes)
            "0a18",       //     cid: "65a1b2c3d4e5f60718293a4b"
            "363561316232633364346535663630373138323933613462",
            "10e8a784cafb31",       //     timestamp: 1716800001000
            "1a086d73672d30303031", //     mid: "msg-0001"
        ]);
        let t = &c.read_message.unwrap().convs[0];
        assert_eq!((t.cid.as_str(), t.mid.as_deref()), (CID, Some("msg-0001")));

        // => patch/modify, a recall
        let c = trace_frame(&[
            "0812",           // cmd: patch
            "109601",         // op: modify
            "2205616c696365", // peerId: "alice"
            "280b",           // i: 11
            "92072f",         // patchMessage (47 bytes)
            "0a2d",           //   patches (45 bytes)
            "0a18",           //     cid: "65a1b2c3d4e5f60718293a4b"
            "363561316232633364346535663630373138323933613462",
            "12086d73672d30303031", //     mid: "msg-0001"
            "18e8a784cafb31",       //     timestamp: 1716800001000
            "2001",                 //     recall: true
        ]);
        assert_eq!((c.cmd(), c.op()), (CommandType::Patch, OpType::Modify));
        let p = c.patch_message.unwrap();
        assert_eq!((p.patches[0].recall, p.last_patch_time), (Some(true), None));

        // <= unread after the reconnect
        let c = trace_frame(&[
            "0805",       // cmd: unread
            "2203626f62", // peerId: "bob"
            "4002",       // service: 2
            "d20663",     // unreadMessage (99 bytes)
            "0a5a",       //   convs (90 bytes)
            "0a18",       //     cid: "65a1b2c3d4e5f60718293a4b"
            "363561316232633364346535663630373138323933613462",
            "1002",                 //     unread: 2
            "1a086d73672d30303032", //     mid: "msg-0002"
            "20b8b784cafb31",       //     timestamp: 1716800003000
            "2a05616c696365",       //     from: "alice"
            "3222",                 //     data: {"_lctext":"hello 2","_lctype":-1}
            "7b225f6c6374657874223a2268656c6c6f2032222c225f6c6374797065223a2d",
            "317d",
            "4000",           //     mentioned: false
            "10a0bf84cafb31", //   notifTime: 1716800004000
        ]);
        let u = c.unread_message.unwrap();
        assert_eq!(u.notif_time, Some(1_716_800_004_000));
        let t = &u.convs[0];
        assert_eq!(
            (t.unread, t.mentioned, t.binary_msg.as_ref()),
            (2, Some(false), None)
        );
    }

    #[test]
    fn decodes_the_trace_in_base64_mode() {
        // The session/open frame above, as `lc.proto2base64.3` sends it.
        let text = concat!(
            "CAAQARoPc2VsZmhvc3QtYXBwLWlkIgVhbGljZSgBsgZDIg1qcy81LjAuMC1yYy44KAA6JDBmOGZhZDVi",
            "LWQ5Y2ItNDY5Zi1hMTY1LTcwODY3NzI4OTUwZZABgKCEyvsxmAG7AQ=="
        );
        let c = decode(LcProtocol::Base64V3, FrameRef::Text(text)).unwrap();
        assert_eq!(c.app_id.as_deref(), Some("selfhost-app-id"));
        assert_eq!(c.session_message.as_ref().unwrap().config_bitmap, Some(187));
        assert_eq!(
            encode(LcProtocol::Base64V3, &c),
            WireFrame::Text(text.into())
        );
        // Without padding it is accepted too.
        let bare = text.trim_end_matches('=');
        assert_eq!(
            decode(LcProtocol::Base64V1, FrameRef::Text(bare)).unwrap(),
            c
        );
    }

    /// A `direct` whose encoding is exactly `len` bytes.
    fn command_of_len(len: usize) -> GenericCommand {
        let mut c = command(CommandType::Direct);
        for n in 0..len {
            c.direct_message = Some(pb::DirectCommand {
                msg: Some("x".repeat(n)),
                ..Default::default()
            });
            if c.encoded_len() >= len {
                break;
            }
        }
        assert_eq!(c.encoded_len(), len);
        c
    }

    #[test]
    fn size_limit_is_5000_bytes_of_protobuf() {
        let at = command_of_len(MAX_COMMAND_BYTES);
        let over = command_of_len(MAX_COMMAND_BYTES + 1);
        for p in ALL {
            assert_eq!(round_trip(p, &at), at, "{p}");
            let err = decode(p, encode(p, &over).as_frame_ref()).unwrap_err();
            assert!(matches!(err, CodecError::TooLarge { .. }), "{p}: {err}");
            assert_eq!(err.close_code(), 4109);
            assert_eq!(err.error_code(), Some(ErrorCode::FrameTooLong));
            // Outbound is not limited.
            assert!(matches!(
                encode(p, &over),
                WireFrame::Binary(_) | WireFrame::Text(_)
            ));
        }
        // In base64 mode the limit is on the decoded bytes: 5000 bytes is 6668 characters.
        let WireFrame::Text(text) = encode(LcProtocol::Base64V3, &at) else {
            unreachable!()
        };
        assert_eq!(text.len(), MAX_TEXT_CHARS);
        assert_eq!(MAX_TEXT_CHARS, 6668);
        // Longer text is refused before decoding, even if it is not base64 at all.
        let junk = "!".repeat(MAX_TEXT_CHARS + 1);
        let err = decode(LcProtocol::Base64V3, FrameRef::Text(&junk)).unwrap_err();
        assert!(
            matches!(err, CodecError::TooLarge { frame_len } if frame_len == MAX_TEXT_CHARS + 1)
        );
        // Oversized binary garbage too: the size is checked first.
        let big = vec![0xff; MAX_COMMAND_BYTES + 1];
        assert!(matches!(
            decode_bin(&big),
            Err(CodecError::TooLarge { frame_len: 5001 })
        ));
    }

    #[test]
    fn wrong_frame_type_is_refused() {
        let c = rich_command();
        for p in ALL {
            let other = if p.is_base64() {
                encode(LcProtocol::ProtobufV3, &c)
            } else {
                encode(LcProtocol::Base64V3, &c)
            };
            let err = decode(p, other.as_frame_ref()).unwrap_err();
            assert!(
                matches!(err, CodecError::WrongFrameType { protocol } if protocol == p),
                "{p}: {err}"
            );
            assert_eq!(err.close_code(), 1003);
        }
    }

    #[test]
    fn envelope_needs_a_known_cmd_and_op() {
        // Empty frame: a valid (empty) message, but no command.
        let err = decode_bin(&[]).unwrap_err();
        assert!(matches!(err, CodecError::MissingCmd { i: None }));
        // {i: 9} only.
        let err = decode_bin(&hex("2809")).unwrap_err();
        assert!(matches!(err, CodecError::MissingCmd { i: Some(9) }));
        assert_eq!(err.request_id(), Some(9));
        // cmd 22 does not exist (prost would read it as `session`).
        let err = decode_bin(&hex("08162805")).unwrap_err();
        assert!(
            matches!(
                err,
                CodecError::UnknownCmd {
                    cmd: 22,
                    i: Some(5)
                }
            ),
            "{err}"
        );
        // Negative cmd.
        let err = decode_bin(&hex("08ffffffffffffffffff01")).unwrap_err();
        assert!(
            matches!(err, CodecError::UnknownCmd { cmd: -1, i: None }),
            "{err}"
        );
        // conv with op 34 (a gap in OpType).
        let err = decode_bin(&hex("08011022280b")).unwrap_err();
        assert!(
            matches!(
                err,
                CodecError::UnknownOp {
                    op: 34,
                    i: Some(11)
                }
            ),
            "{err}"
        );
        assert_eq!(err.close_code(), 1007);
        // Unknown fields elsewhere are skipped, as other protobuf readers do.
        let c = decode_bin(&hex("080eb83e01")).unwrap(); // field 999
        assert_eq!(c.cmd(), CommandType::Echo);
        // Every CommandType value decodes, and with it every OpType value.
        let ops: Vec<i32> = (0..=200).filter(|&v| OpType::try_from(v).is_ok()).collect();
        assert_eq!(ops.len(), 69);
        for cmd in 0..=21 {
            for &op in &ops {
                let mut c = command(CommandType::try_from(cmd).unwrap());
                c.op = Some(op);
                assert_eq!(decode_bin(&c.encode_to_vec()).unwrap(), c);
            }
        }
        assert_eq!(CommandType::try_from(22).ok(), None);
    }

    #[test]
    fn malformed_bytes_are_errors() {
        let cases: &[(&str, &str)] = &[
            ("truncated varint", "08"),
            ("varint over 10 bytes", "08ffffffffffffffffffff01"),
            ("length past the end", "1a05616263"),
            ("length near u64::MAX", "1affffffffffffffffff01"),
            ("wire type 6", "0e"),
            ("wire type 7", "0f"),
            ("field number 0", "0001"),
            ("end group without a start", "08000c"),
            ("string not UTF-8", "08001a02fffe"),
            ("nested string not UTF-8", "0800b206032201ff"),
            ("sub-message truncated", "0802c2060a0a03616263"),
            ("sub-message length past the end", "0802c20605"),
            ("wrong wire type for cmd", "0a0100"),
            ("wrong wire type for sub-message", "0802c00601"),
            ("wrong wire type for repeated string", "0800b2060240ff"),
        ];
        for (what, h) in cases {
            let r = decode_bin(&hex(h));
            assert!(matches!(r, Err(CodecError::Protobuf(_))), "{what}: {r:?}");
        }
        // Unknown groups are skipped, but nesting past prost's recursion limit (100) is an
        // error, not a stack overflow.
        let nested = |depth| {
            let mut b = hex("080e");
            b.extend(std::iter::repeat_n(0x7b_u8, depth)); // start group, field 15
            b.extend(std::iter::repeat_n(0x7c_u8, depth)); // end group, field 15
            decode_bin(&b)
        };
        assert_eq!(nested(50).unwrap().cmd(), CommandType::Echo);
        assert!(matches!(nested(200), Err(CodecError::Protobuf(_))));
        // (The schema itself is not recursive: known messages nest at most four deep.)
    }

    #[test]
    fn malformed_base64_is_an_error() {
        for text in [
            "!!!!", "a", "abcde", "CA=A", "====", " CA4o", "CA4o\n",
            "CA4-", // URL-safe alphabet
            "CB==", // non-zero trailing bits
            "é",
        ] {
            let r = decode(LcProtocol::Base64V3, FrameRef::Text(text));
            assert!(matches!(r, Err(CodecError::Base64(_))), "{text:?}: {r:?}");
        }
        // Valid base64 of bytes that are not a command.
        let r = decode(LcProtocol::Base64V3, FrameRef::Text("Dw=="));
        assert!(matches!(r, Err(CodecError::Protobuf(_))), "{r:?}");
        assert!(decode(LcProtocol::Base64V3, FrameRef::Text("CA4=")).is_ok());
    }

    /// Tiny deterministic generator, so failures reproduce.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn bytes(&mut self, len: usize) -> Vec<u8> {
            (0..len).map(|_| self.next() as u8).collect()
        }
    }

    /// Decodes `frame` in every mode. Whatever happens: no panic, a success is a command with a
    /// known `cmd` and `op`, and the modes of one format agree. Returns whether any accepted it.
    fn survives(frame: FrameRef<'_>) -> bool {
        let results = ALL.map(|p| decode(p, frame).ok());
        for c in results.iter().flatten() {
            assert!(CommandType::try_from(c.cmd.unwrap()).is_ok());
            assert!(c.op.is_none_or(|op| OpType::try_from(op).is_ok()));
        }
        // ALL is [ProtobufV3, Base64V3, ProtobufV1, Base64V1].
        assert_eq!(results[0], results[2]);
        assert_eq!(results[1], results[3]);
        results.iter().any(Option::is_some)
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let valid = rich_command().encode_to_vec();
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=-_ \n!";
        // Frames of uniformly random content, and how many of them decoded.
        let (mut random, mut random_accepted) = (0, 0);
        for round in 0..4000 {
            let bytes = match round % 6 {
                // Uniform random bytes, short and long.
                0 => {
                    let len = rng.below(64);
                    rng.bytes(len)
                }
                1 => {
                    let len = rng.below(6000);
                    rng.bytes(len)
                }
                // A valid command with a few bytes changed.
                2 => {
                    let mut b = valid.clone();
                    for _ in 0..=rng.below(4) {
                        let at = rng.below(b.len());
                        b[at] = rng.next() as u8;
                    }
                    b
                }
                // A valid command cut short, or with random bytes spliced in.
                3 => valid[..rng.below(valid.len())].to_vec(),
                4 => {
                    let mut b = valid.clone();
                    let at = rng.below(b.len());
                    let len = rng.below(16);
                    let junk = rng.bytes(len);
                    b.splice(at..at, junk);
                    b
                }
                // Runs of varint continuation bytes, group starts and ends, cmd keys.
                _ => {
                    let len = rng.below(300);
                    (0..len)
                        .map(|_| [0x80, 0xff, 0x0b, 0x0c, 0x7b, 0x08][rng.below(6)])
                        .collect()
                }
            };
            let binary_accepted = survives(FrameRef::Binary(&bytes));
            // The same bytes as base64 text, and random text near the base64 alphabet.
            let text = base64::engine::general_purpose::STANDARD.encode(&bytes);
            assert_eq!(survives(FrameRef::Text(&text)), binary_accepted);
            let len = rng.below(200);
            let noise: String = (0..len)
                .map(|_| alphabet[rng.below(alphabet.len())] as char)
                .collect();
            let noise_accepted = survives(FrameRef::Text(&noise));
            if let Ok(s) = std::str::from_utf8(&bytes) {
                survives(FrameRef::Text(s));
            }
            if round % 6 < 2 {
                random += 2;
                random_accepted += usize::from(binary_accepted) + usize::from(noise_accepted);
            }
        }
        // Random input is a valid command only by chance (`08 0e` is one: an echo), so rarely.
        assert!(
            random_accepted * 50 < random,
            "{random_accepted} of {random}"
        );
    }

    #[test]
    fn negotiates_the_offered_subprotocol() {
        for p in ALL {
            assert_eq!(
                negotiate([p.token()], None),
                Some(Negotiated {
                    protocol: p,
                    echo: Some(p.token())
                })
            );
            assert_eq!(LcProtocol::from_token(&p.to_string()), Some(p));
        }
        // A list: the first supported token in the client's order; spaces around commas.
        let n = negotiate(["foo,  lc.proto2base64.3 ,lc.protobuf2.3"], None).unwrap();
        assert_eq!(n.protocol, LcProtocol::Base64V3);
        assert_eq!(n.echo, Some("lc.proto2base64.3"));
        // Several header lines count as one list.
        let n = negotiate(["tidings.v1", "lc.protobuf2.1, lc.protobuf2.3"], None).unwrap();
        assert_eq!(n.protocol, LcProtocol::ProtobufV1);
        // Unknown, differently cased, or malformed tokens are not guessed at.
        for offered in [
            "",
            ",",
            "lc.protobuf2.2",
            "lc.protobuf2.4",
            "lc.json.3",
            "LC.PROTOBUF2.3",
            "lc.protobuf2.3x",
            "lc.protobuf2.3;q=1",
            "tidings.v1",
        ] {
            assert_eq!(negotiate([offered], None), None, "{offered:?}");
        }
        assert_eq!(negotiate(std::iter::empty(), None), None);
    }

    #[test]
    fn negotiates_from_the_query_string() {
        let q = |query: &str| negotiate(std::iter::empty(), Some(query));
        let base64 = Some(Negotiated {
            protocol: LcProtocol::Base64V3,
            echo: None,
        });
        assert_eq!(q("subprotocol=lc.proto2base64.3"), base64);
        assert_eq!(q("?subprotocol=lc.proto2base64.3"), base64);
        assert_eq!(q("appId=x&subprotocol=lc.proto2base64.3&_t=1"), base64);
        assert_eq!(q("subprotocol=lc%2Eproto2base64%2e3"), base64);
        assert_eq!(
            q("subprotocol=lc.bogus&subprotocol=lc.proto2base64.3"),
            base64
        );
        assert_eq!(
            q("subprotocol=lc.protobuf2.1").map(|n| n.protocol),
            Some(LcProtocol::ProtobufV1)
        );
        for bad in [
            "",
            "?",
            "subprotocol",
            "subprotocol=",
            "subprotocol=lc.protobuf2.2",
            "Subprotocol=lc.protobuf2.3",
            "xsubprotocol=lc.protobuf2.3",
            "subprotocol=lc.protobuf2.3%",
            "subprotocol=lc.protobuf2.3%zz",
            "subprotocol=%ff",
            "subprotocol=lc.protobuf2.3,lc.protobuf2.1",
        ] {
            assert_eq!(q(bad), None, "{bad:?}");
        }
        // The header wins over the query; a header with nothing supported falls back to it.
        let n = negotiate(["lc.protobuf2.3"], Some("subprotocol=lc.proto2base64.3")).unwrap();
        assert_eq!(n.protocol, LcProtocol::ProtobufV3);
        assert_eq!(n.echo, Some("lc.protobuf2.3"));
        let n = negotiate(["foo"], Some("subprotocol=lc.proto2base64.3")).unwrap();
        assert_eq!((n.protocol, n.echo), (LcProtocol::Base64V3, None));
    }

    #[test]
    fn versions_differ_in_catch_up_only() {
        assert!(LcProtocol::ProtobufV3.pushes_unread_counts());
        assert!(LcProtocol::Base64V3.pushes_unread_counts());
        assert!(!LcProtocol::ProtobufV1.pushes_unread_counts());
        assert!(!LcProtocol::Base64V1.pushes_unread_counts());
        assert!(!LcProtocol::ProtobufV3.is_base64() && !LcProtocol::ProtobufV1.is_base64());
        assert!(LcProtocol::Base64V3.is_base64() && LcProtocol::Base64V1.is_base64());
    }

    #[test]
    fn error_codes_match_the_reference_table() {
        let table = [
            (4100, "APP_NOT_AVAILABLE"),
            (4102, "SIGNATURE_FAILED"),
            (4103, "INVALID_LOGIN"),
            (4105, "SESSION_REQUIRED"),
            (4107, "READ_TIMEOUT"),
            (4108, "LOGIN_TIMEOUT"),
            (4109, "FRAME_TOO_LONG"),
            (4110, "INVALID_ORIGIN"),
            (4111, "SESSION_CONFLICT"),
            (4112, "SESSION_TOKEN_EXPIRED"),
            (4113, "APP_QUOTA_EXCEEDED"),
            (4115, "KICKED_BY_APP"),
            (4116, "MESSAGE_SENT_QUOTA_EXCEEDED"),
            (4200, "INTERNAL_ERROR"),
            (4301, "CONVERSATION_API_FAILED"),
            (4302, "CONVERSATION_SIGNATURE_FAILED"),
            (4303, "CONVERSATION_NOT_FOUND"),
            (4304, "CONVERSATION_FULL"),
            (4305, "CONVERSATION_REJECTED_BY_APP"),
            (4307, "CONVERSATION_READ_ONLY"),
            (4309, "CONVERSATION_UPDATE_REJECTED"),
            (4312, "CONVERSATION_LOG_REJECTED"),
            (4317, "CONVERSATION_MEMBERSHIP_REQUIRED"),
            (4320, "CONVERSATION_OPERATION_UNAUTHORIZED"),
            (4323, "TEMPORARY_CONVERSATION_EXPIRED"),
            (4324, "CONVERSATION_NEED_OWNER"),
            (4401, "INVALID_MESSAGING_TARGET"),
            (4402, "MESSAGE_REJECTED_BY_APP"),
            (4403, "MESSAGE_OWNERSHIP_REQUIRED"),
            (4404, "MESSAGE_NOT_FOUND"),
            (4406, "MESSAGE_EDIT_DISABLED"),
            (4407, "MESSAGE_RECALL_DISABLED"),
            (4408, "MESSAGE_MODIFIED_BY_CENSORSHIP"),
            (4544, "BLACKLIST_FEATURE_DISABLED"),
            (4548, "BLOCKED_BY_CONV"),
            (4563, "SILIENCED"),
        ];
        let ours: Vec<_> = ErrorCode::ALL
            .iter()
            .map(|e| (e.code(), e.reason()))
            .collect();
        assert_eq!(ours, table);
        for &(code, reason) in &table {
            assert_eq!(
                ErrorCode::from_code(code).map(ErrorCode::reason),
                Some(reason)
            );
        }
        assert_eq!(ErrorCode::from_code(4000), None);
    }

    #[test]
    fn close_codes() {
        let all = [
            CloseCode::AppNotAvailable,
            CloseCode::InvalidLogin,
            CloseCode::ReadTimeout,
            CloseCode::LoginTimeout,
            CloseCode::FrameTooLong,
            CloseCode::InvalidOrigin,
        ];
        let codes: Vec<_> = all.iter().map(|c| c.code()).collect();
        assert_eq!(codes, [4100, 4103, 4107, 4108, 4109, 4110]);
        let fatal: Vec<_> = all
            .iter()
            .filter(|c| c.is_fatal())
            .map(|c| c.code())
            .collect();
        assert_eq!(fatal, [4100, 4103, 4110]);
        assert_eq!(CloseCode::FrameTooLong.reason(), "FRAME_TOO_LONG");
        // Close reasons must fit a control frame (123 bytes).
        assert!(all.iter().all(|c| c.reason().len() <= 123));
    }
}
