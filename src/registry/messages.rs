//! Sending, catch-up, history and read positions.

use super::writer::wait;
use super::{Caller, Error, Registry};
use crate::hub::{Delivery, Recipients};
use crate::protocol::pb::{self, Message, SendAck};
use crate::protocol::{self, message_id};
use crate::store::{Op, UserId};
use bytes::Bytes;
use dashmap::DashMap;
use prost::Message as _;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::oneshot;

/// What a send request carries.
#[derive(Debug, Clone, Default)]
pub struct SendRequest {
    pub client_message_id: String,
    pub kind: i32,
    pub content: Bytes,
    pub attributes: BTreeMap<String, String>,
    pub mentions: Vec<String>,
    /// Mentions every member (@all).
    pub mention_all: bool,
    pub transient: bool,
    pub want_receipts: bool,
    /// The app's backend only: stored and delivered, but moving no member's list entry and
    /// no unread count (a notice, not a message that asks for attention).
    pub silent: bool,
}

type DedupKey = (u64, UserId, String);
type Waiters = Vec<oneshot::Sender<Result<SendAck, Error>>>;

/// Sends in flight by client message id, so a retry that arrives before the first attempt is
/// durable waits for it instead of storing a second copy.
#[derive(Default)]
pub(super) struct Inflight(DashMap<DedupKey, Waiters>);

/// Owns an in-flight key; releasing it (also on cancellation) answers the waiters.
struct InflightGuard<'a> {
    map: &'a Inflight,
    key: DedupKey,
    result: Option<Result<SendAck, Error>>,
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        let result = self.result.take().unwrap_or(Err(Error::Unavailable));
        if let Some((_, waiters)) = self.map.0.remove(&self.key) {
            for w in waiters {
                let _ = w.send(result.clone().map(|a| SendAck {
                    duplicate: true,
                    ..a
                }));
            }
        }
    }
}

impl Registry {
    /// Sends a message. Stored messages are acked after they are durable; a retry with the same
    /// client message id returns the first ack with `duplicate = true`.
    ///
    /// A user's send is charged afterwards for its audience: one token more per
    /// [`super::limits::SEND_RECIPIENTS_PER_TOKEN`] members (a message to a large group, or a
    /// typing notice to one, pushes to every member online).
    pub async fn send(
        &self,
        caller: &Caller,
        id: &str,
        req: SendRequest,
    ) -> Result<SendAck, Error> {
        self.validate_send(&req)?;
        if req.silent && !caller.admin {
            return Err(Error::PermissionDenied(
                "only the app's backend sends silently",
            ));
        }
        let cell = self.cell(id)?;
        let (kind, members) = {
            let st = cell.lock();
            (st.kind(), st.roster.len())
        };
        let sent = self.send_to(caller, id, cell, kind, req).await;
        // A user's message into a system conversation goes to the backend alone.
        if sent.is_ok() && !caller.admin && kind != pb::ConversationKind::System {
            self.charge_send(&caller.user, members);
        }
        sent
    }

