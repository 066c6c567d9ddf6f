//! The whole suite: fresh servers (a release `tidings serve` on a temp data directory, and the
//! reference server), every scenario at its target size, ratios, one results file.

use crate::params::{Dialect, Params, Scenario, Thresholds};
use crate::runner::{self, NOTE, RunResult};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

#[derive(clap::Args, Debug, Clone)]
pub struct SuiteArgs {
    /// The tidings binary to spawn (build it first: cargo build --release --workspace).
    #[arg(long, default_value = "target/release/tidings")]
    pub tidings_bin: PathBuf,
    /// Where to write the results (JSON).
    #[arg(long, default_value = "load-tests/results/suite.json")]
    pub out: PathBuf,
    /// Small sizes (seconds instead of minutes), to try the suite itself.
    #[arg(long)]
    pub quick: bool,
    /// Run only these scenarios (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<Scenario>,
    /// history: messages to put in the store.
    #[arg(long, default_value_t = 10_000_000)]
    pub history_messages: u64,
    /// history: stop populating after this long and measure at the size reached, seconds.
    #[arg(long, default_value_t = 1500.0)]
    pub populate_secs: f64,
    /// Show the progress line (when stderr is a terminal).
    #[arg(long)]
    pub progress: bool,
    /// The server's store_engine (redb or sled).
    #[arg(long, default_value = "redb")]
    pub store_engine: String,
    /// churn: temporary conversations to create and let expire.
    #[arg(long, default_value_t = 100_000)]
    pub churn_conversations: u64,
    /// More server configuration for every tidings the suite starts: FIELD=VALUE, repeatable
    /// (for example `--set store_cache_bytes=6442450944` to hold a large history in memory).
    #[arg(long = "set", value_name = "FIELD=VALUE")]
    pub sets: Vec<String>,
    /// Protocol the generator speaks to tidings. leancloud: the servers get
    /// `leancloud_app_id` and a generated `leancloud_master_key`; idle, chat, fanout and storm
    /// only, and no reference runs (the reference server speaks only the native protocol).
    #[arg(long, value_enum, default_value_t = Dialect::Native)]
    pub dialect: Dialect,
    /// leancloud: base64 text frames (`lc.proto2base64.3`) instead of binary.
    #[arg(long)]
    pub lc_base64: bool,
    /// chat: also run the closed loop on fresh servers without webhooks, with one webhook
    /// endpoint (a receiver here that takes everything), and with that endpoint down.
    #[arg(long)]
    pub webhooks: bool,
    /// --webhooks: the receiver answers each POST this long after it has read it, ms (a remote
    /// endpoint's round trip; 0: at once).
    #[arg(long, default_value_t = 0)]
    pub webhook_answer_ms: u64,
    /// Count every server's system calls during each run with `perf stat` (socket writes per
    /// delivered message, frames per write).
    #[arg(long)]
    pub syscalls: bool,
}

/// The app id of the LeanCloud dialect in suite runs.
const LC_APP_ID: &str = "tidings-load";

/// A server process the suite started.
pub struct Spawned {
    child: Child,
    pub addr: std::net::SocketAddr,
    /// The admin listener (`/metrics`), when the server has one.
    pub admin: Option<std::net::SocketAddr>,
    pub pid: u32,
    dir: Option<tempfile::TempDir>,
}

impl Spawned {
    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// The server's data directory (tidings servers only).
    pub fn data_dir(&self) -> Option<std::path::PathBuf> {
        self.dir.as_ref().map(|d| d.path().join("data"))
    }

    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// Starts `cmd` and reads its stderr until the `listening addr=...` line.
pub async fn spawn(mut cmd: Command, dir: Option<tempfile::TempDir>) -> anyhow::Result<Spawned> {
    cmd.stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let mut child = cmd.spawn()?;
    let pid = child
        .id()
        .ok_or_else(|| anyhow::anyhow!("server exited at once"))?;
    let mut lines = BufReader::new(child.stderr.take().expect("piped stderr")).lines();
    let (addr, admin) = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(l) = lines.next_line().await? {
            let addr = l.split_whitespace().find_map(|w| w.strip_prefix("addr="));
            if let Some(a) = addr.filter(|_| l.contains("listening")) {
                // `admin=Some(127.0.0.1:7401)` (tidings, with an admin listener).
                let admin = l
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("admin=Some(")?.strip_suffix(')'))
                    .and_then(|a| a.parse().ok());
                return Ok((a.parse()?, admin));
            }
        }
        anyhow::bail!("server exited before listening")
    })
    .await
    .map_err(|_| anyhow::anyhow!("no `listening addr=` line within 60 s"))??;
    // Keep draining its log; pass on warnings and errors.
    tokio::spawn(async move {
        while let Ok(Some(l)) = lines.next_line().await {
            if l.contains("WARN") || l.contains("ERROR") {
                eprintln!("[server {pid}] {l}");
            }
        }
    });
    Ok(Spawned {
        child,
        addr,
        admin,
        pid,
        dir,
    })
}

