//! A user's data, deleted or exported for the app's backend, in bounded steps.
//!
//! Deleting walks the user's conversations in number order. In each, the messages they sent
//! are emptied as a recall empties them (unless `user_delete_keep_messages`), then they leave
//! it as the conversation's kind allows: a group by leaving (an owner hands it to the
//! longest-standing member), a temporary conversation by removal (ended when they were its
//! last member), a system conversation by unsubscribing, a direct conversation by dropping
//! their side (the other member keeps it and its history; the pair's index entry goes, so a
//! new direct conversation between the same ids starts afresh). Last, the records that belong
//! to the user alone go: their event log, list tombstones, one-way deletes, blocks, profile.
//! A call does at most `user_delete_step_max` units of work (a message looked at, a
//! conversation left) and says where the next one goes on; everything it did is committed, so
//! calling again, from the cursor or from the start, finishes the job.

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

/// Where a deletion goes on: a conversation, and the first seq of it not looked at yet.
fn parse_cursor(cursor: &str) -> Option<(u64, u64)> {
    if cursor.is_empty() {
        return Some((0, 0));
    }
    let (conv, seq) = cursor.split_once('.')?;
    Some((
        u64::from_str_radix(conv, 16).ok()?,
        u64::from_str_radix(seq, 16).ok()?,
    ))
}

fn cursor(conv: u64, seq: u64) -> String {
    format!("{conv:x}.{seq:x}")
}

impl Registry {
    /// Deletes one user's data, at most `user_delete_step_max` units of work per call (see
    /// the module docs). Their live sessions are closed first, every call. Idempotent.
    pub async fn delete_user(&self, user: &str, from: &str) -> Result<DeleteStep, Error> {
        self.check_user_id(user)?;
        let (from_conv, from_seq) = parse_cursor(from)
            .ok_or_else(|| Error::InvalidArgument("cursor is not from a deletion".into()))?;
        let user = UserId::from(user);
        let mut step = DeleteStep {
            sessions_closed: self.disconnect(&user, None)?,
            ..Default::default()
        };
        let mut budget = self.config.user_delete_step_max;
        for (num, _) in self.store.user_conversations(&user)? {
            if num < from_conv {
                continue;
            }
            if budget == 0 {
                step.cursor = cursor(num, 1);
                return Ok(step);
            }
            if !self.config.user_delete_keep_messages {
                let start = if num == from_conv { from_seq.max(1) } else { 1 };
                let (emptied, next) = self
                    .empty_messages_of(&user, num, start, &mut budget)
                    .await?;
                step.messages_emptied += emptied;
                if let Some(next) = next {
                    step.cursor = cursor(num, next);
                    return Ok(step);
                }
                if budget == 0 {
                    step.cursor = cursor(num, u64::MAX);
                    return Ok(step);
                }
            }
            self.leave_for_deletion(&user, num).await?;
            budget -= 1;
            step.conversations_left += 1;
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
            wait(rx).await?;
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
        for e in events {
            ops.push(Op::DeleteUserEvent {
                user: user.clone(),
                seq: e.user_seq,
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
    /// A message the user sent (in a conversation of their list).
    Message(Message),
}

/// Where an export goes on: the conversations after `c.<conv>`, or the messages of
/// conversation `m.<conv>.<seq>` from that seq.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ExportAt {
    Start,
    Conversations { after: u64 },
    Messages { conv: u64, seq: u64 },
}

impl ExportAt {
    fn parse(s: &str) -> Option<ExportAt> {
        if s.is_empty() {
            return Some(ExportAt::Start);
        }
        let hex = |h: &str| u64::from_str_radix(h, 16).ok();
        if let Some(rest) = s.strip_prefix("c.") {
            return Some(ExportAt::Conversations { after: hex(rest)? });
        }
        let (conv, seq) = s.strip_prefix("m.")?.split_once('.')?;
        Some(ExportAt::Messages {
            conv: hex(conv)?,
            seq: hex(seq)?,
        })
    }

    fn cursor(self) -> String {
        match self {
            ExportAt::Start => String::new(),
            ExportAt::Conversations { after } => format!("c.{after:x}"),
            ExportAt::Messages { conv, seq } => format!("m.{conv:x}.{seq:x}"),
        }
    }
}

impl Registry {
    /// A page of `user`'s data, from `from` (a cursor of the previous page; empty: the
    /// start): their profile, then each conversation of their list, then the messages they
    /// sent in those, oldest first per conversation. At most `user_export_page_max` lines,
    /// and at most `history_scan_max` messages looked at, per page. Returns the lines and the
    /// next page's cursor (`None`: this was the last).
    pub fn export_user(
        &self,
        user: &str,
        from: &str,
    ) -> Result<(Vec<ExportLine>, Option<String>), Error> {
        self.check_user_id(user)?;
        let mut at = ExportAt::parse(from)
            .ok_or_else(|| Error::InvalidArgument("cursor is not from an export".into()))?;
        let max = self.config.user_export_page_max;
        let mut lines = Vec::new();
        if at == ExportAt::Start {
            lines.push(ExportLine::Profile(self.profile_of(user)?));
            at = ExportAt::Conversations { after: 0 };
        }
        let list = self.store.user_conversations(user)?;
        if let ExportAt::Conversations { after } = at {
            for (num, entry) in list.iter().filter(|(n, _)| after == 0 || *n > after) {
                if lines.len() >= max {
                    return Ok((
                        lines,
                        Some(ExportAt::Conversations { after: *num - 1 }.cursor()),
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
                lines.push(ExportLine::Conversation {
                    id,
                    kind,
                    entry: entry.clone(),
                    member,
                    owner,
                    read_seq: self.store.read_seq(user, *num)?,
                });
            }
            at = ExportAt::Messages { conv: 0, seq: 1 };
        }
        let ExportAt::Messages {
            conv: from_conv,
            seq: from_seq,
        } = at
        else {
            unreachable!("the conversations lead to the messages");
        };
        let mut scanned = 0usize;
        for (num, _) in list.iter().filter(|(n, _)| *n >= from_conv) {
            if self.cell_by_num(*num).is_err() {
                continue;
            }
            let mut pos = if *num == from_conv {
                from_seq.max(1)
            } else {
                1
            };
            loop {
                let room = max - lines.len();
                let budget = self.config.history_scan_max - scanned;
                if room == 0 || budget == 0 {
                    let next = ExportAt::Messages {
                        conv: *num,
                        seq: pos,
                    };
                    return Ok((lines, Some(next.cursor())));
                }
                let chunk = self.store.messages(
                    *num,
                    pos,
                    u64::MAX,
                    Direction::Ascending,
                    CHUNK.min(budget),
                )?;
                let Some(last) = chunk.last().map(|m| m.seq) else {
                    break;
                };
                for m in chunk {
                    scanned += 1;
                    pos = m.seq + 1;
                    if *m.sender == *user {
                        lines.push(ExportLine::Message(m));
                        if lines.len() == max {
                            break;
                        }
                    }
                }
                debug_assert!(pos > last || lines.len() == max);
            }
        }
        Ok((lines, None))
    }
}
