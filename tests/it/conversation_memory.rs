//! What one user can make the server hold, and what it keeps in memory: memberships over
//! `max_conversations_per_user` and chat rooms over `max_chat_rooms_per_user` are refused with
//! `ERROR_LIMIT_EXCEEDED` through every front door; conversations over
//! `conversation_cells_max`, or idle for `conversation_idle_secs`, are unloaded from memory and
//! read back from the store on their next use exactly as after a restart.

use crate::admin::{KEY, api, metrics_of};
use crate::harness::*;
use crate::leancloud_wire::{Lc, cmd};
use crate::spied_store::Watch;
use serde_json::json;
use std::sync::{Arc, Condvar, Mutex};
use tidings::client::{Client, ClientError};
use tidings::leancloud::LcProtocol;
use tidings::leancloud::pb::{self as lc, CommandType as Cmd, GenericCommand, OpType as Op};
use tidings::protocol::pb::{self, ConversationKind, ErrorCode};

/// The error of a refused request: its code and message.
fn refused<T: std::fmt::Debug>(r: Result<T, ClientError>) -> (ErrorCode, String) {
    match r.expect_err("must be refused") {
        ClientError::Server { code, message } => (code, message),
        other => panic!("not a request error: {other:?}"),
    }
}

fn over_memberships(r: Result<impl std::fmt::Debug, ClientError>, user: &str, max: usize) {
    let (code, message) = refused(r);
    assert_eq!(code, ErrorCode::ErrorLimitExceeded, "{message}");
    assert!(
        message.contains(&format!("{user:?} is a member of {max} conversations"))
            && message.contains(&format!("max_conversations_per_user is {max}")),
        "{message}"
    );
}

fn over_rooms(r: Result<impl std::fmt::Debug, ClientError>, max: usize) {
    let (code, message) = refused(r);
    assert_eq!(code, ErrorCode::ErrorLimitExceeded, "{message}");
    assert!(
        message.contains(&format!("max_chat_rooms_per_user is {max}")),
        "{message}"
    );
}

/// The next message pushed, skipping other pushes.
async fn next_message(c: &mut Client) -> pb::Message {
    loop {
        if let pb::server_frame::Body::Message(m) = push(c).await {
            return m;
        }
    }
}

/// Reads every push already queued.
async fn drain(c: &mut Client) {
    within(c.ping()).await.expect("ping");
    while c.try_next_push().is_some() {}
}

async fn room(c: &Client) -> Result<pb::Conversation, ClientError> {
    within(c.create(pb::CreateConversation {
        kind: ConversationKind::ChatRoom as i32,
        name: "room".into(),
        ..Default::default()
    }))
    .await
}

