//! Counters the server keeps about itself (exposed on `/healthz`; tests wait on them).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::Notify;

/// A monotonically increasing counter that can be waited on.
#[derive(Debug, Default)]
pub struct Counter {
    value: AtomicU64,
    changed: Notify,
}

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.value.fetch_add(n, Ordering::Relaxed);
        self.changed.notify_waiters();
    }
    pub fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }
    /// Waits until the counter reaches `n`.
    pub async fn wait_for(&self, n: u64) {
        loop {
            let notified = self.changed.notified();
            if self.get() >= n {
                return;
            }
            notified.await;
        }
    }
}

/// A value that goes up and down (open connections), and can be waited on.
#[derive(Debug, Default)]
pub struct Gauge {
    value: AtomicU64,
    changed: Notify,
}

impl Gauge {
    pub fn inc(&self) {
        self.value.fetch_add(1, Ordering::Relaxed);
        self.changed.notify_waiters();
    }
    pub fn dec(&self) {
        self.value.fetch_sub(1, Ordering::Relaxed);
        self.changed.notify_waiters();
    }
    pub fn add(&self, n: u64) {
        self.value.fetch_add(n, Ordering::Relaxed);
        self.changed.notify_waiters();
    }
    pub fn sub(&self, n: u64) {
        self.value.fetch_sub(n, Ordering::Relaxed);
        self.changed.notify_waiters();
    }
    pub fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }
    /// Waits until the value is at least `n`.
    pub async fn wait_for(&self, n: u64) {
        loop {
            let notified = self.changed.notified();
            if self.get() >= n {
                return;
            }
            notified.await;
        }
    }
    /// Waits until the value is at most `n`.
    pub async fn wait_for_at_most(&self, n: u64) {
        loop {
            let notified = self.changed.notified();
            if self.get() <= n {
                return;
            }
            notified.await;
        }
    }
}

/// A plain counter for hot paths (nobody waits on it).
#[derive(Debug, Default)]
pub struct Count(AtomicU64);

impl Count {
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Server-wide counters.
#[derive(Debug, Default)]
pub struct Stats {
    pub connections_accepted: Counter,
    /// Connections accepted whose WebSocket upgrade is not done (health checks included).
    pub pending_handshakes: Arc<Gauge>,
    /// Upgraded connections that have not logged in.
    pub pending_logins: Arc<Gauge>,
    /// Connections closed at once because `max_pending_handshakes` (or its per-address cap)
    /// was reached, or whose PROXY header was missing, malformed or from an untrusted peer.
    pub refused_handshakes: Counter,
    /// Upgrades refused with 503 because `max_pending_logins` (or its per-address cap) was
    /// reached.
    pub refused_logins: Counter,
    /// Failed accepts (out of file descriptors and the like).
    pub accept_failures: Counter,
    /// Connections answered 503 and closed at once at the file-descriptor limit.
    pub refused_overloaded: Counter,
    /// WebSocket connections from the upgrade until their socket is dropped (logged in or not).
    pub connections_open: Gauge,
    pub sessions_logged_in: Counter,
    pub sessions_closed: Counter,
    pub frames_queued: Count,
    pub slow_consumer_closes: Counter,
    /// Connections dropped because a write made no progress for `write_timeout_ms`.
    pub write_timeouts: Counter,
    /// Frames that could not be decoded, broke the WebSocket protocol or were too large.
    pub malformed_frames: Counter,
    pub conversations_expired: Counter,
    pub wills_sent: Counter,
    pub messages_committed: Count,
    pub commits: Count,
    /// Webhook events written to the outbox.
    pub webhook_events_written: Count,
    /// Webhook events an endpoint answered 2xx for.
    pub webhook_events_delivered: Counter,
    /// Webhook POSTs that failed (not answered 2xx in time).
    pub webhook_attempts_failed: Counter,
    /// Webhook events dead-lettered after their batch's last attempt.
    pub webhook_dead_letters: Counter,
    /// Webhook events dropped undelivered because the outbox was over its byte cap.
    pub webhook_events_dropped: Counter,
    /// Bytes of webhook events in the outbox.
    pub webhook_outbox_bytes: AtomicU64,
    /// Distributions for `/metrics`.
    pub histograms: Histograms,
    /// Messages deleted by history retention (`history_retention_days`).
    pub history_messages_deleted: Counter,
    /// Conversations deleted from the store by a purge (deleted for everyone with their
    /// messages, expired or ended temporary ones), counted once the purge is over.
    pub conversations_purged: Counter,
    /// Store commits of those purges (`history_retention_batch` messages each, then the rest).
    pub purge_commits: Counter,
    /// History retention sweeps finished.
    pub history_sweeps: Counter,
    /// List tombstones deleted for being older than `list_tombstone_retention_secs`.
    pub list_tombstones_swept: Counter,
    /// Logged user events deleted for being older than `list_tombstone_retention_secs`.
    pub user_events_swept: Counter,
    /// List tombstone sweeps finished.
    pub tombstone_sweeps: Counter,
    /// Conversations whose state is loaded in memory (see `conversation_cells_max`).
    pub conversations_loaded: Gauge,
    /// Member records held by the loaded conversations, as last counted (see
    /// `conversation_members_loaded_max`).
    pub conversation_members_loaded: Gauge,
    /// Conversations unloaded from memory because they were idle or over
    /// `conversation_cells_max` (each reloads from the store on its next use).
    pub conversations_unloaded: Counter,
    /// Sweeps for idle conversations finished.
    pub conversation_sweeps: Counter,
    /// Requests by kind and outcome, frames and bytes by dialect, for `/metrics`.
    pub traffic: crate::traffic::Traffic,
}

/// Distributions kept for `/metrics` (each observation is a few atomic adds).
#[derive(Debug)]
pub struct Histograms {
    /// Seconds one group commit (write and flush) took.
    pub commit_seconds: prometheus_client::metrics::histogram::Histogram,
    /// Writes (messages, read positions, events…) in one group commit.
    pub commit_ops: prometheus_client::metrics::histogram::Histogram,
    /// Seconds from a stored send's arrival at the registry to its ack (durable).
    pub send_seconds: prometheus_client::metrics::histogram::Histogram,
    /// Users one delivery was addressed to (conversation members).
    pub fanout_users: prometheus_client::metrics::histogram::Histogram,
}

impl Default for Histograms {
    fn default() -> Self {
        use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
        // 50 µs to about 3 s.
        let seconds = || Histogram::new(exponential_buckets(0.000_05, 3.0, 11));
        Histograms {
            commit_seconds: seconds(),
            commit_ops: Histogram::new(exponential_buckets(1.0, 4.0, 8)),
            send_seconds: seconds(),
            fanout_users: Histogram::new(exponential_buckets(1.0, 4.0, 9)),
        }
    }
}
