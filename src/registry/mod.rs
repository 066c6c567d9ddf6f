//! Conversations, membership, messages and read positions: the server's state.
//!
//! Hot state lives in memory, one [`ConvCell`] per conversation in use (loaded lazily from the
//! store, unloaded when idle: [`cells`]), under a short synchronous lock that is never held
//! across `.await`. Every change is ordered by that lock and handed to the [`writer`] under it;
//! the caller then awaits durability outside the lock. The store stays the truth: a restart,
//! like an unload, rebuilds each cell from it on first use.

pub mod access;
pub mod broadcast;
pub mod cells;
pub mod conversation;
mod conversation_log;
pub mod expiry;
pub mod groups;
pub(crate) mod history;
mod hook;
pub mod import;
pub(crate) mod inbox;
pub mod lifecycle;
pub mod limits;
mod messages;
pub mod mutes;
mod presence;
mod purge;
mod receipts;
pub mod retention;
mod rooms;
#[cfg(test)]
mod tests;
pub mod tombstones;
pub mod users;
pub mod writer;

use crate::clock::SharedClock;
use crate::config::Config;
use crate::hub::{Delivery, Hub, Recipients};
use crate::protocol::pb::{
    self, Conversation, ConversationEvent, ConversationEventKind, ConversationKind,
    ConversationRecord, ErrorCode, MemberRecord, UserConversationRecord,
};
use crate::protocol::{self, conversation_id};
use crate::store::{Op, Store, StoreError, UserId};
use dashmap::DashMap;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use writer::{WriteError, Writer};

pub use history::{DeleteMessagesRequest, EditRequest, HistoryRequest, oldest_first_cursor_after};
pub use inbox::ListRequest;
pub use messages::SendRequest;

/// A request failure that keeps the connection open. Each maps to one wire `ErrorCode`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The conversation does not exist (or the id was never issued).
    #[error("conversation not found")]
    ConversationNotFound,
    /// The temporary conversation expired and was deleted.
    #[error("temporary conversation expired")]
    ConversationExpired,
    /// The conversation is not in the caller's list (deleted from it, or never there).
    #[error("not in your conversation list")]
    NotInList,
    /// No such message in this conversation (for the caller).
    #[error("message not found")]
    MessageNotFound,
    /// The recall or edit window has passed.
    #[error("{0}")]
    WindowExpired(String),
    /// The caller is not a member.
    #[error("not a member of this conversation")]
    NotAMember,
    /// The caller is a member but may not do this.
    #[error("permission denied: {0}")]
    PermissionDenied(&'static str),
    /// The conversation's kind does not allow this.
    #[error("not allowed for {kind} conversations: {what}")]
    NotAllowedForKind {
        kind: &'static str,
        what: &'static str,
    },
    /// A field is missing or malformed.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A documented limit was exceeded.
    #[error("limit exceeded: {0}")]
    LimitExceeded(String),
    /// Content plus attributes over `max_message_bytes`.
    #[error("message is {size} bytes; the limit is {limit}")]
    MessageTooLarge { size: usize, limit: usize },
    /// `Login` on a session that is already logged in.
    #[error("already logged in")]
    AlreadyLoggedIn,
    /// The frame carries no request this server knows.
    #[error("unknown request")]
    UnknownRequest,
    /// The store failed or the server is going down.
    #[error("temporarily unavailable")]
    Unavailable,
    /// A bug or corrupt data; logged.
    #[error("internal error")]
    Internal,
    /// The app's pre-send hook refused the content; the reason is its own.
    #[error("rejected: {0}")]
    Rejected(String),
    /// Over a request rate limit; the same request fits after `retry_after_ms`.
    #[error("rate limited: retry after {retry_after_ms} ms")]
    RateLimited { retry_after_ms: u64 },
    /// The sender is muted in the group, or mute-all is on and they rank below manager.
    #[error("muted: {0}")]
    Muted(&'static str),
    /// The user is on the group's blacklist.
    #[error("{0:?} is on this conversation's blacklist")]
    Blacklisted(String),
    /// The other member of the direct conversation blocked the caller.
    #[error("the other user blocked you")]
    Blocked,
    /// The owner must hand the group over before leaving (front doors that require it).
    #[error("the owner must transfer ownership before leaving")]
    OwnerMustTransfer,
    /// The app's backend banned the user; the reason is its own.
    #[error("banned: {0}")]
    Banned(String),
    /// The app's backend revoked the token (or every token of the user issued before it).
    #[error("the token was revoked")]
    TokenRevoked,
    /// An import into a conversation that holds messages sent here (not imported).
    #[error(
        "messages were sent in this conversation: history is imported only into a \
         conversation with no messages yet, or one whose messages were all imported"
    )]
    ImportConflict,
    /// An imported message older than the newest one the conversation holds (its time).
    #[error("older than the newest message already there ({0}): import in time order")]
    ImportOutOfOrder(i64),
}

