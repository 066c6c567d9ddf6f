//! Raw protocol connections for the message hot path: one task per connection both sends
//! (closed loop or on a fixed schedule) and reads its acks and pushes, without the typed
//! client's per-request bookkeeping. Content carries the intended send time, so delivery
//! latency is measured from when the message should have left (no coordinated omission).
//!
//! The loop ([`drive_with`]) is generic over a [`Codec`], the dialect's framing of a send and
//! reading of what comes back: [`Native`] and [`NativeJson`] (the JSON form, `tidings.v1.json`)
//! here, the LeanCloud one in [`crate::lc`]. Each is monomorphized, so the native loop does
//! exactly the work it did before there were several.

use crate::hist::Lat;
use crate::live::Live;
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tidings::client::{connect_raw, connect_raw_with};
use tidings::protocol::pb::{self, client_frame::Body as Req, server_frame::Body as Rep};
use tidings::protocol::{self, ClientFrame, ServerFrame};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Wall-clock nanoseconds (comparable across processes on one machine).
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// A logged-in raw connection.
pub struct Raw {
    ws: Ws,
    next_id: u64,
    /// Speaks the JSON form (`tidings.v1.json`) instead of binary frames.
    json: bool,
}

impl Raw {
    /// Connects, logs in and waits for the `UnreadSummary` that ends the login.
    pub async fn login(url: &str, token: &str) -> anyhow::Result<Raw> {
        Raw::login_as(url, token, false).await
    }

    /// [`Raw::login`], in the JSON form when `json`.
    pub async fn login_as(url: &str, token: &str, json: bool) -> anyhow::Result<Raw> {
        let ws = if json {
            connect_raw_with(url, protocol::JSON_SUBPROTOCOL).await?
        } else {
            connect_raw(url).await?
        };
        let mut raw = Raw {
            ws,
            next_id: 1,
            json,
        };
        match raw
            .request(Req::Login(pb::Login {
                token: token.into(),
                device: String::new(),
                event_cursor: 0,
            }))
            .await?
        {
            Rep::LoginOk(_) => {}
            other => anyhow::bail!("login: unexpected reply {other:?}"),
        }
        loop {
            if let Some(Rep::UnreadSummary(_)) = raw.next_frame().await?.body {
                return Ok(raw);
            }
        }
    }

    async fn next_frame(&mut self) -> anyhow::Result<ServerFrame> {
        loop {
            match self.ws.next().await {
                Some(Ok(WsMessage::Binary(b))) if !self.json => {
                    return Ok(protocol::decode_server(&b)?);
                }
                Some(Ok(WsMessage::Text(t))) if self.json => {
                    return Ok(protocol::decode_server_json(&t)?);
                }
                Some(Ok(WsMessage::Close(f))) => anyhow::bail!("closed by server: {f:?}"),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => anyhow::bail!("connection ended"),
            }
        }
    }

    /// One request; pushes that arrive meanwhile are skipped.
    pub async fn request(&mut self, body: Req) -> anyhow::Result<Rep> {
        let id = self.next_id;
        self.next_id += 1;
        let frame = ClientFrame {
            id,
            body: Some(body),
        };
        self.ws
            .send(if self.json {
                WsMessage::Text(protocol::encode_json(&frame))
            } else {
                WsMessage::Binary(protocol::encode(&frame))
            })
            .await?;
        loop {
            let f = self.next_frame().await?;
            if f.id == id {
                return match f.body {
                    Some(Rep::Error(e)) => anyhow::bail!("error {}: {}", e.code, e.message),
                    Some(b) => Ok(b),
                    None => anyhow::bail!("empty reply"),
                };
            }
        }
    }

    pub async fn conversation(&mut self, req: pb::CreateConversation) -> anyhow::Result<String> {
        match self.request(Req::CreateConversation(req)).await? {
            Rep::Conversation(pb::ConversationReply {
                conversation: Some(c),
            }) => Ok(c.id),
            other => anyhow::bail!("create: unexpected reply {other:?}"),
        }
    }

    pub async fn add_members(&mut self, conv: &str, members: Vec<String>) -> anyhow::Result<()> {
        self.request(Req::AddMembers(pb::AddMembers {
            conversation_id: conv.into(),
            members,
        }))
        .await
        .map(|_| ())
    }
}

