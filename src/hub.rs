//! Online routing: user → live sessions, and fan-out of pushes into their outboxes. A push is
//! shared by all its recipients and encoded once per dialect (see [`Push`]).
//!
//! The hub never waits: a frame goes into a session's bounded outbox with `try_send`; a full
//! outbox marks that session for closing as a slow consumer (it reconnects and catches up by
//! seq). Nothing here is held across an `.await`.

use crate::protocol::Push;
use crate::protocol::pb::CloseCode;
use crate::stats::Stats;
use crate::store::UserId;
use dashmap::DashMap;
use futures_util::task::AtomicWaker;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::task::Poll;
use tokio::sync::mpsc;

/// One push queued for a session.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub push: Arc<Push>,
    /// The session it is for (a connection may carry several).
    pub session: u64,
    /// For logged conversation events: their user-event seq (lets a session that is replaying
    /// the log skip live copies of events it already sent). 0 otherwise.
    pub user_seq: u64,
}

/// Asks a session to close with a code; the first code set wins.
///
/// The session task is the only waiter, so this is an atomic plus an `AtomicWaker`: checking
/// it on every turn of the session loop costs no lock (a `Notify` did, measurably, in fan-out).
#[derive(Debug, Default)]
pub struct Kick {
    code: AtomicU16,
    waker: AtomicWaker,
}

impl Kick {
    /// Requests the close. Later requests are ignored.
    pub fn kick(&self, code: CloseCode) {
        if self
            .code
            .compare_exchange(0, code as i32 as u16, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.waker.wake();
        }
    }

    /// Waits until kicked; returns the code.
    pub fn kicked(&self) -> impl Future<Output = u16> + '_ {
        std::future::poll_fn(move |cx| {
            let code = self.code.load(Ordering::Acquire);
            if code != 0 {
                return Poll::Ready(code);
            }
            self.waker.register(cx.waker());
            // Kicked between the first check and registering: do not miss it.
            match self.code.load(Ordering::Acquire) {
                0 => Poll::Pending,
                code => Poll::Ready(code),
            }
        })
    }
}

/// What the hub holds of one live session.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    pub id: u64,
    pub device: Option<Arc<str>>,
    pub outbox: mpsc::Sender<Outgoing>,
    /// Closes the session's whole connection.
    pub kick: Arc<Kick>,
    /// The connection may carry other sessions (LeanCloud): replacing this one closes only it.
    pub shared: bool,
    /// When the login this session continues happened (ms): its own start, or for a resumed
    /// session (LeanCloud `st`) the original login's.
    pub login_at: i64,
    /// The id (`jti`) of the token the session logged in with, when it has one (a refresh
    /// replaces it: [`Hub::set_token_id`]).
    pub jti: Option<Arc<str>>,
}

/// What [`Hub::register`] did.
#[derive(Debug)]
pub struct Registered {
    /// Sessions of the same user and device tag, replaced by the new one.
    pub replaced: Vec<SessionHandle>,
    /// The user's oldest sessions, beyond `max_sessions_per_user` with the new one.
    pub evicted: Vec<SessionHandle>,
    /// The user had no live session before.
    pub came_online: bool,
}

/// Who receives a delivery.
#[derive(Debug, Clone)]
pub enum Recipients {
    /// Every session of these users.
    Users(Arc<[UserId]>),
    /// Every session of one user.
    User(UserId),
}

/// A frame to hand to the online sessions of some users, after its write is durable.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub to: Recipients,
    pub frame: Arc<Push>,
    pub user_seq: u64,
    /// A session that must not get it (the one that sent it, which gets a reply instead).
    pub except_session: u64,
}

/// The live sessions of every online user.
#[derive(Debug)]
pub struct Hub {
    users: DashMap<UserId, Vec<SessionHandle>>,
    stats: Arc<Stats>,
    /// Delivery steps begun and ended (see [`Hub::steps`]).
    begun: AtomicU64,
    ended: AtomicU64,
}

/// Where the hub's delivery steps stood (see [`Hub::steps`]).
#[derive(Debug, Clone, Copy)]
pub struct Steps {
    begun: u64,
    idle: bool,
}

