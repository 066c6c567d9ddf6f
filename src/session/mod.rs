//! The connection actor: one task per WebSocket, owning the socket, in one of a closed set of
//! dialects ([`Dialect`]). Only the codec and the translation into registry calls differ.
//!
//! A native connection logs one session in with its first frame. A LeanCloud connection carries
//! any number of sessions (one per `peerId`), opened and closed by commands on the way. Then
//! the actor multiplexes: frames from the client (each request becomes a future polled here,
//! at most `max_inflight_requests` at once, so a busy client is slowed by TCP, not by memory),
//! pushes from the connection's one bounded outbox (shared by its sessions; each push names the
//! session it is for), replies of finished requests, a ping timer, the idle deadline, a kick
//! (slow consumer, replaced device) and server shutdown. Outbox frames are written in bursts and
//! flushed once per burst.
//!
//! Every way out ends with a WebSocket close frame carrying a documented code, except a client
//! that stopped reading: every write (the welcome, replies, pushes, pings, the close frame) must
//! make progress within `write_timeout_ms`, or the socket is dropped without one, since a close
//! frame would only queue behind what the client does not read. Shutdown is bounded the same
//! way: requests, and the writes of their replies, end at the one drain deadline
//! (`shutdown_grace_ms` after it began), and the close takes at most `close_timeout_ms`.

pub mod dispatch;
pub mod leancloud;
mod leancloud_groups;

use crate::app::App;
use crate::auth::AuthError;
use crate::hub::{Kick, Outgoing, SessionHandle};
use crate::leancloud::LcProtocol;
use crate::listener::admission::Slot;
use crate::logsafe::{Throttle, clean};
use crate::protocol::pb::{self, CloseCode, client_frame::Body as Req, server_frame::Body as Rep};
use crate::protocol::{self, ClientFrame, Push, PushEvent, Wire};
use crate::registry::limits::{Work, paid_by, paid_by_now};
use crate::registry::{Caller, Error, SendRequest};
use crate::store::UserId;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{SinkExt, StreamExt};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep, sleep_until, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCode;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// Frames written per burst before a flush.
const BURST: usize = 64;

/// The socket under a connection's WebSocket. It counts the bytes written, so a write that has
/// to wait can tell a client that reads slowly (bytes still go out) from one that stopped
/// reading.
pub struct Metered<S> {
    io: S,
    progress: Arc<Progress>,
}

impl<S> Metered<S> {
    pub fn new(io: S) -> Self {
        Metered {
            io,
            progress: Arc::default(),
        }
    }

    /// Like [`Metered::new`], knowing the kernel socket `io` writes to. On Linux progress is then
    /// what the client received (acknowledged), not what went into the socket's send buffer,
    /// which can hold megabytes and so go quiet for long while a slow client reads steadily.
    #[cfg(target_os = "linux")]
    pub fn with_socket(io: S, fd: std::os::fd::RawFd) -> Self {
        Metered {
            io,
            progress: Arc::new(Progress {
                written: AtomicU64::new(0),
                fd: Some(fd),
            }),
        }
    }
}

/// How far a connection's writes got.
#[derive(Default)]
struct Progress {
    /// Bytes written into the socket.
    written: AtomicU64,
    #[cfg(target_os = "linux")]
    fd: Option<std::os::fd::RawFd>,
}

impl Progress {
    /// Bytes the client has acknowledged (Linux), else bytes written into the socket.
    fn delivered(&self) -> u64 {
        let written = self.written.load(Ordering::Relaxed);
        #[cfg(target_os = "linux")]
        if let Some(fd) = self.fd {
            let mut unacked: libc::c_int = 0;
            // SAFETY: on a TCP socket, SIOCOUTQ (the same number as TIOCOUTQ) stores one int,
            // the bytes sent but not yet acknowledged plus those not sent, through the pointer,
            // which points at a live c_int. On any other descriptor the call fails or stores
            // some other int, which only makes the count wrong.
            if unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut unacked) } == 0 && unacked >= 0 {
                return written.saturating_sub(unacked as u64);
            }
        }
        written
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            this.progress.written.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            this.progress.written.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Server shutdown as connections see it: one token, and one deadline by which every
/// connection's requests (and the writes of their replies) must be done.
#[derive(Clone, Default)]
pub struct Drain(Arc<DrainState>);

#[derive(Default)]
struct DrainState {
    token: CancellationToken,
    deadline: OnceLock<Instant>,
}

impl Drain {
    pub fn new() -> Drain {
        Drain::default()
    }
    /// Starts draining: requests in flight get `grace` from now.
    pub fn start(&self, grace: Duration) {
        self.0.deadline.get_or_init(|| Instant::now() + grace);
        self.0.token.cancel();
    }
    pub fn is_draining(&self) -> bool {
        self.0.token.is_cancelled()
    }
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.0.token.cancelled()
    }
    /// When draining connections stop waiting for their requests (set before draining starts).
    fn deadline(&self) -> Instant {
        self.0.deadline.get().copied().unwrap_or_else(Instant::now)
    }
}

/// A connection's WebSocket, read and written by its one task (not split: a split stream
/// locks on every read and write). Boxed so the task's future keeps a pointer to it.
type Ws<S> = Box<WebSocketStream<S>>;

/// The wire a connection speaks, chosen by its subprotocol at the upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// `ClientFrame`/`ServerFrame`: protobuf (`tidings.v1`) or their JSON form
    /// (`tidings.v1.json`). Only the codec differs.
    Native(Wire),
    /// LeanCloud's realtime protocol, in one of its subprotocols.
    LeanCloud(LcProtocol),
}

/// How a session ends: a WebSocket close code and reason.
#[derive(Debug, Clone, Copy)]
struct Close(u16, &'static str);

const NORMAL: Close = Close(1000, "logout");
const GOING_AWAY: Close = Close(1001, "server shutting down");
/// How long the close frame of a connection that never logged in may take when the server
/// stops.
const BRIEF_CLOSE: Duration = Duration::from_millis(100);

fn close_of(code: CloseCode) -> Close {
    let reason = match code {
        CloseCode::CloseLoginTimeout => "login timeout",
        CloseCode::CloseAuthFailed => "authentication failed",
        CloseCode::CloseTokenExpired => "token expired",
        CloseCode::CloseBadFrame => "malformed frame",
        CloseCode::CloseProtocolViolation => "protocol violation",
        CloseCode::CloseReplaced => "replaced by a newer session on the same device",
        CloseCode::CloseSlowConsumer => "slow consumer",
        CloseCode::CloseIdleTimeout => "idle timeout",
        CloseCode::CloseFrameTooLarge => "frame too large",
        CloseCode::CloseSessionLimit => "too many sessions of this user (max_sessions_per_user)",
        CloseCode::CloseKicked => "disconnected by the application",
        CloseCode::CloseBanned => "banned by the application",
        CloseCode::CloseTokenRevoked => "token revoked",
        CloseCode::CloseInternal | CloseCode::CloseUnspecified => "internal error",
    };
    Close(code as i32 as u16, reason)
}

impl Dialect {
    /// The subprotocol, for logs.
    pub fn name(self) -> &'static str {
        match self {
            Dialect::Native(wire) => wire.subprotocol(),
            Dialect::LeanCloud(p) => p.token(),
        }
    }

    /// The dialect as `/metrics` counts it.
    fn counted(self) -> crate::traffic::Dialect {
        match self {
            Dialect::Native(_) => crate::traffic::Dialect::Native,
            Dialect::LeanCloud(_) => crate::traffic::Dialect::LeanCloud,
        }
    }

    /// The close for a data frame that does not decode (a text message that is not UTF-8
    /// included): 4004 `CLOSE_BAD_FRAME`, or for LeanCloud 1007, as its codec answers.
    fn undecodable(self) -> Close {
        match self {
            Dialect::Native(_) => close_of(CloseCode::CloseBadFrame),
            Dialect::LeanCloud(_) => leancloud::UNDECODABLE,
        }
    }

    /// The close a connection of this dialect gets for `code`: LeanCloud's SDKs know their
    /// own numbers for the idle, login and size limits.
    fn close(self, code: CloseCode) -> Close {
        match self {
            Dialect::Native(_) => close_of(code),
            Dialect::LeanCloud(_) => leancloud::close_of(code),
        }
    }
}

/// What reading the socket produced.
enum Inbound {
    /// A data frame (binary or text), for the dialect to decode.
    Frame(WsMessage),
    /// A ping or pong: the peer is alive.
    Activity,
    /// The peer sent a close frame.
    Closed,
    /// The connection dropped without a close frame.
    Dropped,
    /// The peer broke the protocol; close with this.
    Bad(CloseCode),
    /// A text message that is not UTF-8 (which tungstenite checks before the dialect sees
    /// it): closed as a frame that does not decode.
    NotUtf8,
}

