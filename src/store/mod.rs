//! Storage behind a narrow typed trait.
//!
//! The registry never sees an engine: it reads through the methods below and writes by handing
//! `commit` a list of typed [`Op`]s that must land atomically (one message and its dedup entry
//! and the sender's read position; one conversation and all its members). Durability is a
//! separate `flush`, so a single writer can group-commit many batches under one flush.
//!
//! Every engine must pass [`conformance`] unchanged.

pub mod dump;
pub mod keys;
pub mod kv;
pub mod list_cache;
pub mod redb;
pub mod sled;

#[cfg(test)]
pub(crate) mod conformance;

use crate::protocol::pb::{
    ConversationEvent, ConversationRecord, IdempotentCreate, MemberRecord, Message, Profile,
    UserAccess, UserConversationRecord,
};
use bytes::Bytes;
use std::sync::Arc;

/// A user id as stored and routed (cheap to clone).
pub type UserId = Arc<str>;

/// A store failure. The server treats any of these as fatal for the write path.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The engine reported an error (I/O, corruption it detected, ...).
    #[error("storage engine: {0}")]
    Engine(String),
    /// The data is in a format this build cannot read.
    #[error("{0}")]
    Format(String),
    /// A stored value could not be decoded.
    #[error("corrupt record under {what}: {detail}")]
    Corrupt { what: &'static str, detail: String },
}

/// Named monotonic counters kept in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    /// The last conversation number handed out.
    Conversation,
    /// The last temporary conversation number handed out (without its marker bit).
    Temporary,
    /// The highest user event seq an [`Op::ExpireUserEvent`] ever deleted: a user whose log
    /// the sweep emptied goes on above it (see [`Store::last_user_event_seq`]).
    UserEventFloor,
}

