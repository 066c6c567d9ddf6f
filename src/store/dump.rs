//! A portable, engine-neutral dump of a store, for backups and for moving between engines.
//!
//! Format (version 1): the 16 bytes `TIDINGS-DUMP-v1\n`; then one record per entry, in key
//! order: key length (u32, big-endian), key, value length (u32, big-endian), value; then an end
//! marker (key length 0xFFFFFFFF), the number of entries (u64) and the FNV-1a 64-bit hash of
//! every byte before the marker (u64). Keys and values are the shared layout of
//! [`super::keys`], so any engine can load what any engine dumped.

use super::{Store, StoreError};
use std::io::{Read, Write};

const MAGIC: &[u8; 16] = b"TIDINGS-DUMP-v1\n";
const END: u32 = u32::MAX;
/// Entries loaded per atomic batch.
const BATCH: usize = 10_000;
/// No key or value is larger than this; a larger length means a damaged file.
const MAX_LEN: u32 = 64 << 20;

/// A dump could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a tidings dump (bad header)")]
    BadHeader,
    #[error("the dump is truncated or corrupt: {0}")]
    Corrupt(String),
    #[error("the target store is not empty; import only into a new data directory")]
    NotEmpty,
}

/// FNV-1a, 64 bit: enough to catch truncation and corruption of a file in transit.
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn update(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// A writer that hashes what passes through it.
struct Hashing<'a, W: Write> {
    inner: &'a mut W,
    hash: Fnv,
}

impl<W: Write> Hashing<'_, W> {
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.hash.update(bytes);
        self.inner.write_all(bytes)
    }
}

/// Writes every entry of `store` to `out`. Returns the number of entries.
pub fn export(store: &dyn Store, out: &mut impl Write) -> Result<u64, DumpError> {
    let mut w = Hashing {
        inner: out,
        hash: Fnv::new(),
    };
    w.put(MAGIC)?;
    let mut count = 0u64;
    store.dump(&mut |k, v| {
        let io = |e: std::io::Error| StoreError::Engine(format!("writing the dump: {e}"));
        w.put(&(k.len() as u32).to_be_bytes()).map_err(io)?;
        w.put(k).map_err(io)?;
        w.put(&(v.len() as u32).to_be_bytes()).map_err(io)?;
        w.put(v).map_err(io)?;
        count += 1;
        Ok(())
    })?;
    let hash = w.hash.0;
    out.write_all(&END.to_be_bytes())?;
    out.write_all(&count.to_be_bytes())?;
    out.write_all(&hash.to_be_bytes())?;
    out.flush()?;
    Ok(count)
}

