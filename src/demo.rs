//! Demo mode (`serve --demo`, development only): the browser pages of `web/` (built into
//! `web/dist/`, embedded in the binary at build time) at `/demo/` and `/widget/` on the public
//! listener, and `POST /demo/token`, which mints a login token for any user name so the pages
//! work the moment the server starts.
//!
//! Without `demo` none of these paths exist (404). With it, the server makes a random HS256
//! secret when none is configured (so the tokens it mints die with the process) and refuses a
//! listen address other machines can reach unless `demo_public` is set too. `insecure_dev`,
//! which lets any client log in as anyone, is held to the same rule (`insecure_dev_public`).

use crate::app::App;
use crate::config::Config;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

mod assets {
    include!(concat!(env!("OUT_DIR"), "/web_assets.rs"));
}

/// The token endpoint.
pub const TOKEN_PATH: &str = "/demo/token";

/// Lifetime of a demo token, seconds. The pages ask for a new one at every reconnect.
pub const TOKEN_TTL_SECS: i64 = 3600;

/// Largest body of a token request, bytes.
const TOKEN_BODY_MAX: usize = 1024;

/// Why demo mode may not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(
        "--demo listens on {0}, which other machines can reach, and its token endpoint lets \
         anyone log in as anyone: listen on a loopback address (127.0.0.1, [::1], localhost), \
         or add --demo-public if that is really meant"
    )]
    Public(String),
    #[error(
        "insecure_dev listens on {0}, which other machines can reach, and takes any user id as \
         its own login token: anyone who reaches it can log in as anyone. Listen on a loopback \
         address (127.0.0.1, [::1], localhost), configure jwt_hs256_secret (`tidings secret`) \
         instead, or set insecure_dev_public (--insecure-dev-public) if that is really meant"
    )]
    InsecurePublic(String),
    #[error("listen address {0:?}: {1}")]
    Listen(String, std::io::Error),
    #[error("making a random secret: {0}")]
    Secret(std::io::Error),
}

/// Readies `config` for demo mode, when it is on: refuses a reachable listen address (unless
/// `demo_public`) and makes a random HS256 secret when none is configured. Logs what it did
/// and, loudly, that anyone may mint tokens.
pub fn prepare(config: &mut Config) -> Result<(), DemoError> {
    if !config.demo {
        return Ok(());
    }
    if !config.demo_public && !loopback_only(&config.listen)? {
        return Err(DemoError::Public(config.listen.clone()));
    }
    if config.jwt_hs256_secret.is_none() {
        config.jwt_hs256_secret = Some(crate::auth::new_secret().map_err(DemoError::Secret)?);
        tracing::warn!(
            "DEMO MODE: no jwt_hs256_secret configured, using a random one made now: every \
             token stops working when the server restarts"
        );
    }
    tracing::warn!(
        public = config.demo_public,
        "DEMO MODE (development only): pages at /demo/ and /widget/, and POST {TOKEN_PATH} \
         mints a login token for ANY user name: whoever reaches this listener can log in as \
         anyone"
    );
    Ok(())
}

/// Refuses `insecure_dev` on a listen address other machines can reach, unless
/// `insecure_dev_public`: there every client could log in as any user.
pub fn check_insecure_dev(config: &Config) -> Result<(), DemoError> {
    if config.insecure_dev && !config.insecure_dev_public && !loopback_only(&config.listen)? {
        return Err(DemoError::InsecurePublic(config.listen.clone()));
    }
    Ok(())
}

/// Whether `listen` resolves to loopback addresses only (to at least one).
fn loopback_only(listen: &str) -> Result<bool, DemoError> {
    let addrs = std::net::ToSocketAddrs::to_socket_addrs(listen)
        .map_err(|e| DemoError::Listen(listen.to_owned(), e))?;
    let mut any = false;
    for a in addrs {
        if !a.ip().is_loopback() {
            return Ok(false);
        }
        any = true;
    }
    Ok(any)
}

/// Whether `path` is served by demo mode.
pub fn is_demo_path(path: &str) -> bool {
    path == "/demo"
        || path == "/widget"
        || path.starts_with("/demo/")
        || path.starts_with("/widget/")
}

/// The embedded file for a request path (`/demo/` is `demo/index.html`), with its content type.
pub fn asset(path: &str) -> Option<(&'static str, &'static [u8])> {
    let rel = path.strip_prefix('/')?;
    let rel = if rel.is_empty() || rel.ends_with('/') {
        format!("{rel}index.html")
    } else {
        rel.to_owned()
    };
    let i = assets::ASSETS
        .binary_search_by(|(p, _)| (*p).cmp(rel.as_str()))
        .ok()?;
    let (name, bytes) = assets::ASSETS[i];
    Some((content_type(name), bytes))
}

