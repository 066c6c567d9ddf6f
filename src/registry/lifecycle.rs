//! A user's data, deleted or exported for the app's backend, in bounded steps.
//!
//! Deleting first walks the user's conversations in number order and takes them out of each
//! as the conversation's kind allows: a group by leaving (an owner hands it to the
//! longest-standing member), a temporary conversation by removal (ended when they were its
//! last member), a system conversation by unsubscribing, a direct conversation by dropping
//! their side (the other member keeps it and its history; the pair's index entry goes, so a
//! new direct conversation between the same ids starts afresh). Then, unless
//! `user_delete_keep_messages`, it walks the history of every live conversation, kind by kind,
//! the newest first, and empties the messages they sent as a recall empties them: those of
//! conversations they had left before are found too, as there is no index by sender. Last,
//! the records that belong to the user alone go: their event log, list tombstones, one-way
//! deletes, blocks, profile. A call does at most `user_delete_step_max` units of work (a
//! conversation looked at or a message looked at is one, a conversation left
//! [`LEAVE_UNITS`]; at least one leave a call) and says where the next one goes on;
//! everything it did is committed, so calling again, from the cursor or from the start,
//! finishes the job.

use super::writer::wait;
use super::{Caller, Error, Registry};
use crate::hub::{Delivery, Recipients};
use crate::protocol::{
    self,
    pb::{self, ConversationKind, Message, MessageUpdateKind},
};
use crate::store::{Direction, Op, UserId};
use bytes::Bytes;
use prost::Message as _;
use std::collections::BTreeSet;

/// Messages read (and emptied) per store commit while deleting a user's data.
const CHUNK: usize = 128;
/// Messages read per store call while exporting a user's data: few enough that a page
/// cut by its byte bound leaves little read for nothing (at most 2 MiB of content).
const EXPORT_CHUNK: usize = 32;

/// Units of `user_delete_step_max` a conversation left costs: a commit and its members'
/// pushes, where a message looked at is one read (10,000 leaves in one call took 40 s).
const LEAVE_UNITS: usize = 100;

/// What one call deleting a user's data did.
#[derive(Debug, Clone, Default)]
pub struct DeleteStep {
    /// Everything is gone; another call changes nothing.
    pub done: bool,
    /// Where the next call goes on (empty when done).
    pub cursor: String,
    /// Live sessions of the user closed by this call.
    pub sessions_closed: usize,
    /// Messages emptied by this call.
    pub messages_emptied: u64,
    /// Conversations the user left in this call.
    pub conversations_left: u64,
}

/// The kinds of conversation, in the order a deletion walks them for the user's messages.
const KINDS: [ConversationKind; 5] = [
    ConversationKind::Direct,
    ConversationKind::Group,
    ConversationKind::Temporary,
    ConversationKind::System,
    ConversationKind::ChatRoom,
];

/// A position in a walk over the history of every live conversation, kind by kind, the
/// newest first: conversation `conv` of `KINDS[kind]` from seq `seq` on (`seq` 0: not
/// started; `conv` is then only a bound), and then the ones numbered below it. There is no
/// index by sender, so this is how the messages a user sent anywhere are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Walk {
    kind: usize,
    conv: u64,
    seq: u64,
}

impl Walk {
    const START: Walk = Walk {
        kind: 0,
        conv: u64::MAX,
        seq: 0,
    };

    /// From `<kind>.<conv>.<seq>` (hex), the rest of a cursor.
    fn parse<'a>(mut parts: impl Iterator<Item = &'a str>) -> Option<Walk> {
        let mut hex = || u64::from_str_radix(parts.next()?, 16).ok();
        let w = Walk {
            kind: usize::try_from(hex()?).ok().filter(|k| *k < KINDS.len())?,
            conv: hex()?,
            seq: hex()?,
        };
        parts.next().is_none().then_some(w)
    }

    fn cursor(self) -> String {
        format!("{:x}.{:x}.{:x}", self.kind, self.conv, self.seq)
    }

    /// The same place, done with `conv`: the walk goes on below it.
    fn after(self) -> Walk {
        Walk { seq: 0, ..self }
    }
}

