//! Each user's conversation list (the server-side session list): paging, single entries,
//! private ext, pins, one-way removal from the list, and deleting a conversation for everyone.
//!
//! An entry is the user's per-user record (`U` user ‖ conv) joined with the conversation's
//! activity, computed when the list is read. Sends therefore write nothing per member: a
//! message to a group of 1,000 costs one stored message, not 1,000 list updates. Removing an
//! entry from the list marks the record hidden at the conversation's current seq; any later
//! message brings it back without a write. Leaving, removal and deletion leave a tombstone
//! (`T` user ‖ conv) for incremental sync.
//!
//! Paging is over a snapshot: the first page of a listing orders every matching entry and,
//! when more pages follow, keeps that order (conversation numbers and sort keys, 24 bytes an
//! entry) for `list_snapshot_ttl_secs`. Later pages read that order, so an entry that moves to
//! the top between pages is neither repeated nor skipped; its contents (unread, last message)
//! are current. A cursor whose snapshot is gone (expired, or the server restarted) continues
//! after its last entry in the current order.

use super::writer::wait;
use super::{Caller, ConvCell, Error, LoggedEvent, Registry};
use crate::protocol::pb::{
    self, ConversationEventKind, ConversationKind, ListEntry, UserConversationRecord,
};
use crate::protocol::{TEMPORARY_BIT, conversation_id};
use crate::store::{Op, UserId};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

/// What a ListConversations asks for.
#[derive(Debug, Clone, Default)]
pub struct ListRequest {
    pub cursor: String,
    pub limit: u32,
    pub updated_after: i64,
    pub updated_before: i64,
    pub pinned_only: bool,
    pub kind: i32,
    pub omit_last_message: bool,
    /// Bytes of entries (as stored, last messages included) the page holds, at most; its
    /// first entry always goes, and its cursor goes on from the entry that did not fit.
    /// 0: no bound.
    pub max_bytes: usize,
}

/// One position of a listing: a conversation and its sort key (activity or pin time; for a
/// tombstone, when it was deleted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Row {
    num: u64,
    sort: i64,
    deleted: bool,
}

impl Row {
    /// Newest first; ties by conversation number, newest first.
    fn key(&self) -> (i64, u64) {
        (self.sort, self.num)
    }
}

struct Snapshot {
    user: UserId,
    created: i64,
    rows: Arc<Vec<Row>>,
    /// `rows[..sorted]` are in list order and before every later row; the rest is sorted
    /// when a page first needs it.
    sorted: usize,
}

/// Orders of listings that have more pages, by snapshot id.
#[derive(Default)]
pub(super) struct Snapshots(Mutex<SnapshotsInner>);

#[derive(Default)]
struct SnapshotsInner {
    next: u64,
    by_id: HashMap<u64, Snapshot>,
    /// Ids in creation order (for expiry).
    order: VecDeque<u64>,
    per_user: HashMap<UserId, VecDeque<u64>>,
}

impl SnapshotsInner {
    fn remove(&mut self, id: u64) {
        if let Some(s) = self.by_id.remove(&id)
            && let Some(q) = self.per_user.get_mut(&s.user)
        {
            q.retain(|i| *i != id);
            if q.is_empty() {
                self.per_user.remove(&s.user);
            }
        }
    }
}

impl Snapshots {
    fn insert(
        &self,
        user: &UserId,
        rows: Arc<Vec<Row>>,
        sorted: usize,
        now: i64,
        ttl_ms: i64,
        per_user: usize,
    ) -> u64 {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(&id) = g.order.front() {
            match g.by_id.get(&id) {
                Some(s) if s.created + ttl_ms > now => break,
                _ => {
                    g.order.pop_front();
                    g.remove(id);
                }
            }
        }
        while g.per_user.get(user).is_some_and(|q| q.len() >= per_user) {
            let oldest = g.per_user[user][0];
            g.remove(oldest);
        }
        g.next += 1;
        let id = g.next;
        g.by_id.insert(
            id,
            Snapshot {
                user: user.clone(),
                created: now,
                rows,
                sorted,
            },
        );
        g.order.push_back(id);
        g.per_user.entry(user.clone()).or_default().push_back(id);
        id
    }

