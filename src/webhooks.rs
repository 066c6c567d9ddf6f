//! Webhooks: events POSTed to the app's backend, signed as Standard Webhooks 1.0 says.
//!
//! **Outbox.** The writer derives the events from what a committed job pushes (messages,
//! updates, conversation events) and stores them under `O` in the same commit as the change,
//! so a crash can neither lose an event nor report a change that did not commit. Each endpoint
//! keeps its position in the outbox (`Y`), moved only after its endpoint answered 2xx: delivery
//! is at least once, in outbox order (which is commit order, so in order per conversation).
//! Positions are stored, and the records every endpoint has passed deleted, by one bookkeeping
//! task, in a job of its own after each commit while they move ([`keep_books`]), so a delivery
//! never waits for the writer; a position lost to a crash only sends its events again.
//!
//! **Delivery.** One task per endpoint POSTs `{"events": [...]}` batches (up to
//! `webhook_batch_max` events and `webhook_batch_max_bytes` of body, after waiting
//! `webhook_batch_wait_ms` for more), one at a time over a kept-alive connection, with
//! `webhook-id` (stable across retries of a batch), `webhook-timestamp`, `webhook-signature`
//! (`v1,` then the base64 HMAC-SHA256 of `id.timestamp.body`, with a second signature during a
//! secret rotation) and `webhook-attempt`. A failure is retried with exponential backoff and
//! jitter; after `webhook_max_attempts` attempts or `webhook_max_age_secs` the batch is
//! dead-lettered (`Z`) and later events proceed.
//!
//! **The cap.** Whenever the outbox holds more than `webhook_outbox_max_bytes`, its oldest
//! records are dropped down to seven eighths of the cap, whichever endpoints still need them:
//! the ones behind are moved past them (what each lost is counted and logged), by a task of
//! its own that wakes at every commit ([`trim`]), never waiting for an endpoint's attempt in
//! flight. An endpoint whose batch was dropped while it was being sent or retried goes on from
//! where it was moved to; the batch is not retried or dead-lettered. So however many endpoints
//! fail, slowly or at once, they never fill the disk or slow a send. Dead letters are bounded
//! the same way, per endpoint (`webhook_dead_letters_max_bytes`): past it, the oldest go.

use crate::admin::json;
use crate::app::App;
use crate::config::WebhookEndpoint;
use crate::hub::Delivery;
use crate::protocol::PushEvent;
use crate::protocol::pb::{self, ConversationEventKind, server_frame::Body};
use crate::registry::LoggedEvent;
use crate::store::Op;
use base64::Engine as _;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use prost::Message as _;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The event types, as endpoints filter them.
pub const EVENT_TYPES: [&str; 21] = [
    "message.created",
    "message.edited",
    "message.recalled",
    "message.read",
    "message.offline_recipients",
    "conversation.created",
    "conversation.members_added",
    "conversation.members_removed",
    "conversation.updated",
    "conversation.deleted",
    "conversation.expired",
    "conversation.role_changed",
    "conversation.owner_changed",
    "conversation.members_muted",
    "conversation.members_unmuted",
    "conversation.mute_all_changed",
    "conversation.members_blocked",
    "conversation.members_unblocked",
    "system.message_received",
    "user.online",
    "user.offline",
];

/// Whether some configured endpoint takes events of type `kind`: events nobody takes are
/// not computed (the ones that cost work of their own: reads, presence, offline recipients,
/// transcripts).
pub fn wanted(config: &crate::config::Config, kind: &str) -> bool {
    config.webhooks.iter().any(|w| wants(&w.events, kind))
}

/// The outbox record of an event no push carries.
pub fn record(event: pb::outbox_event::Event) -> Bytes {
    Bytes::from(pb::OutboxEvent { event: Some(event) }.encode_to_vec())
}

/// Whether `f` names an event type, or a group of them (`message.*`, `*`).
pub fn is_event_filter(f: &str) -> bool {
    f == "*"
        || EVENT_TYPES.contains(&f)
        || f.strip_suffix(".*")
            .is_some_and(|g| EVENT_TYPES.iter().any(|t| t.split('.').next() == Some(g)))
}

/// Events sent only to endpoints that name them (`user.*` names both presence events,
/// `system.*` the system conversations' messages): each costs work of its own per message,
/// read or login, which an endpoint that takes "all" events should not make every deployment
/// pay; and an endpoint that takes `system.message_received` makes the server accept
/// subscribers' messages to system conversations, which must not follow from a catch-all.
pub const OPT_IN: [&str; 5] = [
    "message.read",
    "message.offline_recipients",
    "system.message_received",
    "user.online",
    "user.offline",
];

fn wants(filter: &[String], kind: &str) -> bool {
    if OPT_IN.contains(&kind) {
        return filter.iter().any(|f| {
            f == kind
                || (f == "user.*" && kind.starts_with("user."))
                || (f == "system.*" && kind.starts_with("system."))
        });
    }
    filter.is_empty()
        || filter.iter().any(|f| {
            f == "*"
                || f == kind
                || f.strip_suffix(".*")
                    .is_some_and(|g| kind.split('.').next() == Some(g))
        })
}

