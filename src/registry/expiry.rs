//! Expiry of temporary conversations.
//!
//! The store keeps a `(deadline, conversation)` index. One task sleeps (on the injected clock)
//! until the earliest deadline, then deletes every conversation that is due: it marks the
//! in-memory state expired under the conversation's lock (so every later request gets
//! `ConversationExpired`), pushes an EXPIRED event to the members online at that moment, marks
//! the record deleted through the writer, ordered after anything already queued for it, and
//! then purges the conversation ([`super::purge`]) a batch of messages per commit.
//! Creating a temporary conversation wakes the task, since its deadline may come first.
//! On start the task runs at once, so what expired while the server was down goes first, and
//! so do the purges a crash or a shutdown cut short (due entries of conversations whose
//! record is marked deleted, or gone).

use super::writer::wait;
use super::{Caller, ConvCell, ConvState, Error, Registry};
use crate::hub::Recipients;
use crate::protocol::pb::{ConversationEventKind as Ev, ConversationKind};
use crate::store::Op;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Conversations purged per round.
const ROUND: usize = 256;

/// How an expiry began.
enum Begun {
    /// The commit that ends it is queued; the purge follows it.
    Queued(tokio::sync::oneshot::Receiver<Result<(), super::writer::WriteError>>),
    /// Marked expired; the commit that ends it waits for the transcript
    /// ([`Registry::finish_expiry`]).
    Marked(Arc<ConvCell>),
    /// Ended already (deleted for everyone with its messages, or expired, before a restart):
    /// only its purge is left to do.
    Ended,
    /// Not due (any more).
    NotDue,
}

/// Runs the sweep until `shutdown`.
pub async fn run(registry: Arc<Registry>, shutdown: CancellationToken) {
    deadlines(
        &registry,
        &shutdown,
        "expiry",
        |r| &r.expiry_changed,
        |r| Ok(r.store.next_expiries(1)?.first().map(|e| e.0)),
        |r| r.sweep(&shutdown),
    )
    .await;
}

