//! The backend's data lifecycle and request metrics: `/metrics` request, frame and session
//! counts by dialect, a user's data deleted and exported, history retention by age. A real
//! server on port 0, real clients of both dialects, a real store on disk.

use crate::admin::{KEY, metrics_of};
use crate::harness::*;
use crate::leancloud_wire::Lc;
use tidings::leancloud::LcProtocol;
use tidings::protocol::pb;
use tidings::protocol::pb::client_frame::Body as Req;
use tidings::protocol::pb::server_frame::Body as Rep;

/// A server with the admin API and the LeanCloud dialect on, changed by `tweak`.
async fn server_with(tweak: impl FnOnce(&mut tidings::config::Config)) -> TestServer {
    crate::leancloud::lc_server_with(|c| {
        c.admin_listen = "127.0.0.1:0".into();
        c.admin_api_keys = vec![KEY.into()];
        tweak(c);
    })
    .await
}

fn count(m: &std::collections::HashMap<String, f64>, key: &str) -> f64 {
    m.get(key).copied().unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_count_requests_by_kind_and_code_frames_and_sessions_by_dialect() {
    let server = server_with(|_| {}).await;
    let before = metrics_of(&server).await;
    let native_login = r#"tidings_requests_total{dialect="native",type="login",code="ok"}"#;
    assert_eq!(count(&before, native_login), 0.0);
    assert_eq!(
        count(&before, r#"tidings_dialect_sessions{dialect="native"}"#),
        0.0
    );

    let mut alice = Raw::login(&server, "alice").await;
    let missing = alice
        .request(Req::FetchHistory(pb::FetchHistory {
            conversation_id: "00000000000000ff".into(),
            ..Default::default()
        }))
        .await;
    assert!(matches!(missing, Rep::Error(_)), "{missing:?}");
    let pong = alice.request(Req::Ping(pb::Ping {})).await;
    assert!(matches!(pong, Rep::Pong(_)));

    let mut bob = Lc::connect(&server, LcProtocol::ProtobufV3).await;
    bob.opened("bob", None).await;
    bob.start("bob", &["alice"]).await;

    let after = metrics_of(&server).await;
    assert_eq!(count(&after, native_login), 1.0);
    assert_eq!(
        count(
            &after,
            r#"tidings_requests_total{dialect="native",type="fetch_history",code="ERROR_CONVERSATION_NOT_FOUND"}"#
        ),
        1.0
    );
    assert_eq!(
        count(
            &after,
            r#"tidings_requests_total{dialect="native",type="ping",code="ok"}"#
        ),
        1.0
    );
    assert_eq!(
        count(
            &after,
            r#"tidings_requests_total{dialect="leancloud",type="session.open",code="ok"}"#
        ),
        1.0
    );
    assert_eq!(
        count(
            &after,
            r#"tidings_requests_total{dialect="leancloud",type="conv.start",code="ok"}"#
        ),
        1.0
    );
    // Login, history, ping: three frames in; their answers, the welcome and the new
    // conversation's event out.
    assert_eq!(
        count(&after, r#"tidings_frames_in_total{dialect="native"}"#),
        3.0
    );
    assert!(count(&after, r#"tidings_bytes_in_total{dialect="native"}"#) > 3.0);
    assert!(count(&after, r#"tidings_frames_out_total{dialect="native"}"#) >= 4.0);
    assert_eq!(
        count(&after, r#"tidings_frames_in_total{dialect="leancloud"}"#),
        2.0
    );
    assert!(count(&after, r#"tidings_bytes_out_total{dialect="leancloud"}"#) > 0.0);
    assert_eq!(
        count(&after, r#"tidings_dialect_sessions{dialect="native"}"#),
        1.0
    );
    assert_eq!(
        count(&after, r#"tidings_dialect_sessions{dialect="leancloud"}"#),
        1.0
    );
    // The labels are a closed set: no user or conversation id in any of them.
    for key in after
        .keys()
        .filter(|k| k.starts_with("tidings_requests_total"))
    {
        assert!(
            !key.contains("alice") && !key.contains("bob") && !key.contains("00000000"),
            "{key}"
        );
    }
}
