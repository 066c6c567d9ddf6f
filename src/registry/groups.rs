//! Group control: roles (owner, managers, members), ownership transfer, muting members and
//! mute-all, and the per-group blacklist. The role table ([`Action::least`]) is the one copy
//! of who may do what; every front door calls these methods and translates their errors.

use super::limits::Pushed;
use super::writer::wait;
use super::{Caller, ConvCell, ConvState, Error, LoggedEvent, Registry};
use crate::hub::Recipients;
use crate::protocol::pb::{
    Conversation, ConversationEvent, ConversationEventKind as Ev, ConversationKind, MemberInfo,
    MemberRole,
};
use crate::store::{Op, UserId};
use std::collections::BTreeSet;
use std::sync::Arc;

/// A conversation seen by [`Registry::glance`].
enum Glance {
    Loaded(Arc<ConvCell>),
    Stored(u64, crate::protocol::pb::ConversationRecord),
    Gone,
}

/// A mute with no deadline ("until lifted").
pub const MUTED_FOREVER: i64 = i64::MAX;

/// How far a caller ranks in a group. The owner outranks managers, managers outrank members;
/// the app's backend (an admin [`Caller`]) outranks everyone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rank {
    Member,
    Manager,
    Owner,
    Admin,
}

/// What a caller may try to do to a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    AddMembers,
    RemoveMembers,
    Update,
    Mute,
    MuteAll,
    Block,
    SetRole,
    TransferOwnership,
    RecallOthers,
    DeleteForEveryone,
}

impl Action {
    /// The role table: the lowest rank that may do this in a group.
    pub const fn least(self) -> Rank {
        match self {
            Action::AddMembers | Action::Update => Rank::Member,
            Action::RemoveMembers
            | Action::Mute
            | Action::MuteAll
            | Action::Block
            | Action::RecallOthers => Rank::Manager,
            Action::SetRole | Action::TransferOwnership | Action::DeleteForEveryone => Rank::Owner,
        }
    }

    /// Whether the members it acts on must rank below the caller (a manager may remove,
    /// mute or block members, not other managers or the owner).
    pub const fn over_lower_only(self) -> bool {
        matches!(
            self,
            Action::RemoveMembers
                | Action::Mute
                | Action::Block
                | Action::SetRole
                | Action::RecallOthers
        )
    }

    fn refusal(self) -> &'static str {
        match self {
            Action::AddMembers => "adding members needs membership",
            Action::Update => "updating needs membership",
            Action::RemoveMembers => "only the owner and managers may remove members",
            Action::Mute => "only the owner and managers may mute members",
            Action::MuteAll => "only the owner and managers may switch mute-all",
            Action::Block => "only the owner and managers may change the blacklist",
            Action::RecallOthers => "only the owner and managers may recall others' messages",
            Action::SetRole => "only the owner may change roles",
            Action::TransferOwnership => "only the owner may transfer ownership",
            Action::DeleteForEveryone => "only the owner may delete a group for everyone",
        }
    }

    fn outranked(self) -> &'static str {
        match self {
            Action::RemoveMembers => "a member may only be removed by someone who outranks them",
            Action::Mute => "a member may only be muted by someone who outranks them",
            Action::Block => "a member may only be blocked by someone who outranks them",
            Action::RecallOthers => "only a message of someone you outrank may be recalled",
            _ => "the member outranks or equals you",
        }
    }
}

/// The outcome of a request that names several users: what was done, and for whom it failed
/// and why (front doors that answer per user, like LeanCloud's `allowedPids`/`failedPids`).
#[derive(Debug, Clone)]
pub struct MemberOutcome {
    pub conversation: Conversation,
    pub done: Vec<String>,
    pub failed: Vec<(String, Error)>,
}

/// Wire role of a rank.
pub fn role_of(rank: Rank) -> MemberRole {
    match rank {
        Rank::Member => MemberRole::Member,
        Rank::Manager => MemberRole::Manager,
        Rank::Owner | Rank::Admin => MemberRole::Owner,
    }
}

impl ConvState {
    /// A member's rank (a non-member ranks as a member).
    pub(super) fn rank_of(&self, user: &str) -> Rank {
        if self.record.owner == user {
            Rank::Owner
        } else if self
            .members
            .get(user)
            .is_some_and(|m| m.role == MemberRole::Manager as i32)
        {
            Rank::Manager
        } else {
            Rank::Member
        }
    }