impl Error {
    /// The wire code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::ConversationNotFound => ErrorCode::ErrorConversationNotFound,
            Error::ConversationExpired => ErrorCode::ErrorTemporaryConversationExpired,
            Error::NotInList => ErrorCode::ErrorConversationNotFound,
            Error::MessageNotFound => ErrorCode::ErrorMessageNotFound,
            Error::WindowExpired(_) => ErrorCode::ErrorWindowExpired,
            Error::NotAMember => ErrorCode::ErrorNotAMember,
            Error::PermissionDenied(_) => ErrorCode::ErrorPermissionDenied,
            Error::NotAllowedForKind { .. } => ErrorCode::ErrorNotAllowedForKind,
            Error::InvalidArgument(_) => ErrorCode::ErrorInvalidArgument,
            Error::LimitExceeded(_) => ErrorCode::ErrorLimitExceeded,
            Error::MessageTooLarge { .. } => ErrorCode::ErrorMessageTooLarge,
            Error::AlreadyLoggedIn => ErrorCode::ErrorAlreadyLoggedIn,
            Error::UnknownRequest => ErrorCode::ErrorUnknownRequest,
            Error::Unavailable => ErrorCode::ErrorUnavailable,
            Error::Internal => ErrorCode::ErrorInternal,
            Error::RateLimited { .. } => ErrorCode::ErrorRateLimited,
            Error::Rejected(_) => ErrorCode::ErrorRejected,
            Error::Muted(_) => ErrorCode::ErrorMuted,
            Error::Blacklisted(_) => ErrorCode::ErrorBlacklisted,
            Error::OwnerMustTransfer => ErrorCode::ErrorOwnerMustTransfer,
            Error::Blocked => ErrorCode::ErrorBlocked,
            Error::Banned(_) => ErrorCode::ErrorBanned,
            Error::TokenRevoked => ErrorCode::ErrorTokenRevoked,
            Error::ImportConflict => ErrorCode::ErrorImportConflict,
            Error::ImportOutOfOrder(_) => ErrorCode::ErrorImportOutOfOrder,
        }
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "store read failed");
        Error::Internal
    }
}

impl From<WriteError> for Error {
    fn from(_: WriteError) -> Self {
        Error::Unavailable
    }
}

/// Who is asking: an authenticated user on one session, or the app's backend.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user: UserId,
    pub session: u64,
    /// The app's backend acting (the admin API): it outranks every role, need not be a member,
    /// and `user` only names it in events (`by`). Never set for a client session.
    pub admin: bool,
}

impl Caller {
    /// A user on one of their sessions.
    pub fn user(user: UserId, session: u64) -> Self {
        Caller {
            user,
            session,
            admin: false,
        }
    }

    /// The app's backend, named `by` in the events it causes.
    pub fn admin(by: &str) -> Self {
        Caller {
            user: UserId::from(by),
            session: 0,
            admin: true,
        }
    }
}

/// The longest alias (of a conversation or a message) an import may give.
pub const MAX_ALIAS_BYTES: usize = 128;

/// One conversation's in-memory state.
pub(crate) struct ConvCell {
    pub num: u64,
    pub id: Arc<str>,
    /// When a request last took this cell (registry clock, ms): what the sweep that unloads
    /// idle cells orders by ([`cells`]).
    used_at: std::sync::atomic::AtomicI64,
    /// How many times requests took this cell: the sweep unloads a cell only if nobody took
    /// it since it chose it.
    checkouts: std::sync::atomic::AtomicU64,
    /// Its member records as counted in the registry's total (`conversation_members_loaded`):
    /// at load, then at each sweep.
    members_held: std::sync::atomic::AtomicUsize,
    state: Mutex<ConvState>,
    /// The registry's heads, where every release of this cell's lock publishes what a
    /// conversation list needs of it ([`inbox::Head`]).
    heads: Heads,
}

/// Every conversation's [`inbox::Head`] by number (see `Registry::heads`).
type Heads = Arc<DashMap<u64, inbox::Head, NumHash>>;

/// A cell's state, locked. Releasing it publishes the cell's list head when that changed, so
/// the list of a user in thousands of loaded conversations reads one small map instead of
/// locking every cell.
pub(crate) struct CellGuard<'a> {
    cell: &'a ConvCell,
    st: MutexGuard<'a, ConvState>,
}

impl std::ops::Deref for CellGuard<'_> {
    type Target = ConvState;
    fn deref(&self) -> &ConvState {
        &self.st
    }
}

impl std::ops::DerefMut for CellGuard<'_> {
    fn deref_mut(&mut self) -> &mut ConvState {
        &mut self.st
    }
}

impl Drop for CellGuard<'_> {
    fn drop(&mut self) {
        // Still under the lock: every change of a loaded cell's head is made in lock order.
        inbox::publish_head(&self.cell.heads, self.cell.num, &mut self.st);
    }
}

pub(crate) struct ConvState {
    record: ConversationRecord,
    members: HashMap<UserId, MemberRecord>,
    /// Snapshot of the member ids for fan-out; rebuilt when membership changes.
    roster: Arc<[UserId]>,
    /// The live sessions of `roster`'s users, for the hub; a new one with every new roster.
    live: Arc<crate::hub::LiveSessions>,
    /// Read positions of members, loaded on first use.
    reads: HashMap<UserId, u64>,
    /// The newest seq handed out (its message may not be committed yet).
    last_seq: u64,
    /// The newest seq committed: what readers are told is there (a client that fetches up to
    /// it finds every message; one told of a seq still in flight could skip it).
    durable_seq: u64,
    last_ts: i64,
    next_join_order: u64,
    /// Set (under this lock) when the expiry sweep deletes the conversation.
    expired: bool,
    /// Set (under this lock) when the conversation is deleted for everyone.
    deleted: bool,
    /// Members' per-user records (list entries) read or written since load. Every change goes
    /// through here under this lock, so a read-modify-write never starts from a stale store.
    entries: HashMap<UserId, UserConversationRecord>,
    /// Messages edited or recalled whose commit is still pending, newer than what the store
    /// has: a rewrite queued behind another starts from here. Each is dropped once its commit
    /// is over (`history::settle`).
    edited: HashMap<u64, pb::Message>,
    /// The newest seq that asked for receipts (loaded on first need).
    receipt_high: Option<u64>,
    /// Direct conversations: whether each of `record.pair` is blocked by the other, as of a
    /// `block_gen` (loaded on first need, again when a block changed anywhere).
    blocks: Option<(u64, [bool; 2])>,
    /// The seqs sent silently, ascending (loaded on first need; never read from the store
    /// for a conversation that has none, `record.last_silent_seq` being 0).
    silent: Option<Arc<Vec<u64>>>,
    /// The head last published for this cell (`None`: nothing yet; `Some(None)`: none, the
    /// list reads the cell).
    published: Option<Option<inbox::Head>>,
    /// The newest seq of the conversation's own event log (loaded on first need).
    log_seq: Option<u64>,
    /// Seqs `1..=n` were imported and keep the ids they came with (loaded on first need; see
    /// [`import`]).
    imported: Option<u64>,
}

