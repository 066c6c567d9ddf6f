//! The LeanCloud dialect on a connection: commands in, registry calls, replies and pushes out.
//!
//! A LeanCloud socket carries several client sessions (one per `peerId`); a command without
//! `peerId` is for the first one opened. Opening checks the login signature (HMAC-SHA1 over
//! `appid:peerid::timestamp:nonce` with `leancloud_master_key`, as LeanCloud's servers did) or
//! a session token (`st`) this server issued. Everything a command asks is a registry call made
//! for that session's [`Caller`]: no rule lives here, only the translation of shapes.
//!
//! Messages: what a LeanCloud client sends is stored byte for byte (`msg` as the content, its
//! `_lctype` as the type), so other LeanCloud clients get exactly what was sent. A message from
//! a native client becomes a typed message on the way out: type 1 with UTF-8 content is a text
//! message (`_lctype` −1), other types keep their number as `_lctype`, non-UTF-8 content goes
//! as `binaryMsg`, and a recalled message is `{"_lctype":-127}`.

use super::{Actor, Close, Immediate, Peer, told};
use crate::app::App;
use crate::hub::Outgoing;
use crate::leancloud::pb::{
    self as lc, CommandType as Cmd, GenericCommand, OpType as Op, logs_command::QueryDirection,
};
use crate::leancloud::{self as codec, ErrorCode, FrameRef, LcProtocol, WireFrame};
use crate::protocol::pb::{self, CloseCode, ConversationEventKind as Ev, ConversationKind};
use crate::protocol::{self, PushEvent};
use crate::registry::conversation::CreateRequest;
use crate::registry::limits::{Work, paid_by, paid_by_now};
use crate::registry::{Caller, Error, HistoryRequest, SendRequest};
use crate::store::UserId;
use bytes::Bytes;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// IM pushes carry `service = 2`; Swift drops pushes without it.
const SERVICE_IM: i32 = 2;
/// Longest client id LeanCloud accepted.
const MAX_PEER_ID_CHARS: usize = 64;
/// Most ids one `session/query` may ask about (the JS API's documented cap).
const MAX_QUERY_PEERS: usize = 20;
/// Attribute marking a message a LeanCloud client sent as `binaryMsg`.
const BINARY_ATTRIBUTE: &str = "lc.binary";
/// Edits and recalls replayed after `session/open` (the oldest first, also at most
/// `leancloud_offline_bytes_max` of them; a client that missed more gets the rest at its next
/// open, from the newest `patchTimestamp` it saw).
pub(crate) const PATCH_REPLAY_MAX: usize = 1000;
/// Patches per replayed `patch/modify` push.
const PATCHES_PER_PUSH: usize = 50;

/// The close for a command that does not decode (RFC 6455's 1007, invalid payload data): bad
/// protobuf, bad base64, or a text frame that is not UTF-8.
pub(super) const UNDECODABLE: Close = Close(1007, "malformed command");

/// The close a LeanCloud connection gets for a native close reason: the SDKs know 4107, 4108
/// and 4109 by name; the rest keep tidings' codes (the SDKs reconnect after any of them).
pub(super) fn close_of(code: CloseCode) -> Close {
    let lc = match code {
        CloseCode::CloseLoginTimeout => codec::CloseCode::LoginTimeout,
        CloseCode::CloseIdleTimeout => codec::CloseCode::ReadTimeout,
        CloseCode::CloseFrameTooLarge => codec::CloseCode::FrameTooLong,
        other => return super::close_of(other),
    };
    Close(lc.code(), lc.reason())
}

fn wire(p: LcProtocol, command: &GenericCommand) -> WsMessage {
    match codec::encode(p, command) {
        WireFrame::Binary(b) => WsMessage::Binary(b),
        WireFrame::Text(t) => WsMessage::Text(t.into()),
    }
}

pub(super) fn command(cmd: Cmd, op: Option<Op>) -> GenericCommand {
    GenericCommand {
        cmd: Some(cmd as i32),
        op: op.map(|o| o as i32),
        ..Default::default()
    }
}

/// The push that tells a LeanCloud client to reconnect elsewhere (sent when draining).
pub(super) fn goaway(p: LcProtocol) -> WsMessage {
    wire(p, &command(Cmd::Goaway, None))
}

pub(super) fn error_command(
    i: Option<i32>,
    code: ErrorCode,
    detail: Option<String>,
) -> GenericCommand {
    GenericCommand {
        i,
        error_message: Some(lc::ErrorCommand {
            code: code.code(),
            reason: code.reason().to_owned(),
            detail,
            ..Default::default()
        }),
        ..command(Cmd::Error, None)
    }
}

/// The LeanCloud error for a registry error, and whether the reason is left out (an expired
/// temporary conversation answers 4303 with no reason, which the JS SDK turns into its own
/// "expired" error).
pub(super) fn error_code(e: &Error, sending: bool) -> (ErrorCode, bool) {
    let code = match e {
        Error::ConversationNotFound | Error::NotInList => ErrorCode::ConversationNotFound,
        Error::ConversationExpired => return (ErrorCode::ConversationNotFound, true),
        Error::NotAMember if sending => ErrorCode::InvalidMessagingTarget,
        Error::NotAMember => ErrorCode::ConversationMembershipRequired,
        Error::PermissionDenied(_) => ErrorCode::ConversationOperationUnauthorized,
        Error::NotAllowedForKind { .. } => ErrorCode::ConversationReadOnly,
        Error::MessageNotFound => ErrorCode::MessageNotFound,
        Error::LimitExceeded(_) | Error::MessageTooLarge { .. } | Error::InvalidArgument(_) => {
            ErrorCode::ConversationApiFailed
        }
        Error::WindowExpired(_) => ErrorCode::MessageRecallDisabled,
        Error::AlreadyLoggedIn | Error::UnknownRequest => ErrorCode::ConversationApiFailed,
        Error::Unavailable | Error::Internal => ErrorCode::InternalError,
        Error::RateLimited { .. } if sending => ErrorCode::MessageSentQuotaExceeded,
        Error::RateLimited { .. } => ErrorCode::AppQuotaExceeded,
        Error::Rejected(_) if sending => ErrorCode::MessageRejectedByApp,
        Error::Rejected(_) => ErrorCode::ConversationRejectedByApp,
        Error::Muted(_) => ErrorCode::Silienced,
        Error::Blacklisted(_) | Error::Blocked => ErrorCode::BlockedByConv,
        Error::OwnerMustTransfer => ErrorCode::ConversationNeedOwner,
        Error::Banned(_) => ErrorCode::KickedByApp,
        Error::TokenRevoked => ErrorCode::SessionTokenExpired,
        // Imports come only through the admin API.
        Error::ImportConflict | Error::ImportOutOfOrder(_) => ErrorCode::ConversationApiFailed,
    };
    (code, false)
}

pub(super) fn failure(i: Option<i32>, e: &Error) -> GenericCommand {
    let (code, silent) = error_code(e, false);
    let mut c = error_command(i, code, (!silent).then(|| e.to_string()));
    if silent && let Some(m) = c.error_message.as_mut() {
        m.reason = String::new();
    }
    if let (Error::Rejected(why), Some(m)) = (e, c.error_message.as_mut()) {
        m.app_msg = Some(why.clone());
    }
    c
}

/// Handles one frame from the client.
pub(super) fn on_frame(actor: &mut Actor, p: LcProtocol, m: WsMessage) -> Option<Immediate> {
    let frame = match &m {
        WsMessage::Binary(b) => FrameRef::Binary(b),
        WsMessage::Text(t) => FrameRef::Text(t.as_str()),
        _ => return None,
    };
    let cmd = match codec::decode(p, frame) {
        Ok(cmd) => cmd,
        // The envelope decoded but names nothing known: answer that request, keep going.
        Err(e) if e.request_id().is_some() => {
            let reply = error_command(e.request_id(), ErrorCode::ConversationApiFailed, None);
            return Some(Immediate::Reply(vec![wire(p, &reply)]));
        }
        Err(e) => {
            tracing::debug!(error = %e, "malformed LeanCloud frame");
            let code = e.close_code();
            let reason = if code == codec::CloseCode::FrameTooLong.code() {
                codec::CloseCode::FrameTooLong.reason()
            } else {
                UNDECODABLE.1
            };
            return Some(Immediate::Close(Close(code, reason)));
        }
    };
    let counted = crate::traffic::leancloud_kind(cmd.cmd, cmd.op);
    let kind = cmd.cmd.and_then(|c| Cmd::try_from(c).ok())?;
    let op = cmd.op.and_then(|o| Op::try_from(o).ok());
    let traffic = &actor.app.stats.traffic;
    let reply = |c: GenericCommand| {
        traffic.leancloud(counted, Some(&c));
        Some(Immediate::Reply(vec![wire(p, &c)]))
    };
    match (kind, op) {
        // The SDK's heartbeat, with or without a client open: the connection's bucket only.
        (Cmd::Echo, _) => match actor.app.registry.admit_ping(&mut actor.bucket) {
            Ok(()) => reply(GenericCommand {
                i: cmd.i,
                ..command(Cmd::Echo, None)
            }),
            Err(e) => {
                let refused = failure(cmd.i, &e);
                if cmd.i.is_none() {
                    traffic.leancloud(counted, Some(&refused));
                }
                cmd.i.and_then(|_| reply(refused))
            }
        },
        (Cmd::Session, Some(Op::Open)) => open(actor, p, cmd),
        // LeanCloud Push's login on a shared socket (Android): not an IM session.
        (Cmd::Login | Cmd::Loggedin | Cmd::Data, _) => {
            traffic.leancloud(counted, None);
            None
        }
        _ => {
            let Some(at) = peer_index(actor, cmd.peer_id.as_deref()) else {
                let refused = error_command(cmd.i, ErrorCode::SessionRequired, None);
                traffic.leancloud(counted, Some(&refused));
                return cmd.i.and_then(|_| reply(refused));
            };
            if let Some(work) = work_of(kind, op, &cmd) {
                let user = actor.peers[at].caller.user.clone();
                if let Err(e) = actor.app.registry.admit(&user, &mut actor.bucket, work) {
                    let answer = if kind == Cmd::Direct {
                        GenericCommand {
                            i: cmd.i,
                            ack_message: Some(failed_ack(&e)),
                            ..command(Cmd::Ack, None)
                        }
                    } else {
                        failure(cmd.i, &e)
                    };
                    if cmd.i.is_none() {
                        traffic.leancloud(counted, Some(&answer));
                    }
                    return cmd.i.and_then(|_| reply(answer));
                }
                // A `read` names any number of conversations: charged before the next frame.
                if let Some(r) = cmd.read_message.as_ref().filter(|_| kind == Cmd::Read) {
                    actor.app.registry.charge_reads(&user, r.convs.len());
                }
            }
            let user = actor.peers[at].caller.user.clone();
            paid_by_now(user, || on_session_command(actor, p, at, kind, op, cmd))
        }
    }
}

