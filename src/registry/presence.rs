//! Presence: which members of a conversation are online, and pushes when that changes.
//!
//! A user is online while any of their sessions is live; the hub reports the transitions
//! (first session in, last session out). Subscriptions are per session and per conversation,
//! at most `max_presence_subscriptions_per_session` a session; a transition is pushed to the
//! sessions subscribed to any conversation the user is a member of, that are members
//! themselves at that moment: one `PresenceChange` per session, naming every such
//! conversation, however many the user and the subscriber share. Leaving, removal, deletion
//! and expiry drop the subscriptions they end. The cost of a transition is proportional to
//! the number of conversations with subscribers.

use super::{Caller, Error, Registry};
use crate::hub::SessionHandle;
use crate::protocol::{self, pb};
use crate::store::UserId;
use dashmap::DashMap;
use std::collections::{BTreeSet, HashMap, HashSet};

/// Presence subscriptions: by conversation number, each session with its user; and by
/// session, the conversation numbers it holds (what the per-session bound counts).
#[derive(Default)]
pub(super) struct Subscriptions {
    by_conv: DashMap<u64, Vec<(UserId, SessionHandle)>>,
    by_session: DashMap<u64, HashSet<u64>>,
}

impl Subscriptions {
    /// Drops the subscriptions of `users` to conversation `num` (all of them with `None`).
    /// Called under the conversation's lock, like every change of its membership.
    pub(super) fn drop_users(&self, num: u64, users: Option<&BTreeSet<UserId>>) {
        let mut gone = Vec::new();
        self.by_conv.remove_if_mut(&num, |_, v| {
            v.retain(|(u, h)| {
                let keep = users.is_some_and(|users| !users.contains(u));
                if !keep {
                    gone.push(h.id);
                }
                keep
            });
            v.is_empty()
        });
        for session in gone {
            self.forget(session, num);
        }
    }

    /// Takes `num` out of `session`'s own set.
    fn forget(&self, session: u64, num: u64) {
        self.by_session.remove_if_mut(&session, |_, nums| {
            nums.remove(&num);
            nums.is_empty()
        });
    }

    /// Whether some session is subscribed to conversation `num`.
    pub(super) fn has_subscribers(&self, num: u64) -> bool {
        self.by_conv.contains_key(&num)
    }
}

impl Registry {
    /// The online members of a conversation, sorted.
    pub fn online_members(&self, caller: &Caller, id: &str) -> Result<Vec<String>, Error> {
        let cell = self.cell(id)?;
        let roster = {
            let st = cell.lock();
            st.require_member(&caller.user)?;
            st.roster.clone()
        };
        Ok(roster
            .iter()
            .filter(|u| self.hub.is_online(u))
            .map(|u| u.to_string())
            .collect())
    }

    /// Which of `users` are online (LeanCloud's `session/query`, which any logged-in client may
    /// ask about anyone, as LeanCloud allowed). The caller bounds how many are asked.
    pub fn online_users(&self, users: &[String]) -> Vec<String> {
        users
            .iter()
            .filter(|u| self.hub.is_online(u))
            .cloned()
            .collect()
    }

    /// How many live sessions each of `users` has (0: offline). The caller bounds how many are
    /// asked.
    pub fn sessions_of(&self, users: &[String]) -> Vec<(String, usize)> {
        users
            .iter()
            .map(|u| (u.clone(), self.hub.sessions_of(u)))
            .collect()
    }

    /// Closes a user's sessions (on one device tag, when given) with `CLOSE_KICKED`, as the
    /// app's backend asks. Returns how many sessions were closed.
    pub fn disconnect(&self, user: &str, device: Option<&str>) -> Result<usize, Error> {
        self.check_user_id(user)?;
        Ok(self.hub.kick_user(user, device, pb::CloseCode::CloseKicked))
    }