/// A fresh tidings server: release binary, temp data directory, HS256 secret.
pub async fn spawn_tidings(
    bin: &std::path::Path,
    secret: &str,
    engine: &str,
    sets: &[String],
) -> anyhow::Result<Spawned> {
    let dir = tempfile::Builder::new().prefix("tidings-load-").tempdir()?;
    let mut cmd = Command::new(bin);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--set", &format!("store_engine={engine}")])
        .args(sets.iter().flat_map(|kv| ["--set", kv.as_str()]))
        .env("TIDINGS_JWT_HS256_SECRET", secret)
        .env("TIDINGS_LOG", "info");
    spawn(cmd, Some(dir)).await
}

/// A fresh tidings server with a configuration file holding `toml` (for settings `--set`
/// cannot give, like webhook endpoints).
pub async fn spawn_tidings_with(
    bin: &std::path::Path,
    secret: &str,
    engine: &str,
    sets: &[String],
    toml: &str,
) -> anyhow::Result<Spawned> {
    let dir = tempfile::Builder::new().prefix("tidings-load-").tempdir()?;
    let config = dir.path().join("tidings.toml");
    std::fs::write(&config, toml)?;
    let mut cmd = Command::new(bin);
    cmd.arg("--config")
        .arg(&config)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--set", &format!("store_engine={engine}")])
        .args(sets.iter().flat_map(|kv| ["--set", kv.as_str()]))
        .env("TIDINGS_JWT_HS256_SECRET", secret)
        .env("TIDINGS_LOG", "info");
    spawn(cmd, Some(dir)).await
}

/// The reference server, as a separate process (this binary's `ref-serve`).
pub async fn spawn_reference() -> anyhow::Result<Spawned> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["ref-serve", "--listen", "127.0.0.1:0"]);
    spawn(cmd, None).await
}

fn params(args: &[&str]) -> Params {
    Params::from_args(args)
}

#[derive(Serialize)]
struct Target {
    scenario: &'static str,
    figure: &'static str,
    value: f64,
    target: String,
    met: bool,
    reference_ratio: Option<f64>,
}

#[derive(Serialize)]
struct SuiteResult {
    unix_time: u64,
    note: &'static str,
    cpus: usize,
    /// The machine, measured before the first scenario.
    machine: crate::machine::Machine,
    tidings_bin: String,
    store_engine: String,
    /// The `--set FIELD=VALUE` settings every tidings server of the run had (a generated key
    /// shown as `<generated>`).
    server_settings: Vec<String>,
    /// The protocol the generator spoke to tidings.
    dialect: Dialect,
    quick: bool,
    targets: Vec<Target>,
    runs: Vec<RunResult>,
    /// The run with one webhook endpoint (`--webhooks`): how delivery kept up.
    #[serde(skip_serializing_if = "Option::is_none")]
    webhooks: Option<WebhookReport>,
}

/// How webhook delivery kept up with the closed-loop chat.
#[derive(Serialize, Clone, Debug)]
struct WebhookReport {
    /// Events the endpoint had received when the load stopped.
    received_during_run: u64,
    /// Events it received more than once (a batch sent again after a timeout), in all.
    repeats: u64,
    /// Events the server had written to its outbox when the load stopped.
    written_during_run: u64,
    /// Events written in all (`tidings_webhook_events_written_total` once caught up, or at
    /// the timeout).
    written: u64,
    /// Seconds from the end of the load until the endpoint had received every event written;
    /// `None`: not within `CATCH_UP_MAX`.
    caught_up_secs: Option<f64>,
}

/// How long the webhook run waits, after the load, for the endpoint to have every event.
const CATCH_UP_MAX: Duration = Duration::from_secs(180);

