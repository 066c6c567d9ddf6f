//! Imports from another platform: conversations and their history created by a trusted caller
//! that gives the times, the creator and the ids they had there (kept as aliases).
//!
//! The same rules as everywhere else apply (user ids, name and attribute sizes, message sizes,
//! member limits); what differs is who may set what. Nothing is pushed and no conversation
//! events are logged: to the members an imported conversation is simply there, as it was.

use super::writer::wait;
use super::{Caller, ConvState, Error, MAX_ALIAS_BYTES, Registry};
use crate::protocol::pb::{ConversationKind, ConversationRecord, Message};
use crate::protocol::{self};
use crate::store::{Op, UserId};
use bytes::Bytes;
use prost::Message as _;
use std::collections::{BTreeMap, BTreeSet};

/// A conversation to import.
#[derive(Debug, Clone, Default)]
pub struct ImportConversation {
    /// Its id on the platform it comes from; its public id here from now on.
    pub alias: String,
    pub name: String,
    pub attributes: BTreeMap<String, String>,
    /// The creator: the owner while a member (else the first member is).
    pub owner: String,
    /// In join order.
    pub members: Vec<String>,
    /// When it was created there (ms; 0 or less: now, the time of the import).
    pub created_at: i64,
    pub unique: bool,
}

/// One message to import.
#[derive(Debug, Clone, Default)]
pub struct ImportMessage {
    /// Its id on the platform it comes from; its id here too.
    pub alias: String,
    pub sender: String,
    /// When it was sent there (ms).
    pub at: i64,
    pub kind: i32,
    pub content: Bytes,
    pub attributes: BTreeMap<String, String>,
    /// When it was last edited there (ms; 0: never).
    pub edited_at: i64,
    /// Recalled there (content emptied, as a recall here does).
    pub recalled: bool,
}

/// What an import of messages did.
#[derive(Debug, Default, Clone)]
pub struct ImportedMessages {
    pub imported: usize,
    /// Already imported (by alias).
    pub skipped: usize,
    /// Refused, with the reason.
    pub failed: Vec<(String, Error)>,
}

/// Messages written per commit.
const BATCH: usize = 500;

fn check_alias(alias: &str, what: &str) -> Result<(), Error> {
    if alias.is_empty()
        || alias.len() > MAX_ALIAS_BYTES
        || alias.bytes().any(|b| b.is_ascii_control() || b == b' ')
    {
        return Err(Error::InvalidArgument(format!(
            "{what} id {alias:?}: 1 to {MAX_ALIAS_BYTES} bytes, no spaces or control characters"
        )));
    }
    Ok(())
}

impl Registry {
    /// The conversation imported under `req.alias`, created (as a group) when there is none
    /// yet. Returns its id and whether it was created now.
    pub async fn import_conversation(
        &self,
        req: ImportConversation,
    ) -> Result<(String, bool), Error> {
        check_alias(&req.alias, "conversation")?;
        if protocol::parse_conversation_id(&req.alias).is_some() {
            return Err(Error::InvalidArgument(format!(
                "conversation id {:?} looks like a tidings id",
                req.alias
            )));
        }
        // `|` separates the parts of list keys (`p2p|bob` names a direct conversation), and
        // `_tmp:` starts the ids of temporary conversations: an alias of either shape would
        // be read as the other thing where ids and keys are taken.
        if req.alias.contains('|') || req.alias.starts_with(protocol::TEMPORARY_PREFIX) {
            return Err(Error::InvalidArgument(format!(
                "conversation id {:?}: no '|' (it separates the parts of keys like p2p|user) \
                 and no {:?} prefix (that of temporary conversations)",
                req.alias,
                protocol::TEMPORARY_PREFIX
            )));
        }
        self.check_attributes(&req.name, &req.attributes)?;
        let _one = self.imports.lock().await;
        if let Some(num) = self.store.conversation_alias(&req.alias)? {
            return Ok((self.public_id(num)?, false));
        }
        // In the order given (join order), without repeats.
        let mut seen = BTreeSet::new();
        let mut members: Vec<UserId> = Vec::with_capacity(req.members.len());
        for m in &req.members {
            self.check_user_id(m)?;
            if seen.insert(m.as_str()) {
                members.push(UserId::from(m.as_str()));
            }
        }
        if members.is_empty() {
            return Err(Error::InvalidArgument("no members".into()));
        }
        if members.len() > self.config.max_group_members {
            return Err(Error::LimitExceeded(format!(
                "{} members; max_group_members is {}",
                members.len(),
                self.config.max_group_members
            )));
        }
        self.check_memberships(&members)?;
        // The creator owns it while a member (first in join order, as when created here);
        // otherwise the longest member, as when an owner leaves.
        let owner = if seen.contains(req.owner.as_str()) {
            UserId::from(req.owner.as_str())
        } else {
            members[0].clone()
        };
        let mut ordered = vec![owner.clone()];
        ordered.extend(members.iter().filter(|m| **m != owner).cloned());
        let caller = Caller::user(owner.clone(), 0);
        let permit = self.writer.reserve().await?;
        let (cell, rx) = {
            let mut next = self.next_conv.lock().unwrap_or_else(|p| p.into_inner());
            let record = ConversationRecord {
                kind: ConversationKind::Group as i32,
                name: req.name,
                attributes: req.attributes,
                owner: owner.to_string(),
                created_at: if req.created_at > 0 {
                    req.created_at
                } else {
                    self.now()
                },
                unique: req.unique,
                alias: req.alias.clone(),
                ..Default::default()
            };
            // The created events are not logged: to the members it was always there.
            let (cell, mut ops, _events) = self.new_normal(&mut next, &caller, record, &ordered);
            ops.push(Op::PutConversationAlias {
                alias: req.alias,
                conv: cell.num,
            });
            (
                cell,
                self.writer.submit(permit, ops, Vec::new(), Vec::new()),
            )
        };
        wait(rx).await?;
        Ok((cell.id.to_string(), true))
    }