    /// Subscribes a session to the presence changes of a conversation's members, within
    /// `max_presence_subscriptions_per_session` (subscribing again to one held is a no-op).
    pub fn subscribe_presence(
        &self,
        caller: &Caller,
        handle: &SessionHandle,
        id: &str,
    ) -> Result<(), Error> {
        let cell = self.cell(id)?;
        // Under the lock, so a removal cannot come between the check and the subscription.
        let st = cell.lock();
        st.require_member(&caller.user)?;
        let max = self.config.max_presence_subscriptions_per_session;
        {
            let mut held = self.presence.by_session.entry(handle.id).or_default();
            if !held.contains(&cell.num) && held.len() >= max {
                return Err(Error::LimitExceeded(format!(
                    "this session subscribed to the presence of {} conversations; \
                     max_presence_subscriptions_per_session is {max} (UnsubscribePresence one \
                     first)",
                    held.len()
                )));
            }
            held.insert(cell.num);
        }
        let mut subs = self.presence.by_conv.entry(cell.num).or_default();
        if !subs.iter().any(|(_, h)| h.id == handle.id) {
            subs.push((caller.user.clone(), handle.clone()));
        }
        Ok(())
    }

    /// Removes a session's subscription (no-op when absent).
    pub fn unsubscribe_presence(&self, session: u64, id: &str) {
        if let Ok(Some(num)) = self.number_of(id) {
            self.drop_subscription(session, num);
        }
    }

    /// Removes one subscription by conversation number.
    fn drop_subscription(&self, session: u64, num: u64) {
        self.presence.by_conv.remove_if_mut(&num, |_, v| {
            v.retain(|(_, h)| h.id != session);
            v.is_empty()
        });
        self.presence.forget(session, num);
    }

    /// Removes every subscription of a session that ended.
    pub fn drop_subscriptions(&self, session: u64) {
        let Some((_, nums)) = self.presence.by_session.remove(&session) else {
            return;
        };
        for num in nums {
            self.presence.by_conv.remove_if_mut(&num, |_, v| {
                v.retain(|(_, h)| h.id != session);
                v.is_empty()
            });
        }
    }

    /// Tells the subscribers of `user`'s conversations that the user went online or offline.
    /// The pushed state is read now, so racing transitions end in the true state.
    /// A user who went offline then leaves the chat rooms they were in (after their
    /// subscribers there heard it).
    pub fn presence_changed(&self, user: &UserId) {
        self.presence_webhook(user);
        self.push_presence(user);
        if !self.hub.is_online(user) {
            self.leave_rooms(user);
        }
    }

    /// One `PresenceChange` to each subscribed session that shares a subscribed conversation
    /// with `user`, naming all of those conversations: a user in 2,000 groups with a
    /// subscriber costs that subscriber one push, not 2,000 (which cut it as a slow consumer).
    fn push_presence(&self, user: &UserId) {
        if self.presence.by_conv.is_empty() {
            return;
        }
        let convs: Vec<u64> = self.presence.by_conv.iter().map(|e| *e.key()).collect();
        // By session id: the session and the conversations it hears of the change through.
        let mut to: HashMap<u64, (SessionHandle, Vec<String>)> = HashMap::new();
        for num in convs {
            let Some(cell) = self.convs.get(&num).map(|c| c.clone()) else {
                continue;
            };
            // Subscribers are told only while both they and `user` are members.
            let st = cell.lock();
            if st.require_member(user).is_err() {
                continue;
            }
            let Some(subs) = self.presence.by_conv.get(&num) else {
                continue;
            };
            for (_, h) in subs.iter().filter(|(u, _)| st.members.contains_key(u)) {
                to.entry(h.id)
                    .or_insert_with(|| (h.clone(), Vec::new()))
                    .1
                    .push(cell.id.to_string());
            }
        }
        if to.is_empty() {
            return;
        }
        // Sessions that hear of it through the same conversations (a user's devices, usually)
        // share one push, encoded once.
        let mut by_ids: HashMap<Vec<String>, Vec<SessionHandle>> = HashMap::new();
        for (h, mut ids) in to.into_values() {
            ids.sort_unstable();
            by_ids.entry(ids).or_default().push(h);
        }
        let online = self.hub.is_online(user);
        let profile = self.profile_of(user).ok();
        for (ids, sessions) in by_ids {
            let change = pb::PresenceChange {
                conversation_id: ids[0].clone(),
                user_id: user.to_string(),
                online,
                profile: profile.clone(),
                conversation_ids: ids,
            };
            let frame = protocol::push(pb::server_frame::Body::PresenceChange(change));
            for h in &sessions {
                self.hub.send_to(h, frame.clone());
            }
        }
    }
}
