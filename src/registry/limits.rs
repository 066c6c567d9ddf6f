//! Request rate limits: token buckets per connection and per user, charged by what a request
//! costs the server. One table of costs for every front door; a front door only says which
//! kind of work a request is ([`Work`]). Requests made by the server itself (expiry) and by a
//! backend through the registry directly are not charged. A will is its user's own message:
//! set as a request of theirs, and sent for them when their connection drops, its audience is
//! charged to them after the send as any send's is.
//!
//! A bucket holds up to `burst` tokens and gains `per_sec` tokens a second; a request takes
//! its cost or is refused with how long until it would fit. Refused requests cost nothing, so
//! a client that retries after the given time gets through.
//!
//! Work whose size shows only once it is done (a filtered history walk that examines many
//! messages for a short page, the bytes of a page, a message's audience) is charged
//! afterwards, to the user's bucket: it may go below empty, by at most a minute of refill
//! ([`DEBT_MAX_SECS`]; one burst when that is more), and the user's next requests wait until
//! it has refilled.
//!
//! Loading a conversation from the store (its record and every member record, see
//! [`MEMBERS_LOADED_PER_TOKEN`]) on behalf of a user's request is charged to that user, whatever
//! the request: the front doors run each request of a logged-in user as [`paid_by`] them. A
//! user already in debt is refused ([`Error::RateLimited`]) before a load, not after, so a
//! user's loads follow their token rate, and one request loads at most about what their bucket
//! holds (plus one conversation) before it is refused; what it loaded stays loaded, so a retry
//! goes on from there. Loads outside a user's request (deliveries, sweeps, the admin API, the
//! server's own senders) are not charged.

use super::{Caller, Error, Registry};
use crate::protocol::pb::ConversationEvent;
use crate::store::UserId;

/// What a request asks of the server, by cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// A small read or a change to one record: get a conversation, receipts, mute, read
    /// positions, presence subscriptions, wills.
    Light,
    /// A message (send, edit, recall).
    Send,
    /// A page of stored data: history, catch-up, members, one list entry, a LeanCloud query.
    Page,
    /// A page of the conversation list (its first page orders the whole list).
    List,
    /// Creating, changing the members of, or deleting a conversation.
    Change,
    /// A login (native `Login`, LeanCloud `session/open`): its unread summary is a page of the
    /// conversation list (at most `login_summary_max` entries, the list's first page's work).
    Login,
    /// What a connection answers by itself: a ping (LeanCloud: `echo`) or a token refresh.
    /// Charged to the connection's bucket only, so a flood of them is refused like any other
    /// (decoding one is the same work as decoding any frame of its size), while one user's
    /// other connections never starve its heartbeats.
    Ping,
}

/// Messages examined by a history walk, beyond the page it returns, that cost one token
/// more (charged after the walk; about the CPU of a list entry each).
pub const SCANNED_PER_TOKEN: usize = 50;

/// How far below empty work charged afterwards may take a bucket, in seconds of its refill
/// (at least one burst).
pub const DEBT_MAX_SECS: i64 = 60;

/// Steps of a LeanCloud `conv/query`'s matching and sorting (`leancloud::query::Meter`) that
/// cost one token more, charged after the query (about half a millisecond of CPU).
pub const QUERY_STEPS_PER_TOKEN: u64 = 100_000;

/// Member records read from the store to load conversations that were not loaded, on behalf
/// of a user's request, that cost one token (about half a millisecond of CPU: a cold LeanCloud
/// `conv/query` over 1,000 groups of 1,000 members reads a million). Charged as each load
/// ends, in thousandths of a token, exactly: the conversation's record counts as one record
/// more, so a group of two costs 0.006 token and one of 10,000 members 20.002.
pub const MEMBERS_LOADED_PER_TOKEN: usize = 500;

tokio::task_local! {
    /// The user whose request is being served: they pay for the conversations it loads.
    static PAYER: UserId;
}

