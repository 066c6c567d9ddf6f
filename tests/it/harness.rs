//! Starting servers, minting tokens, logging clients in, and waiting on events with a timeout.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tidings::client::Client;
use tidings::clock::{Clock, ManualClock, SystemClock};
use tidings::config::Config;
use tidings::protocol::pb::{self, server_frame::Body as Rep};
use tidings::server::{self, RunningServer};

pub const SECRET: &str = "integration-test-secret-of-at-least-32-bytes";

/// Fails the test if `f` does not finish within 20 s (no sleeps: every wait is on an event).
pub async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("timed out waiting for an event")
}

/// A server on 127.0.0.1:0 with its own data directory, restartable on the same directory.
pub struct TestServer {
    pub server: Option<RunningServer>,
    /// Kept alive for the server's data directory.
    _dir: tempfile::TempDir,
    pub config: Config,
    pub clock: ManualClock,
    /// Makes the store each start runs on (`None`: the configured engine).
    store: StoreMaker,
}

type StoreMaker = Arc<dyn Fn(&Config) -> Option<Arc<dyn tidings::store::Store>> + Send + Sync>;

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
        Self::start_on(tweak, |_| None).await
    }

    /// Like [`TestServer::start_with`], on the store `store` makes from the configuration
    /// (`None`: the configured engine), at start and at every restart.
    pub async fn start_on(
        tweak: impl FnOnce(&mut Config),
        store: impl Fn(&Config) -> Option<Arc<dyn tidings::store::Store>> + Send + Sync + 'static,
    ) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            listen: "127.0.0.1:0".into(),
            data_dir: dir.path().join("data"),
            jwt_hs256_secret: Some(SECRET.into()),
            store_cache_bytes: 8 << 20,
            // Tests send far faster than people do; the limits have their own tests
            // (rate_limits.rs), which set them.
            rate_limit_connection_per_sec: 0,
            rate_limit_user_per_sec: 0,
            ..Config::default()
        };
        tweak(&mut config);
        let clock = ManualClock::new(SystemClock.now_ms());
        let server = server::start_with(config.clone(), Arc::new(clock.clone()), store(&config))
            .await
            .expect("server starts");
        TestServer {
            server: Some(server),
            _dir: dir,
            config,
            clock,
            store: Arc::new(store),
        }
    }

    pub fn running(&self) -> &RunningServer {
        self.server.as_ref().expect("server running")
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.running().addr)
    }

    /// Drains, flushes and starts again on the same data directory (new port).
    pub async fn restart(&mut self) {
        self.server
            .take()
            .unwrap()
            .stop()
            .await
            .expect("clean stop");
        let store = (self.store)(&self.config);
        let server = server::start_with(self.config.clone(), Arc::new(self.clock.clone()), store)
            .await
            .expect("restart");
        self.server = Some(server);
    }

    /// Starts again on the same data directory once the server has gone down on its own (a
    /// store write failed): what it had not committed is lost, as after a crash.
    pub async fn restart_after_failure(&mut self) {
        // The server reports the failure it stopped for.
        let _ = within(self.server.take().unwrap().wait()).await;
        let store = (self.store)(&self.config);
        let server = server::start_with(self.config.clone(), Arc::new(self.clock.clone()), store)
            .await
            .expect("restart");
        self.server = Some(server);
    }

    pub fn clock_now(&self) -> i64 {
        self.clock.now_ms()
    }

    pub fn token(&self, user: &str) -> String {
        tidings::auth::mint(&self.config, user, 3600, self.clock.now_ms(), false).unwrap()
    }

    /// A token valid for a year: for sessions of tests that move the clock by days (a session
    /// ends when its token expires).
    pub fn long_token(&self, user: &str) -> String {
        tidings::auth::mint(&self.config, user, 365 * 86_400, self.clock.now_ms(), false).unwrap()
    }

    /// A logged-in client; the login replay and summary are consumed.
    pub async fn login(&self, user: &str) -> (Client, Welcome) {
        self.login_device(user, "", 0).await
    }

    pub async fn client(&self, user: &str) -> Client {
        self.login(user).await.0
    }

    pub async fn login_device(&self, user: &str, device: &str, cursor: u64) -> (Client, Welcome) {
        let mut c = within(Client::connect(&self.url())).await.expect("connect");
        let ok = within(c.login(&self.token(user), device, cursor))
            .await
            .expect("login");
        let mut events = Vec::new();
        let summary = loop {
            match within(c.next_push()).await.expect("push after login").body {
                Some(Rep::ConversationEvent(e)) => events.push(e),
                Some(Rep::UnreadSummary(s)) => break s,
                other => panic!("unexpected push during login: {other:?}"),
            }
        };
        (
            c,
            Welcome {
                ok,
                events,
                summary,
            },
        )
    }
}

/// What the server sends on login.
pub struct Welcome {
    pub ok: pb::LoginOk,
    pub events: Vec<pb::ConversationEvent>,
    pub summary: pb::UnreadSummary,
}

impl Welcome {
    pub fn unread(&self, conv: &str) -> Option<&pb::UnreadEntry> {
        self.summary
            .entries
            .iter()
            .find(|e| e.conversation_id == conv)
    }
}

