//! The admin API's OpenAPI 3.1 document, generated from the endpoints' attributes and the
//! JSON shapes. Served at `/openapi.json`; `docs/openapi.json` is a checked-in copy that a test
//! keeps equal to what this generates.

use super::{ErrorBody, api, groups, imports, json, lifecycle};
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "tidings admin API",
        description = "The app backend's door to tidings. Every /v1 call needs \
                       `Authorization: Bearer <admin API key>`."
    ),
    paths(
        api::mint_token,
        api::presence,
        api::disconnect,
        api::access,
        api::ban,
        api::unban,
        api::revoke,
        api::list,
        api::unread,
        api::create,
        api::broadcast,
        api::backup,
        api::get,
        api::update,
        api::delete,
        api::end,
        api::open_temporaries,
        api::members,
        api::add_members,
        api::remove_members,
        api::send,
        api::history,
        api::delete_messages,
        api::versions,
        api::edit,
        api::recall,
        api::dead_letters,
        api::replay,
        groups::set_roles,
        groups::transfer,
        groups::mute,
        groups::unmute,
        groups::list_mutes,
        groups::mute_all,
        groups::block,
        groups::unblock,
        groups::list_blacklist,
        groups::block_user,
        groups::unblock_user,
        groups::list_user_blocks,
        groups::profile,
        groups::set_profile,
        groups::create_system,
        groups::broadcast,
        imports::import_conversation,
        imports::import_messages,
        imports::import_reads,
        imports::export,
        lifecycle::delete_user,
        lifecycle::export,
    ),
    components(schemas(ErrorBody, json::Conversation, json::Message, json::ListEntry, json::Unread)),
    modifiers(&Security),
    security(("api_key" = []))
)]
struct Document;

struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document, as pretty-printed JSON with a final newline.
pub fn document() -> String {
    let mut doc = Document::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    let mut text = doc.to_pretty_json().expect("the document serializes");
    text.push('\n');
    text
}