struct Ctx {
    args: SuiteArgs,
    secret: String,
    /// The `leancloud_master_key` of the servers (leancloud dialect).
    lc_key: String,
    runs: Vec<RunResult>,
    failed: bool,
    webhooks: Option<WebhookReport>,
    /// `--dialect mixed`: fanout only.
    mixed: bool,
}

impl Ctx {
    /// The same run against a fresh reference server; none when the generator speaks another
    /// dialect than the native one, which is all the reference speaks.
    async fn reference(&mut self, s: Scenario, p: Params) -> anyhow::Result<Option<RunResult>> {
        if self.args.dialect != Dialect::Native {
            return Ok(None);
        }
        let r = spawn_reference().await?;
        let refr = self.run(s, &r, "reference", p, Thresholds::default()).await;
        r.stop().await;
        Ok(refr)
    }

    fn wants(&self, s: Scenario) -> bool {
        (self.args.only.is_empty() || self.args.only.contains(&s))
            && (!self.mixed || s == Scenario::Fanout)
    }

    async fn run(
        &mut self,
        s: Scenario,
        server: &Spawned,
        target: &str,
        mut p: Params,
        t: Thresholds,
    ) -> Option<RunResult> {
        p.url = server.url();
        p.server_pid = Some(server.pid);
        p.syscalls = self.args.syscalls;
        if target == "tidings" {
            p.secret = Some(self.secret.clone());
            p.dialect = self.args.dialect;
            p.lc_base64 = self.args.lc_base64;
            p.lc_app_id = LC_APP_ID.into();
            p.lc_master_key = Some(self.lc_key.clone());
        }
        match runner::run(s, p, &t, target, self.args.progress).await {
            Ok(r) => {
                println!("{}", runner::table(&r));
                self.failed |= !r.ok;
                self.runs.push(r.clone());
                Some(r)
            }
            Err(e) => {
                eprintln!("{} against {target}: {e:#}", s.name());
                self.failed = true;
                None
            }
        }
    }
}