    /// A snapshot's rows, sorted through at least `upto`.
    fn get(
        &self,
        id: u64,
        user: &str,
        now: i64,
        ttl_ms: i64,
        upto: usize,
    ) -> Option<Arc<Vec<Row>>> {
        let (rows, sorted) = {
            let g = self.0.lock().unwrap_or_else(|p| p.into_inner());
            let s = g
                .by_id
                .get(&id)
                .filter(|s| *s.user == *user && s.created + ttl_ms > now)?;
            (s.rows.clone(), s.sorted)
        };
        if upto <= sorted || sorted >= rows.len() {
            return Some(rows);
        }
        // Sorted outside the lock; a page asking meanwhile sorts its own copy.
        let mut all = (*rows).clone();
        sort_rows(&mut all[sorted..]);
        let all = Arc::new(all);
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = g.by_id.get_mut(&id) {
            s.rows = all.clone();
            s.sorted = all.len();
        }
        Some(all)
    }
}

/// Puts rows in list order: newest first, ties by conversation number, newest first.
fn sort_rows(rows: &mut [Row]) {
    rows.sort_unstable_by_key(|r| std::cmp::Reverse(r.key()));
}

/// A list cursor: snapshot id, offset, and the last entry's key for when the snapshot is gone.
struct Cursor {
    snapshot: u64,
    offset: usize,
    last: (i64, u64),
}

impl Cursor {
    fn encode(&self) -> String {
        format!(
            "{:x}.{:x}.{:x}.{:x}",
            self.snapshot, self.offset, self.last.0 as u64, self.last.1
        )
    }
    fn decode(s: &str) -> Option<Cursor> {
        let mut it = s.split('.').map(|p| u64::from_str_radix(p, 16).ok());
        let c = Cursor {
            snapshot: it.next()??,
            offset: usize::try_from(it.next()??).ok()?,
            last: (it.next()?? as i64, it.next()??),
        };
        it.next().is_none().then_some(c)
    }
}

/// What the list needs to know about a conversation.
struct ConvInfo {
    record: pb::ConversationRecord,
    last_seq: u64,
    /// The newest message's time (0: no message), not counting those sent silently.
    last_ts: i64,
    /// The newest seq not sent silently (what brings an entry back to the list).
    loud_seq: u64,
    /// The seqs sent silently, when there are any (they count as no one's unread).
    silent: Option<std::sync::Arc<Vec<u64>>>,
}

/// What ordering a list needs of a conversation (no copy of its record).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Activity {
    kind: i32,
    last_seq: u64,
    last_ts: i64,
    /// The conversation's last change shown in every entry (mute-all, owner).
    changed_at: i64,
}

/// A conversation's [`Activity`], kept in one map for every conversation: read from the store
/// once for a conversation whose cell is not loaded (after a restart, most), published by its
/// cell for a loaded one ([`publish_head`]). A list of 5,000 entries would otherwise read
/// 5,000 records and newest messages from the store, or lock 5,000 cells, on every page.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) struct Head {
    activity: Activity,
    /// When a temporary conversation ends (0: never); the head is not used from then on.
    expires_at: i64,
}

/// Most heads kept (about 100 bytes each); beyond it, lists read the cells and the store.
const HEADS_MAX: usize = 1 << 20;

/// Publishes the head of the loaded cell of conversation `num` (whose lock is held: `st`) when
/// it changed since the last time: a send changes it twice (its time, then its commit), a
/// change of the conversation once. Without a head (a conversation on its way out, or one
/// whose newest loud message needs a store read), its entry goes and lists read the cell.
pub(super) fn publish_head(
    heads: &dashmap::DashMap<u64, Head, super::NumHash>,
    num: u64,
    st: &mut super::ConvState,
) {
    let head = Head::of(st);
    if st.published == Some(head) {
        return;
    }
    st.published = Some(head);
    match head {
        Some(h) => {
            if let Some(mut e) = heads.get_mut(&num) {
                *e = h;
            } else if heads.len() < HEADS_MAX {
                heads.insert(num, h);
            }
        }
        None => {
            heads.remove(&num);
        }
    }
}

impl Head {
    /// The conversation's kind.
    pub(super) fn kind(&self) -> i32 {
        self.activity.kind
    }

    /// The head of a loaded conversation, from its state alone, as the list reads it from the
    /// loaded cell (for a cell about to be unloaded). `None` when it would take a store read
    /// (some messages were sent silently: the newest loud one's time is in the store) or the
    /// conversation is on its way out.
    pub(super) fn of(st: &super::ConvState) -> Option<Head> {
        let r = &st.record;
        if st.deleted || st.expired || r.deleted_at > 0 || r.last_silent_seq > 0 {
            return None;
        }
        Some(Head {
            activity: Activity {
                kind: r.kind,
                last_seq: st.durable_seq,
                last_ts: if st.durable_seq > 0 { st.last_ts } else { 0 },
                changed_at: r.changed_at,
            },
            expires_at: r.expires_at,
        })
    }
}