impl Hub {
    pub fn new(stats: Arc<Stats>) -> Self {
        Hub {
            users: DashMap::new(),
            stats,
            begun: AtomicU64::new(0),
            ended: AtomicU64::new(0),
        }
    }

    /// Marks the start of a delivery step: a commit's conversation state moves forward (its
    /// senders are answered), then its deliveries are handed out, the step's end.
    pub fn step_begins(&self) {
        self.begun.fetch_add(1, Ordering::SeqCst);
    }

    /// See [`Hub::step_begins`].
    pub fn step_ends(&self) {
        self.ended.fetch_add(1, Ordering::SeqCst);
    }

    /// Where the delivery steps stand. Taken before a session registers and compared (with
    /// [`Hub::overlapped`]) after its catch-up was read: when no step was under way then and
    /// none began since, no push the session gets repeats what its catch-up said.
    pub fn steps(&self) -> Steps {
        let begun = self.begun.load(Ordering::SeqCst);
        let idle = self.ended.load(Ordering::SeqCst) == begun;
        Steps { begun, idle }
    }

    /// Whether a delivery step may have overlapped the time since `before` (see
    /// [`Hub::steps`]).
    pub fn overlapped(&self, before: Steps) -> bool {
        !before.idle || self.begun.load(Ordering::SeqCst) != before.begun
    }

    /// Adds a session, keeping the user within `max_sessions` live sessions. Returns what the
    /// caller must close: the sessions it replaces (same user and device tag; close them with
    /// [`Hub::replace`]) and the user's oldest sessions beyond `max_sessions` (close them with
    /// [`Hub::evict`]). Both are out of the hub already, so the count is exact even when logins
    /// race.
    pub fn register(
        &self,
        user: &UserId,
        handle: SessionHandle,
        max_sessions: usize,
    ) -> Registered {
        self.register_with(user, handle, max_sessions, false)
            .expect("a login is never refused")
    }

    /// Like [`Hub::register`] for a session that resumes an earlier login: refused (`None`,
    /// nothing changed) when a live session of the same device tag comes from a later login,
    /// which replaced the one being resumed.
    pub fn register_resumed(
        &self,
        user: &UserId,
        handle: SessionHandle,
        max_sessions: usize,
    ) -> Option<Registered> {
        self.register_with(user, handle, max_sessions, true)
    }

    fn register_with(
        &self,
        user: &UserId,
        handle: SessionHandle,
        max_sessions: usize,
        resumed: bool,
    ) -> Option<Registered> {
        let mut entry = self.users.entry(user.clone()).or_default();
        if resumed
            && let Some(dev) = &handle.device
            && entry
                .iter()
                .any(|h| h.device.as_deref() == Some(dev) && h.login_at > handle.login_at)
        {
            return None;
        }
        let came_online = entry.is_empty();
        let mut replaced = Vec::new();
        if let Some(dev) = &handle.device {
            entry.retain(|h| {
                let same = h.device.as_deref() == Some(dev);
                if same {
                    replaced.push(h.clone());
                }
                !same
            });
        }
        // Sessions are in login order: the oldest go first.
        let over = (entry.len() + 1).saturating_sub(max_sessions.max(1));
        let evicted = entry.drain(..over).collect();
        entry.push(handle);
        Some(Registered {
            replaced,
            evicted,
            came_online,
        })
    }

    /// Ends a session closed to make room under `max_sessions_per_user`: its connection is
    /// closed with `CLOSE_SESSION_LIMIT`, or, when the connection carries other sessions too
    /// (LeanCloud), only this session is closed, as a replaced one is.
    pub fn evict(&self, old: &SessionHandle) {
        if old.shared {
            self.send_to(old, crate::protocol::replaced());
        } else {
            old.kick.kick(CloseCode::CloseSessionLimit);
        }
    }

    /// Ends a session that a newer one on the same device replaced: its connection is closed,
    /// or, when the connection carries other sessions too, only this session.
    pub fn replace(&self, old: &SessionHandle) {
        if old.shared {
            self.send_to(old, crate::protocol::replaced());
        } else {
            old.kick.kick(CloseCode::CloseReplaced);
        }
    }

