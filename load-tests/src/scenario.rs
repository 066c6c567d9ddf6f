//! One shard of a scenario: the part of the work one process does. A run is one shard
//! in-process, or several worker processes whose results the parent merges.

use crate::hist::Lat;
use crate::lc::{self, Lc};
use crate::live::Live;
use crate::params::{Dialect, Params, Scenario};
use crate::raw::{self, ConnStats, Expect, Plan, Raw, Run, Sched, now_ns};
use futures_util::StreamExt;
use futures_util::stream;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tidings::client::Client;
use tidings::config::Config;
use tidings::protocol::pb::{self, server_frame::Body as Rep};

/// Histogram names.
pub const DELIVERED: &str = "send_to_delivered";
pub const ACK: &str = "send_to_ack";
pub const CONNECT: &str = "connect_login";
pub const PAGE: &str = "page";

/// What one shard measured.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ShardResult {
    pub sessions: u64,
    pub connect_failures: u64,
    pub sent: u64,
    pub acked: u64,
    pub failed: u64,
    pub delivered: u64,
    pub expected: u64,
    pub pages: u64,
    pub page_errors: u64,
    pub populated: u64,
    pub populate_secs: f64,
    pub go_ns: u64,
    pub end_ns: u64,
    pub last_ack_ns: u64,
    pub last_delivery_ns: u64,
    pub hist: BTreeMap<String, Lat>,
    /// soak: the server sampled over time, and what the side loads did.
    #[serde(default)]
    pub samples: Vec<crate::soak::SoakSample>,
    #[serde(default)]
    pub soak: Option<crate::soak::SoakCounts>,
}

impl ShardResult {
    pub fn merge(&mut self, o: ShardResult) {
        self.sessions += o.sessions;
        self.connect_failures += o.connect_failures;
        self.sent += o.sent;
        self.acked += o.acked;
        self.failed += o.failed;
        self.delivered += o.delivered;
        self.expected += o.expected;
        self.pages += o.pages;
        self.page_errors += o.page_errors;
        self.populated += o.populated;
        self.populate_secs = self.populate_secs.max(o.populate_secs);
        self.go_ns = if self.go_ns == 0 {
            o.go_ns
        } else {
            self.go_ns.min(o.go_ns)
        };
        self.end_ns = self.end_ns.max(o.end_ns);
        self.last_ack_ns = self.last_ack_ns.max(o.last_ack_ns);
        self.last_delivery_ns = self.last_delivery_ns.max(o.last_delivery_ns);
        for (k, v) in o.hist {
            self.hist.entry(k).or_default().merge(&v);
        }
        self.samples.extend(o.samples);
        if self.soak.is_none() {
            self.soak = o.soak;
        }
    }

    pub(crate) fn hist_mut(&mut self, name: &str) -> &mut Lat {
        self.hist.entry(name.to_owned()).or_default()
    }
}

/// How a shard tells that its setup is done, and waits for everyone's go.
pub enum Gate {
    /// Same process: call this (the parent samples the server), then go at once.
    InProcess(Box<dyn Fn() + Send + Sync>),
    /// Worker process: print `ready` on stdout, wait for a line on stdin.
    Worker,
}

impl Gate {
    pub(crate) async fn pass(&self) -> anyhow::Result<()> {
        match self {
            Gate::InProcess(f) => {
                f();
                Ok(())
            }
            Gate::Worker => {
                use tokio::io::AsyncBufReadExt;
                println!("ready");
                let mut line = String::new();
                tokio::io::BufReader::new(tokio::io::stdin())
                    .read_line(&mut line)
                    .await?;
                anyhow::ensure!(line.trim() == "go", "expected go from the parent");
                Ok(())
            }
        }
    }
}

/// A login token for `user`: HS256 when a secret is given, else the user id itself.
pub fn token(p: &Params, user: &str) -> String {
    match &p.secret {
        Some(secret) => {
            let cfg = Config {
                jwt_hs256_secret: Some(secret.clone()),
                ..Config::default()
            };
            tidings::auth::mint(&cfg, user, 24 * 3600, now_ns() as i64 / 1_000_000, false)
                .expect("HS256 minting with a secret cannot fail")
        }
        None => user.to_owned(),
    }
}

pub(crate) fn user(p: &Params, scenario: &str, i: usize) -> String {
    format!("{}-{scenario}-{i}", p.run_id.as_deref().unwrap_or("load"))
}

pub(crate) fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

fn range(total: usize, shard: usize, shards: usize) -> std::ops::Range<usize> {
    (total * shard / shards)..(total * (shard + 1) / shards)
}