/// The key bytes of a `whsec_` secret (at least 24 of them).
pub fn secret_bytes(s: &str) -> Option<Vec<u8>> {
    let b = base64::engine::general_purpose::STANDARD
        .decode(s.strip_prefix("whsec_")?)
        .ok()?;
    (b.len() >= 24).then_some(b)
}

/// A new signing secret: `whsec_` and 32 random bytes, base64.
pub fn new_secret() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    ))
}

/// `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`.
pub fn signature(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

/// The outbox records of one job: the encoded push of each distinct change it reports (a
/// conversation event is pushed to each member; it is one record).
pub(crate) fn records_of(events: &[LoggedEvent], deliveries: &[Delivery]) -> Vec<Bytes> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut add = |key: String, frame: Bytes| {
        if seen.insert(key) {
            out.push(frame);
        }
    };
    // The users an event is logged for share it: it is encoded once.
    let mut shared = HashSet::new();
    for e in events {
        if let Some(key) = event_key(&e.event)
            && shared.insert(key.clone())
        {
            let body = Body::ConversationEvent(pb::ConversationEvent {
                user_seq: 0,
                ..(*e.event).clone()
            });
            add(key, Bytes::from(frame_of(body)));
        }
    }
    for d in deliveries {
        match d.frame.event() {
            // One push per message (its copies share it): no need to decode it here, on the
            // writer's thread.
            PushEvent::Message(..) => {
                let key = format!("m {:p}", Arc::as_ptr(&d.frame));
                add(key, d.frame.native().clone());
            }
            PushEvent::Other(body) => match body.as_ref() {
                Body::ConversationEvent(e) => {
                    if let Some(key) = event_key(e) {
                        let body = Body::ConversationEvent(pb::ConversationEvent {
                            user_seq: 0,
                            ..e.clone()
                        });
                        add(key, Bytes::from(frame_of(body)));
                    }
                }
                Body::MessageUpdated(u) => {
                    if let Some(m) = &u.message {
                        let key = format!("u {} {} {}", m.id, m.edit_count, m.recalled);
                        add(key, d.frame.native().clone());
                    }
                }
                _ => {}
            },
            _ => {}
        }
    }
    out
}

fn frame_of(body: Body) -> Vec<u8> {
    pb::ServerFrame {
        id: 0,
        body: Some(body),
    }
    .encode_to_vec()
}

/// One change, one key; `None` for events no webhook reports (a member's own mute).
fn event_key(e: &pb::ConversationEvent) -> Option<String> {
    let kind = ConversationEventKind::try_from(e.kind).ok()?;
    // An expiry's record is written by the expiry itself, with the transcript.
    if matches!(
        kind,
        ConversationEventKind::Muted
            | ConversationEventKind::Unspecified
            | ConversationEventKind::Expired
    ) {
        return None;
    }
    Some(format!(
        "e {} {} {} {}",
        e.kind, e.conversation_id, e.server_time, e.by
    ))
}

/// The data of a conversation event.
fn conversation_data(e: pb::ConversationEvent) -> Option<(&'static str, i64, Value)> {
    let kind = match ConversationEventKind::try_from(e.kind).ok()? {
        ConversationEventKind::Created => "conversation.created",
        ConversationEventKind::MembersAdded => "conversation.members_added",
        ConversationEventKind::MembersRemoved | ConversationEventKind::Left => {
            "conversation.members_removed"
        }
        ConversationEventKind::Updated => "conversation.updated",
        ConversationEventKind::Deleted => "conversation.deleted",
        ConversationEventKind::Expired => "conversation.expired",
        ConversationEventKind::RoleChanged => "conversation.role_changed",
        ConversationEventKind::OwnerChanged => "conversation.owner_changed",
        ConversationEventKind::MembersMuted => "conversation.members_muted",
        ConversationEventKind::MembersUnmuted => "conversation.members_unmuted",
        ConversationEventKind::MuteAllChanged => "conversation.mute_all_changed",
        ConversationEventKind::MembersBlocked => "conversation.members_blocked",
        ConversationEventKind::MembersUnblocked => "conversation.members_unblocked",
        _ => return None,
    };
    let left = e.kind == ConversationEventKind::Left as i32;
    let mut data = json!({
        "conversation_id": e.conversation_id,
        "by": e.by,
        "members": e.members,
        "left": left,
        "conversation": e.conversation.map(json::Conversation::from),
    });
    // Group control: the role given, and until when the members are muted.
    match ConversationEventKind::try_from(e.kind).ok()? {
        ConversationEventKind::RoleChanged => {
            let role = pb::MemberRole::try_from(e.role).unwrap_or_default();
            data["role"] = role.as_str_name().into();
        }
        ConversationEventKind::MembersMuted => {
            data["muted_until"] = e.muted_until.into();
        }
        _ => {}
    }
    Some((kind, e.server_time, data))
}

