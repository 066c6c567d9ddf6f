//! `tidings import leancloud`: conversations (`_Conversation` rows) and their history, from
//! LeanCloud's REST API (with the master key) or from exported files, into the registry.
//!
//! Each conversation keeps its `objectId` as its id and each message its `msg-id`; seqs follow
//! the messages' times. Read positions come from the read data when given, else everything
//! imported counts as read. Running it again imports only what is new (by id) and changes
//! nothing else. See docs/leancloud.md, Import.

use crate::http_client::{self as http, Base};
use crate::leancloud::query::time_ms;
use crate::registry::import::{ImportConversation, ImportMessage};
use crate::registry::{Error, Registry};
use anyhow::{Context, bail};
use bytes::Bytes;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

/// Where the data comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// LeanCloud's REST API: base URL, app id, master key, and CA certificates (PEM) to trust
    /// besides Mozilla's roots for an `https://` base.
    Rest {
        base: String,
        app_id: String,
        master_key: String,
        ca_cert: Option<PathBuf>,
    },
    /// Exported files: `_Conversation` rows, messages, and optionally read positions.
    Files {
        conversations: PathBuf,
        messages: PathBuf,
        reads: Option<PathBuf>,
    },
}

/// Where the import writes: the registry over a stopped server's store, or a running server
/// through its admin API (the same registry calls behind the endpoints).
pub enum Sink<'a> {
    Store(&'a Registry),
    Admin(Admin),
}

/// A running server's admin API.
pub struct Admin {
    base: Base,
    headers: Vec<(&'static str, String)>,
}

impl Admin {
    /// The admin API at `url` with `key`; `ca_cert`: PEM certificates to trust besides
    /// Mozilla's roots for an `https://` URL.
    pub fn new(url: &str, key: &str, ca_cert: Option<&std::path::Path>) -> anyhow::Result<Admin> {
        let pem = match ca_cert {
            Some(path) => {
                Some(std::fs::read(path).with_context(|| format!("reading {}", path.display()))?)
            }
            None => None,
        };
        Ok(Admin {
            base: Base::parse(url, pem.as_deref())?,
            headers: vec![("authorization", format!("Bearer {key}"))],
        })
    }

    async fn post(&self, path: &str, body: &Value) -> Result<Value, Refused> {
        let (status, answer) = http::call_json(
            &self.base,
            hyper::Method::POST,
            path,
            &self.headers,
            Some(body),
        )
        .await
        .map_err(Refused::Failed)?;
        if status.is_success() {
            return Ok(answer);
        }
        let message = answer["message"]
            .as_str()
            .map_or_else(|| status.to_string(), str::to_owned);
        Err(match answer["code"].as_i64() {
            Some(c) if c == crate::protocol::pb::ErrorCode::ErrorImportConflict as i64 => {
                Refused::Conflict(message)
            }
            _ => Refused::Failed(anyhow::anyhow!("POST {path}: {status}: {message}")),
        })
    }
}

/// Why a write was not done.
enum Refused {
    /// The conversation has messages that were not imported: it is skipped.
    Conflict(String),
    /// Anything else stops the import.
    Failed(anyhow::Error),
}

impl From<Error> for Refused {
    fn from(e: Error) -> Refused {
        match e {
            Error::ImportConflict => Refused::Conflict(e.to_string()),
            e => Refused::Failed(e.into()),
        }
    }
}

/// Messages per admin API request (the server's `import_max_messages` is 1000 by default).
const ADMIN_BATCH: usize = 500;

/// What a write of messages did.
struct Written {
    imported: usize,
    skipped: usize,
    failed: Vec<(String, String)>,
}

impl Sink<'_> {
    async fn conversation(&self, conv: ImportConversation) -> Result<(String, bool), Refused> {
        match self {
            Sink::Store(r) => Ok(r.import_conversation(conv).await?),
            Sink::Admin(a) => {
                let body = serde_json::json!({
                    "conversation_id": conv.alias,
                    "members": conv.members,
                    "owner": conv.owner,
                    "name": conv.name,
                    "attributes": conv.attributes,
                    "created_at": conv.created_at,
                    "unique": conv.unique,
                });
                let v = a.post("/v1/imports/conversations", &body).await?;
                let id = v["conversation"]["id"]
                    .as_str()
                    .ok_or_else(|| Refused::Failed(anyhow::anyhow!("no conversation id in {v}")))?;
                Ok((id.to_owned(), v["created"].as_bool().unwrap_or(false)))
            }
        }
    }