async fn read<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut Ws<S>) -> Inbound {
    match ws.next().await {
        Some(Ok(m @ (WsMessage::Binary(_) | WsMessage::Text(_)))) => Inbound::Frame(m),
        Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_))) => {
            Inbound::Activity
        }
        Some(Ok(WsMessage::Close(_))) => Inbound::Closed,
        None => Inbound::Dropped,
        Some(Err(tungstenite::Error::Capacity(_))) => Inbound::Bad(CloseCode::CloseFrameTooLarge),
        // The client closed its socket without a close frame (a dropped mobile connection):
        // not malformed input.
        Some(Err(tungstenite::Error::Protocol(
            tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
        ))) => Inbound::Dropped,
        Some(Err(tungstenite::Error::Protocol(_))) => Inbound::Bad(CloseCode::CloseBadFrame),
        Some(Err(tungstenite::Error::Utf8(_))) => Inbound::NotUtf8,
        Some(Err(_)) => Inbound::Dropped,
    }
}

/// The native codec: binary messages of protobuf, or text messages of JSON.
impl Wire {
    /// Decodes a client frame; a message of the other kind, or one that does not decode, is a
    /// malformed frame.
    fn decode(self, m: &WsMessage) -> Result<ClientFrame, CloseCode> {
        match (self, m) {
            (Wire::Binary, WsMessage::Binary(b)) => {
                protocol::decode_client(b).map_err(|_| CloseCode::CloseBadFrame)
            }
            (Wire::Json, WsMessage::Text(t)) => {
                protocol::decode_client_json(t).map_err(|_| CloseCode::CloseBadFrame)
            }
            _ => Err(CloseCode::CloseBadFrame),
        }
    }

    /// Encodes a reply.
    fn frame(self, f: &protocol::ServerFrame) -> WsMessage {
        match self {
            Wire::Binary => WsMessage::Binary(protocol::encode(f)),
            Wire::Json => WsMessage::Text(protocol::encode_json(f)),
        }
    }

    /// A push, encoded once per event for all sessions of this form (counted in `traffic`).
    fn push(self, p: &Push, traffic: &crate::traffic::Traffic) -> WsMessage {
        use crate::traffic::Form;
        let mut filled = false;
        let (frame, form) = match self {
            Wire::Binary => (
                WsMessage::Binary(p.native_filling(&mut filled).clone()),
                Form::Native,
            ),
            Wire::Json => (
                WsMessage::Text(p.json_filling(&mut filled).clone()),
                Form::Json,
            ),
        };
        if filled {
            traffic.encoded(form);
        }
        frame
    }
}

/// Counts the data frames about to be written to a client (not pings and closes).
fn count_out(app: &App, dialect: Dialect, frames: &[WsMessage]) {
    let (mut n, mut bytes) = (0, 0);
    for f in frames {
        if matches!(f, WsMessage::Binary(_) | WsMessage::Text(_)) {
            n += 1;
            bytes += f.len();
        }
    }
    if n > 0 {
        app.stats.traffic.frames_out(dialect.counted(), n, bytes);
    }
}

/// Runs one connection to the end.
///
/// Not an `async fn`: an async fn's future keeps room for its arguments for its whole life, and
/// the WebSocket stream is 300 bytes every connection would carry (it is boxed instead).
pub fn run<S>(
    ws: WebSocketStream<Metered<S>>,
    app: Arc<App>,
    drain: Drain,
    dialect: Dialect,
    peer: SocketAddr,
    login_slot: Option<Slot>,
) -> impl Future<Output = ()> + Send
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = Conn {
        peer,
        progress: ws.get_ref().progress.clone(),
        vectored: ws.get_ref().is_write_vectored(),
        stall: stall_limit(&app),
        login_slot,
        opened: Instant::now(),
        announced: false,
    };
    run_boxed(Box::new(ws), app, drain, dialect, conn)
}

/// What a connection knows about its socket.
struct Conn {
    peer: SocketAddr,
    /// How far its writes got (see [`Metered`]).
    progress: Arc<Progress>,
    /// Its socket takes vectored writes (asked once: the answer goes through several layers).
    vectored: bool,
    /// How long a write may wait with the client receiving nothing.
    stall: Duration,
    /// Its place under `max_pending_logins` until a session opens on it.
    login_slot: Option<Slot>,
    /// When the upgrade was done.
    opened: Instant,
    /// Its `connection opened` line is written: a session logged in on it.
    announced: bool,
}

async fn run_boxed<S>(mut ws: Ws<S>, app: Arc<App>, drain: Drain, dialect: Dialect, conn: Conn)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    app.stats.connections_open.inc();
    let (tx, outbox) = crate::outbox::channel(app.config.outbox_frames);
    let mut actor = Actor {
        app: app.clone(),
        dialect,
        kick: Arc::new(Kick::default()),
        outbox,
        outbox_tx: tx,
        peers: Vec::with_capacity(1),
        pending: None,
        catch_up: None,
        abnormal: false,
        stalled: false,
        login_by: None,
        torn: None,
        conn,
        bucket: app.registry.connection_bucket(),
    };
    let close = match dialect {
        Dialect::Native(wire) => match actor.log_in_native(&mut ws, &drain, wire).await {
            Ok(welcome) => actor.serve(&mut ws, &drain, welcome).await,
            Err(LoginFailed { close, reply }) => {
                if let Some(reply) = reply {
                    count_out(&app, dialect, std::slice::from_ref(&reply));
                    let r = write(
                        &actor.kick,
                        &mut ws,
                        vec![reply],
                        &actor.conn,
                        &drain,
                        &mut actor.torn,
                    )
                    .await;
                    actor.stalled = matches!(r, Err(Stop::Stalled));
                }
                close
            }
        },
        Dialect::LeanCloud(_) => {
            // Sessions open by command; the first must come within the login timeout.
            actor.login_by =
                Some(Instant::now() + Duration::from_millis(app.config.login_timeout_ms));
            actor.serve(&mut ws, &drain, Vec::new()).await
        }
    };
    let Actor {
        peers,
        abnormal,
        stalled,
        conn,
        torn,
        ..
    } = actor;
    let max = app.config.log_value_max_chars;
    let users = peers
        .iter()
        .map(|p| clean(&p.caller.user, max).to_string())
        .collect::<Vec<_>>();
    let devices = peers
        .iter()
        .map(|p| clean(p.handle.device.as_deref().unwrap_or(""), max).to_string())
        .collect::<Vec<_>>();
    for peer in peers {
        end_peer(&app, peer, abnormal).await;
    }
    // A connection that never logged in is not worth waiting for when the server stops: its
    // close frame goes out, its answer is not awaited.
    let brief = users.is_empty() && matches!(close, Some(Close(1001, _)));
    let close_sent = finish(ws, &app, close, &conn, stalled, brief, torn).await;
    app.stats.connections_open.dec();
    let (code, reason) = match close {
        _ if stalled => (Some(CloseCode::CloseSlowConsumer as u16), "write timeout"),
        Some(Close(code, reason)) => (Some(code), reason),
        None => (None, "closed by the client"),
    };
    // Anyone can open and close connections without credentials, as fast as they like: the
    // close lines of connections on which no session logged in are rate-limited like refused
    // logins (and such connections never had an open line).
    static UNANNOUNCED: Throttle = Throttle::new("connection closed before login");
    if conn.announced || UNANNOUNCED.allow(app.config.log_kind_lines_per_sec) {
        tracing::info!(
            peer = %conn.peer,
            dialect = dialect.name(),
            users = ?users,
            devices = ?devices,
            close = code,
            reason,
            close_sent,
            duration_ms = conn.opened.elapsed().as_millis() as u64,
            "connection closed"
        );
    }
}

/// How long a write may wait with the client receiving nothing: `write_timeout_ms`, or
/// `idle_timeout_ms`
/// when that is shorter (a connection with no progress either way is idle).
fn stall_limit(app: &App) -> Duration {
    Duration::from_millis(app.config.write_timeout_ms.min(app.config.idle_timeout_ms))
}

/// Counts a frame that could not be decoded, broke the WebSocket protocol or was too large, and
/// logs it (rate-limited: any client can send these at will).
fn malformed(app: &App, conn: &Conn, dialect: Dialect, peers: &[Peer], close: Close) {
    app.stats.malformed_frames.inc();
    static MALFORMED: Throttle = Throttle::new("malformed frame");
    if MALFORMED.allow(app.config.log_kind_lines_per_sec) {
        let max = app.config.log_value_max_chars;
        let user = peers
            .first()
            .map(|p| clean(&p.caller.user, max).to_string());
        tracing::info!(
            peer = %conn.peer,
            dialect = dialect.name(),
            user = user.as_deref().unwrap_or(""),
            close = close.0,
            reason = close.1,
            "malformed frame; closing"
        );
    }
}

