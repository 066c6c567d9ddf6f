//! A small typed client: connect, log in, request/reply by id, pushes, close codes.
//! Used by the tests and `load-tests/`, and usable by Rust applications.

use crate::protocol::pb::{self, client_frame::Body as Req, server_frame::Body as Rep};
use crate::protocol::{self, ClientFrame, SUBPROTOCOL, ServerFrame};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};

/// How the server closed the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    /// The close code, if the server sent a close frame.
    pub code: Option<u16>,
    pub reason: String,
}

/// A client-side failure.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connect: {0}")]
    Connect(#[from] tungstenite::Error),
    #[error("connection closed: {0:?}")]
    Closed(Option<Closed>),
    #[error("server error {code:?}: {message}")]
    Server {
        code: pb::ErrorCode,
        message: String,
    },
    #[error("unexpected reply: {0}")]
    Unexpected(String),
}

impl ClientError {
    /// The server's error code, when this is a server error reply.
    pub fn code(&self) -> Option<pb::ErrorCode> {
        match self {
            ClientError::Server { code, .. } => Some(*code),
            _ => None,
        }
    }
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<ServerFrame>>>>;

/// A connection to a tidings server.
pub struct Client {
    out: mpsc::UnboundedSender<WsMessage>,
    pending: Pending,
    pushes: mpsc::UnboundedReceiver<ServerFrame>,
    next_id: AtomicU64,
    closed: watch::Receiver<Option<Closed>>,
}

/// Connects a raw WebSocket with the tidings subprotocol (for callers that drive frames
/// themselves, such as tests of misbehaving clients).
pub async fn connect_raw(
    url: &str,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    ClientError,
> {
    connect_raw_with(url, SUBPROTOCOL).await
}

/// [`connect_raw`] asking for `subprotocol` (`tidings.v1.json`: the JSON form).
pub async fn connect_raw_with(
    url: &str,
    subprotocol: &'static str,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    ClientError,
> {
    let mut req = url.into_client_request()?;
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(subprotocol),
    );
    let cfg = WebSocketConfig::default()
        .read_buffer_size(16 << 10)
        .write_buffer_size(16 << 10);
    let (ws, _) = tokio_tungstenite::connect_async_with_config(req, Some(cfg), true).await?;
    Ok(ws)
}

impl Client {
    /// Connects (no login yet). `url` is like `ws://127.0.0.1:7400/ws`.
    pub async fn connect(url: &str) -> Result<Client, ClientError> {
        let ws = connect_raw(url).await?;
        let (mut sink, mut stream) = ws.split();
        let (out, mut out_rx) = mpsc::unbounded_channel::<WsMessage>();
        let (push_tx, pushes) = mpsc::unbounded_channel();
        let (closed_tx, closed) = watch::channel(None);
        let pending: Pending = Default::default();
        let pend = pending.clone();
        tokio::spawn(async move {
            let mut close: Option<Closed> = None;
            let mut writing = true;
            loop {
                tokio::select! {
                    m = out_rx.recv(), if writing => match m {
                        Some(m) => {
                            if sink.send(m).await.is_err() {
                                writing = false;
                            }
                        }
                        None => {
                            let _ = sink.close().await;
                            writing = false;
                        }
                    },
                    m = stream.next() => match m {
                        Some(Ok(WsMessage::Binary(b))) => {
                            let Ok(frame) = protocol::decode_server(&b) else { continue };
                            let waiter = if frame.id != 0 { pend.lock().unwrap().remove(&frame.id) } else { None };
                            match waiter {
                                Some(w) => {
                                    let _ = w.send(frame);
                                }
                                None => {
                                    let _ = push_tx.send(frame);
                                }
                            }
                        }
                        Some(Ok(WsMessage::Close(f))) => {
                            close = Some(Closed {
                                code: f.as_ref().map(|f| u16::from(f.code)),
                                reason: f.map(|f| f.reason.to_string()).unwrap_or_default(),
                            });
                        }
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => break,
                    },
                }
            }
            pend.lock().unwrap().clear();
            let _ = closed_tx.send(Some(close.unwrap_or(Closed {
                code: None,
                reason: String::new(),
            })));
        });
        Ok(Client {
            out,
            pending,
            pushes,
            next_id: AtomicU64::new(1),
            closed,
        })
    }

    /// Sends a request and waits for its reply body; an `Error` reply becomes `ClientError::Server`.
    pub async fn request(&self, body: Req) -> Result<Rep, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, tx);
        let frame = protocol::encode(&ClientFrame {
            id,
            body: Some(body),
        });
        if self.out.send(WsMessage::Binary(frame)).is_err() {
            self.pending.lock().unwrap().remove(&id);
            return Err(ClientError::Closed(self.closed.borrow().clone()));
        }
        match rx.await {
            Ok(ServerFrame {
                body: Some(Rep::Error(e)),
                ..
            }) => Err(ClientError::Server {
                code: pb::ErrorCode::try_from(e.code).unwrap_or(pb::ErrorCode::ErrorUnspecified),
                message: e.message,
            }),
            Ok(ServerFrame { body: Some(b), .. }) => Ok(b),
            Ok(_) => Err(ClientError::Unexpected("empty reply".into())),
            Err(_) => Err(ClientError::Closed(self.wait_closed_ref().await)),
        }
    }

