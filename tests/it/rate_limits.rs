//! Request rate limits: a connection's and a user's token buckets, charged by the cost of each
//! request, refusing with `ERROR_RATE_LIMITED` and when to retry; the same buckets for the
//! LeanCloud dialect. The server's clock is driven, so refills need no waiting.

use crate::harness::*;
use tidings::client::ClientError;
use tidings::protocol::pb::{self, client_frame::Body as Req, server_frame::Body as Rep};

fn get(id: &str) -> Req {
    Req::GetConversation(pb::GetConversation {
        conversation_id: id.into(),
    })
}

fn list() -> Req {
    Req::ListConversations(pb::ListConversations {
        limit: 20,
        ..Default::default()
    })
}

/// The retry time of a rate-limited reply, or `None` for any other reply.
fn limited(rep: &Rep) -> Option<u64> {
    match rep {
        Rep::Error(e) if e.code == pb::ErrorCode::ErrorRateLimited as i32 => {
            assert!(e.message.contains("retry after"), "{e:?}");
            Some(e.retry_after_ms)
        }
        _ => None,
    }
}

#[tokio::test]
async fn a_connection_over_its_rate_is_refused_with_when_to_retry_and_then_served() {
    let server = TestServer::start_with(|c| {
        c.rate_limit_connection_per_sec = 10;
        c.rate_limit_connection_burst = 20;
        c.rate_limit_user_per_sec = 0;
    })
    .await;
    let alice = server.client("alice").await;
    let id = alice.create_group("g", &["bob"]).await.unwrap().id;
    drop(alice);
    let mut raw = Raw::login(&server, "alice").await;
    // The burst: 20 light requests pass, the 21st is refused for the 100 ms one token takes.
    for n in 0..20 {
        let rep = raw.request(get(&id)).await;
        assert!(limited(&rep).is_none(), "request {n}: {rep:?}");
    }
    assert_eq!(limited(&raw.request(get(&id)).await), Some(100));
    // Refused requests cost nothing: after 100 ms exactly one more fits.
    server.clock.advance(100);
    assert!(limited(&raw.request(get(&id)).await).is_none());
    assert_eq!(limited(&raw.request(get(&id)).await), Some(100));
    // A list page costs 20 tokens: two seconds of refill.
    server.clock.advance(1_000);
    assert_eq!(limited(&raw.request(list()).await), Some(1_000));
    server.clock.advance(1_000);
    assert!(matches!(
        raw.request(list()).await,
        Rep::ConversationList(_)
    ));
    // Pings are never charged.
    for _ in 0..50 {
        let rep = raw.request(Req::Ping(pb::Ping {})).await;
        assert!(matches!(rep, Rep::Pong(_)), "{rep:?}");
    }
    // Another connection has its own bucket.
    let bob = server.client("bob").await;
    bob.get_conversation(&id).await.unwrap();
}

/// The probe's shape: one user lists a 5,000-entry conversation list over four connections as
/// fast as replies come. The user's bucket holds them all to its rate; another user is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_listing_over_four_connections_shares_one_bucket() {
    let server = TestServer::start_with(|c| {
        c.rate_limit_connection_per_sec = 1_000;
        c.rate_limit_connection_burst = 1_000;
        c.rate_limit_user_per_sec = 200;
        c.rate_limit_user_burst = 400;
    })
    .await;
    // 5,000 groups of alice, created 80 at a time (400 tokens, the user's burst), the server's
    // clock moving on between batches so the bucket refills.
    let setup = server.client("alice").await;
    let names: Vec<String> = (0..5_000).map(|n| format!("g{n}")).collect();
    for chunk in names.chunks(80) {
        for r in
            futures_util::future::join_all(chunk.iter().map(|n| setup.create_group(n, &["bob"])))
                .await
        {
            r.unwrap();
        }
        server.clock.advance(2_000);
    }
    drop(setup);
    let mut conns = Vec::new();
    for _ in 0..4 {
        conns.push(Raw::login(&server, "alice").await);
    }
    // 400 tokens of burst at 20 a page: 20 pages pass, whichever connection asks.
    let mut served = 0;
    let mut refused = 0;
    for round in 0..10 {
        for c in conns.iter_mut() {
            match c.request(list()).await {
                Rep::ConversationList(l) => {
                    assert_eq!(l.entries.len(), 20, "round {round}");
                    assert!(l.has_more);
                    served += 1;
                }
                rep => {
                    assert!(limited(&rep).is_some(), "{rep:?}");
                    refused += 1;
                }
            }
        }
    }
    assert_eq!((served, refused), (20, 20));
    // Bob is not alice.
    let bob = server.client("bob").await;
    let page = bob
        .list_conversations(pb::ListConversations {
            limit: 20,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.entries.len(), 20);
    // Alice's refill: 200 tokens a second.
    server.clock.advance(1_000);
    let served_after: usize = {
        let mut n = 0;
        for c in conns.iter_mut() {
            for _ in 0..5 {
                if matches!(c.request(list()).await, Rep::ConversationList(_)) {
                    n += 1;
                }
            }
        }
        n
    };
    assert_eq!(served_after, 10);
}

#[tokio::test]
async fn the_client_library_surfaces_the_refusal_as_a_typed_error() {
    let server = TestServer::start_with(|c| {
        c.rate_limit_connection_per_sec = 1;
        c.rate_limit_connection_burst = 1;
    })
    .await;
    let alice = server.client("alice").await;
    let id = alice.create_group("g", &["bob"]).await;
    // Create cost 5 of a bucket of 1: charged as the whole bucket, so it passed; now empty.
    let id = id.unwrap().id;
    match alice.get_conversation(&id).await {
        Err(e @ ClientError::Server { .. }) => {
            assert_eq!(e.code(), Some(pb::ErrorCode::ErrorRateLimited));
        }
        other => panic!("expected a rate-limit refusal, got {other:?}"),
    }
}
