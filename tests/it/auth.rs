//! Login: accepted, refused, expired, timed out; device replacement; subprotocol.

use crate::harness::*;
use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{EncodingKey, Header};
use std::path::PathBuf;
use tidings::client::{Client, connect_raw};
use tidings::protocol::pb::{self, CloseCode, ErrorCode};
use tokio_tungstenite::tungstenite::Message as WsMessage;

fn code(c: CloseCode) -> Option<u16> {
    Some(c as i32 as u16)
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

/// `sub` and an `exp` an hour from the server's clock.
fn claims(server: &TestServer, sub: &str) -> serde_json::Value {
    serde_json::json!({ "sub": sub, "exp": server.clock_now() / 1000 + 3600 })
}

async fn refused(server: &TestServer, token: &str) -> Option<u16> {
    let c = within(Client::connect(&server.url())).await.unwrap();
    assert!(
        within(c.login(token, "", 0)).await.is_err(),
        "login must fail"
    );
    within(c.closed()).await.code
}

#[tokio::test]
async fn hs256_login_is_accepted() {
    let server = TestServer::start().await;
    let (_c, w) = server.login("alice").await;
    assert_eq!(w.ok.user_id, "alice");
    assert!(!w.ok.session_id.is_empty());
    assert!(w.summary.entries.is_empty());
}

#[tokio::test]
async fn rs256_login_is_accepted_and_hs256_still_works() {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let server = TestServer::start_with(|c| {
        c.jwt_rs256_public_key = Some(fixtures.join("rs256-test-public.pem"));
        c.jwt_rs256_private_key = Some(fixtures.join("rs256-test-private.pem"));
    })
    .await;
    let token =
        tidings::auth::mint(&server.config, "rsa-user", 600, server.clock_now(), true).unwrap();
    let c = within(Client::connect(&server.url())).await.unwrap();
    assert_eq!(
        within(c.login(&token, "", 0)).await.unwrap().user_id,
        "rsa-user"
    );
    server.login("hs-user").await;
}

/// The same 2048-bit key as PKCS#1 (`RSA PUBLIC KEY`) or in a certificate verifies as well.
#[tokio::test]
async fn rs256_keys_are_accepted_as_pkcs1_and_in_certificates() {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    for public in ["rs256-test-public-pkcs1.pem", "rs256-test-cert.pem"] {
        let server = TestServer::start_with(|c| {
            c.jwt_rs256_public_key = Some(fixtures.join(public));
            c.jwt_rs256_private_key = Some(fixtures.join("rs256-test-private.pem"));
        })
        .await;
        let token =
            tidings::auth::mint(&server.config, "rsa-user", 600, server.clock_now(), true).unwrap();
        let c = within(Client::connect(&server.url())).await.unwrap();
        assert_eq!(
            within(c.login(&token, "", 0)).await.unwrap().user_id,
            "rsa-user",
            "{public}"
        );
    }
}

/// An RSA modulus under 2048 bits can be factored, and then tokens forged for anyone: such a
/// key is refused at start, in every form a key is accepted in, with its size and the least.
#[tokio::test]
async fn a_start_refuses_an_rs256_key_under_2048_bits() {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let dir = tempfile::tempdir().unwrap();
    for (key, bits) in [
        ("rs256-weak-512-public.pem", 512),
        ("rs256-weak-1024-pkcs1.pem", 1024),
        ("rs256-weak-1024-cert.pem", 1024),
    ] {
        let config = tidings::config::Config {
            listen: "127.0.0.1:0".into(),
            data_dir: dir.path().join("data"),
            jwt_rs256_public_key: Some(fixtures.join(key)),
            ..Default::default()
        };
        let clock = std::sync::Arc::new(tidings::clock::SystemClock);
        let err = match tidings::server::start(config, clock).await {
            Ok(server) => {
                server.stop().await.unwrap();
                panic!("started with {key}");
            }
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains(&format!("is {bits} bits; at least 2048 are required")),
            "{key}: {err}"
        );
    }
}

#[test]
fn the_rsa_modulus_is_measured_from_der_and_anything_else_is_none() {
    use tidings::auth::rsa_modulus_bits;
    // SEQUENCE { INTEGER 0x00C1 (a leading zero, 8 bits), INTEGER 3 }
    assert_eq!(
        rsa_modulus_bits(&[0x30, 0x07, 0x02, 0x02, 0x00, 0xc1, 0x02, 0x01, 0x03]),
        Some(8)
    );
    // Long-form lengths: a 257-byte INTEGER of 0x00 then 256 bytes with the top bit set.
    let mut n = vec![0x02, 0x82, 0x01, 0x01, 0x00, 0x80];
    n.extend([0u8; 255]);
    let mut der = vec![0x30, 0x82, 0x01, 0x0a];
    der.extend(&n);
    der.extend([0x02, 0x03, 0x01, 0x00, 0x01]);
    assert_eq!(rsa_modulus_bits(&der), Some(2048));
    for bad in [
        &[][..],
        &[0x30],
        &[0x30, 0x05, 0x02, 0x01, 0x05, 0x02], // truncated
        &[0x30, 0x03, 0x02, 0x01, 0x05],       // no exponent
        &[0x30, 0x06, 0x02, 0x01, 0x00, 0x02, 0x01, 0x03], // a zero modulus
        &[0x31, 0x06, 0x02, 0x01, 0x05, 0x02, 0x01, 0x03], // a SET
        &[0x30, 0x06, 0x02, 0x01, 0x05, 0x02, 0x01, 0x03, 0x00], // trailing bytes
        &[0x30, 0x85, 0, 0, 0, 0, 0],          // a length of 5 bytes
    ] {
        assert_eq!(rsa_modulus_bits(bad), None, "{bad:?}");
    }
}

#[tokio::test]
async fn bad_tokens_are_closed_with_auth_failed() {
    let server = TestServer::start().await;
    let mut other = server.config.clone();
    other.jwt_hs256_secret = Some("some other secret of at least 32 bytes".into());
    let forged = tidings::auth::mint(&other, "mallory", 600, server.clock_now(), false).unwrap();
    let empty_sub = signed(Header::default(), claims(&server, ""));
    for token in [forged.as_str(), "not-a-jwt", "", empty_sub.as_str()] {
        assert_eq!(
            refused(&server, token).await,
            code(CloseCode::CloseAuthFailed),
            "token {token:?}"
        );
    }
}

#[tokio::test]
async fn expired_tokens_are_closed_with_token_expired_by_the_injected_clock() {
    let server = TestServer::start().await;
    let token = server.token("alice"); // valid for an hour
    server.clock.advance(2 * 3600 * 1000);
    assert_eq!(
        refused(&server, &token).await,
        code(CloseCode::CloseTokenExpired)
    );
    // A token minted now works.
    server.login("alice").await;
}

#[tokio::test]
async fn no_login_within_the_timeout_is_closed() {
    let server = TestServer::start_with(|c| c.login_timeout_ms = 300).await;
    let c = within(Client::connect(&server.url())).await.unwrap();
    assert_eq!(
        within(c.closed()).await.code,
        code(CloseCode::CloseLoginTimeout)
    );
}

#[tokio::test]
async fn a_request_before_login_is_a_protocol_violation() {
    let server = TestServer::start().await;
    let c = within(Client::connect(&server.url())).await.unwrap();
    assert!(within(c.ping()).await.is_err());
    assert_eq!(
        within(c.closed()).await.code,
        code(CloseCode::CloseProtocolViolation)
    );
}

#[tokio::test]
async fn logging_in_twice_is_an_error_that_keeps_the_session() {
    let server = TestServer::start().await;
    let c = server.client("alice").await;
    let err = within(c.login(&server.token("alice"), "", 0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::ErrorAlreadyLoggedIn));
    within(c.ping()).await.unwrap();
}

#[tokio::test]
async fn a_device_tag_replaces_the_older_session_with_that_tag_only() {
    let server = TestServer::start().await;
    let (old_phone, _) = server.login_device("alice", "phone", 0).await;
    let (web, _) = server.login_device("alice", "web", 0).await;
    let (untagged, _) = server.login_device("alice", "", 0).await;
    let (new_phone, _) = server.login_device("alice", "phone", 0).await;
    assert_eq!(
        within(old_phone.closed()).await.code,
        code(CloseCode::CloseReplaced)
    );
    for c in [&web, &untagged, &new_phone] {
        within(c.ping()).await.expect("other sessions stay");
    }
}

#[tokio::test]
async fn logout_closes_normally() {
    let server = TestServer::start().await;
    let c = server.client("alice").await;
    within(c.logout()).await.unwrap();
    assert_eq!(within(c.closed()).await.code, Some(1000));
}

#[tokio::test]
async fn the_subprotocol_is_required_and_echoed() {
    let server = TestServer::start().await;
    let url = server.url();
    // Without the subprotocol the upgrade is refused with HTTP 400.
    let err = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("400"), "{err}");
    // With it, the server echoes it (tungstenite checks the echo) and the session works.
    let mut ws = within(connect_raw(&url)).await.unwrap();
    let login = pb::ClientFrame {
        id: 1,
        body: Some(pb::client_frame::Body::Login(pb::Login {
            token: server.token("alice"),
            ..Default::default()
        })),
    };
    ws.send(WsMessage::Binary(tidings::protocol::encode(&login)))
        .await
        .unwrap();
    let Some(Ok(WsMessage::Binary(b))) = within(ws.next()).await else {
        panic!("no reply")
    };
    let reply = tidings::protocol::decode_server(&b).unwrap();
    assert_eq!(reply.id, 1);
    assert!(matches!(
        reply.body,
        Some(pb::server_frame::Body::LoginOk(_))
    ));
}