/// A configuration tweak for rate-limit tests: each user's bucket refills `per_sec` tokens a
/// second and holds `burst`; connections are not limited.
pub fn user_bucket(per_sec: u32, burst: u32) -> impl FnOnce(&mut tidings::config::Config) {
    move |c| {
        c.rate_limit_connection_per_sec = 0;
        c.rate_limit_user_per_sec = per_sec;
        c.rate_limit_user_burst = burst;
    }
}

/// The next push, whatever it is.
pub async fn push(c: &mut Client) -> Rep {
    within(c.next_push())
        .await
        .expect("connection open")
        .body
        .expect("push has a body")
}

/// The next push, which must be a message.
pub async fn message(c: &mut Client) -> pb::Message {
    match push(c).await {
        Rep::Message(m) => m,
        other => panic!("expected a message push, got {other:?}"),
    }
}

/// The next push, which must be a conversation event.
pub async fn event(c: &mut Client) -> pb::ConversationEvent {
    match push(c).await {
        Rep::ConversationEvent(e) => e,
        other => panic!("expected a conversation event, got {other:?}"),
    }
}

pub fn text(m: &pb::Message) -> String {
    String::from_utf8_lossy(&m.content).into_owned()
}

/// Proves no push is pending: a ping round trip goes through the same socket after any push
/// that was already queued, so if the next thing we see is not a push, nothing was queued.
pub async fn assert_no_push(c: &mut Client) {
    within(c.ping()).await.expect("ping");
    if let Some(f) = c.try_next_push() {
        panic!("unexpected push: {f:?}");
    }
}

/// A logged-in connection driven by hand: it reads only when told to, and can be dropped
/// without a close frame (an abrupt disconnect).
pub struct Raw {
    pub ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
}

impl Raw {
    /// Connects and logs in, reading up to the unread summary.
    pub async fn login(server: &TestServer, user: &str) -> Raw {
        Raw::login_with(server, server.token(user)).await
    }

    /// Connects and logs in with `token`, reading up to the unread summary.
    pub async fn login_with(server: &TestServer, token: String) -> Raw {
        let ws = within(tidings::client::connect_raw(&server.url()))
            .await
            .unwrap();
        let mut raw = Raw { ws, next_id: 1 };
        let login = pb::client_frame::Body::Login(pb::Login {
            token,
            ..Default::default()
        });
        raw.request(login).await;
        loop {
            if let Some(Rep::UnreadSummary(_)) = raw.read().await.body {
                return raw;
            }
        }
    }

    /// Connects without logging in.
    pub async fn connect(server: &TestServer) -> Raw {
        let ws = within(tidings::client::connect_raw(&server.url()))
            .await
            .unwrap();
        Raw { ws, next_id: 1 }
    }

    /// Sends a request without waiting.
    pub async fn send(&mut self, body: pb::client_frame::Body) -> u64 {
        use futures_util::SinkExt;
        let id = self.next_id;
        self.next_id += 1;
        let frame = pb::ClientFrame {
            id,
            body: Some(body),
        };
        within(
            self.ws
                .send(tokio_tungstenite::tungstenite::Message::Binary(
                    tidings::protocol::encode(&frame),
                )),
        )
        .await
        .unwrap();
        id
    }

    /// Sends a request and reads until its reply (skipping pushes).
    pub async fn request(&mut self, body: pb::client_frame::Body) -> Rep {
        let id = self.send(body).await;
        loop {
            let f = self.read().await;
            if f.id == id {
                return f.body.expect("reply body");
            }
        }
    }

