//! The pre-send hook: a real HTTP endpoint (the webhook tests' receiver) that allows, rejects,
//! rewrites, or answers too late; native and LeanCloud clients see its decisions.

use crate::harness::*;
use crate::webhooks::{Answer, Receiver, SECRET};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tidings::client::{Client, ClientError};
use tidings::leancloud::LcProtocol;
use tidings::protocol::pb;

async fn hook_server(
    rx: &Receiver,
    tweak: impl FnOnce(&mut tidings::config::Config),
) -> TestServer {
    hook_server_at(rx.url(), tweak).await
}

async fn hook_server_at(
    url: String,
    tweak: impl FnOnce(&mut tidings::config::Config),
) -> TestServer {
    TestServer::start_with(move |c| {
        c.pre_send_hook_url = Some(url);
        c.pre_send_hook_secret = Some(SECRET.into());
        c.pre_send_hook_timeout_ms = 2_000;
        c.leancloud_app_id = Some(crate::leancloud::APP_ID.into());
        c.leancloud_master_key = Some(crate::leancloud::MASTER_KEY.into());
        c.admin_listen = "127.0.0.1:0".into();
        c.admin_api_keys = vec![crate::admin::KEY.into()];
        tweak(c);
    })
    .await
}

/// Each user's calls: how many came, how many are held now, the most held at once.
#[derive(Default)]
struct Counts {
    calls: HashMap<String, usize>,
    held: HashMap<String, usize>,
    most: HashMap<String, usize>,
}

/// A healthy moderation hook that rejects everything it is asked about ("moderated"): it
/// holds each call until its gate is open, then answers after `delay_ms`. It tells which
/// user each call is about as the call arrives, and counts each user's calls in flight.
struct Moderator {
    addr: std::net::SocketAddr,
    arrivals: tokio::sync::mpsc::UnboundedReceiver<String>,
    gate: tokio::sync::watch::Sender<bool>,
    counts: Arc<Mutex<Counts>>,
}

