//! `/metrics` on the admin listener: the server's counters in the Prometheus text format.
//!
//! Counters and gauges are read from [`Stats`] at scrape time, so serving costs nothing on
//! the hot paths; histograms are observed where the work happens. No label carries a user or
//! conversation id.

use crate::hub::Hub;
use crate::registry::writer::Writer;
use crate::stats::Stats;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};
use std::sync::Arc;

/// The registry `/metrics` encodes.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    pub fn new(stats: Arc<Stats>, hub: Arc<Hub>, writer: Writer, max_pending: usize) -> Self {
        let mut registry = Registry::with_prefix("tidings");
        let h = &stats.histograms;
        registry.register_with_unit(
            "store_commit",
            "Time one group commit (write and flush) took",
            Unit::Seconds,
            h.commit_seconds.clone(),
        );
        registry.register(
            "store_commit_ops",
            "Writes in one group commit",
            h.commit_ops.clone(),
        );
        registry.register_with_unit(
            "send_ack",
            "Time from a stored send's arrival to its ack (durable)",
            Unit::Seconds,
            h.send_seconds.clone(),
        );
        registry.register(
            "fanout_users",
            "Users one delivery was addressed to",
            h.fanout_users.clone(),
        );
        registry.register_collector(Box::new(Counts {
            stats,
            hub,
            writer,
            max_pending,
        }));
        Metrics { registry }
    }

    /// The text exposition (`text/plain; version=0.0.4` compatible, OpenMetrics).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[derive(Debug)]
struct Counts {
    stats: Arc<Stats>,
    hub: Arc<Hub>,
    writer: Writer,
    max_pending: usize,
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let g = ConstGauge::new(v as i64);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

impl Collector for Counts {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let s = &self.stats;
        let counters = [
            (
                "connections_accepted",
                "TCP connections accepted",
                s.connections_accepted.get(),
            ),
            (
                "refused_handshakes",
                "Connections refused before the upgrade (pending-handshake caps, PROXY header)",
                s.refused_handshakes.get(),
            ),
            (
                "refused_logins",
                "Upgrades refused because too many connections had not logged in",
                s.refused_logins.get(),
            ),
            (
                "accept_failures",
                "Failed accepts (out of file descriptors and the like)",
                s.accept_failures.get(),
            ),
            (
                "refused_overloaded",
                "Connections answered 503 at the file-descriptor limit",
                s.refused_overloaded.get(),
            ),
            (
                "sessions_logged_in",
                "Sessions that logged in",
                s.sessions_logged_in.get(),
            ),
            ("sessions_closed", "Sessions ended", s.sessions_closed.get()),
            (
                "pushes_queued",
                "Frames queued to sessions (deliveries)",
                s.frames_queued.get(),
            ),
            (
                "slow_consumer_closes",
                "Sessions closed because their outbox filled up",
                s.slow_consumer_closes.get(),
            ),
            (
                "write_timeouts",
                "Connections dropped because a write made no progress",
                s.write_timeouts.get(),
            ),
            (
                "malformed_frames",
                "Frames that could not be decoded or broke the protocol",
                s.malformed_frames.get(),
            ),
            (
                "conversations_expired",
                "Temporary conversations that expired",
                s.conversations_expired.get(),
            ),
            ("wills_sent", "Will messages sent", s.wills_sent.get()),
            (
                "history_messages_deleted",
                "Messages deleted by history retention",
                s.history_messages_deleted.get(),
            ),
            (
                "list_tombstones_swept",
                "List tombstones deleted for being older than the retention",
                s.list_tombstones_swept.get(),
            ),
            (
                "user_events_swept",
                "Logged user events deleted for being older than the retention",
                s.user_events_swept.get(),
            ),
            (
                "conversations_purged",
                "Conversations deleted from the store by a purge",
                s.conversations_purged.get(),
            ),
            (
                "purge_commits",
                "Store commits of conversation purges",
                s.purge_commits.get(),
            ),
            (
                "conversations_unloaded",
                "Conversations unloaded from memory (idle, or over conversation_cells_max)",
                s.conversations_unloaded.get(),
            ),
            (
                "messages_committed",
                "Messages made durable",
                s.messages_committed.get(),
            ),
            ("store_commits", "Group commits", s.commits.get()),
            (
                "webhook_events_written",
                "Webhook events written to the outbox",
                s.webhook_events_written.get(),
            ),
            (
                "webhook_events_delivered",
                "Webhook events an endpoint took (2xx)",
                s.webhook_events_delivered.get(),
            ),
            (
                "webhook_attempts_failed",
                "Webhook POSTs that failed",
                s.webhook_attempts_failed.get(),
            ),
            (
                "webhook_dead_letters",
                "Webhook events dead-lettered",
                s.webhook_dead_letters.get(),
            ),
            (
                "webhook_events_dropped",
                "Webhook events dropped over webhook_outbox_max_bytes",
                s.webhook_events_dropped.get(),
            ),
        ];
        for (name, help, v) in counters {
            counter(&mut e, name, help, v)?;
        }
        let gauges = [
            (
                "connections_open",
                "WebSocket connections open (logged in or not)",
                s.connections_open.get(),
            ),
            ("sessions", "Live sessions", self.hub.session_count() as u64),
            (
                "conversations_loaded",
                "Conversations whose state is loaded in memory",
                s.conversations_loaded.get(),
            ),
            (
                "conversation_members_loaded",
                "Member records held by the conversations loaded in memory",
                s.conversation_members_loaded.get(),
            ),
            (
                "pending_handshakes",
                "Connections accepted whose upgrade is not done",
                s.pending_handshakes.get(),
            ),
            (
                "pending_logins",
                "Upgraded connections not logged in yet",
                s.pending_logins.get(),
            ),
            (
                "webhook_outbox_bytes",
                "Bytes of webhook events not yet delivered to every endpoint",
                s.webhook_outbox_bytes
                    .load(std::sync::atomic::Ordering::Relaxed),
            ),
            (
                "writer_queue",
                "Writes queued for the store and not yet committed",
                self.writer.queued(self.max_pending) as u64,
            ),
        ];
        for (name, help, v) in gauges {
            gauge(&mut e, name, help, v)?;
        }
        self.traffic(&mut e)?;
        process(&mut e)
    }
}

