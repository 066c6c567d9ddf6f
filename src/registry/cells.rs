//! Unloading conversations from memory.
//!
//! A conversation's cell ([`ConvCell`]: its record, members, seqs, read positions and list
//! entries read so far, recent edits) is loaded from the store on first use. A background
//! sweep unloads the cells nobody uses: every minute (on the injected clock) the ones unused
//! for `conversation_idle_secs`, and, woken as soon as more than `conversation_cells_max` are
//! loaded or the loaded ones hold more than `conversation_members_loaded_max` member records,
//! the least recently used down to nine tenths of each. A cell's member records are counted
//! as it is loaded and again at each sweep (members join and leave in between). An unloaded conversation is read
//! from the store again on its next use, exactly as after a restart; the store is the truth
//! and the cell only ever holds what it says plus what is queued for it.
//!
//! So a cell goes only when the store holds all of it:
//! - nobody holds it: the map's reference is the only one (a request holds its cell while it
//!   works, and the writer's after-commit work holds it until the commit), and no request took
//!   it since the sweep chose it (every taking is counted, under the map's lock);
//! - what was queued for it has committed: the sweep chooses, then waits for everything
//!   queued before (a write barrier), then unloads. A write queued after the choice came from
//!   a request that took the cell after it, which keeps it;
//! - it holds nothing the store does not: not deleted or expiring (those leave on their own
//!   once committed), not a chat room with members (their membership lives in memory only),
//!   no presence subscribers (their pushes find the conversation in memory).
//!
//! Taking a cell out bumps the registry's count of removals under the map's lock, as a
//! deletion does: a load that read the store before may have read it before the last write of
//! the cell that was there, and reads again. The list's head of the conversation ([`Head`]),
//! which the cell published as it changed, stays (one is made from the cell's state as it goes
//! if it never was), so lists go on without a store read.
//!
//! None of this is on the way of a request: taking a cell stores its time and counts it, and a
//! load over the cap wakes the sweep.

use super::inbox::Head;
use super::{ConvCell, Error, Registry};
use crate::protocol::pb::ConversationKind;
use crate::store::UserId;
use std::sync::atomic::Ordering::{Acquire, Relaxed, SeqCst};
use std::sync::{Arc, Weak};
use tokio_util::sync::CancellationToken;

/// How often the sweep looks for idle conversations, ms (on the registry's clock).
pub const SWEEP_EVERY_MS: i64 = 60_000;

/// A cell the sweep chose: which one, how many times it had been taken then, and how many
/// member records it held.
struct Chosen {
    cell: Weak<ConvCell>,
    checkouts: u64,
    members: usize,
}