/// What a command of an open client costs under the rate limits (`None`: not charged:
/// closing, and delivery acks that name no message and no time, which do nothing). A
/// delivery ack costs what the native `AckDelivered` does; it has no reply, so one over the
/// limit is dropped (counted as refused with 4113 in `tidings_requests_total`), and a later
/// ack covers what it would have. `echo` is charged before this, as a [`Work::Ping`], since it
/// needs no client open.
fn work_of(kind: Cmd, op: Option<Op>, cmd: &GenericCommand) -> Option<Work> {
    Some(match (kind, op) {
        (Cmd::Session, Some(Op::Close)) => return None,
        (Cmd::Session, Some(Op::Refresh)) => Work::Ping,
        (Cmd::Ack, _) => {
            let a = cmd.ack_message.as_ref()?;
            if a.mid.is_none() && a.tots.is_none() {
                return None;
            }
            Work::Light
        }
        (Cmd::Direct | Cmd::Patch, _) => Work::Send,
        (Cmd::Logs, _) | (Cmd::Conv, Some(Op::Query | Op::Members)) => Work::Page,
        (Cmd::Conv, Some(Op::Start | Op::Add | Op::Remove | Op::Update)) => Work::Change,
        (k, op) if super::leancloud_groups::is_group_command(k, op) => {
            super::leancloud_groups::work_of(op)
        }
        _ => Work::Light,
    })
}

/// The session a command is for: the one named by `peerId`, else the first opened.
fn peer_index(actor: &Actor, peer_id: Option<&str>) -> Option<usize> {
    match peer_id {
        Some(id) => actor.peers.iter().position(|p| *p.caller.user == *id),
        None if actor.peers.is_empty() => None,
        None => Some(0),
    }
}

fn on_session_command(
    actor: &mut Actor,
    p: LcProtocol,
    at: usize,
    kind: Cmd,
    op: Option<Op>,
    cmd: GenericCommand,
) -> Option<Immediate> {
    let counted = crate::traffic::leancloud_kind(cmd.cmd, cmd.op);
    let stats = actor.app.stats.clone();
    let reply = |c: GenericCommand| {
        stats.traffic.leancloud(counted, Some(&c));
        Some(Immediate::Reply(vec![wire(p, &c)]))
    };
    let i = cmd.i;
    match (kind, op) {
        (Cmd::Session, Some(Op::Close)) => {
            let peer = remove_peer(actor, at);
            release(&actor.app, peer);
            reply(GenericCommand {
                i,
                peer_id: cmd.peer_id,
                ..command(Cmd::Session, Some(Op::Closed))
            })
        }
        (Cmd::Session, Some(Op::Refresh)) => {
            let peer = &actor.peers[at];
            let (st, st_ttl) = session_token(
                &actor.app,
                &peer.caller.user,
                &peer.handle.device,
                peer.handle.login_at,
            );
            reply(GenericCommand {
                i,
                session_message: Some(lc::SessionCommand {
                    st: Some(st),
                    st_ttl: Some(st_ttl),
                    ..Default::default()
                }),
                ..command(Cmd::Session, Some(Op::Refreshed))
            })
        }
        (Cmd::Session, Some(Op::Query)) => {
            let asked = cmd
                .session_message
                .map(|s| s.session_peer_ids)
                .unwrap_or_default();
            if asked.len() > MAX_QUERY_PEERS {
                return reply(error_command(
                    i,
                    ErrorCode::ConversationApiFailed,
                    Some(format!("at most {MAX_QUERY_PEERS} ids per query")),
                ));
            }
            let online = actor.app.registry.online_users(&asked);
            reply(GenericCommand {
                i,
                session_message: Some(lc::SessionCommand {
                    online_session_peer_ids: online,
                    ..Default::default()
                }),
                ..command(Cmd::Session, Some(Op::QueryResult))
            })
        }
        (Cmd::Direct, _) if cmd.direct_message.as_ref().and_then(|d| d.will) == Some(true) => {
            // A will: kept by the session (one per client), sent only if it drops.
            let d = cmd.direct_message.unwrap_or_default();
            let conv = d.cid.clone().unwrap_or_default();
            let req = send_request(d);
            let peer = &mut actor.peers[at];
            // One will per client: the caps apply to it alone.
            let result = actor
                .app
                .registry
                .check_will(&peer.caller, &conv, &req)
                .and_then(|()| super::will_fits(&actor.app.config, &BTreeMap::new(), &conv, &req));
            let ack = match result {
                Ok(()) => {
                    peer.wills.clear();
                    peer.wills.insert(conv, req);
                    lc::AckCommand {
                        t: Some(actor.app.clock.now_ms()),
                        ..Default::default()
                    }
                }
                Err(e) => failed_ack(&e),
            };
            reply(GenericCommand {
                i,
                ack_message: Some(ack),
                ..command(Cmd::Ack, None)
            })
        }
        _ => {
            let app = actor.app.clone();
            let caller = actor.peers[at].caller.clone();
            if kind == Cmd::Direct {
                // The hot path: the future keeps the send request only, not the whole command
                // (every request in flight holds its future).
                let d = cmd.direct_message.unwrap_or_default();
                let conv = d.cid.clone().unwrap_or_default();
                let req = send_request(d);
                let i = cmd.i;
                let user = caller.user.clone();
                actor.start(Box::pin(paid_by(user, async move {
                    let ack = send(&app, &caller, &conv, req).await;
                    let reply = GenericCommand {
                        i,
                        ack_message: Some(ack),
                        ..command(Cmd::Ack, None)
                    };
                    app.stats.traffic.leancloud(counted, Some(&reply));
                    i.map(|_| wire(p, &reply))
                })));
                return None;
            }
            let user = caller.user.clone();
            actor.start(Box::pin(paid_by(user, async move {
                let answer = handle(&app, &caller, kind, op, cmd).await;
                app.stats.traffic.leancloud(counted, answer.as_ref());
                Some(wire(p, &answer?))
            })));
            None
        }
    }
}

/// Takes a client off the socket. A socket left without clients must open one within the idle
/// timeout (checked when the loop's timer next fires, at most a ping interval later), or it
/// closes: answering pings alone does not keep it.
fn remove_peer(actor: &mut Actor, at: usize) -> Peer {
    let peer = actor.peers.remove(at);
    if actor.peers.is_empty() {
        let idle = std::time::Duration::from_millis(actor.app.config.idle_timeout_ms);
        actor.login_by = Some(tokio::time::Instant::now() + idle);
    }
    peer
}

/// Takes a session out of the hub (a clean close: its will is dropped).
fn release(app: &App, peer: Peer) {
    app.registry.drop_subscriptions(peer.caller.session);
    super::unregister(app, &peer.caller);
}

/// `session/open`: a signed login or a resume with a session token.
fn open(actor: &mut Actor, p: LcProtocol, cmd: GenericCommand) -> Option<Immediate> {
    let app = actor.app.clone();
    let i = cmd.i;
    let counted = crate::traffic::leancloud_kind(cmd.cmd, cmd.op);
    let fail_because = |code: ErrorCode, detail: Option<String>| {
        let closed = GenericCommand {
            i,
            peer_id: cmd.peer_id.clone(),
            session_message: Some(lc::SessionCommand {
                code: Some(code.code()),
                reason: Some(code.reason().to_owned()),
                detail,
                ..Default::default()
            }),
            ..command(Cmd::Session, Some(Op::Closed))
        };
        app.stats.traffic.leancloud(counted, Some(&closed));
        Some(Immediate::Reply(vec![wire(p, &closed)]))
    };
    let fail = |code: ErrorCode| fail_because(code, None);
    if app.config.leancloud_app_id.as_deref() != cmd.app_id.as_deref() {
        return fail(ErrorCode::AppNotAvailable);
    }
    let Some(peer_id) = cmd.peer_id.clone().filter(|id| valid_peer_id(&app, id)) else {
        return fail(ErrorCode::InvalidLogin);
    };
    let s = cmd.session_message.clone().unwrap_or_default();
    let now = app.clock.now_ms();
    let (tag, resumed) = match &s.st {
        Some(st) if s.r == Some(true) => match verify_session_token(&app, &peer_id, st, now) {
            Some((tag, login_at)) => (tag, Some(login_at)),
            None => return fail(ErrorCode::SessionTokenExpired),
        },
        _ => {
            if !login_signature_ok(&app, &peer_id, &s, now) {
                return fail(ErrorCode::SignatureFailed);
            }
            (
                s.tag.clone().filter(|t| !t.is_empty() && t != "default"),
                None,
            )
        }
    };
    // The app's backend's bans and revocations: a signature counts as issued at its time, a
    // session token at its login's.
    let user = UserId::from(peer_id.as_str());
    let issued_at = resumed.or(s.t);
    let epoch = app.registry.access_epoch();
    let refused = |e: Error| match e {
        Error::Banned(reason) => {
            fail_because(ErrorCode::KickedByApp, Some(format!("banned: {reason}")))
        }
        Error::TokenRevoked if resumed.is_some() => fail(ErrorCode::SessionTokenExpired),
        Error::TokenRevoked => fail(ErrorCode::SignatureFailed),
        _ => fail(ErrorCode::InternalError),
    };
    if let Err(e) = app.registry.check_access(&user, issued_at, None) {
        return refused(e);
    }
    // Charged to the user like a native login (its unread push is a page of the list);
    // refused, nothing changes, the client already open under this id included.
    if let Err(e) = app.registry.admit_user(&user, Work::Login) {
        return fail_because(ErrorCode::AppQuotaExceeded, Some(e.to_string()));
    }
    // Opening a client that is already open on this socket starts it afresh.
    if let Some(at) = peer_index(actor, Some(&peer_id)) {
        let old = actor.peers.remove(at);
        release(&app, old);
    } else if actor.peers.len() >= app.config.leancloud_max_clients_per_socket {
        return fail(ErrorCode::AppQuotaExceeded);
    }
    let device = tag.map(Arc::<str>::from);
    let steps_before = app.hub.steps();
    // A resume whose device was taken over by a later login is refused; that login stays.
    let Some(caller) = actor.open_peer(user, device.clone(), true, resumed, None) else {
        return fail(ErrorCode::SessionConflict);
    };
    if app.registry.access_epoch() != epoch
        && let Err(e) = app.registry.check_access(&caller.user, issued_at, None)
    {
        if let Some(at) = peer_index(actor, Some(&peer_id)) {
            let peer = remove_peer(actor, at);
            release(&app, peer);
        }
        return refused(e);
    }
    let (st, st_ttl) = session_token(&app, &caller.user, &device, resumed.unwrap_or(now));
    let opened = GenericCommand {
        i,
        peer_id: Some(peer_id.clone()),
        server_ts: Some(now),
        session_message: Some(lc::SessionCommand {
            st: Some(st),
            st_ttl: Some(st_ttl),
            ..Default::default()
        }),
        ..command(Cmd::Session, Some(Op::Opened))
    };
    app.stats.traffic.leancloud(counted, Some(&opened));
    let mut frames = vec![wire(p, &opened)];
    // `.3` clients get unread counts after opening, with the last messages (charged by their
    // bytes); `.1` clients get their unread messages (charged as they are read).
    let summary = if p.pushes_unread_counts() {
        app.registry.login_summary(&caller.user, false)
    } else {
        app.registry.unread_summary(&caller.user, false, 0)
    };
    let summary = match summary {
        Ok(summary) => summary,
        Err(e) => {
            tracing::error!(error = %e, user = %caller.user, "catch-up after open failed");
            return Some(Immediate::Reply(frames));
        }
    };
    // A delivery step that overlapped the open may push what the catch-up tells of: remember
    // what it told, so those pushes are skipped.
    if app.hub.overlapped(steps_before)
        && let Some(at) = peer_index(actor, Some(&peer_id))
    {
        actor.peers[at].told = told(&summary, |e| e.unread > 0);
    }
    let offline = if p.pushes_unread_counts() {
        frames.extend(unread(&caller, summary, now).map(|c| wire(p, &envelope(c, &peer_id))));
        None
    } else {
        Some(summary)
    };
    // Then the edits and recalls made since the client's `lastPatchTime`.
    let patched_after = s.last_patch_time.filter(|t| *t > 0);
    if offline.is_some() || patched_after.is_some() {
        // Store reads: off the async workers, and written before anything else this socket
        // gets (see `CatchUp`).
        actor.catch_up = Some(Box::pin(catch_up(
            app,
            p,
            caller,
            peer_id,
            offline,
            patched_after,
        )));
    }
    Some(Immediate::Reply(frames))
}

