//! The admin API's endpoints: each a thin call into the registry. The `utoipa::path`
//! attributes are what `/openapi.json` is generated from.

use super::json;
use super::{
    Answer, Call, ErrorBody, Failure, MAX_PRESENCE_USERS, NO_SESSION, TOKEN_TTL_DEFAULT_SECS,
    TOKEN_TTL_MAX_SECS, ok,
};
use crate::protocol::pb::ErrorCode;
use crate::registry::conversation::{CreateRequest, UpdateRequest};
use crate::registry::{
    Caller, DeleteMessagesRequest, EditRequest, Error, HistoryRequest, ListRequest, SendRequest,
};
use hyper::{Method, StatusCode};

pub(super) async fn route(call: &Call<'_>, method: &Method, path: &[&str]) -> Answer {
    if let Some(answer) = super::groups::route(call, method, path).await {
        return answer;
    }
    if let Some(answer) = super::imports::route(call, method, path).await {
        return answer;
    }
    if let Some(answer) = super::lifecycle::route(call, method, path).await {
        return answer;
    }
    match (method, path) {
        (&Method::POST, ["tokens"]) => mint_token(call),
        (&Method::GET, ["presence"]) => presence(call),
        (&Method::POST, ["users", user, "disconnect"]) => disconnect(call, user),
        (&Method::GET, ["users", user, "access"]) => access(call, user),
        (&Method::POST, ["users", user, "ban"]) => ban(call, user).await,
        (&Method::DELETE, ["users", user, "ban"]) => unban(call, user).await,
        (&Method::POST, ["users", user, "revoke-tokens"]) => revoke(call, user).await,
        (&Method::GET, ["users", user, "conversations"]) => list(call, user).await,
        (&Method::GET, ["users", user, "unread"]) => unread(call, user).await,
        (&Method::POST, ["conversations"]) => create(call).await,
        (&Method::POST, ["broadcasts"]) => broadcast(call).await,
        (&Method::POST, ["backups"]) => backup(call).await,
        (&Method::GET, ["conversations", id]) => get(call, id).await,
        (&Method::PATCH, ["conversations", id]) => update(call, id).await,
        (&Method::DELETE, ["conversations", id]) => delete(call, id).await,
        (&Method::POST, ["conversations", id, "end"]) => end(call, id).await,
        (&Method::GET, ["temporary-conversations"]) => open_temporaries(call).await,
        (&Method::GET, ["conversations", id, "members"]) => members(call, id).await,
        (&Method::POST, ["conversations", id, "members"]) => add_members(call, id).await,
        (&Method::POST, ["conversations", id, "members", "remove"]) => {
            remove_members(call, id).await
        }
        (&Method::POST, ["conversations", id, "messages"]) => send(call, id).await,
        (&Method::GET, ["conversations", id, "messages"]) => history(call, id).await,
        (&Method::POST, ["conversations", id, "messages", "delete"]) => {
            delete_messages(call, id).await
        }
        (&Method::GET, ["conversations", id, "messages", mid, "versions"]) => {
            versions(call, id, mid).await
        }
        (&Method::PATCH, ["conversations", id, "messages", mid]) => edit(call, id, mid).await,
        (&Method::POST, ["conversations", id, "messages", mid, "recall"]) => {
            recall(call, id, mid).await
        }
        (&Method::GET, ["webhooks", name, "dead-letters"]) => dead_letters(call, name).await,
        (&Method::POST, ["webhooks", name, "dead-letters", "replay"]) => replay(call, name).await,
        _ => Err(Failure::not_found()),
    }
}

fn endpoint_named(call: &Call<'_>, name: &str) -> Result<(), Failure> {
    if call.app.config.webhooks.iter().any(|w| w.name == name) {
        Ok(())
    } else {
        Err(Failure::new(
            StatusCode::NOT_FOUND,
            ErrorCode::ErrorInvalidArgument,
            format!("no webhook endpoint named {name:?}"),
        ))
    }
}

