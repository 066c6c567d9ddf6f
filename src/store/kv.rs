//! [`Store`] over any ordered key-value engine.
//!
//! An engine only has to offer point reads, ordered range reads, an atomic batch of puts and
//! deletes, and a flush ([`OrderedKv`]). Everything else (the key layout of [`keys`], record
//! encoding, purges) is written once here, so every engine stores the same bytes under the same
//! keys and passes the same conformance suite.

use super::keys::{self, be_u64, user_at};
use super::list_cache::ListCache;
use super::{Counter, Direction, ListRow, Op, Store, StoreError, UserId, decode};
use crate::protocol::pb::{
    ConversationEvent, ConversationRecord, IdempotentCreate, MemberRecord, Message, Profile,
    UserAccess, UserConversationRecord,
};
use prost::Message as _;
use std::collections::HashMap;

/// One write of an atomic batch.
#[derive(Debug, Clone)]
pub enum Write {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
}

/// Key-value pairs read from an engine.
pub type Rows = Vec<(Vec<u8>, Vec<u8>)>;

/// What an embedded engine must provide.
pub trait OrderedKv: Send + Sync + 'static {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Entries with `lo <= key < hi` (`hi = None`: no upper bound), ascending or descending,
    /// at most `limit`.
    fn range(
        &self,
        lo: &[u8],
        hi: Option<&[u8]>,
        descending: bool,
        limit: usize,
    ) -> Result<Rows, StoreError>;
    /// Calls `f` with every entry in key order, from one consistent view.
    fn for_each(&self, f: &mut super::EntrySink<'_>) -> Result<(), StoreError>;
    /// Applies the writes atomically, in order (a later write to a key wins); visible at once.
    fn apply(&self, writes: Vec<Write>) -> Result<(), StoreError>;
    /// Makes everything applied so far durable.
    fn flush(&self) -> Result<(), StoreError>;
    fn size_on_disk(&self) -> Result<u64, StoreError>;
}

/// The first key after every key that starts with `prefix` (`None`: there is none).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// The tidings store on an ordered key-value engine.
pub struct KvStore<E: OrderedKv> {
    engine: E,
    /// The list rows of users with long lists (see [`super::list_cache`]).
    lists: ListCache,
}

impl<E: OrderedKv> KvStore<E> {
    pub fn new(engine: E) -> Self {
        KvStore {
            engine,
            lists: ListCache::default(),
        }
    }

    fn record<M: prost::Message + Default>(
        &self,
        what: &'static str,
        key: &[u8],
    ) -> Result<Option<M>, StoreError> {
        match self.engine.get(key)? {
            Some(v) => decode(what, &v).map(Some),
            None => Ok(None),
        }
    }

    fn number(&self, key: &[u8]) -> Result<Option<u64>, StoreError> {
        Ok(self.engine.get(key)?.and_then(|v| be_u64(&v, 0)))
    }

    fn scan(&self, prefix: &[u8], descending: bool, limit: usize) -> Result<Rows, StoreError> {
        self.engine
            .range(prefix, prefix_end(prefix).as_deref(), descending, limit)
    }

    /// Every stored key that belongs to `conv` (what a purge deletes).
    fn keys_of_conversation(&self, conv: u64) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut out = vec![keys::conversation(conv)];
        if let Some(record) =
            self.record::<ConversationRecord>("conversation", &keys::conversation(conv))?
        {
            out.push(kind_key(&record, conv));
            if record.expires_at > 0 {
                out.push(keys::expiry(record.expires_at, conv));
            }
            if !record.alias.is_empty() {
                let alias = keys::conversation_alias(&record.alias);
                if self.number(&alias)? == Some(conv) {
                    out.push(alias);
                }
            }
            if !record.pair.is_empty() {
                let unique = keys::unique_temporary(&record.pair);
                if self.number(&unique)? == Some(conv) {
                    out.push(unique);
                }
            }
        }
        let mut prefixes = vec![
            keys::messages_of(conv),
            keys::dedups_of(conv),
            keys::receipts_wanted_of(conv),
            keys::patches_of(conv),
            keys::message_aliases_of(conv),
            keys::message_versions_of(conv),
            keys::silent_of(conv),
            keys::conversation_events_of(conv),
        ];
        for (user, _) in self.members(conv)? {
            out.push(keys::member(conv, &user));
            out.push(keys::user_conversation(&user, conv));
            out.push(keys::read_seq(&user, conv));
            prefixes.push(keys::hidden_of(&user, conv));
        }
        for prefix in prefixes {
            out.extend(
                self.scan(&prefix, false, usize::MAX)?
                    .into_iter()
                    .map(|(k, _)| k),
            );
        }
        Ok(out)
    }
}

impl<E: OrderedKv> KvStore<E> {
    /// Every stored key of messages `from..=through` of `conv` and what hangs off them (what
    /// [`Op::PurgeMessages`] deletes).
    fn keys_of_messages(
        &self,
        conv: u64,
        from: u64,
        through: u64,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut out = Vec::new();
        if from > through {
            return Ok(out);
        }
        let end = through.saturating_add(1);
        let range = |lo: Vec<u8>, hi: Vec<u8>| self.engine.range(&lo, Some(&hi), false, usize::MAX);
        for (key, value) in range(keys::message(conv, from), keys::message(conv, end))? {
            let m: Message = super::decode("message", &value)?;
            let patched = m.edited_at.max(m.recalled_at);
            if patched > 0 {
                out.push(keys::patch(conv, patched, m.seq));
            }
            if crate::protocol::parse_message_id(&m.id).is_none() && !m.id.is_empty() {
                out.push(keys::message_alias(conv, &m.id));
            }
            out.push(key);
        }
        for (lo, hi) in [
            (
                keys::receipt_wanted(conv, from),
                keys::receipt_wanted(conv, end),
            ),
            (keys::silent(conv, from), keys::silent(conv, end)),
            (
                keys::message_version(conv, from, 0),
                keys::message_version(conv, end, 0),
            ),
        ] {
            out.extend(range(lo, hi)?.into_iter().map(|(k, _)| k));
        }
        Ok(out)
    }
}