/// A user in `max_conversations_per_user` conversations (a group, a direct and a temporary
/// one) can be made a member of no other: not by creating one, being named in one, being
/// added, joining or subscribing, and not by the app's backend either; a direct conversation
/// that exists is still found. Leaving one makes room. The count is the store's, so it holds
/// after a restart. Chat rooms have a cap of their own, `max_chat_rooms_per_user`.
#[tokio::test]
async fn memberships_and_chat_rooms_over_the_per_user_caps_are_refused() {
    let mut server = TestServer::start_with(|c| {
        c.max_conversations_per_user = 3;
        c.max_chat_rooms_per_user = 2;
        c.admin_listen = "127.0.0.1:0".into();
        c.admin_api_keys = vec![KEY.into()];
    })
    .await;
    let alice = server.client("alice").await;
    let carol = server.client("carol").await;
    let first = within(alice.create_group("one", &[])).await.unwrap();
    let direct = within(alice.create_direct("bob")).await.unwrap();
    within(alice.create_temporary(&["bob"], 0, false))
        .await
        .unwrap();

    over_memberships(within(alice.create_group("two", &[])).await, "alice", 3);
    over_memberships(within(alice.create_direct("dave")).await, "alice", 3);
    over_memberships(
        within(alice.create_temporary(&["dave"], 0, false)).await,
        "alice",
        3,
    );
    // Others cannot put alice in one either, and nothing is made.
    over_memberships(
        within(carol.create_group("c", &["alice"])).await,
        "alice",
        3,
    );
    let theirs = within(carol.create_group("c", &["dave"])).await.unwrap();
    over_memberships(
        within(carol.add_members(&theirs.id, &["alice"])).await,
        "alice",
        3,
    );
    let open = within(carol.join_conversation(&theirs.id)).await.unwrap();
    assert_eq!(open.member_count, 2, "carol was a member already");
    let system = api(
        &server,
        "POST",
        "/v1/system-conversations?by=news",
        Some(json!({"name": "News"})),
    )
    .await;
    assert!(
        system.status == 200 || system.status == 201,
        "{}",
        system.body
    );
    let news = system.body["id"].as_str().unwrap().to_owned();
    over_memberships(within(alice.join_conversation(&news)).await, "alice", 3);
    // The app's backend is held to it too.
    let r = api(
        &server,
        "POST",
        &format!("/v1/conversations/{}/members", theirs.id),
        Some(json!({"members": ["alice"]})),
    )
    .await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.body["code"], ErrorCode::ErrorLimitExceeded as i32);
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("max_conversations_per_user is 3"),
        "{}",
        r.body
    );
    let members = within(carol.count_members(&theirs.id)).await.unwrap();
    assert_eq!(members, 2, "nobody was added");
    // What is there already is found, not refused.
    let again = within(alice.create_direct("bob")).await.unwrap();
    assert_eq!(again.id, direct.id);

    // Counted from the store: the same after a restart, and leaving makes room.
    server.restart().await;
    let alice = server.client("alice").await;
    over_memberships(within(alice.create_group("two", &[])).await, "alice", 3);
    within(alice.leave(&first.id)).await.unwrap();
    within(alice.create_group("two", &[])).await.unwrap();
    over_memberships(within(alice.create_group("three", &[])).await, "alice", 3);

    // Chat rooms: at most two at once, created or joined; memberships do not count them.
    let r1 = room(&alice).await.unwrap();
    room(&alice).await.unwrap();
    over_rooms(room(&alice).await, 2);
    let carol = server.client("carol").await;
    let hers = room(&carol).await.unwrap();
    over_rooms(within(alice.join_conversation(&hers.id)).await, 2);
    assert_eq!(within(carol.count_members(&hers.id)).await.unwrap(), 1);
    within(alice.leave(&r1.id)).await.unwrap();
    within(alice.join_conversation(&hers.id)).await.unwrap();
    assert_eq!(within(carol.count_members(&hers.id)).await.unwrap(), 2);
}

