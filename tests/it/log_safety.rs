//! What clients put into the server's log: strings they control are escaped and cut short, and
//! a flood of failures is rate-limited, with the lines held back counted. Driven against the
//! real binary, whose log (stderr) is read as it is written.

use crate::harness::*;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::{SinkExt, StreamExt};
use std::io::{BufRead, BufReader};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tidings::protocol::pb;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// What a line of the injected text would look like if it reached the log as a line of its own.
const FORGED: &str = "2030-01-01T00:00:00.000000Z  INFO tidings::session: FORGED admin logged in";
/// The probe's size: a 90,000-character `alg`.
const ALG_CHARS: usize = 90_000;
/// The probe's count of failed logins.
const ATTEMPTS: u64 = 2_000;
/// The log may hold this much after all of them (the probe wrote 180 MB).
const MAX_LOG_BYTES: u64 = 1_000_000;

/// The real binary with its log read as it comes: every line's first bytes, the total byte
/// count and the number of ESC bytes anywhere in it.
struct Logged {
    child: std::process::Child,
    addr: String,
    lines: std::sync::mpsc::Receiver<String>,
    bytes: Arc<AtomicU64>,
    escapes: Arc<AtomicU64>,
    longest_line: Arc<AtomicU64>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Logged {
    /// A failed test does not leave the server running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Logged {
    fn serve(data_dir: &std::path::Path) -> Logged {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tidings"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .env("TIDINGS_JWT_HS256_SECRET", SECRET)
            .env("TIDINGS_LOG", "info")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let (tx, lines) = std::sync::mpsc::channel();
        let bytes = Arc::new(AtomicU64::new(0));
        let escapes = Arc::new(AtomicU64::new(0));
        let longest_line = Arc::new(AtomicU64::new(0));
        let (b, e, l) = (bytes.clone(), escapes.clone(), longest_line.clone());
        let reader = std::thread::spawn(move || {
            let mut line = Vec::new();
            loop {
                line.clear();
                match stderr.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        b.fetch_add(n as u64, Ordering::Relaxed);
                        l.fetch_max(n as u64, Ordering::Relaxed);
                        let esc = line.iter().filter(|&&c| c == 0x1b).count();
                        e.fetch_add(esc as u64, Ordering::Relaxed);
                        // The start of a line is all the checks need.
                        let head = &line[..n.min(512)];
                        let _ = tx.send(String::from_utf8_lossy(head).into_owned());
                    }
                }
            }
        });
        let mut logged = Logged {
            child,
            addr: String::new(),
            lines,
            bytes,
            escapes,
            longest_line,
            reader: Some(reader),
        };
        loop {
            let line = logged.next_line(Instant::now() + Duration::from_secs(20));
            let line = line.expect("the server logs its address within 20 s");
            if let Some(rest) = line.split("addr=").nth(1) {
                logged.addr = rest.split_whitespace().next().unwrap().to_owned();
                return logged;
            }
        }
    }

    /// The next log line, waiting until `deadline` at most.
    fn next_line(&self, deadline: Instant) -> Option<String> {
        let left = deadline.saturating_duration_since(Instant::now());
        self.lines.recv_timeout(left).ok()
    }

    fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Stops the server (SIGTERM) and waits for it and the end of its log.
    fn stop(mut self) {
        // SAFETY: sends a signal to our own child process by pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        self.child.wait().unwrap();
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
    }
}

/// A token whose header's `alg` is `alg`; its claims and signature do not matter, since the
/// header is refused first.
fn token_with_alg(alg: &str) -> String {
    let header = serde_json::json!({ "alg": alg, "typ": "JWT" }).to_string();
    let claims = serde_json::json!({ "sub": "mallory", "exp": 4_000_000_000i64 }).to_string();
    format!(
        "{}.{}.c2lnbmF0dXJl",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    )
}

/// One failed login: connect, send the token, read up to the close frame; returns its code.
async fn failed_login(url: &str, frame: bytes::Bytes) -> Option<u16> {
    let mut ws = tidings::client::connect_raw(url).await.unwrap();
    ws.send(WsMessage::Binary(frame)).await.unwrap();
    loop {
        match ws.next().await {
            Some(Ok(WsMessage::Close(f))) => return f.map(|f| u16::from(f.code)),
            Some(Ok(_)) => {}
            _ => return None,
        }
    }
}

