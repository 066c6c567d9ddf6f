//! Requests racing a conversation's deletion or expiry: nothing acked is lost, and a deleted
//! conversation stays deleted, in memory and after a restart.
//!
//! A store wrapper holds the commit that deletes a conversation, so the window between the
//! delete being queued and being durable is as long as the test needs; a randomized checker
//! then mixes sends, deletes, leaves, removals, expiries and restarts.

use crate::harness::*;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex};
use tidings::client::{Client, ClientError};
use tidings::protocol::pb::{self, ErrorCode};
use tidings::store::{self, Counter, Direction, EntrySink, Op, Store, StoreError, UserId};

/// Holds, while armed, the first commit that deletes or purges a conversation.
#[derive(Default)]
struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Default)]
struct GateState {
    armed: bool,
    holding: bool,
}

impl Gate {
    fn arm(&self) {
        self.state.lock().unwrap().armed = true;
    }

    /// Waits (off the runtime) until a deleting commit is being held.
    async fn holding(self: &Arc<Self>) {
        let gate = self.clone();
        within(tokio::task::spawn_blocking(move || {
            let mut st = gate.state.lock().unwrap();
            while !st.holding {
                st = gate.changed.wait(st).unwrap();
            }
        }))
        .await
        .unwrap();
    }

    fn release(&self) {
        self.state.lock().unwrap().armed = false;
        self.changed.notify_all();
    }

    /// Called by the writer thread before each commit.
    fn pass(&self, ops: &[Op]) {
        let deletes = ops.iter().any(|op| match op {
            Op::PurgeConversation { .. } => true,
            Op::PutConversation { record, .. } => record.deleted_at > 0,
            _ => false,
        });
        let mut st = self.state.lock().unwrap();
        if !(st.armed && deletes) {
            return;
        }
        st.holding = true;
        self.changed.notify_all();
        while st.armed {
            st = self.changed.wait(st).unwrap();
        }
        st.holding = false;
    }
}

/// The configured store, with its commits passing through a [`Gate`].
struct Gated {
    inner: Arc<dyn Store>,
    gate: Arc<Gate>,
}