impl Registry {
    /// A live conversation's kind and newest message (at `now`): its head when its cell is not
    /// loaded, else from the cell without copying its record; a head is read from the store
    /// with [`Registry::conv_info`] the first time.
    fn conv_activity(&self, num: u64, now: i64) -> Result<Option<Activity>, Error> {
        // A head is current: a loaded cell publishes every change of it under its lock, and one
        // read from the store is put only under its entry's lock after checking the cell is
        // not there.
        if let Some(head) = self.heads.get(&num).map(|h| *h) {
            let live = head.expires_at == 0 || head.expires_at > now;
            return Ok(live.then_some(head.activity));
        }
        if let Some(cell) = self.convs.get(&num).map(|c| c.clone()) {
            let mut st = cell.lock();
            let r = &st.record;
            if st.deleted
                || st.expired
                || r.deleted_at > 0
                || (r.expires_at > 0 && r.expires_at <= now)
            {
                return Ok(None);
            }
            let last_ts = if st.durable_seq > 0 { st.last_ts } else { 0 };
            let silent = self.silent_of(&mut st, num)?;
            let (loud, last_ts) = self.loudness(
                num,
                silent.as_deref().map(Vec::as_slice),
                st.durable_seq,
                last_ts,
            )?;
            return Ok(Some(Activity {
                kind: st.record.kind,
                last_seq: loud,
                last_ts,
                changed_at: st.record.changed_at,
            }));
        }
        use std::sync::atomic::Ordering::SeqCst;
        let removals = self.removals.load(SeqCst);
        let Some(info) = self.conv_info(num)? else {
            return Ok(None);
        };
        let activity = Activity {
            kind: info.record.kind,
            last_seq: info.loud_seq,
            last_ts: info.last_ts,
            changed_at: info.record.changed_at,
        };
        self.keep_head(
            num,
            Head {
                activity,
                expires_at: info.record.expires_at,
            },
            removals,
        );
        Ok(Some(activity))
    }

    /// Keeps `head`, read when `removals` was the count of removals, unless there is one
    /// already, its cell was loaded meanwhile (checked under the entry's lock: a loaded cell
    /// publishes its own head, or removes it, at the first release of its lock) or a removal
    /// committed since the read, which may have been of the conversation before it went (a
    /// deletion drops the head too, after its bump; an unload bumps the count as it takes the
    /// cell out).
    pub(super) fn keep_head(&self, num: u64, head: Head, removals: u64) {
        use std::sync::atomic::Ordering::SeqCst;
        if self.heads.len() < HEADS_MAX
            && let dashmap::Entry::Vacant(v) = self.heads.entry(num)
            && !self.convs.contains_key(&num)
            && self.removals.load(SeqCst) == removals
        {
            v.insert(head);
        }
    }

    /// A live conversation's record and newest message, from memory when loaded.
    fn conv_info(&self, num: u64) -> Result<Option<ConvInfo>, Error> {
        let now = self.now();
        let info = if let Some(cell) = self.convs.get(&num).map(|c| c.clone()) {
            let mut st = cell.lock();
            if st.deleted || st.expired {
                return Ok(None);
            }
            let last_ts = if st.durable_seq > 0 { st.last_ts } else { 0 };
            let silent = self.silent_of(&mut st, num)?;
            let (loud_seq, last_ts) = self.loudness(
                num,
                silent.as_deref().map(Vec::as_slice),
                st.durable_seq,
                last_ts,
            )?;
            ConvInfo {
                record: st.record.clone(),
                last_seq: st.durable_seq,
                last_ts,
                loud_seq,
                silent,
            }
        } else {
            let Some(record) = self.store.conversation(num)? else {
                return Ok(None);
            };
            let last = self.store.last_message(num)?;
            // Seqs continue above what history retention deleted.
            let last_seq = last.as_ref().map_or(0, |m| m.seq).max(record.purged_seq);
            let silent = if record.last_silent_seq > 0 {
                Some(std::sync::Arc::new(self.store.silent_seqs(
                    num,
                    1,
                    u64::MAX,
                )?))
            } else {
                None
            };
            let (loud_seq, last_ts) = self.loudness(
                num,
                silent.as_deref().map(Vec::as_slice),
                last_seq,
                last.as_ref().map_or(0, |m| m.server_time),
            )?;
            ConvInfo {
                record,
                last_seq,
                last_ts,
                loud_seq,
                silent,
            }
        };
        let gone = info.record.deleted_at > 0
            || (info.record.expires_at > 0 && info.record.expires_at <= now);
        Ok((!gone).then_some(info))
    }

    /// The user's read position (memory when the conversation is loaded, else the store).
    fn read_position(&self, user: &UserId, num: u64) -> Result<u64, Error> {
        if let Some(cell) = self.convs.get(&num).map(|c| c.clone())
            && let Some(r) = cell.lock().reads.get(user)
        {
            return Ok(*r);
        }
        Ok(self.store.read_seq(user, num)?)
    }