/// Runs `work` as a request of `user`: the conversations it loads are charged to them (see
/// [`MEMBERS_LOADED_PER_TOKEN`]).
pub fn paid_by<F: std::future::Future>(
    user: UserId,
    work: F,
) -> impl std::future::Future<Output = F::Output> {
    PAYER.scope(user, work)
}

/// [`paid_by`] for work done on the calling thread.
pub fn paid_by_now<R>(user: UserId, work: impl FnOnce() -> R) -> R {
    PAYER.sync_scope(user, work)
}

/// Messages a LeanCloud `lc.protobuf2.1` open's catch-up reads that cost one token more,
/// charged after the open (what the `logs` pages fetching them would: 5 for 100).
pub const OFFLINE_MESSAGES_PER_TOKEN: usize = 20;

/// Conversations a catch-up across all of a user's conversations examines (LeanCloud's missed
/// notifications, the edits since `lastPatchTime`: a range read of each one's log) that cost
/// one token more, charged after it.
pub const CONVERSATIONS_PER_TOKEN: usize = 100;

/// Users a profile change is pushed to (its audience, the user included) that cost one token
/// more, charged after the change (about what a send to as many costs).
pub const PROFILE_RECIPIENTS_PER_TOKEN: usize = 50;

/// Members a user's message goes to (the sender included) that cost one token more, charged
/// after the send, as for profile changes. An edit or recall is pushed to as many, and charged
/// the same.
pub const SEND_RECIPIENTS_PER_TOKEN: usize = 50;

/// Bytes of stored messages (as stored: their encoded length) a history or catch-up page
/// returns (or a list page and a login's summary carry as last messages), of logged events
/// a login replays, or of a conversation event pushed to members (see [`Pushed`]), that cost
/// one token more, charged after the page or the login: encoding
/// and sending grow with the bytes, and a page of 100 messages of 64 KiB is a hundred times
/// the work of a page of short ones.
pub const RETURNED_BYTES_PER_TOKEN: usize = 64 << 10;

/// Users a membership change writes for (the members of a created group, the users added
/// to or removed from one, the members a group control names: each an entry or its removal
/// and an event in their log) that cost one token more, charged after the change.
pub const MEMBERS_PER_TOKEN: usize = 10;

/// A conversation event a change pushes to members (a name or attributes update, mute-all, a
/// role, mute or block, an add, remove, join or leave, an ownership transfer, a creation):
/// charged to the user who made the change, after it, like a send to as many users (one token
/// more per [`SEND_RECIPIENTS_PER_TOKEN`]) and by the bytes pushed in all, the event's encoded
/// length times its recipients (one token more per [`RETURNED_BYTES_PER_TOKEN`]): the event
/// carries the conversation's name and attributes, so a group with large attributes pushes
/// them whole to every member at each change. Counted over the members it is addressed to,
/// online or not, as a send's audience is; the users a change names (added, removed, given a
/// role, muted, blocked), charged for already by [`MEMBERS_PER_TOKEN`], count by bytes only.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Pushed {
    users: usize,
    bytes: usize,
}

impl Pushed {
    /// `event` pushed to `users` users.
    pub(super) fn event(event: &ConversationEvent, users: usize) -> Self {
        Pushed {
            users,
            bytes: users.saturating_mul(prost::Message::encoded_len(event)),
        }
    }

    /// `event` pushed to `users` users that the change named, charged for them already by
    /// [`MEMBERS_PER_TOKEN`] (a higher rate): counted here by its bytes only.
    pub(super) fn named(event: &ConversationEvent, users: usize) -> Self {
        Pushed {
            users: 0,
            ..Pushed::event(event, users)
        }
    }

    /// This push and `other`'s.
    pub(super) fn and(self, other: Pushed) -> Self {
        Pushed {
            users: self.users.saturating_add(other.users),
            bytes: self.bytes.saturating_add(other.bytes),
        }
    }

