//! A tiny run of every scenario against an in-process server (seconds, not minutes). These
//! assert behaviour (sessions, deliveries, counts, JSON, exit codes), never timing.

use std::process::Command;
use std::sync::Arc;
use tidings::clock::SystemClock;
use tidings::config::Config;
use tidings::server::{self, RunningServer};
use tidings_load::params::{Dialect, Params, Scenario, Thresholds};
use tidings_load::runner::{self, RunResult};

const SECRET: &str = "load-smoke-secret-of-at-least-32-bytes";
const LC_APP_ID: &str = "load-smoke-app";
const LC_MASTER_KEY: &str = "load-smoke-leancloud-master-key";

async fn server() -> (RunningServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = config(&dir);
    (
        server::start(config, Arc::new(SystemClock)).await.unwrap(),
        dir,
    )
}

/// A smoke server's settings, its store in `dir`.
fn config(dir: &tempfile::TempDir) -> Config {
    Config {
        listen: "127.0.0.1:0".into(),
        data_dir: dir.path().join("data"),
        jwt_hs256_secret: Some(SECRET.into()),
        store_cache_bytes: 8 << 20,
        // The LeanCloud dialect on (it changes nothing for native clients).
        leancloud_app_id: Some(LC_APP_ID.into()),
        leancloud_master_key: Some(LC_MASTER_KEY.into()),
        // Every client comes from 127.0.0.1.
        max_pending_handshakes_per_ip: 1 << 20,
        max_pending_logins_per_ip: 1 << 20,
        // Generators send faster than a person: limits raised, still on.
        rate_limit_connection_per_sec: 1 << 20,
        rate_limit_connection_burst: 1 << 20,
        rate_limit_user_per_sec: 1 << 20,
        rate_limit_user_burst: 1 << 20,
        ..Config::default()
    }
}

fn params(s: &RunningServer, extra: &[&str]) -> Params {
    let mut args: Vec<&str> = extra.to_vec();
    // A run bounded by `--count` ends when every sender has sent it: the duration is only a
    // bound then, wide enough for a loaded machine.
    let duration = if extra.contains(&"--count") {
        "30"
    } else {
        "1"
    };
    for (flag, value) in [
        ("--duration-secs", duration),
        ("--drain-secs", "10"),
        ("--setup-secs", "30"),
    ] {
        if !extra.contains(&flag) {
            args.extend([flag, value]);
        }
    }
    let mut p = Params::from_args(&args);
    p.url = format!("ws://{}/ws", s.addr);
    p.secret = Some(SECRET.into());
    p.server_pid = Some(std::process::id());
    p
}

/// `params` for the LeanCloud dialect, from the command-line flags (binary frames; base64
/// with `base64`).
fn lc_params(s: &RunningServer, extra: &[&str], base64: bool) -> Params {
    let mut args = extra.to_vec();
    args.extend([
        "--dialect",
        "leancloud",
        "--lc-app-id",
        LC_APP_ID,
        "--lc-master-key",
        LC_MASTER_KEY,
    ]);
    if base64 {
        args.push("--lc-base64");
    }
    let p = params(s, &args);
    assert_eq!(p.dialect, Dialect::Leancloud);
    assert_eq!(p.lc_base64, base64);
    p
}

