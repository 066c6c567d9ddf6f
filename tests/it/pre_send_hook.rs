//! The pre-send hook: a real HTTP endpoint (the webhook tests' receiver) that allows, rejects,
//! rewrites, or answers too late; native and LeanCloud clients see its decisions.

use crate::harness::*;
use crate::webhooks::{Answer, Receiver, SECRET};
use serde_json::{Value, json};
use tidings::client::ClientError;
use tidings::leancloud::LcProtocol;
use tidings::protocol::pb;

async fn hook_server(
    rx: &Receiver,
    tweak: impl FnOnce(&mut tidings::config::Config),
) -> TestServer {
    let url = rx.url();
    TestServer::start_with(move |c| {
        c.pre_send_hook_url = Some(url);
        c.pre_send_hook_secret = Some(SECRET.into());
        c.pre_send_hook_timeout_ms = 2_000;
        c.leancloud_app_id = Some(crate::leancloud::APP_ID.into());
        c.leancloud_master_key = Some(crate::leancloud::MASTER_KEY.into());
        tweak(c);
    })
    .await
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
