//! The LeanCloud realtime dialect: lets apps built on LeanCloud's unmodified JS, Swift and Java
//! IM SDKs talk to tidings (LeanCloud's own IM service shuts down on 2027-01-12).
//!
//! Only the wire lives here so far: the schema ([`pb`]), which subprotocol a client asked for,
//! and bytes ⇄ [`pb::GenericCommand`] ([`codec`]). Nothing here knows sessions, permissions or
//! storage; mapping commands onto the registry is a separate layer.

pub mod codec;
pub mod query;
pub mod sign;

/// Types generated from `proto/leancloud/messages2.proto` (package `push_server.messages2`).
///
/// proto2, so optional fields are `Option<_>`: the SDKs test presence, not values.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/push_server.messages2.rs"));
}

pub use codec::{
    CloseCode, CodecError, ErrorCode, FrameRef, LcProtocol, MAX_COMMAND_BYTES, MAX_TEXT_CHARS,
    Negotiated, WireFrame, decode, encode, frame_encoded, negotiate,
};