/// Where a deletion goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DeleteAt {
    /// Leaving the user's conversations, from number `from` on.
    Leave { from: u64 },
    /// Emptying the user's messages in every live conversation.
    Messages(Walk),
    /// Deleting what belongs to the user alone.
    Forget,
}

/// Why a deletion cursor was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BadCursor {
    /// Not a cursor of a deletion at all.
    Malformed,
    /// A deletion's cursor, but issued for another user (or altered).
    OtherUser,
}

impl DeleteAt {
    const START: DeleteAt = DeleteAt::Leave { from: 0 };

    /// The position of a cursor without its tag: `l.<from>`, `m.<walk>` or `f`.
    fn parse_position(s: &str) -> Option<DeleteAt> {
        let hex = |h: &str| u64::from_str_radix(h, 16).ok();
        let mut parts = s.split('.');
        let at = match parts.next()? {
            "l" => DeleteAt::Leave {
                from: hex(parts.next()?)?,
            },
            "m" => return Walk::parse(parts).map(DeleteAt::Messages),
            "f" => DeleteAt::Forget,
            _ => return None,
        };
        parts.next().is_none().then_some(at)
    }

    /// A cursor `cursor` gave for `user`: its position, then `.` and the tag that binds it to
    /// the user ([`deletion_tag`]). Empty: the start. Untagged positions and the
    /// `<conv>.<seq>` of earlier versions start again, which redoes nothing done; a tag of
    /// another user's deletion (or of another position) is refused.
    fn parse(s: &str, user: &str) -> Result<DeleteAt, BadCursor> {
        if s.is_empty() {
            return Ok(DeleteAt::START);
        }
        if let Some((position, tag)) = s.rsplit_once('.')
            && tag.len() == TAG_HEX
            && let Some(at) = Self::parse_position(position)
        {
            return if tag == deletion_tag(user, position) {
                Ok(at)
            } else {
                Err(BadCursor::OtherUser)
            };
        }
        let hex = |h: &str| u64::from_str_radix(h, 16).is_ok();
        let earlier = Self::parse_position(s).is_some()
            || s.split_once('.')
                .is_some_and(|(conv, seq)| conv != "f" && hex(conv) && hex(seq));
        if earlier {
            Ok(DeleteAt::START)
        } else {
            Err(BadCursor::Malformed)
        }
    }

    fn position(self) -> String {
        match self {
            DeleteAt::Leave { from } => format!("l.{from:x}"),
            DeleteAt::Messages(w) => format!("m.{}", w.cursor()),
            DeleteAt::Forget => "f".into(),
        }
    }

    /// The cursor for going on from here with `user`'s deletion.
    fn cursor(self, user: &str) -> String {
        let position = self.position();
        let tag = deletion_tag(user, &position);
        format!("{position}.{tag}")
    }
}

/// Hex digits of a deletion cursor's tag.
const TAG_HEX: usize = 16;

/// The tag of a deletion cursor: the first 8 bytes of a SHA-256 of the user id and the
/// position, in hex. It ties a cursor to the user whose deletion issued it and to the place it
/// names, so a cursor of another user's deletion, or one edited or made up, is refused rather
/// than taken as a place further on (which would skip work and answer `done` early). It is
/// not a secret: the admin API's callers are trusted with every user's data anyway.
fn deletion_tag(user: &str, position: &str) -> String {
    cursor_tag(b"tidings user deletion\0", user, position)
}

