//! System conversations and chat rooms.
//!
//! A **system conversation** (a service account's channel) is created by the app's backend.
//! Users subscribe and unsubscribe themselves; a subscriber is a member as in a group (a list
//! entry, a read position, unread counts, logged events for their own devices), but
//! subscribers never hear of each other and may not list each other. Only the backend sends;
//! its broadcasts are stored and pushed to every subscriber.
//!
//! A **chat room** is a conversation whose record is stored (its id lives across restarts) but
//! whose membership is kept in memory only: members join and leave freely, leave when their
//! last session ends (or the server restarts), have no list entry and get no logged events.
//! The other members hear of each join and leave live (MEMBERS_ADDED, LEFT), while the room
//! has at most `chat_room_member_events_max` members (a join into a room of n members is n
//! pushes; above the bound nobody is told). Messages go to the members online and are not
//! stored; the room passes on at most `chat_room_messages_per_sec` of them.

use super::conversation::CreateRequest;
use super::limits::{Bucket, Pushed};
use super::writer::wait;
use super::{Caller, ConvCell, ConvState, Error, LoggedEvent, Registry};
use crate::hub::Recipients;
use crate::protocol::pb::{
    Conversation, ConversationEventKind as Ev, ConversationKind, ConversationRecord, MemberRecord,
    SendAck, UserConversationRecord,
};
use crate::store::{Op, UserId};
use dashmap::DashMap;
use std::collections::BTreeSet;
use std::sync::Arc;

/// The chat rooms each user is in, and each room's message bucket (memory only, like the
/// rooms' membership).
#[derive(Default)]
pub(super) struct Rooms {
    of_user: DashMap<UserId, BTreeSet<u64>>,
    buckets: DashMap<u64, Bucket>,
}

impl ConvState {
    /// Refuses in a chat room what only stored conversations have: list entries, read and
    /// delivery positions, per-user state.
    pub(super) fn require_stored(&self, what: &'static str) -> Result<(), Error> {
        if self.kind() == ConversationKind::ChatRoom {
            Err(Error::NotAllowedForKind {
                kind: "chat room",
                what,
            })
        } else {
            Ok(())
        }
    }

    /// Whether `caller` may send here now: the app's backend into any live conversation; in a
    /// system conversation nobody else (a subscriber's message goes to the backend only:
    /// [`Registry::send_to_backend`]); elsewhere a member allowed to speak
    /// ([`ConvState::require_sender`]).
    pub(super) fn authorize_send(&self, caller: &Caller, now: i64) -> Result<(), Error> {
        if caller.admin {
            // The app's backend sends into any live conversation (muted or not a member).
            return self.require_live();
        }
        if self.kind() != ConversationKind::System {
            return self.require_sender(&caller.user, now);
        }
        self.require_member(&caller.user)?;
        Err(Error::PermissionDenied(
            "only the app's backend sends in a system conversation",
        ))
    }
}

impl Registry {
    /// Broadcasts into a system conversation as the app's backend: a send that refuses any
    /// other kind of conversation (the backend may speak in those too, but not through this).
    pub async fn send_to_system(
        &self,
        caller: &Caller,
        id: &str,
        req: super::SendRequest,
    ) -> Result<SendAck, Error> {
        if self.cell(id)?.lock().kind() != ConversationKind::System {
            return Err(Error::PermissionDenied("not a system conversation"));
        }
        self.send(caller, id, req).await
    }

    /// A subscriber writing to a system conversation: the message goes to the app's backend
    /// only, as a `system.message_received` webhook event written in one commit (the outbox
    /// keeps it until every endpoint has it), and is acked with seq 0 and an id of its own.
    /// It is not stored in the conversation and reaches no other subscriber (nor the sender's
    /// other devices). Transient messages are acked and go nowhere. Refused, as a send by
    /// anyone but the backend, while `system_conversation_messages` is off or no webhook
    /// endpoint takes `system.message_received` (nobody would read it).
    pub(super) async fn send_to_backend(
        &self,
        caller: &Caller,
        cell: &Arc<ConvCell>,
        req: super::SendRequest,
    ) -> Result<SendAck, Error> {
        let now = self.now();
        if !self.config.system_conversation_messages || !self.webhook.system_message {
            return cell
                .lock()
                .authorize_send(caller, now)
                .map(|()| SendAck::default());
        }
        {
            let st = cell.lock();
            st.require_live()?;
            st.require_member(&caller.user)?;
        }
        if req.transient {
            let m = self.build(cell, caller, 0, now, req);
            return Ok(SendAck {
                message_id: m.id,
                seq: 0,
                server_time: now,
                duplicate: false,
            });
        }
        let req = self.moderate_send(caller, cell.num, &cell.id, req).await?;
        let permit = self.writer.reserve().await?;
        let now = self.now();
        let m = self.build(cell, caller, 0, now, req);
        let ack = SendAck {
            message_id: m.id.clone(),
            seq: 0,
            server_time: now,
            duplicate: false,
        };
        let record =
            crate::webhooks::record(crate::protocol::pb::outbox_event::Event::SystemMessage(
                crate::protocol::pb::SystemMessageEvent { message: Some(m) },
            ));
        let rx = self.writer.submit_with_records(
            permit,
            Vec::new(),
            Vec::new(),
            Vec::new(),
            None,
            vec![record],
        );
        wait(rx).await?;
        Ok(ack)
    }