/// Connects and logs in one typed client; waits for the `UnreadSummary` that ends login.
pub(crate) async fn client_login(url: &str, token: &str) -> anyhow::Result<Client> {
    let mut c = Client::connect(url).await?;
    c.login(token, "", 0).await?;
    loop {
        match c.next_push().await {
            Some(pb::ServerFrame {
                body: Some(Rep::UnreadSummary(_)),
                ..
            }) => return Ok(c),
            Some(_) => {}
            None => anyhow::bail!("closed during login"),
        }
    }
}

/// Opens `tokens.len()` typed sessions, `width` at a time, spreading starts over `ramp`;
/// returns them in the order of `tokens` (failed ones left out).
async fn open_clients(
    url: &str,
    tokens: Vec<String>,
    width: usize,
    ramp: Duration,
    live: &Live,
    res: &mut ShardResult,
) -> Vec<Client> {
    let n = tokens.len().max(1);
    let start = Instant::now();
    let mut out = Vec::with_capacity(tokens.len());
    let mut s = stream::iter(tokens.into_iter().enumerate())
        .map(|(i, t)| async move {
            tokio::time::sleep_until((start + ramp.mul_f64(i as f64 / n as f64)).into()).await;
            let t0 = Instant::now();
            let c = client_login(url, &t).await;
            (i, c, t0.elapsed())
        })
        .buffer_unordered(width.max(1));
    while let Some((i, c, took)) = s.next().await {
        match c {
            Ok(c) => {
                res.hist_mut(CONNECT).record_ns(took.as_nanos() as u64);
                res.sessions += 1;
                live.sessions.fetch_add(1, Ordering::Relaxed);
                out.push((i, c));
            }
            Err(_) => {
                res.connect_failures += 1;
                live.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, c)| c).collect()
}

/// Opens raw sessions for `users` (tokens), `width` at a time. Failures are counted.
async fn open_raw(
    p: &Params,
    tokens: Vec<String>,
    live: &Live,
    res: &mut ShardResult,
) -> Vec<Option<Raw>> {
    let url = p.url.as_str();
    let mut out: Vec<(usize, Option<Raw>)> = stream::iter(tokens.into_iter().enumerate())
        .map(|(i, t)| async move { (i, Raw::login(url, &t).await.ok()) })
        .buffer_unordered(p.concurrency.max(1))
        .collect()
        .await;
    out.sort_by_key(|(i, _)| *i);
    for (_, r) in &out {
        count_open(r.is_some(), live, res);
    }
    out.into_iter().map(|(_, r)| r).collect()
}

/// Counts a session that opened, or a failure.
fn count_open(opened: bool, live: &Live, res: &mut ShardResult) {
    if opened {
        res.sessions += 1;
        live.sessions.fetch_add(1, Ordering::Relaxed);
    } else {
        res.connect_failures += 1;
        live.errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// Opens LeanCloud sessions for `users` (`--concurrency` at a time, starts spread over
/// `ramp`), each `session/open` signed before its clock starts. With `record`, the time from
/// connecting to `session/opened` goes to the `connect_login` histogram. Failures are counted
/// (the first one is printed: a server without the dialect configured refuses every one).
async fn open_lc(
    p: &Params,
    users: &[String],
    ramp: Duration,
    record: bool,
    live: &Live,
    res: &mut ShardResult,
) -> Vec<Option<Lc>> {
    let setup = lc::Setup::from_params(p);
    let opens: Vec<_> = users
        .iter()
        .enumerate()
        .map(|(i, u)| lc::open_command(&setup, u, &format!("n{i}")))
        .collect();
    let (url, proto) = (p.url.as_str(), setup.protocol);
    let n = opens.len().max(1);
    let start = Instant::now();
    let mut s = stream::iter(opens.into_iter().enumerate())
        .map(|(i, open)| async move {
            tokio::time::sleep_until((start + ramp.mul_f64(i as f64 / n as f64)).into()).await;
            let t0 = Instant::now();
            let c = Lc::open(url, proto, open).await;
            (i, c, t0.elapsed())
        })
        .buffer_unordered(p.concurrency.max(1));
    let mut out: Vec<(usize, Option<Lc>)> = Vec::with_capacity(users.len());
    let mut first_error = None;
    while let Some((i, c, took)) = s.next().await {
        match c {
            Ok(c) => {
                if record {
                    res.hist_mut(CONNECT).record_ns(took.as_nanos() as u64);
                }
                res.sessions += 1;
                live.sessions.fetch_add(1, Ordering::Relaxed);
                out.push((i, Some(c)));
            }
            Err(e) => {
                first_error.get_or_insert(e);
                res.connect_failures += 1;
                live.errors.fetch_add(1, Ordering::Relaxed);
                out.push((i, None));
            }
        }
    }
    if let Some(e) = first_error {
        eprintln!("tidings-load: a LeanCloud session failed to open: {e:#}");
    }
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, c)| c).collect()
}

/// A logged-in connection for the message hot path, in either dialect.
pub(crate) enum Conn {
    Native(Raw),
    Lc(Lc),
}

impl Conn {
    /// The conversation of a pair: native, a direct conversation; LeanCloud, `conv/start` with
    /// the peer (`unique`, as the JS SDK defaults to), which tidings makes a group of two.
    pub(crate) async fn pair(&mut self, peer: String) -> anyhow::Result<String> {
        match self {
            Conn::Native(r) => {
                r.conversation(pb::CreateConversation {
                    kind: pb::ConversationKind::Direct as i32,
                    members: vec![peer],
                    ..Default::default()
                })
                .await
            }
            Conn::Lc(c) => c.start(vec![peer], true).await,
        }
    }

    /// A group of this member and `others`: native, created with 999 and added to 1000 per
    /// request; LeanCloud, `conv/start` and `conv/add` in chunks under the 5,000-byte limit.
    pub(crate) async fn group(&mut self, others: &[String]) -> anyhow::Result<String> {
        match self {
            Conn::Native(r) => {
                let first = others.len().min(999);
                let conv = r
                    .conversation(pb::CreateConversation {
                        kind: pb::ConversationKind::Group as i32,
                        members: others[..first].to_vec(),
                        name: "fanout".into(),
                        ..Default::default()
                    })
                    .await?;
                for chunk in others[first..].chunks(1000) {
                    r.add_members(&conv, chunk.to_vec()).await?;
                }
                Ok(conv)
            }
            Conn::Lc(c) => c.group(others).await,
        }
    }

    pub(crate) async fn drive(self, plan: Plan, run: Arc<Run>) -> ConnStats {
        match self {
            Conn::Native(r) => raw::drive(r, plan, run).await,
            Conn::Lc(c) => {
                let (ws, codec) = c.into_parts();
                raw::drive_with(ws, codec, plan, run).await
            }
        }
    }
}

/// Opens hot-path connections for `users` in the run's dialect. Failures are counted.
pub(crate) async fn open_conns(
    p: &Params,
    users: Vec<String>,
    live: &Live,
    res: &mut ShardResult,
) -> Vec<Option<Conn>> {
    match p.dialect {
        Dialect::Native => {
            let tokens = users.iter().map(|u| token(p, u)).collect();
            open_raw(p, tokens, live, res)
                .await
                .into_iter()
                .map(|r| r.map(Conn::Native))
                .collect()
        }
        Dialect::Leancloud => open_lc(p, &users, Duration::ZERO, false, live, res)
            .await
            .into_iter()
            .map(|c| c.map(Conn::Lc))
            .collect(),
        Dialect::Mixed => open_mixed(p, users, live, res).await,
    }
}

/// Opens user `i` in the `i % 4`th form: native binary, native JSON, LeanCloud binary,
/// LeanCloud base64.
async fn open_mixed(
    p: &Params,
    users: Vec<String>,
    live: &Live,
    res: &mut ShardResult,
) -> Vec<Option<Conn>> {
    let mut out: Vec<Option<Conn>> = std::iter::repeat_with(|| None).take(users.len()).collect();
    let form = |k: usize| -> Vec<(usize, String)> {
        users
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 4 == k)
            .map(|(i, u)| (i, u.clone()))
            .collect()
    };
    for json in [false, true] {
        let (idx, names): (Vec<usize>, Vec<String>) = form(usize::from(json)).into_iter().unzip();
        let url = p.url.as_str();
        let opened: Vec<(usize, Option<Raw>)> = stream::iter(names.iter().zip(&idx))
            .map(|(u, &i)| async move { (i, Raw::login_as(url, &token(p, u), json).await.ok()) })
            .buffer_unordered(p.concurrency.max(1))
            .collect()
            .await;
        for (i, r) in opened {
            count_open(r.is_some(), live, res);
            out[i] = r.map(Conn::Native);
        }
    }
    for base64 in [false, true] {
        let (idx, names): (Vec<usize>, Vec<String>) =
            form(2 + usize::from(base64)).into_iter().unzip();
        let lp = Params {
            lc_base64: base64,
            ..p.clone()
        };
        let opened = open_lc(&lp, &names, Duration::ZERO, false, live, res).await;
        for (i, c) in idx.into_iter().zip(opened) {
            out[i] = c.map(Conn::Lc);
        }
    }
    out
}