/// The number after `field=` in a line, if there is one.
fn field(line: &str, name: &str) -> Option<u64> {
    let rest = line.split(&format!("{name}=")).nth(1)?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_logins_with_a_huge_forging_alg_leaves_a_small_clean_log() {
    let dir = tempfile::tempdir().unwrap();
    let server = Logged::serve(&dir.path().join("data"));

    // A newline and then a whole forged log line, an ANSI escape (clear screen, red), a bidi
    // override, then filler up to the probe's 90,000 characters.
    let mut alg = format!("HS256\n{FORGED}\x1b[2J\x1b[31m\u{202E}");
    alg.push_str(&"A".repeat(ALG_CHARS - alg.chars().count()));
    assert_eq!(alg.chars().count(), ALG_CHARS);
    let login = pb::ClientFrame {
        id: 1,
        body: Some(pb::client_frame::Body::Login(pb::Login {
            token: token_with_alg(&alg),
            ..Default::default()
        })),
    };
    let frame = tidings::protocol::encode(&login);
    assert!(
        frame.len() < 131_072,
        "the login fits the default frame limit"
    );

    // 2,000 failed logins, 8 at a time, each closed with CLOSE_AUTH_FAILED.
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (url, frame, next) = (server.url(), frame.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < ATTEMPTS {
                let code = failed_login(&url, frame.clone()).await;
                assert_eq!(code, Some(pb::CloseCode::CloseAuthFailed as u16));
            }
        }));
    }
    for w in workers {
        tokio::time::timeout(Duration::from_secs(300), w)
            .await
            .expect("2,000 logins within 5 minutes")
            .unwrap();
    }
    let flood = started.elapsed();

    // Every refusal is accounted for: written as a line, or counted in a "suppressed" line
    // (the last one comes at the end of its second). Wait for that, with a deadline.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut written, mut suppressed, mut summaries) = (0u64, 0u64, 0u64);
    let mut forged = Vec::new();
    while written + suppressed < ATTEMPTS {
        let Some(line) = server.next_line(deadline) else {
            break;
        };
        if line.starts_with(FORGED) {
            forged.push(line.clone());
        }
        if line.contains("login refused") && line.contains("error=") {
            written += 1;
        } else if line.contains("suppressed")
            && line.contains("login refused")
            && let Some(n) = field(&line, "suppressed")
        {
            suppressed += n;
            summaries += 1;
        }
    }
    let bytes = server.bytes.load(Ordering::Relaxed);
    let escapes = server.escapes.load(Ordering::Relaxed);
    let longest = server.longest_line.load(Ordering::Relaxed);
    println!(
        "{ATTEMPTS} failed logins in {flood:?}: log {bytes} bytes, longest line {longest} bytes, \
         {written} refusals written, {suppressed} suppressed in {summaries} lines, {} forged \
         lines, {escapes} ESC bytes",
        forged.len()
    );
    server.stop();

    assert!(
        bytes < MAX_LOG_BYTES,
        "the log grew to {bytes} bytes (longest line {longest})"
    );
    assert!(longest < 2048, "a log line of {longest} bytes");
    assert!(forged.is_empty(), "forged log lines: {forged:?}");
    assert_eq!(escapes, 0, "raw ESC bytes reached the log");
    assert!(summaries > 0, "no line reported the suppressed refusals");
    assert_eq!(
        written + suppressed,
        ATTEMPTS,
        "every refusal is written or counted as suppressed"
    );
}

/// The probe's count of connections opened and closed without a login.
const CONNECTIONS: u64 = 2_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_and_closing_connections_without_logging_in_is_rate_limited_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let server = Logged::serve(&dir.path().join("data"));
    // 2,000 connections upgraded and closed at once, 8 at a time, none logging in.
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (url, next) = (server.url(), next.clone());
        workers.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < CONNECTIONS {
                let mut ws = tidings::client::connect_raw(&url).await.unwrap();
                ws.close(None).await.unwrap();
                while let Some(Ok(_)) = ws.next().await {}
            }
        }));
    }
    for w in workers {
        tokio::time::timeout(Duration::from_secs(300), w)
            .await
            .expect("2,000 connections within 5 minutes")
            .unwrap();
    }
    let flood = started.elapsed();
    // Every close is accounted for: written, or counted in a "suppressed" line (the last one
    // at the end of its second).
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut opened, mut written, mut suppressed) = (0u64, 0u64, 0u64);
    while written + suppressed < CONNECTIONS {
        let Some(line) = server.next_line(deadline) else {
            break;
        };
        if line.contains("connection opened") {
            opened += 1;
        } else if line.contains("log lines suppressed")
            && line.contains("connection closed before login")
            && let Some(n) = field(&line, "suppressed")
        {
            suppressed += n;
        } else if line.contains("connection closed") {
            written += 1;
        }
    }
    let bytes = server.bytes.load(Ordering::Relaxed);
    println!(
        "{CONNECTIONS} connections in {flood:?}: log {bytes} bytes, {opened} open lines, \
         {written} close lines, {suppressed} suppressed"
    );
    server.stop();
    assert_eq!(opened, 0, "no one logged in");
    assert_eq!(
        written + suppressed,
        CONNECTIONS,
        "every close written or counted"
    );
    // At most 10 a second (the default), one more second for a boundary.
    let seconds = flood.as_secs() + 2;
    assert!(
        written <= 10 * seconds,
        "{written} close lines in {flood:?}"
    );
}