/// The webhook event of a record no push carries.
fn render_own(record: &[u8]) -> Option<(&'static str, i64, Value)> {
    use pb::outbox_event::Event;
    Some(match pb::OutboxEvent::decode(record).ok()?.event? {
        Event::Read(r) => (
            "message.read",
            r.at,
            json!({
                "conversation_id": r.conversation_id,
                "user": r.user,
                "read_seq": r.read_seq,
                "message_id": r.message_id,
            }),
        ),
        Event::Presence(p) => (
            if p.online {
                "user.online"
            } else {
                "user.offline"
            },
            p.at,
            json!({ "user": p.user }),
        ),
        Event::OfflineRecipients(o) => {
            let mut data = json!({
                "conversation_id": o.conversation_id,
                "message_id": o.message_id,
                "seq": o.seq,
                "sender": o.sender,
                "count": o.count,
                "listed": o.listed,
            });
            if o.listed {
                data["recipients"] = o
                    .recipients
                    .into_iter()
                    .map(|r| json!({"user": r.user, "muted": r.muted, "mentioned": r.mentioned}))
                    .collect();
            }
            ("message.offline_recipients", o.at, data)
        }
        Event::SystemMessage(s) => {
            let m = s.message?;
            (
                "system.message_received",
                m.server_time,
                json!({ "message": json::Message::from(m) }),
            )
        }
        Event::Expired(x) => {
            let (kind, at, mut data) = conversation_data(x.event?)?;
            data["transcript"] = x
                .transcript
                .into_iter()
                .map(|m| serde_json::to_value(json::Message::from(m)).unwrap_or_default())
                .collect();
            data["transcript_complete"] = x.complete.into();
            data["message_count"] = x.message_count.into();
            (kind, at, data)
        }
    })
}

/// An outbox record, decoded: its event's type, time (ms) and data.
struct Decoded {
    kind: &'static str,
    at: i64,
    data: Data,
}

enum Data {
    /// `{"message": …}`, serialized straight from the message (the common case).
    Message(pb::Message),
    Value(Value),
}

/// One event as it is sent.
#[derive(serde::Serialize)]
struct Event<D> {
    id: String,
    #[serde(rename = "type")]
    kind: &'static str,
    timestamp: i64,
    data: D,
}

#[derive(serde::Serialize)]
struct MessageData {
    message: json::Message,
}

fn decode(record: &[u8]) -> Option<Decoded> {
    let frame = pb::ServerFrame::decode(record).ok()?;
    let Some(body) = frame.body else {
        let (kind, at, data) = render_own(record)?;
        return Some(Decoded {
            kind,
            at,
            data: Data::Value(data),
        });
    };
    let (kind, at, data) = match body {
        Body::Message(m) => ("message.created", m.server_time, Data::Message(m)),
        Body::MessageUpdated(u) => {
            let m = u.message?;
            let (kind, at) = if m.recalled {
                ("message.recalled", m.recalled_at)
            } else {
                ("message.edited", m.edited_at)
            };
            (kind, at, Data::Message(m))
        }
        Body::ConversationEvent(e) => {
            let (kind, at, data) = conversation_data(e)?;
            (kind, at, Data::Value(data))
        }
        _ => return None,
    };
    Some(Decoded { kind, at, data })
}

/// The JSON of event `seq`: `{"id", "type", "timestamp", "data"}`.
fn encode(seq: u64, d: Decoded) -> Vec<u8> {
    let (id, kind, timestamp) = (seq.to_string(), d.kind, d.at);
    let json = match d.data {
        Data::Message(m) => serde_json::to_vec(&Event {
            id,
            kind,
            timestamp,
            data: MessageData {
                message: json::Message::from(m),
            },
        }),
        Data::Value(data) => serde_json::to_vec(&Event {
            id,
            kind,
            timestamp,
            data,
        }),
    };
    json.unwrap_or_default()
}

/// The webhook event of an outbox record: its type and its JSON.
fn render(seq: u64, record: &[u8]) -> Option<(&'static str, Vec<u8>)> {
    let d = decode(record)?;
    Some((d.kind, encode(seq, d)))
}

/// `{"events": [...]}` of events' JSON.
fn body_of<'a>(events: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut body = b"{\"events\":[".to_vec();
    for (i, e) in events.into_iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(e);
    }
    body.extend_from_slice(b"]}");
    body
}

/// What the endpoint tasks share.
struct Shared {
    app: Arc<App>,
    /// Each endpoint's position in the outbox, as it moves (the bookkeeper stores it).
    cursors: Mutex<HashMap<String, u64>>,
    /// Wakes the bookkeeper: a position moved.
    moved: tokio::sync::Notify,
}

impl Shared {
    /// Moves `name`'s position to `upto`, past `rows` (what it read after its old position):
    /// at once in memory, soon in the store (see [`keep_books`]). The bytes of the records no
    /// endpoint needs any more leave the outbox's count now; the bookkeeper deletes them.
    /// A position only moves forward: one moved past dropped records stays there.
    fn advance(&self, name: &str, upto: u64, rows: &[(u64, Vec<u8>)]) {
        let (low, new_low) = {
            let mut cursors = self.cursors.lock().unwrap_or_else(|p| p.into_inner());
            let low = cursors.values().copied().min().unwrap_or(0);
            let at = cursors.entry(name.to_owned()).or_insert(upto);
            *at = (*at).max(upto);
            (low, cursors.values().copied().min().unwrap_or(0))
        };
        // Only the endpoint furthest behind moves the low mark, and only over records it read.
        if new_low > low {
            let bytes: u64 = rows
                .iter()
                .filter(|(seq, _)| *seq > low && *seq <= new_low)
                .map(|(_, r)| r.len() as u64)
                .sum();
            self.app
                .stats
                .webhook_outbox_bytes
                .fetch_sub(bytes, Ordering::Relaxed);
        }
        self.moved.notify_one();
    }