/// Runs shard `shard` of `shards` of a scenario.
pub async fn run_shard(
    scenario: Scenario,
    p: &Params,
    shard: usize,
    shards: usize,
    gate: Gate,
    live: Arc<Live>,
) -> anyhow::Result<ShardResult> {
    let limit =
        secs(p.setup_secs + p.populate_secs + p.ramp_secs + p.duration_secs + p.drain_secs + 60.0);
    let work = async {
        match scenario {
            Scenario::Idle => idle(p, shard, shards, gate, live).await,
            Scenario::Storm => storm(p, shard, shards, gate, live).await,
            Scenario::Chat => chat(p, shard, shards, gate, live).await,
            Scenario::Fanout => fanout(p, gate, live).await,
            Scenario::History => history(p, gate, live).await,
            Scenario::Churn => churn(p, gate, live).await,
            Scenario::List => list(p, gate, live).await,
            Scenario::Soak => crate::soak::soak(p, gate, live).await,
        }
    };
    tokio::time::timeout(limit, work)
        .await
        .map_err(|_| anyhow::anyhow!("{} did not finish within {limit:?}", scenario.name()))?
}

async fn idle(
    p: &Params,
    shard: usize,
    shards: usize,
    gate: Gate,
    live: Arc<Live>,
) -> anyhow::Result<ShardResult> {
    if p.dialect == Dialect::Leancloud {
        return idle_lc(p, shard, shards, gate, live).await;
    }
    let mut res = ShardResult::default();
    let tokens: Vec<String> = range(p.sessions, shard, shards)
        .map(|i| token(p, &user(p, "idle", i)))
        .collect();
    let clients = open_clients(
        &p.url,
        tokens,
        p.concurrency,
        secs(p.ramp_secs),
        &live,
        &mut res,
    )
    .await;
    gate.pass().await?;
    res.go_ns = now_ns();
    // Hold the sessions for the duration: the bound of this scenario, not a wait for an event.
    tokio::time::sleep(secs(p.duration_secs)).await;
    // Every held session must still answer.
    let alive = stream::iter(clients.iter())
        .map(|c| async move { c.ping().await.is_ok() })
        .buffer_unordered(p.concurrency.max(1))
        .filter(|ok| std::future::ready(*ok))
        .count()
        .await as u64;
    res.failed = res.sessions - alive;
    res.end_ns = now_ns();
    Ok(res)
}