impl ConvCell {
    fn new(num: u64, id: Arc<str>, state: ConvState, now: i64, heads: &Heads) -> Arc<Self> {
        Arc::new(ConvCell {
            num,
            id,
            used_at: std::sync::atomic::AtomicI64::new(now),
            checkouts: std::sync::atomic::AtomicU64::new(0),
            members_held: std::sync::atomic::AtomicUsize::new(state.members.len()),
            state: Mutex::new(state),
            heads: heads.clone(),
        })
    }

    /// Notes that a request takes this cell (see [`cells`]).
    fn checkout(&self, now: i64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.checkouts.fetch_add(1, Relaxed);
        self.used_at.store(now, Relaxed);
    }

    fn lock(&self) -> CellGuard<'_> {
        // A panic while holding this lock would be a bug; keep serving the other conversations.
        CellGuard {
            cell: self,
            st: self.state.lock().unwrap_or_else(|p| p.into_inner()),
        }
    }

    /// Work for the writer to run once messages up to `seq` are committed.
    fn committed_through(self: &Arc<Self>, seq: u64) -> writer::AfterCommit {
        let cell = Arc::clone(self);
        Box::new(move || {
            let mut st = cell.lock();
            st.durable_seq = st.durable_seq.max(seq);
        })
    }
}

impl ConvState {
    fn kind(&self) -> ConversationKind {
        ConversationKind::try_from(self.record.kind).unwrap_or(ConversationKind::Unspecified)
    }
    fn rebuild_roster(&mut self) {
        let mut v: Vec<UserId> = self.members.keys().cloned().collect();
        v.sort();
        self.roster = v.into();
        self.live = Arc::default();
    }
    /// Every session of the members, for a message or its update.
    fn members_to(&self) -> Recipients {
        Recipients::Members(self.roster.clone(), self.live.clone())
    }
    /// Refuses a conversation whose deletion or expiry is queued (its cell may still be in
    /// memory until that commits, and a caller may hold it from before).
    /// A deleted temporary conversation answers as an expired one: after a restart its id
    /// cannot be told from one that expired.
    fn require_live(&self) -> Result<(), Error> {
        if self.expired || (self.deleted && self.kind() == ConversationKind::Temporary) {
            Err(Error::ConversationExpired)
        } else if self.deleted {
            Err(Error::ConversationNotFound)
        } else {
            Ok(())
        }
    }
    /// Membership, or the app's backend (which reads and changes every conversation).
    fn require_reader(&self, caller: &Caller) -> Result<(), Error> {
        if caller.admin {
            self.require_live()
        } else {
            self.require_member(&caller.user)
        }
    }
    fn require_member(&self, user: &str) -> Result<(), Error> {
        self.require_live()?;
        if self.members.contains_key(user) {
            Ok(())
        } else {
            Err(Error::NotAMember)
        }
    }
    /// The conversation as clients see it (without the per-user mute flag).
    fn view(&self, id: &str) -> Conversation {
        let listed = matches!(
            self.kind(),
            ConversationKind::Direct | ConversationKind::Temporary
        );
        Conversation {
            id: id.to_owned(),
            kind: self.record.kind,
            name: self.record.name.clone(),
            attributes: self.record.attributes.clone(),
            owner: self.record.owner.clone(),
            created_at: self.record.created_at,
            member_count: self.members.len() as u32,
            members: if listed {
                self.record.pair.clone()
            } else {
                Vec::new()
            },
            last_seq: self.durable_seq,
            muted: false,
            expires_at: self.record.expires_at,
            unique: self.record.unique,
            mute_all: self.record.mute_all,
        }
    }
}

/// A conversation event to be logged for one user (the writer assigns its `user_seq`). The
/// event is shared by every user it is logged for; what each is sent and keeps is
/// [`LoggedEvent::copy`].
pub struct LoggedEvent {
    pub user: UserId,
    pub event: Arc<ConversationEvent>,
    pub except_session: u64,
}

impl LoggedEvent {
    /// The copy logged for (and pushed to) `user`: its `members` name only the user when they
    /// are among several named, and its conversation carries no `attributes`
    /// (`GetConversation` has them). So one copy's size does not grow with the request, and a
    /// change naming n users writes n small copies instead of n copies of n names.
    pub fn copy(&self) -> ConversationEvent {
        let e = &*self.event;
        let members = if e.members.len() > 1 && e.members.iter().any(|m| *m == *self.user) {
            vec![self.user.to_string()]
        } else {
            e.members.clone()
        };
        let conversation = e.conversation.as_ref().map(|c| Conversation {
            id: c.id.clone(),
            kind: c.kind,
            name: c.name.clone(),
            attributes: Default::default(),
            owner: c.owner.clone(),
            created_at: c.created_at,
            member_count: c.member_count,
            members: c.members.clone(),
            last_seq: c.last_seq,
            muted: c.muted,
            expires_at: c.expires_at,
            unique: c.unique,
            mute_all: c.mute_all,
        });
        ConversationEvent {
            kind: e.kind,
            conversation_id: e.conversation_id.clone(),
            by: e.by.clone(),
            members,
            conversation,
            server_time: e.server_time,
            user_seq: e.user_seq,
            role: e.role,
            muted_until: e.muted_until,
        }
    }
}