    /// Tokens it costs beyond its request's own.
    fn tokens(self) -> usize {
        (self.users / SEND_RECIPIENTS_PER_TOKEN)
            .saturating_add(self.bytes / RETURNED_BYTES_PER_TOKEN)
    }
}

impl Work {
    /// Tokens it takes.
    pub fn cost(self) -> u32 {
        match self {
            Work::Light | Work::Send | Work::Ping => 1,
            Work::Page | Work::Change => 5,
            Work::List | Work::Login => 20,
        }
    }
}

/// A token bucket on the server's clock, counted in thousandths of a token (a bucket gaining
/// `per_sec` tokens a second gains `per_sec` thousandths a millisecond, exactly). Below zero
/// when work charged afterwards took more than was left.
#[derive(Debug, Clone)]
pub struct Bucket {
    milli: i64,
    at: i64,
}

impl Bucket {
    pub fn full(burst: u32, now: i64) -> Self {
        Bucket {
            milli: i64::from(burst) * 1000,
            at: now,
        }
    }

    fn refilled(&self, per_sec: u32, burst: u32, now: i64) -> i64 {
        let elapsed = now.saturating_sub(self.at).max(0);
        self.milli
            .saturating_add(elapsed.saturating_mul(i64::from(per_sec)))
            .min(i64::from(burst) * 1000)
    }

    /// Whether it has refilled to `burst` by `now` (forgetting it then loses nothing).
    fn full_at(&self, per_sec: u32, burst: u32, now: i64) -> bool {
        self.refilled(per_sec, burst, now) >= i64::from(burst) * 1000
    }

    /// Takes `cost` tokens for work already done: never refused, but never further below
    /// empty than [`DEBT_MAX_SECS`] of refill (or one burst, when that is more), so a request
    /// that cost more than a burst is paid for in full, and no single one locks a user out for
    /// longer than that (`per_sec` 0: no limit).
    pub fn owe(&mut self, cost: u32, per_sec: u32, burst: u32, now: i64) {
        if per_sec == 0 {
            return;
        }
        let floor = -(i64::from(per_sec) * DEBT_MAX_SECS).max(i64::from(burst)) * 1000;
        self.milli = (self.refilled(per_sec, burst, now) - i64::from(cost) * 1000).max(floor);
        self.at = self.at.max(now);
    }

    /// Takes `milli` thousandths of a token for work already done, however far below empty
    /// that goes (`per_sec` 0: no limit).
    fn charge_milli(&mut self, milli: i64, per_sec: u32, burst: u32, now: i64) {
        if per_sec == 0 {
            return;
        }
        self.milli = self.refilled(per_sec, burst, now).saturating_sub(milli);
        self.at = self.at.max(now);
    }

    /// `None` when it holds anything, else in how many ms it will hold a token again
    /// (`per_sec` 0: no limit).
    fn in_debt(&self, per_sec: u32, burst: u32, now: i64) -> Option<u64> {
        if per_sec == 0 {
            return None;
        }
        let milli = self.refilled(per_sec, burst, now);
        (milli < 0).then(|| (1000 - milli).unsigned_abs().div_ceil(u64::from(per_sec)))
    }

    /// Takes `cost` tokens, or says in how many ms they will be there (`per_sec` 0: no limit).
    /// A cost above the burst could never fit, so it is charged as the whole burst.
    pub fn take(&mut self, cost: u32, per_sec: u32, burst: u32, now: i64) -> Result<(), u64> {
        if per_sec == 0 {
            return Ok(());
        }
        self.milli = self.refilled(per_sec, burst, now);
        self.at = self.at.max(now);
        let cost = i64::from(cost.min(burst)) * 1000;
        let short = cost - self.milli;
        if short <= 0 {
            self.milli -= cost;
            Ok(())
        } else {
            Err((short as u64).div_ceil(u64::from(per_sec)))
        }
    }
}