impl Store for Gated {
    fn commit(&self, ops: &[Op]) -> Result<(), StoreError> {
        self.gate.pass(ops);
        self.inner.commit(ops)
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.inner.flush()
    }
    fn conversation(&self, conv: u64) -> Result<Option<pb::ConversationRecord>, StoreError> {
        self.inner.conversation(conv)
    }
    fn members(&self, conv: u64) -> Result<Vec<(UserId, pb::MemberRecord)>, StoreError> {
        self.inner.members(conv)
    }
    fn user_conversations(
        &self,
        user: &str,
    ) -> Result<Vec<(u64, pb::UserConversationRecord)>, StoreError> {
        self.inner.user_conversations(user)
    }
    fn user_conversation(
        &self,
        user: &str,
        conv: u64,
    ) -> Result<Option<pb::UserConversationRecord>, StoreError> {
        self.inner.user_conversation(user, conv)
    }
    fn message(&self, conv: u64, seq: u64) -> Result<Option<pb::Message>, StoreError> {
        self.inner.message(conv, seq)
    }
    fn last_message(&self, conv: u64) -> Result<Option<pb::Message>, StoreError> {
        self.inner.last_message(conv)
    }
    fn messages(
        &self,
        conv: u64,
        lo: u64,
        hi: u64,
        dir: Direction,
        limit: usize,
    ) -> Result<Vec<pb::Message>, StoreError> {
        self.inner.messages(conv, lo, hi, dir, limit)
    }
    fn read_seq(&self, user: &str, conv: u64) -> Result<u64, StoreError> {
        self.inner.read_seq(user, conv)
    }
    fn dedup(&self, conv: u64, sender: &str, client_id: &str) -> Result<Option<u64>, StoreError> {
        self.inner.dedup(conv, sender, client_id)
    }
    fn direct(&self, a: &str, b: &str) -> Result<Option<u64>, StoreError> {
        self.inner.direct(a, b)
    }
    fn user_events_after(
        &self,
        user: &str,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<pb::ConversationEvent>, bool), StoreError> {
        self.inner.user_events_after(user, after, limit)
    }
    fn last_user_event_seq(&self, user: &str) -> Result<u64, StoreError> {
        self.inner.last_user_event_seq(user)
    }
    fn counter(&self, counter: Counter) -> Result<u64, StoreError> {
        self.inner.counter(counter)
    }
    fn tombstones(&self, user: &str) -> Result<Vec<(u64, i64)>, StoreError> {
        self.inner.tombstones(user)
    }
    fn hidden_seqs(&self, user: &str, conv: u64, lo: u64, hi: u64) -> Result<Vec<u64>, StoreError> {
        self.inner.hidden_seqs(user, conv, lo, hi)
    }
    fn receipts_wanted(
        &self,
        conv: u64,
        lo: u64,
        hi: u64,
    ) -> Result<Vec<(u64, UserId)>, StoreError> {
        self.inner.receipts_wanted(conv, lo, hi)
    }
    fn last_receipt_wanted(&self, conv: u64) -> Result<u64, StoreError> {
        self.inner.last_receipt_wanted(conv)
    }
    fn next_expiries(&self, limit: usize) -> Result<Vec<(i64, u64)>, StoreError> {
        self.inner.next_expiries(limit)
    }
    fn next_mute_deadlines(&self, limit: usize) -> Result<Vec<(i64, u64, UserId)>, StoreError> {
        self.inner.next_mute_deadlines(limit)
    }
    fn unique_temporary(&self, members: &[UserId]) -> Result<Option<u64>, StoreError> {
        self.inner.unique_temporary(members)
    }
    fn conversation_alias(&self, alias: &str) -> Result<Option<u64>, StoreError> {
        self.inner.conversation_alias(alias)
    }
    fn message_alias(&self, conv: u64, alias: &str) -> Result<Option<u64>, StoreError> {
        self.inner.message_alias(conv, alias)
    }
    fn outbox_after(&self, after: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        self.inner.outbox_after(after, limit)
    }
    fn last_outbox_seq(&self) -> Result<u64, StoreError> {
        self.inner.last_outbox_seq()
    }
    fn webhook_cursor(&self, endpoint: &str) -> Result<u64, StoreError> {
        self.inner.webhook_cursor(endpoint)
    }
    fn dead_letters(
        &self,
        endpoint: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        self.inner.dead_letters(endpoint, after, limit)
    }
    fn user_blocks(
        &self,
        user: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(tidings::store::UserId, i64)>, StoreError> {
        self.inner.user_blocks(user, after, limit)
    }
    fn user_block(&self, user: &str, other: &str) -> Result<Option<i64>, StoreError> {
        self.inner.user_block(user, other)
    }
    fn profile(&self, user: &str) -> Result<Option<tidings::protocol::pb::Profile>, StoreError> {
        self.inner.profile(user)
    }
    fn message_versions(
        &self,
        conv: u64,
        seq: u64,
    ) -> Result<Vec<tidings::protocol::pb::Message>, StoreError> {
        self.inner.message_versions(conv, seq)
    }
    fn silent_seqs(&self, conv: u64, lo: u64, hi: u64) -> Result<Vec<u64>, StoreError> {
        self.inner.silent_seqs(conv, lo, hi)
    }
    fn user_access(
        &self,
        user: &str,
    ) -> Result<Option<tidings::protocol::pb::UserAccess>, StoreError> {
        self.inner.user_access(user)
    }
    fn revoked_token(&self, jti: &str) -> Result<Option<i64>, StoreError> {
        self.inner.revoked_token(jti)
    }
    fn revoked_tokens(&self, limit: usize) -> Result<Vec<(i64, String)>, StoreError> {
        self.inner.revoked_tokens(limit)
    }
    fn idempotent_create(
        &self,
        key: &str,
    ) -> Result<Option<tidings::protocol::pb::IdempotentCreate>, StoreError> {
        self.inner.idempotent_create(key)
    }
    fn idempotent_creates(&self, limit: usize) -> Result<Vec<(i64, String)>, StoreError> {
        self.inner.idempotent_creates(limit)
    }
    fn conversations_of_kind(
        &self,
        kind: i32,
        below: u64,
        limit: usize,
    ) -> Result<Vec<u64>, StoreError> {
        self.inner.conversations_of_kind(kind, below, limit)
    }
    fn conversation_events_after(
        &self,
        conv: u64,
        after: i64,
        limit: usize,
    ) -> Result<Vec<tidings::protocol::pb::ConversationEvent>, StoreError> {
        self.inner.conversation_events_after(conv, after, limit)
    }
    fn last_conversation_event_seq(&self, conv: u64) -> Result<u64, StoreError> {
        self.inner.last_conversation_event_seq(conv)
    }
    fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.inner.size_on_disk()
    }
    fn dump(&self, f: &mut EntrySink<'_>) -> Result<(), StoreError> {
        self.inner.dump(f)
    }
    fn is_empty(&self) -> Result<bool, StoreError> {
        self.inner.is_empty()
    }
    fn mark_format(&self, version: Option<u64>) -> Result<(), StoreError> {
        self.inner.mark_format(version)
    }
    fn patches_after(
        &self,
        conv: u64,
        after: i64,
        limit: usize,
    ) -> Result<Vec<(i64, u64)>, StoreError> {
        self.inner.patches_after(conv, after, limit)
    }
    fn load(&self, rows: Vec<(Vec<u8>, Vec<u8>)>) -> Result<(), StoreError> {
        self.inner.load(rows)
    }
}