async fn run(scenario: Scenario, p: Params) -> RunResult {
    runner::run(scenario, p, &Thresholds::default(), "tidings", false)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_holds_every_session() {
    let (s, _dir) = server().await;
    let r = run(Scenario::Idle, params(&s, &["--sessions", "20"])).await;
    assert_eq!(r.counts["sessions"], 20);
    assert_eq!(r.errors(), 0, "{r:?}");
    assert_eq!(r.latency["connect_login"].count, 20);
    let sv = r.server.as_ref().unwrap();
    assert!(sv.bytes_per_session.is_some());
    assert!(r.ok);
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_delivers_every_message_closed_loop_and_fixed_rate() {
    let (s, _dir) = server().await;
    let r = run(
        Scenario::Chat,
        params(&s, &["--pairs", "3", "--window", "2", "--count", "20"]),
    )
    .await;
    assert_eq!(r.counts["sent"], 120, "{r:?}");
    assert_eq!(r.counts["acked"], 120);
    assert_eq!(r.counts["delivered"], 120);
    assert_eq!(r.counts["lost"], 0);
    assert_eq!(r.latency["send_to_delivered"].count, 120);
    assert_eq!(r.latency["send_to_ack"].count, 120);
    assert!(r.server.as_ref().unwrap().cpu_us_per_delivered.is_some());
    assert!(r.ok);
    // Fixed rate, bounded by count: 2 pairs × 2 senders × 5 messages.
    let r = run(
        Scenario::Chat,
        params(
            &s,
            &[
                "--pairs",
                "2",
                "--rate",
                "200",
                "--count",
                "5",
                "--duration-secs",
                "30",
            ],
        ),
    )
    .await;
    assert_eq!(r.counts["acked"], 20, "{r:?}");
    assert_eq!(r.counts["delivered"], 20);
    assert!(r.ok);
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_reaches_every_member() {
    let (s, _dir) = server().await;
    let r = run(
        Scenario::Fanout,
        params(
            &s,
            &[
                "--group-size",
                "10",
                "--senders",
                "2",
                "--window",
                "4",
                "--count",
                "15",
            ],
        ),
    )
    .await;
    assert_eq!(r.counts["acked"], 30, "{r:?}");
    // Each message reaches the 9 other members.
    assert_eq!(r.counts["delivered"], 30 * 9);
    assert_eq!(r.counts["lost"], 0);
    assert!(r.ok);
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_logs_everyone_in() {
    let (s, _dir) = server().await;
    let r = run(
        Scenario::Storm,
        params(&s, &["--sessions", "30", "--concurrency", "8"]),
    )
    .await;
    assert_eq!(r.counts["sessions"], 30, "{r:?}");
    assert!(r.throughput["sessions_per_s"] > 0.0);
    assert!(r.ok);
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_populates_then_pages() {
    let (s, _dir) = server().await;
    let r = run(
        Scenario::History,
        params(
            &s,
            &[
                "--conversations",
                "4",
                "--writers",
                "2",
                "--messages",
                "400",
                "--page",
                "50",
                "--readers",
                "2",
                "--count",
                "10",
            ],
        ),
    )
    .await;
    assert_eq!(r.counts["populated"], 400, "{r:?}");
    assert_eq!(r.counts["pages"], 20);
    assert_eq!(r.counts["page_errors"], 0);
    assert!(r.ok);
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_fanout_run_against_the_reference_server() {
    let addr = tidings_load::refserver::start("127.0.0.1:0").await.unwrap();
    let mut p = Params::from_args(&[
        "--sessions",
        "10",
        "--duration-secs",
        "0",
        "--setup-secs",
        "30",
    ]);
    p.url = format!("ws://{addr}/ws");
    let r = runner::run(
        Scenario::Idle,
        p.clone(),
        &Thresholds::default(),
        "reference",
        false,
    )
    .await
    .unwrap();
    assert_eq!(r.counts["sessions"], 10);
    assert!(r.ok, "{r:?}");
    let mut p = Params::from_args(&[
        "--group-size",
        "5",
        "--window",
        "2",
        "--count",
        "10",
        "--setup-secs",
        "30",
    ]);
    p.url = format!("ws://{addr}/ws");
    let r = runner::run(
        Scenario::Fanout,
        p,
        &Thresholds::default(),
        "reference",
        false,
    )
    .await
    .unwrap();
    // The other 10 idle sessions have left; the 5 members share the broadcast.
    assert_eq!(r.counts["acked"], 10, "{r:?}");
    assert_eq!(r.counts["delivered"], 40);
    assert!(r.ok);
    // Chat mode: each pair's messages reach its peer only (a broadcast would deliver each to
    // all 7 other connections, and the run would count them as lost or extra).
    let mut p = Params::from_args(&[
        "--pairs",
        "4",
        "--window",
        "2",
        "--count",
        "5",
        "--setup-secs",
        "30",
    ]);
    p.url = format!("ws://{addr}/ws");
    let r = runner::run(
        Scenario::Chat,
        p,
        &Thresholds::default(),
        "reference",
        false,
    )
    .await
    .unwrap();
    assert_eq!(r.counts["acked"], 40, "{r:?}");
    assert_eq!(r.counts["delivered"], 40);
    assert_eq!(r.counts["lost"], 0);
    assert!(r.ok, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_split_a_run_and_merge_histograms() {
    let (s, _dir) = server().await;
    let mut p = params(&s, &["--pairs", "4", "--per-process", "4", "--count", "5"]);
    p.worker_exe = Some(env!("CARGO_BIN_EXE_tidings-load").into());
    let r = run(Scenario::Chat, p).await;
    assert_eq!(r.workers, 2);
    assert_eq!(r.counts["sessions"], 8, "{r:?}");
    assert_eq!(r.counts["delivered"], 40);
    assert_eq!(r.latency["send_to_delivered"].count, 40);
    assert!(r.ok);
    s.stop().await.unwrap();
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tidings-load"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_writes_json_and_thresholds_set_the_exit_code() {
    let (s, _dir) = server().await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.json");
    let url = format!("ws://{}/ws", s.addr);
    let st = tokio::task::spawn_blocking(move || {
        let run = |extra: &[&str]| {
            let o = bin()
                .args([
                    "storm",
                    "--url",
                    &url,
                    "--sessions",
                    "5",
                    "--quiet",
                    "--out",
                ])
                .arg(&out)
                .args(extra)
                .env("TIDINGS_JWT_HS256_SECRET", SECRET)
                .output()
                .unwrap();
            let json: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
            (o, json)
        };
        let (ok, json) = run(&[]);
        let (missed, missed_json) = run(&["--min-throughput", "1e15"]);
        (ok, json, missed, missed_json)
    })
    .await
    .unwrap();
    let (ok, json, missed, missed_json) = st;
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(json["scenario"], "storm");
    assert_eq!(json["counts"]["sessions"], 5);
    assert!(
        json["params"]["secret"].is_null(),
        "the secret stays out of results"
    );
    assert_eq!(missed.status.code(), Some(2));
    assert_eq!(missed_json["ok"], false);
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_creates_temporary_conversations_and_sees_them_expire() {
    let (s, dir) = server().await;
    let mut p = params(
        &s,
        &[
            "--conversations",
            "40",
            "--writers",
            "2",
            "--window",
            "4",
            "--ttl-secs",
            "1",
        ],
    );
    p.data_dir = Some(dir.path().join("data"));
    let r = run(Scenario::Churn, p).await;
    assert_eq!(r.counts["populated"], 40, "{r:?}");
    assert_eq!(r.counts["acked"], 40, "a message in each");
    assert_eq!(
        r.counts["failed"], 0,
        "every probe saw its conversation expire"
    );
    let sv = r.server.as_ref().unwrap();
    assert!(sv.disk_start_bytes.is_some() && sv.disk_end_bytes.unwrap() > 0);
    assert!(r.ok);
    // A probe sees its conversation expired at the deadline; the sweep that deletes it (and
    // counts it) may come a moment later.
    tokio::time::timeout(
        std::time::Duration::from_secs(20),
        s.app.stats.conversations_expired.wait_for(40),
    )
    .await
    .expect("the server expired them all");
    s.stop().await.unwrap();
}

#[test]
fn only_loopback_targets_are_accepted() {
    let o = bin()
        .args(["idle", "--url", "ws://192.0.2.1:7400/ws"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("loopback"));
}

// ---- the LeanCloud dialect ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leancloud_idle_holds_every_session() {
    let (s, _dir) = server().await;
    let r = run(Scenario::Idle, lc_params(&s, &["--sessions", "20"], false)).await;
    assert_eq!(r.counts["sessions"], 20, "{r:?}");
    assert_eq!(r.errors(), 0, "every session answered its echo: {r:?}");
    assert_eq!(r.latency["connect_login"].count, 20);
    assert!(r.server.as_ref().unwrap().bytes_per_session.is_some());
    assert_eq!(r.params.dialect, Dialect::Leancloud);
    assert!(
        r.params.lc_master_key.is_none(),
        "the key stays out of results"
    );
    assert!(r.ok);
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leancloud_chat_delivers_every_message_closed_loop_and_fixed_rate() {
    let (s, _dir) = server().await;
    let r = run(
        Scenario::Chat,
        lc_params(
            &s,
            &["--pairs", "3", "--window", "2", "--count", "20"],
            false,
        ),
    )
    .await;
    assert_eq!(r.counts["sent"], 120, "{r:?}");
    assert_eq!(r.counts["acked"], 120);
    assert_eq!(r.counts["delivered"], 120);
    assert_eq!(r.counts["lost"], 0);
    assert_eq!(
        r.latency["send_to_delivered"].count, 120,
        "every push carried its stamp"
    );
    assert_eq!(r.latency["send_to_ack"].count, 120);
    assert!(r.server.as_ref().unwrap().cpu_us_per_delivered.is_some());
    assert!(r.ok);
    // Fixed rate over base64 text frames: 2 pairs × 2 senders × 5 messages.
    let r = run(
        Scenario::Chat,
        lc_params(
            &s,
            &[
                "--pairs",
                "2",
                "--rate",
                "200",
                "--count",
                "5",
                "--duration-secs",
                "30",
            ],
            true,
        ),
    )
    .await;
    assert_eq!(r.counts["acked"], 20, "{r:?}");
    assert_eq!(r.counts["delivered"], 20);
    assert_eq!(r.latency["send_to_delivered"].count, 20);
    assert!(r.ok);
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leancloud_fanout_reaches_every_member() {
    let (s, _dir) = server().await;
    // 260 members: more than one conv/add fits in a command, so the group is built in chunks.
    let r = run(
        Scenario::Fanout,
        lc_params(
            &s,
            &[
                "--group-size",
                "260",
                "--senders",
                "2",
                "--window",
                "4",
                "--count",
                "3",
            ],
            false,
        ),
    )
    .await;
    assert_eq!(r.counts["acked"], 6, "{r:?}");
    // Each message reaches the 259 other members, and never its sender.
    assert_eq!(r.counts["delivered"], 6 * 259);
    assert_eq!(r.counts["lost"], 0);
    assert_eq!(r.latency["send_to_delivered"].count, 6 * 259);
    assert!(r.ok);
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_fanout_reaches_every_form_and_costs_one_encoding_per_form_and_message() {
    let dir = tempfile::tempdir().unwrap();
    // An admin listener, for `/metrics`.
    let config = Config {
        admin_listen: "127.0.0.1:0".into(),
        admin_api_keys: vec!["load-smoke-admin-key-0123456789abcdef".into()],
        ..config(&dir)
    };
    let s = server::start(config, Arc::new(SystemClock)).await.unwrap();
    let mut p = params(
        &s,
        &[
            "--dialect",
            "mixed",
            "--lc-app-id",
            LC_APP_ID,
            "--lc-master-key",
            LC_MASTER_KEY,
            "--group-size",
            "9",
            "--senders",
            "2",
            "--window",
            "2",
            "--count",
            "5",
        ],
    );
    p.admin_addr = s.admin_addr;
    let r = run(Scenario::Fanout, p).await;
    assert_eq!(r.counts["acked"], 10, "{r:?}");
    // Members 0..9 speak native binary, JSON, LeanCloud binary, LeanCloud base64 in turn; each
    // message reaches the 8 others, whatever their form.
    assert_eq!(r.counts["delivered"], 10 * 8);
    assert_eq!(r.counts["lost"], 0);
    // One encoding per form and message. The count starts when the run does, and the group's
    // membership events of the setup (at most 4 per form) may still be written after that;
    // an encoding per recipient would be at least 20 per form (two members or more each).
    let encodings = r.server.as_ref().unwrap().push_encodings.as_ref().unwrap();
    for form in ["native", "json", "leancloud"] {
        let n = encodings.get(form).copied().unwrap_or(0);
        assert!((10..=14).contains(&n), "{form}: {encodings:?}");
    }
    assert!(r.ok);
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leancloud_storm_opens_every_session() {
    let (s, _dir) = server().await;
    let r = run(
        Scenario::Storm,
        lc_params(&s, &["--sessions", "30", "--concurrency", "8"], true),
    )
    .await;
    assert_eq!(r.counts["sessions"], 30, "{r:?}");
    assert_eq!(r.latency["connect_login"].count, 30);
    assert!(r.throughput["sessions_per_s"] > 0.0);
    assert!(r.ok);
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leancloud_workers_split_a_chat_run() {
    let (s, _dir) = server().await;
    let mut p = lc_params(
        &s,
        &["--pairs", "4", "--per-process", "4", "--count", "5"],
        false,
    );
    p.worker_exe = Some(env!("CARGO_BIN_EXE_tidings-load").into());
    let r = run(Scenario::Chat, p).await;
    assert_eq!(r.workers, 2);
    assert_eq!(r.counts["sessions"], 8, "{r:?}");
    assert_eq!(r.counts["delivered"], 40);
    assert!(r.ok);
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leancloud_refused_opens_are_connect_failures_and_history_is_native_only() {
    let (s, _dir) = server().await;
    let mut p = lc_params(&s, &["--sessions", "3"], false);
    p.lc_master_key = Some("not-the-servers-key".into());
    let r = run(Scenario::Storm, p).await;
    assert_eq!(r.counts["sessions"], 0, "{r:?}");
    assert_eq!(r.counts["connect_failures"], 3);
    assert!(!r.ok);
    let e = runner::run(
        Scenario::History,
        lc_params(&s, &[], false),
        &Thresholds::default(),
        "tidings",
        false,
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("native dialect only"), "{e}");
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_mixes_every_load_and_samples_the_server() {
    let (s, dir) = server().await;
    let mut p = params(
        &s,
        &[
            "--pairs",
            "2",
            "--rate",
            "40",
            "--group-size",
            "5",
            "--fanout-rate",
            "20",
            "--logins-per-sec",
            "10",
            "--reads-per-sec",
            "10",
            "--misbehaving-per-sec",
            "6",
            "--sample-secs",
            "0.25",
            "--duration-secs",
            "2",
        ],
    );
    p.data_dir = Some(dir.path().join("data"));
    let r = run(Scenario::Soak, p).await;
    let c = &r.counts;
    assert_eq!((c["lost"], r.errors()), (0, 0), "{r:?}");
    assert!(c["acked"] > 0 && c["delivered"] >= c["acked"], "{r:?}");
    assert!(c["logins"] > 0 && c["pages"] > 0, "{r:?}");
    // Each kind of misbehaving client came, and the server closed every garbage sender.
    assert!(
        c["garbage"] > 0 && c["slow"] > 0 && c["stalled"] > 0,
        "{r:?}"
    );
    assert_eq!(c["garbage_closed"], c["garbage"], "{r:?}");
    assert_eq!(c["stalled_closed"], c["stalled"], "{r:?}");
    let soak = r.soak.as_ref().expect("soak figures");
    assert!(soak.samples.len() >= 3, "{soak:?}");
    assert!(
        soak.samples
            .iter()
            .all(|x| x.rss_bytes > 0 && x.disk_bytes > 0)
    );
    assert!(soak.rss_slope_mib_per_10min.is_some());
    assert!(r.ok);
    s.stop().await.unwrap();
}