#[tokio::test]
async fn insecure_dev_mode_takes_the_user_id_as_token_only_when_asked_for() {
    let strict = TestServer::start().await;
    assert_eq!(
        refused(&strict, "alice").await,
        code(CloseCode::CloseAuthFailed)
    );

    let dev = TestServer::start_with(|c| {
        c.insecure_dev = true;
        c.jwt_hs256_secret = None;
    })
    .await;
    let c = within(Client::connect(&dev.url())).await.unwrap();
    assert_eq!(
        within(c.login("alice", "", 0)).await.unwrap().user_id,
        "alice"
    );
}

#[tokio::test]
async fn insecure_dev_is_refused_on_a_reachable_address_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let config = tidings::config::Config {
        listen: "0.0.0.0:0".into(),
        data_dir: dir.path().join("data"),
        insecure_dev: true,
        ..Default::default()
    };
    let clock = std::sync::Arc::new(tidings::clock::SystemClock);
    let err = tidings::server::start(config.clone(), clock.clone())
        .await
        .err()
        .expect("refused on 0.0.0.0");
    assert!(err.to_string().contains("insecure_dev_public"), "{err}");
    // Allowed explicitly, it starts; on loopback it needs nothing more.
    for config in [
        tidings::config::Config {
            insecure_dev_public: true,
            ..config.clone()
        },
        tidings::config::Config {
            listen: "127.0.0.1:0".into(),
            ..config
        },
    ] {
        let server = tidings::server::start(config.clone(), clock.clone())
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", config.listen));
        server.stop().await.unwrap();
    }
    // The flag and the environment variable, as `serve` takes them.
    let data = dir.path().join("cli");
    let data = data.to_str().unwrap();
    let serve = ["serve", "--listen", "0.0.0.0:0", "--data-dir", data];
    let flag = [&serve[..], &["--insecure-dev"]].concat();
    for (args, env) in [
        (&flag[..], &[][..]),
        (&serve[..], &[("TIDINGS_INSECURE_DEV", "true")][..]),
    ] {
        let (ok, _, err) = run_binary(args, env).await;
        assert!(!ok, "started: {args:?} {env:?}");
        assert!(err.contains("--insecure-dev-public"), "{err}");
    }
}