impl<E: OrderedKv> KvStore<E> {
    /// The first `limit` keys of what [`Op::PurgeConversationPart`] deletes of `conv`.
    fn keys_of_part(&self, conv: u64, limit: usize) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut out = Vec::new();
        for prefix in [keys::dedups_of(conv), keys::conversation_events_of(conv)] {
            if out.len() >= limit {
                break;
            }
            let rows = self.scan(&prefix, false, limit - out.len())?;
            out.extend(rows.into_iter().map(|(k, _)| k));
        }
        Ok(out)
    }

    /// Up to `limit` entries of the `tag` keys (user ‖ u64, made by `key`; `what` they are)
    /// after `after`, in key order: (user, the u64, the time `time` reads from the value).
    fn user_keyed_page(
        &self,
        (tag, what): (u8, &'static str),
        key: fn(&str, u64) -> Vec<u8>,
        after: Option<(&str, u64)>,
        limit: usize,
        time: fn(&[u8]) -> Option<i64>,
    ) -> Result<Vec<(UserId, u64, i64)>, StoreError> {
        let prefix = [tag];
        let lo = match after {
            Some((user, n)) => {
                let mut k = key(user, n);
                k.push(0);
                k
            }
            None => prefix.to_vec(),
        };
        let hi = prefix_end(&prefix);
        self.engine
            .range(&lo, hi.as_deref(), false, limit)?
            .into_iter()
            .map(|(k, v)| {
                let parsed = keys::user_at(&k, 1)
                    .and_then(|(user, at)| Some((UserId::from(user), be_u64(&k, at)?, time(&v)?)));
                parsed.ok_or_else(|| StoreError::Corrupt {
                    what,
                    detail: format!("{k:?}"),
                })
            })
            .collect()
    }
}

/// The entry of the by-kind index of a conversation record.
fn kind_key(record: &ConversationRecord, conv: u64) -> Vec<u8> {
    keys::conversation_by_kind(u8::try_from(record.kind).unwrap_or(0), conv)
}

/// Messages read per step of a migration.
const MIGRATION_BATCH: usize = 10_000;

impl<E: OrderedKv> KvStore<E> {
    /// The stored format version: the `V` key, or 1 for data written before it existed (`None`:
    /// the store is empty).
    fn stored_format(&self) -> Result<Option<u64>, StoreError> {
        if let Some(v) = self.engine.get(&keys::format_version())? {
            return be_u64(&v, 0).map(Some).ok_or_else(|| StoreError::Corrupt {
                what: "format version",
                detail: format!("{v:?}"),
            });
        }
        Ok((!self.is_empty()?).then_some(1))
    }

    /// Brings the stored data to [`keys::FORMAT_VERSION`], one version at a time, or refuses
    /// data written by a newer build. Each step is idempotent and the version is written last,
    /// so a step cut short by a crash runs again at the next start. Returns the version found.
    pub fn upgrade(&self) -> Result<u64, StoreError> {
        if self.engine.get(&keys::importing())?.is_some() {
            return Err(StoreError::Format(
                "an import into this store did not finish (`tidings store import` failed or was \
                 stopped), so it holds part of a dump at most and is not served; run the import \
                 again into the same data directory"
                    .into(),
            ));
        }
        let found = self.stored_format()?;
        let Some(mut version) = found else {
            self.mark_format(Some(keys::FORMAT_VERSION))?;
            self.engine.flush()?;
            return Ok(keys::FORMAT_VERSION);
        };
        if version > keys::FORMAT_VERSION {
            return Err(StoreError::Format(format!(
                "the store is in format {version}, written by a newer tidings; this build reads \
                 formats up to {}. Run the newer version, or restore a backup made by this one",
                keys::FORMAT_VERSION
            )));
        }
        if version == 0 {
            return Err(StoreError::Format("the store claims format 0".into()));
        }
        let from = version;
        while version < keys::FORMAT_VERSION {
            let started = std::time::Instant::now();
            let entries = match version {
                1 => self.index_patches()?,
                // 2 → 3 adds key kinds that only new imports write: nothing to convert.
                2 => 0,
                // 3 → 4 adds the webhook outbox, which only new events fill.
                3 => 0,
                // 4 → 5 adds user blocks and profiles, which start empty: nothing to convert.
                4 => 0,
                // 5 → 6 adds kept message versions and the silent index, which only new
                // edits and sends fill, and the timed-mute index, from the members' records.
                5 => self.index_mute_deadlines()?,
                // 6 → 7 adds the by-kind index, from the conversation records, and the
                // conversations' event logs, which only new events fill.
                6 => self.index_kinds()?,
                _ => unreachable!("every version below the current one has a step"),
            };
            version += 1;
            self.mark_format(Some(version))?;
            self.engine.flush()?;
            tracing::info!(
                from = version - 1,
                to = version,
                entries,
                took_ms = started.elapsed().as_millis() as u64,
                "store format upgraded"
            );
        }
        Ok(from)
    }

    /// 5 → 6: the timed-mute index, from every member muted until a time (not until lifted),
    /// so those mutes end with their event like new ones.
    fn index_mute_deadlines(&self) -> Result<u64, StoreError> {
        self.index_from(keys::MEMBER, |k, v| {
            let m: MemberRecord = decode("member", v)?;
            let timed = m.muted_until > 0 && m.muted_until < i64::MAX;
            Ok(match (be_u64(k, 1), user_at(k, 9), timed) {
                (Some(conv), Some((user, _)), true) => {
                    Some(keys::mute_deadline(m.muted_until, conv, user))
                }
                _ => None,
            })
        })
    }

    /// 6 → 7: the by-kind index, from every conversation record not marked deleted.
    fn index_kinds(&self) -> Result<u64, StoreError> {
        self.index_from(keys::CONVERSATION, |k, v| {
            let record: ConversationRecord = decode("conversation", v)?;
            Ok(match be_u64(k, 1) {
                Some(conv) if record.deleted_at == 0 => Some(kind_key(&record, conv)),
                _ => None,
            })
        })
    }

