//! Read positions and receipts.
//!
//! A member's read position moves forward only (`MarkRead`); a device acknowledges what it
//! received (`AckDelivered`), and reading implies delivery. Both are per user, kept in the store,
//! and told to the user's other devices (read) and to the senders of the messages in the newly
//! covered range that asked for receipts. Those messages are found through the store's
//! receipt index (conv ‖ seq → sender), read after the position is durable, so a message sent
//! just before the read (queued earlier on the same conversation) is always covered.

use super::writer::wait;
use super::{Caller, ConvCell, Error, Registry};
use crate::hub::{Delivery, Recipients};
use crate::protocol::pb::{self, ReceiptKind};
use crate::protocol::{self};
use crate::store::{Op, UserId};
use std::collections::BTreeSet;

impl Registry {
    /// Moves the caller's read position forward to `seq` (clamped to the newest message).
    pub async fn mark_read(&self, caller: &Caller, id: &str, seq: u64) -> Result<(), Error> {
        let cell = self.cell(id)?;
        let permit = self.writer.reserve().await?;
        let moved = {
            let mut st = cell.lock();
            st.require_member(&caller.user)?;
            st.require_stored("read positions")?;
            let target = seq.min(st.last_seq);
            let current = self.read_seq(&mut st, cell.num, &caller.user)?;
            if target <= current {
                None
            } else {
                st.reads.insert(caller.user.clone(), target);
                let mut rec = self.entry(&mut st, cell.num, &caller.user)?;
                let now = self.now();
                rec.changed_at = now;
                let delivered_from = rec.delivered_seq;
                rec.delivered_seq = rec.delivered_seq.max(target);
                let cleared = rec.cleared_seq;
                let ops = vec![
                    Op::PutReadSeq {
                        user: caller.user.clone(),
                        conv: cell.num,
                        seq: target,
                    },
                    Self::put_entry(&mut st, cell.num, &caller.user, rec),
                ];
                // The same count the list shows: nothing cleared one-way or sent silently
                // is unread.
                let seen = target.max(cleared);
                let silent = self
                    .silent_of(&mut st, cell.num)?
                    .map_or(0, |s| super::silent_between(&s, seen, st.last_seq));
                let push = pb::ReadPosition {
                    conversation_id: cell.id.to_string(),
                    read_seq: target,
                    unread: st.last_seq.saturating_sub(seen).saturating_sub(silent) as u32,
                };
                let frame = protocol::push(pb::server_frame::Body::ReadPosition(push));
                let d = Delivery {
                    to: Recipients::User(caller.user.clone()),
                    frame,
                    user_seq: 0,
                    except_session: caller.session,
                };
                let records = if self.webhook.read {
                    let read = pb::ReadEvent {
                        conversation_id: cell.id.to_string(),
                        user: caller.user.to_string(),
                        read_seq: target,
                        message_id: self.message_id_at(&mut st, cell.num, target)?,
                        at: now,
                    };
                    vec![crate::webhooks::record(pb::outbox_event::Event::Read(read))]
                } else {
                    Vec::new()
                };
                let rx = self.writer.submit_with_records(
                    permit,
                    ops,
                    vec![d],
                    Vec::new(),
                    None,
                    records,
                );
                Some((rx, current, delivered_from, target, now))
            }
        };
        if let Some((rx, read_from, delivered_from, target, now)) = moved {
            wait(rx).await?;
            if delivered_from < target {
                self.send_receipts(
                    caller,
                    &cell,
                    delivered_from,
                    target,
                    ReceiptKind::Delivered,
                    now,
                )?;
            }
            self.send_receipts(caller, &cell, read_from, target, ReceiptKind::Read, now)?;
        }
        Ok(())
    }

    /// How far the other members have received and read: for each (at most `member_page_max`,
    /// by user id), the times of the newest message they received and read (0: none). For
    /// members only; what LeanCloud's `conv/max_read` answers.
    pub fn receipt_times(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<Vec<(String, i64, i64)>, Error> {
        let cell = self.cell(id)?;
        let positions = {
            let mut st = cell.lock();
            st.require_member(&caller.user)?;
            let roster = st.roster.clone();
            let mut out = Vec::new();
            for u in roster
                .iter()
                .filter(|u| **u != caller.user)
                .take(self.config.member_page_max as usize)
            {
                let read = self.read_seq(&mut st, cell.num, u)?;
                let delivered = self.entry(&mut st, cell.num, u)?.delivered_seq.max(read);
                out.push((u.to_string(), delivered, read));
            }
            out
        };
        let time = |seq: u64| -> Result<i64, Error> {
            Ok(match seq {
                0 => 0,
                s => self
                    .store
                    .message(cell.num, s)?
                    .map_or(0, |m| m.server_time),
            })
        };
        positions
            .into_iter()
            .map(|(u, d, r)| Ok((u, time(d)?, time(r)?)))
            .collect()
    }

    /// Records that a device of the caller received everything up to `seq`.
    pub async fn ack_delivered(&self, caller: &Caller, id: &str, seq: u64) -> Result<(), Error> {
        let cell = self.cell(id)?;
        let permit = self.writer.reserve().await?;
        let moved = {
            let mut st = cell.lock();
            st.require_member(&caller.user)?;
            st.require_stored("delivery positions")?;
            let target = seq.min(st.last_seq);
            let mut rec = self.entry(&mut st, cell.num, &caller.user)?;
            let from = rec.delivered_seq;
            if target <= from {
                None
            } else {
                rec.delivered_seq = target;
                let ops = vec![Self::put_entry(&mut st, cell.num, &caller.user, rec)];
                let rx = self.writer.submit(permit, ops, Vec::new(), Vec::new());
                Some((rx, from, target, self.now()))
            }
        };
        if let Some((rx, from, target, now)) = moved {
            wait(rx).await?;
            self.send_receipts(caller, &cell, from, target, ReceiptKind::Delivered, now)?;
        }
        Ok(())
    }

    /// Tells the senders of receipt-asking messages in `from+1..=to` (other than the caller)
    /// that the caller received or read up to `to`.
    pub(super) fn send_receipts(
        &self,
        caller: &Caller,
        cell: &ConvCell,
        from: u64,
        to: u64,
        kind: ReceiptKind,
        at: i64,
    ) -> Result<(), Error> {
        let senders: BTreeSet<UserId> = self
            .store
            .receipts_wanted(cell.num, from + 1, to + 1)?
            .into_iter()
            .map(|(_, s)| s)
            .filter(|s| *s != caller.user)
            .collect();
        if senders.is_empty() {
            return Ok(());
        }
        // Imported messages kept the ids they were imported with.
        let message_id = self.message_id_at(&mut cell.lock(), cell.num, to)?;
        let receipt = pb::Receipt {
            conversation_id: cell.id.to_string(),
            user_id: caller.user.to_string(),
            kind: kind as i32,
            seq: to,
            at,
            message_id,
        };
        let frame = protocol::push(pb::server_frame::Body::Receipt(receipt));
        self.hub().deliver(&Delivery {
            to: Recipients::Users(senders.into_iter().collect()),
            frame,
            user_seq: 0,
            except_session: 0,
        });
        Ok(())
    }
}