/// One write. A `commit` applies a slice of these atomically.
#[derive(Debug, Clone)]
pub enum Op {
    PutConversation {
        conv: u64,
        record: ConversationRecord,
    },
    PutMember {
        conv: u64,
        user: UserId,
        record: MemberRecord,
    },
    DeleteMember {
        conv: u64,
        user: UserId,
    },
    PutUserConversation {
        user: UserId,
        conv: u64,
        record: UserConversationRecord,
    },
    DeleteUserConversation {
        user: UserId,
        conv: u64,
    },
    /// `message` is an encoded `Message` (stored as is; also what clients receive).
    PutMessage {
        conv: u64,
        seq: u64,
        message: Bytes,
    },
    PutReadSeq {
        user: UserId,
        conv: u64,
        seq: u64,
    },
    DeleteReadSeq {
        user: UserId,
        conv: u64,
    },
    PutDedup {
        conv: u64,
        sender: UserId,
        client_id: String,
        seq: u64,
    },
    PutDirect {
        a: UserId,
        b: UserId,
        conv: u64,
    },
    PutUserEvent {
        user: UserId,
        seq: u64,
        event: ConversationEvent,
    },
    DeleteUserEvent {
        user: UserId,
        seq: u64,
    },
    /// Deletes `user`'s event `seq` if, when the op is committed, it is stored with a
    /// `server_time` older than `before` (ms): an event written since under the same seq stays.
    /// The same commit raises [`Counter::UserEventFloor`] to the seq it deleted.
    ExpireUserEvent {
        user: UserId,
        seq: u64,
        before: i64,
    },
    SetCounter {
        counter: Counter,
        value: u64,
    },
    /// Index entry: `conv` expires at `at` (ms).
    PutExpiry {
        at: i64,
        conv: u64,
    },
    /// Index entry: `user`'s mute in `conv` ends at `at` (ms).
    PutMuteDeadline {
        at: i64,
        conv: u64,
        user: UserId,
    },
    DeleteMuteDeadline {
        at: i64,
        conv: u64,
        user: UserId,
    },
    /// Index entry: the live temporary conversation of this sorted member set.
    PutUniqueTemporary {
        members: Vec<UserId>,
        conv: u64,
    },
    DeleteDirect {
        a: UserId,
        b: UserId,
    },
    /// Removes an expiry index entry (the deadline of a temporary conversation moved).
    DeleteExpiry {
        at: i64,
        conv: u64,
    },
    /// Removes the unique-member-set entry of `members` (the members of a temporary
    /// conversation changed).
    DeleteUniqueTemporary {
        members: Vec<UserId>,
    },
    /// The conversation left `user`'s list at `at` (ms), for incremental sync.
    PutTombstone {
        user: UserId,
        conv: u64,
        at: i64,
    },
    DeleteTombstone {
        user: UserId,
        conv: u64,
    },
    /// Deletes `user`'s tombstone of `conv` if, when the op is committed, it is older than
    /// `before` (ms): a tombstone written again since it was read stays.
    ExpireTombstone {
        user: UserId,
        conv: u64,
        before: i64,
    },
    /// `user` deleted message `seq` one-way.
    PutHidden {
        user: UserId,
        conv: u64,
        seq: u64,
    },
    /// Message `seq` asked for receipts.
    PutReceiptWanted {
        conv: u64,
        seq: u64,
        sender: UserId,
    },
    /// Index entry: message `seq` was last edited or recalled at `at` (ms).
    PutPatch {
        conv: u64,
        at: i64,
        seq: u64,
    },
    DeletePatch {
        conv: u64,
        at: i64,
        seq: u64,
    },
    /// Index entry: the conversation imported under `alias` (its id on the platform it came
    /// from).
    PutConversationAlias {
        alias: String,
        conv: u64,
    },
    /// Index entry: message `seq` of `conv` was imported under `alias`.
    PutMessageAlias {
        conv: u64,
        alias: String,
        seq: u64,
    },
    /// A webhook event, at `seq` of the outbox (committed with the change it reports).
    PutOutbox {
        seq: u64,
        record: bytes::Bytes,
    },
    DeleteOutbox {
        seq: u64,
    },
    /// Webhook endpoint `endpoint` has been given (or has dead-lettered) everything up to `seq`.
    PutWebhookCursor {
        endpoint: String,
        seq: u64,
    },
    /// An event `endpoint` could not take, kept for a replay.
    PutDeadLetter {
        endpoint: String,
        seq: u64,
        record: bytes::Bytes,
    },
    DeleteDeadLetter {
        endpoint: String,
        seq: u64,
    },
    /// Deletes everything about `conv`: record, members, their per-user entries, read
    /// positions and one-way deletions, messages, dedup and receipt entries, its expiry and
    /// unique-member-set entries, patch index, aliases, including what earlier ops of the same commit wrote.
    PurgeConversation {
        conv: u64,
    },
    /// Deletes messages `from..=through` of `conv` and what hangs off them: receipt, silent,
    /// patch and alias index entries, kept versions. (One-way delete marks, `H`, stay until
    /// the conversation is purged: they cost a few bytes each and are never read below the
    /// conversation's `purged_seq`.)
    PurgeMessages {
        conv: u64,
        from: u64,
        through: u64,
    },
    /// Deletes the first `limit`, in key order, of the entries of `conv` that grow with its
    /// use apart from its messages: send dedup entries, then its own event log (a step of a
    /// purge before [`Op::PurgeConversation`], so that one commit never deletes them all).
    PurgeConversationPart {
        conv: u64,
        limit: usize,
    },
    /// `user` blocked `blocked` at `at` (ms).
    PutUserBlock {
        user: UserId,
        blocked: UserId,
        at: i64,
    },
    DeleteUserBlock {
        user: UserId,
        blocked: UserId,
    },
    PutProfile {
        user: UserId,
        profile: Profile,
    },
    DeleteProfile {
        user: UserId,
    },
    /// Takes back a one-way delete (the user's data is being deleted).
    DeleteHidden {
        user: UserId,
        conv: u64,
        seq: u64,
    },
    /// Message `seq` as it was before its `version`-th change (an encoded `Message`), kept
    /// for audit (`keep_message_versions`).
    PutMessageVersion {
        conv: u64,
        seq: u64,
        version: u64,
        message: Bytes,
    },
    /// Message `seq` was sent silently: it moves no list entry and no unread count.
    PutSilent {
        conv: u64,
        seq: u64,
    },
    PutUserAccess {
        user: UserId,
        access: UserAccess,
    },
    DeleteUserAccess {
        user: UserId,
    },
    /// Token `jti` is refused until `until` (ms).
    PutRevokedToken {
        jti: String,
        until: i64,
    },
    DeleteRevokedToken {
        jti: String,
        until: i64,
    },
    PutIdempotentCreate {
        key: String,
        record: IdempotentCreate,
    },
    DeleteIdempotentCreate {
        key: String,
        at: i64,
    },
    /// `event` at `seq` of `conv`'s own event log (what its members heard of one another).
    PutConversationEvent {
        conv: u64,
        seq: u64,
        event: ConversationEvent,
    },
    DeleteConversationEvent {
        conv: u64,
        seq: u64,
    },
}