    async fn wait_closed_ref(&self) -> Option<Closed> {
        let mut c = self.closed.clone();
        c.wait_for(|v| v.is_some())
            .await
            .ok()
            .and_then(|v| v.clone())
    }

    /// Closes the connection cleanly (a WebSocket close frame, like a browser tab closing).
    pub fn disconnect(&self) {
        let _ = self.out.send(WsMessage::Close(None));
    }

    /// Sends raw bytes as one binary WebSocket message (for testing bad input).
    pub fn send_raw(&self, bytes: Vec<u8>) {
        let _ = self.out.send(WsMessage::Binary(Bytes::from(bytes)));
    }

    /// Sends any WebSocket message (for testing bad input).
    pub fn send_ws(&self, m: WsMessage) {
        let _ = self.out.send(m);
    }

    /// The next push (id 0 frame, or a reply nobody waits for). `None` once closed.
    pub async fn next_push(&mut self) -> Option<ServerFrame> {
        self.pushes.recv().await
    }

    /// A push that has already arrived, if any (does not wait).
    pub fn try_next_push(&mut self) -> Option<ServerFrame> {
        self.pushes.try_recv().ok()
    }

    /// Waits until the connection is closed and returns how.
    pub async fn closed(&self) -> Closed {
        self.wait_closed_ref().await.unwrap_or(Closed {
            code: None,
            reason: String::new(),
        })
    }