async fn storm(
    p: &Params,
    shard: usize,
    shards: usize,
    gate: Gate,
    live: Arc<Live>,
) -> anyhow::Result<ShardResult> {
    if p.dialect == Dialect::Leancloud {
        return storm_lc(p, shard, shards, gate, live).await;
    }
    let mut res = ShardResult::default();
    let tokens: Vec<String> = range(p.sessions, shard, shards)
        .map(|i| token(p, &user(p, "storm", i)))
        .collect();
    gate.pass().await?;
    res.go_ns = now_ns();
    let clients = open_clients(
        &p.url,
        tokens,
        p.concurrency,
        secs(p.ramp_secs),
        &live,
        &mut res,
    )
    .await;
    res.end_ns = now_ns();
    drop(clients);
    Ok(res)
}

/// idle over LeanCloud: the sessions are held by a task each that reads (answering the
/// server's pings, as the native typed clients do), then each must answer an `echo`.
async fn idle_lc(
    p: &Params,
    shard: usize,
    shards: usize,
    gate: Gate,
    live: Arc<Live>,
) -> anyhow::Result<ShardResult> {
    let mut res = ShardResult::default();
    let users: Vec<String> = range(p.sessions, shard, shards)
        .map(|i| user(p, "idle", i))
        .collect();
    let conns = open_lc(p, &users, secs(p.ramp_secs), true, &live, &mut res).await;
    gate.pass().await?;
    res.go_ns = now_ns();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let holders: Vec<_> = conns
        .into_iter()
        .flatten()
        .map(|c| tokio::spawn(c.hold(stopped.clone())))
        .collect();
    // Hold the sessions for the duration: the bound of this scenario, not a wait for an event.
    tokio::time::sleep(secs(p.duration_secs)).await;
    stop.send_replace(true);
    let mut alive = 0;
    for h in holders {
        alive += u64::from(h.await?);
    }
    res.failed = res.sessions - alive;
    res.end_ns = now_ns();
    Ok(res)
}

