//! Entry points for the fuzz targets in `fuzz/` and for the test that replays their corpus
//! (`tests/fuzz_corpus.rs`). Each takes arbitrary bytes, runs them through the code that reads
//! client input or stored bytes, and must not panic whatever they are. Not part of the server's
//! API.

use crate::app::App;
use crate::auth::Authenticator;
use crate::clock::{ManualClock, SharedClock};
use crate::config::Config;
use crate::leancloud::codec::{self, FrameRef, LcProtocol};
use crate::leancloud::query::Query;
use crate::protocol;
use crate::registry::Caller;
use crate::store::keys::{be_u64, user_at};
use crate::store::kv::{KvStore, OrderedKv, Rows, Write};
use crate::store::{Counter, Direction, Store, StoreError, UserId};
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex, OnceLock, RwLock};

/// The time every target runs at (2023-11-14), on a clock that never moves by itself.
pub const NOW_MS: i64 = 1_700_000_000_000;

/// The HS256 secret of the token target; seeds are signed with it.
pub const SECRET: &str = "fuzzing-secret-of-at-least-32-bytes-long";

/// The user the native target's requests come from, and the members of its conversations.
pub const USER: &str = "alice";

fn cut(data: &[u8], at: usize) -> (&[u8], &[u8]) {
    data.split_at(at.min(data.len()))
}

/// Splits at the first NUL byte (the rest is empty when there is none).
fn field(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

// ---- (a) native frames: decode, then dispatch against a server in memory ----

/// A server without sockets: the application on a redb store whose file is already unlinked
/// (on tmpfs when there is one, so commits cost no disk), and a runtime to run requests on.
struct Native {
    rt: tokio::runtime::Runtime,
    app: Arc<App>,
    caller: Caller,
}

/// A new directory for a store, on tmpfs when there is one.
fn scratch_dir() -> std::path::PathBuf {
    let shm = std::path::Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    base.join(format!("tidings-fuzz-{}-{n}", std::process::id()))
}

fn native() -> &'static Mutex<Native> {
    static NATIVE: OnceLock<Mutex<Native>> = OnceLock::new();
    NATIVE.get_or_init(|| {
        let dir = scratch_dir();
        let config = Config {
            data_dir: dir.clone(),
            jwt_hs256_secret: Some(SECRET.into()),
            store_cache_bytes: 4 << 20,
            // Small limits keep the store small over millions of runs.
            max_message_bytes: 2048,
            ..Config::default()
        };
        let clock: SharedClock = Arc::new(ManualClock::new(NOW_MS));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let (app, writer) = rt.block_on(async {
            App::open(config, clock, Default::default()).expect("application opens")
        });
        // The store keeps its open file; nothing is left behind when the process ends. The
        // writer stops with the process.
        let _ = std::fs::remove_dir_all(&dir);
        std::mem::forget(writer);
        let caller = Caller::user(UserId::from(USER), app.next_session_id());
        // Something to find: a group, a direct conversation and a temporary one with
        // messages (their ids are the first the server issues: 0000000000000001, ...).
        rt.block_on(async {
            use crate::protocol::pb::{self, client_frame::Body as Req};
            let requests = [
                Req::CreateConversation(pb::CreateConversation {
                    kind: pb::ConversationKind::Group as i32,
                    members: vec!["bob".into(), "carol".into()],
                    name: "g".into(),
                    ..Default::default()
                }),
                Req::CreateConversation(pb::CreateConversation {
                    kind: pb::ConversationKind::Direct as i32,
                    members: vec!["bob".into()],
                    ..Default::default()
                }),
                Req::CreateConversation(pb::CreateConversation {
                    kind: pb::ConversationKind::Temporary as i32,
                    members: vec!["bob".into()],
                    ttl_secs: 3600,
                    ..Default::default()
                }),
            ];
            for (i, r) in requests.into_iter().enumerate() {
                crate::session::dispatch::handle(app.clone(), caller.clone(), i as u64 + 1, r)
                    .await;
            }
            for conv in ["0000000000000001", "0000000000000002"] {
                for text in ["one", "two", "three"] {
                    let send = Req::SendMessage(pb::SendMessage {
                        conversation_id: conv.into(),
                        r#type: 1,
                        content: text.as_bytes().to_vec().into(),
                        ..Default::default()
                    });
                    crate::session::dispatch::handle(app.clone(), caller.clone(), 9, send).await;
                }
            }
        });
        let group = app.registry.get(&caller, "0000000000000001");
        assert!(
            group.is_ok(),
            "the fuzzing server's group exists: {group:?}"
        );
        Mutex::new(Native { rt, app, caller })
    })
}