/// The catch-up after an open, read off the async workers: what it writes, and the
/// conversations whose messages it sent (`None`: all it was told of). The socket writes
/// nothing else and reads nothing until it is out, so it comes right after `session/opened`,
/// as it would if read at once, and a push it makes redundant is recognised (see `told`).
pub(super) struct CatchUp {
    session: u64,
    frames: Vec<WsMessage>,
    sent: Option<HashSet<String>>,
}

/// Reads an open's catch-up: for `.1` clients, the unread messages of `offline` (see
/// [`offline_messages`]); after `patched_after`, the edits and recalls since then. Charged afterwards
/// for what it read.
async fn catch_up(
    app: Arc<App>,
    p: LcProtocol,
    caller: Caller,
    peer_id: String,
    offline: Option<pb::UnreadSummary>,
    patched_after: Option<i64>,
) -> CatchUp {
    let session = caller.session;
    let read = {
        let (app, caller) = (app.clone(), caller.clone());
        tokio::task::spawn_blocking(move || {
            let mut commands = Vec::new();
            let mut sent = None;
            let mut read = 0;
            if let Some(summary) = offline {
                let (messages, conversations) =
                    offline_messages(&app, &caller, &summary, &mut read)?;
                commands = messages;
                sent = Some(conversations);
            }
            if let Some(after) = patched_after {
                let changed = app.registry.patched_since(
                    &caller.user,
                    after,
                    PATCH_REPLAY_MAX,
                    app.config.leancloud_offline_bytes_max,
                )?;
                let changed: Vec<&pb::Message> = changed.iter().collect();
                commands.extend(changed.chunks(PATCHES_PER_PUSH).map(patches));
            }
            app.registry.charge_offline(&caller.user, read);
            Ok::<_, Error>((commands, sent))
        })
        .await
    };
    let (commands, sent) = match read.map_err(|_| Error::Internal).and_then(|r| r) {
        Ok(read) => read,
        Err(e) => {
            tracing::error!(error = %e, user = %caller.user, "catch-up after open failed");
            (Vec::new(), None)
        }
    };
    CatchUp {
        session,
        frames: commands
            .into_iter()
            .map(|c| wire(p, &envelope(c, &peer_id)))
            .collect(),
        sent,
    }
}

/// Hands a finished catch-up to the socket: its frames, to be written before anything else.
/// A push of a conversation the catch-up sent nothing of goes out after all.
pub(super) fn caught_up(actor: &mut Actor, c: CatchUp) -> Vec<WsMessage> {
    if let (Some(sent), Some(peer)) = (
        &c.sent,
        actor
            .peers
            .iter_mut()
            .find(|x| x.caller.session == c.session),
    ) {
        peer.told.retain(|conv, _| sent.contains(conv));
    }
    c.frames
}

/// A client id is a user id (the rule logins follow) of at most 64 characters, LeanCloud's own
/// limit.
fn valid_peer_id(app: &App, id: &str) -> bool {
    id.chars().count() <= MAX_PEER_ID_CHARS
        && crate::auth::check_user_id(id, app.config.max_user_id_bytes).is_ok()
}

/// The `unread` push after opening: every conversation with unread messages among the first
/// `login_summary_max` of the list.
fn unread(caller: &Caller, summary: pb::UnreadSummary, now: i64) -> Option<GenericCommand> {
    let convs: Vec<lc::UnreadTuple> = summary
        .entries
        .into_iter()
        .filter(|e| e.unread > 0)
        .map(|e| {
            let mut t = lc::UnreadTuple {
                cid: e.conversation_id,
                unread: e.unread as i32,
                conv_type: Some(conv_type(e.kind)),
                ..Default::default()
            };
            if let Some(m) = e.last_message {
                t.mid = Some(m.id.clone());
                t.timestamp = Some(m.server_time);
                t.from = Some(m.sender.clone());
                t.mentioned = Some(crate::protocol::mentions(&m, &caller.user));
                match content(&m) {
                    Content::Text(s) => t.data = Some(s),
                    Content::Binary(b) => t.binary_msg = Some(b),
                }
            }
            t
        })
        .collect();
    (!convs.is_empty()).then(|| GenericCommand {
        unread_message: Some(lc::UnreadCommand {
            convs,
            notif_time: Some(now),
        }),
        ..command(Cmd::Unread, None)
    })
}

/// The catch-up of `lc.protobuf2.1` clients: the unread messages of each conversation among the
/// first `login_summary_max` of the list, in the list's order (of each at most `page_max`, the
/// newest, oldest first), as `direct { offline: true }` with `hasMore` on all but the last one.
/// At most `leancloud_offline_messages_max` messages and `leancloud_offline_bytes_max` bytes in
/// all (the first message always goes): where they cut, the last one sent says `hasMore` too,
/// and the client reads the rest with `logs`. Also returns the conversations it sent messages
/// of; adds the messages it read to `read`.
fn offline_messages(
    app: &App,
    caller: &Caller,
    summary: &pb::UnreadSummary,
    read: &mut usize,
) -> Result<(Vec<GenericCommand>, HashSet<String>), Error> {
    let c = &app.config;
    let (max, budget) = (
        c.leancloud_offline_messages_max,
        c.leancloud_offline_bytes_max,
    );
    let mut out: Vec<GenericCommand> = Vec::new();
    let mut sent = HashSet::new();
    let (mut bytes, mut cut) = (0usize, false);
    for e in summary.entries.iter().filter(|e| e.unread > 0) {
        let left = max.saturating_sub(out.len());
        if left == 0 || (bytes >= budget && !out.is_empty()) {
            cut = true;
            break;
        }
        let window = e
            .last_seq
            .saturating_sub(e.read_seq)
            .min(u64::from(c.page_max));
        let want = window.min(left as u64);
        if want == 0 {
            continue;
        }
        let from = e.last_seq - want;
        let (messages, _) = app
            .registry
            .sync(caller, &e.conversation_id, from, want as u32)?;
        *read += messages.len();
        // Only what the summary counted: a message committed since is pushed.
        let mut page: Vec<GenericCommand> = messages
            .iter()
            .filter(|m| m.seq <= e.last_seq)
            .map(|m| {
                let mut d = direct_of(m, e.kind);
                d.offline = Some(true);
                d.has_more = Some(true);
                GenericCommand {
                    direct_message: Some(d),
                    ..command(Cmd::Direct, None)
                }
            })
            .collect();
        // The newest that fit what is left of the bytes.
        let mut fit = 0;
        for m in page.iter().rev() {
            let n = prost::Message::encoded_len(m);
            if bytes + n > budget && !(out.is_empty() && fit == 0) {
                cut = true;
                break;
            }
            bytes += n;
            fit += 1;
        }
        if fit > 0 {
            sent.insert(e.conversation_id.clone());
        }
        out.extend(page.drain(page.len() - fit..));
        if cut || want < window {
            cut = true;
            break;
        }
    }
    if !cut && let Some(d) = out.last_mut().and_then(|c| c.direct_message.as_mut()) {
        d.has_more = Some(false);
    }
    Ok((out, sent))
}

/// Adds the per-recipient envelope of a push.
fn envelope(mut c: GenericCommand, peer_id: &str) -> GenericCommand {
    c.peer_id = Some(peer_id.to_owned());
    c.service = Some(SERVICE_IM);
    c
}

// ---- signatures and session tokens ----

use crate::leancloud::sign::{hex, hmac_sha1, same};

