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
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
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
    /// Live sessions in `users`, on connections of their own (native) and on shared ones
    /// (LeanCloud), changed with `users`: counting them is not a walk over every user (a
    /// login asks, so a walk made a storm of logins quadratic).
    live: [AtomicUsize; 2],
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
            live: Default::default(),
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
        let evicted: Vec<SessionHandle> = entry.drain(..over).collect();
        for h in replaced.iter().chain(&evicted) {
            self.live[usize::from(h.shared)].fetch_sub(1, Ordering::Relaxed);
        }
        self.live[usize::from(handle.shared)].fetch_add(1, Ordering::Relaxed);
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
        let mut removed = None;
        let offline = self
            .users
            .remove_if_mut(user, |_, v| {
                if let Some(i) = v.iter().position(|h| h.id == session) {
                    removed = Some(v.remove(i).shared);
                }
                v.is_empty()
            })
            .is_some();
        if let Some(shared) = removed {
            self.live[usize::from(shared)].fetch_sub(1, Ordering::Relaxed);
        }
        offline
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
        let (native, leancloud) = self.session_counts();
        native + leancloud
    }

    /// Live sessions by dialect: (native, LeanCloud). LeanCloud's are the ones on a connection
    /// that may carry others.
    pub fn session_counts(&self) -> (usize, usize) {
        let [native, leancloud] = &self.live;
        (
            native.load(Ordering::Relaxed),
            leancloud.load(Ordering::Relaxed),
        )
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

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(id: u64, device: Option<&str>, shared: bool) -> SessionHandle {
        SessionHandle {
            id,
            device: device.map(Arc::from),
            outbox: mpsc::channel(1).0,
            kick: Arc::default(),
            shared,
            login_at: 0,
            jti: None,
        }
    }

    /// The counts kept with every change, against a walk over every user's sessions.
    fn walked(hub: &Hub) -> (usize, usize) {
        hub.users
            .iter()
            .flat_map(|e| e.value().clone())
            .fold(
                (0, 0),
                |(n, l), h| if h.shared { (n, l + 1) } else { (n + 1, l) },
            )
    }

    #[test]
    fn session_counts_follow_logins_replacements_evictions_and_logouts() {
        let hub = Hub::new(Arc::default());
        let (a, b) = (UserId::from("a"), UserId::from("b"));
        hub.register(&a, handle(1, Some("phone"), false), 2);
        hub.register(&a, handle(2, Some("web"), true), 2);
        hub.register(&b, handle(3, None, false), 2);
        assert_eq!((hub.session_counts(), hub.session_count()), ((2, 1), 3));
        // Same device: 1 is replaced by 4.
        let r = hub.register(&a, handle(4, Some("phone"), true), 2);
        assert_eq!(r.replaced.len(), 1);
        assert_eq!(hub.session_counts(), (1, 2));
        // Over two sessions: the oldest (2) is evicted.
        let r = hub.register(&a, handle(5, None, false), 2);
        assert_eq!(r.evicted.len(), 1);
        assert_eq!(hub.session_counts(), walked(&hub));
        // Unregistering twice, or a session that is not there, counts once.
        assert!(!hub.unregister("a", 4));
        assert!(!hub.unregister("a", 4));
        assert!(!hub.unregister("a", 99));
        assert!(hub.unregister("b", 3));
        assert_eq!(hub.session_counts(), walked(&hub));
        assert_eq!(hub.session_counts(), (1, 0));
        assert!(hub.unregister("a", 5));
        assert_eq!(hub.session_count(), 0);
    }
}
