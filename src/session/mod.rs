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
//! Every way out ends with a WebSocket close frame carrying a documented code.

pub mod dispatch;
pub mod leancloud;

use crate::app::App;
use crate::auth::AuthError;
use crate::hub::{Kick, Outgoing, SessionHandle};
use crate::leancloud::LcProtocol;
use crate::logsafe::{Throttle, clean};
use crate::protocol::pb::{self, CloseCode, client_frame::Body as Req, server_frame::Body as Rep};
use crate::protocol::{self, ClientFrame, PushEvent};
use crate::registry::{Caller, Error, SendRequest};
use crate::store::UserId;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCode;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_util::sync::CancellationToken;

/// Frames written per burst before a flush.
const BURST: usize = 64;

type Sink<S> = SplitSink<WebSocketStream<S>, WsMessage>;
type Stream<S> = SplitStream<WebSocketStream<S>>;

/// The wire a connection speaks, chosen by its subprotocol at the upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// `tidings.v1`: protobuf `ClientFrame`/`ServerFrame`.
    Native,
    /// LeanCloud's realtime protocol, in one of its subprotocols.
    LeanCloud(LcProtocol),
}

/// How a session ends: a WebSocket close code and reason.
#[derive(Debug, Clone, Copy)]
struct Close(u16, &'static str);

const NORMAL: Close = Close(1000, "logout");
const GOING_AWAY: Close = Close(1001, "server shutting down");

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
        CloseCode::CloseInternal | CloseCode::CloseUnspecified => "internal error",
    };
    Close(code as i32 as u16, reason)
}

impl Dialect {
    /// The close a connection of this dialect gets for `code`: LeanCloud's SDKs know their
    /// own numbers for the idle, login and size limits.
    fn close(self, code: CloseCode) -> Close {
        match self {
            Dialect::Native => close_of(code),
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
}

async fn read<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut Stream<S>) -> Inbound {
    match stream.next().await {
        Some(Ok(m @ (WsMessage::Binary(_) | WsMessage::Text(_)))) => Inbound::Frame(m),
        Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_))) => {
            Inbound::Activity
        }
        Some(Ok(WsMessage::Close(_))) => Inbound::Closed,
        None => Inbound::Dropped,
        Some(Err(tungstenite::Error::Capacity(_))) => Inbound::Bad(CloseCode::CloseFrameTooLarge),
        Some(Err(tungstenite::Error::Protocol(_))) => Inbound::Bad(CloseCode::CloseBadFrame),
        Some(Err(_)) => Inbound::Dropped,
    }
}

/// Decodes a native frame.
fn decode_native(m: &WsMessage) -> Result<ClientFrame, CloseCode> {
    match m {
        WsMessage::Binary(b) => protocol::decode_client(b).map_err(|_| CloseCode::CloseBadFrame),
        _ => Err(CloseCode::CloseBadFrame),
    }
}

/// Runs one connection to the end.
///
/// Not an `async fn`: an async fn's future keeps room for its arguments for its whole life, and
/// the unsplit stream is 300 bytes every connection would carry.
pub fn run<S>(
    ws: WebSocketStream<S>,
    app: Arc<App>,
    shutdown: CancellationToken,
    dialect: Dialect,
) -> impl Future<Output = ()> + Send
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sink, stream) = ws.split();
    run_split(sink, stream, app, shutdown, dialect)
}