/// Which way a message range is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Oldest first.
    Ascending,
    /// Newest first.
    Descending,
}

/// What a listing of a user's conversation list needs of one of their per-user records
/// ([`Store::list_rows`]): no private ext, no read or delivery positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListRow {
    pub conv: u64,
    pub joined_at: i64,
    pub listed_at: i64,
    pub changed_at: i64,
    pub pinned_at: i64,
    pub hidden_at: i64,
    pub hidden_seq: u64,
    pub hidden: bool,
}

impl ListRow {
    pub fn of(conv: u64, r: &UserConversationRecord) -> ListRow {
        ListRow {
            conv,
            joined_at: r.joined_at,
            listed_at: r.listed_at,
            changed_at: r.changed_at,
            pinned_at: r.pinned_at,
            hidden_at: r.hidden_at,
            hidden_seq: r.hidden_seq,
            hidden: r.hidden,
        }
    }
}

/// The storage contract. Reads see every committed write; `flush` makes them durable.
pub trait Store: Send + Sync + 'static {
    /// Applies `ops` atomically: all or none become visible (and durable with the next flush).
    fn commit(&self, ops: &[Op]) -> Result<(), StoreError>;
    /// Makes every committed write durable.
    fn flush(&self) -> Result<(), StoreError>;

    fn conversation(&self, conv: u64) -> Result<Option<ConversationRecord>, StoreError>;
    /// The members of a conversation, in no particular order.
    fn members(&self, conv: u64) -> Result<Vec<(UserId, MemberRecord)>, StoreError>;
    /// One member's record (`None`: not a member). A point read where the store has one.
    fn member(&self, conv: u64, user: &str) -> Result<Option<MemberRecord>, StoreError> {
        Ok(self
            .members(conv)?
            .into_iter()
            .find(|(u, _)| **u == *user)
            .map(|(_, m)| m))
    }
    /// The conversations a user belongs to, in ascending conversation number.
    fn user_conversations(
        &self,
        user: &str,
    ) -> Result<Vec<(u64, UserConversationRecord)>, StoreError>;

    /// [`Store::user_conversations`] as list rows, in the same order; shared, since a store may
    /// keep them in memory.
    fn list_rows(&self, user: &str) -> Result<Arc<Vec<ListRow>>, StoreError> {
        Ok(Arc::new(
            self.user_conversations(user)?
                .iter()
                .map(|(conv, r)| ListRow::of(*conv, r))
                .collect(),
        ))
    }

    fn user_conversation(
        &self,
        user: &str,
        conv: u64,
    ) -> Result<Option<UserConversationRecord>, StoreError>;

    fn message(&self, conv: u64, seq: u64) -> Result<Option<Message>, StoreError>;
    fn last_message(&self, conv: u64) -> Result<Option<Message>, StoreError>;
    /// Messages with `lo <= seq < hi`, in `dir` order, at most `limit`.
    fn messages(
        &self,
        conv: u64,
        lo: u64,
        hi: u64,
        dir: Direction,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError>;

    fn read_seq(&self, user: &str, conv: u64) -> Result<u64, StoreError>;
    fn dedup(&self, conv: u64, sender: &str, client_id: &str) -> Result<Option<u64>, StoreError>;
    fn direct(&self, a: &str, b: &str) -> Result<Option<u64>, StoreError>;

    /// The newest `limit` events of `user` with seq > `after`, oldest first, and whether older
    /// ones (still > `after`) were left out.
    fn user_events_after(
        &self,
        user: &str,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<ConversationEvent>, bool), StoreError>;
    /// The newest seq in `user`'s event log, where the next event continues from; for an empty
    /// log, [`Counter::UserEventFloor`] (0 in a store that never expired an event), so a log
    /// the sweep emptied never hands out a seq again.
    fn last_user_event_seq(&self, user: &str) -> Result<u64, StoreError>;
    /// Every user's events in key order (user, then seq), starting after `after` (`None`: from
    /// the first), at most `limit`: (user, seq, server time).
    fn user_events_page(
        &self,
        after: Option<(&str, u64)>,
        limit: usize,
    ) -> Result<Vec<(UserId, u64, i64)>, StoreError>;
    fn counter(&self, counter: Counter) -> Result<u64, StoreError>;
    /// The highest number among the stored conversation records of normal conversations, and
    /// among those of temporary ones (without their marker bit, as [`Counter::Temporary`]
    /// counts them); 0 for none.
    fn highest_conversations(&self) -> Result<(u64, u64), StoreError>;

    /// `user`'s list tombstones: (conversation, deleted at).
    fn tombstones(&self, user: &str) -> Result<Vec<(u64, i64)>, StoreError>;
    /// Every user's list tombstones in key order (user, then conversation), starting after
    /// `after` (`None`: from the first), at most `limit`: (user, conversation, deleted at).
    fn tombstones_after(
        &self,
        after: Option<(&str, u64)>,
        limit: usize,
    ) -> Result<Vec<(UserId, u64, i64)>, StoreError>;
    /// The seqs in `lo..hi` that `user` deleted one-way in `conv`, ascending.
    fn hidden_seqs(&self, user: &str, conv: u64, lo: u64, hi: u64) -> Result<Vec<u64>, StoreError>;
    /// Messages in `lo..hi` of `conv` that asked for receipts: (seq, sender), ascending.
    fn receipts_wanted(
        &self,
        conv: u64,
        lo: u64,
        hi: u64,
    ) -> Result<Vec<(u64, UserId)>, StoreError>;

    /// The newest seq of `conv` that asked for receipts (0: none).
    fn last_receipt_wanted(&self, conv: u64) -> Result<u64, StoreError>;

    /// The earliest expiry index entries `(at, conv)`, ascending, at most `limit`.
    /// Messages of `conv` last edited or recalled after `after` (ms), oldest patch first, at
    /// most `limit`: `(patched at, seq)`.
    fn patches_after(
        &self,
        conv: u64,
        after: i64,
        limit: usize,
    ) -> Result<Vec<(i64, u64)>, StoreError>;
    fn next_expiries(&self, limit: usize) -> Result<Vec<(i64, u64)>, StoreError>;
    /// How many of the entries [`Op::PurgeConversationPart`] deletes are stored for `conv`,
    /// counted up to `limit`.
    fn conversation_part_entries(&self, conv: u64, limit: usize) -> Result<usize, StoreError>;
    /// The earliest timed-mute index entries `(until, conv, user)`, ascending, at most `limit`.
    fn next_mute_deadlines(&self, limit: usize) -> Result<Vec<(i64, u64, UserId)>, StoreError>;
    /// The temporary conversation registered for this sorted member set, if any.
    fn unique_temporary(&self, members: &[UserId]) -> Result<Option<u64>, StoreError>;
    /// The conversation imported under `alias`, if any.
    fn conversation_alias(&self, alias: &str) -> Result<Option<u64>, StoreError>;
    /// The seq of the message of `conv` imported under `alias`, if any.
    fn message_alias(&self, conv: u64, alias: &str) -> Result<Option<u64>, StoreError>;

    /// Webhook outbox records after `after`, oldest first, at most `limit`: `(seq, record)`.
    fn outbox_after(&self, after: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError>;
    /// The newest outbox seq (0: none stored).
    fn last_outbox_seq(&self) -> Result<u64, StoreError>;
    /// How far webhook endpoint `endpoint` has got in the outbox (0: nowhere).
    fn webhook_cursor(&self, endpoint: &str) -> Result<u64, StoreError>;
    /// Dead letters of `endpoint` after `after`, oldest first, at most `limit`.
    fn dead_letters(
        &self,
        endpoint: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError>;
    /// The users `user` blocked, after `after` by user id, ascending, at most `limit`:
    /// (user, blocked at).
    fn user_blocks(
        &self,
        user: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(UserId, i64)>, StoreError>;
    /// When `user` blocked `other`, if they did.
    fn user_block(&self, user: &str, other: &str) -> Result<Option<i64>, StoreError>;
    /// A user's profile, if one was set.
    fn profile(&self, user: &str) -> Result<Option<Profile>, StoreError>;
    /// The kept versions of message `seq` of `conv`, oldest first (`keep_message_versions`).
    fn message_versions(&self, conv: u64, seq: u64) -> Result<Vec<Message>, StoreError>;
    /// The seqs of `conv` in `lo..hi` sent silently, ascending.
    fn silent_seqs(&self, conv: u64, lo: u64, hi: u64) -> Result<Vec<u64>, StoreError>;
    /// The backend's ban and token revocation of `user`, if any.
    fn user_access(&self, user: &str) -> Result<Option<UserAccess>, StoreError>;
    /// Until when token `jti` is revoked, if it is.
    fn revoked_token(&self, jti: &str) -> Result<Option<i64>, StoreError>;
    /// Revoked tokens, the soonest to lapse first, at most `limit`: `(until, jti)`.
    fn revoked_tokens(&self, limit: usize) -> Result<Vec<(i64, String)>, StoreError>;
    /// The create made under an idempotency key, if any.
    fn idempotent_create(&self, key: &str) -> Result<Option<IdempotentCreate>, StoreError>;
    /// Idempotency keys, the oldest first, at most `limit`: `(created at, key)`.
    fn idempotent_creates(&self, limit: usize) -> Result<Vec<(i64, String)>, StoreError>;

    /// Live conversations of `kind` (a `ConversationKind`) numbered below `below`, the highest
    /// (newest) first, at most `limit`. Kept by the store with every conversation record it
    /// writes: a record marked deleted leaves it, and so does a purged conversation.
    fn conversations_of_kind(
        &self,
        kind: i32,
        below: u64,
        limit: usize,
    ) -> Result<Vec<u64>, StoreError>;
    /// The newest `limit` events of `conv`'s own log whose `server_time` is after `after`
    /// (ms), oldest first.
    fn conversation_events_after(
        &self,
        conv: u64,
        after: i64,
        limit: usize,
    ) -> Result<Vec<ConversationEvent>, StoreError>;
    /// The newest seq of `conv`'s own event log (0: none).
    fn last_conversation_event_seq(&self, conv: u64) -> Result<u64, StoreError>;

    /// Bytes the engine occupies on disk.
    fn size_on_disk(&self) -> Result<u64, StoreError>;

    /// Every stored entry in key order, from one consistent view (for [`dump`]). Keys and
    /// values are the layout of [`keys`] and the records of `store.proto`, which every engine
    /// shares, so a dump is engine-neutral.
    fn dump(&self, f: &mut EntrySink<'_>) -> Result<(), StoreError>;
    /// Whether nothing is stored (the format version aside).
    fn is_empty(&self) -> Result<bool, StoreError>;
    /// Sets the stored format version, or removes it (the data then reads as version 1): for
    /// a dump's import, which copies the version of the data it loads.
    fn mark_format(&self, version: Option<u64>) -> Result<(), StoreError>;
    /// Writes raw entries of a dump (atomically per call; `flush` makes them durable).
    fn load(&self, rows: Vec<(Vec<u8>, Vec<u8>)>) -> Result<(), StoreError>;
    /// Whether the import marker is set: an import of a dump began and did not finish.
    fn importing(&self) -> Result<bool, StoreError>;
    /// Sets or removes the import marker ([`keys::IMPORTING`]).
    fn mark_importing(&self, on: bool) -> Result<(), StoreError>;
    /// Removes every entry but the import marker: for an import that starts over.
    fn clear(&self) -> Result<(), StoreError>;
}

/// Receives entries of a dump, in key order.
pub type EntrySink<'a> = dyn FnMut(&[u8], &[u8]) -> Result<(), StoreError> + 'a;

/// The engines this build can open, by their `store_engine` name.
pub const ENGINES: [&str; 2] = ["redb", "sled"];

/// Opens the named engine in `dir`. Refuses a directory that holds the other engine's files,
/// so a changed setting never starts silently on an empty store, and a store an import left
/// unfinished, so a failed restore is never served. Brings older data to the current format.
pub fn open(
    engine: &str,
    dir: &std::path::Path,
    cache_bytes: u64,
) -> Result<Arc<dyn Store>, StoreError> {
    open_engine(engine, dir, cache_bytes, true)
}

/// Opens the named engine in `dir` for `tidings store import`: as [`open`], but neither
/// upgrades the data nor refuses the remains of an unfinished import, which the import clears.
pub fn open_for_import(
    engine: &str,
    dir: &std::path::Path,
    cache_bytes: u64,
) -> Result<Arc<dyn Store>, StoreError> {
    open_engine(engine, dir, cache_bytes, false)
}

fn open_engine(
    engine: &str,
    dir: &std::path::Path,
    cache_bytes: u64,
    upgrade: bool,
) -> Result<Arc<dyn Store>, StoreError> {
    let has_redb = dir.join(redb::FILE).exists();
    let has_sled = dir.join("conf").exists() && dir.join("db").exists();
    let other = match engine {
        "redb" if has_sled => Some("sled"),
        "sled" if has_redb => Some("redb"),
        _ => None,
    };
    if let Some(other) = other {
        return Err(StoreError::Engine(format!(
            "{} holds a {other} store but store_engine is {engine:?}; set store_engine = {other:?}, \
             or move the data with `tidings store export` and `tidings store import`",
            dir.display()
        )));
    }
    let store: Arc<dyn Store> = match engine {
        "redb" => {
            let s = redb::open(dir, cache_bytes)?;
            if upgrade {
                s.upgrade()?;
            }
            Arc::new(s)
        }
        "sled" => {
            let s = sled::open(dir, cache_bytes)?;
            if upgrade {
                s.upgrade()?;
            }
            Arc::new(s)
        }
        other => {
            return Err(StoreError::Engine(format!(
                "unknown store_engine {other:?}; one of {ENGINES:?}"
            )));
        }
    };
    Ok(store)
}

/// Decodes a stored protobuf value.
fn decode<M: prost::Message + Default>(what: &'static str, bytes: &[u8]) -> Result<M, StoreError> {
    M::decode(bytes).map_err(|e| StoreError::Corrupt {
        what,
        detail: e.to_string(),
    })
}