    /// The caller's rank, when it may do `action` here. Groups only, except for the admin's
    /// and members' actions that every kind allows (the caller of those checks the kind).
    pub(super) fn authorize(&self, caller: &Caller, action: Action) -> Result<Rank, Error> {
        if caller.admin {
            self.require_live()?;
            return Ok(Rank::Admin);
        }
        self.require_member(&caller.user)?;
        if self.kind() == ConversationKind::System {
            return Err(Error::PermissionDenied(
                "only the app's backend manages a system conversation",
            ));
        }
        let rank = self.rank_of(&caller.user);
        if matches!(
            self.kind(),
            ConversationKind::Group | ConversationKind::ChatRoom
        ) && rank < action.least()
        {
            return Err(Error::PermissionDenied(action.refusal()));
        }
        Ok(rank)
    }

    /// Whether a caller of `rank` may do `action` to `target` (members must rank below).
    pub(super) fn authorize_over(
        &self,
        rank: Rank,
        action: Action,
        target: &str,
    ) -> Result<(), Error> {
        if action.over_lower_only() && self.rank_of(target) >= rank {
            return Err(Error::PermissionDenied(action.outranked()));
        }
        Ok(())
    }

    /// Membership plus the right to speak now: not muted, and not a plain member while
    /// mute-all is on.
    pub(super) fn require_sender(&self, user: &str, now: i64) -> Result<(), Error> {
        self.require_member(user)?;
        if !self.silenced(user, now) {
            return Ok(());
        }
        if self.members.get(user).is_some_and(|m| m.muted_until > now) {
            Err(Error::Muted("you are muted in this conversation"))
        } else {
            Err(Error::Muted(
                "mute-all is on: only the owner and managers may send",
            ))
        }
    }

    /// Whether `user` may not send now: muted in a group, or a plain member of a group while
    /// mute-all is on (membership aside; [`ConvState::require_sender`] and `check_shutup`).
    pub(super) fn silenced(&self, user: &str, now: i64) -> bool {
        self.kind() == ConversationKind::Group
            && (self.members.get(user).is_some_and(|m| m.muted_until > now)
                || (self.record.mute_all && self.rank_of(user) < Rank::Manager))
    }

    fn managers(&self) -> usize {
        self.members
            .iter()
            .filter(|(u, m)| m.role == MemberRole::Manager as i32 && ***u != *self.record.owner)
            .count()
    }

    pub(super) fn member_info(&self, user: &str, now: i64) -> MemberInfo {
        let muted_until = self
            .members
            .get(user)
            .map(|m| m.muted_until)
            .filter(|t| *t > now)
            .unwrap_or(0);
        MemberInfo {
            user_id: user.to_owned(),
            role: role_of(self.rank_of(user)) as i32,
            muted_until,
            profile: None,
        }
    }
}

impl Registry {
    fn require_group_kind(st: &ConvState, what: &'static str) -> Result<(), Error> {
        match st.kind() {
            ConversationKind::Group => Ok(()),
            ConversationKind::Direct => Err(Error::NotAllowedForKind {
                kind: "direct",
                what,
            }),
            _ => Err(Error::NotAllowedForKind {
                kind: "temporary",
                what,
            }),
        }
    }

    /// Writes a member's record and mirrors its role and mute into their list entry (moving
    /// the entry's `changed_at`, so incremental sync sees it).
    pub(super) fn put_member(
        &self,
        st: &mut ConvState,
        num: u64,
        user: &UserId,
        ops: &mut Vec<Op>,
    ) -> Result<(), Error> {
        let Some(m) = st.members.get(user).copied() else {
            return Ok(());
        };
        ops.push(Op::PutMember {
            conv: num,
            user: user.clone(),
            record: m,
        });
        let mut rec = self.entry(st, num, user)?;
        rec.role = m.role;
        rec.muted_until = m.muted_until;
        rec.changed_at = self.now();
        ops.push(Self::put_entry(st, num, user, rec));
        Ok(())
    }

