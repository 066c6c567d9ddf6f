//! A whole run: one shard in this process or several worker processes, the server's CPU and
//! memory around it, then figures, thresholds and the JSON result.

use crate::hist::Summary;
use crate::live::{Live, Progress};
use crate::params::{Dialect, Params, Scenario, Thresholds, connections};
use crate::procstat::{Monitor, Sample};
use crate::scenario::{self, CONNECT, DELIVERED, Gate, PAGE, ShardResult};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Said beside every figure.
pub const NOTE: &str = "generator and server share one 2-core machine; figures are noisy";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Check {
    pub name: String,
    pub limit: f64,
    pub value: f64,
    pub ok: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ServerFigures {
    pub pid: u32,
    pub cpu_secs_during_run: f64,
    pub rss_baseline_bytes: u64,
    pub rss_ready_bytes: u64,
    pub rss_peak_bytes: u64,
    pub rss_end_bytes: u64,
    /// Server CPU from go to the end, per delivered message (fanout: per delivery).
    pub cpu_us_per_delivered: Option<f64>,
    /// The server's context switches from go to the end, per delivered message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ctx_switches_per_delivered: Option<f64>,
    /// Bytes the server wrote to storage from go to the end, per acked message (what one
    /// persisted message costs the disk: the store's pages, its fsyncs' metadata).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_bytes_per_acked: Option<f64>,
    /// `--admin-addr`: the push encodings the server made from go to the end, by form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push_encodings: Option<BTreeMap<String, u64>>,
    /// `--syscalls`: the server's system calls from go to the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub syscalls: Option<crate::syscalls::Syscalls>,
    /// `--syscalls`: socket writes (`sendto`, `sendmsg`, `writev`) per delivered message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_writes_per_delivered: Option<f64>,
    /// list: server CPU from go to the end, per page of the conversation list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_us_per_page: Option<f64>,
    /// Server RSS growth from before the sessions to all of them logged in, per session.
    pub bytes_per_session: Option<f64>,
    /// Bytes in the data directory (`--data-dir`) before and after the run.
    pub disk_start_bytes: Option<u64>,
    pub disk_end_bytes: Option<u64>,
}

/// Total size of the files below `dir`.
pub fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResult {
    pub scenario: String,
    /// What was measured: "tidings", "reference", or the URL.
    pub target: String,
    pub unix_time: u64,
    pub note: String,
    pub params: Params,
    pub workers: usize,
    pub run_secs: f64,
    pub counts: BTreeMap<String, u64>,
    pub populate_secs: Option<f64>,
    pub throughput: BTreeMap<String, f64>,
    pub latency: BTreeMap<String, Summary>,
    pub server: Option<ServerFigures>,
    /// soak: the server over time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soak: Option<SoakFigures>,
    pub checks: Vec<Check>,
    pub ok: bool,
}

impl RunResult {
    /// The scenario's main throughput figure.
    pub fn main_throughput(&self) -> Option<f64> {
        let key = match self.scenario.as_str() {
            "chat" => "acked_per_s",
            "fanout" | "soak" => "deliveries_per_s",
            "storm" => "sessions_per_s",
            "history" | "list" => "pages_per_s",
            _ => return None,
        };
        self.throughput.get(key).copied()
    }

    /// The scenario's main latency histogram.
    pub fn main_latency(&self) -> Option<&Summary> {
        let key = match self.scenario.as_str() {
            "chat" | "fanout" | "soak" => DELIVERED,
            "history" | "list" => PAGE,
            _ => CONNECT,
        };
        self.latency.get(key)
    }

    pub fn errors(&self) -> u64 {
        ["connect_failures", "failed", "lost", "page_errors"]
            .iter()
            .map(|k| self.counts.get(*k).copied().unwrap_or(0))
            .sum()
    }
}

/// The server over a soak: its samples and the slopes fitted through them after the warm-up
/// (the first fifth of the run).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SoakFigures {
    pub samples: Vec<crate::soak::SoakSample>,
    pub rss_slope_mib_per_10min: Option<f64>,
    pub disk_slope_mib_per_10min: Option<f64>,
}

/// What a worker process is asked to do (one JSON line on its stdin).
#[derive(Serialize, Deserialize)]
pub struct WorkerSpec {
    pub scenario: Scenario,
    pub params: Params,
    pub shard: usize,
    pub shards: usize,
}