/// The login signature of `session/open`: `hex(HMAC-SHA1(master key,
/// "appid:peerid::timestamp:nonce"))`, with a timestamp within `leancloud_signature_ttl_secs`.
/// Without a master key (only allowed with `insecure_dev`) every open passes.
fn login_signature_ok(app: &App, peer_id: &str, s: &lc::SessionCommand, now: i64) -> bool {
    let Some(key) = &app.config.leancloud_master_key else {
        return app.config.insecure_dev;
    };
    let (Some(sig), Some(t), Some(n)) = (&s.s, s.t, &s.n) else {
        return false;
    };
    let app_id = app.config.leancloud_app_id.as_deref().unwrap_or_default();
    let ttl_ms = app.config.leancloud_signature_ttl_secs as i64 * 1000;
    if (now - t).abs() > ttl_ms {
        return false;
    }
    let expected = crate::leancloud::sign::login_signature(key, app_id, peer_id, t, n);
    same(expected.as_bytes(), sig.to_ascii_lowercase().as_bytes())
}

/// With `leancloud_conversation_signatures`, whether a `conv/start` (`action` `None`) or a
/// `conv/add`/`conv/remove` (`invite`/`kick`) carries a valid, fresh conversation signature
/// over its members (`m`, as sent) and, for add and remove, its `cid`.
fn conversation_signature_ok(
    app: &App,
    caller: &Caller,
    c: &lc::ConvCommand,
    action: Option<&str>,
) -> bool {
    signature_ok(
        app,
        caller,
        c.cid.as_deref().unwrap_or_default(),
        &c.m,
        (c.s.as_deref(), c.t, c.n.as_deref()),
        action,
    )
}

/// Whether a conversation or blacklist command's signature `(s, t, n)` over `conv`, the
/// `members` named and `action` is valid and fresh (when signatures are required).
pub(super) fn signature_ok(
    app: &App,
    caller: &Caller,
    conv: &str,
    members: &[String],
    (s, t, n): (Option<&str>, Option<i64>, Option<&str>),
    action: Option<&str>,
) -> bool {
    if !app.config.leancloud_conversation_signatures {
        return true;
    }
    let Some(key) = &app.config.leancloud_master_key else {
        return app.config.insecure_dev;
    };
    let (Some(sig), Some(t), Some(n)) = (s, t, n) else {
        return false;
    };
    let ttl_ms = app.config.leancloud_signature_ttl_secs as i64 * 1000;
    if (app.clock.now_ms() - t).abs() > ttl_ms {
        return false;
    }
    let app_id = app.config.leancloud_app_id.as_deref().unwrap_or_default();
    let members: Vec<&str> = members.iter().map(String::as_str).collect();
    let expected = crate::leancloud::sign::conversation_signature(
        key,
        app_id,
        &caller.user,
        action.map(|a| (conv, a)),
        &members,
        t,
        n,
    );
    same(expected.as_bytes(), sig.to_ascii_lowercase().as_bytes())
}

/// The key session tokens are signed with: the master key, or (development without one) a key
/// made at start, so tokens end with the process.
fn token_key(app: &App) -> Vec<u8> {
    static DEV_KEY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    match &app.config.leancloud_master_key {
        Some(k) => format!("st\0{k}").into_bytes(),
        None => DEV_KEY
            .get_or_init(|| crate::auth::new_secret().unwrap_or_else(|_| "dev".into()))
            .clone()
            .into_bytes(),
    }
}

/// A session token for `peer` (and its device tag, which a resume does not send again), of
/// the login made at `login_at` (ms; a resume continues it): `expiry.login_at.signature.tag`.
/// Stateless: it is valid wherever the key is the same.
fn session_token(app: &App, peer: &str, tag: &Option<Arc<str>>, login_at: i64) -> (String, i32) {
    let ttl = app.config.leancloud_session_token_ttl_secs;
    let exp = app.clock.now_ms() + ttl as i64 * 1000;
    let tag = tag.as_deref().unwrap_or("");
    let sig = token_signature(app, peer, exp, login_at, tag);
    (
        format!("{exp}.{login_at}.{sig}.{tag}"),
        i32::try_from(ttl).unwrap_or(i32::MAX),
    )
}

fn token_signature(app: &App, peer: &str, exp: i64, login_at: i64, tag: &str) -> String {
    let app_id = app.config.leancloud_app_id.as_deref().unwrap_or_default();
    let message = format!("{app_id}\0{peer}\0{exp}\0{login_at}\0{tag}");
    hex(&hmac_sha1(&token_key(app), message.as_bytes()))
}

/// The device tag (`None` inside: no tag) and the login time a valid, unexpired token of
/// `peer` carries.
pub(super) fn verify_session_token(
    app: &App,
    peer: &str,
    st: &str,
    now: i64,
) -> Option<(Option<String>, i64)> {
    let mut parts = st.splitn(4, '.');
    let exp: i64 = parts.next()?.parse().ok()?;
    let login_at: i64 = parts.next()?.parse().ok()?;
    let sig = parts.next()?;
    let tag = parts.next()?;
    if exp <= now
        || !same(
            token_signature(app, peer, exp, login_at, tag).as_bytes(),
            sig.as_bytes(),
        )
    {
        return None;
    }
    Some(((!tag.is_empty()).then(|| tag.to_owned()), login_at))
}

// ---- requests ----

/// Runs a command of an open session; returns the reply (None: the command expects none).
async fn handle(
    app: &Arc<App>,
    caller: &Caller,
    kind: Cmd,
    op: Option<Op>,
    cmd: GenericCommand,
) -> Option<GenericCommand> {
    let i = cmd.i;
    let reg = &app.registry;
    let answer = |mut c: GenericCommand| {
        c.i = i;
        c
    };
    let result: Result<GenericCommand, Error> = match (kind, op) {
        (Cmd::Ack, _) => {
            // Delivery acks carry no `i` and get no reply.
            // By message id (Swift, Java) or up to a time (JS acks ranges `fromts..=tots`).
            let a = cmd.ack_message.unwrap_or_default();
            let conv = a.cid.clone().unwrap_or_default();
            let seq = match (
                a.mid.as_deref().and_then(|m| reg.message_seq(&conv, m)),
                a.tots,
            ) {
                (Some(seq), _) => Some(seq),
                (None, Some(tots)) => newest_at_or_before(app, caller, &conv, tots),
                (None, None) => None,
            };
            if let Some(seq) = seq {
                let _ = reg.ack_delivered(caller, &conv, seq).await;
            }
            return None;
        }
        (Cmd::Read, _) => {
            let r = cmd.read_message.unwrap_or_default();
            for t in r.convs {
                // Up to the message named, or everything there is.
                let seq = t
                    .mid
                    .as_deref()
                    .and_then(|m| reg.message_seq(&t.cid, m))
                    .unwrap_or(u64::MAX);
                let _ = reg.mark_read(caller, &t.cid, seq).await;
            }
            return None;
        }
        (Cmd::Logs, _) => logs(app, caller, cmd.logs_message.unwrap_or_default()),
        (Cmd::Conv, Some(Op::Start)) => {
            let c = cmd.conv_message.unwrap_or_default();
            if c.temp_conv != Some(true) && !conversation_signature_ok(app, caller, &c, None) {
                return i
                    .map(|i| error_command(Some(i), ErrorCode::ConversationSignatureFailed, None));
            }
            start(app, caller, c).await
        }
        (Cmd::Conv, Some(Op::Query)) => {
            query_off_runtime(app, caller, cmd.conv_message.unwrap_or_default()).await
        }
        (Cmd::Conv, Some(Op::Update)) => {
            update(app, caller, cmd.conv_message.unwrap_or_default()).await
        }
        (Cmd::Conv, Some(op @ (Op::Mute | Op::Unmute))) => {
            let c = cmd.conv_message.unwrap_or_default();
            let id = c.cid.unwrap_or_default();
            reg.set_muted(caller, &id, op == Op::Mute)
                .await
                .map(|()| GenericCommand {
                    conv_message: Some(lc::ConvCommand {
                        udate: Some(iso(app.clock.now_ms())),
                        ..Default::default()
                    }),
                    ..command(Cmd::Conv, Some(Op::Updated))
                })
        }
        (Cmd::Conv, Some(op @ (Op::Add | Op::Remove))) => {
            let c = cmd.conv_message.unwrap_or_default();
            let action = if op == Op::Add { "invite" } else { "kick" };
            if !conversation_signature_ok(app, caller, &c, Some(action)) {
                return i
                    .map(|i| error_command(Some(i), ErrorCode::ConversationSignatureFailed, None));
            }
            super::leancloud_groups::add_or_remove(app, caller, op, c).await
        }
        (k, op) if super::leancloud_groups::is_group_command(k, op) => {
            return super::leancloud_groups::handle(app, caller, k, op, cmd).await;
        }
        (Cmd::Conv, Some(Op::Members)) => {
            let c = cmd.conv_message.unwrap_or_default();
            reg.online_members(caller, c.cid.as_deref().unwrap_or_default())
                .map(|m| GenericCommand {
                    conv_message: Some(lc::ConvCommand {
                        m,
                        ..Default::default()
                    }),
                    ..command(Cmd::Conv, Some(Op::Members))
                })
        }
        (Cmd::Conv, Some(Op::IsMember)) => {
            let c = cmd.conv_message.unwrap_or_default();
            let ids: Vec<String> = c
                .cids
                .into_iter()
                .take(app.config.member_page_max as usize)
                .collect();
            reg.are_members(caller, &ids).map(|members| {
                let mut answers = serde_json::Map::new();
                for (id, member) in ids.into_iter().zip(members) {
                    answers.insert(id, member.into());
                }
                GenericCommand {
                    conv_message: Some(lc::ConvCommand {
                        results: Some(lc::JsonObjectMessage {
                            data: serde_json::Value::Object(answers).to_string(),
                        }),
                        ..Default::default()
                    }),
                    ..command(Cmd::Conv, Some(Op::Results))
                }
            })
        }
        (Cmd::Patch, Some(Op::Modify)) => {
            patch(app, caller, cmd.patch_message.unwrap_or_default()).await
        }
        (Cmd::Conv, Some(Op::MaxRead)) => {
            let c = cmd.conv_message.unwrap_or_default();
            reg.receipt_times(caller, c.cid.as_deref().unwrap_or_default())
                .map(|times| {
                    let max_ack = times.iter().map(|t| t.1).max().unwrap_or(0);
                    let max_read = times.iter().map(|t| t.2).max().unwrap_or(0);
                    let tuples = if c.query_all_members == Some(true) {
                        times
                            .into_iter()
                            .map(|(pid, ack, read)| lc::MaxReadTuple {
                                pid: Some(pid),
                                max_ack_timestamp: Some(ack),
                                max_read_timestamp: Some(read),
                            })
                            .collect()
                    } else {
                        Vec::new()
                    };
                    GenericCommand {
                        conv_message: Some(lc::ConvCommand {
                            max_ack_timestamp: Some(max_ack),
                            max_read_timestamp: Some(max_read),
                            max_read_tuples: tuples,
                            ..Default::default()
                        }),
                        ..command(Cmd::Conv, Some(Op::MaxRead))
                    }
                })
        }
        (Cmd::Conv, Some(Op::Count)) => {
            let c = cmd.conv_message.unwrap_or_default();
            reg.count_members(caller, c.cid.as_deref().unwrap_or_default())
                .map(|n| GenericCommand {
                    conv_message: Some(lc::ConvCommand {
                        count: Some(n as i32),
                        ..Default::default()
                    }),
                    ..command(Cmd::Conv, Some(Op::Result))
                })
        }
        _ => {
            return i.map(|i| {
                error_command(
                    Some(i),
                    ErrorCode::ConversationApiFailed,
                    Some(format!("not supported: {kind:?} {op:?}")),
                )
            });
        }
    };
    let reply = match result {
        Ok(c) => answer(c),
        Err(e) => failure(i, &e),
    };
    i.map(|_| reply)
}