/// An answer bounded in bytes: items go, in order, while their bytes fit; the first always
/// goes, whatever its size, so that a client asking again from where an answer stopped is
/// never stuck.
#[derive(Debug, Clone)]
pub struct ByteBudget {
    max: usize,
    used: usize,
    items: usize,
}

impl ByteBudget {
    /// A bound of `max` bytes.
    pub fn new(max: usize) -> Self {
        ByteBudget {
            max,
            used: 0,
            items: 0,
        }
    }

    /// Whether an item of `bytes` goes (then counted), or the answer stops before it.
    pub fn take(&mut self, bytes: usize) -> bool {
        if self.items > 0 && self.used.saturating_add(bytes) > self.max {
            return false;
        }
        self.used = self.used.saturating_add(bytes);
        self.items += 1;
        true
    }

    /// Bytes of the items taken.
    pub fn used(&self) -> usize {
        self.used
    }
}

impl Registry {
    /// Charges `work` to the connection's bucket and then to the user's (but [`Work::Ping`] to
    /// the connection's only): refused with [`Error::RateLimited`] when either is short (and
    /// then neither is charged).
    pub fn admit(&self, user: &UserId, connection: &mut Bucket, work: Work) -> Result<(), Error> {
        let c = &self.config;
        let now = self.now();
        let cost = work.cost();
        let mut probe = connection.clone();
        probe
            .take(
                cost,
                c.rate_limit_connection_per_sec,
                c.rate_limit_connection_burst,
                now,
            )
            .map_err(|ms| Error::RateLimited { retry_after_ms: ms })?;
        if c.rate_limit_user_per_sec > 0 && work != Work::Ping {
            let mut bucket = match self.rates.get_mut(user) {
                Some(b) => b,
                None => {
                    // A user's first request since their bucket went. Buckets of users who
                    // left while short stay until refilled; sweep them when they pile up, so
                    // the map stays about the size of the online users (counting is not free:
                    // only here, never on the way of an ordinary request).
                    if self.rates.len() > 2 * self.hub().session_count() + 1024 {
                        let (rate, burst) = (c.rate_limit_user_per_sec, c.rate_limit_user_burst);
                        self.rates.retain(|_, b| !b.full_at(rate, burst, now));
                    }
                    self.rates
                        .entry(user.clone())
                        .or_insert_with(|| Bucket::full(c.rate_limit_user_burst, now))
                }
            };
            bucket
                .take(
                    cost,
                    c.rate_limit_user_per_sec,
                    c.rate_limit_user_burst,
                    now,
                )
                .map_err(|ms| Error::RateLimited { retry_after_ms: ms })?;
        }
        *connection = probe;
        Ok(())
    }

    /// Charges a [`Work::Ping`] to a connection that may have no session yet (LeanCloud's
    /// `echo` before `session/open`).
    pub fn admit_ping(&self, connection: &mut Bucket) -> Result<(), Error> {
        let c = &self.config;
        connection
            .take(
                Work::Ping.cost(),
                c.rate_limit_connection_per_sec,
                c.rate_limit_connection_burst,
                self.now(),
            )
            .map_err(|ms| Error::RateLimited { retry_after_ms: ms })
    }

    /// Charges `work` to the user's bucket alone: for requests that come without a connection
    /// of their own (LeanCloud's HTTP endpoints).
    pub fn admit_user(&self, user: &UserId, work: Work) -> Result<(), Error> {
        // A fresh connection bucket always holds one request: only the user's decides.
        let mut fresh = self.connection_bucket();
        self.admit(user, &mut fresh, work)
    }

    /// Charges a non-admin caller's user for `scanned` messages a history walk examined to
    /// return a page of `page` (see [`SCANNED_PER_TOKEN`]); never refused.
    pub(super) fn charge_scan(&self, user: &UserId, scanned: usize, page: usize) {
        let extra = scanned.saturating_sub(page) / SCANNED_PER_TOKEN;
        self.owe(user, u64::try_from(extra).unwrap_or(u64::MAX));
    }