    /// The ids of the conversations `user` is a member of, the newest first, at most `max`
    /// (LeanCloud's `conv/query` scans them; it checks what the asker may see).
    pub fn conversation_ids_of(&self, user: &str, max: usize) -> Result<Vec<String>, Error> {
        self.store
            .user_conversations(user)?
            .into_iter()
            .rev()
            .take(max)
            .map(|(num, _)| self.public_id(num))
            .collect()
    }

    /// The ids of the conversations anyone may find without naming them, newest first, at
    /// most `max` (LeanCloud's `conv/query` over its whole `_Conversation` table): groups
    /// while conversations are open to that (`leancloud_open_conversations`), chat rooms
    /// and system conversations; never direct or temporary ones, whose members alone know of
    /// them. `only`: of that kind alone. While groups are not open, `user`'s own
    /// conversations are walked instead (newest first), with the rooms and system
    /// conversations.
    pub fn findable_conversation_ids(
        &self,
        user: &str,
        only: Option<ConversationKind>,
        max: usize,
    ) -> Result<Vec<String>, Error> {
        let open = self.config.leancloud_open_conversations;
        let kinds: Vec<ConversationKind> = [
            ConversationKind::Group,
            ConversationKind::ChatRoom,
            ConversationKind::System,
        ]
        .into_iter()
        .filter(|k| only.is_none_or(|o| o == *k))
        .filter(|k| open || *k != ConversationKind::Group)
        .collect();
        let mut nums: Vec<u64> = Vec::new();
        for kind in kinds {
            nums.extend(
                self.store
                    .conversations_of_kind(kind as i32, TEMPORARY_BIT, max)?,
            );
        }
        if !open && only.is_none_or(|o| o == ConversationKind::Group) {
            nums.extend(
                self.store
                    .user_conversations(user)?
                    .iter()
                    .rev()
                    .take(max)
                    .map(|(num, _)| *num),
            );
        }
        nums.sort_unstable_by(|a, b| b.cmp(a));
        nums.dedup();
        nums.truncate(max);
        nums.into_iter().map(|num| self.public_id(num)).collect()
    }

    /// When a live conversation's newest message was sent, not counting those sent silently
    /// (ms; 0: none yet).
    pub(super) fn last_message_at(&self, num: u64) -> Result<i64, Error> {
        Ok(self
            .conv_activity(num, self.now())?
            .map_or(0, |a| a.last_ts))
    }

    /// Whether an entry is in the user's list: not removed, or a message came after removal.
    fn listed(rec: &UserConversationRecord, last_seq: u64) -> bool {
        !rec.hidden || last_seq > rec.hidden_seq
    }

    fn activity(rec: &UserConversationRecord, info: &ConvInfo) -> i64 {
        info.last_ts.max(rec.joined_at).max(rec.listed_at)
    }

    /// Every row of `user`'s listing under `req`'s filters, the first `first` in list order
    /// and before all others (the rest in no order, unless an entry cap needs them sorted);
    /// and how many are in order.
    fn list_rows(
        &self,
        user: &UserId,
        req: &ListRequest,
        first: usize,
    ) -> Result<(Vec<Row>, usize), Error> {
        let now = self.now();
        let floor = match self.config.list_max_age_secs {
            0 => i64::MIN,
            s => now - (s as i64).saturating_mul(1000),
        };
        let sync = req.updated_after > 0;
        // Without `updated_after` every time is in, 0 too (history imported without a time).
        let in_window = |t: i64| {
            (!sync || t > req.updated_after) && (req.updated_before <= 0 || t < req.updated_before)
        };
        let kind_ok = |k: i32| req.kind == 0 || req.kind == k;
        let mut rows = Vec::new();
        // Sorted by conversation number (the store's order).
        let records = self.store.list_rows(user)?;
        for rec in records.iter() {
            let num = rec.conv;
            let Some(info) = self.conv_activity(num, now)? else {
                continue;
            };
            if !kind_ok(info.kind) {
                continue;
            }
            if !rec.hidden || info.last_seq > rec.hidden_seq {
                let activity = info.last_ts.max(rec.joined_at).max(rec.listed_at);
                let updated = activity.max(rec.changed_at).max(info.changed_at);
                if activity < floor
                    || !in_window(updated)
                    || (req.pinned_only && rec.pinned_at == 0)
                {
                    continue;
                }
                let sort = if req.pinned_only {
                    rec.pinned_at
                } else {
                    activity
                };
                rows.push(Row {
                    num,
                    sort,
                    deleted: false,
                });
            } else if sync && !req.pinned_only && in_window(rec.hidden_at) {
                rows.push(Row {
                    num,
                    sort: rec.hidden_at,
                    deleted: true,
                });
            }
        }
        if sync && !req.pinned_only {
            for (num, at) in self.store.tombstones(user)? {
                let member = records.binary_search_by_key(&num, |r| r.conv).is_ok();
                if !member && in_window(at) {
                    rows.push(Row {
                        num,
                        sort: at,
                        deleted: true,
                    });
                }
            }
        }
        if self.config.list_max_entries > 0 || first >= rows.len() {
            sort_rows(&mut rows);
        } else {
            // A first page of 20 of 5,000 entries need not order the other 4,980.
            rows.select_nth_unstable_by_key(first, |r| std::cmp::Reverse(r.key()));
            sort_rows(&mut rows[..first]);
            return Ok((rows, first));
        }
        if self.config.list_max_entries > 0 {
            let cap = self.config.list_max_entries;
            let mut live = 0;
            rows.retain(|r| {
                live += usize::from(!r.deleted);
                r.deleted || live <= cap
            });
        }
        let sorted = rows.len();
        Ok((rows, sorted))
    }

