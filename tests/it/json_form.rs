//! The JSON form of the native protocol (`tidings.v1.json`): the same conversation over the
//! binary form and the JSON form gives the same replies and pushes, and a text frame that is not
//! a `ClientFrame` in JSON closes the connection like a malformed binary frame.

use crate::harness::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tidings::protocol::{self, pb};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::{Message as WsMessage, Utf8Bytes};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A raw WebSocket offering one subprotocol; returns the subprotocol the server echoed.
async fn connect(server: &TestServer, subprotocol: &'static str) -> (Ws, String) {
    let mut req = server.url().into_client_request().unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(subprotocol),
    );
    let (ws, resp) = within(tokio_tungstenite::connect_async(req)).await.unwrap();
    let echoed = resp
        .headers()
        .get("Sec-WebSocket-Protocol")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (ws, echoed)
}

/// One client of the conversation, in either form. Requests are written as JSON (what a script
/// or a browser console sends); the binary client sends the same frame as protobuf. Every frame
/// received is kept as JSON: the text as it arrived, or the binary frame in the JSON mapping.
struct Peer {
    ws: Ws,
    json: bool,
    got: Vec<Value>,
}

impl Peer {
    async fn open(server: &TestServer, json: bool) -> Peer {
        let wanted = if json {
            protocol::JSON_SUBPROTOCOL
        } else {
            protocol::SUBPROTOCOL
        };
        let (ws, echoed) = connect(server, wanted).await;
        assert_eq!(echoed, wanted);
        Peer {
            ws,
            json,
            got: Vec::new(),
        }
    }

    async fn send(&mut self, frame: Value) {
        let m = if self.json {
            WsMessage::Text(Utf8Bytes::from(frame.to_string()))
        } else {
            let f = protocol::decode_client_json(&frame.to_string()).unwrap();
            WsMessage::Binary(protocol::encode(&f))
        };
        within(self.ws.send(m)).await.unwrap();
    }

    async fn read(&mut self) -> Value {
        let v = match within(self.ws.next()).await {
            Some(Ok(WsMessage::Text(t))) if self.json => serde_json::from_str(&t).unwrap(),
            Some(Ok(WsMessage::Binary(b))) if !self.json => {
                serde_json::to_value(protocol::decode_server(&b).unwrap()).unwrap()
            }
            other => panic!("unexpected frame (json: {}): {other:?}", self.json),
        };
        self.got.push(v.clone());
        v
    }

    /// Sends a request and reads until its reply, which it returns.
    async fn request(&mut self, frame: Value) -> Value {
        // Sent as a number or a string, the id comes back as a string (a 64-bit integer).
        let id = match &frame["id"] {
            Value::Number(n) => n.to_string(),
            other => other.as_str().unwrap().to_string(),
        };
        self.send(frame).await;
        loop {
            let v = self.read().await;
            if v.get("id").and_then(Value::as_str) == Some(id.as_str()) {
                return v;
            }
        }
    }

    /// Reads until a push with this body field.
    async fn push(&mut self, field: &str) -> Value {
        loop {
            let v = self.read().await;
            if v.get("id").is_none() && v.get(field).is_some() {
                return v;
            }
        }
    }
}

/// Blanks what differs between two runs on two servers: times and the session id.
fn normalize(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, v) in m.iter_mut() {
                if matches!(
                    k.as_str(),
                    "serverTime" | "createdAt" | "sessionId" | "lastActivity" | "updatedAt" | "at"
                ) {
                    *v = Value::Null;
                } else {
                    normalize(v);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(normalize),
        _ => {}
    }
}