/// The conversation registry.
/// Hashes conversation numbers with a multiplication rather than SipHash: a list of 5,000
/// entries looks each one up, and the numbers are the server's, not chosen by clients.
#[derive(Debug, Default, Clone, Copy)]
pub struct NumHash;

impl std::hash::BuildHasher for NumHash {
    type Hasher = NumHasher;
    fn build_hasher(&self) -> NumHasher {
        NumHasher(0)
    }
}

/// See [`NumHash`].
#[derive(Debug, Default)]
pub struct NumHasher(u64);

impl NumHasher {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
}

impl std::hash::Hasher for NumHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(Self::K);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(Self::K);
    }
    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 29)
    }
}

pub struct Registry {
    config: Arc<Config>,
    clock: SharedClock,
    store: Arc<dyn Store>,
    hub: Arc<Hub>,
    stats: Arc<crate::stats::Stats>,
    writer: Writer,
    transient_ids: std::sync::atomic::AtomicU64,
    convs: Arc<DashMap<u64, Arc<ConvCell>, NumHash>>,
    /// Bumped each time a cell leaves `convs` (deleted, expired or unloaded): a load that read
    /// the store before the bump may have read the conversation as it was before its removal
    /// (or the last write of the cell that went) committed, and must not put it back.
    removals: Arc<std::sync::atomic::AtomicU64>,
    /// What a conversation list needs of each conversation ([`inbox::Head`]): for one not in
    /// `convs`, read from the store once; for a loaded one, published by every release of its
    /// cell's lock that changed it ([`CellGuard`]), so it stays when the cell is unloaded.
    /// Nothing changes a conversation without loading its cell first. An entry goes when the
    /// conversation is deleted, or while its cell's state would need a store read to say
    /// (messages sent silently); the list then reads the cell.
    heads: Heads,
    /// Direct pairs known in memory (sorted pair → conversation), also guarding creation.
    directs: Arc<DashMap<(UserId, UserId), u64>>,
    /// The last conversation numbers handed out; held while a create is enqueued.
    next_conv: Mutex<Numbers>,
    inflight: messages::Inflight,
    /// Temporary conversations by sorted member set (cache of the store's index).
    temp_uniques: Arc<DashMap<Vec<UserId>, u64>>,
    /// Held, the lock of the member set, while a unique group is looked for and created, so
    /// two such creates of one member set make one group (and others do not wait).
    unique_groups: inbox::StripedLocks,
    /// Held by an import step, so two imports never write one conversation at once.
    imports: tokio::sync::Mutex<()>,
    /// Woken when a temporary conversation is created (its deadline may be the next one).
    pub(crate) expiry_changed: tokio::sync::Notify,
    /// Woken when a timed mute is set (its deadline may be the next one).
    pub(crate) mutes_changed: tokio::sync::Notify,
    /// The purges of ended conversations running ([`purge`]).
    purges: purge::Purges,
    presence: presence::Subscriptions,
    snapshots: inbox::Snapshots,
    /// Request rate buckets of users with a live session ([`limits`]).
    rates: DashMap<UserId, limits::Bucket>,
    pin_locks: inbox::StripedLocks,
    /// The pre-send hook, when configured.
    hook: Option<hook::PreSend>,
    user_locks: users::UserLocks,
    /// Bumped after each user block or unblock commits: a direct conversation's cached block
    /// state ([`ConvState::blocks`]) is good while this has not moved.
    block_gen: Arc<std::sync::atomic::AtomicU64>,
    rooms: rooms::Rooms,
    /// Bumped when a ban or a token revocation commits ([`access`]).
    access_epoch: std::sync::atomic::AtomicU64,
    /// How many revoked token ids are stored, once counted.
    revoked: Mutex<Option<usize>>,
    /// Held by a create made with an idempotency key ([`broadcast`]).
    idempotent_creates: tokio::sync::Mutex<()>,
    /// Which webhook events that cost work of their own some endpoint takes.
    webhook: WebhookWants,
    /// Presence changes on their way to the webhook outbox, in order (when wanted).
    presence_events: Option<tokio::sync::mpsc::Sender<pb::PresenceEvent>>,
    /// Wakes the sweep that unloads cells ([`cells`]) when more than `cells_wake_above` are
    /// loaded.
    cells_over: tokio::sync::Notify,
    cells_wake_above: std::sync::atomic::AtomicUsize,
    /// The same for the member records the loaded cells hold.
    members_wake_above: std::sync::atomic::AtomicUsize,
}

/// The webhook events that are computed only when some endpoint takes them.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct WebhookWants {
    pub read: bool,
    pub offline_recipients: bool,
    pub expired: bool,
    pub system_message: bool,
}

/// Presence events queued for the outbox, at most; more are dropped (and counted).
const PRESENCE_EVENTS_QUEUED: usize = 10_000;

/// The last numbers handed out, per kind of conversation.
pub(super) struct Numbers {
    pub(super) normal: u64,
    pub(super) temporary: u64,
}

