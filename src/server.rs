//! Accept loop, HTTP routing (`/healthz`, WebSocket upgrade at `/` and `/ws`, with the
//! LeanCloud dialect on its router `/v1/route`, in demo mode the pages of [`crate::demo`]) and
//! shutdown.
//!
//! Before HTTP (see [`crate::listener`]): the accept, with a descriptor reserve for the
//! file-descriptor limit; the caps on pending handshakes and, at the upgrade, on connections
//! not logged in; a trusted proxy's PROXY header; TLS. The client's address is the TCP peer's,
//! or what a trusted proxy says (PROXY header, `X-Forwarded-For`).
//!
//! Shutdown order: every session stops reading, finishes its in-flight requests (up to
//! `shutdown_grace_ms`, one deadline for all, the writes of their replies included) and closes
//! with 1001 (at most `close_timeout_ms` more). Meanwhile the listener stays open for health
//! checks (`/healthz` answers 503 `draining`) and refuses new WebSocket upgrades with 503. Then
//! the listener closes, the remaining HTTP connections are dropped, and the writer drains its
//! queue and flushes the store. Only then does [`run`] return.

use crate::app::App;
use crate::clock::SharedClock;
use crate::config::Config;
use crate::listener::admission::{Limiter, Refused, Slot};
use crate::listener::{self, Io, proxy, tls};
use crate::logsafe::{Throttle, clean};
use crate::protocol::{JSON_SUBPROTOCOL, SUBPROTOCOL, Wire};
use crate::session;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A server running in this process (what `main` and the tests use).
pub struct RunningServer {
    pub addr: SocketAddr,
    /// The admin API's address, when it is served.
    pub admin_addr: Option<SocketAddr>,
    pub app: Arc<App>,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
    tls: Option<tls::Acceptor>,
}

impl RunningServer {
    /// Starts draining (same as SIGTERM).
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }
    /// A token that shuts the server down when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
    /// Loads the TLS certificate and key again (SIGHUP): new connections get them. On error
    /// the old ones stay. `Ok(false)` when TLS is off.
    pub fn reload_tls(&self) -> Result<bool, tls::TlsError> {
        match &self.tls {
            Some(t) => t.reload().map(|()| true),
            None => Ok(false),
        }
    }
    /// The listener's TLS side (reloadable from elsewhere), when TLS is on.
    pub fn tls(&self) -> Option<tls::Acceptor> {
        self.tls.clone()
    }
    /// Waits until the server has drained and flushed.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await?
    }
    /// Shuts down and waits.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown();
        self.wait().await
    }
}

/// Opens the store, binds `config.listen` and serves until shut down.
pub async fn start(config: Config, clock: SharedClock) -> anyhow::Result<RunningServer> {
    start_with(config, clock, None).await
}

