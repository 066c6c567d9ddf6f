//! What belongs to a user rather than to a conversation: whom they block, and their profile.

use super::writer::wait;
use super::{Caller, ConvCell, Error, Registry};
use crate::hub::{Delivery, Recipients};
use crate::protocol::{
    self,
    pb::{self, ConversationKind, Profile},
};
use crate::store::{Op, UserId};
use std::collections::{BTreeMap, BTreeSet};

/// What a profile update changes.
#[derive(Debug, Clone, Default)]
pub struct ProfileUpdate {
    /// `None`: unchanged.
    pub display_name: Option<String>,
    pub avatar_url: Option<String>,
    pub set_fields: BTreeMap<String, String>,
    pub remove_fields: Vec<String>,
}

/// Serializes profile changes (read, change, write) and user blocks (count, write).
#[derive(Default)]
pub(crate) struct UserLocks(pub(super) tokio::sync::Mutex<()>);

impl Registry {
    /// `caller` blocks `other`: no new direct conversation from them, and their messages in
    /// the existing one are refused. At most `max_blocked_users`.
    pub async fn block_user(&self, caller: &Caller, other: &str) -> Result<(), Error> {
        self.check_user_id(other)?;
        if *caller.user == *other {
            return Err(Error::InvalidArgument("you cannot block yourself".into()));
        }
        let _serial = self.user_locks.0.lock().await;
        if self.store.user_block(&caller.user, other)?.is_some() {
            return Ok(());
        }
        let max = self.config.max_blocked_users;
        if self.store.user_blocks(&caller.user, "", max + 1)?.len() >= max {
            return Err(Error::LimitExceeded(format!(
                "{max} users blocked; max_blocked_users is {max}"
            )));
        }
        self.change_block(Op::PutUserBlock {
            user: caller.user.clone(),
            blocked: UserId::from(other),
            at: self.now(),
        })
        .await
    }

    pub async fn unblock_user(&self, caller: &Caller, other: &str) -> Result<(), Error> {
        self.check_user_id(other)?;
        let _serial = self.user_locks.0.lock().await;
        self.change_block(Op::DeleteUserBlock {
            user: caller.user.clone(),
            blocked: UserId::from(other),
        })
        .await
    }

    /// Commits a block or an unblock; once it has, cached block states are stale.
    async fn change_block(&self, op: Op) -> Result<(), Error> {
        let permit = self.writer.reserve().await?;
        let generation = self.block_gen.clone();
        let stale: super::writer::AfterCommit = Box::new(move || {
            generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        });
        let rx = self
            .writer
            .submit_then(permit, vec![op], Vec::new(), Vec::new(), Some(stale));
        Ok(wait(rx).await?)
    }

    /// A page of whom the caller blocks (in a stable order; `cursor`: the last id of the
    /// previous page).
    pub fn list_blocked_users(
        &self,
        caller: &Caller,
        cursor: &str,
        limit: u32,
    ) -> Result<(Vec<pb::BlockedUser>, String, bool), Error> {
        let limit = self.page_limit(
            limit,
            self.config.member_page_default,
            self.config.member_page_max,
            "member_page_max",
        )?;
        if !cursor.is_empty() {
            self.check_user_id(cursor)?;
        }
        let mut rows = self.store.user_blocks(&caller.user, cursor, limit + 1)?;
        let has_more = rows.len() > limit;
        rows.truncate(limit);
        let next = if has_more {
            rows.last().map(|(u, _)| u.to_string()).unwrap_or_default()
        } else {
            String::new()
        };
        let users = rows
            .into_iter()
            .map(|(u, at)| pb::BlockedUser {
                user_id: u.to_string(),
                blocked_at: at,
            })
            .collect();
        Ok((users, next, has_more))
    }

    /// Refuses `sender` in a direct conversation whose other member blocked them.
    /// The state is cached in the conversation until a block changes anywhere, so a send
    /// reads the store only after one did.
    pub(super) fn require_not_blocked(&self, cell: &ConvCell, sender: &str) -> Result<(), Error> {
        // Read before the store: a block committed after this is seen by the next send.
        let generation = self.block_gen.load(std::sync::atomic::Ordering::Acquire);
        let pair = {
            let st = cell.lock();
            if st.kind() != ConversationKind::Direct {
                return Ok(());
            }
            let Some(i) = st.record.pair.iter().position(|u| **u == *sender) else {
                return Ok(());
            };
            if let Some((g, blocked)) = st.blocks
                && g == generation
            {
                return if blocked[i] {
                    Err(Error::Blocked)
                } else {
                    Ok(())
                };
            }
            st.record.pair.clone()
        };
        let [a, b] = &pair[..] else {
            return Ok(());
        };
        let blocked = [
            self.store.user_block(b, a)?.is_some(),
            self.store.user_block(a, b)?.is_some(),
        ];
        let i = usize::from(**b == *sender);
        cell.lock().blocks = Some((generation, blocked));
        if blocked[i] {
            Err(Error::Blocked)
        } else {
            Ok(())
        }
    }

    /// Refuses `sender` when `peer` blocked them.
    pub(super) fn require_not_blocked_by(&self, peer: &str, sender: &str) -> Result<(), Error> {
        if self.store.user_block(peer, sender)?.is_some() {
            return Err(Error::Blocked);
        }
        Ok(())
    }

