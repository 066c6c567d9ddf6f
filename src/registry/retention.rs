//! History retention by age (`history_retention_days`).
//!
//! One task, on the injected clock, sweeps at start and then every hour: it walks the live
//! conversations (the store's index by kind, a page at a time) and deletes, from the oldest,
//! the messages older than the retention. A conversation's times never decrease with seq, so
//! what is due is a prefix of its history: the sweep reads the first message left (one read
//! for a conversation with nothing due), and deletes at most `history_retention_batch`
//! messages per store commit, each commit queued behind the sends already waiting, so a sweep
//! never holds a conversation or the writer for long. The conversation's record keeps the
//! newest seq deleted (`purged_seq`): seqs continue above it, history starts after it, and
//! unread counts never include what is gone.

use super::writer::wait;
use super::{Error, Registry};
use crate::protocol::pb::ConversationKind;
use crate::store::{Direction, Op};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// How often the sweep runs (on the injected clock), ms.
pub const SWEEP_EVERY_MS: i64 = 3_600_000;

/// Conversations read from the by-kind index at a time.
const PAGE: usize = 1024;

/// Runs the sweep until `shutdown`, when `history_retention_days` is set.
pub async fn run(registry: Arc<Registry>, shutdown: CancellationToken) {
    if registry.config.history_retention_days == 0 {
        return;
    }
    loop {
        // Taken before the sweep: a clock moved while it runs still wakes the next one.
        let next = registry.now() + SWEEP_EVERY_MS;
        match registry.retention_sweep().await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "history retention deleted old messages"),
            Err(e) => tracing::error!(error = %e, "history retention sweep failed"),
        }
        registry.stats.history_sweeps.inc();
        tokio::select! {
            _ = registry.clock.sleep_until(next) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

impl Registry {
    /// Deletes every message older than `history_retention_days`; returns how many.
    pub async fn retention_sweep(&self) -> Result<u64, Error> {
        let days = self.config.history_retention_days as i64;
        if days == 0 {
            return Ok(0);
        }
        let cutoff = self.now().saturating_sub(days.saturating_mul(86_400_000));
        let mut deleted = 0;
        for kind in [
            ConversationKind::Direct,
            ConversationKind::Group,
            ConversationKind::Temporary,
            ConversationKind::System,
            ConversationKind::ChatRoom,
        ] {
            let mut below = u64::MAX;
            loop {
                let page = self.store.conversations_of_kind(kind as i32, below, PAGE)?;
                for &num in &page {
                    deleted += self.expire_history(num, cutoff).await?;
                }
                match page.last() {
                    Some(&last) if page.len() == PAGE => below = last,
                    _ => break,
                }
                tokio::task::yield_now().await;
            }
        }
        Ok(deleted)
    }

    /// Deletes the messages of conversation `num` older than `cutoff` (ms), a batch per
    /// commit; returns how many.
    async fn expire_history(&self, num: u64, cutoff: i64) -> Result<u64, Error> {
        let batch = self.config.history_retention_batch;
        let mut deleted = 0;
        loop {
            let purged = match self.convs.get(&num).map(|c| c.clone()) {
                Some(cell) => cell.lock().record.purged_seq,
                None => match self.store.conversation(num)? {
                    Some(r) => r.purged_seq,
                    None => return Ok(deleted),
                },
            };
            // Nothing due: one read.
            let first = self
                .store
                .messages(num, purged + 1, u64::MAX, Direction::Ascending, 1)?;
            if first.first().is_none_or(|m| m.server_time >= cutoff) {
                return Ok(deleted);
            }
            let due =
                self.store
                    .messages(num, purged + 1, u64::MAX, Direction::Ascending, batch)?;
            let Some(through) = due
                .iter()
                .take_while(|m| m.server_time < cutoff)
                .map(|m| m.seq)
                .last()
            else {
                return Ok(deleted);
            };
            let cell = match self.cell_by_num(num) {
                Ok(cell) => cell,
                // Deleted or expired meanwhile: its purge takes the messages.
                Err(Error::ConversationNotFound | Error::ConversationExpired) => {
                    return Ok(deleted);
                }
                Err(e) => return Err(e),
            };
            let permit = self.writer.reserve().await?;
            let rx = {
                let mut st = cell.lock();
                if st.require_live().is_err() || st.record.purged_seq != purged {
                    // Gone, or another sweep got here first: look again.
                    drop(st);
                    drop(permit);
                    if cell.lock().require_live().is_err() {
                        return Ok(deleted);
                    }
                    continue;
                }
                st.record.purged_seq = through;
                st.edited.retain(|seq, _| *seq > through);
                st.silent = None;
                let ops = vec![
                    Op::PutConversation {
                        conv: num,
                        record: st.record.clone(),
                    },
                    Op::PurgeMessages {
                        conv: num,
                        from: purged + 1,
                        through,
                    },
                ];
                self.writer.submit(permit, ops, Vec::new(), Vec::new())
            };
            wait(rx).await?;
            let n = due.iter().filter(|m| m.seq <= through).count() as u64;
            deleted += n;
            self.stats.history_messages_deleted.add(n);
            if (due.len() as u64) < batch as u64 || through < due.last().map_or(0, |m| m.seq) {
                return Ok(deleted);
            }
            tokio::task::yield_now().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::protocol::pb::Message;
    use crate::store::Op;
    use prost::Message as _;

    /// What the engines do with the pages of purged messages: measured, and for redb (the
    /// default) held to: the space is reused by later writes, so a store whose old history
    /// is swept as new history comes stays the same size.
    #[test]
    fn purged_messages_make_room_for_new_ones() {
        for engine in crate::store::ENGINES {
            let dir = tempfile::tempdir().unwrap();
            let s = crate::store::open(engine, dir.path(), 8 << 20).unwrap();
            let body = vec![b'x'; 1000];
            let fill = |from: u64| {
                for chunk in (from..from + 5_000).collect::<Vec<_>>().chunks(1000) {
                    let ops: Vec<Op> = chunk
                        .iter()
                        .map(|&seq| Op::PutMessage {
                            conv: 1,
                            seq,
                            message: Message {
                                seq,
                                content: body.clone().into(),
                                ..Default::default()
                            }
                            .encode_to_vec()
                            .into(),
                        })
                        .collect();
                    s.commit(&ops).unwrap();
                    s.flush().unwrap();
                }
            };
            fill(1);
            let full = s.size_on_disk().unwrap();
            s.commit(&[Op::PurgeMessages {
                conv: 1,
                from: 1,
                through: 5_000,
            }])
            .unwrap();
            s.flush().unwrap();
            let purged = s.size_on_disk().unwrap();
            fill(5_001);
            let refilled = s.size_on_disk().unwrap();
            eprintln!(
                "{engine}: 5000 messages of 1 KB: {full} bytes; purged: {purged}; \
                 5000 more: {refilled}"
            );
            if engine == "redb" {
                assert!(refilled <= full + full / 5, "{full} → {refilled}");
            }
        }
    }
}