/// Sends the will messages of a session that ended abnormally, as if the user had sent them.
async fn send_wills(app: &App, caller: &Caller, wills: BTreeMap<String, SendRequest>) {
    let max = app.config.log_value_max_chars;
    let user = clean(&caller.user, max);
    for (conv, req) in wills {
        match app.registry.send(caller, &conv, req).await {
            Ok(ack) => {
                app.stats.wills_sent.inc();
                tracing::debug!(%user, conversation = %clean(&conv, max), seq = ack.seq, "will message sent");
            }
            Err(e) => {
                tracing::debug!(%user, conversation = %clean(&conv, max), error = %clean(&e, max), "will message not sent")
            }
        }
    }
}

/// Waits for the first frame, which must be `Login`.
async fn read_login<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut Ws<S>,
    wire: Wire,
    traffic: &crate::traffic::Traffic,
) -> Result<(u64, pb::Login), Option<Close>> {
    loop {
        match read(ws).await {
            Inbound::Frame(m) => {
                traffic.frame_in(crate::traffic::Dialect::Native, m.len());
                return match wire.decode(&m) {
                    Ok(ClientFrame {
                        id,
                        body: Some(Req::Login(l)),
                    }) => Ok((id, l)),
                    Ok(_) => Err(Some(close_of(CloseCode::CloseProtocolViolation))),
                    Err(code) => Err(Some(close_of(code))),
                };
            }
            Inbound::Activity => continue,
            Inbound::Closed | Inbound::Dropped => return Err(None),
            Inbound::Bad(c) => return Err(Some(close_of(c))),
            Inbound::NotUtf8 => return Err(Some(close_of(CloseCode::CloseBadFrame))),
        }
    }
}

/// LoginOk, the missed logged events and the unread summary, for the serve loop to write first;
/// and the last event seq among them, below which live copies are skipped.
fn welcome(
    app: &App,
    wire: Wire,
    caller: &Caller,
    id: u64,
    cursor: u64,
    steps: crate::hub::Steps,
) -> Result<(u64, Told, Vec<WsMessage>), Close> {
    let internal = |e: Error| {
        let user = clean(&caller.user, app.config.log_value_max_chars);
        tracing::error!(error = %e, %user, "login failed");
        close_of(CloseCode::CloseInternal)
    };
    let crate::registry::EventsAfter {
        events,
        truncated,
        head,
    } = app
        .registry
        .events_after(&caller.user, cursor)
        .map_err(internal)?;
    let summary = app
        .registry
        .login_summary(&caller.user, true)
        .map_err(internal)?;
    // The summary tells where each of its conversations stands; a delivery step that
    // overlapped the login may push what it counts.
    let told = if app.hub.overlapped(steps) {
        told(&summary, |_| true)
    } else {
        HashMap::new()
    };
    let ok = pb::LoginOk {
        user_id: caller.user.to_string(),
        session_id: format!("{:x}", caller.session),
        server_time: app.clock.now_ms(),
        event_cursor: head,
        events_truncated: truncated,
        ping_interval_ms: app.config.ping_interval_ms as u32,
        idle_timeout_ms: app.config.idle_timeout_ms as u32,
    };
    let mut frames = Vec::with_capacity(events.len() + 2);
    frames.push(wire.frame(&protocol::reply(id, Rep::LoginOk(ok))));
    for e in events {
        frames.push(wire.push(
            &protocol::push(Rep::ConversationEvent(e)),
            &app.stats.traffic,
        ));
    }
    frames.push(wire.push(
        &protocol::push(Rep::UnreadSummary(summary)),
        &app.stats.traffic,
    ));
    Ok((head, told, frames))
}

/// One logged-in session on a connection.
struct Peer {
    caller: Caller,
    handle: SessionHandle,
    /// Logged events up to here were replayed at login; live copies of them are skipped.
    replayed_to: u64,
    /// The newest seq the login's catch-up told of, per conversation, kept only when a
    /// delivery step overlapped the login (so a push may repeat it): message pushes at or
    /// below it are skipped, and an entry goes with the first newer push. At most
    /// `login_summary_max` entries.
    told: Told,
    /// Will messages by conversation id (the last one set wins).
    wills: BTreeMap<String, SendRequest>,
    /// Native: the session ends when the server's clock reaches this (its token's `exp` plus the
    /// leeway; moved by `RefreshToken`). [`NO_DEADLINE`] for LeanCloud sessions, which live by
    /// their own session tokens, and for `insecure_dev` logins by bare user id.
    expires_at_ms: i64,
}

impl Peer {
    /// Whether `push` is a message its login's catch-up already told of (see `told`); the
    /// first newer message of a conversation ends the check there.
    fn repeats_catch_up(&mut self, push: &protocol::Push) -> bool {
        if self.told.is_empty() || !matches!(push.event(), PushEvent::Message(..)) {
            return false;
        }
        let Some((conversation, seq)) = push.message_position() else {
            return false;
        };
        match self.told.get(conversation) {
            Some(&told) if seq != 0 && seq <= told => true,
            Some(_) => {
                self.told.remove(conversation);
                false
            }
            None => false,
        }
    }
}

/// The newest seq a login's catch-up told of, per conversation id.
type Told = HashMap<String, u64>;

/// What a login's unread summary told of: the newest seq of each entry `which` picks.
fn told(summary: &pb::UnreadSummary, which: impl Fn(&pb::UnreadEntry) -> bool) -> Told {
    summary
        .entries
        .iter()
        .filter(|e| which(e))
        .map(|e| (e.conversation_id.clone(), e.last_seq))
        .collect()
}

/// A session that never expires.
const NO_DEADLINE: i64 = i64::MAX;

/// The bytes a will holds in memory (roughly: the variable parts).
fn will_bytes(conv: &str, will: &SendRequest) -> usize {
    conv.len()
        + will.client_message_id.len()
        + will.content.len()
        + will
            .attributes
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
        + will.mentions.iter().map(String::len).sum::<usize>()
}

/// Whether a session holding `wills` may also hold `will` for `conv` (replacing its will there,
/// if any): at most `max_wills_per_session` wills of at most `max_will_bytes_per_session`
/// bytes together. Wills live in the session's memory until it ends, so without these one user
/// could hold a will in every conversation they belong to, on every session.
fn will_fits(
    config: &crate::config::Config,
    wills: &BTreeMap<String, SendRequest>,
    conv: &str,
    will: &SendRequest,
) -> Result<(), Error> {
    let replaced = wills.get(conv);
    let count = wills.len() + usize::from(replaced.is_none());
    if count > config.max_wills_per_session {
        return Err(Error::LimitExceeded(format!(
            "this session holds {} will messages; max_wills_per_session is {} (ClearWill one first)",
            wills.len(),
            config.max_wills_per_session
        )));
    }
    let held: usize = wills.iter().map(|(c, w)| will_bytes(c, w)).sum();
    let bytes = held - replaced.map_or(0, |w| will_bytes(conv, w)) + will_bytes(conv, will);
    if bytes > config.max_will_bytes_per_session {
        return Err(Error::LimitExceeded(format!(
            "the will messages of this session would hold {bytes} bytes; \
             max_will_bytes_per_session is {}",
            config.max_will_bytes_per_session
        )));
    }
    Ok(())
}

struct Actor {
    app: Arc<App>,
    dialect: Dialect,
    /// Closes the whole connection (slow consumer, a replaced native session).
    kick: Arc<Kick>,
    outbox: crate::outbox::Receiver,
    /// Cloned into the hub handle of every session opened on this connection.
    outbox_tx: crate::outbox::Sender,
    /// The sessions on this connection, in the order they opened (native: exactly one).
    peers: Vec<Peer>,
    /// Requests in progress, each ending in its encoded reply (if it has one); created with the
    /// first request, so a session that only listens does not carry the set's allocation.
    pending: Option<FuturesUnordered<BoxFuture<'static, Option<WsMessage>>>>,
    /// LeanCloud: the catch-up of a client that just opened, being read. Until it is written
    /// the connection reads no command and writes no push (they wait in the outbox).
    catch_up: Option<BoxFuture<'static, leancloud::CatchUp>>,
    /// The connection ended without a clean close (dropped, idle, slow, bad input).
    abnormal: bool,
    /// A write made no progress for the stall limit: drop the socket without a close frame.
    stalled: bool,
    /// LeanCloud: a session must open before this, or the connection closes.
    login_by: Option<Instant>,
    conn: Conn,
    /// The rest of a frame a write stopped in the middle of (see [`write`]).
    torn: Option<Vec<u8>>,
    /// The connection's request rate bucket.
    bucket: crate::registry::limits::Bucket,
}