    fn check_profile(&self, p: &Profile) -> Result<(), Error> {
        let cfg = &self.config;
        let fields: usize = p.fields.iter().map(|(k, v)| k.len() + v.len()).sum();
        for (what, size, max, name) in [
            (
                "display_name",
                p.display_name.len(),
                cfg.max_display_name_bytes,
                "max_display_name_bytes",
            ),
            (
                "avatar_url",
                p.avatar_url.len(),
                cfg.max_avatar_url_bytes,
                "max_avatar_url_bytes",
            ),
            (
                "fields",
                fields,
                cfg.max_profile_fields_bytes,
                "max_profile_fields_bytes",
            ),
        ] {
            if size > max {
                return Err(Error::LimitExceeded(format!(
                    "{what} is {size} bytes; {name} is {max}"
                )));
            }
        }
        super::check_text("display_name", &p.display_name)?;
        super::check_text("avatar_url", &p.avatar_url)?;
        p.fields
            .keys()
            .try_for_each(|k| super::check_text("a profile field key", k))
    }

    /// Changes `user`'s profile: the user themselves, or the app's backend (an admin caller).
    /// Pushes ProfileChanged to everyone who shares a conversation with the user, and to the
    /// user's other sessions; nobody else.
    pub async fn set_profile(
        &self,
        caller: &Caller,
        user: &str,
        update: ProfileUpdate,
    ) -> Result<Profile, Error> {
        self.check_user_id(user)?;
        if !caller.admin && *caller.user != *user {
            return Err(Error::PermissionDenied(
                "only the user and the app's backend may change a profile",
            ));
        }
        let _serial = self.user_locks.0.lock().await;
        let mut p = self.profile_of(user)?;
        if let Some(name) = update.display_name {
            p.display_name = name;
        }
        if let Some(url) = update.avatar_url {
            p.avatar_url = url;
        }
        for k in &update.remove_fields {
            p.fields.remove(k);
        }
        p.fields.extend(update.set_fields);
        self.check_profile(&p)?;
        p.updated_at = self.now();
        let who = UserId::from(user);
        let audience = self.audience_of(&who)?;
        let recipients = audience.len();
        let permit = self.writer.reserve().await?;
        let ops = vec![Op::PutProfile {
            user: who,
            profile: p.clone(),
        }];
        let push = Delivery {
            to: Recipients::Users(audience.into_iter().collect::<Vec<_>>().into()),
            frame: protocol::push(pb::server_frame::Body::ProfileChanged(pb::ProfileChanged {
                profile: Some(p.clone()),
            })),
            user_seq: 0,
            except_session: caller.session,
        };
        wait(self.writer.submit(permit, ops, vec![push], Vec::new())).await?;
        if !caller.admin {
            self.charge_profile(&caller.user, recipients);
        }
        Ok(p)
    }

    /// Everyone who has `user` in a member list or a direct conversation, and the user: the
    /// members of the user's first `profile_push_max_conversations` direct, group and
    /// temporary conversations (by number), at most `profile_push_max_recipients` users.
    /// System conversations and chat rooms are left out (their subscribers and members do
    /// not list each other). The bounds keep a change by a user in thousands of large groups
    /// from pushing to everyone at once; those left out see the new profile when they next
    /// read member lists, list entries or presence.
    fn audience_of(&self, user: &UserId) -> Result<BTreeSet<UserId>, Error> {
        let max_convs = self.config.profile_push_max_conversations;
        let max_users = self.config.profile_push_max_recipients.max(1);
        let mut out: BTreeSet<UserId> = [user.clone()].into();
        let mut convs = 0;
        for (num, rec) in self.store.user_conversations(user)? {
            if convs >= max_convs || out.len() >= max_users {
                break;
            }
            if !matches!(
                ConversationKind::try_from(rec.kind),
                Ok(ConversationKind::Direct
                    | ConversationKind::Group
                    | ConversationKind::Temporary)
            ) {
                continue;
            }
            let Ok(cell) = self.cell_by_num(num) else {
                continue;
            };
            convs += 1;
            let st = cell.lock();
            if st.require_member(user).is_ok() {
                let room = max_users - out.len();
                out.extend(st.roster.iter().take(room).cloned());
            }
        }
        Ok(out)
    }

    /// A user's profile (empty, with `user_id` set, when none was set).
    pub fn profile_of(&self, user: &str) -> Result<Profile, Error> {
        Ok(self.store.profile(user)?.unwrap_or_else(|| Profile {
            user_id: user.to_owned(),
            ..Default::default()
        }))
    }

    /// Profiles of users named by a request (at most `max_members_per_request`).
    pub fn profiles(&self, users: &[String]) -> Result<Vec<Profile>, Error> {
        if users.len() > self.config.max_members_per_request {
            return Err(Error::LimitExceeded(format!(
                "{} users named; max_members_per_request is {}",
                users.len(),
                self.config.max_members_per_request
            )));
        }
        users
            .iter()
            .map(|u| {
                self.check_user_id(u)?;
                self.profile_of(u)
            })
            .collect()
    }
}
