//! A store that tells a watcher of each commit before making it and of each read, so tests
//! can hold a commit as long as they need, or count what a request reads.

use crate::harness::*;
use std::sync::Arc;
use tidings::protocol::pb;
use tidings::store::{self, Counter, Direction, EntrySink, Op, Store, StoreError, UserId};

/// What a [`Spied`] store tells.
pub trait Watch: Send + Sync + 'static {
    /// Called on the writer thread before each commit (it may block to hold the commit, or
    /// fail it).
    fn commit(&self, _ops: &[Op]) -> Result<(), StoreError> {
        Ok(())
    }
    /// Called before each read, with the name of the `Store` method.
    fn read(&self, _what: &'static str) {}
}

/// The configured store, watched.
pub struct Spied {
    inner: Arc<dyn Store>,
    watch: Arc<dyn Watch>,
}

impl Spied {
    pub fn new(inner: Arc<dyn Store>, watch: Arc<dyn Watch>) -> Spied {
        Spied { inner, watch }
    }
}

impl Store for Spied {
    fn commit(&self, ops: &[Op]) -> Result<(), StoreError> {
        self.watch.commit(ops)?;
        self.inner.commit(ops)
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.inner.flush()
    }
    fn conversation(&self, conv: u64) -> Result<Option<pb::ConversationRecord>, StoreError> {
        self.watch.read("conversation");
        self.inner.conversation(conv)
    }
    fn members(&self, conv: u64) -> Result<Vec<(UserId, pb::MemberRecord)>, StoreError> {
        self.watch.read("members");
        self.inner.members(conv)
    }
    fn member(&self, conv: u64, user: &str) -> Result<Option<pb::MemberRecord>, StoreError> {
        self.watch.read("member");
        self.inner.member(conv, user)
    }
    fn user_conversations(
        &self,
        user: &str,
    ) -> Result<Vec<(u64, pb::UserConversationRecord)>, StoreError> {
        self.watch.read("user_conversations");
        self.inner.user_conversations(user)
    }
    fn list_rows(&self, user: &str) -> Result<Arc<Vec<store::ListRow>>, StoreError> {
        self.watch.read("list_rows");
        self.inner.list_rows(user)
    }
    fn user_conversation(
        &self,
        user: &str,
        conv: u64,
    ) -> Result<Option<pb::UserConversationRecord>, StoreError> {
        self.watch.read("user_conversation");
        self.inner.user_conversation(user, conv)
    }
    fn message(&self, conv: u64, seq: u64) -> Result<Option<pb::Message>, StoreError> {
        self.watch.read("message");
        self.inner.message(conv, seq)
    }
    fn last_message(&self, conv: u64) -> Result<Option<pb::Message>, StoreError> {
        self.watch.read("last_message");
        self.inner.last_message(conv)
    }
    fn messages(
        &self,
        conv: u64,
        lo: u64,
        hi: u64,
        dir: Direction,
        limit: usize,
    ) -> Result<Vec<pb::Message>, StoreError> {
        self.watch.read("messages");
        self.inner.messages(conv, lo, hi, dir, limit)
    }
    fn read_seq(&self, user: &str, conv: u64) -> Result<u64, StoreError> {
        self.watch.read("read_seq");
        self.inner.read_seq(user, conv)
    }
    fn dedup(&self, conv: u64, sender: &str, client_id: &str) -> Result<Option<u64>, StoreError> {
        self.watch.read("dedup");
        self.inner.dedup(conv, sender, client_id)
    }
    fn direct(&self, a: &str, b: &str) -> Result<Option<u64>, StoreError> {
        self.watch.read("direct");
        self.inner.direct(a, b)
    }
    fn user_events_after(
        &self,
        user: &str,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<pb::ConversationEvent>, bool), StoreError> {
        self.watch.read("user_events_after");
        self.inner.user_events_after(user, after, limit)
    }
    fn last_user_event_seq(&self, user: &str) -> Result<u64, StoreError> {
        self.watch.read("last_user_event_seq");
        self.inner.last_user_event_seq(user)
    }
    fn counter(&self, counter: Counter) -> Result<u64, StoreError> {
        self.watch.read("counter");
        self.inner.counter(counter)
    }
    fn highest_conversations(&self) -> Result<(u64, u64), StoreError> {
        self.watch.read("highest_conversations");
        self.inner.highest_conversations()
    }
    fn tombstones(&self, user: &str) -> Result<Vec<(u64, i64)>, StoreError> {
        self.watch.read("tombstones");
        self.inner.tombstones(user)
    }
    fn user_events_page(
        &self,
        after: Option<(&str, u64)>,
        limit: usize,
    ) -> Result<Vec<(UserId, u64, i64)>, StoreError> {
        self.watch.read("user_events_page");
        self.inner.user_events_page(after, limit)
    }
    fn tombstones_after(
        &self,
        after: Option<(&str, u64)>,
        limit: usize,
    ) -> Result<Vec<(UserId, u64, i64)>, StoreError> {
        self.watch.read("tombstones_after");
        self.inner.tombstones_after(after, limit)
    }
    fn hidden_seqs(&self, user: &str, conv: u64, lo: u64, hi: u64) -> Result<Vec<u64>, StoreError> {
        self.watch.read("hidden_seqs");
        self.inner.hidden_seqs(user, conv, lo, hi)
    }
    fn receipts_wanted(
        &self,
        conv: u64,
        lo: u64,
        hi: u64,
    ) -> Result<Vec<(u64, UserId)>, StoreError> {
        self.watch.read("receipts_wanted");
        self.inner.receipts_wanted(conv, lo, hi)
    }
    fn last_receipt_wanted(&self, conv: u64) -> Result<u64, StoreError> {
        self.watch.read("last_receipt_wanted");
        self.inner.last_receipt_wanted(conv)
    }
    fn next_expiries(&self, limit: usize) -> Result<Vec<(i64, u64)>, StoreError> {
        self.watch.read("next_expiries");
        self.inner.next_expiries(limit)
    }
    fn conversation_part_entries(&self, conv: u64, limit: usize) -> Result<usize, StoreError> {
        self.watch.read("conversation_part_entries");
        self.inner.conversation_part_entries(conv, limit)
    }
    fn next_mute_deadlines(&self, limit: usize) -> Result<Vec<(i64, u64, UserId)>, StoreError> {
        self.watch.read("next_mute_deadlines");
        self.inner.next_mute_deadlines(limit)
    }
    fn unique_temporary(&self, members: &[UserId]) -> Result<Option<u64>, StoreError> {
        self.watch.read("unique_temporary");
        self.inner.unique_temporary(members)
    }
    fn conversation_alias(&self, alias: &str) -> Result<Option<u64>, StoreError> {
        self.watch.read("conversation_alias");
        self.inner.conversation_alias(alias)
    }
    fn message_alias(&self, conv: u64, alias: &str) -> Result<Option<u64>, StoreError> {
        self.watch.read("message_alias");
        self.inner.message_alias(conv, alias)
    }
    fn outbox_after(&self, after: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        self.watch.read("outbox_after");
        self.inner.outbox_after(after, limit)
    }
    fn last_outbox_seq(&self) -> Result<u64, StoreError> {
        self.watch.read("last_outbox_seq");
        self.inner.last_outbox_seq()
    }
    fn webhook_cursor(&self, endpoint: &str) -> Result<u64, StoreError> {
        self.watch.read("webhook_cursor");
        self.inner.webhook_cursor(endpoint)
    }
    fn dead_letters(
        &self,
        endpoint: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        self.watch.read("dead_letters");
        self.inner.dead_letters(endpoint, after, limit)
    }
    fn user_blocks(
        &self,
        user: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(tidings::store::UserId, i64)>, StoreError> {
        self.watch.read("user_blocks");
        self.inner.user_blocks(user, after, limit)
    }
    fn user_block(&self, user: &str, other: &str) -> Result<Option<i64>, StoreError> {
        self.watch.read("user_block");
        self.inner.user_block(user, other)
    }
    fn profile(&self, user: &str) -> Result<Option<tidings::protocol::pb::Profile>, StoreError> {
        self.watch.read("profile");
        self.inner.profile(user)
    }
    fn message_versions(
        &self,
        conv: u64,
        seq: u64,
    ) -> Result<Vec<tidings::protocol::pb::Message>, StoreError> {
        self.watch.read("message_versions");
        self.inner.message_versions(conv, seq)
    }
    fn silent_seqs(&self, conv: u64, lo: u64, hi: u64) -> Result<Vec<u64>, StoreError> {
        self.watch.read("silent_seqs");
        self.inner.silent_seqs(conv, lo, hi)
    }
    fn user_access(
        &self,
        user: &str,
    ) -> Result<Option<tidings::protocol::pb::UserAccess>, StoreError> {
        self.watch.read("user_access");
        self.inner.user_access(user)
    }
    fn revoked_token(&self, jti: &str) -> Result<Option<i64>, StoreError> {
        self.watch.read("revoked_token");
        self.inner.revoked_token(jti)
    }
    fn revoked_tokens(&self, limit: usize) -> Result<Vec<(i64, String)>, StoreError> {
        self.watch.read("revoked_tokens");
        self.inner.revoked_tokens(limit)
    }
    fn idempotent_create(
        &self,
        key: &str,
    ) -> Result<Option<tidings::protocol::pb::IdempotentCreate>, StoreError> {
        self.watch.read("idempotent_create");
        self.inner.idempotent_create(key)
    }
    fn idempotent_creates(&self, limit: usize) -> Result<Vec<(i64, String)>, StoreError> {
        self.watch.read("idempotent_creates");
        self.inner.idempotent_creates(limit)
    }
    fn conversations_of_kind(
        &self,
        kind: i32,
        below: u64,
        limit: usize,
    ) -> Result<Vec<u64>, StoreError> {
        self.watch.read("conversations_of_kind");
        self.inner.conversations_of_kind(kind, below, limit)
    }
    fn conversation_events_after(
        &self,
        conv: u64,
        after: i64,
        limit: usize,
    ) -> Result<Vec<tidings::protocol::pb::ConversationEvent>, StoreError> {
        self.watch.read("conversation_events_after");
        self.inner.conversation_events_after(conv, after, limit)
    }
    fn last_conversation_event_seq(&self, conv: u64) -> Result<u64, StoreError> {
        self.watch.read("last_conversation_event_seq");
        self.inner.last_conversation_event_seq(conv)
    }
    fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.watch.read("size_on_disk");
        self.inner.size_on_disk()
    }
    fn dump(&self, f: &mut EntrySink<'_>) -> Result<(), StoreError> {
        self.watch.read("dump");
        self.inner.dump(f)
    }
    fn is_empty(&self) -> Result<bool, StoreError> {
        self.watch.read("is_empty");
        self.inner.is_empty()
    }
    fn mark_format(&self, version: Option<u64>) -> Result<(), StoreError> {
        self.inner.mark_format(version)
    }
    fn patches_after(
        &self,
        conv: u64,
        after: i64,
        limit: usize,
    ) -> Result<Vec<(i64, u64)>, StoreError> {
        self.watch.read("patches_after");
        self.inner.patches_after(conv, after, limit)
    }
    fn load(&self, rows: Vec<(Vec<u8>, Vec<u8>)>) -> Result<(), StoreError> {
        self.inner.load(rows)
    }
    fn importing(&self) -> Result<bool, StoreError> {
        self.watch.read("importing");
        self.inner.importing()
    }
    fn mark_importing(&self, on: bool) -> Result<(), StoreError> {
        self.inner.mark_importing(on)
    }
    fn clear(&self) -> Result<(), StoreError> {
        self.inner.clear()
    }
}

/// A server on a store watched by `watch` (after a restart too), configured by `configure`.
pub async fn spied_server(
    watch: Arc<dyn Watch>,
    configure: impl FnOnce(&mut tidings::config::Config),
) -> TestServer {
    TestServer::start_on(configure, move |c| {
        std::fs::create_dir_all(&c.data_dir).unwrap();
        let inner = store::open(&c.store_engine, &c.data_dir, c.store_cache_bytes).unwrap();
        let watch = watch.clone();
        Some(Arc::new(Spied { inner, watch }) as Arc<dyn Store>)
    })
    .await
}