/// An endpoint's dead letters (events whose batch ran out of attempts), oldest first: up to
/// `limit`, and up to `admin_page_max_bytes` of events' JSON (the first always goes).
#[utoipa::path(get, path = "/v1/webhooks/{name}/dead-letters",
    params(("name" = String, Path), ("after" = Option<u64>, Query, description = "outbox seq"),
        ("limit" = Option<u32>, Query, description = "at most 1000, default 100")),
    responses((status = 200, body = json::DeadLetters), (status = 404, body = ErrorBody)))]
pub(super) async fn dead_letters(call: &Call<'_>, name: &str) -> Answer {
    endpoint_named(call, name)?;
    let limit = call.number("limit", 100usize)?.clamp(1, 1000);
    let after = call.number("after", 0u64)?;
    let name = name.to_owned();
    super::blocking_page(call.app, move |app| {
        let max_bytes = app.config.admin_page_max_bytes;
        let rows = crate::webhooks::dead_letters(app, &name, after, limit, max_bytes)
            .map_err(Error::from)?;
        ok(json::DeadLetters {
            next_after: rows.last().map_or(0, |(seq, _)| *seq),
            events: rows.into_iter().map(|(_, e)| e).collect(),
        })
    })
    .await
}

/// Sends an endpoint's oldest dead letters to it again, as one POST of up to `limit` (default
/// 100) events and `webhook_batch_max_bytes` of body (the first always goes); the ones it
/// takes are deleted. `more`: dead letters are left, call again for the next batch.
#[utoipa::path(post, path = "/v1/webhooks/{name}/dead-letters/replay",
    params(("name" = String, Path), ("limit" = Option<u32>, Query)),
    responses((status = 200, body = json::Replayed), (status = 502, body = ErrorBody)))]
pub(super) async fn replay(call: &Call<'_>, name: &str) -> Answer {
    endpoint_named(call, name)?;
    let limit = call.number("limit", 100usize)?.clamp(1, 1000);
    match crate::webhooks::replay(call.app, name, limit).await {
        Ok((replayed, more)) => ok(json::Replayed { replayed, more }),
        Err(why) => Err(Failure::new(
            StatusCode::BAD_GATEWAY,
            ErrorCode::ErrorUnavailable,
            format!("the endpoint did not take them: {why}"),
        )),
    }
}

/// Mints a client token for a user.
///
/// RS256 when `jwt_rs256_private_key` is set, else HS256: for backends in languages without
/// a JWT library.
#[utoipa::path(post, path = "/v1/tokens", request_body = json::MintToken,
    responses((status = 200, body = json::Token), (status = 400, body = ErrorBody)))]
pub(super) fn mint_token(call: &Call<'_>) -> Answer {
    let body: json::MintToken = call.json()?;
    let ttl = body.ttl_secs.unwrap_or(TOKEN_TTL_DEFAULT_SECS);
    if !(1..=TOKEN_TTL_MAX_SECS).contains(&ttl) {
        return Err(Failure::invalid(format!(
            "ttl_secs must be 1..={TOKEN_TTL_MAX_SECS}"
        )));
    }
    call.app.registry.check_user_id(&body.user)?;
    let now = call.app.clock.now_ms();
    let config = &call.app.config;
    let rs256 = config.jwt_rs256_private_key.is_some();
    match crate::auth::mint_with_id(config, &body.user, ttl, now, rs256) {
        Ok((token, jti)) => ok(json::Token {
            token,
            expires_at: (now / 1000 + ttl) * 1000,
            jti,
        }),
        Err(crate::auth::KeyError::NoMethod) => Err(Failure::new(
            StatusCode::CONFLICT,
            ErrorCode::ErrorNotAllowedForKind,
            "this server has no signing key (jwt_hs256_secret or jwt_rs256_private_key)",
        )),
        Err(e) => {
            tracing::error!(error = %e, "minting a token failed");
            Err(Error::Internal.into())
        }
    }
}

/// Which users are online, and on how many sessions.
#[utoipa::path(get, path = "/v1/presence",
    params(("users" = String, Query, description = "up to 100 user ids, comma-separated")),
    responses((status = 200, body = json::Presence), (status = 422, body = ErrorBody)))]
