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

mod api;
mod groups;
mod imports;
pub mod json;
mod lifecycle;
pub mod openapi;

use crate::app::App;
use crate::protocol::pb::ErrorCode;
use crate::registry::{Caller, Error};
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
/// Export pages (`GET /v1/users/{user}/export`, `GET /v1/conversations/{id}/export`) built at
/// once, at most; a request for another waits for its turn.
pub const EXPORTS_AT_ONCE: usize = 2;
/// Admin pages that read the store (history, conversation lists, unread counts, members,
/// open temporary conversations, dead letters) built at once, at most; more wait their turn.
pub const PAGES_AT_ONCE: usize = 4;

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
    tls: Option<crate::listener::tls::Acceptor>,
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
        let tls = tls.as_ref().map(|t| t.get());
        conns.spawn(async move {
            serve(stream, tls, peer, app, draining, ending).await;
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
    tls: Option<tokio_rustls::TlsAcceptor>,
    peer: SocketAddr,
    app: Arc<App>,
    draining: CancellationToken,
    ending: CancellationToken,
) {
    // The TLS handshake, then request headers, each within the public listener's handshake
    // bound.
    let header_timeout = Duration::from_millis(app.config.handshake_timeout_ms);
    let stream: Box<dyn crate::listener::Io> = match tls {
        None => Box::new(stream),
        Some(tls) => match tokio::time::timeout(header_timeout, tls.accept(stream)).await {
            Ok(Ok(s)) => Box::new(s),
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "admin TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "admin TLS handshake timed out");
                return;
            }
        },
    };
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
            Error::NotAMember
            | Error::PermissionDenied(_)
            | Error::Muted(_)
            | Error::Blacklisted(_)
            | Error::Blocked
            | Error::Banned(_)
            | Error::TokenRevoked => StatusCode::FORBIDDEN,
            Error::OwnerMustTransfer | Error::ImportConflict | Error::ImportOutOfOrder(_) => {
                StatusCode::CONFLICT
            }
            Error::NotAllowedForKind { .. } | Error::WindowExpired(_) => StatusCode::CONFLICT,
            Error::InvalidArgument(_) | Error::UnknownRequest | Error::AlreadyLoggedIn => {
                StatusCode::BAD_REQUEST
            }
            Error::LimitExceeded(_) | Error::Rejected(_) => StatusCode::UNPROCESSABLE_ENTITY,
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

/// A JSON answer: its status and its body, serialized where the answer was built (for pages,
/// off the async workers).
type Answer = Result<(StatusCode, Bytes), Failure>;

/// The JSON error body.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The WebSocket protocol's `ErrorCode` number.
    pub code: i32,
    pub message: String,
    /// Over a rate limit: when the same request fits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

fn ok(value: impl Serialize) -> Answer {
    Ok((
        StatusCode::OK,
        serde_json::to_vec(&value)
            .map_err(|_| Failure::from(Error::Internal))?
            .into(),
    ))
}

/// `value` as a JSON body.
fn json_body(value: impl Serialize) -> Bytes {
    serde_json::to_vec(&value).unwrap_or_default().into()
}

fn respond(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
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
    let body = ErrorBody {
        code: f.code as i32,
        message: f.message,
        retry_after_ms: (f.retry_after_ms > 0).then_some(f.retry_after_ms),
    };
    let mut r = respond(f.status, json_body(body));
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
            return respond(
                StatusCode::OK,
                json_body(serde_json::json!({"status": "ok"})),
            );
        }
        (&Method::GET, "/readyz") => return crate::server::readyz(app, draining.is_cancelled()),
        (&Method::GET, "/openapi.json") => {
            let mut r = Response::new(Full::new(Bytes::from(openapi::document())));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            return r;
        }
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
    let idempotency_key = match req.headers().get("idempotency-key") {
        None => None,
        Some(v) => match v.to_str() {
            Ok(k) => Some(k.to_owned()),
            Err(_) => {
                return failure(Failure::invalid("Idempotency-Key must be printable ASCII"));
            }
        },
    };
    // The body within the same bound as the headers: a backend's half-open connection (or a
    // stalled one) must not hold one of `admin_max_connections` for ever.
    let read = Limited::new(req.into_body(), app.config.admin_max_body_bytes).collect();
    let bound = std::time::Duration::from_millis(app.config.handshake_timeout_ms);
    let Ok(read) = tokio::time::timeout(bound, read).await else {
        let mut r = failure(Failure::new(
            StatusCode::REQUEST_TIMEOUT,
            ErrorCode::ErrorInvalidArgument,
            format!(
                "the request body did not arrive within handshake_timeout_ms ({})",
                app.config.handshake_timeout_ms
            ),
        ));
        r.headers_mut().insert(
            hyper::header::CONNECTION,
            hyper::header::HeaderValue::from_static("close"),
        );
        return r;
    };
    let body = match read {
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
    // Ids may hold characters a client escapes (a temporary conversation's `_tmp:`).
    let Some(segments) = path["/v1/".len()..]
        .split('/')
        .map(|s| crate::percent::decode(s, false))
        .collect::<Option<Vec<String>>>()
    else {
        return failure(Failure::invalid("the path holds a malformed %-escape"));
    };
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let call = Call {
        app,
        query: query.as_deref(),
        body: &body,
        idempotency_key: idempotency_key.as_deref(),
    };
    if let (&Method::GET, ["conversations", id, "export"]) = (&method, segments.as_slice()) {
        return imports::export(&call, id).await.unwrap_or_else(failure);
    }
    if let Some(answer) = lifecycle::raw_route(&call, &method, &segments).await {
        return answer.unwrap_or_else(failure);
    }
    match api::route(&call, &method, &segments).await {
        Ok((status, body)) => respond(status, body),
        Err(f) => failure(f),
    }
}

/// Builds an export page with `build` on a blocking thread, in one of the app's
/// [`EXPORTS_AT_ONCE`] turns (waited for): a page reads the store and writes up to megabytes
/// of JSON, which must not hold the async workers that serve every socket. The turn is held
/// until `build` returns, even if the request is dropped before.
async fn export_page(
    app: &Arc<App>,
    build: impl FnOnce() -> Result<Response<Full<Bytes>>, Failure> + Send + 'static,
) -> Result<Response<Full<Bytes>>, Failure> {
    let turn = app
        .exports
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| Failure::from(Error::Unavailable))?;
    tokio::task::spawn_blocking(move || {
        let _turn = turn;
        build()
    })
    .await
    .map_err(|_| Failure::from(Error::Internal))?
}