/// Like [`start`], on the given store when there is one.
pub async fn start_with(
    mut config: Config,
    clock: SharedClock,
    store: Option<Arc<dyn crate::store::Store>>,
) -> anyhow::Result<RunningServer> {
    crate::demo::prepare(&mut config)?;
    crate::demo::check_insecure_dev(&config)?;
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(tls::Acceptor::load(cert, key)?),
        _ => None,
    };
    let listener = bind(&config.listen, config.listen_backlog)?;
    let addr = listener.local_addr()?;
    let admin = crate::admin::bind(&config)?;
    let admin_addr = admin.as_ref().map(|l| l.local_addr()).transpose()?;
    let shutdown = CancellationToken::new();
    let (app, writer_thread) = App::open_with(config, clock, shutdown.clone(), store)?;
    if app.config.insecure_dev {
        tracing::warn!(
            "INSECURE DEVELOPMENT MODE: any client can log in as any user by sending the user id as token"
        );
    }
    let c = &app.config;
    let auth: Vec<&str> = [
        (c.jwt_hs256_secret.is_some(), "jwt-hs256"),
        (c.jwt_rs256_public_key.is_some(), "jwt-rs256"),
        (c.insecure_dev, "insecure-dev"),
        (c.leancloud_app_id.is_some(), "leancloud-signature"),
    ]
    .into_iter()
    .filter_map(|(on, name)| on.then_some(name))
    .collect();
    tracing::info!(
        %addr,
        version = env!("CARGO_PKG_VERSION"),
        auth = %auth.join(","),
        store_engine = %c.store_engine,
        data_dir = %c.data_dir.display(),
        allowed_origins = ?c.allowed_origins,
        tls = tls.is_some(),
        trusted_proxies = ?c.trusted_proxies,
        proxy_protocol = c.proxy_protocol,
        admin = ?admin_addr,
        admin_tls = c.admin_tls,
        workers = tokio::runtime::Handle::current().metrics().num_workers(),
        "listening"
    );
    // The admin API and webhook deliveries: stopped once the sessions have drained.
    let services = CancellationToken::new();
    let mut tasks = Vec::new();
    if let Some(l) = admin {
        let admin_tls = tls.clone().filter(|_| app.config.admin_tls);
        tasks.push(tokio::spawn(crate::admin::run(
            l,
            admin_tls,
            app.clone(),
            shutdown.clone(),
            services.clone(),
        )));
    }
    if let Some(seqs) = app.outbox.clone() {
        tasks.extend(crate::webhooks::spawn(app.clone(), seqs, services.clone())?);
    }
    let task = tokio::spawn(run(
        listener,
        app.clone(),
        shutdown.clone(),
        writer_thread,
        tls.clone(),
        (services, tasks),
    ));
    Ok(RunningServer {
        addr,
        admin_addr,
        app,
        shutdown,
        task,
        tls,
    })
}

/// Binds with an explicit accept backlog: tokio's `TcpListener::bind` asks for 1024, and a
/// login storm overflows that (the kernel drops the SYNs and clients retry a second later).
fn bind(listen: &str, backlog: u32) -> anyhow::Result<TcpListener> {
    use anyhow::Context;
    let addr: std::net::SocketAddr = std::net::ToSocketAddrs::to_socket_addrs(listen)
        .with_context(|| format!("listen address {listen:?}"))?
        .next()
        .with_context(|| format!("listen address {listen:?} resolves to nothing"))?;
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket
        .bind(addr)
        .with_context(|| format!("binding {addr}"))?;
    Ok(socket.listen(backlog)?)
}

/// What every HTTP connection's service needs.
struct Shared {
    app: Arc<App>,
    drain: session::Drain,
    /// Upgraded connections and the expiry task: what the drain waits for.
    sessions: TaskTracker,
    origins: Vec<crate::origin::Pattern>,
    /// The host of `public_url`: a name of this server's for the same-host origin rule.
    own_name: Option<String>,
    /// Connections accepted and not yet upgraded.
    handshakes: Arc<Limiter>,
    /// Upgraded connections not yet logged in.
    logins: Arc<Limiter>,
    trusted: proxy::Trusted,
    tls: Option<tls::Acceptor>,
}

impl Shared {
    /// The client's address for a request on a connection from `remote`: what a trusted
    /// proxy's `X-Forwarded-For` says, else the connection's.
    fn client(&self, req: &Request<Incoming>, remote: Remote) -> SocketAddr {
        if self.trusted.is_empty() {
            return remote.peer;
        }
        let values = req
            .headers()
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok());
        let ip = self.trusted.client_from_forwarded(remote.peer.ip(), values);
        if ip == remote.peer.ip() {
            remote.peer
        } else {
            SocketAddr::new(ip, 0)
        }
    }
}

