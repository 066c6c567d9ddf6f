//! A native session lives until its token's `exp` (plus the leeway), then closes with
//! CLOSE_TOKEN_EXPIRED, unless `RefreshToken` moved the deadline. Time is the server's injected
//! clock; a short ping interval makes the session's timer turn often, and each turn reads the
//! clock again.

use crate::harness::*;
use jsonwebtoken::{EncodingKey, Header};
use tidings::client::{Client, ClientError};
use tidings::protocol::pb::{CloseCode, ErrorCode};

const EXPIRED: Option<u16> = Some(CloseCode::CloseTokenExpired as i32 as u16);

/// A server whose sessions' timers turn every 20 ms (real time).
async fn server() -> TestServer {
    TestServer::start_with(|c| c.ping_interval_ms = 20).await
}

/// A token for `user` valid for `ttl_secs` from the server's clock now.
fn token(server: &TestServer, user: &str, ttl_secs: i64) -> String {
    tidings::auth::mint(&server.config, user, ttl_secs, server.clock_now(), false).unwrap()
}

/// A token signed with the test secret, with any header and claims.
fn signed(header: Header, claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &header,
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// When a token minted now for `ttl_secs` counts as expired: `exp` plus the leeway, in ms from
/// the server's clock now (`exp` is whole seconds, so up to a second sooner than `ttl_secs`).
fn deadline(server: &TestServer, ttl_secs: i64) -> i64 {
    let exp_ms = (server.clock_now() / 1000 + ttl_secs) * 1000;
    exp_ms + server.config.jwt_leeway_secs as i64 * 1000
}

async fn logged_in(server: &TestServer, token: &str) -> Client {
    let c = within(Client::connect(&server.url())).await.unwrap();
    within(c.login(token, "", 0)).await.unwrap();
    c
}

fn error_code(r: Result<(), ClientError>) -> ErrorCode {
    r.expect_err("the refresh must be refused")
        .code()
        .expect("an error reply")
}

#[tokio::test]
async fn token_expiry_closes_a_live_session_when_the_clock_passes_exp() {
    let server = server().await;
    let end = deadline(&server, 60);
    let c = logged_in(&server, &token(&server, "alice", 60)).await;
    // Just before the deadline (exp plus the leeway) the session works.
    server.clock.set(end - 1);
    within(c.ping()).await.unwrap();
    server.clock.set(end);
    let closed = within(c.closed()).await;
    assert_eq!(closed.code, EXPIRED, "{closed:?}");
    assert_eq!(closed.reason, "token expired");
}

#[tokio::test]
async fn token_expiry_is_checked_before_serving_a_request_even_between_timer_turns() {
    // The default ping interval: the timer does not turn during this test.
    let server = TestServer::start().await;
    let end = deadline(&server, 60);
    let c = logged_in(&server, &token(&server, "alice", 60)).await;
    server.clock.set(end);
    let err = within(c.ping()).await.expect_err("not served past exp");
    assert!(matches!(err, ClientError::Closed(_)), "{err}");
    assert_eq!(within(c.closed()).await.code, EXPIRED);
}

#[tokio::test]
async fn token_refresh_moves_the_deadline_to_the_new_exp() {
    let server = server().await;
    let first_end = deadline(&server, 60);
    let c = logged_in(&server, &token(&server, "alice", 60)).await;
    server.clock.set(first_end - 10_000);
    let second_end = deadline(&server, 120);
    within(c.refresh_token(&token(&server, "alice", 120)))
        .await
        .unwrap();
    // Past the first token's deadline: still served, through several timer turns.
    server.clock.set(first_end + 1_000);
    for _ in 0..5 {
        within(c.ping()).await.unwrap();
    }
    let g = within(c.create_group("g", &["bob"])).await.unwrap();
    within(c.send_text(&g.id, "still here")).await.unwrap();
    // At the new one it closes.
    server.clock.set(second_end);
    assert_eq!(within(c.closed()).await.code, EXPIRED);
}

#[tokio::test]
async fn token_refresh_to_an_earlier_exp_closes_the_session_sooner() {
    let server = server().await;
    let c = logged_in(&server, &token(&server, "alice", 3600)).await;
    let short_end = deadline(&server, 60);
    within(c.refresh_token(&token(&server, "alice", 60)))
        .await
        .unwrap();
    server.clock.set(short_end);
    assert_eq!(within(c.closed()).await.code, EXPIRED);
}

#[tokio::test]
async fn token_refresh_with_a_bad_token_is_a_typed_error_and_the_session_stays() {
    let server = server().await;
    let end = deadline(&server, 600);
    let c = logged_in(&server, &token(&server, "alice", 600)).await;
    let now = server.clock_now() / 1000;
    let leeway = server.config.jwt_leeway_secs as i64;

    // Another user's valid token: a session never changes user.
    let bob = token(&server, "bob", 3600);
    assert_eq!(
        error_code(within(c.refresh_token(&bob)).await),
        ErrorCode::ErrorTokenWrongUser
    );
    // Expired (beyond the leeway).
    let old = signed(
        Header::default(),
        serde_json::json!({ "sub": "alice", "exp": now - leeway - 1 }),
    );
    assert_eq!(
        error_code(within(c.refresh_token(&old)).await),
        ErrorCode::ErrorTokenExpired
    );
    // Signed with another secret.
    let other = tidings::config::Config {
        jwt_hs256_secret: Some("another-secret-that-is-32-bytes-long!!".into()),
        ..server.config.clone()
    };
    let forged = tidings::auth::mint(&other, "alice", 3600, server.clock_now(), false).unwrap();
    // Not valid yet, issued in the future, a crit header, no exp, an algorithm not configured, not a JWT at all.
    let claims = serde_json::json!({ "sub": "alice", "exp": now + 3600 });
    let mut early = claims.clone();
    early["nbf"] = (now + leeway + 60).into();
    let crit = Header {
        crit: Some(vec!["exp".into()]),
        ..Default::default()
    };
    let mut future = claims.clone();
    future["iat"] = (now + leeway + 60).into();
    let hs512 = Header::new(jsonwebtoken::Algorithm::HS512);
    let invalid = [
        forged,
        signed(Header::default(), early),
        signed(Header::default(), future),
        signed(crit, claims.clone()),
        signed(Header::default(), serde_json::json!({ "sub": "alice" })),
        signed(hs512, claims),
        "alice".to_owned(),
        String::new(),
    ];
    for t in &invalid {
        assert_eq!(
            error_code(within(c.refresh_token(t)).await),
            ErrorCode::ErrorTokenInvalid,
            "{t}"
        );
    }
    // The session is still open, still alice's, and still ends at the first token's deadline.
    let g = within(c.create_group("g", &["bob"])).await.unwrap();
    assert_eq!(g.owner, "alice");
    server.clock.set(end - 1);
    within(c.ping()).await.unwrap();
    server.clock.set(end);
    assert_eq!(within(c.closed()).await.code, EXPIRED);
}

#[tokio::test]
async fn token_without_exp_is_refused_and_insecure_dev_ids_never_expire() {
    let server = server().await;
    let no_exp = signed(Header::default(), serde_json::json!({ "sub": "alice" }));
    let c = within(Client::connect(&server.url())).await.unwrap();
    assert!(within(c.login(&no_exp, "", 0)).await.is_err());
    assert_eq!(
        within(c.closed()).await.code,
        Some(CloseCode::CloseAuthFailed as i32 as u16)
    );

    let dev = TestServer::start_with(|c| {
        c.insecure_dev = true;
        c.ping_interval_ms = 20;
    })
    .await;
    let bare = logged_in(&dev, "alice").await;
    dev.clock.advance(10 * 365 * 86_400_000);
    for _ in 0..5 {
        within(bare.ping()).await.unwrap();
    }
    // A JWT on such a session gives it a deadline.
    let end = deadline(&dev, 60);
    within(bare.refresh_token(&token(&dev, "alice", 60)))
        .await
        .unwrap();
    dev.clock.set(end);
    assert_eq!(within(bare.closed()).await.code, EXPIRED);
}

#[tokio::test]
async fn token_expiry_drops_the_sessions_wills() {
    let server = server().await;
    let end = deadline(&server, 60);
    let alice = logged_in(&server, &token(&server, "alice", 60)).await;
    let mut bob = server.client("bob").await;
    let g = within(alice.create_group("g", &["bob"])).await.unwrap();
    event(&mut bob).await; // created
    within(alice.set_will_text(&g.id, "gone")).await.unwrap();
    server.clock.set(end);
    assert_eq!(within(alice.closed()).await.code, EXPIRED);
    assert_no_push(&mut bob).await;
}

/// However the connection ends after the token lapsed (here dropped without a close, before the
/// server's timer noticed the deadline), the server does not speak for the user.
#[tokio::test]
async fn a_connection_dropped_after_its_token_lapsed_leaves_no_will() {
    use tidings::protocol::pb::{self, client_frame::Body as Req, server_frame::Body as Rep};
    let server = server().await;
    let end = deadline(&server, 60);
    let mut bob = server.client("bob").await;
    let d = within(bob.create_direct("alice")).await.unwrap();
    let stats = server.running().app.stats.clone();
    let mut alice = Raw::login_with(&server, token(&server, "alice", 60)).await;
    let set = alice
        .request(Req::SetWill(pb::SetWill {
            conversation_id: d.id.clone(),
            r#type: 1,
            content: "lapsed".into(),
            ..Default::default()
        }))
        .await;
    assert!(matches!(set, Rep::Ok(_)), "{set:?}");
    let closed = stats.sessions_closed.get();
    server.clock.set(end);
    drop(alice);
    within(stats.sessions_closed.wait_for(closed + 1)).await;
    // Wills are sent before a session's close completes, so by now any would be queued.
    assert_no_push(&mut bob).await;
    assert_eq!(stats.wills_sent.get(), 0);
}