async fn run_split<S>(
    mut sink: Sink<S>,
    mut stream: Stream<S>,
    app: Arc<App>,
    shutdown: CancellationToken,
    dialect: Dialect,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (tx, outbox) = mpsc::channel(app.config.outbox_frames);
    let mut actor = Actor {
        app: app.clone(),
        dialect,
        kick: Arc::new(Kick::default()),
        outbox,
        outbox_tx: tx,
        peers: Vec::with_capacity(1),
        pending: None,
        abnormal: false,
        login_by: None,
    };
    let close = match dialect {
        Dialect::Native => match actor.log_in_native(&mut sink, &mut stream, &shutdown).await {
            Ok(()) => actor.serve(&mut sink, &mut stream, shutdown).await,
            Err(close) => close,
        },
        Dialect::LeanCloud(_) => {
            // Sessions open by command; the first must come within the login timeout.
            actor.login_by =
                Some(Instant::now() + Duration::from_millis(app.config.login_timeout_ms));
            actor.serve(&mut sink, &mut stream, shutdown).await
        }
    };
    let Actor {
        peers, abnormal, ..
    } = actor;
    for peer in peers {
        end_peer(&app, peer, abnormal).await;
    }
    finish(sink, stream, &app, close).await;
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
    stream: &mut Stream<S>,
) -> Result<(u64, pb::Login), Option<Close>> {
    loop {
        match read(stream).await {
            Inbound::Frame(m) => {
                return match decode_native(&m) {
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
        }
    }
}

/// Sends LoginOk, the missed logged events and the unread summary. Returns the last event seq
/// sent, below which live copies are skipped.
async fn welcome<S: AsyncRead + AsyncWrite + Unpin>(
    sink: &mut Sink<S>,
    app: &App,
    caller: &Caller,
    id: u64,
    cursor: u64,
) -> Result<u64, Close> {
    let internal = |e: Error| {
        let user = clean(&caller.user, app.config.log_value_max_chars);
        tracing::error!(error = %e, %user, "login failed");
        close_of(CloseCode::CloseInternal)
    };
    let (events, truncated) = app
        .registry
        .events_after(&caller.user, cursor)
        .map_err(internal)?;
    let head = match events.last() {
        Some(e) => e.user_seq,
        None => app
            .registry
            .last_event_seq(&caller.user)
            .map_err(internal)?,
    };
    let summary = app
        .registry
        .unread_summary(&caller.user)
        .map_err(internal)?;
    let ok = pb::LoginOk {
        user_id: caller.user.to_string(),
        session_id: format!("{:x}", caller.session),
        server_time: app.clock.now_ms(),
        event_cursor: head,
        events_truncated: truncated,
        ping_interval_ms: app.config.ping_interval_ms as u32,
        idle_timeout_ms: app.config.idle_timeout_ms as u32,
    };
    let gone = |_| close_of(CloseCode::CloseInternal);
    sink.feed(binary(protocol::encode(&protocol::reply(
        id,
        Rep::LoginOk(ok),
    ))))
    .await
    .map_err(gone)?;
    for e in events {
        sink.feed(binary(
            protocol::push(Rep::ConversationEvent(e)).native().clone(),
        ))
        .await
        .map_err(gone)?;
    }
    sink.feed(binary(
        protocol::push(Rep::UnreadSummary(summary)).native().clone(),
    ))
    .await
    .map_err(gone)?;
    sink.flush().await.map_err(gone)?;
    Ok(head)
}

fn binary(b: Bytes) -> WsMessage {
    WsMessage::Binary(b)
}

/// One logged-in session on a connection.
struct Peer {
    caller: Caller,
    handle: SessionHandle,
    /// Logged events up to here were replayed at login; live copies of them are skipped.
    replayed_to: u64,
    /// Will messages by conversation id (the last one set wins).
    wills: BTreeMap<String, SendRequest>,
    /// Conversations whose presence this session subscribed to.
    subscriptions: HashSet<u64>,
}

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
    outbox: mpsc::Receiver<Outgoing>,
    /// Cloned into the hub handle of every session opened on this connection.
    outbox_tx: mpsc::Sender<Outgoing>,
    /// The sessions on this connection, in the order they opened (native: exactly one).
    peers: Vec<Peer>,
    /// Requests in progress, each ending in its encoded reply (if it has one); created with the
    /// first request, so a session that only listens does not carry the set's allocation.
    pending: Option<FuturesUnordered<BoxFuture<'static, Option<WsMessage>>>>,
    /// The connection ended without a clean close (dropped, idle, slow, bad input).
    abnormal: bool,
    /// LeanCloud: a session must open before this, or the connection closes.
    login_by: Option<Instant>,
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
}

/// What a frame from the client asks of the loop at once.
enum Immediate {
    /// Write these.
    Reply(Vec<WsMessage>),
    /// Write these, then stop reading and close normally once replies are out.
    Logout(Vec<WsMessage>),
    /// Close now.
    Close(Close),
}

impl Actor {
    /// Reads and verifies the native `Login`, registers the session and sends the welcome.
    async fn log_in_native<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        sink: &mut Sink<S>,
        stream: &mut Stream<S>,
        shutdown: &CancellationToken,
    ) -> Result<(), Option<Close>> {
        let app = self.app.clone();
        let first = tokio::select! {
            r = timeout(Duration::from_millis(app.config.login_timeout_ms), read_login(stream)) => r,
            _ = shutdown.cancelled() => Ok(Err(Some(GOING_AWAY))),
        };
        let (id, login) = match first {
            Err(_) => return Err(Some(close_of(CloseCode::CloseLoginTimeout))),
            Ok(r) => r?,
        };
        // Only what the session needs lives on: the token (a few hundred bytes) is dropped here.
        let pb::Login {
            token,
            device,
            event_cursor,
        } = login;
        let user = match app.auth.verify(&token) {
            Ok(u) => UserId::from(u),
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
                return Err(Some(close_of(code)));
            }
        };
        drop(token);
        if device.len() > 64 {
            return Err(Some(close_of(CloseCode::CloseProtocolViolation)));
        }
        let device = (!device.is_empty()).then(|| Arc::<str>::from(device));
        let caller = self.open_peer(user, device, false);
        let replayed_to = welcome(sink, &app, &caller, id, event_cursor)
            .await
            .map_err(Some)?;
        self.peers[0].replayed_to = replayed_to;
        Ok(())
    }

    /// Registers a new session of `user` on this connection and returns who it is. `shared`:
    /// the connection may carry other sessions, so replacing this one closes only it.
    fn open_peer(&mut self, user: UserId, device: Option<Arc<str>>, shared: bool) -> Caller {
        let app = &self.app;
        let session = app.next_session_id();
        let handle = SessionHandle {
            id: session,
            device,
            outbox: self.outbox_tx.clone(),
            kick: self.kick.clone(),
            shared,
        };
        let registered = app
            .hub
            .register(&user, handle.clone(), app.config.max_sessions_per_user);
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
        tracing::debug!(user = %clean(&user, max), session, device = %clean(device, max), "logged in");
        let caller = Caller { user, session };
        self.peers.push(Peer {
            caller: caller.clone(),
            handle,
            replayed_to: 0,
            wills: BTreeMap::new(),
            subscriptions: HashSet::new(),
        });
        self.login_by = None;
        caller
    }
}