    async fn send_to(
        &self,
        caller: &Caller,
        id: &str,
        cell: Arc<super::ConvCell>,
        kind: pb::ConversationKind,
        req: SendRequest,
    ) -> Result<SendAck, Error> {
        match kind {
            pb::ConversationKind::ChatRoom => return self.send_to_room(caller, &cell, req).await,
            pb::ConversationKind::System if !caller.admin => {
                return self.send_to_backend(caller, &cell, req).await;
            }
            _ => {}
        }
        if req.transient {
            return self.send_transient(caller, &cell, req);
        }
        let started = std::time::Instant::now();
        let observe = |r: Result<SendAck, Error>| {
            if r.is_ok() {
                let h = &self.stats.histograms;
                h.send_seconds.observe(started.elapsed().as_secs_f64());
            }
            r
        };
        if req.client_message_id.is_empty() {
            let req = self.moderate_stored(caller, &cell, id, req).await?;
            return observe(self.send_stored(caller, &cell, req).await);
        }
        let key: DedupKey = (cell.num, caller.user.clone(), req.client_message_id.clone());
        match self.inflight.0.entry(key.clone()) {
            dashmap::Entry::Occupied(mut e) => {
                let (tx, rx) = oneshot::channel();
                e.get_mut().push(tx);
                drop(e);
                return rx.await.unwrap_or(Err(Error::Unavailable));
            }
            dashmap::Entry::Vacant(v) => {
                v.insert(Vec::new());
            }
        }
        let mut guard = InflightGuard {
            map: &self.inflight,
            key,
            result: None,
        };
        let result = match self
            .store
            .dedup(cell.num, &caller.user, &req.client_message_id)?
        {
            Some(seq) => match self.store.message(cell.num, seq)? {
                Some(m) => Ok(SendAck {
                    message_id: m.id,
                    seq,
                    server_time: m.server_time,
                    duplicate: true,
                }),
                // Deleted by history retention since: the first answer's seq and id, without
                // the time nobody can read any more.
                None if seq <= cell.lock().record.purged_seq => Ok(SendAck {
                    message_id: crate::protocol::message_id(cell.num, seq),
                    seq,
                    server_time: 0,
                    duplicate: true,
                }),
                None => Err(Error::Internal),
            },
            // The hook is asked once per client message id: a retry of an accepted send is
            // answered from the store above, of a refused one from the hook's memory.
            None => match self.moderate_stored(caller, &cell, id, req).await {
                Ok(req) => self.send_stored(caller, &cell, req).await,
                Err(e) => Err(e),
            },
        };
        guard.result = Some(result.clone());
        observe(result)
    }

    /// Runs a send to be stored through the pre-send hook, once it passes every check it
    /// would otherwise be refused by, so that the hook is asked only about a message it
    /// decides the fate of (and a caller who may not send here never learns its answer).
    async fn moderate_stored(
        &self,
        caller: &Caller,
        cell: &Arc<super::ConvCell>,
        id: &str,
        req: SendRequest,
    ) -> Result<SendRequest, Error> {
        if self.hook.is_some() && !caller.admin {
            self.require_not_blocked(cell, &caller.user)?;
            self.check_stored_send(&cell.lock(), caller, req.want_receipts)?;
        }
        self.moderate_send(caller, cell.num, id, req).await
    }

    /// What the conversation's state says of a stored send by the caller: they may send here
    /// now (live, a member, not muted) and it takes what the send asks for (receipts).
    fn check_stored_send(
        &self,
        st: &super::ConvState,
        caller: &Caller,
        want_receipts: bool,
    ) -> Result<(), Error> {
        st.authorize_send(caller, self.now())?;
        if want_receipts && st.members.len() > self.config.receipt_max_members {
            return Err(Error::LimitExceeded(format!(
                "receipts asked in a conversation of {} members; receipt_max_members is {}",
                st.members.len(),
                self.config.receipt_max_members
            )));
        }
        Ok(())
    }

    /// Checks content plus attributes against `max_message_bytes`.
    pub(super) fn check_size(
        &self,
        content: &[u8],
        attributes: &BTreeMap<String, String>,
    ) -> Result<(), Error> {
        let size = content.len()
            + attributes
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>();
        if size > self.config.max_message_bytes {
            return Err(Error::MessageTooLarge {
                size,
                limit: self.config.max_message_bytes,
            });
        }
        Ok(())
    }

    /// Checks size limits and mentions of a message to be sent.
    pub(super) fn validate_send(&self, req: &SendRequest) -> Result<(), Error> {
        self.check_size(&req.content, &req.attributes)?;
        if req.client_message_id.len() > self.config.max_client_message_id_bytes {
            return Err(Error::LimitExceeded(format!(
                "client_message_id is {} bytes; max_client_message_id_bytes is {}",
                req.client_message_id.len(),
                self.config.max_client_message_id_bytes
            )));
        }
        if req.mentions.len() > self.config.max_mentions {
            return Err(Error::LimitExceeded(format!(
                "{} mentions; max_mentions is {}",
                req.mentions.len(),
                self.config.max_mentions
            )));
        }
        for m in &req.mentions {
            self.check_user_id(m)?;
        }
        Ok(())
    }