    /// Charges a user for the `steps` a LeanCloud `conv/query` took to match and sort its rows
    /// (see [`QUERY_STEPS_PER_TOKEN`]), refused or not, and for the `bytes` of the rows it
    /// built, answered or not (see [`RETURNED_BYTES_PER_TOKEN`]); never refused itself. (The
    /// conversations it loaded were charged as they were, see [`paid_by`].)
    pub fn charge_query(&self, user: &UserId, steps: u64, bytes: usize) {
        let for_bytes = u64::try_from(bytes / RETURNED_BYTES_PER_TOKEN).unwrap_or(u64::MAX);
        self.owe(
            user,
            (steps / QUERY_STEPS_PER_TOKEN).saturating_add(for_bytes),
        );
    }

    /// Who pays for a load about to be made: the user whose request this is ([`paid_by`];
    /// `None`: none, or no user rate limit). Refused with [`Error::RateLimited`] when that
    /// user's bucket is below empty.
    pub(super) fn load_payer(&self) -> Result<Option<UserId>, Error> {
        let c = &self.config;
        if c.rate_limit_user_per_sec == 0 {
            return Ok(None);
        }
        let Ok(user) = PAYER.try_with(|u| u.clone()) else {
            return Ok(None);
        };
        self.refuse_in_debt(&user)?;
        Ok(Some(user))
    }

    /// How long until `user`'s bucket holds what `work` costs (0: it does now): the retry time
    /// of a refusal told after the work's own charge landed.
    pub fn retry_after(&self, user: &UserId, work: Work) -> u64 {
        let c = &self.config;
        let Some(mut probe) = self.rates.get(user).map(|b| b.clone()) else {
            return 0;
        };
        probe
            .take(
                work.cost(),
                c.rate_limit_user_per_sec,
                c.rate_limit_user_burst,
                self.now(),
            )
            .err()
            .unwrap_or(0)
    }

    /// Refuses with [`Error::RateLimited`] when `user`'s bucket is below empty: work whose cost
    /// shows only as it is done, started once the user's earlier work has been charged (a
    /// LeanCloud `conv/query` when its turn comes, a load), waits for the bucket to refill.
    pub fn refuse_in_debt(&self, user: &UserId) -> Result<(), Error> {
        let c = &self.config;
        let debt = self.rates.get(user).and_then(|b| {
            b.in_debt(
                c.rate_limit_user_per_sec,
                c.rate_limit_user_burst,
                self.now(),
            )
        });
        match debt {
            Some(ms) => Err(Error::RateLimited { retry_after_ms: ms }),
            None => Ok(()),
        }
    }

    /// Charges `user` for loading a conversation of `members` members (see
    /// [`MEMBERS_LOADED_PER_TOKEN`]); never refused, and not bounded below.
    pub(super) fn charge_load(&self, user: &UserId, members: usize) {
        let c = &self.config;
        let records = i64::try_from(members).unwrap_or(i64::MAX).saturating_add(1);
        let milli = records.saturating_mul(1000) / MEMBERS_LOADED_PER_TOKEN as i64;
        let now = self.now();
        let (rate, burst) = (c.rate_limit_user_per_sec, c.rate_limit_user_burst);
        self.rates
            .entry(user.clone())
            .or_insert_with(|| Bucket::full(burst, now))
            .charge_milli(milli, rate, burst, now);
    }

    /// The bound on the bytes of one LeanCloud `conv/query` answer's rows
    /// (`leancloud_query_bytes_max`).
    pub fn query_bytes(&self) -> ByteBudget {
        ByteBudget::new(self.config.leancloud_query_bytes_max)
    }

