//! The soak: a mixed load held for `--duration-secs`, to see what time does to the server.
//!
//! At once, on fixed schedules (nothing closed-loop, so the load is the same at minute 1 and
//! minute 30):
//! - chat: `--pairs` direct conversations, both sides sending, `--rate` messages/s in all;
//! - fan-out: one sender to a group of `--group-size` members at `--fanout-rate` messages/s;
//! - logins: `--logins-per-sec` sessions connect, log in (the unread summary included) and go;
//! - reads: `--reads-per-sec` requests of a second device of a chat user, alternating the
//!   first page of its conversation list and the newest page of a conversation's history;
//! - misbehaving clients, `--misbehaving-per-sec` in turn: a frame of garbage after the
//!   upgrade (the server must close the connection), a member of the group that logs in and
//!   then never reads for [`SLOW_HOLD`] (the server must bound what it holds for it), and a
//!   handshake that stops halfway (the server must close it).
//!
//! Every [`Params::sample_secs`] the server's RSS and the bytes of its data directory are
//! sampled; the runner fits a line through the samples after the first fifth of the run (the
//! warm-up: caches fill) and reports the slopes per 10 minutes. What the misbehaving clients
//! earn (closed connections) is counted apart from errors; every other failure is an error,
//! and every acked message must reach its recipients.

use crate::hist::Lat;
use crate::live::Live;
use crate::params::Params;
use crate::procstat;
use crate::raw::{Expect, Plan, Raw, Sched, now_ns};
use crate::runner::dir_bytes;
use crate::scenario::{
    CONNECT, Conn, Gate, PAGE, ShardResult, client_login, collect, new_run, open_conns, secs,
    token, user,
};
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tidings::client::{Client, connect_raw};
use tidings::protocol::pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// How long a client that never reads keeps its connection.
pub const SLOW_HOLD: Duration = Duration::from_secs(10);
/// How long a misbehaving client waits for the server to close on it before it gives up.
const CLOSE_WAIT: Duration = Duration::from_secs(30);
/// Members of the group that log in and never read (in turn).
const SLOW_MEMBERS: usize = 4;
/// Side tasks (logins, reads, misbehaving clients) in flight at most; a tick finding this
/// many still running is counted as skipped (the generator could not keep the schedule).
const MAX_SIDE_TASKS: usize = 256;

/// One sample of the server over time.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct SoakSample {
    /// Seconds since the go.
    pub at_secs: f64,
    pub rss_bytes: u64,
    pub disk_bytes: u64,
}

/// What the side loads of a soak did.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SoakCounts {
    pub logins: u64,
    pub login_failures: u64,
    /// Garbage frames sent, and connections the server closed after one.
    pub garbage: u64,
    pub garbage_closed: u64,
    /// Members that logged in and did not read for [`SLOW_HOLD`] (and their failed logins).
    pub slow: u64,
    pub slow_login_failures: u64,
    /// Handshakes stopped halfway, and those the server closed.
    pub stalled: u64,
    pub stalled_closed: u64,
    /// Ticks of a side load skipped because [`MAX_SIDE_TASKS`] were still running.
    pub skipped: u64,
}