/// The same caps through the LeanCloud dialect: `conv/start` for a client in
/// `max_conversations_per_user` conversations, and a chat room beyond
/// `max_chat_rooms_per_user`, answer 4301 (`CONVERSATION_API_FAILED`) naming the limit;
/// `conv/add` of such a user lists them as failed with that code and reason.
#[tokio::test]
async fn leancloud_clients_over_the_per_user_caps_get_4301_naming_the_limit() {
    let server = crate::leancloud::lc_server_with(|c| {
        c.max_conversations_per_user = 1;
        c.max_chat_rooms_per_user = 1;
    })
    .await;
    let mut c = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    c.opened("alice", None).await;
    c.opened("bob", None).await;
    c.start("alice", &["alice", "bob"]).await;
    let start = |peer: &str, m: &[&str], transient: bool| GenericCommand {
        peer_id: Some(peer.into()),
        conv_message: Some(lc::ConvCommand {
            m: m.iter().map(|m| m.to_string()).collect(),
            transient: transient.then_some(true),
            ..Default::default()
        }),
        ..cmd(Cmd::Conv, Some(Op::Start))
    };
    let failed = |r: GenericCommand, limit: &str| {
        let e = r
            .error_message
            .clone()
            .unwrap_or_else(|| panic!("refused: {r:?}"));
        assert_eq!(e.code, 4301, "{e:?}");
        assert!(e.detail.as_deref().unwrap_or("").contains(limit), "{e:?}");
    };
    failed(
        c.request(start("alice", &["alice"], false)).await,
        "max_conversations_per_user is 1",
    );
    c.opened("carol", None).await;
    let carols = c.start("carol", &["carol"]).await;
    let add = GenericCommand {
        peer_id: Some("carol".into()),
        conv_message: Some(lc::ConvCommand {
            cid: Some(carols),
            m: vec!["bob".into()],
            ..Default::default()
        }),
        ..cmd(Cmd::Conv, Some(Op::Add))
    };
    // `conv/add` answers `added` with the users it could not add, each with why.
    let r = c.request(add).await;
    let added = r.conv_message.expect("conv/added");
    assert!(added.allowed_pids.is_empty(), "{added:?}");
    let [why] = &added.failed_pids[..] else {
        panic!("{added:?}")
    };
    assert_eq!((why.code, why.pids.clone()), (4301, vec!["bob".to_owned()]));
    assert!(
        why.detail
            .as_deref()
            .unwrap_or("")
            .contains("max_conversations_per_user is 1"),
        "{why:?}"
    );

    let r = c.request(start("carol", &[], true)).await;
    assert!(r.conv_message.is_some(), "{r:?}");
    failed(
        c.request(start("carol", &[], true)).await,
        "max_chat_rooms_per_user is 1",
    );
}

/// A client's whole list, every conversation's history and member count, as one value.
async fn everything(c: &Client, ids: &[String]) -> (Vec<pb::ListEntry>, Vec<Vec<pb::Message>>) {
    let list = within(c.list_all(pb::ListConversations::default()))
        .await
        .unwrap();
    let mut histories = Vec::new();
    for id in ids {
        histories.push(within(c.sync_all(id, 0)).await.unwrap());
    }
    (list, histories)
}

