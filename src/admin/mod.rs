//! The admin HTTP API: the app backend's door to the registry.
//!
//! Served on its own listener (`admin_listen`) only when `admin_api_keys` holds a key. Every
//! `/v1/…` request carries `Authorization: Bearer <key>`; keys are compared in constant time,
//! and a request without a valid one gets 401 and nothing else. JSON in and out; errors are
//! `{"code", "message"}` with the WebSocket protocol's `ErrorCode` numbers.
//!
//! Each operation is a thin call into the [`Registry`](crate::registry::Registry) the
//! WebSocket uses. Operations that act as a user name them with the `as` query parameter and
//! are checked exactly as that user's own request would be; their pushes reach all of that
//! user's sessions.

pub mod json;

use crate::app::App;
use crate::protocol::pb::ErrorCode;
use crate::registry::conversation::{CreateRequest, UpdateRequest};
use crate::registry::{Caller, EditRequest, Error, HistoryRequest, ListRequest, SendRequest};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Users one presence request may name.
pub const MAX_PRESENCE_USERS: usize = 100;
/// Default and longest lifetime of a token minted by `POST /v1/tokens`, seconds.
pub const TOKEN_TTL_DEFAULT_SECS: i64 = 3_600;
pub const TOKEN_TTL_MAX_SECS: i64 = 30 * 86_400;

/// The session id of requests made through the admin API: no session, so pushes they cause
/// reach every session of the acting user.
const NO_SESSION: u64 = 0;

/// Binds `admin_listen` when the API is on (some key is configured and the address is not
/// empty). Says at start why it is off otherwise.
pub fn bind(config: &crate::config::Config) -> anyhow::Result<Option<TcpListener>> {
    if config.admin_listen.is_empty() {
        return Ok(None);
    }
    if config.admin_api_keys.is_empty() {
        tracing::info!(
            "admin API off: no admin_api_keys configured (generate one with `tidings secret`)"
        );
        return Ok(None);
    }
    use anyhow::Context;
    let addr: SocketAddr = std::net::ToSocketAddrs::to_socket_addrs(&config.admin_listen)
        .with_context(|| format!("admin_listen {:?}", config.admin_listen))?
        .next()
        .with_context(|| format!("admin_listen {:?} resolves to nothing", config.admin_listen))?;
    let std = std::net::TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
    std.set_nonblocking(true)?;
    Ok(Some(TcpListener::from_std(std)?))
}

/// Serves the admin API until `stop` is cancelled, then lets requests in progress finish (at
/// most `shutdown_grace_ms`). `draining` is the server's shutdown: `/readyz` answers 503 once
/// it is cancelled.
pub async fn run(
    listener: TcpListener,
    app: Arc<App>,
    draining: CancellationToken,
    stop: CancellationToken,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(
        app.config.admin_max_connections,
    ));
    let conns = TaskTracker::new();
    let ending = CancellationToken::new();
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("never closed"),
            _ = stop.cancelled() => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors, most likely: wait a little, as the main
                    // listener does, instead of spinning.
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        let (app, draining, ending) = (app.clone(), draining.clone(), ending.clone());
        conns.spawn(async move {
            serve(stream, peer, app, draining, ending).await;
            drop(permit);
        });
    }
    drop(listener);
    ending.cancel();
    conns.close();
    let grace = Duration::from_millis(app.config.shutdown_grace_ms);
    if tokio::time::timeout(grace, conns.wait()).await.is_err() {
        tracing::warn!("admin requests still running after the grace period; dropped");
    }
}

