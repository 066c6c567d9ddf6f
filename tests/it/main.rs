//! The integration tests: a real server on port 0, real WebSocket clients, a real store on disk.

mod admin;
mod admin_temporary;
mod harness;

mod auth;
mod conversations;
mod delivery;
mod drain;
mod durability;
mod groups;
mod import;
mod json_form;
mod leancloud;
mod leancloud_browser;
mod leancloud_http;
mod leancloud_wire;
mod list;
mod listener;
mod log_safety;
mod origin;
mod pre_send_hook;
mod presence;
mod races;
mod rate_limits;
mod readme;
mod roaming;
mod robustness;
mod sdk_typescript;
mod session_limits;
mod storage;
mod stuck_clients;
mod temporary;
mod tls;
mod token_expiry;
mod users;
mod webhooks;