    /// 1 → 2: the patch index, from every edited or recalled message.
    fn index_patches(&self) -> Result<u64, StoreError> {
        self.index_from(keys::MESSAGE, |k, v| {
            let m: Message = decode("message", v)?;
            let at = m.edited_at.max(m.recalled_at);
            Ok(match (be_u64(k, 1), be_u64(k, 9), at > 0) {
                (Some(conv), Some(seq), true) => Some(keys::patch(conv, at, seq)),
                _ => None,
            })
        })
    }

    /// Builds an index from every entry under `prefix`, a batch at a time: `key_of` gives the
    /// (empty-valued) index key of an entry, if it has one. Returns how many were written.
    fn index_from(
        &self,
        prefix: u8,
        key_of: impl Fn(&[u8], &[u8]) -> Result<Option<Vec<u8>>, StoreError>,
    ) -> Result<u64, StoreError> {
        let end = prefix_end(&[prefix]);
        let mut lo = vec![prefix];
        let mut entries = 0;
        loop {
            let rows = self
                .engine
                .range(&lo, end.as_deref(), false, MIGRATION_BATCH)?;
            let Some((last, _)) = rows.last() else {
                return Ok(entries);
            };
            lo = last.clone();
            lo.push(0);
            let mut writes = Vec::new();
            for (k, v) in &rows {
                if let Some(key) = key_of(k, v)? {
                    writes.push(Write::Put(key, Vec::new()));
                }
            }
            entries += writes.len() as u64;
            self.engine.apply(writes)?;
            if rows.len() < MIGRATION_BATCH {
                return Ok(entries);
            }
        }
    }
}

fn counter_name(c: Counter) -> &'static str {
    match c {
        Counter::Conversation => "conversation",
        Counter::Temporary => "temporary",
        Counter::UserEventFloor => "user_event_floor",
    }
}

/// The key and value an op puts, or the key it deletes.
fn write_of(op: &Op) -> Write {
    match op {
        Op::PutConversation { conv, record } => {
            Write::Put(keys::conversation(*conv), record.encode_to_vec())
        }
        Op::PutMember { conv, user, record } => {
            Write::Put(keys::member(*conv, user), record.encode_to_vec())
        }
        Op::DeleteMember { conv, user } => Write::Delete(keys::member(*conv, user)),
        Op::PutUserConversation { user, conv, record } => {
            Write::Put(keys::user_conversation(user, *conv), record.encode_to_vec())
        }
        Op::DeleteUserConversation { user, conv } => {
            Write::Delete(keys::user_conversation(user, *conv))
        }
        Op::PutMessage { conv, seq, message } => {
            Write::Put(keys::message(*conv, *seq), message.to_vec())
        }
        Op::PutReadSeq { user, conv, seq } => {
            Write::Put(keys::read_seq(user, *conv), seq.to_be_bytes().to_vec())
        }
        Op::DeleteReadSeq { user, conv } => Write::Delete(keys::read_seq(user, *conv)),
        Op::PutDedup {
            conv,
            sender,
            client_id,
            seq,
        } => Write::Put(
            keys::dedup(*conv, sender, client_id),
            seq.to_be_bytes().to_vec(),
        ),
        Op::PutDirect { a, b, conv } => Write::Put(keys::direct(a, b), conv.to_be_bytes().to_vec()),
        Op::PutUserEvent { user, seq, event } => {
            Write::Put(keys::user_event(user, *seq), event.encode_to_vec())
        }
        Op::DeleteUserEvent { user, seq } | Op::ExpireUserEvent { user, seq, .. } => {
            Write::Delete(keys::user_event(user, *seq))
        }
        Op::SetCounter { counter, value } => Write::Put(
            keys::counter(counter_name(*counter)),
            value.to_be_bytes().to_vec(),
        ),
        Op::PutExpiry { at, conv } => Write::Put(keys::expiry(*at, *conv), Vec::new()),
        Op::PutMuteDeadline { at, conv, user } => {
            Write::Put(keys::mute_deadline(*at, *conv, user), Vec::new())
        }
        Op::DeleteMuteDeadline { at, conv, user } => {
            Write::Delete(keys::mute_deadline(*at, *conv, user))
        }
        Op::PutUniqueTemporary { members, conv } => {
            Write::Put(keys::unique_temporary(members), conv.to_be_bytes().to_vec())
        }
        Op::DeleteDirect { a, b } => Write::Delete(keys::direct(a, b)),
        Op::DeleteExpiry { at, conv } => Write::Delete(keys::expiry(*at, *conv)),
        Op::DeleteUniqueTemporary { members } => Write::Delete(keys::unique_temporary(members)),
        Op::PutTombstone { user, conv, at } => Write::Put(
            keys::tombstone(user, *conv),
            (*at).max(0).to_be_bytes().to_vec(),
        ),
        Op::DeleteTombstone { user, conv } | Op::ExpireTombstone { user, conv, .. } => {
            Write::Delete(keys::tombstone(user, *conv))
        }
        Op::PutHidden { user, conv, seq } => {
            Write::Put(keys::hidden(user, *conv, *seq), Vec::new())
        }
        Op::PutReceiptWanted { conv, seq, sender } => Write::Put(
            keys::receipt_wanted(*conv, *seq),
            sender.as_bytes().to_vec(),
        ),
        Op::PutPatch { conv, at, seq } => Write::Put(keys::patch(*conv, *at, *seq), Vec::new()),
        Op::DeletePatch { conv, at, seq } => Write::Delete(keys::patch(*conv, *at, *seq)),
        Op::PutConversationAlias { alias, conv } => {
            Write::Put(keys::conversation_alias(alias), conv.to_be_bytes().to_vec())
        }
        Op::PutMessageAlias { conv, alias, seq } => Write::Put(
            keys::message_alias(*conv, alias),
            seq.to_be_bytes().to_vec(),
        ),
        Op::PutOutbox { seq, record } => Write::Put(keys::outbox(*seq), record.to_vec()),
        Op::DeleteOutbox { seq } => Write::Delete(keys::outbox(*seq)),
        Op::PutWebhookCursor { endpoint, seq } => {
            Write::Put(keys::webhook_cursor(endpoint), seq.to_be_bytes().to_vec())
        }
        Op::PutDeadLetter {
            endpoint,
            seq,
            record,
        } => Write::Put(keys::dead_letter(endpoint, *seq), record.to_vec()),
        Op::DeleteDeadLetter { endpoint, seq } => Write::Delete(keys::dead_letter(endpoint, *seq)),
        Op::PurgeConversation { .. }
        | Op::PurgeMessages { .. }
        | Op::PurgeConversationPart { .. } => {
            unreachable!("purges are expanded by commit")
        }
        Op::PutConversationEvent { conv, seq, event } => {
            Write::Put(keys::conversation_event(*conv, *seq), event.encode_to_vec())
        }
        Op::DeleteConversationEvent { conv, seq } => {
            Write::Delete(keys::conversation_event(*conv, *seq))
        }
        Op::PutUserBlock { user, blocked, at } => {
            Write::Put(keys::user_block(user, blocked), at.to_be_bytes().to_vec())
        }
        Op::DeleteUserBlock { user, blocked } => Write::Delete(keys::user_block(user, blocked)),
        Op::PutProfile { user, profile } => {
            Write::Put(keys::profile(user), profile.encode_to_vec())
        }
        Op::DeleteProfile { user } => Write::Delete(keys::profile(user)),
        Op::DeleteHidden { user, conv, seq } => Write::Delete(keys::hidden(user, *conv, *seq)),
        Op::PutMessageVersion {
            conv,
            seq,
            version,
            message,
        } => Write::Put(
            keys::message_version(*conv, *seq, *version),
            message.to_vec(),
        ),
        Op::PutSilent { conv, seq } => Write::Put(keys::silent(*conv, *seq), Vec::new()),
        Op::PutUserAccess { user, access } => {
            Write::Put(keys::user_access(user), access.encode_to_vec())
        }
        Op::DeleteUserAccess { user } => Write::Delete(keys::user_access(user)),
        Op::PutRevokedToken { .. }
        | Op::DeleteRevokedToken { .. }
        | Op::PutIdempotentCreate { .. }
        | Op::DeleteIdempotentCreate { .. } => {
            unreachable!("entries with a time index are expanded by commit")
        }
    }
}