    /// An event logged for `targets` and pushed live to the other members; what the others
    /// are told also goes into the conversation's own log when it belongs there (their
    /// missed notifications), with `ops`. With what it pushes, for the caller to charge once
    /// the change is done ([`Registry::charge_pushed`]).
    pub(super) fn tell(
        &self,
        st: &mut ConvState,
        num: u64,
        caller: &Caller,
        event: ConversationEvent,
        targets: &[UserId],
        ops: &mut Vec<Op>,
    ) -> Result<(Vec<crate::hub::Delivery>, Vec<LoggedEvent>, Pushed), Error> {
        self.log_to_conversation(st, num, &event, ops)?;
        let others: Vec<UserId> = st
            .roster
            .iter()
            .filter(|u| !targets.contains(u))
            .cloned()
            .collect();
        let pushed = Pushed::event(&event, others.len()).and(Pushed::named(&event, targets.len()));
        let live = vec![Self::live(
            &event,
            Recipients::Users(others.into()),
            caller.session,
        )];
        self.charge_members(caller, targets.len());
        let event = Arc::new(event);
        let logged = targets
            .iter()
            .map(|u| LoggedEvent {
                user: u.clone(),
                event: event.clone(),
                except_session: 0,
            })
            .collect();
        Ok((live, logged, pushed))
    }

    pub(super) async fn finish(
        &self,
        cell: &ConvCell,
        caller: &Caller,
        rx: Option<tokio::sync::oneshot::Receiver<Result<(), super::writer::WriteError>>>,
    ) -> Result<Conversation, Error> {
        if let Some(rx) = rx {
            wait(rx).await?;
        }
        let view = cell.lock().view(&cell.id);
        if caller.admin {
            Ok(view)
        } else {
            self.view_for(cell, view, &caller.user)
        }
    }

    /// Makes members managers or plain members (the owner only; at most `max_managers`).
    pub async fn set_member_role(
        &self,
        caller: &Caller,
        id: &str,
        users: &[String],
        role: MemberRole,
    ) -> Result<MemberOutcome, Error> {
        self.set_member_role_each(caller, id, users, role, false)
            .await
    }

    /// [`Registry::set_member_role`], answering per user: those it may not change are
    /// reported in `failed`, the rest are changed.
    pub async fn set_member_role_each(
        &self,
        caller: &Caller,
        id: &str,
        users: &[String],
        role: MemberRole,
        partial: bool,
    ) -> Result<MemberOutcome, Error> {
        if role == MemberRole::Owner {
            return Err(Error::InvalidArgument(
                "the owner role moves only by TransferOwnership".into(),
            ));
        }
        let cell = self.cell(id)?;
        let named = self.named_users(users, "")?;
        let mut pushed = Pushed::default();
        let permit = self.writer.reserve().await?;
        let (rx, done, failed) = {
            let mut st = cell.lock();
            let rank = st.authorize(caller, Action::SetRole)?;
            Self::require_group_kind(&st, "roles")?;
            let mut failed = Vec::new();
            let mut change = Vec::new();
            for u in &named {
                let verdict = if !st.members.contains_key(u) {
                    Err(Error::InvalidArgument(format!("{u:?} is not a member")))
                } else if *st.record.owner == **u {
                    Err(Error::InvalidArgument(
                        "the owner's role moves only by TransferOwnership".into(),
                    ))
                } else {
                    st.authorize_over(rank, Action::SetRole, u)
                };
                match verdict {
                    Ok(()) => change.push(u.clone()),
                    Err(e) if partial => failed.push((u.to_string(), e)),
                    Err(e) => return Err(e),
                }
            }
            change.retain(|u| st.members.get(u).is_some_and(|m| m.role != role as i32));
            if role == MemberRole::Manager
                && st.managers() + change.len() > self.config.max_managers
            {
                return Err(Error::LimitExceeded(format!(
                    "{} managers; max_managers is {}",
                    st.managers() + change.len(),
                    self.config.max_managers
                )));
            }
            let done: Vec<String> = change.iter().map(|u| u.to_string()).collect();
            if change.is_empty() {
                (None, done, failed)
            } else {
                let mut ops = Vec::new();
                for u in &change {
                    if let Some(m) = st.members.get_mut(u) {
                        m.role = role as i32;
                    }
                    self.put_member(&mut st, cell.num, u, &mut ops)?;
                }
                let mut event = self.event(
                    Ev::RoleChanged,
                    &cell,
                    &caller.user,
                    done.clone(),
                    st.view(&cell.id),
                );
                event.role = role as i32;
                let (live, logged, told) =
                    self.tell(&mut st, cell.num, caller, event, &change, &mut ops)?;
                pushed = told;
                (
                    Some(self.writer.submit(permit, ops, live, logged)),
                    done,
                    failed,
                )
            }
        };
        let conversation = self.finish(&cell, caller, rx).await?;
        self.charge_pushed(caller, pushed);
        Ok(MemberOutcome {
            conversation,
            done,
            failed,
        })
    }

