//! Key layout for ordered key-value engines. One keyspace; the first byte says what a key is,
//! so everything that must be atomic sits in one tree and one batch. Integers are big-endian
//! (byte order = numeric order); a user id is one length byte then its bytes, so a user's keys
//! never run into a longer id's.
//!
//! | prefix | key                              | value                          |
//! |--------|----------------------------------|--------------------------------|
//! | `C`    | conv                             | ConversationRecord             |
//! | `M`    | conv ‖ user                      | MemberRecord                   |
//! | `U`    | user ‖ conv                      | UserConversationRecord         |
//! | `S`    | conv ‖ seq                       | Message                        |
//! | `R`    | user ‖ conv                      | read seq (u64)                 |
//! | `K`    | conv ‖ sender ‖ client id        | seq (u64)                      |
//! | `D`    | user a ‖ user b (sorted)         | conv (u64)                     |
//! | `E`    | user ‖ event seq                 | ConversationEvent              |
//! | `N`    | counter name (`conversation`, `temporary`, `user_event_floor`) | u64 |
//! | `X`    | expires_at ‖ conv                | ∅ (expiry index, time order: temporary deadlines, and ended conversations whose purge is due) |
//! | `Q`    | sorted member ids                | conv (unique temporary lookup) |
//! | `T`    | user ‖ conv                      | deleted at (i64): list tombstone |
//! | `H`    | user ‖ conv ‖ seq                | ∅ (message deleted one-way)    |
//! | `W`    | conv ‖ seq                       | sender: wants receipts         |
//! | `P`    | conv ‖ patched at ‖ seq          | ∅ (last edit or recall, time order) |
//! | `V`    | (the key is the prefix alone)    | format version (u64)           |
//! | `A`    | conversation alias               | conv (u64)                     |
//! | `B`    | conv ‖ message alias             | seq (u64)                      |
//! | `O`    | outbox seq                       | OutboxRecord (webhook event)   |
//! | `Y`    | endpoint name                    | last outbox seq it was given (u64) |
//! | `Z`    | endpoint name ‖ outbox seq       | OutboxRecord (dead letter)     |
//! | `G`    | user ‖ blocked user              | blocked at (i64)               |
//! | `F`    | user                             | Profile                        |
//! | `u`    | muted until ‖ conv ‖ user        | ∅ (timed mutes, time order)    |
//! | `a`    | conv ‖ seq ‖ version             | Message (as it was before an edit or recall, kept for audit) |
//! | `l`    | conv ‖ seq                       | ∅ (message sent silently)      |
//! | `b`    | user                             | UserAccess (ban, revoked tokens) |
//! | `j`    | token id (`jti`)                 | revoked until (i64 ms)         |
//! | `k`    | revoked until ‖ token id         | ∅ (revoked tokens, time order) |
//! | `i`    | idempotency key                  | IdempotentCreate               |
//! | `h`    | created at ‖ idempotency key     | ∅ (idempotency keys, time order) |
//! | `v`    | kind (u8) ‖ conv                 | ∅ (live conversations by kind, number order) |
//! | `w`    | conv ‖ event seq                 | ConversationEvent (what members heard of one another) |
//! | `I`    | (the key is the prefix alone)    | ∅ (an import of a dump is under way) |
//!
//! Format versions ([`FORMAT_VERSION`]): 1, the layout without `P` and `V` (a store without a
//! `V` key that holds data is version 1); 2 adds the patch index `P` and the version key; 3 adds
//! the aliases `A` and `B` of imported conversations and messages (the ids they had on the
//! platform they came from; nothing to convert from 2); 4 adds the webhook outbox `O`, the
//! endpoints' positions in it `Y` and their dead letters `Z` (nothing to convert from 3);
//! 5 adds the user blocks `G` and the profiles `F` (nothing to convert from 4); 6 adds the
//! kept versions of edited and recalled messages `a`, the silent index `l`, users' access
//! `b`, revoked token ids `j`, `k` and idempotency keys `i`, `h`, and the timed-mute index `u`
//! (built from the members' records when a format-5 store is upgraded); 7 adds the index of
//! live conversations by kind `v` (built from the conversation records when a format-6
//! store is upgraded, then kept by the store itself with every conversation record it writes)
//! and the conversations' own event logs `w` (which only new events fill).
//!
//! The import marker `I` belongs to no format: `tidings store import` writes it before the
//! first entry of a dump and removes it only once the whole dump is loaded, its count and
//! checksum verified and flushed. A store that holds it is the remains of an import that failed
//! or was stopped; opening it for anything but another import is refused (see
//! [`super::open`]), and the next import clears it. No store a server wrote, no finished
//! import and no dump ever holds it, so the data each format describes is unchanged and
//! [`FORMAT_VERSION`] does not count it. (A binary from before the marker would open such a
//! store as it always did.)