/// A server whose deleting commits can be held.
async fn gated_server() -> (TestServer, Arc<Gate>) {
    let gate = Arc::new(Gate::default());
    let g = gate.clone();
    let server = TestServer::start_on(
        |_| {},
        move |c| {
            std::fs::create_dir_all(&c.data_dir).unwrap();
            let inner = store::open(&c.store_engine, &c.data_dir, c.store_cache_bytes).unwrap();
            Some(Arc::new(Gated { inner, gate: g }) as Arc<dyn Store>)
        },
    )
    .await;
    (server, gate)
}

fn code<T: std::fmt::Debug>(r: Result<T, ClientError>) -> ErrorCode {
    r.expect_err("must be refused")
        .code()
        .expect("a request error")
}

/// Bob sends while Alice's delete for everyone is queued but not committed: the send is
/// refused at once (not acked into a conversation about to vanish), and the conversation is
/// gone before and after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_racing_a_delete_for_everyone_is_refused() {
    for purge in [false, true] {
        let (mut server, gate) = gated_server().await;
        let alice = Arc::new(server.client("alice").await);
        let bob = server.client("bob").await;
        let team = within(alice.create_group("team", &["bob"])).await.unwrap();
        let first = within(bob.send_text(&team.id, "before")).await.unwrap();
        assert_eq!(first.seq, 1);

        gate.arm();
        let (a, id) = (alice.clone(), team.id.clone());
        let delete = tokio::spawn(async move { a.delete_conversation(&id, purge).await });
        gate.holding().await;
        // Answered while the delete is still held: nothing waits on that commit.
        let not_found = ErrorCode::ErrorConversationNotFound;
        assert_eq!(
            code(within(bob.send_text(&team.id, "during")).await),
            not_found
        );
        assert_eq!(
            code(within(bob.get_conversation(&team.id)).await),
            not_found
        );
        assert_eq!(code(within(bob.history(&team.id, 0, 10)).await), not_found);
        gate.release();
        within(delete).await.unwrap().unwrap();

        assert_eq!(
            code(within(bob.send_text(&team.id, "after")).await),
            not_found
        );
        assert_eq!(
            code(within(alice.get_conversation(&team.id)).await),
            not_found
        );
        server.restart().await;
        let bob = server.client("bob").await;
        assert_eq!(
            code(within(bob.get_conversation(&team.id)).await),
            not_found
        );
        assert_eq!(
            code(within(bob.send_text(&team.id, "later")).await),
            not_found
        );
    }
}

/// The same race on a temporary conversation answers "expired", as a deleted temporary
/// conversation does after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_racing_the_deletion_of_a_temporary_conversation_gets_expired() {
    let (mut server, gate) = gated_server().await;
    let alice = Arc::new(server.client("alice").await);
    let bob = server.client("bob").await;
    let chat = within(alice.create_temporary(&["bob"], 600, false))
        .await
        .unwrap();
    within(bob.send_text(&chat.id, "hello")).await.unwrap();

    gate.arm();
    let (a, id) = (alice.clone(), chat.id.clone());
    let delete = tokio::spawn(async move { a.delete_conversation(&id, false).await });
    gate.holding().await;
    let expired = ErrorCode::ErrorTemporaryConversationExpired;
    assert_eq!(
        code(within(bob.send_text(&chat.id, "during")).await),
        expired
    );
    gate.release();
    within(delete).await.unwrap().unwrap();
    assert_eq!(
        code(within(bob.send_text(&chat.id, "after")).await),
        expired
    );
    server.restart().await;
    let bob = server.client("bob").await;
    assert_eq!(
        code(within(bob.send_text(&chat.id, "later")).await),
        expired
    );
}

