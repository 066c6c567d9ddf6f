//! Online routing: user → live sessions, and fan-out of pushes into their outboxes. A push is
//! shared by all its recipients and encoded once per dialect (see [`Push`]).
//!
//! The hub never waits: a frame goes into a session's bounded outbox with `try_send`; a full
//! outbox marks that session for closing as a slow consumer (it reconnects and catches up by
//! seq). Nothing here is held across an `.await`.

use crate::outbox::TrySendError;
use crate::protocol::Push;
use crate::protocol::pb::CloseCode;
use crate::stats::Stats;
use crate::store::UserId;
use dashmap::DashMap;
use futures_util::task::AtomicWaker;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::task::Poll;

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
    pub outbox: crate::outbox::Sender,
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
    /// Every session of these users (a conversation's members), found through the cache kept
    /// with them: messages to the same members between two logins or logouts anywhere find
    /// their sessions in one walk over an array, not a map lookup per member.
    Members(Arc<[UserId]>, Arc<LiveSessions>),
    /// Every session of one user.
    User(UserId),
}

/// Whether two deliveries go to the same members' sessions, found the same way.
fn same_members(a: &Delivery, b: &Delivery) -> bool {
    match (&a.to, &b.to) {
        (Recipients::Members(_, x), Recipients::Members(_, y)) => Arc::ptr_eq(x, y),
        _ => false,
    }
}

/// The live sessions of a fixed set of users, as of a hub epoch (see [`Recipients::Members`]).
/// Whoever changes the set makes a new one.
///
/// They are found again only when two deliveries in a row saw the same epoch: while sessions
/// log in and out between every two messages, a delivery walks the map as it would without a
/// cache, instead of building one that the next login throws away.
#[derive(Debug, Default)]
pub struct LiveSessions(std::sync::Mutex<Cache>);

#[derive(Debug, Default)]
struct Cache {
    /// The sessions and the epoch they were found at.
    built: Option<(u64, Arc<[Target]>)>,
    /// The epoch the last delivery saw, plus one (0: none yet).
    seen: u64,
}

