//! The pre-send hook: an optional synchronous HTTP call to the app's backend before
//! user-authored content is stored (sends, edits, conversation names and attributes), which
//! allows it, rejects it with a reason, or rewrites it.
//!
//! Asked only about content that would otherwise be stored: every check that needs no hook
//! (membership, mutes, blocks, sizes, the conversation being live) passes first, so a request
//! refused anyway never reaches it. Called outside every conversation lock, at most
//! `pre_send_hook_max_concurrency` calls at once for everyone and `pre_send_hook_max_per_user`
//! for one user; more wait for a slot, in order (a user's behind their own first), for at most
//! `pre_send_hook_queue_timeout_ms`, past which the content is refused with
//! `ERROR_UNAVAILABLE`. Waiting is not a failure of the hook: a call that, once made, gets no
//! good answer within `pre_send_hook_timeout_ms` is, and a failure allows the content
//! (`pre_send_hook_fail_closed = false`, the default) or refuses it with `ERROR_UNAVAILABLE`.
//! Requests are signed like webhooks.

use super::{Caller, Error, Registry, SendRequest};
use crate::config::Config;
use crate::store::UserId;
use base64::Engine as _;
use bytes::Bytes;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Semaphore;

/// Rejected sends remembered by client message id, so a retry gets the same answer without
/// asking the hook again.
const REMEMBERED_REJECTIONS: usize = 4096;

/// A send by conversation, sender and client message id.
type SendKey = (u64, String, String);

/// Refusals remembered (by send) and their order, oldest first.
type Rejections = (HashMap<SendKey, String>, VecDeque<SendKey>);

/// What the hook decided.
#[derive(Debug)]
enum Verdict {
    Allow,
    Reject(String),
    Rewrite(serde_json::Map<String, Value>),
}

/// A configured hook.
pub(super) struct PreSend {
    target: crate::http_client::Base,
    keys: Vec<Vec<u8>>,
    timeout: Duration,
    fail_closed: bool,
    /// Calls in flight for everyone; waiters are served in order.
    slots: Semaphore,
    /// Each user's calls in flight (`pre_send_hook_max_per_user`).
    users: crate::turns::PerUser,
    /// Longest wait for the two slots.
    queue_timeout: Duration,
    calls: AtomicU64,
    rejected: Mutex<Rejections>,
}

impl PreSend {
    pub(super) fn from_config(c: &Config) -> anyhow::Result<Option<PreSend>> {
        let Some(url) = &c.pre_send_hook_url else {
            return Ok(None);
        };
        let secret = c
            .pre_send_hook_secret
            .as_deref()
            .and_then(crate::webhooks::secret_bytes)
            .ok_or_else(|| anyhow::anyhow!("pre_send_hook_url needs pre_send_hook_secret"))?;
        Ok(Some(PreSend {
            target: crate::http_client::Base::parse(url, None)?,
            keys: vec![secret],
            timeout: Duration::from_millis(c.pre_send_hook_timeout_ms),
            fail_closed: c.pre_send_hook_fail_closed,
            slots: Semaphore::new(c.pre_send_hook_max_concurrency.max(1)),
            users: crate::turns::PerUser::new(c.pre_send_hook_max_per_user),
            queue_timeout: Duration::from_millis(c.pre_send_hook_queue_timeout_ms),
            calls: AtomicU64::new(0),
            rejected: Mutex::new((HashMap::new(), VecDeque::new())),
        }))
    }

