//! Bans and token revocation through the admin API: persisted, live sessions closed at once
//! (native and LeanCloud), later logins and refreshes refused with typed codes.

use crate::admin::{KEY, api, ok};
use crate::harness::*;
use crate::leancloud::{APP_ID, MASTER_KEY};
use crate::leancloud_wire::{Lc, op_of};
use serde_json::json;
use tidings::client::Client;
use tidings::leancloud::LcProtocol;
use tidings::leancloud::pb::{CommandType as Cmd, OpType as Op};
use tidings::protocol::pb::{CloseCode, ErrorCode};

const BANNED: Option<u16> = Some(CloseCode::CloseBanned as i32 as u16);
const REVOKED: Option<u16> = Some(CloseCode::CloseTokenRevoked as i32 as u16);

async fn server() -> TestServer {
    TestServer::start_with(|c| {
        c.admin_listen = "127.0.0.1:0".into();
        c.admin_api_keys = vec![KEY.into()];
        c.leancloud_app_id = Some(APP_ID.into());
        c.leancloud_master_key = Some(MASTER_KEY.into());
    })
    .await
}

/// A token minted through the API: (token, jti).
async fn minted(server: &TestServer, user: &str) -> (String, String) {
    let t = ok(server, "POST", "/v1/tokens", Some(json!({"user": user}))).await;
    (
        t["token"].as_str().unwrap().to_owned(),
        t["jti"].as_str().unwrap().to_owned(),
    )
}

/// Logs in with `token`; the close code when the server refuses it.
async fn login_refused(server: &TestServer, token: &str) -> Option<u16> {
    let c = within(Client::connect(&server.url())).await.unwrap();
    assert!(within(c.login(token, "", 0)).await.is_err());
    within(c.closed()).await.code
}

async fn logged_in(server: &TestServer, token: &str, device: &str) -> Client {
    let c = within(Client::connect(&server.url())).await.unwrap();
    within(c.login(token, device, 0)).await.expect("logs in");
    c
}

#[tokio::test]
async fn a_ban_closes_live_sessions_and_refuses_logins_until_it_ends() {
    let mut server = server().await;
    let (phone, _) = server.login_device("alice", "phone", 0).await;
    let (laptop, _) = server.login_device("alice", "laptop", 0).await;
    let mut lc = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    lc.opened("alice", None).await;
    let (bob, _) = server.login("bob").await;

    let r = ok(
        &server,
        "POST",
        "/v1/users/alice/ban",
        Some(json!({"reason": "spam", "duration_secs": 3600})),
    )
    .await;
    assert_eq!(r["closed"], 3);
    assert_eq!(r["access"]["ban_reason"], "spam");
    let until = server.clock_now() + 3_600_000;
    assert_eq!(r["access"]["banned_until"].as_i64(), Some(until));
    assert_eq!(within(phone.closed()).await.code, BANNED);
    assert_eq!(within(laptop.closed()).await.code, BANNED);
    let closed = lc.push_of(Cmd::Session, Some(Op::Closed), "alice").await;
    assert_eq!(closed.session_message.unwrap().code, Some(4115));
    // Others stay.
    within(bob.ping()).await.unwrap();

    // Logins are refused, native and LeanCloud, also after a restart.
    assert_eq!(login_refused(&server, &server.token("alice")).await, BANNED);
    server.restart().await;
    assert_eq!(login_refused(&server, &server.token("alice")).await, BANNED);
    let mut lc = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    let r = open_signed_at(&mut lc, "alice", server.clock_now()).await;
    assert_eq!(op_of(&r), (Some(Cmd::Session), Some(Op::Closed)));
    let s = r.session_message.unwrap();
    assert_eq!(
        (s.code, s.detail.as_deref()),
        (Some(4115), Some("banned: spam"))
    );
    let access = ok(&server, "GET", "/v1/users/alice/access", None).await;
    assert_eq!(
        (access["banned"].as_bool(), access["banned_until"].as_i64()),
        (Some(true), Some(until))
    );

    // It ends by itself.
    server.clock.advance(3_600_000);
    logged_in(&server, &server.token("alice"), "").await;
    let access = ok(&server, "GET", "/v1/users/alice/access", None).await;
    assert_eq!(access["banned"], false);

    // Until lifted, and lifted.
    let r = ok(&server, "POST", "/v1/users/alice/ban", None).await;
    assert_eq!(r["access"]["banned_until"].as_i64(), Some(i64::MAX));
    assert_eq!(login_refused(&server, &server.token("alice")).await, BANNED);
    ok(&server, "DELETE", "/v1/users/alice/ban", None).await;
    logged_in(&server, &server.token("alice"), "").await;

    // Bad requests.
    let r = api(
        &server,
        "POST",
        "/v1/users/alice/ban",
        Some(json!({"until": server.clock_now() - 1})),
    )
    .await;
    assert_eq!(r.status, 400);
    let r = api(
        &server,
        "POST",
        "/v1/users/alice/ban",
        Some(json!({"until": i64::MAX, "duration_secs": 5})),
    )
    .await;
    assert_eq!(r.status, 400);
    let r = api(
        &server,
        "POST",
        "/v1/users/alice/ban",
        Some(json!({"reason": "x".repeat(513)})),
    )
    .await;
    assert_eq!(r.status_code(), (422, Some(3)));
}