    /// A page of the caller's conversation list. Charged to a user afterwards by the bytes of
    /// the last messages it carries (see `limits::RETURNED_BYTES_PER_TOKEN`). An incremental
    /// sync (`updated_after` > 0) from before `list_tombstone_retention_secs` is refused
    /// with [`Error::WindowExpired`]: the tombstones it should return may be gone.
    pub fn list_conversations(
        &self,
        caller: &Caller,
        req: ListRequest,
    ) -> Result<(Vec<ListEntry>, String, bool), Error> {
        let limit = self.page_size(req.limit)?;
        self.check_sync_window(req.updated_after)?;
        let page = self.list_page(&caller.user, req, limit, true)?;
        if !caller.admin {
            let bytes = page
                .0
                .iter()
                .filter_map(|e| e.last_message.as_ref())
                .map(prost::Message::encoded_len)
                .sum();
            self.charge_bytes(&caller.user, bytes);
        }
        Ok(page)
    }

    /// A page of `limit` entries of `user`'s list (the limit checked by the caller); without
    /// `with_cursor`, no cursor (and no snapshot kept for one) when more follow.
    pub(super) fn list_page(
        &self,
        user: &UserId,
        req: ListRequest,
        limit: usize,
        with_cursor: bool,
    ) -> Result<(Vec<ListEntry>, String, bool), Error> {
        let now = self.now();
        let ttl_ms = (self.config.list_snapshot_ttl_secs as i64).saturating_mul(1000);
        let (rows, sorted, offset, snapshot) = if req.cursor.is_empty() {
            let (rows, sorted) = self.list_rows(user, &req, limit)?;
            (Arc::new(rows), sorted, 0, None)
        } else {
            let c = Cursor::decode(&req.cursor)
                .ok_or_else(|| Error::InvalidArgument("malformed list cursor".into()))?;
            let upto = c.offset.saturating_add(limit);
            match self.snapshots.get(c.snapshot, user, now, ttl_ms, upto) {
                Some(rows) => (rows, upto, c.offset, Some(c.snapshot)),
                None => {
                    let (rows, sorted) = self.list_rows(user, &req, usize::MAX)?;
                    let start = rows.partition_point(|r| r.key() >= c.last);
                    (Arc::new(rows), sorted, start, None)
                }
            }
        };
        let offset = offset.min(rows.len());
        let mut end = (offset + limit).min(rows.len());
        let max_bytes = match req.max_bytes {
            0 => usize::MAX,
            n => n,
        };
        let mut entries = Vec::with_capacity(end - offset);
        let mut bytes = 0usize;
        for (i, row) in rows[offset..end].iter().enumerate() {
            let entry = if row.deleted {
                None
            } else {
                self.entry_view(user, row.num, !req.omit_last_message)?
            };
            // An entry deleted since the snapshot is returned as a tombstone, not skipped.
            let at = if row.deleted { row.sort } else { now };
            let entry = match entry {
                Some(e) => e,
                None => Self::tombstone(row.num, self.public_id(row.num)?, at, now),
            };
            let n = prost::Message::encoded_len(&entry);
            if !entries.is_empty() && bytes.saturating_add(n) > max_bytes {
                end = offset + i;
                break;
            }
            bytes = bytes.saturating_add(n);
            entries.push(entry);
        }
        let page = &rows[offset..end];
        let has_more = end < rows.len();
        let next = match (has_more, page.last()) {
            (true, Some(last)) if with_cursor => {
                let snapshot = snapshot.unwrap_or_else(|| {
                    self.snapshots.insert(
                        user,
                        rows.clone(),
                        sorted,
                        now,
                        ttl_ms,
                        self.config.list_snapshots_per_user,
                    )
                });
                Cursor {
                    snapshot,
                    offset: end,
                    last: last.key(),
                }
                .encode()
            }
            _ => String::new(),
        };
        Ok((entries, next, has_more))
    }