/// How a connection sends.
#[derive(Clone, Copy, Debug)]
pub enum Sched {
    /// Keep `window` sends in flight.
    Closed { window: usize },
    /// `rate` messages per second for this sender, rising linearly over the ramp.
    Rate { rate: f64 },
}

/// Which deliveries a connection waits for before it stops.
#[derive(Clone, Debug)]
pub enum Expect {
    /// Everything the sender with this index had acked.
    Peer(usize),
    /// Everything every sender had acked, less this sender's own (if it is one).
    All { own: Option<usize> },
}

/// State shared by the connections of one run.
pub struct Run {
    pub go: Instant,
    pub go_ns: u64,
    pub ramp: Duration,
    /// Sending stops here.
    pub send_until: Instant,
    /// Everything stops here.
    pub hard_stop: Instant,
    pub message_bytes: usize,
    pub max_per_sender: u64,
    /// Acked messages per sender, final once that sender is done.
    pub acked: Vec<AtomicU64>,
    senders_left: AtomicUsize,
    all_sent: watch::Sender<bool>,
    pub live: Arc<Live>,
}

impl Run {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        senders: usize,
        ramp: Duration,
        duration: Duration,
        drain: Duration,
        message_bytes: usize,
        max_per_sender: u64,
        live: Arc<Live>,
    ) -> Arc<Run> {
        let go = Instant::now();
        let (all_sent, _) = watch::channel(senders == 0);
        Arc::new(Run {
            go,
            go_ns: now_ns(),
            ramp,
            send_until: go + ramp + duration,
            hard_stop: go + ramp + duration + drain,
            message_bytes: message_bytes.max(8),
            max_per_sender: if max_per_sender == 0 {
                u64::MAX
            } else {
                max_per_sender
            },
            acked: (0..senders).map(|_| AtomicU64::new(0)).collect(),
            senders_left: AtomicUsize::new(senders),
            all_sent,
            live,
        })
    }

    fn warm_ns(&self) -> u64 {
        self.go_ns + self.ramp.as_nanos() as u64
    }

    /// When the n-th send (from 0) of a sender at `rate`/s should leave.
    /// `phase` (0..1) shifts a sender's sends by that fraction of its interval, so the senders
    /// of a run take turns instead of all sending at the same instants.
    fn intended(&self, n: u64, phase: f64, rate: f64) -> Instant {
        let t = self.ramp.as_secs_f64();
        let n = n as f64 + phase;
        let secs = if t > 0.0 && n < rate * t / 2.0 {
            (2.0 * t * n / rate).sqrt()
        } else if t > 0.0 {
            t + (n - rate * t / 2.0) / rate
        } else {
            n / rate
        };
        self.go + Duration::from_secs_f64(secs)
    }

    fn sender_done(&self, index: usize, acked: u64) {
        self.acked[index].store(acked, Ordering::SeqCst);
        if self.senders_left.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.all_sent.send_replace(true);
        }
    }

    /// Deliveries `e` stands for (final once every sender is done).
    pub fn expected(&self, e: &Expect) -> u64 {
        match e {
            Expect::Peer(i) => self.acked[*i].load(Ordering::SeqCst),
            Expect::All { own } => {
                let all: u64 = self.acked.iter().map(|a| a.load(Ordering::SeqCst)).sum();
                all - own.map_or(0, |i| self.acked[i].load(Ordering::SeqCst))
            }
        }
    }
}

/// What one connection should do.
pub struct Plan {
    /// Conversation to send to and this sender's index in `Run::acked`.
    pub send: Option<(String, usize, Sched)>,
    /// Deliveries to wait for (None: a pure sender).
    pub expect: Option<Expect>,
}

/// What one connection saw.
#[derive(Default)]
pub struct ConnStats {
    pub sent: u64,
    pub acked: u64,
    pub failed: u64,
    pub delivered: u64,
    pub delivered_lat: Lat,
    pub ack_lat: Lat,
    pub last_ack_ns: u64,
    pub last_delivery_ns: u64,
    /// What this connection waited for; `expected` is filled in once every connection is done.
    pub expect: Option<Expect>,
}

fn content(stamp_ns: u64, size: usize) -> Bytes {
    let mut b = BytesMut::with_capacity(size);
    b.put_u64_le(stamp_ns);
    b.resize(size, b'x');
    b.freeze()
}

