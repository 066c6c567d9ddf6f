//! Moving history in and out: imports from another platform (the registry's import entry
//! points, the same ones `tidings import leancloud` uses) and a conversation's history
//! exported as JSON lines.

use super::json;
use super::{Answer, Call, ErrorBody, Failure, ok};
use crate::registry::import::{ImportConversation, ImportMessage};
use crate::registry::{Caller, Error, HistoryRequest};
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::HeaderValue;
use hyper::{Method, Response, StatusCode};
use std::collections::BTreeMap;

/// Bytes after which an export page ends (the line that reaches it is the page's last).
pub const EXPORT_PAGE_BYTES: usize = 4 << 20;
/// Messages an export page holds when the request does not say.
pub const EXPORT_PAGE_DEFAULT: usize = 1_000;
/// The header that carries the cursor of an export's next page.
pub const NEXT_CURSOR: &str = "x-next-cursor";

pub(super) async fn route(call: &Call<'_>, method: &Method, path: &[&str]) -> Option<Answer> {
    Some(match (method, path) {
        (&Method::POST, ["imports", "conversations"]) => import_conversation(call).await,
        (&Method::POST, ["conversations", id, "messages", "import"]) => {
            import_messages(call, id).await
        }
        (&Method::POST, ["conversations", id, "reads", "import"]) => import_reads(call, id).await,
        _ => return None,
    })
}

fn backend(call: &Call<'_>) -> Caller {
    Caller::admin(&call.app.config.system_sender)
}

/// Creates a group as it was on another platform, under the id it had there (idempotent on
/// that id: imported before, it is answered as it is, unchanged). No events are logged or
/// pushed: to its members it was always there.
#[utoipa::path(post, path = "/v1/imports/conversations", request_body = json::ImportConversation,
    responses((status = 201, body = json::ImportedConversation),
        (status = 200, body = json::ImportedConversation, description = "imported before"),
        (status = 400, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(super) async fn import_conversation(call: &Call<'_>) -> Answer {
    let body: json::ImportConversation = call.json()?;
    let reg = &call.app.registry;
    let (id, created) = reg
        .import_conversation(ImportConversation {
            alias: body.conversation_id,
            name: body.name,
            attributes: body.attributes,
            owner: body.owner,
            members: body.members,
            created_at: body.created_at,
            unique: body.unique,
        })
        .await?;
    let conversation = json::Conversation::from(reg.get(&backend(call), &id)?);
    let (_, value) = ok(json::ImportedConversation {
        conversation,
        created,
    })?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, value))
}

/// Imports messages into a conversation that has none yet, or whose messages were all
/// imported (an import continued): kept with their senders, times and ids, given the next
/// seqs in time order. Idempotent by `message_id`. Nothing is pushed and no webhook event is
/// sent.
#[utoipa::path(post, path = "/v1/conversations/{id}/messages/import",
    request_body = json::ImportMessages, params(("id" = String, Path)),
    responses((status = 200, body = json::ImportResult),
        (status = 409, body = ErrorBody, description = "66 ERROR_IMPORT_CONFLICT: messages \
            were sent in the conversation; 8: a chat room keeps no history"),
        (status = 422, body = ErrorBody, description = "over import_max_messages")))]
pub(super) async fn import_messages(call: &Call<'_>, id: &str) -> Answer {
    let body: json::ImportMessages = call.json()?;
    let max = call.app.config.import_max_messages;
    if body.messages.len() > max {
        return Err(Error::LimitExceeded(format!(
            "{} messages; import_max_messages is {max}",
            body.messages.len()
        ))
        .into());
    }
    let mut failed = Vec::new();
    let mut messages = Vec::with_capacity(body.messages.len());
    for m in body.messages {
        let content = match (m.text, m.content) {
            (None, None) => Ok(Bytes::new()),
            (text, content) => json::content_bytes(text, content),
        };
        match content {
            Ok(content) => messages.push(ImportMessage {
                alias: m.message_id,
                sender: m.sender,
                at: m.server_time,
                kind: m.kind,
                content,
                attributes: m.attributes,
                edited_at: m.edited_at,
                recalled: m.recalled,
            }),
            Err(why) => failed.push((m.message_id, Error::InvalidArgument(why))),
        }
    }
    let reg = &call.app.registry;
    let done = reg.import_messages(id, messages).await?;
    failed.extend(done.failed);
    let mut reads = 0;
    if done.imported > 0 && body.mark_read.unwrap_or(true) {
        let everyone: Vec<(String, Option<i64>)> = reg
            .import_members(id)?
            .into_iter()
            .map(|m| (m, None))
            .collect();
        reads = reg.import_reads(id, &everyone).await?;
    }
    ok(json::ImportResult {
        imported: done.imported,
        duplicates: done.skipped,
        failed: failed
            .into_iter()
            .map(|(message_id, e)| json::ImportFailure {
                message_id,
                code: e.code() as i32,
                message: e.to_string(),
            })
            .collect(),
        last_seq: reg.get(&backend(call), id)?.last_seq,
        reads,
    })
}