    /// Logs in. `device` may be empty; `event_cursor` is the last user-event seq this device saw.
    pub async fn login(
        &self,
        token: &str,
        device: &str,
        event_cursor: u64,
    ) -> Result<pb::LoginOk, ClientError> {
        let body = Req::Login(pb::Login {
            token: token.into(),
            device: device.into(),
            event_cursor,
        });
        match self.request(body).await? {
            Rep::LoginOk(ok) => Ok(ok),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Replaces the session's token with a newer one of the same user; the session then lives
    /// until the new token's `exp`.
    pub async fn refresh_token(&self, token: &str) -> Result<(), ClientError> {
        self.request(Req::RefreshToken(pb::RefreshToken {
            token: token.into(),
        }))
        .await
        .map(|_| ())
    }

    /// Logs out; the server then closes with 1000.
    pub async fn logout(&self) -> Result<(), ClientError> {
        self.request(Req::Logout(pb::Logout {})).await.map(|_| ())
    }

    async fn conversation(&self, body: Req) -> Result<pb::Conversation, ClientError> {
        match self.request(body).await? {
            Rep::Conversation(pb::ConversationReply {
                conversation: Some(c),
            }) => Ok(c),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    async fn ok(&self, body: Req) -> Result<(), ClientError> {
        match self.request(body).await? {
            Rep::Ok(_) => Ok(()),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Creates (or returns the existing) direct conversation with `peer`.
    pub async fn create_direct(&self, peer: &str) -> Result<pb::Conversation, ClientError> {
        self.conversation(Req::CreateConversation(pb::CreateConversation {
            kind: pb::ConversationKind::Direct as i32,
            members: vec![peer.into()],
            ..Default::default()
        }))
        .await
    }

    /// Creates a group with the given other members.
    pub async fn create_group(
        &self,
        name: &str,
        members: &[&str],
    ) -> Result<pb::Conversation, ClientError> {
        self.conversation(Req::CreateConversation(pb::CreateConversation {
            kind: pb::ConversationKind::Group as i32,
            members: members.iter().map(|m| m.to_string()).collect(),
            name: name.into(),
            ..Default::default()
        }))
        .await
    }

    /// Any create request.
    pub async fn create(
        &self,
        req: pb::CreateConversation,
    ) -> Result<pb::Conversation, ClientError> {
        self.conversation(Req::CreateConversation(req)).await
    }

    pub async fn get_conversation(&self, id: &str) -> Result<pb::Conversation, ClientError> {
        self.conversation(Req::GetConversation(pb::GetConversation {
            conversation_id: id.into(),
        }))
        .await
    }

    pub async fn add_members(
        &self,
        id: &str,
        members: &[&str],
    ) -> Result<pb::Conversation, ClientError> {
        self.conversation(Req::AddMembers(pb::AddMembers {
            conversation_id: id.into(),
            members: members.iter().map(|m| m.to_string()).collect(),
        }))
        .await
    }

    pub async fn remove_members(
        &self,
        id: &str,
        members: &[&str],
    ) -> Result<pb::Conversation, ClientError> {
        self.conversation(Req::RemoveMembers(pb::RemoveMembers {
            conversation_id: id.into(),
            members: members.iter().map(|m| m.to_string()).collect(),
        }))
        .await
    }

    /// Subscribes to a system conversation or joins a chat room (or an open group).
    pub async fn join_conversation(&self, id: &str) -> Result<pb::Conversation, ClientError> {
        self.conversation(Req::JoinConversation(pb::JoinConversation {
            conversation_id: id.into(),
        }))
        .await
    }

    pub async fn leave(&self, id: &str) -> Result<(), ClientError> {
        self.ok(Req::LeaveConversation(pb::LeaveConversation {
            conversation_id: id.into(),
        }))
        .await
    }

    pub async fn update(
        &self,
        req: pb::UpdateConversation,
    ) -> Result<pb::Conversation, ClientError> {
        self.conversation(Req::UpdateConversation(req)).await
    }

    pub async fn set_muted(&self, id: &str, muted: bool) -> Result<(), ClientError> {
        self.ok(Req::SetMuted(pb::SetMuted {
            conversation_id: id.into(),
            muted,
        }))
        .await
    }

    pub async fn list_members(
        &self,
        id: &str,
        cursor: &str,
        limit: u32,
    ) -> Result<pb::MemberList, ClientError> {
        match self
            .request(Req::ListMembers(pb::ListMembers {
                conversation_id: id.into(),
                cursor: cursor.into(),
                limit,
            }))
            .await?
        {
            Rep::MemberList(l) => Ok(l),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    pub async fn count_members(&self, id: &str) -> Result<u32, ClientError> {
        match self
            .request(Req::CountMembers(pb::CountMembers {
                conversation_id: id.into(),
            }))
            .await?
        {
            Rep::MemberCount(c) => Ok(c.count),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Makes members managers or plain members.
    pub async fn set_member_role(
        &self,
        id: &str,
        members: &[&str],
        role: pb::MemberRole,
    ) -> Result<(), ClientError> {
        self.ok(Req::SetMemberRole(pb::SetMemberRole {
            conversation_id: id.into(),
            members: strings(members),
            role: role as i32,
        }))
        .await
    }

    pub async fn transfer_ownership(
        &self,
        id: &str,
        new_owner: &str,
    ) -> Result<pb::Conversation, ClientError> {
        self.conversation(Req::TransferOwnership(pb::TransferOwnership {
            conversation_id: id.into(),
            new_owner: new_owner.into(),
        }))
        .await
    }

    /// Mutes members for `duration_secs` (0: until lifted).
    pub async fn mute_members(
        &self,
        id: &str,
        members: &[&str],
        duration_secs: u64,
    ) -> Result<(), ClientError> {
        self.ok(Req::MuteMembers(pb::MuteMembers {
            conversation_id: id.into(),
            members: strings(members),
            duration_secs,
        }))
        .await
    }

    pub async fn unmute_members(&self, id: &str, members: &[&str]) -> Result<(), ClientError> {
        self.ok(Req::UnmuteMembers(pb::UnmuteMembers {
            conversation_id: id.into(),
            members: strings(members),
        }))
        .await
    }

    pub async fn set_mute_all(
        &self,
        id: &str,
        muted: bool,
    ) -> Result<pb::Conversation, ClientError> {
        self.conversation(Req::SetMuteAll(pb::SetMuteAll {
            conversation_id: id.into(),
            muted,
        }))
        .await
    }

    pub async fn list_muted_members(
        &self,
        id: &str,
        cursor: &str,
        limit: u32,
    ) -> Result<pb::MutedMemberList, ClientError> {
        match self
            .request(Req::ListMutedMembers(pb::ListMutedMembers {
                conversation_id: id.into(),
                cursor: cursor.into(),
                limit,
            }))
            .await?
        {
            Rep::MutedMemberList(l) => Ok(l),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    pub async fn block_members(
        &self,
        id: &str,
        members: &[&str],
    ) -> Result<pb::Conversation, ClientError> {
        self.conversation(Req::BlockMembers(pb::BlockMembers {
            conversation_id: id.into(),
            members: strings(members),
        }))
        .await
    }

    pub async fn unblock_members(&self, id: &str, members: &[&str]) -> Result<(), ClientError> {
        self.ok(Req::UnblockMembers(pb::UnblockMembers {
            conversation_id: id.into(),
            members: strings(members),
        }))
        .await
    }

    pub async fn list_blocked_members(
        &self,
        id: &str,
        cursor: &str,
        limit: u32,
    ) -> Result<pb::BlockedMemberList, ClientError> {
        match self
            .request(Req::ListBlockedMembers(pb::ListBlockedMembers {
                conversation_id: id.into(),
                cursor: cursor.into(),
                limit,
            }))
            .await?
        {
            Rep::BlockedMemberList(l) => Ok(l),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    pub async fn block_user(&self, user: &str) -> Result<(), ClientError> {
        self.ok(Req::BlockUser(pb::BlockUser {
            user_id: user.into(),
        }))
        .await
    }

    pub async fn unblock_user(&self, user: &str) -> Result<(), ClientError> {
        self.ok(Req::UnblockUser(pb::UnblockUser {
            user_id: user.into(),
        }))
        .await
    }

    pub async fn list_blocked_users(
        &self,
        cursor: &str,
        limit: u32,
    ) -> Result<pb::BlockedUserList, ClientError> {
        match self
            .request(Req::ListBlockedUsers(pb::ListBlockedUsers {
                cursor: cursor.into(),
                limit,
            }))
            .await?
        {
            Rep::BlockedUserList(l) => Ok(l),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Changes the caller's profile.
    pub async fn set_profile(&self, req: pb::SetProfile) -> Result<pb::Profile, ClientError> {
        match self.request(Req::SetProfile(req)).await? {
            Rep::Profile(p) => Ok(p),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    pub async fn get_profiles(&self, users: &[&str]) -> Result<Vec<pb::Profile>, ClientError> {
        match self
            .request(Req::GetProfiles(pb::GetProfiles {
                user_ids: strings(users),
            }))
            .await?
        {
            Rep::ProfileList(l) => Ok(l.profiles),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Sends any message.
    pub async fn send(&self, req: pb::SendMessage) -> Result<pb::SendAck, ClientError> {
        match self.request(Req::SendMessage(req)).await? {
            Rep::SendAck(a) => Ok(a),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Sends a text message (type 1).
    pub async fn send_text(&self, id: &str, text: &str) -> Result<pb::SendAck, ClientError> {
        self.send(pb::SendMessage {
            conversation_id: id.into(),
            r#type: 1,
            content: Bytes::from(text.to_owned()),
            ..Default::default()
        })
        .await
    }

    async fn page(&self, body: Req) -> Result<pb::MessagePage, ClientError> {
        match self.request(body).await? {
            Rep::MessagePage(p) => Ok(p),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Messages after `after_seq`, oldest first.
    pub async fn sync(
        &self,
        id: &str,
        after_seq: u64,
        limit: u32,
    ) -> Result<pb::MessagePage, ClientError> {
        self.page(Req::SyncMessages(pb::SyncMessages {
            conversation_id: id.into(),
            after_seq,
            limit,
        }))
        .await
    }

    /// Every message after `after_seq`, following `has_more`.
    pub async fn sync_all(
        &self,
        id: &str,
        mut after_seq: u64,
    ) -> Result<Vec<pb::Message>, ClientError> {
        let mut all = Vec::new();
        loop {
            let page = self.sync(id, after_seq, 0).await?;
            if let Some(last) = page.messages.last() {
                after_seq = last.seq;
            }
            all.extend(page.messages);
            if !page.has_more {
                return Ok(all);
            }
        }
    }

    /// The page of messages before `before_seq` (0: from the newest), ascending seq.
    pub async fn history(
        &self,
        id: &str,
        before_seq: u64,
        limit: u32,
    ) -> Result<pb::MessagePage, ClientError> {
        self.fetch_history(pb::FetchHistory {
            conversation_id: id.into(),
            before_seq,
            limit,
            ..Default::default()
        })
        .await
    }

    /// Any history query (see `FetchHistory`).
    pub async fn fetch_history(
        &self,
        req: pb::FetchHistory,
    ) -> Result<pb::MessagePage, ClientError> {
        self.page(Req::FetchHistory(req)).await
    }

    /// Hides messages for this user only, by id.
    pub async fn delete_messages(
        &self,
        id: &str,
        message_ids: &[String],
    ) -> Result<(), ClientError> {
        self.ok(Req::DeleteMessages(pb::DeleteMessages {
            conversation_id: id.into(),
            message_ids: message_ids.to_vec(),
            ..Default::default()
        }))
        .await
    }

    /// Hides every message before `before_time` (at it too when `inclusive`) for this user only.
    pub async fn delete_messages_before(
        &self,
        id: &str,
        before_time: i64,
        inclusive: bool,
    ) -> Result<(), ClientError> {
        self.ok(Req::DeleteMessages(pb::DeleteMessages {
            conversation_id: id.into(),
            before_time,
            inclusive,
            ..Default::default()
        }))
        .await
    }

    async fn message_reply(&self, body: Req) -> Result<pb::Message, ClientError> {
        match self.request(body).await? {
            Rep::MessageReply(pb::MessageReply { message: Some(m) }) => Ok(m),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Recalls a message this user sent.
    pub async fn recall(&self, id: &str, message_id: &str) -> Result<pb::Message, ClientError> {
        self.message_reply(Req::RecallMessage(pb::RecallMessage {
            conversation_id: id.into(),
            message_id: message_id.into(),
        }))
        .await
    }

    /// Replaces the text of a message this user sent.
    pub async fn edit_text(
        &self,
        id: &str,
        message_id: &str,
        text: &str,
    ) -> Result<pb::Message, ClientError> {
        self.message_reply(Req::EditMessage(pb::EditMessage {
            conversation_id: id.into(),
            message_id: message_id.into(),
            content: Bytes::from(text.to_owned()),
            ..Default::default()
        }))
        .await
    }

    /// Tells the server this device received everything up to `seq`.
    pub async fn ack_delivered(&self, id: &str, seq: u64) -> Result<(), ClientError> {
        self.ok(Req::AckDelivered(pb::AckDelivered {
            conversation_id: id.into(),
            seq,
        }))
        .await
    }

    /// A page of this user's conversation list.
    pub async fn list_conversations(
        &self,
        req: pb::ListConversations,
    ) -> Result<pb::ConversationList, ClientError> {
        match self.request(Req::ListConversations(req)).await? {
            Rep::ConversationList(l) => Ok(l),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Every entry of a listing, following the cursor.
    pub async fn list_all(
        &self,
        mut req: pb::ListConversations,
    ) -> Result<Vec<pb::ListEntry>, ClientError> {
        let mut all = Vec::new();
        loop {
            let page = self.list_conversations(req.clone()).await?;
            all.extend(page.entries);
            if !page.has_more {
                return Ok(all);
            }
            req.cursor = page.next_cursor;
        }
    }

    async fn entry_reply(&self, body: Req) -> Result<pb::ListEntry, ClientError> {
        match self.request(body).await? {
            Rep::ListEntry(pb::ListEntryReply { entry: Some(e) }) => Ok(e),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// One entry of this user's list, by conversation id or NetEase-style key (`p2p|bob`).
    pub async fn get_list_entry(&self, key: &str) -> Result<pb::ListEntry, ClientError> {
        self.entry_reply(Req::GetListEntry(pb::GetListEntry {
            conversation_id: key.into(),
            omit_last_message: false,
        }))
        .await
    }

    /// Sets this user's private ext of an entry (creates the entry if it was deleted).
    pub async fn set_entry_ext(&self, key: &str, ext: &str) -> Result<pb::ListEntry, ClientError> {
        self.entry_reply(Req::SetEntryExt(pb::SetEntryExt {
            conversation_id: key.into(),
            ext: ext.into(),
        }))
        .await
    }

    /// Pins or unpins an entry.
    pub async fn pin(&self, key: &str, pinned: bool) -> Result<pb::ListEntry, ClientError> {
        self.entry_reply(Req::PinConversation(pb::PinConversation {
            conversation_id: key.into(),
            pinned,
        }))
        .await
    }

    /// Removes entries from this user's list (one-way).
    pub async fn delete_list_entries(
        &self,
        keys: &[String],
        clear_history: bool,
    ) -> Result<(), ClientError> {
        self.ok(Req::DeleteListEntries(pb::DeleteListEntries {
            conversation_ids: keys.to_vec(),
            clear_history,
        }))
        .await
    }

    /// Deletes a conversation for everyone.
    pub async fn delete_conversation(
        &self,
        id: &str,
        purge_messages: bool,
    ) -> Result<(), ClientError> {
        self.ok(Req::DeleteConversation(pb::DeleteConversation {
            conversation_id: id.into(),
            purge_messages,
        }))
        .await
    }

    pub async fn mark_read(&self, id: &str, seq: u64) -> Result<(), ClientError> {
        self.ok(Req::MarkRead(pb::MarkRead {
            conversation_id: id.into(),
            seq,
        }))
        .await
    }

    pub async fn online_members(&self, id: &str) -> Result<Vec<String>, ClientError> {
        match self
            .request(Req::QueryPresence(pb::QueryPresence {
                conversation_id: id.into(),
            }))
            .await?
        {
            Rep::Presence(p) => Ok(p.online),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    pub async fn subscribe_presence(&self, id: &str) -> Result<(), ClientError> {
        self.ok(Req::SubscribePresence(pb::SubscribePresence {
            conversation_id: id.into(),
        }))
        .await
    }

    pub async fn unsubscribe_presence(&self, id: &str) -> Result<(), ClientError> {
        self.ok(Req::UnsubscribePresence(pb::UnsubscribePresence {
            conversation_id: id.into(),
        }))
        .await
    }

    /// Leaves a text will message (type 1) for a conversation.
    pub async fn set_will_text(&self, id: &str, text: &str) -> Result<(), ClientError> {
        self.ok(Req::SetWill(pb::SetWill {
            conversation_id: id.into(),
            r#type: 1,
            content: Bytes::from(text.to_owned()),
            ..Default::default()
        }))
        .await
    }

    pub async fn clear_will(&self, id: &str) -> Result<(), ClientError> {
        self.ok(Req::ClearWill(pb::ClearWill {
            conversation_id: id.into(),
        }))
        .await
    }

    /// Creates a temporary conversation with the given other members.
    pub async fn create_temporary(
        &self,
        members: &[&str],
        ttl_secs: u32,
        unique: bool,
    ) -> Result<pb::Conversation, ClientError> {
        self.conversation(Req::CreateConversation(pb::CreateConversation {
            kind: pb::ConversationKind::Temporary as i32,
            members: members.iter().map(|m| m.to_string()).collect(),
            ttl_secs,
            unique,
            ..Default::default()
        }))
        .await
    }

    pub async fn ping(&self) -> Result<(), ClientError> {
        self.request(Req::Ping(pb::Ping {})).await.map(|_| ())
    }
}

fn strings(users: &[&str]) -> Vec<String> {
    users.iter().map(|u| u.to_string()).collect()
}