/// Runs a scenario and evaluates the thresholds.
pub async fn run(
    scenario: Scenario,
    mut params: Params,
    thresholds: &Thresholds,
    target: &str,
    progress: bool,
) -> anyhow::Result<RunResult> {
    let host_ok =
        params.url.starts_with("ws://127.0.0.1:") || params.url.starts_with("ws://localhost:");
    anyhow::ensure!(
        host_ok,
        "load runs target loopback only (ws://127.0.0.1:PORT/...), got {}",
        params.url
    );
    anyhow::ensure!(
        params.dialect == Dialect::Native
            || matches!(
                scenario,
                Scenario::Idle | Scenario::Chat | Scenario::Fanout | Scenario::Storm
            ),
        "{} runs over the native dialect only (--dialect leancloud: idle, chat, fanout, storm)",
        scenario.name()
    );
    anyhow::ensure!(
        params.dialect != Dialect::Mixed || scenario == Scenario::Fanout,
        "--dialect mixed runs fanout only"
    );
    if params.run_id.is_none() {
        params.run_id = Some(format!(
            "{:x}",
            (crate::raw::now_ns() / 1000) ^ std::process::id() as u64
        ));
    }
    let conns = connections(scenario, &params);
    let per = params.per_process.max(1);
    let shards = conns.div_ceil(per).max(1);
    anyhow::ensure!(
        shards == 1 || matches!(scenario, Scenario::Idle | Scenario::Storm | Scenario::Chat),
        "{} runs in one process: at most {per} connections (--per-process)",
        scenario.name()
    );
    let disk_start = params.data_dir.as_deref().map(dir_bytes);
    let monitor = params.server_pid.map(Monitor::start);
    let baseline = monitor.as_ref().map(|m| m.now());
    let ready: Arc<Mutex<Option<Sample>>> = Default::default();
    // Started when the sessions are ready, with the `ready` sample.
    let counter: Arc<Mutex<Option<crate::syscalls::Counter>>> = Default::default();
    let count = params.syscalls.then_some(params.server_pid).flatten();
    // The server's push encodings at go, when it has an admin listener to read them from.
    let encodings_at_go: Arc<Mutex<Option<BTreeMap<String, u64>>>> = Default::default();
    let admin = params.admin_addr;
    let live = Arc::new(Live::default());
    let _progress = Progress::start(
        format!("{} {target}", scenario.name()),
        live.clone(),
        progress,
    );
    let t0 = std::time::Instant::now();
    let res = if shards == 1 {
        let (r, m, c, e) = (
            ready.clone(),
            monitor.as_ref().map(|m| m.pid()),
            counter.clone(),
            encodings_at_go.clone(),
        );
        let gate = Gate::InProcess(Box::new(move || {
            *r.lock().unwrap() = Some(
                m.map(|pid| crate::procstat::sample(pid).unwrap_or_default())
                    .unwrap_or_default(),
            );
            *c.lock().unwrap() = count.and_then(crate::syscalls::Counter::start);
            *e.lock().unwrap() = admin.and_then(|a| crate::hookrecv::push_encodings(a).ok());
        }));
        scenario::run_shard(scenario, &params, 0, 1, gate, live.clone()).await?
    } else {
        run_workers(
            scenario,
            &params,
            shards,
            monitor.as_ref(),
            &ready,
            &counter,
        )
        .await?
    };
    let run_secs = t0.elapsed().as_secs_f64();
    let end = monitor.as_ref().map(|m| m.now());
    let syscalls = counter
        .lock()
        .unwrap()
        .take()
        .and_then(crate::syscalls::Counter::stop);
    let push_encodings = match (admin, encodings_at_go.lock().unwrap().take()) {
        (Some(a), Some(at_go)) => crate::hookrecv::push_encodings(a).ok().map(|end| {
            end.into_iter()
                .map(|(form, n)| {
                    let before = at_go.get(&form).copied().unwrap_or(0);
                    (form, n.saturating_sub(before))
                })
                .collect::<BTreeMap<_, _>>()
        }),
        _ => None,
    };
    let mut params_out = params.clone();
    params_out.secret = None;
    params_out.lc_master_key = None;
    let mut r = RunResult {
        scenario: scenario.name().into(),
        target: target.into(),
        unix_time: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        note: NOTE.into(),
        params: params_out,
        workers: shards,
        run_secs,
        counts: BTreeMap::new(),
        populate_secs: matches!(
            scenario,
            Scenario::History | Scenario::Churn | Scenario::List
        )
        .then_some(res.populate_secs),
        throughput: BTreeMap::new(),
        latency: res
            .hist
            .iter()
            .filter(|(_, h)| h.count() > 0)
            .map(|(k, h)| (k.clone(), h.summary()))
            .collect(),
        server: None,
        soak: None,
        checks: Vec::new(),
        ok: true,
    };
    let lost = res.expected.saturating_sub(res.delivered);
    for (k, v) in [
        ("sessions", res.sessions),
        ("connect_failures", res.connect_failures),
        ("sent", res.sent),
        ("acked", res.acked),
        ("failed", res.failed),
        ("delivered", res.delivered),
        ("expected_deliveries", res.expected),
        ("lost", lost),
        ("pages", res.pages),
        ("page_errors", res.page_errors),
        ("populated", res.populated),
    ] {
        r.counts.insert(k.into(), v);
    }
    let per_s = |n: u64, end_ns: u64| {
        let s = end_ns.saturating_sub(res.go_ns) as f64 / 1e9;
        if s > 0.0 { n as f64 / s } else { 0.0 }
    };
    match scenario {
        Scenario::Chat | Scenario::Fanout | Scenario::Soak => {
            if scenario == Scenario::Soak {
                r.throughput
                    .insert("pages_per_s".into(), per_s(res.pages, res.end_ns));
            }
            r.throughput
                .insert("acked_per_s".into(), per_s(res.acked, res.last_ack_ns));
            r.throughput.insert(
                "deliveries_per_s".into(),
                per_s(res.delivered, res.last_delivery_ns),
            );
        }
        Scenario::Storm => {
            r.throughput
                .insert("sessions_per_s".into(), per_s(res.sessions, res.end_ns));
        }
        Scenario::History | Scenario::List => {
            r.throughput
                .insert("pages_per_s".into(), per_s(res.pages, res.end_ns));
            if res.populate_secs > 0.0 {
                r.throughput.insert(
                    "populate_msgs_per_s".into(),
                    res.populated as f64 / res.populate_secs,
                );
            }
        }
        Scenario::Churn => {
            if res.populate_secs > 0.0 {
                r.throughput.insert(
                    "created_per_s".into(),
                    res.populated as f64 / res.populate_secs,
                );
            }
        }
        Scenario::Idle => {}
    }
    if let (Some(m), Some(base), Some(end)) = (&monitor, baseline, end) {
        let ready = (*ready.lock().unwrap()).unwrap_or(base);
        let cpu = (end.cpu_secs - ready.cpu_secs).max(0.0);
        r.server = Some(ServerFigures {
            pid: m.pid(),
            cpu_secs_during_run: cpu,
            rss_baseline_bytes: base.rss_bytes,
            rss_ready_bytes: ready.rss_bytes,
            rss_peak_bytes: m.peak_rss(),
            rss_end_bytes: end.rss_bytes,
            cpu_us_per_delivered: (res.delivered > 0).then(|| cpu * 1e6 / res.delivered as f64),
            ctx_switches_per_delivered: (res.delivered > 0).then(|| {
                end.ctx_switches.saturating_sub(ready.ctx_switches) as f64 / res.delivered as f64
            }),
            disk_bytes_per_acked: (res.acked > 0 && end.disk_write_bytes > 0).then(|| {
                end.disk_write_bytes.saturating_sub(ready.disk_write_bytes) as f64
                    / res.acked as f64
            }),
            push_encodings,
            socket_writes_per_delivered: syscalls
                .as_ref()
                .filter(|_| res.delivered > 0)
                .map(|c| c.socket_writes() as f64 / res.delivered as f64),
            syscalls,
            cpu_us_per_page: (matches!(scenario, Scenario::List) && res.pages > 0)
                .then(|| cpu * 1e6 / res.pages as f64),
            bytes_per_session: (matches!(scenario, Scenario::Idle) && res.sessions > 0)
                .then(|| (ready.rss_bytes as f64 - base.rss_bytes as f64) / res.sessions as f64),
            disk_start_bytes: disk_start,
            disk_end_bytes: params.data_dir.as_deref().map(dir_bytes),
        });
    }
    if let Some(c) = &res.soak {
        for (k, v) in [
            ("logins", c.logins),
            ("login_failures", c.login_failures),
            ("garbage", c.garbage),
            ("garbage_closed", c.garbage_closed),
            ("slow", c.slow),
            ("slow_login_failures", c.slow_login_failures),
            ("stalled", c.stalled),
            ("stalled_closed", c.stalled_closed),
            ("skipped_ticks", c.skipped),
        ] {
            r.counts.insert(k.into(), v);
        }
        let secs = params.ramp_secs + params.duration_secs;
        let mib = |f: fn(&crate::soak::SoakSample) -> u64| {
            crate::soak::slope_per_10_min(&res.samples, secs, f).map(|b| b / (1 << 20) as f64)
        };
        r.soak = Some(SoakFigures {
            rss_slope_mib_per_10min: mib(|s| s.rss_bytes),
            disk_slope_mib_per_10min: mib(|s| s.disk_bytes),
            samples: res.samples.clone(),
        });
    }
    evaluate(&mut r, thresholds);
    Ok(r)
}