/// A native frame as a logged-in session receives it: decoded, then (if it is a request)
/// handled as the session would, against the in-memory server, and the reply encoded.
pub fn native_frame(data: &[u8]) {
    let Ok(frame) = protocol::decode_client(data) else {
        return;
    };
    let Some(body) = frame.body else {
        return;
    };
    let native = native().lock().unwrap_or_else(|e| e.into_inner());
    let work =
        crate::session::dispatch::handle(native.app.clone(), native.caller.clone(), frame.id, body);
    let reply = native.rt.block_on(work);
    let _ = protocol::encode(&reply);
}

// ---- (b) LeanCloud: the command codec and the conv/query evaluator ----

/// The first byte picks the subprotocol; the rest is decoded both as a binary frame and as a
/// text frame (valid UTF-8 only, as WebSocket text is), and what decodes is encoded again.
pub fn leancloud_frame(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let protocol = LcProtocol::ALL[pick as usize % LcProtocol::ALL.len()];
    let mut frames = vec![FrameRef::Binary(rest)];
    if let Ok(text) = std::str::from_utf8(rest) {
        frames.push(FrameRef::Text(text));
    }
    for frame in frames {
        if let Ok(command) = codec::decode(protocol, frame) {
            let _ = codec::encode(protocol, &command);
        }
    }
}

/// `where` JSON, a NUL, a row (a JSON object, or rows in an array), a NUL, `sort`, and then
/// skip and limit as two bytes each: parsed, then evaluated on the rows.
pub fn leancloud_query(data: &[u8]) {
    let (where_json, rest) = field(data);
    let (rows, rest) = field(rest);
    let (sort, rest) = field(rest);
    let (numbers, _) = cut(rest, 4);
    let num = |i: usize| {
        numbers
            .get(i..i + 2)
            .map(|b| i32::from(i16::from_le_bytes([b[0], b[1]])))
    };
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let where_json = text(where_json);
    let sort = text(sort);
    let Ok(query) = Query::parse(
        Some(&where_json)
            .filter(|w| !w.is_empty())
            .map(|w| w.as_str()),
        Some(&sort).filter(|s| !s.is_empty()).map(|s| s.as_str()),
        num(0),
        num(2),
    ) else {
        return;
    };
    let rows: Vec<serde_json::Map<String, serde_json::Value>> =
        match serde_json::from_slice::<serde_json::Value>(rows) {
            Ok(serde_json::Value::Object(o)) => vec![o],
            Ok(serde_json::Value::Array(a)) => a
                .into_iter()
                .filter_map(|v| match v {
                    serde_json::Value::Object(o) => Some(o),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
    for row in &rows {
        let _ = query.matches(row);
    }
    let _ = query.object_ids();
    let _ = query.required_members();
    let _ = query.apply(rows);
}

// ---- (c) tokens ----

fn authenticators() -> &'static (Authenticator, Authenticator) {
    static AUTH: OnceLock<(Authenticator, Authenticator)> = OnceLock::new();
    AUTH.get_or_init(|| {
        let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let clock: SharedClock = Arc::new(ManualClock::new(NOW_MS));
        let strict = Config {
            jwt_hs256_secret: Some(SECRET.into()),
            jwt_rs256_public_key: Some(fixtures.join("rs256-test-public.pem")),
            jwt_issuer: Some("issuer".into()),
            jwt_audience: Some("audience".into()),
            ..Config::default()
        };
        let dev = Config {
            jwt_hs256_secret: Some(SECRET.into()),
            insecure_dev: true,
            ..Config::default()
        };
        (
            Authenticator::new(&strict, clock.clone()).expect("strict verifier"),
            Authenticator::new(&dev, clock).expect("dev verifier"),
        )
    })
}

/// A token (as text, lossily), verified as a login or a refresh would, with issuer and audience
/// required and without; then the user id rule on the same text.
pub fn token(data: &[u8]) {
    let token = String::from_utf8_lossy(data);
    let (strict, dev) = authenticators();
    for auth in [strict, dev] {
        if let Ok(identity) = auth.identify(&token) {
            assert!(!identity.user.is_empty(), "a verified token names a user");
        }
    }
    let _ = crate::auth::check_user_id(&token, 128);
}

// ---- (d) cursors and ids ----

/// Every cursor a client hands back (history, conversation list, member list) and the ids
/// requests name, parsed as the server parses them.
pub fn cursors(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for back in [false, true] {
        let _ = crate::registry::history::parse_cursor(&text, back);
    }
    let _ = crate::registry::inbox::parse_cursor(&text);
    let _ = protocol::parse_conversation_id(&text);
    let _ = protocol::parse_message_id(&text);
}

// ---- (e) stored records and keys ----

/// An ordered map in memory, as an engine.
#[derive(Default)]
pub struct MemKv(RwLock<BTreeMap<Vec<u8>, Vec<u8>>>);

impl OrderedKv for MemKv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.0.read().expect("lock").get(key).cloned())
    }
    fn range(
        &self,
        lo: &[u8],
        hi: Option<&[u8]>,
        descending: bool,
        limit: usize,
    ) -> Result<Rows, StoreError> {
        let map = self.0.read().expect("lock");
        if hi.is_some_and(|hi| hi < lo) {
            return Ok(Vec::new());
        }
        let upper = hi.map_or(Bound::Unbounded, Bound::Excluded);
        let range = map.range::<[u8], _>((Bound::Included(lo), upper));
        let pair = |(k, v): (&Vec<u8>, &Vec<u8>)| (k.clone(), v.clone());
        Ok(if descending {
            range.rev().take(limit).map(pair).collect()
        } else {
            range.take(limit).map(pair).collect()
        })
    }
    fn for_each(&self, f: &mut crate::store::EntrySink<'_>) -> Result<(), StoreError> {
        for (k, v) in self.0.read().expect("lock").iter() {
            f(k, v)?;
        }
        Ok(())
    }
    fn apply(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        let mut map = self.0.write().expect("lock");
        for w in writes {
            match w {
                Write::Put(k, v) => {
                    map.insert(k, v);
                }
                Write::Delete(k) => {
                    map.remove(&k);
                }
            }
        }
        Ok(())
    }
    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
    fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(0)
    }
}