    /// Hands a group to another member; the former owner becomes a plain member.
    pub async fn transfer_ownership(
        &self,
        caller: &Caller,
        id: &str,
        new_owner: &str,
    ) -> Result<Conversation, Error> {
        self.check_user_id(new_owner)?;
        let cell = self.cell(id)?;
        let heir = UserId::from(new_owner);
        let mut pushed = Pushed::default();
        let permit = self.writer.reserve().await?;
        let rx = {
            let mut st = cell.lock();
            st.authorize(caller, Action::TransferOwnership)?;
            Self::require_group_kind(&st, "ownership")?;
            if !st.members.contains_key(&heir) {
                return Err(Error::InvalidArgument(format!(
                    "{new_owner:?} is not a member"
                )));
            }
            if *st.record.owner == *heir {
                None
            } else {
                let former = UserId::from(st.record.owner.as_str());
                let mut ops = Vec::new();
                self.make_owner(&mut st, &cell, &heir, &mut ops)?;
                self.put_member(&mut st, cell.num, &former, &mut ops)?;
                let event = self.event(
                    Ev::OwnerChanged,
                    &cell,
                    &caller.user,
                    vec![heir.to_string()],
                    st.view(&cell.id),
                );
                let mut targets = vec![heir.clone()];
                if st.members.contains_key(&former) {
                    targets.push(former);
                }
                let (live, logged, told) =
                    self.tell(&mut st, cell.num, caller, event, &targets, &mut ops)?;
                pushed = told;
                Some(self.writer.submit(permit, ops, live, logged))
            }
        };
        let conversation = self.finish(&cell, caller, rx).await?;
        self.charge_pushed(caller, pushed);
        Ok(conversation)
    }

    /// Makes `heir` the owner (a plain member record: the owner's rank comes from the
    /// conversation record) and returns the ops.
    pub(super) fn make_owner(
        &self,
        st: &mut ConvState,
        cell: &ConvCell,
        heir: &UserId,
        ops: &mut Vec<Op>,
    ) -> Result<(), Error> {
        st.record.owner = heir.to_string();
        st.record.changed_at = self.now();
        if let Some(m) = st.members.get_mut(heir) {
            m.role = MemberRole::Member as i32;
        }
        self.put_member(st, cell.num, heir, ops)?;
        ops.push(Op::PutConversation {
            conv: cell.num,
            record: st.record.clone(),
        });
        Ok(())
    }

    /// Mutes members for `duration_secs` (0: until lifted). Owner and managers, over members
    /// ranking below them.
    pub async fn mute_members(
        &self,
        caller: &Caller,
        id: &str,
        users: &[String],
        duration_secs: u64,
        partial: bool,
    ) -> Result<MemberOutcome, Error> {
        if duration_secs > self.config.max_mute_secs {
            return Err(Error::LimitExceeded(format!(
                "duration_secs {duration_secs}; max_mute_secs is {}",
                self.config.max_mute_secs
            )));
        }
        let until = match duration_secs {
            0 => MUTED_FOREVER,
            s => self.now().saturating_add((s as i64).saturating_mul(1000)),
        };
        let outcome = self
            .set_members_muted(caller, id, users, until, partial)
            .await?;
        // Its deadline may be the next one the sweep must wake for.
        self.mutes_changed.notify_waiters();
        Ok(outcome)
    }

    /// Lifts the mute of members.
    pub async fn unmute_members(
        &self,
        caller: &Caller,
        id: &str,
        users: &[String],
        partial: bool,
    ) -> Result<MemberOutcome, Error> {
        self.set_members_muted(caller, id, users, 0, partial).await
    }