impl Registry {
    /// Builds the registry over an open store and a running writer.
    pub fn new(
        config: Arc<Config>,
        clock: SharedClock,
        store: Arc<dyn Store>,
        hub: Arc<Hub>,
        stats: Arc<crate::stats::Stats>,
        writer: Writer,
    ) -> Result<Self, StoreError> {
        // The counters never stand below a stored conversation (a store loaded from a damaged
        // or edited dump could say otherwise): a number is never handed out twice.
        let (stored_normal, stored_temporary) = store.highest_conversations()?;
        let normal = store.counter(crate::store::Counter::Conversation)?;
        let temporary = store.counter(crate::store::Counter::Temporary)?;
        if stored_normal > normal || stored_temporary > temporary {
            tracing::warn!(
                normal,
                stored_normal,
                temporary,
                stored_temporary,
                "conversation counters stood below stored conversations; numbering goes on above them"
            );
        }
        let (normal, temporary) = (normal.max(stored_normal), temporary.max(stored_temporary));
        let presence_events = (crate::webhooks::wanted(&config, "user.online")
            || crate::webhooks::wanted(&config, "user.offline"))
        .then(|| presence_webhook(writer.clone()))
        .flatten();
        let webhook = WebhookWants {
            read: crate::webhooks::wanted(&config, "message.read"),
            offline_recipients: crate::webhooks::wanted(&config, "message.offline_recipients"),
            expired: crate::webhooks::wanted(&config, "conversation.expired"),
            system_message: crate::webhooks::wanted(&config, "system.message_received"),
        };
        let cells_max = config.conversation_cells_max;
        let members_max = config.conversation_members_loaded_max;
        Ok(Registry {
            config,
            clock,
            store,
            hub,
            stats,
            writer,
            transient_ids: Default::default(),
            convs: Default::default(),
            removals: Default::default(),
            heads: Default::default(),
            directs: Default::default(),
            next_conv: Mutex::new(Numbers { normal, temporary }),
            inflight: Default::default(),
            temp_uniques: Default::default(),
            unique_groups: Default::default(),
            imports: tokio::sync::Mutex::new(()),
            expiry_changed: tokio::sync::Notify::new(),
            mutes_changed: tokio::sync::Notify::new(),
            purges: Default::default(),
            presence: Default::default(),
            snapshots: Default::default(),
            rates: DashMap::new(),
            pin_locks: Default::default(),
            hook: None,
            user_locks: Default::default(),
            block_gen: Default::default(),
            rooms: Default::default(),
            access_epoch: Default::default(),
            revoked: Mutex::new(None),
            idempotent_creates: tokio::sync::Mutex::new(()),
            webhook,
            presence_events,
            cells_over: tokio::sync::Notify::new(),
            cells_wake_above: std::sync::atomic::AtomicUsize::new(cells_max),
            members_wake_above: std::sync::atomic::AtomicUsize::new(members_max),
        })
    }

    /// Sets up the pre-send hook the configuration names, if any.
    pub fn set_pre_send_hook(&mut self) -> anyhow::Result<()> {
        self.hook = hook::PreSend::from_config(&self.config)?;
        Ok(())
    }

    /// A conversation's public id: its alias when it was imported, else its number id.
    fn id_of(num: u64, record: &ConversationRecord) -> String {
        if record.alias.is_empty() {
            conversation_id(num)
        } else {
            record.alias.clone()
        }
    }

    fn hub(&self) -> &Hub {
        &self.hub
    }