/// What a received frame is to a sending or receiving connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// A message pushed to this connection, with the send time its content carries (if it
    /// carries one).
    Delivered(Option<u64>),
    /// The ack of the send with this request id.
    Acked(u64),
    /// An error answering the request with this id.
    Failed(u64),
    /// Anything else (other pushes, replies to nothing in flight, undecodable frames).
    Other,
}

/// A dialect's hot path: how a send is framed, and what a received frame means.
pub trait Codec: Send + 'static {
    /// The next send to `conv`, its content stamped with `stamp_ns` and `size` long (or the
    /// dialect's minimum): its request id and frame.
    fn send(&mut self, conv: &str, stamp_ns: u64, size: usize) -> (u64, WsMessage);
    /// What a received data frame is.
    fn seen(&self, m: &WsMessage) -> Seen;
}

/// tidings' own protocol: `SendMessage` (type 1, the stamp in the first 8 content bytes),
/// `SendAck`, `Error`, `Message` pushes (id 0).
pub struct Native {
    next_id: u64,
}

impl Codec for Native {
    #[inline]
    fn send(&mut self, conv: &str, stamp_ns: u64, size: usize) -> (u64, WsMessage) {
        let (id, frame) = native_send(&mut self.next_id, conv, stamp_ns, size);
        (id, WsMessage::Binary(protocol::encode(&frame)))
    }

    #[inline]
    fn seen(&self, m: &WsMessage) -> Seen {
        let WsMessage::Binary(b) = m else {
            return Seen::Other;
        };
        protocol::decode_server(b).map_or(Seen::Other, native_seen)
    }
}

/// The next `SendMessage` of the native protocol (type 1, the stamp in the first 8 content
/// bytes), in either form.
#[inline]
fn native_send(next_id: &mut u64, conv: &str, stamp_ns: u64, size: usize) -> (u64, ClientFrame) {
    let id = *next_id;
    *next_id += 1;
    let frame = ClientFrame {
        id,
        body: Some(Req::SendMessage(pb::SendMessage {
            conversation_id: conv.to_owned(),
            r#type: 1,
            content: content(stamp_ns, size),
            ..Default::default()
        })),
    };
    (id, frame)
}

/// What a native `ServerFrame` is to the loop, in either form.
#[inline]
fn native_seen(f: ServerFrame) -> Seen {
    match f.body {
        Some(Rep::Message(m)) if f.id == 0 => Seen::Delivered(
            (m.content.len() >= 8).then(|| u64::from_le_bytes(m.content[..8].try_into().unwrap())),
        ),
        Some(Rep::SendAck(_)) => Seen::Acked(f.id),
        Some(Rep::Error(_)) => Seen::Failed(f.id),
        _ => Seen::Other,
    }
}

/// The JSON form of tidings' protocol: the same frames as [`Native`], as JSON text messages.
pub struct NativeJson {
    next_id: u64,
}

impl Codec for NativeJson {
    fn send(&mut self, conv: &str, stamp_ns: u64, size: usize) -> (u64, WsMessage) {
        let (id, frame) = native_send(&mut self.next_id, conv, stamp_ns, size);
        (id, WsMessage::Text(protocol::encode_json(&frame)))
    }

    fn seen(&self, m: &WsMessage) -> Seen {
        let WsMessage::Text(t) = m else {
            return Seen::Other;
        };
        protocol::decode_server_json(t).map_or(Seen::Other, native_seen)
    }
}

/// Drives one logged-in native connection until its plan is done or the run's hard stop.
pub async fn drive(raw: Raw, plan: Plan, run: Arc<Run>) -> ConnStats {
    let Raw { ws, next_id, json } = raw;
    if json {
        drive_with(ws, NativeJson { next_id }, plan, run).await
    } else {
        drive_with(ws, Native { next_id }, plan, run).await
    }
}

