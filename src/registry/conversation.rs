//! Creating conversations and changing who is in them.

use super::groups::{Action, MemberOutcome};
use super::limits::Pushed;
use super::writer::wait;
use super::{Caller, ConvCell, ConvState, Error, LoggedEvent, Registry};
use crate::hub::Recipients;
use crate::protocol::pb::{
    Conversation, ConversationEventKind as Ev, ConversationKind, ConversationRecord, MemberInfo,
    MemberRecord, UserConversationRecord,
};
use crate::protocol::{self, conversation_id};
use crate::store::{Counter, Op, UserId};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// A conversation as someone who may find it sees it ([`Registry::peek`]).
#[derive(Debug, Clone)]
pub struct Peek {
    /// As the caller sees it (their mute flag when they are a member).
    pub conversation: Conversation,
    /// The first members (at most `member_page_max`); empty unless asked for.
    pub members: Vec<String>,
    /// Every member, sorted by id.
    pub roster: Arc<[UserId]>,
    /// Whether the caller is a member (and may read its messages).
    pub member: bool,
    /// For a caller who is not a member: when the newest message was sent (ms; 0: none, or
    /// the caller is a member and reads it from their list entry).
    pub last_message_at: i64,
}

/// What a create request asks for.
#[derive(Debug, Clone, Default)]
pub struct CreateRequest {
    pub kind: ConversationKind,
    pub members: Vec<String>,
    pub name: String,
    pub attributes: BTreeMap<String, String>,
    /// Temporary only: lifetime in seconds (0: the default).
    pub ttl_secs: u32,
    /// Temporary and group: return the live one with the same member set (for groups, one
    /// that was created with `unique` too).
    pub unique: bool,
    /// The admin API's `Idempotency-Key` and the fingerprint of the request that came with
    /// it: the conversation created is recorded under the key in the same commit (see
    /// [`Registry::create_once`]).
    pub idempotency: Option<(String, Vec<u8>)>,
}

/// What an update request changes.
#[derive(Debug, Clone, Default)]
pub struct UpdateRequest {
    pub name: Option<String>,
    pub set_attributes: BTreeMap<String, String>,
    pub remove_attributes: Vec<String>,
    /// Temporary conversations, the app's backend only: the conversation now expires this
    /// many seconds from now (longer or shorter than before).
    pub ttl_secs: Option<u32>,
}

fn kind_name(k: ConversationKind) -> &'static str {
    match k {
        ConversationKind::Direct => "direct",
        ConversationKind::Group => "group",
        ConversationKind::Temporary => "temporary",
        ConversationKind::System => "system",
        ConversationKind::ChatRoom => "chat room",
        ConversationKind::Unspecified => "unspecified",
    }
}

impl Registry {
    /// Validates a list of users named by a request: ids well-formed, no duplicates, within the
    /// per-request limit. Returns them sorted, without `except`.
    pub(super) fn named_users(
        &self,
        users: &[String],
        except: &str,
    ) -> Result<BTreeSet<UserId>, Error> {
        if users.len() > self.config.max_members_per_request {
            return Err(Error::LimitExceeded(format!(
                "{} users named; max_members_per_request is {}",
                users.len(),
                self.config.max_members_per_request
            )));
        }
        let mut out = BTreeSet::new();
        for u in users {
            self.check_user_id(u)?;
            if u != except {
                out.insert(UserId::from(u.as_str()));
            }
        }
        Ok(out)
    }