/// The conversation whose keys an op writes (tracked so a purge in the same commit sees them).
fn conv_of(op: &Op) -> Option<u64> {
    match op {
        Op::PutConversation { conv, .. }
        | Op::PutMember { conv, .. }
        | Op::PutUserConversation { conv, .. }
        | Op::PutMessage { conv, .. }
        | Op::PutReadSeq { conv, .. }
        | Op::PutDedup { conv, .. }
        | Op::PutExpiry { conv, .. }
        | Op::PutHidden { conv, .. }
        | Op::PutReceiptWanted { conv, .. }
        | Op::PutPatch { conv, .. }
        | Op::PutConversationAlias { conv, .. }
        | Op::PutMessageAlias { conv, .. }
        | Op::PutMessageVersion { conv, .. }
        | Op::PutSilent { conv, .. }
        | Op::PutConversationEvent { conv, .. }
        | Op::PutUniqueTemporary { conv, .. } => Some(*conv),
        _ => None,
    }
}

impl<E: OrderedKv> Store for KvStore<E> {
    fn commit(&self, ops: &[Op]) -> Result<(), StoreError> {
        let purging = ops
            .iter()
            .any(|o| matches!(o, Op::PurgeConversation { .. }));
        let mut written: HashMap<u64, Vec<Vec<u8>>> = HashMap::new();
        let expiring = ops
            .iter()
            .any(|o| matches!(o, Op::ExpireTombstone { .. } | Op::ExpireUserEvent { .. }));
        // User events this commit puts before an expiry reads them.
        let mut events_put: std::collections::HashSet<Vec<u8>> = Default::default();
        // Tombstones this commit writes before an expiry reads them: key → time (None: deleted).
        let mut tombs: HashMap<Vec<u8>, Option<i64>> = HashMap::new();
        // The highest user event seq this commit expires.
        let mut floor = None;
        let mut writes = Vec::with_capacity(ops.len());
        for op in ops {
            if let Op::ExpireTombstone { user, conv, before } = op {
                let key = keys::tombstone(user, *conv);
                let at = match tombs.get(&key) {
                    Some(at) => *at,
                    None => self
                        .engine
                        .get(&key)?
                        .and_then(|v| be_u64(&v, 0))
                        .map(|at| at as i64),
                };
                if at.is_some_and(|at| at < *before) {
                    tombs.insert(key.clone(), None);
                    writes.push(Write::Delete(key));
                }
                continue;
            }
            if let Op::ExpireUserEvent { user, seq, before } = op {
                let key = keys::user_event(user, *seq);
                if events_put.contains(&key) {
                    continue;
                }
                let due = match self.engine.get(&key)? {
                    Some(v) => decode::<ConversationEvent>("user event", &v)?.server_time < *before,
                    None => false,
                };
                if due {
                    writes.push(Write::Delete(key));
                    floor = floor.max(Some(*seq));
                }
                continue;
            }
            if expiring {
                match op {
                    Op::PutUserEvent { user, seq, .. } => {
                        events_put.insert(keys::user_event(user, *seq));
                    }
                    Op::PutTombstone { user, conv, at } => {
                        tombs.insert(keys::tombstone(user, *conv), Some((*at).max(0)));
                    }
                    Op::DeleteTombstone { user, conv } => {
                        tombs.insert(keys::tombstone(user, *conv), None);
                    }
                    _ => {}
                }
            }
            if let Op::PurgeConversation { conv } = op {
                let stored = self.keys_of_conversation(*conv)?;
                let fresh = written.remove(conv).unwrap_or_default();
                writes.extend(stored.into_iter().chain(fresh).map(Write::Delete));
                continue;
            }
            if let Op::PurgeMessages {
                conv,
                from,
                through,
            } = op
            {
                writes.extend(
                    self.keys_of_messages(*conv, *from, *through)?
                        .into_iter()
                        .map(Write::Delete),
                );
                continue;
            }
            if let Op::PurgeConversationPart { conv, limit } = op {
                writes.extend(
                    self.keys_of_part(*conv, *limit)?
                        .into_iter()
                        .map(Write::Delete),
                );
                continue;
            }
            // A revoked token is two entries: by id, and in time order.
            match op {
                Op::PutRevokedToken { jti, until } => {
                    writes.push(Write::Put(
                        keys::revoked_token(jti),
                        until.to_be_bytes().to_vec(),
                    ));
                    writes.push(Write::Put(
                        keys::revoked_token_expiry(*until, jti),
                        Vec::new(),
                    ));
                    continue;
                }
                Op::DeleteRevokedToken { jti, until } => {
                    writes.push(Write::Delete(keys::revoked_token(jti)));
                    writes.push(Write::Delete(keys::revoked_token_expiry(*until, jti)));
                    continue;
                }
                Op::PutIdempotentCreate { key, record } => {
                    writes.push(Write::Put(
                        keys::idempotent_create(key),
                        record.encode_to_vec(),
                    ));
                    writes.push(Write::Put(
                        keys::idempotent_create_age(record.at, key),
                        Vec::new(),
                    ));
                    continue;
                }
                Op::DeleteIdempotentCreate { key, at } => {
                    writes.push(Write::Delete(keys::idempotent_create(key)));
                    writes.push(Write::Delete(keys::idempotent_create_age(*at, key)));
                    continue;
                }
                // A conversation record keeps its entry in the by-kind index while it is live.
                Op::PutConversation { conv, record } => {
                    let index = kind_key(record, *conv);
                    if purging {
                        written.entry(*conv).or_default().push(index.clone());
                    }
                    writes.push(if record.deleted_at == 0 {
                        Write::Put(index, Vec::new())
                    } else {
                        Write::Delete(index)
                    });
                }
                _ => {}
            }
            let w = write_of(op);
            if purging && let (Some(conv), Write::Put(k, _)) = (conv_of(op), &w) {
                written.entry(conv).or_default().push(k.clone());
            }
            writes.push(w);
        }
        if let Some(seq) = floor
            && seq > self.counter(Counter::UserEventFloor)?
        {
            writes.push(Write::Put(
                keys::counter(counter_name(Counter::UserEventFloor)),
                seq.to_be_bytes().to_vec(),
            ));
        }
        self.engine.apply(writes)?;
        self.lists.committed(ops);
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.engine.flush()
    }

