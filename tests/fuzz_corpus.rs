//! Replays the fuzz targets' corpora (`fuzz/corpus/<target>/`) through the same functions the
//! targets call, so the stable test suite runs every input the fuzzers kept (and the crashes
//! they found, once fixed). Running the targets needs nightly and `cargo fuzz` (README,
//! Development).

use std::path::PathBuf;
use tidings::fuzzing;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} holds no corpus", dir.display());
    for file in &files {
        let data = std::fs::read(file).unwrap();
        let outcome = std::panic::catch_unwind(|| run(&data));
        assert!(outcome.is_ok(), "{} panicked", file.display());
    }
}

#[test]
fn native_frame_corpus() {
    replay("native_frame", fuzzing::native_frame);
}

#[test]
fn leancloud_frame_corpus() {
    replay("leancloud_frame", fuzzing::leancloud_frame);
}

#[test]
fn leancloud_query_corpus() {
    replay("leancloud_query", fuzzing::leancloud_query);
}

#[test]
fn token_corpus() {
    replay("token", fuzzing::token);
}

#[test]
fn cursors_corpus() {
    replay("cursors", fuzzing::cursors);
}

#[test]
fn store_records_corpus() {
    replay("store_records", fuzzing::store_records);
}
