//! The redb engine: one table in one file, a write transaction per commit.
//!
//! Commits use `Durability::None` (visible at once, not yet durable); `flush` commits an empty
//! transaction with `Durability::Immediate`, which fsyncs everything before it. So the writer's
//! group commit costs one fsync per batch, and acked data survives power loss as well as a
//! process crash. Freed pages are reused within the file.

use super::StoreError;
use super::kv::{KvStore, OrderedKv, Rows, Write};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::{Path, PathBuf};

const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("tidings");

/// File name of the database inside the data directory.
pub const FILE: &str = "tidings.redb";

/// A redb database holding one tidings keyspace.
pub struct Redb {
    db: Database,
    path: PathBuf,
}

fn engine(e: impl std::fmt::Display) -> StoreError {
    StoreError::Engine(e.to_string())
}

/// Opens (or creates) a redb store in `dir`.
pub fn open(dir: &Path, cache_bytes: u64) -> Result<KvStore<Redb>, StoreError> {
    std::fs::create_dir_all(dir).map_err(engine)?;
    let path = dir.join(FILE);
    let db = Database::builder()
        .set_cache_size(cache_bytes as usize)
        .create(&path)
        .map_err(engine)?;
    let w = db.begin_write().map_err(engine)?;
    w.open_table(TABLE).map_err(engine)?;
    w.commit().map_err(engine)?;
    Ok(KvStore::new(Redb { db, path }))
}

impl OrderedKv for Redb {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let r = self.db.begin_read().map_err(engine)?;
        let t = r.open_table(TABLE).map_err(engine)?;
        Ok(t.get(key).map_err(engine)?.map(|g| g.value().to_vec()))
    }

    fn range(
        &self,
        lo: &[u8],
        hi: Option<&[u8]>,
        descending: bool,
        limit: usize,
    ) -> Result<Rows, StoreError> {
        use std::ops::Bound;
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        let r = self.db.begin_read().map_err(engine)?;
        let t = r.open_table(TABLE).map_err(engine)?;
        let upper = hi.map_or(Bound::Unbounded, Bound::Excluded);
        let range = t
            .range::<&[u8]>((Bound::Included(lo), upper))
            .map_err(engine)?;
        let rows: Box<dyn Iterator<Item = _>> = if descending {
            Box::new(range.rev())
        } else {
            Box::new(range)
        };
        for row in rows {
            let (k, v) = row.map_err(engine)?;
            out.push((k.value().to_vec(), v.value().to_vec()));
            if out.len() == limit {
                break;
            }
        }
        Ok(out)
    }

    fn for_each(&self, f: &mut super::EntrySink<'_>) -> Result<(), StoreError> {
        let r = self.db.begin_read().map_err(engine)?;
        let t = r.open_table(TABLE).map_err(engine)?;
        for row in t.iter().map_err(engine)? {
            let (k, v) = row.map_err(engine)?;
            f(k.value(), v.value())?;
        }
        Ok(())
    }

    fn apply(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        let mut w = self.db.begin_write().map_err(engine)?;
        w.set_durability(Durability::None).map_err(engine)?;
        {
            let mut t = w.open_table(TABLE).map_err(engine)?;
            for write in &writes {
                match write {
                    Write::Put(k, v) => {
                        t.insert(k.as_slice(), v.as_slice()).map_err(engine)?;
                    }
                    Write::Delete(k) => {
                        t.remove(k.as_slice()).map_err(engine)?;
                    }
                }
            }
        }
        w.commit().map_err(engine)
    }

    fn flush(&self) -> Result<(), StoreError> {
        let mut w = self.db.begin_write().map_err(engine)?;
        w.set_durability(Durability::Immediate).map_err(engine)?;
        w.commit().map_err(engine)
    }

    fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(std::fs::metadata(&self.path).map_err(engine)?.len())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn conformance() {
        super::super::conformance::run(&|dir| {
            Box::new(super::open(dir, 8 << 20).expect("open redb"))
        });
    }
}