async fn serve(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    app: Arc<App>,
    draining: CancellationToken,
    ending: CancellationToken,
) {
    // Request headers within the public listener's handshake bound.
    let header_timeout = Duration::from_millis(app.config.handshake_timeout_ms);
    let service = hyper::service::service_fn(move |req| {
        let (app, draining) = (app.clone(), draining.clone());
        async move { Ok::<_, std::convert::Infallible>(handle(req, &app, &draining).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = ending.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "admin connection ended with an error");
    }
}

/// A failed request: HTTP status, protocol error code, message.
#[derive(Debug)]
struct Failure {
    status: StatusCode,
    code: ErrorCode,
    message: String,
    retry_after_ms: u64,
}

impl Failure {
    fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Failure {
            status,
            code,
            message: message.into(),
            retry_after_ms: 0,
        }
    }
    fn invalid(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::ErrorInvalidArgument,
            message,
        )
    }
    fn not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            ErrorCode::ErrorUnknownRequest,
            "no such endpoint",
        )
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let status = match &e {
            Error::ConversationNotFound | Error::NotInList | Error::MessageNotFound => {
                StatusCode::NOT_FOUND
            }
            Error::ConversationExpired => StatusCode::GONE,
            Error::NotAMember | Error::PermissionDenied(_) => StatusCode::FORBIDDEN,
            Error::NotAllowedForKind { .. } | Error::WindowExpired(_) => StatusCode::CONFLICT,
            Error::InvalidArgument(_) | Error::UnknownRequest | Error::AlreadyLoggedIn => {
                StatusCode::BAD_REQUEST
            }
            Error::LimitExceeded(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Error::MessageTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Error::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Error::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Error::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        };
        let retry_after_ms = match &e {
            Error::RateLimited { retry_after_ms } => *retry_after_ms,
            _ => 0,
        };
        Failure {
            status,
            code: e.code(),
            message: e.to_string(),
            retry_after_ms,
        }
    }
}

type Answer = Result<(StatusCode, serde_json::Value), Failure>;

fn ok(value: impl Serialize) -> Answer {
    Ok((
        StatusCode::OK,
        serde_json::to_value(value).map_err(|_| Failure::from(Error::Internal))?,
    ))
}

fn respond(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn failure(f: Failure) -> Response<Full<Bytes>> {
    let mut body = serde_json::json!({"code": f.code as i32, "message": f.message});
    if f.retry_after_ms > 0 {
        body["retry_after_ms"] = f.retry_after_ms.into();
    }
    let mut r = respond(f.status, &body);
    if f.status == StatusCode::UNAUTHORIZED {
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    if f.retry_after_ms > 0 {
        let secs = f.retry_after_ms.div_ceil(1000).to_string();
        if let Ok(v) = HeaderValue::from_str(&secs) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    r
}

/// Whether `presented` equals one of `keys`, in time that does not depend on where they
/// differ (every key is compared, every byte of it).
fn key_matches(keys: &[String], presented: &[u8]) -> bool {
    let mut found = 0u8;
    for key in keys {
        let key = key.as_bytes();
        let mut diff = u8::from(key.len() != presented.len());
        for (i, k) in key.iter().enumerate() {
            diff |= k ^ presented.get(i).copied().unwrap_or(0);
        }
        found |= u8::from(std::hint::black_box(diff) == 0);
    }
    found == 1
}

fn authorized(req: &Request<Incoming>, keys: &[String]) -> bool {
    let Some(value) = req.headers().get(header::AUTHORIZATION) else {
        return false;
    };
    let value = value.as_bytes();
    let scheme = b"Bearer ";
    value.len() > scheme.len()
        && value[..scheme.len()].eq_ignore_ascii_case(scheme)
        && key_matches(keys, &value[scheme.len()..])
}

async fn handle(
    req: Request<Incoming>,
    app: &Arc<App>,
    draining: &CancellationToken,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/livez") => {
            return respond(StatusCode::OK, &serde_json::json!({"status": "ok"}));
        }
        (&Method::GET, "/readyz") => return crate::server::readyz(app, draining.is_cancelled()),
        (&Method::GET, "/metrics") => {
            let mut r = Response::new(Full::new(Bytes::from(app.metrics.encode())));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            return r;
        }
        _ => {}
    }
    if !path.starts_with("/v1/") {
        return failure(Failure::not_found());
    }
    if !authorized(&req, &app.config.admin_api_keys) {
        return failure(Failure::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::ErrorTokenInvalid,
            "a valid API key is required (Authorization: Bearer <key>)",
        ));
    }
    let method = req.method().clone();
    let query = req.uri().query().map(str::to_owned);
    let body = match Limited::new(req.into_body(), app.config.admin_max_body_bytes)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return failure(Failure::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::ErrorLimitExceeded,
                format!(
                    "the body is over admin_max_body_bytes ({})",
                    app.config.admin_max_body_bytes
                ),
            ));
        }
        Err(_) => return failure(Failure::invalid("the request body could not be read")),
    };
    let segments: Vec<&str> = path["/v1/".len()..].split('/').collect();
    let call = Call {
        app,
        query: query.as_deref(),
        body: &body,
    };
    match route(&call, &method, &segments).await {
        Ok((status, value)) => respond(status, &value),
        Err(f) => failure(f),
    }
}