/// Runs the soak (one process).
pub async fn soak(p: &Params, gate: Gate, live: Arc<Live>) -> anyhow::Result<ShardResult> {
    anyhow::ensure!(p.pairs >= 1, "soak needs --pairs of at least 1");
    anyhow::ensure!(p.group_size >= 2, "soak needs --group-size of at least 2");
    anyhow::ensure!(
        p.rate > 0.0 && p.fanout_rate > 0.0,
        "soak runs on fixed schedules: --rate and --fanout-rate must be above 0"
    );
    let mut res = ShardResult::default();

    // Chat pairs: users 0..2*pairs, pair k is (2k, 2k+1), created by its first user.
    let chat_users: Vec<String> = (0..2 * p.pairs).map(|i| user(p, "soak-chat", i)).collect();
    let mut conns = open_conns(p, chat_users.clone(), &live, &mut res).await;
    let mut pairs = Vec::new();
    for k in 0..p.pairs {
        let (Some(mut a), Some(b)) = (conns[2 * k].take(), conns[2 * k + 1].take()) else {
            anyhow::bail!("chat pair {k} failed to log in");
        };
        let conv = a.pair(chat_users[2 * k + 1].clone()).await?;
        pairs.push((a, b, conv));
    }
    let reader_conv = pairs[0].2.clone();

    // The group: its first member sends; the slow members are in it too, offline until
    // their turn.
    let members: Vec<String> = (0..p.group_size)
        .map(|i| user(p, "soak-group", i))
        .collect();
    let slow: Vec<String> = (0..SLOW_MEMBERS).map(|i| user(p, "soak-slow", i)).collect();
    let group_conns: Vec<Conn> = open_conns(p, members.clone(), &live, &mut res)
        .await
        .into_iter()
        .collect::<Option<_>>()
        .ok_or_else(|| anyhow::anyhow!("a group member failed to log in"))?;
    let mut group_conns = group_conns;
    let mut others = members[1..].to_vec();
    others.extend(slow.iter().cloned());
    let group = group_conns[0].group(&others).await?;

    // The reader: a second device of the first chat user.
    let reader = client_login(&p.url, &token(p, &chat_users[0])).await?;
    gate.pass().await?;

    // One run for both kinds of senders: chat senders are 0..2*pairs, the group's sender
    // the last.
    let fan_index = 2 * p.pairs;
    let run = new_run(p, fan_index + 1, live.clone());
    res.go_ns = run.go_ns;
    let chat_sched = Sched::Rate {
        rate: p.rate / (2 * p.pairs) as f64,
    };
    let mut hot = Vec::new();
    for (k, (a, b, conv)) in pairs.into_iter().enumerate() {
        let (ia, ib) = (2 * k, 2 * k + 1);
        let pa = Plan {
            send: Some((conv.clone(), ia, chat_sched)),
            expect: Some(Expect::Peer(ib)),
        };
        let pb = Plan {
            send: Some((conv, ib, chat_sched)),
            expect: Some(Expect::Peer(ia)),
        };
        hot.push(tokio::spawn(a.drive(pa, run.clone())));
        hot.push(tokio::spawn(b.drive(pb, run.clone())));
    }
    for (i, c) in group_conns.drain(..).enumerate() {
        let plan = Plan {
            send: (i == 0).then(|| {
                (
                    group.clone(),
                    fan_index,
                    Sched::Rate {
                        rate: p.fanout_rate,
                    },
                )
            }),
            expect: (i > 0).then_some(Expect::Peer(fan_index)),
        };
        hot.push(tokio::spawn(c.drive(plan, run.clone())));
    }

    let until = run.send_until;
    let side = Side {
        p: p.clone(),
        counts: Arc::default(),
        pages: Arc::default(),
        live: live.clone(),
    };
    let sampler = tokio::spawn(sample(p.clone(), run.go, run.hard_stop));
    let logins = tokio::spawn(side.clone().logins(until));
    let reads = tokio::spawn(side.clone().reads(reader, reader_conv, until));
    let misbehaving = tokio::spawn(side.clone().misbehave(slow, until));

    let mut stats = Vec::new();
    for t in hot {
        stats.push(t.await?);
    }
    collect(&mut res, &run, stats);
    let (login_lat, read_lat) = (logins.await??, reads.await??);
    misbehaving.await??;
    res.hist_mut(CONNECT).merge(&login_lat);
    res.hist_mut(PAGE).merge(&read_lat);
    let counts = side.counts.snapshot();
    res.pages = side.pages.0.load(Ordering::Relaxed);
    res.page_errors = side.pages.1.load(Ordering::Relaxed);
    res.connect_failures += counts.login_failures + counts.slow_login_failures;
    res.samples = sampler.await?;
    res.soak = Some(counts);
    res.end_ns = now_ns();
    Ok(res)
}

/// Counters the side tasks share.
#[derive(Default)]
struct Counters {
    logins: AtomicU64,
    login_failures: AtomicU64,
    garbage: AtomicU64,
    garbage_closed: AtomicU64,
    slow: AtomicU64,
    slow_login_failures: AtomicU64,
    stalled: AtomicU64,
    stalled_closed: AtomicU64,
    skipped: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> SoakCounts {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        SoakCounts {
            logins: g(&self.logins),
            login_failures: g(&self.login_failures),
            garbage: g(&self.garbage),
            garbage_closed: g(&self.garbage_closed),
            slow: g(&self.slow),
            slow_login_failures: g(&self.slow_login_failures),
            stalled: g(&self.stalled),
            stalled_closed: g(&self.stalled_closed),
            skipped: g(&self.skipped),
        }
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

#[derive(Clone)]
struct Side {
    p: Params,
    counts: Arc<Counters>,
    /// Pages read, and reads that failed.
    pages: Arc<(AtomicU64, AtomicU64)>,
    live: Arc<Live>,
}

/// Ticks at `per_sec` until `until`, each tick running `task(n)` in its own task (at most
/// [`MAX_SIDE_TASKS`] at once; a tick finding them all busy is skipped and counted). Returns
/// what the tasks returned, once all have finished.
async fn ticks<F, Fut, T>(per_sec: f64, until: Instant, skipped: &AtomicU64, task: F) -> Vec<T>
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let mut out = Vec::new();
    if per_sec <= 0.0 {
        return out;
    }
    let mut tasks = JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_sec));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if Instant::now() >= until {
                    break;
                }
                if tasks.len() >= MAX_SIDE_TASKS {
                    bump(skipped);
                } else {
                    tasks.spawn(task(n));
                    n += 1;
                }
            }
            Some(Ok(t)) = tasks.join_next(), if !tasks.is_empty() => out.push(t),
        }
    }
    while let Some(t) = tasks.join_next().await {
        if let Ok(t) = t {
            out.push(t);
        }
    }
    out
}

