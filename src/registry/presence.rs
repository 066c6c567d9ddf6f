//! Presence: which members of a conversation are online, and pushes when that changes.
//!
//! A user is online while any of their sessions is live; the hub reports the transitions
//! (first session in, last session out). Subscriptions are per session and per conversation;
//! a transition is pushed to the subscribers of every conversation the user is a member of,
//! who are members themselves at that moment. Leaving, removal, deletion and expiry drop the
//! subscriptions they end. The cost of a transition is proportional to the number of
//! conversations with subscribers.

use super::{Caller, Error, Registry};
use crate::hub::SessionHandle;
use crate::protocol::{self, pb};
use crate::store::UserId;
use dashmap::DashMap;
use std::collections::BTreeSet;

/// Subscribers per conversation number: each session with its user.
#[derive(Default)]
pub(super) struct Subscriptions(DashMap<u64, Vec<(UserId, SessionHandle)>>);

impl Subscriptions {
    /// Drops the subscriptions of `users` to conversation `num` (all of them with `None`).
    /// Called under the conversation's lock, like every change of its membership.
    pub(super) fn drop_users(&self, num: u64, users: Option<&BTreeSet<UserId>>) {
        self.0.remove_if_mut(&num, |_, v| {
            if let Some(users) = users {
                v.retain(|(u, _)| !users.contains(u));
            } else {
                v.clear();
            }
            v.is_empty()
        });
    }

    /// Whether some session is subscribed to conversation `num`.
    pub(super) fn has_subscribers(&self, num: u64) -> bool {
        self.0.contains_key(&num)
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

    /// Subscribes a session to the presence changes of a conversation's members. Returns the
    /// conversation number (the session remembers it to unsubscribe when it ends).
    pub fn subscribe_presence(
        &self,
        caller: &Caller,
        handle: &SessionHandle,
        id: &str,
    ) -> Result<u64, Error> {
        let cell = self.cell(id)?;
        // Under the lock, so a removal cannot come between the check and the subscription.
        let st = cell.lock();
        st.require_member(&caller.user)?;
        let mut subs = self.presence.0.entry(cell.num).or_default();
        if !subs.iter().any(|(_, h)| h.id == handle.id) {
            subs.push((caller.user.clone(), handle.clone()));
        }
        Ok(cell.num)
    }

    /// Removes a session's subscription (no-op when absent). Returns the conversation number.
    pub fn unsubscribe_presence(&self, session: u64, id: &str) -> Option<u64> {
        let num = self.number_of(id).ok()??;
        self.drop_subscription(session, num);
        Some(num)
    }

    /// Removes one subscription by conversation number.
    pub fn drop_subscription(&self, session: u64, num: u64) {
        self.presence.0.remove_if_mut(&num, |_, v| {
            v.retain(|(_, h)| h.id != session);
            v.is_empty()
        });
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

    fn push_presence(&self, user: &UserId) {
        if self.presence.0.is_empty() {
            return;
        }
        let convs: Vec<u64> = self.presence.0.iter().map(|e| *e.key()).collect();
        for num in convs {
            let Some(cell) = self.convs.get(&num).map(|c| c.clone()) else {
                continue;
            };
            // Subscribers are told only while both they and `user` are members.
            let to: Vec<SessionHandle> = {
                let st = cell.lock();
                if st.require_member(user).is_err() {
                    continue;
                }
                let Some(subs) = self.presence.0.get(&num) else {
                    continue;
                };
                subs.iter()
                    .filter(|(u, _)| st.members.contains_key(u))
                    .map(|(_, h)| h.clone())
                    .collect()
            };
            if to.is_empty() {
                continue;
            }
            let change = pb::PresenceChange {
                conversation_id: cell.id.to_string(),
                user_id: user.to_string(),
                online: self.hub.is_online(user),
                profile: self.profile_of(user).ok(),
            };
            let frame = protocol::push(pb::server_frame::Body::PresenceChange(change));
            for h in &to {
                self.hub.send_to(h, frame.clone());
            }
        }
    }
}