    async fn set_members_muted(
        &self,
        caller: &Caller,
        id: &str,
        users: &[String],
        until: i64,
        partial: bool,
    ) -> Result<MemberOutcome, Error> {
        let cell = self.cell(id)?;
        let named = self.named_users(users, "")?;
        let mut pushed = Pushed::default();
        let permit = self.writer.reserve().await?;
        let (rx, done, failed) = {
            let mut st = cell.lock();
            let rank = st.authorize(caller, Action::Mute)?;
            Self::require_group_kind(&st, "muting members")?;
            let mut failed = Vec::new();
            let mut change = Vec::new();
            for u in &named {
                let verdict = if !st.members.contains_key(u) {
                    Err(Error::InvalidArgument(format!("{u:?} is not a member")))
                } else {
                    st.authorize_over(rank, Action::Mute, u)
                };
                match verdict {
                    Ok(()) => change.push(u.clone()),
                    Err(e) if partial => failed.push((u.to_string(), e)),
                    Err(e) => return Err(e),
                }
            }
            let done: Vec<String> = change.iter().map(|u| u.to_string()).collect();
            if change.is_empty() {
                (None, done, failed)
            } else {
                let mut ops = Vec::new();
                let timed = |t: i64| t > 0 && t < MUTED_FOREVER;
                for u in &change {
                    if let Some(m) = st.members.get_mut(u) {
                        if timed(m.muted_until) {
                            ops.push(Op::DeleteMuteDeadline {
                                at: m.muted_until,
                                conv: cell.num,
                                user: u.clone(),
                            });
                        }
                        m.muted_until = until;
                    }
                    if timed(until) {
                        ops.push(Op::PutMuteDeadline {
                            at: until,
                            conv: cell.num,
                            user: u.clone(),
                        });
                    }
                    self.put_member(&mut st, cell.num, u, &mut ops)?;
                }
                let kind = if until == 0 {
                    Ev::MembersUnmuted
                } else {
                    Ev::MembersMuted
                };
                let mut event =
                    self.event(kind, &cell, &caller.user, done.clone(), st.view(&cell.id));
                event.muted_until = until;
                let (live, logged, told) =
                    self.tell(&mut st, cell.num, caller, event, &change, &mut ops)?;
                pushed = told;
                (
                    Some(self.writer.submit(permit, ops, live, logged)),
                    done,
                    failed,
                )
            }
        };
        let conversation = self.finish(&cell, caller, rx).await?;
        self.charge_pushed(caller, pushed);
        Ok(MemberOutcome {
            conversation,
            done,
            failed,
        })
    }

    /// Switches mute-all: while on, only the owner and managers may send.
    pub async fn set_mute_all(
        &self,
        caller: &Caller,
        id: &str,
        muted: bool,
    ) -> Result<Conversation, Error> {
        let cell = self.cell(id)?;
        let mut pushed = Pushed::default();
        let permit = self.writer.reserve().await?;
        let rx = {
            let mut st = cell.lock();
            st.authorize(caller, Action::MuteAll)?;
            Self::require_group_kind(&st, "mute-all")?;
            if st.record.mute_all == muted {
                None
            } else {
                st.record.mute_all = muted;
                st.record.changed_at = self.now();
                let mut ops = vec![Op::PutConversation {
                    conv: cell.num,
                    record: st.record.clone(),
                }];
                let event = self.event(
                    Ev::MuteAllChanged,
                    &cell,
                    &caller.user,
                    Vec::new(),
                    st.view(&cell.id),
                );
                let (live, _, told) = self.tell(&mut st, cell.num, caller, event, &[], &mut ops)?;
                pushed = told;
                Some(self.writer.submit(permit, ops, live, Vec::new()))
            }
        };
        let conversation = self.finish(&cell, caller, rx).await?;
        self.charge_pushed(caller, pushed);
        Ok(conversation)
    }

