//! The registry over a store whose commits can be held, to look at it mid-commit.

use super::SendRequest;
use super::conversation::CreateRequest;
use super::{Caller, Registry};
use crate::app::Core;
use crate::clock::SystemClock;
use crate::config::Config;
use crate::fuzzing::MemKv;
use crate::protocol::pb::ConversationKind;
use crate::store::kv::{KvStore, OrderedKv, Rows, Write};
use crate::store::{StoreError, UserId};
use std::sync::{Arc, Condvar, Mutex};
use tokio_util::sync::CancellationToken;

/// An engine whose `apply` waits while the gate is closed, and says when one is waiting.
#[derive(Default)]
struct GatedKv {
    inner: MemKv,
    closed: Mutex<bool>,
    opened: Condvar,
    waiting: tokio::sync::Notify,
}

impl GatedKv {
    fn set(&self, closed: bool) {
        *self.closed.lock().expect("lock") = closed;
        self.opened.notify_all();
    }
}

impl OrderedKv for Arc<GatedKv> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(key)
    }
    fn range(
        &self,
        lo: &[u8],
        hi: Option<&[u8]>,
        descending: bool,
        limit: usize,
    ) -> Result<Rows, StoreError> {
        self.inner.range(lo, hi, descending, limit)
    }
    fn for_each(&self, f: &mut crate::store::EntrySink<'_>) -> Result<(), StoreError> {
        self.inner.for_each(f)
    }
    fn apply(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        let mut closed = self.closed.lock().expect("lock");
        if *closed {
            self.waiting.notify_one();
        }
        while *closed {
            closed = self.opened.wait(closed).expect("lock");
        }
        drop(closed);
        self.inner.apply(writes)
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.inner.flush()
    }
    fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.inner.size_on_disk()
    }
}

fn text(s: &str) -> SendRequest {
    SendRequest {
        content: s.as_bytes().to_vec().into(),
        ..Default::default()
    }
}

fn head_seen_by(registry: &Registry, user: &str, id: &str) -> (u64, u32, u64) {
    let summary = registry.unread_summary(user, false, 0).expect("summary");
    let e = summary
        .entries
        .iter()
        .find(|e| e.conversation_id == id)
        .expect("listed");
    let caller = Caller::user(UserId::from(user), 0);
    let view = registry.get(&caller, id).expect("get");
    (e.last_seq, e.unread, view.last_seq)
}

/// A client that is told a conversation's newest seq and then fetches up to it must find
/// every message: a seq handed to a send whose commit is still under way is not reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_are_told_only_of_committed_messages() {
    let kv = Arc::new(GatedKv::default());
    let core = Core::open(
        Arc::new(Config::default()),
        Arc::new(SystemClock),
        Arc::new(KvStore::new(kv.clone())),
        CancellationToken::new(),
    )
    .expect("open");
    let registry = core.registry.clone();
    let alice = Caller::user(UserId::from("alice"), 1);
    let conv = registry
        .create(
            &alice,
            CreateRequest {
                kind: ConversationKind::Direct,
                members: vec!["bob".into()],
                ..Default::default()
            },
        )
        .await
        .expect("create");
    registry
        .send(&alice, &conv.id, text("one"))
        .await
        .expect("send");
    assert_eq!(head_seen_by(&registry, "bob", &conv.id), (1, 1, 1));

    // The second send's commit is held in the store.
    kv.set(true);
    let waiting = kv.waiting.notified();
    let sending = {
        let (registry, alice, id) = (registry.clone(), alice.clone(), conv.id.clone());
        tokio::spawn(async move { registry.send(&alice, &id, text("two")).await })
    };
    waiting.await;
    assert_eq!(head_seen_by(&registry, "bob", &conv.id), (1, 1, 1));

    kv.set(false);
    assert_eq!(sending.await.expect("task").expect("send").seq, 2);
    assert_eq!(head_seen_by(&registry, "bob", &conv.id), (2, 2, 2));
    drop(registry);
    core.close().await.expect("close");
}