pub const CONVERSATION: u8 = b'C';
pub const MEMBER: u8 = b'M';
pub const USER_CONVERSATION: u8 = b'U';
pub const MESSAGE: u8 = b'S';
pub const READ_SEQ: u8 = b'R';
pub const DEDUP: u8 = b'K';
pub const DIRECT: u8 = b'D';
pub const USER_EVENT: u8 = b'E';
pub const COUNTER: u8 = b'N';
pub const EXPIRY: u8 = b'X';
pub const UNIQUE_TEMPORARY: u8 = b'Q';
pub const TOMBSTONE: u8 = b'T';
pub const HIDDEN: u8 = b'H';
pub const RECEIPT_WANTED: u8 = b'W';
pub const PATCH: u8 = b'P';
pub const FORMAT: u8 = b'V';
pub const CONVERSATION_ALIAS: u8 = b'A';
pub const MESSAGE_ALIAS: u8 = b'B';
pub const OUTBOX: u8 = b'O';
pub const WEBHOOK_CURSOR: u8 = b'Y';
pub const DEAD_LETTER: u8 = b'Z';
pub const USER_BLOCK: u8 = b'G';
pub const PROFILE: u8 = b'F';
pub const MUTE_DEADLINE: u8 = b'u';
pub const MESSAGE_VERSION: u8 = b'a';
pub const SILENT: u8 = b'l';
pub const USER_ACCESS: u8 = b'b';
pub const REVOKED_TOKEN: u8 = b'j';
pub const REVOKED_TOKEN_EXPIRY: u8 = b'k';
pub const IDEMPOTENT_CREATE: u8 = b'i';
pub const IDEMPOTENT_CREATE_AGE: u8 = b'h';
pub const CONVERSATION_BY_KIND: u8 = b'v';
pub const CONVERSATION_EVENT: u8 = b'w';
pub const IMPORTING: u8 = b'I';

/// The key layout this build reads and writes.
pub const FORMAT_VERSION: u64 = 7;

/// A key under construction.
pub struct Key(Vec<u8>);

impl Key {
    pub fn new(prefix: u8) -> Self {
        let mut v = Vec::with_capacity(32);
        v.push(prefix);
        Key(v)
    }
    pub fn u64(mut self, n: u64) -> Self {
        self.0.extend_from_slice(&n.to_be_bytes());
        self
    }
    /// A length-prefixed user id (ids are at most 255 bytes; config enforces it).
    pub fn user(mut self, user: &str) -> Self {
        debug_assert!(user.len() <= 255);
        self.0.push(user.len() as u8);
        self.0.extend_from_slice(user.as_bytes());
        self
    }
    /// Raw trailing bytes (only as the last component).
    pub fn tail(mut self, bytes: &[u8]) -> Self {
        self.0.extend_from_slice(bytes);
        self
    }
    pub fn build(self) -> Vec<u8> {
        self.0
    }
}