/// The tag of a cursor of `purpose` for `user` at `position` (see [`deletion_tag`]).
fn cursor_tag(purpose: &[u8], user: &str, position: &str) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(purpose);
    h.update(user.as_bytes());
    h.update(b"\0");
    h.update(position.as_bytes());
    h.finalize()[..TAG_HEX / 2]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Registry {
    /// Deletes one user's data, at most `user_delete_step_max` units of work per call (see
    /// the module docs). Their live sessions are closed first, every call. Idempotent.
    pub async fn delete_user(&self, user: &str, from: &str) -> Result<DeleteStep, Error> {
        self.check_user_id(user)?;
        let mut at = DeleteAt::parse(from, user).map_err(|e| {
            Error::InvalidArgument(match e {
                BadCursor::Malformed => "cursor is not from a deletion".into(),
                BadCursor::OtherUser => format!(
                    "cursor is not from a deletion of {user:?}: pass the cursor this user's \
                     last call answered, or none to start again (nothing done is redone)"
                ),
            })
        })?;
        let name = user;
        let user = UserId::from(user);
        let mut step = DeleteStep {
            sessions_closed: self.disconnect(&user, None)?,
            ..Default::default()
        };
        let mut budget = self.config.user_delete_step_max;
        loop {
            if let DeleteAt::Leave { from } = at {
                for (num, _) in self.store.user_conversations(&user)? {
                    if num < from {
                        continue;
                    }
                    if budget == 0 {
                        step.cursor = DeleteAt::Leave { from: num }.cursor(name);
                        return Ok(step);
                    }
                    self.leave_for_deletion(&user, num).await?;
                    budget = budget.saturating_sub(LEAVE_UNITS);
                    step.conversations_left += 1;
                }
                at = if self.config.user_delete_keep_messages {
                    DeleteAt::Forget
                } else {
                    DeleteAt::Messages(Walk::START)
                };
            }
            while let DeleteAt::Messages(w) = at {
                if w.seq > 0 {
                    let (emptied, next) = self
                        .empty_messages_of(&user, w.conv, w.seq, &mut budget)
                        .await?;
                    step.messages_emptied += emptied;
                    if let Some(seq) = next {
                        step.cursor = DeleteAt::Messages(Walk { seq, ..w }).cursor(name);
                        return Ok(step);
                    }
                }
                // Going to the next conversation is a unit of work too, empty or not.
                if budget == 0 {
                    step.cursor = DeleteAt::Messages(w.after()).cursor(name);
                    return Ok(step);
                }
                budget -= 1;
                at = self
                    .walk_on(w)?
                    .map_or(DeleteAt::Forget, DeleteAt::Messages);
            }
            // Done only once they are in no conversation: one may have taken them in since
            // they left the others. Then it starts again from leaving, messages and all.
            if self.store.user_conversations(&user)?.is_empty() {
                break;
            }
            at = DeleteAt::START;
            if budget == 0 {
                step.cursor = at.cursor(name);
                return Ok(step);
            }
        }
        self.forget_user_records(&user).await?;
        step.done = true;
        Ok(step)
    }

    /// Empties the messages `user` sent in conversation `num` from seq `start` on, as a recall
    /// does, telling the members; spends a unit of `budget` per message looked at. Returns how
    /// many were emptied, and the seq to go on from when the budget ran out first.
    async fn empty_messages_of(
        &self,
        user: &UserId,
        num: u64,
        start: u64,
        budget: &mut usize,
    ) -> Result<(u64, Option<u64>), Error> {
        let cell = match self.cell_by_num(num) {
            Ok(cell) => cell,
            // Deleted for everyone: its messages are nobody's to read.
            Err(Error::ConversationNotFound) => return Ok((0, None)),
            Err(e) => return Err(e),
        };
        let mut pos = start;
        let mut emptied = 0;
        loop {
            if *budget == 0 {
                return Ok((emptied, Some(pos)));
            }
            let limit = CHUNK.min(*budget);
            let chunk = self
                .store
                .messages(num, pos, u64::MAX, Direction::Ascending, limit)?;
            let Some(last) = chunk.last().map(|m| m.seq) else {
                return Ok((emptied, None));
            };
            *budget -= chunk.len();
            pos = last + 1;
            let theirs: Vec<u64> = chunk
                .iter()
                .filter(|m| *m.sender == **user && !m.recalled)
                .map(|m| m.seq)
                .collect();
            if theirs.is_empty() {
                continue;
            }
            let permit = self.writer.reserve().await?;
            let mut held = Vec::with_capacity(theirs.len());
            let rx = {
                let mut st = cell.lock();
                if st.require_live().is_err() {
                    return Ok((emptied, None));
                }
                let now = self.now();
                let mut ops = Vec::with_capacity(theirs.len() * 3);
                let mut deliveries = Vec::with_capacity(theirs.len());
                for seq in theirs {
                    let current = match st.edited.get(&seq) {
                        Some(m) => Some(m.clone()),
                        None => self.store.message(num, seq)?,
                    };
                    let Some(mut m) = current.filter(|m| !m.recalled) else {
                        continue;
                    };
                    let patched_before = m.edited_at.max(m.recalled_at);
                    if self.config.keep_message_versions {
                        ops.push(Op::PutMessageVersion {
                            conv: num,
                            seq,
                            version: u64::from(m.edit_count),
                            message: Bytes::from(m.encode_to_vec()),
                        });
                    }
                    empty(&mut m, now);
                    if patched_before > 0 {
                        ops.push(Op::DeletePatch {
                            conv: num,
                            at: patched_before,
                            seq,
                        });
                    }
                    ops.push(Op::PutPatch {
                        conv: num,
                        at: now,
                        seq,
                    });
                    ops.push(Op::PutMessage {
                        conv: num,
                        seq,
                        message: Bytes::from(m.encode_to_vec()),
                    });
                    st.edited.insert(seq, m.clone());
                    held.push((seq, m.clone()));
                    let push = pb::MessageUpdated {
                        kind: MessageUpdateKind::Recalled as i32,
                        message: Some(m),
                    };
                    deliveries.push(Delivery {
                        to: Recipients::Users(st.roster.clone()),
                        frame: protocol::push(pb::server_frame::Body::MessageUpdated(push)),
                        user_seq: 0,
                        except_session: 0,
                    });
                    emptied += 1;
                }
                self.writer.submit(permit, ops, deliveries, Vec::new())
            };
            super::history::settle(cell.clone(), rx, held).await?;
        }
    }

    /// The conversation after `w` in a walk over every live conversation (`None`: the walk is
    /// over).
    fn walk_on(&self, w: Walk) -> Result<Option<Walk>, Error> {
        let (mut kind, mut below) = (w.kind, w.conv);
        loop {
            if let Some(&conv) = self
                .store
                .conversations_of_kind(KINDS[kind] as i32, below, 1)?
                .first()
            {
                return Ok(Some(Walk { kind, conv, seq: 1 }));
            }
            kind += 1;
            if kind == KINDS.len() {
                return Ok(None);
            }
            below = u64::MAX;
        }
    }

    /// Takes `user` out of conversation `num` as its kind allows (see the module docs).
    async fn leave_for_deletion(&self, user: &UserId, num: u64) -> Result<(), Error> {
        let cell = match self.cell_by_num(num) {
            Ok(cell) => Some(cell),
            Err(Error::ConversationNotFound) => None,
            Err(e) => return Err(e),
        };
        let kind = cell.as_ref().map(|c| c.lock().kind());
        let as_user = Caller::user(user.clone(), 0);
        let backend = Caller::admin(&self.config.system_sender);
        let id = cell.as_ref().map(|c| c.id.to_string()).unwrap_or_default();
        let member = cell
            .as_ref()
            .is_some_and(|c| c.lock().members.contains_key(user));
        let result = match kind {
            _ if !member => Ok(()),
            Some(
                ConversationKind::Group | ConversationKind::System | ConversationKind::ChatRoom,
            ) => self.leave(&as_user, &id).await,
            Some(ConversationKind::Temporary) => {
                let others = cell.as_ref().is_some_and(|c| c.lock().members.len() > 1);
                if others {
                    self.remove_members(&backend, &id, &[user.to_string()])
                        .await
                        .map(|_| ())
                } else {
                    self.end_temporary(&backend, &id).await
                }
            }
            Some(ConversationKind::Direct) => {
                let cell = cell.clone().expect("a kind comes from a cell");
                self.drop_direct_side(user, &cell).await
            }
            _ => Ok(()),
        };
        match result {
            // Their leaving took their records of it along.
            Ok(()) if member => return Ok(()),
            // Not a member, or the conversation went meanwhile (expired, deleted): only their
            // own records of it are left.
            Ok(()) | Err(Error::ConversationNotFound | Error::ConversationExpired) => {}
            Err(e) => return Err(e),
        }
        let permit = self.writer.reserve().await?;
        let mut ops = vec![
            Op::DeleteUserConversation {
                user: user.clone(),
                conv: num,
            },
            Op::DeleteReadSeq {
                user: user.clone(),
                conv: num,
            },
        ];
        if cell.is_none() {
            ops.push(Op::DeleteMember {
                conv: num,
                user: user.clone(),
            });
        }
        let rx = self.writer.submit(permit, ops, Vec::new(), Vec::new());
        Ok(wait(rx).await?)
    }

    /// Drops `user`'s side of a direct conversation: their membership and list entry, and the
    /// pair's index entry. The other member keeps the conversation.
    async fn drop_direct_side(
        &self,
        user: &UserId,
        cell: &std::sync::Arc<super::ConvCell>,
    ) -> Result<(), Error> {
        let permit = self.writer.reserve().await?;
        let rx = {
            let mut st = cell.lock();
            st.require_live()?;
            if !st.members.contains_key(user) {
                return Ok(());
            }
            let me: BTreeSet<UserId> = [user.clone()].into();
            let mut ops = self.drop_members(&mut st, cell, &me);
            if let [a, b] = &st.record.pair[..] {
                let (a, b) = (UserId::from(a.as_str()), UserId::from(b.as_str()));
                self.directs.remove(&(a.clone(), b.clone()));
                ops.push(Op::DeleteDirect { a, b });
            }
            self.writer.submit(permit, ops, Vec::new(), Vec::new())
        };
        Ok(wait(rx).await?)
    }

    /// Deletes what belongs to `user` alone: their event log, list tombstones and the
    /// one-way deletes under them, blocks, profile, and any list entry left.
    async fn forget_user_records(&self, user: &UserId) -> Result<(), Error> {
        let mut ops = Vec::new();
        let (events, _) = self.store.user_events_after(user, 0, usize::MAX)?;
        // Expired, not deleted: the store's floor rises above them, so a device that comes
        // back later is told its replay was truncated.
        for e in events {
            ops.push(Op::ExpireUserEvent {
                user: user.clone(),
                seq: e.user_seq,
                before: i64::MAX,
            });
        }
        let mut convs: BTreeSet<u64> = self
            .store
            .tombstones(user)?
            .into_iter()
            .map(|(c, _)| c)
            .collect();
        for (conv, _) in self.store.user_conversations(user)? {
            convs.insert(conv);
            ops.push(Op::DeleteUserConversation {
                user: user.clone(),
                conv,
            });
            ops.push(Op::DeleteReadSeq {
                user: user.clone(),
                conv,
            });
        }
        for conv in convs {
            for seq in self.store.hidden_seqs(user, conv, 0, u64::MAX)? {
                ops.push(Op::DeleteHidden {
                    user: user.clone(),
                    conv,
                    seq,
                });
            }
            ops.push(Op::DeleteTombstone {
                user: user.clone(),
                conv,
            });
        }
        for (blocked, _) in self.store.user_blocks(user, "", usize::MAX)? {
            ops.push(Op::DeleteUserBlock {
                user: user.clone(),
                blocked,
            });
        }
        ops.push(Op::DeleteProfile { user: user.clone() });
        let permit = self.writer.reserve().await?;
        let generation = self.block_gen.clone();
        let stale: super::writer::AfterCommit = Box::new(move || {
            generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        });
        let rx = self
            .writer
            .submit_then(permit, ops, Vec::new(), Vec::new(), Some(stale));
        Ok(wait(rx).await?)
    }
}