    fn transient_id(&self) -> u64 {
        self.transient_ids
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    /// The cell of a live conversation, loading it from the store on first use. An issued
    /// temporary id that is past its deadline or gone is `ConversationExpired`.
    fn cell(&self, id: &str) -> Result<Arc<ConvCell>, Error> {
        let num = self.number_of(id)?.ok_or(Error::ConversationNotFound)?;
        let temporary = num & protocol::TEMPORARY_BIT != 0;
        let cell = match self.cell_by_num(num) {
            Err(Error::ConversationNotFound) if temporary => {
                let issued = self
                    .next_conv
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .temporary;
                return Err(if num & !protocol::TEMPORARY_BIT <= issued {
                    Error::ConversationExpired
                } else {
                    Error::ConversationNotFound
                });
            }
            other => other?,
        };
        let st = cell.lock();
        st.require_live()?;
        if temporary && st.record.expires_at <= self.now() {
            return Err(Error::ConversationExpired);
        }
        drop(st);
        Ok(cell)
    }

    /// The number a conversation id names: a number id, or the alias of an imported
    /// conversation (`None`: neither).
    pub(crate) fn number_of(&self, id: &str) -> Result<Option<u64>, Error> {
        if let Some(num) = protocol::parse_conversation_id(id) {
            return Ok(Some(num));
        }
        if id.is_empty() || id.len() > MAX_ALIAS_BYTES {
            return Ok(None);
        }
        Ok(self.store.conversation_alias(id)?)
    }

    /// The public id of conversation `num`: its alias when it was imported, else its number id.
    pub(crate) fn public_id(&self, num: u64) -> Result<String, Error> {
        if let Some(c) = self.convs.get(&num) {
            return Ok(c.id.to_string());
        }
        Ok(match self.store.conversation(num)? {
            Some(r) if !r.alias.is_empty() => r.alias,
            _ => conversation_id(num),
        })
    }

    /// How many rewritten messages of conversation `id` are held in memory for commits still
    /// pending (0 when it is not loaded).
    pub fn rewrites_pending(&self, id: &str) -> usize {
        let Ok(Some(num)) = self.number_of(id) else {
            return 0;
        };
        let cell = self.convs.get(&num).map(|c| c.clone());
        cell.map_or(0, |c| c.lock().edited.len())
    }

    /// The seq a message id names in conversation `id` (a number id, or the alias of an
    /// imported message); `None`: no such message id there.
    pub fn message_seq(&self, id: &str, message_id: &str) -> Option<u64> {
        let num = self.number_of(id).ok()??;
        Self::seq_in(&*self.store, num, message_id).ok()
    }

    /// The seq a message id names in conversation `num`.
    pub(crate) fn seq_in(store: &dyn Store, num: u64, message_id: &str) -> Result<u64, Error> {
        match protocol::parse_message_id(message_id) {
            Some((conv, seq)) if conv == num => Ok(seq),
            Some(_) => Err(Error::MessageNotFound),
            None if message_id.is_empty() || message_id.len() > MAX_ALIAS_BYTES => {
                Err(Error::MessageNotFound)
            }
            None => store
                .message_alias(num, message_id)?
                .ok_or(Error::MessageNotFound),
        }
    }

    /// The cell of conversation `num`, loading it from the store when it is not loaded. A load
    /// made for a user's request is charged to them, and refused when they are in debt (see
    /// [`limits::paid_by`]).
    fn cell_by_num(&self, num: u64) -> Result<Arc<ConvCell>, Error> {
        use std::sync::atomic::Ordering::SeqCst;
        loop {
            if let Some(c) = self.convs.get(&num) {
                // Under the map's read lock, so a sweep deciding to unload it sees this.
                c.checkout(self.now());
                return Ok(c.clone());
            }
            let payer = self.load_payer()?;
            let removals = self.removals.load(SeqCst);
            let cell = off_the_async_threads(|| self.load_cell(num))?;
            let members = cell.lock().members.len();
            if let Some(user) = &payer {
                self.charge_load(user, members);
            }
            match self.convs.entry(num) {
                dashmap::Entry::Occupied(e) => {
                    let cell = e.get().clone();
                    cell.checkout(self.now());
                    return Ok(cell);
                }
                // No removal since the read: what the store said is still the truth.
                dashmap::Entry::Vacant(v) if self.removals.load(SeqCst) == removals => {
                    let cell = v.insert(cell).clone();
                    self.cell_loaded(members);
                    return Ok(cell);
                }
                // A deletion committed meanwhile; read again.
                dashmap::Entry::Vacant(_) => continue,
            }
        }
    }

    /// Reads a conversation's cell from the store (every member record: milliseconds for a
    /// large group, more when the disk is cold).
    fn load_cell(&self, num: u64) -> Result<Arc<ConvCell>, Error> {
        let record = self
            .store
            .conversation(num)?
            .filter(|r| r.deleted_at == 0)
            .ok_or(Error::ConversationNotFound)?;
        let members: HashMap<UserId, MemberRecord> = self.store.members(num)?.into_iter().collect();
        // Seqs continue above what history retention deleted, even when nothing is left.
        let (last_seq, last_ts) = match self.store.last_message(num)? {
            Some(m) => (m.seq.max(record.purged_seq), m.server_time),
            None => (record.purged_seq, record.created_at),
        };
        let next_join_order = members.values().map(|m| m.join_order).max().unwrap_or(0) + 1;
        let mut state = ConvState {
            record,
            members,
            roster: Arc::from(Vec::new()),
            live: Arc::default(),
            reads: HashMap::new(),
            last_seq,
            durable_seq: last_seq,
            last_ts,
            next_join_order,
            expired: false,
            deleted: false,
            entries: HashMap::new(),
            edited: HashMap::new(),
            receipt_high: None,
            blocks: None,
            silent: None,
            log_seq: None,
            imported: None,
            published: None,
        };
        let id = Arc::from(Self::id_of(num, &state.record));
        state.rebuild_roster();
        Ok(ConvCell::new(num, id, state, self.now(), &self.heads))
    }

    /// What to do once the deletion or expiry of `cell` has committed: drop it and the indexes
    /// that lead to it from memory. Until then the cell stays, marked, so no request reloads
    /// the conversation from a store that does not know yet that it is gone. Runs in commit
    /// order, before any later write is acked, so a caller that waits for a later write (or a
    /// barrier) finds memory and store agreeing.
    fn forget_after_commit(
        &self,
        cell: &Arc<ConvCell>,
        direct: Option<(UserId, UserId)>,
        unique: Option<Vec<UserId>>,
    ) -> writer::AfterCommit {
        let (convs, removals, heads, directs, uniques, stats) = (
            self.convs.clone(),
            self.removals.clone(),
            self.heads.clone(),
            self.directs.clone(),
            self.temp_uniques.clone(),
            self.stats.clone(),
        );
        let cell = cell.clone();
        Box::new(move || {
            let num = cell.num;
            removals.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if convs
                .remove_if(&num, |_, c| Arc::ptr_eq(c, &cell))
                .is_some()
            {
                stats.conversations_loaded.dec();
                let held = cell.members_held.load(std::sync::atomic::Ordering::Relaxed);
                stats.conversation_members_loaded.sub(held as u64);
            }
            heads.remove(&num);
            if let Some(pair) = direct {
                directs.remove_if(&pair, |_, n| *n == num);
            }
            if let Some(members) = unique {
                uniques.remove_if(&members, |_, n| *n == num);
            }
        })
    }

    /// A member's read position (memory first, then the store).
    fn read_seq(&self, st: &mut ConvState, num: u64, user: &UserId) -> Result<u64, Error> {
        if let Some(r) = st.reads.get(user) {
            return Ok(*r);
        }
        let r = self.store.read_seq(user, num)?;
        st.reads.insert(user.clone(), r);
        Ok(r)
    }

    /// A member's per-user record (memory first, then the store; default when absent).
    fn entry(
        &self,
        st: &mut ConvState,
        num: u64,
        user: &UserId,
    ) -> Result<UserConversationRecord, Error> {
        if let Some(r) = st.entries.get(user) {
            return Ok(r.clone());
        }
        let r = self.store.user_conversation(user, num)?.unwrap_or_default();
        st.entries.insert(user.clone(), r.clone());
        Ok(r)
    }

    /// Records a member's new per-user record in memory and returns the op that stores it.
    fn put_entry(
        st: &mut ConvState,
        num: u64,
        user: &UserId,
        record: UserConversationRecord,
    ) -> Op {
        st.entries.insert(user.clone(), record.clone());
        Op::PutUserConversation {
            user: user.clone(),
            conv: num,
            record,
        }
    }

    /// The conversation as `user` sees it.
    fn view_for(
        &self,
        cell: &ConvCell,
        view: Conversation,
        user: &str,
    ) -> Result<Conversation, Error> {
        let user = UserId::from(user);
        let muted = self.entry(&mut cell.lock(), cell.num, &user)?.muted;
        Ok(Conversation { muted, ..view })
    }

    /// Builds a conversation event (the writer fills `user_seq` for logged ones).
    fn event(
        &self,
        kind: ConversationEventKind,
        cell: &ConvCell,
        by: &str,
        members: Vec<String>,
        conversation: Conversation,
    ) -> ConversationEvent {
        ConversationEvent {
            kind: kind as i32,
            conversation_id: cell.id.to_string(),
            by: by.to_owned(),
            members,
            conversation: Some(conversation),
            server_time: self.now(),
            user_seq: 0,
            role: 0,
            muted_until: 0,
        }
    }

    /// A live (not logged) delivery of an event to some users.
    fn live(event: &ConversationEvent, to: Recipients, except_session: u64) -> Delivery {
        Delivery {
            to,
            frame: protocol::push(pb::server_frame::Body::ConversationEvent(event.clone())),
            user_seq: 0,
            except_session,
        }
    }

    /// The unread summary pushed after login: the first `login_summary_max` entries of the
    /// user's list, with the same unread counts and last messages the list shows, and the
    /// cursor of the list's next page when there are more (`with_cursor`: for a client that
    /// can page on; the cursor keeps a snapshot of the order). `max_bytes` bounds the entries'
    /// bytes as a list page's `max_bytes` does (0: no bound).
    pub fn unread_summary(
        &self,
        user: &str,
        with_cursor: bool,
        max_bytes: usize,
    ) -> Result<pb::UnreadSummary, Error> {
        let user = UserId::from(user);
        let (page, list_cursor, _) = self.list_page(
            &user,
            inbox::ListRequest {
                max_bytes,
                ..Default::default()
            },
            self.config.login_summary_max,
            with_cursor,
        )?;
        let mut entries = Vec::with_capacity(page.len());
        for e in page.into_iter().filter(|e| !e.deleted) {
            entries.push(pb::UnreadEntry {
                conversation_id: e.conversation_id,
                kind: e.kind,
                unread: e.unread,
                last_seq: e.last_seq,
                read_seq: e.read_seq,
                last_message: e.last_message,
                muted: e.muted,
                expires_at: e.expires_at,
                pinned_at: e.pinned_at,
            });
        }
        Ok(pb::UnreadSummary {
            entries,
            list_cursor,
        })
    }

    /// The unread summary a login pushes ([`Registry::unread_summary`]), charged to the user
    /// afterwards by the bytes of the last messages it carries, as a list page is (see
    /// `limits::RETURNED_BYTES_PER_TOKEN`).
    pub fn login_summary(&self, user: &str, with_cursor: bool) -> Result<pb::UnreadSummary, Error> {
        let summary = self.unread_summary(user, with_cursor, 0)?;
        let bytes = summary
            .entries
            .iter()
            .filter_map(|e| e.last_message.as_ref())
            .map(prost::Message::encoded_len)
            .sum();
        self.charge_bytes(&UserId::from(user), bytes);
        Ok(summary)
    }

    /// A login's replay: the newest logged events of `user` after `cursor`, charged to the user
    /// afterwards by their bytes (see `limits::RETURNED_BYTES_PER_TOKEN`).
    pub fn events_after(&self, user: &str, cursor: u64) -> Result<EventsAfter, Error> {
        let (events, mut truncated) = self.store.user_events_after(
            user,
            cursor,
            self.config.max_login_replay_events as usize,
        )?;
        let head = match events.last() {
            Some(e) => e.user_seq,
            None => self.store.last_user_event_seq(user)?,
        };
        match events.first() {
            // Seqs have no holes within a log: events after the cursor below the oldest kept
            // were deleted (`event_log_retention`, or the sweep of old ones).
            Some(first) => truncated |= first.user_seq > cursor.saturating_add(1),
            // An empty log stands at the sweep's floor: a device below it may have missed
            // what the sweep took.
            None => truncated |= cursor < head,
        }
        let bytes = events.iter().map(prost::Message::encoded_len).sum();
        self.charge_bytes(&UserId::from(user), bytes);
        Ok(EventsAfter {
            events,
            truncated,
            head,
        })
    }

    /// The logged events of `user` after time `after` (ms), oldest first (as far back as
    /// `event_log_retention` keeps them).
    pub fn events_since(&self, user: &str, after: i64) -> Result<Vec<ConversationEvent>, Error> {
        let (mut events, _) =
            self.store
                .user_events_after(user, 0, self.config.event_log_retention as usize)?;
        events.retain(|e| e.server_time > after);
        Ok(events)
    }

    /// A user id named in a request, by the rule logins follow ([`crate::auth::check_user_id`]).
    pub fn check_user_id(&self, u: &str) -> Result<(), Error> {
        crate::auth::check_user_id(u, self.config.max_user_id_bytes)
            .map_err(|e| Error::InvalidArgument(format!("{e}: {u:?}")))
    }

    fn check_attributes(
        &self,
        name: &str,
        attrs: &std::collections::BTreeMap<String, String>,
    ) -> Result<(), Error> {
        if name.len() > self.config.max_name_bytes {
            return Err(Error::LimitExceeded(format!(
                "name is {} bytes; max_name_bytes is {}",
                name.len(),
                self.config.max_name_bytes
            )));
        }
        let size: usize = attrs.iter().map(|(k, v)| k.len() + v.len()).sum();
        if size > self.config.max_attributes_bytes {
            return Err(Error::LimitExceeded(format!(
                "attributes are {size} bytes; max_attributes_bytes is {}",
                self.config.max_attributes_bytes
            )));
        }
        check_text("name", name)?;
        attrs
            .keys()
            .try_for_each(|k| check_text("an attribute key", k))
    }
}

/// Text a client sets that others are shown, by the one rule ([`crate::auth::check_text`]).
pub(crate) fn check_text(what: &str, text: &str) -> Result<(), Error> {
    crate::auth::check_text(text)
        .map_err(|e| Error::InvalidArgument(format!("{what} {e}: {text:?}")))
}

/// The newest seq at or below `last` that was not sent silently (0: none).
pub(crate) fn loud_seq(silent: &[u64], last: u64) -> u64 {
    let mut seq = last;
    let mut i = silent.partition_point(|s| *s <= last);
    while seq > 0 && i > 0 && silent[i - 1] == seq {
        seq -= 1;
        i -= 1;
    }
    seq
}

/// How many seqs in `seen+1..=last` were sent silently.
pub(crate) fn silent_between(silent: &[u64], seen: u64, last: u64) -> u64 {
    if seen >= last {
        return 0;
    }
    (silent.partition_point(|s| *s <= last) - silent.partition_point(|s| *s <= seen)) as u64
}

impl Registry {
    /// The silent seqs of a loaded conversation (`None`: it has none).
    fn silent_of(&self, st: &mut ConvState, num: u64) -> Result<Option<Arc<Vec<u64>>>, Error> {
        if st.record.last_silent_seq == 0 {
            return Ok(None);
        }
        if st.silent.is_none() {
            st.silent = Some(Arc::new(self.store.silent_seqs(num, 1, u64::MAX)?));
        }
        Ok(st.silent.clone())
    }