/// The seq of the newest message sent at or before `t` that the caller can see.
fn newest_at_or_before(app: &App, caller: &Caller, conv: &str, t: i64) -> Option<u64> {
    let req = HistoryRequest {
        limit: 1,
        start_time: t,
        start_inclusive: true,
        ..Default::default()
    };
    let (messages, ..) = app.registry.history(caller, conv, req).ok()?;
    messages.last().map(|m| m.seq)
}

/// Sends a message; the ack to answer with.
async fn send(app: &App, caller: &Caller, conv: &str, req: SendRequest) -> lc::AckCommand {
    match app.registry.send(caller, conv, req).await {
        Ok(a) => lc::AckCommand {
            uid: Some(a.message_id),
            t: Some(a.server_time),
            ..Default::default()
        },
        Err(e) => failed_ack(&e),
    }
}

fn failed_ack(e: &Error) -> lc::AckCommand {
    let (code, silent) = error_code(e, true);
    lc::AckCommand {
        code: Some(code.code()),
        reason: (!silent).then(|| code.reason().to_owned()),
        // The pre-send hook's own reason, where LeanCloud put its hooks' messages.
        app_msg: match e {
            Error::Rejected(why) => Some(why.clone()),
            _ => None,
        },
        ..Default::default()
    }
}

/// A `direct` as a send: the content stored as sent (see the module docs).
fn send_request(d: lc::DirectCommand) -> SendRequest {
    let (kind, content, attributes) = stored_body(d.binary_msg, d.msg);
    SendRequest {
        client_message_id: d.dt.unwrap_or_default(),
        kind,
        content,
        attributes,
        mentions: d.mention_pids,
        mention_all: d.mention_all.unwrap_or(false),
        transient: d.transient.unwrap_or(false),
        want_receipts: d.r.unwrap_or(false),
        silent: false,
    }
}

/// How a LeanCloud message body is stored: binary content (`bin`) as is, marked binary; text
/// byte for byte, typed by its `_lctype` (0 when it has none). Returns (type, content,
/// attributes). Shared by sends and by imports, so both store a message the same way.
pub fn stored_body(
    binary: Option<Bytes>,
    text: Option<String>,
) -> (i32, Bytes, BTreeMap<String, String>) {
    let mut attributes = BTreeMap::new();
    match (binary, text) {
        (Some(b), _) => {
            attributes.insert(BINARY_ATTRIBUTE.to_owned(), "1".to_owned());
            (0, b, attributes)
        }
        (None, msg) => {
            let msg = msg.unwrap_or_default();
            (lctype(&msg).unwrap_or(0), Bytes::from(msg), attributes)
        }
    }
}

/// The `_lctype` of a typed message (a JSON object with an integer `_lctype`).
fn lctype(msg: &str) -> Option<i32> {
    if !msg.trim_start().starts_with('{') {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(msg).ok()?;
    v.get("_lctype")?.as_i64()?.try_into().ok()
}

/// A message's content as LeanCloud clients read it.
enum Content {
    Text(String),
    Binary(Bytes),
}

fn content(m: &pb::Message) -> Content {
    if m.recalled {
        return Content::Text(r#"{"_lctype":-127}"#.to_owned());
    }
    if m.attributes.contains_key(BINARY_ATTRIBUTE) {
        return Content::Binary(m.content.clone());
    }
    let Ok(text) = std::str::from_utf8(&m.content) else {
        return Content::Binary(m.content.clone());
    };
    if m.r#type == 0 || lctype(text).is_some() {
        return Content::Text(text.to_owned());
    }
    // A native message: typed on the way out.
    let lctype = if m.r#type == 1 { -1 } else { m.r#type };
    let mut typed = serde_json::json!({ "_lctype": lctype, "_lctext": text });
    if !m.attributes.is_empty() {
        typed["_lcattrs"] = serde_json::json!(m.attributes);
    }
    Content::Text(typed.to_string())
}

fn conv_type(kind: i32) -> i32 {
    match ConversationKind::try_from(kind) {
        Ok(ConversationKind::Temporary) => 4,
        Ok(ConversationKind::System) => 3,
        Ok(ConversationKind::ChatRoom) => 2,
        _ => 1,
    }
}

/// `logs`: history, always ascending.
fn logs(app: &App, caller: &Caller, l: lc::LogsCommand) -> Result<GenericCommand, Error> {
    let conv = l.cid.clone().unwrap_or_default();
    // JS sends `l`, Swift and Java `limit`; an explicit 0 asks for nothing.
    let limit = l.l.or(l.limit);
    let messages = if limit == Some(0) {
        // Still answers for a conversation the caller may not read.
        app.registry.count_members(caller, &conv)?;
        Vec::new()
    } else {
        let req = HistoryRequest {
            limit: limit.map_or(0, |n| n.max(0) as u32),
            oldest_first: l.direction == Some(QueryDirection::New as i32),
            start_time: l.t.unwrap_or(0),
            start_message_id: l.mid.clone().unwrap_or_default(),
            start_inclusive: l.t_included.unwrap_or(false),
            end_time: l.tt.unwrap_or(0),
            end_message_id: l.tmid.clone().unwrap_or_default(),
            end_inclusive: l.tt_included.unwrap_or(false),
            types: l.lctype.into_iter().collect(),
            ..Default::default()
        };
        app.registry.history(caller, &conv, req)?.0
    };
    let convtype = conv_type(app.registry.kind_of(&conv)? as i32);
    let logs = messages
        .iter()
        .map(|m| {
            let mut item = lc::LogItem {
                from: Some(m.sender.clone()),
                timestamp: Some(m.server_time),
                msg_id: Some(m.id.clone()),
                mention_pids: m.mentions.clone(),
                mention_all: m.mention_all.then_some(true),
                conv_type: Some(convtype),
                patch_timestamp: (m.edited_at > 0 || m.recalled_at > 0)
                    .then(|| m.edited_at.max(m.recalled_at)),
                ..Default::default()
            };
            match content(m) {
                Content::Text(s) => item.data = Some(s),
                Content::Binary(b) => {
                    use base64::Engine;
                    item.bin = Some(true);
                    item.data = Some(base64::engine::general_purpose::STANDARD.encode(b));
                }
            }
            item
        })
        .collect();
    Ok(GenericCommand {
        logs_message: Some(lc::LogsCommand {
            logs,
            ..Default::default()
        }),
        ..command(Cmd::Logs, None)
    })
}

/// `conv/start`: a temporary conversation or a group (`unique`: the existing one of the same
/// members, as LeanCloud had it). Attributes are kept as JSON text per key.
async fn start(app: &App, caller: &Caller, c: lc::ConvCommand) -> Result<GenericCommand, Error> {
    let room = c.transient == Some(true);
    let mut attributes = BTreeMap::new();
    let mut name = String::new();
    if let Some(attr) = &c.attr {
        let v: serde_json::Value = serde_json::from_str(&attr.data)
            .map_err(|e| Error::InvalidArgument(format!("attr is not JSON: {e}")))?;
        let serde_json::Value::Object(map) = v else {
            return Err(Error::InvalidArgument("attr must be a JSON object".into()));
        };
        for (k, v) in map {
            match (k.as_str(), v) {
                ("name", serde_json::Value::String(s)) => name = s,
                (_, v) => {
                    attributes.insert(k, v.to_string());
                }
            }
        }
    }
    let members: Vec<String> = c.m.into_iter().filter(|m| **m != *caller.user).collect();
    let temporary = c.temp_conv == Some(true);
    // A LeanCloud conversation is a group whatever its size: members may be added later.
    // A chat room (`transient`) is joined by its members, never created with them.
    let kind = if room {
        ConversationKind::ChatRoom
    } else if temporary {
        ConversationKind::Temporary
    } else {
        ConversationKind::Group
    };
    let members = if room { Vec::new() } else { members };
    let unique = c.unique == Some(true) && !room;
    let req = CreateRequest {
        kind,
        members,
        name: name.clone(),
        attributes,
        ttl_secs: c.temp_conv_ttl.map_or(0, |t| t.max(0) as u32),
        unique,
        idempotency: None,
    };
    let mut conv = app.registry.create(caller, req).await?;
    // `unique` found the existing group of these members: a new name renames it (LeanCloud's
    // behaviour; the SDK's tests expect it). Other attributes of the request are not applied.
    if unique && !temporary && !room && !name.is_empty() && conv.name != name {
        let rename = crate::registry::conversation::UpdateRequest {
            name: Some(name),
            set_attributes: BTreeMap::new(),
            remove_attributes: Vec::new(),
            ttl_secs: None,
        };
        conv = app.registry.update(caller, &conv.id, rename).await?;
    }
    let now = app.clock.now_ms();
    Ok(GenericCommand {
        conv_message: Some(lc::ConvCommand {
            cid: Some(conv.id.clone()),
            cdate: Some(iso(conv.created_at)),
            temp_conv_ttl: temporary.then(|| ((conv.expires_at - now).max(0) / 1000) as i32),
            ..Default::default()
        }),
        ..command(Cmd::Conv, Some(Op::Started))
    })
}

/// `conv/update`: `name` and attributes; a dotted key (`attr.lee`) sets a field inside an
/// attribute's JSON object, and `{"__op":"Delete"}` removes a key.
async fn update(app: &App, caller: &Caller, c: lc::ConvCommand) -> Result<GenericCommand, Error> {
    let id = c.cid.unwrap_or_default();
    let attr = c.attr.map(|a| a.data).unwrap_or_else(|| "{}".into());
    let serde_json::Value::Object(changes) = serde_json::from_str(&attr)
        .map_err(|e| Error::InvalidArgument(format!("attr is not JSON: {e}")))?
    else {
        return Err(Error::InvalidArgument("attr must be a JSON object".into()));
    };
    let current = app.registry.get(caller, &id)?;
    let mut req = crate::registry::conversation::UpdateRequest::default();
    for (key, value) in &changes {
        let delete = value.get("__op").and_then(|o| o.as_str()) == Some("Delete");
        let (top, path) = match key.split_once('.') {
            Some((top, rest)) => (top, Some(rest)),
            None => (key.as_str(), None),
        };
        if top == "name" && path.is_none() {
            req.name = Some(value.as_str().unwrap_or_default().to_owned());
            continue;
        }
        let Some(path) = path else {
            if delete {
                req.remove_attributes.push(top.to_owned());
            } else {
                req.set_attributes.insert(top.to_owned(), value.to_string());
            }
            continue;
        };
        // A field inside the attribute's object (from this request's earlier keys first).
        let base = req
            .set_attributes
            .get(top)
            .or_else(|| current.attributes.get(top))
            .and_then(|v| serde_json::from_str(v).ok())
            .filter(serde_json::Value::is_object)
            .unwrap_or_else(|| serde_json::json!({}));
        let mut obj = base;
        let mut at = &mut obj;
        let mut parts = path.split('.').peekable();
        while let Some(part) = parts.next() {
            if parts.peek().is_none() {
                if let Some(o) = at.as_object_mut() {
                    if delete {
                        o.remove(part);
                    } else {
                        o.insert(part.to_owned(), value.clone());
                    }
                }
                break;
            }
            let next = at
                .as_object_mut()
                .map(|o| o.entry(part).or_insert_with(|| serde_json::json!({})));
            match next {
                Some(n) if n.is_object() => at = n,
                Some(n) => {
                    *n = serde_json::json!({});
                    at = n;
                }
                None => break,
            }
        }
        req.set_attributes.insert(top.to_owned(), obj.to_string());
    }
    let conv = app.registry.update(caller, &id, req).await?;
    let data = serde_json::Value::Object(changes).to_string();
    let modified = serde_json::Value::Object(attributes_json(&conv)).to_string();
    Ok(GenericCommand {
        conv_message: Some(lc::ConvCommand {
            udate: Some(iso(app.clock.now_ms())),
            attr: Some(lc::JsonObjectMessage { data }),
            attr_modified: Some(lc::JsonObjectMessage { data: modified }),
            ..Default::default()
        }),
        ..command(Cmd::Conv, Some(Op::Updated))
    })
}

/// A conversation's name and attributes as LeanCloud's JSON columns.
fn attributes_json(conv: &pb::Conversation) -> serde_json::Map<String, serde_json::Value> {
    let mut out = serde_json::Map::new();
    for (k, v) in &conv.attributes {
        let v = serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::String(v.clone()));
        out.insert(k.clone(), v);
    }
    out.insert("name".into(), conv.name.clone().into());
    out
}

