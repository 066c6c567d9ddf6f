//! The reference server: the plainest broadcaster on tokio-tungstenite with tidings' buffer
//! settings (`tidings::server::ws_config` of the default config as it was on 2026-11-29: a
//! 4 KiB read buffer). No auth, no storage: a
//! `Login` is answered at once, a `SendMessage` is pushed to every other logged-in connection
//! (one shared encoding, bounded outboxes, one flush per burst) and acked. It shows what the
//! WebSocket library and the kernel allow on this machine, as a yardstick for tidings.
//!
//! Chat mode: a `CreateConversation` of kind direct gets an id of its own, and a
//! `SendMessage` to it is relayed to the other member's connection (the user id is the login
//! token) and acked: a relay with an ack and no store, beside which persisted chat is
//! measured. Sends to any other id are broadcast as above.

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tidings::config::Config;
use tidings::protocol::pb::{self, client_frame::Body as Req, server_frame::Body as Rep};
use tidings::protocol::{self, SUBPROTOCOL};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;

#[derive(Default)]
struct Hub {
    next: AtomicU64,
    seq: AtomicU64,
    conns: Mutex<HashMap<u64, mpsc::Sender<Bytes>>>,
    /// Chat mode: the connection of each logged-in user, and each direct conversation's two
    /// users.
    users: Mutex<HashMap<String, u64>>,
    directs: Mutex<HashMap<String, [String; 2]>>,
}

impl Hub {
    /// Chat mode: the connection and outbox of the other member of direct conversation
    /// `conv`, when that member is connected.
    fn peer(&self, conv: &str, me: &str) -> Option<(u64, mpsc::Sender<Bytes>)> {
        let pair = self.directs.lock().unwrap().get(conv).cloned()?;
        let other = if pair[0] == me { &pair[1] } else { &pair[0] };
        let conn = self.users.lock().unwrap().get(other).copied()?;
        let out = self.conns.lock().unwrap().get(&conn).cloned()?;
        Some((conn, out))
    }
}

/// Binds `listen` and serves in the background; returns the bound address.
pub async fn start(listen: &str) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    // tidings' defaults of when this reference was fixed (tidings' own read buffer became
    // 1 KiB later; the reference keeps 4 KiB, so its figures stay comparable over time).
    let config = Config {
        ws_read_buffer_bytes: 4 << 10,
        ..Config::default()
    };
    let hub = Arc::new(Hub::default());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                // Out of descriptors and the like: the accept is retried.
                tokio::task::yield_now().await;
                continue;
            };
            let _ = stream.set_nodelay(true);
            let hub = hub.clone();
            let outbox = config.outbox_frames;
            let cfg = tidings::server::ws_config(&config);
            tokio::spawn(async move {
                let _ = serve(stream, hub, cfg, outbox).await;
            });
        }
    });
    Ok(addr)
}

#[allow(clippy::result_large_err)] // the signature tungstenite's callback requires
fn echo_subprotocol(req: &Request, mut resp: Response) -> Result<Response, ErrorResponse> {
    let offered = req
        .headers()
        .get("Sec-WebSocket-Protocol")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == SUBPROTOCOL));
    if offered {
        resp.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(SUBPROTOCOL),
        );
    }
    Ok(resp)
}