    /// Checks that `req` could be sent to `id` by the caller now (for will messages).
    pub fn check_will(&self, caller: &Caller, id: &str, req: &SendRequest) -> Result<(), Error> {
        self.validate_send(req)?;
        let cell = self.cell(id)?;
        cell.lock().require_sender(&caller.user, self.now())?;
        self.require_not_blocked(&cell, &caller.user)
    }

    fn send_transient(
        &self,
        caller: &Caller,
        cell: &super::ConvCell,
        req: SendRequest,
    ) -> Result<SendAck, Error> {
        if !caller.admin {
            self.require_not_blocked(cell, &caller.user)?;
        }
        let (members, now, kind) = {
            let st = cell.lock();
            st.authorize_send(caller, self.now())?;
            (st.members_to(), self.now(), st.kind())
        };
        Ok(self.deliver_unstored(caller, cell, members, kind, now, req))
    }

    /// Hands a message that is not stored (seq 0) to the live sessions of `to` but the
    /// sender's, and makes its ack.
    pub(super) fn deliver_unstored(
        &self,
        caller: &Caller,
        cell: &super::ConvCell,
        to: Recipients,
        kind: pb::ConversationKind,
        now: i64,
        req: SendRequest,
    ) -> SendAck {
        let m = self.build(cell, caller, 0, now, req);
        let frame = protocol::message_push_from_encoded(&m.encode_to_vec(), kind);
        self.hub().deliver(&Delivery {
            to,
            frame,
            user_seq: 0,
            except_session: caller.session,
        });
        SendAck {
            message_id: m.id,
            seq: 0,
            server_time: now,
            duplicate: false,
        }
    }

    /// The `message.offline_recipients` record of message `m`: the members other than its
    /// sender with no live session now, each with whether they muted the conversation and
    /// whether `m` mentions them; in conversations over `webhook_offline_recipients_max`
    /// members, only how many they are. One hub lookup per member (only while some endpoint
    /// takes the event); mute flags come from the members' cached entries.
    fn offline_recipients(
        &self,
        st: &mut super::ConvState,
        num: u64,
        m: &Message,
    ) -> Result<Bytes, Error> {
        let roster = st.roster.clone();
        let offline: Vec<&UserId> = roster
            .iter()
            .filter(|u| ***u != *m.sender && !self.hub.is_online(u))
            .collect();
        let listed = roster.len() <= self.config.webhook_offline_recipients_max;
        let mut recipients = Vec::new();
        if listed {
            for u in &offline {
                recipients.push(pb::OfflineRecipient {
                    user: u.to_string(),
                    muted: self.entry(st, num, u)?.muted,
                    mentioned: protocol::mentions(m, u),
                });
            }
        }
        let e = pb::OfflineRecipients {
            conversation_id: m.conversation_id.clone(),
            message_id: m.id.clone(),
            seq: m.seq,
            sender: m.sender.clone(),
            at: m.server_time,
            recipients,
            listed,
            count: offline.len() as u32,
        };
        Ok(crate::webhooks::record(
            pb::outbox_event::Event::OfflineRecipients(e),
        ))
    }

    pub(super) fn build(
        &self,
        cell: &super::ConvCell,
        caller: &Caller,
        seq: u64,
        now: i64,
        req: SendRequest,
    ) -> Message {
        Message {
            id: if seq == 0 {
                format!("{}t{:x}", cell.id, self.transient_id())
            } else {
                message_id(cell.num, seq)
            },
            conversation_id: cell.id.to_string(),
            seq,
            sender: caller.user.to_string(),
            r#type: req.kind,
            content: req.content,
            attributes: req.attributes,
            mentions: req.mentions,
            mention_all: req.mention_all,
            server_time: now,
            client_message_id: req.client_message_id,
            transient: req.transient,
            want_receipts: req.want_receipts,
            ..Default::default()
        }
    }