/// Over `conversation_cells_max` loaded conversations, the least recently used are unloaded
/// (counted by `tidings_conversations_loaded` and `tidings_conversations_unloaded_total`).
/// What clients see is the same before, after, and after a restart: list order, unread
/// counts, read positions, pins, last messages, histories, members; a send after the reload
/// takes the next seq and is pushed.
#[tokio::test]
async fn conversations_over_conversation_cells_max_are_unloaded_and_read_back_as_after_a_restart() {
    let mut server = TestServer::start_with(|c| {
        c.conversation_cells_max = 4;
        c.conversation_idle_secs = 0;
        c.admin_listen = "127.0.0.1:0".into();
        c.admin_api_keys = vec![KEY.into()];
    })
    .await;
    let alice = server.client("alice").await;
    let (mut bob, _) = server.login("bob").await;
    let mut ids = Vec::new();
    for i in 0..8 {
        let g = within(alice.create_group(&format!("g{i}"), &["bob"]))
            .await
            .unwrap();
        // One group stays empty (it sorts by when it was made).
        for k in 0..i % 3 {
            within(alice.send_text(&g.id, &format!("{i}.{k}")))
                .await
                .unwrap();
        }
        ids.push(g.id);
    }
    let direct = within(alice.create_direct("bob")).await.unwrap();
    within(alice.send_text(&direct.id, "hi")).await.unwrap();
    ids.push(direct.id.clone());
    let temporary = within(alice.create_temporary(&["bob"], 0, false))
        .await
        .unwrap();
    within(alice.send_text(&temporary.id, "ticket"))
        .await
        .unwrap();
    ids.push(temporary.id.clone());
    within(bob.mark_read(&ids[2], 1)).await.unwrap();
    within(bob.pin(&ids[4], true)).await.unwrap();
    within(bob.set_muted(&ids[7], true)).await.unwrap();
    let before = everything(&bob, &ids).await;
    drain(&mut bob).await;

    // The sweep runs every minute on the server's clock, and at once over the cap.
    server
        .clock
        .advance(tidings::registry::cells::SWEEP_EVERY_MS);
    let stats = server.running().app.stats.clone();
    within(stats.conversations_loaded.wait_for_at_most(4)).await;
    let m = metrics_of(&server).await;
    assert!(m["tidings_conversations_loaded"] <= 4.0, "{m:?}");
    assert!(m["tidings_conversations_unloaded_total"] >= 6.0, "{m:?}");
    assert_eq!(everything(&bob, &ids).await, before);

    // Writes after the reload: the next seq, pushed; the unread count moves.
    let ack = within(alice.send_text(&ids[0], "after")).await.unwrap();
    assert_eq!(ack.seq, 1);
    let pushed = next_message(&mut bob).await;
    assert_eq!((pushed.seq, text(&pushed)), (1, "after".to_owned()));
    let ack = within(alice.send_text(&ids[2], "after")).await.unwrap();
    assert_eq!(ack.seq, 3);
    next_message(&mut bob).await;
    let entry = within(bob.get_list_entry(&ids[2])).await.unwrap();
    assert_eq!((entry.read_seq, entry.unread, entry.last_seq), (1, 2, 3));
    within(alice.add_members(&ids[1], &["carol"]))
        .await
        .unwrap();
    assert_eq!(within(bob.count_members(&ids[1])).await.unwrap(), 3);
    let after = everything(&bob, &ids).await;

    // The same as a server that never had them in memory.
    server
        .clock
        .advance(tidings::registry::cells::SWEEP_EVERY_MS);
    within(stats.conversations_loaded.wait_for_at_most(4)).await;
    assert_eq!(everything(&bob, &ids).await, after);
    server.restart().await;
    let bob = server.client("bob").await;
    assert_eq!(everything(&bob, &ids).await, after);
}

/// Conversations unused for `conversation_idle_secs` are unloaded, however few; a chat room
/// with members and a conversation with presence subscribers stay (what they hold lives in
/// memory only) and keep working; they go once that is over.
#[tokio::test]
async fn idle_conversations_are_unloaded_but_rooms_with_members_and_watched_ones_stay() {
    let server = TestServer::start_with(|c| c.conversation_idle_secs = 60).await;
    let stats = server.running().app.stats.clone();
    // The sweep at start is done, so the next one counted is the clock's.
    within(stats.conversation_sweeps.wait_for(1)).await;
    let alice = server.client("alice").await;
    let mut bob = server.client("bob").await;
    let group = within(alice.create_group("g", &["bob"])).await.unwrap();
    within(alice.send_text(&group.id, "one")).await.unwrap();
    let watched = within(alice.create_group("w", &["bob"])).await.unwrap();
    within(bob.subscribe_presence(&watched.id)).await.unwrap();
    let r = room(&alice).await.unwrap();
    within(bob.join_conversation(&r.id)).await.unwrap();
    drain(&mut bob).await;
    assert_eq!(stats.conversations_loaded.get(), 3);

    let sweeps = stats.conversation_sweeps.get();
    server.clock.advance(120_000);
    within(stats.conversation_sweeps.wait_for(sweeps + 1)).await;
    within(stats.conversations_loaded.wait_for_at_most(2)).await;
    assert_eq!(
        stats.conversations_loaded.get(),
        2,
        "the room and the watched group"
    );

    // The room still has both members; the watched group's subscriber still hears.
    assert_eq!(within(bob.count_members(&r.id)).await.unwrap(), 2);
    within(alice.send_text(&r.id, "in the room")).await.unwrap();
    assert_eq!(text(&next_message(&mut bob).await), "in the room");
    let ack = within(alice.send_text(&group.id, "two")).await.unwrap();
    assert_eq!(ack.seq, 2);
    assert_eq!(text(&next_message(&mut bob).await), "two");
    alice.disconnect();
    loop {
        if let pb::server_frame::Body::PresenceChange(p) = push(&mut bob).await {
            assert_eq!((p.user_id.as_str(), p.online), ("alice", false));
            assert_eq!(p.conversation_id, watched.id);
            break;
        }
    }

    // Once the room is empty and nobody watches, they go too.
    within(bob.leave(&r.id)).await.unwrap();
    within(bob.unsubscribe_presence(&watched.id)).await.unwrap();
    let sweeps = stats.conversation_sweeps.get();
    server.clock.advance(120_000);
    within(stats.conversation_sweeps.wait_for(sweeps + 1)).await;
    assert_eq!(stats.conversations_loaded.get(), 0);
    // Read back as it was: an empty room, which can be joined again.
    let joined = within(bob.join_conversation(&r.id)).await.unwrap();
    assert_eq!(joined.member_count, 1);
}