    /// Whether message `mid` of conversation `id` is imported already (through the admin API
    /// it is not known: the whole history is sent again, and the server skips what it has).
    fn known(&self, id: &str, mid: &str) -> bool {
        match self {
            Sink::Store(r) => r.message_seq(id, mid).is_some(),
            Sink::Admin(_) => false,
        }
    }

    async fn messages(&self, id: &str, messages: Vec<ImportMessage>) -> Result<Written, Refused> {
        match self {
            Sink::Store(r) => {
                let done = r.import_messages(id, messages).await?;
                Ok(Written {
                    imported: done.imported,
                    skipped: done.skipped,
                    failed: done
                        .failed
                        .into_iter()
                        .map(|(m, e)| (m, e.to_string()))
                        .collect(),
                })
            }
            Sink::Admin(a) => {
                use base64::Engine as _;
                let path = format!("/v1/conversations/{}/messages/import", http::encode(id));
                let mut w = Written {
                    imported: 0,
                    skipped: 0,
                    failed: Vec::new(),
                };
                for chunk in messages.chunks(ADMIN_BATCH) {
                    let rows: Vec<Value> = chunk
                        .iter()
                        .map(|m| {
                            serde_json::json!({
                                "message_id": m.alias,
                                "sender": m.sender,
                                "server_time": m.at,
                                "type": m.kind,
                                "content": base64::engine::general_purpose::STANDARD.encode(&m.content),
                                "attributes": m.attributes,
                                "edited_at": m.edited_at,
                                "recalled": m.recalled,
                            })
                        })
                        .collect();
                    let body = serde_json::json!({ "messages": rows, "mark_read": false });
                    let v = a.post(&path, &body).await?;
                    w.imported += v["imported"].as_u64().unwrap_or(0) as usize;
                    w.skipped += v["duplicates"].as_u64().unwrap_or(0) as usize;
                    for f in v["failed"].as_array().into_iter().flatten() {
                        w.failed.push((
                            f["message_id"].as_str().unwrap_or("?").to_owned(),
                            f["message"].as_str().unwrap_or("").to_owned(),
                        ));
                    }
                }
                Ok(w)
            }
        }
    }

    /// Sets read positions: every member has read everything, except those `given` a time.
    async fn reads(&self, id: &str, given: Vec<(String, Option<i64>)>) -> Result<usize, Refused> {
        match self {
            Sink::Store(r) => {
                let mut wanted: BTreeMap<String, Option<i64>> = r
                    .import_members(id)?
                    .into_iter()
                    .map(|m| (m, None))
                    .collect();
                for (user, at) in given {
                    wanted.insert(user, at);
                }
                let wanted: Vec<(String, Option<i64>)> = wanted.into_iter().collect();
                Ok(r.import_reads(id, &wanted).await?)
            }
            Sink::Admin(a) => {
                let reads: Vec<Value> = given
                    .into_iter()
                    .map(|(user, at)| serde_json::json!({ "user": user, "read_at": at }))
                    .collect();
                let path = format!("/v1/conversations/{}/reads/import", http::encode(id));
                let v = a
                    .post(&path, &serde_json::json!({ "reads": reads }))
                    .await?;
                Ok(v["reads"].as_u64().unwrap_or(0) as usize)
            }
        }
    }
}

/// What an import did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Conversations created by this run.
    pub conversations: usize,
    /// Conversations that were there already (imported before).
    pub existing: usize,
    pub messages: usize,
    /// Messages imported before (by id).
    pub skipped_messages: usize,
    /// Read positions set.
    pub reads: usize,
    /// What was not imported, and why: (conversation or message id, reason).
    pub failed: Vec<(String, String)>,
}

/// Conversations and messages per REST page (the documented maximum).
const PAGE: usize = 1000;

