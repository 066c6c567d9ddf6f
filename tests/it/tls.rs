//! TLS on the listener: `wss://` with a certificate from `tls_cert`/`tls_key`, reloaded on
//! SIGHUP (a certificate that does not load leaves the old one serving).

use crate::harness::*;
use crate::stuck_clients::{log_in_on, read, send};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tidings::protocol::pb::{self, client_frame::Body as Req, server_frame::Body as Rep};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

/// A test CA and a server certificate it signed for `127.0.0.1` and `localhost`.
pub struct TestPki {
    pub ca: CertificateDer<'static>,
    pub cert_pem: String,
    pub key_pem: String,
    pub leaf: CertificateDer<'static>,
}

impl TestPki {
    pub fn new(name: &str) -> TestPki {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} test CA"));
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let leaf = params.signed_by(&key, &ca).unwrap();
        TestPki {
            ca: ca.der().clone(),
            cert_pem: leaf.pem(),
            key_pem: key.serialize_pem(),
            leaf: leaf.der().clone(),
        }
    }

    /// Writes the certificate and key to `cert`/`key`.
    pub fn write(&self, cert: &Path, key: &Path) {
        std::fs::write(cert, &self.cert_pem).unwrap();
        std::fs::write(key, &self.key_pem).unwrap();
    }
}

/// A client TLS connector trusting `cas` only.
pub fn connector(cas: &[&CertificateDer<'static>]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for ca in cas {
        roots.add((*ca).clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

pub type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A TLS connection to `addr` (as `127.0.0.1`).
pub async fn tls_connect(addr: SocketAddr, connector: &tokio_rustls::TlsConnector) -> Tls {
    let tcp = within(tokio::net::TcpStream::connect(addr)).await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    within(connector.connect(name, tcp)).await.unwrap()
}

/// The certificate the server presented on `s`.
fn presented(s: &Tls) -> CertificateDer<'static> {
    s.get_ref().1.peer_certificates().unwrap()[0].clone()
}

/// `GET path` over TLS: status and body.
async fn https_get(s: &mut Tls, path: &str) -> (u16, String) {
    https_get_with(s, path, "").await
}

/// `GET path` over TLS with more header lines (each ending in CRLF): status and body.
async fn https_get_with(s: &mut Tls, path: &str, headers: &str) -> (u16, String) {
    let req =
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}Connection: close\r\n\r\n");
    within(s.write_all(req.as_bytes())).await.unwrap();
    let mut raw = Vec::new();
    let _ = within(s.read_to_end(&mut raw)).await;
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("a complete answer");
    (head[9..12].parse().unwrap(), body.to_owned())
}

fn files(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("cert.pem"), dir.join("key.pem"))
}

/// A server doing TLS with a fresh test certificate (kept in the returned directory), with
/// `tweak` applied to its configuration.
async fn tls_server(
    tweak: impl FnOnce(&mut tidings::config::Config),
) -> (TestServer, TestPki, tempfile::TempDir) {
    let pki = TestPki::new("tidings");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = files(dir.path());
    pki.write(&cert, &key);
    let server = TestServer::start_with(|c| {
        c.tls_cert = Some(cert);
        c.tls_key = Some(key);
        tweak(c);
    })
    .await;
    (server, pki, dir)
}

#[tokio::test]
async fn clients_log_in_and_talk_over_tls() {
    let (server, pki, _dir) = tls_server(|c| {
        c.leancloud_app_id = Some(crate::leancloud::APP_ID.into());
        c.leancloud_master_key = Some(crate::leancloud::MASTER_KEY.into());
    })
    .await;
    let addr = server.running().addr;
    let tls = connector(&[&pki.ca]);

    let a = tls_connect(addr, &tls).await;
    assert_eq!(presented(&a), pki.leaf);
    let mut alice = log_in_on(&server, "alice", a).await;
    let mut bob = log_in_on(&server, "bob", tls_connect(addr, &tls).await).await;
    send(
        &mut alice,
        2,
        Req::CreateConversation(pb::CreateConversation {
            kind: pb::ConversationKind::Direct as i32,
            members: vec!["bob".into()],
            ..Default::default()
        }),
    )
    .await;
    let conv = loop {
        let f = read(&mut alice).await;
        if let (
            2,
            Some(Rep::Conversation(pb::ConversationReply {
                conversation: Some(c),
            })),
        ) = (f.id, f.body)
        {
            break c;
        }
    };
    send(
        &mut alice,
        3,
        Req::SendMessage(pb::SendMessage {
            conversation_id: conv.id.clone(),
            content: bytes::Bytes::from_static(b"over tls"),
            ..Default::default()
        }),
    )
    .await;
    let m = loop {
        if let Some(Rep::Message(m)) = read(&mut bob).await.body {
            break m;
        }
    };
    assert_eq!(&m.content[..], b"over tls");

    // Health over TLS; plain HTTP on the TLS port gets nothing.
    let (status, body) = https_get(&mut tls_connect(addr, &tls).await, "/healthz").await;
    assert_eq!(status, 200, "{body}");
    let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    let _ = within(plain.read_to_end(&mut raw)).await;
    assert!(!raw.starts_with(b"HTTP/1.1 200"), "plain HTTP was served");

    // The LeanCloud router hands out wss:// when the server does TLS and public_url is unset.
    let path = format!("/v1/route?appId={}", crate::leancloud::APP_ID);
    let (status, body) = https_get(&mut tls_connect(addr, &tls).await, &path).await;
    assert_eq!(status, 200, "{body}");
    let route: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(route["server"], "wss://127.0.0.1/", "{route}");
}