#[test]
fn a_server_without_any_login_method_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = tidings::config::Config {
        data_dir: dir.path().into(),
        ..Default::default()
    };
    let err = tidings::app::App::open(
        config,
        std::sync::Arc::new(tidings::clock::SystemClock),
        Default::default(),
    )
    .err()
    .expect("no auth configured must be an error");
    assert!(err.to_string().contains("jwt_hs256_secret"), "{err}");
}

#[tokio::test]
async fn issuer_and_audience_are_enforced_when_configured() {
    let server = TestServer::start_with(|c| {
        c.jwt_issuer = Some("app-backend".into());
        c.jwt_audience = Some("tidings".into());
    })
    .await;
    // Minted from the same configuration: carries iss and aud.
    server.login("alice").await;
    // Same secret, but no or other iss/aud.
    let mut plain = server.config.clone();
    plain.jwt_issuer = None;
    plain.jwt_audience = None;
    let bare = tidings::auth::mint(&plain, "mallory", 600, server.clock_now(), false).unwrap();
    assert_eq!(
        refused(&server, &bare).await,
        code(CloseCode::CloseAuthFailed)
    );
    let mut other = server.config.clone();
    other.jwt_audience = Some("another-service".into());
    let wrong_aud = tidings::auth::mint(&other, "mallory", 600, server.clock_now(), false).unwrap();
    assert_eq!(
        refused(&server, &wrong_aud).await,
        code(CloseCode::CloseAuthFailed)
    );
}