    /// Reads the next server frame.
    pub async fn read(&mut self) -> pb::ServerFrame {
        use futures_util::StreamExt;
        match within(self.ws.next()).await {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Binary(b))) => {
                tidings::protocol::decode_server(&b).unwrap()
            }
            other => panic!("expected a binary frame, got {other:?}"),
        }
    }

    /// Reads until the close frame and returns its code.
    pub async fn close_code(&mut self) -> Option<u16> {
        use futures_util::StreamExt;
        loop {
            match within(self.ws.next()).await {
                Some(Ok(tokio_tungstenite::tungstenite::Message::Close(f))) => {
                    return f.map(|f| u16::from(f.code));
                }
                Some(Ok(_)) => {}
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    }
}

/// The real `tidings` binary, serving on 127.0.0.1:0 in `data_dir`.
pub struct Binary {
    /// The process, until it is waited for; a `Binary` dropped before that (a failed
    /// assertion unwinding past the test's clean stop) kills it.
    child: Option<std::process::Child>,
    pub addr: String,
    /// The admin API's address, when it is served.
    pub admin_addr: Option<std::net::SocketAddr>,
    log: Option<std::thread::JoinHandle<Vec<String>>>,
    /// The log's lines after the listening line, as they come.
    lines: std::sync::mpsc::Receiver<String>,
}

impl Binary {
    pub fn serve(data_dir: &std::path::Path, sets: &[&str]) -> Binary {
        Self::serve_env(data_dir, sets, &[])
    }

    /// Like [`Binary::serve`], with more environment variables set.
    pub fn serve_env(data_dir: &std::path::Path, sets: &[&str], env: &[(&str, &str)]) -> Binary {
        Self::serve_with(data_dir, sets, env, |_| {})
    }

    /// Like [`Binary::serve_env`], with `tweak` applied to the command before it starts.
    pub fn serve_with(
        data_dir: &std::path::Path,
        sets: &[&str],
        env: &[(&str, &str)],
        tweak: impl FnOnce(&mut std::process::Command),
    ) -> Binary {
        use std::io::{BufRead, BufReader};
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tidings"));
        tweak(&mut cmd);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir);
        // Tests drive bulk traffic from one connection (thousands of sends, whole histories);
        // the request rate limits have their own tests, which set them (a later --set wins).
        for s in [
            "rate_limit_connection_per_sec=0",
            "rate_limit_user_per_sec=0",
        ]
        .iter()
        .chain(sets)
        {
            cmd.args(["--set", s]);
        }
        cmd.envs(env.iter().copied());
        let mut child = cmd
            .env("TIDINGS_JWT_HS256_SECRET", SECRET)
            .env("TIDINGS_LOG", "info")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Read the log on a thread (so the server never blocks on a full pipe) and wait for the
        // "listening addr=..." line with a deadline.
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let (line_tx, line_rx) = std::sync::mpsc::channel::<String>();
        let log = std::thread::spawn(move || {
            let mut all = Vec::new();
            for line in stderr.lines().map_while(Result::ok) {
                let _ = line_tx.send(line.clone());
                all.push(line);
            }
            all
        });
        loop {
            match line_rx.recv_timeout(Duration::from_secs(20)) {
                Ok(line) => {
                    if let Some(rest) = line.split("addr=").nth(1) {
                        let addr = rest.split_whitespace().next().unwrap().to_string();
                        let admin_addr = line
                            .split("admin=Some(")
                            .nth(1)
                            .and_then(|rest| rest.split(')').next())
                            .map(|a| a.parse().unwrap());
                        return Binary {
                            child: Some(child),
                            addr,
                            admin_addr,
                            log: Some(log),
                            lines: line_rx,
                        };
                    }
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let log = log.join().unwrap_or_default().join("\n");
                    panic!("no listening line from the server ({e}); its log:\n{log}");
                }
            }
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Waits (up to 20 s) for a log line containing `needle` and returns it.
    pub fn wait_log(&self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(e) => panic!("no log line with {needle:?} ({e})"),
            }
        }
    }

    /// Sends a signal to the server process.
    pub fn signal(&self, sig: i32) {
        // SAFETY: sends a signal to our own child process by pid.
        assert_eq!(unsafe { libc::kill(self.pid() as libc::pid_t, sig) }, 0);
    }

    /// The server process's id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("not waited for").id()
    }

    /// Waits for the process to exit; returns its status and its log.
    pub async fn wait(mut self) -> (std::process::ExitStatus, Vec<String>) {
        let mut child = self.child.take().expect("not waited for");
        let status = within(tokio::task::spawn_blocking(move || child.wait()))
            .await
            .unwrap()
            .unwrap();
        let log = self.log.take().unwrap().join().unwrap();
        (status, log)
    }

    /// A client logged in as `user` with a token minted from the shared test secret.
    pub async fn client(&self, user: &str) -> Client {
        let config = Config {
            jwt_hs256_secret: Some(SECRET.into()),
            ..Config::default()
        };
        let token = tidings::auth::mint(&config, user, 3600, SystemClock.now_ms(), false).unwrap();
        let c = within(Client::connect(&self.url())).await.unwrap();
        within(c.login(&token, "", 0)).await.unwrap();
        c
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `program` in `dir`; fails the test with its output unless it succeeds. Its output.
pub fn run_in(dir: &std::path::Path, program: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let out = std::process::Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{program} must be installed to run these tests: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{program} {args:?} in {} failed ({}):\n{text}",
        dir.display(),
        out.status
    );
    text
}

/// Installs `dir`'s npm dependencies from its lock file (`npm ci`) unless each of `packages`
/// is there already; once per directory per test run, so `cargo test` works on a fresh clone.
pub fn npm_ci_once(dir: &std::path::Path, packages: &[&str]) {
    static DONE: std::sync::Mutex<Vec<std::path::PathBuf>> = std::sync::Mutex::new(Vec::new());
    let mut done = DONE.lock().unwrap_or_else(|p| p.into_inner());
    if done.iter().any(|d| d == dir) {
        return;
    }
    let installed = |pkg: &str| {
        dir.join("node_modules")
            .join(pkg)
            .join("package.json")
            .exists()
    };
    if !packages.iter().all(|p| installed(p)) {
        run_in(dir, "npm", &["ci", "--no-audit", "--no-fund"], &[]);
    }
    done.push(dir.to_owned());
}

/// Every file under `dir`, by path relative to it.
pub fn files_under(
    dir: &std::path::Path,
) -> std::collections::BTreeMap<std::path::PathBuf, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_path_buf();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}