/// Serves connections from `listener` until `shutdown` is cancelled, then drains.
pub async fn run(
    listener: TcpListener,
    app: Arc<App>,
    shutdown: CancellationToken,
    writer_thread: crate::registry::writer::WriterThread,
    tls: Option<tls::Acceptor>,
    services: (CancellationToken, Vec<JoinHandle<()>>),
) -> anyhow::Result<()> {
    let c = &app.config;
    let origins = c
        .allowed_origins
        .iter()
        .map(|o| crate::origin::Pattern::parse(o))
        .collect::<Result<_, _>>()?;
    let trusted = proxy::Trusted::parse(&c.trusted_proxies).map_err(anyhow::Error::msg)?;
    let shared = Arc::new(Shared {
        app: app.clone(),
        drain: session::Drain::new(),
        sessions: TaskTracker::new(),
        origins,
        own_name: crate::origin::own_name(c.public_url.as_deref()),
        handshakes: Limiter::new(
            c.max_pending_handshakes,
            c.max_pending_handshakes_per_ip,
            app.stats.pending_handshakes.clone(),
        ),
        logins: Limiter::new(
            c.max_pending_logins,
            c.max_pending_logins_per_ip,
            app.stats.pending_logins.clone(),
        ),
        trusted,
        tls,
    });
    let mut listener = listener::accept::Acceptor::new(listener, app.stats.clone());
    // HTTP connections until they upgrade or end; dropped once the sessions have drained.
    let http = TaskTracker::new();
    let stop_http = CancellationToken::new();
    shared.sessions.spawn(crate::registry::expiry::run(
        app.registry.clone(),
        shutdown.clone(),
    ));
    shared.sessions.spawn(crate::registry::mutes::run(
        app.registry.clone(),
        shutdown.clone(),
    ));
    shared.sessions.spawn(crate::registry::retention::run(
        app.registry.clone(),
        shutdown.clone(),
    ));
    shared.sessions.spawn(crate::registry::tombstones::run(
        app.registry.clone(),
        shutdown.clone(),
    ));
    shared.sessions.spawn(crate::registry::cells::run(
        app.registry.clone(),
        shutdown.clone(),
    ));
    loop {
        tokio::select! {
            (stream, peer) = listener.next() => admit(stream, peer, &shared, &http, &stop_http),
            _ = shutdown.cancelled() => break,
        }
    }
    // Counted before the sessions hear of it, so the line says what was open.
    tracing::info!(
        sessions = app.hub.session_count(),
        connections = app.stats.connections_open.get(),
        grace_ms = app.config.shutdown_grace_ms,
        "shutting down: draining sessions"
    );
    let started = std::time::Instant::now();
    shared
        .drain
        .start(Duration::from_millis(app.config.shutdown_grace_ms));
    shared.sessions.close();
    // Health checks keep getting answers (503, draining) until the sessions are gone.
    {
        let drained = shared.sessions.wait();
        tokio::pin!(drained);
        loop {
            tokio::select! {
                _ = &mut drained => break,
                (stream, peer) = listener.next() => {
                    admit(stream, peer, &shared, &http, &stop_http);
                }
            }
        }
    }
    drop(listener);
    stop_http.cancel();
    http.close();
    http.wait().await;
    // An upgrade that raced the start of the drain.
    shared.sessions.wait().await;
    // The admin API serves until the sessions are gone (a backend may still be reading or
    // sending), then its requests in progress finish before the store closes. Webhook
    // deliveries stop with it; what they had not delivered stays in the outbox.
    let (stop_services, tasks) = services;
    stop_services.cancel();
    for t in tasks {
        let _ = t.await;
    }
    tracing::info!(
        took_ms = started.elapsed().as_millis() as u64,
        "sessions drained; flushing the store"
    );
    // The last second's count of log lines held back, before the process ends.
    crate::logsafe::flush();
    app.writer.stop();
    writer_thread.join().await;
    app.registry.purges_stopped().await;
    if app.writer.has_failed() {
        anyhow::bail!("stopped because a store write failed (see the error above)");
    }
    tracing::info!("store flushed; stopped");
    Ok(())
}

/// Where an HTTP connection comes from.
#[derive(Clone, Copy)]
struct Remote {
    /// The client: the TCP peer, or the source a trusted proxy's PROXY header named.
    peer: SocketAddr,
    /// Its socket, for the session to see how much of what it wrote the client received.
    #[cfg(target_os = "linux")]
    fd: std::os::fd::RawFd,
}