    /// Charges a user for the `messages` a LeanCloud open's catch-up read (see
    /// [`OFFLINE_MESSAGES_PER_TOKEN`]); never refused.
    pub fn charge_offline(&self, user: &UserId, messages: usize) {
        let tokens = messages / OFFLINE_MESSAGES_PER_TOKEN;
        self.owe(user, u64::try_from(tokens).unwrap_or(u64::MAX));
    }

    /// Charges a user for the `conversations` a catch-up examined (see
    /// [`CONVERSATIONS_PER_TOKEN`]); never refused.
    pub(super) fn charge_conversations(&self, user: &UserId, conversations: usize) {
        let tokens = conversations / CONVERSATIONS_PER_TOKEN;
        self.owe(user, u64::try_from(tokens).unwrap_or(u64::MAX));
    }

    /// Charges a user for the `recipients` their profile change was pushed to (see
    /// [`PROFILE_RECIPIENTS_PER_TOKEN`]); never refused.
    pub(super) fn charge_profile(&self, user: &UserId, recipients: usize) {
        let tokens = recipients / PROFILE_RECIPIENTS_PER_TOKEN;
        self.owe(user, u64::try_from(tokens).unwrap_or(u64::MAX));
    }

    /// Charges a user for the `members` of the conversation their message went to (see
    /// [`SEND_RECIPIENTS_PER_TOKEN`]); never refused.
    pub(super) fn charge_send(&self, user: &UserId, members: usize) {
        let tokens = members / SEND_RECIPIENTS_PER_TOKEN;
        self.owe(user, u64::try_from(tokens).unwrap_or(u64::MAX));
    }

    /// Charges a non-admin caller for what their change pushed to a conversation's members
    /// (see [`Pushed`]); never refused.
    pub(super) fn charge_pushed(&self, caller: &Caller, pushed: Pushed) {
        if !caller.admin {
            self.owe(
                &caller.user,
                u64::try_from(pushed.tokens()).unwrap_or(u64::MAX),
            );
        }
    }

    /// Charges a user for the `bytes` of stored messages or logged events sent back to them
    /// (see [`RETURNED_BYTES_PER_TOKEN`]); never refused.
    pub(super) fn charge_bytes(&self, user: &UserId, bytes: usize) {
        let tokens = bytes / RETURNED_BYTES_PER_TOKEN;
        self.owe(user, u64::try_from(tokens).unwrap_or(u64::MAX));
    }

    /// Charges a user for the items one request named beyond the first (LeanCloud's `read`
    /// names many conversations, each a read position to store; a `patch/modify` many
    /// messages, each an edit or recall): a token each; never refused.
    pub fn charge_reads(&self, user: &UserId, named: usize) {
        let tokens = named.saturating_sub(1);
        self.owe(user, u64::try_from(tokens).unwrap_or(u64::MAX));
    }

    /// Charges a non-admin caller for the `members` a membership change wrote for (see
    /// [`MEMBERS_PER_TOKEN`]); never refused.
    pub(super) fn charge_members(&self, caller: &super::Caller, members: usize) {
        if !caller.admin {
            let tokens = members / MEMBERS_PER_TOKEN;
            self.owe(&caller.user, u64::try_from(tokens).unwrap_or(u64::MAX));
        }
    }

    /// Takes `tokens` from the user's bucket for work already done (at most a minute of refill
    /// below empty, see [`Bucket::owe`]).
    fn owe(&self, user: &UserId, tokens: u64) {
        let c = &self.config;
        if tokens == 0 || c.rate_limit_user_per_sec == 0 {
            return;
        }
        let now = self.now();
        let (rate, burst) = (c.rate_limit_user_per_sec, c.rate_limit_user_burst);
        self.rates
            .entry(user.clone())
            .or_insert_with(|| Bucket::full(burst, now))
            .owe(u32::try_from(tokens).unwrap_or(u32::MAX), rate, burst, now);
    }