pub(super) fn presence(call: &Call<'_>) -> Answer {
    let users: Vec<String> = call
        .param("users")
        .unwrap_or_default()
        .split(',')
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect();
    if users.is_empty() {
        return Err(Failure::invalid("name the users: ?users=a,b,c"));
    }
    if users.len() > MAX_PRESENCE_USERS {
        return Err(Error::LimitExceeded(format!(
            "{} users named; at most {MAX_PRESENCE_USERS}",
            users.len()
        ))
        .into());
    }
    for u in &users {
        call.app.registry.check_user_id(u)?;
    }
    let users = call
        .app
        .registry
        .sessions_of(&users)
        .into_iter()
        .map(|(user, sessions)| json::UserPresence {
            user,
            online: sessions > 0,
            sessions,
        })
        .collect();
    ok(json::Presence { users })
}

/// Closes a user's sessions (on one device tag, when given).
///
/// Native sessions get close code 4012; LeanCloud clients `session/closed` 4115.
#[utoipa::path(post, path = "/v1/users/{user}/disconnect", request_body = json::Disconnect,
    params(("user" = String, Path)),
    responses((status = 200, body = json::Disconnected)))]
pub(super) fn disconnect(call: &Call<'_>, user: &str) -> Answer {
    let body: json::Disconnect = call.json()?;
    let closed = call.app.registry.disconnect(user, body.device.as_deref())?;
    ok(json::Disconnected { closed })
}

/// A user's conversation list, as `ListConversations`.
#[utoipa::path(get, path = "/v1/users/{user}/conversations",
    params(("user" = String, Path), ("cursor" = Option<String>, Query),
        ("limit" = Option<u32>, Query), ("kind" = Option<String>, Query),
        ("pinned_only" = Option<bool>, Query), ("updated_after" = Option<i64>, Query),
        ("updated_before" = Option<i64>, Query), ("omit_last_message" = Option<bool>, Query)),
    responses((status = 200, body = json::ListPage)))]
pub(super) async fn list(call: &Call<'_>, user: &str) -> Answer {
    call.app.registry.check_user_id(user)?;
    let caller = Caller::user(user.into(), NO_SESSION);
    let kind = match call.param("kind") {
        None => 0,
        Some(k) => json::parse_kind(&k)
            .ok_or_else(|| Failure::invalid("kind must be direct, group or temporary"))?
            as i32,
    };
    let req = ListRequest {
        cursor: call.param("cursor").unwrap_or_default(),
        limit: call.number("limit", 0)?,
        updated_after: call.number("updated_after", 0)?,
        updated_before: call.number("updated_before", 0)?,
        pinned_only: call.flag("pinned_only")?,
        kind,
        omit_last_message: call.flag("omit_last_message")?,
        max_bytes: call.app.config.admin_page_max_bytes,
    };
    super::blocking_page(call.app, move |app| {
        let (entries, next_cursor, has_more) = app.registry.list_conversations(&caller, req)?;
        ok(json::ListPage {
            entries: entries.into_iter().map(json::ListEntry::from).collect(),
            next_cursor,
            has_more,
        })
    })
    .await
}

/// A user's unread counts, as sent at login: the first `login_summary_max` entries of their
/// list, and no more than `admin_page_max_bytes` of them (the first always goes); when more
/// follow, `next_cursor` goes on with `GET /v1/users/{user}/conversations`.
#[utoipa::path(get, path = "/v1/users/{user}/unread", params(("user" = String, Path)),
    responses((status = 200, body = json::UnreadCounts)))]
pub(super) async fn unread(call: &Call<'_>, user: &str) -> Answer {
    call.app.registry.check_user_id(user)?;
    let user = user.to_owned();
    super::blocking_page(call.app, move |app| {
        let max_bytes = app.config.admin_page_max_bytes;
        let summary = app.registry.unread_summary(&user, true, max_bytes)?;
        ok(json::UnreadCounts {
            entries: summary
                .entries
                .into_iter()
                .map(json::Unread::from)
                .collect(),
            next_cursor: summary.list_cursor,
        })
    })
    .await
}