/// Runs the real binary with `args` and the given environment, expecting it to exit by itself
/// (within the harness deadline); returns its status, stdout and stderr.
async fn run_binary(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tidings"));
    cmd.args(args).env_remove("TIDINGS_JWT_HS256_SECRET");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = within(tokio::task::spawn_blocking(move || cmd.output()))
        .await
        .unwrap()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn serve_refuses_an_empty_or_short_hs256_secret() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let serve = ["serve", "--listen", "127.0.0.1:0", "--data-dir", data];
    for secret in ["", "x", "change-me", "0123456789abcdef0123456789abcde"] {
        let (ok, _, err) = run_binary(&serve, &[("TIDINGS_JWT_HS256_SECRET", secret)]).await;
        assert!(!ok, "started with the secret {secret:?}");
        assert!(err.contains("at least 32"), "{secret:?}: {err}");
        assert!(err.contains("tidings secret"), "{secret:?}: {err}");
    }
    // Minting with a short secret is refused as well.
    let (ok, _, err) = run_binary(
        &["token", "--user", "alice"],
        &[("TIDINGS_JWT_HS256_SECRET", "")],
    )
    .await;
    assert!(!ok && err.contains("at least 32"), "{err}");
    // The refusal is the message, also where the environment asks Rust for backtraces.
    let (ok, _, err) = run_binary(
        &serve,
        &[("TIDINGS_JWT_HS256_SECRET", "x"), ("RUST_BACKTRACE", "1")],
    )
    .await;
    assert!(!ok && err.contains("at least 32"), "{err}");
    assert!(!err.to_lowercase().contains("backtrace"), "{err}");
    assert!(err.lines().count() <= 4, "{err}");
}

#[tokio::test]
async fn serve_refuses_a_long_but_guessable_hs256_secret() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let serve = ["serve", "--listen", "127.0.0.1:0", "--data-dir", data];
    let same_byte = "x".repeat(32);
    let placeholder = "change-me".repeat(4);
    for secret in [
        same_byte.as_str(),
        &placeholder,
        "change-me-to-something-long-please",
    ] {
        let (ok, _, err) = run_binary(&serve, &[("TIDINGS_JWT_HS256_SECRET", secret)]).await;
        assert!(!ok, "started with the secret {secret:?}");
        assert!(err.contains("too easy to guess"), "{secret:?}: {err}");
        assert!(err.contains("tidings secret"), "{secret:?}: {err}");
    }
}

#[tokio::test]
async fn tidings_secret_prints_a_fresh_usable_secret() {
    let (ok, first, _) = run_binary(&["secret"], &[]).await;
    assert!(ok);
    let (_, second, _) = run_binary(&["secret"], &[]).await;
    let secret = first.trim();
    assert_eq!(secret.len(), 64, "{secret:?}");
    assert!(secret.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_ne!(secret, second.trim(), "two secrets must differ");
    // It is accepted, and tokens minted with it log in.
    let server = TestServer::start_with(|c| c.jwt_hs256_secret = Some(secret.to_owned())).await;
    let (ok, token, err) = run_binary(
        &["token", "--user", "alice"],
        &[("TIDINGS_JWT_HS256_SECRET", secret)],
    )
    .await;
    assert!(ok, "{err}");
    let c = within(Client::connect(&server.url())).await.unwrap();
    let welcome = within(c.login(token.trim(), "", 0)).await.unwrap();
    assert_eq!(welcome.user_id, "alice");
}

#[tokio::test]
async fn serve_refuses_an_rs256_key_that_does_not_parse() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let not_pem = dir.path().join("not-a-key.pem");
    std::fs::write(&not_pem, "not a key at all\n").unwrap();
    let bad_body = dir.path().join("bad-body.pem");
    std::fs::write(
        &bad_body,
        "-----BEGIN PUBLIC KEY-----\nAAAAB3NzaC1yc2EAAAADAQABAAABAQ==\n-----END PUBLIC KEY-----\n",
    )
    .unwrap();
    for key in [&not_pem, &bad_body] {
        let (ok, _, err) = run_binary(
            &[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                data.to_str().unwrap(),
                "--set",
                &format!("jwt_rs256_public_key={}", key.display()),
            ],
            &[],
        )
        .await;
        assert!(!ok, "started with {}", key.display());
        assert!(err.contains("bad key"), "{err}");
    }
}

