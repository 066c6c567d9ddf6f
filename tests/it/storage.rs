//! Both engines: crash safety under SIGKILL, and moving data between them with export/import.

use crate::harness::*;
use std::collections::{BTreeMap, HashSet};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tidings::client::Client;

/// A small deterministic generator for kill points (seeded, printed, reproducible).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, lo: u64, hi: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        lo + (self.0 >> 33) % (hi - lo)
    }
}

/// Checks through the protocol that every acked message is stored under its seq, that seqs
/// are gapless, and that no message is stored twice.
async fn verify(client: &Client, conv: &str, acked: &BTreeMap<u64, String>) -> u64 {
    let stored = within(client.sync_all(conv, 0)).await.unwrap();
    let seqs: Vec<u64> = stored.iter().map(|m| m.seq).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "seqs are gapless"
    );
    let mut seen = HashSet::new();
    for m in &stored {
        assert!(
            seen.insert(m.client_message_id.clone()),
            "stored twice: {}",
            m.client_message_id
        );
    }
    for (seq, id) in acked {
        let m = stored
            .get(*seq as usize - 1)
            .unwrap_or_else(|| panic!("acked seq {seq} lost"));
        assert_eq!(
            &m.id, id,
            "seq {seq} holds another message than the acked one"
        );
    }
    stored.len() as u64
}