    /// `name`'s position now: past `cursor` when the cap dropped what it had not taken.
    fn position(&self, name: &str, cursor: u64) -> u64 {
        let cursors = self.cursors.lock().unwrap_or_else(|p| p.into_inner());
        cursors.get(name).copied().unwrap_or(cursor).max(cursor)
    }

    /// Over `webhook_outbox_max_bytes`: drops the oldest records down to seven eighths of it,
    /// moving every endpoint behind past them, counts what each lost and adds it to `losses`
    /// (the caller logs them). The bookkeeper deletes the records.
    fn trim(&self, losses: &mut HashMap<String, u64>) -> Result<(), crate::store::StoreError> {
        let app = &self.app;
        let cap = app.config.webhook_outbox_max_bytes;
        let kept = app.stats.webhook_outbox_bytes.load(Ordering::Relaxed);
        if kept <= cap {
            return Ok(());
        }
        let target = cap - cap / 8;
        let low = self.low();
        // The records to drop, oldest first: seq and size.
        let (mut freed, mut after) = (0u64, low);
        let mut dropped: Vec<(u64, u64)> = Vec::new();
        'read: while kept.saturating_sub(freed) > target {
            let rows = app.store.outbox_after(after, 256)?;
            let Some(&(last, _)) = rows.last() else {
                break;
            };
            for (seq, r) in &rows {
                if kept.saturating_sub(freed) <= target {
                    break 'read;
                }
                freed += r.len() as u64;
                dropped.push((*seq, r.len() as u64));
            }
            after = last;
        }
        let Some(&(new_low, _)) = dropped.last() else {
            return Ok(());
        };
        let mut cursors = self.cursors.lock().unwrap_or_else(|p| p.into_inner());
        // Endpoints may have moved meanwhile; what they passed has left the count already.
        let low = cursors.values().copied().min().unwrap_or(0);
        if new_low <= low {
            return Ok(());
        }
        let mut total = 0;
        for (name, at) in cursors.iter_mut().filter(|(_, at)| **at < new_low) {
            let lost = dropped.iter().filter(|(seq, _)| *seq > *at).count() as u64;
            total += lost;
            *losses.entry(name.clone()).or_default() += lost;
            *at = new_low;
        }
        drop(cursors);
        let freed: u64 = dropped
            .iter()
            .filter(|(seq, _)| *seq > low)
            .map(|(_, size)| size)
            .sum();
        app.stats.webhook_events_dropped.add(total);
        app.stats
            .webhook_outbox_bytes
            .fetch_sub(freed, Ordering::Relaxed);
        self.moved.notify_one();
        Ok(())
    }

    /// The position of the endpoint furthest behind.
    fn low(&self) -> u64 {
        let cursors = self.cursors.lock().unwrap_or_else(|p| p.into_inner());
        cursors.values().copied().min().unwrap_or(0)
    }
}