/// What one turn of the serve loop does after its `select!`.
enum Step {
    Continue,
    Write(Vec<WsMessage>),
    Stop(Stop),
}

/// Why a write stopped.
enum Stop {
    Kicked(u16),
    Gone,
    /// It waited the stall limit with the client receiving nothing.
    Stalled,
    /// The drain deadline passed.
    Deadline,
}

/// What a frame from the client asks of the loop at once.
enum Immediate {
    /// Write these.
    Reply(Vec<WsMessage>),
    /// Write these, then stop reading and close with this once replies are out (logout; a
    /// request read after the token expired).
    End(Close, Vec<WsMessage>),
    /// The session's token was replaced: write these and set the timer again.
    Refreshed(Vec<WsMessage>),
    /// Close now.
    Close(Close),
}

/// Why a native connection has no session: how it closes, and a reply to its `Login` to write
/// first (a refusal the client may retry: over the user's request rate limit).
struct LoginFailed {
    close: Option<Close>,
    reply: Option<WsMessage>,
}

impl From<Option<Close>> for LoginFailed {
    fn from(close: Option<Close>) -> Self {
        LoginFailed { close, reply: None }
    }
}

/// The close of a login the app's backend refuses: a ban, a revoked token (or the store
/// failing to say).
fn access_close(e: &Error) -> Close {
    close_of(match e {
        Error::Banned(_) => CloseCode::CloseBanned,
        Error::TokenRevoked => CloseCode::CloseTokenRevoked,
        _ => CloseCode::CloseInternal,
    })
}

/// The close after a login refused over the user's request rate limit: the standard "try
/// again later" (the `Error` reply before it says when).
const TRY_AGAIN_LATER: Close = Close(1013, "too many logins of this user; retry later");

impl Actor {
    /// Reads and verifies the native `Login`, registers the session and sends the welcome.
    async fn log_in_native<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        ws: &mut Ws<S>,
        drain: &Drain,
        wire: Wire,
    ) -> Result<Vec<WsMessage>, LoginFailed> {
        let app = self.app.clone();
        let first = tokio::select! {
            r = timeout(Duration::from_millis(app.config.login_timeout_ms), read_login(ws, wire, &app.stats.traffic)) => r,
            _ = drain.cancelled() => Ok(Err(Some(GOING_AWAY))),
        };
        let (id, login) = match first {
            Err(_) => return Err(Some(close_of(CloseCode::CloseLoginTimeout)).into()),
            Ok(Err(Some(close))) if close.0 != CloseCode::CloseProtocolViolation as u16 => {
                malformed(&app, &self.conn, self.dialect, &[], close);
                return Err(Some(close).into());
            }
            Ok(r) => r?,
        };
        // Only what the session needs lives on: the token (a few hundred bytes) is dropped here.
        let pb::Login {
            token,
            device,
            event_cursor,
        } = login;
        let (user, expires_at_ms, issued_at, jti) = match app.auth.identify(&token) {
            Ok(i) => (
                UserId::from(i.user),
                i.expires_at_ms.unwrap_or(NO_DEADLINE),
                i.issued_at_ms,
                i.jti,
            ),
            Err(e) => {
                // Anyone can cause this line, with any text in it: escaped, cut, rate-limited.
                static REFUSED: Throttle = Throttle::new("login refused");
                if REFUSED.allow(app.config.log_kind_lines_per_sec) {
                    let max = app.config.log_value_max_chars;
                    tracing::info!(error = %clean(&e, max), "login refused");
                }
                let code = match e {
                    AuthError::Expired => CloseCode::CloseTokenExpired,
                    AuthError::Invalid(_) => CloseCode::CloseAuthFailed,
                };
                return Err(Some(close_of(code)).into());
            }
        };
        drop(token);
        if device.len() > 64 {
            return Err(Some(close_of(CloseCode::CloseProtocolViolation)).into());
        }
        // Banned users and revoked tokens are refused (checked again below if a ban or a
        // revocation commits while this login registers).
        let epoch = app.registry.access_epoch();
        app.registry
            .check_access(&user, issued_at, jti.as_deref())
            .map_err(|e| LoginFailed::from(Some(access_close(&e))))?;
        // A login costs what it sends (the unread summary is a list page), charged to the user
        // like any request, so logging in and out in a loop is no way around the list's price.
        // Refused: nothing happened, no session, no presence change, no other session closed.
        // (The user's bucket alone: a connection's is new at its login.)
        if let Err(e) = app.registry.admit_user(&user, Work::Login) {
            let refused = dispatch::error_reply(id, &e);
            let login = crate::traffic::native_kind(Some(&Req::Login(Default::default())));
            app.stats.traffic.native(login, &refused);
            return Err(LoginFailed {
                close: Some(TRY_AGAIN_LATER),
                reply: Some(wire.frame(&refused)),
            });
        }
        let device = (!device.is_empty()).then(|| Arc::<str>::from(device));
        let steps = app.hub.steps();
        let caller = self
            .open_peer(user, device, false, None, jti.as_deref().map(Arc::from))
            .expect("a login is never refused");
        if app.registry.access_epoch() != epoch {
            app.registry
                .check_access(&caller.user, issued_at, jti.as_deref())
                .map_err(|e| LoginFailed::from(Some(access_close(&e))))?;
        }
        let (replayed_to, told, frames) =
            welcome(&app, wire, &caller, id, event_cursor, steps).map_err(Some)?;
        let login = crate::traffic::native_kind(Some(&Req::Login(Default::default())));
        app.stats.traffic.native_ok(login);
        self.peers[0].replayed_to = replayed_to;
        self.peers[0].told = told;
        self.peers[0].expires_at_ms = expires_at_ms;
        Ok(frames)
    }

    /// Registers a new session of `user` on this connection and returns who it is. `shared`:
    /// the connection may carry other sessions, so replacing this one closes only it.
    /// `resumed`: the session continues a login made then (ms), and is refused (`None`) when a
    /// later login of the same device tag is live.
    fn open_peer(
        &mut self,
        user: UserId,
        device: Option<Arc<str>>,
        shared: bool,
        resumed: Option<i64>,
        jti: Option<Arc<str>>,
    ) -> Option<Caller> {
        let app = &self.app;
        let session = app.next_session_id();
        let handle = SessionHandle {
            id: session,
            device,
            outbox: self.outbox_tx.clone(),
            kick: self.kick.clone(),
            shared,
            login_at: resumed.unwrap_or_else(|| app.clock.now_ms()),
            jti,
        };
        let max = app.config.max_sessions_per_user;
        let registered = match resumed {
            None => app.hub.register(&user, handle.clone(), max),
            Some(_) => app.hub.register_resumed(&user, handle.clone(), max)?,
        };
        for old in &registered.replaced {
            app.hub.replace(old);
        }
        for old in &registered.evicted {
            app.hub.evict(old);
        }
        static EVICTED: Throttle = Throttle::new("sessions over the limit closed");
        if !registered.evicted.is_empty() && EVICTED.allow(app.config.log_kind_lines_per_sec) {
            tracing::info!(
                user = %clean(&user, app.config.log_value_max_chars),
                closed = registered.evicted.len(),
                "oldest sessions closed: max_sessions_per_user reached"
            );
        }
        if registered.came_online {
            app.registry.presence_changed(&user);
        }
        app.stats.sessions_logged_in.inc();
        let max = app.config.log_value_max_chars;
        let device = handle.device.as_deref().unwrap_or("");
        if !self.conn.announced {
            // The open line waits for the first login, so a client without credentials cannot
            // write it at will (see the close line).
            self.conn.announced = true;
            tracing::info!(
                peer = %self.conn.peer,
                dialect = self.dialect.name(),
                user = %clean(&user, max),
                device = %clean(device, max),
                login_ms = self.conn.opened.elapsed().as_millis() as u64,
                "connection opened"
            );
        }
        tracing::debug!(user = %clean(&user, max), session, device = %clean(device, max), "logged in");
        let caller = Caller::user(user, session);
        self.peers.push(Peer {
            caller: caller.clone(),
            handle,
            replayed_to: 0,
            told: HashMap::new(),
            wills: BTreeMap::new(),
            expires_at_ms: NO_DEADLINE,
        });
        self.login_by = None;
        self.conn.login_slot = None;
        Some(caller)
    }
}

/// Takes a session out of the hub; when it was the user's last, their presence subscribers
/// hear it and their rate bucket may go.
fn unregister(app: &App, caller: &Caller) {
    if app.hub.unregister(&caller.user, caller.session) {
        app.registry.presence_changed(&caller.user);
        app.registry.forget_rate(&caller.user);
    }
}