/// Ends a session: out of the hub and its subscriptions; its wills go out if it ended
/// abnormally.
async fn end_peer(app: &App, peer: Peer, abnormal: bool) {
    {
        let Peer {
            caller,
            wills,
            subscriptions,
            ..
        } = peer;
        for num in subscriptions {
            app.registry.drop_subscription(caller.session, num);
        }
        if app.hub.unregister(&caller.user, caller.session) {
            app.registry.presence_changed(&caller.user);
        }
        if abnormal && !wills.is_empty() {
            // Boxed: a rare path, whose future (about 1.1 KB) would otherwise be part of every
            // connection's task.
            Box::pin(send_wills(app, &caller, wills)).await;
        }
    }
}

impl Actor {
    /// The main loop. Returns the close to send (None: the peer is already gone).
    async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        sink: &mut Sink<S>,
        stream: &mut Stream<S>,
        shutdown: CancellationToken,
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
        let timer = sleep_until(first_deadline(ping_at, idle_at, self.login_by));
        tokio::pin!(timer);
        // Set once we stop reading: shutdown (1001) or logout (1000). Pending replies still go out.
        let mut draining: Option<(Close, Instant)> = None;
        let kick = self.kick.clone();
        // Created once: a fresh `cancelled()` per turn registers with the token's Notify under
        // its mutex every time, which showed in fan-out profiles.
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);

        loop {
            if let Some((close, deadline)) = draining
                && (self.pending_len() == 0 || Instant::now() >= deadline)
            {
                return Some(close);
            }
            let reading = draining.is_none() && self.pending_len() < cfg.max_inflight_requests;
            let waiting = self.pending_len() > 0;
            // The arms only decide; the one write below is the loop's only other await. Keeping
            // frames and writes out of the arms keeps this future (which every connection
            // holds for its whole life) small.
            let step = tokio::select! {
                biased;
                code = kick.kicked() => Step::Stop(Stop::Kicked(code)),
                _ = &mut cancelled, if draining.is_none() => {
                    let until = Instant::now() + grace;
                    draining = Some((GOING_AWAY, until));
                    timer.as_mut().reset(first_deadline(ping_at, idle_at, None).min(until));
                    match dialect {
                        // LeanCloud's SDKs reconnect elsewhere at once when told to go away.
                        Dialect::LeanCloud(p) => Step::Write(vec![leancloud::goaway(p)]),
                        Dialect::Native => Step::Continue,
                    }
                }
                Some(reply) = next_reply(&mut self.pending), if waiting => {
                    Step::Write(reply.into_iter().collect())
                }
                Some(first) = self.outbox.recv() => Step::Write(self.burst(first)),
                inbound = read(stream), if reading => match inbound {
                    Inbound::Frame(m) => {
                        idle_at = Instant::now() + idle;
                        let immediate = match dialect {
                            Dialect::Native => match decode_native(&m) {
                                Ok(f) => self.request(f),
                                Err(code) => Some(Immediate::Close(close_of(code))),
                            },
                            Dialect::LeanCloud(p) => leancloud::on_frame(self, p, m),
                        };
                        match immediate {
                            Some(Immediate::Reply(r)) => Step::Write(r),
                            Some(Immediate::Logout(r)) => {
                                let until = Instant::now() + grace;
                                draining = Some((NORMAL, until));
                                timer.as_mut().reset(first_deadline(ping_at, idle_at, None).min(until));
                                Step::Write(r)
                            }
                            Some(Immediate::Close(close)) => {
                                self.abnormal = true;
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
                    Inbound::Bad(c) => {
                        self.abnormal = true;
                        return Some(dialect.close(c));
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
                    let ping = now >= ping_at;
                    if ping {
                        ping_at = now + ping_every;
                    }
                    let next = first_deadline(ping_at, idle_at, self.login_by);
                    timer.as_mut().reset(draining.map_or(next, |d| next.min(d.1)));
                    if ping {
                        Step::Write(vec![WsMessage::Ping(Bytes::new())])
                    } else {
                        Step::Continue
                    }
                }
            };
            let result = match step {
                Step::Continue => Ok(()),
                Step::Write(frames) => write(&kick, sink, frames).await,
                Step::Stop(stop) => Err(stop),
            };
            match result {
                Ok(()) => {}
                Err(Stop::Gone) => {
                    self.abnormal = true;
                    return None;
                }
                Err(Stop::Kicked(code)) => {
                    let code = CloseCode::try_from(code as i32).unwrap_or(CloseCode::CloseInternal);
                    if code == CloseCode::CloseSlowConsumer {
                        self.abnormal = true;
                        tracing::info!(sessions = ?self.peers.iter().map(|p| p.caller.session).collect::<Vec<_>>(), "closing slow consumer");
                    }
                    return Some(dialect.close(code));
                }
            }
        }
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

    /// Takes `first` and whatever else is queued (up to a burst), in this connection's
    /// encoding, skipping replayed events and pushes for sessions that have closed.
    fn burst(&mut self, first: Outgoing) -> Vec<WsMessage> {
        let mut frames = Vec::with_capacity(8);
        let mut next = Some(first);
        while let Some(o) = next {
            self.take(o, &mut frames);
            next = if frames.len() < BURST {
                self.outbox.try_recv().ok()
            } else {
                None
            };
        }
        frames
    }

    fn take(&mut self, o: Outgoing, frames: &mut Vec<WsMessage>) {
        match self.dialect {
            Dialect::Native => {
                let Some(peer) = self.peers.first() else {
                    return;
                };
                if (o.user_seq == 0 || o.user_seq > peer.replayed_to)
                    && !matches!(o.push.event(), PushEvent::Replaced)
                {
                    frames.push(binary(o.push.native().clone()));
                }
            }
            Dialect::LeanCloud(p) => leancloud::take(self, p, o, frames),
        }
    }

    /// Starts a native request. Returns what must be written at once (answers that need no
    /// work).
    fn request(&mut self, frame: ClientFrame) -> Option<Immediate> {
        let id = frame.id;
        let reply =
            |f: protocol::ServerFrame| Some(Immediate::Reply(vec![binary(protocol::encode(&f))]));
        let peer = self.peers.first_mut()?;
        match frame.body {
            None => reply(dispatch::error_reply(id, &Error::UnknownRequest)),
            Some(Req::Ping(_)) => reply(protocol::reply(
                id,
                Rep::Pong(pb::Pong {
                    server_time: self.app.clock.now_ms(),
                }),
            )),
            Some(Req::Logout(_)) => Some(Immediate::Logout(vec![binary(protocol::encode(
                &protocol::reply(id, Rep::Ok(pb::Ok {})),
            ))])),
            Some(Req::SubscribePresence(r)) => {
                let reg = &self.app.registry;
                let result = reg.subscribe_presence(&peer.caller, &peer.handle, &r.conversation_id);
                reply(answer(
                    id,
                    result.map(|num| {
                        peer.subscriptions.insert(num);
                    }),
                ))
            }
            Some(Req::UnsubscribePresence(r)) => {
                if let Some(num) = self
                    .app
                    .registry
                    .unsubscribe_presence(peer.caller.session, &r.conversation_id)
                {
                    peer.subscriptions.remove(&num);
                }
                reply(answer(id, Ok(())))
            }
            Some(Req::SetWill(r)) => {
                let will = SendRequest {
                    client_message_id: String::new(),
                    kind: r.r#type,
                    content: r.content,
                    attributes: r.attributes,
                    mentions: r.mentions,
                    transient: false,
                    want_receipts: false,
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
                self.start(Box::pin(async move {
                    Some(binary(protocol::encode(&work.await)))
                }));
                None
            }
        }
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

/// Writes frames and flushes once, giving up if the session is kicked meanwhile.
///
/// A hand-written poll loop rather than `feed`s and a `select!`: every connection's task keeps
/// room for this future, and this form is under a third of the size (128 bytes against 448).
async fn write<S: AsyncRead + AsyncWrite + Unpin>(
    kick: &Kick,
    sink: &mut Sink<S>,
    frames: Vec<WsMessage>,
) -> Result<(), Stop> {
    use futures_util::Sink as _;
    use std::pin::Pin;
    use std::task::Poll;
    if frames.is_empty() {
        return Ok(());
    }
    let mut frames = frames.into_iter();
    let mut kicked = std::pin::pin!(kick.kicked());
    std::future::poll_fn(move |cx| {
        if let Poll::Ready(code) = kicked.as_mut().poll(cx) {
            return Poll::Ready(Err(Stop::Kicked(code)));
        }
        while !frames.as_slice().is_empty() {
            match Pin::new(&mut *sink).poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => return Poll::Ready(Err(Stop::Gone)),
                Poll::Pending => return Poll::Pending,
            }
            let frame = frames.next().expect("not empty");
            if Pin::new(&mut *sink).start_send(frame).is_err() {
                return Poll::Ready(Err(Stop::Gone));
            }
        }
        Pin::new(&mut *sink)
            .poll_flush(cx)
            .map(|r| r.map_err(|_| Stop::Gone))
    })
    .await
}

/// The reply to a session-level request.
fn answer(id: u64, result: Result<(), Error>) -> protocol::ServerFrame {
    match result {
        Ok(()) => protocol::reply(id, Rep::Ok(pb::Ok {})),
        Err(e) => dispatch::error_reply(id, &e),
    }
}

/// Sends the close frame (if any), waits briefly for the peer's close, and drops the socket.
async fn finish<S: AsyncRead + AsyncWrite + Unpin>(
    mut sink: Sink<S>,
    mut stream: Stream<S>,
    app: &App,
    close: Option<Close>,
) {
    app.stats.sessions_closed.inc();
    let wait = Duration::from_millis(app.config.close_timeout_ms);
    let Some(Close(code, reason)) = close else {
        // The peer closed (or vanished): send the close reply tungstenite queued, if any.
        let _ = timeout(wait, sink.close()).await;
        return;
    };
    let frame = CloseFrame {
        code: WsCode::from(code),
        reason: reason.into(),
    };
    let _ = timeout(wait, async {
        if sink.send(WsMessage::Close(Some(frame))).await.is_ok() {
            // Read until the peer's close (or EOF) so our close frame is not lost to a reset.
            while let Some(Ok(m)) = stream.next().await {
                if matches!(m, WsMessage::Close(_)) {
                    break;
                }
            }
        }
    })
    .await;
}
