//! Every tunable in one struct: addresses, auth, limits, timeouts and queue sizes.
//!
//! Sources, later ones winning: built-in defaults, a TOML file (`--config`), environment
//! variables `TIDINGS_<FIELD>` (upper-case field name, for example `TIDINGS_LISTEN`), and
//! command-line `--set field=value` / dedicated flags. The README lists every field.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Shortest accepted `jwt_hs256_secret`, bytes. HS256 is as strong as its key: anyone holding
/// one token can guess a short secret offline and then mint tokens for every user.
pub const MIN_HS256_SECRET_BYTES: usize = 32;
/// The most `worker_threads` may ask for.
pub const MAX_WORKER_THREADS: usize = 1024;

/// One webhook endpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookEndpoint {
    /// A stable name (1 to 64 letters, digits, `-`, `_`): its position in the outbox is kept
    /// under it, so renaming it starts it from the end of the outbox.
    pub name: String,
    /// `http://` or `https://` URL events are POSTed to.
    pub url: String,
    /// Signing secret, `whsec_` then base64 (Standard Webhooks).
    pub secret: String,
    /// During a rotation: the old secret, whose signature is sent too.
    #[serde(default)]
    pub previous_secret: Option<String>,
    /// Event types to send (`message.created`, `conversation.*`…); empty: all.
    #[serde(default)]
    pub events: Vec<String>,
}

/// Secrets people paste from examples and tutorials, compared ignoring case, `-`, `_`, `.` and
/// spaces: one of them anywhere in a `jwt_hs256_secret` is refused, however long the secret.
const PLACEHOLDER_SECRETS: &[&str] = &[
    "changeme",
    "replaceme",
    "yoursecret",
    "your256bitsecret",
    "astringsecretatleast256bitslong",
];

/// Least estimated strength of a `jwt_hs256_secret` or admin API key, bits (see
/// [`weak_secret`]).
pub const MIN_HS256_SECRET_BITS: f64 = 64.0;

/// Shortest accepted `leancloud_master_key`, bytes. Lower than [`MIN_HS256_SECRET_BYTES`] so
/// the master keys of LeanCloud apps (24 random letters and digits), which their backends'
/// signature factories sign with, keep working when the apps move here.
pub const MIN_LEANCLOUD_KEY_BYTES: usize = 16;

/// Least estimated strength of a `leancloud_master_key`, bits (see [`weak_key`]): low enough
/// for every random key of [`MIN_LEANCLOUD_KEY_BYTES`] (16 random hex digits estimate at 31 or
/// more, 24 random letters and digits at 80 or more), high enough for `aaaaaaaabbbbbbbb`.
pub const MIN_LEANCLOUD_KEY_BITS: f64 = 28.0;

/// Why `secret` is too easy to guess although long enough, if it is: it holds a well-known
/// placeholder, repeats a shorter string (`change-me` four times, 32 times the same byte), is
/// mostly a run of consecutive characters (`abcdef…`, `123456…`), its bytes are so uneven
/// that, counted as independent draws from their own histogram, they carry under
/// [`MIN_HS256_SECRET_BITS`], or it is made of common passwords, repeats and runs that
/// together carry under it ([`pattern_bits`]: `passwordpasswordpassword12345678`). Random
/// secrets (`tidings secret`, 32 bytes of `/dev/urandom` in base64, even 32 random decimal
/// digits) pass every rule by a wide margin.
pub fn weak_secret(secret: &str) -> Option<String> {
    weak_key(secret, MIN_HS256_SECRET_BITS)
}

/// [`weak_secret`] with another least strength, `min_bits`.
pub fn weak_key(secret: &str, min_bits: f64) -> Option<String> {
    let folded: String = secret
        .chars()
        .filter(|c| !matches!(c, '-' | '_' | '.' | ' '))
        .flat_map(char::to_lowercase)
        .collect();
    if let Some(p) = PLACEHOLDER_SECRETS.iter().find(|p| folded.contains(**p)) {
        return Some(format!("it contains the well-known placeholder {p:?}"));
    }
    let b = secret.as_bytes();
    if let Some(period) = (1..=b.len() / 2).find(|&p| (p..b.len()).all(|i| b[i] == b[i - p])) {
        return Some(format!(
            "it is the same {period} byte(s) repeated ({:?}…)",
            String::from_utf8_lossy(&b[..period])
        ));
    }
    let steps = b.windows(2).filter(|w| w[0].abs_diff(w[1]) == 1).count();
    if b.len() > 1 && steps * 4 >= (b.len() - 1) * 3 {
        return Some("it is mostly a run of consecutive characters".into());
    }
    let mut counts = [0u32; 256];
    for &x in b {
        counts[usize::from(x)] += 1;
    }
    let n = b.len() as f64;
    let bits: f64 = counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2() * n
        })
        .sum();
    if bits < min_bits {
        return Some(format!(
            "its bytes are too uneven (about {bits:.0} bits; at least {min_bits} are required)"
        ));
    }
    let bits = pattern_bits(secret);
    if bits < min_bits {
        return Some(format!(
            "it is made of common passwords, repeats and runs (about {bits:.0} bits; at least \
             {min_bits} are required)"
        ));
    }
    None
}

/// Passwords and words people build secrets from, matched ignoring case and common letter
/// swaps (`p@ssw0rd`), with the keyboard's rows: each found in a secret counts as one pick from
/// this list.
const COMMON_PASSWORDS: &[&str] = &[
    "password",
    "passwd",
    "passw",
    "secret",
    "admin",
    "qwertyuiop",
    "asdfghjkl",
    "zxcvbnm",
    "qwerty",
    "azerty",
    "qwertz",
    "asdf",
    "zxcv",
    "qazwsx",
    "1q2w3e4r",
    "letmein",
    "welcome",
    "monkey",
    "dragon",
    "master",
    "shadow",
    "sunshine",
    "princess",
    "football",
    "baseball",
    "iloveyou",
    "trustno1",
    "superman",
    "batman",
    "login",
    "access",
    "default",
    "example",
    "sample",
    "test",
    "hello",
    "freedom",
    "whatever",
    "root",
    "guest",
    "user",
    "pass",
    "token",
    "private",
    "public",
    "changeme",
    "tidings",
    "leancloud",
    "abc123",
    "hunter",
    "killer",
    "michael",
    "jordan",
    "charlie",
    "starwars",
    "pokemon",
    "computer",
    "internet",
    "server",
];

/// The letter a digit or symbol stands for in `p@ssw0rd`-style spellings.
fn unleet(b: u8) -> u8 {
    match b {
        b'@' | b'4' => b'a',
        b'0' => b'o',
        b'1' | b'!' => b'i',
        b'3' => b'e',
        b'5' | b'$' => b's',
        b'7' => b't',
        x => x.to_ascii_lowercase(),
    }
}

/// An estimate of the bits an attacker who builds guesses from common passwords, repeats and
/// runs has to search for `secret` (the idea of zxcvbn, much reduced). Read from the start, a
/// secret is cut greedily into the longest of: a word of [`COMMON_PASSWORDS`] (costing the bits
/// of picking it from the list, one more for case or letter swaps), a repeat of at least four
/// characters of what came before (where it starts and its length), a run of at least four
/// consecutive characters (its first character, direction and length), or else one character
/// (the bits of one pick from the character classes the secret uses: lower case, upper case,
/// digits, the rest). Only the first 256 bytes are read (the estimate of a prefix is less than
/// the whole's). A random 64-hex-digit secret estimates at about 300 bits, 24 random letters
/// and digits at 130 or more; `passwordpasswordpassword12345678` at about 25.
pub fn pattern_bits(secret: &str) -> f64 {
    const MIN: usize = 4;
    let b = &secret.as_bytes()[..secret.len().min(256)];
    let folded: Vec<u8> = b.iter().map(|x| x.to_ascii_lowercase()).collect();
    let classes = [
        (26.0, b.iter().any(u8::is_ascii_lowercase)),
        (26.0, b.iter().any(u8::is_ascii_uppercase)),
        (10.0, b.iter().any(u8::is_ascii_digit)),
        (33.0, b.iter().any(|x| !x.is_ascii_alphanumeric())),
    ];
    let char_bits = f64::log2(
        classes
            .iter()
            .filter(|c| c.1)
            .map(|c| c.0)
            .sum::<f64>()
            .max(1.0),
    );
    let word_bits = f64::log2(COMMON_PASSWORDS.len() as f64);
    let mut bits = 0.0;
    let mut i = 0;
    while i < b.len() {
        // (length covered, its cost): the longest wins, then the cheapest.
        let mut best = (1, char_bits);
        let mut consider = |len: usize, cost: f64| {
            if len >= MIN && (len > best.0 || (len == best.0 && cost < best.1)) {
                best = (len, cost);
            }
        };
        for w in COMMON_PASSWORDS.iter().map(|w| w.as_bytes()) {
            let Some(part) = b.get(i..i + w.len()) else {
                continue;
            };
            if part.iter().zip(w).all(|(&x, &y)| unleet(x) == y || x == y) {
                let exact = part == w;
                consider(w.len(), word_bits + if exact { 0.0 } else { 1.0 });
            }
        }
        for step in [1i16, -1] {
            let len = 1 + b[i..]
                .windows(2)
                .take_while(|p| i16::from(p[1]) - i16::from(p[0]) == step)
                .count();
            consider(len, char_bits + 1.0 + f64::log2(len as f64));
        }
        for j in 0..i {
            // May run into the part it repeats (`abcabcabc`: `abc`, then a repeat of 6).
            let len = (0..b.len() - i)
                .take_while(|&k| folded[j + k] == folded[i + k])
                .count();
            consider(len, f64::log2(i as f64) + f64::log2(len as f64));
        }
        bits += best.1;
        i += best.0;
    }
    bits
}