/// Alice and Bob log in, open a direct conversation, exchange a message with attributes, read,
/// page history and hit an error; returns every frame each received, normalized.
async fn conversation(json: bool) -> (Vec<Value>, Vec<Value>) {
    let server = TestServer::start().await;
    let mut alice = Peer::open(&server, json).await;
    let mut bob = Peer::open(&server, json).await;
    let ok = alice
        .request(json!({"id": "1", "login": {"token": server.token("alice"), "device": "web"}}))
        .await;
    assert_eq!(ok["loginOk"]["userId"], "alice");
    alice.push("unreadSummary").await;
    // Numbers are accepted for 64-bit fields too.
    bob.request(json!({"id": 1, "login": {"token": server.token("bob")}}))
        .await;
    bob.push("unreadSummary").await;

    let created = alice
        .request(json!({"id": "2", "createConversation": {
            "kind": "CONVERSATION_KIND_DIRECT", "members": ["bob"]}}))
        .await;
    let conv = created["conversation"]["conversation"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        created["conversation"]["conversation"]["kind"],
        "CONVERSATION_KIND_DIRECT"
    );
    let event = bob.push("conversationEvent").await;
    assert_eq!(
        event["conversationEvent"]["kind"],
        "CONVERSATION_EVENT_KIND_CREATED"
    );

    // snake_case field names are accepted as well as lowerCamelCase.
    let ack = alice
        .request(json!({"id": "3", "sendMessage": {
            "conversation_id": conv, "clientMessageId": "c-1", "type": 1,
            "content": "aGVsbG8=", "attributes": {"lang": "en"}}}))
        .await;
    assert_eq!(ack["sendAck"]["seq"], "1", "64-bit integers are strings");
    let pushed = bob.push("message").await;
    assert_eq!(pushed["message"]["content"], "aGVsbG8=", "bytes are base64");
    assert_eq!(pushed["message"]["sender"], "alice");
    assert_eq!(pushed["message"]["attributes"]["lang"], "en");

    let read = bob
        .request(json!({"id": "2", "markRead": {"conversationId": conv, "seq": "1"}}))
        .await;
    assert_eq!(read["ok"], json!({}));
    let page = alice
        .request(json!({"id": "4", "fetchHistory": {"conversationId": conv, "limit": 10}}))
        .await;
    assert_eq!(page["messagePage"]["messages"][0]["seq"], "1");
    let err = alice
        .request(json!({"id": "5", "getConversation": {"conversationId": "nope"}}))
        .await;
    assert_eq!(err["error"]["code"], "ERROR_CONVERSATION_NOT_FOUND");
    // A frame without a body is an unknown request, as in the binary form.
    let unknown = bob.request(json!({"id": "3"})).await;
    assert_eq!(unknown["error"]["code"], "ERROR_UNKNOWN_REQUEST");
    // Both see everything that was pushed to them before their pong.
    for p in [&mut alice, &mut bob] {
        p.request(json!({"id": "9", "ping": {}})).await;
    }
    let mut out = (alice.got, bob.got);
    out.0.iter_mut().chain(out.1.iter_mut()).for_each(normalize);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_in_json_gets_the_same_replies_and_pushes_as_in_binary() {
    let binary = conversation(false).await;
    let json = conversation(true).await;
    assert!(binary.0.len() >= 7 && binary.1.len() >= 6, "{binary:#?}");
    assert_eq!(json.0, binary.0, "alice's frames differ");
    assert_eq!(json.1, binary.1, "bob's frames differ");
}

async fn json_peer(server: &TestServer) -> Peer {
    let mut p = Peer::open(server, true).await;
    p.request(json!({"id": "1", "login": {"token": server.token("carol")}}))
        .await;
    p.push("unreadSummary").await;
    p
}

async fn close_code(ws: &mut Ws) -> Option<u16> {
    loop {
        match within(ws.next()).await {
            Some(Ok(WsMessage::Close(f))) => return f.map(|f| u16::from(f.code)),
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

/// A text frame of any bytes (tungstenite's `Text` messages must be UTF-8).
fn not_utf8(bytes: &'static [u8], last: bool) -> WsMessage {
    WsMessage::Frame(Frame::message(bytes, OpCode::Data(Data::Text), last))
}

#[tokio::test]
async fn malformed_json_closes_like_a_malformed_binary_frame() {
    let server = TestServer::start().await;
    let bad_frame = pb::CloseCode::CloseBadFrame as u16;
    let cases: [WsMessage; 7] = [
        WsMessage::Text("{not json".into()),
        WsMessage::Text(r#"{"id": "1", "ping": {}, "logout": {}}"#.into()),
        WsMessage::Text(r#"{"id": "x", "ping": {}}"#.into()),
        WsMessage::Text(r#"[1, 2]"#.into()),
        // Text that is not UTF-8 (tungstenite refuses it before it is decoded), whole or in
        // a continuation.
        not_utf8(b"{\"id\":\"1\",\"ping\":{},\"x\":\"\xff\xfe\"}", true),
        not_utf8(b"{\"id\":\"1\",\"ping\":{},\"x\":\"\xc3", false),
        // A binary frame on a JSON connection.
        WsMessage::Binary(protocol::encode(&pb::ClientFrame {
            id: 1,
            body: Some(pb::client_frame::Body::Ping(pb::Ping {})),
        })),
    ];
    for m in cases {
        let mut p = json_peer(&server).await;
        let shown = format!("{m:?}");
        let fragmented = matches!(&m, WsMessage::Frame(f) if !f.header().is_final);
        within(p.ws.send(m)).await.unwrap();
        if fragmented {
            // The rest of the message: a lone continuation byte where the character's was due.
            let end = Frame::message(&b"\xff\"}"[..], OpCode::Data(Data::Continue), true);
            within(p.ws.send(WsMessage::Frame(end))).await.unwrap();
        }
        assert_eq!(close_code(&mut p.ws).await, Some(bad_frame), "{shown}");
    }
    // Not UTF-8 before login too.
    let (mut ws, _) = connect(&server, protocol::JSON_SUBPROTOCOL).await;
    within(ws.send(not_utf8(b"{\"id\":\"1\",\"login\":\xff}", true)))
        .await
        .unwrap();
    assert_eq!(close_code(&mut ws).await, Some(bad_frame));
    // Before login too.
    let (mut ws, _) = connect(&server, protocol::JSON_SUBPROTOCOL).await;
    within(ws.send(WsMessage::Text("login please".into())))
        .await
        .unwrap();
    assert_eq!(close_code(&mut ws).await, Some(bad_frame));
    // The binary form still refuses text.
    let (mut ws, _) = connect(&server, protocol::SUBPROTOCOL).await;
    within(ws.send(WsMessage::Text(r#"{"id": "1", "ping": {}}"#.into())))
        .await
        .unwrap();
    assert_eq!(close_code(&mut ws).await, Some(bad_frame));
}

/// A group whose members use every form there is (native binary, native JSON, LeanCloud
/// binary and base64, two sessions of each): each message is encoded once per form, whatever
/// the number of recipients of that form (`tidings_push_encodings_total`).
#[tokio::test]
async fn a_mixed_audience_costs_one_encoding_per_form_and_message() {
    use crate::leancloud_wire::Lc;
    use tidings::leancloud::LcProtocol;
    use tidings::leancloud::pb::CommandType as Cmd;
    let server = crate::leancloud::leancloud_server().await;
    let alice = server.client("alice").await;
    let mut natives = vec![server.client("n1").await, server.client("n2").await];
    let mut jsons = Vec::new();
    for user in ["j1", "j2"] {
        let mut p = Peer::open(&server, true).await;
        p.request(json!({"id": "1", "login": {"token": server.token(user)}}))
            .await;
        p.push("unreadSummary").await;
        jsons.push(p);
    }
    let mut lcs = Vec::new();
    for (peer, p) in [
        ("l1", LcProtocol::ProtobufV3),
        ("l2", LcProtocol::ProtobufV3),
        ("b1", LcProtocol::Base64V3),
        ("b2", LcProtocol::Base64V3),
    ] {
        let mut c = Lc::connect(&server, p).await;
        c.opened(peer, None).await;
        lcs.push((peer, c));
    }
    let members = ["n1", "n2", "j1", "j2", "l1", "l2", "b1", "b2"];
    let group = within(alice.create_group("all forms", &members))
        .await
        .unwrap()
        .id;
    // Every member has its creation event before counting starts.
    for n in &mut natives {
        loop {
            if let Some(pb::server_frame::Body::ConversationEvent(_)) =
                within(n.next_push()).await.unwrap().body
            {
                break;
            }
        }
    }
    for j in &mut jsons {
        j.push("conversationEvent").await;
    }
    for (peer, c) in &mut lcs {
        c.push_of(
            Cmd::Conv,
            Some(tidings::leancloud::pb::OpType::Joined),
            peer,
        )
        .await;
    }
    let traffic = &server.running().app.stats.traffic;
    let before = traffic.encodings();
    const N: u64 = 5;
    for i in 0..N {
        within(alice.send_text(&group, &format!("m{i}")))
            .await
            .unwrap();
    }
    for n in &mut natives {
        let mut got = 0;
        while got < N {
            if let Some(pb::server_frame::Body::Message(_)) =
                within(n.next_push()).await.unwrap().body
            {
                got += 1;
            }
        }
    }
    for j in &mut jsons {
        for _ in 0..N {
            j.push("message").await;
        }
    }
    for (peer, c) in &mut lcs {
        for _ in 0..N {
            c.push_of(Cmd::Direct, None, peer).await;
        }
    }
    let after = traffic.encodings();
    let delta: Vec<(&str, u64)> = before
        .iter()
        .zip(after.iter())
        .map(|((form, b), (_, a))| (*form, a - b))
        .collect();
    assert_eq!(delta, [("native", N), ("json", N), ("leancloud", N)]);
}

/// The JSON form carries any string JSON can (`\u0000`, `\u202e`): a name with one is refused
/// as in the binary form.
#[tokio::test]
async fn a_json_name_with_nul_or_a_bidi_override_is_refused() {
    let server = TestServer::start().await;
    let mut p = json_peer(&server).await;
    for name in ["a\u{0}b", "a\u{202e}b"] {
        let r = p
            .request(json!({"id": "5", "createConversation": {
                "kind": "CONVERSATION_KIND_GROUP", "members": ["bob"], "name": name}}))
            .await;
        assert_eq!(r["error"]["code"], "ERROR_INVALID_ARGUMENT", "{r}");
    }
    let r = p
        .request(json!({"id": "6", "createConversation": {
            "kind": "CONVERSATION_KIND_GROUP", "members": ["bob"], "name": "fine"}}))
        .await;
    assert_eq!(r["conversation"]["conversation"]["name"], "fine", "{r}");
}