    fn tombstone(num: u64, id: String, sort: i64, now: i64) -> ListEntry {
        ListEntry {
            conversation_id: id,
            kind: if num & TEMPORARY_BIT != 0 {
                ConversationKind::Temporary as i32
            } else {
                ConversationKind::Unspecified as i32
            },
            deleted: true,
            updated_at: if sort > 0 { sort } else { now },
            ..Default::default()
        }
    }

    /// The user's entry of one conversation as it now is; `None` when it is not in their list.
    pub(super) fn entry_view(
        &self,
        user: &UserId,
        num: u64,
        with_last: bool,
    ) -> Result<Option<ListEntry>, Error> {
        let cached = self
            .convs
            .get(&num)
            .map(|c| c.clone())
            .and_then(|c| c.lock().entries.get(user).cloned());
        let rec = match cached {
            Some(r) => Some(r),
            None => self.store.user_conversation(user, num)?,
        };
        let (Some(rec), Some(info)) = (rec, self.conv_info(num)?) else {
            return Ok(None);
        };
        if !Self::listed(&rec, info.loud_seq) {
            return Ok(None);
        }
        let read_seq = self.read_position(user, num)?.min(info.last_seq);
        // What history retention deleted is nobody's unread.
        let seen = read_seq.max(rec.cleared_seq).max(info.record.purged_seq);
        let silent = info
            .silent
            .as_deref()
            .map_or(0, |s| super::silent_between(s, seen, info.last_seq));
        let last_message = if with_last {
            self.last_visible(user, num, rec.cleared_seq, info.last_seq)?
        } else {
            None
        };
        let kind = info.record.kind;
        let peer: String = if kind == ConversationKind::Direct as i32 {
            info.record
                .pair
                .iter()
                .find(|u| **u != **user)
                .cloned()
                .unwrap_or_default()
        } else {
            String::new()
        };
        let activity = Self::activity(&rec, &info);
        Ok(Some(ListEntry {
            conversation_id: Self::id_of(num, &info.record),
            kind,
            peer: peer.clone(),
            name: info.record.name.clone(),
            last_message,
            last_activity: activity,
            unread: info.last_seq.saturating_sub(seen).saturating_sub(silent) as u32,
            last_seq: info.last_seq,
            read_seq,
            pinned: rec.pinned_at > 0,
            pinned_at: rec.pinned_at,
            ext: rec.ext,
            expires_at: info.record.expires_at,
            muted: rec.muted,
            updated_at: activity.max(rec.changed_at).max(info.record.changed_at),
            deleted: false,
            role: if info.record.owner == **user {
                pb::MemberRole::Owner as i32
            } else {
                rec.role
            },
            muted_until: if rec.muted_until > self.now() {
                rec.muted_until
            } else {
                0
            },
            mute_all: info.record.mute_all,
            peer_profile: if peer.is_empty() {
                None
            } else {
                Some(self.profile_of(&peer)?)
            },
        }))
    }

    /// The conversation id a list request names: an id, or a NetEase-style key (`p2p|user`,
    /// `team|id`, `super_team|id`).
    fn resolve(&self, caller: &Caller, key: &str) -> Result<String, Error> {
        let Some((scene, target)) = key.split_once('|') else {
            return Ok(key.to_owned());
        };
        match scene {
            "p2p" => {
                self.check_user_id(target)?;
                let pair = if *caller.user <= *target {
                    (caller.user.clone(), UserId::from(target))
                } else {
                    (UserId::from(target), caller.user.clone())
                };
                let num = match self.directs.get(&pair).map(|n| *n) {
                    Some(n) => Some(n),
                    None => self.store.direct(&pair.0, &pair.1)?,
                };
                num.map(conversation_id).ok_or(Error::ConversationNotFound)
            }
            "team" | "super_team" if self.number_of(target)?.is_some() => Ok(target.to_owned()),
            "team" | "super_team" => Err(Error::ConversationNotFound),
            _ => Err(Error::InvalidArgument(format!(
                "unknown key scene {scene:?}; one of p2p, team, super_team"
            ))),
        }
    }