    fn conversation(&self, conv: u64) -> Result<Option<ConversationRecord>, StoreError> {
        self.record("conversation", &keys::conversation(conv))
    }

    fn member(&self, conv: u64, user: &str) -> Result<Option<MemberRecord>, StoreError> {
        self.record("member", &keys::member(conv, user))
    }

    fn members(&self, conv: u64) -> Result<Vec<(UserId, MemberRecord)>, StoreError> {
        let prefix = keys::members_of(conv);
        let mut out = Vec::new();
        for (k, v) in self.scan(&prefix, false, usize::MAX)? {
            let (user, _) = user_at(&k, prefix.len()).ok_or_else(|| StoreError::Corrupt {
                what: "member key",
                detail: format!("{k:?}"),
            })?;
            out.push((UserId::from(user), decode("member", &v)?));
        }
        Ok(out)
    }

    fn user_conversations(
        &self,
        user: &str,
    ) -> Result<Vec<(u64, UserConversationRecord)>, StoreError> {
        let prefix = keys::user_conversations_of(user);
        let mut out = Vec::new();
        for (k, v) in self.scan(&prefix, false, usize::MAX)? {
            let conv = be_u64(&k, prefix.len()).ok_or_else(|| StoreError::Corrupt {
                what: "user conversation key",
                detail: format!("{k:?}"),
            })?;
            out.push((conv, decode("user conversation", &v)?));
        }
        Ok(out)
    }

    fn user_conversation(
        &self,
        user: &str,
        conv: u64,
    ) -> Result<Option<UserConversationRecord>, StoreError> {
        self.record("user conversation", &keys::user_conversation(user, conv))
    }

    fn list_rows(&self, user: &str) -> Result<std::sync::Arc<Vec<ListRow>>, StoreError> {
        self.lists.get(user, || {
            Ok(self
                .user_conversations(user)?
                .iter()
                .map(|(conv, r)| ListRow::of(*conv, r))
                .collect())
        })
    }

    fn message(&self, conv: u64, seq: u64) -> Result<Option<Message>, StoreError> {
        self.record("message", &keys::message(conv, seq))
    }

    fn last_message(&self, conv: u64) -> Result<Option<Message>, StoreError> {
        match self
            .scan(&keys::messages_of(conv), true, 1)?
            .into_iter()
            .next()
        {
            Some((_, v)) => decode("message", &v).map(Some),
            None => Ok(None),
        }
    }

    fn messages(
        &self,
        conv: u64,
        lo: u64,
        hi: u64,
        dir: Direction,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        if lo >= hi || limit == 0 {
            return Ok(Vec::new());
        }
        let rows = self.engine.range(
            &keys::message(conv, lo),
            Some(&keys::message(conv, hi)),
            dir == Direction::Descending,
            limit,
        )?;
        rows.into_iter()
            .map(|(_, v)| decode("message", &v))
            .collect()
    }

    fn read_seq(&self, user: &str, conv: u64) -> Result<u64, StoreError> {
        Ok(self.number(&keys::read_seq(user, conv))?.unwrap_or(0))
    }

    fn dedup(&self, conv: u64, sender: &str, client_id: &str) -> Result<Option<u64>, StoreError> {
        self.number(&keys::dedup(conv, sender, client_id))
    }

    fn direct(&self, a: &str, b: &str) -> Result<Option<u64>, StoreError> {
        self.number(&keys::direct(a, b))
    }

    fn user_events_after(
        &self,
        user: &str,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<ConversationEvent>, bool), StoreError> {
        let lo = keys::user_event(user, after.saturating_add(1));
        let hi = prefix_end(&keys::user_events_of(user));
        let rows = self
            .engine
            .range(&lo, hi.as_deref(), true, limit.saturating_add(1))?;
        let truncated = rows.len() > limit;
        let mut out = rows
            .into_iter()
            .take(limit)
            .map(|(_, v)| decode("user event", &v))
            .collect::<Result<Vec<ConversationEvent>, _>>()?;
        out.reverse();
        Ok((out, truncated))
    }

