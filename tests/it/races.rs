//! Requests racing a conversation's deletion or expiry: nothing acked is lost, and a deleted
//! conversation stays deleted, in memory and after a restart.
//!
//! A watched store holds the commit that deletes a conversation, so the window between the
//! delete being queued and being durable is as long as the test needs; a randomized checker
//! then mixes sends, deletes, leaves, removals, expiries and restarts.

use crate::harness::*;
use crate::spied_store::{Watch, spied_server};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex};
use tidings::client::{Client, ClientError};
use tidings::protocol::pb::ErrorCode;
use tidings::store::{Op, StoreError};

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
}

impl Watch for Gate {
    fn commit(&self, ops: &[Op]) -> Result<(), StoreError> {
        let deletes = ops.iter().any(|op| match op {
            Op::PurgeConversation { .. } => true,
            Op::PutConversation { record, .. } => record.deleted_at > 0,
            _ => false,
        });
        let mut st = self.state.lock().unwrap();
        if !(st.armed && deletes) {
            return Ok(());
        }
        st.holding = true;
        self.changed.notify_all();
        while st.armed {
            st = self.changed.wait(st).unwrap();
        }
        st.holding = false;
        Ok(())
    }
}

/// A server whose deleting commits can be held.
async fn gated_server() -> (TestServer, Arc<Gate>) {
    let gate = Arc::new(Gate::default());
    let server = spied_server(gate.clone(), |_| {}).await;
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
    within(server.running().app.stats.conversations_expired.wait_for(1)).await;
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

/// Records what each commit purges, and holds, while armed, the first that purges messages.
#[derive(Default)]
struct PurgeSteps {
    state: Mutex<(bool, bool, Vec<String>)>,
    changed: Condvar,
}

impl Watch for PurgeSteps {
    fn commit(&self, ops: &[Op]) -> Result<(), StoreError> {
        let mut steps = Vec::new();
        for op in ops {
            match op {
                Op::PurgeMessages { from, through, .. } => {
                    steps.push(format!("messages {from}..={through}"))
                }
                Op::PurgeConversation { .. } => steps.push("conversation".into()),
                _ => {}
            }
        }
        let mut st = self.state.lock().unwrap();
        if steps.is_empty() {
            return Ok(());
        }
        let messages = steps[0].starts_with("messages");
        st.2.push(steps.join(", "));
        if st.0 && messages {
            st.1 = true;
            self.changed.notify_all();
            while st.0 {
                st = self.changed.wait(st).unwrap();
            }
        }
        Ok(())
    }
}

/// A purge deletes the history `history_retention_batch` messages per commit (the last batch
/// with the rest of the conversation), after the commit that deletes the conversation: from
/// then on, while the purge still runs, every request finds the conversation gone; at the end
/// nothing of it is left in the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_deletes_the_history_in_batches_after_the_deletion() {
    let watch = Arc::new(PurgeSteps::default());
    let server = spied_server(watch.clone(), |c| c.history_retention_batch = 4).await;
    let alice = Arc::new(server.client("alice").await);
    let bob = server.client("bob").await;
    let team = within(alice.create_group("team", &["bob"])).await.unwrap();
    for k in 0..10 {
        within(bob.send_text(&team.id, &format!("m{k}")))
            .await
            .unwrap();
    }
    watch.state.lock().unwrap().0 = true;
    let (a, id) = (alice.clone(), team.id.clone());
    let delete = tokio::spawn(async move { a.delete_conversation(&id, true).await });
    let w = watch.clone();
    let held = tokio::task::spawn_blocking(move || until(&w.state, &w.changed, |st| st.1));
    assert!(within(held).await.unwrap(), "no commit purged messages");
    let not_found = ErrorCode::ErrorConversationNotFound;
    assert_eq!(code(within(bob.history(&team.id, 0, 10)).await), not_found);
    assert_eq!(
        code(within(bob.get_conversation(&team.id)).await),
        not_found
    );
    assert_eq!(
        code(within(bob.send_text(&team.id, "during")).await),
        not_found
    );
    watch.state.lock().unwrap().0 = false;
    watch.changed.notify_all();
    within(delete).await.unwrap().unwrap();

    let steps = watch.state.lock().unwrap().2.clone();
    assert_eq!(steps, ["messages 1..=4", "messages 5..=8", "conversation"]);
    let num = tidings::protocol::parse_conversation_id(&team.id).unwrap();
    let store = server.running().app.store.clone();
    assert!(store.last_message(num).unwrap().is_none());
    assert!(store.conversation(num).unwrap().is_none());
}

/// Waits on `changed` (blocking, at most 20 s) until `done` holds of the state; whether it did.
fn until<S>(state: &Mutex<S>, changed: &Condvar, done: impl Fn(&S) -> bool) -> bool {
    let st = state.lock().unwrap();
    let timeout = std::time::Duration::from_secs(20);
    let (st, _) = changed
        .wait_timeout_while(st, timeout, |st| !done(st))
        .unwrap();
    done(&st)
}

/// Holds, while armed, the first read of a user's whole list of entries.
#[derive(Default)]
struct HoldListRead {
    state: Mutex<(bool, bool)>,
    changed: Condvar,
}

impl Watch for HoldListRead {
    fn read(&self, what: &'static str) {
        if what != "list_rows" {
            return;
        }
        let mut st = self.state.lock().unwrap();
        if !st.0 || st.1 {
            return;
        }
        st.1 = true;
        self.changed.notify_all();
        let timeout = std::time::Duration::from_secs(30);
        let _ = self.changed.wait_timeout_while(st, timeout, |st| st.0);
    }
}

/// A unique group create waits only for creates of the same member set: while one user's
/// lookup is held, another user's unique create of another set goes through; the held one
/// then finishes, and creating its set again returns the same group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_group_creates_of_other_member_sets_do_not_wait() {
    let watch = Arc::new(HoldListRead::default());
    let server = spied_server(watch.clone(), |_| {}).await;
    let alice = Arc::new(server.client("alice").await);
    let carol = server.client("carol").await;
    let unique = |members: &[&str]| tidings::protocol::pb::CreateConversation {
        kind: tidings::protocol::pb::ConversationKind::Group as i32,
        members: members.iter().map(|m| m.to_string()).collect(),
        unique: true,
        ..Default::default()
    };
    watch.state.lock().unwrap().0 = true;
    let held = {
        let (a, req) = (alice.clone(), unique(&["bob"]));
        tokio::spawn(async move { a.create(req).await })
    };
    let w = watch.clone();
    let holding = tokio::task::spawn_blocking(move || until(&w.state, &w.changed, |st| st.1));
    assert!(within(holding).await.unwrap(), "no lookup was held");
    let other = within(carol.create(unique(&["dave"]))).await;
    watch.state.lock().unwrap().0 = false;
    watch.changed.notify_all();
    other.unwrap();
    let first = within(held).await.unwrap().unwrap();
    let again = within(alice.create(unique(&["bob"]))).await.unwrap();
    assert_eq!(first.id, again.id);
}
