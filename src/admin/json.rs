//! The admin API's JSON shapes: requests it reads and the records it answers with.
//!
//! Ids are strings, times are milliseconds since the Unix epoch, and message content is given
//! as `text` (UTF-8) or `content` (base64, any bytes); answers carry both when the content is
//! UTF-8.

use crate::protocol::pb::{self, ConversationKind};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

pub(super) fn kind_name(kind: i32) -> &'static str {
    match ConversationKind::try_from(kind) {
        Ok(ConversationKind::Direct) => "direct",
        Ok(ConversationKind::Group) => "group",
        Ok(ConversationKind::Temporary) => "temporary",
        Ok(ConversationKind::System) => "system",
        Ok(ConversationKind::ChatRoom) => "chat_room",
        _ => "unspecified",
    }
}

/// A conversation kind named in a request.
pub fn parse_kind(name: &str) -> Option<ConversationKind> {
    match name {
        "direct" => Some(ConversationKind::Direct),
        "group" => Some(ConversationKind::Group),
        "temporary" => Some(ConversationKind::Temporary),
        "system" => Some(ConversationKind::System),
        "chat_room" => Some(ConversationKind::ChatRoom),
        _ => None,
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Conversation {
    pub id: String,
    pub kind: &'static str,
    pub name: String,
    pub attributes: BTreeMap<String, String>,
    pub owner: String,
    pub created_at: i64,
    pub member_count: u32,
    /// The two members of a direct or temporary conversation; empty for groups (page through
    /// `GET /v1/conversations/{id}/members`).
    pub members: Vec<String>,
    pub last_seq: u64,
    /// Muted by the acting user.
    pub muted: bool,
    /// Temporary conversations: when it expires (ms); 0 otherwise.
    pub expires_at: i64,
    pub unique: bool,
}

impl From<pb::Conversation> for Conversation {
    fn from(c: pb::Conversation) -> Self {
        Conversation {
            kind: kind_name(c.kind),
            id: c.id,
            name: c.name,
            attributes: c.attributes.into_iter().collect(),
            owner: c.owner,
            created_at: c.created_at,
            member_count: c.member_count,
            members: c.members,
            last_seq: c.last_seq,
            muted: c.muted,
            expires_at: c.expires_at,
            unique: c.unique,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Message {
    pub id: String,
    pub conversation_id: String,
    pub seq: u64,
    pub sender: String,
    #[serde(rename = "type")]
    pub kind: i32,
    /// The content as text, when it is UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The content, base64 (standard alphabet, padded).
    pub content: String,
    pub attributes: BTreeMap<String, String>,
    pub mentions: Vec<String>,
    /// It mentions every member (@all).
    pub mention_all: bool,
    pub server_time: i64,
    pub client_message_id: String,
    pub want_receipts: bool,
    pub edited_at: i64,
    pub edit_count: u32,
    pub recalled: bool,
    pub recalled_at: i64,
}

impl From<pb::Message> for Message {
    fn from(m: pb::Message) -> Self {
        Message {
            text: std::str::from_utf8(&m.content).ok().map(str::to_owned),
            content: base64::engine::general_purpose::STANDARD.encode(&m.content),
            id: m.id,
            conversation_id: m.conversation_id,
            seq: m.seq,
            sender: m.sender,
            kind: m.r#type,
            attributes: m.attributes.into_iter().collect(),
            mentions: m.mentions,
            mention_all: m.mention_all,
            server_time: m.server_time,
            client_message_id: m.client_message_id,
            want_receipts: m.want_receipts,
            edited_at: m.edited_at,
            edit_count: m.edit_count,
            recalled: m.recalled,
            recalled_at: m.recalled_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ListEntry {
    pub conversation_id: String,
    pub kind: &'static str,
    /// Direct conversations: the other member.
    pub peer: String,
    pub name: String,
    pub last_message: Option<Message>,
    pub last_activity: i64,
    pub unread: u32,
    pub last_seq: u64,
    pub read_seq: u64,
    pub pinned: bool,
    pub pinned_at: i64,
    pub ext: String,
    pub expires_at: i64,
    pub muted: bool,
    pub updated_at: i64,
    pub deleted: bool,
}

impl From<pb::ListEntry> for ListEntry {
    fn from(e: pb::ListEntry) -> Self {
        ListEntry {
            kind: kind_name(e.kind),
            conversation_id: e.conversation_id,
            peer: e.peer,
            name: e.name,
            last_message: e.last_message.map(Message::from),
            last_activity: e.last_activity,
            unread: e.unread,
            last_seq: e.last_seq,
            read_seq: e.read_seq,
            pinned: e.pinned,
            pinned_at: e.pinned_at,
            ext: e.ext,
            expires_at: e.expires_at,
            muted: e.muted,
            updated_at: e.updated_at,
            deleted: e.deleted,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Unread {
    pub conversation_id: String,
    pub kind: &'static str,
    pub unread: u32,
    pub last_seq: u64,
    pub read_seq: u64,
    pub last_message: Option<Message>,
    pub muted: bool,
    pub expires_at: i64,
}

impl From<pb::UnreadEntry> for Unread {
    fn from(e: pb::UnreadEntry) -> Self {
        Unread {
            kind: kind_name(e.kind),
            conversation_id: e.conversation_id,
            unread: e.unread,
            last_seq: e.last_seq,
            read_seq: e.read_seq,
            last_message: e.last_message.map(Message::from),
            muted: e.muted,
            expires_at: e.expires_at,
        }
    }
}

/// `POST /v1/conversations`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateConversation {
    /// `direct`, `group` or `temporary`.
    pub kind: String,
    /// The other members (the acting user is always one).
    #[serde(default)]
    pub members: Vec<String>,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// Temporary only: lifetime in seconds (0: `temporary_ttl_default_secs`).
    #[serde(default)]
    pub ttl_secs: u32,
    #[serde(default)]
    pub unique: bool,
}

/// `PATCH /v1/conversations/{id}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateConversation {
    pub name: Option<String>,
    #[serde(default)]
    pub set_attributes: BTreeMap<String, String>,
    #[serde(default)]
    pub remove_attributes: Vec<String>,
    /// Temporary conversations, without `as` only: expire this many seconds from now (1 to
    /// `temporary_ttl_max_secs`), sooner or later than before.
    pub ttl_secs: Option<u32>,
}

/// `POST /v1/conversations/{id}/members` and `…/members/remove`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Members {
    pub members: Vec<String>,
}

/// Content given either as text or as base64 bytes.
pub fn content_bytes(
    text: Option<String>,
    content: Option<String>,
) -> Result<bytes::Bytes, String> {
    match (text, content) {
        (Some(t), None) => Ok(t.into()),
        (None, Some(b)) => base64::engine::general_purpose::STANDARD
            .decode(b)
            .map(Into::into)
            .map_err(|e| format!("content is not base64: {e}")),
        (None, None) => Err("give the content as text or content (base64)".into()),
        (Some(_), Some(_)) => Err("give either text or content, not both".into()),
    }
}

/// `POST /v1/conversations/{id}/messages`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendMessage {
    /// The content as text…
    pub text: Option<String>,
    /// …or as base64 bytes.
    pub content: Option<String>,
    #[serde(default, rename = "type")]
    pub kind: i32,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    #[serde(default)]
    pub mentions: Vec<String>,
    /// Mention every member (@all).
    #[serde(default)]
    pub mention_all: bool,
    /// Idempotency: a retry with the same id returns the first send's answer.
    #[serde(default)]
    pub client_message_id: String,
    /// Delivered to the members online, not stored.
    #[serde(default)]
    pub transient: bool,
    #[serde(default)]
    pub want_receipts: bool,
    /// Without `as` only: stored and delivered, but moving no member's list entry and no
    /// unread count.
    #[serde(default)]
    pub silent: bool,
}

/// `PATCH /v1/conversations/{id}/messages/{message_id}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EditMessage {
    pub text: Option<String>,
    pub content: Option<String>,
    /// New attributes; replace the old ones when given.
    pub attributes: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SendAck {
    pub message_id: String,
    pub seq: u64,
    pub server_time: i64,
    pub duplicate: bool,
}

/// `POST /v1/tokens`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MintToken {
    pub user: String,
    /// Lifetime, seconds (default 3,600; at most 2,592,000, 30 days).
    pub ttl_secs: Option<i64>,
}

/// `POST /v1/users/{user}/disconnect`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Disconnect {
    /// Only the sessions with this device tag.
    pub device: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Token {
    pub token: String,
    /// When it expires (ms).
    pub expires_at: i64,
    /// Its id (`jti`): `POST /v1/users/{user}/revoke-tokens` `{"jti": …}` revokes it alone.
    pub jti: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Presence {
    pub users: Vec<UserPresence>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserPresence {
    pub user: String,
    pub online: bool,
    /// Live sessions (devices).
    pub sessions: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Disconnected {
    /// Sessions closed.
    pub closed: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MemberPage {
    pub members: Vec<String>,
    pub next_cursor: String,
    pub has_more: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MessagePage {
    pub messages: Vec<Message>,
    pub has_more: bool,
    pub next_cursor: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ListPage {
    pub entries: Vec<ListEntry>,
    pub next_cursor: String,
    pub has_more: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UnreadCounts {
    pub entries: Vec<Unread>,
    /// When more entries follow (past `login_summary_max` or `admin_page_max_bytes`): pass as
    /// `cursor` to `GET /v1/users/{user}/conversations` for the rest (empty: none).
    pub next_cursor: String,
}

/// An empty answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Empty {}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetters {
    /// The events, as they would have been sent (`id` is their outbox seq).
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<serde_json::Value>,
    /// Pass as `after` for the next page (0: none).
    pub next_after: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Replayed {
    /// Dead letters this call sent (and deleted).
    pub replayed: usize,
    /// More dead letters are left: call again for the next batch.
    pub more: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OpenTemporary {
    pub conversation: Conversation,
    /// The newest message's time, or the creation's when there is none (ms).
    pub last_activity: i64,
    pub last_message: Option<Message>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OpenTemporaries {
    pub conversations: Vec<OpenTemporary>,
    pub next_cursor: String,
    pub has_more: bool,
}

/// `POST /v1/conversations/{id}/messages/delete`: message ids, or everything before a time.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteMessages {
    #[serde(default)]
    pub message_ids: Vec<String>,
    /// Messages sent before this time (ms)…
    #[serde(default)]
    pub before_time: i64,
    /// …or at it too.
    #[serde(default)]
    pub inclusive: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MessageVersions {
    /// As it was before each change, oldest first.
    pub versions: Vec<Message>,
    pub current: Message,
}

/// A user's access, as the backend decided it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Access {
    pub banned: bool,
    /// Until when (ms; 9223372036854775807: until lifted; 0: not banned).
    pub banned_until: i64,
    pub ban_reason: String,
    pub banned_at: i64,
    /// Tokens issued before this time (ms) are refused (0: none).
    pub tokens_revoked_before: i64,
}

/// `POST /v1/users/{user}/ban`: until a time, for a while, or (neither) until lifted.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Ban {
    /// Until this time (ms)…
    pub until: Option<i64>,
    /// …or for this long.
    pub duration_secs: Option<u64>,
    /// Told to the user's refused logins (at most 512 bytes).
    #[serde(default)]
    pub reason: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Banned {
    pub access: Access,
    /// Live sessions closed.
    pub closed: usize,
}

/// `POST /v1/users/{user}/revoke-tokens`: every token issued before now, or one by its id.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Revoke {
    /// Only this token (its `jti`).
    pub jti: Option<String>,
    /// When that token expires (ms): it is refused until then (default: 30 days from now).
    pub expires_at: Option<i64>,
}

/// `POST /v1/broadcasts`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Broadcast {
    /// Makes it idempotent: each target gets it once (at most `max_client_message_id_bytes`
    /// minus 10 bytes).
    pub broadcast_id: String,
    /// Users, each reached in their direct conversation with `system_sender`.
    #[serde(default)]
    pub users: Vec<String>,
    /// Conversations, reached as the backend.
    #[serde(default)]
    pub conversations: Vec<String>,
    pub text: Option<String>,
    pub content: Option<String>,
    #[serde(default, rename = "type")]
    pub kind: i32,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// Moves no list entry and no unread count.
    #[serde(default)]
    pub silent: bool,
    /// Delivered to those online only, not stored (then not idempotent).
    #[serde(default)]
    pub transient: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BroadcastFailure {
    /// `user:<id>` or `conversation:<id>`.
    pub target: String,
    pub code: i32,
    pub message: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BroadcastResult {
    pub broadcast_id: String,
    /// Targets that got it now.
    pub sent: usize,
    /// Targets that had it already (an earlier run of the same broadcast).
    pub duplicates: usize,
    pub failed: Vec<BroadcastFailure>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Backup {
    /// The dump's path on the server.
    pub file: String,
    pub entries: u64,
    pub bytes: u64,
}

/// `POST /v1/imports/conversations`: a group as it was on another platform.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportConversation {
    /// Its id there; its id here from now on (1 to 128 bytes, no spaces or control characters,
    /// not shaped like a tidings id, no `|` and not starting with `_tmp:`).
    pub conversation_id: String,
    /// In join order.
    pub members: Vec<String>,
    /// The creator: the owner while a member (else the first member is).
    #[serde(default)]
    pub owner: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// When it was created there (ms; absent or 0: the time of the import).
    #[serde(default)]
    pub created_at: i64,
    #[serde(default)]
    pub unique: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ImportedConversation {
    pub conversation: Conversation,
    /// False: it had been imported before (nothing changed).
    pub created: bool,
}

/// One message of `POST /v1/conversations/{id}/messages/import`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportMessage {
    /// Its id there; its id here (history, recall, edit, receipts accept it). 1 to 128 bytes,
    /// no spaces or control characters, not shaped like a tidings message id.
    pub message_id: String,
    pub sender: String,
    /// When it was sent there (ms): its `server_time` here.
    pub server_time: i64,
    /// The content as text…
    pub text: Option<String>,
    /// …or as base64 bytes (neither: empty).
    pub content: Option<String>,
    #[serde(default, rename = "type")]
    pub kind: i32,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// When it was last edited there (ms; 0: never).
    #[serde(default)]
    pub edited_at: i64,
    /// Recalled there: stored as a recall (content and attributes dropped).
    #[serde(default)]
    pub recalled: bool,
}

/// One member's imported read position.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportRead {
    pub user: String,
    /// Read up to the newest message sent at or before this time (ms); absent: everything.
    #[serde(default)]
    pub read_at: Option<i64>,
}

/// `POST /v1/conversations/{id}/reads/import`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportReads {
    /// At most `import_max_messages` entries.
    #[serde(default)]
    pub reads: Vec<ImportRead>,
    /// Members not named in `reads` have read everything. Default true.
    #[serde(default)]
    pub everyone_else: Option<bool>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ImportedReads {
    /// Read positions moved (never back; only members get one).
    pub reads: usize,
}

/// `POST /v1/conversations/{id}/messages/import`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportMessages {
    /// At most `import_max_messages`; any order (they are stored in time order).
    pub messages: Vec<ImportMessage>,
    /// Move every member's read position to the newest message imported (never back), so
    /// nobody finds the imported history unread. Default true.
    #[serde(default)]
    pub mark_read: Option<bool>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ImportFailure {
    pub message_id: String,
    /// The WebSocket protocol's `ErrorCode` number.
    pub code: i32,
    pub message: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ImportResult {
    /// Messages stored by this call.
    pub imported: usize,
    /// Messages imported before (by `message_id`): skipped.
    pub duplicates: usize,
    /// Messages refused, each with its reason; the others were imported.
    pub failed: Vec<ImportFailure>,
    /// The conversation's newest seq after the call.
    pub last_seq: u64,
    /// Read positions moved (`mark_read`).
    pub reads: usize,
}
