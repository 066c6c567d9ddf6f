//! Turns at something scarce, shared among users: each user holds at most a given number at
//! once, and a user's further requests wait behind their own, in order, so one user's burst
//! never stands in front of everyone else's. Used with a shared [`tokio::sync::Semaphore`]
//! taken after the user's turn: the pre-send hook's slots, and the blocking threads' turns at
//! CPU-heavy work.

use crate::store::UserId;
use dashmap::DashMap;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Each user's turns, created on demand; a user's entry goes when none of their turns is held
/// or waited for, so the table holds only users at work.
pub struct PerUser {
    users: DashMap<UserId, (Arc<Semaphore>, usize)>,
    per_user: usize,
}

impl PerUser {
    /// At most `per_user` turns per user at once (at least one).
    pub fn new(per_user: usize) -> PerUser {
        PerUser {
            users: DashMap::new(),
            per_user: per_user.max(1),
        }
    }

    /// Waits for one of `user`'s turns, behind their earlier requests.
    pub async fn take(&self, user: &UserId) -> UserTurn<'_> {
        let semaphore = {
            let mut e = self
                .users
                .entry(user.clone())
                .or_insert_with(|| (Arc::new(Semaphore::new(self.per_user)), 0));
            e.1 += 1;
            e.0.clone()
        };
        let mut turn = UserTurn {
            table: self,
            user: user.clone(),
            permit: None,
        };
        // Never closed.
        turn.permit = semaphore.acquire_owned().await.ok();
        turn
    }

    /// Users with a turn held or waited for.
    pub fn users(&self) -> usize {
        self.users.len()
    }
}

/// One of a user's turns, held (or, while [`PerUser::take`] waits, waited for: dropping it
/// then gives up the place).
pub struct UserTurn<'a> {
    table: &'a PerUser,
    user: UserId,
    permit: Option<OwnedSemaphorePermit>,
}

impl Drop for UserTurn<'_> {
    fn drop(&mut self) {
        self.permit = None;
        if let dashmap::Entry::Occupied(mut e) = self.table.users.entry(self.user.clone()) {
            e.get_mut().1 -= 1;
            if e.get().1 == 0 {
                e.remove();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_user_waits_behind_their_own_turns_and_not_behind_others() {
        let turns = PerUser::new(2);
        let (a, b) = (UserId::from("a"), UserId::from("b"));
        let first = turns.take(&a).await;
        let second = turns.take(&a).await;
        // A third of a's waits; b's is given at once.
        let mut third = Box::pin(turns.take(&a));
        assert!(futures_util::poll!(&mut third).is_pending());
        let other = turns.take(&b).await;
        assert_eq!(turns.users(), 2);
        drop(first);
        let third = third.await;
        drop((second, third, other));
        assert_eq!(turns.users(), 0);
    }

    #[tokio::test]
    async fn a_wait_given_up_leaves_nothing_behind() {
        let turns = PerUser::new(1);
        let a = UserId::from("a");
        let held = turns.take(&a).await;
        let mut waiting = Box::pin(turns.take(&a));
        assert!(futures_util::poll!(&mut waiting).is_pending());
        assert_eq!(turns.users(), 1);
        drop(waiting);
        drop(held);
        assert_eq!(turns.users(), 0);
    }
}