/// Keeps the outbox within its cap (see [`Shared::trim`]): looks after every commit that
/// adds to it, and every second without one. Logs what each endpoint lost, one line per
/// endpoint at most every ten seconds.
async fn trim(shared: Arc<Shared>, mut seqs: watch::Receiver<u64>, stop: CancellationToken) {
    let mut losses: HashMap<String, u64> = HashMap::new();
    let mut logged: Option<Instant> = None;
    loop {
        if let Err(e) = shared.trim(&mut losses) {
            tracing::error!(error = %e, "reading the webhook outbox failed");
            return;
        }
        if !losses.is_empty() && logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            for (endpoint, dropped) in losses.drain() {
                tracing::warn!(endpoint = %endpoint, dropped, "webhook outbox over webhook_outbox_max_bytes: dropped the oldest events, which this endpoint had not taken (tidings_webhook_events_dropped_total counts them)");
            }
            logged = Some(Instant::now());
        }
        tokio::select! {
            r = seqs.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Records deleted per bookkeeping job, at most.
const PRUNE_MAX: u64 = 4096;

/// Starts one delivery task per configured endpoint, and the bookkeeper that stores their
/// positions; they stop when `stop` is cancelled (an attempt in flight is abandoned: its batch
/// is sent again at the next start). The one task returned ends after all of them, once the
/// last positions are stored.
pub fn spawn(
    app: Arc<App>,
    seqs: watch::Receiver<u64>,
    stop: CancellationToken,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let store = &app.store;
    let mut cursors = HashMap::new();
    for e in &app.config.webhooks {
        cursors.insert(e.name.clone(), store.webhook_cursor(&e.name)?);
    }
    // What is kept undelivered now (the writer adds what it writes from here on).
    let low = cursors.values().copied().min().unwrap_or(0);
    let mut bytes = 0u64;
    let mut after = low;
    loop {
        let rows = store.outbox_after(after, 1024)?;
        let Some(&(last, _)) = rows.last() else {
            break;
        };
        bytes += rows.iter().map(|(_, r)| r.len() as u64).sum::<u64>();
        after = last;
    }
    app.stats
        .webhook_outbox_bytes
        .fetch_add(bytes, Ordering::Relaxed);
    let shared = Arc::new(Shared {
        app: app.clone(),
        cursors: Mutex::new(cursors.clone()),
        moved: tokio::sync::Notify::new(),
    });
    let mut tasks = vec![tokio::spawn(trim(
        shared.clone(),
        seqs.clone(),
        stop.clone(),
    ))];
    for e in &app.config.webhooks {
        let ep = Endpoint::new(e)?;
        tasks.push(tokio::spawn(run_endpoint(
            shared.clone(),
            ep,
            cursors[&e.name],
            seqs.clone(),
            stop.clone(),
        )));
    }
    Ok(vec![tokio::spawn(keep_books(shared, cursors, tasks, stop))])
}

/// Stores the endpoints' positions and deletes the records every endpoint has passed, in one
/// writer job at a time, as soon as the last one committed, while positions move. The delivery
/// tasks never wait for the writer, which a closed loop of sends keeps busy. These jobs take no
/// permit of the writer's queue: there is never more than one of them, so the queue's bound
/// holds within one job. A position lost to a crash only means its batches are sent again
/// (delivery is at least once); a record is deleted in the same commit as the positions past
/// it, or later. `stored` holds the positions in the store. At `stop`, waits for the delivery
/// tasks, then stores their last positions.
async fn keep_books(
    shared: Arc<Shared>,
    mut stored: HashMap<String, u64>,
    deliveries: Vec<JoinHandle<()>>,
    stop: CancellationToken,
) {
    let mut deliveries = Some(deliveries);
    // Records up to here are deleted.
    let mut pruned = 0;
    loop {
        let stopping = tokio::select! {
            _ = shared.moved.notified() => false,
            _ = stop.cancelled() => true,
        };
        if stopping {
            for d in deliveries.take().into_iter().flatten() {
                let _ = d.await;
            }
        }
        loop {
            let (positions, low) = {
                let cursors = shared.cursors.lock().unwrap_or_else(|p| p.into_inner());
                (
                    cursors.clone(),
                    cursors.values().copied().min().unwrap_or(0),
                )
            };
            let mut ops: Vec<Op> = positions
                .iter()
                .filter(|(name, seq)| stored.get(*name) != Some(seq))
                .map(|(name, seq)| Op::PutWebhookCursor {
                    endpoint: name.clone(),
                    seq: *seq,
                })
                .collect();
            if low > pruned {
                // Seqs are consecutive from the oldest record kept: skip what is deleted already
                // (all of it at the start, or when a new endpoint starts from 0).
                match shared.app.store.outbox_after(pruned, 1) {
                    Ok(rows) => pruned = rows.first().map_or(low, |&(first, _)| first - 1),
                    Err(e) => {
                        tracing::error!(error = %e, "reading the webhook outbox failed");
                        return;
                    }
                }
            }
            let upto = low.min(pruned + PRUNE_MAX).max(pruned);
            ops.extend((pruned + 1..=upto).map(|seq| Op::DeleteOutbox { seq }));
            if ops.is_empty() {
                break;
            }
            let done = shared.app.writer.submit_unmetered(ops);
            if crate::registry::writer::wait(done).await.is_err() {
                return;
            }
            stored = positions;
            pruned = upto;
        }
        if stopping {
            return;
        }
    }
}

struct Endpoint {
    config: WebhookEndpoint,
    keys: Vec<Vec<u8>>,
    /// Kept alive between batches.
    conn: crate::http_client::Connection,
}

impl Endpoint {
    fn new(config: &WebhookEndpoint) -> anyhow::Result<Endpoint> {
        Ok(Endpoint {
            keys: std::iter::once(&config.secret)
                .chain(&config.previous_secret)
                .filter_map(|s| secret_bytes(s))
                .collect(),
            conn: crate::http_client::Connection::new(crate::http_client::Base::parse(
                &config.url,
                None,
            )?),
            config: config.clone(),
        })
    }

    /// POSTs `body` as batch `id`; `Ok` on a 2xx answer.
    async fn post(
        &mut self,
        app: &App,
        id: &str,
        body: &Bytes,
        attempt: u32,
    ) -> Result<(), String> {
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let signatures: Vec<String> = self
            .keys
            .iter()
            .map(|k| signature(k, id, ts, body))
            .collect();
        let headers = [
            ("content-type", "application/json".to_owned()),
            ("webhook-id", id.to_owned()),
            ("webhook-timestamp", ts.to_string()),
            ("webhook-signature", signatures.join(" ")),
            ("webhook-attempt", attempt.to_string()),
            (
                "user-agent",
                concat!("tidings/", env!("CARGO_PKG_VERSION")).to_owned(),
            ),
        ];
        let timeout = Duration::from_millis(app.config.webhook_timeout_ms);
        // The base keeps the URL's path as its prefix: post to it as it is.
        match self.conn.post("", &headers, body.clone(), timeout).await {
            Ok((status, _)) if status.is_success() => Ok(()),
            Ok((status, _)) => Err(format!("answered {status}")),
            Err(e) => Err(format!("{e:#}")),
        }
    }
}

/// A batch: the body of one POST, the seqs and records of its events (what a dead letter
/// keeps), and the last seq it passes (events the endpoint does not take included).
struct Batch<'a> {
    body: Bytes,
    kept: Vec<(u64, &'a Vec<u8>)>,
    upto: u64,
}

/// The batch of `rows` (read after `cursor`) for an endpoint that takes `filter`: as many
/// events as fit in `max_bytes` of body, and at least one.
fn batch<'a>(
    rows: &'a [(u64, Vec<u8>)],
    filter: &[String],
    cursor: u64,
    max_bytes: usize,
) -> Batch<'a> {
    const OPEN: &[u8] = b"{\"events\":[";
    const CLOSE: &[u8] = b"]}";
    // A message's event is about three times its record.
    let records: usize = rows.iter().map(|(_, r)| r.len()).sum();
    let mut body = Vec::with_capacity(max_bytes.min(records * 3 + 64));
    body.extend_from_slice(OPEN);
    let mut kept = Vec::new();
    let mut upto = cursor;
    for (seq, r) in rows {
        if let Some(d) = decode(r)
            && wants(filter, d.kind)
        {
            let event = encode(*seq, d);
            if !kept.is_empty() {
                if body.len() + 1 + event.len() + CLOSE.len() > max_bytes {
                    break;
                }
                body.push(b',');
            }
            body.extend_from_slice(&event);
            kept.push((*seq, r));
        }
        upto = *seq;
    }
    body.extend_from_slice(CLOSE);
    Batch {
        body: Bytes::from(body),
        kept,
        upto,
    }
}