    /// Refuses to make `users` members of one more conversation when one of them is a member of
    /// `max_conversations_per_user` already: groups, direct and temporary conversations and
    /// system subscriptions, counted from the user's list in the store (kept in memory for
    /// long lists). Memberships that requests in flight are adding are not counted yet, so
    /// requests racing one another may pass the cap by as many as they are. Whoever asks: a
    /// user, the app's backend, an import.
    pub(super) fn check_memberships<'a>(
        &self,
        users: impl IntoIterator<Item = &'a UserId>,
    ) -> Result<(), Error> {
        let max = self.config.max_conversations_per_user;
        for u in users {
            let n = self.store.list_rows(u)?.len();
            if n >= max {
                return Err(Error::LimitExceeded(format!(
                    "{u:?} is a member of {n} conversations; max_conversations_per_user is {max}"
                )));
            }
        }
        Ok(())
    }

    /// Creates a conversation; for a direct pair that already exists, returns the existing one.
    pub async fn create(
        &self,
        caller: &Caller,
        mut req: CreateRequest,
    ) -> Result<Conversation, Error> {
        self.check_attributes(&req.name, &req.attributes)?;
        let mut name = Some(std::mem::take(&mut req.name));
        self.moderate_conversation(
            caller,
            "conversation.create",
            "",
            &mut name,
            &mut req.attributes,
        )
        .await?;
        req.name = name.unwrap_or_default();
        self.check_attributes(&req.name, &req.attributes)?;
        let others = self.named_users(&req.members, &caller.user)?;
        match req.kind {
            ConversationKind::Direct => {
                if others.len() != 1 {
                    return Err(Error::InvalidArgument(
                        "a direct conversation names exactly one other user".into(),
                    ));
                }
                let peer = others.into_iter().next().expect("one");
                // The pair's previous conversation may be committing its deletion right now;
                // once that is done the pair is free and a second try creates a new one.
                match self.create_direct(caller, peer.clone(), req.clone()).await {
                    Err(Error::ConversationNotFound) => self.create_direct(caller, peer, req).await,
                    other => other,
                }
            }
            ConversationKind::Group => {
                if others.len() + 1 > self.config.max_group_members {
                    return Err(Error::LimitExceeded(format!(
                        "{} members; max_group_members is {}",
                        others.len() + 1,
                        self.config.max_group_members
                    )));
                }
                let _unique = if req.unique {
                    // Sorted: every creator of one member set takes the same lock.
                    let mut set: Vec<UserId> = others.iter().cloned().collect();
                    set.push(caller.user.clone());
                    set.sort();
                    let guard = self.unique_groups.of(&set).lock().await;
                    if let Some(cell) = self.unique_group(caller, set).await? {
                        self.record_idempotency(&req.idempotency, cell.num).await?;
                        let view = cell.lock().view(&cell.id);
                        return self.view_for(&cell, view, &caller.user);
                    }
                    Some(guard)
                } else {
                    None
                };
                self.check_memberships(std::iter::once(&caller.user).chain(&others))?;
                let permit = self.writer.reserve().await?;
                let (cell, (rx, pushed)) = {
                    let mut next = self.next_conv.lock().unwrap_or_else(|p| p.into_inner());
                    let mut members = vec![caller.user.clone()];
                    members.extend(others);
                    let record = ConversationRecord {
                        kind: ConversationKind::Group as i32,
                        name: req.name,
                        attributes: req.attributes,
                        owner: caller.user.to_string(),
                        created_at: self.now(),
                        pair: Vec::new(),
                        expires_at: 0,
                        deleted_at: 0,
                        unique: req.unique,
                        alias: String::new(),
                        ..Default::default()
                    };
                    let (cell, mut ops, events) =
                        self.new_normal(&mut next, caller, record, &members);
                    ops.extend(self.idempotency_op(&req.idempotency, cell.num));
                    let pushed = events
                        .first()
                        .map(|e| Pushed::named(&e.event, events.len()))
                        .unwrap_or_default();
                    (
                        cell,
                        (self.writer.submit(permit, ops, Vec::new(), events), pushed),
                    )
                };
                wait(rx).await?;
                self.charge_members(caller, cell.lock().members.len());
                self.charge_pushed(caller, pushed);
                let view = cell.lock().view(&cell.id);
                self.view_for(&cell, view, &caller.user)
            }
            ConversationKind::Temporary => self.create_temporary(caller, others, req).await,
            ConversationKind::System | ConversationKind::ChatRoom => {
                self.create_public(caller, req).await
            }
            ConversationKind::Unspecified => Err(Error::InvalidArgument("kind is required".into())),
        }
    }

    /// Creates a temporary conversation, or with `unique` returns the live one of the same
    /// member set.
    async fn create_temporary(
        &self,
        caller: &Caller,
        others: BTreeSet<UserId>,
        req: CreateRequest,
    ) -> Result<Conversation, Error> {
        let cfg = &self.config;
        if others.len() + 1 > cfg.max_temporary_members {
            return Err(Error::LimitExceeded(format!(
                "{} members; max_temporary_members is {}",
                others.len() + 1,
                cfg.max_temporary_members
            )));
        }
        let ttl = match req.ttl_secs {
            0 => cfg.temporary_ttl_default_secs,
            t if t > cfg.temporary_ttl_max_secs => {
                return Err(Error::LimitExceeded(format!(
                    "ttl_secs {t}; temporary_ttl_max_secs is {}",
                    cfg.temporary_ttl_max_secs
                )));
            }
            t => t,
        };
        let mut members: Vec<UserId> = others.into_iter().collect();
        members.push(caller.user.clone());
        members.sort();
        // A unique one that is there already adds no membership.
        if !req.unique || self.live_unique(&members)?.is_none() {
            self.check_memberships(&members)?;
        }
        let idempotency = req.idempotency.clone();
        let permit = self.writer.reserve().await?;
        let (cell, rx) = {
            let mut next = self.next_conv.lock().unwrap_or_else(|p| p.into_inner());
            let existing = if req.unique {
                self.live_unique(&members)?
            } else {
                None
            };
            match existing {
                Some(cell) => (cell, None),
                None => {
                    next.temporary += 1;
                    let num = protocol::TEMPORARY_BIT | next.temporary;
                    let now = self.now();
                    let record = ConversationRecord {
                        kind: ConversationKind::Temporary as i32,
                        name: req.name,
                        attributes: req.attributes,
                        owner: String::new(),
                        created_at: now,
                        pair: members.iter().map(|m| m.to_string()).collect(),
                        expires_at: now + i64::from(ttl) * 1000,
                        deleted_at: 0,
                        unique: false,
                        alias: String::new(),
                        ..Default::default()
                    };
                    let expires_at = record.expires_at;
                    let (cell, mut ops, events) =
                        self.new_conversation(num, caller, record, &members);
                    ops.push(Op::SetCounter {
                        counter: Counter::Temporary,
                        value: next.temporary,
                    });
                    ops.push(Op::PutExpiry {
                        at: expires_at,
                        conv: num,
                    });
                    ops.push(Op::PutUniqueTemporary {
                        members: members.clone(),
                        conv: num,
                    });
                    ops.extend(self.idempotency_op(&idempotency, num));
                    self.temp_uniques.insert(members, num);
                    (
                        cell,
                        Some(self.writer.submit(permit, ops, Vec::new(), events)),
                    )
                }
            }
        };
        match rx {
            Some(rx) => {
                wait(rx).await?;
                // Its deadline may be the next one the sweep must wake for.
                self.expiry_changed.notify_waiters();
            }
            None => {
                self.writer.barrier().await?;
                self.record_idempotency(&idempotency, cell.num).await?;
            }
        }
        let view = cell.lock().view(&cell.id);
        self.view_for(&cell, view, &caller.user)
    }

    /// The live group created with `unique` whose members are exactly `set` (sorted, the
    /// caller among them). Looked for off the async workers ([`UniqueWalk`]); the
    /// conversations the walk looked at are charged to a caller that is not the app's backend
    /// afterwards, a token per [`super::limits::CONVERSATIONS_PER_TOKEN`].
    async fn unique_group(
        &self,
        caller: &Caller,
        set: Vec<UserId>,
    ) -> Result<Option<Arc<ConvCell>>, Error> {
        let walk = UniqueWalk {
            store: self.store.clone(),
            convs: self.convs.clone(),
            heads: self.heads.clone(),
        };
        let (creator, wanted) = (caller.user.clone(), set.clone());
        let (found, looked) = tokio::task::spawn_blocking(move || walk.run(&creator, &wanted))
            .await
            .map_err(|_| Error::Internal)?;
        if !caller.admin {
            self.charge_conversations(&caller.user, looked);
        }
        let Some(num) = found? else {
            return Ok(None);
        };
        let cell = match self.cell_by_num(num) {
            Ok(cell) => cell,
            Err(Error::ConversationNotFound | Error::ConversationExpired) => return Ok(None),
            Err(e) => return Err(e),
        };
        // It may have changed since the walk looked (a member left): then there is none.
        let same = unique_of(&cell.lock(), &set);
        Ok(same.then_some(cell))
    }

    /// The live temporary conversation of exactly this sorted member set, if any.
    fn live_unique(&self, members: &[UserId]) -> Result<Option<Arc<ConvCell>>, Error> {
        let num = match self.temp_uniques.get(members) {
            Some(n) => *n,
            None => match self.store.unique_temporary(members)? {
                Some(n) => n,
                None => return Ok(None),
            },
        };
        match self.cell(&conversation_id(num)) {
            Ok(cell) => Ok(Some(cell)),
            Err(Error::ConversationExpired | Error::ConversationNotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn create_direct(
        &self,
        caller: &Caller,
        peer: UserId,
        req: CreateRequest,
    ) -> Result<Conversation, Error> {
        let pair = if caller.user <= peer {
            (caller.user.clone(), peer)
        } else {
            (peer, caller.user.clone())
        };
        let idempotency = req.idempotency.clone();
        let permit = self.writer.reserve().await?;
        let (num, rx) = match self.directs.entry(pair.clone()) {
            dashmap::Entry::Occupied(e) => (*e.get(), None),
            dashmap::Entry::Vacant(v) => match self.store.direct(&pair.0, &pair.1)? {
                Some(num) => (*v.insert(num), None),
                None => {
                    let peer = if pair.0 == caller.user {
                        &pair.1
                    } else {
                        &pair.0
                    };
                    self.require_not_blocked_by(peer, &caller.user)?;
                    self.check_memberships([&pair.0, &pair.1])?;
                    let mut next = self.next_conv.lock().unwrap_or_else(|p| p.into_inner());
                    let record = ConversationRecord {
                        kind: ConversationKind::Direct as i32,
                        name: req.name,
                        attributes: req.attributes,
                        owner: String::new(),
                        created_at: self.now(),
                        pair: vec![pair.0.to_string(), pair.1.to_string()],
                        expires_at: 0,
                        deleted_at: 0,
                        unique: false,
                        alias: String::new(),
                        ..Default::default()
                    };
                    let members = [pair.0.clone(), pair.1.clone()];
                    let (cell, mut ops, events) =
                        self.new_normal(&mut next, caller, record, &members);
                    ops.push(Op::PutDirect {
                        a: pair.0.clone(),
                        b: pair.1.clone(),
                        conv: cell.num,
                    });
                    ops.extend(self.idempotency_op(&req.idempotency, cell.num));
                    v.insert(cell.num);
                    (
                        cell.num,
                        Some(self.writer.submit(permit, ops, Vec::new(), events)),
                    )
                }
            },
        };
        match rx {
            Some(rx) => wait(rx).await?,
            // Someone else created it: make sure their create is durable before answering.
            None => {
                self.writer.barrier().await?;
                self.record_idempotency(&idempotency, num).await?;
            }
        }
        let cell = self.cell_by_num(num)?;
        let view = cell.lock().view(&cell.id);
        self.view_for(&cell, view, &caller.user)
    }

    /// Allocates the next normal conversation number and registers the conversation.
    pub(super) fn new_normal(
        &self,
        next: &mut super::Numbers,
        caller: &Caller,
        record: ConversationRecord,
        members: &[UserId],
    ) -> (Arc<ConvCell>, Vec<Op>, Vec<LoggedEvent>) {
        next.normal += 1;
        let num = next.normal;
        let (cell, mut ops, events) = self.new_conversation(num, caller, record, members);
        ops.push(Op::SetCounter {
            counter: Counter::Conversation,
            value: num,
        });
        (cell, ops, events)
    }

    /// Registers the cell of a new conversation `num` in memory and returns the ops and the
    /// CREATED events for every member. Called under the `next_conv` lock (which allocated
    /// `num`), so numbers commit in order; the caller adds the counter op.
    fn new_conversation(
        &self,
        num: u64,
        caller: &Caller,
        record: ConversationRecord,
        members: &[UserId],
    ) -> (Arc<ConvCell>, Vec<Op>, Vec<LoggedEvent>) {
        let now = record.created_at;
        let mut ops = vec![Op::PutConversation {
            conv: num,
            record: record.clone(),
        }];
        let mut map = HashMap::with_capacity(members.len());
        for (i, u) in members.iter().enumerate() {
            let m = MemberRecord {
                joined_at: now,
                join_order: i as u64 + 1,
                ..Default::default()
            };
            ops.push(Op::PutMember {
                conv: num,
                user: u.clone(),
                record: m,
            });
            ops.push(Op::PutUserConversation {
                user: u.clone(),
                conv: num,
                record: UserConversationRecord {
                    joined_at: now,
                    kind: record.kind,
                    expires_at: record.expires_at,
                    ..Default::default()
                },
            });
            map.insert(u.clone(), m);
        }
        let mut state = ConvState {
            record,
            members: map,
            roster: Arc::from(Vec::new()),
            live: Arc::default(),
            reads: HashMap::new(),
            last_seq: 0,
            durable_seq: 0,
            last_ts: now,
            next_join_order: members.len() as u64 + 1,
            expired: false,
            deleted: false,
            entries: HashMap::new(),
            edited: HashMap::new(),
            receipt_high: None,
            blocks: None,
            silent: None,
            log_seq: None,
            imported: Some(0),
            published: None,
        };
        let id = Arc::from(Self::id_of(num, &state.record));
        state.rebuild_roster();
        let cell = ConvCell::new(num, id, state, self.now(), &self.heads);
        let view = cell.lock().view(&cell.id);
        let event = Arc::new(self.event(Ev::Created, &cell, &caller.user, Vec::new(), view));
        let events = members
            .iter()
            .map(|u| LoggedEvent {
                user: u.clone(),
                event: event.clone(),
                except_session: caller.session,
            })
            .collect();
        let held = cell.members_held.load(std::sync::atomic::Ordering::Relaxed);
        if self.convs.insert(num, cell.clone()).is_none() {
            self.cell_loaded(held);
        }
        (cell, ops, events)
    }

    /// The conversation, for a member or the app's backend.
    pub fn get(&self, caller: &Caller, id: &str) -> Result<Conversation, Error> {
        let cell = self.cell(id)?;
        let view = {
            let st = cell.lock();
            st.require_reader(caller)?;
            st.view(&cell.id)
        };
        if caller.admin {
            return Ok(view);
        }
        self.view_for(&cell, view, &caller.user)
    }

    /// Whether `user` may see this conversation's metadata and join it without being invited:
    /// members always; others only for groups, when `leancloud_open_conversations` is on
    /// (LeanCloud let any client find normal conversations and `join()` them). Temporary and
    /// direct conversations, and every message, stay members-only.
    pub(super) fn require_member_or_open(&self, st: &ConvState, user: &str) -> Result<(), Error> {
        match st.require_member(user) {
            Err(Error::NotAMember)
                if self.config.leancloud_open_conversations
                    && st.kind() == ConversationKind::Group =>
            {
                Ok(())
            }
            // Found and joined by anyone.
            Err(Error::NotAMember)
                if matches!(
                    st.kind(),
                    ConversationKind::System | ConversationKind::ChatRoom
                ) =>
            {
                Ok(())
            }
            other => other,
        }
    }

    /// The conversation as LeanCloud's `conv/query` shows it: for members, and for anyone when
    /// conversations are open (see [`Registry::require_member_or_open`]). With the members
    /// (at most `member_page_max`) and, for those who may see it but are not members, when
    /// its newest message was sent (not the message: messages are members-only).
    pub fn peek(&self, caller: &Caller, id: &str, with_members: bool) -> Result<Peek, Error> {
        let cell = self.cell(id)?;
        let (view, roster, member) = {
            let st = cell.lock();
            self.require_member_or_open(&st, &caller.user)?;
            (
                st.view(&cell.id),
                st.roster.clone(),
                st.members.contains_key(&caller.user),
            )
        };
        let members = match with_members {
            true => roster
                .iter()
                .take(self.config.member_page_max as usize)
                .map(|u| u.to_string())
                .collect(),
            false => Vec::new(),
        };
        let (conversation, last_message_at) = if member {
            (self.view_for(&cell, view, &caller.user)?, 0)
        } else {
            (view, self.last_message_at(cell.num)?)
        };
        Ok(Peek {
            conversation,
            members,
            roster,
            member,
            last_message_at,
        })
    }

    /// Whether the caller may change the conversation's name and attributes.
    fn authorize_update(st: &ConvState, caller: &Caller) -> Result<(), Error> {
        st.authorize(caller, Action::Update)?;
        // The app's backend keeps a customer-service chat's status, assignee and tags in
        // its attributes; clients may not change a temporary conversation.
        if !caller.admin {
            Self::require_not_temporary(st, "updating name or attributes")?;
        }
        Ok(())
    }

    fn require_not_temporary(st: &ConvState, what: &'static str) -> Result<(), Error> {
        match st.kind() {
            ConversationKind::Temporary => Err(Error::NotAllowedForKind {
                kind: "temporary",
                what,
            }),
            _ => Ok(()),
        }
    }

    /// Groups; and temporary conversations when the app's backend asks (customer service:
    /// transferring a visitor, adding a supervisor). Returns whether it is temporary.
    fn require_group_or_backend(
        st: &ConvState,
        caller: &Caller,
        what: &'static str,
    ) -> Result<bool, Error> {
        if caller.admin && st.kind() == ConversationKind::Temporary {
            return Ok(true);
        }
        Self::require_group(st, what)?;
        Ok(false)
    }

    /// After the members of a temporary conversation changed (in `st.members`): its member
    /// list in the record follows, and so does the unique-member-set index, unless another
    /// conversation holds the new set. Adds the ops.
    fn reindex_temporary(
        &self,
        st: &mut ConvState,
        num: u64,
        ops: &mut Vec<Op>,
    ) -> Result<(), Error> {
        let old: Vec<UserId> = st
            .record
            .pair
            .iter()
            .map(|m| UserId::from(m.as_str()))
            .collect();
        let new: Vec<UserId> = st.roster.to_vec();
        let holder = |set: &Vec<UserId>| -> Result<Option<u64>, Error> {
            match self.temp_uniques.get(set) {
                Some(n) => Ok(Some(*n)),
                None => Ok(self.store.unique_temporary(set)?),
            }
        };
        if holder(&old)? == Some(num) {
            ops.push(Op::DeleteUniqueTemporary {
                members: old.clone(),
            });
            self.temp_uniques.remove_if(&old, |_, n| *n == num);
        }
        if holder(&new)?.is_none_or(|n| n == num) {
            ops.push(Op::PutUniqueTemporary {
                members: new.clone(),
                conv: num,
            });
            self.temp_uniques.insert(new.clone(), num);
        }
        st.record.pair = new.iter().map(|m| m.to_string()).collect();
        ops.push(Op::PutConversation {
            conv: num,
            record: st.record.clone(),
        });
        Ok(())
    }

    fn require_group(st: &ConvState, what: &'static str) -> Result<(), Error> {
        match st.kind() {
            ConversationKind::Group => Ok(()),
            k => Err(Error::NotAllowedForKind {
                kind: kind_name(k),
                what,
            }),
        }
    }

    /// Adds members to a group. Any member may add; users already in are skipped; a user on
    /// the blacklist fails the request.
    pub async fn add_members(
        &self,
        caller: &Caller,
        id: &str,
        users: &[String],
    ) -> Result<Conversation, Error> {
        Ok(self
            .add_members_each(caller, id, users, false, false)
            .await?
            .conversation)
    }

    /// Joins a group by oneself, where conversations are open to that (LeanCloud's `join()`;
    /// see [`Registry::require_member_or_open`]). A member joining again is a no-op.
    pub async fn join(&self, caller: &Caller, id: &str) -> Result<Conversation, Error> {
        Ok(self
            .add_members_each(caller, id, &[caller.user.to_string()], true, false)
            .await?
            .conversation)
    }

    /// Adds members (or, with `may_join`, joins by oneself). With `partial`, users who may not
    /// be added (the blacklisted) are reported in `failed` and the rest are added.
    pub async fn add_members_each(
        &self,
        caller: &Caller,
        id: &str,
        users: &[String],
        may_join: bool,
        partial: bool,
    ) -> Result<MemberOutcome, Error> {
        let cell = self.cell(id)?;
        let named = self.named_users(users, "")?;
        let joining: Vec<UserId> = {
            let st = cell.lock();
            named
                .iter()
                .filter(|u| !st.members.contains_key(*u))
                .cloned()
                .collect()
        };
        self.check_memberships(&joining)?;
        let permit = self.writer.reserve().await?;
        let mut failed = Vec::new();
        let mut done = Vec::new();
        let mut added = 0;
        let mut pushed = Pushed::default();
        let rx = {
            let mut st = cell.lock();
            // Joining by oneself is allowed where the conversation is open.
            let joining = named.len() == 1
                && named.contains(&caller.user)
                && !st.members.contains_key(&caller.user);
            if joining && may_join {
                self.require_member_or_open(&st, &caller.user)?;
            } else {
                st.authorize(caller, Action::AddMembers)?;
            }
            let temporary = Self::require_group_or_backend(&st, caller, "adding members")?;
            let mut new: Vec<UserId> = Vec::new();
            for u in named {
                if st.record.blacklist.contains_key(&*u) {
                    let e = Error::Blacklisted(u.to_string());
                    if !partial {
                        return Err(e);
                    }
                    failed.push((u.to_string(), e));
                } else {
                    done.push(u.to_string());
                    if !st.members.contains_key(&u) {
                        new.push(u);
                    }
                }
            }
            if new.is_empty() {
                None
            } else {
                added = new.len();
                let (max, name) = if temporary {
                    (self.config.max_temporary_members, "max_temporary_members")
                } else {
                    (self.config.max_group_members, "max_group_members")
                };
                if st.members.len() + new.len() > max {
                    return Err(Error::LimitExceeded(format!(
                        "{} members; {name} is {max}",
                        st.members.len() + new.len(),
                    )));
                }
                let existing = st.roster.clone();
                let now = self.now();
                let mut ops = Vec::with_capacity(new.len() * 3);
                for u in &new {
                    let m = MemberRecord {
                        joined_at: now,
                        join_order: st.next_join_order,
                        ..Default::default()
                    };
                    st.next_join_order += 1;
                    st.members.insert(u.clone(), m);
                    let last = st.last_seq;
                    st.reads.insert(u.clone(), last);
                    ops.push(Op::PutMember {
                        conv: cell.num,
                        user: u.clone(),
                        record: m,
                    });
                    let rec = UserConversationRecord {
                        joined_at: now,
                        kind: st.record.kind,
                        expires_at: st.record.expires_at,
                        ..Default::default()
                    };
                    ops.push(Self::put_entry(&mut st, cell.num, u, rec));
                    ops.push(Op::DeleteTombstone {
                        user: u.clone(),
                        conv: cell.num,
                    });
                    ops.push(Op::PutReadSeq {
                        user: u.clone(),
                        conv: cell.num,
                        seq: st.last_seq,
                    });
                }
                st.rebuild_roster();
                if temporary {
                    self.reindex_temporary(&mut st, cell.num, &mut ops)?;
                }
                let names: Vec<String> = new.iter().map(|u| u.to_string()).collect();
                let event = Arc::new(self.event(
                    Ev::MembersAdded,
                    &cell,
                    &caller.user,
                    names,
                    st.view(&cell.id),
                ));
                self.log_to_conversation(&mut st, cell.num, &event, &mut ops)?;
                pushed =
                    Pushed::event(&event, existing.len()).and(Pushed::named(&event, new.len()));
                let live = vec![Self::live(
                    &event,
                    Recipients::Users(existing),
                    caller.session,
                )];
                let logged = new
                    .into_iter()
                    .map(|user| LoggedEvent {
                        user,
                        event: event.clone(),
                        except_session: 0,
                    })
                    .collect();
                Some(self.writer.submit(permit, ops, live, logged))
            }
        };
        let conversation = self.finish(&cell, caller, rx).await?;
        self.charge_members(caller, added);
        self.charge_pushed(caller, pushed);
        Ok(MemberOutcome {
            conversation,
            done,
            failed,
        })
    }

    /// Removes members from a group: the owner removes anyone, managers remove members (see
    /// the role table, [`super::groups::Action`]).
    pub async fn remove_members(
        &self,
        caller: &Caller,
        id: &str,
        users: &[String],
    ) -> Result<Conversation, Error> {
        Ok(self
            .remove_members_each(caller, id, users, false)
            .await?
            .conversation)
    }

    /// [`Registry::remove_members`]; with `partial`, the users who may not be removed (not
    /// members, or ranking too high) are reported in `failed` and the rest are removed.
    pub async fn remove_members_each(
        &self,
        caller: &Caller,
        id: &str,
        users: &[String],
        partial: bool,
    ) -> Result<MemberOutcome, Error> {
        let cell = self.cell(id)?;
        let mut named = self.named_users(users, "")?;
        if !caller.admin && named.contains(&caller.user) {
            return Err(Error::InvalidArgument(
                "to remove yourself, leave the conversation".into(),
            ));
        }
        let permit = self.writer.reserve().await?;
        let mut failed = Vec::new();
        let mut pushed = Pushed::default();
        let rx = {
            let mut st = cell.lock();
            let rank = st.authorize(caller, Action::RemoveMembers)?;
            let temporary = Self::require_group_or_backend(&st, caller, "removing members")?;
            let mut refused = Vec::new();
            for u in &named {
                let verdict = if !st.members.contains_key(u) {
                    Err(Error::InvalidArgument(format!("{u:?} is not a member")))
                } else {
                    st.authorize_over(rank, Action::RemoveMembers, u)
                };
                if let Err(e) = verdict {
                    if !partial {
                        return Err(e);
                    }
                    refused.push(u.clone());
                    failed.push((u.to_string(), e));
                }
            }
            for u in refused {
                named.remove(&u);
            }
            if temporary && named.len() >= st.members.len() {
                return Err(Error::InvalidArgument(
                    "a temporary conversation keeps at least one member; end it instead".into(),
                ));
            }
            if named.is_empty() {
                None
            } else {
                let before = st.view(&cell.id);
                let mut ops = self.drop_members(&mut st, &cell, &named);
                if temporary {
                    self.reindex_temporary(&mut st, cell.num, &mut ops)?;
                }
                let names: Vec<String> = named.iter().map(|u| u.to_string()).collect();
                let event = self.event(
                    Ev::MembersRemoved,
                    &cell,
                    &caller.user,
                    names.clone(),
                    st.view(&cell.id),
                );
                let to_removed =
                    Arc::new(self.event(Ev::MembersRemoved, &cell, &caller.user, names, before));
                self.log_to_conversation(&mut st, cell.num, &event, &mut ops)?;
                pushed = Pushed::event(&event, st.roster.len())
                    .and(Pushed::named(&to_removed, named.len()));
                let live = vec![Self::live(
                    &event,
                    Recipients::Users(st.roster.clone()),
                    caller.session,
                )];
                let logged = named
                    .iter()
                    .map(|user| LoggedEvent {
                        user: user.clone(),
                        event: to_removed.clone(),
                        except_session: 0,
                    })
                    .collect();
                Some(self.writer.submit(permit, ops, live, logged))
            }
        };
        let conversation = self.finish(&cell, caller, rx).await?;
        self.charge_members(caller, named.len());
        self.charge_pushed(caller, pushed);
        Ok(MemberOutcome {
            conversation,
            done: named.iter().map(|u| u.to_string()).collect(),
            failed,
        })
    }

    /// Removes `users` from the state (and their presence subscriptions) and returns the ops
    /// that remove them from the store.
    pub(super) fn drop_members(
        &self,
        st: &mut ConvState,
        cell: &ConvCell,
        users: &BTreeSet<UserId>,
    ) -> Vec<Op> {
        let mut ops = Vec::with_capacity(users.len() * 4);
        let now = self.now();
        for u in users {
            st.members.remove(u);
            st.reads.remove(u);
            st.entries.remove(u);
            ops.push(Op::PutTombstone {
                user: u.clone(),
                conv: cell.num,
                at: now,
            });
            ops.push(Op::DeleteMember {
                conv: cell.num,
                user: u.clone(),
            });
            ops.push(Op::DeleteUserConversation {
                user: u.clone(),
                conv: cell.num,
            });
            ops.push(Op::DeleteReadSeq {
                user: u.clone(),
                conv: cell.num,
            });
        }
        st.rebuild_roster();
        self.presence.drop_users(cell.num, Some(users));
        ops
    }

    /// Leaves a group. An owner who leaves hands ownership to the longest-standing member.
    pub async fn leave(&self, caller: &Caller, id: &str) -> Result<(), Error> {
        self.leave_with(caller, id, true).await
    }

    /// Leaves a group; the owner may not (ERROR_OWNER_MUST_TRANSFER) and must first transfer
    /// ownership. For front doors whose vendor works so (LeanCloud's `quit()`).
    pub async fn quit(&self, caller: &Caller, id: &str) -> Result<(), Error> {
        self.leave_with(caller, id, false).await
    }

    async fn leave_with(&self, caller: &Caller, id: &str, hand_over: bool) -> Result<(), Error> {
        let cell = self.cell(id)?;
        let kind = cell.lock().kind();
        match kind {
            ConversationKind::ChatRoom => return self.leave_room(caller, &cell),
            ConversationKind::System => return self.unsubscribe(caller, &cell).await,
            _ => {}
        }
        let permit = self.writer.reserve().await?;
        let (rx, pushed) = {
            let mut st = cell.lock();
            st.require_member(&caller.user)?;
            Self::require_group(&st, "leaving")?;
            let owner = *st.record.owner == *caller.user;
            if owner && !hand_over && st.members.len() > 1 {
                return Err(Error::OwnerMustTransfer);
            }
            let me: BTreeSet<UserId> = [caller.user.clone()].into();
            let mut ops = self.drop_members(&mut st, &cell, &me);
            if owner {
                let heir = st
                    .members
                    .iter()
                    .min_by_key(|(u, m)| (m.join_order, (*u).clone()))
                    .map(|(u, _)| u.clone());
                match heir {
                    Some(heir) => self.make_owner(&mut st, &cell, &heir, &mut ops)?,
                    None => {
                        st.record.owner = String::new();
                        ops.push(Op::PutConversation {
                            conv: cell.num,
                            record: st.record.clone(),
                        });
                    }
                }
            }
            let event = self.event(
                Ev::Left,
                &cell,
                &caller.user,
                vec![caller.user.to_string()],
                st.view(&cell.id),
            );
            self.log_to_conversation(&mut st, cell.num, &event, &mut ops)?;
            let pushed = Pushed::event(&event, st.roster.len() + 1);
            let live = vec![Self::live(&event, Recipients::Users(st.roster.clone()), 0)];
            let logged = vec![LoggedEvent {
                user: caller.user.clone(),
                event: Arc::new(event),
                except_session: caller.session,
            }];
            (self.writer.submit(permit, ops, live, logged), pushed)
        };
        wait(rx).await?;
        self.charge_pushed(caller, pushed);
        Ok(())
    }

    /// Changes the name and attributes. Any member may. A user's change is charged afterwards
    /// by the members it is pushed to and its bytes, as is every change pushed to them
    /// ([`super::limits::Pushed`]).
    pub async fn update(
        &self,
        caller: &Caller,
        id: &str,
        mut req: UpdateRequest,
    ) -> Result<Conversation, Error> {
        let cell = self.cell(id)?;
        if let Some(ttl) = req.ttl_secs {
            if !caller.admin {
                return Err(Error::PermissionDenied(
                    "only the app's backend may change a temporary conversation's lifetime",
                ));
            }
            if ttl == 0 || ttl > self.config.temporary_ttl_max_secs {
                return Err(Error::InvalidArgument(format!(
                    "ttl_secs must be 1..={} (temporary_ttl_max_secs)",
                    self.config.temporary_ttl_max_secs
                )));
            }
        }
        // Asked only about a change the caller may make.
        Self::authorize_update(&cell.lock(), caller)?;
        self.moderate_conversation(
            caller,
            "conversation.update",
            id,
            &mut req.name,
            &mut req.set_attributes,
        )
        .await?;
        let permit = self.writer.reserve().await?;
        let mut moved_deadline = false;
        let (rx, pushed) = {
            let mut st = cell.lock();
            Self::authorize_update(&st, caller)?;
            let mut record = st.record.clone();
            if let Some(name) = req.name {
                record.name = name;
            }
            for k in &req.remove_attributes {
                record.attributes.remove(k);
            }
            record.attributes.extend(req.set_attributes);
            self.check_attributes(&record.name, &record.attributes)?;
            let mut ops = Vec::new();
            if let Some(ttl) = req.ttl_secs {
                if st.kind() != ConversationKind::Temporary {
                    return Err(Error::NotAllowedForKind {
                        kind: kind_name(st.kind()),
                        what: "a lifetime (ttl_secs)",
                    });
                }
                let at = self.now() + i64::from(ttl) * 1000;
                ops.push(Op::DeleteExpiry {
                    at: record.expires_at,
                    conv: cell.num,
                });
                ops.push(Op::PutExpiry { at, conv: cell.num });
                record.expires_at = at;
                // Every member's list entry shows the deadline.
                for u in st.roster.clone().iter() {
                    let mut rec = self.entry(&mut st, cell.num, u)?;
                    rec.expires_at = at;
                    ops.push(Self::put_entry(&mut st, cell.num, u, rec));
                }
                moved_deadline = true;
            }
            st.record = record.clone();
            ops.insert(
                0,
                Op::PutConversation {
                    conv: cell.num,
                    record,
                },
            );
            let event = self.event(
                Ev::Updated,
                &cell,
                &caller.user,
                Vec::new(),
                st.view(&cell.id),
            );
            self.log_to_conversation(&mut st, cell.num, &event, &mut ops)?;
            let pushed = Pushed::event(&event, st.roster.len());
            let live = vec![Self::live(
                &event,
                Recipients::Users(st.roster.clone()),
                caller.session,
            )];
            (self.writer.submit(permit, ops, live, Vec::new()), pushed)
        };
        let view = self.finish(&cell, caller, Some(rx)).await?;
        self.charge_pushed(caller, pushed);
        if moved_deadline {
            // The new deadline may be the next one the sweep must wake for.
            self.expiry_changed.notify_waiters();
        }
        Ok(view)
    }

    /// Mutes or unmutes the conversation for the caller only; their other devices are told.
    pub async fn set_muted(&self, caller: &Caller, id: &str, muted: bool) -> Result<(), Error> {
        let cell = self.cell(id)?;
        let permit = self.writer.reserve().await?;
        let rx = {
            let mut st = cell.lock();
            st.require_member(&caller.user)?;
            Self::require_not_temporary(&st, "muting")?;
            st.require_stored("muting")?;
            let mut rec = self.entry(&mut st, cell.num, &caller.user)?;
            rec.muted = muted;
            rec.changed_at = self.now();
            let ops = vec![Self::put_entry(&mut st, cell.num, &caller.user, rec)];
            let view = Conversation {
                muted,
                ..st.view(&cell.id)
            };
            let event = self.event(Ev::Muted, &cell, &caller.user, Vec::new(), view);
            let live = vec![Self::live(
                &event,
                Recipients::User(caller.user.clone()),
                caller.session,
            )];
            self.writer.submit(permit, ops, live, Vec::new())
        };
        Ok(wait(rx).await?)
    }

    /// A page of members, sorted by user id, with their roles and mutes.
    pub fn list_member_infos(
        &self,
        caller: &Caller,
        id: &str,
        cursor: &str,
        limit: u32,
    ) -> Result<(Vec<String>, Vec<MemberInfo>, String, bool), Error> {
        let (page, next, more) = self.list_members(caller, id, cursor, limit)?;
        let infos = self.infos_of(&self.cell(id)?, &page)?;
        Ok((page, infos, next, more))
    }

    /// A page of members, sorted by user id.
    pub fn list_members(
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
        let roster = {
            let st = cell.lock();
            st.authorize(caller, Action::AddMembers)?;
            st.roster.clone()
        };
        let start = if cursor.is_empty() {
            0
        } else {
            roster.partition_point(|u| **u <= *cursor)
        };
        let page: Vec<String> = roster[start..]
            .iter()
            .take(limit)
            .map(|u| u.to_string())
            .collect();
        let has_more = start + page.len() < roster.len();
        let next = if has_more {
            page.last().cloned().unwrap_or_default()
        } else {
            String::new()
        };
        Ok((page, next, has_more))
    }

    /// How many members the conversation has.
    pub fn count_members(&self, caller: &Caller, id: &str) -> Result<u32, Error> {
        let cell = self.cell(id)?;
        if cell.lock().kind() == ConversationKind::ChatRoom {
            return self.room_online_count(&cell);
        }
        let st = cell.lock();
        st.require_member(&caller.user)?;
        Ok(st.members.len() as u32)
    }

    /// The size of a message or list page: `page_default` when 0, at most `page_max`.
    pub(super) fn page_size(&self, asked: u32) -> Result<usize, Error> {
        self.page_limit(
            asked,
            self.config.page_default,
            self.config.page_max,
            "page_max",
        )
    }

    /// Applies a page-size default and maximum (over the maximum is an error).
    pub(super) fn page_limit(
        &self,
        asked: u32,
        default: u32,
        max: u32,
        name: &str,
    ) -> Result<usize, Error> {
        match asked {
            0 => Ok(default as usize),
            n if n > max => Err(Error::LimitExceeded(format!("limit {n}; {name} is {max}"))),
            n => Ok(n as usize),
        }
    }
}

/// Whether `st` is a live group created with `unique` whose members are exactly `set`.
fn unique_of(st: &ConvState, set: &[UserId]) -> bool {
    st.require_live().is_ok()
        && st.record.unique
        && st.kind() == ConversationKind::Group
        && st.members.len() == set.len()
        && set.iter().all(|u| st.members.contains_key(u))
}

/// What the lookup of a unique group reads, shared with the registry, so that it runs on a
/// blocking thread.
struct UniqueWalk {
    store: Arc<dyn crate::store::Store>,
    convs: Arc<dashmap::DashMap<u64, Arc<ConvCell>, super::NumHash>>,
    heads: super::Heads,
}

impl UniqueWalk {
    /// The number of the live group created with `unique` whose members are exactly `set`
    /// (sorted, `creator` among them), and how many conversations it looked at. The group is
    /// in the list of each of its members, so only the conversations both in the creator's
    /// list and in one other member's are candidates (all of the creator's when the set is
    /// the creator alone). Of those, temporary conversations (by their number) and those whose
    /// list head says they are no group are skipped without a read; a loaded one is checked in
    /// memory; of the rest, the record is read, and the members of a live unique group.
    fn run(&self, creator: &UserId, set: &[UserId]) -> (Result<Option<u64>, Error>, usize) {
        let mut looked = 0;
        let found = self.find(creator, set, &mut looked);
        (found, looked)
    }

    fn find(
        &self,
        creator: &UserId,
        set: &[UserId],
        looked: &mut usize,
    ) -> Result<Option<u64>, Error> {
        let mine = self.store.list_rows(creator)?;
        *looked += mine.len();
        let candidates: Vec<u64> = match set.iter().find(|u| *u != creator) {
            Some(other) => {
                let theirs = self.store.list_rows(other)?;
                *looked += theirs.len();
                both(mine.iter().map(|r| r.conv), theirs.iter().map(|r| r.conv))
            }
            None => mine.iter().map(|r| r.conv).collect(),
        };
        let group = ConversationKind::Group as i32;
        for num in candidates {
            if num & protocol::TEMPORARY_BIT != 0 {
                continue;
            }
            if self.heads.get(&num).is_some_and(|h| h.kind() != group) {
                continue;
            }
            let cell = self.convs.get(&num).map(|c| c.clone());
            let same = match cell {
                Some(cell) => unique_of(&cell.lock(), set),
                None => {
                    match self.store.conversation(num)? {
                        Some(r) if r.unique && r.deleted_at == 0 && r.kind == group => {}
                        _ => continue,
                    }
                    let members = self.store.members(num)?;
                    members.len() == set.len()
                        && members.iter().all(|(u, _)| set.binary_search(u).is_ok())
                }
            };
            if same {
                return Ok(Some(num));
            }
        }
        Ok(None)
    }
}

/// The numbers in both of two ascending sequences, ascending.
fn both(a: impl Iterator<Item = u64>, b: impl Iterator<Item = u64>) -> Vec<u64> {
    let (mut a, mut b) = (a.peekable(), b.peekable());
    let mut out = Vec::new();
    while let (Some(&x), Some(&y)) = (a.peek(), b.peek()) {
        match x.cmp(&y) {
            std::cmp::Ordering::Less => {
                a.next();
            }
            std::cmp::Ordering::Greater => {
                b.next();
            }
            std::cmp::Ordering::Equal => {
                out.push(x);
                a.next();
                b.next();
            }
        }
    }
    out
}