/// Creates a conversation with the acting user as creator.
///
/// Direct conversations are idempotent on the pair; `unique` temporary and group ones on the
/// member set; any create with an `Idempotency-Key` header on the key (a retry with the same
/// key and request gets the conversation it created; another request with the key, 400).
#[utoipa::path(post, path = "/v1/conversations", request_body = json::CreateConversation,
    params(("as" = String, Query, description = "the acting user"),
        ("Idempotency-Key" = Option<String>, Header,
            description = "up to 255 printable ASCII characters, kept idempotency_ttl_secs")),
    responses((status = 201, body = json::Conversation), (status = 422, body = ErrorBody)))]
pub(super) async fn create(call: &Call<'_>) -> Answer {
    let body: json::CreateConversation = call.json()?;
    let kind = json::parse_kind(&body.kind)
        .ok_or_else(|| Failure::invalid("kind must be direct, group or temporary"))?;
    let req = CreateRequest {
        kind,
        members: body.members,
        name: body.name,
        attributes: body.attributes,
        ttl_secs: body.ttl_secs,
        unique: body.unique,
        idempotency: None,
    };
    let caller = call.caller()?;
    let reg = &call.app.registry;
    let c = match call.idempotency_key {
        Some(key) => {
            // The same acting user and the same body make the same request.
            use sha2::Digest;
            let mut h = sha2::Sha256::new();
            h.update(caller.user.as_bytes());
            h.update([0]);
            h.update(call.body);
            reg.create_once(&caller, req, key, h.finalize().to_vec())
                .await?
                .0
        }
        None => reg.create(&caller, req).await?,
    };
    let (_, value) = ok(json::Conversation::from(c))?;
    Ok((StatusCode::CREATED, value))
}

/// One conversation, as the acting user sees it (without `as`: as the backend, for any
/// conversation).
#[utoipa::path(get, path = "/v1/conversations/{id}",
    params(("id" = String, Path), ("as" = Option<String>, Query)),
    responses((status = 200, body = json::Conversation), (status = 404, body = ErrorBody)))]
pub(super) async fn get(call: &Call<'_>, id: &str) -> Answer {
    let (actor, id) = (call.actor()?, id.to_owned());
    super::blocking_page(call.app, move |app| {
        ok(json::Conversation::from(app.registry.get(&actor, &id)?))
    })
    .await
}

/// Changes a conversation's name and attributes; without `as`, the backend also changes a
/// temporary conversation's attributes and lifetime (`ttl_secs`).
#[utoipa::path(patch, path = "/v1/conversations/{id}", request_body = json::UpdateConversation,
    params(("id" = String, Path), ("as" = Option<String>, Query)),
    responses((status = 200, body = json::Conversation)))]
pub(super) async fn update(call: &Call<'_>, id: &str) -> Answer {
    let body: json::UpdateConversation = call.json()?;
    let req = UpdateRequest {
        name: body.name,
        set_attributes: body.set_attributes,
        remove_attributes: body.remove_attributes,
        ttl_secs: body.ttl_secs,
    };
    ok(json::Conversation::from(
        call.app.registry.update(&call.actor()?, id, req).await?,
    ))
}

/// Deletes a conversation for everyone; `purge` drops its messages too.
#[utoipa::path(delete, path = "/v1/conversations/{id}",
    params(("id" = String, Path), ("as" = Option<String>, Query), ("purge" = Option<bool>, Query)),
    responses((status = 200, body = json::Empty)))]
pub(super) async fn delete(call: &Call<'_>, id: &str) -> Answer {
    call.app
        .registry
        .delete_conversation(&call.actor()?, id, call.flag("purge")?)
        .await?;
    ok(json::Empty {})
}

/// A conversation's members, sorted, a page at a time.
#[utoipa::path(get, path = "/v1/conversations/{id}/members",
    params(("id" = String, Path), ("as" = Option<String>, Query), ("cursor" = Option<String>, Query),
        ("limit" = Option<u32>, Query)),
    responses((status = 200, body = json::MemberPage)))]