/// `patch/modify`: recalls and edits of the caller's own messages. Each one beyond the first
/// costs a token more, as a request of its own would (charged as the command is read, like a
/// `read` naming many), and each its audience, as a send does.
async fn patch(app: &App, caller: &Caller, p: lc::PatchCommand) -> Result<GenericCommand, Error> {
    app.registry.charge_reads(&caller.user, p.patches.len());
    let mut last = 0;
    for item in p.patches {
        let conv = item.cid.unwrap_or_default();
        let mid = item.mid.unwrap_or_default();
        let m = if item.recall == Some(true) {
            app.registry.recall(caller, &conv, &mid).await?
        } else {
            let content = match (item.binary_msg, item.data) {
                (Some(b), _) => b,
                (None, d) => Bytes::from(d.unwrap_or_default()),
            };
            let req = crate::registry::EditRequest {
                message_id: mid,
                content,
                ..Default::default()
            };
            app.registry.edit(caller, &conv, req).await?
        };
        last = last.max(m.edited_at.max(m.recalled_at));
    }
    Ok(GenericCommand {
        patch_message: Some(lc::PatchCommand {
            last_patch_time: Some(last),
            ..Default::default()
        }),
        ..command(Cmd::Patch, Some(Op::Modified))
    })
}

/// [`query`] on a blocking thread, one of at most `App::cpu_work` at a time and one of the
/// user's at a time (its rows are read from the store and matched: milliseconds of CPU, up to
/// `leancloud_query_steps_max`), then charged to the user for the steps it took.
async fn query_off_runtime(
    app: &Arc<App>,
    caller: &Caller,
    c: lc::ConvCommand,
) -> Result<GenericCommand, Error> {
    let _mine = app.cpu_work_users.take(&caller.user).await;
    let _turn = app
        .cpu_work
        .acquire()
        .await
        .map_err(|_| Error::Unavailable)?;
    // A refusal says when the next query fits, told after what this one cost was charged.
    let refused = || {
        Err(Error::RateLimited {
            retry_after_ms: app
                .registry
                .retry_after(&caller.user, crate::registry::limits::Work::Page),
        })
    };
    // Queries of one user's sessions that were admitted together run one after another, each
    // charged when done: one that finds the user in debt by then does not run.
    if app.registry.refuse_in_debt(&caller.user).is_err() {
        return refused();
    }
    let (app2, caller2) = (app.clone(), caller.clone());
    let (answer, steps, bytes) = tokio::task::spawn_blocking(move || {
        let mut meter = crate::leancloud::query::Meter::new(app2.config.leancloud_query_steps_max);
        let mut bytes = 0;
        let answer = paid_by_now(caller2.user.clone(), || {
            query(&app2, &caller2, c, &mut meter, &mut bytes)
        });
        (answer, meter.spent(), bytes)
    })
    .await
    .map_err(|_| Error::Internal)?;
    app.registry.charge_query(&caller.user, steps, bytes);
    match answer {
        // Refused partway (a load once in debt).
        Err(Error::RateLimited { .. }) => refused(),
        answer => answer,
    }
}

/// `conv/query`: `tempConvIds` (temporary conversations of which the caller is a member), or a
/// `where` condition with sort, skip, limit and flag, evaluated over candidate rows: the ids
/// the condition pins (`objectId`), else the conversations of a member it requires (`m`),
/// else the conversations anyone may find (chat rooms alone for `tr: true`, system
/// conversations alone for `sys: true`; see
/// [`crate::registry::Registry::findable_conversation_ids`]), the newest
/// `leancloud_query_scan_max` of them. Rows the caller may not see (see
/// [`crate::registry::Registry::peek`]) are never candidates. Matching and sorting spend from
/// `meter`; a query that runs out is refused. The rows answered stop before the first that
/// would take the answer past `leancloud_query_bytes_max` (the first always goes). The bytes
/// of every row it built add up in `built`, answered or refused; the conversations it loads
/// are charged as they are (see [`crate::registry::limits::paid_by`]).
fn query(
    app: &App,
    caller: &Caller,
    c: lc::ConvCommand,
    meter: &mut crate::leancloud::query::Meter,
    built: &mut usize,
) -> Result<GenericCommand, Error> {
    use crate::leancloud::query::Query;
    let now = app.clock.now_ms();
    let scan_max = app.config.leancloud_query_scan_max;
    let (mut light, mut compact) = (false, false);
    let rows: Vec<serde_json::Value> = if !c.temp_conv_ids.is_empty() && c.r#where.is_none() {
        let compact = c.flag.unwrap_or(0) & crate::leancloud::query::FLAG_COMPACT != 0;
        let mut rows = Vec::new();
        for id in c.temp_conv_ids.iter().take(scan_max) {
            if let Some((mut r, _)) = visible_row(app, caller, id, now, true)? {
                *built += json_bytes(&r);
                if compact {
                    r.remove("m");
                }
                rows.push(serde_json::Value::Object(r));
            }
        }
        rows
    } else {
        let q = Query::parse(
            c.r#where.as_ref().map(|w| w.data.as_str()),
            c.sort.as_deref(),
            c.skip,
            c.limit,
        )
        .map_err(|e| Error::InvalidArgument(format!("conv/query: {e}")))?
        .with_flag(c.flag);
        let candidates = match (q.object_ids(), q.required_members()) {
            (Some(ids), _) => ids,
            (None, Some(members)) => {
                let anchor = members
                    .iter()
                    .find(|m| **m == *caller.user)
                    .unwrap_or(&members[0]);
                app.registry.conversation_ids_of(anchor, scan_max)?
            }
            (None, None) => {
                let only = if q.requires_true("tr") {
                    Some(ConversationKind::ChatRoom)
                } else if q.requires_true("sys") {
                    Some(ConversationKind::System)
                } else {
                    None
                };
                app.registry
                    .findable_conversation_ids(&caller.user, only, scan_max)?
            }
        };
        // Rows to match and sort on are light when nothing looks at what they leave out; the
        // rows answered are then made whole, one by one, until the answer is full.
        light = !q.looks_at(&LAST_MESSAGE_COLUMNS) && !q.sorts_by(&["m"]);
        compact = q.compact();
        let mut rows = Vec::new();
        for id in candidates.iter().take(scan_max) {
            if let Some(r) = visible_row(app, caller, id, now, !light)? {
                *built += json_bytes(&r.0);
                rows.push(r);
            }
        }
        let (rows, rosters): (Vec<_>, Vec<_>) = rows.into_iter().unzip();
        let rows = rows
            .into_iter()
            .zip(rosters.iter().map(|r| {
                r.as_ref()
                    .map(|m| m as &dyn crate::leancloud::query::MemberSet)
            }))
            .collect();
        q.apply_with_members(rows, meter)
            .map_err(|e| Error::LimitExceeded(format!("conv/query: {e}")))?
            .into_iter()
            .map(serde_json::Value::Object)
            .collect()
    };
    let mut budget = app.registry.query_bytes();
    let mut data = String::from("[");
    for row in rows {
        let row = match row {
            serde_json::Value::Object(r) if light => {
                let id = r.get("objectId").and_then(|v| v.as_str()).unwrap_or("");
                // Gone or out of sight since it matched: left out.
                let Some((mut whole, _)) = visible_row(app, caller, id, now, true)? else {
                    continue;
                };
                if compact {
                    whole.remove("m");
                }
                *built += json_bytes(&whole);
                serde_json::Value::Object(whole)
            }
            row => row,
        };
        let text = row.to_string();
        if !budget.take(text.len() + 1) {
            break;
        }
        if data.len() > 1 {
            data.push(',');
        }
        data.push_str(&text);
    }
    data.push(']');
    let answer = GenericCommand {
        conv_message: Some(lc::ConvCommand {
            results: Some(lc::JsonObjectMessage { data }),
            ..Default::default()
        }),
        ..command(Cmd::Conv, Some(Op::Results))
    };
    *built = (*built).max(budget.used());
    Ok(answer)
}

