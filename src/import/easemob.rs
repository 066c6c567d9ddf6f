//! `tidings import easemob`: Easemob's chat-history files (the hourly files its REST API
//! `GET /{org}/{app}/chatmessages/{yyyyMMddHH}` hands out for download) into a running server,
//! through its admin API: the same registry import entry points as every other import.
//!
//! Each record is one message: `msg_id`, `timestamp` (ms), `chat_type` (`chat`, `groupchat`,
//! `chatroom`) and `payload` (`from`, `to`, `bodies`, `ext`). A direct chat (`chat`) goes into
//! the direct conversation of its two users, a group chat into a group imported under the
//! Easemob group id; chat rooms keep no history in tidings and are listed as not imported.
//! Messages keep their `msg_id` as their id. Running it again imports only what is new (by
//! `msg_id`). See docs/admin.md, Importing and exporting history.

use crate::http_client::{self as http, Base};
use anyhow::{Context, bail};
use hyper::{Method, StatusCode};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Where to import to: a running server's admin API.
#[derive(Debug, Clone)]
pub struct Target {
    /// `http[s]://host:port` of the admin listener.
    pub url: String,
    pub key: String,
    /// CA certificates (PEM) to trust for an `https://` URL besides Mozilla's roots.
    pub ca_cert: Option<PathBuf>,
    /// Messages per import request (at most the server's `import_max_messages`).
    pub batch: usize,
}

/// What an import did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Records read from the files.
    pub records: usize,
    /// Conversations new to this run: groups imported now, direct conversations without
    /// messages before it.
    pub conversations: usize,
    /// Conversations that were there already (with messages).
    pub existing: usize,
    pub messages: usize,
    /// Messages imported before (by `msg_id`).
    pub skipped_messages: usize,
    /// What was not imported, and why: (message or conversation id, reason).
    pub failed: Vec<(String, String)>,
}

/// How an Easemob conversation maps onto tidings.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Conv {
    /// The direct conversation of two users (sorted).
    Direct(String, String),
    /// A group, under its Easemob id.
    Group(String),
}

/// One message of a history file.
#[derive(Debug, Clone)]
struct Record {
    id: String,
    at: i64,
    from: String,
    kind: i32,
    text: String,
    attributes: BTreeMap<String, String>,
}

/// Message types stored for Easemob body types (`bodies[0].type`). Text keeps its `msg` as
/// the content; every other kind keeps its body object, as JSON, as the content.
pub const TYPES: &[(&str, i32)] = &[
    ("txt", 0),
    ("img", 1),
    ("loc", 2),
    ("audio", 3),
    ("video", 4),
    ("file", 5),
    ("custom", 6),
    ("combine", 7),
];

fn str_of<'a>(o: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    o.get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// One history record as a message of a conversation (`Err`: its id and why it is not
/// imported).
fn record_of(o: &Map<String, Value>) -> Result<(Conv, Record), (String, String)> {
    let id = str_of(o, "msg_id").unwrap_or("?").to_owned();
    let fail = |why: &str| (id.clone(), why.to_owned());
    if id == "?" {
        return Err(fail("no msg_id"));
    }
    let at = match o.get("timestamp") {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(s)) => s.parse().ok(),
        _ => None,
    }
    .ok_or_else(|| fail("no timestamp"))?;
    let payload = match o.get("payload") {
        Some(Value::Object(p)) => p.clone(),
        // Some exports carry the payload as a JSON string.
        Some(Value::String(s)) => match serde_json::from_str(s) {
            Ok(Value::Object(p)) => p,
            _ => return Err(fail("payload is not a JSON object")),
        },
        _ => return Err(fail("no payload")),
    };
    let from = str_of(&payload, "from")
        .or_else(|| str_of(o, "from"))
        .ok_or_else(|| fail("no payload.from"))?
        .to_owned();
    let to = str_of(&payload, "to")
        .or_else(|| str_of(o, "to"))
        .ok_or_else(|| fail("no payload.to"))?
        .to_owned();
    let conv = match str_of(o, "chat_type").unwrap_or("chat") {
        "chat" => {
            let (a, b) = if from <= to {
                (from.clone(), to)
            } else {
                (to, from.clone())
            };
            Conv::Direct(a, b)
        }
        "groupchat" => Conv::Group(to),
        "chatroom" => return Err(fail("a chat room message: chat rooms keep no history here")),
        other => return Err(fail(&format!("unknown chat_type {other:?}"))),
    };
    let body = match payload.get("bodies") {
        Some(Value::Array(b)) => match b.first() {
            Some(Value::Object(b)) => b.clone(),
            _ => return Err(fail("bodies holds no message body")),
        },
        _ => return Err(fail("no bodies")),
    };
    let body_type = str_of(&body, "type").unwrap_or_default();
    if body_type == "cmd" {
        return Err(fail("a command (cmd) message: not history"));
    }
    let (kind, text) = match TYPES.iter().find(|(name, _)| *name == body_type) {
        Some((_, 0)) => (0, str_of(&body, "msg").unwrap_or_default().to_owned()),
        Some((_, kind)) => (*kind, Value::Object(body).to_string()),
        None => return Err(fail(&format!("unknown body type {body_type:?}"))),
    };
    let attributes = match payload.get("ext") {
        Some(Value::Object(ext)) => ext
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), v)
            })
            .collect(),
        _ => BTreeMap::new(),
    };
    Ok((
        conv,
        Record {
            id,
            at,
            from,
            kind,
            text,
            attributes,
        },
    ))
}