    /// Appends imported messages to conversation `id` (any kind that keeps history), giving
    /// them the next seqs in time order (the order given breaks ties) and keeping their ids
    /// (aliases) and times. Messages already imported (by alias) are skipped.
    ///
    /// History is imported only in front of what is sent here: refused with
    /// [`Error::ImportConflict`] once the conversation holds a message that was not imported
    /// (an import may continue, in later calls, as long as nothing was sent). A message older
    /// than the newest one already there fails on its own ([`Error::ImportOutOfOrder`]), so
    /// seqs stay gapless and `server_time` never decreases with seq. Nothing is pushed and no
    /// webhook event is written: to the members it is history that was always there.
    ///
    /// Not atomic over batches of more than [`BATCH`] messages: what was committed stays, and
    /// calling again with the same messages finishes the job.
    pub async fn import_messages(
        &self,
        id: &str,
        messages: Vec<ImportMessage>,
    ) -> Result<ImportedMessages, Error> {
        let cell = self.cell(id)?;
        let _one = self.imports.lock().await;
        {
            let mut st = cell.lock();
            st.require_live()?;
            st.require_stored("imported history")?;
            let through = self.imported_through(&mut st, cell.num)?;
            if st.last_seq != through {
                return Err(Error::ImportConflict);
            }
        }
        let now = self.now();
        let mut out = ImportedMessages::default();
        let mut fresh = BTreeSet::new();
        let mut valid = Vec::with_capacity(messages.len());
        for m in messages {
            let check = check_alias(&m.alias, "message")
                .and_then(|()| {
                    if protocol::parse_message_id(&m.alias).is_some() {
                        Err(Error::InvalidArgument(
                            "looks like a tidings message id".into(),
                        ))
                    } else if m.at <= 0 || m.at > now {
                        Err(Error::InvalidArgument(format!(
                            "time {} is not between the epoch and now",
                            m.at
                        )))
                    } else {
                        Ok(())
                    }
                })
                .and_then(|()| self.check_user_id(&m.sender))
                .and_then(|()| self.check_size(&m.content, &m.attributes));
            if let Err(e) = check {
                out.failed.push((m.alias, e));
                continue;
            }
            if self.store.message_alias(cell.num, &m.alias)?.is_some()
                || !fresh.insert(m.alias.clone())
            {
                out.skipped += 1;
                continue;
            }
            valid.push(m);
        }
        // Time order; a stable sort keeps the order given for equal times.
        valid.sort_by_key(|m| m.at);
        for chunk in valid.chunks(BATCH) {
            let permit = self.writer.reserve().await?;
            let rx = {
                let mut st = cell.lock();
                st.require_live()?;
                // A send may have slipped in since the last batch.
                if Some(st.last_seq) != st.imported {
                    return Err(Error::ImportConflict);
                }
                let mut ops = Vec::with_capacity(chunk.len() * 3);
                let mut floor = if st.last_seq > 0 { st.last_ts } else { 0 };
                let mut written = 0;
                for m in chunk {
                    if m.at < floor {
                        out.failed
                            .push((m.alias.clone(), Error::ImportOutOfOrder(floor)));
                        continue;
                    }
                    let seq = st.last_seq + 1;
                    let at = m.at;
                    let mut message = Message {
                        id: m.alias.clone(),
                        conversation_id: cell.id.to_string(),
                        seq,
                        sender: m.sender.clone(),
                        r#type: m.kind,
                        content: m.content.clone(),
                        attributes: m.attributes.clone(),
                        server_time: at,
                        ..Default::default()
                    };
                    let patched = m.edited_at.max(at);
                    if m.recalled {
                        message.content = Bytes::new();
                        message.attributes.clear();
                        message.recalled = true;
                        message.recalled_at = patched;
                    } else if m.edited_at > 0 {
                        message.edited_at = patched;
                        message.edit_count = 1;
                    }
                    if m.recalled || m.edited_at > 0 {
                        ops.push(Op::PutPatch {
                            conv: cell.num,
                            at: patched,
                            seq,
                        });
                    }
                    ops.push(Op::PutMessage {
                        conv: cell.num,
                        seq,
                        message: Bytes::from(message.encode_to_vec()),
                    });
                    ops.push(Op::PutMessageAlias {
                        conv: cell.num,
                        alias: m.alias.clone(),
                        seq,
                    });
                    st.last_seq = seq;
                    st.last_ts = at;
                    st.imported = Some(seq);
                    floor = at;
                    written += 1;
                }
                out.imported += written;
                // Every message of the batch was out of order: nothing to write.
                (written > 0).then(|| {
                    let through = cell.committed_through(st.last_seq);
                    self.writer
                        .submit_then(permit, ops, Vec::new(), Vec::new(), Some(through))
                })
            };
            if let Some(rx) = rx {
                wait(rx).await?;
            }
        }
        Ok(out)
    }

