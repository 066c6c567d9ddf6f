//! What the app's backend does in bulk or more than once: broadcasts of a system message to
//! many users or conversations (idempotent by a broadcast id), and creates made with an
//! idempotency key.

use super::conversation::CreateRequest;
use super::writer::wait;
use super::{Caller, Error, Registry, SendRequest};
use crate::protocol::pb::{Conversation, ConversationKind, IdempotentCreate};
use crate::store::Op;
use futures_util::StreamExt;

/// Longest idempotency key, bytes.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 255;
/// Sends of one broadcast in flight at once.
const BROADCAST_CONCURRENCY: usize = 64;
/// Expired idempotency keys deleted per keyed create.
const PRUNE: usize = 256;
/// What a broadcast's client message ids start with (after it, the broadcast id), so they
/// never meet the backend's other sends.
pub const BROADCAST_PREFIX: &str = "broadcast:";

/// Where a broadcast goes and what it says.
#[derive(Debug, Clone, Default)]
pub struct BroadcastRequest {
    /// Makes the broadcast idempotent: each target gets it once, however often it is sent.
    pub id: String,
    /// Users, each reached in their direct conversation with `system_sender` (made when
    /// missing).
    pub users: Vec<String>,
    /// Conversations, reached as the backend (no membership needed).
    pub conversations: Vec<String>,
    /// The message; its `client_message_id` is set from `id`.
    pub message: SendRequest,
}

/// What happened to each target of a broadcast.
#[derive(Debug, Clone, Default)]
pub struct BroadcastOutcome {
    /// Targets that got the message now.
    pub sent: usize,
    /// Targets that had it from an earlier run of the same broadcast.
    pub duplicates: usize,
    /// Targets that did not get it: (`user:…` or `conversation:…`, why).
    pub failed: Vec<(String, Error)>,
}

