//! History as each member sees it: paged fetch by seq or time in either direction, one-way
//! deletes, and recall/edit by the sender.
//!
//! A conversation's messages are numbered 1, 2, 3… and their `server_time` never decreases with
//! seq (a send takes `max(now, previous time)`), so every time bound maps to a seq bound by a
//! binary search over the stored messages, and every page is a walk over a seq range. What a
//! member deleted one-way is a `cleared_seq` floor in their per-user record plus single seqs in
//! the store's hidden set; both are applied on read, so nobody else's view changes.

use super::writer::{WriteError, wait};
use super::{Caller, ConvCell, Error, Registry};
use crate::hub::{Delivery, Recipients};
use crate::protocol;
use crate::protocol::pb::{self, ConversationKind, HistoryDirection, Message, MessageUpdateKind};
use crate::store::{Direction, Op, UserId};
use bytes::Bytes;
use prost::Message as _;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use tokio::sync::oneshot;

/// What a FetchHistory asks for (see `frames.proto`).
#[derive(Debug, Clone, Default)]
pub struct HistoryRequest {
    pub before_seq: u64,
    pub limit: u32,
    pub oldest_first: bool,
    pub start_seq: u64,
    pub start_time: i64,
    pub start_message_id: String,
    pub start_inclusive: bool,
    pub end_seq: u64,
    pub end_time: i64,
    pub end_message_id: String,
    pub end_inclusive: bool,
    pub types: Vec<i32>,
    pub cursor: String,
    /// Bytes of messages (as stored) the page holds, at most; its first message always goes,
    /// and its cursor goes on from the message that did not fit. 0: no bound.
    pub max_bytes: usize,
}

impl HistoryRequest {
    /// Builds the request from its wire form.
    pub fn from_wire(r: pb::FetchHistory) -> Self {
        HistoryRequest {
            before_seq: r.before_seq,
            limit: r.limit,
            oldest_first: r.direction == HistoryDirection::OldestFirst as i32,
            start_seq: r.start_seq,
            start_time: r.start_time,
            start_message_id: r.start_message_id,
            start_inclusive: r.start_inclusive,
            end_seq: r.end_seq,
            end_time: r.end_time,
            end_message_id: r.end_message_id,
            end_inclusive: r.end_inclusive,
            types: r.types,
            cursor: r.cursor,
            max_bytes: 0,
        }
    }
}

/// A one-way delete: some message ids, or everything before a time.
#[derive(Debug, Clone, Default)]
pub struct DeleteMessagesRequest {
    pub message_ids: Vec<String>,
    pub before_time: i64,
    pub inclusive: bool,
}

/// An edit: new content, and optionally new attributes.
#[derive(Debug, Clone, Default)]
pub struct EditRequest {
    pub message_id: String,
    pub content: Bytes,
    pub attributes: BTreeMap<String, String>,
    pub replace_attributes: bool,
}

/// One viewer's visibility of one conversation.
pub(super) struct View {
    /// Messages with seq <= this are gone for the viewer.
    pub cleared: u64,
    /// The newest committed seq.
    pub last: u64,
}

/// At most how many messages a walk reads from the store at a time: as many as the page still
/// needs and one more (to tell whether there are more), at least [`MIN_CHUNK`] (so a walk over
/// hidden messages takes few reads).
const CHUNK: usize = 128;
const MIN_CHUNK: usize = 16;

impl Registry {
    /// The newest committed seq of a conversation (0: none).
    pub(super) fn committed_last(&self, num: u64) -> Result<u64, Error> {
        Ok(self.store.last_message(num)?.map_or(0, |m| m.seq))
    }