/// Where one live session's pushes go.
#[derive(Debug)]
pub struct Target {
    id: u64,
    outbox: crate::outbox::Sender,
    kick: Arc<Kick>,
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
    /// Moves on with every change of `users`: a [`LiveSessions`] of an older epoch is stale.
    epoch: AtomicU64,
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
            epoch: AtomicU64::new(0),
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
        // Under the entry's lock: a cache built from an epoch read before this sees the new
        // session anyway, one built after it is marked with the new epoch.
        self.epoch.fetch_add(1, Ordering::SeqCst);
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
                    self.epoch.fetch_add(1, Ordering::SeqCst);
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
            Recipients::Members(..) => self.deliver_run(&[d]),
            Recipients::User(u) => self.deliver_to(u, d),
        }
    }

    /// Hands out deliveries in order, like [`Hub::deliver`] on each. Consecutive deliveries to
    /// the same members go out recipient by recipient instead: a session gets all of them at
    /// once (one wake-up), so when it runs while the others are still being served it writes
    /// them together. Each recipient still gets them in their order.
    pub fn deliver_in_order<'a>(&self, deliveries: impl IntoIterator<Item = &'a Delivery>) {
        let mut run: Vec<&Delivery> = Vec::new();
        for d in deliveries {
            if let Some(first) = run.first()
                && !same_members(first, d)
            {
                self.deliver_run(&run);
                run.clear();
            }
            run.push(d);
        }
        self.deliver_run(&run);
    }

    /// Deliveries to the same members (see [`Hub::deliver_in_order`]).
    fn deliver_run(&self, run: &[&Delivery]) {
        let Some(&first) = run.first() else {
            return;
        };
        let Recipients::Members(users, live) = &first.to else {
            run.iter().for_each(|d| self.deliver(d));
            return;
        };
        let fanout = &self.stats.histograms.fanout_users;
        run.iter().for_each(|_| fanout.observe(users.len() as f64));
        let each = |id: u64, outbox: &crate::outbox::Sender, kick: &Kick| {
            for d in run.iter().filter(|d| d.except_session != id) {
                self.queue_into(
                    outbox,
                    kick,
                    Outgoing {
                        push: d.frame.clone(),
                        session: id,
                        user_seq: d.user_seq,
                    },
                );
            }
        };
        match self.targets(users, live) {
            Some(targets) => targets.iter().for_each(|t| each(t.id, &t.outbox, &t.kick)),
            None => {
                for u in users.iter() {
                    if let Some(sessions) = self.users.get(u) {
                        sessions.iter().for_each(|h| each(h.id, &h.outbox, &h.kick));
                    }
                }
            }
        }
    }

    /// The live sessions of `users`: the cached ones when no session registered or left since
    /// they were found; found again (and cached) when none did since the last delivery; `None`
    /// when one did (see [`LiveSessions`]).
    fn targets(&self, users: &[UserId], live: &LiveSessions) -> Option<Arc<[Target]>> {
        let epoch = self.epoch.load(Ordering::SeqCst);
        let mut cache = live.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, targets)) = &cache.built
            && *at == epoch
        {
            return Some(targets.clone());
        }
        if cache.seen != epoch + 1 {
            cache.seen = epoch + 1;
            cache.built = None;
            return None;
        }
        let mut found = Vec::new();
        for u in users {
            if let Some(sessions) = self.users.get(u) {
                found.extend(sessions.iter().map(|h| Target {
                    id: h.id,
                    outbox: h.outbox.clone(),
                    kick: h.kick.clone(),
                }));
            }
        }
        let targets: Arc<[Target]> = found.into();
        cache.built = Some((epoch, targets.clone()));
        Some(targets)
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
        self.queue_into(&h.outbox, &h.kick, out);
    }

    fn queue_into(&self, outbox: &crate::outbox::Sender, kick: &Kick, out: Outgoing) {
        match outbox.try_send(out) {
            Ok(()) => self.stats.frames_queued.inc(),
            Err(TrySendError::Full) => {
                self.stats.slow_consumer_closes.inc();
                kick.kick(CloseCode::CloseSlowConsumer);
            }
            Err(TrySendError::Closed) => {}
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
            outbox: crate::outbox::channel(1).0,
            kick: Arc::default(),
            shared,
            login_at: 0,
            jti: None,
        }
    }

    #[test]
    fn deliveries_in_order_reach_each_session_in_their_order_but_the_sender() {
        let hub = Hub::new(Arc::default());
        let (a, b) = (UserId::from("a"), UserId::from("b"));
        let (tx, mut rx) = crate::outbox::channel(16);
        let mut to_b = handle(2, None, false);
        to_b.outbox = tx;
        hub.register(&b, to_b, 2);
        hub.register(&a, handle(1, None, false), 2);
        let roster: Arc<[UserId]> = vec![a.clone(), b.clone()].into();
        let (one, other) = (Arc::<LiveSessions>::default(), Arc::default());
        let d = |live: &Arc<LiveSessions>, seq: u64, except_session: u64| Delivery {
            to: Recipients::Members(roster.clone(), live.clone()),
            frame: crate::protocol::replaced(),
            user_seq: seq,
            except_session,
        };
        // A run of one conversation, another's delivery, the first's again; one sent by b.
        let all = [
            d(&one, 1, 1),
            d(&one, 2, 2),
            d(&one, 3, 1),
            d(&other, 4, 1),
            d(&one, 5, 1),
        ];
        hub.deliver_in_order(&all);
        let mut got = Vec::new();
        rx.try_recv_many(&mut got, 16);
        let seqs: Vec<u64> = got.iter().map(|o| o.user_seq).collect();
        assert_eq!(seqs, [1, 3, 4, 5]);
    }

    #[test]
    fn members_get_what_is_sent_while_they_are_live_whether_or_not_the_sessions_are_cached() {
        let hub = Hub::new(Arc::default());
        let (a, b) = (UserId::from("a"), UserId::from("b"));
        let roster: Arc<[UserId]> = vec![a.clone(), b.clone()].into();
        let live = Arc::<LiveSessions>::default();
        let send = |seq: u64| {
            hub.deliver(&Delivery {
                to: Recipients::Members(roster.clone(), live.clone()),
                frame: crate::protocol::replaced(),
                user_seq: seq,
                except_session: 0,
            })
        };
        let session = |id: u64| {
            let (tx, rx) = crate::outbox::channel(64);
            let mut h = handle(id, Some(&id.to_string()), false);
            h.outbox = tx;
            (h, rx)
        };
        let (h, mut first) = session(1);
        hub.register(&a, h, 8);
        // Walked, then found and kept, then taken as kept.
        (1..=3).for_each(send);
        let (h, mut second) = session(2);
        hub.register(&b, h, 8);
        (4..=7).for_each(send);
        hub.unregister("a", 1);
        send(8);
        let seqs = |rx: &mut crate::outbox::Receiver| {
            let mut got = Vec::new();
            rx.try_recv_many(&mut got, 64);
            got.iter().map(|o| o.user_seq).collect::<Vec<_>>()
        };
        assert_eq!(seqs(&mut first), (1..=7).collect::<Vec<_>>());
        assert_eq!(seqs(&mut second), (4..=8).collect::<Vec<_>>());
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