/// Ends a session: out of the hub and its subscriptions; its wills go out if it ended
/// abnormally while its token was valid (the server does not speak for a user whose token has
/// lapsed, whatever ended the connection).
async fn end_peer(app: &App, peer: Peer, abnormal: bool) {
    {
        let Peer {
            caller,
            wills,
            expires_at_ms,
            ..
        } = peer;
        app.registry.drop_subscriptions(caller.session);
        unregister(app, &caller);
        let lapsed = expires_at_ms != NO_DEADLINE && app.clock.now_ms() >= expires_at_ms;
        if abnormal && !lapsed && !wills.is_empty() {
            // Boxed: a rare path, whose future (about 1.1 KB) would otherwise be part of every
            // connection's task.
            Box::pin(send_wills(app, &caller, wills)).await;
        }
    }
}

impl Actor {
    /// The main loop, which first writes `welcome`. Returns the close to send (None: the peer
    /// is already gone).
    async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        ws: &mut Ws<S>,
        drain: &Drain,
        welcome: Vec<WsMessage>,
    ) -> Option<Close> {
        let cfg = self.app.config.clone();
        let idle = Duration::from_millis(cfg.idle_timeout_ms);
        let ping_every = Duration::from_millis(cfg.ping_interval_ms);
        let grace = Duration::from_millis(cfg.shutdown_grace_ms);
        let dialect = self.dialect;
        // One timer for the ping, the idle, login and drain deadlines: it is set for the
        // earliest, and on firing the loop sees which are due and sets it again. Activity only
        // moves `idle_at` (later), so the timer may fire once early; that is all it costs.
        let mut ping_at = Instant::now() + ping_every;
        let mut idle_at = Instant::now() + idle;
        let first_deadline = |ping_at: Instant, idle_at: Instant, login_by: Option<Instant>| {
            let t = ping_at.min(idle_at);
            login_by.map_or(t, |l| t.min(l))
        };
        let timer = sleep_until(self.until_token(first_deadline(ping_at, idle_at, self.login_by)));
        tokio::pin!(timer);
        // Set once we stop reading: shutdown (1001) or logout (1000). Pending replies still go out.
        let mut draining: Option<(Close, Instant)> = None;
        let kick = self.kick.clone();
        // Created once: a fresh `cancelled()` per turn registers with the token's Notify under
        // its mutex every time, which showed in fan-out profiles.
        let cancelled = drain.cancelled();
        tokio::pin!(cancelled);

        count_out(&self.app, self.dialect, &welcome);
        let result = write(&kick, ws, welcome, &self.conn, drain, &mut self.torn).await;
        match self.wrote(result, None, drain) {
            Ok(true) => idle_at = Instant::now() + idle,
            Ok(false) => {}
            Err(close) => return close,
        }
        loop {
            if let Some((close, deadline)) = draining
                && (self.pending_len() == 0 || Instant::now() >= deadline)
            {
                return Some(close);
            }
            let reading = draining.is_none()
                && self.pending_len() < cfg.max_inflight_requests
                && self.catch_up.is_none();
            let pushing = self.catch_up.is_none();
            let waiting = self.pending_len() > 0;
            // Pushes taken from the outbox this turn (allocated only when there are some).
            let mut incoming = Vec::new();
            // The arms only decide; the one write below is the loop's only other await. Keeping
            // frames and writes out of the arms keeps this future (which every connection
            // holds for its whole life) small.
            let step = tokio::select! {
                biased;
                code = kick.kicked() => Step::Stop(Stop::Kicked(code)),
                _ = &mut cancelled, if draining.is_none() => {
                    let until = drain.deadline();
                    draining = Some((GOING_AWAY, until));
                    timer.as_mut().reset(first_deadline(ping_at, idle_at, None).min(until));
                    match dialect {
                        // LeanCloud's SDKs reconnect elsewhere at once when told to go away.
                        Dialect::LeanCloud(p) => Step::Write(vec![leancloud::goaway(p)]),
                        Dialect::Native(_) => Step::Continue,
                    }
                }
                c = next_catch_up(&mut self.catch_up), if !pushing => {
                    self.catch_up = None;
                    Step::Write(leancloud::caught_up(self, c))
                }
                Some(reply) = next_reply(&mut self.pending), if waiting => {
                    let mut frames: Vec<WsMessage> = reply.into_iter().collect();
                    self.finished_replies(&mut frames);
                    if pushing {
                        self.outbox.try_recv_many(&mut incoming, BURST);
                        self.burst(&mut incoming, &mut frames);
                    }
                    Step::Write(frames)
                }
                n = self.outbox.recv_many(&mut incoming, BURST), if pushing => {
                    let mut frames = Vec::with_capacity(n + 1);
                    self.finished_replies(&mut frames);
                    self.burst(&mut incoming, &mut frames);
                    Step::Write(frames)
                }
                inbound = read(ws), if reading => match inbound {
                    Inbound::Frame(m) => {
                        idle_at = Instant::now() + idle;
                        self.app.stats.traffic.frame_in(dialect.counted(), m.len());
                        let immediate = match dialect {
                            Dialect::Native(wire) => match wire.decode(&m) {
                                // Nothing is served past the token's deadline, even when the
                                // timer has not turned yet.
                                Ok(_) if self.token_expired() => Some(Immediate::End(
                                    close_of(CloseCode::CloseTokenExpired),
                                    Vec::new(),
                                )),
                                Ok(f) => match self.peers.first() {
                                    Some(peer) => {
                                        let user = peer.caller.user.clone();
                                        paid_by_now(user, || self.request(wire, f))
                                    }
                                    None => self.request(wire, f),
                                },
                                Err(code) => Some(Immediate::Close(close_of(code))),
                            },
                            Dialect::LeanCloud(p) => leancloud::on_frame(self, p, m),
                        };
                        match immediate {
                            Some(Immediate::Reply(r)) => Step::Write(r),
                            Some(Immediate::End(close, r)) => {
                                let until = Instant::now() + grace;
                                draining = Some((close, until));
                                timer.as_mut().reset(first_deadline(ping_at, idle_at, None).min(until));
                                Step::Write(r)
                            }
                            Some(Immediate::Refreshed(r)) => {
                                let next = first_deadline(ping_at, idle_at, self.login_by);
                                timer.as_mut().reset(self.until_token(next));
                                Step::Write(r)
                            }
                            Some(Immediate::Close(close)) => {
                                self.abnormal = true;
                                malformed(&self.app, &self.conn, dialect, &self.peers, close);
                                return Some(close);
                            }
                            None => Step::Continue,
                        }
                    }
                    Inbound::Activity => {
                        idle_at = Instant::now() + idle;
                        Step::Continue
                    }
                    Inbound::Closed => return None,
                    Inbound::Dropped => {
                        self.abnormal = true;
                        return None;
                    }
                    bad @ (Inbound::Bad(_) | Inbound::NotUtf8) => {
                        self.abnormal = true;
                        let close = match bad {
                            Inbound::Bad(c) => dialect.close(c),
                            _ => dialect.undecodable(),
                        };
                        malformed(&self.app, &self.conn, dialect, &self.peers, close);
                        return Some(close);
                    }
                },
                _ = &mut timer => {
                    let now = Instant::now();
                    if let Some((close, until)) = draining
                        && now >= until
                    {
                        return Some(close);
                    }
                    if self.login_by.is_some_and(|l| now >= l) {
                        return Some(dialect.close(CloseCode::CloseLoginTimeout));
                    }
                    if now >= idle_at {
                        self.abnormal = true;
                        return Some(dialect.close(CloseCode::CloseIdleTimeout));
                    }
                    if draining.is_none() && self.token_expired() {
                        // Like a logout: nothing more is read, the replies of requests already
                        // read go out (within the grace), then the close. Wills are dropped: the
                        // server does not speak for a user whose token has lapsed.
                        let until = now + grace;
                        draining = Some((close_of(CloseCode::CloseTokenExpired), until));
                        timer.as_mut().reset(first_deadline(ping_at, idle_at, None).min(until));
                        continue;
                    }
                    let ping = now >= ping_at;
                    if ping {
                        ping_at = now + ping_every;
                    }
                    let next = self.until_token(first_deadline(ping_at, idle_at, self.login_by));
                    timer.as_mut().reset(draining.map_or(next, |d| next.min(d.1)));
                    if ping {
                        Step::Write(vec![WsMessage::Ping(Bytes::new())])
                    } else {
                        Step::Continue
                    }
                }
            };
            let result = match step {
                Step::Continue => Ok(false),
                Step::Write(frames) => {
                    count_out(&self.app, self.dialect, &frames);
                    write(&kick, ws, frames, &self.conn, drain, &mut self.torn).await
                }
                Step::Stop(stop) => Err(stop),
            };
            match self.wrote(result, draining, drain) {
                Ok(true) => idle_at = Instant::now() + idle,
                Ok(false) => {}
                Err(close) => return close,
            }
        }
    }

    /// What a write's outcome means for the loop: `Ok(true)` when it had to wait and then
    /// finished (the client is reading: not idle), `Err` with the close to end with.
    fn wrote(
        &mut self,
        result: Result<bool, Stop>,
        draining: Option<(Close, Instant)>,
        drain: &Drain,
    ) -> Result<bool, Option<Close>> {
        let dialect = self.dialect;
        match result {
            Ok(waited) => Ok(waited),
            Err(Stop::Gone) => {
                self.abnormal = true;
                Err(None)
            }
            Err(Stop::Stalled) => {
                self.stalled = true;
                // Slow consumers leave their wills; a shutdown discards them.
                self.abnormal = !drain.is_draining();
                self.app.stats.write_timeouts.inc();
                Err(Some(dialect.close(CloseCode::CloseSlowConsumer)))
            }
            Err(Stop::Deadline) => Err(Some(draining.map_or(GOING_AWAY, |d| d.0))),
            Err(Stop::Kicked(code)) => {
                let code = CloseCode::try_from(code as i32).unwrap_or(CloseCode::CloseInternal);
                if code == CloseCode::CloseSlowConsumer {
                    self.abnormal = true;
                    tracing::info!(sessions = ?self.peers.iter().map(|p| p.caller.session).collect::<Vec<_>>(), "closing slow consumer");
                }
                Err(Some(dialect.close(code)))
            }
        }
    }

    /// `t`, or when the native session's token expires if that comes first. The server's clock
    /// (which tests move by hand) is read again at every turn of the timer, so a clock that moved
    /// faster than the timer is noticed at the next turn (at most `ping_interval_ms` later).
    fn until_token(&self, t: Instant) -> Instant {
        const DAY_MS: i64 = 86_400_000;
        match self.peers.first() {
            Some(p) if p.expires_at_ms != NO_DEADLINE => {
                let left = p.expires_at_ms.saturating_sub(self.app.clock.now_ms());
                t.min(Instant::now() + Duration::from_millis(left.clamp(0, DAY_MS) as u64))
            }
            _ => t,
        }
    }

    /// Whether the native session's token has expired (by the server's clock).
    fn token_expired(&self) -> bool {
        self.peers.first().is_some_and(|p| {
            p.expires_at_ms != NO_DEADLINE && self.app.clock.now_ms() >= p.expires_at_ms
        })
    }

    /// Requests in progress.
    fn pending_len(&self) -> usize {
        self.pending.as_ref().map_or(0, FuturesUnordered::len)
    }

    /// Queues a request's work; its future ends in the encoded reply, if any.
    fn start(&mut self, work: BoxFuture<'static, Option<WsMessage>>) {
        self.pending
            .get_or_insert_with(FuturesUnordered::new)
            .push(work);
    }

    /// Appends the pushes taken from the outbox, in this connection's encoding, skipping
    /// replayed events and pushes for sessions that have closed.
    fn burst(&mut self, incoming: &mut Vec<Outgoing>, frames: &mut Vec<WsMessage>) {
        for o in incoming.drain(..) {
            self.take(o, frames);
        }
    }

    /// Appends the replies of requests that have finished, without waiting for the others.
    ///
    /// A write takes these before the pushes it carries: the writer completes a commit's acks
    /// before it hands out the commit's pushes, so a `SendAck` always goes out before the push
    /// of any later message of the conversation (see [`crate::registry::writer`]). And a reply
    /// and the pushes that are ready go out in one socket write.
    fn finished_replies(&mut self, frames: &mut Vec<WsMessage>) {
        use futures_util::FutureExt;
        let Some(pending) = self.pending.as_mut() else {
            return;
        };
        // Polled without a waker: the loop's next turn polls them again with one before it
        // sleeps, so no wake-up is lost.
        while let Some(Some(reply)) = pending.next().now_or_never() {
            frames.extend(reply);
        }
    }

    fn take(&mut self, o: Outgoing, frames: &mut Vec<WsMessage>) {
        match self.dialect {
            Dialect::Native(wire) => {
                let Some(peer) = self.peers.first_mut() else {
                    return;
                };
                if peer.repeats_catch_up(&o.push) {
                    return;
                }
                if (o.user_seq == 0 || o.user_seq > peer.replayed_to)
                    && !matches!(o.push.event(), PushEvent::Replaced | PushEvent::Kicked)
                {
                    frames.push(wire.push(&o.push, &self.app.stats.traffic));
                }
            }
            Dialect::LeanCloud(p) => leancloud::take(self, p, o, frames),
        }
    }

    /// Starts a native request. Returns what must be written at once (answers that need no
    /// work).
    fn request(&mut self, wire: Wire, frame: ClientFrame) -> Option<Immediate> {
        let id = frame.id;
        let kind = crate::traffic::native_kind(frame.body.as_ref());
        let traffic = &self.app.stats.traffic;
        let reply = |f: protocol::ServerFrame| {
            traffic.native(kind, &f);
            Some(Immediate::Reply(vec![wire.frame(&f)]))
        };
        let peer = self.peers.first_mut()?;
        if let Some(work) = frame.body.as_ref().and_then(dispatch::work_of)
            && let Err(e) = self
                .app
                .registry
                .admit(&peer.caller.user, &mut self.bucket, work)
        {
            return reply(dispatch::error_reply(id, &e));
        }
        match frame.body {
            None => reply(dispatch::error_reply(id, &Error::UnknownRequest)),
            Some(Req::Ping(_)) => reply(protocol::reply(
                id,
                Rep::Pong(pb::Pong {
                    server_time: self.app.clock.now_ms(),
                }),
            )),
            Some(Req::Logout(_)) => {
                traffic.native_ok(kind);
                Some(Immediate::End(
                    NORMAL,
                    vec![wire.frame(&protocol::reply(id, Rep::Ok(pb::Ok {})))],
                ))
            }
            Some(Req::RefreshToken(r)) => {
                let refused = |code: pb::ErrorCode, message: String| {
                    let error = pb::Error {
                        code: code as i32,
                        message,
                        retry_after_ms: 0,
                    };
                    reply(protocol::reply(id, Rep::Error(error)))
                };
                match self.app.auth.identify(&r.token) {
                    Ok(i) if *i.user == *peer.caller.user => {
                        let reg = &self.app.registry;
                        match reg.check_access(&i.user, i.issued_at_ms, i.jti.as_deref()) {
                            Ok(()) => {
                                peer.expires_at_ms = i.expires_at_ms.unwrap_or(NO_DEADLINE);
                                let jti = i.jti.as_deref().map(Arc::from);
                                let caller = &peer.caller;
                                self.app.hub.set_token_id(&caller.user, caller.session, jti);
                                let ok = protocol::reply(id, Rep::Ok(pb::Ok {}));
                                traffic.native(kind, &ok);
                                Some(Immediate::Refreshed(vec![wire.frame(&ok)]))
                            }
                            Err(e) => refused(e.code(), e.to_string()),
                        }
                    }
                    Ok(_) => refused(
                        pb::ErrorCode::ErrorTokenWrongUser,
                        "the token names another user; a session keeps its user".into(),
                    ),
                    Err(e @ AuthError::Expired) => {
                        refused(pb::ErrorCode::ErrorTokenExpired, e.to_string())
                    }
                    Err(e @ AuthError::Invalid(_)) => {
                        refused(pb::ErrorCode::ErrorTokenInvalid, e.to_string())
                    }
                }
            }
            Some(Req::SubscribePresence(r)) => {
                let reg = &self.app.registry;
                let result = reg.subscribe_presence(&peer.caller, &peer.handle, &r.conversation_id);
                reply(answer(id, result))
            }
            Some(Req::UnsubscribePresence(r)) => {
                self.app
                    .registry
                    .unsubscribe_presence(peer.caller.session, &r.conversation_id);
                reply(answer(id, Ok(())))
            }
            Some(Req::SetWill(r)) => {
                let will = SendRequest {
                    client_message_id: String::new(),
                    kind: r.r#type,
                    content: r.content,
                    attributes: r.attributes,
                    mentions: r.mentions,
                    mention_all: r.mention_all,
                    transient: false,
                    want_receipts: false,
                    silent: false,
                };
                let result = self
                    .app
                    .registry
                    .check_will(&peer.caller, &r.conversation_id, &will)
                    .and_then(|()| {
                        will_fits(&self.app.config, &peer.wills, &r.conversation_id, &will)
                    });
                reply(answer(
                    id,
                    result.map(|()| {
                        peer.wills.insert(r.conversation_id, will);
                    }),
                ))
            }
            Some(Req::ClearWill(r)) => {
                peer.wills.remove(&r.conversation_id);
                reply(answer(id, Ok(())))
            }
            Some(body) => {
                let work = dispatch::handle(self.app.clone(), peer.caller.clone(), id, body);
                let work = paid_by(peer.caller.user.clone(), work);
                self.start(Box::pin(async move { Some(wire.frame(&work.await)) }));
                None
            }
        }
    }
}

