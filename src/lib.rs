//! tidings: a self-hosted real-time messaging gateway.
//!
//! The data path, in the order bytes travel (and the modules below are listed):
//!
//! ```text
//! client ─ws─▶ server    accept, upgrade (subprotocol tidings.v1 or .json), size limits, shutdown tree
//!             └▶ session one actor per connection: login, heartbeats, bounded outbox
//!                 ├▶ protocol  bytes ⇄ typed frames (the only place that touches bytes)
//!                 └▶ registry  conversations, membership, messages, read positions
//!                      ├▶ store   Store trait; sled engine; one writer, group commit, flush before ack
//!                      └▶ hub     user → live sessions; one encoded frame, try_send to each outbox
//! ```
//!
//! A request never goes back up: the session decodes a frame and calls the registry; the
//! registry orders the change under a per-conversation lock and hands it to the writer; the
//! writer makes it durable, then gives the pre-encoded push to the hub, then completes the
//! reply.

pub mod admin;
pub mod app;
pub mod auth;
pub mod client;
pub mod clock;
pub mod config;
pub mod demo;
#[doc(hidden)]
pub mod fuzzing;
pub mod http_client;
pub mod hub;
pub mod import;
pub mod leancloud;
pub mod listener;
pub mod logsafe;
pub mod metrics;
pub mod origin;
pub mod outbox;
pub mod percent;
pub mod protocol;
pub mod registry;
pub mod server;
pub mod session;
pub mod stats;
pub mod store;
pub mod traffic;
pub mod turns;
pub mod webhooks;