/// Ids that could spoof another user on screen (bidi overrides, zero-width characters, edge
/// spaces), break logs (NUL, CR/LF, ESC) or collide with `p2p|user` keys.
const BAD_USER_IDS: &[&str] = &[
    "",
    "a\0b",
    "a\r\nb",
    "line\n",
    "\u{1b}[31mred",
    "\u{7f}del",
    "evil\u{202e}gnp.exe",
    "a\u{2066}b\u{2069}",
    "zero\u{200b}width",
    "\u{feff}bom",
    "soft\u{ad}hyphen",
    "line\u{2028}separator",
    "para\u{2029}graph",
    " alice",
    "alice ",
    "\talice",
    "alice\u{3000}",
    "p2p|bob",
    "|",
    "alice\u{fe0f}",
    "\u{3164}",
    "\u{ffa0}bob",
    "a\u{34f}b",
    "tag\u{e0061}",
    "\u{301}alice",
    "\u{20d7}x",
];

/// Ids the vendors document as valid, or that migrated users have.
const GOOD_USER_IDS: &[&str] = &[
    "a.b@c-d_e",
    "张三",
    "用户_01@example.com",
    "Ünïcødé-Name",
    "John Smith",
    "0",
    "José",
    "e\u{301}lodie",
    "한글",
];

#[tokio::test]
async fn a_sub_outside_the_user_id_alphabet_is_refused_with_auth_failed() {
    let server = TestServer::start().await;
    let too_long = "x".repeat(server.config.max_user_id_bytes + 1);
    for sub in BAD_USER_IDS.iter().copied().chain([too_long.as_str()]) {
        let token = signed(Header::default(), claims(&server, sub));
        assert_eq!(
            refused(&server, &token).await,
            code(CloseCode::CloseAuthFailed),
            "sub {sub:?}"
        );
    }
}

#[tokio::test]
async fn vendor_style_user_ids_log_in_and_talk() {
    let server = TestServer::start().await;
    let longest = "x".repeat(server.config.max_user_id_bytes);
    for sub in GOOD_USER_IDS.iter().copied().chain([longest.as_str()]) {
        let token = signed(Header::default(), claims(&server, sub));
        let c = within(Client::connect(&server.url())).await.unwrap();
        let ok = within(c.login(&token, "", 0)).await;
        assert_eq!(ok.map(|ok| ok.user_id).ok().as_deref(), Some(sub));
    }
    let (zhang, _) = server.login("张三").await;
    let d = within(zhang.create_direct("a.b@c-d_e")).await.unwrap();
    within(zhang.send_text(&d.id, "你好")).await.unwrap();
    let e = within(zhang.get_list_entry("p2p|a.b@c-d_e")).await.unwrap();
    assert_eq!((e.conversation_id, e.unread), (d.id, 0));
}

#[tokio::test]
async fn a_request_naming_a_bad_user_id_is_invalid_argument() {
    let server = TestServer::start().await;
    let alice = server.client("alice").await;
    let g = within(alice.create_group("g", &["bob"])).await.unwrap();
    let invalid = |r: Result<_, tidings::client::ClientError>, what: &str| match r {
        Ok(_) => panic!("{what} was accepted"),
        Err(e) => assert_eq!(
            e.code(),
            Some(ErrorCode::ErrorInvalidArgument),
            "{what}: {e}"
        ),
    };
    for bad in BAD_USER_IDS.iter().copied() {
        let r = within(alice.create_group("h", &["bob", bad])).await;
        invalid(r.map(drop), &format!("create naming {bad:?}"));
        let r = within(alice.add_members(&g.id, &[bad])).await;
        invalid(r.map(drop), &format!("add {bad:?}"));
        let r = within(alice.remove_members(&g.id, &[bad])).await;
        invalid(r.map(drop), &format!("remove {bad:?}"));
        let r = within(alice.send(pb::SendMessage {
            conversation_id: g.id.clone(),
            r#type: 1,
            content: "hi".into(),
            mentions: vec![bad.to_owned()],
            ..Default::default()
        }))
        .await;
        invalid(r.map(drop), &format!("mention of {bad:?}"));
    }
    // A key naming a user follows the same rule ("p2p|" alone names the empty id).
    for key in ["p2p|", "p2p|evil\u{202e}", "p2p|a|b"] {
        let r = within(alice.get_list_entry(key)).await;
        invalid(r.map(drop), key);
    }
    // Nothing of it was stored: the group still has its two members, and no other came in.
    let members = within(alice.list_members(&g.id, "", 0)).await.unwrap();
    assert_eq!(members.members, vec!["alice", "bob"]);
}

