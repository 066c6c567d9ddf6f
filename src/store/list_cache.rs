//! The list rows of users with long conversation lists, kept in memory and updated by every
//! commit that writes them, so the first page of a 5,000-entry list does not read and decode
//! 5,000 records from the store every time.
//!
//! A user's rows are loaded on their first listing (lists of at least [`MIN_ROWS`] entries are
//! kept; shorter ones cost little to read). Afterwards each commit that puts or deletes one of
//! the user's per-user records applies the same change to the kept rows (write-through: a
//! delivery ack or a pin does not throw away the other 4,999); a purge or a bulk load drops
//! everything. A load that runs while commits change the user's records collects those changes
//! and applies them on top of what it read, so a load that read before a commit never keeps
//! the old state. At most [`MAX_ROWS`] rows are kept in all (about 16 MiB); over it, the rows
//! of other users are dropped.

use super::{ListRow, Op, StoreError, UserId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// Lists shorter than this are not kept.
pub const MIN_ROWS: usize = 128;
/// Most rows kept, over every user (64 bytes each).
pub const MAX_ROWS: usize = 262_144;

enum Slot {
    Ready(Arc<Vec<ListRow>>),
    /// A load is reading the store; the changes committed meanwhile, in commit order.
    Loading {
        epoch: u64,
        changes: Vec<(u64, Option<ListRow>)>,
    },
}

#[derive(Default)]
struct Inner {
    users: HashMap<UserId, Slot>,
    /// Rows in `Ready` slots.
    rows: usize,
    /// Bumped when everything is dropped: a load begun before is not kept.
    epoch: u64,
}

#[derive(Default)]
pub struct ListCache(Mutex<Inner>);

/// Applies one change to rows sorted by conversation; returns the change in row count.
fn apply(rows: &mut Vec<ListRow>, conv: u64, row: Option<ListRow>) -> isize {
    match (rows.binary_search_by_key(&conv, |r| r.conv), row) {
        (Ok(i), Some(r)) => {
            rows[i] = r;
            0
        }
        (Ok(i), None) => {
            rows.remove(i);
            -1
        }
        (Err(i), Some(r)) => {
            rows.insert(i, r);
            1
        }
        (Err(_), None) => 0,
    }
}

impl ListCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `user`'s rows, sorted by conversation: kept ones, or read with `read` (and kept when
    /// the list is long enough).
    pub fn get(
        &self,
        user: &str,
        read: impl FnOnce() -> Result<Vec<ListRow>, StoreError>,
    ) -> Result<Arc<Vec<ListRow>>, StoreError> {
        let epoch = {
            let mut inner = self.lock();
            match inner.users.get(user) {
                Some(Slot::Ready(rows)) => return Ok(rows.clone()),
                // Another load of the same user is under way: read without keeping.
                Some(Slot::Loading { .. }) => None,
                None => {
                    let epoch = inner.epoch;
                    inner.users.insert(
                        UserId::from(user),
                        Slot::Loading {
                            epoch,
                            changes: Vec::new(),
                        },
                    );
                    Some(epoch)
                }
            }
        };
        let read = read();
        let Some(epoch) = epoch else {
            return read.map(Arc::new);
        };
        let mut inner = self.lock();
        let changes = match inner.users.remove(user) {
            Some(Slot::Loading { epoch: e, changes }) if e == epoch => changes,
            // Dropped meanwhile (a purge, a load): not ours to keep.
            Some(other) => {
                inner.users.insert(UserId::from(user), other);
                return read.map(Arc::new);
            }
            None => return read.map(Arc::new),
        };
        let mut rows = read?;
        for (conv, row) in changes {
            apply(&mut rows, conv, row);
        }
        let rows = Arc::new(rows);
        if rows.len() >= MIN_ROWS && rows.len() <= MAX_ROWS {
            while inner.rows + rows.len() > MAX_ROWS {
                let victim = inner.users.iter().find_map(|(u, s)| match s {
                    Slot::Ready(r) => Some((u.clone(), r.len())),
                    Slot::Loading { .. } => None,
                });
                let Some((victim, n)) = victim else { break };
                inner.users.remove(&victim);
                inner.rows -= n;
            }
            inner.rows += rows.len();
            inner
                .users
                .insert(UserId::from(user), Slot::Ready(rows.clone()));
        }
        Ok(rows)
    }

    /// Applies what a successful commit wrote to the kept rows.
    pub fn committed(&self, ops: &[Op]) {
        let touches = |o: &Op| {
            matches!(
                o,
                Op::PutUserConversation { .. }
                    | Op::DeleteUserConversation { .. }
                    | Op::PurgeConversation { .. }
            )
        };
        if !ops.iter().any(touches) {
            return;
        }
        let mut inner = self.lock();
        if inner.users.is_empty() {
            return;
        }
        for op in ops {
            let (user, conv, row) = match op {
                Op::PutUserConversation { user, conv, record } => {
                    (user, *conv, Some(ListRow::of(*conv, record)))
                }
                Op::DeleteUserConversation { user, conv } => (user, *conv, None),
                Op::PurgeConversation { .. } => {
                    Self::drop_all(&mut inner);
                    return;
                }
                _ => continue,
            };
            let inner = &mut *inner;
            match inner.users.get_mut(user) {
                Some(Slot::Ready(rows)) => {
                    let delta = apply(Arc::make_mut(rows), conv, row);
                    inner.rows = inner.rows.saturating_add_signed(delta);
                }
                Some(Slot::Loading { changes, .. }) => changes.push((conv, row)),
                None => {}
            }
        }
    }

    /// Forgets everything (the store changed under it in bulk).
    pub fn clear(&self) {
        Self::drop_all(&mut self.lock());
    }

    fn drop_all(inner: &mut Inner) {
        inner.users.clear();
        inner.rows = 0;
        inner.epoch += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::pb::UserConversationRecord;

    fn put(user: &str, conv: u64, pinned_at: i64) -> Op {
        Op::PutUserConversation {
            user: UserId::from(user),
            conv,
            record: UserConversationRecord {
                pinned_at,
                ..Default::default()
            },
        }
    }

    fn rows(n: u64) -> Vec<ListRow> {
        (0..n)
            .map(|c| ListRow::of(c * 2, &UserConversationRecord::default()))
            .collect()
    }

    #[test]
    fn kept_rows_follow_commits_and_a_load_racing_a_commit_keeps_it() {
        let cache = ListCache::default();
        let n = MIN_ROWS as u64;
        let first = cache.get("alice", || Ok(rows(n))).unwrap();
        assert_eq!(first.len(), MIN_ROWS);
        // Kept: the next get does not read.
        let again = cache.get("alice", || panic!("read again")).unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        // Write-through: a change, an insertion, a removal.
        cache.committed(&[put("alice", 2, 7), put("alice", 3, 9)]);
        cache.committed(&[Op::DeleteUserConversation {
            user: UserId::from("alice"),
            conv: 0,
        }]);
        let now = cache.get("alice", || panic!("read again")).unwrap();
        assert_eq!(now.len(), MIN_ROWS);
        assert_eq!(now[0].conv, 2);
        assert_eq!(now[0].pinned_at, 7);
        assert_eq!((now[1].conv, now[1].pinned_at), (3, 9));
        assert_eq!(first[0].conv, 0, "a reader's rows do not change under it");
        // A load during which a commit lands: the commit is applied on top of what was read.
        let bob = cache
            .get("bob", || {
                cache.committed(&[put("bob", 4, 5)]);
                Ok(rows(n))
            })
            .unwrap();
        assert_eq!(bob.iter().find(|r| r.conv == 4).unwrap().pinned_at, 5);
        // A purge drops everything, a load racing it included.
        let carol = cache
            .get("carol", || {
                cache.committed(&[Op::PurgeConversation { conv: 1 }]);
                Ok(rows(n))
            })
            .unwrap();
        assert_eq!(carol.len(), MIN_ROWS);
        let mut read = false;
        cache
            .get("carol", || {
                read = true;
                Ok(rows(n))
            })
            .unwrap();
        assert!(read, "carol's load raced a purge: not kept");
        let mut read = false;
        cache
            .get("alice", || {
                read = true;
                Ok(rows(n))
            })
            .unwrap();
        assert!(read, "the purge dropped alice's rows");
        // Short lists are not kept.
        cache.get("dave", || Ok(rows(3))).unwrap();
        let mut read = false;
        cache
            .get("dave", || {
                read = true;
                Ok(rows(3))
            })
            .unwrap();
        assert!(read);
    }

    #[test]
    fn rows_stay_within_the_bound() {
        let cache = ListCache::default();
        let per = MAX_ROWS / 4;
        for u in 0..10 {
            cache
                .get(&format!("u{u}"), || Ok(rows(per as u64)))
                .unwrap();
            assert!(cache.lock().rows <= MAX_ROWS);
        }
        assert_eq!(cache.lock().rows, 4 * per);
    }
}