    fn last_user_event_seq(&self, user: &str) -> Result<u64, StoreError> {
        let prefix = keys::user_events_of(user);
        match self
            .scan(&prefix, true, 1)?
            .first()
            .and_then(|(k, _)| be_u64(k, prefix.len()))
        {
            Some(seq) => Ok(seq),
            None => self.counter(Counter::UserEventFloor),
        }
    }

    fn user_events_page(
        &self,
        after: Option<(&str, u64)>,
        limit: usize,
    ) -> Result<Vec<(UserId, u64, i64)>, StoreError> {
        self.user_keyed_page(
            (keys::USER_EVENT, "user event"),
            keys::user_event,
            after,
            limit,
            |v| {
                decode::<ConversationEvent>("user event", v)
                    .ok()
                    .map(|e| e.server_time)
            },
        )
    }

    fn conversations_of_kind(
        &self,
        kind: i32,
        below: u64,
        limit: usize,
    ) -> Result<Vec<u64>, StoreError> {
        let Ok(kind) = u8::try_from(kind) else {
            return Ok(Vec::new());
        };
        let prefix = keys::conversations_of_kind(kind);
        let hi = keys::conversation_by_kind(kind, below);
        self.engine
            .range(&prefix, Some(&hi), true, limit)?
            .iter()
            .map(|(k, _)| {
                be_u64(k, prefix.len()).ok_or_else(|| StoreError::Corrupt {
                    what: "conversation kind key",
                    detail: format!("{k:?}"),
                })
            })
            .collect()
    }

    fn conversation_events_after(
        &self,
        conv: u64,
        after: i64,
        limit: usize,
    ) -> Result<Vec<ConversationEvent>, StoreError> {
        let prefix = keys::conversation_events_of(conv);
        // Most logs have nothing new: one entry read says so.
        let mut out = Vec::new();
        for chunk in [1, limit] {
            out.clear();
            let rows = self.scan(&prefix, true, chunk.min(limit))?;
            let all = rows.len() < chunk.min(limit);
            for (_, v) in &rows {
                let e: ConversationEvent = decode("conversation event", v)?;
                if e.server_time <= after {
                    out.reverse();
                    return Ok(out);
                }
                out.push(e);
            }
            if all || chunk >= limit {
                break;
            }
        }
        out.reverse();
        Ok(out)
    }

    fn last_conversation_event_seq(&self, conv: u64) -> Result<u64, StoreError> {
        let prefix = keys::conversation_events_of(conv);
        Ok(self
            .scan(&prefix, true, 1)?
            .first()
            .and_then(|(k, _)| be_u64(k, prefix.len()))
            .unwrap_or(0))
    }

    fn outbox_after(&self, after: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let lo = keys::outbox(after.saturating_add(1));
        let hi = prefix_end(&[keys::OUTBOX]);
        Ok(self
            .engine
            .range(&lo, hi.as_deref(), false, limit)?
            .into_iter()
            .filter_map(|(k, v)| Some((be_u64(&k, 1)?, v)))
            .collect())
    }

    fn last_outbox_seq(&self) -> Result<u64, StoreError> {
        Ok(self
            .scan(&[keys::OUTBOX], true, 1)?
            .first()
            .and_then(|(k, _)| be_u64(k, 1))
            .unwrap_or(0))
    }

    fn webhook_cursor(&self, endpoint: &str) -> Result<u64, StoreError> {
        Ok(self.number(&keys::webhook_cursor(endpoint))?.unwrap_or(0))
    }

    fn dead_letters(
        &self,
        endpoint: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let prefix = keys::dead_letters_of(endpoint);
        let lo = keys::dead_letter(endpoint, after.saturating_add(1));
        let hi = prefix_end(&prefix);
        Ok(self
            .engine
            .range(&lo, hi.as_deref(), false, limit)?
            .into_iter()
            .filter_map(|(k, v)| Some((be_u64(&k, prefix.len())?, v)))
            .collect())
    }

    fn highest_conversations(&self) -> Result<(u64, u64), StoreError> {
        let bit = crate::protocol::TEMPORARY_BIT;
        let last = |lo: Vec<u8>, hi: Option<Vec<u8>>| -> Result<u64, StoreError> {
            Ok(self
                .engine
                .range(&lo, hi.as_deref(), true, 1)?
                .first()
                .and_then(|(k, _)| keys::be_u64(k, 1))
                .unwrap_or(0))
        };
        let normal = last(keys::conversation(0), Some(keys::conversation(bit)))?;
        let temporary = last(keys::conversation(bit), prefix_end(&[keys::CONVERSATION]))?;
        Ok((normal, temporary & !bit))
    }

    fn counter(&self, counter: Counter) -> Result<u64, StoreError> {
        Ok(self
            .number(&keys::counter(counter_name(counter)))?
            .unwrap_or(0))
    }

    fn tombstones(&self, user: &str) -> Result<Vec<(u64, i64)>, StoreError> {
        let prefix = keys::tombstones_of(user);
        self.scan(&prefix, false, usize::MAX)?
            .into_iter()
            .map(|(k, v)| match (be_u64(&k, prefix.len()), be_u64(&v, 0)) {
                (Some(conv), Some(at)) => Ok((conv, at as i64)),
                _ => Err(StoreError::Corrupt {
                    what: "tombstone",
                    detail: format!("{k:?}"),
                }),
            })
            .collect()
    }

    fn tombstones_after(
        &self,
        after: Option<(&str, u64)>,
        limit: usize,
    ) -> Result<Vec<(UserId, u64, i64)>, StoreError> {
        self.user_keyed_page(
            (keys::TOMBSTONE, "tombstone"),
            keys::tombstone,
            after,
            limit,
            |v| be_u64(v, 0).map(|t| t as i64),
        )
    }

    fn hidden_seqs(&self, user: &str, conv: u64, lo: u64, hi: u64) -> Result<Vec<u64>, StoreError> {
        if lo >= hi {
            return Ok(Vec::new());
        }
        let at = keys::hidden_of(user, conv).len();
        let rows = self.engine.range(
            &keys::hidden(user, conv, lo),
            Some(&keys::hidden(user, conv, hi)),
            false,
            usize::MAX,
        )?;
        Ok(rows.iter().filter_map(|(k, _)| be_u64(k, at)).collect())
    }