    /// One entry of the caller's list, by id or key.
    pub fn get_list_entry(
        &self,
        caller: &Caller,
        key: &str,
        with_last: bool,
    ) -> Result<ListEntry, Error> {
        let id = self.resolve(caller, key)?;
        let cell = self.cell(&id)?;
        cell.lock().require_member(&caller.user)?;
        self.entry_view(&caller.user, cell.num, with_last)?
            .ok_or(Error::NotInList)
    }

    /// Changes the caller's own record of one conversation under its lock (creating the entry
    /// in the list again when it was removed), then tells the caller's other devices.
    async fn change_entry(
        &self,
        caller: &Caller,
        cell: &ConvCell,
        unhide: bool,
        change: impl FnOnce(&mut UserConversationRecord, i64),
    ) -> Result<ListEntry, Error> {
        let permit = self.writer.reserve().await?;
        let rx = {
            let mut st = cell.lock();
            st.require_member(&caller.user)?;
            st.require_stored("list entries")?;
            let mut rec = self.entry(&mut st, cell.num, &caller.user)?;
            let now = self.now();
            if rec.hidden && unhide {
                rec.hidden = false;
                if st.last_seq <= rec.hidden_seq {
                    rec.listed_at = now;
                }
            }
            change(&mut rec, now);
            rec.changed_at = now;
            let ops = vec![Self::put_entry(&mut st, cell.num, &caller.user, rec)];
            self.writer.submit(permit, ops, Vec::new(), Vec::new())
        };
        wait(rx).await?;
        let entry = self
            .entry_view(&caller.user, cell.num, true)?
            .ok_or(Error::NotInList)?;
        let push = pb::ListEntryChanged {
            entry: Some(entry.clone()),
        };
        self.tell_own_devices(caller, pb::server_frame::Body::ListEntryChanged(push));
        Ok(entry)
    }

    /// Sets the caller's private ext of an entry (upsert).
    pub async fn set_entry_ext(
        &self,
        caller: &Caller,
        key: &str,
        ext: String,
    ) -> Result<ListEntry, Error> {
        if ext.len() > self.config.max_entry_ext_bytes {
            return Err(Error::LimitExceeded(format!(
                "ext is {} bytes; max_entry_ext_bytes is {}",
                ext.len(),
                self.config.max_entry_ext_bytes
            )));
        }
        let cell = self.cell(&self.resolve(caller, key)?)?;
        self.change_entry(caller, &cell, true, move |rec, _| rec.ext = ext)
            .await
    }

    /// Pins or unpins an entry for the caller (pinning keeps the first pin time).
    pub async fn pin(&self, caller: &Caller, key: &str, pinned: bool) -> Result<ListEntry, Error> {
        let cell = self.cell(&self.resolve(caller, key)?)?;
        // One pin at a time per user, held until durable, so the cap cannot be raced past.
        let _guard = self.pin_locks.of(&caller.user).lock().await;
        if pinned {
            let max = self.config.max_pinned;
            // From the list rows the store keeps, not a decode of every entry.
            let count = self
                .store
                .list_rows(&caller.user)?
                .iter()
                .filter(|r| r.pinned_at > 0 && r.conv != cell.num)
                .count();
            if count >= max {
                return Err(Error::LimitExceeded(format!(
                    "{count} conversations pinned; max_pinned is {max}"
                )));
            }
        }
        // Pinning puts a removed entry back in the list; unpinning leaves it removed.
        self.change_entry(caller, &cell, pinned, move |rec, now| {
            rec.pinned_at = match (pinned, rec.pinned_at) {
                (false, _) => 0,
                (true, 0) => now,
                (true, at) => at,
            };
        })
        .await
    }

    /// Removes entries from the caller's list (one-way), optionally clearing the caller's
    /// history of them. Each comes back with its conversation's next message.
    pub async fn delete_list_entries(
        &self,
        caller: &Caller,
        keys: &[String],
        clear_history: bool,
    ) -> Result<(), Error> {
        let max = self.config.max_delete_entries;
        if keys.is_empty() {
            return Err(Error::InvalidArgument("no conversation ids".into()));
        }
        if keys.len() > max {
            return Err(Error::LimitExceeded(format!(
                "{} conversations; max_delete_entries is {max}",
                keys.len()
            )));
        }
        let mut cells = Vec::with_capacity(keys.len());
        for k in keys {
            let cell = self.cell(&self.resolve(caller, k)?)?;
            cell.lock().require_member(&caller.user)?;
            cell.lock().require_stored("list entries")?;
            if !cells.iter().any(|c: &Arc<ConvCell>| c.num == cell.num) {
                cells.push(cell);
            }
        }
        let mut pending = Vec::with_capacity(cells.len());
        for cell in &cells {
            let permit = self.writer.reserve().await?;
            let mut st = cell.lock();
            if st.require_member(&caller.user).is_err() {
                continue;
            }
            let mut rec = self.entry(&mut st, cell.num, &caller.user)?;
            let now = self.now();
            rec.hidden = true;
            rec.hidden_seq = st.last_seq;
            rec.hidden_at = now;
            rec.changed_at = now;
            rec.pinned_at = 0;
            if clear_history {
                rec.cleared_seq = rec.cleared_seq.max(st.last_seq);
            }
            let ops = vec![Self::put_entry(&mut st, cell.num, &caller.user, rec)];
            pending.push(self.writer.submit(permit, ops, Vec::new(), Vec::new()));
        }
        for rx in pending {
            wait(rx).await?;
        }
        let push = pb::ListEntriesDeleted {
            conversation_ids: cells.iter().map(|c| c.id.to_string()).collect(),
            clear_history,
        };
        self.tell_own_devices(caller, pb::server_frame::Body::ListEntriesDeleted(push));
        Ok(())
    }