/// The files to read: each path, or each file of a directory (by name, which orders
/// Easemob's hourly files by time).
fn files(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut inside: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("reading {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect();
            inside.sort();
            out.extend(inside);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

/// Reads one history file: JSON lines, a JSON array, or one JSON object.
fn read_file(path: &Path) -> anyhow::Result<Vec<Map<String, Value>>> {
    let head = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if head.starts_with(&[0x1f, 0x8b]) {
        bail!(
            "{} is gzip-compressed: unpack it first (gzip -d)",
            path.display()
        );
    }
    super::leancloud::read_rows(path)
}

/// The admin API of the server imported into.
struct Admin {
    base: Base,
    headers: Vec<(&'static str, String)>,
}

impl Admin {
    async fn call(&self, method: Method, path: &str, body: &Value) -> anyhow::Result<Value> {
        let (status, answer) =
            http::call_json(&self.base, method.clone(), path, &self.headers, Some(body)).await?;
        if status.is_success() {
            return Ok(answer);
        }
        if status == StatusCode::UNAUTHORIZED {
            bail!("{method} {path}: 401: the admin API key was refused");
        }
        Err(Refused(
            answer["message"]
                .as_str()
                .map_or_else(|| status.to_string(), str::to_owned),
        )
        .into())
    }
}

/// The server refused one conversation's request (the import goes on with the others).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Refused(String);

/// Runs an import of `paths` into the server of `target`, writing a progress line per
/// conversation to `progress`.
pub async fn run(
    target: &Target,
    paths: &[PathBuf],
    progress: &mut dyn FnMut(String),
) -> anyhow::Result<Summary> {
    let pem = match &target.ca_cert {
        Some(path) => {
            Some(std::fs::read(path).with_context(|| format!("reading {}", path.display()))?)
        }
        None => None,
    };
    let admin = Admin {
        base: Base::parse(&target.url, pem.as_deref())?,
        headers: vec![("authorization", format!("Bearer {}", target.key))],
    };
    let mut summary = Summary::default();
    // Per conversation, in file order (ties in time keep it).
    let mut by_conv: HashMap<Conv, Vec<Record>> = HashMap::new();
    for file in files(paths)? {
        for row in read_file(&file)? {
            summary.records += 1;
            match record_of(&row) {
                Ok((conv, r)) => by_conv.entry(conv).or_default().push(r),
                Err(f) => summary.failed.push(f),
            }
        }
    }
    let mut convs: Vec<(Conv, Vec<Record>)> = by_conv.into_iter().collect();
    for (_, records) in &mut convs {
        records.sort_by_key(|r| r.at);
    }
    // Oldest conversation first, so the ids they get follow their history.
    convs.sort_by(|a, b| (a.1[0].at, &a.0).cmp(&(b.1[0].at, &b.0)));
    progress(format!(
        "{} records, {} conversations to import",
        summary.records,
        convs.len()
    ));
    for (conv, records) in convs {
        let name = match &conv {
            Conv::Direct(a, b) => format!("chat {a}|{b}"),
            Conv::Group(g) => format!("groupchat {g}"),
        };
        match import_conversation(&admin, target.batch, &conv, &records, &mut summary).await {
            Ok(line) => progress(format!("{name}: {line}")),
            Err(e) if e.downcast_ref::<Refused>().is_some() => {
                progress(format!("{name}: not imported: {e}"));
                summary.failed.push((name, e.to_string()));
            }
            Err(e) => return Err(e.context(name)),
        }
    }
    Ok(summary)
}

async fn import_conversation(
    admin: &Admin,
    batch: usize,
    conv: &Conv,
    records: &[Record],
    summary: &mut Summary,
) -> anyhow::Result<String> {
    let (answer, created) = match conv {
        Conv::Direct(a, b) => {
            // Made by the first message's sender; the same pair gives the same conversation.
            let first = &records[0].from;
            let other = if first == a { b } else { a };
            let path = format!("/v1/conversations?as={}", http::encode(first));
            let c = admin
                .call(
                    Method::POST,
                    &path,
                    &json!({"kind": "direct", "members": [other]}),
                )
                .await?;
            // Direct conversations are idempotent on the pair: a new one has no messages.
            let created = c["last_seq"] == 0;
            (c, created)
        }
        Conv::Group(g) => {
            // The history does not carry the group's members: its senders become them, in
            // the order they first spoke; the first is the owner.
            let mut members: Vec<&str> = Vec::new();
            for r in records {
                if !members.contains(&r.from.as_str()) {
                    members.push(&r.from);
                }
            }
            let body = json!({"conversation_id": g, "members": members, "owner": members[0],
                              "created_at": records[0].at});
            let r = admin
                .call(Method::POST, "/v1/imports/conversations", &body)
                .await?;
            let created = r["created"] == true;
            (r["conversation"].clone(), created)
        }
    };
    if created {
        summary.conversations += 1;
    } else {
        summary.existing += 1;
    }
    let id = answer["id"]
        .as_str()
        .context("the conversation answer has no id")?
        .to_owned();
    let path = format!("/v1/conversations/{}/messages/import", http::encode(&id));
    let (mut imported, mut skipped, mut failed) = (0, 0, 0);
    for chunk in records.chunks(batch.max(1)) {
        let messages: Vec<Value> = chunk
            .iter()
            .map(|r| {
                json!({"message_id": r.id, "sender": r.from, "server_time": r.at,
                       "type": r.kind, "text": r.text, "attributes": r.attributes})
            })
            .collect();
        let r = admin
            .call(Method::POST, &path, &json!({ "messages": messages }))
            .await?;
        imported += r["imported"].as_u64().unwrap_or(0) as usize;
        skipped += r["duplicates"].as_u64().unwrap_or(0) as usize;
        for f in r["failed"].as_array().into_iter().flatten() {
            failed += 1;
            summary.failed.push((
                f["message_id"].as_str().unwrap_or("?").to_owned(),
                f["message"].as_str().unwrap_or_default().to_owned(),
            ));
        }
    }
    summary.messages += imported;
    summary.skipped_messages += skipped;
    Ok(format!(
        "{} as {id}, {imported} messages imported, {skipped} already there, {failed} refused",
        if created { "created" } else { "already there" },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(v: Value) -> Result<(Conv, Record), (String, String)> {
        record_of(v.as_object().unwrap())
    }

    #[test]
    fn records_map_onto_conversations_and_messages() {
        let (conv, r) = rec(json!({"msg_id": "1", "timestamp": 5, "chat_type": "chat",
            "from": "x", "to": "y", "direction": "outgoing",
            "payload": {"from": "bob", "to": "alice", "ext": {"k": "v", "n": 1},
                        "bodies": [{"type": "txt", "msg": "hi"}]}}))
        .unwrap();
        assert_eq!(conv, Conv::Direct("alice".into(), "bob".into()));
        assert_eq!((r.from.as_str(), r.kind, r.text.as_str()), ("bob", 0, "hi"));
        assert_eq!(r.attributes["n"], "1");
        let (conv, r) = rec(
            json!({"msg_id": "2", "timestamp": "6", "chat_type": "groupchat",
            "payload": {"from": "bob", "to": "1234", "bodies": [{"type": "loc", "lat": 1.5}]}}),
        )
        .unwrap();
        assert_eq!(conv, Conv::Group("1234".into()));
        assert_eq!(r.kind, 2);
        assert_eq!(r.text, r#"{"lat":1.5,"type":"loc"}"#);
        for (bad, why) in [
            (
                json!({"msg_id": "3", "timestamp": 1, "chat_type": "chatroom",
                    "payload": {"from": "a", "to": "r", "bodies": [{"type": "txt"}]}}),
                "chat room",
            ),
            (
                json!({"msg_id": "4", "timestamp": 1, "chat_type": "chat",
                    "payload": {"from": "a", "to": "b", "bodies": [{"type": "cmd"}]}}),
                "cmd",
            ),
            (json!({"msg_id": "5", "chat_type": "chat"}), "no timestamp"),
            (json!({"timestamp": 1}), "no msg_id"),
        ] {
            let e = rec(bad).unwrap_err();
            assert!(e.1.contains(why), "{e:?}");
        }
    }
}