    /// The first seq in `1..=last` whose time is after `t` (`strict`) or at/after it; `last + 1`
    /// when there is none. Binary search: times never decrease with seq. Seqs deleted by
    /// history retention (a prefix, older than every message left) count as before `t`.
    pub(super) fn seq_from_time(
        &self,
        num: u64,
        t: i64,
        strict: bool,
        last: u64,
    ) -> Result<u64, Error> {
        let (mut lo, mut hi) = (1u64, last + 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let after = match self.store.message(num, mid)? {
                Some(m) if strict => m.server_time > t,
                Some(m) => m.server_time >= t,
                None => false,
            };
            if after {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        Ok(lo)
    }

    /// The seq a message id names in this conversation.
    fn seq_of(&self, cell: &ConvCell, message_id: &str) -> Result<u64, Error> {
        Self::seq_in(&*self.store, cell.num, message_id)
    }

    /// The caller's view of a conversation they belong to; the app's backend sees it whole
    /// (for moderation: nobody's one-way deletes apply). Nobody sees below what history
    /// retention deleted.
    fn view_of(&self, caller: &Caller, cell: &ConvCell) -> Result<View, Error> {
        let cleared = {
            let mut st = cell.lock();
            st.require_reader(caller)?;
            let purged = st.record.purged_seq;
            if caller.admin {
                purged
            } else {
                purged.max(self.entry(&mut st, cell.num, &caller.user)?.cleared_seq)
            }
        };
        Ok(View {
            cleared,
            last: self.committed_last(cell.num)?,
        })
    }

    /// A page of history for the caller, ascending seq, with `has_more` and the next cursor.
    /// Charged to a user afterwards by the messages it examined beyond the page and by the
    /// page's bytes (see `limits::SCANNED_PER_TOKEN`, `limits::RETURNED_BYTES_PER_TOKEN`).
    pub fn history(
        &self,
        caller: &Caller,
        id: &str,
        req: HistoryRequest,
    ) -> Result<(Vec<Message>, bool, String), Error> {
        let limit = self.page_size(req.limit)?;
        let cell = self.cell(id)?;
        let view = self.view_of(caller, &cell)?;
        let last = view.last;
        let num = cell.num;
        let back = !req.oldest_first;
        // The walk covers lo..=hi; it starts at hi (newest first) or lo (oldest first).
        let (mut lo, mut hi) = (view.cleared + 1, last);
        let start = if !req.cursor.is_empty() {
            let pos = parse_cursor(&req.cursor, back)
                .ok_or_else(|| Error::InvalidArgument("cursor is not from this walk".into()))?;
            Some(pos)
        } else if !req.start_message_id.is_empty() {
            let s = self.seq_of(&cell, &req.start_message_id)?;
            Some(Self::step(s, req.start_inclusive, back))
        } else if req.start_seq > 0 {
            Some(Self::step(req.start_seq, req.start_inclusive, back))
        } else if req.start_time > 0 {
            // Newest first: the last message before (or at) the time; oldest first: the first
            // one after (or at) it.
            Some(if back {
                self.seq_from_time(num, req.start_time, req.start_inclusive, last)?
                    .saturating_sub(1)
            } else {
                self.seq_from_time(num, req.start_time, !req.start_inclusive, last)?
            })
        } else if req.before_seq > 0 {
            Some(req.before_seq - 1)
        } else {
            None
        };
        let end = if !req.end_message_id.is_empty() {
            let e = self.seq_of(&cell, &req.end_message_id)?;
            Some(Self::step(e, req.end_inclusive, !back))
        } else if req.end_seq > 0 {
            Some(Self::step(req.end_seq, req.end_inclusive, !back))
        } else if req.end_time > 0 {
            Some(if back {
                self.seq_from_time(num, req.end_time, !req.end_inclusive, last)?
            } else {
                self.seq_from_time(num, req.end_time, req.end_inclusive, last)?
                    .saturating_sub(1)
            })
        } else {
            None
        };
        if back {
            if let Some(s) = start {
                hi = hi.min(s);
            }
            if let Some(e) = end {
                lo = lo.max(e);
            }
        } else {
            if let Some(s) = start {
                lo = lo.max(s);
            }
            if let Some(e) = end {
                hi = hi.min(e);
            }
        }
        if lo > hi || hi == 0 {
            return Ok((Vec::new(), false, String::new()));
        }
        let hidden: HashSet<u64> = if caller.admin {
            HashSet::new()
        } else {
            self.store
                .hidden_seqs(&caller.user, num, lo, hi + 1)?
                .into_iter()
                .collect()
        };
        let wanted = |m: &Message| {
            !hidden.contains(&m.seq) && (req.types.is_empty() || req.types.contains(&m.r#type))
        };
        let max_bytes = match req.max_bytes {
            0 => usize::MAX,
            n => n,
        };
        let mut page = Vec::with_capacity(limit);
        let mut bytes = 0usize;
        let mut scanned = 0usize;
        // The next seq to examine, and whether the range is used up.
        let mut pos = if back { hi } else { lo };
        let mut more = None;
        'walk: while (lo..=hi).contains(&pos) {
            let want = (limit - page.len() + 1).clamp(MIN_CHUNK, CHUNK);
            let chunk = if back {
                self.store
                    .messages(num, lo, pos + 1, Direction::Descending, want)?
            } else {
                self.store
                    .messages(num, pos, hi + 1, Direction::Ascending, want)?
            };
            if chunk.is_empty() {
                break;
            }
            for m in chunk {
                if scanned >= self.config.history_scan_max {
                    more = Some(m.seq);
                    break 'walk;
                }
                scanned += 1;
                let next = if back {
                    m.seq.checked_sub(1)
                } else {
                    m.seq.checked_add(1)
                };
                if wanted(&m) {
                    let n = prost::Message::encoded_len(&m);
                    if page.len() == limit
                        || (!page.is_empty() && bytes.saturating_add(n) > max_bytes)
                    {
                        more = Some(m.seq);
                        break 'walk;
                    }
                    bytes = bytes.saturating_add(n);
                    page.push(m);
                }
                match next {
                    Some(n) => pos = n,
                    None => break 'walk,
                }
            }
        }
        if !caller.admin {
            self.charge_scan(&caller.user, scanned, page.len());
            self.charge_bytes(&caller.user, stored_bytes(&page));
        }
        if back {
            page.reverse();
        }
        let (has_more, cursor) = match more {
            Some(p) => (true, format!("{}{p:x}", if back { 'n' } else { 'o' })),
            None => (false, String::new()),
        };
        Ok((page, has_more, cursor))
    }

    /// A seq bound from a position and an inclusive flag, moving away from it in the walk's
    /// direction when exclusive (`down`: towards older messages).
    fn step(seq: u64, inclusive: bool, down: bool) -> u64 {
        match (inclusive, down) {
            (true, _) => seq,
            (false, true) => seq - 1,
            (false, false) => seq.saturating_add(1),
        }
    }

    /// The newest message `user` can see at or below `last` (skipping what they deleted).
    pub(super) fn last_visible(
        &self,
        user: &str,
        num: u64,
        cleared: u64,
        last: u64,
    ) -> Result<Option<Message>, Error> {
        if last <= cleared {
            return Ok(None);
        }
        let hidden: HashSet<u64> = self
            .store
            .hidden_seqs(user, num, cleared + 1, last + 1)?
            .into_iter()
            .collect();
        let mut hi = last + 1;
        while hi > cleared + 1 {
            let chunk = self
                .store
                .messages(num, cleared + 1, hi, Direction::Descending, 16)?;
            let Some(oldest) = chunk.last().map(|m| m.seq) else {
                break;
            };
            if let Some(m) = chunk.into_iter().find(|m| !hidden.contains(&m.seq)) {
                return Ok(Some(m));
            }
            hi = oldest;
        }
        Ok(None)
    }

    /// Deletes messages for the caller only. If nothing the caller can see remains, the entry
    /// also leaves the caller's list. The caller's other devices are told.
    pub async fn delete_messages(
        &self,
        caller: &Caller,
        id: &str,
        req: DeleteMessagesRequest,
    ) -> Result<(), Error> {
        let max = self.config.max_delete_message_ids;
        if req.message_ids.len() > max {
            return Err(Error::LimitExceeded(format!(
                "{} message ids; max_delete_message_ids is {max} (the limit can not be greater \
                 than {max})",
                req.message_ids.len()
            )));
        }
        if req.message_ids.is_empty() == (req.before_time <= 0) {
            return Err(Error::InvalidArgument(
                "give either message_ids or before_time".into(),
            ));
        }
        let cell = self.cell(id)?;
        let view = self.view_of(caller, &cell)?;
        let mut seqs = Vec::with_capacity(req.message_ids.len());
        for m in &req.message_ids {
            let s = self.seq_of(&cell, m)?;
            if s > view.last {
                return Err(Error::MessageNotFound);
            }
            seqs.push(s);
        }
        seqs.sort_unstable();
        seqs.dedup();
        let before = if req.before_time > 0 {
            self.seq_from_time(cell.num, req.before_time, req.inclusive, view.last)? - 1
        } else {
            0
        };
        let permit = self.writer.reserve().await?;
        let (rx, left_list) = {
            let mut st = cell.lock();
            st.require_member(&caller.user)?;
            st.require_stored("deleting messages")?;
            let mut rec = self.entry(&mut st, cell.num, &caller.user)?;
            let now = self.now();
            let mut ops = Vec::with_capacity(seqs.len() + 1);
            for &seq in &seqs {
                ops.push(Op::PutHidden {
                    user: caller.user.clone(),
                    conv: cell.num,
                    seq,
                });
            }
            rec.cleared_seq = rec.cleared_seq.max(before);
            // Whether anything the caller can see is left.
            let last = st.last_seq;
            let mut gone: HashSet<u64> = self
                .store
                .hidden_seqs(&caller.user, cell.num, rec.cleared_seq + 1, last + 1)?
                .into_iter()
                .collect();
            gone.extend(seqs.iter().filter(|s| **s > rec.cleared_seq));
            let left_list =
                last > 0 && (last - rec.cleared_seq) as usize <= gone.len() && !rec.hidden;
            if left_list {
                // Nothing visible is left: clear up to the end, so unread counts start afresh
                // when the next message brings the entry back.
                rec.cleared_seq = last;
                rec.hidden = true;
                rec.hidden_seq = last;
                rec.hidden_at = now;
                rec.pinned_at = 0;
            }
            rec.changed_at = now;
            ops.push(Self::put_entry(&mut st, cell.num, &caller.user, rec));
            (
                self.writer.submit(permit, ops, Vec::new(), Vec::new()),
                left_list,
            )
        };
        wait(rx).await?;
        let push = pb::MessagesDeleted {
            conversation_id: cell.id.to_string(),
            message_ids: req.message_ids,
            before_time: req.before_time,
            inclusive: req.inclusive,
        };
        self.tell_own_devices(caller, pb::server_frame::Body::MessagesDeleted(push));
        if left_list {
            let push = pb::ListEntriesDeleted {
                conversation_ids: vec![cell.id.to_string()],
                clear_history: false,
            };
            self.tell_own_devices(caller, pb::server_frame::Body::ListEntriesDeleted(push));
        }
        Ok(())
    }

    /// Pushes to the caller's other sessions.
    pub(super) fn tell_own_devices(&self, caller: &Caller, body: pb::server_frame::Body) {
        self.hub().deliver(&Delivery {
            to: Recipients::User(caller.user.clone()),
            frame: protocol::push(body),
            user_seq: 0,
            except_session: caller.session,
        });
    }

    /// Withdraws a message within `recall_window_secs`: the caller's own, or in a group one of
    /// a member the caller outranks, by the owner or a manager (the role table). Recalling a
    /// recalled message returns it again and tells nobody.
    pub async fn recall(
        &self,
        caller: &Caller,
        id: &str,
        message_id: &str,
    ) -> Result<Message, Error> {
        // The app's backend recalls any message, however old.
        let window = (!caller.admin).then_some(self.config.recall_window_secs);
        self.rewrite(caller, id, message_id, true, |m, now| {
            if m.recalled {
                return Ok(None);
            }
            if let Some(window) = window {
                Self::check_window(m, now, window, "recall_window_secs")?;
            }
            m.recalled = true;
            m.recalled_at = now;
            m.content = Bytes::new();
            m.attributes.clear();
            m.mentions.clear();
            m.mention_all = false;
            Ok(Some(MessageUpdateKind::Recalled))
        })
        .await
    }

    /// Replaces the content of a message the caller sent, within `edit_window_secs`, at most
    /// `max_edits` times.
    pub async fn edit(
        &self,
        caller: &Caller,
        id: &str,
        req: EditRequest,
    ) -> Result<Message, Error> {
        let mut req = req;
        if self.hook.is_some() && !caller.admin {
            // Asked only about an edit the caller may make.
            self.check_edit(caller, id, &req.message_id)?;
        }
        self.moderate_edit(caller, id, &mut req).await?;
        let window = self.edit_window(caller);
        let max_edits = self.config.max_edits;
        let EditRequest {
            message_id,
            content,
            attributes,
            replace_attributes,
        } = req;
        self.rewrite(caller, id, &message_id, false, move |m, now| {
            Self::editable(m, now, window, max_edits)?;
            m.content = content;
            if replace_attributes {
                m.attributes = attributes;
            }
            // The message as edited, attributes it keeps included, is held to a send's limit.
            self.check_size(&m.content, &m.attributes)?;
            m.edit_count += 1;
            m.edited_at = now;
            Ok(Some(MessageUpdateKind::Edited))
        })
        .await
    }

    /// The caller's edit window: the app's backend edits any message, however old.
    fn edit_window(&self, caller: &Caller) -> Option<u64> {
        (!caller.admin).then_some(self.config.edit_window_secs)
    }

    /// Whether message `m` may be edited once more now.
    fn editable(m: &Message, now: i64, window: Option<u64>, max_edits: u32) -> Result<(), Error> {
        if m.recalled {
            return Err(Error::MessageNotFound);
        }
        if let Some(window) = window {
            Self::check_window(m, now, window, "edit_window_secs")?;
        }
        if m.edit_count >= max_edits {
            return Err(Error::LimitExceeded(format!(
                "edited {} times; max_edits is {max_edits}",
                m.edit_count
            )));
        }
        Ok(())
    }

    /// Checks that a user may edit the message now (a member, its sender, within the window
    /// and `max_edits`), as the edit will under the lock.
    fn check_edit(&self, caller: &Caller, id: &str, message_id: &str) -> Result<(), Error> {
        let cell = self.cell(id)?;
        let seq = self.seq_of(&cell, message_id)?;
        let st = cell.lock();
        st.require_member(&caller.user)?;
        let current = match st.edited.get(&seq) {
            Some(m) => Some(m.clone()),
            None => self.store.message(cell.num, seq)?,
        };
        let m = current.ok_or(Error::MessageNotFound)?;
        if *m.sender != *caller.user {
            return Err(Error::PermissionDenied(
                "only the sender may edit a message; only the sender, the owner and managers may recall one",
            ));
        }
        Self::editable(
            &m,
            self.now(),
            self.edit_window(caller),
            self.config.max_edits,
        )
    }

    fn check_window(m: &Message, now: i64, secs: u64, name: &str) -> Result<(), Error> {
        if now.saturating_sub(m.server_time) > (secs as i64).saturating_mul(1000) {
            return Err(Error::WindowExpired(format!(
                "the message is older than {name} ({secs} s)"
            )));
        }
        Ok(())
    }

    /// Applies `change` to one of the caller's messages under the conversation lock, stores the
    /// result, and tells the members (and the caller's other devices) once it is durable. A
    /// user is charged afterwards for the members told, as for a send (see
    /// `limits::SEND_RECIPIENTS_PER_TOKEN`); a change that tells nobody costs nothing more.
    async fn rewrite(
        &self,
        caller: &Caller,
        id: &str,
        message_id: &str,
        recall: bool,
        change: impl FnOnce(&mut Message, i64) -> Result<Option<MessageUpdateKind>, Error>,
    ) -> Result<Message, Error> {
        let cell = self.cell(id)?;
        let seq = self.seq_of(&cell, message_id)?;
        let permit = self.writer.reserve().await?;
        let (rx, message, members) = {
            let mut st = cell.lock();
            let rank = if caller.admin {
                st.authorize(caller, super::groups::Action::RecallOthers)?
            } else {
                st.require_member(&caller.user)?;
                st.rank_of(&caller.user)
            };
            let current = match st.edited.get(&seq) {
                Some(m) => Some(m.clone()),
                None => self.store.message(cell.num, seq)?,
            };
            let mut m = current.ok_or(Error::MessageNotFound)?;
            if *m.sender != *caller.user && !caller.admin {
                let others = super::groups::Action::RecallOthers;
                if !recall || st.kind() != ConversationKind::Group || rank < others.least() {
                    return Err(Error::PermissionDenied(
                        "only the sender may edit a message; only the sender, the owner and managers may recall one",
                    ));
                }
                st.authorize_over(rank, others, &m.sender)?;
            }
            let now = self.now();
            let patched_before = m.edited_at.max(m.recalled_at);
            let before = self.config.keep_message_versions.then(|| m.clone());
            let Some(kind) = change(&mut m, now)? else {
                return Ok(m);
            };
            let encoded = Bytes::from(m.encode_to_vec());
            let mut ops = Vec::with_capacity(4);
            if let Some(before) = before {
                // Kept for audit: the n-th change keeps version n, the message as it was.
                ops.push(Op::PutMessageVersion {
                    conv: cell.num,
                    seq,
                    version: u64::from(before.edit_count),
                    message: Bytes::from(before.encode_to_vec()),
                });
            }
            if patched_before > 0 {
                ops.push(Op::DeletePatch {
                    conv: cell.num,
                    at: patched_before,
                    seq,
                });
            }
            ops.push(Op::PutPatch {
                conv: cell.num,
                at: now,
                seq,
            });
            ops.push(Op::PutMessage {
                conv: cell.num,
                seq,
                message: encoded,
            });
            st.edited.insert(seq, m.clone());
            let push = pb::MessageUpdated {
                kind: kind as i32,
                message: Some(m.clone()),
            };
            let d = Delivery {
                to: st.members_to(),
                frame: protocol::push(pb::server_frame::Body::MessageUpdated(push)),
                user_seq: 0,
                except_session: caller.session,
            };
            let members = st.roster.len();
            (
                self.writer.submit(permit, ops, vec![d], Vec::new()),
                m,
                members,
            )
        };
        settle(cell, rx, vec![(seq, message.clone())]).await?;
        if !caller.admin {
            self.charge_send(&caller.user, members);
        }
        Ok(message)
    }

    /// A message's kept versions, oldest first (as it was before each edit or its recall,
    /// when `keep_message_versions` was on), and the message as it now is. The app's
    /// backend only (audit).
    pub fn message_versions(
        &self,
        caller: &Caller,
        id: &str,
        message_id: &str,
    ) -> Result<(Vec<Message>, Message), Error> {
        if !caller.admin {
            return Err(Error::PermissionDenied(
                "only the app's backend reads kept versions",
            ));
        }
        let cell = self.cell(id)?;
        let seq = self.seq_of(&cell, message_id)?;
        let current = {
            let st = cell.lock();
            st.require_live()?;
            st.edited.get(&seq).cloned()
        };
        let current = match current {
            Some(m) => m,
            None => self
                .store
                .message(cell.num, seq)?
                .ok_or(Error::MessageNotFound)?,
        };
        if seq > self.committed_last(cell.num)? {
            return Err(Error::MessageNotFound);
        }
        Ok((self.store.message_versions(cell.num, seq)?, current))
    }

    /// Messages after `after_seq` the caller can see, oldest first (catch-up). Charged to a
    /// user afterwards by the page's bytes (see `limits::RETURNED_BYTES_PER_TOKEN`).
    pub fn sync(
        &self,
        caller: &Caller,
        id: &str,
        after_seq: u64,
        limit: u32,
    ) -> Result<(Vec<Message>, bool), Error> {
        let limit = self.page_size(limit)?;
        let cell = self.cell(id)?;
        let cleared = {
            let mut st = cell.lock();
            st.require_member(&caller.user)?;
            self.entry(&mut st, cell.num, &caller.user)?.cleared_seq
        };
        let mut lo = after_seq.max(cleared).saturating_add(1);
        loop {
            let mut page =
                self.store
                    .messages(cell.num, lo, u64::MAX, Direction::Ascending, limit + 1)?;
            let has_more = page.len() > limit;
            page.truncate(limit);
            let (Some(first), Some(last)) = (page.first(), page.last()) else {
                return Ok((page, has_more));
            };
            let (first, last) = (first.seq, last.seq);
            let hidden: HashSet<u64> = self
                .store
                .hidden_seqs(&caller.user, cell.num, first, last + 1)?
                .into_iter()
                .collect();
            page.retain(|m| !hidden.contains(&m.seq));
            if !page.is_empty() || !has_more {
                if !caller.admin {
                    self.charge_bytes(&caller.user, stored_bytes(&page));
                }
                return Ok((page, has_more));
            }
            // Everything on this page was deleted by the caller: go on after it.
            lo = last + 1;
        }
    }

    /// The messages of `user`'s conversations last edited or recalled after `after` (ms) that
    /// the user can still see, oldest change first (catch-up of clients that missed the
    /// pushes): at most `max`, and no more than `max_bytes` of them (as stored) once the first
    /// is in. The patches of one millisecond go together: where a bound falls among them,
    /// the answer ends before them, so a client that asks again after the newest patch time
    /// it got misses none (unless the oldest millisecond alone is over a bound: then it is
    /// cut there, the first message always going). A message patched again since the patch
    /// found is left for that newer patch. Reads the patches of every conversation of the
    /// user's: charged to the user afterwards by their number and by the bytes of the
    /// messages returned (see `limits::CONVERSATIONS_PER_TOKEN`,
    /// `limits::RETURNED_BYTES_PER_TOKEN`).
    pub fn patched_since(
        &self,
        user: &str,
        after: i64,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<Message>, Error> {
        // The oldest `keep` patches: one more than can go, to tell whether the last
        // millisecond taken has more.
        let keep = max.saturating_add(1);
        let mut found: Vec<(i64, u64, u64)> = Vec::new();
        // Whether patches newer than the newest in `found` may have been left unread.
        let mut partial = false;
        let conversations = self.store.user_conversations(user)?;
        self.charge_conversations(&UserId::from(user), conversations.len());
        for (num, rec) in conversations {
            let patches = self.store.patches_after(num, after, keep)?;
            partial |= patches.len() >= keep;
            for (at, seq) in patches {
                if seq > rec.cleared_seq {
                    found.push((at, num, seq));
                }
            }
            if found.len() > keep.saturating_mul(2) {
                found.select_nth_unstable(keep);
                found.truncate(keep);
                partial = true;
            }
        }
        found.sort_unstable();
        if found.len() > keep {
            found.truncate(keep);
            partial = true;
        }
        let mut out: Vec<Message> = Vec::new();
        let (mut bytes, mut run, mut run_at, mut cut) = (0usize, 0usize, None, false);
        for (at, num, seq) in found {
            if run_at != Some(at) {
                (run, run_at) = (out.len(), Some(at));
            }
            if !self.store.hidden_seqs(user, num, seq, seq + 1)?.is_empty() {
                continue;
            }
            let Some(m) = self.store.message(num, seq)? else {
                continue;
            };
            if m.edited_at.max(m.recalled_at) > at {
                continue;
            }
            let n = m.encoded_len();
            if out.len() >= max || bytes.saturating_add(n) > max_bytes {
                cut = true;
                if out.is_empty() {
                    out.push(m);
                }
                break;
            }
            bytes += n;
            out.push(m);
        }
        // The last millisecond taken may have more patches than went: leave it for the next
        // ask, unless it is the first.
        if (cut || partial) && run > 0 {
            out.truncate(run);
        }
        self.charge_bytes(&UserId::from(user), stored_bytes(&out));
        Ok(out)
    }
}

/// The cursor of an oldest-first history walk that goes on right after the message `seq`:
/// for a page of such a walk cut short after that message.
pub fn oldest_first_cursor_after(seq: u64) -> String {
    format!("o{:x}", seq.saturating_add(1))
}

/// The bytes of messages as stored.
fn stored_bytes(messages: &[Message]) -> usize {
    messages.iter().map(|m| m.encoded_len()).sum()
}

/// The seq a history cursor holds, if it is one of this walk's: `n` (newest first) or `o`
/// (oldest first), then hex digits. Any text a client sends is an answer, never a panic.
pub(crate) fn parse_cursor(cursor: &str, back: bool) -> Option<u64> {
    let pos = cursor.strip_prefix(if back { 'n' } else { 'o' })?;
    u64::from_str_radix(pos, 16).ok()
}

/// Waits for the commit of rewritten messages (`held`: each seq and its new version, as put in
/// `edited`), then drops those versions from `edited`: once the commit is over the store has
/// them (or, if it failed, never will). A version a later rewrite put there since stays. Runs
/// to the end even when the caller stops waiting, so nothing is left held.
pub(super) async fn settle(
    cell: Arc<ConvCell>,
    rx: oneshot::Receiver<Result<(), WriteError>>,
    held: Vec<(u64, Message)>,
) -> Result<(), WriteError> {
    tokio::spawn(async move {
        let done = wait(rx).await;
        let mut st = cell.lock();
        for (seq, m) in held {
            if st.edited.get(&seq) == Some(&m) {
                st.edited.remove(&seq);
            }
        }
        done
    })
    .await
    .unwrap_or(Err(WriteError::Unavailable))
}