    /// Asks the hook about `user`'s content. Boxed: the HTTP exchange's state is large, and a
    /// send's future would otherwise carry it (and move it around) on every send, hook or not.
    fn ask<'a>(
        &'a self,
        user: &'a UserId,
        payload: Value,
    ) -> futures_util::future::BoxFuture<'a, Result<Verdict, Error>> {
        Box::pin(self.ask_now(user, payload))
    }

    /// Waits for one of `user`'s slots, then a shared one, both in order; `None` past
    /// `pre_send_hook_queue_timeout_ms`.
    async fn slot(
        &self,
        user: &UserId,
    ) -> Option<(crate::turns::UserTurn<'_>, tokio::sync::SemaphorePermit<'_>)> {
        let wait = async {
            let mine = self.users.take(user).await;
            let shared = self.slots.acquire().await.ok()?;
            Some((mine, shared))
        };
        tokio::time::timeout(self.queue_timeout, wait)
            .await
            .ok()
            .flatten()
    }

    async fn ask_now(&self, user: &UserId, payload: Value) -> Result<Verdict, Error> {
        let Some(_slot) = self.slot(user).await else {
            static QUEUED: crate::logsafe::Throttle =
                crate::logsafe::Throttle::new("pre-send hook slot not free in time");
            if QUEUED.allow(1) {
                tracing::warn!(
                    wait_ms = self.queue_timeout.as_millis() as u64,
                    "no pre-send hook slot within pre_send_hook_queue_timeout_ms; refusing"
                );
            }
            return Err(Error::Unavailable);
        };
        let body = Bytes::from(payload.to_string());
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        let id = format!("hook_{n}_{}", std::process::id());
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let signature = self
            .keys
            .iter()
            .map(|k| crate::webhooks::signature(k, &id, ts, &body))
            .collect::<Vec<_>>()
            .join(" ");
        let headers = [
            ("content-type", "application/json".to_owned()),
            ("webhook-id", id),
            ("webhook-timestamp", ts.to_string()),
            ("webhook-signature", signature),
        ];
        let call = async {
            crate::http_client::post(&self.target, "", &headers, body, self.timeout)
                .await
                .map_err(|e| format!("{e:#}"))
        };
        let answer = match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok((status, body))) if status.is_success() => parse(&body),
            Ok(Ok((status, _))) => Err(format!("answered {status}")),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(format!("no answer within {} ms", self.timeout.as_millis())),
        };
        match answer {
            Ok(v) => Ok(v),
            Err(why) if self.fail_closed => {
                tracing::warn!(error = %why, "pre-send hook failed; refusing (pre_send_hook_fail_closed)");
                Err(Error::Unavailable)
            }
            Err(why) => {
                tracing::warn!(error = %why, "pre-send hook failed; allowing");
                Ok(Verdict::Allow)
            }
        }
    }

    fn remembered(&self, key: &SendKey) -> Option<String> {
        let r = self.rejected.lock().unwrap_or_else(|p| p.into_inner());
        r.0.get(key).cloned()
    }

    fn remember(&self, key: SendKey, reason: String) {
        let mut r = self.rejected.lock().unwrap_or_else(|p| p.into_inner());
        if r.0.insert(key.clone(), reason).is_none() {
            r.1.push_back(key);
        }
        while r.1.len() > REMEMBERED_REJECTIONS {
            if let Some(old) = r.1.pop_front() {
                r.0.remove(&old);
            }
        }
    }
}

/// `{"action": "allow" | "reject" | "rewrite", …}`; an empty 2xx body allows.
fn parse(body: &[u8]) -> Result<Verdict, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Verdict::Allow);
    }
    let v: Value =
        serde_json::from_slice(body).map_err(|e| format!("the answer is not JSON: {e}"))?;
    match v["action"].as_str() {
        Some("allow") => Ok(Verdict::Allow),
        Some("reject") => Ok(Verdict::Reject(
            v["reason"]
                .as_str()
                .unwrap_or("rejected")
                .chars()
                .take(512)
                .collect(),
        )),
        Some("rewrite") => match v {
            Value::Object(m) => Ok(Verdict::Rewrite(m)),
            _ => unreachable!("an object has an action"),
        },
        _ => Err("the answer has no action (allow, reject or rewrite)".into()),
    }
}

fn attributes_of(v: &Value) -> Result<Option<BTreeMap<String, String>>, String> {
    match v {
        Value::Null => Ok(None),
        v => serde_json::from_value(v.clone())
            .map(Some)
            .map_err(|_| "rewritten attributes must be an object of strings".into()),
    }
}

fn content_of(m: &serde_json::Map<String, Value>) -> Result<Option<Bytes>, String> {
    match (m.get("text"), m.get("content")) {
        (Some(Value::String(t)), None) => Ok(Some(Bytes::from(t.clone()))),
        (None, Some(Value::String(b))) => base64::engine::general_purpose::STANDARD
            .decode(b)
            .map(|b| Some(Bytes::from(b)))
            .map_err(|e| format!("rewritten content is not base64: {e}")),
        (None, None) => Ok(None),
        _ => Err("a rewrite gives text or content (base64), as a string".into()),
    }
}

fn message_json(content: &Bytes, kind: i32, attributes: &BTreeMap<String, String>) -> Value {
    json!({
        "type": kind,
        "text": std::str::from_utf8(content).ok(),
        "content": base64::engine::general_purpose::STANDARD.encode(content),
        "attributes": attributes,
    })
}