async fn storm_lc(
    p: &Params,
    shard: usize,
    shards: usize,
    gate: Gate,
    live: Arc<Live>,
) -> anyhow::Result<ShardResult> {
    let mut res = ShardResult::default();
    let users: Vec<String> = range(p.sessions, shard, shards)
        .map(|i| user(p, "storm", i))
        .collect();
    gate.pass().await?;
    res.go_ns = now_ns();
    let conns = open_lc(p, &users, secs(p.ramp_secs), true, &live, &mut res).await;
    res.end_ns = now_ns();
    drop(conns);
    Ok(res)
}

/// Adds up the connections' figures once all of them are done, so every sender's acked count
/// is final when the expected deliveries are computed.
pub(crate) fn collect(res: &mut ShardResult, run: &Run, stats: Vec<raw::ConnStats>) {
    for s in stats {
        res.expected += s.expect.as_ref().map_or(0, |e| run.expected(e));
        res.sent += s.sent;
        res.acked += s.acked;
        res.failed += s.failed;
        res.delivered += s.delivered;
        res.last_ack_ns = res.last_ack_ns.max(s.last_ack_ns);
        res.last_delivery_ns = res.last_delivery_ns.max(s.last_delivery_ns);
        res.hist_mut(DELIVERED).merge(&s.delivered_lat);
        res.hist_mut(ACK).merge(&s.ack_lat);
    }
}

fn sched(p: &Params, senders_total: usize) -> Sched {
    if p.rate > 0.0 {
        Sched::Rate {
            rate: p.rate / senders_total.max(1) as f64,
        }
    } else {
        Sched::Closed {
            window: p.window.clamp(1, 64),
        }
    }
}

pub(crate) fn new_run(p: &Params, senders: usize, live: Arc<Live>) -> Arc<Run> {
    Run::new(
        senders,
        secs(p.ramp_secs),
        secs(p.duration_secs),
        secs(p.drain_secs),
        p.message_bytes,
        p.count,
        live,
    )
}

async fn chat(
    p: &Params,
    shard: usize,
    shards: usize,
    gate: Gate,
    live: Arc<Live>,
) -> anyhow::Result<ShardResult> {
    let mut res = ShardResult::default();
    let pairs = range(p.pairs, shard, shards);
    let users: Vec<String> = pairs
        .clone()
        .flat_map(|i| [user(p, "chat", 2 * i), user(p, "chat", 2 * i + 1)])
        .collect();
    let mut conns = open_conns(p, users, &live, &mut res).await;
    // Each pair's first user creates the direct conversation.
    let mut jobs = Vec::new();
    for (k, i) in pairs.clone().enumerate() {
        let (Some(mut a), Some(b)) = (conns[2 * k].take(), conns[2 * k + 1].take()) else {
            continue;
        };
        let peer = user(p, "chat", 2 * i + 1);
        jobs.push(async move {
            let conv = a.pair(peer).await;
            conv.map(|c| (a, b, c))
        });
    }
    let mut ready = Vec::new();
    let mut s = stream::iter(jobs).buffer_unordered(p.concurrency.max(1));
    while let Some(r) = s.next().await {
        match r {
            Ok(x) => ready.push(x),
            Err(_) => res.connect_failures += 1,
        }
    }
    drop(s);
    gate.pass().await?;
    let senders = ready.len() * 2;
    let run = new_run(p, senders, live);
    res.go_ns = run.go_ns;
    let sched = sched(p, p.pairs * 2);
    let mut tasks = Vec::new();
    for (k, (a, b, conv)) in ready.into_iter().enumerate() {
        let (ia, ib) = (2 * k, 2 * k + 1);
        let pa = Plan {
            send: Some((conv.clone(), ia, sched)),
            expect: Some(Expect::Peer(ib)),
        };
        let pb = Plan {
            send: Some((conv, ib, sched)),
            expect: Some(Expect::Peer(ia)),
        };
        tasks.push(tokio::spawn(a.drive(pa, run.clone())));
        tasks.push(tokio::spawn(b.drive(pb, run.clone())));
    }
    let mut stats = Vec::new();
    for t in tasks {
        stats.push(t.await?);
    }
    collect(&mut res, &run, stats);
    res.end_ns = now_ns();
    Ok(res)
}