/// One request's parts, for the handlers.
struct Call<'a> {
    app: &'a Arc<App>,
    query: Option<&'a str>,
    body: &'a Bytes,
}

impl Call<'_> {
    fn param(&self, name: &str) -> Option<String> {
        crate::server::query_param(self.query, name)
    }

    /// A numeric query parameter; absent is `default`.
    fn number<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, Failure> {
        match self.param(name) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| Failure::invalid(format!("{name} must be a number"))),
        }
    }

    fn flag(&self, name: &str) -> Result<bool, Failure> {
        match self.param(name).as_deref() {
            None | Some("false" | "0") => Ok(false),
            Some("true" | "1") => Ok(true),
            Some(_) => Err(Failure::invalid(format!("{name} must be true or false"))),
        }
    }

    /// The acting user (`as`), checked as a login's user id would be.
    fn caller(&self) -> Result<Caller, Failure> {
        let user = self
            .param("as")
            .ok_or_else(|| Failure::invalid("name the acting user with ?as=<user id>"))?;
        self.app.registry.check_user_id(&user)?;
        Ok(Caller {
            user: user.as_str().into(),
            session: NO_SESSION,
        })
    }

    fn json<T: DeserializeOwned>(&self) -> Result<T, Failure> {
        if self.body.is_empty() {
            return serde_json::from_slice(b"{}")
                .map_err(|e| Failure::invalid(format!("a JSON body is required: {e}")));
        }
        serde_json::from_slice(self.body).map_err(|e| Failure::invalid(format!("bad JSON: {e}")))
    }
}

async fn route(call: &Call<'_>, method: &Method, path: &[&str]) -> Answer {
    let reg = &call.app.registry;
    match (method, path) {
        (&Method::POST, ["tokens"]) => mint_token(call),
        (&Method::GET, ["presence"]) => presence(call),
        (&Method::POST, ["users", user, "disconnect"]) => {
            let body: json::Disconnect = call.json()?;
            let closed = reg.disconnect(user, body.device.as_deref())?;
            ok(serde_json::json!({ "closed": closed }))
        }
        (&Method::GET, ["users", user, "conversations"]) => list(call, user),
        (&Method::GET, ["users", user, "unread"]) => {
            reg.check_user_id(user)?;
            let summary = reg.unread_summary(user)?;
            ok(serde_json::json!({
                "entries": summary.entries.into_iter().map(json::Unread::from).collect::<Vec<_>>()
            }))
        }
        (&Method::POST, ["conversations"]) => create(call).await,
        (&Method::GET, ["conversations", id]) => {
            ok(json::Conversation::from(reg.get(&call.caller()?, id)?))
        }
        (&Method::PATCH, ["conversations", id]) => {
            let body: json::UpdateConversation = call.json()?;
            let req = UpdateRequest {
                name: body.name,
                set_attributes: body.set_attributes,
                remove_attributes: body.remove_attributes,
            };
            ok(json::Conversation::from(
                reg.update(&call.caller()?, id, req).await?,
            ))
        }
        (&Method::DELETE, ["conversations", id]) => {
            reg.delete_conversation(&call.caller()?, id, call.flag("purge")?)
                .await?;
            ok(serde_json::json!({}))
        }
        (&Method::GET, ["conversations", id, "members"]) => {
            let (members, cursor, has_more) = reg.list_members(
                &call.caller()?,
                id,
                &call.param("cursor").unwrap_or_default(),
                call.number("limit", 0)?,
            )?;
            ok(serde_json::json!({
                "members": members, "next_cursor": cursor, "has_more": has_more
            }))
        }
        (&Method::POST, ["conversations", id, "members"]) => {
            let body: json::Members = call.json()?;
            ok(json::Conversation::from(
                reg.add_members(&call.caller()?, id, &body.members).await?,
            ))
        }
        (&Method::POST, ["conversations", id, "members", "remove"]) => {
            let body: json::Members = call.json()?;
            ok(json::Conversation::from(
                reg.remove_members(&call.caller()?, id, &body.members)
                    .await?,
            ))
        }
        (&Method::POST, ["conversations", id, "messages"]) => send(call, id).await,
        (&Method::GET, ["conversations", id, "messages"]) => history(call, id),
        (&Method::POST, ["conversations", id, "messages", mid, "recall"]) => ok(
            json::Message::from(reg.recall(&call.caller()?, id, mid).await?),
        ),
        (&Method::PATCH, ["conversations", id, "messages", mid]) => {
            let body: json::EditMessage = call.json()?;
            let req = EditRequest {
                message_id: (*mid).to_owned(),
                content: json::content_bytes(body.text, body.content).map_err(Failure::invalid)?,
                replace_attributes: body.attributes.is_some(),
                attributes: body.attributes.unwrap_or_default(),
            };
            ok(json::Message::from(
                reg.edit(&call.caller()?, id, req).await?,
            ))
        }
        _ => Err(Failure::not_found()),
    }
}

