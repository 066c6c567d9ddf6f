//! Each conversation's own event log: what its members heard of one another (others joining,
//! leaving or being removed; the name and attributes changing; in groups, others' roles,
//! mutes and blocks), kept so that a member who was offline can catch up on it (LeanCloud's
//! missed notifications).
//!
//! One entry per event, however many members heard it: a join into a group of 1,000 costs one
//! store write here, not 1,000. A user's missed events are read by merging the logs of the
//! user's conversations (from when the user joined each) with the user's own event log, which
//! holds what changed the user's own membership ([`Registry::missed_events`]). Bounded per
//! conversation by `conversation_event_log_retention` (older entries are deleted as new ones
//! arrive) and answered back to `conversation_event_log_max_age_secs`; a purged conversation's
//! log goes with it.

use super::{ConvState, Error, Registry};
use crate::protocol::pb::{ConversationEvent, ConversationEventKind as Ev, ConversationKind};
use crate::store::{Op, UserId};

impl Registry {
    /// Whether `event` goes into its conversation's own log: membership changes and updates
    /// that the other members are told of, in conversations whose membership is stored (not
    /// chat rooms; in system conversations, subscribers never hear of each other, so only
    /// updates), and in groups the changes to other members' roles, mutes and blocks (not
    /// mute-all, which no front door replays: it shows in every member's list entry). A front
    /// door that pushes such an event live may tell the client it will find it again when it
    /// catches up. Never while `conversation_event_log_retention` is 0.
    pub fn in_conversation_log(&self, event: &ConversationEvent) -> bool {
        if self.config.conversation_event_log_retention == 0 {
            return false;
        }
        let kind = event
            .conversation
            .as_ref()
            .and_then(|c| ConversationKind::try_from(c.kind).ok())
            .unwrap_or(ConversationKind::Unspecified);
        match Ev::try_from(event.kind) {
            Ok(Ev::Updated) => kind != ConversationKind::ChatRoom,
            Ok(Ev::MembersAdded | Ev::MembersRemoved | Ev::Left) => {
                matches!(kind, ConversationKind::Group | ConversationKind::Temporary)
            }
            Ok(
                Ev::RoleChanged
                | Ev::OwnerChanged
                | Ev::MembersMuted
                | Ev::MembersUnmuted
                | Ev::MembersBlocked
                | Ev::MembersUnblocked,
            ) => kind == ConversationKind::Group,
            _ => false,
        }
    }

    /// Appends `event` to the log of conversation `num` (when it belongs there), deleting the
    /// entry that falls out of `conversation_event_log_retention`. Called under the
    /// conversation's lock, with the ops of the change the event reports.
    pub(super) fn log_to_conversation(
        &self,
        st: &mut ConvState,
        num: u64,
        event: &ConversationEvent,
        ops: &mut Vec<Op>,
    ) -> Result<(), Error> {
        let keep = u64::from(self.config.conversation_event_log_retention);
        if !self.in_conversation_log(event) {
            return Ok(());
        }
        let last = match st.log_seq {
            Some(seq) => seq,
            None => self.store.last_conversation_event_seq(num)?,
        };
        let seq = last + 1;
        st.log_seq = Some(seq);
        ops.push(Op::PutConversationEvent {
            conv: num,
            seq,
            event: event.clone(),
        });
        if seq > keep {
            ops.push(Op::DeleteConversationEvent {
                conv: num,
                seq: seq - keep,
            });
        }
        Ok(())
    }

