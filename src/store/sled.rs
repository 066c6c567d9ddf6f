//! The sled 0.34 engine: one tree, the key layout of [`keys`], `apply_batch` for atomic commits
//! and `flush` for durability.
//!
//! sled's flush on Linux uses `sync_file_range`, which survives a process crash but does not
//! promise to survive power loss.

use super::keys::{self, be_u64, user_at};
use super::{Counter, Direction, Op, Store, StoreError, UserId, decode};
use crate::protocol::pb::{
    ConversationEvent, ConversationRecord, MemberRecord, Message, UserConversationRecord,
};
use prost::Message as _;
use std::path::Path;

/// A sled database holding one tidings keyspace.
pub struct SledStore {
    db: sled::Db,
    tree: sled::Tree,
}

fn engine(e: sled::Error) -> StoreError {
    StoreError::Engine(e.to_string())
}

impl SledStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .open()
            .map_err(engine)?;
        let tree = db.open_tree("tidings").map_err(engine)?;
        Ok(SledStore { db, tree })
    }

    fn get<M: prost::Message + Default>(
        &self,
        what: &'static str,
        key: &[u8],
    ) -> Result<Option<M>, StoreError> {
        match self.tree.get(key).map_err(engine)? {
            Some(v) => decode(what, &v).map(Some),
            None => Ok(None),
        }
    }

    /// Every stored key that belongs to `conv` (what a purge deletes).
    fn keys_of_conversation(&self, conv: u64) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut out = vec![keys::conversation(conv)];
        if let Some(record) =
            self.get::<ConversationRecord>("conversation", &keys::conversation(conv))?
        {
            if record.expires_at > 0 {
                out.push(keys::expiry(record.expires_at, conv));
            }
            if !record.pair.is_empty() {
                let unique = keys::unique_temporary(&record.pair);
                if self.get_u64(&unique)? == Some(conv) {
                    out.push(unique);
                }
            }
        }
        for (user, _) in self.members(conv)? {
            out.push(keys::member(conv, &user));
            out.push(keys::user_conversation(&user, conv));
            out.push(keys::read_seq(&user, conv));
        }
        for prefix in [keys::messages_of(conv), keys::dedups_of(conv)] {
            for kv in self.tree.scan_prefix(prefix) {
                out.push(kv.map_err(engine)?.0.to_vec());
            }
        }
        Ok(out)
    }

    fn get_u64(&self, key: &[u8]) -> Result<Option<u64>, StoreError> {
        Ok(self
            .tree
            .get(key)
            .map_err(engine)?
            .and_then(|v| be_u64(&v, 0)))
    }
}

fn counter_name(c: Counter) -> &'static str {
    match c {
        Counter::Conversation => "conversation",
        Counter::Temporary => "temporary",
    }
}

/// The conversation an op writes keys of (for purges within the same commit).
fn conv_of(op: &Op) -> Option<u64> {
    match op {
        Op::PutConversation { conv, .. }
        | Op::PutMember { conv, .. }
        | Op::PutUserConversation { conv, .. }
        | Op::PutMessage { conv, .. }
        | Op::PutReadSeq { conv, .. }
        | Op::PutDedup { conv, .. }
        | Op::PutExpiry { conv, .. }
        | Op::PutUniqueTemporary { conv, .. } => Some(*conv),
        _ => None,
    }
}

impl Store for SledStore {
    fn commit(&self, ops: &[Op]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        // Keys written earlier in this commit, per conversation, when a purge may need them.
        let purging = ops
            .iter()
            .any(|o| matches!(o, Op::PurgeConversation { .. }));
        let mut written: std::collections::HashMap<u64, Vec<Vec<u8>>> = Default::default();
        for op in ops {
            let put = |batch: &mut sled::Batch, key: Vec<u8>, value: Vec<u8>| {
                batch.insert(key.clone(), value);
                key
            };
            let key = match op {
                Op::PutConversation { conv, record } => put(
                    &mut batch,
                    keys::conversation(*conv),
                    record.encode_to_vec(),
                ),
                Op::PutMember { conv, user, record } => put(
                    &mut batch,
                    keys::member(*conv, user),
                    record.encode_to_vec(),
                ),
                Op::DeleteMember { conv, user } => {
                    batch.remove(keys::member(*conv, user));
                    continue;
                }
                Op::PutUserConversation { user, conv, record } => put(
                    &mut batch,
                    keys::user_conversation(user, *conv),
                    record.encode_to_vec(),
                ),
                Op::DeleteUserConversation { user, conv } => {
                    batch.remove(keys::user_conversation(user, *conv));
                    continue;
                }
                Op::PutMessage { conv, seq, message } => {
                    put(&mut batch, keys::message(*conv, *seq), message.to_vec())
                }
                Op::PutReadSeq { user, conv, seq } => put(
                    &mut batch,
                    keys::read_seq(user, *conv),
                    seq.to_be_bytes().to_vec(),
                ),
                Op::DeleteReadSeq { user, conv } => {
                    batch.remove(keys::read_seq(user, *conv));
                    continue;
                }
                Op::PutDedup {
                    conv,
                    sender,
                    client_id,
                    seq,
                } => put(
                    &mut batch,
                    keys::dedup(*conv, sender, client_id),
                    seq.to_be_bytes().to_vec(),
                ),
                Op::PutDirect { a, b, conv } => {
                    put(&mut batch, keys::direct(a, b), conv.to_be_bytes().to_vec())
                }
                Op::PutUserEvent { user, seq, event } => put(
                    &mut batch,
                    keys::user_event(user, *seq),
                    event.encode_to_vec(),
                ),
                Op::DeleteUserEvent { user, seq } => {
                    batch.remove(keys::user_event(user, *seq));
                    continue;
                }
                Op::SetCounter { counter, value } => put(
                    &mut batch,
                    keys::counter(counter_name(*counter)),
                    value.to_be_bytes().to_vec(),
                ),
                Op::PutExpiry { at, conv } => put(&mut batch, keys::expiry(*at, *conv), Vec::new()),
                Op::PutUniqueTemporary { members, conv } => put(
                    &mut batch,
                    keys::unique_temporary(members),
                    conv.to_be_bytes().to_vec(),
                ),
                Op::PurgeConversation { conv } => {
                    for key in self.keys_of_conversation(*conv)? {
                        batch.remove(key);
                    }
                    for key in written.remove(conv).unwrap_or_default() {
                        batch.remove(key);
                    }
                    continue;
                }
            };
            if purging {
                if let Some(conv) = conv_of(op) {
                    written.entry(conv).or_default().push(key);
                }
            }
        }
        self.tree.apply_batch(batch).map_err(engine)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(engine)
    }