/// What a [`Hold`] holds.
#[derive(Clone, Copy, PartialEq)]
enum Held {
    /// A commit that stores a message.
    MessageCommit,
    /// A read of a conversation's members (a load).
    MemberRead,
}

/// Holds, while armed, the store operations of one kind, until released.
struct Hold {
    what: Held,
    /// (armed, holding)
    state: Mutex<(bool, bool)>,
    changed: Condvar,
}

impl Hold {
    fn new(what: Held) -> Arc<Hold> {
        Arc::new(Hold {
            what,
            state: Mutex::new((false, false)),
            changed: Condvar::new(),
        })
    }

    fn arm(&self) {
        self.state.lock().unwrap().0 = true;
    }

    /// Waits (off the runtime) until an operation is being held.
    async fn holding(self: &Arc<Self>) {
        let gate = self.clone();
        within(tokio::task::spawn_blocking(move || {
            let mut st = gate.state.lock().unwrap();
            while !st.1 {
                st = gate.changed.wait(st).unwrap();
            }
        }))
        .await
        .unwrap();
    }

    fn release(&self) {
        self.state.lock().unwrap().0 = false;
        self.changed.notify_all();
    }

    /// Holds the calling thread while armed.
    fn hold_here(&self) {
        let mut st = self.state.lock().unwrap();
        if !st.0 {
            return;
        }
        st.1 = true;
        self.changed.notify_all();
        while st.0 {
            st = self.changed.wait(st).unwrap();
        }
        st.1 = false;
    }
}

impl Watch for Hold {
    fn commit(&self, ops: &[tidings::store::Op]) -> Result<(), tidings::store::StoreError> {
        if self.what == Held::MessageCommit
            && ops
                .iter()
                .any(|op| matches!(op, tidings::store::Op::PutMessage { .. }))
        {
            self.hold_here();
        }
        Ok(())
    }

    fn read(&self, what: &'static str) {
        if self.what == Held::MemberRead && what == "members" {
            self.hold_here();
        }
    }
}

