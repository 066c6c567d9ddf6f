//! Who may log in: the app's backend bans users and revokes tokens (admin API); every front
//! door asks [`Registry::check_access`] at login and token refresh.
//!
//! A ban and a revocation of a user's tokens are one record per user (`UserAccess`); a revoked
//! token id (`jti`) is kept until the token would have expired anyway, at most
//! `max_revoked_tokens` of them. Both are persisted before the call returns, and the user's
//! live sessions concerned are then closed at once (`CLOSE_BANNED`, `CLOSE_TOKEN_REVOKED`). A
//! login racing the call re-checks after registering its session whenever any such call
//! committed meanwhile ([`Registry::access_epoch`]), so none slips through.

use super::writer::wait;
use super::{Error, Registry};
use crate::protocol::pb::{CloseCode, UserAccess};
use crate::store::{Op, UserId};
use std::sync::atomic::Ordering;

/// Longest ban reason, bytes.
pub const MAX_BAN_REASON_BYTES: usize = 512;
/// Longest token id that can be revoked, bytes.
pub const MAX_JTI_BYTES: usize = 256;
/// A ban with no end.
pub const BANNED_FOREVER: i64 = i64::MAX;

/// Revoked tokens pruned per revocation (the ones that lapsed first).
const PRUNE: usize = 256;

impl Registry {
    /// Bumped each time a ban or a revocation commits: a login that checked before and
    /// registers after sees it moved and checks again.
    pub fn access_epoch(&self) -> u64 {
        self.access_epoch.load(Ordering::Acquire)
    }

    /// Whether `user` may log in with a credential issued at `issued_at_ms` (a JWT's `iat`, a
    /// LeanCloud signature's time; `None`: unknown, which a revocation refuses) with id `jti`.
    pub fn check_access(
        &self,
        user: &str,
        issued_at_ms: Option<i64>,
        jti: Option<&str>,
    ) -> Result<(), Error> {
        let now = self.now();
        if let Some(a) = self.store.user_access(user)? {
            if a.banned_until > now {
                return Err(Error::Banned(a.ban_reason));
            }
            if a.tokens_revoked_before > 0
                && issued_at_ms.is_none_or(|t| t < a.tokens_revoked_before)
            {
                return Err(Error::TokenRevoked);
            }
        }
        if let Some(jti) = jti
            && self
                .store
                .revoked_token(jti)?
                .is_some_and(|until| until > now)
        {
            return Err(Error::TokenRevoked);
        }
        Ok(())
    }

    /// The backend's record of `user` (default: nothing decided).
    pub fn access_of(&self, user: &str) -> Result<UserAccess, Error> {
        self.check_user_id(user)?;
        let mut a = self.store.user_access(user)?.unwrap_or_default();
        if a.banned_until <= self.now() {
            a.banned_until = 0;
            a.ban_reason.clear();
            a.banned_at = 0;
        }
        Ok(a)
    }

    /// Bans `user` until `until` (ms; [`BANNED_FOREVER`]: until lifted), or lifts the ban
    /// (`None`). A ban closes the user's live sessions. Returns the record and how many
    /// sessions were closed.
    pub async fn set_ban(
        &self,
        user: &str,
        ban: Option<(i64, String)>,
    ) -> Result<(UserAccess, usize), Error> {
        self.check_user_id(user)?;
        let now = self.now();
        if let Some((until, reason)) = &ban {
            if *until <= now {
                return Err(Error::InvalidArgument(
                    "a ban must end in the future".into(),
                ));
            }
            if reason.len() > MAX_BAN_REASON_BYTES {
                return Err(Error::LimitExceeded(format!(
                    "reason is {} bytes; at most {MAX_BAN_REASON_BYTES}",
                    reason.len()
                )));
            }
        }
        let _serial = self.user_locks.0.lock().await;
        let mut a = self.store.user_access(user)?.unwrap_or_default();
        match &ban {
            Some((until, reason)) => {
                a.banned_until = *until;
                a.ban_reason = reason.clone();
                a.banned_at = now;
            }
            None => {
                a.banned_until = 0;
                a.ban_reason.clear();
                a.banned_at = 0;
            }
        }
        self.put_access(user, &a).await?;
        let closed = if ban.is_some() {
            self.hub.kick_user(user, None, CloseCode::CloseBanned)
        } else {
            0
        };
        Ok((a, closed))
    }