/// Every embedded file's path (relative to `web/dist/`), sorted.
pub fn asset_paths() -> impl Iterator<Item = &'static str> {
    assets::ASSETS.iter().map(|(p, _)| *p)
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

/// A demo page or script (GET or HEAD): `/demo` and `/widget` redirect to the directory, an
/// unknown path is 404. Every answer says `no-cache` (the files change with the binary) and
/// `nosniff`; pages other than the widget's chat (which other sites frame) may not be framed.
pub fn serve(req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    if path == "/demo" || path == "/widget" {
        let mut r = plain(StatusCode::MOVED_PERMANENTLY, "");
        if let Ok(v) = HeaderValue::from_str(&format!("{path}/")) {
            r.headers_mut().insert(header::LOCATION, v);
        }
        return r;
    }
    let Some((kind, bytes)) = asset(path) else {
        return plain(StatusCode::NOT_FOUND, "not found\n");
    };
    let body = if req.method() == Method::HEAD {
        Bytes::new()
    } else {
        Bytes::from_static(bytes)
    };
    let mut r = Response::new(Full::new(body));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if kind.starts_with("text/html") {
        let ancestors = if path == "/widget/chat.html" {
            "*"
        } else {
            "'self'"
        };
        if let Ok(v) = HeaderValue::from_str(&format!(
            "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; \
             style-src 'self' 'unsafe-inline'; script-src 'self'; frame-ancestors {ancestors}"
        )) {
            h.insert(header::CONTENT_SECURITY_POLICY, v);
        }
    }
    r
}

/// Whether the request is for the token endpoint (answered by [`token`]).
pub fn is_token_request(req: &Request<Incoming>) -> bool {
    req.uri().path() == TOKEN_PATH
}

/// `POST /demo/token` `{"user": "alice"}` → `{"token", "user", "expires_at"}` (ms): a login
/// token for any valid user id, signed with the configured (or demo) HS256 secret. A bad body
/// or user id is 400 with `{"error"}`.
pub async fn token(req: Request<Incoming>, app: &App) -> Response<Full<Bytes>> {
    if req.method() != Method::POST {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return r;
    }
    let body = match Limited::new(req.into_body(), TOKEN_BODY_MAX)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("the body is at most {TOKEN_BODY_MAX} bytes"),
            );
        }
    };
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Ask {
        user: String,
    }
    let ask: Ask = match serde_json::from_slice(&body) {
        Ok(a) => a,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("expected {{\"user\": \"…\"}}: {e}"),
            );
        }
    };
    let now = app.clock.now_ms();
    match crate::auth::mint(&app.config, &ask.user, TOKEN_TTL_SECS, now, false) {
        Ok(token) => {
            let mut r = json(
                StatusCode::OK,
                &serde_json::json!({
                    "token": token,
                    "user": ask.user,
                    "expires_at": now / 1000 * 1000 + TOKEN_TTL_SECS * 1000,
                }),
            );
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        Err(crate::auth::KeyError::User(e)) => error(StatusCode::BAD_REQUEST, &e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r
}

fn json(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json(status, &serde_json::json!({ "error": message }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_serve_their_index_and_unknown_files_nothing() {
        assert!(asset("/demo/").is_some());
        assert!(asset("/widget/widget.js").is_some());
        assert!(asset("/demo/nope.js").is_none());
        assert!(asset("/demo/../Cargo.toml").is_none());
        assert_eq!(asset("/demo/").unwrap().0, "text/html; charset=utf-8");
        let paths: Vec<_> = asset_paths().collect();
        assert!(
            paths.windows(2).all(|w| w[0] < w[1]),
            "sorted for the search"
        );
    }

    #[test]
    fn a_reachable_address_is_refused_without_demo_public() {
        let mut c = Config {
            demo: true,
            listen: "0.0.0.0:0".into(),
            ..Config::default()
        };
        assert!(matches!(prepare(&mut c), Err(DemoError::Public(_))));
        c.listen = "127.0.0.1:0".into();
        prepare(&mut c).unwrap();
        let secret = c.jwt_hs256_secret.clone().expect("a random secret");
        assert!(crate::config::weak_secret(&secret).is_none());
        let mut again = Config {
            demo: true,
            listen: "[::1]:0".into(),
            ..Config::default()
        };
        prepare(&mut again).unwrap();
        assert_ne!(again.jwt_hs256_secret, Some(secret), "fresh each start");
        let mut public = Config {
            demo: true,
            demo_public: true,
            listen: "0.0.0.0:0".into(),
            ..Config::default()
        };
        prepare(&mut public).unwrap();
    }
}