    /// A new connection's bucket, full.
    pub fn connection_bucket(&self) -> Bucket {
        Bucket::full(self.config.rate_limit_connection_burst, self.now())
    }

    /// The user's last session ended: forgets their bucket unless it is still short (then a
    /// reconnect does not start with a full one).
    pub fn forget_rate(&self, user: &str) {
        let c = &self.config;
        let now = self.now();
        self.rates.remove_if(user, |_, b| {
            b.full_at(c.rate_limit_user_per_sec, c.rate_limit_user_burst, now)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_refill_at_their_rate_and_say_when_to_retry() {
        let mut b = Bucket::full(10, 0);
        for _ in 0..10 {
            b.take(1, 5, 10, 0).unwrap();
        }
        // Empty: one token comes every 200 ms.
        assert_eq!(b.take(1, 5, 10, 0), Err(200));
        assert_eq!(b.take(1, 5, 10, 199), Err(1));
        b.take(1, 5, 10, 200).unwrap();
        // Refill stops at the burst.
        b.take(10, 5, 10, 1_000_000).unwrap();
        assert!(b.take(1, 5, 10, 1_000_000).is_err());
        // A cost above the burst is charged as the burst, so it can pass once full.
        let mut b = Bucket::full(10, 0);
        b.take(50, 5, 10, 0).unwrap();
        // No limit.
        assert_eq!(b.take(u32::MAX, 0, 0, 0), Ok(()));
    }

    #[test]
    fn a_byte_budget_takes_what_fits_and_always_the_first() {
        let mut b = ByteBudget::new(10);
        assert!(b.take(25));
        assert!(!b.take(1));
        assert_eq!(b.used(), 25);
        let mut b = ByteBudget::new(10);
        assert!(b.take(4) && b.take(6));
        assert!(!b.take(1));
        assert_eq!(b.used(), 10);
    }

    #[test]
    fn work_charged_afterwards_goes_below_empty_by_at_most_a_minute_of_refill() {
        let mut b = Bucket::full(10, 0);
        b.owe(4, 5, 10, 0);
        b.take(6, 5, 10, 0).unwrap();
        assert_eq!(b.take(1, 5, 10, 0), Err(200));
        // 30 more owed, three bursts: all of it; 31 tokens (6.2 s) until one fits.
        b.owe(30, 5, 10, 0);
        assert_eq!(b.take(1, 5, 10, 0), Err(6_200));
        b.take(1, 5, 10, 6_200).unwrap();
        // A million more: a minute of refill (300 tokens) below empty, no further.
        b.owe(1_000_000, 5, 10, 6_200);
        assert_eq!(b.take(1, 5, 10, 6_200), Err(60_200));
        // With a burst larger than a minute of refill, one burst.
        let mut b = Bucket::full(1_000, 0);
        b.owe(1_000_000, 5, 1_000, 0);
        assert_eq!(b.take(1, 5, 1_000, 0), Err(200_200));
        // No limit: nothing owed.
        let mut b = Bucket::full(1, 0);
        b.owe(100, 0, 1, 0);
        b.take(1, 5, 1, 0).unwrap();
    }

    #[test]
    fn loads_are_charged_in_thousandths_without_a_floor_and_debt_says_when_a_token_is_back() {
        let mut b = Bucket::full(10, 0);
        b.charge_milli(9_500, 5, 10, 0);
        assert_eq!(b.in_debt(5, 10, 0), None);
        // 0.5 left: one more load goes through, however large, and the next must wait.
        b.charge_milli(40_000, 5, 10, 0);
        assert_eq!(b.in_debt(5, 10, 0), Some(8_100));
        // Out of debt once refilled to empty (a token is 200 ms further on).
        assert_eq!(b.in_debt(5, 10, 7_899), Some(201));
        assert_eq!(b.in_debt(5, 10, 7_900), None);
        assert_eq!(b.in_debt(0, 10, 0), None);
    }
}