/// Takes a new connection under the pending-handshake caps (refusing it at once beyond them)
/// and serves it: PROXY header, TLS, then HTTP (see [`serve_http`]).
fn admit(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    shared: &Arc<Shared>,
    http: &TaskTracker,
    stop: &CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    shared.app.stats.connections_accepted.inc();
    let peer = SocketAddr::new(proxy::canonical(peer.ip()), peer.port());
    let trusted = shared.trusted.contains(peer.ip());
    let mut slot = match shared.handshakes.acquire_total() {
        Ok(slot) => slot,
        Err(why) => return refuse_handshake(shared, &stream, peer, why),
    };
    // A trusted proxy's connections count for the client its PROXY header names; with
    // X-Forwarded-For the client is known only at the request, and its per-address cap is
    // the one at the upgrade.
    if !trusted && let Err(why) = slot.attach(peer.ip()) {
        return refuse_handshake(shared, &stream, peer, why);
    }
    let (shared, stop) = (shared.clone(), stop.clone());
    http.spawn(async move {
        let limit = Duration::from_millis(shared.app.config.handshake_timeout_ms);
        let prepared =
            tokio::time::timeout(limit, prepare(stream, peer, trusted, &shared, &mut slot));
        // A PROXY header or TLS handshake still under way when the drain ends is dropped, as
        // a plain connection is: shutdown does not wait for the handshake timeout.
        let prepared = tokio::select! {
            p = prepared => p,
            _ = stop.cancelled() => return,
        };
        let Ok(Some((io, remote))) = prepared else {
            return;
        };
        serve_http(io, remote, &shared, &stop, slot).await;
    });
}

/// Closes a connection over a pending-handshake cap at once: with a 503 on plain HTTP (cheap:
/// one write into an empty socket buffer), silently under TLS.
fn refuse_handshake(
    shared: &Shared,
    stream: &tokio::net::TcpStream,
    peer: SocketAddr,
    why: Refused,
) {
    shared.app.stats.refused_handshakes.inc();
    let answer = shared.tls.is_none().then_some(listener::accept::BUSY);
    listener::accept::refuse_now(stream, answer);
    refused_log(shared, peer, why);
}

fn refused_log(shared: &Shared, peer: SocketAddr, why: impl std::fmt::Debug) {
    static REFUSED: Throttle = Throttle::new("connection refused");
    if REFUSED.allow(shared.app.config.log_kind_lines_per_sec) {
        tracing::info!(%peer, reason = ?why, "connection refused");
    }
}

/// What comes before HTTP: a trusted proxy's PROXY header (with `proxy_protocol`), which names
/// the client, then the TLS handshake (with `tls_cert`). `None`: the connection is refused.
async fn prepare(
    mut stream: tokio::net::TcpStream,
    peer: SocketAddr,
    trusted: bool,
    shared: &Shared,
    slot: &mut Slot,
) -> Option<(Box<dyn Io>, Remote)> {
    #[cfg(target_os = "linux")]
    let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
    let mut client = peer;
    let mut prefix = Bytes::new();
    if shared.app.config.proxy_protocol {
        match listener::read_proxy_header(&mut stream, trusted).await {
            Ok((header, rest)) => {
                prefix = rest;
                if let Some(proxy::Header::Proxied { source }) = header {
                    client = SocketAddr::new(proxy::canonical(source.ip()), source.port());
                }
            }
            Err(listener::FirstBytes::Closed | listener::FirstBytes::Io(_)) => return None,
            Err(e) => {
                shared.app.stats.refused_handshakes.inc();
                refused_log(shared, peer, e.to_string());
                return None;
            }
        }
        if trusted && let Err(why) = slot.attach(client.ip()) {
            shared.app.stats.refused_handshakes.inc();
            refused_log(shared, client, why);
            return None;
        }
    }
    let io = listener::Prefixed::new(prefix, stream);
    let io: Box<dyn Io> = match &shared.tls {
        Some(tls) => match tls.get().accept(io).await {
            Ok(s) => Box::new(s),
            Err(e) => {
                tracing::debug!(peer = %client, error = %e, "TLS handshake failed");
                return None;
            }
        },
        None => Box::new(io),
    };
    let remote = Remote {
        peer: client,
        #[cfg(target_os = "linux")]
        fd,
    };
    Some((io, remote))
}

