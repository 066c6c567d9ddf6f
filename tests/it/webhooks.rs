//! Webhooks: a real receiver (HTTP on port 0) that answers as a test tells it, deliveries
//! checked against the specification with an independent implementation (`standardwebhooks`,
//! from npm), retries, dead letters and their replay, the byte cap, a SIGKILL between commit
//! and delivery, the kept-alive connection and the batches' bounds.

use crate::admin::{KEY, ok};
use crate::harness::*;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use tidings::config::WebhookEndpoint;

pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const OLD_SECRET: &str = "whsec_dGhlIG9sZCBzZWNyZXQsIGJlaW5nIHJvdGF0ZWQgb3V0";

/// One POST the receiver got, and what it answered.
#[derive(Debug, Clone)]
pub struct Hit {
    pub headers: HashMap<String, String>,
    pub body: String,
    /// 0: the connection was dropped without an answer.
    pub status: u16,
    /// Which of the receiver's connections it came over (0 for the first accepted).
    pub conn: usize,
}

impl Hit {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }
    pub fn events(&self) -> Vec<Value> {
        let v: Value = serde_json::from_str(&self.body).unwrap();
        v["events"].as_array().unwrap().clone()
    }
}

/// How the receiver answers one POST.
#[derive(Debug, Clone, Default)]
pub struct Answer {
    pub status: u16,
    pub body: String,
    /// Waits this long before answering, ms.
    pub delay_ms: u64,
    /// Closes the connection instead of answering.
    pub drop_connection: bool,
}

/// A webhook receiver: answers each POST with the next queued answer, else the default status.
pub struct Receiver {
    pub addr: SocketAddr,
    hits: tokio::sync::mpsc::UnboundedReceiver<Hit>,
    queued: Arc<Mutex<VecDeque<Answer>>>,
    default: Arc<AtomicU16>,
}

