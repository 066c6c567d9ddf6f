//! Purges: deleting an ended conversation from the store (deleted for everyone with its
//! messages, or an expired or ended temporary one).
//!
//! The commit that ends the conversation marks its record deleted and puts it in the expiry
//! index `X` at the time it ended (a temporary conversation's deadline moves there, the record
//! saying so), so the mark and the index entry are durable together. Then the purge deletes its
//! messages `history_retention_batch` per commit, each queued behind the writes already waiting,
//! then as many of their send dedup entries and of the conversation's event log per commit,
//! and last, in one commit, the rest of the conversation (the last batch of each, members,
//! index entry). A purge cut
//! short (a crash, a shutdown, a failed write) leaves the entry: the expiry sweep finds it due
//! at the next start, before anything else it does, and goes on from the first message left.
//!
//! One purge runs per conversation: whoever asks for one that is running waits for it.

use super::writer::{WriteError, Writer, wait};
use super::{Error, Registry};
use crate::protocol::pb::ConversationRecord;
use crate::store::{Direction, Op, Store};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// The purges running: conversation number → its outcome, once there is one; and their
/// tasks, which the server waits for once its writer has stopped (they hold the store).
#[derive(Default)]
pub(super) struct Purges {
    running: Arc<Mutex<HashMap<u64, Outcome>>>,
    tasks: tokio_util::task::TaskTracker,
}

type Outcome = watch::Receiver<Option<Result<(), Error>>>;

/// A purge that has started; [`Purging::done`] waits for it.
pub(super) struct Purging(Outcome);

impl Purging {
    /// Waits until the purge is over: all of the conversation is gone from the store (or the
    /// purge failed, and the next start goes on with it).
    pub(super) async fn done(mut self) -> Result<(), Error> {
        match self.0.wait_for(Option::is_some).await {
            Ok(r) => r.clone().expect("waited for an outcome"),
            Err(_) => Err(WriteError::Unavailable.into()),
        }
    }
}

/// Adds to `ops` what makes conversation `num`, ending at `now` with `record`, due in the
/// expiry index: the durable mark by which the next start goes on with a purge cut short. An
/// entry that is due already stays; one still ahead (a temporary conversation ended before its
/// deadline) moves to `now`, and the record says so.
pub(super) fn mark_due(num: u64, record: &mut ConversationRecord, now: i64, ops: &mut Vec<Op>) {
    if record.expires_at > 0 && record.expires_at <= now {
        return;
    }
    if record.expires_at > 0 {
        ops.push(Op::DeleteExpiry {
            at: record.expires_at,
            conv: num,
        });
    }
    ops.push(Op::PutExpiry { at: now, conv: num });
    record.expires_at = now;
}

impl Registry {
    /// Purges conversation `num`, whose end has committed, and completes once it is gone
    /// from the store. Runs to the end even when the caller stops waiting.
    pub(super) async fn purge(&self, num: u64, index: Option<i64>) -> Result<(), Error> {
        self.start_purge(num, index).done().await
    }

    /// Starts purging conversation `num`, whose end has committed (or joins the purge of it
    /// that is running). `index`: the time of its expiry index entry, when known without its
    /// record (deleted along with the rest; the record says where its own entry is).
    pub(super) fn start_purge(&self, num: u64, index: Option<i64>) -> Purging {
        let mut running = self
            .purges
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(outcome) = running.get(&num) {
            return Purging(outcome.clone());
        }
        let (tx, rx) = watch::channel(None);
        running.insert(num, rx.clone());
        drop(running);
        let (store, writer, running) = (
            self.store.clone(),
            self.writer.clone(),
            self.purges.running.clone(),
        );
        let batch = self.config.history_retention_batch.max(1);
        let stats = self.stats.clone();
        self.purges.tasks.spawn(async move {
            let outcome = purge_steps(&*store, &writer, &stats, num, index, batch).await;
            if let Err(e) = &outcome {
                tracing::warn!(
                    conversation = num,
                    error = %e,
                    "purge cut short; the next start goes on with it"
                );
            }
            running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&num);
            tx.send_replace(Some(outcome));
        });
        Purging(rx)
    }
}

impl Registry {
    /// Waits for the purge tasks to end, once the writer has stopped (each ends at its next
    /// write; what it has not done, the next start does).
    pub async fn purges_stopped(&self) {
        self.purges.tasks.close();
        self.purges.tasks.wait().await;
    }
}

/// The commits of a purge: the messages left, `batch` seqs per commit, then their send dedup
/// entries and the conversation's event log, `batch` per commit, then the rest (the last
/// batch of each included).
async fn purge_steps(
    store: &dyn Store,
    writer: &Writer,
    stats: &crate::stats::Stats,
    num: u64,
    index: Option<i64>,
    batch: usize,
) -> Result<(), Error> {
    let seqs = batch as u64;
    let through = store.last_message(num)?.map_or(0, |m| m.seq);
    let mut from = 1;
    while from <= through {
        // From the first message left, so seqs deleted before (retention, an earlier start
        // of this purge) cost no commit.
        let Some(lo) = store
            .messages(
                num,
                from,
                through.saturating_add(1),
                Direction::Ascending,
                1,
            )?
            .first()
            .map(|m| m.seq)
        else {
            break;
        };
        let hi = lo.saturating_add(seqs - 1);
        if hi >= through {
            break;
        }
        let permit = writer.reserve().await?;
        let ops = vec![Op::PurgeMessages {
            conv: num,
            from: lo,
            through: hi,
        }];
        wait(writer.submit(permit, ops, Vec::new(), Vec::new())).await?;
        stats.purge_commits.inc();
        from = hi + 1;
    }
    while store.conversation_part_entries(num, batch + 1)? > batch {
        let permit = writer.reserve().await?;
        let ops = vec![Op::PurgeConversationPart {
            conv: num,
            limit: batch,
        }];
        wait(writer.submit(permit, ops, Vec::new(), Vec::new())).await?;
        stats.purge_commits.inc();
    }
    let mut ops = Vec::with_capacity(2);
    if let Some(at) = index {
        ops.push(Op::DeleteExpiry { at, conv: num });
    }
    ops.push(Op::PurgeConversation { conv: num });
    let permit = writer.reserve().await?;
    wait(writer.submit(permit, ops, Vec::new(), Vec::new())).await?;
    stats.purge_commits.inc();
    stats.conversations_purged.inc();
    Ok(())
}