/// `_Conversation` columns that are not custom attributes.
const BUILT_IN: &[&str] = &[
    "objectId",
    "m",
    "c",
    "name",
    "createdAt",
    "updatedAt",
    "lm",
    "mu",
    "tr",
    "sys",
    "unique",
    "uniqueId",
    "temp",
    "ttl",
    "ACL",
    "msg",
    "msg_from",
    "msg_mid",
    "msg_timestamp",
    "bin",
    "patch_timestamp",
    "mention_pids",
];

/// One `_Conversation` row as a conversation to import (`Err`: why it is not imported).
pub fn conversation_of(row: &Map<String, Value>) -> Result<ImportConversation, String> {
    let alias = row
        .get("objectId")
        .and_then(Value::as_str)
        .ok_or("no objectId")?
        .to_owned();
    if row.get("tr").and_then(Value::as_bool) == Some(true) {
        return Err("a chat room (tr): chat rooms are not supported".into());
    }
    if row.get("sys").and_then(Value::as_bool) == Some(true) {
        return Err("a service conversation (sys): not supported".into());
    }
    let members = match row.get("m") {
        Some(Value::Array(m)) => m
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or("a member is not a string")
            })
            .collect::<Result<Vec<_>, _>>()?,
        None | Some(Value::Null) => Vec::new(),
        Some(_) => return Err("m is not an array".into()),
    };
    let created_at = row.get("createdAt").and_then(time_ms).unwrap_or(0);
    let attributes = row
        .iter()
        .filter(|(k, _)| !BUILT_IN.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.to_string()))
        .collect();
    Ok(ImportConversation {
        alias,
        name: row
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        attributes,
        owner: row
            .get("c")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        members,
        created_at,
        unique: row.get("unique").and_then(Value::as_bool) == Some(true),
    })
}

fn str_field<'a>(o: &'a Map<String, Value>, names: &[&str]) -> Option<&'a str> {
    names.iter().find_map(|n| o.get(*n).and_then(Value::as_str))
}

fn int_field(o: &Map<String, Value>, names: &[&str]) -> Option<i64> {
    names.iter().find_map(|n| match o.get(*n)? {
        Value::Number(x) => x.as_i64(),
        Value::String(s) => s.parse().ok(),
        v => time_ms(v),
    })
}

/// The conversation a message item belongs to.
fn message_conversation(o: &Map<String, Value>) -> Option<&str> {
    str_field(o, &["conv-id", "convId", "cid"])
}

/// One history item (REST `messages` or an exported line) as a message to import.
pub fn message_of(o: &Map<String, Value>) -> Result<ImportMessage, (String, String)> {
    let alias = str_field(o, &["msg-id", "msgId", "mid", "id"])
        .unwrap_or_default()
        .to_owned();
    let fail = |why: &str| (alias.clone(), why.to_owned());
    if alias.is_empty() {
        return Err(fail("no msg-id"));
    }
    let sender = str_field(o, &["from", "from_client", "fromClient"])
        .ok_or_else(|| fail("no from"))?
        .to_owned();
    let at = int_field(o, &["timestamp", "ts"]).ok_or_else(|| fail("no timestamp"))?;
    let data = match o.get("data") {
        Some(Value::String(s)) => s.clone(),
        // Some exports keep a typed message as an object.
        Some(v @ Value::Object(_)) => v.to_string(),
        _ => return Err(fail("no data")),
    };
    let binary = o.get("bin").and_then(Value::as_bool) == Some(true);
    let (kind, content, attributes) = if binary {
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .map_err(|e| fail(&format!("bin data is not base64: {e}")))?;
        crate::session::leancloud::stored_body(Some(Bytes::from(bytes)), None)
    } else {
        crate::session::leancloud::stored_body(None, Some(data))
    };
    let recalled = o.get("recall").and_then(Value::as_bool) == Some(true) || kind == -127;
    Ok(ImportMessage {
        alias,
        sender,
        at,
        kind,
        content,
        attributes,
        edited_at: int_field(o, &["patch-timestamp", "patchTimestamp", "patch_timestamp"])
            .unwrap_or(0),
        recalled,
    })
}