#[tokio::test]
async fn a_server_refuses_to_start_with_a_certificate_that_does_not_load() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = files(dir.path());
    std::fs::write(&cert, "not a certificate").unwrap();
    std::fs::write(&key, "not a key").unwrap();
    let mut config = tidings::config::Config {
        listen: "127.0.0.1:0".into(),
        data_dir: dir.path().join("data"),
        jwt_hs256_secret: Some(SECRET.into()),
        tls_cert: Some(cert),
        tls_key: Some(key),
        ..Default::default()
    };
    let clock = Arc::new(tidings::clock::SystemClock);
    let err = tidings::server::start(config.clone(), clock.clone())
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("cert.pem"), "{err}");
    // A key that does not match the certificate.
    let (a, b) = (TestPki::new("a"), TestPki::new("b"));
    let (cert, key) = files(dir.path());
    std::fs::write(&cert, &a.cert_pem).unwrap();
    std::fs::write(&key, &b.key_pem).unwrap();
    config.tls_cert = Some(cert);
    config.tls_key = Some(key);
    assert!(tidings::server::start(config, clock).await.is_err());
}

#[tokio::test]
async fn sighup_reloads_the_certificate_and_a_bad_one_keeps_the_old() {
    let (first, second) = (TestPki::new("first"), TestPki::new("second"));
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = files(dir.path());
    first.write(&cert, &key);
    let cert_set = format!("tls_cert={}", cert.display());
    let key_set = format!("tls_key={}", key.display());
    let server = Binary::serve(&dir.path().join("data"), &[&cert_set, &key_set]);
    let addr: SocketAddr = server.addr.parse().unwrap();
    let tls = connector(&[&first.ca, &second.ca]);
    let before = tls_connect(addr, &tls).await;
    assert_eq!(presented(&before), first.leaf);

    second.write(&cert, &key);
    server.signal(libc::SIGHUP);
    server.wait_log("TLS certificate reloaded");
    let mut after = tls_connect(addr, &tls).await;
    assert_eq!(presented(&after), second.leaf);
    assert_eq!(https_get(&mut after, "/healthz").await.0, 200);

    // A broken certificate: logged, the second one keeps serving.
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nbroken\n").unwrap();
    server.signal(libc::SIGHUP);
    let line = server.wait_log("TLS certificate not reloaded");
    assert!(line.contains("cert.pem"), "{line}");
    let mut still = tls_connect(addr, &tls).await;
    assert_eq!(presented(&still), second.leaf);
    assert_eq!(https_get(&mut still, "/healthz").await.0, 200);
    // The connection made before the reloads still works.
    drop(before);

    server.signal(libc::SIGTERM);
    let (status, _) = server.wait().await;
    assert!(status.success());
}

#[tokio::test]
async fn a_client_that_never_finishes_the_tls_handshake_is_cut_at_the_handshake_timeout() {
    let (server, _pki, _dir) = tls_server(|c| {
        c.handshake_timeout_ms = 300;
    })
    .await;
    let stats = server.running().app.stats.clone();
    let mut silent = tokio::net::TcpStream::connect(server.running().addr)
        .await
        .unwrap();
    within(stats.pending_handshakes.wait_for(1)).await;
    let mut buf = Vec::new();
    let _ = within(silent.read_to_end(&mut buf)).await;
    assert!(buf.is_empty());
    within(stats.pending_handshakes.wait_for_at_most(0)).await;
}

#[tokio::test]
async fn the_admin_api_is_served_over_tls_when_asked() {
    let (server, pki, _dir) = tls_server(|c| {
        c.admin_listen = "127.0.0.1:0".into();
        c.admin_api_keys = vec![crate::admin::KEY.into()];
        c.admin_tls = true;
    })
    .await;
    let addr = crate::admin::admin_addr(&server);
    let tls = connector(&[&pki.ca]);
    let mut s = tls_connect(addr, &tls).await;
    assert_eq!(presented(&s), pki.leaf);
    let bearer = format!("Authorization: Bearer {}\r\n", crate::admin::KEY);
    let (status, body) = https_get_with(&mut s, "/v1/presence?users=alice", &bearer).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("alice"), "{body}");

    // Plain HTTP on the admin port gets no answer.
    let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    let _ = within(plain.read_to_end(&mut raw)).await;
    assert!(!raw.starts_with(b"HTTP/1.1"), "plain HTTP was served");

    // Without tls_cert the setting is refused at start.
    let err = tidings::config::Config {
        admin_tls: true,
        ..Default::default()
    }
    .validate()
    .expect_err("refused");
    assert!(err.to_string().contains("admin_tls"), "{err}");
}

/// A SIGHUP that comes as soon as the server says it listens (a supervisor, a test) finds its
/// handler: without TLS it is logged and changes nothing; it never ends the process.
#[tokio::test]
async fn a_sighup_right_after_the_listening_line_does_not_stop_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = Binary::serve(&dir.path().join("data"), &[]);
    server.signal(libc::SIGHUP);
    server.wait_log("SIGHUP: TLS is off");
    server.signal(libc::SIGTERM);
    let (status, _) = server.wait().await;
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn shutdown_does_not_wait_for_a_tls_handshake_in_progress() {
    let (mut server, _pki, _dir) = tls_server(|c| {
        c.handshake_timeout_ms = 600_000;
        c.shutdown_grace_ms = 200;
        c.close_timeout_ms = 200;
    })
    .await;
    let stats = server.running().app.stats.clone();
    let mut silent = tokio::net::TcpStream::connect(server.running().addr)
        .await
        .unwrap();
    within(stats.pending_handshakes.wait_for(1)).await;
    within(server.server.take().unwrap().stop()).await.unwrap();
    let mut buf = Vec::new();
    let _ = within(silent.read_to_end(&mut buf)).await;
    assert!(buf.is_empty());
}