/// Sets members' read positions as they were on the platform the conversation was imported
/// from: each named member has read up to the newest message sent at or before `read_at`
/// (absent: everything), and, unless `everyone_else` is false, every other member has read
/// everything. A position never moves back. Nothing is pushed.
#[utoipa::path(post, path = "/v1/conversations/{id}/reads/import",
    request_body = json::ImportReads, params(("id" = String, Path)),
    responses((status = 200, body = json::ImportedReads),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(super) async fn import_reads(call: &Call<'_>, id: &str) -> Answer {
    let body: json::ImportReads = call.json()?;
    let max = call.app.config.import_max_messages;
    if body.reads.len() > max {
        return Err(Error::LimitExceeded(format!(
            "{} reads; import_max_messages is {max}",
            body.reads.len()
        ))
        .into());
    }
    let reg = &call.app.registry;
    let mut wanted: BTreeMap<String, Option<i64>> = if body.everyone_else.unwrap_or(true) {
        reg.import_members(id)?
            .into_iter()
            .map(|m| (m, None))
            .collect()
    } else {
        BTreeMap::new()
    };
    for r in body.reads {
        wanted.insert(r.user, r.read_at);
    }
    let wanted: Vec<(String, Option<i64>)> = wanted.into_iter().collect();
    ok(json::ImportedReads {
        reads: reg.import_reads(id, &wanted).await?,
    })
}

/// A conversation's history as JSON lines (`application/x-ndjson`), oldest first: one
/// message per line, shaped as in history answers, sent at or after `from` and before `to`
/// (ms; absent: no bound). A page holds at most `limit` messages (default 1000, at most
/// `export_max_messages`) and ends after the message that reaches 4 MiB; the `x-next-cursor`
/// header then names the next page (pass it as `cursor` with the same `from`/`to`), and is
/// absent on the last. As the acting user sees it with `as`; without, unfiltered. Pages are
/// built off the async workers, at most [`super::EXPORTS_AT_ONCE`] at once (more wait their
/// turn).
#[utoipa::path(get, path = "/v1/conversations/{id}/export",
    params(("id" = String, Path), ("as" = Option<String>, Query),
        ("from" = Option<i64>, Query, description = "ms, inclusive"),
        ("to" = Option<i64>, Query, description = "ms, exclusive"),
        ("cursor" = Option<String>, Query), ("limit" = Option<u32>, Query)),
    responses((status = 200, content_type = "application/x-ndjson", body = json::Message,
            description = "one message per line",
            headers(("x-next-cursor" = String, description = "the next page's cursor; absent on the last page"))),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(super) async fn export(call: &Call<'_>, id: &str) -> Result<Response<Full<Bytes>>, Failure> {
    let max = call.app.config.export_max_messages;
    let limit = call.number("limit", EXPORT_PAGE_DEFAULT.min(max))?;
    if limit == 0 || limit > max {
        return Err(Error::LimitExceeded(format!(
            "limit must be 1 to export_max_messages ({max})"
        ))
        .into());
    }
    let from: i64 = call.number("from", 0)?;
    let to: i64 = call.number("to", 0)?;
    if from < 0 || to < 0 || (to > 0 && to <= from) {
        return Err(Failure::invalid(
            "from and to are times (ms), from before to",
        ));
    }
    let caller = call.actor()?;
    let cursor = call.param("cursor").unwrap_or_default();
    let (app, id) = (call.app.clone(), id.to_owned());
    super::export_page(call.app, move || {
        let (body, next) = export_lines(&app, &caller, &id, (from, to), cursor, limit)?;
        let mut r = super::json_lines(body);
        if let Some(next) = next
            && let Ok(v) = HeaderValue::from_str(&next)
        {
            r.headers_mut().insert(NEXT_CURSOR, v);
        }
        Ok(r)
    })
    .await
}

/// The lines of an export page, read from `cursor` through history pages of `page_max`,
/// and the next page's cursor (`None`: this was the last). The page ends after `limit`
/// messages, or after the message that brings it to [`EXPORT_PAGE_BYTES`] (the first always
/// goes); the cursor goes on right after the last message written.
fn export_lines(
    app: &crate::app::App,
    caller: &Caller,
    id: &str,
    (from, to): (i64, i64),
    mut cursor: String,
    limit: usize,
) -> Result<(Vec<u8>, Option<String>), Failure> {
    let reg = &app.registry;
    let page_max = app.config.page_max as usize;
    let mut body = Vec::new();
    let mut lines = 0;
    loop {
        let want = (limit - lines).min(page_max);
        let req = HistoryRequest {
            oldest_first: true,
            start_time: from,
            start_inclusive: true,
            end_time: to,
            end_inclusive: false,
            cursor: std::mem::take(&mut cursor),
            limit: want as u32,
            ..Default::default()
        };
        let (messages, has_more, next_cursor) = reg.history(caller, id, req)?;
        let mut messages = messages.into_iter().peekable();
        while let Some(m) = messages.next() {
            let seq = m.seq;
            serde_json::to_writer(&mut body, &json::Message::from(m))
                .map_err(|_| Failure::from(Error::Internal))?;
            body.push(b'\n');
            lines += 1;
            if body.len() >= EXPORT_PAGE_BYTES && messages.peek().is_some() {
                return Ok((body, Some(crate::registry::oldest_first_cursor_after(seq))));
            }
        }
        if !has_more {
            return Ok((body, None));
        }
        if lines >= limit || body.len() >= EXPORT_PAGE_BYTES {
            return Ok((body, Some(next_cursor)));
        }
        cursor = next_cursor;
    }
}