async fn run_endpoint(
    shared: Arc<Shared>,
    mut ep: Endpoint,
    mut cursor: u64,
    mut seqs: watch::Receiver<u64>,
    stop: CancellationToken,
) {
    let app = shared.app.clone();
    let c = &app.config;
    let name = ep.config.name.clone();
    // Bytes of this endpoint's dead letters, at least (a replay deletes some).
    let mut dead_bytes = match dead_letter_sizes(&app, &name) {
        Ok(sizes) => sizes.iter().map(|(_, size)| size).sum(),
        Err(e) => {
            tracing::error!(endpoint = %name, error = %e, "reading the webhook dead letters failed");
            return;
        }
    };
    loop {
        // Moved on by the cap, if it dropped what this endpoint had not taken.
        cursor = shared.position(&name, cursor);
        let newest = *seqs.borrow_and_update();
        if newest <= cursor {
            tokio::select! {
                r = seqs.changed() => if r.is_err() { return },
                _ = stop.cancelled() => return,
            }
            continue;
        }
        if newest - cursor < c.webhook_batch_max as u64 && c.webhook_batch_wait_ms > 0 {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(c.webhook_batch_wait_ms)) => {}
                _ = stop.cancelled() => return,
            }
        }
        let rows = match read(&app, cursor, c.webhook_batch_max, c.webhook_batch_max_bytes) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(endpoint = %name, error = %e, "reading the webhook outbox failed");
                return;
            }
        };
        if rows.is_empty() {
            // Everything up to `newest` was pruned (dropped over the cap).
            shared.advance(&name, newest, &[]);
            cursor = newest;
            continue;
        }
        let Batch { body, kept, upto } =
            batch(&rows, &ep.config.events, cursor, c.webhook_batch_max_bytes);
        if kept.is_empty() {
            shared.advance(&name, upto, &rows);
            cursor = upto;
            continue;
        }
        let id = format!("msg_{name}_{}_{upto}", kept[0].0);
        let started = Instant::now();
        let mut attempt = 1u32;
        loop {
            let result = tokio::select! {
                r = ep.post(&app, &id, &body, attempt) => r,
                // Abandoned: sent again at the next start.
                _ = stop.cancelled() => return,
            };
            match result {
                Ok(()) => {
                    app.stats.webhook_events_delivered.add(kept.len() as u64);
                    break;
                }
                Err(why) => {
                    app.stats.webhook_attempts_failed.inc();
                    if shared.position(&name, cursor) >= upto {
                        // Dropped by the cap meanwhile: neither retried nor dead-lettered.
                        tracing::warn!(endpoint = %name, batch = %id, attempt, error = %why, "webhook delivery failed; the batch was dropped over webhook_outbox_max_bytes");
                        break;
                    }
                    let give_up = attempt >= c.webhook_max_attempts
                        || started.elapsed() >= Duration::from_secs(c.webhook_max_age_secs);
                    tracing::warn!(endpoint = %name, batch = %id, attempt, error = %why, dead_letter = give_up, "webhook delivery failed");
                    if give_up {
                        // Stored before the position moves past them.
                        let letters = kept
                            .iter()
                            .map(|(seq, r)| Op::PutDeadLetter {
                                endpoint: name.clone(),
                                seq: *seq,
                                record: Bytes::from((*r).clone()),
                            })
                            .collect();
                        if commit(&app, letters).await.is_err() {
                            return;
                        }
                        dead_bytes += kept.iter().map(|(_, r)| r.len() as u64).sum::<u64>();
                        if dead_bytes > c.webhook_dead_letters_max_bytes {
                            match trim_dead_letters(&app, &name).await {
                                Ok(left) => dead_bytes = left,
                                Err(()) => return,
                            }
                        }
                        app.stats.webhook_dead_letters.add(kept.len() as u64);
                        break;
                    }
                    let base = c.webhook_retry_base_ms.max(1);
                    let delay = base
                        .saturating_mul(1u64 << (attempt - 1).min(30))
                        .min(c.webhook_retry_max_ms.max(base));
                    // Jitter: a random point in the upper half of the delay.
                    let delay = delay / 2 + jitter(delay / 2 + 1);
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(delay)) => {}
                        _ = stop.cancelled() => return,
                    }
                    attempt += 1;
                }
            }
        }
        shared.advance(&name, upto, &rows);
        cursor = shared.position(&name, upto);
    }
}

