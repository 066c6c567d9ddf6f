//! Imports from another platform: conversations and their history created by a trusted caller
//! that gives the times, the creator and the ids they had there (kept as aliases).
//!
//! The same rules as everywhere else apply (user ids, name and attribute sizes, message sizes,
//! member limits); what differs is who may set what. Nothing is pushed and no conversation
//! events are logged: to the members an imported conversation is simply there, as it was.

use super::writer::wait;
use super::{Caller, Error, MAX_ALIAS_BYTES, Registry};
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
    /// When it was created there (ms).
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
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ImportedMessages {
    pub imported: usize,
    /// Already imported (by alias).
    pub skipped: usize,
    /// Refused, with the reason.
    pub failed: Vec<(String, String)>,
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
                created_at: req.created_at.max(0),
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

    /// Appends imported messages (oldest first) to imported conversation `id`, giving them
    /// the next seqs. Messages already imported (by alias) are skipped. Refused once the
    /// conversation holds a message that was not imported: history is only added in front of
    /// what was sent here.
    pub async fn import_messages(
        &self,
        id: &str,
        messages: Vec<ImportMessage>,
    ) -> Result<ImportedMessages, Error> {
        let cell = self.cell(id)?;
        let _one = self.imports.lock().await;
        if let Some(last) = self.store.last_message(cell.num)?
            && self.store.message_alias(cell.num, &last.id)? != Some(last.seq)
        {
            return Err(Error::PermissionDenied(
                "messages were sent in this conversation after it was imported",
            ));
        }
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
                    } else {
                        Ok(())
                    }
                })
                .and_then(|()| self.check_user_id(&m.sender))
                .and_then(|()| self.check_size(&m.content, &m.attributes));
            if let Err(e) = check {
                out.failed.push((m.alias, e.to_string()));
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
        for chunk in valid.chunks(BATCH) {
            let permit = self.writer.reserve().await?;
            let rx = {
                let mut st = cell.lock();
                st.require_live()?;
                let mut ops = Vec::with_capacity(chunk.len() * 3);
                for m in chunk {
                    let seq = st.last_seq + 1;
                    let at = m.at.max(st.last_ts);
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
                }
                let through = cell.committed_through(st.last_seq);
                self.writer
                    .submit_then(permit, ops, Vec::new(), Vec::new(), Some(through))
            };
            wait(rx).await?;
            out.imported += chunk.len();
        }
        Ok(out)
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