/// Sends racing the unloading of their conversations lose nothing: with at most one
/// conversation kept loaded, three clients send into six conversations at once while the
/// sweep keeps unloading them (and one send's commit is held while the sweep runs); every
/// acked message is in its conversation's history under the seq its ack gave, seqs are
/// gapless, and so after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_racing_the_unloading_of_their_conversations_lose_nothing() {
    let gate = Hold::new(Held::MessageCommit);
    let mut server = crate::spied_store::spied_server(gate.clone(), |c| {
        c.conversation_cells_max = 1;
        c.conversation_idle_secs = 1;
    })
    .await;
    let stats = server.running().app.stats.clone();
    within(stats.conversation_sweeps.wait_for(1)).await;
    let users = ["alice", "bob", "carol"];
    let mut clients = Vec::new();
    for u in users {
        clients.push(Arc::new(server.client(u).await));
    }
    let mut ids = Vec::new();
    for i in 0..6 {
        let g = within(clients[0].create_group(&format!("g{i}"), &["bob", "carol"]))
            .await
            .unwrap();
        ids.push(g.id);
    }
    // The first message's commit is held while the sweep runs (and chooses the others).
    gate.arm();
    let held = {
        let (c, id) = (clients[1].clone(), ids[0].clone());
        tokio::spawn(async move { c.send_text(&id, "held").await })
    };
    gate.holding().await;
    let sweeps = stats.conversation_sweeps.get();
    server
        .clock
        .advance(tidings::registry::cells::SWEEP_EVERY_MS);
    let mut tasks = Vec::new();
    for (n, c) in clients.iter().enumerate() {
        let (c, ids) = (c.clone(), ids.clone());
        tasks.push(tokio::spawn(async move {
            let mut acks = Vec::new();
            for k in 0..30 {
                let id = &ids[(k + n) % ids.len()];
                let body = format!("{n}.{k}");
                let ack = c.send_text(id, &body).await.unwrap();
                acks.push((id.clone(), ack.seq, body));
            }
            acks
        }));
    }
    gate.release();
    let held = within(held).await.unwrap().unwrap();
    let mut acked: Vec<(String, u64, String)> = vec![(ids[0].clone(), held.seq, "held".into())];
    for t in tasks {
        acked.extend(within(t).await.unwrap());
    }
    within(stats.conversation_sweeps.wait_for(sweeps + 1)).await;
    assert!(stats.conversations_unloaded.get() > 0);

    let check = |histories: Vec<Vec<pb::Message>>| {
        for (id, history) in ids.iter().zip(histories) {
            let seqs: Vec<u64> = history.iter().map(|m| m.seq).collect();
            assert_eq!(seqs, (1..=history.len() as u64).collect::<Vec<_>>(), "{id}");
            let mine: Vec<_> = acked.iter().filter(|(c, ..)| c == id).collect();
            assert_eq!(mine.len(), history.len(), "{id}");
            for (_, seq, body) in mine {
                assert_eq!(&text(&history[*seq as usize - 1]), body, "{id} seq {seq}");
            }
        }
    };
    check(everything(&clients[2], &ids).await.1);
    drop(clients);
    server.restart().await;
    let carol = server.client("carol").await;
    check(everything(&carol, &ids).await.1);
}

/// A pre-send hook that answers at once (allow), except for messages whose text is `held`:
/// those wait until [`HeldHook::release`].
struct HeldHook {
    url: String,
    asked: Arc<tokio::sync::Notify>,
    release: Arc<tokio::sync::Semaphore>,
}