/// The pending catch-up, once read (never, if there is none).
async fn next_catch_up(
    catch_up: &mut Option<BoxFuture<'static, leancloud::CatchUp>>,
) -> leancloud::CatchUp {
    match catch_up {
        Some(c) => c.await,
        None => std::future::pending().await,
    }
}

/// The next finished request, if any are in progress.
async fn next_reply(
    pending: &mut Option<FuturesUnordered<BoxFuture<'static, Option<WsMessage>>>>,
) -> Option<Option<WsMessage>> {
    match pending {
        Some(p) => p.next().await,
        None => None,
    }
}

/// A write that is waiting: how far the client had got when last looked at and when it last
/// moved, and the timer for these checks (created only when a write has to wait, which most
/// never do).
///
/// It also watches the server's drain: a write still waiting at the drain deadline ends there.
struct Waiting<'a> {
    seen: u64,
    last: Instant,
    timer: Pin<Box<Sleep>>,
    /// The drain starting, while it has not.
    drain: Option<(&'a Drain, Pin<Box<WaitForCancellationFuture<'a>>>)>,
}

/// The drain deadline, once the drain has begun.
fn drain_deadline(drain: Option<&Drain>) -> Option<Instant> {
    drain.filter(|d| d.is_draining()).map(Drain::deadline)
}

