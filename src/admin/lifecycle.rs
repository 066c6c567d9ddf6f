//! A user's data: deleted (`DELETE /v1/users/{user}`) and exported
//! (`GET /v1/users/{user}/export`), each in bounded steps, each one registry call.

use super::groups::Profile;
use super::json;
use super::{Answer, Call, ErrorBody, Failure, ok};
use crate::protocol::pb::MemberRole;
use crate::registry::lifecycle::ExportLine;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// This module's JSON endpoints; `None` when the path is not one of them.
pub(super) async fn route(call: &Call<'_>, method: &Method, path: &[&str]) -> Option<Answer> {
    Some(match (method, path) {
        (&Method::DELETE, ["users", user]) => delete_user(call, user).await,
        _ => return None,
    })
}

/// The export, which answers JSON lines rather than one JSON value; `None` when the path is
/// not it.
pub(super) async fn raw_route(
    call: &Call<'_>,
    method: &Method,
    path: &[&str],
) -> Option<Result<Response<Full<Bytes>>, Failure>> {
    match (method, path) {
        (&Method::GET, ["users", user, "export"]) => Some(export(call, user).await),
        _ => None,
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserDeleted {
    /// Everything is deleted; calling again changes nothing.
    pub done: bool,
    /// When not done: pass it as `cursor` to the next call (empty when done).
    pub cursor: String,
    /// Live sessions of the user this call closed.
    pub sessions_closed: usize,
    /// Messages of the user this call emptied (as a recall does).
    pub messages_emptied: u64,
    /// Conversations the user left in this call.
    pub conversations_left: u64,
}

/// Deletes a user's data, in steps: their live sessions are closed, the messages they sent
/// are emptied as a recall empties them (unless `user_delete_keep_messages`), they leave
/// every conversation (groups they own pass to the longest-standing member), and their own
/// records go (list, read positions, event log, one-way deletes, blocks, profile). One call
/// does at most `user_delete_step_max` units of work; call again with `cursor` until `done`.
#[utoipa::path(delete, path = "/v1/users/{user}",
    params(("user" = String, Path),
        ("cursor" = Option<String>, Query, description = "from the previous call's answer")),
    responses((status = 200, body = UserDeleted), (status = 400, body = ErrorBody)))]
pub(super) async fn delete_user(call: &Call<'_>, user: &str) -> Answer {
    let from = call.param("cursor").unwrap_or_default();
    let step = call.app.registry.delete_user(user, &from).await?;
    if step.done {
        tracing::info!(
            user = %crate::logsafe::clean(user, call.app.config.log_value_max_chars),
            "a user's data was deleted"
        );
    }
    ok(UserDeleted {
        done: step.done,
        cursor: step.cursor,
        sessions_closed: step.sessions_closed,
        messages_emptied: step.messages_emptied,
        conversations_left: step.conversations_left,
    })
}

/// One line of an export.
#[derive(Debug, Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Line {
    /// The user's profile (first line of the first page).
    Profile(Profile),
    /// A conversation of the user's list: membership, list entry, read position.
    Conversation {
        conversation_id: String,
        kind: &'static str,
        /// Groups: `owner`, `manager` or `member`; empty when not a member any more.
        role: &'static str,
        joined_at: i64,
        muted: bool,
        pinned_at: i64,
        /// The private ext of the list entry.
        ext: String,
        /// Removed from the list (it comes back with a newer message).
        hidden: bool,
        read_seq: u64,
        /// Messages up to this seq are cleared for the user (one-way).
        cleared_seq: u64,
    },
    /// A message the user sent (wrapped: a message has a `type` of its own).
    Message { message: json::Message },
    /// The last line of a page with more after it: pass `cursor` to get the next page.
    Next { cursor: String },
    /// The last line of the last page.
    End {},
}

/// Exports a user's data as JSON lines (`application/x-ndjson`), a page per call: their
/// profile, each conversation of their list, then the messages they sent there. A page ends
/// after the line that reaches `user_export_page_max` lines or `user_export_page_max_bytes`
/// bytes, or once `history_scan_max` messages were looked at; its last line is
/// `{"type":"next","cursor":…}` (call again with it) or `{"type":"end"}`. Pages are built off
/// the async workers, at most [`super::EXPORTS_AT_ONCE`] at once (more wait their turn).
#[utoipa::path(get, path = "/v1/users/{user}/export",
    params(("user" = String, Path),
        ("cursor" = Option<String>, Query, description = "from the previous page's last line")),
    responses((status = 200, content_type = "application/x-ndjson", body = Line,
        description = "one JSON object a line"), (status = 400, body = ErrorBody)))]
pub(super) async fn export(call: &Call<'_>, user: &str) -> Result<Response<Full<Bytes>>, Failure> {
    let from = call.param("cursor").unwrap_or_default();
    let (app, user) = (call.app.clone(), user.to_owned());
    super::export_page(call.app, move || {
        let mut out = Vec::new();
        let next = app.registry.export_user(&user, &from, |line| {
            let before = out.len();
            write(&mut out, &to_line(line))?;
            Ok(out.len() - before)
        })?;
        write(
            &mut out,
            &match next {
                Some(cursor) => Line::Next { cursor },
                None => Line::End {},
            },
        )?;
        Ok(super::json_lines(out))
    })
    .await
}

/// Appends `line` and a newline to `out`.
fn write(out: &mut Vec<u8>, line: &Line) -> Result<(), crate::registry::Error> {
    serde_json::to_writer(&mut *out, line).map_err(|_| crate::registry::Error::Internal)?;
    out.push(b'\n');
    Ok(())
}

/// An export line as it is written.
fn to_line(line: ExportLine) -> Line {
    match line {
        ExportLine::Profile(p) => Line::Profile(Profile::from(p)),
        ExportLine::Conversation {
            id,
            kind,
            entry,
            member,
            owner,
            read_seq,
        } => Line::Conversation {
            conversation_id: id,
            kind: json::kind_name(kind),
            role: match member {
                None => "",
                Some(_) if owner => "owner",
                Some(m) if m.role == MemberRole::Manager as i32 => "manager",
                Some(_) => "member",
            },
            joined_at: entry.joined_at,
            muted: entry.muted,
            pinned_at: entry.pinned_at,
            ext: entry.ext,
            hidden: entry.hidden,
            read_seq,
            cleared_seq: entry.cleared_seq,
        },
        ExportLine::Message(m) => Line::Message {
            message: json::Message::from(m),
        },
    }
}