    /// A page of the members muted now (by user id, after `cursor`). Any member may ask.
    pub fn list_muted_members(
        &self,
        caller: &Caller,
        id: &str,
        cursor: &str,
        limit: u32,
    ) -> Result<(Vec<MemberInfo>, String, bool), Error> {
        let limit = self.page_limit(
            limit,
            self.config.member_page_default,
            self.config.member_page_max,
            "member_page_max",
        )?;
        let cell = self.cell(id)?;
        let now = self.now();
        let st = cell.lock();
        st.authorize(caller, Action::AddMembers)?;
        let mut muted: Vec<&UserId> = st
            .members
            .iter()
            .filter(|(u, m)| m.muted_until > now && ***u > *cursor)
            .map(|(u, _)| u)
            .collect();
        muted.sort();
        let has_more = muted.len() > limit;
        let page: Vec<MemberInfo> = muted
            .into_iter()
            .take(limit)
            .map(|u| st.member_info(u, now))
            .collect();
        let next = if has_more {
            page.last().map(|m| m.user_id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok((page, next, has_more))
    }

    /// Which of `users` (the caller when none are named) may not send in the group now, for
    /// being muted or for mute-all ([`ConvState::silenced`]). Any member may ask, as they may
    /// list the muted members.
    pub fn silenced_among(
        &self,
        caller: &Caller,
        id: &str,
        users: &[String],
    ) -> Result<Vec<String>, Error> {
        let named = if users.is_empty() {
            vec![caller.user.clone()]
        } else {
            self.named_users(users, "")?.into_iter().collect()
        };
        let cell = self.cell(id)?;
        let now = self.now();
        let st = cell.lock();
        st.authorize(caller, Action::AddMembers)?;
        Ok(named
            .iter()
            .filter(|u| st.members.contains_key(*u) && st.silenced(u, now))
            .map(|u| u.to_string())
            .collect())
    }

    /// Which of `users` are on the group's blacklist. Any member may ask, as they may list it.
    pub fn blocked_among(
        &self,
        caller: &Caller,
        id: &str,
        users: &[String],
    ) -> Result<Vec<String>, Error> {
        let named = self.named_users(users, "")?;
        let cell = self.cell(id)?;
        let st = cell.lock();
        st.authorize(caller, Action::AddMembers)?;
        Ok(named
            .iter()
            .filter(|u| st.record.blacklist.contains_key(&***u))
            .map(|u| u.to_string())
            .collect())
    }

    /// Which of the conversations `ids` have the caller on their blacklist (at most
    /// `max_members_per_request` ids; unknown ones are left out). Only about oneself: it tells
    /// nothing of a conversation but whether it keeps the caller out.
    pub fn blocking_me(&self, caller: &Caller, ids: &[String]) -> Result<Vec<String>, Error> {
        let max = self.config.max_members_per_request;
        if ids.len() > max {
            return Err(Error::LimitExceeded(format!(
                "{} conversations named; max_members_per_request is {max}",
                ids.len()
            )));
        }
        let mut out = Vec::new();
        let mut read = 0;
        for id in ids {
            let blocked = match self.glance(id, &mut read)? {
                Glance::Loaded(cell) => {
                    let st = cell.lock();
                    st.require_live().is_ok() && st.record.blacklist.contains_key(&*caller.user)
                }
                Glance::Stored(_, record) => record.blacklist.contains_key(&*caller.user),
                Glance::Gone => false,
            };
            if blocked {
                out.push(id.clone());
            }
        }
        self.charge_glances(caller, read);
        Ok(out)
    }

    /// Whether the caller is a member of each of the conversations `ids` (the backend: whether
    /// each is there), in order; unknown and gone ones are `false`.
    pub fn are_members(&self, caller: &Caller, ids: &[String]) -> Result<Vec<bool>, Error> {
        let mut out = Vec::with_capacity(ids.len());
        let mut read = 0;
        for id in ids {
            let member = match self.glance(id, &mut read)? {
                Glance::Loaded(cell) => cell.lock().require_reader(caller).is_ok(),
                Glance::Stored(num, record) => {
                    caller.admin
                        // A chat room's members are known only while it is loaded.
                        || (record.kind != ConversationKind::ChatRoom as i32
                            && self.store.member(num, &caller.user)?.is_some())
                }
                Glance::Gone => false,
            };
            out.push(member);
        }
        self.charge_glances(caller, read);
        Ok(out)
    }

    /// A conversation as a question about one user needs it, without loading it: its cell
    /// when it is loaded, else its stored record when it is live (counted in `read`). Temporary
    /// conversations past their deadline are gone.
    fn glance(&self, id: &str, read: &mut usize) -> Result<Glance, Error> {
        let Some(num) = self.number_of(id)? else {
            return Ok(Glance::Gone);
        };
        if let Some(c) = self.convs.get(&num) {
            let cell = c.clone();
            drop(c);
            let live = cell.lock().require_live().is_ok();
            let expired = num & crate::protocol::TEMPORARY_BIT != 0
                && cell.lock().record.expires_at <= self.now();
            return Ok(if live && !expired {
                Glance::Loaded(cell)
            } else {
                Glance::Gone
            });
        }
        *read += 1;
        Ok(match self.store.conversation(num)? {
            Some(r) if r.deleted_at != 0 => Glance::Gone,
            Some(r) if num & crate::protocol::TEMPORARY_BIT != 0 && r.expires_at <= self.now() => {
                Glance::Gone
            }
            Some(r) => Glance::Stored(num, r),
            None => Glance::Gone,
        })
    }

    /// Charges a user for the stored records of `read` conversations [`Registry::glance`] read
    /// (see [`super::limits::CONVERSATIONS_PER_TOKEN`]); never refused.
    fn charge_glances(&self, caller: &Caller, read: usize) {
        if !caller.admin {
            self.charge_conversations(&caller.user, read);
        }
    }

    /// Puts users on the group's blacklist; members among them are removed (they must rank
    /// below the caller). Already blocked users count as done.
    pub async fn block_members(
        &self,
        caller: &Caller,
        id: &str,
        users: &[String],
        partial: bool,
    ) -> Result<MemberOutcome, Error> {
        let cell = self.cell(id)?;
        let named = self.named_users(users, "")?;
        if !caller.admin && named.contains(&caller.user) {
            return Err(Error::InvalidArgument("you cannot block yourself".into()));
        }
        let mut pushed = Pushed::default();
        let permit = self.writer.reserve().await?;
        let (rx, done, failed) = {
            let mut st = cell.lock();
            let rank = st.authorize(caller, Action::Block)?;
            Self::require_group_kind(&st, "the blacklist")?;
            let mut failed = Vec::new();
            let mut block = Vec::new();
            let mut done = Vec::new();
            for u in &named {
                let verdict = if *st.record.owner == **u {
                    Err(Error::PermissionDenied("the owner cannot be blocked"))
                } else if st.members.contains_key(u) {
                    st.authorize_over(rank, Action::Block, u)
                } else {
                    Ok(())
                };
                match verdict {
                    Ok(()) if st.record.blacklist.contains_key(&**u) => done.push(u.to_string()),
                    Ok(()) => block.push(u.clone()),
                    Err(e) if partial => failed.push((u.to_string(), e)),
                    Err(e) => return Err(e),
                }
            }
            if st.record.blacklist.len() + block.len() > self.config.max_blacklist {
                return Err(Error::LimitExceeded(format!(
                    "{} users on the blacklist; max_blacklist is {}",
                    st.record.blacklist.len() + block.len(),
                    self.config.max_blacklist
                )));
            }
            done.extend(block.iter().map(|u| u.to_string()));
            if block.is_empty() {
                (None, done, failed)
            } else {
                let now = self.now();
                for u in &block {
                    st.record.blacklist.insert(u.to_string(), now);
                }
                let removed: BTreeSet<UserId> = block
                    .iter()
                    .filter(|u| st.members.contains_key(*u))
                    .cloned()
                    .collect();
                let mut ops = vec![Op::PutConversation {
                    conv: cell.num,
                    record: st.record.clone(),
                }];
                ops.extend(self.drop_members(&mut st, &cell, &removed));
                let names = block.iter().map(|u| u.to_string()).collect();
                let event = self.event(
                    Ev::MembersBlocked,
                    &cell,
                    &caller.user,
                    names,
                    st.view(&cell.id),
                );
                let removed: Vec<UserId> = removed.into_iter().collect();
                let (live, logged, told) =
                    self.tell(&mut st, cell.num, caller, event, &removed, &mut ops)?;
                pushed = told;
                (
                    Some(self.writer.submit(permit, ops, live, logged)),
                    done,
                    failed,
                )
            }
        };
        let conversation = self.finish(&cell, caller, rx).await?;
        self.charge_pushed(caller, pushed);
        Ok(MemberOutcome {
            conversation,
            done,
            failed,
        })
    }

    /// Takes users off the group's blacklist (they do not become members again).
    pub async fn unblock_members(
        &self,
        caller: &Caller,
        id: &str,
        users: &[String],
    ) -> Result<MemberOutcome, Error> {
        let cell = self.cell(id)?;
        let named = self.named_users(users, "")?;
        let mut pushed = Pushed::default();
        let permit = self.writer.reserve().await?;
        let (rx, done) = {
            let mut st = cell.lock();
            st.authorize(caller, Action::Block)?;
            Self::require_group_kind(&st, "the blacklist")?;
            let done: Vec<String> = named.iter().map(|u| u.to_string()).collect();
            let listed: Vec<String> = done
                .iter()
                .filter(|u| st.record.blacklist.contains_key(*u))
                .cloned()
                .collect();
            if listed.is_empty() {
                (None, done)
            } else {
                for u in &listed {
                    st.record.blacklist.remove(u);
                }
                let mut ops = vec![Op::PutConversation {
                    conv: cell.num,
                    record: st.record.clone(),
                }];
                let event = self.event(
                    Ev::MembersUnblocked,
                    &cell,
                    &caller.user,
                    listed,
                    st.view(&cell.id),
                );
                let (live, _, told) = self.tell(&mut st, cell.num, caller, event, &[], &mut ops)?;
                pushed = told;
                (
                    Some(self.writer.submit(permit, ops, live, Vec::new())),
                    done,
                )
            }
        };
        let conversation = self.finish(&cell, caller, rx).await?;
        self.charge_pushed(caller, pushed);
        Ok(MemberOutcome {
            conversation,
            done,
            failed: Vec::new(),
        })
    }

    /// A page of the group's blacklist (by user id, after `cursor`). Any member may ask.
    pub fn list_blocked_members(
        &self,
        caller: &Caller,
        id: &str,
        cursor: &str,
        limit: u32,
    ) -> Result<(Vec<String>, String, bool), Error> {
        let limit = self.page_limit(
            limit,
            self.config.member_page_default,
            self.config.member_page_max,
            "member_page_max",
        )?;
        let cell = self.cell(id)?;
        let st = cell.lock();
        st.authorize(caller, Action::AddMembers)?;
        let mut page: Vec<String> = st
            .record
            .blacklist
            .range::<str, _>((
                std::ops::Bound::Excluded(cursor),
                std::ops::Bound::Unbounded,
            ))
            .map(|(u, _)| u.clone())
            .take(limit + 1)
            .collect();
        let has_more = page.len() > limit;
        page.truncate(limit);
        let next = if has_more {
            page.last().cloned().unwrap_or_default()
        } else {
            String::new()
        };
        Ok((page, next, has_more))
    }

    /// The roles of a group's members (for LeanCloud's `_ConversationMemberInfo`): the owner
    /// and managers; everyone else is a member.
    pub fn member_roles(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<(String, Vec<(String, MemberRole)>), Error> {
        let cell = self.cell(id)?;
        let st = cell.lock();
        self.require_member_or_open(&st, &caller.user)
            .or_else(|e| if caller.admin { Ok(()) } else { Err(e) })?;
        let mut out: Vec<(String, MemberRole)> = st
            .members
            .keys()
            .filter_map(|u| match st.rank_of(u) {
                Rank::Member => None,
                r => Some((u.to_string(), role_of(r))),
            })
            .collect();
        out.sort();
        Ok((cell.id.to_string(), out))
    }

    /// Members with their roles, mutes and profiles, in the order of `users`.
    pub(super) fn infos_of(
        &self,
        cell: &Arc<ConvCell>,
        users: &[String],
    ) -> Result<Vec<MemberInfo>, Error> {
        let now = self.now();
        let mut infos: Vec<MemberInfo> = {
            let st = cell.lock();
            users.iter().map(|u| st.member_info(u, now)).collect()
        };
        for i in &mut infos {
            i.profile = Some(self.profile_of(&i.user_id)?);
        }
        Ok(infos)
    }
}