/// Runs the suite; returns whether every check passed.
pub async fn run(args: SuiteArgs) -> anyhow::Result<bool> {
    anyhow::ensure!(
        args.tidings_bin.exists(),
        "{} not found: build it with cargo build --release --workspace",
        args.tidings_bin.display()
    );
    // Measured first, while nothing of the suite runs yet.
    let machine = tokio::task::spawn_blocking(crate::machine::Machine::measure).await??;
    println!("{}", machine.line());
    let secret = format!("suite-secret-{:032x}", crate::raw::now_ns());
    // Letters in front: `--set` reads a value that looks like a number as one.
    let lc_key = format!("lc-key-{:032x}", crate::raw::now_ns() ^ 0x5eed);
    let q = args.quick;
    // The LeanCloud settings, and no reference runs (it speaks only the native protocol).
    let lean = args.dialect != Dialect::Native;
    let mixed = args.dialect == Dialect::Mixed;
    // The servers' settings: the given ones, plus the dialect's when the generator speaks it.
    // Every client of a run comes from this one address: the caps on connections not yet
    // logged in per address (and in total) would refuse a login storm. The request rate
    // limits are raised out of the way but stay on, so their cost is measured. Given sets win.
    let one_address = [
        "max_pending_handshakes=1000000",
        "max_pending_handshakes_per_ip=1000000",
        "max_pending_logins=1000000",
        "max_pending_logins_per_ip=1000000",
        "rate_limit_connection_per_sec=1000000",
        "rate_limit_connection_burst=1000000",
        "rate_limit_user_per_sec=1000000",
        "rate_limit_user_burst=1000000",
    ]
    .map(String::from);
    let mut server_sets: Vec<String> = one_address.iter().chain(&args.sets).cloned().collect();
    let mut shown_sets = server_sets.clone();
    if lean {
        server_sets.push(format!("leancloud_app_id={LC_APP_ID}"));
        server_sets.push(format!("leancloud_master_key={lc_key}"));
        shown_sets.push(format!("leancloud_app_id={LC_APP_ID}"));
        shown_sets.push("leancloud_master_key=<generated>".into());
    }
    println!(
        "dialect {}{}; tidings servers: store_engine={}{}",
        args.dialect.name(),
        if mixed {
            " (native binary, native JSON, lc.protobuf2.3, lc.proto2base64.3 in turn)"
        } else if lean && args.lc_base64 {
            " (lc.proto2base64.3)"
        } else if lean {
            " (lc.protobuf2.3)"
        } else {
            ""
        },
        args.store_engine,
        shown_sets
            .iter()
            .map(|s| format!(" --set {s}"))
            .collect::<String>()
    );
    if lean {
        let native_only: &[Scenario] = if mixed {
            &[
                Scenario::Idle,
                Scenario::Chat,
                Scenario::Storm,
                Scenario::History,
                Scenario::Churn,
            ]
        } else {
            &[Scenario::History, Scenario::Churn]
        };
        let skipped: Vec<&str> = native_only
            .iter()
            .copied()
            .filter(|s| args.only.is_empty() || args.only.contains(s))
            .map(|s| s.name())
            .collect();
        if !skipped.is_empty() {
            println!(
                "skipped over the {} dialect: {}",
                args.dialect.name(),
                skipped.join(", ")
            );
        }
        println!("no reference runs: the reference server speaks only the native protocol");
    }
    let mut cx = Ctx {
        args: args.clone(),
        secret,
        lc_key,
        runs: Vec::new(),
        failed: false,
        webhooks: None,
        mixed,
    };
    let mut targets = Vec::new();
    let bin = args.tidings_bin.clone();
    let args = SuiteArgs {
        sets: server_sets,
        ..args
    };
    let n = |full: usize, quick: usize| if q { quick } else { full }.to_string();

    if cx.wants(Scenario::Idle) {
        let sessions = n(19_000, 500);
        let p = params(&[
            "--sessions",
            &sessions,
            "--duration-secs",
            "10",
            "--concurrency",
            "128",
        ]);
        let t = Thresholds {
            max_bytes_per_session: Some(8192.0),
            ..Default::default()
        };
        let s = spawn_tidings(&bin, &cx.secret, &args.store_engine, &args.sets).await?;
        let tid = cx.run(Scenario::Idle, &s, "tidings", p.clone(), t).await;
        s.stop().await;
        let refr = cx.reference(Scenario::Idle, p).await?;
        let bps = |r: &Option<RunResult>| r.as_ref()?.server.as_ref()?.bytes_per_session;
        if let Some(v) = bps(&tid) {
            let ratio = bps(&refr).map(|r| v / r);
            targets.push(Target {
                scenario: "idle",
                figure: "server RSS per session, bytes",
                value: v,
                target: format!("<= 8192 and <= 0.8x reference at {sessions} sessions"),
                met: v <= 8192.0 && ratio.is_none_or(|r| r <= 0.8),
                reference_ratio: ratio,
            });
        }
    }

    if cx.wants(Scenario::Chat) {
        let s = spawn_tidings(&bin, &cx.secret, &args.store_engine, &args.sets).await?;
        let pairs = n(2000, 50);
        let dur = n(20, 3);
        let p = params(&[
            "--pairs",
            &pairs,
            "--window",
            "4",
            "--duration-secs",
            &dur,
            "--ramp-secs",
            "2",
        ]);
        let tid = cx
            .run(
                Scenario::Chat,
                &s,
                "tidings",
                p.clone(),
                Thresholds::default(),
            )
            .await;
        // The reference's chat mode relays with an ack and keeps nothing.
        let refr = cx.reference(Scenario::Chat, p).await?;
        let d = |r: &Option<RunResult>| r.as_ref()?.main_throughput();
        if let Some(v) = d(&tid) {
            let ratio = d(&refr).map(|r| v / r);
            targets.push(Target {
                scenario: "chat",
                figure: "closed-loop acked msg/s (100-byte persisted)",
                value: v,
                target: if lean {
                    format!(">= 50000 with {pairs} pairs")
                } else {
                    format!(">= 0.7x the reference's relay, {pairs} pairs")
                },
                met: if lean {
                    v >= 50_000.0
                } else {
                    ratio.is_some_and(|r| r >= 0.7)
                },
                reference_ratio: ratio,
            });
        }
        // p50 at a light rate, the p99 target, and the old target's rate, reported.
        let rates: &[(u32, Option<f64>)] = if q {
            &[(1000, Some(5.0))]
        } else {
            &[(5_000, None), (15_000, Some(5.0)), (25_000, None)]
        };
        for &(rate, max_p99) in rates {
            let rate = rate.to_string();
            let p = params(&[
                "--pairs",
                &pairs,
                "--rate",
                &rate,
                "--duration-secs",
                &dur,
                "--ramp-secs",
                "2",
            ]);
            let t = Thresholds {
                max_p99_ms: max_p99,
                ..Default::default()
            };
            if let Some(r) = cx.run(Scenario::Chat, &s, "tidings", p, t).await {
                let l = r.main_latency();
                let v = l.as_ref().map_or(f64::INFINITY, |l| l.p99_ms);
                targets.push(Target {
                    scenario: "chat",
                    figure: "p99 send->delivered ms at fixed rate",
                    value: v,
                    target: match max_p99 {
                        Some(m) => format!("<= {m} at {rate} msg/s"),
                        None => format!(
                            "report at {rate} msg/s (p50 {:.2} ms)",
                            l.as_ref().map_or(f64::NAN, |l| l.p50_ms)
                        ),
                    },
                    met: max_p99.is_none_or(|m| v <= m),
                    reference_ratio: None,
                });
            }
        }
        s.stop().await;
        if cx.args.webhooks {
            webhook_runs(&mut cx, &bin, &args, &pairs, &dur, &mut targets).await?;
        }
    }

    if cx.wants(Scenario::Fanout) {
        let g = n(1000, 50);
        let dur = n(15, 3);
        let p = params(&[
            "--group-size",
            &g,
            "--senders",
            "1",
            "--window",
            "8",
            "--duration-secs",
            &dur,
            "--ramp-secs",
            "1",
        ]);
        // Mixed: an admin listener for `/metrics`, to count the encodings.
        let s = if mixed {
            spawn_tidings_with(
                &bin,
                &cx.secret,
                &args.store_engine,
                &args.sets,
                "admin_listen = \"127.0.0.1:0\"\n\
                 admin_api_keys = [\"load-test-admin-key-0123456789abcdef\"]\n",
            )
            .await?
        } else {
            spawn_tidings(&bin, &cx.secret, &args.store_engine, &args.sets).await?
        };
        let mut tp = p.clone();
        tp.admin_addr = s.admin;
        let tid = cx
            .run(Scenario::Fanout, &s, "tidings", tp, Thresholds::default())
            .await;
        if mixed && let Some(r) = &tid {
            encodings_targets(r, &mut targets);
        }
        s.stop().await;
        let refr = cx.reference(Scenario::Fanout, p).await?;
        let d = |r: &Option<RunResult>| r.as_ref()?.main_throughput();
        if let Some(v) = d(&tid) {
            let ratio = d(&refr).map(|r| v / r);
            targets.push(Target {
                scenario: "fanout",
                figure: "deliveries/s",
                value: v,
                target: if lean {
                    format!(
                        ">= 500000, group of {g} (no reference over {})",
                        args.dialect.name()
                    )
                } else {
                    format!(">= 1.2x reference, group of {g}")
                },
                met: if lean {
                    v >= 500_000.0
                } else {
                    ratio.is_some_and(|r| r >= 1.2)
                },
                reference_ratio: ratio,
            });
        }
    }

    if cx.wants(Scenario::Storm) {
        let sessions = n(10_000, 500);
        let p = params(&["--sessions", &sessions, "--concurrency", "256"]);
        let s = spawn_tidings(&bin, &cx.secret, &args.store_engine, &args.sets).await?;
        if let Some(r) = cx
            .run(Scenario::Storm, &s, "tidings", p, Thresholds::default())
            .await
        {
            let v = r.main_throughput().unwrap_or(0.0);
            targets.push(Target {
                scenario: "storm",
                figure: if lean {
                    "sessions/s (connect, signed session/open, opened)"
                } else {
                    "sessions/s (connect, JWT login, ready)"
                },
                value: v,
                target: format!(">= 5000, {sessions} sessions"),
                met: v >= 5000.0,
                reference_ratio: None,
            });
        }
        s.stop().await;
    }

    if cx.wants(Scenario::History) && !lean {
        let msgs = if q { 20_000 } else { args.history_messages }.to_string();
        let convs = n(2000, 20);
        let pops = if q { 60.0 } else { args.populate_secs }.to_string();
        let p = params(&[
            "--messages",
            &msgs,
            "--conversations",
            &convs,
            "--writers",
            "64",
            "--populate-secs",
            &pops,
            "--page",
            "50",
            "--readers",
            "8",
            "--duration-secs",
            &n(20, 3),
            "--setup-secs",
            "600",
        ]);
        let t = Thresholds {
            max_p99_ms: Some(2.0),
            ..Default::default()
        };
        let s = spawn_tidings(&bin, &cx.secret, &args.store_engine, &args.sets).await?;
        if let Some(r) = cx.run(Scenario::History, &s, "tidings", p, t).await {
            let v = r.main_latency().map_or(f64::INFINITY, |l| l.p99_ms);
            targets.push(Target {
                scenario: "history",
                figure: "p99 page of 50, ms",
                value: v,
                target: format!(
                    "<= 2 with 10,000,000 messages (measured with {} stored, populated in {:.0} s)",
                    r.counts.get("populated").copied().unwrap_or(0),
                    r.populate_secs.unwrap_or(0.0)
                ),
                met: v <= 2.0,
                reference_ratio: None,
            });
        }
        s.stop().await;
    }

    if cx.wants(Scenario::Churn) && !lean {
        let convs = if q { 2_000 } else { args.churn_conversations }.to_string();
        let mut p = params(&[
            "--conversations",
            &convs,
            "--writers",
            "32",
            "--window",
            "16",
            "--ttl-secs",
            &n(60, 5),
            "--setup-secs",
            "600",
        ]);
        let s = spawn_tidings(&bin, &cx.secret, &args.store_engine, &args.sets).await?;
        p.data_dir = s.data_dir();
        let run = cx
            .run(Scenario::Churn, &s, "tidings", p, Thresholds::default())
            .await;
        if let Some((r, sv)) = run.as_ref().and_then(|r| Some((r, r.server.as_ref()?))) {
            let (a, b) = (
                sv.disk_start_bytes.unwrap_or(0),
                sv.disk_end_bytes.unwrap_or(0),
            );
            targets.push(Target {
                scenario: "churn",
                figure: "data dir bytes at the end",
                value: b as f64,
                target: format!(
                    "report: {a} bytes at the start; rss {} KiB at the start, {} KiB at the end; {} created",
                    sv.rss_baseline_bytes / 1024,
                    sv.rss_end_bytes / 1024,
                    r.counts.get("populated").copied().unwrap_or(0)
                ),
                met: r.ok,
                reference_ratio: None,
            });
        }
        s.stop().await;
    }

    for t in &targets {
        println!(
            "target {:<8} {:<48} {:>14.2}  {:<60} {}{}",
            t.scenario,
            t.figure,
            t.value,
            t.target,
            if t.met { "met" } else { "MISSED" },
            t.reference_ratio
                .map(|r| format!("  ({r:.2}x reference)"))
                .unwrap_or_default()
        );
    }
    let out = SuiteResult {
        unix_time: crate::raw::now_ns() / 1_000_000_000,
        note: NOTE,
        cpus: machine.cpus,
        machine,
        tidings_bin: args.tidings_bin.display().to_string(),
        store_engine: args.store_engine.clone(),
        server_settings: shown_sets,
        dialect: args.dialect,
        quick: q,
        targets,
        runs: cx.runs,
        webhooks: cx.webhooks,
    };
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&out)?)?;
    println!("results written to {}", args.out.display());
    Ok(!cx.failed)
}