    /// The newest seq of the run `1..=n` of imported messages conversation `num` starts with
    /// (0: none). Imports only ever go in front of messages sent here, so imported messages
    /// are always such a run; found once per load by bisection (an imported message's id is
    /// its alias, never the id a message sent here gets).
    pub(super) fn imported_through(&self, st: &mut ConvState, num: u64) -> Result<u64, Error> {
        if let Some(n) = st.imported {
            return Ok(n);
        }
        let imported = |seq: u64| -> Result<bool, Error> {
            Ok(self
                .store
                .message(num, seq)?
                .is_some_and(|m| m.id != protocol::message_id(num, seq)))
        };
        let mut n = 0;
        if st.durable_seq > 0 && imported(1)? {
            let (mut lo, mut hi) = (1, st.durable_seq);
            while lo < hi {
                let mid = lo + (hi - lo).div_ceil(2);
                if imported(mid)? {
                    lo = mid;
                } else {
                    hi = mid - 1;
                }
            }
            n = lo;
        }
        st.imported = Some(n);
        Ok(n)
    }

    /// The id of message `seq` of conversation `num`: the alias it was imported under, else
    /// the id messages sent here get.
    pub(super) fn message_id_at(
        &self,
        st: &mut ConvState,
        num: u64,
        seq: u64,
    ) -> Result<String, Error> {
        if seq > 0
            && seq <= self.imported_through(st, num)?
            && let Some(m) = self.store.message(num, seq)?
        {
            return Ok(m.id);
        }
        Ok(protocol::message_id(num, seq))
    }

    /// Sets imported read positions of conversation `id`: each user has read up to the newest
    /// message sent at or before the time given (`None`: everything there is). A position is
    /// never moved back, and only members get one.
    pub async fn import_reads(
        &self,
        id: &str,
        reads: &[(String, Option<i64>)],
    ) -> Result<usize, Error> {
        let cell = self.cell(id)?;
        let last = self.committed_last(cell.num)?;
        let mut wanted = Vec::with_capacity(reads.len());
        for (user, at) in reads {
            let seq = match at {
                None => last,
                Some(t) => self.seq_from_time(cell.num, *t, true, last)? - 1,
            };
            wanted.push((UserId::from(user.as_str()), seq));
        }
        let permit = self.writer.reserve().await?;
        let (rx, n) = {
            let mut st = cell.lock();
            st.require_live()?;
            let mut ops = Vec::new();
            for (user, seq) in wanted {
                if !st.members.contains_key(&user) {
                    continue;
                }
                if self.read_seq(&mut st, cell.num, &user)? >= seq {
                    continue;
                }
                st.reads.insert(user.clone(), seq);
                ops.push(Op::PutReadSeq {
                    user,
                    conv: cell.num,
                    seq,
                });
            }
            let n = ops.len();
            (self.writer.submit(permit, ops, Vec::new(), Vec::new()), n)
        };
        wait(rx).await?;
        Ok(n)
    }

    /// The members of conversation `id` (for an importer that sets everyone's read position).
    pub fn import_members(&self, id: &str) -> Result<Vec<String>, Error> {
        let cell = self.cell(id)?;
        let st = cell.lock();
        Ok(st.roster.iter().map(|u| u.to_string()).collect())
    }
}