/// Server configuration. Field docs name the unit; the default is in `Default`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on (WebSocket at `/` and `/ws`, health at `/healthz`).
    pub listen: String,
    /// Accept queue length asked of the kernel (capped by `net.core.somaxconn`).
    pub listen_backlog: u32,
    /// Browser origins allowed to open a WebSocket besides pages of the server's own host (an
    /// IP literal, `localhost` or `public_url`'s host: see `crate::origin`):
    /// `scheme://host[:port]`, `scheme://*.domain` (any subdomain), `null` or `*` (any).
    /// Connections without an `Origin` header are always allowed. A TOML list, or one string
    /// separated by commas or spaces (environment, `--set`).
    #[serde(deserialize_with = "list_or_string")]
    pub allowed_origins: Vec<String>,
    /// Peers (addresses or CIDR networks) whose word on the client's address is taken: their
    /// `X-Forwarded-For` (rightmost untrusted entry) and, with `proxy_protocol`, their PROXY
    /// header. A TOML list, or one string separated by commas or spaces.
    #[serde(deserialize_with = "list_or_string")]
    pub trusted_proxies: Vec<String>,
    /// Connections from `trusted_proxies` must start with a PROXY protocol header (v1 or v2);
    /// one from any other peer that starts with one is closed.
    pub proxy_protocol: bool,
    /// TLS certificate chain (PEM file, leaf first) for the listener; with `tls_key`. Reloaded
    /// on SIGHUP.
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM file: PKCS#8, PKCS#1 or SEC1) for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// From the TCP accept to the WebSocket upgrade (PROXY header, TLS handshake and HTTP
    /// request headers), and between requests of an HTTP connection, at most this, ms.
    pub handshake_timeout_ms: u64,
    /// Connections accepted whose WebSocket upgrade is not done (health checks included), at
    /// most; more are refused at once.
    pub max_pending_handshakes: usize,
    /// The same, per client address (IPv6: per /64).
    pub max_pending_handshakes_per_ip: usize,
    /// Upgraded connections that have not logged in yet, at most; more upgrades get 503.
    pub max_pending_logins: usize,
    /// The same, per client address (IPv6: per /64).
    pub max_pending_logins_per_ip: usize,
    /// Address of the admin HTTP API (the app backend's door; health and `/metrics` too).
    /// Served only when `admin_api_keys` holds a key. Empty: never served.
    pub admin_listen: String,
    /// API keys a backend presents as `Authorization: Bearer <key>`, each at least
    /// [`MIN_HS256_SECRET_BYTES`] bytes and as hard to guess as a `jwt_hs256_secret`
    /// (`tidings secret` makes one). Several, so one can be rotated. A TOML list, or one string
    /// separated by commas or spaces.
    #[serde(deserialize_with = "list_or_string")]
    pub admin_api_keys: Vec<String>,
    /// Admin connections open at once, at most; more wait in the kernel's accept queue.
    pub admin_max_connections: usize,
    /// Largest admin request body, bytes (larger: 413).
    pub admin_max_body_bytes: usize,
    /// Serve the admin API over TLS with `tls_cert`/`tls_key` (the public listener's
    /// certificate, reloaded with it on SIGHUP). Requires them.
    pub admin_tls: bool,
    /// The user id the app's backend acts as when an admin call names no `as`: the sender of
    /// its system messages and broadcasts, `by` in the events it causes. No client should log
    /// in under it.
    pub system_sender: String,
    /// Open temporary conversations one unfiltered listing (`GET /v1/temporary-conversations`
    /// without `member`) may look at, at most; more: `ERROR_LIMIT_EXCEEDED` (filter by member).
    pub admin_temporary_scan_max: usize,
    /// Bytes of items one admin API page holds, at most (messages and list entries as stored,
    /// dead letters as rendered): a page ends before the item that would pass it (its first
    /// item always goes), and its cursor goes on from there.
    pub admin_page_max_bytes: usize,
    /// Keep every message's earlier versions when it is edited or recalled (the original
    /// text of a recalled message included), readable by the app's backend only
    /// (`GET /v1/conversations/{id}/messages/{message_id}/versions`): for deployments that
    /// must keep what was said for audit. Off: an edit or recall overwrites the message.
    pub keep_message_versions: bool,
    /// Deleting a user's data (`DELETE /v1/users/{user}`) keeps the messages they sent as
    /// they are (true) instead of emptying them as a recall does (false).
    pub user_delete_keep_messages: bool,
    /// Work one call deleting a user's data does, at most: messages looked at plus
    /// conversations left. More: the call answers `done: false` and a cursor to go on from.
    pub user_delete_step_max: usize,
    /// Lines one page of a user's export (`GET /v1/users/{user}/export`) holds, at most.
    pub user_export_page_max: usize,
    /// Bytes of JSON lines after which a page of a user's export ends: the line that reaches
    /// it is the page's last (the first line always goes).
    pub user_export_page_max_bytes: usize,
    /// Messages older than this many days are deleted by a background sweep; 0: kept for ever.
    pub history_retention_days: u64,
    /// Messages the retention sweep, and the purge of a conversation deleted for everyone,
    /// delete in one store commit, at most.
    pub history_retention_batch: usize,
    /// Token ids (`jti`) revoked one by one and not expired yet, at most; more revocations
    /// are refused with `ERROR_LIMIT_EXCEEDED` (revoke all of a user's tokens instead).
    pub max_revoked_tokens: usize,
    /// Users plus conversations one broadcast (`POST /v1/broadcasts`) may name, at most.
    pub broadcast_max_targets: usize,
    /// Messages one import request (`POST /v1/conversations/{id}/messages/import`) may carry.
    pub import_max_messages: usize,
    /// Messages one page of a history export (`GET /v1/conversations/{id}/export`) holds, at
    /// most (a page also ends after about 4 MiB).
    pub export_max_messages: usize,
    /// How long an `Idempotency-Key` of an admin create is remembered, s.
    pub idempotency_ttl_secs: u64,
    /// Directory online backups (`POST /v1/backups`) are written to. Unset: no online
    /// backups.
    pub backup_dir: Option<PathBuf>,
    /// Directory of the embedded store.
    pub data_dir: PathBuf,
    /// Embedded storage engine: `redb` or `sled`.
    pub store_engine: String,
    /// Embedded store cache, bytes.
    pub store_cache_bytes: u64,

    /// HS256 shared secret, at least [`MIN_HS256_SECRET_BYTES`] bytes. One of the auth
    /// settings (or `insecure_dev`) is required.
    pub jwt_hs256_secret: Option<String>,
    /// RS256 public key (PEM file) that verifies tokens.
    pub jwt_rs256_public_key: Option<PathBuf>,
    /// RS256 private key (PEM file) used only by `tidings token` to mint test tokens.
    pub jwt_rs256_private_key: Option<PathBuf>,
    /// Required `iss` claim, when set.
    pub jwt_issuer: Option<String>,
    /// Required `aud` claim, when set.
    pub jwt_audience: Option<String>,
    /// Clock skew allowed on `exp`, `nbf` and `iat` (a token issued further in the future is
    /// refused), seconds.
    pub jwt_leeway_secs: u64,
    /// Development only: accept an unsigned `Login.token` equal to the user id. Logs a warning.
    /// Refused on a non-loopback `listen` address unless `insecure_dev_public`.
    pub insecure_dev: bool,
    /// With `insecure_dev`: allow a `listen` address other machines can reach (anyone who
    /// reaches it can log in as anyone).
    pub insecure_dev_public: bool,
    /// Development only: serve the demo pages at `/demo/` and `/widget/` and mint a login token
    /// for any user name at `POST /demo/token`. Without `jwt_hs256_secret` a random one is made
    /// at start (tokens stop working at restart). Refused on a non-loopback `listen` address
    /// unless `demo_public`. Logs a warning.
    pub demo: bool,
    /// With `demo`: allow a `listen` address other machines can reach (anyone who reaches it
    /// can log in as anyone).
    pub demo_public: bool,

    /// A new connection must log in within this time, ms.
    pub login_timeout_ms: u64,
    /// Server WebSocket ping interval, ms.
    pub ping_interval_ms: u64,
    /// Close a connection that sent nothing (not even a pong) for this long, ms.
    pub idle_timeout_ms: u64,
    /// How long a closing connection may take to write its close frame, ms.
    pub close_timeout_ms: u64,
    /// On shutdown, how long sessions get to finish in-flight requests, ms.
    pub shutdown_grace_ms: u64,
    /// Threads that serve connections (`serve`); 0: one fewer than the CPUs this process may
    /// use, at least one (see [`Config::runtime_workers`]).
    pub worker_threads: usize,
    /// A write to a client (replies, pushes, pings, the close frame) must make progress within
    /// this, or the connection is dropped as a slow consumer, ms.
    pub write_timeout_ms: u64,

    /// Frames queued for one connection before it is closed as a slow consumer.
    pub outbox_frames: usize,
    /// Requests one connection may have in flight before the server stops reading from it.
    pub max_inflight_requests: usize,
    /// Largest WebSocket message/frame a client may send, bytes (larger: close 4009).
    pub max_frame_bytes: usize,
    /// WebSocket read buffer per connection, bytes: also the most one socket read takes. Every
    /// connection keeps it, idle or not, so it is small; a frame larger than it is still read
    /// whole (the buffer grows for it), in reads of this size.
    pub ws_read_buffer_bytes: usize,
    /// WebSocket write buffer per connection (frames coalesce up to this before a write), bytes.
    pub ws_write_buffer_bytes: usize,

    /// Largest message content plus attributes, bytes.
    pub max_message_bytes: usize,
    /// Longest user id (JWT `sub`), bytes; at most 255.
    pub max_user_id_bytes: usize,
    /// Longest client message id, bytes.
    pub max_client_message_id_bytes: usize,
    /// Longest conversation name, bytes.
    pub max_name_bytes: usize,
    /// Largest conversation attributes (keys plus values), bytes.
    pub max_attributes_bytes: usize,
    /// Most members a group may have (creator included).
    pub max_group_members: usize,
    /// Most managers a group may have (the owner not counted).
    pub max_managers: usize,
    /// Longest timed mute (MuteMembers `duration_secs`), seconds; 0 asks for "until lifted".
    pub max_mute_secs: u64,
    /// Most users on one group's blacklist.
    pub max_blacklist: usize,
    /// Most users one user may block.
    pub max_blocked_users: usize,
    /// Longest profile display name, bytes.
    pub max_display_name_bytes: usize,
    /// Longest profile avatar URL, bytes.
    pub max_avatar_url_bytes: usize,
    /// Largest profile custom fields (keys plus values), bytes.
    pub max_profile_fields_bytes: usize,
    /// A profile change is pushed live to the members of at most this many of the user's
    /// conversations (the first in id order); the rest see it when they next read it.
    pub profile_push_max_conversations: usize,
    /// ...and to at most this many users in all.
    pub profile_push_max_recipients: usize,
    /// Most subscribers a system conversation may have.
    pub max_system_subscribers: usize,
    /// A subscriber's message to a system conversation goes to the app's backend as a
    /// `system.message_received` webhook event (when an endpoint names it); false: refused.
    pub system_conversation_messages: bool,
    /// Most members a chat room may have.
    pub max_chat_room_members: usize,
    /// Messages per second one chat room passes on (all senders together; 0: unlimited).
    pub chat_room_messages_per_sec: u32,
    /// A chat room's members are told of joins and leaves while it has at most this many
    /// members (each join is a push per member); 0: never.
    pub chat_room_member_events_max: usize,
    /// Most members a temporary conversation may have (creator included).
    pub max_temporary_members: usize,
    /// Lifetime of a temporary conversation when the request gives none, seconds.
    pub temporary_ttl_default_secs: u32,
    /// Longest lifetime a temporary conversation may ask for, seconds.
    pub temporary_ttl_max_secs: u32,
    /// Logged events kept per user (older ones are deleted as new ones arrive).
    pub event_log_retention: u32,
    /// Events kept in each conversation's own log of what its members heard of one another
    /// (others joining, leaving, being removed; name and attribute changes), for clients that
    /// catch up after being offline; older ones are deleted as new ones arrive. 0: no log.
    pub conversation_event_log_retention: u32,
    /// How far back a conversation's own log is answered, seconds (older entries are left
    /// out, and deleted as newer ones push them out).
    pub conversation_event_log_max_age_secs: u32,
    /// Most users one create/add/remove request may name.
    pub max_members_per_request: usize,
    /// Most mentions one message may carry.
    pub max_mentions: usize,
    /// Default and maximum page size of SyncMessages / FetchHistory.
    pub page_default: u32,
    pub page_max: u32,
    /// Default and maximum page size of ListMembers.
    pub member_page_default: u32,
    pub member_page_max: u32,
    /// Most logged events replayed on login; older pending ones are skipped (LoginOk says so).
    pub max_login_replay_events: u32,
    /// Most entries the unread summary pushed at login holds: the most recently active ones,
    /// as the list's first page orders them; `UnreadSummary.list_cursor` pages on from there.
    pub login_summary_max: usize,

    /// How long a ListConversations cursor keeps its snapshot of the order, seconds. An older
    /// cursor still works but falls back to the current order after its last entry.
    pub list_snapshot_ttl_secs: u64,
    /// Most list snapshots kept per user (the oldest is dropped first).
    pub list_snapshots_per_user: usize,
    /// How long a list tombstone (left, removed, deleted for everyone) is kept, seconds; an
    /// hourly sweep deletes older ones, and an incremental ListConversations from before
    /// now minus this is refused with `ERROR_WINDOW_EXPIRED`.
    pub list_tombstone_retention_secs: u64,
    /// List only entries active within this many seconds (0: no window).
    pub list_max_age_secs: u64,
    /// List at most this many entries, the most recently active (0: no cap).
    pub list_max_entries: usize,
    /// Most pinned entries per user.
    pub max_pinned: usize,
    /// Most conversations one user may be a member of: groups, direct and temporary
    /// conversations and system subscriptions together (chat rooms have their own cap). A
    /// request that would make a user a member of one more (a create, an add, a join, a
    /// subscription, an import) is refused with `ERROR_LIMIT_EXCEEDED`, whoever asks. It
    /// bounds what one user's list, and the users who add them, can grow to: each membership
    /// is a stored list entry, and the list's first page orders all of them. 20,000 keeps four
    /// times the 5,000-entry list the benchmarks measure and far more than any person reads
    /// (Easemob keeps 100 conversations per user); a user in more is a bot, whose memberships
    /// are better raised on purpose.
    pub max_conversations_per_user: usize,
    /// Most chat rooms one user may be in at once (over all their sessions). A room's
    /// membership is kept in memory and keeps the room loaded, so this bounds the rooms one
    /// user can pin in memory, by creating them or by joining.
    pub max_chat_rooms_per_user: usize,
    /// Most conversations kept loaded in memory (members, positions, recent state). Over it,
    /// a background sweep unloads the least recently used ones that no request is using
    /// (down to nine tenths of it); they are read from the store again on their next use,
    /// as after a restart. Conversations in use, chat rooms with members and conversations
    /// with presence subscribers stay, so this is a target, not a hard cap. A loaded
    /// conversation takes about 2 KB plus its name and attributes (12 KB with the largest),
    /// so 50,000 is about 100 MB (600 MB at the largest); one unloaded too early costs a few
    /// store reads when it is used again.
    pub conversation_cells_max: usize,
    /// Member records the loaded conversations may hold in all: over it, the same sweep
    /// unloads the least recently used conversations nobody is using, down to nine tenths of
    /// it, as over `conversation_cells_max` (a target too). A member record takes about 260
    /// bytes loaded (a group of 10,000 members with long ids about 2.6 MB), so 4,000,000 is
    /// about 1 GB, whatever the sizes of the groups loaded.
    pub conversation_members_loaded_max: usize,
    /// A loaded conversation unused for this long is unloaded by the same sweep, however
    /// many are loaded, seconds (0: only over `conversation_cells_max`). A quarter of an hour
    /// keeps a conversation people are talking in loaded between their messages, and gives
    /// the memory of one nobody uses back well before a restart would.
    pub conversation_idle_secs: u64,
    /// Largest private ext of a list entry, bytes.
    pub max_entry_ext_bytes: usize,
    /// Most entries one DeleteListEntries may name.
    pub max_delete_entries: usize,
    /// Most message ids one DeleteMessages may name.
    pub max_delete_message_ids: usize,
    /// How long after sending the sender may recall a message, seconds.
    pub recall_window_secs: u64,
    /// How long after sending the sender may edit a message, seconds.
    pub edit_window_secs: u64,
    /// Most edits of one message.
    pub max_edits: u32,
    /// Receipts may be asked for in conversations of at most this many members.
    pub receipt_max_members: usize,
    /// Most messages one FetchHistory examines (type filters, one-way deletes); a page that
    /// reaches it is returned short with `has_more` and a cursor.
    pub history_scan_max: usize,
    /// Most live sessions one user may have (LeanCloud clients included); a login beyond it
    /// closes that user's oldest session.
    pub max_sessions_per_user: usize,
    /// Most will messages one session may hold at once.
    pub max_wills_per_session: usize,
    /// Most bytes the will messages of one session may hold at once (conversation ids,
    /// content, attributes and mentions).
    pub max_will_bytes_per_session: usize,
    /// Most conversations one session may subscribe to the presence of at once.
    pub max_presence_subscriptions_per_session: usize,

    /// Most writes queued for the store before senders wait.
    pub max_pending_writes: usize,
    /// Most writes committed in one group commit.
    pub max_commit_batch: usize,

    /// Log format: `text` or `json`.
    pub log_format: String,
    /// Longest client-supplied string (token errors, device tags, ids) written into a log
    /// line, characters; the rest is cut and counted.
    pub log_value_max_chars: usize,
    /// Lines of one kind a client can cause (a refused login) written per second; the rest
    /// are counted and reported in one line per second.
    pub log_kind_lines_per_sec: u32,

    /// The pre-send hook: an `http://` or `https://` URL asked before user-authored content
    /// is stored (sends, edits, conversation names and attributes). Unset: no hook.
    pub pre_send_hook_url: Option<String>,
    /// Signing secret of the hook's requests (`whsec_`, as for webhooks); required with the URL.
    pub pre_send_hook_secret: Option<String>,
    /// The hook must answer a call within this once the call is made (the wait for a slot
    /// is not counted), ms.
    pub pre_send_hook_timeout_ms: u64,
    /// When the hook fails (no answer in time, not 2xx, a bad answer): refuse the content
    /// with `ERROR_UNAVAILABLE` (true) or allow it (false).
    pub pre_send_hook_fail_closed: bool,
    /// Hook calls in flight at once, at most, for all users together; more wait for a slot,
    /// in order.
    pub pre_send_hook_max_concurrency: usize,
    /// Hook calls of one user in flight at once, at most; their further ones wait behind
    /// their own, in order.
    pub pre_send_hook_max_per_user: usize,
    /// Longest a send (edit, name) waits for a slot (the user's and the shared one), ms; past
    /// it, it is refused with `ERROR_UNAVAILABLE`, never stored unasked.
    pub pre_send_hook_queue_timeout_ms: u64,
    /// Webhook endpoints (TOML `[[webhooks]]` tables only): where events are POSTed.
    pub webhooks: Vec<WebhookEndpoint>,
    /// Events per webhook POST, at most.
    pub webhook_batch_max: usize,
    /// Bytes of body per webhook POST, at most (an event larger than this goes alone).
    pub webhook_batch_max_bytes: usize,
    /// How long a webhook endpoint waits for more events before POSTing a batch that is not
    /// full, ms.
    pub webhook_batch_wait_ms: u64,
    /// A webhook POST must be answered within this, ms.
    pub webhook_timeout_ms: u64,
    /// First retry delay of a failed webhook POST, ms; doubled per attempt (with jitter).
    pub webhook_retry_base_ms: u64,
    /// Longest delay between webhook attempts, ms.
    pub webhook_retry_max_ms: u64,
    /// Attempts at one batch before its events are dead-lettered and later ones proceed.
    pub webhook_max_attempts: u32,
    /// A batch whose first attempt is older than this is dead-lettered at its next failure, s.
    pub webhook_max_age_secs: u64,
    /// Bytes of webhook events kept undelivered; past it the oldest are dropped (counted in
    /// `tidings_webhook_events_dropped_total` and logged) so a dead endpoint never fills the
    /// disk.
    pub webhook_outbox_max_bytes: u64,
    /// Bytes of dead-lettered events kept per webhook endpoint; past it the oldest go (counted
    /// in `tidings_webhook_events_dropped_total` and logged).
    pub webhook_dead_letters_max_bytes: u64,
    /// `message.offline_recipients` lists the members (with their flags) in conversations of
    /// at most this many members; in larger ones it carries their count only.
    pub webhook_offline_recipients_max: usize,
    /// Bytes of messages (encoded) a `conversation.expired` event carries as the transcript,
    /// oldest first; a longer transcript is cut (`transcript_complete: false`).
    pub webhook_transcript_max_bytes: usize,

    /// LeanCloud dialect: the app id its SDKs send (`appId`). The dialect is off unless set.
    pub leancloud_app_id: Option<String>,
    /// LeanCloud dialect: the key that signs and verifies login and conversation signatures
    /// (HMAC-SHA1, as LeanCloud's master key did) and session tokens. Required with
    /// `leancloud_app_id` unless `insecure_dev`. At least [`MIN_LEANCLOUD_KEY_BYTES`] bytes and
    /// not trivially guessable (see [`weak_key`]).
    pub leancloud_master_key: Option<String>,
    /// LeanCloud dialect: any client may read the metadata (name, attributes, members) of a
    /// group and join it by itself, as LeanCloud allowed. Messages, temporary and direct
    /// conversations stay members-only; the native protocol never exposes anything to
    /// non-members.
    pub leancloud_open_conversations: bool,
    /// LeanCloud dialect: most conversations one `conv/query` looks at (the ids it names, or
    /// the newest conversations of the member it requires, or the newest of those anyone may
    /// find).
    pub leancloud_query_scan_max: usize,
    /// LeanCloud dialect: most work one `conv/query` may do matching and sorting the rows it
    /// looks at, in steps (`leancloud::query::Meter`: about a regex instruction per character
    /// or a value compared); a query that needs more is refused. A million steps are a few
    /// milliseconds of CPU.
    pub leancloud_query_steps_max: u64,
    /// LeanCloud dialect: most unread messages one `session/open` of an `lc.protobuf2.1` client
    /// answers with (over all its conversations); the rest are left to `logs`, and the last
    /// message sent says `hasMore`.
    pub leancloud_offline_messages_max: usize,
    /// LeanCloud dialect: most bytes (encoded commands) of unread messages one `session/open`
    /// of an `lc.protobuf2.1` client answers with; the message that would go past it is not
    /// sent (unless it would be the first), and the last one sent says `hasMore`. Also, apart
    /// from those, most bytes (messages as stored) of the edits and recalls an open with
    /// `lastPatchTime` replays; the next open gets the rest. And most bytes (events as stored)
    /// of one missed notifications answer, cut between two milliseconds (the first always
    /// goes), the rest left for the next ask (`hasMore`).
    pub leancloud_offline_bytes_max: usize,
    /// LeanCloud dialect: most bytes (JSON text of its rows) one `conv/query` answers with;
    /// rows stop before the first that would go past it (the first row always goes).
    pub leancloud_query_bytes_max: usize,
    /// LeanCloud dialect: most clients (`peerId`s) one socket may have open at once.
    pub leancloud_max_clients_per_socket: usize,
    /// LeanCloud dialect: lifetime of a session token (`st`), seconds.
    pub leancloud_session_token_ttl_secs: u64,
    /// Request rate limit of one connection: tokens gained a second (0: no limit); requests
    /// cost by kind (`registry::limits::Work`).
    pub rate_limit_connection_per_sec: u32,
    /// Most tokens one connection's bucket holds (its burst).
    pub rate_limit_connection_burst: u32,
    /// Request rate limit of one user over all their connections: tokens a second (0: none).
    pub rate_limit_user_per_sec: u32,
    /// Most tokens one user's bucket holds.
    pub rate_limit_user_burst: u32,
    /// LeanCloud dialect: how old a signature's timestamp may be, seconds.
    pub leancloud_signature_ttl_secs: u64,
    /// LeanCloud dialect: `conv/start` (not of temporary conversations), `conv/add` and
    /// `conv/remove` must carry a conversation signature (LeanCloud's console option of the
    /// same meaning). Off: they are not checked, and tidings' membership rules alone apply.
    pub leancloud_conversation_signatures: bool,
    /// The WebSocket URL clients reach this server at (`ws://` or `wss://`, e.g.
    /// `wss://chat.example.com`), which the LeanCloud router `/v1/route` hands out; a URL
    /// without a path gets `/`. Unset: `ws://` and the request's `Host` header, which is wrong
    /// behind a TLS proxy, so production should set it.
    pub public_url: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:7400".into(),
            listen_backlog: 4096,
            allowed_origins: Vec::new(),
            trusted_proxies: Vec::new(),
            proxy_protocol: false,
            tls_cert: None,
            tls_key: None,
            handshake_timeout_ms: 5_000,
            max_pending_handshakes: 2048,
            max_pending_handshakes_per_ip: 256,
            max_pending_logins: 4096,
            max_pending_logins_per_ip: 256,
            admin_listen: "127.0.0.1:7401".into(),
            admin_api_keys: Vec::new(),
            admin_max_connections: 64,
            admin_max_body_bytes: 1 << 20,
            admin_tls: false,
            system_sender: "system".into(),
            admin_temporary_scan_max: 100_000,
            admin_page_max_bytes: 4 << 20,
            keep_message_versions: false,
            user_delete_keep_messages: false,
            user_delete_step_max: 10_000,
            user_export_page_max: 1_000,
            user_export_page_max_bytes: 4 << 20,
            history_retention_days: 0,
            history_retention_batch: 1_000,
            max_revoked_tokens: 100_000,
            broadcast_max_targets: 10_000,
            import_max_messages: 1_000,
            export_max_messages: 10_000,
            idempotency_ttl_secs: 86_400,
            backup_dir: None,
            data_dir: PathBuf::from("tidings-data"),
            store_engine: "redb".into(),
            store_cache_bytes: 64 << 20,
            jwt_hs256_secret: None,
            jwt_rs256_public_key: None,
            jwt_rs256_private_key: None,
            jwt_issuer: None,
            jwt_audience: None,
            jwt_leeway_secs: 30,
            insecure_dev: false,
            insecure_dev_public: false,
            demo: false,
            demo_public: false,
            login_timeout_ms: 10_000,
            ping_interval_ms: 25_000,
            idle_timeout_ms: 60_000,
            close_timeout_ms: 5_000,
            shutdown_grace_ms: 10_000,
            worker_threads: 0,
            write_timeout_ms: 10_000,
            outbox_frames: 1024,
            max_inflight_requests: 64,
            max_frame_bytes: 128 << 10,
            ws_read_buffer_bytes: 1 << 10,
            ws_write_buffer_bytes: 16 << 10,
            max_message_bytes: 64 << 10,
            max_user_id_bytes: 128,
            max_client_message_id_bytes: 64,
            max_name_bytes: 256,
            max_attributes_bytes: 8 << 10,
            max_group_members: 10_000,
            max_managers: 20,
            max_mute_secs: 30 * 86_400,
            max_blacklist: 1000,
            max_blocked_users: 1000,
            max_display_name_bytes: 128,
            max_avatar_url_bytes: 1024,
            max_profile_fields_bytes: 1024,
            profile_push_max_conversations: 1000,
            profile_push_max_recipients: 10_000,
            max_system_subscribers: 100_000,
            max_chat_room_members: 10_000,
            chat_room_messages_per_sec: 100,
            chat_room_member_events_max: 1000,
            system_conversation_messages: true,
            max_temporary_members: 10,
            temporary_ttl_default_secs: 86_400,
            temporary_ttl_max_secs: 2_592_000,
            event_log_retention: 1000,
            conversation_event_log_retention: 100,
            conversation_event_log_max_age_secs: 604_800,
            max_members_per_request: 1000,
            max_mentions: 100,
            page_default: 20,
            page_max: 100,
            member_page_default: 100,
            member_page_max: 1000,
            max_login_replay_events: 1000,
            login_summary_max: 100,
            list_snapshot_ttl_secs: 300,
            list_tombstone_retention_secs: 2_592_000,
            list_snapshots_per_user: 4,
            list_max_age_secs: 0,
            list_max_entries: 0,
            max_pinned: 50,
            max_conversations_per_user: 20_000,
            max_chat_rooms_per_user: 100,
            conversation_cells_max: 50_000,
            conversation_members_loaded_max: 4_000_000,
            conversation_idle_secs: 900,
            max_entry_ext_bytes: 1024,
            max_delete_entries: 100,
            max_delete_message_ids: 50,
            recall_window_secs: 120,
            edit_window_secs: 86_400,
            max_edits: 10,
            receipt_max_members: 50,
            history_scan_max: 1_000,
            max_sessions_per_user: 16,
            max_wills_per_session: 16,
            max_will_bytes_per_session: 256 << 10,
            max_presence_subscriptions_per_session: 1000,
            max_pending_writes: 8192,
            max_commit_batch: 1024,
            log_format: "text".into(),
            log_value_max_chars: 128,
            log_kind_lines_per_sec: 10,
            pre_send_hook_url: None,
            pre_send_hook_secret: None,
            pre_send_hook_timeout_ms: 500,
            pre_send_hook_fail_closed: false,
            pre_send_hook_max_concurrency: 256,
            pre_send_hook_max_per_user: 8,
            pre_send_hook_queue_timeout_ms: 5_000,
            webhooks: Vec::new(),
            webhook_batch_max: 1000,
            webhook_batch_max_bytes: 1 << 20,
            webhook_batch_wait_ms: 50,
            webhook_timeout_ms: 5_000,
            webhook_retry_base_ms: 500,
            webhook_retry_max_ms: 300_000,
            webhook_max_attempts: 12,
            webhook_max_age_secs: 86_400,
            webhook_outbox_max_bytes: 256 << 20,
            webhook_dead_letters_max_bytes: 64 << 20,
            webhook_offline_recipients_max: 100,
            webhook_transcript_max_bytes: 256 << 10,
            leancloud_app_id: None,
            leancloud_master_key: None,
            leancloud_open_conversations: true,
            leancloud_query_scan_max: 1000,
            leancloud_query_steps_max: 4_000_000,
            leancloud_offline_messages_max: 1000,
            leancloud_offline_bytes_max: 1 << 20,
            leancloud_query_bytes_max: 1 << 20,
            leancloud_max_clients_per_socket: 16,
            leancloud_session_token_ttl_secs: 172_800,
            leancloud_signature_ttl_secs: 21_600,
            leancloud_conversation_signatures: false,
            rate_limit_connection_per_sec: 100,
            rate_limit_connection_burst: 200,
            rate_limit_user_per_sec: 200,
            rate_limit_user_burst: 400,
            public_url: None,
        }
    }
}