    /// Creates a system conversation (the app's backend only) or a chat room (anyone; the
    /// creator is its owner and its first member).
    pub(super) async fn create_public(
        &self,
        caller: &Caller,
        req: CreateRequest,
    ) -> Result<Conversation, Error> {
        let system = req.kind == ConversationKind::System;
        if system && !caller.admin {
            return Err(Error::PermissionDenied(
                "only the app's backend creates system conversations",
            ));
        }
        if !system && caller.admin {
            return Err(Error::InvalidArgument(
                "a chat room is created by its first member".into(),
            ));
        }
        if !self.named_users(&req.members, &caller.user)?.is_empty() {
            return Err(Error::InvalidArgument(
                "system conversations and chat rooms are joined, not created with members".into(),
            ));
        }
        if !system {
            // Checked again, exactly, as the creator joins; refused here first so that no
            // room is made for a creator who may not be in it.
            let rooms = self.rooms.of_user.get(&caller.user).map_or(0, |r| r.len());
            self.check_rooms(rooms)?;
        }
        let permit = self.writer.reserve().await?;
        let (cell, rx) = {
            let mut next = self.next_conv.lock().unwrap_or_else(|p| p.into_inner());
            let record = ConversationRecord {
                kind: req.kind as i32,
                name: req.name,
                attributes: req.attributes,
                owner: if system {
                    String::new()
                } else {
                    caller.user.to_string()
                },
                created_at: self.now(),
                ..Default::default()
            };
            let (cell, ops, events) = self.new_normal(&mut next, caller, record, &[]);
            (cell, self.writer.submit(permit, ops, Vec::new(), events))
        };
        wait(rx).await?;
        if system {
            return Ok(cell.lock().view(&cell.id));
        }
        self.join_room(caller, &cell)
    }