    /// What a list shows of a conversation's activity when some of its messages were sent
    /// silently: the newest seq at or below `last` that was not, and its time (`last_ts`
    /// when that is `last`).
    fn loudness(
        &self,
        num: u64,
        silent: Option<&[u64]>,
        last: u64,
        last_ts: i64,
    ) -> Result<(u64, i64), Error> {
        let Some(silent) = silent else {
            return Ok((last, last_ts));
        };
        let loud = loud_seq(silent, last);
        let ts = if loud == last {
            last_ts
        } else if loud == 0 {
            0
        } else {
            self.store.message(num, loud)?.map_or(0, |m| m.server_time)
        };
        Ok((loud, ts))
    }
}

/// Starts the task that writes presence changes to the webhook outbox one by one, in the
/// order they happened (none without a runtime).
fn presence_webhook(writer: Writer) -> Option<tokio::sync::mpsc::Sender<pb::PresenceEvent>> {
    let rt = tokio::runtime::Handle::try_current().ok()?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<pb::PresenceEvent>(PRESENCE_EVENTS_QUEUED);
    rt.spawn(async move {
        while let Some(e) = rx.recv().await {
            let Ok(permit) = writer.reserve().await else {
                return;
            };
            let record = crate::webhooks::record(pb::outbox_event::Event::Presence(e));
            drop(writer.submit_with_records(
                permit,
                Vec::new(),
                Vec::new(),
                Vec::new(),
                None,
                vec![record],
            ));
        }
    });
    Some(tx)
}

impl Registry {
    /// Queues a `user.online` or `user.offline` webhook event for a presence change (when
    /// some endpoint takes them). The state is read now, as the pushes read it.
    pub(super) fn presence_webhook(&self, user: &UserId) {
        let Some(tx) = &self.presence_events else {
            return;
        };
        let e = pb::PresenceEvent {
            user: user.to_string(),
            online: self.hub.is_online(user),
            at: self.now(),
        };
        if tx.try_send(e).is_err() {
            self.stats.webhook_events_dropped.add(1);
            static FULL: crate::logsafe::Throttle =
                crate::logsafe::Throttle::new("presence webhook events dropped");
            if FULL.allow(1) {
                tracing::warn!(
                    "presence webhook events dropped: {PRESENCE_EVENTS_QUEUED} are waiting for \
                     the store (tidings_webhook_events_dropped_total counts them)"
                );
            }
        }
    }
}

/// What [`Registry::events_after`] found.
pub struct EventsAfter {
    /// Oldest first, at most `max_login_replay_events`.
    pub events: Vec<ConversationEvent>,
    /// Events after the cursor were left out: more than the replay takes, or deleted.
    pub truncated: bool,
    /// The seq the log stands at: the newest returned, or where the next event continues.
    pub head: u64,
}

/// Runs store reads that may take long (loading a conversation's members) without holding up
/// the tasks that share this thread: on the multi-threaded runtime the thread hands its other
/// tasks to another before it blocks ([`tokio::task::block_in_place`]). Elsewhere (a blocking
/// thread, a single-threaded runtime, no runtime) it just runs.
fn off_the_async_threads<R>(work: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}