/// A configuration that could not be loaded or does not make sense.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The merged settings do not deserialize (unknown field, wrong type).
    #[error("configuration: {0}")]
    Parse(String),
    /// A `--set` argument is not `field=value`.
    #[error("--set expects field=value, got {0:?}")]
    BadSet(String),
    /// The values are individually fine but do not work together.
    #[error("configuration: {0}")]
    Invalid(String),
}

/// A loaded configuration and the environment variables it ignored.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    /// `TIDINGS_*` variables that name no field (a Kubernetes Service named `tidings`
    /// injects `TIDINGS_PORT`, for one); the caller logs them once logging is set up.
    pub ignored_env: Vec<String>,
}

impl Config {
    /// Loads defaults, then `file`, then `TIDINGS_*` variables from `env`, then `sets`
    /// (`field=value` strings). Unknown fields in the file or in `sets` are errors; unknown
    /// variables are returned in [`Loaded::ignored_env`].
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        sets: &[String],
    ) -> Result<Loaded, ConfigError> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError::Parse(format!("{}: {e}", path.display())))?
            }
            None => toml::Table::new(),
        };
        let fields = Self::fields();
        let mut ignored_env = Vec::new();
        for (key, value) in env {
            let Some(field) = key.strip_prefix("TIDINGS_") else {
                continue;
            };
            let field = field.to_ascii_lowercase();
            if fields.contains(&field) {
                table.insert(field, scalar(&value));
            } else if field != "log" {
                ignored_env.push(key);
            }
        }
        ignored_env.sort();
        for set in sets {
            let (k, v) = set
                .split_once('=')
                .ok_or_else(|| ConfigError::BadSet(set.clone()))?;
            table.insert(k.trim().to_owned(), scalar(v.trim()));
        }
        let config: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse(e.to_string()))?;
        config.validate()?;
        Ok(Loaded {
            config,
            ignored_env,
        })
    }

    /// The field names, as serde sees them.
    fn fields() -> Vec<String> {
        match serde_json::to_value(Config::default()) {
            Ok(serde_json::Value::Object(m)) => m.keys().cloned().collect(),
            _ => unreachable!("Config serializes to an object"),
        }
    }

    /// How many threads serve connections: `worker_threads`, or when it is 0 one fewer than
    /// the CPUs this process may use (at least one). The CPU left over is the writer thread's:
    /// every durable message passes through it, and a worker that competes with it for a CPU
    /// delays every ack (measured in docs/performance.md, 2026-12-01).
    pub fn runtime_workers(&self) -> usize {
        match self.worker_threads {
            0 => std::thread::available_parallelism()
                .map_or(1, |n| n.get().saturating_sub(1))
                .max(1),
            n => n,
        }
    }

    /// Checks the combinations serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        if self.worker_threads > MAX_WORKER_THREADS {
            return Err(ConfigError::Invalid(format!(
                "worker_threads is {}; at most {MAX_WORKER_THREADS}",
                self.worker_threads
            )));
        }
        if let Some(secret) = &self.jwt_hs256_secret
            && secret.len() < MIN_HS256_SECRET_BYTES
        {
            return Err(ConfigError::Invalid(format!(
                "jwt_hs256_secret is {} bytes; at least {MIN_HS256_SECRET_BYTES} are required, \
                 since a short secret can be guessed from any one token and then used to log in \
                 as anyone. Generate one with `tidings secret`",
                secret.len()
            )));
        }
        if let Some(key) = self
            .admin_api_keys
            .iter()
            .find(|k| k.len() < MIN_HS256_SECRET_BYTES)
        {
            return Err(ConfigError::Invalid(format!(
                "an admin_api_keys entry is {} bytes; at least {MIN_HS256_SECRET_BYTES} are \
                 required (a key is all it takes to act as any user). Generate one with \
                 `tidings secret`",
                key.len()
            )));
        }
        let mut names = std::collections::HashSet::new();
        for w in &self.webhooks {
            if w.name.is_empty()
                || w.name.len() > 64
                || !w
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(ConfigError::Invalid(format!(
                    "webhook name {:?}: 1 to 64 letters, digits, - or _",
                    w.name
                )));
            }
            if !names.insert(w.name.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "two webhooks are named {:?}",
                    w.name
                )));
            }
            if !(w.url.starts_with("http://") || w.url.starts_with("https://")) {
                return Err(ConfigError::Invalid(format!(
                    "webhook {:?}: url must be http:// or https://",
                    w.name
                )));
            }
            for s in std::iter::once(&w.secret).chain(&w.previous_secret) {
                if crate::webhooks::secret_bytes(s).is_none() {
                    return Err(ConfigError::Invalid(format!(
                        "webhook {:?}: a secret is `whsec_` then base64 of at least 24 bytes \
                         (generate one with `tidings secret --webhook`)",
                        w.name
                    )));
                }
            }
            if let Some(e) = w
                .events
                .iter()
                .find(|e| !crate::webhooks::is_event_filter(e))
            {
                return Err(ConfigError::Invalid(format!(
                    "webhook {:?}: unknown event {e:?}",
                    w.name
                )));
            }
        }
        if let Some(url) = &self.pre_send_hook_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return bad("pre_send_hook_url must be http:// or https://");
            }
            if self
                .pre_send_hook_secret
                .as_deref()
                .and_then(crate::webhooks::secret_bytes)
                .is_none()
            {
                return bad(
                    "pre_send_hook_url needs pre_send_hook_secret: `whsec_` then base64 of at \
                     least 24 bytes (`tidings secret --webhook`)",
                );
            }
            if self.pre_send_hook_max_concurrency == 0 || self.pre_send_hook_max_per_user == 0 {
                return bad(
                    "pre_send_hook_max_concurrency and pre_send_hook_max_per_user must be at \
                     least 1",
                );
            }
        }
        if self.webhook_batch_max == 0
            || self.webhook_batch_max_bytes == 0
            || self.webhook_max_attempts == 0
        {
            return bad(
                "webhook_batch_max, webhook_batch_max_bytes and webhook_max_attempts must be at \
                 least 1",
            );
        }
        if self.admin_tls && self.tls_cert.is_none() {
            return bad("admin_tls serves the admin API with tls_cert and tls_key: set them too");
        }
        if self.admin_max_connections == 0
            || self.admin_max_body_bytes == 0
            || self.admin_page_max_bytes == 0
        {
            return bad(
                "admin_max_connections, admin_max_body_bytes and admin_page_max_bytes must be \
                 at least 1",
            );
        }
        if self.user_delete_step_max == 0
            || self.user_export_page_max == 0
            || self.user_export_page_max_bytes == 0
            || self.history_retention_batch == 0
        {
            return bad(
                "user_delete_step_max, user_export_page_max, user_export_page_max_bytes and \
                 history_retention_batch must be at least 1",
            );
        }
        if self.list_tombstone_retention_secs == 0
            || self.list_tombstone_retention_secs > 100_000 * 86_400
        {
            return bad("list_tombstone_retention_secs is at least 1 and at most 8640000000");
        }
        if self.history_retention_days > 100_000 {
            return bad("history_retention_days is at most 100000 (0: off)");
        }
        if let Err(e) = crate::auth::check_user_id(&self.system_sender, self.max_user_id_bytes) {
            return Err(ConfigError::Invalid(format!("system_sender: {e}")));
        }
        if let Some(why) = self.jwt_hs256_secret.as_deref().and_then(weak_secret) {
            return Err(ConfigError::Invalid(format!(
                "jwt_hs256_secret is too easy to guess: {why}. Anyone who guesses it can log in \
                 as anyone. Generate one with `tidings secret`"
            )));
        }
        if let Some(why) = self.admin_api_keys.iter().find_map(|k| weak_secret(k)) {
            return Err(ConfigError::Invalid(format!(
                "an admin_api_keys entry is too easy to guess: {why}. A key is all it takes to \
                 act as any user. Generate one with `tidings secret`"
            )));
        }
        if let Some(key) = &self.leancloud_master_key {
            let why = if key.len() < MIN_LEANCLOUD_KEY_BYTES {
                Some(format!(
                    "it is {} bytes; at least {MIN_LEANCLOUD_KEY_BYTES} are required",
                    key.len()
                ))
            } else {
                weak_key(key, MIN_LEANCLOUD_KEY_BITS)
            };
            if let Some(why) = why {
                return Err(ConfigError::Invalid(format!(
                    "leancloud_master_key is too easy to guess: {why}. It signs every login and \
                     session token, and anyone holding one signature can try keys offline until \
                     one matches, then log in as anyone. Keep a LeanCloud app's own master key \
                     (24 random letters and digits), or generate one with `tidings secret`"
                )));
            }
        }
        if self.max_user_id_bytes == 0 || self.max_user_id_bytes > 255 {
            return bad("max_user_id_bytes must be 1..=255");
        }
        if self.outbox_frames == 0 || self.max_inflight_requests == 0 {
            return bad("outbox_frames and max_inflight_requests must be at least 1");
        }
        if self.page_default == 0 || self.page_default > self.page_max {
            return bad("page_default must be 1..=page_max");
        }
        if self.member_page_default == 0 || self.member_page_default > self.member_page_max {
            return bad("member_page_default must be 1..=member_page_max");
        }
        if self.login_summary_max == 0 {
            return bad("login_summary_max must be at least 1");
        }
        if self.leancloud_offline_messages_max == 0 {
            return bad("leancloud_offline_messages_max must be at least 1");
        }
        if self.list_snapshots_per_user == 0 || self.history_scan_max == 0 {
            return bad("list_snapshots_per_user and history_scan_max must be at least 1");
        }
        if self.max_conversations_per_user == 0
            || self.max_chat_rooms_per_user == 0
            || self.conversation_cells_max == 0
            || self.conversation_members_loaded_max == 0
        {
            return bad("max_conversations_per_user, max_chat_rooms_per_user, \
                 conversation_cells_max and conversation_members_loaded_max must be at least 1");
        }
        if self.max_group_members < 2 {
            return bad("max_group_members must be at least 2");
        }
        if self.max_pending_writes == 0 || self.max_commit_batch == 0 {
            return bad("max_pending_writes and max_commit_batch must be at least 1");
        }
        if self.max_temporary_members < 2 {
            return bad("max_temporary_members must be at least 2");
        }
        if self.temporary_ttl_default_secs == 0
            || self.temporary_ttl_default_secs > self.temporary_ttl_max_secs
        {
            return bad("temporary_ttl_default_secs must be 1..=temporary_ttl_max_secs");
        }
        if self.event_log_retention < self.max_login_replay_events {
            return bad("event_log_retention must be at least max_login_replay_events");
        }
        if self.max_frame_bytes < 1024 {
            return bad("max_frame_bytes must be at least 1024");
        }
        if self.ping_interval_ms == 0 || self.idle_timeout_ms <= self.ping_interval_ms {
            return bad("idle_timeout_ms must be greater than ping_interval_ms (> 0)");
        }
        if !crate::store::ENGINES.contains(&self.store_engine.as_str()) {
            return bad("store_engine must be redb or sled");
        }
        if self.leancloud_app_id.is_some()
            && self.leancloud_master_key.is_none()
            && !self.insecure_dev
        {
            return bad(
                "leancloud_app_id needs leancloud_master_key (signatures are how LeanCloud apps \
                 prove who logs in; the app key ships inside every app and proves nothing), or \
                 insecure_dev for development",
            );
        }
        if let Some(url) = &self.public_url {
            let host = url
                .strip_prefix("wss://")
                .or_else(|| url.strip_prefix("ws://"))
                .map(|rest| rest.split(['/', '?', '#']).next().unwrap_or(""));
            if host.is_none_or(str::is_empty)
                || url.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(ConfigError::Invalid(format!(
                    "public_url must be a WebSocket URL, ws://host[:port][/path] or \
                     wss://host[:port][/path] (the address clients connect to), got {url:?}"
                )));
            }
        }
        if self.write_timeout_ms == 0 {
            return bad("write_timeout_ms must be at least 1");
        }
        for entry in &self.allowed_origins {
            crate::origin::Pattern::parse(entry).map_err(|e| {
                ConfigError::Invalid(format!("allowed_origins entry {entry:?}: {e}"))
            })?;
        }
        if self.handshake_timeout_ms == 0 {
            return bad("handshake_timeout_ms must be at least 1");
        }
        if self.max_pending_handshakes == 0
            || self.max_pending_handshakes_per_ip == 0
            || self.max_pending_logins == 0
            || self.max_pending_logins_per_ip == 0
        {
            return bad(
                "max_pending_handshakes, max_pending_handshakes_per_ip, max_pending_logins and \
                 max_pending_logins_per_ip must be at least 1",
            );
        }
        crate::listener::proxy::Trusted::parse(&self.trusted_proxies)
            .map_err(ConfigError::Invalid)?;
        if self.proxy_protocol && self.trusted_proxies.is_empty() {
            return bad(
                "proxy_protocol needs trusted_proxies: the PROXY header is taken only from them",
            );
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return bad("tls_cert and tls_key go together: set both or neither");
        }
        if self.max_sessions_per_user == 0 || self.log_kind_lines_per_sec == 0 {
            return bad("max_sessions_per_user and log_kind_lines_per_sec must be at least 1");
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return bad("log_format must be text or json");
        }
        Ok(())
    }
}