fn mint_token(call: &Call<'_>) -> Answer {
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
    // RS256 when this server can sign with it, else HS256.
    let rs256 = config.jwt_rs256_private_key.is_some();
    match crate::auth::mint(config, &body.user, ttl, now, rs256) {
        Ok(token) => ok(serde_json::json!({
            "token": token,
            "expires_at": (now / 1000 + ttl) * 1000,
        })),
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

fn presence(call: &Call<'_>) -> Answer {
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
    let rows: Vec<_> = call
        .app
        .registry
        .sessions_of(&users)
        .into_iter()
        .map(|(user, sessions)| {
            serde_json::json!({"user": user, "online": sessions > 0, "sessions": sessions})
        })
        .collect();
    ok(serde_json::json!({ "users": rows }))
}

fn list(call: &Call<'_>, user: &str) -> Answer {
    call.app.registry.check_user_id(user)?;
    let caller = Caller {
        user: user.into(),
        session: NO_SESSION,
    };
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
    };
    let (entries, cursor, has_more) = call.app.registry.list_conversations(&caller, req)?;
    ok(serde_json::json!({
        "entries": entries.into_iter().map(json::ListEntry::from).collect::<Vec<_>>(),
        "next_cursor": cursor,
        "has_more": has_more,
    }))
}

async fn create(call: &Call<'_>) -> Answer {
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
    };
    let c = call.app.registry.create(&call.caller()?, req).await?;
    let (_, value) = ok(json::Conversation::from(c))?;
    Ok((StatusCode::CREATED, value))
}

async fn send(call: &Call<'_>, id: &str) -> Answer {
    let body: json::SendMessage = call.json()?;
    let req = SendRequest {
        client_message_id: body.client_message_id,
        kind: body.kind,
        content: json::content_bytes(body.text, body.content).map_err(Failure::invalid)?,
        attributes: body.attributes,
        mentions: body.mentions,
        transient: body.transient,
        want_receipts: body.want_receipts,
    };
    let ack = call.app.registry.send(&call.caller()?, id, req).await?;
    ok(json::SendAck {
        message_id: ack.message_id,
        seq: ack.seq,
        server_time: ack.server_time,
        duplicate: ack.duplicate,
    })
}

fn history(call: &Call<'_>, id: &str) -> Answer {
    let req = HistoryRequest {
        before_seq: call.number("before_seq", 0)?,
        limit: call.number("limit", 0)?,
        oldest_first: call.flag("oldest_first")?,
        start_seq: call.number("start_seq", 0)?,
        start_time: call.number("start_time", 0)?,
        end_seq: call.number("end_seq", 0)?,
        end_time: call.number("end_time", 0)?,
        cursor: call.param("cursor").unwrap_or_default(),
        ..Default::default()
    };
    let (messages, has_more, cursor) = call.app.registry.history(&call.caller()?, id, req)?;
    ok(serde_json::json!({
        "messages": messages.into_iter().map(json::Message::from).collect::<Vec<_>>(),
        "has_more": has_more,
        "next_cursor": cursor,
    }))
}