impl Registry {
    /// Sends one message from the system to many users and conversations, batched (a bounded
    /// number in flight), each target's send idempotent by the broadcast id: a broadcast
    /// sent again reaches only the targets it missed. The app's backend only.
    pub async fn broadcast(
        &self,
        caller: &Caller,
        req: BroadcastRequest,
    ) -> Result<BroadcastOutcome, Error> {
        if !caller.admin {
            return Err(Error::PermissionDenied("only the app's backend broadcasts"));
        }
        let max_id = self
            .config
            .max_client_message_id_bytes
            .saturating_sub(BROADCAST_PREFIX.len());
        if req.id.is_empty() || req.id.len() > max_id {
            return Err(Error::InvalidArgument(format!(
                "broadcast_id must be 1..={max_id} bytes"
            )));
        }
        let targets = req.users.len() + req.conversations.len();
        if targets == 0 {
            return Err(Error::InvalidArgument(
                "name users or conversations to broadcast to".into(),
            ));
        }
        let max = self.config.broadcast_max_targets;
        if targets > max {
            return Err(Error::LimitExceeded(format!(
                "{targets} targets; broadcast_max_targets is {max}"
            )));
        }
        for u in &req.users {
            self.check_user_id(u)?;
        }
        let mut message = req.message;
        message.client_message_id = format!("{BROADCAST_PREFIX}{}", req.id);
        // Checked once, not per target.
        self.validate_send(&message)?;
        let message = &message;
        let by_user = req.users.into_iter().map(|u| (true, u));
        let by_conv = req.conversations.into_iter().map(|c| (false, c));
        let mut results = futures_util::stream::iter(by_user.chain(by_conv))
            .map(|(user, target)| async move {
                let result = if user {
                    self.broadcast_to_user(caller, &target, message.clone())
                        .await
                } else {
                    self.send(caller, &target, message.clone()).await
                };
                let name = if user {
                    format!("user:{target}")
                } else {
                    format!("conversation:{target}")
                };
                (name, result)
            })
            .buffer_unordered(BROADCAST_CONCURRENCY);
        let mut out = BroadcastOutcome::default();
        while let Some((target, result)) = results.next().await {
            match result {
                Ok(ack) if ack.duplicate => out.duplicates += 1,
                Ok(_) => out.sent += 1,
                Err(e @ (Error::Unavailable | Error::Internal)) => {
                    // The store is failing: the rest would fail too; a retry of the same
                    // broadcast picks up where this one stopped.
                    return Err(e);
                }
                Err(e) => out.failed.push((target, e)),
            }
        }
        out.failed.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// A broadcast's send to one user: into their direct conversation with the system.
    async fn broadcast_to_user(
        &self,
        caller: &Caller,
        user: &str,
        message: SendRequest,
    ) -> Result<crate::protocol::pb::SendAck, Error> {
        if *user == *caller.user {
            return Err(Error::InvalidArgument(
                "the system does not broadcast to itself".into(),
            ));
        }
        let conv = self
            .create(
                caller,
                CreateRequest {
                    kind: ConversationKind::Direct,
                    members: vec![user.to_owned()],
                    ..Default::default()
                },
            )
            .await?;
        self.send(caller, &conv.id, message).await
    }

    /// Creates a conversation under an idempotency key: the first request with the key
    /// creates it (the key recorded in the same commit), a retry with the same request
    /// (`fingerprint`) gets that conversation as it now is (`true`: replayed), another
    /// request with the key is refused. Keys are kept `idempotency_ttl_secs`.
    pub async fn create_once(
        &self,
        caller: &Caller,
        mut req: CreateRequest,
        key: &str,
        fingerprint: Vec<u8>,
    ) -> Result<(Conversation, bool), Error> {
        if key.is_empty()
            || key.len() > MAX_IDEMPOTENCY_KEY_BYTES
            || !key.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
        {
            return Err(Error::InvalidArgument(format!(
                "an idempotency key is 1..={MAX_IDEMPOTENCY_KEY_BYTES} printable ASCII characters"
            )));
        }
        let _serial = self.idempotent_creates.lock().await;
        let now = self.now();
        let ttl = (self.config.idempotency_ttl_secs as i64).saturating_mul(1000);
        let mut expired = Vec::new();
        for (at, old) in self.store.idempotent_creates(PRUNE)? {
            if at.saturating_add(ttl) > now {
                break;
            }
            expired.push(Op::DeleteIdempotentCreate { key: old, at });
        }
        if !expired.is_empty() {
            let permit = self.writer.reserve().await?;
            wait(self.writer.submit(permit, expired, Vec::new(), Vec::new())).await?;
        }
        if let Some(r) = self.store.idempotent_create(key)?
            && r.at.saturating_add(ttl) > now
        {
            if r.fingerprint[..] != fingerprint[..] {
                return Err(Error::InvalidArgument(
                    "this Idempotency-Key came with another request".into(),
                ));
            }
            let id = self.public_id(r.conversation)?;
            return Ok((self.get(caller, &id)?, true));
        }
        req.idempotency = Some((key.to_owned(), fingerprint));
        Ok((self.create(caller, req).await?, false))
    }

    /// The op that records a keyed create of conversation `num` (none without a key).
    pub(super) fn idempotency_op(
        &self,
        idempotency: &Option<(String, Vec<u8>)>,
        num: u64,
    ) -> Option<Op> {
        let (key, fingerprint) = idempotency.as_ref()?;
        Some(Op::PutIdempotentCreate {
            key: key.clone(),
            record: IdempotentCreate {
                at: self.now(),
                fingerprint: fingerprint.clone().into(),
                conversation: num,
            },
        })
    }

    /// Records a keyed create that found an existing conversation (a direct pair, a unique
    /// member set) instead of making one.
    pub(super) async fn record_idempotency(
        &self,
        idempotency: &Option<(String, Vec<u8>)>,
        num: u64,
    ) -> Result<(), Error> {
        let Some(op) = self.idempotency_op(idempotency, num) else {
            return Ok(());
        };
        let permit = self.writer.reserve().await?;
        Ok(wait(self.writer.submit(permit, vec![op], Vec::new(), Vec::new())).await?)
    }
}
