//! List tombstone retention (`list_tombstone_retention_secs`).
//!
//! A tombstone (`T` user ‖ conv → deleted at) tells an incremental ListConversations that an
//! entry left the user's list. One task, on the injected clock, sweeps at start and then every
//! hour: it walks every user's tombstones in key order, a page at a time, and deletes those
//! older than the retention, one store commit per page, each queued behind the writes already
//! waiting. The delete is conditional ([`Op::ExpireTombstone`]): it is decided when the commit
//! is applied, against the tombstone then stored, so one written again meanwhile (the user
//! joined and left again) stays. Incremental syncs from before the retention are refused
//! (see [`Registry::check_sync_window`]), so no client misses a swept deletion.
//!
//! The same sweep deletes the users' logged events (`E` user ‖ seq) older than the retention.
//! The store raises a floor to the highest seq it expired; an emptied log goes on above it,
//! so a seq is never handed out twice and nothing stays behind for a user id no one uses
//! again. A login whose event cursor is below the oldest event kept, or below the floor of
//! an emptied log, is told `events_truncated`.

use super::writer::wait;
use super::{Error, Registry};
use crate::store::{Op, StoreError, UserId};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// How often the sweep runs (on the injected clock), ms.
pub const SWEEP_EVERY_MS: i64 = super::retention::SWEEP_EVERY_MS;

/// Tombstones examined per store read (and at most deleted per commit).
const PAGE: usize = 1024;

/// Runs the sweep until `shutdown`.
pub async fn run(registry: Arc<Registry>, shutdown: CancellationToken) {
    loop {
        // Taken before the sweep: a clock moved while it runs still wakes the next one.
        let next = registry.now() + SWEEP_EVERY_MS;
        match registry.tombstone_sweep().await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "deleted list tombstones past their retention"),
            Err(e) => tracing::error!(error = %e, "list tombstone sweep failed"),
        }
        match registry.user_event_sweep().await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "deleted user events past their retention"),
            Err(e) => tracing::error!(error = %e, "user event sweep failed"),
        }
        registry.stats.tombstone_sweeps.inc();
        tokio::select! {
            _ = registry.clock.sleep_until(next) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

impl Registry {
    /// The oldest `updated_after` an incremental list sync may ask for (ms): tombstones
    /// older than this may have been swept.
    pub(super) fn tombstone_cutoff(&self) -> i64 {
        let secs = self.config.list_tombstone_retention_secs as i64;
        self.now().saturating_sub(secs.saturating_mul(1000))
    }

    /// Refuses an incremental list sync (`updated_after` > 0) from before the tombstone
    /// retention: the deletions it should report may be gone.
    pub(super) fn check_sync_window(&self, updated_after: i64) -> Result<(), Error> {
        if updated_after > 0 && updated_after < self.tombstone_cutoff() {
            return Err(Error::WindowExpired(format!(
                "updated_after is older than list_tombstone_retention_secs ({} s): \
                 list from updated_after 0",
                self.config.list_tombstone_retention_secs
            )));
        }
        Ok(())
    }

    /// Deletes every list tombstone older than `list_tombstone_retention_secs`; returns how
    /// many were due (a tombstone written again before its delete committed stays).
    pub async fn tombstone_sweep(&self) -> Result<u64, Error> {
        let cutoff = self.tombstone_cutoff();
        self.sweep_user_keyed(
            &self.stats.list_tombstones_swept,
            |after| self.store.tombstones_after(after, PAGE),
            |user, conv, at| {
                Ok((at < cutoff).then(|| Op::ExpireTombstone {
                    user: user.clone(),
                    conv,
                    before: cutoff,
                }))
            },
        )
        .await
    }

    /// Deletes every logged user event older than `list_tombstone_retention_secs`; returns how
    /// many were due. A user whose log it empties goes on above the highest seq it ever
    /// deleted ([`crate::store::Counter::UserEventFloor`]), so nothing is kept per user.
    pub async fn user_event_sweep(&self) -> Result<u64, Error> {
        let cutoff = self.tombstone_cutoff();
        self.sweep_user_keyed(
            &self.stats.user_events_swept,
            |after| self.store.user_events_page(after, PAGE),
            |user, seq, at| {
                Ok((at < cutoff).then(|| Op::ExpireUserEvent {
                    user: user.clone(),
                    seq,
                    before: cutoff,
                }))
            },
        )
        .await
    }

    /// Walks entries keyed user ‖ u64 (`read` gives the page after a key, [`PAGE`] at most) and
    /// commits what `due` makes of each, one commit per page, counting them in `swept`;
    /// returns how many it made.
    async fn sweep_user_keyed(
        &self,
        swept: &crate::stats::Counter,
        read: impl Fn(Option<(&str, u64)>) -> Result<Vec<(UserId, u64, i64)>, StoreError>,
        mut due: impl FnMut(&UserId, u64, i64) -> Result<Option<Op>, Error>,
    ) -> Result<u64, Error> {
        let mut made = 0;
        let mut after: Option<(UserId, u64)> = None;
        loop {
            let page = read(after.as_ref().map(|(u, n)| (&**u, *n)))?;
            let mut ops = Vec::new();
            for (user, n, at) in &page {
                ops.extend(due(user, *n, *at)?);
            }
            if !ops.is_empty() {
                let n = ops.len() as u64;
                let permit = self.writer.reserve().await?;
                wait(self.writer.submit(permit, ops, Vec::new(), Vec::new())).await?;
                made += n;
                swept.add(n);
            }
            match page.last() {
                Some((user, n, _)) if page.len() == PAGE => after = Some((user.clone(), *n)),
                _ => return Ok(made),
            }
            tokio::task::yield_now().await;
        }
    }
}