/// Fills in `checks` and `ok`.
pub fn evaluate(r: &mut RunResult, t: &Thresholds) {
    let mut checks = vec![Check {
        name: "errors (failed connects, failed or unacked sends, lost deliveries, bad pages)"
            .into(),
        limit: t.max_errors as f64,
        value: r.errors() as f64,
        ok: r.errors() <= t.max_errors,
    }];
    if let Some(limit) = t.max_p99_ms {
        let value = r.main_latency().map_or(f64::INFINITY, |s| s.p99_ms);
        checks.push(Check {
            name: "max p99 ms".into(),
            limit,
            value,
            ok: value <= limit,
        });
    }
    if let Some(limit) = t.min_throughput {
        let value = r.main_throughput().unwrap_or(0.0);
        checks.push(Check {
            name: "min throughput /s".into(),
            limit,
            value,
            ok: value >= limit,
        });
    }
    if let Some(limit) = t.max_bytes_per_session {
        let value = r
            .server
            .as_ref()
            .and_then(|s| s.bytes_per_session)
            .unwrap_or(f64::INFINITY);
        checks.push(Check {
            name: "max server bytes/session".into(),
            limit,
            value,
            ok: value <= limit,
        });
    }
    if let Some(limit) = t.max_rss_slope_mib_per_10min {
        let value = r
            .soak
            .as_ref()
            .and_then(|s| s.rss_slope_mib_per_10min)
            .unwrap_or(f64::INFINITY);
        checks.push(Check {
            name: "max server rss slope MiB/10 min".into(),
            limit,
            value,
            ok: value <= limit,
        });
    }
    r.ok = checks.iter().all(|c| c.ok);
    r.checks = checks;
}