impl Side {
    /// Sessions that log in and leave; their connect-to-summary latency.
    async fn logins(self, until: Instant) -> anyhow::Result<Lat> {
        let users = 100;
        let per_sec = self.p.logins_per_sec;
        let done = ticks(per_sec, until, &self.counts.skipped, |n| {
            let url = self.p.url.clone();
            let token = token(&self.p, &user(&self.p, "soak-login", n as usize % users));
            let (counts, live) = (self.counts.clone(), self.live.clone());
            async move {
                let t = Instant::now();
                match client_login(&url, &token).await {
                    Ok(c) => {
                        bump(&counts.logins);
                        let took = t.elapsed();
                        c.disconnect();
                        Some(took)
                    }
                    Err(_) => {
                        bump(&counts.login_failures);
                        bump(&live.errors);
                        None
                    }
                }
            }
        })
        .await;
        Ok(latencies(done))
    }

    /// List and history pages of one logged-in device; their latency.
    async fn reads(self, reader: Client, conv: String, until: Instant) -> anyhow::Result<Lat> {
        let reader = Arc::new(reader);
        let done = ticks(self.p.reads_per_sec, until, &self.counts.skipped, |n| {
            let (reader, conv, pages, live) = (
                reader.clone(),
                conv.clone(),
                self.pages.clone(),
                self.live.clone(),
            );
            async move {
                let t = Instant::now();
                let ok = if n % 2 == 0 {
                    let req = pb::ListConversations {
                        limit: 20,
                        ..Default::default()
                    };
                    reader.list_conversations(req).await.is_ok()
                } else {
                    reader.history(&conv, 0, 50).await.is_ok()
                };
                if ok {
                    pages.0.fetch_add(1, Ordering::Relaxed);
                    live.pages.fetch_add(1, Ordering::Relaxed);
                    Some(t.elapsed())
                } else {
                    pages.1.fetch_add(1, Ordering::Relaxed);
                    live.errors.fetch_add(1, Ordering::Relaxed);
                    None
                }
            }
        })
        .await;
        Ok(latencies(done))
    }

    /// Garbage, a member that never reads, a stalled handshake: in turn.
    async fn misbehave(self, slow: Vec<String>, until: Instant) -> anyhow::Result<()> {
        let addr = host_port(&self.p.url)?;
        ticks(
            self.p.misbehaving_per_sec,
            until,
            &self.counts.skipped,
            |n| {
                let (url, addr, counts) = (self.p.url.clone(), addr.clone(), self.counts.clone());
                let slow_token = token(&self.p, &slow[(n as usize / 3) % slow.len()]);
                async move {
                    match n % 3 {
                        0 => garbage(&url, n, &counts).await,
                        1 => never_reads(&url, &slow_token, until, &counts).await,
                        _ => stalled_handshake(&addr, &counts).await,
                    }
                }
            },
        )
        .await;
        Ok(())
    }
}

/// Sends one binary frame of pseudo-random bytes after the upgrade and waits for the server
/// to close the connection.
async fn garbage(url: &str, n: u64, counts: &Counters) {
    let Ok(mut ws) = connect_raw(url).await else {
        return;
    };
    bump(&counts.garbage);
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let len = 1 + (x % 512) as usize;
    let bytes: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    if ws.send(WsMessage::Binary(bytes.into())).await.is_err() {
        return;
    }
    let closed = tokio::time::timeout(CLOSE_WAIT, async {
        while let Some(m) = ws.next().await {
            if matches!(m, Ok(WsMessage::Close(_)) | Err(_)) {
                return;
            }
        }
    })
    .await;
    if closed.is_ok() {
        bump(&counts.garbage_closed);
    }
}