async fn serve(
    stream: TcpStream,
    hub: Arc<Hub>,
    cfg: tokio_tungstenite::tungstenite::protocol::WebSocketConfig,
    outbox: usize,
) -> anyhow::Result<()> {
    let mut ws =
        tokio_tungstenite::accept_hdr_async_with_config(stream, echo_subprotocol, Some(cfg))
            .await?;
    let me = hub.next.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::channel::<Bytes>(outbox);
    let mut registered = false;
    let mut user = String::new();
    let result = async {
        loop {
            tokio::select! {
                m = rx.recv() => {
                    let Some(first) = m else { break };
                    ws.feed(WsMessage::Binary(first)).await?;
                    while let Ok(more) = rx.try_recv() {
                        ws.feed(WsMessage::Binary(more)).await?;
                    }
                    ws.flush().await?;
                }
                m = ws.next() => {
                    let b = match m {
                        Some(Ok(WsMessage::Binary(b))) => b,
                        Some(Ok(WsMessage::Close(_))) | Some(Err(_)) | None => break,
                        Some(Ok(_)) => continue,
                    };
                    let Ok(f) = protocol::decode_client(&b) else { break };
                    let reply = match f.body {
                        Some(Req::Login(l)) => {
                            hub.conns.lock().unwrap().insert(me, tx.clone());
                            hub.users.lock().unwrap().insert(l.token.clone(), me);
                            user = l.token;
                            registered = true;
                            ws.feed(WsMessage::Binary(protocol::encode(&protocol::reply(
                                f.id,
                                Rep::LoginOk(pb::LoginOk::default()),
                            ))))
                            .await?;
                            protocol::push(Rep::UnreadSummary(pb::UnreadSummary::default()))
                                .native()
                                .clone()
                        }
                        Some(Req::CreateConversation(c))
                            if c.kind == pb::ConversationKind::Direct as i32
                                && c.members.len() == 1 =>
                        {
                            let id = format!("d{:015x}", hub.next.fetch_add(1, Ordering::Relaxed));
                            let pair = [user.clone(), c.members[0].clone()];
                            hub.directs.lock().unwrap().insert(id.clone(), pair);
                            protocol::encode(&protocol::reply(
                                f.id,
                                Rep::Conversation(pb::ConversationReply {
                                    conversation: Some(pb::Conversation {
                                        id,
                                        ..Default::default()
                                    }),
                                }),
                            ))
                        }
                        // Chat mode's ids start with `d`; the broadcast's never do.
                        Some(Req::SendMessage(s)) if s.conversation_id.starts_with('d') => {
                            let seq = hub.seq.fetch_add(1, Ordering::Relaxed) + 1;
                            let peer = hub.peer(&s.conversation_id, &user);
                            let push = protocol::push(Rep::Message(pb::Message {
                                conversation_id: s.conversation_id,
                                seq,
                                r#type: s.r#type,
                                content: s.content,
                                ..Default::default()
                            }))
                            .native()
                            .clone();
                            // A full outbox drops that connection (as tidings does).
                            if let Some((id, out)) = peer
                                && out.try_send(push).is_err()
                            {
                                hub.conns.lock().unwrap().remove(&id);
                            }
                            protocol::encode(&protocol::reply(
                                f.id,
                                Rep::SendAck(pb::SendAck { seq, ..Default::default() }),
                            ))
                        }
                        Some(Req::CreateConversation(_)) => protocol::encode(&protocol::reply(
                            f.id,
                            Rep::Conversation(pb::ConversationReply {
                                conversation: Some(pb::Conversation {
                                    id: "0000000000000001".into(),
                                    ..Default::default()
                                }),
                            }),
                        )),
                        Some(Req::SendMessage(s)) => {
                            let seq = hub.seq.fetch_add(1, Ordering::Relaxed) + 1;
                            let push = protocol::push(Rep::Message(pb::Message {
                                conversation_id: s.conversation_id,
                                seq,
                                r#type: s.r#type,
                                content: s.content,
                                ..Default::default()
                            }))
                            .native()
                            .clone();
                            let mut slow = Vec::new();
                            for (id, out) in hub.conns.lock().unwrap().iter() {
                                if *id != me && out.try_send(push.clone()).is_err() {
                                    slow.push(*id);
                                }
                            }
                            // A full outbox drops that connection (as tidings does).
                            let mut conns = hub.conns.lock().unwrap();
                            for id in slow {
                                conns.remove(&id);
                            }
                            drop(conns);
                            protocol::encode(&protocol::reply(
                                f.id,
                                Rep::SendAck(pb::SendAck { seq, ..Default::default() }),
                            ))
                        }
                        Some(Req::Ping(_)) => protocol::encode(&protocol::reply(
                            f.id,
                            Rep::Pong(pb::Pong::default()),
                        )),
                        _ => protocol::encode(&protocol::reply(f.id, Rep::Ok(pb::Ok {}))),
                    };
                    ws.send(WsMessage::Binary(reply)).await?;
                }
            }
        }
        anyhow::Ok(())
    }
    .await;
    if registered {
        hub.conns.lock().unwrap().remove(&me);
        let mut users = hub.users.lock().unwrap();
        if users.get(&user) == Some(&me) {
            users.remove(&user);
        }
    }
    result
}