/// The loop of a task that acts on an index of deadlines: sleeps (on the injected clock)
/// until the earliest one (`next`) or a wake-up (`changed`, for a new deadline that may come
/// first), runs `due` while the earliest has passed, until `shutdown` (which `due` may watch
/// too, to stop early). A failure is logged and ends the task.
pub(super) async fn deadlines<'a, F>(
    registry: &'a Registry,
    shutdown: &CancellationToken,
    what: &str,
    changed: impl Fn(&'a Registry) -> &'a tokio::sync::Notify,
    next: impl Fn(&Registry) -> Result<Option<i64>, Error>,
    due: impl Fn(&'a Registry) -> F,
) where
    F: std::future::Future<Output = Result<(), Error>>,
{
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        // Register for wake-ups before reading the index, so a change in between is not missed.
        let woken = changed(registry).notified();
        let next = match next(registry) {
            Ok(at) => at,
            Err(e) => {
                tracing::error!(error = %e, what, "reading a deadline index failed; sweep stopped");
                return;
            }
        };
        if let Some(at) = next
            && at <= registry.now()
        {
            if let Err(e) = due(registry).await {
                tracing::error!(error = %e, what, "sweep failed; sweep stopped");
                return;
            }
            continue;
        }
        let sleep = async {
            match next {
                Some(at) => registry.clock.sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = sleep => {}
            _ = woken => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

impl Registry {
    /// Deletes every temporary conversation whose deadline has passed, and every ended one
    /// whose purge is left to do. Stops waiting for the purges at `shutdown`: what they have
    /// not done by the time the writer stops, the next start does.
    async fn sweep(&self, shutdown: &CancellationToken) -> Result<(), Error> {
        loop {
            let now = self.now();
            let due: Vec<(i64, u64)> = self
                .store
                .next_expiries(ROUND)?
                .into_iter()
                .take_while(|(at, _)| *at <= now)
                .collect();
            if due.is_empty() {
                return Ok(());
            }
            let mut pending = Vec::with_capacity(due.len());
            let mut marked = Vec::new();
            let mut purges = Vec::new();
            let mut moved = false;
            for (at, conv) in due {
                match self.expire(conv).await? {
                    Begun::Queued(rx) => pending.push((conv, rx)),
                    Begun::Marked(cell) => marked.push(cell),
                    Begun::Ended => purges.push((self.start_purge(conv, Some(at)), false)),
                    Begun::NotDue => moved = true,
                }
            }
            // The transcripts of this round, after one wait for what was queued before.
            if !marked.is_empty() {
                self.writer.barrier().await?;
                for cell in marked {
                    pending.push((cell.num, self.finish_expiry(&cell, "").await?));
                }
            }
            for (conv, rx) in pending {
                wait(rx).await?;
                purges.push((self.start_purge(conv, None), true));
            }
            for (purge, expired) in purges {
                tokio::select! {
                    done = purge.done() => done?,
                    _ = shutdown.cancelled() => return Ok(()),
                }
                // Counted once purged, so whoever waits on it finds it gone from the store.
                if expired {
                    self.stats.conversations_expired.inc();
                }
            }
            if moved {
                // A moved deadline's old index entry goes with a write that may not have
                // committed yet: let it, rather than read the same entry again at once.
                self.writer.barrier().await?;
            }
        }
    }

    /// Marks one conversation expired and queues the commit that ends it (or, for the
    /// transcript, only marks it); not when it is not due after all (its deadline was moved
    /// since the index was read, or it is being deleted).
    async fn expire(&self, conv: u64) -> Result<Begun, Error> {
        let permit = self.writer.reserve().await?;
        match self.cell_by_num(conv) {
            Ok(cell) => self.begin_expiry(permit, cell, ""),
            // Marked deleted, or only the index entry is left: the purge cleans it up.
            Err(Error::ConversationNotFound) => Ok(Begun::Ended),
            Err(e) => Err(e),
        }
    }

    /// Expires a live cell: at once, or, when some webhook endpoint takes
    /// `conversation.expired`, in two steps, so the event carries the transcript: the cell is
    /// marked expired here (nothing more can be sent), and once what was queued before has
    /// committed, [`Registry::finish_expiry`] reads the transcript and queues the commit that
    /// ends it with the event. A crash in between leaves the conversation to the next sweep.
    fn begin_expiry(
        &self,
        permit: tokio::sync::OwnedSemaphorePermit,
        cell: Arc<ConvCell>,
        by: &str,
    ) -> Result<Begun, Error> {
        let mut st = cell.lock();
        // The sweep (`by` empty) expires only what is due: a deadline may have moved since
        // the index was read, and an ended conversation is already on its way out.
        if by.is_empty() && (st.expired || st.deleted || st.record.expires_at > self.now()) {
            return Ok(Begun::NotDue);
        }
        st.require_live()?;
        if !self.webhook.expired {
            return Ok(Begun::Queued(
                self.expire_locked(permit, &cell, &mut st, by, None),
            ));
        }
        st.expired = true;
        drop(st);
        Ok(Begun::Marked(cell))
    }

    /// The second step of [`Registry::begin_expiry`], once what was queued before the mark
    /// has committed.
    async fn finish_expiry(
        &self,
        cell: &Arc<ConvCell>,
        by: &str,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<(), super::writer::WriteError>>, Error> {
        let transcript = self.transcript(cell.num)?;
        let permit = self.writer.reserve().await?;
        let mut st = cell.lock();
        Ok(self.expire_locked(permit, cell, &mut st, by, Some(transcript)))
    }

    /// A conversation's messages, oldest first, up to `webhook_transcript_max_bytes`; whether
    /// that is all of them, and how many there are.
    fn transcript(
        &self,
        num: u64,
    ) -> Result<(Vec<crate::protocol::pb::Message>, bool, u64), Error> {
        use prost::Message as _;
        let last = self.committed_last(num)?;
        let budget = self.config.webhook_transcript_max_bytes;
        let (mut out, mut used, mut next) = (Vec::new(), 0usize, 1u64);
        while next <= last {
            let chunk = self.store.messages(
                num,
                next,
                last + 1,
                crate::store::Direction::Ascending,
                128,
            )?;
            let Some(end) = chunk.last().map(|m| m.seq) else {
                break;
            };
            for m in chunk {
                used += m.encoded_len();
                if used > budget {
                    return Ok((out, false, last));
                }
                out.push(m);
            }
            next = end + 1;
        }
        Ok((out, true, last))
    }

    /// Ends a temporary conversation now, as if its deadline had come: members get the
    /// EXPIRED event, then it is purged, `history_retention_batch` messages per commit, before
    /// this returns. The app's backend only (customer service closing a chat).
    pub async fn end_temporary(&self, caller: &Caller, id: &str) -> Result<(), Error> {
        if !caller.admin {
            return Err(Error::PermissionDenied(
                "only the app's backend may end a temporary conversation",
            ));
        }
        let cell = self.cell(id)?;
        {
            let st = cell.lock();
            if st.kind() != ConversationKind::Temporary {
                return Err(Error::NotAllowedForKind {
                    kind: if st.kind() == ConversationKind::Group {
                        "group"
                    } else {
                        "direct"
                    },
                    what: "ending (only temporary conversations end)",
                });
            }
        }
        let permit = self.writer.reserve().await?;
        let rx = match self.begin_expiry(permit, cell.clone(), &caller.user)? {
            Begun::Queued(rx) => rx,
            Begun::Marked(cell) => {
                self.writer.barrier().await?;
                self.finish_expiry(&cell, &caller.user).await?
            }
            Begun::NotDue | Begun::Ended => return Err(Error::ConversationExpired),
        };
        wait(rx).await?;
        self.purge(cell.num, None).await?;
        self.stats.conversations_expired.inc();
        Ok(())
    }

    /// Under the conversation's lock: marks it expired, pushes EXPIRED to the members online
    /// and queues the commit that ends it, with the `conversation.expired` webhook record when
    /// `transcript` is given: its record marked deleted, due in the expiry index (so its purge,
    /// which the caller starts once this has committed, goes on after a restart). `by`: who
    /// ended it (empty: its deadline).
    fn expire_locked(
        &self,
        permit: tokio::sync::OwnedSemaphorePermit,
        cell: &Arc<ConvCell>,
        st: &mut ConvState,
        by: &str,
        transcript: Option<(Vec<crate::protocol::pb::Message>, bool, u64)>,
    ) -> tokio::sync::oneshot::Receiver<Result<(), super::writer::WriteError>> {
        st.expired = true;
        self.presence.drop_users(cell.num, None);
        let view = st.view(&cell.id);
        let members: Vec<_> = st
            .record
            .pair
            .iter()
            .map(|m| crate::store::UserId::from(m.as_str()))
            .collect();
        let event = self.event(Ev::Expired, cell, by, Vec::new(), view);
        let live = Self::live(&event, Recipients::Users(st.roster.clone()), 0);
        let records = match transcript {
            Some((transcript, complete, message_count)) => {
                let e = crate::protocol::pb::ExpiredEvent {
                    event: Some(event),
                    transcript,
                    complete,
                    message_count,
                };
                vec![crate::webhooks::record(
                    crate::protocol::pb::outbox_event::Event::Expired(e),
                )]
            }
            None => Vec::new(),
        };
        let now = self.now();
        let mut record = st.record.clone();
        record.deleted_at = now;
        let mut ops = Vec::with_capacity(3);
        // Ended before its deadline: due from now on.
        super::purge::mark_due(cell.num, &mut record, now, &mut ops);
        ops.push(Op::PutConversation {
            conv: cell.num,
            record,
        });
        // The cell stays (marked expired) until the end has committed; from then on the
        // store says it is gone.
        let forget = self.forget_after_commit(cell, None, Some(members));
        self.writer
            .submit_with_records(permit, ops, vec![live], vec![], Some(forget), records)
    }
}

/// One open temporary conversation, as the app's backend lists them.
#[derive(Debug, Clone)]
pub struct OpenTemporary {
    pub conversation: crate::protocol::pb::Conversation,
    /// Its newest message's time, or its creation when it has none (ms).
    pub last_activity: i64,
    pub last_message: Option<crate::protocol::pb::Message>,
}

impl Registry {
    /// The open temporary conversations, newest activity first (ties: newest first), of one
    /// member when `member` is given: a page of `limit` after `cursor`, and of at most
    /// `admin_page_max_bytes` (conversations and last messages as stored; the first always
    /// goes). For the app's backend (waiting customer-service chats). Without a member it
    /// looks at every open temporary conversation, at most `admin_temporary_scan_max` of them.
    pub fn open_temporaries(
        &self,
        member: Option<&str>,
        cursor: &str,
        limit: u32,
    ) -> Result<(Vec<OpenTemporary>, String, bool), Error> {
        let max_bytes = self.config.admin_page_max_bytes;
        let mut bytes = 0usize;
        let limit = self.page_size(limit)?;
        let after = match cursor {
            "" => None,
            c => Some(
                c.split_once('.')
                    .and_then(|(a, n)| {
                        Some((
                            u64::from_str_radix(a, 16).ok()? as i64,
                            u64::from_str_radix(n, 16).ok()?,
                        ))
                    })
                    .ok_or_else(|| Error::InvalidArgument("malformed cursor".into()))?,
            ),
        };
        let nums: Vec<u64> = match member {
            Some(m) => {
                self.check_user_id(m)?;
                self.store
                    .user_conversations(m)?
                    .into_iter()
                    .map(|(n, _)| n)
                    .filter(|n| n & crate::protocol::TEMPORARY_BIT != 0)
                    .collect()
            }
            None => {
                let max = self.config.admin_temporary_scan_max;
                let all = self.store.next_expiries(max.saturating_add(1))?;
                if all.len() > max {
                    return Err(Error::LimitExceeded(format!(
                        "more than {max} open temporary conversations \
                         (admin_temporary_scan_max); list one member's"
                    )));
                }
                all.into_iter().map(|(_, n)| n).collect()
            }
        };
        let now = self.now();
        // (activity, number) of every open one, newest first.
        let mut rows: Vec<(i64, u64)> = Vec::with_capacity(nums.len());
        for num in nums {
            let activity = match self.convs.get(&num).map(|c| c.clone()) {
                Some(cell) => {
                    let st = cell.lock();
                    if st.require_live().is_err() || st.record.expires_at <= now {
                        continue;
                    }
                    st.last_ts
                }
                None => {
                    let Some(r) = self.store.conversation(num)? else {
                        continue;
                    };
                    if r.deleted_at > 0 || r.expires_at <= now {
                        continue;
                    }
                    self.store
                        .last_message(num)?
                        .map_or(r.created_at, |m| m.server_time)
                }
            };
            rows.push((activity, num));
        }
        rows.sort_unstable_by(|a, b| b.cmp(a));
        let start = match after {
            Some(key) => rows.partition_point(|r| *r >= key),
            None => 0,
        };
        let mut page = Vec::with_capacity(limit);
        let mut next = String::new();
        let mut more = false;
        for &(activity, num) in &rows[start..] {
            if page.len() == limit {
                more = true;
                break;
            }
            let Ok(cell) = self.cell_by_num(num) else {
                continue;
            };
            let conversation = {
                let st = cell.lock();
                if st.require_live().is_err() {
                    continue;
                }
                st.view(&cell.id)
            };
            let last_message = match conversation.last_seq {
                0 => None,
                seq => self.store.message(num, seq)?,
            };
            let n = prost::Message::encoded_len(&conversation)
                + last_message.as_ref().map_or(0, prost::Message::encoded_len);
            if !page.is_empty() && bytes.saturating_add(n) > max_bytes {
                more = true;
                break;
            }
            bytes = bytes.saturating_add(n);
            page.push(OpenTemporary {
                conversation,
                last_activity: activity,
                last_message,
            });
            next = format!("{:x}.{num:x}", activity as u64);
        }
        if !more {
            next.clear();
        }
        Ok((page, next, more))
    }
}