/// The sweep that unloads idle cells ([`super::cells`]) keeps a cell that a request took
/// after the sweep chose it, and one that a request held when it chose: it unloads them at a
/// later sweep, and the conversation then reads back from the store as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cell_taken_or_held_while_the_sweep_works_stays_loaded() {
    let kv = Arc::new(GatedKv::default());
    let clock = crate::clock::ManualClock::new(1_700_000_000_000);
    let config = Config {
        conversation_idle_secs: 60,
        ..Config::default()
    };
    let core = Core::open(
        Arc::new(config),
        Arc::new(clock.clone()),
        Arc::new(KvStore::new(kv.clone())),
        CancellationToken::new(),
    )
    .expect("open");
    let registry = core.registry.clone();
    let alice = Caller::user(UserId::from("alice"), 1);
    let create = |kind| CreateRequest {
        kind,
        members: vec!["bob".into()],
        ..Default::default()
    };
    let x = registry
        .create(&alice, create(ConversationKind::Direct))
        .await
        .expect("create");
    let y = registry
        .create(&alice, create(ConversationKind::Group))
        .await
        .expect("create");
    registry
        .send(&alice, &x.id, text("one"))
        .await
        .expect("send");
    assert_eq!(registry.loaded_conversations(), 2);
    clock.advance(120_000);

    // A send to Y is held in the store, so the sweep, having chosen X (idle, nobody holds
    // it), waits for it; Y is not chosen: its send holds it.
    kv.set(true);
    let waiting = kv.waiting.notified();
    let sending = {
        let (registry, alice, id) = (registry.clone(), alice.clone(), y.id.clone());
        tokio::spawn(async move { registry.send(&alice, &id, text("held")).await })
    };
    waiting.await;
    {
        let sweep = registry.sweep_cells();
        tokio::pin!(sweep);
        assert!(
            tokio::time::timeout(std::time::Duration::ZERO, &mut sweep)
                .await
                .is_err(),
            "the sweep waits for the write queued before it"
        );
        // X is taken meanwhile (and let go at once).
        registry.get(&alice, &x.id).expect("get");
        kv.set(false);
        assert_eq!(sweep.await.expect("sweep"), 0, "neither X nor Y went");
    }
    assert_eq!(sending.await.expect("task").expect("send").seq, 1);
    assert_eq!(registry.loaded_conversations(), 2);

    clock.advance(120_000);
    assert_eq!(registry.sweep_cells().await.expect("sweep"), 2);
    assert_eq!(registry.loaded_conversations(), 0);
    assert_eq!(head_seen_by(&registry, "bob", &x.id), (1, 1, 1));
    let ack = registry
        .send(&alice, &x.id, text("two"))
        .await
        .expect("send");
    assert_eq!(ack.seq, 2);
    assert_eq!(head_seen_by(&registry, "bob", &x.id), (2, 2, 2));
    assert_eq!(head_seen_by(&registry, "bob", &y.id), (1, 1, 1));
    assert_eq!(registry.loaded_conversations(), 2);
    drop(registry);
    core.close().await.expect("close");
}

/// Over `conversation_cells_max`, the sweep unloads the least recently used cells first, down
/// to nine tenths of the cap; under it, and with no idle time set, it unloads nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_cap_the_least_recently_used_cells_go_first() {
    let clock = crate::clock::ManualClock::new(1_700_000_000_000);
    let config = Config {
        conversation_cells_max: 3,
        conversation_idle_secs: 0,
        ..Config::default()
    };
    let core = Core::open(
        Arc::new(config),
        Arc::new(clock.clone()),
        Arc::new(KvStore::new(Arc::new(GatedKv::default()))),
        CancellationToken::new(),
    )
    .expect("open");
    let registry = core.registry.clone();
    let alice = Caller::user(UserId::from("alice"), 1);
    let mut ids = Vec::new();
    for _ in 0..5 {
        let req = CreateRequest {
            kind: ConversationKind::Group,
            ..Default::default()
        };
        ids.push(registry.create(&alice, req).await.expect("create").id);
        clock.advance(1_000);
    }
    // Used again, oldest first: 3 and 4 are now the least recently used.
    for id in &ids[..3] {
        registry.get(&alice, id).expect("get");
        clock.advance(1_000);
    }
    assert_eq!(registry.sweep_cells().await.expect("sweep"), 2);
    let loaded = |id: &str| {
        let num = crate::protocol::parse_conversation_id(id).expect("id");
        registry.convs.contains_key(&num)
    };
    let kept: Vec<bool> = ids.iter().map(|id| loaded(id)).collect();
    assert_eq!(kept, [true, true, true, false, false]);
    clock.advance(100_000_000);
    assert_eq!(
        registry.sweep_cells().await.expect("sweep"),
        0,
        "at the cap"
    );
    drop(registry);
    core.close().await.expect("close");
}
