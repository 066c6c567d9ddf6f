//! Purges of ended conversations (deleted for everyone with their messages, expired, ended by
//! the backend): `history_retention_batch` messages per commit, then the rest, and a purge cut
//! short by a crash goes on at the next start.

use crate::admin::{KEY, ok};
use crate::harness::*;
use crate::spied_store::{Watch, spied_server};
use std::sync::{Arc, Condvar, Mutex};
use tidings::protocol::parse_conversation_id;
use tidings::protocol::pb::ErrorCode;
use tidings::store::{Op, StoreError};

/// Records what each commit purges; fails, once, the commit of the `fail`-th batch of
/// messages, so the server goes down there with what it had committed, as after a crash.
#[derive(Default)]
struct Steps {
    state: Mutex<StepsState>,
    changed: Condvar,
}

#[derive(Default)]
struct StepsState {
    steps: Vec<String>,
    batches: usize,
    fail: Option<usize>,
}

impl Watch for Steps {
    fn commit(&self, ops: &[Op]) -> Result<(), StoreError> {
        let mut steps = Vec::new();
        for op in ops {
            match op {
                Op::PurgeMessages { from, through, .. } => {
                    steps.push(format!("messages {from}..={through}"))
                }
                Op::PurgeConversationPart { limit, .. } => steps.push(format!("part {limit}")),
                Op::PurgeConversation { .. } => steps.push("conversation".into()),
                _ => {}
            }
        }
        if steps.is_empty() {
            return Ok(());
        }
        let mut st = self.state.lock().unwrap();
        if steps[0].starts_with("messages") || steps[0].starts_with("part") {
            st.batches += 1;
            if st.fail == Some(st.batches) {
                st.fail = None;
                st.steps.push("crash".into());
                self.changed.notify_all();
                return Err(StoreError::Engine("the disk went away".into()));
            }
        }
        st.steps.push(steps.join(", "));
        self.changed.notify_all();
        Ok(())
    }
}

impl Steps {
    fn steps(&self) -> Vec<String> {
        self.state.lock().unwrap().steps.clone()
    }

    /// Waits (off the runtime, at most 20 s) until `n` commits have purged something.
    async fn wait_for(self: &Arc<Self>, n: usize) {
        let w = self.clone();
        let reached = tokio::task::spawn_blocking(move || {
            let st = w.state.lock().unwrap();
            let (st, _) = w
                .changed
                .wait_timeout_while(st, std::time::Duration::from_secs(20), |st| {
                    st.steps.len() < n
                })
                .unwrap();
            st.steps.len() >= n
        });
        assert!(
            reached.await.unwrap(),
            "only these purge commits: {:?}",
            self.steps()
        );
    }
}

/// Nothing of conversation `num` is left in the store.
fn gone(server: &TestServer, num: u64) {
    let store = server.running().app.store.clone();
    assert!(store.conversation(num).unwrap().is_none());
    assert!(store.last_message(num).unwrap().is_none());
    assert!(store.members(num).unwrap().is_empty());
    assert!(store.next_expiries(10).unwrap().is_empty());
}

/// The server goes down after the deletion and the first batch of its purge have committed:
/// at the next start the purge goes on from the first message left, and nothing of the
/// conversation is left in the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_cut_short_by_a_crash_goes_on_at_the_next_start() {
    let watch = Arc::new(Steps::default());
    let mut server = spied_server(watch.clone(), |c| c.history_retention_batch = 2).await;
    let team = {
        let alice = server.client("alice").await;
        let bob = server.client("bob").await;
        let team = within(alice.create_group("team", &["bob"])).await.unwrap();
        for k in 0..5 {
            within(bob.send_text(&team.id, &format!("m{k}")))
                .await
                .unwrap();
        }
        watch.state.lock().unwrap().fail = Some(2);
        // The server goes down under the request: no answer to rely on.
        let _ = within(alice.delete_conversation(&team.id, true)).await;
        team
    };
    assert_eq!(watch.steps(), ["messages 1..=2", "crash"]);

    server.restart_after_failure().await;
    watch.wait_for(4).await;
    let purged = &server.running().app.stats.conversations_purged;
    within(purged.wait_for(1)).await;
    assert_eq!(
        watch.steps(),
        ["messages 1..=2", "crash", "messages 3..=4", "conversation"]
    );
    let num = parse_conversation_id(&team.id).unwrap();
    gone(&server, num);
    let bob = server.client("bob").await;
    let e = within(bob.get_conversation(&team.id)).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::ErrorConversationNotFound));
}