async fn run_workers(
    scenario: Scenario,
    params: &Params,
    shards: usize,
    monitor: Option<&Monitor>,
    ready: &Mutex<Option<Sample>>,
    counter: &Mutex<Option<crate::syscalls::Counter>>,
) -> anyhow::Result<ShardResult> {
    let exe = match &params.worker_exe {
        Some(e) => e.clone(),
        None => std::env::current_exe()?,
    };
    let mut workers = Vec::new();
    for shard in 0..shards {
        let mut child = tokio::process::Command::new(&exe)
            .arg("worker")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let mut stdin = child.stdin.take().expect("piped stdin");
        let spec = WorkerSpec {
            scenario,
            params: params.clone(),
            shard,
            shards,
        };
        stdin
            .write_all(format!("{}\n", serde_json::to_string(&spec)?).as_bytes())
            .await?;
        let lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        workers.push((child, stdin, lines));
    }
    for (_, _, lines) in workers.iter_mut() {
        let l = next(lines).await?;
        anyhow::ensure!(l == "ready", "worker: expected ready, got {l}");
    }
    *ready.lock().unwrap() = monitor.map(|m| m.now());
    *counter.lock().unwrap() = params
        .syscalls
        .then(|| monitor.map(|m| m.pid()))
        .flatten()
        .and_then(crate::syscalls::Counter::start);
    for (_, stdin, _) in workers.iter_mut() {
        stdin.write_all(b"go\n").await?;
    }
    let mut total = ShardResult::default();
    for (mut child, _, mut lines) in workers {
        let l = next(&mut lines).await?;
        let json = l
            .strip_prefix("result ")
            .ok_or_else(|| anyhow::anyhow!("worker: {l}"))?;
        total.merge(serde_json::from_str(json)?);
        child.wait().await?;
    }
    Ok(total)
}

async fn next(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
) -> anyhow::Result<String> {
    lines
        .next_line()
        .await?
        .ok_or_else(|| anyhow::anyhow!("worker exited early"))
}

/// The worker side: reads its spec from stdin, runs its shard, prints the result.
pub async fn worker() -> anyhow::Result<()> {
    let mut line = String::new();
    // One line only: the rest of stdin is the gate's.
    let mut byte = [0u8; 1];
    let mut stdin = std::io::stdin().lock();
    loop {
        use std::io::Read;
        if stdin.read(&mut byte)? == 0 || byte[0] == b'\n' {
            break;
        }
        line.push(byte[0] as char);
    }
    drop(stdin);
    let spec: WorkerSpec = serde_json::from_str(&line)?;
    let res = scenario::run_shard(
        spec.scenario,
        &spec.params,
        spec.shard,
        spec.shards,
        Gate::Worker,
        Arc::new(Live::default()),
    )
    .await?;
    println!("result {}", serde_json::to_string(&res)?);
    Ok(())
}