/// Sends at a sustained rate from four connections, SIGKILLs the server after a random number
/// of acks, restarts it, and verifies; `cycles` times.
async fn crash_cycles(engine: &str) {
    let cycles: usize = std::env::var("CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("crash test: engine {engine}, {cycles} cycles, CRASH_SEED={seed}");
    let mut rng = Lcg(seed);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let engine_set = format!("store_engine={engine}");
    let mut acked: BTreeMap<u64, String> = BTreeMap::new();
    let mut conv = String::new();
    for cycle in 0..cycles {
        let server = Binary::serve(&data, &[&engine_set]);
        let owner = server.client("owner").await;
        if cycle == 0 {
            conv = within(owner.create_group("crash", &["s0", "s1", "s2", "s3"]))
                .await
                .unwrap()
                .id;
        }
        let before = verify(&owner, &conv, &acked).await;
        let kill_after = rng.next(20, 400);
        let count = Arc::new(AtomicU64::new(0));
        let reached = Arc::new(tokio::sync::Notify::new());
        let mut senders = Vec::new();
        for s in 0..4 {
            let client = server.client(&format!("s{s}")).await;
            let (conv, count, reached) = (conv.clone(), count.clone(), reached.clone());
            senders.push(tokio::spawn(async move {
                let mut acks = Vec::new();
                // Bounded: the server is killed long before this many.
                for n in 0..20_000u64 {
                    let sends = (0..4).map(|k| {
                        let req = tidings::protocol::pb::SendMessage {
                            conversation_id: conv.clone(),
                            client_message_id: format!("c{cycle}-s{s}-{}", n * 4 + k),
                            content: bytes::Bytes::from_static(b"durable?"),
                            ..Default::default()
                        };
                        client.send(req)
                    });
                    let mut failed = false;
                    for r in futures_util::future::join_all(sends).await {
                        match r {
                            Ok(a) => {
                                acks.push((a.seq, a.message_id));
                                if count.fetch_add(1, Ordering::SeqCst) + 1 == kill_after {
                                    reached.notify_one();
                                }
                            }
                            Err(_) => failed = true,
                        }
                    }
                    if failed {
                        break;
                    }
                }
                acks
            }));
        }
        within(reached.notified()).await;
        server.signal(libc::SIGKILL);
        for s in senders {
            acked.extend(within(s).await.unwrap());
        }
        let (status, _) = server.wait().await;
        assert!(!status.success(), "killed, not exited");
        eprintln!(
            "cycle {cycle}: killed after {kill_after}+ acks; {} acked so far, {before} stored at start",
            acked.len()
        );
    }
    let server = Binary::serve(&data, &[&engine_set]);
    let owner = server.client("owner").await;
    let stored = verify(&owner, &conv, &acked).await;
    assert!(stored >= acked.len() as u64);
    eprintln!(
        "crash test {engine}: {} acked, {stored} stored, 0 acked lost",
        acked.len()
    );
    server.signal(libc::SIGTERM);
    assert!(server.wait().await.0.success());
}

#[tokio::test]
async fn redb_loses_no_acked_message_to_sigkill() {
    crash_cycles("redb").await;
}

#[tokio::test]
async fn sled_loses_no_acked_message_to_sigkill() {
    crash_cycles("sled").await;
}

#[tokio::test]
async fn export_then_import_moves_everything_between_engines() {
    let dir = tempfile::tempdir().unwrap();
    let (sled_dir, redb_dir, dump) = (
        dir.path().join("sled"),
        dir.path().join("redb"),
        dir.path().join("dump"),
    );

    let server = Binary::serve(&sled_dir, &["store_engine=sled"]);
    let alice = server.client("alice").await;
    let g = within(alice.create_group("g", &["bob"])).await.unwrap();
    let d = within(alice.create_direct("carol")).await.unwrap();
    let t = within(alice.create_temporary(&["dave"], 3600, true))
        .await
        .unwrap();
    for i in 0..30 {
        within(alice.send_text(&g.id, &format!("g{i}")))
            .await
            .unwrap();
    }
    within(alice.send_text(&d.id, "direct")).await.unwrap();
    let before = within(alice.history(&g.id, 0, 100)).await.unwrap();
    server.signal(libc::SIGTERM);
    assert!(server.wait().await.0.success());

    // `tidings store <action> <flag> <dump>` on a data directory; the engine defaults to redb.
    let store_cmd = |action: &str, flag: &str, dir: &std::path::Path, engine: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_tidings"))
            .args(["store", action, flag, dump.to_str().unwrap(), "--set"])
            .arg(format!("data_dir={}", dir.display()))
            .args(["--set", &format!("store_engine={engine}")])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = store_cmd("export", "--out", &sled_dir, "sled");
    assert!(ok, "{err}");
    let (ok, err) = store_cmd("import", "--in", &redb_dir, "redb");
    assert!(ok, "{err}");
    // Importing again into a store with data is refused.
    let (ok, err) = store_cmd("import", "--in", &redb_dir, "redb");
    assert!(!ok && err.contains("not empty"), "{err}");

    let server = Binary::serve(&redb_dir, &["store_engine=redb"]);
    let alice = server.client("alice").await;
    assert_eq!(within(alice.history(&g.id, 0, 100)).await.unwrap(), before);
    assert_eq!(within(alice.create_direct("carol")).await.unwrap().id, d.id);
    assert_eq!(
        within(alice.create_temporary(&["dave"], 3600, true))
            .await
            .unwrap()
            .id,
        t.id
    );
    let bob = server.client("bob").await;
    assert_eq!(
        within(bob.get_conversation(&g.id))
            .await
            .unwrap()
            .member_count,
        2
    );
    assert_eq!(
        within(alice.send_text(&g.id, "after the move"))
            .await
            .unwrap()
            .seq,
        31
    );
    let fresh = within(alice.create_group("new", &[])).await.unwrap();
    assert!(fresh.id != g.id && fresh.id != d.id, "counters moved too");
    server.signal(libc::SIGTERM);
    assert!(server.wait().await.0.success());
}

/// `tidings serve` on `dir`: `Ok(())` once it listens (then it is stopped), or `Err` with its
/// log when it exits without listening.
fn serve_or_refusal(dir: &std::path::Path) -> Result<(), String> {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(env!("CARGO_BIN_EXE_tidings"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .env("TIDINGS_JWT_HS256_SECRET", SECRET)
        .env("TIDINGS_LOG", "info")
        .env_remove("RUST_BACKTRACE")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = String::new();
    for line in BufReader::new(child.stderr.take().unwrap())
        .lines()
        .map_while(Result::ok)
    {
        if line.contains("addr=") {
            child.kill().unwrap();
            child.wait().unwrap();
            return Ok(());
        }
        log.push_str(&line);
        log.push('\n');
    }
    assert!(!child.wait().unwrap().success(), "{log}");
    Err(log)
}

/// A truncated or damaged dump fails to import after some of it is loaded; the data directory
/// it leaves is refused by `serve` with a message that says what to do, and importing a whole
/// dump into the same directory then restores everything.
#[tokio::test]
async fn a_failed_import_is_refused_by_serve_and_can_be_run_again() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source");
    let server = Binary::serve(&source, &[]);
    let alice = server.client("alice").await;
    let g = within(alice.create_group("g", &["bob"])).await.unwrap();
    for i in 0..5 {
        within(alice.send_text(&g.id, &format!("m{i}")))
            .await
            .unwrap();
    }
    let before = within(alice.history(&g.id, 0, 100)).await.unwrap();
    drop(alice);
    server.signal(libc::SIGTERM);
    assert!(server.wait().await.0.success());
    // Enough read positions that the dump is loaded in more than one batch.
    {
        let store = tidings::store::open("redb", &source, 8 << 20).unwrap();
        let ops: Vec<tidings::store::Op> = (0..20_000)
            .map(|i| tidings::store::Op::PutReadSeq {
                user: tidings::store::UserId::from(format!("reader{i:05}").as_str()),
                conv: 1,
                seq: 1,
            })
            .collect();
        store.commit(&ops).unwrap();
        store.flush().unwrap();
    }

    let dump = dir.path().join("whole.dump");
    let cmd = |action: &str, flag: &str, file: &std::path::Path, data: &std::path::Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_tidings"))
            .args(["store", action, flag])
            .arg(file)
            .arg("--set")
            .arg(format!("data_dir={}", data.display()))
            .env_remove("RUST_BACKTRACE")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = cmd("export", "--out", &dump, &source);
    assert!(ok, "{err}");
    let whole = std::fs::read(&dump).unwrap();
    let mut flipped = whole.clone();
    flipped[whole.len() * 3 / 4] ^= 0xff;
    let damaged = [
        ("truncated", whole[..whole.len() * 3 / 4].to_vec()),
        ("flipped", flipped),
    ];
    for (name, bytes) in damaged {
        let file = dir.path().join(format!("{name}.dump"));
        std::fs::write(&file, bytes).unwrap();
        let data = dir.path().join(name);
        let (ok, err) = cmd("import", "--in", &file, &data);
        assert!(!ok && err.contains("truncated or corrupt"), "{name}: {err}");
        assert!(err.contains("import a whole dump into it again"), "{err}");
        let log = serve_or_refusal(&data).expect_err(name);
        assert!(log.contains("did not finish"), "{name}: {log}");
        // Also not exported as if it were whole.
        let (ok, err) = cmd("export", "--out", &dir.path().join("x.dump"), &data);
        assert!(!ok && err.contains("did not finish"), "{name}: {err}");

        let (ok, err) = cmd("import", "--in", &dump, &data);
        assert!(ok, "{name}: {err}");
        let server = Binary::serve(&data, &[]);
        let alice = server.client("alice").await;
        assert_eq!(
            within(alice.history(&g.id, 0, 100)).await.unwrap(),
            before,
            "{name}"
        );
        drop(alice);
        server.signal(libc::SIGTERM);
        assert!(server.wait().await.0.success());
    }
}

/// Conversation numbers are never handed out twice, even when the store's counters stand
/// below its conversations (a dump edited or damaged in a way its checksum does not catch):
/// at start the counters go on above the stored conversations.
#[tokio::test]
async fn a_conversation_number_is_never_handed_out_twice_whatever_the_counters_say() {
    use tidings::protocol::pb;
    use tidings::store::{Counter, Op};
    let mut server = TestServer::start().await;
    let alice = server.client("alice").await;
    let g = within(alice.create_group("mine", &["bob"])).await.unwrap();
    within(alice.send_text(&g.id, "secret")).await.unwrap();
    let t = within(alice.create(pb::CreateConversation {
        kind: pb::ConversationKind::Temporary as i32,
        members: vec!["bob".into()],
        ..Default::default()
    }))
    .await
    .unwrap();
    drop(alice);
    let store = server.running().app.store.clone();
    for counter in [Counter::Conversation, Counter::Temporary] {
        store
            .commit(&[Op::SetCounter { counter, value: 0 }])
            .unwrap();
    }
    drop(store);
    server.restart().await;
    let mallory = server.client("mallory").await;
    let fresh = within(mallory.create_group("theirs", &[])).await.unwrap();
    assert_ne!(fresh.id, g.id);
    let temporary = within(mallory.create(pb::CreateConversation {
        kind: pb::ConversationKind::Temporary as i32,
        members: vec!["carol".into()],
        ..Default::default()
    }))
    .await
    .unwrap();
    assert_ne!(temporary.id, t.id);
    let alice = server.client("alice").await;
    let history = within(alice.history(&g.id, 0, 10)).await.unwrap();
    assert_eq!(history.messages.len(), 1);
}