/// Empties a message as a recall does: its content, attributes and mentions go; the sender,
/// seq and time stay.
fn empty(m: &mut Message, now: i64) {
    m.recalled = true;
    m.recalled_at = now;
    m.content = Bytes::new();
    m.attributes.clear();
    m.mentions.clear();
}

/// One line of a user's export.
#[derive(Debug, Clone)]
pub enum ExportLine {
    /// The user's profile (empty when never set); first.
    Profile(pb::Profile),
    /// One conversation of the user's list: the list entry, membership and read position.
    Conversation {
        id: String,
        kind: i32,
        entry: pb::UserConversationRecord,
        member: Option<pb::MemberRecord>,
        /// The user owns it (a group).
        owner: bool,
        read_seq: u64,
    },
    /// A message the user sent (in any live conversation).
    Message(Message),
}

/// Where an export goes on: the conversations after `c.<conv>`, or the messages, from
/// `m.<walk>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ExportAt {
    Start,
    Conversations { after: u64 },
    Messages(Walk),
}

impl ExportAt {
    /// A cursor an export of `user` gave: its position, then `.` and a tag binding it to the
    /// user (as a deletion's, [`cursor_tag`]). Empty: the start. An untagged position (as
    /// earlier versions gave) starts again; a tag of another user's export, or of another
    /// position, is refused (`None`), as is anything else.
    fn parse(s: &str, user: &str) -> Option<ExportAt> {
        if s.is_empty() {
            return Some(ExportAt::Start);
        }
        if let Some((position, tag)) = s.rsplit_once('.')
            && tag.len() == TAG_HEX
            && let Some(at) = Self::parse_position(position)
        {
            return (tag == export_tag(user, position)).then_some(at);
        }
        Self::parse_position(s).map(|_| ExportAt::Start)
    }