pub fn conversation(conv: u64) -> Vec<u8> {
    Key::new(CONVERSATION).u64(conv).build()
}
pub fn member(conv: u64, user: &str) -> Vec<u8> {
    Key::new(MEMBER).u64(conv).user(user).build()
}
pub fn members_of(conv: u64) -> Vec<u8> {
    Key::new(MEMBER).u64(conv).build()
}
pub fn user_conversation(user: &str, conv: u64) -> Vec<u8> {
    Key::new(USER_CONVERSATION).user(user).u64(conv).build()
}
pub fn user_conversations_of(user: &str) -> Vec<u8> {
    Key::new(USER_CONVERSATION).user(user).build()
}
pub fn message(conv: u64, seq: u64) -> Vec<u8> {
    Key::new(MESSAGE).u64(conv).u64(seq).build()
}
pub fn read_seq(user: &str, conv: u64) -> Vec<u8> {
    Key::new(READ_SEQ).user(user).u64(conv).build()
}
pub fn dedup(conv: u64, sender: &str, client_id: &str) -> Vec<u8> {
    Key::new(DEDUP)
        .u64(conv)
        .user(sender)
        .tail(client_id.as_bytes())
        .build()
}
pub fn direct(a: &str, b: &str) -> Vec<u8> {
    let (a, b) = if a <= b { (a, b) } else { (b, a) };
    Key::new(DIRECT).user(a).user(b).build()
}
pub fn user_event(user: &str, seq: u64) -> Vec<u8> {
    Key::new(USER_EVENT).user(user).u64(seq).build()
}
pub fn user_events_of(user: &str) -> Vec<u8> {
    Key::new(USER_EVENT).user(user).build()
}
/// Times are never negative here; the cast keeps byte order = time order.
pub fn expiry(at: i64, conv: u64) -> Vec<u8> {
    Key::new(EXPIRY).u64(at.max(0) as u64).u64(conv).build()
}
pub fn expiries() -> Vec<u8> {
    vec![EXPIRY]
}
pub fn unique_temporary<S: AsRef<str>>(members: &[S]) -> Vec<u8> {
    members
        .iter()
        .fold(Key::new(UNIQUE_TEMPORARY), |k, m| k.user(m.as_ref()))
        .build()
}
pub fn messages_of(conv: u64) -> Vec<u8> {
    Key::new(MESSAGE).u64(conv).build()
}
pub fn dedups_of(conv: u64) -> Vec<u8> {
    Key::new(DEDUP).u64(conv).build()
}
pub fn tombstone(user: &str, conv: u64) -> Vec<u8> {
    Key::new(TOMBSTONE).user(user).u64(conv).build()
}
pub fn tombstones_of(user: &str) -> Vec<u8> {
    Key::new(TOMBSTONE).user(user).build()
}
pub fn hidden(user: &str, conv: u64, seq: u64) -> Vec<u8> {
    Key::new(HIDDEN).user(user).u64(conv).u64(seq).build()
}
pub fn hidden_of(user: &str, conv: u64) -> Vec<u8> {
    Key::new(HIDDEN).user(user).u64(conv).build()
}
pub fn receipt_wanted(conv: u64, seq: u64) -> Vec<u8> {
    Key::new(RECEIPT_WANTED).u64(conv).u64(seq).build()
}
pub fn receipts_wanted_of(conv: u64) -> Vec<u8> {
    Key::new(RECEIPT_WANTED).u64(conv).build()
}
/// Times are never negative here; the cast keeps byte order = time order.
pub fn patch(conv: u64, at: i64, seq: u64) -> Vec<u8> {
    Key::new(PATCH)
        .u64(conv)
        .u64(at.max(0) as u64)
        .u64(seq)
        .build()
}
pub fn patches_of(conv: u64) -> Vec<u8> {
    Key::new(PATCH).u64(conv).build()
}
pub fn conversation_alias(alias: &str) -> Vec<u8> {
    Key::new(CONVERSATION_ALIAS).tail(alias.as_bytes()).build()
}
pub fn message_alias(conv: u64, alias: &str) -> Vec<u8> {
    Key::new(MESSAGE_ALIAS)
        .u64(conv)
        .tail(alias.as_bytes())
        .build()
}
pub fn message_aliases_of(conv: u64) -> Vec<u8> {
    Key::new(MESSAGE_ALIAS).u64(conv).build()
}
pub fn outbox(seq: u64) -> Vec<u8> {
    Key::new(OUTBOX).u64(seq).build()
}
/// Endpoint names are at most 255 bytes (checked by the configuration).
pub fn webhook_cursor(endpoint: &str) -> Vec<u8> {
    Key::new(WEBHOOK_CURSOR).tail(endpoint.as_bytes()).build()
}
pub fn dead_letter(endpoint: &str, seq: u64) -> Vec<u8> {
    Key::new(DEAD_LETTER).user(endpoint).u64(seq).build()
}
pub fn dead_letters_of(endpoint: &str) -> Vec<u8> {
    Key::new(DEAD_LETTER).user(endpoint).build()
}
pub fn user_block(user: &str, blocked: &str) -> Vec<u8> {
    Key::new(USER_BLOCK).user(user).user(blocked).build()
}
pub fn user_blocks_of(user: &str) -> Vec<u8> {
    Key::new(USER_BLOCK).user(user).build()
}
pub fn profile(user: &str) -> Vec<u8> {
    Key::new(PROFILE).user(user).build()
}
/// Times are never negative here; the cast keeps byte order = time order.
pub fn mute_deadline(at: i64, conv: u64, user: &str) -> Vec<u8> {
    Key::new(MUTE_DEADLINE)
        .u64(at.max(0) as u64)
        .u64(conv)
        .user(user)
        .build()
}
pub fn mute_deadlines() -> Vec<u8> {
    vec![MUTE_DEADLINE]
}
pub fn message_version(conv: u64, seq: u64, version: u64) -> Vec<u8> {
    Key::new(MESSAGE_VERSION)
        .u64(conv)
        .u64(seq)
        .u64(version)
        .build()
}
pub fn message_versions_of(conv: u64) -> Vec<u8> {
    Key::new(MESSAGE_VERSION).u64(conv).build()
}
pub fn versions_of_message(conv: u64, seq: u64) -> Vec<u8> {
    Key::new(MESSAGE_VERSION).u64(conv).u64(seq).build()
}
pub fn silent(conv: u64, seq: u64) -> Vec<u8> {
    Key::new(SILENT).u64(conv).u64(seq).build()
}
pub fn silent_of(conv: u64) -> Vec<u8> {
    Key::new(SILENT).u64(conv).build()
}
pub fn user_access(user: &str) -> Vec<u8> {
    Key::new(USER_ACCESS).user(user).build()
}
pub fn revoked_token(jti: &str) -> Vec<u8> {
    Key::new(REVOKED_TOKEN).tail(jti.as_bytes()).build()
}
/// Times are never negative here; the cast keeps byte order = time order.
pub fn revoked_token_expiry(until: i64, jti: &str) -> Vec<u8> {
    Key::new(REVOKED_TOKEN_EXPIRY)
        .u64(until.max(0) as u64)
        .tail(jti.as_bytes())
        .build()
}
pub fn idempotent_create(key: &str) -> Vec<u8> {
    Key::new(IDEMPOTENT_CREATE).tail(key.as_bytes()).build()
}
/// Times are never negative here; the cast keeps byte order = time order.
pub fn idempotent_create_age(at: i64, key: &str) -> Vec<u8> {
    Key::new(IDEMPOTENT_CREATE_AGE)
        .u64(at.max(0) as u64)
        .tail(key.as_bytes())
        .build()
}
pub fn conversation_by_kind(kind: u8, conv: u64) -> Vec<u8> {
    Key::new(CONVERSATION_BY_KIND)
        .tail(&[kind])
        .u64(conv)
        .build()
}
pub fn conversations_of_kind(kind: u8) -> Vec<u8> {
    Key::new(CONVERSATION_BY_KIND).tail(&[kind]).build()
}
pub fn conversation_event(conv: u64, seq: u64) -> Vec<u8> {
    Key::new(CONVERSATION_EVENT).u64(conv).u64(seq).build()
}
pub fn conversation_events_of(conv: u64) -> Vec<u8> {
    Key::new(CONVERSATION_EVENT).u64(conv).build()
}
pub fn format_version() -> Vec<u8> {
    vec![FORMAT]
}
pub fn importing() -> Vec<u8> {
    vec![IMPORTING]
}
pub fn counter(name: &str) -> Vec<u8> {
    Key::new(COUNTER).tail(name.as_bytes()).build()
}

/// Reads the big-endian u64 at `at` of a key or value.
pub fn be_u64(bytes: &[u8], at: usize) -> Option<u64> {
    bytes
        .get(at..at + 8)
        .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
}

/// Reads a length-prefixed user id at `at`; returns it and the offset after it.
pub fn user_at(bytes: &[u8], at: usize) -> Option<(&str, usize)> {
    let len = *bytes.get(at)? as usize;
    let s = std::str::from_utf8(bytes.get(at + 1..at + 1 + len)?).ok()?;
    Some((s, at + 1 + len))
}