/// Records after `cursor`: up to `max_events`, and no more once they hold `max_bytes` (an
/// event's JSON is larger than its record, so they fill a batch), read `READ_CHUNK` at a time:
/// records of `conversation.expired` carry transcripts of up to `webhook_transcript_max_bytes`.
fn read(
    app: &App,
    cursor: u64,
    max_events: usize,
    max_bytes: usize,
) -> Result<Vec<(u64, Vec<u8>)>, crate::store::StoreError> {
    const READ_CHUNK: usize = 100;
    let mut rows = Vec::new();
    let mut bytes = 0;
    let mut after = cursor;
    while rows.len() < max_events && bytes < max_bytes {
        let want = (max_events - rows.len()).min(READ_CHUNK);
        let chunk = app.store.outbox_after(after, want)?;
        let Some(&(last, _)) = chunk.last() else {
            break;
        };
        bytes += chunk.iter().map(|(_, r)| r.len()).sum::<usize>();
        let end = chunk.len() < want;
        rows.extend(chunk);
        after = last;
        if end {
            break;
        }
    }
    Ok(rows)
}

/// A pseudo-random number below `n` (for retry jitter; not for secrets).
fn jitter(n: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(n);
    h.finish() % n.max(1)
}

async fn commit(app: &App, ops: Vec<Op>) -> Result<(), ()> {
    let permit = app.writer.reserve().await.map_err(|_| ())?;
    let rx = app.writer.submit(permit, ops, Vec::new(), Vec::new());
    crate::registry::writer::wait(rx).await.map_err(|_| ())
}

/// The seq and size of each of an endpoint's dead letters, oldest first (at most
/// `webhook_dead_letters_max_bytes` of them, and one batch).
fn dead_letter_sizes(
    app: &App,
    endpoint: &str,
) -> Result<Vec<(u64, u64)>, crate::store::StoreError> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let rows = app.store.dead_letters(endpoint, after, 256)?;
        let Some(&(last, _)) = rows.last() else {
            return Ok(out);
        };
        out.extend(rows.iter().map(|(seq, r)| (*seq, r.len() as u64)));
        after = last;
    }
}

/// Over `webhook_dead_letters_max_bytes`: deletes an endpoint's oldest dead letters down to
/// seven eighths of it, counted as dropped and logged. Returns the bytes left.
async fn trim_dead_letters(app: &App, endpoint: &str) -> Result<u64, ()> {
    let cap = app.config.webhook_dead_letters_max_bytes;
    let sizes = dead_letter_sizes(app, endpoint).map_err(|e| {
        tracing::error!(endpoint = %endpoint, error = %e, "reading the webhook dead letters failed");
    })?;
    let mut kept: u64 = sizes.iter().map(|(_, size)| size).sum();
    if kept <= cap {
        return Ok(kept);
    }
    let target = cap - cap / 8;
    let mut ops = Vec::new();
    for (seq, size) in sizes {
        if kept <= target {
            break;
        }
        kept -= size;
        ops.push(Op::DeleteDeadLetter {
            endpoint: endpoint.to_owned(),
            seq,
        });
    }
    let dropped = ops.len() as u64;
    commit(app, ops).await?;
    app.stats.webhook_events_dropped.add(dropped);
    tracing::warn!(endpoint = %endpoint, dropped, "webhook dead letters over webhook_dead_letters_max_bytes: dropped the oldest (tidings_webhook_events_dropped_total counts them)");
    Ok(kept)
}

/// Dead letters read from the store at once, while a page or a replay batch is gathered.
const DEAD_LETTER_CHUNK: usize = 16;

/// An endpoint's dead letters after `after` (outbox seq), oldest first, rendered as they
/// would have been sent: at most `limit`, and no more than `max_bytes` of rendered JSON (the
/// first always goes). Reads the store: call it off the async workers.
pub fn dead_letters(
    app: &App,
    endpoint: &str,
    after: u64,
    limit: usize,
    max_bytes: usize,
) -> Result<Vec<(u64, Value)>, crate::store::StoreError> {
    let mut out = Vec::new();
    let mut bytes = 0usize;
    let mut from = after;
    while out.len() < limit {
        let want = (limit - out.len()).min(DEAD_LETTER_CHUNK);
        let rows = app.store.dead_letters(endpoint, from, want)?;
        let Some(&(last, _)) = rows.last() else {
            break;
        };
        for (seq, r) in &rows {
            let Some((_, event)) = render(*seq, r) else {
                continue;
            };
            if !out.is_empty() && bytes.saturating_add(event.len()) > max_bytes {
                return Ok(out);
            }
            bytes = bytes.saturating_add(event.len());
            if let Ok(v) = serde_json::from_slice(&event) {
                out.push((*seq, v));
            }
        }
        if rows.len() < want {
            break;
        }
        from = last;
    }
    Ok(out)
}