impl HeldHook {
    async fn start() -> HeldHook {
        use http_body_util::{BodyExt, Full};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let asked = Arc::new(tokio::sync::Notify::new());
        let release = Arc::new(tokio::sync::Semaphore::new(0));
        let (a, r) = (asked.clone(), release.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (a, r) = (a.clone(), r.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: hyper::Request<_>| {
                        let (a, r) = (a.clone(), r.clone());
                        async move {
                            let body: hyper::body::Incoming = req.into_body();
                            let body = body.collect().await.unwrap().to_bytes();
                            let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
                            if body["message"]["text"] == "held" {
                                a.notify_one();
                                r.acquire().await.unwrap().forget();
                            }
                            Ok::<_, std::io::Error>(hyper::Response::new(Full::new(
                                bytes::Bytes::new(),
                            )))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        HeldHook {
            url,
            asked,
            release,
        }
    }

    fn release(&self) {
        self.release.add_permits(1);
    }
}

/// A send that took its conversation before the sweep ran and is still on its way to the
/// writer (waiting for the pre-send hook) keeps the conversation loaded, however idle: were
/// it unloaded, the next request would read the conversation back from the store and hand out
/// the seq that send is about to take.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_on_its_way_keeps_its_conversation_loaded() {
    let hook = HeldHook::start().await;
    let url = hook.url.clone();
    let server = TestServer::start_with(move |c| {
        c.pre_send_hook_url = Some(url);
        c.pre_send_hook_secret = Some(crate::webhooks::SECRET.into());
        c.pre_send_hook_timeout_ms = 20_000;
        c.conversation_idle_secs = 1;
    })
    .await;
    let stats = server.running().app.stats.clone();
    within(stats.conversation_sweeps.wait_for(1)).await;
    let alice = server.client("alice").await;
    let bob = Arc::new(server.client("bob").await);
    let g = within(alice.create_group("g", &["bob"])).await.unwrap();
    let asked = hook.asked.notified();
    let sending = {
        let (bob, id) = (bob.clone(), g.id.clone());
        tokio::spawn(async move { bob.send_text(&id, "held").await })
    };
    within(asked).await;

    let sweeps = stats.conversation_sweeps.get();
    server
        .clock
        .advance(tidings::registry::cells::SWEEP_EVERY_MS);
    within(stats.conversation_sweeps.wait_for(sweeps + 1)).await;
    assert_eq!(stats.conversations_loaded.get(), 1, "the send holds it");
    let first = within(alice.send_text(&g.id, "meanwhile")).await.unwrap();
    hook.release();
    let second = within(sending).await.unwrap().unwrap();
    assert_eq!((first.seq, second.seq), (1, 2));
    let history = within(alice.sync_all(&g.id, 0)).await.unwrap();
    let texts: Vec<String> = history.iter().map(text).collect();
    assert_eq!(texts, ["meanwhile", "held"]);
}

/// Edited and recalled messages are held in memory only until their commit is over: after
/// many edits nothing stays held, a rewrite whose commit is pending is held, and every read
/// gives the newest version before and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewritten_messages_are_held_only_until_committed() {
    let gate = Hold::new(Held::MessageCommit);
    let server = crate::spied_store::spied_server(gate.clone(), |_| {}).await;
    let registry = server.running().app.registry.clone();
    let alice = server.client("alice").await;
    let bob = server.client("bob").await;
    let g = within(alice.create_group("g", &["bob"])).await.unwrap();
    let mut ids = Vec::new();
    let mut first_seq = 0;
    for k in 0..40 {
        let ack = within(alice.send_text(&g.id, &format!("m{k}")))
            .await
            .unwrap();
        if k == 0 {
            first_seq = ack.seq;
        }
        ids.push(ack.message_id);
    }
    for (k, id) in ids.iter().enumerate() {
        if k % 4 == 3 {
            within(alice.recall(&g.id, id)).await.unwrap();
        } else {
            within(alice.edit_text(&g.id, id, &format!("e{k}")))
                .await
                .unwrap();
        }
    }
    assert_eq!(registry.rewrites_pending(&g.id), 0);
    let page = within(bob.history(&g.id, 0, 100)).await.unwrap();
    for (k, m) in page.messages.iter().enumerate() {
        if k % 4 == 3 {
            assert!(m.recalled, "{k}");
        } else {
            assert_eq!(text(m), format!("e{k}"));
        }
    }

    // An edit whose commit is held stays held; one queued behind it starts from it.
    let alice = Arc::new(alice);
    gate.arm();
    let first = {
        let (c, g, id) = (alice.clone(), g.id.clone(), ids[0].clone());
        tokio::spawn(async move { c.edit_text(&g, &id, "again").await })
    };
    gate.holding().await;
    assert_eq!(registry.rewrites_pending(&g.id), 1);
    let second = {
        let (c, g, id) = (alice.clone(), g.id.clone(), ids[0].clone());
        tokio::spawn(async move { c.edit_text(&g, &id, "last").await })
    };
    gate.release();
    within(first).await.unwrap().unwrap();
    let last = within(second).await.unwrap().unwrap();
    assert_eq!(last.edit_count, 3);
    assert_eq!(registry.rewrites_pending(&g.id), 0);
    let page = within(bob.history(&g.id, first_seq + 1, 1)).await.unwrap();
    assert_eq!(text(&page.messages[0]), "last");
    assert_eq!(page.messages[0].edit_count, 3);
}

/// The member records the loaded conversations hold are bounded too: over
/// `conversation_members_loaded_max`, the sweep unloads the least recently used conversations
/// down to nine tenths of it however few are loaded (counted by
/// `tidings_conversation_members_loaded`), and they read back from the store as after a
/// restart.
#[tokio::test]
async fn conversations_holding_more_members_than_the_bound_are_unloaded() {
    let server = TestServer::start_with(|c| {
        c.conversation_members_loaded_max = 100;
        c.conversation_idle_secs = 0;
        c.admin_listen = "127.0.0.1:0".into();
        c.admin_api_keys = vec![KEY.into()];
    })
    .await;
    let stats = server.running().app.stats.clone();
    let alice = server.client("alice").await;
    let names: Vec<String> = (1..30).map(|n| format!("member-{n}")).collect();
    let members: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut ids = Vec::new();
    for i in 0..6 {
        let g = within(alice.create_group(&format!("g{i}"), &members))
            .await
            .unwrap();
        ids.push(g.id);
        within(stats.conversation_members_loaded.wait_for_at_most(100)).await;
    }
    // Thirty members each: three groups fit under 90.
    let m = metrics_of(&server).await;
    assert!(m["tidings_conversation_members_loaded"] <= 90.0, "{m:?}");
    assert!(m["tidings_conversations_loaded"] <= 3.0, "{m:?}");
    assert!(m["tidings_conversations_unloaded_total"] >= 3.0, "{m:?}");
    for id in &ids {
        assert_eq!(within(alice.count_members(id)).await.unwrap(), 30);
        within(stats.conversation_members_loaded.wait_for_at_most(100)).await;
    }
}

/// Releases the held reads when dropped, so a failing test does not leave the server stuck.
struct Released(Arc<Hold>);

impl Drop for Released {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// Loading a conversation from the store (every member record: long for a large group on a
/// cold disk) holds up nobody else: on a runtime with a single thread serving sockets, while
/// one request's load is held, another user's requests are answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_conversation_loading_holds_up_no_other_session() {
    let gate = Hold::new(Held::MemberRead);
    let mut server = crate::spied_store::spied_server(gate.clone(), |_| {}).await;
    let alice = server.client("alice").await;
    let g = within(alice.create_group("cold", &["bob"])).await.unwrap();
    let warm = within(alice.create_group("warm", &["carol"]))
        .await
        .unwrap();
    drop(alice);
    server.restart().await;
    let bob = server.client("bob").await;
    within(bob.get_conversation(&warm.id))
        .await
        .expect_err("not bob's");
    gate.arm();
    let _released = Released(gate.clone());
    let loading = tokio::spawn(async move { bob.get_conversation(&g.id).await });
    gate.holding().await;
    // bob's load is held in the store; carol's requests are answered meanwhile. She runs on
    // a runtime of her own and is waited for by the clock of the OS: a stuck server thread
    // would stop this runtime's timers too.
    let (url, token) = (server.url(), server.token("carol"));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let answered = rt.block_on(async {
            let carol = Client::connect(&url).await?;
            carol.login(&token, "d", 0).await?;
            for _ in 0..3 {
                carol.get_conversation(&warm.id).await?;
            }
            Ok::<_, ClientError>(())
        });
        let _ = tx.send(answered.is_ok());
    });
    let answered = rx.recv_timeout(std::time::Duration::from_secs(20));
    assert_eq!(answered, Ok(true), "carol was held up by bob's load");
    gate.release();
    let got = within(loading).await.unwrap().unwrap();
    assert_eq!(got.member_count, 2);
}