/// Serves one HTTP connection: health checks and WebSocket upgrades (see [`route`]). During the
/// drain, one request per connection; dropped once the drain is over. `slot` is its place
/// under the pending-handshake caps, given back when it ends (an upgraded connection ends
/// here once the upgrade is handed over).
async fn serve_http(
    io: Box<dyn Io>,
    remote: Remote,
    shared: &Arc<Shared>,
    stop: &CancellationToken,
    slot: Slot,
) {
    let draining = shared.drain.is_draining();
    let service = {
        let shared = shared.clone();
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let shared = shared.clone();
            async move {
                // The demo's token endpoint reads a body; everything else answers from the
                // request's head.
                let resp = if shared.app.config.demo && crate::demo::is_token_request(&req) {
                    crate::demo::token(req, &shared.app).await
                } else if shared.app.config.leancloud_app_id.is_some()
                    && req.method() == Method::GET
                    && req.uri().path() == LC_NOTIFICATIONS_PATH
                {
                    // Reads a log of every conversation of the client's: off the async threads.
                    let (shared, tls) = (shared.clone(), shared.tls.is_some());
                    tokio::task::spawn_blocking(move || leancloud_http(&req, &shared.app, tls))
                        .await
                        .unwrap_or_else(|_| {
                            text(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n")
                        })
                } else {
                    route(req, &shared, remote)
                };
                Ok::<_, std::convert::Infallible>(resp)
            }
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(
            shared.app.config.handshake_timeout_ms,
        ))
        .keep_alive(!draining);
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = shared.drain.cancelled(), if !draining => {
            // Idle keep-alive connections end now; a request in progress finishes.
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                r = conn.as_mut() => r,
                _ = stop.cancelled() => Ok(()),
            }
        }
        _ = stop.cancelled() => Ok(()),
    };
    drop(slot);
    if let Err(e) = result {
        tracing::debug!(peer = %remote.peer, error = %e, "http connection ended with an error");
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}

