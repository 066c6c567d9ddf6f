//! What a run is asked to do: scenario knobs, bounds and thresholds. Serializable, so worker
//! processes get exactly the parent's parameters.

use serde::{Deserialize, Serialize};

#[derive(clap::ValueEnum, Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Hold N logged-in sessions.
    Idle,
    /// One-to-one pairs exchanging messages.
    Chat,
    /// One group of G online members, one or more senders.
    Fanout,
    /// Connect and log in as fast as possible.
    Storm,
    /// Page through conversations in a large store.
    History,
    /// Create temporary conversations, chat in them, let them expire.
    Churn,
    /// One user in many conversations reads the first page of their conversation list.
    List,
    /// A mixed load for a long time: RSS and disk over time, losses, errors.
    Soak,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Idle => "idle",
            Scenario::Chat => "chat",
            Scenario::Fanout => "fanout",
            Scenario::Storm => "storm",
            Scenario::History => "history",
            Scenario::Churn => "churn",
            Scenario::List => "list",
            Scenario::Soak => "soak",
        }
    }
}

/// Which of the server's protocols the generator speaks.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Dialect {
    /// tidings' own protocol (`tidings.v1`): JWT login, `SendMessage`, `Message` pushes.
    #[default]
    Native,
    /// The LeanCloud-compatible dialect (`lc.protobuf2.3`, or `lc.proto2base64.3` with
    /// `--lc-base64`): signed `session/open`, `conv/start`, `direct`/`ack`, `direct` pushes.
    /// idle, chat, fanout and storm only.
    Leancloud,
    /// fanout only: the members take turns speaking native binary, native JSON
    /// (`tidings.v1.json`), LeanCloud binary and LeanCloud base64 (the server needs the
    /// LeanCloud settings, as for leancloud); a native member creates the group.
    Mixed,
}

impl Dialect {
    pub fn name(self) -> &'static str {
        match self {
            Dialect::Native => "native",
            Dialect::Leancloud => "leancloud",
            Dialect::Mixed => "mixed",
        }
    }
}

/// Knobs shared by every scenario. Every run is bounded: by `--duration-secs` (and
/// `--count`), plus `--drain-secs` for deliveries still in flight, plus `--setup-secs`.
#[derive(clap::Args, Clone, Debug, Serialize, Deserialize)]
pub struct Params {
    /// WebSocket URL of the server under test (loopback only).
    #[arg(long, default_value = "ws://127.0.0.1:7400/ws")]
    pub url: String,
    /// HS256 secret for minting login tokens. Without it the user id is sent as the token
    /// (servers in `--insecure-dev` mode, and the reference server).
    #[arg(long, env = "TIDINGS_JWT_HS256_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// Protocol to speak: native, or leancloud (idle, chat, fanout, storm; the server needs
    /// `leancloud_app_id` and `leancloud_master_key`).
    #[arg(long, value_enum, default_value_t = Dialect::Native)]
    #[serde(default)]
    pub dialect: Dialect,
    /// leancloud: base64 text frames (`lc.proto2base64.3`) instead of binary (`lc.protobuf2.3`).
    #[arg(long)]
    #[serde(default)]
    pub lc_base64: bool,
    /// leancloud: the app id sessions open with (the server's `leancloud_app_id`).
    #[arg(long, env = "TIDINGS_LEANCLOUD_APP_ID", default_value = "tidings-load")]
    #[serde(default = "default_lc_app_id")]
    pub lc_app_id: String,
    /// leancloud: the server's `leancloud_master_key`, to sign each `session/open` as an app
    /// backend would. Without it no signature is sent (servers in `insecure_dev` mode).
    #[arg(long, env = "TIDINGS_LEANCLOUD_MASTER_KEY", hide_env_values = true)]
    #[serde(default)]
    pub lc_master_key: Option<String>,
    /// Pid of the server, to report its CPU time and memory.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// The server's admin listener (`/metrics`): the run reports the push encodings the server
    /// made from go to the end, by form (fanout --dialect mixed).
    #[arg(long)]
    #[serde(default)]
    pub admin_addr: Option<std::net::SocketAddr>,
    /// With --server-pid: count the server's system calls from go to the end with `perf stat`
    /// (socket writes per delivered message, frames per write).
    #[arg(long)]
    #[serde(default)]
    pub syscalls: bool,
    /// idle, storm: sessions to open.
    #[arg(long, default_value_t = 1000)]
    pub sessions: usize,
    /// chat: pairs of users, each pair one direct conversation; both sides send.
    #[arg(long, default_value_t = 100)]
    pub pairs: usize,
    /// fanout: members of the group (senders included), all online.
    #[arg(long, default_value_t = 100)]
    pub group_size: usize,
    /// fanout: members that send.
    #[arg(long, default_value_t = 1)]
    pub senders: usize,
    /// Message content size, bytes (at least 8: the send timestamp).
    #[arg(long, default_value_t = 100)]
    pub message_bytes: usize,
    /// Fixed-rate mode: total messages per second over all senders. 0: closed loop.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Closed loop: sends in flight per sender (at most 64, the server's default).
    #[arg(long, default_value_t = 1)]
    pub window: usize,
    /// How long senders send (idle: how long sessions are held), seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration_secs: f64,
    /// Ramp-up, seconds: the rate rises linearly (closed loop: senders start staggered;
    /// idle: connections spread). Latencies from the ramp are not recorded.
    #[arg(long, default_value_t = 0.0)]
    pub ramp_secs: f64,
    /// Most messages per sender (0: only the duration bounds it).
    #[arg(long, default_value_t = 0)]
    pub count: u64,
    /// After sending stops, how long receivers may wait for what is still in flight, seconds.
    #[arg(long, default_value_t = 5.0)]
    pub drain_secs: f64,
    /// Time allowed to connect, log in and create conversations, seconds.
    #[arg(long, default_value_t = 300.0)]
    pub setup_secs: f64,
    /// Connections opened in parallel during setup (storm: the attack width).
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// history: conversations in the store.
    #[arg(long, default_value_t = 100)]
    pub conversations: usize,
    /// history: messages to put in the store (spread over the conversations).
    #[arg(long, default_value_t = 100_000)]
    pub messages: u64,
    /// history: writer connections that populate the store in parallel.
    #[arg(long, default_value_t = 32)]
    pub writers: usize,
    /// history: stop populating after this long even if fewer messages are stored, seconds.
    #[arg(long, default_value_t = 1800.0)]
    pub populate_secs: f64,
    /// history: messages per page.
    #[arg(long, default_value_t = 50)]
    pub page: u32,
    /// history: reader connections paging concurrently (closed loop, one request each).
    #[arg(long, default_value_t = 8)]
    pub readers: usize,
    /// Connections one process may hold; more are spread over worker processes.
    /// churn: lifetime of each temporary conversation, seconds.
    #[arg(long, default_value_t = 10)]
    pub ttl_secs: u32,
    /// churn: the server's data directory, to report bytes on disk at the start and the end.
    #[arg(long)]
    pub data_dir: Option<std::path::PathBuf>,
    #[arg(long, default_value_t = 19_000)]
    pub per_process: usize,
    /// soak: messages per second the group's sender sends (chat: `--rate` in all).
    #[arg(long, default_value_t = 20.0)]
    #[serde(default)]
    pub fanout_rate: f64,
    /// soak: sessions that connect, log in and leave, per second.
    #[arg(long, default_value_t = 10.0)]
    #[serde(default)]
    pub logins_per_sec: f64,
    /// soak: list and history pages read per second (by one device, alternating; at the
    /// shipped request rate limits one connection affords about 8).
    #[arg(long, default_value_t = 6.0)]
    #[serde(default)]
    pub reads_per_sec: f64,
    /// soak: misbehaving clients per second (garbage, never reading, a stalled handshake, in
    /// turn).
    #[arg(long, default_value_t = 1.0)]
    #[serde(default)]
    pub misbehaving_per_sec: f64,
    /// soak: seconds between samples of the server's RSS and data directory.
    #[arg(long, default_value_t = 10.0)]
    #[serde(default)]
    pub sample_secs: f64,
    /// Program to run as worker process (default: this program).
    #[arg(long, hide = true)]
    pub worker_exe: Option<std::path::PathBuf>,
    /// Prefix of user ids (default: unique per run, so runs on one store do not collide).
    #[arg(long)]
    pub run_id: Option<String>,
}