    /// The conversation events `user` may have missed after `after` (ms), oldest first: those
    /// of the user's own event log (as far back as `event_log_retention` keeps them), and
    /// those of the logs of the user's conversations since the user joined each (as far back
    /// as `conversation_event_log_max_age_secs`), leaving out what the user's own log has
    /// (the user's own joining or leaving, role, mute or block; an event both logs hold, such
    /// as an ownership moving away from the user, is answered once). At most `max`, more when the last ones share a
    /// millisecond (so asking again after the last one's time misses nothing), and at most
    /// `max_bytes` of events as stored, cut between two milliseconds (the first millisecond's
    /// events always go); `true` when more are left. Reads one log per conversation of the
    /// user's (one entry for a log with nothing new): charged to the user afterwards by the
    /// logs read and by the bytes answered (see `limits::CONVERSATIONS_PER_TOKEN`,
    /// `limits::RETURNED_BYTES_PER_TOKEN`).
    pub fn missed_events(
        &self,
        user: &str,
        after: i64,
        max: usize,
        max_bytes: usize,
    ) -> Result<(Vec<ConversationEvent>, bool), Error> {
        let max = max.max(1);
        let mut events = self.events_since(user, after)?;
        let own: std::collections::HashSet<(String, i32, i64)> = events
            .iter()
            .map(|e| (e.conversation_id.clone(), e.kind, e.server_time))
            .collect();
        let mut cut = false;
        let retention = self.config.conversation_event_log_retention as usize;
        if retention > 0 {
            let age = i64::from(self.config.conversation_event_log_max_age_secs) * 1000;
            let floor = after.max(self.now() - age);
            let mut read = 0;
            for (num, rec) in self.store.user_conversations(user)? {
                if matches!(
                    ConversationKind::try_from(rec.kind),
                    Ok(ConversationKind::Direct | ConversationKind::ChatRoom)
                ) {
                    continue;
                }
                read += 1;
                let logged = self
                    .store
                    .conversation_events_after(num, floor, retention)?;
                events.extend(logged.into_iter().filter(|e| {
                    e.server_time >= rec.joined_at
                        && !e.members.iter().any(|m| m == user)
                        && !own.contains(&(e.conversation_id.clone(), e.kind, e.server_time))
                }));
                // Keep memory bounded by the page, not by the user's conversations.
                if events.len() > 4 * max {
                    cut |= Self::first_page(&mut events, max);
                }
            }
            self.charge_conversations(&UserId::from(user), read);
        }
        cut |= Self::first_page(&mut events, max);
        cut |= Self::first_bytes(&mut events, max_bytes);
        let bytes = events.iter().map(prost::Message::encoded_len).sum();
        self.charge_bytes(&UserId::from(user), bytes);
        Ok((events, cut))
    }

    /// Keeps the first of `events` (sorted by time) whose bytes as stored fit in `max_bytes`,
    /// cutting only between two milliseconds; the first millisecond goes whole, whatever its
    /// size. Returns whether any were dropped.
    fn first_bytes(events: &mut Vec<ConversationEvent>, max_bytes: usize) -> bool {
        let mut budget = super::limits::ByteBudget::new(max_bytes);
        let mut end = 0;
        while end < events.len() {
            let at = events[end].server_time;
            let next = events[end..]
                .iter()
                .position(|e| e.server_time != at)
                .map_or(events.len(), |n| end + n);
            let bytes = events[end..next]
                .iter()
                .map(prost::Message::encoded_len)
                .sum();
            if !budget.take(bytes) {
                break;
            }
            end = next;
        }
        let cut = end < events.len();
        events.truncate(end);
        cut
    }

    /// Sorts `events` by time (stably) and keeps the first `max` and any after them in the
    /// same millisecond as the last kept. Returns whether any were dropped.
    fn first_page(events: &mut Vec<ConversationEvent>, max: usize) -> bool {
        events.sort_by_key(|e| e.server_time);
        let mut end = events.len().min(max);
        while end > 0
            && end < events.len()
            && events[end].server_time == events[end - 1].server_time
        {
            end += 1;
        }
        let cut = end < events.len();
        events.truncate(end);
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t: i64) -> ConversationEvent {
        ConversationEvent {
            server_time: t,
            ..Default::default()
        }
    }

    #[test]
    fn a_page_never_splits_a_millisecond() {
        let times = |v: &[ConversationEvent]| v.iter().map(|e| e.server_time).collect::<Vec<_>>();
        let mut v = vec![at(3), at(1), at(2), at(2), at(4)];
        assert!(Registry::first_page(&mut v, 2));
        assert_eq!(times(&v), vec![1, 2, 2]);
        let mut v = vec![at(5), at(5), at(5)];
        assert!(!Registry::first_page(&mut v, 1));
        assert_eq!(times(&v), vec![5, 5, 5]);
        let mut v = vec![at(2), at(1)];
        assert!(!Registry::first_page(&mut v, 10));
        assert_eq!(times(&v), vec![1, 2]);
        let mut v = Vec::new();
        assert!(!Registry::first_page(&mut v, 10));
    }

    #[test]
    fn a_page_cut_by_bytes_keeps_whole_milliseconds_and_the_first() {
        let times = |v: &[ConversationEvent]| v.iter().map(|e| e.server_time).collect::<Vec<_>>();
        let each = prost::Message::encoded_len(&at(1));
        let mut v = vec![at(1), at(2), at(2), at(3)];
        assert!(Registry::first_bytes(&mut v, 2 * each));
        assert_eq!(times(&v), vec![1]);
        let mut v = vec![at(1), at(2), at(2), at(3)];
        assert!(Registry::first_bytes(&mut v, 3 * each));
        assert_eq!(times(&v), vec![1, 2, 2]);
        let mut v = vec![at(1), at(1), at(2)];
        assert!(Registry::first_bytes(&mut v, 0));
        assert_eq!(times(&v), vec![1, 1]);
        let mut v = vec![at(1), at(2)];
        assert!(!Registry::first_bytes(&mut v, 10 * each));
        assert_eq!(times(&v), vec![1, 2]);
    }
}