/// About the bytes of a row as JSON, without writing it out.
fn json_bytes(row: &serde_json::Map<String, serde_json::Value>) -> usize {
    fn value(v: &serde_json::Value) -> usize {
        match v {
            serde_json::Value::String(s) => s.len() + 2,
            serde_json::Value::Array(a) => a.iter().map(value).sum::<usize>() + a.len() + 1,
            serde_json::Value::Object(o) => json_bytes(o),
            _ => 8,
        }
    }
    row.iter()
        .map(|(k, v)| k.len() + 4 + value(v))
        .sum::<usize>()
        + 2
}

/// A LeanCloud `_Conversation` row, and the conversation's whole member list (sorted; `None`
/// for chat rooms and system conversations, whose `m` is empty): the row's `m` holds the first
/// `member_page_max` members only.
type Row = (
    serde_json::Map<String, serde_json::Value>,
    Option<Arc<[crate::store::UserId]>>,
);

/// The columns of a member's row that come from the newest message they can see.
const LAST_MESSAGE_COLUMNS: [&str; 9] = [
    "lm",
    "msg",
    "bin",
    "msg_from",
    "msg_mid",
    "msg_timestamp",
    "patch_timestamp",
    "mention_pids",
    "mention_all",
];

/// One conversation as a LeanCloud `_Conversation` row. Not `full`: a row to match and sort
/// on only, without its `m` list (empty; conditions on members see the whole list anyway) and,
/// for a member, without the columns of the last message ([`LAST_MESSAGE_COLUMNS`]), which
/// cost a store read each. `None` for what is gone or not visible to the caller.
fn visible_row(
    app: &App,
    caller: &Caller,
    id: &str,
    now: i64,
    full: bool,
) -> Result<Option<Row>, Error> {
    let crate::registry::conversation::Peek {
        conversation: conv,
        members,
        roster,
        member,
        last_message_at,
    } = match app.registry.peek(caller, id, full) {
        Ok(peek) => peek,
        Err(Error::ConversationNotFound | Error::ConversationExpired | Error::NotAMember) => {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let mut row = attributes_json(&conv);
    row.insert("objectId".into(), conv.id.clone().into());
    row.insert("c".into(), conv.owner.clone().into());
    row.insert("createdAt".into(), iso(conv.created_at).into());
    row.insert("updatedAt".into(), iso(conv.created_at).into());
    let kind = ConversationKind::try_from(conv.kind).unwrap_or(ConversationKind::Group);
    let (room, system) = (
        kind == ConversationKind::ChatRoom,
        kind == ConversationKind::System,
    );
    row.insert("tr".into(), room.into());
    row.insert("sys".into(), system.into());
    row.insert("unique".into(), conv.unique.into());
    if kind == ConversationKind::Temporary {
        row.insert("temp".into(), true.into());
        row.insert("ttl".into(), ((conv.expires_at - now).max(0) / 1000).into());
    }
    if conv.muted {
        row.insert("mu".into(), serde_json::json!([caller.user.to_string()]));
    }
    // Chat rooms and system conversations keep no member list, as on LeanCloud.
    let (members, roster) = if room || system {
        (Vec::new(), None)
    } else if full {
        (members, Some(roster))
    } else {
        (Vec::new(), Some(roster))
    };
    row.insert("m".into(), members.into());
    // The newest message the caller can see (members only): the SDKs show it in the
    // conversation list, and 4.x needs it to edit a message of a conversation it queried.
    // Others see when it was sent (`lm`, so `sort: "-lm"` orders what they find), not what.
    if !member && last_message_at > 0 {
        row.insert(
            "lm".into(),
            serde_json::json!({"__type": "Date", "iso": iso(last_message_at)}),
        );
    }
    let last = if member && full {
        match app.registry.get_list_entry(caller, id, true) {
            Ok(entry) => entry.last_message,
            Err(Error::NotAMember | Error::NotInList) => None,
            // Gone since the peek.
            Err(Error::ConversationNotFound | Error::ConversationExpired) => return Ok(None),
            Err(e) => return Err(e),
        }
    } else {
        None
    };
    if let Some(m) = last {
        row.insert(
            "lm".into(),
            serde_json::json!({"__type": "Date", "iso": iso(m.server_time)}),
        );
        let (msg, bin) = match content(&m) {
            Content::Text(s) => (s, false),
            Content::Binary(b) => {
                use base64::Engine;
                (base64::engine::general_purpose::STANDARD.encode(b), true)
            }
        };
        row.insert("msg".into(), msg.into());
        row.insert("bin".into(), bin.into());
        row.insert("msg_from".into(), m.sender.to_string().into());
        row.insert("msg_mid".into(), m.id.clone().into());
        row.insert("msg_timestamp".into(), m.server_time.into());
        let patched = m.edited_at.max(m.recalled_at);
        if patched > 0 {
            row.insert("patch_timestamp".into(), patched.into());
        }
        if !m.mentions.is_empty() {
            row.insert("mention_pids".into(), m.mentions.clone().into());
        }
        if m.mention_all {
            row.insert("mention_all".into(), true.into());
        }
    }
    Ok(Some((row, roster)))
}

/// Milliseconds since the epoch as the ISO-8601 UTC string LeanCloud rows carry.
pub(super) fn iso(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms.rem_euclid(1000)
    )
}

// ---- missed notifications (HTTP) ----

/// Notifications per `/1.1/rtm/notifications` answer (more: `hasMore`, and the SDK asks again
/// from the newest `serverTs` it got).
const NOTIFICATIONS_PER_PAGE: usize = 100;

/// `GET /1.1/rtm/notifications?client_id=…&start_ts=…`, `X-LC-IM-Session-Token: st`: the
/// conversation events of the client's event log after `start_ts` (ms), oldest first, in the
/// form the live pushes had, at most [`NOTIFICATIONS_PER_PAGE`] and `leancloud_offline_bytes_max`
/// of them as stored (charged after it by those bytes). Answers the JS SDK's shape
/// (`notifications`, `hasMore`) and the Swift SDK's (`permanent.notifications`, `droppable`)
/// at once.
pub(crate) fn notifications(
    app: &App,
    client_id: Option<&str>,
    start_ts: Option<&str>,
    session_token: Option<&str>,
) -> (u16, serde_json::Value) {
    use serde_json::json;
    let now = app.clock.now_ms();
    let (Some(peer), Some(st)) = (client_id, session_token) else {
        let code = ErrorCode::InvalidLogin;
        return (
            400,
            json!({"code": code.code(), "error": "client_id and X-LC-IM-Session-Token are required"}),
        );
    };
    if verify_session_token(app, peer, st, now).is_none() {
        let code = ErrorCode::SessionTokenExpired;
        return (401, json!({"code": code.code(), "error": code.reason()}));
    }
    let Ok(after) = start_ts.unwrap_or("0").parse::<i64>() else {
        return (
            400,
            json!({"code": 1, "error": "start_ts must be a time in ms"}),
        );
    };
    // Each answer reads the client's event log: charged to the user like a page of history.
    if let Err(e) = app.registry.admit_user(&UserId::from(peer), Work::Page) {
        let code = ErrorCode::AppQuotaExceeded;
        return (429, json!({"code": code.code(), "error": e.to_string()}));
    }
    // A page ends between two times, so asking again from its last `serverTs` misses nothing.
    let (events, has_more) = match app.registry.missed_events(
        peer,
        after,
        NOTIFICATIONS_PER_PAGE,
        app.config.leancloud_offline_bytes_max,
    ) {
        Ok(page) => page,
        Err(e) => {
            tracing::error!(error = %e, user = %peer, "reading missed notifications failed");
            return (500, json!({"code": 1, "error": "internal error"}));
        }
    };
    let list: Vec<serde_json::Value> = events
        .iter()
        .filter_map(|e| conv_notification(e, peer, true))
        .map(|c| notification_json(&c))
        .collect();
    (
        200,
        json!({
            "notifications": list,
            "hasMore": has_more,
            "permanent": {"notifications": list, "hasMore": has_more},
            "droppable": {"notifications": []},
        }),
    )
}

/// A `conv` notification as JSON: `cmd`, `op`, `serverTs`, `notificationType`, then the
/// fields of its `convMessage`.
fn notification_json(c: &GenericCommand) -> serde_json::Value {
    let mut o = serde_json::Map::new();
    o.insert("cmd".into(), "conv".into());
    if let Some(op) = c.op.and_then(|op| Op::try_from(op).ok()) {
        o.insert("op".into(), op.as_str_name().into());
    }
    if let Some(t) = c.server_ts {
        o.insert("serverTs".into(), t.into());
    }
    o.insert("notificationType".into(), 1.into());
    if let Some(conv) = &c.conv_message {
        if let Some(cid) = &conv.cid {
            o.insert("cid".into(), cid.clone().into());
        }
        if let Some(by) = &conv.init_by {
            o.insert("initBy".into(), by.clone().into());
        }
        if !conv.m.is_empty() {
            o.insert("m".into(), conv.m.clone().into());
        }
        if let Some(info) = &conv.info {
            o.insert(
                "info".into(),
                serde_json::json!({"pid": info.pid, "role": info.role}),
            );
        }
        for (name, attr) in [("attr", &conv.attr), ("attrModified", &conv.attr_modified)] {
            if let Some(a) = attr {
                o.insert(name.into(), serde_json::json!({"data": a.data}));
            }
        }
        if let Some(u) = &conv.udate {
            o.insert("udate".into(), u.clone().into());
        }
    }
    serde_json::Value::Object(o)
}

pub(crate) use super::leancloud_groups::member_info;

// ---- pushes ----

/// Adds a queued push to `frames` in this connection's encoding, for the session it names.
pub(super) fn take(actor: &mut Actor, p: LcProtocol, o: Outgoing, frames: &mut Vec<WsMessage>) {
    let Some(at) = actor
        .peers
        .iter()
        .position(|x| x.caller.session == o.session)
    else {
        return;
    };
    if let PushEvent::Replaced | PushEvent::Kicked = o.push.event() {
        // Another login with the same device tag, or the app's backend: this client is
        // closed, the socket stays.
        let code = match o.push.event() {
            PushEvent::Kicked => ErrorCode::KickedByApp,
            _ => ErrorCode::SessionConflict,
        };
        let peer = remove_peer(actor, at);
        let peer_id = peer.caller.user.to_string();
        release(&actor.app, peer);
        let closed = GenericCommand {
            session_message: Some(lc::SessionCommand {
                code: Some(code.code()),
                reason: Some(code.reason().to_owned()),
                ..Default::default()
            }),
            ..command(Cmd::Session, Some(Op::Closed))
        };
        frames.push(wire(p, &envelope(closed, &peer_id)));
        return;
    }
    let peer = &mut actor.peers[at];
    if o.user_seq != 0 && o.user_seq <= peer.replayed_to {
        return;
    }
    if peer.repeats_catch_up(&o.push) {
        return;
    }
    let peer = &actor.peers[at];
    let peer_id = peer.caller.user.to_string();
    // The body is encoded once per push for every LeanCloud connection; only the envelope is
    // per recipient (protobuf fields may come in any order, so it is appended).
    let mut filled = false;
    let body = o.push.leancloud.get_or_init(|| {
        filled = true;
        push_body(&o.push)
    });
    if filled {
        actor
            .app
            .stats
            .traffic
            .encoded(crate::traffic::Form::LeanCloud);
    }
    let body = match body {
        Some(b) => b.clone(),
        // Events whose form depends on the recipient.
        None => match recipient_push(&actor.app.registry, &o.push, &peer_id, o.user_seq != 0) {
            Some(c) => Bytes::from(prost::Message::encode_to_vec(&c)),
            None => return,
        },
    };
    let env = GenericCommand {
        peer_id: Some(peer_id),
        service: Some(SERVICE_IM),
        ..Default::default()
    };
    let mut bytes = Vec::with_capacity(body.len() + 32);
    bytes.extend_from_slice(&body);
    prost::Message::encode_raw(&env, &mut bytes);
    let frame = match codec::frame_encoded(p, Bytes::from(bytes)) {
        WireFrame::Binary(b) => WsMessage::Binary(b),
        WireFrame::Text(t) => WsMessage::Text(t.into()),
    };
    frames.push(frame);
}

/// A message as a `direct` push (`kind`: its conversation's).
fn direct_of(m: &pb::Message, kind: i32) -> lc::DirectCommand {
    let mut d = lc::DirectCommand {
        cid: Some(m.conversation_id.clone()),
        id: Some(m.id.clone()),
        from_peer_id: Some(m.sender.clone()),
        timestamp: Some(m.server_time),
        mention_pids: m.mentions.clone(),
        mention_all: m.mention_all.then_some(true),
        transient: m.transient.then_some(true),
        conv_type: Some(conv_type(kind)),
        patch_timestamp: (m.edited_at > 0 || m.recalled_at > 0)
            .then(|| m.edited_at.max(m.recalled_at)),
        ..Default::default()
    };
    match content(m) {
        Content::Text(s) => d.msg = Some(s),
        Content::Binary(b) => d.binary_msg = Some(b),
    }
    d
}

/// Edited or recalled messages as one `patch/modify` push (`lastPatchTime`: the newest).
fn patches(messages: &[&pb::Message]) -> GenericCommand {
    let items: Vec<lc::PatchItem> = messages
        .iter()
        .map(|m| {
            let mut item = lc::PatchItem {
                cid: Some(m.conversation_id.clone()),
                mid: Some(m.id.clone()),
                timestamp: Some(m.server_time),
                recall: Some(m.recalled),
                patch_timestamp: Some(m.edited_at.max(m.recalled_at)),
                from: Some(m.sender.clone()),
                mention_pids: m.mentions.clone(),
                mention_all: m.mention_all.then_some(true),
                ..Default::default()
            };
            match content(m) {
                Content::Text(s) => item.data = Some(s),
                Content::Binary(b) => item.binary_msg = Some(b),
            }
            item
        })
        .collect();
    GenericCommand {
        patch_message: Some(lc::PatchCommand {
            last_patch_time: items.iter().filter_map(|i| i.patch_timestamp).max(),
            patches: items,
        }),
        ..command(Cmd::Patch, Some(Op::Modify))
    }
}

/// The recipient-independent LeanCloud form of a push, encoded (`None`: none such).
fn push_body(push: &protocol::Push) -> Option<Bytes> {
    let c = match push.event() {
        PushEvent::Message(_, kind) => GenericCommand {
            direct_message: Some(direct_of(&push.message()?, *kind)),
            ..command(Cmd::Direct, None)
        },
        PushEvent::Other(body) => match body.as_ref() {
            pb::server_frame::Body::Receipt(r) => GenericCommand {
                rcp_message: Some(lc::RcpCommand {
                    id: Some(if r.message_id.is_empty() {
                        protocol::message_id(
                            protocol::parse_conversation_id(&r.conversation_id)?,
                            r.seq,
                        )
                    } else {
                        r.message_id.clone()
                    }),
                    cid: Some(r.conversation_id.clone()),
                    t: Some(r.at),
                    // Present only on read receipts: Java reads presence, not the value.
                    read: (r.kind == pb::ReceiptKind::Read as i32).then_some(true),
                    from: Some(r.user_id.clone()),
                }),
                ..command(Cmd::Rcp, None)
            },
            pb::server_frame::Body::ReadPosition(r) => GenericCommand {
                unread_message: Some(lc::UnreadCommand {
                    convs: vec![lc::UnreadTuple {
                        cid: r.conversation_id.clone(),
                        unread: r.unread as i32,
                        ..Default::default()
                    }],
                    notif_time: None,
                }),
                ..command(Cmd::Unread, None)
            },
            pb::server_frame::Body::MessageUpdated(u) => patches(&[u.message.as_ref()?]),
            pb::server_frame::Body::ConversationEvent(_) => return None,
            _ => return None,
        },
        PushEvent::Replaced | PushEvent::Kicked => return None,
    };
    Some(Bytes::from(prost::Message::encode_to_vec(&c)))
}

/// Pushes whose LeanCloud form depends on who gets them: membership events (`joined` for
/// whoever was added, `members_joined` for the rest, …). `logged`: the event is in the
/// recipient's event log (or, for what the other members are told, in the conversation's),
/// so it is a "reliable notification" that `/1.1/rtm/notifications` can replay.
fn recipient_push(
    registry: &crate::registry::Registry,
    push: &protocol::Push,
    peer_id: &str,
    logged: bool,
) -> Option<GenericCommand> {
    let PushEvent::Other(body) = push.event() else {
        return None;
    };
    let pb::server_frame::Body::ConversationEvent(e) = body.as_ref() else {
        return None;
    };
    // What the other members are told is in the conversation's own log.
    let logged = logged || registry.in_conversation_log(e);
    conv_notification(e, peer_id, logged)
}

/// A conversation event as the `conv` command `peer_id` gets. A logged event carries
/// `notificationType = 1` and its `serverTs`: the SDK keeps the newest as the time to fetch
/// missed notifications from after a reconnect.
fn conv_notification(
    e: &pb::ConversationEvent,
    peer_id: &str,
    logged: bool,
) -> Option<GenericCommand> {
    let me = e.members.iter().any(|m| m == peer_id);
    let op = match Ev::try_from(e.kind).ok()? {
        Ev::Created => Op::Joined,
        Ev::MembersAdded if me => Op::Joined,
        Ev::MembersAdded => Op::MembersJoined,
        Ev::MembersRemoved | Ev::Left if me => Op::Left,
        Ev::MembersRemoved | Ev::Left => Op::MembersLeft,
        Ev::Deleted | Ev::Expired => Op::Left,
        Ev::Updated => Op::Updated,
        _ => {
            let (op, c) = super::leancloud_groups::notification(e, peer_id)?;
            return Some(GenericCommand {
                server_ts: Some(e.server_time),
                notification_type: logged.then_some(1),
                conv_message: Some(lc::ConvCommand {
                    cid: Some(e.conversation_id.clone()),
                    init_by: Some(e.by.clone()),
                    ..c
                }),
                ..command(Cmd::Conv, Some(op))
            });
        }
    };
    let m = if matches!(op, Op::MembersJoined | Op::MembersLeft) {
        e.members.clone()
    } else {
        Vec::new()
    };
    // Swift needs both `attr` and `attrModified` on `updated`; the event carries the result.
    let (attr, udate) = match (op, &e.conversation) {
        (Op::Updated, Some(c)) => {
            let data = serde_json::Value::Object(attributes_json(c)).to_string();
            (
                Some(lc::JsonObjectMessage { data }),
                Some(iso(e.server_time)),
            )
        }
        _ => (None, None),
    };
    Some(GenericCommand {
        server_ts: Some(e.server_time),
        notification_type: logged.then_some(1),
        conv_message: Some(lc::ConvCommand {
            cid: Some(e.conversation_id.clone()),
            init_by: Some(e.by.clone()),
            m,
            attr_modified: attr.clone(),
            attr,
            udate,
            ..Default::default()
        }),
        ..command(Cmd::Conv, Some(op))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_dates() {
        assert_eq!(iso(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso(1_764_460_800_123), "2025-11-30T00:00:00.123Z");
        assert_eq!(iso(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn native_messages_become_typed_messages() {
        let mut m = pb::Message {
            r#type: 1,
            content: Bytes::from_static(b"hi \"you\""),
            ..Default::default()
        };
        let Content::Text(t) = content(&m) else {
            panic!("text")
        };
        let v: serde_json::Value = serde_json::from_str(&t).unwrap();
        assert_eq!(v["_lctype"], -1);
        assert_eq!(v["_lctext"], "hi \"you\"");
        m.recalled = true;
        assert!(matches!(content(&m), Content::Text(t) if t == r#"{"_lctype":-127}"#));
        let lc_file = r#"{"_lctype":-6,"_lcfile":{"url":"https://x/y"},"_lctext":""}"#;
        let m = pb::Message {
            r#type: -6,
            content: Bytes::from(lc_file),
            ..Default::default()
        };
        assert!(matches!(content(&m), Content::Text(t) if t == lc_file));
        let m = pb::Message {
            content: Bytes::from_static(&[0xff, 0x00]),
            ..Default::default()
        };
        assert!(matches!(content(&m), Content::Binary(_)));
    }
}