impl Moderator {
    async fn start(delay_ms: u64, open: bool) -> Moderator {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, arrivals) = tokio::sync::mpsc::unbounded_channel();
        let (gate, opened) = tokio::sync::watch::channel(open);
        let counts = Arc::new(Mutex::new(Counts::default()));
        let c = counts.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (tx, opened, counts) = (tx.clone(), opened.clone(), c.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: hyper::Request<_>| {
                        let (tx, mut opened, counts) = (tx.clone(), opened.clone(), counts.clone());
                        async move {
                            let body: hyper::body::Incoming = req.into_body();
                            let body = body.collect().await.unwrap().to_bytes();
                            let asked: Value = serde_json::from_slice(&body).unwrap();
                            let user = asked["user"].as_str().unwrap().to_owned();
                            {
                                let mut c = counts.lock().unwrap();
                                *c.calls.entry(user.clone()).or_default() += 1;
                                let held = c.held.entry(user.clone()).or_default();
                                *held += 1;
                                let held = *held;
                                let most = c.most.entry(user.clone()).or_default();
                                *most = (*most).max(held);
                            }
                            let _ = tx.send(user.clone());
                            let _ = opened.wait_for(|open| *open).await;
                            if delay_ms > 0 {
                                // The hook's own work, well inside the timeout.
                                tokio::time::sleep(std::time::Duration::from_millis(delay_ms))
                                    .await;
                            }
                            *counts.lock().unwrap().held.get_mut(&user).unwrap() -= 1;
                            let answer = json!({"action": "reject", "reason": "moderated"});
                            Ok::<_, std::io::Error>(hyper::Response::new(Full::new(
                                bytes::Bytes::from(answer.to_string()),
                            )))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Moderator {
            addr,
            arrivals,
            gate,
            counts,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/moderate", self.addr)
    }

    /// Lets every call held, and every later one, be answered.
    fn open(&self) {
        self.gate.send_replace(true);
    }

    /// The user the next call to arrive is about.
    async fn arrival(&mut self) -> String {
        within(self.arrivals.recv()).await.unwrap()
    }

    fn calls(&self, user: &str) -> usize {
        let c = self.counts.lock().unwrap();
        c.calls.get(user).copied().unwrap_or(0)
    }

    fn most(&self, user: &str) -> usize {
        let c = self.counts.lock().unwrap();
        c.most.get(user).copied().unwrap_or(0)
    }
}

fn says(body: Value) -> Answer {
    Answer {
        status: 200,
        body: body.to_string(),
        delay_ms: 0,
        ..Default::default()
    }
}

fn code(e: &ClientError) -> Option<pb::ErrorCode> {
    e.code()
}

fn send_req(id: &str, text: &str, client_id: &str) -> pb::SendMessage {
    pb::SendMessage {
        conversation_id: id.into(),
        content: text.as_bytes().to_vec().into(),
        client_message_id: client_id.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn sends_are_allowed_rejected_or_rewritten_and_a_retry_is_not_asked_again() {
    let mut rx = Receiver::start(200).await;
    let server = hook_server(&rx, |_| {}).await;
    let (alice, _) = server.login("alice").await;
    let (mut bob, _) = server.login("bob").await;
    // An empty 2xx answer allows (and conversation names are asked about too).
    let d = within(alice.create_direct("bob")).await.unwrap();
    event(&mut bob).await;

    within(alice.send(send_req(&d.id, "hello", "")))
        .await
        .unwrap();
    let asked = rx.next().await;
    let body: Value = serde_json::from_str(&asked.body).unwrap();
    assert_eq!(body["type"], "message.send");
    assert_eq!(
        (body["user"].as_str(), body["conversation_id"].as_str()),
        (Some("alice"), Some(d.id.as_str()))
    );
    assert_eq!(body["message"]["text"], "hello");
    // Signed as webhooks are.
    let key = tidings::webhooks::secret_bytes(SECRET).unwrap();
    let ts: i64 = asked.header("webhook-timestamp").parse().unwrap();
    assert_eq!(
        asked.header("webhook-signature"),
        tidings::webhooks::signature(&key, asked.header("webhook-id"), ts, asked.body.as_bytes())
    );
    assert_eq!(text(&message(&mut bob).await), "hello");

    rx.answer_next_with(&[says(
        json!({"action": "reject", "reason": "no links, please"}),
    )]);
    let e = within(alice.send(send_req(&d.id, "http://spam", "c-1")))
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(pb::ErrorCode::ErrorRejected));
    assert!(e.to_string().contains("no links, please"), "{e}");
    rx.next().await;
    // The retry gets the same answer without a second question.
    let again = within(alice.send(send_req(&d.id, "http://spam", "c-1")))
        .await
        .unwrap_err();
    assert_eq!(code(&again), Some(pb::ErrorCode::ErrorRejected));

    rx.answer_next_with(&[says(
        json!({"action": "rewrite", "text": "h***o", "attributes": {"moderated": "1"}}),
    )]);
    let ack = within(alice.send(send_req(&d.id, "hello", "c-2")))
        .await
        .unwrap();
    // The next question is this send's: the retry above asked nothing.
    let asked = rx.next().await;
    assert!(asked.body.contains("c-2"), "{}", asked.body);
    let m = message(&mut bob).await;
    assert_eq!(
        (
            text(&m).as_str(),
            m.attributes.get("moderated").map(String::as_str)
        ),
        ("h***o", Some("1"))
    );
    assert_eq!(m.id, ack.message_id);
    // Stored as rewritten.
    let page = within(alice.history(&d.id, 0, 10)).await.unwrap();
    assert_eq!(text(page.messages.last().unwrap()), "h***o");
    // A retry of the accepted send is answered from the store, not asked again.
    let dup = within(alice.send(send_req(&d.id, "hello", "c-2")))
        .await
        .unwrap();
    assert!(dup.duplicate);
    within(alice.send(send_req(&d.id, "barrier", "")))
        .await
        .unwrap();
    assert!(rx.next().await.body.contains("barrier"));
}

#[tokio::test]
async fn edits_names_and_attributes_go_through_the_hook() {
    let mut rx = Receiver::start(200).await;
    let server = hook_server(&rx, |_| {}).await;
    let (alice, _) = server.login("alice").await;
    rx.answer_next_with(&[says(json!({"action": "rewrite", "name": "a polite name"}))]);
    let g = within(alice.create_group("a rude name", &["bob"]))
        .await
        .unwrap();
    assert_eq!(g.name, "a polite name");
    let asked: Value = serde_json::from_str(&rx.next().await.body).unwrap();
    assert_eq!(asked["type"], "conversation.create");
    assert_eq!(asked["conversation"]["name"], "a rude name");

    rx.answer_next_with(&[says(
        json!({"action": "reject", "reason": "not that topic"}),
    )]);
    let e = within(alice.update(pb::UpdateConversation {
        conversation_id: g.id.clone(),
        set_attributes: [("topic".to_owned(), "bad".to_owned())].into(),
        ..Default::default()
    }))
    .await
    .unwrap_err();
    assert_eq!(code(&e), Some(pb::ErrorCode::ErrorRejected));
    rx.next().await;

    let ack = within(alice.send_text(&g.id, "first")).await.unwrap();
    rx.next().await;
    rx.answer_next_with(&[says(
        json!({"action": "rewrite", "text": "second, cleaned"}),
    )]);
    let edited = within(alice.edit_text(&g.id, &ack.message_id, "second, dirty"))
        .await
        .unwrap();
    assert_eq!(text(&edited), "second, cleaned");
    let asked: Value = serde_json::from_str(&rx.next().await.body).unwrap();
    assert_eq!(
        (asked["type"].as_str(), asked["message"]["id"].as_str()),
        (Some("message.edit"), Some(ack.message_id.as_str()))
    );
}

#[tokio::test]
async fn a_hook_that_answers_late_allows_or_refuses_as_configured() {
    let mut rx = Receiver::start(200).await;
    let late = Answer {
        status: 200,
        body: json!({"action": "reject", "reason": "too late to count"}).to_string(),
        delay_ms: 1_000,
        ..Default::default()
    };
    // Fail-open (the default): allowed.
    let server = hook_server(&rx, |c| c.pre_send_hook_timeout_ms = 100).await;
    let (alice, _) = server.login("alice").await;
    let d = within(alice.create_direct("bob")).await.unwrap();
    rx.answer_next_with(std::slice::from_ref(&late));
    within(alice.send_text(&d.id, "through")).await.unwrap();
    rx.next().await;
    // A non-2xx answer is a failure too.
    rx.answer_next(&[500]);
    within(alice.send_text(&d.id, "through again"))
        .await
        .unwrap();
    rx.next().await;

    // Fail-closed: refused, retryable.
    let closed = hook_server(&rx, |c| {
        c.pre_send_hook_timeout_ms = 100;
        c.pre_send_hook_fail_closed = true;
    })
    .await;
    let (alice, _) = closed.login("alice").await;
    let d = within(alice.create_direct("bob")).await.unwrap();
    rx.answer_next_with(&[late]);
    let e = within(alice.send_text(&d.id, "refused")).await.unwrap_err();
    assert_eq!(code(&e), Some(pb::ErrorCode::ErrorUnavailable));
}

#[tokio::test]
async fn a_slow_hook_call_never_holds_up_the_conversations_other_messages() {
    let mut rx = Receiver::start(200).await;
    let server = hook_server(&rx, |_| {}).await;
    let (alice, _) = server.login("alice").await;
    let (bob, _) = server.login("bob").await;
    let d = within(alice.create_direct("bob")).await.unwrap();
    rx.answer_next_with(&[Answer {
        status: 200,
        body: String::new(),
        delay_ms: 1_500,
        ..Default::default()
    }]);
    let id = d.id.clone();
    let slow = tokio::spawn(async move { alice.send_text(&id, "slow").await });
    rx.next().await;
    // While alice's send waits for its answer, bob's in the same conversation goes through.
    within(bob.send_text(&d.id, "fast")).await.unwrap();
    assert!(!slow.is_finished());
    within(slow).await.unwrap().unwrap();
}

#[tokio::test]
async fn leancloud_clients_get_4402_with_the_reason() {
    let mut rx = Receiver::start(200).await;
    let server = hook_server(&rx, |_| {}).await;
    let mut c = crate::leancloud_wire::Lc::connect(&server, LcProtocol::ProtobufV3).await;
    c.opened("alice", None).await;
    let cid = c.start("alice", &["bob"]).await;
    rx.answer_next_with(&[says(json!({"action": "reject", "reason": "be nice"}))]);
    let ack = c.direct("alice", &cid, "rude", false).await;
    assert_eq!(ack.code, Some(4402), "{ack:?}");
    assert_eq!(
        (ack.reason.as_deref(), ack.app_msg.as_deref()),
        (Some("MESSAGE_REJECTED_BY_APP"), Some("be nice"))
    );
    let _ = rx.next().await;
}

#[tokio::test]
async fn a_burst_that_fills_the_shared_slots_leaves_everyone_moderated() {
    for fail_closed in [false, true] {
        // Every call is answered in 300 ms, well inside the timeout; two at a time.
        let mut hook = Moderator::start(300, true).await;
        let server = hook_server_at(hook.url(), |c| {
            c.pre_send_hook_timeout_ms = 1_500;
            c.pre_send_hook_max_concurrency = 2;
            c.pre_send_hook_queue_timeout_ms = 60_000;
            c.pre_send_hook_fail_closed = fail_closed;
        })
        .await;
        let owner = server.client("owner").await;
        let g = within(owner.create_group("", &["att0", "att1", "by"]))
            .await
            .unwrap();
        let att = [server.client("att0").await, server.client("att1").await];
        let by = server.client("by").await;
        // Two users send ten messages each at once: far more than the two slots.
        let burst = futures_util::future::join_all(
            att.iter()
                .flat_map(|c| (0..10).map(|i| c.send(send_req(&g.id, "bad", &format!("b{i}"))))),
        );
        let bystander = async {
            // The burst holds both slots; the bystander's send comes behind it.
            hook.arrival().await;
            hook.arrival().await;
            by.send(send_req(&g.id, "bad too", "by-1")).await
        };
        let (burst, mine) = within(async { tokio::join!(burst, bystander) }).await;
        let e = mine.unwrap_err();
        assert_eq!(
            code(&e),
            Some(pb::ErrorCode::ErrorRejected),
            "fail_closed={fail_closed}: {e}"
        );
        assert!(e.to_string().contains("moderated"), "{e}");
        for r in burst {
            let e = r.unwrap_err();
            assert_eq!(code(&e), Some(pb::ErrorCode::ErrorRejected), "{e}");
        }
        assert_eq!(hook.calls("by"), 1);
        // Nothing was stored without the hook's answer.
        let owner = server.client("owner").await;
        let page = within(owner.history(&g.id, 0, 100)).await.unwrap();
        assert!(page.messages.is_empty(), "{:?}", page.messages);
    }
}

#[tokio::test]
async fn a_send_refused_anyway_never_reaches_the_hook() {
    let mut hook = Moderator::start(0, true).await;
    let server = hook_server_at(hook.url(), |_| {}).await;
    let alice = server.client("alice").await;
    let g = within(alice.create_group("", &["bob"])).await.unwrap();
    let mallory = server.client("mallory").await;
    // A non-member is told so, not the hook's reason, with or without a client message id.
    for client_id in ["", "m-1", "m-1"] {
        let e = within(mallory.send(send_req(&g.id, "spam", client_id)))
            .await
            .unwrap_err();
        assert_eq!(code(&e), Some(pb::ErrorCode::ErrorNotAMember), "{e}");
    }
    let e = within(mallory.update(pb::UpdateConversation {
        conversation_id: g.id.clone(),
        name: Some("spam".into()),
        ..Default::default()
    }))
    .await
    .unwrap_err();
    assert_eq!(code(&e), Some(pb::ErrorCode::ErrorNotAMember), "{e}");
    // The same through LeanCloud and through the admin API acting as her.
    let mut lc = crate::leancloud_wire::Lc::connect(&server, LcProtocol::ProtobufV3).await;
    lc.opened("mallory", None).await;
    let ack = lc.direct("mallory", &g.id, "spam", false).await;
    assert_eq!(ack.code, Some(4401), "{ack:?}");
    let r = crate::admin::api(
        &server,
        "POST",
        &format!("/v1/conversations/{}/messages?as=mallory", g.id),
        Some(json!({"text": "spam"})),
    )
    .await;
    assert_eq!(r.status_code(), (403, Some(6)), "{}", r.text);
    // A muted member is told so too.
    within(alice.mute_members(&g.id, &["bob"], 3600))
        .await
        .unwrap();
    let bob = server.client("bob").await;
    let e = within(bob.send(send_req(&g.id, "hush", "b-1")))
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(pb::ErrorCode::ErrorMuted), "{e}");

    // The hook's first question is about alice's own message.
    let e = within(alice.send(send_req(&g.id, "hello", "")))
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(pb::ErrorCode::ErrorRejected), "{e}");
    assert_eq!(hook.arrival().await, "alice");
    assert_eq!((hook.calls("mallory"), hook.calls("bob")), (0, 0));
}

#[tokio::test]
async fn one_user_has_at_most_their_share_of_the_hook_in_flight() {
    let mut hook = Moderator::start(0, false).await;
    let server = hook_server_at(hook.url(), |c| c.pre_send_hook_max_per_user = 2).await;
    let (g, att, by) = att_and_by(&server).await;
    let burst = futures_util::future::join_all(
        (0..6).map(|i| att.send(send_req(&g.id, "bad", &format!("a{i}")))),
    );
    let rest = async {
        assert_eq!(hook.arrival().await, "att");
        assert_eq!(hook.arrival().await, "att");
        // Held by the hook: the user's other four wait behind these two, and another user's
        // send is asked about at once.
        let mine = async { by.send(send_req(&g.id, "bad too", "by-1")).await };
        let asked = async {
            assert_eq!(hook.arrival().await, "by");
            hook.open();
        };
        let (mine, ()) = tokio::join!(mine, asked);
        mine
    };
    let (burst, mine) = within(async { tokio::join!(burst, rest) }).await;
    assert_eq!(code(&mine.unwrap_err()), Some(pb::ErrorCode::ErrorRejected));
    for r in burst {
        assert_eq!(code(&r.unwrap_err()), Some(pb::ErrorCode::ErrorRejected));
    }
    // Every one of the user's sends was asked about, never more than two at once.
    assert_eq!((hook.calls("att"), hook.most("att")), (6, 2));
}

#[tokio::test]
async fn a_send_that_gets_no_slot_in_time_is_refused_not_stored_unasked() {
    let mut hook = Moderator::start(0, false).await;
    // Fail-open, one slot: the wait for it is bounded, and its end refuses.
    let server = hook_server_at(hook.url(), |c| {
        c.pre_send_hook_max_concurrency = 1;
        c.pre_send_hook_queue_timeout_ms = 200;
    })
    .await;
    let (g, att, by) = att_and_by(&server).await;
    let first = att.send(send_req(&g.id, "bad", "a-1"));
    let rest = async {
        assert_eq!(hook.arrival().await, "att");
        let mine = by.send(send_req(&g.id, "bad too", "by-1")).await;
        hook.open();
        mine
    };
    let (first, mine) = within(async { tokio::join!(first, rest) }).await;
    let e = mine.unwrap_err();
    assert_eq!(code(&e), Some(pb::ErrorCode::ErrorUnavailable), "{e}");
    assert_eq!(
        code(&first.unwrap_err()),
        Some(pb::ErrorCode::ErrorRejected)
    );
    assert_eq!(hook.calls("by"), 0);
    let owner = server.client("owner").await;
    let page = within(owner.history(&g.id, 0, 100)).await.unwrap();
    assert!(page.messages.is_empty(), "{:?}", page.messages);
}

#[tokio::test]
async fn edits_and_room_messages_refused_anyway_are_not_asked_about() {
    let mut rx = Receiver::start(200).await;
    let server = hook_server(&rx, |c| c.chat_room_messages_per_sec = 1).await;
    let alice = server.client("alice").await;
    let bob = server.client("bob").await;
    let g = within(alice.create_group("", &["bob"])).await.unwrap();
    let ack = within(alice.send_text(&g.id, "mine")).await.unwrap();
    rx.next().await;
    // Only the sender edits a message.
    let e = within(bob.edit_text(&g.id, &ack.message_id, "theirs"))
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(pb::ErrorCode::ErrorPermissionDenied), "{e}");
    // A chat room takes one message a second here: the second is refused by its rate.
    let room = within(alice.create(pb::CreateConversation {
        kind: pb::ConversationKind::ChatRoom as i32,
        ..Default::default()
    }))
    .await
    .unwrap();
    within(alice.send_text(&room.id, "one")).await.unwrap();
    assert!(rx.next().await.body.contains("one"));
    let e = within(alice.send_text(&room.id, "two")).await.unwrap_err();
    assert_eq!(code(&e), Some(pb::ErrorCode::ErrorRateLimited), "{e}");
    // Neither was asked about: the next question is this send's.
    within(alice.send_text(&g.id, "barrier")).await.unwrap();
    assert!(rx.next().await.body.contains("barrier"));
}

/// A group of `owner`, `att` and `by`, and the clients of the last two.
async fn att_and_by(server: &TestServer) -> (pb::Conversation, Client, Client) {
    let owner = server.client("owner").await;
    let g = within(owner.create_group("", &["att", "by"]))
        .await
        .unwrap();
    (g, server.client("att").await, server.client("by").await)
}