/// The oldest of an endpoint's dead letters that one replay POST carries.
#[derive(Default)]
struct ReplayBatch {
    /// The dead letters taken (those that no longer render included).
    seqs: Vec<u64>,
    /// The events' JSON.
    events: Vec<Vec<u8>>,
    /// More dead letters follow.
    more: bool,
}

/// Gathers a [`ReplayBatch`]: at most `limit` dead letters, in a body of at most `max_bytes`
/// (the first always goes). Reads the store: call it off the async workers.
fn replay_batch(
    app: &App,
    endpoint: &str,
    limit: usize,
    max_bytes: usize,
) -> Result<ReplayBatch, crate::store::StoreError> {
    // `{"events":[` and `]}`.
    let mut bytes = 13usize;
    let mut batch = ReplayBatch::default();
    let mut from = 0;
    loop {
        let want = (limit - batch.seqs.len()).min(DEAD_LETTER_CHUNK);
        if want == 0 {
            batch.more = !app.store.dead_letters(endpoint, from, 1)?.is_empty();
            return Ok(batch);
        }
        let rows = app.store.dead_letters(endpoint, from, want)?;
        for (seq, r) in &rows {
            if let Some((_, event)) = render(*seq, r) {
                let n = event.len() + usize::from(!batch.events.is_empty());
                if !batch.events.is_empty() && bytes.saturating_add(n) > max_bytes {
                    batch.more = true;
                    return Ok(batch);
                }
                bytes = bytes.saturating_add(n);
                batch.events.push(event);
            }
            batch.seqs.push(*seq);
            from = *seq;
        }
        if rows.len() < want {
            return Ok(batch);
        }
    }
}

/// Sends an endpoint's oldest dead letters to it again, as one POST of at most `limit` events
/// and `webhook_batch_max_bytes` of body (the first always goes); the ones sent are deleted.
/// Returns how many were sent and whether more are left (call again for them).
pub async fn replay(app: &Arc<App>, endpoint: &str, limit: usize) -> Result<(usize, bool), String> {
    let Some(config) = app.config.webhooks.iter().find(|w| w.name == endpoint) else {
        return Err(format!("no webhook endpoint named {endpoint:?}"));
    };
    let max_bytes = app.config.webhook_batch_max_bytes;
    let (a, name) = (app.clone(), endpoint.to_owned());
    let ReplayBatch { seqs, events, more } =
        tokio::task::spawn_blocking(move || replay_batch(&a, &name, limit, max_bytes))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
    let (Some(&first), Some(&last)) = (seqs.first(), seqs.last()) else {
        return Ok((0, false));
    };
    let mut ep = Endpoint::new(config).map_err(|e| e.to_string())?;
    let id = format!("replay_{endpoint}_{first}_{last}");
    if !events.is_empty() {
        let body = Bytes::from(body_of(events.iter().map(Vec::as_slice)));
        ep.post(app, &id, &body, 1).await?;
    }
    let ops = seqs
        .iter()
        .map(|seq| Op::DeleteDeadLetter {
            endpoint: endpoint.to_owned(),
            seq: *seq,
        })
        .collect();
    commit(app, ops)
        .await
        .map_err(|()| "the store is unavailable".to_owned())?;
    Ok((seqs.len(), more))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_and_secrets() {
        assert!(is_event_filter("message.created"));
        assert!(is_event_filter("conversation.*"));
        assert!(is_event_filter("*"));
        assert!(!is_event_filter("message.sent"));
        assert!(is_event_filter("user.*"));
        assert!(!is_event_filter("room.*"));
        let f = vec!["message.*".to_owned()];
        assert!(wants(&f, "message.recalled"));
        assert!(!wants(&f, "conversation.created"));
        assert!(wants(&[], "conversation.created"));
        // Events with a cost of their own go only to endpoints that name them.
        assert!(!wants(&[], "message.offline_recipients"));
        assert!(!wants(&f, "message.read"));
        assert!(!wants(&["*".to_owned()], "user.online"));
        assert!(wants(&["user.*".to_owned()], "user.offline"));
        assert!(wants(&["message.read".to_owned()], "message.read"));
        // Naming it is what accepts subscribers' messages to system conversations.
        assert!(!wants(&[], "system.message_received"));
        assert!(!wants(&["*".to_owned()], "system.message_received"));
        assert!(wants(&["system.*".to_owned()], "system.message_received"));
        assert!(secret_bytes("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_some());
        assert!(secret_bytes("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_none());
        assert!(secret_bytes("whsec_c2hvcnQ=").is_none());
        assert!(secret_bytes(&new_secret().unwrap()).is_some());
    }

    /// The example of the Standard Webhooks specification.
    #[test]
    fn signs_as_the_specification_does() {
        let key = secret_bytes("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            signature(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }
}