#[tokio::test]
async fn nbf_is_enforced_with_the_leeway_by_the_injected_clock() {
    let server = TestServer::start().await;
    let leeway = server.config.jwt_leeway_secs as i64;
    let now = server.clock_now() / 1000;
    let with_nbf = |nbf: i64| {
        let mut c = claims(&server, "alice");
        c["nbf"] = nbf.into();
        signed(Header::default(), c)
    };
    let later = with_nbf(now + leeway + 60);
    assert_eq!(
        refused(&server, &later).await,
        code(CloseCode::CloseAuthFailed)
    );
    // Inside the leeway, or in the past: fine.
    for nbf in [now + leeway - 1, now - 60] {
        let c = within(Client::connect(&server.url())).await.unwrap();
        within(c.login(&with_nbf(nbf), "", 0))
            .await
            .unwrap_or_else(|e| panic!("nbf now{:+}: {e}", nbf - now));
    }
    // Once the injected clock reaches it, the first token is valid.
    server.clock.advance(61 * 1000);
    let c = within(Client::connect(&server.url())).await.unwrap();
    within(c.login(&later, "", 0)).await.unwrap();
}

#[tokio::test]
async fn a_token_issued_in_the_future_is_refused_beyond_the_leeway() {
    // Revoking a user's tokens refuses those issued before the revocation: one claiming to be
    // issued in the future would outlive it.
    let server = TestServer::start().await;
    let leeway = server.config.jwt_leeway_secs as i64;
    let now = server.clock_now() / 1000;
    let with_iat = |iat: i64| {
        let mut c = claims(&server, "alice");
        c["iat"] = iat.into();
        signed(Header::default(), c)
    };
    for iat in [now + leeway + 1, now + 3600, i64::MAX] {
        assert_eq!(
            refused(&server, &with_iat(iat)).await,
            code(CloseCode::CloseAuthFailed),
            "iat now{:+}",
            iat.saturating_sub(now)
        );
    }
    for iat in [now + leeway, now, now - 3600] {
        let c = within(Client::connect(&server.url())).await.unwrap();
        within(c.login(&with_iat(iat), "", 0))
            .await
            .unwrap_or_else(|e| panic!("iat now{:+}: {e}", iat - now));
    }
}

#[tokio::test]
async fn a_token_with_a_crit_header_is_refused() {
    let server = TestServer::start().await;
    let header = Header {
        crit: Some(vec!["exp".into()]),
        ..Default::default()
    };
    let token = signed(header, claims(&server, "alice"));
    assert_eq!(
        refused(&server, &token).await,
        code(CloseCode::CloseAuthFailed)
    );
    // The same claims without it log in.
    let token = signed(Header::default(), claims(&server, "alice"));
    let c = within(Client::connect(&server.url())).await.unwrap();
    within(c.login(&token, "", 0)).await.unwrap();
}

#[tokio::test]
async fn the_token_command_refuses_a_user_id_that_could_not_log_in() {
    let env = [("TIDINGS_JWT_HS256_SECRET", SECRET)];
    for bad in ["", " alice", "a|b", "evil\u{202e}"] {
        let (ok, out, err) = run_binary(&["token", "--user", bad], &env).await;
        assert!(!ok, "minted a token for {bad:?}: {out}");
        assert!(out.is_empty(), "{out}");
        assert!(err.contains("user id"), "{bad:?}: {err}");
    }
    let (ok, token, err) = run_binary(&["token", "--user", "a.b@c-d_e"], &env).await;
    assert!(ok, "{err}");
    let server = TestServer::start().await;
    let c = within(Client::connect(&server.url())).await.unwrap();
    let welcome = within(c.login(token.trim(), "", 0)).await.unwrap();
    assert_eq!(welcome.user_id, "a.b@c-d_e");
}