impl Receiver {
    pub async fn start(default: u16) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, hits) = tokio::sync::mpsc::unbounded_channel();
        let queued = Arc::new(Mutex::new(VecDeque::new()));
        let default = Arc::new(AtomicU16::new(default));
        let (q, d) = (queued.clone(), default.clone());
        tokio::spawn(async move {
            for conn in 0.. {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (tx, q, d) = (tx.clone(), q.clone(), d.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: hyper::Request<_>| {
                        let (tx, q, d) = (tx.clone(), q.clone(), d.clone());
                        async move {
                            let headers = req
                                .headers()
                                .iter()
                                .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
                                .collect();
                            let body: hyper::body::Incoming = req.into_body();
                            let body = body.collect().await.unwrap().to_bytes();
                            let answer = q.lock().unwrap().pop_front().unwrap_or(Answer {
                                status: d.load(Ordering::SeqCst),
                                ..Default::default()
                            });
                            let status = answer.status;
                            let _ = tx.send(Hit {
                                headers,
                                body: String::from_utf8(body.to_vec()).unwrap(),
                                status: if answer.drop_connection { 0 } else { status },
                                conn,
                            });
                            if answer.drop_connection {
                                // A service error closes the connection without an answer.
                                return Err(std::io::Error::other("dropped"));
                            }
                            if answer.delay_ms > 0 {
                                // The slow endpoint being simulated.
                                tokio::time::sleep(std::time::Duration::from_millis(
                                    answer.delay_ms,
                                ))
                                .await;
                            }
                            let mut r =
                                hyper::Response::new(Full::new(bytes::Bytes::from(answer.body)));
                            *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                            Ok::<_, std::io::Error>(r)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver {
            addr,
            hits,
            queued,
            default,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hooks/tidings", self.addr)
    }

    pub fn answer_next(&self, statuses: &[u16]) {
        self.queued
            .lock()
            .unwrap()
            .extend(statuses.iter().map(|&status| Answer {
                status,
                ..Default::default()
            }));
    }

    pub fn answer_next_with(&self, answers: &[Answer]) {
        self.queued.lock().unwrap().extend(answers.iter().cloned());
    }

    pub fn answer(&self, status: u16) {
        self.default.store(status, Ordering::SeqCst);
    }

    pub async fn next(&mut self) -> Hit {
        within(self.hits.recv()).await.expect("the receiver runs")
    }

    /// Hits until the 2xx-answered ones hold `n` events; returns every hit.
    pub async fn until_events(&mut self, n: usize) -> Vec<Hit> {
        let mut hits = Vec::new();
        let mut got = 0;
        while got < n {
            let h = self.next().await;
            if (200..300).contains(&h.status) {
                got += h.events().len();
            }
            hits.push(h);
        }
        hits
    }
}

fn endpoint(url: String, events: &[&str]) -> WebhookEndpoint {
    WebhookEndpoint {
        name: "crm".into(),
        url,
        secret: SECRET.into(),
        previous_secret: None,
        events: events.iter().map(|e| e.to_string()).collect(),
    }
}

pub(crate) async fn webhook_server(
    receiver: &Receiver,
    events: &[&str],
    tweak: impl FnOnce(&mut tidings::config::Config),
) -> TestServer {
    let url = receiver.url();
    let events: Vec<String> = events.iter().map(|e| e.to_string()).collect();
    TestServer::start_with(move |c| {
        let events: Vec<&str> = events.iter().map(String::as_str).collect();
        c.webhooks = vec![endpoint(url, &events)];
        c.webhook_batch_wait_ms = 0;
        c.webhook_retry_base_ms = 5;
        c.webhook_retry_max_ms = 20;
        c.admin_listen = "127.0.0.1:0".into();
        c.admin_api_keys = vec![KEY.into()];
        tweak(c);
    })
    .await
}

/// Checks each hit's signature with the `standardwebhooks` npm package; returns its verdicts.
fn verify_with_library(secret: &str, hits: &[Hit]) -> Vec<String> {
    use std::io::Write;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/webhooks");
    npm_ci_once(&dir, &["standardwebhooks"]);
    let mut child = std::process::Command::new("node")
        .arg("verify.mjs")
        .current_dir(&dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("node runs");
    let mut stdin = child.stdin.take().unwrap();
    for h in hits {
        let line = json!({
            "secret": secret,
            "headers": {
                "webhook-id": h.header("webhook-id"),
                "webhook-timestamp": h.header("webhook-timestamp"),
                "webhook-signature": h.header("webhook-signature"),
            },
            "body": h.body,
        });
        writeln!(stdin, "{line}").unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn changes_reach_the_endpoint_in_order_signed_as_the_specification_says() {
    let mut rx = Receiver::start(200).await;
    let server = webhook_server(&rx, &[], |_| {}).await;
    let (alice, _) = server.login("alice").await;
    let g = within(alice.create_group("team", &["bob"])).await.unwrap();
    let one = within(alice.send_text(&g.id, "one")).await.unwrap();
    within(alice.edit_text(&g.id, &one.message_id, "one!"))
        .await
        .unwrap();
    within(alice.recall(&g.id, &one.message_id)).await.unwrap();
    within(alice.add_members(&g.id, &["carol"])).await.unwrap();
    let hits = rx.until_events(5).await;
    let events: Vec<Value> = hits.iter().flat_map(Hit::events).collect();
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "conversation.created",
            "message.created",
            "message.edited",
            "message.recalled",
            "conversation.members_added"
        ]
    );
    let created = &events[0]["data"];
    assert_eq!(created["conversation_id"], g.id.as_str());
    assert_eq!(created["by"], "alice");
    assert_eq!(created["conversation"]["member_count"], 2);
    let sent = &events[1]["data"]["message"];
    assert_eq!(
        (sent["text"].as_str(), sent["seq"].as_u64()),
        (Some("one"), Some(1))
    );
    assert_eq!(sent["id"], one.message_id.as_str());
    assert_eq!(events[2]["data"]["message"]["text"], "one!");
    assert_eq!(events[3]["data"]["message"]["recalled"], true);
    assert_eq!(events[4]["data"]["members"], json!(["carol"]));
    // Ids are outbox positions, increasing.
    let ids: Vec<u64> = events
        .iter()
        .map(|e| e["id"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    for h in &hits {
        assert!(h.header("webhook-id").starts_with("msg_crm_"), "{h:?}");
        assert_eq!(h.header("webhook-attempt"), "1");
        assert_eq!(h.header("content-type"), "application/json");
        let key = tidings::webhooks::secret_bytes(SECRET).unwrap();
        let ts: i64 = h.header("webhook-timestamp").parse().unwrap();
        assert_eq!(
            h.header("webhook-signature"),
            tidings::webhooks::signature(&key, h.header("webhook-id"), ts, h.body.as_bytes())
        );
    }
    // The independent implementation agrees, and refuses a changed body or another secret.
    assert!(verify_with_library(SECRET, &hits).iter().all(|v| v == "ok"));
    let mut forged = hits[0].clone();
    forged.body = forged.body.replace("alice", "mallory");
    assert_ne!(verify_with_library(SECRET, &[forged]), ["ok"]);
    assert_ne!(verify_with_library(OLD_SECRET, &hits[..1]), ["ok"]);
    let m = crate::admin::metrics_of(&server).await;
    assert_eq!(m["tidings_webhook_events_delivered_total"], 5.0);
}

#[tokio::test]
async fn during_a_secret_rotation_both_signatures_are_sent_and_filters_hold() {
    let mut rx = Receiver::start(200).await;
    let server = webhook_server(&rx, &["conversation.*"], |c| {
        c.webhooks[0].previous_secret = Some(OLD_SECRET.into());
    })
    .await;
    let (alice, _) = server.login("alice").await;
    let g = within(alice.create_group("team", &["bob"])).await.unwrap();
    within(alice.send_text(&g.id, "not for this endpoint"))
        .await
        .unwrap();
    within(alice.update(tidings::protocol::pb::UpdateConversation {
        conversation_id: g.id.clone(),
        name: Some("renamed".into()),
        ..Default::default()
    }))
    .await
    .unwrap();
    let hits = rx.until_events(2).await;
    let types: Vec<String> = hits
        .iter()
        .flat_map(Hit::events)
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(types, ["conversation.created", "conversation.updated"]);
    assert_eq!(hits[0].header("webhook-signature").split(' ').count(), 2);
    // Receivers holding either secret accept it.
    assert!(verify_with_library(SECRET, &hits).iter().all(|v| v == "ok"));
    assert!(
        verify_with_library(OLD_SECRET, &hits)
            .iter()
            .all(|v| v == "ok")
    );
}

#[tokio::test]
async fn a_failing_endpoint_is_retried_then_dead_lettered_and_later_events_go_on() {
    let mut rx = Receiver::start(200).await;
    let server = webhook_server(&rx, &["message.*"], |c| c.webhook_max_attempts = 3).await;
    let (alice, _) = server.login("alice").await;
    let g = within(alice.create_group("team", &["bob"])).await.unwrap();

    // Two failures, then taken: the same batch id each time, the attempt counted.
    rx.answer_next(&[500, 503]);
    within(alice.send_text(&g.id, "retried")).await.unwrap();
    let hits = rx.until_events(1).await;
    assert_eq!(
        hits.iter().map(|h| h.status).collect::<Vec<_>>(),
        [500, 503, 200]
    );
    assert!(
        hits.iter()
            .all(|h| h.header("webhook-id") == hits[0].header("webhook-id"))
    );
    let attempts: Vec<&str> = hits.iter().map(|h| h.header("webhook-attempt")).collect();
    assert_eq!(attempts, ["1", "2", "3"]);

    // Never taken: dead-lettered after three attempts; the next event is delivered.
    rx.answer_next(&[500, 500, 500]);
    within(alice.send_text(&g.id, "dead")).await.unwrap();
    within(server.running().app.stats.webhook_dead_letters.wait_for(1)).await;
    within(alice.send_text(&g.id, "after")).await.unwrap();
    let hits = rx.until_events(1).await;
    let last = hits.last().unwrap().events();
    assert_eq!(last[0]["data"]["message"]["text"], "after");

    let dead = ok(&server, "GET", "/v1/webhooks/crm/dead-letters", None).await;
    let events = dead["events"].as_array().unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["data"]["message"]["text"], "dead");
    let r = crate::admin::api(&server, "GET", "/v1/webhooks/nope/dead-letters", None).await;
    assert_eq!(r.status, 404);

    // A replay that fails keeps them; one that is taken sends them, signed, and removes them.
    rx.answer_next(&[500]);
    let r = crate::admin::api(
        &server,
        "POST",
        "/v1/webhooks/crm/dead-letters/replay",
        None,
    )
    .await;
    assert_eq!(r.status_code(), (502, Some(10)));
    rx.next().await;
    let r = ok(
        &server,
        "POST",
        "/v1/webhooks/crm/dead-letters/replay",
        None,
    )
    .await;
    assert_eq!(r["replayed"], 1);
    let hit = rx.next().await;
    assert!(hit.header("webhook-id").starts_with("replay_crm_"));
    assert_eq!(hit.events()[0]["data"]["message"]["text"], "dead");
    assert_eq!(verify_with_library(SECRET, &[hit]), ["ok"]);
    let dead = ok(&server, "GET", "/v1/webhooks/crm/dead-letters", None).await;
    assert_eq!(dead["events"], json!([]));
}

#[tokio::test]
async fn over_the_byte_cap_a_failing_endpoints_oldest_events_are_dropped_and_sends_go_on() {
    let mut rx = Receiver::start(500).await;
    let server = webhook_server(&rx, &[], |c| {
        // A few events' worth.
        c.webhook_outbox_max_bytes = 2_000;
        c.webhook_max_attempts = 1_000;
    })
    .await;
    let (alice, _) = server.login("alice").await;
    let g = within(alice.create_group("team", &["bob"])).await.unwrap();
    // Every send is acked while the endpoint fails and its events pile up past the cap.
    for i in 0..40 {
        within(alice.send_text(&g.id, &format!("m{i}")))
            .await
            .unwrap();
    }
    let stats = &server.running().app.stats;
    within(stats.webhook_events_dropped.wait_for(1)).await;
    assert_eq!(stats.webhook_events_delivered.get(), 0);
    assert!(rx.next().await.status == 500);
    let m = crate::admin::metrics_of(&server).await;
    assert!(m["tidings_webhook_events_dropped_total"] >= 1.0);
    assert!(m["tidings_webhook_events_written_total"] >= 41.0);
}

#[tokio::test]
async fn events_committed_before_a_kill_are_delivered_after_the_restart() {
    let mut rx = Receiver::start(503).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tidings.toml");
    std::fs::write(
        &config,
        format!(
            "webhook_batch_wait_ms = 0\nwebhook_retry_base_ms = 5\nwebhook_retry_max_ms = 20\n\
             webhook_max_attempts = 100000\n\n[[webhooks]]\nname = \"crm\"\nurl = \"{}\"\n\
             secret = \"{SECRET}\"\nevents = [\"message.created\"]\n",
            rx.url()
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let serve = |config: std::path::PathBuf| {
        Binary::serve_with(&data, &[], &[], move |cmd| {
            cmd.arg("--config").arg(config);
        })
    };
    let server = serve(config.clone());
    let alice = server.client("alice").await;
    let g = within(alice.create_group("team", &["bob"])).await.unwrap();
    let mut sent = Vec::new();
    for i in 0..10 {
        let ack = within(alice.send_text(&g.id, &format!("m{i}")))
            .await
            .unwrap();
        sent.push(ack.message_id);
    }
    // The endpoint was asked and refused; then the server dies without a chance to retry.
    assert_eq!(rx.next().await.status, 503);
    server.signal(libc::SIGKILL);
    server.wait().await;

    rx.answer(200);
    let server = serve(config);
    let hits = rx.until_events(10).await;
    let mut delivered: Vec<String> = Vec::new();
    let mut ids = std::collections::HashMap::new();
    for h in hits.iter().filter(|h| h.status == 200) {
        for e in h.events() {
            let id = e["data"]["message"]["id"].as_str().unwrap().to_owned();
            // A duplicate only ever comes with the same event id.
            if let Some(prev) = ids.insert(id.clone(), e["id"].clone()) {
                assert_eq!(prev, e["id"]);
            } else {
                delivered.push(id);
            }
        }
    }
    assert_eq!(delivered, sent);
    server.signal(libc::SIGTERM);
    let (status, _) = server.wait().await;
    assert!(status.success());
}

#[tokio::test]
async fn an_expired_customer_service_chat_and_a_deletion_are_reported() {
    let mut rx = Receiver::start(200).await;
    let server = webhook_server(
        &rx,
        &["conversation.expired", "conversation.deleted"],
        |_| {},
    )
    .await;
    let (agent, _) = server.login("agent").await;
    let t = within(agent.create_temporary(&["visitor"], 60, false))
        .await
        .unwrap();
    let d = within(agent.create_direct("boss")).await.unwrap();
    within(agent.delete_conversation(&d.id, true))
        .await
        .unwrap();
    server.clock.advance(61_000);
    within(server.running().app.stats.conversations_expired.wait_for(1)).await;
    let hits = rx.until_events(2).await;
    let events: Vec<Value> = hits.iter().flat_map(Hit::events).collect();
    assert_eq!(events[0]["type"], "conversation.deleted");
    assert_eq!(events[0]["data"]["conversation_id"], d.id.as_str());
    assert_eq!(events[1]["type"], "conversation.expired");
    assert_eq!(events[1]["data"]["conversation_id"], t.id.as_str());
}

#[tokio::test]
async fn batches_go_over_one_kept_alive_connection_and_a_new_one_when_it_drops() {
    let mut rx = Receiver::start(200).await;
    let server = webhook_server(&rx, &["message.created"], |_| {}).await;
    let (alice, _) = server.login("alice").await;
    let g = within(alice.create_group("team", &["bob"])).await.unwrap();
    // One batch at a time, each POSTed once the last was answered: all over one connection.
    let mut hits = Vec::new();
    for i in 0..4 {
        within(alice.send_text(&g.id, &format!("m{i}")))
            .await
            .unwrap();
        hits.extend(rx.until_events(1).await);
    }
    assert_eq!(hits.len(), 4);
    assert!(hits.iter().all(|h| h.conn == 0), "{hits:?}");

    // The endpoint drops the kept connection with the next batch unanswered: the batch goes
    // again over a new connection, the same batch and attempt, not a failure.
    rx.answer_next_with(&[Answer {
        drop_connection: true,
        ..Default::default()
    }]);
    within(alice.send_text(&g.id, "again")).await.unwrap();
    let hits = rx.until_events(1).await;
    assert_eq!(
        hits.iter().map(|h| (h.status, h.conn)).collect::<Vec<_>>(),
        [(0, 0), (200, 1)]
    );
    assert_eq!(hits[0].header("webhook-id"), hits[1].header("webhook-id"));
    assert_eq!(hits[1].header("webhook-attempt"), "1");
    assert_eq!(hits[1].events()[0]["data"]["message"]["text"], "again");
    within(alice.send_text(&g.id, "after")).await.unwrap();
    assert_eq!(rx.until_events(1).await[0].conn, 1);
    let m = crate::admin::metrics_of(&server).await;
    assert_eq!(m["tidings_webhook_attempts_failed_total"], 0.0);
    assert_eq!(m["tidings_webhook_events_delivered_total"], 6.0);
}

#[tokio::test]
async fn batches_keep_within_webhook_batch_max_and_webhook_batch_max_bytes() {
    let mut rx = Receiver::start(503).await;
    let server = webhook_server(&rx, &["message.created"], |c| {
        c.webhook_batch_max = 5;
        c.webhook_batch_max_bytes = 3_000;
        c.webhook_max_attempts = 100_000;
    })
    .await;
    let (alice, _) = server.login("alice").await;
    let g = within(alice.create_group("team", &["bob"])).await.unwrap();
    // Events pile up while the endpoint refuses; then it takes them in batches.
    let mut sent = Vec::new();
    for i in 0..30 {
        let text = if i == 12 {
            "x".repeat(4_000)
        } else {
            format!("{i:03}{}", "y".repeat(150))
        };
        let ack = within(alice.send_text(&g.id, &text)).await.unwrap();
        sent.push(ack.message_id);
    }
    assert_eq!(rx.next().await.status, 503);
    rx.answer(200);
    let hits: Vec<Hit> = rx
        .until_events(30)
        .await
        .into_iter()
        .filter(|h| h.status == 200)
        .collect();
    let mut delivered = Vec::new();
    let mut ids = Vec::new();
    for h in &hits {
        let events = h.events();
        assert!(events.len() <= 5, "{} events in one batch", events.len());
        let big = events
            .iter()
            .any(|e| e["data"]["message"]["text"].as_str().unwrap().len() == 4_000);
        if big {
            // Larger than the bound: it goes alone.
            assert_eq!(events.len(), 1);
        } else {
            assert!(h.body.len() <= 3_000, "a batch of {} bytes", h.body.len());
        }
        for e in events {
            delivered.push(e["data"]["message"]["id"].as_str().unwrap().to_owned());
            ids.push(e["id"].as_str().unwrap().parse::<u64>().unwrap());
        }
    }
    // The bytes cut batches short of five events, and nothing is skipped or repeated.
    let sizes: Vec<usize> = hits.iter().map(|h| h.events().len()).collect();
    assert!(sizes.iter().any(|&n| n > 1), "{sizes:?}");
    assert!(
        sizes.iter().filter(|&&n| n != 5).count() > 3,
        "cut by events alone: {sizes:?}"
    );
    assert_eq!(delivered, sent);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
}

#[tokio::test]
async fn delivery_resumes_without_gaps_after_a_kill_and_without_repeats_after_a_stop() {
    let mut rx = Receiver::start(200).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tidings.toml");
    std::fs::write(
        &config,
        format!(
            "webhook_batch_wait_ms = 0\n\n[[webhooks]]\nname = \"crm\"\nurl = \"{}\"\n\
             secret = \"{SECRET}\"\nevents = [\"message.created\"]\n",
            rx.url()
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let serve = |config: &std::path::Path| {
        let config = config.to_owned();
        Binary::serve_with(&data, &[], &[], move |cmd| {
            cmd.arg("--config").arg(config);
        })
    };
    // Each message's id, and the event id it was first delivered with.
    let mut first: Vec<(String, u64)> = Vec::new();
    let take = |hits: Vec<Hit>, first: &mut Vec<(String, u64)>| {
        for h in hits.iter().filter(|h| h.status == 200) {
            for e in h.events() {
                let m = e["data"]["message"]["id"].as_str().unwrap().to_owned();
                let id: u64 = e["id"].as_str().unwrap().parse().unwrap();
                match first.iter().find(|(seen, _)| *seen == m) {
                    // A repeat only ever comes with the same event id.
                    Some((_, was)) => assert_eq!(*was, id),
                    None => first.push((m, id)),
                }
            }
        }
    };

    let server = serve(&config);
    let alice = server.client("alice").await;
    let g = within(alice.create_group("team", &["bob"])).await.unwrap();
    let mut sent = Vec::new();
    for i in 0..20 {
        let ack = within(alice.send_text(&g.id, &format!("a{i}")))
            .await
            .unwrap();
        sent.push(ack.message_id);
    }
    take(rx.until_events(20).await, &mut first);
    // Delivered, their positions perhaps not yet stored: killed.
    server.signal(libc::SIGKILL);
    server.wait().await;

    let server = serve(&config);
    let alice = server.client("alice").await;
    for i in 0..20 {
        let ack = within(alice.send_text(&g.id, &format!("b{i}")))
            .await
            .unwrap();
        sent.push(ack.message_id);
    }
    while first.len() < sent.len() {
        take(vec![rx.next().await], &mut first);
    }
    // Every message, in order, each first delivered with a larger event id than the last.
    assert_eq!(
        first.iter().map(|(m, _)| m).collect::<Vec<_>>(),
        sent.iter().collect::<Vec<_>>()
    );
    assert!(first.windows(2).all(|w| w[0].1 < w[1].1), "{first:?}");

    // A clean stop stores the last positions: nothing is sent again after it, and the
    // outbox holds nothing any endpoint still needs.
    server.signal(libc::SIGTERM);
    let (status, _) = server.wait().await;
    assert!(status.success());
    {
        let store = tidings::store::open("redb", &data, 8 << 20).unwrap();
        assert_eq!(store.outbox_after(0, 10).unwrap(), []);
    }
    let server = serve(&config);
    let alice = server.client("alice").await;
    let last = within(alice.send_text(&g.id, "last")).await.unwrap();
    let hit = rx.next().await;
    let events = hit.events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["data"]["message"]["id"], last.message_id.as_str());
    server.signal(libc::SIGTERM);
    assert!(server.wait().await.0.success());
}

/// An endpoint that answers 2xx with a long body (one that echoes what it got) has its batch
/// delivered: the status decides, and the body is read only up to its first 64 KiB.
#[tokio::test]
async fn a_2xx_answer_with_a_long_body_counts_as_delivered() {
    let mut receiver = Receiver::start(204).await;
    let server = webhook_server(&receiver, &["message.*"], |_| {}).await;
    receiver.queued.lock().unwrap().push_back(Answer {
        status: 200,
        body: "x".repeat(200_000),
        ..Default::default()
    });
    let alice = server.client("alice").await;
    let id = alice.create_group("g", &["bob"]).await.unwrap().id;
    alice.send_text(&id, "one").await.unwrap();
    let first = receiver.next().await;
    assert_eq!(first.status, 200);
    alice.send_text(&id, "two").await.unwrap();
    // The next POST carries the next event, not the first one again.
    let second = receiver.next().await;
    let texts: Vec<Value> = second
        .events()
        .iter()
        .map(|e| e["data"]["message"]["text"].clone())
        .collect();
    assert_eq!(texts, [json!("two")], "{}", second.body);
}

/// The byte cap holds whatever the endpoints do: with one endpoint refusing connections and
/// another that takes them and never answers, the outbox stays within
/// `webhook_outbox_max_bytes` (give or take the commits the trimming has not seen yet) while
/// sends go on, both endpoints are moved past what was dropped, and nothing was delivered or
/// dead-lettered.
#[tokio::test]
async fn the_byte_cap_holds_with_two_endpoints_failing_in_different_ways() {
    let hang = Receiver::start(200).await;
    hang.answer_next_with(
        &(0..10)
            .map(|_| Answer {
                status: 200,
                delay_ms: 120_000,
                ..Default::default()
            })
            .collect::<Vec<_>>(),
    );
    // A port nobody listens on any more.
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    const CAP: u64 = 16_384;
    let hang_url = hang.url();
    let server = webhook_server(&hang, &[], move |c| {
        c.webhooks.push(WebhookEndpoint {
            name: "down".into(),
            url: format!("http://{refused}/hooks"),
            secret: SECRET.into(),
            previous_secret: None,
            events: Vec::new(),
        });
        c.webhooks[0].name = "hang".into();
        c.webhooks[0].url = hang_url;
        c.webhook_outbox_max_bytes = CAP;
        c.webhook_timeout_ms = 60_000;
        c.webhook_max_attempts = 1_000;
    })
    .await;
    let (alice, _) = server.login("alice").await;
    let g = within(alice.create_group("team", &["bob"])).await.unwrap();
    let stats = &server.running().app.stats;
    let bytes = || stats.webhook_outbox_bytes.load(Ordering::Relaxed);
    let text = "x".repeat(400);
    let mut most = 0;
    for _ in 0..150 {
        within(alice.send_text(&g.id, &text)).await.unwrap();
        most = most.max(bytes());
    }
    // About 70 KB were written: four times the cap.
    assert!(stats.webhook_events_written.get() >= 150);
    assert!(
        most <= CAP + CAP / 2,
        "the outbox held {most} bytes, cap {CAP}"
    );
    // Once the last commit is seen, it is back under the cap, and what was dropped is
    // counted for both endpoints (each lost at least the first 100 sends).
    within(async {
        while crate::admin::metrics_of(&server).await["tidings_webhook_outbox_bytes"] > CAP as f64 {
        }
    })
    .await;
    assert!(stats.webhook_events_dropped.get() >= 200);
    assert_eq!(stats.webhook_events_delivered.get(), 0);
    assert_eq!(stats.webhook_dead_letters.get(), 0);
}

/// Dead letters are bounded per endpoint: an endpoint that fails every batch at once, with a
/// single attempt each, keeps at most `webhook_dead_letters_max_bytes` of them (the oldest go,
/// counted as dropped), and the newest are the ones kept.
#[tokio::test]
async fn dead_letters_keep_within_their_byte_cap() {
    let rx = Receiver::start(500).await;
    const CAP: u64 = 4_096;
    let server = webhook_server(&rx, &["message.*"], |c| {
        c.webhook_max_attempts = 1;
        c.webhook_dead_letters_max_bytes = CAP;
    })
    .await;
    let (alice, _) = server.login("alice").await;
    let g = within(alice.create_group("team", &["bob"])).await.unwrap();
    let stats = &server.running().app.stats;
    let text = "x".repeat(200);
    for n in 0..40 {
        within(alice.send_text(&g.id, &format!("{n} {text}")))
            .await
            .unwrap();
    }
    // Counted once stored, and trimmed if need be.
    within(stats.webhook_dead_letters.wait_for(40)).await;
    let store = &server.running().app.store;
    let letters = store.dead_letters("crm", 0, 1_000).unwrap();
    let bytes: usize = letters.iter().map(|(_, r)| r.len()).sum();
    assert!(bytes as u64 <= CAP, "{bytes} bytes of dead letters");
    assert!(letters.len() < 40 && !letters.is_empty());
    assert!(stats.webhook_events_dropped.get() >= 40 - letters.len() as u64);
    let dead = ok(
        &server,
        "GET",
        "/v1/webhooks/crm/dead-letters?limit=1000",
        None,
    )
    .await;
    let events = dead["events"].as_array().unwrap();
    let newest = &events[events.len() - 1]["data"]["message"]["text"];
    assert!(newest.as_str().unwrap().starts_with("39 "), "{newest}");
}