/// A temporary conversation's expiry at its deadline deletes its messages
/// `history_retention_batch` per commit, the last batch with the rest of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiry_purges_the_messages_in_batches() {
    let watch = Arc::new(Steps::default());
    let server = spied_server(watch.clone(), |c| c.history_retention_batch = 2).await;
    let agent = server.client("agent").await;
    let t = within(agent.create_temporary(&["customer"], 60, false))
        .await
        .unwrap();
    for k in 0..5 {
        within(agent.send_text(&t.id, &format!("m{k}")))
            .await
            .unwrap();
    }
    server.clock.advance(60_000);
    let stats = server.running().app.stats.clone();
    within(stats.conversations_expired.wait_for(1)).await;
    assert_eq!(
        watch.steps(),
        ["messages 1..=2", "messages 3..=4", "conversation"]
    );
    assert_eq!(
        (stats.conversations_purged.get(), stats.purge_commits.get()),
        (1, 3)
    );
    gone(&server, parse_conversation_id(&t.id).unwrap());
}

/// `POST /v1/conversations/{id}/end` answers once the conversation is purged, its messages
/// `history_retention_batch` per commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_ending_a_temporary_conversation_purges_it_in_batches() {
    let watch = Arc::new(Steps::default());
    let server = spied_server(watch.clone(), |c| {
        c.history_retention_batch = 3;
        c.admin_listen = "127.0.0.1:0".into();
        c.admin_api_keys = vec![KEY.into()];
    })
    .await;
    let agent = server.client("agent").await;
    let t = within(agent.create_temporary(&["customer"], 3600, false))
        .await
        .unwrap();
    for k in 0..7 {
        within(agent.send_text(&t.id, &format!("m{k}")))
            .await
            .unwrap();
    }
    ok(
        &server,
        "POST",
        &format!("/v1/conversations/{}/end", t.id),
        None,
    )
    .await;
    assert_eq!(
        watch.steps(),
        ["messages 1..=3", "messages 4..=6", "conversation"]
    );
    gone(&server, parse_conversation_id(&t.id).unwrap());
}

/// The send dedup entries of the messages (one per message sent with a client id) go
/// `history_retention_batch` per commit too, after the messages, not all in the last commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_deletes_the_send_dedup_entries_in_batches() {
    let watch = Arc::new(Steps::default());
    let server = spied_server(watch.clone(), |c| c.history_retention_batch = 2).await;
    let alice = server.client("alice").await;
    let bob = server.client("bob").await;
    let team = within(alice.create_group("team", &["bob"])).await.unwrap();
    for k in 0..6 {
        within(bob.send(tidings::protocol::pb::SendMessage {
            conversation_id: team.id.clone(),
            client_message_id: format!("c{k}"),
            r#type: 1,
            content: format!("m{k}").into(),
            ..Default::default()
        }))
        .await
        .unwrap();
    }
    let num = parse_conversation_id(&team.id).unwrap();
    let store = server.running().app.store.clone();
    assert_eq!(store.dedup(num, "bob", "c0").unwrap(), Some(1));
    within(alice.delete_conversation(&team.id, true))
        .await
        .unwrap();
    let steps = watch.steps();
    let [first, second, parts @ .., last] = &steps[..] else {
        panic!("too few purge commits: {steps:?}");
    };
    assert_eq!(
        (first.as_str(), second.as_str()),
        ("messages 1..=2", "messages 3..=4")
    );
    assert!(parts.len() >= 2, "{steps:?}");
    assert!(parts.iter().all(|p| p == "part 2"), "{steps:?}");
    assert_eq!(last, "conversation");
    gone(&server, num);
    assert_eq!(store.dedup(num, "bob", "c5").unwrap(), None);
    assert_eq!(store.conversation_part_entries(num, 10).unwrap(), 0);
}
