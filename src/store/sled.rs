//! The sled 0.34 engine: one tree, `apply_batch` for atomic commits, `flush` for durability.
//!
//! sled's flush on Linux uses `sync_file_range`, which survives a process crash but does not
//! promise to survive power loss. sled 0.34 does not give back (or, in our measurements, reuse)
//! the space of deleted keys; see the README's storage section.

use super::StoreError;
use super::kv::{KvStore, OrderedKv, Rows, Write};
use std::path::Path;
use std::time::{Duration, Instant};

/// A sled database holding one tidings keyspace.
pub struct Sled {
    db: sled::Db,
    tree: sled::Tree,
}

fn engine(e: sled::Error) -> StoreError {
    StoreError::Engine(e.to_string())
}

/// How long `open` waits for the store's file lock. sled 0.34 releases the lock from a
/// background thread after the `Db` is dropped, so a store closed and reopened in one process
/// (a restart in place, a dump loaded and then opened) can find it still held for a moment on a
/// loaded machine. A lock held by another process is still refused, after this wait.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// Opens (or creates) a sled store in `dir`.
pub fn open(dir: &Path, cache_bytes: u64) -> Result<KvStore<Sled>, StoreError> {
    let deadline = Instant::now() + LOCK_WAIT;
    let db = loop {
        match sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .open()
        {
            Ok(db) => break db,
            // sled reports a held lock as an `Other` I/O error with this text.
            Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                if Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                return Err(StoreError::Engine(format!(
                    "{} is in use by another process (its lock is held): {e}",
                    dir.display()
                )));
            }
            Err(e) => return Err(engine(e)),
        }
    };
    let tree = db.open_tree("tidings").map_err(engine)?;
    Ok(KvStore::new(Sled { db, tree }))
}

impl OrderedKv for Sled {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tree.get(key).map_err(engine)?.map(|v| v.to_vec()))
    }

    fn range(
        &self,
        lo: &[u8],
        hi: Option<&[u8]>,
        descending: bool,
        limit: usize,
    ) -> Result<Rows, StoreError> {
        use std::ops::Bound;
        let upper = hi.map_or(Bound::Unbounded, Bound::Excluded);
        let range = self.tree.range::<&[u8], _>((Bound::Included(lo), upper));
        let mut out = Vec::new();
        let mut take = |kv: sled::Result<(sled::IVec, sled::IVec)>| -> Result<bool, StoreError> {
            let (k, v) = kv.map_err(engine)?;
            out.push((k.to_vec(), v.to_vec()));
            Ok(out.len() < limit)
        };
        if limit == 0 {
            return Ok(out);
        }
        if descending {
            for kv in range.rev() {
                if !take(kv)? {
                    break;
                }
            }
        } else {
            for kv in range {
                if !take(kv)? {
                    break;
                }
            }
        }
        Ok(out)
    }

    fn for_each(&self, f: &mut super::EntrySink<'_>) -> Result<(), StoreError> {
        for kv in self.tree.iter() {
            let (k, v) = kv.map_err(engine)?;
            f(&k, &v)?;
        }
        Ok(())
    }

    fn apply(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for w in writes {
            match w {
                Write::Put(k, v) => batch.insert(k, v),
                Write::Delete(k) => batch.remove(k),
            }
        }
        self.tree.apply_batch(batch).map_err(engine)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(engine)
    }

    fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.db.size_on_disk().map_err(engine)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn conformance() {
        super::super::conformance::run(&|dir| Box::new(super::open(dir, 8 << 20).unwrap()));
    }
}