    /// Subscribes to a system conversation, joins a chat room, or joins an open group
    /// ([`Registry::join`]). Joining again is no change.
    pub async fn join_conversation(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<Conversation, Error> {
        if caller.admin {
            return Err(Error::InvalidArgument(
                "the app's backend does not join conversations".into(),
            ));
        }
        let cell = self.cell(id)?;
        let kind = cell.lock().kind();
        match kind {
            ConversationKind::System => self.subscribe(caller, &cell).await,
            ConversationKind::ChatRoom => self.join_room(caller, &cell),
            ConversationKind::Group => self.join(caller, id).await,
            ConversationKind::Direct => Err(Error::NotAllowedForKind {
                kind: "direct",
                what: "joining",
            }),
            _ => Err(Error::NotAllowedForKind {
                kind: "temporary",
                what: "joining",
            }),
        }
    }

    async fn subscribe(
        &self,
        caller: &Caller,
        cell: &Arc<ConvCell>,
    ) -> Result<Conversation, Error> {
        if !cell.lock().members.contains_key(&caller.user) {
            self.check_memberships([&caller.user])?;
        }
        let permit = self.writer.reserve().await?;
        let rx = {
            let mut st = cell.lock();
            st.require_live()?;
            let user = caller.user.clone();
            if st.members.contains_key(&user) {
                None
            } else {
                let max = self.config.max_system_subscribers;
                if st.members.len() >= max {
                    return Err(Error::LimitExceeded(format!(
                        "{max} subscribers; max_system_subscribers is {max}"
                    )));
                }
                let now = self.now();
                let m = MemberRecord {
                    joined_at: now,
                    join_order: st.next_join_order,
                    ..Default::default()
                };
                st.next_join_order += 1;
                st.members.insert(user.clone(), m);
                let read = st.last_seq;
                st.reads.insert(user.clone(), read);
                st.rebuild_roster();
                let entry = UserConversationRecord {
                    joined_at: now,
                    kind: st.record.kind,
                    ..Default::default()
                };
                let ops = vec![
                    Op::PutMember {
                        conv: cell.num,
                        user: user.clone(),
                        record: m,
                    },
                    Self::put_entry(&mut st, cell.num, &user, entry),
                    Op::DeleteTombstone {
                        user: user.clone(),
                        conv: cell.num,
                    },
                    Op::PutReadSeq {
                        user: user.clone(),
                        conv: cell.num,
                        seq: read,
                    },
                ];
                // Only the subscriber's own devices hear of it.
                let event = self.event(
                    Ev::MembersAdded,
                    cell,
                    &user,
                    vec![user.to_string()],
                    st.view(&cell.id),
                );
                let logged = vec![LoggedEvent {
                    user,
                    event: Arc::new(event),
                    except_session: caller.session,
                }];
                Some(self.writer.submit(permit, ops, Vec::new(), logged))
            }
        };
        self.finish(cell, caller, rx).await
    }

    /// Ends a subscription: the entry leaves the subscriber's list (a tombstone for
    /// incremental sync), and their other devices get LEFT.
    pub(super) async fn unsubscribe(
        &self,
        caller: &Caller,
        cell: &Arc<ConvCell>,
    ) -> Result<(), Error> {
        let permit = self.writer.reserve().await?;
        let rx = {
            let mut st = cell.lock();
            st.require_member(&caller.user)?;
            let me: BTreeSet<UserId> = [caller.user.clone()].into();
            let ops = self.drop_members(&mut st, cell, &me);
            let event = self.event(
                Ev::Left,
                cell,
                &caller.user,
                vec![caller.user.to_string()],
                st.view(&cell.id),
            );
            let logged = vec![LoggedEvent {
                user: caller.user.clone(),
                event: Arc::new(event),
                except_session: caller.session,
            }];
            self.writer.submit(permit, ops, Vec::new(), logged)
        };
        Ok(wait(rx).await?)
    }

    fn join_room(&self, caller: &Caller, cell: &Arc<ConvCell>) -> Result<Conversation, Error> {
        let (view, told) = {
            let mut st = cell.lock();
            st.require_live()?;
            let user = caller.user.clone();
            if st.record.blacklist.contains_key(&*user) {
                return Err(Error::Blacklisted(user.to_string()));
            }
            let mut told = None;
            if !st.members.contains_key(&user) {
                let max = self.config.max_chat_room_members;
                if st.members.len() >= max {
                    return Err(Error::LimitExceeded(format!(
                        "{max} members; max_chat_room_members is {max}"
                    )));
                }
                // Counted and recorded under the user's entry, so joins racing one another
                // cannot pass the cap (refused only when the user is in some already, so no
                // empty entry is left behind).
                {
                    let mut rooms = self.rooms.of_user.entry(user.clone()).or_default();
                    self.check_rooms(rooms.len())?;
                    rooms.insert(cell.num);
                }
                let m = MemberRecord {
                    joined_at: self.now(),
                    join_order: st.next_join_order,
                    ..Default::default()
                };
                st.next_join_order += 1;
                st.members.insert(user.clone(), m);
                st.rebuild_roster();
                told = self.room_event(
                    &st,
                    cell,
                    Ev::MembersAdded,
                    &user,
                    std::slice::from_ref(&user),
                );
            }
            (st.view(&cell.id), told)
        };
        if let Some((d, pushed)) = told {
            self.hub().deliver(&d);
            self.charge_pushed(caller, pushed);
        }
        Ok(view)
    }

    /// Refuses a join for a user in `rooms` chat rooms already, at `max_chat_rooms_per_user`.
    fn check_rooms(&self, rooms: usize) -> Result<(), Error> {
        let max = self.config.max_chat_rooms_per_user;
        if rooms >= max {
            return Err(Error::LimitExceeded(format!(
                "in {rooms} chat rooms; max_chat_rooms_per_user is {max}"
            )));
        }
        Ok(())
    }

    /// What the other members of a chat room are told of `members` joining or leaving (live,
    /// `LEFT` for a leave): nothing above `chat_room_member_events_max` members, where each
    /// join would cost a push per member. With what it pushes ([`Registry::charge_pushed`]).
    fn room_event(
        &self,
        st: &ConvState,
        cell: &ConvCell,
        kind: Ev,
        by: &str,
        members: &[UserId],
    ) -> Option<(crate::hub::Delivery, Pushed)> {
        let others: Vec<UserId> = st
            .roster
            .iter()
            .filter(|u| !members.contains(u))
            .cloned()
            .collect();
        if others.is_empty() || st.members.len() > self.config.chat_room_member_events_max {
            return None;
        }
        let names = members.iter().map(|u| u.to_string()).collect();
        let event = self.event(kind, cell, by, names, st.view(&cell.id));
        let pushed = Pushed::event(&event, others.len());
        Some((
            Self::live(&event, Recipients::Users(others.into()), 0),
            pushed,
        ))
    }

    /// Leaves a chat room (nothing is stored; the other members are told, see
    /// [`Registry::room_event`]).
    pub(super) fn leave_room(&self, caller: &Caller, cell: &Arc<ConvCell>) -> Result<(), Error> {
        let told = {
            let mut st = cell.lock();
            st.require_member(&caller.user)?;
            let me: BTreeSet<UserId> = [caller.user.clone()].into();
            self.forget_room_members(&mut st, cell, &me, &caller.user)
        };
        if let Some((d, pushed)) = told {
            self.hub().deliver(&d);
            self.charge_pushed(caller, pushed);
        }
        Ok(())
    }

    /// Takes `users` out of a room; what the members left are told of it.
    fn forget_room_members(
        &self,
        st: &mut ConvState,
        cell: &ConvCell,
        users: &BTreeSet<UserId>,
        by: &str,
    ) -> Option<(crate::hub::Delivery, Pushed)> {
        let num = cell.num;
        // Counted before they go, so a leave is told exactly when the join was.
        let size = st.members.len();
        for u in users {
            st.members.remove(u);
            self.rooms.of_user.remove_if_mut(u, |_, rooms| {
                rooms.remove(&num);
                rooms.is_empty()
            });
        }
        st.rebuild_roster();
        self.presence.drop_users(num, Some(users));
        if st.members.is_empty() {
            self.rooms.buckets.remove(&num);
        }
        if size > self.config.chat_room_member_events_max {
            return None;
        }
        let gone: Vec<UserId> = users.iter().cloned().collect();
        self.room_event(st, cell, Ev::Left, by, &gone)
    }

    /// Takes a user who went offline out of every chat room they were in.
    pub(super) fn leave_rooms(&self, user: &UserId) {
        let Some((_, rooms)) = self.rooms.of_user.remove(user) else {
            return;
        };
        let me: BTreeSet<UserId> = [user.clone()].into();
        for num in rooms {
            if let Some(cell) = self.convs.get(&num).map(|c| c.clone()) {
                let told = {
                    let mut st = cell.lock();
                    if st.members.contains_key(user) {
                        self.forget_room_members(&mut st, &cell, &me, user)
                    } else {
                        None
                    }
                };
                if let Some((d, pushed)) = told {
                    self.hub().deliver(&d);
                    self.charge_pushed(&Caller::user(user.clone(), 0), pushed);
                }
            }
        }
    }

    /// How many members of a chat room are online (anyone may ask).
    pub(super) fn room_online_count(&self, cell: &ConvCell) -> Result<u32, Error> {
        let roster = {
            let st = cell.lock();
            st.require_live()?;
            st.roster.clone()
        };
        Ok(roster.iter().filter(|u| self.hub.is_online(u)).count() as u32)
    }

    /// Sends to the members of a chat room who are online; nothing is stored (seq 0).
    pub(super) async fn send_to_room(
        &self,
        caller: &Caller,
        cell: &Arc<ConvCell>,
        mut req: super::SendRequest,
    ) -> Result<SendAck, Error> {
        cell.lock().authorize_send(caller, self.now())?;
        if !req.transient {
            // A message the room's rate would refuse is not asked about.
            if self.hook.is_some() && !caller.admin {
                self.take_room_message(cell, self.now(), false)?;
            }
            req = self.moderate_send(caller, cell.num, &cell.id, req).await?;
        }
        let now = self.now();
        let members = {
            let st = cell.lock();
            st.authorize_send(caller, now)?;
            self.take_room_message(cell, now, true)?;
            st.members_to()
        };
        // Receipts need stored seqs; room messages have none.
        req.want_receipts = false;
        Ok(self.deliver_unstored(caller, cell, members, ConversationKind::ChatRoom, now, req))
    }

    /// Takes one message from the room's `chat_room_messages_per_sec` (or, `take` false,
    /// only checks that one is there), or says when one will be.
    fn take_room_message(&self, cell: &ConvCell, now: i64, take: bool) -> Result<(), Error> {
        let per_sec = self.config.chat_room_messages_per_sec;
        let mut bucket = self
            .rooms
            .buckets
            .entry(cell.num)
            .or_insert_with(|| Bucket::full(per_sec, now));
        let result = if take {
            bucket.take(1, per_sec, per_sec, now)
        } else {
            bucket.clone().take(1, per_sec, per_sec, now)
        };
        result.map_err(|retry_after_ms| Error::RateLimited { retry_after_ms })
    }

    /// The kind of a conversation (for front doors that present kinds differently).
    pub fn kind_of(&self, id: &str) -> Result<ConversationKind, Error> {
        Ok(self.cell(id)?.lock().kind())
    }
}