/// Drives one logged-in connection of any dialect until its plan is done or the run's hard
/// stop.
pub async fn drive_with<C: Codec>(
    mut ws: Ws,
    mut codec: C,
    plan: Plan,
    run: Arc<Run>,
) -> ConnStats {
    let mut st = ConnStats::default();
    let mut inflight: HashMap<u64, u64> = HashMap::new();
    let mut sending = plan.send.is_some();
    let mut reported = plan.send.is_none();
    let mut all_sent = run.all_sent.subscribe();
    let warm = run.warm_ns();
    // Closed-loop senders start staggered over the ramp.
    let start_at = match &plan.send {
        Some((_, i, Sched::Closed { .. })) if !run.acked.is_empty() => {
            run.go + run.ramp.mul_f64(*i as f64 / run.acked.len() as f64)
        }
        _ => run.go,
    };
    // Fixed-rate senders send at evenly shifted instants (see `Run::intended`).
    let phase = match &plan.send {
        Some((_, i, _)) if !run.acked.is_empty() => *i as f64 / run.acked.len() as f64,
        _ => 0.0,
    };
    loop {
        let now = Instant::now();
        let mut wake = run.hard_stop;
        if let Some((conv, _, sched)) = plan.send.as_ref().filter(|_| sending) {
            let mut batch = 0;
            loop {
                if st.sent >= run.max_per_sender || now >= run.send_until {
                    sending = false;
                    break;
                }
                let stamp = match *sched {
                    Sched::Closed { window } => {
                        if now < start_at {
                            wake = start_at;
                            break;
                        }
                        if inflight.len() >= window.max(1) {
                            break;
                        }
                        now_ns()
                    }
                    Sched::Rate { rate } => {
                        let at = run.intended(st.sent, phase, rate);
                        if at >= run.send_until {
                            sending = false;
                            break;
                        }
                        if at > now {
                            wake = at;
                            break;
                        }
                        if inflight.len() >= 1024 {
                            break;
                        }
                        run.go_ns + (at - run.go).as_nanos() as u64
                    }
                };
                let (id, frame) = codec.send(conv, stamp, run.message_bytes);
                if ws.feed(frame).await.is_err() {
                    sending = false;
                    break;
                }
                inflight.insert(id, stamp);
                st.sent += 1;
                batch += 1;
            }
            if batch > 0 {
                run.live.sent.fetch_add(batch, Ordering::Relaxed);
                if ws.flush().await.is_err() {
                    sending = false;
                }
            }
        }
        if !sending && inflight.is_empty() && !reported {
            reported = true;
            if let Some((_, i, _)) = &plan.send {
                run.sender_done(*i, st.acked);
            }
        }
        let done_waiting = match &plan.expect {
            None => true,
            Some(e) => *all_sent.borrow() && st.delivered >= run.expected(e),
        };
        if (reported && done_waiting) || now >= run.hard_stop {
            break;
        }
        let all_sent_now = *all_sent.borrow();
        tokio::select! {
            _ = tokio::time::sleep_until(wake.into()) => {}
            _ = all_sent.changed(), if !all_sent_now => {}
            m = ws.next() => {
                let m = match m {
                    Some(Ok(WsMessage::Close(_))) | Some(Err(_)) | None => break,
                    Some(Ok(m)) => m,
                };
                let seen = codec.seen(&m);
                if seen == Seen::Other {
                    continue;
                }
                let t = now_ns();
                match seen {
                    Seen::Delivered(stamp) => {
                        st.delivered += 1;
                        st.last_delivery_ns = t;
                        run.live.delivered.fetch_add(1, Ordering::Relaxed);
                        if let Some(stamp) = stamp.filter(|s| *s >= warm) {
                            st.delivered_lat.record_ns(t.saturating_sub(stamp));
                        }
                    }
                    Seen::Acked(id) => {
                        if let Some(stamp) = inflight.remove(&id) {
                            st.acked += 1;
                            st.last_ack_ns = t;
                            run.live.acked.fetch_add(1, Ordering::Relaxed);
                            if stamp >= warm {
                                st.ack_lat.record_ns(t.saturating_sub(stamp));
                            }
                        }
                    }
                    Seen::Failed(id) if inflight.remove(&id).is_some() => {
                        st.failed += 1;
                        run.live.errors.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
            }
        }
    }
    // Whatever is still unacked at the end counts as failed.
    st.failed += inflight.len() as u64;
    if let Some((_, i, _)) = plan.send.as_ref().filter(|_| !reported) {
        run.sender_done(*i, st.acked);
    }
    st.expect = plan.expect;
    let _ = ws.close(None).await;
    st
}

/// Fills `convs` round-robin with pipelined sends (64 in flight) until `quota` is used up or
/// `deadline` passes. Returns (acked, failed, last seq per conversation).
pub async fn populate(
    raw: Raw,
    convs: Vec<String>,
    quota: Arc<AtomicU64>,
    deadline: Instant,
    message_bytes: usize,
    live: Arc<Live>,
) -> (u64, u64, Vec<u64>) {
    let Raw {
        mut ws,
        mut next_id,
        ..
    } = raw;
    let mut inflight: HashMap<u64, usize> = HashMap::new();
    let mut last_seq = vec![0u64; convs.len()];
    let (mut acked, mut failed, mut turn) = (0u64, 0u64, 0usize);
    let mut more = !convs.is_empty();
    loop {
        if more && Instant::now() >= deadline {
            more = false;
        }
        let mut batch = 0;
        while more && inflight.len() < 64 {
            // Take one message from the shared quota.
            if quota
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| q.checked_sub(1))
                .is_err()
            {
                more = false;
                break;
            }
            let c = turn % convs.len();
            turn += 1;
            let id = next_id;
            next_id += 1;
            let frame = protocol::encode(&ClientFrame {
                id,
                body: Some(Req::SendMessage(pb::SendMessage {
                    conversation_id: convs[c].clone(),
                    r#type: 1,
                    content: content(now_ns(), message_bytes.max(8)),
                    ..Default::default()
                })),
            });
            if ws.feed(WsMessage::Binary(frame)).await.is_err() {
                more = false;
                break;
            }
            inflight.insert(id, c);
            batch += 1;
        }
        if batch > 0 {
            live.sent.fetch_add(batch, Ordering::Relaxed);
            if ws.flush().await.is_err() {
                break;
            }
        }
        if !more && inflight.is_empty() {
            break;
        }
        let next = tokio::time::timeout_at((deadline + Duration::from_secs(30)).into(), ws.next());
        let b = match next.await {
            Ok(Some(Ok(WsMessage::Binary(b)))) => b,
            Ok(Some(Ok(WsMessage::Close(_)) | Err(_)) | None) | Err(_) => break,
            Ok(Some(Ok(_))) => continue,
        };
        let Ok(f) = protocol::decode_server(&b) else {
            continue;
        };
        match (f.body, inflight.remove(&f.id)) {
            (Some(Rep::SendAck(a)), Some(c)) => {
                acked += 1;
                live.acked.fetch_add(1, Ordering::Relaxed);
                last_seq[c] = last_seq[c].max(a.seq);
            }
            (_, Some(_)) => {
                failed += 1;
                live.errors.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
    failed += inflight.len() as u64;
    let _ = ws.close(None).await;
    (acked, failed, last_seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(ramp_secs: u64) -> Arc<Run> {
        Run::new(
            4,
            Duration::from_secs(ramp_secs),
            Duration::from_secs(10),
            Duration::from_secs(1),
            100,
            0,
            Arc::new(Live::default()),
        )
    }

    /// Four senders at 1 msg/s each take turns: their n-th sends are a quarter second apart,
    /// not at one instant, and each keeps its own 1 s interval.
    #[test]
    fn fixed_rate_senders_take_turns() {
        let r = run(0);
        for n in 0..3 {
            let at: Vec<Duration> = (0..4)
                .map(|i| r.intended(n, i as f64 / 4.0, 1.0) - r.go)
                .collect();
            for (i, d) in at.iter().enumerate() {
                let want = Duration::from_millis(n * 1000 + i as u64 * 250);
                assert!(
                    d.abs_diff(want) < Duration::from_micros(1),
                    "sender {i}, send {n}: {d:?}"
                );
            }
        }
    }

    /// During a ramp the schedule still rises (sends get closer together) and the shifted
    /// senders stay in order within each interval.
    #[test]
    fn the_ramp_keeps_senders_apart_and_speeds_up() {
        let r = run(4);
        let at = |n: u64, i: usize| r.intended(n, i as f64 / 4.0, 2.0);
        for n in 0..20 {
            for i in 0..3 {
                assert!(at(n, i) < at(n, i + 1));
            }
            assert!(at(n, 3) < at(n + 1, 0));
        }
        let first = at(1, 0) - at(0, 0);
        let later = at(11, 0) - at(10, 0);
        assert!(later < first, "{later:?} !< {first:?}");
    }
}