fn default_lc_app_id() -> String {
    "tidings-load".into()
}

/// Limits that set the exit code.
#[derive(clap::Args, Clone, Debug, Default, Serialize, Deserialize)]
pub struct Thresholds {
    /// Fail when the main latency's p99 (delivery; storm/idle: connect+login; history: page)
    /// exceeds this, ms.
    #[arg(long)]
    pub max_p99_ms: Option<f64>,
    /// Fail when the main throughput (chat: acked msg/s; fanout: deliveries/s; storm:
    /// sessions/s; history: pages/s) is below this.
    #[arg(long)]
    pub min_throughput: Option<f64>,
    /// Fail when server RSS growth per session exceeds this (needs --server-pid), bytes.
    #[arg(long)]
    pub max_bytes_per_session: Option<f64>,
    /// soak: fail when the server's RSS grows faster than this after the warm-up, MiB per
    /// 10 minutes (needs --server-pid).
    #[arg(long)]
    #[serde(default)]
    pub max_rss_slope_mib_per_10min: Option<f64>,
    /// Fail when more messages than this were lost or requests failed.
    #[arg(long, default_value_t = 0)]
    pub max_errors: u64,
}

/// Connections a scenario opens in total.
pub fn connections(scenario: Scenario, p: &Params) -> usize {
    match scenario {
        Scenario::Idle | Scenario::Storm => p.sessions,
        Scenario::Chat => p.pairs * 2,
        Scenario::Fanout => p.group_size,
        Scenario::History => p.writers.max(p.readers),
        Scenario::Churn => p.writers,
        Scenario::List => p.writers.max(p.readers),
        Scenario::Soak => 2 * p.pairs + p.group_size + 1,
    }
}

impl Params {
    /// The defaults of a scenario command, plus the given flags (panics on a bad flag: for
    /// parameters written in code).
    pub fn from_args(args: &[&str]) -> Params {
        use clap::Parser;
        #[derive(Parser)]
        struct P {
            #[command(flatten)]
            p: Params,
        }
        let mut all = vec!["tidings-load"];
        all.extend_from_slice(args);
        P::parse_from(all).p
    }
}