    fn receipts_wanted(
        &self,
        conv: u64,
        lo: u64,
        hi: u64,
    ) -> Result<Vec<(u64, UserId)>, StoreError> {
        if lo >= hi {
            return Ok(Vec::new());
        }
        let at = keys::receipts_wanted_of(conv).len();
        let rows = self.engine.range(
            &keys::receipt_wanted(conv, lo),
            Some(&keys::receipt_wanted(conv, hi)),
            false,
            usize::MAX,
        )?;
        rows.into_iter()
            .map(|(k, v)| match (be_u64(&k, at), String::from_utf8(v)) {
                (Some(seq), Ok(sender)) => Ok((seq, UserId::from(sender))),
                _ => Err(StoreError::Corrupt {
                    what: "receipt entry",
                    detail: format!("{k:?}"),
                }),
            })
            .collect()
    }

    fn last_receipt_wanted(&self, conv: u64) -> Result<u64, StoreError> {
        let prefix = keys::receipts_wanted_of(conv);
        Ok(self
            .scan(&prefix, true, 1)?
            .first()
            .and_then(|(k, _)| be_u64(k, prefix.len()))
            .unwrap_or(0))
    }

    fn patches_after(
        &self,
        conv: u64,
        after: i64,
        limit: usize,
    ) -> Result<Vec<(i64, u64)>, StoreError> {
        let prefix = keys::patches_of(conv);
        let lo = keys::patch(conv, after.saturating_add(1), 0);
        let rows = self
            .engine
            .range(&lo, prefix_end(&prefix).as_deref(), false, limit)?;
        rows.iter()
            .map(
                |(k, _)| match (be_u64(k, prefix.len()), be_u64(k, prefix.len() + 8)) {
                    (Some(at), Some(seq)) => Ok((at as i64, seq)),
                    _ => Err(StoreError::Corrupt {
                        what: "patch key",
                        detail: format!("{k:?}"),
                    }),
                },
            )
            .collect()
    }

    fn conversation_part_entries(&self, conv: u64, limit: usize) -> Result<usize, StoreError> {
        Ok(self.keys_of_part(conv, limit)?.len())
    }

    fn next_expiries(&self, limit: usize) -> Result<Vec<(i64, u64)>, StoreError> {
        let mut out = Vec::new();
        for (k, _) in self.scan(&keys::expiries(), false, limit)? {
            match (be_u64(&k, 1), be_u64(&k, 9)) {
                (Some(at), Some(conv)) => out.push((at as i64, conv)),
                _ => {
                    return Err(StoreError::Corrupt {
                        what: "expiry key",
                        detail: format!("{k:?}"),
                    });
                }
            }
        }
        Ok(out)
    }

    fn next_mute_deadlines(&self, limit: usize) -> Result<Vec<(i64, u64, UserId)>, StoreError> {
        let mut out = Vec::new();
        for (k, _) in self.scan(&keys::mute_deadlines(), false, limit)? {
            match (be_u64(&k, 1), be_u64(&k, 9), keys::user_at(&k, 17)) {
                (Some(at), Some(conv), Some((user, _))) => {
                    out.push((at as i64, conv, UserId::from(user)))
                }
                _ => {
                    return Err(StoreError::Corrupt {
                        what: "mute deadline key",
                        detail: format!("{k:?}"),
                    });
                }
            }
        }
        Ok(out)
    }

    fn unique_temporary(&self, members: &[UserId]) -> Result<Option<u64>, StoreError> {
        self.number(&keys::unique_temporary(members))
    }

    fn conversation_alias(&self, alias: &str) -> Result<Option<u64>, StoreError> {
        self.number(&keys::conversation_alias(alias))
    }

    fn message_alias(&self, conv: u64, alias: &str) -> Result<Option<u64>, StoreError> {
        self.number(&keys::message_alias(conv, alias))
    }

    fn user_blocks(
        &self,
        user: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(UserId, i64)>, StoreError> {
        let prefix = keys::user_blocks_of(user);
        let mut lo = if after.is_empty() {
            prefix.clone()
        } else {
            keys::user_block(user, after)
        };
        if !after.is_empty() {
            lo.push(0);
        }
        let rows = self
            .engine
            .range(&lo, prefix_end(&prefix).as_deref(), false, limit)?;
        rows.into_iter()
            .map(
                |(k, v)| match (keys::user_at(&k, prefix.len()), be_u64(&v, 0)) {
                    (Some((blocked, _)), Some(at)) => Ok((UserId::from(blocked), at as i64)),
                    _ => Err(StoreError::Corrupt {
                        what: "user block",
                        detail: format!("{k:?}"),
                    }),
                },
            )
            .collect()
    }

    fn user_block(&self, user: &str, other: &str) -> Result<Option<i64>, StoreError> {
        Ok(self
            .number(&keys::user_block(user, other))?
            .map(|at| at as i64))
    }

    fn profile(&self, user: &str) -> Result<Option<Profile>, StoreError> {
        self.record("profile", &keys::profile(user))
    }

    fn message_versions(&self, conv: u64, seq: u64) -> Result<Vec<Message>, StoreError> {
        self.scan(&keys::versions_of_message(conv, seq), false, usize::MAX)?
            .into_iter()
            .map(|(_, v)| decode("message version", &v))
            .collect()
    }

    fn silent_seqs(&self, conv: u64, lo: u64, hi: u64) -> Result<Vec<u64>, StoreError> {
        if lo >= hi {
            return Ok(Vec::new());
        }
        let at = keys::silent_of(conv).len();
        let rows = self.engine.range(
            &keys::silent(conv, lo),
            Some(&keys::silent(conv, hi)),
            false,
            usize::MAX,
        )?;
        Ok(rows.iter().filter_map(|(k, _)| be_u64(k, at)).collect())
    }

    fn user_access(&self, user: &str) -> Result<Option<UserAccess>, StoreError> {
        self.record("user access", &keys::user_access(user))
    }

    fn revoked_token(&self, jti: &str) -> Result<Option<i64>, StoreError> {
        Ok(self.number(&keys::revoked_token(jti))?.map(|t| t as i64))
    }

    fn revoked_tokens(&self, limit: usize) -> Result<Vec<(i64, String)>, StoreError> {
        let rows = self.scan(&[keys::REVOKED_TOKEN_EXPIRY], false, limit)?;
        rows.into_iter()
            .map(|(k, _)| match (be_u64(&k, 1), k.get(9..)) {
                (Some(until), Some(jti)) => Ok((until as i64, String::from_utf8_lossy(jti).into())),
                _ => Err(StoreError::Corrupt {
                    what: "revoked token key",
                    detail: format!("{k:?}"),
                }),
            })
            .collect()
    }

    fn idempotent_create(&self, key: &str) -> Result<Option<IdempotentCreate>, StoreError> {
        self.record("idempotent create", &keys::idempotent_create(key))
    }

    fn idempotent_creates(&self, limit: usize) -> Result<Vec<(i64, String)>, StoreError> {
        let rows = self.scan(&[keys::IDEMPOTENT_CREATE_AGE], false, limit)?;
        rows.into_iter()
            .map(|(k, _)| match (be_u64(&k, 1), k.get(9..)) {
                (Some(at), Some(key)) => Ok((at as i64, String::from_utf8_lossy(key).into())),
                _ => Err(StoreError::Corrupt {
                    what: "idempotency key",
                    detail: format!("{k:?}"),
                }),
            })
            .collect()
    }

    fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.engine.size_on_disk()
    }