    /// Refuses every credential of `user` issued before this second (JWTs by `iat`, LeanCloud
    /// logins by their signature's or session token's time) and closes the user's live
    /// sessions. Returns how many were closed.
    pub async fn revoke_tokens(&self, user: &str) -> Result<usize, Error> {
        self.check_user_id(user)?;
        let now = self.now();
        let _serial = self.user_locks.0.lock().await;
        let mut a = self.store.user_access(user)?.unwrap_or_default();
        // Whole seconds, as `iat` counts: a token minted right after this call, in the same
        // second, is not refused.
        a.tokens_revoked_before = now - now.rem_euclid(1000);
        self.put_access(user, &a).await?;
        Ok(self.hub.kick_user(user, None, CloseCode::CloseTokenRevoked))
    }

    /// Refuses the token with id `jti` until `until` (ms, when it would expire anyway) and
    /// closes `user`'s live sessions logged in with it. Returns how many were closed.
    pub async fn revoke_token(&self, user: &str, jti: &str, until: i64) -> Result<usize, Error> {
        self.check_user_id(user)?;
        if jti.is_empty() || jti.len() > MAX_JTI_BYTES {
            return Err(Error::InvalidArgument(format!(
                "jti must be 1..={MAX_JTI_BYTES} bytes"
            )));
        }
        let now = self.now();
        if until <= now {
            return Err(Error::InvalidArgument(
                "expires_at has passed: the token is refused anyway".into(),
            ));
        }
        let _serial = self.user_locks.0.lock().await;
        // Tokens that lapsed go first; then the cap.
        let mut ops = Vec::new();
        let mut count = self.revoked_count()?;
        for (at, old) in self.store.revoked_tokens(PRUNE)? {
            if at > now {
                break;
            }
            ops.push(Op::DeleteRevokedToken {
                jti: old,
                until: at,
            });
            count = count.saturating_sub(1);
        }
        let previous = self.store.revoked_token(jti)?;
        if previous.is_none() && count >= self.config.max_revoked_tokens {
            return Err(Error::LimitExceeded(format!(
                "{count} tokens revoked and not expired; max_revoked_tokens is {}",
                self.config.max_revoked_tokens
            )));
        }
        if let Some(at) = previous {
            ops.push(Op::DeleteRevokedToken {
                jti: jti.to_owned(),
                until: at,
            });
        } else {
            count += 1;
        }
        ops.push(Op::PutRevokedToken {
            jti: jti.to_owned(),
            until,
        });
        let permit = self.writer.reserve().await?;
        wait(self.writer.submit(permit, ops, Vec::new(), Vec::new())).await?;
        *self.revoked.lock().unwrap_or_else(|p| p.into_inner()) = Some(count);
        self.access_epoch.fetch_add(1, Ordering::AcqRel);
        Ok(self.hub.kick_token(user, jti, CloseCode::CloseTokenRevoked))
    }

    /// How many revoked token ids are stored (counted once, then kept up to date).
    fn revoked_count(&self) -> Result<usize, Error> {
        let mut known = self.revoked.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = *known {
            return Ok(n);
        }
        let n = self.store.revoked_tokens(usize::MAX)?.len();
        *known = Some(n);
        Ok(n)
    }

    async fn put_access(&self, user: &str, a: &UserAccess) -> Result<(), Error> {
        let user = UserId::from(user);
        let op = if a.banned_until == 0 && a.tokens_revoked_before == 0 {
            Op::DeleteUserAccess { user }
        } else {
            Op::PutUserAccess {
                user,
                access: a.clone(),
            }
        };
        let permit = self.writer.reserve().await?;
        wait(self.writer.submit(permit, vec![op], Vec::new(), Vec::new())).await?;
        self.access_epoch.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }
}