    fn parse_position(s: &str) -> Option<ExportAt> {
        let hex = |h: &str| u64::from_str_radix(h, 16).ok();
        if let Some(rest) = s.strip_prefix("c.") {
            return Some(ExportAt::Conversations { after: hex(rest)? });
        }
        let rest = s.strip_prefix("m.")?;
        if let Some((conv, seq)) = rest.split_once('.')
            && !seq.contains('.')
        {
            // `m.<conv>.<seq>` of earlier versions: the messages from the start again.
            hex(conv)?;
            hex(seq)?;
            return Some(ExportAt::Messages(Walk::START));
        }
        Walk::parse(rest.split('.')).map(ExportAt::Messages)
    }

    /// The cursor for going on from here with `user`'s export.
    fn cursor(self, user: &str) -> String {
        let position = match self {
            ExportAt::Start => return String::new(),
            ExportAt::Conversations { after } => format!("c.{after:x}"),
            ExportAt::Messages(w) => format!("m.{}", w.cursor()),
        };
        let tag = export_tag(user, &position);
        format!("{position}.{tag}")
    }
}

/// The tag of an export cursor (see [`deletion_tag`]): a cursor of one user's export is
/// refused for another's.
fn export_tag(user: &str, position: &str) -> String {
    cursor_tag(b"tidings user export\0", user, position)
}