/// Logs in as a member of the group and holds the connection for [`SLOW_HOLD`] (at most
/// until the senders stop) without reading a byte.
async fn never_reads(url: &str, token: &str, until: Instant, counts: &Counters) {
    match Raw::login(url, token).await {
        Ok(raw) => {
            bump(&counts.slow);
            // Holding it unread is the point: the bound of this client, not a wait for an
            // event.
            tokio::time::sleep_until((Instant::now() + SLOW_HOLD).min(until).into()).await;
            drop(raw);
        }
        Err(_) => bump(&counts.slow_login_failures),
    }
}

/// Sends half an upgrade request and waits for the server to close the connection.
async fn stalled_handshake(addr: &str, counts: &Counters) {
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return;
    };
    bump(&counts.stalled);
    if s.write_all(b"GET /ws HTTP/1.1\r\nHost: soak\r\nUpgrade: websocket\r\n")
        .await
        .is_err()
    {
        return;
    }
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(CLOSE_WAIT, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    if closed.is_ok() {
        bump(&counts.stalled_closed);
    }
}

/// The latencies of the side tasks that succeeded.
fn latencies(done: Vec<Option<Duration>>) -> Lat {
    let mut lat = Lat::default();
    for took in done.into_iter().flatten() {
        lat.record_ns(took.as_nanos() as u64);
    }
    lat
}

/// `host:port` of a `ws://host:port/…` URL.
fn host_port(url: &str) -> anyhow::Result<String> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| anyhow::anyhow!("soak needs a ws:// URL, got {url}"))?;
    Ok(rest.split('/').next().unwrap_or(rest).to_owned())
}

/// Samples the server's RSS and data directory every `--sample-secs` until `stop`.
async fn sample(p: Params, go: Instant, stop: Instant) -> Vec<SoakSample> {
    let mut out = Vec::new();
    let mut tick = tokio::time::interval(secs(p.sample_secs.max(0.1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = Instant::now();
        if now >= stop {
            return out;
        }
        let rss_bytes = p
            .server_pid
            .and_then(|pid| procstat::sample(pid).ok())
            .map_or(0, |s| s.rss_bytes);
        let disk_bytes = p.data_dir.as_deref().map_or(0, dir_bytes);
        out.push(SoakSample {
            at_secs: (now - go).as_secs_f64(),
            rss_bytes,
            disk_bytes,
        });
    }
}

/// The least-squares slope of `value` over `at_secs`, per 10 minutes, through the samples
/// after the first fifth of `run_secs` (the warm-up). `None` with fewer than 3 of them.
pub fn slope_per_10_min(
    samples: &[SoakSample],
    run_secs: f64,
    value: impl Fn(&SoakSample) -> u64,
) -> Option<f64> {
    let pts: Vec<(f64, f64)> = samples
        .iter()
        .filter(|s| s.at_secs >= run_secs / 5.0)
        .map(|s| (s.at_secs, value(s) as f64))
        .collect();
    if pts.len() < 3 {
        return None;
    }
    let n = pts.len() as f64;
    let (mx, my) = (
        pts.iter().map(|p| p.0).sum::<f64>() / n,
        pts.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for (x, y) in &pts {
        sxy += (x - mx) * (y - my);
        sxx += (x - mx) * (x - mx);
    }
    (sxx > 0.0).then(|| sxy / sxx * 600.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slope_skips_the_warm_up_and_scales_to_10_minutes() {
        // 1 KiB per second after a jump during the first fifth.
        let samples: Vec<SoakSample> = (0..=100)
            .map(|i| SoakSample {
                at_secs: i as f64,
                rss_bytes: if i < 20 { 0 } else { 1_000_000 + 1024 * i },
                disk_bytes: 7,
            })
            .collect();
        let s = slope_per_10_min(&samples, 100.0, |s| s.rss_bytes).unwrap();
        assert!((s - 1024.0 * 600.0).abs() < 1e-6, "{s}");
        assert_eq!(
            slope_per_10_min(&samples, 100.0, |s| s.disk_bytes),
            Some(0.0)
        );
        assert_eq!(
            slope_per_10_min(&samples[..21], 100.0, |s| s.rss_bytes),
            None
        );
    }

    #[test]
    fn host_port_reads_a_loopback_url() {
        assert_eq!(
            host_port("ws://127.0.0.1:7400/ws").unwrap(),
            "127.0.0.1:7400"
        );
        assert!(host_port("wss://x/ws").is_err());
    }
}