fn route(req: Request<Incoming>, shared: &Arc<Shared>, remote: Remote) -> Response<Full<Bytes>> {
    let app = &shared.app;
    if app.config.leancloud_app_id.is_some() && is_leancloud_http(req.uri().path()) {
        return leancloud_http(&req, app, shared.tls.is_some());
    }
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => {
            let draining = shared.drain.is_draining();
            let body = serde_json::json!({
                "status": if draining { "draining" } else { "ok" },
                "sessions": app.hub.session_count(),
                "connections": app.stats.connections_open.get(),
                "messages_committed": app.stats.messages_committed.get(),
                "malformed_frames": app.stats.malformed_frames.get(),
                "write_timeouts": app.stats.write_timeouts.get(),
                "pending_handshakes": app.stats.pending_handshakes.get(),
                "pending_logins": app.stats.pending_logins.get(),
                "refused_handshakes": app.stats.refused_handshakes.get(),
                "refused_logins": app.stats.refused_logins.get(),
                "accept_failures": app.stats.accept_failures.get(),
                "refused_overloaded": app.stats.refused_overloaded.get(),
            });
            let status = if draining {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            };
            let mut r = text(status, body.to_string());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        (&Method::GET, "/livez") => json(StatusCode::OK, &serde_json::json!({"status": "ok"})),
        (&Method::GET, "/readyz") => readyz(app, shared.drain.is_draining()),
        (&Method::GET, "/" | "/ws") => upgrade(req, shared, remote),
        (_, path) if app.config.demo && crate::demo::is_demo_path(path) => crate::demo::serve(&req),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// `/readyz` on both listeners: 200 while the server takes work (store open and writable,
/// listeners bound, not draining), 503 otherwise.
pub(crate) fn readyz(app: &App, draining: bool) -> Response<Full<Bytes>> {
    let (status, why) = if draining {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else if app.writer.has_failed() {
        (StatusCode::SERVICE_UNAVAILABLE, "store write failed")
    } else {
        (StatusCode::OK, "ok")
    };
    json(status, &serde_json::json!({ "status": why }))
}

/// The LeanCloud router: where LeanCloud's SDKs, given only a `server` base URL (no direct
/// WebSocket URL), look up the WebSocket to connect to.
const LC_ROUTE_PATH: &str = "/v1/route";

/// Seconds an SDK caches a `/v1/route` answer before asking again (LeanCloud's own value).
pub const LC_ROUTE_TTL_SECS: u64 = 3600;

/// Request headers LeanCloud's SDKs send to its HTTP endpoints; a preflight that does not
/// list the ones it wants is allowed these.
const LC_CORS_HEADERS: &str = "X-LC-Id, X-LC-Key, X-LC-IM-Session-Token, X-LC-UA, Content-Type";

/// Whether `path` is one of the LeanCloud dialect's HTTP endpoints (served, with CORS, only
/// while the dialect is configured; otherwise 404 like any unknown path).
fn is_leancloud_http(path: &str) -> bool {
    path == LC_ROUTE_PATH || path == LC_NOTIFICATIONS_PATH || path == LC_MEMBER_INFO_PATH
}

/// Member roles of a conversation (the SDKs' `getAllMemberInfo()`).
const LC_MEMBER_INFO_PATH: &str = "/1.1/classes/_ConversationMemberInfo";

/// Conversation events a client missed while offline (the SDKs ask after reconnecting).
const LC_NOTIFICATIONS_PATH: &str = "/1.1/rtm/notifications";

/// A LeanCloud HTTP endpoint: preflights, then the endpoint itself, every answer with CORS.
fn leancloud_http(req: &Request<Incoming>, app: &App, tls: bool) -> Response<Full<Bytes>> {
    let mut r = match (req.method(), req.uri().path()) {
        (&Method::OPTIONS, _) => return cors_preflight(req.headers()),
        (&Method::GET, LC_ROUTE_PATH) => leancloud_route(req, &app.config, tls),
        // `GET /1.1/rtm/notifications?client_id=…&start_ts=…`
        (&Method::GET, LC_NOTIFICATIONS_PATH) => leancloud_client_endpoint(
            req,
            app,
            "start_ts",
            crate::session::leancloud::notifications,
        ),
        // `GET /1.1/classes/_ConversationMemberInfo?where={"cid":…}&client_id=…`
        (&Method::GET, LC_MEMBER_INFO_PATH) => {
            leancloud_client_endpoint(req, app, "where", crate::session::leancloud::member_info)
        }
        _ => {
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, OPTIONS"));
            r
        }
    };
    cors_allow_origin(req.headers(), r.headers_mut());
    r
}

/// `GET /v1/route?appId=…&secure=…&_t=…`: the WebSocket URL, `public_url` when set, else
/// `ws://` (`wss://` when the server does TLS itself) and the request's `Host`. `secure` does
/// not change the answer: without `public_url` the server cannot know whether a TLS proxy is
/// in front of it.
fn leancloud_route(req: &Request<Incoming>, config: &Config, tls: bool) -> Response<Full<Bytes>> {
    let query = req.uri().query();
    if query_param(query, "appId").as_deref() != config.leancloud_app_id.as_deref() {
        return json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"code": 4100, "error": "APP_NOT_AVAILABLE"}),
        );
    }
    let url = match &config.public_url {
        Some(public) => with_root_path(public),
        None => {
            let Some(host) = req
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .filter(|h| is_host(h))
            else {
                return json(
                    StatusCode::BAD_REQUEST,
                    &serde_json::json!({
                        "error": "no valid Host header to derive the WebSocket URL from; set public_url"
                    }),
                );
            };
            if !tls && matches!(query_param(query, "secure").as_deref(), Some("true" | "1")) {
                static WARNED: std::sync::Once = std::sync::Once::new();
                WARNED.call_once(|| {
                    tracing::warn!(
                        "a client asked /v1/route for a secure (wss://) server, but public_url is \
                         not set: answering ws:// and the Host header; set public_url"
                    );
                });
            }
            let scheme = if tls { "wss" } else { "ws" };
            format!("{scheme}://{host}/")
        }
    };
    let mut r = json(
        StatusCode::OK,
        &serde_json::json!({
            "groupId": "g0",
            "server": url,
            "secondary": url,
            "ttl": LC_ROUTE_TTL_SECS,
        }),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// A LeanCloud client endpoint: (app, `client_id`, its other parameter, session token) →
/// (HTTP status, JSON body).
type ClientEndpoint =
    fn(&App, Option<&str>, Option<&str>, Option<&str>) -> (u16, serde_json::Value);

/// The answer of a LeanCloud HTTP endpoint that acts for a client: the app id checked (when
/// sent in `X-LC-Id`), then `handler` given the `client_id` and `param` query values and the
/// session token of `X-LC-IM-Session-Token`.
fn leancloud_client_endpoint(
    req: &Request<Incoming>,
    app: &App,
    param: &str,
    handler: ClientEndpoint,
) -> Response<Full<Bytes>> {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    if let Some(id) = header("x-lc-id")
        && Some(id) != app.config.leancloud_app_id.as_deref()
    {
        return json(
            StatusCode::UNAUTHORIZED,
            &serde_json::json!({"code": 4100, "error": "APP_NOT_AVAILABLE"}),
        );
    }
    let query = req.uri().query();
    let (status, body) = handler(
        app,
        query_param(query, "client_id").as_deref(),
        query_param(query, param).as_deref(),
        header("x-lc-im-session-token"),
    );
    let mut r = json(
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &body,
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn json(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = text(status, body.to_string());
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// `url` with path `/` when it has no path (`wss://chat.example.com` → `wss://chat.example.com/`).
fn with_root_path(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    if rest.contains(['/', '?', '#']) {
        url.to_owned()
    } else {
        format!("{url}/")
    }
}

/// A plausible `Host` header: a name or address and an optional port, nothing that could
/// turn the URL built from it into something else.
fn is_host(h: &str) -> bool {
    !h.is_empty()
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_:[]".contains(&b))
}

/// The first value of `name` in a query string, `%XX`- and `+`-decoded; `None` when absent or
/// malformed.
pub(crate) fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    let (_, value) = query?
        .split('&')
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .find(|(key, _)| *key == name)?;
    crate::percent::decode(value, true)
}

/// Lets browser apps on other origins read an answer: adds `Access-Control-Allow-Origin`
/// (the request's `Origin`, else `*`) to `resp`. For every LeanCloud HTTP endpoint's answers.
pub(crate) fn cors_allow_origin(req: &HeaderMap, resp: &mut HeaderMap) {
    match req.get(header::ORIGIN) {
        Some(origin) => {
            resp.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            resp.append(header::VARY, HeaderValue::from_static("Origin"));
        }
        None => {
            resp.insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            );
        }
    }
}

/// The answer to a CORS preflight (`OPTIONS`) for a LeanCloud HTTP endpoint: 204 allowing
/// GET and POST from any origin with the headers asked for (else LeanCloud's), cached a day.
pub(crate) fn cors_preflight(req: &HeaderMap) -> Response<Full<Bytes>> {
    let mut r = text(StatusCode::NO_CONTENT, Bytes::new());
    let h = r.headers_mut();
    cors_allow_origin(req, h);
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, OPTIONS"),
    );
    let allow_headers = req
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .cloned()
        .unwrap_or(HeaderValue::from_static(LC_CORS_HEADERS));
    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, allow_headers);
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    h.append(
        header::VARY,
        HeaderValue::from_static("Access-Control-Request-Headers"),
    );
    r
}

fn header_has(req: &Request<Incoming>, name: header::HeaderName, token: &str) -> bool {
    req.headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The tungstenite settings for server connections, from config. The write buffer is not
/// capped here: it only grows past `write_buffer_size` while a write is failing, and what may
/// queue for a connection is bounded by its outbox (`outbox_frames`) instead.
pub fn ws_config(config: &Config) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(config.ws_read_buffer_bytes)
        .write_buffer_size(config.ws_write_buffer_bytes)
        .max_message_size(Some(config.max_frame_bytes))
        .max_frame_size(Some(config.max_frame_bytes))
}

/// The dialect an upgrade asks for, and the subprotocol to answer with: the native one when
/// offered (binary before JSON when a client offers both), else a LeanCloud one when that dialect is configured (by header, or by the
/// `?subprotocol=` query some SDKs use instead, which gets no header back).
fn dialect_of(
    req: &Request<Incoming>,
    config: &Config,
) -> Option<(session::Dialect, Option<&'static str>)> {
    for wire in [Wire::Binary, Wire::Json] {
        if header_has(req, header::SEC_WEBSOCKET_PROTOCOL, wire.subprotocol()) {
            return Some((session::Dialect::Native(wire), Some(wire.subprotocol())));
        }
    }
    config.leancloud_app_id.as_ref()?;
    let offered = req
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok());
    let n = crate::leancloud::negotiate(offered, req.uri().query())?;
    Some((session::Dialect::LeanCloud(n.protocol), n.echo))
}