    fn conversation(&self, conv: u64) -> Result<Option<ConversationRecord>, StoreError> {
        self.get("conversation", &keys::conversation(conv))
    }

    fn members(&self, conv: u64) -> Result<Vec<(UserId, MemberRecord)>, StoreError> {
        let prefix = keys::members_of(conv);
        let mut out = Vec::new();
        for kv in self.tree.scan_prefix(&prefix) {
            let (k, v) = kv.map_err(engine)?;
            let (user, _) = user_at(&k, prefix.len()).ok_or(StoreError::Corrupt {
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
        for kv in self.tree.scan_prefix(&prefix) {
            let (k, v) = kv.map_err(engine)?;
            let conv = be_u64(&k, prefix.len()).ok_or(StoreError::Corrupt {
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
        self.get("user conversation", &keys::user_conversation(user, conv))
    }

    fn message(&self, conv: u64, seq: u64) -> Result<Option<Message>, StoreError> {
        self.get("message", &keys::message(conv, seq))
    }

    fn last_message(&self, conv: u64) -> Result<Option<Message>, StoreError> {
        let lo = keys::message(conv, 0);
        let hi = keys::message(conv, u64::MAX);
        match self.tree.range(lo..=hi).next_back() {
            Some(kv) => decode("message", &kv.map_err(engine)?.1).map(Some),
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
        let range = self
            .tree
            .range(keys::message(conv, lo)..keys::message(conv, hi));
        let mut out = Vec::with_capacity(limit.min(128));
        let mut push = |kv: sled::Result<(sled::IVec, sled::IVec)>| -> Result<bool, StoreError> {
            out.push(decode("message", &kv.map_err(engine)?.1)?);
            Ok(out.len() < limit)
        };
        match dir {
            Direction::Ascending => {
                for kv in range {
                    if !push(kv)? {
                        break;
                    }
                }
            }
            Direction::Descending => {
                for kv in range.rev() {
                    if !push(kv)? {
                        break;
                    }
                }
            }
        }
        Ok(out)
    }

    fn read_seq(&self, user: &str, conv: u64) -> Result<u64, StoreError> {
        Ok(self.get_u64(&keys::read_seq(user, conv))?.unwrap_or(0))
    }

    fn dedup(&self, conv: u64, sender: &str, client_id: &str) -> Result<Option<u64>, StoreError> {
        self.get_u64(&keys::dedup(conv, sender, client_id))
    }

    fn direct(&self, a: &str, b: &str) -> Result<Option<u64>, StoreError> {
        self.get_u64(&keys::direct(a, b))
    }

    fn user_events_after(
        &self,
        user: &str,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<ConversationEvent>, bool), StoreError> {
        let lo = keys::user_event(user, after.saturating_add(1));
        let hi = keys::user_event(user, u64::MAX);
        let mut out = Vec::new();
        let mut truncated = false;
        for kv in self.tree.range(lo..=hi).rev() {
            if out.len() == limit {
                truncated = true;
                break;
            }
            out.push(decode("user event", &kv.map_err(engine)?.1)?);
        }
        out.reverse();
        Ok((out, truncated))
    }

    fn last_user_event_seq(&self, user: &str) -> Result<u64, StoreError> {
        let prefix = keys::user_events_of(user);
        match self.tree.scan_prefix(&prefix).next_back() {
            Some(kv) => Ok(be_u64(&kv.map_err(engine)?.0, prefix.len()).unwrap_or(0)),
            None => Ok(0),
        }
    }

    fn counter(&self, counter: Counter) -> Result<u64, StoreError> {
        Ok(self
            .get_u64(&keys::counter(counter_name(counter)))?
            .unwrap_or(0))
    }

    fn next_expiries(&self, limit: usize) -> Result<Vec<(i64, u64)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.tree.scan_prefix(keys::expiries()).take(limit) {
            let (k, _) = kv.map_err(engine)?;
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

    fn unique_temporary(&self, members: &[UserId]) -> Result<Option<u64>, StoreError> {
        self.get_u64(&keys::unique_temporary(members))
    }

    fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.db.size_on_disk().map_err(engine)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn conformance() {
        super::super::conformance::run(&|dir| {
            Box::new(super::SledStore::open(dir, 8 << 20).expect("open sled"))
        });
    }
}