    async fn send_stored(
        &self,
        caller: &Caller,
        cell: &Arc<super::ConvCell>,
        req: SendRequest,
    ) -> Result<SendAck, Error> {
        if !caller.admin {
            self.require_not_blocked(cell, &caller.user)?;
        }
        let permit = self.writer.reserve().await?;
        let client_id = req.client_message_id.clone();
        let want_receipts = req.want_receipts;
        let silent = req.silent;
        let (rx, receipts, ack) = {
            let mut st = cell.lock();
            self.check_stored_send(&st, caller, want_receipts)?;
            let seq = st.last_seq + 1;
            let now = self.now().max(st.last_ts);
            // Sending reads everything before; senders of receipt-asking messages in between
            // get a read receipt once this is durable.
            let receipt_high = match st.receipt_high {
                Some(h) => h,
                None => {
                    let h = self.store.last_receipt_wanted(cell.num)?;
                    st.receipt_high = Some(h);
                    h
                }
            };
            // The backend (not a member) reads nothing by sending.
            let read_before = if receipt_high > 0 && !caller.admin {
                Some(self.read_seq(&mut st, cell.num, &caller.user)?)
            } else {
                None
            };
            if want_receipts {
                st.receipt_high = Some(seq);
            }
            let m = self.build(cell, caller, seq, now, req);
            // Push notifications: who has no live session as this goes out (when wanted).
            let records = if self.webhook.offline_recipients && !silent {
                vec![self.offline_recipients(&mut st, cell.num, &m)?]
            } else {
                Vec::new()
            };
            let encoded = Bytes::from(m.encode_to_vec());
            let frame = protocol::message_push_from_encoded(&encoded, st.kind());
            let mut ops = Vec::with_capacity(3);
            ops.push(Op::PutMessage {
                conv: cell.num,
                seq,
                message: encoded,
            });
            if !caller.admin {
                ops.push(Op::PutReadSeq {
                    user: caller.user.clone(),
                    conv: cell.num,
                    seq,
                });
                st.reads.insert(caller.user.clone(), seq);
            }
            if silent {
                let mut seqs = self
                    .silent_of(&mut st, cell.num)?
                    .map(|s| (*s).clone())
                    .unwrap_or_default();
                seqs.push(seq);
                st.silent = Some(Arc::new(seqs));
                st.record.last_silent_seq = seq;
                ops.push(Op::PutSilent {
                    conv: cell.num,
                    seq,
                });
                ops.push(Op::PutConversation {
                    conv: cell.num,
                    record: st.record.clone(),
                });
            }
            if want_receipts {
                ops.push(Op::PutReceiptWanted {
                    conv: cell.num,
                    seq,
                    sender: caller.user.clone(),
                });
            }
            if !client_id.is_empty() {
                ops.push(Op::PutDedup {
                    conv: cell.num,
                    sender: caller.user.clone(),
                    client_id,
                    seq,
                });
            }
            st.last_seq = seq;
            st.last_ts = now;
            let delivery = Delivery {
                to: st.members_to(),
                frame,
                user_seq: 0,
                except_session: caller.session,
            };
            let rx = self.writer.submit_with_records(
                permit,
                ops,
                vec![delivery],
                Vec::new(),
                Some(cell.committed_through(seq)),
                records,
            );
            let receipts = read_before.filter(|r| *r < receipt_high && *r + 1 < seq);
            (
                rx,
                receipts,
                SendAck {
                    message_id: m.id,
                    seq,
                    server_time: now,
                    duplicate: false,
                },
            )
        };
        wait(rx).await?;
        if let Some(from) = receipts {
            self.send_receipts(
                caller,
                cell,
                from,
                ack.seq - 1,
                pb::ReceiptKind::Read,
                ack.server_time,
            )?;
        }
        Ok(ack)
    }
}