/// Mixed fan-out: the push encodings by form from go to the end, against the messages sent
/// (every push of the run is a message; the group's setup is before go).
fn encodings_targets(r: &RunResult, targets: &mut Vec<Target>) {
    let Some(encodings) = r.server.as_ref().and_then(|s| s.push_encodings.as_ref()) else {
        eprintln!("fanout --dialect mixed: no push encodings were read");
        return;
    };
    let acked = r.counts.get("acked").copied().unwrap_or(0);
    for (form, figure) in [
        ("native", "mixed: native encodings per message"),
        ("json", "mixed: JSON encodings per message"),
        ("leancloud", "mixed: LeanCloud encodings per message"),
    ] {
        let n = encodings.get(form).copied().unwrap_or(0);
        targets.push(Target {
            scenario: "fanout",
            figure,
            value: n as f64 / acked.max(1) as f64,
            target: "<= 1".into(),
            met: acked > 0 && n <= acked,
            reference_ratio: None,
        });
    }
}

/// The closed-loop chat on three fresh servers: without webhooks, with one endpoint that takes
/// everything, and with that endpoint down (its outbox capped at 64 MiB). Sends must not be
/// slowed by more than 15% by either.
async fn webhook_runs(
    cx: &mut Ctx,
    bin: &std::path::Path,
    args: &SuiteArgs,
    pairs: &str,
    dur: &str,
    targets: &mut Vec<Target>,
) -> anyhow::Result<()> {
    let p = params(&[
        "--pairs",
        pairs,
        "--window",
        "4",
        "--duration-secs",
        dur,
        "--ramp-secs",
        "2",
    ]);
    let receiver =
        crate::hookrecv::Receiver::start(Duration::from_millis(args.webhook_answer_ms)).await?;
    let dead = crate::hookrecv::dead_address()?;
    // The admin listener serves `/metrics`: how many events the server wrote.
    let endpoint = |addr: std::net::SocketAddr| {
        format!(
            "webhook_outbox_max_bytes = 67108864\n\
             admin_listen = \"127.0.0.1:0\"\n\
             admin_api_keys = [\"load-test-admin-key-0123456789abcdef\"]\n\n\
             [[webhooks]]\nname = \"load\"\n\
             url = \"http://{addr}/hook\"\n\
             secret = \"whsec_bG9hZC10ZXN0LXNlY3JldC0wMTIzNDU2Nzg5YWJjZGVm\"\n"
        )
    };
    let mut figures = Vec::new();
    for (label, toml) in [
        ("without webhooks", String::new()),
        ("one webhook endpoint", endpoint(receiver.addr)),
        ("the endpoint down", endpoint(dead)),
    ] {
        let s = spawn_tidings_with(bin, &cx.secret, &args.store_engine, &args.sets, &toml).await?;
        let received = || receiver.events.load(std::sync::atomic::Ordering::Relaxed);
        let repeats = || receiver.repeats.load(std::sync::atomic::Ordering::Relaxed);
        let before = (received(), repeats());
        println!("chat, {label}:");
        let r = cx
            .run(
                Scenario::Chat,
                &s,
                "tidings",
                p.clone(),
                Thresholds::default(),
            )
            .await;
        if label == "one webhook endpoint" {
            let report = catch_up(&s, || received() - before.0, || repeats() - before.1).await?;
            println!(
                "webhook events: {} of {} received during the run; {}; {} received more than once",
                report.received_during_run,
                report.written_during_run,
                match report.caught_up_secs {
                    Some(t) => format!(
                        "all {} received {t:.1} s after the load stopped",
                        report.written
                    ),
                    None => format!(
                        "{} of {} received {} s after the load stopped",
                        received() - before.0,
                        report.written,
                        CATCH_UP_MAX.as_secs()
                    ),
                },
                report.repeats,
            );
            cx.webhooks = Some(report);
        }
        s.stop().await;
        figures.push((label, r.and_then(|r| r.main_throughput()).unwrap_or(0.0)));
    }
    let base = figures[0].1;
    for (label, v) in &figures[1..] {
        targets.push(Target {
            scenario: "chat",
            figure: if *label == "one webhook endpoint" {
                "closed-loop acked msg/s with one webhook endpoint"
            } else {
                "closed-loop acked msg/s with the webhook endpoint down"
            },
            value: *v,
            target: format!(">= 85% of {base:.0} (the same run without webhooks)"),
            met: *v >= 0.85 * base,
            reference_ratio: None,
        });
    }
    Ok(())
}

/// Once the load has stopped: waits (at most `CATCH_UP_MAX`) until the endpoint has received
/// every event the server wrote, as `/metrics` counts them.
async fn catch_up(
    s: &Spawned,
    received: impl Fn() -> u64,
    repeats: impl Fn() -> u64,
) -> anyhow::Result<WebhookReport> {
    let admin = s
        .admin
        .ok_or_else(|| anyhow::anyhow!("the webhook run's server has no admin listener"))?;
    let written = || crate::hookrecv::events_written(admin);
    let ended = std::time::Instant::now();
    let received_during_run = received();
    let written_during_run = written().await?;
    loop {
        // Received first: once it reaches what was written after it, it has everything.
        let got = received();
        let all = written().await?;
        let caught_up = got >= all;
        if caught_up || ended.elapsed() >= CATCH_UP_MAX {
            return Ok(WebhookReport {
                received_during_run,
                repeats: repeats(),
                written_during_run,
                written: all,
                caught_up_secs: caught_up.then(|| ended.elapsed().as_secs_f64()),
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