/// A send racing the expiry sweep's purge is refused as expired, and nothing is stored after
/// the purge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_racing_an_expiry_is_refused() {
    let (mut server, gate) = gated_server().await;
    let alice = server.client("alice").await;
    let bob = server.client("bob").await;
    let chat = within(alice.create_temporary(&["bob"], 60, false))
        .await
        .unwrap();
    within(bob.send_text(&chat.id, "hello")).await.unwrap();
    gate.arm();
    server.clock.advance(61_000);
    gate.holding().await;
    let expired = ErrorCode::ErrorTemporaryConversationExpired;
    assert_eq!(
        code(within(bob.send_text(&chat.id, "during")).await),
        expired
    );
    gate.release();
    server.restart().await;
    let bob = server.client("bob").await;
    assert_eq!(
        code(within(bob.send_text(&chat.id, "later")).await),
        expired
    );
    let num = tidings::protocol::parse_conversation_id(&chat.id).unwrap();
    let store = server.running().app.store.clone();
    assert!(
        store.last_message(num).unwrap().is_none(),
        "purged, nothing after"
    );
}

/// Creating a direct conversation while the pair's previous one is being deleted gives a new
/// conversation, not an error and not the deleted one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_create_racing_its_deletion_gets_a_new_conversation() {
    let (server, gate) = gated_server().await;
    let alice = Arc::new(server.client("alice").await);
    let bob = server.client("bob").await;
    let old = within(alice.create_direct("bob")).await.unwrap();
    gate.arm();
    let (a, id) = (alice.clone(), old.id.clone());
    let delete = tokio::spawn(async move { a.delete_conversation(&id, false).await });
    gate.holding().await;
    let b = Arc::new(bob);
    let b2 = b.clone();
    let create = tokio::spawn(async move { b2.create_direct("alice").await });
    gate.release();
    within(delete).await.unwrap().unwrap();
    let new = within(create).await.unwrap().unwrap();
    assert_ne!(new.id, old.id, "the deleted conversation came back");
    within(b.send_text(&new.id, "hi")).await.unwrap();
    assert_eq!(
        within(alice.get_list_entry("p2p|bob"))
            .await
            .unwrap()
            .conversation_id,
        new.id
    );
}

/// A small deterministic generator (xorshift64*), so a failing seed can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }
}

const USERS: [&str; 5] = ["u0", "u1", "u2", "u3", "u4"];

/// A conversation the checker created: its id, creator and initial members.
struct Tracked {
    id: String,
    creator: usize,
    members: Vec<usize>,
}

/// What every user is told about every conversation, and each live one's history as
/// (seq, text): what must read the same before and after a restart.
type Snapshot = BTreeMap<String, (Vec<String>, Vec<(u64, String)>)>;

async fn snapshot(clients: &[Client], convs: &[Tracked]) -> Snapshot {
    let mut out = Snapshot::new();
    for c in convs {
        let mut answers = Vec::new();
        let mut history = Vec::new();
        for (u, client) in clients.iter().enumerate() {
            match within(client.get_conversation(&c.id)).await {
                Ok(_) => {
                    answers.push("ok".to_string());
                    if history.is_empty() {
                        history = within(client.sync_all(&c.id, 0))
                            .await
                            .unwrap_or_else(|e| panic!("{} reads {}: {e}", USERS[u], c.id))
                            .into_iter()
                            .map(|m| (m.seq, text(&m)))
                            .collect();
                    }
                }
                Err(e) => answers.push(format!("{:?}", e.code())),
            }
        }
        out.insert(c.id.clone(), (answers, history));
    }
    out
}

async fn log_in_all(server: &TestServer) -> Vec<Client> {
    let mut clients = Vec::new();
    for u in USERS {
        clients.push(server.client(u).await);
    }
    clients
}

