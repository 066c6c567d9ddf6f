//! Misbehaving clients: slow readers, garbage, oversized frames, silence. Nobody else notices.

use crate::harness::*;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use std::sync::Arc;
use tidings::client::{Client, connect_raw};
use tidings::protocol::pb::{self, CloseCode, ErrorCode};
use tokio_tungstenite::tungstenite::Message as WsMessage;

fn code(c: CloseCode) -> Option<u16> {
    Some(c as i32 as u16)
}

fn login_frame(token: String) -> WsMessage {
    let f = pb::ClientFrame {
        id: 1,
        body: Some(pb::client_frame::Body::Login(pb::Login {
            token,
            ..Default::default()
        })),
    };
    WsMessage::Binary(tidings::protocol::encode(&f))
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_as_slow_consumer_and_others_are_unaffected() {
    let server = TestServer::start_with(|c| c.outbox_frames = 16).await;
    let alice = Arc::new(server.client("alice").await);
    let mut bob = server.client("bob").await;
    let g = within(alice.create_group("g", &["bob", "carol"]))
        .await
        .unwrap();
    event(&mut bob).await;

    // carol logs in on a raw socket and then stops reading.
    let mut carol = within(connect_raw(&server.url())).await.unwrap();
    carol
        .send(login_frame(server.token("carol")))
        .await
        .unwrap();

    // Send 16 KiB messages until the server gives up on carol (her socket buffers and outbox
    // fill), bounded so a broken server fails the test instead of hanging it.
    let stats = server.running().app.stats.clone();
    let payload = Bytes::from(vec![b'x'; 16 << 10]);
    let sender = {
        let (alice, id, payload, stats) =
            (alice.clone(), g.id.clone(), payload.clone(), stats.clone());
        tokio::spawn(async move {
            let mut sent = 0u64;
            while stats.slow_consumer_closes.get() == 0 && sent < 20_000 {
                let batch = (0..16).map(|_| {
                    alice.send(pb::SendMessage {
                        conversation_id: id.clone(),
                        content: payload.clone(),
                        ..Default::default()
                    })
                });
                for r in futures_util::future::join_all(batch).await {
                    r.unwrap();
                    sent += 1;
                }
            }
            sent
        })
    };
    within(stats.slow_consumer_closes.wait_for(1)).await;
    let sent = within(sender).await.unwrap();

    // bob kept up and got everything, in order.
    for seq in 1..=sent {
        assert_eq!(message(&mut bob).await.seq, seq);
    }

    // carol now reads: what was already on the wire, then the slow-consumer close.
    let mut last_seq = 0;
    let close = loop {
        match within(carol.next()).await {
            Some(Ok(WsMessage::Binary(b))) => {
                if let Some(pb::server_frame::Body::Message(m)) =
                    tidings::protocol::decode_server(&b).unwrap().body
                {
                    assert_eq!(m.seq, last_seq + 1, "in order, no gaps, while it lasted");
                    last_seq = m.seq;
                }
            }
            Some(Ok(WsMessage::Close(f))) => break f.map(|f| u16::from(f.code)),
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(close, code(CloseCode::CloseSlowConsumer));
    assert!(
        last_seq < sent,
        "the close came before everything was delivered"
    );

    // She reconnects and catches up from where she was.
    let carol = server.client("carol").await;
    let rest = within(carol.sync_all(&g.id, last_seq)).await.unwrap();
    assert_eq!(
        rest.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (last_seq + 1..=sent).collect::<Vec<_>>()
    );
    // And the others never noticed.
    within(alice.send_text(&g.id, "still here")).await.unwrap();
    assert_eq!(message(&mut bob).await.seq, sent + 1);
}

#[tokio::test]
async fn malformed_unknown_and_oversized_frames_get_their_codes_and_nobody_else_notices() {
    let server = TestServer::start_with(|c| c.max_frame_bytes = 4096).await;
    let alice = server.client("alice").await;
    let mut bob = server.client("bob").await;
    let d = within(alice.create_direct("bob")).await.unwrap();
    event(&mut bob).await;

    // Bytes that are not a ClientFrame.
    let garbage = server.client("m1").await;
    garbage.send_raw(vec![0xff, 0xff, 0xff, 0xff]);
    assert_eq!(
        within(garbage.closed()).await.code,
        code(CloseCode::CloseBadFrame)
    );

    // A text frame.
    let texter = server.client("m2").await;
    texter.send_ws(WsMessage::Text("{\"hello\":1}".into()));
    assert_eq!(
        within(texter.closed()).await.code,
        code(CloseCode::CloseBadFrame)
    );

    // A well-formed frame with a request type this server does not know: an error reply.
    let mut future_client = server.client("m3").await;
    let mut bytes = pb::ClientFrame { id: 77, body: None }.encode_to_vec();
    prost::encoding::encode_key(99, prost::encoding::WireType::LengthDelimited, &mut bytes);
    prost::encoding::encode_varint(0, &mut bytes);
    future_client.send_raw(bytes);
    match push(&mut future_client).await {
        pb::server_frame::Body::Error(e) => {
            assert_eq!(e.code, ErrorCode::ErrorUnknownRequest as i32)
        }
        other => panic!("expected an error, got {other:?}"),
    }
    within(future_client.ping())
        .await
        .expect("connection stays open");

    // A frame over max_frame_bytes.
    let big = server.client("m4").await;
    big.send_raw(vec![0u8; 8192]);
    assert_eq!(
        within(big.closed()).await.code,
        code(CloseCode::CloseFrameTooLarge)
    );

    // Before login too.
    let early = within(Client::connect(&server.url())).await.unwrap();
    early.send_raw(vec![0x0a, 0xff]);
    assert_eq!(
        within(early.closed()).await.code,
        code(CloseCode::CloseBadFrame)
    );

    // The bystanders carry on.
    let ack = within(alice.send_text(&d.id, "unaffected")).await.unwrap();
    assert_eq!(message(&mut bob).await.seq, ack.seq);
}

#[tokio::test]
async fn a_silent_connection_is_closed_after_the_idle_timeout() {
    let server = TestServer::start_with(|c| {
        c.ping_interval_ms = 100;
        c.idle_timeout_ms = 400;
    })
    .await;
    let stats = server.running().app.stats.clone();
    // A raw socket that logs in and then never reads, so it never answers pings.
    let mut silent = within(connect_raw(&server.url())).await.unwrap();
    silent
        .send(login_frame(server.token("sleepy")))
        .await
        .unwrap();
    within(stats.sessions_closed.wait_for(1)).await;
    let close = loop {
        match within(silent.next()).await {
            Some(Ok(WsMessage::Close(f))) => break f.map(|f| u16::from(f.code)),
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(close, code(CloseCode::CloseIdleTimeout));

    // A client that reads (and so answers pings) stays, across several idle periods.
    let c = server.client("awake").await;
    let closed_before = stats.sessions_closed.get();
    // A second silent socket timing out proves a full idle period has passed.
    let mut silent2 = within(connect_raw(&server.url())).await.unwrap();
    silent2
        .send(login_frame(server.token("sleepy2")))
        .await
        .unwrap();
    within(stats.sessions_closed.wait_for(closed_before + 1)).await;
    within(c.ping())
        .await
        .expect("a reading client is not idle");
}

/// A client that upgrades and then closes its socket without a close frame (a dropped mobile
/// connection) before logging in is a dropped connection, not malformed input.
#[tokio::test]
async fn a_socket_closed_without_a_close_frame_before_login_is_not_a_malformed_frame() {
    use tokio::io::AsyncWriteExt;
    let server = TestServer::start().await;
    let addr = server.running().addr;
    for _ in 0..3 {
        let mut ws = within(tidings::client::connect_raw(&server.url()))
            .await
            .unwrap();
        match ws.get_mut() {
            tokio_tungstenite::MaybeTlsStream::Plain(s) => s.shutdown().await.unwrap(),
            _ => unreachable!("plain ws://"),
        }
        drop(ws);
    }
    // Wait until the server has seen all three go.
    let health = within(async {
        loop {
            let (_, h) = crate::stuck_clients::health(addr).await;
            if h["connections"] == 0 {
                return h;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(health["malformed_frames"], 0, "{health}");
}