/// Builds a JSON page with `build` on a blocking thread, in one of the app's
/// [`PAGES_AT_ONCE`] turns (waited for): the page reads the store and holds up to
/// `admin_page_max_bytes` of items, which must not hold the async workers that serve every
/// socket. The turn is held until `build` returns, even if the request is dropped before.
async fn blocking_page(
    app: &Arc<App>,
    build: impl FnOnce(&App) -> Answer + Send + 'static,
) -> Answer {
    let turn = app
        .admin_pages
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| Failure::from(Error::Unavailable))?;
    let app = app.clone();
    tokio::task::spawn_blocking(move || {
        let _turn = turn;
        build(&app)
    })
    .await
    .map_err(|_| Failure::from(Error::Internal))?
}

/// An export page as a response: JSON lines, never cached.
fn json_lines(body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// One request's parts, for the handlers.
struct Call<'a> {
    app: &'a Arc<App>,
    query: Option<&'a str>,
    body: &'a Bytes,
    /// The `Idempotency-Key` header, when given.
    idempotency_key: Option<&'a str>,
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
        Ok(Caller::user(user.as_str().into(), NO_SESSION))
    }

    /// The acting user (`as`) when one is named, else the app's backend itself: an admin
    /// caller named `system_sender`, with the overrides docs/admin.md lists.
    fn actor(&self) -> Result<Caller, Failure> {
        match self.param("as") {
            Some(_) => self.caller(),
            None => self.backend(),
        }
    }

    /// The app's backend as the caller (an admin caller), named in events and as the sender of
    /// its messages by `by`, or `system_sender` when the request gives none.
    fn backend(&self) -> Result<Caller, Failure> {
        let by = self
            .param("by")
            .unwrap_or_else(|| self.app.config.system_sender.clone());
        self.app.registry.check_user_id(&by)?;
        Ok(Caller::admin(&by))
    }

    fn json<T: DeserializeOwned>(&self) -> Result<T, Failure> {
        if self.body.is_empty() {
            return serde_json::from_slice(b"{}")
                .map_err(|e| Failure::invalid(format!("a JSON body is required: {e}")));
        }
        serde_json::from_slice(self.body).map_err(|e| Failure::invalid(format!("bad JSON: {e}")))
    }
}