async fn fanout(p: &Params, gate: Gate, live: Arc<Live>) -> anyhow::Result<ShardResult> {
    anyhow::ensure!(p.group_size >= 2, "fanout needs --group-size of at least 2");
    let mut res = ShardResult::default();
    let members: Vec<String> = (0..p.group_size).map(|i| user(p, "fanout", i)).collect();
    // The senders get a thread and an I/O driver of their own, as separate devices would: on
    // the runtime of the thousand receivers, a sender's next message waits behind their reads,
    // and its window turns at the generator's pace rather than the server's.
    let senders = p.senders.clamp(1, members.len());
    let sender_rt = OwnThread(Some(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fanout-senders")
            .enable_all()
            .build()?,
    ));
    let (sp, slive, susers) = (p.clone(), live.clone(), members[..senders].to_vec());
    let handle = sender_rt.handle();
    let (sres, sconns) = tokio::task::spawn_blocking(move || {
        handle.block_on(async move {
            let mut r = ShardResult::default();
            let c = open_conns(&sp, susers, &slive, &mut r).await;
            (r, c)
        })
    })
    .await?;
    res.merge(sres);
    let rest = open_conns(p, members[senders..].to_vec(), &live, &mut res).await;
    let mut conns: Vec<Conn> = sconns.into_iter().chain(rest).flatten().collect();
    anyhow::ensure!(
        conns.len() == members.len(),
        "{} of {} members failed to log in",
        members.len() - conns.len(),
        members.len()
    );
    // The first member creates the group and adds the rest.
    let conv = conns[0].group(&members[1..]).await?;
    gate.pass().await?;
    let run = new_run(p, senders, live);
    res.go_ns = run.go_ns;
    let sched = sched(p, senders);
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let plan = if i < senders {
                Plan {
                    send: Some((conv.clone(), i, sched)),
                    expect: Some(Expect::All { own: Some(i) }),
                }
            } else {
                Plan {
                    send: None,
                    expect: Some(Expect::All { own: None }),
                }
            };
            if i < senders {
                sender_rt.handle().spawn(c.drive(plan, run.clone()))
            } else {
                tokio::spawn(c.drive(plan, run.clone()))
            }
        })
        .collect();
    let mut stats = Vec::new();
    for t in tasks {
        stats.push(t.await?);
    }
    drop(sender_rt);
    collect(&mut res, &run, stats);
    res.end_ns = now_ns();
    Ok(res)
}

/// A runtime on a thread of its own, shut down without waiting when dropped (a runtime may
/// not be dropped in the usual way from inside another).
struct OwnThread(Option<tokio::runtime::Runtime>);

impl OwnThread {
    fn handle(&self) -> tokio::runtime::Handle {
        self.0
            .as_ref()
            .expect("runtime until dropped")
            .handle()
            .clone()
    }
}

impl Drop for OwnThread {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// A small deterministic generator for picking pages (no cryptographic need).
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
}