impl<'a> Waiting<'a> {
    fn new(progress: &Progress, stall: Duration, drain: Option<&'a Drain>) -> Waiting<'a> {
        let last = Instant::now();
        let mut w = Waiting {
            seen: progress.delivered(),
            last,
            timer: Box::pin(sleep_until(last)),
            drain: drain
                .filter(|d| !d.is_draining())
                .map(|d| (d, Box::pin(d.cancelled()))),
        };
        w.rearm(last, stall, drain_deadline(drain));
        w
    }

    /// Looks again in a quarter of the limit (so a stall is seen at most a quarter late), or at
    /// the deadline.
    fn rearm(&mut self, now: Instant, stall: Duration, deadline: Option<Instant>) {
        let next = (now + stall / 4).min(self.last + stall);
        let next = deadline.map_or(next, |d| next.min(d));
        self.timer.as_mut().reset(next);
    }

    /// Ready when the write must give up: the client received nothing for `stall`, or the
    /// drain deadline passed.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        progress: &Progress,
        stall: Duration,
        drain: Option<&Drain>,
    ) -> Poll<Stop> {
        if let Some((d, cancelled)) = &mut self.drain
            && cancelled.as_mut().poll(cx).is_ready()
        {
            let deadline = d.deadline();
            self.drain = None;
            if deadline < self.timer.deadline() {
                self.timer.as_mut().reset(deadline);
            }
        }
        while self.timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            let deadline = drain_deadline(drain);
            if deadline.is_some_and(|d| now >= d) {
                return Poll::Ready(Stop::Deadline);
            }
            let delivered = progress.delivered();
            if delivered != self.seen {
                self.seen = delivered;
                self.last = now;
            }
            if now >= self.last + stall {
                return Poll::Ready(Stop::Stalled);
            }
            self.rearm(now, stall, deadline);
        }
        Poll::Pending
    }
}