fn upgrade(
    mut req: Request<Incoming>,
    shared: &Arc<Shared>,
    remote: Remote,
) -> Response<Full<Bytes>> {
    let app = &shared.app;
    if shared.drain.is_draining() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
    }
    let client = shared.client(&req, remote);
    let key = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned();
    let is_ws = header_has(&req, header::UPGRADE, "websocket")
        && header_has(&req, header::CONNECTION, "upgrade")
        && req
            .headers()
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_some_and(|v| v == "13");
    let Some(key) = key.filter(|_| is_ws) else {
        return text(
            StatusCode::BAD_REQUEST,
            "expected a WebSocket upgrade (version 13)\n",
        );
    };
    // A page on another site may not open a WebSocket here (see `crate::origin`), whichever
    // dialect it asks for.
    let headers = req.headers();
    let all = |name| {
        headers
            .get_all(name)
            .iter()
            .map(HeaderValue::as_bytes)
            .collect::<Vec<_>>()
    };
    let (origins, hosts) = (all(header::ORIGIN), all(header::HOST));
    if !crate::origin::allowed(
        &origins,
        &hosts,
        &shared.origins,
        shared.own_name.as_deref(),
    ) {
        static REFUSED: Throttle = Throttle::new("origin refused");
        if REFUSED.allow(app.config.log_kind_lines_per_sec) {
            let origin = origins
                .iter()
                .map(|o| String::from_utf8_lossy(o))
                .collect::<Vec<_>>()
                .join(", ");
            let origin = clean(&origin, app.config.log_value_max_chars);
            tracing::info!(peer = %client, %origin, "WebSocket origin refused");
        }
        return text(
            StatusCode::FORBIDDEN,
            "origin not allowed (see allowed_origins)\n",
        );
    }
    let Some((dialect, echo)) = dialect_of(&req, &app.config) else {
        let also = if app.config.leancloud_app_id.is_some() {
            " (or a LeanCloud one: lc.protobuf2.3, lc.proto2base64.3, lc.protobuf2.1)"
        } else {
            ""
        };
        return text(
            StatusCode::BAD_REQUEST,
            format!("subprotocol {SUBPROTOCOL} (or {JSON_SUBPROTOCOL}) required{also}\n"),
        );
    };
    let login_slot = match shared.logins.acquire(client.ip()) {
        Ok(slot) => slot,
        Err(why) => {
            app.stats.refused_logins.inc();
            refused_log(shared, client, why);
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many connections waiting to log in; retry\n",
            );
        }
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let (app, drain) = (app.clone(), shared.drain.clone());
    shared.sessions.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let cfg = ws_config(&app.config);
                let io = TokioIo::new(upgraded);
                #[cfg(target_os = "linux")]
                let io = session::Metered::with_socket(io, remote.fd);
                #[cfg(not(target_os = "linux"))]
                let io = session::Metered::new(io);
                let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(cfg)).await;
                session::run(ws, app, drain, dialect, client, Some(login_slot)).await;
            }
            Err(e) => tracing::debug!(error = %e, "upgrade failed"),
        }
    });
    let mut r = text(StatusCode::SWITCHING_PROTOCOLS, Bytes::new());
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Some(echo) = echo {
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(echo),
        );
    }
    if let Ok(v) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    r
}
