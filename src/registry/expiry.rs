//! Expiry of temporary conversations.
//!
//! The store keeps a `(deadline, conversation)` index. One task sleeps (on the injected clock)
//! until the earliest deadline, then deletes every conversation that is due: it marks the
//! in-memory state expired under the conversation's lock (so every later request gets
//! `ConversationExpired`), pushes an EXPIRED event to the members online at that moment, and
//! purges the conversation through the writer, ordered after anything already queued for it.
//! Creating a temporary conversation wakes the task, since its deadline may come first.
//! On start the task runs at once, so what expired while the server was down goes first.

use super::writer::wait;
use super::{Error, Registry};
use crate::hub::Recipients;
use crate::protocol::pb::ConversationEventKind as Ev;
use crate::store::Op;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Conversations purged per round.
const ROUND: usize = 256;

/// Runs the sweep until `shutdown`.
pub async fn run(registry: Arc<Registry>, shutdown: CancellationToken) {
    loop {
        // Register for wake-ups before reading the index, so a create in between is not missed.
        let changed = registry.expiry_changed.notified();
        let next = match registry.store.next_expiries(1) {
            Ok(v) => v.first().map(|e| e.0),
            Err(e) => {
                tracing::error!(error = %e, "reading the expiry index failed; sweep stopped");
                return;
            }
        };
        if let Some(at) = next
            && at <= registry.now()
        {
            if let Err(e) = registry.sweep().await {
                tracing::error!(error = %e, "expiry sweep failed; sweep stopped");
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
            _ = changed => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

impl Registry {
    /// Deletes every temporary conversation whose deadline has passed.
    async fn sweep(&self) -> Result<(), Error> {
        loop {
            let now = self.now();
            let due: Vec<u64> = self
                .store
                .next_expiries(ROUND)?
                .into_iter()
                .take_while(|(at, _)| *at <= now)
                .map(|(_, conv)| conv)
                .collect();
            if due.is_empty() {
                return Ok(());
            }
            let mut pending = Vec::with_capacity(due.len());
            for conv in due {
                pending.push(self.expire(conv).await?);
            }
            for rx in pending {
                wait(rx).await?;
                // Counted once durable, so whoever waits on it sees the purge on disk.
                self.stats.conversations_expired.inc();
            }
        }
    }

    /// Marks one conversation expired and queues its purge.
    async fn expire(
        &self,
        conv: u64,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<(), super::writer::WriteError>>, Error> {
        let permit = self.writer.reserve().await?;
        let cell = match self.cell_by_num(conv) {
            Ok(c) => c,
            // Only the index entry is left: purge cleans it up.
            Err(Error::ConversationNotFound) => {
                return Ok(self.writer.submit(
                    permit,
                    vec![Op::PurgeConversation { conv }],
                    vec![],
                    vec![],
                ));
            }
            Err(e) => return Err(e),
        };
        let rx = {
            let mut st = cell.lock();
            st.expired = true;
            self.presence.drop_users(cell.num, None);
            let view = st.view(&cell.id);
            let members: Vec<_> = st
                .record
                .pair
                .iter()
                .map(|m| crate::store::UserId::from(m.as_str()))
                .collect();
            let event = self.event(Ev::Expired, &cell, "", Vec::new(), view);
            let live = Self::live(&event, Recipients::Users(st.roster.clone()), 0);
            // The cell stays (marked expired) until the purge has committed.
            let forget = self.forget_after_commit(&cell, None, Some(members));
            self.writer.submit_then(
                permit,
                vec![Op::PurgeConversation { conv }],
                vec![live],
                vec![],
                Some(forget),
            )
        };
        Ok(rx)
    }
}