#[tokio::test]
async fn revoked_tokens_are_refused_and_the_sessions_they_opened_closed() {
    let mut server = server().await;
    let (first, first_id) = minted(&server, "alice").await;
    let (second, _) = minted(&server, "alice").await;
    let phone = logged_in(&server, &first, "phone").await;
    let laptop = logged_in(&server, &second, "laptop").await;

    // One token: only the session it opened goes.
    let r = ok(
        &server,
        "POST",
        "/v1/users/alice/revoke-tokens",
        Some(json!({"jti": first_id})),
    )
    .await;
    assert_eq!(r["closed"], 1);
    assert_eq!(within(phone.closed()).await.code, REVOKED);
    within(laptop.ping()).await.unwrap();
    assert_eq!(login_refused(&server, &first).await, REVOKED);
    // A session cannot move onto it either.
    let e = within(laptop.refresh_token(&first)).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::ErrorTokenRevoked));
    let tablet = logged_in(&server, &second, "tablet").await;

    // Every token issued before this second: every session goes; a token minted now works.
    let mut lc = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    lc.opened("alice", None).await;
    server.clock.advance(1000);
    let r = ok(&server, "POST", "/v1/users/alice/revoke-tokens", None).await;
    assert_eq!(r["closed"], 3, "laptop, tablet, LeanCloud");
    assert_eq!(within(laptop.closed()).await.code, REVOKED);
    assert_eq!(within(tablet.closed()).await.code, REVOKED);
    let closed = lc.push_of(Cmd::Session, Some(Op::Closed), "alice").await;
    assert_eq!(closed.session_message.unwrap().code, Some(4115));
    assert_eq!(login_refused(&server, &second).await, REVOKED);
    // Tokens that do not say when they were issued (no `iat`) are refused too.
    let no_iat = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "alice", "exp": server.clock_now() / 1000 + 600}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    assert_eq!(login_refused(&server, &no_iat).await, REVOKED);
    // A LeanCloud login signed before the revocation is refused; one signed after is not.
    let mut lc = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    let r = open_signed_at(&mut lc, "alice", server.clock_now() - 1000).await;
    assert_eq!(op_of(&r).1, Some(Op::Closed));
    assert_eq!(r.session_message.unwrap().code, Some(4102));
    let (fresh, _) = minted(&server, "alice").await;
    logged_in(&server, &fresh, "").await;
    server.restart().await;
    assert_eq!(login_refused(&server, &second).await, REVOKED);
    logged_in(&server, &fresh, "").await;
    let mut lc = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    let r = open_signed_at(&mut lc, "alice", server.clock_now()).await;
    assert_eq!(op_of(&r), (Some(Cmd::Session), Some(Op::Opened)), "{r:?}");
    let access = ok(&server, "GET", "/v1/users/alice/access", None).await;
    assert!(access["tokens_revoked_before"].as_i64().unwrap() > 0);
    let r = api(
        &server,
        "POST",
        "/v1/users/alice/revoke-tokens",
        Some(json!({"expires_at": server.clock_now() + 1000})),
    )
    .await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn revoked_token_ids_are_bounded_and_lapse_with_their_tokens() {
    let server = TestServer::start_with(|c| {
        c.admin_listen = "127.0.0.1:0".into();
        c.admin_api_keys = vec![KEY.into()];
        c.max_revoked_tokens = 1;
    })
    .await;
    let now = server.clock_now();
    let revoke = |jti: &'static str, expires_at: i64| {
        let server = &server;
        async move {
            api(
                server,
                "POST",
                "/v1/users/alice/revoke-tokens",
                Some(json!({"jti": jti, "expires_at": expires_at})),
            )
            .await
        }
    };
    assert_eq!(revoke("t1", now + 60_000).await.status, 200);
    // Revoking it again is no new entry.
    assert_eq!(revoke("t1", now + 90_000).await.status, 200);
    let r = revoke("t2", now + 60_000).await;
    assert_eq!(r.status_code(), (422, Some(3)), "{}", r.body);
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("max_revoked_tokens")
    );
    // Once t1 would have expired anyway, its place is free.
    server.clock.advance(90_000);
    assert_eq!(revoke("t2", now + 200_000).await.status, 200);
    assert_eq!(revoke("t3", now + 10).await.status, 400, "already expired");
}

/// A LeanCloud `session/open` signed at time `t` (ms).
async fn open_signed_at(lc: &mut Lc, peer: &str, t: i64) -> tidings::leancloud::pb::GenericCommand {
    use tidings::leancloud::pb as lcpb;
    let s = tidings::leancloud::sign::login_signature(MASTER_KEY, APP_ID, peer, t, "nonce");
    lc.request(lcpb::GenericCommand {
        app_id: Some(APP_ID.into()),
        peer_id: Some(peer.into()),
        session_message: Some(lcpb::SessionCommand {
            t: Some(t),
            n: Some("nonce".into()),
            s: Some(s),
            ..Default::default()
        }),
        ..crate::leancloud_wire::cmd(Cmd::Session, Some(Op::Open))
    })
    .await
}