impl Counts {
    /// Requests by dialect, kind and outcome; frames and bytes by dialect; sessions by dialect.
    fn traffic(&self, e: &mut DescriptorEncoder) -> std::fmt::Result {
        use prometheus_client::metrics::MetricType;
        let t = &self.stats.traffic;
        let mut family = e.encode_descriptor(
            "requests",
            "Requests answered, by dialect, request kind and outcome (ok or the error code)",
            None,
            MetricType::Counter,
        )?;
        for r in t.requests() {
            let labels = [
                ("dialect", r.dialect),
                ("type", r.kind.as_str()),
                ("code", r.code.as_str()),
            ];
            ConstCounter::new(r.count).encode(family.encode_family(&labels)?)?;
        }
        let frames = t.frames();
        type Field = fn(&crate::traffic::FrameCounts) -> u64;
        let per_dialect: [(&str, &str, Field); 4] = [
            ("frames_in", "Data frames read from clients", |f| {
                f.frames_in
            }),
            ("bytes_in", "Bytes of data frames read from clients", |f| {
                f.bytes_in
            }),
            ("frames_out", "Data frames written to clients", |f| {
                f.frames_out
            }),
            (
                "bytes_out",
                "Bytes of data frames written to clients",
                |f| f.bytes_out,
            ),
        ];
        for (name, help, value) in per_dialect {
            let mut family = e.encode_descriptor(name, help, None, MetricType::Counter)?;
            for f in &frames {
                ConstCounter::new(value(f))
                    .encode(family.encode_family(&[("dialect", f.dialect)])?)?;
            }
        }
        let mut family = e.encode_descriptor(
            "push_encodings",
            "Pushes encoded for sessions, by form: once per push and form, shared by every recipient of that form",
            None,
            MetricType::Counter,
        )?;
        for (form, n) in t.encodings() {
            ConstCounter::new(n).encode(family.encode_family(&[("form", form)])?)?;
        }
        let (native, leancloud) = self.hub.session_counts();
        let mut family = e.encode_descriptor(
            "dialect_sessions",
            "Live sessions by dialect",
            None,
            MetricType::Gauge,
        )?;
        for (dialect, n) in [("native", native), ("leancloud", leancloud)] {
            ConstGauge::new(n as i64).encode(family.encode_family(&[("dialect", dialect)])?)?;
        }
        Ok(())
    }
}

/// The process's resident memory, open file descriptors and CPU time, from `/proc` (Linux).
fn process(e: &mut DescriptorEncoder) -> std::fmt::Result {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: sysconf has no preconditions.
        let (page, ticks) = unsafe {
            (
                libc::sysconf(libc::_SC_PAGESIZE),
                libc::sysconf(libc::_SC_CLK_TCK),
            )
        };
        if let Ok(statm) = std::fs::read_to_string("/proc/self/statm")
            && let Some(rss) = statm
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
        {
            gauge(
                e,
                "process_resident_memory_bytes",
                "Resident memory",
                rss * page.max(1) as u64,
            )?;
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            gauge(
                e,
                "process_open_fds",
                "Open file descriptors",
                dir.count() as u64,
            )?;
        }
        // utime and stime are fields 14 and 15, counted after the command name's `)`.
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat")
            && let Some((_, rest)) = stat.rsplit_once(')')
        {
            let f: Vec<u64> = rest
                .split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|v| v.parse().ok())
                .collect();
            if let [user, system] = f[..] {
                let c = ConstCounter::new((user + system) as f64 / ticks.max(1) as f64);
                c.encode(e.encode_descriptor(
                    "process_cpu",
                    "CPU time used, user and system",
                    Some(&Unit::Seconds),
                    c.metric_type(),
                )?)?;
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = e;
    Ok(())
}