/// Reads JSON rows: a JSON array, an object with `results` (a REST answer), or one JSON
/// object per line.
pub fn read_rows(path: &std::path::Path) -> anyhow::Result<Vec<Map<String, Value>>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let rows = match serde_json::from_str::<Value>(&text) {
        Ok(Value::Array(rows)) => rows,
        Ok(Value::Object(mut o)) => match o.remove("results") {
            Some(Value::Array(rows)) => rows,
            _ => vec![Value::Object(o)],
        },
        _ => {
            let mut rows = Vec::new();
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                rows.push(
                    serde_json::from_str(line)
                        .with_context(|| format!("{} line {}", path.display(), i + 1))?,
                );
            }
            rows
        }
    };
    rows.into_iter()
        .map(|r| match r {
            Value::Object(o) => Ok(o),
            other => bail!("{}: a row is not an object: {other}", path.display()),
        })
        .collect()
}

/// The REST API of one app.
struct Rest {
    base: Base,
    headers: Vec<(&'static str, String)>,
}

impl Rest {
    async fn get(&self, path: &str, query: &[(&str, String)]) -> anyhow::Result<Value> {
        http::get_json(&self.base, path, query, &self.headers).await
    }

    /// Every `_Conversation` row, by `objectId` order.
    async fn conversations(&self) -> anyhow::Result<Vec<Map<String, Value>>> {
        let mut out: Vec<Map<String, Value>> = Vec::new();
        loop {
            let mut query = vec![("limit", PAGE.to_string()), ("order", "objectId".into())];
            if let Some(last) = out.last().and_then(|r| r.get("objectId")) {
                query.push((
                    "where",
                    serde_json::json!({"objectId": {"$gt": last}}).to_string(),
                ));
            }
            let page = self.get("/1.1/classes/_Conversation", &query).await?;
            let Some(Value::Array(rows)) = page.get("results").cloned() else {
                bail!("GET /1.1/classes/_Conversation: no results array");
            };
            let n = rows.len();
            for r in rows {
                match r {
                    Value::Object(o) if o.get("objectId").and_then(Value::as_str).is_some() => {
                        out.push(o)
                    }
                    _ => bail!("GET /1.1/classes/_Conversation: a row without objectId"),
                }
            }
            if n < PAGE {
                return Ok(out);
            }
        }
    }