type Action<'a> = Pin<Box<dyn Future<Output = Option<(String, u64, String)>> + Send + 'a>>;

/// Concurrent sends, deletes (with and without purge), leaves, removals and expiries, then a
/// restart, round after round: every acked message of a conversation that still exists is
/// readable by its members, seqs stay gapless, and what everyone is told about every
/// conversation is the same before and after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_races_with_restarts_lose_no_acked_message() {
    for seed in [0x9e37_79b9_7f4a_7c15_u64, 42, 7_777_777] {
        let mut rng = Rng(seed);
        let mut server = TestServer::start().await;
        let mut convs: Vec<Tracked> = Vec::new();
        let mut acked: Vec<(String, u64, String)> = Vec::new();
        for round in 0..6 {
            let clients = log_in_all(&server).await;
            let first_new = convs.len();
            for i in 0..5 {
                let creator = rng.below(USERS.len());
                let mut members = vec![creator];
                for u in 0..USERS.len() {
                    if u != creator && rng.below(2) == 0 {
                        members.push(u);
                    }
                }
                if members.len() == 1 {
                    members.push((creator + 1) % USERS.len());
                }
                let others: Vec<&str> = members[1..].iter().map(|u| USERS[*u]).collect();
                let conv = if i < 3 {
                    within(clients[creator].create_group("g", &others)).await
                } else {
                    let others = &others[..others.len().min(2)];
                    members.truncate(others.len() + 1);
                    within(clients[creator].create_temporary(others, 30, false)).await
                }
                .unwrap();
                convs.push(Tracked {
                    id: conv.id,
                    creator,
                    members,
                });
            }
            let mut ops: Vec<Action<'_>> = Vec::new();
            let mut expired = false;
            for k in 0..40 {
                // Mostly this round's conversations, sometimes an older one.
                let c = if rng.below(5) == 0 {
                    &convs[rng.below(convs.len())]
                } else {
                    &convs[first_new + rng.below(convs.len() - first_new)]
                };
                let pick = |rng: &mut Rng| c.members[rng.below(c.members.len())];
                // The creator acts more often, so deletes and removals do happen.
                let actor = if rng.below(10) < 7 {
                    c.creator
                } else {
                    pick(&mut rng)
                };
                let client = &clients[actor];
                let id = c.id.clone();
                let op: Action<'_> = match rng.below(20) {
                    0 => {
                        let purge = rng.below(2) == 0;
                        Box::pin(async move {
                            let _ = client.delete_conversation(&id, purge).await;
                            None
                        })
                    }
                    1 | 2 => Box::pin(async move {
                        let _ = client.leave(&id).await;
                        None
                    }),
                    3 | 4 => {
                        let target = USERS[pick(&mut rng)];
                        Box::pin(async move {
                            let _ = client.remove_members(&id, &[target]).await;
                            None
                        })
                    }
                    5 if !expired => {
                        expired = true;
                        let clock = server.clock.clone();
                        Box::pin(async move {
                            clock.advance(31_000);
                            None
                        })
                    }
                    _ => {
                        let body = format!("r{round}k{k}");
                        Box::pin(async move {
                            let ack = client.send_text(&id, &body).await.ok()?;
                            Some((id, ack.seq, body))
                        })
                    }
                };
                ops.push(op);
            }
            let results = within(futures_util::future::join_all(ops)).await;
            acked.extend(results.into_iter().flatten());

            let before = snapshot(&clients, &convs).await;
            drop(clients);
            server.restart().await;
            let clients = log_in_all(&server).await;
            let after = snapshot(&clients, &convs).await;
            for (id, b) in &before {
                assert_eq!(b, &after[id], "seed {seed:#x} round {round}: {id} changed");
            }
            for (id, (answers, history)) in &after {
                let seqs: Vec<u64> = history.iter().map(|(s, _)| *s).collect();
                let gapless: Vec<u64> = (1..=seqs.len() as u64).collect();
                assert_eq!(seqs, gapless, "seed {seed:#x}: {id} has gaps");
                if answers.iter().any(|a| a == "ok") {
                    for (conv, seq, body) in acked.iter().filter(|a| &a.0 == id) {
                        assert!(
                            history.contains(&(*seq, body.clone())),
                            "seed {seed:#x}: acked {conv} seq {seq} {body:?} is lost"
                        );
                    }
                }
            }
        }
    }
}