pub(super) async fn members(call: &Call<'_>, id: &str) -> Answer {
    let (actor, id) = (call.actor()?, id.to_owned());
    let (cursor, limit) = (
        call.param("cursor").unwrap_or_default(),
        call.number("limit", 0)?,
    );
    super::blocking_page(call.app, move |app| {
        let (members, next_cursor, has_more) =
            app.registry.list_members(&actor, &id, &cursor, limit)?;
        ok(json::MemberPage {
            members,
            next_cursor,
            has_more,
        })
    })
    .await
}

/// Adds members (without `as`: as the backend, to a group or, within
/// `max_temporary_members`, a temporary conversation).
#[utoipa::path(post, path = "/v1/conversations/{id}/members", request_body = json::Members,
    params(("id" = String, Path), ("as" = Option<String>, Query)),
    responses((status = 200, body = json::Conversation)))]
pub(super) async fn add_members(call: &Call<'_>, id: &str) -> Answer {
    let body: json::Members = call.json()?;
    ok(json::Conversation::from(
        call.app
            .registry
            .add_members(&call.actor()?, id, &body.members)
            .await?,
    ))
}

/// Removes members (without `as`: as the backend, from a group or a temporary conversation,
/// which keeps at least one).
#[utoipa::path(post, path = "/v1/conversations/{id}/members/remove",
    request_body = json::Members, params(("id" = String, Path), ("as" = Option<String>, Query)),
    responses((status = 200, body = json::Conversation), (status = 403, body = ErrorBody)))]
pub(super) async fn remove_members(call: &Call<'_>, id: &str) -> Answer {
    let body: json::Members = call.json()?;
    ok(json::Conversation::from(
        call.app
            .registry
            .remove_members(&call.actor()?, id, &body.members)
            .await?,
    ))
}

/// Sends a message as the acting user, or without `as` as the system (`system_sender`, in
/// any conversation; `silent` moves no list entry and no unread count); answered once
/// durable.
#[utoipa::path(post, path = "/v1/conversations/{id}/messages", request_body = json::SendMessage,
    params(("id" = String, Path), ("as" = Option<String>, Query)),
    responses((status = 200, body = json::SendAck), (status = 403, body = ErrorBody)))]
pub(super) async fn send(call: &Call<'_>, id: &str) -> Answer {
    let ack = call
        .app
        .registry
        .send(&call.actor()?, id, send_request(call)?)
        .await?;
    ack_json(ack)
}

/// The message a send request's body describes.
pub(super) fn send_request(call: &Call<'_>) -> Result<SendRequest, Failure> {
    let body: json::SendMessage = call.json()?;
    Ok(SendRequest {
        client_message_id: body.client_message_id,
        kind: body.kind,
        content: json::content_bytes(body.text, body.content).map_err(Failure::invalid)?,
        attributes: body.attributes,
        mentions: body.mentions,
        mention_all: body.mention_all,
        transient: body.transient,
        want_receipts: body.want_receipts,
        silent: body.silent,
    })
}

/// A send's answer.
pub(super) fn ack_json(ack: crate::protocol::pb::SendAck) -> Answer {
    ok(json::SendAck {
        message_id: ack.message_id,
        seq: ack.seq,
        server_time: ack.server_time,
        duplicate: ack.duplicate,
    })
}

/// History as the acting user sees it, as `FetchHistory`; without `as`, unfiltered (for
/// moderation: nobody's one-way deletes apply).
#[utoipa::path(get, path = "/v1/conversations/{id}/messages",
    params(("id" = String, Path), ("as" = Option<String>, Query), ("before_seq" = Option<u64>, Query),
        ("limit" = Option<u32>, Query), ("oldest_first" = Option<bool>, Query),
        ("start_seq" = Option<u64>, Query), ("start_time" = Option<i64>, Query),
        ("end_seq" = Option<u64>, Query), ("end_time" = Option<i64>, Query),
        ("cursor" = Option<String>, Query)),
    responses((status = 200, body = json::MessagePage)))]