/// A page of an export being written: where its lines go, and how much it holds.
struct Page<F> {
    /// Writes a line; the bytes it took.
    emit: F,
    lines: usize,
    bytes: usize,
    max_lines: usize,
    max_bytes: usize,
}

impl<F: FnMut(ExportLine) -> Result<usize, Error>> Page<F> {
    fn push(&mut self, line: ExportLine) -> Result<(), Error> {
        self.bytes = self.bytes.saturating_add((self.emit)(line)?);
        self.lines += 1;
        Ok(())
    }

    /// No line goes after this one: `user_export_page_max` lines, or
    /// `user_export_page_max_bytes` reached.
    fn full(&self) -> bool {
        self.lines >= self.max_lines || self.bytes >= self.max_bytes
    }
}

impl Registry {
    /// A page of `user`'s data, from `from` (a cursor of the previous page; empty: the
    /// start): their profile, then each conversation of their list, then the messages they
    /// sent in any live conversation (those they left included, found by a [`Walk`]), oldest
    /// first per conversation. Each line is handed to `emit`, which writes it and answers the
    /// bytes it took. The page ends after the line that reaches `user_export_page_max` lines
    /// or `user_export_page_max_bytes` bytes (its first line always goes), or once
    /// `history_scan_max` messages (or conversations) were looked at. Returns the next page's
    /// cursor, which goes on right after the last line emitted (`None`: this was the last).
    /// Reads the store: call it off the async workers.
    pub fn export_user(
        &self,
        user: &str,
        from: &str,
        emit: impl FnMut(ExportLine) -> Result<usize, Error>,
    ) -> Result<Option<String>, Error> {
        self.check_user_id(user)?;
        let mut at = ExportAt::parse(from, user)
            .ok_or_else(|| Error::InvalidArgument("cursor is not from an export".into()))?;
        let mut page = Page {
            emit,
            lines: 0,
            bytes: 0,
            max_lines: self.config.user_export_page_max,
            max_bytes: self.config.user_export_page_max_bytes,
        };
        if at == ExportAt::Start {
            page.push(ExportLine::Profile(self.profile_of(user)?))?;
            at = ExportAt::Conversations { after: 0 };
        }
        let list = self.store.user_conversations(user)?;
        if let ExportAt::Conversations { after } = at {
            for (num, entry) in list.iter().filter(|(n, _)| after == 0 || *n > after) {
                if page.full() {
                    return Ok(Some(
                        ExportAt::Conversations { after: *num - 1 }.cursor(user),
                    ));
                }
                let (id, kind, member, owner) = match self.cell_by_num(*num) {
                    Ok(cell) => {
                        let st = cell.lock();
                        let member = st.members.get(user).cloned();
                        (
                            cell.id.to_string(),
                            st.record.kind,
                            member,
                            st.record.owner == user,
                        )
                    }
                    Err(Error::ConversationNotFound) => {
                        (self.public_id(*num)?, entry.kind, None, false)
                    }
                    Err(e) => return Err(e),
                };
                page.push(ExportLine::Conversation {
                    id,
                    kind,
                    entry: entry.clone(),
                    member,
                    owner,
                    read_seq: self.store.read_seq(user, *num)?,
                })?;
            }
            at = ExportAt::Messages(Walk::START);
        }
        let ExportAt::Messages(mut w) = at else {
            unreachable!("the conversations lead to the messages");
        };
        let mut scanned = 0usize;
        loop {
            if w.seq > 0
                && let Some(seq) = self.export_messages_of(user, w, &mut page, &mut scanned)?
            {
                return Ok(Some(ExportAt::Messages(Walk { seq, ..w }).cursor(user)));
            }
            // Going to the next conversation counts as a message looked at, empty or not.
            if page.full() || scanned >= self.config.history_scan_max {
                return Ok(Some(ExportAt::Messages(w.after()).cursor(user)));
            }
            scanned += 1;
            match self.walk_on(w)? {
                Some(next) => w = next,
                None => return Ok(None),
            }
        }
    }