    /// Removes a session (no-op when it is already gone). Returns whether the user went
    /// offline (this was their last live session).
    pub fn unregister(&self, user: &str, session: u64) -> bool {
        self.users
            .remove_if_mut(user, |_, v| {
                v.retain(|h| h.id != session);
                v.is_empty()
            })
            .is_some()
    }

    /// Queues a frame for one session, closing it as a slow consumer if its outbox is full.
    pub fn send_to(&self, h: &SessionHandle, push: Arc<Push>) {
        self.queue(
            h,
            Outgoing {
                push,
                session: h.id,
                user_seq: 0,
            },
        );
    }

    /// Whether any session of `user` is live.
    pub fn is_online(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    /// Number of live sessions of `user`.
    pub fn sessions_of(&self, user: &str) -> usize {
        self.users.get(user).map_or(0, |v| v.len())
    }

    /// Closes `user`'s sessions (those with device tag `device` only, when given) with `code`.
    /// Returns how many were asked to close. A session on a shared connection (LeanCloud) is
    /// closed alone, the connection stays.
    pub fn kick_user(&self, user: &str, device: Option<&str>, code: CloseCode) -> usize {
        let Some(sessions) = self.users.get(user) else {
            return 0;
        };
        let mut n = 0;
        for h in sessions
            .iter()
            .filter(|h| device.is_none_or(|d| h.device.as_deref() == Some(d)))
        {
            if h.shared {
                self.send_to(h, crate::protocol::kicked());
            } else {
                h.kick.kick(code);
            }
            n += 1;
        }
        n
    }

    /// Closes `user`'s sessions logged in with token `jti` (with `code`). Returns how many.
    pub fn kick_token(&self, user: &str, jti: &str, code: CloseCode) -> usize {
        let Some(sessions) = self.users.get(user) else {
            return 0;
        };
        let mut n = 0;
        for h in sessions.iter().filter(|h| h.jti.as_deref() == Some(jti)) {
            h.kick.kick(code);
            n += 1;
        }
        n
    }

    /// Records that session `session` of `user` now holds token `jti` (after a refresh).
    pub fn set_token_id(&self, user: &str, session: u64, jti: Option<Arc<str>>) {
        if let Some(mut sessions) = self.users.get_mut(user)
            && let Some(h) = sessions.iter_mut().find(|h| h.id == session)
        {
            h.jti = jti;
        }
    }

    /// Number of live sessions.
    pub fn session_count(&self) -> usize {
        self.users.iter().map(|e| e.value().len()).sum()
    }

    /// Live sessions by dialect: (native, LeanCloud). LeanCloud's are the ones on a connection
    /// that may carry others.
    pub fn session_counts(&self) -> (usize, usize) {
        let (mut native, mut leancloud) = (0, 0);
        for e in self.users.iter() {
            for h in e.value().iter() {
                if h.shared {
                    leancloud += 1;
                } else {
                    native += 1;
                }
            }
        }
        (native, leancloud)
    }

    /// Puts the frame into every recipient session's outbox, without waiting.
    pub fn deliver(&self, d: &Delivery) {
        match &d.to {
            Recipients::Users(users) => {
                self.stats
                    .histograms
                    .fanout_users
                    .observe(users.len() as f64);
                for u in users.iter() {
                    self.deliver_to(u, d);
                }
            }
            Recipients::User(u) => self.deliver_to(u, d),
        }
    }

    fn deliver_to(&self, user: &str, d: &Delivery) {
        let Some(sessions) = self.users.get(user) else {
            return;
        };
        for h in sessions.iter().filter(|h| h.id != d.except_session) {
            self.queue(
                h,
                Outgoing {
                    push: d.frame.clone(),
                    session: h.id,
                    user_seq: d.user_seq,
                },
            );
        }
    }

    /// `try_send` into one outbox; a full outbox closes that session as a slow consumer.
    fn queue(&self, h: &SessionHandle, out: Outgoing) {
        match h.outbox.try_send(out) {
            Ok(()) => self.stats.frames_queued.inc(),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.stats.slow_consumer_closes.inc();
                h.kick.kick(CloseCode::CloseSlowConsumer);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}