pub(super) async fn history(call: &Call<'_>, id: &str) -> Answer {
    let req = HistoryRequest {
        before_seq: call.number("before_seq", 0)?,
        limit: call.number("limit", 0)?,
        oldest_first: call.flag("oldest_first")?,
        start_seq: call.number("start_seq", 0)?,
        start_time: call.number("start_time", 0)?,
        end_seq: call.number("end_seq", 0)?,
        end_time: call.number("end_time", 0)?,
        cursor: call.param("cursor").unwrap_or_default(),
        max_bytes: call.app.config.admin_page_max_bytes,
        ..Default::default()
    };
    let (actor, id) = (call.actor()?, id.to_owned());
    super::blocking_page(call.app, move |app| {
        let (messages, has_more, next_cursor) = app.registry.history(&actor, &id, req)?;
        ok(json::MessagePage {
            messages: messages.into_iter().map(json::Message::from).collect(),
            has_more,
            next_cursor,
        })
    })
    .await
}

/// Edits the acting user's message (within `edit_window_secs`); without `as`, any message,
/// however old.
#[utoipa::path(patch, path = "/v1/conversations/{id}/messages/{message_id}",
    request_body = json::EditMessage,
    params(("id" = String, Path), ("message_id" = String, Path), ("as" = Option<String>, Query)),
    responses((status = 200, body = json::Message), (status = 409, body = ErrorBody)))]
pub(super) async fn edit(call: &Call<'_>, id: &str, message_id: &str) -> Answer {
    let body: json::EditMessage = call.json()?;
    let req = EditRequest {
        message_id: message_id.to_owned(),
        content: json::content_bytes(body.text, body.content).map_err(Failure::invalid)?,
        replace_attributes: body.attributes.is_some(),
        attributes: body.attributes.unwrap_or_default(),
    };
    ok(json::Message::from(
        call.app.registry.edit(&call.actor()?, id, req).await?,
    ))
}

/// Recalls the acting user's message (within `recall_window_secs`, or another's as the
/// group's role table allows); without `as`, any message, however old.
#[utoipa::path(post, path = "/v1/conversations/{id}/messages/{message_id}/recall",
    params(("id" = String, Path), ("message_id" = String, Path), ("as" = Option<String>, Query)),
    responses((status = 200, body = json::Message), (status = 409, body = ErrorBody)))]
pub(super) async fn recall(call: &Call<'_>, id: &str, message_id: &str) -> Answer {
    ok(json::Message::from(
        call.app
            .registry
            .recall(&call.actor()?, id, message_id)
            .await?,
    ))
}

/// Ends a temporary conversation now (the backend only): members get the EXPIRED event, its
/// messages are purged, webhooks get `conversation.expired`.
#[utoipa::path(post, path = "/v1/conversations/{id}/end", params(("id" = String, Path)),
    responses((status = 200, body = json::Empty), (status = 409, body = ErrorBody)))]
pub(super) async fn end(call: &Call<'_>, id: &str) -> Answer {
    call.app.registry.end_temporary(&call.actor()?, id).await?;
    ok(json::Empty {})
}

/// The open temporary conversations, newest activity first, of one member when `member` is
/// given: the waiting customer-service chats.
#[utoipa::path(get, path = "/v1/temporary-conversations",
    params(("member" = Option<String>, Query), ("cursor" = Option<String>, Query),
        ("limit" = Option<u32>, Query)),
    responses((status = 200, body = json::OpenTemporaries), (status = 422, body = ErrorBody)))]
pub(super) async fn open_temporaries(call: &Call<'_>) -> Answer {
    let member = call.param("member");
    let (cursor, limit) = (
        call.param("cursor").unwrap_or_default(),
        call.number("limit", 0)?,
    );
    super::blocking_page(call.app, move |app| {
        let (page, next_cursor, has_more) =
            app.registry
                .open_temporaries(member.as_deref(), &cursor, limit)?;
        temporaries_json(page, next_cursor, has_more)
    })
    .await
}

/// A page of open temporary conversations as JSON.
fn temporaries_json(
    page: Vec<crate::registry::expiry::OpenTemporary>,
    next_cursor: String,
    has_more: bool,
) -> Answer {
    ok(json::OpenTemporaries {
        conversations: page
            .into_iter()
            .map(|t| json::OpenTemporary {
                conversation: json::Conversation::from(t.conversation),
                last_activity: t.last_activity,
                last_message: t.last_message.map(json::Message::from),
            })
            .collect(),
        next_cursor,
        has_more,
    })
}