    /// Adds to `page` the messages `user` sent in `w.conv` from `w.seq` on, oldest first,
    /// until the page is full (see [`Page::full`]) or `history_scan_max` messages were looked
    /// at, counted in `scanned`; then the seq right after the last one looked at, to go on
    /// from (`None`: the conversation is done).
    fn export_messages_of<F: FnMut(ExportLine) -> Result<usize, Error>>(
        &self,
        user: &str,
        w: Walk,
        page: &mut Page<F>,
        scanned: &mut usize,
    ) -> Result<Option<u64>, Error> {
        let mut pos = w.seq;
        loop {
            let budget = self.config.history_scan_max.saturating_sub(*scanned);
            if page.full() || budget == 0 {
                return Ok(Some(pos));
            }
            let chunk = self.store.messages(
                w.conv,
                pos,
                u64::MAX,
                Direction::Ascending,
                EXPORT_CHUNK.min(budget),
            )?;
            if chunk.is_empty() {
                return Ok(None);
            }
            for m in chunk {
                *scanned += 1;
                pos = m.seq + 1;
                if *m.sender == *user {
                    page.push(ExportLine::Message(m))?;
                    if page.full() {
                        break;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_cursors_round_trip_belong_to_their_user_and_earlier_ones_start_again() {
        for at in [
            ExportAt::Conversations { after: 0x2a },
            ExportAt::Messages(Walk {
                kind: 1,
                conv: 7,
                seq: 300,
            }),
        ] {
            assert_eq!(ExportAt::parse(&at.cursor("ann"), "ann"), Some(at));
            assert_eq!(ExportAt::parse(&at.cursor("bob"), "ann"), None);
            let position = at.cursor("ann").rsplit_once('.').unwrap().0.to_owned();
            // Untagged, as earlier versions gave them: from the start.
            assert_eq!(ExportAt::parse(&position, "ann"), Some(ExportAt::Start));
        }
        let tag = ExportAt::Conversations { after: 1 }.cursor("ann");
        let tag = tag.rsplit_once('.').unwrap().1;
        assert_eq!(ExportAt::parse(&format!("c.2.{tag}"), "ann"), None);
        assert_eq!(ExportAt::parse("", "ann"), Some(ExportAt::Start));
        assert_eq!(ExportAt::parse("nope", "ann"), None);
    }

    #[test]
    fn deletion_cursors_round_trip_and_earlier_ones_start_again() {
        for at in [
            DeleteAt::Leave { from: 0x2a },
            DeleteAt::Messages(Walk::START),
            DeleteAt::Messages(Walk {
                kind: 1,
                conv: 7,
                seq: 300,
            }),
            DeleteAt::Forget,
        ] {
            assert_eq!(DeleteAt::parse(&at.cursor("ann"), "ann"), Ok(at));
            // Another user's cursor, or one whose position was changed, is refused.
            assert_eq!(
                DeleteAt::parse(&at.cursor("bob"), "ann"),
                Err(BadCursor::OtherUser)
            );
            let tag = at.cursor("ann").rsplit_once('.').unwrap().1.to_owned();
            assert_eq!(
                DeleteAt::parse(&format!("l.0.{tag}"), "ann"),
                Err(BadCursor::OtherUser)
            );
            // Untagged, as earlier versions gave them: from the start.
            assert_eq!(DeleteAt::parse(&at.position(), "ann"), Ok(DeleteAt::START));
        }
        assert_eq!(DeleteAt::parse("", "ann"), Ok(DeleteAt::START));
        assert_eq!(DeleteAt::parse("2a.1", "ann"), Ok(DeleteAt::START));
        for bad in [
            "zz", "m.5.1.1", "m.1.1", "l", "l.x", "f.1", "2a.1.1", "2a.zz",
        ] {
            assert_eq!(
                DeleteAt::parse(bad, "ann"),
                Err(BadCursor::Malformed),
                "{bad}"
            );
        }
    }
}