    /// The history of `cid`, newest first, stopping before the first message `known` says was
    /// imported already (everything older was imported with it).
    async fn messages(
        &self,
        cid: &str,
        known: &dyn Fn(&str) -> bool,
    ) -> anyhow::Result<Vec<Map<String, Value>>> {
        let path = format!("/1.2/rtm/conversations/{}/messages", http::encode(cid));
        let mut out: Vec<Map<String, Value>> = Vec::new();
        loop {
            let mut query = vec![("limit", PAGE.to_string())];
            if let Some(last) = out.last() {
                let ts = int_field(last, &["timestamp"]).unwrap_or(0);
                let id = str_field(last, &["msg-id", "msgId"]).unwrap_or_default();
                query.push(("timestamp", ts.to_string()));
                query.push(("msgid", id.to_owned()));
            }
            let Value::Array(items) = self.get(&path, &query).await? else {
                bail!("GET {path}: not an array");
            };
            let n = items.len();
            for item in items {
                let Value::Object(o) = item else {
                    bail!("GET {path}: an item is not an object");
                };
                if str_field(&o, &["msg-id", "msgId"]).is_some_and(known) {
                    return Ok(out);
                }
                out.push(o);
            }
            if n < PAGE {
                return Ok(out);
            }
        }
    }
}

/// Runs an import into `registry`, writing a progress line per conversation to `progress`.
pub async fn run(
    sink: &Sink<'_>,
    source: &Source,
    progress: &mut dyn FnMut(String),
) -> anyhow::Result<Summary> {
    let mut summary = Summary::default();
    let (rows, rest, mut by_conv, reads) = match source {
        Source::Rest {
            base,
            app_id,
            master_key,
            ca_cert,
        } => {
            let pem = match ca_cert {
                Some(path) => Some(
                    std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
                ),
                None => None,
            };
            let rest = Rest {
                base: Base::parse(base, pem.as_deref())?,
                headers: vec![
                    ("X-LC-Id", app_id.clone()),
                    ("X-LC-Key", format!("{master_key},master")),
                ],
            };
            let rows = rest.conversations().await?;
            (rows, Some(rest), HashMap::new(), HashMap::new())
        }
        Source::Files {
            conversations,
            messages,
            reads,
        } => {
            let rows = read_rows(conversations)?;
            let mut by_conv: HashMap<String, Vec<Map<String, Value>>> = HashMap::new();
            for m in read_rows(messages)? {
                match message_conversation(&m) {
                    Some(c) => by_conv.entry(c.to_owned()).or_default().push(m),
                    None => summary.failed.push((
                        str_field(&m, &["msg-id", "msgId"])
                            .unwrap_or("?")
                            .to_owned(),
                        "no conv-id".into(),
                    )),
                }
            }
            let mut read_at: HashMap<String, Vec<(String, Option<i64>)>> = HashMap::new();
            if let Some(path) = reads {
                for r in read_rows(path)? {
                    let (Some(cid), Some(user)) = (
                        str_field(&r, &["cid", "conv-id", "convId"]),
                        str_field(&r, &["client_id", "clientId", "client-id"]),
                    ) else {
                        bail!("{}: a read row needs cid and client_id", path.display());
                    };
                    let at = int_field(&r, &["timestamp", "readAt", "read_at"]);
                    read_at
                        .entry(cid.to_owned())
                        .or_default()
                        .push((user.to_owned(), at));
                }
            }
            (rows, None, by_conv, read_at)
        }
    };
    progress(format!("{} conversations to import", rows.len()));
    let mut convs = Vec::with_capacity(rows.len());
    for row in &rows {
        match conversation_of(row) {
            Ok(c) => convs.push(c),
            Err(why) => summary
                .failed
                .push((str_field(row, &["objectId"]).unwrap_or("?").to_owned(), why)),
        }
    }
    // In creation order, so the numbers they get follow it.
    convs.sort_by(|a, b| (a.created_at, &a.alias).cmp(&(b.created_at, &b.alias)));
    for conv in convs {
        let alias = conv.alias.clone();
        let (id, created) = match sink.conversation(conv).await {
            Ok(r) => r,
            Err(Refused::Conflict(why)) => {
                summary.failed.push((alias, why));
                continue;
            }
            Err(Refused::Failed(e)) => {
                summary.failed.push((alias, format!("{e:#}")));
                continue;
            }
        };
        if created {
            summary.conversations += 1;
        } else {
            summary.existing += 1;
        }
        let items = match &rest {
            Some(rest) => {
                let known = |mid: &str| sink.known(&id, mid);
                let mut items = rest.messages(&alias, &known).await?;
                items.reverse();
                items
            }
            None => by_conv.remove(&alias).unwrap_or_default(),
        };
        let mut messages = Vec::with_capacity(items.len());
        for item in &items {
            match message_of(item) {
                Ok(m) => messages.push(m),
                Err(f) => summary.failed.push(f),
            }
        }
        // Oldest first; the source's order breaks ties.
        messages.sort_by_key(|m| m.at);
        let done = match sink.messages(&id, messages).await {
            Ok(done) => done,
            Err(Refused::Conflict(why)) => {
                progress(format!("{alias}: not imported: {why}"));
                summary.failed.push((alias.clone(), why));
                continue;
            }
            Err(Refused::Failed(e)) => bail!("{alias}: {e:#}"),
        };
        summary.messages += done.imported;
        summary.skipped_messages += done.skipped;
        summary.failed.extend(done.failed);
        let mut set = 0;
        if created || done.imported > 0 {
            let given = reads.get(&alias).cloned().unwrap_or_default();
            set = match sink.reads(&id, given).await {
                Ok(n) => n,
                Err(Refused::Conflict(why)) => bail!("{alias}: {why}"),
                Err(Refused::Failed(e)) => bail!("{alias}: {e:#}"),
            };
            summary.reads += set;
        }
        progress(format!(
            "{alias}: {}, {} messages imported, {} already there, {set} read positions",
            if created { "created" } else { "already there" },
            done.imported,
            done.skipped
        ));
    }
    for (cid, items) in by_conv {
        summary.failed.push((
            cid,
            format!(
                "{} messages of a conversation not in the conversations file",
                items.len()
            ),
        ));
    }
    Ok(summary)
}