    /// Deletes a conversation for everyone: the owner of a group, any member of a direct or
    /// temporary one. With `purge`, the deletion puts the conversation in the expiry index at
    /// once, and the conversation is then deleted from the store, `history_retention_batch`
    /// messages per commit ([`purge`](super::purge)), before this returns; without, its
    /// messages stay stored (for export) but no request reaches them. Every member gets a
    /// logged DELETED event and a list tombstone.
    pub async fn delete_conversation(
        &self,
        caller: &Caller,
        id: &str,
        purge: bool,
    ) -> Result<(), Error> {
        let cell = self.cell(id)?;
        let permit = self.writer.reserve().await?;
        let rx = {
            let mut st = cell.lock();
            st.authorize(caller, super::groups::Action::DeleteForEveryone)?;
            let now = self.now();
            let roster = st.roster.clone();
            // The event shows the conversation as it was, members included.
            let event = Arc::new(self.event(
                ConversationEventKind::Deleted,
                &cell,
                &caller.user,
                Vec::new(),
                st.view(&cell.id),
            ));
            let mut ops = Vec::new();
            let mut record = st.record.clone();
            record.deleted_at = now;
            if purge {
                // A purge cut short goes on at the next start.
                super::purge::mark_due(cell.num, &mut record, now, &mut ops);
            }
            ops.push(Op::PutConversation {
                conv: cell.num,
                record,
            });
            // Every member goes, each with a list tombstone.
            let everyone: BTreeSet<UserId> = roster.iter().cloned().collect();
            ops.extend(self.drop_members(&mut st, &cell, &everyone));
            let mut direct = None;
            if st.kind() == ConversationKind::Direct && st.record.pair.len() == 2 {
                let (a, b) = (
                    UserId::from(st.record.pair[0].as_str()),
                    UserId::from(st.record.pair[1].as_str()),
                );
                direct = Some((a.clone(), b.clone()));
                ops.push(Op::DeleteDirect { a, b });
            }
            let unique = (st.kind() == ConversationKind::Temporary).then(|| {
                st.record
                    .pair
                    .iter()
                    .map(|m| UserId::from(m.as_str()))
                    .collect()
            });
            let logged = roster
                .iter()
                .map(|u| LoggedEvent {
                    user: u.clone(),
                    event: event.clone(),
                    except_session: caller.session,
                })
                .collect();
            st.deleted = true;
            st.entries.clear();
            self.presence.drop_users(cell.num, None);
            let forget = self.forget_after_commit(&cell, direct, unique);
            self.writer
                .submit_then(permit, ops, Vec::new(), logged, Some(forget))
        };
        wait(rx).await?;
        if purge {
            self.purge(cell.num, None).await?;
        }
        Ok(())
    }
}

/// Striped locks: one of 64, chosen by a key's hash (pin changes per user, unique group
/// creates per member set).
pub(super) struct StripedLocks {
    locks: Vec<tokio::sync::Mutex<()>>,
    hasher: std::collections::hash_map::RandomState,
}

impl StripedLocks {
    /// The lock of `key`.
    pub(super) fn of(&self, key: impl std::hash::Hash) -> &tokio::sync::Mutex<()> {
        use std::hash::BuildHasher;
        &self.locks[self.hasher.hash_one(key) as usize % self.locks.len()]
    }
}

impl Default for StripedLocks {
    fn default() -> Self {
        StripedLocks {
            locks: (0..64).map(|_| tokio::sync::Mutex::new(())).collect(),
            hasher: Default::default(),
        }
    }
}

/// Whether a conversation list cursor parses (for the fuzz targets).
pub(crate) fn parse_cursor(s: &str) -> bool {
    Cursor::decode(s).is_some()
}