/// Runs the sweep until `shutdown`.
pub async fn run(registry: Arc<Registry>, shutdown: CancellationToken) {
    loop {
        let next = registry.now() + SWEEP_EVERY_MS;
        match registry.sweep_cells().await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(unloaded = n, "idle conversations unloaded"),
            Err(e) => {
                tracing::error!(error = %e, "unloading idle conversations failed; sweep stopped");
                return;
            }
        }
        registry.stats.conversation_sweeps.inc();
        tokio::select! {
            _ = registry.clock.sleep_until(next) => {}
            _ = registry.cells_over.notified() => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

impl Registry {
    /// Counts a cell put in `convs` holding `held` member records (its `members_held` as it
    /// went in) and wakes the sweep when that makes too many.
    pub(super) fn cell_loaded(&self, held: usize) {
        let loaded = &self.stats.conversations_loaded;
        loaded.inc();
        let members = &self.stats.conversation_members_loaded;
        members.add(held as u64);
        if loaded.get() > self.cells_wake_above.load(Relaxed) as u64
            || members.get() > self.members_wake_above.load(Relaxed) as u64
        {
            self.cells_over.notify_one();
        }
    }

    /// Unloads the idle cells (and the least recently used ones over `conversation_cells_max`
    /// or `conversation_members_loaded_max`) that nobody uses; returns how many went.
    pub async fn sweep_cells(&self) -> Result<usize, Error> {
        let max = self.config.conversation_cells_max;
        let low = max - max / 10;
        let members_max = self.config.conversation_members_loaded_max;
        let members_low = members_max - members_max / 10;
        let idle_ms = i64::try_from(self.config.conversation_idle_secs)
            .unwrap_or(i64::MAX)
            .saturating_mul(1000);
        let now = self.now();
        // Under each shard's write lock, so no request is between taking a cell and counting
        // that it did.
        let mut free: Vec<(i64, Chosen)> = Vec::new();
        let mut loaded = 0usize;
        let mut members = 0usize;
        let gauge = &self.stats.conversation_members_loaded;
        self.convs.retain(|_, c| {
            loaded += 1;
            // Counted again (members joined or left since the load), unless in use right now.
            let held = match c.state.try_lock() {
                Ok(st) => {
                    let now_held = st.members.len();
                    let was = c.members_held.swap(now_held, Relaxed);
                    gauge.add(now_held as u64);
                    gauge.sub(was as u64);
                    now_held
                }
                Err(_) => c.members_held.load(Relaxed),
            };
            members += held;
            if Arc::strong_count(c) == 1 {
                let chosen = Chosen {
                    cell: Arc::downgrade(c),
                    checkouts: c.checkouts.load(Relaxed),
                    members: held,
                };
                free.push((c.used_at.load(Relaxed), chosen));
            }
            true
        });
        // What the last holders of the chosen cells did before letting go (queueing writes)
        // happened before what follows (the barrier is queued after those writes).
        std::sync::atomic::fence(Acquire);
        let over = if loaded > max { loaded - low } else { 0 };
        let members_over = if members > members_max {
            members - members_low
        } else {
            0
        };
        let mut chosen: Vec<Chosen> = Vec::new();
        if over > 0 || members_over > 0 {
            // The least recently used until both are down, and any others idle for long
            // enough.
            free.sort_unstable_by_key(|(used, _)| *used);
            let (mut cells, mut records) = (0usize, 0usize);
            let k = free
                .iter()
                .take_while(|(_, c)| {
                    let more = cells < over || records < members_over;
                    cells += 1;
                    records += c.members;
                    more
                })
                .count();
            let rest = free.split_off(k);
            chosen.extend(free.into_iter().map(|(_, c)| c));
            free = rest;
        }
        if idle_ms > 0 {
            chosen.extend(
                free.into_iter()
                    .filter(|(used, _)| now.saturating_sub(*used) >= idle_ms)
                    .map(|(_, c)| c),
            );
        }
        let mut unloaded = 0;
        if !chosen.is_empty() {
            self.writer.barrier().await?;
            for c in chosen {
                unloaded += usize::from(self.unload(c));
            }
        }
        // Woken again by the first load over the cap; while the cells that had to stay are
        // more than the cap, once the loads since make another tenth of it (not at each).
        let left = self.stats.conversations_loaded.get() as usize;
        let wake_above = if left > max {
            left.saturating_add(max / 10)
        } else {
            max
        };
        self.cells_wake_above.store(wake_above, Relaxed);
        let held = gauge.get() as usize;
        let wake_above = if held > members_max {
            held.saturating_add(members_max / 10)
        } else {
            members_max
        };
        self.members_wake_above.store(wake_above, Relaxed);
        if unloaded > 0 {
            self.stats.conversations_unloaded.add(unloaded as u64);
        }
        Ok(unloaded)
    }

    /// Takes one chosen cell out of memory, unless it was taken since it was chosen, is held
    /// or holds what the store does not. Returns whether it went.
    fn unload(&self, chosen: Chosen) -> bool {
        let Some(cell) = chosen.cell.upgrade() else {
            return false;
        };
        let num = cell.num;
        let mut out = None;
        let removed = self.convs.remove_if(&num, |_, c| {
            // Two references: the map's and the one upgraded here.
            if !Arc::ptr_eq(c, &cell)
                || Arc::strong_count(c) != 2
                || c.checkouts.load(Relaxed) != chosen.checkouts
            {
                return false;
            }
            std::sync::atomic::fence(Acquire);
            // Nobody holds it, so nobody holds its lock; `try_lock` only to be sure.
            let Ok(st) = c.state.try_lock() else {
                return false;
            };
            let pinned = st.deleted
                || st.expired
                || st.last_seq != st.durable_seq
                || (st.kind() == ConversationKind::ChatRoom && !st.members.is_empty())
                || self.presence.has_subscribers(num);
            if pinned {
                return false;
            }
            let pair: Vec<UserId> = st
                .record
                .pair
                .iter()
                .map(|u| UserId::from(u.as_str()))
                .collect();
            let kind = st.kind();
            let head = Head::of(&st);
            // Bumped before the cell leaves (both under the map's lock): a load that finds it
            // gone reads the store again if it began before.
            let removals = self.removals.fetch_add(1, SeqCst) + 1;
            out = Some((pair, kind, head, removals));
            true
        });
        let held = cell.members_held.load(Relaxed);
        drop(cell);
        let (Some(_), Some((pair, kind, head, removals))) = (removed, out) else {
            return false;
        };
        self.stats.conversations_loaded.dec();
        self.stats.conversation_members_loaded.sub(held as u64);
        // The indexes that lead to it are read from the store again when needed.
        match kind {
            ConversationKind::Direct if pair.len() == 2 => {
                let key = (pair[0].clone(), pair[1].clone());
                self.directs.remove_if(&key, |_, n| *n == num);
            }
            ConversationKind::Temporary => {
                self.temp_uniques.remove_if(&pair, |_, n| *n == num);
            }
            _ => {}
        }
        if let Some(head) = head {
            self.keep_head(num, head, removals);
        }
        true
    }

    /// How many conversations are loaded in memory.
    pub fn loaded_conversations(&self) -> usize {
        self.stats.conversations_loaded.get() as usize
    }
}