/// Deletes messages one-way for the acting user (only their view changes), as
/// `DeleteMessages`: some message ids, or everything before a time.
#[utoipa::path(post, path = "/v1/conversations/{id}/messages/delete",
    request_body = json::DeleteMessages,
    params(("id" = String, Path), ("as" = String, Query, description = "the user")),
    responses((status = 200, body = json::Empty), (status = 422, body = ErrorBody)))]
pub(super) async fn delete_messages(call: &Call<'_>, id: &str) -> Answer {
    let body: json::DeleteMessages = call.json()?;
    let req = DeleteMessagesRequest {
        message_ids: body.message_ids,
        before_time: body.before_time,
        inclusive: body.inclusive,
    };
    call.app
        .registry
        .delete_messages(&call.caller()?, id, req)
        .await?;
    ok(json::Empty {})
}

/// A message's kept versions, oldest first, and the message as it now is (the backend only;
/// versions are kept while `keep_message_versions` is on).
#[utoipa::path(get, path = "/v1/conversations/{id}/messages/{message_id}/versions",
    params(("id" = String, Path), ("message_id" = String, Path)),
    responses((status = 200, body = json::MessageVersions), (status = 404, body = ErrorBody)))]
pub(super) async fn versions(call: &Call<'_>, id: &str, message_id: &str) -> Answer {
    let (actor, id, message_id) = (call.actor()?, id.to_owned(), message_id.to_owned());
    super::blocking_page(call.app, move |app| {
        let (versions, current) = app.registry.message_versions(&actor, &id, &message_id)?;
        ok(json::MessageVersions {
            versions: versions.into_iter().map(json::Message::from).collect(),
            current: json::Message::from(current),
        })
    })
    .await
}

fn access_json(a: crate::protocol::pb::UserAccess) -> json::Access {
    json::Access {
        banned: a.banned_until > 0,
        banned_until: a.banned_until,
        ban_reason: a.ban_reason,
        banned_at: a.banned_at,
        tokens_revoked_before: a.tokens_revoked_before,
    }
}

/// Whether a user is banned, and since when their tokens are revoked.
#[utoipa::path(get, path = "/v1/users/{user}/access", params(("user" = String, Path)),
    responses((status = 200, body = json::Access)))]
pub(super) fn access(call: &Call<'_>, user: &str) -> Answer {
    ok(access_json(call.app.registry.access_of(user)?))
}

/// Bans a user: their logins are refused (native: close 4045 `CLOSE_BANNED`; LeanCloud:
/// 4115 with the reason) and their live sessions closed, until `until` (ms), for
/// `duration_secs`, or (neither) until lifted.
#[utoipa::path(post, path = "/v1/users/{user}/ban", request_body = json::Ban,
    params(("user" = String, Path)),
    responses((status = 200, body = json::Banned), (status = 400, body = ErrorBody)))]
pub(super) async fn ban(call: &Call<'_>, user: &str) -> Answer {
    let body: json::Ban = call.json()?;
    let now = call.app.clock.now_ms();
    let until = match (body.until, body.duration_secs) {
        (Some(_), Some(_)) => {
            return Err(Failure::invalid("give until or duration_secs, not both"));
        }
        (Some(t), None) => t,
        (None, Some(d)) => {
            now.saturating_add(i64::try_from(d).unwrap_or(i64::MAX).saturating_mul(1000))
        }
        (None, None) => crate::registry::access::BANNED_FOREVER,
    };
    let (a, closed) = call
        .app
        .registry
        .set_ban(user, Some((until, body.reason)))
        .await?;
    ok(json::Banned {
        access: access_json(a),
        closed,
    })
}

/// Lifts a user's ban.
#[utoipa::path(delete, path = "/v1/users/{user}/ban", params(("user" = String, Path)),
    responses((status = 200, body = json::Access)))]