impl Registry {
    /// Runs a send through the hook (when there is one): the request to store, or why not.
    pub(super) async fn moderate_send(
        &self,
        caller: &Caller,
        conv: u64,
        id: &str,
        mut req: SendRequest,
    ) -> Result<SendRequest, Error> {
        // The app's backend is not asked about what it writes itself.
        let Some(hook) = self.hook.as_ref().filter(|_| !caller.admin) else {
            return Ok(req);
        };
        let key = (conv, caller.user.to_string(), req.client_message_id.clone());
        if !req.client_message_id.is_empty()
            && let Some(reason) = hook.remembered(&key)
        {
            return Err(Error::Rejected(reason));
        }
        let mut message = message_json(&req.content, req.kind, &req.attributes);
        message["mentions"] = json!(req.mentions);
        message["mention_all"] = json!(req.mention_all);
        message["client_message_id"] = json!(req.client_message_id);
        let payload = json!({
            "type": "message.send",
            "user": caller.user.as_ref(),
            "conversation_id": id,
            "message": message,
        });
        match hook.ask(&caller.user, payload).await? {
            Verdict::Allow => Ok(req),
            Verdict::Reject(reason) => {
                if !req.client_message_id.is_empty() {
                    hook.remember(key, reason.clone());
                }
                Err(Error::Rejected(reason))
            }
            Verdict::Rewrite(m) => {
                let bad = |e: String| {
                    tracing::warn!(error = %e, "pre-send hook gave a bad rewrite; refusing");
                    Error::Unavailable
                };
                if let Some(c) = content_of(&m).map_err(bad)? {
                    req.content = c;
                }
                if let Some(a) =
                    attributes_of(m.get("attributes").unwrap_or(&Value::Null)).map_err(bad)?
                {
                    req.attributes = a;
                }
                self.check_size(&req.content, &req.attributes)?;
                Ok(req)
            }
        }
    }

    /// Runs an edit's new content through the hook.
    pub(super) async fn moderate_edit(
        &self,
        caller: &Caller,
        id: &str,
        req: &mut super::EditRequest,
    ) -> Result<(), Error> {
        let Some(hook) = self.hook.as_ref().filter(|_| !caller.admin) else {
            return Ok(());
        };
        let mut message = message_json(&req.content, 0, &req.attributes);
        message["id"] = json!(req.message_id);
        let payload = json!({
            "type": "message.edit",
            "user": caller.user.as_ref(),
            "conversation_id": id,
            "message": message,
        });
        match hook.ask(&caller.user, payload).await? {
            Verdict::Allow => Ok(()),
            Verdict::Reject(reason) => Err(Error::Rejected(reason)),
            Verdict::Rewrite(m) => {
                let bad = |_| Error::Unavailable;
                if let Some(c) = content_of(&m).map_err(bad)? {
                    req.content = c;
                }
                if let Some(a) =
                    attributes_of(m.get("attributes").unwrap_or(&Value::Null)).map_err(bad)?
                {
                    req.attributes = a;
                    req.replace_attributes = true;
                }
                Ok(())
            }
        }
    }

    /// Runs a conversation's new name and attributes through the hook (`kind`:
    /// `conversation.create` or `conversation.update`; `id` empty for a create).
    pub(super) async fn moderate_conversation(
        &self,
        caller: &Caller,
        kind: &str,
        id: &str,
        name: &mut Option<String>,
        attributes: &mut BTreeMap<String, String>,
    ) -> Result<(), Error> {
        let Some(hook) = self.hook.as_ref().filter(|_| !caller.admin) else {
            return Ok(());
        };
        if name.as_deref().is_none_or(str::is_empty) && attributes.is_empty() {
            return Ok(());
        }
        let payload = json!({
            "type": kind,
            "user": caller.user.as_ref(),
            "conversation_id": id,
            "conversation": { "name": name, "attributes": attributes },
        });
        match hook.ask(&caller.user, payload).await? {
            Verdict::Allow => Ok(()),
            Verdict::Reject(reason) => Err(Error::Rejected(reason)),
            Verdict::Rewrite(m) => {
                if let Some(Value::String(n)) = m.get("name") {
                    *name = Some(n.clone());
                }
                if let Some(a) = attributes_of(m.get("attributes").unwrap_or(&Value::Null))
                    .map_err(|_| Error::Unavailable)?
                {
                    *attributes = a;
                }
                Ok(())
            }
        }
    }
}