async fn history(p: &Params, gate: Gate, live: Arc<Live>) -> anyhow::Result<ShardResult> {
    let mut res = ShardResult::default();
    let writers = p.writers.clamp(1, p.conversations.max(1));
    let wusers: Vec<String> = (0..writers).map(|w| user(p, "history", w)).collect();
    let tokens: Vec<String> = wusers.iter().map(|u| token(p, u)).collect();
    let conns = open_raw(p, tokens.clone(), &live, &mut res).await;
    // Conversation k belongs to writer k % writers; its peer never logs in.
    let mut jobs = Vec::new();
    for (w, c) in conns.into_iter().enumerate() {
        let mut c = c.ok_or_else(|| anyhow::anyhow!("history writer {w} failed to log in"))?;
        let peers: Vec<String> = (w..p.conversations)
            .step_by(writers)
            .map(|k| format!("{}-peer", user(p, "history", k)))
            .collect();
        jobs.push(async move {
            let mut convs = Vec::new();
            for peer in peers {
                convs.push(
                    c.conversation(pb::CreateConversation {
                        kind: pb::ConversationKind::Direct as i32,
                        members: vec![peer],
                        ..Default::default()
                    })
                    .await?,
                );
            }
            anyhow::Ok((c, convs))
        });
    }
    let mut writer_convs = Vec::new();
    for j in futures_util::future::join_all(jobs).await {
        writer_convs.push(j?);
    }
    // Populate: every writer sends pipelined until the shared quota is used up.
    let t0 = Instant::now();
    let quota = Arc::new(AtomicU64::new(p.messages));
    let deadline = t0 + secs(p.populate_secs);
    let tasks: Vec<_> = writer_convs
        .into_iter()
        .map(|(c, convs)| {
            let (quota, live) = (quota.clone(), live.clone());
            let size = p.message_bytes;
            tokio::spawn(async move {
                let r = raw::populate(c, convs.clone(), quota, deadline, size, live).await;
                (convs, r)
            })
        })
        .collect();
    let mut per_writer: Vec<Vec<(String, u64)>> = Vec::new();
    for t in tasks {
        let (convs, (acked, failed, last)) = t.await?;
        res.populated += acked;
        res.failed += failed;
        per_writer.push(convs.into_iter().zip(last).collect());
    }
    res.populate_secs = t0.elapsed().as_secs_f64();
    // Read: each reader logs in as a writer and pages through that writer's conversations.
    let readers = p.readers.max(1);
    let rtokens: Vec<String> = (0..readers).map(|r| tokens[r % writers].clone()).collect();
    let clients = open_clients(
        &p.url,
        rtokens,
        p.concurrency,
        Duration::ZERO,
        &live,
        &mut res,
    )
    .await;
    anyhow::ensure!(clients.len() == readers, "history readers failed to log in");
    gate.pass().await?;
    res.go_ns = now_ns();
    let until = Instant::now() + secs(p.duration_secs);
    let page = p.page.max(1);
    let max_pages = if p.count == 0 { u64::MAX } else { p.count };
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(r, c)| {
            let convs = per_writer[r % writers].clone();
            let live = live.clone();
            tokio::spawn(async move {
                let mut rng = XorShift(0x9E37_79B9_7F4A_7C15 ^ (r as u64 + 1));
                let (mut lat, mut pages, mut errors) = (Lat::default(), 0u64, 0u64);
                while Instant::now() < until && pages + errors < max_pages && !convs.is_empty() {
                    let (conv, last) = &convs[rng.below(convs.len() as u64) as usize];
                    // A random page anywhere in the conversation (before = last + 1: newest).
                    let before = 1 + rng.below(*last) + 1;
                    let t = Instant::now();
                    match c.history(conv, before, page).await {
                        Ok(pg) if pg.messages.len() as u64 == (before - 1).min(page as u64) => {
                            lat.record_ns(t.elapsed().as_nanos() as u64);
                            pages += 1;
                            live.pages.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            errors += 1;
                            live.errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                (lat, pages, errors)
            })
        })
        .collect();
    for t in tasks {
        let (lat, pages, errors) = t.await?;
        res.hist_mut(PAGE).merge(&lat);
        res.pages += pages;
        res.page_errors += errors;
    }
    res.end_ns = now_ns();
    Ok(res)
}

/// One user, `list-0`, in `--conversations` groups (created by `--writers` connections of
/// theirs, a message in every tenth so the order is not only creation order), then
/// `--readers` connections of the same user ask for the first `--page` entries of the list,
/// closed loop, for `--duration-secs` or `--count` pages each. `populated` counts the groups.
async fn list(p: &Params, gate: Gate, live: Arc<Live>) -> anyhow::Result<ShardResult> {
    let mut res = ShardResult::default();
    let owner = user(p, "list", 0);
    let writers = p.writers.clamp(1, p.conversations.max(1));
    let wtokens: Vec<String> = (0..writers).map(|_| token(p, &owner)).collect();
    let clients = open_clients(
        &p.url,
        wtokens,
        p.concurrency,
        Duration::ZERO,
        &live,
        &mut res,
    )
    .await;
    anyhow::ensure!(clients.len() == writers, "list writers failed to log in");
    let t0 = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let total = p.conversations as u64;
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|c| {
            let next = next.clone();
            tokio::spawn(async move {
                let (mut made, mut failed) = (0u64, 0u64);
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    if k >= total {
                        break;
                    }
                    let created = c.create_group(&format!("list group {k}"), &[]).await;
                    match created {
                        Ok(conv) if k.is_multiple_of(10) => {
                            match c.send_text(&conv.id, "hello").await {
                                Ok(_) => made += 1,
                                Err(_) => failed += 1,
                            }
                        }
                        Ok(_) => made += 1,
                        Err(_) => failed += 1,
                    }
                }
                (c, made, failed)
            })
        })
        .collect();
    let mut writers_done = Vec::new();
    for t in tasks {
        let (c, made, failed) = t.await?;
        res.populated += made;
        res.failed += failed;
        writers_done.push(c);
    }
    res.populate_secs = t0.elapsed().as_secs_f64();
    drop(writers_done);
    let readers = p.readers.max(1);
    let rtokens: Vec<String> = (0..readers).map(|_| token(p, &owner)).collect();
    let clients = open_clients(
        &p.url,
        rtokens,
        p.concurrency,
        Duration::ZERO,
        &live,
        &mut res,
    )
    .await;
    anyhow::ensure!(clients.len() == readers, "list readers failed to log in");
    gate.pass().await?;
    res.go_ns = now_ns();
    let until = Instant::now() + secs(p.duration_secs);
    let page = p.page.max(1);
    // `--conversations 0`: the list is already there (a server restarted on the same data
    // directory, the same `--run-id`), longer than a page.
    let expect = if p.conversations == 0 {
        page as u64
    } else {
        (page as u64).min(res.populated)
    };
    let max_pages = if p.count == 0 { u64::MAX } else { p.count };
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|c| {
            let live = live.clone();
            tokio::spawn(async move {
                let (mut lat, mut pages, mut errors) = (Lat::default(), 0u64, 0u64);
                while Instant::now() < until && pages + errors < max_pages {
                    let t = Instant::now();
                    let req = pb::ListConversations {
                        limit: page,
                        ..Default::default()
                    };
                    match c.list_conversations(req).await {
                        Ok(l) if l.entries.len() as u64 == expect => {
                            lat.record_ns(t.elapsed().as_nanos() as u64);
                            pages += 1;
                            live.pages.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            errors += 1;
                            live.errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                (lat, pages, errors)
            })
        })
        .collect();
    for t in tasks {
        let (lat, pages, errors) = t.await?;
        res.hist_mut(PAGE).merge(&lat);
        res.pages += pages;
        res.page_errors += errors;
    }
    res.end_ns = now_ns();
    Ok(res)
}

/// Creates `--conversations` temporary conversations with a `--ttl-secs` lifetime, from
/// `--writers` agents, one message in each, then waits until the server has expired them all
/// (a sample answers `ERROR_TEMPORARY_CONVERSATION_EXPIRED`). `populated` counts creations.
async fn churn(p: &Params, gate: Gate, live: Arc<Live>) -> anyhow::Result<ShardResult> {
    let mut res = ShardResult::default();
    let writers = p.writers.max(1);
    let tokens: Vec<String> = (0..writers)
        .map(|w| token(p, &user(p, "churn", w)))
        .collect();
    let clients = open_clients(
        &p.url,
        tokens,
        p.concurrency,
        Duration::ZERO,
        &live,
        &mut res,
    )
    .await;
    anyhow::ensure!(clients.len() == writers, "churn agents failed to log in");
    gate.pass().await?;
    res.go_ns = now_ns();
    let t0 = Instant::now();
    let quota = Arc::new(AtomicU64::new(p.conversations as u64));
    let payload = "x".repeat(p.message_bytes);
    let window = p.window.max(1);
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(w, c)| {
            let (quota, live, payload, ttl, prefix) = (
                quota.clone(),
                live.clone(),
                payload.clone(),
                p.ttl_secs,
                user(p, "churn-visitor", w),
            );
            tokio::spawn(async move {
                let (mut created, mut sent, mut failed, mut last) =
                    (0u64, 0u64, 0u64, None::<(String, i64)>);
                loop {
                    // Take up to `window` from the shared quota, never below zero.
                    let taken = quota.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| {
                        (q > 0).then(|| q.saturating_sub(window as u64))
                    });
                    let n = match taken {
                        Ok(before) => before.min(window as u64),
                        Err(_) => break,
                    };
                    let creates = (0..n).map(|k| {
                        let (c, visitor) = (&c, format!("{prefix}-{created}-{k}"));
                        async move { c.create_temporary(&[visitor.as_str()], ttl, false).await }
                    });
                    let convs: Vec<_> = futures_util::future::join_all(creates).await;
                    let sends = convs
                        .iter()
                        .filter_map(|r| r.as_ref().ok())
                        .map(|t| c.send_text(&t.id, &payload));
                    for r in futures_util::future::join_all(sends).await {
                        match r {
                            Ok(_) => {
                                sent += 1;
                                live.acked.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(_) => failed += 1,
                        }
                    }
                    for t in convs {
                        match t {
                            Ok(t) => {
                                created += 1;
                                if last.as_ref().is_none_or(|l| t.expires_at > l.1) {
                                    last = Some((t.id, t.expires_at));
                                }
                            }
                            Err(_) => failed += 1,
                        }
                    }
                }
                (c, created, sent, failed, last)
            })
        })
        .collect();
    let mut probes = Vec::new();
    for t in tasks {
        let (c, created, sent, failed, last) = t.await?;
        res.populated += created;
        res.sent += created + sent;
        res.acked += sent;
        res.failed += failed;
        if let Some((id, _)) = last {
            probes.push((c, id));
        }
    }
    res.populate_secs = t0.elapsed().as_secs_f64();
    // Each agent's newest conversation expires last: poll those until the server says expired.
    let deadline = Instant::now() + secs(f64::from(p.ttl_secs) + p.drain_secs + 30.0);
    for (c, id) in &probes {
        loop {
            match c.get_conversation(id).await {
                Err(e) if e.code() == Some(pb::ErrorCode::ErrorTemporaryConversationExpired) => {
                    break;
                }
                _ if Instant::now() >= deadline => {
                    res.failed += 1;
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
    res.end_ns = now_ns();
    Ok(res)
}