/// Writes frames and flushes once, giving up if the session is kicked meanwhile, if it waits
/// the stall limit with the client receiving nothing, or at the drain deadline (see
/// [`Waiting`]). `Ok(true)`: it had to wait for the client to read.
///
/// A hand-written poll loop rather than `feed`s and a `select!`: every connection's task keeps
/// room for this future, and this form is under a third of the size.
///
/// A raw write (see [`RawFrames`]) given up in the middle of a frame leaves the rest of that
/// frame in `torn`: nothing else may be written before it.
async fn write<S: AsyncRead + AsyncWrite + Unpin>(
    kick: &Kick,
    ws: &mut Ws<S>,
    frames: Vec<WsMessage>,
    conn: &Conn,
    drain: &Drain,
    torn: &mut Option<Vec<u8>>,
) -> Result<bool, Stop> {
    use futures_util::Sink as _;
    if frames.is_empty() {
        return Ok(false);
    }
    let mut raw = match conn.vectored {
        true => RawFrames::of(&frames),
        false => None,
    };
    let mut frames = frames.into_iter();
    let mut kicked = std::pin::pin!(kick.kicked());
    // Boxed: most writes never wait, and every connection's task keeps room for this future.
    let mut waiting: Option<Box<Waiting>> = None;
    std::future::poll_fn(move |cx| {
        let done = 'send: {
            if let Some(raw) = &mut raw {
                break 'send raw
                    .poll_write(ws, frames.as_slice(), cx)
                    .map(|r| r.map_err(|_| Stop::Gone));
            }
            while !frames.as_slice().is_empty() {
                match Pin::new(&mut **ws).poll_ready(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(_)) => break 'send Poll::Ready(Err(Stop::Gone)),
                    Poll::Pending => break 'send Poll::Pending,
                }
                let frame = frames.next().expect("not empty");
                if Pin::new(&mut **ws).start_send(frame).is_err() {
                    break 'send Poll::Ready(Err(Stop::Gone));
                }
            }
            Pin::new(&mut **ws)
                .poll_flush(cx)
                .map(|r| r.map_err(|_| Stop::Gone))
        };
        if let Poll::Ready(r) = done {
            return Poll::Ready(r.map(|()| waiting.is_some()));
        }
        // Only a write that has to wait watches for a kick (the loop looks before each turn).
        if let Poll::Ready(code) = kicked.as_mut().poll(cx) {
            return give_up(&raw, frames.as_slice(), torn, Stop::Kicked(code));
        }
        let (progress, stall) = (&*conn.progress, conn.stall);
        match waiting
            .get_or_insert_with(|| Box::new(Waiting::new(progress, stall, Some(drain))))
            .poll(cx, progress, stall, Some(drain))
        {
            Poll::Ready(stop) => give_up(&raw, frames.as_slice(), torn, stop),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// Data frames written straight to the socket, bypassing the WebSocket library's write buffer:
/// a server's frames are not masked, so a frame is a header of 2 to 10 bytes and its payload.
/// Headers and small payloads are copied into one buffer; a large payload (shared by every
/// recipient of a push) is written from where it is, in the same vectored write. Control frames
/// (pings, closes) and frames mixed with them go through the library, which also answers the
/// client's pings; its buffer is flushed before the first raw byte, and the connection reads
/// nothing while a raw write is under way, so nothing the library writes can come between two
/// raw bytes.
struct RawFrames {
    /// Headers and small payloads, in wire order.
    buf: Vec<u8>,
    /// The wire: stretches of `buf` and large payloads, in order.
    parts: Vec<Part>,
    /// Bytes of the frames already written.
    written: usize,
    /// The library's own buffer has been flushed.
    flushed: bool,
}

/// One stretch of a raw write.
enum Part {
    /// `buf[start..end]`.
    Buf(usize, usize),
    /// The payload of the frame at this index.
    Payload(usize),
}

/// Ends a write with `stop`, keeping the rest of a raw frame it stopped in (see [`write`]).
fn give_up(
    raw: &Option<RawFrames>,
    frames: &[WsMessage],
    torn: &mut Option<Vec<u8>>,
    stop: Stop,
) -> Poll<Result<bool, Stop>> {
    if let Some(raw) = raw {
        *torn = raw.rest_of_frame(frames);
    }
    Poll::Ready(Err(stop))
}

/// A data frame's payload (empty for control frames).
fn payload(f: &WsMessage) -> &[u8] {
    match f {
        WsMessage::Binary(b) => b,
        WsMessage::Text(t) => t.as_bytes(),
        _ => &[],
    }
}

/// Iovecs per vectored write (Linux takes at most 1,024).
const IOVECS: usize = 512;

/// Payloads up to this size are copied next to their header rather than written from where
/// they are (an iovec costs the kernel more than copying this much).
const INLINE_PAYLOAD: usize = 1024;

impl RawFrames {
    /// The raw writing of `frames`, when they are all data frames.
    fn of(frames: &[WsMessage]) -> Option<RawFrames> {
        let mut buf = Vec::with_capacity(
            frames
                .iter()
                .map(|f| {
                    10 + if f.len() <= INLINE_PAYLOAD {
                        f.len()
                    } else {
                        0
                    }
                })
                .sum(),
        );
        let mut parts = Vec::new();
        let mut from = 0;
        for (i, f) in frames.iter().enumerate() {
            let opcode = match f {
                WsMessage::Binary(_) => 0x82,
                WsMessage::Text(_) => 0x81,
                _ => return None,
            };
            buf.push(opcode);
            match f.len() {
                n @ 0..=125 => buf.push(n as u8),
                n @ 126..=0xffff => {
                    buf.push(126);
                    buf.extend_from_slice(&(n as u16).to_be_bytes());
                }
                n => {
                    buf.push(127);
                    buf.extend_from_slice(&(n as u64).to_be_bytes());
                }
            }
            if f.len() <= INLINE_PAYLOAD {
                buf.extend_from_slice(payload(f));
            } else {
                parts.push(Part::Buf(from, buf.len()));
                parts.push(Part::Payload(i));
                from = buf.len();
            }
        }
        if from < buf.len() {
            parts.push(Part::Buf(from, buf.len()));
        }
        Some(RawFrames {
            buf,
            parts,
            written: 0,
            flushed: false,
        })
    }

    /// The stretches of the wire, in order.
    fn slices<'a>(&'a self, frames: &'a [WsMessage]) -> impl Iterator<Item = &'a [u8]> {
        self.parts.iter().map(move |p| match *p {
            Part::Buf(start, end) => &self.buf[start..end],
            Part::Payload(i) => payload(&frames[i]),
        })
    }

    /// The bytes of the frame a write stopped in the middle of (`None`: it stopped between
    /// two frames).
    fn rest_of_frame(&self, frames: &[WsMessage]) -> Option<Vec<u8>> {
        let mut start = 0;
        for f in frames {
            let header = match f.len() {
                0..=125 => 2,
                126..=0xffff => 4,
                _ => 10,
            };
            let end = start + header + f.len();
            if self.written < end {
                if self.written == start {
                    return None;
                }
                let wire: Vec<u8> = self.slices(frames).flatten().copied().collect();
                return Some(wire[self.written..end].to_vec());
            }
            start = end;
        }
        None
    }

    /// Writes what is left of `frames` (the ones [`RawFrames::of`] was made from), then
    /// flushes.
    fn poll_write<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        ws: &mut Ws<S>,
        frames: &[WsMessage],
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        use futures_util::Sink as _;
        if !self.flushed {
            std::task::ready!(Pin::new(&mut **ws).poll_flush(cx)).map_err(std::io::Error::other)?;
            self.flushed = true;
        }
        let io = ws.get_mut();
        loop {
            let mut iov = Vec::with_capacity(self.parts.len().min(IOVECS));
            let mut skip = self.written;
            for part in self.slices(frames) {
                if skip >= part.len() {
                    skip -= part.len();
                } else if iov.len() < IOVECS {
                    iov.push(std::io::IoSlice::new(&part[skip..]));
                    skip = 0;
                }
            }
            let n = match iov.as_slice() {
                [] => return Pin::new(&mut *io).poll_flush(cx),
                [one] => std::task::ready!(Pin::new(&mut *io).poll_write(cx, one))?,
                _ => std::task::ready!(Pin::new(&mut *io).poll_write_vectored(cx, &iov))?,
            };
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
    }
}

/// Runs `write`, giving up (`None`) when it waits the stall limit with the client receiving
/// nothing.
///
/// Not an `async fn`, whose future would hold `write` twice (the argument and its pinned copy):
/// `write` is boxed instead (once per connection, at its close).
fn unstalled<'a, F: Future + 'a>(
    conn: &'a Conn,
    write: F,
) -> impl Future<Output = Option<F::Output>> + 'a {
    let (progress, stall) = (&*conn.progress, conn.stall);
    let mut write = Box::pin(write);
    let mut waiting: Option<Waiting> = None;
    std::future::poll_fn(move |cx| {
        if let Poll::Ready(v) = write.as_mut().poll(cx) {
            return Poll::Ready(Some(v));
        }
        let w = waiting.get_or_insert_with(|| Waiting::new(progress, stall, None));
        w.poll(cx, progress, stall, None).map(|_| None)
    })
}

/// The reply to a session-level request.
fn answer(id: u64, result: Result<(), Error>) -> protocol::ServerFrame {
    match result {
        Ok(()) => protocol::reply(id, Rep::Ok(pb::Ok {})),
        Err(e) => dispatch::error_reply(id, &e),
    }
}

/// Sends the close frame (if any), waits briefly for the peer's close, and drops the socket,
/// all within `close_timeout_ms`, and the close frame's write within the stall limit; after a
/// stalled write it drops the socket at once (a close frame would queue behind the rest).
/// Returns whether the close frame went out.
async fn finish<S: AsyncRead + AsyncWrite + Unpin>(
    mut ws: Ws<S>,
    app: &App,
    close: Option<Close>,
    conn: &Conn,
    stalled: bool,
    brief: bool,
    torn: Option<Vec<u8>>,
) -> bool {
    use tokio::io::AsyncWriteExt;
    app.stats.sessions_closed.inc();
    if stalled {
        return false;
    }
    let wait = Duration::from_millis(app.config.close_timeout_ms);
    let wait = if brief { wait.min(BRIEF_CLOSE) } else { wait };
    if let Some(rest) = torn {
        // The frame a write stopped in goes out whole before anything else.
        let io = ws.get_mut();
        let done = timeout(
            wait,
            unstalled(conn, async {
                io.write_all(&rest).await?;
                io.flush().await
            }),
        )
        .await;
        if !matches!(done, Ok(Some(Ok(())))) {
            return false;
        }
    }
    let Some(Close(code, reason)) = close else {
        // The peer closed (or vanished): send the close reply tungstenite queued, if any.
        let _ = timeout(wait, unstalled(conn, ws.close())).await;
        return false;
    };
    let frame = CloseFrame {
        code: WsCode::from(code),
        reason: reason.into(),
    };
    let mut sent = false;
    let _ = timeout(wait, async {
        let out = unstalled(conn, ws.send(WsMessage::Close(Some(frame)))).await;
        if let Some(Ok(())) = out {
            sent = true;
            if brief {
                return;
            }
            // Read until the peer's close (or EOF) so our close frame is not lost to a reset.
            while let Some(Ok(m)) = ws.next().await {
                if matches!(m, WsMessage::Close(_)) {
                    break;
                }
            }
        }
    })
    .await;
    sent
}

#[cfg(test)]
mod tests {
    use super::*;
    use tungstenite::protocol::frame::Frame;
    use tungstenite::protocol::frame::coding::{Data, OpCode};

    /// The bytes a raw write of `frames` puts on the wire.
    fn wire(frames: &[WsMessage]) -> Vec<u8> {
        let raw = RawFrames::of(frames).unwrap();
        raw.slices(frames).flatten().copied().collect()
    }

    #[test]
    fn raw_frames_are_the_frames_the_library_would_write() {
        let frames: Vec<WsMessage> = [0, 1, 125, 126, 127, 65_535, 65_536, 70_000]
            .into_iter()
            .flat_map(|n| {
                [
                    WsMessage::Binary(Bytes::from(vec![7; n])),
                    WsMessage::Text("é".repeat(n / 2).into()),
                ]
            })
            .collect();
        let mut expected = Vec::new();
        for f in &frames {
            let (data, opcode) = match f {
                WsMessage::Binary(b) => (b.clone(), Data::Binary),
                WsMessage::Text(t) => (Bytes::copy_from_slice(t.as_bytes()), Data::Text),
                _ => unreachable!(),
            };
            Frame::message(data, OpCode::Data(opcode), true)
                .format(&mut expected)
                .unwrap();
        }
        assert_eq!(wire(&frames), expected);
        assert!(RawFrames::of(&[WsMessage::Ping(Bytes::new())]).is_none());
    }

    #[test]
    fn a_write_stopped_inside_a_frame_keeps_the_rest_of_that_frame_only() {
        let frames = vec![
            WsMessage::Binary(Bytes::from_static(b"abc")),
            WsMessage::Binary(Bytes::from(vec![9; 300])),
            WsMessage::Binary(Bytes::from_static(b"z")),
        ];
        let all = wire(&frames);
        let mut raw = RawFrames::of(&frames).unwrap();
        // Between frames: nothing to finish.
        for written in [0, 5, 5 + 304, all.len()] {
            raw.written = written;
            assert_eq!(raw.rest_of_frame(&frames), None, "at {written}");
        }
        // Inside the header or the payload of the second frame: the rest of it.
        for written in [6, 8, 9, 100, 5 + 303] {
            raw.written = written;
            assert_eq!(
                raw.rest_of_frame(&frames),
                Some(all[written..5 + 304].to_vec())
            );
        }
    }
}