    fn dump(&self, f: &mut super::EntrySink<'_>) -> Result<(), StoreError> {
        self.engine.for_each(f)
    }

    fn is_empty(&self) -> Result<bool, StoreError> {
        let version = keys::format_version();
        Ok(self
            .engine
            .range(&[], None, false, 2)?
            .iter()
            .all(|(k, _)| *k == version))
    }

    fn mark_format(&self, version: Option<u64>) -> Result<(), StoreError> {
        let key = keys::format_version();
        self.engine.apply(vec![match version {
            Some(v) => Write::Put(key, v.to_be_bytes().to_vec()),
            None => Write::Delete(key),
        }])
    }

    fn load(&self, rows: Rows) -> Result<(), StoreError> {
        let r = self
            .engine
            .apply(rows.into_iter().map(|(k, v)| Write::Put(k, v)).collect());
        self.lists.clear();
        r
    }

    fn importing(&self) -> Result<bool, StoreError> {
        Ok(self.engine.get(&keys::importing())?.is_some())
    }

    fn mark_importing(&self, on: bool) -> Result<(), StoreError> {
        let key = keys::importing();
        self.engine.apply(vec![if on {
            Write::Put(key, Vec::new())
        } else {
            Write::Delete(key)
        }])
    }

    fn clear(&self) -> Result<(), StoreError> {
        const BATCH: usize = 10_000;
        let marker = keys::importing();
        let mut from = Vec::new();
        loop {
            let rows = self.engine.range(&from, None, false, BATCH)?;
            let Some((last, _)) = rows.last() else {
                break;
            };
            from = last.clone();
            from.push(0);
            let full = rows.len() == BATCH;
            let writes: Vec<Write> = rows
                .into_iter()
                .filter(|(k, _)| *k != marker)
                .map(|(k, _)| Write::Delete(k))
                .collect();
            self.engine.apply(writes)?;
            if !full {
                break;
            }
        }
        self.lists.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{KvStore, OrderedKv, Write, keys, prefix_end};
    use crate::fuzzing::MemKv;
    use crate::protocol::pb::MemberRecord;
    use crate::store::Store;
    use prost::Message as _;

    #[test]
    fn a_format_5_store_gets_its_timed_mutes_indexed() {
        let engine = MemKv::default();
        let member = |muted_until| {
            MemberRecord {
                muted_until,
                ..Default::default()
            }
            .encode_to_vec()
        };
        engine
            .apply(vec![
                Write::Put(keys::format_version(), 5u64.to_be_bytes().to_vec()),
                Write::Put(keys::member(7, "timed"), member(1_000)),
                Write::Put(keys::member(7, "forever"), member(i64::MAX)),
                Write::Put(keys::member(7, "free"), member(0)),
                Write::Put(keys::member(9, "later"), member(2_000)),
            ])
            .unwrap();
        let store = KvStore::new(engine);
        assert_eq!(store.upgrade().unwrap(), 5);
        let due: Vec<_> = store
            .next_mute_deadlines(10)
            .unwrap()
            .into_iter()
            .map(|(at, conv, user)| (at, conv, user.to_string()))
            .collect();
        assert_eq!(
            due,
            vec![
                (1_000, 7, "timed".to_owned()),
                (2_000, 9, "later".to_owned())
            ]
        );
    }

    #[test]
    fn a_format_6_store_gets_its_conversations_indexed_by_kind() {
        use crate::protocol::pb::{ConversationKind, ConversationRecord};
        let engine = MemKv::default();
        let record = |kind: ConversationKind, deleted_at| {
            ConversationRecord {
                kind: kind as i32,
                deleted_at,
                ..Default::default()
            }
            .encode_to_vec()
        };
        engine
            .apply(vec![
                Write::Put(keys::format_version(), 6u64.to_be_bytes().to_vec()),
                Write::Put(keys::conversation(1), record(ConversationKind::Group, 0)),
                Write::Put(keys::conversation(2), record(ConversationKind::Group, 5)),
                Write::Put(keys::conversation(3), record(ConversationKind::Direct, 0)),
                Write::Put(keys::conversation(4), record(ConversationKind::Group, 0)),
            ])
            .unwrap();
        let store = KvStore::new(engine);
        assert_eq!(store.upgrade().unwrap(), 6);
        let of = |kind: ConversationKind| {
            store
                .conversations_of_kind(kind as i32, u64::MAX, 10)
                .unwrap()
        };
        assert_eq!(of(ConversationKind::Group), vec![4, 1]);
        assert_eq!(of(ConversationKind::Direct), vec![3]);
        assert!(of(ConversationKind::ChatRoom).is_empty());
    }

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
    }
}