/// A list setting given either as a list (TOML; in an environment variable or `--set` too) or
/// as one string of items separated by commas or white space (environment variables, `--set`).
/// A string that starts with `[` but is no TOML list is refused rather than taken as an item.
fn list_or_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrString {
        List(Vec<String>),
        String(String),
    }
    Ok(match ListOrString::deserialize(d)? {
        ListOrString::List(l) => l,
        ListOrString::String(s) if s.trim_start().starts_with('[') => {
            // The value is not repeated: it may be a secret (`admin_api_keys`).
            return Err(serde::de::Error::custom(
                "the value looks like a list but is not a TOML one: write the items separated \
                 by commas (a, b), or as a TOML list with quoted strings ([\"a\", \"b\"])",
            ));
        }
        ListOrString::String(s) => s
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

/// Reads an environment or `--set` value as the TOML value it looks like: a TOML list
/// (`["a", "b"]`), an integer, a boolean, else a string.
fn scalar(v: &str) -> toml::Value {
    if v.starts_with('[')
        && let Ok(mut t) = format!("value = {v}").parse::<toml::Table>()
        && t.len() == 1
        && let Some(list @ toml::Value::Array(_)) = t.remove("value")
    {
        return list;
    }
    if let Ok(i) = v.parse::<i64>() {
        toml::Value::Integer(i)
    } else if let Ok(b) = v.parse::<bool>() {
        toml::Value::Boolean(b)
    } else {
        toml::Value::String(v.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_threads_default_to_one_fewer_than_the_cpus_and_are_bounded() {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let c = Config::default();
        assert_eq!(c.worker_threads, 0);
        assert_eq!(c.runtime_workers(), cpus.saturating_sub(1).max(1));
        let c = Config {
            worker_threads: 3,
            ..Config::default()
        };
        assert_eq!(c.runtime_workers(), 3);
        let e = Config {
            worker_threads: MAX_WORKER_THREADS + 1,
            ..Config::default()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("worker_threads"), "{e}");
    }

    #[test]
    fn set_values_that_are_toml_lists_are_lists_and_bracketed_addresses_stay_strings() {
        assert_eq!(
            scalar(r#"["a", "b"]"#),
            toml::Value::Array(vec!["a".into(), "b".into()])
        );
        assert_eq!(
            scalar("[::1]:7400"),
            toml::Value::String("[::1]:7400".into())
        );
        let loaded = Config::load(None, Vec::new(), &["listen=[::1]:7400".into()]).unwrap();
        assert_eq!(loaded.config.listen, "[::1]:7400");
        let Err(e) = Config::load(None, Vec::new(), &["trusted_proxies=[10.0.0.1]".into()]) else {
            panic!("[10.0.0.1] taken as a list item");
        };
        let e = e.to_string();
        assert!(e.contains("not a TOML one"), "{e}");
    }

    #[test]
    fn guessable_hs256_secrets_are_named_and_random_ones_pass() {
        for weak in [
            "a".repeat(32),
            "change-me".repeat(4),
            "CHANGE_ME and some more text to be long".into(),
            "abababababababababababababababab".into(),
            "0123456789abcdef0123456789abcdef".into(),
            "abcdefghijklmnopqrstuvwxyzABCDEF".into(),
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaabcdef".into(),
            "a-string-secret-at-least-256-bits-long".into(),
        ] {
            assert!(weak_secret(&weak).is_some(), "{weak:?} passed");
        }
        // Common passwords, repeated, with a run: the histogram of their bytes looks random
        // enough, the pattern estimate does not.
        for weak in [
            "passwordpasswordpassword12345678",
            "P@ssw0rdP@ssw0rdP@ssw0rd12345678",
            "secretsecretsecretsecretsecret12",
            "iloveyouiloveyou1234567812345678",
            "qwertyuiopasdfghjklzxcvbnm123456",
            "Dragon2024Dragon2024Dragon2024!!",
        ] {
            let why = weak_secret(weak).unwrap_or_else(|| panic!("{weak:?} passed"));
            assert!(why.contains("common passwords"), "{weak:?}: {why}");
        }
        // Random secrets of every usual shape (tidings secret: 64 hex digits; base64 of 32
        // bytes; 32 hex digits; 32 decimal digits), and the shapes used in tests and examples.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |k: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % k
        };
        const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        for _ in 0..2000 {
            let hex: String = (0..64)
                .map(|_| char::from_digit(next(16) as u32, 16).unwrap())
                .collect();
            let hex32 = hex[..32].to_owned();
            let b64: String = (0..43)
                .map(|_| B64[next(64) as usize] as char)
                .collect::<String>()
                + "=";
            let dec: String = (0..32)
                .map(|_| char::from_digit(next(10) as u32, 10).unwrap())
                .collect();
            for s in [hex, hex32, b64, dec] {
                assert_eq!(weak_secret(&s), None, "{s:?}");
            }
        }
        for ok in [
            "integration-test-secret-of-at-least-32-bytes",
            "some other secret of at least 32 bytes",
            "another-secret-that-is-32-bytes-long!!",
            "load-smoke-secret-of-at-least-32-bytes",
        ] {
            assert_eq!(weak_secret(ok), None, "{ok:?}");
        }
        let err = Config {
            jwt_hs256_secret: Some("change-me".repeat(4)),
            ..Config::default()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(err.contains("tidings secret"), "{err}");
    }

    #[test]
    fn layers_override_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t.toml");
        std::fs::write(
            &file,
            "listen = \"0.0.0.0:1\"\noutbox_frames = 7\npage_max = 50\n",
        )
        .unwrap();
        let env = vec![
            ("TIDINGS_OUTBOX_FRAMES".to_owned(), "9".to_owned()),
            ("TIDINGS_LOG".to_owned(), "debug".to_owned()),
            ("PATH".to_owned(), "/bin".to_owned()),
        ];
        let loaded = Config::load(Some(&file), env, &["page_max=60".into()]).unwrap();
        assert!(loaded.ignored_env.is_empty(), "{:?}", loaded.ignored_env);
        let c = loaded.config;
        assert_eq!(c.listen, "0.0.0.0:1");
        assert_eq!(c.outbox_frames, 9);
        assert_eq!(c.page_max, 60);
        assert_eq!(c.page_default, 20);
    }

    #[test]
    fn list_tombstones_are_kept_thirty_days_and_not_none() {
        let c = Config::load(None, vec![], &[]).unwrap().config;
        assert_eq!(c.list_tombstone_retention_secs, 2_592_000);
        for bad in ["0", "8640000001"] {
            let set = format!("list_tombstone_retention_secs={bad}");
            let err = Config::load(None, vec![], &[set]).unwrap_err().to_string();
            assert!(
                err.contains("list_tombstone_retention_secs"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn short_hs256_secrets_are_refused() {
        let env = |v: &str| vec![("TIDINGS_JWT_HS256_SECRET".to_owned(), v.to_owned())];
        for short in [
            "",
            "x",
            "change-me",
            &"s".repeat(MIN_HS256_SECRET_BYTES - 1),
        ] {
            let err = Config::load(None, env(short), &[]).unwrap_err().to_string();
            assert!(err.contains("tidings secret"), "{short:?}: {err}");
        }
        let long = "integration-test-secret-of-32-by";
        assert_eq!(long.len(), MIN_HS256_SECRET_BYTES);
        let c = Config::load(None, env(long), &[]).unwrap().config;
        assert_eq!(c.jwt_hs256_secret.as_deref(), Some(long));
        // A file or --set cannot slip one in either.
        assert!(Config::load(None, vec![], &["jwt_hs256_secret=short".into()]).is_err());
    }

    #[test]
    fn unknown_environment_variables_are_returned_not_errors() {
        let env = vec![
            ("TIDINGS_PORT".to_owned(), "tcp://10.0.0.1:7400".to_owned()),
            ("TIDINGS_BIN".to_owned(), "/usr/bin/tidings".to_owned()),
            ("TIDINGS_SERVICE_HOST".to_owned(), "10.0.0.1".to_owned()),
            ("TIDINGS_LOG".to_owned(), "debug".to_owned()),
            ("TIDINGS_PAGE_MAX".to_owned(), "60".to_owned()),
        ];
        let loaded = Config::load(None, env, &[]).unwrap();
        assert_eq!(
            loaded.ignored_env,
            ["TIDINGS_BIN", "TIDINGS_PORT", "TIDINGS_SERVICE_HOST"]
        );
        assert_eq!(loaded.config.page_max, 60);
        assert_eq!(loaded.config.listen, Config::default().listen);
        // Every field, optional ones included, is known.
        for field in ["listen", "jwt_hs256_secret", "jwt_audience", "log_format"] {
            assert!(Config::fields().iter().any(|f| f == field), "{field}");
        }
    }

    #[test]
    fn listener_settings_are_checked() {
        let set = |sets: &[&str]| {
            let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
            Config::load(None, vec![], &sets)
        };
        let c = set(&[
            "trusted_proxies=10.0.0.0/8, 192.0.2.1",
            "proxy_protocol=true",
        ])
        .unwrap()
        .config;
        assert_eq!(c.trusted_proxies, ["10.0.0.0/8", "192.0.2.1"]);
        for bad in [
            &["trusted_proxies=10.0.0.0/40"][..],
            &["trusted_proxies=proxy.local"],
            &["proxy_protocol=true"],
            &["tls_cert=/x.pem"],
            &["tls_key=/x.pem"],
            &["handshake_timeout_ms=0"],
            &["max_pending_handshakes=0"],
            &["max_pending_logins_per_ip=0"],
        ] {
            assert!(
                matches!(set(bad), Err(ConfigError::Invalid(_))),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn public_url_must_be_a_websocket_url() {
        let set = |v: &str| Config::load(None, vec![], &[format!("public_url={v}")]);
        for good in [
            "wss://chat.example.com",
            "ws://127.0.0.1:7400/ws",
            "wss://[::1]:443/",
        ] {
            let c = set(good).unwrap().config;
            assert_eq!(c.public_url.as_deref(), Some(good));
        }
        for bad in [
            "",
            "chat.example.com",
            "https://chat.example.com",
            "wss://",
            "wss:///ws",
            "wss://chat example.com",
        ] {
            assert!(
                matches!(set(bad), Err(ConfigError::Invalid(_))),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn unknown_fields_and_bad_values_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t.toml");
        std::fs::write(&file, "no_such = 1\n").unwrap();
        assert!(matches!(
            Config::load(Some(&file), vec![], &[]),
            Err(ConfigError::Parse(_))
        ));
        assert!(matches!(
            Config::load(None, vec![], &["no_such=1".into()]),
            Err(ConfigError::Parse(_))
        ));
        // A known field from the environment with a bad value is still an error.
        for (key, value) in [("TIDINGS_PAGE_MAX", "many"), ("TIDINGS_PAGE_DEFAULT", "0")] {
            assert!(
                Config::load(None, vec![(key.into(), value.into())], &[]).is_err(),
                "{key}={value}"
            );
        }
        assert!(matches!(
            Config::load(None, vec![], &["page_default=0".into()]),
            Err(ConfigError::Invalid(_))
        ));
        assert!(matches!(
            Config::load(None, vec![], &["nonsense".into()]),
            Err(ConfigError::BadSet(_))
        ));
    }

    #[test]
    fn webhook_endpoints_are_checked() {
        let file = |body: &str| {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("t.toml");
            std::fs::write(&path, format!("insecure_dev = true\n{body}")).unwrap();
            Config::load(Some(&path), vec![], &[])
                .and_then(|l| l.config.validate().map(|()| l.config))
        };
        let good = "[[webhooks]]\nname = \"crm\"\nurl = \"https://example.com/hook\"\n\
                    secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n\
                    events = [\"message.*\", \"conversation.created\"]\n";
        let c = file(good).unwrap();
        assert_eq!(c.webhooks[0].events.len(), 2);
        for (from, to) in [
            (
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            ),
            ("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_c2hvcnQ="),
            ("https://example.com/hook", "ftp://example.com"),
            ("message.*", "message.sent"),
            ("name = \"crm\"", "name = \"c r m\""),
        ] {
            let e = file(&good.replace(from, to)).unwrap_err().to_string();
            assert!(e.contains("webhook"), "{to}: {e}");
        }
        let twice = format!("{good}{}", good);
        assert!(
            file(&twice)
                .unwrap_err()
                .to_string()
                .contains("two webhooks")
        );
    }
}