/// Entries (a key length byte, the key, a value length as two bytes, the value; repeated)
/// written as raw bytes into a store, which is then read through every read of the store's
/// interface, for the conversations and users the keys name.
pub fn store_records(data: &[u8]) {
    let mut rows = Vec::new();
    let mut rest = data;
    while let Some((&klen, r)) = rest.split_first() {
        let (key, r) = cut(r, klen as usize);
        let (vlen, r) = cut(r, 2);
        let vlen = match vlen {
            [a, b] => u16::from_le_bytes([*a, *b]) as usize,
            _ => 0,
        };
        let (value, r) = cut(r, vlen);
        rows.push((key.to_vec(), value.to_vec()));
        rest = r;
    }
    let store = KvStore::new(MemKv::default());
    if store.load(rows.clone()).is_err() {
        return;
    }
    let mut convs = vec![0, 1, u64::MAX];
    let mut users: Vec<String> = vec![USER.into(), String::new()];
    for (k, _) in &rows {
        for at in [1, 9] {
            if let Some(c) = be_u64(k, at) {
                convs.push(c);
            }
        }
        if let Some((u, _)) = user_at(k, 1) {
            users.push(u.to_owned());
        }
    }
    convs.truncate(16);
    users.truncate(8);
    for &conv in &convs {
        let _ = store.conversation(conv);
        let _ = store.members(conv);
        let _ = store.message(conv, 1);
        let _ = store.last_message(conv);
        let _ = store.messages(conv, 0, u64::MAX, Direction::Ascending, 50);
        let _ = store.messages(conv, 0, u64::MAX, Direction::Descending, 50);
        let _ = store.receipts_wanted(conv, 0, u64::MAX);
        let _ = store.last_receipt_wanted(conv);
        for user in &users {
            let _ = store.user_conversation(user, conv);
            let _ = store.read_seq(user, conv);
            let _ = store.dedup(conv, user, "c");
            let _ = store.hidden_seqs(user, conv, 0, u64::MAX);
        }
    }
    for user in &users {
        let _ = store.user_conversations(user);
        let _ = store.user_events_after(user, 0, 100);
        let _ = store.last_user_event_seq(user);
        let _ = store.tombstones(user);
        let _ = store.direct(user, USER);
    }
    let ids: Vec<UserId> = users.iter().map(|u| UserId::from(u.as_str())).collect();
    let _ = store.unique_temporary(&ids);
    let _ = store.next_expiries(100);
    for counter in [Counter::Conversation, Counter::Temporary] {
        let _ = store.counter(counter);
    }
    let _ = store.dump(&mut |_, _| Ok(()));
    // The same bytes as an export file.
    let _ = crate::store::dump::import(&KvStore::new(MemKv::default()), &mut &data[..]);
}