pub(super) async fn unban(call: &Call<'_>, user: &str) -> Answer {
    let (a, _) = call.app.registry.set_ban(user, None).await?;
    ok(access_json(a))
}

/// Revokes a user's tokens: every one issued before this second (`iat`; LeanCloud logins by
/// their signature's or session token's time), or with `jti` only that one (kept until
/// `expires_at`, ms; default 30 days from now). The sessions they logged in are closed
/// (4046 `CLOSE_TOKEN_REVOKED`).
#[utoipa::path(post, path = "/v1/users/{user}/revoke-tokens", request_body = json::Revoke,
    params(("user" = String, Path)),
    responses((status = 200, body = json::Disconnected), (status = 422, body = ErrorBody)))]
pub(super) async fn revoke(call: &Call<'_>, user: &str) -> Answer {
    let body: json::Revoke = call.json()?;
    let reg = &call.app.registry;
    let closed = match body.jti {
        Some(jti) => {
            let until = body
                .expires_at
                .unwrap_or_else(|| call.app.clock.now_ms() + TOKEN_TTL_MAX_SECS * 1000);
            reg.revoke_token(user, &jti, until).await?
        }
        None if body.expires_at.is_some() => {
            return Err(Failure::invalid("expires_at goes with jti"));
        }
        None => reg.revoke_tokens(user).await?,
    };
    ok(json::Disconnected { closed })
}

/// Sends one system message (as `system_sender`) to many users, each in their direct
/// conversation with the system, and to many conversations; batched, and idempotent by
/// `broadcast_id`: sent again, it reaches only the targets it missed.
#[utoipa::path(post, path = "/v1/broadcasts", request_body = json::Broadcast,
    responses((status = 200, body = json::BroadcastResult), (status = 422, body = ErrorBody)))]
pub(super) async fn broadcast(call: &Call<'_>) -> Answer {
    let body: json::Broadcast = call.json()?;
    let req = crate::registry::broadcast::BroadcastRequest {
        id: body.broadcast_id.clone(),
        users: body.users,
        conversations: body.conversations,
        message: SendRequest {
            client_message_id: String::new(),
            kind: body.kind,
            content: json::content_bytes(body.text, body.content).map_err(Failure::invalid)?,
            attributes: body.attributes,
            transient: body.transient,
            silent: body.silent,
            ..SendRequest::default()
        },
    };
    let caller = Caller::admin(&call.app.config.system_sender);
    let out = call.app.registry.broadcast(&caller, req).await?;
    ok(json::BroadcastResult {
        broadcast_id: body.broadcast_id,
        sent: out.sent,
        duplicates: out.duplicates,
        failed: out
            .failed
            .into_iter()
            .map(|(target, e)| json::BroadcastFailure {
                target,
                code: e.code() as i32,
                message: e.to_string(),
            })
            .collect(),
    })
}

/// Backs up the running store: a consistent snapshot (everything acknowledged before the call)
/// written as a dump into `backup_dir`, restorable with `tidings store import`. One at a time.
#[utoipa::path(post, path = "/v1/backups",
    responses((status = 200, body = json::Backup), (status = 409, body = ErrorBody)))]
pub(super) async fn backup(call: &Call<'_>) -> Answer {
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let Some(dir) = call.app.config.backup_dir.clone() else {
        return Err(Failure::new(
            StatusCode::CONFLICT,
            ErrorCode::ErrorNotAllowedForKind,
            "no backup_dir is configured",
        ));
    };
    let _one = ONE_AT_A_TIME.lock().await;
    let store = call.app.store.clone();
    let now = call.app.clock.now_ms();
    let done =
        tokio::task::spawn_blocking(move || crate::store::dump::backup(store.as_ref(), &dir, now))
            .await;
    match done {
        Ok(Ok((path, entries, bytes))) => {
            tracing::info!(file = %path.display(), entries, bytes, "online backup written");
            ok(json::Backup {
                file: path.display().to_string(),
                entries,
                bytes,
            })
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "online backup failed");
            Err(Failure::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::ErrorInternal,
                format!("the backup failed: {e}"),
            ))
        }
        Err(_) => Err(Error::Internal.into()),
    }
}