/// A backup of a running store: a dump of one consistent view (everything committed when it
/// starts; writes go on meanwhile) into `dir`, named after `now_ms`, written to a temporary
/// name, flushed to disk, then renamed, so a file with the final name is always whole.
/// Returns the file, its entries and its size. `tidings store import` restores it.
pub fn backup(
    store: &dyn Store,
    dir: &std::path::Path,
    now_ms: i64,
) -> Result<(std::path::PathBuf, u64, u64), DumpError> {
    std::fs::create_dir_all(dir)?;
    let name = format!("tidings-{now_ms}.dump");
    let path = dir.join(&name);
    let partial = dir.join(format!(".{name}.partial"));
    let file = std::fs::File::create(&partial)?;
    let mut w = std::io::BufWriter::new(file);
    let written = export(store, &mut w).and_then(|n| {
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok((n, file.metadata()?.len()))
    });
    let (entries, bytes) = match written {
        Ok(x) => x,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    std::fs::rename(&partial, &path)?;
    if let Ok(d) = std::fs::File::open(dir) {
        // The rename itself is durable once the directory is.
        let _ = d.sync_all();
    }
    Ok((path, entries, bytes))
}

fn truncated(e: std::io::Error) -> DumpError {
    DumpError::Corrupt(e.to_string())
}

/// Reads one length-prefixed field; `None` at the end marker (where `may_end`).
fn read_field(
    input: &mut impl Read,
    hash: &mut Fnv,
    may_end: bool,
) -> Result<Option<Vec<u8>>, DumpError> {
    let mut len = [0u8; 4];
    input.read_exact(&mut len).map_err(truncated)?;
    let n = u32::from_be_bytes(len);
    if may_end && n == END {
        return Ok(None);
    }
    if n > MAX_LEN {
        return Err(DumpError::Corrupt(format!("a field claims {n} bytes")));
    }
    hash.update(&len);
    let mut field = vec![0u8; n as usize];
    input.read_exact(&mut field).map_err(truncated)?;
    hash.update(&field);
    Ok(Some(field))
}

/// Loads a dump into an empty `store` and flushes it. Returns the number of entries.
///
/// The store is marked as importing ([`crate::store::keys::IMPORTING`]) before the first entry
/// is loaded, and the mark is removed only after the whole dump is loaded, its count and
/// checksum verified and everything flushed. So a truncated or damaged dump, or an import
/// stopped midway, leaves a store that [`crate::store::open`] refuses; importing again into it
/// clears what the failed import loaded and starts over.
pub fn import(store: &dyn Store, input: &mut impl Read) -> Result<u64, DumpError> {
    let again = store.importing()?;
    if !again && !store.is_empty()? {
        return Err(DumpError::NotEmpty);
    }
    let mut hash = Fnv::new();
    let mut magic = [0u8; 16];
    input
        .read_exact(&mut magic)
        .map_err(|_| DumpError::BadHeader)?;
    if &magic != MAGIC {
        return Err(DumpError::BadHeader);
    }
    hash.update(&magic);
    store.mark_importing(true)?;
    store.flush()?;
    if again {
        store.clear()?;
    }
    let mut batch = Vec::with_capacity(BATCH);
    let mut count = 0u64;
    let version_key = crate::store::keys::format_version();
    let mut versioned = false;
    while let Some(key) = read_field(input, &mut hash, true)? {
        let value = read_field(input, &mut hash, false)?.expect("values have no end marker");
        versioned |= key == version_key;
        batch.push((key, value));
        count += 1;
        if batch.len() == BATCH {
            store.load(std::mem::take(&mut batch))?;
        }
    }
    let mut trailer = [0u8; 16];
    input.read_exact(&mut trailer).map_err(truncated)?;
    let expected_count = u64::from_be_bytes(trailer[..8].try_into().expect("8"));
    let expected_hash = u64::from_be_bytes(trailer[8..].try_into().expect("8"));
    if expected_count != count || expected_hash != hash.0 {
        return Err(DumpError::Corrupt(format!(
            "{count} entries read, {expected_count} announced; checksum {}",
            if expected_hash == hash.0 {
                "ok"
            } else {
                "mismatch"
            }
        )));
    }
    store.load(batch)?;
    if !versioned {
        // Data from before the version key: the next start upgrades it.
        store.mark_format(None)?;
    }
    // Everything is durable before the mark goes, so a crash in between leaves it marked.
    store.flush()?;
    store.mark_importing(false)?;
    store.flush()?;
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Op, UserId};

    fn filled(dir: &std::path::Path, engine: &str) -> std::sync::Arc<dyn Store> {
        let s = crate::store::open(engine, dir, 8 << 20).unwrap();
        let ops: Vec<Op> = (1..=25_000u64)
            .map(|seq| Op::PutMessage {
                conv: 1,
                seq,
                message: bytes::Bytes::from(format!("m{seq}")),
            })
            .chain([Op::PutReadSeq {
                user: UserId::from("u"),
                conv: 1,
                seq: 7,
            }])
            .collect();
        s.commit(&ops).unwrap();
        s.flush().unwrap();
        s
    }

    fn all(s: &dyn Store) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut v = Vec::new();
        s.dump(&mut |k, val| {
            v.push((k.to_vec(), val.to_vec()));
            Ok(())
        })
        .unwrap();
        v
    }

    #[test]
    fn round_trips_between_engines_and_detects_damage() {
        let dir = tempfile::tempdir().unwrap();
        let sled = filled(&dir.path().join("a"), "sled");
        let mut file = Vec::new();
        // 25,000 messages, a read position and the format version.
        assert_eq!(export(sled.as_ref(), &mut file).unwrap(), 25_002);

        let redb = crate::store::open("redb", &dir.path().join("b"), 8 << 20).unwrap();
        assert_eq!(import(redb.as_ref(), &mut file.as_slice()).unwrap(), 25_002);
        assert_eq!(all(redb.as_ref()), all(sled.as_ref()));
        assert_eq!(redb.read_seq("u", 1).unwrap(), 7);

        // Not into a store that has data.
        assert!(matches!(
            import(redb.as_ref(), &mut file.as_slice()),
            Err(DumpError::NotEmpty)
        ));
        // Not from something else, a truncated file, or a changed byte.
        let fresh = |n: &str| crate::store::open("redb", &dir.path().join(n), 8 << 20).unwrap();
        assert!(matches!(
            import(fresh("c").as_ref(), &mut &b"hello"[..]),
            Err(DumpError::BadHeader)
        ));
        let short = &file[..file.len() - 30];
        assert!(matches!(
            import(fresh("d").as_ref(), &mut &short[..]),
            Err(DumpError::Corrupt(_))
        ));
        let mut flipped = file.clone();
        flipped[40] ^= 1;
        assert!(matches!(
            import(fresh("e").as_ref(), &mut flipped.as_slice()),
            Err(DumpError::Corrupt(_))
        ));
    }

    /// A truncated or damaged dump that fails after some batches are loaded leaves a store
    /// that opening refuses, on both engines; importing a whole dump into it again succeeds.
    #[test]
    fn a_failed_import_leaves_a_store_that_is_refused_until_imported_again() {
        let dir = tempfile::tempdir().unwrap();
        let source = filled(&dir.path().join("source"), "redb");
        let mut file = Vec::new();
        export(source.as_ref(), &mut file).unwrap();
        let short = file[..file.len() * 3 / 4].to_vec();
        let mut flipped = file.clone();
        let at = file.len() * 3 / 4;
        flipped[at] ^= 0xff;
        for engine in crate::store::ENGINES {
            for (name, damaged) in [("short", &short), ("flipped", &flipped)] {
                let target = dir.path().join(format!("{engine}-{name}"));
                {
                    let s = crate::store::open_for_import(engine, &target, 8 << 20).unwrap();
                    assert!(matches!(
                        import(s.as_ref(), &mut damaged.as_slice()),
                        Err(DumpError::Corrupt(_))
                    ));
                    assert!(s.importing().unwrap(), "{engine} {name}");
                }
                let text = crate::store::open(engine, &target, 8 << 20)
                    .err()
                    .expect("refused")
                    .to_string();
                assert!(text.contains("did not finish"), "{engine} {name}: {text}");
                {
                    let s = crate::store::open_for_import(engine, &target, 8 << 20).unwrap();
                    assert_eq!(import(s.as_ref(), &mut file.as_slice()).unwrap(), 25_002);
                }
                let s = crate::store::open(engine, &target, 8 << 20).unwrap();
                assert!(!s.importing().unwrap());
                assert_eq!(all(s.as_ref()), all(source.as_ref()), "{engine} {name}");
            }
        }
    }

    /// A dump of format-1 data (no version key) loads as format 1, and the next open upgrades
    /// it: on both engines the patch index then holds the fixture's edit and recall.
    #[test]
    fn a_format_1_dump_is_upgraded_when_the_store_next_opens() {
        let fixture: &[u8] = include_bytes!("../../tests/fixtures/store-v1.dump");
        for engine in crate::store::ENGINES {
            let dir = tempfile::tempdir().unwrap();
            {
                let s = crate::store::open(engine, dir.path(), 8 << 20).unwrap();
                import(s.as_ref(), &mut &fixture[..]).unwrap();
                assert_eq!(s.patches_after(1, 0, 10).unwrap(), vec![], "{engine}");
            }
            let s = crate::store::open(engine, dir.path(), 8 << 20).unwrap();
            let seqs: Vec<u64> = s
                .patches_after(1, 0, 10)
                .unwrap()
                .into_iter()
                .map(|(_, seq)| seq)
                .collect();
            assert_eq!(seqs, vec![2, 3], "{engine}");
            // Upgraded once: the version is stored, and the dump now carries it.
            let mut again = Vec::new();
            export(s.as_ref(), &mut again).unwrap();
            let other = tempfile::tempdir().unwrap();
            let t = crate::store::open(engine, other.path(), 8 << 20).unwrap();
            import(t.as_ref(), &mut again.as_slice()).unwrap();
            assert_eq!(all(t.as_ref()), all(s.as_ref()), "{engine}");
        }
    }

    /// Dumps of format-2 to -6 data load as their format; the next open upgrades them to
    /// the current one, which (from 2 on) changes the version and adds the by-kind index of
    /// the conversations (format 7): every other entry stays as the old format wrote it.
    #[test]
    fn format_2_to_6_dumps_are_upgraded_when_the_store_next_opens() {
        let fixtures: [(u64, &[u8]); 5] = [
            (2, include_bytes!("../../tests/fixtures/store-v2.dump")),
            (3, include_bytes!("../../tests/fixtures/store-v3.dump")),
            (4, include_bytes!("../../tests/fixtures/store-v4.dump")),
            (5, include_bytes!("../../tests/fixtures/store-v5.dump")),
            (6, include_bytes!("../../tests/fixtures/store-v6.dump")),
        ];
        let version = crate::store::keys::format_version();
        let current = crate::store::keys::FORMAT_VERSION;
        for ((old, fixture), engine) in fixtures
            .into_iter()
            .flat_map(|f| crate::store::ENGINES.map(|e| (f, e)))
        {
            let dir = tempfile::tempdir().unwrap();
            let before = {
                let s = crate::store::open(engine, dir.path(), 8 << 20).unwrap();
                import(s.as_ref(), &mut &fixture[..]).unwrap();
                all(s.as_ref())
            };
            assert!(before.contains(&(version.clone(), old.to_be_bytes().to_vec())));
            let s = crate::store::open(engine, dir.path(), 8 << 20).unwrap();
            let after = all(s.as_ref());
            assert!(after.contains(&(version.clone(), current.to_be_bytes().to_vec())));
            let by_kind = crate::store::keys::CONVERSATION_BY_KIND;
            let data = |v: Vec<(Vec<u8>, Vec<u8>)>| {
                v.into_iter()
                    .filter(|(k, _)| *k != version && k.first() != Some(&by_kind))
                    .collect::<Vec<_>>()
            };
            assert_eq!(data(after), data(before), "format {old}, {engine}");
            // The fixture's group is in the by-kind index format 7 built.
            let group = crate::protocol::pb::ConversationKind::Group as i32;
            assert_eq!(
                s.conversations_of_kind(group, u64::MAX, 10).unwrap(),
                vec![1],
                "format {old}, {engine}"
            );
            // The fixture's edit and recall are in the patch index format 2 built.
            let seqs: Vec<u64> = s
                .patches_after(1, 0, 10)
                .unwrap()
                .into_iter()
                .map(|(_, seq)| seq)
                .collect();
            assert_eq!(seqs, vec![2, 3], "format {old}, {engine}");
        }
    }

    /// Data of a newer format is refused with a message that says what to do.
    #[test]
    fn a_store_of_a_newer_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = crate::store::open("redb", dir.path(), 8 << 20).unwrap();
            s.mark_format(Some(crate::store::keys::FORMAT_VERSION + 1))
                .unwrap();
            s.flush().unwrap();
        }
        let e = crate::store::open("redb", dir.path(), 8 << 20)
            .err()
            .expect("refused");
        let text = e.to_string();
        assert!(text.contains("newer tidings"), "{text}");
    }
}