/// The final table.
pub fn table(r: &RunResult) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let dialect = match r.params.dialect {
        Dialect::Native => String::new(),
        Dialect::Mixed => {
            ", members in turn native binary, native JSON, LeanCloud binary and base64".into()
        }
        Dialect::Leancloud => format!(
            ", leancloud dialect ({})",
            if r.params.lc_base64 {
                "lc.proto2base64.3"
            } else {
                "lc.protobuf2.3"
            }
        ),
    };
    let _ = writeln!(
        s,
        "== {} against {}{dialect} ({} worker process(es), {:.1} s) — {}",
        r.scenario, r.target, r.workers, r.run_secs, r.note
    );
    let counts: Vec<String> = r
        .counts
        .iter()
        .filter(|(_, v)| **v > 0)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let _ = writeln!(s, "   counts: {}", counts.join(" "));
    for (k, v) in &r.throughput {
        let _ = writeln!(s, "   {k:<24} {v:>14.1}");
    }
    if let Some(p) = r.populate_secs {
        let _ = writeln!(s, "   {:<24} {p:>14.1}", "populate_secs");
    }
    if !r.latency.is_empty() {
        let _ = writeln!(
            s,
            "   {:<20} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "latency (ms)", "count", "p50", "p90", "p99", "p99.9", "max"
        );
        for (k, h) in &r.latency {
            let _ = writeln!(
                s,
                "   {k:<20} {:>9} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
                h.count, h.p50_ms, h.p90_ms, h.p99_ms, h.p999_ms, h.max_ms
            );
        }
    }
    if let Some(sv) = &r.server {
        let _ = writeln!(
            s,
            "   server pid {}: cpu {:.2} s during run, rss baseline {} KiB, ready {} KiB, peak {} KiB",
            sv.pid,
            sv.cpu_secs_during_run,
            sv.rss_baseline_bytes / 1024,
            sv.rss_ready_bytes / 1024,
            sv.rss_peak_bytes / 1024
        );
        if let (Some(a), Some(b)) = (sv.disk_start_bytes, sv.disk_end_bytes) {
            let _ = writeln!(
                s,
                "   data dir {} KiB at the start, {} KiB at the end; rss at the end {} KiB",
                a / 1024,
                b / 1024,
                sv.rss_end_bytes / 1024
            );
        }
        if let Some(c) = sv.cpu_us_per_delivered {
            let _ = writeln!(s, "   server cpu per delivered message: {c:.2} µs");
        }
        if let Some(c) = sv.ctx_switches_per_delivered {
            let _ = writeln!(
                s,
                "   server context switches per delivered message: {c:.4}"
            );
        }
        if let Some(b) = sv.disk_bytes_per_acked {
            let _ = writeln!(
                s,
                "   server bytes written to storage per acked message: {b:.0}"
            );
        }
        if let (Some(w), Some(c)) = (sv.socket_writes_per_delivered, &sv.syscalls) {
            let _ = writeln!(
                s,
                "   server socket writes per delivered message: {w:.4} ({:.1} frames per write); socket reads: {}; all counted: {}",
                1.0 / w.max(1e-9),
                c.socket_reads(),
                c.counts
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        if let Some(e) = &sv.push_encodings {
            let _ = writeln!(
                s,
                "   push encodings by form from go to the end: {}",
                e.iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        if let Some(c) = sv.cpu_us_per_page {
            let _ = writeln!(s, "   server cpu per list page: {c:.1} µs");
        }
        if let Some(b) = sv.bytes_per_session {
            let _ = writeln!(
                s,
                "   server rss per session: {b:.0} bytes ({:.2} KiB)",
                b / 1024.0
            );
        }
    }
    if let Some(sk) = &r.soak {
        let f = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{v:+.3} MiB/10 min"));
        let _ = writeln!(
            s,
            "   soak: {} samples; after the warm-up rss {}, data dir {}",
            sk.samples.len(),
            f(sk.rss_slope_mib_per_10min),
            f(sk.disk_slope_mib_per_10min)
        );
    }
    for c in &r.checks {
        let _ = writeln!(
            s,
            "   check {}: {} (value {:.3}, limit {:.3})",
            c.name,
            if c.ok { "ok" } else { "FAILED" },
            c.value,
            c.limit
        );
    }
    s
}
